//! Decoding every upload form of the reference API into [`PartyEncodings`].
//!
//! Forms (see the reference's "Upload formats"):
//!
//! - `{"clks": [b64, ...]}`: every record in block `"1"` ([`PartyEncodings::blocks`] = `None`).
//! - `{"clknblocks": [[b64, id, id, ...], ...]}`: element 0 the CLK, the rest block ids (string or
//!   integer). A record with no block ids is kept (its index counts) but never compared.
//! - `{"encodings": [b64, ...], "blocks"?: {"<idx>": [ids], ...}}` inline. With `blocks`, the
//!   reference converts to clknblocks *by iterating the blocks map*: encodings missing from the
//!   map are dropped and the record index becomes the position in map iteration order. JSON
//!   object order is therefore significant; it is preserved here by visiting the map directly
//!   (serde_json's `preserve_order` feature stays off).
//! - raw binary ([`decode_binary`]): `count` records of `size` bytes, bytes past `count*size`
//!   ignored; every record in block `"1"`.
//! - external object-store files: `{"clks": [...]}` JSON ([`decode_clks_file`]) and blocklib's
//!   `{"blocks": {...}, "meta": ...}` ([`decode_blocks_file`]).
//!
//! JSON bodies are parsed in one streaming pass: base64 strings are decoded straight into the
//! output buffer, never collected into a `serde_json::Value` tree first. Failures are typed
//! ([`DecodeError`]) with messages meant for the data provider; decoded data is never trusted
//! to size an allocation before it has been checked against the body that carries it.
//!
//! # Lenient rules (kept for compatibility with the reference)
//!
//! - **First record's length wins** within one JSON upload (`struct.pack("!I{n}s")` in the
//!   reference): later records that decode shorter are zero-padded, longer ones truncated.
//!   With inline `encodings` + `blocks`, "first" means first in blocks-map order, as the
//!   reference packs after converting to clknblocks.
//! - **Declared size wins** for an external `.json` clks file: records are padded/truncated to
//!   the object's `hash-size` metadata (the reference test declares `'ssssssss'`, 6 bytes, as 8).
//! - **Base64**: ASCII whitespace inside a string (line-wrapped base64) is skipped; padding may be
//!   present or absent; non-zero trailing bits are accepted (Python's `b64decode` is as lenient).
//!   Any other non-alphabet character is an error: it means a corrupted upload.
//! - A record listing the same block twice is in that block once (see `packed::pack`).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

pub use super::blocking::BlockKey;
use super::blocking::{BLOCK_ID_EXPECTATION, BlockKeySeed};
use super::blocks_file::{self, parse_record_key};

pub const DEFAULT_MIN_ENCODING_SIZE: usize = 8;
pub const DEFAULT_MAX_ENCODING_SIZE: usize = 1024;

/// Encoding sizes (in bytes) a deployment accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeBounds {
    pub min: usize,
    pub max: usize,
}

impl Default for SizeBounds {
    fn default() -> Self {
        SizeBounds { min: DEFAULT_MIN_ENCODING_SIZE, max: DEFAULT_MAX_ENCODING_SIZE }
    }
}

impl SizeBounds {
    /// Checks an encoding size the way the reference's run-time check does: bounds first, then
    /// the multiple-of-8 rule (the Dice kernel works on 64-bit words).
    pub fn check(&self, size: usize) -> Result<(), DecodeError> {
        if size < self.min || size > self.max {
            return Err(DecodeError::SizeOutOfBounds { size, min: self.min, max: self.max });
        }
        if !size.is_multiple_of(8) {
            return Err(DecodeError::SizeNotMultipleOf8 { size });
        }
        Ok(())
    }
}

/// One party's decoded records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartyEncodings {
    pub encoding_size: usize,
    /// Record i = `data[i*size .. (i+1)*size]`.
    pub data: Vec<u8>,
    /// `None`: every record is in block "1"; `Some`: per record (may be empty = never compared).
    pub blocks: Option<Vec<Vec<BlockKey>>>,
}

impl PartyEncodings {
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.encoding_size).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn record(&self, i: usize) -> &[u8] {
        &self.data[i * self.encoding_size..(i + 1) * self.encoding_size]
    }
}

