//! The metadata-store contract, written once and run against every [`MetaStore`].
//!
//! The conditional state changes live twice: in DynamoDB condition expressions
//! (`aws::dynamo`) and in the in-memory store the unit tests run on ([`super::memory`]). Unit
//! tests are only as good as the memory store's faithfulness, so both stores must answer every
//! transition alike: the same value, the same `MetaError` variant, the same state afterwards.
//! This suite states those answers once; the unit tests run it on [`super::memory::MemoryMeta`]
//! and the end-to-end suite on the DynamoDB adapter against DynamoDB Local
//! (`tests/e2e/meta_contract.rs`), so a divergence of either store fails one of them.
//!
//! It lives in the library (not under `cfg(test)`) because the second caller is another crate.
//! Each case takes a fresh, empty store from a [`StoreFactory`], so counters (`/status`) and
//! listings are exact.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use super::aws_limits::{DYNAMODB_MAX_ITEM_BYTES, LimitExceeded};
use super::model::{
    IngestedParty, Party, Project, ProjectSummary, ResultType, Run, RunAfterShard, RunHead, RunPlan, RunState, SHARD_COUNTERS, ShardTally,
    StatusCounters, Tombstone, Upload, UploadStart, Watch, WatchTarget,
};
use super::ports::{MetaError, MetaStore};
use super::time;
use super::tokens::TokenHash;

/// Makes empty metadata stores for the cases.
pub trait StoreFactory: Sync {
    type Store: MetaStore;
    /// A store with no projects and zero counters.
    fn fresh(&self) -> impl Future<Output = Self::Store> + Send;
}

/// Runs every case of the contract, each on a fresh store, and panics naming every case whose
/// answers broke it (each case's own panic, printed as it happens, says which answer), so one
/// run shows every divergence of a store, not only the first.
pub async fn check<F: StoreFactory>(factory: &F) {
    let mut broken = Vec::new();
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            let store = factory.fresh().await;
            if AssertUnwindSafe($case(&store)).catch_unwind().await.is_err() {
                broken.push(stringify!($case));
            }
        )*};
    }
    cases!(
        projects_are_created_once_listed_in_order_and_vanish_when_deleted,
        uploads_follow_their_state_machine,
        concurrent_uploads_of_one_party_begin_once,
        runs_move_forward_only,
        shards_count_once_in_batches_and_redeliveries,
        concurrent_transitions_happen_once,
        deleted_runs_count_nothing_and_leave_nothing,
        watches_note_only_what_exists,
        a_project_being_deleted_answers_as_gone,
        writes_dynamodb_would_refuse_are_refused_and_write_nothing,
    );
    assert!(broken.is_empty(), "the store breaks the metadata-store contract in: {}", broken.join(", "));
}

// ---- fixtures ---------------------------------------------------------------------------------

fn project(id: &str, time_added: &str) -> Project {
    Project {
        project_id: id.into(),
        result_type: ResultType::Groups,
        number_parties: 2,
        name: format!("name of {id}"),
        notes: "notes".into(),
        schema: serde_json::json!({"clkConfig": {"l": 1024}}),
        uses_blocking: false,
        time_added: time_added.into(),
        result_token_hash: TokenHash::of(&format!("result {id}")),
    }
}

fn party(index: u32) -> Party {
    Party::new(index, TokenHash::of(&format!("update {index}")))
}

fn run(project_id: &str, run_id: &str, time_added: &str) -> Run {
    Run::created(project_id.into(), run_id.into(), 0.85, format!("run {run_id}"), "notes".into(), time_added.into())
}

fn upload(id: &str) -> UploadStart {
    UploadStart { upload_id: id.into(), receipt_token_hash: TokenHash::of(&format!("receipt {id}")) }
}

fn ingested() -> IngestedParty {
    IngestedParty { record_count: 3, encoding_size: 128, entry_count: 6, block_count: 2 }
}

fn tally(shard: u32) -> ShardTally {
    ShardTally { shard, comparisons: 10 + u64::from(shard), candidates: 1 + u64::from(shard % 3) }
}

const T1: &str = "2024-01-01T00:00:01.000000+00:00";
const T2: &str = "2024-01-01T00:00:02.000000+00:00";
const T3: &str = "2024-01-01T00:00:03.000000+00:00";
const STARTED: &str = "2024-01-01T00:01:00.000000+00:00";
/// Two and a half seconds after [`STARTED`].
const COMPLETED: &str = "2024-01-01T00:01:02.500000+00:00";

