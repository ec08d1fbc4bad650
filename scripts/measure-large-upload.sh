#!/usr/bin/env bash
# Measures a large binary upload through the object store, end to end on the local stack:
# `pprl upload` (multipart with temporary credentials) → fan-out streams it into data.bin →
# a run against a small second party through compare and solve. Prints the time of each step
# and the peak resident memory (VmHWM) of the client and of every function process (the api,
# and each fan-out / compare / solve instance the runner started; their peaks are reset with
# /proc/<pid>/clear_refs first, so earlier work does not count; VmRSS is also sampled every
# 0.2 s, so a reset by someone else's measurement on the shared stack cannot hide a peak).
#
#   scripts/measure-large-upload.sh [RECORDS] [ENCODING_BYTES] [SECOND_PARTY_RECORDS]
#   (defaults: 10000000 128 100 — a 1.28 GB upload; the file is made once under /var/tmp)
#
# Needs a running stack (localstack/up.sh; PPRL_PROFILE=release for release functions) and a
# built pprl (CARGO_TARGET_DIR, PPRL_BIN_PROFILE=debug|release).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS="${1:-10000000}"
SIZE="${2:-128}"
SMALL="${3:-100}"
API_URL="${API_URL:-http://127.0.0.1:8851}"
export API_URL
TARGET="${CARGO_TARGET_DIR:-/var/tmp/pprl-target}"
PPRL="$TARGET/${PPRL_BIN_PROFILE:-debug}/pprl"
STATE=localstack/.state
BIG="/var/tmp/pprl-large-${RECORDS}x${SIZE}.bin"
SMALL_FILE="/var/tmp/pprl-large-small-${SMALL}x${SIZE}.bin"
say() { echo "measure: $*" >&2; }

[ -f "$BIG" ] || { say "making $BIG ($((RECORDS * SIZE)) bytes of random encodings)"; head -c $((RECORDS * SIZE)) /dev/urandom > "$BIG"; }
[ -f "$SMALL_FILE" ] || head -c $((SMALL * SIZE)) /dev/urandom > "$SMALL_FILE"

# pid -> name of the api and of every process the runner started.
function_pids() {
  local api runner
  api=$(cat "$STATE/pids/api.pid"); runner=$(cat "$STATE/pids/runner.pid")
  echo "$api api"
  for p in $(ps -o pid= --ppid "$runner"); do echo "$p $(basename "$(readlink "/proc/$p/exe")")"; done
}
reset_peaks() { function_pids | while read -r pid _; do echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true; done; }
sample_rss() { # until killed: "name kB" lines, one per process per 0.2 s
  while true; do
    function_pids | while read -r pid name; do
      echo "$name $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    done
    sleep 0.2
  done
}
report_peaks() {
  { function_pids | while read -r pid name; do
      echo "$name $(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    done; cat /tmp/pprl-large-rss-samples; } | awk '{ if ($2 > max[$1]) max[$1] = $2 } END { for (n in max) printf "  %-10s peak RSS %7.1f MiB\n", n, max[n] / 1024 }' | sort
}
json() { python3 -c "import json,sys; print(eval('json.load(sys.stdin)' + sys.argv[1]))" "$1"; }
describe() { curl -s -H "Authorization: $RESULT_TOKEN" "$API_URL/api/v1/projects/$PROJECT"; }

PROJECT_JSON=$("$PPRL" create-project --name "large upload $RECORDS x $SIZE")
PROJECT=$(json "['project_id']" <<<"$PROJECT_JSON")
RESULT_TOKEN=$(json "['result_token']" <<<"$PROJECT_JSON")
TOKEN0=$(json "['update_tokens'][0]" <<<"$PROJECT_JSON")
TOKEN1=$(json "['update_tokens'][1]" <<<"$PROJECT_JSON")
say "project $PROJECT"
reset_peaks
sample_rss > /tmp/pprl-large-rss-samples &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

t0=$(date +%s.%N)
/usr/bin/time -f "%M" -o /tmp/pprl-upload-rss "$PPRL" upload --project "$PROJECT" --token "$TOKEN0" --encoding-size "$SIZE" "$BIG" >/dev/null
t1=$(date +%s.%N)
until [ "$(describe | json "['parties_contributed']")" = 1 ]; do
  [ "$(describe | json "['error']")" = True ] && { say "ingestion failed: $(describe)"; exit 1; }
  sleep 0.5
done
t2=$(date +%s.%N)
echo "records $RECORDS x $SIZE bytes ($((RECORDS * SIZE)) bytes), second party $SMALL records"
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
  printf "  upload to the object store   %8.1f s\n  ingestion (fan-out)          %8.1f s\n", b - a, c - b }'
printf "  %-10s peak RSS %7.1f MiB\n" "pprl" "$(awk '{print $1 / 1024}' /tmp/pprl-upload-rss)"
echo "  peaks after ingestion:"
report_peaks
"$PPRL" upload --project "$PROJECT" --token "$TOKEN1" --encoding-size "$SIZE" "$SMALL_FILE" >/dev/null
RUN=$("$PPRL" run --project "$PROJECT" --token "$RESULT_TOKEN" --threshold 0.9 | json "['run_id']")
"$PPRL" status --project "$PROJECT" --run "$RUN" --token "$RESULT_TOKEN" --watch >/tmp/pprl-large-status.json
t3=$(date +%s.%N)
kill $SAMPLER
awk -v c="$t2" -v d="$t3" 'BEGIN { printf "  run (second party, compare, solve; queued behind other runs) %8.1f s\n", d - c }'
echo "  peaks after the run:"
report_peaks
echo "  functions run from $(dirname "$(readlink "/proc/$(cat "$STATE/pids/api.pid")/exe")")"
python3 -c "import json; s=json.load(open('/tmp/pprl-large-status.json')); print('  run', s['state'], 'comparisons', s.get('total_number_comparisons'))"
curl -s -X DELETE -H "Authorization: $RESULT_TOKEN" "$API_URL/api/v1/projects/$PROJECT" >/dev/null
