//! The pipeline against in-memory ports: every queue drained by hand, with duplicated and
//! concurrent deliveries, compared with the engine's own answer on the same data.

use bytes::Bytes;

use crate::engine::encoding::{BlockKey, PartyEncodings};
use crate::engine::{link, output, solver};
use crate::service::config::{DeadLetterQueues, DeadLetterSource, Limits, Settings, UploadSettings, WatchdogSettings};
use crate::service::keys::{self, IngestStep};
use crate::service::pull_policy::PullPolicy;
use crate::service::memory::{MemoryBlobs, MemoryClientStoreOpener, MemoryMeta, MemoryPorts, MemoryQueue};
use crate::service::model::*;
use crate::service::ports::{BlobReader, BlobStore, ProjectStore, RunStore, ShardCounter, UploadStore, WorkQueue};
use crate::service::tokens::TokenHash;

use crate::service::stored_upload::UploadForm;
use super::watchdog::Sweep;
use super::dispatch::DispatchMessage;
use super::{Pipeline, ShardMessage, ShardQueueMessage, SolveMessage};

const SHARDS: &str = "shards";
const SOLVES: &str = "solves";
const INCOMING: &str = "incoming";

type TestPipeline = Pipeline<MemoryPorts>;

fn pipeline(shard_target: u64) -> TestPipeline {
    let limits = Limits { shard_target_comparisons: shard_target, ..Limits::default() };
    Pipeline {
        meta: MemoryMeta::new(),
        work: MemoryBlobs::new(),
        uploads: MemoryBlobs::new(),
        queue: MemoryQueue::new(),
        client_stores: MemoryClientStoreOpener::default(),
        settings: Settings {
            table_name: "t".into(),
            work_bucket: "w".into(),
            shard_queue_url: SHARDS.into(),
            solve_queue_url: SOLVES.into(),
            dead_letter_queues: Default::default(),
            upload: UploadSettings {
                enabled: true,
                bucket: "u".into(),
                public_endpoint: "x".into(),
                public_secure: false,
                credentials_ttl_secs: 60,
                role_arn: String::new(),
            },
            pull: PullPolicy::default(),
            limits,
            watchdog: WatchdogSettings { ingest_queue_url: INCOMING.into(), stall_after_secs: 60, max_redrives: 2, ..WatchdogSettings::default() },
            results_role_arn: None,
        },
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Low-entropy 8-byte encodings (many ties) with a few blocks per record.
fn parties(seed: u64, n: usize, count: usize, blocking: bool) -> Vec<(PartyEncodings, Vec<Vec<String>>)> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let data: Vec<u8> = (0..count * 8).map(|_| (rng.next() & rng.next() & 0xFF) as u8).collect();
            let ids: Vec<Vec<String>> =
                (0..count).map(|_| (0..1 + rng.next() % 2).map(|_| format!("b{}", rng.next() % 3)).collect()).collect();
            let blocks = blocking.then(|| ids.iter().map(|b| b.iter().map(|x| BlockKey::of(x)).collect()).collect());
            (PartyEncodings { encoding_size: 8, data, blocks }, ids)
        })
        .collect()
}

fn upload_body(p: &(PartyEncodings, Vec<Vec<String>>), blocking: bool) -> Vec<u8> {
    use base64::Engine;
    let b64 = |r: &[u8]| base64::engine::general_purpose::STANDARD.encode(r);
    let rows: Vec<&[u8]> = p.0.data.chunks(8).collect();
    let body = if blocking {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .zip(&p.1)
            .map(|(r, ids)| {
                let mut row = vec![serde_json::json!(b64(r))];
                row.extend(ids.iter().map(|i| serde_json::json!(i)));
                serde_json::Value::Array(row)
            })
            .collect();
        serde_json::json!({ "clknblocks": rows })
    } else {
        serde_json::json!({ "clks": rows.iter().map(|r| b64(r)).collect::<Vec<_>>() })
    };
    serde_json::to_vec(&body).unwrap()
}

async fn create_project(p: &TestPipeline, result_type: ResultType, n: u32, blocking: bool) -> String {
    let project_id = format!("proj{n}{}", result_type.as_str());
    let project = Project {
        project_id: project_id.clone(),
        result_type,
        number_parties: n,
        name: String::new(),
        notes: String::new(),
        schema: serde_json::json!({}),
        uses_blocking: blocking,
        time_added: crate::service::time::now_iso(),
        result_token_hash: TokenHash::of("result"),
    };
    let parties: Vec<Party> = (0..n)
        .map(|i| Party::new(i, TokenHash::of(&format!("update{i}"))))
        .collect();
    p.meta.create_project(&project, &parties).await.unwrap();
    project_id
}

/// Why the party's upload failed; panics if it did not.
fn failure(party: &Party) -> &str {
    match &party.upload {
        Upload::Error { message, .. } => message,
        other => panic!("party {}'s upload did not fail: {other:?}", party.index),
    }
}

/// What the api does for a JSON upload: the party's upload pending, the body stored. Returns
/// the stored request's key (whose S3 event starts ingestion).
async fn store_upload(p: &TestPipeline, project: &str, party: u32, upload_id: &str, body: Vec<u8>) -> String {
    let start = UploadStart { upload_id: upload_id.into(), receipt_token_hash: TokenHash::of("r") };
    p.meta.begin_upload(project, party, &start).await.unwrap();
    let key = keys::upload(project, party, upload_id);
    p.work.put(&key, Bytes::from(body), &UploadForm::Json.metadata()).await.unwrap();
    key
}

/// What the api does for an upload, then the S3 event fan-out gets for it.
async fn upload(p: &TestPipeline, project: &str, party: u32, body: Vec<u8>) {
    let key = store_upload(p, project, party, &format!("up{party}"), body).await;
    p.on_incoming(&key).await.unwrap();
}

async fn post_run(p: &TestPipeline, project: &str, run_id: &str, threshold: f64) {
    let run = Run::created(project.into(), run_id.into(), threshold, String::new(), String::new(), crate::service::time::now_iso());
    p.meta.create_run(&run).await.unwrap();
    let key = keys::run_request(project, run_id);
    p.work.put(&key, Bytes::from_static(b"{}"), &Vec::new()).await.unwrap();
    p.on_incoming(&key).await.unwrap();
}

/// Delivers every queued message `copies` times (twins run concurrently), until the queues
/// are empty.
async fn drain(p: &TestPipeline, copies: usize) {
    loop {
        let shards = p.queue.take(SHARDS);
        let solves = p.queue.take(SOLVES);
        if shards.is_empty() && solves.is_empty() {
            return;
        }
        for body in shards {
            match serde_json::from_str(&body).unwrap() {
                ShardQueueMessage::Shard(m) => {
                    let twins = (0..copies).map(|_| p.compare(&m));
                    for r in futures::future::join_all(twins).await {
                        r.unwrap();
                    }
                }
                ShardQueueMessage::Dispatch(m) => {
                    for _ in 0..copies {
                        p.dispatch(&m).await.unwrap();
                    }
                }
            }
        }
        for body in solves {
            for _ in 0..copies {
                p.on_solve_queue(&body).await.unwrap();
            }
        }
    }
}

async fn case(n: u32, blocking: bool, result_type: ResultType, seed: u64, shard_target: u64, copies: usize) {
    case_with(n, blocking, result_type, seed, shard_target, copies, |_| {}).await;
}

async fn case_with(
    n: u32,
    blocking: bool,
    result_type: ResultType,
    seed: u64,
    shard_target: u64,
    copies: usize,
    limits: impl FnOnce(&mut Limits),
) {
    let mut p = pipeline(shard_target);
    limits(&mut p.settings.limits);
    let data = parties(seed, n as usize, 40, blocking);
    let project = create_project(&p, result_type, n, blocking).await;
    post_run(&p, &project, "run1", 0.6).await;
    assert_eq!(p.meta.get_run(&project, "run1").await.unwrap().unwrap().state, RunState::Created);
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, blocking)).await;
    }
    drain(&p, copies).await;
    let run = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Completed, "{run:?}");
    assert_eq!(run.shards_done, run.shards_total, "each shard counted once");
    assert_eq!(run.comparisons_done, run.total_comparisons);

    let encodings: Vec<PartyEncodings> = data.into_iter().map(|d| d.0).collect();
    let expected = link::link(&encodings, 0.6, shard_target).unwrap();
    assert_eq!(run.total_comparisons, expected.total_comparisons);
    match result_type {
        ResultType::SimilarityScores => {
            let (got, _) = p.work.get(&keys::result_similarity_scores(&project, "run1")).await.unwrap();
            let mut want = Vec::new();
            output::write_similarity_scores(&mut want, expected.candidates.into_iter()).unwrap();
            assert_eq!(&got[..], &want[..]);
        }
        _ => {
            let (got, _) = p.work.get(&keys::result_groups(&project, "run1")).await.unwrap();
            let want = output::groups_json(&solver::greedy_solve(expected.candidates));
            assert_eq!(&got[..], want.as_bytes());
        }
    }
    assert!(p.work.keys().iter().all(|k| !k.starts_with("work/")), "shard files are cleaned up");
    assert!(p.work.keys().iter().all(|k| !k.starts_with("incoming/")), "requests are consumed");
}

#[tokio::test]
async fn two_parties_groups_equal_the_engine() {
    case(2, false, ResultType::Groups, 1, 300, 1).await;
}

#[tokio::test]
async fn every_message_delivered_twice_at_once_changes_nothing() {
    case(3, true, ResultType::Groups, 2, 200, 2).await;
    case(2, true, ResultType::SimilarityScores, 3, 100, 3).await;
}

#[tokio::test]
async fn five_parties_with_blocks_and_many_shards() {
    case(5, true, ResultType::Groups, 4, 50, 1).await;
}

/// Fan-in 3 over dozens of shards: a merge tree of several levels, steps delivered twice, files
/// read in 50-byte chunks (entries straddle them). Same results as the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_tree_and_chunked_reads_change_nothing() {
    let small = |l: &mut Limits| {
        l.solve_merge_fan_in = 3;
        l.solve_read_chunk_bytes = Some(50);
    };
    case_with(2, false, ResultType::Groups, 21, 60, 2, small).await;
    case_with(2, true, ResultType::SimilarityScores, 22, 40, 1, small).await;
    case_with(3, true, ResultType::Groups, 23, 40, 2, small).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permutations_are_those_of_the_in_memory_groups() {
    let p = pipeline(100);
    let data = parties(31, 2, 40, false);
    let project = create_project(&p, ResultType::Permutations, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "perm", 0.6).await;
    drain(&p, 1).await;
    assert_eq!(p.meta.get_run(&project, "perm").await.unwrap().unwrap().state, RunState::Completed);
    let encodings: Vec<PartyEncodings> = data.into_iter().map(|d| d.0).collect();
    let groups = solver::greedy_solve(link::link(&encodings, 0.6, 100).unwrap().candidates);
    // The run's secret, as solve stored it (a second draw returns the stored one).
    let seed = p.permutation_seed(&project, "perm").await.unwrap().unwrap();
    let perms = output::permutations(&groups, [40, 40], seed);
    for party in 0..2u32 {
        let (got, _) = p.work.get(&keys::result_permutation(&project, "perm", party)).await.unwrap();
        assert_eq!(&got[..], output::permutation_json(&perms, party as usize).as_bytes());
    }
    let (got, _) = p.work.get(&keys::result_mask(&project, "perm")).await.unwrap();
    assert_eq!(&got[..], output::mask_json(&perms).as_bytes());
    assert!(p.work.get(&keys::result_groups(&project, "perm")).await.is_err(), "no groups file that no token can read");
}

