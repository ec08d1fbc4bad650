//! Planning the comparison space into shards (one compare invocation each).
//!
//! The space is: every party pair `i < j`, every block the two share, all rows of party i's
//! block against all rows of party j's block. The reference (`_create_work_packages`) cuts it
//! into packages of about `CHUNK_SIZE_AIM` comparisons; we follow it:
//!
//! - a block pair with more comparisons than the target is split into a grid of chunks exactly
//!   as `anonlink.concurrency.split_to_chunks` does (see [`split_to_chunks`]); each chunk is a
//!   shard of its own;
//! - smaller block pairs are packed into shards while the running sum stays within the target
//!   and a shard holds at most [`MAX_BLOCK_PAIRS_PER_SHARD`] block pairs.
//!
//! Two deliberate differences keep every shard's reads cheap: blocks are visited in key order
//! (the order of `data.bin`), and a packing shard is closed when the party pair changes or a
//! split block pair intervenes. A packed shard therefore covers one contiguous entry span per
//! party ([`Shard::entry_spans`]), fetched with one ranged GET each. A packing shard is also
//! closed before its spans exceed [`MAX_SHARD_SPAN_ENTRIES`], which bounds a compare
//! invocation's memory when many tiny blocks fit the comparison target.
//!
//! The plan is a pure function of its input: same indexes, same target → same shards, with
//! shard index = position.

use std::ops::Range;

use super::packed::{BlockEntry, BlockIndex, common_blocks, entry_stride};

/// One comparison task: entries `a` of party `party_a` against entries `b` of party `party_b`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardTask {
    pub party_a: u32,
    pub party_b: u32,
    pub a: Range<u64>,
    pub b: Range<u64>,
}

impl ShardTask {
    pub fn comparisons(&self) -> u64 {
        // Saturating throughout: a corrupt task (end before start, huge ranges) counts as empty
        // or as u64::MAX instead of panicking; compare then fails on the ranged read.
        self.a.end.saturating_sub(self.a.start).saturating_mul(self.b.end.saturating_sub(self.b.start))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub tasks: Vec<ShardTask>,
    pub comparisons: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub shards: Vec<Shard>,
    pub total_comparisons: u64,
}

/// The reference's `CHUNK_SIZE_AIM`.
pub const DEFAULT_TARGET_COMPARISONS: u64 = 300_000_000;
/// The reference's cap on block pairs per package.
pub const MAX_BLOCK_PAIRS_PER_SHARD: usize = 100_000;
/// Cap on the entries one packed shard reads (all parties together): 2M entries of a 128-byte
/// CLK are ~272 MB, comfortably inside a compare function's memory.
pub const MAX_SHARD_SPAN_ENTRIES: u64 = 2_000_000;

impl Shard {
    /// Per party (ascending), the one entry span covering all its tasks (one ranged GET each).
    pub fn entry_spans(&self) -> Vec<(u32, Range<u64>)> {
        let mut spans: Vec<(u32, Range<u64>)> = Vec::new();
        for task in &self.tasks {
            for (party, range) in [(task.party_a, &task.a), (task.party_b, &task.b)] {
                match spans.iter_mut().find(|(p, _)| *p == party) {
                    Some((_, span)) => {
                        span.start = span.start.min(range.start);
                        span.end = span.end.max(range.end);
                    }
                    None => spans.push((party, range.clone())),
                }
            }
        }
        spans.sort_by_key(|(party, _)| *party);
        spans
    }
}

/// The byte range of `data.bin` holding `entries`.
pub fn byte_range(entries: &Range<u64>, encoding_size: usize) -> Range<u64> {
    // Saturating: entries of a corrupt shard description past the u64 byte range give a range
    // past any object's end, which the ranged GET and the length check after it refuse as a
    // typed error (an overflow would panic in debug builds and wrap to a wrong range in release).
    let stride = (encoding_size as u64).saturating_add(entry_stride(0) as u64);
    entries.start.saturating_mul(stride)..entries.end.saturating_mul(stride)
}

/// `anonlink.concurrency.split_to_chunks` for one block pair of sizes `(n0, n1)`: the grid of
/// row ranges, in the reference's order (dimension 0 outer). Python's `round` is round-half-even,
/// hence `round_ties_even`.
pub fn split_to_chunks(aim: u64, n0: u64, n1: u64) -> Vec<(Range<u64>, Range<u64>)> {
    let aim = aim.max(1) as f64;
    let chunks0 = (n0 as f64 / aim.sqrt()).round_ties_even().max(1.0) as u64;
    let chunk_size0 = n0 as f64 / chunks0 as f64;
    let chunks1 = (n1 as f64 * chunk_size0 / aim).round_ties_even().max(1.0) as u64;
    let ranges0 = split_points(n0, chunks0);
    let ranges1 = split_points(n1, chunks1);
    let mut chunks = Vec::with_capacity(ranges0.len() * ranges1.len());
    for r0 in &ranges0 {
        for r1 in &ranges1 {
            chunks.push((r0.clone(), r1.clone()));
        }
    }
    chunks
}

/// Python `_chunks_1d`: split points `round(i * (size / chunks))`, then `size`.
fn split_points(size: u64, chunks: u64) -> Vec<Range<u64>> {
    let chunk_size = size as f64 / chunks as f64;
    let mut points: Vec<u64> = (0..chunks).map(|i| (i as f64 * chunk_size).round_ties_even() as u64).collect();
    points.push(size);
    points.windows(2).map(|w| w[0]..w[1]).collect()
}

/// A packing shard under construction.
#[derive(Default)]
struct Packing {
    tasks: Vec<ShardTask>,
    comparisons: u64,
    /// (span of party a, span of party b) so far; one party pair per packing shard.
    spans: Option<(Range<u64>, Range<u64>)>,
}

impl Packing {
    fn span_entries_with(&self, task: &ShardTask) -> u64 {
        match &self.spans {
            None => (task.a.end - task.a.start) + (task.b.end - task.b.start),
            Some((a, b)) => (task.a.end.max(a.end) - a.start) + (task.b.end.max(b.end) - b.start),
        }
    }

