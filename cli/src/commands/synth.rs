//! `pprl synth`: a deterministic generator of two parties' CLKs with a known overlap, so the
//! benchmarks can run at any size without downloading data and still measure accuracy.
//!
//! The model is calibrated on the project's FEBRL4 sample (clkhash CLKs, `data/febrl4/`):
//!
//! - **Density.** Each record sets each bit with its own density `p ~ U[0.4, 0.6]` (FEBRL4:
//!   0.44–0.62, mean 0.57). Bits are not equally likely: bit `i` has a fixed weight
//!   `w_i = 1 + SKEW·(2u_i − 1)` shared by every record (common bigrams light the same bits in
//!   everybody's filter). That makes two unrelated records score ≈0.6 instead of ≈0.5, as
//!   unrelated FEBRL4 records do (median 0.61, 99.9th percentile 0.70).
//! - **Matches.** A record of B that is the same entity as a record of A is A's CLK with a
//!   fraction `r` of its set bits moved to unset positions, so its Dice score with the original is
//!   exactly `1 − r`. `r` follows the FEBRL4 distribution of true-match scores (the table
//!   [`TRUE_MATCH_DICE_QUANTILES`]): about half score ≥ 0.94, 5% score below 0.80.
//! - **Hard non-matches.** A fraction of B's other records are "relatives" of a random A record
//!   (scores 0.60–0.85), so a low threshold admits false positives and the greedy solver has
//!   competing candidates, as with real data.
//! - **Blocks** (optional, P-Sig-like): every entity has `K` signatures, each a block id drawn
//!   from a universe sized so that a block holds on average `--block-size` records of the larger
//!   party. A corrupted copy loses each signature with probability `min(1, 2r)` (a typo changes
//!   the signature too), relatives keep each with probability 1/2.
//!
//! Determinism: every record draws from its own SplitMix64 stream keyed by (seed, party, index),
//! so the output is identical for the same arguments on any machine and thread count.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use rayon::prelude::*;
use serde_json::json;

use super::wants_help;
use crate::args::{Args, UsageError};

pub const USAGE: &str = "\
Usage: pprl synth --records-a N --records-b M --out DIR [options]

