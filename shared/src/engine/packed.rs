//! One party's ingested records, laid out for ranged reads by shard.
//!
//! # `data.bin`
//!
//! A sequence of fixed-size *entries*, `stride = 8 + encoding_size` bytes each:
//!
//! ```text
//! offset 0   u32 LE  record index (position of the record in the party's upload)
//! offset 4   u32 LE  popcount of the encoding (precomputed once, used for pruning)
//! offset 8   [u8; encoding_size]  the encoding, bytes exactly as uploaded
//! ```
//!
//! Entries are grouped by block, blocks ascending by [`BlockKey`], records ascending by index
//! within a block. A record in k blocks appears k times (once per block); a record in no block
//! is not stored at all, because it can never be compared. Grouping by block makes every
//! (block pair, row range) comparison task a contiguous entry range, so a shard fetches each
//! party's data with one ranged GET.
//!
//! # `index.bin`
//!
//! [`BlockIndex::to_bytes`], all integers little-endian:
//!
//! ```text
//! offset 0   [u8; 8]  magic  b"PPRLBIDX"
//! offset 8   u32      format version (1)
//! offset 12  u32      encoding size in bytes
//! offset 16  u64      record count (records in the upload, stored or not)
//! offset 24  u64      entry count (entries in data.bin)
//! offset 32  u64      block count
//! offset 40  block directory, 32 bytes per block, ascending by key:
//!            [u8; 16] key, u64 first entry, u64 entry count
//! ```
//!
//! [`BlockIndex::from_bytes`] checks every invariant (magic, version, exact length, ascending
//! keys, contiguous non-empty blocks covering exactly `entry_count` entries), so a corrupt or
//! foreign object is reported instead of steering the planner out of bounds.

use super::blocking::BlockKey;
use super::encoding::PartyEncodings;

/// A stored object (data.bin, index.bin, a candidate file) is not what it should be.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("block index does not start with the expected magic bytes (not an index.bin file)")]
    BadMagic,
    #[error("block index format version {0} is not supported (expected {INDEX_VERSION})")]
    UnsupportedVersion(u32),
    #[error("{what} is truncated or has trailing bytes: expected {expected} bytes, found {actual}")]
    Length { what: &'static str, expected: u64, actual: u64 },
    #[error("block index is inconsistent: {0}")]
    InconsistentIndex(String),
    #[error("encoding size {0} bytes cannot be stored (must be a positive multiple of 8)")]
    BadEncodingSize(usize),
    #[error("entry {entry} claims popcount {stored} but its encoding has {actual} bits set")]
    PopcountMismatch { entry: u64, stored: u32, actual: u32 },
    #[error("shard input is missing or does not cover the planned entries: {0}")]
    ShardInput(String),
    #[error("{0}")]
    Other(String),
}

/// Magic bytes at the start of `index.bin`.
pub const INDEX_MAGIC: [u8; 8] = *b"PPRLBIDX";
/// Current `index.bin` format version.
pub const INDEX_VERSION: u32 = 1;
const INDEX_HEADER_LEN: usize = 40;
const INDEX_BLOCK_LEN: usize = 32;

/// Bytes per entry of `data.bin`: record index, popcount, encoding.
pub fn entry_stride(encoding_size: usize) -> usize {
    8 + encoding_size
}

/// The header of an index of `block_count` blocks, so that an index can be written as a stream:
/// this, then [`directory_bytes`] of its blocks in key order.
pub fn index_header(encoding_size: u32, record_count: u64, entry_count: u64, block_count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEADER_LEN);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&encoding_size.to_le_bytes());
    out.extend_from_slice(&record_count.to_le_bytes());
    out.extend_from_slice(&entry_count.to_le_bytes());
    out.extend_from_slice(&block_count.to_le_bytes());
    out
}

