//! Dead letters: messages that failed on every delivery. The run or upload they belonged to is
//! put in `error` with a message, so nobody waits forever on work that will not finish. A purge
//! is not given up: the deleted project's tombstone keeps it in the watchdog's sight, which
//! requests it again until it completes.

use tracing::warn;

use crate::service::keys::{self, Incoming};
use crate::service::config::DeadLetterSource;
use crate::service::ports::{BlobError, BlobStore, Ports, RunStore, UploadStore};

use super::events::s3_event_keys;
use super::{Pipeline, PipelineError, ShardQueueMessage, SolveMessage};

pub const RUN_FAILED_MESSAGE: &str = "Run failed with an internal server error.";

impl<P: Ports> Pipeline<P>
where
    P::Meta: UploadStore + RunStore,
    P::Work: BlobStore,
{
    /// Handles one message from the dead-letter queue of `source`, read as that queue's message.
    pub async fn on_dead_letter(&self, source: DeadLetterSource, body: &str) -> Result<(), PipelineError> {
        match source {
            DeadLetterSource::Shard => self.on_dead_shard_queue_message(body).await,
            DeadLetterSource::Solve => {
                // Merge steps carry the run's fields too: either way the run cannot finish.
                let m: SolveMessage = serde_json::from_str(body).map_err(|e| PipelineError::Event(format!("not a solve message: {e}")))?;
                warn!(project_id = m.project_id, run_id = m.run_id, "solve failed on every attempt");
                let message = format!("{RUN_FAILED_MESSAGE} The result could not be computed after repeated attempts.");
                self.fail_run(&m.project_id, &m.run_id, &message).await?;
                Ok(())
            }
            DeadLetterSource::Ingest => self.on_dead_ingest_message(body).await,
        }
    }

    async fn on_dead_shard_queue_message(&self, body: &str) -> Result<(), PipelineError> {
        let message = serde_json::from_str::<ShardQueueMessage>(body)
            .map_err(|e| PipelineError::Event(format!("not a shard or dispatch message: {e}")))?;
        let (project_id, run_id, message) = match message {
            ShardQueueMessage::Shard(m) => {
                warn!(project_id = m.project_id, run_id = m.run_id, shard = m.shard_index, "shard failed on every attempt");
                let message = format!("{RUN_FAILED_MESSAGE} Shard {} could not be computed after repeated attempts.", m.shard_index);
                (m.project_id, m.run_id, message)
            }
            ShardQueueMessage::Dispatch(m) => {
                warn!(project_id = m.project_id, run_id = m.run_id, pages = ?m.pages, "dispatch failed on every attempt");
                let message = format!("{RUN_FAILED_MESSAGE} Its shards could not be dispatched after repeated attempts.");
                (m.project_id, m.run_id, message)
            }
        };
        self.fail_run(&project_id, &run_id, &message).await?;
        Ok(())
    }

    async fn on_dead_ingest_message(&self, body: &str) -> Result<(), PipelineError> {
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
                Some(Incoming::IngestStep { project, party, upload, step }) => {
                    warn!(project, party, upload, step = ?step, "an ingestion step failed on every attempt");
                    self.meta
                        .fail_upload(&project, party, &upload, "The upload could not be processed after repeated attempts (internal error); please upload again.")
                        .await?;
                    self.remove_ingestion_work(&project, party, &upload).await?;
                    match self.work.delete(&keys::upload(&project, party, &upload)).await {
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