Generates two parties' CLKs with a known overlap (deterministic in --seed) and writes, in DIR:
  a.bin, b.bin             raw encodings (Hash-Count x Hash-Size), with --format binary (default)
  a.json, b.json           {\"clks\":[...]} or, with --blocks, {\"clknblocks\":[[clk, id...],...]}
                           (--format json)
  a.blocks.json, b.blocks.json
                           {\"blocks\":{\"<record>\":[ids]}} with --format binary and --blocks
                           (the external blocks file the service and pprl link --blocks-file read)
  truth.csv                the true matches, 'a,b' record indices (header row_index_a,row_index_b)
  synth.json               the arguments and measured statistics (density, block sizes,
                           blocked comparisons, matches reachable through blocking)

Options:
  --records-a N        records of party A (required)
  --records-b M        records of party B (required)
  --overlap K          entities in both parties (default: half the smaller party)
  --seed S             random seed (default 1)
  --bits B             encoding size in bits, a multiple of 64 (default 1024)
  --format F           binary (default) | json
  --blocks K           give every record K block ids (P-Sig-like; default 0 = no blocks)
  --block-size X       mean records of the larger party per block (default 1.0)
  --relatives F        fraction of B's non-matching records that are near-duplicates of an A
                       record, scoring 0.60-0.85 (default 0.05)
  --out DIR            output directory (created if missing; required)
";

/// FEBRL4's true-match Dice scores (`data/febrl4`, 5,000 pairs): (quantile, score). Measured
/// with the pair list in `ground_truth.csv`; the 0 and 1 ends are our choice (the sample's
/// minimum is 0.70; 1% of its pairs are exact copies).
const TRUE_MATCH_DICE_QUANTILES: &[(f64, f64)] = &[
    (0.00, 0.70),
    (0.01, 0.758),
    (0.05, 0.802),
    (0.10, 0.832),
    (0.20, 0.882),
    (0.30, 0.904),
    (0.50, 0.941),
    (0.70, 0.967),
    (0.90, 0.989),
    (0.99, 1.0),
    (1.00, 1.0),
];

/// Spread of the per-bit weights: 0.81 makes unrelated records score ≈0.6 (see the module doc:
/// E[dice] ≈ E[w²]/E[w] = 1 + SKEW²/3 times the density).
const SKEW: f64 = 0.81;
/// Relatives' corruption: r in [0.15, 0.40], i.e. Dice 0.60–0.85.
const RELATIVE_CORRUPTION: (f64, f64) = (0.15, 0.40);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Binary,
    Json,
}

#[derive(Clone, Debug)]
struct Options {
    records_a: usize,
    records_b: usize,
    overlap: usize,
    seed: u64,
    bits: usize,
    format: Format,
    blocks_per_record: usize,
    block_size: f64,
    relatives: f64,
    out: PathBuf,
}

fn parse(argv: &[String]) -> Result<Options, UsageError> {
    let mut args = Args::parse("synth", argv, &[])?;
    let usage = |msg: String| UsageError::new("synth", msg);
    let records_a: usize =
        args.parsed("records-a", "a number of records")?.ok_or_else(|| usage("--records-a is required".into()))?;
    let records_b: usize =
        args.parsed("records-b", "a number of records")?.ok_or_else(|| usage("--records-b is required".into()))?;
    if records_a == 0 || records_b == 0 {
        return Err(usage("--records-a and --records-b must be at least 1".into()));
    }
    // Record indices travel as u32 through the engine.
    if records_a > u32::MAX as usize || records_b > u32::MAX as usize {
        return Err(usage(format!("at most {} records per party", u32::MAX)));
    }
    let overlap = args.parsed("overlap", "a number of records")?.unwrap_or(records_a.min(records_b) / 2);
    if overlap > records_a.min(records_b) {
        return Err(usage(format!("--overlap {overlap} is larger than the smaller party")));
    }
    let seed = args.parsed("seed", "an unsigned 64-bit integer")?.unwrap_or(1);
    let bits: usize = args.parsed("bits", "a number of bits")?.unwrap_or(1024);
    if bits == 0 || !bits.is_multiple_of(64) || bits > 8 * 1024 {
        return Err(usage(format!("--bits must be a positive multiple of 64, at most 8192, got {bits}")));
    }
    let format = match args.value("format").as_deref() {
        None | Some("binary") => Format::Binary,
        Some("json") => Format::Json,
        Some(other) => return Err(usage(format!("--format must be binary or json, got '{other}'"))),
    };
    let blocks_per_record = args.parsed("blocks", "a number of block ids per record")?.unwrap_or(0);
    if blocks_per_record > 64 {
        return Err(usage("--blocks is at most 64 block ids per record".into()));
    }
    let block_size: f64 = args.parsed("block-size", "a positive number")?.unwrap_or(1.0);
    if !(block_size.is_finite() && block_size > 0.0) {
        return Err(usage(format!("--block-size must be a positive number, got {block_size}")));
    }
    let relatives: f64 = args.parsed("relatives", "a fraction between 0 and 1")?.unwrap_or(0.05);
    if !(0.0..=1.0).contains(&relatives) {
        return Err(usage(format!("--relatives must be between 0 and 1, got {relatives}")));
    }
    let out = PathBuf::from(args.value("out").ok_or_else(|| usage("--out is required".into()))?);
    let rest = args.finish()?;
    if !rest.is_empty() {
        return Err(usage(format!("unexpected argument '{}'", rest[0])));
    }
    Ok(Options {
        records_a,
        records_b,
        overlap,
        seed,
        bits,
        format,
        blocks_per_record,
        block_size,
        relatives,
        out,
    })
}

// ---- randomness --------------------------------------------------------------------------------

/// SplitMix64: tiny, fast, and good enough for test data; one stream per record.
struct Rng(u64);

impl Rng {
    /// The stream for (seed, tag, index): tags keep A's, B's and the planner's streams apart.
    fn stream(seed: u64, tag: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ tag.wrapping_mul(0xA076_1D64_78BD_642F));
        r.0 ^= r.next_u64().wrapping_add(index.wrapping_mul(0xE703_7ED1_A0B4_28DB));
        r
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); n > 0.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

const TAG_BIT_WEIGHTS: u64 = 1;
const TAG_ENTITY: u64 = 2;
const TAG_B_RECORD: u64 = 3;
const TAG_LAYOUT: u64 = 4;

// ---- the model ---------------------------------------------------------------------------------

/// Where a record of B comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The same entity as record `a` of A, corrupted.
    Copy { a: u32 },
    /// A different entity that resembles record `a` of A.
    Relative { a: u32 },
    /// An entity A does not have.
    Fresh { entity: u64 },
}