/// Directory rows of `blocks`, their first entries moved by `first_entry_offset` (the entries
/// before them when directories of consecutive key ranges are concatenated).
pub fn directory_bytes(blocks: &[BlockEntry], first_entry_offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_BLOCK_LEN * blocks.len());
    for block in blocks {
        out.extend_from_slice(&block.key.0);
        out.extend_from_slice(&(block.first_entry + first_entry_offset).to_le_bytes());
        out.extend_from_slice(&block.len.to_le_bytes());
    }
    out
}

/// One block's run of entries in `data.bin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    pub key: BlockKey,
    pub first_entry: u64,
    pub len: u64,
}

/// The directory of `data.bin`: which entries belong to which block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockIndex {
    pub encoding_size: u32,
    pub record_count: u64,
    pub entry_count: u64,
    /// Ascending by key, contiguous, non-empty.
    pub blocks: Vec<BlockEntry>,
}

impl BlockIndex {
    /// Serializes the index (layout in the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = index_header(self.encoding_size, self.record_count, self.entry_count, self.blocks.len() as u64);
        out.extend_from_slice(&directory_bytes(&self.blocks, 0));
        out
    }

    /// Parses and validates an index (layout and checks in the module doc).
    pub fn from_bytes(b: &[u8]) -> Result<Self, FormatError> {
        let header = IndexHeader::from_bytes(b)?;
        header.check_object_len(b.len() as u64)?;
        let mut check = DirectoryCheck::default();
        let blocks = check.rows(&b[INDEX_HEADER_LEN..])?;
        check.finish(&header)?;
        Ok(BlockIndex { encoding_size: header.encoding_size, record_count: header.record_count, entry_count: header.entry_count, blocks })
    }
}

/// The fixed-size start of `index.bin`. Read on its own, it lets the directory be read in
/// windows of rows ([`directory_range`]) and checked as it goes ([`DirectoryCheck`]), which is
/// how fan-out plans a run without holding either party's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    pub encoding_size: u32,
    pub record_count: u64,
    pub entry_count: u64,
    pub block_count: u64,
}

impl IndexHeader {
    pub const LEN: u64 = INDEX_HEADER_LEN as u64;

    /// Parses the header at the start of `b` (which may hold more of the index).
    pub fn from_bytes(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < INDEX_HEADER_LEN {
            return Err(FormatError::Length {
                what: "block index header",
                expected: INDEX_HEADER_LEN as u64,
                actual: b.len() as u64,
            });
        }
        if b[..8] != INDEX_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = read_u32(b, 8);
        if version != INDEX_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        Ok(IndexHeader { encoding_size: read_u32(b, 12), record_count: read_u64(b, 16), entry_count: read_u64(b, 24), block_count: read_u64(b, 32) })
    }

    /// Checks the declared block count against the object's length (before anything is
    /// allocated for it), then the encoding size.
    pub fn check_object_len(&self, object_len: u64) -> Result<(), FormatError> {
        let directory_len = object_len.saturating_sub(INDEX_HEADER_LEN as u64);
        let expected_len = self.block_count.checked_mul(INDEX_BLOCK_LEN as u64);
        if expected_len != Some(directory_len) {
            return Err(FormatError::Length {
                what: "block index directory",
                expected: expected_len.unwrap_or(u64::MAX),
                actual: directory_len,
            });
        }
        if self.encoding_size == 0 || !self.encoding_size.is_multiple_of(8) {
            return Err(FormatError::BadEncodingSize(self.encoding_size as usize));
        }
        Ok(())
    }
}

/// The bytes of `index.bin` holding directory rows `rows`.
pub fn directory_range(rows: std::ops::Range<u64>) -> std::ops::Range<u64> {
    let row = INDEX_BLOCK_LEN as u64;
    INDEX_HEADER_LEN as u64 + rows.start * row..INDEX_HEADER_LEN as u64 + rows.end * row
}

/// Checks directory rows in order, a window at a time: ascending keys, contiguous non-empty
/// blocks, and (once every row is read) exactly the declared entries.
#[derive(Default)]
pub struct DirectoryCheck {
    last_key: Option<BlockKey>,
    next_entry: u64,
    rows: u64,
}

