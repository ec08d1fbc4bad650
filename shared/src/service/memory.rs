//! In-memory adapters for every port: the metadata store, an object store bucket, the work
//! queues and the credential issuer.
//!
//! They exist for unit tests of the API handlers and the pipeline, so they keep the exact
//! conditional semantics of the DynamoDB adapter (`aws::dynamo`): a transition that DynamoDB
//! guards with a condition expression is refused here under the same condition, with the same
//! `MetaError` or `false`. All state sits behind one mutex per adapter; clones share it.
//!
//! They are not kinder than AWS either: every request is checked against AWS's limits
//! ([`super::aws_limits`]: item and transaction sizes, PUT and part sizes, SQS batches), and the
//! metadata store can cancel transactions that touch the same item at the same time, as
//! DynamoDB does ([`ConflictInjection`]), with the DynamoDB adapter's in-process retries
//! ([`super::retry`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::aws_limits;
use super::pull_policy::{ClientCredentials, ClientEndpoint, ClientStoreAccess};
use super::model::{
    self, IngestedParty, Party, Project, ProjectSummary, Run, RunAfterShard, RunHead, RunPlan, RunState, SHARD_COUNTERS, ShardTally, ShardsOutcome, StatusCounters,
    Tombstone,
    Upload, UploadStart, Watch, WatchTarget,
};
use super::ports::{
    BlobError, BlobReader, BlobStore, ClientStoreOpener, CredentialError, CredentialIssuer, MetaError, Metadata, ProjectStore, QueueError, RunStore, ShardCounter,
    StatusStore, TombstoneStore, UploadStore, WatchStore,
    TemporaryCredentials, WorkQueue,
};
use super::table::{self, Attrs};
use super::{retry, time};

/// Locks a mutex, recovering the data if a panicking test thread poisoned it (the state itself
/// is always left consistent: every mutation below completes before the guard drops).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every port in memory (`Pipeline<MemoryPorts>`, `ApiState<MemoryPorts>`).
pub struct MemoryPorts;

impl super::ports::Ports for MemoryPorts {
    type Meta = MemoryMeta;
    type Work = MemoryBlobs;
    type Uploads = MemoryBlobs;
    type Queue = MemoryQueue;
    type ClientStores = MemoryClientStoreOpener;
    type Credentials = MemoryCredentials;
}

// ---- metadata ---------------------------------------------------------------------------------

#[derive(Debug)]
struct RunEntry {
    run: Run,
    /// Shard markers (DynamoDB: `SHARD#{rid}#{n}` items).
    counted_shards: BTreeSet<u32>,
    /// The run's shard counters, created when it starts (DynamoDB: `RUN#{rid}#COUNT#{k}` items);
    /// shard `n` counts on counter `n mod SHARD_COUNTERS`.
    counters: BTreeMap<u32, ShardCount>,
    /// The permutation secret (DynamoDB: the run item's `permutation_secret`).
    secret: Option<String>,
}

/// What one shard counter holds.
#[derive(Clone, Copy, Debug, Default)]
struct ShardCount {
    /// Shards this counter counts in all ([`model::shards_on_counter`]), set at start.
    expected: u32,
    shards: u32,
    comparisons: u64,
    candidates: u64,
}

fn count_shard(r: &mut RunEntry, s: &ShardTally) {
    if let Some(c) = r.counters.get_mut(&(s.shard % SHARD_COUNTERS)) {
        c.shards += 1;
        c.comparisons += s.comparisons;
        c.candidates += s.candidates;
    }
    r.counted_shards.insert(s.shard);
}

impl RunEntry {
    /// The run as readers see it: the run item plus its counters (as the DynamoDB adapter folds
    /// them).
    fn folded(&self) -> Run {
        let mut run = self.run.clone();
        for c in self.counters.values() {
            run.shards_done += c.shards;
            run.comparisons_done += c.comparisons;
            run.candidate_count += c.candidates;
        }
        run
    }
}

#[derive(Debug)]
struct ProjectEntry {
    project: Project,
    parties: Vec<Party>,
    runs: BTreeMap<String, RunEntry>,
    /// The watchdog's notes (DynamoDB: `watch_*` attributes of the run and party items).
    watches: BTreeMap<WatchTarget, Watch>,
    /// Being deleted: invisible to every read, kept until `purge_project`; when (Unix seconds).
    deleted: bool,
    deleted_secs: u64,
}

#[derive(Debug, Default)]
struct MetaTables {
    projects: BTreeMap<String, ProjectEntry>,
    /// Projects whose reads fail (a corrupt item), for the watchdog's tests.
    poisoned: BTreeSet<String>,
    project_count: u64,
    completed_comparisons: u64,
    completed_micros: u64,
}

impl MetaTables {
    fn live_project_mut(&mut self, project_id: &str) -> Option<&mut ProjectEntry> {
        self.projects.get_mut(project_id).filter(|p| !p.deleted)
    }
    fn live_run_mut(&mut self, project_id: &str, run_id: &str) -> Option<&mut RunEntry> {
        self.live_project_mut(project_id)?.runs.get_mut(run_id)
    }
    fn party_mut(&mut self, project_id: &str, party: u32) -> Option<&mut Party> {
        self.live_project_mut(project_id)?.parties.iter_mut().find(|p| p.index == party)
    }
}

/// When [`MemoryMeta`] cancels transactions with `TransactionConflict`, as DynamoDB cancels a
/// transaction that touches an item another transaction is changing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConflictInjection {
    /// Never (the default).
    #[default]
    Off,
    /// Each transaction holds its items for `hold` before it commits; one that touches an item
    /// held by another is cancelled. Concurrent transactions on one item (shards of a run
    /// finishing together) then really conflict, deterministically for overlapping calls.
    Overlapping { hold: Duration },
    /// Every transaction is cancelled: contention that outlasts the in-process retries.
    Always,
}

#[derive(Debug, Default)]
struct Conflicts {
    mode: ConflictInjection,
    /// Items (`pk/sk`) held by transactions in progress, with how many hold each.
    held: BTreeMap<String, usize>,
    injected: u64,
}

/// Releases a transaction's items when it commits or is dropped halfway.
struct Holding {
    conflicts: Arc<Mutex<Conflicts>>,
    items: Vec<String>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut c = lock(&self.conflicts);
        for item in &self.items {
            if let Some(count) = c.held.get_mut(item) {
                *count -= 1;
                if *count == 0 {
                    c.held.remove(item);
                }
            }
        }
    }
}