/// A live project `p` of two parties with run `r` started on `shards_total` shards.
async fn started_run<M: MetaStore>(m: &M, shards_total: u32) -> Run {
    m.create_project(&project("p", T1), &[party(0), party(1)]).await.expect("create project");
    m.create_run(&run("p", "r", T1)).await.expect("create run");
    assert!(m.claim_run("p", "r").await.expect("claim"));
    let plan = RunPlan { shards_total, total_comparisons: 1000, time_started: STARTED.into() };
    assert!(m.start_run("p", "r", &plan).await.expect("start"));
    m.get_run("p", "r").await.expect("get run").expect("the run")
}

async fn party_of<M: MetaStore>(m: &M, project_id: &str, index: u32) -> Party {
    let (_, parties) = m.get_project(project_id).await.expect("get project").expect("the project");
    parties.into_iter().find(|p| p.index == index).expect("the party")
}

fn ids(projects: &[ProjectSummary]) -> Vec<&str> {
    projects.iter().map(|p| p.project_id.as_str()).collect()
}

// ---- cases ------------------------------------------------------------------------------------

async fn projects_are_created_once_listed_in_order_and_vanish_when_deleted<M: MetaStore>(m: &M) {
    assert_eq!(m.status_counters().await.unwrap(), StatusCounters::default(), "a fresh store counts nothing");
    m.create_project(&project("b", T2), &[party(1), party(0)]).await.unwrap();
    m.create_project(&project("a", T3), &[party(0), party(1)]).await.unwrap();
    m.create_project(&project("c", T2), &[party(0), party(1)]).await.unwrap();
    let r = m.create_project(&project("a", T1), &[party(0), party(1)]).await;
    assert!(matches!(r, Err(MetaError::Conflict(_))), "a second create of one id: {r:?}");

    assert_eq!(m.get_project("a").await.unwrap(), Some((project("a", T3), vec![party(0), party(1)])), "the first create stands");
    assert_eq!(m.get_project("b").await.unwrap().map(|(_, parties)| parties), Some(vec![party(0), party(1)]), "parties by index");
    assert_eq!(m.get_project("zzz").await.unwrap(), None);
    // Oldest first, ties by id; a paged listing visits the same projects in the same order.
    let all = m.list_projects().await.unwrap();
    assert_eq!(ids(&all), ["b", "c", "a"]);
    let (mut paged, mut cursor) = (Vec::new(), None::<String>);
    for _ in 0..10 {
        let (page, next) = m.list_projects_page(cursor.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2, "a page holds at most its limit");
        paged.extend(page);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all, "pages in order, each project once, then the end");
    assert_eq!(m.status_counters().await.unwrap().project_count, 3);

    let before = time::now_secs();
    assert!(m.mark_project_deleted("b").await.unwrap());
    let after = time::now_secs();
    assert!(!m.mark_project_deleted("b").await.unwrap(), "deleted once");
    assert!(!m.mark_project_deleted("zzz").await.unwrap(), "unknown");
    assert_eq!(m.get_project("b").await.unwrap(), None);
    assert_eq!(ids(&m.list_projects().await.unwrap()), ["c", "a"]);
    assert_eq!(ids(&m.list_projects_page(None, 10).await.unwrap().0), ["c", "a"]);
    assert_eq!(m.status_counters().await.unwrap().project_count, 2);
    let tombstones = m.list_tombstones(10).await.unwrap();
    assert_eq!(tombstones.len(), 1, "{tombstones:?}");
    assert_eq!(tombstones[0].project_id, "b");
    assert!((before..=after).contains(&tombstones[0].deleted_secs), "{tombstones:?} deleted between {before} and {after}");

    m.purge_project("b").await.unwrap();
    assert_eq!(m.list_tombstones(10).await.unwrap(), Vec::<Tombstone>::new(), "purged: no tombstone left");
    m.purge_project("b").await.unwrap();
    // Nothing of the id remains: it can be created again.
    m.create_project(&project("b", T1), &[party(0), party(1)]).await.unwrap();
    assert_eq!(ids(&m.list_projects().await.unwrap()), ["b", "c", "a"]);
}

