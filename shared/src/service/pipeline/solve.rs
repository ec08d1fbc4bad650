//! solve: merges a run's shard candidates, solves, publishes the result, completes the run.
//!
//! The merge streams the shard files in candidate order (−score, d0, d1, r0, r1) and drops the
//! duplicates that blocks produce. Results are written under deterministic keys with
//! deterministic content (the permutations' randomness is a secret drawn once per run and kept
//! on its metadata item, see [`Pipeline::permutation_seed`]), so a solve delivered twice writes
//! the same bytes, and `complete_run` lets only one of them complete it.
//!
//! Memory: the shard files being merged plus the merged candidates (24 bytes each, at most the
//! configured limit: `SOLVER_MAX_CANDIDATE_PAIRS` for groups/permutations,
//! `SIMILARITY_SCORES_MAX_CANDIDATE_PAIRS` for similarity scores) and the rendered result.

use std::time::Instant;

use bytes::Bytes;
use tracing::info;

use crate::engine::candidates::{self, Candidate, CandidateReader};
use crate::engine::output::PermutationSeed;
use crate::engine::{output, solver};
use crate::service::{keys, tokens};
use crate::service::model::{ResultType, RunState};
use crate::service::ports::{BlobError, BlobStore, MetaStore, WorkQueue};
use crate::service::time;

use super::{Pipeline, PipelineError, SolveMessage};

pub const SOLVER_LIMIT_MESSAGE: &str = "Attempting to solve with more than the global limit of candidate pairs.";

impl<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C> Pipeline<M, B, U, Q, C> {
    /// Seed of a run's permutations: 256 bits from the operating system, drawn by the first
    /// solve and kept on the run's metadata item (no token reads it), so a retried solve
    /// publishes the same permutations. Nothing a data provider knows (the run id, its tokens,
    /// its data) determines it. `None` if the run is gone.
    pub async fn permutation_seed(&self, project_id: &str, run_id: &str) -> Result<Option<PermutationSeed>, PipelineError> {
        let Some(secret) = self.meta.run_secret(project_id, run_id, &tokens::generate_secret()).await? else {
            return Ok(None);
        };
        let bytes = tokens::secret_bytes(&secret)
            .ok_or_else(|| PipelineError::Corrupt(format!("run {run_id} has a malformed permutation secret")))?;
        Ok(Some(PermutationSeed::Secret(bytes)))
    }

    pub async fn solve(&self, message: &SolveMessage) -> Result<(), PipelineError> {
        // Logged with the completion, for the benchmarks (bench/, docs/scale-model.md).
        let started = Instant::now();
        let (project_id, run_id) = (message.project_id.as_str(), message.run_id.as_str());
        let Some(run) = self.meta.get_run(project_id, run_id).await? else {
            return Ok(());
        };
        if run.state != RunState::Running || run.shards_done < run.shards_total {
            return Ok(()); // finished by a twin, failed, or a stray message
        }
        let Some((project, parties)) = self.meta.get_project(project_id).await? else {
            return Ok(());
        };
        if project.result_type != ResultType::SimilarityScores {
            self.meta.enter_output_stage(project_id, run_id).await?;
        }
        let mut files = Vec::with_capacity(run.shards_total as usize);
        for shard in 0..run.shards_total {
            match self.work.get(&keys::shard_candidates(project_id, run_id, shard)).await {
                Ok((bytes, _)) => files.push(bytes),
                Err(BlobError::NotFound(key)) => {
                    // Completed and cleaned up by a twin meanwhile, or a real loss.
                    let now = self.meta.get_run(project_id, run_id).await?;
                    if now.is_some_and(|r| r.state == RunState::Running) {
                        return Err(PipelineError::Corrupt(format!("candidates of a counted shard are missing: {key}")));
                    }
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let limit = match project.result_type {
            ResultType::SimilarityScores => self.settings.limits.similarity_scores_max_candidate_pairs,
            _ => self.settings.limits.solver_max_candidate_pairs,
        };
        let merged = tokio::task::spawn_blocking(move || merge_all(files, limit))
            .await
            .map_err(|e| PipelineError::Worker(e.to_string()))??;
        let Some(merged) = merged else {
            let message = match project.result_type {
                ResultType::SimilarityScores => super::compare::CANDIDATE_LIMIT_MESSAGE,
                _ => SOLVER_LIMIT_MESSAGE,
            };
            self.meta.fail_run(project_id, run_id, message).await?;
            return Ok(());
        };
        let pairs = merged.len();
        match project.result_type {
            ResultType::SimilarityScores => {
                let binary = candidates::encode(&merged);
                let json = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::with_capacity(merged.len() * 40 + 32);
                    output::write_similarity_scores(&mut out, merged.into_iter()).map(|_| out)
                })
                .await
                .map_err(|e| PipelineError::Worker(e.to_string()))?
                .map_err(|e| PipelineError::Worker(e.to_string()))?;
                self.work.put(&keys::result_candidates(project_id, run_id), Bytes::from(binary), &Vec::new()).await?;
                self.work.put(&keys::result_similarity_scores(project_id, run_id), Bytes::from(json), &Vec::new()).await?;
            }
            ResultType::Groups => {
                let groups = solver::greedy_solve(merged);
                let json = output::groups_json(&groups);
                self.work.put(&keys::result_groups(project_id, run_id), Bytes::from(json), &Vec::new()).await?;
            }
            ResultType::Permutations => {
                let groups = solver::greedy_solve(merged);
                let mut sizes = [0u64; 2];
                for p in parties.iter().take(2) {
                    sizes[p.index as usize % 2] = p.ingested.as_ref().map(|i| i.record_count).unwrap_or(0);
                }
                let Some(seed) = self.permutation_seed(project_id, run_id).await? else {
                    return Ok(()); // deleted meanwhile
                };
                let perms = output::permutations(&groups, sizes, seed);
                for party in 0..2u32 {
                    let json = output::permutation_json(&perms, party as usize);
                    self.work.put(&keys::result_permutation(project_id, run_id, party), Bytes::from(json), &Vec::new()).await?;
                }
                self.work.put(&keys::result_mask(project_id, run_id), Bytes::from(output::mask_json(&perms)), &Vec::new()).await?;
            }
        }
        if self.meta.complete_run(project_id, run_id, &time::now_iso()).await? {
            info!(project_id, run_id, pairs, elapsed_ms = started.elapsed().as_millis() as u64, "run completed");
        }
        // Shard files are no longer needed by anyone once the run is final.
        self.work.delete_prefix(&keys::run_work_prefix(project_id, run_id)).await?;
        if self.meta.get_run(project_id, run_id).await?.is_none() {
            // The run (or its project) was deleted while solving: the delete may have removed
            // the run's objects before our writes landed.
            self.work.delete_prefix(&keys::run_results_prefix(project_id, run_id)).await?;
        }
        Ok(())
    }
}

/// Merges shard files (each sorted) into one sorted, deduplicated list; `None` past `limit`.
fn merge_all(files: Vec<Bytes>, limit: u64) -> Result<Option<Vec<Candidate>>, PipelineError> {
    let readers = files
        .iter()
        .map(|f| CandidateReader::new(&f[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
    let mut merged = Vec::new();
    for c in candidates::merge(readers) {
        let c = c.map_err(|e| PipelineError::Corrupt(e.to_string()))?;
        if merged.len() as u64 >= limit {
            return Ok(None);
        }
        merged.push(c);
    }
    Ok(Some(merged))
}
