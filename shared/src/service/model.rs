//! Projects, parties and runs: what is stored and what the API reports.
//!
//! Serialized names follow the reference API (`result_type`, `groups`, `not_started`, ...), so
//! the same strings appear in DynamoDB items, JSON bodies and logs.

use serde::{Deserialize, Serialize};

use super::tokens::TokenHash;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultType {
    Groups,
    Permutations,
    SimilarityScores,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::Groups => "groups",
            ResultType::Permutations => "permutations",
            ResultType::SimilarityScores => "similarity_scores",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "groups" => Some(Self::Groups),
            "permutations" => Some(Self::Permutations),
            "similarity_scores" => Some(Self::SimilarityScores),
            _ => None,
        }
    }
    /// similarity_scores runs end after stage 2; the others have an output stage.
    pub fn stages(self) -> u8 {
        match self {
            ResultType::SimilarityScores => 2,
            _ => 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub project_id: String,
    pub result_type: ResultType,
    pub number_parties: u32,
    pub name: String,
    pub notes: String,
    /// The linkage schema as given (free-form JSON; only `clkConfig.l` is read).
    pub schema: serde_json::Value,
    pub uses_blocking: bool,
    /// ISO 8601 with offset.
    pub time_added: String,
    pub result_token_hash: TokenHash,
}

impl Project {
    /// Encoding size in bytes the schema expects (`clkConfig.l / 8`), if it says.
    pub fn schema_encoding_size(&self) -> Option<usize> {
        let bits = self.schema.get("clkConfig")?.get("l")?.as_u64()?;
        Some((bits / 8) as usize)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectSummary {
    pub project_id: String,
    pub time_added: String,
}

impl ProjectSummary {
    /// Where a listing continues after this project (projects are listed by `time_added`, then
    /// id; DynamoDB: the projects index's sort key).
    pub fn cursor(&self) -> String {
        format!("{}#{}", self.time_added, self.project_id)
    }
}

/// A deleted project whose purge has not completed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub project_id: String,
    /// When it was deleted (Unix seconds).
    pub deleted_secs: u64,
}

/// The name of an upload's state, as stored (DynamoDB's `upload_state`, which its condition
/// expressions compare) and as logged. What each state holds is [`Upload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    NotStarted,
    Pending,
    Done,
    Error,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::NotStarted => "not_started",
            UploadState::Pending => "pending",
            UploadState::Done => "done",
            UploadState::Error => "error",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "not_started" => Some(Self::NotStarted),
            "pending" => Some(Self::Pending),
            "done" => Some(Self::Done),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// One data provider of a project (index = position of its update token).
#[derive(Clone, Debug, PartialEq)]
pub struct Party {
    pub index: u32,
    pub update_token_hash: TokenHash,
    pub upload: Upload,
}

impl Party {
    /// A party as a project is created: no upload yet.
    pub fn new(index: u32, update_token_hash: TokenHash) -> Self {
        Party { index, update_token_hash, upload: Upload::NotStarted }
    }
}

/// Where a party's upload stands, each state with what it has: an upload that began has its id
/// (its objects are keyed by it) and its receipt token for good, a done one what ingestion
/// found, a failed one why. So no reader checks that a pending upload has an id or a done one
/// its ingestion record: the type says so (the metadata stores refuse to read an item that
/// breaks it).
#[derive(Clone, Debug, PartialEq)]
pub enum Upload {
    /// Nothing uploaded yet, or the last upload was withdrawn (`abort_upload` without a message).
    NotStarted,
    /// Stored, being ingested.
    Pending(UploadStart),
    Done { start: UploadStart, ingested: IngestedParty },
    /// Failed: storing, ingestion, or its encoding size disagreed with the others' (what that
    /// ingestion found is dropped). The party may upload again with the same token.
    Error { start: UploadStart, message: String },
}

impl Upload {
    pub fn state(&self) -> UploadState {
        match self {
            Upload::NotStarted => UploadState::NotStarted,
            Upload::Pending(_) => UploadState::Pending,
            Upload::Done { .. } => UploadState::Done,
            Upload::Error { .. } => UploadState::Error,
        }
    }

    /// The upload that began last (pending, done or failed).
    pub fn start(&self) -> Option<&UploadStart> {
        match self {
            Upload::NotStarted => None,
            Upload::Pending(start) | Upload::Done { start, .. } | Upload::Error { start, .. } => Some(start),
        }
    }

    pub fn upload_id(&self) -> Option<&str> {
        self.start().map(|start| start.upload_id.as_str())
    }

    /// The pending upload, if it is `upload_id` (the one an event or a step is about).
    pub fn pending(&self, upload_id: &str) -> Option<&UploadStart> {
        match self {
            Upload::Pending(start) if start.upload_id == upload_id => Some(start),
            _ => None,
        }
    }

    /// What ingestion found, once done.
    pub fn ingested(&self) -> Option<&IngestedParty> {
        match self {
            Upload::Done { ingested, .. } => Some(ingested),
            _ => None,
        }
    }

    /// Whether the party may upload now: nothing uploaded yet, or the last upload failed.
    pub fn may_begin(&self) -> bool {
        matches!(self, Upload::NotStarted | Upload::Error { .. })
    }
}

/// What ingestion learned about a party's data (stored on the party once done).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestedParty {
    pub record_count: u64,
    pub encoding_size: u32,
    /// Entries in the packed data (records × blocks they are in).
    pub entry_count: u64,
    pub block_count: u64,
}

/// What `begin_upload` stores, and every later state of that upload keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStart {
    pub upload_id: String,
    pub receipt_token_hash: TokenHash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Created,
    Queued,
    Running,
    Completed,
    Error,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Error => "error",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Self::Created),
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "completed" => Some(Self::Completed),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Completed | RunState::Error)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub project_id: String,
    pub run_id: String,
    pub threshold: f64,
    pub name: String,
    pub notes: String,
    pub state: RunState,
    /// 1 waiting for data, 2 computing similarities, 3 computing output.
    pub stage: u8,
    pub time_added: String,
    pub time_started: Option<String>,
    pub time_completed: Option<String>,
    pub total_comparisons: u64,
    pub comparisons_done: u64,
    pub shards_total: u32,
    pub shards_done: u32,
    pub candidate_count: u64,
    pub error: Option<String>,
    /// Extension, asked for at POST: a `groups` result that carries each group's edges with
    /// their scores (`engine::output::write_scored_groups`).
    pub group_scores: bool,
}

