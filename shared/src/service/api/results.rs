//! GET `/projects/{project_id}/runs/{run_id}/result`: the published result objects of a
//! completed run, read from the working bucket (solve writes them under `results/`).
//!
//! Order of checks, as the reference: run exists (403), run not complete (404, before the
//! token), then the token decides which object is served. A run in error answers 409 with the
//! run's message, after the token check so that only token holders read the message.
//! Results larger than a Lambda response can carry are served by a 303 to a presigned URL
//! (`requests` follows it).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::access::{Access, Allowed, authorize};
use super::error::{ApiError, ApiResult};
use super::extract::{AuthToken, RunIds};
use super::Shared;
use crate::service::keys;
use crate::service::model::{ResultType, RunState};
use crate::service::ports::{BlobError, BlobReader, BlobStore, CredentialIssuer, Ports, ProjectStore, RunStore};

/// How long a redirect or object address for a result stays valid.
pub const RESULT_URL_TTL_SECS: u64 = 3600;

/// The header asking for the similarity scores' object-store address instead of the JSON.
pub const RETURN_OBJECT_STORE_ADDRESS: &str = "RETURN-OBJECT-STORE-ADDRESS";

pub async fn result<P: Ports>(
    State(state): State<Shared<P>>,
    RunIds { project_id, run_id }: RunIds,
    AuthToken(token): AuthToken,
    headers: HeaderMap,
) -> ApiResult<Response>
where
    P::Meta: ProjectStore + RunStore,
    P::Work: BlobStore,
    P::Credentials: CredentialIssuer,
{
    let (project, parties) = state.project(&project_id).await?;
    let run = state.meta.get_run(&project_id, &run_id).await?.ok_or(ApiError::InvalidAccess)?;
    if !matches!(run.state, RunState::Completed | RunState::Error) {
        return Err(ApiError::NotFound("run is not complete".into()));
    }
    let access = authorize(&project, &parties, &token, Allowed::ResultOrPermutationsReceipt)?;
    if run.state == RunState::Error {
        let why = run.error.as_deref().unwrap_or("unknown error");
        return Err(ApiError::Conflict(format!("Error during computation of run: {why}")));
    }

    let key = match (project.result_type, access) {
        (ResultType::Groups, Access::Result) => keys::result_groups(&project_id, &run_id),
        (ResultType::SimilarityScores, Access::Result) => {
            if headers.contains_key(RETURN_OBJECT_STORE_ADDRESS) {
                return object_store_address(&state, &keys::result_candidates(&project_id, &run_id)).await;
            }
            keys::result_similarity_scores(&project_id, &run_id)
        }
        (ResultType::Permutations, Access::Result) => keys::result_mask(&project_id, &run_id),
        (ResultType::Permutations, Access::Receipt(party)) => keys::result_permutation(&project_id, &run_id, party),
        _ => return Err(ApiError::InvalidAccess),
    };
    serve_object(&state, &key).await
}

fn missing_result(key: &str) -> ApiError {
    ApiError::Internal(format!("completed run has no result object {key}"))
}

/// The object inline as JSON, or a 303 to a presigned URL when it is too large to send.
async fn serve_object<P: Ports>(
    state: &super::ApiState<P>,
    key: &str,
) -> ApiResult<Response>
where
    P::Work: BlobStore,
{
    let (size, _) = state.work.head(key).await?.ok_or_else(|| missing_result(key))?;
    if size > state.settings.limits.max_response_bytes as u64 {
        let url = state.work.presign_get(key, RESULT_URL_TTL_SECS).await?;
        let location = HeaderValue::from_str(&url).map_err(|e| ApiError::Internal(format!("presigned URL is not a header value: {e}")))?;
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response());
    }
    let (body, _) = state.work.get(key).await.map_err(|e| match e {
        BlobError::NotFound(_) => missing_result(key),
        other => other.into(),
    })?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// The reference's `{"credentials", "object": {"endpoint","secure","bucket","path"}}` for the
/// candidate-pair file: STS credentials that can only read that one object (null where the
/// service is not configured to issue them), plus a presigned `url` for clients without an S3
/// library (see docs/api-compatibility.md, row 17).
async fn object_store_address<P: Ports>(
    state: &super::ApiState<P>,
    key: &str,
) -> ApiResult<Response>
where
    P::Work: BlobStore,
    P::Credentials: CredentialIssuer,
{
    state.work.head(key).await?.ok_or_else(|| missing_result(key))?;
    let bucket = &state.settings.work_bucket;
    let credentials = state.credentials.issue_download(bucket, key, RESULT_URL_TTL_SECS).await?;
    let url = state.work.presign_get(key, RESULT_URL_TTL_SECS).await?;
    let (secure, host) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme == "https", rest.split('/').next().unwrap_or_default()),
        None => (true, ""),
    };
    // A virtual-hosted URL names the bucket in its host; clients want the bare endpoint.
    let endpoint = host.strip_prefix(&format!("{bucket}.")).unwrap_or(host);
    let body = serde_json::json!({
        "credentials": credentials,
        "object": {
            "endpoint": endpoint,
            "secure": secure,
            "bucket": bucket,
            "path": key,
            "url": url,
        }
    });
    Ok(axum::Json(body).into_response())
}