async fn uploads_follow_their_state_machine<M: MetaStore>(m: &M) {
    m.create_project(&project("p", T1), &[party(0), party(1)]).await.unwrap();
    let with = |upload: Upload| Party { upload, ..party(0) };
    let pending = |id: &str| with(Upload::Pending(upload(id)));
    let failed = |id: &str, message: &str| with(Upload::Error { start: upload(id), message: message.into() });

    // No upload yet: nothing to abort, fail, complete or reject.
    m.abort_upload("p", 0, "u1", None).await.unwrap();
    m.abort_upload("p", 0, "u1", Some("storing failed")).await.unwrap();
    m.fail_upload("p", 0, "u1", "bad base64").await.unwrap();
    m.reject_upload("p", 0, "u1", "sizes differ").await.unwrap();
    assert!(!m.complete_upload("p", 0, "u1", &ingested()).await.unwrap());
    assert_eq!(party_of(m, "p", 0).await, party(0), "not started: nothing changed");

    m.begin_upload("p", 0, &upload("u1")).await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, pending("u1"));
    let r = m.begin_upload("p", 0, &upload("u2")).await;
    assert!(matches!(r, Err(MetaError::Conflict(_))), "pending: {r:?}");
    let r = m.begin_upload("p", 7, &upload("u2")).await;
    assert!(matches!(r, Err(MetaError::NotFound(_))), "no party 7: {r:?}");
    let r = m.begin_upload("zzz", 0, &upload("u2")).await;
    assert!(matches!(r, Err(MetaError::NotFound(_))), "no project: {r:?}");

    // Another upload's id changes nothing; the pending one's resets the party.
    m.abort_upload("p", 0, "other", None).await.unwrap();
    m.abort_upload("p", 0, "other", Some("storing failed")).await.unwrap();
    m.fail_upload("p", 0, "other", "not ours").await.unwrap();
    m.reject_upload("p", 0, "other", "not ours").await.unwrap();
    m.reject_upload("p", 0, "u1", "not ingested yet").await.unwrap();
    assert!(!m.complete_upload("p", 0, "other", &ingested()).await.unwrap());
    assert_eq!(party_of(m, "p", 0).await, pending("u1"), "only the pending upload's own id moves it; reject wants a done one");
    m.abort_upload("p", 0, "u1", None).await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, party(0), "aborted without a message: as if never begun");

    m.begin_upload("p", 0, &upload("u2")).await.unwrap();
    m.fail_upload("p", 0, "u2", "bad base64").await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, failed("u2", "bad base64"));
    assert!(!m.complete_upload("p", 0, "u2", &ingested()).await.unwrap(), "a failed upload is no longer pending");
    m.fail_upload("p", 0, "u2", "failed again").await.unwrap();
    m.abort_upload("p", 0, "u2", None).await.unwrap();
    m.abort_upload("p", 0, "u2", Some("storing failed")).await.unwrap();
    m.reject_upload("p", 0, "u2", "sizes differ").await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, failed("u2", "bad base64"), "a failed upload stays as it failed");

    m.begin_upload("p", 0, &upload("u3")).await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, pending("u3"), "a new upload after an error clears it");
    m.abort_upload("p", 0, "u3", Some("storing failed")).await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, failed("u3", "storing failed"));

    m.begin_upload("p", 0, &upload("u4")).await.unwrap();
    assert!(m.complete_upload("p", 0, "u4", &ingested()).await.unwrap());
    let done = with(Upload::Done { start: upload("u4"), ingested: ingested() });
    assert_eq!(party_of(m, "p", 0).await, done);
    assert!(!m.complete_upload("p", 0, "u4", &ingested()).await.unwrap(), "a redelivered completion");
    let r = m.begin_upload("p", 0, &upload("u5")).await;
    assert!(matches!(r, Err(MetaError::Conflict(_))), "done: {r:?}");
    m.fail_upload("p", 0, "u4", "too late").await.unwrap();
    m.abort_upload("p", 0, "u4", None).await.unwrap();
    m.abort_upload("p", 0, "u4", Some("too late")).await.unwrap();
    m.reject_upload("p", 0, "u3", "an older upload").await.unwrap();
    m.reject_upload("p", 0, "other", "not ours").await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, done, "only a pending upload fails or aborts; only the done one is rejected");

    m.reject_upload("p", 0, "u4", "sizes differ").await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, failed("u4", "sizes differ"), "rejected: what ingestion found is dropped");
    m.reject_upload("p", 0, "u4", "again").await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, failed("u4", "sizes differ"), "a redelivered rejection");
    m.begin_upload("p", 0, &upload("u6")).await.unwrap();
    assert_eq!(party_of(m, "p", 0).await, pending("u6"));
    assert_eq!(party_of(m, "p", 1).await, party(1), "the other party is untouched");

    // Unknown projects and parties: nothing to change, nothing created.
    for (project_id, index) in [("zzz", 0), ("p", 7)] {
        m.abort_upload(project_id, index, "u6", None).await.unwrap();
        m.abort_upload(project_id, index, "u6", Some("storing failed")).await.unwrap();
        m.fail_upload(project_id, index, "u6", "bad base64").await.unwrap();
        m.reject_upload(project_id, index, "u6", "sizes differ").await.unwrap();
        assert!(!m.complete_upload(project_id, index, "u6", &ingested()).await.unwrap());
    }
    assert_eq!(m.get_project("zzz").await.unwrap(), None);
    let (_, parties) = m.get_project("p").await.unwrap().expect("the project");
    assert_eq!(parties.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 1], "no party 7 was created");
}

