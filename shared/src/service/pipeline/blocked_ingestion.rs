//! Ingestion of binary encodings with a blocks file, in invocations whose memory does not grow
//! with the party.
//!
//! Holding a party's whole block assignment in one invocation costs about 100 bytes per record
//! at five blocks each (measured 544 MiB at 1 M records and 1,152 MiB at 2.5 M: over Lambda's
//! 10 GB before 25 M). Instead the work is cut into steps, each a request object under
//! `incoming/ingest/{project}/{party}/{upload}/` whose S3 event reaches fan-out through its
//! queue, as the upload's own event does:
//!
//! 1. **Plan** (the upload's event): the blocks file is cut into chunks. NDJSON by byte range
//!    (`Limits::ingest_blocks_chunk_bytes`, 8 MiB; a chunk's records are the lines that start in
//!    it); blocklib's JSON, which cannot be cut, by record range (as many records as that many
//!    bytes of NDJSON hold): each of its chunks parses the whole file and keeps its own records,
//!    so its memory is bounded but its time is a pass over the file. The plan is stored, then one
//!    request per chunk, then a marker that every request is out.
//! 2. **Chunk** c parses its part of the blocks file, reads its records' encodings, and writes
//!    its entries split by partition: the block key's first byte ([`PARTITIONS`]). Each chunk
//!    file holds (key, entry) pairs sorted by (block, record), the order of `data.bin`. Then a
//!    summary: the records it listed. The chunk that finds every summary written checks the
//!    records across chunks (each listed once, all of them) and requests a merge per partition
//!    that has entries.
//! 3. **Merge** p sorts partition p's chunk files into the partition's entries and block
//!    directory, then writes a marker with its counts; the merge that finds every marker
//!    requests the assembly.
//! 4. **Assemble**: partition p holds exactly the keys whose first byte is p, so `data.bin` is
//!    the partitions' entries in partition order and `index.bin` their directories moved by the
//!    entries before them. Both are streamed (multipart) from the partitions, and the upload
//!    ends as every other does (`Ingestion::Done`).
//!
//! # Memory and time
//!
//! A chunk: 20 bytes per (record, block) pair of its 8 MiB of NDJSON, its records' encodings,
//! and its entries (16 bytes of key + the entry per pair): `pprl synth`'s lines are ~50 bytes
//! (five integer ids), so ~170 K records, ~840 K pairs, ~170 MB at 128-byte encodings, whatever
//! the party's size. A merge: about twice its partition,
//! 1/256 of the party's entries (≈ 70 MB at 25 M records with five blocks each). The assembly:
//! one read chunk and one part of each output. Every step but the assembly reads a bounded
//! amount; the assembly copies the party's entries once (≈ 17 GB at 25 M records: minutes at
//! S3's speed, inside one invocation's 15 but growing with the party; splitting it needs a
//! layout of `data.bin` by partition that compare and the planner read, not built yet).
//!
//! # Redelivery, crashes, rejection
//!
//! Every object is written under a deterministic key with deterministic content, so a step run
//! twice, or by two invocations at once, writes the same bytes, and a step that died is redone by
//! the redelivery of its event. "Every chunk is done" and "every partition is merged" are
//! decided by listing the summaries (markers) after writing one's own: S3 lists are strongly
//! consistent, so the last of several finishing at once sees them all; when two see them all,
//! the next stage is requested twice, harmlessly. The upload's event delivered again after the
//! requests are out requests the steps not yet done again, so the watchdog's re-announcement of
//! a stalled upload resumes it. A blocks file malformed in any chunk rejects the upload (fan-out
//! removes the ingestion's objects); a step that ends after that removes them again, since it
//! checks the upload after its own writes.

use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::engine::blocking::BlockKey;
use crate::engine::blocks_file::{self, BlocksFormat};
use crate::engine::encoding::DecodeError;
use crate::engine::packed::{self, BlockIndex};
use crate::service::blob_stream::{self, MultipartWriter};
use crate::service::keys::{self, IngestStep};
use crate::service::model::{IngestedParty, Project};
use crate::service::ports::{BlobError, BlobReader, BlobStore, Ports};
use crate::service::stored_upload::ExternalUpload;

use super::ingestion::{Ingestion, Outcome, PART_BYTES, rejected};
use super::upload_objects::{ChannelReader, Found};
use super::{IngestPorts, Pipeline, PipelineError};

