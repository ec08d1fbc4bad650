//! compare: one shard of one run.
//!
//! Reads only the shard's entry spans (one ranged GET per party), runs the engine's Dice kernel
//! on all cores, writes the shard's candidates under a deterministic key, then counts the shard
//! exactly once. Whichever invocation sees the last shard counted sends the solve message;
//! duplicates of that message are harmless because solve completes a run only once.
//!
//! Requests per shard are the cost that matters at a national shard count (20,000–50,000
//! shards, bench/README.md "Many shards"), so a shard makes few: one batch read of the run's and
//! project's items (is it still wanted, at which threshold), the two ranged GETs, one PUT, the
//! counting transaction and one read of its counter. The parties' encoding sizes travel in the
//! shard message; the run with all its counters is read only when the shard's counter became
//! full or is due for a look (`model::counter_wants_run_read`); a redelivered shard is computed
//! again rather than probed for (its PUT writes the same bytes).
//!
//! Memory: the shard's spans (≤ target comparisons' worth of rows of each party, e.g. two spans
//! of ~17k records × (8 + 128) bytes at the default target) plus its candidates (24 bytes each).

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::info;

use crate::engine::candidates;
use crate::engine::dice;
use crate::engine::packed::Entries;
use crate::engine::shard::{self, Shard};
use crate::service::keys;
use crate::service::model::{RunAfterShard, RunState};
use crate::service::ports::{BlobError, BlobStore, MetaStore, WorkQueue};

use super::{Pipeline, PipelineError, ShardMessage, SolveMessage};

pub const CANDIDATE_LIMIT_MESSAGE: &str = "This run has created more than the global limit of candidate pairs.";

impl<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C> Pipeline<M, B, U, Q, C> {
    pub async fn compare(&self, message: &ShardMessage) -> Result<(), PipelineError> {
        // Per-shard costs go into the "shard compared" log line: the benchmarks and the scale
        // model (docs/scale-model.md) are built from them.
        let started = Instant::now();
        let mut fetched_bytes = 0u64;
        let (project_id, run_id) = (message.project_id.as_str(), message.run_id.as_str());
        let Some(head) = self.meta.get_run_head(project_id, run_id).await? else {
            info!(project_id, run_id, "run deleted; dropping shard");
            return Ok(());
        };
        if head.state.is_final() {
            return Ok(());
        }
        if head.state != RunState::Running {
            return Err(PipelineError::Event(format!("run {run_id} is {} , not running", head.state.as_str())));
        }
        let Some(sizes) = self.encoding_sizes(project_id, message).await? else { return Ok(()) };
        let shard: Shard = match &message.shard {
            Some(s) => s.clone(),
            None => {
                let (bytes, _) = self.work.get(&keys::shard(project_id, run_id, message.shard_index)).await?;
                serde_json::from_slice(&bytes).map_err(|e| PipelineError::Corrupt(format!("shard description: {e}")))?
            }
        };
        let mut spans = Vec::new();
        for (party, span) in shard.entry_spans() {
            let size = sizes
                .get(party as usize)
                .map(|&s| s as usize)
                .filter(|&s| s > 0)
                .ok_or_else(|| PipelineError::Corrupt(format!("party {party} has no ingested data")))?;
            let bytes = match self.work.get_range(&keys::party_data(project_id, party), shard::byte_range(&span, size)).await {
                Ok(bytes) => bytes,
                // Purged with its run or project since the check above: nothing left to do.
                Err(BlobError::NotFound(_)) if self.meta.get_run_head(project_id, run_id).await?.is_none() => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            fetched_bytes += bytes.len() as u64;
            spans.push((party, span.start, size, bytes));
        }
        let threshold = head.threshold;
        let shard_for_worker = shard.clone();
        let kernel_started = Instant::now();
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<candidates::Candidate>, PipelineError> {
            let inputs = spans
                .iter()
                .map(|(party, first, size, bytes)| Entries::new(bytes, *size, *first).map(|e| (*party, e)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
            dice::compare_shard(&shard_for_worker, threshold, &inputs).map_err(|e| PipelineError::Corrupt(e.to_string()))
        })
        .await
        .map_err(|e| PipelineError::Worker(e.to_string()))??;
        let kernel_time: Duration = kernel_started.elapsed();
        let count = found.len() as u64;
        // Every counted shard has its file (solve reads one per shard), empty ones included.
        let candidates_key = keys::shard_candidates(project_id, run_id, shard.index);
        self.work.put(&candidates_key, Bytes::from(candidates::encode(&found)), &Vec::new()).await?;
        let outcome = self.meta.record_shard(project_id, run_id, shard.index, shard.comparisons, count).await?;
        let run = match outcome.run {
            RunAfterShard::Deleted => {
                // Deleted while we computed: leave nothing behind.
                match self.work.delete(&candidates_key).await {
                    Ok(()) | Err(BlobError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(());
            }
            RunAfterShard::Unread => None,
            RunAfterShard::Read(run) => Some(run),
        };
        info!(project_id, run_id, shard = shard.index, candidates = count, counted = outcome.counted,
              done = run.as_ref().map(|r| r.shards_done), total = run.as_ref().map(|r| r.shards_total),
              comparisons = shard.comparisons, fetched_bytes, kernel_ms = kernel_time.as_millis() as u64,
              elapsed_ms = started.elapsed().as_millis() as u64, "shard compared");
        let Some(run) = run.filter(|r| r.state == RunState::Running) else { return Ok(()) };
        if run.candidate_count > self.settings.limits.similarity_scores_max_candidate_pairs {
            self.meta.fail_run(project_id, run_id, CANDIDATE_LIMIT_MESSAGE).await?;
            return Ok(());
        }
        if run.shards_done >= run.shards_total {
            let body = serde_json::to_string(&SolveMessage { project_id: project_id.into(), run_id: run_id.into() })
                .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
            self.queue.send(&self.settings.solve_queue_url, vec![body]).await?;
        }
        Ok(())
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
        if let Some(i) = &p.ingested {
            sizes[p.index as usize] = i.encoding_size;
        }
    }
    sizes
}