impl DirectoryCheck {
    /// The blocks of the next rows (`raw` holds whole rows).
    pub fn rows(&mut self, raw: &[u8]) -> Result<Vec<BlockEntry>, FormatError> {
        if !raw.len().is_multiple_of(INDEX_BLOCK_LEN) {
            return Err(FormatError::InconsistentIndex(format!("a window of {} bytes is not whole directory rows", raw.len())));
        }
        let mut blocks = Vec::with_capacity(raw.len() / INDEX_BLOCK_LEN);
        for row in raw.chunks_exact(INDEX_BLOCK_LEN) {
            let mut key = [0u8; 16];
            key.copy_from_slice(&row[..16]);
            let block = BlockEntry { key: BlockKey(key), first_entry: read_u64(row, 16), len: read_u64(row, 24) };
            if self.last_key.is_some_and(|previous| previous >= block.key) {
                return Err(FormatError::InconsistentIndex("blocks are not in ascending key order".into()));
            }
            if block.first_entry != self.next_entry || block.len == 0 {
                return Err(FormatError::InconsistentIndex(format!(
                    "block {} does not continue at entry {} with at least one entry",
                    self.rows, self.next_entry
                )));
            }
            self.next_entry = self
                .next_entry
                .checked_add(block.len)
                .ok_or_else(|| FormatError::InconsistentIndex("entry count overflows".into()))?;
            self.last_key = Some(block.key);
            self.rows += 1;
            blocks.push(block);
        }
        Ok(blocks)
    }

    /// Every row was read: they must cover the entries the header declares.
    pub fn finish(&self, header: &IndexHeader) -> Result<(), FormatError> {
        if self.next_entry != header.entry_count {
            return Err(FormatError::InconsistentIndex(format!(
                "blocks cover {} entries but the index declares {}",
                self.next_entry, header.entry_count
            )));
        }
        Ok(())
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Bits set in an encoding.
pub fn popcount(encoding: &[u8]) -> u32 {
    let mut words = encoding.chunks_exact(8);
    let mut total: u32 = words
        .by_ref()
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]).count_ones())
        .sum();
    total += words.remainder().iter().map(|b| b.count_ones()).sum::<u32>();
    total
}

/// Lays out one party's records as `data.bin` + its [`BlockIndex`] (layout in the module doc).
///
/// A record listing the same block twice is stored once in that block: a duplicate id cannot
/// add a comparison that finds anything new.
pub fn pack(enc: &PartyEncodings) -> (Vec<u8>, BlockIndex) {
    let size = enc.encoding_size;
    let stride = entry_stride(size);
    // (block, record) pairs, sorted: this is exactly the entry order.
    let placements: Vec<(BlockKey, u32)> = match &enc.blocks {
        None => {
            let key = BlockKey::default_block();
            (0..enc.len() as u32).map(|r| (key, r)).collect()
        }
        Some(per_record) => placements(per_record, enc.len()),
    };
    let popcounts: Vec<u32> = (0..enc.len()).map(|r| popcount(enc.record(r))).collect();
    let mut data = Vec::with_capacity(placements.len() * stride);
    for (_, record) in &placements {
        data.extend_from_slice(&record.to_le_bytes());
        data.extend_from_slice(&popcounts[*record as usize].to_le_bytes());
        data.extend_from_slice(enc.record(*record as usize));
    }
    let index = BlockIndex {
        encoding_size: size as u32,
        record_count: enc.len() as u64,
        entry_count: placements.len() as u64,
        blocks: block_directory(&placements),
    };
    (data, index)
}

