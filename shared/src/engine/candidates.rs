//! Candidate pairs: the unit of work between the compare stage and the solver.
//!
//! A candidate is one pair of records from two different parties whose Dice score reached the
//! run's threshold. Every compare shard writes its candidates, sorted, to one object in
//! **anonlink's candidate-pair file format** (`anonlink/serialization.py`), so files the service
//! writes can be read by anonlink and vice versa:
//!
//! ```text
//! header   4 bytes  struct "<BBBB": version = 1, similarity bytes = 8, dataset-index bytes = 4,
//!                   record-index bytes = 4
//! entries 24 bytes  struct "<dIIII" (little-endian): f64 score, u32 d0, u32 d1, u32 r0, u32 r1
//! ```
//!
//! The file holds no entry count (anonlink derives it from the length), so a reader must treat a
//! trailing partial entry as corruption, which [`CandidateReader`] does.
//!
//! The solve stage then merges all shard files with [`merge`], a k-way heap merge under the
//! anonlink order (−score, d0, d1, r0, r1) that drops exact duplicates (a pair of records that
//! share several blocks is found by several shards). Its memory is one pending candidate per
//! input, never proportional to the number of candidates. Merging is associative: merging
//! groups of files and then merging the results gives the same stream as one merge of all
//! files, which is what solve's merge tree over several invocations relies on
//! (`service::pipeline::merge`).
//!
//! Writing uses anonlink's own layout (8/4/4). Reading also accepts the other layouts anonlink's
//! reader accepts (4-byte floats; 1, 2, 4 or 8-byte indices), so files from other anonlink
//! installations load too; 8-byte indices must still fit in u32.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::{self, BufReader, Read, Write};

/// One candidate pair. `d0 < d1` are party (dataset) indices; `r0`, `r1` the records' original
/// indices within their party's upload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub score: f64,
    pub d0: u32,
    pub r0: u32,
    pub d1: u32,
    pub r1: u32,
}

impl Candidate {
    /// True when both candidates are the same entry bit for bit (score bits included). This is
    /// the duplicate test of the merge: it is stricter than `==` on f64 and agrees with [`order`].
    pub fn same_entry(&self, other: &Candidate) -> bool {
        order(self, other) == Ordering::Equal
    }
}

/// The anonlink order: descending score, then ascending (d0, d1, r0, r1).
///
/// Scores compare with `total_cmp`, so the order is total even for NaN or signed zero (which
/// Dice never produces) and never panics on corrupt input.
pub fn order(a: &Candidate, b: &Candidate) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then(a.d0.cmp(&b.d0))
        .then(a.d1.cmp(&b.d1))
        .then(a.r0.cmp(&b.r0))
        .then(a.r1.cmp(&b.r1))
}

/// Sorts in the anonlink order and removes exact duplicates, in place.
pub fn sort_dedup(cands: &mut Vec<Candidate>) {
    cands.sort_unstable_by(order);
    cands.dedup_by(|later, earlier| earlier.same_entry(later));
}

/// Problems with a candidate-pair file or stream. Every corrupt input maps to one of these;
/// nothing in this module panics on bad bytes.
#[derive(thiserror::Error, Debug)]
pub enum FormatError {
    #[error("candidate file is too short for its 4-byte header ({len} bytes)")]
    TruncatedHeader { len: usize },
    #[error("unsupported candidate file version {0} (only version 1 exists)")]
    UnsupportedVersion(u8),
    #[error(
        "unsupported candidate entry layout: {sim}-byte similarity, {dataset}-byte dataset index, \
         {record}-byte record index"
    )]
    UnsupportedLayout { sim: u8, dataset: u8, record: u8 },
    #[error("candidate file ends inside entry {entry}: {got} of {expected} bytes present")]
    TruncatedEntry { entry: u64, got: usize, expected: usize },
    #[error("candidate entry {entry} has an index that does not fit in 32 bits ({value})")]
    IndexOverflow { entry: u64, value: u64 },
    #[error(
        "merge input {input} is not sorted in the anonlink order (−score, d0, d1, r0, r1) \
         at candidate {position}"
    )]
    UnsortedInput { input: usize, position: u64 },
    #[error("reading candidate file: {0}")]
    Io(#[from] io::Error),
}

/// Version byte of the only format anonlink defines.
pub const FORMAT_VERSION: u8 = 1;
/// The header this crate writes: version 1, f64 similarities, u32 dataset and record indices.
pub const HEADER: [u8; 4] = [FORMAT_VERSION, 8, 4, 4];
/// Bytes per entry in the layout this crate writes.
pub const ENTRY_SIZE: usize = 24;

/// Size in bytes of the file that [`encode`] makes for `n` candidates.
pub fn encoded_len(n: usize) -> usize {
    HEADER.len() + n * ENTRY_SIZE
}

fn push_entry(out: &mut Vec<u8>, c: &Candidate) {
    out.extend_from_slice(&c.score.to_le_bytes());
    out.extend_from_slice(&c.d0.to_le_bytes());
    out.extend_from_slice(&c.d1.to_le_bytes());
    out.extend_from_slice(&c.r0.to_le_bytes());
    out.extend_from_slice(&c.r1.to_le_bytes());
}

