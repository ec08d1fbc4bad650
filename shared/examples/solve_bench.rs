//! The solve benchmark: the service's solve step (`Pipeline::on_solve_queue`, the code the
//! solve Lambda runs) over a run of synthetic candidate files, in process, on the memory ports.
//! Prints time and peak RSS (`VmHWM`). Run it with `bench/solve.sh` (see `bench/README.md`).
//!
//! The candidate files are generated on the fly by the object store (entry j of file f is a pure
//! function of f and j), so the process holds only what solve itself holds; results are hashed
//! as they are uploaded (SHA-256 of each object), not kept. Scores decrease strictly with the
//! global index g = f + j·files, so every file is sorted and the merge interleaves all of them;
//! records come from an affine bijection of g, so no record pair appears twice (as in the
//! service's merged stream: the bitset solver's precondition, see `engine::solver`).
//!
//! `--verify` also solves the same candidates with the in-memory greedy
//! (`engine::solver::greedy_solve`, what solve did before it streamed) after measuring, and
//! checks that the groups are byte-identical (use it at sizes the in-memory greedy can hold).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shared::engine::candidates::{self, Candidate, ENTRY_SIZE, HEADER};
use shared::engine::{output, solver};
use shared::service::pull_policy::PullPolicy;
use shared::service::config::{Limits, Settings, UploadSettings, WatchdogSettings};
use shared::service::keys;
use shared::service::memory::{MemoryBlobs, MemoryClientStoreOpener, MemoryMeta, MemoryQueue};
use shared::service::model::*;
use shared::service::pipeline::{Pipeline, SolveMessage};
use shared::service::ports::{BlobError, BlobReader, BlobStore, Metadata, Ports, ProjectStore, RunStore, ShardCounter, UploadStore};
use shared::service::tokens::TokenHash;

#[derive(Clone, Copy, Debug)]
struct Shape {
    candidates: u64,
    files: u64,
    parties: u32,
    records: u64,
}

impl Shape {
    fn entries_in(&self, file: u64) -> u64 {
        self.candidates / self.files + u64::from(file < self.candidates % self.files)
    }

    fn candidate(&self, g: u64) -> Candidate {
        let score = 1.0 - 0.5 * (g as f64 + 0.5) / self.candidates as f64;
        // An affine bijection of [0, records²) (its factor is a prime that divides no size used
        // here): distinct g give distinct record pairs, as in the service, where the merge drops
        // a pair found twice.
        let space = u128::from(self.records) * u128::from(self.records);
        let q = ((u128::from(g) * 2_654_435_761 + u128::from(mix(0) >> 16)) % space) as u64;
        let (d0, d1) = if self.parties == 2 { (0, 1) } else { [(0, 1), (0, 2), (1, 2)][(g % 3) as usize] };
        Candidate { score, d0, r0: (q % self.records) as u32, d1, r1: (q / self.records) as u32 }
    }

    /// Bytes `range` of file `file`'s candidate file.
    fn bytes(&self, file: u64, range: Range<u64>) -> Bytes {
        let entry_size = ENTRY_SIZE as u64;
        let header = HEADER.len() as u64;
        let first = range.start.saturating_sub(header) / entry_size;
        let last = range.end.saturating_sub(header).div_ceil(entry_size).min(self.entries_in(file));
        let entries: Vec<Candidate> = (first..last).map(|j| self.candidate(file + j * self.files)).collect();
        let encoded = candidates::encode(&entries);
        // `encoded` is the header then entries first..last; map the range into it.
        let base = header + first * entry_size; // file offset of encoded[4]
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        if range.start < header {
            out.extend_from_slice(&HEADER[range.start as usize..header.min(range.end) as usize]);
        }
        let from = range.start.max(header) - base + header;
        let to = range.end.max(header) - base + header;
        out.extend_from_slice(&encoded[from as usize..to as usize]);
        Bytes::from(out)
    }

    fn len(&self, file: u64) -> u64 {
        HEADER.len() as u64 + ENTRY_SIZE as u64 * self.entries_in(file)
    }
}

/// SplitMix64's finaliser: a bijection of u64.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The solve step's ports: the benchmark's work bucket, the rest in memory.
struct BenchPorts;

impl Ports for BenchPorts {
    type Meta = MemoryMeta;
    type Work = BenchStore;
    type Uploads = MemoryBlobs;
    type Queue = MemoryQueue;
    type ClientStores = MemoryClientStoreOpener;
    type Credentials = shared::service::memory::MemoryCredentials;
}

/// The work bucket of the benchmark: candidate files generated on read, results hashed on write.
#[derive(Clone)]
struct BenchStore {
    shape: Shape,
    prefix: String,
    written: Arc<Mutex<HashMap<String, (u64, Sha256)>>>,
    digests: Arc<Mutex<HashMap<String, (u64, String)>>>,
    gets: Arc<std::sync::atomic::AtomicU64>,
    /// Simulated round trip of each GET (`--get-latency-ms`), to show what concurrency buys.
    latency: std::time::Duration,
    /// The merge tree's intermediate files (runs with more files than the fan-in), kept.
    merged: MemoryBlobs,
}

