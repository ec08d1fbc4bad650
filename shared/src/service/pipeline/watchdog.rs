//! The watchdog: finds runs and uploads whose work was lost, sends that work again, and puts
//! them in `error` when sending it again does not help. It also ends projects whose lifetime is
//! over and finishes purges that did not complete ([`super::expiry`]). fan-out runs it on a
//! schedule.
//!
//! Every step of the pipeline is triggered by a message, and every message is durable in AWS, so
//! work is lost only when something outside the design happens: a message deleted by hand or by
//! an operator's purge, an emulator restarted with its queues in memory, an S3 notification
//! that never came. Without the watchdog such a run would show `running` forever.
//!
//! **Stalled, judged per run.** A run or upload is *stalled* when its progress (state, stage,
//! shards counted; the pending upload) has not changed for `stall_after_secs`. Whether its work
//! is lost or only queued is then judged for that run, not for the whole queue: the run's
//! *outstanding* messages (its uncounted shards; one start, solve or upload message) are
//! compared with what the queue holds (waiting, delayed and in flight). When the queue holds
//! fewer messages than the run still needs, some of the run's work cannot be there: it is lost
//! and sent again, whatever else the queue carries. When the queue holds at least as many, the
//! run's work may be waiting behind others; the watchdog waits, but only for
//! [`BUSY_QUEUE_PATIENCE`] stall periods: a queue that stays busy (another project's backlog,
//! a poison message being retried) cannot hide lost work for longer. Re-sending is safe because
//! every step is idempotent (see [`super`]); only the shards not yet counted are sent again.
//! After `max_redrives` re-sends without progress the run or upload goes to `error` with a
//! message saying so.
//!
//! **Cannot be starved.** One project's failure (a corrupt item, a throttled read) is logged and
//! counted, and the sweep goes on with the next project. A sweep looks at no more than
//! `sweep_max_projects` projects and stops after `sweep_budget_secs`; it saves a cursor (the
//! listing position, in the work bucket) and the next sweep continues there, wrapping around
//! at the end, so every project is looked at within a bounded number of sweeps however many
//! there are.
//!
//! Cost per project looked at: one query (its parties) plus one (its runs) when it has any
//! unfinished, and one read and at most one write per unfinished run or pending upload; per
//! sweep, one queue-depth read per queue and one cursor write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use crate::service::{keys, metrics};
use crate::service::model::{Party, Project, Run, RunState, Upload, Watch, WatchTarget};
use crate::service::ports::{BlobError, BlobReader, BlobStore, ClientStoreOpener, Ports, ProjectStore, RunStore, ShardCounter, TombstoneStore, UploadStore, WatchStore, WorkQueue};

use super::fan_out::dispatched_key;
use super::{Pipeline, PipelineError};

/// Stall periods a stalled run waits while its queue holds at least as much work as the run
/// still needs, before its work is sent again anyway.
pub const BUSY_QUEUE_PATIENCE: u64 = 4;

/// Projects read from the listing at once.
const LISTING_PAGE: usize = 100;

/// What one sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Projects looked at.
    pub projects: usize,
    /// Unfinished runs and pending uploads looked at.
    pub watched: usize,
    /// Of those, how many had their work sent again.
    pub redriven: usize,
    /// Of those, how many were put in `error` because re-sending did not help.
    pub failed: usize,
    /// Projects deleted because their lifetime was over.
    pub expired: usize,
    /// Deleted projects whose purge was requested again.
    pub purges_retried: usize,
    /// Projects that could not be checked (logged; the sweep went on with the others).
    pub errors: usize,
    /// Whether the sweep reached the end of the listing (the next one starts from the beginning).
    pub reached_end: bool,
}

