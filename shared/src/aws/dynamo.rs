//! [`MetaStore`](crate::service::ports::MetaStore) on one DynamoDB table (`docs/data-model.md`).
//!
//! Every item of a project shares the partition `P#{project_id}` (project, parties, runs, shard
//! markers), so reading a project with its parties is one query and purging it is a query plus
//! batch deletes. Racing transitions are conditional writes or transactions; a lost condition
//! is the normal outcome of a duplicate delivery and is reported as `false`/`Conflict`, never as
//! a backend error. Reads that decide anything are strongly consistent; only the project list
//! (a GSI) is eventually consistent.
//!
//! The items themselves are laid out in [`crate::service::table`]. Before the SDK call, every
//! Put is checked against DynamoDB's 400 KB item limit and every transaction against its 100
//! items ([`crate::service::aws_limits`]). A transaction cancelled by a concurrent one
//! (`TransactionConflict`), and a single write refused because its item is in a transaction
//! (`TransactionConflictException`), are retried in process ([`crate::service::retry`]) and
//! otherwise reported as the retryable [`MetaError::TransactionConflict`].

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::error::TransactionCanceledException;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, DeleteRequest, KeysAndAttributes, Put, ReturnValue, TransactWriteItem, Update, WriteRequest,
};

use crate::service::aws_limits::{self, DYNAMODB_MAX_BATCH_WRITE};
use crate::service::memory::compute_micros;
use crate::service::model::{
    self, IngestedParty, Party, Project, ProjectSummary, ResultType, Run, RunAfterShard, RunHead, RunPlan, RunState, SHARD_COUNTERS, ShardTally, ShardsOutcome, StatusCounters,
    Tombstone,
    Upload, UploadStart, UploadState, Watch, WatchTarget,
};
use crate::service::ports::{MetaError, ProjectStore, RunStore, ShardCounter, StatusStore, TombstoneStore, UploadStore, WatchStore};
use crate::service::retry;
use crate::service::table::{self, Attr, Attrs, COUNTER_INFIX, PROJECT_SK, PROJECTS_GSI_PK, counter_sk, party_sk, project_pk, run_sk, shard_prefix, shard_sk};
use crate::service::tokens::TokenHash;

type Item = HashMap<String, AttributeValue>;

/// The metadata table.
#[derive(Clone, Debug)]
pub struct DynamoMeta {
    pub client: Client,
    pub table: String,
    /// Seconds after which items are written to expire (`expires_at`, the table's TTL
    /// attribute). A backstop only: the watchdog purges a project at the end of its lifetime
    /// (`pipeline::expiry`); DynamoDB deletes expired items within days, not on time.
    pub item_lifetime_secs: u64,
}

/// How long after a project's lifetime its items stay before DynamoDB's TTL may remove them:
/// the watchdog's purge (objects first, then items) must come first, or objects would outlive
/// the items that let the purge find them.
pub const TTL_GRACE_SECS: u64 = 7 * 86_400;

impl DynamoMeta {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let lifetime = crate::service::config::Limits::default().project_lifetime_secs;
        DynamoMeta { client, table: table.into(), item_lifetime_secs: lifetime }
    }

    /// Items expire `secs` (the project lifetime) plus [`TTL_GRACE_SECS`] after they are written.
    pub fn with_item_lifetime(mut self, secs: u64) -> Self {
        self.item_lifetime_secs = secs;
        self
    }

    /// `expires_at` of an item written at `written_secs`.
    fn expires_at(&self, written_secs: u64) -> Attr {
        table::n(written_secs.saturating_add(self.item_lifetime_secs).saturating_add(TTL_GRACE_SECS))
    }

    fn expires_now(&self) -> Attr {
        self.expires_at(crate::service::time::now_secs())
    }
}

// ---- keys -------------------------------------------------------------------------------------

const PROJECTS_GSI: &str = "gsi1";
/// The index partition of deleted projects not yet purged (their tombstones).
const TOMBSTONES_GSI_PK: &str = "DELETED";
/// `live` condition on a project item: it exists and is not being deleted.
const PROJECT_LIVE: &str = "attribute_exists(pk) AND deleted = :false";

fn watch_key(project_id: &str, target: &WatchTarget) -> Item {
    key(project_pk(project_id), table::watch_sk(target))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn value(a: Attr) -> AttributeValue {
    match a {
        Attr::S(v) => AttributeValue::S(v),
        Attr::N(v) => AttributeValue::N(v),
        Attr::Bool(v) => AttributeValue::Bool(v),
    }
}
fn item(attrs: Attrs) -> Item {
    attrs.into_iter().map(|(name, a)| (name, value(a))).collect()
}
fn key(pk: String, sk: String) -> Item {
    item(table::key(pk, sk))
}
fn project_key(project_id: &str) -> Item {
    item(table::project_key(project_id))
}
fn stats_key() -> Item {
    item(table::stats_key())
}

// ---- reading items ----------------------------------------------------------------------------

fn corrupt(what: &str, item: &Item) -> MetaError {
    let pk = item.get("pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
    MetaError::Backend(format!("item {pk} has a missing or malformed {what}"))
}
fn get_s(item: &Item, name: &str) -> Result<String, MetaError> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned().ok_or_else(|| corrupt(name, item))
}
fn opt_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}
fn get_n<T: FromStr>(item: &Item, name: &str) -> Result<T, MetaError> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).ok_or_else(|| corrupt(name, item))
}
/// A counter that ADD may not have created yet.
fn counter(item: &Item, name: &str) -> Result<u64, MetaError> {
    match item.get(name) {
        None => Ok(0),
        Some(_) => get_n(item, name),
    }
}
fn get_bool(item: &Item, name: &str) -> bool {
    item.get(name).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false)
}

fn project_from(item: &Item) -> Result<Project, MetaError> {
    Ok(Project {
        project_id: get_s(item, "project_id")?,
        result_type: ResultType::parse(&get_s(item, "result_type")?).ok_or_else(|| corrupt("result_type", item))?,
        number_parties: get_n(item, "number_parties")?,
        name: get_s(item, "name")?,
        notes: get_s(item, "notes")?,
        schema: serde_json::from_str(&get_s(item, "schema")?).map_err(|_| corrupt("schema", item))?,
        uses_blocking: get_bool(item, "uses_blocking"),
        time_added: get_s(item, "time_added")?,
        result_token_hash: TokenHash(get_s(item, "result_token_hash")?),
    })
}