/// Partitions of a party's entries: the first byte of the block key. Keys are SHA-256 prefixes,
/// so partitions are even, and partition order is key order.
pub const PARTITIONS: usize = 256;
/// Bytes of an NDJSON line of one record with five block ids, roughly: how many records of
/// blocklib's JSON form one chunk takes, so both forms make chunks of about the same size.
const NDJSON_BYTES_PER_RECORD: u64 = 80;
const KEY_BYTES: usize = 16;

/// How a party's blocked ingestion is cut into chunks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ChunkPlan {
    record_count: u64,
    encoding_size: usize,
    chunks: Vec<ChunkSpec>,
}

/// The bytes of the blocks file a chunk parses, and the records it keeps of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ChunkSpec {
    blocks_bytes: Range<u64>,
    records: Range<u64>,
}

impl ChunkPlan {
    fn new(format: BlocksFormat, blocks_len: u64, record_count: u64, encoding_size: usize, chunk_bytes: u64) -> Self {
        let chunks = match format {
            // At least one chunk, so that an empty file is read and found to list no record.
            BlocksFormat::Ndjson if blocks_len == 0 => vec![ChunkSpec { blocks_bytes: 0..0, records: 0..record_count }],
            BlocksFormat::Ndjson => blob_stream::chunks(0..blocks_len, chunk_bytes, 1)
                .map(|bytes| ChunkSpec { blocks_bytes: bytes, records: 0..record_count })
                .collect(),
            BlocksFormat::Json => {
                let per_chunk = (chunk_bytes / NDJSON_BYTES_PER_RECORD).max(1);
                blob_stream::chunks(0..record_count, per_chunk, 1)
                    .map(|records| ChunkSpec { blocks_bytes: 0..blocks_len, records })
                    .collect()
            }
        };
        ChunkPlan { record_count, encoding_size, chunks }
    }
}

/// What a merged partition holds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct MergedPartition {
    entries: u64,
    blocks: u64,
}

/// The work objects of one partitioned ingestion.
struct WorkKeys(String);

impl WorkKeys {
    fn new(project_id: &str, party: u32, upload_id: &str) -> Self {
        WorkKeys(keys::ingest_work_prefix(project_id, party, upload_id))
    }
    fn plan(&self) -> String {
        format!("{}plan.json", self.0)
    }
    fn requested(&self) -> String {
        format!("{}requested", self.0)
    }
    fn summaries(&self) -> String {
        format!("{}chunks/", self.0)
    }
    fn summary(&self, chunk: u32) -> String {
        format!("{}{chunk:06}", self.summaries())
    }
    fn chunk_files(&self, partition: usize) -> String {
        format!("{}spill/{partition:03}/", self.0)
    }
    fn chunk_file(&self, partition: usize, chunk: u32) -> String {
        format!("{}{chunk:06}", self.chunk_files(partition))
    }
    fn partitions(&self) -> String {
        format!("{}partitions.json", self.0)
    }
    fn merged_markers(&self) -> String {
        format!("{}merged/", self.0)
    }
    fn merged(&self, partition: usize) -> String {
        format!("{}{partition:03}", self.merged_markers())
    }
    fn partition_data(&self, partition: usize) -> String {
        format!("{}part/{partition:03}/data.bin", self.0)
    }
    fn partition_index(&self, partition: usize) -> String {
        format!("{}part/{partition:03}/index.bin", self.0)
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Corrupt(format!("{what}: {e}"))
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Bytes, PipelineError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| corrupt("serializing ingestion work", e))
}

/// The (block, record) pairs of one chunk, sorted without duplicates, and the records it listed
/// (sorted), or why the blocks file cannot be read (for the project's users).
type ChunkParse = Result<(Vec<(BlockKey, u32)>, Vec<u32>), String>;

