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

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::candidates::{self, Candidate};
use super::packed::{Entries, FormatError};
use super::shard::Shard;

/// Rows of the first side per work item (and per tile).
pub const A_TILE: usize = 64;
/// Rows of the second side kept hot in L1 while an A tile passes over them.
pub const B_TILE: usize = 128;

/// `needed[s]` for "never passes".
const NEVER: u32 = u32::MAX;

/// The exact Dice formula of anonlink's `dice_coeff`: `2·popcount(a&b) / (popcount(a) +
/// popcount(b))` as f64, and 0.0 when either side has no bit set. Slices of different lengths
/// are compared over the shorter length (the engine never does that; encodings of a project
/// share one size).
pub fn dice(a: &[u8], b: &[u8]) -> f64 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let pa: u32 = a.iter().map(|x| x.count_ones()).sum();
    let pb: u32 = b.iter().map(|x| x.count_ones()).sum();
    if pa == 0 || pb == 0 {
        return 0.0;
    }
    let c: u32 = a.iter().zip(b).map(|(x, y)| (x & y).count_ones()).sum();
    score(c, pa + pb)
}

/// anonlink's score expression, `(2 * uv_popc) / (double)(u_popc + v_popc)`, with the 0/0 case
/// (two empty encodings) defined as 0.0 like its `dice_coeff`.
#[inline]
pub fn score(and_count: u32, popcount_sum: u32) -> f64 {
    if popcount_sum == 0 {
        return 0.0;
    }
    (2 * u64::from(and_count)) as f64 / f64::from(popcount_sum)
}

/// Per-threshold tables that replace every per-pair division (see the module doc).
#[derive(Clone, Debug)]
pub struct ThresholdTable {
    threshold: f64,
    bits: u32,
    /// `needed[s]`: least AND-count whose score at popcount sum `s` is `>= threshold`.
    needed: Vec<u32>,
    /// anonlink's `calculate_max_difference(pa, t)` per popcount `pa` of the first side.
    max_delta: Vec<u32>,
    /// `floor[s]`: the least `needed[s']` over all `s' ≥ s`. `needed` is not monotone (an odd
    /// sum can be [`NEVER`] where the next even one is not), `floor` is, so it bounds a whole
    /// group of pairs whose popcount sums are at least `s` from below.
    floor: Vec<u32>,
}

impl ThresholdTable {
    /// Tables for encodings of `encoding_size` bytes.
    pub fn new(threshold: f64, encoding_size: usize) -> Self {
        let bits = (encoding_size * 8) as u32;
        let needed: Vec<u32> = (0..=2 * bits).map(|s| least_passing_and_count(threshold, s)).collect();
        let max_delta = (0..=bits)
            .map(|pa| {
                if threshold > 0.0 {
                    // C: uint32 * double → double, truncated back to uint32 (saturating here,
                    // where C would be undefined; only thresholds near 0 get there).
                    (f64::from(2 * pa) * (1.0 / threshold - 1.0)) as u32
                } else {
                    bits
                }
            })
            .collect();
        let mut floor = needed.clone();
        for s in (0..floor.len().saturating_sub(1)).rev() {
            floor[s] = floor[s].min(floor[s + 1]);
        }
        ThresholdTable { threshold, bits, needed, max_delta, floor }
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether a pair with these popcounts can pass at all (exact bound plus anonlink's filter).
    #[inline(always)]
    fn admissible(&self, pa: u32, pb: u32) -> Option<u32> {
        debug_assert!(pa <= self.bits && pb <= self.bits);
        // SAFETY: popcounts come from validated `Entries` (equal to the real popcount of an
        // encoding of `bits` bits), so pa, pb ≤ bits and the tables are long enough.
        let (needed, delta) =
            unsafe { (*self.needed.get_unchecked((pa + pb) as usize), *self.max_delta.get_unchecked(pa as usize)) };
        (pa.abs_diff(pb) <= delta && pa.min(pb) >= needed).then_some(needed)
    }

    /// Whether the pair with these counts is kept (the plain, table-free definition).
    pub fn keeps(&self, pa: u32, pb: u32, and_count: u32) -> bool {
        if pa == 0 && self.threshold > 0.0 {
            return false;
        }
        let delta_ok = self.threshold <= 0.0 || pa.abs_diff(pb) <= self.max_delta[pa as usize];
        delta_ok && score(and_count, pa + pb) >= self.threshold
    }
}

/// The least `c ≤ s/2` with `score(c, s) >= t`, evaluated with the same f64 expression, or
/// [`NEVER`]. `s/2` bounds `c` because `c ≤ min(pa, pb) ≤ s/2`.
fn least_passing_and_count(t: f64, s: u32) -> u32 {
    let passes = |c: u32| score(c, s) >= t;
    let max_c = s / 2;
    if !passes(max_c) {
        return NEVER;
    }
    // Start near the answer (ceil(t·s/2)), then step to the exact boundary.
    let guess = if t.is_finite() && t > 0.0 { ((t * f64::from(s)) / 2.0).ceil().min(f64::from(max_c)) as u32 } else { 0 };
    let mut c = guess;
    while c > 0 && passes(c - 1) {
        c -= 1;
    }
    while !passes(c) {
        c += 1;
    }
    c
}

/// Which inner loop runs the AND-popcounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Plain Rust, any CPU (`count_ones` compiles to a bit-twiddling sequence).
    Portable,
    /// x86-64 `popcnt` on 64-bit words, four accumulators.
    Popcnt,
    /// x86-64 AVX2: AND and nibble-LUT popcount on 256-bit vectors, one horizontal sum per pair.
    Avx2,
}

impl KernelPath {
    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Popcnt => std::arch::is_x86_feature_detected!("popcnt"),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every path this CPU can run.
    pub fn available() -> Vec<KernelPath> {
        [KernelPath::Portable, KernelPath::Popcnt, KernelPath::Avx2].into_iter().filter(|p| p.is_available()).collect()
    }