/// A solve function too small to hold a three-party run's candidates ends it with the
/// reference's message before fetching anything, instead of being killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_party_runs_that_cannot_fit_in_memory_end_with_the_reference_message() {
    let mut p = pipeline(100);
    // 128 MB: nothing is left for holding candidates after the baseline, reads and output buffers.
    p.settings.limits.function_memory_mb = Some(128);
    let data = parties(12, 3, 40, false);
    let project = create_project(&p, ResultType::Groups, 3, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "small", 0.3).await;
    drain(&p, 1).await;
    let run = p.meta.get_run(&project, "small").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Error);
    assert_eq!(run.error.as_deref(), Some(super::solve::SOLVER_LIMIT_MESSAGE));
}

#[tokio::test]
async fn deleting_a_project_purges_objects_and_items() {
    let p = pipeline(1000);
    let data = parties(9, 2, 20, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "r", 0.5).await;
    // Deleted while its shards are still queued: they must stop quietly.
    assert!(p.meta.mark_project_deleted(&project).await.unwrap());
    let key = keys::delete_request(&project);
    p.work.put(&key, Bytes::new(), &Vec::new()).await.unwrap();
    p.on_incoming(&key).await.unwrap();
    drain(&p, 1).await;
    assert!(p.work.keys().iter().all(|k| !k.contains(&project)), "{:?}", p.work.keys());
    assert!(!p.meta.has_project_items(&project));
}

#[tokio::test]
async fn undecodable_uploads_fail_the_party_with_a_readable_message() {
    let p = pipeline(1000);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    upload(&p, &project, 0, br#"{"clks": ["not base64!"]}"#.to_vec()).await;
    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    let message = failure(&parties[0]);
    assert!(message.to_lowercase().contains("base64"), "{message}");
}

#[tokio::test]
async fn mismatched_encoding_sizes_fail_the_runs_and_the_odd_party_can_upload_again() {
    let p = pipeline(1000);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    post_run(&p, &project, "r", 0.5).await;
    let a = parties(1, 1, 5, false).remove(0);
    upload(&p, &project, 0, upload_body(&a, false)).await;
    upload(&p, &project, 1, serde_json::to_vec(&serde_json::json!({"clks": ["AAAAAAAAAAAAAAAAAAAAAA=="]})).unwrap()).await;
    let run = p.meta.get_run(&project, "r").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Error);
    assert!(run.error.unwrap_or_default().contains("Mismatch in encoding sizes"));
    // Party 0's 8-byte encodings win the tie (lowest party); party 1's upload is in error...
    let (_, parties_now) = p.meta.get_project(&project).await.unwrap().unwrap();
    assert_eq!(parties_now[0].upload.state(), UploadState::Done);
    assert!(failure(&parties_now[1]).contains("expected 8 bytes"));
    // ...so it can upload again, and a new run completes.
    let b = parties(2, 1, 5, false).remove(0);
    let key = store_upload(&p, &project, 1, "retry", upload_body(&b, false)).await;
    p.on_incoming(&key).await.unwrap();
    post_run(&p, &project, "r2", 0.5).await;
    drain(&p, 1).await;
    assert_eq!(p.meta.get_run(&project, "r2").await.unwrap().unwrap().state, RunState::Completed);
}

// ---- the permutation secret ------------------------------------------------------------------

/// A permutations run through a fresh deployment; returns party 0's published permutation and
/// the pipeline.
async fn permutations_run(data: &[(PartyEncodings, Vec<Vec<String>>)]) -> (Vec<u8>, TestPipeline) {
    let p = pipeline(300);
    let project = create_project(&p, ResultType::Permutations, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "run1", 0.6).await;
    for body in p.queue.take(SHARDS) {
        p.compare(&serde_json::from_str(&body).unwrap()).await.unwrap();
    }
    let solve: SolveMessage = serde_json::from_str(&p.queue.take(SOLVES)[0]).unwrap();
    // The first attempt dies after drawing the secret (nothing can be written); its retry must
    // publish what that draw gives, so retries agree.
    p.work.fail_puts(true);
    assert!(p.solve(&solve).await.is_err());
    p.work.fail_puts(false);
    let drawn = p.meta.run_secret(&project, "run1", &crate::service::tokens::generate_secret()).await.unwrap().unwrap();
    p.solve(&solve).await.unwrap();
    assert_eq!(p.meta.run_secret(&project, "run1", "other").await.unwrap().as_ref(), Some(&drawn), "drawn once");
    let (published, _) = p.work.get(&keys::result_permutation(&project, "run1", 0)).await.unwrap();
    let encodings: Vec<PartyEncodings> = data.iter().map(|d| d.0.clone()).collect();
    let groups = solver::greedy_solve(link::link(&encodings, 0.6, 300).unwrap().candidates);
    let seed = output::PermutationSeed::Secret(crate::service::tokens::secret_bytes(&drawn).unwrap());
    let expected = output::permutations(&groups, [40, 40], seed);
    assert_eq!(&published[..], output::permutation_json(&expected, 0).as_bytes(), "retries publish the stored draw");
    assert!(p.work.get(&keys::result_groups(&project, "run1")).await.is_err(), "no groups.json nobody can read");
    (published.to_vec(), p)
}

/// Everything a data provider knows (project and run ids, its tokens, its data, even the other
/// party's data and so the groups) is the same in two deployments; the permutations differ, so
/// none of it reproduces them. Seeds derived from the run id (the old design) do not give them.
#[tokio::test]
async fn permutations_come_from_a_secret_no_data_provider_knows() {
    // Party 1 holds noisy copies of party 0's records, so there are matches to hide.
    let mut data = parties(21, 2, 40, false);
    data[1].0.data = data[0].0.data.iter().enumerate().map(|(i, b)| if i % 16 == 0 { b ^ 1 } else { *b }).collect();
    let (first, p) = permutations_run(&data).await;
    let (second, _) = permutations_run(&data).await;
    assert_ne!(first, second, "same ids, tokens and data; different permutations");

    let encodings: Vec<PartyEncodings> = data.iter().map(|d| d.0.clone()).collect();
    let groups = solver::greedy_solve(link::link(&encodings, 0.6, 300).unwrap().candidates);
    assert!(groups.len() >= 3, "the case needs matches, got {}", groups.len());
    let project = p.meta.list_projects().await.unwrap().remove(0).project_id;
    for known in [project.as_str(), "run1", "result", "update0", "update1"] {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(known.as_bytes());
        for seed in [u64::from_le_bytes(digest[..8].try_into().unwrap()), 0, 1] {
            let guess = output::permutations(&groups, [40, 40], seed);
            assert_ne!(output::permutation_json(&guess, 0).as_bytes(), &first[..], "guessed from {known}");
        }
    }
}

// ---- uploads in the upload bucket (streamed ingestion) ----------------------------------------

/// A party's external upload: the objects in the upload bucket, the reference in `incoming/`.
async fn external_upload(p: &TestPipeline, project: &str, party: u32, encodings: (&str, Vec<u8>, u64, usize), blocks: Option<Vec<u8>>) {
    external_upload_named(p, project, party, encodings, blocks.map(|b| ("blocks.json", b))).await
}

/// The same, naming the blocks file (`*.ndjson` is the line form); every event delivered twice.
async fn external_upload_named(p: &TestPipeline, project: &str, party: u32, encodings: (&str, Vec<u8>, u64, usize), blocks: Option<(&str, Vec<u8>)>) {
    let key = store_external_upload(p, project, party, encodings, blocks).await;
    p.on_incoming(&key).await.unwrap();
    // A redelivered event changes nothing.
    p.on_incoming(&key).await.unwrap();
    run_ingest_steps(p, 2).await;
}

/// What the api does for an external upload (objects in the upload bucket, the reference in
/// `incoming/`); returns the reference's key.
async fn store_external_upload(p: &TestPipeline, project: &str, party: u32, encodings: (&str, Vec<u8>, u64, usize), blocks: Option<(&str, Vec<u8>)>) -> String {
    let (name, body, count, size) = encodings;
    let path = format!("{project}/{party}/{name}");
    let counts = vec![("hash-count".to_string(), count.to_string()), ("hash-size".to_string(), size.to_string())];
    p.uploads.put(&path, Bytes::from(body), &counts).await.unwrap();
    let mut reference = serde_json::json!({"encodings": {"bucket": "u", "path": path}});
    if let Some((blocks_name, blocks)) = blocks {
        let blocks_path = format!("{project}/{party}/{blocks_name}");
        p.uploads.put(&blocks_path, Bytes::from(blocks), &Vec::new()).await.unwrap();
        reference["blocks"] = serde_json::json!({"bucket": "u", "path": blocks_path});
    }
    let upload_id = format!("ext{party}");
    let start = UploadStart { upload_id: upload_id.clone(), receipt_token_hash: TokenHash::of("r") };
    p.meta.begin_upload(project, party, &start).await.unwrap();
    let key = keys::upload(project, party, &upload_id);
    let kind = UploadForm::External.metadata();
    p.work.put(&key, Bytes::from(serde_json::to_vec(&reference).unwrap()), &kind).await.unwrap();
    key
}

fn ingest_step_requests(p: &TestPipeline) -> Vec<String> {
    p.work.keys().into_iter().filter(|k| k.starts_with(keys::INCOMING_INGEST)).collect()
}

/// Delivers the events of partitioned ingestions' step requests, each `copies` times at once,
/// until none is left.
async fn run_ingest_steps(p: &TestPipeline, copies: usize) {
    for _ in 0..1_000 {
        let steps = ingest_step_requests(p);
        if steps.is_empty() {
            return;
        }
        for key in steps {
            for r in futures::future::join_all((0..copies).map(|_| p.on_incoming(&key))).await {
                r.unwrap();
            }
        }
    }
    panic!("ingestion steps keep coming: {:?}", ingest_step_requests(p));
}

