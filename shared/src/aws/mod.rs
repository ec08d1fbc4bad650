//! AWS adapters for the ports in [`crate::service::ports`].
//!
//! Clients are built once per cold start from the environment. Locally the standard
//! per-service endpoint variables (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_DYNAMODB`,
//! `AWS_ENDPOINT_URL_SQS`) point them at the emulators; the upload store has endpoint and keys of
//! its own (`UPLOAD_S3_*`, `UPLOAD_STS_ENDPOINT`) because locally it is a different server
//! (SeaweedFS) from the working bucket's (LocalStack). In AWS none of these are set.

pub mod client_bucket;
pub mod dynamo;
pub mod s3;
pub mod sqs;
pub mod sts;

use aws_config::{BehaviorVersion, SdkConfig};

/// The shared SDK configuration (region, credentials, endpoints from the environment).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

fn force_path_style() -> bool {
    std::env::var("S3_FORCE_PATH_STYLE").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// S3 client for the working bucket.
pub fn work_s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config).force_path_style(force_path_style()).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Static credentials for the upload store when it is a separate local server.
fn upload_store_credentials() -> Option<aws_sdk_s3::config::Credentials> {
    let key = std::env::var("UPLOAD_S3_ACCESS_KEY_ID").ok()?;
    let secret = std::env::var("UPLOAD_S3_SECRET_ACCESS_KEY").ok()?;
    Some(aws_sdk_s3::config::Credentials::new(key, secret, None, None, "upload-store"))
}

/// S3 client for the upload bucket (where data providers put large encodings).
pub fn upload_s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(config).force_path_style(force_path_style());
    if let Ok(endpoint) = std::env::var("UPLOAD_S3_ENDPOINT") {
        b = b.endpoint_url(endpoint).force_path_style(true);
    }
    if let Some(c) = upload_store_credentials() {
        b = b.credentials_provider(c);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// STS client that mints upload credentials (for the upload store's STS locally).
pub fn upload_sts_client(config: &SdkConfig) -> aws_sdk_sts::Client {
    let mut b = aws_sdk_sts::config::Builder::from(config);
    if let Ok(endpoint) = std::env::var("UPLOAD_STS_ENDPOINT") {
        b = b.endpoint_url(endpoint);
    }
    if let Some(c) = upload_store_credentials() {
        b = b.credentials_provider(c);
    }
    aws_sdk_sts::Client::from_conf(b.build())
}

/// STS client for the working bucket's account (result download credentials).
pub fn sts_client(config: &SdkConfig) -> aws_sdk_sts::Client {
    aws_sdk_sts::Client::new(config)
}

pub fn dynamodb_client(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}

pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// The ports in AWS: DynamoDB metadata, the two S3 buckets, SQS, clients' S3 stores and STS.
pub struct AwsPorts;

impl crate::service::ports::Ports for AwsPorts {
    type Meta = dynamo::DynamoMeta;
    type Work = s3::S3Blobs;
    type Uploads = s3::S3Blobs;
    type Queue = sqs::SqsQueue;
    type ClientStores = client_bucket::S3ClientStoreOpener;
    type Credentials = sts::StsIssuer;
}

/// The pipeline wired to AWS.
pub type AwsPipeline = crate::service::pipeline::Pipeline<AwsPorts>;

/// Builds the pipeline from the environment (once per cold start).
pub async fn pipeline_from_env() -> Result<AwsPipeline, crate::service::config::ConfigError> {
    let settings = crate::service::config::Settings::from_env()?;
    let config = sdk_config().await;
    Ok(AwsPipeline {
        meta: dynamo::DynamoMeta::new(dynamodb_client(&config), settings.table_name.clone())
            .with_item_lifetime(settings.limits.project_lifetime_secs),
        work: s3::S3Blobs::new(work_s3_client(&config), settings.work_bucket.clone()),
        uploads: s3::S3Blobs::new(upload_s3_client(&config), settings.upload.bucket.clone()),
        queue: sqs::SqsQueue::new(sqs_client(&config)),
        client_stores: client_bucket::S3ClientStoreOpener::new(settings.pull.clone(), settings.limits.max_upload_bytes),
        settings,
    })
}

/// The whole life of an SQS-triggered pipeline function: telemetry (logs, metrics and the cold
/// start's count), settings and clients once per cold start, then every invocation through
/// [`crate::service::lambda::handle_payload`]. (Boxed: the SDK's deeply nested future types
/// would otherwise exceed rustc's type-layout depth in `main`.)
pub fn run_pipeline_function(
    step: crate::service::lambda::Step,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), lambda_runtime::Error>>>> {
    use lambda_runtime::{service_fn, Error, LambdaEvent};

    Box::pin(async move {
        crate::service::telemetry::init();
        crate::service::metrics::init(step.function_name());
        let pipeline = pipeline_from_env().await?;
        let pipeline = &pipeline;
        lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| async move {
            crate::service::lambda::handle_payload(step, pipeline, event.payload).await.map_err(Error::from)
        }))
        .await
    })
}

/// SDK configuration for unit tests of the adapters' own checks: a dead endpoint, no retries,
/// so a request that is not refused before the SDK call fails fast with a backend error.
#[cfg(test)]
pub(crate) fn unreachable_config() -> SdkConfig {
    use aws_sdk_s3::config::{Credentials, Region, SharedCredentialsProvider};
    let credentials = Credentials::new("test-key", "test-secret", None, None, "test");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url("http://127.0.0.1:9")
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(aws_config::timeout::TimeoutConfig::builder().connect_timeout(std::time::Duration::from_secs(2)).build())
        .build()
}