/// The name of an item in a transaction (DynamoDB's key), for conflict detection.
fn item_name(pk: String, sk: String) -> String {
    format!("{pk}/{sk}")
}

/// Refuses an item DynamoDB would refuse (over 400 KB as DynamoDB counts).
fn fits(item: &Attrs) -> Result<(), MetaError> {
    Ok(table::check_item(item)?)
}

/// [`MetaStore`] in memory, with DynamoDB's conditional semantics.
#[derive(Clone, Debug, Default)]
pub struct MemoryMeta {
    tables: Arc<Mutex<MetaTables>>,
    conflicts: Arc<Mutex<Conflicts>>,
}

impl MemoryMeta {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, cancels transactions as `mode` says.
    pub fn inject_conflicts(&self, mode: ConflictInjection) {
        lock(&self.conflicts).mode = mode;
    }

    /// How many transactions were cancelled with an injected conflict so far.
    pub fn conflicts_injected(&self) -> u64 {
        lock(&self.conflicts).injected
    }

    /// Runs one transaction on `items` (their names, [`item_name`]) as the DynamoDB adapter runs
    /// TransactWriteItems: at most 100 items, conflicts (when injected) retried in process.
    async fn transaction<T: Send>(
        &self,
        op: &str,
        items: &[String],
        apply: impl Fn(&mut MetaTables) -> Result<T, MetaError> + Send + Sync,
    ) -> Result<T, MetaError> {
        aws_limits::check_dynamo_transaction(items.len())?;
        let apply = &apply;
        retry::on_conflict(op, || self.attempt(op, items, apply)).await
    }

    async fn attempt<T>(
        &self,
        op: &str,
        items: &[String],
        apply: &(impl Fn(&mut MetaTables) -> Result<T, MetaError> + Sync),
    ) -> Result<T, MetaError> {
        let holding = {
            let mut c = lock(&self.conflicts);
            match c.mode {
                ConflictInjection::Off => None,
                ConflictInjection::Always => {
                    c.injected += 1;
                    return Err(MetaError::TransactionConflict(format!("{op}: injected (always)")));
                }
                ConflictInjection::Overlapping { hold } => {
                    if let Some(busy) = items.iter().find(|i| c.held.contains_key(*i)) {
                        c.injected += 1;
                        return Err(MetaError::TransactionConflict(format!("{op}: {busy} is in another transaction")));
                    }
                    for item in items {
                        *c.held.entry(item.clone()).or_default() += 1;
                    }
                    Some((Holding { conflicts: self.conflicts.clone(), items: items.to_vec() }, hold))
                }
            }
        };
        if let Some((_, hold)) = &holding {
            tokio::time::sleep(*hold).await;
        }
        let result = apply(&mut lock(&self.tables));
        drop(holding);
        result
    }

    /// Every later read of the project fails with a backend error, as a corrupt item does.
    pub fn poison(&self, project_id: &str) {
        lock(&self.tables).poisoned.insert(project_id.to_string());
    }

    /// Whether any item of the project remains (deleted-but-not-purged counts), for tests of
    /// the purge path.
    pub fn has_project_items(&self, project_id: &str) -> bool {
        lock(&self.tables).projects.contains_key(project_id)
    }
}

impl ProjectStore for MemoryMeta {
    async fn create_project(&self, project: &Project, parties: &[Party]) -> Result<(), MetaError> {
        fits(&table::project_item(project))?;
        for p in parties {
            fits(&table::party_item(&project.project_id, p))?;
        }
        let mut items = vec![project_item_name(&project.project_id)];
        items.extend(parties.iter().map(|p| party_item_name(&project.project_id, p.index)));
        items.push(stats_item_name());
        // Read back by index, as the DynamoDB adapter's query returns them (sort key order).
        let mut parties = parties.to_vec();
        parties.sort_by_key(|p| p.index);
        self.transaction("create project", &items, |t| {
            if t.projects.contains_key(&project.project_id) {
                return Err(MetaError::Conflict(format!("project {} already exists", project.project_id)));
            }
            t.projects.insert(
                project.project_id.clone(),
                ProjectEntry {
                    project: project.clone(),
                    parties: parties.clone(),
                    runs: BTreeMap::new(),
                    watches: BTreeMap::new(),
                    deleted: false,
                    deleted_secs: 0,
                },
            );
            t.project_count += 1;
            Ok(())
        })
        .await
    }

    async fn list_projects(&self) -> Result<Vec<ProjectSummary>, MetaError> {
        let t = lock(&self.tables);
        let mut out: Vec<ProjectSummary> = t
            .projects
            .values()
            .filter(|p| !p.deleted)
            .map(|p| ProjectSummary { project_id: p.project.project_id.clone(), time_added: p.project.time_added.clone() })
            .collect();
        // The GSI sort key is `time_added#project_id`: oldest first, ties by id.
        out.sort_by(|a, b| (&a.time_added, &a.project_id).cmp(&(&b.time_added, &b.project_id)));
        Ok(out)
    }

    async fn list_projects_page(&self, after: Option<&str>, limit: usize) -> Result<(Vec<ProjectSummary>, Option<String>), MetaError> {
        let all = self.list_projects().await?;
        let page: Vec<ProjectSummary> =
            all.into_iter().filter(|p| after.is_none_or(|a| p.cursor().as_str() > a)).take(limit).collect();
        let next = (page.len() == limit).then(|| page.last().map(ProjectSummary::cursor)).flatten();
        Ok((page, next))
    }

    async fn get_project(&self, project_id: &str) -> Result<Option<(Project, Vec<Party>)>, MetaError> {
        let t = lock(&self.tables);
        if t.poisoned.contains(project_id) {
            return Err(MetaError::Backend(format!("item P#{project_id} has a missing or malformed schema")));
        }
        Ok(t.projects.get(project_id).filter(|p| !p.deleted).map(|p| (p.project.clone(), p.parties.clone())))
    }

    async fn mark_project_deleted(&self, project_id: &str) -> Result<bool, MetaError> {
        let items = [project_item_name(project_id), stats_item_name()];
        self.transaction("mark project deleted", &items, |t| {
            let Some(entry) = t.live_project_mut(project_id) else { return Ok(false) };
            entry.deleted = true;
            entry.deleted_secs = time::now_secs();
            t.project_count = t.project_count.saturating_sub(1);
            Ok(true)
        })
        .await
    }
}