async fn concurrent_uploads_of_one_party_begin_once<M: MetaStore>(m: &M) {
    m.create_project(&project("p", T1), &[party(0), party(1)]).await.unwrap();
    let (first, second) = (upload("a"), upload("b"));
    let (a, b) = futures::join!(m.begin_upload("p", 0, &first), m.begin_upload("p", 0, &second));
    let winner = match (&a, &b) {
        (Ok(()), Err(MetaError::Conflict(_))) => "a",
        (Err(MetaError::Conflict(_)), Ok(())) => "b",
        _ => panic!("exactly one of two concurrent uploads begins, the other conflicts: {a:?}, {b:?}"),
    };
    assert_eq!(party_of(m, "p", 0).await.upload.upload_id(), Some(winner));
}

async fn runs_move_forward_only<M: MetaStore>(m: &M) {
    m.create_project(&project("p", T1), &[party(0), party(1)]).await.unwrap();
    let created = run("p", "r", T2);
    m.create_run(&created).await.unwrap();
    let r = m.create_run(&run("p", "r", T3)).await;
    assert!(matches!(r, Err(MetaError::Conflict(_))), "a second create of one run: {r:?}");
    let r = m.create_run(&run("zzz", "r", T3)).await;
    assert!(matches!(r, Err(MetaError::Conflict(_))), "a run of no project: {r:?}");
    m.create_run(&run("p", "older", T1)).await.unwrap();
    assert_eq!(m.get_run("p", "r").await.unwrap(), Some(created.clone()));
    assert_eq!(m.get_run("p", "zzz").await.unwrap(), None);
    assert_eq!(m.get_run_head("p", "r").await.unwrap(), Some(RunHead { state: RunState::Created, threshold: 0.85 }));
    assert_eq!(m.get_run_head("p", "zzz").await.unwrap(), None);
    let listed: Vec<String> = m.list_runs("p").await.unwrap().into_iter().map(|r| r.run_id).collect();
    assert_eq!(listed, ["older", "r"], "oldest first");

    let plan = RunPlan { shards_total: 2, total_comparisons: 1000, time_started: STARTED.into() };
    assert!(!m.start_run("p", "r", &plan).await.unwrap(), "not claimed yet");
    m.enter_output_stage("p", "r").await.unwrap();
    assert!(!m.complete_run("p", "r", COMPLETED).await.unwrap(), "not running");
    assert_eq!(m.get_run("p", "r").await.unwrap(), Some(created.clone()), "nothing moved");

    assert!(m.claim_run("p", "r").await.unwrap());
    assert!(!m.claim_run("p", "r").await.unwrap(), "claimed once");
    let queued = Run { state: RunState::Queued, stage: 2, ..created.clone() };
    assert_eq!(m.get_run("p", "r").await.unwrap(), Some(queued));
    assert!(m.start_run("p", "r", &plan).await.unwrap());
    assert!(!m.start_run("p", "r", &plan).await.unwrap(), "started once");
    let running = Run {
        state: RunState::Running,
        stage: 2,
        shards_total: 2,
        total_comparisons: 1000,
        time_started: Some(STARTED.into()),
        ..created.clone()
    };
    assert_eq!(m.get_run("p", "r").await.unwrap(), Some(running.clone()));
    assert!(!m.claim_run("p", "r").await.unwrap(), "no way back");

    // The permutation secret: the first draw is kept.
    assert_eq!(m.run_secret("p", "r", "first").await.unwrap().as_deref(), Some("first"));
    assert_eq!(m.run_secret("p", "r", "second").await.unwrap().as_deref(), Some("first"));
    assert_eq!(m.run_secret("p", "zzz", "fresh").await.unwrap(), None, "no run, no secret");

    m.enter_output_stage("p", "r").await.unwrap();
    m.enter_output_stage("p", "r").await.unwrap();
    assert_eq!(m.get_run("p", "r").await.unwrap().map(|r| (r.state, r.stage)), Some((RunState::Running, 3)));
    assert!(m.complete_run("p", "r", COMPLETED).await.unwrap());
    assert!(!m.complete_run("p", "r", T3).await.unwrap(), "completed once");
    assert!(!m.fail_run("p", "r", "late").await.unwrap(), "completed is final");
    let completed = Run { state: RunState::Completed, stage: 3, time_completed: Some(COMPLETED.into()), ..running };
    assert_eq!(m.get_run("p", "r").await.unwrap(), Some(completed));
    let counters = m.status_counters().await.unwrap();
    assert_eq!((counters.completed_comparisons, counters.completed_seconds), (1000, 2.5), "counted once");
    m.enter_output_stage("p", "r").await.unwrap();
    assert_eq!(m.get_run("p", "r").await.unwrap().map(|r| r.state), Some(RunState::Completed));

    assert!(m.fail_run("p", "older", "boom").await.unwrap());
    assert!(!m.fail_run("p", "older", "again").await.unwrap(), "error is final");
    assert!(!m.fail_run("p", "zzz", "boom").await.unwrap(), "no run");
    let failed = Run { state: RunState::Error, error: Some("boom".into()), ..run("p", "older", T1) };
    assert_eq!(m.get_run("p", "older").await.unwrap(), Some(failed));
    assert!(!m.claim_run("p", "older").await.unwrap(), "a failed run stays failed");
    assert_eq!(m.get_run_head("p", "older").await.unwrap().map(|h| h.state), Some(RunState::Error));
}

