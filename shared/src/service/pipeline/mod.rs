//! The pipeline behind the API: what fan-out, compare and solve do with each event.
//!
//! ```text
//! api ──put incoming/…──▶ work bucket ──S3 event──▶ ingest queue ──▶ fan-out
//!                                                                  ├─ ingest an upload (packed data)
//!                                                                  │    └─ a blocked one in steps: put incoming/ingest/… ─┐
//!                                                                  │       (chunks → partitions → assembly) ◀─ S3 event ──┘
//!                                                                  ├─ start a run: plan shards ──▶ shard queue ──▶ compare
//!                                                                  └─ purge a deleted project          │
//!                                              solve ◀── solve queue ◀── the shard that completes a run ┘
//! ```
//!
//! AWS delivers every event at least once, may deliver it twice at the same time, and retries
//! failures. Each step is therefore idempotent: objects are written under deterministic keys
//! with deterministic content, and every state change is a conditional write in the metadata
//! store (a shard is counted once; a run starts once and completes once). Messages that keep
//! failing reach a dead-letter queue, whose handler puts the run or upload in `error`.

pub mod compare;
pub mod dead_letter;
pub mod dispatch;
pub mod events;
pub mod expiry;
pub mod external;
pub mod fan_out;
pub mod ingestion;
pub mod blocked_ingestion;
pub mod upload_objects;
pub mod merge;
pub mod planning;
pub mod solve;
pub mod watchdog;

use serde::{Deserialize, Serialize};

use crate::engine::shard::Shard;

use super::config::Settings;
use super::metrics;
use super::ports::{
    BlobError, BlobStore, ClientStoreOpener, MetaError, MetaStore, Ports, ProjectStore, QueueError, RunStore, TombstoneStore, UploadStore, WorkQueue,
};

/// A message on the shard queue: one shard of one run. Small shards travel inline; large ones
/// (many packed block pairs) are read from the work bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMessage {
    pub project_id: String,
    pub run_id: String,
    pub shard_index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Bytes per record of each party, by party index (0: no data), so compare need not read
    /// the project. Empty in messages planned before it was added: compare reads the project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encoding_sizes: Vec<u32>,
}

/// What arrives on the shard queue: a shard, or a range of a run's shard pages to dispatch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShardQueueMessage {
    Shard(ShardMessage),
    Dispatch(dispatch::DispatchMessage),
}

/// A message on the solve queue: every shard of the run is counted. (The solve queue also
/// carries the merge tree's steps, [`merge::MergeMessage`]; `Pipeline::on_solve_queue` tells
/// them apart.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolveMessage {
    pub project_id: String,
    pub run_id: String,
}

/// Shards larger than this (serialized) are stored in the work bucket instead of the message
/// (SQS allows 256 KiB per message).
pub const INLINE_SHARD_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("malformed event: {0}")]
    Event(String),
    #[error("worker task failed: {0}")]
    Worker(String),
    /// Another message of the same batch failed, and this one with it.
    #[error("failed with its batch: {0}")]
    Batch(String),
}

impl PipelineError {
    /// Whether retrying within seconds may succeed where this attempt failed: a DynamoDB
    /// transaction conflict that outlasted the in-process retries (contention passes quickly).
    /// Everything else keeps the queue's visibility timeout: a throttled or unavailable service
    /// needs time (and the SDK already retried), and a corrupt message fails again anyway.
    pub fn retry_soon(&self) -> bool {
        matches!(self, PipelineError::Meta(MetaError::TransactionConflict(_)))
    }

    /// This failure for the other messages of a batch that failed together (retried as soon).
    pub fn shared_with_batch(&self) -> PipelineError {
        match self {
            PipelineError::Meta(MetaError::TransactionConflict(m)) => PipelineError::Meta(MetaError::TransactionConflict(m.clone())),
            other => PipelineError::Batch(other.to_string()),
        }
    }
}

/// The ports of ingestion, run start and purge (`fan_out`, `external`, `expiry`): every adapter
/// but the credential issuer, and of the metadata store what those steps change. One name for
/// the list that three files would otherwise repeat.
pub trait IngestPorts:
    Ports<Meta: ProjectStore + UploadStore + RunStore + TombstoneStore, Work: BlobStore, Uploads: BlobStore, Queue: WorkQueue, ClientStores: ClientStoreOpener>
{
}

impl<P> IngestPorts for P where
    P: Ports<Meta: ProjectStore + UploadStore + RunStore + TombstoneStore, Work: BlobStore, Uploads: BlobStore, Queue: WorkQueue, ClientStores: ClientStoreOpener>
{
}

/// Every port the pipeline has: what fan-out's handler needs (ingestion, dead letters and the
/// watchdog, which may redrive any step).
pub trait PipelinePorts: Ports<Meta: MetaStore, Work: BlobStore, Uploads: BlobStore, Queue: WorkQueue, ClientStores: ClientStoreOpener> {}

impl<P> PipelinePorts for P where P: Ports<Meta: MetaStore, Work: BlobStore, Uploads: BlobStore, Queue: WorkQueue, ClientStores: ClientStoreOpener> {}

/// Everything the pipeline functions share: the ports and the settings.
pub struct Pipeline<P: Ports> {
    pub meta: P::Meta,
    /// The working bucket.
    pub work: P::Work,
    /// The upload bucket (where data providers put large encodings).
    pub uploads: P::Uploads,
    pub queue: P::Queue,
    /// Object stores that clients name in ExternalData (fan-out pulls from them when allowed).
    pub client_stores: P::ClientStores,
    pub settings: Settings,
}

impl<P: Ports> Clone for Pipeline<P> {
    fn clone(&self) -> Self {
        Pipeline {
            meta: self.meta.clone(),
            work: self.work.clone(),
            uploads: self.uploads.clone(),
            queue: self.queue.clone(),
            client_stores: self.client_stores.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<P: Ports> Pipeline<P>
where
    P::Meta: RunStore,
{
    /// Puts a run in `error` with `message` unless it is final already; true if this call did
    /// it, which then counts the failure in the metrics (with the run as it stands, read once
    /// more on this rare path; a failed read costs the document, never the request).
    pub async fn fail_run(&self, project_id: &str, run_id: &str, message: &str) -> Result<bool, PipelineError> {
        if !self.meta.fail_run(project_id, run_id, message).await? {
            return Ok(false);
        }
        match self.meta.get_run(project_id, run_id).await {
            Ok(Some(run)) => metrics::run_ended(&run, metrics::Outcome::Failed),
            Ok(None) => {}
            Err(e) => tracing::warn!(project_id, run_id, error = %e, "failed run not counted in the metrics"),
        }
        Ok(true)
    }
}

impl<P: Ports> Pipeline<P>
where
    P::Queue: WorkQueue,
{
    /// Asks solve to look at a run: sent by the shard that completes it, by the merge step that
    /// completes a level of its merge tree, by the planner for a run without shards and by the
    /// watchdog for a stalled run. Duplicates are harmless (solve completes a run only once).
    pub async fn send_solve(&self, project_id: &str, run_id: &str) -> Result<(), PipelineError> {
        let body = serde_json::to_string(&SolveMessage { project_id: project_id.into(), run_id: run_id.into() })
            .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
        self.queue.send(&self.settings.solve_queue_url, vec![body]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