/// Why an upload cannot be decoded. Messages are written for the data provider.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("upload is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("upload has none of \"clks\", \"clknblocks\" or \"encodings\"")]
    NoEncodings,
    #[error("Missing CLKs information: the upload contains no records")]
    Empty,
    #[error("record {record} is not valid base64")]
    InvalidBase64 { record: usize },
    #[error("record {record} is malformed: {reason}")]
    BadRecord { record: usize, reason: String },
    #[error("Encoding size must be multiple of 8 bytes (64 bits): got {size} bytes")]
    SizeNotMultipleOf8 { size: usize },
    #[error("Encoding size out of configured bounds: {size} bytes is not within {min}..={max}")]
    SizeOutOfBounds { size: usize, min: usize, max: usize },
    #[error("too many records: at most {max} records fit one upload")]
    TooManyRecords { max: u64 },
    #[error("Invalid value for Hash-Count header: the record count must be at least 1")]
    ZeroCount,
    #[error(
        "Uploaded data did not match the expected size. Check request headers are correct: \
         {count} records of {size} bytes need {expected} bytes, the body has {actual}"
    )]
    BinaryLength { count: u64, size: usize, expected: String, actual: usize },
    #[error("encodings stored in the object store must be pulled and decoded as a file, not inline")]
    ExternalEncodings,
    #[error("inline encodings with an external blocks file (or the reverse) are not supported")]
    MixedExternalData,
    #[error("blocks key {key:?} is not a record index")]
    BadBlocksKey { key: String },
    #[error("blocks refers to encoding {index}, but the upload has only {count} encodings")]
    BlocksUnknownRecord { index: u64, count: usize },
    #[error("blocks lists record {index} more than once")]
    DuplicateBlocksKey { index: u64 },
    #[error("blocks file has {actual} entries but the encodings have {expected} records")]
    BlockCountMismatch { expected: usize, actual: usize },
    #[error("record {record}: {BLOCK_ID_EXPECTATION} was expected")]
    BadBlockId { record: usize },
    #[error("the blocks file is malformed {}: {reason}", match after { Some(r) => format!("after record {r}"), None => "before its first record".into() })]
    BlocksMalformed { after: Option<u64>, reason: String },
    #[error("the blocks file's line {line} is malformed: {reason}")]
    BlocksLine { line: u64, reason: String },
}

/// What a JSON upload body is, found without decoding the encodings (`pprl link` uses this to
/// hold files to the blocking rules; the api's request-time checks parse more, in
/// `service::api::uploads`, because they also need counts and ExternalData paths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadShape {
    Clks,
    ClknBlocks,
    /// `blocks`: `None` when absent, `Some(true)` when it is ExternalData.
    Encodings { external_encodings: bool, blocks: Option<bool> },
    None,
}

/// Classifies a JSON upload (priority `clks`, `clknblocks`, `encodings`, as the reference's
/// upload handler tests them).
pub fn upload_shape(body: &[u8]) -> Result<UploadShape, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let keys = de.deserialize_map(ShapeVisitor).map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(if keys.clks {
        UploadShape::Clks
    } else if keys.clknblocks {
        UploadShape::ClknBlocks
    } else if let Some(external_encodings) = keys.encodings {
        UploadShape::Encodings { external_encodings, blocks: keys.blocks }
    } else {
        UploadShape::None
    })
}

/// Decodes an inline JSON upload: `clks`, `clknblocks`, or `encodings` (+ optional inline
/// `blocks`). External data is refused ([`DecodeError::ExternalEncodings`],
/// [`DecodeError::MixedExternalData`]); the lenient rules are in the module doc.
pub fn decode_json_upload(body: &[u8], bounds: SizeBounds) -> Result<PartyEncodings, DecodeError> {
    let failure = RefCell::new(None);
    let parsed = {
        let visitor = UploadVisitor { bounds, failure: &failure };
        let mut de = serde_json::Deserializer::from_slice(body);
        de.deserialize_map(visitor).and_then(|u| de.end().map(|_| u))
    };
    let upload = match parsed {
        Ok(upload) => upload,
        Err(e) => return Err(failure.into_inner().unwrap_or_else(|| json_error(e))),
    };
    if let Some(sink) = upload.clks {
        return sink.finish(None, bounds);
    }
    if let Some((sink, blocks)) = upload.clknblocks {
        return sink.finish(Some(blocks), bounds);
    }
    match (upload.encodings, upload.blocks) {
        (None, _) => Err(DecodeError::NoEncodings),
        (Some(Encodings::External), None | Some(Blocks::External)) => Err(DecodeError::ExternalEncodings),
        (Some(Encodings::External), Some(Blocks::Inline(_)))
        | (Some(Encodings::Inline(_)), Some(Blocks::External)) => Err(DecodeError::MixedExternalData),
        (Some(Encodings::Inline(records)), None) => {
            let mut sink = RecordSink::new(None, bounds);
            for record in &records {
                sink.push_bytes(record)?;
            }
            sink.finish(None, bounds)
        }
        (Some(Encodings::Inline(records)), Some(Blocks::Inline(map))) => {
            let mut sink = RecordSink::new(None, bounds);
            let mut blocks = Vec::with_capacity(map.len());
            for (key, keys) in map {
                let index = parse_record_key(&key)?;
                let record = usize::try_from(index)
                    .ok()
                    .and_then(|i| records.get(i))
                    .ok_or(DecodeError::BlocksUnknownRecord { index, count: records.len() })?;
                sink.push_bytes(record)?;
                blocks.push(keys);
            }
            sink.finish(Some(blocks), bounds)
        }
    }
}

