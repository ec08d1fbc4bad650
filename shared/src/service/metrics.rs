//! What operators graph and alarm on: CloudWatch Embedded Metric Format (EMF) documents, one
//! JSON line on stdout per event, which CloudWatch Logs turns into metrics of the namespace
//! `METRICS_NAMESPACE` (the template sets `PPRL/<stack name>`) without any API call — nothing is
//! slowed down or lost when CloudWatch is slow, and the document stays searchable in Logs
//! Insights with the ids of the run or project it is about.
//!
//! Each event is one document written when it happens, carrying its own ids as properties
//! (`ProjectId`, `RunId`, …: too many distinct values for dimensions, which CloudWatch bills per
//! combination). That is why this is a small writer of its own rather than the `metrics` facade
//! with `metrics_cloudwatch_embedded`: that recorder sums what a process recorded and flushes it
//! per invocation, with process-wide properties, so a shard's document could not name its run, and
//! its global recorder could not be tested in isolation. Here the document is a serde struct that
//! mirrors the specification, serialized as one line.
//!
//! | document (emitted by) | metrics (unit) | dimensions | properties |
//! |---|---|---|---|
//! | a shard counted (compare, once per shard) | `Comparisons` (Count), `Candidates` (Count), `ShardDuration` (Milliseconds), `FetchedBytes` (Bytes), `ComparisonsPerSecond` (Count/Second; only when this attempt ran the kernel) | — | `ProjectId`, `RunId`, `Shard` |
//! | an upload ingested (fan-out, once per upload) | `UploadRecords` (Count), `UploadBytes` (Bytes: records × encoding size), `IngestDuration` (Milliseconds: the invocation that completed it) | — | `ProjectId`, `Party` |
//! | a watchdog sweep (fan-out, every schedule) | `WatchdogProjects`, `WatchdogRedrives`, `WatchdogFailures`, `WatchdogErrors` (Count), `WatchdogDuration` (Milliseconds) | — | — |
//! | a run completed or failed (solve, or whichever step failed it; once per run) | `Runs` (Count, 1), `RunComparisons` (Count: comparisons done), `RunDuration` (Seconds, from `time_started`; absent for a run that never started) | `Outcome` = `completed` \| `failed` | `ProjectId`, `RunId` |
//! | a cold start (every function, once per instance) | `ColdStart` (Count, 1) | `Function` = `api` \| `fan-out` \| `compare` \| `solve` | — |
//!
//! Metrics never fail a request: a document that cannot be written is logged and dropped.
//! Nothing is written until [`init`] (called by the Lambda entry points) says where; unit tests
//! see documents only through a [`Capture`].

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Number, Value};
use tracing::{info, warn};

use super::model::Run;
use super::time;

/// The namespace when `METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "PPRL";

/// A CloudWatch unit (the subset these metrics use), spelled as CloudWatch spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Unit {
    Count,
    Bytes,
    Milliseconds,
    Seconds,
    #[serde(rename = "Count/Second")]
    CountPerSecond,
}

