#!/usr/bin/env bash
# TLS handshake cost: full handshakes (no resumption, TLS 1.3, ECDSA P-256) per second of
# the terminator's CPU, for tether, nginx and HAProxy with the same certificate, each
# pinned to core 0 with one worker; the client runs on core 1.
#
#   bash benches/tls_handshakes.sh [SECONDS]
#
# Installs nginx and haproxy (Debian packages) when missing. Loopback only; stops
# everything it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-5}"

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -E"
  $sudo apt-get install -y -qq --no-install-recommends nginx-light haproxy >/dev/null
fi
cargo build --release --quiet --bin tether --example tls_handshakes
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$target_dir"/release/tether cert --out "$work/certs" --name localhost >/dev/null
cat "$work/certs/cert.pem" "$work/certs/key.pem" > "$work/certs/haproxy.pem"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU seconds (user+system) a process has used.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"; }

measure() { # name pid port
  local name=$1 pid=$2 p=$3
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  local before after out
  before=$(cpu "$pid")
  out=$(taskset -c 1 "$target_dir"/release/examples/tls_handshakes "127.0.0.1:$p" localhost "$work/certs/ca.pem" "$secs" 32)
  after=$(cpu "$pid")
  python3 - "$name" "$before" "$after" "$out" <<'PY'
import json, sys
name, before, after, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
cpu = after - before
print(f"{name:8} {out['handshakes']:7d} handshakes in {out['seconds']} s ({out['per_second']:8.1f}/s), "
      f"{out['failed']} failed, server CPU {cpu:5.2f} s -> {out['handshakes']/cpu if cpu else 0:8.1f} handshakes per CPU-second")
PY
}

# tether
tp=$(port)
cat > "$work/tether.yaml" <<Y
listeners:
  - bind: "127.0.0.1:$tp"
    tls:
      certificates: [{ cert: "$work/certs/cert.pem", key: "$work/certs/key.pem" }]
backends:
  b:
    servers: [{ id: a, addr: "127.0.0.1:9" }]
Y
TOKIO_WORKER_THREADS=1 taskset -c 0 "$target_dir"/release/tether run --config "$work/tether.yaml" >/dev/null 2>&1 &
pids+=($!); measure tether $! "$tp"

# nginx
np=$(port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<N
worker_processes 1;
daemon off;
master_process off;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$np ssl;
    ssl_certificate $work/certs/cert.pem;
    ssl_certificate_key $work/certs/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    location / { return 200; }
  }
}
N
taskset -c 0 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!); measure nginx $! "$np"

# HAProxy
hp=$(port)
cat > "$work/haproxy.cfg" <<H
global
  nbthread 1
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend f
  bind 127.0.0.1:$hp ssl crt $work/certs/haproxy.pem no-tls-tickets
  http-request return status 200
H
taskset -c 0 haproxy -f "$work/haproxy.cfg" -db &
pids+=($!); measure haproxy $! "$hp"
