//! compare: one shard of one run.
//!
//! Reads only the shard's entry spans (one ranged GET per party), runs the engine's Dice kernel
//! on all cores, writes the shard's candidates under a deterministic key, then counts the shard
//! exactly once. Whichever invocation sees the last shard counted sends the solve message;
//! duplicates of that message are harmless because solve completes a run only once.
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
use crate::service::metrics;
use crate::service::model::RunState;
use crate::service::ports::{BlobError, BlobStore, MetaStore, WorkQueue};

use super::{Pipeline, PipelineError, ShardMessage, SolveMessage};

pub const CANDIDATE_LIMIT_MESSAGE: &str = "This run has created more than the global limit of candidate pairs.";

impl<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C> Pipeline<M, B, U, Q, C> {
    pub async fn compare(&self, message: &ShardMessage) -> Result<(), PipelineError> {
        // Per-shard costs go into the "shard compared" log line (the benchmarks and the scale
        // model, docs/scale-model.md, are built from it) and the shard's metrics document.
        let started = Instant::now();
        let mut fetched_bytes = 0u64;
        let mut kernel_time = Duration::ZERO;
        let (project_id, run_id) = (message.project_id.as_str(), message.run_id.as_str());
        let Some(run) = self.meta.get_run(project_id, run_id).await? else {
            info!(project_id, run_id, "run deleted; dropping shard");
            return Ok(());
        };
        if run.state.is_final() {
            return Ok(());
        }
        if run.state != RunState::Running {
            return Err(PipelineError::Event(format!("run {run_id} is {} , not running", run.state.as_str())));
        }
        let Some((_, parties)) = self.meta.get_project(project_id).await? else {
            return Ok(());
        };
        let shard: Shard = match &message.shard {
            Some(s) => s.clone(),
            None => {
                let (bytes, _) = self.work.get(&keys::shard(project_id, run_id, message.shard_index)).await?;
                serde_json::from_slice(&bytes).map_err(|e| PipelineError::Corrupt(format!("shard description: {e}")))?
            }
        };
        let candidates_key = keys::shard_candidates(project_id, run_id, shard.index);
        // A redelivered shard whose candidates were written by an earlier attempt still has to be
        // counted, but need not be computed again.
        let found = match self.work.get(&candidates_key).await {
            Ok((bytes, _)) => Some(bytes),
            Err(BlobError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let count = match found {
            Some(bytes) => candidates::decode(&bytes).map_err(|e| PipelineError::Corrupt(e.to_string()))?.len() as u64,
            None => {
                let mut spans = Vec::new();
                for (party, span) in shard.entry_spans() {
                    let size = parties
                        .iter()
                        .find(|p| p.index == party)
                        .and_then(|p| p.ingested.as_ref())
                        .map(|i| i.encoding_size as usize)
                        .ok_or_else(|| PipelineError::Corrupt(format!("party {party} has no ingested data")))?;
                    let bytes = self
                        .work
                        .get_range(&keys::party_data(project_id, party), shard::byte_range(&span, size))
                        .await?;
                    fetched_bytes += bytes.len() as u64;
                    spans.push((party, span.start, size, bytes));
                }
                let threshold = run.threshold;
                let shard_for_worker = shard.clone();
                let kernel_started = Instant::now();
                let found = tokio::task::spawn_blocking(move || -> Result<Vec<candidates::Candidate>, PipelineError> {
                    let inputs = spans
                        .iter()
                        .map(|(party, first, size, bytes)| {
                            Entries::new(bytes, *size, *first).map(|e| (*party, e))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
                    dice::compare_shard(&shard_for_worker, threshold, &inputs)
                        .map_err(|e| PipelineError::Corrupt(e.to_string()))
                })
                .await
                .map_err(|e| PipelineError::Worker(e.to_string()))??;
                kernel_time = kernel_started.elapsed();
                let count = found.len() as u64;
                if run.candidate_count + count > self.settings.limits.similarity_scores_max_candidate_pairs {
                    self.fail_run(project_id, run_id, CANDIDATE_LIMIT_MESSAGE).await?;
                    return Ok(());
                }
                self.work.put(&candidates_key, Bytes::from(candidates::encode(&found)), &Vec::new()).await?;
                count
            }
        };
        let outcome = self.meta.record_shard(project_id, run_id, shard.index, shard.comparisons, count).await?;
        let Some(run) = outcome.run else {
            // Deleted while we computed: leave nothing behind.
            match self.work.delete(&candidates_key).await {
                Ok(()) | Err(BlobError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        };
        info!(project_id, run_id, shard = shard.index, candidates = count, counted = outcome.counted,
              done = run.shards_done, total = run.shards_total, comparisons = shard.comparisons,
              fetched_bytes, kernel_ms = kernel_time.as_millis() as u64,
              elapsed_ms = started.elapsed().as_millis() as u64, "shard compared");
        if outcome.counted {
            // Once per shard, so the shards' comparisons add up to the run's.
            metrics::shard_compared(&metrics::ShardCompared {
                project_id,
                run_id,
                shard: shard.index,
                comparisons: shard.comparisons,
                candidates: count,
                fetched_bytes,
                duration: started.elapsed(),
                kernel: kernel_time,
            });
        }
        if run.state == RunState::Running && run.shards_done >= run.shards_total {
            let body = serde_json::to_string(&SolveMessage { project_id: project_id.into(), run_id: run_id.into() })
                .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
            self.queue.send(&self.settings.solve_queue_url, vec![body]).await?;
        }
        Ok(())
    }
}
