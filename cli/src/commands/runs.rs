//! `pprl create-project`, `pprl run`, `pprl status` and `pprl results`: the REST API calls a
//! linkage needs besides uploads, printing the service's JSON answers.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::{server_arg, wants_help};
use crate::args::{Args, UsageError};
use crate::client::ServiceClient;
use crate::progress::ProgressBar;

pub const CREATE_USAGE: &str = "\
Usage: pprl create-project [--server URL] [--type groups|permutations|similarity_scores]
                           [--parties N] [--schema FILE] [--name NAME] [--blocking]

Creates a linkage project and prints the service's answer: the project id, the result token
and one update token per party (hand each party its own).

Options:
  --type T        result type (default groups)
  --parties N     number of data providers (default 2; more than 2 needs groups)
  --schema FILE   the clkhash linkage schema (default {})
  --name NAME     a name for the project
  --blocking      the parties upload blocks with their encodings
";

pub fn create_project(argv: &[String]) -> anyhow::Result<()> {
    if wants_help(argv) {
        print!("{CREATE_USAGE}");
        return Ok(());
    }
    let mut args = Args::parse("create-project", argv, &["blocking"])?;
    let server = server_arg(&mut args);
    let result_type = args.value("type").unwrap_or_else(|| "groups".into());
    let parties: u32 = args.parsed("parties", "a number")?.unwrap_or(2);
    let schema: Value = match args.value("schema") {
        Some(path) => serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {path}"))?)
            .with_context(|| format!("{path} is not JSON"))?,
        None => json!({}),
    };
    let name = args.value("name").unwrap_or_default();
    let blocking = args.flag("blocking")?;
    args.finish()?;
    let client = ServiceClient::new(&server)?;
    let project = client.create_project_with(&result_type, parties, &schema, &name, blocking)?;
    println!("{}", serde_json::to_string_pretty(&project)?);
    Ok(())
}

pub const RUN_USAGE: &str = "\
Usage: pprl run --project ID --token RESULT_TOKEN --threshold T [--name NAME] [--server URL]

Starts a linkage run (it waits for every party's data if some is missing) and prints the
service's answer, including the run id.
";

pub fn run(argv: &[String]) -> anyhow::Result<()> {
    if wants_help(argv) {
        print!("{RUN_USAGE}");
        return Ok(());
    }
    let mut args = Args::parse("run", argv, &[])?;
    let server = server_arg(&mut args);
    let project = required(&mut args, "run", "project")?;
    let token = required(&mut args, "run", "token")?;
    let threshold: f64 = args
        .parsed("threshold", "a number in (0, 1]")?
        .ok_or_else(|| UsageError::new("run", "--threshold is required"))?;
    let name = args.value("name").unwrap_or_default();
    args.finish()?;
    let client = ServiceClient::new(&server)?;
    let run_id = client.post_run(&project, &token, threshold, &name)?;
    println!("{}", json!({"run_id": run_id, "threshold": threshold, "name": name}));
    Ok(())
}

pub const STATUS_USAGE: &str = "\
Usage: pprl status --project ID --run RUN --token TOKEN [--watch] [--interval SECONDS] [--server URL]

Prints the run's status. With --watch, shows its progress until it completes or fails, then
prints the final status (exit code 1 if the run failed).
";

pub fn status(argv: &[String]) -> anyhow::Result<()> {
    if wants_help(argv) {
        print!("{STATUS_USAGE}");
        return Ok(());
    }
    let mut args = Args::parse("status", argv, &["watch", "progress"])?;
    let server = server_arg(&mut args);
    let project = required(&mut args, "status", "project")?;
    let run = required(&mut args, "status", "run")?;
    let token = required(&mut args, "status", "token")?;
    let watch = args.flag("watch")?;
    let force_progress = args.flag("progress")?;
    let interval: f64 = args.parsed("interval", "a number of seconds")?.unwrap_or(1.0);
    args.finish()?;
    let client = ServiceClient::new(&server)?;
    let mut bar = ProgressBar::new(force_progress);
    let status = loop {
        let status = client.run_status(&project, &run, &token)?;
        let state = status["state"].as_str().unwrap_or_default();
        if !watch || state == "completed" || state == "error" {
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
        std::thread::sleep(Duration::from_secs_f64(interval.max(0.1)));
    };
    if watch {
        bar.finish();
    }
    println!("{}", serde_json::to_string_pretty(&status)?);
    if watch && status["state"] == "error" {
        anyhow::bail!("the run failed: {}", status["message"]);
    }
    Ok(())
}

pub const RESULTS_USAGE: &str = "\
Usage: pprl results --project ID --run RUN --token TOKEN [--output FILE] [--server URL]

Prints (or writes to FILE) the run's result: groups, similarity scores, or the permutation /
mask the token is entitled to.
";

pub fn results(argv: &[String]) -> anyhow::Result<()> {
    if wants_help(argv) {
        print!("{RESULTS_USAGE}");
        return Ok(());
    }
    let mut args = Args::parse("results", argv, &[])?;
    let server = server_arg(&mut args);
    let project = required(&mut args, "results", "project")?;
    let run = required(&mut args, "results", "run")?;
    let token = required(&mut args, "results", "token")?;
    let output = args.value("output");
    args.finish()?;
    let client = ServiceClient::new(&server)?;
    let result = client.result(&project, &run, &token)?;
    let text = serde_json::to_string(&result)?;
    match output {
        Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {path}"))?,
        None => println!("{text}"),
    }
    Ok(())
}

fn required(args: &mut Args, command: &str, name: &str) -> Result<String, UsageError> {
    args.value(name).ok_or_else(|| UsageError::new(command, format!("--{name} is required")))
}
