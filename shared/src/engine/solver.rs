//! anonlink's greedy solver, reproduced exactly.
//!
//! The reference calls `anonlink.solving.greedy_solve`, which is
//! `probabilistic_greedy_solve(merge_threshold=1.0, deduplicated=False)` (native C++ and Python
//! versions behave identically). Its semantics, which this module follows step by step:
//!
//! - Candidates are scanned **in the order given** (the caller passes them sorted by
//!   (−score, d0, d1, r0, r1)); the score itself is never looked at again.
//! - Every record belongs to at most one group. A pair whose records are both ungrouped forms a
//!   new group of two (`deduplicated=False`: even two records of the same dataset may group).
//! - A pair between a grouped record and an ungrouped one joins the group only if the group has a
//!   single member. Otherwise the ungrouped record becomes a **singleton group** that remembers
//!   one edge to the other group.
//! - A pair between two different groups adds one to their edge count; the groups merge when the
//!   count reaches |A|·|B|, i.e. when every cross pair has been seen as a candidate (a clique).
//!   When groups merge, their edge counts to third groups add up.
//! - Pairs of a record with itself are skipped.
//! - Only groups of two or more records are returned.
//!
//! With two parties this is greedy one-to-one matching; with more it builds cliques. Groups are
//! returned with their records sorted and the list of groups sorted, so results compare directly
//! (anonlink's own group order is hash-set order, i.e. arbitrary).
//!
//! # Solving without holding the candidates
//!
//! [`greedy_solve`] keeps, per candidate that forms no group, an edge count in two hash maps
//! (~170 bytes per candidate): a solve function of 3,008 MB held ~17 M candidates. Two
//! equivalences let the service solve far more, with the same result:
//!
//! **Two parties: [`TwoPartyGreedy`] is greedy one-to-one matching with two bitsets.** Precondition
//! (true of every merged candidate stream of the service): every candidate joins party 0 and
//! party 1, and no pair of records appears twice. (The compare stage scores a pair
//! deterministically, so a pair that several shards find is the same entry bit for bit, and the
//! merge drops the copies.) Claim: after every step, each group of [`greedy_solve`] is a
//! singleton or a pair {a ∈ party 0, b ∈ party 1}, and a candidate (a, b) forms a pair exactly
//! when neither a nor b is in a pair yet. Proof, by the cases of the greedy step, writing
//! "matched" for "in a pair" and using that the edge count between two groups is the number of
//! distinct candidates seen between their members (counts add up on merges, and a record that
//! was never seen has no edges):
//! - a, b both ungrouped: a new pair. Neither was matched. ✓
//! - one ungrouped, the other in a singleton: it joins, forming a pair. Neither was matched. ✓
//! - one ungrouped, the other in a pair: the ungrouped one becomes a singleton (unmatched). ✓
//! - two singletons: their count becomes 1 = 1·1, they merge into a pair. Neither was matched. ✓
//! - a singleton {x} and a pair: only one cross-party candidate can join x to the pair (x meets
//!   only the member of the other party), so the count stays ≤ 1 < 2: no merge. ✓
//! - two pairs: at most 2 cross-party candidates join them (a₀–b₁ and b₀–a₁) < 4: no merge. ✓
//! - both in the same group: nothing happens in either solver. ✓
//!
//! So the pairs are exactly those of greedy matching on the sorted stream, and the bitsets
//! ("is record r of party p matched") decide every candidate in O(1). Memory: one bit per record
//! of each party (~6 MB at 25 M) plus the pairs found (8 bytes each); nothing per candidate.
//!
//! **N parties: [`greedy_solve_by_component`] solves each connected component of the candidate
//! graph on its own.** Claim (no precondition): the groups of [`greedy_solve`] over all
//! candidates are the union of its groups over each component's candidates, in their original
//! order. Proof: a greedy step reads and writes only the groups of its two records and the edge
//! counts between those groups and others that have edges to them. Groups are only created from,
//! and merged along, candidates, and edges only join groups of one candidate's two records, so
//! by induction every group and every edge lies inside one component. A step on a candidate of
//! component C therefore touches only C's state, and C's state evolves only through C's
//! candidates, in the same relative order as in the full stream. The state of the full run is
//! the disjoint union of the per-component runs at every step, so the final groups are too.
//! Memory: the candidates (24 bytes each), their component (union-find over the records) and the
//! full solver state of **one component at a time**.
//!
//! Both are property-tested against [`greedy_solve`] (this module's tests, and
//! `shared/tests/link_props.rs`).

