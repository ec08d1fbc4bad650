use super::*;
use super::threshold::{NEVER, least_passing_and_count};
use crate::engine::encoding::{BlockKey, PartyEncodings};
use crate::engine::packed::pack;
use crate::engine::shard::{self, ShardTask};
use proptest::prelude::*;

/// anonlink's semantics written plainly, independent of the threshold tables: zero first
/// row matches nothing when t > 0; `calculate_max_difference` filter; score >= t.
fn reference_keeps(a: &[u8], b: &[u8], t: f64) -> Option<f64> {
    let pa: u32 = a.iter().map(|x| x.count_ones()).sum();
    let pb: u32 = b.iter().map(|x| x.count_ones()).sum();
    if pa == 0 && t > 0.0 {
        return None;
    }
    if t > 0.0 {
        let max_delta = (f64::from(2 * pa) * (1.0 / t - 1.0)) as u32;
        if pa.abs_diff(pb) > max_delta {
            return None;
        }
    }
    let c: u32 = a.iter().zip(b).map(|(x, y)| (x & y).count_ones()).sum();
    let s = if pa + pb == 0 { 0.0 } else { (2 * c) as f64 / (pa + pb) as f64 };
    (s >= t).then_some(s)
}

fn reference_all(a: &[Vec<u8>], b: &[Vec<u8>], t: f64) -> Vec<Match> {
    let mut out = Vec::new();
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            if let Some(score) = reference_keeps(x, y, t) {
                out.push(Match { a: i as u32, b: j as u32, score });
            }
        }
    }
    out
}

/// Deterministic xorshift, so test data needs no extra dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A record with bits set with probability `density` (in 1/256ths).
    fn record(&mut self, size: usize, density: u64) -> Vec<u8> {
        (0..size)
            .map(|_| (0..8).fold(0u8, |byte, bit| byte | (((self.next() % 256) < density) as u8) << bit))
            .collect()
    }
}

fn entries_of(records: &[Vec<u8>]) -> (Vec<u8>, usize) {
    let size = records[0].len();
    let enc = PartyEncodings { encoding_size: size, data: records.concat(), blocks: None };
    (pack(&enc).0, size)
}

fn sorted(mut m: Vec<Match>) -> Vec<Match> {
    m.sort_by_key(|x| (x.a, x.b));
    m
}

fn check_all_paths(a: &[Vec<u8>], b: &[Vec<u8>], t: f64) {
    let (da, size) = entries_of(a);
    let (db, _) = entries_of(b);
    let (ea, eb) = (Entries::new(&da, size, 0).unwrap(), Entries::new(&db, size, 0).unwrap());
    let expected = reference_all(a, b, t);
    for path in KernelPath::available() {
        for parallel in [false, true] {
            let got = sorted(compare_entries(ea, eb, t, path, parallel).unwrap());
            assert_eq!(got.len(), expected.len(), "{path:?} t={t} size={size}");
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!((g.a, g.b), (e.a, e.b), "{path:?} t={t}");
                assert_eq!(g.score.to_bits(), e.score.to_bits(), "{path:?} t={t}: scores must be identical");
            }
        }
    }
}

#[test]
fn dice_formula_and_zero_rows() {
    assert_eq!(dice(&[0b1111_0000], &[0b1100_1100]), 2.0 * 2.0 / 8.0);
    assert_eq!(dice(&[0; 8], &[0xff; 8]), 0.0);
    assert_eq!(dice(&[0; 8], &[0; 8]), 0.0);
    assert_eq!(dice(&[0xff; 8], &[0xff; 8]), 1.0);
}

#[test]
fn needed_table_equals_brute_force() {
    for t in [0.0, -0.5, 0.1, 0.5, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0, 1.5, f64::NAN, 2.0 / 3.0, 0.7000000000000001] {
        for s in 0..=512u32 {
            let brute = (0..=s / 2).find(|&c| score(c, s) >= t).unwrap_or(NEVER);
            assert_eq!(least_passing_and_count(t, s), brute, "t={t} s={s}");
        }
    }
}