/// Reads a party, refusing an item whose state lacks what it must have (an id once begun, the
/// ingestion record once done, a message once failed). Attributes a state does not have are
/// ignored.
fn party_from(item: &Item) -> Result<Party, MetaError> {
    let start = || -> Result<UploadStart, MetaError> {
        Ok(UploadStart { upload_id: get_s(item, "upload_id")?, receipt_token_hash: TokenHash(get_s(item, "receipt_token_hash")?) })
    };
    let upload = match UploadState::parse(&get_s(item, "upload_state")?).ok_or_else(|| corrupt("upload_state", item))? {
        UploadState::NotStarted => Upload::NotStarted,
        UploadState::Pending => Upload::Pending(start()?),
        UploadState::Done => Upload::Done {
            start: start()?,
            ingested: IngestedParty {
                record_count: get_n(item, "record_count")?,
                encoding_size: get_n(item, "encoding_size")?,
                entry_count: get_n(item, "entry_count")?,
                block_count: get_n(item, "block_count")?,
            },
        },
        UploadState::Error => Upload::Error { start: start()?, message: get_s(item, "error")? },
    };
    Ok(Party { index: get_n(item, "party_index")?, update_token_hash: TokenHash(get_s(item, "update_token_hash")?), upload })
}

fn run_from(item: &Item) -> Result<Run, MetaError> {
    Ok(Run {
        project_id: get_s(item, "project_id")?,
        run_id: get_s(item, "run_id")?,
        threshold: get_n(item, "threshold")?,
        name: get_s(item, "name")?,
        notes: get_s(item, "notes")?,
        state: RunState::parse(&get_s(item, "state")?).ok_or_else(|| corrupt("state", item))?,
        stage: get_n(item, "stage")?,
        time_added: get_s(item, "time_added")?,
        time_started: opt_s(item, "time_started"),
        time_completed: opt_s(item, "time_completed"),
        total_comparisons: counter(item, "total_comparisons")?,
        comparisons_done: counter(item, "comparisons_done")?,
        shards_total: get_n(item, "shards_total")?,
        shards_done: get_n(item, "shards_done")?,
        candidate_count: counter(item, "candidate_count")?,
        error: opt_s(item, "error"),
        group_scores: get_bool(item, "group_scores"),
    })
}

/// Runs from the items of a `RUN#` query: run items, plus their counters added in.
fn runs_from(items: &[Item]) -> Result<Vec<Run>, MetaError> {
    let mut runs: Vec<Run> = Vec::new();
    let mut counters: Vec<(String, &Item)> = Vec::new();
    for item in items {
        let sk = opt_s(item, "sk").unwrap_or_default();
        match sk.strip_prefix("RUN#").and_then(|rest| rest.split_once(COUNTER_INFIX)) {
            Some((run_id, _)) => counters.push((run_id.to_string(), item)),
            None => runs.push(run_from(item)?),
        }
    }
    for (run_id, item) in counters {
        if let Some(run) = runs.iter_mut().find(|r| r.run_id == run_id) {
            run.shards_done += counter(item, "shards_done")? as u32;
            run.comparisons_done += counter(item, "comparisons_done")?;
            run.candidate_count += counter(item, "candidate_count")?;
        }
    }
    Ok(runs)
}

// ---- errors -----------------------------------------------------------------------------------

fn backend<E: std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(op: &str, e: SdkError<E, R>) -> MetaError {
    MetaError::Backend(format!("{op}: {}", DisplayErrorContext(e)))
}

/// Outcome of a conditional write: done, or a condition did not hold (and which items' did not).
enum Written {
    Done,
    /// Indices (in the transaction) of the items whose condition failed; `[0]` for single writes.
    ConditionFailed(Vec<usize>),
}

fn update_outcome<R: std::fmt::Debug>(op: &str, r: Result<R, SdkError<UpdateItemError>>) -> Result<Written, MetaError> {
    match r {
        Ok(_) => Ok(Written::Done),
        Err(SdkError::ServiceError(se)) if se.err().is_conditional_check_failed_exception() => {
            Ok(Written::ConditionFailed(vec![0]))
        }
        // The item is in a transaction that is in progress.
        Err(SdkError::ServiceError(se)) if se.err().is_transaction_conflict_exception() => {
            Err(MetaError::TransactionConflict(format!("{op}: {}", se.err())))
        }
        Err(e) => Err(backend(op, e)),
    }
}

fn transaction_outcome<R: std::fmt::Debug>(op: &str, r: Result<R, SdkError<TransactWriteItemsError>>) -> Result<Written, MetaError> {
    match r {
        Ok(_) => Ok(Written::Done),
        Err(SdkError::ServiceError(se)) => match se.err() {
            TransactWriteItemsError::TransactionCanceledException(tc) => cancelled(op, tc),
            other => Err(MetaError::Backend(format!("{op}: {other}"))),
        },
        Err(e) => Err(backend(op, e)),
    }
}

/// What a cancelled transaction means, from its per-item reasons: a condition that did not hold
/// is an answer; a concurrent transaction on one of the items is a retryable conflict.
fn cancelled(op: &str, tc: &TransactionCanceledException) -> Result<Written, MetaError> {
    let reasons = tc.cancellation_reasons();
    let failed: Vec<usize> =
        reasons.iter().enumerate().filter(|(_, r)| r.code() == Some("ConditionalCheckFailed")).map(|(i, _)| i).collect();
    let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).collect();
    if !failed.is_empty() {
        Ok(Written::ConditionFailed(failed))
    } else if codes.contains(&"TransactionConflict") {
        // Another transaction was changing one of the items: nothing was written.
        Err(MetaError::TransactionConflict(format!("{op}: transaction cancelled ({})", codes.join(", "))))
    } else {
        // Cancelled for another reason (throttling, validation).
        Err(MetaError::Backend(format!("{op}: transaction cancelled ({})", codes.join(", "))))
    }
}