struct Model {
    bits: usize,
    /// Per-bit probability scale (mean 1): see the module doc.
    bit_weights: Vec<f64>,
    blocks_per_record: usize,
    /// Block ids per signature position; signature j of a record is `j * universe + value`.
    block_universe: u64,
    seed: u64,
}

/// One generated record: its CLK and its block ids.
struct Record {
    clk: Vec<u8>,
    blocks: Vec<u64>,
}

impl Model {
    fn new(opts: &Options) -> Self {
        let mut rng = Rng::stream(opts.seed, TAG_BIT_WEIGHTS, 0);
        let bit_weights = (0..opts.bits).map(|_| 1.0 + SKEW * (2.0 * rng.unit() - 1.0)).collect();
        Model {
            bits: opts.bits,
            bit_weights,
            blocks_per_record: opts.blocks_per_record,
            block_universe: Self::universe(opts),
            seed: opts.seed,
        }
    }

    /// Block ids per signature position: a block holds `--block-size` records of the larger
    /// party on average.
    fn universe(opts: &Options) -> u64 {
        let larger = opts.records_a.max(opts.records_b) as f64;
        (larger / opts.block_size).ceil().max(1.0) as u64
    }

    /// An entity's own record: bit density p ~ U[0.4, 0.6], skewed by the bit weights.
    fn entity(&self, entity: u64) -> Record {
        let mut rng = Rng::stream(self.seed, TAG_ENTITY, entity);
        let density = 0.4 + 0.2 * rng.unit();
        let mut clk = vec![0u8; self.bits / 8];
        for (i, w) in self.bit_weights.iter().enumerate() {
            if rng.unit() < (density * w).min(1.0) {
                clk[i / 8] |= 0x80 >> (i % 8);
            }
        }
        let blocks = (0..self.blocks_per_record as u64)
            .map(|j| j * self.block_universe + rng.below(self.block_universe))
            .collect();
        Record { clk, blocks }
    }

    /// Record `index` of B.
    #[cfg(test)]
    fn b_record(&self, index: u64, source: Source) -> Record {
        self.b_record_traced(index, source).0
    }

    /// Record `index` of B and, when it is a true match, the blocks of its A record (for the
    /// statistics, without generating A's record a second time).
    fn b_record_traced(&self, index: u64, source: Source) -> (Record, Option<Vec<u64>>) {
        let mut rng = Rng::stream(self.seed, TAG_B_RECORD, index);
        match source {
            Source::Fresh { entity } => (self.entity(entity), None),
            Source::Copy { a } => {
                let dice = quantile(TRUE_MATCH_DICE_QUANTILES, rng.unit());
                let original = self.entity(a as u64);
                let blocks = original.blocks.clone();
                (self.corrupt(original, 1.0 - dice, (2.0 * (1.0 - dice)).min(1.0), &mut rng), Some(blocks))
            }
            Source::Relative { a } => {
                let (lo, hi) = RELATIVE_CORRUPTION;
                let r = lo + (hi - lo) * rng.unit();
                (self.corrupt(self.entity(a as u64), r, 0.5, &mut rng), None)
            }
        }
    }

