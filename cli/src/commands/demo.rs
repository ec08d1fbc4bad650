//! `pprl demo`: links the FEBRL4 sample through a running service, the way a user would with
//! the REST API, and reports accuracy against the ground truth and the time of each stage.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::client::ServiceClient;

/// Links the sample in `data` at `threshold` through the service `client` talks to (`server`,
/// for messages). Any failure, or a run that does not finish in 15 minutes, is an error.
pub fn run(client: ServiceClient, server: &str, data: PathBuf, threshold: f64) -> anyhow::Result<()> {
    let read = |name: &str| std::fs::read(data.join(name)).with_context(|| format!("reading {}", data.join(name).display()));
    let schema: Value = serde_json::from_slice(&read("schema.json")?).context("schema.json is not JSON")?;
    let truth = ground_truth(&String::from_utf8(read("ground_truth.csv")?)?)?;
    client.status().with_context(|| format!("is the service running at {server}? (localstack/up.sh starts it)"))?;

    let t0 = Instant::now();
    let project = client.create_project("groups", 2, &schema, "FEBRL4 demo")?;
    println!("project {} (2 parties, groups)", project.project_id);
    for (party, file) in ["clks_a.json", "clks_b.json"].iter().enumerate() {
        let started = Instant::now();
        client.upload_json(&project.project_id, &project.update_tokens[party], read(file)?)?;
        println!("  party {party}: uploaded {file} in {:.2} s", started.elapsed().as_secs_f64());
    }
    let upload_time = t0.elapsed();
    let run = client.post_run(&project.project_id, &project.result_token, threshold, "demo")?;
    println!("run {run} at threshold {threshold}");

    // Stage timings as the client sees them: stage 1 waits for the data (ingestion), stage 2
    // computes similarities, stage 3 solves and writes the output.
    let mut entered: Vec<(u64, String, Instant)> = Vec::new();
    let status = loop {
        let status = client.run_status(&project.project_id, &run, &project.result_token)?;
        let stage = status["current_stage"]["number"].as_u64().unwrap_or(0);
        if entered.last().map(|(s, _, _)| *s) != Some(stage) {
            let description = status["current_stage"]["description"].as_str().unwrap_or_default().to_owned();
            entered.push((stage, description, Instant::now()));
        }
        match status["state"].as_str() {
            Some("completed") => break status,
            Some("error") => bail!("the run failed: {}", status["message"]),
            _ => {}
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("the run did not finish within 15 minutes: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let finished = Instant::now();
    let result_started = Instant::now();
    let result = client.result(&project.project_id, &run, &project.result_token)?;
    let result_time = result_started.elapsed();

    let groups = result["groups"].as_array().context("no groups in the result")?;
    let mut matches = HashSet::new();
    for g in groups {
        let mut a = None;
        let mut b = None;
        for member in g.as_array().into_iter().flatten() {
            match (member[0].as_u64(), member[1].as_u64()) {
                (Some(0), Some(r)) => a = Some(r),
                (Some(1), Some(r)) => b = Some(r),
                _ => {}
            }
        }
        if let (Some(a), Some(b)) = (a, b) {
            matches.insert((a, b));
        }
    }
    let true_positives = matches.intersection(&truth).count() as f64;
    let precision = if matches.is_empty() { 0.0 } else { true_positives / matches.len() as f64 };
    let recall = true_positives / truth.len() as f64;

    println!();
    println!("matches            {}", matches.len());
    println!("true matches       {} of {}", true_positives, truth.len());
    println!("precision          {precision:.4}");
    println!("recall             {recall:.4}");
    println!("comparisons        {}", status["total_number_comparisons"]);
    println!();
    println!("time per stage (as seen by the client)");
    println!("  upload             {:>8.2} s", upload_time.as_secs_f64());
    for (i, (stage, description, at)) in entered.iter().enumerate() {
        let end = entered.get(i + 1).map(|(_, _, t)| *t).unwrap_or(finished);
        println!("  stage {stage} {description:<30} {:>8.2} s", (end - *at).as_secs_f64());
    }
    println!("  result download    {:>8.2} s", result_time.as_secs_f64());
    println!("  total              {:>8.2} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn ground_truth(csv: &str) -> anyhow::Result<HashSet<(u64, u64)>> {
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (a, b) = l.split_once(',').context("ground_truth.csv: expected 'a,b' lines")?;
            Ok((a.trim().parse()?, b.trim().parse()?))
        })
        .collect()
}
