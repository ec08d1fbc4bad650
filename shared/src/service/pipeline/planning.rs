//! Planning a run's shards from the parties' `index.bin`, read in windows.
//!
//! A party's directory is 32 bytes per block: at national scale with blocking, tens of millions
//! of blocks, hundreds of megabytes per party, and a plan of tens of millions of block-pair
//! tasks. Loading both directories and building the whole plan made planning the one fan-out
//! invocation whose memory grew with the parties (measured 390 MB at 1 M records per party,
//! 951 MB at 2.5 M: bench/README.md). Here nothing is held whole:
//!
//! - each party's directory is read in windows of [`WINDOW_ROWS`] rows (ranged GETs), checked
//!   as it is read (`DirectoryCheck`: the checks `BlockIndex::from_bytes` makes at once), and
//!   joined window against window without awaiting between rows;
//! - the two directories of a party pair are merge-joined window by window (both are ascending
//!   by key), and every shared block goes to the engine's [`ShardPlanner`], which hands out each
//!   shard as soon as it is complete; its message is built (its description stored when too
//!   large to travel inline) and the shard dropped.
//!
//! The plan is the engine's `sizing::plan_run`, step by step: a first pass at the configured
//! target counts the comparisons and builds the shards' messages while they fit the shard cap;
//! the target follows from the comparisons (`SizingPolicy::shard_target`, then
//! `SizingPolicy::retarget` while rounding leaves the count over the cap, each round a counting
//! pass). When the target is the configured one and the first pass kept its messages (a blocked
//! run of modest comparisons), that pass is the plan; otherwise a last pass at the final target
//! builds them (an unblocked national run: its directories are one row per party, so passes are
//! free). Each pass re-reads the directories; what stays in memory is one window per party, one packing shard (at most
//! `MAX_BLOCK_PAIRS_PER_SHARD` tasks), the split chunks of one block pair, and the run's shard
//! messages, which are small (a large shard's description is stored, its message names it).
//! The time still grows with the parties (one invocation reads both directories); at 25 M
//! records per party (~78 M rows each) that is minutes, inside the 15.
//!
//! Deterministic: the same indexes give the same shards, so the watchdog's re-plan of a stalled
//! run finds the shards it planned before.

use std::collections::VecDeque;

use bytes::Bytes;
use tracing::info;

use crate::engine::packed::{BlockEntry, DirectoryCheck, IndexHeader, directory_range};
use crate::engine::shard::{Shard, ShardPlanner};
use crate::engine::sizing::{self, PlanFacts, RETARGET_ROUNDS};
use crate::service::keys;
use crate::service::model::Party;
use crate::service::ports::{BlobReader, BlobStore, Ports};

use super::{INLINE_SHARD_LIMIT, Pipeline, PipelineError, ShardMessage};

/// Directory rows per ranged GET: 2 MiB.
pub const WINDOW_ROWS: u64 = 65_536;

const ROW_BYTES: u64 = 32;

/// A run's shards as planned: their messages in shard order, `(shard index, body)`.
pub(super) struct PlannedShards {
    pub total_comparisons: u64,
    pub messages: Vec<(u32, String)>,
}

fn corrupt(party: u32, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Corrupt(format!("block index of party {party}: {e}"))
}

/// One party's block directory, read from the start a window at a time.
struct Directory<'a, B: BlobReader> {
    work: &'a B,
    key: String,
    party: u32,
    header: IndexHeader,
    check: DirectoryCheck,
    window: Vec<BlockEntry>,
    position: usize,
    rows_read: u64,
    window_rows: u64,
}

impl<'a, B: BlobReader> Directory<'a, B> {
    /// Reads the header and the first window (one request).
    async fn open(work: &'a B, key: String, party: u32, window_rows: u64) -> Result<Self, PipelineError> {
        let window_rows = window_rows.max(1);
        let (bytes, object_len) = work.get_chunk(&key, 0, IndexHeader::LEN + window_rows * ROW_BYTES).await?;
        let header = IndexHeader::from_bytes(&bytes).map_err(|e| corrupt(party, e))?;
        header.check_object_len(object_len).map_err(|e| corrupt(party, e))?;
        let rows = ((bytes.len() as u64 - IndexHeader::LEN) / ROW_BYTES).min(header.block_count);
        let mut directory = Directory {
            work,
            key,
            party,
            header,
            check: DirectoryCheck::default(),
            window: Vec::new(),
            position: 0,
            rows_read: 0,
            window_rows,
        };
        let first = &bytes[IndexHeader::LEN as usize..(IndexHeader::LEN + rows * ROW_BYTES) as usize];
        directory.take_window(first, rows)?;
        Ok(directory)
    }