/// Decodes a raw binary upload: `count` records of `size` bytes; bytes past `count*size` are
/// ignored (the reference reads exactly that many). Every record is in block "1".
pub fn decode_binary(body: &[u8], count: u64, size: usize, bounds: SizeBounds) -> Result<PartyEncodings, DecodeError> {
    bounds.check(size)?;
    if count == 0 {
        return Err(DecodeError::ZeroCount);
    }
    if count > u64::from(u32::MAX) + 1 {
        return Err(DecodeError::TooManyRecords { max: u64::from(u32::MAX) + 1 });
    }
    // The declared count is checked against the body before anything is allocated for it.
    let needed = count.checked_mul(size as u64).filter(|&n| n <= body.len() as u64);
    let Some(needed) = needed else {
        return Err(DecodeError::BinaryLength {
            count,
            size,
            expected: count.checked_mul(size as u64).map_or_else(|| "more than 2^64".into(), |n| n.to_string()),
            actual: body.len(),
        });
    };
    Ok(PartyEncodings { encoding_size: size, data: body[..needed as usize].to_vec(), blocks: None })
}

/// Decodes an external `.json` encodings object `{"clks": [...]}`. The declared size (the
/// object's `hash-size` metadata) wins: records are zero-padded or truncated to it.
pub fn decode_clks_file(body: &[u8], declared_size: usize, bounds: SizeBounds) -> Result<PartyEncodings, DecodeError> {
    bounds.check(declared_size)?;
    let failure = RefCell::new(None);
    let parsed = {
        let visitor = ClksFileVisitor { size: declared_size, bounds, failure: &failure };
        let mut de = serde_json::Deserializer::from_slice(body);
        de.deserialize_map(visitor).and_then(|u| de.end().map(|_| u))
    };
    match parsed {
        Ok(Some(sink)) => sink.finish(None, bounds),
        Ok(None) => Err(DecodeError::Empty),
        Err(e) => Err(failure.into_inner().unwrap_or_else(|| json_error(e))),
    }
}

/// Decodes an external blocks file (blocklib output: `{"blocks": {"<idx>": [ids]}, "meta": ..}`)
/// held in memory into per-record block lists, with the streaming parser of
/// [`super::blocks_file`]. It must list exactly `count` records, each index below `count` and
/// none twice (the reference fails the upload otherwise). Each record's blocks go to the record
/// its key names. (`count` sizes nothing before the body has shown that many records.)
pub fn decode_blocks_file(body: &[u8], count: usize) -> Result<Vec<Vec<BlockKey>>, DecodeError> {
    let mut listed: Vec<(u64, Vec<BlockKey>)> = Vec::new();
    blocks_file::read_blocks(body, blocks_file::BlocksFormat::Json, |record, ids| {
        if record >= count as u64 {
            return Err(DecodeError::BlocksUnknownRecord { index: record, count });
        }
        listed.push((record, blocks_file::keys_of(ids)));
        Ok(())
    })?;
    if listed.len() != count {
        return Err(DecodeError::BlockCountMismatch { expected: count, actual: listed.len() });
    }
    listed.sort_unstable_by_key(|(record, _)| *record);
    if let Some(pair) = listed.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(DecodeError::DuplicateBlocksKey { index: pair[0].0 });
    }
    // Exactly `count` distinct in-range records: every slot, in order.
    Ok(listed.into_iter().map(|(_, keys)| keys).collect())
}

fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::Json(e.to_string())
}

const MAX_RECORDS: usize = u32::MAX as usize + 1;

/// Base64 as uploads use it; leniency documented in the module doc.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes one base64 string (skipping ASCII whitespace) into `out` (cleared first).
fn decode_base64_into(text: &str, out: &mut Vec<u8>, scratch: &mut String, record: usize) -> Result<(), DecodeError> {
    out.clear();
    let text = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        scratch.clear();
        scratch.extend(text.chars().filter(|c| !c.is_ascii_whitespace()));
        scratch.as_str()
    } else {
        text
    };
    BASE64.decode_vec(text, out).map_err(|_| DecodeError::InvalidBase64 { record })
}

/// Accumulates fixed-size records: the size is fixed up front (external files) or by the first
/// record (inline uploads); later records are zero-padded or truncated to it.
struct RecordSink {
    size: Option<usize>,
    data: Vec<u8>,
    count: usize,
    decoded: Vec<u8>,
    scratch: String,
    bounds: SizeBounds,
}

impl RecordSink {
    fn new(size: Option<usize>, bounds: SizeBounds) -> Self {
        RecordSink { size, data: Vec::new(), count: 0, decoded: Vec::new(), scratch: String::new(), bounds }
    }

    fn push_base64(&mut self, text: &str, record: usize) -> Result<(), DecodeError> {
        let mut decoded = std::mem::take(&mut self.decoded);
        let result = decode_base64_into(text, &mut decoded, &mut self.scratch, record)
            .and_then(|()| self.push_bytes(&decoded));
        self.decoded = decoded;
        result
    }