async fn shards_count_once_in_batches_and_redeliveries<M: MetaStore>(m: &M) {
    // Four shards: each counter holds at most one, so every counted shard fills its counter and
    // reads the run.
    let running = started_run(m, 4).await;
    let counted = |shards: &[u32]| Run {
        shards_done: shards.len() as u32,
        comparisons_done: shards.iter().map(|&s| tally(s).comparisons).sum(),
        candidate_count: shards.iter().map(|&s| tally(s).candidates).sum(),
        ..running.clone()
    };
    // A batch that carries a shard twice counts it once.
    let outcome = m.record_shards("p", "r", &[tally(0), tally(1), tally(0), tally(2)]).await.unwrap();
    assert_eq!(outcome.counted, [true, true, false, true]);
    assert_eq!(outcome.run, RunAfterShard::Read(counted(&[0, 1, 2])));
    // A batch with a redelivered shard counts the others, each once.
    // A failed run still counts its shards (compare's late results are harmless), and a batch
    // with a redelivered shard counts the others, each once.
    assert!(m.fail_run("p", "r", "boom").await.unwrap());
    let failed = |shards: &[u32]| Run { state: RunState::Error, error: Some("boom".into()), ..counted(shards) };
    let outcome = m.record_shards("p", "r", &[tally(2), tally(3)]).await.unwrap();
    assert_eq!(outcome.counted, [false, true]);
    assert_eq!(outcome.run, RunAfterShard::Read(failed(&[0, 1, 2, 3])));
    let twin = m.record_shard("p", "r", 3, 99, 99).await.unwrap();
    assert!(!twin.counted, "a redelivered shard");
    assert_eq!(twin.run, RunAfterShard::Read(failed(&[0, 1, 2, 3])), "a shard not counted reads the run");
    assert_eq!(m.counted_shards("p", "r").await.unwrap(), [0, 1, 2, 3]);
    let nothing = m.record_shards("p", "r", &[]).await.unwrap();
    assert_eq!((nothing.counted, nothing.run), (Vec::new(), RunAfterShard::Unread));

    // Counter 0 of a 200-shard run expects four shards (0, 64, 128, 192): one of them does not
    // make the run worth reading.
    m.create_run(&run("p", "big", T2)).await.unwrap();
    assert!(m.claim_run("p", "big").await.unwrap());
    let plan = RunPlan { shards_total: 200, total_comparisons: 1000, time_started: STARTED.into() };
    assert!(m.start_run("p", "big", &plan).await.unwrap());
    let first = m.record_shard("p", "big", 0, 5, 1).await.unwrap();
    assert!(first.counted);
    assert_eq!(first.run, RunAfterShard::Unread);
    // A run whose id starts with another's keeps its own counts.
    assert_eq!(m.get_run("p", "r").await.unwrap().map(|r| r.shards_done), Some(4));
    assert_eq!(m.get_run("p", "big").await.unwrap().map(|r| (r.shards_done, r.comparisons_done)), Some((1, 5)));

    // A run that did not start counts nothing.
    m.create_run(&run("p", "r2", T2)).await.unwrap();
    let early = m.record_shard("p", "r2", 0, 5, 1).await.unwrap();
    assert!(!early.counted, "not started");
    assert_eq!(early.run, RunAfterShard::Read(run("p", "r2", T2)));
    assert_eq!(m.counted_shards("p", "r2").await.unwrap(), Vec::<u32>::new());
}

