//! Blocks files, read as streams: which blocks each record of a party is in, for uploads whose
//! encodings come as a separate object (ExternalData, `pprl upload --blocks`).
//!
//! Two forms, one parser each:
//!
//! - **JSON** (blocklib's output, what the reference reads): `{"blocks": {"<record>": [ids],
//!   ...}, "meta": ...}`. Parsed incrementally from any [`Read`]: one record's ids at a time,
//!   never the whole file, so a 25-million-record file (≈ 1.5 GB) is read in constant memory.
//! - **NDJSON** (ours, for large uploads): one line per record, each line a JSON object with
//!   exactly that record's member, `{"<record>":[ids]}` — the members of the JSON form, one per
//!   line. A byte range of the file can be read on its own (its records are the lines that
//!   start inside it), so a large file splits cleanly into chunks; a malformed line names its
//!   line number and record. `pprl upload --blocks` converts the JSON form into it
//!   ([`write_ndjson_record`]) and names the object `*.ndjson`; [`BlocksFormat::of_path`] tells
//!   the two apart by that suffix. NDJSON rather than a binary form: block ids are arbitrary
//!   strings, a line stays human-readable, and it is what the JSON form's members already are.
//!
//! Ids are given to the caller in their canonical string form: integers as their decimal
//! string (Python's `str()`), which is what [`BlockKey::of`] hashes (so `3` and `"3"` name the
//! same block, as in the reference). Floats, booleans, null, arrays and objects are refused,
//! as [`super::blocking::BlockKeySeed`] refuses them.
//!
//! The parsers check the syntax and that every key is a record index; which indexes a party
//! must have (each below the record count, none twice, all of them) is the caller's
//! [`RecordTally`], since the caller knows the count.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{BufRead, Read, Write};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::blocking::BlockKey;
use super::encoding::DecodeError;

/// Longest NDJSON line accepted: one record's block ids (a blocklib record has a handful).
pub const MAX_NDJSON_LINE_BYTES: usize = 1 << 20;

/// Which form a blocks file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlocksFormat {
    Json,
    Ndjson,
}

impl BlocksFormat {
    /// `*.ndjson` is the line form; anything else is read as blocklib's JSON.
    pub fn of_path(path: &str) -> Self {
        if path.ends_with(".ndjson") { BlocksFormat::Ndjson } else { BlocksFormat::Json }
    }
}

/// Reads every record of a blocks file, calling `each(record, ids)` in file order; returns how
/// many records it read. An error of `each` stops the reading and is returned as is. The
/// reader is buffered by the caller (a byte slice is; wrap files and streams in a `BufReader`),
/// so that an in-memory body costs no buffer.
pub fn read_blocks<R: BufRead>(
    reader: R,
    format: BlocksFormat,
    mut each: impl FnMut(u64, &[String]) -> Result<(), DecodeError>,
) -> Result<u64, DecodeError> {
    match format {
        BlocksFormat::Json => read_json(reader, &mut each),
        BlocksFormat::Ndjson => read_ndjson(reader, &mut each),
    }
}

/// The block keys of a record's ids.
pub fn keys_of(ids: &[String]) -> Vec<BlockKey> {
    ids.iter().map(|id| BlockKey::of(id)).collect()
}

/// Writes one record as an NDJSON line (`{"<record>":[ids]}\n`).
pub fn write_ndjson_record<W: Write>(out: &mut W, record: u64, ids: &[String]) -> std::io::Result<()> {
    write!(out, "{{\"{record}\":")?;
    serde_json::to_writer(&mut *out, ids)?;
    out.write_all(b"}\n")
}

/// Which record indexes a party's blocks file has listed so far (one bit per record), so that
/// a file listing a record twice, one past the party, or not every record is refused.
pub struct RecordTally {
    seen: Vec<u64>,
    count: u64,
    listed: u64,
}

impl RecordTally {
    /// For a party of `count` records (count / 8 bytes: callers check `count` against the
    /// encodings' size first).
    pub fn new(count: u64) -> Self {
        RecordTally { seen: vec![0; count.div_ceil(64) as usize], count, listed: 0 }
    }

