//! Runs: `/projects/{project_id}/runs` (list, post), `/runs/{run_id}` (describe, delete) and
//! `/runs/{run_id}/status`.
//!
//! Posting a run stores it as `created` and drops a run request object in the working bucket;
//! that object's S3 event makes fan-out start the run as soon as every party's data is in (and
//! fan-out also starts waiting runs when the last upload is ingested).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::access::{Allowed, authorize};
use super::error::{ApiError, ApiResult};
use super::extract::{AuthToken, ProjectId, RunIds, parse_json, read_body};
use super::projects::{check_text, parties_contributed, project_error_message, project_in_error};
use super::Shared;
use crate::service::keys;
use crate::service::model::{Party, Project, ResultType, Run, RunState};
use crate::service::ports::{BlobStore, MetaError, Ports, ProjectStore, RunStore};
use crate::service::{time, tokens};

/// POST `/runs` body. Unknown fields are ignored, as connexion does.
#[derive(Debug, Deserialize)]
struct NewRun {
    threshold: Option<f64>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    notes: String,
    /// Extension: a `groups` result that also carries each group's edges and their scores.
    #[serde(default)]
    group_scores: bool,
}

/// The smallest threshold accepted. The reference's rule is 0 < t ≤ 1, but a run's threshold
/// is stored as a DynamoDB number, whose smallest positive magnitude is 1e-130: a smaller one
/// made the write fail in the backend (a 503 no retry could cure). No Dice score lies between
/// 0 and 1e-130 (the smallest positive one is 1/8192), so the floor changes no result.
pub const MIN_THRESHOLD: f64 = 1e-130;

fn run_description(run: &Run) -> Value {
    let mut description = json!({"run_id": run.run_id, "threshold": run.threshold, "name": run.name, "notes": run.notes});
    if run.group_scores {
        // Only when asked for: the reference's RunDescription otherwise.
        description["group_scores"] = json!(true);
    }
    description
}

/// The project, after checking the result token (every run endpoint but status and result).
async fn project_for_result_token<P: Ports>(
    state: &super::ApiState<P>,
    project_id: &str,
    token: &str,
) -> Result<(Project, Vec<Party>), ApiError>
where
    P::Meta: ProjectStore,
{
    let (project, parties) = state.project(project_id).await?;
    authorize(&project, &parties, token, Allowed::ResultOnly)?;
    Ok((project, parties))
}

/// GET `/projects/{project_id}/runs`: `[{"run_id","time_added","state"}]`.
pub async fn list<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
) -> ApiResult<Json<Value>>
where
    P::Meta: ProjectStore + RunStore,
{
    project_for_result_token(&state, &project_id, &token).await?;
    let runs = state.meta.list_runs(&project_id).await?;
    let listed: Vec<Value> = runs
        .iter()
        .map(|r| json!({"run_id": r.run_id, "time_added": r.time_added, "state": r.state.as_str()}))
        .collect();
    Ok(Json(Value::Array(listed)))
}

/// POST `/projects/{project_id}/runs`: 201 `{"run_id","threshold","name","notes"}`.
pub async fn create<P: Ports>(
    State(state): State<Shared<P>>,
    ProjectId(project_id): ProjectId,
    AuthToken(token): AuthToken,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)>
where
    P::Meta: ProjectStore + RunStore,
    P::Work: BlobStore,
{
    let (project, parties) = project_for_result_token(&state, &project_id, &token).await?;
    let body = read_body(&headers, body, state.settings.limits.max_request_bytes).await?;
    let request: NewRun = parse_json(&headers, &body)?;
    let threshold = request.threshold.ok_or_else(|| ApiError::BadRequest("'threshold' is a required property".into()))?;
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(ApiError::BadRequest(format!("threshold must be greater than 0 and at most 1, not {threshold}")));
    }
    if threshold < MIN_THRESHOLD {
        return Err(ApiError::BadRequest(format!("threshold must be at least {MIN_THRESHOLD:e}, not {threshold:e}")));
    }
    check_text("name", &request.name)?;
    check_text("notes", &request.notes)?;
    // 409, not 400: the request is well formed; it conflicts with the project's result type.
    if request.group_scores && project.result_type != ResultType::Groups {
        return Err(ApiError::Conflict(format!(
            "'group_scores' applies to result type 'groups', not '{}'",
            project.result_type.as_str()
        )));
    }
    if project_in_error(&parties) {
        return Err(ApiError::Conflict("Can't post run as project has errors".into()));
    }
    let runs = state.meta.list_runs(&project_id).await?;
    check_run_limits(&state.settings.limits, &runs)?;
    check_planned_comparisons(&state.settings, &project, &parties, &runs, threshold)?;
    let mut run = Run::created(project_id.clone(), tokens::generate(), threshold, request.name, request.notes, time::now_iso());
    run.group_scores = request.group_scores;
    match state.meta.create_run(&run).await {
        Ok(()) => {}
        // The project was deleted since we read it.
        Err(MetaError::Conflict(_)) => return Err(ApiError::InvalidAccess),
        Err(e) => return Err(e.into()),
    }
    let request = json!({"project_id": project_id, "run_id": run.run_id});
    let metadata = vec![("kind".to_string(), "run".to_string())];
    if let Err(e) = state.work.put(&keys::run_request(&project_id, &run.run_id), Bytes::from(request.to_string()), &metadata).await {
        // Without its request object the run might never start: take it back, let the client retry.
        if let Err(undo) = state.meta.delete_run(&project_id, &run.run_id).await {
            tracing::error!(project_id = %project_id, run_id = %run.run_id, error = %undo, "could not remove a run whose request was not stored");
        }
        return Err(e.into());
    }
    tracing::info!(project_id = %project_id, run_id = %run.run_id, threshold, "run created");
    Ok((StatusCode::CREATED, Json(run_description(&run))))
}

