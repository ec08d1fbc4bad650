# Sourced by infra/lint.sh and infra/sam_build.sh: the SAM CLI and cargo-lambda, from PyPI, in a
# venv cached outside the clone (like the local stack's tools), keyed by both versions.
# Installing takes about 1 min the first time (aws-sam-cli ~55 s, cargo-lambda ~10 s); after
# that it is a file check. The venv is rebuilt only when a version changes.
#
# ziglang is NOT installed: CI builds for the host with cargo as the compiler
# (CARGO_LAMBDA_COMPILER=cargo, see sam_build.sh). A deploy's build uses zig, which links
# against the Lambda runtime's glibc (infra/README.md, "Deploy").

SAM_CLI_VERSION="${SAM_CLI_VERSION:-1.170.0}"
CARGO_LAMBDA_VERSION="${CARGO_LAMBDA_VERSION:-1.9.2}"
SAM_VENV="${PPRL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pprl-localstack}/venv-sam-${SAM_CLI_VERSION}-cargo-lambda-${CARGO_LAMBDA_VERSION}"

# Installs the venv if it is missing or unfinished (the marker is written last).
ensure_sam_tools() {
  [ -f "$SAM_VENV/.installed" ] && return 0
  echo "sam: installing aws-sam-cli ${SAM_CLI_VERSION} and cargo-lambda ${CARGO_LAMBDA_VERSION} into $SAM_VENV (~1 min, once)" >&2
  rm -rf "$SAM_VENV"
  mkdir -p "$(dirname "$SAM_VENV")"
  "${SAM_PYTHON:-python3}" -m venv "$SAM_VENV"
  "$SAM_VENV/bin/pip" install -q --disable-pip-version-check \
    "aws-sam-cli==${SAM_CLI_VERSION}" "cargo-lambda==${CARGO_LAMBDA_VERSION}"
  "$SAM_VENV/bin/sam" --version >/dev/null
  "$SAM_VENV/bin/cargo-lambda" lambda --version >/dev/null
  touch "$SAM_VENV/.installed"
}

# Runs a command with the SAM CLI offline: dummy credentials and region (nothing in AWS is
# called), no telemetry, no instance-metadata lookups; cargo-lambda on PATH. (The SAM CLI's
# weekly "newer version?" look-up goes to PyPI, 5 s timeout, failures ignored.)
sam_offline() {
  env AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_SESSION_TOKEN=x \
    AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
    SAM_CLI_TELEMETRY=0 \
    PATH="$SAM_VENV/bin:$PATH" "$@"
}
