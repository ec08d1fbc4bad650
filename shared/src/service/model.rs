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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Party {
    pub index: u32,
    pub update_token_hash: TokenHash,
    pub upload_state: UploadState,
    /// The upload currently pending or done (its objects are keyed by it).
    pub upload_id: Option<String>,
    pub receipt_token_hash: Option<TokenHash>,
    pub error: Option<String>,
    /// Filled by ingestion.
    pub ingested: Option<IngestedParty>,
}

impl Party {
    /// A party as a project is created: no upload yet.
    pub fn new(index: u32, update_token_hash: TokenHash) -> Self {
        Party {
            index,
            update_token_hash,
            upload_state: UploadState::NotStarted,
            upload_id: None,
            receipt_token_hash: None,
            error: None,
            ingested: None,
        }
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

/// What `begin_upload` stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// Result of `record_shard`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardOutcome {
    /// False when this shard had been counted before (a redelivery or a concurrent twin).
    pub counted: bool,
    /// The run after the update; `None` if it was deleted meanwhile.
    pub run: Option<Run>,
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
