//! `pprl histogram`: the similarity-score histogram an analyst chooses the threshold from, as an
//! SVG and in the terminal, with a suggested threshold and (given the truth) precision and recall.
//!
//! Anonlink's tutorials pick the threshold in the valley between the two modes of this histogram:
//! the many non-matching pairs pile up at low scores, the matches near 1. The suggestion here
//! makes that choice reproducible ([`suggest_threshold`]): counts go through `ln(1 + count)`
//! (non-matches outnumber matches by orders of magnitude, and the eye reads the chart on a log
//! axis too), are smoothed over 3 bins, and the threshold is the centre of the bin whose valley is
//! deepest — for each bin, the lower of the highest bins on its left and on its right, minus its
//! own height; ties resolve to the middle of the run of equally deep bins. The two highest bins on
//! either side are the modes it lies between. A histogram without such a valley gets no suggestion.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::client::ServiceClient;

/// Where the scores come from.
pub enum ScoresSource {
    /// A `similarity_scores` result file.
    File(PathBuf),
    /// Two parties' encodings, linked here at `threshold` (the lowest score kept).
    Encodings { files: Vec<String>, threshold: f64 },
    /// A run's `similarity_scores` result on the service.
    Service { client: ServiceClient, project: String, run: String, token: String },
}

pub struct HistogramOptions {
    pub source: ScoresSource,
    /// Ground truth CSV: `row_a,row_b` after a header line.
    pub truth: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    pub bins: usize,
}

/// One scored pair: (record in party 0, record in party 1, score).
pub type ScoredPair = (u64, u64, f64);

pub fn run(o: HistogramOptions) -> anyhow::Result<()> {
    let scores = match o.source {
        ScoresSource::File(path) => Scores::File(path),
        ScoresSource::Encodings { files, threshold } => Scores::Pairs(
            super::link::similarity_scores(&files, threshold, false)?
                .into_iter()
                .map(|c| (c.r0 as u64, c.r1 as u64, c.score))
                .collect(),
        ),
        ScoresSource::Service { client, project, run, token } => {
            let result = client.result(&project, &run, &token)?;
            let mut pairs = Vec::new();
            read_scores(result, |pair| pairs.push(pair)).context("the run's result (is it a similarity_scores project?)")?;
            Scores::Pairs(pairs)
        }
    };
    let truth = match &o.truth {
        Some(path) => Some(read_truth(path)?),
        None => None,
    };
    // Two passes over the scores: the lowest score places the bins, then each pair is counted.
    let (mut count, mut min) = (0u64, 1.0f64);
    scores.for_each(|(_, _, score)| {
        count += 1;
        min = min.min(score);
    })?;
    if count == 0 {
        bail!("no scored pairs to draw");
    }
    let mut hist = Histogram::starting_at(min, truth.as_ref(), o.bins);
    scores.for_each(|pair| hist.add(pair, truth.as_ref()))?;
    let suggestion = suggest_threshold(&hist.totals());
    let colour = std::io::stdout().is_terminal();
    print!("{}", terminal_chart(&hist, suggestion.as_ref(), colour));
    if let Some(path) = &o.svg {
        svg_chart(path, &hist, suggestion.as_ref())?;
        eprintln!("pprl: wrote {}", path.display());
    }
    Ok(())
}

/// Scores to count: a result file is read again for each pass (one row in memory at a time,
/// however many scores it holds); scores computed or fetched here are already in memory.
enum Scores {
    File(PathBuf),
    Pairs(Vec<ScoredPair>),
}

impl Scores {
    fn for_each(&self, each: impl FnMut(ScoredPair)) -> anyhow::Result<()> {
        match self {
            Scores::File(path) => {
                let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
                let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
                read_scores(&mut de, each)
                    .and_then(|()| de.end().map_err(anyhow::Error::from))
                    .with_context(|| format!("{}", path.display()))
            }
            Scores::Pairs(pairs) => {
                pairs.iter().copied().for_each(each);
                Ok(())
            }
        }
    }
}

