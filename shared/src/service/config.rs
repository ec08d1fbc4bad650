//! Settings, read once per cold start from the environment (set by `infra/template.yaml` in AWS
//! and by `localstack/provision.py` locally, from the same template).

use std::env;

use super::pull_policy::{Network, PullPolicy};
use crate::engine::sizing::{ComputeProfile, SizingPolicy};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} has an invalid value {value:?}: {why}")]
    Invalid { name: &'static str, value: String, why: &'static str },
}

/// Limits on what the service accepts and produces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body the API accepts (API Gateway + Lambda cap payloads at ~6 MB).
    pub max_request_bytes: usize,
    /// Largest response body served inline; larger results are redirected to object storage.
    pub max_response_bytes: usize,
    pub min_encoding_size: usize,
    pub max_encoding_size: usize,
    /// Largest upload (direct or external) ingestion accepts.
    pub max_upload_bytes: u64,
    pub solver_max_candidate_pairs: u64,
    pub similarity_scores_max_candidate_pairs: u64,
    pub shard_target_comparisons: u64,
    /// `MaxShardsPerRun` (0: derived from compare's concurrency; see `engine::sizing`).
    pub max_shards_per_run: u64,
    /// What compare runs on (`CompareMemorySize`, `FunctionTimeoutSeconds`,
    /// `CompareReservedConcurrency`): shard sizing and the run estimate follow it.
    pub compare: ComputeProfile,
    /// Bytes of an upload-bucket object fan-out reads per ranged GET while ingesting it.
    pub ingest_chunk_bytes: u64,
    /// Bytes of an NDJSON blocks file one chunk of a partitioned ingestion parses (its memory
    /// follows: see `pipeline::blocked_ingestion`).
    pub ingest_blocks_chunk_bytes: u64,
    /// Seconds one streamed ingestion may take: fan-out has 900 s, and an upload that cannot be
    /// read in one invocation is refused with a message instead of timing out on every retry.
    pub ingest_time_budget_secs: u64,
    /// How many candidate files one solve invocation merges; a run with more shards is merged
    /// by a tree of invocations (`pipeline::merge`). Lowered further by what memory allows.
    pub solve_merge_fan_in: u32,
    /// Memory of the function in MB (Lambda's `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, which the local
    /// runner sets too). Solve sizes its read buffers and its memory-bound candidate limits from
    /// it; `None` (outside a function) means no memory-derived limit.
    pub function_memory_mb: Option<u64>,
    /// Bytes solve reads per ranged GET of a candidate file; `None`: derived from memory and the
    /// number of inputs. Set by tests to cut files into many small chunks.
    pub solve_read_chunk_bytes: Option<u64>,
    /// Seconds a project lives after its creation; then the watchdog deletes it and purges all
    /// its data (`pipeline::expiry`).
    pub project_lifetime_secs: u64,
    /// The most runs a project may have (posted and not deleted).
    pub max_runs_per_project: u64,
    /// The most comparisons all runs of a project may add up to.
    pub max_comparisons_per_project: u64,
    /// The most projects `GET /projects` returns per page.
    pub max_projects_listed: usize,
    /// SHA-256 (hex) of the admin key that `POST /projects` and `GET /projects` require, when
    /// set. Off by default: the reference's clients create projects without one.
    pub admin_key_sha256: Option<String>,
}

impl Limits {
    /// The largest `.json` encodings object (and its blocks file) fan-out ingests: JSON is
    /// decoded in memory (the file, the decoded records at ¾ of it and their packed copy: about
    /// 2.6× the file), so a third of the function's memory; binary uploads are streamed and
    /// partitioned whatever their size. `None` outside a function: no memory-derived limit.
    pub fn max_json_object_bytes(&self) -> Option<u64> {
        self.function_memory_mb.map(|mb| mb.saturating_mul(1024 * 1024) / 3)
    }

