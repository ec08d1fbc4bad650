//! Ingestion of uploads that a party put in an object store (ExternalData), with bounded memory.
//!
//! The api stores only a reference (`kind=external`, [`ExternalUpload`]); fan-out checks the
//! object against the limits and its declared sizes, then packs it into `data.bin` +
//! `index.bin` (`engine::packed`) and deletes it. The object is in the service's upload bucket,
//! or, when the client named a store of its own (`endpoint` + `credentials`, allowed by
//! `Settings::pull`), in that store: the same code reads both through [`BlobReader`], and a
//! client's object is never deleted (it is theirs). A client's store failing (refused address,
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
//! - **Binary encodings with a blocks file**: the block assignment is held in memory, the
//!   encodings are streamed. The blocks file (blocklib's JSON, or NDJSON named `*.ndjson`,
//!   `engine::blocks_file`) is read as a stream of ranged GETs and parsed record by record
//!   into the sorted entry order, 20 bytes per (record, block) pair (plus one bit per record
//!   to refuse a record listed twice); it is never held whole. `data.bin` is then written in windows of
//!   at most `Limits::ingest_window_bytes` (256 MiB) of entries: for each window, the ranges of
//!   the object holding its records are read in chunks and copied into place. Peak ≈ blocks
//!   file + about 60 bytes per record (one block each) + one window + one part. Time: the
//!   object is read once per window (one pass per 256 MiB of `data.bin`), less where a
//!   window's records cluster.
//! - **`.json` encodings** (`{"clks": [...]}`) are decoded in memory as inline uploads are:
//!   about the decoded size (¾ of the file) plus its packed copy. Use binary for large uploads.

use bytes::Bytes;
use tracing::info;

use crate::engine::blocks_file::{self, BlocksFormat, RecordTally};
use crate::engine::encoding::{self, BlockKey, DecodeError, SizeBounds};
use crate::engine::packed::{self, BlockEntry, BlockIndex};
use crate::service::blob_stream::{self, MultipartWriter};
use crate::service::keys;
use crate::service::model::{IngestedParty, Project};
use crate::service::ports::{BlobError, BlobReader, BlobStore, ClientStoreOpener, Metadata};

use crate::service::stored_upload::{self, ExternalUpload, ObjectRef};

use super::fan_out::{Rejected, check_schema_size};
use super::{IngestPorts, Pipeline, PipelineError};

/// Part size of the multipart upload of `data.bin` (grown for objects over 160 GB, so that
/// 10 000 parts suffice).
pub const PART_BYTES: usize = 16 * 1024 * 1024;

/// Where an upload's object is read from: the service's upload bucket or a client's store.
#[derive(Clone)]
enum Origin<U, R> {
    Own(U),
    Client(R),
}

