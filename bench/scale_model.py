#!/usr/bin/env python3
"""The scale model: what linking two 25M-record data sets costs on Lambda, from the figures
bench/run.sh measured (bench/results/results.json). Writes bench/results/scale-model.json and
prints the tables docs/scale-model.md shows. Standard library only.

Every measured input is named with the experiment it comes from; every assumption (AWS prices
and latencies, vCPU scaling) is a constant below, with its source. Re-run after bench/run.sh:

    python3 bench/scale_model.py [results.json]
"""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ---- the problem -------------------------------------------------------------------------------
N = 25_000_000                 # records per party
ENCODING_BYTES = 128           # 1024-bit CLKs
BLOCKS_PER_RECORD = 5          # the P-Sig-like blocking pprl synth generates
CONCURRENCY = 1000             # compare functions at once (the account's default Lambda limit)
MEMORY_SIZES_MB = [1769, 3008, 5307, 10240]
SHARD_TARGETS = [300_000_000, 3_000_000_000]   # the default, and 10x larger for national scale

# ---- AWS, us-east-1 list prices (x86, on-demand), as published in 2025 --------------------------
LAMBDA_GB_S = 0.0000166667     # $ per GB-second
LAMBDA_REQUEST = 0.20 / 1e6    # $ per invocation
SQS_REQUEST = 0.40 / 1e6       # $ per request (standard queue, per 64 KB chunk)
S3_PUT = 0.005 / 1000          # $ per PUT, COPY, POST, LIST
S3_GET = 0.0004 / 1000         # $ per GET, HEAD and other requests
DDB_WRU = 0.625 / 1e6          # $ per write request unit (on-demand)
DDB_RRU = 0.125 / 1e6          # $ per read request unit (on-demand)
MB_PER_VCPU = 1769             # Lambda: 1 vCPU at 1769 MB, proportional, at most 6 (10240 MB)

# ---- AWS latencies we cannot measure on the local stack (assumptions, stated in the doc) -------
SQS_SEND_BATCH_S = 0.010       # one SendMessageBatch (10 messages) from fan-out, sequential
S3_GET_SMALL_S = 0.015         # one small GET from solve (first byte + body), sequential
S3_THROUGHPUT_MB_S = 90        # one Lambda's single-stream S3 GET/PUT throughput
SHARD_FIXED_S_AWS = 0.12       # a compare invocation's fixed cost: SQS delivery, 2 DynamoDB
                               # reads, 1 transaction, HEAD + PUT on S3 (not the ranged GETs)
LAMBDA_TIMEOUT_S = 900


def vcpus(memory_mb):
    return min(6.0, memory_mb / MB_PER_VCPU)


def chunks(target, n0, n1):
    """shard.rs split_to_chunks: the number of shards one big block pair is cut into."""
    c0 = max(1, round(n0 / math.sqrt(target)))
    c1 = max(1, round(n1 * (n0 / c0) / target))
    return c0, c1


