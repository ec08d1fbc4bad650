//! Results through the service equal the engine's (and anonlink's) on the same inputs.

use std::time::Duration;

use serde_json::{json, Value};
use shared::engine::encoding::{BlockKey, PartyEncodings};
use shared::engine::{link, output, solver};

use crate::helpers::*;

const RUN_LIMIT: Duration = Duration::from_secs(240);

fn read(path: &str) -> String {
    std::fs::read_to_string(febrl4_file(path)).expect("sample file")
}

async fn febrl4_project(api: &Api, result_type: &str) -> anyhow::Result<(Project, Vec<String>)> {
    let project = api.create_project(result_type, 2, false).await?;
    let a = api.upload_json(&project, 0, &febrl4_clks("a")).await?;
    let b = api.upload_json(&project, 1, &febrl4_clks("b")).await?;
    Ok((project, vec![a, b]))
}

#[tokio::test]
async fn febrl4_groups_equal_anonlink_at_the_hard_threshold() -> anyhow::Result<()> {
    let api = Api::new();
    let (project, _) = febrl4_project(&api, "groups").await?;
    let run = api.post_run(&project, 0.7).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["total_number_comparisons"], 25_000_000);
    let (code, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(code, 200, "{result}");
    let expected: Value = serde_json::from_str(&read("greedy_solution_t0.7.json"))?;
    assert_eq!(canonical_groups(&result["groups"]), canonical_groups(&expected));
    // The runner reported every invocation as Lambda does, each within its function's memory.
    let reports = assert_every_invocation_reported(&["fan-out", "compare", "solve"], Duration::from_secs(120)).await?;
    assert!(reports >= 3, "{reports} REPORT lines");
    Ok(())
}

#[tokio::test]
async fn febrl4_similarity_scores_equal_anonlink_exactly() -> anyhow::Result<()> {
    let api = Api::new();
    let (project, _) = febrl4_project(&api, "similarity_scores").await?;
    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    let (code, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(code, 200);
    let scores = result["similarity_scores"].as_array().expect("similarity_scores");
    let csv = read("candidates_t0.8.csv");
    let expected: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(scores.len(), expected.len());
    for (got, want) in scores.iter().zip(&expected) {
        let got = format!("{},{},{}", got[0][1], got[1][1], got[2]);
        assert_eq!(&got, want);
    }
    Ok(())
}

#[tokio::test]
async fn permutations_agree_with_the_groups_and_respect_token_kinds() -> anyhow::Result<()> {
    let api = Api::new();
    let (project, receipts) = febrl4_project(&api, "permutations").await?;
    let run = api.post_run(&project, 0.9).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    let (code, mask) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(code, 200);
    let mask: Vec<u64> = mask["mask"].as_array().expect("mask").iter().map(|v| v.as_u64().unwrap()).collect();
    let (_, pa) = api.result(&project, &run, &receipts[0]).await?;
    let (_, pb) = api.result(&project, &run, &receipts[1]).await?;
    let perm = |v: &Value| -> Vec<u64> { v["permutation"].as_array().expect("permutation").iter().map(|x| x.as_u64().unwrap()).collect() };
    let (pa, pb) = (perm(&pa), perm(&pb));
    assert_eq!(mask.len(), 5000);
    let expected: Value = serde_json::from_str(&read("greedy_solution_t0.9.json"))?;
    let groups = canonical_groups(&expected);
    assert_eq!(mask.iter().sum::<u64>() as usize, groups.len());
    for g in &groups {
        let (a, b) = (g[0].1 as usize, g[1].1 as usize);
        assert_eq!(pa[a], pb[b], "matched rows share a slot");
        assert_eq!(mask[pa[a] as usize], 1);
    }
    let mut seen = pa.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5000, "a permutation is a bijection");
    Ok(())
}

