//! Handler tests against the in-memory adapters, through the whole router (`oneshot`), so path
//! normalisation, extraction and problem rendering are exercised too.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bytes::Bytes;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::uploads::{ExternalUpload, ObjectRef};
use super::{ApiState, BASE_PATH, ROUTES, router};
use crate::service::pull_policy::PullPolicy;
use crate::service::config::{Limits, Settings, UploadSettings, WatchdogSettings};
use crate::service::keys;
use crate::service::memory::{MemoryBlobs, MemoryCredentials, MemoryMeta, MemoryPorts};
use crate::service::model::{IngestedParty, RunPlan};
use crate::service::ports::{BlobStore, ProjectStore, RunStore, ShardCounter, UploadStore};
use crate::service::time;

const MAX_REQUEST: usize = 64 * 1024;
const MAX_RESPONSE: usize = 1024;
const UPLOAD_BUCKET: &str = "uploads";

fn settings(upload_enabled: bool) -> Settings {
    Settings {
        table_name: "table".into(),
        work_bucket: "work".into(),
        shard_queue_url: String::new(),
        solve_queue_url: String::new(),
        dead_letter_queues: Default::default(),
        upload: UploadSettings {
            enabled: upload_enabled,
            bucket: UPLOAD_BUCKET.into(),
            public_endpoint: "uploads.example.org:9000".into(),
            public_secure: false,
            credentials_ttl_secs: 900,
            role_arn: "arn:aws:iam::000000000000:role/upload".into(),
        },
        pull: PullPolicy::default(),
        limits: Limits { max_request_bytes: MAX_REQUEST, max_response_bytes: MAX_RESPONSE, ..Limits::default() },
        watchdog: WatchdogSettings::default(),
        results_role_arn: None,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// Asserts a problem document with this status and returns its detail.
    fn problem(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/problem+json");
        let p = self.json();
        assert_eq!(p["type"], "about:blank");
        assert_eq!(p["status"], status);
        assert!(p["title"].is_string());
        p["detail"].as_str().expect("detail").to_string()
    }
}

struct Api {
    app: Router,
    meta: MemoryMeta,
    work: MemoryBlobs,
    credentials: MemoryCredentials,
}

/// A request under construction.
struct Call<'a> {
    api: &'a Api,
    req: axum::http::request::Builder,
    body: Body,
}

impl Call<'_> {
    fn token(mut self, token: &str) -> Self {
        self.req = self.req.header(header::AUTHORIZATION, token);
        self
    }
    fn header(mut self, name: &str, value: &str) -> Self {
        self.req = self.req.header(name, value);
        self
    }
    fn json(mut self, body: Value) -> Self {
        self.req = self.req.header(header::CONTENT_TYPE, "application/json");
        self.body = Body::from(body.to_string());
        self
    }
    fn raw(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.req = self.req.header(header::CONTENT_TYPE, content_type);
        self.body = Body::from(body.into());
        self
    }
    async fn send(self) -> Reply {
        let req = self.req.body(self.body).expect("request");
        let res = self.api.app.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.expect("body");
        Reply { status, headers, body }
    }
}

struct Project {
    id: String,
    result_token: String,
    update_tokens: Vec<String>,
}

impl Api {
    fn new() -> Self {
        Self::with_settings(settings(true))
    }
    fn with_settings(settings: Settings) -> Self {
        let (meta, work, credentials) = (MemoryMeta::new(), MemoryBlobs::new(), MemoryCredentials::new());
        let app = router(ApiState::<MemoryPorts> { meta: meta.clone(), work: work.clone(), credentials: credentials.clone(), settings });
        Api { app, meta, work, credentials }
    }
    fn call(&self, method: Method, path: &str) -> Call<'_> {
        Call { api: self, req: Request::builder().method(method).uri(format!("{BASE_PATH}{path}")), body: Body::empty() }
    }
    fn get(&self, path: &str) -> Call<'_> {
        self.call(Method::GET, path)
    }
    fn post(&self, path: &str) -> Call<'_> {
        self.call(Method::POST, path)
    }
    fn delete(&self, path: &str) -> Call<'_> {
        self.call(Method::DELETE, path)
    }

    async fn project_with(&self, body: Value) -> Project {
        let r = self.post("/projects").json(body).send().await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let v = r.json();
        Project {
            id: v["project_id"].as_str().unwrap().into(),
            result_token: v["result_token"].as_str().unwrap().into(),
            update_tokens: v["update_tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect(),
        }
    }
    async fn project(&self, result_type: &str) -> Project {
        self.project_with(json!({"schema": {"clkConfig": {"l": 64}}, "result_type": result_type})).await
    }
    async fn upload_clks(&self, p: &Project, party: usize) -> Reply {
        self.post(&format!("/projects/{}/clks", p.id))
            .token(&p.update_tokens[party])
            .json(json!({"clks": ["AAAAAAAAAAA=", "AQEBAQEBAQE="]}))
            .send()
            .await
    }
    async fn receipt(&self, p: &Project, party: usize) -> String {
        let r = self.upload_clks(p, party).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.json()["receipt_token"].as_str().unwrap().to_string()
    }
    async fn run(&self, p: &Project) -> String {
        let r = self.post(&format!("/projects/{}/runs", p.id)).token(&p.result_token).json(json!({"threshold": 0.8})).send().await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.json()["run_id"].as_str().unwrap().to_string()
    }
    /// Drives a run through the pipeline's state transitions to `completed`.
    async fn complete(&self, p: &Project, run: &str) {
        let m = &self.meta;
        assert!(m.claim_run(&p.id, run).await.unwrap());
        let plan = RunPlan { shards_total: 1, total_comparisons: 4, time_started: time::now_iso() };
        assert!(m.start_run(&p.id, run, &plan).await.unwrap());
        assert!(m.record_shard(&p.id, run, 0, 4, 1).await.unwrap().counted);
        m.enter_output_stage(&p.id, run).await.unwrap();
        assert!(m.complete_run(&p.id, run, &time::now_iso()).await.unwrap());
    }
    async fn put(&self, key: &str, body: &str) {
        self.work.put(key, Bytes::from(body.to_string()), &vec![]).await.unwrap();
    }
    fn upload_keys(&self, p: &Project) -> Vec<String> {
        self.work.keys().into_iter().filter(|k| k.starts_with(&format!("{}{}/", keys::INCOMING_UPLOADS, p.id))).collect()
    }
}

fn ingested() -> IngestedParty {
    IngestedParty { record_count: 2, encoding_size: 8, entry_count: 2, block_count: 1 }
}

// ---- service information --------------------------------------------------------------------

#[tokio::test]
async fn status_and_version() {
    let api = Api::new();
    let r = api.get("/status").send().await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok", "project_count": 0, "rate": 1}));
    api.project("groups").await;
    assert_eq!(api.get("/status").send().await.json()["project_count"], 1);

    let v = api.get("/version").send().await.json();
    assert_eq!(v["anonlink"], "0.15.3");
    assert!(v["entityservice"].is_string() && v["rust"].is_string());
    assert!(v["python"].is_string(), "the reference's clients read the key: {v}");
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let api = Api::new();
    api.get("/nope").send().await.problem(404);
    let r = Call { api: &api, req: Request::builder().uri("/somewhere/else"), body: Body::empty() }.send().await;
    r.problem(404);
    api.delete("/projects").send().await.problem(405);
    api.call(Method::PUT, "/status").send().await.problem(405);
}

#[tokio::test]
async fn doubled_and_trailing_slashes_are_collapsed() {
    let api = Api::new();
    let p = api.project("groups").await;
    for path in ["//projects", "//projects/", "/projects//"] {
        let r = api.get(path).send().await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json().as_array().unwrap().len(), 1);
    }
    assert_eq!(api.get("//version").send().await.status, StatusCode::OK);
    let r = api.get(&format!("//projects//{}//runs", p.id)).token(&p.result_token).send().await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!([])));
    let r = api.post("//projects").json(json!({"schema": {}, "result_type": "groups"})).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
}

// ---- projects ---------------------------------------------------------------------------------

