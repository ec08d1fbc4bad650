#!/usr/bin/env bash
# The benchmark suite: engine only (pprl link) vs end to end through the REST API on the local
# stack, at the reference's sizes. Writes bench/results/results.json and bench/results/chart.svg.
#
#   bench/run.sh --quick                 10K x 10K at 0.95, with and without blocking (minutes)
#   bench/run.sh                         every experiment (100K x 1M included: the better part of an hour)
#   bench/run.sh --only 100k-t0.8,100k-t0.8-blocked      a subset (results.json is merged by name)
#   other options: see bench/run.py --help
#
#   PPRL_SKIP_BUILD=1     use the release binaries already in $CARGO_TARGET_DIR/release
#   BENCH_KEEP_RELEASE=1  leave the stack on the release build afterwards (default: back to debug)
#
# The stack is shared: this switches the running functions to the release build (runner and api
# only; emulators and data stay) and back to debug at the end, as localstack/README.md describes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target}"
say() { echo "bench: $*" >&2; }

if [ "${PPRL_SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build --release (functions, runner, pprl)"
  cargo build --release -p api -p fan-out -p compare -p solve -p local-runner -p pprl
fi

running_profile() { # the build the runner's functions come from (runner.json)
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["functions"][0]["binary"].split("/")[-2])' \
    localstack/.state/runner.json 2>/dev/null || echo none
}
switch_to() {
  [ "$(running_profile)" = "$1" ] && pgrep -f "$CARGO_TARGET_DIR/$1/local-runner" >/dev/null && return 0
  say "switching the local stack's functions to the $1 build"
  localstack/down.sh --only runner
  localstack/down.sh --only api
  PPRL_PROFILE="$1" PPRL_SKIP_BUILD=1 localstack/up.sh >/dev/null
}

switch_to release
if [ "${BENCH_KEEP_RELEASE:-0}" != 1 ]; then
  # Others' tests expect the debug build: go back even when a benchmark fails.
  trap 'switch_to debug || say "could not switch back to debug: run localstack/down.sh --only runner; localstack/down.sh --only api; localstack/up.sh"' EXIT
fi

rc=0
python3 bench/run.py "$@" || rc=$?
python3 bench/chart.py bench/results/results.json bench/results/chart.svg
exit $rc
