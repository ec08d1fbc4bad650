//! Pulls from an object store the client names (ExternalData with `endpoint` + `credentials`).
//! Locally the client's store is a bucket of its own on LocalStack's S3 (127.0.0.1:4566, any
//! credentials), reached over plain http on loopback, which is exactly what the local stack's
//! pull policy allows (`localstack/up.sh`); every other forbidden address stays refused.

use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::uploads::{febrl4_binary, expected_groups, post_clks, put_with_counts, s3_client};

const RUN_LIMIT: Duration = Duration::from_secs(240);
/// LocalStack's S3, standing in for a data provider's own store.
pub(crate) const CLIENT_ENDPOINT: &str = "127.0.0.1:4566";

/// A data provider's own store: a fresh bucket and the credentials (of the provider's, unique
/// per project so that the secret-hygiene test can look for them) that read it.
pub(crate) struct ClientStore {
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) bucket: String,
    pub(crate) credentials: Value,
}

impl ClientStore {
    pub(crate) async fn create(project: &Project) -> anyhow::Result<Self> {
        let tag: String = project.id.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
        let access_key = format!("CLIENTKEY{}", tag.to_ascii_uppercase());
        let secret = format!("client-secret-{tag}");
        let session = format!("client-session-{tag}");
        let s3 = s3_client(&format!("http://{CLIENT_ENDPOINT}"), Credentials::new(&access_key, &secret, Some(session.clone()), None, "client"));
        let bucket = format!("client-{}", &tag[..tag.len().min(40)]);
        s3.create_bucket().bucket(&bucket).send().await?;
        Ok(ClientStore {
            s3,
            bucket,
            credentials: json!({"AccessKeyId": access_key, "SecretAccessKey": secret, "SessionToken": session}),
        })
    }

    /// ExternalData naming an object of this store.
    pub(crate) fn external_data(&self, path: &str) -> Value {
        json!({
            "file": {"bucket": self.bucket, "path": path, "endpoint": CLIENT_ENDPOINT, "secure": false},
            "credentials": self.credentials,
        })
    }

    pub(crate) async fn keys(&self) -> anyhow::Result<Vec<String>> {
        let listed = self.s3.list_objects_v2().bucket(&self.bucket).send().await?;
        Ok(listed.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect())
    }

    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        for key in self.keys().await? {
            self.s3.delete_object().bucket(&self.bucket).key(key).send().await?;
        }
        self.s3.delete_bucket().bucket(&self.bucket).send().await?;
        Ok(())
    }
}

#[tokio::test]
async fn encodings_pulled_from_a_client_store_link_like_a_normal_upload() -> anyhow::Result<()> {
    const N: usize = 1000;
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let store = ClientStore::create(&project).await?;

    // Party 0: binary encodings; party 1: a clks JSON file. Both in the client's own bucket,
    // at paths of the client's choosing.
    put_with_counts(&store.s3, &store.bucket, "exports/a.bin", febrl4_binary("a", N), N, 128).await?;
    let clks: Vec<Value> = febrl4_clks("b")["clks"].as_array().expect("clks").iter().take(N).cloned().collect();
    put_with_counts(&store.s3, &store.bucket, "exports/b.json", serde_json::to_vec(&json!({"clks": clks}))?, N, 128).await?;
    for (party, path) in [(0, "exports/a.bin"), (1, "exports/b.json")] {
        let (status, body) = post_clks(&api, &project, party, &json!({"encodings": store.external_data(path)})).await?;
        assert_eq!(status, 201, "{body}");
    }

    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["total_number_comparisons"], (N * N) as u64);
    let (_, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(canonical_groups(&result["groups"]), expected_groups(N as u64));
    // The client's objects are theirs: still there.
    assert_eq!(store.keys().await?, vec!["exports/a.bin".to_string(), "exports/b.json".to_string()]);
    store.remove().await
}

#[tokio::test]
async fn pulls_from_internal_addresses_are_refused_with_a_clear_message() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let credentials = json!({"AccessKeyId": "AKIDREFUSED", "SecretAccessKey": "refused-secret-value"});
    for (endpoint, secure, why) in [
        ("169.254.169.254", Some(false), "link-local"),
        ("http://169.254.169.254:80", None, "link-local"),
        ("10.0.0.5:9000", Some(false), "private"),
        ("[::ffff:127.0.0.1]:4566", Some(false), "IPv4-mapped"),
        ("[fd00::1]:9000", Some(false), "unique local"),
        ("100.64.0.1:9000", Some(false), "carrier-grade NAT"),
    ] {
        let mut file = json!({"bucket": "b", "path": "k.bin", "endpoint": endpoint});
        if let Some(secure) = secure {
            file["secure"] = json!(secure);
        }
        let (status, body) = post_clks(&api, &project, 0, &json!({"encodings": {"file": file, "credentials": credentials}})).await?;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{endpoint}: {body}");
        assert!(detail.contains(why) && detail.contains("does not connect to such addresses"), "{endpoint}: {detail}");
        assert!(!detail.contains("refused-secret-value"), "{detail}");
    }
    Ok(())
}

/// A pull the client's store refuses (no such object, wrong credentials) puts the upload in
/// error with a message that says so, and the token can upload again.
#[tokio::test]
async fn a_pull_that_finds_nothing_puts_the_upload_in_error_with_the_reason() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let store = ClientStore::create(&project).await?;
    // The run first (it waits for data), so that it reports the upload's failure.
    let run = api.post_run(&project, 0.8).await?;
    let (status, body) = post_clks(&api, &project, 0, &json!({"encodings": store.external_data("missing.bin")})).await?;
    assert_eq!(status, 201, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let message = loop {
        let status = api.run_status(&project, &run).await?;
        if status["state"] == "error" {
            break status["message"].as_str().unwrap_or_default().to_string();
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the missing object never put the upload in error: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        message.contains(&format!("no encodings at 'missing.bin' in bucket '{}' at {CLIENT_ENDPOINT}", store.bucket)),
        "{message}"
    );
    store.remove().await
}