#[tokio::test]
async fn create_project_answers_tokens() {
    let api = Api::new();
    let r = api
        .post("/projects")
        .token("ignored")
        .json(json!({"schema": {}, "result_type": "groups", "number_parties": 3, "name": "n", "notes": "x", "uses_blocking": true, "extra": 1}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    let hex48 = |s: &Value| s.as_str().is_some_and(|s| s.len() == 48 && s.bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(hex48(&v["project_id"]) && hex48(&v["result_token"]));
    assert_eq!(v["update_tokens"].as_array().unwrap().len(), 3);
    assert!(v["update_tokens"].as_array().unwrap().iter().all(hex48));

    let listed = api.get("/projects").send().await.json();
    assert_eq!(listed[0]["project_id"], v["project_id"]);
    assert!(time::parse_iso(listed[0]["time_added"].as_str().unwrap()).is_some());
}

#[tokio::test]
async fn create_project_rejects_bad_requests_with_400() {
    let api = Api::new();
    let cases = [
        (json!({"result_type": "groups"}), "Schema information required"),
        (json!({"schema": null, "result_type": "groups"}), "Schema information required"),
        (json!({"schema": [1], "result_type": "groups"}), "object"),
        (json!({"schema": {}}), "result_type must be"),
        (json!({"schema": {}, "result_type": "mapping"}), "result_type must be"),
        (json!({"schema": {}, "result_type": 3}), "Invalid request body"),
        (json!({"schema": {}, "result_type": "permutations", "number_parties": 3}), "requires result type 'groups'"),
        (json!({"schema": {}, "result_type": "groups", "number_parties": 1}), "at least 2 parties"),
        (json!({"schema": {}, "result_type": "groups", "number_parties": 100000}), "at most"),
        (json!({"schema": {}, "result_type": "groups", "number_parties": "2"}), "Invalid request body"),
        (json!({"schema": {}, "result_type": "groups", "name": 5}), "Invalid request body"),
        (json!({"schema": {}, "result_type": "groups", "uses_blocking": "yes"}), "Invalid request body"),
        (json!([1, 2]), "Invalid request body"),
    ];
    for (body, expected) in cases {
        let detail = api.post("/projects").json(body.clone()).send().await.problem(400);
        assert!(detail.contains(expected), "{body}: {detail}");
    }
    api.post("/projects").raw("application/json", "{not json").send().await.problem(400);
    api.post("/projects").raw("text/plain", "{}").send().await.problem(415);
    assert_eq!(api.meta.list_projects().await.unwrap().len(), 0);
}

#[tokio::test]
async fn describe_project_by_token_kind() {
    let api = Api::new();
    let p = api.project("groups").await;
    let other = api.project("groups").await;
    let path = format!("/projects/{}", p.id);

    api.get(&path).send().await.problem(400);
    let unknown = api.get("/projects/0123").token(&p.result_token).send().await.problem(403);
    let wrong = api.get(&path).token("wrong").send().await.problem(403);
    assert_eq!(unknown, wrong, "unknown project and wrong token are indistinguishable");
    api.get(&path).token(&p.update_tokens[0]).send().await.problem(403);
    api.get(&path).token(&other.result_token).send().await.problem(403);
    let receipt = api.receipt(&p, 0).await;
    api.get(&path).token(&receipt).send().await.problem(403);

    let r = api.get(&path).token(&p.result_token).send().await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["project_id"], p.id.as_str());
    assert_eq!(v["result_type"], "groups");
    assert_eq!(v["number_parties"], 2);
    assert_eq!(v["schema"], json!({"clkConfig": {"l": 64}}));
    assert_eq!((v["name"].as_str(), v["notes"].as_str()), (Some(""), Some("")));
    assert_eq!((v["error"].as_bool(), v["uses_blocking"].as_bool()), (Some(false), Some(false)));
    assert_eq!(v["parties_contributed"], 0, "pending uploads are not contributions yet");
    assert!(v.get("public_key").is_none() && v.get("paillier_context").is_none());

    // Ingestion marks the upload done; a failed one puts the project in error.
    let upload = api.meta.get_project(&p.id).await.unwrap().unwrap().1[0].upload.upload_id().unwrap().to_owned();
    api.meta.complete_upload(&p.id, 0, &upload, &ingested()).await.unwrap();
    assert_eq!(api.get(&path).token(&p.result_token).send().await.json()["parties_contributed"], 1);
    api.receipt(&p, 1).await;
    let upload = api.meta.get_project(&p.id).await.unwrap().unwrap().1[1].upload.upload_id().unwrap().to_owned();
    api.meta.fail_upload(&p.id, 1, &upload, "record 3 is not valid base64").await.unwrap();
    assert_eq!(api.get(&path).token(&p.result_token).send().await.json()["error"], true);
}

#[tokio::test]
async fn permutations_receipts_describe_the_project() {
    let api = Api::new();
    let p = api.project("permutations").await;
    let receipt = api.receipt(&p, 1).await;
    let r = api.get(&format!("/projects/{}", p.id)).token(&receipt).send().await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn delete_project() {
    let api = Api::new();
    let p = api.project("groups").await;
    let other = api.project("groups").await;
    let path = format!("/projects/{}", p.id);
    api.delete(&path).send().await.problem(400);
    api.delete(&path).token(&p.update_tokens[0]).send().await.problem(403);
    api.delete(&path).token(&other.result_token).send().await.problem(403);

    let r = api.delete(&path).token(&p.result_token).send().await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    assert!(api.work.object(&keys::delete_request(&p.id)).is_some(), "fan-out is asked to purge");
    api.delete(&path).token(&p.result_token).send().await.problem(403);
    api.get(&path).token(&p.result_token).send().await.problem(403);
    api.get(&format!("{path}/runs")).token(&p.result_token).send().await.problem(403);
    let listed = api.get("/projects").send().await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(api.get("/status").send().await.json()["project_count"], 1);
}

// ---- uploads ----------------------------------------------------------------------------------

#[tokio::test]
async fn clks_upload_is_stored_and_answered_with_a_receipt() {
    let api = Api::new();
    let p = api.project("groups").await;
    let r = api.upload_clks(&p, 0).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["message"], "Updated");
    assert_eq!(v["receipt_token"].as_str().map(str::len), Some(48));

    let keys = api.upload_keys(&p);
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with(&format!("{}{}/0/", keys::INCOMING_UPLOADS, p.id)));
    let (body, metadata) = api.work.object(&keys[0]).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["clks"][1], "AQEBAQEBAQE=");
    assert_eq!(metadata, vec![("kind".to_string(), "json".to_string())]);

    let detail = api.upload_clks(&p, 0).await.problem(403);
    assert_eq!(detail, "This token has already been used to upload clks.");
    assert_eq!(api.upload_clks(&p, 1).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn clks_upload_refuses_other_tokens() {
    let api = Api::new();
    let p = api.project("groups").await;
    let other = api.project("groups").await;
    let path = format!("/projects/{}/clks", p.id);
    let body = json!({"clks": ["AAAAAAAAAAA="]});
    api.post(&path).json(body.clone()).send().await.problem(400);
    api.post(&path).token(&p.result_token).json(body.clone()).send().await.problem(403);
    api.post(&path).token(&other.update_tokens[0]).json(body.clone()).send().await.problem(403);
    api.post("/projects/unknown/clks").token(&p.update_tokens[0]).json(body.clone()).send().await.problem(403);
    let receipt = api.receipt(&p, 0).await;
    api.post(&path).token(&receipt).json(body).send().await.problem(403);
    assert!(api.upload_keys(&other).is_empty());
}

#[tokio::test]
async fn clks_upload_mistakes_are_4xx_and_leave_the_token_usable() {
    let api = Api::new();
    let p = api.project("groups").await;
    let path = format!("/projects/{}/clks", p.id);
    let token = &p.update_tokens[0];
    let post = |ct: &'static str, body: String| api.post(&path).token(token).raw(ct, body);

    assert_eq!(post("application/json", r#"{"clks": []}"#.into()).send().await.problem(400), "Missing CLKs information");
    assert_eq!(post("text/plain", r#"{"clks": ["AA=="]}"#.into()).send().await.problem(400), "Content Type not supported");
    assert_eq!(post("application/octet-stream", "abc".into()).send().await.problem(400), "Content Type not supported");
    assert!(post("application/json", "{nope".into()).send().await.problem(400).contains("not valid JSON"));
    assert!(post("application/json", r#"{"clks": "AA=="}"#.into()).send().await.problem(400).contains("upload format"));
    assert!(post("application/json", r#"[1, 2]"#.into()).send().await.problem(400).contains("upload format"));
    assert_eq!(post("application/json", r#"{"other": 1}"#.into()).send().await.problem(403), "Missing encoding information");
    let detail = post("application/json", r#"{"clknblocks": [["AA==", "1"]]}"#.into()).send().await.problem(403);
    assert!(detail.starts_with("Blocking has been disabled"));
    post("application/json", r#"{"encodings": ["AA=="], "blocks": {"0": ["1"]}}"#.into()).send().await.problem(403);

    let big = format!(r#"{{"clks": ["{}"]}}"#, "A".repeat(MAX_REQUEST));
    let detail = post("application/json", big).send().await.problem(413);
    assert!(detail.contains("authorize-external-upload"), "{detail}");

    // Storing fails: 503, and the token is not consumed.
    api.work.fail_puts(true);
    api.upload_clks(&p, 0).await.problem(503);
    api.work.fail_puts(false);
    assert!(api.upload_keys(&p).is_empty());
    assert_eq!(api.upload_clks(&p, 0).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn oversized_body_without_content_length_is_413() {
    let api = Api::new();
    let p = api.project("groups").await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..(MAX_REQUEST / 1024 + 2)).map(|_| Ok(Bytes::from(vec![b' '; 1024]))).collect();
    let stream = futures::stream::iter(chunks);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{BASE_PATH}/projects/{}/clks", p.id))
        .header(header::AUTHORIZATION, &p.update_tokens[0])
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let res = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn blocking_projects_take_clknblocks_and_encodings_with_blocks() {
    let api = Api::new();
    let p = api.project_with(json!({"schema": {}, "result_type": "groups", "uses_blocking": true})).await;
    let path = format!("/projects/{}/clks", p.id);
    let detail = api.post(&path).token(&p.update_tokens[0]).json(json!({"clks": ["AA=="]})).send().await.problem(403);
    assert!(detail.starts_with("Expecting blocking information"));
    let empty = json!({"encodings": ["AA=="], "blocks": {}});
    assert_eq!(api.post(&path).token(&p.update_tokens[0]).json(empty).send().await.problem(400), "Missing CLKs information");
    let stray = json!({"clks": ["AA=="], "blocks": {"0": ["1"]}});
    api.post(&path).token(&p.update_tokens[0]).json(stray).send().await.problem(400);

    let r = api.post(&path).token(&p.update_tokens[0]).json(json!({"clknblocks": [["AA==", "1", 2]]})).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
    let body = json!({"encodings": ["AA==", "AQ=="], "blocks": {"0": ["a"], "1": ["a", 3]}});
    let r = api.post(&path).token(&p.update_tokens[1]).json(body).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
}

/// Found by hardening/fuzz_api.sh: `{"encodings": {<no file>}, "blocks": {...}}` was stored
/// (201) and failed only in ingestion. Every shape the schema refuses is a 400 at request time,
/// as the reference's request validation answers, and the token stays usable.
#[tokio::test]
async fn uploads_the_schema_refuses_are_400_before_anything_is_stored() {
    let api = Api::new();
    let p = api.project_with(json!({"schema": {}, "result_type": "groups", "uses_blocking": true})).await;
    let path = format!("/projects/{}/clks", p.id);
    let file = json!({"file": {"bucket": UPLOAD_BUCKET, "path": format!("{}/0/e", p.id)}});
    let refused = [
        (json!({"encodings": {"sd": [], "1e100": {}}, "blocks": {"0": ["1"]}}), "'encodings' is an array"),
        (json!({"encodings": {}, "blocks": {"0": ["1"]}}), "'encodings' is an array"),
        (json!({"encodings": ["AA==", 7], "blocks": {"0": ["1"]}}), "element 1 is not a string"),
        (json!({"encodings": null, "blocks": {"0": ["1"]}}), "upload format"),
        (json!({"encodings": ["AA=="], "blocks": ["1"]}), "upload format"),
        (json!({"encodings": ["AA=="], "blocks": {"0": "1"}}), "array of block ids"),
        (json!({"encodings": ["AA=="], "blocks": {"0": [1.5]}}), "array of block ids"),
        (json!({"encodings": ["AA=="], "blocks": {"0": [{}]}}), "array of block ids"),
        (json!({"clknblocks": [["AA==", "1"], "AA=="]}), "'clknblocks' entry 1"),
        (json!({"clknblocks": [["AA==", [1]]]}), "'clknblocks' entry 0"),
        (json!({"clknblocks": null}), "upload format"),
        (json!({"clknblocks": [["AA==", "1"]], "encodings": ["AA=="], "blocks": {"0": ["1"]}}), "exactly one of"),
        (json!({"encodings": file, "blocks": {"file": file["file"], "credentials": "k"}}), "'credentials': expected an object"),
        (json!({"encodings": {"file": file["file"], "credentials": {"AccessKeyId": ""}}, "blocks": file}), "credentials.AccessKeyId"),
        (json!({"encodings": {"file": {"bucket": UPLOAD_BUCKET, "path": "x", "secure": "yes"}}, "blocks": file}), "upload format"),
        (json!({"encodings": {"file": {"bucket": UPLOAD_BUCKET, "path": "x", "region": "EU WEST"}}, "blocks": file}), "region"),
    ];
    for (body, expected) in refused {
        let detail = api.post(&path).token(&p.update_tokens[0]).json(body.clone()).send().await.problem(400);
        assert!(detail.contains(expected), "{body}: {detail}");
    }
    assert!(api.upload_keys(&p).is_empty());
    // Integers beyond 64 bits are still integers; the token was never used.
    let body = json!({"encodings": ["AA=="], "blocks": {"0": ["a", 3, 1e20]}});
    assert_eq!(api.post(&path).token(&p.update_tokens[0]).json(body).send().await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn external_uploads_must_stay_under_the_party_prefix() {
    let api = Api::new();
    let p = api.project_with(json!({"schema": {}, "result_type": "groups", "uses_blocking": true})).await;
    let path = format!("/projects/{}/clks", p.id);
    // ExternalData as anonlink-client sends it; the endpoint, when given, is the service's own.
    let file = |party: usize, name: &str| json!({"file": {"bucket": UPLOAD_BUCKET, "path": format!("{}/{party}/{name}", p.id), "endpoint": "http://Uploads.example.org:9000/"}, "credentials": {"AccessKeyId": "k"}});

    let foreign = json!({"encodings": file(1, "e.json"), "blocks": file(0, "b.json")});
    assert_eq!(api.post(&path).token(&p.update_tokens[0]).json(foreign).send().await.problem(403), "Provided object store path is not allowed");
    let foreign_blocks = json!({"encodings": file(0, "e.json"), "blocks": file(1, "b.json")});
    api.post(&path).token(&p.update_tokens[0]).json(foreign_blocks).send().await.problem(403);
    let wrong_bucket = json!({"encodings": {"file": {"bucket": "other", "path": format!("{}/0/e.json", p.id)}}, "blocks": file(0, "b.json")});
    api.post(&path).token(&p.update_tokens[0]).json(wrong_bucket).send().await.problem(403);
    let sneaky = json!({"encodings": {"file": {"bucket": UPLOAD_BUCKET, "path": format!("{}/01/e.json", p.id)}}, "blocks": file(0, "b.json")});
    api.post(&path).token(&p.update_tokens[0]).json(sneaky).send().await.problem(403);
    let mixed = json!({"encodings": ["AA=="], "blocks": file(0, "b.json")});
    api.post(&path).token(&p.update_tokens[0]).json(mixed).send().await.problem(400);
    // Another object store (the client's own, or an internal address) is never pulled from.
    for endpoint in ["s3.amazonaws.com", "169.254.169.254", "http://127.0.0.1:8333"] {
        let mut elsewhere = file(0, "e.json");
        elsewhere["file"]["endpoint"] = json!(endpoint);
        let detail = api.post(&path).token(&p.update_tokens[0]).json(json!({"encodings": elsewhere, "blocks": file(0, "b.json")})).send().await.problem(400);
        assert!(detail.contains("another object store") && detail.contains(endpoint), "{detail}");
    }

    let ok = json!({"encodings": file(0, "e.json"), "blocks": file(0, "b.json")});
    assert_eq!(api.post(&path).token(&p.update_tokens[0]).json(ok).send().await.status, StatusCode::CREATED);
    let (body, metadata) = api.work.object(&api.upload_keys(&p)[0]).unwrap();
    assert_eq!(metadata, vec![("kind".to_string(), "external".to_string())]);
    let stored: ExternalUpload = serde_json::from_slice(&body).unwrap();
    let obj = |name: &str| ObjectRef { bucket: UPLOAD_BUCKET.into(), path: format!("{}/0/{name}", p.id), store: None };
    assert_eq!(stored, ExternalUpload { encodings: obj("e.json"), blocks: Some(obj("b.json")) });

    let inline_blocks = json!({"encodings": file(1, "e.bin"), "blocks": {"0": ["x"], "1": [7]}});
    let detail = api.post(&path).token(&p.update_tokens[1]).json(inline_blocks).send().await.problem(400);
    assert!(detail.contains("blocks in the object store too"), "{detail}");
    let both_files = json!({"encodings": file(1, "e.bin"), "blocks": file(1, "b.json")});
    assert_eq!(api.post(&path).token(&p.update_tokens[1]).json(both_files).send().await.status, StatusCode::CREATED);
}

/// With pulls allowed, ExternalData naming the client's own store is stored as a reference with
/// its credentials (for fan-out); what the policy refuses statically is a 400 that says why and
/// never repeats a credential.
#[tokio::test]
async fn external_data_naming_a_client_store_when_pulls_are_allowed() {
    let api = Api::with_settings(Settings { pull: PullPolicy { enabled: true, ..PullPolicy::default() }, ..settings(true) });
    let p = api.project("groups").await;
    let path = format!("/projects/{}/clks", p.id);
    let credentials = json!({"AccessKeyId": "AKIDCLIENT", "SecretAccessKey": "client-secret-value", "SessionToken": "client-token"});
    let data = |endpoint: &str, credentials: Value| {
        json!({"encodings": {"file": {"bucket": "theirs", "path": "any/where.bin", "endpoint": endpoint, "region": "eu-west-1"}, "credentials": credentials}})
    };
    let refused = [
        ("http://store.example.com", "must use https"),
        ("store.example.com:9000", ""),
        ("169.254.169.254", "link-local"),
        ("10.1.2.3:9000", "private"),
        ("[::1]:9000", "loopback"),
        ("[fd00::1]", "unique local"),
        ("localhost:9000", "loopback"),
        ("2130706433", "numeric IPv4"),
        ("https://AKIDCLIENT:client-secret-value@store.example.com", "user info"),
        ("ftp://store.example.com", "http:// and https://"),
    ];
    for (endpoint, why) in refused {
        let mut body = data(endpoint, credentials.clone());
        if endpoint == "store.example.com:9000" {
            body["encodings"]["file"]["secure"] = json!(false);
        }
        let detail = api.post(&path).token(&p.update_tokens[0]).json(body).send().await.problem(400);
        assert!(detail.contains(if why.is_empty() { "must use https" } else { why }), "{endpoint}: {detail}");
        assert!(!detail.contains("client-secret-value"), "{detail}");
    }
    for (bad, why) in [
        (Value::Null, "needs 'credentials'"),
        (json!("AKIDCLIENT:client-secret-value"), "expected an object"),
        (json!({"AccessKeyId": "AKIDCLIENT"}), "SecretAccessKey is missing"),
        (json!({"AccessKeyId": "AKIDCLIENT", "SecretAccessKey": 12345678}), "must be a string"),
    ] {
        let mut body = data("store.example.com", bad.clone());
        if bad.is_null() {
            body["encodings"].as_object_mut().unwrap().remove("credentials");
        }
        let detail = api.post(&path).token(&p.update_tokens[0]).json(body).send().await.problem(400);
        assert!(detail.contains(why) && !detail.contains("client-secret-value") && !detail.contains("12345678"), "{detail}");
    }
    // Nothing was stored for the refused uploads, and the token is still unused.
    assert!(api.upload_keys(&p).is_empty());

    let r = api.post(&path).token(&p.update_tokens[0]).json(data("https://Store.Example.com/", credentials)).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (body, _) = api.work.object(&api.upload_keys(&p)[0]).unwrap();
    let stored: ExternalUpload = serde_json::from_slice(&body).unwrap();
    let store = stored.encodings.store.expect("the client's store");
    assert_eq!((store.endpoint.as_str(), store.region()), ("https://Store.Example.com/", "eu-west-1"));
    assert_eq!(store.credentials.secret_access_key, "client-secret-value");
    assert_eq!((stored.encodings.bucket.as_str(), stored.encodings.path.as_str()), ("theirs", "any/where.bin"));

    // The service's own endpoint still means its own bucket and the party's prefix.
    let own = json!({"encodings": {"file": {"bucket": "theirs", "path": "any/where.bin", "endpoint": "uploads.example.org:9000"}}});
    assert_eq!(api.post(&path).token(&p.update_tokens[1]).json(own).send().await.problem(403), "Provided object store path is not allowed");
}

#[tokio::test]
async fn external_encodings_without_blocks_and_with_the_feature_off() {
    let api = Api::with_settings(settings(false));
    let p = api.project("groups").await;
    let body = json!({"encodings": {"file": {"bucket": UPLOAD_BUCKET, "path": format!("{}/0/e.json", p.id)}}});
    api.post(&format!("/projects/{}/clks", p.id)).token(&p.update_tokens[0]).json(body.clone()).send().await.problem(400);
    let api = Api::new();
    let p = api.project("groups").await;
    let body = json!({"encodings": {"file": {"bucket": UPLOAD_BUCKET, "path": format!("{}/0/e.json", p.id)}}});
    let r = api.post(&format!("/projects/{}/clks", p.id)).token(&p.update_tokens[0]).json(body).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn binary_upload() {
    let api = Api::new();
    let p = api.project("groups").await; // schema clkConfig.l = 64 → 8 bytes
    let path = format!("/projects/{}/binaryclks", p.id);
    let send = |count: Option<&str>, size: Option<&str>, ct: &'static str, body: Vec<u8>| {
        let mut c = api.post(&path).token(&p.update_tokens[0]).raw(ct, body);
        if let Some(n) = count {
            c = c.header("Hash-Count", n);
        }
        if let Some(s) = size {
            c = c.header("Hash-Size", s);
        }
        c.send()
    };
    let oct = "application/octet-stream";
    let headers_msg = "Binary upload requires 'Hash-Count' and 'Hash-Size' headers";
    assert_eq!(send(None, Some("8"), oct, vec![0; 8]).await.problem(400), headers_msg);
    assert_eq!(send(Some("1"), None, oct, vec![0; 8]).await.problem(400), headers_msg);
    assert_eq!(send(Some("0"), Some("8"), oct, vec![]).await.problem(400), "Invalid value for Hash-Count header");
    assert_eq!(send(Some("x"), Some("8"), oct, vec![0; 8]).await.problem(400), "Invalid value for Hash-Count header");
    assert_eq!(send(Some("-3"), Some("8"), oct, vec![0; 8]).await.problem(400), "Invalid value for Hash-Count header");
    assert_eq!(send(Some("1"), Some("4096"), oct, vec![0; 8]).await.problem(400), "Invalid value for Hash-Size header");
    assert_eq!(send(Some("1"), Some("16"), oct, vec![0; 16]).await.problem(400), "Upload 'Hash-Size' doesn't match project settings");
    let size_msg = "Uploaded data did not match the expected size. Check request headers are correct";
    assert_eq!(send(Some("3"), Some("8"), oct, vec![0; 23]).await.problem(400), size_msg);
    assert_eq!(send(Some("3"), Some("8"), oct, vec![0; 25]).await.problem(400), size_msg);
    assert_eq!(send(Some("18446744073709551615"), Some("8"), oct, vec![0; 8]).await.problem(400), size_msg);
    assert!(send(Some("1000000"), Some("8"), oct, vec![0; 8]).await.problem(413).contains("authorize-external-upload"));
    // A length that disagrees with the headers is the reference's 400, even when the headers
    // announce more than the request limit; a length that agrees gets the 413.
    let declared = |count: &str, length: usize| {
        api.post(&path).token(&p.update_tokens[0]).raw(oct, vec![0; length.min(16)]).header("Hash-Count", count).header("Hash-Size", "8").header("Content-Length", &length.to_string()).send()
    };
    assert_eq!(declared("1000000", 8).await.problem(400), size_msg);
    assert!(declared("1000000", 8_000_000).await.problem(413).contains("authorize-external-upload"));
    assert_eq!(send(Some("1"), Some("8"), "application/json", vec![0; 8]).await.problem(400), "Content Type not supported");

    let r = send(Some("3"), Some(" 8 "), oct, (0..24).collect()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["message"], "Updated");
    let (body, metadata) = api.work.object(&api.upload_keys(&p)[0]).unwrap();
    assert_eq!(body.as_ref(), (0..24).collect::<Vec<u8>>().as_slice());
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(metadata, vec![kv("kind", "binary"), kv("hash-count", "3"), kv("hash-size", "8")]);
    send(Some("3"), Some("8"), oct, vec![0; 24]).await.problem(403);
}

#[tokio::test]
async fn authorize_external_upload() {
    let api = Api::new();
    let p = api.project("groups").await;
    let path = format!("/projects/{}/authorize-external-upload", p.id);
    api.get(&path).send().await.problem(400);
    api.get(&path).token(&p.result_token).send().await.problem(403);
    api.post(&path).token(&p.update_tokens[0]).send().await.problem(405);

    let r = api.get(&path).token(&p.update_tokens[1]).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    for field in ["AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"] {
        assert!(v["credentials"][field].is_string(), "{field}");
    }
    assert_eq!(
        v["upload"],
        json!({"endpoint": "uploads.example.org:9000", "secure": false, "bucket": UPLOAD_BUCKET, "path": format!("{}/1", p.id)})
    );
    let grant = &api.credentials.issued()[0];
    assert_eq!((grant.bucket.as_str(), grant.prefix.clone(), grant.ttl_secs), (UPLOAD_BUCKET, format!("{}/1/", p.id), 900));

    api.receipt(&p, 1).await;
    api.get(&path).token(&p.update_tokens[1]).send().await.problem(403);

    let off = Api::with_settings(settings(false));
    let p = off.project("groups").await;
    let r = off.get(&format!("/projects/{}/authorize-external-upload", p.id)).token(&p.update_tokens[0]).send().await;
    r.problem(500);
    assert_eq!(r.json()["title"], "Feature Disabled");
}

// ---- runs -------------------------------------------------------------------------------------

#[tokio::test]
async fn post_list_describe_and_delete_runs() {
    let api = Api::new();
    let p = api.project("groups").await;
    let other = api.project("groups").await;
    let runs = format!("/projects/{}/runs", p.id);

    let r = api.post(&runs).token(&p.result_token).json(json!({"threshold": 0.85, "name": "r", "notes": "n"})).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    let run = v["run_id"].as_str().unwrap().to_string();
    assert_eq!(v, json!({"run_id": run, "threshold": 0.85, "name": "r", "notes": "n"}));
    assert!(api.work.object(&keys::run_request(&p.id, &run)).is_some(), "fan-out is asked to start it");

    let listed = api.get(&runs).token(&p.result_token).send().await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!((listed[0]["run_id"].as_str(), listed[0]["state"].as_str()), (Some(run.as_str()), Some("created")));
    assert!(listed[0]["time_added"].is_string());

    let one = format!("{runs}/{run}");
    assert_eq!(api.get(&one).token(&p.result_token).send().await.json(), v);
    for bad in [p.update_tokens[0].as_str(), other.result_token.as_str(), "x"] {
        api.get(&one).token(bad).send().await.problem(403);
        api.get(&runs).token(bad).send().await.problem(403);
        api.post(&runs).token(bad).json(json!({"threshold": 0.5})).send().await.problem(403);
        api.delete(&one).token(bad).send().await.problem(403);
    }
    api.get(&runs).send().await.problem(400);
    api.get(&format!("{runs}/nope")).token(&p.result_token).send().await.problem(403);
    api.get(&format!("/projects/{}/runs/{run}", other.id)).token(&other.result_token).send().await.problem(403);

    api.put(&format!("{}x", keys::run_results_prefix(&p.id, &run)), "{}").await;
    let r = api.delete(&one).token(&p.result_token).send().await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(api.work.keys().iter().all(|k| !k.contains(&run)), "{:?}", api.work.keys());
    api.get(&one).token(&p.result_token).send().await.problem(403);
    api.delete(&one).token(&p.result_token).send().await.problem(403);
    assert_eq!(api.get(&runs).token(&p.result_token).send().await.json(), json!([]));
}

#[tokio::test]
async fn post_run_validates_its_body() {
    let api = Api::new();
    let p = api.project("groups").await;
    let runs = format!("/projects/{}/runs", p.id);
    for body in [json!({}), json!({"threshold": 0}), json!({"threshold": -0.1}), json!({"threshold": 1.0001}), json!({"threshold": "0.5"}), json!({"threshold": null}), json!([0.5]), json!({"threshold": 0.5, "name": 1})] {
        api.post(&runs).token(&p.result_token).json(body).send().await.problem(400);
    }
    api.post(&runs).token(&p.result_token).raw("application/json", "0.5}").send().await.problem(400);
    api.post(&runs).token(&p.result_token).raw("text/csv", "threshold\n0.5").send().await.problem(415);
    assert_eq!(api.post(&runs).token(&p.result_token).json(json!({"threshold": 1})).send().await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn runs_cannot_be_posted_while_the_project_is_in_error() {
    let api = Api::new();
    let p = api.project("groups").await;
    let run = api.run(&p).await;
    api.receipt(&p, 0).await;
    let upload = api.meta.get_project(&p.id).await.unwrap().unwrap().1[0].upload.upload_id().unwrap().to_owned();
    api.meta.fail_upload(&p.id, 0, &upload, "record 1 is not valid base64").await.unwrap();

    let detail = api.post(&format!("/projects/{}/runs", p.id)).token(&p.result_token).json(json!({"threshold": 0.5})).send().await.problem(409);
    assert_eq!(detail, "Can't post run as project has errors");
    let status = api.get(&format!("/projects/{}/runs/{run}/status", p.id)).token(&p.result_token).send().await.json();
    assert_eq!(status["state"], "error");
    assert!(status["message"].as_str().unwrap().contains("not valid base64"));

    // A re-upload with the same token takes the project out of error.
    assert_eq!(api.upload_clks(&p, 0).await.status, StatusCode::CREATED);
    assert_eq!(api.run(&p).await.len(), 48);
}

#[tokio::test]
async fn run_status_follows_the_stages() {
    let api = Api::new();
    let p = api.project("groups").await;
    let run = api.run(&p).await;
    let path = format!("/projects/{}/runs/{run}/status", p.id);
    let status = || api.get(&path).token(&p.result_token);

    let v = status().send().await.json();
    assert_eq!(v["state"], "created");
    assert_eq!(v["stages"], 3);
    assert!(v["time_started"].is_null() && v.as_object().unwrap().contains_key("time_started"));
    assert_eq!(
        v["current_stage"],
        json!({"number": 1, "description": "waiting for CLKs", "progress": {"absolute": 0, "relative": 0.0, "description": "number of parties already contributed"}})
    );
    api.receipt(&p, 0).await;
    let upload = api.meta.get_project(&p.id).await.unwrap().unwrap().1[0].upload.upload_id().unwrap().to_owned();
    api.meta.complete_upload(&p.id, 0, &upload, &ingested()).await.unwrap();
    assert_eq!(status().send().await.json()["current_stage"]["progress"]["relative"], 0.5);

    api.meta.claim_run(&p.id, &run).await.unwrap();
    let plan = RunPlan { shards_total: 2, total_comparisons: 8, time_started: time::now_iso() };
    api.meta.start_run(&p.id, &run, &plan).await.unwrap();
    api.meta.record_shard(&p.id, &run, 0, 2, 0).await.unwrap();
    let v = status().send().await.json();
    assert_eq!(v["state"], "running");
    assert_eq!(v["time_started"], plan.time_started.as_str());
    assert_eq!(
        v["current_stage"],
        json!({"number": 2, "description": "compute similarity scores", "progress": {"absolute": 2, "relative": 0.25, "description": "number of already computed similarity scores"}})
    );
    api.meta.record_shard(&p.id, &run, 1, 6, 0).await.unwrap();
    api.meta.enter_output_stage(&p.id, &run).await.unwrap();
    assert_eq!(status().send().await.json()["current_stage"], json!({"number": 3, "description": "compute output"}));
    api.meta.complete_run(&p.id, &run, &time::now_iso()).await.unwrap();
    let v = status().send().await.json();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["total_number_comparisons"], 8);
    assert!(v["time_completed"].is_string() && v["time_started"].is_string());

    // Tokens: receipts only for permutations; update tokens never.
    let receipt = api.receipt(&p, 1).await;
    status().send().await; // sanity: still fine
    api.get(&path).token(&receipt).send().await.problem(403);
    api.get(&path).token(&p.update_tokens[0]).send().await.problem(403);
    api.get(&path).send().await.problem(400);
    api.get(&format!("/projects/{}/runs/nope/status", p.id)).token(&p.result_token).send().await.problem(403);

    let rate = api.get("/status").send().await.json()["rate"].as_u64().unwrap();
    assert!(rate >= 1);
}

#[tokio::test]
async fn similarity_scores_runs_have_two_stages_and_errors_carry_a_message() {
    let api = Api::new();
    let p = api.project("similarity_scores").await;
    let run = api.run(&p).await;
    let path = format!("/projects/{}/runs/{run}/status", p.id);
    assert_eq!(api.get(&path).token(&p.result_token).send().await.json()["stages"], 2);
    api.meta.fail_run(&p.id, &run, "too many candidate pairs").await.unwrap();
    let v = api.get(&path).token(&p.result_token).send().await.json();
    assert_eq!((v["state"].as_str(), v["message"].as_str()), (Some("error"), Some("too many candidate pairs")));
    assert!(v.get("time_started").is_none());
}

// ---- results ----------------------------------------------------------------------------------

#[tokio::test]
async fn results_by_result_type_and_token() {
    let api = Api::new();
    let p = api.project("groups").await;
    let run = api.run(&p).await;
    let path = format!("/projects/{}/runs/{run}/result", p.id);
    let receipt = api.receipt(&p, 0).await;

    // Not complete: 404 before the token is looked at.
    assert_eq!(api.get(&path).token("whatever").send().await.problem(404), "run is not complete");
    api.get(&path).send().await.problem(400);
    api.get(&format!("/projects/{}/runs/nope/result", p.id)).token(&p.result_token).send().await.problem(403);

    api.complete(&p, &run).await;
    let groups = r#"{"groups":[[[0,1],[1,0]]]}"#;
    api.put(&keys::result_groups(&p.id, &run), groups).await;
    let r = api.get(&path).token(&p.result_token).send().await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(r.body, groups.as_bytes());
    api.get(&path).token(&receipt).send().await.problem(403);
    api.get(&path).token(&p.update_tokens[1]).send().await.problem(403);
    api.get(&format!("//projects//{}//runs//{run}//result", p.id)).token(&p.result_token).send().await;

    // Large results are redirected to the object store.
    let large = format!(r#"{{"groups":[{}]}}"#, vec!["[[0,1],[1,2]]"; MAX_RESPONSE].join(","));
    api.put(&keys::result_groups(&p.id, &run), &large).await;
    let r = api.get(&path).token(&p.result_token).send().await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.headers[header::LOCATION].to_str().unwrap().contains(&keys::result_groups(&p.id, &run)));
}

#[tokio::test]
async fn permutations_results_split_between_receipts_and_the_result_token() {
    let api = Api::new();
    let p = api.project("permutations").await;
    let other = api.project("permutations").await;
    let run = api.run(&p).await;
    let receipts = [api.receipt(&p, 0).await, api.receipt(&p, 1).await];
    api.complete(&p, &run).await;
    api.put(&keys::result_mask(&p.id, &run), r#"{"mask":[1,0]}"#).await;
    api.put(&keys::result_permutation(&p.id, &run, 0), r#"{"permutation":[1,0],"rows":2}"#).await;
    api.put(&keys::result_permutation(&p.id, &run, 1), r#"{"permutation":[0,1],"rows":2}"#).await;
    let path = format!("/projects/{}/runs/{run}/result", p.id);

    assert_eq!(api.get(&path).token(&p.result_token).send().await.json(), json!({"mask": [1, 0]}));
    assert_eq!(api.get(&path).token(&receipts[0]).send().await.json()["permutation"], json!([1, 0]));
    assert_eq!(api.get(&path).token(&receipts[1]).send().await.json()["permutation"], json!([0, 1]));
    let status = format!("/projects/{}/runs/{run}/status", p.id);
    assert_eq!(api.get(&status).token(&receipts[1]).send().await.status, StatusCode::OK);
    let other_receipt = api.receipt(&other, 0).await;
    api.get(&path).token(&other_receipt).send().await.problem(403);
    api.get(&status).token(&other_receipt).send().await.problem(403);
}

/// A permutations run's secret (the seed of its permutations, drawn by solve) is kept on the
/// run's item: no answer, to any token or none, carries it.
#[tokio::test]
async fn no_token_reads_the_permutation_secret() {
    let api = Api::new();
    let p = api.project("permutations").await;
    let receipts = [api.receipt(&p, 0).await, api.receipt(&p, 1).await];
    let run = api.run(&p).await;
    let secret = "5ec7e7".repeat(10) + "abcd";
    assert_eq!(api.meta.run_secret(&p.id, &run, &secret).await.unwrap(), Some(secret.clone()));
    api.complete(&p, &run).await;
    api.put(&keys::result_mask(&p.id, &run), r#"{"mask":[1,0]}"#).await;
    api.put(&keys::result_permutation(&p.id, &run, 0), r#"{"permutation":[1,0],"rows":2}"#).await;
    api.put(&keys::result_permutation(&p.id, &run, 1), r#"{"permutation":[0,1],"rows":2}"#).await;

    let project = format!("/projects/{}", p.id);
    let paths = [
        "/status".to_string(),
        "/version".to_string(),
        "/projects".to_string(),
        project.clone(),
        format!("{project}/runs"),
        format!("{project}/runs/{run}"),
        format!("{project}/runs/{run}/status"),
        format!("{project}/runs/{run}/result"),
    ];
    let tokens = [None, Some(&p.result_token), Some(&p.update_tokens[0]), Some(&p.update_tokens[1]), Some(&receipts[0]), Some(&receipts[1])];
    let mut answered = 0;
    for path in &paths {
        for token in tokens {
            let call = api.get(path);
            let r = match token {
                Some(token) => call.token(token),
                None => call,
            }
            .send()
            .await;
            let text = String::from_utf8_lossy(&r.body).to_lowercase();
            assert!(!text.contains(&secret), "GET {path} answered the secret");
            answered += usize::from(r.status == StatusCode::OK);
        }
    }
    assert!(answered >= 12, "the calls reached the run's answers ({answered} were 200)");
}

#[tokio::test]
async fn similarity_scores_results_and_object_store_address() {
    let api = Api::new();
    let p = api.project("similarity_scores").await;
    let run = api.run(&p).await;
    api.complete(&p, &run).await;
    let path = format!("/projects/{}/runs/{run}/result", p.id);

    // Completed, but solve's objects are missing: a server fault.
    api.get(&path).token(&p.result_token).send().await.problem(500);

    let scores = r#"{"similarity_scores":[[[0,0],[1,0],0.9]]}"#;
    api.put(&keys::result_similarity_scores(&p.id, &run), scores).await;
    api.put(&keys::result_candidates(&p.id, &run), "\u{1}\u{8}\u{4}\u{4}").await;
    assert_eq!(api.get(&path).token(&p.result_token).send().await.body, scores.as_bytes());

    let r = api.get(&path).token(&p.result_token).header("RETURN-OBJECT-STORE-ADDRESS", "true").send().await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["object"]["bucket"], "work");
    assert_eq!(v["object"]["path"], keys::result_candidates(&p.id, &run).as_str());
    assert_eq!((v["object"]["endpoint"].as_str(), v["object"]["secure"].as_bool()), (Some("memory.invalid"), Some(true)));
    assert!(v["object"]["url"].is_string());
    // Read-only credentials for exactly that object.
    for field in ["AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"] {
        assert!(v["credentials"][field].is_string(), "{field} in {v}");
    }
    let grant = api.credentials.issued().pop().unwrap();
    assert!(grant.download);
    assert_eq!((grant.bucket.as_str(), grant.prefix.as_str()), ("work", keys::result_candidates(&p.id, &run).as_str()));
}

#[tokio::test]
async fn failed_runs_answer_409_with_their_message_to_token_holders() {
    let api = Api::new();
    let p = api.project("groups").await;
    let run = api.run(&p).await;
    api.meta.fail_run(&p.id, &run, "encoding sizes differ: 8 and 16").await.unwrap();
    let path = format!("/projects/{}/runs/{run}/result", p.id);
    api.get(&path).token("wrong").send().await.problem(403);
    let detail = api.get(&path).token(&p.result_token).send().await.problem(409);
    assert!(detail.contains("encoding sizes differ"), "{detail}");
}

// ---- the OpenAPI document ---------------------------------------------------------------------

/// `docs/openapi.json` documents exactly the router's operations.
#[test]
fn openapi_documents_every_route_and_nothing_else() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert_eq!(doc["servers"][0]["url"], BASE_PATH);
    let mut documented: Vec<(String, String)> = Vec::new();
    for (route, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch", "head", "options"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), route.clone()));
            }
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    served.sort();
    assert_eq!(documented, served);
}

/// Every route in [`ROUTES`] is actually served (not 404/405).
#[tokio::test]
async fn routes_table_matches_the_router() {
    let api = Api::new();
    for (method, path) in ROUTES {
        let path = path.replace("{project_id}", "p").replace("{run_id}", "r");
        let r = api.call(method.parse().unwrap(), &path).send().await;
        assert!(![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&r.status) || r.status == StatusCode::NOT_FOUND && r.json()["detail"] == "run is not complete", "{method} {path}: {}", r.status);
    }
}

/// Found by hardening/fuzz_api.sh: values the metadata store cannot hold (DynamoDB items are at
/// most 400 KB, its numbers at least 1e-130) used to fail in the backend and answer 503 "please
/// retry", which no retry could cure. They are the caller's mistake: 400, naming the field.
#[tokio::test]
async fn fields_the_metadata_store_cannot_hold_are_refused_up_front() {
    let limits = Limits { max_request_bytes: 1024 * 1024, max_response_bytes: MAX_RESPONSE, ..Limits::default() };
    let api = Api::with_settings(Settings { limits, ..settings(true) });
    let long = "é".repeat(super::projects::MAX_TEXT_CHARS + 1);
    let at_limit = "é".repeat(super::projects::MAX_TEXT_CHARS);
    for field in ["name", "notes"] {
        let detail = api.post("/projects").json(json!({"schema": {}, "result_type": "groups", field: long})).send().await.problem(400);
        assert!(detail.contains(field), "{detail}");
    }
    let big_schema = json!({"schema": {"x": "a".repeat(super::projects::MAX_SCHEMA_BYTES)}, "result_type": "groups"});
    assert!(api.post("/projects").json(big_schema).send().await.problem(400).contains("'schema'"));
    let p = api.project_with(json!({"schema": {}, "result_type": "groups", "name": at_limit, "notes": at_limit})).await;

    let runs = format!("/projects/{}/runs", p.id);
    for threshold in [2.2250738585072014e-308, 5e-324, 1e-131] {
        let detail = api.post(&runs).token(&p.result_token).json(json!({"threshold": threshold})).send().await.problem(400);
        assert!(detail.contains("at least 1e-130"), "{detail}");
    }
    for field in ["name", "notes"] {
        api.post(&runs).token(&p.result_token).json(json!({"threshold": 0.5, field: long})).send().await.problem(400);
    }
    let r = api.post(&runs).token(&p.result_token).json(json!({"threshold": 1e-130, "name": at_limit})).send().await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["threshold"], json!(1e-130));
}

// ---- limits on what strangers can spend ---------------------------------------------------------

#[tokio::test]
async fn project_listing_is_paged_with_a_cursor_and_compatible_by_default() {
    let mut settings = settings(true);
    settings.limits.max_projects_listed = 3;
    let api = Api::with_settings(settings);
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(api.project("groups").await.id);
    }
    // The default answer is the reference's: a JSON array (here, the first page).
    let mut listed = Vec::new();
    let mut path = "/projects".to_string();
    loop {
        let r = api.get(&path).send().await;
        assert_eq!(r.status, StatusCode::OK);
        let page = r.json();
        let page = page.as_array().expect("a list");
        assert!(page.len() <= 3, "bounded: {page:?}");
        listed.extend(page.iter().map(|p| p["project_id"].as_str().unwrap().to_string()));
        let Some(link) = r.headers.get(header::LINK) else { break };
        let link = link.to_str().unwrap();
        let next = link.strip_prefix(&format!("<{BASE_PATH}")).and_then(|l| l.split_once('>')).expect(link).0;
        assert!(link.ends_with("rel=\"next\""), "{link}");
        path = next.to_string();
    }
    assert_eq!(listed.len(), 7, "every project once: {listed:?}");
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    assert_eq!(api.get("/projects?page_size=2").send().await.json().as_array().unwrap().len(), 2);
    api.get("/projects?page_size=0").send().await.problem(400);
    api.get("/projects?page_size=4").send().await.problem(400);
    api.get("/projects?cursor=%27%20OR%201%3D1").send().await.problem(400);
}

#[tokio::test]
async fn an_admin_key_guards_project_creation_and_listing_when_configured() {
    let key = "the-admin-key";
    let mut settings = settings(true);
    settings.limits.admin_key_sha256 = Some(crate::service::tokens::TokenHash::of(key).0);
    let api = Api::with_settings(settings);
    let body = json!({"schema": {}, "result_type": "groups"});
    let detail = api.post("/projects").json(body.clone()).send().await.problem(403);
    assert!(detail.contains("x-admin-key"), "{detail}");
    api.post("/projects").header("x-admin-key", "wrong").json(body.clone()).send().await.problem(403);
    api.get("/projects").send().await.problem(403);
    let r = api.post("/projects").header("x-admin-key", key).json(body).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = api.get("/projects").header("x-admin-key", key).send().await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    // Off by default: the reference's clients send no key.
    assert_eq!(Api::new().post("/projects").json(json!({"schema": {}, "result_type": "groups"})).send().await.status, StatusCode::CREATED);
}

async fn post_run_reply(api: &Api, p: &Project) -> Reply {
    api.post(&format!("/projects/{}/runs", p.id)).token(&p.result_token).json(json!({"threshold": 0.8})).send().await
}

#[tokio::test]
async fn runs_and_comparisons_per_project_are_capped_with_a_problem_naming_the_limit() {
    let mut settings = settings(true);
    settings.limits.max_runs_per_project = 2;
    let api = Api::with_settings(settings.clone());
    let p = api.project("groups").await;
    api.run(&p).await;
    let second = api.run(&p).await;
    let detail = post_run_reply(&api, &p).await.problem(409);
    assert!(detail.contains("MaxRunsPerProject = 2"), "{detail}");
    // Deleting a run makes room.
    assert_eq!(api.delete(&format!("/projects/{}/runs/{second}", p.id)).token(&p.result_token).send().await.status, StatusCode::NO_CONTENT);
    api.run(&p).await;

    settings.limits.max_comparisons_per_project = 4;
    let api = Api::with_settings(settings);
    let p = api.project("groups").await;
    let first = api.run(&p).await;
    api.complete(&p, &first).await; // 4 comparisons
    let detail = post_run_reply(&api, &p).await.problem(409);
    assert!(detail.contains("MaxComparisonsPerProject = 4") && detail.contains("4 comparisons"), "{detail}");
}

#[tokio::test]
async fn object_paths_with_dot_or_empty_segments_are_refused() {
    let api = Api::new();
    let p = api.project("groups").await;
    for path in [format!("{}/0/a//b", p.id), format!("{}/0/./b", p.id), format!("{}/0/../1/b", p.id), format!("{}/0/b/", p.id)] {
        let body = json!({"encodings": {"file": {"bucket": UPLOAD_BUCKET, "path": path}}});
        let r = api.post(&format!("/projects/{}/clks", p.id)).token(&p.update_tokens[0]).json(body).send().await;
        let detail = r.problem(400);
        assert!(detail.contains("segments"), "{path}: {detail}");
    }
}

// ---- extensions beyond the reference (issue 19) -------------------------------------------------

#[tokio::test]
async fn multiparty_similarity_scores_are_an_explicit_opt_in() {
    let api = Api::new();
    let scores = |parties: u32, multiparty: Option<bool>| {
        let mut body = json!({"schema": {}, "result_type": "similarity_scores", "number_parties": parties});
        if let Some(m) = multiparty {
            body["multiparty"] = json!(m);
        }
        body
    };
    // The reference's answer stands without the opt-in.
    for body in [scores(3, None), scores(5, Some(false))] {
        let detail = api.post("/projects").json(body).send().await.problem(400);
        assert_eq!(detail, "Multi-party linkage requires result type 'groups'.");
    }
    for parties in [2, 3, 5] {
        let p = api.project_with(scores(parties, Some(true))).await;
        assert_eq!(p.update_tokens.len(), parties as usize);
    }
    // Permutations stay two-party, with or without the flag.
    for parties in [2, 3] {
        let body = json!({"schema": {}, "result_type": "permutations", "number_parties": parties, "multiparty": true});
        api.post("/projects").json(body).send().await.problem(400);
    }
    let body = json!({"schema": {}, "result_type": "similarity_scores", "multiparty": "yes"});
    api.post("/projects").json(body).send().await.problem(400);
}

#[tokio::test]
async fn group_scores_is_a_run_option_of_groups_projects() {
    let api = Api::new();
    let p = api.project("groups").await;
    let runs = format!("/projects/{}/runs", p.id);
    let r = api.post(&runs).token(&p.result_token).json(json!({"threshold": 0.8, "group_scores": true})).send().await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["group_scores"], true);
    let run = v["run_id"].as_str().unwrap();
    assert!(api.meta.get_run(&p.id, run).await.unwrap().unwrap().group_scores);
    let described = api.get(&format!("{runs}/{run}")).token(&p.result_token).send().await.json();
    assert_eq!(described["group_scores"], true);
    // Without it, the reference's RunDescription, key for key.
    let plain = api.run(&p).await;
    let described = api.get(&format!("{runs}/{plain}")).token(&p.result_token).send().await.json();
    let mut keys: Vec<&String> = described.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["name", "notes", "run_id", "threshold"]);

    for result_type in ["similarity_scores", "permutations"] {
        let p = api.project(result_type).await;
        let detail = api
            .post(&format!("/projects/{}/runs", p.id))
            .token(&p.result_token)
            .json(json!({"threshold": 0.8, "group_scores": true}))
            .send()
            .await
            .problem(409);
        assert!(detail.contains("'group_scores' applies to result type 'groups'"), "{detail}");
    }
}

/// Marks party `party`'s upload ingested with `records` records.
async fn ingest(api: &Api, p: &Project, party: usize, records: u64) {
    api.receipt(p, party).await;
    let upload = api.meta.get_project(&p.id).await.unwrap().unwrap().1[party].upload.upload_id().unwrap().to_owned();
    let ingested = IngestedParty { record_count: records, encoding_size: 8, entry_count: records, block_count: 1 };
    api.meta.complete_upload(&p.id, party as u32, &upload, &ingested).await.unwrap();
}

#[tokio::test]
async fn a_run_over_the_comparison_cap_is_refused_at_post_with_its_plan() {
    let mut settings = settings(true);
    settings.limits.max_comparisons_per_project = 1_000_000;
    let api = Api::with_settings(settings);
    let p = api.project("groups").await;
    ingest(&api, &p, 0, 1000).await;
    // Before every party's data is in, the run's size is unknown: it is accepted (fan-out
    // checks it once planned).
    api.run(&p).await;
    ingest(&api, &p, 1, 2000).await;
    let detail = post_run_reply(&api, &p).await.problem(409);
    assert!(
        detail.contains("2000000 comparisons") && detail.contains("shards") && detail.contains("MaxComparisonsPerProject")
            && detail.contains("1000000 allowed"),
        "{detail}"
    );
    assert_eq!(api.meta.list_runs(&p.id).await.unwrap().len(), 1, "the refused run is not stored");

    // Within the cap: accepted, and its status carries the plan before it starts.
    let p = api.project("groups").await;
    ingest(&api, &p, 0, 500).await;
    ingest(&api, &p, 1, 2000).await;
    let run = api.run(&p).await;
    let status = api.get(&format!("/projects/{}/runs/{run}/status", p.id)).token(&p.result_token).send().await.json();
    assert_eq!(status["state"], "created");
    assert_eq!(status["plan"]["comparisons"], 1_000_000);
    assert!(status["plan"]["shards"].as_u64().unwrap() >= 1);
    assert!(status["plan"]["estimated_wall_seconds"].is_number() && status["plan"]["estimated_cost_usd"].is_number());
}

#[tokio::test]
async fn party_upload_status_is_per_party_and_no_party_sees_another() {
    let api = Api::new();
    let p = api.project_with(json!({"schema": {}, "result_type": "groups", "number_parties": 3})).await;
    let path = format!("/projects/{}/parties", p.id);
    let all = api.get(&path).token(&p.result_token).send().await.json();
    assert_eq!(all["number_parties"], 3);
    let states: Vec<&str> = all["parties"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "pending", "pending"]);

    ingest(&api, &p, 0, 7).await;
    api.receipt(&p, 1).await;
    let failing = api.meta.get_project(&p.id).await.unwrap().unwrap().1[1].upload.upload_id().unwrap().to_owned();
    api.meta.fail_upload(&p.id, 1, &failing, "record 3 is not valid base64").await.unwrap();
    api.receipt(&p, 2).await;

    let all = api.get(&path).token(&p.result_token).send().await.json();
    assert_eq!(
        all["parties"],
        json!([
            {"party": 0, "state": "done", "records": 7, "encoding_size": 8},
            {"party": 1, "state": "failed", "reason": "record 3 is not valid base64"},
            {"party": 2, "state": "ingesting"},
        ])
    );
    // Each update token sees its own party only: party 1's reason reaches no one else.
    for (party, token) in p.update_tokens.iter().enumerate() {
        let mine = api.get(&path).token(token).send().await;
        assert_eq!(mine.status, StatusCode::OK);
        let body = String::from_utf8(mine.body.to_vec()).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["parties"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(v["parties"][0], all["parties"][party]);
        assert_eq!(body.contains("base64"), party == 1, "{body}");
    }
    // Other tokens: the reference's 400/403.
    let receipt = api.receipt(&api.project("groups").await, 0).await;
    let other = api.project("groups").await;
    for token in [receipt.as_str(), other.result_token.as_str(), other.update_tokens[0].as_str(), "wrong"] {
        api.get(&path).token(token).send().await.problem(403);
    }
    api.get(&path).send().await.problem(400);
    // The reference's ProjectDescription is unchanged, and still refuses update tokens.
    api.get(&format!("/projects/{}", p.id)).token(&p.update_tokens[0]).send().await.problem(403);
    let described = api.get(&format!("/projects/{}", p.id)).token(&p.result_token).send().await.json();
    assert!(described.get("parties").is_none());
}