/// Whether a watched item moved since the watchdog last looked.
enum Progress {
    Moving,
    /// No change for `stalled_secs` (at least the stall time); its work was re-sent `redrives`
    /// times since it last moved.
    Stalled { redrives: u32, stalled_secs: u64 },
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

impl<P: Ports> Pipeline<P>
where
    P::Meta: ProjectStore + UploadStore + RunStore + TombstoneStore + ShardCounter + WatchStore,
    P::Work: BlobStore,
    P::Uploads: BlobStore,
    P::Queue: WorkQueue,
    P::ClientStores: ClientStoreOpener,
{
    /// One sweep: unfinished purges, then live projects from where the last sweep stopped,
    /// within the sweep's budget. `now_secs` is the current Unix time. An error is returned only
    /// when the sweep could not run at all (the listing or the cursor unreadable); a project
    /// that fails is counted in [`Sweep::errors`].
    pub async fn watchdog(&self, now_secs: u64) -> Result<Sweep, PipelineError> {
        let started = Instant::now();
        let settings = &self.settings.watchdog;
        let budget = Duration::from_secs(settings.sweep_budget_secs);
        let mut sweep = Sweep::default();
        if let Err(e) = self.retry_purges(now_secs, &mut sweep).await {
            warn!(error = %e, "watchdog could not retry unfinished purges");
            sweep.errors += 1;
        }
        // Queue depths are read at most once per queue per sweep.
        let mut depths: HashMap<String, u64> = HashMap::new();
        let mut cursor = self.load_cursor().await?;
        'listing: loop {
            let room = settings.sweep_max_projects.saturating_sub(sweep.projects);
            if room == 0 || started.elapsed() >= budget {
                break;
            }
            let (page, next) = self.meta.list_projects_page(cursor.as_deref(), room.min(LISTING_PAGE)).await?;
            for summary in &page {
                if started.elapsed() >= budget {
                    break 'listing;
                }
                sweep.projects += 1;
                if let Err(e) = self.watch_project(&summary.project_id, now_secs, &mut depths, &mut sweep).await {
                    warn!(project_id = summary.project_id, error = %e, "watchdog could not check a project; going on with the others");
                    sweep.errors += 1;
                }
                cursor = Some(summary.cursor());
            }
            match next {
                Some(next) => cursor = Some(next),
                None => {
                    cursor = None;
                    sweep.reached_end = true;
                    break;
                }
            }
        }
        if let Err(e) = self.save_cursor(cursor.as_deref()).await {
            // The next sweep starts from the last saved place: it repeats some projects, loses none.
            warn!(error = %e, "watchdog could not save its place");
            sweep.errors += 1;
        }
        if sweep.redriven > 0 || sweep.failed > 0 || sweep.expired > 0 || sweep.purges_retried > 0 || sweep.errors > 0 {
            info!(
                projects = sweep.projects,
                watched = sweep.watched,
                redriven = sweep.redriven,
                failed = sweep.failed,
                expired = sweep.expired,
                purges_retried = sweep.purges_retried,
                errors = sweep.errors,
                "watchdog sweep"
            );
        }
        metrics::watchdog_swept(sweep.projects, sweep.redriven, sweep.failed, sweep.errors, started.elapsed());
        Ok(sweep)
    }

