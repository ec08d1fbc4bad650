//! The functions' metrics: after a linkage, the local runner's log (the functions' stdout, which
//! CloudWatch Logs receives in AWS) holds Embedded Metric Format documents that follow the EMF
//! specification, under the configured namespace, and whose values add up to what the API
//! reports about the run.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::helpers::*;

const RUN_LIMIT: Duration = Duration::from_secs(240);

/// CloudWatch's units (MetricDatum's `Unit`).
const UNITS: &[&str] = &[
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Bits",
    "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second", "Kilobytes/Second",
    "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
    "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
];

/// Every metric the functions emit, with its unit (infra/README.md lists them for operators, and
/// the dashboard in infra/template.yaml names them).
const METRICS: &[(&str, &str)] = &[
    ("Comparisons", "Count"),
    ("Candidates", "Count"),
    ("ShardDuration", "Milliseconds"),
    ("FetchedBytes", "Bytes"),
    ("ComparisonsPerSecond", "Count/Second"),
    ("UploadRecords", "Count"),
    ("UploadBytes", "Bytes"),
    ("IngestDuration", "Milliseconds"),
    ("WatchdogProjects", "Count"),
    ("WatchdogRedrives", "Count"),
    ("WatchdogFailures", "Count"),
    ("WatchdogErrors", "Count"),
    ("WatchdogDuration", "Milliseconds"),
    ("Runs", "Count"),
    ("RunComparisons", "Count"),
    ("RunDuration", "Seconds"),
    ("ColdStart", "Count"),
];

/// Checks one document against the EMF specification: `_aws` with a millisecond `Timestamp` and
/// `CloudWatchMetrics` directives under `namespace`; every dimension key a string member of the
/// root, at most 30 per set; every metric named once, with a CloudWatch unit and a number (or a
/// list of numbers) at the root; no member both a metric and a dimension.
fn check_emf(doc: &Value, namespace: &str) -> anyhow::Result<()> {
    let aws = doc["_aws"].as_object().context("_aws is not an object")?;
    let timestamp = aws.get("Timestamp").and_then(Value::as_u64).context("_aws.Timestamp is not a whole number")?;
    ensure!(timestamp > 1_600_000_000_000, "Timestamp {timestamp} is not in milliseconds");
    let directives = aws.get("CloudWatchMetrics").and_then(Value::as_array).context("no CloudWatchMetrics list")?;
    ensure!(!directives.is_empty(), "CloudWatchMetrics is empty");
    for directive in directives {
        ensure!(directive["Namespace"] == namespace, "Namespace {} is not {namespace}", directive["Namespace"]);
        let mut dimension_keys = BTreeSet::new();
        for set in directive["Dimensions"].as_array().context("Dimensions is not a list")? {
            let set = set.as_array().context("a dimension set is not a list")?;
            ensure!(set.len() <= 30, "more than 30 dimensions in a set");
            for key in set {
                let key = key.as_str().context("a dimension key is not a string")?;
                ensure!(doc.get(key).is_some_and(Value::is_string), "dimension {key} has no string value at the root");
                dimension_keys.insert(key);
            }
        }
        let metrics = directive["Metrics"].as_array().context("Metrics is not a list")?;
        ensure!(!metrics.is_empty() && metrics.len() <= 100, "{} metrics in a directive", metrics.len());
        let mut names = BTreeSet::new();
        for metric in metrics {
            let name = metric["Name"].as_str().context("a metric without a Name")?;
            ensure!(names.insert(name), "metric {name} is defined twice");
            ensure!(!dimension_keys.contains(name), "{name} is both a metric and a dimension");
            let unit = metric["Unit"].as_str().context("a metric without a Unit")?;
            ensure!(UNITS.contains(&unit), "{name} has unit {unit}, which CloudWatch does not know");
            ensure!(METRICS.contains(&(name, unit)), "{name} ({unit}) is not one of the documented metrics");
            let numeric = match &doc[name] {
                Value::Number(_) => true,
                Value::Array(values) => !values.is_empty() && values.iter().all(Value::is_number),
                _ => false,
            };
            ensure!(numeric, "metric {name} has no numeric value at the root: {}", doc[name]);
        }
    }
    Ok(())
}

fn number(doc: &Value, name: &str) -> anyhow::Result<f64> {
    doc[name].as_f64().with_context(|| format!("{name} in {doc}"))
}

/// Documents naming `metric` whose `key` member equals `value`.
fn with<'a>(docs: &'a [Value], metric: &str, key: &str, value: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d.get(metric).is_some() && d[key] == value).collect()
}