    /// Moves round(r·s) of the s set bits to unset positions (Dice with the original = 1 − k/s)
    /// and replaces each block id with probability `block_change`.
    fn corrupt(&self, mut record: Record, r: f64, block_change: f64, rng: &mut Rng) -> Record {
        let (mut set, mut unset): (Vec<u32>, Vec<u32>) =
            (0..self.bits as u32).partition(|&i| record.clk[i as usize / 8] & (0x80 >> (i % 8)) != 0);
        let moved = ((r * set.len() as f64).round() as usize).min(set.len()).min(unset.len());
        for (from, pool) in [(true, &mut set), (false, &mut unset)] {
            // Partial Fisher–Yates: the first `moved` entries become a uniform sample.
            for k in 0..moved {
                let pick = k + rng.below((pool.len() - k) as u64) as usize;
                pool.swap(k, pick);
                let bit = pool[k] as usize;
                if from {
                    record.clk[bit / 8] &= !(0x80 >> (bit % 8));
                } else {
                    record.clk[bit / 8] |= 0x80 >> (bit % 8);
                }
            }
        }
        for (j, block) in record.blocks.iter_mut().enumerate() {
            if rng.unit() < block_change {
                *block = j as u64 * self.block_universe + rng.below(self.block_universe);
            }
        }
        record
    }
}

/// Piecewise-linear inverse CDF through `(quantile, value)` points (ascending quantiles).
fn quantile(table: &[(f64, f64)], u: f64) -> f64 {
    for w in table.windows(2) {
        let ((q0, v0), (q1, v1)) = (w[0], w[1]);
        if u <= q1 {
            let t = if q1 > q0 { (u - q0) / (q1 - q0) } else { 1.0 };
            return v0 + t * (v1 - v0);
        }
    }
    table.last().map(|&(_, v)| v).unwrap_or(1.0)
}

/// B's composition, shuffled: which A entities reappear (and where), the relatives, the rest.
fn layout_b(opts: &Options) -> Layout {
    let mut rng = Rng::stream(opts.seed, TAG_LAYOUT, 0);
    let mut a_order: Vec<u32> = (0..opts.records_a as u32).collect();
    shuffle(&mut a_order, &mut rng);
    let others = opts.records_b - opts.overlap;
    let relatives = ((opts.relatives * others as f64).round() as usize).min(others);
    let mut sources = Vec::with_capacity(opts.records_b);
    sources.extend(a_order[..opts.overlap].iter().map(|&a| Layout::pack(Source::Copy { a })));
    drop(a_order);
    sources.extend((0..relatives).map(|_| Layout::pack(Source::Relative { a: rng.below(opts.records_a as u64) as u32 })));
    // Fresh entities are numbered after A's, so they never collide with an A entity.
    sources.extend((0..(others - relatives) as u64).map(|k| Layout::pack(Source::Fresh { entity: opts.records_a as u64 + k })));
    shuffle(&mut sources, &mut rng);
    Layout(sources)
}

/// B's sources, 8 bytes each (the 25 M-record layout is 200 MB rather than 400): the top two
/// bits say which [`Source`], the rest its number.
struct Layout(Vec<u64>);

impl Layout {
    const SHIFT: u32 = 62;
    const NUMBER: u64 = (1 << Self::SHIFT) - 1;

    fn pack(source: Source) -> u64 {
        match source {
            Source::Copy { a } => u64::from(a),
            Source::Relative { a } => 1 << Self::SHIFT | u64::from(a),
            Source::Fresh { entity } => 2 << Self::SHIFT | entity,
        }
    }

