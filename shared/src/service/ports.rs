//! Ports: the narrow traits between the service logic and the outside world.
//!
//! Each step takes only the ports it uses, and of the metadata store only the parts it needs
//! ([`ProjectStore`], [`UploadStore`], [`RunStore`], [`ShardCounter`], [`TombstoneStore`],
//! [`WatchStore`], [`StatusStore`]; [`MetaStore`] is their union). Why: a step's `where` clause
//! is then the list of what it touches, checked by the compiler, so a reader (or a reviewer of
//! the per-function IAM policies in `infra/template.yaml`, which it matches) sees what compare or
//! the watchdog may change without reading them, and a change to one part of the store reaches
//! only the steps that name it. [`Ports`] gathers the adapters a deployment wires in; the table
//! of steps and their ports is in `docs/architecture.md`.
//!
//! Futures are `Send` so handlers can run on tokio and inside axum.

use std::future::Future;
use std::ops::Range;

use bytes::Bytes;

use super::aws_limits::LimitExceeded;
use super::pull_policy::{ClientEndpoint, ClientStoreAccess};
use super::model::{
    IngestedParty, Party, Project, ProjectSummary, Run, RunHead, RunPlan, ShardOutcome, ShardTally, ShardsOutcome, StatusCounters,
    Tombstone, UploadStart, Watch, WatchTarget,
};

/// The ports a deployment wires in, by role: AWS's adapters (`aws::AwsPorts`) or the in-memory
/// ones (`memory::MemoryPorts`). A role says only what every port shares (cheap clones, usable
/// across tasks), not which trait it implements: each step of the pipeline and each area of the
/// API names, in its `where` clause, the ports it uses and the parts of the metadata store it
/// needs (`P::Meta: RunStore, P::Work: BlobStore`), so the compiler holds it to that list, and a
/// new port is one associated type here, whatever the number of steps.
pub trait Ports: Send + Sync + 'static {
    /// The metadata store ([`MetaStore`] and its parts).
    type Meta: Send + Sync + Clone + 'static;
    /// The working bucket.
    type Work: Send + Sync + Clone + 'static;
    /// The upload bucket (where data providers put large encodings).
    type Uploads: Send + Sync + Clone + 'static;
    /// The work queues.
    type Queue: Send + Sync + Clone + 'static;
    /// Object stores that clients name in ExternalData (fan-out pulls from them when allowed).
    type ClientStores: Send + Sync + Clone + 'static;
    /// The issuer of upload and result-download credentials (the api).
    type Credentials: Send + Sync + Clone + 'static;
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A conditional write lost: the item is not in the state the caller expected.
    #[error("conflicting update: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("metadata store error: {0}")]
    Backend(String),
    /// DynamoDB cancelled a transaction (or refused a write) because another transaction was
    /// changing one of its items at the same moment, and the in-process retries
    /// ([`super::retry::on_conflict`]) did not get through. Retryable: nothing was written.
    #[error("transaction conflict: {0}")]
    TransactionConflict(String),
    /// The write is one DynamoDB would refuse (item over 400 KB, transaction over 100 items).
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
}

/// Project, party and run metadata (DynamoDB in AWS): the union of the metadata ports below,
/// for what needs all of them (the adapters, the wiring, the tests). Every state change that
/// could race is a conditional write, so concurrent requests and redelivered events cannot
/// corrupt state; [`super::meta_contract`] states how each answers, for both stores.
pub trait MetaStore: ProjectStore + TombstoneStore + UploadStore + RunStore + ShardCounter + WatchStore + StatusStore {}

impl<T: ProjectStore + TombstoneStore + UploadStore + RunStore + ShardCounter + WatchStore + StatusStore> MetaStore for T {}

/// Projects and their parties as the API creates, lists, reads and deletes them.
pub trait ProjectStore: Send + Sync + Clone + 'static {
    /// Creates the project and its parties atomically and counts it for `/status`.
    fn create_project(&self, project: &Project, parties: &[Party]) -> impl Future<Output = Result<(), MetaError>> + Send;
    /// All live projects (not being deleted), oldest first.
    fn list_projects(&self) -> impl Future<Output = Result<Vec<ProjectSummary>, MetaError>> + Send;
    /// At most `limit` live projects after `after` (a cursor: [`ProjectSummary::cursor`] of the
    /// last one seen), oldest first, and the cursor of the next page if there may be one.
    fn list_projects_page(&self, after: Option<&str>, limit: usize) -> impl Future<Output = Result<(Vec<ProjectSummary>, Option<String>), MetaError>> + Send;
    /// The project with all its parties (strongly consistent). `None` if unknown or being deleted.
    fn get_project(&self, project_id: &str) -> impl Future<Output = Result<Option<(Project, Vec<Party>)>, MetaError>> + Send;
    /// Marks the project as being deleted (it disappears from every read at once), leaves a
    /// tombstone that [`TombstoneStore::list_tombstones`] finds until `purge_project`, and uncounts it.
    /// Returns false if it was unknown or already being deleted.
    fn mark_project_deleted(&self, project_id: &str) -> impl Future<Output = Result<bool, MetaError>> + Send;
}

