#!/usr/bin/env bash
# The solve benchmark: the service's solve step (the code the solve Lambda runs) over synthetic
# candidate files, in process on the memory ports; prints time and peak RSS. See bench/README.md.
#
#   bench/solve.sh                         # 10^8 two-party candidates, 2,000 files, 25M records per party
#   bench/solve.sh --candidates 1e6 --records 2e5 --verify   # also checks the groups against the in-memory greedy
#   bench/solve.sh --parties 3 ...         # the per-component N-party solver
#   bench/solve.sh --files 20022 --candidates 12e6 --get-latency-ms 15       # fetch shape of a 20k-shard run
#
# Options: --candidates N --files F --records R --parties 2|3 --memory-mb MB (default 3008, the
# template's SolveFunction MemorySize) --limit N (SOLVER_MAX_CANDIDATE_PAIRS) --permutations
# --get-latency-ms MS --verify. PPRL_BENCH_PROFILE=release builds with the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PPRL_BENCH_PROFILE:-dev}"
cargo build -q -p pprl-shared --features service --example solve_bench --profile "$profile"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
exec "${CARGO_TARGET_DIR:-target}/$dir/examples/solve_bench" "$@"
