//! A blocking client for the service's REST API v1 (the same calls anonlink-client makes).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
pub use shared::wire::TemporaryCredentials;

/// The service answered, but not with success.
#[derive(Debug, thiserror::Error)]
#[error("{what}: the service answered {status}: {detail}")]
pub struct ServiceError {
    pub what: String,
    pub status: u16,
    /// The problem's `title` (e.g. "Feature Disabled"), when the answer is a problem document.
    pub title: String,
    pub detail: String,
}

impl ServiceError {
    /// The reference's answer when the object-store upload feature is off: 500 "Feature Disabled".
    pub fn is_feature_disabled(&self) -> bool {
        self.status == 500
            && (self.title.eq_ignore_ascii_case("Feature Disabled") || self.detail.to_ascii_lowercase().contains("feature disabled"))
    }
}

/// What `authorize-external-upload` grants: temporary credentials for one prefix of a bucket.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct UploadGrant {
    pub credentials: TemporaryCredentials,
    pub upload: UploadTarget,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct UploadTarget {
    /// host[:port] of the object store.
    pub endpoint: String,
    pub secure: bool,
    pub bucket: String,
    /// The prefix the credentials may write under (no trailing slash).
    pub path: String,
}

/// How the client waits and retries when the service (or the network) fails transiently:
/// 429, 502, 503, 504 and connection errors. The delays follow anonlink-client's
/// `--retry-multiplier` / `--retry-exponential-max` / `--retry-max-time` (all in milliseconds):
/// the n-th retry waits `multiplier x 2^n` ms, at most `exponential_max` ms (or what a
/// `Retry-After` header asks, within the same cap), and no retry starts after `max_time` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub multiplier_ms: u64,
    pub exponential_max_ms: u64,
    pub max_time_ms: u64,
}

impl Default for RetryPolicy {
    /// anonlink-client's defaults.
    fn default() -> Self {
        Self { multiplier_ms: 100, exponential_max_ms: 10_000, max_time_ms: 20_000 }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based), or `None` when the time is up.
    /// `asked` is the service's `Retry-After`, if it sent one.
    pub fn delay(&self, retry: u32, elapsed: Duration, asked: Option<Duration>) -> Option<Duration> {
        let cap = Duration::from_millis(self.exponential_max_ms);
        let exponential = Duration::from_millis(self.multiplier_ms.saturating_mul(1u64 << retry.min(40)));
        let wait = asked.unwrap_or(exponential).min(cap);
        (elapsed + wait <= Duration::from_millis(self.max_time_ms)).then_some(wait)
    }
}

/// Answers worth trying again: rate limiting and a gateway or service that is briefly away.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Transport failures worth trying again: no connection, a timeout, or one cut mid-way.
fn is_retryable_transport(err: &reqwest::Error) -> bool {
    use std::error::Error;
    if err.is_connect() || err.is_timeout() {
        return true;
    }
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// What a project asks for beyond the reference's body.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProjectExtensions {
    /// The parties upload blocks (the reference's `uses_blocking`).
    pub uses_blocking: bool,
    /// Similarity scores across more than two parties (this service's `multiparty` opt-in).
    pub multiparty: bool,
}

pub struct ServiceClient {
    base: String,
    http: reqwest::blocking::Client,
    retry: RetryPolicy,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NewProject {
    pub project_id: String,
    pub result_token: String,
    pub update_tokens: Vec<String>,
}

impl ServiceClient {
    /// A client with anonlink-client's default retries.
    #[allow(dead_code)] // for commands without retry options
    pub fn new(server: &str) -> anyhow::Result<Self> {
        Self::with_retry(server, RetryPolicy::default())
    }

    pub fn with_retry(server: &str, retry: RetryPolicy) -> anyhow::Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        Ok(ServiceClient { base: format!("{}/api/v1", server.trim_end_matches('/')), http, retry })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request, retrying transient failures as [`RetryPolicy`] says, and returns the
    /// JSON body of a success or an error carrying the service's problem detail.
    fn call(&self, what: &str, build: impl Fn() -> reqwest::blocking::RequestBuilder) -> anyhow::Result<Value> {
        let started = Instant::now();
        let mut retry = 0;
        loop {
            let response = match build().send() {
                Ok(response) => response,
                Err(e) if is_retryable_transport(&e) => match self.retry.delay(retry, started.elapsed(), None) {
                    Some(wait) => {
                        std::thread::sleep(wait);
                        retry += 1;
                        continue;
                    }
                    None => return Err(anyhow::Error::new(e).context(format!("{what}: cannot reach the service (gave up retrying)"))),
                },
                Err(e) => return Err(anyhow::Error::new(e).context(format!("{what}: cannot reach the service"))),
            };
            let status = response.status().as_u16();
            if is_retryable_status(status) {
                let asked = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                if let Some(wait) = self.retry.delay(retry, started.elapsed(), asked) {
                    std::thread::sleep(wait);
                    retry += 1;
                    continue;
                }
            }
            let text = response.text().unwrap_or_default();
            let body: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
            if !(200..300).contains(&status) {
                let detail = body.get("detail").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| body.to_string());
                let title = body.get("title").and_then(Value::as_str).unwrap_or_default().to_owned();
                return Err(ServiceError { what: what.to_owned(), status, title, detail }.into());
            }
            return Ok(body);
        }
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        self.call("service status", || self.http.get(self.url("/status")))
    }

    pub fn create_project(&self, result_type: &str, parties: u32, schema: &Value, name: &str) -> anyhow::Result<NewProject> {
        self.create_project_with(result_type, parties, schema, name, ProjectExtensions::default())
    }

