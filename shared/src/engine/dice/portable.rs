//! The portable kernel: the tiled walk over admissible runs and word-at-a-time AND-popcounts in
//! plain Rust. It is compiled twice: as is for any CPU, and inside the x86 `popcnt` path's
//! `#[target_feature]` function (hence `#[inline(always)]` and a macro rather than calls),
//! where the same loops become `popcnt` instructions. The AVX2 paths reuse the tiled walk.

use std::ops::Range;

use super::B_TILE;
use super::layout::{Hit, Side};
use super::threshold::ThresholdTable;

/// Walks the admissible pairs of A rows `rows` against `b` in L1-sized B tiles: calls
/// `visit(a_row, b_rows)` for every A row and every tile with the tile's part of that row's
/// admissible run. `#[inline(always)]` so that it is compiled inside each path's
/// `#[target_feature]` function.
#[inline(always)]
pub(super) fn for_each_run<F: FnMut(usize, Range<usize>)>(table: &ThresholdTable, a: &Side<'_>, b: &Side<'_>, rows: Range<usize>, mut visit: F) {
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
pub(super) unsafe fn tiled<F: Fn(*const u64, *const u64) -> u32>(
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
pub(super) unsafe fn and_count_words<const W: usize>(a: *const u64, b: *const u64) -> u32 {
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
pub(super) unsafe fn and_count_dyn(a: *const u64, b: *const u64, words: usize) -> u32 {
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

pub(super) use dispatch_words;

pub(super) fn run(words: usize, table: &ThresholdTable, a: &Side<'_>, b: &Side<'_>, rows: Range<usize>, out: &mut Vec<Hit>) {
    dispatch_words!(words, table, a, b, rows, out)
}