/// Deleted projects until their purge (the watchdog's purge and expiry).
pub trait TombstoneStore: Send + Sync + Clone + 'static {
    /// Projects marked deleted whose purge has not finished (their tombstones), oldest delete
    /// first, at most `limit`.
    fn list_tombstones(&self, limit: usize) -> impl Future<Output = Result<Vec<Tombstone>, MetaError>> + Send;
    /// Removes every item of the project (project, parties, runs, shard markers).
    fn purge_project(&self, project_id: &str) -> impl Future<Output = Result<(), MetaError>> + Send;
}

/// A party's upload through its states (`not_started` → `pending` → `done`, or `error`;
/// [`super::model::Upload`]). A message that would not fit the party's item is refused with
/// `Limit` before the upload's state is looked at, so that answer does not depend on the state.
pub trait UploadStore: Send + Sync + Clone + 'static {
    /// Moves a party's upload from `not_started`/`error` to `pending` under `upload.upload_id`,
    /// storing the receipt token hash. `Conflict` if an upload is already pending or done;
    /// `NotFound` if the project is unknown or being deleted, or has no such party.
    fn begin_upload(&self, project_id: &str, party: u32, upload: &UploadStart) -> impl Future<Output = Result<(), MetaError>> + Send;
    /// Undoes `begin_upload` when storing the upload failed (back to `not_started`, or `error`
    /// with a message), only if `upload_id` is still the pending one.
    fn abort_upload(&self, project_id: &str, party: u32, upload_id: &str, error: Option<&str>) -> impl Future<Output = Result<(), MetaError>> + Send;
    /// Marks the pending upload `upload_id` as done with what ingestion found. False if that
    /// upload is no longer the pending one (a redelivered event, a deleted project).
    fn complete_upload(&self, project_id: &str, party: u32, upload_id: &str, ingested: &IngestedParty) -> impl Future<Output = Result<bool, MetaError>> + Send;
    /// Puts an ingested (done) upload `upload_id` back in `error` with a message, when its data
    /// turn out not to fit the other parties' (encoding sizes differ); what ingestion found is
    /// dropped. The party may then upload again with the same token, as with any failed upload.
    fn reject_upload(&self, project_id: &str, party: u32, upload_id: &str, message: &str) -> impl Future<Output = Result<(), MetaError>> + Send;
    /// Marks the pending upload `upload_id` as failed with a message a person understands.
    fn fail_upload(&self, project_id: &str, party: u32, upload_id: &str, message: &str) -> impl Future<Output = Result<(), MetaError>> + Send;
}

/// Runs through their states (`created` → `queued` → `running` → `completed`, or `error`).
pub trait RunStore: Send + Sync + Clone + 'static {
    /// Stores a new run in state `created` (fails with `Conflict` if the project is gone).
    fn create_run(&self, run: &Run) -> impl Future<Output = Result<(), MetaError>> + Send;
    fn list_runs(&self, project_id: &str) -> impl Future<Output = Result<Vec<Run>, MetaError>> + Send;
    fn get_run(&self, project_id: &str, run_id: &str) -> impl Future<Output = Result<Option<Run>, MetaError>> + Send;
    /// The run's state and threshold without its counters (compare's check before a shard).
    fn get_run_head(&self, project_id: &str, run_id: &str) -> impl Future<Output = Result<Option<RunHead>, MetaError>> + Send;
    /// Deletes the run and its shard markers. False if it did not exist.
    fn delete_run(&self, project_id: &str, run_id: &str) -> impl Future<Output = Result<bool, MetaError>> + Send;
    /// `created` → `queued` (stage 2). False if another invocation already claimed it.
    fn claim_run(&self, project_id: &str, run_id: &str) -> impl Future<Output = Result<bool, MetaError>> + Send;
    /// `queued` → `running` with the plan's totals and `time_started`, creating the run's shard
    /// counters. False if not queued.
    fn start_run(&self, project_id: &str, run_id: &str, plan: &RunPlan) -> impl Future<Output = Result<bool, MetaError>> + Send;
    /// `running` stage 2 → stage 3 ("compute output"); no-op if already there.
    fn enter_output_stage(&self, project_id: &str, run_id: &str) -> impl Future<Output = Result<(), MetaError>> + Send;
    /// `running` → `completed` with `time_completed`; adds the run to the `/status` rate. False
    /// if it was not running (already completed by a duplicate solve, deleted, failed).
    fn complete_run(&self, project_id: &str, run_id: &str, time_completed: &str) -> impl Future<Output = Result<bool, MetaError>> + Send;
    /// Any non-final state → `error` with a message. False if already final, or the run or its
    /// project is gone.
    fn fail_run(&self, project_id: &str, run_id: &str, message: &str) -> impl Future<Output = Result<bool, MetaError>> + Send;
    /// The run's permutation secret: stores `fresh` unless the run already has one, and returns
    /// the one stored (so every solve of the run agrees). `None` if the run or its project is gone. It lives on
    /// the run's metadata item, which no API response includes.
    fn run_secret(&self, project_id: &str, run_id: &str, fresh: &str) -> impl Future<Output = Result<Option<String>, MetaError>> + Send;
}

