#!/usr/bin/env bash
# Instructions tether executes per unit of work, counted by callgrind: repeatable for the
# same binary and workload whatever else the machine is doing, so two builds can be
# compared without the run-to-run noise of CPU time.
#
#   bash benches/instructions.sh [--access-log plain|json] [--registry URL] [--keep DIR] [TETHER_BINARY]
#
# TETHER_BINARY (default: a `profiling` build of this tree: release with symbols) runs under
# callgrind with one worker thread in front of one bundled node; `tether bench` (from this
# tree) drives it. Instrumentation is switched on only after a warm-up, so start-up is not
# counted. Prints instructions per polling request (10 clients on long-polling for 5 s), per
# session set up (500 sessions, polling handshake then upgrade) and per relayed WebSocket
# message (10 clients echoing for 5 s; two messages per ack). Loopback only; stops what it
# started, by pid.
#
#   --access-log FORMAT  adds `access_log: { path: <work>/<scenario>/access.log, format:
#                        FORMAT }` to tether's config (the binary must know the key) and
#                        prints how many lines each scenario wrote; the writer task runs on
#                        the same worker, so its formatting is counted (its write(2)s are
#                        kernel time, which callgrind does not count)
#   --registry URL       adds `registry: { redis: URL }` (a running Redis, e.g.
#                        redis+unix:///tmp/redis.sock): what sharing learned sids costs
#                        one instance (each set-up's write, refreshes, the link's ping)
#   --keep DIR           keeps each scenario's config, output and callgrind profile
#                        (DIR/<scenario>/cg.out.1, for callgrind_annotate) instead of
#                        deleting them
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
access_log="" keep="" registry=""
while [ $# -gt 0 ]; do
  case "$1" in
    --access-log) access_log=${2:-}; shift 2 || true
      case "$access_log" in plain|json) ;; *) echo "--access-log takes plain or json" >&2; exit 2 ;; esac ;;
    --registry) registry=${2:-}; shift 2 || true
      [ -n "$registry" ] || { echo "--registry takes a Redis URL" >&2; exit 2; } ;;
    --keep) keep=${2:-}; shift 2 || true
      [ -n "$keep" ] || { echo "--keep takes a directory" >&2; exit 2; } ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
cargo build --profile profiling --quiet --bin tether
tools="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/profiling/tether"
target="${1:-$tools}"
if [ -n "$keep" ]; then
  mkdir -p "$keep"; work=$(cd "$keep" && pwd)
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/tether-instructions.XXXXXX")
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -z "$keep" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 900); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no '$2' in $1" >&2; exit 1; }

# measure NAME BENCH-ARGS...: prints "Ir http_requests sessions acks access_log_lines"
measure() {
  local name=$1; shift
  local dir="$work/$name"; mkdir -p "$dir"; rm -f "$dir"/cg.out* "$dir/access.log"
  "$tools" node --port 0 --id n1 >"$dir/node.out" 2>/dev/null &
  local node=$!; pids+=("$node")
  wait_for "$dir/node.out" listening
  local node_port; node_port=$(python3 -c "import json;print(json.loads(open('$dir/node.out').readline())['port'])")
  local port; port=$(free_port)
  # Per-client limits lifted: the load generator is one address.
  printf 'listeners:\n  - bind: "127.0.0.1:%s"\nlimits:\n  per_client:\n    connections: 1000000\n    handshakes: { per_second: 1000000000, burst: 1000000000 }\n    requests: { per_second: 1000000000, burst: 1000000000 }\nbackends:\n  b:\n    servers:\n      - { id: n1, addr: "127.0.0.1:%s" }\n' "$port" "$node_port" >"$dir/t.yaml"
  if [ -n "$registry" ]; then
    printf 'registry: { redis: "%s", prefix: "bench-%s" }\n' "$registry" "$$" >>"$dir/t.yaml"
  fi
  if [ -n "$access_log" ]; then
    printf 'access_log: { path: "%s", format: %s }\n' "$dir/access.log" "$access_log" >>"$dir/t.yaml"
  fi
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.out" \
    "$target" run --config "$dir/t.yaml" >"$dir/t.out" 2>&1 &
  local t=$!; pids+=("$t")
  wait_for "$dir/t.out" "listening on"
  "$tools" bench --url "http://127.0.0.1:$port" "$@" --quiet --json >/dev/null
  callgrind_control -i on "$t" >/dev/null
  "$tools" bench --url "http://127.0.0.1:$port" "$@" --quiet --json >"$dir/bench.json"
  callgrind_control -i off "$t" >/dev/null
  callgrind_control -d "$t" >/dev/null
  kill "$t" "$node" 2>/dev/null || true
  wait "$t" 2>/dev/null || true
  local ir; ir=$(callgrind_annotate "$dir"/cg.out.1 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done = 1}')
  local lines=0; [ -f "$dir/access.log" ] && lines=$(wc -l <"$dir/access.log")
  python3 -c "import json;d=json.load(open('$dir/bench.json'));print($ir, d['http_requests'], d['established'], d['messages_acked'], $lines)"
}

# Access-log lines written (warm-up included), when the log is on.
lines_note() { [ -n "$access_log" ] && echo "  access log ($access_log): $1 lines, warm-up run included" || true; }

read -r ir req _ _ lines < <(measure poll --transport polling-only --clients 10 --duration 5s)
echo "polling request:           $((ir / req)) instructions ($req requests)"
lines_note "$lines"
read -r ir _ sessions _ lines < <(measure setup --mode connect --clients 500 --concurrency 16)
echo "session set up:            $((ir / sessions)) instructions ($sessions sessions)"
lines_note "$lines"
read -r ir _ _ acks lines < <(measure ws --transport websocket --clients 10 --duration 5s)
echo "relayed WebSocket message: $((ir / (acks * 2))) instructions ($((acks * 2)) messages)"
lines_note "$lines"
[ -z "$keep" ] || echo "profiles kept: $work/{poll,setup,ws}/cg.out.1"