    /// The fastest available path, detected once. Measured on the project's AMD EPYC (Zen 3)
    /// machines, AVX2 nibble-LUT counting beats scalar `popcnt` for 1024-bit CLKs by ~20-40%
    /// (docs/kernel-benchmark.md), so AVX2 is preferred, then `popcnt`, then portable code.
    pub fn detect() -> KernelPath {
        static DETECTED: OnceLock<KernelPath> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if KernelPath::Avx2.is_available() {
                KernelPath::Avx2
            } else if KernelPath::Popcnt.is_available() {
                KernelPath::Popcnt
            } else {
                KernelPath::Portable
            }
        })
    }
}

/// 32 bytes, the AVX2 vector width. A [`Side`] stores each row as whole chunks so that vector
/// loads are aligned and never straddle two rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Chunk([u64; 4]);

/// Zero rows after the last row of a [`Side`], so a kernel handling [`GROUP`] rows at once may
/// read a whole group starting at any row (the extra lanes are masked out, and zero rows would
/// add nothing to an AND count anyway).
const PAD_ROWS: usize = GROUP - 1;

/// B rows one AVX2 step handles against one A row.
const GROUP: usize = 4;

/// One side of a block-pair comparison, copied into kernel order: rows sorted by popcount.
///
/// Sorting makes every A row's admissible partners (popcounts that can reach the threshold) one
/// contiguous run of B rows, found once per distinct popcount instead of being tested per pair,
/// and it puts rows of near-equal popcount side by side, so one bound serves a whole group of
/// rows. The copy costs O(n) per shard task against O(n·m) pairs; the packed format is untouched.
struct Side<'a> {
    entries: Entries<'a>,
    chunks_per_row: usize,
    /// Row `i` is chunks `i*chunks_per_row ..`, zero-padded; then [`PAD_ROWS`] zero rows.
    rows: Vec<Chunk>,
    /// Ascending.
    popcounts: Vec<u32>,
    /// The entry position (within `entries`) of each sorted row.
    original: Vec<u32>,
    /// `(popcount, first row)` of every distinct popcount, ascending.
    runs: Vec<(u32, u32)>,
    /// 1024-bit encodings only (else empty): per row, byte `k` is the popcount of bits
    /// `512 + 16k .. 528 + 16k`, i.e. of each 16-bit piece of the row's second half; then
    /// [`PAD_ROWS`] zero rows. A piece can add at most `min(popcount(a_k), popcount(b_k))` to an
    /// AND count, which is the early exit's bound. 16-bit pieces make it tight enough to end
    /// almost every non-matching pair of real CLKs (FEBRL4) at 512 bits (64-bit pieces leave 9%
    /// of them, whole halves 42%), and 32 bytes a row is exactly one AVX2 vector.
    tail_pieces: Vec<Chunk>,
}

impl<'a> Side<'a> {
    fn new(entries: Entries<'a>) -> Self {
        let size = entries.encoding_size();
        let chunks_per_row = size.div_ceil(32);
        let mut order: Vec<u32> = (0..entries.len() as u32).collect();
        // Stable: rows of equal popcount keep entry order, so the result does not depend on the
        // sort algorithm.
        order.sort_by_key(|&i| entries.popcount(i as usize));
        let mut rows = vec![Chunk([0; 4]); (order.len() + PAD_ROWS) * chunks_per_row];
        for (row, &i) in order.iter().enumerate() {
            let dst = &mut rows[row * chunks_per_row..(row + 1) * chunks_per_row];
            for (w, src) in entries.encoding(i as usize).chunks_exact(8).enumerate() {
                dst[w / 4].0[w % 4] = u64::from_le_bytes(src.try_into().expect("8-byte chunk"));
            }
        }
        let popcounts: Vec<u32> = order.iter().map(|&i| entries.popcount(i as usize)).collect();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for (row, &p) in popcounts.iter().enumerate() {
            if runs.last().is_none_or(|&(q, _)| q != p) {
                runs.push((p, row as u32));
            }
        }
        let tail_pieces: Vec<Chunk> = if size == 128 {
            (0..order.len() + PAD_ROWS)
                .map(|row| {
                    let mut pieces = [0u64; 4];
                    let words = rows[row * 4 + 2..row * 4 + 4].iter().flat_map(|c| c.0);
                    for (w, word) in words.enumerate() {
                        for k in 0..4 {
                            let piece = 4 * w + k;
                            pieces[piece / 8] |= u64::from((word >> (16 * k) & 0xffff).count_ones()) << (8 * (piece % 8));
                        }
                    }
                    Chunk(pieces)
                })
                .collect()
        } else {
            Vec::new()
        };
        Side { entries, chunks_per_row, rows, popcounts, original: order, runs, tail_pieces }
    }

    fn len(&self) -> usize {
        self.popcounts.len()
    }

    /// The first word of sorted row `row` (`row < len + PAD_ROWS`, bounds-checked: once per
    /// pair or per group of pairs, against ~30 vector instructions each).
    #[inline(always)]
    fn row_ptr(&self, row: usize) -> *const u64 {
        self.rows[row * self.chunks_per_row..].as_ptr() as *const u64
    }

