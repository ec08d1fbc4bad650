#!/usr/bin/env python3
"""Load test on loopback: many concurrent projects uploading and running at once, plus a burst of
status polls like the reference's clients make (every 0.5 s).

Each project has 2 parties of synthetic encodings with planted matches: party B record i is a
light-noise copy of party A record i for a chosen subset of i, and every other B record is random.
Before any request is sent, the script computes every pair's Dice score locally and asserts that at
the threshold the links are exactly the planted pairs (each planted pair is above it, every other
pair below it), so the expected groups are known. Then, at the same time:

- --projects workers, each running --rounds projects one after the other; every project: create (groups, 2 parties) -> upload party 0 as JSON (/clks) and party 1 as binary
  (/binaryclks) -> post a run -> poll the run's status every --poll-interval s until it is final ->
  fetch the result and compare its groups with the planted pairs;
- --pollers extra clients alternate GET /status and the status of a random posted run every
  --hammer-interval s.

Bounded: a global --deadline, a per-request --timeout, a fixed number of projects and pollers, and
the URL must be on loopback. Prints requests, throughput, latency percentiles and errors per
endpoint, run wall times and the load average; exits 1 if any run did not complete with the
expected groups (or any request failed), 2 on bad arguments.
"""

import argparse
import base64
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from urllib.parse import urlparse

import requests


# ---- synthetic data with planted matches --------------------------------------------------------

