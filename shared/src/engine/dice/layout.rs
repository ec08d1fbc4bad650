//! The kernel's own layout of one side of a block-pair comparison: rows copied into popcount
//! order as aligned 32-byte chunks, so that an A row's admissible partners are one run of B rows
//! and vector loads never straddle two rows (see "Pruning" in the [module docs](super)). The
//! packed format the planner reads by range is untouched; only this copy is reordered.

use std::ops::Range;

use super::threshold::ThresholdTable;
use crate::engine::packed::Entries;

/// 32 bytes, the AVX2 vector width. A [`Side`] stores each row as whole chunks so that vector
/// loads are aligned and never straddle two rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Chunk(pub(super) [u64; 4]);

/// Zero rows after the last row of a [`Side`], so a kernel handling [`GROUP`] rows at once may
/// read a whole group starting at any row (the extra lanes are masked out, and zero rows would
/// add nothing to an AND count anyway).
pub(super) const PAD_ROWS: usize = GROUP - 1;

/// B rows one AVX2 step handles against one A row.
pub(super) const GROUP: usize = 4;

/// One side of a block-pair comparison, copied into kernel order: rows sorted by popcount.
///
/// Sorting makes every A row's admissible partners (popcounts that can reach the threshold) one
/// contiguous run of B rows, found once per distinct popcount instead of being tested per pair,
/// and it puts rows of near-equal popcount side by side, so one bound serves a whole group of
/// rows. The copy costs O(n) per shard task against O(n·m) pairs; the packed format is untouched.
pub(super) struct Side<'a> {
    pub(super) entries: Entries<'a>,
    pub(super) chunks_per_row: usize,
    /// Row `i` is chunks `i*chunks_per_row ..`, zero-padded; then [`PAD_ROWS`] zero rows.
    pub(super) rows: Vec<Chunk>,
    /// Ascending.
    pub(super) popcounts: Vec<u32>,
    /// The entry position (within `entries`) of each sorted row.
    pub(super) original: Vec<u32>,
    /// `(popcount, first row)` of every distinct popcount, ascending.
    pub(super) runs: Vec<(u32, u32)>,
    /// 1024-bit encodings only (else empty): per row, byte `k` is the popcount of bits
    /// `512 + 16k .. 528 + 16k`, i.e. of each 16-bit piece of the row's second half; then
    /// [`PAD_ROWS`] zero rows. A piece can add at most `min(popcount(a_k), popcount(b_k))` to an
    /// AND count, which is the early exit's bound. 16-bit pieces make it tight enough to end
    /// almost every non-matching pair of real CLKs (FEBRL4) at 512 bits (64-bit pieces leave 9%
    /// of them, whole halves 42%), and 32 bytes a row is exactly one AVX2 vector.
    pub(super) tail_pieces: Vec<Chunk>,
}

impl<'a> Side<'a> {
    pub(super) fn new(entries: Entries<'a>) -> Self {
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

    pub(super) fn len(&self) -> usize {
        self.popcounts.len()
    }

    /// The first word of sorted row `row` (`row < len + PAD_ROWS`, bounds-checked: once per
    /// pair or per group of pairs, against ~30 vector instructions each).
    #[inline(always)]
    pub(super) fn row_ptr(&self, row: usize) -> *const u64 {
        self.rows[row * self.chunks_per_row..].as_ptr() as *const u64
    }

    /// The rows of `self` whose popcount is admissible against an A row of popcount `pa`: from
    /// the first to the last admissible run. Admissibility is an interval in exact arithmetic;
    /// where rounding leaves gaps inside, the exact per-pair check still rejects those rows.
    pub(super) fn admissible_rows(&self, table: &ThresholdTable, pa: u32) -> Range<usize> {
        let ok = |&&(pb, _): &&(u32, u32)| table.admissible(pa, pb).is_some();
        let Some(first) = self.runs.iter().position(|r| ok(&r)) else { return 0..0 };
        let last = self.runs.iter().rposition(|r| ok(&r)).unwrap_or(first);
        let end = self.runs.get(last + 1).map_or(self.len(), |&(_, row)| row as usize);
        self.runs[first].1 as usize..end
    }
}

/// A kept pair: sorted row positions within the two sides, and its AND-count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hit {
    pub(super) a: u32,
    pub(super) b: u32,
    pub(super) and_count: u32,
}
