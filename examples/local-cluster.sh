#!/usr/bin/env bash
# Run with: bash examples/local-cluster.sh
#
# Three Node socket.io servers on 127.0.0.1:3001-3003 (sharing a Redis adapter when a
# redis-server is installed) behind tether on the sample config conf/tether.yaml:
#   - Socket.IO clients connect to http://127.0.0.1:8080 (the nodes serve no web page:
#     `/` answers 404 there, as it does on a plain socket.io server);
#   - the dashboard is at http://127.0.0.1:9900/.
# For a chat page in the browser, run the demo instead: cargo run --release -- demo
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v node >/dev/null || { echo "local-cluster.sh: Node.js is required (node and npm)" >&2; exit 1; }
if [ ! -d tests/node/node_modules ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "building tether (the first build takes a few minutes)..." >&2
cargo build --release --quiet --bin tether
# Wherever cargo puts it (CARGO_TARGET_DIR, a workspace target dir, ...).
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tether="$target_dir/release/tether"

pids=()
work="$(mktemp -d)"
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM

redis_args=()
if command -v redis-server >/dev/null 2>&1; then
  redis-server --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no --dir "$work" >/dev/null &
  pids+=($!)
  for _ in $(seq 50); do [ -S "$work/redis.sock" ] && break; sleep 0.1; done
  redis_args=(--redis-socket "$work/redis.sock")
else
  echo "redis-server not installed: nodes run without the Redis adapter (no cross-node broadcasts)" >&2
fi

for i in 1 2 3; do
  node tests/node/server.js --id "node-$i" --port "300$i" --ignore-stdin "${redis_args[@]}" >"$work/node-$i.out" &
  pids+=($!)
done
# Each node prints one "listening" line once it is ready.
for i in 1 2 3; do
  for _ in $(seq 100); do grep -q listening "$work/node-$i.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/node-$i.out" || { echo "node-$i did not start (is port 300$i free?)" >&2; exit 1; }
done

cat >&2 <<'EOF'

tether: http://127.0.0.1:8080 in front of node-1..3 (127.0.0.1:3001-3003)
  dashboard:   http://127.0.0.1:9900/
  a handshake: curl 'http://127.0.0.1:8080/socket.io/?EIO=4&transport=polling'
  30 clients:  node tests/node/swarm.js '{"url":"http://127.0.0.1:8080","clients":30}'
Ctrl-C stops it all.

EOF
"$tether" run --config conf/tether.yaml