impl Run {
    /// A run as posted: `created`, waiting for data (stage 1), nothing counted yet.
    pub fn created(project_id: String, run_id: String, threshold: f64, name: String, notes: String, time_added: String) -> Self {
        Run {
            project_id,
            run_id,
            threshold,
            name,
            notes,
            state: RunState::Created,
            stage: 1,
            time_added,
            time_started: None,
            time_completed: None,
            total_comparisons: 0,
            comparisons_done: 0,
            shards_total: 0,
            shards_done: 0,
            candidate_count: 0,
            error: None,
            group_scores: false,
        }
    }
}

/// What fan-out stores when a run starts computing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPlan {
    pub shards_total: u32,
    pub total_comparisons: u64,
    pub time_started: String,
}

/// Counter items per run: shard `n` of a run is counted on counter `n mod SHARD_COUNTERS`,
/// never on the run item, so completions spread over this many items (DynamoDB cancels
/// concurrent transactions on one item, and one item takes ~1,000 writes a second). A run's
/// progress is the sum of its counters, read with the run in one query. 64 keeps each counter
/// near one completion a second at national scale (50,000 shards in ~15 minutes) and fits, with
/// the run item and the project check, in one 100-item transaction at start.
pub const SHARD_COUNTERS: u32 = 64;

/// Shards counted on counter `k` of a run of `shards_total` shards (shard `n` goes to counter
/// `n mod SHARD_COUNTERS`). Stored on each counter at start, so a counter knows when it is full.
pub fn shards_on_counter(shards_total: u32, k: u32) -> u32 {
    shards_total / SHARD_COUNTERS + u32::from(k < shards_total % SHARD_COUNTERS)
}

/// A counted shard reads the whole run (its item and every counter) only when its counter
/// became full — only then can the run be complete — or every this many shards of a counter,
/// so the candidate limit is checked every ~`RUN_READ_EVERY` shards of the run (a batch of ten
/// shards touches ten counters, so it reads the run with a chance of ~1 − (63/64)¹⁰ ≈ 15%). Reading the run
/// after every shard was two requests and a 65-item query per shard: more than the shard's
/// compute at a small shard target (bench/README.md, "Many shards").
pub const RUN_READ_EVERY: u64 = 64;