async fn concurrent_transitions_happen_once<M: MetaStore>(m: &M) {
    m.create_project(&project("p", T1), &[party(0), party(1)]).await.unwrap();
    m.create_run(&run("p", "r", T1)).await.unwrap();
    let (a, b) = futures::join!(m.claim_run("p", "r"), m.claim_run("p", "r"));
    assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|&&claimed| claimed).count(), 1, "claimed once");
    // More shards than counters, so shards share counter items; shard 3 twice at once.
    let total = SHARD_COUNTERS + 6;
    let plan = RunPlan { shards_total: total, total_comparisons: 1000, time_started: STARTED.into() };
    let (a, b) = futures::join!(m.start_run("p", "r", &plan), m.start_run("p", "r", &plan));
    assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|&&started| started).count(), 1, "started once");
    let singles: Vec<[ShardTally; 1]> = (0..total).chain([3]).map(|s| [tally(s)]).collect();
    let outcomes = futures::future::join_all(singles.iter().map(|single| m.record_shards("p", "r", single))).await;
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.expect("record shard")).collect();
    let counted = outcomes.iter().filter(|o| o.counted == [true]).count();
    assert_eq!(counted, total as usize, "every shard once, the twin not");
    let all: Vec<u32> = (0..total).collect();
    let expected = (
        total,
        all.iter().map(|&s| tally(s).comparisons).sum::<u64>(),
        all.iter().map(|&s| tally(s).candidates).sum::<u64>(),
    );
    let r = m.get_run("p", "r").await.unwrap().unwrap();
    assert_eq!((r.shards_done, r.comparisons_done, r.candidate_count), expected);
    assert!(
        outcomes.iter().any(|o| o.run.run().is_some_and(|r| r.shards_done == total)),
        "the shard that completes the run reads it complete"
    );

    let (a, b) = futures::join!(m.complete_run("p", "r", COMPLETED), m.complete_run("p", "r", COMPLETED));
    assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|&&done| done).count(), 1, "completed once");
    assert_eq!(m.status_counters().await.unwrap().completed_comparisons, 1000, "counted once");
}

async fn deleted_runs_count_nothing_and_leave_nothing<M: MetaStore>(m: &M) {
    started_run(m, 4).await;
    assert!(m.record_shard("p", "r", 0, 5, 1).await.unwrap().counted);
    assert!(m.put_watch("p", &WatchTarget::Run("r".into()), &Watch { fingerprint: "f".into(), since_secs: 1, redrives: 0 }).await.unwrap());
    assert!(m.delete_run("p", "r").await.unwrap());
    assert!(!m.delete_run("p", "r").await.unwrap(), "deleted once");
    assert_eq!(m.get_run("p", "r").await.unwrap(), None);
    assert_eq!(m.get_run_head("p", "r").await.unwrap(), None);
    assert_eq!(m.list_runs("p").await.unwrap(), Vec::<Run>::new());
    assert_eq!(m.counted_shards("p", "r").await.unwrap(), Vec::<u32>::new(), "its shard markers went with it");
    assert_eq!(m.get_watch("p", &WatchTarget::Run("r".into())).await.unwrap(), None, "so did the watchdog's note");
    let late = m.record_shards("p", "r", &[tally(1), tally(2)]).await.unwrap();
    assert_eq!((late.counted, late.run), (vec![false, false], RunAfterShard::Deleted));
    assert!(!m.claim_run("p", "r").await.unwrap());
    assert!(!m.fail_run("p", "r", "late").await.unwrap());
    assert!(!m.complete_run("p", "r", COMPLETED).await.unwrap());
    assert_eq!(m.run_secret("p", "r", "fresh").await.unwrap(), None);
    // The id is free again, and the new run starts from nothing.
    m.create_run(&run("p", "r", T2)).await.unwrap();
    assert_eq!(m.get_run("p", "r").await.unwrap(), Some(run("p", "r", T2)));
}