#[test]
fn kernel_matches_reference_with_ties_and_boundaries() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Small encodings make popcount sums and scores collide a lot (many ties).
    for (size, density, n) in [(8usize, 128u64, 60usize), (16, 100, 50), (24, 140, 40), (128, 128, 40), (136, 120, 30)] {
        let mut a: Vec<Vec<u8>> = (0..n).map(|_| rng.record(size, density)).collect();
        let mut b: Vec<Vec<u8>> = (0..n + 7).map(|_| rng.record(size, density)).collect();
        // Near-duplicates, exact duplicates and empty rows on both sides.
        for i in 0..n / 3 {
            let mut copy = a[i].clone();
            copy[i % size] ^= 1 << (i % 8);
            b[i] = copy;
        }
        b[n] = a[1].clone();
        a[2] = vec![0; size];
        b[3] = vec![0; size];
        // Thresholds at actual scores hit the `>=` boundary exactly.
        let mut thresholds = vec![0.0, 0.5, 0.7, 0.8, 0.9, 1.0, 0.999];
        thresholds.extend((0..6).map(|k| dice(&a[k * 3 + 1], &b[k * 3 + 1])));
        for t in thresholds {
            check_all_paths(&a, &b, t);
        }
    }
}

/// The 1024-bit AVX2 kernel's staged early exit, on pairs that end at every stage: rows of
/// densities from sparse to dense, near-duplicates with 0..300 flipped bits (scores on both
/// sides of every threshold), duplicates and empty rows, run lengths not a multiple of the
/// 4-row group, and thresholds at exact scores.
#[test]
fn clk_size_kernel_matches_reference_near_the_threshold() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let density = |i: usize| 20 + (i as u64 * 37) % 220;
    let mut a: Vec<Vec<u8>> = (0..150).map(|i| rng.record(128, density(i))).collect();
    let mut b: Vec<Vec<u8>> = (0..173).map(|i| rng.record(128, density(i + 5))).collect();
    for i in 0..120 {
        let mut copy = a[i].clone();
        for _ in 0..(i * 5) % 300 {
            let bit = (rng.next() % 1024) as usize;
            copy[bit / 8] ^= 1 << (bit % 8);
        }
        b[i + 40] = copy;
    }
    b[3] = a[7].clone();
    a[9] = vec![0; 128];
    b[11] = vec![0; 128];
    let mut thresholds = vec![0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0];
    thresholds.extend([41, 60, 80, 100, 130].map(|i| dice(&a[i - 40], &b[i])));
    for t in thresholds {
        check_all_paths(&a, &b, t);
    }
}

#[test]
fn portable_path_is_always_available() {
    assert!(KernelPath::available().contains(&KernelPath::Portable));
    assert!(KernelPath::detect().is_available());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert_eq!(KernelPath::detect(), KernelPath::Avx2);
    } else if std::arch::is_x86_feature_detected!("popcnt") {
        assert_eq!(KernelPath::detect(), KernelPath::Popcnt);
    }
}

