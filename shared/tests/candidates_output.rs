//! Candidate files and their merge, Python float repr, and the permutation construction.

use proptest::prelude::*;
use shared::engine::candidates::{
    Candidate, CandidateReader, CandidateWriter, FormatError, decode, encode, merge, order, sort_dedup,
};
use shared::engine::output::{
    format_score, mask_json, permutation_json, permutations, write_similarity_scores,
};
use shared::engine::solver::Group;

fn c(score: f64, d0: u32, r0: u32, d1: u32, r1: u32) -> Candidate {
    Candidate { score, d0, r0, d1, r1 }
}

// ---------------------------------------------------------------------------------------------
// format_score: Python's repr(float). Expected strings printed by CPython 3.11.

#[test]
fn format_score_is_python_repr() {
    let cases: &[(f64, &str)] = &[
        (1.0, "1.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
        (f64::NAN, "nan"),
        (f64::from_bits(0x3fb999999999999a), "0.1"),
        (f64::from_bits(0x3fd5555555555555), "0.3333333333333333"),
        (f64::from_bits(0x3fe5555555555555), "0.6666666666666666"),
        (f64::from_bits(0x3f1a36e2eb1c432d), "0.0001"),
        (f64::from_bits(0x3f23a92a30553261), "0.00015"),
        (f64::from_bits(0x3ee4f8b588e368f1), "1e-05"),
        (f64::from_bits(0x3ee9e3abe16fc70d), "1.2345e-05"),
        (f64::from_bits(0x0000000000000001), "5e-324"),
        (f64::from_bits(0x4341c37937e08000), "1e+16"),
        (f64::from_bits(0x4341c37937e07fff), "9999999999999998.0"),
        (f64::from_bits(0x7fefffffffffffff), "1.7976931348623157e+308"),
        (f64::from_bits(0x419d6f3454000000), "123456789.0"),
        (f64::from_bits(0x3fd3333333333334), "0.30000000000000004"),
        (f64::from_bits(0x4480f0cf064dd592), "1e+22"),
        (f64::from_bits(0x4004000000000000), "2.5"),
        (f64::from_bits(0x4059000000000000), "100.0"),
        (f64::from_bits(0xbff8000000000000), "-1.5"),
        (f64::from_bits(0xbe7ad7f29abcaf48), "-1e-07"),
        (f64::from_bits(0x430c6bf526340000), "1000000000000000.0"),
        (f64::from_bits(0x7e41eb2d66005835), "1.5e+300"),
        (f64::from_bits(0x0010000000000000), "2.2250738585072014e-308"),
        (f64::from_bits(0x3fe6666666666666), "0.7"),
        (f64::from_bits(0x3fe999999999999a), "0.8"),
        (f64::from_bits(0x3feccccccccccccd), "0.9"),
        (f64::from_bits(0x3feb6db6db6db6db), "0.8571428571428571"),
        (f64::from_bits(0x3f201f31f46ed246), "0.000123"),
        (f64::from_bits(0x43e56a95319d63e1), "1.2345678901234567e+19"),
        (f64::from_bits(0x7953a6f252e6b438), "2.7216092808335446e+276"),
        (f64::from_bits(0x32899387269e0d37), "3.035766360112293e-65"),
        (f64::from_bits(0x062e3fe8a6a3a450), "6.665830898196862e-279"),
        (f64::from_bits(0x691f8412128b2f33), "2.3558459513947972e+198"),
        (f64::from_bits(0x0c0c7408892f902b), "1.2418970069620836e-250"),
        (f64::from_bits(0x4a98cc2e5d9dc9f8), "2.319469273766672e+51"),
        (f64::from_bits(0x74712eca0ed90475), "7.873531487934826e+252"),
        (f64::from_bits(0x1b7b3ae681e74ef5), "2.6878898238430084e-176"),
        (f64::from_bits(0x0b0051ad099950d8), "1.086847153644306e-255"),
        (f64::from_bits(0x3586aa4d6f03675a), "7.572358053192185e-51"),
        (f64::from_bits(0x1ece0b9211e20b8f), "2.6713290337373985e-160"),
        (f64::from_bits(0x4688b7671738f7d9), "6.266356115726005e+31"),
        (f64::from_bits(0x401c7582192e29f8), "7.114754098360656"),
        (f64::from_bits(0x40123c78f1e3c78f), "4.559055118110236"),
        (f64::from_bits(0x3fd87134be64577a), "0.38190954773869346"),
        (f64::from_bits(0x3fbb4a1231617641), "0.1065989847715736"),
        (f64::from_bits(0x3ff793ae2160ab4c), "1.4735547355473555"),
        (f64::from_bits(0x3fcc418dd8710637), "0.22075055187637968"),
        (f64::from_bits(0x3fb5171c0baabdd0), "0.08238387379491674"),
        (f64::from_bits(0x3fdd4e700dca8f16), "0.45791245791245794"),
        (0.8003369839932604, "0.8003369839932604"),
    ];
    for (x, want) in cases {
        assert_eq!(format_score(*x), *want, "bits {:#018x}", x.to_bits());
    }
}

proptest! {
    #[test]
    fn format_score_round_trips(bits in any::<u64>()) {
        let x = f64::from_bits(bits);
        prop_assume!(x.is_finite());
        let s = format_score(x);
        prop_assert_eq!(s.parse::<f64>().unwrap().to_bits(), bits, "{}", s);
    }
}

// ---------------------------------------------------------------------------------------------
// Candidate file format.

#[test]
fn similarity_scores_stream_shape() {
    let mut out = Vec::new();
    let cands = [c(1.0, 0, 3, 1, 4), c(0.75, 0, 1, 2, 0)];
    write_similarity_scores(&mut out, cands.into_iter()).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"similarity_scores":[[[0,3],[1,4],1.0],[[0,1],[2,0],0.75]]}"#
    );
    let mut empty = Vec::new();
    write_similarity_scores(&mut empty, std::iter::empty()).unwrap();
    assert_eq!(empty, br#"{"similarity_scores":[]}"#);
}