    fn push_bytes(&mut self, record_bytes: &[u8]) -> Result<(), DecodeError> {
        if self.count >= MAX_RECORDS {
            return Err(DecodeError::TooManyRecords { max: MAX_RECORDS as u64 });
        }
        let size = match self.size {
            Some(size) => size,
            None => {
                // The first record fixes the size; reject a bad one at once rather than after
                // buffering the whole upload.
                let size = record_bytes.len();
                self.bounds.check(size)?;
                self.size = Some(size);
                size
            }
        };
        let keep = record_bytes.len().min(size);
        self.data.extend_from_slice(&record_bytes[..keep]);
        self.data.resize(self.data.len() + (size - keep), 0);
        self.count += 1;
        Ok(())
    }

    fn finish(self, blocks: Option<Vec<Vec<BlockKey>>>, bounds: SizeBounds) -> Result<PartyEncodings, DecodeError> {
        let Some(size) = self.size.filter(|_| self.count > 0) else {
            return Err(DecodeError::Empty);
        };
        bounds.check(size)?;
        Ok(PartyEncodings { encoding_size: size, data: self.data, blocks })
    }
}

/// Inline `encodings`: raw decoded records (lengths may differ until the size rule applies).
enum Encodings {
    Inline(Vec<Vec<u8>>),
    External,
}

/// A `blocks` value: an inline map in JSON order, or ExternalData.
enum Blocks {
    Inline(Vec<(String, Vec<BlockKey>)>),
    External,
}

#[derive(Default)]
struct ParsedUpload {
    clks: Option<RecordSink>,
    clknblocks: Option<(RecordSink, Vec<Vec<BlockKey>>)>,
    encodings: Option<Encodings>,
    blocks: Option<Blocks>,
}

type Failure<'f> = &'f RefCell<Option<DecodeError>>;

/// Records a typed failure and aborts deserialization with a placeholder serde error; the
/// caller returns the typed one.
fn fail<E: de::Error>(failure: Failure<'_>, error: DecodeError) -> E {
    let message = error.to_string();
    failure.borrow_mut().get_or_insert(error);
    E::custom(message)
}

struct UploadVisitor<'f> {
    bounds: SizeBounds,
    failure: Failure<'f>,
}

impl<'de> Visitor<'de> for UploadVisitor<'_> {
    type Value = ParsedUpload;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"clks\", \"clknblocks\" or \"encodings\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParsedUpload, A::Error> {
        let mut upload = ParsedUpload::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "clks" if upload.clks.is_none() => {
                    let sink = RecordSink::new(None, self.bounds);
                    upload.clks = Some(map.next_value_seed(ClksSeed { sink, failure: self.failure })?);
                }
                "clknblocks" if upload.clknblocks.is_none() => {
                    let sink = RecordSink::new(None, self.bounds);
                    upload.clknblocks = Some(map.next_value_seed(ClknBlocksSeed { sink, failure: self.failure })?);
                }
                "encodings" if upload.encodings.is_none() => {
                    upload.encodings = Some(map.next_value_seed(EncodingsSeed { failure: self.failure })?);
                }
                "blocks" if upload.blocks.is_none() => {
                    upload.blocks = Some(map.next_value_seed(BlocksSeed { failure: self.failure })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(upload)
    }
}

/// `{"clks": [...]}` as an external file: only `clks` matters, the size is declared.
struct ClksFileVisitor<'f> {
    size: usize,
    bounds: SizeBounds,
    failure: Failure<'f>,
}

impl<'de> Visitor<'de> for ClksFileVisitor<'_> {
    type Value = Option<RecordSink>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"clks\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<RecordSink>, A::Error> {
        let mut clks = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "clks" && clks.is_none() {
                let sink = RecordSink::new(Some(self.size), self.bounds);
                clks = Some(map.next_value_seed(ClksSeed { sink, failure: self.failure })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(clks)
    }
}

/// A JSON string, borrowed when it has no escapes (the common case for base64).
struct Base64Text<'de>(std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Base64Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Base64Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Base64Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Base64Text(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Base64Text(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// Reads the next base64 record of a sequence, turning a non-string into a typed error.
fn next_base64<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    record: usize,
    failure: Failure<'_>,
) -> Result<Option<Base64Text<'de>>, A::Error> {
    seq.next_element::<Base64Text<'de>>().map_err(|e| {
        let reason = format!("expected a base64 string ({e})");
        fail(failure, DecodeError::BadRecord { record, reason })
    })
}

struct ClksSeed<'f> {
    sink: RecordSink,
    failure: Failure<'f>,
}

impl<'de> DeserializeSeed<'de> for ClksSeed<'_> {
    type Value = RecordSink;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RecordSink, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ClksSeed<'_> {
    type Value = RecordSink;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of base64 strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<RecordSink, A::Error> {
        let mut record = 0;
        while let Some(text) = next_base64(&mut seq, record, self.failure)? {
            self.sink.push_base64(&text.0, record).map_err(|e| fail(self.failure, e))?;
            record += 1;
        }
        Ok(self.sink)
    }
}

struct ClknBlocksSeed<'f> {
    sink: RecordSink,
    failure: Failure<'f>,
}

