//! The metadata table's items (`docs/data-model.md`): their keys and attributes, without SDK
//! types.
//!
//! The DynamoDB adapter (`aws::dynamo`) writes exactly these items; the in-memory adapter
//! ([`super::memory`]) lays out what it stores the same way to compute each item's size as
//! DynamoDB does ([`item_bytes`]), so both refuse an item over DynamoDB's 400 KB.

use super::aws_limits::{self, LimitExceeded};
use super::model::{IngestedParty, Party, Project, Run, Upload, UploadStart, Watch, WatchTarget};
use super::tokens::TokenHash;

/// One attribute value, of the three types the service stores.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    S(String),
    /// A number, as its decimal text.
    N(String),
    Bool(bool),
}

/// An item: `(name, value)` pairs, keys first.
pub type Attrs = Vec<(String, Attr)>;

pub fn s(v: impl Into<String>) -> Attr {
    Attr::S(v.into())
}
pub fn n(v: impl ToString) -> Attr {
    Attr::N(v.to_string())
}

// ---- keys -------------------------------------------------------------------------------------

pub const PROJECT_SK: &str = "PROJECT";
pub const PROJECTS_GSI_PK: &str = "PROJECTS";
pub const STATS: &str = "STATS";

pub fn project_pk(project_id: &str) -> String {
    format!("P#{project_id}")
}
pub fn party_sk(index: u32) -> String {
    format!("PARTY#{index:05}")
}
pub fn run_sk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}
/// Shard counter `k` of a run (`model::SHARD_COUNTERS`): under the run's own sort key, so the
/// run and its counters are one query.
pub fn counter_sk(run_id: &str, k: u32) -> String {
    format!("RUN#{run_id}{COUNTER_INFIX}{k:03}")
}
pub const COUNTER_INFIX: &str = "#COUNT#";
pub fn shard_prefix(run_id: &str) -> String {
    format!("SHARD#{run_id}#")
}
pub fn shard_sk(run_id: &str, shard: u32) -> String {
    format!("SHARD#{run_id}#{shard:08}")
}
pub fn watch_sk(target: &WatchTarget) -> String {
    match target {
        WatchTarget::Run(run_id) => run_sk(run_id),
        WatchTarget::Upload(party) => party_sk(*party),
    }
}

pub fn key(pk: String, sk: String) -> Attrs {
    vec![("pk".to_string(), Attr::S(pk)), ("sk".to_string(), Attr::S(sk))]
}
pub fn project_key(project_id: &str) -> Attrs {
    key(project_pk(project_id), PROJECT_SK.into())
}
pub fn stats_key() -> Attrs {
    key(STATS.into(), STATS.into())
}

// ---- items ------------------------------------------------------------------------------------