    fn fits(&self, task: &ShardTask, target: u64) -> bool {
        self.tasks.is_empty()
            || (self.comparisons + task.comparisons() <= target
                && self.tasks.len() < MAX_BLOCK_PAIRS_PER_SHARD
                && self.span_entries_with(task) <= MAX_SHARD_SPAN_ENTRIES)
    }

    fn push(&mut self, task: ShardTask) {
        self.comparisons += task.comparisons();
        self.spans = Some(match self.spans.take() {
            None => (task.a.clone(), task.b.clone()),
            Some((a, b)) => (a.start..a.end.max(task.a.end), b.start..b.end.max(task.b.end)),
        });
        self.tasks.push(task);
    }
}

/// The planner as a stream: fed the block pairs of one party pair after another (in key
/// order, as [`common_blocks`] gives them), it hands out each shard as soon as it is complete.
/// Fan-out feeds it from `index.bin` read in windows, so planning holds one packing shard and
/// the split chunks of one block pair, never a party's whole directory or the whole plan;
/// [`plan`] feeds it from indexes in memory. Both give the same shards, since they are the same
/// code.
pub struct ShardPlanner {
    target: u64,
    next_index: u32,
    total: u64,
    packing: Packing,
    ready: Vec<Shard>,
}

impl ShardPlanner {
    pub fn new(target_comparisons: u64) -> Self {
        ShardPlanner { target: target_comparisons.max(1), next_index: 0, total: 0, packing: Packing::default(), ready: Vec::new() }
    }

    /// The next block the parties `party_a < party_b` share, after all of their shared blocks
    /// of lower key.
    pub fn block_pair(&mut self, party_a: u32, party_b: u32, block_a: &BlockEntry, block_b: &BlockEntry) {
        let comparisons = block_a.len.saturating_mul(block_b.len);
        self.total = self.total.saturating_add(comparisons);
        if comparisons > self.target {
            self.close_packing();
            for (ra, rb) in split_to_chunks(self.target, block_a.len, block_b.len) {
                let task = ShardTask {
                    party_a,
                    party_b,
                    a: block_a.first_entry + ra.start..block_a.first_entry + ra.end,
                    b: block_b.first_entry + rb.start..block_b.first_entry + rb.end,
                };
                let comparisons = task.comparisons();
                self.emit(vec![task], comparisons);
            }
            return;
        }
        let task = ShardTask {
            party_a,
            party_b,
            a: block_a.first_entry..block_a.first_entry + block_a.len,
            b: block_b.first_entry..block_b.first_entry + block_b.len,
        };
        if !self.packing.fits(&task, self.target) {
            self.close_packing();
        }
        self.packing.push(task);
    }

    /// The current party pair has no more shared blocks: a new party pair starts a new packing
    /// shard, so spans stay contiguous.
    pub fn end_party_pair(&mut self) {
        self.close_packing();
    }