impl<'de> DeserializeSeed<'de> for ClknBlocksSeed<'_> {
    type Value = (RecordSink, Vec<Vec<BlockKey>>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ClknBlocksSeed<'_> {
    type Value = (RecordSink, Vec<Vec<BlockKey>>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of [base64, block id, ...] arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut blocks = Vec::new();
        let mut record = 0;
        loop {
            let element = ClknBlockRecord { sink: &mut self.sink, record, failure: self.failure };
            let Some(keys) = seq.next_element_seed(element)? else { break };
            blocks.push(keys);
            record += 1;
        }
        Ok((self.sink, blocks))
    }
}

/// One `[clk, block id, ...]` element.
struct ClknBlockRecord<'s, 'f> {
    sink: &'s mut RecordSink,
    record: usize,
    failure: Failure<'f>,
}

impl<'de> DeserializeSeed<'de> for ClknBlockRecord<'_, '_> {
    type Value = Vec<BlockKey>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<BlockKey>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ClknBlockRecord<'_, '_> {
    type Value = Vec<BlockKey>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array [base64, block id, ...]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<BlockKey>, A::Error> {
        let record = self.record;
        let Some(text) = next_base64(&mut seq, record, self.failure)? else {
            let reason = "empty array; expected a CLK followed by block ids".to_string();
            return Err(fail(self.failure, DecodeError::BadRecord { record, reason }));
        };
        self.sink.push_base64(&text.0, record).map_err(|e| fail(self.failure, e))?;
        let mut keys = Vec::new();
        while let Some(key) = seq
            .next_element_seed(BlockKeySeed)
            .map_err(|_| fail(self.failure, DecodeError::BadBlockId { record }))?
        {
            keys.push(key);
        }
        Ok(keys)
    }
}

struct EncodingsSeed<'f> {
    failure: Failure<'f>,
}

impl<'de> DeserializeSeed<'de> for EncodingsSeed<'_> {
    type Value = Encodings;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Encodings, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EncodingsSeed<'_> {
    type Value = Encodings;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of base64 strings or an external data object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Encodings, A::Error> {
        let mut records = Vec::new();
        let mut decoded = Vec::new();
        let mut scratch = String::new();
        while let Some(text) = next_base64(&mut seq, records.len(), self.failure)? {
            decode_base64_into(&text.0, &mut decoded, &mut scratch, records.len())
                .map_err(|e| fail(self.failure, e))?;
            if records.len() >= MAX_RECORDS {
                return Err(fail(self.failure, DecodeError::TooManyRecords { max: MAX_RECORDS as u64 }));
            }
            records.push(decoded.clone());
        }
        Ok(Encodings::Inline(records))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Encodings, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Encodings::External)
    }
}

/// A `blocks` value: an inline `{"<idx>": [ids]}` map in JSON order (duplicate keys keep the
/// first position and the last value, as a Python dict does), or ExternalData (an object with a
/// `"file"` key; record-index keys are digits, so the two cannot be confused).
struct BlocksSeed<'f> {
    failure: Failure<'f>,
}

impl<'de> DeserializeSeed<'de> for BlocksSeed<'_> {
    type Value = Blocks;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Blocks, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BlocksSeed<'_> {
    type Value = Blocks;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object mapping record indexes to arrays of block ids")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Blocks, A::Error> {
        let mut entries: Vec<(String, Vec<BlockKey>)> = Vec::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        let mut external = false;
        while let Some(key) = map.next_key::<String>()? {
            if external || key == "file" || key == "credentials" {
                external = true;
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let record = entries.len();
            let keys = map.next_value_seed(BlockListSeed { record, failure: self.failure })?;
            match positions.get(&key) {
                Some(&at) => entries[at].1 = keys,
                None => {
                    positions.insert(key.clone(), entries.len());
                    entries.push((key, keys));
                }
            }
        }
        Ok(if external { Blocks::External } else { Blocks::Inline(entries) })
    }
}

struct BlockListSeed<'f> {
    record: usize,
    failure: Failure<'f>,
}

impl<'de> DeserializeSeed<'de> for BlockListSeed<'_> {
    type Value = Vec<BlockKey>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<BlockKey>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BlockListSeed<'_> {
    type Value = Vec<BlockKey>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of block ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<BlockKey>, A::Error> {
        let mut keys = Vec::new();
        while let Some(key) = seq
            .next_element_seed(BlockKeySeed)
            .map_err(|_| fail(self.failure, DecodeError::BadBlockId { record: self.record }))?
        {
            keys.push(key);
        }
        Ok(keys)
    }
}

