//! Solve's input and output streams: candidate files fetched concurrently and merged as a
//! stream, a merge tree over several invocations for runs with more files than one invocation
//! should read, and results uploaded part by part while they are written.
//!
//! # Reading: concurrent ranged GETs, one k-way merge
//!
//! A run's candidates are spread over one file per shard (20,000 files for a 20k-shard run,
//! ~2 M at national scale with small shards). Fetching them one by one costs one round trip
//! each (85 s for 20,022 files on the local stack; ~15 ms each in AWS, hours for millions).
//! [`open_inputs`] reads every input as a sequence of chunks:
//!
//! 1. the first chunk of every input, [`FETCH_CONCURRENCY`] GETs in flight (`get_chunk` returns
//!    the object's length with its first bytes, so no HEAD is needed and a small file is one GET);
//! 2. for inputs longer than one chunk, a task per input fetches the next chunk while the merge
//!    consumes the current one (at most two chunks per input are held), under the same bound on
//!    GETs in flight.
//!
//! The merge itself ([`crate::engine::candidates::merge`]) runs on a blocking thread over readers
//! of those chunks, so memory is the chunks (≤ 2 × chunk × inputs, see [`SolveMemory`]) plus one
//! heap entry per input, whatever the number of candidates.
//!
//! # The merge tree: more files than one invocation should read
//!
//! One invocation merges at most `fan_in` files ([`Tree`]; `SOLVE_MERGE_FAN_IN`, default
//! 16,384: ~10 s of GETs at 64 in flight and ~30 ms each in AWS, and within the read budget of a
//! 3,008 MB function). A run with more shards is merged level by level: level ℓ ≥ 1 has
//! ⌈width(ℓ−1) / fan_in⌉ files, file g of level ℓ being the merge of files
//! g·fan_in … (g+1)·fan_in − 1 of level ℓ−1 (level 0 = the shard files), until a level fits in
//! one invocation; the final solve merges that level. Merging is associative (sorted inputs,
//! exact duplicates dropped), so the tree's output is the same stream as one merge of all files.
//! 2.08 M shards at fan-in 16,384 make 128 files at level 1, then the solve.
//!
//! The steps travel on the solve queue as [`MergeMessage`]s, so the groups of a level are merged
//! in parallel by as many solve invocations:
//!
//! - **solve** (the [`super::SolveMessage`] that compare sends when the last shard is counted,
//!   and the watchdog re-sends when a run stalls) finds the lowest level that is not complete
//!   (by listing its prefix, `work/{project}/{run}/merged/{level}/`), sends a merge message for
//!   each of its missing files and returns; when every level is complete it solves from the top
//!   level.
//! - **merge (ℓ, g)** writes file g of level ℓ (skipped if it exists), then lists level ℓ: the
//!   invocation that finds it complete sends the solve message again.
//!
//! Idempotent under redelivery: a merged file's key and bytes are fixed by the run and the tree
//! shape, and it appears atomically (a single PUT or a completed multipart upload), so a twin
//! rewrites the same bytes or skips; S3 lists are strongly consistent, so the last writer of a
//! level always sees it complete (twins may both see it and send the solve message twice, which
//! solve tolerates). A solve message that arrives while merges are in flight re-sends the
//! missing ones: duplicates, harmless. Lambda's recursion detection counts this loop
//! (solve → queue → solve): a tree of depth d adds 2·d hops, 4 for 2 M shards, far below its
//! limit of 16. Merged files live under the run's work prefix and are deleted with it.
//!
//! # Writing: multipart uploads fed by the solver thread
//!
//! Results are written by the solver on its blocking thread into [`Upload`]s, `Write`s that hand
//! 1 MiB chunks to an async task which uploads them with [`MultipartWriter`] (8 MiB parts, up to
//! 80 GB per object; a small result is one PUT). Nothing appears at the key unless the writer
//! commits: a solve that stops half-way (limit reached, error) aborts its uploads.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use crate::engine::candidates::{self, CandidateReader, CandidateWriter};
use crate::service::blob_stream::MultipartWriter;
use crate::service::config::Limits;
use crate::service::keys;
use crate::service::model::RunState;
use crate::service::ports::{BlobError, BlobReader, BlobStore, Ports, ProjectStore, RunStore, WorkQueue};

use super::{Pipeline, PipelineError, SolveMessage};

