//! At-least-once delivery: duplicated messages must not change results, progress or completion.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;

use crate::helpers::*;

/// Direct access to the local stack's resources, configured exactly as the functions are.
pub struct Stack {
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub env: std::collections::BTreeMap<String, String>,
}

impl Stack {
    pub async fn connect() -> Self {
        let env = function_env("compare");
        // SAFETY of set_var: tests only read these through the SDK's loader right below; all
        // tests set the same values.
        for (k, v) in &env {
            if k.starts_with("AWS_") {
                unsafe { std::env::set_var(k, v) };
            }
        }
        let config = shared::aws::sdk_config().await;
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
        Stack {
            s3,
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            env,
        }
    }

    /// Objects in the working bucket and items in the table that belong to the project.
    pub async fn project_leftovers(&self, project: &str) -> anyhow::Result<(Vec<String>, usize)> {
        let bucket = &self.env["WORK_BUCKET"];
        let mut objects = Vec::new();
        let listed = self.s3.list_objects_v2().bucket(bucket).send().await?;
        for o in listed.contents() {
            if let Some(k) = o.key() {
                if k.contains(project) {
                    objects.push(k.to_string());
                }
            }
        }
        let items = self
            .dynamodb
            .query()
            .table_name(&self.env["TABLE_NAME"])
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("P#{project}")))
            .consistent_read(true)
            .send()
            .await?;
        Ok((objects, items.items().len()))
    }

    pub async fn send(&self, queue_url_var: &str, body: String) -> anyhow::Result<()> {
        self.sqs.send_message().queue_url(&self.env[queue_url_var]).message_body(body).send().await?;
        Ok(())
    }
}

#[tokio::test]
async fn duplicated_shard_and_solve_messages_change_nothing() -> anyhow::Result<()> {
    let api = Api::new();
    let stack = Stack::connect().await;
    let project = api.create_project("similarity_scores", 2, false).await?;
    api.upload_json(&project, 0, &febrl4_clks("a")).await?;
    api.upload_json(&project, 1, &febrl4_clks("b")).await?;
    let run = api.post_run(&project, 0.8).await?;
    let first = api.wait_for_run(&project, &run, Duration::from_secs(180)).await?;
    assert_eq!(first["state"], "completed", "{first}");
    let (_, result) = api.result(&project, &run, &project.result_token).await?;

    // Every shard and the solve delivered again, twice, after completion.
    // 25 million comparisons fit in one shard at the default target size.
    let shards = 1u32;
    for _ in 0..2 {
        for shard in 0..shards {
            let body = json!({"project_id": project.id, "run_id": run, "shard_index": shard}).to_string();
            stack.send("SHARD_QUEUE_URL", body).await?;
        }
        stack.send("SOLVE_QUEUE_URL", json!({"project_id": project.id, "run_id": run}).to_string()).await?;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = api.run_status(&project, &run).await?;
    assert_eq!(again["state"], "completed");
    assert_eq!(again["time_completed"], first["time_completed"], "completed exactly once");
    assert_eq!(again["total_number_comparisons"], first["total_number_comparisons"]);
    let (_, result_again) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(result, result_again);
    Ok(())
}