    fn get(&self, b: usize) -> Source {
        let packed = self.0[b];
        let number = packed & Self::NUMBER;
        match packed >> Self::SHIFT {
            0 => Source::Copy { a: number as u32 },
            1 => Source::Relative { a: number as u32 },
            _ => Source::Fresh { entity: number },
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

// ---- output ------------------------------------------------------------------------------------

/// Records generated (in parallel) and written per batch: the only records in memory at once.
const BATCH_RECORDS: usize = 1 << 16;

pub fn run(argv: &[String]) -> anyhow::Result<()> {
    if wants_help(argv) {
        print!("{USAGE}");
        return Ok(());
    }
    let opts = parse(argv)?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let model = Model::new(&opts);

    // Memory: B's layout (8 bytes per record of B) and, while truth.csv is written, one u32 per
    // record of A; the block statistics take one byte per block id per party. Records are
    // generated and written a batch at a time, so no party is ever held whole.
    let layout = layout_b(&opts);
    let truth_path = opts.out.join("truth.csv");
    let true_matches = write_truth(&truth_path, &opts, &layout)?;

    let mut files = Vec::new();
    let (written, a) = write_party(&opts, "a", opts.records_a, |range| {
        range.into_par_iter().map(|e| (model.entity(e as u64), None)).collect()
    })?;
    files.extend(written);
    let (written, b) = write_party(&opts, "b", opts.records_b, |range| {
        range.into_par_iter().map(|i| model.b_record_traced(i as u64, layout.get(i))).collect()
    })?;
    files.extend(written);
    files.push(truth_path);
    let stats = statistics(&opts, &a, &b, true_matches);
    drop((a, b));

    let summary = json!({
        "generator": "pprl synth",
        "arguments": {
            "records_a": opts.records_a, "records_b": opts.records_b, "overlap": opts.overlap,
            "seed": opts.seed, "bits": opts.bits,
            "format": if opts.format == Format::Binary { "binary" } else { "json" },
            "blocks_per_record": opts.blocks_per_record, "block_size": opts.block_size,
            "relatives": opts.relatives,
        },
        "encoding_size": opts.bits / 8,
        "statistics": stats,
        "files": files.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect::<Vec<_>>(),
    });
    let summary_path = opts.out.join("synth.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", summary_path.display()))?;
    eprintln!("wrote {} ({} + {} records, {} true matches)", opts.out.display(), opts.records_a, opts.records_b, true_matches);
    println!("{}", serde_json::to_string(&summary["statistics"])?);
    Ok(())
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(1 << 20, File::create(path).with_context(|| format!("creating {}", path.display()))?))
}

/// What one party's records looked like, gathered while they streamed past.
#[derive(Default)]
struct PartyTally {
    set_bits: u64,
    /// Records of each block id (one byte each; counts past 254 continue in `large`).
    block_sizes: BlockCounts,
    /// B only: true matches whose two records share a block.
    reachable: u64,
}

/// Records per block id, dense over the model's id range `0..K·universe`.
#[derive(Default)]
struct BlockCounts {
    small: Vec<u8>,
    large: HashMap<u64, u64>,
}

impl BlockCounts {
    fn with_ids(ids: u64) -> Self {
        BlockCounts { small: vec![0; ids as usize], large: HashMap::new() }
    }

    fn add(&mut self, id: u64) {
        let slot = &mut self.small[id as usize];
        if *slot == u8::MAX {
            *self.large.entry(id).or_insert(u64::from(u8::MAX)) += 1;
        } else {
            *slot += 1;
        }
    }

