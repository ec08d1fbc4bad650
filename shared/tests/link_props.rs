//! `link` and `greedy_solve` against deliberately simple references, on small random data with
//! many ties (low-entropy 16-byte encodings), 2–5 parties, with and without blocks, and with
//! shard targets small enough to split block pairs across many shards.
//!
//! The references share no code with the engine: every cross-party pair in a shared block,
//! plain Dice, sort by the anonlink order, dedupe; and a greedy that merges two groups when every
//! cross pair between them has been seen (anonlink's clique rule, written the obvious way).

use std::collections::{BTreeSet, HashMap, HashSet};

use proptest::prelude::*;
use shared::engine::candidates::{Candidate, order};
use shared::engine::encoding::{BlockKey, PartyEncodings};
use shared::engine::link::link;
use shared::engine::solver::{Group, greedy_solve};

const SIZE: usize = 16;

fn popcount(b: &[u8]) -> u32 {
    b.iter().map(|x| x.count_ones()).sum()
}

fn plain_dice(a: &[u8], b: &[u8]) -> Option<f64> {
    let both: u32 = a.iter().zip(b).map(|(x, y)| (x & y).count_ones()).sum();
    let total = popcount(a) + popcount(b);
    (total > 0).then(|| f64::from(2 * both) / f64::from(total))
}

fn blocks_of(p: &PartyEncodings, r: usize) -> BTreeSet<BlockKey> {
    match &p.blocks {
        None => BTreeSet::from([BlockKey::default_block()]),
        Some(b) => b[r].iter().copied().collect(),
    }
}

fn reference_candidates(parties: &[PartyEncodings], threshold: f64) -> Vec<Candidate> {
    let mut out = Vec::new();
    for d0 in 0..parties.len() {
        for d1 in d0 + 1..parties.len() {
            for r0 in 0..parties[d0].len() {
                for r1 in 0..parties[d1].len() {
                    let shared_block =
                        !blocks_of(&parties[d0], r0).is_disjoint(&blocks_of(&parties[d1], r1));
                    let score = plain_dice(parties[d0].record(r0), parties[d1].record(r1));
                    if let (true, Some(score)) = (shared_block, score)
                        && score >= threshold
                    {
                        out.push(Candidate { score, d0: d0 as u32, r0: r0 as u32, d1: d1 as u32, r1: r1 as u32 });
                    }
                }
            }
        }
    }
    out.sort_by(order);
    out.dedup_by(|a, b| order(a, b).is_eq());
    out
}

/// The service's comparison count: per block, per party pair, size × size (duplicates counted).
fn reference_comparisons(parties: &[PartyEncodings]) -> u64 {
    let mut per_block: HashMap<BlockKey, Vec<u64>> = HashMap::new();
    for (d, p) in parties.iter().enumerate() {
        for r in 0..p.len() {
            for key in blocks_of(p, r) {
                per_block.entry(key).or_insert_with(|| vec![0; parties.len()])[d] += 1;
            }
        }
    }
    per_block
        .values()
        .map(|counts| {
            let mut n = 0;
            for i in 0..counts.len() {
                for j in i + 1..counts.len() {
                    n += counts[i] * counts[j];
                }
            }
            n
        })
        .sum()
}

type Record = (u32, u32);

/// Greedy clique merging: scan in order; two groups (a record never seen is a group of its own)
/// merge when every pair between them has been seen. Only groups of 2+ are returned.
fn reference_greedy(sorted: &[Candidate]) -> Vec<Group> {
    let mut groups: Vec<Vec<Record>> = Vec::new();
    let mut group_of: HashMap<Record, usize> = HashMap::new();
    let mut seen: HashSet<(Record, Record)> = HashSet::new();
    for c in sorted {
        let (a, b) = ((c.d0, c.r0), (c.d1, c.r1));
        if a == b {
            continue;
        }
        seen.insert((a, b));
        seen.insert((b, a));
        let mut group_index = |r: Record| {
            *group_of.entry(r).or_insert_with(|| {
                groups.push(vec![r]);
                groups.len() - 1
            })
        };
        let (ga, gb) = (group_index(a), group_index(b));
        if ga == gb {
            continue;
        }
        let clique = groups[ga].iter().all(|x| groups[gb].iter().all(|y| seen.contains(&(*x, *y))));
        if clique {
            let moved = std::mem::take(&mut groups[gb]);
            for r in &moved {
                group_of.insert(*r, ga);
            }
            groups[ga].extend(moved);
        }
    }
    let mut out: Vec<Group> = groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort_unstable();
            g
        })
        .collect();
    out.sort_unstable();
    out
}

/// Low-entropy encodings: few distinct byte values, so scores tie a lot and some records are
/// all zero (never match).
fn arb_encoding() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 0, 0, 0, 1, 3, 0x0f, 0x81]), SIZE)
}

fn arb_party(with_blocks: bool) -> impl Strategy<Value = PartyEncodings> {
    let block_ids = prop::collection::vec(prop::sample::select(vec!["1", "a", "b", "7"]), 0..3);
    prop::collection::vec((arb_encoding(), block_ids), 0..10).prop_map(move |records| {
        let data = records.iter().flat_map(|(e, _)| e.iter().copied()).collect();
        let blocks = with_blocks.then(|| {
            records.iter().map(|(_, ids)| ids.iter().map(|id| BlockKey::of(id)).collect()).collect()
        });
        PartyEncodings { encoding_size: SIZE, data, blocks }
    })
}

fn arb_parties() -> impl Strategy<Value = Vec<PartyEncodings>> {
    (any::<bool>(), 2usize..=5)
        .prop_flat_map(|(with_blocks, n)| prop::collection::vec(arb_party(with_blocks), n))
}

fn arb_threshold() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![0.25, 0.5, 2.0 / 3.0, 0.7, 0.75, 0.8, 0.9, 1.0]),
        0.01f64..=1.0,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn link_equals_reference(
        parties in arb_parties(),
        threshold in arb_threshold(),
        target in prop_oneof![1u64..40, Just(300_000_000u64)],
    ) {
        let linked = link(&parties, threshold, target).unwrap();
        let expected = reference_candidates(&parties, threshold);
        prop_assert_eq!(&linked.candidates, &expected);
        prop_assert_eq!(linked.total_comparisons, reference_comparisons(&parties));
        prop_assert_eq!(greedy_solve(linked.candidates.iter().copied()), reference_greedy(&expected));
    }

    #[test]
    fn greedy_solve_equals_reference(
        raw in prop::collection::vec((0u32..5, 0u32..3, 1u32..5, 0u32..3, 0usize..3), 0..80),
    ) {
        // Distinct pairs over up to 5 parties of 3 records, three score levels: dense enough that
        // cliques of 3 to 5 records form and compete.
        let mut cands: Vec<Candidate> = raw
            .into_iter()
            .filter(|&(d0, _, gap, _, _)| d0 + gap < 5)
            .map(|(d0, r0, gap, r1, s)| Candidate { score: [1.0, 0.9, 0.8][s], d0, r0, d1: d0 + gap, r1 })
            .collect();
        cands.sort_by(order);
        let mut pairs = HashSet::new();
        cands.retain(|c| pairs.insert((c.d0, c.r0, c.d1, c.r1)));
        prop_assert_eq!(greedy_solve(cands.iter().copied()), reference_greedy(&cands));
    }
}
