#!/usr/bin/env bash
# What nginx's own access log costs, in the unit benches/instructions.sh measures tether's
# in: instructions (callgrind) per long-polling request, with `access_log off` and with
# nginx's default `combined` log to a file. nginx runs as benches/compare.sh runs it (one
# process: no master, one worker) in front of one bundled node; `tether bench` drives it.
#
#   bash benches/nginx_log_instructions.sh
#
# Needs valgrind and nginx (apt-get install valgrind nginx-light). Loopback only; stops
# what it started, by pid.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is required (apt-get install nginx-light)" >&2; exit 1; }
cargo build --profile profiling --quiet --bin tether
tools="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/profiling/tether"
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-nginx-log.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
"$tools" node --port 0 --id n1 >"$work/node.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 300); do grep -q listening "$work/node.out" 2>/dev/null && break; sleep 0.1; done
node_port=$(python3 -c "import json;print(json.loads(open('$work/node.out').readline())['port'])")
bench() { "$tools" bench --url "http://127.0.0.1:$1" --transport polling-only --clients 10 --duration 5s --quiet --json; }

for mode in off combined; do
  port=$(free_port); d="$work/$mode"; mkdir -p "$d/nginx"
  log="access_log off;"; [ "$mode" = combined ] && log="access_log $d/access.log;"
  sed -e "s|@PORT@|$port|g" -e "s|@NODE[123]@|$node_port|g" -e "s|@WORK@|$d|g" \
      -e "s|access_log off;|$log|" benches/compare/nginx.conf.in >"$d/nginx.conf"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/cg.out" \
    nginx -c "$d/nginx.conf" -p "$d" >"$d/nginx.log" 2>&1 &
  ng=$!; pids+=("$ng")
  for _ in $(seq 450); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.2
  done
  bench "$port" >/dev/null # warm-up, not counted
  callgrind_control -i on "$ng" >/dev/null
  bench "$port" >"$d/bench.json"
  callgrind_control -i off "$ng" >/dev/null
  callgrind_control -d "$ng" >/dev/null
  kill "$ng"; wait "$ng" 2>/dev/null || true
  ir=$(callgrind_annotate "$d"/cg.out.1 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done = 1}')
  req=$(python3 -c "import json; print(json.load(open('$d/bench.json'))['http_requests'])")
  echo "nginx, access_log $mode: $((ir / req)) instructions per polling request ($req requests)"
done
