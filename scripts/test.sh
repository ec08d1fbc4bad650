#!/usr/bin/env bash
# Runs every test of the project: unit and property tests, the template lint (cfn-lint, offline
# SAM translation, `sam validate --lint`), `sam build` of the four functions, the local-stack
# pinning test, then the end-to-end suite against a local stack that this script
# starts (localstack/up.sh) and always stops again (localstack/down.sh).
#
#   scripts/test.sh                 everything
#   PPRL_KEEP_STACK=1 scripts/test.sh   leave the stack running afterwards (for debugging)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*" >&2; }

step "building the workspace (debug, with tests)"
cargo build --workspace --all-targets --locked

step "infra: template lint (cfn-lint + offline SAM translation + sam validate --lint)"
infra/lint.sh

# Debug mode and the host's architecture, into the same target dir (infra/README.md, "CI build
# check"); each bootstrap then answers one invocation through a stand-in Runtime API.
step "infra: sam build of the four functions (rust-cargolambda, debug) + bootstrap smoke check"
infra/sam_build.sh

step "localstack: resources come from the template"
python3 -m unittest discover -s localstack -p 'test_*.py'

step "starting the local stack"
stopped=0
stop_stack() {
  if [ "$stopped" = 0 ] && [ -z "${PPRL_KEEP_STACK:-}" ]; then
    stopped=1
    step "stopping the local stack"
    localstack/down.sh || true
  fi
}
trap stop_stack EXIT
api_line=$(PPRL_SKIP_BUILD=1 localstack/up.sh | tail -n 1)
export "${api_line?}"
: "${API_URL:?localstack/up.sh did not print API_URL}"
echo "API_URL=$API_URL" >&2

step "unit, property and end-to-end tests"
cargo nextest run --workspace --no-fail-fast -E 'not test(/^faults::restarts::/)'

# Tests that stop and start parts of the stack disturb everything beside them: alone, one at a time.
step "end-to-end: workers and queues lost mid-run (one test at a time)"
cargo nextest run --workspace --no-fail-fast -j 1 -E 'test(/^faults::restarts::/)'

# The unchanged reference client (anonlink-client 0.1.5) through authorize-external-upload and
# the object store; installs itself into .local/ on first use (~40 s).
step "compatibility: anonlink-client 0.1.5 uploads through the object store"
tests/compat/anonlink_client.sh

# A 1-minute slice of the schemathesis API fuzzing (docs/hardening.md has the full run):
# no 5xx, every response as documented in docs/openapi.yaml, no hang.
step "hardening: API fuzzing slice (schemathesis, docs/openapi.yaml)"
hardening/fuzz_api.sh --quick