fn build<T>(what: &str, r: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, MetaError> {
    r.map_err(|e| MetaError::Backend(format!("building {what}: {e}")))
}

// ---- requests ---------------------------------------------------------------------------------

impl DynamoMeta {
    /// A Put of `attrs`, refused here if DynamoDB would refuse the item as too large.
    fn put(&self, attrs: Attrs, condition: Option<&str>) -> Result<TransactWriteItem, MetaError> {
        table::check_item(&attrs)?;
        let put = Put::builder().table_name(&self.table).set_item(Some(item(attrs))).set_condition_expression(condition.map(Into::into));
        Ok(TransactWriteItem::builder().put(build("put", put.build())?).build())
    }

    fn live_project_check(&self, project_id: &str) -> Result<TransactWriteItem, MetaError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(project_key(project_id)))
            .condition_expression(PROJECT_LIVE)
            .expression_attribute_values(":false", AttributeValue::Bool(false));
        Ok(TransactWriteItem::builder().condition_check(build("condition check", check.build())?).build())
    }

    fn update(
        &self,
        key: Item,
        expression: &str,
        condition: Option<&str>,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<TransactWriteItem, MetaError> {
        let mut u = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(expression)
            .set_condition_expression(condition.map(Into::into));
        for (k, v) in names {
            u = u.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            u = u.expression_attribute_values(k, v);
        }
        Ok(TransactWriteItem::builder().update(build("update", u.build())?).build())
    }

    /// TransactWriteItems, refused here over DynamoDB's 100 items, conflicts retried.
    async fn transact(&self, op: &str, items: Vec<TransactWriteItem>) -> Result<Written, MetaError> {
        aws_limits::check_dynamo_transaction(items.len())?;
        let request = self.client.transact_write_items().set_transact_items(Some(items));
        retry::on_conflict(op, || async { transaction_outcome(op, request.clone().send().await) }).await
    }

    /// A single conditional UpdateItem.
    async fn update_one(
        &self,
        op: &str,
        key: Item,
        expression: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Written, MetaError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(expression)
            .condition_expression(condition);
        for (k, v) in names {
            req = req.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        retry::on_conflict(op, || async { update_outcome(op, req.clone().send().await) }).await
    }

    async fn get_item(&self, op: &str, key: Item) -> Result<Option<Item>, MetaError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend(op, e))?;
        Ok(out.item)
    }

    /// Items by key (at most 100), strongly consistent, in one BatchGetItem where the service
    /// answers them all; keys it leaves unprocessed (throttling) are asked for again.
    async fn batch_get(&self, op: &str, keys: Vec<Item>) -> Result<Vec<Item>, MetaError> {
        let mut items = Vec::new();
        let mut pending = Some(
            KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .map_err(|e| MetaError::Backend(format!("{op}: {e}")))?,
        );
        while let Some(keys) = pending.take() {
            let out = self.client.batch_get_item().request_items(&self.table, keys).send().await.map_err(|e| backend(op, e))?;
            items.extend(out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default());
            pending = out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).filter(|k| !k.keys.is_empty());
        }
        Ok(items)
    }

    /// Puts shard `shard`'s marker, if it is absent (the shard was not counted before).
    fn mark_shard(&self, pk: &str, run_id: &str, shard: u32) -> Result<TransactWriteItem, MetaError> {
        let mut marker = table::key(pk.to_string(), shard_sk(run_id, shard));
        marker.push(("expires_at".into(), self.expires_now()));
        self.put(marker, Some("attribute_not_exists(pk)"))
    }

    /// Adds shards to counter `k` of a run, if the counter exists (the run started, not deleted).
    fn count_on(&self, pk: &str, run_id: &str, k: u32, shards: u64, comparisons: u64, candidates: u64) -> Result<TransactWriteItem, MetaError> {
        self.update(
            key(pk.to_string(), counter_sk(run_id, k)),
            "ADD shards_done :one, comparisons_done :c, candidate_count :k",
            Some("attribute_exists(pk)"),
            &[],
            vec![(":one", n(shards)), (":c", n(comparisons)), (":k", n(candidates))],
        )
    }

    /// Every item of a partition whose sort key matches `sort_keys`, consistently.
    async fn query_partition(&self, op: &str, pk: &str, sort_keys: SortKeys<'_>) -> Result<Vec<Item>, MetaError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut req = self.client.query().table_name(&self.table).expression_attribute_values(":pk", s(pk));
            req = match sort_keys {
                SortKeys::All => req.key_condition_expression("pk = :pk"),
                SortKeys::Between(lo, hi) => req
                    .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                    .expression_attribute_values(":lo", s(lo))
                    .expression_attribute_values(":hi", s(hi)),
                SortKeys::BeginsWith(prefix) => req
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix)),
            };
            let out = req
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| backend(op, e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// Deletes items by key, as many at a time as BatchWriteItem takes, resubmitting what DynamoDB leaves unprocessed.
    async fn delete_keys(&self, op: &str, keys: Vec<Item>) -> Result<(), MetaError> {
        for chunk in keys.chunks(DYNAMODB_MAX_BATCH_WRITE) {
            let mut requests = Vec::with_capacity(chunk.len());
            for k in chunk {
                let delete = build("delete request", DeleteRequest::builder().set_key(Some(k.clone())).build())?;
                requests.push(WriteRequest::builder().delete_request(delete).build());
            }
            let mut pending = HashMap::from([(self.table.clone(), requests)]);
            for attempt in 0..10u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(|e| backend(op, e))?;
                match out.unprocessed_items {
                    Some(left) if left.values().any(|v| !v.is_empty()) => {
                        pending = left;
                        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(6))).await;
                    }
                    _ => {
                        pending = HashMap::new();
                        break;
                    }
                }
            }
            if !pending.is_empty() {
                return Err(MetaError::Backend(format!("{op}: items left unprocessed after retries")));
            }
        }
        Ok(())
    }

    /// Whether the project exists and is not being deleted.
    async fn project_live(&self, project_id: &str) -> Result<bool, MetaError> {
        let item = self.get_item("get project", project_key(project_id)).await?;
        Ok(item.is_some_and(|i| !get_bool(&i, "deleted")))
    }
}