use std::collections::HashMap;

use super::candidates::Candidate;

/// A matched group: (dataset index, record index) pairs, sorted ascending.
pub type Group = Vec<(u32, u32)>;

type Record = (u32, u32);
type GroupId = usize;

/// Disjoint groups of records plus the sparse, symmetric matrix of edges seen between groups.
#[derive(Default)]
struct Solver {
    group_of: HashMap<Record, GroupId>,
    /// Members by group id. A group absorbed by a merge is left empty; ids are never reused.
    members: Vec<Vec<Record>>,
    /// edges[a][b] = number of candidate pairs seen between groups a and b (a ≠ b, not merged).
    edges: HashMap<GroupId, HashMap<GroupId, u64>>,
}

impl Solver {
    fn new_group(&mut self, records: Vec<Record>) -> GroupId {
        let id = self.members.len();
        for r in &records {
            self.group_of.insert(*r, id);
        }
        self.members.push(records);
        id
    }

    fn add_edge(&mut self, a: GroupId, b: GroupId, n: u64) -> u64 {
        *self.edges.entry(b).or_default().entry(a).or_insert(0) += n;
        let count = self.edges.entry(a).or_default().entry(b).or_insert(0);
        *count += n;
        *count
    }

    fn visit(&mut self, i0: Record, i1: Record) {
        if i0 == i1 {
            return;
        }
        match (self.group_of.get(&i0).copied(), self.group_of.get(&i1).copied()) {
            (None, None) => {
                self.new_group(vec![i0, i1]);
            }
            (Some(group), None) => self.one_grouped(group, i1),
            (None, Some(group)) => self.one_grouped(group, i0),
            (Some(g0), Some(g1)) => self.two_grouped(g0, g1),
        }
    }

    fn one_grouped(&mut self, group: GroupId, record: Record) {
        // merge_threshold · |group| ≤ 1 only for a singleton group.
        if self.members[group].len() <= 1 {
            self.members[group].push(record);
            self.group_of.insert(record, group);
        } else {
            // First sighting of `record`: one of |group| pairs seen, not enough to join.
            let singleton = self.new_group(vec![record]);
            self.add_edge(group, singleton, 1);
        }
    }

    fn two_grouped(&mut self, g0: GroupId, g1: GroupId) {
        if g0 == g1 {
            return;
        }
        let seen = self.add_edge(g0, g1, 1);
        let (n0, n1) = (self.members[g0].len() as u64, self.members[g1].len() as u64);
        if seen >= n0 * n1 {
            // Which group absorbs the other does not change the outcome; extend the bigger one.
            if n0 < n1 { self.merge_into(g1, g0) } else { self.merge_into(g0, g1) }
        }
    }

    fn merge_into(&mut self, absorber: GroupId, absorbee: GroupId) {
        let moved = std::mem::take(&mut self.members[absorbee]);
        for r in &moved {
            self.group_of.insert(*r, absorber);
        }
        self.members[absorber].extend(moved);

        if let Some(row) = self.edges.get_mut(&absorber) {
            row.remove(&absorbee);
        }
        let absorbee_row = self.edges.remove(&absorbee).unwrap_or_default();
        for (other, count) in absorbee_row {
            if other == absorber {
                continue;
            }
            if let Some(row) = self.edges.get_mut(&other) {
                row.remove(&absorbee);
            }
            self.add_edge(absorber, other, count);
        }
        if self.edges.get(&absorber).is_some_and(HashMap::is_empty) {
            self.edges.remove(&absorber);
        }
    }

    fn into_groups(self) -> Vec<Group> {
        let mut groups: Vec<Group> = self
            .members
            .into_iter()
            .filter(|g| g.len() > 1)
            .map(|mut g| {
                g.sort_unstable();
                g
            })
            .collect();
        groups.sort_unstable();
        groups
    }
}

/// `anonlink.solving.greedy_solve` over candidates in the order given (the caller sorts them by
/// [`super::candidates::order`]). Returns groups of two or more records, each sorted, the list
/// sorted.
pub fn greedy_solve(sorted: impl IntoIterator<Item = Candidate>) -> Vec<Group> {
    let mut solver = Solver::default();
    for c in sorted {
        solver.visit((c.d0, c.r0), (c.d1, c.r1));
    }
    solver.into_groups()
}

