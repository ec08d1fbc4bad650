//! The solve step over a merged candidate stream, without I/O: greedy matching for two parties,
//! per-component greedy for more, each stopping at a candidate limit.
//!
//! The service's solve function (`service::pipeline::solve`, which streams the merged shard
//! files from object storage and uploads the result) and `pprl link` (which merges in memory)
//! both run this step, so they solve alike by construction. Why these two solvers give
//! anonlink's greedy groups exactly is proven in [`super::solver`]'s docs.

use super::candidates::Candidate;
use super::solver::{self, Components, Group, NotTwoParty, TwoPartyGreedy};

/// Bytes an N-party solve holds per candidate besides the solver: the candidate (24), its place
/// in the component order (4), and the union-find over its records (measured with
/// `bench/solve.sh --parties 3`; see `bench/README.md`).
pub const HELD_BYTES_PER_CANDIDATE: u64 = 96;
/// Bytes of [`solver::greedy_solve`]'s state per candidate of the component it solves (~170
/// measured from its hash maps, plus headroom).
pub const SOLVER_BYTES_PER_CANDIDATE: u64 = 200;

/// How a solve within limits ended: solved, or stopped at a limit (which ends a service run with
/// the reference's message; not a failure of the solve).
#[derive(Debug)]
pub enum Limited<T> {
    Solved(T),
    OverLimit,
}

/// Two parties' greedy matching over a merged stream.
pub struct TwoPartyMatches {
    /// Candidates read from the stream.
    pub candidates: u64,
    pub greedy: TwoPartyGreedy,
}

/// Two parties: [`TwoPartyGreedy`] over the merged, sorted, deduplicated stream, over the limit
/// once the stream holds more than `limit` candidates. `keep_scores` keeps each match's score
/// (groups with their scores).
pub fn match_two_parties<E: From<NotTwoParty>>(
    merged: impl IntoIterator<Item = Result<Candidate, E>>,
    limit: u64,
    keep_scores: bool,
) -> Result<Limited<TwoPartyMatches>, E> {
    let mut greedy = if keep_scores { TwoPartyGreedy::keeping_scores() } else { TwoPartyGreedy::new() };
    let mut candidates = 0u64;
    for c in merged {
        let c = c?;
        if candidates >= limit {
            return Ok(Limited::OverLimit);
        }
        candidates += 1;
        greedy.visit(&c)?;
    }
    Ok(Limited::Solved(TwoPartyMatches { candidates, greedy }))
}

/// Groups of three or more parties.
pub struct ComponentGroups {
    /// Candidates read from the stream.
    pub candidates: u64,
    pub groups: Vec<Group>,
    /// Each group's edges ([`solver::group_edges`]), when asked for.
    pub edges: Option<Vec<Vec<Candidate>>>,
}

/// What [`group_by_component`] may hold.
#[derive(Clone, Copy, Debug)]
pub struct ComponentLimits {
    /// Candidates of the stream at most.
    pub candidates: u64,
    /// Bytes for the held candidates and the largest component's solver
    /// ([`HELD_BYTES_PER_CANDIDATE`], [`SOLVER_BYTES_PER_CANDIDATE`]); `None`: unlimited.
    pub bytes: Option<u64>,
}

impl ComponentLimits {
    pub const NONE: ComponentLimits = ComponentLimits { candidates: u64::MAX, bytes: None };
}

/// Three or more parties: holds the merged stream, splits it into the connected components of
/// its graph and solves one at a time ([`solver::greedy_solve_by_component`]); `with_edges` adds
/// each group's edges. `expected` (e.g. the counted candidates, which bound the merged ones)
/// sizes the held list up front. Memory is released as soon as it is no longer needed: the
/// components before the edges are found, the candidates before returning.
pub fn group_by_component<E>(
    merged: impl IntoIterator<Item = Result<Candidate, E>>,
    limits: ComponentLimits,
    expected: u64,
    with_edges: bool,
) -> Result<Limited<ComponentGroups>, E> {
    let mut held: Vec<Candidate> = Vec::with_capacity(expected.min(limits.candidates) as usize);
    for c in merged {
        let c = c?;
        if held.len() as u64 >= limits.candidates {
            return Ok(Limited::OverLimit);
        }
        held.push(c);
    }
    if held.len() > u32::MAX as usize {
        return Ok(Limited::OverLimit);
    }
    let components = Components::of(&held);
    let needed = held.len() as u64 * HELD_BYTES_PER_CANDIDATE + components.largest() as u64 * SOLVER_BYTES_PER_CANDIDATE;
    if limits.bytes.is_some_and(|b| needed > b) {
        return Ok(Limited::OverLimit);
    }
    let groups = solver::greedy_solve_by_component(&held, &components);
    drop(components);
    let edges = with_edges.then(|| solver::group_edges(&groups, &held));
    Ok(Limited::Solved(ComponentGroups { candidates: held.len() as u64, groups, edges }))
}