/// Reads a `similarity_scores` result, `{"similarity_scores": [[[d0, r0], [d1, r1], score], ...]}`
/// (API v1) or the older `[[r0, r1, score], ...]` rows, from any serde deserializer (a file as it
/// is read, or a JSON value), calling `each` with every pair in order. Other members are skipped.
pub fn read_scores<'de, D: Deserializer<'de>>(de: D, each: impl FnMut(ScoredPair)) -> anyhow::Result<()>
where
    D::Error: Send + Sync + 'static,
{
    if de.deserialize_map(ResultVisitor { each })? {
        Ok(())
    } else {
        bail!("no \"similarity_scores\" list (expected a similarity_scores result)")
    }
}

/// The result object; answers whether it had a `similarity_scores` member.
struct ResultVisitor<F> {
    each: F,
}

impl<'de, F: FnMut(ScoredPair)> Visitor<'de> for ResultVisitor<F> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a similarity_scores result object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "similarity_scores" {
                map.next_value_seed(Rows { each: &mut self.each })?;
                found = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The `similarity_scores` list, row by row.
struct Rows<'a, F> {
    each: &'a mut F,
}

impl<'de, F: FnMut(ScoredPair)> DeserializeSeed<'de> for Rows<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(ScoredPair)> Visitor<'de> for Rows<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of [[d0, r0], [d1, r1], score] rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while let Some(row) = seq.next_element::<Value>()? {
            (self.each)(parse_row(i, &row).map_err(de::Error::custom)?);
            i += 1;
        }
        Ok(())
    }
}

/// One row: `[[d0, r0], [d1, r1], score]` or `[r0, r1, score]`, with a score in `[0, 1]`.
fn parse_row(i: usize, row: &Value) -> Result<ScoredPair, String> {
    let bad = || format!("similarity_scores[{i}] is not [[d0, r0], [d1, r1], score] or [r0, r1, score]");
    let row = row.as_array().ok_or_else(bad)?;
    let (a, b, score) = match row.as_slice() {
        [a, b, s] if a.is_array() => (a[1].as_u64(), b[1].as_u64(), s.as_f64()),
        [a, b, s] => (a.as_u64(), b.as_u64(), s.as_f64()),
        _ => return Err(bad()),
    };
    match (a, b, score) {
        (Some(a), Some(b), Some(s)) if (0.0..=1.0).contains(&s) => Ok((a, b, s)),
        _ => Err(bad()),
    }
}

/// The true matches: `row_a,row_b` lines after a header.
pub fn read_truth(path: &Path) -> anyhow::Result<HashSet<(u64, u64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let parse = || -> Option<(u64, u64)> {
                let (a, b) = l.split_once(',')?;
                Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
            };
            parse().ok_or_else(|| anyhow!("{} line {}: expected 'row_a,row_b', got '{l}'", path.display(), i + 2))
        })
        .collect()
}

/// Counts per bin over `[low, 1]`, split into matches and non-matches when the truth is known.
pub struct Histogram {
    pub low: f64,
    pub width: f64,
    pub non_matches: Vec<u64>,
    /// `Some` only with a truth file.
    pub matches: Option<Vec<u64>>,
    /// Every true pair, scored or not (recall's denominator).
    pub true_pairs: u64,
}

impl Histogram {
    /// Empty bins over `[low, 1]`, `low` being the lowest score rounded down to a multiple of
    /// 0.01 (so bin edges read well).
    pub fn starting_at(min_score: f64, truth: Option<&HashSet<(u64, u64)>>, bins: usize) -> Self {
        let low = ((min_score * 100.0).floor() / 100.0).min(0.99);
        let width = (1.0 - low) / bins as f64;
        Self {
            low,
            width,
            non_matches: vec![0; bins],
            matches: truth.map(|_| vec![0; bins]),
            true_pairs: truth.map_or(0, |t| t.len() as u64),
        }
    }

    /// Counts one pair (a match if `truth` has it); a score below `low` counts in the first bin.
    pub fn add(&mut self, (a, b, score): ScoredPair, truth: Option<&HashSet<(u64, u64)>>) {
        let bin = (((score - self.low) / self.width).max(0.0) as usize).min(self.bins() - 1);
        match (&mut self.matches, truth) {
            (Some(m), Some(t)) if t.contains(&(a, b)) => m[bin] += 1,
            _ => self.non_matches[bin] += 1,
        }
    }

