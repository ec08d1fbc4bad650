//! `/status` and `/version`: unauthenticated service information.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::Shared;
use super::error::ApiResult;
use crate::service::model::StatusCounters;
use crate::service::ports::{Ports, StatusStore};

/// The anonlink release whose comparison and solving behaviour the engine reproduces.
pub const ANONLINK_VERSION: &str = "0.15.3";

/// `{"status":"ok","project_count","rate"}`; `rate` is comparisons per second over completed runs.
pub async fn status<P: Ports>(
    State(state): State<Shared<P>>,
) -> ApiResult<Json<Value>>
where
    P::Meta: StatusStore,
{
    let counters = state.meta.status_counters().await?;
    Ok(Json(json!({
        "status": "ok",
        "project_count": counters.project_count,
        "rate": comparison_rate(&counters),
    })))
}

/// Comparisons per second, as an integer; 1 before any run has completed (the reference's
/// default, and never 0 so clients that divide by it survive).
pub fn comparison_rate(counters: &StatusCounters) -> u64 {
    if counters.completed_comparisons == 0 || counters.completed_seconds <= 0.0 {
        return 1;
    }
    let rate = counters.completed_comparisons as f64 / counters.completed_seconds;
    (rate.round() as u64).max(1)
}

pub async fn version() -> Json<Value> {
    Json(json!({
        "anonlink": ANONLINK_VERSION,
        "entityservice": env!("CARGO_PKG_VERSION"),
        // The reference reports its interpreter; its clients and tests expect the key. There is
        // no Python here, which the value says; `rust` names the toolchain.
        "python": "none",
        "rust": env!("CARGO_PKG_RUST_VERSION"),
    }))
}