/// One event's metrics, dimensions and properties, as the EMF document will carry them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    metrics: Vec<(&'static str, Unit, Number)>,
    dimensions: Vec<(&'static str, String)>,
    properties: Vec<(&'static str, Value)>,
}

impl Document {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn count(self, name: &'static str, value: u64) -> Self {
        self.number(name, Unit::Count, Number::from(value))
    }

    pub fn bytes(self, name: &'static str, value: u64) -> Self {
        self.number(name, Unit::Bytes, Number::from(value))
    }

    /// A measurement; a value that is not finite (JSON has no number for it) is left out.
    pub fn measure(self, name: &'static str, unit: Unit, value: f64) -> Self {
        match Number::from_f64(value) {
            Some(n) => self.number(name, unit, n),
            None => {
                warn!(metric = name, value, "metric value is not a finite number; left out");
                self
            }
        }
    }

    pub fn milliseconds(self, name: &'static str, duration: Duration) -> Self {
        self.measure(name, Unit::Milliseconds, duration.as_secs_f64() * 1e3)
    }

    fn number(mut self, name: &'static str, unit: Unit, value: Number) -> Self {
        self.metrics.push((name, unit, value));
        self
    }

    pub fn dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.push((name, value.into()));
        self
    }

    /// A member that is not a metric: searchable in Logs Insights, no cost in CloudWatch.
    pub fn property(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.properties.push((name, value.into()));
        self
    }

    /// The EMF document as one line (no newline). Metrics, dimensions and properties share the
    /// root object, so a name used twice keeps its last role: metrics win, then dimensions.
    pub fn to_line(&self, namespace: &str, timestamp_ms: u64) -> Result<String, serde_json::Error> {
        let mut members: BTreeMap<&str, Value> = BTreeMap::new();
        members.extend(self.properties.iter().map(|(name, value)| (*name, value.clone())));
        members.extend(self.dimensions.iter().map(|(name, value)| (*name, Value::String(value.clone()))));
        members.extend(self.metrics.iter().map(|(name, _, value)| (*name, Value::Number(value.clone()))));
        let document = Emf {
            aws: Metadata {
                timestamp: timestamp_ms,
                cloud_watch_metrics: [Directive {
                    namespace,
                    dimensions: [self.dimensions.iter().map(|(name, _)| *name).collect()],
                    metrics: self.metrics.iter().map(|(name, unit, _)| MetricDefinition { name, unit: *unit }).collect(),
                }],
            },
            members,
        };
        serde_json::to_string(&document)
    }
}

/// The root node: the metadata under `_aws`, every other member at the top level.
#[derive(Serialize)]
struct Emf<'a> {
    #[serde(rename = "_aws")]
    aws: Metadata<'a>,
    #[serde(flatten)]
    members: BTreeMap<&'a str, Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Metadata<'a> {
    timestamp: u64,
    cloud_watch_metrics: [Directive<'a>; 1],
}

/// A MetricDirective: one dimension set (possibly empty: the metrics without dimensions).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Directive<'a> {
    namespace: &'a str,
    dimensions: [Vec<&'a str>; 1],
    metrics: Vec<MetricDefinition<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MetricDefinition<'a> {
    name: &'a str,
    unit: Unit,
}

/// Where documents go once [`init`] ran: stdout, under this namespace.
static NAMESPACE: OnceLock<String> = OnceLock::new();

/// Starts writing documents to stdout (namespace from `METRICS_NAMESPACE`) and counts this
/// instance's cold start. Called once by each function's entry point; later calls change nothing
/// but count again.
pub fn init(function: &'static str) {
    NAMESPACE.get_or_init(|| std::env::var("METRICS_NAMESPACE").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| DEFAULT_NAMESPACE.into()));
    info!(function, "cold start");
    emit(Document::new().count("ColdStart", 1).dimension("Function", function));
}

/// Writes `document` where [`init`] said, in one write so concurrent lines never interleave;
/// a failure is logged, never returned.
pub fn emit(document: Document) {
    #[cfg(test)]
    if capture::record(&document) {
        return;
    }
    let Some(namespace) = NAMESPACE.get() else { return };
    let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let written = document.to_line(namespace, timestamp_ms).map_err(std::io::Error::from).and_then(|mut line| {
        line.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())?;
        out.flush()
    });
    if let Err(e) = written {
        warn!(error = %e, "could not write a metrics document; dropped");
    }
}

// ---- the events -------------------------------------------------------------------------------

/// One shard of a run counted (compare).
pub struct ShardCompared<'a> {
    pub project_id: &'a str,
    pub run_id: &'a str,
    pub shard: u32,
    pub comparisons: u64,
    pub candidates: u64,
    pub fetched_bytes: u64,
    /// The shard's whole time in this invocation (reads, kernel, write, counting): its batch's
    /// time over the batch's shards, which share the reads and the counting.
    pub duration: Duration,
    /// The Dice kernel's time on this shard.
    pub kernel: Duration,
}

