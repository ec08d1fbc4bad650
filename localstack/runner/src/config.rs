//! `runner.json`, written by `localstack/provision.py` from `infra/template.yaml`.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct RunnerConfig {
    pub functions: Vec<FunctionConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionConfig {
    pub name: String,
    pub binary: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    /// Concurrent instances (Lambda's concurrency for this function).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub event_sources: Vec<EventSource>,
    /// EventBridge schedules (SAM `Type: Schedule` events).
    #[serde(default)]
    pub schedules: Vec<Schedule>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub every_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventSource {
    pub queue_url: String,
    pub queue_arn: String,
    #[serde(default = "default_batch")]
    pub batch_size: i32,
    #[serde(default)]
    pub report_batch_item_failures: bool,
}

fn default_timeout() -> u64 {
    900
}
fn default_memory() -> u64 {
    1024
}
fn default_concurrency() -> usize {
    std::env::var("LOCAL_RUNNER_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}
fn default_batch() -> i32 {
    1
}

impl RunnerConfig {
    pub fn load(path: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {path}"))
    }
}
