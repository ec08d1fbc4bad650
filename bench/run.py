#!/usr/bin/env python3
"""End-to-end benchmarks at the reference's sizes, on the local stack (see bench/README.md).

For every experiment: synthetic data (`pprl synth`, cached under .local/bench-data/), the engine
alone (`pprl link`, the offline twin) and the service end to end through the REST API
(`pprl upload` for the data, plain HTTP for the rest). Writes bench/results/results.json (merged
by experiment name, so a partial run updates only its own entries) and the chart
(bench/chart.py). Standard library only.

Stage times of the service come from two clocks on this machine: the client's (upload, run
status, result download) and the arrival time of the functions' log lines in the local runner's
log (ingested, planned, each shard compared, completed), which this script follows while the
run lasts. Peak memory per function is each process's VmHWM, reset (clear_refs 5) before the
experiment.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "localstack" / ".state"
RUNNER_LOG = STATE / "logs" / "runner.log"
DATA_ROOT = ROOT / ".local" / "bench-data"
RESULTS = ROOT / "bench" / "results"
ENCODING_SIZE = 128
SEED = 1
BLOCKS_PER_RECORD = 5

# The reference's default experiments (benchmarking/default-experiments.json), each with and
# without blocking, plus 100K x 100K at 0.95 (the reference's published figure, PR #541).
EXPERIMENTS = [
    {"name": "10k-t0.95", "a": 10_000, "b": 10_000, "threshold": 0.95},
    {"name": "100k-t0.8", "a": 100_000, "b": 100_000, "threshold": 0.8},
    {"name": "100k-t0.95", "a": 100_000, "b": 100_000, "threshold": 0.95},
    {"name": "100k-1m-t0.95", "a": 100_000, "b": 1_000_000, "threshold": 0.95},
]
QUICK = ["10k-t0.95", "10k-t0.95-blocked"]
# Only with --only: the many-shards measurement of docs/scale-model.md. Run it on a stack started
# with LOCAL_PARAM_ShardTargetComparisons=20000 LOCAL_PARAM_MaxShardsPerRun=1000000 (20,022
# shards, the shard count of a national run); see bench/README.md.
SHARDS_EXPERIMENTS = [{"name": "20k-t0.95-shards", "a": 20_000, "b": 20_000, "threshold": 0.95, "blocking": False}]

# National scale with blocking (issue 15): two parties of N records, 5 block ids per record,
# t = 0.8, end to end only (the engine-only twin holds both parties in memory). Not part of the
# default run: name them with --only. bench/README.md has the memory table they feed.
NATIONAL_BLOCKED = [
    {"name": "national-1m-blocked", "a": 1_000_000, "b": 1_000_000, "threshold": 0.8},
    {"name": "national-2.5m-blocked", "a": 2_500_000, "b": 2_500_000, "threshold": 0.8},
    {"name": "national-25m-blocked", "a": 25_000_000, "b": 25_000_000, "threshold": 0.8},
]


def all_experiments(with_extra=False):
    out = []
    for e in EXPERIMENTS:
        out.append({**e, "blocking": False})
        out.append({**e, "name": e["name"] + "-blocked", "blocking": True})
    return out + (SHARDS_EXPERIMENTS if with_extra else [])


def groups_digest(groups):
    """Order-free fingerprint of a groups result (engine and service results must agree)."""
    canon = sorted(sorted(tuple(r) for r in g) for g in groups)
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()


def national_experiments():
    return [{**e, "blocking": True, "e2e_only": True} for e in NATIONAL_BLOCKED]


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def load():
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- data

def dataset(pprl, a, b):
    """Generates (once) the two parties with blocks; unblocked runs use the same CLKs."""
    d = DATA_ROOT / f"{a}x{b}-seed{SEED}-blocks{BLOCKS_PER_RECORD}"
    meta = d / "synth.json"
    if not meta.exists():
        say(f"generating {d.name}")
        t = time.monotonic()
        subprocess.run([pprl, "synth", "--records-a", str(a), "--records-b", str(b), "--seed", str(SEED),
                        "--blocks", str(BLOCKS_PER_RECORD), "--out", str(d)], check=True, stdout=subprocess.DEVNULL)
        say(f"generated in {time.monotonic() - t:.1f} s")
    return d, json.loads(meta.read_text())


def truth_pairs(d):
    lines = (d / "truth.csv").read_text().splitlines()[1:]
    return {tuple(int(x) for x in line.split(",")) for line in lines if line.strip()}


def accuracy(groups, truth):
    found = set()
    for g in groups:
        a = next((r for d, r in g if d == 0), None)
        b = next((r for d, r in g if d == 1), None)
        if a is not None and b is not None:
            found.add((a, b))
    tp = len(found & truth)
    fp = len(found) - tp
    return {"true_matches": len(truth), "found": len(found), "true_positives": tp, "false_positives": fp,
            "false_negatives": len(truth) - tp,
            "precision": round(tp / len(found), 4) if found else 0.0,
            "recall": round(tp / len(truth), 4) if truth else 0.0}


# --------------------------------------------------------------------------- engine only

def run_measured(cmd, stdout_path, timeout):
    """Runs cmd; returns (wall seconds, peak RSS in MiB, exit code). Kills it past `timeout`."""
    with open(stdout_path, "wb") as out:
        t = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace")
    return wall, usage.ru_maxrss / 1024, p.returncode, err


def engine_only(pprl, exp, d, truth, timeout):
    cmd = [pprl, "link", "--threshold", str(exp["threshold"]), "--binary-size", str(ENCODING_SIZE)]
    if exp["blocking"]:
        cmd += ["--blocks-files", f"{d / 'a.blocks.json'},{d / 'b.blocks.json'}"]
    cmd += [str(d / "a.bin"), str(d / "b.bin")]
    out = d / f"engine-{exp['name']}.json"
    before = load()
    wall, rss, rc, err = run_measured(cmd, out, timeout)
    if rc != 0:
        raise RuntimeError(f"pprl link failed ({rc}): {err[-2000:]}")
    groups = json.loads(out.read_text())["groups"]
    out.unlink()
    return {"command": " ".join(cmd), "wall_s": round(wall, 3), "peak_rss_mib": round(rss, 1),
            "groups_sha256": groups_digest(groups),
            "accuracy": accuracy(groups, truth), "load_before": before, "load_after": load()}


# --------------------------------------------------------------------------- the service

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def http(method, url, body=None, token=None, timeout=300):
    """One REST call; returns (status, parsed JSON or raw bytes, headers)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", token)
    try:
        with OPENER.open(req, timeout=timeout) as r:
            status, raw, headers = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw, headers


