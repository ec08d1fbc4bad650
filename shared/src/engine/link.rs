//! The offline twin of the service: links parties in memory through the **same code path** the
//! pipeline runs, so `pprl link` answers exactly what a service run would.
//!
//! ```text
//! fan-out:  packed::pack each party  → shard::plan over the block indexes
//! compare:  per shard, compare::span_reads (the byte ranges a compare function GETs, sliced
//!           here from memory) → compare::compare_spans → candidates::encode (the shard's
//!           object, written only when it holds candidates, as the service does)
//! solve:    CandidateReader over every shard object → candidates::merge (sorted, deduplicated)
//!           → solve::match_two_parties / solve::group_by_component (in `pprl link`)
//! ```
//!
//! The compare and solve steps are the engine's [`compare`](super::compare) and
//! [`solve`](super::solve) modules, which the service's pipeline runs too; only the I/O around
//! them differs. Shard files round-trip through the binary candidate format on purpose: the
//! format is part of the path being twinned, and a mismatch between writer and reader would show
//! up here first. Shards run one after another; the kernel is parallel inside (rayon).

use std::ops::Range;

use super::candidates::{self, Candidate, CandidateReader};
use super::compare::{self, NoPartyData};
use super::encoding::PartyEncodings;
use super::packed::{self, BlockIndex};
use super::shard;

/// The merged candidates of a run, in the anonlink order, plus the run's comparison count (the
/// `total_number_comparisons` of a completed run's status).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkOutput {
    pub candidates: Vec<Candidate>,
    pub total_comparisons: u64,
}

/// Why a linkage could not run. Input problems come first; the shard and candidate-file errors
/// mean an internal inconsistency between the engine's own stages.
#[derive(thiserror::Error, Debug)]
pub enum LinkError {
    #[error("linkage needs at least two parties, got {0}")]
    TooFewParties(usize),
    #[error("threshold must be greater than 0 and at most 1, got {0}")]
    InvalidThreshold(f64),
    #[error("mismatch in encoding sizes: party 0 has {expected}-byte encodings, party {party} has {found}-byte encodings")]
    EncodingSizeMismatch { party: usize, expected: usize, found: usize },
    #[error("shard {shard}: {source}")]
    UnknownParty {
        shard: u32,
        #[source]
        source: NoPartyData,
    },
    #[error("shard {shard} needs bytes {range:?} of party {party}'s data, which has only {len} bytes")]
    SpanOutOfRange { shard: u32, party: u32, range: Range<u64>, len: usize },
    #[error("shard {shard}: {source}")]
    Shard {
        shard: u32,
        #[source]
        source: packed::FormatError,
    },
    #[error("candidate file of shard {shard}: {source}")]
    CandidateFile {
        shard: u32,
        #[source]
        source: candidates::FormatError,
    },
    #[error("merging shard candidates: {0}")]
    Merge(#[source] candidates::FormatError),
}

/// Progress of a [`link_with_progress`] run, reported after each shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub shards_done: usize,
    pub shards_total: usize,
    pub comparisons_done: u64,
    pub comparisons_total: u64,
}

/// Links `parties` (party i = dataset index i) at `threshold`, planning shards of about
/// `target_comparisons` comparisons ([`shard::DEFAULT_TARGET_COMPARISONS`] in the service).
pub fn link(
    parties: &[PartyEncodings],
    threshold: f64,
    target_comparisons: u64,
) -> Result<LinkOutput, LinkError> {
    link_with_progress(parties, threshold, target_comparisons, |_| {})
}

/// [`link`], calling `progress` once before the first shard and after every shard.
pub fn link_with_progress(
    parties: &[PartyEncodings],
    threshold: f64,
    target_comparisons: u64,
    mut progress: impl FnMut(Progress),
) -> Result<LinkOutput, LinkError> {
    check_inputs(parties, threshold)?;
    let encoding_size = parties[0].encoding_size;

    // Fan-out: each party's data.bin + index.bin, then the plan over the indexes.
    let (data, indexes): (Vec<Vec<u8>>, Vec<BlockIndex>) = parties.iter().map(packed::pack).unzip();
    let plan = shard::plan(&indexes, target_comparisons);

    let mut status = Progress {
        shards_done: 0,
        shards_total: plan.shards.len(),
        comparisons_done: 0,
        comparisons_total: plan.total_comparisons,
    };
    progress(status);

    // Compare: one candidate file per shard, exactly as a compare function would store it.
    let mut shard_files = Vec::with_capacity(plan.shards.len());
    for sh in &plan.shards {
        let reads = compare::span_reads(sh, |party| data.get(party as usize).map(|_| encoding_size))
            .map_err(|source| LinkError::UnknownParty { shard: sh.index, source })?;
        let spans = reads
            .iter()
            .map(|read| Ok((read, party_span(&data, sh.index, read.party, &read.bytes)?)))
            .collect::<Result<Vec<_>, LinkError>>()?;
        let cands = compare::compare_spans(sh, threshold, spans)
            .map_err(|source| LinkError::Shard { shard: sh.index, source })?;
        if !cands.is_empty() {
            shard_files.push((sh.index, candidates::encode(&cands)));
        }

        status.shards_done += 1;
        status.comparisons_done += sh.comparisons;
        progress(status);
    }

    // Solve stage input: the k-way merge of all shard files.
    let readers = shard_files
        .iter()
        .map(|(shard, file)| {
            CandidateReader::new(file.as_slice())
                .map_err(|source| LinkError::CandidateFile { shard: *shard, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let candidates = candidates::merge(readers)
        .collect::<Result<Vec<_>, _>>()
        .map_err(LinkError::Merge)?;

    Ok(LinkOutput { candidates, total_comparisons: plan.total_comparisons })
}

fn check_inputs(parties: &[PartyEncodings], threshold: f64) -> Result<(), LinkError> {
    if parties.len() < 2 {
        return Err(LinkError::TooFewParties(parties.len()));
    }
    // Same rule as the service's run creation: 0 < t ≤ 1 (NaN fails both comparisons).
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(LinkError::InvalidThreshold(threshold));
    }
    let expected = parties[0].encoding_size;
    if let Some((party, p)) = parties.iter().enumerate().find(|(_, p)| p.encoding_size != expected) {
        return Err(LinkError::EncodingSizeMismatch { party, expected, found: p.encoding_size });
    }
    Ok(())
}

/// The bytes `range` of `party`'s data.bin, which a compare function would fetch with a ranged
/// GET.
fn party_span<'a>(data: &'a [Vec<u8>], shard: u32, party: u32, range: &Range<u64>) -> Result<&'a [u8], LinkError> {
    let party_data = data.get(party as usize).map(Vec::as_slice).unwrap_or(&[]);
    let out_of_range =
        || LinkError::SpanOutOfRange { shard, party, range: range.clone(), len: party_data.len() };
    let start = usize::try_from(range.start).map_err(|_| out_of_range())?;
    let end = usize::try_from(range.end).map_err(|_| out_of_range())?;
    party_data.get(start..end).ok_or_else(out_of_range)
}
