//! The x86-64 kernels: the portable loops compiled with `popcnt`, and AVX2 nibble-LUT counting
//! with the early exit for 1024-bit encodings. Every function here is `#[target_feature]` and
//! reached only through [`super::dispatch`], after the CPU was checked.

use std::ops::Range;

use super::layout::{GROUP, Hit, PAD_ROWS, Side};
use super::portable::{and_count_dyn, and_count_words, dispatch_words, for_each_run, tiled};
use super::threshold::{NEVER, ThresholdTable};
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
