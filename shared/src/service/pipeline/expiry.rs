//! Data that expires and deletes that complete.
//!
//! A project lives `project_lifetime_secs` (a template parameter, 7 days by default) from its
//! creation. Then the watchdog deletes it as its owner would ([`Pipeline::expire_project`]):
//! marked deleted, invisible at once, and its purge requested. The service does not rely on
//! DynamoDB's TTL for this (it deletes expired items within days, not on time, and DynamoDB
//! Local not at all); the `expires_at` attribute every item carries is a backstop, later than
//! the purge, as the bucket lifecycle rules are for objects.
//!
//! A delete is durable before it is answered: marking a project deleted leaves a *tombstone*
//! (the project item, in the index's `DELETED` partition) until the purge has removed every
//! object and, last, every item. A purge whose request was never stored, or that failed on
//! every delivery and reached the dead-letter queue, is requested again by the watchdog
//! ([`Pipeline::retry_purges`]) until it completes.

use bytes::Bytes;
use serde_json::json;
use tracing::{info, warn};

use crate::service::keys;
use crate::service::model::Project;
use crate::service::ports::{BlobError, BlobStore, ProjectStore, TombstoneStore};
use crate::service::time;

use super::{IngestPorts, Pipeline, PipelineError};

/// Tombstones looked at per sweep (the oldest first).
const TOMBSTONES_PER_SWEEP: usize = 100;

/// Stores the request whose S3 event makes fan-out purge the project (used by the api's delete,
/// by expiry and by retries).
pub async fn request_purge<B: BlobStore>(work: &B, project_id: &str) -> Result<(), BlobError> {
    let request = json!({"project_id": project_id, "time_requested": time::now_iso()});
    let metadata = vec![("kind".to_string(), "delete".to_string())];
    work.put(&keys::delete_request(project_id), Bytes::from(request.to_string()), &metadata).await
}

/// Whether the project has lived `lifetime_secs` at `now_secs` (a project whose creation time
/// cannot be read counts as expired: nothing may outlive its lifetime for want of a date).
pub fn lifetime_over(project: &Project, lifetime_secs: u64, now_secs: u64) -> bool {
    match time::parse_iso(&project.time_added) {
        Some(micros) => {
            let added = (micros / 1_000_000).max(0) as u64;
            now_secs >= added.saturating_add(lifetime_secs)
        }
        None => true,
    }
}

impl<P: IngestPorts> Pipeline<P> {
    /// Deletes a project whose lifetime is over, as `DELETE /projects/{id}` does. False if it
    /// was deleted meanwhile.
    pub async fn expire_project(&self, project_id: &str) -> Result<bool, PipelineError> {
        if !self.meta.mark_project_deleted(project_id).await? {
            return Ok(false);
        }
        info!(project_id, "project lifetime over; deleting it");
        // Should this write fail, the tombstone is there: the next sweep requests the purge.
        request_purge(&self.work, project_id).await?;
        Ok(true)
    }

    /// Requests again the purge of every project deleted at least `stall_after_secs` ago whose
    /// tombstone is still there: its request was lost, or its purge failed on every delivery.
    pub(super) async fn retry_purges(&self, now_secs: u64, sweep: &mut super::watchdog::Sweep) -> Result<(), PipelineError> {
        let wait = self.settings.watchdog.stall_after_secs;
        for tombstone in self.meta.list_tombstones(TOMBSTONES_PER_SWEEP).await? {
            if now_secs < tombstone.deleted_secs.saturating_add(wait) {
                continue;
            }
            warn!(project_id = tombstone.project_id, deleted_secs = tombstone.deleted_secs, "purge unfinished; requesting it again");
            request_purge(&self.work, &tombstone.project_id).await?;
            sweep.purges_retried += 1;
        }
        Ok(())
    }
}