#[test]
fn shard_maps_records_and_deduplicates() {
    // Records 0 and 1 of each party share blocks "x" and "y": each pair must appear once.
    let rec = |v: u8| vec![v; 8];
    let party = |records: Vec<Vec<u8>>, blocks: Vec<Vec<&str>>| PartyEncodings {
        encoding_size: 8,
        data: records.concat(),
        blocks: Some(blocks.into_iter().map(|ids| ids.into_iter().map(BlockKey::of).collect()).collect()),
    };
    let p0 = party(vec![rec(0xff), rec(0x0f), rec(0xf0)], vec![vec!["x", "y"], vec!["y", "x"], vec!["z"]]);
    let p1 = party(vec![rec(0xf0), rec(0xff), rec(0x0f)], vec![vec!["z"], vec!["x", "y"], vec!["x", "y"]]);
    let p2 = party(vec![rec(0x0f)], vec![vec!["y"]]);
    let packed: Vec<_> = [&p0, &p1, &p2].iter().map(|p| pack(p)).collect();
    let indexes: Vec<_> = packed.iter().map(|(_, i)| i.clone()).collect();
    let plan = shard::plan(&indexes, 1_000);
    let mut all = Vec::new();
    for sh in &plan.shards {
        let inputs: Vec<(u32, Entries<'_>)> = sh
            .entry_spans()
            .into_iter()
            .map(|(party, span)| {
                let bytes = &packed[party as usize].0[shard::byte_range(&span, 8).start as usize..shard::byte_range(&span, 8).end as usize];
                (party, Entries::new(bytes, 8, span.start).unwrap())
            })
            .collect();
        for path in KernelPath::available() {
            let got = compare_shard_with(path, sh, 0.5, &inputs).unwrap();
            assert_eq!(got, compare_shard(sh, 0.5, &inputs).unwrap());
        }
        let got = compare_shard(sh, 0.5, &inputs).unwrap();
        assert!(got.windows(2).all(|w| candidates::order(&w[0], &w[1]).is_lt()), "sorted, no duplicates");
        all.extend(got);
    }
    candidates::sort_dedup(&mut all);
    let pairs: Vec<(u32, u32, u32, u32, f64)> = all.iter().map(|c| (c.d0, c.r0, c.d1, c.r1, c.score)).collect();
    let expected = vec![
        (0, 0, 1, 1, 1.0),
        (0, 1, 1, 2, 1.0),
        (0, 1, 2, 0, 1.0),
        (0, 2, 1, 0, 1.0),
        (1, 2, 2, 0, 1.0),
        (0, 0, 1, 2, 2.0 * 4.0 / 12.0),
        (0, 0, 2, 0, 2.0 * 4.0 / 12.0),
        (0, 1, 1, 1, 2.0 * 4.0 / 12.0),
        (1, 1, 2, 0, 2.0 * 4.0 / 12.0),
    ];
    let mut expected_sorted: Vec<_> = expected.iter().map(|&(d0, r0, d1, r1, score)| Candidate { score, d0, r0, d1, r1 }).collect();
    expected_sorted.sort_by(candidates::order);
    let expected: Vec<_> = expected_sorted.iter().map(|c| (c.d0, c.r0, c.d1, c.r1, c.score)).collect();
    assert_eq!(pairs, expected);
}

#[test]
fn shard_input_errors() {
    let enc = PartyEncodings { encoding_size: 8, data: vec![1; 16], blocks: None };
    let (data, _) = pack(&enc);
    let entries = Entries::new(&data, 8, 0).unwrap();
    let sh = Shard { index: 0, tasks: vec![ShardTask { party_a: 0, party_b: 1, a: 0..2, b: 0..2 }], comparisons: 4 };
    assert!(matches!(compare_shard(&sh, 0.8, &[(0, entries)]), Err(FormatError::ShardInput(_))));
    let short = Shard { index: 0, tasks: vec![ShardTask { party_a: 0, party_b: 1, a: 0..3, b: 0..2 }], comparisons: 6 };
    assert!(matches!(compare_shard(&short, 0.8, &[(0, entries), (1, entries)]), Err(FormatError::ShardInput(_))));
    assert_eq!(compare_shard(&sh, 0.8, &[(0, entries), (1, entries)]).unwrap().len(), 4);
}

/// All pairs of the FEBRL4 CLKs at 0.8 must equal anonlink's candidates exactly.
#[test]
fn febrl4_matches_anonlink_at_0_8() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/febrl4");
    let csv = dir.join("candidates_t0.8.csv");
    let (Ok(expected), Ok(a), Ok(b)) =
        (std::fs::read_to_string(&csv), std::fs::read(dir.join("clks_a.json")), std::fs::read(dir.join("clks_b.json")))
    else {
        println!("skipping: FEBRL4 data not found under {}", dir.display());
        return;
    };
    let bounds = crate::engine::encoding::SizeBounds::default();
    let a = crate::engine::encoding::decode_json_upload(&a, bounds).unwrap();
    let b = crate::engine::encoding::decode_json_upload(&b, bounds).unwrap();
    let (da, _) = pack(&a);
    let (db, _) = pack(&b);
    let (ea, eb) = (Entries::new(&da, 128, 0).unwrap(), Entries::new(&db, 128, 0).unwrap());
    let expected: Vec<(u32, u32, f64)> = expected
        .lines()
        .skip(1)
        .map(|line| {
            let mut f = line.split(',');
            let mut next = || f.next().unwrap();
            (next().parse().unwrap(), next().parse().unwrap(), next().parse().unwrap())
        })
        .collect();
    for path in KernelPath::available() {
        let mut got: Vec<Candidate> = compare_entries(ea, eb, 0.8, path, true)
            .unwrap()
            .into_iter()
            .map(|m| Candidate { score: m.score, d0: 0, r0: m.a, d1: 1, r1: m.b })
            .collect();
        got.sort_by(candidates::order);
        let got: Vec<(u32, u32, f64)> = got.iter().map(|c| (c.r0, c.r1, c.score)).collect();
        assert_eq!(got.len(), expected.len(), "{path:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!((g.0, g.1, g.2.to_bits()), (e.0, e.1, e.2.to_bits()), "{path:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn kernel_equals_reference(
        words in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 16, 17, 32]),
        seed in any::<u64>(),
        na in 1usize..40,
        nb in 1usize..40,
        density in 20u64..240,
        t in prop::sample::select(vec![0.0, 0.3, 0.5, 2.0 / 3.0, 0.7, 0.75, 0.8, 0.9, 1.0]),
    ) {
        let mut rng = Rng(seed | 1);
        let a: Vec<Vec<u8>> = (0..na).map(|_| rng.record(words * 8, density)).collect();
        let b: Vec<Vec<u8>> = (0..nb).map(|_| rng.record(words * 8, density)).collect();
        check_all_paths(&a, &b, t);
    }
}