/// Records matched so far, one bit per record index; grows with the largest index seen.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn contains(&self, i: u32) -> bool {
        self.0.get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn insert(&mut self, i: u32) {
        let word = i as usize / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (i % 64);
    }
}

/// A candidate the two-party solver cannot take: not between party 0 and party 1.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("candidate between parties {d0} and {d1} in a two-party solve")]
pub struct NotTwoParty {
    pub d0: u32,
    pub d1: u32,
}

/// anonlink's greedy for two parties over a streamed, sorted, deduplicated candidate stream:
/// greedy one-to-one matching with two bitsets (see the module docs for why this is exactly
/// [`greedy_solve`]). Memory: a bit per record of each party plus 8 bytes per match (16 when it
/// keeps the matches' scores, [`TwoPartyGreedy::keeping_scores`]).
#[derive(Default)]
pub struct TwoPartyGreedy {
    matched: [Bits; 2],
    pairs: Vec<(u32, u32)>,
    /// The score of each of `pairs`, when asked for (groups with their scores).
    scores: Option<Vec<f64>>,
}

impl TwoPartyGreedy {
    pub fn new() -> Self {
        Self::default()
    }

    /// A greedy that also remembers each match's score, for [`TwoPartyGreedy::into_scored_pairs`].
    pub fn keeping_scores() -> Self {
        TwoPartyGreedy { scores: Some(Vec::new()), ..Self::default() }
    }

    /// Takes the next candidate of the stream (in the anonlink order).
    pub fn visit(&mut self, c: &Candidate) -> Result<(), NotTwoParty> {
        if (c.d0, c.d1) != (0, 1) {
            return Err(NotTwoParty { d0: c.d0, d1: c.d1 });
        }
        if !self.matched[0].contains(c.r0) && !self.matched[1].contains(c.r1) {
            self.matched[0].insert(c.r0);
            self.matched[1].insert(c.r1);
            self.pairs.push((c.r0, c.r1));
            if let Some(scores) = &mut self.scores {
                scores.push(c.score);
            }
        }
        Ok(())
    }

    /// Number of pairs so far.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The matches as (record of party 0, record of party 1), ascending: the order of
    /// [`greedy_solve`]'s groups `[(0, a), (1, b)]`.
    pub fn into_pairs(mut self) -> Vec<(u32, u32)> {
        self.pairs.sort_unstable();
        self.pairs
    }

    /// The matches in [`TwoPartyGreedy::into_pairs`]' order, each with the score of the
    /// candidate that made it (0.0 when the greedy was not [`TwoPartyGreedy::keeping_scores`]).
    /// Each match is its group's one edge, so these are [`group_edges`] for two parties.
    pub fn into_scored_pairs(self) -> Vec<((u32, u32), f64)> {
        let scores = self.scores.unwrap_or_else(|| vec![0.0; self.pairs.len()]);
        let mut scored: Vec<((u32, u32), f64)> = self.pairs.into_iter().zip(scores).collect();
        // A record of party 0 is in one match at most, so the pairs are distinct.
        scored.sort_unstable_by_key(|&(pair, _)| pair);
        scored
    }
}

/// The edges of each group: the candidates (in the order of `sorted`) whose two records are
/// both in that group, i.e. every pair of the group's records found at or above the threshold
/// (the edges [`greedy_solve`] saw, not only those that made the group). `result[i]` belongs to
/// `groups[i]`.
pub fn group_edges(groups: &[Group], sorted: &[Candidate]) -> Vec<Vec<Candidate>> {
    let group_of: HashMap<Record, usize> =
        groups.iter().enumerate().flat_map(|(i, g)| g.iter().map(move |&r| (r, i))).collect();
    let mut edges = vec![Vec::new(); groups.len()];
    for c in sorted {
        let (a, b) = (group_of.get(&(c.d0, c.r0)), group_of.get(&(c.d1, c.r1)));
        if let (Some(&a), Some(&b)) = (a, b)
            && a == b
        {
            edges[a].push(*c);
        }
    }
    edges
}

/// The groups of two-party matches, as [`greedy_solve`] returns them.
pub fn pairs_to_groups(pairs: &[(u32, u32)]) -> Vec<Group> {
    pairs.iter().map(|&(a, b)| vec![(0, a), (1, b)]).collect()
}