/// Objects of partitioned ingestions still in the work bucket (none once each has ended).
fn ingestion_work_left(p: &TestPipeline) -> Vec<String> {
    p.work.keys().into_iter().filter(|k| k.starts_with(keys::INCOMING_INGEST) || k.contains("/ingest-")).collect()
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.next() as u8).collect()
}

/// Streamed ingestion writes exactly what packing the decoded upload in memory writes, across
/// read chunks, multipart parts and (with blocks) windows.
#[tokio::test]
async fn streamed_external_uploads_pack_like_in_memory_ingestion() {
    let mut p = pipeline(1_000_000);
    // Small read chunks and blocks chunks so that a few MB cross many of them; 50 000 × 128
    // bytes makes a data.bin of two multipart parts.
    p.settings.limits.ingest_chunk_bytes = 100_000;
    p.settings.limits.ingest_blocks_chunk_bytes = 200_000;
    let (count, size) = (50_000usize, 128usize);
    let raw = random_bytes(7, count * size);
    let blocks: Vec<Vec<String>> = (0..count).map(|i| vec![format!("b{}", i % 13), format!("c{}", (i * 7) % 5)]).collect();
    let blocks_file = serde_json::json!({
        "blocks": blocks.iter().enumerate().map(|(i, b)| (i.to_string(), serde_json::json!(b))).collect::<serde_json::Map<_, _>>(),
        "meta": {},
    });

    // The same blocks as NDJSON lines, in another order.
    let mut ndjson = Vec::new();
    for (i, b) in blocks.iter().enumerate().rev() {
        crate::engine::blocks_file::write_ndjson_record(&mut ndjson, i as u64, b).unwrap();
    }

    let project = create_project(&p, ResultType::Groups, 3, false).await;
    let mut with_tail = raw.clone();
    with_tail.extend_from_slice(&[9; 77]); // ignored past count × size
    external_upload(&p, &project, 0, ("clks.bin", with_tail, count as u64, size), None).await;
    external_upload(&p, &project, 1, ("clks.bin", raw.clone(), count as u64, size), Some(serde_json::to_vec(&blocks_file).unwrap())).await;
    external_upload_named(&p, &project, 2, ("clks.bin", raw.clone(), count as u64, size), Some(("blocks.ndjson", ndjson))).await;

    let plain = PartyEncodings { encoding_size: size, data: raw.clone(), blocks: None };
    let blocked = PartyEncodings {
        encoding_size: size,
        data: raw,
        blocks: Some(blocks.iter().map(|b| b.iter().map(|x| BlockKey::of(x)).collect()).collect()),
    };
    for (party, expected) in [(0u32, plain), (1, blocked.clone()), (2, blocked)] {
        let (data, index) = crate::engine::packed::pack(&expected);
        assert!(p.work.object(&keys::party_data(&project, party)).unwrap().0 == data, "data.bin of party {party}");
        assert_eq!(p.work.object(&keys::party_index(&project, party)).unwrap().0.as_ref(), &index.to_bytes()[..]);
        let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
        let state = &parties[party as usize];
        assert_eq!(state.upload.state(), UploadState::Done, "{state:?}");
        assert_eq!(state.upload.ingested().unwrap().entry_count, index.entry_count);
    }
    assert_eq!(p.work.unfinished_multipart_uploads(), 0);
    assert!(p.uploads.keys().is_empty(), "ingested objects are deleted: {:?}", p.uploads.keys());
}

#[tokio::test]
async fn external_uploads_that_do_not_match_their_declaration_fail_the_upload() {
    let p = pipeline(1_000_000);
    let project = create_project(&p, ResultType::Groups, 4, false).await;
    // 10 records declared, 9 present.
    external_upload(&p, &project, 0, ("short.bin", vec![1; 9 * 16], 10, 16), None).await;
    // A size the service does not accept.
    external_upload(&p, &project, 1, ("odd.bin", vec![1; 10 * 12], 10, 12), None).await;
    // A blocks file for a different number of records.
    let blocks = serde_json::json!({"blocks": {"0": ["a"]}});
    external_upload(&p, &project, 2, ("b.bin", vec![1; 2 * 16], 2, 16), Some(serde_json::to_vec(&blocks).unwrap())).await;
    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    let [first, second, third] = [0, 1, 2].map(|i| failure(&parties[i]));
    assert!(first.contains("did not match the expected size"), "{first}");
    assert!(second.contains("multiple of 8"), "{second}");
    assert!(third.contains("blocks"), "{third}");
    assert!(p.work.object(&keys::party_data(&project, 0)).is_none());
}

/// A blocks file malformed halfway (read in many chunks, so the records before the fault have
/// streamed past) fails the upload with a message naming where, and nothing is ingested.
#[tokio::test]
async fn a_blocks_file_malformed_halfway_fails_the_upload_naming_the_record() {
    let mut p = pipeline(1_000_000);
    p.settings.limits.ingest_chunk_bytes = 1_000;
    // Several chunks each: the ones before the fault write their partitions first.
    p.settings.limits.ingest_blocks_chunk_bytes = 8_000;
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    let (count, size) = (2_000usize, 16usize);
    let mut json = String::from("{\"blocks\": {");
    let mut ndjson = String::new();
    for i in 0..count {
        let ids = if i == 1_000 { "[\"a\" \"b\"]".to_string() } else { format!("[\"b{}\"]", i % 7) };
        json.push_str(&format!("{}\"{i}\": {ids}", if i == 0 { "" } else { "," }));
        ndjson.push_str(&format!("{{\"{i}\": {ids}}}\n"));
    }
    json.push_str("}}");
    external_upload(&p, &project, 0, ("a.bin", random_bytes(5, count * size), count as u64, size), Some(json.into_bytes())).await;
    external_upload_named(&p, &project, 1, ("b.bin", random_bytes(6, count * size), count as u64, size), Some(("blocks.ndjson", ndjson.into_bytes())))
        .await;
    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    for (party, expected) in [(0usize, "malformed after record 999"), (1, "after record 999")] {
        let message = failure(&parties[party]);
        assert!(message.contains(expected) && message.contains("blocks"), "{message}");
        assert!(p.work.object(&keys::party_data(&project, party as u32)).is_none());
        assert!(p.work.object(&keys::party_index(&project, party as u32)).is_none());
    }
    assert_eq!(p.work.unfinished_multipart_uploads(), 0);
    assert_eq!(ingestion_work_left(&p), Vec::<String>::new(), "nothing half-ingested remains");
}

/// A party with a blocks file, ingested in many chunks and partitions.
fn partitioned_upload(count: usize, size: usize) -> (Vec<u8>, Vec<Vec<String>>, Vec<u8>) {
    let raw = random_bytes(21, count * size);
    let blocks: Vec<Vec<String>> = (0..count).map(|i| vec![format!("b{}", i % 97), format!("c{}", (i * 7) % 31), format!("r{i}")]).collect();
    let mut ndjson = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        crate::engine::blocks_file::write_ndjson_record(&mut ndjson, i as u64, b).unwrap();
    }
    (raw, blocks, ndjson)
}

fn assert_packed_like_in_memory(p: &TestPipeline, project: &str, party: u32, raw: Vec<u8>, size: usize, blocks: &[Vec<String>]) {
    let expected = PartyEncodings { encoding_size: size, data: raw, blocks: Some(blocks.iter().map(|b| b.iter().map(|x| BlockKey::of(x)).collect()).collect()) };
    let (data, index) = crate::engine::packed::pack(&expected);
    assert!(p.work.object(&keys::party_data(project, party)).unwrap().0 == data, "data.bin of party {party}");
    assert_eq!(p.work.object(&keys::party_index(project, party)).unwrap().0.as_ref(), &index.to_bytes()[..]);
}

/// Every kind of step (the upload's event, chunk, merge, assemble) delivered twice at once and
/// once more after the ingestion ended: the party is packed exactly as in memory, in many
/// chunks and partitions, and nothing of the ingestion's work is left.
#[tokio::test]
async fn partitioned_ingestion_under_duplicate_delivery_packs_like_in_memory() {
    let mut p = pipeline(1_000_000);
    p.settings.limits.ingest_blocks_chunk_bytes = 4_000;
    p.settings.limits.ingest_chunk_bytes = 3_000;
    let (count, size) = (3_000usize, 16usize);
    let (raw, blocks, ndjson) = partitioned_upload(count, size);
    let project = create_project(&p, ResultType::Groups, 2, true).await;
    let key = store_external_upload(&p, &project, 0, ("a.bin", raw.clone(), count as u64, size), Some(("a.ndjson", ndjson))).await;
    for r in futures::future::join_all((0..2).map(|_| p.on_incoming(&key))).await {
        r.unwrap();
    }
    let chunks = ingest_step_requests(&p);
    assert!(chunks.len() > 5, "many chunks: {chunks:?}");
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let steps = ingest_step_requests(&p);
        if steps.is_empty() {
            break;
        }
        for step in steps {
            seen.insert(step.rsplit('/').next().unwrap().split('-').next().unwrap().to_string());
            for r in futures::future::join_all((0..2).map(|_| p.on_incoming(&step))).await {
                r.unwrap();
            }
            // The step's event once more, after its twins: the same objects, no new work.
            p.on_incoming(&step).await.unwrap();
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["assemble", "chunk", "merge"]);
    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    assert_eq!(parties[0].upload.state(), UploadState::Done, "{:?}", parties[0]);
    assert_packed_like_in_memory(&p, &project, 0, raw, size, &blocks);
    // Late events of every kind after the ingestion ended change nothing.
    for step in [IngestStep::Chunk(0), IngestStep::Merge(7), IngestStep::Assemble] {
        p.on_incoming(&keys::ingest_step(&project, 0, "ext0", step)).await.unwrap();
    }
    p.on_incoming(&key).await.unwrap();
    assert_eq!(ingestion_work_left(&p), Vec::<String>::new());
    assert_eq!(p.work.unfinished_multipart_uploads(), 0);
}

