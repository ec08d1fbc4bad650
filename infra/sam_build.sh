#!/usr/bin/env bash
# CI's `sam build` check: builds all four functions of infra/template.yaml through SAM's
# `BuildMethod: rust-cargolambda` builder (SAM CLI -> cargo-lambda -> cargo), then checks each
# bootstrap: it exists, is an ELF executable for the built architecture, and answers one
# invocation through a stand-in Lambda Runtime API (infra/smoke_bootstrap.py).
#
# What CI builds differs from a deploy in two ways, both for cost and both deliberate:
#   - debug mode (SAM_BUILD_MODE=debug: `cargo lambda build` without --release). A deploy's
#     release build (cargo-lambda adds thin LTO, codegen-units=1, panic=abort, strip) takes
#     ~13 min of 2 cores; the debug build shares the dev profile's settings with the tests.
#   - the host's architecture (x86_64 here, which is also the template's): these machines
#     have no aarch64 Rust standard library and cannot fetch one. infra/sam_ci_template.py
#     writes the template with only Globals.Function.Architectures set to the host's.
# and cargo is the compiler (CARGO_LAMBDA_COMPILER=cargo), so zig is not needed.
#
#   infra/sam_build.sh                 as CI runs it
#   SAM_BUILD_RELEASE=1 infra/sam_build.sh   release mode (the deploy's optimisations; slow)
#
# The Rust build goes to $CARGO_TARGET_DIR when set (scripts/test.sh sets /var/tmp/pprl-target,
# so repeat runs are warm: a few seconds), else to the workspace's target/. Its output, the
# derived template and the built artifacts go to infra/.build/ (git-ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=infra/sam_tools.sh
. infra/sam_tools.sh
ensure_sam_tools

case "$(uname -m)" in
  x86_64 | amd64) ARCH=x86_64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) echo "sam build: unsupported host architecture $(uname -m)" >&2; exit 1 ;;
esac

OUT=infra/.build
BUILD_DIR="$OUT/sam"
mkdir -p "$OUT"
"$SAM_VENV/bin/python" infra/sam_ci_template.py infra/template.yaml "$OUT/template.ci.json" "$ARCH"

mode=(SAM_BUILD_MODE=debug)
[ "${SAM_BUILD_RELEASE:-0}" = 1 ] && mode=()
rm -rf "$BUILD_DIR"
start=$SECONDS
# --beta-features: rust-cargolambda is still a SAM CLI beta builder.
sam_offline env "${mode[@]}" CARGO_LAMBDA_COMPILER="${CARGO_LAMBDA_COMPILER:-cargo}" \
  sam build --beta-features --template-file "$OUT/template.ci.json" --build-dir "$BUILD_DIR"
echo "sam build: $((SECONDS - start)) s (${mode[*]:-release}, $ARCH)" >&2

# Every function in the template has a bootstrap for the right machine.
"$SAM_VENV/bin/python" - "$OUT/template.ci.json" "$BUILD_DIR" "$ARCH" <<'EOF'
import json, os, sys
template, build_dir, arch = sys.argv[1:]
EM = {"x86_64": 62, "arm64": 183}  # ELF e_machine: EM_X86_64, EM_AARCH64
functions = [n for n, r in json.load(open(template))["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
bad = []
for name in functions:
    path = os.path.join(build_dir, name, "bootstrap")
    if not os.path.isfile(path):
        bad.append(f"{path}: missing")
        continue
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or head[4] != 2 or int.from_bytes(head[18:20], "little") != EM[arch]:
        bad.append(f"{path}: not a 64-bit ELF for {arch}")
    elif not os.access(path, os.X_OK):
        bad.append(f"{path}: not executable")
    else:
        print(f"sam build: {name}: {path} ({os.path.getsize(path) // 1_000_000} MB, ELF {arch})")
for b in bad:
    print(f"sam build: {b}", file=sys.stderr)
sys.exit(1 if bad or not functions else 0)
EOF

python3 infra/smoke_bootstrap.py \
  api="$BUILD_DIR/ApiFunction/bootstrap" \
  fan-out="$BUILD_DIR/FanOutFunction/bootstrap" \
  compare="$BUILD_DIR/CompareFunction/bootstrap" \
  solve="$BUILD_DIR/SolveFunction/bootstrap"
echo "sam build: OK"