/// Refuses a new run when the project has as many runs as allowed, or its runs have used all
/// the comparisons allowed (fan-out checks the new run's own count once it is planned:
/// `pipeline::fan_out`).
pub(crate) fn check_run_limits(limits: &crate::service::config::Limits, runs: &[Run]) -> Result<(), ApiError> {
    if runs.len() as u64 >= limits.max_runs_per_project {
        return Err(ApiError::LimitReached(format!(
            "The project has {} runs, the most allowed (MaxRunsPerProject = {}); delete a run to post another.",
            runs.len(),
            limits.max_runs_per_project
        )));
    }
    let used: u64 = runs.iter().map(|r| r.total_comparisons).fold(0, u64::saturating_add);
    if used >= limits.max_comparisons_per_project {
        return Err(ApiError::LimitReached(format!(
            "The project's runs have used {used} comparisons, the most allowed (MaxComparisonsPerProject = {}).",
            limits.max_comparisons_per_project
        )));
    }
    Ok(())
}

/// Refuses, before it is stored, a run whose own plan would take the project past
/// `MaxComparisonsPerProject`, when its plan is known now: every party's data is in and the
/// project is unblocked (the comparisons then follow from the record counts, exactly as fan-out
/// will plan them). A blocked run's comparisons are known once fan-out has planned it from the
/// block indexes, and fan-out refuses it then with the same numbers (`pipeline::fan_out`).
fn check_planned_comparisons(
    settings: &crate::service::config::Settings,
    project: &Project,
    parties: &[Party],
    runs: &[Run],
    threshold: f64,
) -> Result<(), ApiError> {
    let Some(plan) = estimate_from_parties(settings, project, parties, None, threshold) else { return Ok(()) };
    let limit = settings.limits.max_comparisons_per_project;
    let used: u64 = runs.iter().map(|r| r.total_comparisons).fold(0, u64::saturating_add);
    if used.saturating_add(plan.comparisons) <= limit {
        return Ok(());
    }
    Err(ApiError::LimitReached(format!(
        "The run would need {} comparisons in {} shards (about {} s, {} USD) and the project's runs have used {used}: \
         more than the {limit} allowed per project (MaxComparisonsPerProject).",
        plan.comparisons, plan.shards, plan.estimated_wall_seconds, plan.estimated_cost_usd
    )))
}

/// The estimate of a run from the parties' record counts, or from its totals once `planned`
/// (shards, comparisons): `None` until every party's data is in, and for a blocked run that is
/// not planned yet (its plan needs the block indexes).
fn estimate_from_parties(
    settings: &crate::service::config::Settings,
    project: &Project,
    parties: &[Party],
    planned: Option<(u64, u64)>,
    threshold: f64,
) -> Option<crate::engine::sizing::Estimate> {
    let ingested: Vec<_> = parties.iter().map(|p| p.upload.ingested()).collect::<Option<Vec<_>>>()?;
    let records: Vec<u64> = ingested.iter().map(|i| i.record_count).collect();
    let encoding_size = ingested.first().map(|i| i.encoding_size).unwrap_or(128);
    crate::engine::sizing::run_estimate(&settings.limits.sizing(), &records, encoding_size, project.uses_blocking, planned, threshold)
}

/// The run, after checking the result token.
async fn run_for_result_token<P: Ports>(
    state: &super::ApiState<P>,
    ids: &RunIds,
    token: &str,
) -> Result<Run, ApiError>
where
    P::Meta: ProjectStore + RunStore,
{
    project_for_result_token(state, &ids.project_id, token).await?;
    state.meta.get_run(&ids.project_id, &ids.run_id).await?.ok_or(ApiError::InvalidAccess)
}

/// GET `/projects/{project_id}/runs/{run_id}`: `{"run_id","threshold","name","notes"}`.
pub async fn describe<P: Ports>(
    State(state): State<Shared<P>>,
    ids: RunIds,
    AuthToken(token): AuthToken,
) -> ApiResult<Json<Value>>
where
    P::Meta: ProjectStore + RunStore,
{
    let run = run_for_result_token(&state, &ids, &token).await?;
    Ok(Json(run_description(&run)))
}

