#!/usr/bin/env bash
# Runs the Dice kernel benchmark (Rust) and anonlink's kernel on the same data, and prints all
# pairs/s figures and their ratios. Needs anonlink in .local/venv:
#   python3 -m venv .local/venv && .local/venv/bin/pip install anonlink "setuptools<80"
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target-engine}"
THRESHOLD="${THRESHOLD:-0.8}"
DATA=.local/kernel-bench-data
cargo build --release -p pprl-shared --example kernel_bench
OUT=$(mktemp)
"$CARGO_TARGET_DIR/release/examples/kernel_bench" --write-data "$DATA" --threshold "$THRESHOLD" "$@" | tee "$OUT"
echo
if [ -x .local/venv/bin/python ] && .local/venv/bin/python -c "import anonlink" 2>/dev/null; then
  ANON=$(.local/venv/bin/python bench/anonlink_kernel.py "$DATA" "$THRESHOLD")
  echo "## anonlink 10k x 10k"
  echo "$ANON"
  anon_rate=$(echo "$ANON" | awk '{for (i = 1; i <= NF; i++) if ($i == "M") print $(i-1)}')
  # First "10k x 10k" section, single-threaded figures.
  section=$(awk '/^## 10k x 10k/{on=1; next} /^## /{on=0} on' "$OUT")
  ours=$(echo "$section" | awk '/dispatched/ && /1 thread/ {print $(NF-6)}' | head -1)
  scalar=$(echo "$section" | awk '/^scalar baseline/ && /1 thread/ {print $(NF-6)}' | head -1)
  echo "ratio (1 thread, 10k x 10k): kernel/anonlink = $(awk -v a="$ours" -v b="$anon_rate" 'BEGIN{printf "%.2f", a/b}')x," \
       "anonlink/scalar = $(awk -v a="$anon_rate" -v b="$scalar" 'BEGIN{printf "%.2f", a/b}')x"
else
  echo "anonlink is not installed in .local/venv: skipping its figures"
fi
rm -f "$OUT"
