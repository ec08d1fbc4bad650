//! The end-to-end harness: an HTTP client for the service's REST API (as a user's script would
//! use it), the project's sample data, and direct access to the local stack's resources for the
//! checks a user cannot make through the API (what is left after a delete, duplicate deliveries).
//!
//! The stack is started and stopped by `scripts/test.sh`, which sets `API_URL`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repo")
        .to_path_buf()
}

pub fn api_url() -> String {
    std::env::var("API_URL").unwrap_or_else(|_| {
        panic!("API_URL is not set: run the end-to-end tests through scripts/test.sh, which starts the local stack")
    })
}

/// The settings the local stack's functions run with (written by localstack/provision.py).
pub fn function_env(function: &str) -> BTreeMap<String, String> {
    let dir = std::env::var("PPRL_LOCAL_ENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("localstack/.state/env"));
    let path = dir.join(format!("{function}.env"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().trim_start_matches("export ").to_string(),
                v.trim().trim_matches('"').trim_matches('\'').to_string(),
            )
        })
        .collect()
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct Project {
    pub id: String,
    pub result_token: String,
    pub update_tokens: Vec<String>,
}

impl Api {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        Api {
            base: format!("{}/api/v1", api_url().trim_end_matches('/')),
            http,
        }
    }

    /// Sends a request and returns its JSON body, or an error naming the step, the status and
    /// the body when the status is not `expected`.
    pub async fn expect(&self, what: &str, expected: u16, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let r = request.send().await.with_context(|| format!("{what}: no answer"))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .with_context(|| format!("{what}: {status} without a JSON body"))?;
        if status.as_u16() != expected {
            bail!("{what}: {status} {v}");
        }
        Ok(v)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn create_project(
        &self,
        result_type: &str,
        parties: u32,
        uses_blocking: bool,
    ) -> anyhow::Result<Project> {
        let body = json!({
            "schema": {}, "result_type": result_type, "number_parties": parties,
            "name": "e2e", "notes": "", "uses_blocking": uses_blocking,
        });
        let v = self
            .expect("create project", 201, self.http.post(self.url("/projects")).json(&body))
            .await?;
        Ok(Project {
            id: v["project_id"].as_str().context("project_id")?.into(),
            result_token: v["result_token"].as_str().context("result_token")?.into(),
            update_tokens: v["update_tokens"]
                .as_array()
                .context("update_tokens")?
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_string())
                .collect(),
        })
    }

    /// Uploads a JSON body to `/clks`; returns the receipt token.
    pub async fn upload_json(&self, project: &Project, party: usize, body: &Value) -> anyhow::Result<String> {
        let v = self
            .expect(
                &format!("upload party {party}"),
                201,
                self.http
                    .post(self.url(&format!("/projects/{}/clks", project.id)))
                    .header("Authorization", &project.update_tokens[party])
                    .json(body),
            )
            .await?;
        Ok(v["receipt_token"].as_str().context("receipt_token")?.into())
    }

    pub async fn upload_binary(
        &self,
        project: &Project,
        party: usize,
        data: Vec<u8>,
        count: usize,
        size: usize,
    ) -> anyhow::Result<String> {
        let v = self
            .expect(
                &format!("binary upload party {party}"),
                201,
                self.http
                    .post(self.url(&format!("/projects/{}/binaryclks", project.id)))
                    .header("Authorization", &project.update_tokens[party])
                    .header("Content-Type", "application/octet-stream")
                    .header("Hash-Count", count.to_string())
                    .header("Hash-Size", size.to_string())
                    .body(data),
            )
            .await?;
        Ok(v["receipt_token"].as_str().context("receipt_token")?.into())
    }

    pub async fn post_run(&self, project: &Project, threshold: f64) -> anyhow::Result<String> {
        let v = self
            .expect(
                "post run",
                201,
                self.http
                    .post(self.url(&format!("/projects/{}/runs", project.id)))
                    .header("Authorization", &project.result_token)
                    .json(&json!({"threshold": threshold, "name": "e2e run"})),
            )
            .await?;
        Ok(v["run_id"].as_str().context("run_id")?.into())
    }

    pub async fn run_status(&self, project: &Project, run: &str) -> anyhow::Result<Value> {
        let v = self
            .expect(
                "run status",
                200,
                self.http
                    .get(self.url(&format!("/projects/{}/runs/{run}/status", project.id)))
                    .header("Authorization", &project.result_token),
            )
            .await?;
        Ok(v)
    }

    /// Polls the run's status until it is final, checking on the way that stages never go back
    /// and progress never decreases within a stage (until it fails). Returns the final status.
    pub async fn wait_for_run(&self, project: &Project, run: &str, limit: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        let mut last: Option<(u64, f64)> = None;
        loop {
            let status = self.run_status(project, run).await?;
            let state = status["state"].as_str().unwrap_or_default().to_string();
            let stage = status["current_stage"]["number"].as_u64().unwrap_or(0);
            let progress = status["current_stage"]["progress"]["absolute"].as_f64().unwrap_or(0.0);
            // A run that fails because an upload was rejected (encoding sizes differ) reports
            // that party as no longer contributed: the one place progress may go back.
            if let Some((s, p)) = last.filter(|_| state != "error") {
                if stage < s {
                    bail!("stage went back from {s} to {stage}: {status}");
                }
                if stage == s && progress < p {
                    bail!("progress went back from {p} to {progress} in stage {stage}: {status}");
                }
            }
            last = Some((stage, progress));
            match state.as_str() {
                "completed" | "error" => return Ok(status),
                _ => {}
            }
            if start.elapsed() > limit {
                bail!("run {run} not final after {limit:?}: {status}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn result(&self, project: &Project, run: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .get(self.url(&format!("/projects/{}/runs/{run}/result", project.id)))
            .header("Authorization", token)
            .send()
            .await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// Deletes `path` with the result token (204), then checks that `then_get` is unknown at once
    /// (403), as the reference does for deleted projects and runs.
    pub async fn delete_and_check_gone(&self, project: &Project, path: &str, then_get: &str) -> anyhow::Result<()> {
        let r = self
            .http
            .delete(self.url(path))
            .header("Authorization", &project.result_token)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 204, "DELETE {path}: {}", r.status());
        let r = self
            .http
            .get(self.url(then_get))
            .header("Authorization", &project.result_token)
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 403,
            "GET {then_get} after its delete: {} (a deleted resource is unknown at once)",
            r.status()
        );
        Ok(())
    }

    pub async fn describe(&self, project: &Project) -> anyhow::Result<Value> {
        let request = self
            .http
            .get(self.url(&format!("/projects/{}", project.id)))
            .header("Authorization", &project.result_token);
        self.expect("describe", 200, request).await
    }
}

// ---- the local runner's log -----------------------------------------------------------------

/// The local runner's log: its own lines, Lambda's START/END/REPORT lines of every invocation,
/// and what fan-out, compare and solve log.
pub fn runner_log() -> String {
    std::fs::read_to_string(repo_root().join("localstack/.state/logs/runner.log")).unwrap_or_default()
}

/// The part of the runner's log written since the runner last started.
pub fn since_start(log: &str) -> &str {
    log.rfind("local-runner: memory limits").map(|i| &log[i..]).unwrap_or(log)
}

/// The Embedded Metric Format documents the functions wrote to stdout since the runner last
/// started: every line that is a JSON object with an `_aws` member, in order.
pub fn emf_documents() -> Vec<Value> {
    since_start(&runner_log())
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"_aws\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect()
}

/// Every invocation of `functions` that has started since the runner last started gets
/// Lambda's REPORT line (waiting for those still running), and each REPORT line of theirs shows
/// a peak within the function's Memory Size. Returns the number of REPORT lines checked.
pub async fn assert_every_invocation_reported(functions: &[&str], limit: Duration) -> anyhow::Result<usize> {
    fn ids<'a>(log: &'a str, function: &str, kind: &str) -> Vec<&'a str> {
        let prefix = format!("{function} {kind} RequestId: ");
        log.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.split(['\t', ' ']).next())
            .collect()
    }
    let log = runner_log();
    let started: Vec<(String, String)> = functions
        .iter()
        .flat_map(|f| ids(since_start(&log), f, "START").into_iter().map(move |id| (f.to_string(), id.to_string())))
        .collect();
    let deadline = Instant::now() + limit;
    let log = loop {
        let log = runner_log();
        let section = since_start(&log);
        let missing: Vec<&(String, String)> =
            started.iter().filter(|(f, id)| !ids(section, f, "REPORT").contains(&id.as_str())).collect();
        if missing.is_empty() {
            break log;
        }
        if Instant::now() > deadline {
            bail!("{} invocation(s) without a REPORT line after {limit:?}: {missing:?}", missing.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let field = |line: &str, name: &str| -> anyhow::Result<u64> {
        let value = line.split(name).nth(1).and_then(|r| r.trim_start().split(' ').next());
        value.and_then(|v| v.parse().ok()).with_context(|| format!("no {name} in {line:?}"))
    };
    let mut checked = 0;
    for function in functions {
        let prefix = format!("{function} REPORT RequestId: ");
        let reports: Vec<&str> = since_start(&log).lines().filter(|l| l.starts_with(&prefix)).collect();
        anyhow::ensure!(!reports.is_empty(), "no REPORT line for {function}");
        for line in reports {
            let (size, used) = (field(line, "Memory Size:")?, field(line, "Max Memory Used:")?);
            anyhow::ensure!(used <= size, "{function} used more than its memory: {line:?}");
            checked += 1;
        }
    }
    Ok(checked)
}

// ---- sample data ---------------------------------------------------------------------------

pub fn febrl4_file(name: &str) -> PathBuf {
    repo_root().join("data/febrl4").join(name)
}

pub fn febrl4_clks(side: &str) -> Value {
    let text = std::fs::read_to_string(febrl4_file(&format!("clks_{side}.json"))).expect("FEBRL4 sample");
    serde_json::from_str(&text).expect("FEBRL4 clks JSON")
}

/// Groups as a canonical set of sorted member lists.
pub fn canonical_groups(groups: &Value) -> Vec<Vec<(u64, u64)>> {
    let mut out: Vec<Vec<(u64, u64)>> = groups
        .as_array()
        .expect("groups array")
        .iter()
        .map(|g| {
            let mut members: Vec<(u64, u64)> = g
                .as_array()
                .expect("group")
                .iter()
                .map(|m| (m[0].as_u64().expect("dataset"), m[1].as_u64().expect("record")))
                .collect();
            members.sort();
            members
        })
        .collect();
    out.sort();
    out
}

/// Deterministic pseudo-random bytes (splitmix64), so failures reproduce.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `parties` data sets of `n` random `size`-byte encodings, where record i of every party is a
/// noisy copy of one base record (so there are real matches, ties and conflicts).
pub fn synthetic_parties(seed: u64, parties: usize, n: usize, size: usize, noise_bits: u32) -> Vec<Vec<Vec<u8>>> {
    let mut rng = Rng(seed);
    let base: Vec<Vec<u8>> = (0..n).map(|_| (0..size).map(|_| rng.next() as u8).collect()).collect();
    (0..parties)
        .map(|_| {
            base.iter()
                .map(|b| {
                    let mut r = b.clone();
                    for _ in 0..(rng.next() % (noise_bits as u64 + 1)) {
                        let bit = (rng.next() % (size as u64 * 8)) as usize;
                        r[bit / 8] ^= 1 << (bit % 8);
                    }
                    r
                })
                .collect()
        })
        .collect()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