    fn take_window(&mut self, raw: &[u8], rows: u64) -> Result<(), PipelineError> {
        if raw.len() as u64 != rows * ROW_BYTES {
            return Err(corrupt(self.party, format!("a read of {rows} directory rows returned {} bytes", raw.len())));
        }
        self.window = self.check.rows(raw).map_err(|e| corrupt(self.party, e))?;
        self.position = 0;
        self.rows_read += rows;
        if self.rows_read == self.header.block_count {
            self.check.finish(&self.header).map_err(|e| corrupt(self.party, e))?;
        }
        Ok(())
    }

    /// The block at the reading position within the current window (no I/O).
    fn current(&self) -> Option<BlockEntry> {
        self.window.get(self.position).copied()
    }

    /// Makes a block current, reading the next window when this one is used up; false when
    /// every row has been read.
    async fn fill(&mut self) -> Result<bool, PipelineError> {
        if self.position < self.window.len() {
            return Ok(true);
        }
        if self.rows_read == self.header.block_count {
            return Ok(false);
        }
        let rows = self.rows_read..(self.rows_read + self.window_rows).min(self.header.block_count);
        let raw: Bytes = self.work.get_range(&self.key, directory_range(rows.clone())).await?;
        self.take_window(&raw, rows.end - rows.start)?;
        Ok(true)
    }

    fn advance(&mut self) {
        self.position += 1;
    }
}

/// The shards of a run at one target, party pair after party pair (`i < j`, by position in the
/// project's parties, as `shard::plan` numbers them), block pair after block pair.
struct ShardStream<'a, B: BlobReader> {
    work: &'a B,
    keys: Vec<String>,
    pairs: VecDeque<(u32, u32)>,
    current: Option<(u32, u32, Directory<'a, B>, Directory<'a, B>)>,
    planner: ShardPlanner,
    ready: VecDeque<Shard>,
    window_rows: u64,
}

impl<'a, B: BlobReader> ShardStream<'a, B> {
    fn new(work: &'a B, keys: Vec<String>, target: u64, window_rows: u64) -> Self {
        let n = keys.len() as u32;
        let pairs = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).collect();
        ShardStream { work, keys, pairs, current: None, planner: ShardPlanner::new(target), ready: VecDeque::new(), window_rows }
    }

    async fn next(&mut self) -> Result<Option<Shard>, PipelineError> {
        loop {
            if let Some(shard) = self.ready.pop_front() {
                return Ok(Some(shard));
            }
            match &mut self.current {
                None => {
                    let Some((i, j)) = self.pairs.pop_front() else { return Ok(None) };
                    let a = Directory::open(self.work, self.keys[i as usize].clone(), i, self.window_rows).await?;
                    let b = Directory::open(self.work, self.keys[j as usize].clone(), j, self.window_rows).await?;
                    self.current = Some((i, j, a, b));
                }
                Some((i, j, a, b)) => {
                    // Join what both windows hold without awaiting; then refill the one used up.
                    while let (Some(block_a), Some(block_b)) = (a.current(), b.current()) {
                        match block_a.key.cmp(&block_b.key) {
                            std::cmp::Ordering::Less => a.advance(),
                            std::cmp::Ordering::Greater => b.advance(),
                            std::cmp::Ordering::Equal => {
                                self.planner.block_pair(*i, *j, &block_a, &block_b);
                                a.advance();
                                b.advance();
                            }
                        }
                    }
                    if !(a.fill().await? && b.fill().await?) {
                        self.planner.end_party_pair();
                        self.current = None;
                    }
                    self.ready.extend(self.planner.take_ready());
                }
            }
        }
    }

    /// Comparisons of every block pair planned so far (all of them once `next` gave `None`).
    fn total_comparisons(&self) -> u64 {
        self.planner.total_comparisons()
    }
}