fn extend(item: &mut Attrs, attrs: impl IntoIterator<Item = (&'static str, Attr)>) {
    item.extend(attrs.into_iter().map(|(name, value)| (name.to_string(), value)));
}

pub fn project_item(p: &Project) -> Attrs {
    let mut item = project_key(&p.project_id);
    extend(
        &mut item,
        [
            ("project_id", s(&p.project_id)),
            ("result_type", s(p.result_type.as_str())),
            ("number_parties", n(p.number_parties)),
            ("name", s(&p.name)),
            ("notes", s(&p.notes)),
            ("schema", s(p.schema.to_string())),
            ("uses_blocking", Attr::Bool(p.uses_blocking)),
            ("time_added", s(&p.time_added)),
            ("result_token_hash", s(&p.result_token_hash.0)),
            ("deleted", Attr::Bool(false)),
            ("gsi1pk", s(PROJECTS_GSI_PK)),
            ("gsi1sk", s(format!("{}#{}", p.time_added, p.project_id))),
        ],
    );
    item
}

pub fn party_item(project_id: &str, p: &Party) -> Attrs {
    let mut item = key(project_pk(project_id), party_sk(p.index));
    extend(
        &mut item,
        [
            ("party_index", n(p.index)),
            ("update_token_hash", s(&p.update_token_hash.0)),
            ("upload_state", s(p.upload.state().as_str())),
        ],
    );
    if let Some(start) = p.upload.start() {
        extend(&mut item, [("upload_id", s(&start.upload_id)), ("receipt_token_hash", s(&start.receipt_token_hash.0))]);
    }
    match &p.upload {
        Upload::NotStarted | Upload::Pending(_) => {}
        Upload::Done { ingested, .. } => extend(&mut item, ingested_attrs(ingested)),
        Upload::Error { message, .. } => extend(&mut item, [("error", s(message))]),
    }
    item
}

/// Refuses, before either store looks at the party's state, an error message that would take
/// the party's item past DynamoDB's item size once failed: both stores then answer an oversized
/// message alike, whatever the upload's state, and the way DynamoDB itself would (token hashes
/// have one length, so the item's size follows from the ids and the message).
pub fn check_upload_error(project_id: &str, party: u32, upload_id: &str, message: &str) -> Result<(), LimitExceeded> {
    let start = UploadStart { upload_id: upload_id.into(), receipt_token_hash: TokenHash::of("") };
    let upload = Upload::Error { start, message: message.into() };
    check_item(&party_item(project_id, &Party { upload, ..Party::new(party, TokenHash::of("")) }))
}

/// Refuses, before either store looks at the run's state, a failure message that cannot fit a
/// run item with it (its key and the message alone): both stores then answer alike whatever the
/// run's state, as for uploads ([`check_upload_error`]). A message that fits alone but not with
/// the rest of the run is refused by the write itself.
pub fn check_run_error(project_id: &str, run_id: &str, message: &str) -> Result<(), LimitExceeded> {
    let mut item = key(project_pk(project_id), run_sk(run_id));
    item.push(("error".into(), Attr::S(message.into())));
    check_item(&item)
}

pub fn ingested_attrs(i: &IngestedParty) -> [(&'static str, Attr); 4] {
    [
        ("record_count", n(i.record_count)),
        ("encoding_size", n(i.encoding_size)),
        ("entry_count", n(i.entry_count)),
        ("block_count", n(i.block_count)),
    ]
}

pub fn run_item(r: &Run) -> Attrs {
    let mut item = key(project_pk(&r.project_id), run_sk(&r.run_id));
    extend(
        &mut item,
        [
            ("project_id", s(&r.project_id)),
            ("run_id", s(&r.run_id)),
            ("threshold", n(r.threshold)),
            ("name", s(&r.name)),
            ("notes", s(&r.notes)),
            ("state", s(r.state.as_str())),
            ("stage", n(r.stage)),
            ("time_added", s(&r.time_added)),
            ("total_comparisons", n(r.total_comparisons)),
            ("comparisons_done", n(r.comparisons_done)),
            ("shards_total", n(r.shards_total)),
            ("shards_done", n(r.shards_done)),
            ("candidate_count", n(r.candidate_count)),
        ],
    );
    let optional = [("time_started", &r.time_started), ("time_completed", &r.time_completed), ("error", &r.error)];
    extend(&mut item, optional.into_iter().filter_map(|(name, v)| Some((name, s(v.as_deref()?)))));
    if r.group_scores {
        // Only when asked for: runs without it keep the items they always had.
        extend(&mut item, [("group_scores", Attr::Bool(true))]);
    }
    item
}

/// The watchdog's note, stored on the run or party item it watches.
pub fn watch_attrs(w: &Watch) -> [(&'static str, Attr); 3] {
    [("watch_fingerprint", s(&w.fingerprint)), ("watch_since", n(w.since_secs)), ("watch_redrives", n(w.redrives))]
}

// ---- sizes ------------------------------------------------------------------------------------

/// The item's size as DynamoDB counts it: the UTF-8 length of every attribute name plus the size
/// of its value (a string's UTF-8 length, a number's [`aws_limits::dynamo_number_bytes`], one
/// byte for a boolean).
pub fn item_bytes(item: &Attrs) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    Attr::S(v) => v.len(),
                    Attr::N(v) => aws_limits::dynamo_number_bytes(v),
                    Attr::Bool(_) => 1,
                }
        })
        .sum()
}

/// Refuses an item over DynamoDB's item limit, naming it by its key.
pub fn check_item(item: &Attrs) -> Result<(), LimitExceeded> {
    aws_limits::check_dynamo_item(|| item_name(item), item_bytes(item))
}

fn item_name(item: &Attrs) -> String {
    let part = |name: &str| match item.iter().find(|(n, _)| n == name) {
        Some((_, Attr::S(v))) => v.clone(),
        _ => String::new(),
    };
    format!("{}/{}", part("pk"), part("sk"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tokens::TokenHash;

    #[test]
    fn sizes_count_names_and_values_as_dynamodb_does() {
        // "pk" + "P#p" + "sk" + "RUN#r" = 2 + 3 + 2 + 5; "n" + 123 (2 digits/byte + 1) = 1 + 3; "b" + 1.
        let mut item = key("P#p".into(), "RUN#r".into());
        item.push(("n".into(), n(123)));
        item.push(("b".into(), Attr::Bool(true)));
        item.push(("é".into(), s("€")));
        assert_eq!(item_bytes(&item), 12 + 4 + 2 + 2 + 3);
    }

    #[test]
    fn an_item_over_400_kb_is_refused_and_named() {
        let mut run = Run::created("p".into(), "r".into(), 0.8, String::new(), String::new(), "t".into());
        check_item(&run_item(&run)).unwrap();
        run.error = Some("x".repeat(aws_limits::DYNAMODB_MAX_ITEM_BYTES));
        let refused = check_item(&run_item(&run)).unwrap_err();
        assert!(matches!(&refused, LimitExceeded::DynamoItem { item, bytes } if item == "P#p/RUN#r" && *bytes > aws_limits::DYNAMODB_MAX_ITEM_BYTES));

        let party = Party::new(0, TokenHash::of("u"));
        assert!(item_bytes(&party_item("p", &party)) < 200);
    }
}
