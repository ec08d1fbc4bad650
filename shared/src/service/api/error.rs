//! Every way a request can fail, and the one place they become HTTP responses: RFC 7807
//! `application/problem+json` bodies `{"type":"about:blank","title","status","detail"}`, as the
//! reference's connexion `ProblemException` writes them.
//!
//! Backend failures (DynamoDB, S3, STS) are logged with their cause and answered with a generic
//! detail: the client learns that it may retry, not how the service is built.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::service::ports::{BlobError, CredentialError, MetaError};

/// The reference's detail for a bad token and for an unknown or deleted project or run alike,
/// so a caller cannot tell which ids exist.
pub const INVALID_ACCESS: &str = "Invalid access token or project doesn't exist";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The `Authorization` header is absent (connexion rejects such requests with 400).
    #[error("Missing header parameter 'Authorization'")]
    MissingAuthorization,
    /// Bad token, or unknown/deleted project or run: indistinguishable on purpose.
    #[error("{INVALID_ACCESS}")]
    InvalidAccess,
    /// A refusal with its own reason (token already used, inconsistent upload, path not allowed).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("The method is not allowed for the requested URL.")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// A per-project limit would be exceeded; the detail names the limit (its template
    /// parameter) and its value.
    #[error("{0}")]
    LimitReached(String),
    #[error(
        "The request body is larger than {limit} bytes. Upload large encodings to the object store instead: \
         GET /api/v1/projects/{{project_id}}/authorize-external-upload returns credentials and a path, then \
         POST /clks with {{\"encodings\": {{\"file\": {{\"bucket\", \"path\"}}}}}}."
    )]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The reference's 500 for `authorize-external-upload` when the feature is off; the
    /// anonlink-client falls back to a direct upload when it sees it.
    #[error("Retrieving temporary object store credentials feature disabled")]
    FeatureDisabled,
    /// A backend was unavailable or failed; safe to retry (clients back off on 503).
    #[error("The service could not complete the request right now; please retry.")]
    Unavailable(String),
    /// A broken invariant (e.g. a completed run without its result object).
    #[error("Sorry, the server couldn't handle that request")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingAuthorization | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidAccess | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::LimitReached(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::FeatureDisabled | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::FeatureDisabled => "Feature Disabled",
            ApiError::LimitReached(_) => "Limit Reached",
            other => other.status().canonical_reason().unwrap_or("Error"),
        }
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            // The project or run vanished between our read and our write (a concurrent delete).
            MetaError::NotFound(_) => ApiError::InvalidAccess,
            MetaError::Conflict(what) => ApiError::Conflict(format!("A concurrent request changed this resource ({what}); please retry.")),
            MetaError::Backend(cause) => ApiError::Unavailable(format!("metadata store: {cause}")),
            // Contention that outlasted the in-process retries: the client may retry at once.
            MetaError::TransactionConflict(cause) => ApiError::Unavailable(format!("metadata store: {cause}")),
            MetaError::Limit(limit) => ApiError::BadRequest(format!("The request is too large to store: {limit}.")),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        ApiError::Unavailable(format!("object store: {e}"))
    }
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        ApiError::Unavailable(format!("credential issuer: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Unavailable(cause) | ApiError::Internal(cause) => {
                tracing::error!(status = status.as_u16(), cause = %cause, "request failed");
            }
            other => tracing::info!(status = status.as_u16(), detail = %other, "request refused"),
        }
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut response = (status, body.to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