impl<U: BlobReader, R: BlobReader> BlobReader for Origin<U, R> {
    async fn get(&self, key: &str) -> Result<(Bytes, Metadata), BlobError> {
        match self {
            Origin::Own(store) => store.get(key).await,
            Origin::Client(store) => store.get(key).await,
        }
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, BlobError> {
        match self {
            Origin::Own(store) => store.get_range(key, range).await,
            Origin::Client(store) => store.get_range(key, range).await,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, Metadata)>, BlobError> {
        match self {
            Origin::Own(store) => store.head(key).await,
            Origin::Client(store) => store.head(key).await,
        }
    }
}

/// An object named by an upload, as found in its store.
struct Found<S> {
    store: S,
    path: String,
    len: u64,
    metadata: Metadata,
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

type Outcome = Result<Ingestion, PipelineError>;

fn rejected(message: impl Into<String>) -> Outcome {
    Ok(Ingestion::Rejected(Rejected(message.into())))
}

type Source<U, C> = Origin<U, <C as ClientStoreOpener>::Reader>;

impl<P: IngestPorts> Pipeline<P> {
    /// Packs the objects an external upload names into the party's `data.bin` + `index.bin`.
    /// The error is a storage failure (retried); the [`Ingestion`] what became of the upload.
    pub(super) async fn ingest_external(&self, project: &Project, party: u32, upload_id: &str, reference: &[u8], bounds: SizeBounds) -> Outcome {
        match self.ingest_external_objects(project, party, upload_id, reference, bounds).await {
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
            Some(blocks) => self.stream_blocked(project, party, &encodings, &blocks, count, size).await,
        }
    }

    /// Opens the store an object is in (checking a client's endpoint against the pull policy
    /// again: it may have changed since the api accepted the upload), heads the object and
    /// checks it against the upload cap.
    async fn find(&self, object: &ObjectRef, what: &str) -> Result<Result<Found<Source<P::Uploads, P::ClientStores>>, Rejected>, PipelineError> {
        let path = &object.path;
        let (store, place) = match &object.store {
            None => (Origin::Own(self.uploads.clone()), format!("'{path}'")),
            Some(client) => {
                let endpoint = match self.settings.pull.check_endpoint(&client.endpoint, client.secure) {
                    Ok(endpoint) => endpoint,
                    Err(refused) => return Ok(Err(Rejected(refused.to_string()))),
                };
                let reader = self.client_stores.open(&endpoint, client, &object.bucket)?;
                (Origin::Client(reader), format!("'{path}' in bucket '{}' at {}", object.bucket, endpoint.authority()))
            }
        };
        let Some((len, metadata)) = store.head(path).await? else {
            return Ok(Err(Rejected(format!("The object store has no {what} at {place}; upload it before telling the service"))));
        };
        let max = self.settings.limits.max_upload_bytes;
        if len > max {
            return Ok(Err(Rejected(format!("The {what} at {place} is {len} bytes, over the limit of {max} bytes"))));
        }
        Ok(Ok(Found { store, path: path.clone(), len, metadata }))
    }

    /// `{"clks": [...]}` (and maybe a blocks file), decoded in memory.
    async fn ingest_json_file<S: BlobReader>(&self, project: &Project, party: u32, encodings: &Found<S>, blocks: Option<&Found<S>>, size: usize, bounds: SizeBounds) -> Outcome {
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

    /// The (block, record) pairs of a blocks file, sorted and without duplicates (the entry
    /// order of `data.bin`), read as a stream: ranged GETs of `ingest_chunk_bytes` feed the
    /// parser on a blocking thread, so the file is never held whole (either form:
    /// `engine::blocks_file`). Memory: 20 bytes per pair, one bit per record, two chunks.
    async fn stream_placements<S: BlobReader>(&self, blocks: &Found<S>, count: u64) -> Result<Result<Vec<(BlockKey, u32)>, DecodeError>, PipelineError> {
        let format = BlocksFormat::of_path(&blocks.path);
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(2);
        let parser = tokio::task::spawn_blocking(move || {
            let mut tally = RecordTally::new(count);
            let mut placements = Vec::new();
            let reader = std::io::BufReader::with_capacity(1 << 16, ChannelReader { receiver, current: Bytes::new() });
            blocks_file::read_blocks(reader, format, |record, ids| {
                tally.note(record)?;
                placements.extend(ids.iter().map(|id| (BlockKey::of(id), record as u32)));
                Ok(())
            })?;
            tally.finish()?;
            // A record listing a block twice is in it once (as `packed::placements`).
            placements.sort_unstable();
            placements.dedup();
            Ok(placements)
        });
        let mut fetched = Ok(());
        for range in blob_stream::chunks(0..blocks.len, self.settings.limits.ingest_chunk_bytes, 1) {
            match blob_stream::read_exact(&blocks.store, &blocks.path, range).await {
                // The parser stopped (a malformed file): its error is the answer.
                Ok(chunk) => {
                    if sender.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    fetched = Err(e);
                    break;
                }
            }
        }
        drop(sender);
        let parsed = parser.await.map_err(|e| PipelineError::Worker(e.to_string()))?;
        // A failed read ends the parser's input early: the storage error is the answer then.
        fetched?;
        Ok(parsed)
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
        let budget = IngestBudget::start(&self.settings.limits, count * size as u64);
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

    /// Records reordered by a blocks file: the assignment in memory, entries window by window.
    async fn stream_blocked<S: BlobReader>(&self, project: &Project, party: u32, encodings: &Found<S>, blocks: &Found<S>, count: u64, size: usize) -> Outcome {
        // Nothing is written before the whole blocks file has been read and checked, so a file
        // malformed halfway leaves nothing half-ingested.
        let placements = match self.stream_placements(blocks, count).await? {
            Ok(placements) => placements,
            Err(e) => return rejected(format!("{e} (in the blocks file '{}')", blocks.path)),
        };
        let index = BlockIndex {
            encoding_size: size as u32,
            record_count: count,
            entry_count: placements.len() as u64,
            blocks: packed::block_directory(&placements),
        };
        let stride = packed::entry_stride(size);
        let key = keys::party_data(&project.project_id, party);
        let mut writer = MultipartWriter::new(&self.work, key, PART_BYTES, Some(placements.len() as u64 * stride as u64));
        // Each window reads the object again (less where its records cluster): the budget counts
        // the bytes of every window's pass.
        let budget = IngestBudget::start(&self.settings.limits, placements.len() as u64 * size as u64);
        match self.copy_windows(encodings, &placements, size, &mut writer, &budget).await {
            Ok(Ok(())) => {}
            Ok(Err(rejection)) => {
                writer.abort().await;
                return Ok(Ingestion::Rejected(rejection));
            }
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        }
        writer.finish().await?;
        self.work.put(&keys::party_index(&project.project_id, party), Bytes::from(index.to_bytes()), &Vec::new()).await?;
        info!(project_id = %project.project_id, party, records = count, entries = index.entry_count, "external upload with blocks streamed into data.bin");
        Ok(Ingestion::Done(IngestedParty {
            record_count: count,
            encoding_size: size as u32,
            entry_count: index.entry_count,
            block_count: index.blocks.len() as u64,
        }))
    }

    async fn copy_windows<S: BlobReader>(
        &self,
        encodings: &Found<S>,
        placements: &[(BlockKey, u32)],
        size: usize,
        writer: &mut MultipartWriter<'_, P::Work>,
        budget: &IngestBudget,
    ) -> Result<Result<(), Rejected>, PipelineError> {
        let stride = packed::entry_stride(size);
        let limits = &self.settings.limits;
        let window_entries = (limits.ingest_window_bytes as usize / stride).max(1);
        let chunk_records = (limits.ingest_chunk_bytes as usize / size).max(1) as u64;
        for (n, window) in placements.chunks(window_entries).enumerate() {
            if let Err(rejection) = budget.check((n * window_entries * size) as u64) {
                return Ok(Err(rejection));
            }
            let mut entries = vec![0u8; window.len() * stride];
            // (record, position in the window), by record: the object is read front to back.
            let mut wanted: Vec<(u32, u32)> = window.iter().enumerate().map(|(pos, (_, record))| (*record, pos as u32)).collect();
            wanted.sort_unstable();
            let mut next = 0;
            while next < wanted.len() {
                // A chunk starting at the first record still wanted skips the gaps between them.
                let first = u64::from(wanted[next].0);
                let end = (first + chunk_records).min(encodings.len / size as u64);
                let chunk = blob_stream::read_exact(&encodings.store, &encodings.path, first * size as u64..end * size as u64).await?;
                while next < wanted.len() && u64::from(wanted[next].0) < end {
                    let (record, pos) = wanted[next];
                    let at = (u64::from(record) - first) as usize * size;
                    let pos = pos as usize * stride;
                    packed::write_entry(&mut entries[pos..pos + stride], record, &chunk[at..at + size]);
                    next += 1;
                }
            }
            writer.write(&entries).await?;
        }
        Ok(Ok(()))
    }
}

/// A blocks file's chunks as one `Read`, for the parser on its blocking thread.
struct ChannelReader {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
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

/// The time one fan-out invocation has for a streamed ingestion. Past it, an ingestion without
/// blocks pauses and continues in a new invocation; one with a blocks file (which holds the
/// assignment in memory and reads the object once per window) is refused with the throughput
/// seen, instead of the invocation timing out on every redelivery and the upload ending hours
/// later in the dead-letter queue's generic message.
struct IngestBudget {
    started: std::time::Instant,
    budget_secs: u64,
    total_bytes: u64,
}

impl IngestBudget {
    fn start(limits: &crate::service::config::Limits, total_bytes: u64) -> Self {
        IngestBudget { started: std::time::Instant::now(), budget_secs: limits.ingest_time_budget_secs, total_bytes }
    }

    fn expired(&self) -> bool {
        self.started.elapsed().as_secs() >= self.budget_secs
    }

    /// `done_bytes`: how far the pass has come.
    fn check(&self, done_bytes: u64) -> Result<(), Rejected> {
        let elapsed = self.started.elapsed().as_secs_f64();
        if elapsed < self.budget_secs as f64 {
            return Ok(());
        }
        let rate = done_bytes as f64 / elapsed.max(1e-3);
        Err(Rejected(format!(
            "The upload is too large to ingest in one pass: {done_bytes} of {} bytes were read in the {} seconds one \
             pass may take (about {:.0} MB/s, so this deployment ingests up to about {:.0} GB per upload). \
             Use binary encodings without a blocks file (the fastest form), or ask the operator to raise the limit.",
            self.total_bytes,
            self.budget_secs,
            rate / 1e6,
            rate * self.budget_secs as f64 / 1e9,
        )))
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
