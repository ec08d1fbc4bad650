//! `/projects` and `/projects/{project_id}`: create, list, describe, delete.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::access::{Access, Allowed, authorize};
use super::error::{ApiError, ApiResult};
use super::extract::{AuthToken, ProjectId, parse_json, read_body};
use super::Shared;
use crate::service::config::Limits;
use crate::service::model::{Party, Project, ResultType, Upload};
use crate::service::pipeline::expiry::request_purge;
use crate::service::ports::{BlobStore, Ports, ProjectStore};
use crate::service::{time, tokens};

/// The reference's message for a missing or unknown `result_type` (also for the removed `mapping`).
const INVALID_RESULT_TYPE: &str = r#"result_type must be either "groups", "permutations", or "similarity_scores""#;

/// The most parties a project may have: the project, its parties and the `/status` counter are
/// created in one DynamoDB transaction, which holds at most 100 items.
pub const MAX_PARTIES: u32 = 98;

/// The most characters a `name` or `notes` (of a project or a run) may have: at most 32 KiB of
/// UTF-8 each. With [`MAX_SCHEMA_BYTES`] this keeps a project's metadata item well under
/// DynamoDB's 400 KB item limit; without the limits an oversized field made the write fail in
/// the backend and the client got a 503 "please retry" that no retry could cure.
pub const MAX_TEXT_CHARS: usize = 8192;

/// The most bytes the linkage schema may take as compact JSON (it is stored in the project's
/// metadata item; clkhash schemas are a few KiB).
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// Refuses a `name` or `notes` longer than [`MAX_TEXT_CHARS`] (also used for runs).
pub(crate) fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    // Counting stops at the limit: a 6 MB string is not walked to the end to say it is long.
    if value.chars().nth(MAX_TEXT_CHARS).is_some() {
        return Err(ApiError::BadRequest(format!("'{field}' is longer than {MAX_TEXT_CHARS} characters")));
    }
    Ok(())
}

/// POST `/projects` body. Unknown fields are ignored, as connexion does.
#[derive(Debug, Deserialize)]
struct NewProject {
    schema: Option<Value>,
    result_type: Option<String>,
    #[serde(default = "two")]
    number_parties: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    uses_blocking: bool,
    /// Extension: `similarity_scores` for more than two parties (see [`NewProject::validate`]).
    #[serde(default)]
    multiparty: bool,
}

fn two() -> i64 {
    2
}

/// The validated parts of a [`NewProject`].
struct ProjectRequest {
    schema: Value,
    result_type: ResultType,
    number_parties: u32,
    name: String,
    notes: String,
    uses_blocking: bool,
}

impl NewProject {
    fn validate(self) -> Result<ProjectRequest, ApiError> {
        let schema = match self.schema {
            Some(schema @ Value::Object(_)) => schema,
            Some(_) => return Err(ApiError::BadRequest("'schema' must be a JSON object".into())),
            None => return Err(ApiError::BadRequest("Schema information required".into())),
        };
        let result_type = self
            .result_type
            .as_deref()
            .and_then(ResultType::parse)
            .ok_or_else(|| ApiError::BadRequest(INVALID_RESULT_TYPE.into()))?;
        // The reference refuses 3+ parties for anything but groups, and its tests assert it, so
        // multi-party similarity scores are an explicit opt-in. Permutations need two parties
        // whatever is asked (a mask says which slots match in *both* parties).
        if self.multiparty && result_type == ResultType::Permutations {
            return Err(ApiError::BadRequest("'multiparty' applies to result type 'similarity_scores' (permutations are two-party).".into()));
        }
        let multiparty_scores = self.multiparty && result_type == ResultType::SimilarityScores;
        if self.number_parties > 2 && result_type != ResultType::Groups && !multiparty_scores {
            return Err(ApiError::BadRequest("Multi-party linkage requires result type 'groups'.".into()));
        }
        if self.number_parties < 2 {
            return Err(ApiError::BadRequest("Record linkage requires at least 2 parties!".into()));
        }
        let number_parties = u32::try_from(self.number_parties)
            .ok()
            .filter(|n| *n <= MAX_PARTIES)
            .ok_or_else(|| ApiError::BadRequest(format!("A project may have at most {MAX_PARTIES} parties.")))?;
        check_text("name", &self.name)?;
        check_text("notes", &self.notes)?;
        let schema_bytes = schema.to_string().len();
        if schema_bytes > MAX_SCHEMA_BYTES {
            return Err(ApiError::BadRequest(format!(
                "'schema' takes {schema_bytes} bytes as JSON; at most {MAX_SCHEMA_BYTES} are accepted"
            )));
        }
        Ok(ProjectRequest {
            schema,
            result_type,
            number_parties,
            name: self.name,
            notes: self.notes,
            uses_blocking: self.uses_blocking,
        })
    }
}

