//! The Dice kernel: compares one shard's records and keeps the pairs at or above the threshold.
//!
//! # Exactness (bit-identical to anonlink 0.15.3 `dice_coefficient_accelerated`, k=None)
//!
//! A pair's score is `(2·c) as f64 / (pa + pb) as f64` with `c = popcount(a & b)` and `pa`, `pb`
//! the records' popcounts, exactly anonlink's expression; a pair is kept iff `score >= t`.
//! The kernel never divides per pair. For a popcount sum `s`, the score is non-decreasing in `c`
//! (f64 division is correctly rounded, hence monotone), so "score ≥ t" is equivalent to
//! `c >= needed[s]`, where `needed[s]` is the least `c` for which the *same f64 expression*
//! passes ([`ThresholdTable`]); the score is computed only for kept pairs, with that expression.
//!
//! anonlink also skips, for the row `a` of the first dataset, every `b` with
//! `|pa − pb| > trunc(2·pa·(1/t − 1))` (its `calculate_max_difference`, computed in f64 and
//! truncated to u32). In exact arithmetic that filter drops only pairs that cannot pass, but its
//! rounding could in principle drop a pair scoring exactly `t`; we apply the identical filter so
//! that even then the answers agree. Records with popcount 0 follow anonlink too: a zero row of
//! the first dataset matches nothing when `t > 0`, and `0/0` scores 0.0 (only `t ≤ 0` keeps it).
//!
//! # Pruning
//!
//! All of it exact: a pair is skipped only when it provably cannot pass.
//!
//! - Popcount bound: `c ≤ min(pa, pb)`, so a pair with `min(pa, pb) < needed[pa + pb]` cannot
//!   pass. Each side is copied into popcount order ([`Side`]), which turns the pairs an A row can
//!   pass with into one run of B rows, found once per distinct popcount, instead of a test per
//!   pair. Entry order (and thus the planner's contiguous spans) is untouched: the copy is the
//!   kernel's own, and results are mapped back to entry positions.
//! - Early exit (1024-bit encodings, AVX2): after the AND count of the first 512 (then 768)
//!   bits, each remaining 16-bit piece can add at most `min(popcount(a_k), popcount(b_k))`; a
//!   pair whose partial count plus that is below `needed` is dropped without reading the rest.
//!   On CLKs at t = 0.8 (synthetic and FEBRL4) that halves the work per pair.
//!
//! # Speed
//!
//! - Runtime CPU-feature dispatch ([`KernelPath`]): AVX2 (nibble-LUT popcount on 256-bit
//!   vectors), scalar `popcnt`, or portable Rust, in that order of preference (measured, see
//!   [`KernelPath::detect`]). The release build needs no `-C target-cpu`; each path is compiled
//!   with `#[target_feature]` and chosen once with `is_x86_feature_detected!`.
//! - 1024-bit encodings on AVX2: one A row (held in registers, pre-split into nibbles) against
//!   four B rows at a time, whose four horizontal sums share one reduction.
//! - Other sizes: word counts common for CLKs (64, 128, 256, 512 bytes) get a fully unrolled
//!   const-generic loop with four independent accumulators; other sizes a generic loop.
//! - Cache tiling: each rayon work item is a tile of [`A_TILE`] rows of the first side, which
//!   walks the other side in tiles of [`B_TILE`] rows, so a B tile (16 KB for 1024-bit CLKs)
//!   stays in L1 while every A row of the work item meets it.
//! - rayon parallelism within a shard over (task, A tile) work items.
//!
//! # Where things are
//!
//! One file per concern, so that a change to one kernel path cannot disturb the exactness
//! argument or the layout the others rely on:
//!
//! - [`threshold`]: the exact score and the per-threshold table that replaces the division.
//! - [`layout`]: one side copied into the kernel's popcount order.
//! - [`dispatch`]: the runtime choice of kernel path.
//! - [`portable`] and [`x86`]: the kernels; this module: the entry points over shards and views.

mod dispatch;
mod layout;
mod portable;
mod threshold;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::ops::Range;

use rayon::prelude::*;

use super::candidates::{self, Candidate};
use super::packed::{Entries, FormatError};
use super::shard::Shard;

pub use dispatch::KernelPath;
pub use threshold::{ThresholdTable, dice, score};

use dispatch::{check_path, run_tile};
use layout::{Hit, Side};

/// Rows of the first side per work item (and per tile).
pub const A_TILE: usize = 64;
/// Rows of the second side kept hot in L1 while an A tile passes over them.
pub const B_TILE: usize = 128;

/// A kept pair of [`compare_entries`]: entry positions within the two views, and the score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    pub a: u32,
    pub b: u32,
    pub score: f64,
}