/// Which sort keys of a partition a query reads.
#[derive(Clone, Copy)]
enum SortKeys<'a> {
    All,
    Between(&'a str, &'a str),
    BeginsWith(&'a str),
}

fn keys_of(items: &[Item]) -> Vec<Item> {
    items
        .iter()
        .filter_map(|i| Some(key(i.get("pk")?.as_s().ok()?.clone(), i.get("sk")?.as_s().ok()?.clone())))
        .collect()
}


impl ProjectStore for DynamoMeta {
    async fn create_project(&self, project: &Project, parties: &[Party]) -> Result<(), MetaError> {
        let added = crate::service::time::parse_iso(&project.time_added).map_or_else(crate::service::time::now_secs, |m| (m / 1_000_000).max(0) as u64);
        let expiring = |mut item: Attrs| {
            item.push(("expires_at".into(), self.expires_at(added)));
            item
        };
        let mut items = vec![self.put(expiring(table::project_item(project)), Some("attribute_not_exists(pk)"))?];
        for p in parties {
            items.push(self.put(expiring(table::party_item(&project.project_id, p)), Some("attribute_not_exists(pk)"))?);
        }
        items.push(self.update(stats_key(), "ADD project_count :one", None, &[], vec![(":one", n(1))])?);
        match self.transact("create project", items).await? {
            Written::Done => Ok(()),
            Written::ConditionFailed(_) => Err(MetaError::Conflict(format!("project {} already exists", project.project_id))),
        }
    }

    async fn list_projects(&self) -> Result<Vec<ProjectSummary>, MetaError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PROJECTS_GSI)
                .key_condition_expression("gsi1pk = :p")
                .expression_attribute_values(":p", s(PROJECTS_GSI_PK))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| backend("list projects", e))?;
            for item in page.items() {
                // The index may lag a delete by a moment; the flag is authoritative.
                if !get_bool(item, "deleted") {
                    out.push(ProjectSummary { project_id: get_s(item, "project_id")?, time_added: get_s(item, "time_added")? });
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn list_projects_page(&self, after: Option<&str>, limit: usize) -> Result<(Vec<ProjectSummary>, Option<String>), MetaError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PROJECTS_GSI)
            .expression_attribute_values(":p", s(PROJECTS_GSI_PK))
            .limit(limit.clamp(1, 1000) as i32);
        query = match after {
            Some(after) => query.key_condition_expression("gsi1pk = :p AND gsi1sk > :after").expression_attribute_values(":after", s(after)),
            None => query.key_condition_expression("gsi1pk = :p"),
        };
        let page = query.send().await.map_err(|e| backend("list projects", e))?;
        let mut out = Vec::with_capacity(page.items().len());
        for item in page.items() {
            if !get_bool(item, "deleted") {
                out.push(ProjectSummary { project_id: get_s(item, "project_id")?, time_added: get_s(item, "time_added")? });
            }
        }
        // The cursor is the last index key read (not the last live one), so a page of deleted
        // projects still moves on.
        let next = match page.last_evaluated_key {
            Some(k) if !k.is_empty() => Some(opt_s(&k, "gsi1sk").ok_or_else(|| corrupt("gsi1sk", &k))?),
            _ => None,
        };
        Ok((out, next))
    }

    async fn get_project(&self, project_id: &str) -> Result<Option<(Project, Vec<Party>)>, MetaError> {
        // Sort keys "PARTY#…" < "PROJECT": one query returns the parties and the project.
        let items = self.query_partition("get project", &project_pk(project_id), SortKeys::Between("PARTY#", PROJECT_SK)).await?;
        let Some(project_item) = items.iter().find(|i| opt_s(i, "sk").as_deref() == Some(PROJECT_SK)) else {
            return Ok(None);
        };
        if get_bool(project_item, "deleted") {
            return Ok(None);
        }
        let project = project_from(project_item)?;
        let mut parties = items
            .iter()
            .filter(|i| opt_s(i, "sk").is_some_and(|sk| sk.starts_with("PARTY#")))
            .map(party_from)
            .collect::<Result<Vec<_>, _>>()?;
        parties.sort_by_key(|p| p.index);
        Ok(Some((project, parties)))
    }

    async fn mark_project_deleted(&self, project_id: &str) -> Result<bool, MetaError> {
        let now = crate::service::time::now_secs();
        let items = vec![
            self.update(
                project_key(project_id),
                // The project leaves the listing for the tombstones' index partition, where
                // the watchdog finds it until the purge removes the item.
                "SET deleted = :true, deleted_at = :now, gsi1pk = :tomb, gsi1sk = :tomb_sk",
                Some(PROJECT_LIVE),
                &[],
                vec![
                    (":true", AttributeValue::Bool(true)),
                    (":false", AttributeValue::Bool(false)),
                    (":now", n(now)),
                    (":tomb", s(TOMBSTONES_GSI_PK)),
                    (":tomb_sk", s(format!("{now:012}#{project_id}"))),
                ],
            )?,
            self.update(stats_key(), "ADD project_count :minus", None, &[], vec![(":minus", n(-1))])?,
        ];
        Ok(matches!(self.transact("mark project deleted", items).await?, Written::Done))
    }
}

impl TombstoneStore for DynamoMeta {
    async fn list_tombstones(&self, limit: usize) -> Result<Vec<Tombstone>, MetaError> {
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PROJECTS_GSI)
            .key_condition_expression("gsi1pk = :d")
            .expression_attribute_values(":d", s(TOMBSTONES_GSI_PK))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| backend("list tombstones", e))?;
        page.items()
            .iter()
            .map(|item| Ok(Tombstone { project_id: get_s(item, "project_id")?, deleted_secs: get_n(item, "deleted_at")? }))
            .collect()
    }

    async fn purge_project(&self, project_id: &str) -> Result<(), MetaError> {
        // Children first, the project item last: a purge interrupted halfway can be re-run.
        let pk = project_pk(project_id);
        let items = self.query_partition("purge project", &pk, SortKeys::All).await?;
        let (project, children): (Vec<Item>, Vec<Item>) =
            keys_of(&items).into_iter().partition(|k| k.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some(PROJECT_SK));
        self.delete_keys("purge project", children).await?;
        self.delete_keys("purge project", project).await
    }
}