impl<P: Ports> Pipeline<P>
where
    P::Work: BlobStore,
{
    /// Plans the run's shards (deterministic: the same parties' data always give the same shards)
    /// and builds their messages, storing the descriptions too large to travel inline.
    pub(super) async fn plan_shards(&self, project_id: &str, run_id: &str, parties: &[Party]) -> Result<PlannedShards, PipelineError> {
        let index_keys: Vec<String> = parties.iter().map(|p| keys::party_index(project_id, p.index)).collect();
        let mut headers = Vec::with_capacity(parties.len());
        for (position, key) in index_keys.iter().enumerate() {
            let (bytes, _) = self.work.get_chunk(key, 0, IndexHeader::LEN).await?;
            headers.push(IndexHeader::from_bytes(&bytes).map_err(|e| corrupt(position as u32, e))?);
        }
        let encoding_size = headers.first().map(|h| h.encoding_size as usize).unwrap_or(128);
        let pass = Pass { project_id, run_id, parties, index_keys: &index_keys, encoding_size };
        let policy = self.settings.limits.sizing();
        // The first pass keeps its shards while they fit the cap: when its target turns out to be
        // the run's (every blocked run of modest comparisons), it is the plan, in one pass.
        let initial = policy.shard_target(0);
        let first = self.plan_pass(&pass, initial, policy.shard_cap()).await?;
        let total = first.total_comparisons;
        let mut target = policy.shard_target(total);
        let mut shards = first.shards;
        let mut plan = (target == initial).then_some(first);
        if target != initial {
            shards = self.plan_pass(&pass, target, 0).await?.shards;
        }
        for _ in 0..RETARGET_ROUNDS {
            let Some(larger) = policy.retarget(total, target, shards) else { break };
            target = larger;
            plan = None;
            shards = self.plan_pass(&pass, target, 0).await?.shards;
        }
        let plan = match plan.filter(|p| p.messages.is_some()) {
            Some(plan) => plan,
            None => self.plan_pass(&pass, target, u64::MAX).await?,
        };
        let smaller = headers.iter().map(|h| h.record_count).min().unwrap_or(0);
        // The threshold only moves the candidate estimate; the log line shows the plan.
        let estimate = sizing::estimate(&plan.facts, &policy, 0.8, smaller);
        info!(project_id, run_id, shards = estimate.shards, shard_target = estimate.shard_target_comparisons,
              shard_cap = estimate.shard_cap, max_shard_seconds = estimate.max_shard_seconds,
              dispatch_messages = estimate.dispatch_messages, "run sized");
        Ok(PlannedShards { total_comparisons: plan.total_comparisons, messages: plan.messages.unwrap_or_default() })
    }

    /// One pass over the indexes at `target`: the comparisons, the shard count, and the shards'
    /// messages (descriptions too large to travel inline stored) while there are at most `keep`
    /// of them; past that they are dropped and the pass only counts.
    async fn plan_pass(&self, pass: &Pass<'_>, target: u64, keep: u64) -> Result<PassResult, PipelineError> {
        let encoding_sizes = super::compare::encoding_sizes(pass.parties);
        let mut stream = ShardStream::new(&self.work, pass.index_keys.to_vec(), target, WINDOW_ROWS);
        let mut facts = PlanFacts::empty(target);
        let mut messages = Some(Vec::new());
        let mut shards = 0u64;
        while let Some(shard) = stream.next().await? {
            shards += 1;
            facts.add(&shard, pass.encoding_size);
            if shards > keep {
                messages = None;
            }
            let Some(kept) = messages.as_mut() else { continue };
            let index = shard.index;
            let inline = serde_json::to_vec(&shard).map_err(|e| PipelineError::Corrupt(e.to_string()))?;
            let shard = if inline.len() <= INLINE_SHARD_LIMIT {
                Some(shard)
            } else {
                self.work.put(&keys::shard(pass.project_id, pass.run_id, index), Bytes::from(inline), &Vec::new()).await?;
                None
            };
            let message = ShardMessage {
                project_id: pass.project_id.into(),
                run_id: pass.run_id.into(),
                shard_index: index,
                shard,
                encoding_sizes: encoding_sizes.clone(),
            };
            kept.push((index, serde_json::to_string(&message).map_err(|e| PipelineError::Corrupt(e.to_string()))?));
        }
        Ok(PassResult { total_comparisons: stream.total_comparisons(), shards, messages, facts })
    }
}

