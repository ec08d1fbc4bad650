//! Deletes that complete although S3 misbehaves, on the real stack: the functions reach the work
//! bucket through a fault-injecting proxy on loopback (this test process), so the real handlers,
//! real S3 events, SQS redeliveries, the dead-letter queue and the watchdog do the recovering.
//!
//! The local runner is restarted with `LOCAL_S3_ENDPOINT` pointing at the proxy (see
//! `localstack/README.md`) and restarted again without it when the test ends, so these tests
//! live under `faults::restarts::` and run alone.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::Response;
use tokio::sync::watch;

use crate::faults::Stack;
use crate::helpers::*;
use crate::lifecycle::upload_bucket_leftovers;

/// Refused purge attempts per project. The ingest queue delivers a message 3 times before its
/// dead-letter queue (`maxReceiveCount` in the template), so the last refusals can only be met
/// by a purge the watchdog requested again.
const REFUSALS: u32 = 5;

/// What the proxy does besides forwarding.
struct Faults {
    upstream: String,
    http: reqwest::Client,
    /// Project id → DeleteObjects requests naming it still to refuse.
    refuse_deletes: Mutex<HashMap<String, u32>>,
    refused: Mutex<HashMap<String, u32>>,
    /// GETs whose path contains this are answered only once `release` says so.
    hold_gets: Mutex<Option<String>>,
    held: AtomicU32,
    release: watch::Sender<bool>,
    /// `METHOD path` of every request forwarded, in order.
    seen: Mutex<Vec<String>>,
}

/// An S3 proxy on 127.0.0.1 in front of LocalStack.
struct S3Proxy {
    endpoint: String,
    faults: Arc<Faults>,
    server: tokio::task::JoinHandle<()>,
}