/// Counting a started run's computed shards, each exactly once.
pub trait ShardCounter: Send + Sync + Clone + 'static {
    /// Counts computed shards of a started run, each exactly once (its marker + one of the run's
    /// [`SHARD_COUNTERS`](super::model::SHARD_COUNTERS) counter items, with a check that the
    /// project is live, in one transaction for the batch where it can; the run item is not
    /// written). Returns the run as it stands afterwards, counters summed, when it may be
    /// complete or is due for a look ([`RunAfterShard`](super::model::RunAfterShard)). A run or
    /// project deleted meanwhile counts nothing (its counters are gone, its project item says so).
    fn record_shards(&self, project_id: &str, run_id: &str, shards: &[ShardTally]) -> impl Future<Output = Result<ShardsOutcome, MetaError>> + Send;
    /// [`record_shards`](Self::record_shards) of one shard.
    fn record_shard(&self, project_id: &str, run_id: &str, shard: u32, comparisons: u64, candidates: u64) -> impl Future<Output = Result<ShardOutcome, MetaError>> + Send {
        async move {
            let outcome = self.record_shards(project_id, run_id, &[ShardTally { shard, comparisons, candidates }]).await?;
            Ok(ShardOutcome { counted: outcome.counted.first().copied().unwrap_or(false), run: outcome.run })
        }
    }
    /// The shard indexes of the run counted so far (its shard markers), ascending.
    fn counted_shards(&self, project_id: &str, run_id: &str) -> impl Future<Output = Result<Vec<u32>, MetaError>> + Send;
}

/// The watchdog's notes on unfinished runs and uploads (`pipeline::watchdog`).
pub trait WatchStore: Send + Sync + Clone + 'static {
    /// What the watchdog last noted about a run or a party's upload.
    fn get_watch(&self, project_id: &str, target: &WatchTarget) -> impl Future<Output = Result<Option<Watch>, MetaError>> + Send;
    /// Notes `watch` on the run or party, only while it and its project exist (false if not).
    fn put_watch(&self, project_id: &str, target: &WatchTarget, watch: &Watch) -> impl Future<Output = Result<bool, MetaError>> + Send;
}

/// The service-wide counters `/status` reports.
pub trait StatusStore: Send + Sync + Clone + 'static {
    fn status_counters(&self) -> impl Future<Output = Result<StatusCounters, MetaError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("object store error: {0}")]
    Backend(String),
    /// An object store a client named (see [`ClientStoreOpener`]) failed in a way that retrying
    /// will not fix (the SDK already retried): refused address, access denied, unreachable. The
    /// message is for that client and never contains its credentials.
    #[error("{0}")]
    ClientStore(String),
    /// The request is one S3 would refuse (a PUT over 5 GiB, a part out of range).
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
}

/// User metadata of an object (S3 `x-amz-meta-*`), lower-case keys.
pub type Metadata = Vec<(String, String)>;

/// Reading a bucket: all that ingestion does with the objects an upload names, whether they are
/// in the service's upload bucket or in a store the client named ([`ClientStoreOpener`]).
pub trait BlobReader: Send + Sync + Clone + 'static {
    fn get(&self, key: &str) -> impl Future<Output = Result<(Bytes, Metadata), BlobError>> + Send;
    fn get_range(&self, key: &str, range: Range<u64>) -> impl Future<Output = Result<Bytes, BlobError>> + Send;
    fn head(&self, key: &str) -> impl Future<Output = Result<Option<(u64, Metadata)>, BlobError>> + Send;
    /// Up to `max_len` bytes of `key` from byte `start` (a ranged GET that, unlike
    /// [`BlobReader::get_range`], may end early at the end of the object) and the object's
    /// length, so a reader can stream an object of unknown size without a HEAD first. `start`
    /// must be below the length (or 0 for an empty object). The default reads the whole object:
    /// adapters whose objects can be large override it.
    fn get_chunk(&self, key: &str, start: u64, max_len: u64) -> impl Future<Output = Result<(Bytes, u64), BlobError>> + Send {
        async move {
            let (body, _) = self.get(key).await?;
            let len = body.len() as u64;
            let from = start.min(len) as usize;
            let to = start.saturating_add(max_len).min(len) as usize;
            Ok((body.slice(from..to), len))
        }
    }
}

