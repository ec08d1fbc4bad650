//! Secret hygiene: after a full linkage that uses every kind of secret the service hands out or
//! receives (result token, update tokens, receipt tokens, temporary upload credentials, and a
//! data provider's own store credentials for a pull), none of them appears in any log of the
//! local stack (`localstack/.state/logs/`: the api, the runner with fan-out/compare/solve, and
//! the emulators) or in any item of the metadata table. Tokens are stored only as SHA-256 hashes
//! (docs/api-compatibility.md #26); upload credentials are never stored at all; a provider's
//! credentials live only in the upload reference in the work bucket, deleted once ingested.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

use crate::faults::Stack;
use crate::helpers::*;
use crate::pulls::ClientStore;
use crate::uploads::{grant, party_client, put_with_counts};

const RUN_LIMIT: Duration = Duration::from_secs(240);
const N: usize = 300;

/// Every item of the table, rendered as text (keys, strings, numbers, nested values).
async fn table_dump(stack: &Stack) -> anyhow::Result<(usize, String)> {
    let mut text = String::new();
    let mut items = 0;
    let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
    loop {
        let page = stack
            .dynamodb
            .scan()
            .table_name(&stack.env["TABLE_NAME"])
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await?;
        for item in page.items() {
            items += 1;
            text.push_str(&format!("{item:?}\n"));
        }
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok((items, text)),
        }
    }
}

#[tokio::test]
async fn tokens_and_upload_credentials_never_reach_logs_or_the_table() -> anyhow::Result<()> {
    let api = Api::new();
    let stack = Stack::connect().await;
    // permutations: the only result type where receipt tokens are used after the upload.
    let project = api.create_project("permutations", 2, false).await?;

    // Party 0 through the object store with temporary credentials, party 1 pulled from its own
    // store with its own credentials.
    let grant0 = grant(&api, &project, 0).await?;
    let path = format!("{}/encodings.json", grant0.path);
    let clks: Vec<Value> = febrl4_clks("a")["clks"].as_array().expect("clks").iter().take(N).cloned().collect();
    put_with_counts(&party_client(&grant0), &grant0.bucket, &path, serde_json::to_vec(&json!({"clks": clks}))?, N, 128).await?;
    let external = json!({"encodings": {"file": {"bucket": grant0.bucket, "path": path}}});
    let receipt0 = api.upload_json(&project, 0, &external).await?;
    let clks_b: Vec<Value> = febrl4_clks("b")["clks"].as_array().expect("clks").iter().take(N).cloned().collect();
    let store = ClientStore::create(&project).await?;
    put_with_counts(&store.s3, &store.bucket, "b.json", serde_json::to_vec(&json!({"clks": clks_b}))?, N, 128).await?;
    let receipt1 = api.upload_json(&project, 1, &json!({"encodings": store.external_data("b.json")})).await?;

    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    // Every token goes through the api once more after the run: mask, both permutations, describe.
    for token in [&project.result_token, &receipt0, &receipt1] {
        let (code, body) = api.result(&project, &run, token).await?;
        assert_eq!(code, 200, "{body}");
    }
    api.describe(&project).await?;

    let credentials = &grant0.credentials;
    let mut secrets: Vec<(String, String)> = vec![
        ("result token".into(), project.result_token.clone()),
        ("receipt token 0".into(), receipt0),
        ("receipt token 1".into(), receipt1),
    ];
    for (i, t) in project.update_tokens.iter().enumerate() {
        secrets.push((format!("update token {i}"), t.clone()));
    }
    for field in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
        let value = credentials[field].as_str().unwrap_or_default().to_string();
        assert!(value.len() >= 16, "{field} missing from the grant: {credentials}");
        secrets.push((format!("upload credential {field}"), value));
        let value = store.credentials[field].as_str().unwrap_or_default().to_string();
        assert!(value.len() >= 16, "{field} missing from the client store's credentials");
        secrets.push((format!("client store credential {field}"), value));
    }

    // Logs are flushed line by line; give the runner's last lines a moment to land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = repo_root().join("localstack/.state/logs");
    let mut leaks = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&logs)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path)?;
        for (what, secret) in &secrets {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                leaks.push(format!("{what} in {}", path.display()));
            }
        }
    }
    assert!(files >= 3, "expected the stack's logs under {}", logs.display());

    let (items, table) = table_dump(&stack).await?;
    assert!(table.contains(&project.id), "the scan did not reach this project's items");
    for (what, secret) in &secrets {
        if table.contains(secret.as_str()) {
            leaks.push(format!("{what} in the table ({items} items scanned)"));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
    store.remove().await?;
    println!("secret hygiene: {} secrets, {files} log files, {items} table items: no leak", secrets.len());
    Ok(())
}