    /// The histogram of pairs in memory, in one go (what [`run`]'s two passes build).
    #[cfg(test)]
    pub fn new(pairs: &[ScoredPair], truth: Option<&HashSet<(u64, u64)>>, bins: usize) -> Self {
        let min = pairs.iter().map(|p| p.2).fold(1.0, f64::min);
        let mut h = Self::starting_at(min, truth, bins);
        for &pair in pairs {
            h.add(pair, truth);
        }
        h
    }

    pub fn bins(&self) -> usize {
        self.non_matches.len()
    }

    pub fn edge(&self, bin: usize) -> f64 {
        self.low + self.width * bin as f64
    }

    pub fn totals(&self) -> Vec<u64> {
        (0..self.bins()).map(|i| self.non_matches[i] + self.matches.as_ref().map_or(0, |m| m[i])).collect()
    }

    /// Pair-level precision and recall when every pair scoring at least bin `bin`'s lower edge is
    /// taken as a match (before the solver): `None` without the truth.
    pub fn precision_recall(&self, bin: usize) -> Option<(f64, f64)> {
        let matches = self.matches.as_ref()?;
        let tp: u64 = matches[bin..].iter().sum();
        let taken: u64 = tp + self.non_matches[bin..].iter().sum::<u64>();
        let precision = if taken == 0 { 1.0 } else { tp as f64 / taken as f64 };
        let recall = if self.true_pairs == 0 { 0.0 } else { tp as f64 / self.true_pairs as f64 };
        Some((precision, recall))
    }
}

/// The suggested threshold and the two modes it separates, as bin indices and scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub valley_bin: usize,
    pub low_mode_bin: usize,
    pub high_mode_bin: usize,
}

impl Suggestion {
    pub fn threshold(&self, h: &Histogram) -> f64 {
        h.edge(self.valley_bin) + h.width / 2.0
    }
    pub fn modes(&self, h: &Histogram) -> (f64, f64) {
        (h.edge(self.low_mode_bin) + h.width / 2.0, h.edge(self.high_mode_bin) + h.width / 2.0)
    }
}

/// The deepest valley between two modes of `ln(1 + count)` smoothed over 3 bins (module doc).
pub fn suggest_threshold(counts: &[u64]) -> Option<Suggestion> {
    let n = counts.len();
    if n < 3 {
        return None;
    }
    let log: Vec<f64> = counts.iter().map(|&c| (c as f64).ln_1p()).collect();
    let smooth: Vec<f64> = (0..n)
        .map(|i| {
            let window = &log[i.saturating_sub(1)..(i + 2).min(n)];
            window.iter().sum::<f64>() / window.len() as f64
        })
        .collect();
    let argmax = |range: std::ops::Range<usize>| range.max_by(|&a, &b| smooth[a].total_cmp(&smooth[b]).then(b.cmp(&a)));
    let depth = |v: usize| -> f64 {
        match (argmax(0..v), argmax(v + 1..n)) {
            (Some(l), Some(r)) => smooth[l].min(smooth[r]) - smooth[v],
            _ => 0.0,
        }
    };
    let depths: Vec<f64> = (0..n).map(depth).collect();
    let deepest = depths.iter().cloned().fold(0.0, f64::max);
    if deepest <= 1e-9 {
        return None;
    }
    // The first run of bins as deep as the deepest (within rounding), and its middle.
    let first = depths.iter().position(|&d| deepest - d < 1e-9)?;
    let last = (first..n).take_while(|&i| deepest - depths[i] < 1e-9).last()?;
    let valley_bin = (first + last) / 2;
    Some(Suggestion {
        valley_bin,
        low_mode_bin: argmax(0..valley_bin)?,
        high_mode_bin: argmax(valley_bin + 1..n)?,
    })
}

const BAR_WIDTH: usize = 50;

