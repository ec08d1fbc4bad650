//! Direct uploads to the upload store: `authorize-external-upload` credentials are scoped to the
//! party's own prefix (SeaweedFS enforces the STS session policy as AWS does), ExternalData
//! naming another party's objects is refused, and encodings uploaded there (binary or `.json`,
//! with or without a blocks file) link exactly like inline uploads and are deleted once
//! ingested.

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::*;

const RUN_LIMIT: Duration = Duration::from_secs(240);

/// What `authorize-external-upload` answers.
pub(crate) struct Grant {
    pub(crate) credentials: Value,
    pub(crate) bucket: String,
    pub(crate) path: String,
    pub(crate) endpoint: String,
}

async fn authorize(api: &Api, project: &Project, party: usize) -> anyhow::Result<(u16, Value)> {
    let r = api
        .http
        .get(api.url(&format!("/projects/{}/authorize-external-upload", project.id)))
        .header("Authorization", &project.update_tokens[party])
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

pub(crate) async fn grant(api: &Api, project: &Project, party: usize) -> anyhow::Result<Grant> {
    let (status, v) = authorize(api, project, party).await?;
    anyhow::ensure!(status == 201, "authorize-external-upload: {status} {v}");
    Ok(Grant {
        credentials: v["credentials"].clone(),
        bucket: v["upload"]["bucket"].as_str().unwrap_or_default().into(),
        path: v["upload"]["path"].as_str().unwrap_or_default().into(),
        endpoint: v["upload"]["endpoint"].as_str().unwrap_or_default().into(),
    })
}

pub(crate) fn s3_client(endpoint: &str, credentials: Credentials) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A client holding a party's temporary credentials, as a data provider would build it.
pub(crate) fn party_client(grant: &Grant) -> aws_sdk_s3::Client {
    let c = &grant.credentials;
    let credentials = Credentials::new(
        c["AccessKeyId"].as_str().unwrap_or_default(),
        c["SecretAccessKey"].as_str().unwrap_or_default(),
        c["SessionToken"].as_str().map(str::to_string),
        None,
        "authorize-external-upload",
    );
    s3_client(&format!("http://{}", grant.endpoint), credentials)
}

/// The service's own view of the upload store (the admin keys fan-out reads it with).
pub(crate) fn service_client() -> aws_sdk_s3::Client {
    let env = function_env("fan-out");
    let credentials = Credentials::new(
        &env["UPLOAD_S3_ACCESS_KEY_ID"],
        &env["UPLOAD_S3_SECRET_ACCESS_KEY"],
        None,
        None,
        "upload-store-admin",
    );
    s3_client(&env["UPLOAD_S3_ENDPOINT"], credentials)
}

pub(crate) async fn put_with_counts(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>, count: usize, size: usize) -> anyhow::Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .metadata("hash-count", count.to_string())
        .metadata("hash-size", size.to_string())
        .body(ByteStream::from(body))
        .send()
        .await?;
    Ok(())
}

async fn exists(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    client.head_object().bucket(bucket).key(key).send().await.is_ok()
}

/// ExternalData as anonlink-client sends it (endpoint and credentials included).
fn external_data(grant: &Grant, path: &str) -> Value {
    json!({
        "file": {"bucket": grant.bucket, "path": path, "endpoint": grant.endpoint, "secure": false},
        "credentials": grant.credentials,
    })
}

pub(crate) fn febrl4_binary(side: &str, n: usize) -> Vec<u8> {
    let clks = febrl4_clks(side);
    let mut raw = Vec::with_capacity(n * 128);
    for c in clks["clks"].as_array().expect("clks").iter().take(n) {
        raw.extend(base64::engine::general_purpose::STANDARD.decode(c.as_str().expect("b64")).expect("base64"));
    }
    raw
}

/// The FEBRL4 groups at 0.8 among the first `n` records of each side.
pub(crate) fn expected_groups(n: u64) -> Vec<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(febrl4_file("greedy_solution_t0.8.json")).expect("sample");
    let expected: Value = serde_json::from_str(&text).expect("json");
    canonical_groups(&expected).into_iter().filter(|g| g.iter().all(|m| m.1 < n)).collect()
}

