//! compare: one shard of one run.
//!
//! Reads only the shard's entry spans (one ranged GET per party), runs the engine's compare step
//! ([`crate::engine::compare`], the Dice kernel on all cores; `pprl link` runs the same step on
//! spans sliced from memory), writes the shard's candidates under a deterministic key, then counts the shard
//! exactly once. Whichever invocation sees the last shard counted sends the solve message;
//! duplicates of that message are harmless because solve completes a run only once.
//!
//! Requests per shard are the cost that matters at a national shard count (20,000–50,000
//! shards, bench/README.md "Many shards"), so a shard makes few: one batch read of the run's and
//! project's items (is it still wanted, at which threshold), the two ranged GETs, one PUT when it
//! found candidates, the counting transaction and one read of its counter — and compare takes
//! shards in batches (`COMPARE_BATCH_SIZE`), whose shards of one run share the read of the run,
//! their span reads and the transaction. The parties' encoding sizes travel in the
//! shard message; the run with all its counters is read only when the shard's counter became
//! full or is due for a look (`model::counter_wants_run_read`); a redelivered shard is computed
//! again rather than probed for (its PUT writes the same bytes).
//!
//! Memory: a batch's spans (per shard ≤ target comparisons' worth of rows of each party, e.g. two
//! spans of ~17k records × (8 + 128) bytes at the default target; a batch of ten at most twenty
//! spans, fewer where they coalesce) plus its candidates (24 bytes each). At the largest shard
//! the planner allows (a tenth of a third of the timeout's comparisons) that is ~280 MB at
//! 1,769 MB and ~670 MB at 10,240 MB.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tracing::info;

use crate::engine::candidates;
use crate::engine::compare::{self as compare_step, SpanRead};
use crate::engine::shard::Shard;
use crate::service::model::{RunAfterShard, RunState, ShardTally};
use crate::service::{keys, metrics};
use crate::service::ports::{BlobError, BlobReader, BlobStore, Ports, ProjectStore, RunStore, ShardCounter, WorkQueue};

use super::{Pipeline, PipelineError, ShardMessage};

pub const CANDIDATE_LIMIT_MESSAGE: &str = "This run has created more than the global limit of candidate pairs.";

/// Requests in flight while a batch's spans are read or its candidate files written.
const REQUESTS_IN_FLIGHT: usize = 8;

/// One party's entry span of one shard, and its bytes.
type Span = (SpanRead, Bytes);