impl UploadStore for DynamoMeta {
    async fn begin_upload(&self, project_id: &str, party: u32, upload: &UploadStart) -> Result<(), MetaError> {
        let items = vec![
            // The project must be live (not being deleted).
            self.live_project_check(project_id)?,
            self.update(
                key(project_pk(project_id), party_sk(party)),
                "SET upload_state = :pending, upload_id = :u, receipt_token_hash = :r \
                 REMOVE #error, record_count, encoding_size, entry_count, block_count",
                Some("attribute_exists(pk) AND upload_state IN (:not_started, :error)"),
                &[("#error", "error")],
                vec![
                    (":pending", s(UploadState::Pending.as_str())),
                    (":not_started", s(UploadState::NotStarted.as_str())),
                    (":error", s(UploadState::Error.as_str())),
                    (":u", s(&upload.upload_id)),
                    (":r", s(&upload.receipt_token_hash.0)),
                ],
            )?,
        ];
        match self.transact("begin upload", items).await? {
            Written::Done => Ok(()),
            Written::ConditionFailed(failed) if failed.contains(&0) => Err(MetaError::NotFound(format!("project {project_id}"))),
            // The condition also fails for a party the project does not have: only a read tells.
            Written::ConditionFailed(_) => match self.get_item("begin upload", key(project_pk(project_id), party_sk(party))).await? {
                None => Err(MetaError::NotFound(format!("party {party} of project {project_id}"))),
                Some(_) => Err(MetaError::Conflict(format!("party {party} has an upload pending or done"))),
            },
        }
    }

    async fn abort_upload(&self, project_id: &str, party: u32, upload_id: &str, error: Option<&str>) -> Result<(), MetaError> {
        let condition = "upload_state = :pending AND upload_id = :u";
        let mut values = vec![(":pending", s(UploadState::Pending.as_str())), (":u", s(upload_id))];
        let expression = match error {
            Some(message) => {
                table::check_upload_error(project_id, party, upload_id, message)?;
                values.push((":error", s(UploadState::Error.as_str())));
                values.push((":m", s(message)));
                "SET upload_state = :error, #error = :m"
            }
            None => {
                values.push((":not_started", s(UploadState::NotStarted.as_str())));
                "SET upload_state = :not_started REMOVE upload_id, receipt_token_hash, #error"
            }
        };
        let key = key(project_pk(project_id), party_sk(party));
        self.update_one("abort upload", key, expression, condition, &[("#error", "error")], values).await?;
        Ok(())
    }

    async fn complete_upload(&self, project_id: &str, party: u32, upload_id: &str, ingested: &IngestedParty) -> Result<bool, MetaError> {
        let mut values = vec![
            (":pending", s(UploadState::Pending.as_str())),
            (":done", s(UploadState::Done.as_str())),
            (":u", s(upload_id)),
        ];
        let [(_, rc), (_, es), (_, ec), (_, bc)] = table::ingested_attrs(ingested).map(|(name, a)| (name, value(a)));
        values.extend([(":rc", rc), (":es", es), (":ec", ec), (":bc", bc)]);
        // With the project check: a deleted project's upload is no longer the pending one.
        let items = vec![
            self.live_project_check(project_id)?,
            self.update(
                key(project_pk(project_id), party_sk(party)),
                "SET upload_state = :done, record_count = :rc, encoding_size = :es, entry_count = :ec, block_count = :bc REMOVE #error",
                Some("upload_state = :pending AND upload_id = :u"),
                &[("#error", "error")],
                values,
            )?,
        ];
        Ok(matches!(self.transact("complete upload", items).await?, Written::Done))
    }

    async fn reject_upload(&self, project_id: &str, party: u32, upload_id: &str, message: &str) -> Result<(), MetaError> {
        table::check_upload_error(project_id, party, upload_id, message)?;
        self.update_one(
            "reject upload",
            key(project_pk(project_id), party_sk(party)),
            "SET upload_state = :error, #error = :m REMOVE record_count, encoding_size, entry_count, block_count",
            "upload_state = :done AND upload_id = :u",
            &[("#error", "error")],
            vec![
                (":done", s(UploadState::Done.as_str())),
                (":error", s(UploadState::Error.as_str())),
                (":u", s(upload_id)),
                (":m", s(message)),
            ],
        )
        .await?;
        Ok(())
    }

    async fn fail_upload(&self, project_id: &str, party: u32, upload_id: &str, message: &str) -> Result<(), MetaError> {
        table::check_upload_error(project_id, party, upload_id, message)?;
        self.update_one(
            "fail upload",
            key(project_pk(project_id), party_sk(party)),
            "SET upload_state = :error, #error = :m",
            "upload_state = :pending AND upload_id = :u",
            &[("#error", "error")],
            vec![
                (":pending", s(UploadState::Pending.as_str())),
                (":error", s(UploadState::Error.as_str())),
                (":u", s(upload_id)),
                (":m", s(message)),
            ],
        )
        .await?;
        Ok(())
    }
}

impl RunStore for DynamoMeta {
    async fn create_run(&self, run: &Run) -> Result<(), MetaError> {
        let mut item = table::run_item(run);
        item.push(("expires_at".into(), self.expires_now()));
        let items = vec![self.live_project_check(&run.project_id)?, self.put(item, Some("attribute_not_exists(pk)"))?];
        match self.transact("create run", items).await? {
            Written::Done => Ok(()),
            Written::ConditionFailed(_) => Err(MetaError::Conflict(format!("project {} is gone or run {} exists", run.project_id, run.run_id))),
        }
    }

    async fn list_runs(&self, project_id: &str) -> Result<Vec<Run>, MetaError> {
        if !self.project_live(project_id).await? {
            return Ok(Vec::new());
        }
        let items = self.query_partition("list runs", &project_pk(project_id), SortKeys::BeginsWith("RUN#")).await?;
        let mut runs = runs_from(&items)?;
        runs.sort_by(|a, b| (&a.time_added, &a.run_id).cmp(&(&b.time_added, &b.run_id)));
        Ok(runs)
    }