impl<P: IngestPorts> Pipeline<P> {
    /// Step 1, on the upload's event: plans the chunks and requests them. Delivered again once
    /// the requests are out, it requests again what is not done yet (see the module doc).
    pub(super) async fn start_blocked<S: BlobReader>(&self, project: &Project, party: u32, upload_id: &str, blocks: &Found<S>, count: u64, size: usize) -> Outcome {
        let project_id = &project.project_id;
        let work = WorkKeys::new(project_id, party, upload_id);
        if self.work.head(&work.requested()).await?.is_some() {
            let plan = self.load_plan(&work).await?;
            return self.request_remaining_steps(project_id, party, upload_id, &work, &plan).await;
        }
        let plan = ChunkPlan::new(BlocksFormat::of_path(&blocks.path), blocks.len, count, size, self.settings.limits.ingest_blocks_chunk_bytes);
        self.work.put(&work.plan(), json_bytes(&plan)?, &Vec::new()).await?;
        for chunk in 0..plan.chunks.len() as u32 {
            self.request_step(project_id, party, upload_id, IngestStep::Chunk(chunk)).await?;
        }
        self.work.put(&work.requested(), Bytes::from_static(b"{}"), &Vec::new()).await?;
        info!(project_id, party, records = count, chunks = plan.chunks.len(), "blocked ingestion planned");
        Ok(Ingestion::Paused)
    }

    /// Steps 2–4, on a step request's event (the upload is pending: fan-out checked).
    pub(super) async fn continue_blocked(&self, project: &Project, party: u32, upload_id: &str, reference: &[u8], step: IngestStep) -> Outcome {
        match self.continue_blocked_step(project, party, upload_id, reference, step).await {
            // The client's store failing is about the client's data, not ours: final.
            Err(PipelineError::Blob(BlobError::ClientStore(message))) => rejected(message),
            other => other,
        }
    }

    async fn continue_blocked_step(&self, project: &Project, party: u32, upload_id: &str, reference: &[u8], step: IngestStep) -> Outcome {
        let work = WorkKeys::new(&project.project_id, party, upload_id);
        let plan = self.load_plan(&work).await?;
        match step {
            IngestStep::Chunk(chunk) => {
                // Not quoting serde's message: it could quote a value of the reference, credentials included.
                let Ok(reference) = serde_json::from_slice::<ExternalUpload>(reference) else {
                    return rejected("Invalid external upload reference; please upload again.");
                };
                self.ingest_chunk(project, party, upload_id, &work, &plan, &reference, chunk).await
            }
            IngestStep::Merge(partition) => self.merge_partition(&project.project_id, party, upload_id, &work, &plan, partition as usize).await,
            IngestStep::Assemble => self.assemble(&project.project_id, party, &work, &plan).await,
        }
    }

    async fn load_plan(&self, work: &WorkKeys) -> Result<ChunkPlan, PipelineError> {
        let (body, _) = self.work.get(&work.plan()).await?;
        serde_json::from_slice(&body).map_err(|e| corrupt(&work.plan(), e))
    }

    async fn request_step(&self, project_id: &str, party: u32, upload_id: &str, step: IngestStep) -> Result<(), PipelineError> {
        let key = keys::ingest_step(project_id, party, upload_id, step);
        Ok(self.work.put(&key, Bytes::from_static(b"{}"), &Vec::new()).await?)
    }

    /// The chunks without a summary, or (all summarized) what comes after the chunks.
    async fn request_remaining_steps(&self, project_id: &str, party: u32, upload_id: &str, work: &WorkKeys, plan: &ChunkPlan) -> Outcome {
        let done = self.work.list(&work.summaries()).await?;
        let mut missing = 0;
        for chunk in 0..plan.chunks.len() as u32 {
            if !done.contains(&work.summary(chunk)) {
                self.request_step(project_id, party, upload_id, IngestStep::Chunk(chunk)).await?;
                missing += 1;
            }
        }
        if missing > 0 {
            info!(project_id, party, missing, "blocked ingestion: chunks requested again");
            return Ok(Ingestion::Paused);
        }
        self.after_chunks(project_id, party, upload_id, work, plan).await
    }

