//! Extensions beyond the reference (issue 19), through the REST API on the local stack:
//! multi-party similarity scores equal to anonlink 0.15.3's `find_candidate_pairs` (reference
//! files made with anonlink itself, `tests/data/multiparty/make_multiparty.py`), groups carrying
//! their edges' scores, the plan in a run's status, and each party's upload status.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::helpers::*;

const RUN_LIMIT: Duration = Duration::from_secs(240);

/// A reference file of `tests/data/multiparty/`.
fn reference(name: &str) -> Value {
    let path = repo_root().join("tests/data/multiparty").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

/// The FEBRL4 CLKs (base64) that make up each party of a reference file.
fn party_clks(reference: &Value) -> Vec<Vec<String>> {
    let sides = [("a", febrl4_clks("a")), ("b", febrl4_clks("b"))];
    let clk = |side: &str, row: usize| -> String {
        let clks = &sides.iter().find(|(s, _)| *s == side).expect("side a or b").1;
        clks["clks"][row].as_str().expect("base64 CLK").to_string()
    };
    reference["parties"]
        .as_array()
        .expect("parties")
        .iter()
        .map(|party| {
            party.as_array().expect("party rows").iter().map(|r| clk(r[0].as_str().unwrap(), r[1].as_u64().unwrap() as usize)).collect()
        })
        .collect()
}

async fn create(api: &Api, body: Value) -> anyhow::Result<Project> {
    let v = api.expect("create project", 201, api.http.post(api.url("/projects")).json(&body)).await?;
    Ok(Project {
        id: v["project_id"].as_str().context("project_id")?.into(),
        result_token: v["result_token"].as_str().context("result_token")?.into(),
        update_tokens: v["update_tokens"].as_array().context("update_tokens")?.iter().map(|t| t.as_str().unwrap_or_default().into()).collect(),
    })
}

/// Uploads each party of `reference` (with its blocks when the file has them).
async fn upload_reference_parties(api: &Api, project: &Project, reference: &Value) -> anyhow::Result<()> {
    for (i, clks) in party_clks(reference).into_iter().enumerate() {
        let body = match reference.get("blocks") {
            Some(blocks) => {
                let rows: Vec<Value> = clks
                    .iter()
                    .zip(blocks[i].as_array().expect("blocks of the party"))
                    .map(|(clk, b)| {
                        let mut row = vec![json!(clk)];
                        row.extend(b.as_array().expect("block ids").iter().cloned());
                        Value::Array(row)
                    })
                    .collect();
                json!({ "clknblocks": rows })
            }
            None => json!({ "clks": clks }),
        };
        api.upload_json(project, i, &body).await?;
    }
    Ok(())
}

async fn post_run_with(api: &Api, project: &Project, body: Value) -> anyhow::Result<String> {
    let request = api.http.post(api.url(&format!("/projects/{}/runs", project.id))).header("Authorization", &project.result_token).json(&body);
    let v = api.expect("post run", 201, request).await?;
    Ok(v["run_id"].as_str().context("run_id")?.into())
}

/// The result's body as sent, byte for byte.
async fn result_text(api: &Api, project: &Project, run: &str) -> anyhow::Result<String> {
    let r = api
        .http
        .get(api.url(&format!("/projects/{}/runs/{run}/result", project.id)))
        .header("Authorization", &project.result_token)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "result: {}", r.status());
    Ok(r.text().await?)
}

/// Runs a reference file's parties as a `multiparty` similarity_scores project and compares the
/// answer with anonlink's byte for byte (same pairs, same order, same floats in Python's repr).
async fn multiparty_scores_equal_anonlink(name: &str) -> anyhow::Result<()> {
    let api = Api::new();
    let reference = reference(name);
    let parties = reference["parties"].as_array().expect("parties").len();
    let blocking = reference["blocking"].as_bool().unwrap_or(false);
    let project = create(
        &api,
        json!({"schema": {}, "result_type": "similarity_scores", "multiparty": true, "number_parties": parties, "uses_blocking": blocking}),
    )
    .await?;
    upload_reference_parties(&api, &project, &reference).await?;
    let threshold = reference["threshold"].as_f64().expect("threshold");
    let run = api.post_run(&project, threshold).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    if !blocking {
        // Every pair of records of different parties is compared once.
        let sizes: Vec<u64> = reference["parties"].as_array().unwrap().iter().map(|p| p.as_array().unwrap().len() as u64).collect();
        let pairs: u64 = (0..sizes.len()).flat_map(|i| (i + 1..sizes.len()).map(move |j| (i, j))).map(|(i, j)| sizes[i] * sizes[j]).sum();
        assert_eq!(status["total_number_comparisons"], pairs);
    }
    let got = result_text(&api, &project, &run).await?;
    // Values first (a clearer failure), then the bytes against the file's own text (written by
    // Python's json, floats in repr).
    let got_value: Value = serde_json::from_str(&got)?;
    assert_eq!(got_value["similarity_scores"], reference["similarity_scores"], "{name}");
    let file = std::fs::read_to_string(repo_root().join("tests/data/multiparty").join(format!("{name}.json")))?;
    let start = file.find("\"similarity_scores\":").context("scores in the file")?;
    let file_scores = file[start..].trim_end().trim_end_matches('}');
    assert_eq!(got, format!("{{{file_scores}}}"), "{name}: the bytes differ from anonlink's");
    println!("{name}: {} candidate pairs equal anonlink 0.15.3's", reference["similarity_scores"].as_array().unwrap().len());
    Ok(())
}

