//! The `pprl` binary driven as a data provider's script drives anonlink-client: create-project
//! (tokens to a file), upload for each party (token from PPRL_TOKEN), create (the alias of run),
//! results --watch to a file, delete-project. Real process, real HTTP, real stack.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;

use crate::helpers::*;

/// The built client: `PPRL_BIN`, else `$CARGO_TARGET_DIR/debug/pprl`, else `target/debug/pprl`
/// (build it first: `cargo build -p pprl`; scripts/test.sh builds the workspace).
fn pprl_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("PPRL_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("target"));
    let target = if target.is_absolute() { target } else { repo_root().join(target) };
    target.join("debug/pprl")
}

/// Runs `pprl ARGS` against the stack (token, if any, through PPRL_TOKEN); fails with its stderr.
fn pprl(args: &[&str], token: Option<&str>) -> anyhow::Result<String> {
    let bin = pprl_binary();
    let mut command = Command::new(&bin);
    command.args(args).current_dir(repo_root()).env("API_URL", api_url()).env_remove("PPRL_TOKEN");
    if let Some(token) = token {
        command.env("PPRL_TOKEN", token);
    }
    let out = command.output().with_context(|| format!("starting {} (cargo build -p pprl)", bin.display()))?;
    ensure!(
        out.status.success(),
        "pprl {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{} is not JSON", path.display()))
}

#[tokio::test]
async fn cli_sequence_links_febrl4_and_deletes_the_project() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("pprl-cli-sequence-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();

    pprl(&["create-project", "--type", "groups", "--parties", "2", "--name", "cli sequence", "-o", &path("project.json")], None)?;
    let project = read_json(&dir.join("project.json"))?;
    let id = project["project_id"].as_str().context("project_id")?.to_string();
    let result_token = project["result_token"].as_str().context("result_token")?.to_string();
    let update_tokens: Vec<String> = project["update_tokens"]
        .as_array()
        .context("update_tokens")?
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(update_tokens.len() == 2, "{project}");

    for (party, side) in ["a", "b"].iter().enumerate() {
        let file = febrl4_file(&format!("clks_{side}.json"));
        let receipt = path(&format!("receipt_{side}.json"));
        pprl(&["upload", "--project", &id, "-o", &receipt, &file.to_string_lossy()], Some(&update_tokens[party]))?;
        ensure!(read_json(Path::new(&receipt))?["receipt_token"].is_string(), "party {party}: no receipt");
    }

    pprl(&["create", "--project", &id, "--threshold", "0.8", "-o", &path("run.json")], Some(&result_token))?;
    let run = read_json(&dir.join("run.json"))?["run_id"].as_str().context("run_id")?.to_string();

    pprl(&["results", "--project", &id, "--run", &run, "--watch", "--interval", "0.5", "-o", &path("result.json")], Some(&result_token))?;
    let result = read_json(&dir.join("result.json"))?;
    let groups = result["groups"].as_array().context("a groups result")?;
    ensure!(!groups.is_empty(), "no groups: {result}");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(febrl4_file("greedy_solution_t0.8.json"))?)?;
    assert_eq!(canonical_groups(&result["groups"]), canonical_groups(&expected));

    pprl(&["delete-project", "--project", &id], Some(&result_token))?;
    // A deleted project is unknown at once, and unknown answers 403 like forbidden.
    let api = Api::new();
    let gone = api.http.get(api.url(&format!("/projects/{id}"))).header("Authorization", &result_token).send().await?;
    assert_eq!(gone.status().as_u16(), 403, "the project after delete-project");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