/// DELETE `/projects/{project_id}/runs/{run_id}`: 204, then 403 for the deleted run.
pub async fn delete<P: Ports>(
    State(state): State<Shared<P>>,
    ids: RunIds,
    AuthToken(token): AuthToken,
) -> ApiResult<StatusCode>
where
    P::Meta: ProjectStore + RunStore,
    P::Work: BlobStore,
{
    let RunIds { project_id, run_id } = &ids;
    project_for_result_token(&state, project_id, &token).await?;
    if !state.meta.delete_run(project_id, run_id).await? {
        return Err(ApiError::InvalidAccess);
    }
    // The run is gone for every reader; its objects are garbage from here on. A failure to
    // remove them is logged, not reported: the project's purge removes them at the latest.
    for prefix in [keys::run_work_prefix(project_id, run_id), keys::run_results_prefix(project_id, run_id)] {
        if let Err(e) = state.work.delete_prefix(&prefix).await {
            tracing::warn!(project_id = %project_id, run_id = %run_id, prefix, error = %e, "could not delete a deleted run's objects");
        }
    }
    if let Err(e) = state.work.delete(&keys::run_request(project_id, run_id)).await {
        tracing::warn!(project_id = %project_id, run_id = %run_id, error = %e, "could not delete a deleted run's request");
    }
    tracing::info!(project_id = %project_id, run_id = %run_id, "run deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The reference's stage names (`models/run.py`).
fn stage_description(stage: u8) -> &'static str {
    match stage {
        1 => "waiting for CLKs",
        2 => "compute similarity scores",
        3 => "compute output",
        _ => "there is no description for this stage",
    }
}

fn progress(absolute: u64, of: u64, description: &str) -> Value {
    let relative = if of == 0 { 0.0 } else { (absolute as f64 / of as f64).min(1.0) };
    json!({"absolute": absolute, "relative": relative, "description": description})
}

/// The RunStatus document: state, stages, current stage with progress, and the per-state extras.
pub(crate) fn run_status(project: &Project, parties: &[Party], run: &Run) -> Value {
    // The reference reports `error` whenever the project is in error, whatever the run's state.
    let project_error = project_error_message(parties);
    let state = if project_error.is_some() { RunState::Error } else { run.state };

    let mut current = Map::new();
    current.insert("number".into(), json!(run.stage));
    current.insert("description".into(), json!(stage_description(run.stage)));
    match run.stage {
        1 => {
            let contributed = parties_contributed(parties) as u64;
            current.insert("progress".into(), progress(contributed, u64::from(project.number_parties), "number of parties already contributed"));
        }
        2 => {
            current.insert(
                "progress".into(),
                progress(run.comparisons_done, run.total_comparisons, "number of already computed similarity scores"),
            );
        }
        _ => {}
    }

    let mut status = Map::new();
    status.insert("state".into(), json!(state.as_str()));
    status.insert("time_added".into(), json!(run.time_added));
    status.insert("stages".into(), json!(project.result_type.stages()));
    status.insert("current_stage".into(), Value::Object(current));
    match state {
        RunState::Created | RunState::Queued | RunState::Running => {
            status.insert("time_started".into(), json!(run.time_started));
        }
        RunState::Completed => {
            status.insert("time_started".into(), json!(run.time_started));
            status.insert("time_completed".into(), json!(run.time_completed));
            status.insert("total_number_comparisons".into(), json!(run.total_comparisons));
        }
        RunState::Error => {
            status.insert("message".into(), json!(run.error.clone().or(project_error)));
        }
    }
    Value::Object(status)
}

/// What the run will take (`engine::sizing`, the estimate `pprl plan` prints), once every
/// party's data is in (unblocked) or the run is planned (blocked); `None` before or after.
fn run_plan_estimate(settings: &crate::service::config::Settings, project: &Project, parties: &[Party], run: &Run) -> Option<Value> {
    if run.state.is_final() {
        return None;
    }
    let planned = (run.shards_total > 0).then_some((u64::from(run.shards_total), run.total_comparisons));
    let estimate = estimate_from_parties(settings, project, parties, planned, run.threshold)?;
    serde_json::to_value(estimate).ok()
}

/// GET `/projects/{project_id}/runs/{run_id}/status` (result token, or a receipt for
/// permutations projects).
pub async fn status<P: Ports>(
    State(state): State<Shared<P>>,
    ids: RunIds,
    AuthToken(token): AuthToken,
) -> ApiResult<Json<Value>>
where
    P::Meta: ProjectStore + RunStore,
{
    let (project, parties) = state.project(&ids.project_id).await?;
    let run = state.meta.get_run(&ids.project_id, &ids.run_id).await?.ok_or(ApiError::InvalidAccess)?;
    authorize(&project, &parties, &token, Allowed::ResultOrPermutationsReceipt)?;
    let mut status = run_status(&project, &parties, &run);
    if let (Some(estimate), Some(map)) = (run_plan_estimate(&state.settings, &project, &parties, &run), status.as_object_mut()) {
        map.insert("plan".into(), estimate);
    }
    Ok(Json(status))
}
