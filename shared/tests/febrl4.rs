//! Exactness against anonlink on the project's FEBRL4 sample (`data/febrl4`, made by the real
//! clkhash/anonlink from PyPI, see its README): `link` must produce anonlink's candidate pairs
//! (same pairs, same f64 scores, same order) and `greedy_solve` anonlink's groups, exactly.

use std::path::PathBuf;

use shared::engine::encoding::{PartyEncodings, SizeBounds, decode_json_upload};
use shared::engine::link::link;
use shared::engine::output::{format_score, groups_json, pair_groups, write_groups};
use shared::engine::shard::DEFAULT_TARGET_COMPARISONS;
use shared::engine::solver::{Components, TwoPartyGreedy, greedy_solve, greedy_solve_by_component};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/febrl4")
}

fn read(name: &str) -> String {
    let path = data_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parties() -> Vec<PartyEncodings> {
    ["clks_a.json", "clks_b.json"]
        .iter()
        .map(|name| {
            let party = decode_json_upload(read(name).as_bytes(), SizeBounds::default()).unwrap();
            assert_eq!((party.len(), party.encoding_size), (5000, 128), "{name}");
            party
        })
        .collect()
}

/// anonlink's greedy solution file is the bare list of groups; ours is wrapped in {"groups":..}.
fn expected_groups_json(threshold: &str) -> String {
    format!("{{\"groups\":{}}}", read(&format!("greedy_solution_t{threshold}.json")).trim_end())
}

#[test]
fn groups_equal_anonlink_greedy_solution() {
    let parties = parties();
    for threshold in ["0.7", "0.8", "0.9"] {
        let t: f64 = threshold.parse().unwrap();
        let linked = link(&parties, t, DEFAULT_TARGET_COMPARISONS).unwrap();
        assert_eq!(linked.total_comparisons, 5000 * 5000);
        let groups = greedy_solve(linked.candidates);
        assert_eq!(groups_json(&groups), expected_groups_json(threshold), "threshold {threshold}");
    }
}

/// The solvers solve uses at scale give anonlink's bytes too: the streamed bitset greedy
/// (two parties) and the per-component greedy.
#[test]
fn streaming_solvers_equal_anonlink_greedy_solution() {
    let parties = parties();
    for threshold in ["0.7", "0.8", "0.9"] {
        let linked = link(&parties, threshold.parse().unwrap(), DEFAULT_TARGET_COMPARISONS).unwrap();
        let mut bitsets = TwoPartyGreedy::new();
        for c in &linked.candidates {
            bitsets.visit(c).unwrap();
        }
        let mut json = Vec::new();
        write_groups(&mut json, pair_groups(&bitsets.into_pairs())).unwrap();
        assert_eq!(String::from_utf8(json).unwrap(), expected_groups_json(threshold), "bitsets, threshold {threshold}");
        let components = Components::of(&linked.candidates);
        let groups = greedy_solve_by_component(&linked.candidates, &components);
        assert_eq!(groups_json(&groups), expected_groups_json(threshold), "components, threshold {threshold}");
    }
}

#[test]
fn similarity_scores_equal_anonlink_candidates() {
    let parties = parties();
    for threshold in ["0.7", "0.8"] {
        let t: f64 = threshold.parse().unwrap();
        let linked = link(&parties, t, DEFAULT_TARGET_COMPARISONS).unwrap();
        let csv = read(&format!("candidates_t{threshold}.csv"));
        let expected: Vec<&str> = csv.lines().skip(1).collect();
        let got: Vec<String> = linked
            .candidates
            .iter()
            .map(|c| {
                assert_eq!((c.d0, c.d1), (0, 1));
                format!("{},{},{}", c.r0, c.r1, format_score(c.score))
            })
            .collect();
        assert_eq!(got.len(), expected.len(), "candidate count at threshold {threshold}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "candidate {i} at threshold {threshold}");
        }
    }
}

#[test]
fn small_shards_give_the_same_answer() {
    // Many shards (each a fraction of one block pair) must merge back to the one-shard result.
    let parties = parties();
    let one = link(&parties, 0.8, DEFAULT_TARGET_COMPARISONS).unwrap();
    let many = link(&parties, 0.8, 1_000_000).unwrap();
    assert_eq!(many.total_comparisons, one.total_comparisons);
    assert_eq!(many.candidates, one.candidates);
}

#[test]
fn reference_results_match() {
    // The precision/recall figures of reference_results.json follow from our groups + ground truth.
    let truth: std::collections::HashSet<(u32, u32)> = read("ground_truth.csv")
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    let reference: serde_json::Value = serde_json::from_str(&read("reference_results.json")).unwrap();
    let parties = parties();
    for threshold in ["0.7", "0.8", "0.9"] {
        let linked = link(&parties, threshold.parse().unwrap(), DEFAULT_TARGET_COMPARISONS).unwrap();
        let expected = &reference["thresholds"][threshold];
        assert_eq!(linked.candidates.len() as u64, expected["candidate_pairs"].as_u64().unwrap());
        let groups = greedy_solve(linked.candidates);
        let true_positives = groups.iter().filter(|g| truth.contains(&(g[0].1, g[1].1))).count();
        assert_eq!(groups.len() as u64, expected["matches"].as_u64().unwrap());
        assert_eq!(true_positives as u64, expected["true_positives"].as_u64().unwrap());
    }
}
