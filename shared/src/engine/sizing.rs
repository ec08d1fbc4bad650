//! Sizing a run to the compare fleet: how big its shards are, how they are dispatched, and what
//! the run will cost. One piece of code serves fan-out (which plans every run with
//! [`plan_run`]), the api (the `plan` estimate in a run's status) and `pprl plan` (users, before
//! a run).
//!
//! ## Shard size
//! `ShardTargetComparisons` is the target while the shard count it gives stays under the run's
//! shard cap (`MaxShardsPerRun`); past it, shards grow until the count fits. Growth stops at what
//! one compare invocation does comfortably inside its timeout: [`SHARD_TIME_FRACTION`] of it at
//! [`COMPARE_PAIRS_PER_VCPU_SECOND`] per vCPU of its memory size. That bound is hard (a shard
//! that cannot finish would be retried forever); the cap is not (a run that needs more shards
//! than the cap gets them, and the estimate says so).
//!
//! Why a cap at all: every shard costs a fixed amount whatever its size (an invocation, a few
//! requests, a marker and a counter update, a file that solve reads), so past a few waves of the
//! fleet more shards add overhead and no parallelism. The default cap is
//! [`WAVES_PER_RUN`] waves of the compare concurrency: 50 waves keep the last, partly idle wave
//! near 2% of the run, and at 1,000 concurrent compares give the 50,000 shards that dispatch,
//! counting and solve's fetch are sized for.
//!
//! ## Dispatch
//! Shard messages are stored in pages ([`PAGE_SHARDS`] messages, [`PAGE_BYTES`] at most). A
//! range of pages is dispatched by splitting it into at most [`DISPATCH_FANOUT`] sub-ranges sent
//! as messages (each handled by another invocation, which splits again), until a range is one
//! page, whose shard messages are sent. No invocation sends more than a page's worth of
//! messages, however many shards a run has; see `service::pipeline::dispatch`.
//!
//! ## Cost model
//! The constants below are named with where they come from. Measured ones are from this
//! repository's benchmarks (`docs/kernel-benchmark.md`, `bench/README.md`); prices are AWS's
//! published us-east-1 on-demand prices for x86_64 Lambda (first pricing tier), SQS, S3 and
//! DynamoDB; the rest are assumptions about AWS that cannot be measured locally.

use serde::Serialize;

use super::packed::{BlockIndex, entry_stride, total_comparisons};
use super::shard::{self, Plan};

// ---- measured here ------------------------------------------------------------------------

/// Pairs per second per vCPU of the Dice kernel (AVX2 path, t = 0.8, 1024-bit encodings): the
/// lower of the two idle runs of `bench/kernel.sh` in `docs/kernel-benchmark.md` (356.5 and
/// 413.7 M/s on 10k×10k), rounded down. x86_64 only: the arm64 path is ~10× slower.
pub const COMPARE_PAIRS_PER_VCPU_SECOND: f64 = 350e6;
/// Solve's cost per candidate pair (merge + greedy + groups JSON): `bench/run.sh`, `100k-t0.8`
/// (`solve_elapsed_ms` ÷ `candidate_pairs`, docs/scale-model.md).
pub const SOLVE_SECONDS_PER_CANDIDATE: f64 = 8e-6;
/// Candidate pairs per record of the smaller party at t = 0.8 and t = 0.95 on `pprl synth` data
/// (half of the smaller party reappears in the other): `bench/run.sh`, `100k-t0.8`/`100k-t0.95`.
pub const CANDIDATES_PER_RECORD_AT_080: f64 = 0.481;
pub const CANDIDATES_PER_RECORD_AT_095: f64 = 0.215;

// ---- Lambda's rules and AWS assumptions ----------------------------------------------------