    /// How runs are sized into shards (fan-out plans with it; the api estimates with it).
    pub fn sizing(&self) -> SizingPolicy {
        SizingPolicy { target_comparisons: self.shard_target_comparisons, max_shards: self.max_shards_per_run, compare: self.compare }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 6 * 1024 * 1024 - 64 * 1024,
            max_response_bytes: 6 * 1024 * 1024 - 64 * 1024,
            min_encoding_size: 8,
            max_encoding_size: 1024,
            max_upload_bytes: 1 << 40,
            solver_max_candidate_pairs: 100_000_000,
            similarity_scores_max_candidate_pairs: 500_000_000,
            shard_target_comparisons: 300_000_000,
            max_shards_per_run: 0,
            compare: ComputeProfile::default(),
            ingest_chunk_bytes: 8 * 1024 * 1024,
            ingest_blocks_chunk_bytes: 8 * 1024 * 1024,
            ingest_time_budget_secs: 840,
            solve_merge_fan_in: 16_384,
            function_memory_mb: None,
            solve_read_chunk_bytes: None,
            project_lifetime_secs: 7 * 86_400,
            max_runs_per_project: 100,
            max_comparisons_per_project: 1_000_000_000_000_000,
            max_projects_listed: 1000,
            admin_key_sha256: None,
        }
    }
}

/// Where the direct-upload feature sends clients.
#[derive(Clone, Debug)]
pub struct UploadSettings {
    pub enabled: bool,
    pub bucket: String,
    /// Host[:port] clients use for the upload store (what `authorize-external-upload` returns).
    pub public_endpoint: String,
    pub public_secure: bool,
    pub credentials_ttl_secs: u64,
    pub role_arn: String,
}

/// The stuck-work watchdog (`pipeline::watchdog`), run by fan-out on a schedule.
#[derive(Clone, Debug)]
pub struct WatchdogSettings {
    /// Where S3 notifications of `incoming/` objects arrive (uploads and run requests wait there).
    pub ingest_queue_url: String,
    /// How long a run or upload may show no progress, with its queue empty, before its work
    /// counts as lost and is sent again.
    pub stall_after_secs: u64,
    /// How often lost work is sent again without any progress before the run or upload is put in
    /// `error`.
    pub max_redrives: u32,
    /// Seconds one sweep may spend; it stops there and the next sweep continues where it stopped.
    pub sweep_budget_secs: u64,
    /// The most projects one sweep looks at (the same bound, counted rather than timed).
    pub sweep_max_projects: usize,
}

impl Default for WatchdogSettings {
    fn default() -> Self {
        WatchdogSettings {
            ingest_queue_url: String::new(),
            stall_after_secs: 900,
            max_redrives: 3,
            sweep_budget_secs: 240,
            sweep_max_projects: 5000,
        }
    }
}

/// The queue whose dead-letter queue a message came from: which step failed it on every delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterSource {
    /// The ingest queue (S3 notifications of incoming objects: uploads, run starts, deletes).
    Ingest,
    /// The shard queue (shards and their dispatch ranges).
    Shard,
    /// The solve queue (solve messages and merge steps).
    Solve,
}

/// The dead-letter queue of each pipeline queue, by ARN. Fan-out consumes all three; the ARN an
/// event arrives from says which queue's message it is, so its body is read as that queue's
/// message and never guessed from its shape.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterQueues {
    pub ingest_arn: String,
    pub shard_arn: String,
    pub solve_arn: String,
}

