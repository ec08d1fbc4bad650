//! The REST API v1 of the Anonlink Entity Service, as an axum [`Router`] generic over the ports.
//!
//! The same router serves behind API Gateway (lambda_http) and locally (axum::serve). It is the
//! reference's contract, quirks included (`docs/api-compatibility.md` lists the deliberate
//! deviations): raw-token `Authorization`, 403 for unknown ids and bad tokens alike, 201 for
//! uploads as soon as the body is stored (ingestion happens in fan-out, triggered by the S3
//! event of the stored object), and doubled slashes collapsed before routing because the
//! reference's own tests call `/api/v1//projects`.
//!
//! Modules: [`error`] (problems), [`extract`] (headers, ids, bodies), [`access`] (tokens),
//! then one module per resource: [`general`], [`projects`], [`uploads`], [`runs`], [`results`].

pub mod access;
pub mod error;
pub mod extract;
pub mod general;
pub mod projects;
pub mod results;
pub mod runs;
pub mod uploads;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use axum::routing::get;
use tower::ServiceExt;

use super::config::Settings;
use super::model::{Party, Project};
use super::ports::{BlobStore, CredentialIssuer, MetaStore, Ports, ProjectStore};
use error::ApiError;

/// Everything the handlers need: the metadata store, the working bucket, the issuer of upload
/// credentials and the settings. Each handler's `where` clause names the ports its area uses.
pub struct ApiState<P: Ports> {
    pub meta: P::Meta,
    /// The working bucket: uploads, run and delete requests go in, results come out.
    pub work: P::Work,
    pub credentials: P::Credentials,
    pub settings: Settings,
}

pub(crate) type Shared<P> = Arc<ApiState<P>>;

impl<P: Ports> ApiState<P>
where
    P::Meta: ProjectStore,
{
    /// The live project and its parties, or the reference's 403 when it is unknown or deleted.
    pub(crate) async fn project(&self, project_id: &str) -> Result<(Project, Vec<Party>), ApiError> {
        self.meta.get_project(project_id).await?.ok_or(ApiError::InvalidAccess)
    }
}

/// The reference's path prefix (nginx proxies `/api/v1/` to the app).
pub const BASE_PATH: &str = "/api/v1";

/// The API router: every endpoint under `/api/v1`, problems for unknown paths and methods, and
/// duplicate slashes collapsed before routing.
pub fn router<P: Ports>(state: ApiState<P>) -> Router
where
    P::Meta: MetaStore,
    P::Work: BlobStore,
    P::Credentials: CredentialIssuer,
{
    let routes = Router::new()
        .route("/status", get(general::status::<P>))
        .route("/version", get(general::version))
        .route("/projects", get(projects::list::<P>).post(projects::create::<P>))
        .route("/projects/{project_id}", get(projects::describe::<P>).delete(projects::delete::<P>))
        .route("/projects/{project_id}/parties", get(projects::parties::<P>))
        .route("/projects/{project_id}/clks", axum::routing::post(uploads::clks::<P>))
        .route("/projects/{project_id}/binaryclks", axum::routing::post(uploads::binary_clks::<P>))
        .route("/projects/{project_id}/authorize-external-upload", get(uploads::authorize_external_upload::<P>))
        .route("/projects/{project_id}/runs", get(runs::list::<P>).post(runs::create::<P>))
        .route("/projects/{project_id}/runs/{run_id}", get(runs::describe::<P>).delete(runs::delete::<P>))
        .route("/projects/{project_id}/runs/{run_id}/status", get(runs::status::<P>))
        .route("/projects/{project_id}/runs/{run_id}/result", get(results::result::<P>))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(Arc::new(state));
    let api = Router::new()
        .nest(BASE_PATH, routes)
        .fallback(|| async { ApiError::NotFound("The requested URL was not found on the server.".into()) });
    // Routing happens inside `api`, after the path is normalised: a layer on the router itself
    // would run only after a route had (not) matched.
    let normalised = api.map_request(collapse_slashes);
    Router::new().fallback_service(normalised)
}

/// `/api/v1//projects/` → `/api/v1/projects`: repeated slashes collapse (nginx's
/// `merge_slashes`), and a trailing slash is dropped (connexion routes accept both).
fn collapse_slashes(mut req: Request) -> Request {
    let path = req.uri().path();
    let has_trailing_slash = path.len() > 1 && path.ends_with('/');
    if !path.contains("//") && !has_trailing_slash {
        return req;
    }
    let mut clean = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        clean.push('/');
        clean.push_str(segment);
    }
    if clean.is_empty() {
        clean.push('/');
    }
    if let Some(query) = req.uri().query() {
        clean.push('?');
        clean.push_str(query);
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = clean.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Every route of [`router`] as `(METHOD, path)` with the path relative to [`BASE_PATH`], for
/// the test that checks `docs/openapi.json` documents exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/status"),
    ("GET", "/version"),
    ("GET", "/projects"),
    ("POST", "/projects"),
    ("GET", "/projects/{project_id}"),
    ("DELETE", "/projects/{project_id}"),
    ("GET", "/projects/{project_id}/parties"),
    ("POST", "/projects/{project_id}/clks"),
    ("POST", "/projects/{project_id}/binaryclks"),
    ("GET", "/projects/{project_id}/authorize-external-upload"),
    ("GET", "/projects/{project_id}/runs"),
    ("POST", "/projects/{project_id}/runs"),
    ("GET", "/projects/{project_id}/runs/{run_id}"),
    ("DELETE", "/projects/{project_id}/runs/{run_id}"),
    ("GET", "/projects/{project_id}/runs/{run_id}/status"),
    ("GET", "/projects/{project_id}/runs/{run_id}/result"),
];
