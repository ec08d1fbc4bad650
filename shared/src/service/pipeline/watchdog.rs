//! The watchdog: finds runs and uploads whose work was lost, sends that work again, and puts
//! them in `error` when sending it again does not help. fan-out runs it on a schedule.
//!
//! Every step of the pipeline is triggered by a message, and every message is durable in AWS, so
//! work is lost only when something outside the design happens: a message deleted by hand or by
//! an operator's purge, an emulator restarted with its queues in memory, an S3 notification
//! that never came. Without the watchdog such a run would show `running` forever.
//!
//! A run or upload is *stalled* when its progress (state, stage, shards counted; the pending
//! upload) has not changed for `stall_after_secs` **and** the queue that carries its next step
//! is empty, nothing waiting and nothing being processed. An empty queue is what tells lost work
//! from slow work: a run behind a long backlog, or a shard that takes the whole 15 minutes, has
//! its message in the queue. Re-sending is safe because every step is idempotent (see
//! [`super`]); only the shards not yet counted are sent again. After `max_redrives` re-sends
//! without progress the run or upload goes to `error` with a message saying so.
//!
//! Cost per sweep: two queries per live project (its parties, its runs), plus one read and at
//! most one write per unfinished run or pending upload.

use std::collections::HashMap;

use tracing::{info, warn};

use crate::service::keys;
use crate::service::model::{Party, Project, Run, RunState, UploadState, Watch, WatchTarget};
use crate::service::ports::{BlobError, BlobStore, ClientStores, MetaStore, WorkQueue};

use super::fan_out::dispatched_key;
use super::{Pipeline, PipelineError, SolveMessage};

/// What one sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Unfinished runs and pending uploads looked at.
    pub watched: usize,
    /// Of those, how many had their work sent again.
    pub redriven: usize,
    /// Of those, how many were put in `error` because re-sending did not help.
    pub failed: usize,
}

/// Whether a watched item moved since the watchdog last looked.
enum Progress {
    Moving,
    /// No change for the stall time; its work was re-sent `redrives` times since it last moved.
    Stalled { redrives: u32 },
}

/// What a stalled run needs sent again.
enum RunStep {
    /// Its start request (claiming, planning, dispatching): fan-out's work.
    Start,
    /// The shards not counted yet: compare's work.
    Shards,
    /// The solve message: solve's work.
    Solve,
}

impl<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C: ClientStores> Pipeline<M, B, U, Q, C> {
    /// One sweep over every live project. `now_secs` is the current Unix time.
    pub async fn watchdog(&self, now_secs: u64) -> Result<Sweep, PipelineError> {
        let mut sweep = Sweep::default();
        // Queue emptiness is asked at most once per queue per sweep.
        let mut idle: HashMap<String, bool> = HashMap::new();
        for summary in self.meta.list_projects().await? {
            let Some((project, parties)) = self.meta.get_project(&summary.project_id).await? else { continue };
            for party in parties.iter().filter(|p| p.upload_state == UploadState::Pending) {
                sweep.watched += 1;
                self.watch_upload(&project, party, now_secs, &mut idle, &mut sweep).await?;
            }
            for run in self.meta.list_runs(&project.project_id).await?.into_iter().filter(|r| !r.state.is_final()) {
                sweep.watched += 1;
                self.watch_run(&project, &parties, &run, now_secs, &mut idle, &mut sweep).await?;
            }
        }
        if sweep.redriven > 0 || sweep.failed > 0 {
            info!(watched = sweep.watched, redriven = sweep.redriven, failed = sweep.failed, "watchdog sweep");
        }
        Ok(sweep)
    }