    async fn get_run(&self, project_id: &str, run_id: &str) -> Result<Option<Run>, MetaError> {
        if !self.project_live(project_id).await? {
            return Ok(None);
        }
        // The run item and its counters (`RUN#{rid}` and `RUN#{rid}#COUNT#…`); other runs whose
        // id starts with this one's are filtered out by `runs_from`'s exact match.
        let items = self.query_partition("get run", &project_pk(project_id), SortKeys::BeginsWith(&run_sk(run_id))).await?;
        Ok(runs_from(&items)?.into_iter().find(|r| r.run_id == run_id))
    }

    async fn get_run_head(&self, project_id: &str, run_id: &str) -> Result<Option<RunHead>, MetaError> {
        // The project's item and the run's, in one strongly consistent batch read.
        let items = self.batch_get("get run head", vec![project_key(project_id), key(project_pk(project_id), run_sk(run_id))]).await?;
        let live = items.iter().any(|i| opt_s(i, "sk").as_deref() == Some(PROJECT_SK) && !get_bool(i, "deleted"));
        let Some(run) = items.iter().find(|i| opt_s(i, "sk").is_some_and(|sk| sk == run_sk(run_id))) else { return Ok(None) };
        if !live {
            return Ok(None);
        }
        let state = RunState::parse(&get_s(run, "state")?).ok_or_else(|| corrupt("state", run))?;
        Ok(Some(RunHead { state, threshold: get_n(run, "threshold")? }))
    }

    async fn delete_run(&self, project_id: &str, run_id: &str) -> Result<bool, MetaError> {
        if !self.project_live(project_id).await? {
            return Ok(false);
        }
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(project_pk(project_id), run_sk(run_id))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("delete run", e))?;
        let existed = out.attributes.is_some_and(|a| !a.is_empty());
        // Counters first: a shard counted after this finds none and counts nothing.
        let counters = format!("{}{COUNTER_INFIX}", run_sk(run_id));
        let counters = self.query_partition("delete run", &project_pk(project_id), SortKeys::BeginsWith(&counters)).await?;
        self.delete_keys("delete run", keys_of(&counters)).await?;
        let prefix = shard_prefix(run_id);
        let markers = self.query_partition("delete run", &project_pk(project_id), SortKeys::BeginsWith(&prefix)).await?;
        self.delete_keys("delete run", keys_of(&markers)).await?;
        Ok(existed)
    }

    async fn claim_run(&self, project_id: &str, run_id: &str) -> Result<bool, MetaError> {
        let items = vec![
            self.live_project_check(project_id)?,
            self.update(
                key(project_pk(project_id), run_sk(run_id)),
                "SET #state = :queued, stage = :two",
                Some("#state = :created"),
                &[("#state", "state")],
                vec![(":queued", s(RunState::Queued.as_str())), (":created", s(RunState::Created.as_str())), (":two", n(2))],
            )?,
        ];
        Ok(matches!(self.transact("claim run", items).await?, Written::Done))
    }

    async fn start_run(&self, project_id: &str, run_id: &str, plan: &RunPlan) -> Result<bool, MetaError> {
        let items = vec![
            self.live_project_check(project_id)?,
            self.update(
                key(project_pk(project_id), run_sk(run_id)),
                "SET #state = :running, stage = :two, shards_total = :st, total_comparisons = :tc, time_started = :ts",
                Some("#state = :queued"),
                &[("#state", "state")],
                vec![
                    (":running", s(RunState::Running.as_str())),
                    (":queued", s(RunState::Queued.as_str())),
                    (":two", n(2)),
                    (":st", n(plan.shards_total)),
                    (":tc", n(plan.total_comparisons)),
                    (":ts", s(&plan.time_started)),
                ],
            )?,
        ];
        // The shard counters, with the transition (a redelivered start finds the run running and
        // changes nothing). 2 + SHARD_COUNTERS items: inside DynamoDB's 100 per transaction.
        let mut items = items;
        for k in 0..SHARD_COUNTERS {
            let mut counter = table::key(project_pk(project_id), counter_sk(run_id, k));
            counter.extend([
                ("shards_expected".into(), table::n(model::shards_on_counter(plan.shards_total, k))),
                ("shards_done".into(), table::n(0)),
                ("comparisons_done".into(), table::n(0)),
                ("candidate_count".into(), table::n(0)),
            ]);
            items.push(self.put(counter, None)?);
        }
        Ok(matches!(self.transact("start run", items).await?, Written::Done))
    }

    async fn enter_output_stage(&self, project_id: &str, run_id: &str) -> Result<(), MetaError> {
        self.update_one(
            "enter output stage",
            key(project_pk(project_id), run_sk(run_id)),
            "SET stage = :three",
            "#state = :running AND stage = :two",
            &[("#state", "state")],
            vec![(":three", n(3)), (":two", n(2)), (":running", s(RunState::Running.as_str()))],
        )
        .await?;
        Ok(())
    }

    async fn complete_run(&self, project_id: &str, run_id: &str, time_completed: &str) -> Result<bool, MetaError> {
        let Some(run) = self.get_run(project_id, run_id).await? else { return Ok(false) };
        if run.state != RunState::Running {
            return Ok(false);
        }
        let micros = compute_micros(run.time_started.as_deref(), time_completed);
        let items = vec![
            self.update(
                key(project_pk(project_id), run_sk(run_id)),
                "SET #state = :completed, time_completed = :tc",
                Some("#state = :running"),
                &[("#state", "state")],
                vec![(":completed", s(RunState::Completed.as_str())), (":running", s(RunState::Running.as_str())), (":tc", s(time_completed))],
            )?,
            self.update(
                stats_key(),
                "ADD completed_comparisons :c, completed_micros :m",
                None,
                &[],
                vec![(":c", n(run.total_comparisons)), (":m", n(micros))],
            )?,
        ];
        Ok(matches!(self.transact("complete run", items).await?, Written::Done))
    }

    async fn fail_run(&self, project_id: &str, run_id: &str, message: &str) -> Result<bool, MetaError> {
        table::check_run_error(project_id, run_id, message)?;
        // With the project check: a deleted project's runs are gone, as every read says.
        let items = vec![
            self.live_project_check(project_id)?,
            self.update(
                key(project_pk(project_id), run_sk(run_id)),
                "SET #state = :error, #error = :m",
                Some("#state IN (:created, :queued, :running)"),
                &[("#state", "state"), ("#error", "error")],
                vec![
                    (":error", s(RunState::Error.as_str())),
                    (":created", s(RunState::Created.as_str())),
                    (":queued", s(RunState::Queued.as_str())),
                    (":running", s(RunState::Running.as_str())),
                    (":m", s(message)),
                ],
            )?,
        ];
        Ok(matches!(self.transact("fail run", items).await?, Written::Done))
    }

    async fn run_secret(&self, project_id: &str, run_id: &str, fresh: &str) -> Result<Option<String>, MetaError> {
        // A deleted project's run is gone: its solve stops here instead of writing results that
        // the purge may already have passed.
        if !self.project_live(project_id).await? {
            return Ok(None);
        }
        // One conditional write: the first solve stores its draw, every later one reads it back.
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(project_pk(project_id), run_sk(run_id))))
            .update_expression("SET permutation_secret = if_not_exists(permutation_secret, :s)")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":s", s(fresh))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match out {
            Ok(out) => {
                let stored = out.attributes.as_ref().and_then(|a| opt_s(a, "permutation_secret"));
                stored.map(Some).ok_or_else(|| MetaError::Backend("run secret: the update returned no secret".into()))
            }
            Err(SdkError::ServiceError(se)) if se.err().is_conditional_check_failed_exception() => Ok(None),
            Err(e) => Err(backend("run secret", e)),
        }
    }
}

