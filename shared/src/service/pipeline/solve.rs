//! solve: merges a run's shard candidates, solves, publishes the result, completes the run.
//!
//! The candidate files are fetched concurrently and merged as one stream in candidate order
//! (−score, d0, d1, r0, r1), duplicates dropped; a run with more files than one invocation should
//! read is first merged by a tree of invocations ([`super::merge`]). What happens to the stream
//! (the solving is the engine's [`solve`] step, which `pprl link` runs too; this module adds the
//! I/O and the limits of a function's memory):
//!
//! - `similarity_scores`: written as it arrives, to the binary file and the JSON, both streamed
//!   multipart uploads. Nothing is held per candidate.
//! - `groups` / `permutations` of **two parties**: [`solver::TwoPartyGreedy`], greedy one-to-one
//!   matching with two bitsets, exactly anonlink's greedy (proof in [`solver`]'s docs). Held: a
//!   bit per record of each party and 8 bytes per match; nothing per candidate.
//! - `groups` of **three or more parties**: the candidates are held (24 bytes each), split into
//!   the connected components of their graph, and solved one component at a time
//!   ([`solver::greedy_solve_by_component`], identical to the greedy over all of them).
//! - `similarity_scores` of three or more parties (the `multiparty` opt-in) is the same stream
//!   as for two: the merge order is anonlink's `find_candidate_pairs` order for any number of
//!   parties.
//! - A run posted with `group_scores` writes its groups with their edges
//!   ([`output::write_scored_groups`]): two-party greedy keeps each match's score (8 more bytes
//!   per match), the N-party solve picks each group's edges from the candidates it holds anyway
//!   ([`solver::group_edges`], a map entry per grouped record).
//!
//! Results are written under deterministic keys with deterministic content (the permutations'
//! randomness is a secret drawn once per run and kept on its metadata item, see
//! [`Pipeline::permutation_seed`]; nothing a data provider knows determines it), so a solve
//! delivered twice writes the same bytes, and `complete_run` lets only one of them complete it.
//!
//! # Limits: the reference's, plus what memory allows
//!
//! The reference's limits stay as configured: `SOLVER_MAX_CANDIDATE_PAIRS` for groups and
//! permutations, `SIMILARITY_SCORES_MAX_CANDIDATE_PAIRS` for similarity scores (compare also
//! enforces it as candidates are found). On top, solve derives from its memory
//! (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, see [`SolveMemory`]) the candidates it can hold, so that a
//! run which cannot fit ends with the reference's message instead of the function being killed
//! (and retried, and failed with a generic error):
//!
//! - similarity scores and two-party solves hold nothing per candidate: **no memory-derived
//!   limit** (the configured one is then only a policy; raise it at will);
//! - N-party solves hold every candidate ([`HELD_BYTES_PER_CANDIDATE`]) and the greedy state of
//!   the largest component ([`solve::SOLVER_BYTES_PER_CANDIDATE`]): the run fails before any fetch when
//!   its counted candidates cannot be held, and after the split when its largest component
//!   cannot be solved. The limit is per run for holding and per component for solving.

use std::time::Instant;

use tracing::info;

use crate::engine::candidates::{self, Candidate, CandidateWriter};
use crate::engine::output::{self, PermutationSeed, SimilarityScoresWriter};
use crate::engine::solve::{self, ComponentGroups, ComponentLimits, HELD_BYTES_PER_CANDIDATE, Limited, TwoPartyMatches};
use crate::engine::solver;
use crate::service::{keys, metrics, tokens};
use crate::service::model::{Party, ResultType, Run, RunState};
use crate::service::ports::{BlobStore, Ports, ProjectStore, RunStore, WorkQueue};
use crate::service::time;

use super::merge::{self, SolveMemory, read_failure, with_uploads, write_failure};
use super::{Pipeline, PipelineError, SolveMessage};

pub const SOLVER_LIMIT_MESSAGE: &str = "Attempting to solve with more than the global limit of candidate pairs.";