impl DeadLetterQueues {
    /// Which queue's dead letters arrive from `arn`; `None` when it is none of them.
    pub fn source_of(&self, arn: &str) -> Option<DeadLetterSource> {
        [(&self.ingest_arn, DeadLetterSource::Ingest), (&self.shard_arn, DeadLetterSource::Shard), (&self.solve_arn, DeadLetterSource::Solve)]
            .into_iter()
            .find(|(known, _)| !known.is_empty() && known.as_str() == arn)
            .map(|(_, source)| source)
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub table_name: String,
    pub work_bucket: String,
    pub shard_queue_url: String,
    pub solve_queue_url: String,
    pub dead_letter_queues: DeadLetterQueues,
    pub upload: UploadSettings,
    /// Pulling uploads from object stores that clients name (off unless configured).
    pub pull: PullPolicy,
    pub limits: Limits,
    pub watchdog: WatchdogSettings,
    /// The role whose sessions may read one result object each (`RETURN-OBJECT-STORE-ADDRESS`);
    /// without it no download credentials are issued.
    pub results_role_arn: Option<String>,
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    env::var(name).map_err(|_| ConfigError::Missing(name))
}

fn optional(name: &'static str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn number<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError> {
    match optional(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Invalid { name, value: v, why: "not a number" }),
    }
}

fn flag(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match optional(name).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(v) => Err(ConfigError::Invalid { name, value: v.into(), why: "expected true or false" }),
    }
}