impl BenchStore {
    fn file_of(&self, key: &str) -> Result<u64, BlobError> {
        key.strip_prefix(&self.prefix)
            .and_then(|k| k.strip_suffix(".bin"))
            .and_then(|n| n.parse().ok())
            .filter(|&f| f < self.shape.files)
            .ok_or_else(|| BlobError::NotFound(key.into()))
    }

    fn is_merged(key: &str) -> bool {
        key.contains("/merged/")
    }

    fn append(&self, key: &str, bytes: &[u8]) {
        let mut written = self.written.lock().unwrap();
        let (len, hash) = written.entry(key.into()).or_insert_with(|| (0, Sha256::new()));
        *len += bytes.len() as u64;
        hash.update(bytes);
    }

    fn seal(&self, key: &str) {
        let (len, hash) = self.written.lock().unwrap().remove(key).unwrap_or((0, Sha256::new()));
        let hex = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.digests.lock().unwrap().insert(key.into(), (len, hex));
    }
}

impl BlobReader for BenchStore {
    async fn get(&self, key: &str) -> Result<(Bytes, Metadata), BlobError> {
        if Self::is_merged(key) {
            return self.merged.get(key).await;
        }
        let f = self.file_of(key)?;
        Ok((self.get_range(key, 0..self.shape.len(f)).await?, Vec::new()))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        if Self::is_merged(key) {
            return self.merged.get_range(key, range).await;
        }
        let f = self.file_of(key)?;
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.shape.bytes(f, range.start..range.end.min(self.shape.len(f))))
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, Metadata)>, BlobError> {
        if Self::is_merged(key) {
            return self.merged.head(key).await;
        }
        Ok(self.file_of(key).ok().map(|f| (self.shape.len(f), Vec::new())))
    }

    async fn get_chunk(&self, key: &str, start: u64, max_len: u64) -> Result<(Bytes, u64), BlobError> {
        if Self::is_merged(key) {
            tokio::time::sleep(self.latency).await;
            return self.merged.get_chunk(key, start, max_len).await;
        }
        let f = self.file_of(key)?;
        let len = self.shape.len(f);
        tokio::time::sleep(self.latency).await;
        Ok((self.get_range(key, start.min(len)..start.saturating_add(max_len).min(len)).await?, len))
    }
}

impl BlobStore for BenchStore {
    async fn put(&self, key: &str, body: Bytes, m: &Metadata) -> Result<(), BlobError> {
        if Self::is_merged(key) {
            return self.merged.put(key, body, m).await;
        }
        self.append(key, &body);
        self.seal(key);
        Ok(())
    }
    async fn delete(&self, _: &str) -> Result<(), BlobError> {
        Ok(())
    }
    async fn delete_prefix(&self, _: &str) -> Result<u64, BlobError> {
        Ok(0)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.merged.list(prefix).await
    }
    async fn presign_get(&self, key: &str, _: u64) -> Result<String, BlobError> {
        Ok(key.into())
    }
    async fn start_multipart(&self, key: &str) -> Result<String, BlobError> {
        if Self::is_merged(key) {
            return self.merged.start_multipart(key).await;
        }
        Ok(key.into())
    }
    async fn upload_part(&self, key: &str, id: &str, number: u32, body: Bytes) -> Result<String, BlobError> {
        if Self::is_merged(key) {
            return self.merged.upload_part(key, id, number, body).await;
        }
        self.append(key, &body);
        Ok(number.to_string())
    }
    async fn complete_multipart(&self, key: &str, id: &str, parts: &[(u32, String)]) -> Result<(), BlobError> {
        if Self::is_merged(key) {
            return self.merged.complete_multipart(key, id, parts).await;
        }
        self.seal(key);
        Ok(())
    }
    async fn abort_multipart(&self, key: &str, id: &str) -> Result<(), BlobError> {
        if Self::is_merged(key) {
            return self.merged.abort_multipart(key, id).await;
        }
        self.written.lock().unwrap().remove(key);
        Ok(())
    }
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn number(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| v.replace('_', "").parse::<f64>().expect(name) as u64)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape = Shape {
        candidates: number(&args, "--candidates", 100_000_000),
        files: number(&args, "--files", 2_000).max(1),
        parties: number(&args, "--parties", 2) as u32,
        records: number(&args, "--records", 25_000_000).max(1),
    };
    let memory_mb = number(&args, "--memory-mb", 3008);
    let verify = args.iter().any(|a| a == "--verify");
    let result_type = if shape.parties == 2 && args.iter().any(|a| a == "--permutations") { ResultType::Permutations } else { ResultType::Groups };
    let (project_id, run_id) = ("bench", "run");

