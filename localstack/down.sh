#!/usr/bin/env bash
# Stop exactly what localstack/up.sh started (pid files in localstack/.state/pids), whole process
# groups included: TERM, then KILL after a timeout (LocalStack sometimes ignores TERM).
# Safe to run twice. `--only NAME` stops one service (localstack, dynamodb, seaweedfs, api, runner).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIDS="$HERE/.state/pids"
TERM_TIMEOUT="${PPRL_TERM_TIMEOUT:-15}"

# name -> a string its command line contains (guards against a reused pid)
declare -A PATTERN=(
  [runner]="local-runner"
  [api]="\(debug\|release\)/api"
  [seaweedfs]="weed mini"
  [dynamodb]="DynamoDBLocal.jar"
  [localstack]="localstack.runtime.main"
)
ORDER=(runner api seaweedfs dynamodb localstack)   # consumers first, emulators last
PORTS="4566 8000 8333 8851 8888 9333 9340 9101 18333 18888 19333 19340"

if [ "${1:-}" = "--only" ]; then
  [ -n "${PATTERN[${2:-}]:-}" ] || { echo "down: unknown service '${2:-}'" >&2; exit 2; }
  ORDER=("$2")
fi

say() { echo "down: $*" >&2; }

# Same lock as up.sh, so a stop and a start never interleave (up.sh itself calls
# `down.sh --only seaweedfs` while holding it and sets PPRL_LOCK_HELD=1).
if [ "${PPRL_LOCK_HELD:-0}" != 1 ] && [ -d "$HERE/.state" ]; then
  exec 9>"$HERE/.state/up-run.lock"
  flock 9
fi

group_members() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'; }

stop() {
  local name=$1 f="$PIDS/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -z "$pid" ]; then rm -f "$f"; return 0; fi
  if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "${PATTERN[$name]}"; then
    say "$name: pid $pid now belongs to something else; not touching it"
    rm -f "$f"; return 0
  fi
  # Leader alive and ours, or leader gone but members of its group left (a group id cannot be
  # reused while any member lives, so those are ours).
  if [ -z "$(group_members "$pid")" ]; then rm -f "$f"; return 0; fi
  say "stopping $name (process group $pid)"
  kill -TERM -- "-$pid" 2>/dev/null
  local waited=0
  while [ -n "$(group_members "$pid")" ] && [ $waited -lt $((TERM_TIMEOUT * 10)) ]; do
    sleep 0.1; waited=$((waited + 1))
  done
  if [ -n "$(group_members "$pid")" ]; then
    say "$name ignored TERM for ${TERM_TIMEOUT}s: KILL"
    kill -KILL -- "-$pid" 2>/dev/null
    sleep 0.3
  fi
  [ "$(cat "$f" 2>/dev/null)" = "$pid" ] && rm -f "$f"
  return 0
}

# Consumers first (runner, api), then the emulators in parallel (LocalStack alone takes seconds).
pids=()
for n in "${ORDER[@]}"; do
  case $n in
    runner|api) stop "$n" ;;
    *) stop "$n" & pids+=($!) ;;
  esac
done
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"

if [ "${1:-}" != "--only" ]; then
  left=""
  for p in $PORTS; do
    if ss -ltnH "sport = :$p" 2>/dev/null | grep -q .; then left="$left $p"; fi
  done
  if [ -n "$left" ]; then
    say "WARNING: still listening on port(s)$left (not started by up.sh, or not stoppable):"
    ss -ltnpH 2>/dev/null | grep -E ":($(echo $left | tr ' ' '|'))\b" >&2 || true
    exit 1
  fi
  # The table lives on disk (see up.sh); the rest of the state went with LocalStack's memory.
  rm -rf "$HERE/.state/data/dynamodb"
  say "stopped; no listeners left on $PORTS"
fi
exit 0