    /// The shards completed since the last call, in shard order.
    pub fn take_ready(&mut self) -> Vec<Shard> {
        std::mem::take(&mut self.ready)
    }

    /// Comparisons of every block pair fed so far.
    pub fn total_comparisons(&self) -> u64 {
        self.total
    }

    fn close_packing(&mut self) {
        let done = std::mem::take(&mut self.packing);
        self.emit(done.tasks, done.comparisons);
    }

    fn emit(&mut self, tasks: Vec<ShardTask>, comparisons: u64) {
        if !tasks.is_empty() {
            self.ready.push(Shard { index: self.next_index, tasks, comparisons });
            self.next_index += 1;
        }
    }
}

/// Plans all comparisons of `indexes` (party i = `indexes[i]`) into shards of about
/// `target_comparisons` (see the module doc for the rules).
pub fn plan(indexes: &[BlockIndex], target_comparisons: u64) -> Plan {
    let mut planner = ShardPlanner::new(target_comparisons);
    let mut shards = Vec::new();
    for i in 0..indexes.len() {
        for j in i + 1..indexes.len() {
            for (block_a, block_b) in common_blocks(&indexes[i], &indexes[j]) {
                planner.block_pair(i as u32, j as u32, block_a, block_b);
            }
            planner.end_party_pair();
            shards.extend(planner.take_ready());
        }
    }
    Plan { shards, total_comparisons: planner.total_comparisons() }
}

/// An index of blocks `(id, size)` (duplicate ids dropped), for planner tests here and in the
/// service.
#[cfg(test)]
pub(crate) fn test_index(blocks: &[(u32, u64)]) -> BlockIndex {
    use super::encoding::BlockKey;
    let mut entries: Vec<BlockEntry> =
        blocks.iter().map(|(id, len)| BlockEntry { key: BlockKey::of(&id.to_string()), first_entry: 0, len: *len }).collect();
    entries.sort_by_key(|e| e.key);
    entries.dedup_by_key(|e| e.key);
    let mut first = 0;
    for e in &mut entries {
        e.first_entry = first;
        first += e.len;
    }
    BlockIndex { encoding_size: 128, record_count: first, entry_count: first, blocks: entries }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::test_index as index;
    use crate::engine::packed::total_comparisons;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn split_matches_the_reference_examples() {
        // The reference documents 100K×100K → 6×6 and 100K×1M → 6×56 at the default aim.
        assert_eq!(split_to_chunks(DEFAULT_TARGET_COMPARISONS, 100_000, 100_000).len(), 36);
        assert_eq!(split_to_chunks(DEFAULT_TARGET_COMPARISONS, 100_000, 1_000_000).len(), 336);
        // Python: _split_points(10, 4) = round(0), round(2.5)=2, round(5.0)=5, round(7.5)=8, 10.
        assert_eq!(split_points(10, 4), vec![0..2, 2..5, 5..8, 8..10]);
        let chunks = split_to_chunks(DEFAULT_TARGET_COMPARISONS, 100_000, 100_000);
        assert_eq!(chunks[0], (0..16_667, 0..16_667));
        assert_eq!(chunks[35], (83_333..100_000, 83_333..100_000));
    }

    #[test]
    fn unblocked_two_parties_small_is_one_shard() {
        let plan = plan(&[index(&[(1, 5000)]), index(&[(1, 5000)])], DEFAULT_TARGET_COMPARISONS);
        assert_eq!(plan.total_comparisons, 25_000_000);
        assert_eq!(plan.shards.len(), 1);
        assert_eq!(plan.shards[0].entry_spans(), vec![(0, 0..5000), (1, 0..5000)]);
        assert_eq!(byte_range(&(2..4), 128), 272..544);
    }

    #[test]
    fn planning_is_deterministic_and_indexed_by_position() {
        let indexes = [index(&[(1, 300), (2, 40), (3, 7)]), index(&[(1, 200), (3, 9)]), index(&[(2, 50), (3, 1)])];
        let first = plan(&indexes, 5_000);
        assert_eq!(first, plan(&indexes, 5_000));
        for (position, shard) in first.shards.iter().enumerate() {
            assert_eq!(shard.index as usize, position);
        }
    }

    /// Checks every planner property on one input.
    fn check_plan(indexes: &[BlockIndex], target: u64) {
        let plan = plan(indexes, target);
        assert_eq!(plan.total_comparisons, total_comparisons(indexes));
        // Every (party pair, shared block) cell is covered exactly once: count coverage per
        // (party a, entry of a, party b, entry of b) via the per-block area.
        let mut covered: HashMap<(u32, u32, u64, u64), u64> = HashMap::new();
        let mut sum = 0u64;
        for shard in &plan.shards {
            let task_sum: u64 = shard.tasks.iter().map(ShardTask::comparisons).sum();
            assert_eq!(shard.comparisons, task_sum);
            assert!(!shard.tasks.is_empty());
            assert!(shard.tasks.len() <= MAX_BLOCK_PAIRS_PER_SHARD);
            if shard.tasks.len() > 1 {
                assert!(shard.comparisons <= target, "packed shard over target");
            }
            sum += shard.comparisons;
            for task in &shard.tasks {
                assert!(task.party_a < task.party_b);
                let block_a = block_of(&indexes[task.party_a as usize], &task.a);
                let block_b = block_of(&indexes[task.party_b as usize], &task.b);
                assert_eq!(block_a.key, block_b.key, "task pairs different blocks");
                *covered.entry((task.party_a, task.party_b, block_a.first_entry, block_b.first_entry)).or_default() +=
                    task.comparisons();
            }
            for (party, span) in shard.entry_spans() {
                for task in &shard.tasks {
                    if task.party_a == party {
                        assert!(span.start <= task.a.start && task.a.end <= span.end);
                    }
                    if task.party_b == party {
                        assert!(span.start <= task.b.start && task.b.end <= span.end);
                    }
                }
            }
        }
        assert_eq!(sum, plan.total_comparisons);
        for i in 0..indexes.len() {
            for j in i + 1..indexes.len() {
                for (ba, bb) in common_blocks(&indexes[i], &indexes[j]) {
                    let area = covered.remove(&(i as u32, j as u32, ba.first_entry, bb.first_entry));
                    assert_eq!(area.unwrap_or(0), ba.len * bb.len, "block pair not covered exactly");
                }
            }
        }
        assert!(covered.is_empty(), "tasks outside shared blocks");
    }

    fn block_of<'a>(index: &'a BlockIndex, range: &Range<u64>) -> &'a BlockEntry {
        // Blocks are contiguous and ascending by first entry: binary search.
        let at = index.blocks.partition_point(|b| b.first_entry + b.len <= range.start);
        let block = &index.blocks[at];
        assert!(block.first_entry <= range.start && range.end <= block.first_entry + block.len, "task range inside one block");
        block
    }

    /// Chunks of one split block pair tile its grid without overlap (area alone would not
    /// show an overlap compensated by a gap).
    #[test]
    fn split_chunks_tile_the_grid() {
        for (n0, n1, aim) in [(1000, 1000, 10_000), (7, 100_000, 1000), (12_345, 678, 5_000), (1, 1, 1)] {
            let chunks = split_to_chunks(aim, n0, n1);
            let mut rows0: Vec<Range<u64>> = chunks.iter().map(|c| c.0.clone()).collect();
            rows0.dedup();
            let mut rows1: Vec<Range<u64>> = chunks.iter().map(|c| c.1.clone()).collect();
            rows1.sort_by_key(|r| r.start);
            rows1.dedup();
            assert_eq!(rows0.len() * rows1.len(), chunks.len());
            for rows in [&rows0, &rows1] {
                assert_eq!(rows[0].start, 0);
                assert!(rows.windows(2).all(|w| w[0].end == w[1].start));
            }
            assert_eq!((rows0.last().unwrap().end, rows1.last().unwrap().end), (n0, n1));
        }
    }

    #[test]
    fn fixed_examples_hold_the_properties() {
        check_plan(&[index(&[(1, 100_000)]), index(&[(1, 100_000)])], DEFAULT_TARGET_COMPARISONS);
        let many_small: Vec<(u32, u64)> = (0..250_000).map(|b| (b, 1)).collect();
        check_plan(&[index(&many_small), index(&many_small)], DEFAULT_TARGET_COMPARISONS);
        let plan = plan(&[index(&many_small), index(&many_small)], DEFAULT_TARGET_COMPARISONS);
        assert_eq!(plan.shards.len(), 3, "100,000 block pairs per shard at most");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn planner_properties(
            parties in prop::collection::vec(prop::collection::vec((0u32..12, 1u64..60), 0..10), 1..5),
            target in 1u64..4000,
        ) {
            let indexes: Vec<BlockIndex> = parties.iter().map(|p| index(p)).collect();
            check_plan(&indexes, target);
        }
    }
}
