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

#[cfg(test)]
mod tests {
    use super::*;

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