def measured(doc):
    """The inputs the model takes from results.json, each with where it comes from."""
    ex = doc["experiments"]
    m = {}

    def need(name):
        e = ex.get(name)
        if not e or "e2e" not in e or "engine" not in e:
            raise SystemExit(f"results.json lacks a complete '{name}' experiment: run bench/run.sh --only {name}")
        return e

    # Kernel throughput per core: the compare shards of the largest unblocked run we have.
    base = next((n for n in ["100k-1m-t0.95", "100k-t0.95", "100k-t0.8", "10k-t0.95"]
                 if n in ex and "e2e" in ex[n]), None)
    if base is None:
        raise SystemExit("results.json has no unblocked end-to-end run")
    e = ex[base]["e2e"]
    sh = e["shards"]
    cores = doc["machine"]["cores"]
    conc = 2  # runner instances per function (LOCAL_RUNNER_CONCURRENCY default), all on `cores` cores
    kernel_s = sum(sh["kernel_ms"]) / 1000
    # Each instance's rayon pool spans all cores, and `conc` instances share them: a shard's
    # kernel time is worth cores/conc cores.
    m["kernel_cmp_per_core_s"] = sum(sh["comparisons"]) / (kernel_s * cores / conc)
    m["kernel_source"] = f"{base}: {sh['count']} shards, Σ comparisons / Σ kernel_ms × {conc} instances / {cores} cores"
    m["engine_cmp_per_core_s"] = ex[base]["data"]["unblocked_comparisons"] / (ex[base]["engine"]["wall_s"] * cores)
    m["shard_overhead_local_s"] = sum(a - b for a, b in zip(sh["elapsed_ms"], sh["kernel_ms"])) / 1000 / sh["count"]
    m["load_during"] = e["load_before"]

    # Candidates: true-match-driven, so proportional to the overlap; per record of the smaller side.
    for t in ("0.8", "0.95"):
        name = f"100k-t{t}"
        if name in ex and "e2e" in ex[name]:
            m[f"candidates_per_record_t{t}"] = ex[name]["e2e"]["candidate_pairs"] / ex[name]["a"]
    # Solve: time per candidate pair and per shard file, from the 100K x 100K run at 0.8.
    s = ex.get("100k-t0.8", {}).get("e2e")
    if s:
        m["solve_local_s"] = s["solve_elapsed_ms"] / 1000
        m["solve_s_per_candidate"] = s["solve_elapsed_ms"] / 1000 / max(1, s["candidate_pairs"])
        m["solve_source"] = f"100k-t0.8: {s['candidate_pairs']} candidate pairs from {s['shards']['count']} shard files"
    # Ingest: fan-out's peak memory against the largest party it ingested, unblocked and blocked:
    # the growth per million records between the smallest and the largest run we have.
    for suffix, key in (("", "unblocked"), ("-blocked", "blocked")):
        runs = sorted(((ex[n]["b"], ex[n]["e2e"]["peak_memory_mib"].get("fan-out", 0), n)
                       for n in ex if n.endswith("-t0.95" + suffix) and "e2e" in ex[n]))
        if len(runs) >= 2:
            (r0, p0, n0), (r1, p1, n1) = runs[0], runs[-1]
            slope = max(0.0, (p1 - p0) / ((r1 - r0) / 1e6)) if r1 > r0 else 0.0
            m[f"fanout_peak_mib_{key}"] = {n0: p0, n1: p1}
            m[f"fanout_mib_per_million_records_{key}"] = slope
            m[f"fanout_peak_mib_25m_{key}"] = round(p1 + slope * (N - r1) / 1e6)
    big = next((n for n in ["100k-1m-t0.95", "100k-t0.95", "100k-t0.8"] if n in ex and "e2e" in ex[n]), None)
    if big:
        b = ex[big]
        m["ingest_tail_s"] = b["e2e"]["stages_s"]["ingest"]
        m["upload_mb_s_local"] = ((b["a"] + b["b"]) * ENCODING_BYTES / 1e6) / sum(b["e2e"]["upload_s"])
    # Blocked: shards and per-shard time per 100K records (block count grows with N).
    bl = ex.get("100k-t0.95-blocked", {}).get("e2e")
    if bl:
        m["blocked_shards_per_100k"] = bl["shards"]["count"]
        m["blocked_comparisons_per_100k"] = bl["comparisons"]
        m["blocked_shard_elapsed_local_s"] = sum(bl["shards"]["elapsed_ms"]) / 1000 / bl["shards"]["count"]
        m["blocked_shard_fetched_mb"] = sum(bl["shards"]["fetched_bytes"]) / 1e6 / bl["shards"]["count"]
        m["blocked_compare_peak_mib"] = bl["peak_memory_mib"].get("compare")
        data = ex["100k-t0.95-blocked"]["data"]
        m["distinct_blocks_per_record"] = data["blocks_a"] / data["records_a"]
    return m


def costs(gb_s, requests):
    """The dollars of a run's Lambda GB-seconds and requests, by service, at the prices above."""
    return {
        "lambda_compute": gb_s * LAMBDA_GB_S,
        "lambda_requests": requests["lambda_invocations"] * LAMBDA_REQUEST,
        "sqs": requests["sqs"] * SQS_REQUEST,
        "s3": requests["s3_get"] * S3_GET + requests["s3_put"] * S3_PUT,
        "dynamodb": requests["dynamodb_wru"] * DDB_WRU + requests["dynamodb_rru"] * DDB_RRU,
    }