/// Compares every entry of `a` with every entry of `b` on `path` (result in no particular order:
/// sorting it would cost more than the kernel at low thresholds, and callers sort anyway).
/// `a` plays anonlink's first dataset. `parallel` runs A tiles on the rayon pool.
///
/// Errors when the two views hold different encoding sizes or the path is not available here.
pub fn compare_entries(
    a: Entries<'_>,
    b: Entries<'_>,
    threshold: f64,
    path: KernelPath,
    parallel: bool,
) -> Result<Vec<Match>, FormatError> {
    check_sizes(&a, &b)?;
    check_path(path)?;
    let table = ThresholdTable::new(threshold, a.encoding_size());
    let (sa, sb) = (Side::new(a), Side::new(b));
    let tiles: Vec<Range<usize>> = tiles_of(sa.len());
    let run = |rows: &Range<usize>| {
        let mut hits = Vec::new();
        run_tile(path, &table, &sa, &sb, rows.clone(), &mut hits);
        hits
    };
    let hits: Vec<Vec<Hit>> = if parallel { tiles.par_iter().map(run).collect() } else { tiles.iter().map(run).collect() };
    Ok(hits
        .into_iter()
        .flatten()
        .map(|h| Match {
            a: sa.original[h.a as usize],
            b: sb.original[h.b as usize],
            score: score(h.and_count, sa.popcounts[h.a as usize] + sb.popcounts[h.b as usize]),
        })
        .collect())
}

/// Runs one shard. `inputs` holds, for every party in `shard.entry_spans()`, the entries of that
/// span. Returns the shard's candidates sorted in the anonlink order and deduplicated (a pair
/// sharing several blocks of the shard appears once).
pub fn compare_shard(shard: &Shard, threshold: f64, inputs: &[(u32, Entries<'_>)]) -> Result<Vec<Candidate>, FormatError> {
    compare_shard_with(KernelPath::detect(), shard, threshold, inputs)
}

/// [`compare_shard`] on an explicit kernel path (tests and benchmarks).
pub fn compare_shard_with(
    path: KernelPath,
    shard: &Shard,
    threshold: f64,
    inputs: &[(u32, Entries<'_>)],
) -> Result<Vec<Candidate>, FormatError> {
    check_path(path)?;
    let view = |party: u32, range: &Range<u64>| -> Result<Entries<'_>, FormatError> {
        let (_, entries) = inputs
            .iter()
            .find(|(p, _)| *p == party)
            .ok_or_else(|| FormatError::ShardInput(format!("no entries given for party {party}")))?;
        entries.slice(range.clone()).ok_or_else(|| {
            FormatError::ShardInput(format!(
                "party {party}: entries {range:?} are outside the given span starting at {} with {} entries",
                entries.first_entry(),
                entries.len()
            ))
        })
    };
    let mut views = Vec::with_capacity(shard.tasks.len());
    for task in &shard.tasks {
        let (a, b) = (view(task.party_a, &task.a)?, view(task.party_b, &task.b)?);
        check_sizes(&a, &b)?;
        views.push((task.party_a, task.party_b, a, b));
    }
    let Some(encoding_size) = views.first().map(|(_, _, a, _)| a.encoding_size()) else {
        return Ok(Vec::new());
    };
    if let Some((_, _, other, _)) = views.iter().find(|(_, _, a, _)| a.encoding_size() != encoding_size) {
        return Err(FormatError::ShardInput(format!(
            "parties hold encodings of different sizes ({encoding_size} and {} bytes)",
            other.encoding_size()
        )));
    }
    let sides: Vec<(u32, u32, Side<'_>, Side<'_>)> =
        views.into_par_iter().map(|(d0, d1, a, b)| (d0, d1, Side::new(a), Side::new(b))).collect();
    let table = ThresholdTable::new(threshold, encoding_size);
    let work: Vec<(usize, Range<usize>)> = sides
        .iter()
        .enumerate()
        .filter(|(_, (_, _, _, b))| b.len() > 0)
        .flat_map(|(t, (_, _, a, _))| tiles_of(a.len()).into_iter().map(move |rows| (t, rows)))
        .collect();
    let per_item: Vec<Vec<Candidate>> = work
        .par_iter()
        .map(|(t, rows)| {
            let (d0, d1, sa, sb) = &sides[*t];
            let mut hits = Vec::new();
            run_tile(path, &table, sa, sb, rows.clone(), &mut hits);
            hits.iter()
                .map(|h| Candidate {
                    score: score(h.and_count, sa.popcounts[h.a as usize] + sb.popcounts[h.b as usize]),
                    d0: *d0,
                    r0: sa.entries.record_index(sa.original[h.a as usize] as usize),
                    d1: *d1,
                    r1: sb.entries.record_index(sb.original[h.b as usize] as usize),
                })
                .collect()
        })
        .collect();
    let mut all: Vec<Candidate> = per_item.into_iter().flatten().collect();
    candidates::sort_dedup(&mut all);
    Ok(all)
}

fn check_sizes(a: &Entries<'_>, b: &Entries<'_>) -> Result<(), FormatError> {
    if a.encoding_size() != b.encoding_size() {
        return Err(FormatError::ShardInput(format!(
            "encodings of {} and {} bytes cannot be compared",
            a.encoding_size(),
            b.encoding_size()
        )));
    }
    Ok(())
}

fn tiles_of(len: usize) -> Vec<Range<usize>> {
    (0..len).step_by(A_TILE).map(|start| start..(start + A_TILE).min(len)).collect()
}


#[cfg(test)]
mod tests;