    /// Step 2 (see the module doc). Nothing is written before the chunk's part of the blocks
    /// file has been read and checked.
    #[allow(clippy::too_many_arguments)]
    async fn ingest_chunk(&self, project: &Project, party: u32, upload_id: &str, work: &WorkKeys, plan: &ChunkPlan, reference: &ExternalUpload, chunk: u32) -> Outcome {
        let project_id = &project.project_id;
        if self.work.head(&work.summary(chunk)).await?.is_some() {
            return self.after_chunk(project_id, party, upload_id, work, plan).await;
        }
        let spec = plan.chunks.get(chunk as usize).ok_or_else(|| corrupt("blocked ingestion", format!("no chunk {chunk} in the plan")))?;
        let Some(blocks_object) = &reference.blocks else {
            return Err(corrupt("blocked ingestion", "the upload names no blocks file"));
        };
        let blocks = match self.find(blocks_object, "blocks file").await? {
            Ok(found) => found,
            Err(rejection) => return Ok(Ingestion::Rejected(rejection)),
        };
        let encodings = match self.find(&reference.encodings, "encodings").await? {
            Ok(found) => found,
            Err(rejection) => return Ok(Ingestion::Rejected(rejection)),
        };
        let (pairs, records) = match self.parse_chunk(&blocks, spec, plan.record_count).await? {
            Ok(parsed) => parsed,
            Err(e) => return rejected(format!("{e} (in the blocks file '{}', bytes {}..{})", blocks.path, spec.blocks_bytes.start, spec.blocks_bytes.end)),
        };
        let size = plan.encoding_size;
        let stride = packed::entry_stride(size);
        let encoded = self.read_records(&encodings, &records, size).await?;
        for run in pairs.chunk_by(|a, b| a.0.0[0] == b.0.0[0]) {
            let mut bytes = vec![0u8; run.len() * (KEY_BYTES + stride)];
            for ((key, record), item) in run.iter().zip(bytes.chunks_exact_mut(KEY_BYTES + stride)) {
                let at = records.binary_search(record).map_err(|_| corrupt("blocked ingestion", format!("record {record} has no encoding read")))?;
                item[..KEY_BYTES].copy_from_slice(&key.0);
                packed::write_entry(&mut item[KEY_BYTES..], *record, &encoded[at * size..(at + 1) * size]);
            }
            self.work.put(&work.chunk_file(usize::from(run[0].0.0[0]), chunk), Bytes::from(bytes), &Vec::new()).await?;
        }
        let summary: Vec<u8> = records.iter().flat_map(|r| r.to_le_bytes()).collect();
        self.work.put(&work.summary(chunk), Bytes::from(summary), &Vec::new()).await?;
        info!(project_id, party, chunk, records = records.len(), entries = pairs.len(), "blocked ingestion: chunk partitioned");
        self.after_chunk(project_id, party, upload_id, work, plan).await
    }

    /// After a chunk's summary: the chunks' successor if every chunk is summarized.
    async fn after_chunk(&self, project_id: &str, party: u32, upload_id: &str, work: &WorkKeys, plan: &ChunkPlan) -> Outcome {
        if self.work.list(&work.summaries()).await?.len() < plan.chunks.len() {
            return Ok(Ingestion::Paused);
        }
        self.after_chunks(project_id, party, upload_id, work, plan).await
    }