def unblocked(m, target, memory_mb):
    c0, c1 = chunks(target, N, N)
    shards = c0 * c1
    comparisons = N * N
    per_shard_cmp = comparisons / shards
    rows = N / c0 + N / c1
    fetch_mb = rows * (8 + ENCODING_BYTES) / 1e6
    kernel_s = per_shard_cmp / (m["kernel_cmp_per_core_s"] * vcpus(memory_mb))
    shard_s = SHARD_FIXED_S_AWS + fetch_mb / S3_THROUGHPUT_MB_S + kernel_s
    waves = math.ceil(shards / CONCURRENCY)
    compare_wall = waves * shard_s
    gb_s = shards * shard_s * memory_mb / 1024
    candidates = m.get("candidates_per_record_t0.95", 0.5) * N
    dispatch_s = math.ceil(shards / 10) * SQS_SEND_BATCH_S
    solve_fetch_s = shards * S3_GET_SMALL_S
    solve_s = solve_fetch_s + candidates * m.get("solve_s_per_candidate", 1e-6)
    requests = {
        "lambda_invocations": shards + 4,
        "sqs": math.ceil(shards / 10) + 2 * shards + 10,          # send batches; receive + delete per shard
        "s3_get": 2 * shards + shards + shards,                   # 2 ranged GETs + HEAD per shard; solve GETs
        "s3_put": shards + 10 + 2 * math.ceil(shards / 1000),     # candidates; results; cleanup LIST + DeleteObjects
        "dynamodb_wru": 4 * shards,                               # record_shard: 2-item transaction (2 WRU each)
        "dynamodb_rru": 4 * shards,                               # get_run x2, get_project per shard
    }
    dollars = costs(gb_s, requests)
    return {
        "shard_target": target, "memory_mb": memory_mb, "vcpus": round(vcpus(memory_mb), 2),
        "shards": shards, "comparisons_per_shard": round(per_shard_cmp), "shard_fetch_mb": round(fetch_mb, 1),
        "shard_s": round(shard_s, 2), "kernel_s_per_shard": round(kernel_s, 2),
        "compare_wall_s": round(compare_wall), "fan_out_dispatch_s": round(dispatch_s),
        "solve_s": round(solve_s), "candidates": round(candidates),
        "fits_lambda_timeouts": dispatch_s < LAMBDA_TIMEOUT_S and solve_s < LAMBDA_TIMEOUT_S,
        "requests": requests, "dollars": {k: round(v, 2) for k, v in dollars.items()},
        "dollars_total": round(sum(dollars.values()), 2),
    }


def blocked(m, memory_mb):
    if "blocked_shards_per_100k" not in m:
        return None
    scale = N / 100_000
    shards = math.ceil(m["blocked_shards_per_100k"] * scale)
    comparisons = m["blocked_comparisons_per_100k"] * scale
    # Blocked shards are bounded by block pairs (100,000) and span entries, not comparisons: their
    # cost is the measured per-shard time (its kernel part is per-block-pair work, which more
    # vCPUs shorten), plus fetching the spans from S3 in AWS.
    kernel_part = m["blocked_shard_elapsed_local_s"] - m["shard_overhead_local_s"]
    shard_s = SHARD_FIXED_S_AWS + m["blocked_shard_fetched_mb"] / S3_THROUGHPUT_MB_S + \
        max(0.0, kernel_part) / vcpus(memory_mb)
    waves = math.ceil(shards / CONCURRENCY)
    gb_s = shards * shard_s * memory_mb / 1024
    requests = {"lambda_invocations": shards + 4, "sqs": math.ceil(shards / 10) + 2 * shards + 10,
                "s3_get": 4 * shards, "s3_put": shards + 10, "dynamodb_wru": 4 * shards, "dynamodb_rru": 4 * shards}
    dollars = costs(gb_s, requests)
    return {"memory_mb": memory_mb, "shards": shards, "comparisons": round(comparisons),
            "shard_s": round(shard_s, 2), "compare_wall_s": round(waves * shard_s),
            "requests": requests, "dollars": {k: round(v, 2) for k, v in dollars.items()},
            "dollars_total": round(sum(dollars.values()), 2)}


