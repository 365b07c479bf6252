#!/usr/bin/env bash
# Run with: bash examples/local-cluster.sh
#   other ports: PORT=8081 ADMIN_PORT=9901 BASE_PORT=4001 bash examples/local-cluster.sh
#   (0 takes any free port; the banner says which were taken)
#   a tether already built or installed: TETHER=/path/to/tether bash examples/local-cluster.sh
#
# Three Node socket.io servers on 127.0.0.1:BASE_PORT.. (3001-3003; sharing a Redis adapter
# when a redis-server is installed) behind tether, on the sample config conf/tether.yaml with
# its ports replaced by PORT (8080), ADMIN_PORT (9900) and the nodes' ports:
#   - Socket.IO clients connect to http://127.0.0.1:PORT (the nodes serve no web page:
#     `/` answers 404 there, as it does on a plain socket.io server);
#   - the dashboard is at http://127.0.0.1:ADMIN_PORT/.
# The banner is printed once tether listens (or tether's error, if it cannot start).
# For a chat page in the browser, run the demo instead: cargo run --release -- demo
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port="${PORT:-8080}"
admin_port="${ADMIN_PORT:-9900}"
base_port="${BASE_PORT:-3001}"
for v in "PORT=$port" "ADMIN_PORT=$admin_port" "BASE_PORT=$base_port"; do
  [[ "${v#*=}" =~ ^[0-9]+$ ]] && [ "${v#*=}" -le 65535 ] || { echo "local-cluster.sh: $v is not a port (0-65535)" >&2; exit 1; }
done
[ "$base_port" -eq 0 ] || [ "$base_port" -le 65533 ] || { echo "local-cluster.sh: BASE_PORT=$base_port leaves no room for 3 nodes" >&2; exit 1; }

command -v node >/dev/null || { echo "local-cluster.sh: Node.js is required (node and npm)" >&2; exit 1; }
if [ ! -d tests/node/node_modules ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ -n "${TETHER:-}" ]; then
  tether="$TETHER"
else
  echo "building tether (the first build takes a few minutes)..." >&2
  cargo build --release --quiet --bin tether
  # Wherever cargo puts it (CARGO_TARGET_DIR, a workspace target dir, ...).
  target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  tether="$target_dir/release/tether"
fi

pids=()
work="$(mktemp -d)"
cleanup() {
  trap - EXIT INT TERM
  # Last started first: tether, then the nodes, then the Redis they use.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  # Each gets a moment to stop by itself (tether: a second signal after the terminal's
  # Ctrl-C ends its grace at once), then whatever is left is killed, by pid.
  for _ in $(seq 50); do
    alive=""
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

redis_args=()
if command -v redis-server >/dev/null 2>&1; then
  redis-server --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no --dir "$work" >/dev/null &
  pids+=($!)
  for _ in $(seq 50); do [ -S "$work/redis.sock" ] && break; sleep 0.1; done
  redis_args=(--redis-socket "$work/redis.sock")
else
  echo "redis-server not installed: nodes run without the Redis adapter (no cross-node broadcasts)" >&2
fi

node_ports=()
for i in 1 2 3; do
  p=0
  [ "$base_port" -eq 0 ] || p=$((base_port + i - 1))
  node tests/node/server.js --id "node-$i" --port "$p" --ignore-stdin "${redis_args[@]}" >"$work/node-$i.out" &
  pids+=($!)
  # Each node prints one "listening" line, with its port, once it is ready.
  for _ in $(seq 100); do
    grep -q listening "$work/node-$i.out" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  grep -q listening "$work/node-$i.out" || { echo "node-$i did not start (is port $p free? choose others with BASE_PORT=N, or BASE_PORT=0)" >&2; exit 1; }
  node_ports+=("$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$work/node-$i.out" | head -n 1)")
done

# The sample config with these ports: each address is swapped for a marker first, so a
# port that equals another of the sample's (BASE_PORT=8080) is not replaced twice.
config="$work/tether.yaml"
sed -e 's/127\.0\.0\.1:8080/@PORT@/g' -e 's/127\.0\.0\.1:9900/@ADMIN@/g' \
    -e 's/127\.0\.0\.1:3001/@NODE1@/g' -e 's/127\.0\.0\.1:3002/@NODE2@/g' -e 's/127\.0\.0\.1:3003/@NODE3@/g' \
    conf/tether.yaml |
  sed -e "s/@PORT@/127.0.0.1:$port/g" -e "s/@ADMIN@/127.0.0.1:$admin_port/g" \
      -e "s/@NODE1@/127.0.0.1:${node_ports[0]}/g" -e "s/@NODE2@/127.0.0.1:${node_ports[1]}/g" \
      -e "s/@NODE3@/127.0.0.1:${node_ports[2]}/g" >"$config"
for want in "bind: 127.0.0.1:$port" "bind: 127.0.0.1:$admin_port"; do
  grep -q "$want" "$config" || { echo "local-cluster.sh: conf/tether.yaml no longer has the addresses this script rewrites (looked for ${want#bind: }): update the script" >&2; exit 1; }
done

# In the background, its log on this terminal; its stdout says where it listens.
"$tether" run --config "$config" >"$work/tether.out" &
tether_pid=$!
pids+=("$tether_pid")
while ! grep -q "^tether admin on " "$work/tether.out" 2>/dev/null; do
  if ! kill -0 "$tether_pid" 2>/dev/null; then
    echo "local-cluster.sh: tether did not start (its error is above); other ports: PORT=N ADMIN_PORT=N (0: any free port)" >&2
    exit 1
  fi
  sleep 0.1
done
url=$(sed -n 's/^tether listening on //p' "$work/tether.out" | head -n 1)
admin=$(sed -n 's/^tether admin on //p' "$work/tether.out" | head -n 1)

cat >&2 <<EOF

tether: $url in front of node-1..3 (127.0.0.1:${node_ports[0]}, ${node_ports[1]}, ${node_ports[2]})
  dashboard:   $admin/
  a handshake: curl '$url/socket.io/?EIO=4&transport=polling'
  30 clients:  node tests/node/swarm.js '{"url":"$url","clients":30}'
Ctrl-C stops it all.

EOF
wait "$tether_pid"
