//! `pprl describe`: the popcount (bits set per encoding) histogram of one party's encodings, as
//! anonlink-client's `describe` shows it. A healthy CLK set has one bell-shaped bump; a spike at
//! a small count or at the full length points at empty fields or a broken encoding setup.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use shared::engine::encoding::{SizeBounds, decode_json_upload};

pub struct DescribeOptions {
    pub encodings: PathBuf,
    pub svg: Option<PathBuf>,
}

pub fn run(o: DescribeOptions) -> anyhow::Result<()> {
    let path = &o.encodings;
    let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let party = decode_json_upload(&body, SizeBounds::default()).with_context(|| format!("{} is not an encodings upload", path.display()))?;
    let popcounts: Vec<u32> = party.data.chunks(party.encoding_size).map(|e| e.iter().map(|b| b.count_ones()).sum()).collect();
    let summary = Summary::of(&popcounts, party.encoding_size * 8).context("no encodings in the file")?;
    print!("{}", terminal_chart(&summary));
    if let Some(svg) = &o.svg {
        svg_chart(svg, &summary)?;
        eprintln!("pprl: wrote {}", svg.display());
    }
    Ok(())
}

/// Encodings per popcount, with the figures anonlink-client prints beside its chart.
pub struct Summary {
    pub bits: usize,
    pub min: u32,
    pub max: u32,
    pub mean: f64,
    pub std_dev: f64,
    /// `counts[i]` = encodings with `min + i` bits set.
    pub counts: Vec<u64>,
}

impl Summary {
    pub fn of(popcounts: &[u32], bits: usize) -> Option<Self> {
        let min = *popcounts.iter().min()?;
        let max = *popcounts.iter().max()?;
        let n = popcounts.len() as f64;
        let mean = popcounts.iter().map(|&p| p as f64).sum::<f64>() / n;
        let std_dev = (popcounts.iter().map(|&p| (p as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let mut counts = vec![0; (max - min + 1) as usize];
        for &p in popcounts {
            counts[(p - min) as usize] += 1;
        }
        Some(Self { bits, min, max, mean, std_dev, counts })
    }

    /// Up to `bins` groups of adjacent popcounts: (first popcount, encodings).
    fn grouped(&self, bins: usize) -> Vec<(u32, u64)> {
        let per = self.counts.len().div_ceil(bins).max(1);
        self.counts.chunks(per).enumerate().map(|(i, c)| (self.min + (i * per) as u32, c.iter().sum())).collect()
    }
}

const ROWS: usize = 40;
const BAR_WIDTH: usize = 50;

pub fn terminal_chart(s: &Summary) -> String {
    let rows = s.grouped(ROWS);
    let peak = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1);
    let mut out = format!("popcounts of {} encodings of {} bits\n", s.counts.iter().sum::<u64>(), s.bits);
    for (popcount, count) in rows {
        let len = (count as f64 / peak as f64 * BAR_WIDTH as f64).round() as usize;
        out.push_str(&format!("{popcount:>6} |{}{} {count}\n", "#".repeat(len), " ".repeat(BAR_WIDTH - len)));
    }
    out.push_str(&format!("min {}  max {}  mean {:.2}  std dev {:.2}\n", s.min, s.max, s.mean, s.std_dev));
    out
}

fn svg_chart(path: &std::path::Path, s: &Summary) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let peak = s.counts.iter().copied().max().unwrap_or(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Popcounts ({} bits; mean {:.1}, std dev {:.1})", s.bits, s.mean, s.std_dev), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(s.min as f64 - 0.5..s.max as f64 + 0.5, 0f64..peak)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().disable_x_mesh().x_desc("bits set").y_desc("encodings").draw().map_err(|e| err(&e))?;
    let colour = RGBColor(90, 120, 180);
    chart
        .draw_series(s.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, &c)| {
            let x = (s.min as usize + i) as f64;
            Rectangle::new([(x - 0.5, 0.0), (x + 0.5, c as f64)], colour.filled())
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_every_popcount_between_min_and_max() {
        let s = Summary::of(&[3, 5, 5, 7], 8).unwrap();
        assert_eq!((s.min, s.max, s.counts.clone()), (3, 7, vec![1, 0, 2, 0, 1]));
        assert!((s.mean - 5.0).abs() < 1e-12 && (s.std_dev - 2f64.sqrt()).abs() < 1e-12);
        assert!(Summary::of(&[], 8).is_none());
        assert!(terminal_chart(&s).contains("min 3  max 7"));
    }
}