impl<P: Ports> Pipeline<P>
where
    P::Meta: ProjectStore + RunStore + ShardCounter,
    P::Work: BlobStore,
    P::Queue: WorkQueue,
{
    /// One shard message (a batch of one).
    pub async fn compare(&self, message: &ShardMessage) -> Result<(), PipelineError> {
        self.compare_batch(std::slice::from_ref(message)).await.pop().unwrap_or(Ok(()))
    }

    /// A batch of shard messages as SQS delivers them (up to
    /// [`COMPARE_BATCH_SIZE`](crate::engine::sizing::COMPARE_BATCH_SIZE)), one result per message.
    /// Messages of one run are computed together (one read of the run, spans read once, one
    /// counting transaction); a failure fails that run's messages, which SQS delivers again.
    pub async fn compare_batch(&self, messages: &[ShardMessage]) -> Vec<Result<(), PipelineError>> {
        let mut runs: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for (i, m) in messages.iter().enumerate() {
            runs.entry((m.project_id.as_str(), m.run_id.as_str())).or_default().push(i);
        }
        let mut results: Vec<Result<(), PipelineError>> = messages.iter().map(|_| Ok(())).collect();
        for ((project_id, run_id), positions) in runs {
            let group: Vec<&ShardMessage> = positions.iter().map(|&i| &messages[i]).collect();
            if let Err(e) = self.compare_run_shards(project_id, run_id, &group).await {
                for &i in &positions[1..] {
                    results[i] = Err(e.shared_with_batch());
                }
                results[positions[0]] = Err(e);
            }
        }
        results
    }

    async fn compare_run_shards(&self, project_id: &str, run_id: &str, messages: &[&ShardMessage]) -> Result<(), PipelineError> {
        // Per-shard costs go into the "shard compared" log lines (the benchmarks and the scale
        // model, docs/scale-model.md, are built from them) and the shards' metrics documents.
        let started = Instant::now();
        let Some(head) = self.meta.get_run_head(project_id, run_id).await? else {
            info!(project_id, run_id, shards = messages.len(), "run deleted; dropping shards");
            return Ok(());
        };
        if head.state.is_final() {
            return Ok(());
        }
        if head.state != RunState::Running {
            return Err(PipelineError::Event(format!("run {run_id} is {} , not running", head.state.as_str())));
        }
        let Some(first) = messages.first() else { return Ok(()) };
        let Some(sizes) = self.encoding_sizes(project_id, first).await? else { return Ok(()) };
        let mut shards = Vec::with_capacity(messages.len());
        for message in messages {
            shards.push(match &message.shard {
                Some(s) => s.clone(),
                None => {
                    let (bytes, _) = self.work.get(&keys::shard(project_id, run_id, message.shard_index)).await?;
                    serde_json::from_slice(&bytes).map_err(|e| PipelineError::Corrupt(format!("shard description: {e}")))?
                }
            });
        }
        let Some((spans, fetched_bytes)) = self.read_spans(project_id, run_id, &shards, &sizes).await? else { return Ok(()) };
        let threshold = head.threshold;
        let to_compute = shards.clone();
        let computed = tokio::task::spawn_blocking(move || -> Result<Vec<(Vec<candidates::Candidate>, Duration)>, PipelineError> {
            to_compute
                .iter()
                .zip(spans)
                .map(|(shard, spans)| {
                    let kernel_started = Instant::now();
                    let found = compare_step::compare_spans(shard, threshold, spans.iter().map(|(read, bytes)| (read, &bytes[..])))
                        .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
                    Ok((found, kernel_started.elapsed()))
                })
                .collect()
        })
        .await
        .map_err(|e| PipelineError::Worker(e.to_string()))??;
        // A shard with candidates has its file, written before it is counted; one without has
        // none (solve lists the files, see `merge::present_shard_files`): at a high threshold
        // most shards find nothing, and a PUT each was most of their requests.
        let written: Vec<(String, &Vec<candidates::Candidate>)> = shards
            .iter()
            .zip(&computed)
            .filter(|(_, (found, _))| !found.is_empty())
            .map(|(s, (found, _))| (keys::shard_candidates(project_id, run_id, s.index), found))
            .collect();
        let no_metadata = Vec::new();
        stream::iter(&written)
            .map(|(key, found)| self.work.put(key, Bytes::from(candidates::encode(found)), &no_metadata))
            .buffer_unordered(REQUESTS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        let tallies: Vec<ShardTally> = shards
            .iter()
            .zip(&computed)
            .map(|(s, (found, _))| ShardTally { shard: s.index, comparisons: s.comparisons, candidates: found.len() as u64 })
            .collect();
        let outcome = self.meta.record_shards(project_id, run_id, &tallies).await?;
        let run = match outcome.run {
            RunAfterShard::Deleted => {
                // Deleted while we computed: leave nothing behind.
                for (key, _) in &written {
                    match self.work.delete(key).await {
                        Ok(()) | Err(BlobError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                return Ok(());
            }
            RunAfterShard::Unread => None,
            RunAfterShard::Read(run) => Some(run),
        };
        let batch_ms = started.elapsed().as_millis() as u64;
        for ((tally, (_, kernel)), counted) in tallies.iter().zip(&computed).zip(&outcome.counted) {
            info!(project_id, run_id, shard = tally.shard, candidates = tally.candidates, counted,
                  done = run.as_ref().map(|r| r.shards_done), total = run.as_ref().map(|r| r.shards_total),
                  comparisons = tally.comparisons, fetched_bytes = fetched_bytes / tallies.len() as u64,
                  kernel_ms = kernel.as_millis() as u64, elapsed_ms = batch_ms / tallies.len() as u64,
                  batch_shards = tallies.len(), batch_ms, "shard compared");
            if *counted {
                // Once per shard, so the shards' comparisons add up to the run's.
                metrics::shard_compared(&metrics::ShardCompared {
                    project_id,
                    run_id,
                    shard: tally.shard,
                    comparisons: tally.comparisons,
                    candidates: tally.candidates,
                    fetched_bytes: fetched_bytes / tallies.len() as u64,
                    duration: started.elapsed() / tallies.len() as u32,
                    kernel: *kernel,
                });
            }
        }
        let Some(run) = run.filter(|r| r.state == RunState::Running) else { return Ok(()) };
        if run.candidate_count > self.settings.limits.similarity_scores_max_candidate_pairs {
            self.fail_run(project_id, run_id, CANDIDATE_LIMIT_MESSAGE).await?;
            return Ok(());
        }
        if run.shards_done >= run.shards_total {
            self.send_solve(project_id, run_id).await?;
        }
        Ok(())
    }

    /// The entry spans of every shard, by shard, and the bytes fetched. A party's ranges that
    /// overlap or touch are read with one GET (shards of a batch are neighbours in the plan, so
    /// ten shards usually share one party's span and read consecutive spans of the other).
    /// `None` when the data is gone with its run or project.
    async fn read_spans(&self, project_id: &str, run_id: &str, shards: &[Shard], sizes: &[u32]) -> Result<Option<(Vec<Vec<Span>>, u64)>, PipelineError> {
        let mut wanted: Vec<Vec<SpanRead>> = Vec::with_capacity(shards.len());
        let mut by_party: BTreeMap<u32, Vec<Range<u64>>> = BTreeMap::new();
        for shard in shards {
            let spans = compare_step::span_reads(shard, |party| sizes.get(party as usize).map(|&s| s as usize))
                .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
            for read in &spans {
                by_party.entry(read.party).or_default().push(read.bytes.clone());
            }
            wanted.push(spans);
        }
        let reads: Vec<(u32, Range<u64>)> =
            by_party.into_iter().flat_map(|(party, ranges)| coalesce(ranges).into_iter().map(move |r| (party, r))).collect();
        let fetched: Vec<(u32, Range<u64>, Bytes)> = match stream::iter(reads)
            .map(|(party, range)| async move {
                let bytes = self.work.get_range(&keys::party_data(project_id, party), range.clone()).await?;
                Ok::<_, BlobError>((party, range, bytes))
            })
            .buffered(REQUESTS_IN_FLIGHT)
            .try_collect()
            .await
        {
            Ok(fetched) => fetched,
            // Purged with its run or project since the check above: nothing left to do.
            Err(BlobError::NotFound(_)) if self.meta.get_run_head(project_id, run_id).await?.is_none() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let fetched_bytes = fetched.iter().map(|(_, _, b)| b.len() as u64).sum();
        let mut out = Vec::with_capacity(wanted.len());
        for spans in wanted {
            let mut shard_spans = Vec::with_capacity(spans.len());
            for span in spans {
                let (party, range) = (span.party, &span.bytes);
                let (_, read, bytes) = fetched
                    .iter()
                    .find(|(p, r, _)| *p == party && r.start <= range.start && range.end <= r.end)
                    .ok_or_else(|| PipelineError::Worker(format!("span {range:?} of party {party} was not read")))?;
                let (from, to) = ((range.start - read.start) as usize, (range.end - read.start) as usize);
                if to > bytes.len() {
                    return Err(PipelineError::Corrupt(format!("party {party}'s data ends before byte {}", range.end)));
                }
                let bytes = bytes.slice(from..to);
                shard_spans.push((span, bytes));
            }
            out.push(shard_spans);
        }
        Ok(Some((out, fetched_bytes)))
    }

    /// Each party's encoding size (bytes per record, by party index; 0 for none): from the
    /// message, or from the project for messages planned before they carried it. `None` when
    /// the project is gone.
    async fn encoding_sizes(&self, project_id: &str, message: &ShardMessage) -> Result<Option<Vec<u32>>, PipelineError> {
        if !message.encoding_sizes.is_empty() {
            return Ok(Some(message.encoding_sizes.clone()));
        }
        let Some((_, parties)) = self.meta.get_project(project_id).await? else { return Ok(None) };
        Ok(Some(encoding_sizes(&parties)))
    }
}

/// The parties' encoding sizes by party index (0 where a party has no ingested data).
pub(super) fn encoding_sizes(parties: &[crate::service::model::Party]) -> Vec<u32> {
    let len = parties.iter().map(|p| p.index as usize + 1).max().unwrap_or(0);
    let mut sizes = vec![0; len];
    for p in parties {
        if let Some(i) = p.upload.ingested() {
            sizes[p.index as usize] = i.encoding_size;
        }
    }
    sizes
}

/// Byte ranges merged where they overlap or touch, ascending.
fn coalesce(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn ranges_that_overlap_or_touch_are_read_once() {
        assert_eq!(coalesce(vec![20..30, 0..10, 10..15, 5..8, 40..41, 29..35]), vec![0..15, 20..35, 40..41]);
        assert_eq!(coalesce(vec![0..10, 0..10, 0..10]), vec![0..10]);
        assert!(coalesce(Vec::new()).is_empty());
    }
}