#[tokio::test]
async fn three_party_similarity_scores_equal_anonlink() -> anyhow::Result<()> {
    multiparty_scores_equal_anonlink("three_parties").await
}

#[tokio::test]
async fn five_party_similarity_scores_equal_anonlink() -> anyhow::Result<()> {
    multiparty_scores_equal_anonlink("five_parties").await
}

#[tokio::test]
async fn five_party_similarity_scores_with_blocking_equal_anonlink() -> anyhow::Result<()> {
    multiparty_scores_equal_anonlink("five_parties_blocked").await
}

#[tokio::test]
async fn multi_party_similarity_scores_need_the_opt_in() -> anyhow::Result<()> {
    let api = Api::new();
    for parties in [3, 5] {
        let body = json!({"schema": {}, "result_type": "similarity_scores", "number_parties": parties});
        let r = api.http.post(api.url("/projects")).json(&body).send().await?;
        assert_eq!(r.status(), 400);
        let detail: Value = r.json().await?;
        assert_eq!(detail["detail"], "Multi-party linkage requires result type 'groups'.");
    }
    let body = json!({"schema": {}, "result_type": "permutations", "number_parties": 3, "multiparty": true});
    assert_eq!(api.http.post(api.url("/projects")).json(&body).send().await?.status(), 400, "permutations stay two-party");
    Ok(())
}

/// The edges of `groups` among the candidates (in their order): what `group_scores` must hold.
fn expected_edges(groups: &Value, candidates: &[Value]) -> Vec<Vec<Value>> {
    let members: Vec<Vec<(u64, u64)>> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_array().unwrap().iter().map(|m| (m[0].as_u64().unwrap(), m[1].as_u64().unwrap())).collect())
        .collect();
    let record = |v: &Value| (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
    members
        .iter()
        .map(|g| candidates.iter().filter(|c| g.contains(&record(&c[0])) && g.contains(&record(&c[1]))).cloned().collect())
        .collect()
}

#[tokio::test]
async fn groups_carry_their_edge_scores_only_when_asked() -> anyhow::Result<()> {
    let api = Api::new();
    // Two parties: FEBRL4 at 0.8, where every candidate becomes a match.
    let project = api.create_project("groups", 2, false).await?;
    api.upload_json(&project, 0, &febrl4_clks("a")).await?;
    api.upload_json(&project, 1, &febrl4_clks("b")).await?;
    let plain = api.post_run(&project, 0.8).await?;
    let scored = post_run_with(&api, &project, json!({"threshold": 0.8, "group_scores": true})).await?;
    for run in [&plain, &scored] {
        let status = api.wait_for_run(&project, run, RUN_LIMIT).await?;
        assert_eq!(status["state"], "completed", "{status}");
    }
    let plain_text = result_text(&api, &project, &plain).await?;
    let scored_text = result_text(&api, &project, &scored).await?;
    let plain: Value = serde_json::from_str(&plain_text)?;
    let scored: Value = serde_json::from_str(&scored_text)?;
    assert_eq!(plain.as_object().map(|o| o.len()), Some(1), "the default answer is the reference's groups alone");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(febrl4_file("greedy_solution_t0.8.json"))?)?;
    assert_eq!(canonical_groups(&plain["groups"]), canonical_groups(&expected));
    assert_eq!(scored["groups"], plain["groups"], "the same groups, in the same order");
    assert!(scored_text.starts_with(&plain_text[..plain_text.len() - 1]), "the groups are written as in the default answer");
    let csv = std::fs::read_to_string(febrl4_file("candidates_t0.8.csv"))?;
    let score_of: std::collections::HashMap<(u64, u64), String> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].parse().unwrap(), f[1].parse().unwrap()), f[2].to_string())
        })
        .collect();
    let edges = scored["group_scores"].as_array().expect("group_scores");
    assert_eq!(edges.len(), plain["groups"].as_array().unwrap().len());
    for (group, edges) in plain["groups"].as_array().unwrap().iter().zip(edges) {
        let (a, b) = (group[0][1].as_u64().unwrap(), group[1][1].as_u64().unwrap());
        assert_eq!(edges, &json!([[[0, a], [1, b], serde_json::from_str::<Value>(&score_of[&(a, b)])?]]));
    }

    // Three parties: the edges inside each group are the reference's candidates among its members.
    let reference = reference("three_parties");
    let project = create(&api, json!({"schema": {}, "result_type": "groups", "number_parties": 3})).await?;
    upload_reference_parties(&api, &project, &reference).await?;
    let run = post_run_with(&api, &project, json!({"threshold": reference["threshold"], "group_scores": true})).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    let scored: Value = serde_json::from_str(&result_text(&api, &project, &run).await?)?;
    let candidates = reference["similarity_scores"].as_array().unwrap();
    let want = expected_edges(&scored["groups"], candidates);
    assert!(want.iter().any(|e| e.len() > 1), "some group has several edges");
    assert_eq!(scored["group_scores"], json!(want));
    Ok(())
}

