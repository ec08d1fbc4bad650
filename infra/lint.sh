#!/usr/bin/env bash
# Offline lint of infra/template.yaml in two stages (see shared/rust-lambda.md §5):
#   1. cfn-lint on the SAM template itself;
#   2. aws-sam-translator expands it offline (infra/sam_translate.py), cfn-lint on the result
#      (this stage catches bad SAM event properties, circular dependencies, unknown IAM actions).
#   3. `sam validate --lint` (the SAM CLI's own checks plus its cfn-lint), offline with dummy
#      credentials; aws-sam-cli comes from PyPI into a cached venv (infra/sam_tools.sh, ~1 min
#      once). LINT_SAM_CLI=0 skips this stage (a quick local run); CI always runs it.
# Errors AND warnings fail (cfn-lint exit code bits: 2 error, 4 warning, 8 info).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The linters are cached outside the clone (like the local stack's tools), keyed by version.
VENV="${PPRL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pprl-localstack}/venv-infra-${CFN_LINT_VERSION:-1.58.0}"
TEMPLATE=infra/template.yaml
OUT_DIR=infra/.build
PY="${LINT_PYTHON:-python3}"

CFN_LINT_VERSION="${CFN_LINT_VERSION:-1.58.0}"
SAM_TRANSLATOR_VERSION="${SAM_TRANSLATOR_VERSION:-1.115.0}"

if [ ! -x "$VENV/bin/cfn-lint" ] || ! "$VENV/bin/python" -c "import samtranslator" 2>/dev/null; then
  echo "lint: installing cfn-lint ${CFN_LINT_VERSION} and aws-sam-translator ${SAM_TRANSLATOR_VERSION} into $VENV" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "cfn-lint==${CFN_LINT_VERSION}" "aws-sam-translator==${SAM_TRANSLATOR_VERSION}"
fi

fail=0
run_cfn_lint() { # cfn-lint returns bit flags; info (8) alone is fine
  local rc=0
  "$VENV/bin/cfn-lint" --non-zero-exit-code informational "$@" || rc=$?
  if [ $((rc & 6)) -ne 0 ] || [ $((rc & 1)) -ne 0 ]; then return 1; fi
  return 0
}

echo "lint: stage 1: cfn-lint $TEMPLATE"
run_cfn_lint "$TEMPLATE" || fail=1

echo "lint: stage 2: sam translate + cfn-lint"
mkdir -p "$OUT_DIR"
if "$VENV/bin/python" infra/sam_translate.py "$TEMPLATE" "$OUT_DIR/template.expanded.json"; then
  run_cfn_lint "$OUT_DIR/template.expanded.json" || fail=1
else
  fail=1
fi

if [ "${LINT_SAM_CLI:-1}" != 0 ]; then
  echo "lint: stage 3: sam validate --lint"
  # shellcheck source=infra/sam_tools.sh
  . infra/sam_tools.sh
  ensure_sam_tools
  sam_offline sam validate --lint --template-file "$TEMPLATE" || fail=1
fi

if [ "$fail" -ne 0 ]; then
  echo "lint: FAILED" >&2
  exit 1
fi
echo "lint: OK"