/// Lambda: one vCPU per 1,769 MB, proportional, at most 6.
pub const MB_PER_VCPU: f64 = 1769.0;
pub const MAX_VCPUS: f64 = 6.0;
/// Fixed cost of a compare invocation in AWS: SQS delivery, DynamoDB reads and the counting
/// transaction, HEAD + PUT of the candidates (assumption; 0.16 s measured on the local stack).
pub const SHARD_FIXED_SECONDS: f64 = 0.12;
/// S3 → Lambda throughput of one ranged GET (assumption).
pub const S3_BYTES_PER_SECOND: f64 = 90e6;
/// One `SendMessageBatch` (assumption).
pub const SQS_SEND_BATCH_SECONDS: f64 = 0.010;
/// One S3 GET of a shard file by solve, and how many solve runs at once (solve's design).
pub const SOLVE_FETCH_SECONDS: f64 = 0.015;
pub const SOLVE_FETCH_CONCURRENCY: f64 = 64.0;
/// How fast the SQS event source adds concurrent compares: 300 per minute.
pub const SQS_SCALE_UP_PER_SECOND: f64 = 5.0;
/// fan-out: reading both indexes, planning and writing the plan pages (assumption; seconds).
pub const PLAN_SECONDS: f64 = 5.0;
/// Memory of fan-out and solve (the template's), for their share of the compute cost.
pub const FAN_OUT_SOLVE_MEMORY_MB: f64 = 3008.0;

// ---- prices (us-east-1, on demand, x86_64) -------------------------------------------------

pub const PRICE_LAMBDA_GB_SECOND: f64 = 0.000_016_666_7;
pub const PRICE_LAMBDA_REQUEST: f64 = 0.20 / 1e6;
pub const PRICE_SQS_REQUEST: f64 = 0.40 / 1e6;
pub const PRICE_S3_GET: f64 = 0.0004 / 1e3;
pub const PRICE_S3_PUT: f64 = 0.005 / 1e3;
pub const PRICE_DDB_WRU: f64 = 0.625 / 1e6;
pub const PRICE_DDB_RRU: f64 = 0.125 / 1e6;

// ---- policy --------------------------------------------------------------------------------

/// Plan shards to take at most this share of compare's timeout: "well inside" leaves room for a
/// slower host, a cold start and the retries of a throttled request.
pub const SHARD_TIME_FRACTION: f64 = 1.0 / 3.0;
/// Default shard cap, in waves of the compare concurrency (module doc).
pub const WAVES_PER_RUN: u64 = 50;
/// The concurrency assumed when compare's is unreserved: the default account limit.
pub const UNRESERVED_CONCURRENCY: u32 = 1000;
/// Shard messages per stored page, and the page's size limit (a page is read by one invocation).
pub const PAGE_SHARDS: usize = 1000;
pub const PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Sub-ranges a range message splits into: one `SendMessageBatch`.
pub const DISPATCH_FANOUT: u32 = 10;
/// Shard messages one compare invocation receives at most (the template's `BatchSize` of its
/// SQS event, checked by a test): neighbouring shards of a batch share one read of the run, the
/// reads of their spans and one counting transaction, which at a national shard count is most of
/// a shard's fixed cost (bench/README.md, "Many shards"). A whole batch must finish well inside
/// the timeout, so the largest shard is planned for 1/`COMPARE_BATCH_SIZE` of that share.
pub const COMPARE_BATCH_SIZE: u32 = 10;

/// What compare runs on, as the template configures it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ComputeProfile {
    pub memory_mb: u32,
    pub timeout_secs: u32,
    /// Compares at once (0: unreserved, taken as [`UNRESERVED_CONCURRENCY`]).
    pub concurrency: u32,
}

impl Default for ComputeProfile {
    /// The template's defaults, at the account's default concurrency.
    fn default() -> Self {
        ComputeProfile { memory_mb: 3008, timeout_secs: 900, concurrency: UNRESERVED_CONCURRENCY }
    }
}

impl ComputeProfile {
    pub fn vcpus(&self) -> f64 {
        (self.memory_mb as f64 / MB_PER_VCPU).min(MAX_VCPUS)
    }
    pub fn concurrency(&self) -> u32 {
        if self.concurrency == 0 { UNRESERVED_CONCURRENCY } else { self.concurrency }
    }
    /// Comparisons per second of one compare invocation.
    pub fn pairs_per_second(&self) -> f64 {
        COMPARE_PAIRS_PER_VCPU_SECOND * self.vcpus()
    }
    /// The largest shard target one invocation does well inside its timeout with a full batch
    /// of such shards (module doc). The reference's split grid rounds chunk sides, so a chunk may
    /// hold up to 1.5× its target: still inside half the timeout.
    pub fn max_shard_comparisons(&self) -> u64 {
        (self.pairs_per_second() * self.timeout_secs as f64 * SHARD_TIME_FRACTION / f64::from(COMPARE_BATCH_SIZE)) as u64
    }
}

