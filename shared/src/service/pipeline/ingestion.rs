//! What ingesting an upload comes to, and what every way of ingesting shares.
//!
//! fan-out reads the stored upload (`stored_upload`) and hands it to the path for its form:
//! inline JSON and binary bodies are decoded here in memory (bounded by the api's request
//! limit), uploads in an object store go to `external`. Every path answers with an
//! [`Ingestion`]: done, rejected with the reason a person reads, or paused to continue in a new
//! invocation. A storage failure is the `Err` beside it (the event is retried). Keeping these
//! here, rather than in fan-out or in `external`, lets both use them without depending on
//! each other.

use bytes::Bytes;

use crate::engine::encoding::PartyEncodings;
use crate::engine::packed;
use crate::service::blob_stream::MultipartWriter;
use crate::service::keys;
use crate::service::model::{IngestedParty, Project};
use crate::service::ports::{BlobStore, Ports};

use super::{IngestPorts, Pipeline, PipelineError};

/// Part size of the multipart upload of `data.bin` (grown for objects over 160 GB, so that
/// 10 000 parts suffice).
pub const PART_BYTES: usize = 16 * 1024 * 1024;

/// An upload that cannot be ingested, with the message the project's users will see.
#[derive(Debug)]
pub(super) struct Rejected(pub(super) String);

/// Encodings of the size the project's schema announces (`clkConfig.l`), when it does.
pub(super) fn check_schema_size(project: &Project, size: usize) -> Result<(), Rejected> {
    match project.schema_encoding_size() {
        Some(expected) if expected != size => Err(Rejected(format!(
            "Encodings are {} bytes but the project's schema says {} bytes (clkConfig.l = {} bits)",
            size,
            expected,
            expected * 8
        ))),
        _ => Ok(()),
    }
}

/// What ingesting an upload came to. None of these is a failure of the service: a storage
/// failure is the `Err` of [`Outcome`] (the event is retried), these are final answers.
#[derive(Debug)]
pub(super) enum Ingestion {
    /// The party's `data.bin` and `index.bin` are written.
    Done(IngestedParty),
    /// The upload cannot be ingested; the message is for the project's users.
    Rejected(Rejected),
    /// The time budget ran out at a checkpoint: a new invocation continues from it.
    Paused,
}

pub(super) type Outcome = Result<Ingestion, PipelineError>;

pub(super) fn rejected(message: impl Into<String>) -> Outcome {
    Ok(Ingestion::Rejected(Rejected(message.into())))
}

impl<P: IngestPorts> Pipeline<P> {
    /// Packs decoded records and stores `data.bin` (in parts when large) and `index.bin`.
    pub(super) async fn store_packed(&self, project_id: &str, party: u32, decoded: &PartyEncodings) -> Result<IngestedParty, PipelineError> {
        let (data, index) = packed::pack(decoded);
        let ingested = IngestedParty {
            record_count: decoded.len() as u64,
            encoding_size: decoded.encoding_size as u32,
            entry_count: index.entry_count,
            block_count: index.blocks.len() as u64,
        };
        let mut writer = MultipartWriter::new(&self.work, keys::party_data(project_id, party), PART_BYTES, Some(data.len() as u64));
        for part in data.chunks(PART_BYTES) {
            if let Err(e) = writer.write(part).await {
                writer.abort().await;
                return Err(e.into());
            }
        }
        writer.finish().await?;
        self.work.put(&keys::party_index(project_id, party), Bytes::from(index.to_bytes()), &Vec::new()).await?;
        Ok(ingested)
    }

}

impl<P: Ports> Pipeline<P>
where
    P::Work: BlobStore,
{
    /// Removes a partitioned ingestion's work objects and step requests (none for the other
    /// paths, whose only work object is the checkpoint they remove themselves).
    pub(super) async fn remove_ingestion_work(&self, project_id: &str, party: u32, upload_id: &str) -> Result<(), PipelineError> {
        self.work.delete_prefix(&keys::ingest_steps_prefix(project_id, party, upload_id)).await?;
        self.work.delete_prefix(&keys::ingest_work_prefix(project_id, party, upload_id)).await?;
        Ok(())
    }
}