/// Invocations that die mid-ingestion (a chunk after its partition files but before its
/// summary, a merge on a failing store, step events lost with them) leave the upload pending;
/// the upload's event delivered again (as the watchdog does for a stalled upload) requests what
/// is not done, and the result is what one uninterrupted ingestion writes.
#[tokio::test]
async fn partitioned_ingestion_resumes_after_a_crash() {
    let mut p = pipeline(1_000_000);
    p.settings.limits.ingest_blocks_chunk_bytes = 4_000;
    let (count, size) = (3_000usize, 16usize);
    let (raw, blocks, ndjson) = partitioned_upload(count, size);
    // The JSON form too: its chunks are record ranges of the whole file.
    let json = serde_json::json!({"blocks": blocks.iter().enumerate().map(|(i, b)| (i.to_string(), serde_json::json!(b))).collect::<serde_json::Map<_, _>>()});
    let project = create_project(&p, ResultType::Groups, 2, true).await;
    let files = [("a.ndjson", ndjson), ("a.json", serde_json::to_vec(&json).unwrap())];
    for (party, (name, file)) in files.into_iter().enumerate() {
        let party = party as u32;
        let key = store_external_upload(&p, &project, party, ("a.bin", raw.clone(), count as u64, size), Some((name, file))).await;
        p.on_incoming(&key).await.unwrap();
        let chunks = ingest_step_requests(&p);
        assert!(chunks.len() > 2, "{chunks:?}");
        // Chunk 0 dies after writing its partition files: no summary, and its event is lost.
        p.on_incoming(&chunks[0]).await.unwrap();
        let summary = format!("{}chunks/000000", keys::ingest_work_prefix(&project, party, &format!("ext{party}")));
        p.work.delete(&summary).await.unwrap();
        // Every other chunk runs; the merges then fail on a store refusing writes, once each.
        for chunk in &chunks[1..] {
            p.on_incoming(chunk).await.unwrap();
        }
        assert!(ingest_step_requests(&p).is_empty(), "no merge before every chunk is summarized");
        p.on_incoming(&key).await.unwrap(); // the upload's event again: chunk 0 is requested
        assert_eq!(ingest_step_requests(&p), vec![chunks[0].clone()]);
        p.on_incoming(&chunks[0]).await.unwrap();
        let merges = ingest_step_requests(&p);
        assert!(merges.len() > 10 && merges.iter().all(|m| m.contains("/merge-")), "{merges:?}");
        p.work.fail_puts(true);
        for merge in &merges {
            assert!(p.on_incoming(merge).await.is_err(), "a failed write is retried");
        }
        p.work.fail_puts(false);
        // Half of the merges' events are lost with their invocations; the rest are redelivered.
        for merge in merges.iter().step_by(2) {
            p.work.delete(merge).await.unwrap();
        }
        run_ingest_steps(&p, 1).await;
        let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
        assert_eq!(parties[party as usize].upload.state(), UploadState::Pending, "lost merges keep it pending");
        p.on_incoming(&key).await.unwrap(); // the upload's event again: the lost merges
        run_ingest_steps(&p, 1).await;
        let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
        assert_eq!(parties[party as usize].upload.state(), UploadState::Done, "{:?}", parties[party as usize]);
        assert_packed_like_in_memory(&p, &project, party, raw.clone(), size, &blocks);
    }
    assert_eq!(ingestion_work_left(&p), Vec::<String>::new());
}

/// A blocks file listing one record in two chunks is refused once every chunk is read, with
/// the record named; nothing of the ingestion remains.
#[tokio::test]
async fn a_record_listed_in_two_chunks_fails_the_upload() {
    let mut p = pipeline(1_000_000);
    p.settings.limits.ingest_blocks_chunk_bytes = 4_000;
    let (count, size) = (3_000usize, 16usize);
    let (raw, blocks, mut ndjson) = partitioned_upload(count, size);
    // Record 5 again at the end instead of the last record.
    let last = ndjson[..ndjson.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    ndjson.truncate(last);
    crate::engine::blocks_file::write_ndjson_record(&mut ndjson, 5, &blocks[5]).unwrap();
    let project = create_project(&p, ResultType::Groups, 2, true).await;
    external_upload_named(&p, &project, 0, ("a.bin", raw, count as u64, size), Some(("a.ndjson", ndjson))).await;
    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    let message = failure(&parties[0]);
    assert!(message.contains("record 5 more than once") && message.contains("blocks file"), "{message}");
    assert!(p.work.object(&keys::party_data(&project, 0)).is_none());
    assert_eq!(ingestion_work_left(&p), Vec::<String>::new());
}

/// An upload without blocks that outlasts one invocation's budget pauses at a part boundary,
/// notes its multipart upload in a checkpoint and announces itself again; each new invocation
/// continues where the last stopped, and `data.bin` is exactly what one pass writes.
#[tokio::test]
async fn streamed_ingestion_pauses_at_its_budget_and_continues_exactly() {
    let mut p = pipeline(1_000_000);
    p.settings.limits.ingest_time_budget_secs = 0; // pause at every part boundary
    let (count, size) = (300_000usize, 128usize); // 40.8 MB of entries: three parts
    let raw = random_bytes(5, count * size);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    let path = format!("{project}/0/clks.bin");
    let counts = vec![("hash-count".to_string(), count.to_string()), ("hash-size".to_string(), size.to_string())];
    p.uploads.put(&path, Bytes::from(raw.clone()), &counts).await.unwrap();
    let start = UploadStart { upload_id: "big".into(), receipt_token_hash: TokenHash::of("r") };
    p.meta.begin_upload(&project, 0, &start).await.unwrap();
    let key = keys::upload(&project, 0, "big");
    let kind = UploadForm::External.metadata();
    let reference = serde_json::json!({"encodings": {"bucket": "u", "path": path}});
    p.work.put(&key, Bytes::from(serde_json::to_vec(&reference).unwrap()), &kind).await.unwrap();

    let mut invocations = 0;
    loop {
        p.on_incoming(&key).await.unwrap();
        invocations += 1;
        let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
        if parties[0].upload.state() != UploadState::Pending {
            assert_eq!(parties[0].upload.state(), UploadState::Done, "{:?}", parties[0]);
            break;
        }
        assert!(p.work.object(&key).is_some(), "a paused ingestion keeps (and re-announces) its request");
        assert!(p.work.object(&keys::ingest_checkpoint(&project, 0, "big")).is_some());
        assert!(invocations < 10, "ingestion makes progress");
    }
    assert_eq!(invocations, 3, "one invocation per part");
    let (data, index) = crate::engine::packed::pack(&PartyEncodings { encoding_size: size, data: raw, blocks: None });
    assert!(p.work.object(&keys::party_data(&project, 0)).unwrap().0 == data, "data.bin as one pass writes it");
    assert_eq!(p.work.object(&keys::party_index(&project, 0)).unwrap().0.as_ref(), &index.to_bytes()[..]);
    assert!(p.work.object(&keys::ingest_checkpoint(&project, 0, "big")).is_none(), "checkpoint removed");
    assert_eq!(p.work.unfinished_multipart_uploads(), 0);
    // A late duplicate of a paused invocation's event changes nothing.
    p.on_incoming(&key).await.unwrap();
    assert_eq!(p.work.object(&keys::party_data(&project, 0)).unwrap().0, data);
}

// ---- uploads pulled from a store the client names ----------------------------------------------

const CLIENT_STORE: &str = "https://store.example.com";

fn client_reference(path: &str, blocks: Option<&str>) -> serde_json::Value {
    let store = serde_json::json!({
        "endpoint": "store.example.com",
        "credentials": {"AccessKeyId": "AKIDCLIENT", "SecretAccessKey": "client-secret", "SessionToken": "client-token"},
    });
    let mut reference = serde_json::json!({"encodings": {"bucket": "theirs", "path": path, "store": store}});
    if let Some(blocks) = blocks {
        reference["blocks"] = serde_json::json!({"bucket": "theirs", "path": blocks, "store": store});
    }
    reference
}

/// The reference in `incoming/`, then the S3 event fan-out gets for it (twice).
async fn reference_upload(p: &TestPipeline, project: &str, party: u32, reference: &serde_json::Value) -> String {
    let upload_id = format!("pull{party}");
    let start = UploadStart { upload_id: upload_id.clone(), receipt_token_hash: TokenHash::of("r") };
    p.meta.begin_upload(project, party, &start).await.unwrap();
    let key = keys::upload(project, party, &upload_id);
    let kind = UploadForm::External.metadata();
    p.work.put(&key, Bytes::from(serde_json::to_vec(reference).unwrap()), &kind).await.unwrap();
    p.on_incoming(&key).await.unwrap();
    p.on_incoming(&key).await.unwrap();
    run_ingest_steps(p, 1).await;
    key
}

/// Encodings (and a blocks file) in a client's store are ingested by the same streaming code as
/// uploads to our bucket, with the client's credentials; the client's objects stay, the
/// reference holding its credentials goes.
#[tokio::test]
async fn uploads_pulled_from_a_client_store_pack_like_uploads_to_ours() {
    let mut p = pipeline(1_000_000);
    p.settings.pull = PullPolicy { enabled: true, ..PullPolicy::default() };
    p.settings.limits.ingest_chunk_bytes = 100_000;
    let (count, size) = (5_000usize, 64usize);
    let raw = random_bytes(11, count * size);
    let blocks_file = serde_json::json!({"blocks": (0..count).map(|i| (i.to_string(), serde_json::json!([format!("b{}", i % 3)]))).collect::<serde_json::Map<_, _>>()});
    let theirs = p.client_stores.bucket(CLIENT_STORE, "theirs");
    let counts = vec![("hash-count".to_string(), count.to_string()), ("hash-size".to_string(), size.to_string())];
    theirs.put("mine/clks.bin", Bytes::from(raw.clone()), &counts).await.unwrap();
    theirs.put("mine/blocks.json", Bytes::from(serde_json::to_vec(&blocks_file).unwrap()), &Vec::new()).await.unwrap();

    let project = create_project(&p, ResultType::Groups, 2, false).await;
    let key0 = reference_upload(&p, &project, 0, &client_reference("mine/clks.bin", None)).await;
    let key1 = reference_upload(&p, &project, 1, &client_reference("mine/clks.bin", Some("mine/blocks.json"))).await;

    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    assert!(parties.iter().all(|party| party.upload.state() == UploadState::Done), "{parties:?}");
    let (data, index) = crate::engine::packed::pack(&PartyEncodings { encoding_size: size, data: raw.clone(), blocks: None });
    assert!(p.work.object(&keys::party_data(&project, 0)).unwrap().0 == data);
    assert_eq!(p.work.object(&keys::party_index(&project, 0)).unwrap().0.as_ref(), &index.to_bytes()[..]);
    assert_eq!(parties[1].upload.ingested().unwrap().block_count, 3);
    assert_eq!(theirs.keys(), vec!["mine/blocks.json".to_string(), "mine/clks.bin".to_string()], "the client's objects are theirs");
    assert!(p.work.object(&key0).is_none() && p.work.object(&key1).is_none(), "references with credentials are deleted");
    let opened = p.client_stores.opened_with();
    assert!(!opened.is_empty() && opened.iter().all(|c| c.access_key_id == "AKIDCLIENT" && c.session_token.as_deref() == Some("client-token")));
}

#[tokio::test]
async fn pulls_the_policy_refuses_or_that_find_nothing_fail_the_upload_with_a_message() {
    let mut p = pipeline(1_000_000);
    let project = create_project(&p, ResultType::Groups, 3, false).await;
    // Pulls were turned off after the api accepted the upload.
    let key = reference_upload(&p, &project, 0, &client_reference("mine/clks.bin", None)).await;
    assert!(p.work.object(&key).is_none());
    p.settings.pull = PullPolicy { enabled: true, ..PullPolicy::default() };
    // An endpoint the policy refuses (an old reference, a changed policy).
    let mut metadata_service = client_reference("mine/clks.bin", None);
    metadata_service["encodings"]["store"]["endpoint"] = serde_json::json!("169.254.169.254");
    reference_upload(&p, &project, 1, &metadata_service).await;
    // Nothing at that path in the client's bucket.
    reference_upload(&p, &project, 2, &client_reference("mine/missing.bin", None)).await;

    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    let errors: Vec<&str> = parties.iter().map(failure).collect();
    assert!(errors[0].contains("Pulling encodings from another object store ('store.example.com')"), "{}", errors[0]);
    assert!(errors[1].contains("link-local") && errors[1].contains("169.254.169.254"), "{}", errors[1]);
    assert!(errors[2].contains("no encodings at 'mine/missing.bin' in bucket 'theirs' at store.example.com"), "{}", errors[2]);
    for error in &errors {
        assert!(!error.contains("client-secret") && !error.contains("AKIDCLIENT"), "{error}");
    }
}

// ---- the reference's candidate-pair limits ------------------------------------------------------

async fn limited_run(result_type: ResultType, limits: impl FnOnce(&mut Limits)) -> Run {
    let mut p = pipeline(100);
    limits(&mut p.settings.limits);
    let data = parties(12, 2, 40, false);
    let project = create_project(&p, result_type, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "limited", 0.3).await;
    drain(&p, 1).await;
    p.meta.get_run(&project, "limited").await.unwrap().unwrap()
}

#[tokio::test]
async fn too_many_candidates_for_the_solver_end_the_run_with_the_reference_message() {
    let run = limited_run(ResultType::Groups, |l| l.solver_max_candidate_pairs = 5).await;
    assert_eq!(run.state, RunState::Error);
    assert_eq!(run.error.as_deref(), Some(super::solve::SOLVER_LIMIT_MESSAGE));
}

#[tokio::test]
async fn too_many_similarity_scores_end_the_run_with_the_reference_message() {
    let run = limited_run(ResultType::SimilarityScores, |l| l.similarity_scores_max_candidate_pairs = 5).await;
    assert_eq!(run.state, RunState::Error);
    assert_eq!(run.error.as_deref(), Some(super::compare::CANDIDATE_LIMIT_MESSAGE));
}

#[tokio::test]
async fn within_the_limits_the_same_run_completes() {
    let run = limited_run(ResultType::Groups, |_| {}).await;
    assert_eq!(run.state, RunState::Completed);
    assert!(run.candidate_count > 5, "the limited runs above really had more than 5 candidates");
}

// ---- the watchdog ---------------------------------------------------------------------------

/// A run whose shard messages were lost half-way (some compared, the rest gone from the queue),
/// then its solve message too: the watchdog sends exactly the missing work, and the result is
/// the engine's.
#[tokio::test]
async fn watchdog_resends_lost_shards_and_solve_and_the_run_completes_exactly() {
    let p = pipeline(300);
    let data = parties(7, 2, 40, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "run1", 0.6).await;
    let mut shards = p.queue.take(SHARDS);
    assert!(shards.len() >= 3, "the case needs several shards, got {}", shards.len());
    // Two shards are computed; the others are lost.
    for body in shards.drain(..2) {
        p.compare(&serde_json::from_str(&body).unwrap()).await.unwrap();
    }
    let lost = shards.len();
    let stall = p.settings.watchdog.stall_after_secs;

    // First sight: noted, not stalled yet.
    assert_eq!(p.watchdog(1_000).await.unwrap(), Sweep { projects: 1, watched: 1, reached_end: true, ..Sweep::default() });
    assert!(p.queue.take(SHARDS).is_empty());
    // Stalled, and the shard queue holds as many messages as the run still needs: they may be
    // its own, waiting. (Judged for this run: fewer would prove some of its work lost.)
    p.queue.send(SHARDS, (0..lost).map(|i| format!("someone else's shard {i}")).collect()).await.unwrap();
    assert_eq!(p.watchdog(1_000 + stall).await.unwrap().redriven, 0);
    // A queue that stays that busy does not hide lost work for ever.
    assert_eq!(p.watchdog(1_000 + stall * super::watchdog::BUSY_QUEUE_PATIENCE).await.unwrap().redriven, 1);
    assert_eq!(p.queue.take(SHARDS).len(), lost + lost, "the others' messages and this run's uncounted shards");
    // Stalled with fewer messages queued than the run needs: exactly the uncounted shards are
    // sent again, although the queue is not idle.
    p.queue.send(SHARDS, vec!["someone else's shard".into()]).await.unwrap();
    let later = 1_000 + stall * super::watchdog::BUSY_QUEUE_PATIENCE + stall;
    assert_eq!(p.watchdog(later).await.unwrap().redriven, 1);
    let mut resent = p.queue.take(SHARDS);
    assert_eq!(resent.remove(0), "someone else's shard");
    assert_eq!(resent.len(), lost);
    let first_two: Vec<u32> = p.meta.counted_shards(&project, "run1").await.unwrap();
    for body in &resent {
        let m: ShardMessage = serde_json::from_str(body).unwrap();
        assert!(!first_two.contains(&m.shard_index), "shard {} was counted already", m.shard_index);
        p.compare(&m).await.unwrap();
    }
    // The solve message is lost as well.
    assert_eq!(p.queue.take(SOLVES).len(), 1);
    let run = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!((run.state, run.shards_done), (RunState::Running, run.shards_total));
    p.watchdog(5_000).await.unwrap(); // progress noted
    assert_eq!(p.watchdog(5_000 + stall).await.unwrap().redriven, 1);
    drain(&p, 1).await;

    let run = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Completed, "{run:?}");
    let encodings: Vec<PartyEncodings> = data.into_iter().map(|d| d.0).collect();
    let expected = link::link(&encodings, 0.6, 300).unwrap();
    let (got, _) = p.work.get(&keys::result_groups(&project, "run1")).await.unwrap();
    assert_eq!(&got[..], output::groups_json(&solver::greedy_solve(expected.candidates)).as_bytes());
    assert_eq!(p.watchdog(99_999).await.unwrap().watched, 0, "finished runs are not watched");
}