/// Every (block, record) pair of the first `records` records, sorted and without duplicates:
/// the order of the entries in `data.bin`.
pub fn placements(per_record: &[Vec<BlockKey>], records: usize) -> Vec<(BlockKey, u32)> {
    let mut all = Vec::with_capacity(per_record.iter().take(records).map(Vec::len).sum());
    for (record, keys) in per_record.iter().enumerate().take(records) {
        all.extend(keys.iter().map(|k| (*k, record as u32)));
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// The block directory of entries laid out in `placements` order.
pub fn block_directory(placements: &[(BlockKey, u32)]) -> Vec<BlockEntry> {
    let mut blocks: Vec<BlockEntry> = Vec::new();
    for (entry, (key, _)) in placements.iter().enumerate() {
        match blocks.last_mut() {
            Some(last) if last.key == *key => last.len += 1,
            _ => blocks.push(BlockEntry { key: *key, first_entry: entry as u64, len: 1 }),
        }
    }
    blocks
}

/// Writes one `data.bin` entry (record index, popcount, encoding) into `out`, which is exactly
/// `entry_stride(encoding.len())` bytes long.
pub fn write_entry(out: &mut [u8], record: u32, encoding: &[u8]) {
    out[0..4].copy_from_slice(&record.to_le_bytes());
    out[4..8].copy_from_slice(&popcount(encoding).to_le_bytes());
    out[8..].copy_from_slice(encoding);
}

/// A view over a contiguous run of entries of data.bin, starting at entry `first_entry`.
///
/// Construction validates the bytes once (whole entries only, stored popcounts equal to the
/// encodings' real popcounts), so the Dice kernel can trust every popcount as an index into its
/// threshold table without re-checking per pair.
#[derive(Clone, Copy, Debug)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    encoding_size: usize,
    stride: usize,
    first_entry: u64,
    len: usize,
}

impl<'a> Entries<'a> {
    pub fn new(bytes: &'a [u8], encoding_size: usize, first_entry: u64) -> Result<Self, FormatError> {
        if encoding_size == 0 || !encoding_size.is_multiple_of(8) || encoding_size > u32::MAX as usize / 8 {
            return Err(FormatError::BadEncodingSize(encoding_size));
        }
        let stride = entry_stride(encoding_size);
        if !bytes.len().is_multiple_of(stride) {
            return Err(FormatError::Length {
                what: "entry data",
                expected: (bytes.len() / stride * stride) as u64,
                actual: bytes.len() as u64,
            });
        }
        let len = bytes.len() / stride;
        // Global entry numbers `first_entry + i` must exist for every entry: a view that ran past
        // u64 (a corrupt shard range) would overflow in every caller that numbers its entries.
        if first_entry.checked_add(len as u64).is_none() {
            return Err(FormatError::InconsistentIndex(format!("{len} entries starting at entry {first_entry} overflow the entry numbers")));
        }
        let entries = Entries { bytes, encoding_size, stride, first_entry, len };
        for i in 0..len {
            let stored = entries.popcount(i);
            let actual = popcount(entries.encoding(i));
            if stored != actual {
                return Err(FormatError::PopcountMismatch { entry: first_entry + i as u64, stored, actual });
            }
        }
        Ok(entries)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Global entry number (within data.bin) of this view's first entry.
    pub fn first_entry(&self) -> u64 {
        self.first_entry
    }

    pub fn encoding_size(&self) -> usize {
        self.encoding_size
    }

    /// The raw entry bytes (stride [`entry_stride`]), for kernels that walk them directly.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn record_index(&self, i: usize) -> u32 {
        read_u32(self.bytes, i * self.stride)
    }

    pub fn popcount(&self, i: usize) -> u32 {
        read_u32(self.bytes, i * self.stride + 4)
    }

    pub fn encoding(&self, i: usize) -> &'a [u8] {
        let start = i * self.stride + 8;
        &self.bytes[start..start + self.encoding_size]
    }

    /// The sub-view of global entries `range`, or `None` when this view does not cover it.
    pub fn slice(&self, range: std::ops::Range<u64>) -> Option<Entries<'a>> {
        let start = range.start.checked_sub(self.first_entry)?;
        let end = range.end.checked_sub(self.first_entry)?;
        if start > end || end > self.len as u64 {
            return None;
        }
        let (start, end) = (start as usize, end as usize);
        Some(Entries {
            bytes: &self.bytes[start * self.stride..end * self.stride],
            encoding_size: self.encoding_size,
            stride: self.stride,
            first_entry: range.start,
            len: end - start,
        })
    }
}

