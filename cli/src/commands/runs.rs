//! `pprl create-project`, `run` (`create`), `status`, `results`, `delete` and `delete-project`:
//! the REST API calls a linkage needs besides uploads, printing (or writing with `-o`) the
//! service's JSON answers.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::write_output;
use crate::client::{ProjectExtensions, ServiceClient};
use crate::progress::ProgressBar;

pub struct CreateProjectOptions {
    pub result_type: String,
    pub parties: u32,
    pub schema: Value,
    pub name: String,
    pub blocking: bool,
    pub multiparty: bool,
    pub output: Option<PathBuf>,
}

/// Creates a project and prints the service's answer: the project id, the result token and one
/// update token per party (hand each party its own).
pub fn create_project(client: &ServiceClient, o: CreateProjectOptions) -> anyhow::Result<()> {
    let extensions = ProjectExtensions { uses_blocking: o.blocking, multiparty: o.multiparty };
    let project = client.create_project_with(&o.result_type, o.parties, &o.schema, &o.name, extensions)?;
    write_output(o.output.as_deref(), &serde_json::to_string_pretty(&project)?)
}

pub struct RunOptions {
    pub project: String,
    pub token: String,
    pub threshold: f64,
    pub name: String,
    pub group_scores: bool,
    pub output: Option<PathBuf>,
}

/// Starts a linkage run (it waits for every party's data if some is missing) and prints the
/// service's answer, including the run id.
pub fn run(client: &ServiceClient, o: RunOptions) -> anyhow::Result<()> {
    let run_id = client.post_run_with(&o.project, &o.token, o.threshold, &o.name, o.group_scores)?;
    write_output(o.output.as_deref(), &json!({"run_id": run_id, "threshold": o.threshold, "name": o.name}).to_string())
}

/// One run and a token entitled to it.
pub struct RunRef {
    pub project: String,
    pub run: String,
    pub token: String,
}

/// How `--watch` follows a run.
pub struct Watch {
    pub interval: Duration,
    pub progress: bool,
}

pub struct StatusOptions {
    /// `None`: the service's own status (anonlink-client's `status`).
    pub run: Option<RunRef>,
    pub watch: Option<Watch>,
    pub output: Option<PathBuf>,
}

/// Prints the service's status, or a run's. Watching a run shows its progress until it completes
/// or fails, then prints the final status (exit code 1 if the run failed).
pub fn status(client: &ServiceClient, o: StatusOptions) -> anyhow::Result<()> {
    let Some(run) = o.run else {
        return write_output(o.output.as_deref(), &client.status()?.to_string());
    };
    let status = match &o.watch {
        Some(watch) => watch_until_done(client, &run, watch)?,
        None => client.run_status(&run.project, &run.run, &run.token)?,
    };
    write_output(o.output.as_deref(), &serde_json::to_string_pretty(&status)?)?;
    if o.watch.is_some() && status["state"] == "error" {
        anyhow::bail!("the run failed: {}", status["message"]);
    }
    Ok(())
}

/// Polls the run's status until it is `completed` or `error`, drawing its stage progress.
fn watch_until_done(client: &ServiceClient, run: &RunRef, watch: &Watch) -> anyhow::Result<Value> {
    let mut bar = ProgressBar::new(watch.progress);
    let status = loop {
        let status = client.run_status(&run.project, &run.run, &run.token)?;
        let state = status["state"].as_str().unwrap_or_default();
        if state == "completed" || state == "error" {
            break status;
        }
        let stage = &status["current_stage"];
        let relative = stage["progress"]["relative"].as_f64().unwrap_or(0.0);
        let label = format!(
            "{state}: stage {}/{} {}",
            stage["number"].as_u64().unwrap_or(0),
            status["stages"].as_u64().unwrap_or(0),
            stage["description"].as_str().unwrap_or_default()
        );
        bar.update((relative * 1000.0) as u64, 1000, &label);
        std::thread::sleep(watch.interval);
    };
    bar.finish();
    Ok(status)
}

pub struct ResultsOptions {
    pub run: RunRef,
    /// Wait for the run to finish first (anonlink-client's `results --watch`).
    pub watch: Option<Watch>,
    pub output: Option<PathBuf>,
}

/// Prints (or writes) the run's result: groups, similarity scores, or the permutation / mask the
/// token is entitled to. With `--watch`, waits for the run first; a failed run is an error.
pub fn results(client: &ServiceClient, o: ResultsOptions) -> anyhow::Result<()> {
    let run = &o.run;
    if let Some(watch) = &o.watch {
        let status = watch_until_done(client, run, watch)?;
        if status["state"] == "error" {
            anyhow::bail!("the run failed: {}", status["message"]);
        }
    }
    let result = client.result(&run.project, &run.run, &run.token)?;
    write_output(o.output.as_deref(), &serde_json::to_string(&result)?)
}

/// Deletes a run (its result with it).
pub fn delete_run(client: &ServiceClient, project: &str, run: &str, token: &str) -> anyhow::Result<()> {
    client.delete_run(project, run, token)?;
    eprintln!("pprl: run {run} deleted");
    Ok(())
}

/// Deletes a project with everything in it.
pub fn delete_project(client: &ServiceClient, project: &str, token: &str) -> anyhow::Result<()> {
    client.delete_project(project, token)?;
    eprintln!("pprl: project {project} deleted");
    Ok(())
}
