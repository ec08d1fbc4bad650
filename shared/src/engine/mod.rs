//! The pure linkage engine. Data flows through it in pipeline order:
//!
//! 1. [`encoding`] decodes every upload form of the reference API into [`encoding::PartyEncodings`].
//! 2. [`packed`] lays one party's records out for ranged reads by shard (records grouped by block,
//!    popcounts precomputed) and describes the layout in a [`packed::BlockIndex`].
//! 3. [`shard`] plans the comparison space (party pairs × shared blocks × row ranges) into shards.
//! 4. [`dice`] compares one shard's records (runtime-dispatched popcount kernel, rayon inside);
//!    [`compare`] is the whole compare step of a shard: the bytes it reads, its candidates.
//! 5. [`candidates`] stores a shard's candidate pairs (anonlink's 24-byte format) and merges shard
//!    files in the order (−score, d0, d1, r0, r1), deduplicating.
//! 6. [`solver`] is anonlink's `greedy_solve`; [`solve`] runs it over a merged stream within
//!    limits; [`output`] renders the API's result shapes.
//!
//! [`link`] chains all of it in memory: the offline twin of the service (`pprl link`).

pub mod blocking;
pub mod blocks_file;
pub mod candidates;
pub mod compare;
pub mod dice;
pub mod encoding;
pub mod link;
pub mod output;
pub mod packed;
pub mod shard;
pub mod sizing;
pub mod solve;
pub mod solver;
