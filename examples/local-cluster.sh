#!/usr/bin/env bash
# Run with: bash examples/local-cluster.sh
#
# Three Node socket.io servers on 127.0.0.1:3001-3003 (sharing a Redis adapter when a
# redis-server is installed) behind tether on the sample config conf/tether.yaml.
# Open http://127.0.0.1:8080/ ... or point any socket.io client at it. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -d tests/node/node_modules ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build --release --quiet

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

redis_args=()
if command -v redis-server >/dev/null 2>&1; then
  dir="$(mktemp -d)"
  redis-server --port 0 --unixsocket "$dir/redis.sock" --save '' --appendonly no --dir "$dir" >/dev/null &
  pids+=($!)
  for _ in $(seq 50); do [ -S "$dir/redis.sock" ] && break; sleep 0.1; done
  redis_args=(--redis-socket "$dir/redis.sock")
else
  echo "redis-server not installed: nodes run without the Redis adapter (no cross-node broadcasts)" >&2
fi

for i in 1 2 3; do
  node tests/node/server.js --id "node-$i" --port "300$i" --ignore-stdin "${redis_args[@]}" >/dev/null &
  pids+=($!)
done
sleep 1
./target/release/tether run --config conf/tether.yaml