    pub fn create_project_with(&self, result_type: &str, parties: u32, schema: &Value, name: &str, extensions: ProjectExtensions) -> anyhow::Result<NewProject> {
        let mut body = json!({"schema": schema, "result_type": result_type, "number_parties": parties, "name": name, "uses_blocking": extensions.uses_blocking});
        // Sent only when asked for: the reference's body stays the reference's.
        if extensions.multiparty {
            body["multiparty"] = json!(true);
        }
        let v = self.call("create project", || self.http.post(self.url("/projects")).json(&body))?;
        Ok(NewProject {
            project_id: v["project_id"].as_str().context("no project_id in the answer")?.to_owned(),
            result_token: v["result_token"].as_str().context("no result_token in the answer")?.to_owned(),
            update_tokens: v["update_tokens"]
                .as_array()
                .context("no update_tokens in the answer")?
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        })
    }

    /// Uploads a JSON body (`clks`, `clknblocks` or `encodings`); returns the receipt token.
    pub fn upload_json(&self, project: &str, update_token: &str, body: Vec<u8>) -> anyhow::Result<String> {
        let v = self.call("upload", || {
            self.http
                .post(self.url(&format!("/projects/{project}/clks")))
                .header("Authorization", update_token)
                .header("Content-Type", "application/json")
                .body(body.clone())
        })?;
        Ok(v["receipt_token"].as_str().context("no receipt_token in the answer")?.to_owned())
    }

    /// Temporary credentials to upload straight to the object store, or `None` when the service
    /// has the feature disabled (it answers 500 "Feature Disabled", as the reference does).
    pub fn authorize_external_upload(&self, project: &str, update_token: &str) -> anyhow::Result<Option<UploadGrant>> {
        let answer = self.call("authorize external upload", || {
            self.http
                .get(self.url(&format!("/projects/{project}/authorize-external-upload")))
                .header("Authorization", update_token)
        });
        match answer {
            Ok(v) => Ok(Some(serde_json::from_value(v).context("authorize-external-upload answered an unexpected shape")?)),
            Err(e) if e.downcast_ref::<ServiceError>().is_some_and(ServiceError::is_feature_disabled) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads raw encodings to `/binaryclks`; returns the receipt token.
    pub fn upload_binary(&self, project: &str, update_token: &str, count: u64, size: usize, body: Vec<u8>) -> anyhow::Result<String> {
        let v = self.call("binary upload", || {
            self.http
                .post(self.url(&format!("/projects/{project}/binaryclks")))
                .header("Authorization", update_token)
                .header("Content-Type", "application/octet-stream")
                .header("Hash-Count", count.to_string())
                .header("Hash-Size", size.to_string())
                .body(body.clone())
        })?;
        Ok(v["receipt_token"].as_str().context("no receipt_token in the answer")?.to_owned())
    }

    pub fn post_run(&self, project: &str, result_token: &str, threshold: f64, name: &str) -> anyhow::Result<String> {
        self.post_run_with(project, result_token, threshold, name, false)
    }

    /// [`post_run`](Self::post_run), optionally asking groups results to carry their scores.
    pub fn post_run_with(&self, project: &str, result_token: &str, threshold: f64, name: &str, group_scores: bool) -> anyhow::Result<String> {
        let mut body = json!({"threshold": threshold, "name": name});
        if group_scores {
            body["group_scores"] = json!(true);
        }
        let v = self.call("post run", || {
            self.http.post(self.url(&format!("/projects/{project}/runs"))).header("Authorization", result_token).json(&body)
        })?;
        Ok(v["run_id"].as_str().context("no run_id in the answer")?.to_owned())
    }

    pub fn run_status(&self, project: &str, run: &str, token: &str) -> anyhow::Result<Value> {
        self.call("run status", || {
            self.http.get(self.url(&format!("/projects/{project}/runs/{run}/status"))).header("Authorization", token)
        })
    }

    pub fn result(&self, project: &str, run: &str, token: &str) -> anyhow::Result<Value> {
        self.call("result", || {
            self.http.get(self.url(&format!("/projects/{project}/runs/{run}/result"))).header("Authorization", token)
        })
    }

    pub fn delete_run(&self, project: &str, run: &str, token: &str) -> anyhow::Result<Value> {
        self.call("delete run", || self.http.delete(self.url(&format!("/projects/{project}/runs/{run}"))).header("Authorization", token))
    }

    pub fn delete_project(&self, project: &str, token: &str) -> anyhow::Result<Value> {
        self.call("delete project", || self.http.delete(self.url(&format!("/projects/{project}"))).header("Authorization", token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_at_the_max_time() {
        let p = RetryPolicy { multiplier_ms: 100, exponential_max_ms: 1_000, max_time_ms: 5_000 };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        assert_eq!(ms(p.delay(0, Duration::ZERO, None)), Some(100));
        assert_eq!(ms(p.delay(3, Duration::ZERO, None)), Some(800));
        assert_eq!(ms(p.delay(4, Duration::ZERO, None)), Some(1_000));
        assert_eq!(ms(p.delay(60, Duration::ZERO, None)), Some(1_000));
        assert_eq!(ms(p.delay(0, Duration::ZERO, Some(Duration::from_secs(30)))), Some(1_000), "Retry-After within the cap");
        assert_eq!(ms(p.delay(0, Duration::from_millis(4_950), None)), None, "past the max time");
    }

    #[test]
    fn which_answers_are_retried() {
        for s in [429, 502, 503, 504] {
            assert!(is_retryable_status(s));
        }
        for s in [400, 401, 403, 404, 409, 500] {
            assert!(!is_retryable_status(s));
        }
    }
}