    /// Notes `record`; refuses it when it is out of range or already listed.
    pub fn note(&mut self, record: u64) -> Result<(), DecodeError> {
        if record >= self.count {
            return Err(DecodeError::BlocksUnknownRecord { index: record, count: self.count as usize });
        }
        let (word, bit) = ((record / 64) as usize, 1u64 << (record % 64));
        if self.seen[word] & bit != 0 {
            return Err(DecodeError::DuplicateBlocksKey { index: record });
        }
        self.seen[word] |= bit;
        self.listed += 1;
        Ok(())
    }

    /// Every record listed exactly once.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.listed != self.count {
            return Err(DecodeError::BlockCountMismatch { expected: self.count as usize, actual: self.listed as usize });
        }
        Ok(())
    }
}

pub(super) fn parse_record_key(key: &str) -> Result<u64, DecodeError> {
    // Python's int() accepts more (whitespace, signs); blocklib and every client write digits.
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::BadBlocksKey { key: key.to_string() });
    }
    key.parse::<u64>().map_err(|_| DecodeError::BadBlocksKey { key: key.to_string() })
}

// ---- JSON ----------------------------------------------------------------------------------------

/// Where the JSON parser is: the last record read (for the message of a malformed file), and
/// the typed failure of a record or of the caller, which serde only carries as text.
struct Progress {
    last: Cell<Option<u64>>,
    records: Cell<u64>,
    failure: RefCell<Option<DecodeError>>,
}

impl Progress {
    fn fail<E: de::Error>(&self, error: DecodeError) -> E {
        let message = error.to_string();
        self.failure.borrow_mut().get_or_insert(error);
        E::custom(message)
    }
}

type Each<'a> = &'a mut dyn FnMut(u64, &[String]) -> Result<(), DecodeError>;

fn read_json<R: BufRead>(reader: R, each: Each<'_>) -> Result<u64, DecodeError> {
    let progress = Progress { last: Cell::new(None), records: Cell::new(0), failure: RefCell::new(None) };
    let found = {
        let mut de = serde_json::Deserializer::from_reader(reader);
        de.deserialize_map(FileVisitor { each, progress: &progress }).and_then(|found| de.end().map(|()| found))
    };
    match found {
        Ok(true) => Ok(progress.records.get()),
        Ok(false) => Err(DecodeError::Json("a blocks file needs a top-level \"blocks\" object".into())),
        Err(e) => Err(progress.failure.into_inner().unwrap_or_else(|| DecodeError::BlocksMalformed {
            after: progress.last.get(),
            reason: e.to_string(),
        })),
    }
}

struct FileVisitor<'a, 'p> {
    each: Each<'a>,
    progress: &'p Progress,
}

