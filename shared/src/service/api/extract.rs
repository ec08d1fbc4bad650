//! Request extraction that fails with [`ApiError`] problems instead of axum's plain-text
//! rejections: the raw-token `Authorization` header, path ids, and size-limited bodies.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::{HeaderMap, header, request::Parts};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The `Authorization` header as sent: the raw token, no "Bearer"/"token" prefix.
pub struct AuthToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AuthToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or(ApiError::MissingAuthorization)?;
        // A header that is not text cannot be one of our hex tokens; treat it as a wrong token
        // (the caller still learns nothing about which ids exist).
        let token = value.to_str().map_err(|_| ApiError::InvalidAccess)?;
        Ok(AuthToken(token.trim().to_string()))
    }
}

/// `{project_id}` of a `/projects/{project_id}/...` path.
pub struct ProjectId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ProjectId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(project_id) =
            Path::<String>::from_request_parts(parts, state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        Ok(ProjectId(project_id))
    }
}

/// `{project_id}` and `{run_id}` of a `/projects/{project_id}/runs/{run_id}/...` path.
pub struct RunIds {
    pub project_id: String,
    pub run_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for RunIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((project_id, run_id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        Ok(RunIds { project_id, run_id })
    }
}

/// Reads the whole body, refusing more than `limit` bytes with 413 (before reading it when the
/// client declares its length).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large { ApiError::PayloadTooLarge { limit } } else { ApiError::BadRequest(format!("Could not read the request body: {e}")) }
    })
}

/// The media type of the request without parameters, lower-case (`application/json`).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// Parses a JSON request body into `T`. A declared non-JSON content type is 415; a body that is
/// not JSON or does not fit the schema is 400 with serde's explanation (which names the field).
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    if let Some(mt) = media_type(headers)
        && !is_json(&mt)
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Unsupported content type {mt:?}: this endpoint accepts application/json"
        )));
    }
    let invalid = |e: serde_json::Error| ApiError::BadRequest(format!("Invalid request body: {e}"));
    // Every body of this API is an object; serde would also accept a struct written as an array.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest("Invalid request body: expected a JSON object".into()));
    }
    serde_json::from_value(value).map_err(invalid)
}
