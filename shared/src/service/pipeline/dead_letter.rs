//! Dead letters: messages that failed on every delivery. The run or upload they belonged to is
//! put in `error` with a message, so nobody waits forever on work that will not finish. A purge
//! is not given up: the deleted project's tombstone keeps it in the watchdog's sight, which
//! requests it again until it completes.

use tracing::warn;

use crate::service::keys::Incoming;
use crate::service::ports::{BlobError, BlobStore, Ports, RunStore, UploadStore};

use super::dispatch::DispatchMessage;
use super::events::s3_event_keys;
use super::{Pipeline, PipelineError, ShardMessage, SolveMessage};

pub const RUN_FAILED_MESSAGE: &str = "Run failed with an internal server error.";

impl<P: Ports> Pipeline<P>
where
    P::Meta: UploadStore + RunStore,
    P::Work: BlobStore,
{
    /// Handles one message from any dead-letter queue.
    pub async fn on_dead_letter(&self, body: &str) -> Result<(), PipelineError> {
        if let Ok(m) = serde_json::from_str::<ShardMessage>(body) {
            warn!(project_id = m.project_id, run_id = m.run_id, shard = m.shard_index, "shard failed on every attempt");
            let message = format!("{RUN_FAILED_MESSAGE} Shard {} could not be computed after repeated attempts.", m.shard_index);
            self.fail_run(&m.project_id, &m.run_id, &message).await?;
            return Ok(());
        }
        // Before solve's: a range message has the fields of a solve message too.
        if let Ok(m) = serde_json::from_str::<DispatchMessage>(body) {
            warn!(project_id = m.project_id, run_id = m.run_id, pages = ?m.pages, "dispatch failed on every attempt");
            let message = format!("{RUN_FAILED_MESSAGE} Its shards could not be dispatched after repeated attempts.");
            self.fail_run(&m.project_id, &m.run_id, &message).await?;
            return Ok(());
        }
        if let Ok(m) = serde_json::from_str::<SolveMessage>(body) {
            warn!(project_id = m.project_id, run_id = m.run_id, "solve failed on every attempt");
            let message = format!("{RUN_FAILED_MESSAGE} The result could not be computed after repeated attempts.");
            self.fail_run(&m.project_id, &m.run_id, &message).await?;
            return Ok(());
        }
        for key in s3_event_keys(body)? {
            match Incoming::parse(&key) {
                Some(Incoming::Upload { project, party, upload }) => {
                    warn!(project, party, upload, "ingestion failed on every attempt");
                    self.meta
                        .fail_upload(&project, party, &upload, "The upload could not be processed after repeated attempts (internal error); please upload again.")
                        .await?;
                    // The stored upload may hold a client's credentials (a pull from its store):
                    // nothing will read it again.
                    match self.work.delete(&key).await {
                        Ok(()) | Err(BlobError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(Incoming::Run { project, run }) => {
                    warn!(project, run, "run start failed on every attempt");
                    self.fail_run(&project, &run, RUN_FAILED_MESSAGE).await?;
                }
                Some(Incoming::Delete { project }) => {
                    // The project's tombstone stays until a purge completes, and the watchdog
                    // requests the purge again while it is there (`super::expiry`).
                    warn!(project, "project purge failed on every attempt; the watchdog requests it again");
                }
                None => warn!(key, "dead letter for an unknown object"),
            }
        }
        Ok(())
    }
}