#[tokio::test]
async fn run_status_carries_the_plan_before_and_while_it_runs() -> anyhow::Result<()> {
    let api = Api::new();
    let reference = reference("five_parties");
    let project = create(&api, json!({"schema": {}, "result_type": "similarity_scores", "multiparty": true, "number_parties": 5})).await?;
    upload_reference_parties(&api, &project, &reference).await?;
    // Wait for every upload to be ingested, then post: the plan is there from the start.
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        let v = api.expect("parties", 200, api.http.get(api.url(&format!("/projects/{}/parties", project.id))).header("Authorization", &project.result_token)).await?;
        if v["parties"].as_array().unwrap().iter().all(|p| p["state"] == "done") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "uploads not ingested: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let run = api.post_run(&project, 0.7).await?;
    let mut seen = Vec::new();
    loop {
        let status = api.run_status(&project, &run).await?;
        let state = status["state"].as_str().unwrap_or_default().to_string();
        if state == "completed" || state == "error" {
            assert_eq!(state, "completed", "{status}");
            assert!(status.get("plan").is_none(), "a final run has no plan: {status}");
            break;
        }
        let plan = &status["plan"];
        assert_eq!(plan["comparisons"], 10 * 200 * 200, "{status}");
        assert!(plan["shards"].as_u64().unwrap() >= 1 && plan["estimated_wall_seconds"].is_number() && plan["estimated_cost_usd"].is_number());
        seen.push(state);
        anyhow::ensure!(Instant::now() < deadline + RUN_LIMIT, "run not final");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!seen.is_empty(), "the plan was seen before the run completed");
    seen.dedup();
    println!("plan seen in states {seen:?}");
    Ok(())
}

#[tokio::test]
async fn party_upload_status_shows_each_party_only_its_own_failure() -> anyhow::Result<()> {
    let api = Api::new();
    let project = create(&api, json!({"schema": {}, "result_type": "groups", "number_parties": 3})).await?;
    let parties = |token: &str| api.http.get(api.url(&format!("/projects/{}/parties", project.id))).header("Authorization", token.to_string());
    let v = api.expect("parties", 200, parties(&project.result_token)).await?;
    assert_eq!(v["parties"], json!([{"party": 0, "state": "pending"}, {"party": 1, "state": "pending"}, {"party": 2, "state": "pending"}]));

    let clks = febrl4_clks("a");
    let few: Vec<Value> = clks["clks"].as_array().unwrap()[..10].to_vec();
    api.upload_json(&project, 0, &json!({ "clks": few })).await?;
    // Not base64: accepted with 201, refused by ingestion.
    api.upload_json(&project, 1, &json!({ "clks": ["not base64!"] })).await?;

    let deadline = Instant::now() + RUN_LIMIT;
    let all = loop {
        let v = api.expect("parties", 200, parties(&project.result_token)).await?;
        let states: Vec<&str> = v["parties"].as_array().unwrap().iter().map(|p| p["state"].as_str().unwrap()).collect();
        if states[..2] == ["done", "failed"] {
            break v;
        }
        anyhow::ensure!(Instant::now() < deadline, "uploads not processed: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(all["parties"][0], json!({"party": 0, "state": "done", "records": 10, "encoding_size": 128}));
    let reason = all["parties"][1]["reason"].as_str().context("a failed upload has a reason")?.to_string();
    assert!(!reason.is_empty());
    assert_eq!(all["parties"][2], json!({"party": 2, "state": "pending"}));
    println!("party 1's reason: {reason}");

    for (party, token) in project.update_tokens.iter().enumerate() {
        let r = parties(token).send().await?;
        assert_eq!(r.status(), 200);
        let text = r.text().await?;
        let v: Value = serde_json::from_str(&text)?;
        assert_eq!(v["parties"], json!([all["parties"][party]]), "party {party} sees itself only");
        assert_eq!(text.contains(&reason), party == 1, "party {party}: {text}");
    }
    let other = api.create_project("groups", 2, false).await?;
    for token in [&other.result_token, &other.update_tokens[0]] {
        assert_eq!(parties(token).send().await?.status(), 403);
    }
    Ok(())
}
