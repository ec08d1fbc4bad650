//! fan-out: reacts to objects created under `incoming/` in the working bucket.
//!
//! - an upload: decode it with the engine, pack it (`data.bin` + `index.bin`), mark the party
//!   done, then start every run that was waiting for data (`ingestion` names the outcomes);
//! - a step of a partitioned ingestion (`blocked_ingestion`), whose last step ends as an
//!   upload does;
//! - a run request: start the run if every party's data is in (otherwise it waits in `created`
//!   and the last upload starts it);
//! - a project delete: remove every object and item of the project.
//!
//! Memory: an inline upload (at most the api's request limit) is decoded and packed in memory;
//! an upload in the upload bucket is streamed or partitioned (bounds in [`super::external`] and
//! [`super::blocked_ingestion`]); planning reads the parties' block indexes in windows
//! ([`super::planning`]).

use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use crate::engine::encoding::{self, SizeBounds};
use crate::service::keys::{self, Incoming, IngestStep};
use crate::service::metrics;
use crate::service::model::{IngestedParty, Party, Project, RunPlan, RunState, Upload};
use crate::service::ports::{BlobError, BlobReader, BlobStore, Metadata, ProjectStore, RunStore, TombstoneStore, UploadStore};
use crate::service::stored_upload::{ExternalUpload, UploadForm};
use crate::service::time;

use super::ingestion::{Ingestion, Rejected, check_schema_size};
use super::{IngestPorts, Pipeline, PipelineError};

/// Marker written once every shard message of a run has been sent.
pub(super) fn dispatched_key(project: &str, run: &str) -> String {
    format!("{}dispatched", keys::run_work_prefix(project, run))
}

impl<P: IngestPorts> Pipeline<P> {
    /// Handles one object created under `incoming/`.
    pub async fn on_incoming(&self, key: &str) -> Result<(), PipelineError> {
        match Incoming::parse(key) {
            Some(Incoming::Upload { project, party, upload }) => self.ingest(&project, party, &upload, None).await,
            Some(Incoming::IngestStep { project, party, upload, step }) => self.ingest(&project, party, &upload, Some(step)).await,
            Some(Incoming::Run { project, run }) => self.start_run(&project, &run).await,
            Some(Incoming::Delete { project }) => self.purge_project(&project).await,
            None => {
                warn!(key, "ignoring an object that is not a pipeline request");
                Ok(())
            }
        }
    }

