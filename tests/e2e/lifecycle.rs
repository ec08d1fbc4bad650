//! Run and project lifecycles as users meet them: waiting for data, bad uploads and retries,
//! deletes that leave nothing behind.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const RUN_LIMIT: Duration = Duration::from_secs(180);

fn small_clks(seed: u64, n: usize, size: usize) -> Value {
    let data = synthetic_parties(seed, 1, n, size, 8);
    json!({ "clks": data[0].iter().map(|r| b64(r)).collect::<Vec<_>>() })
}

#[tokio::test]
async fn a_run_posted_before_the_data_waits_then_completes() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let run = api.post_run(&project, 0.9).await?;
    let status = api.run_status(&project, &run).await?;
    assert_eq!(status["state"], "created", "{status}");
    assert_eq!(status["current_stage"]["number"], 1);
    assert_eq!(status["current_stage"]["progress"]["absolute"], 0);
    api.upload_json(&project, 0, &small_clks(1, 50, 64)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = api.run_status(&project, &run).await?;
    assert_eq!(status["state"], "created", "one party is not enough: {status}");
    assert_eq!(status["current_stage"]["progress"]["absolute"], 1);
    api.upload_json(&project, 1, &small_clks(1, 50, 64)).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["total_number_comparisons"], 2500);
    let (code, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(code, 200);
    // Both parties are noisy copies of the same 50 records.
    assert!(result["groups"].as_array().unwrap().len() >= 40, "{result}");
    Ok(())
}