/// Random parties with random blocks, through the service and through the engine directly.
async fn multiparty_case(parties: usize, blocking: bool, result_type: &str, seed: u64) -> anyhow::Result<()> {
    let api = Api::new();
    let data = synthetic_parties(seed, parties, 120, 16, 24);
    let mut rng = Rng(seed ^ 0xABCD);
    let blocks: Vec<Vec<Vec<String>>> = data
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .map(|(i, _)| {
                    let mut b = vec![format!("b{}", i % 7)];
                    if rng.next().is_multiple_of(3) {
                        b.push(format!("x{}", rng.next() % 4));
                    }
                    b
                })
                .collect()
        })
        .collect();
    let project = api.create_project(result_type, parties as u32, blocking).await?;
    for (i, p) in data.iter().enumerate() {
        let body = if blocking {
            let rows: Vec<Value> = p
                .iter()
                .zip(&blocks[i])
                .map(|(r, b)| {
                    let mut row = vec![json!(b64(r))];
                    row.extend(b.iter().map(|x| json!(x)));
                    Value::Array(row)
                })
                .collect();
            json!({ "clknblocks": rows })
        } else {
            json!({ "clks": p.iter().map(|r| b64(r)).collect::<Vec<_>>() })
        };
        api.upload_json(&project, i, &body).await?;
    }
    let threshold = 0.8;
    let run = api.post_run(&project, threshold).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    let (code, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(code, 200, "{result}");

    let encodings: Vec<PartyEncodings> = data
        .iter()
        .enumerate()
        .map(|(i, p)| PartyEncodings {
            encoding_size: 16,
            data: p.concat(),
            blocks: blocking.then(|| blocks[i].iter().map(|b| b.iter().map(|x| BlockKey::of(x)).collect()).collect()),
        })
        .collect();
    let engine = link::link(&encodings, threshold, 300_000_000)?;
    assert_eq!(status["total_number_comparisons"], engine.total_comparisons);
    match result_type {
        "groups" => {
            let groups = solver::greedy_solve(engine.candidates);
            let expected: Value = serde_json::from_str(&output::groups_json(&groups))?;
            assert_eq!(canonical_groups(&result["groups"]), canonical_groups(&expected["groups"]));
        }
        _ => {
            let mut out = Vec::new();
            output::write_similarity_scores(&mut out, engine.candidates.into_iter())?;
            let expected: Value = serde_json::from_slice(&out)?;
            assert_eq!(result["similarity_scores"], expected["similarity_scores"]);
        }
    }
    Ok(())
}

#[tokio::test]
async fn three_parties_with_blocking_groups_equal_the_engine() -> anyhow::Result<()> {
    multiparty_case(3, true, "groups", 3).await
}

#[tokio::test]
async fn five_parties_without_blocking_groups_equal_the_engine() -> anyhow::Result<()> {
    multiparty_case(5, false, "groups", 5).await
}

#[tokio::test]
async fn two_parties_with_blocking_similarity_scores_equal_the_engine() -> anyhow::Result<()> {
    multiparty_case(2, true, "similarity_scores", 2).await
}

#[tokio::test]
async fn four_parties_with_blocking_groups_equal_the_engine() -> anyhow::Result<()> {
    multiparty_case(4, true, "groups", 4).await
}

#[tokio::test]
async fn more_than_two_parties_need_the_groups_result_type() -> anyhow::Result<()> {
    let api = Api::new();
    for result_type in ["similarity_scores", "permutations"] {
        let err = api.create_project(result_type, 3, false).await.err().expect("rejected");
        assert!(err.to_string().contains("400"), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn binary_uploads_link_like_json_uploads() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    use base64::Engine;
    for (party, side) in ["a", "b"].iter().enumerate() {
        let clks = febrl4_clks(side);
        let mut raw = Vec::new();
        for c in clks["clks"].as_array().unwrap().iter().take(1000) {
            raw.extend(base64::engine::general_purpose::STANDARD.decode(c.as_str().unwrap())?);
        }
        api.upload_binary(&project, party, raw, 1000, 128).await?;
    }
    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["total_number_comparisons"], 1_000_000);
    let (_, result) = api.result(&project, &run, &project.result_token).await?;
    let expected: Value = serde_json::from_str(&read("greedy_solution_t0.8.json"))?;
    let expected: Vec<_> = canonical_groups(&expected).into_iter().filter(|g| g.iter().all(|m| m.1 < 1000)).collect();
    assert_eq!(canonical_groups(&result["groups"]), expected);
    Ok(())
}