    /// Ingests an upload (`step` None: the upload's own event) or runs one step of its
    /// partitioned ingestion, then acts on what the ingestion came to.
    async fn ingest(&self, project_id: &str, party_index: u32, upload_id: &str, step: Option<IngestStep>) -> Result<(), PipelineError> {
        let started = Instant::now();
        let key = keys::upload(project_id, party_index, upload_id);
        let step_key = step.map(|s| keys::ingest_step(project_id, party_index, upload_id, s));
        let Some((project, parties)) = self.meta.get_project(project_id).await? else {
            info!(project_id, "upload of a deleted project; dropping it");
            // A paused or partitioned ingestion of it may have left work and packed parts.
            self.work.delete_prefix(&keys::project_data_prefix(project_id)).await?;
            self.delete_step_request(step_key.as_deref()).await?;
            return self.delete_quietly(&key).await;
        };
        let Some(party) = parties.iter().find(|p| p.index == party_index) else {
            warn!(project_id, party_index, "upload for a party the project does not have");
            self.delete_step_request(step_key.as_deref()).await?;
            return self.delete_quietly(&key).await;
        };
        if party.upload.pending(upload_id).is_none() {
            // A redelivered event for an upload already ingested, or superseded by a retry.
            info!(project_id, party_index, upload_id, "upload is no longer pending; nothing to do");
            if party.upload.upload_id() != Some(upload_id) {
                self.delete_quietly(&key).await?;
            }
            self.remove_ingestion_work(project_id, party_index, upload_id).await?;
            return self.start_waiting_runs(project_id).await;
        }
        let (body, metadata) = match self.work.get(&key).await {
            Ok(found) => found,
            Err(BlobError::NotFound(_)) => {
                warn!(project_id, party_index, upload_id, "pending upload object is gone");
                self.meta
                    .fail_upload(project_id, party_index, upload_id, "The uploaded data was lost before it could be read; please upload again.")
                    .await?;
                return self.remove_ingestion_work(project_id, party_index, upload_id).await;
            }
            Err(e) => return Err(e.into()),
        };
        let ingestion = match step {
            None => self.ingest_upload(&project, party_index, upload_id, &body, &metadata).await?,
            Some(step) => match self.continue_blocked(&project, party_index, upload_id, &body, step).await {
                // A twin of this step finished the ingestion and removed its work meanwhile.
                Err(PipelineError::Blob(BlobError::NotFound(what))) if !self.upload_pending(project_id, party_index, upload_id).await? => {
                    info!(project_id, party_index, upload_id, what, "ingestion ended while this step ran");
                    return self.remove_ingestion_work(project_id, party_index, upload_id).await;
                }
                other => other?,
            },
        };
        let ingested = match ingestion {
            Ingestion::Done(ingested) => ingested,
            Ingestion::Rejected(Rejected(message)) => {
                info!(project_id, party_index, %message, "upload rejected");
                self.meta.fail_upload(project_id, party_index, upload_id, &message).await?;
                self.remove_ingestion_work(project_id, party_index, upload_id).await?;
                return self.delete_quietly(&key).await;
            }
            Ingestion::Paused => {
                // The path that paused arranged its continuation (a step request, or its own
                // request written again).
                info!(project_id, party_index, upload_id, step = ?step, "ingestion continues in another invocation");
                self.delete_step_request(step_key.as_deref()).await?;
                return self.abandon_if_no_longer_pending(project_id, party_index, upload_id).await;
            }
        };
        if self.meta.complete_upload(project_id, party_index, upload_id, &ingested).await? {
            info!(project_id, party_index, records = ingested.record_count, "upload ingested");
            let bytes = ingested.record_count * u64::from(ingested.encoding_size);
            metrics::upload_ingested(project_id, party_index, ingested.record_count, bytes, started.elapsed());
        } else if self.meta.get_project(project_id).await?.is_none() {
            // Deleted (and perhaps purged) while we ingested: what we wrote after the purge
            // would outlive the project. Checked after our last write, so nothing comes later.
            info!(project_id, party_index, "project deleted during ingestion; removing its packed data");
            self.work.delete_prefix(&keys::project_data_prefix(project_id)).await?;
        }
        self.remove_ingestion_work(project_id, party_index, upload_id).await?;
        self.cleanup_upload(&key, &body, &metadata).await?;
        self.start_waiting_runs(project_id).await
    }

    /// A step that wrote its objects while the upload was failed or superseded (another chunk
    /// found the blocks file malformed) removes them: checked after its last write, so nothing
    /// of the ingestion outlives it.
    async fn abandon_if_no_longer_pending(&self, project_id: &str, party_index: u32, upload_id: &str) -> Result<(), PipelineError> {
        if !self.upload_pending(project_id, party_index, upload_id).await? {
            self.remove_ingestion_work(project_id, party_index, upload_id).await?;
        }
        Ok(())
    }

    async fn upload_pending(&self, project_id: &str, party_index: u32, upload_id: &str) -> Result<bool, PipelineError> {
        Ok(self.meta.get_project(project_id).await?.is_some_and(|(_, parties)| {
            parties.iter().any(|p| p.index == party_index && p.upload.pending(upload_id).is_some())
        }))
    }

    async fn delete_step_request(&self, step_key: Option<&str>) -> Result<(), PipelineError> {
        match step_key {
            Some(key) => self.delete_quietly(key).await,
            None => Ok(()),
        }
    }

    /// Packs an upload as stored by the api into the party's `data.bin` + `index.bin`. The error
    /// is a storage failure (retried); the [`Ingestion`] says what became of the upload.
    async fn ingest_upload(
        &self,
        project: &Project,
        party: u32,
        upload_id: &str,
        body: &[u8],
        metadata: &Metadata,
    ) -> Result<Ingestion, PipelineError> {
        let limits = &self.settings.limits;
        let bounds = SizeBounds { min: limits.min_encoding_size, max: limits.max_encoding_size };
        let decoded = match UploadForm::of(metadata) {
            Ok(UploadForm::Json) => encoding::decode_json_upload(body, bounds).map_err(|e| Rejected(e.to_string())),
            Ok(UploadForm::Binary { count, size }) => encoding::decode_binary(body, count, size, bounds).map_err(|e| Rejected(e.to_string())),
            Ok(UploadForm::External) => return self.ingest_external(project, party, upload_id, body, bounds).await,
            Err(message) => Err(Rejected(message)),
        };
        let decoded = match decoded {
            Ok(d) if d.is_empty() => Err(Rejected("Missing CLKs information: the upload holds no encodings".into())),
            other => other,
        };
        let decoded = match decoded.and_then(|d| check_schema_size(project, d.encoding_size).map(|()| d)) {
            Ok(d) => d,
            Err(rejection) => return Ok(Ingestion::Rejected(rejection)),
        };
        Ok(Ingestion::Done(self.store_packed(&project.project_id, party, &decoded).await?))
    }