impl S3Proxy {
    async fn start(upstream: &str) -> anyhow::Result<Self> {
        let faults = Arc::new(Faults {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build()?,
            refuse_deletes: Mutex::default(),
            refused: Mutex::default(),
            hold_gets: Mutex::default(),
            held: AtomicU32::new(0),
            release: watch::channel(false).0,
            seen: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new().fallback(forward).with_state(faults.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the proxy serves until the test ends");
        });
        Ok(S3Proxy { endpoint, faults, server })
    }

    fn refuse_deletes_of(&self, project: &str, times: u32) {
        self.faults.refuse_deletes.lock().unwrap().insert(project.to_string(), times);
    }

    fn refused(&self, project: &str) -> u32 {
        self.faults.refused.lock().unwrap().get(project).copied().unwrap_or(0)
    }

    fn hold_gets_of(&self, path_part: &str) {
        *self.faults.hold_gets.lock().unwrap() = Some(path_part.to_string());
    }

    async fn wait_until_held(&self, within: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        while self.faults.held.load(Ordering::SeqCst) == 0 {
            anyhow::ensure!(start.elapsed() < within, "no held GET within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn release(&self) {
        self.faults.release.send_replace(true);
    }

    fn seen(&self) -> Vec<String> {
        self.faults.seen.lock().unwrap().clone()
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        self.release();
        self.server.abort();
    }
}

fn xml(status: StatusCode, body: String) -> Response {
    Response::builder().status(status).header("content-type", "application/xml").body(Body::from(body)).unwrap()
}

fn bad_gateway(e: impl std::fmt::Display) -> Response {
    xml(StatusCode::BAD_GATEWAY, format!("<Error><Code>ProxyError</Code><Message>{e}</Message></Error>"))
}

/// The `<Key>` elements of a DeleteObjects request body, as written.
fn delete_keys(body: &str) -> Vec<&str> {
    body.split("<Key>").skip(1).filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key)).collect()
}

impl Faults {
    /// A refusal of a DeleteObjects request that names a project still to be refused: in turn
    /// S3's two ways of not deleting, a 200 whose every key failed (which the adapter must not
    /// take for success) and a 403.
    fn refusal(&self, body: &str) -> Option<Response> {
        let mut remaining = self.refuse_deletes.lock().unwrap();
        let (project, left) = remaining.iter_mut().find(|(project, left)| **left > 0 && body.contains(project.as_str()))?;
        *left -= 1;
        let mut refused = self.refused.lock().unwrap();
        let count = refused.entry(project.clone()).or_default();
        *count += 1;
        Some(if *count % 2 == 1 {
            let errors: String = delete_keys(body)
                .iter()
                .map(|key| format!("<Error><Key>{key}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"))
                .collect();
            xml(StatusCode::OK, format!(r#"<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{errors}</DeleteResult>"#))
        } else {
            xml(StatusCode::FORBIDDEN, r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>e2e-proxy</RequestId></Error>"#.into())
        })
    }
}

/// Forwards one request to LocalStack (bodies buffered: the objects here are small), unless a
/// fault says otherwise.
async fn forward(State(faults): State<Arc<Faults>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return bad_gateway("request body");
    };
    let path = parts.uri.path().to_string();
    faults.seen.lock().unwrap().push(format!("{} {path}", parts.method));
    let query = parts.uri.query().unwrap_or_default();
    let is_delete_objects = parts.method == Method::POST && query.split('&').any(|p| p == "delete" || p.starts_with("delete="));
    if is_delete_objects {
        if let Some(refused) = faults.refusal(&String::from_utf8_lossy(&body)) {
            return refused;
        }
    }
    let url = format!("{}{}", faults.upstream, parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let skip = |name: &HeaderName| matches!(name.as_str(), "host" | "content-length" | "transfer-encoding" | "connection");
    let mut upstream = faults.http.request(parts.method.clone(), url).body(body);
    for (name, value) in parts.headers.iter().filter(|(name, _)| !skip(name)) {
        upstream = upstream.header(name, value);
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(e) => return bad_gateway(e),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let Ok(bytes) = answer.bytes().await else {
        return bad_gateway("response body");
    };
    let hold = faults.hold_gets.lock().unwrap().clone();
    if parts.method == Method::GET && hold.is_some_and(|part| path.contains(&part)) && !*faults.release.borrow() {
        faults.held.fetch_add(1, Ordering::SeqCst);
        let _ = faults.release.subscribe().wait_for(|released| *released).await;
    }
    let mut response = Response::builder().status(status);
    let keep_length = parts.method == Method::HEAD;
    for (name, value) in headers.iter() {
        if !skip(name) || (keep_length && name.as_str() == "content-length") {
            response = response.header(name, value);
        }
    }
    response.body(Body::from(Bytes::from(bytes))).unwrap()
}

fn local_stack(script: &str, args: &[&str], s3_endpoint: Option<&str>) -> anyhow::Result<()> {
    let mut command = Command::new(repo_root().join("localstack").join(script));
    command.args(args).env("PPRL_SKIP_BUILD", "1").env_remove("LOCAL_S3_ENDPOINT").stdout(Stdio::null());
    if let Some(endpoint) = s3_endpoint {
        command.env("LOCAL_S3_ENDPOINT", endpoint);
    }
    let status = command.status()?;
    anyhow::ensure!(status.success(), "localstack/{script} {args:?} failed: {status}");
    Ok(())
}

/// The functions reach the work bucket through the proxy until this is dropped; then the runner
/// is restarted as up.sh starts it (a failing test included).
struct FunctionsThroughProxy;

impl FunctionsThroughProxy {
    fn start(proxy: &S3Proxy) -> anyhow::Result<Self> {
        local_stack("down.sh", &["--only", "runner"], None)?;
        let through = FunctionsThroughProxy;
        local_stack("up.sh", &[], Some(&proxy.endpoint))?;
        anyhow::ensure!(function_env("fan-out")["AWS_ENDPOINT_URL_S3"] == proxy.endpoint, "the functions' S3 endpoint is the proxy");
        Ok(through)
    }
}

impl Drop for FunctionsThroughProxy {
    fn drop(&mut self) {
        let restored = local_stack("down.sh", &["--only", "runner"], None).and_then(|()| local_stack("up.sh", &[], None));
        if let Err(e) = restored {
            eprintln!("restoring the runner without the proxy failed: {e}");
        }
    }
}

/// A project with both parties' data, a completed run and an object in the upload bucket: a
/// little of everything a purge has to remove.
async fn project_with_everything(api: &Api, seed: u64) -> anyhow::Result<Project> {
    let project = api.create_project("groups", 2, false).await?;
    let grant = crate::uploads::grant(api, &project, 0).await?;
    let party = crate::uploads::party_client(&grant);
    crate::uploads::put_with_counts(&party, &grant.bucket, &format!("{}/stray.bin", grant.path), vec![1; 64], 1, 64).await?;
    let data = synthetic_parties(seed, 2, 300, 64, 8);
    for (index, records) in data.iter().enumerate() {
        api.upload_binary(&project, index, records.concat(), 300, 64).await?;
    }
    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, Duration::from_secs(180)).await?;
    anyhow::ensure!(status["state"] == "completed", "{status}");
    Ok(project)
}

fn logged_for(project: &str, message: &str) -> bool {
    runner_log().lines().any(|l| l.contains(message) && l.contains(project))
}

/// A deleted project and a project past its lifetime, whose purges S3 refuses 5 times each
/// (every key failing inside a 200, and 403s): the redeliveries fail, the purge event reaches the
/// dead-letter queue, the watchdog requests the purge again from the tombstone, and in the end 0
/// objects are left in either bucket and 0 items (the tombstone included) in the table.
#[tokio::test]
async fn purges_that_fail_several_times_first_still_leave_nothing() -> anyhow::Result<()> {
    let api = Api::new();
    let stack = Stack::connect().await;
    let deleted = project_with_everything(&api, 61).await?;
    let expired = project_with_everything(&api, 62).await?;
    let proxy = S3Proxy::start(&stack.env["AWS_ENDPOINT_URL_S3"]).await?;
    proxy.refuse_deletes_of(&deleted.id, REFUSALS);
    proxy.refuse_deletes_of(&expired.id, REFUSALS);
    let _through = FunctionsThroughProxy::start(&proxy)?;

    let path = format!("/projects/{}", deleted.id);
    api.delete_and_check_gone(&deleted, &path, &path).await?;
    stack
        .dynamodb
        .update_item()
        .table_name(&stack.env["TABLE_NAME"])
        .key("pk", AttributeValue::S(format!("P#{}", expired.id)))
        .key("sk", AttributeValue::S("PROJECT".into()))
        .update_expression("SET time_added = :long_ago")
        .expression_attribute_values(":long_ago", AttributeValue::S("2001-01-01T00:00:00.000000+00:00".into()))
        .send()
        .await?;

    for project in [&deleted, &expired] {
        stack.wait_until_gone(&project.id, None, Duration::from_secs(240)).await?;
        assert_eq!(upload_bucket_leftovers(&project.id).await?, 0, "the upload bucket is purged too");
        assert_eq!(proxy.refused(&project.id), REFUSALS, "every refusal was met by a purge attempt");
        assert!(logged_for(&project.id, "purge unfinished; requesting it again"), "the watchdog requested the purge again");
    }
    let r = api.http.get(api.url(&format!("/projects/{}", expired.id))).header("Authorization", &expired.result_token).send().await?;
    assert_eq!(r.status(), 403, "an expired project is gone for its users");
    Ok(())
}

/// An upload whose ingestion has read its data but not yet written anything when the project
/// is deleted (the proxy holds the GET's answer): the purge completes first, then ingestion
/// writes the packed data of a project that no longer exists, notices, and removes it.
#[tokio::test]
async fn an_ingestion_that_finishes_after_the_purge_leaves_nothing() -> anyhow::Result<()> {
    let api = Api::new();
    let stack = Stack::connect().await;
    let project = api.create_project("groups", 2, false).await?;
    let proxy = S3Proxy::start(&stack.env["AWS_ENDPOINT_URL_S3"]).await?;
    proxy.hold_gets_of(&format!("/{}", shared::service::keys::upload(&project.id, 0, "")));
    let _through = FunctionsThroughProxy::start(&proxy)?;

    let data = synthetic_parties(63, 1, 2_000, 128, 8);
    api.upload_binary(&project, 0, data[0].concat(), 2_000, 128).await?;
    proxy.wait_until_held(Duration::from_secs(60)).await?;
    let path = format!("/projects/{}", project.id);
    api.delete_and_check_gone(&project, &path, &path).await?;
    stack.wait_until_gone(&project.id, None, Duration::from_secs(60)).await?;
    assert_eq!(upload_bucket_leftovers(&project.id).await?, 0);

    proxy.release();
    let packed = format!("/{}", shared::service::keys::project_data_prefix(&project.id));
    let start = std::time::Instant::now();
    while !proxy.seen().iter().any(|r| r.starts_with("PUT ") && r.contains(&packed)) {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "the held ingestion never wrote its packed data: {:?}", proxy.seen());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.wait_until_gone(&project.id, None, Duration::from_secs(60)).await?;
    assert_eq!(upload_bucket_leftovers(&project.id).await?, 0);
    assert!(logged_for(&project.id, "project deleted during ingestion"), "ingestion noticed the delete and removed what it wrote");
    Ok(())
}