    let limits = Limits {
        function_memory_mb: Some(memory_mb),
        solver_max_candidate_pairs: number(&args, "--limit", 100_000_000),
        ..Limits::default()
    };
    let work = BenchStore {
        shape,
        prefix: format!("work/{project_id}/{run_id}/candidates/"),
        written: Arc::default(),
        digests: Arc::default(),
        gets: Arc::default(),
        latency: std::time::Duration::from_millis(number(&args, "--get-latency-ms", 0)),
        merged: MemoryBlobs::new(),
    };
    let p: Pipeline<BenchPorts> = Pipeline {
        meta: MemoryMeta::new(),
        work: work.clone(),
        uploads: MemoryBlobs::new(),
        queue: MemoryQueue::new(),
        client_stores: MemoryClientStoreOpener::default(),
        settings: Settings {
            table_name: "t".into(),
            work_bucket: "w".into(),
            shard_queue_url: "shards".into(),
            solve_queue_url: "solves".into(),
            dead_letter_queues: Default::default(),
            upload: UploadSettings { enabled: false, bucket: "u".into(), public_endpoint: "x".into(), public_secure: false, credentials_ttl_secs: 60, role_arn: String::new() },
            pull: PullPolicy::default(),
            limits,
            watchdog: WatchdogSettings::default(),
            results_role_arn: None,
        },
    };

    // A run whose every shard is counted, as compare leaves it.
    let project = Project {
        project_id: project_id.into(),
        result_type,
        number_parties: shape.parties,
        name: String::new(),
        notes: String::new(),
        schema: serde_json::json!({}),
        uses_blocking: false,
        time_added: shared::service::time::now_iso(),
        result_token_hash: TokenHash::of("result"),
    };
    let parties: Vec<Party> = (0..shape.parties).map(|i| Party::new(i, TokenHash::of(&format!("u{i}")))).collect();
    p.meta.create_project(&project, &parties).await.unwrap();
    for i in 0..shape.parties {
        let upload = UploadStart { upload_id: format!("up{i}"), receipt_token_hash: TokenHash::of("r") };
        p.meta.begin_upload(project_id, i, &upload).await.unwrap();
        let ingested = IngestedParty { record_count: shape.records, encoding_size: 128, entry_count: shape.records, block_count: 1 };
        p.meta.complete_upload(project_id, i, &upload.upload_id, &ingested).await.unwrap();
    }
    let now = shared::service::time::now_iso();
    p.meta.create_run(&Run::created(project_id.into(), run_id.into(), 0.5, String::new(), String::new(), now.clone())).await.unwrap();
    assert!(p.meta.claim_run(project_id, run_id).await.unwrap());
    let plan = RunPlan { shards_total: shape.files as u32, total_comparisons: shape.records * shape.records, time_started: now };
    assert!(p.meta.start_run(project_id, run_id, &plan).await.unwrap());
    for f in 0..shape.files {
        p.meta.record_shard(project_id, run_id, f as u32, 0, shape.entries_in(f)).await.unwrap();
    }
    let before = vm_hwm_mib();

    let started = Instant::now();
    // The solve message, then whatever it sends (merge steps of a tree, the solve again),
    // each delivered once; invocations of one tree level run concurrently, as in Lambda.
    let mut bodies = vec![serde_json::to_string(&SolveMessage { project_id: project_id.into(), run_id: run_id.into() }).unwrap()];
    let mut invocations = 0;
    while !bodies.is_empty() {
        invocations += bodies.len();
        for r in futures::future::join_all(bodies.iter().map(|b| p.on_solve_queue(b))).await {
            r.unwrap();
        }
        bodies = p.queue.take("solves");
    }
    let solve_s = started.elapsed().as_secs_f64();
    let peak = vm_hwm_mib();
    let run = p.meta.get_run(project_id, run_id).await.unwrap().unwrap();
    let digests = work.digests.lock().unwrap().clone();
    let groups_key = keys::result_groups(project_id, run_id);
    let (groups_bytes, groups_sha) = digests.get(&groups_key).cloned().unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "candidates": shape.candidates,
            "files": shape.files,
            "parties": shape.parties,
            "records_per_party": shape.records,
            "memory_mb": memory_mb,
            "state": run.state.as_str(),
            "error": run.error,
            "solve_s": (solve_s * 100.0).round() / 100.0,
            "candidates_per_s": (shape.candidates as f64 / solve_s).round(),
            "solve_invocations": invocations,
            "ranged_gets": work.gets.load(std::sync::atomic::Ordering::Relaxed),
            "peak_rss_mib_before_solve": before.round(),
            "peak_rss_mib": peak.round(),
            "groups_bytes": groups_bytes,
            "groups_sha256": groups_sha,
        })
    );

    if verify {
        let mut all: Vec<Candidate> = (0..shape.candidates).map(|g| shape.candidate(g)).collect();
        candidates::sort_dedup(&mut all);
        let groups = solver::greedy_solve(all);
        let json = output::groups_json(&groups);
        let sha: String = Sha256::digest(json.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let identical = sha == groups_sha && json.len() as u64 == groups_bytes;
        println!("{}", serde_json::json!({ "verify": "in-memory greedy_solve", "identical": identical, "groups": groups.len() }));
        if !identical {
            std::process::exit(1);
        }
    }
}