    fn get(&self, id: usize) -> u64 {
        match self.small[id] {
            u8::MAX => self.large.get(&(id as u64)).copied().unwrap_or(u64::from(u8::MAX)),
            n => u64::from(n),
        }
    }
}

/// One generated batch: each record, and for a true match of B the blocks of its A record.
type Batch = Vec<(Record, Option<Vec<u64>>)>;

/// Generates and writes one party's files a batch at a time; returns their paths and what the
/// records looked like.
fn write_party(
    opts: &Options,
    name: &str,
    records: usize,
    generate: impl Fn(std::ops::Range<usize>) -> Batch,
) -> anyhow::Result<(Vec<PathBuf>, PartyTally)> {
    let with_blocks = opts.blocks_per_record > 0;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ids = opts.blocks_per_record as u64 * Model::universe(opts);
    let mut tally = PartyTally { block_sizes: BlockCounts::with_ids(if with_blocks { ids } else { 0 }), ..Default::default() };
    let (main_path, blocks_path) = match opts.format {
        Format::Binary => (opts.out.join(format!("{name}.bin")), with_blocks.then(|| opts.out.join(format!("{name}.blocks.json")))),
        Format::Json => (opts.out.join(format!("{name}.json")), None),
    };
    let mut main = create(&main_path)?;
    let mut blocks = blocks_path.as_deref().map(create).transpose()?;
    match opts.format {
        Format::Binary => {}
        Format::Json => main.write_all(if with_blocks { b"{\"clknblocks\":[" } else { b"{\"clks\":[" })?,
    }
    if let Some(w) = blocks.as_mut() {
        w.write_all(b"{\"blocks\":{")?;
    }
    for start in (0..records).step_by(BATCH_RECORDS) {
        let batch = generate(start..(start + BATCH_RECORDS).min(records));
        for (offset, (r, origin)) in batch.iter().enumerate() {
            let i = start + offset;
            let sep = if i == 0 { "" } else { "," };
            match opts.format {
                Format::Binary => main.write_all(&r.clk)?,
                Format::Json => {
                    let clk = b64.encode(&r.clk);
                    if with_blocks {
                        let ids: Vec<String> = r.blocks.iter().map(u64::to_string).collect();
                        write!(main, "{sep}[\"{clk}\",{}]", ids.join(","))?;
                    } else {
                        write!(main, "{sep}\"{clk}\"")?;
                    }
                }
            }
            if let Some(w) = blocks.as_mut() {
                write!(w, "{sep}\"{i}\":{}", ids_json(&r.blocks))?;
            }
            tally.set_bits += r.clk.iter().map(|x| x.count_ones() as u64).sum::<u64>();
            if with_blocks {
                for id in &r.blocks {
                    tally.block_sizes.add(*id);
                }
                if let Some(original) = origin
                    && original.iter().any(|id| r.blocks.contains(id))
                {
                    tally.reachable += 1;
                }
            }
        }
    }
    if opts.format == Format::Json {
        main.write_all(b"]}")?;
    }
    main.flush().with_context(|| format!("writing {}", main_path.display()))?;
    let mut written = vec![main_path];
    if let (Some(mut w), Some(path)) = (blocks, blocks_path) {
        write!(w, "}},\"meta\":{{\"source\":\"pprl synth\",\"blocks_per_record\":{}}}}}", opts.blocks_per_record)?;
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok((written, tally))
}

fn ids_json(ids: &[u64]) -> String {
    let items: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("[{}]", items.join(","))
}

/// Writes the true matches in A's record order (one u32 per record of A while it does);
/// returns how many there are.
fn write_truth(path: &Path, opts: &Options, layout: &Layout) -> anyhow::Result<u64> {
    let mut b_of_a = vec![u32::MAX; opts.records_a];
    let mut count = 0;
    for b in 0..layout.len() {
        if let Source::Copy { a } = layout.get(b) {
            b_of_a[a as usize] = b as u32;
            count += 1;
        }
    }
    let mut w = create(path)?;
    // The header of data/febrl4/ground_truth.csv, so one reader serves both.
    writeln!(w, "row_index_a,row_index_b")?;
    for (a, b) in b_of_a.iter().enumerate().filter(|(_, b)| **b != u32::MAX) {
        writeln!(w, "{a},{b}")?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(count)
}

/// What the generated data looks like, measured (not the parameters restated).
fn statistics(opts: &Options, a: &PartyTally, b: &PartyTally, true_matches: u64) -> serde_json::Value {
    let density = |t: &PartyTally, records: usize| t.set_bits as f64 / (records * opts.bits) as f64;
    let mut stats = json!({
        "records_a": opts.records_a,
        "records_b": opts.records_b,
        "true_matches": true_matches,
        "mean_density_a": round4(density(a, opts.records_a)),
        "mean_density_b": round4(density(b, opts.records_b)),
        "unblocked_comparisons": opts.records_a as u64 * opts.records_b as u64,
    });
    if opts.blocks_per_record == 0 {
        return stats;
    }
    // Block sizes per party, then the comparisons blocking leaves (the engine's count:
    // Σ over shared blocks of |A_b|·|B_b|). Sizes are tallied as (size → blocks of that size),
    // which gives the median without sorting every block.
    let mut histograms: [BTreeMap<u64, u64>; 2] = Default::default();
    let mut blocked = 0u64;
    for id in 0..a.block_sizes.small.len() {
        let (x, y) = (a.block_sizes.get(id), b.block_sizes.get(id));
        blocked += x * y;
        for (histogram, size) in histograms.iter_mut().zip([x, y]) {
            if size > 0 {
                *histogram.entry(size).or_default() += 1;
            }
        }
    }
    let blocks = |h: &BTreeMap<u64, u64>| h.values().sum::<u64>();
    // The element at position len/2 of the ascending sizes (what sorting them would give).
    let median = |h: &BTreeMap<u64, u64>| {
        let mut remaining = blocks(h) / 2;
        for (size, n) in h {
            if remaining < *n {
                return *size;
            }
            remaining -= n;
        }
        0
    };
    let max = |h: &BTreeMap<u64, u64>| h.keys().next_back().copied();
    stats["blocks_a"] = json!(blocks(&histograms[0]));
    stats["blocks_b"] = json!(blocks(&histograms[1]));
    stats["median_block_size_a"] = json!(median(&histograms[0]));
    stats["median_block_size_b"] = json!(median(&histograms[1]));
    stats["max_block_size_a"] = json!(max(&histograms[0]));
    stats["max_block_size_b"] = json!(max(&histograms[1]));
    stats["blocked_comparisons"] = json!(blocked);
    stats["true_matches_sharing_a_block"] = json!(b.reachable);
    stats
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::engine::dice::dice;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn options(extra: &str) -> Options {
        parse(&argv(&format!("--records-a 2000 --records-b 3000 --out /nonexistent {extra}"))).unwrap()
    }

    #[test]
    fn parses_and_validates() {
        let o = options("");
        assert_eq!((o.overlap, o.seed, o.bits, o.format, o.blocks_per_record), (1000, 1, 1024, Format::Binary, 0));
        for bad in [
            "--records-a 0 --records-b 5 --out x",
            "--records-a 5 --records-b 5",
            "--records-a 5 --records-b 5 --out x --overlap 6",
            "--records-a 5 --records-b 5 --out x --bits 100",
            "--records-a 5 --records-b 5 --out x --format csv",
            "--records-a 5 --records-b 5 --out x --block-size 0",
            "--records-a 5 --records-b 5 --out x --relatives 2",
            "--records-a 5 --records-b 5 --out x extra",
        ] {
            assert!(parse(&argv(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let o = options("--blocks 5");
        let m = Model::new(&o);
        let again = Model::new(&o);
        let other = Model::new(&options("--blocks 5 --seed 2"));
        let layout = layout_b(&o);
        for e in [0u64, 17, 1999] {
            assert_eq!(m.entity(e).clk, again.entity(e).clk);
            assert_eq!(m.entity(e).blocks, again.entity(e).blocks);
            assert_ne!(m.entity(e).clk, other.entity(e).clk);
        }
        let b0 = m.b_record(5, layout.get(5)).clk;
        assert_eq!(b0, again.b_record(5, layout_b(&o).get(5)).clk);
    }

    #[test]
    fn density_and_score_distributions_look_like_febrl4() {
        let o = options("");
        let m = Model::new(&o);
        let layout = layout_b(&o);
        let a: Vec<Record> = (0..2000).map(|e| m.entity(e)).collect();
        let density: f64 = a.iter().map(|r| r.clk.iter().map(|x| x.count_ones()).sum::<u32>() as f64 / 1024.0).sum::<f64>() / 2000.0;
        assert!((0.45..0.55).contains(&density), "mean density {density}");

        let mut true_scores = Vec::new();
        let mut copies = 0;
        for i in 0..layout.len() {
            let s = layout.get(i);
            if let Source::Copy { a: ai } = s {
                copies += 1;
                true_scores.push(dice(&a[ai as usize].clk, &m.b_record(i as u64, s).clk));
            }
        }
        assert_eq!(copies, o.overlap);
        true_scores.sort_by(f64::total_cmp);
        let median = true_scores[true_scores.len() / 2];
        assert!((0.92..0.96).contains(&median), "median true-match score {median}");
        let above_08 = true_scores.iter().filter(|&&s| s >= 0.8).count() as f64 / true_scores.len() as f64;
        assert!((0.92..0.98).contains(&above_08), "{above_08} of true matches score >= 0.8");

        // Unrelated records: around 0.6, never near a match.
        let unrelated: Vec<f64> = (0..500).map(|i| dice(&a[i].clk, &a[i + 1000].clk)).collect();
        let mean = unrelated.iter().sum::<f64>() / unrelated.len() as f64;
        assert!((0.55..0.66).contains(&mean), "mean unrelated score {mean}");
        assert!(unrelated.iter().all(|&s| s < 0.75));
    }

    #[test]
    fn quantile_table_interpolates() {
        assert_eq!(quantile(TRUE_MATCH_DICE_QUANTILES, 0.0), 0.70);
        assert!((quantile(TRUE_MATCH_DICE_QUANTILES, 0.5) - 0.941).abs() < 1e-12);
        assert_eq!(quantile(TRUE_MATCH_DICE_QUANTILES, 0.995), 1.0);
        assert!((quantile(TRUE_MATCH_DICE_QUANTILES, 0.4) - 0.9225).abs() < 1e-9);
    }

    #[test]
    fn writes_files_the_engine_reads() {
        let dir = std::env::temp_dir().join(format!("pprl-synth-test-{}", std::process::id()));
        for (format, blocks) in [("binary", 3), ("json", 3), ("json", 0)] {
            let out = dir.join(format!("{format}-{blocks}"));
            run(&argv(&format!("--records-a 50 --records-b 40 --overlap 10 --format {format} --blocks {blocks} --out {}", out.display())))
                .unwrap();
            let truth = std::fs::read_to_string(out.join("truth.csv")).unwrap();
            assert_eq!(truth.lines().count(), 11);
            let bounds = shared::engine::encoding::SizeBounds::default();
            if format == "binary" {
                let body = std::fs::read(out.join("b.bin")).unwrap();
                let party = shared::engine::encoding::decode_binary(&body, 40, 128, bounds).unwrap();
                assert_eq!(party.len(), 40);
                let blocks = std::fs::read(out.join("b.blocks.json")).unwrap();
                let keys = shared::engine::encoding::decode_blocks_file(&blocks, 40).unwrap();
                assert!(keys.iter().all(|k| k.len() == 3));
            } else {
                let body = std::fs::read(out.join("a.json")).unwrap();
                let party = shared::engine::encoding::decode_json_upload(&body, bounds).unwrap();
                assert_eq!(party.len(), 50);
                assert_eq!(party.blocks.is_some(), blocks > 0);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