class LogFollower(threading.Thread):
    """Follows the runner's log from its current end, keeping this project's lines with the
    time they appeared (the functions log JSON lines, flushed per line), and every invocation's
    REPORT line while it follows a project (the runner's lines name no project: on a shared
    stack others' invocations would count too)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.events, self.project, self.reports = path, [], None, []
        self.stop_flag = threading.Event()
        self.offset = path.stat().st_size if path.exists() else 0

    def run(self):
        pending = b""
        while not self.stop_flag.is_set():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            now = time.monotonic()
            self.offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                report = REPORT_LINE.search(line.decode(errors="replace")) if self.project else None
                if report:
                    self.reports.append((now, report.groupdict()))
                if self.project and self.project.encode() in line:
                    try:
                        self.events.append((now, json.loads(line)["fields"]))
                    except (ValueError, KeyError):
                        pass
            time.sleep(0.05)

    def stop(self):
        time.sleep(0.3)  # let the last lines arrive
        self.stop_flag.set()
        self.join()


REPORT_LINE = re.compile(r"(?P<function>[\w-]+) REPORT RequestId: \S+\tDuration: (?P<ms>[\d.]+) ms\t.*"
                         r"Memory Size: (?P<size>\d+) MB\tMax Memory Used: (?P<used>\d+) MB(?:\tStatus: (?P<status>\w+))?")


def report_summary(reports):
    """Per function: invocations, the largest Max Memory Used and Duration, its Memory Size, and
    the invocations killed (Status: timeout or error). Which step an invocation ran needs its
    request id's log lines: bench/invocations.py."""
    out = {}
    for _, r in reports:
        name = r["function"]
        f = out.setdefault(name, {"invocations": 0, "max_memory_used_mb": 0, "max_duration_ms": 0.0,
                                           "memory_size_mb": int(r["size"]), "killed": 0})
        f["invocations"] += 1
        f["max_memory_used_mb"] = max(f["max_memory_used_mb"], int(r["used"]))
        f["max_duration_ms"] = max(f["max_duration_ms"], float(r["ms"]))
        f["killed"] += 1 if r["status"] else 0
    return out


def function_processes():
    """pid -> name of the api and of every function process the runner started."""
    procs = {}
    pids = {}
    for name in ("api", "runner"):
        f = STATE / "pids" / f"{name}.pid"
        if f.exists():
            pids[name] = f.read_text().strip()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.M).group(1)
        if entry.name == pids.get("api") or ppid == pids.get("runner"):
            procs[entry.name] = os.path.basename(cmd)
    return procs