/// GETs in flight per invocation (S3 serves ~5,500 GET/s per prefix; 64 × ~30 ms ≈ 2,100/s).
pub const FETCH_CONCURRENCY: usize = 64;
/// Bounds of the chunk one ranged GET reads.
const MIN_CHUNK_BYTES: u64 = 16 * 1024;
const MAX_CHUNK_BYTES: u64 = 8 * 1024 * 1024;
/// Multipart part size of solve's outputs: 8 MiB × 10,000 parts = 80 GB per object.
const OUTPUT_PART_BYTES: usize = 8 * 1024 * 1024;
/// Bytes the solver thread buffers before handing them to an upload task.
const OUTPUT_HANDOFF_BYTES: usize = 1024 * 1024;
/// What each open output holds at most: its handoff buffer, one in the channel, the
/// multipart writer's part and the part being sent.
const OUTPUT_BYTES_EACH: u64 = (2 * OUTPUT_HANDOFF_BYTES + 2 * OUTPUT_PART_BYTES) as u64;
/// The process itself (runtime, SDK clients, allocator slack) before solve holds anything.
const BASELINE_BYTES: u64 = 96 * 1024 * 1024;

/// A merge step of a run's merge tree, sent on the solve queue (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeMessage {
    pub project_id: String,
    pub run_id: String,
    pub level: u32,
    pub group: u32,
}

/// The shape of a run's merge tree: the number of files at each level, level 0 being the shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    widths: Vec<u32>,
    fan_in: u32,
}

impl Tree {
    pub fn new(shards: u32, fan_in: u32) -> Self {
        let fan_in = fan_in.max(2);
        let mut widths = vec![shards];
        while let Some(&w) = widths.last()
            && w > fan_in
        {
            widths.push(w.div_ceil(fan_in));
        }
        Tree { widths, fan_in }
    }

    /// The level the final solve reads (0: the shard files themselves).
    pub fn top(&self) -> u32 {
        self.widths.len() as u32 - 1
    }

    pub fn width(&self, level: u32) -> u32 {
        self.widths.get(level as usize).copied().unwrap_or(0)
    }

    /// Indices at level `level − 1` that group `group` of `level` merges.
    fn group_range(&self, level: u32, group: u32) -> Range<u32> {
        let below = self.width(level.saturating_sub(1));
        let start = group.saturating_mul(self.fan_in).min(below);
        start..start.saturating_add(self.fan_in).min(below)
    }

    fn key(project: &str, run: &str, level: u32, index: u32) -> String {
        if level == 0 { keys::shard_candidates(project, run, index) } else { keys::merged_candidates(project, run, level, index) }
    }

    /// The files group `group` of `level` merges.
    pub fn group_inputs(&self, project: &str, run: &str, level: u32, group: u32) -> Vec<String> {
        self.group_range(level, group).map(|i| Self::key(project, run, level - 1, i)).collect()
    }

    /// The files the final solve merges: every file of the top level.
    pub fn top_inputs(&self, project: &str, run: &str) -> Vec<String> {
        (0..self.width(self.top())).map(|i| Self::key(project, run, self.top(), i)).collect()
    }
}

/// How solve spends its function's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`): a quarter for
/// read chunks, the outputs' buffers, a baseline for the process, the rest for what the solver
/// holds. Outside a function (no memory size) reads get 1 GiB and nothing else is limited.
#[derive(Clone, Copy, Debug)]
pub struct SolveMemory {
    total_bytes: Option<u64>,
    chunk_override: Option<u64>,
}

impl SolveMemory {
    pub fn new(limits: &Limits) -> Self {
        SolveMemory {
            total_bytes: limits.function_memory_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
            chunk_override: limits.solve_read_chunk_bytes,
        }
    }

    fn read_budget(&self) -> u64 {
        self.total_bytes.map_or(1 << 30, |t| t / 4)
    }

    /// The merge fan-in: the configured one, lowered so that every input can hold two chunks of
    /// the smallest size within the read budget.
    pub fn fan_in(&self, configured: u32) -> u32 {
        let by_memory = self.read_budget() / (2 * MIN_CHUNK_BYTES);
        configured.min(u32::try_from(by_memory).unwrap_or(u32::MAX)).max(2)
    }

    /// Bytes per ranged GET when merging `inputs` files: two chunks per input fit the budget.
    pub fn chunk_bytes(&self, inputs: usize) -> u64 {
        if let Some(chunk) = self.chunk_override {
            return chunk.max(1);
        }
        (self.read_budget() / (2 * inputs.max(1) as u64)).clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
    }