    /// Deletes the incoming object (which holds the client's credentials when the upload was
    /// pulled from its store) and, for external uploads, the objects pulled from the upload
    /// bucket; objects in a client's store are theirs and stay.
    async fn cleanup_upload(&self, key: &str, body: &[u8], metadata: &Metadata) -> Result<(), PipelineError> {
        if UploadForm::of(metadata) == Ok(UploadForm::External)
            && let Ok(reference) = serde_json::from_slice::<ExternalUpload>(body)
        {
            for object in reference.objects() {
                if object.store.is_none() {
                    self.uploads.delete(&object.path).await?;
                }
            }
        }
        self.delete_quietly(key).await
    }

    async fn delete_quietly(&self, key: &str) -> Result<(), PipelineError> {
        match self.work.delete(key).await {
            Ok(()) | Err(BlobError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts every run of the project still waiting in `created`, if all data is in.
    async fn start_waiting_runs(&self, project_id: &str) -> Result<(), PipelineError> {
        let runs = self.meta.list_runs(project_id).await?;
        for run in runs.iter().filter(|r| r.state == RunState::Created) {
            self.start_run(project_id, &run.run_id).await?;
        }
        Ok(())
    }

    /// Whether every party's data is in and fits the others' (mismatches are reported here).
    pub(super) async fn parties_ready(&self, project: &Project, parties: &[Party]) -> Result<bool, PipelineError> {
        // Each party's upload and what its ingestion found, once every party's upload is done.
        let done: Option<Vec<(u32, &str, &IngestedParty)>> = parties
            .iter()
            .map(|p| match &p.upload {
                Upload::Done { start, ingested } => Some((p.index, start.upload_id.as_str(), ingested)),
                _ => None,
            })
            .collect();
        let Some(done) = done.filter(|done| done.len() == project.number_parties as usize) else {
            return Ok(false);
        };
        let ingested: Vec<&IngestedParty> = done.iter().map(|&(_, _, ingested)| ingested).collect();
        if ingested.iter().any(|i| i.encoding_size != ingested[0].encoding_size) {
            // As the reference does: the size the schema says, else the one most parties used
            // (ties: the lowest party's) is right; the other uploads go to `error`, so those
            // parties can upload again with the same token, and the waiting runs fail.
            let expected = project.schema_encoding_size().map(|s| s as u32).unwrap_or_else(|| {
                let count = |size: u32| ingested.iter().filter(|i| i.encoding_size == size).count();
                // In party order with a strict `>`, so a tie keeps the lowest party's size.
                let (mut best, mut best_count) = (ingested[0].encoding_size, 0);
                for size in ingested.iter().map(|i| i.encoding_size) {
                    if count(size) > best_count {
                        (best, best_count) = (size, count(size));
                    }
                }
                best
            });
            let sizes: Vec<String> = ingested.iter().map(|i| i.encoding_size.to_string()).collect();
            let message = format!(
                "Mismatch in encoding sizes: the parties uploaded encodings of {} bytes; expected {expected} bytes",
                sizes.join(", ")
            );
            for (party, upload_id, facts) in done {
                if facts.encoding_size != expected {
                    let why = format!("{message}. Please upload encodings of {expected} bytes again.");
                    self.meta.reject_upload(&project.project_id, party, upload_id, &why).await?;
                }
            }
            for run in self.meta.list_runs(&project.project_id).await? {
                if !run.state.is_final() {
                    self.fail_run(&project.project_id, &run.run_id, &message).await?;
                }
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Moves a run from `created` to `running`: plans its shards and sends them to compare.
    /// Safe to repeat: a redelivered request re-sends the same shards unless they were all sent.
    pub async fn start_run(&self, project_id: &str, run_id: &str) -> Result<(), PipelineError> {
        let Some((project, parties)) = self.meta.get_project(project_id).await? else {
            return self.delete_quietly(&keys::run_request(project_id, run_id)).await;
        };
        if !self.parties_ready(&project, &parties).await? {
            return Ok(()); // the last upload starts it
        }
        let Some(run) = self.meta.get_run(project_id, run_id).await? else {
            return self.delete_quietly(&keys::run_request(project_id, run_id)).await;
        };
        let resume = match run.state {
            RunState::Created => {
                if !self.meta.claim_run(project_id, run_id).await? {
                    return Ok(()); // another invocation claimed it and plans it
                }
                false
            }
            // Claimed by an invocation that may have died before sending every shard.
            RunState::Queued | RunState::Running => {
                if self.work.head(&dispatched_key(project_id, run_id)).await?.is_some() {
                    return self.delete_quietly(&keys::run_request(project_id, run_id)).await;
                }
                true
            }
            RunState::Completed | RunState::Error => return Ok(()),
        };
        let planned = self.plan_shards(project_id, run_id, &parties).await?;
        if let Some(message) = self.over_comparison_limit(project_id, run_id, planned.total_comparisons).await? {
            self.fail_run(project_id, run_id, &message).await?;
            self.work.delete_prefix(&keys::run_work_prefix(project_id, run_id)).await?;
            return self.delete_quietly(&keys::run_request(project_id, run_id)).await;
        }
        let shards_total = planned.messages.len() as u32;
        info!(project_id, run_id, shards_total, comparisons = planned.total_comparisons, resume, "run planned");
        let bodies: Vec<String> = planned.messages.into_iter().map(|(_, body)| body).collect();
        let run_plan = RunPlan { shards_total, total_comparisons: planned.total_comparisons, time_started: time::now_iso() };
        let started = self.meta.start_run(project_id, run_id, &run_plan).await?;
        if !started && !resume {
            return self.clean_up_if_deleted(project_id, run_id).await; // deleted or failed meanwhile
        }
        if shards_total == 0 {
            // Nothing shares a block: solve publishes the empty result.
            self.send_solve(project_id, run_id).await?;
        } else {
            self.dispatch_run(project_id, run_id, bodies).await?;
        }
        self.work.put(&dispatched_key(project_id, run_id), Bytes::from_static(b"{}"), &Vec::new()).await?;
        self.clean_up_if_deleted(project_id, run_id).await?;
        self.delete_quietly(&keys::run_request(project_id, run_id)).await
    }

    /// Why the run may not start: its comparisons and those of the project's other runs add up
    /// to more than `MaxComparisonsPerProject` (the api checks what it can before the data is in).
    async fn over_comparison_limit(&self, project_id: &str, run_id: &str, planned: u64) -> Result<Option<String>, PipelineError> {
        let limit = self.settings.limits.max_comparisons_per_project;
        let others: u64 = self
            .meta
            .list_runs(project_id)
            .await?
            .iter()
            .filter(|r| r.run_id != run_id)
            .map(|r| r.total_comparisons)
            .fold(0, u64::saturating_add);
        if others.saturating_add(planned) <= limit {
            return Ok(None);
        }
        Ok(Some(format!(
            "The run needs {planned} comparisons and the project's other runs used {others}: more than the {limit} \
             allowed per project (MaxComparisonsPerProject)."
        )))
    }

    /// A run deleted while fan-out planned or dispatched it: the api removed the run's objects
    /// before our writes (large shard descriptions, the dispatched marker) landed, so remove them.
    async fn clean_up_if_deleted(&self, project_id: &str, run_id: &str) -> Result<(), PipelineError> {
        if self.meta.get_run(project_id, run_id).await?.is_none() {
            self.work.delete_prefix(&keys::run_work_prefix(project_id, run_id)).await?;
        }
        Ok(())
    }

    /// Removes every object and item of a deleted project. Runs in flight notice the project is
    /// gone and stop; their late writes land under the same prefixes and are removed by a
    /// redelivery of this event or by the bucket's lifecycle rules.
    async fn purge_project(&self, project_id: &str) -> Result<(), PipelineError> {
        for prefix in keys::project_prefixes(project_id) {
            if prefix == keys::delete_request(project_id) {
                continue;
            }
            let n = self.work.delete_prefix(&prefix).await?;
            if n > 0 {
                info!(project_id, prefix, objects = n, "purged");
            }
        }
        self.uploads.delete_prefix(&format!("{project_id}/")).await?;
        self.meta.purge_project(project_id).await?;
        self.delete_quietly(&keys::delete_request(project_id)).await
    }
}
