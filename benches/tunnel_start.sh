#!/usr/bin/env bash
# Tunnel start latency: a client writes `2probe` and `5` the moment it has read the
# upgrade's 101 and at once a polling GET with the same sid on its other (kept-alive)
# connection. Reported: the time from the frame's write to its arrival at the node
# (p50/p99/max, µs) and the runs in which the node saw the poll first, for tether and
# nginx, each pinned to core 0 with one worker (as in benches/compare.sh, with its
# configs); the client and the node (examples/tunnel_start.rs, one process, one clock)
# run on core 1.
#
#   bash benches/tunnel_start.sh [RUNS] [REPS] [solo]   (defaults: 200 runs, 3 reps)
#
# solo: the poll is sent 5 ms after the frames, which measures the tunnel's own latency
# with nothing competing with it.
#
# TETHER=/path/to/tether measures that build of tether instead (e.g. an older one).
#
# Each rep runs tether then nginx; every rep's line is printed. Installs nginx (Debian
# package) when missing. Loopback only; stops everything it started, by pid.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-200}" reps="${2:-3}" mode="${3:-race}"

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  export DEBIAN_FRONTEND=noninteractive
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -E"
  $sudo apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
fi
PATH="$PATH:/usr/sbin"
cargo build --release --quiet --bin tether --example tunnel_start
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tether="${TETHER:-$target_dir/release/tether}"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # name
  local n1 n2 n3 proxy_port proxy_pid out
  n1=$(port) n2=$(port) n3=$(port) proxy_port=$(port)
  for f in tether.yaml.in nginx.conf.in; do
    sed -e "s|@PORT@|$proxy_port|g" -e "s|@NODE1@|$n1|g" -e "s|@NODE2@|$n2|g" \
        -e "s|@NODE3@|$n3|g" -e "s|@WORK@|$work|g" "benches/compare/$f" > "$work/${f%.in}"
  done
  mkdir -p "$work/nginx"
  # The probe binds the nodes first, then waits for the proxy.
  taskset -c 1 "$target_dir/release/examples/tunnel_start" "$n1,$n2,$n3" \
    "127.0.0.1:$proxy_port" "$runs" "$mode" > "$work/out" 2> "$work/err" &
  local probe=$!; pids+=("$probe")
  sleep 0.2
  case "$1" in
    tether) TOKIO_WORKER_THREADS=1 taskset -c 0 "$tether" run \
              --config "$work/tether.yaml" > "$work/proxy.log" 2>&1 & ;;
    nginx) taskset -c 0 nginx -c "$work/nginx.conf" -p "$work/nginx" > "$work/proxy.log" 2>&1 & ;;
  esac
  proxy_pid=$!; pids+=("$proxy_pid")
  if wait "$probe"; then out=$(cat "$work/out"); else out="failed: $(tail -3 "$work/err")"; fi
  kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true
  printf '%-7s %s\n' "$1" "$out"
}

for _ in $(seq "$reps"); do run tether; run nginx; done