/// The connected components of a candidate list's graph (records are vertices, candidates
/// edges): candidate indices grouped by component, in their original order within each.
pub struct Components {
    /// Candidate indices, component after component.
    order: Vec<u32>,
    /// Start of each component in `order`, plus `order.len()` at the end.
    starts: Vec<u32>,
}

impl Components {
    /// Union-find over the records of `cands` (at most 2³² − 1 candidates).
    pub fn of(cands: &[Candidate]) -> Self {
        let mut id_of: HashMap<Record, u32> = HashMap::new();
        let mut parent: Vec<u32> = Vec::new();
        let mut id = |r: Record, parent: &mut Vec<u32>| {
            *id_of.entry(r).or_insert_with(|| {
                parent.push(parent.len() as u32);
                parent.len() as u32 - 1
            })
        };
        fn find(parent: &mut [u32], mut x: u32) -> u32 {
            while parent[x as usize] != x {
                // Path halving: every other node on the way points to its grandparent.
                let grand = parent[parent[x as usize] as usize];
                parent[x as usize] = grand;
                x = grand;
            }
            x
        }
        let mut first_record = Vec::with_capacity(cands.len());
        for c in cands {
            let (a, b) = (id((c.d0, c.r0), &mut parent), id((c.d1, c.r1), &mut parent));
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra.max(rb) as usize] = ra.min(rb);
            }
            first_record.push(a);
        }
        drop(id_of);
        // Counting sort of the candidates by component root, stable, so each component keeps
        // the stream's order.
        let mut count = vec![0u32; parent.len() + 1];
        let roots: Vec<u32> = first_record.iter().map(|&a| find(&mut parent, a)).collect();
        drop(first_record);
        for &r in &roots {
            count[r as usize + 1] += 1;
        }
        for i in 1..count.len() {
            count[i] += count[i - 1];
        }
        let mut starts: Vec<u32> = (0..parent.len()).filter(|&r| count[r + 1] > count[r]).map(|r| count[r]).collect();
        starts.push(cands.len() as u32);
        let mut next = count;
        let mut order = vec![0u32; cands.len()];
        for (i, &r) in roots.iter().enumerate() {
            order[next[r as usize] as usize] = i as u32;
            next[r as usize] += 1;
        }
        Components { order, starts }
    }

    /// Number of components.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidates in the largest component.
    pub fn largest(&self) -> usize {
        self.starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }

    /// Each component's candidate indices, in stream order.
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> {
        self.starts.windows(2).map(|w| &self.order[w[0] as usize..w[1] as usize])
    }
}

