#!/usr/bin/env bash
# Long decoder fuzzing run: shared/tests/fuzz_decoders.rs with millions of executions per
# target (every parser of user input and of our stored formats; no panic, allocation bounded
# by the input). The default test run (scripts/test.sh) does 2,000 per target.
#
#   hardening/fuzz_decoders.sh            2,000,000 executions per target
#   FUZZ_CASES=N hardening/fuzz_decoders.sh
#
# Prints one line per target: executions, peak heap above baseline, largest single
# allocation, seconds. Also kept in .local/fuzz-decoders.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target}"
export FUZZ_CASES="${FUZZ_CASES:-2000000}"
mkdir -p "$ROOT/.local"
cd "$ROOT"
# One target per thread at a time keeps the figures per target readable; the allocator counts
# per thread either way.
cargo test -p pprl-shared --test fuzz_decoders -- --nocapture --test-threads 1 2>&1 \
  | tee "$ROOT/.local/fuzz-decoders.txt" | grep -E '^(fuzz |test result)|FAILED|panicked'