impl<'de> Visitor<'de> for FileVisitor<'_, '_> {
    /// Whether the file had a `blocks` object.
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"blocks\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        let each = self.each;
        while let Some(key) = map.next_key::<String>()? {
            if key == "blocks" && !found {
                map.next_value_seed(RecordsSeed { each: &mut *each, progress: self.progress })?;
                found = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The `blocks` object: record after record, each handed to the caller as soon as it is read.
struct RecordsSeed<'a, 'p> {
    each: Each<'a>,
    progress: &'p Progress,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object mapping record indexes to arrays of block ids")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let progress = self.progress;
        while let Some(key) = map.next_key::<String>()? {
            let record = record_of_key(&key).map_err(|e| progress.fail(e))?;
            let ids = map.next_value_seed(IdsSeed { record }).map_err(|e| {
                if is_not_an_id(&e) { progress.fail(DecodeError::BadBlockId { record: record as usize }) } else { e }
            })?;
            (self.each)(record, &ids).map_err(|e| progress.fail(e))?;
            progress.last.set(Some(record));
            progress.records.set(progress.records.get() + 1);
        }
        Ok(())
    }
}

fn record_of_key(key: &str) -> Result<u64, DecodeError> {
    if key == "file" || key == "credentials" {
        return Err(DecodeError::Json("a blocks file cannot point to external data".into()));
    }
    parse_record_key(key)
}

/// One record's ids.
struct IdsSeed {
    record: u64,
}

impl<'de> DeserializeSeed<'de> for IdsSeed {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for IdsSeed {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of block ids for record {}", self.record)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut ids = Vec::new();
        while let Some(id) = seq.next_element::<BlockIdText>()? {
            ids.push(id.0);
        }
        Ok(ids)
    }
}

/// serde carries a value's error only as text: ours is told apart by its message.
fn is_not_an_id<E: de::Error>(e: &E) -> bool {
    e.to_string().starts_with(NOT_AN_ID)
}

const NOT_AN_ID: &str = "not a block id";

/// A block id in its canonical string form (see the module doc).
struct BlockIdText(String);

impl<'de> de::Deserialize<'de> for BlockIdText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'v> Visitor<'v> for IdVisitor {
            type Value = BlockIdText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a block id (a string or an integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BlockIdText, E> {
                Ok(BlockIdText(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<BlockIdText, E> {
                Ok(BlockIdText(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BlockIdText, E> {
                Ok(BlockIdText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BlockIdText, E> {
                Ok(BlockIdText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<BlockIdText, E> {
                Err(E::custom(NOT_AN_ID))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<BlockIdText, E> {
                Err(E::custom(NOT_AN_ID))
            }
            fn visit_unit<E: de::Error>(self) -> Result<BlockIdText, E> {
                Err(E::custom(NOT_AN_ID))
            }
            fn visit_seq<A: SeqAccess<'v>>(self, _: A) -> Result<BlockIdText, A::Error> {
                Err(de::Error::custom(NOT_AN_ID))
            }
            fn visit_map<A: MapAccess<'v>>(self, _: A) -> Result<BlockIdText, A::Error> {
                Err(de::Error::custom(NOT_AN_ID))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

// ---- NDJSON --------------------------------------------------------------------------------------

fn read_ndjson<R: BufRead>(mut reader: R, each: Each<'_>) -> Result<u64, DecodeError> {
    let mut line = Vec::new();
    let (mut number, mut records) = (0u64, 0u64);
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_NDJSON_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| DecodeError::Json(format!("reading the blocks file: {e}")))?;
        if read == 0 {
            return Ok(records);
        }
        number += 1;
        if line.len() > MAX_NDJSON_LINE_BYTES {
            return Err(DecodeError::BlocksLine { line: number, reason: format!("longer than {MAX_NDJSON_LINE_BYTES} bytes") });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (record, ids) = parse_ndjson_line(&line).map_err(|reason| DecodeError::BlocksLine { line: number, reason })?;
        each(record, &ids)?;
        records += 1;
    }
}

/// One line: `{"<record>": [ids]}`, exactly one member.
fn parse_ndjson_line(line: &[u8]) -> Result<(u64, Vec<String>), String> {
    /// The line's own fault, which serde carries only as text.
    struct LineVisitor<'f>(&'f RefCell<Option<String>>);
    impl LineVisitor<'_> {
        fn fail<E: de::Error>(&self, reason: String) -> E {
            let error = E::custom(&reason);
            self.0.borrow_mut().get_or_insert(reason);
            error
        }
    }
    impl<'de> Visitor<'de> for LineVisitor<'_> {
        type Value = (u64, Vec<String>);
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object with one record: {\"<record>\": [block ids]}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let Some(key) = map.next_key::<String>()? else {
                return Err(self.fail("an empty object; each line lists one record".into()));
            };
            let record = parse_record_key(&key).map_err(|e| self.fail(e.to_string()))?;
            let ids = map.next_value_seed(IdsSeed { record }).map_err(|e| {
                if is_not_an_id(&e) { self.fail(DecodeError::BadBlockId { record: record as usize }.to_string()) } else { e }
            })?;
            if map.next_key::<IgnoredAny>()?.is_some() {
                return Err(self.fail(format!("record {record}: more than one record on the line")));
            }
            Ok((record, ids))
        }
    }
    let failure = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(line);
    let parsed = de.deserialize_map(LineVisitor(&failure)).and_then(|r| de.end().map(|()| r));
    parsed.map_err(|e| failure.into_inner().unwrap_or_else(|| format!("not a JSON object of one record ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(body: &str, format: BlocksFormat) -> Result<Vec<(u64, Vec<String>)>, DecodeError> {
        let mut out = Vec::new();
        read_blocks(body.as_bytes(), format, |r, ids| {
            out.push((r, ids.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn json_and_ndjson_forms_read_the_same_records() {
        let json = r#"{"meta": {"x": [1, {"y": null}]}, "blocks": {"1": ["a", 2], "0": ["b"], "2": []}}"#;
        let ndjson = "{\"1\":[\"a\",2]}\n{\"0\": [\"b\"]}\n\n{\"2\":[]}";
        let expected = vec![(1, ids(&["a", "2"])), (0, ids(&["b"])), (2, vec![])];
        assert_eq!(collect(json, BlocksFormat::Json).unwrap(), expected);
        assert_eq!(collect(ndjson, BlocksFormat::Ndjson).unwrap(), expected);
        // What the converter writes reads back as the same records.
        let mut converted = Vec::new();
        for (r, list) in &expected {
            write_ndjson_record(&mut converted, *r, list).unwrap();
        }
        assert_eq!(collect(std::str::from_utf8(&converted).unwrap(), BlocksFormat::Ndjson).unwrap(), expected);
        assert_eq!(keys_of(&ids(&["3"])), vec![BlockKey::of("3")]);
        assert_eq!(BlocksFormat::of_path("p/blocks.ndjson"), BlocksFormat::Ndjson);
        assert_eq!(BlocksFormat::of_path("p/blocks.json"), BlocksFormat::Json);
    }

    #[test]
    fn a_file_malformed_halfway_names_the_last_good_record() {
        let mut body = String::from("{\"blocks\": {");
        for r in 0..1000 {
            body.push_str(&format!("\"{r}\": [\"x{r}\", {r}],"));
        }
        body.push_str("\"1000\": [\"x\" \"y\"]}}");
        let mut seen = 0;
        let err = read_blocks(body.as_bytes(), BlocksFormat::Json, |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(seen, 1000, "the records before the fault were streamed");
        assert!(matches!(err, DecodeError::BlocksMalformed { after: Some(999), .. }), "{err:?}");
        assert!(err.to_string().contains("after record 999"), "{err}");

        let err = collect(r#"{"blocks": {"0": ["a"], "1": [1.5]}}"#, BlocksFormat::Json).unwrap_err();
        assert_eq!(err, DecodeError::BadBlockId { record: 1 });
        let err = collect(r#"{"blocks": {"0": ["a"], "x": []}}"#, BlocksFormat::Json).unwrap_err();
        assert_eq!(err, DecodeError::BadBlocksKey { key: "x".into() });
        let err = collect(r#"{"blocks": {"file": {"path": "p"}}}"#, BlocksFormat::Json).unwrap_err();
        assert!(err.to_string().contains("cannot point to external data"), "{err}");
        assert!(matches!(collect(r#"{"meta": {}}"#, BlocksFormat::Json), Err(DecodeError::Json(_))));
        assert!(matches!(collect("{\"blocks\": {\"0\": []}", BlocksFormat::Json), Err(DecodeError::BlocksMalformed { after: Some(0), .. })));

        let err = collect("{\"0\":[\"a\"]}\n{\"1\":[\"b\"]\n{\"2\":[]}\n", BlocksFormat::Ndjson).unwrap_err();
        assert!(matches!(err, DecodeError::BlocksLine { line: 2, .. }), "{err:?}");
        let err = collect("{\"0\":[\"a\"]}\n{\"1\":[true]}\n", BlocksFormat::Ndjson).unwrap_err();
        assert!(err.to_string().contains("line 2") && err.to_string().contains("record 1"), "{err}");
        let err = collect("{\"0\":[\"a\"],\"1\":[]}\n", BlocksFormat::Ndjson).unwrap_err();
        assert!(err.to_string().contains("more than one record"), "{err}");
        let long = format!("{{\"0\":[\"{}\"]}}\n", "a".repeat(MAX_NDJSON_LINE_BYTES));
        assert!(matches!(collect(&long, BlocksFormat::Ndjson), Err(DecodeError::BlocksLine { line: 1, .. })));
    }

    #[test]
    fn the_tally_wants_every_record_once() {
        let mut tally = RecordTally::new(3);
        tally.note(2).unwrap();
        tally.note(0).unwrap();
        assert_eq!(tally.note(0), Err(DecodeError::DuplicateBlocksKey { index: 0 }));
        assert_eq!(tally.note(3), Err(DecodeError::BlocksUnknownRecord { index: 3, count: 3 }));
        assert_eq!(tally.finish(), Err(DecodeError::BlockCountMismatch { expected: 3, actual: 2 }));
        tally.note(1).unwrap();
        tally.finish().unwrap();
    }
}