#[test]
fn writer_equals_encode() {
    let cands: Vec<Candidate> = (0..10_000).map(|i| c(1.0 / (1 + i) as f64, 0, i, 1, i * 7)).collect();
    let mut w = CandidateWriter::new(Vec::new()).unwrap();
    for x in &cands {
        w.write(x).unwrap();
    }
    assert_eq!(w.count(), 10_000);
    assert_eq!(w.finish().unwrap(), encode(&cands));
}

#[test]
fn corrupt_files_are_errors_not_panics() {
    let good = encode(&[c(0.9, 0, 1, 1, 2), c(0.8, 0, 3, 1, 4)]);
    assert!(matches!(decode(&[]), Err(FormatError::TruncatedHeader { len: 0 })));
    assert!(matches!(decode(&good[..3]), Err(FormatError::TruncatedHeader { len: 3 })));
    assert!(matches!(decode(&[2, 8, 4, 4]), Err(FormatError::UnsupportedVersion(2))));
    assert!(matches!(decode(&[1, 3, 4, 4]), Err(FormatError::UnsupportedLayout { sim: 3, .. })));
    assert!(matches!(decode(&[1, 8, 4, 5]), Err(FormatError::UnsupportedLayout { record: 5, .. })));
    assert!(matches!(
        decode(&good[..good.len() - 1]),
        Err(FormatError::TruncatedEntry { entry: 1, got: 23, expected: 24 })
    ));
    // The header alone is a valid, empty file.
    assert_eq!(decode(&good[..4]).unwrap(), vec![]);
    // A streaming reader yields the good entries, then the error, then stops.
    let items: Vec<_> = CandidateReader::new(&good[..good.len() - 5]).unwrap().collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert!(matches!(items[1], Err(FormatError::TruncatedEntry { .. })));
}

#[test]
fn merge_reports_corrupt_and_unsorted_inputs() {
    let good = encode(&[c(0.9, 0, 1, 1, 2), c(0.8, 0, 3, 1, 4)]);
    let truncated = &good[..good.len() - 2];
    let inputs = vec![CandidateReader::new(&good[..]).unwrap(), CandidateReader::new(truncated).unwrap()];
    let out: Vec<_> = merge(inputs).collect();
    assert!(out.iter().any(|r| matches!(r, Err(FormatError::TruncatedEntry { .. }))));
    assert!(matches!(out.last(), Some(Err(_))), "the error ends the merge");

    let unsorted = encode(&[c(0.1, 0, 0, 1, 0), c(0.9, 0, 0, 1, 1)]);
    let out: Vec<_> = merge(vec![CandidateReader::new(&unsorted[..]).unwrap()]).collect();
    assert!(matches!(out.last(), Some(Err(FormatError::UnsortedInput { input: 0, position: 1 }))));
}

/// Candidates with heavy ties: few distinct scores and indices.
fn arb_candidate() -> impl Strategy<Value = Candidate> {
    (0u32..4, 0u32..6, 1u32..3, 0u32..6, 0usize..4).prop_map(|(d0, r0, gap, r1, s)| {
        let score = [1.0, 0.75, 0.5, 2.0 / 3.0][s];
        c(score, d0, r0, d0 + gap, r1)
    })
}