def make_project_data(seed, n, size, planted_fraction, noise_bits):
    """Returns (a, b, planted) where a and b are lists of `size`-byte records and planted is the
    sorted list of i for which b[i] is a copy of a[i] with at most `noise_bits` bits flipped."""
    rng = random.Random(seed)
    a = [rng.randbytes(size) for _ in range(n)]
    planted = sorted(rng.sample(range(n), int(n * planted_fraction)))
    planted_set = set(planted)
    b = []
    for i in range(n):
        if i in planted_set:
            r = bytearray(a[i])
            for _ in range(rng.randint(0, noise_bits)):
                bit = rng.randrange(size * 8)
                r[bit // 8] ^= 1 << (bit % 8)
            b.append(bytes(r))
        else:
            b.append(rng.randbytes(size))
    return a, b, planted


def check_planted(a, b, planted, threshold):
    """Computes every pair's Dice score; asserts that the pairs at or above the threshold are
    exactly (i, i) for i in planted. With at most one link per record, any solver (greedy
    included) then answers exactly the planted pairs. Returns (min planted, max other) Dice."""
    ai = [int.from_bytes(x, "big") for x in a]
    bi = [int.from_bytes(x, "big") for x in b]
    ac = [x.bit_count() for x in ai]
    bc = [x.bit_count() for x in bi]
    planted_set = set(planted)
    min_planted, max_other = 1.0, 0.0
    for i, (x, cx) in enumerate(zip(ai, ac)):
        for j, (y, cy) in enumerate(zip(bi, bc)):
            d = 2.0 * (x & y).bit_count() / (cx + cy) if cx + cy else 0.0
            if i == j and i in planted_set:
                min_planted = min(min_planted, d)
            elif d > max_other:
                max_other = d
    assert min_planted >= threshold, f"a planted pair scores {min_planted:.4f} < threshold {threshold}"
    assert max_other < threshold, f"an unplanted pair scores {max_other:.4f} >= threshold {threshold}"
    return min_planted, max_other


def canonical_groups(groups):
    return sorted(tuple(sorted((int(m[0]), int(m[1])) for m in g)) for g in groups)


# ---- the client and its measurements ------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = defaultdict(list)  # endpoint -> [seconds]
        self.statuses = defaultdict(Counter)  # endpoint -> Counter(status or exception name)
        self.unexpected = []  # (endpoint, status, body excerpt)

    def record(self, endpoint, status, seconds, expected, body=""):
        with self.lock:
            self.latency[endpoint].append(seconds)
            self.statuses[endpoint][status] += 1
            if status != expected and len(self.unexpected) < 50:
                self.unexpected.append((endpoint, status, body[:300]))


class Client:
    def __init__(self, base, stats, timeout):
        self.base = base.rstrip("/") + "/api/v1"
        self.stats = stats
        self.timeout = timeout
        self.http = requests.Session()

    def call(self, endpoint, method, path, expected, **kw):
        """One request; records latency and status. Returns (status, parsed JSON or None)."""
        t0 = time.perf_counter()
        try:
            r = self.http.request(method, self.base + path, timeout=self.timeout, **kw)
        except requests.RequestException as e:
            self.stats.record(endpoint, type(e).__name__, time.perf_counter() - t0, expected, str(e))
            return None, None
        elapsed = time.perf_counter() - t0
        self.stats.record(endpoint, r.status_code, elapsed, expected, r.text if r.status_code != expected else "")
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body


class Shared:
    def __init__(self, deadline):
        self.deadline = deadline
        self.lock = threading.Lock()
        self.runs = []  # (project_id, run_id, result_token) posted so far
        self.done = threading.Event()

    def time_left(self):
        return self.deadline - time.monotonic()


def project_worker(k, args, datasets, stats, shared, outcomes):
    """Runs this worker's projects one after the other (--rounds of them)."""
    c = Client(args.url, stats, args.timeout)
    for data, outcome in zip(datasets, outcomes):
        if shared.time_left() <= 0:
            outcome["failure"] = "not started before the deadline"
            continue
        one_project(k, args, data, c, shared, outcome)


def one_project(k, args, data, c, shared, o):
    a, b, planted = data
    o["state"] = "create"
    st, v = c.call("POST /projects", "POST", "/projects", 201, json={
        "schema": {}, "result_type": "groups", "number_parties": 2,
        "name": f"load {k}", "notes": "hardening/load.py", "uses_blocking": False})
    if st != 201:
        o["failure"] = f"create project: {st}"
        return
    pid, result_token, update = v["project_id"], v["result_token"], v["update_tokens"]
    o["project_id"] = pid

    o["state"] = "upload"
    st, _ = c.call("POST /clks", "POST", f"/projects/{pid}/clks", 201,
                   headers={"Authorization": update[0]},
                   json={"clks": [base64.b64encode(r).decode() for r in a]})
    if st != 201:
        o["failure"] = f"upload party 0 (JSON): {st}"
        return
    st, _ = c.call("POST /binaryclks", "POST", f"/projects/{pid}/binaryclks", 201,
                   headers={"Authorization": update[1], "Content-Type": "application/octet-stream",
                            "Hash-Count": str(len(b)), "Hash-Size": str(args.size)},
                   data=b"".join(b))
    if st != 201:
        o["failure"] = f"upload party 1 (binary): {st}"
        return

    o["state"] = "run"
    st, v = c.call("POST /runs", "POST", f"/projects/{pid}/runs", 201,
                   headers={"Authorization": result_token},
                   json={"threshold": args.threshold, "name": f"load {k}"})
    if st != 201:
        o["failure"] = f"post run: {st}"
        return
    run = v["run_id"]
    run_started = time.monotonic()
    with shared.lock:
        shared.runs.append((pid, run, result_token))

    o["state"] = "poll"
    final = None
    while shared.time_left() > 0:
        st, v = c.call("GET run status", "GET", f"/projects/{pid}/runs/{run}/status", 200,
                       headers={"Authorization": result_token})
        if st == 200 and v.get("state") in ("completed", "error"):
            final = v
            break
        time.sleep(args.poll_interval)
    if final is None:
        o["failure"] = f"run {run} not final before the deadline"
        return
    o["run_seconds"] = time.monotonic() - run_started
    if final["state"] != "completed":
        o["failure"] = f"run {run} ended in state {final['state']}: {final.get('message')}"
        return

    o["state"] = "result"
    st, v = c.call("GET result", "GET", f"/projects/{pid}/runs/{run}/result", 200,
                   headers={"Authorization": result_token})
    if st != 200 or not isinstance(v, dict) or "groups" not in v:
        o["failure"] = f"result: {st}"
        return
    got = canonical_groups(v["groups"])
    want = [((0, i), (1, i)) for i in planted]
    if got != want:
        missing = len(set(want) - set(got))
        extra = len(set(got) - set(want))
        o["failure"] = f"groups differ: {len(got)} returned, {len(want)} expected, {missing} missing, {extra} extra"
        return
    o["groups"] = len(got)
    o["state"] = "ok"


def poller(k, args, stats, shared):
    c = Client(args.url, stats, args.timeout)
    rng = random.Random(args.seed * 1000 + k)
    i = 0
    while not shared.done.is_set() and shared.time_left() > 0:
        with shared.lock:
            run = rng.choice(shared.runs) if shared.runs else None
        if i % 2 == 0 or run is None:
            c.call("GET /status", "GET", "/status", 200)
        else:
            pid, rid, token = run
            c.call("GET run status (extra)", "GET", f"/projects/{pid}/runs/{rid}/status", 200,
                   headers={"Authorization": token})
        i += 1
        shared.done.wait(args.hammer_interval)


def load_sampler(samples, shared):
    while not shared.done.is_set():
        samples.append(os.getloadavg()[0])
        shared.done.wait(2.0)


# ---- report -------------------------------------------------------------------------------------

def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("API_URL", "http://127.0.0.1:8851"))
    ap.add_argument("--projects", type=int, default=20, help="concurrent projects (default 20)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="projects each concurrent worker runs one after the other (default 5)")
    ap.add_argument("--records", type=int, default=500, help="records per party (default 500)")
    ap.add_argument("--size", type=int, default=128, help="bytes per encoding (default 128)")
    ap.add_argument("--planted", type=float, default=0.5, help="fraction of records with a planted match (default 0.5)")
    ap.add_argument("--noise-bits", type=int, default=40, help="at most this many bits flipped in a planted copy (default 40)")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--pollers", type=int, default=8, help="extra status pollers (default 8)")
    ap.add_argument("--poll-interval", type=float, default=0.5, help="each project's run-status poll interval, s (default 0.5)")
    ap.add_argument("--hammer-interval", type=float, default=0.1, help="each extra poller's interval, s (default 0.1)")
    ap.add_argument("--deadline", type=float, default=240, help="global deadline for the load phase, s (default 240)")
    ap.add_argument("--timeout", type=float, default=30, help="per-request timeout, s (default 30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    host = urlparse(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"load: refusing a non-loopback URL {args.url}", file=sys.stderr)
        return 2
    if not (1 <= args.projects <= 200 and 1 <= args.rounds <= 100 and 1 <= args.records <= 20000 and 0 <= args.pollers <= 100
            and 0 < args.deadline <= 1800 and 0 < args.planted <= 1):
        print("load: arguments out of the bounded range", file=sys.stderr)
        return 2

    # Data and its check, before the clock starts.
    t0 = time.monotonic()
    total_projects = args.projects * args.rounds
    datasets, min_planted, max_other = [], 1.0, 0.0
    for k in range(total_projects):
        d = make_project_data(args.seed * 100003 + k, args.records, args.size, args.planted, args.noise_bits)
        lo, hi = check_planted(*d, args.threshold)
        min_planted, max_other = min(min_planted, lo), max(max_other, hi)
        datasets.append(d)
    print(f"load: {args.projects} concurrent workers x {args.rounds} projects each = {total_projects} projects"
          f" x 2 parties x {args.records} records x {args.size} B, "
          f"{int(args.records * args.planted)} planted pairs each; Dice at or above {args.threshold} are exactly "
          f"the planted pairs (lowest planted {min_planted:.4f}, highest other {max_other:.4f}); "
          f"checked in {time.monotonic() - t0:.1f} s", flush=True)

    try:
        r = requests.get(args.url.rstrip("/") + "/api/v1/status", timeout=args.timeout)
        r.raise_for_status()
    except requests.RequestException as e:
        print(f"load: the service at {args.url} does not answer /status: {e}", file=sys.stderr)
        return 1

    stats = Stats()
    load_before = os.getloadavg()
    start = time.monotonic()
    shared = Shared(start + args.deadline)
    outcomes = [{"state": "pending"} for _ in range(total_projects)]
    load_samples = []
    sampler = threading.Thread(target=load_sampler, args=(load_samples, shared), daemon=True)
    sampler.start()
    workers = [threading.Thread(target=project_worker,
                                args=(k, args, datasets[k::args.projects], stats, shared, outcomes[k::args.projects]))
               for k in range(args.projects)]
    pollers = [threading.Thread(target=poller, args=(k, args, stats, shared)) for k in range(args.pollers)]
    for t in workers + pollers:
        t.start()
    for t in workers:
        t.join(max(0.0, shared.time_left()) + args.timeout + 5)
    shared.done.set()
    for t in pollers:
        t.join(args.timeout + 5)
    wall = time.monotonic() - start
    load_after = os.getloadavg()

    # ---- report
    total = sum(len(v) for v in stats.latency.values())
    print(f"\nwall {wall:.1f} s, {total} requests, {total / wall:.1f} req/s overall "
          f"({args.projects} concurrent projects x {args.rounds} rounds, {args.pollers} extra pollers every {args.hammer_interval} s, "
          f"run status every {args.poll_interval} s)")
    header = f"{'endpoint':<26}{'requests':>9}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses"
    print(header)
    print("-" * len(header))
    figures = {}
    for ep in sorted(stats.latency):
        lat = stats.latency[ep]
        row = {
            "requests": len(lat), "req_per_s": len(lat) / wall,
            "p50_ms": pct(lat, 50) * 1000, "p95_ms": pct(lat, 95) * 1000,
            "p99_ms": pct(lat, 99) * 1000, "max_ms": max(lat) * 1000,
            "statuses": {str(s): n for s, n in sorted(stats.statuses[ep].items(), key=str)},
        }
        figures[ep] = row
        statuses = ", ".join(f"{s}: {n}" for s, n in row["statuses"].items())
        print(f"{ep:<26}{row['requests']:>9}{row['req_per_s']:>8.1f}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
              f"{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}  {statuses}")
    expected = {"POST /projects": 201, "POST /clks": 201, "POST /binaryclks": 201, "POST /runs": 201}
    errors = Counter()
    for ep, counter in stats.statuses.items():
        for s, n in counter.items():
            if s != expected.get(ep, 200):
                errors[str(s)] += n
    print(f"errors by status: {dict(errors) if errors else 'none'}")
    for ep, s, body in stats.unexpected[:10]:
        print(f"  {ep}: {s} {body}")

    run_times = [o["run_seconds"] for o in outcomes if "run_seconds" in o]
    ok = [o for o in outcomes if o["state"] == "ok"]
    failed = [o for o in outcomes if o["state"] != "ok"]
    if run_times:
        print(f"run wall time (post run -> completed seen by a {args.poll_interval} s poll): "
              f"p50 {statistics.median(run_times):.1f} s, max {max(run_times):.1f} s over {len(run_times)} runs")
    print(f"runs completed with exactly the planted groups: {len(ok)}/{total_projects}"
          + (f" ({ok[0]['groups']} groups each)" if ok else ""))
    for o in failed:
        print(f"  FAILED project {o.get('project_id', '?')} at {o['state']}: {o.get('failure', 'worker still running at the deadline')}")
    peak = max(load_samples) if load_samples else float("nan")
    print(f"machine: {os.cpu_count()} cores; load average (1/5/15 min) before "
          f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
          f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}, 1-min peak during the run {peak:.2f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "wall_s": wall, "requests": total, "req_per_s": total / wall,
                       "endpoints": figures, "errors": dict(errors),
                       "runs": {"completed_ok": len(ok), "projects": total_projects,
                                "p50_s": statistics.median(run_times) if run_times else None,
                                "max_s": max(run_times) if run_times else None},
                       "failures": [o.get("failure") for o in failed],
                       "cores": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                       "loadavg_peak_1min": peak}, f, indent=2)
    return 0 if not failed and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