/// How a run's shards are sized (the template parameters behind it in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SizingPolicy {
    /// [`ShardTargetComparisons`]
    pub target_comparisons: u64,
    /// [`MaxShardsPerRun`]; 0 = [`WAVES_PER_RUN`] × the compare concurrency.
    pub max_shards: u64,
    pub compare: ComputeProfile,
}

impl Default for SizingPolicy {
    fn default() -> Self {
        SizingPolicy { target_comparisons: shard::DEFAULT_TARGET_COMPARISONS, max_shards: 0, compare: ComputeProfile::default() }
    }
}

impl SizingPolicy {
    pub fn shard_cap(&self) -> u64 {
        if self.max_shards > 0 { self.max_shards } else { WAVES_PER_RUN * self.compare.concurrency() as u64 }
    }

    /// The shard target for a run of `total` comparisons: the configured target while the count
    /// fits the cap, larger when it does not, never above what one invocation does well.
    pub fn shard_target(&self, total: u64) -> u64 {
        let bound = self.compare.max_shard_comparisons().max(1);
        let wanted = self.target_comparisons.max(total.div_ceil(self.shard_cap().max(1)));
        wanted.min(bound).max(1)
    }
}

/// Plans a run: [`shard::plan`] at the target [`SizingPolicy::shard_target`] gives, grown a
/// little while block rounding leaves the count over the cap ([`SizingPolicy::retarget`]).
/// Returns the plan and its target. Fan-out runs the same steps over streamed indexes.
pub fn plan_run(indexes: &[BlockIndex], policy: &SizingPolicy) -> (Plan, u64) {
    let total = total_comparisons(indexes);
    let mut target = policy.shard_target(total);
    let mut plan = shard::plan(indexes, target);
    for _ in 0..RETARGET_ROUNDS {
        match policy.retarget(total, target, plan.shards.len() as u64) {
            Some(larger) => {
                target = larger;
                plan = shard::plan(indexes, target);
            }
            None => break,
        }
    }
    (plan, target)
}

/// How many times a plan over the shard cap is made again at a larger target.
pub const RETARGET_ROUNDS: usize = 8;

impl SizingPolicy {
    /// Rounding of the split grid (and packing) can leave a plan at `target` with `shards` a few
    /// over the cap; a few percent more per shard fixes it. `None` when the plan stands: it
    /// fits, or shards cannot grow (blocked plans may never fit, since their shard count also
    /// follows block boundaries; then the count stands).
    pub fn retarget(&self, total: u64, target: u64, shards: u64) -> Option<u64> {
        let bound = self.compare.max_shard_comparisons().max(1);
        if shards <= self.shard_cap() || target >= bound || target >= total {
            return None;
        }
        let ratio = shards as f64 / self.shard_cap() as f64;
        Some(((target as f64 * ratio * 1.01).ceil() as u64).max(target + 1).min(bound))
    }
}

/// The block index of an unblocked party of `records` records (one block holding them all), for
/// planning before any data exists.
pub fn unblocked_index(records: u64, encoding_size: u32) -> BlockIndex {
    use super::encoding::BlockKey;
    use super::packed::BlockEntry;
    let blocks = if records == 0 { Vec::new() } else { vec![BlockEntry { key: BlockKey::default_block(), first_entry: 0, len: records }] };
    BlockIndex { encoding_size, record_count: records, entry_count: records, blocks }
}

/// What the estimate needs to know of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanFacts {
    pub shards: u64,
    pub comparisons: u64,
    pub max_shard_comparisons: u64,
    /// Bytes of `data.bin` all shards read together.
    pub fetched_bytes: u64,
    /// The target the plan was made at.
    pub shard_target: u64,
}

impl PlanFacts {
    pub fn of(plan: &Plan, target: u64, encoding_size: usize) -> Self {
        let mut facts = PlanFacts::empty(target);
        for shard in &plan.shards {
            facts.add(shard, encoding_size);
        }
        facts
    }

    /// The facts of a plan at `target` before any shard, for plans read shard by shard.
    pub fn empty(target: u64) -> Self {
        PlanFacts { shards: 0, comparisons: 0, max_shard_comparisons: 0, fetched_bytes: 0, shard_target: target }
    }

    pub fn add(&mut self, shard: &shard::Shard, encoding_size: usize) {
        let stride = entry_stride(encoding_size) as u64;
        let fetched_entries: u64 = shard.entry_spans().iter().map(|(_, span)| span.end - span.start).sum();
        self.shards += 1;
        self.comparisons = self.comparisons.saturating_add(shard.comparisons);
        self.max_shard_comparisons = self.max_shard_comparisons.max(shard.comparisons);
        self.fetched_bytes = self.fetched_bytes.saturating_add(fetched_entries.saturating_mul(stride));
    }
}