/// The blocks two parties share, in ascending key order: `(block of a, block of b)`.
///
/// Both directories are ascending by key (a [`BlockIndex`] invariant), so this is a linear
/// merge-join rather than a hash lookup, and its output order is deterministic.
pub fn common_blocks<'a>(
    a: &'a BlockIndex,
    b: &'a BlockIndex,
) -> impl Iterator<Item = (&'a BlockEntry, &'a BlockEntry)> + 'a {
    let mut ia = a.blocks.iter().peekable();
    let mut ib = b.blocks.iter().peekable();
    std::iter::from_fn(move || {
        loop {
            let (ea, eb) = (ia.peek()?, ib.peek()?);
            match ea.key.cmp(&eb.key) {
                std::cmp::Ordering::Less => {
                    ia.next();
                }
                std::cmp::Ordering::Greater => {
                    ib.next();
                }
                std::cmp::Ordering::Equal => {
                    let pair = (*ea, *eb);
                    ia.next();
                    ib.next();
                    return Some(pair);
                }
            }
        }
    })
}

/// Total comparisons of a project, counted as the reference counts them (its progress
/// denominator, even when a record pair shares several blocks and is compared several times): Σ over party pairs i<j, Σ over shared blocks, `size_i · size_j`.
pub fn total_comparisons(indexes: &[BlockIndex]) -> u64 {
    let mut total = 0u64;
    for i in 0..indexes.len() {
        for j in i + 1..indexes.len() {
            for (ba, bb) in common_blocks(&indexes[i], &indexes[j]) {
                total = total.saturating_add(ba.len.saturating_mul(bb.len));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(records: &[[u8; 8]], blocks: Option<Vec<Vec<&str>>>) -> PartyEncodings {
        PartyEncodings {
            encoding_size: 8,
            data: records.iter().flatten().copied().collect(),
            blocks: blocks.map(|b| b.into_iter().map(|ids| ids.into_iter().map(BlockKey::of).collect()).collect()),
        }
    }

    #[test]
    fn unblocked_upload_is_one_block_in_record_order() {
        let enc = party(&[[0xff; 8], [1, 0, 0, 0, 0, 0, 0, 0], [0; 8]], None);
        let (data, index) = pack(&enc);
        assert_eq!(index.blocks.len(), 1);
        assert_eq!(index.blocks[0].key, BlockKey::default_block());
        assert_eq!((index.record_count, index.entry_count), (3, 3));
        let entries = Entries::new(&data, 8, 0).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!((entries.record_index(0), entries.popcount(0)), (0, 64));
        assert_eq!((entries.record_index(1), entries.popcount(1)), (1, 1));
        assert_eq!(entries.encoding(2), &[0u8; 8]);
        assert_eq!(&data[..8], &[0, 0, 0, 0, 64, 0, 0, 0], "u32 LE index then u32 LE popcount");
    }

    #[test]
    fn blocked_records_are_repeated_per_block_and_unblocked_dropped() {
        let enc = party(
            &[[1; 8], [2; 8], [3; 8], [4; 8]],
            Some(vec![vec!["a", "b"], vec![], vec!["b", "b"], vec!["a"]]),
        );
        let (data, index) = pack(&enc);
        assert_eq!(index.record_count, 4);
        assert_eq!(index.entry_count, 4, "record 0 twice, record 1 never, record 2 once (dup id)");
        let entries = Entries::new(&data, 8, 0).unwrap();
        for block in &index.blocks {
            let records: Vec<u32> = (block.first_entry..block.first_entry + block.len)
                .map(|e| entries.record_index(e as usize))
                .collect();
            if block.key == BlockKey::of("a") {
                assert_eq!(records, vec![0, 3]);
            } else {
                assert_eq!(records, vec![0, 2]);
            }
        }
        assert!(index.blocks.windows(2).all(|w| w[0].key < w[1].key));
    }

    #[test]
    fn index_roundtrip_and_corruption() {
        let enc = party(&[[1; 8], [2; 8], [3; 8]], Some(vec![vec!["x"], vec!["y", "x"], vec!["z"]]));
        let (_, index) = pack(&enc);
        let bytes = index.to_bytes();
        assert_eq!(BlockIndex::from_bytes(&bytes).unwrap(), index);

        assert!(matches!(BlockIndex::from_bytes(&bytes[..20]), Err(FormatError::Length { .. })));
        assert!(matches!(BlockIndex::from_bytes(&bytes[..bytes.len() - 1]), Err(FormatError::Length { .. })));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(BlockIndex::from_bytes(&bad), Err(FormatError::BadMagic));
        let mut bad = bytes.clone();
        bad[8] = 9;
        assert_eq!(BlockIndex::from_bytes(&bad), Err(FormatError::UnsupportedVersion(9)));
        let mut bad = bytes.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(BlockIndex::from_bytes(&bad), Err(FormatError::Length { .. })));
        let mut bad = bytes.clone();
        bad[24] = 7; // entry count no longer matches the blocks
        assert!(matches!(BlockIndex::from_bytes(&bad), Err(FormatError::InconsistentIndex(_))));
        let mut bad = bytes.clone();
        bad[12] = 7; // encoding size 7
        assert!(matches!(BlockIndex::from_bytes(&bad), Err(FormatError::BadEncodingSize(7))));
        let mut swapped = index.clone();
        swapped.blocks.swap(0, 1);
        assert!(matches!(BlockIndex::from_bytes(&swapped.to_bytes()), Err(FormatError::InconsistentIndex(_))));
    }

    #[test]
    fn entries_validate_and_slice() {
        let enc = party(&[[1; 8], [2; 8], [3; 8]], None);
        let (mut data, _) = pack(&enc);
        assert!(matches!(Entries::new(&data[..20], 8, 0), Err(FormatError::Length { .. })));
        assert!(matches!(Entries::new(&data, 12, 0), Err(FormatError::BadEncodingSize(12))));
        let entries = Entries::new(&data, 8, 10).unwrap();
        let sub = entries.slice(11..13).unwrap();
        assert_eq!((sub.len(), sub.first_entry(), sub.record_index(0)), (2, 11, 1));
        assert!(entries.slice(9..11).is_none());
        assert!(entries.slice(12..14).is_none());
        data[4] = 99;
        assert!(matches!(Entries::new(&data, 8, 0), Err(FormatError::PopcountMismatch { .. })));
    }

    fn directory(blocks: &[(&str, u64)]) -> BlockIndex {
        let mut entries: Vec<BlockEntry> = blocks
            .iter()
            .map(|(id, len)| BlockEntry { key: BlockKey::of(id), first_entry: 0, len: *len })
            .collect();
        entries.sort_by_key(|e| e.key);
        let mut first = 0;
        for e in &mut entries {
            e.first_entry = first;
            first += e.len;
        }
        BlockIndex { encoding_size: 8, record_count: first, entry_count: first, blocks: entries }
    }

    #[test]
    fn common_blocks_and_counts() {
        let a = directory(&[("x", 2), ("y", 3), ("z", 4)]);
        let b = directory(&[("y", 5), ("z", 1), ("w", 9)]);
        let c = directory(&[("x", 10)]);
        let shared: Vec<_> = common_blocks(&a, &b).map(|(p, q)| (p.len, q.len)).collect();
        assert_eq!(shared.len(), 2);
        assert_eq!(total_comparisons(&[a, b, c]), 3 * 5 + 4 + 2 * 10);
    }
}