pub fn shard_compared(shard: &ShardCompared) {
    let mut document = Document::new()
        .count("Comparisons", shard.comparisons)
        .count("Candidates", shard.candidates)
        .milliseconds("ShardDuration", shard.duration)
        .bytes("FetchedBytes", shard.fetched_bytes)
        .property("ProjectId", shard.project_id)
        .property("RunId", shard.run_id)
        .property("Shard", shard.shard);
    if !shard.kernel.is_zero() {
        document = document.measure("ComparisonsPerSecond", Unit::CountPerSecond, shard.comparisons as f64 / shard.kernel.as_secs_f64());
    }
    emit(document);
}

/// A party's upload ingested (fan-out).
pub fn upload_ingested(project_id: &str, party: u32, records: u64, bytes: u64, duration: Duration) {
    emit(
        Document::new()
            .count("UploadRecords", records)
            .bytes("UploadBytes", bytes)
            .milliseconds("IngestDuration", duration)
            .property("ProjectId", project_id)
            .property("Party", party),
    );
}

/// One watchdog sweep (fan-out's schedule).
pub fn watchdog_swept(projects: usize, redriven: usize, failed: usize, errors: usize, duration: Duration) {
    emit(
        Document::new()
            .count("WatchdogProjects", projects as u64)
            .count("WatchdogRedrives", redriven as u64)
            .count("WatchdogFailures", failed as u64)
            .count("WatchdogErrors", errors as u64)
            .milliseconds("WatchdogDuration", duration),
    );
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
}

/// A run reached `completed` or `error` (counted by whoever made that transition, so once).
/// `run` is the run as last read: its counters and `time_started`.
pub fn run_ended(run: &Run, outcome: Outcome) {
    let mut document = Document::new()
        .count("Runs", 1)
        .count("RunComparisons", run.comparisons_done)
        .dimension("Outcome", match outcome {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
        })
        .property("ProjectId", run.project_id.as_str())
        .property("RunId", run.run_id.as_str());
    if let Some(started) = run.time_started.as_deref().and_then(time::parse_iso) {
        let seconds = (time::now_micros() - started).max(0) as f64 / 1e6;
        document = document.measure("RunDuration", Unit::Seconds, seconds);
    }
    emit(document);
}

/// Test support: the documents emitted on this thread while a [`Capture`] lives (instead of
/// stdout), as the JSON objects they would be written as.
#[cfg(test)]
pub use capture::Capture;

#[cfg(test)]
mod capture {
    use std::cell::RefCell;

    use super::Document;

    thread_local! {
        static CAPTURED: RefCell<Option<Vec<Document>>> = const { RefCell::new(None) };
    }

    /// Records `document` if this thread captures; whether it did.
    pub(super) fn record(document: &Document) -> bool {
        CAPTURED.with(|c| c.borrow_mut().as_mut().map(|docs| docs.push(document.clone())).is_some())
    }

    /// Captures the documents emitted on this thread (a current-thread runtime's tasks
    /// included) until dropped.
    pub struct Capture(());

    impl Capture {
        pub fn start() -> Self {
            CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
            Capture(())
        }

        /// What was emitted so far, each as its EMF document under namespace `test`.
        pub fn documents(&self) -> Vec<serde_json::Value> {
            CAPTURED.with(|c| {
                c.borrow()
                    .iter()
                    .flatten()
                    .map(|d| serde_json::from_str(&d.to_line("test", 0).expect("serializable")).expect("JSON"))
                    .collect()
            })
        }
    }