    /// Where the last sweep stopped (`None`: at the start of the listing).
    async fn load_cursor(&self) -> Result<Option<String>, PipelineError> {
        match self.work.get(keys::WATCHDOG_CURSOR).await {
            Ok((body, _)) => Ok(Some(String::from_utf8_lossy(&body).into_owned()).filter(|c| !c.is_empty())),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn save_cursor(&self, cursor: Option<&str>) -> Result<(), PipelineError> {
        let body = Bytes::from(cursor.unwrap_or_default().to_string());
        self.work.put(keys::WATCHDOG_CURSOR, body, &Vec::new()).await?;
        Ok(())
    }

    /// Ends the project if its lifetime is over; otherwise watches its pending uploads and
    /// unfinished runs.
    async fn watch_project(&self, project_id: &str, now_secs: u64, depths: &mut HashMap<String, u64>, sweep: &mut Sweep) -> Result<(), PipelineError> {
        let Some((project, parties)) = self.meta.get_project(project_id).await? else { return Ok(()) };
        if super::expiry::lifetime_over(&project, self.settings.limits.project_lifetime_secs, now_secs) {
            if self.expire_project(project_id).await? {
                sweep.expired += 1;
            }
            return Ok(());
        }
        for party in &parties {
            if let Upload::Pending(start) = &party.upload {
                sweep.watched += 1;
                self.watch_upload(&project, party.index, &start.upload_id, now_secs, depths, sweep).await?;
            }
        }
        for run in self.meta.list_runs(project_id).await?.into_iter().filter(|r| !r.state.is_final()) {
            sweep.watched += 1;
            self.watch_run(&project, &parties, &run, now_secs, depths, sweep).await?;
        }
        Ok(())
    }

    async fn watch_upload(
        &self,
        project: &Project,
        party: u32,
        upload_id: &str,
        now_secs: u64,
        depths: &mut HashMap<String, u64>,
        sweep: &mut Sweep,
    ) -> Result<(), PipelineError> {
        let project_id = project.project_id.as_str();
        let target = WatchTarget::Upload(party);
        // A partitioned ingestion stays pending for many invocations: each step it finishes is
        // progress, so a long one is not taken for a stalled one.
        let steps_done = self.ingestion_steps_done(project_id, party, upload_id).await?;
        let fingerprint = format!("pending {upload_id} steps {steps_done}");
        let Progress::Stalled { redrives, stalled_secs } = self.progress(project_id, &target, &fingerprint, now_secs).await? else {
            return Ok(());
        };
        if self.may_be_queued(&self.settings.watchdog.ingest_queue_url, 1, stalled_secs, depths).await? {
            return Ok(());
        }
        if redrives >= self.settings.watchdog.max_redrives {
            let message = format!(
                "The upload was not processed: it made no progress for {} seconds after being sent for processing \
                 again {redrives} times. Please upload again.",
                self.settings.watchdog.stall_after_secs
            );
            warn!(project_id, party = party, upload_id, redrives, "stalled upload failed");
            self.meta.fail_upload(project_id, party, upload_id, &message).await?;
            sweep.failed += 1;
            return Ok(());
        }
        // Writing the stored upload again makes S3 announce it again, so ingestion starts the
        // way it always does (with its retries and dead-letter queue).
        let key = keys::upload(project_id, party, upload_id);
        match self.work.get(&key).await {
            Ok((body, metadata)) => self.work.put(&key, body, &metadata).await?,
            Err(BlobError::NotFound(_)) => {
                warn!(project_id, party = party, upload_id, "stalled upload has no stored data");
                self.meta
                    .fail_upload(project_id, party, upload_id, "The uploaded data was lost before it could be read; please upload again.")
                    .await?;
                sweep.failed += 1;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        warn!(project_id, party = party, upload_id, redrives = redrives + 1, "stalled upload sent again");
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
        depths: &mut HashMap<String, u64>,
        sweep: &mut Sweep,
    ) -> Result<(), PipelineError> {
        let (project_id, run_id) = (project.project_id.as_str(), run.run_id.as_str());
        let target = WatchTarget::Run(run_id.to_string());
        let fingerprint = format!("{} stage {} shards {}/{}", run.state.as_str(), run.stage, run.shards_done, run.shards_total);
        let Progress::Stalled { redrives, stalled_secs } = self.progress(project_id, &target, &fingerprint, now_secs).await? else {
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
        let (queue, outstanding) = match step {
            RunStep::Start => (&self.settings.watchdog.ingest_queue_url, 1),
            RunStep::Shards => (&self.settings.shard_queue_url, u64::from(run.shards_total.saturating_sub(run.shards_done))),
            RunStep::Solve => (&self.settings.solve_queue_url, 1),
        };
        if self.may_be_queued(queue, outstanding, stalled_secs, depths).await? {
            return Ok(());
        }
        if redrives >= self.settings.watchdog.max_redrives {
            let message = format!(
                "The run stopped making progress: its work was lost and sent again {redrives} times without effect \
                 (no progress for {} seconds each time). Please post the run again.",
                self.settings.watchdog.stall_after_secs
            );
            warn!(project_id, run_id, redrives, "stalled run failed");
            if self.fail_run(project_id, run_id, &message).await? {
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
                self.send_solve(project_id, run_id).await?;
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
                    Ok(Progress::Stalled { redrives: w.redrives, stalled_secs: now_secs - w.since_secs })
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

    /// Whether a stalled item's `outstanding` messages may still be waiting in `queue_url` (see
    /// the module docs): only if the queue holds at least that many, and not for longer than
    /// [`BUSY_QUEUE_PATIENCE`] stall periods.
    async fn may_be_queued(&self, queue_url: &str, outstanding: u64, stalled_secs: u64, depths: &mut HashMap<String, u64>) -> Result<bool, PipelineError> {
        let depth = match depths.get(queue_url) {
            Some(known) => *known,
            None => {
                let now = self.queue.depth(queue_url).await?;
                depths.insert(queue_url.to_string(), now);
                now
            }
        };
        let patience = self.settings.watchdog.stall_after_secs.saturating_mul(BUSY_QUEUE_PATIENCE);
        Ok(depth >= outstanding.max(1) && stalled_secs < patience)
    }
}