impl TombstoneStore for MemoryMeta {
    async fn list_tombstones(&self, limit: usize) -> Result<Vec<Tombstone>, MetaError> {
        let t = lock(&self.tables);
        let mut out: Vec<Tombstone> = t
            .projects
            .values()
            .filter(|p| p.deleted)
            .map(|p| Tombstone { project_id: p.project.project_id.clone(), deleted_secs: p.deleted_secs })
            .collect();
        out.sort_by(|a, b| (a.deleted_secs, &a.project_id).cmp(&(b.deleted_secs, &b.project_id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn purge_project(&self, project_id: &str) -> Result<(), MetaError> {
        lock(&self.tables).projects.remove(project_id);
        Ok(())
    }
}

impl UploadStore for MemoryMeta {
    async fn begin_upload(&self, project_id: &str, party: u32, upload: &UploadStart) -> Result<(), MetaError> {
        let items = [project_item_name(project_id), party_item_name(project_id, party)];
        self.transaction("begin upload", &items, |t| {
            let entry = t.live_project_mut(project_id).ok_or_else(|| MetaError::NotFound(format!("project {project_id}")))?;
            let p = entry
                .parties
                .iter_mut()
                .find(|p| p.index == party)
                .ok_or_else(|| MetaError::NotFound(format!("party {party} of project {project_id}")))?;
            if !p.upload.may_begin() {
                return Err(MetaError::Conflict(format!("party {party} upload is {}", p.upload.state().as_str())));
            }
            p.upload = Upload::Pending(upload.clone());
            Ok(())
        })
        .await
    }

    async fn abort_upload(&self, project_id: &str, party: u32, upload_id: &str, error: Option<&str>) -> Result<(), MetaError> {
        if let Some(message) = error {
            table::check_upload_error(project_id, party, upload_id, message)?;
        }
        let mut t = lock(&self.tables);
        if let Some(p) = t.party_mut(project_id, party)
            && let Some(start) = p.upload.pending(upload_id)
        {
            p.upload = match error {
                Some(message) => Upload::Error { start: start.clone(), message: message.into() },
                None => Upload::NotStarted,
            };
        }
        Ok(())
    }

    async fn complete_upload(&self, project_id: &str, party: u32, upload_id: &str, ingested: &IngestedParty) -> Result<bool, MetaError> {
        let mut t = lock(&self.tables);
        if let Some(p) = t.party_mut(project_id, party)
            && let Some(start) = p.upload.pending(upload_id)
        {
            p.upload = Upload::Done { start: start.clone(), ingested: ingested.clone() };
            return Ok(true);
        }
        Ok(false)
    }

    async fn reject_upload(&self, project_id: &str, party: u32, upload_id: &str, message: &str) -> Result<(), MetaError> {
        table::check_upload_error(project_id, party, upload_id, message)?;
        let mut t = lock(&self.tables);
        if let Some(p) = t.party_mut(project_id, party)
            && let Upload::Done { start, .. } = &p.upload
            && start.upload_id == upload_id
        {
            p.upload = Upload::Error { start: start.clone(), message: message.into() };
        }
        Ok(())
    }

    async fn fail_upload(&self, project_id: &str, party: u32, upload_id: &str, message: &str) -> Result<(), MetaError> {
        table::check_upload_error(project_id, party, upload_id, message)?;
        let mut t = lock(&self.tables);
        if let Some(p) = t.party_mut(project_id, party)
            && let Some(start) = p.upload.pending(upload_id)
        {
            p.upload = Upload::Error { start: start.clone(), message: message.into() };
        }
        Ok(())
    }
}

impl RunStore for MemoryMeta {
    async fn create_run(&self, run: &Run) -> Result<(), MetaError> {
        fits(&table::run_item(run))?;
        let items = [project_item_name(&run.project_id), run_item_name(&run.project_id, &run.run_id)];
        self.transaction("create run", &items, |t| {
            let entry = t
                .live_project_mut(&run.project_id)
                .ok_or_else(|| MetaError::Conflict(format!("project {} is gone", run.project_id)))?;
            if entry.runs.contains_key(&run.run_id) {
                return Err(MetaError::Conflict(format!("run {} already exists", run.run_id)));
            }
            entry.runs.insert(run.run_id.clone(), RunEntry { run: run.clone(), counted_shards: BTreeSet::new(), counters: BTreeMap::new(), secret: None });
            Ok(())
        })
        .await
    }

    async fn list_runs(&self, project_id: &str) -> Result<Vec<Run>, MetaError> {
        let t = lock(&self.tables);
        let Some(entry) = t.projects.get(project_id).filter(|p| !p.deleted) else { return Ok(Vec::new()) };
        let mut runs: Vec<Run> = entry.runs.values().map(RunEntry::folded).collect();
        runs.sort_by(|a, b| (&a.time_added, &a.run_id).cmp(&(&b.time_added, &b.run_id)));
        Ok(runs)
    }

    async fn get_run(&self, project_id: &str, run_id: &str) -> Result<Option<Run>, MetaError> {
        let mut t = lock(&self.tables);
        Ok(t.live_run_mut(project_id, run_id).map(|r| r.folded()))
    }

    async fn get_run_head(&self, project_id: &str, run_id: &str) -> Result<Option<RunHead>, MetaError> {
        let mut t = lock(&self.tables);
        Ok(t.live_run_mut(project_id, run_id).map(|r| RunHead { state: r.run.state, threshold: r.run.threshold }))
    }

    async fn delete_run(&self, project_id: &str, run_id: &str) -> Result<bool, MetaError> {
        let mut t = lock(&self.tables);
        let Some(entry) = t.live_project_mut(project_id) else { return Ok(false) };
        entry.watches.remove(&WatchTarget::Run(run_id.to_string()));
        Ok(entry.runs.remove(run_id).is_some())
    }

    async fn claim_run(&self, project_id: &str, run_id: &str) -> Result<bool, MetaError> {
        let items = [project_item_name(project_id), run_item_name(project_id, run_id)];
        self.transaction("claim run", &items, |t| match t.live_run_mut(project_id, run_id) {
            Some(r) if r.run.state == RunState::Created => {
                r.run.state = RunState::Queued;
                r.run.stage = 2;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn start_run(&self, project_id: &str, run_id: &str, plan: &RunPlan) -> Result<bool, MetaError> {
        // DynamoDB: [project is live, run Queued -> Running, put each shard counter]: 66 items.
        let mut items = vec![project_item_name(project_id), run_item_name(project_id, run_id)];
        items.extend((0..SHARD_COUNTERS).map(|k| item_name(table::project_pk(project_id), table::counter_sk(run_id, k))));
        self.transaction("start run", &items, |t| match t.live_run_mut(project_id, run_id) {
            Some(r) if r.run.state == RunState::Queued => {
                r.run.state = RunState::Running;
                r.run.stage = 2;
                r.run.shards_total = plan.shards_total;
                r.run.total_comparisons = plan.total_comparisons;
                r.run.time_started = Some(plan.time_started.clone());
                r.counters = (0..SHARD_COUNTERS)
                    .map(|k| (k, ShardCount { expected: model::shards_on_counter(plan.shards_total, k), ..ShardCount::default() }))
                    .collect();
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn enter_output_stage(&self, project_id: &str, run_id: &str) -> Result<(), MetaError> {
        let mut t = lock(&self.tables);
        if let Some(r) = t.live_run_mut(project_id, run_id)
            && r.run.state == RunState::Running
            && r.run.stage == 2
        {
            r.run.stage = 3;
        }
        Ok(())
    }

    async fn complete_run(&self, project_id: &str, run_id: &str, time_completed: &str) -> Result<bool, MetaError> {
        let items = [run_item_name(project_id, run_id), stats_item_name()];
        self.transaction("complete run", &items, |t| {
            let Some(r) = t.live_run_mut(project_id, run_id) else { return Ok(false) };
            if r.run.state != RunState::Running {
                return Ok(false);
            }
            r.run.state = RunState::Completed;
            r.run.time_completed = Some(time_completed.to_string());
            let comparisons = r.run.total_comparisons;
            let micros = compute_micros(r.run.time_started.as_deref(), time_completed);
            t.completed_comparisons += comparisons;
            t.completed_micros += micros;
            Ok(true)
        })
        .await
    }

    async fn fail_run(&self, project_id: &str, run_id: &str, message: &str) -> Result<bool, MetaError> {
        table::check_run_error(project_id, run_id, message)?;
        let mut t = lock(&self.tables);
        match t.live_run_mut(project_id, run_id) {
            Some(r) if !r.run.state.is_final() => {
                let mut failed = r.run.clone();
                failed.state = RunState::Error;
                failed.error = Some(message.to_string());
                fits(&table::run_item(&failed))?;
                r.run = failed;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn run_secret(&self, project_id: &str, run_id: &str, fresh: &str) -> Result<Option<String>, MetaError> {
        let mut t = lock(&self.tables);
        let Some(entry) = t.live_run_mut(project_id, run_id) else { return Ok(None) };
        Ok(Some(entry.secret.get_or_insert_with(|| fresh.to_string()).clone()))
    }
}

impl ShardCounter for MemoryMeta {
    async fn record_shards(&self, project_id: &str, run_id: &str, shards: &[ShardTally]) -> Result<ShardsOutcome, MetaError> {
        // DynamoDB: one transaction of [project is live, put each marker if absent, add to each
        // counter `shard mod K` if it exists]; if any condition fails, one such transaction per
        // shard. The run item is not written (no hot item), so a failed run still counts. Then,
        // as there: the counters are read, and the whole run only when one wants it read.
        let pk = table::project_pk(project_id);
        let batch = model::distinct_shards(shards);
        let mut counted = vec![false; shards.len()];
        let counters: BTreeMap<u32, Vec<&ShardTally>> = batch.iter().fold(BTreeMap::new(), |mut m, (_, t)| {
            m.entry(t.shard % SHARD_COUNTERS).or_insert_with(Vec::new).push(*t);
            m
        });
        let mut items = vec![project_item_name(project_id)];
        items.extend(batch.iter().map(|(_, t)| item_name(pk.clone(), table::shard_sk(run_id, t.shard))));
        items.extend(counters.keys().map(|&k| item_name(pk.clone(), table::counter_sk(run_id, k))));
        let all = self
            .transaction("record shards", &items, |t| {
                let Some(r) = t.live_run_mut(project_id, run_id) else { return Ok(false) };
                let fits = batch.iter().all(|(_, s)| r.counters.contains_key(&(s.shard % SHARD_COUNTERS)) && !r.counted_shards.contains(&s.shard));
                if fits {
                    for (_, s) in &batch {
                        count_shard(r, s);
                    }
                }
                Ok(fits)
            })
            .await?;
        let mut touched: BTreeMap<u32, u64> = BTreeMap::new();
        if all {
            for (i, s) in &batch {
                counted[*i] = true;
                *touched.entry(s.shard % SHARD_COUNTERS).or_default() += 1;
            }
        } else if batch.len() > 1 {
            for (i, s) in &batch {
                let k = s.shard % SHARD_COUNTERS;
                let items = [project_item_name(project_id), item_name(pk.clone(), table::shard_sk(run_id, s.shard)), item_name(pk.clone(), table::counter_sk(run_id, k))];
                counted[*i] = self
                    .transaction("record shard", &items, |t| {
                        let Some(r) = t.live_run_mut(project_id, run_id) else { return Ok(false) };
                        let fits = r.counters.contains_key(&k) && !r.counted_shards.contains(&s.shard);
                        if fits {
                            count_shard(r, s);
                        }
                        Ok(fits)
                    })
                    .await?;
                if counted[*i] {
                    *touched.entry(k).or_default() += 1;
                }
            }
        }
        let mut t = lock(&self.tables);
        let Some(r) = t.live_run_mut(project_id, run_id) else { return Ok(ShardsOutcome { counted, run: RunAfterShard::Deleted }) };
        let read = counted.iter().filter(|&&c| c).count() < batch.len()
            || touched.iter().any(|(k, &added)| {
                r.counters.get(k).is_none_or(|c| model::counter_wants_run_read(u64::from(c.shards), added, u64::from(c.expected)))
            });
        let run = if read { RunAfterShard::Read(r.folded()) } else { RunAfterShard::Unread };
        Ok(ShardsOutcome { counted, run })
    }

    async fn counted_shards(&self, project_id: &str, run_id: &str) -> Result<Vec<u32>, MetaError> {
        let mut t = lock(&self.tables);
        Ok(t.live_run_mut(project_id, run_id).map(|r| r.counted_shards.iter().copied().collect()).unwrap_or_default())
    }
}

impl WatchStore for MemoryMeta {
    async fn get_watch(&self, project_id: &str, target: &WatchTarget) -> Result<Option<Watch>, MetaError> {
        let mut t = lock(&self.tables);
        Ok(t.live_project_mut(project_id).and_then(|p| p.watches.get(target).cloned()))
    }

    async fn put_watch(&self, project_id: &str, target: &WatchTarget, watch: &Watch) -> Result<bool, MetaError> {
        let mut t = lock(&self.tables);
        let Some(entry) = t.live_project_mut(project_id) else { return Ok(false) };
        let exists = match target {
            WatchTarget::Run(run_id) => entry.runs.contains_key(run_id),
            WatchTarget::Upload(party) => entry.parties.iter().any(|p| p.index == *party),
        };
        if exists {
            let mut item = table::key(table::project_pk(project_id), table::watch_sk(target));
            item.extend(table::watch_attrs(watch).map(|(name, value)| (name.to_string(), value)));
            fits(&item)?;
            entry.watches.insert(target.clone(), watch.clone());
        }
        Ok(exists)
    }
}

impl StatusStore for MemoryMeta {
    async fn status_counters(&self) -> Result<StatusCounters, MetaError> {
        let t = lock(&self.tables);
        Ok(StatusCounters {
            project_count: t.project_count,
            completed_comparisons: t.completed_comparisons,
            completed_seconds: t.completed_micros as f64 / 1e6,
        })
    }
}

fn project_item_name(project_id: &str) -> String {
    item_name(table::project_pk(project_id), table::PROJECT_SK.into())
}
fn party_item_name(project_id: &str, party: u32) -> String {
    item_name(table::project_pk(project_id), table::party_sk(party))
}
fn run_item_name(project_id: &str, run_id: &str) -> String {
    item_name(table::project_pk(project_id), table::run_sk(run_id))
}
fn stats_item_name() -> String {
    item_name(table::STATS.into(), table::STATS.into())
}

/// Microseconds a run computed for (`time_started` → `time_completed`); 0 when unknown.
/// Shared with the DynamoDB adapter so `/status`'s rate is the same everywhere.
pub(crate) fn compute_micros(time_started: Option<&str>, time_completed: &str) -> u64 {
    match (time_started.and_then(time::parse_iso), time::parse_iso(time_completed)) {
        (Some(start), Some(end)) if end > start => (end - start) as u64,
        _ => 0,
    }
}

// ---- object store -----------------------------------------------------------------------------

/// An unfinished multipart upload: its key and the parts stored so far, by number.
type PendingMultipart = (String, BTreeMap<u32, Bytes>);

#[derive(Debug, Default)]
struct BlobInner {
    objects: Mutex<BTreeMap<String, (Bytes, Metadata)>>,
    /// Unfinished multipart uploads by upload id.
    multipart: Mutex<BTreeMap<String, PendingMultipart>>,
    multipart_started: AtomicU64,
    /// Makes every `put` fail, to test what callers do when storing fails.
    failing_puts: AtomicBool,
    /// Makes every read fail (as a throttled or unreachable store does).
    failing_reads: AtomicBool,
    /// How many `delete_prefix` calls still fail (DeleteObjects' per-key errors).
    failing_prefix_deletes: AtomicU64,
    /// Work another invocation finishes just before the next `list` answers.
    before_next_list: BeforeList,
}

type Interleaved = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct BeforeList(Mutex<Option<Interleaved>>);

impl std::fmt::Debug for BeforeList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeList")
    }
}

/// [`BlobStore`] in memory: one bucket.
#[derive(Clone, Debug, Default)]
pub struct MemoryBlobs {
    inner: Arc<BlobInner>,
}

impl MemoryBlobs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.inner.objects).keys().cloned().collect()
    }

    /// The object at `key`, if any (a synchronous peek for assertions).
    pub fn object(&self, key: &str) -> Option<(Bytes, Metadata)> {
        lock(&self.inner.objects).get(key).cloned()
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn unfinished_multipart_uploads(&self) -> usize {
        lock(&self.inner.multipart).len()
    }

    /// While set, `put` answers a backend error.
    /// Runs `work` (another invocation's, e.g. a twin's, to its end) once, just before the
    /// next `list` answers: the interleaving that makes a caller's earlier check stale by the
    /// time it lists.
    pub fn before_next_list(&self, work: impl FnOnce() + Send + 'static) {
        *lock(&self.inner.before_next_list.0) = Some(Box::new(work));
    }

    pub fn fail_puts(&self, failing: bool) {
        self.inner.failing_puts.store(failing, Ordering::SeqCst);
    }

    /// While set, `get`, `get_range` and `head` answer a backend error (S3's `SlowDown` after
    /// the SDK's retries, or a store that is down).
    pub fn fail_reads(&self, failing: bool) {
        self.inner.failing_reads.store(failing, Ordering::SeqCst);
    }

    /// The next `times` calls of `delete_prefix` fail, deleting nothing.
    pub fn fail_prefix_deletes(&self, times: u64) {
        self.inner.failing_prefix_deletes.store(times, Ordering::SeqCst);
    }

    fn check_read(&self, key: &str) -> Result<(), BlobError> {
        if self.inner.failing_reads.load(Ordering::SeqCst) {
            return Err(BlobError::Backend(format!("injected failure reading {key}: SlowDown")));
        }
        Ok(())
    }
}

impl BlobReader for MemoryBlobs {
    async fn get(&self, key: &str) -> Result<(Bytes, Metadata), BlobError> {
        self.check_read(key)?;
        lock(&self.inner.objects).get(key).cloned().ok_or_else(|| BlobError::NotFound(key.to_string()))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.check_read(key)?;
        let objects = lock(&self.inner.objects);
        let (body, _) = objects.get(key).ok_or_else(|| BlobError::NotFound(key.to_string()))?;
        let len = body.len() as u64;
        // S3 answers 416 for a range starting past the end, and truncates one ending past it.
        if range.start >= range.end || (range.start >= len && len > 0) {
            return Err(BlobError::Backend(format!("invalid range {range:?} of {key} ({len} bytes)")));
        }
        let end = range.end.min(len);
        Ok(body.slice(range.start.min(len) as usize..end as usize))
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, Metadata)>, BlobError> {
        self.check_read(key)?;
        Ok(lock(&self.inner.objects).get(key).map(|(b, m)| (b.len() as u64, m.clone())))
    }
}

impl BlobStore for MemoryBlobs {
    async fn put(&self, key: &str, body: Bytes, metadata: &Metadata) -> Result<(), BlobError> {
        if self.inner.failing_puts.load(Ordering::SeqCst) {
            return Err(BlobError::Backend(format!("injected failure storing {key}")));
        }
        aws_limits::check_s3_put(key, body.len() as u64)?;
        lock(&self.inner.objects).insert(key.to_string(), (body, metadata.clone()));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        // S3 deletes are idempotent: deleting a missing key succeeds.
        lock(&self.inner.objects).remove(key);
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        let failing = &self.inner.failing_prefix_deletes;
        if failing.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(BlobError::Backend(format!("injected failure deleting {prefix}: AccessDenied")));
        }
        let mut objects = lock(&self.inner.objects);
        let doomed: Vec<String> = objects.range(prefix.to_string()..).map(|(k, _)| k).take_while(|k| k.starts_with(prefix)).cloned().collect();
        for k in &doomed {
            objects.remove(k);
        }
        Ok(doomed.len() as u64)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let interleaved = lock(&self.inner.before_next_list.0).take();
        if let Some(work) = interleaved {
            work();
        }
        let objects = lock(&self.inner.objects);
        Ok(objects.range(prefix.to_string()..).map(|(k, _)| k).take_while(|k| k.starts_with(prefix)).cloned().collect())
    }

    async fn presign_get(&self, key: &str, ttl_secs: u64) -> Result<String, BlobError> {
        Ok(format!("https://memory.invalid/{key}?expires={ttl_secs}"))
    }

    async fn start_multipart(&self, key: &str) -> Result<String, BlobError> {
        let id = format!("upload-{}", self.inner.multipart_started.fetch_add(1, Ordering::SeqCst) + 1);
        lock(&self.inner.multipart).insert(id.clone(), (key.to_string(), BTreeMap::new()));
        Ok(id)
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: u32, body: Bytes) -> Result<String, BlobError> {
        if self.inner.failing_puts.load(Ordering::SeqCst) {
            return Err(BlobError::Backend(format!("injected failure storing part {number} of {key}")));
        }
        aws_limits::check_s3_part(key, number, body.len() as u64)?;
        let mut uploads = lock(&self.inner.multipart);
        match uploads.get_mut(upload_id) {
            Some((k, parts)) if k.as_str() == key => {
                parts.insert(number, body);
                Ok(format!("etag-{number}"))
            }
            _ => Err(BlobError::NotFound(format!("{key} (multipart upload {upload_id})"))),
        }
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u32, String)]) -> Result<(), BlobError> {
        let (k, stored) = lock(&self.inner.multipart)
            .remove(upload_id)
            .ok_or_else(|| BlobError::NotFound(format!("{key} (multipart upload {upload_id})")))?;
        if k != key || parts.is_empty() {
            return Err(BlobError::Backend(format!("{key}: completing multipart upload {upload_id} with no parts")));
        }
        let chosen = parts
            .iter()
            .map(|(number, _)| stored.get(number).map(|part| (*number, part)).ok_or_else(|| BlobError::Backend(format!("{key}: part {number} was never uploaded"))))
            .collect::<Result<Vec<_>, _>>()?;
        let sizes: Vec<(u32, u64)> = chosen.iter().map(|(number, part)| (*number, part.len() as u64)).collect();
        aws_limits::check_s3_parts(key, &sizes)?;
        let mut body = Vec::new();
        for (_, part) in chosen {
            body.extend_from_slice(part);
        }
        lock(&self.inner.objects).insert(key.to_string(), (Bytes::from(body), Vec::new()));
        Ok(())
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), BlobError> {
        lock(&self.inner.multipart).remove(upload_id);
        Ok(())
    }
}

// ---- stores that clients name ----------------------------------------------------------------

/// [`ClientStoreOpener`] over in-memory buckets, one per (endpoint URL, bucket). Records the
/// credentials each open was given, for assertions.
#[derive(Clone, Default)]
pub struct MemoryClientStoreOpener {
    buckets: Arc<Mutex<BTreeMap<(String, String), MemoryBlobs>>>,
    opened_with: Arc<Mutex<Vec<ClientCredentials>>>,
}

impl MemoryClientStoreOpener {
    /// The bucket `bucket` of the store at `url` (e.g. `https://store.example.com`).
    pub fn bucket(&self, url: &str, bucket: &str) -> MemoryBlobs {
        lock(&self.buckets).entry((url.to_string(), bucket.to_string())).or_default().clone()
    }

    /// The credentials of every open so far, in order.
    pub fn opened_with(&self) -> Vec<ClientCredentials> {
        lock(&self.opened_with).clone()
    }
}

impl ClientStoreOpener for MemoryClientStoreOpener {
    type Reader = MemoryBlobs;
    fn open(&self, endpoint: &ClientEndpoint, store: &ClientStoreAccess, bucket: &str) -> Result<MemoryBlobs, BlobError> {
        lock(&self.opened_with).push(store.credentials.clone());
        Ok(self.bucket(&endpoint.url(), bucket))
    }
}

// ---- queues -----------------------------------------------------------------------------------

/// A ChangeMessageVisibility request, as [`MemoryQueue`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisibilityChange {
    pub queue_url: String,
    pub receipt_handle: String,
    pub visibility_secs: u32,
}

/// [`WorkQueue`] that records what was sent, per queue URL, in order; sends in the
/// SendMessageBatch requests SQS would take and refuses what SQS would refuse.
#[derive(Clone, Debug, Default)]
pub struct MemoryQueue {
    sent: Arc<Mutex<Vec<(String, String)>>>,
    /// Every SendMessageBatch as (entries, bytes).
    batches: Arc<Mutex<Vec<(usize, usize)>>>,
    visibility_changes: Arc<Mutex<Vec<VisibilityChange>>>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message sent so far as `(queue_url, body)`.
    pub fn sent(&self) -> Vec<(String, String)> {
        lock(&self.sent).clone()
    }

    /// Removes and returns the bodies sent to `queue_url` (a consumer receiving them).
    pub fn take(&self, queue_url: &str) -> Vec<String> {
        let mut sent = lock(&self.sent);
        let (taken, kept): (Vec<_>, Vec<_>) = sent.drain(..).partition(|(q, _)| q == queue_url);
        *sent = kept;
        taken.into_iter().map(|(_, body)| body).collect()
    }

    /// Every SendMessageBatch request so far, as (entries, bytes).
    pub fn batches(&self) -> Vec<(usize, usize)> {
        lock(&self.batches).clone()
    }

    /// Every ChangeMessageVisibility request so far, in order.
    pub fn visibility_changes(&self) -> Vec<VisibilityChange> {
        lock(&self.visibility_changes).clone()
    }
}

impl WorkQueue for MemoryQueue {
    async fn send(&self, queue_url: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        for batch in aws_limits::plan_sqs_batches(&bodies)? {
            let batch = &bodies[batch];
            aws_limits::check_sqs_batch(batch)?;
            lock(&self.batches).push((batch.len(), batch.iter().map(String::len).sum()));
            lock(&self.sent).extend(batch.iter().map(|b| (queue_url.to_string(), b.clone())));
        }
        Ok(())
    }

    async fn change_visibility(&self, queue_url: &str, receipt_handle: &str, visibility_secs: u32) -> Result<(), QueueError> {
        lock(&self.visibility_changes).push(VisibilityChange {
            queue_url: queue_url.to_string(),
            receipt_handle: receipt_handle.to_string(),
            visibility_secs,
        });
        Ok(())
    }

    async fn depth(&self, queue_url: &str) -> Result<u64, QueueError> {
        Ok(lock(&self.sent).iter().filter(|(q, _)| q == queue_url).count() as u64)
    }
}

// ---- credentials ------------------------------------------------------------------------------

/// One grant, as recorded by [`MemoryCredentials`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedGrant {
    pub bucket: String,
    /// The prefix an upload grant may write under, or the one object a download grant may read.
    pub prefix: String,
    pub ttl_secs: u64,
    pub download: bool,
}

/// [`CredentialIssuer`] that mints recognisable fake credentials and records each grant.
#[derive(Clone, Debug, Default)]
pub struct MemoryCredentials {
    issued: Arc<Mutex<Vec<IssuedGrant>>>,
}

impl MemoryCredentials {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn issued(&self) -> Vec<IssuedGrant> {
        lock(&self.issued).clone()
    }
}

impl MemoryCredentials {
    fn grant(&self, bucket: &str, prefix: &str, ttl_secs: u64, download: bool) -> TemporaryCredentials {
        let n = {
            let mut issued = lock(&self.issued);
            issued.push(IssuedGrant { bucket: bucket.into(), prefix: prefix.into(), ttl_secs, download });
            issued.len()
        };
        let expires = time::now_micros().saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2_000_000) * 1_000_000);
        TemporaryCredentials {
            access_key_id: format!("MEMORYKEY{n:08}"),
            secret_access_key: format!("memory-secret-{n}"),
            session_token: format!("memory-session-{n}-{bucket}/{prefix}"),
            expiration: time::format_iso(expires),
        }
    }
}

impl CredentialIssuer for MemoryCredentials {
    async fn issue(&self, bucket: &str, prefix: &str, ttl_secs: u64) -> Result<TemporaryCredentials, CredentialError> {
        Ok(self.grant(bucket, prefix, ttl_secs, false))
    }

    async fn issue_download(&self, bucket: &str, key: &str, ttl_secs: u64) -> Result<Option<TemporaryCredentials>, CredentialError> {
        Ok(Some(self.grant(bucket, key, ttl_secs, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::meta_contract;
    use crate::service::model::ResultType;
    use crate::service::tokens::TokenHash;

    fn project(id: &str, time_added: &str) -> Project {
        Project {
            project_id: id.into(),
            result_type: ResultType::Groups,
            number_parties: 2,
            name: String::new(),
            notes: String::new(),
            schema: serde_json::json!({}),
            uses_blocking: false,
            time_added: time_added.into(),
            result_token_hash: TokenHash::of("r"),
        }
    }

    fn party(index: u32) -> Party {
        Party::new(index, TokenHash::of(&format!("u{index}")))
    }

    fn run(project: &str, id: &str) -> Run {
        Run::created(project.into(), id.into(), 0.8, String::new(), String::new(), time::now_iso())
    }

    /// A fresh [`MemoryMeta`] per case of the contract.
    struct FreshMemory;

    impl meta_contract::StoreFactory for FreshMemory {
        type Store = MemoryMeta;
        async fn fresh(&self) -> MemoryMeta {
            MemoryMeta::new()
        }
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_metadata_store_contract() {
        meta_contract::check(&FreshMemory).await;
    }

    #[tokio::test]
    async fn blobs_behave_like_a_bucket() {
        let b = MemoryBlobs::new();
        let meta: Metadata = vec![("kind".into(), "json".into())];
        b.put("a/1", Bytes::from_static(b"hello"), &meta).await.unwrap();
        b.put("a/2", Bytes::from_static(b"x"), &vec![]).await.unwrap();
        b.put("b/1", Bytes::from_static(b"y"), &vec![]).await.unwrap();
        assert_eq!(b.get("a/1").await.unwrap(), (Bytes::from_static(b"hello"), meta.clone()));
        assert_eq!(b.get_range("a/1", 1..3).await.unwrap(), Bytes::from_static(b"el"));
        assert_eq!(b.get_range("a/1", 3..100).await.unwrap(), Bytes::from_static(b"lo"));
        assert!(b.get_range("a/1", 9..10).await.is_err());
        assert_eq!(b.head("a/1").await.unwrap(), Some((5, meta)));
        assert_eq!(b.head("zz").await.unwrap(), None);
        assert!(matches!(b.get("zz").await, Err(BlobError::NotFound(_))));
        assert_eq!(b.list("a/").await.unwrap(), ["a/1", "a/2"]);
        assert_eq!(b.delete_prefix("a/").await.unwrap(), 2);
        assert_eq!(b.keys(), ["b/1"]);
        b.delete("b/1").await.unwrap();
        b.delete("b/1").await.unwrap();
        b.fail_puts(true);
        assert!(b.put("c", Bytes::new(), &vec![]).await.is_err());
    }

    #[tokio::test]
    async fn the_adapters_refuse_what_aws_would_refuse() {
        use crate::service::aws_limits::*;

        // SQS: ten blocked shard messages of 60 KiB go out in three batches, never one of 600 KiB.
        let q = MemoryQueue::new();
        q.send("q", (0..10).map(|_| "x".repeat(60 * 1024)).collect()).await.unwrap();
        assert_eq!(q.batches(), [(4, 240 * 1024), (4, 240 * 1024), (2, 120 * 1024)]);
        assert_eq!(q.take("q").len(), 10);
        let r = q.send("q", vec!["y".repeat(SQS_MAX_MESSAGE_BYTES + 1)]).await;
        assert!(matches!(r, Err(QueueError::Limit(LimitExceeded::SqsMessage { .. }))), "{r:?}");
        assert!(q.sent().is_empty());

        // DynamoDB: a transaction of more than 100 items, an item over 400 KB.
        let m = MemoryMeta::new();
        let parties: Vec<Party> = (0..99).map(party).collect();
        let r = m.create_project(&project("p", "t"), &parties).await;
        assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoTransaction { items: 101 }))), "{r:?}");
        let mut big = project("p", "t");
        big.schema = serde_json::json!("s".repeat(DYNAMODB_MAX_ITEM_BYTES));
        let r = m.create_project(&big, &parties[..2]).await;
        assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
        assert!(!m.has_project_items("p"));
        m.create_project(&project("p", "t"), &parties[..98]).await.unwrap();
        m.create_run(&run("p", "r")).await.unwrap();
        let r = m.fail_run("p", "r", &"e".repeat(DYNAMODB_MAX_ITEM_BYTES)).await;
        assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");
        assert_eq!(m.get_run("p", "r").await.unwrap().unwrap().state, RunState::Created, "nothing written");

        // S3: a single PUT over 5 GiB (zeroed memory is mapped lazily: address space, not RAM),
        // a part over 5 GiB or numbered past 10,000, a short part that is not the last.
        let b = MemoryBlobs::new();
        let huge = Bytes::from(vec![0u8; S3_MAX_PUT_BYTES as usize + 1]);
        let r = b.put("k", huge.clone(), &vec![]).await;
        assert!(matches!(r, Err(BlobError::Limit(LimitExceeded::S3Put { .. }))), "{r:?}");
        let id = b.start_multipart("k").await.unwrap();
        let r = b.upload_part("k", &id, 1, huge).await;
        assert!(matches!(r, Err(BlobError::Limit(LimitExceeded::S3PartSize { .. }))), "{r:?}");
        let r = b.upload_part("k", &id, 10_001, Bytes::from_static(b"x")).await;
        assert!(matches!(r, Err(BlobError::Limit(LimitExceeded::S3PartNumber { .. }))), "{r:?}");
        let e1 = b.upload_part("k", &id, 1, Bytes::from_static(b"short")).await.unwrap();
        let e2 = b.upload_part("k", &id, 2, Bytes::from_static(b"last")).await.unwrap();
        let r = b.complete_multipart("k", &id, &[(1, e1), (2, e2)]).await;
        assert!(matches!(r, Err(BlobError::Limit(LimitExceeded::S3PartSize { number: 1, .. }))), "{r:?}");
        assert!(b.keys().is_empty());
    }

    #[tokio::test]
    async fn concurrent_transactions_on_one_item_conflict_and_are_retried() {
        let m = MemoryMeta::new();
        m.create_project(&project("p", "t"), &[party(0), party(1)]).await.unwrap();
        m.create_run(&run("p", "r")).await.unwrap();
        m.claim_run("p", "r").await.unwrap();
        // More shards than counters: shards k and k + SHARD_COUNTERS share a counter item.
        let total = SHARD_COUNTERS + 20;
        let plan = RunPlan { shards_total: total, total_comparisons: 10 * u64::from(total), time_started: "t".into() };
        m.start_run("p", "r", &plan).await.unwrap();

        m.inject_conflicts(ConflictInjection::Overlapping { hold: Duration::from_millis(5) });
        let shards = (0..total).map(|i| m.record_shard("p", "r", i, 10, 1));
        let outcomes = futures::future::join_all(shards).await;
        assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(|o| o.counted)), "{outcomes:?}");
        assert!(m.conflicts_injected() > 0, "the shards' transactions overlapped");
        let r = m.get_run("p", "r").await.unwrap().unwrap();
        assert_eq!((r.shards_done, r.comparisons_done, r.candidate_count), (total, 10 * u64::from(total), u64::from(total)));
        // The run was read only when a counter filled up (or was due a look), and the last
        // counted shard always read it complete.
        let read = outcomes.iter().filter_map(|o| o.as_ref().ok()?.run.run().cloned()).collect::<Vec<_>>();
        assert!(read.len() < total as usize, "not every shard reads the whole run");
        assert!(read.iter().any(|r| r.shards_done == total), "the last shard sees the run complete");

        // Contention that outlasts the retries surfaces as the retryable conflict, writing nothing.
        m.inject_conflicts(ConflictInjection::Always);
        let before = m.conflicts_injected();
        let r = m.complete_run("p", "r", "t2").await;
        assert!(matches!(r, Err(MetaError::TransactionConflict(_))), "{r:?}");
        assert_eq!(m.conflicts_injected() - before, u64::from(retry::CONFLICT_ATTEMPTS), "bounded retries");
        assert_eq!(m.get_run("p", "r").await.unwrap().unwrap().state, RunState::Running);
        m.inject_conflicts(ConflictInjection::Off);
        assert!(m.complete_run("p", "r", "t2").await.unwrap());
    }

    #[tokio::test]
    async fn queue_and_credentials_record_what_they_did() {
        let q = MemoryQueue::new();
        q.send("q1", vec!["a".into(), "b".into()]).await.unwrap();
        q.send("q2", vec!["c".into()]).await.unwrap();
        assert_eq!(q.take("q1"), ["a", "b"]);
        assert_eq!(q.sent(), [("q2".to_string(), "c".to_string())]);

        let c = MemoryCredentials::new();
        let creds = c.issue("up", "p/0", 60).await.unwrap();
        assert!(!creds.access_key_id.is_empty());
        assert_eq!(c.issued(), [IssuedGrant { bucket: "up".into(), prefix: "p/0".into(), ttl_secs: 60, download: false }]);
    }
}
