#!/usr/bin/env bash
# anonlink-client 0.1.5 (the last release with the entity-service commands), unchanged, against
# this service: create a project, upload both FEBRL4 parties through the object store
# (authorize-external-upload + MinIO client + ExternalData), run, wait for the result and check
# it equals anonlink's answer. Needs a running stack (localstack/up.sh) and API_URL.
#
# The client is installed once into .local/anonlink-client-venv (Python 3.8 from pyenv, ~40 s;
# no extra pins were needed: pip resolves minio 7.2, clkhash 0.18, blocklib 0.1 for 3.8).
set -euo pipefail
cd "$(dirname "$0")/../.."
API_URL="${API_URL:-http://127.0.0.1:8851}"
VENV=.local/anonlink-client-venv
if [[ ! -x "$VENV/bin/anonlink" ]]; then
  PY="${PPRL_PYTHON38:-$(ls -d "$HOME"/.pyenv/versions/3.8.*/bin/python 2>/dev/null | tail -1)}"
  [[ -x "$PY" ]] || { echo "compat: need a Python 3.8 (set PPRL_PYTHON38)" >&2; exit 1; }
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q anonlink-client==0.1.5
fi
anonlink() { "$VENV/bin/anonlink" "$@"; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DATA=data/febrl4

anonlink create-project --type groups --schema "$DATA/schema.json" --name "anonlink-client 0.1.5 compat" \
  --server "$API_URL" --output "$WORK/project.json"
field() { python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print(eval('v'+sys.argv[2]))" "$@"; }
PROJECT=$(field "$WORK/project.json" "['project_id']")
RESULT_TOKEN=$(field "$WORK/project.json" "['result_token']")

for party in 0 1; do
  side=$([[ $party == 0 ]] && echo a || echo b)
  token=$(field "$WORK/project.json" "['update_tokens'][$party]")
  anonlink upload "$DATA/clks_$side.json" --project "$PROJECT" --apikey "$token" --server "$API_URL" \
    --output "$WORK/upload_$party.json" | tee "$WORK/upload_$party.log"
  # The client falls back to a direct upload when it gets no credentials; this test is about
  # the object-store path, so insist on it.
  grep -q "external object store" "$WORK/upload_$party.log" || { echo "compat: party $party did not go through the object store" >&2; exit 1; }
done

anonlink create --project "$PROJECT" --apikey "$RESULT_TOKEN" --threshold 0.8 --name compat \
  --server "$API_URL" --output "$WORK/run.json"
RUN=$(field "$WORK/run.json" "['run_id']")
timeout 300 "$VENV/bin/anonlink" results --project "$PROJECT" --apikey "$RESULT_TOKEN" --run "$RUN" --watch \
  --server "$API_URL" --output "$WORK/result.json" > "$WORK/results.log" 2>&1 || { cat "$WORK/results.log" >&2; exit 1; }

python3 - "$WORK/result.json" "$DATA/greedy_solution_t0.8.json" <<'PY'
import json, sys
canon = lambda groups: sorted(sorted(tuple(m) for m in g) for g in groups)
got = canon(json.load(open(sys.argv[1]))["groups"])
want = canon(json.load(open(sys.argv[2])))
assert got == want, f"groups differ: {len(got)} from the service, {len(want)} from anonlink"
print(f"compat: anonlink-client 0.1.5 linked FEBRL4 through the object store: {len(got)} groups, equal to anonlink's")
PY
