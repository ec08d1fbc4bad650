//! The `solve` Lambda: see `shared::service::pipeline` for what it does with each message.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::aws::run_pipeline_function(shared::service::lambda::Step::Solve).await
}