proptest! {
    #[test]
    fn file_round_trip(cands in prop::collection::vec(arb_candidate(), 0..50)) {
        prop_assert_eq!(decode(&encode(&cands)).unwrap(), cands);
    }

    #[test]
    fn k_way_merge_is_sorted_dedup_concat(
        files in prop::collection::vec(prop::collection::vec(arb_candidate(), 0..40), 0..8)
    ) {
        let sorted_files: Vec<Vec<Candidate>> = files.into_iter().map(|mut f| { f.sort_by(order); f }).collect();
        let encoded: Vec<Vec<u8>> = sorted_files.iter().map(|f| encode(f)).collect();
        let readers: Vec<_> = encoded.iter().map(|b| CandidateReader::new(&b[..]).unwrap()).collect();
        let merged: Vec<Candidate> = merge(readers).collect::<Result<_, _>>().unwrap();

        let mut expected: Vec<Candidate> = sorted_files.concat();
        sort_dedup(&mut expected);
        prop_assert_eq!(&merged, &expected);
        // Strictly increasing in the anonlink order: sorted and no duplicates.
        prop_assert!(merged.windows(2).all(|w| order(&w[0], &w[1]).is_lt()));
    }
}

// ---------------------------------------------------------------------------------------------
// Permutations.

/// A two-party one-to-one matching on `sizes`.
fn arb_matching() -> impl Strategy<Value = ([u64; 2], Vec<Group>)> {
    (0u64..40, 0u64..40).prop_flat_map(|(n0, n1)| {
        let max_pairs = n0.min(n1) as usize;
        (
            Just([n0, n1]),
            Just(n0),
            Just(n1),
            prop::collection::vec((0..n0.max(1), 0..n1.max(1)), 0..=max_pairs),
        )
    })
    .prop_map(|(sizes, n0, n1, raw)| {
        let (mut used0, mut used1) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        let groups = raw
            .into_iter()
            .filter(|&(a, b)| a < n0 && b < n1 && used0.insert(a) && used1.insert(b))
            .map(|(a, b)| vec![(0, a as u32), (1, b as u32)])
            .collect();
        (sizes, groups)
    })
}

fn is_bijection(perm: &[u32]) -> bool {
    let mut seen = vec![false; perm.len()];
    perm.iter().all(|&p| (p as usize) < seen.len() && !std::mem::replace(&mut seen[p as usize], true))
}

proptest! {
    #[test]
    fn permutations_are_consistent_with_groups((sizes, groups) in arb_matching(), seed in any::<u64>()) {
        let p = permutations(&groups, sizes, seed);
        let rows = sizes[0].min(sizes[1]);
        prop_assert_eq!(p.rows, rows);
        prop_assert_eq!(p.mask.len() as u64, rows);
        prop_assert_eq!(p.permutations.len(), 2);
        for (perm, size) in p.permutations.iter().zip(sizes) {
            prop_assert_eq!(perm.len() as u64, size);
            prop_assert!(is_bijection(perm));
        }
        // Matched pairs share a slot, and exactly those slots are set in the mask.
        let mut matched_slots = std::collections::HashSet::new();
        for g in &groups {
            let s0 = p.permutations[0][g[0].1 as usize];
            let s1 = p.permutations[1][g[1].1 as usize];
            prop_assert_eq!(s0, s1);
            prop_assert!((s0 as u64) < rows);
            prop_assert_eq!(p.mask[s0 as usize], 1);
            matched_slots.insert(s0);
        }
        prop_assert_eq!(p.mask.iter().filter(|&&m| m == 1).count(), matched_slots.len());
        // Deterministic in the seed.
        prop_assert_eq!(&permutations(&groups, sizes, seed), &p);
    }
}

#[test]
fn permutation_json_shapes() {
    let groups = vec![vec![(0, 0), (1, 1)]];
    let p = permutations(&groups, [2, 3], 42);
    let perm0: Vec<String> = p.permutations[0].iter().map(u32::to_string).collect();
    assert_eq!(permutation_json(&p, 0), format!("{{\"permutation\":[{}],\"rows\":2}}", perm0.join(",")));
    let mask: Vec<String> = p.mask.iter().map(u8::to_string).collect();
    assert_eq!(mask_json(&p), format!("{{\"mask\":[{}]}}", mask.join(",")));
    assert_eq!(p.mask.iter().map(|&m| m as u32).sum::<u32>(), 1);
    // Different seeds give different arrangements (for these sizes, almost surely).
    let others: std::collections::HashSet<_> =
        (0..20).map(|s| permutations(&groups, [2, 3], s).permutations).collect();
    assert!(others.len() > 1);
}
