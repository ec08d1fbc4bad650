//! Decoder fuzzing: every parser of user input and of our stored formats, fed generated and
//! mutated bytes, must return `Ok` or a typed error — never panic — and must never allocate
//! more than a small multiple of its input (a declared `Hash-Count`, block count or entry count
//! must not size an allocation before the bytes that back it are seen).
//!
//! Allocation is measured by a counting global allocator (hence a test binary of its own): for
//! each execution, the peak of live heap bytes above the baseline and the largest single
//! request, counted per thread (the decoders are single-threaded, and the test harness runs the
//! targets on parallel threads whose allocations must not be mixed up). A request over [`HARD_CAP`] is refused outright, so a decoder that trusts a header
//! aborts the test instead of swapping the machine.
//!
//! Inputs per target mix three generators: arbitrary bytes, mutations of valid samples (byte
//! flips, insertions, deletions, splices of "interesting" tokens such as huge numbers), and
//! JSON documents built from the formats' own keys. Proptest shrinks any failure to a minimal
//! input.
//!
//! `FUZZ_CASES` (default 2000) sets the executions per target; `hardening/fuzz_decoders.sh`
//! runs millions. Each target prints `fuzz <target>: <n> executions, peak <bytes>, largest
//! allocation <bytes>, <secs> s` (visible with `--nocapture`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use shared::engine::candidates::{self, Candidate, CandidateReader};
use shared::engine::encoding::{self, PartyEncodings, SizeBounds};
use shared::engine::packed::{self, BlockIndex, Entries};
use shared::engine::shard::{self, Shard, ShardTask};

// ---- the counting allocator ---------------------------------------------------------------------

/// No decoder may ask for more than this in one allocation, whatever its input says.
const HARD_CAP: usize = 1 << 30;

thread_local! {
    // Const-initialised cells without destructors: reading them never allocates, so the
    // allocator may use them, and they stay readable while a thread is torn down.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

impl Counting {
    fn grew(size: usize, by: usize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get().wrapping_add(by);
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
        Self::requested(size);
    }
    fn shrank(by: usize) {
        let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(by)));
    }
    fn requested(size: usize) {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }
}