/// Messages and depth of dispatching `shards` shards (module doc).
pub fn dispatch_shape(shards: u64) -> (u64, u32) {
    let pages = shards.div_ceil(PAGE_SHARDS as u64);
    if pages <= 1 {
        return (shards, 0);
    }
    // Every range of more than one page is split into ≤ FANOUT sub-ranges, each one message.
    fn messages(pages: u64) -> (u64, u32) {
        if pages <= 1 {
            return (0, 0);
        }
        let (mut sent, mut depth) = (0, 0);
        for part in split_count(pages, DISPATCH_FANOUT as u64) {
            let (m, d) = messages(part);
            sent += 1 + m;
            depth = depth.max(d + 1);
        }
        (sent, depth)
    }
    let (ranges, depth) = messages(pages);
    (shards + ranges, depth)
}

/// Sizes of `parts` near-equal parts of `n` (fewer when `n` is smaller).
fn split_count(n: u64, parts: u64) -> Vec<u64> {
    let parts = parts.min(n).max(1);
    (0..parts).map(|i| (n * (i + 1)) / parts - (n * i) / parts).collect()
}

/// Splits a range of pages into at most [`DISPATCH_FANOUT`] contiguous, near-equal sub-ranges.
pub fn split_pages(pages: std::ops::Range<u32>) -> Vec<std::ops::Range<u32>> {
    let mut start = pages.start;
    split_count((pages.end - pages.start) as u64, DISPATCH_FANOUT as u64)
        .into_iter()
        .filter(|n| *n > 0)
        .map(|n| {
            let r = start..start + n as u32;
            start = r.end;
            r
        })
        .collect()
}

/// Seconds per stage of the estimate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageSeconds {
    pub plan: f64,
    pub dispatch: f64,
    pub compare: f64,
    pub solve: f64,
}

/// Dollars per kind of charge.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostUsd {
    pub compare_compute: f64,
    pub other_compute: f64,
    pub requests: f64,
}

/// What a run will take: `pprl plan` prints it; a run's status carries it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub shards: u64,
    pub comparisons: u64,
    pub shard_target_comparisons: u64,
    pub shard_cap: u64,
    pub shard_cap_exceeded: bool,
    pub max_shard_comparisons: u64,
    pub max_shard_seconds: f64,
    pub compare_timeout_seconds: u32,
    pub compare_memory_mb: u32,
    pub compare_vcpus: f64,
    pub concurrency: u32,
    pub dispatch_messages: u64,
    pub dispatch_depth: u32,
    pub candidates: u64,
    pub stage_seconds: StageSeconds,
    pub estimated_wall_seconds: f64,
    pub cost_usd: CostUsd,
    pub estimated_cost_usd: f64,
}

/// Candidate pairs expected at `threshold` for a smaller party of `records` (measured points,
/// linear between them; below 0.8 the 0.8 figure, a lower bound).
pub fn expected_candidates(threshold: f64, records: u64) -> u64 {
    let t = threshold.clamp(0.8, 0.95);
    let per_record = CANDIDATES_PER_RECORD_AT_080
        + (CANDIDATES_PER_RECORD_AT_095 - CANDIDATES_PER_RECORD_AT_080) * (t - 0.8) / 0.15;
    (per_record * records as f64).round() as u64
}

/// Seconds for `work` invocation-seconds on a fleet that grows by [`SQS_SCALE_UP_PER_SECOND`] up
/// to `concurrency` (SQS event sources add ~300 concurrent functions a minute).
fn fleet_seconds(work: f64, concurrency: f64) -> f64 {
    let ramp = concurrency / SQS_SCALE_UP_PER_SECOND;
    let ramp_work = 0.5 * SQS_SCALE_UP_PER_SECOND * ramp * ramp;
    if work <= ramp_work { (2.0 * work / SQS_SCALE_UP_PER_SECOND).sqrt() } else { ramp + (work - ramp_work) / concurrency }
}

