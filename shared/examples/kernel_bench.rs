//! Dice kernel benchmark: pairs compared per second per core.
//!
//! ```text
//! cargo build --release -p pprl-shared --example kernel_bench
//! target/release/examples/kernel_bench [--write-data DIR] [--threshold T] [--quick]
//! ```
//!
//! Generates 1024-bit encodings whose density is drawn per record from 0.4..0.6 (realistic CLK
//! fill), then times, at 10k×10k and 100k×100k (the latter on a 1,000-row sample of the first
//! side so it stays well under a minute):
//!
//! - `kernel`: the engine's [`compare_entries`] on the dispatched path (also every other path);
//! - `scalar`: a plain loop, u64 `count_ones` and one division per pair, no tiling, compiled for
//!   the baseline x86-64 target (no `popcnt`), i.e. what straightforward code gets;
//! - `popcnt-ref`: a hand-tuned reference: anonlink's algorithm (4 accumulators, 16 unrolled
//!   `popcnt`, its popcount-difference filter, one division per pair) compiled with `popcnt`.
//!
//! each single-threaded and on the rayon pool, and prints ratios. `--write-data DIR` writes the
//! 10k×10k data as `a.bin` / `b.bin` (raw 128-byte records) for `bench/anonlink_kernel.py`.

use std::time::Instant;

use rayon::prelude::*;
use shared::engine::dice::{KernelPath, compare_entries};
use shared::engine::encoding::PartyEncodings;
use shared::engine::packed::{Entries, pack};

const SIZE: usize = 128;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn records(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n * SIZE);
    for _ in 0..n {
        let density = 0.4 + 0.2 * rng.unit();
        for _ in 0..SIZE {
            let mut byte = 0u8;
            for bit in 0..8 {
                if rng.unit() < density {
                    byte |= 1 << bit;
                }
            }
            out.push(byte);
        }
    }
    out
}

/// Makes every 100th row of `b` a copy of the same row of `a` with a few bits flipped, so that
/// the threshold keeps some pairs (true matches) as in real linkage.
fn plant_near_duplicates(a: &[u8], b: &mut [u8]) {
    let mut rng = Rng(0x5555_aaaa_5555_aaab);
    for row in (0..b.len() / SIZE).step_by(100) {
        let record = &mut b[row * SIZE..(row + 1) * SIZE];
        record.copy_from_slice(&a[row * SIZE..(row + 1) * SIZE]);
        for _ in 0..40 {
            let bit = (rng.next() % (SIZE as u64 * 8)) as usize;
            record[bit / 8] ^= 1 << (bit % 8);
        }
    }
}

/// Plain scalar baseline: per pair, u64 popcounts and one division.
fn scalar_pairs(a: &[u8], b: &[u8], t: f64) -> usize {
    let popcount = |r: &[u8]| -> u32 {
        r.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])).count_ones()).sum()
    };
    let pb: Vec<u32> = b.chunks_exact(SIZE).map(popcount).collect();
    let mut kept = 0;
    for ra in a.chunks_exact(SIZE) {
        let pa = popcount(ra);
        for (rb, &pb) in b.chunks_exact(SIZE).zip(&pb) {
            let c: u32 = ra
                .chunks_exact(8)
                .zip(rb.chunks_exact(8))
                .map(|(x, y)| {
                    (u64::from_le_bytes(x.try_into().unwrap_or([0; 8])) & u64::from_le_bytes(y.try_into().unwrap_or([0; 8])))
                        .count_ones()
                })
                .sum();
            if (2 * c) as f64 / f64::from(pa + pb) >= t {
                kept += 1;
            }
        }
    }
    kept
}

/// Hand-tuned reference: anonlink's loop in Rust (16 words, 4 accumulators, popcnt, its
/// popcount-difference filter and one division per pair). Inputs must be 8-byte aligned words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn popcnt_reference_pairs(a: &[u64], b: &[u64], t: f64) -> usize {
    let pc = |r: &[u64]| -> u32 { r.iter().map(|w| w.count_ones()).sum() };
    let pb: Vec<u32> = b.chunks_exact(16).map(pc).collect();
    let mut kept = 0;
    for ra in a.chunks_exact(16) {
        let pa = pc(ra);
        let max_delta = (f64::from(2 * pa) * (1.0 / t - 1.0)) as u32;
        for (rb, &pb) in b.chunks_exact(16).zip(&pb) {
            if pa.abs_diff(pb) > max_delta {
                continue;
            }
            let (mut c0, mut c1, mut c2, mut c3) = (0u32, 0u32, 0u32, 0u32);
            for k in (0..16).step_by(4) {
                c0 += (ra[k] & rb[k]).count_ones();
                c1 += (ra[k + 1] & rb[k + 1]).count_ones();
                c2 += (ra[k + 2] & rb[k + 2]).count_ones();
                c3 += (ra[k + 3] & rb[k + 3]).count_ones();
            }
            if (2 * (c0 + c1 + c2 + c3)) as f64 / f64::from(pa + pb) >= t {
                kept += 1;
            }
        }
    }
    kept
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))).collect()
}

