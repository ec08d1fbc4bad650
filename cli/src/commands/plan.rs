//! `pprl plan`: what a run will take before it is posted — shards, dispatch, time and dollars —
//! computed by the planner fan-out runs (`shared::engine::sizing`) and its cost model.

use shared::engine::sizing::{self, ComputeProfile, Estimate, PlanFacts, SizingPolicy};

use super::wants_help;
use crate::args::{Args, UsageError};

pub const USAGE: &str = "\
Usage: pprl plan --records N N [N...] --threshold T [--blocks-per-record K]
                 [--comparisons-per-record C] [--compare-memory MB] [--concurrency N]
                 [--compare-timeout S] [--shard-target N] [--max-shards N] [--encoding-bytes B]

Prints, as JSON, how the service would run a linkage of parties of these sizes: its shards,
comparisons, dispatch messages, the longest shard's time, and the estimated wall time and AWS
cost (x86_64 Lambda, us-east-1 on-demand prices; every constant is named in
shared/src/engine/sizing.rs). The shard plan is the one fan-out makes for the same sizes.

Options:
  --records N N...            records per party (two or more)
  --threshold T               the run's similarity threshold (moves the candidate estimate)
  --blocks-per-record K       blocked run: blocks each record is in (default: unblocked)
  --comparisons-per-record C  blocked run: records of the other party each record meets (default 10)
  --compare-memory MB         compare's memory (default 3008, the template's)
  --concurrency N             compares at once (default 1000, the account's default limit)
  --compare-timeout S         compare's timeout in seconds (default 900)
  --shard-target N            ShardTargetComparisons (default 300000000)
  --max-shards N              MaxShardsPerRun (default 0: 50 x the concurrency)
  --encoding-bytes B          bytes per encoding (default 128)
";

/// Everything `pprl plan` is asked.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOptions {
    pub records: Vec<u64>,
    pub threshold: f64,
    pub blocks_per_record: Option<u64>,
    pub comparisons_per_record: f64,
    pub policy: SizingPolicy,
    pub encoding_bytes: u32,
}

/// The estimate for `options`: unblocked runs are planned exactly as fan-out plans them.
pub fn plan(options: &PlanOptions) -> Estimate {
    let smaller = options.records.iter().copied().min().unwrap_or(0);
    let facts = match options.blocks_per_record {
        Some(blocks) => sizing::blocked_facts(
            &options.records,
            blocks,
            options.comparisons_per_record,
            &options.policy,
            options.encoding_bytes as usize,
        ),
        None => {
            let indexes: Vec<_> =
                options.records.iter().map(|n| sizing::unblocked_index(*n, options.encoding_bytes)).collect();
            let (plan, target) = sizing::plan_run(&indexes, &options.policy);
            PlanFacts::of(&plan, target, options.encoding_bytes as usize)
        }
    };
    sizing::estimate(&facts, &options.policy, options.threshold, smaller)
}

pub fn run(argv: &[String]) -> anyhow::Result<()> {
    if wants_help(argv) {
        print!("{USAGE}");
        return Ok(());
    }
    let options = parse(argv)?;
    let estimate = plan(&options);
    let mut out = serde_json::to_value(&estimate)?;
    if let Some(map) = out.as_object_mut() {
        map.insert("records".into(), serde_json::json!(options.records));
        map.insert("threshold".into(), serde_json::json!(options.threshold));
        map.insert("blocks_per_record".into(), serde_json::json!(options.blocks_per_record));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn parse(argv: &[String]) -> Result<PlanOptions, UsageError> {
    let mut args = Args::parse("plan", argv, &[])?;
    let usage = |m: &str| UsageError::new("plan", m.to_string());
    // `--records A B`: the parser takes A as the option's value and B onwards as positionals.
    let first: Option<u64> = args.parsed("records", "a record count")?;
    let threshold: f64 = args.parsed("threshold", "a number in [0, 1]")?.ok_or_else(|| usage("--threshold is required"))?;
    let blocks_per_record = args.parsed("blocks-per-record", "a number")?;
    let comparisons_per_record = args.parsed("comparisons-per-record", "a number")?.unwrap_or(10.0);
    let d = SizingPolicy::default();
    let compare = ComputeProfile {
        memory_mb: args.parsed("compare-memory", "megabytes")?.unwrap_or(d.compare.memory_mb),
        timeout_secs: args.parsed("compare-timeout", "seconds")?.unwrap_or(d.compare.timeout_secs),
        concurrency: args.parsed("concurrency", "a number")?.unwrap_or(d.compare.concurrency),
    };
    let policy = SizingPolicy {
        target_comparisons: args.parsed("shard-target", "a number")?.unwrap_or(d.target_comparisons),
        max_shards: args.parsed("max-shards", "a number")?.unwrap_or(d.max_shards),
        compare,
    };
    let encoding_bytes = args.parsed("encoding-bytes", "a number")?.unwrap_or(128);
    let rest = args.finish()?;
    let mut records = Vec::new();
    records.extend(first);
    for raw in rest {
        records.push(raw.parse().map_err(|_| usage(&format!("--records takes record counts, got '{raw}'")))?);
    }
    if records.len() < 2 {
        return Err(usage("--records needs two or more record counts"));
    }
    if !(0.0..=1.0).contains(&threshold) {
        return Err(usage("--threshold must be in [0, 1]"));
    }
    if !(128..=10_240).contains(&compare.memory_mb) || compare.timeout_secs == 0 || policy.target_comparisons == 0 {
        return Err(usage("--compare-memory must be 128..10240, --compare-timeout and --shard-target positive"));
    }
    Ok(PlanOptions { records, threshold, blocks_per_record, comparisons_per_record, policy, encoding_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn national_scale_plan_meets_its_bounds() {
        let options = parse(&argv("--records 25000000 25000000 --threshold 0.8")).unwrap();
        assert_eq!(options.records, vec![25_000_000, 25_000_000]);
        let e = plan(&options);
        assert!(e.shards <= 50_000 && e.estimated_wall_seconds <= 1800.0 && e.estimated_cost_usd <= 100.0, "{e:?}");
        assert!(e.max_shard_seconds < 900.0 / 2.0, "{e:?}");
    }

    #[test]
    fn bad_input_gets_a_usage_error() {
        assert!(parse(&argv("--records 5 --threshold 0.8")).is_err());
        assert!(parse(&argv("--records 5 x --threshold 0.8")).is_err());
        assert!(parse(&argv("--records 5 6")).is_err());
        assert!(parse(&argv("--records 5 6 --threshold 2")).is_err());
        assert!(parse(&argv("--records 5 6 --threshold 0.9 --bogus 1")).is_err());
    }
}
