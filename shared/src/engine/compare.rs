//! The compare step of one shard, without I/O: which bytes of each party's packed data a shard
//! reads, and the shard's candidates from those bytes.
//!
//! The service's compare function (`service::pipeline::compare`, which fetches the bytes with
//! ranged GETs) and `pprl link` ([`super::link`], which slices them from memory) both run this
//! step, so the offline twin cannot drift from the service: only where the bytes come from
//! differs.

use std::ops::Range;

use super::candidates::Candidate;
use super::dice;
use super::packed::{Entries, FormatError};
use super::shard::{self, Shard};

/// One party's entry span of a shard, located in that party's packed data (`data.bin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanRead {
    pub party: u32,
    /// The party's entry index of the span's first entry.
    pub first_entry: u64,
    /// Bytes per encoding of the party.
    pub encoding_size: usize,
    /// The span's bytes within the party's packed data.
    pub bytes: Range<u64>,
}

/// A shard names a party that has no packed data to read.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("party {party} has no ingested data")]
pub struct NoPartyData {
    pub party: u32,
}

/// What `shard` reads: one [`SpanRead`] per party of its entry spans. `encoding_size` gives a
/// party's bytes per encoding, `None` (or 0) when the party has no data.
pub fn span_reads(shard: &Shard, encoding_size: impl Fn(u32) -> Option<usize>) -> Result<Vec<SpanRead>, NoPartyData> {
    shard
        .entry_spans()
        .into_iter()
        .map(|(party, span)| {
            let size = encoding_size(party).filter(|&s| s > 0).ok_or(NoPartyData { party })?;
            Ok(SpanRead { party, first_entry: span.start, encoding_size: size, bytes: shard::byte_range(&span, size) })
        })
        .collect()
}

/// The shard's candidates (sorted in the anonlink order, deduplicated), given the bytes of each
/// of its [`span_reads`].
pub fn compare_spans<'a>(
    shard: &Shard,
    threshold: f64,
    spans: impl IntoIterator<Item = (&'a SpanRead, &'a [u8])>,
) -> Result<Vec<Candidate>, FormatError> {
    let inputs = spans
        .into_iter()
        .map(|(read, bytes)| Entries::new(bytes, read.encoding_size, read.first_entry).map(|e| (read.party, e)))
        .collect::<Result<Vec<_>, _>>()?;
    dice::compare_shard(shard, threshold, &inputs)
}