/// The histogram as text: one row per bin, bar lengths on a log scale, matches (`#`) and
/// non-matches (`.`) apart when known, precision/recall per row, and the suggestion marked.
pub fn terminal_chart(h: &Histogram, suggestion: Option<&Suggestion>, colour: bool) -> String {
    let totals = h.totals();
    let max = totals.iter().map(|&c| (c as f64).ln_1p()).fold(0.0, f64::max).max(1e-9);
    let paint = |code: &str, text: String| if colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text };
    let mut out = String::new();
    out.push_str(&format!("similarity scores: {} pairs in {} bins of {:.4} (bar length: log scale)\n", totals.iter().sum::<u64>(), h.bins(), h.width));
    if h.matches.is_some() {
        out.push_str("score    bar: '#' matches, '.' non-matches                      non-match     match  precision  recall\n");
    }
    for bin in 0..h.bins() {
        let total = totals[bin];
        let len = ((total as f64).ln_1p() / max * BAR_WIDTH as f64).round() as usize;
        let bar = match &h.matches {
            Some(m) => {
                let hashes = if total == 0 { 0 } else { ((m[bin] as f64 / total as f64) * len as f64).round() as usize };
                format!("{}{}", paint("32", "#".repeat(hashes)), paint("90", ".".repeat(len - hashes)))
            }
            None => "#".repeat(len),
        };
        let pad = " ".repeat(BAR_WIDTH - len);
        let mut row = format!("{:.3}  |{bar}{pad}", h.edge(bin));
        match (&h.matches, h.precision_recall(bin)) {
            (Some(m), Some((p, r))) => row.push_str(&format!(" {:>10} {:>9}  {p:>9.4}  {r:.4}", h.non_matches[bin], m[bin])),
            _ => row.push_str(&format!(" {total}")),
        }
        if suggestion.is_some_and(|s| s.valley_bin == bin) {
            row.push_str(&paint("31;1", "  <- suggested threshold".into()));
        }
        out.push_str(&row);
        out.push('\n');
    }
    match suggestion {
        Some(s) => {
            let (low, high) = s.modes(h);
            out.push_str(&format!("suggested threshold: {:.4} (valley between the modes at {low:.4} and {high:.4})\n", s.threshold(h)));
        }
        None => out.push_str("suggested threshold: none (the histogram has no valley between two modes)\n"),
    }
    out
}