impl Settings {
    /// Reads every setting; names not needed by a function may be absent (empty strings).
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Limits::default();
        let limits = Limits {
            max_request_bytes: number("MAX_REQUEST_BYTES", d.max_request_bytes)?,
            max_response_bytes: number("MAX_RESPONSE_BYTES", d.max_response_bytes)?,
            min_encoding_size: number("MIN_ENCODING_SIZE", d.min_encoding_size)?,
            max_encoding_size: number("MAX_ENCODING_SIZE", d.max_encoding_size)?,
            max_upload_bytes: number("MAX_UPLOAD_BYTES", d.max_upload_bytes)?,
            solver_max_candidate_pairs: number("SOLVER_MAX_CANDIDATE_PAIRS", d.solver_max_candidate_pairs)?,
            similarity_scores_max_candidate_pairs: number(
                "SIMILARITY_SCORES_MAX_CANDIDATE_PAIRS",
                d.similarity_scores_max_candidate_pairs,
            )?,
            shard_target_comparisons: number("SHARD_TARGET_COMPARISONS", d.shard_target_comparisons)?,
            max_shards_per_run: number("MAX_SHARDS_PER_RUN", d.max_shards_per_run)?,
            compare: ComputeProfile {
                memory_mb: number("COMPARE_MEMORY_MB", d.compare.memory_mb)?,
                timeout_secs: number("COMPARE_TIMEOUT_SECS", d.compare.timeout_secs)?,
                concurrency: number("COMPARE_CONCURRENCY", d.compare.concurrency)?,
            },
            ingest_chunk_bytes: number("INGEST_CHUNK_BYTES", d.ingest_chunk_bytes)?.max(1),
            ingest_blocks_chunk_bytes: number("INGEST_BLOCKS_CHUNK_BYTES", d.ingest_blocks_chunk_bytes)?.max(1),
            ingest_time_budget_secs: number("INGEST_TIME_BUDGET_SECS", d.ingest_time_budget_secs)?,
            solve_merge_fan_in: number("SOLVE_MERGE_FAN_IN", d.solve_merge_fan_in)?.max(2),
            function_memory_mb: optional("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .map(|v| v.parse().map_err(|_| ConfigError::Invalid { name: "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", value: v, why: "not a number" }))
                .transpose()?,
            solve_read_chunk_bytes: None,
            project_lifetime_secs: number("PROJECT_LIFETIME_SECS", d.project_lifetime_secs)?.max(60),
            max_runs_per_project: number("MAX_RUNS_PER_PROJECT", d.max_runs_per_project)?,
            max_comparisons_per_project: number("MAX_COMPARISONS_PER_PROJECT", d.max_comparisons_per_project)?,
            max_projects_listed: number("MAX_PROJECTS_LISTED", d.max_projects_listed)?.clamp(1, 1000),
            admin_key_sha256: optional("ADMIN_KEY_SHA256").map(|v| v.to_ascii_lowercase()),
        };
        if let Some(hash) = &limits.admin_key_sha256
            && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ConfigError::Invalid {
                name: "ADMIN_KEY_SHA256",
                value: "(not shown)".into(),
                why: "must be the SHA-256 of the admin key as 64 hex characters",
            });
        }
        if limits.shard_target_comparisons == 0 {
            return Err(ConfigError::Invalid {
                name: "SHARD_TARGET_COMPARISONS",
                value: "0".into(),
                why: "must be positive",
            });
        }
        Ok(Settings {
            table_name: required("TABLE_NAME")?,
            work_bucket: required("WORK_BUCKET")?,
            shard_queue_url: optional("SHARD_QUEUE_URL").unwrap_or_default(),
            solve_queue_url: optional("SOLVE_QUEUE_URL").unwrap_or_default(),
            dead_letter_queues: DeadLetterQueues {
                ingest_arn: optional("INGEST_DEAD_LETTER_QUEUE_ARN").unwrap_or_default(),
                shard_arn: optional("SHARD_DEAD_LETTER_QUEUE_ARN").unwrap_or_default(),
                solve_arn: optional("SOLVE_DEAD_LETTER_QUEUE_ARN").unwrap_or_default(),
            },
            upload: UploadSettings {
                enabled: flag("EXTERNAL_UPLOAD_ENABLED", true)?,
                bucket: optional("UPLOAD_BUCKET").unwrap_or_default(),
                public_endpoint: optional("UPLOAD_PUBLIC_ENDPOINT").unwrap_or_else(|| {
                    format!("s3.{}.amazonaws.com", optional("AWS_REGION").unwrap_or_else(|| "us-east-1".into()))
                }),
                public_secure: flag("UPLOAD_PUBLIC_SECURE", true)?,
                credentials_ttl_secs: number("UPLOAD_CREDENTIALS_TTL_SECS", 43_200)?,
                role_arn: optional("UPLOAD_ROLE_ARN").unwrap_or_default(),
            },
            pull: PullPolicy {
                enabled: flag("EXTERNAL_PULL_ENABLED", false)?,
                allow_http: flag("EXTERNAL_PULL_ALLOW_HTTP", false)?,
                allow_loopback: flag("EXTERNAL_PULL_ALLOW_LOOPBACK", false)?,
                allowed_networks: networks("EXTERNAL_PULL_ALLOWED_NETWORKS")?,
                allowed_ports: ports("EXTERNAL_PULL_ALLOWED_PORTS")?,
            },
            limits,
            watchdog: WatchdogSettings {
                ingest_queue_url: optional("INGEST_QUEUE_URL").unwrap_or_default(),
                stall_after_secs: number("WATCHDOG_STALL_SECS", WatchdogSettings::default().stall_after_secs)?,
                max_redrives: number("WATCHDOG_MAX_REDRIVES", WatchdogSettings::default().max_redrives)?,
                sweep_budget_secs: number("WATCHDOG_SWEEP_BUDGET_SECS", WatchdogSettings::default().sweep_budget_secs)?,
                sweep_max_projects: number("WATCHDOG_SWEEP_MAX_PROJECTS", WatchdogSettings::default().sweep_max_projects)?.max(1),
            },
            results_role_arn: optional("RESULTS_ROLE_ARN"),
        })
    }
}

/// A comma-separated list of TCP ports (empty: none).
fn ports(name: &'static str) -> Result<Vec<u16>, ConfigError> {
    let Some(value) = optional(name) else { return Ok(Vec::new()) };
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| ConfigError::Invalid { name, value: value.clone(), why: "expected ports of 1..=65535, comma-separated" }))
        .collect()
}

/// A comma-separated list of CIDR networks (empty: none).
fn networks(name: &'static str) -> Result<Vec<Network>, ConfigError> {
    let Some(value) = optional(name) else { return Ok(Vec::new()) };
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse().map_err(|_| ConfigError::Invalid { name, value: value.clone(), why: "expected CIDR networks, comma-separated" }))
        .collect()
}