/// What a solve ended with, when it did not fail.
enum Solved {
    /// The result is written; this many distinct candidates were merged.
    Written { pairs: u64 },
    /// Over a limit: the run ends with this message.
    OverLimit(&'static str),
}

impl<P: Ports> Pipeline<P>
where
    P::Meta: ProjectStore + RunStore,
    P::Work: BlobStore,
    P::Queue: WorkQueue,
{
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
        let tree = self.merge_tree(run.shards_total);
        if !self.merge_tree_ready(project_id, run_id, &tree).await? {
            return Ok(()); // merge steps sent; the last one sends this message again
        }
        let two_parties = project.number_parties == 2;
        if project.result_type != ResultType::SimilarityScores && !two_parties {
            // Fail before fetching anything when the candidates cannot even be held.
            let holdable = SolveMemory::new(&self.settings.limits).solver_budget(1).map(|b| b / HELD_BYTES_PER_CANDIDATE);
            if holdable.is_some_and(|n| run.candidate_count > n) {
                self.fail_run(project_id, run_id, SOLVER_LIMIT_MESSAGE).await?;
                return Ok(());
            }
        }
        if project.result_type != ResultType::SimilarityScores {
            self.meta.enter_output_stage(project_id, run_id).await?;
        }
        let Some(inputs) = self.open_run_inputs(project_id, run_id, tree.top_inputs(project_id, run_id)).await? else {
            return Ok(());
        };
        let fetched_ms = started.elapsed().as_millis() as u64;
        let limit = match project.result_type {
            ResultType::SimilarityScores => self.settings.limits.similarity_scores_max_candidate_pairs,
            _ => self.settings.limits.solver_max_candidate_pairs,
        };
        let solved = match project.result_type {
            ResultType::SimilarityScores => self.write_similarity_scores(project_id, run_id, inputs, limit).await?,
            _ if two_parties => self.solve_two_parties(project_id, run_id, &run, project.result_type, &parties, inputs, limit).await?,
            _ => self.solve_by_component(project_id, run_id, inputs, limit, run.candidate_count, run.group_scores).await?,
        };
        let pairs = match solved {
            Solved::Written { pairs } => pairs,
            Solved::OverLimit(message) => {
                self.fail_run(project_id, run_id, message).await?;
                return Ok(());
            }
        };
        if self.meta.complete_run(project_id, run_id, &time::now_iso()).await? {
            info!(project_id, run_id, pairs, files = tree.width(0), levels = tree.top(), fetched_ms,
                  elapsed_ms = started.elapsed().as_millis() as u64, "run completed");
            metrics::run_ended(&run, metrics::Outcome::Completed);
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

    /// The merged stream written as it comes: anonlink's binary file and the JSON result.
    async fn write_similarity_scores(&self, project_id: &str, run_id: &str, inputs: merge::Inputs, limit: u64) -> Result<Solved, PipelineError> {
        let (readers, error) = inputs.candidate_readers()?;
        let outputs = vec![keys::result_candidates(project_id, run_id), keys::result_similarity_scores(project_id, run_id)];
        with_uploads(&self.work, outputs, move |uploads| {
            let mut uploads = uploads.into_iter();
            let (Some(binary), Some(json)) = (uploads.next(), uploads.next()) else {
                return Err(PipelineError::Worker("missing uploads".into()));
            };
            let mut binary = CandidateWriter::new(binary).map_err(write_failure)?;
            let mut json = SimilarityScoresWriter::new(json).map_err(write_failure)?;
            for c in candidates::merge(readers) {
                let c = c.map_err(|e| read_failure(&error, e))?;
                if binary.count() >= limit {
                    return Ok(Solved::OverLimit(super::compare::CANDIDATE_LIMIT_MESSAGE));
                }
                binary.write(&c).map_err(write_failure)?;
                json.write(&c).map_err(write_failure)?;
            }
            let pairs = binary.count();
            binary.finish().map_err(write_failure)?.commit().map_err(write_failure)?;
            json.finish().map_err(write_failure)?.commit().map_err(write_failure)?;
            Ok(Solved::Written { pairs })
        })
        .await
    }

    /// Two parties: the bitset greedy over the stream, then groups (and permutations).
    async fn solve_two_parties(
        &self,
        project_id: &str,
        run_id: &str,
        run: &Run,
        result_type: ResultType,
        parties: &[Party],
        inputs: merge::Inputs,
        limit: u64,
    ) -> Result<Solved, PipelineError> {
        let (readers, error) = inputs.candidate_readers()?;
        let group_scores = run.group_scores;
        let matched = tokio::task::spawn_blocking(move || {
            let merged = candidates::merge(readers).map(|c| c.map_err(|e| read_failure(&error, e)));
            solve::match_two_parties(merged, limit, group_scores)
        })
        .await
        .map_err(|e| PipelineError::Worker(e.to_string()))??;
        let Limited::Solved(TwoPartyMatches { candidates: pairs, greedy }) = matched else {
            return Ok(Solved::OverLimit(SOLVER_LIMIT_MESSAGE));
        };

        let groups_key = keys::result_groups(project_id, run_id);
        if group_scores && result_type == ResultType::Groups {
            // Each two-party group is one match, and its one edge is the candidate that made it.
            let scored = greedy.into_scored_pairs();
            let groups: Vec<[(u32, u32); 2]> = scored.iter().map(|&((a, b), _)| [(0, a), (1, b)]).collect();
            let edges: Vec<[Candidate; 1]> =
                scored.iter().map(|&((a, b), score)| [Candidate { score, d0: 0, r0: a, d1: 1, r1: b }]).collect();
            return with_uploads(&self.work, vec![groups_key], move |uploads| {
                let [upload]: [merge::Upload; 1] = uploads.try_into().map_err(|_| PipelineError::Worker("missing uploads".into()))?;
                write_scored_groups(upload, &groups, &edges)?;
                Ok(Solved::Written { pairs })
            })
            .await;
        }
        let matches = greedy.into_pairs();
        if result_type != ResultType::Permutations {
            return with_uploads(&self.work, vec![groups_key], move |uploads| {
                let [groups]: [merge::Upload; 1] = uploads.try_into().map_err(|_| PipelineError::Worker("missing uploads".into()))?;
                write_groups(groups, output::pair_groups(&matches))?;
                Ok(Solved::Written { pairs })
            })
            .await;
        }
        let mut sizes = [0u64; 2];
        for p in parties.iter().take(2) {
            sizes[p.index as usize % 2] = p.upload.ingested().map(|i| i.record_count).unwrap_or(0);
        }
        let Some(seed) = self.permutation_seed(project_id, run_id).await? else {
            return Ok(Solved::Written { pairs }); // the run was deleted meanwhile
        };
        // No groups file for permutations runs: no token could read it.
        let outputs = vec![
            keys::result_permutation(project_id, run_id, 0),
            keys::result_permutation(project_id, run_id, 1),
            keys::result_mask(project_id, run_id),
        ];
        with_uploads(&self.work, outputs, move |uploads| {
            let [perm0, perm1, mask]: [merge::Upload; 3] =
                uploads.try_into().map_err(|_| PipelineError::Worker("missing uploads".into()))?;
            let perms = output::permutations_of_pairs(matches.iter().copied(), sizes, seed);
            for (party, upload) in [perm0, perm1].into_iter().enumerate() {
                let mut upload = upload;
                output::write_permutation(&mut upload, &perms, party).map_err(write_failure)?;
                upload.commit().map_err(write_failure)?;
            }
            let mut mask = mask;
            output::write_mask(&mut mask, &perms).map_err(write_failure)?;
            mask.commit().map_err(write_failure)?;
            Ok(Solved::Written { pairs })
        })
        .await
    }

    /// Three or more parties: hold the candidates, solve one connected component at a time.
    async fn solve_by_component(
        &self,
        project_id: &str,
        run_id: &str,
        inputs: merge::Inputs,
        limit: u64,
        counted: u64,
        group_scores: bool,
    ) -> Result<Solved, PipelineError> {
        let limits = ComponentLimits { candidates: limit, bytes: SolveMemory::new(&self.settings.limits).solver_budget(1) };
        let (readers, error) = inputs.candidate_readers()?;
        let groups_key = keys::result_groups(project_id, run_id);
        with_uploads(&self.work, vec![groups_key], move |uploads| {
            let [upload]: [merge::Upload; 1] = uploads.try_into().map_err(|_| PipelineError::Worker("missing uploads".into()))?;
            let merged = candidates::merge(readers).map(|c| c.map_err(|e| read_failure(&error, e)));
            // The counted candidates bound the merged ones (the merge only drops duplicates).
            let Limited::Solved(ComponentGroups { candidates: pairs, groups, edges }) =
                solve::group_by_component(merged, limits, counted, group_scores)?
            else {
                return Ok(Solved::OverLimit(SOLVER_LIMIT_MESSAGE));
            };
            match edges {
                Some(edges) => write_scored_groups(upload, &groups, &edges)?,
                None => write_groups(upload, &groups)?,
            }
            Ok(Solved::Written { pairs })
        })
        .await
    }
}

/// Streams `{"groups":…,"group_scores":…}` into `upload` and commits it.
fn write_scored_groups<G: AsRef<[(u32, u32)]>, E: AsRef<[Candidate]>>(mut upload: merge::Upload, groups: &[G], edges: &[E]) -> Result<(), PipelineError> {
    output::write_scored_groups(&mut upload, groups, edges).map_err(write_failure)?;
    upload.commit().map_err(write_failure)
}

/// Streams `{"groups":…}` into `upload` and commits it.
fn write_groups<G: AsRef<[(u32, u32)]>>(mut upload: merge::Upload, groups: impl IntoIterator<Item = G>) -> Result<(), PipelineError> {
    output::write_groups(&mut upload, groups).map_err(write_failure)?;
    upload.commit().map_err(write_failure)
}

/// A candidate of another party pair in a two-party run's merged stream: corrupt shard files.
impl From<solver::NotTwoParty> for PipelineError {
    fn from(e: solver::NotTwoParty) -> Self {
        PipelineError::Corrupt(e.to_string())
    }
}
