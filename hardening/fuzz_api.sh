#!/usr/bin/env bash
# Fuzzes the REST API on a running local stack with schemathesis, from docs/openapi.yaml.
#
#   hardening/fuzz_api.sh            full run: every phase (coverage, fuzzing, stateful links
#                                    create project → upload → run → status/result), ≥ 10,000
#                                    generated requests
#   hardening/fuzz_api.sh --quick    a 1–2 minute slice for scripts/test.sh
#
# Environment: API_URL (default http://127.0.0.1:8851; start the stack first with
# `PPRL_SKIP_BUILD=1 localstack/up.sh`), FUZZ_SEED (reproduce a run), FUZZ_MAX_EXAMPLES
# (per operation; overrides the mode's default).
#
# Checks: every schemathesis check (no 5xx, status codes, content types, headers and bodies
# conform to the document, negative data rejected, positive data accepted, stateful
# resource checks), requests time out after 10 s (a hang is a failure), plus
# hardening/st_hooks.py. hardening/schemathesis.toml holds the two places where the reference
# contract overrides a generic expectation, each with its reason. 503 is a failure too: on a
# healthy stack no request should find the backend unavailable.
#
# schemathesis is installed into .local/schemathesis-venv (git-ignored) on first use. The
# report (NDJSON events, JUnit) goes to .local/fuzz-api/<mode>/; the last lines printed are the
# number of requests sent (by status) and the verdict.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/hardening"
VENV="$ROOT/.local/schemathesis-venv"
SCHEMATHESIS_VERSION=4.32.5
API_URL="${API_URL:-http://127.0.0.1:8851}"

mode=full
case "${1:-}" in
  "") ;;
  --quick) mode=quick ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

if [[ ! -x "$VENV/bin/schemathesis" ]] || ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "fuzz_api: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

if ! curl -sf -m 10 "$API_URL/api/v1/status" > /dev/null; then
  echo "fuzz_api: $API_URL/api/v1/status does not answer 200; start the stack (PPRL_SKIP_BUILD=1 localstack/up.sh)" >&2
  exit 1
fi

# Full: ~700 cases per operation in the fuzzing phase (15 operations), plus the coverage
# phase's boundary cases and the stateful scenarios, comfortably over 10,000 requests.
# Quick: enough for every operation and every link to be exercised in about a minute.
if [[ $mode == full ]]; then
  max_examples="${FUZZ_MAX_EXAMPLES:-700}"
else
  max_examples="${FUZZ_MAX_EXAMPLES:-80}"
fi

REPORT_DIR="$ROOT/.local/fuzz-api/$mode"
rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"

seed_args=()
if [[ -n "${FUZZ_SEED:-}" ]]; then
  seed_args=(--seed "$FUZZ_SEED")
fi

# Run from the report directory: schemathesis keeps its example database in the working
# directory, and the hooks module is found through PYTHONPATH.
set +e
(
  cd "$REPORT_DIR"
  SCHEMATHESIS_HOOKS=st_hooks PYTHONPATH="$HERE" \
    "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis.toml" run "$ROOT/docs/openapi.yaml" \
    --url "$API_URL/api/v1" \
    --phases examples,coverage,fuzzing,stateful \
    --checks all --exclude-checks missing_required_header \
    --max-examples "$max_examples" \
    --request-timeout 10 \
    --workers 2 \
    --generation-database none \
    --no-color \
    --report ndjson,junit --report-dir "$REPORT_DIR" \
    "${seed_args[@]}"
) > "$REPORT_DIR/output.txt" 2>&1
rc=$?
set -e

# The whole output is kept for reading; the console gets the summary.
sed -n '/= SUMMARY =/,$p' "$REPORT_DIR/output.txt"
if [[ $rc -ne 0 ]]; then
  sed -n '/= FAILURES =/,/= SUMMARY =/p;/= ERRORS =/,/= SUMMARY =/p' "$REPORT_DIR/output.txt" | cut -c1-400 | head -200
fi
# Requests actually sent, by status, from the NDJSON event log (each recorded interaction is one
# HTTP request and its response; a missing response is a timeout or a dropped connection).
cases="$("$VENV/bin/python" - "$REPORT_DIR" <<'PY'
import collections, glob, json, sys
statuses = collections.Counter()
for path in glob.glob(f"{sys.argv[1]}/ndjson-*.ndjson"):
    for line in open(path, encoding="utf-8"):
        event = json.loads(line)
        body = next(iter(event.values()))
        if isinstance(body, dict) and "recorder" in body:
            for interaction in body["recorder"].get("interactions", {}).values():
                response = interaction.get("response")
                statuses[response["status_code"] if response else "no response"] += 1
print(sum(statuses.values()))
print("by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)), file=sys.stderr)
PY
)"
echo "fuzz_api ($mode): $cases requests against $API_URL; report in $REPORT_DIR"
if [[ $rc -ne 0 ]]; then
  echo "fuzz_api ($mode): FAILED (schemathesis exit $rc)" >&2
  exit "$rc"
fi
if [[ $mode == full && $cases -lt 10000 ]]; then
  echo "fuzz_api: only $cases requests were sent; the full run promises at least 10,000" >&2
  exit 1
fi
echo "fuzz_api ($mode): no failures"