    /// Bytes the solver may hold while `outputs` results are open: `None` when unlimited.
    pub fn solver_budget(&self, outputs: u64) -> Option<u64> {
        self.total_bytes.map(|t| {
            t.saturating_sub(self.read_budget())
                .saturating_sub(BASELINE_BYTES)
                .saturating_sub(outputs * OUTPUT_BYTES_EACH)
        })
    }
}

/// A fetch error met by a reader on the merge thread, kept for the async side: it is a storage
/// problem (retry the message), not a corrupt file.
#[derive(Clone, Default)]
pub struct FetchError(Arc<Mutex<Option<BlobError>>>);

impl FetchError {
    fn set(&self, e: BlobError) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
    }

    /// The first fetch error, if any.
    pub fn take(&self) -> Option<BlobError> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// One input object, read as chunks that a task fetches ahead of the reader.
pub struct ChunkedInput {
    key: String,
    current: Bytes,
    next: Option<mpsc::Receiver<Result<Bytes, BlobError>>>,
    /// Bytes of the object not yet handed to the reader.
    remaining: u64,
    error: FetchError,
}

impl Read for ChunkedInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            let next = match self.next.as_mut() {
                Some(rx) => rx.blocking_recv(),
                None => None,
            };
            match next {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    let message = e.to_string();
                    self.error.set(e);
                    self.next = None;
                    return Err(io::Error::other(message));
                }
                None if self.remaining > 0 => {
                    // The fetching task is gone without an error (it cannot be, short of a panic).
                    let e = BlobError::Backend(format!("{}: reading stopped {} bytes early", self.key, self.remaining));
                    let message = e.to_string();
                    self.error.set(e);
                    self.remaining = 0;
                    return Err(io::Error::other(message));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The opened inputs of one merge.
pub struct Inputs {
    pub readers: Vec<ChunkedInput>,
    pub error: FetchError,
    /// Total bytes of the inputs.
    pub bytes: u64,
}

impl Inputs {
    /// Candidate readers over every input (no read buffer: the chunks are the buffers), for
    /// [`candidates::merge`].
    pub fn candidate_readers(self) -> Result<(Vec<CandidateReader<ChunkedInput>>, FetchError), PipelineError> {
        let error = self.error;
        let readers = self
            .readers
            .into_iter()
            .map(|r| CandidateReader::with_buffer(r, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read_failure(&error, e))?;
        Ok((readers, error))
    }
}

/// Maps a failure of the candidate stream: a storage error met while fetching is retryable;
/// anything else is a corrupt file.
pub fn read_failure(error: &FetchError, e: candidates::FormatError) -> PipelineError {
    match error.take() {
        Some(blob) => PipelineError::Blob(blob),
        None => PipelineError::Corrupt(e.to_string()),
    }
}

/// Opens `keys` for a streaming merge (see the module docs). Fails with the first storage
/// error, `NotFound` included.
pub async fn open_inputs<B: BlobStore>(store: &B, keys: Vec<String>, chunk: u64) -> Result<Inputs, BlobError> {
    let chunk = chunk.max(1);
    let firsts: Vec<(Bytes, u64)> = stream::iter(keys.iter())
        .map(|key| store.get_chunk(key, 0, chunk))
        .buffered(FETCH_CONCURRENCY)
        .try_collect()
        .await?;
    let in_flight = Arc::new(Semaphore::new(FETCH_CONCURRENCY));
    let error = FetchError::default();
    let mut bytes = 0;
    let mut readers = Vec::with_capacity(keys.len());
    for (key, (first, total)) in keys.into_iter().zip(firsts) {
        bytes += total;
        let fetched = first.len() as u64;
        let next = (fetched < total).then(|| {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(fetch_ahead(store.clone(), key.clone(), fetched, total, chunk, tx, in_flight.clone()));
            rx
        });
        readers.push(ChunkedInput { key, current: first, next, remaining: total, error: error.clone() });
    }
    Ok(Inputs { readers, error, bytes })
}

/// Fetches `key` from `at` to `total` one chunk ahead of its reader: the next GET starts only
/// once the channel's slot is free, so at most two chunks of the object are held.
async fn fetch_ahead<B: BlobStore>(
    store: B,
    key: String,
    mut at: u64,
    total: u64,
    chunk: u64,
    tx: mpsc::Sender<Result<Bytes, BlobError>>,
    in_flight: Arc<Semaphore>,
) {
    while at < total {
        let Ok(slot) = tx.reserve().await else { return }; // the reader is gone
        let got = match in_flight.acquire().await {
            Ok(_permit) => store.get_chunk(&key, at, chunk).await,
            Err(_) => return,
        };
        match got {
            Ok((bytes, len)) if !bytes.is_empty() && len == total => {
                at += bytes.len() as u64;
                slot.send(Ok(bytes));
            }
            Ok((_, len)) => {
                slot.send(Err(BlobError::Backend(format!("{key}: object changed while read ({total} bytes, then {len})"))));
                return;
            }
            Err(e) => {
                slot.send(Err(e));
                return;
            }
        }
    }
}

enum Handoff {
    Bytes(Bytes),
    Commit,
}

/// An output object written on a blocking thread and uploaded by an async task as it grows.
/// Nothing appears at the key until [`Upload::commit`]; dropping it uncommitted aborts.
pub struct Upload {
    tx: mpsc::Sender<Handoff>,
    buffer: Vec<u8>,
}

impl Upload {
    fn hand_off(&mut self, message: Handoff) -> io::Result<()> {
        self.tx.blocking_send(message).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends what is buffered and makes the object appear.
    pub fn commit(mut self) -> io::Result<()> {
        self.flush()?;
        self.hand_off(Handoff::Commit)
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= OUTPUT_HANDOFF_BYTES {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let bytes = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(OUTPUT_HANDOFF_BYTES)));
        self.hand_off(Handoff::Bytes(bytes))
    }
}

/// Uploads what the writer hands off; `Ok(None)` when it was dropped without committing.
async fn upload<B: BlobStore>(store: B, key: String, mut rx: mpsc::Receiver<Handoff>) -> Result<Option<u64>, BlobError> {
    let mut writer = MultipartWriter::new(&store, key, OUTPUT_PART_BYTES, None);
    loop {
        match rx.recv().await {
            Some(Handoff::Bytes(bytes)) => {
                if let Err(e) = writer.write(&bytes).await {
                    writer.abort().await;
                    return Err(e);
                }
            }
            Some(Handoff::Commit) => return writer.finish().await.map(Some),
            None => {
                writer.abort().await;
                return Ok(None);
            }
        }
    }
}

/// Runs `work` on a blocking thread with one [`Upload`] per key, uploading as it writes. A
/// storage error of an upload wins over the error it caused in `work` (a broken pipe).
pub async fn with_uploads<B, T, F>(store: &B, keys: Vec<String>, work: F) -> Result<T, PipelineError>
where
    B: BlobStore,
    T: Send + 'static,
    F: FnOnce(Vec<Upload>) -> Result<T, PipelineError> + Send + 'static,
{
    let mut uploads = Vec::with_capacity(keys.len());
    let mut tasks = Vec::with_capacity(keys.len());
    for key in keys {
        let (tx, rx) = mpsc::channel(1);
        uploads.push(Upload { tx, buffer: Vec::new() });
        tasks.push(tokio::spawn(upload(store.clone(), key, rx)));
    }
    let result = tokio::task::spawn_blocking(move || work(uploads)).await;
    let mut upload_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                upload_error.get_or_insert(PipelineError::Blob(e));
            }
            Err(e) => {
                upload_error.get_or_insert(PipelineError::Worker(e.to_string()));
            }
        }
    }
    let result = result.map_err(|e| PipelineError::Worker(e.to_string()))?;
    match upload_error {
        Some(e) => Err(e),
        None => result,
    }
}