async fn watches_note_only_what_exists<M: MetaStore>(m: &M) {
    started_run(m, 4).await;
    let run_target = WatchTarget::Run("r".into());
    let first = Watch { fingerprint: "2/4".into(), since_secs: 100, redrives: 0 };
    let later = Watch { fingerprint: "2/4".into(), since_secs: 100, redrives: 3 };
    assert_eq!(m.get_watch("p", &run_target).await.unwrap(), None);
    assert!(m.put_watch("p", &run_target, &first).await.unwrap());
    assert_eq!(m.get_watch("p", &run_target).await.unwrap(), Some(first.clone()));
    assert!(m.put_watch("p", &run_target, &later).await.unwrap());
    assert_eq!(m.get_watch("p", &run_target).await.unwrap(), Some(later.clone()));
    assert!(m.put_watch("p", &WatchTarget::Upload(1), &first).await.unwrap());
    assert_eq!(m.get_watch("p", &WatchTarget::Upload(1)).await.unwrap(), Some(first.clone()));
    assert_eq!(m.get_watch("p", &WatchTarget::Upload(0)).await.unwrap(), None, "one note per target");

    assert!(!m.put_watch("p", &WatchTarget::Run("zzz".into()), &first).await.unwrap(), "no such run");
    assert!(!m.put_watch("p", &WatchTarget::Upload(9), &first).await.unwrap(), "no such party");
    assert!(!m.put_watch("zzz", &run_target, &first).await.unwrap(), "no such project");
    assert_eq!(m.get_watch("p", &WatchTarget::Run("zzz".into())).await.unwrap(), None);
    // A note is not part of what the API reports.
    assert_eq!(m.get_run("p", "r").await.unwrap().map(|r| r.state), Some(RunState::Running));
    assert_eq!(party_of(m, "p", 1).await, party(1));
}

async fn a_project_being_deleted_answers_as_gone<M: MetaStore>(m: &M) {
    started_run(m, 4).await;
    assert!(m.record_shard("p", "r", 0, 5, 1).await.unwrap().counted);
    m.create_run(&run("p", "r2", T2)).await.unwrap();
    m.begin_upload("p", 0, &upload("u")).await.unwrap();
    let note = Watch { fingerprint: "f".into(), since_secs: 1, redrives: 0 };
    assert!(m.put_watch("p", &WatchTarget::Run("r".into()), &note).await.unwrap());
    assert!(m.mark_project_deleted("p").await.unwrap());

    assert_eq!(m.get_project("p").await.unwrap(), None);
    let r = m.begin_upload("p", 1, &upload("v")).await;
    assert!(matches!(r, Err(MetaError::NotFound(_))), "begin upload: {r:?}");
    assert!(!m.complete_upload("p", 0, "u", &ingested()).await.unwrap(), "complete upload");
    let r = m.create_run(&run("p", "r3", T3)).await;
    assert!(matches!(r, Err(MetaError::Conflict(_))), "create run: {r:?}");
    assert_eq!(m.list_runs("p").await.unwrap(), Vec::<Run>::new());
    assert_eq!(m.get_run("p", "r").await.unwrap(), None);
    assert_eq!(m.get_run_head("p", "r").await.unwrap(), None);
    assert!(!m.claim_run("p", "r2").await.unwrap(), "claim run");
    let late = m.record_shard("p", "r", 1, 5, 1).await.unwrap();
    assert_eq!((late.counted, late.run), (false, RunAfterShard::Deleted), "record shard");
    assert!(!m.complete_run("p", "r", COMPLETED).await.unwrap(), "complete run");
    assert!(!m.fail_run("p", "r", "late").await.unwrap(), "fail run");
    assert_eq!(m.run_secret("p", "r", "fresh").await.unwrap(), None, "run secret");
    assert!(!m.delete_run("p", "r2").await.unwrap(), "delete run");
    assert_eq!(m.counted_shards("p", "r").await.unwrap(), Vec::<u32>::new(), "counted shards");
    assert_eq!(m.get_watch("p", &WatchTarget::Run("r".into())).await.unwrap(), None, "get watch");
    assert!(!m.put_watch("p", &WatchTarget::Run("r".into()), &note).await.unwrap(), "put watch");
    assert_eq!(m.status_counters().await.unwrap(), StatusCounters::default(), "uncounted; nothing completed");
    m.purge_project("p").await.unwrap();
    assert_eq!(m.list_tombstones(10).await.unwrap(), Vec::<Tombstone>::new());
}