def ingest(m):
    """Fan-out ingests one party per invocation: its peak memory, projected to 25M records."""
    out = {}
    for key in ("unblocked", "blocked"):
        need = m.get(f"fanout_peak_mib_25m_{key}")
        if need is not None:
            out[key] = {"fan_out_peak_mib_projected": need, "fits_3008_mb": need < 3008, "fits_10240_mb": need < 10240}
    return out or None


def sizes(m):
    """Largest objects (bytes), from the formats (packed.rs: entry = 8 + encoding bytes; index
    block = 32 bytes; candidates = 24 bytes; groups JSON ≈ 27 bytes per pair)."""
    entries_unblocked = N
    entries_blocked = N * BLOCKS_PER_RECORD
    return {
        "upload_binary_per_party": N * ENCODING_BYTES,
        "data_bin_per_party_unblocked": entries_unblocked * (8 + ENCODING_BYTES),
        "data_bin_per_party_blocked": entries_blocked * (8 + ENCODING_BYTES),
        "index_bin_per_party_blocked": round(N * m.get("distinct_blocks_per_record", BLOCKS_PER_RECORD) * 32),
    }


def main(argv):
    src = Path(argv[1]) if len(argv) > 1 else ROOT / "bench" / "results" / "results.json"
    doc = json.loads(src.read_text())
    m = measured(doc)
    out = {"inputs": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()},
           "assumptions": {k: v for k, v in globals().items() if k.isupper() and isinstance(v, (int, float, list))},
           "unblocked": [unblocked(m, t, mem) for t in SHARD_TARGETS for mem in MEMORY_SIZES_MB],
           "blocked": [b for b in (blocked(m, mem) for mem in MEMORY_SIZES_MB) if b],
           "sizes_bytes": sizes(m), "ingest": ingest(m)}
    dst = src.with_name("scale-model.json")
    dst.write_text(json.dumps(out, indent=1) + "\n")

    print("## Measured inputs\n")
    for k, v in out["inputs"].items():
        print(f"- `{k}`: {v:,.6g}" if isinstance(v, float) else f"- `{k}`: {v}")
    print("\n## 25M x 25M without blocking (6.25e14 comparisons)\n")
    print("| shard target | memory MB | vCPU | shards | s/shard | compare wall | fan-out dispatch | solve | $ compute | $ requests (λ+SQS+S3+DDB) | $ total | fits 900 s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in out["unblocked"]:
        d = r["dollars"]
        req = d["lambda_requests"] + d["sqs"] + d["s3"] + d["dynamodb"]
        print(f"| {r['shard_target']:.0e} | {r['memory_mb']} | {r['vcpus']} | {r['shards']:,} | {r['shard_s']} | "
              f"{r['compare_wall_s'] / 60:.0f} min | {r['fan_out_dispatch_s'] / 60:.1f} min | {r['solve_s'] / 60:.1f} min | "
              f"{d['lambda_compute']:,.0f} | {req:,.0f} | {r['dollars_total']:,.0f} | {'yes' if r['fits_lambda_timeouts'] else 'NO'} |")
    r = out["unblocked"][0]
    print("\nRequests per run at the default shard target:", ", ".join(f"{k} {v:,}" for k, v in r["requests"].items()))
    if out["blocked"]:
        print("\n## 25M x 25M with blocking (5 block ids per record, median block size 1)\n")
        print("| memory MB | shards | comparisons | s/shard | compare wall | $ total |")
        print("|---|---|---|---|---|---|")
        for b in out["blocked"]:
            print(f"| {b['memory_mb']} | {b['shards']:,} | {b['comparisons']:.2e} | {b['shard_s']} | "
                  f"{b['compare_wall_s']} s | {b['dollars_total']:,.2f} |")
    ing = out["ingest"]
    for key, v in (ing or {}).items():
        print(f"\nFan-out ingest of one 25M-record party ({key}), projected peak memory: {v['fan_out_peak_mib_projected']:,} MiB "
              f"(fits 3008 MB: {v['fits_3008_mb']}, fits 10240 MB: {v['fits_10240_mb']})")
    print("\n## Largest objects\n")
    for k, v in out["sizes_bytes"].items():
        print(f"- {k}: {v / 1e9:.1f} GB")
    print(f"\nwrote {dst.relative_to(ROOT) if dst.is_relative_to(ROOT) else dst}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