/// Maps an output write error.
pub fn write_failure(e: io::Error) -> PipelineError {
    PipelineError::Worker(format!("writing a result: {e}"))
}

impl<P: Ports> Pipeline<P>
where
    P::Meta: ProjectStore + RunStore,
    P::Work: BlobStore,
    P::Queue: WorkQueue,
{
    /// The run's merge tree, lowered to what memory allows.
    pub fn merge_tree(&self, shards: u32) -> Tree {
        let fan_in = SolveMemory::new(&self.settings.limits).fan_in(self.settings.limits.solve_merge_fan_in);
        Tree::new(shards, fan_in)
    }

    /// True when every level of the tree below the top is complete (the final solve can read the
    /// top level). Otherwise sends the merge steps missing at the lowest incomplete level.
    pub async fn merge_tree_ready(&self, project_id: &str, run_id: &str, tree: &Tree) -> Result<bool, PipelineError> {
        for level in 1..=tree.top() {
            let present = self.merged_present(project_id, run_id, level, tree).await?;
            let missing: Vec<String> = (0..tree.width(level))
                .filter(|g| present.binary_search(g).is_err())
                .map(|group| {
                    let m = MergeMessage { project_id: project_id.into(), run_id: run_id.into(), level, group };
                    serde_json::to_string(&m).map_err(|e| PipelineError::Corrupt(e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            if !missing.is_empty() {
                tracing::info!(project_id, run_id, level, groups = missing.len(), "merge steps sent");
                self.queue.send(&self.settings.solve_queue_url, missing).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Groups of `level` whose merged file exists, ascending.
    async fn merged_present(&self, project_id: &str, run_id: &str, level: u32, tree: &Tree) -> Result<Vec<u32>, PipelineError> {
        let prefix = keys::merged_candidates_prefix(project_id, run_id, level);
        let mut present: Vec<u32> = self
            .work
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".bin")?.parse().ok())
            .filter(|&g| g < tree.width(level))
            .collect();
        present.sort_unstable();
        present.dedup();
        Ok(present)
    }

    /// Opens a merge's inputs. `None` when one is missing because the run is over (a twin
    /// finished it and cleaned up); a missing input of a running run is corrupt state.
    pub async fn open_run_inputs(&self, project_id: &str, run_id: &str, keys: Vec<String>) -> Result<Option<Inputs>, PipelineError> {
        let Some(keys) = self.present_shard_files(project_id, run_id, keys).await? else {
            return Ok(None);
        };
        let chunk = SolveMemory::new(&self.settings.limits).chunk_bytes(keys.len());
        match open_inputs(&self.work, keys, chunk).await {
            Ok(inputs) => Ok(Some(inputs)),
            Err(BlobError::NotFound(key)) => {
                let now = self.meta.get_run(project_id, run_id).await?;
                if now.is_some_and(|r| r.state == RunState::Running) {
                    return Err(PipelineError::Corrupt(format!("candidates of a counted shard are missing: {key}")));
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `keys` without the shard files that do not exist: compare writes no file for a shard
    /// without candidates (most shards of a run at a high threshold), so the shard files are
    /// the listed ones (S3 lists are strongly consistent, and a shard is counted only after its
    /// file is written). Merged files always exist and are kept.
    ///
    /// `None` when the run stopped running before the listing could be trusted. A twin solve
    /// that completes the run removes its work files right after; a solve that passed its own
    /// "still running" check just before would then list fewer files, read them as shards
    /// without candidates and overwrite the twin's result with a smaller one (seen under load:
    /// completed FEBRL4 runs answering `{"groups": []}`). Work files are removed only once the
    /// run is final (completed, failed or deleted), so a run still running after the listing
    /// was listed whole.
    async fn present_shard_files(&self, project_id: &str, run_id: &str, keys: Vec<String>) -> Result<Option<Vec<String>>, PipelineError> {
        let prefix = keys::shard_candidates_prefix(project_id, run_id);
        if !keys.iter().any(|k| k.starts_with(&prefix)) {
            return Ok(Some(keys));
        }
        let present: std::collections::HashSet<String> = self.work.list(&prefix).await?.into_iter().collect();
        if !self.meta.get_run(project_id, run_id).await?.is_some_and(|run| run.state == RunState::Running) {
            return Ok(None);
        }
        Ok(Some(keys.into_iter().filter(|k| !k.starts_with(&prefix) || present.contains(k)).collect()))
    }

    /// One merge step of the tree: writes its file (unless a twin did), and sends the solve
    /// message again when its level is complete.
    pub async fn merge_step(&self, message: &MergeMessage) -> Result<(), PipelineError> {
        let (project_id, run_id, level, group) = (message.project_id.as_str(), message.run_id.as_str(), message.level, message.group);
        let Some(run) = self.meta.get_run(project_id, run_id).await? else { return Ok(()) };
        if run.state != RunState::Running {
            return Ok(());
        }
        let tree = self.merge_tree(run.shards_total);
        if level == 0 || level > tree.top() || group >= tree.width(level) {
            return Err(PipelineError::Event(format!("merge step {level}/{group} is not in run {run_id}'s tree")));
        }
        let output = keys::merged_candidates(project_id, run_id, level, group);
        if self.work.head(&output).await?.is_none() {
            let Some(inputs) = self.open_run_inputs(project_id, run_id, tree.group_inputs(project_id, run_id, level, group)).await? else {
                return Ok(());
            };
            let (readers, error) = inputs.candidate_readers()?;
            let written = with_uploads(&self.work, vec![output], move |uploads| {
                let upload = uploads.into_iter().next().ok_or_else(|| PipelineError::Worker("no upload".into()))?;
                let mut out = CandidateWriter::new(upload).map_err(write_failure)?;
                for c in candidates::merge(readers) {
                    out.write(&c.map_err(|e| read_failure(&error, e))?).map_err(write_failure)?;
                }
                let count = out.count();
                out.finish().map_err(write_failure)?.commit().map_err(write_failure)?;
                Ok(count)
            })
            .await?;
            tracing::info!(project_id, run_id, level, group, candidates = written, "merge step written");
        }
        if self.merged_present(project_id, run_id, level, &tree).await?.len() as u32 == tree.width(level) {
            self.send_solve(project_id, run_id).await?;
        }
        Ok(())
    }

    /// A message from the solve queue: a merge step or a solve.
    pub async fn on_solve_queue(&self, body: &str) -> Result<(), PipelineError> {
        if let Ok(step) = serde_json::from_str::<MergeMessage>(body) {
            return self.merge_step(&step).await;
        }
        let message: SolveMessage =
            serde_json::from_str(body).map_err(|e| PipelineError::Event(format!("not a solve message: {e}")))?;
        self.solve(&message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::candidates::Candidate;
    use crate::service::memory::MemoryBlobs;

    #[test]
    fn tree_levels_shrink_to_one_invocation() {
        let t = Tree::new(2_083_692, 16_384);
        assert_eq!((t.top(), t.width(1)), (1, 128));
        let t = Tree::new(10, 3);
        assert_eq!((t.top(), t.width(1), t.width(2)), (2, 4, 2));
        assert_eq!(t.group_range(1, 3), 9..10);
        assert_eq!(t.group_range(2, 1), 3..4);
        assert_eq!(Tree::new(3, 3).top(), 0);
        assert_eq!(Tree::new(0, 3).top_inputs("p", "r"), Vec::<String>::new());
    }

    #[test]
    fn memory_bounds_fan_in_and_chunks() {
        let limits = Limits { function_memory_mb: Some(128), ..Limits::default() };
        let m = SolveMemory::new(&limits);
        assert_eq!(m.fan_in(16_384), 1024, "32 MiB of reads hold two 16 KiB chunks for 1,024 inputs");
        assert_eq!(m.chunk_bytes(1), MAX_CHUNK_BYTES);
        assert_eq!(m.chunk_bytes(1024), MIN_CHUNK_BYTES);
        assert!(SolveMemory::new(&Limits::default()).solver_budget(1).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunked_inputs_merge_like_whole_files() {
        let store = MemoryBlobs::new();
        let mut all = Vec::new();
        let mut keys = Vec::new();
        for f in 0..7u32 {
            let mut cands: Vec<Candidate> = (0..(f * 13) % 50)
                .map(|i| Candidate { score: f64::from((i * 7 + f) % 10) / 10.0, d0: 0, r0: i % 5, d1: 1, r1: f })
                .collect();
            candidates::sort_dedup(&mut cands);
            all.extend_from_slice(&cands);
            let key = format!("f{f}");
            store.put(&key, Bytes::from(candidates::encode(&cands)), &Vec::new()).await.unwrap();
            keys.push(key);
        }
        candidates::sort_dedup(&mut all);
        // 50-byte chunks: entries (24 bytes) and the header straddle chunk boundaries.
        let inputs = open_inputs(&store, keys.clone(), 50).await.unwrap();
        let (readers, _) = inputs.candidate_readers().unwrap();
        let merged = tokio::task::spawn_blocking(move || candidates::merge(readers).collect::<Result<Vec<_>, _>>())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(merged, all);

        keys.push("missing".into());
        assert!(matches!(open_inputs(&store, keys, 50).await, Err(BlobError::NotFound(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_appear_only_when_committed() {
        let store = MemoryBlobs::new();
        let big = vec![7u8; OUTPUT_PART_BYTES + 3 * OUTPUT_HANDOFF_BYTES];
        let data = big.clone();
        with_uploads(&store, vec!["kept".into(), "dropped".into()], move |uploads| {
            let mut it = uploads.into_iter();
            let (mut kept, mut dropped) = (it.next().unwrap(), it.next().unwrap());
            kept.write_all(&data).map_err(write_failure)?;
            dropped.write_all(&data).map_err(write_failure)?;
            kept.commit().map_err(write_failure)
        })
        .await
        .unwrap();
        assert_eq!(store.object("kept").unwrap().0.as_ref(), &big[..]);
        assert!(store.object("dropped").is_none());
        assert_eq!(store.unfinished_multipart_uploads(), 0);
    }
}
