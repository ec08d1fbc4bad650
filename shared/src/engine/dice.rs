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
//! `c ≤ min(pa, pb)`, so a pair with `min(pa, pb) < needed[pa + pb]` cannot pass and is skipped
//! without touching its encodings. The check is exact and needs no sorting, so entry order (and
//! thus the planner's contiguous spans) is untouched.
//!
//! # Speed
//!
//! - Runtime CPU-feature dispatch ([`KernelPath`]): AVX2 (nibble-LUT popcount on 256-bit
//!   vectors), scalar `popcnt`, or portable Rust, in that order of preference (measured, see
//!   [`KernelPath::detect`]). The release build needs no `-C target-cpu`; each path is compiled
//!   with `#[target_feature]` and chosen once with `is_x86_feature_detected!`.
//! - Word counts common for CLKs (64, 128, 256, 512 bytes) get a fully unrolled const-generic
//!   loop with four independent accumulators; other sizes a generic loop.
//! - Cache tiling: each rayon work item is a tile of [`A_TILE`] rows of the first side, which
//!   walks the other side in tiles of [`B_TILE`] rows, so a B tile (~17 KB for 1024-bit CLKs)
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
}

impl ThresholdTable {
    /// Tables for encodings of `encoding_size` bytes.
    pub fn new(threshold: f64, encoding_size: usize) -> Self {
        let bits = (encoding_size * 8) as u32;
        let needed = (0..=2 * bits).map(|s| least_passing_and_count(threshold, s)).collect();
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
        ThresholdTable { threshold, bits, needed, max_delta }
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

/// One side of a block-pair comparison, with its popcounts gathered contiguously so that the
/// pruning check streams through a dense array instead of strided entry headers.
struct Side<'a> {
    entries: Entries<'a>,
    popcounts: Vec<u32>,
}

impl<'a> Side<'a> {
    fn new(entries: Entries<'a>) -> Self {
        let popcounts = (0..entries.len()).map(|i| entries.popcount(i)).collect();
        Side { entries, popcounts }
    }
}

/// A kept pair: local entry positions within the two sides, and its AND-count.
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

/// Compares every entry of `a` with every entry of `b` on `path` (A-major order of the result).
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
    let tiles: Vec<Range<usize>> = tiles_of(sa.entries.len());
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
            a: h.a,
            b: h.b,
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
    let mut sides = Vec::with_capacity(shard.tasks.len());
    for task in &shard.tasks {
        let (a, b) = (view(task.party_a, &task.a)?, view(task.party_b, &task.b)?);
        check_sizes(&a, &b)?;
        sides.push((task.party_a, task.party_b, Side::new(a), Side::new(b)));
    }
    let Some(encoding_size) = sides.first().map(|(_, _, a, _)| a.entries.encoding_size()) else {
        return Ok(Vec::new());
    };
    if let Some((_, _, other, _)) = sides.iter().find(|(_, _, a, _)| a.entries.encoding_size() != encoding_size) {
        return Err(FormatError::ShardInput(format!(
            "parties hold encodings of different sizes ({encoding_size} and {} bytes)",
            other.entries.encoding_size()
        )));
    }
    let table = ThresholdTable::new(threshold, encoding_size);
    let work: Vec<(usize, Range<usize>)> = sides
        .iter()
        .enumerate()
        .filter(|(_, (_, _, _, b))| !b.entries.is_empty())
        .flat_map(|(t, (_, _, a, _))| tiles_of(a.entries.len()).into_iter().map(move |rows| (t, rows)))
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
                    r0: sa.entries.record_index(h.a as usize),
                    d1: *d1,
                    r1: sb.entries.record_index(h.b as usize),
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

/// Compares rows `rows` of `a` with all of `b`, appending kept pairs to `out`.
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

/// The tiled loop shared by every path; `and_count(a_ptr, b_ptr)` is the path's inner kernel.
/// `#[inline(always)]` so that it is compiled inside each path's `#[target_feature]` function.
///
/// # Safety
/// `and_count` must read at most `encoding_size` bytes from each pointer.
#[inline(always)]
unsafe fn tiled<F: Fn(*const u8, *const u8) -> u32>(
    table: &ThresholdTable,
    a: &Side<'_>,
    b: &Side<'_>,
    rows: Range<usize>,
    out: &mut Vec<Hit>,
    and_count: F,
) {
    let stride = a.entries.encoding_size() + 8;
    let (a_bytes, b_bytes) = (a.entries.bytes(), b.entries.bytes());
    debug_assert!(rows.end <= a.popcounts.len());
    for b_start in (0..b.popcounts.len()).step_by(B_TILE) {
        let b_end = (b_start + B_TILE).min(b.popcounts.len());
        let b_popcounts = &b.popcounts[b_start..b_end];
        for ia in rows.clone() {
            let pa = a.popcounts[ia];
            // SAFETY: ia < a.len(), so the entry's encoding lies inside a_bytes.
            let a_ptr = unsafe { a_bytes.as_ptr().add(ia * stride + 8) };
            for (offset, &pb) in b_popcounts.iter().enumerate() {
                let Some(needed) = table.admissible(pa, pb) else { continue };
                let ib = b_start + offset;
                // SAFETY: ib < b.len(), so the entry's encoding lies inside b_bytes.
                let b_ptr = unsafe { b_bytes.as_ptr().add(ib * stride + 8) };
                let c = and_count(a_ptr, b_ptr);
                if c >= needed {
                    out.push(Hit { a: ia as u32, b: ib as u32, and_count: c });
                }
            }
        }
    }
}

/// AND-popcount of `W` 64-bit words, four accumulators (breaks the add dependency chain).
///
/// # Safety
/// Both pointers must be valid for `8 * W` bytes.
#[inline(always)]
unsafe fn and_count_words<const W: usize>(a: *const u8, b: *const u8) -> u32 {
    let mut acc = [0u32; 4];
    for k in 0..W {
        // SAFETY: k < W, caller guarantees 8·W readable bytes.
        let (x, y) = unsafe { ((a.add(8 * k) as *const u64).read_unaligned(), (b.add(8 * k) as *const u64).read_unaligned()) };
        acc[k % 4] += (x & y).count_ones();
    }
    acc[0] + acc[1] + acc[2] + acc[3]
}

/// [`and_count_words`] for a word count known only at run time.
///
/// # Safety
/// Both pointers must be valid for `8 * words` bytes.
#[inline(always)]
unsafe fn and_count_dyn(a: *const u8, b: *const u8, words: usize) -> u32 {
    let mut acc = [0u32; 4];
    for k in 0..words {
        // SAFETY: k < words, caller guarantees 8·words readable bytes.
        let (x, y) = unsafe { ((a.add(8 * k) as *const u64).read_unaligned(), (b.add(8 * k) as *const u64).read_unaligned()) };
        acc[k % 4] += (x & y).count_ones();
    }
    acc[0] + acc[1] + acc[2] + acc[3]
}

/// Instantiates the tiled loop for the common CLK sizes with a const word count.
macro_rules! dispatch_words {
    ($words:expr, $table:expr, $a:expr, $b:expr, $rows:expr, $out:expr) => {
        // SAFETY (all arms): every encoding is exactly `words` 64-bit words (Entries validated
        // encoding_size % 8 == 0 and both sides share it).
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
    /// The CPU must support AVX2 (and `popcnt`, implied on every AVX2 CPU, used for tails).
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn run_avx2(
        words: usize,
        table: &ThresholdTable,
        a: &Side<'_>,
        b: &Side<'_>,
        rows: Range<usize>,
        out: &mut Vec<Hit>,
    ) {
        // SAFETY: encodings are `words` words long; AVX2 is enabled on this function.
        unsafe {
            match words {
                16 => tiled_avx2_1024(table, a, b, rows, out),
                words => tiled(table, a, b, rows, out, |x, y| and_count_avx2(x, y, words)),
            }
        }
    }

    /// Per-byte popcounts of `x` (each byte 0..=8) via two nibble lookups.
    #[inline(always)]
    unsafe fn byte_popcounts(x: __m256i, lut: __m256i, low_nibbles: __m256i) -> __m256i {
        // SAFETY: AVX2 is enabled by every caller's `#[target_feature]`.
        unsafe {
            let lo = _mm256_and_si256(x, low_nibbles);
            let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
            _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
        }
    }

    /// The tiled loop specialised for 1024-bit encodings (the CLK size in practice): the A row's
    /// four vectors stay in registers across the B tile, and two B rows share one horizontal
    /// reduction (`vpunpck{l,h}qdq` + one 128-bit fold for both sums), which is the costliest
    /// part of a per-pair AVX2 popcount. Same results as [`super::tiled`]: pairs are checked for
    /// admissibility first and only admissible ones are kept.
    ///
    /// # Safety
    /// AVX2 must be available; both sides hold 128-byte encodings.
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn tiled_avx2_1024(table: &ThresholdTable, a: &Side<'_>, b: &Side<'_>, rows: Range<usize>, out: &mut Vec<Hit>) {
        const STRIDE: usize = 8 + 128;
        debug_assert_eq!(a.entries.encoding_size(), 128);
        debug_assert_eq!(b.entries.encoding_size(), 128);
        let (a_bytes, b_bytes) = (a.entries.bytes(), b.entries.bytes());
        // SAFETY: AVX2 is enabled on this function; every pointer below addresses the 128
        // encoding bytes of an entry index < len of its side.
        unsafe {
            let lut = _mm256_setr_epi8(
                0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
            );
            let low = _mm256_set1_epi8(0x0f);
            let zero = _mm256_setzero_si256();
            let count_bytes = |av: &[__m256i; 4], p: *const u8| {
                let mut sum = byte_popcounts(_mm256_and_si256(av[0], _mm256_loadu_si256(p as *const __m256i)), lut, low);
                for (k, &ak) in av.iter().enumerate().skip(1) {
                    let x = _mm256_and_si256(ak, _mm256_loadu_si256(p.add(32 * k) as *const __m256i));
                    sum = _mm256_add_epi8(sum, byte_popcounts(x, lut, low));
                }
                // Each byte ≤ 4·8 = 32: no overflow before the fold into u64 lanes.
                _mm256_sad_epu8(sum, zero)
            };
            for b_start in (0..b.popcounts.len()).step_by(B_TILE) {
                let b_end = (b_start + B_TILE).min(b.popcounts.len());
                let b_popcounts = &b.popcounts[b_start..b_end];
                for ia in rows.clone() {
                    let pa = a.popcounts[ia];
                    let ap = a_bytes.as_ptr().add(ia * STRIDE + 8);
                    let av: [__m256i; 4] = std::array::from_fn(|k| _mm256_loadu_si256(ap.add(32 * k) as *const __m256i));
                    let mut j = 0;
                    while j + 1 < b_popcounts.len() {
                        let (n0, n1) = (table.admissible(pa, b_popcounts[j]), table.admissible(pa, b_popcounts[j + 1]));
                        if n0.is_some() || n1.is_some() {
                            let ib = b_start + j;
                            let s0 = count_bytes(&av, b_bytes.as_ptr().add(ib * STRIDE + 8));
                            let s1 = count_bytes(&av, b_bytes.as_ptr().add((ib + 1) * STRIDE + 8));
                            let pairs = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
                            let both = _mm_add_epi64(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
                            let (c0, c1) = (_mm_cvtsi128_si64(both) as u32, _mm_extract_epi64(both, 1) as u32);
                            if let Some(needed) = n0
                                && c0 >= needed
                            {
                                out.push(Hit { a: ia as u32, b: ib as u32, and_count: c0 });
                            }
                            if let Some(needed) = n1
                                && c1 >= needed
                            {
                                out.push(Hit { a: ia as u32, b: ib as u32 + 1, and_count: c1 });
                            }
                        }
                        j += 2;
                    }
                    if j < b_popcounts.len()
                        && let Some(needed) = table.admissible(pa, b_popcounts[j])
                    {
                        let ib = b_start + j;
                        let c = and_count_avx2(ap, b_bytes.as_ptr().add(ib * STRIDE + 8), 16);
                        if c >= needed {
                            out.push(Hit { a: ia as u32, b: ib as u32, and_count: c });
                        }
                    }
                }
            }
        }
    }

    /// AND-popcount with AVX2: per 32 bytes, AND, split into nibbles, look each nibble's
    /// popcount up with `vpshufb`, add bytewise; `vpsadbw` folds bytes into four u64 lanes
    /// before a byte counter could overflow (every 16 vectors: 16·8 = 128 < 256).
    ///
    /// # Safety
    /// AVX2 must be available; both pointers valid for `8 * words` bytes.
    #[inline(always)]
    unsafe fn and_count_avx2(a: *const u8, b: *const u8, words: usize) -> u32 {
        // SAFETY: the caller guarantees AVX2 and `8 * words` readable bytes; every load below
        // stays below that bound.
        unsafe {
            let lut = _mm256_setr_epi8(
                0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
            );
            let low_nibbles = _mm256_set1_epi8(0x0f);
            let vectors = words / 4;
            let mut total = _mm256_setzero_si256();
            let mut v = 0;
            while v < vectors {
                let batch_end = (v + 16).min(vectors);
                let mut bytes = _mm256_setzero_si256();
                while v < batch_end {
                    let x = _mm256_and_si256(
                        _mm256_loadu_si256(a.add(32 * v) as *const __m256i),
                        _mm256_loadu_si256(b.add(32 * v) as *const __m256i),
                    );
                    let lo = _mm256_and_si256(x, low_nibbles);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
                    bytes = _mm256_add_epi8(bytes, _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi)));
                    v += 1;
                }
                total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
            }
            let folded = _mm_add_epi64(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
            let sum = _mm_add_epi64(folded, _mm_unpackhi_epi64(folded, folded));
            let mut count = _mm_cvtsi128_si64(sum) as u32;
            for k in 4 * vectors..words {
                let x = (a.add(8 * k) as *const u64).read_unaligned();
                let y = (b.add(8 * k) as *const u64).read_unaligned();
                count += (x & y).count_ones();
            }
            count
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