/// Which top-level keys an upload has, and the kinds of `encodings` / `blocks`.
#[derive(Default)]
struct ShapeKeys {
    clks: bool,
    clknblocks: bool,
    /// `Some(external)`.
    encodings: Option<bool>,
    /// `Some(external)`.
    blocks: Option<bool>,
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = ShapeKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ShapeKeys, A::Error> {
        let mut keys = ShapeKeys::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "clks" => {
                    map.next_value::<IgnoredAny>()?;
                    keys.clks = true;
                }
                "clknblocks" => {
                    map.next_value::<IgnoredAny>()?;
                    keys.clknblocks = true;
                }
                "encodings" => {
                    let kind = map.next_value_seed(KindSeed)?;
                    keys.encodings = Some(kind != ValueKind::Array);
                }
                "blocks" => {
                    let kind = map.next_value_seed(KindSeed)?;
                    keys.blocks = Some(kind == ValueKind::ExternalObject);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(keys)
    }
}

#[derive(PartialEq, Eq)]
enum ValueKind {
    Array,
    /// An object with a `"file"` key: ExternalData.
    ExternalObject,
    Object,
    Other,
}

struct KindSeed;

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = ValueKind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ValueKind, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KindSeed {
    type Value = ValueKind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ValueKind, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ValueKind::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ValueKind, A::Error> {
        let mut external = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            external |= key == "file";
            map.next_value::<IgnoredAny>()?;
        }
        Ok(if external { ValueKind::ExternalObject } else { ValueKind::Object })
    }

