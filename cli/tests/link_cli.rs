//! `pprl link` end to end on the FEBRL4 sample: output shapes, exit codes, error messages.

use std::process::{Command, Output};

fn pprl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pprl"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("running pprl")
}

const A: &str = "data/febrl4/clks_a.json";
const B: &str = "data/febrl4/clks_b.json";

#[test]
fn groups_match_the_anonlink_solution() {
    let out = pprl(&["link", "--threshold", "0.8", "--output", "groups", A, B]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = std::fs::read_to_string("../data/febrl4/greedy_solution_t0.8.json").unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{{\"groups\":{}}}\n", expected.trim_end()));
    assert!(out.stderr.is_empty(), "no progress bar when stderr is not a terminal");
}

#[test]
fn similarity_scores_match_the_anonlink_candidates() {
    let out = pprl(&["link", "--threshold", "0.8", "--output", "similarity_scores", A, B]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scores = json["similarity_scores"].as_array().unwrap();
    let csv = std::fs::read_to_string("../data/febrl4/candidates_t0.8.csv").unwrap();
    let expected: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(scores.len(), expected.len());
    let first = &scores[0];
    assert_eq!(first[0][0], 0);
    assert_eq!(first[1][0], 1);
    assert_eq!(format!("{},{},{}", first[0][1], first[1][1], first[2]), expected[0]);
}

#[test]
fn permutations_and_mapping_shapes() {
    let out = pprl(&["link", "--threshold", "0.9", "--output", "permutations", "--seed", "7", A, B]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rows"], 5000);
    assert_eq!(json["permutations"].as_array().unwrap().len(), 2);
    let ones = json["mask"].as_array().unwrap().iter().filter(|m| **m == 1).count();
    assert_eq!(ones, 3602);

    let out = pprl(&["link", "--threshold", "0.9", "--output", "mapping", A, B]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mapping = json["mapping"].as_object().unwrap();
    assert_eq!(mapping.len(), 3602);
    assert!(mapping.iter().all(|(k, v)| k.parse::<u32>().is_ok() && v.as_str().unwrap().parse::<u32>().is_ok()));
}

#[test]
fn usage_errors_exit_2_other_errors_exit_1() {
    for args in [
        &["link", A, B][..],
        &["link", "--threshold", "2", A, B],
        &["link", "--threshold", "0.8", A],
        &["link", "--threshold", "0.8", "--output", "permutations", A, B, A],
        &["nope"],
        &[],
    ] {
        let out = pprl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = pprl(&["link", "--threshold", "0.8", A, "data/febrl4/missing.json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("party 1") && stderr.contains("missing.json"), "{stderr}");
    let out = pprl(&["link", "--threshold", "0.8", "--blocks", A, B]);
    assert_eq!(out.status.code(), Some(1));
}