    impl Drop for Capture {
        fn drop(&mut self) {
            CAPTURED.with(|c| *c.borrow_mut() = None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_is_one_line_of_the_embedded_metric_format() {
        let line = Document::new()
            .count("Runs", 1)
            .measure("RunDuration", Unit::Seconds, 2.5)
            .dimension("Outcome", "completed")
            .property("RunId", "r1")
            .to_line("PPRL/test", 1_700_000_000_123)
            .unwrap();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({
                "_aws": {
                    "Timestamp": 1_700_000_000_123u64,
                    "CloudWatchMetrics": [{
                        "Namespace": "PPRL/test",
                        "Dimensions": [["Outcome"]],
                        "Metrics": [{"Name": "Runs", "Unit": "Count"}, {"Name": "RunDuration", "Unit": "Seconds"}],
                    }],
                },
                "Runs": 1,
                "RunDuration": 2.5,
                "Outcome": "completed",
                "RunId": "r1",
            })
        );
    }

    #[test]
    fn without_dimensions_the_dimension_set_is_empty_and_units_are_cloudwatchs() {
        let line = Document::new()
            .measure("ComparisonsPerSecond", Unit::CountPerSecond, 1e9)
            .milliseconds("ShardDuration", Duration::from_micros(1500))
            .bytes("FetchedBytes", 10)
            .to_line("n", 0)
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Dimensions"], json!([[]]));
        let units: Vec<&str> = directive["Metrics"].as_array().unwrap().iter().map(|m| m["Unit"].as_str().unwrap()).collect();
        assert_eq!(units, ["Count/Second", "Milliseconds", "Bytes"]);
        assert_eq!(v["ShardDuration"], 1.5);
        assert_eq!(v["FetchedBytes"], 10);
    }

    #[test]
    fn a_value_that_is_not_a_number_is_left_out_not_written_as_null() {
        let document = Document::new().count("Comparisons", 5).measure("ComparisonsPerSecond", Unit::CountPerSecond, f64::INFINITY);
        let v: Value = serde_json::from_str(&document.to_line("n", 0).unwrap()).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Metrics"], json!([{"Name": "Comparisons", "Unit": "Count"}]));
        assert!(v.get("ComparisonsPerSecond").is_none());
    }

    #[test]
    fn a_shard_computed_by_an_earlier_attempt_has_no_rate() {
        let capture = Capture::start();
        let shard = |kernel| ShardCompared {
            project_id: "p",
            run_id: "r",
            shard: 3,
            comparisons: 1000,
            candidates: 7,
            fetched_bytes: 4096,
            duration: Duration::from_millis(20),
            kernel,
        };
        shard_compared(&shard(Duration::from_millis(10)));
        shard_compared(&shard(Duration::ZERO));
        let docs = capture.documents();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["ComparisonsPerSecond"], 100_000.0);
        assert_eq!((docs[0]["RunId"].as_str(), docs[0]["Shard"].as_u64()), (Some("r"), Some(3)));
        assert!(docs[1].get("ComparisonsPerSecond").is_none());
        assert_eq!(docs[1]["Comparisons"], 1000);
    }

    #[test]
    fn a_run_that_never_started_has_no_duration() {
        let capture = Capture::start();
        let mut run = Run::created("p".into(), "r".into(), 0.8, String::new(), String::new(), time::now_iso());
        run_ended(&run, Outcome::Failed);
        run.time_started = Some(time::format_iso(time::now_micros() - 3_000_000));
        run.comparisons_done = 42;
        run_ended(&run, Outcome::Completed);
        let docs = capture.documents();
        assert_eq!(docs[0]["Outcome"], "failed");
        assert!(docs[0].get("RunDuration").is_none());
        assert_eq!(docs[1]["Outcome"], "completed");
        assert_eq!(docs[1]["RunComparisons"], 42);
        let seconds = docs[1]["RunDuration"].as_f64().unwrap();
        assert!((3.0..60.0).contains(&seconds), "{seconds}");
    }

    #[test]
    fn nothing_is_written_or_captured_without_init_or_capture() {
        // No namespace is set in unit tests and no capture is active: emitting is a no-op.
        assert!(NAMESPACE.get().is_none());
        emit(Document::new().count("ColdStart", 1));
        let capture = Capture::start();
        assert!(capture.documents().is_empty());
    }
}