pub(crate) async fn post_clks(api: &Api, project: &Project, party: usize, body: &Value) -> anyhow::Result<(u16, Value)> {
    let r = api
        .http
        .post(api.url(&format!("/projects/{}/clks", project.id)))
        .header("Authorization", &project.update_tokens[party])
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn temporary_credentials_can_only_put_under_their_own_prefix() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let grant = grant(&api, &project, 0).await?;
    assert_eq!(grant.path, format!("{}/0", project.id));
    for field in ["AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"] {
        assert!(grant.credentials[field].as_str().is_some_and(|v| !v.is_empty()), "{field}: {}", grant.credentials);
    }
    let s3 = party_client(&grant);
    let own = format!("{}/encodings.bin", grant.path);
    let put = |key: String| s3.put_object().bucket(&grant.bucket).key(key).body(ByteStream::from_static(b"12345678")).send();

    put(own.clone()).await.map_err(|e| anyhow::anyhow!("put under the own prefix: {e:?}"))?;
    assert!(put(format!("{}/1/encodings.bin", project.id)).await.is_err(), "put under another party's prefix");
    assert!(put(format!("{}/0-not-mine/x.bin", project.id)).await.is_err(), "put beside the prefix");
    assert!(put("elsewhere/x.bin".into()).await.is_err(), "put outside the project");
    assert!(s3.get_object().bucket(&grant.bucket).key(&own).send().await.is_err(), "get");
    assert!(s3.list_objects_v2().bucket(&grant.bucket).prefix(&grant.path).send().await.is_err(), "list");
    assert!(s3.delete_object().bucket(&grant.bucket).key(&own).send().await.is_err(), "delete");

    // Large files go up in parts: multipart upload is allowed by s3:PutObject alone.
    let key = format!("{}/multipart.bin", grant.path);
    let started = s3.create_multipart_upload().bucket(&grant.bucket).key(&key).send().await?;
    let upload_id = started.upload_id().unwrap_or_default().to_string();
    let part = s3
        .upload_part()
        .bucket(&grant.bucket)
        .key(&key)
        .upload_id(&upload_id)
        .part_number(1)
        .body(ByteStream::from(vec![7u8; 1024]))
        .send()
        .await?;
    let parts = CompletedMultipartUpload::builder()
        .parts(CompletedPart::builder().part_number(1).set_e_tag(part.e_tag().map(str::to_string)).build())
        .build();
    s3.complete_multipart_upload().bucket(&grant.bucket).key(&key).upload_id(&upload_id).multipart_upload(parts).send().await?;

    let admin = service_client();
    assert!(exists(&admin, &grant.bucket, &own).await);
    assert!(exists(&admin, &grant.bucket, &key).await);
    assert!(!exists(&admin, &grant.bucket, &format!("{}/1/encodings.bin", project.id)).await);

    // A broken session token is refused.
    let mut forged = grant.credentials.clone();
    forged["SessionToken"] = json!(format!("{}x", grant.credentials["SessionToken"].as_str().unwrap_or_default()));
    let forged = party_client(&Grant { credentials: forged, bucket: grant.bucket.clone(), path: grant.path.clone(), endpoint: grant.endpoint.clone() });
    assert!(forged.put_object().bucket(&grant.bucket).key(&own).body(ByteStream::from_static(b"x")).send().await.is_err());

    // Deleting the project removes what was uploaded.
    let r = api.http.delete(api.url(&format!("/projects/{}", project.id))).header("Authorization", &project.result_token).send().await?;
    assert_eq!(r.status(), 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while exists(&admin, &grant.bucket, &own).await || exists(&admin, &grant.bucket, &key).await {
        anyhow::ensure!(std::time::Instant::now() < deadline, "uploads of a deleted project are still there");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::test]
async fn authorize_needs_an_unused_update_token() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let wrong = Project { id: project.id.clone(), result_token: project.result_token.clone(), update_tokens: vec![project.result_token.clone()] };
    assert_eq!(authorize(&api, &wrong, 0).await?.0, 403, "the result token is not an update token");
    api.upload_json(&project, 0, &json!({"clks": [b64(&[1u8; 128])]})).await?;
    let (status, body) = authorize(&api, &project, 0).await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(authorize(&api, &project, 1).await?.0, 201);
    Ok(())
}

#[tokio::test]
async fn external_data_outside_the_party_prefix_is_forbidden() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let other = api.create_project("groups", 2, false).await?;
    let grant0 = grant(&api, &project, 0).await?;
    let grant1 = grant(&api, &project, 1).await?;
    // Party 1 really put this object; party 0 must not be able to claim it.
    let theirs = format!("{}/encodings.bin", grant1.path);
    put_with_counts(&party_client(&grant1), &grant1.bucket, &theirs, vec![0; 128 * 4], 4, 128).await?;

    let refused = [
        theirs.clone(),
        format!("{}/0/encodings.bin", other.id),
        format!("{}/0", project.id),
        format!("{}/00/encodings.bin", project.id),
        "encodings.bin".to_string(),
    ];
    for path in &refused {
        let (status, body) = post_clks(&api, &project, 0, &json!({"encodings": external_data(&grant0, path)})).await?;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["detail"], "Provided object store path is not allowed", "{body}");
    }
    let mut wrong_bucket = external_data(&grant0, &format!("{}/e.bin", grant0.path));
    wrong_bucket["file"]["bucket"] = json!("some-other-bucket");
    assert_eq!(post_clks(&api, &project, 0, &json!({"encodings": wrong_bucket})).await?.0, 403);
    // Refusals leave the token usable and the other party's object in place.
    let admin = service_client();
    assert!(exists(&admin, &grant1.bucket, &theirs).await);
    assert_eq!(authorize(&api, &project, 0).await?.0, 201);
    Ok(())
}