/// What every pass of one plan reads.
struct Pass<'a> {
    project_id: &'a str,
    run_id: &'a str,
    parties: &'a [Party],
    index_keys: &'a [String],
    encoding_size: usize,
}

struct PassResult {
    total_comparisons: u64,
    shards: u64,
    /// `None` when the pass had more shards than it was to keep.
    messages: Option<Vec<(u32, String)>>,
    facts: PlanFacts,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::packed::BlockIndex;
    use crate::engine::shard::{self, test_index as index};
    use crate::service::memory::MemoryBlobs;
    use proptest::prelude::*;

    fn store(indexes: &[BlockIndex]) -> (MemoryBlobs, Vec<String>) {
        let blobs = MemoryBlobs::new();
        let keys: Vec<String> = (0..indexes.len()).map(|i| format!("index-{i}.bin")).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (key, index) in keys.iter().zip(indexes) {
            runtime.block_on(blobs.put(key, Bytes::from(index.to_bytes()), &Vec::new())).unwrap();
        }
        (blobs, keys)
    }

    fn streamed(blobs: &MemoryBlobs, keys: &[String], target: u64, window_rows: u64) -> Result<shard::Plan, PipelineError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut stream = ShardStream::new(blobs, keys.to_vec(), target, window_rows);
            let mut shards = Vec::new();
            while let Some(shard) = stream.next().await? {
                shards.push(shard);
            }
            Ok(shard::Plan { shards, total_comparisons: stream.total_comparisons() })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Windows of any size give exactly the plan of the indexes held in memory.
        #[test]
        fn the_streamed_plan_is_the_plan_in_memory(
            parties in prop::collection::vec(prop::collection::vec((0u32..40, 1u64..60), 0..30), 1..5),
            target in 1u64..4000,
            window_rows in 1u64..9,
        ) {
            let indexes: Vec<BlockIndex> = parties.iter().map(|p| index(p)).collect();
            let (blobs, keys) = store(&indexes);
            prop_assert_eq!(streamed(&blobs, &keys, target, window_rows).unwrap(), shard::plan(&indexes, target));
        }
    }

    #[test]
    fn a_directory_corrupt_past_the_first_window_is_reported_with_its_party() {
        let good = index(&(0..20).map(|b| (b, 3)).collect::<Vec<_>>());
        let mut bytes = good.to_bytes();
        // Swap the keys of rows 10 and 11: no longer ascending, in the third window of four rows.
        let row = |r: usize| IndexHeader::LEN as usize + r * ROW_BYTES as usize;
        let (k10, k11) = (bytes[row(10)..row(10) + 16].to_vec(), bytes[row(11)..row(11) + 16].to_vec());
        bytes[row(10)..row(10) + 16].copy_from_slice(&k11);
        bytes[row(11)..row(11) + 16].copy_from_slice(&k10);
        let (blobs, keys) = store(&[good.clone(), good]);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(blobs.put(&keys[1], Bytes::from(bytes), &Vec::new())).unwrap();
        let error = streamed(&blobs, &keys, 1_000, 4).unwrap_err();
        assert!(
            matches!(&error, PipelineError::Corrupt(m) if m.contains("party 1") && m.contains("ascending")),
            "{error}"
        );
        // Truncated by a row: the header's block count no longer matches the object.
        let (blobs, keys) = store(&[index(&[(1, 2)]), index(&[(1, 2), (2, 2)])]);
        let (whole, _) = blobs.object(&keys[1]).unwrap();
        runtime.block_on(blobs.put(&keys[1], whole.slice(..whole.len() - ROW_BYTES as usize), &Vec::new())).unwrap();
        let error = streamed(&blobs, &keys, 1_000, 4).unwrap_err();
        assert!(matches!(&error, PipelineError::Corrupt(m) if m.contains("party 1") && m.contains("directory")), "{error}");
    }
}