/// An object store bucket of the service's own (S3 in AWS).
pub trait BlobStore: BlobReader {
    fn put(&self, key: &str, body: Bytes, metadata: &Metadata) -> impl Future<Output = Result<(), BlobError>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), BlobError>> + Send;
    /// Deletes every object under `prefix`; returns how many.
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = Result<u64, BlobError>> + Send;
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, BlobError>> + Send;
    /// A time-limited GET URL for clients (results too large for a Lambda response).
    fn presign_get(&self, key: &str, ttl_secs: u64) -> impl Future<Output = Result<String, BlobError>> + Send;

    // ---- multipart writes: objects too large to hold in memory (S3 multipart upload) ------
    // Use them through [`super::blob_stream::MultipartWriter`], which sizes the parts.
    /// Starts a multipart upload of `key`; returns its upload id.
    fn start_multipart(&self, key: &str) -> impl Future<Output = Result<String, BlobError>> + Send;
    /// Stores part `number` (1-based, at most 10 000; every part but the last at least 5 MiB);
    /// returns the part's ETag.
    fn upload_part(&self, key: &str, upload_id: &str, number: u32, body: Bytes) -> impl Future<Output = Result<String, BlobError>> + Send;
    /// Makes the object from `parts` (`(number, etag)`, ascending); it appears atomically.
    fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u32, String)]) -> impl Future<Output = Result<(), BlobError>> + Send;
    /// Discards an unfinished multipart upload and its parts.
    fn abort_multipart(&self, key: &str, upload_id: &str) -> impl Future<Output = Result<(), BlobError>> + Send;
}

/// Opens buckets of object stores that clients name in ExternalData (`endpoint` +
/// `credentials`), read only: ingestion never writes to or deletes from a client's store. The
/// caller has checked the endpoint against the pull policy; the adapter enforces it again for
/// every address it connects to (see [`super::pull_policy`]).
pub trait ClientStoreOpener: Send + Sync + Clone + 'static {
    type Reader: BlobReader;
    fn open(&self, endpoint: &ClientEndpoint, store: &ClientStoreAccess, bucket: &str) -> Result<Self::Reader, BlobError>;
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue error: {0}")]
    Backend(String),
    /// A message SQS would refuse (over 256 KiB).
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
}

/// Sends messages to the work queues (SQS in AWS).
pub trait WorkQueue: Send + Sync + Clone + 'static {
    /// Sends all bodies, in SendMessageBatch requests as full as SQS's limits allow (count and
    /// bytes: [`super::aws_limits::plan_sqs_batches`]); an error means some may not have been
    /// sent, and the caller retries the whole send (consumers are idempotent).
    fn send(&self, queue_url: &str, bodies: Vec<String>) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// How many messages the queue holds: waiting, delayed or being processed. (SQS's counts
    /// are approximate and lag by about a minute; the watchdog waits far longer.)
    fn depth(&self, queue_url: &str) -> impl Future<Output = Result<u64, QueueError>> + Send;
    /// Makes a received message (by its receipt handle) visible again after `visibility_secs`
    /// instead of at the end of the queue's visibility timeout (ChangeMessageVisibility).
    fn change_visibility(&self, queue_url: &str, receipt_handle: &str, visibility_secs: u32) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// What a [`CredentialIssuer`] issues (defined with the API's shapes, which the client shares).
pub use crate::wire::TemporaryCredentials;

#[derive(Debug, thiserror::Error)]
#[error("credential issuer error: {0}")]
pub struct CredentialError(pub String);

/// Mints temporary credentials (STS AssumeRole with an inline session policy in AWS).
pub trait CredentialIssuer: Send + Sync + Clone + 'static {
    /// Credentials that allow only `s3:PutObject` on `bucket/prefix*`.
    fn issue(&self, bucket: &str, prefix: &str, ttl_secs: u64) -> impl Future<Output = Result<TemporaryCredentials, CredentialError>> + Send;
    /// Credentials that allow only `s3:GetObject` on `bucket/key`; `None` when the service is not
    /// configured to issue them.
    fn issue_download(&self, bucket: &str, key: &str, ttl_secs: u64) -> impl Future<Output = Result<Option<TemporaryCredentials>, CredentialError>> + Send;
}
