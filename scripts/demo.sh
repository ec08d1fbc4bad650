#!/usr/bin/env bash
# One command from a fresh clone to a real linkage: starts the local stack (installing what is
# missing), then links the FEBRL4 sample through the REST API and prints matches,
# precision/recall against the ground truth and the time of each stage.
# The stack keeps running afterwards (API_URL=http://127.0.0.1:8851); stop it with
# localstack/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target}"
threshold="${1:-0.8}"
cargo build --locked -p pprl -p api -p fan-out -p compare -p solve -p local-runner >&2
api_line=$(PPRL_SKIP_BUILD=1 localstack/up.sh | tail -n 1)
export "${api_line?}"
"$CARGO_TARGET_DIR/debug/pprl" demo --server "$API_URL" --data data/febrl4 --threshold "$threshold"
echo >&2
echo "The stack is still running at $API_URL; stop it with localstack/down.sh" >&2
