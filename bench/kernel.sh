#!/usr/bin/env bash
# Runs the Dice kernel benchmark (Rust) and anonlink's kernel on the same data (synthetic 10k x 10k
# and the FEBRL4 CLKs), and prints all pairs/s figures and the ratios. Needs anonlink in .local/venv:
#   python3 -m venv .local/venv && .local/venv/bin/pip install anonlink "setuptools<80"
# Figures are given per wall-clock second and per CPU-second; on a shared machine only the
# latter are comparable between runs (the wall clock also counts time spent waiting for a core).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target-engine}"
THRESHOLD="${THRESHOLD:-0.8}"
DATA=.local/kernel-bench-data
cargo build --release -p pprl-shared --example kernel_bench
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
"$CARGO_TARGET_DIR/release/examples/kernel_bench" --write-data "$DATA" --threshold "$THRESHOLD" "$@" | tee "$OUT"

# rate SECTION ROW COLUMN: the single-threaded figure of ROW (a regex) in the section whose
# header starts with SECTION; COLUMN "wall" (M pairs/s per core) or "cpu" (M pairs/CPU-s).
rate() {
  awk -v section="## $1" -v row="$2" -v col="$3" '
    index($0, "## ") == 1 { on = (index($0, section) == 1); next }
    on && $0 ~ row && /1 thread/ {
      for (i = 1; i <= NF; i++) {
        if (col == "wall" && $i == "pairs/s") { print $(i - 2); exit }
        if (col == "cpu" && $i == "pairs/CPU-s") { print $(i - 2); exit }
      }
    }' "$OUT"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2fx", a / b }'; }

echo
have_anonlink=no
if [ -x .local/venv/bin/python ] && .local/venv/bin/python -c "import anonlink" 2>/dev/null; then
  have_anonlink=yes
else
  echo "anonlink is not installed in .local/venv: skipping its figures"
fi
for case in "10k x 10k|" "FEBRL4 CLKs|febrl4-"; do
  section=${case%|*} prefix=${case#*|}
  [ -f "$DATA/${prefix}a.bin" ] || continue
  echo "## summary: $section, 1 thread"
  ours_w=$(rate "$section" "dispatched" wall) ours_c=$(rate "$section" "dispatched" cpu)
  hand_w=$(rate "$section" "^hand-tuned AVX2" wall) hand_c=$(rate "$section" "^hand-tuned AVX2" cpu)
  anon_w="" anon_c=""
  if [ "$have_anonlink" = yes ]; then
    ANON=$(.local/venv/bin/python bench/anonlink_kernel.py "$DATA" "$THRESHOLD" "$prefix")
    echo "$ANON"
    anon_w=$(echo "$ANON" | awk '{for (i = 1; i <= NF; i++) if ($i == "pairs/s") print $(i-2)}')
    anon_c=$(echo "$ANON" | awk '{for (i = 1; i <= NF; i++) if ($i == "pairs/CPU-s") print $(i-2)}')
  fi
  echo "kernel (dispatched) $ours_w M pairs/s ($ours_c per CPU-s); hand-tuned AVX2 $hand_w ($hand_c); anonlink ${anon_w:-n/a} (${anon_c:-n/a})"
  echo "ratio: kernel/anonlink = $(ratio "$ours_w" "$anon_w") ($(ratio "$ours_c" "$anon_c") per CPU-s)," \
       "kernel/hand-tuned-AVX2 = $(ratio "$ours_w" "$hand_w") ($(ratio "$ours_c" "$hand_c") per CPU-s)," \
       "hand-tuned-AVX2/anonlink = $(ratio "$hand_w" "$anon_w") ($(ratio "$hand_c" "$anon_c") per CPU-s)"
done