/// Serialises candidates (in the order given) as an anonlink candidate-pair file.
pub fn encode(cands: &[Candidate]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(cands.len()));
    out.extend_from_slice(&HEADER);
    for c in cands {
        push_entry(&mut out, c);
    }
    out
}

/// Parses a whole candidate-pair file held in memory.
pub fn decode(bytes: &[u8]) -> Result<Vec<Candidate>, FormatError> {
    let reader = CandidateReader::new(bytes)?;
    let mut out = Vec::with_capacity(bytes.len().saturating_sub(HEADER.len()) / ENTRY_SIZE);
    for c in reader {
        out.push(c?);
    }
    Ok(out)
}

/// Streaming writer of a candidate-pair file, for outputs too large to hold (the merged file).
pub struct CandidateWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> CandidateWriter<W> {
    /// Entries are buffered in chunks of this many bytes before each write.
    const CHUNK: usize = ENTRY_SIZE * 4096;

    /// Starts a file: writes the header.
    pub fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(&HEADER)?;
        Ok(Self { inner, buf: Vec::with_capacity(Self::CHUNK), written: 0 })
    }

    pub fn write(&mut self, c: &Candidate) -> io::Result<()> {
        push_entry(&mut self.buf, c);
        self.written += 1;
        if self.buf.len() >= Self::CHUNK {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Number of entries written so far.
    pub fn count(&self) -> u64 {
        self.written
    }

    /// Flushes the remaining entries and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// The field sizes a file's header declares, validated against what anonlink can write.
#[derive(Clone, Copy, Debug)]
struct Layout {
    sim: u8,
    dataset: u8,
    record: u8,
}

impl Layout {
    fn parse(header: [u8; 4]) -> Result<Self, FormatError> {
        let [version, sim, dataset, record] = header;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let int_ok = |n: u8| matches!(n, 1 | 2 | 4 | 8);
        // anonlink also allows 2-byte (half) floats; no anonlink similarity function emits them.
        if !matches!(sim, 4 | 8) || !int_ok(dataset) || !int_ok(record) {
            return Err(FormatError::UnsupportedLayout { sim, dataset, record });
        }
        Ok(Self { sim, dataset, record })
    }

    fn entry_size(self) -> usize {
        self.sim as usize + 2 * self.dataset as usize + 2 * self.record as usize
    }

    fn parse_entry(self, b: &[u8], entry: u64) -> Result<Candidate, FormatError> {
        let mut at = 0;
        let mut take = |n: u8| {
            let field = &b[at..at + n as usize];
            at += n as usize;
            let mut le = [0u8; 8];
            le[..field.len()].copy_from_slice(field);
            u64::from_le_bytes(le)
        };
        let raw_score = take(self.sim);
        let score = if self.sim == 8 {
            f64::from_bits(raw_score)
        } else {
            f64::from(f32::from_bits(raw_score as u32))
        };
        let narrow = |value: u64| {
            u32::try_from(value).map_err(|_| FormatError::IndexOverflow { entry, value })
        };
        let d0 = narrow(take(self.dataset))?;
        let d1 = narrow(take(self.dataset))?;
        let r0 = narrow(take(self.record))?;
        let r1 = narrow(take(self.record))?;
        Ok(Candidate { score, d0, r0, d1, r1 })
    }
}

/// Streaming reader of a candidate-pair file: yields one candidate at a time from any
/// [`Read`] (an object body, a file, a slice), buffering internally.
///
/// A trailing partial entry yields [`FormatError::TruncatedEntry`]; after any error the reader
/// yields nothing more.
pub struct CandidateReader<R: Read> {
    inner: BufReader<R>,
    layout: Layout,
    buf: [u8; 40],
    next_entry: u64,
    done: bool,
}

impl<R: Read> CandidateReader<R> {
    /// Reads and checks the header.
    pub fn new(r: R) -> Result<Self, FormatError> {
        Self::with_buffer(r, 64 * 1024)
    }

    /// [`CandidateReader::new`] with a read buffer of `capacity` bytes. A merge of thousands of
    /// inputs that already hold their bytes in memory (chunks of objects) passes 0: a buffer
    /// per input would cost more than the chunks themselves.
    pub fn with_buffer(r: R, capacity: usize) -> Result<Self, FormatError> {
        let mut inner = BufReader::with_capacity(capacity, r);
        let mut header = [0u8; 4];
        let got = read_full(&mut inner, &mut header)?;
        if got < header.len() {
            return Err(FormatError::TruncatedHeader { len: got });
        }
        let layout = Layout::parse(header)?;
        Ok(Self { inner, layout, buf: [0; 40], next_entry: 0, done: false })
    }

    fn read_entry(&mut self) -> Option<Result<Candidate, FormatError>> {
        let size = self.layout.entry_size();
        let entry = self.next_entry;
        let got = match read_full(&mut self.inner, &mut self.buf[..size]) {
            Ok(got) => got,
            Err(e) => return Some(Err(e.into())),
        };
        if got == 0 {
            return None;
        }
        if got < size {
            return Some(Err(FormatError::TruncatedEntry { entry, got, expected: size }));
        }
        self.next_entry += 1;
        Some(self.layout.parse_entry(&self.buf[..size], entry))
    }
}

impl<R: Read> Iterator for CandidateReader<R> {
    type Item = Result<Candidate, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.read_entry();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read. Unlike
/// `read_exact` it tells a clean end (0) from a truncated entry (short count).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One pending candidate in the merge heap, tagged with the input it came from.
struct Head {
    cand: Candidate,
    input: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    // BinaryHeap is a max-heap: reverse so the first candidate in the anonlink order pops first.
    // The input index breaks exact ties so the merge is deterministic.
    fn cmp(&self, other: &Self) -> Ordering {
        order(&other.cand, &self.cand).then(other.input.cmp(&self.input))
    }
}

/// The iterator [`merge`] returns.
pub struct Merge<I> {
    inputs: Vec<I>,
    /// Last candidate taken from each input, to check that inputs are sorted.
    last_per_input: Vec<Option<Candidate>>,
    taken_per_input: Vec<u64>,
    heap: BinaryHeap<Head>,
    last_emitted: Option<Candidate>,
    pending_error: Option<FormatError>,
    started: bool,
    failed: bool,
}

impl<I: Iterator<Item = Result<Candidate, FormatError>>> Merge<I> {
    /// Pulls the next candidate of `input` into the heap, checking that the input is sorted.
    fn refill(&mut self, input: usize) -> Result<(), FormatError> {
        let Some(next) = self.inputs[input].next() else { return Ok(()) };
        let cand = next?;
        let position = self.taken_per_input[input];
        self.taken_per_input[input] += 1;
        if let Some(prev) = &self.last_per_input[input]
            && order(prev, &cand) == Ordering::Greater
        {
            return Err(FormatError::UnsortedInput { input, position });
        }
        self.last_per_input[input] = Some(cand);
        self.heap.push(Head { cand, input });
        Ok(())
    }
}

impl<I: Iterator<Item = Result<Candidate, FormatError>>> Iterator for Merge<I> {
    type Item = Result<Candidate, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(e) = self.pending_error.take() {
            self.failed = true;
            return Some(Err(e));
        }
        if !self.started {
            self.started = true;
            for input in 0..self.inputs.len() {
                if let Err(e) = self.refill(input) {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        loop {
            let Head { cand, input } = self.heap.pop()?;
            if let Err(e) = self.refill(input) {
                // Hand out the candidate we hold; the error comes next and ends the merge.
                self.pending_error = Some(e);
            }
            // Inputs are sorted, so exact duplicates arrive one after the other.
            let duplicate = self.last_emitted.is_some_and(|last| last.same_entry(&cand));
            if duplicate {
                if let Some(e) = self.pending_error.take() {
                    self.failed = true;
                    return Some(Err(e));
                }
                continue;
            }
            self.last_emitted = Some(cand);
            return Some(Ok(cand));
        }
    }
}

/// K-way merge of sorted candidate streams into one sorted stream without exact duplicates.
///
/// Holds one pending candidate per input (a binary heap), so memory is bounded by the number of
/// inputs. An input error, or an input found out of order, is yielded once and ends the merge:
/// a merged result built past a corrupt file would be silently wrong.
pub fn merge<I: Iterator<Item = Result<Candidate, FormatError>>>(
    inputs: Vec<I>,
) -> impl Iterator<Item = Result<Candidate, FormatError>> {
    let n = inputs.len();
    Merge {
        inputs,
        last_per_input: vec![None; n],
        taken_per_input: vec![0; n],
        heap: BinaryHeap::with_capacity(n),
        last_emitted: None,
        pending_error: None,
        started: false,
        failed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(score: f64, d0: u32, r0: u32, d1: u32, r1: u32) -> Candidate {
        Candidate { score, d0, r0, d1, r1 }
    }

    #[test]
    fn encode_layout_matches_anonlink() {
        let bytes = encode(&[c(0.75, 0, 7, 1, 9)]);
        assert_eq!(&bytes[..4], &[1, 8, 4, 4]);
        assert_eq!(bytes.len(), 28);
        assert_eq!(&bytes[4..12], &0.75f64.to_le_bytes());
        // "<dIIII": d0, d1, r0, r1.
        assert_eq!(&bytes[12..28], &[0, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0]);
    }

    #[test]
    fn reads_narrow_layouts() {
        // version 1, f32 sims, u8 dataset indices, u16 record indices
        let mut bytes = vec![1, 4, 1, 2];
        bytes.extend_from_slice(&0.5f32.to_le_bytes());
        bytes.extend_from_slice(&[0, 2]);
        bytes.extend_from_slice(&300u16.to_le_bytes());
        bytes.extend_from_slice(&5u16.to_le_bytes());
        assert_eq!(decode(&bytes).unwrap(), vec![c(0.5, 0, 300, 2, 5)]);
    }

    #[test]
    fn wide_index_overflow_is_an_error() {
        let mut bytes = vec![1, 8, 4, 8];
        bytes.extend_from_slice(&1.0f64.to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(FormatError::IndexOverflow { entry: 0, .. })));
    }
}