    fn visit_bool<E>(self, _: bool) -> Result<ValueKind, E> {
        Ok(ValueKind::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<ValueKind, E> {
        Ok(ValueKind::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<ValueKind, E> {
        Ok(ValueKind::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<ValueKind, E> {
        Ok(ValueKind::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<ValueKind, E> {
        Ok(ValueKind::Other)
    }
    fn visit_unit<E>(self) -> Result<ValueKind, E> {
        Ok(ValueKind::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    fn decode(body: &str) -> Result<PartyEncodings, DecodeError> {
        decode_json_upload(body.as_bytes(), SizeBounds::default())
    }

    #[test]
    fn clks_with_and_without_newlines() {
        let (r0, r1) = ([1u8; 16], [2u8; 16]);
        let wrapped = format!("{}\\n{}", &b64(&r1)[..10], &b64(&r1)[10..]);
        let body = format!(r#"{{"clks": ["{}", "{wrapped}"], "other": {{"x": [1]}}}}"#, b64(&r0));
        let enc = decode(&body).unwrap();
        assert_eq!((enc.encoding_size, enc.len(), enc.blocks.clone()), (16, 2, None));
        assert_eq!((enc.record(0), enc.record(1)), (&r0[..], &r1[..]));
        // Unpadded base64 is accepted too.
        let unpadded = b64(&[7u8; 8]).trim_end_matches('=').to_string();
        assert_eq!(decode(&format!(r#"{{"clks": ["{unpadded}"]}}"#)).unwrap().data, vec![7u8; 8]);
    }

    #[test]
    fn first_record_length_wins() {
        let body = format!(r#"{{"clks": ["{}", "{}", "{}"]}}"#, b64(&[9u8; 8]), b64(&[1u8; 4]), b64(&[2u8; 12]));
        let enc = decode(&body).unwrap();
        assert_eq!(enc.encoding_size, 8);
        assert_eq!(enc.record(1), &[1, 1, 1, 1, 0, 0, 0, 0], "shorter records are zero-padded");
        assert_eq!(enc.record(2), &[2u8; 8], "longer records are truncated");
    }

    #[test]
    fn clknblocks_with_string_and_integer_ids() {
        let body = format!(
            r#"{{"clknblocks": [["{}", "a", 3], ["{}"], ["{}", "3"]]}}"#,
            b64(&[1u8; 8]),
            b64(&[2u8; 8]),
            b64(&[3u8; 8])
        );
        let enc = decode(&body).unwrap();
        assert_eq!(enc.len(), 3);
        let blocks = enc.blocks.unwrap();
        assert_eq!(blocks[0], vec![BlockKey::of("a"), BlockKey::of("3")]);
        assert!(blocks[1].is_empty(), "a record without blocks is kept but never compared");
        assert_eq!(blocks[2], vec![BlockKey::of("3")]);
    }

    #[test]
    fn encodings_follow_blocks_map_order() {
        let e: Vec<String> = (0u8..4).map(|i| b64(&[i; 8])).collect();
        let body = format!(
            r#"{{"blocks": {{"2": ["x"], "0": [1, "y"], "3": []}}, "encodings": ["{}", "{}", "{}", "{}"]}}"#,
            e[0], e[1], e[2], e[3]
        );
        let enc = decode(&body).unwrap();
        assert_eq!(enc.len(), 3, "encoding 1 is missing from the map and dropped");
        assert_eq!((enc.record(0), enc.record(1), enc.record(2)), (&[2u8; 8][..], &[0u8; 8][..], &[3u8; 8][..]));
        let blocks = enc.blocks.unwrap();
        assert_eq!(blocks[0], vec![BlockKey::of("x")]);
        assert_eq!(blocks[1], vec![BlockKey::of("1"), BlockKey::of("y")]);
        assert!(blocks[2].is_empty());

        let plain = decode(&format!(r#"{{"encodings": ["{}", "{}"]}}"#, e[0], e[1])).unwrap();
        assert_eq!((plain.len(), plain.blocks), (2, None));
    }

    #[test]
    fn encodings_errors() {
        let e = b64(&[1u8; 8]);
        let unknown = format!(r#"{{"encodings": ["{e}"], "blocks": {{"5": ["x"]}}}}"#);
        assert_eq!(decode(&unknown), Err(DecodeError::BlocksUnknownRecord { index: 5, count: 1 }));
        let bad_key = format!(r#"{{"encodings": ["{e}"], "blocks": {{"zero": ["x"]}}}}"#);
        assert_eq!(decode(&bad_key), Err(DecodeError::BadBlocksKey { key: "zero".into() }));
        let external = r#"{"encodings": {"file": {"bucket": "b", "path": "p"}}}"#;
        assert_eq!(decode(external), Err(DecodeError::ExternalEncodings));
        let mixed = format!(r#"{{"encodings": ["{e}"], "blocks": {{"file": {{"bucket": "b", "path": "p"}}}}}}"#);
        assert_eq!(decode(&mixed), Err(DecodeError::MixedExternalData));
        let bad_id = format!(r#"{{"encodings": ["{e}"], "blocks": {{"0": [1.5]}}}}"#);
        assert_eq!(decode(&bad_id), Err(DecodeError::BadBlockId { record: 0 }));
    }

    #[test]
    fn json_upload_errors_are_typed_and_readable() {
        assert_eq!(decode(r#"{"clks": []}"#), Err(DecodeError::Empty));
        assert_eq!(decode(r#"{"nothing": 1}"#), Err(DecodeError::NoEncodings));
        assert!(matches!(decode("not json"), Err(DecodeError::Json(_))));
        assert!(matches!(decode(r#"["clks"]"#), Err(DecodeError::Json(_))));
        assert!(matches!(decode(r#"{"clks": ["AAAAAAAAAAA="]} trailing"#), Err(DecodeError::Json(_))));
        let bad = format!(r#"{{"clks": ["{}", "!!notbase64!!"]}}"#, b64(&[1u8; 8]));
        let err = decode(&bad).unwrap_err();
        assert_eq!(err, DecodeError::InvalidBase64 { record: 1 });
        assert_eq!(err.to_string(), "record 1 is not valid base64");
        assert!(matches!(decode(r#"{"clks": ["AAAAAAAAAAA=", 7]}"#), Err(DecodeError::BadRecord { record: 1, .. })));
        let twenty = decode(&format!(r#"{{"clks": ["{}"]}}"#, b64(&[1u8; 20]))).unwrap_err();
        assert_eq!(twenty, DecodeError::SizeNotMultipleOf8 { size: 20 });
        assert!(twenty.to_string().starts_with("Encoding size must be multiple of 8 bytes (64 bits)"));
        let four = decode(&format!(r#"{{"clks": ["{}"]}}"#, b64(&[1u8; 4]))).unwrap_err();
        assert_eq!(four, DecodeError::SizeOutOfBounds { size: 4, min: 8, max: 1024 });
        assert!(four.to_string().starts_with("Encoding size out of configured bounds"));
        let big = decode(&format!(r#"{{"clks": ["{}"]}}"#, b64(&[1u8; 1032]))).unwrap_err();
        assert!(matches!(big, DecodeError::SizeOutOfBounds { size: 1032, .. }));
        assert!(matches!(decode(r#"{"clknblocks": [[]]}"#), Err(DecodeError::BadRecord { record: 0, .. })));
        let bad_id = format!(r#"{{"clknblocks": [["{}", null]]}}"#, b64(&[1u8; 8]));
        assert_eq!(decode(&bad_id), Err(DecodeError::BadBlockId { record: 0 }));
    }

    #[test]
    fn upload_shapes() {
        let shape = |s: &str| upload_shape(s.as_bytes()).unwrap();
        assert_eq!(shape(r#"{"clks": []}"#), UploadShape::Clks);
        assert_eq!(shape(r#"{"clknblocks": [], "clks": []}"#), UploadShape::Clks);
        assert_eq!(shape(r#"{"clknblocks": [["x", 1]]}"#), UploadShape::ClknBlocks);
        assert_eq!(shape(r#"{"encodings": []}"#), UploadShape::Encodings { external_encodings: false, blocks: None });
        assert_eq!(
            shape(r#"{"encodings": {"file": {}}, "blocks": {"file": {"bucket": "b"}}}"#),
            UploadShape::Encodings { external_encodings: true, blocks: Some(true) }
        );
        assert_eq!(
            shape(r#"{"encodings": ["x"], "blocks": {"0": ["a"]}}"#),
            UploadShape::Encodings { external_encodings: false, blocks: Some(false) }
        );
        assert_eq!(shape(r#"{"other": 1}"#), UploadShape::None);
        assert!(matches!(upload_shape(b"[1]"), Err(DecodeError::Json(_))));
    }

    #[test]
    fn binary_uploads() {
        let body: Vec<u8> = (0..40).collect();
        let enc = decode_binary(&body, 2, 16, SizeBounds::default()).unwrap();
        assert_eq!((enc.len(), enc.encoding_size, enc.record(1)), (2, 16, &body[16..32]));
        assert!(matches!(decode_binary(&body, 3, 16, SizeBounds::default()), Err(DecodeError::BinaryLength { .. })));
        assert_eq!(decode_binary(&body, 0, 8, SizeBounds::default()), Err(DecodeError::ZeroCount));
        assert!(matches!(
            decode_binary(&body, u64::MAX / 2, 8, SizeBounds::default()),
            Err(DecodeError::TooManyRecords { .. })
        ));
        assert!(matches!(
            decode_binary(&body, u32::MAX as u64, 1024, SizeBounds::default()),
            Err(DecodeError::BinaryLength { .. })
        ));
        assert_eq!(decode_binary(&body, 1, 20, SizeBounds::default()), Err(DecodeError::SizeNotMultipleOf8 { size: 20 }));
        assert!(matches!(decode_binary(&body, 1, 16, SizeBounds { min: 32, max: 64 }), Err(DecodeError::SizeOutOfBounds { .. })));
        // The reference's e2e upload: 128000 bytes declared as 1000 × 8.
        let big = vec![0u8; 128_000];
        assert_eq!(decode_binary(&big, 1000, 8, SizeBounds::default()).unwrap().len(), 1000);
    }

    #[test]
    fn clks_file_declared_size_wins() {
        // 'ssssssss' is 6 bytes, declared as 8 (the reference's object-store test).
        let enc = decode_clks_file(br#"{"clks": ["ssssssss", "AAAAAAAAAAAAAAAAAAAA"]}"#, 8, SizeBounds::default()).unwrap();
        assert_eq!((enc.encoding_size, enc.len()), (8, 2));
        assert_eq!(&enc.record(0)[6..], &[0, 0]);
        assert_eq!(decode_clks_file(br#"{"clks": []}"#, 8, SizeBounds::default()), Err(DecodeError::Empty));
        assert_eq!(decode_clks_file(br#"{"x": 1}"#, 8, SizeBounds::default()), Err(DecodeError::Empty));
        assert_eq!(
            decode_clks_file(br#"{"clks": ["ssssssss"]}"#, 12, SizeBounds::default()),
            Err(DecodeError::SizeNotMultipleOf8 { size: 12 })
        );
    }

    #[test]
    fn blocks_files() {
        let body = br#"{"meta": {"source": "blocklib"}, "blocks": {"1": ["a", 2], "0": ["b"], "2": []}}"#;
        let blocks = decode_blocks_file(body, 3).unwrap();
        assert_eq!(blocks[0], vec![BlockKey::of("b")]);
        assert_eq!(blocks[1], vec![BlockKey::of("a"), BlockKey::of("2")]);
        assert!(blocks[2].is_empty());
        assert_eq!(decode_blocks_file(body, 4), Err(DecodeError::BlockCountMismatch { expected: 4, actual: 3 }));
        let out_of_range = br#"{"blocks": {"0": ["a"], "7": ["b"]}}"#;
        assert_eq!(decode_blocks_file(out_of_range, 2), Err(DecodeError::BlocksUnknownRecord { index: 7, count: 2 }));
        let duplicate = br#"{"blocks": {"0": ["a"], "00": ["b"]}}"#;
        assert_eq!(decode_blocks_file(duplicate, 2), Err(DecodeError::DuplicateBlocksKey { index: 0 }));
        assert!(matches!(decode_blocks_file(br#"{"meta": {}}"#, 0), Err(DecodeError::Json(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decoders_never_panic_on_bytes(body in prop::collection::vec(any::<u8>(), 0..300), count in any::<u64>(), size in 0usize..2048) {
            let _ = decode_json_upload(&body, SizeBounds::default());
            let _ = upload_shape(&body);
            let _ = decode_binary(&body, count, size, SizeBounds::default());
            let _ = decode_clks_file(&body, size, SizeBounds::default());
            let _ = decode_blocks_file(&body, size);
        }

        #[test]
        fn decoders_never_panic_on_jsonish_text(
            parts in prop::collection::vec(prop::sample::select(vec![
                "{", "}", "[", "]", ",", ":", "\"clks\"", "\"clknblocks\"", "\"encodings\"", "\"blocks\"",
                "\"file\"", "\"0\"", "\"1\"", "\"AAAAAAAAAAA=\"", "\"////////////\"", "\"a b\"", "1", "-3", "1.5",
                "null", "true", "\"\\n\"", "\"=\"",
            ]), 0..40),
        ) {
            let body = parts.concat();
            let _ = decode_json_upload(body.as_bytes(), SizeBounds::default());
            let _ = upload_shape(body.as_bytes());
            let _ = decode_clks_file(body.as_bytes(), 8, SizeBounds::default());
            let _ = decode_blocks_file(body.as_bytes(), 2);
        }

        #[test]
        fn clks_roundtrip(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 16), 1..20)) {
            let texts: Vec<String> = records.iter().map(|r| format!("\"{}\"", b64(r))).collect();
            let body = format!(r#"{{"clks": [{}]}}"#, texts.join(","));
            let enc = decode(&body).unwrap();
            prop_assert_eq!(enc.data, records.concat());
        }
    }
}
