//! Ingestion of uploads that a party put in an object store (ExternalData), with bounded memory.
//!
//! The api stores only a reference (`kind=external`, [`ExternalUpload`]); fan-out checks the
//! object against the limits and its declared sizes, then packs it into `data.bin` +
//! `index.bin` (`engine::packed`) and deletes it. The object is in the service's upload bucket
//! or in a store the client named (`upload_objects`); a client's object is never deleted (it
//! is theirs). A client's store failing (refused address,
//! access denied, unreachable after the SDK's retries) rejects the upload with the adapter's
//! message instead of retrying the event.
//!
//! # Memory
//!
//! - **Binary encodings, no blocks file** (every record in block "1", the large-upload case):
//!   streamed. The object is read in ranged GETs of `Limits::ingest_chunk_bytes` (8 MiB, whole
//!   records), each record becomes one entry, and `data.bin` is written as a multipart upload
//!   of parts of a fixed number of whole records (at least [`PART_BYTES`]). Peak ≈ one read
//!   chunk + the entries made from it + one part in flight: about 40 MiB whatever the upload's
//!   size (the 1 TiB cap included; parts grow past 160 GB). Past `Limits::ingest_time_budget_secs`
//!   the ingestion pauses at a part boundary and a new invocation continues it
//!   ([`Checkpoint`]).
//! - **Binary encodings with a blocks file**: partitioned over many invocations, each of bounded
//!   memory and time (`blocked_ingestion`); this module only finds and checks the objects.
//! - **`.json` encodings** (`{"clks": [...]}`) are decoded in memory as inline uploads are:
//!   about the decoded size (¾ of the file) plus its packed copy. A `.json` object (or its
//!   blocks file) over `Limits::max_json_object_bytes` (a third of the function's memory) is
//!   rejected with a message that says to upload binary, instead of the function being killed
//!   on every delivery: JSON is the reference's format for modest parties, binary the one for
//!   national scale.

use bytes::Bytes;
use tracing::info;

use crate::engine::encoding::{self, BlockKey, DecodeError, SizeBounds};
use crate::engine::packed::{self, BlockEntry, BlockIndex};
use crate::service::blob_stream::{self, MultipartWriter};
use crate::service::keys;
use crate::service::model::{IngestedParty, Project};
use crate::service::ports::{BlobError, BlobReader, BlobStore};

use crate::service::stored_upload::{self, ExternalUpload, UploadForm};

use super::ingestion::{Ingestion, Outcome, PART_BYTES, check_schema_size, rejected};
use super::upload_objects::Found;
use super::{IngestPorts, Pipeline, PipelineError};

impl<P: IngestPorts> Pipeline<P> {
    /// Packs the objects an external upload names into the party's `data.bin` + `index.bin`.
    /// The error is a storage failure (retried); the [`Ingestion`] what became of the upload.
    pub(super) async fn ingest_external(&self, project: &Project, party: u32, upload_id: &str, reference: &[u8], bounds: SizeBounds) -> Outcome {
        match self.ingest_external_objects(project, party, upload_id, reference, bounds).await {
            Ok(Ingestion::Paused) if reference_is_streamed_unblocked(reference) => {
                // Writing the request again makes S3 announce it again: the next invocation
                // continues from the checkpoint.
                let request = keys::upload(&project.project_id, party, upload_id);
                self.work.put(&request, Bytes::copy_from_slice(reference), &UploadForm::External.metadata()).await?;
                Ok(Ingestion::Paused)
            }
            // The client's store failing is about the client's data, not ours: final.
            Err(PipelineError::Blob(BlobError::ClientStore(message))) => rejected(message),
            other => other,
        }
    }

    async fn ingest_external_objects(&self, project: &Project, party: u32, upload_id: &str, reference: &[u8], bounds: SizeBounds) -> Outcome {
        // Not quoting serde's message: it could quote a value of the reference, credentials included.
        let Ok(reference) = serde_json::from_slice::<ExternalUpload>(reference) else {
            return rejected("Invalid external upload reference; please upload again.");
        };
        let encodings = match self.find(&reference.encodings, "encodings").await? {
            Ok(found) => found,
            Err(rejection) => return Ok(Ingestion::Rejected(rejection)),
        };
        let blocks = match &reference.blocks {
            None => None,
            Some(file) => match self.find(file, "blocks file").await? {
                Ok(found) => Some(found),
                Err(rejection) => return Ok(Ingestion::Rejected(rejection)),
            },
        };
        let Some((count, size)) = stored_upload::declared_counts(&encodings.metadata) else {
            return rejected("The uploaded object must carry 'hash-count' and 'hash-size' metadata (positive integers)");
        };
        if encodings.path.ends_with(".json") {
            return self.ingest_json_file(project, party, &encodings, blocks.as_ref(), size, bounds).await;
        }
        if let Err(e) = check_binary_declaration(&encodings, count, size, bounds) {
            return rejected(e.to_string());
        }
        if let Err(rejection) = check_schema_size(project, size) {
            return Ok(Ingestion::Rejected(rejection));
        }
        match blocks {
            None => self.stream_unblocked(project, party, upload_id, &encodings, count, size).await,
            Some(blocks) => self.start_blocked(project, party, upload_id, &blocks, count, size).await,
        }
    }