/// The header that carries the admin key, when the service requires one.
pub const ADMIN_KEY_HEADER: &str = "x-admin-key";

/// When the service is configured with an admin key (`AdminKeySha256`), project creation and
/// listing require it in [`ADMIN_KEY_HEADER`]; compared by hash in constant time. Off by
/// default, so the reference's clients keep working.
fn check_admin_key(limits: &Limits, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(hash) = &limits.admin_key_sha256 else { return Ok(()) };
    let presented = headers.get(ADMIN_KEY_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if presented.is_empty() || !tokens::TokenHash(hash.clone()).matches(presented) {
        return Err(ApiError::Forbidden(format!(
            "This service requires an admin key to create or list projects: send it in the '{ADMIN_KEY_HEADER}' header."
        )));
    }
    Ok(())
}

/// `?page_size=N&cursor=C` of `GET /projects`.
struct ListQuery {
    page_size: usize,
    cursor: Option<String>,
}

impl ListQuery {
    fn parse(query: Option<&str>, max: usize) -> Result<Self, ApiError> {
        let mut out = ListQuery { page_size: max, cursor: None };
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "page_size" => {
                    out.page_size = value.parse().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                        ApiError::BadRequest(format!("'page_size' must be a whole number of 1..={max}"))
                    })?;
                }
                "cursor" => {
                    // Cursors are `time_added#project_id` as this service wrote them in `Link`:
                    // ISO times, '#' ('%23' in a URL), ':' ('%3A' when encoded), hex ids.
                    let decoded = value.replace("%23", "#").replace("%3A", ":").replace("%2B", "+").replace("%3a", ":").replace("%2b", "+");
                    let ok = !decoded.is_empty()
                        && decoded.len() <= 128
                        && decoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"#:.+-".contains(&b));
                    if !ok {
                        return Err(ApiError::BadRequest("'cursor' must be the cursor of a 'Link: rel=\"next\"' header".into()));
                    }
                    out.cursor = Some(decoded);
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// GET `/projects`: live projects, oldest first, as the reference lists them (a JSON array,
/// no token), one bounded page at a time: at most `MaxProjectsListed` (or `?page_size=`); when
/// there are more, a `Link: <…?cursor=…>; rel="next"` header says where the next page starts.
pub async fn list<P: Ports>(
    State(state): State<Shared<P>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response>
where
    P::Meta: ProjectStore,
{
    check_admin_key(&state.settings.limits, &headers)?;
    let query = ListQuery::parse(query.as_deref(), state.settings.limits.max_projects_listed)?;
    let (projects, next) = state.meta.list_projects_page(query.cursor.as_deref(), query.page_size).await?;
    let mut response = Json(json!(projects)).into_response();
    if let Some(next) = next {
        let cursor = next.replace('#', "%23").replace('+', "%2B");
        let link = format!("<{}/projects?page_size={}&cursor={cursor}>; rel=\"next\"", super::BASE_PATH, query.page_size);
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// POST `/projects`: 201 `{"project_id","update_tokens","result_token"}`. An `Authorization`
/// header, if sent, is ignored; the admin key is required when the service has one.
pub async fn create<P: Ports>(
    State(state): State<Shared<P>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)>
where
    P::Meta: ProjectStore,
{
    check_admin_key(&state.settings.limits, &headers)?;
    let body = read_body(&headers, body, state.settings.limits.max_request_bytes).await?;
    let request = parse_json::<NewProject>(&headers, &body)?.validate()?;

    let project_id = tokens::generate();
    let result_token = tokens::generate();
    let update_tokens: Vec<String> = (0..request.number_parties).map(|_| tokens::generate()).collect();
    let project = Project {
        project_id: project_id.clone(),
        result_type: request.result_type,
        number_parties: request.number_parties,
        name: request.name,
        notes: request.notes,
        schema: request.schema,
        uses_blocking: request.uses_blocking,
        time_added: time::now_iso(),
        result_token_hash: tokens::TokenHash::of(&result_token),
    };
    let parties: Vec<Party> = update_tokens
        .iter()
        .zip(0u32..)
        .map(|(token, index)| Party::new(index, tokens::TokenHash::of(token)))
        .collect();
    state.meta.create_project(&project, &parties).await?;
    tracing::info!(project_id = %project_id, parties = request.number_parties, result_type = project.result_type.as_str(), "project created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"project_id": project_id, "update_tokens": update_tokens, "result_token": result_token})),
    ))
}

/// Whether the project cannot be linked as it stands: a party's upload failed (ingestion also
/// puts an upload in error when its encoding size disagrees with the others'). The reference's
/// `error` flag.
pub(crate) fn project_in_error(parties: &[Party]) -> bool {
    parties.iter().any(|p| matches!(p.upload, Upload::Error { .. }))
}

/// Why the project is in error, for run status messages.
pub(crate) fn project_error_message(parties: &[Party]) -> Option<String> {
    parties.iter().find_map(|p| match &p.upload {
        Upload::Error { message, .. } => Some(format!("upload of party {} failed: {message}", p.index)),
        _ => None,
    })
}

pub(crate) fn parties_contributed(parties: &[Party]) -> usize {
    parties.iter().filter(|p| matches!(p.upload, Upload::Done { .. })).count()
}

/// GET `/projects/{project_id}`: the ProjectDescription (result token, or a receipt for
/// permutations projects).
pub async fn describe<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
) -> ApiResult<Json<Value>>
where
    P::Meta: ProjectStore,
{
    let (project, parties) = state.project(&project_id).await?;
    authorize(&project, &parties, &token, Allowed::ResultOrPermutationsReceipt)?;
    Ok(Json(json!({
        "project_id": project.project_id,
        "parties_contributed": parties_contributed(&parties),
        "schema": project.schema,
        "result_type": project.result_type.as_str(),
        "number_parties": project.number_parties,
        "name": project.name,
        "notes": project.notes,
        "error": project_in_error(&parties),
        "uses_blocking": project.uses_blocking,
    })))
}

/// A party's upload as a person reads it: `pending` (nothing uploaded yet), `ingesting` (stored,
/// being read), `failed` with the `reason` ingestion gave (what to fix, then upload again), or
/// `done` with what was read.
fn party_status(party: &Party) -> Value {
    let mut status = json!({"party": party.index});
    let state = match &party.upload {
        Upload::NotStarted => "pending",
        Upload::Pending(_) => "ingesting",
        Upload::Error { message, .. } => {
            status["reason"] = json!(message);
            "failed"
        }
        Upload::Done { ingested, .. } => {
            status["records"] = json!(ingested.record_count);
            status["encoding_size"] = json!(ingested.encoding_size);
            "done"
        }
    };
    status["state"] = json!(state);
    status
}

/// GET `/projects/{project_id}/parties` (an extension): each party's upload status. The result
/// token sees every party; an update token sees only its own party, so no party learns another's
/// state or failure reason. The reference's ProjectDescription is left as it is (its clients
/// compare it whole).
pub async fn parties<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
) -> ApiResult<Json<Value>>
where
    P::Meta: ProjectStore,
{
    let (project, parties) = state.project(&project_id).await?;
    let access = authorize(&project, &parties, &token, Allowed::ResultOrUpdate)?;
    let visible: Vec<Value> = parties
        .iter()
        .filter(|p| match access {
            Access::Update(own) => p.index == own,
            _ => true,
        })
        .map(party_status)
        .collect();
    Ok(Json(json!({
        "project_id": project.project_id,
        "number_parties": project.number_parties,
        "parties": visible,
    })))
}

/// DELETE `/projects/{project_id}`: 204. The project disappears from every read at once; the
/// delete request object's S3 event makes fan-out purge its objects and items.
pub async fn delete<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
) -> ApiResult<StatusCode>
where
    P::Meta: ProjectStore,
    P::Work: BlobStore,
{
    let (project, parties) = state.project(&project_id).await?;
    authorize(&project, &parties, &token, Allowed::ResultOnly)?;
    if !state.meta.mark_project_deleted(&project_id).await? {
        // A concurrent delete won: to this caller the project no longer exists.
        return Err(ApiError::InvalidAccess);
    }
    if let Err(e) = request_purge(&state.work, &project_id).await {
        // The delete is already durable: the project's tombstone stays until a purge completes,
        // and the watchdog requests the purge again while it is there (`pipeline::expiry`). So
        // the answer is still 204; a retry by the client would get 403 anyway.
        tracing::warn!(project_id = %project_id, error = %e, "storing the delete request failed; the watchdog requests the purge again");
    }
    tracing::info!(project_id = %project_id, "project deleted");
    Ok(StatusCode::NO_CONTENT)
}
