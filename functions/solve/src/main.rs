//! The `solve` Lambda: see `shared::service::pipeline` for what it does with each message.

#![recursion_limit = "256"]

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::service::telemetry::init();
    let pipeline = shared::aws::pipeline_from_env().await?;
    let pipeline = &pipeline;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(shared::service::lambda::solve(pipeline, event.payload).await)
    }))
    .await
}