    /// `{"clks": [...]}` (and maybe a blocks file), decoded in memory.
    async fn ingest_json_file<S: BlobReader>(&self, project: &Project, party: u32, encodings: &Found<S>, blocks: Option<&Found<S>>, size: usize, bounds: SizeBounds) -> Outcome {
        if let Some(max) = self.settings.limits.max_json_object_bytes() {
            for (what, found) in std::iter::once(("encodings", encodings)).chain(blocks.map(|b| ("blocks file", b))) {
                if found.len > max {
                    return rejected(format!(
                        "The {what} '{}' is {} bytes of JSON, over the {max} bytes this service decodes in memory \
                         (a third of the ingesting function's memory). Upload the encodings in binary instead \
                         (`pprl upload` sends binary, with the blocks as NDJSON): binary uploads of any size are streamed.",
                        found.path, found.len
                    ));
                }
            }
        }
        let (body, _) = encodings.store.get(&encodings.path).await?;
        let mut decoded = match encoding::decode_clks_file(&body, size, bounds) {
            Ok(d) => d,
            Err(e) => return rejected(e.to_string()),
        };
        drop(body);
        if let Some(blocks) = blocks {
            match self.read_blocks_file(blocks, decoded.len()).await? {
                Ok(b) => decoded.blocks = Some(b),
                Err(e) => return rejected(e.to_string()),
            }
        }
        if let Err(rejection) = check_schema_size(project, decoded.encoding_size) {
            return Ok(Ingestion::Rejected(rejection));
        }
        Ok(Ingestion::Done(self.store_packed(&project.project_id, party, &decoded).await?))
    }

    async fn read_blocks_file<S: BlobReader>(&self, blocks: &Found<S>, count: usize) -> Result<Result<Vec<Vec<BlockKey>>, DecodeError>, PipelineError> {
        let (body, _) = blocks.store.get(&blocks.path).await?;
        Ok(encoding::decode_blocks_file(&body, count))
    }

    /// Every record in block "1": one pass over the object, entries in record order, in as many
    /// fan-out invocations as it takes. Each part of `data.bin` holds the same whole records
    /// whichever invocation writes it, so when the time budget runs out at a part boundary the
    /// multipart upload is noted in a checkpoint and continued by the next invocation (and a
    /// redelivered or concurrent twin writes identical parts).
    async fn stream_unblocked<S: BlobReader>(&self, project: &Project, party: u32, upload_id: &str, encodings: &Found<S>, count: u64, size: usize) -> Outcome {
        let stride = packed::entry_stride(size);
        let total = count * stride as u64;
        let key = keys::party_data(&project.project_id, party);
        let checkpoint_key = keys::ingest_checkpoint(&project.project_id, party, upload_id);
        let records_per_part = records_per_part(stride, total);
        let part_bytes = records_per_part as usize * stride;
        let (mut writer, first_record) = match self.load_checkpoint(&checkpoint_key).await? {
            Some(c) => {
                info!(project_id = %project.project_id, party, next_record = c.next_record, "continuing a streamed ingestion");
                (MultipartWriter::resume(&self.work, key, part_bytes, c.upload_id, c.parts, c.next_record * stride as u64), c.next_record)
            }
            None => (MultipartWriter::new(&self.work, key, part_bytes, Some(total)), 0),
        };
        let budget = IngestBudget::start(&self.settings.limits);
        match self.copy_unblocked(encodings, first_record..count, size, records_per_part, &mut writer, &budget).await {
            Ok(None) => {}
            Ok(Some(next_record)) => {
                let Some((upload_id, parts)) = writer.progress() else {
                    return Err(PipelineError::Corrupt("paused ingestion has bytes outside its parts".into()));
                };
                let checkpoint = Checkpoint { upload_id, parts, next_record };
                let body = serde_json::to_vec(&checkpoint).map_err(|e| PipelineError::Corrupt(e.to_string()))?;
                self.work.put(&checkpoint_key, Bytes::from(body), &Vec::new()).await?;
                info!(project_id = %project.project_id, party, next_record, records = count, "streamed ingestion paused at its time budget");
                return Ok(Ingestion::Paused);
            }
            // A storage failure keeps the multipart upload when a checkpoint refers to it: the
            // redelivered event continues from there.
            Err(e) => {
                if first_record == 0 {
                    writer.abort().await;
                }
                return Err(e);
            }
        }
        writer.finish().await?;
        self.delete_checkpoint(&checkpoint_key).await?;
        let index = BlockIndex {
            encoding_size: size as u32,
            record_count: count,
            entry_count: count,
            blocks: vec![BlockEntry { key: BlockKey::default_block(), first_entry: 0, len: count }],
        };
        self.work.put(&keys::party_index(&project.project_id, party), Bytes::from(index.to_bytes()), &Vec::new()).await?;
        info!(project_id = %project.project_id, party, records = count, "external upload streamed into data.bin");
        Ok(Ingestion::Done(IngestedParty { record_count: count, encoding_size: size as u32, entry_count: count, block_count: 1 }))
    }