#[tokio::test]
async fn external_binary_and_json_uploads_link_like_inline_uploads_and_are_deleted() -> anyhow::Result<()> {
    const N: usize = 1000;
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let admin = service_client();

    let grant0 = grant(&api, &project, 0).await?;
    let binary = format!("{}/encodings.bin", grant0.path);
    // Bytes past count × size are ignored, as the reference does.
    let mut raw = febrl4_binary("a", N);
    raw.extend_from_slice(&[0xff; 100]);
    put_with_counts(&party_client(&grant0), &grant0.bucket, &binary, raw, N, 128).await?;

    let grant1 = grant(&api, &project, 1).await?;
    let json_file = format!("{}/encodings.json", grant1.path);
    let clks: Vec<Value> = febrl4_clks("b")["clks"].as_array().expect("clks").iter().take(N).cloned().collect();
    let body = serde_json::to_vec(&json!({"clks": clks}))?;
    put_with_counts(&party_client(&grant1), &grant1.bucket, &json_file, body, N, 128).await?;

    let (s0, r0) = post_clks(&api, &project, 0, &json!({"encodings": external_data(&grant0, &binary)})).await?;
    assert_eq!(s0, 201, "{r0}");
    assert!(r0["receipt_token"].is_string());
    let (s1, r1) = post_clks(&api, &project, 1, &json!({"encodings": external_data(&grant1, &json_file)})).await?;
    assert_eq!(s1, 201, "{r1}");

    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["total_number_comparisons"], (N * N) as u64);
    let (_, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(canonical_groups(&result["groups"]), expected_groups(N as u64));
    assert!(!exists(&admin, &grant0.bucket, &binary).await, "ingested binary upload was not deleted");
    assert!(!exists(&admin, &grant1.bucket, &json_file).await, "ingested JSON upload was not deleted");
    Ok(())
}

#[tokio::test]
async fn external_encodings_with_an_external_blocks_file_link_per_block() -> anyhow::Result<()> {
    const N: usize = 600;
    let api = Api::new();
    let project = api.create_project("groups", 2, true).await?;
    let admin = service_client();
    let mut cleanup = Vec::new();
    for (party, side) in ["a", "b"].into_iter().enumerate() {
        let grant = grant(&api, &project, party).await?;
        let s3 = party_client(&grant);
        let encodings = format!("{}/clks.bin", grant.path);
        put_with_counts(&s3, &grant.bucket, &encodings, febrl4_binary(side, N), N, 128).await?;
        // Every record is in the common block "all" and in one of seven small blocks; pairs
        // that share two blocks are compared once, so the result is the unblocked one.
        let blocks: serde_json::Map<String, Value> =
            (0..N).map(|i| (i.to_string(), json!(["all", format!("b{}", i % 7)]))).collect();
        let blocks_file = format!("{}/blocks.json", grant.path);
        let body = serde_json::to_vec(&json!({"blocks": blocks, "meta": {"source": "e2e"}}))?;
        s3.put_object().bucket(&grant.bucket).key(&blocks_file).body(ByteStream::from(body)).send().await?;
        let upload = json!({"encodings": external_data(&grant, &encodings), "blocks": external_data(&grant, &blocks_file)});
        let (status, body) = post_clks(&api, &project, party, &upload).await?;
        assert_eq!(status, 201, "{body}");
        cleanup.push((grant.bucket.clone(), encodings));
        cleanup.push((grant.bucket, blocks_file));
    }
    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    let (_, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(canonical_groups(&result["groups"]), expected_groups(N as u64));
    for (bucket, key) in cleanup {
        assert!(!exists(&admin, &bucket, &key).await, "{key} was not deleted after ingestion");
    }
    Ok(())
}

#[tokio::test]
async fn a_declared_count_larger_than_the_object_puts_the_upload_in_error() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let grant = grant(&api, &project, 0).await?;
    let key = format!("{}/short.bin", grant.path);
    put_with_counts(&party_client(&grant), &grant.bucket, &key, vec![1; 128 * 10], 11, 128).await?;
    let (status, body) = post_clks(&api, &project, 0, &json!({"encodings": external_data(&grant, &key)})).await?;
    assert_eq!(status, 201, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if api.describe(&project).await?["error"] == json!(true) {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the short upload never put the project in error");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The same token may upload again once the first upload failed.
    assert_eq!(authorize(&api, &project, 0).await?.0, 201);
    Ok(())
}
