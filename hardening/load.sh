#!/usr/bin/env bash
# Load test on loopback (hardening/load.py): concurrent projects uploading and running at once,
# each polling its run's status every 0.5 s, plus extra pollers on /status and run status.
# Checks that every run completes with exactly the planted groups; prints requests, throughput,
# p50/p95/p99 latency and errors per endpoint, run wall times and the load average.
#
#   hardening/load.sh                      defaults for a 2-core machine: 20 concurrent projects
#                                          x 5 rounds, 500 records x 128 B per party, 8 extra pollers
#   hardening/load.sh --projects 40 ...    any hardening/load.py option (--help lists them)
#
# Starts the local stack if it is not answering (building the debug binaries first if they are
# missing) and stops it again at the end in that case; a stack that was already running is left
# running. The figures are also written to .local/load/last.json. Exit status: load.py's (0 only
# if every run completed with the right groups and no request failed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
API_URL="${API_URL:-http://127.0.0.1:8851}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target}"
PROFILE="${PPRL_PROFILE:-debug}"

started=0
if ! curl -sf -m 5 "$API_URL/api/v1/status" > /dev/null; then
  missing=0
  for bin in api fan-out compare solve local-runner; do
    [[ -x "$CARGO_TARGET_DIR/$PROFILE/$bin" ]] || missing=1
  done
  if [[ $missing == 1 ]]; then
    echo "load: building the service binaries ($PROFILE)" >&2
    flag=(); [[ $PROFILE == release ]] && flag=(--release)
    (cd "$ROOT" && cargo build "${flag[@]}" -p api -p fan-out -p compare -p solve -p local-runner)
  fi
  echo "load: starting the local stack" >&2
  started=1
  trap '"$ROOT/localstack/down.sh" || true' EXIT
  PPRL_SKIP_BUILD=1 "$ROOT/localstack/up.sh" > /dev/null
fi

mkdir -p "$ROOT/.local/load"
rc=0
python3 "$ROOT/hardening/load.py" --url "$API_URL" --json "$ROOT/.local/load/last.json" "$@" || rc=$?
[[ $started == 1 ]] && echo "load: stopping the local stack this script started" >&2
exit $rc