#[tokio::test]
async fn a_bad_upload_puts_the_project_in_error_and_a_retry_with_the_same_token_works() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    // 20-byte encodings are accepted at upload time (as the reference does) and fail ingestion.
    api.upload_json(&project, 0, &small_clks(7, 30, 20)).await?;
    let run = api.post_run(&project, 0.9).await;
    let mut described = Value::Null;
    for _ in 0..80 {
        described = api.describe(&project).await?;
        if described["error"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(described["error"], true, "{described}");
    if let Ok(run) = &run {
        let status = api.run_status(&project, run).await?;
        assert_eq!(status["state"], "error", "{status}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(message.contains("multiple of 8"), "the message says what is wrong: {status}");
    }
    // The failed upload did not consume the token.
    api.upload_json(&project, 0, &small_clks(7, 30, 64)).await?;
    api.upload_json(&project, 1, &small_clks(7, 30, 64)).await?;
    let run = api.post_run(&project, 0.9).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    Ok(())
}

#[tokio::test]
async fn parties_with_different_encoding_sizes_fail_the_run_with_a_clear_message() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let run = api.post_run(&project, 0.9).await?;
    api.upload_json(&project, 0, &small_clks(9, 20, 64)).await?;
    api.upload_json(&project, 1, &small_clks(9, 20, 128)).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "error", "{status}");
    assert!(status["message"].as_str().unwrap_or_default().contains("Mismatch in encoding sizes"), "{status}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_project_leaves_nothing_behind() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("similarity_scores", 2, false).await?;
    api.upload_json(&project, 0, &small_clks(11, 40, 64)).await?;
    api.upload_json(&project, 1, &small_clks(11, 40, 64)).await?;
    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed");

    api.delete_and_check_gone(&project, &format!("/projects/{}", project.id), &format!("/projects/{}", project.id)).await?;

    let stack = crate::faults::Stack::connect().await;
    stack.wait_until_gone(&project.id, None, Duration::from_secs(40)).await
}

#[tokio::test]
async fn parties_uploading_at_once_and_ten_runs_posted_at_once_all_complete_exactly_once() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 3, false).await?;
    let bodies: Vec<Value> = (0..3).map(|_| small_clks(21, 60, 64)).collect();
    let uploads = futures::future::join_all(bodies.iter().enumerate().map(|(i, b)| api.upload_json(&project, i, b))).await;
    for u in uploads {
        u?;
    }
    let thresholds: Vec<f64> = (0..10).map(|i| 0.5 + i as f64 * 0.05).collect();
    let runs = futures::future::join_all(thresholds.iter().map(|t| api.post_run(&project, *t))).await;
    let runs: Vec<String> = runs.into_iter().collect::<Result<_, _>>()?;
    let mut distinct = runs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    for run in &runs {
        let status = api.wait_for_run(&project, run, RUN_LIMIT).await?;
        assert_eq!(status["state"], "completed", "{status}");
        assert_eq!(status["total_number_comparisons"], 3 * 60 * 60, "three party pairs of 60 x 60");
    }
    let r = api
        .http
        .get(api.url(&format!("/projects/{}/runs", project.id)))
        .header("Authorization", &project.result_token)
        .send()
        .await?;
    let listed: Value = r.json().await?;
    assert_eq!(listed.as_array().map(|a| a.len()), Some(10), "{listed}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_project_while_its_run_computes_leaves_nothing_behind() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let data = synthetic_parties(31, 2, 15_000, 128, 60);
    for (party, records) in data.iter().enumerate() {
        api.upload_binary(&project, party, records.concat(), 15_000, 128).await?;
    }
    let run = api.post_run(&project, 0.8).await?;
    for _ in 0..200 {
        if api.run_status(&project, &run).await?["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = format!("/projects/{}", project.id);
    api.delete_and_check_gone(&project, &path, &path).await?;
    let stack = crate::faults::Stack::connect().await;
    stack.wait_until_gone(&project.id, None, Duration::from_secs(40)).await
}

/// Objects under the project's prefix in the upload bucket.
pub(crate) async fn upload_bucket_leftovers(project: &str) -> anyhow::Result<usize> {
    let admin = crate::uploads::service_client();
    let bucket = function_env("fan-out")["UPLOAD_BUCKET"].clone();
    let listed = admin.list_objects_v2().bucket(&bucket).prefix(format!("{project}/")).send().await?;
    Ok(listed.contents().len())
}

/// A project whose lifetime is over (its creation time set back, as if it had been created
/// long ago) is deleted and purged by the watchdog, on the local stack where DynamoDB's TTL
/// never deletes anything: 0 objects in both buckets, 0 items.
#[tokio::test]
async fn a_project_past_its_lifetime_is_purged_by_the_watchdog() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    // Something in the upload bucket too: a party's object that no upload names.
    let grant = crate::uploads::grant(&api, &project, 0).await?;
    let party = crate::uploads::party_client(&grant);
    crate::uploads::put_with_counts(&party, &grant.bucket, &format!("{}/stray.bin", grant.path), vec![1; 64], 1, 64).await?;
    assert_eq!(upload_bucket_leftovers(&project.id).await?, 1);
    api.upload_json(&project, 0, &small_clks(51, 30, 64)).await?;
    api.upload_json(&project, 1, &small_clks(51, 30, 64)).await?;
    let run = api.post_run(&project, 0.8).await?;
    assert_eq!(api.wait_for_run(&project, &run, RUN_LIMIT).await?["state"], "completed");

    let stack = crate::faults::Stack::connect().await;
    stack
        .dynamodb
        .update_item()
        .table_name(&stack.env["TABLE_NAME"])
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("P#{}", project.id)))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("PROJECT".into()))
        .update_expression("SET time_added = :long_ago")
        .expression_attribute_values(":long_ago", aws_sdk_dynamodb::types::AttributeValue::S("2001-01-01T00:00:00.000000+00:00".into()))
        .send()
        .await?;
    stack.wait_until_gone(&project.id, None, Duration::from_secs(60)).await?;
    assert_eq!(upload_bucket_leftovers(&project.id).await?, 0, "the upload bucket is purged too");
    let r = api.http.get(api.url(&format!("/projects/{}", project.id))).header("Authorization", &project.result_token).send().await?;
    assert_eq!(r.status(), 403, "an expired project is gone for its users");
    Ok(())
}

/// A project deleted while a large upload of it is being ingested: whichever finishes first,
/// nothing is left in either bucket or the table.
#[tokio::test]
async fn an_upload_ingested_after_its_project_was_deleted_leaves_nothing() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let data = synthetic_parties(53, 1, 20_000, 128, 8);
    api.upload_binary(&project, 0, data[0].concat(), 20_000, 128).await?;
    let path = format!("/projects/{}", project.id);
    api.delete_and_check_gone(&project, &path, &path).await?;
    let stack = crate::faults::Stack::connect().await;
    // On a loaded machine the ingestion can outlast the purge: it then writes its packed data
    // after the purge and removes it again when it finds the project gone. What must hold is
    // the end state, once the ingestion and the purge (the fan-out queue's work) have ended.
    stack.wait_until_queue_idle(&function_env("fan-out")["INGEST_QUEUE_URL"], Duration::from_secs(180)).await?;
    stack.wait_until_gone(&project.id, None, Duration::from_secs(60)).await?;
    assert_eq!(upload_bucket_leftovers(&project.id).await?, 0);
    Ok(())
}