/// Draws the histogram as SVG (log count axis), the suggestion as a vertical line and, with the
/// truth, matches and non-matches in two colours and precision/recall curves on a right axis.
pub fn svg_chart(path: &Path, h: &Histogram, suggestion: Option<&Suggestion>) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let ymax = h.totals().into_iter().max().unwrap_or(1).max(1) as f64 * 2.0;
    let x = h.low..1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Similarity scores (pairs per bin, log scale)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .right_y_label_area_size(if h.matches.is_some() { 64 } else { 0 })
        .build_cartesian_2d(x.clone(), (0.8f64..ymax).log_scale())
        .map_err(|e| err(&e))?
        .set_secondary_coord(x, 0f64..1f64);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("Dice similarity")
        .y_desc("pairs")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    let non_match_colour = RGBColor(90, 120, 180);
    let match_colour = RGBColor(230, 130, 30);
    let bars = |counts: &[u64], colour: RGBColor| -> Vec<Rectangle<(f64, f64)>> {
        counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| Rectangle::new([(h.edge(i), 0.8), (h.edge(i + 1), c as f64)], colour.mix(0.75).filled()))
            .collect()
    };
    let label = if h.matches.is_some() { "non-matches" } else { "pairs" };
    chart
        .draw_series(bars(&h.non_matches, non_match_colour))
        .map_err(|e| err(&e))?
        .label(label)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], non_match_colour.filled()));
    if let Some(m) = &h.matches {
        chart
            .draw_series(bars(m, match_colour))
            .map_err(|e| err(&e))?
            .label("matches")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], match_colour.filled()));
        let curve = |pick: fn((f64, f64)) -> f64| -> Vec<(f64, f64)> {
            (0..h.bins()).filter_map(|i| h.precision_recall(i).map(|pr| (h.edge(i), pick(pr)))).collect()
        };
        chart
            .configure_secondary_axes()
            .y_desc("precision / recall (pairs scoring >= t)")
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_secondary_series(LineSeries::new(curve(|pr| pr.0), GREEN.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("precision")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], GREEN.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(curve(|pr| pr.1), MAGENTA.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("recall")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], MAGENTA.stroke_width(2)));
    }
    if let Some(s) = suggestion {
        let t = s.threshold(h);
        chart
            .draw_series(LineSeries::new(vec![(t, 0.8), (t, ymax)], RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("suggested threshold {t:.3}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valley_lies_between_the_two_modes() {
        // Many low scores falling off, a gap, then a smaller bump of matches.
        let counts = [900, 500, 200, 60, 10, 2, 0, 0, 1, 3, 20, 80, 150, 90, 20];
        let s = suggest_threshold(&counts).unwrap();
        assert_eq!((s.low_mode_bin, s.high_mode_bin), (0, 12));
        assert!((5..=8).contains(&s.valley_bin), "{s:?}");
    }

    #[test]
    fn a_single_mode_has_no_suggestion() {
        assert_eq!(suggest_threshold(&[1, 5, 20, 50, 20, 5, 1]), None);
        assert_eq!(suggest_threshold(&[100, 50, 20, 5, 1]), None);
        assert_eq!(suggest_threshold(&[0, 0, 0]), None);
    }

    fn parse_scores(text: &str) -> anyhow::Result<Vec<ScoredPair>> {
        let mut pairs = Vec::new();
        let mut de = serde_json::Deserializer::from_reader(text.as_bytes());
        read_scores(&mut de, |p| pairs.push(p))?;
        de.end()?;
        Ok(pairs)
    }

    #[test]
    fn both_score_shapes_parse_and_bad_rows_are_named() {
        let text = r#"{"similarity_scores":[[[0,3],[1,4],0.9],[5,6,0.75]]}"#;
        assert_eq!(parse_scores(text).unwrap(), vec![(3, 4, 0.9), (5, 6, 0.75)]);
        let mut from_value = Vec::new();
        read_scores(serde_json::from_str::<Value>(text).unwrap(), |p| from_value.push(p)).unwrap();
        assert_eq!(from_value, vec![(3, 4, 0.9), (5, 6, 0.75)]);
        let err = parse_scores(r#"{"similarity_scores":[[[0,3],[1,4],0.9],[[0,3],[1,4],1.5]]}"#).unwrap_err();
        assert!(err.to_string().contains("similarity_scores[1]"), "{err}");
        assert!(parse_scores(r#"{"groups": []}"#).unwrap_err().to_string().contains("no \"similarity_scores\""));
        assert!(parse_scores(r#"{"similarity_scores": []} trailing"#).is_err());
    }

    #[test]
    fn a_scores_file_is_read_one_row_at_a_time_with_other_members_skipped() {
        // Rows arrive in order while the file is read; the histogram of two passes over the
        // file equals the one built from the pairs in memory.
        let dir = std::env::temp_dir().join(format!("pprl-histogram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("scores.json");
        let pairs: Vec<ScoredPair> = (0..2000u64).map(|i| (i, i % 7, 0.5 + (i % 50) as f64 / 100.0)).collect();
        let rows: Vec<Value> = pairs.iter().map(|&(a, b, s)| serde_json::json!([[0, a], [1, b], s])).collect();
        std::fs::write(&path, serde_json::json!({"note": {"nested": [1, 2]}, "similarity_scores": rows}).to_string()).unwrap();
        let scores = Scores::File(path.clone());
        let mut seen = Vec::new();
        scores.for_each(|p| seen.push(p)).unwrap();
        assert_eq!(seen, pairs);
        let mut streamed = Histogram::starting_at(0.5, None, 20);
        scores.for_each(|p| streamed.add(p, None)).unwrap();
        assert_eq!(streamed.non_matches, Histogram::new(&pairs, None, 20).non_matches);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn precision_and_recall_count_pairs_at_or_above_each_edge() {
        let truth: HashSet<(u64, u64)> = [(1, 1), (2, 2), (3, 3)].into();
        let pairs = [(1, 1, 0.95), (2, 2, 0.85), (7, 8, 0.85), (9, 9, 0.55)];
        let h = Histogram::new(&pairs, Some(&truth), 5); // low 0.55, width 0.09
        assert_eq!(h.precision_recall(0), Some((0.5, 2.0 / 3.0)));
        let top = h.bins() - 1;
        assert_eq!(h.precision_recall(top), Some((1.0, 1.0 / 3.0)));
    }
}