impl ShardCounter for DynamoMeta {
    async fn record_shards(&self, project_id: &str, run_id: &str, shards: &[ShardTally]) -> Result<ShardsOutcome, MetaError> {
        // No run item here (module doc of `model::SHARD_COUNTERS`): the marker makes a shard
        // exactly once, the counter's existence says the run started and was not deleted, the
        // project check that its project was not deleted (a purge starts after that mark, so it
        // removes whatever these shards wrote before). A batch is one transaction (≤ 1 + 2 × 10
        // items); if any condition fails (a redelivered shard), one transaction per shard.
        let pk = project_pk(project_id);
        let batch = model::distinct_shards(shards);
        let mut counted = vec![false; shards.len()];
        let mut by_counter: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        for (_, t) in &batch {
            let c = by_counter.entry(t.shard % SHARD_COUNTERS).or_default();
            *c = (c.0 + 1, c.1 + t.comparisons, c.2 + t.candidates);
        }
        let mut items = vec![self.live_project_check(project_id)?];
        for (_, t) in &batch {
            items.push(self.mark_shard(&pk, run_id, t.shard)?);
        }
        for (&k, &(shards_added, comparisons, candidates)) in &by_counter {
            items.push(self.count_on(&pk, run_id, k, shards_added, comparisons, candidates)?);
        }
        let mut touched: BTreeMap<u32, u64> = BTreeMap::new();
        if !batch.is_empty() && matches!(self.transact("record shards", items).await?, Written::Done) {
            for (i, t) in &batch {
                counted[*i] = true;
                *touched.entry(t.shard % SHARD_COUNTERS).or_default() += 1;
            }
        } else if batch.len() > 1 {
            for (i, t) in &batch {
                let k = t.shard % SHARD_COUNTERS;
                let items = vec![
                    self.live_project_check(project_id)?,
                    self.mark_shard(&pk, run_id, t.shard)?,
                    self.count_on(&pk, run_id, k, 1, t.comparisons, t.candidates)?,
                ];
                if matches!(self.transact("record shard", items).await?, Written::Done) {
                    counted[*i] = true;
                    *touched.entry(k).or_default() += 1;
                }
            }
        }
        // Counted ones: one strongly consistent read of the counters touched says whether the run
        // can be complete (or is due for a look); only then the run and all its counters are read.
        // A shard not counted (a redelivery, or the run deleted or not started) reads the run.
        let mut read = counted.iter().filter(|&&c| c).count() < batch.len();
        if !read && !touched.is_empty() {
            let keys: Vec<Item> = touched.keys().map(|&k| key(pk.clone(), counter_sk(run_id, k))).collect();
            let found = self.batch_get("record shards", keys).await?;
            read = found.len() < touched.len()
                || found.iter().try_fold(false, |any, c| -> Result<bool, MetaError> {
                    let k = opt_s(c, "sk").and_then(|sk| sk.rsplit(COUNTER_INFIX).next().and_then(|k| k.parse::<u32>().ok()));
                    let added = k.and_then(|k| touched.get(&k)).copied().unwrap_or(0);
                    Ok(any || model::counter_wants_run_read(counter(c, "shards_done")?, added, counter(c, "shards_expected")?))
                })?;
        }
        let run = if !read {
            RunAfterShard::Unread
        } else {
            match self.get_run(project_id, run_id).await? {
                Some(run) => RunAfterShard::Read(run),
                None => RunAfterShard::Deleted,
            }
        };
        Ok(ShardsOutcome { counted, run })
    }