/// Work that is lost again every time it is sent ends the run with a message, after
/// `max_redrives` attempts, instead of leaving it `running` forever.
#[tokio::test]
async fn watchdog_fails_a_run_whose_work_keeps_getting_lost() {
    let p = pipeline(300);
    let data = parties(8, 2, 20, false);
    let project = create_project(&p, ResultType::SimilarityScores, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "run1", 0.6).await;
    let stall = p.settings.watchdog.stall_after_secs;
    let max = p.settings.watchdog.max_redrives;
    let mut now = 10;
    p.watchdog(now).await.unwrap();
    for _ in 0..max {
        p.queue.take(SHARDS); // lost again
        now += stall;
        assert_eq!(p.watchdog(now).await.unwrap().redriven, 1);
    }
    p.queue.take(SHARDS);
    now += stall;
    assert_eq!(p.watchdog(now).await.unwrap(), Sweep { projects: 1, watched: 1, failed: 1, reached_end: true, ..Sweep::default() });
    let run = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Error);
    assert!(run.error.as_deref().unwrap_or_default().contains("stopped making progress"), "{run:?}");
}

/// A run waiting for data is not stalled; an upload whose S3 event was lost is announced again
/// (its object written again), and a run whose start request was lost is started.
#[tokio::test]
async fn watchdog_restarts_lost_uploads_and_run_starts_but_leaves_waiting_runs_alone() {
    let p = pipeline(300);
    let data = parties(9, 2, 20, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    let stall = p.settings.watchdog.stall_after_secs;
    // The run waits for data: never re-driven however long it waits.
    post_run(&p, &project, "run1", 0.6).await;
    upload(&p, &project, 0, upload_body(&data[0], false)).await;
    p.watchdog(100).await.unwrap();
    assert_eq!(p.watchdog(100 + 10 * stall).await.unwrap().redriven, 0);

    // Party 1's upload is stored but its event never arrives.
    let key = store_upload(&p, &project, 1, "up1", upload_body(&data[1], false)).await;
    p.watchdog(1_000).await.unwrap();
    p.work.fail_puts(true);
    assert_eq!(p.watchdog(1_000 + stall).await.unwrap().errors, 2, "the failing re-put and cursor save are counted, retried at the next tick");
    p.work.fail_puts(false);
    assert_eq!(p.watchdog(1_000 + stall).await.unwrap().redriven, 1);
    // The object was written again: the S3 event that now arrives ingests it and starts the run.
    p.on_incoming(&key).await.unwrap();
    drain(&p, 1).await;
    assert_eq!(p.meta.get_run(&project, "run1").await.unwrap().unwrap().state, RunState::Completed);

    // A second run whose start request was lost: the data is in, so it is started.
    let run = Run::created(project.clone(), "run2".into(), 0.7, String::new(), String::new(), crate::service::time::now_iso());
    p.meta.create_run(&run).await.unwrap();
    p.watchdog(5_000).await.unwrap();
    assert_eq!(p.watchdog(5_000 + stall).await.unwrap().redriven, 1);
    drain(&p, 1).await;
    assert_eq!(p.meta.get_run(&project, "run2").await.unwrap().unwrap().state, RunState::Completed);
}

/// A throttled or unavailable object store: every step that reads fails with a storage error
/// (so its message is retried), nothing is reported to the user as bad data, nothing is counted
/// twice, and once reads work again the run completes with the engine's result.
#[tokio::test]
async fn failing_object_reads_are_retried_and_change_nothing() {
    let p = pipeline(300);
    let data = parties(11, 2, 30, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    upload(&p, &project, 0, upload_body(&data[0], false)).await;

    // Ingestion: the stored upload cannot be read.
    let key = store_upload(&p, &project, 1, "up1", upload_body(&data[1], false)).await;
    p.work.fail_reads(true);
    assert!(p.on_incoming(&key).await.is_err(), "a read failure is an error, so SQS redelivers");
    let party = p.meta.get_project(&project).await.unwrap().unwrap().1.remove(1);
    assert_eq!(party.upload.state(), UploadState::Pending, "not blamed on the data: {party:?}");
    p.work.fail_reads(false);
    p.on_incoming(&key).await.unwrap();

    // Compare: the party data cannot be read for one delivery of every shard.
    // A threshold low enough that shards find candidates: only those have files to read.
    post_run(&p, &project, "run1", 0.3).await;
    let shards = p.queue.take(SHARDS);
    p.work.fail_reads(true);
    for body in &shards {
        assert!(p.compare(&serde_json::from_str(body).unwrap()).await.is_err());
    }
    assert_eq!(p.meta.get_run(&project, "run1").await.unwrap().unwrap().shards_done, 0);
    p.work.fail_reads(false);
    for body in &shards {
        p.compare(&serde_json::from_str(body).unwrap()).await.unwrap();
    }
    // Solve: the candidate files cannot be read once.
    let solves = p.queue.take(SOLVES);
    p.work.fail_reads(true);
    assert!(p.solve(&serde_json::from_str(&solves[0]).unwrap()).await.is_err());
    p.work.fail_reads(false);
    p.solve(&serde_json::from_str(&solves[0]).unwrap()).await.unwrap();

    let run = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!((run.state, run.shards_done), (RunState::Completed, run.shards_total), "{run:?}");
    let encodings: Vec<PartyEncodings> = data.into_iter().map(|d| d.0).collect();
    let expected = link::link(&encodings, 0.3, 300).unwrap();
    assert!(!expected.candidates.is_empty());
    let (got, _) = p.work.get(&keys::result_groups(&project, "run1")).await.unwrap();
    assert_eq!(&got[..], output::groups_json(&solver::greedy_solve(expected.candidates)).as_bytes());
}

/// Shard messages and range messages among `bodies`.
fn split_messages(bodies: Vec<String>) -> (Vec<ShardMessage>, Vec<DispatchMessage>) {
    let (mut shards, mut ranges) = (Vec::new(), Vec::new());
    for body in bodies {
        match serde_json::from_str(&body).unwrap() {
            ShardQueueMessage::Shard(m) => shards.push(m),
            ShardQueueMessage::Dispatch(m) => ranges.push(m),
        }
    }
    (shards, ranges)
}

/// A run of 11,025 shards (12 pages): fan-out sends range messages only, the ranges split
/// recursively, every shard is sent exactly once, a redelivered range re-sends only its own
/// shards, and the run completes with the engine's groups.
#[tokio::test]
async fn dispatch_sends_every_shard_once_through_recursive_ranges() {
    let p = pipeline(1);
    let data = parties(21, 2, 105, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "big", 0.6).await;
    let run = p.meta.get_run(&project, "big").await.unwrap().unwrap();
    assert_eq!(run.shards_total, 105 * 105);
    let (direct, mut ranges) = split_messages(p.queue.take(SHARDS));
    assert!(direct.is_empty(), "fan-out sends no shard of a run of many pages itself");
    assert!(!ranges.is_empty() && ranges.len() <= 10, "{} range messages from fan-out", ranges.len());
    let mut sent = vec![0u32; run.shards_total as usize];
    let mut leaves = Vec::new();
    let mut depth = 0;
    while !ranges.is_empty() {
        depth += 1;
        let mut next = Vec::new();
        for range in ranges {
            p.dispatch(&range).await.unwrap();
            let (shards, sub) = split_messages(p.queue.take(SHARDS));
            assert!(shards.is_empty() || sub.is_empty(), "a range sends shards or sub-ranges, not both");
            assert!(shards.len() <= 1000 && sub.len() <= 10);
            if !shards.is_empty() {
                leaves.push((range.clone(), shards.iter().map(|m| m.shard_index).collect::<Vec<_>>()));
            }
            for m in shards {
                sent[m.shard_index as usize] += 1;
            }
            next.extend(sub);
        }
        ranges = next;
    }
    assert_eq!(depth, 2);
    assert!(sent.iter().all(|n| *n == 1), "every shard sent exactly once");
    // Redelivery of one leaf range: exactly its shards again, nothing else.
    let (leaf, its_shards) = leaves[3].clone();
    p.dispatch(&leaf).await.unwrap();
    let (again, sub) = split_messages(p.queue.take(SHARDS));
    assert!(sub.is_empty());
    assert_eq!(again.iter().map(|m| m.shard_index).collect::<Vec<_>>(), its_shards);
    // Compute everything, the re-sent shards included (they count once).
    for m in again {
        p.compare(&m).await.unwrap();
    }
    // The shard messages taken above were not computed: the leaves send them again.
    for (range, _) in &leaves {
        p.dispatch(range).await.unwrap();
    }
    drain(&p, 1).await;
    let run = p.meta.get_run(&project, "big").await.unwrap().unwrap();
    assert_eq!((run.state, run.shards_done), (RunState::Completed, run.shards_total), "{run:?}");
    let encodings: Vec<PartyEncodings> = data.into_iter().map(|d| d.0).collect();
    let expected = link::link(&encodings, 0.6, 1).unwrap();
    let (got, _) = p.work.get(&keys::result_groups(&project, "big")).await.unwrap();
    assert_eq!(&got[..], output::groups_json(&solver::greedy_solve(expected.candidates)).as_bytes());
    assert!(p.work.keys().iter().all(|k| !k.starts_with("work/")), "plan pages are cleaned up");
}

/// Counting spreads over the run's counters and stays exactly once under twins delivered at
/// the same time; a deleted run counts nothing.
#[tokio::test]
async fn shard_counting_is_exactly_once_without_a_hot_item() {
    let m = MemoryMeta::new();
    let project = Project {
        project_id: "p".into(),
        result_type: ResultType::Groups,
        number_parties: 2,
        name: String::new(),
        notes: String::new(),
        schema: serde_json::json!({}),
        uses_blocking: false,
        time_added: crate::service::time::now_iso(),
        result_token_hash: TokenHash::of("r"),
    };
    m.create_project(&project, &[Party::new(0, TokenHash::of("a")), Party::new(1, TokenHash::of("b"))]).await.unwrap();
    m.create_run(&Run::created("p".into(), "r".into(), 0.8, String::new(), String::new(), crate::service::time::now_iso())).await.unwrap();
    assert!(m.claim_run("p", "r").await.unwrap());
    let total = 3 * SHARD_COUNTERS + 5;
    let plan = RunPlan { shards_total: total, total_comparisons: 10 * total as u64, time_started: crate::service::time::now_iso() };
    assert!(m.start_run("p", "r", &plan).await.unwrap());
    let attempts = (0..total).flat_map(|s| [s, s, s]).map(|s| m.record_shard("p", "r", s, 10, 1));
    let outcomes = futures::future::join_all(attempts).await;
    let counted = outcomes.iter().filter(|o| o.as_ref().unwrap().counted).count();
    assert_eq!(counted, total as usize, "each shard counted once of three deliveries");
    let run = m.get_run("p", "r").await.unwrap().unwrap();
    assert_eq!((run.shards_done, run.comparisons_done, run.candidate_count), (total, 10 * total as u64, total as u64));
    assert_eq!(m.list_runs("p").await.unwrap()[0].shards_done, total);
    assert_eq!(m.counted_shards("p", "r").await.unwrap(), (0..total).collect::<Vec<_>>());
    assert!(m.delete_run("p", "r").await.unwrap());
    assert!(!m.record_shard("p", "r", 0, 1, 1).await.unwrap().counted);
}

// ---- a watchdog that cannot be starved --------------------------------------------------------

/// Thousands of live projects, one of them unreadable (poisoned) and the ingest and shard queues
/// busy with other work: every sweep stays within its bound (projects looked at), carries on
/// past the poisoned project, continues where the last one stopped, and the lost work of the
/// others (uploads whose events were lost, a run whose shards were lost) is sent again.
#[tokio::test]
async fn watchdog_sweeps_are_bounded_survive_a_poisoned_project_and_still_resend_lost_work() {
    let mut p = pipeline(300);
    p.settings.watchdog.sweep_max_projects = 700;
    let stall = p.settings.watchdog.stall_after_secs;
    let data = parties(31, 2, 40, false);
    // A run whose shards are lost.
    let run_project = create_project(&p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &run_project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &run_project, "run1", 0.6).await;
    let lost_shards = p.queue.take(SHARDS).len();
    assert!(lost_shards >= 2, "the case needs several shards");
    // 2 000 projects; three have an upload whose S3 event was lost; one is poisoned.
    let mut lost_uploads = Vec::new();
    for i in 0..2_000u32 {
        let id = format!("filler{i:05}");
        let project = Project {
            project_id: id.clone(),
            result_type: ResultType::Groups,
            number_parties: 2,
            name: String::new(),
            notes: String::new(),
            schema: serde_json::json!({}),
            uses_blocking: false,
            time_added: crate::service::time::now_iso(),
            result_token_hash: TokenHash::of("r"),
        };
        p.meta.create_project(&project, &[Party::new(0, TokenHash::of("a")), Party::new(1, TokenHash::of("b"))]).await.unwrap();
        if [10, 990, 1_990].contains(&i) {
            lost_uploads.push(store_upload(&p, &id, 0, "lost", upload_body(&data[0], false)).await);
        }
        if i == 5 {
            p.meta.poison(&id);
        }
    }
    // Other work keeps both queues busy (but holds fewer messages than the run still needs).
    p.queue.send(INCOMING, vec!["someone else's upload".into()]).await.unwrap();
    p.queue.send(SHARDS, vec!["someone else's shard".into()]).await.unwrap();

    let max = p.settings.watchdog.sweep_max_projects;
    let sweeps_per_round = 2_001usize.div_ceil(max);
    let round = |now: u64| {
        let p = &p;
        async move {
            let mut total = Sweep::default();
            for i in 0..sweeps_per_round {
                let started = std::time::Instant::now();
                let sweep = p.watchdog(now).await.expect("a sweep always finishes");
                let took = started.elapsed();
                assert!(took.as_secs() < p.settings.watchdog.sweep_budget_secs, "within its budget: {took:?}");
                eprintln!("sweep {i}: {} projects in {took:?}", sweep.projects);
                assert!(sweep.projects <= max, "bounded: {sweep:?}");
                assert_eq!(sweep.reached_end, i + 1 == sweeps_per_round, "continues where it stopped: {sweep:?}");
                total.projects += sweep.projects;
                total.redriven += sweep.redriven;
                total.errors += sweep.errors;
            }
            total
        }
    };
    let first = round(1_000).await; // everything noted
    assert_eq!((first.projects, first.errors, first.redriven), (2_001, 1, 0), "{first:?}");
    // The run's shard queue holds 1 message for its missing ones: lost, sent again at once.
    let second = round(1_000 + stall).await;
    assert_eq!((second.projects, second.errors), (2_001, 1), "{second:?}");
    assert_eq!(second.redriven, 1, "the run; the uploads may still be behind the busy ingest queue");
    assert_eq!(p.queue.take(SHARDS).len(), 1 + lost_shards);
    // The ingest queue stays busy: after the patience, the uploads are announced again anyway.
    let third = round(1_000 + stall * super::watchdog::BUSY_QUEUE_PATIENCE).await;
    assert_eq!(third.redriven, 3 + 1, "the three uploads, and the run's shards lost again: {third:?}");
    assert_eq!(p.queue.take(SHARDS).len(), lost_shards);
    assert_eq!(third.errors, 1);
    for key in &lost_uploads {
        p.on_incoming(key).await.unwrap();
    }
    for key in &lost_uploads {
        let project = key.split('/').nth(2).unwrap();
        let party = p.meta.get_project(project).await.unwrap().unwrap().1.remove(0);
        assert_eq!(party.upload.state(), UploadState::Done, "{project}");
    }
    // A sweep with no time left looks at nothing and keeps its place.
    p.settings.watchdog.sweep_budget_secs = 0;
    assert_eq!(p.watchdog(9_999).await.unwrap().projects, 0);
}

/// `MaxComparisonsPerProject` at planning time, when the api could not know the run's size (the
/// data was not in): a run that would take the project over it ends in `error` naming the
/// limit, sends no shard and leaves no work objects; runs within it are unaffected.
#[tokio::test]
async fn a_run_planned_beyond_the_comparisons_per_project_ends_in_error_naming_the_limit() {
    let mut p = pipeline(300);
    let data = parties(43, 2, 20, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    p.settings.limits.max_comparisons_per_project = 600; // 20 x 20 = 400 per run
    post_run(&p, &project, "run1", 0.6).await;
    drain(&p, 1).await;
    let first = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!((first.state, first.total_comparisons), (RunState::Completed, 400));

    post_run(&p, &project, "run2", 0.6).await;
    let second = p.meta.get_run(&project, "run2").await.unwrap().unwrap();
    assert_eq!(second.state, RunState::Error);
    let message = second.error.unwrap_or_default();
    assert!(message.contains("MaxComparisonsPerProject") && message.contains("600"), "{message}");
    assert!(p.queue.take(SHARDS).is_empty(), "no shard of the refused run is sent");
    assert!(p.work.list(&keys::run_work_prefix(&project, "run2")).await.unwrap().is_empty());
}

// ---- data that expires and deletes that complete ----------------------------------------------

/// A project with data and a completed run, created longer ago than the project lifetime.
async fn old_project(p: &TestPipeline) -> String {
    let data = parties(41, 2, 20, false);
    let project = create_project(p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(p, &project, "run1", 0.6).await;
    drain(p, 1).await;
    assert_eq!(p.meta.get_run(&project, "run1").await.unwrap().unwrap().state, RunState::Completed);
    project
}

/// A project past its lifetime is deleted by the watchdog and purged, even when the purge fails
/// on every delivery (its dead letter) several times first: the tombstone keeps it in sight and
/// the watchdog requests the purge again until nothing is left.
#[tokio::test]
async fn projects_past_their_lifetime_are_purged_even_when_the_purge_keeps_failing_first() {
    let mut p = pipeline(300);
    let project = old_project(&p).await;
    let now = crate::service::time::now_secs();
    assert_eq!(p.watchdog(now).await.unwrap().expired, 0, "within its lifetime");
    p.settings.limits.project_lifetime_secs = 60;
    let sweep = p.watchdog(now + 61).await.unwrap();
    assert_eq!(sweep.expired, 1, "{sweep:?}");
    assert!(p.meta.get_project(&project).await.unwrap().is_none(), "gone for every reader at once");
    let delete = keys::delete_request(&project);
    assert!(p.work.object(&delete).is_some(), "its purge is requested");

    // The purge fails on all three deliveries and reaches the dead-letter queue.
    p.work.fail_prefix_deletes(3);
    let event = serde_json::json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": delete}}}]}).to_string();
    for _ in 0..3 {
        assert!(p.on_incoming(&delete).await.is_err());
    }
    p.on_dead_letter(DeadLetterSource::Ingest, &event).await.unwrap();
    assert!(p.meta.has_project_items(&project), "the tombstone stays");
    // The watchdog requests it again (here: its request object was lost too).
    p.work.delete(&delete).await.unwrap();
    let stall = p.settings.watchdog.stall_after_secs;
    let sweep = p.watchdog(now + 61 + stall).await.unwrap();
    assert_eq!(sweep.purges_retried, 1, "{sweep:?}");
    p.on_incoming(&delete).await.unwrap();
    assert!(p.work.keys().iter().all(|k| !k.contains(&project)), "{:?}", p.work.keys());
    assert!(p.uploads.keys().is_empty());
    assert!(!p.meta.has_project_items(&project), "no items, no tombstone");
    assert_eq!(p.watchdog(now + 61 + 2 * stall).await.unwrap().purges_retried, 0, "nothing left to retry");
}

/// An ingestion that resumes after its project was deleted and purged leaves nothing behind.
#[tokio::test]
async fn an_upload_announced_after_the_purge_leaves_no_packed_data() {
    let p = pipeline(300);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    let key = store_upload(&p, &project, 0, "up0", upload_body(&parties(5, 1, 10, false)[0], false)).await;
    // What a paused ingestion leaves: a checkpoint and packed parts.
    p.work.put(&keys::ingest_checkpoint(&project, 0, "up0"), Bytes::from_static(b"{}"), &Vec::new()).await.unwrap();
    assert!(p.meta.mark_project_deleted(&project).await.unwrap());
    let delete = keys::delete_request(&project);
    p.work.put(&delete, Bytes::new(), &Vec::new()).await.unwrap();
    p.on_incoming(&delete).await.unwrap();
    // The continuation is announced after the purge.
    p.work.put(&key, Bytes::from_static(b"{}"), &UploadForm::Json.metadata()).await.unwrap();
    p.work.put(&keys::ingest_checkpoint(&project, 0, "up0"), Bytes::from_static(b"{}"), &Vec::new()).await.unwrap();
    p.on_incoming(&key).await.unwrap();
    assert!(p.work.keys().iter().all(|k| !k.contains(&project)), "{:?}", p.work.keys());
    assert!(!p.meta.has_project_items(&project));
}

/// The SQS event Lambda delivers for one message of the shard queue.
fn shard_event(message_id: &str, receipt_handle: &str, body: &str) -> aws_lambda_events::event::sqs::SqsEvent {
    serde_json::from_value(serde_json::json!({"Records": [{
        "messageId": message_id,
        "receiptHandle": receipt_handle,
        "body": body,
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:shards",
    }]}))
    .unwrap()
}

#[tokio::test]
async fn equal_shards_finishing_at_once_under_conflicts_are_each_counted_once() {
    use crate::service::lambda::{self, Step, RETRY_SOON};
    use crate::service::memory::ConflictInjection;

    // 2 × 100 records at 100 comparisons a shard: 100 shards of 10 × 10 records each, more than
    // the run's shard counters, so shards finishing together share counter items.
    let p = pipeline(100);
    let data = parties(21, 2, 100, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "run1", 0.6).await;
    let shards = p.queue.take(SHARDS);
    assert!(shards.len() as u32 > SHARD_COUNTERS, "{} shards", shards.len());

    // Every transaction holds its items for a moment, so shards whose counting transactions
    // share a counter item conflict when they run at the same time.
    p.meta.inject_conflicts(ConflictInjection::Overlapping { hold: std::time::Duration::from_millis(5) });
    let mut pending: Vec<(usize, &String)> = shards.iter().enumerate().collect();
    let mut delivery = 0;
    while !pending.is_empty() {
        delivery += 1;
        assert!(delivery <= 3, "shards still failing after {delivery} deliveries");
        let changes_before = p.queue.visibility_changes().len();
        let invocations = pending.iter().map(|(i, body)| {
            lambda::handle(Step::Compare, &p, shard_event(&format!("m{i}"), &format!("r{i}.{delivery}"), body))
        });
        let failed: Vec<String> = futures::future::join_all(invocations)
            .await
            .into_iter()
            .flat_map(|r| r.batch_item_failures.into_iter().map(|f| f.item_identifier))
            .collect();
        // A conflict that outlasted the retries comes back within seconds, not after the
        // visibility timeout.
        let changes = &p.queue.visibility_changes()[changes_before..];
        assert_eq!(changes.len(), failed.len(), "{changes:?}");
        for change in changes {
            assert_eq!(change.queue_url, "https://sqs.eu-west-1.amazonaws.com/123456789012/shards");
            assert!(RETRY_SOON.contains(&std::time::Duration::from_secs(change.visibility_secs.into())), "{change:?}");
        }
        pending.retain(|(i, _)| failed.contains(&format!("m{i}")));
    }
    assert!(p.meta.conflicts_injected() > 0, "the shards' transactions conflicted");

    let solves = p.queue.sent();
    assert_eq!(solves.iter().filter(|(q, _)| q == SOLVES).count(), 1, "only the last shard counted sends solve");
    drain(&p, 1).await;
    let run = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Completed, "{run:?}");
    assert_eq!((run.shards_done, run.shards_total), (shards.len() as u32, shards.len() as u32));
    assert_eq!(run.comparisons_done, run.total_comparisons);
    let encodings: Vec<PartyEncodings> = data.into_iter().map(|d| d.0).collect();
    let expected = link::link(&encodings, 0.6, 100).unwrap();
    assert_eq!(run.candidate_count, expected.candidates.len() as u64);
    let (got, _) = p.work.get(&keys::result_groups(&project, "run1")).await.unwrap();
    assert_eq!(&got[..], output::groups_json(&solver::greedy_solve(expected.candidates)).as_bytes());
}

#[tokio::test]
async fn a_conflict_that_outlasts_the_retries_makes_the_message_visible_again_soon() {
    use crate::service::lambda::{self, Step, RETRY_SOON};
    use crate::service::memory::ConflictInjection;

    let p = pipeline(1000);
    let data = parties(22, 2, 20, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    post_run(&p, &project, "r", 0.6).await;
    let shards = p.queue.take(SHARDS);
    assert_eq!(shards.len(), 1);

    p.meta.inject_conflicts(ConflictInjection::Always);
    let response = lambda::handle(Step::Compare, &p, shard_event("m0", "receipt-1", &shards[0])).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let changes = p.queue.visibility_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].receipt_handle, "receipt-1");
    assert!(RETRY_SOON.contains(&std::time::Duration::from_secs(changes[0].visibility_secs.into())));
    assert_eq!(p.meta.get_run(&project, "r").await.unwrap().unwrap().shards_done, 0, "nothing counted");

    // Redelivered once the contention is over, the shard counts once and the run completes.
    p.meta.inject_conflicts(ConflictInjection::Off);
    let response = lambda::handle(Step::Compare, &p, shard_event("m0", "receipt-2", &shards[0])).await;
    assert!(response.batch_item_failures.is_empty());
    drain(&p, 1).await;
    let run = p.meta.get_run(&project, "r").await.unwrap().unwrap();
    assert_eq!((run.state, run.shards_done), (RunState::Completed, 1));
    assert_eq!(p.queue.visibility_changes().len(), 1, "a success changes no visibility");
}

#[tokio::test]
async fn a_run_leaves_one_metrics_document_per_shard_upload_and_outcome() {
    let capture = crate::service::metrics::Capture::start();
    let p = pipeline(300);
    let data = parties(5, 2, 40, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    post_run(&p, &project, "run1", 0.6).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    drain(&p, 2).await; // every message twice: still one document per shard and per run
    let run = p.meta.get_run(&project, "run1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Completed);
    let docs = capture.documents();
    let of = |metric: &str| docs.iter().filter(|d| d.get(metric).is_some()).collect::<Vec<_>>();
    let shards = of("Comparisons");
    assert!(run.shards_total > 1);
    assert_eq!(shards.len(), run.shards_total as usize);
    assert_eq!(shards.iter().map(|d| d["Comparisons"].as_u64().unwrap()).sum::<u64>(), run.total_comparisons);
    assert!(shards.iter().all(|d| d["RunId"] == "run1" && d["FetchedBytes"].as_u64() > Some(0)));
    let ended = of("Runs");
    assert_eq!(ended.len(), 1);
    assert_eq!((ended[0]["Outcome"].as_str(), ended[0]["RunComparisons"].as_u64()), (Some("completed"), Some(run.total_comparisons)));
    assert!(ended[0]["RunDuration"].as_f64().is_some());
    let uploads = of("UploadRecords");
    assert_eq!(uploads.iter().map(|d| d["Party"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
    assert!(uploads.iter().all(|d| d["UploadRecords"] == 40 && d["UploadBytes"] == 40 * 8));
    // Each metric keeps its unit wherever it is emitted.
    let unit = |doc: &serde_json::Value, name: &str| {
        doc["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().iter().find(|m| m["Name"] == name).map(|m| m["Unit"].clone())
    };
    assert_eq!(unit(shards[0], "FetchedBytes"), Some("Bytes".into()));
    assert_eq!(unit(shards[0], "ShardDuration"), Some("Milliseconds".into()));
    assert_eq!(unit(uploads[0], "UploadBytes"), Some("Bytes".into()));
    assert_eq!(unit(ended[0], "RunDuration"), Some("Seconds".into()));
}

#[tokio::test]
async fn a_run_failed_is_counted_once_by_whoever_failed_it() {
    let capture = crate::service::metrics::Capture::start();
    let p = pipeline(300);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    post_run(&p, &project, "run1", 0.6).await;
    assert!(p.fail_run(&project, "run1", "broken").await.unwrap());
    assert!(!p.fail_run(&project, "run1", "broken again").await.unwrap());
    let docs = capture.documents();
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!((docs[0]["Outcome"].as_str(), docs[0]["Runs"].as_u64()), (Some("failed"), Some(1)));
    assert!(docs[0].get("RunDuration").is_none(), "it never started");
}

/// A dead letter is read as a message of the queue it came from (the event's source ARN says
/// which), never guessed from its body: a merge step from the solve queue fails its run like a
/// solve message, a shard's names the shard, and a body that is not its queue's message is an
/// error.
#[tokio::test]
async fn dead_letters_are_read_as_messages_of_the_queue_they_came_from() {
    let queues = DeadLetterQueues { ingest_arn: "arn:ingest".into(), shard_arn: "arn:shard".into(), solve_arn: "arn:solve".into() };
    assert_eq!(queues.source_of("arn:ingest"), Some(DeadLetterSource::Ingest));
    assert_eq!(queues.source_of("arn:shard"), Some(DeadLetterSource::Shard));
    assert_eq!(queues.source_of("arn:solve"), Some(DeadLetterSource::Solve));
    assert_eq!(queues.source_of("arn:other"), None);
    assert_eq!(DeadLetterQueues::default().source_of(""), None, "an event without a source ARN is no dead letter");

    let p = pipeline(300);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    post_run(&p, &project, "merged", 0.6).await;
    post_run(&p, &project, "sharded", 0.6).await;
    let merge = super::merge::MergeMessage { project_id: project.clone(), run_id: "merged".into(), level: 1, group: 0 };
    p.on_dead_letter(DeadLetterSource::Solve, &serde_json::to_string(&merge).unwrap()).await.unwrap();
    let shard = ShardMessage { project_id: project.clone(), run_id: "sharded".into(), shard_index: 7, shard: None, encoding_sizes: vec![] };
    p.on_dead_letter(DeadLetterSource::Shard, &serde_json::to_string(&shard).unwrap()).await.unwrap();
    let error = |run: Option<Run>| run.and_then(|r| r.error).unwrap_or_default();
    let merged = error(p.meta.get_run(&project, "merged").await.unwrap());
    assert!(merged.starts_with(super::dead_letter::RUN_FAILED_MESSAGE) && merged.contains("result could not be computed"), "{merged}");
    let sharded = error(p.meta.get_run(&project, "sharded").await.unwrap());
    assert!(sharded.contains("Shard 7"), "{sharded}");
    assert!(p.on_dead_letter(DeadLetterSource::Shard, r#"{"Records": []}"#).await.is_err(), "an S3 event is no shard-queue message");
}

/// Found under load on the local stack: a solve that passed its "still running" check just
/// before its twin completed the run and removed the run's work files listed none of the shard
/// files and overwrote the twin's groups with `{"groups":[]}`. The listing is trusted only if
/// the run is still running after it.
#[tokio::test]
async fn a_solve_whose_twin_completes_the_run_meanwhile_keeps_the_twins_result() {
    let p = pipeline(300);
    let data = parties(7, 2, 40, false);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    post_run(&p, &project, "run1", 0.3).await;
    for (i, d) in data.iter().enumerate() {
        upload(&p, &project, i as u32, upload_body(d, false)).await;
    }
    loop {
        let shards = p.queue.take(SHARDS);
        if shards.is_empty() {
            break;
        }
        for body in shards {
            match serde_json::from_str(&body).unwrap() {
                ShardQueueMessage::Shard(m) => p.compare(&m).await.unwrap(),
                ShardQueueMessage::Dispatch(m) => p.dispatch(&m).await.unwrap(),
            }
        }
    }
    let solves = p.queue.take(SOLVES);
    let body = solves.first().expect("the last shard asks for the solve").clone();
    let twin = p.clone();
    let twin_body = body.clone();
    // The twin runs to its end on its own thread and runtime while this solve waits in `list`.
    p.work.before_next_list(move || {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(twin.on_solve_queue(&twin_body)).unwrap();
        })
        .join()
        .unwrap();
    });
    p.on_solve_queue(&body).await.unwrap();

    assert_eq!(p.meta.get_run(&project, "run1").await.unwrap().unwrap().state, RunState::Completed);
    let encodings: Vec<PartyEncodings> = data.into_iter().map(|d| d.0).collect();
    let expected = link::link(&encodings, 0.3, 300).unwrap();
    assert!(!expected.candidates.is_empty(), "the case needs matches to lose");
    let (got, _) = p.work.get(&keys::result_groups(&project, "run1")).await.unwrap();
    let want = output::groups_json(&solver::greedy_solve(expected.candidates));
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// A `.json` encodings object larger than fan-out can decode in memory is refused with a message
/// that says to upload binary, instead of the function being killed on every delivery; the same
/// records in binary are ingested under the same memory.
#[tokio::test]
async fn json_encodings_over_what_memory_decodes_are_refused_and_binary_is_not() {
    let mut p = pipeline(1_000_000);
    p.settings.limits.function_memory_mb = Some(1); // decodes JSON up to 349,525 bytes
    let (count, size) = (20_000usize, 16usize);
    let raw: Vec<u8> = (0..count * size).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = |r: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(r)
    };
    let json = serde_json::to_vec(&serde_json::json!({ "clks": raw.chunks(size).map(b64).collect::<Vec<_>>() })).unwrap();
    assert!(json.len() > 349_525);
    let project = create_project(&p, ResultType::Groups, 2, false).await;
    external_upload(&p, &project, 0, ("a.json", json.clone(), count as u64, size), None).await;
    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    let message = failure(&parties[0]);
    assert!(message.contains(&format!("{} bytes of JSON", json.len())) && message.contains("binary"), "{message}");
    assert!(p.work.object(&keys::party_data(&project, 0)).is_none());

    external_upload(&p, &project, 1, ("b.bin", raw, count as u64, size), None).await;
    let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
    assert!(parties[1].upload.ingested().is_some(), "{:?}", parties[1]);
}

/// Fan-out's plan, read from `index.bin` in windows, is the engine's `plan_run` of the same
/// indexes: at the configured target (the first pass is the plan) and when the shard cap makes it
/// plan again at larger targets.
#[tokio::test]
async fn fan_out_plans_what_the_engine_plans_with_and_without_a_larger_target() {
    use crate::engine::shard::{self, test_index};
    let mut rng = Rng(7);
    let indexes: Vec<_> = (0..3)
        .map(|_| test_index(&(0..400).map(|_| ((rng.next() % 300) as u32, 1 + rng.next() % 9)).collect::<Vec<_>>()))
        .collect();
    for (target, cap) in [(1_000, 0), (300, 12), (40, 5)] {
        let mut p = pipeline(target);
        p.settings.limits.max_shards_per_run = cap;
        let policy = p.settings.limits.sizing();
        if cap > 0 {
            assert!(shard::plan(&indexes, target).shards.len() as u64 > cap, "the case must need a larger target");
        }
        let project = create_project(&p, ResultType::Groups, 3, true).await;
        for (party, index) in indexes.iter().enumerate() {
            p.work.put(&keys::party_index(&project, party as u32), Bytes::from(index.to_bytes()), &Vec::new()).await.unwrap();
        }
        let (_, parties) = p.meta.get_project(&project).await.unwrap().unwrap();
        let planned = p.plan_shards(&project, "run1", &parties).await.unwrap();
        let (expected, _) = crate::engine::sizing::plan_run(&indexes, &policy);
        assert_eq!(planned.total_comparisons, expected.total_comparisons);
        let mut shards = Vec::new();
        for (index, body) in &planned.messages {
            let message: ShardMessage = serde_json::from_str(body).unwrap();
            assert_eq!(message.shard_index, *index);
            shards.push(match message.shard {
                Some(shard) => shard,
                None => serde_json::from_slice(&p.work.object(&keys::shard(&project, "run1", *index)).unwrap().0).unwrap(),
            });
        }
        assert_eq!(shards, expected.shards, "target {target}, cap {cap}");
    }
}
