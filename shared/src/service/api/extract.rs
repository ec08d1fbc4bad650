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

/// Whether `id` has the form of the ids this service issues (48 lowercase hex characters, see
/// [`crate::service::tokens::generate`]).
fn is_issued_id(id: &str) -> bool {
    id.len() == 48 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An id the service cannot have issued names nothing: the same 403 as an unknown id, without a
/// lookup (a key of any length and content must not reach the metadata store, which refuses
/// keys over 1 KB with an error that would surface as a 503). A request without the
/// `Authorization` header still gets connexion's 400 first.
fn check_ids(parts: &Parts, ids: &[&str]) -> Result<(), ApiError> {
    if ids.iter().all(|id| is_issued_id(id)) {
        return Ok(());
    }
    if parts.headers.contains_key(header::AUTHORIZATION) { Err(ApiError::InvalidAccess) } else { Err(ApiError::MissingAuthorization) }
}

/// `{project_id}` of a `/projects/{project_id}/...` path.
pub struct ProjectId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ProjectId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(project_id) =
            Path::<String>::from_request_parts(parts, state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        check_ids(parts, &[&project_id])?;
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
        check_ids(parts, &[&project_id, &run_id])?;
        Ok(RunIds { project_id, run_id })
    }
}

/// How much of a refused body is still read and thrown away, and for how long, before the
/// answer: a client (`requests`, `reqwest`) that is still sending when the server answers and
/// closes gets a connection reset instead of the 413 problem. nginx's lingering close does the
/// same. Behind API Gateway the body has already arrived; this matters for local serving.
const DISCARD_BYTES: u64 = 64 * 1024 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads and drops what is left of a refused body, within [`DISCARD_BYTES`] and
/// [`DISCARD_TIME`] (beyond them the connection is closed and the client may see a reset).
pub async fn discard_body(body: Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut read = 0u64;
        while read <= DISCARD_BYTES {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

/// Reads the whole body, refusing more than `limit` bytes with 413 (before reading it when the
/// client declares its length). The refused rest is discarded, so that the client reads the 413.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use futures::StreamExt;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        discard_body(body).await;
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut read = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("Could not read the request body: {e}")))?;
        if read.len() + chunk.len() > limit {
            discard_body(Body::from_stream(stream)).await;
            return Err(ApiError::PayloadTooLarge { limit });
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.freeze())
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
    // serde's own messages do not say where a wrong type was found; the path does
    // ("result_type: invalid type: integer `3`, expected a string").
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            invalid(inner)
        } else {
            ApiError::BadRequest(format!("Invalid request body: {path}: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    #[derive(Debug, serde::Deserialize)]
    struct Body2 {
        #[allow(dead_code)]
        threshold: f64,
    }

    #[test]
    fn wrong_types_name_the_field() {
        let headers = HeaderMap::new();
        let err = parse_json::<Body2>(&headers, br#"{"threshold": "0.9"}"#).unwrap_err();
        assert!(err.to_string().contains("threshold: invalid type"), "{err}");
    }

    #[test]
    fn ids_the_service_cannot_have_issued_are_403_after_the_missing_header_400() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef";
        let (mut parts, ()) = Request::new(()).into_parts();
        assert!(check_ids(&parts, &[id, id]).is_ok());
        assert!(matches!(check_ids(&parts, &[id, &"a".repeat(5000)]), Err(ApiError::MissingAuthorization)));
        parts.headers.insert(header::AUTHORIZATION, "t".parse().unwrap());
        for bad in ["A123456789abcdef0123456789abcdef0123456789abcdef", "abc", &"a".repeat(5000)] {
            assert!(matches!(check_ids(&parts, &[id, bad]), Err(ApiError::InvalidAccess)), "{bad}");
        }
    }

    #[tokio::test]
    async fn oversized_bodies_are_413_and_read_to_the_end() {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![1u8; 1000])).collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let err = read_body(&HeaderMap::new(), body, 4000).await.unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge { limit: 4000 }));
        let ok = read_body(&HeaderMap::new(), Body::from(vec![2u8; 4000]), 4000).await.unwrap();
        assert_eq!(ok.len(), 4000);
    }
}
