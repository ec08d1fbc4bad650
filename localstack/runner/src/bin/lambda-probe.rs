//! `lambda-probe`: a Lambda function (the real Rust runtime, `lambda_runtime`) that uses as
//! much memory and time as its SQS messages say, so the runner's limits can be tested with real
//! SQS events (`tests/limits.rs`). Each record's body is JSON:
//! `{"allocate_mib": N, "hold_ms": M, "sleep_ms": S}`: touch N MiB (8 MiB at a time, so an RSS
//! watchdog sees it grow), keep it resident M ms, then sleep S ms. It reports no failures.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use std::time::Duration;

const STEP_MIB: u64 = 8;

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    for record in event.payload["Records"].as_array().into_iter().flatten() {
        let body: Value = serde_json::from_str(record["body"].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
        let allocate_mib = body["allocate_mib"].as_u64().unwrap_or(0);
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut done = 0;
        while done < allocate_mib {
            let step = STEP_MIB.min(allocate_mib - done);
            // Non-zero bytes: every page is written, so it is resident (not a lazily mapped zero page).
            held.push(vec![1u8; (step * 1024 * 1024) as usize]);
            done += step;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(body["hold_ms"].as_u64().unwrap_or(0))).await;
        std::hint::black_box(&held);
        drop(held);
        tokio::time::sleep(Duration::from_millis(body["sleep_ms"].as_u64().unwrap_or(0))).await;
    }
    Ok(json!({ "batchItemFailures": [] }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
