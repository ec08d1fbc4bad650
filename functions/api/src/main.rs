//! The `api` Lambda: the REST API v1 router (`shared::service::api`) over DynamoDB, the working
//! bucket and STS. Behind API Gateway when the Lambda runtime is present; otherwise a local HTTP
//! server on `BIND` (default 127.0.0.1:8851) that stops cleanly on SIGTERM or Ctrl-C.

use shared::aws::{AwsPorts, dynamo::DynamoMeta, s3::S3Blobs, sts::{AssumableRole, StsIssuer}};
use shared::service::api::{ApiState, router};
use shared::service::config::Settings;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::service::telemetry::init();
    let settings = Settings::from_env()?;
    let config = shared::aws::sdk_config().await;
    let state = ApiState::<AwsPorts> {
        meta: DynamoMeta::new(shared::aws::dynamodb_client(&config), settings.table_name.clone())
            .with_item_lifetime(settings.limits.project_lifetime_secs),
        work: S3Blobs::new(shared::aws::work_s3_client(&config), settings.work_bucket.clone()),
        credentials: StsIssuer {
            upload: AssumableRole { client: shared::aws::upload_sts_client(&config), role_arn: settings.upload.role_arn.clone() },
            download: settings.results_role_arn.clone().map(|role_arn| AssumableRole { client: shared::aws::sts_client(&config), role_arn }),
        },
        settings,
    };
    let app = router(state);
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        shared::service::metrics::init("api");
        return lambda_http::run(app).await;
    }
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8851".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(address = %bind, "serving the API locally");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and process supervisors send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use shared::service::api::{ApiState, router};
    use shared::service::config::{Limits, Settings, UploadSettings, WatchdogSettings};
    use shared::service::memory::{MemoryBlobs, MemoryCredentials, MemoryMeta, MemoryPorts};
    use tower::ServiceExt;

    /// An API Gateway HTTP API (payload v2) event as Lambda delivers it.
    fn apigw_v2(method: &str, raw_path: &str, body: &str) -> String {
        serde_json::json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": raw_path,
            "rawQueryString": "",
            "headers": {"content-type": "application/json", "host": "abc.execute-api.eu-west-1.amazonaws.com"},
            "requestContext": {
                "accountId": "123456789012", "apiId": "abc", "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
                "domainPrefix": "abc", "requestId": "r1", "routeKey": "$default", "stage": "$default",
                "time": "23/Nov/2026:00:00:00 +0000", "timeEpoch": 0,
                "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "python-requests"}
            },
            "body": body,
            "isBase64Encoded": false
        })
        .to_string()
    }

    fn settings() -> Settings {
        Settings {
            table_name: "table".into(),
            work_bucket: "work".into(),
            shard_queue_url: String::new(),
            solve_queue_url: String::new(),
            dead_letter_queues: Default::default(),
            upload: UploadSettings {
                enabled: false,
                bucket: String::new(),
                public_endpoint: String::new(),
                public_secure: true,
                credentials_ttl_secs: 900,
                role_arn: String::new(),
            },
            pull: Default::default(),
            limits: Limits::default(),
            watchdog: WatchdogSettings::default(),
            results_role_arn: None,
        }
    }

    /// The router answers Lambda events directly, doubled slashes included.
    #[tokio::test]
    async fn serves_api_gateway_events() {
        let app = router(ApiState::<MemoryPorts> { meta: MemoryMeta::new(), work: MemoryBlobs::new(), credentials: MemoryCredentials::new(), settings: settings() });
        let create = lambda_http::request::from_str(&apigw_v2("POST", "/api/v1//projects", r#"{"schema":{},"result_type":"groups"}"#)).unwrap();
        let res = app.clone().oneshot(create).await.unwrap();
        assert_eq!(res.status(), 201);
        let list = lambda_http::request::from_str(&apigw_v2("GET", "/api/v1//projects", "")).unwrap();
        let res = app.oneshot(list).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(listed.as_array().map(Vec::len), Some(1));
    }
}