    async fn watch_upload(
        &self,
        project: &Project,
        party: &Party,
        now_secs: u64,
        idle: &mut HashMap<String, bool>,
        sweep: &mut Sweep,
    ) -> Result<(), PipelineError> {
        let project_id = project.project_id.as_str();
        let Some(upload_id) = party.upload_id.as_deref() else { return Ok(()) };
        let target = WatchTarget::Upload(party.index);
        let fingerprint = format!("pending {upload_id}");
        let Progress::Stalled { redrives } = self.progress(project_id, &target, &fingerprint, now_secs).await? else {
            return Ok(());
        };
        if !self.queue_idle(&self.settings.watchdog.ingest_queue_url, idle).await? {
            return Ok(());
        }
        if redrives >= self.settings.watchdog.max_redrives {
            let message = format!(
                "The upload was not processed: it made no progress for {} seconds after being sent for processing \
                 again {redrives} times. Please upload again.",
                self.settings.watchdog.stall_after_secs
            );
            warn!(project_id, party = party.index, upload_id, redrives, "stalled upload failed");
            self.meta.fail_upload(project_id, party.index, upload_id, &message).await?;
            sweep.failed += 1;
            return Ok(());
        }
        // Writing the stored upload again makes S3 announce it again, so ingestion starts the
        // way it always does (with its retries and dead-letter queue).
        let key = keys::upload(project_id, party.index, upload_id);
        match self.work.get(&key).await {
            Ok((body, metadata)) => self.work.put(&key, body, &metadata).await?,
            Err(BlobError::NotFound(_)) => {
                warn!(project_id, party = party.index, upload_id, "stalled upload has no stored data");
                self.meta
                    .fail_upload(project_id, party.index, upload_id, "The uploaded data was lost before it could be read; please upload again.")
                    .await?;
                sweep.failed += 1;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        warn!(project_id, party = party.index, upload_id, redrives = redrives + 1, "stalled upload sent again");
        self.note_redrive(project_id, &target, fingerprint, now_secs, redrives).await?;
        sweep.redriven += 1;
        Ok(())
    }

    async fn watch_run(
        &self,
        project: &Project,
        parties: &[Party],
        run: &Run,
        now_secs: u64,
        idle: &mut HashMap<String, bool>,
        sweep: &mut Sweep,
    ) -> Result<(), PipelineError> {
        let (project_id, run_id) = (project.project_id.as_str(), run.run_id.as_str());
        let target = WatchTarget::Run(run_id.to_string());
        let fingerprint = format!("{} stage {} shards {}/{}", run.state.as_str(), run.stage, run.shards_done, run.shards_total);
        let Progress::Stalled { redrives } = self.progress(project_id, &target, &fingerprint, now_secs).await? else {
            return Ok(());
        };
        let step = match run.state {
            // Waiting for data is not a stall: the last upload starts the run.
            RunState::Created if !self.parties_ready(project, parties).await? => return Ok(()),
            RunState::Created | RunState::Queued => RunStep::Start,
            RunState::Running if self.work.head(&dispatched_key(project_id, run_id)).await?.is_none() => RunStep::Start,
            RunState::Running if run.shards_done < run.shards_total => RunStep::Shards,
            RunState::Running => RunStep::Solve,
            RunState::Completed | RunState::Error => return Ok(()),
        };
        let queue = match step {
            RunStep::Start => &self.settings.watchdog.ingest_queue_url,
            RunStep::Shards => &self.settings.shard_queue_url,
            RunStep::Solve => &self.settings.solve_queue_url,
        };
        if !self.queue_idle(queue, idle).await? {
            return Ok(());
        }
        if redrives >= self.settings.watchdog.max_redrives {
            let message = format!(
                "The run stopped making progress: its work was lost and sent again {redrives} times without effect \
                 (no progress for {} seconds each time). Please post the run again.",
                self.settings.watchdog.stall_after_secs
            );
            warn!(project_id, run_id, redrives, "stalled run failed");
            if self.meta.fail_run(project_id, run_id, &message).await? {
                sweep.failed += 1;
            }
            return Ok(());
        }
        let sent = match step {
            RunStep::Start => {
                self.start_run(project_id, run_id).await?;
                "start"
            }
            RunStep::Shards => {
                let counted = self.meta.counted_shards(project_id, run_id).await?;
                let planned = self.plan_shards(project_id, run_id, parties).await?;
                if planned.messages.len() as u32 != run.shards_total {
                    return Err(PipelineError::Corrupt(format!(
                        "run {run_id} was planned with {} shards but plans to {} now",
                        run.shards_total,
                        planned.messages.len()
                    )));
                }
                let missing: Vec<String> = planned
                    .messages
                    .into_iter()
                    .filter(|(index, _)| counted.binary_search(index).is_err())
                    .map(|(_, body)| body)
                    .collect();
                let n = missing.len();
                self.queue.send(&self.settings.shard_queue_url, missing).await?;
                info!(project_id, run_id, shards = n, "uncounted shards sent again");
                "shards"
            }
            RunStep::Solve => {
                let body = serde_json::to_string(&SolveMessage { project_id: project_id.into(), run_id: run_id.into() })
                    .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
                self.queue.send(&self.settings.solve_queue_url, vec![body]).await?;
                "solve"
            }
        };
        warn!(project_id, run_id, step = sent, redrives = redrives + 1, "stalled run's work sent again");
        self.note_redrive(project_id, &target, fingerprint, now_secs, redrives).await?;
        sweep.redriven += 1;
        Ok(())
    }

    /// Compares the item's progress with the watchdog's last note, noting it when it changed.
    async fn progress(&self, project_id: &str, target: &WatchTarget, fingerprint: &str, now_secs: u64) -> Result<Progress, PipelineError> {
        match self.meta.get_watch(project_id, target).await? {
            Some(w) if w.fingerprint == fingerprint => {
                if now_secs >= w.since_secs.saturating_add(self.settings.watchdog.stall_after_secs) {
                    Ok(Progress::Stalled { redrives: w.redrives })
                } else {
                    Ok(Progress::Moving)
                }
            }
            _ => {
                let watch = Watch { fingerprint: fingerprint.to_string(), since_secs: now_secs, redrives: 0 };
                self.meta.put_watch(project_id, target, &watch).await?;
                Ok(Progress::Moving)
            }
        }
    }

    /// Counts a re-send and restarts the stall clock, so the re-sent work gets the full stall
    /// time to show progress.
    async fn note_redrive(&self, project_id: &str, target: &WatchTarget, fingerprint: String, now_secs: u64, redrives: u32) -> Result<(), PipelineError> {
        let watch = Watch { fingerprint, since_secs: now_secs, redrives: redrives + 1 };
        self.meta.put_watch(project_id, target, &watch).await?;
        Ok(())
    }

    async fn queue_idle(&self, queue_url: &str, idle: &mut HashMap<String, bool>) -> Result<bool, PipelineError> {
        if let Some(known) = idle.get(queue_url) {
            return Ok(*known);
        }
        let now = self.queue.is_idle(queue_url).await?;
        idle.insert(queue_url.to_string(), now);
        Ok(now)
    }
}