/// Runs `f` over `a` rows split in chunks (rayon when `parallel`), returns (kept, pairs/s).
fn time_rows(a_rows: usize, b_rows: usize, parallel: bool, f: impl Fn(std::ops::Range<usize>) -> usize + Sync) -> (usize, f64) {
    let chunks: Vec<std::ops::Range<usize>> = (0..a_rows).step_by(64).map(|s| s..(s + 64).min(a_rows)).collect();
    let start = Instant::now();
    let kept = if parallel { chunks.par_iter().map(|r| f(r.clone())).sum() } else { chunks.iter().map(|r| f(r.clone())).sum() };
    let secs = start.elapsed().as_secs_f64();
    (kept, (a_rows * b_rows) as f64 / secs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let threshold: f64 = arg("--threshold").and_then(|t| t.parse().ok()).unwrap_or(0.8);
    let quick = args.iter().any(|a| a == "--quick");
    let threads = rayon::current_num_threads();
    let detected = KernelPath::detect();

    println!("# Dice kernel benchmark: 1024-bit encodings, density 0.4-0.6, threshold {threshold}");
    println!("# dispatched path: {detected:?}; available: {:?}; rayon threads: {threads}", KernelPath::available());

    let big = if quick { 20_000 } else { 100_000 };
    let a_all = records(big, 0x1234_5678_9abc_def1);
    let mut b_all = records(big, 0x0fed_cba9_8765_4321);
    plant_near_duplicates(&a_all, &mut b_all);

    if let Some(dir) = arg("--write-data") {
        std::fs::create_dir_all(&dir).expect("create data dir");
        std::fs::write(format!("{dir}/a.bin"), &a_all[..10_000 * SIZE]).expect("write a.bin");
        std::fs::write(format!("{dir}/b.bin"), &b_all[..10_000 * SIZE]).expect("write b.bin");
        println!("# wrote {dir}/a.bin and {dir}/b.bin (10000 x {SIZE} bytes each)");
    }

    // (label, rows of A timed, rows of B)
    let cases = [("10k x 10k", 10_000usize, 10_000usize), ("100k x 100k (1k-row sample of A)", 1_000, big)];
    for (label, a_rows, b_rows) in cases {
        let a = &a_all[..a_rows * SIZE];
        let b = &b_all[..b_rows * SIZE];
        let pack_side = |data: &[u8]| pack(&PartyEncodings { encoding_size: SIZE, data: data.to_vec(), blocks: None }).0;
        let (da, db) = (pack_side(a), pack_side(b));
        let ea = Entries::new(&da, SIZE, 0).expect("entries a");
        let eb = Entries::new(&db, SIZE, 0).expect("entries b");
        let (wa, wb) = (words(a), words(b));
        println!("\n## {label}: {} pairs", a_rows * b_rows);
        let mut results: Vec<(String, f64, f64)> = Vec::new();
        for parallel in [false, true] {
            let mode = if parallel { "rayon" } else { "1 thread" };
            let per_core = |rate: f64| if parallel { rate / threads as f64 } else { rate };
            for path in KernelPath::available() {
                // The kernel tiles and parallelises itself: one call over the whole case.
                let start = Instant::now();
                let kept = compare_entries(ea, eb, threshold, path, parallel).map(|m| m.len()).unwrap_or(0);
                let rate = (a_rows * b_rows) as f64 / start.elapsed().as_secs_f64();
                let name = if path == detected { format!("kernel ({path:?}, dispatched)") } else { format!("kernel ({path:?})") };
                println!("{name:<32} {mode:<8} {:>8.1} M pairs/s per core  ({kept} kept)", per_core(rate) / 1e6);
                results.push((format!("{name} {mode}"), per_core(rate), rate));
            }
            let (kept, rate) = time_rows(a_rows, b_rows, parallel, |r| scalar_pairs(&a[r.start * SIZE..r.end * SIZE], b, threshold));
            println!("{:<32} {mode:<8} {:>8.1} M pairs/s per core  ({kept} kept)", "scalar baseline", per_core(rate) / 1e6);
            results.push((format!("scalar {mode}"), per_core(rate), rate));
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("popcnt") {
                let reference = |r: std::ops::Range<usize>| {
                    // SAFETY: popcnt support was just checked.
                    unsafe { popcnt_reference_pairs(&wa[r.start * 16..r.end * 16], &wb, threshold) }
                };
                let (kept, rate) = time_rows(a_rows, b_rows, parallel, reference);
                println!("{:<32} {mode:<8} {:>8.1} M pairs/s per core  ({kept} kept)", "popcnt reference", per_core(rate) / 1e6);
                results.push((format!("popcnt-ref {mode}"), per_core(rate), rate));
            }
        }
        let find = |key: &str| results.iter().find(|(n, _, _)| n.contains(key)).map(|(_, per, _)| *per);
        for mode in ["1 thread", "rayon"] {
            let ours = find(&format!("dispatched) {mode}"));
            let scalar = find(&format!("scalar {mode}"));
            let reference = find(&format!("popcnt-ref {mode}"));
            if let (Some(o), Some(s)) = (ours, scalar) {
                print!("ratio ({mode}): kernel/scalar = {:.2}x", o / s);
                if let Some(r) = reference {
                    print!(", kernel/popcnt-reference = {:.2}x", o / r);
                }
                println!();
            }
        }
    }
}