async fn writes_dynamodb_would_refuse_are_refused_and_write_nothing<M: MetaStore>(m: &M) {
    let too_long = "x".repeat(DYNAMODB_MAX_ITEM_BYTES);
    // A transaction over 100 items: the project, 99 parties and the `/status` counter.
    let parties: Vec<Party> = (0..99).map(party).collect();
    let r = m.create_project(&project("p", T1), &parties).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoTransaction { items: 101 }))), "{r:?}");
    let big = Project { schema: serde_json::json!(too_long), ..project("p", T1) };
    let r = m.create_project(&big, &parties[..2]).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    assert_eq!(m.get_project("p").await.unwrap(), None, "nothing written");
    assert_eq!(m.status_counters().await.unwrap(), StatusCounters::default(), "nothing counted");

    m.create_project(&project("p", T1), &parties[..98]).await.expect("100 items fit");
    let r = m.create_run(&Run { name: too_long.clone(), ..run("p", "r", T1) }).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    assert_eq!(m.get_run("p", "r").await.unwrap(), None, "nothing written");

    m.create_run(&run("p", "r", T1)).await.unwrap();
    let r = m.fail_run("p", "r", &too_long).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    assert_eq!(m.get_run("p", "r").await.unwrap(), Some(run("p", "r", T1)), "nothing written");
    // Refused before the state is looked at: the same answer for a run that is final already.
    m.create_run(&run("p", "failed", T1)).await.unwrap();
    assert!(m.fail_run("p", "failed", "boom").await.unwrap());
    let r = m.fail_run("p", "failed", &too_long).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    m.begin_upload("p", 0, &upload("u")).await.unwrap();
    let r = m.fail_upload("p", 0, "u", &too_long).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    let r = m.abort_upload("p", 0, "u", Some(&too_long)).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    // A message that fits alone but not with the rest of the party's item.
    let nearly = "x".repeat(DYNAMODB_MAX_ITEM_BYTES - 100);
    let r = m.fail_upload("p", 0, "u", &nearly).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    // Refused before the state is looked at: the same answer for an upload that is not pending.
    let r = m.fail_upload("p", 0, "other", &too_long).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    assert_eq!(party_of(m, "p", 0).await.upload, Upload::Pending(upload("u")), "nothing written");
    assert!(m.complete_upload("p", 0, "u", &ingested()).await.unwrap());
    let r = m.reject_upload("p", 0, "u", &too_long).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
    assert_eq!(party_of(m, "p", 0).await.upload, Upload::Done { start: upload("u"), ingested: ingested() }, "nothing written");

    // 50 shards on 50 counters: the project check, 50 markers and 50 counters.
    assert!(m.claim_run("p", "r").await.unwrap());
    let plan = RunPlan { shards_total: 50, total_comparisons: 1000, time_started: STARTED.into() };
    assert!(m.start_run("p", "r", &plan).await.expect("the run and its counters fit one transaction"));
    let batch: Vec<ShardTally> = (0..50).map(tally).collect();
    let r = m.record_shards("p", "r", &batch).await;
    assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoTransaction { items: 101 }))), "{r:?}");
    assert_eq!(m.counted_shards("p", "r").await.unwrap(), Vec::<u32>::new(), "nothing counted");
    assert_eq!(m.record_shards("p", "r", &batch[..49]).await.unwrap().counted, [true; 49]);
}