// SAFETY: every call is forwarded to `System` with the caller's layout; the counters only
// observe sizes (and a refused request returns null, which callers must handle anyway).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP {
            Self::requested(layout.size());
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size(), layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP {
            Self::requested(layout.size());
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size(), layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > HARD_CAP {
            Self::requested(new_size);
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size, new_size - layout.size());
            } else {
                Self::shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap use of one execution: peak live bytes above the baseline, largest single request.
#[derive(Clone, Copy, Default)]
struct Usage {
    peak: usize,
    largest: usize,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    LARGEST.with(|largest| largest.set(0));
    let out = f();
    // Live bytes wrap below zero when a block allocated on another thread is freed here;
    // the peak is measured from this thread's baseline either way.
    let usage = Usage { peak: PEAK.with(Cell::get).wrapping_sub(base).min(usize::MAX / 2), largest: LARGEST.with(Cell::get) };
    (out, usage)
}

/// What a decoder may use for an input of `len` bytes: a constant (buffers, error messages)
/// plus a small multiple of the input. The multiple covers the largest legitimate expansion:
/// a block id written as `1,` (2 bytes) becomes a 16-byte key inside a per-record list, and
/// vectors grow by doubling.
fn allowed(len: usize) -> usize {
    (1 << 20) + 64 * len
}

fn check_usage(target: &str, len: usize, usage: Usage) -> Result<(), TestCaseError> {
    if usage.largest > HARD_CAP || usage.peak > allowed(len) {
        return Err(TestCaseError::fail(format!(
            "{target}: {len}-byte input used peak {} bytes (largest allocation {}); allowed {}",
            usage.peak,
            usage.largest,
            allowed(len)
        )));
    }
    Ok(())
}

// ---- input generators ---------------------------------------------------------------------------

/// Tokens worth splicing into any input: JSON structure, numbers at type limits, odd strings.
const TOKENS: &[&str] = &[
    "\"", "[", "]", "{", "}", ",", ":", "null", "true", "-1", "0", "1e309", "-0", "4294967296",
    "18446744073709551616", "99999999999999999999999999", "1.5", "\"\\u0000\"", "\"\\ud800\"",
    "\"AAAAAAAAAAA=\"", "\"====\"", "\" A A \"", "\"clks\"", "\"clknblocks\"", "\"encodings\"",
    "\"blocks\"", "\"file\"", "\"meta\"", "\"start\"", "\"end\"", "\"tasks\"", "[[]]", "{}",
];

#[derive(Clone, Debug)]
enum Mutation {
    Overwrite(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Splice(usize, usize),
    /// Overwrite 8 bytes at a position with a little-endian integer (length and count fields).
    Integer(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let big = prop_oneof![Just(0u64), Just(1), Just(u64::from(u32::MAX)), Just(u64::MAX), Just(1 << 40), any::<u64>()];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Overwrite(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Splice(p, t)),
        (any::<usize>(), big).prop_map(|(p, v)| Mutation::Integer(p, v)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
        match *m {
            Mutation::Overwrite(p, b) if !bytes.is_empty() => {
                let i = at(p, bytes.len());
                bytes[i] = b;
            }
            Mutation::Insert(p, b) => {
                let i = at(p, bytes.len() + 1);
                bytes.insert(i, b);
            }
            Mutation::Delete(p) if !bytes.is_empty() => {
                let i = at(p, bytes.len());
                bytes.remove(i);
            }
            Mutation::Splice(p, t) => {
                let i = at(p, bytes.len() + 1);
                bytes.splice(i..i, TOKENS[t].bytes());
            }
            Mutation::Integer(p, v) if bytes.len() >= 8 => {
                let i = at(p, bytes.len() - 7);
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// JSON documents over the formats' own keys, with leaves at type limits.
fn json_doc() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        Just("clks".to_string()),
        Just("clknblocks".to_string()),
        Just("encodings".to_string()),
        Just("blocks".to_string()),
        Just("file".to_string()),
        Just("bucket".to_string()),
        Just("path".to_string()),
        Just("credentials".to_string()),
        Just("meta".to_string()),
        Just("index".to_string()),
        Just("tasks".to_string()),
        Just("comparisons".to_string()),
        Just("party_a".to_string()),
        Just("party_b".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("start".to_string()),
        Just("end".to_string()),
        (0u64..12).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        ".{0,6}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (0u64..16).prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "[A-Za-z0-9+/=\\s]{0,24}".prop_map(serde_json::Value::from),
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    });
    value.prop_map(|v| serde_json::to_vec(&v).expect("a Value serializes"))
}

/// Arbitrary bytes, mutated samples, or (when `json`) generated JSON documents.
fn inputs(samples: Vec<Vec<u8>>, json: bool) -> BoxedStrategy<Vec<u8>> {
    let raw = prop::collection::vec(any::<u8>(), 0..300);
    let mutated = (prop::sample::select(samples), prop::collection::vec(mutation(), 0..6))
        .prop_map(|(sample, ms)| mutate(sample, &ms));
    if json {
        prop_oneof![1 => raw, 4 => mutated, 3 => json_doc()].boxed()
    } else {
        prop_oneof![1 => raw, 4 => mutated].boxed()
    }
}

/// A declared number (header, metadata, count) that is usually plausible and sometimes hostile.
fn declared(plausible: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => plausible,
        1 => Just(u64::from(u32::MAX) + 1),
        1 => Just(u64::MAX),
        1 => Just(1u64 << 40),
        1 => any::<u64>(),
    ]
}

// ---- valid samples ------------------------------------------------------------------------------

fn json_samples() -> Vec<Vec<u8>> {
    [
        r#"{"clks": ["AAAAAAAAAAA=", "AQEBAQEBAQE=", "/////////////////////w=="]}"#,
        r#"{"clknblocks": [["AAAAAAAAAAA=", "1", 2], ["AQEBAQEBAQE=", "x"], ["AQEBAQEBAQE="]]}"#,
        r#"{"encodings": ["AAAAAAAAAAA=", "AQEBAQEBAQE="], "blocks": {"1": ["a", 3], "0": ["a"]}}"#,
        r#"{"encodings": ["AAAAAAAA AAA=\n", "AQEBAQEBAQE"]}"#,
        r#"{"encodings": {"file": {"bucket": "b", "path": "p/0/e.json"}}, "blocks": {"file": {"bucket": "b", "path": "p/0/b.json"}}}"#,
        r#"{"clks": ["AAAAAAAAAAA="], "encodings": {"file": {"bucket": "b", "path": "x"}, "credentials": {}}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn blocks_file_samples() -> Vec<Vec<u8>> {
    [
        r#"{"blocks": {"0": ["a", "b"], "1": [1, 2], "2": []}, "meta": {"source": "blocklib"}}"#,
        r#"{"meta": null, "blocks": {"1": ["x"], "0": ["x"]}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn sample_encodings() -> PartyEncodings {
    let data: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(37)).collect();
    let blocks = vec![
        vec![encoding::BlockKey([1; 16])],
        vec![encoding::BlockKey([1; 16]), encoding::BlockKey([2; 16])],
        vec![],
        vec![encoding::BlockKey([3; 16])],
    ];
    PartyEncodings { encoding_size: 16, data, blocks: Some(blocks) }
}

fn candidate_samples() -> Vec<Vec<u8>> {
    let cands = vec![
        Candidate { score: 0.9, d0: 0, r0: 1, d1: 1, r1: 2 },
        Candidate { score: 0.8, d0: 0, r0: 3, d1: 2, r1: 0 },
        Candidate { score: f64::NAN, d0: u32::MAX, r0: u32::MAX, d1: 0, r1: 0 },
    ];
    let mut narrow = vec![candidates::FORMAT_VERSION, 4, 1, 2];
    narrow.extend_from_slice(&[0, 0, 0x40, 0x3f, 0, 1, 1, 0, 2, 0]);
    vec![candidates::encode(&cands), candidates::encode(&[]), narrow]
}

fn shard_samples() -> Vec<Vec<u8>> {
    let shard = Shard {
        index: 3,
        tasks: vec![
            ShardTask { party_a: 0, party_b: 1, a: 0..10, b: 5..20 },
            ShardTask { party_a: 0, party_b: 2, a: 10..12, b: 0..1 },
        ],
        comparisons: 152,
    };
    vec![serde_json::to_vec(&shard).expect("a shard serializes"), br#"{"index":0,"tasks":[],"comparisons":0}"#.to_vec()]
}

// ---- the runner ---------------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(2000)
}

/// Runs `body` on `cases()` inputs from `strategy`, then prints the target's figures.
fn fuzz<S: Strategy>(target: &str, strategy: S, body: impl Fn(S::Value) -> Result<Usage, TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        // Hostile inputs are the point: no local rejection filters are used, so none may fail.
        max_global_rejects: 0,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    // The runner takes an `Fn`: the figures are kept in cells.
    let executions = Cell::new(0u64);
    let worst = Cell::new(Usage::default());
    let result = runner.run(&strategy, |input| {
        executions.set(executions.get() + 1);
        let usage = body(input)?;
        let w = worst.get();
        worst.set(Usage { peak: w.peak.max(usage.peak), largest: w.largest.max(usage.largest) });
        Ok(())
    });
    let (executions, worst) = (executions.get(), worst.get());
    println!(
        "fuzz {target}: {executions} executions, peak {} bytes, largest allocation {} bytes, {:.1} s",
        worst.peak,
        worst.largest,
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
}

fn bounds() -> SizeBounds {
    SizeBounds::default()
}

// ---- user input -----------------------------------------------------------------------------------

#[test]
fn json_upload() {
    fuzz("encoding::decode_json_upload", inputs(json_samples(), true), |body| {
        let (out, usage) = measure(|| encoding::decode_json_upload(&body, bounds()));
        if let Ok(enc) = out {
            prop_assert!(enc.data.len() <= body.len(), "decoded more bytes than the body holds");
            prop_assert!(bounds().check(enc.encoding_size).is_ok());
            if let Some(blocks) = &enc.blocks {
                prop_assert_eq!(blocks.len(), enc.len());
            }
        }
        check_usage("decode_json_upload", body.len(), usage)?;
        Ok(usage)
    });
}

#[test]
fn upload_shape() {
    fuzz("encoding::upload_shape", inputs(json_samples(), true), |body| {
        let (_, usage) = measure(|| encoding::upload_shape(&body));
        check_usage("upload_shape", body.len(), usage)?;
        Ok(usage)
    });
}

#[test]
fn binary_upload() {
    let strategy = (inputs(vec![vec![0xA5; 64], (0u8..=255).collect()], false), declared(0..40), declared(0..1100));
    fuzz("encoding::decode_binary", strategy, |(body, count, size)| {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let (out, usage) = measure(|| encoding::decode_binary(&body, count, size, bounds()));
        if let Ok(enc) = out {
            prop_assert_eq!(enc.data.len() as u64, count * size as u64);
            prop_assert_eq!(enc.len() as u64, count);
        }
        check_usage("decode_binary", body.len(), usage)?;
        Ok(usage)
    });
}

// ---- object-store files named by a user ---------------------------------------------------------

#[test]
fn clks_file() {
    let strategy = (inputs(json_samples(), true), declared(0..40));
    fuzz("encoding::decode_clks_file", strategy, |(body, size)| {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let (out, usage) = measure(|| encoding::decode_clks_file(&body, size, bounds()));
        if let Ok(enc) = out {
            prop_assert_eq!(enc.encoding_size, size);
        }
        check_usage("decode_clks_file", body.len(), usage)?;
        Ok(usage)
    });
}

#[test]
fn blocks_file() {
    let strategy = (inputs(blocks_file_samples(), true), declared(0..6));
    fuzz("encoding::decode_blocks_file", strategy, |(body, count)| {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let (out, usage) = measure(|| encoding::decode_blocks_file(&body, count));
        if let Ok(per_record) = out {
            prop_assert_eq!(per_record.len(), count);
        }
        check_usage("decode_blocks_file", body.len(), usage)?;
        Ok(usage)
    });
}

// ---- our stored formats ---------------------------------------------------------------------------

#[test]
fn candidate_file() {
    fuzz("candidates::decode", inputs(candidate_samples(), false), |bytes| {
        let (out, usage) = measure(|| candidates::decode(&bytes));
        if let Ok(cands) = out {
            // The narrowest layout (f32 score, u8 dataset and record indices) takes 8 bytes an entry.
            prop_assert!(cands.len() <= bytes.len().saturating_sub(4) / 8, "more candidates than entries fit");
        }
        check_usage("candidates::decode", bytes.len(), usage)?;
        Ok(usage)
    });
}

/// A reader that hands out its bytes in chunks of varying size, as a network body does.
struct Trickle<'a> {
    bytes: &'a [u8],
    chunks: &'a [u8],
    turn: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.chunks.get(self.turn % self.chunks.len().max(1)).map_or(7, |&c| usize::from(c % 41) + 1);
        self.turn += 1;
        let n = want.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn candidate_reader() {
    let strategy = (inputs(candidate_samples(), false), prop::collection::vec(any::<u8>(), 1..8));
    fuzz("candidates::CandidateReader", strategy, |(bytes, chunks)| {
        let (whole, _) = measure(|| candidates::decode(&bytes));
        let (streamed, usage) = measure(|| -> Result<Vec<Candidate>, candidates::FormatError> {
            let reader = CandidateReader::new(Trickle { bytes: &bytes, chunks: &chunks, turn: 0 })?;
            reader.collect()
        });
        // Chunking must not change what is read (bitwise: NaN scores included).
        match (&whole, &streamed) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.len(), b.len());
                prop_assert!(a.iter().zip(b).all(|(x, y)| x.same_entry(y)), "chunked read differs");
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            _ => prop_assert!(false, "whole and chunked reads disagree: {:?} vs {:?}", whole.is_ok(), streamed.is_ok()),
        }
        check_usage("CandidateReader", bytes.len(), usage)?;
        Ok(usage)
    });
}

#[test]
fn block_index() {
    let (_, index) = packed::pack(&sample_encodings());
    let samples = vec![index.to_bytes(), BlockIndex { encoding_size: 8, record_count: 0, entry_count: 0, blocks: vec![] }.to_bytes()];
    fuzz("packed::BlockIndex::from_bytes", inputs(samples, false), |bytes| {
        let (out, usage) = measure(|| BlockIndex::from_bytes(&bytes));
        if let Ok(index) = out {
            // Whatever parses is exactly what serializes back.
            prop_assert_eq!(index.to_bytes(), bytes.clone());
        }
        check_usage("BlockIndex::from_bytes", bytes.len(), usage)?;
        Ok(usage)
    });
}

#[test]
fn packed_entries() {
    let (data, _) = packed::pack(&sample_encodings());
    let strategy = (
        inputs(vec![data, Vec::new()], false),
        prop_oneof![4 => Just(16usize), 2 => 0usize..80, 1 => any::<usize>()],
        declared(0..8),
        (declared(0..8), declared(0..8)),
    );
    fuzz("packed::Entries::new", strategy, |(bytes, size, first, (from, to))| {
        let (out, usage) = measure(|| {
            Entries::new(&bytes, size, first).map(|entries| {
                // Every accessor the kernels use, on every entry, and a sub-view.
                let mut sum = 0u64;
                for i in 0..entries.len() {
                    sum += u64::from(entries.record_index(i)) + u64::from(entries.popcount(i));
                    sum += entries.encoding(i).len() as u64;
                }
                let sliced = entries.slice(from..to).map(|s| s.len());
                (entries.len(), sum, sliced)
            })
        });
        if let Ok((len, _, sliced)) = out {
            prop_assert_eq!(len * packed::entry_stride(size), bytes.len());
            if let Some(n) = sliced {
                prop_assert_eq!(n as u64, to - from);
            }
        }
        check_usage("Entries::new", bytes.len(), usage)?;
        Ok(usage)
    });
}

#[test]
fn shard_description() {
    let strategy = (inputs(shard_samples(), true), prop_oneof![Just(8usize), Just(128), any::<usize>()]);
    fuzz("shard::Shard (serde_json)", strategy, |(bytes, size)| {
        let (out, usage) = measure(|| {
            serde_json::from_slice::<Shard>(&bytes).map(|shard| {
                // What compare does next with a shard it has read.
                let comparisons: u64 = shard.tasks.iter().map(ShardTask::comparisons).fold(0, u64::saturating_add);
                let spans: Vec<_> = shard.entry_spans().into_iter().map(|(p, r)| (p, shard::byte_range(&r, size))).collect();
                (comparisons, spans.len())
            })
        });
        let _ = out;
        check_usage("Shard", bytes.len(), usage)?;
        Ok(usage)
    });
}

/// The harness itself: an allocation sized by a declared number, not by the input, is seen and
/// refused by the bound (so a passing target really stayed within it).
#[test]
fn the_allocation_bound_catches_a_header_trusting_decoder() {
    let declared = 8usize << 20;
    let (v, usage) = measure(|| Vec::<u8>::with_capacity(declared));
    drop(v);
    assert!(usage.largest >= declared && usage.peak >= declared);
    assert!(check_usage("trusting", 16, usage).is_err());
    let (_, small) = measure(|| vec![0u8; 100]);
    assert!(check_usage("bounded", 16, small).is_ok());
}
