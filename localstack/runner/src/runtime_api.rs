//! The Lambda Runtime API (2018-06-01) for one function instance: the bootstrap long-polls
//! `invocation/next`, then posts the invocation's `response` or `error`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{mpsc, oneshot, Mutex};

/// One invocation handed to the instance.
pub struct Invocation {
    pub request_id: String,
    pub payload: String,
    pub deadline_ms: u64,
    pub function_arn: String,
    pub outcome: oneshot::Sender<Outcome>,
}

#[derive(Debug)]
pub enum Outcome {
    Response(Bytes),
    Error(Bytes),
}

struct ApiState {
    next: Mutex<mpsc::Receiver<Invocation>>,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
}

/// Serves the Runtime API on an ephemeral loopback port; returns the address, the sender that
/// queues invocations, and the server task (aborted when its process is replaced, so an
/// invocation can never reach a dead process's API).
pub async fn serve() -> anyhow::Result<(std::net::SocketAddr, mpsc::Sender<Invocation>, tokio::task::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let state = Arc::new(ApiState { next: Mutex::new(rx), in_flight: Mutex::new(HashMap::new()) });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "runtime API server stopped");
        }
    });
    Ok((addr, tx, server))
}

async fn next(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let invocation = { state.next.lock().await.recv().await };
    let Some(inv) = invocation else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    state.in_flight.lock().await.insert(inv.request_id.clone(), inv.outcome);
    let mut headers = HeaderMap::new();
    let put = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(&mut headers, "lambda-runtime-aws-request-id", &inv.request_id);
    put(&mut headers, "lambda-runtime-deadline-ms", &inv.deadline_ms.to_string());
    put(&mut headers, "lambda-runtime-invoked-function-arn", &inv.function_arn);
    put(&mut headers, "lambda-runtime-trace-id", &format!("Root=1-00000000-{}", &inv.request_id[..24.min(inv.request_id.len())]));
    put(&mut headers, "content-type", "application/json");
    (StatusCode::OK, headers, inv.payload)
}

async fn finish(state: &ApiState, id: &str, outcome: Outcome) -> StatusCode {
    match state.in_flight.lock().await.remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(State(state): State<Arc<ApiState>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    finish(&state, &id, Outcome::Response(body)).await
}

async fn error(State(state): State<Arc<ApiState>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    finish(&state, &id, Outcome::Error(body)).await
}

async fn init_error(body: Bytes) -> StatusCode {
    tracing::error!(body = %String::from_utf8_lossy(&body), "function failed to initialise");
    StatusCode::ACCEPTED
}