    /// Copies `records` part by part; returns the record to continue from when the time budget
    /// ran out at a part boundary, `None` when every record is written.
    async fn copy_unblocked<S: BlobReader>(
        &self,
        encodings: &Found<S>,
        records: std::ops::Range<u64>,
        size: usize,
        records_per_part: u64,
        writer: &mut MultipartWriter<'_, P::Work>,
        budget: &IngestBudget,
    ) -> Result<Option<u64>, PipelineError> {
        let stride = packed::entry_stride(size);
        let mut entries = Vec::new();
        let mut next = records.start;
        while next < records.end {
            let part_end = (next + records_per_part).min(records.end);
            for range in blob_stream::chunks(next * size as u64..part_end * size as u64, self.settings.limits.ingest_chunk_bytes, size as u64) {
                let first = range.start / size as u64;
                let chunk = blob_stream::read_exact(&encodings.store, &encodings.path, range).await?;
                let n = chunk.len() / size;
                entries.resize(n * stride, 0);
                for (i, (encoding, entry)) in chunk.chunks_exact(size).zip(entries.chunks_exact_mut(stride)).enumerate() {
                    packed::write_entry(entry, (first + i as u64) as u32, encoding);
                }
                writer.write(&entries).await?;
            }
            next = part_end;
            if next < records.end && budget.expired() && writer.progress().is_some() {
                return Ok(Some(next));
            }
        }
        Ok(None)
    }

    async fn load_checkpoint(&self, key: &str) -> Result<Option<Checkpoint>, PipelineError> {
        match self.work.get(key).await {
            Ok((body, _)) => serde_json::from_slice(&body).map(Some).map_err(|e| PipelineError::Corrupt(format!("{key}: {e}"))),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_checkpoint(&self, key: &str) -> Result<(), PipelineError> {
        match self.work.delete(key).await {
            Ok(()) | Err(BlobError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// How far a paused streamed ingestion got: its multipart upload of `data.bin` and the first
/// record not yet in a part.
#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    upload_id: String,
    parts: Vec<(u32, String)>,
    next_record: u64,
}

/// Records per part of `data.bin`: at least [`PART_BYTES`] (and enough that 10 000 parts hold
/// `total` bytes, with room for the shorter last part), a whole number of entries.
fn records_per_part(stride: usize, total: u64) -> u64 {
    let needed = total.div_ceil(u64::from(blob_stream::MAX_PARTS - 1));
    (PART_BYTES as u64).max(needed).div_ceil(stride as u64)
}

/// The time one fan-out invocation has for a streamed ingestion without blocks; past it, the
/// ingestion pauses at a part boundary and continues in a new invocation.
struct IngestBudget {
    started: std::time::Instant,
    budget_secs: u64,
}

impl IngestBudget {
    fn start(limits: &crate::service::config::Limits) -> Self {
        IngestBudget { started: std::time::Instant::now(), budget_secs: limits.ingest_time_budget_secs }
    }

    fn expired(&self) -> bool {
        self.started.elapsed().as_secs() >= self.budget_secs
    }

}

/// The declared count and size against the deployment's bounds and the object's length (bytes
/// past count × size are ignored, as the reference does).
fn check_binary_declaration<S>(encodings: &Found<S>, count: u64, size: usize, bounds: SizeBounds) -> Result<(), DecodeError> {
    bounds.check(size)?;
    if count == 0 {
        return Err(DecodeError::ZeroCount);
    }
    if count > u64::from(u32::MAX) + 1 {
        return Err(DecodeError::TooManyRecords { max: u64::from(u32::MAX) + 1 });
    }
    match count.checked_mul(size as u64) {
        Some(needed) if needed <= encodings.len => Ok(()),
        needed => Err(DecodeError::BinaryLength {
            count,
            size,
            expected: needed.map_or_else(|| "more than 2^64".into(), |n| n.to_string()),
            actual: encodings.len as usize,
        }),
    }
}

/// Whether a paused external ingestion is the streamed one without blocks (which continues by
/// announcing its request again); the partitioned one continues through its step requests.
fn reference_is_streamed_unblocked(reference: &[u8]) -> bool {
    serde_json::from_slice::<ExternalUpload>(reference).is_ok_and(|r| r.blocks.is_none())
}