/// The cost model (module doc) applied to a plan.
pub fn estimate(facts: &PlanFacts, policy: &SizingPolicy, threshold: f64, smaller_party_records: u64) -> Estimate {
    let compare = policy.compare;
    let rate = compare.pairs_per_second();
    let shards = facts.shards as f64;
    let fetch_seconds = facts.fetched_bytes as f64 / S3_BYTES_PER_SECOND;
    let work = shards * SHARD_FIXED_SECONDS + fetch_seconds + facts.comparisons as f64 / rate;
    let mean_shard = if facts.shards > 0 { work / shards } else { 0.0 };
    let max_shard_seconds =
        SHARD_FIXED_SECONDS + fetch_seconds / shards.max(1.0) + facts.max_shard_comparisons as f64 / rate;
    let concurrency = (compare.concurrency() as f64).min(shards.max(1.0));
    let compare_seconds = if facts.shards == 0 { 0.0 } else { fleet_seconds(work, concurrency) + mean_shard };
    let (dispatch_messages, dispatch_depth) = dispatch_shape(facts.shards);
    let leaf_sends = (PAGE_SHARDS.min(facts.shards as usize) as f64 / 10.0).ceil();
    let dispatch_seconds = dispatch_depth as f64 * (SHARD_FIXED_SECONDS + SQS_SEND_BATCH_SECONDS) + leaf_sends * SQS_SEND_BATCH_SECONDS;
    let candidates = expected_candidates(threshold, smaller_party_records);
    let solve_seconds =
        shards * SOLVE_FETCH_SECONDS / SOLVE_FETCH_CONCURRENCY + candidates as f64 * SOLVE_SECONDS_PER_CANDIDATE;
    let stage_seconds = StageSeconds { plan: PLAN_SECONDS, dispatch: dispatch_seconds, compare: compare_seconds, solve: solve_seconds };
    let wall = PLAN_SECONDS + dispatch_seconds + compare_seconds + solve_seconds;

    let gb = |mb: f64| mb / 1024.0;
    let compare_compute = work * gb(compare.memory_mb as f64) * PRICE_LAMBDA_GB_SECOND;
    let range_messages = (dispatch_messages - facts.shards) as f64;
    let other_compute = ((PLAN_SECONDS + solve_seconds) * gb(FAN_OUT_SOLVE_MEMORY_MB)
        + range_messages * (SHARD_FIXED_SECONDS + 1.0) * gb(compare.memory_mb as f64))
        * PRICE_LAMBDA_GB_SECOND;
    let invocations = dispatch_messages as f64 + 2.0;
    // Per message: a tenth of a send batch, a receive and a delete. Per shard: two ranged GETs, a
    // GET of its candidates (redelivery check) and a PUT; solve GETs every file. DynamoDB per
    // shard: the run and project reads (~6 RRU), the marker + counter transaction (4 WRU), the
    // counters read afterwards (~3 RRU).
    let requests = invocations * PRICE_LAMBDA_REQUEST
        + dispatch_messages as f64 * 2.1 * PRICE_SQS_REQUEST
        + shards * (4.0 * PRICE_S3_GET + PRICE_S3_PUT)
        + shards * (4.0 * PRICE_DDB_WRU + 9.0 * PRICE_DDB_RRU);
    let cost_usd = CostUsd { compare_compute, other_compute, requests };
    Estimate {
        shards: facts.shards,
        comparisons: facts.comparisons,
        shard_target_comparisons: facts.shard_target,
        shard_cap: policy.shard_cap(),
        shard_cap_exceeded: facts.shards > policy.shard_cap(),
        max_shard_comparisons: facts.max_shard_comparisons,
        max_shard_seconds: round2(max_shard_seconds),
        compare_timeout_seconds: compare.timeout_secs,
        compare_memory_mb: compare.memory_mb,
        compare_vcpus: round2(compare.vcpus()),
        concurrency: compare.concurrency(),
        dispatch_messages,
        dispatch_depth,
        candidates,
        stage_seconds: StageSeconds {
            plan: round2(stage_seconds.plan),
            dispatch: round2(stage_seconds.dispatch),
            compare: round2(stage_seconds.compare),
            solve: round2(stage_seconds.solve),
        },
        estimated_wall_seconds: round2(wall),
        cost_usd: CostUsd {
            compare_compute: round2(cost_usd.compare_compute),
            other_compute: round2(cost_usd.other_compute),
            requests: round2(cost_usd.requests),
        },
        estimated_cost_usd: round2(compare_compute + other_compute + requests),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Blocked runs planned before the data exist: each record of the smaller party meets
/// `comparisons_per_record` records of the other in the blocks it shares with it, spread over
/// `blocks_per_record` block pairs. The planner's own rules then give the shards: the target,
/// and at most [`shard::MAX_BLOCK_PAIRS_PER_SHARD`] block pairs per shard.
pub fn blocked_facts(records: &[u64], blocks_per_record: u64, comparisons_per_record: f64, policy: &SizingPolicy, encoding_size: usize) -> PlanFacts {
    let smaller = records.iter().copied().min().unwrap_or(0);
    let pairs = (records.len() * records.len().saturating_sub(1) / 2) as u64;
    let comparisons = (smaller as f64 * comparisons_per_record * pairs as f64) as u64;
    let block_pairs = smaller.saturating_mul(blocks_per_record).saturating_mul(pairs);
    let target = policy.shard_target(comparisons);
    let shards = comparisons.div_ceil(target).max(block_pairs.div_ceil(shard::MAX_BLOCK_PAIRS_PER_SHARD as u64));
    let stride = entry_stride(encoding_size) as u64;
    PlanFacts {
        shards,
        comparisons,
        max_shard_comparisons: target.min(comparisons),
        // Every entry of both sides is read once (packed shards read contiguous spans).
        fetched_bytes: smaller.saturating_mul(blocks_per_record).saturating_mul(2 * pairs).saturating_mul(stride),
        shard_target: target,
    }
}

/// The estimate for a run as the service knows it: a planned run from its totals (cheap: the
/// status is polled), an unblocked one not planned yet by planning its record counts exactly as
/// fan-out will. `None` while a blocked run is not planned yet.
pub fn run_estimate(
    policy: &SizingPolicy,
    records: &[u64],
    encoding_size: u32,
    blocked: bool,
    planned: Option<(u64, u64)>,
    threshold: f64,
) -> Option<Estimate> {
    let smaller = records.iter().copied().min().unwrap_or(0);
    let facts = match (blocked, planned) {
        (false, None) => {
            let indexes: Vec<_> = records.iter().map(|n| unblocked_index(*n, encoding_size)).collect();
            let (plan, target) = plan_run(&indexes, policy);
            PlanFacts::of(&plan, target, encoding_size as usize)
        }
        (_, Some((shards, comparisons))) => {
            let target = policy.shard_target(comparisons);
            let per_shard = comparisons.div_ceil(shards.max(1));
            // Packed shards read about one span of each side per shard.
            let entries = 2.0 * (per_shard as f64).sqrt() * shards as f64;
            PlanFacts {
                shards,
                comparisons,
                max_shard_comparisons: target.min(comparisons),
                fetched_bytes: (entries * entry_stride(encoding_size as usize) as f64) as u64,
                shard_target: target,
            }
        }
        (true, None) => return None,
    };
    Some(estimate(&facts, policy, threshold, smaller))
}

#[cfg(test)]
mod tests {

    #[test]
    fn compare_receives_the_batch_the_planner_sized_for() {
        let template = include_str!("../../../infra/template.yaml");
        let shards_event = template.split("Queue: !GetAtt ShardQueue.Arn").nth(1).expect("compare's SQS event");
        let batch = shards_event.lines().find_map(|l| l.trim().strip_prefix("BatchSize:")).expect("BatchSize");
        assert_eq!(batch.trim().parse::<u32>().unwrap(), COMPARE_BATCH_SIZE);
    }

    use super::*;
    use proptest::prelude::*;

    fn policy(target: u64, max_shards: u64, memory_mb: u32, concurrency: u32) -> SizingPolicy {
        SizingPolicy { target_comparisons: target, max_shards, compare: ComputeProfile { memory_mb, timeout_secs: 900, concurrency } }
    }

    #[test]
    fn national_scale_fits_the_acceptance_bounds() {
        let policy = SizingPolicy::default();
        let indexes = [unblocked_index(25_000_000, 128), unblocked_index(25_000_000, 128)];
        let (plan, target) = plan_run(&indexes, &policy);
        let facts = PlanFacts::of(&plan, target, 128);
        assert_eq!(facts.comparisons, 625_000_000_000_000);
        assert!(facts.shards <= 50_000, "{} shards", facts.shards);
        for t in [0.8, 0.95] {
            let e = estimate(&facts, &policy, t, 25_000_000);
            assert!(e.max_shard_seconds < 900.0 / 3.0 + 1.0, "{e:?}");
            assert!(e.estimated_wall_seconds <= 1800.0, "{e:?}");
            assert!(e.estimated_cost_usd <= 100.0, "{e:?}");
            assert!(!e.shard_cap_exceeded);
        }
    }

    #[test]
    fn the_configured_target_is_kept_when_the_count_fits() {
        // 20,000 × 20,000 at a 20,000 target: the reference's grid gives 141 × 142 = 20,022 shards
        // (the local measurement's run).
        let policy = policy(20_000, 1_000_000, 3008, 100);
        let indexes = [unblocked_index(20_000, 128), unblocked_index(20_000, 128)];
        let (plan, target) = plan_run(&indexes, &policy);
        assert_eq!(target, 20_000);
        assert_eq!(plan.shards.len(), 20_022);
    }

    /// 1 TiB of 128-byte encodings is 8.6e9 records, past u32: entry ranges and byte offsets
    /// of the plan stay exact in u64.
    #[test]
    fn a_one_tebibyte_party_plans_with_u64_offsets() {
        let big = (1u64 << 40) / 128;
        let policy = SizingPolicy { max_shards: 2_000_000, ..SizingPolicy::default() };
        let (plan, _) = plan_run(&[unblocked_index(big, 128), unblocked_index(1_000_000, 128)], &policy);
        assert_eq!(plan.total_comparisons, big * 1_000_000);
        let last = plan.shards.iter().flat_map(|s| &s.tasks).map(|t| t.a.end).max().unwrap();
        assert_eq!(last, big);
        assert!(shard::byte_range(&(big - 1..big), 128).end == big * 136);
        assert_eq!(plan.shards.iter().map(|s| s.comparisons).sum::<u64>(), big * 1_000_000);
    }

    #[test]
    fn dispatch_shape_counts_ranges() {
        assert_eq!(dispatch_shape(0), (0, 0));
        assert_eq!(dispatch_shape(1000), (1000, 0));
        // 2 pages: root splits into 2 leaf ranges.
        assert_eq!(dispatch_shape(1001), (1003, 1));
        // 50 pages: 10 ranges of 5 pages, each split into 5 leaves.
        assert_eq!(dispatch_shape(50_000), (50_060, 2));
        assert_eq!(split_pages(0..25), vec![0..2, 2..5, 5..7, 7..10, 10..12, 12..15, 15..17, 17..20, 20..22, 22..25]);
        assert_eq!(split_pages(3..5), vec![3..4, 4..5]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The cap holds whenever shards the timeout allows can meet it, every shard stays inside
        /// the time bound, and the configured target is kept when its count fits.
        #[test]
        fn sizing_properties(
            a in 1u64..50_000_000, b in 1u64..50_000_000,
            target in 1_000u64..10_000_000_000, max_shards in 0u64..100_000,
            memory_mb in 1769u32..10_241, concurrency in 0u32..2_000,
        ) {
            let policy = policy(target, max_shards, memory_mb, concurrency);
            let indexes = [unblocked_index(a, 128), unblocked_index(b, 128)];
            // Plan only what stays small enough to build in a test.
            let total = a.saturating_mul(b);
            let chosen = policy.shard_target(total);
            prop_assume!(total / chosen < 400_000);
            let (plan, used) = plan_run(&indexes, &policy);
            let bound = policy.compare.max_shard_comparisons();
            prop_assert!(used <= bound.max(1));
            let max_shard = plan.shards.iter().map(|s| s.comparisons).max().unwrap_or(0);
            // The reference's grid rounds chunk sides: a chunk may exceed the target by the
            // rounding of two sides (well under 2x for any grid of more than one chunk).
            prop_assert!((max_shard as f64) <= (used as f64) * 2.0 + 1.0 || plan.shards.len() == 1);
            let e = estimate(&PlanFacts::of(&plan, used, 128), &policy, 0.8, a.min(b));
            prop_assert!(e.max_shard_seconds <= 900.0 * SHARD_TIME_FRACTION * 2.0 + 2.0 || plan.shards.len() == 1);
            if total.div_ceil(target) * 2 <= policy.shard_cap() && target <= bound {
                prop_assert_eq!(used, target, "configured target kept when its count fits");
            }
            if used < bound && plan.shards.len() > 1 {
                prop_assert!(plan.shards.len() as u64 <= policy.shard_cap(), "{} shards over cap {}", plan.shards.len(), policy.shard_cap());
            }
        }
    }
}