    /// The rows of `self` whose popcount is admissible against an A row of popcount `pa`: from
    /// the first to the last admissible run. Admissibility is an interval in exact arithmetic;
    /// where rounding leaves gaps inside, the exact per-pair check still rejects those rows.
    fn admissible_rows(&self, table: &ThresholdTable, pa: u32) -> Range<usize> {
        let ok = |&&(pb, _): &&(u32, u32)| table.admissible(pa, pb).is_some();
        let Some(first) = self.runs.iter().position(|r| ok(&r)) else { return 0..0 };
        let last = self.runs.iter().rposition(|r| ok(&r)).unwrap_or(first);
        let end = self.runs.get(last + 1).map_or(self.len(), |&(_, row)| row as usize);
        self.runs[first].1 as usize..end
    }
}

/// A kept pair: sorted row positions within the two sides, and its AND-count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hit {
    a: u32,
    b: u32,
    and_count: u32,
}

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

fn check_path(path: KernelPath) -> Result<(), FormatError> {
    if !path.is_available() {
        return Err(FormatError::Other(format!("kernel path {path:?} is not supported by this CPU")));
    }
    Ok(())
}

fn tiles_of(len: usize) -> Vec<Range<usize>> {
    (0..len).step_by(A_TILE).map(|start| start..(start + A_TILE).min(len)).collect()
}

