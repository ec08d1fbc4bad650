//! A blocking client for the service's REST API v1 (the same calls anonlink-client makes).

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

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

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct TemporaryCredentials {
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: String,
    #[serde(rename = "SessionToken")]
    pub session_token: String,
    #[serde(rename = "Expiration", default)]
    pub expiration: String,
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

pub struct ServiceClient {
    base: String,
    http: reqwest::blocking::Client,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NewProject {
    pub project_id: String,
    pub result_token: String,
    pub update_tokens: Vec<String>,
}

impl ServiceClient {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        Ok(ServiceClient { base: format!("{}/api/v1", server.trim_end_matches('/')), http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request, retrying on 503 (rate limiting) with exponential backoff, and returns the
    /// JSON body of a success or an error carrying the service's problem detail.
    fn call(&self, what: &str, build: impl Fn() -> reqwest::blocking::RequestBuilder) -> anyhow::Result<Value> {
        let mut delay = Duration::from_millis(200);
        for attempt in 0..6 {
            let response = build().send().with_context(|| format!("{what}: cannot reach the service"))?;
            let status = response.status();
            if status.as_u16() == 503 && attempt < 5 {
                std::thread::sleep(delay);
                delay *= 2;
                continue;
            }
            let text = response.text().unwrap_or_default();
            let body: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
            if !status.is_success() {
                let detail = body.get("detail").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| body.to_string());
                let title = body.get("title").and_then(Value::as_str).unwrap_or_default().to_owned();
                return Err(ServiceError { what: what.to_owned(), status: status.as_u16(), title, detail }.into());
            }
            return Ok(body);
        }
        bail!("{what}: the service kept answering 503 (rate limited)")
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        self.call("service status", || self.http.get(self.url("/status")))
    }

    pub fn create_project(&self, result_type: &str, parties: u32, schema: &Value, name: &str) -> anyhow::Result<NewProject> {
        self.create_project_with(result_type, parties, schema, name, false)
    }

    pub fn create_project_with(&self, result_type: &str, parties: u32, schema: &Value, name: &str, uses_blocking: bool) -> anyhow::Result<NewProject> {
        let body = json!({"schema": schema, "result_type": result_type, "number_parties": parties, "name": name, "uses_blocking": uses_blocking});
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
        let body = json!({"threshold": threshold, "name": name});
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
}