    async fn counted_shards(&self, project_id: &str, run_id: &str) -> Result<Vec<u32>, MetaError> {
        if !self.project_live(project_id).await? {
            return Ok(Vec::new());
        }
        let prefix = shard_prefix(run_id);
        let markers = self.query_partition("counted shards", &project_pk(project_id), SortKeys::BeginsWith(&prefix)).await?;
        let mut shards = markers
            .iter()
            .map(|m| {
                opt_s(m, "sk")
                    .and_then(|sk| sk.strip_prefix(&prefix)?.parse::<u32>().ok())
                    .ok_or_else(|| corrupt("shard marker", m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        shards.sort_unstable();
        Ok(shards)
    }
}

impl WatchStore for DynamoMeta {
    async fn get_watch(&self, project_id: &str, target: &WatchTarget) -> Result<Option<Watch>, MetaError> {
        // The project's item and the watched one, in one strongly consistent batch read.
        let watched = watch_key(project_id, target);
        let watched_sk = watched.get("sk").cloned();
        let items = self.batch_get("get watch", vec![project_key(project_id), watched]).await?;
        let live = items.iter().any(|i| opt_s(i, "sk").as_deref() == Some(PROJECT_SK) && !get_bool(i, "deleted"));
        let Some(item) = items.into_iter().find(|i| i.get("sk") == watched_sk.as_ref()).filter(|_| live) else { return Ok(None) };
        let Some(fingerprint) = opt_s(&item, "watch_fingerprint") else { return Ok(None) };
        Ok(Some(Watch { fingerprint, since_secs: get_n(&item, "watch_since")?, redrives: get_n(&item, "watch_redrives")? }))
    }

    async fn put_watch(&self, project_id: &str, target: &WatchTarget, watch: &Watch) -> Result<bool, MetaError> {
        let items = vec![
            self.live_project_check(project_id)?,
            self.update(
                watch_key(project_id, target),
                "SET watch_fingerprint = :f, watch_since = :t, watch_redrives = :r",
                Some("attribute_exists(pk)"),
                &[],
                vec![(":f", s(&watch.fingerprint)), (":t", n(watch.since_secs)), (":r", n(watch.redrives))],
            )?,
        ];
        Ok(matches!(self.transact("put watch", items).await?, Written::Done))
    }
}

impl StatusStore for DynamoMeta {
    async fn status_counters(&self) -> Result<StatusCounters, MetaError> {
        let Some(item) = self.get_item("status counters", stats_key()).await? else { return Ok(StatusCounters::default()) };
        let project_count: i64 = match item.get("project_count") {
            None => 0,
            Some(_) => get_n(&item, "project_count")?,
        };
        Ok(StatusCounters {
            project_count: project_count.max(0) as u64,
            completed_comparisons: counter(&item, "completed_comparisons")?,
            completed_seconds: counter(&item, "completed_micros")? as f64 / 1e6,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::aws_limits::{DYNAMODB_MAX_ITEM_BYTES, LimitExceeded};
    use crate::aws::{dynamodb_client, unreachable_config};
    use aws_sdk_dynamodb::types::CancellationReason;

    fn offline() -> DynamoMeta {
        DynamoMeta::new(dynamodb_client(&unreachable_config()), "table")
    }

    fn project(schema_bytes: usize) -> Project {
        Project {
            project_id: "p".into(),
            result_type: ResultType::Groups,
            number_parties: 2,
            name: String::new(),
            notes: String::new(),
            schema: serde_json::Value::String("s".repeat(schema_bytes)),
            uses_blocking: false,
            time_added: "t".into(),
            result_token_hash: TokenHash::of("r"),
        }
    }

    #[tokio::test]
    async fn items_and_transactions_dynamodb_would_refuse_are_refused_before_the_call() {
        let meta = offline();
        let parties: Vec<Party> = (0..99).map(|i| Party::new(i, TokenHash::of("u"))).collect();
        let r = meta.create_project(&project(10), &parties).await;
        assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoTransaction { items: 101 }))), "{r:?}");

        let r = meta.create_project(&project(DYNAMODB_MAX_ITEM_BYTES), &parties[..2]).await;
        assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");

        let mut run = Run::created("p".into(), "r".into(), 0.8, "n".repeat(DYNAMODB_MAX_ITEM_BYTES), String::new(), "t".into());
        let r = meta.create_run(&run).await;
        assert!(matches!(r, Err(MetaError::Limit(LimitExceeded::DynamoItem { .. }))), "{r:?}");

        // Within the limits the request does go out (and fails here: nothing listens).
        run.name = String::new();
        assert!(matches!(meta.create_run(&run).await, Err(MetaError::Backend(_))));
    }

    #[test]
    fn each_upload_state_reads_back_from_its_item_and_an_item_lacking_its_data_is_corrupt() {
        let start = UploadStart { upload_id: "u".into(), receipt_token_hash: TokenHash::of("r") };
        let ingested = IngestedParty { record_count: 3, encoding_size: 128, entry_count: 6, block_count: 2 };
        for upload in [
            Upload::NotStarted,
            Upload::Pending(start.clone()),
            Upload::Done { start: start.clone(), ingested: ingested.clone() },
            Upload::Error { start: start.clone(), message: "bad base64".into() },
        ] {
            let party = Party { upload, ..Party::new(3, TokenHash::of("t")) };
            assert_eq!(party_from(&item(table::party_item("p", &party))).unwrap(), party);
        }
        let lacking = |upload: Upload, attribute: &str| {
            let mut attrs = table::party_item("p", &Party { upload, ..Party::new(3, TokenHash::of("t")) });
            attrs.retain(|(name, _)| name != attribute);
            party_from(&item(attrs))
        };
        let done = Upload::Done { start: start.clone(), ingested };
        assert!(matches!(lacking(Upload::Pending(start.clone()), "upload_id"), Err(MetaError::Backend(_))));
        assert!(matches!(lacking(done.clone(), "receipt_token_hash"), Err(MetaError::Backend(_))));
        assert!(matches!(lacking(done, "record_count"), Err(MetaError::Backend(_))));
        assert!(matches!(lacking(Upload::Error { start, message: "m".into() }, "error"), Err(MetaError::Backend(_))));
    }

    #[test]
    fn a_transaction_cancelled_by_a_conflict_is_a_retryable_conflict() {
        let reason = |code: &str| CancellationReason::builder().code(code).build();
        let conflict = TransactionCanceledException::builder()
            .cancellation_reasons(reason("None"))
            .cancellation_reasons(reason("TransactionConflict"))
            .build();
        assert!(matches!(cancelled("record shard", &conflict), Err(MetaError::TransactionConflict(_))));

        let condition = TransactionCanceledException::builder()
            .cancellation_reasons(reason("ConditionalCheckFailed"))
            .cancellation_reasons(reason("TransactionConflict"))
            .build();
        assert!(matches!(cancelled("record shard", &condition), Ok(Written::ConditionFailed(f)) if f == [0]));

        let throttled = TransactionCanceledException::builder().cancellation_reasons(reason("ThrottlingError")).build();
        assert!(matches!(cancelled("record shard", &throttled), Err(MetaError::Backend(_))));
    }
}