#[tokio::test]
async fn a_linkage_leaves_emf_documents_whose_values_add_up_to_the_run() -> anyhow::Result<()> {
    let namespace = function_env("compare").get("METRICS_NAMESPACE").cloned().context("METRICS_NAMESPACE in compare.env")?;
    let api = Api::new();
    // Three parties: a shard never spans two party pairs, so the run has (at least) three shards
    // even at the template's shard target.
    let (parties, n, size) = (3usize, 300usize, 128usize);
    let data = synthetic_parties(181, parties, n, size, 40);
    let project = api.create_project("groups", parties as u32, false).await?;
    let started = Instant::now();
    let run = api.post_run(&project, 0.8).await?;
    for (party, records) in data.iter().enumerate() {
        api.upload_binary(&project, party, records.concat(), n, size).await?;
    }
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    let comparisons = status["total_number_comparisons"].as_u64().context("total_number_comparisons")?;
    assert_eq!(comparisons, 3 * (n * n) as u64, "three party pairs");
    let elapsed = started.elapsed().as_secs_f64();

    // solve writes the run's document after the run turned completed: wait for it (and for a
    // watchdog sweep, every 5 s locally).
    let deadline = Instant::now() + Duration::from_secs(60);
    let docs = loop {
        let docs = emf_documents();
        let run_ended = !with(&docs, "Runs", "RunId", &run).is_empty();
        if run_ended && docs.iter().any(|d| d.get("WatchdogDuration").is_some()) {
            break docs;
        }
        if Instant::now() > deadline {
            bail!("after 60 s: run document written {run_ended}; {} EMF documents in the log", docs.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Every document in the log, from every function, follows the specification.
    for doc in &docs {
        check_emf(doc, &namespace).with_context(|| format!("EMF document {doc}"))?;
    }

    // Shards: one document per shard, their comparisons adding up to the run's.
    let shards = with(&docs, "Comparisons", "RunId", &run);
    assert!(shards.len() >= 3, "the run had {} shard documents, fewer than its party pairs", shards.len());
    let indexes: BTreeSet<u64> = shards.iter().filter_map(|d| d["Shard"].as_u64()).collect();
    assert_eq!(indexes.len(), shards.len(), "a shard counted twice");
    let mut summed = 0u64;
    for shard in &shards {
        summed += shard["Comparisons"].as_u64().context("Comparisons")?;
        assert!(number(shard, "ShardDuration")? > 0.0, "{shard}");
        assert!(number(shard, "FetchedBytes")? >= size as f64 * 2.0, "both parties' spans are read: {shard}");
        assert!(number(shard, "Candidates")? >= 0.0);
        assert_eq!(shard["ProjectId"], project.id.as_str());
    }
    assert_eq!(summed, comparisons, "the shards' comparisons add up to the run's");

    // The run: completed once, with its comparisons and a duration within the test's.
    let ended = with(&docs, "Runs", "RunId", &run);
    assert_eq!(ended.len(), 1, "{ended:?}");
    let ended = ended[0];
    assert_eq!((ended["Outcome"].as_str(), ended["Runs"].as_u64()), (Some("completed"), Some(1)));
    assert_eq!(ended["RunComparisons"].as_u64(), Some(comparisons));
    let duration = number(ended, "RunDuration")?;
    assert!(duration > 0.0 && duration <= elapsed + 1.0, "run took {duration} s of the test's {elapsed} s");

    // The uploads: one document per party, with its records and bytes.
    let uploads = with(&docs, "UploadRecords", "ProjectId", &project.id);
    let uploaded: BTreeSet<u64> = uploads.iter().filter_map(|d| d["Party"].as_u64()).collect();
    assert_eq!(uploaded, BTreeSet::from([0, 1, 2]), "{uploads:?}");
    for upload in &uploads {
        assert_eq!(upload["UploadRecords"].as_u64(), Some(n as u64));
        assert_eq!(upload["UploadBytes"].as_u64(), Some((n * size) as u64));
        assert!(number(upload, "IngestDuration")? > 0.0);
    }

    // Each pipeline function counted its cold start; the watchdog its sweeps.
    for function in ["fan-out", "compare", "solve"] {
        assert!(!with(&docs, "ColdStart", "Function", function).is_empty(), "no cold start of {function}");
    }
    let sweep = docs.iter().find(|d| d.get("WatchdogDuration").is_some()).context("a watchdog sweep")?;
    assert!(number(sweep, "WatchdogProjects")? >= 0.0 && number(sweep, "WatchdogRedrives")? >= 0.0);
    Ok(())
}