/// Whether a counter that `added` shards brought to `done` of its `expected` makes the run
/// worth reading: it is full, or it passed a multiple of [`RUN_READ_EVERY`].
pub fn counter_wants_run_read(done: u64, added: u64, expected: u64) -> bool {
    done >= expected || done / RUN_READ_EVERY != done.saturating_sub(added) / RUN_READ_EVERY
}

/// One computed shard, to be counted: `record_shards`' input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardTally {
    pub shard: u32,
    pub comparisons: u64,
    pub candidates: u64,
}

/// The distinct shards of a batch with their first position (a batch may carry a shard twice:
/// SQS delivers at least once), as both metadata stores count them.
pub fn distinct_shards(shards: &[ShardTally]) -> Vec<(usize, &ShardTally)> {
    let mut seen = std::collections::BTreeSet::new();
    shards.iter().enumerate().filter(|(_, t)| seen.insert(t.shard)).collect()
}

/// Result of `record_shard`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardOutcome {
    /// False when this shard had been counted before (a redelivery or a concurrent twin).
    pub counted: bool,
    pub run: RunAfterShard,
}

/// Result of `record_shards`: which of the shards were counted now (in input order; a shard
/// given twice is counted at most once), and the run afterwards.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardsOutcome {
    pub counted: Vec<bool>,
    pub run: RunAfterShard,
}

/// The run as `record_shards` left it.
#[derive(Clone, Debug, PartialEq)]
pub enum RunAfterShard {
    /// Deleted (or its project deleted) while the shards were computed: nothing was counted.
    Deleted,
    /// The run, counters summed: read when a counter the shards touched became full or passed a
    /// multiple of [`RUN_READ_EVERY`], and whenever a shard was not counted.
    Read(Run),
    /// Not read: every counter the shards touched still expects more, so the run is not complete.
    Unread,
}

impl RunAfterShard {
    pub fn run(&self) -> Option<&Run> {
        match self {
            RunAfterShard::Read(run) => Some(run),
            RunAfterShard::Deleted | RunAfterShard::Unread => None,
        }
    }
}

/// What compare needs before it computes a shard: whether the run still wants it and at which
/// threshold. One read of the run's item and its project's, not of the run's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct RunHead {
    pub state: RunState,
    pub threshold: f64,
}

/// Inputs of `/status`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StatusCounters {
    pub project_count: u64,
    /// Σ comparisons of completed runs and Σ of their compute durations (seconds), for `rate`.
    pub completed_comparisons: u64,
    pub completed_seconds: f64,
}

/// What the watchdog keeps an eye on: an unfinished run, or a party's pending upload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WatchTarget {
    Run(String),
    Upload(u32),
}

/// The watchdog's note on one watched item: its progress as last seen, since when that has not
/// changed (Unix seconds), and how often its work was re-sent without progress since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub fingerprint: String,
    pub since_secs: u64,
    pub redrives: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_share_the_shards_and_the_last_of_each_reads_the_run() {
        for total in [0, 1, 63, 64, 65, 20_022, 50_000] {
            let per_counter: Vec<u32> = (0..SHARD_COUNTERS).map(|k| shards_on_counter(total, k)).collect();
            assert_eq!(per_counter.iter().sum::<u32>(), total);
            for (k, &expected) in per_counter.iter().enumerate() {
                let on_k = (0..total).filter(|n| n % SHARD_COUNTERS == k as u32).count() as u32;
                assert_eq!(expected, on_k, "counter {k} of {total}");
                assert!(expected == 0 || counter_wants_run_read(u64::from(expected), 1, u64::from(expected)));
            }
        }
        let reads = (1..=313u64).filter(|&d| counter_wants_run_read(d, 1, 313)).count();
        assert_eq!(reads, 313 / RUN_READ_EVERY as usize + 1, "every RUN_READ_EVERY-th shard and the last");
        // Several shards on one counter at once: read when they pass a multiple, not only land on it.
        assert!(counter_wants_run_read(65, 3, 313) && !counter_wants_run_read(68, 3, 313) && counter_wants_run_read(128, 3, 313));
    }
}