/// Compares sorted rows `rows` of `a` with all of `b`, appending kept pairs to `out`.
fn run_tile(path: KernelPath, table: &ThresholdTable, a: &Side<'_>, b: &Side<'_>, rows: Range<usize>, out: &mut Vec<Hit>) {
    let words = a.entries.encoding_size() / 8;
    match path {
        KernelPath::Portable => portable::run(words, table, a, b, rows, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers check `path.is_available()` (check_path) before reaching here.
        KernelPath::Popcnt => unsafe { x86::run_popcnt(words, table, a, b, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2 => unsafe { x86::run_avx2(words, table, a, b, rows, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable::run(words, table, a, b, rows, out),
    }
}

/// Walks the admissible pairs of A rows `rows` against `b` in L1-sized B tiles: calls
/// `visit(a_row, b_rows)` for every A row and every tile with the tile's part of that row's
/// admissible run. `#[inline(always)]` so that it is compiled inside each path's
/// `#[target_feature]` function.
#[inline(always)]
fn for_each_run<F: FnMut(usize, Range<usize>)>(table: &ThresholdTable, a: &Side<'_>, b: &Side<'_>, rows: Range<usize>, mut visit: F) {
    let mut spans: Vec<Range<usize>> = Vec::with_capacity(rows.len());
    for ia in rows.clone() {
        // A is sorted too: equal popcounts are adjacent, so each distinct one is resolved once.
        let span = match spans.last() {
            Some(prev) if ia > rows.start && a.popcounts[ia - 1] == a.popcounts[ia] => prev.clone(),
            _ => b.admissible_rows(table, a.popcounts[ia]),
        };
        spans.push(span);
    }
    let lo = spans.iter().filter(|s| !s.is_empty()).map(|s| s.start).min().unwrap_or(0);
    let hi = spans.iter().map(|s| s.end).max().unwrap_or(0);
    for b_start in (lo..hi).step_by(B_TILE) {
        let b_end = (b_start + B_TILE).min(hi);
        for (ia, span) in rows.clone().zip(&spans) {
            let (start, end) = (span.start.max(b_start), span.end.min(b_end));
            if start < end {
                visit(ia, start..end);
            }
        }
    }
}

/// The tiled loop of the word-at-a-time paths; `and_count(a_ptr, b_ptr)` is the path's inner
/// kernel. `#[inline(always)]` so that it is compiled inside each path's `#[target_feature]`
/// function.
///
/// # Safety
/// `and_count` must read at most `chunks_per_row * 32` bytes from each pointer.
#[inline(always)]
unsafe fn tiled<F: Fn(*const u64, *const u64) -> u32>(
    table: &ThresholdTable,
    a: &Side<'_>,
    b: &Side<'_>,
    rows: Range<usize>,
    out: &mut Vec<Hit>,
    and_count: F,
) {
    for_each_run(table, a, b, rows, |ia, span| {
        let pa = a.popcounts[ia];
        let a_ptr = a.row_ptr(ia);
        for ib in span {
            let Some(needed) = table.admissible(pa, b.popcounts[ib]) else { continue };
            let c = and_count(a_ptr, b.row_ptr(ib));
            if c >= needed {
                out.push(Hit { a: ia as u32, b: ib as u32, and_count: c });
            }
        }
    });
}

/// AND-popcount of `W` 64-bit words, four accumulators (breaks the add dependency chain).
///
/// # Safety
/// Both pointers must be valid for `8 * W` bytes.
#[inline(always)]
unsafe fn and_count_words<const W: usize>(a: *const u64, b: *const u64) -> u32 {
    let mut acc = [0u32; 4];
    for k in 0..W {
        // SAFETY: k < W, caller guarantees 8·W readable bytes.
        let (x, y) = unsafe { (a.add(k).read(), b.add(k).read()) };
        acc[k % 4] += (x & y).count_ones();
    }
    acc[0] + acc[1] + acc[2] + acc[3]
}

/// [`and_count_words`] for a word count known only at run time.
///
/// # Safety
/// Both pointers must be valid for `8 * words` bytes.
#[inline(always)]
unsafe fn and_count_dyn(a: *const u64, b: *const u64, words: usize) -> u32 {
    let mut acc = [0u32; 4];
    for k in 0..words {
        // SAFETY: k < words, caller guarantees 8·words readable bytes.
        let (x, y) = unsafe { (a.add(k).read(), b.add(k).read()) };
        acc[k % 4] += (x & y).count_ones();
    }
    acc[0] + acc[1] + acc[2] + acc[3]
}

/// Instantiates the tiled loop for the common CLK sizes with a const word count.
macro_rules! dispatch_words {
    ($words:expr, $table:expr, $a:expr, $b:expr, $rows:expr, $out:expr) => {
        // SAFETY (all arms): every row holds at least `words` 64-bit words (Entries validated
        // encoding_size % 8 == 0, both sides share it, and Side rows are padded past it).
        match $words {
            8 => unsafe { tiled($table, $a, $b, $rows, $out, |x, y| and_count_words::<8>(x, y)) },
            16 => unsafe { tiled($table, $a, $b, $rows, $out, |x, y| and_count_words::<16>(x, y)) },
            32 => unsafe { tiled($table, $a, $b, $rows, $out, |x, y| and_count_words::<32>(x, y)) },
            64 => unsafe { tiled($table, $a, $b, $rows, $out, |x, y| and_count_words::<64>(x, y)) },
            words => unsafe { tiled($table, $a, $b, $rows, $out, |x, y| and_count_dyn(x, y, words)) },
        }
    };
}

mod portable {
    use super::*;

    pub(super) fn run(words: usize, table: &ThresholdTable, a: &Side<'_>, b: &Side<'_>, rows: Range<usize>, out: &mut Vec<Hit>) {
        dispatch_words!(words, table, a, b, rows, out)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support `popcnt`.
    #[target_feature(enable = "popcnt")]
    pub(super) unsafe fn run_popcnt(
        words: usize,
        table: &ThresholdTable,
        a: &Side<'_>,
        b: &Side<'_>,
        rows: Range<usize>,
        out: &mut Vec<Hit>,
    ) {
        dispatch_words!(words, table, a, b, rows, out)
    }

    /// # Safety
    /// The CPU must support AVX2 (and `popcnt`, implied on every AVX2 CPU).
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn run_avx2(
        words: usize,
        table: &ThresholdTable,
        a: &Side<'_>,
        b: &Side<'_>,
        rows: Range<usize>,
        out: &mut Vec<Hit>,
    ) {
        let vectors = a.chunks_per_row;
        // SAFETY: rows are `vectors` aligned chunks; AVX2 is enabled on this function.
        unsafe {
            match words {
                16 => runs_avx2_1024(table, a, b, rows, out),
                _ => tiled(table, a, b, rows, out, |x, y| and_count_avx2(x, y, vectors)),
            }
        }
    }

    /// The nibble lookup table: popcount of 0..=15, in both 128-bit lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn nibble_lut() -> __m256i {
        _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4)
    }

    /// Per-byte popcounts (0..=8) of `a & b`, given `a` pre-split into its low nibbles
    /// (`a_lo = a & 0x0f..`) and high nibbles (`a_hi = a & 0xf0..`): pre-splitting the A row,
    /// which is reused for a whole B run, saves one AND per vector and pair.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn and_byte_counts(a_lo: __m256i, a_hi: __m256i, b: __m256i, lut: __m256i) -> __m256i {
        let lo = _mm256_and_si256(a_lo, b);
        // a_hi has no low-nibble bits, so the 16-bit shift moves nothing across bytes.
        let hi = _mm256_srli_epi16(_mm256_and_si256(a_hi, b), 4);
        _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
    }

    /// The four totals of four per-byte count vectors (each byte ≤ 32), as u32 lanes: one
    /// `vpsadbw` per vector, then packs and one multiply-add fold all four at once, where a
    /// per-vector horizontal sum would cost about twice the instructions.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn sum4(y: [__m256i; 4]) -> __m128i {
        let zero = _mm256_setzero_si256();
        // Each 64-bit lane sums 8 bytes: ≤ 256, so the saturating packs below never saturate.
        let s: [__m256i; 4] = std::array::from_fn(|k| _mm256_sad_epu8(y[k], zero));
        // Per 128-bit lane, 16-bit words [s0.0, s0.1, s1.0, s1.1, s2.0, s2.1, s3.0, s3.1].
        let q = _mm256_packus_epi32(_mm256_packus_epi32(s[0], s[1]), _mm256_packus_epi32(s[2], s[3]));
        let h = _mm_add_epi16(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_madd_epi16(h, _mm_set1_epi16(1))
    }

    /// The recent success rate of one early-exit test: `on` while fewer than `num/den` of the
    /// groups it tests get past it (break-even measured on FEBRL4 and synthetic CLKs: a test
    /// costs about a quarter of the work it can save, plus a likely mispredicted branch).
    struct StageTest {
        on: bool,
        tested: u32,
        passed: u32,
        num: u32,
        den: u32,
    }

    impl StageTest {
        fn new(num: u32, den: u32) -> Self {
            StageTest { on: true, tested: 0, passed: 0, num, den }
        }

        fn record(&mut self, tested: u32, passed: u32) {
            self.tested += tested;
            self.passed += passed;
            if self.tested >= 64 {
                self.on = self.passed * self.den < self.tested * self.num;
                // Halving keeps the rate recent (a window of some 32..64 tests).
                self.tested /= 2;
                self.passed /= 2;
            }
        }
    }

    /// One A row, pre-split for [`and_byte_counts`], and the bounds of its last 512 and 256 bits.
    struct ARow {
        pa: u32,
        lo: [__m256i; 4],
        hi: [__m256i; 4],
        tail: __m256i,
        tail_last: __m256i,
    }

    /// The kernel for 1024-bit encodings (the CLK size in practice). Per A row and admissible
    /// B run, [`GROUP`] B rows at a time ([`group_run`]):
    ///
    /// 1. AND-count the first 512 bits of the four pairs. Each 16-bit piece of the rest can add
    ///    at most `min(popcount(a_k), popcount(b_k))` ([`Side::tail_pieces`]); a pair whose
    ///    count plus that is below the least passing AND count cannot pass, and when no pair of
    ///    the group can, the group is done. The bound's bytes are added to the count's bytes
    ///    before the horizontal sum, so the test costs two instructions a row. At t = 0.8 this
    ///    ends ~99% of groups after half the work, on the synthetic and on the FEBRL4 CLKs.
    /// 2. Otherwise count bits 512..768 and test again with the pieces of bits 768..1024.
    /// 3. Otherwise count the last 256 bits and test the whole counts; the few survivors get the
    ///    exact per-pair check (admissibility and the exact table entry).
    ///
    /// Where a test rarely ends a group (low thresholds), it costs more than it saves, in
    /// instructions and mispredicted branches: each test keeps its recent success rate
    /// ([`StageTest`]) and runs are walked without it while that is low, except every 8th run,
    /// which keeps the rate current. Which tests run never changes the results.
    ///
    /// # Safety
    /// AVX2 must be available; both sides hold 128-byte encodings.
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn runs_avx2_1024(table: &ThresholdTable, a: &Side<'_>, b: &Side<'_>, rows: Range<usize>, out: &mut Vec<Hit>) {
        debug_assert!(a.chunks_per_row == 4 && b.chunks_per_row == 4);
        debug_assert!(b.tail_pieces.len() == b.len() + PAD_ROWS);
        let low = _mm256_set1_epi8(0x0f);
        // Keeps the pieces of bits 768..1024 (bytes 16..32).
        let last_quarter = _mm256_setr_epi64x(0, 0, -1, -1);
        let (mut early, mut late) = (StageTest::new(2, 5), StageTest::new(1, 5));
        let mut visits = 0u32;
        for_each_run(table, a, b, rows, |ia, span| {
            // SAFETY: row ia < a.len(): its 4 aligned chunks and tail pieces exist.
            let row = unsafe {
                let ap = a.row_ptr(ia) as *const __m256i;
                let av: [__m256i; 4] = std::array::from_fn(|k| _mm256_load_si256(ap.add(k)));
                let tail = _mm256_load_si256(a.tail_pieces.as_ptr().add(ia) as *const __m256i);
                ARow {
                    pa: a.popcounts[ia],
                    lo: std::array::from_fn(|k| _mm256_and_si256(av[k], low)),
                    hi: std::array::from_fn(|k| _mm256_andnot_si256(low, av[k])),
                    tail,
                    tail_last: _mm256_and_si256(tail, last_quarter),
                }
            };
            let probe = visits.is_multiple_of(8);
            visits = visits.wrapping_add(1);
            // SAFETY: AVX2 is enabled here; span ⊆ 0..b.len() (for_each_run).
            let stats = unsafe {
                match (early.on || probe, late.on || probe) {
                    (true, true) => group_run::<true, true>(table, &row, ia, b, span, out),
                    (true, false) => group_run::<true, false>(table, &row, ia, b, span, out),
                    (false, true) => group_run::<false, true>(table, &row, ia, b, span, out),
                    (false, false) => group_run::<false, false>(table, &row, ia, b, span, out),
                }
            };
            early.record(stats[0], stats[1]);
            late.record(stats[2], stats[3]);
        });
    }

    /// One A row against B rows `span`, [`GROUP`] at a time, with the 512-bit test when `EARLY`
    /// and the 768-bit test when `LATE` (see [`runs_avx2_1024`]). Returns how many groups each
    /// test saw and let through: `[early tested, early passed, late tested, late passed]`.
    ///
    /// The group's bound is `floor[pa + pb]` of its first (sparsest) B row: `floor` is the least
    /// passing count of that or any larger popcount sum, so it is ≤ every group member's own
    /// entry and no passing pair is ever cut.
    ///
    /// # Safety
    /// AVX2 must be available; `span ⊆ 0..b.len()`; 128-byte encodings.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn group_run<const EARLY: bool, const LATE: bool>(
        table: &ThresholdTable,
        row: &ARow,
        ia: usize,
        b: &Side<'_>,
        span: Range<usize>,
        out: &mut Vec<Hit>,
    ) -> [u32; 4] {
        let lut = nibble_lut();
        let mut stats = [0u32; 4];
        let mut j = span.start;
        while j < span.end {
            let floor = table.floor[(row.pa + b.popcounts[j]) as usize];
            if floor == NEVER {
                // No larger popcount sum can pass either, and the run only grows.
                break;
            }
            // Counts + bound > floor − 1 ⇔ ≥ floor; all values < 2^12, signed compare is fine.
            let below = _mm_set1_epi32(floor as i32 - 1);
            let passes = |totals: __m128i| _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(totals, below)));
            let live = if span.end - j >= GROUP { 0xf } else { (1 << (span.end - j)) - 1 };
            // SAFETY: j < span.end ≤ b.len(), so rows j..j + GROUP and their tail pieces are
            // below len + PAD_ROWS; chunks are 32-byte aligned. AVX2 is enabled here.
            unsafe {
                let bp = b.row_ptr(j) as *const __m256i;
                let b_tail = b.tail_pieces.as_ptr().add(j) as *const __m256i;
                let chunk = |r: usize, k: usize| and_byte_counts(row.lo[k], row.hi[k], _mm256_load_si256(bp.add(4 * r + k)), lut);
                let mut y: [__m256i; 4] = std::array::from_fn(|r| _mm256_add_epi8(chunk(r, 0), chunk(r, 1)));
                // Bytes: count ≤ 24 plus piece bound ≤ 16: no overflow in sum4.
                let with_bound = |y: &[__m256i; 4], a_tail: __m256i| -> [__m256i; 4] {
                    std::array::from_fn(|r| _mm256_add_epi8(y[r], _mm256_min_epu8(a_tail, _mm256_load_si256(b_tail.add(r)))))
                };
                let mut mask = live;
                if EARLY {
                    mask &= passes(sum4(with_bound(&y, row.tail)));
                    stats[0] += 1;
                    if mask == 0 {
                        j += GROUP;
                        continue;
                    }
                    stats[1] += 1;
                }
                for (r, yr) in y.iter_mut().enumerate() {
                    *yr = _mm256_add_epi8(*yr, chunk(r, 2));
                }
                if LATE {
                    mask &= passes(sum4(with_bound(&y, row.tail_last)));
                    stats[2] += 1;
                    if mask == 0 {
                        j += GROUP;
                        continue;
                    }
                    stats[3] += 1;
                }
                for (r, yr) in y.iter_mut().enumerate() {
                    *yr = _mm256_add_epi8(*yr, chunk(r, 3));
                }
                let totals = sum4(y);
                mask &= passes(totals);
                let mut counts = [0u32; 4];
                _mm_storeu_si128(counts.as_mut_ptr() as *mut __m128i, totals);
                while mask != 0 {
                    let r = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    let ib = j + r;
                    if let Some(needed) = table.admissible(row.pa, b.popcounts[ib])
                        && counts[r] >= needed
                    {
                        out.push(Hit { a: ia as u32, b: ib as u32, and_count: counts[r] });
                    }
                }
            }
            j += GROUP;
        }
        stats
    }

    /// AND-popcount with AVX2 over `vectors` aligned 32-byte chunks: nibble lookups, bytewise
    /// adds, and `vpsadbw` into u64 lanes before a byte counter could overflow (every 16
    /// vectors: 16·8 = 128 < 256).
    ///
    /// # Safety
    /// AVX2 must be available; both pointers 32-byte aligned and valid for `vectors` chunks.
    #[inline(always)]
    unsafe fn and_count_avx2(a: *const u64, b: *const u64, vectors: usize) -> u32 {
        // SAFETY: the caller guarantees AVX2 and `vectors` aligned chunks; every load below
        // stays below that bound.
        unsafe {
            let (a, b) = (a as *const __m256i, b as *const __m256i);
            let lut = nibble_lut();
            let low = _mm256_set1_epi8(0x0f);
            let mut total = _mm256_setzero_si256();
            let mut v = 0;
            while v < vectors {
                let batch_end = (v + 16).min(vectors);
                let mut bytes = _mm256_setzero_si256();
                while v < batch_end {
                    let x = _mm256_load_si256(a.add(v));
                    let (x_lo, x_hi) = (_mm256_and_si256(x, low), _mm256_andnot_si256(low, x));
                    bytes = _mm256_add_epi8(bytes, and_byte_counts(x_lo, x_hi, _mm256_load_si256(b.add(v)), lut));
                    v += 1;
                }
                total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
            }
            let folded = _mm_add_epi64(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
            let sum = _mm_add_epi64(folded, _mm_unpackhi_epi64(folded, folded));
            _mm_cvtsi128_si64(sum) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::encoding::{BlockKey, PartyEncodings};
    use crate::engine::packed::pack;
    use crate::engine::shard::{self, ShardTask};
    use proptest::prelude::*;

    /// anonlink's semantics written plainly, independent of the threshold tables: zero first
    /// row matches nothing when t > 0; `calculate_max_difference` filter; score >= t.
    fn reference_keeps(a: &[u8], b: &[u8], t: f64) -> Option<f64> {
        let pa: u32 = a.iter().map(|x| x.count_ones()).sum();
        let pb: u32 = b.iter().map(|x| x.count_ones()).sum();
        if pa == 0 && t > 0.0 {
            return None;
        }
        if t > 0.0 {
            let max_delta = (f64::from(2 * pa) * (1.0 / t - 1.0)) as u32;
            if pa.abs_diff(pb) > max_delta {
                return None;
            }
        }
        let c: u32 = a.iter().zip(b).map(|(x, y)| (x & y).count_ones()).sum();
        let s = if pa + pb == 0 { 0.0 } else { (2 * c) as f64 / (pa + pb) as f64 };
        (s >= t).then_some(s)
    }

    fn reference_all(a: &[Vec<u8>], b: &[Vec<u8>], t: f64) -> Vec<Match> {
        let mut out = Vec::new();
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                if let Some(score) = reference_keeps(x, y, t) {
                    out.push(Match { a: i as u32, b: j as u32, score });
                }
            }
        }
        out
    }

    /// Deterministic xorshift, so test data needs no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// A record with bits set with probability `density` (in 1/256ths).
        fn record(&mut self, size: usize, density: u64) -> Vec<u8> {
            (0..size)
                .map(|_| (0..8).fold(0u8, |byte, bit| byte | (((self.next() % 256) < density) as u8) << bit))
                .collect()
        }
    }

    fn entries_of(records: &[Vec<u8>]) -> (Vec<u8>, usize) {
        let size = records[0].len();
        let enc = PartyEncodings { encoding_size: size, data: records.concat(), blocks: None };
        (pack(&enc).0, size)
    }

    fn sorted(mut m: Vec<Match>) -> Vec<Match> {
        m.sort_by_key(|x| (x.a, x.b));
        m
    }

    fn check_all_paths(a: &[Vec<u8>], b: &[Vec<u8>], t: f64) {
        let (da, size) = entries_of(a);
        let (db, _) = entries_of(b);
        let (ea, eb) = (Entries::new(&da, size, 0).unwrap(), Entries::new(&db, size, 0).unwrap());
        let expected = reference_all(a, b, t);
        for path in KernelPath::available() {
            for parallel in [false, true] {
                let got = sorted(compare_entries(ea, eb, t, path, parallel).unwrap());
                assert_eq!(got.len(), expected.len(), "{path:?} t={t} size={size}");
                for (g, e) in got.iter().zip(&expected) {
                    assert_eq!((g.a, g.b), (e.a, e.b), "{path:?} t={t}");
                    assert_eq!(g.score.to_bits(), e.score.to_bits(), "{path:?} t={t}: scores must be identical");
                }
            }
        }
    }

    #[test]
    fn dice_formula_and_zero_rows() {
        assert_eq!(dice(&[0b1111_0000], &[0b1100_1100]), 2.0 * 2.0 / 8.0);
        assert_eq!(dice(&[0; 8], &[0xff; 8]), 0.0);
        assert_eq!(dice(&[0; 8], &[0; 8]), 0.0);
        assert_eq!(dice(&[0xff; 8], &[0xff; 8]), 1.0);
    }

    #[test]
    fn needed_table_equals_brute_force() {
        for t in [0.0, -0.5, 0.1, 0.5, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0, 1.5, f64::NAN, 2.0 / 3.0, 0.7000000000000001] {
            for s in 0..=512u32 {
                let brute = (0..=s / 2).find(|&c| score(c, s) >= t).unwrap_or(NEVER);
                assert_eq!(least_passing_and_count(t, s), brute, "t={t} s={s}");
            }
        }
    }

    #[test]
    fn kernel_matches_reference_with_ties_and_boundaries() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Small encodings make popcount sums and scores collide a lot (many ties).
        for (size, density, n) in [(8usize, 128u64, 60usize), (16, 100, 50), (24, 140, 40), (128, 128, 40), (136, 120, 30)] {
            let mut a: Vec<Vec<u8>> = (0..n).map(|_| rng.record(size, density)).collect();
            let mut b: Vec<Vec<u8>> = (0..n + 7).map(|_| rng.record(size, density)).collect();
            // Near-duplicates, exact duplicates and empty rows on both sides.
            for i in 0..n / 3 {
                let mut copy = a[i].clone();
                copy[i % size] ^= 1 << (i % 8);
                b[i] = copy;
            }
            b[n] = a[1].clone();
            a[2] = vec![0; size];
            b[3] = vec![0; size];
            // Thresholds at actual scores hit the `>=` boundary exactly.
            let mut thresholds = vec![0.0, 0.5, 0.7, 0.8, 0.9, 1.0, 0.999];
            thresholds.extend((0..6).map(|k| dice(&a[k * 3 + 1], &b[k * 3 + 1])));
            for t in thresholds {
                check_all_paths(&a, &b, t);
            }
        }
    }

    /// The 1024-bit AVX2 kernel's staged early exit, on pairs that end at every stage: rows of
    /// densities from sparse to dense, near-duplicates with 0..300 flipped bits (scores on both
    /// sides of every threshold), duplicates and empty rows, run lengths not a multiple of the
    /// 4-row group, and thresholds at exact scores.
    #[test]
    fn clk_size_kernel_matches_reference_near_the_threshold() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let density = |i: usize| 20 + (i as u64 * 37) % 220;
        let mut a: Vec<Vec<u8>> = (0..150).map(|i| rng.record(128, density(i))).collect();
        let mut b: Vec<Vec<u8>> = (0..173).map(|i| rng.record(128, density(i + 5))).collect();
        for i in 0..120 {
            let mut copy = a[i].clone();
            for _ in 0..(i * 5) % 300 {
                let bit = (rng.next() % 1024) as usize;
                copy[bit / 8] ^= 1 << (bit % 8);
            }
            b[i + 40] = copy;
        }
        b[3] = a[7].clone();
        a[9] = vec![0; 128];
        b[11] = vec![0; 128];
        let mut thresholds = vec![0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0];
        thresholds.extend([41, 60, 80, 100, 130].map(|i| dice(&a[i - 40], &b[i])));
        for t in thresholds {
            check_all_paths(&a, &b, t);
        }
    }

    #[test]
    fn portable_path_is_always_available() {
        assert!(KernelPath::available().contains(&KernelPath::Portable));
        assert!(KernelPath::detect().is_available());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(KernelPath::detect(), KernelPath::Avx2);
        } else if std::arch::is_x86_feature_detected!("popcnt") {
            assert_eq!(KernelPath::detect(), KernelPath::Popcnt);
        }
    }

    #[test]
    fn shard_maps_records_and_deduplicates() {
        // Records 0 and 1 of each party share blocks "x" and "y": each pair must appear once.
        let rec = |v: u8| vec![v; 8];
        let party = |records: Vec<Vec<u8>>, blocks: Vec<Vec<&str>>| PartyEncodings {
            encoding_size: 8,
            data: records.concat(),
            blocks: Some(blocks.into_iter().map(|ids| ids.into_iter().map(BlockKey::of).collect()).collect()),
        };
        let p0 = party(vec![rec(0xff), rec(0x0f), rec(0xf0)], vec![vec!["x", "y"], vec!["y", "x"], vec!["z"]]);
        let p1 = party(vec![rec(0xf0), rec(0xff), rec(0x0f)], vec![vec!["z"], vec!["x", "y"], vec!["x", "y"]]);
        let p2 = party(vec![rec(0x0f)], vec![vec!["y"]]);
        let packed: Vec<_> = [&p0, &p1, &p2].iter().map(|p| pack(p)).collect();
        let indexes: Vec<_> = packed.iter().map(|(_, i)| i.clone()).collect();
        let plan = shard::plan(&indexes, 1_000);
        let mut all = Vec::new();
        for sh in &plan.shards {
            let inputs: Vec<(u32, Entries<'_>)> = sh
                .entry_spans()
                .into_iter()
                .map(|(party, span)| {
                    let bytes = &packed[party as usize].0[shard::byte_range(&span, 8).start as usize..shard::byte_range(&span, 8).end as usize];
                    (party, Entries::new(bytes, 8, span.start).unwrap())
                })
                .collect();
            for path in KernelPath::available() {
                let got = compare_shard_with(path, sh, 0.5, &inputs).unwrap();
                assert_eq!(got, compare_shard(sh, 0.5, &inputs).unwrap());
            }
            let got = compare_shard(sh, 0.5, &inputs).unwrap();
            assert!(got.windows(2).all(|w| candidates::order(&w[0], &w[1]).is_lt()), "sorted, no duplicates");
            all.extend(got);
        }
        candidates::sort_dedup(&mut all);
        let pairs: Vec<(u32, u32, u32, u32, f64)> = all.iter().map(|c| (c.d0, c.r0, c.d1, c.r1, c.score)).collect();
        let expected = vec![
            (0, 0, 1, 1, 1.0),
            (0, 1, 1, 2, 1.0),
            (0, 1, 2, 0, 1.0),
            (0, 2, 1, 0, 1.0),
            (1, 2, 2, 0, 1.0),
            (0, 0, 1, 2, 2.0 * 4.0 / 12.0),
            (0, 0, 2, 0, 2.0 * 4.0 / 12.0),
            (0, 1, 1, 1, 2.0 * 4.0 / 12.0),
            (1, 1, 2, 0, 2.0 * 4.0 / 12.0),
        ];
        let mut expected_sorted: Vec<_> = expected.iter().map(|&(d0, r0, d1, r1, score)| Candidate { score, d0, r0, d1, r1 }).collect();
        expected_sorted.sort_by(candidates::order);
        let expected: Vec<_> = expected_sorted.iter().map(|c| (c.d0, c.r0, c.d1, c.r1, c.score)).collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn shard_input_errors() {
        let enc = PartyEncodings { encoding_size: 8, data: vec![1; 16], blocks: None };
        let (data, _) = pack(&enc);
        let entries = Entries::new(&data, 8, 0).unwrap();
        let sh = Shard { index: 0, tasks: vec![ShardTask { party_a: 0, party_b: 1, a: 0..2, b: 0..2 }], comparisons: 4 };
        assert!(matches!(compare_shard(&sh, 0.8, &[(0, entries)]), Err(FormatError::ShardInput(_))));
        let short = Shard { index: 0, tasks: vec![ShardTask { party_a: 0, party_b: 1, a: 0..3, b: 0..2 }], comparisons: 6 };
        assert!(matches!(compare_shard(&short, 0.8, &[(0, entries), (1, entries)]), Err(FormatError::ShardInput(_))));
        assert_eq!(compare_shard(&sh, 0.8, &[(0, entries), (1, entries)]).unwrap().len(), 4);
    }

    /// All pairs of the FEBRL4 CLKs at 0.8 must equal anonlink's candidates exactly.
    #[test]
    fn febrl4_matches_anonlink_at_0_8() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/febrl4");
        let csv = dir.join("candidates_t0.8.csv");
        let (Ok(expected), Ok(a), Ok(b)) =
            (std::fs::read_to_string(&csv), std::fs::read(dir.join("clks_a.json")), std::fs::read(dir.join("clks_b.json")))
        else {
            println!("skipping: FEBRL4 data not found under {}", dir.display());
            return;
        };
        let bounds = crate::engine::encoding::SizeBounds::default();
        let a = crate::engine::encoding::decode_json_upload(&a, bounds).unwrap();
        let b = crate::engine::encoding::decode_json_upload(&b, bounds).unwrap();
        let (da, _) = pack(&a);
        let (db, _) = pack(&b);
        let (ea, eb) = (Entries::new(&da, 128, 0).unwrap(), Entries::new(&db, 128, 0).unwrap());
        let expected: Vec<(u32, u32, f64)> = expected
            .lines()
            .skip(1)
            .map(|line| {
                let mut f = line.split(',');
                let mut next = || f.next().unwrap();
                (next().parse().unwrap(), next().parse().unwrap(), next().parse().unwrap())
            })
            .collect();
        for path in KernelPath::available() {
            let mut got: Vec<Candidate> = compare_entries(ea, eb, 0.8, path, true)
                .unwrap()
                .into_iter()
                .map(|m| Candidate { score: m.score, d0: 0, r0: m.a, d1: 1, r1: m.b })
                .collect();
            got.sort_by(candidates::order);
            let got: Vec<(u32, u32, f64)> = got.iter().map(|c| (c.r0, c.r1, c.score)).collect();
            assert_eq!(got.len(), expected.len(), "{path:?}");
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!((g.0, g.1, g.2.to_bits()), (e.0, e.1, e.2.to_bits()), "{path:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn kernel_equals_reference(
            words in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 16, 17, 32]),
            seed in any::<u64>(),
            na in 1usize..40,
            nb in 1usize..40,
            density in 20u64..240,
            t in prop::sample::select(vec![0.0, 0.3, 0.5, 2.0 / 3.0, 0.7, 0.75, 0.8, 0.9, 1.0]),
        ) {
            let mut rng = Rng(seed | 1);
            let a: Vec<Vec<u8>> = (0..na).map(|_| rng.record(words * 8, density)).collect();
            let b: Vec<Vec<u8>> = (0..nb).map(|_| rng.record(words * 8, density)).collect();
            check_all_paths(&a, &b, t);
        }
    }
}