/// [`greedy_solve`] one connected component at a time (identical result; see the module docs):
/// the solver's per-candidate state is held for one component only.
pub fn greedy_solve_by_component(sorted: &[Candidate], components: &Components) -> Vec<Group> {
    let mut groups = Vec::new();
    for component in components.iter() {
        groups.extend(greedy_solve(component.iter().map(|&i| sorted[i as usize])));
    }
    groups.sort_unstable();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::candidates::order;
    use proptest::prelude::*;

    /// Distinct record pairs with few records and three score levels (many ties, many
    /// conflicts), sorted in the anonlink order.
    fn sorted_distinct(raw: Vec<(u32, u32, u32, u32, usize)>) -> Vec<Candidate> {
        let mut cands: Vec<Candidate> = raw
            .into_iter()
            .map(|(d0, r0, d1, r1, s)| Candidate { score: [1.0, 0.9, 0.8][s], d0, r0, d1, r1 })
            .collect();
        cands.sort_by(order);
        let mut seen = std::collections::HashSet::new();
        cands.retain(|c| seen.insert((c.d0, c.r0, c.d1, c.r1)));
        cands
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn two_party_scored_pairs_are_the_group_edges(raw in prop::collection::vec((Just(0u32), 0u32..8, Just(1u32), 0u32..8, 0usize..3), 0..120)) {
            let cands = sorted_distinct(raw);
            let mut greedy = TwoPartyGreedy::keeping_scores();
            for c in &cands {
                greedy.visit(c).unwrap();
            }
            let groups = greedy_solve(cands.iter().copied());
            let edges = group_edges(&groups, &cands);
            let scored: Vec<Vec<Candidate>> = greedy
                .into_scored_pairs()
                .into_iter()
                .map(|((r0, r1), score)| vec![Candidate { score, d0: 0, r0, d1: 1, r1 }])
                .collect();
            prop_assert_eq!(scored, edges);
        }

        #[test]
        fn group_edges_are_the_candidates_inside_each_group(raw in prop::collection::vec((0u32..3, 0u32..5, 0u32..3, 0u32..5, 0usize..3), 0..80)) {
            let cands: Vec<(u32, u32, u32, u32, usize)> = raw.into_iter().filter(|&(d0, _, d1, _, _)| d0 < d1).collect();
            let cands = sorted_distinct(cands);
            let groups = greedy_solve(cands.iter().copied());
            let edges = group_edges(&groups, &cands);
            prop_assert_eq!(edges.len(), groups.len());
            for (g, e) in groups.iter().zip(&edges) {
                let inside: Vec<Candidate> = cands.iter().filter(|c| g.contains(&(c.d0, c.r0)) && g.contains(&(c.d1, c.r1))).copied().collect();
                prop_assert_eq!(&inside, e);
                // A group is made of candidates: it has at least one edge per member but one.
                prop_assert!(e.len() + 1 >= g.len());
            }
        }

        #[test]
        fn two_party_bitsets_equal_greedy(raw in prop::collection::vec((Just(0u32), 0u32..8, Just(1u32), 0u32..8, 0usize..3), 0..120)) {
            let cands = sorted_distinct(raw);
            let mut bitsets = TwoPartyGreedy::new();
            for c in &cands {
                bitsets.visit(c).unwrap();
            }
            prop_assert_eq!(pairs_to_groups(&bitsets.into_pairs()), greedy_solve(cands.iter().copied()));
        }

        #[test]
        fn per_component_equals_greedy(raw in prop::collection::vec((0u32..4, 0u32..4, 0u32..4, 0u32..4, 0usize..3), 0..120)) {
            // Any parties (same-party pairs and self pairs included) and repeated pairs with
            // other scores: the per-component equivalence needs no precondition.
            let mut cands: Vec<Candidate> = raw
                .into_iter()
                .map(|(d0, r0, d1, r1, s)| Candidate { score: [1.0, 0.9, 0.8][s], d0, r0, d1, r1 })
                .collect();
            cands.sort_by(order);
            let components = Components::of(&cands);
            prop_assert_eq!(components.iter().map(<[u32]>::len).sum::<usize>(), cands.len());
            prop_assert_eq!(greedy_solve_by_component(&cands, &components), greedy_solve(cands.iter().copied()));
        }
    }

    #[test]
    fn two_party_rejects_other_parties() {
        assert_eq!(TwoPartyGreedy::new().visit(&c(0, 0, 2, 0)), Err(NotTwoParty { d0: 0, d1: 2 }));
    }

    fn c(d0: u32, r0: u32, d1: u32, r1: u32) -> Candidate {
        Candidate { score: 1.0, d0, r0, d1, r1 }
    }

    #[test]
    fn two_parties_is_greedy_one_to_one() {
        let groups = greedy_solve([c(0, 0, 1, 0), c(0, 0, 1, 1), c(0, 1, 1, 0), c(0, 1, 1, 1)]);
        assert_eq!(groups, vec![vec![(0, 0), (1, 0)], vec![(0, 1), (1, 1)]]);
    }

    #[test]
    fn three_parties_merge_only_full_cliques() {
        // a-b grouped; a-c seen (c becomes a singleton with one edge of two needed); b-c completes.
        let groups = greedy_solve([c(0, 0, 1, 0), c(0, 0, 2, 0), c(1, 0, 2, 0)]);
        assert_eq!(groups, vec![vec![(0, 0), (1, 0), (2, 0)]]);
        // Without b-c, c stays out.
        let groups = greedy_solve([c(0, 0, 1, 0), c(0, 0, 2, 0)]);
        assert_eq!(groups, vec![vec![(0, 0), (1, 0)]]);
    }

    #[test]
    fn singleton_group_takes_its_next_partner() {
        // c is a singleton (edge to {a,b}); then c-d joins d to c's singleton group.
        let groups = greedy_solve([c(0, 0, 1, 0), c(0, 0, 2, 0), c(2, 0, 3, 0)]);
        assert_eq!(groups, vec![vec![(0, 0), (1, 0)], vec![(2, 0), (3, 0)]]);
    }

    #[test]
    fn self_pairs_are_skipped() {
        assert!(greedy_solve([c(0, 1, 0, 1)]).is_empty());
    }
}