def reset_peaks():
    for pid in function_processes():
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def read_peaks():
    """Per function: the largest VmHWM (MiB) among its processes, and the binary in use."""
    peaks, binary = {}, None
    for pid, name in function_processes().items():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            binary = binary or os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        kb = int(re.search(r"^VmHWM:\s+(\d+)", status, re.M).group(1))
        peaks[name] = max(peaks.get(name, 0), round(kb / 1024, 1))
    return peaks, binary


def end_to_end(pprl, api, exp, d, truth, timeout):
    schema = json.loads((ROOT / "data" / "febrl4" / "schema.json").read_text())
    reset_peaks()
    follower = LogFollower(RUNNER_LOG)
    follower.start()
    before = load()
    t0 = time.monotonic()
    status, project, _ = http("POST", f"{api}/api/v1/projects", {
        "schema": schema, "result_type": "groups", "number_parties": 2,
        "name": f"bench {exp['name']}", "uses_blocking": exp["blocking"]})
    if status != 201:
        raise RuntimeError(f"create project: {status} {project}")
    pid = project["project_id"]
    follower.project = pid
    uploads = []
    for party, name in enumerate(["a", "b"]):
        cmd = [pprl, "upload", "--server", api, "--project", pid, "--token", project["update_tokens"][party],
               "--encoding-size", str(ENCODING_SIZE), str(d / f"{name}.bin")]
        if exp["blocking"]:
            cmd[2:2] = ["--blocks", str(d / f"{name}.blocks.json")]
        t = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"pprl upload failed: {r.stderr.decode(errors='replace')[-2000:]}")
        uploads.append(time.monotonic() - t)
    t_uploaded = time.monotonic()
    status, run, _ = http("POST", f"{api}/api/v1/projects/{pid}/runs",
                          {"threshold": exp["threshold"], "name": exp["name"]}, project["result_token"])
    if status != 201:
        raise RuntimeError(f"post run: {status} {run}")
    t_run = time.monotonic()
    rid = run["run_id"]
    while True:
        status, st, _ = http("GET", f"{api}/api/v1/projects/{pid}/runs/{rid}/status", token=project["result_token"])
        if status == 200 and st.get("state") == "completed":
            break
        if status == 200 and st.get("state") == "error":
            raise RuntimeError(f"run failed: {st}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"run did not complete within {timeout} s: {st}")
        time.sleep(0.1)
    t_done = time.monotonic()
    status, result, headers = http("GET", f"{api}/api/v1/projects/{pid}/runs/{rid}/result", token=project["result_token"])
    result_bytes = None
    if status == 303:  # large results come from the object store
        with urllib.request.urlopen(headers["Location"], timeout=300) as r:
            raw = r.read()
        result_bytes, result = len(raw), json.loads(raw)
    elif status != 200:
        raise RuntimeError(f"result: {status} {result}")
    t_result = time.monotonic()
    follower.stop()
    peaks, binary = read_peaks()
    http("DELETE", f"{api}/api/v1/projects/{pid}", token=project["result_token"])

    ev = follower.events
    at = lambda msg: [t for t, f in ev if f.get("message") == msg]
    shards = [f for _, f in ev if f.get("message") == "shard compared" and f.get("counted")]
    ingested, planned = at("upload ingested"), [t for t, f in ev if f.get("message") == "run planned" and not f.get("resume")]
    compared, completed = [t for t, f in ev if f.get("message") == "shard compared" and f.get("counted")], at("run completed")
    if len(ingested) < 2 or not planned or not compared or not completed:
        raise RuntimeError(f"missing pipeline log lines for {pid} (have {[f.get('message') for _, f in ev]})")
    t_ingested = max(ingested)
    t_planned = planned[0]
    t_compared = max(compared)
    t_completed = completed[-1]
    stages = {
        "upload": sum(uploads),
        # ingestion of party 0 overlaps party 1's upload; this is what is left after the last upload
        "ingest": max(0.0, t_ingested - t_uploaded),
        "plan": t_planned - max(t_ingested, t_run),
        "compare": t_compared - t_planned,
        "solve": t_completed - t_compared,
        "status_poll": max(0.0, t_done - t_completed),
        "result_download": t_result - t_done,
    }
    completed_fields = next(f for _, f in ev if f.get("message") == "run completed")
    comparisons = st.get("total_number_comparisons")
    compare_wall = stages["compare"]
    per_shard = {
        "count": len(shards),
        "comparisons": [f.get("comparisons") for f in shards],
        "elapsed_ms": [f.get("elapsed_ms") for f in shards],
        "kernel_ms": [f.get("kernel_ms") for f in shards],
        "fetched_bytes": [f.get("fetched_bytes") for f in shards],
        "candidates": [f.get("candidates") for f in shards],
    }
    return {
        "project": pid,
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "total_s": round(t_result - t0, 3),
        "run_s": round(t_done - t_run, 3),
        "comparisons": comparisons,
        "comparisons_per_s_compare_stage": round(comparisons / compare_wall) if compare_wall > 0 else None,
        "comparisons_per_s_run": round(comparisons / (t_done - t_run)),
        "candidate_pairs": sum(f.get("candidates", 0) for f in shards),
        "solve_elapsed_ms": completed_fields.get("elapsed_ms"),
        "shards": per_shard,
        "upload_s": [round(u, 3) for u in uploads],
        "result_bytes": result_bytes,
        "peak_memory_mib": peaks,
        "lambda_reports": report_summary(follower.reports),
        "function_binary": binary,
        "accuracy": accuracy(result["groups"], truth),
        "groups_sha256": groups_digest(result["groups"]),
        "load_before": before,
        "load_after": load(),
    }


# --------------------------------------------------------------------------- driver

def machine():
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            return None
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1),
            "rustc": first(["rustc", "--version"]), "git_commit": first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
            "runner_concurrency": os.environ.get("LOCAL_RUNNER_CONCURRENCY", "2 (runner default)")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--only", help="comma-separated experiment names")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--pprl", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/pprl-target"), "release", "pprl"))
    ap.add_argument("--api", default=os.environ.get("API_URL", "http://127.0.0.1:8851"))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measurement (default 1800)")
    ap.add_argument("--max-load", type=float, default=None,
                    help="wait (up to 10 min) until the 1-minute load average is below this before each experiment")
    args = ap.parse_args()

    chosen = all_experiments()
    if args.quick:
        chosen = [e for e in chosen if e["name"] in QUICK]
    if args.only:
        chosen = all_experiments(with_extra=True)
        names = args.only.split(",")
        known = chosen + national_experiments()
        unknown = set(names) - {e["name"] for e in known}
        if unknown:
            sys.exit(f"unknown experiments {sorted(unknown)}; known: {[e['name'] for e in known]}")
        chosen = [e for e in known if e["name"] in names]

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "results.json"
    doc = json.loads(out_path.read_text()) if out_path.exists() else {"experiments": {}}
    doc["machine"] = machine()
    doc["description"] = ("bench/run.sh: engine-only (pprl link) vs end to end through the REST API on the "
                          "local stack; synthetic data from pprl synth (seed 1, 5 block ids per record)")

    failures = 0
    for exp in chosen:
        if args.max_load is not None:
            waited = time.monotonic()
            while os.getloadavg()[0] >= args.max_load and time.monotonic() - waited < 600:
                time.sleep(10)
        d, synth = dataset(args.pprl, exp["a"], exp["b"])
        truth = truth_pairs(d)
        entry = {**exp, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "data": {"dir": str(d.relative_to(ROOT)), **synth["statistics"]}}
        prior = doc["experiments"].get(exp["name"], {})
        try:
            if not args.skip_engine and not exp.get("e2e_only"):
                say(f"{exp['name']}: engine only (load {load()})")
                entry["engine"] = engine_only(args.pprl, exp, d, truth, args.timeout)
                say(f"{exp['name']}: engine {entry['engine']['wall_s']} s")
            elif "engine" in prior:
                entry["engine"] = prior["engine"]
            if not args.skip_e2e:
                say(f"{exp['name']}: end to end (load {load()})")
                entry["e2e"] = end_to_end(args.pprl, args.api, exp, d, truth, args.timeout)
                say(f"{exp['name']}: end to end {entry['e2e']['total_s']} s, stages {entry['e2e']['stages_s']}")
            elif "e2e" in prior:
                entry["e2e"] = prior["e2e"]
        except Exception as e:  # one failed experiment must not lose the others' results
            failures += 1
            entry["error"] = str(e)
            say(f"{exp['name']}: FAILED: {e}")
        if "engine" in entry and "e2e" in entry:
            entry["groups_identical"] = entry["engine"].get("groups_sha256") == entry["e2e"].get("groups_sha256")
            entry["e2e_over_engine"] = round(entry["e2e"]["total_s"] / entry["engine"]["wall_s"], 3)
            entry["e2e_run_over_engine"] = round(entry["e2e"]["run_s"] / entry["engine"]["wall_s"], 3)
        doc["experiments"][exp["name"]] = entry
        out_path.write_text(json.dumps(doc, indent=1) + "\n")
    say(f"wrote {out_path.relative_to(ROOT)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