    /// Every chunk is summarized: checks the records across chunks (one bit per record) and
    /// requests the merges, or the assembly when no record is in any block.
    async fn after_chunks(&self, project_id: &str, party: u32, upload_id: &str, work: &WorkKeys, plan: &ChunkPlan) -> Outcome {
        let mut seen = vec![0u64; plan.record_count.div_ceil(64) as usize];
        let mut listed = 0u64;
        for chunk in 0..plan.chunks.len() as u32 {
            let (summary, _) = self.work.get(&work.summary(chunk)).await?;
            for record in summary.chunks_exact(4).map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))) {
                let (word, bit) = ((record / 64) as usize, 1u64 << (record % 64));
                let Some(slot) = seen.get_mut(word) else {
                    return Err(corrupt(&work.summary(chunk), format!("record {record} past the party")));
                };
                if *slot & bit != 0 {
                    return rejected(format!("{} (in the blocks file)", DecodeError::DuplicateBlocksKey { index: record }));
                }
                *slot |= bit;
                listed += 1;
            }
        }
        if listed != plan.record_count {
            let mismatch = DecodeError::BlockCountMismatch { expected: plan.record_count as usize, actual: listed as usize };
            return rejected(format!("{mismatch} (in the blocks file)"));
        }
        let mut partitions = Vec::new();
        for partition in 0..PARTITIONS {
            if !self.work.list(&work.chunk_files(partition)).await?.is_empty() {
                partitions.push(partition);
            }
        }
        self.work.put(&work.partitions(), json_bytes(&partitions)?, &Vec::new()).await?;
        if partitions.is_empty() {
            self.request_step(project_id, party, upload_id, IngestStep::Assemble).await?;
        }
        for &partition in &partitions {
            self.request_step(project_id, party, upload_id, IngestStep::Merge(partition as u32)).await?;
        }
        info!(project_id, party, partitions = partitions.len(), "blocked ingestion: every chunk partitioned");
        Ok(Ingestion::Paused)
    }

    /// The pairs and records of one chunk of the blocks file. The bytes are fetched in ranged
    /// GETs and parsed on a blocking thread as they arrive, so the file is never held whole.
    async fn parse_chunk<S: BlobReader>(&self, blocks: &Found<S>, spec: &ChunkSpec, count: u64) -> Result<ChunkParse, PipelineError> {
        let format = BlocksFormat::of_path(&blocks.path);
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(2);
        let keep = spec.records.clone();
        let parser = tokio::task::spawn_blocking(move || -> ChunkParse {
            let mut pairs = Vec::new();
            let mut records = Vec::new();
            let mut last_read = None;
            let reader = std::io::BufReader::with_capacity(1 << 16, ChannelReader { receiver, current: Bytes::new() });
            let read = blocks_file::read_blocks(reader, format, |record, ids| {
                if record >= count {
                    return Err(DecodeError::BlocksUnknownRecord { index: record, count: count as usize });
                }
                last_read = Some(record);
                if keep.contains(&record) {
                    records.push(record as u32);
                    pairs.extend(ids.iter().map(|id| (BlockKey::of(id), record as u32)));
                }
                Ok(())
            });
            match read {
                Ok(_) => {}
                // A line's number counts from the chunk's first line: the record names the place.
                Err(e @ DecodeError::BlocksLine { .. }) => {
                    return Err(match last_read {
                        Some(record) => format!("{e}, after record {record}"),
                        None => format!("{e}, before any record of this part"),
                    });
                }
                Err(e) => return Err(e.to_string()),
            }
            records.sort_unstable();
            if let Some(twice) = records.windows(2).find(|w| w[0] == w[1]) {
                return Err(DecodeError::DuplicateBlocksKey { index: u64::from(twice[0]) }.to_string());
            }
            // A record listing a block twice is in it once (as `packed::placements`).
            pairs.sort_unstable();
            pairs.dedup();
            Ok((pairs, records))
        });
        let fed = self.feed_chunk(blocks, format, &spec.blocks_bytes, &sender).await;
        drop(sender);
        let parsed = parser.await.map_err(|e| PipelineError::Worker(e.to_string()))?;
        // A failed read ends the parser's input early: the storage error is the answer then.
        fed?;
        Ok(parsed)
    }

    /// Sends the parser the bytes of a chunk: for NDJSON, the lines that start in `range` (from
    /// the byte after the first newline at or after `range.start - 1`, through the newline
    /// ending the line that holds byte `range.end - 1`); for JSON, the whole file.
    async fn feed_chunk<S: BlobReader>(&self, blocks: &Found<S>, format: BlocksFormat, range: &Range<u64>, sender: &tokio::sync::mpsc::Sender<Bytes>) -> Result<(), BlobError> {
        let (from, mut skipping, last) = match format {
            BlocksFormat::Json => (0, false, u64::MAX),
            BlocksFormat::Ndjson if range.is_empty() => return Ok(()),
            BlocksFormat::Ndjson => (range.start.saturating_sub(1), range.start > 0, range.end - 1),
        };
        for read in blob_stream::chunks(from..blocks.len, self.settings.limits.ingest_chunk_bytes, 1) {
            let mut bytes = blob_stream::read_exact(&blocks.store, &blocks.path, read.clone()).await?;
            let mut start = read.start;
            if skipping {
                let Some(newline) = bytes.iter().position(|&b| b == b'\n') else { continue };
                start += newline as u64 + 1;
                if start > last {
                    return Ok(()); // the first line starting in the range starts past it
                }
                bytes = bytes.slice(newline + 1..);
                skipping = false;
            }
            let end_search = last.saturating_sub(start) as usize;
            let end = (end_search < bytes.len()).then(|| bytes[end_search..].iter().position(|&b| b == b'\n')).flatten();
            let done = end.is_some();
            let send = match end {
                Some(newline) => bytes.slice(..end_search + newline + 1),
                None => bytes,
            };
            // The parser stopped (a malformed file): its error is the answer.
            if sender.send(send).await.is_err() || done {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The encodings of `records` (ascending), back to back: ranged GETs of at most
    /// `ingest_chunk_bytes`, each starting at the first record still wanted (gaps are skipped).
    async fn read_records<S: BlobReader>(&self, encodings: &Found<S>, records: &[u32], size: usize) -> Result<Vec<u8>, PipelineError> {
        let chunk_records = (self.settings.limits.ingest_chunk_bytes / size as u64).max(1);
        let mut out = vec![0u8; records.len() * size];
        let mut next = 0;
        while next < records.len() {
            let first = u64::from(records[next]);
            let end = (first + chunk_records).min(encodings.len / size as u64);
            let bytes = blob_stream::read_exact(&encodings.store, &encodings.path, first * size as u64..end * size as u64).await?;
            while next < records.len() && u64::from(records[next]) < end {
                let at = (u64::from(records[next]) - first) as usize * size;
                out[next * size..(next + 1) * size].copy_from_slice(&bytes[at..at + size]);
                next += 1;
            }
        }
        Ok(out)
    }

    /// Step 3: partition `partition`'s chunk files, sorted into its entries and directory.
    async fn merge_partition(&self, project_id: &str, party: u32, upload_id: &str, work: &WorkKeys, plan: &ChunkPlan, partition: usize) -> Outcome {
        if self.work.head(&work.merged(partition)).await?.is_none() {
            let stride = packed::entry_stride(plan.encoding_size);
            let item = KEY_BYTES + stride;
            let mut files = Vec::new();
            for key in self.work.list(&work.chunk_files(partition)).await? {
                let (bytes, _) = self.work.get(&key).await?;
                if bytes.len() % item != 0 {
                    return Err(corrupt(&key, format!("{} bytes is not a whole number of {item}-byte items", bytes.len())));
                }
                files.push(bytes);
            }
            // (block, record, file, item): the order of data.bin.
            let mut order: Vec<(BlockKey, u32, u32, u32)> = Vec::new();
            for (file, bytes) in files.iter().enumerate() {
                for (at, item) in bytes.chunks_exact(item).enumerate() {
                    let mut key = [0u8; KEY_BYTES];
                    key.copy_from_slice(&item[..KEY_BYTES]);
                    let record = u32::from_le_bytes([item[KEY_BYTES], item[KEY_BYTES + 1], item[KEY_BYTES + 2], item[KEY_BYTES + 3]]);
                    order.push((BlockKey(key), record, file as u32, at as u32));
                }
            }
            order.sort_unstable();
            let placements: Vec<(BlockKey, u32)> = order.iter().map(|&(key, record, _, _)| (key, record)).collect();
            let index = BlockIndex {
                encoding_size: plan.encoding_size as u32,
                record_count: plan.record_count,
                entry_count: order.len() as u64,
                blocks: packed::block_directory(&placements),
            };
            drop(placements);
            let mut data = Vec::with_capacity(order.len() * stride);
            for &(_, _, file, at) in &order {
                let start = at as usize * item + KEY_BYTES;
                data.extend_from_slice(&files[file as usize][start..start + stride]);
            }
            drop(files);
            self.work.put(&work.partition_data(partition), Bytes::from(data), &Vec::new()).await?;
            self.work.put(&work.partition_index(partition), Bytes::from(index.to_bytes()), &Vec::new()).await?;
            let merged = MergedPartition { entries: index.entry_count, blocks: index.blocks.len() as u64 };
            self.work.put(&work.merged(partition), json_bytes(&merged)?, &Vec::new()).await?;
        }
        let partitions = self.load_partitions(work).await?;
        if self.work.list(&work.merged_markers()).await?.len() >= partitions.len() {
            self.request_step(project_id, party, upload_id, IngestStep::Assemble).await?;
        }
        Ok(Ingestion::Paused)
    }

    async fn load_partitions(&self, work: &WorkKeys) -> Result<Vec<usize>, PipelineError> {
        let (body, _) = self.work.get(&work.partitions()).await?;
        serde_json::from_slice(&body).map_err(|e| corrupt(&work.partitions(), e))
    }

    /// Step 4: `data.bin` and `index.bin` streamed from the partitions, in partition order.
    async fn assemble(&self, project_id: &str, party: u32, work: &WorkKeys, plan: &ChunkPlan) -> Outcome {
        let partitions = self.load_partitions(work).await?;
        let mut merged = Vec::with_capacity(partitions.len());
        for &partition in &partitions {
            let (body, _) = self.work.get(&work.merged(partition)).await?;
            merged.push(serde_json::from_slice::<MergedPartition>(&body).map_err(|e| corrupt(&work.merged(partition), e))?);
        }
        let entry_count: u64 = merged.iter().map(|m| m.entries).sum();
        let block_count: u64 = merged.iter().map(|m| m.blocks).sum();
        let stride = packed::entry_stride(plan.encoding_size) as u64;
        let mut data = MultipartWriter::new(&self.work, keys::party_data(project_id, party), PART_BYTES, Some(entry_count * stride));
        if let Err(e) = self.copy_partitions(work, &partitions, &merged, stride, &mut data).await {
            data.abort().await;
            return Err(e);
        }
        data.finish().await?;
        let header = packed::index_header(plan.encoding_size as u32, plan.record_count, entry_count, block_count);
        let mut index = MultipartWriter::new(&self.work, keys::party_index(project_id, party), PART_BYTES, Some(header.len() as u64 + 32 * block_count));
        let mut written = index.write(&header).await.map_err(PipelineError::from);
        let mut first_entry = 0;
        for (&partition, counts) in partitions.iter().zip(&merged) {
            if written.is_err() {
                break;
            }
            written = self.copy_directory(work, partition, first_entry, &mut index).await;
            first_entry += counts.entries;
        }
        if let Err(e) = written {
            index.abort().await;
            return Err(e);
        }
        index.finish().await?;
        info!(project_id, party, records = plan.record_count, entries = entry_count, blocks = block_count, "blocked ingestion: data.bin and index.bin assembled");
        Ok(Ingestion::Done(IngestedParty { record_count: plan.record_count, encoding_size: plan.encoding_size as u32, entry_count, block_count }))
    }

    async fn copy_partitions(&self, work: &WorkKeys, partitions: &[usize], merged: &[MergedPartition], stride: u64, out: &mut MultipartWriter<'_, P::Work>) -> Result<(), PipelineError> {
        for (&partition, counts) in partitions.iter().zip(merged) {
            for range in blob_stream::chunks(0..counts.entries * stride, self.settings.limits.ingest_chunk_bytes, stride) {
                out.write(&blob_stream::read_exact(&self.work, &work.partition_data(partition), range).await?).await?;
            }
        }
        Ok(())
    }

    async fn copy_directory(&self, work: &WorkKeys, partition: usize, first_entry: u64, out: &mut MultipartWriter<'_, P::Work>) -> Result<(), PipelineError> {
        let (bytes, _) = self.work.get(&work.partition_index(partition)).await?;
        let index = BlockIndex::from_bytes(&bytes).map_err(|e| corrupt(&work.partition_index(partition), e))?;
        Ok(out.write(&packed::directory_bytes(&index.blocks, first_entry)).await?)
    }
}

impl<P: Ports> Pipeline<P>
where
    P::Work: BlobStore,
{
    /// How many chunks and partitions of an upload's partitioned ingestion are done (0 for the
    /// other ingestions): what the watchdog counts as progress of a pending upload.
    pub(super) async fn ingestion_steps_done(&self, project_id: &str, party: u32, upload_id: &str) -> Result<u64, PipelineError> {
        let work = WorkKeys::new(project_id, party, upload_id);
        let chunks = self.work.list(&work.summaries()).await?.len();
        let partitions = self.work.list(&work.merged_markers()).await?.len();
        Ok((chunks + partitions) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_is_cut_by_bytes_and_json_by_records() {
        let ndjson = ChunkPlan::new(BlocksFormat::Ndjson, 250, 10, 8, 100);
        let bytes: Vec<_> = ndjson.chunks.iter().map(|c| c.blocks_bytes.clone()).collect();
        assert_eq!(bytes, vec![0..100, 100..200, 200..250]);
        assert!(ndjson.chunks.iter().all(|c| c.records == (0..10)));
        let json = ChunkPlan::new(BlocksFormat::Json, 5_000, 5, 8, 2 * NDJSON_BYTES_PER_RECORD);
        let records: Vec<_> = json.chunks.iter().map(|c| c.records.clone()).collect();
        assert_eq!(records, vec![0..2, 2..4, 4..5]);
        assert!(json.chunks.iter().all(|c| c.blocks_bytes == (0..5_000)));
        assert_eq!(ChunkPlan::new(BlocksFormat::Ndjson, 0, 3, 8, 100).chunks.len(), 1, "an empty file is still read");
    }
}
