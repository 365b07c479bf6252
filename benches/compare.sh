#!/usr/bin/env bash
# tether against nginx and HAProxy in front of the same three Socket.IO nodes, plus a
# "direct" run (the load generator straight at one node) as the floor.
#
#   bash benches/compare.sh [--quick] [--access-log plain|json] [--only SCENARIOS | --burst-only]
#
# Each proxy runs alone, pinned to core 0 with one worker; the three bundled nodes
# (`tether node`) and the load generator (`tether bench --threads 1`) share core 1
# (all but the multicore scenario, which unpins everything).
# Costs are the proxy's own CPU time (utime+stime from /proc/PID/stat) and resident
# memory (VmRSS), read around each scenario:
#
#   (ws64, ws4096 and poll run 3 times each, interleaved, 5 s a run; the report takes
#   the median of each figure)
#   ws64 / ws4096  WebSocket relay: 50 clients echoing back to back (64 B, 4096 B)
#                  -> proxy CPU per relayed message (2 per ack: one each way), ack p99
#   poll           50 clients on long-polling for good, echoing back to back: a POST
#                  per message on one keep-alive connection, a GET pending on another
#                  -> proxy CPU per HTTP request (the load generator counts them)
#   setup          2000 sessions the real client's way (polling handshake, POST 40,
#                  GET poll, pending GET poll + WebSocket upgrade with probe), each
#                  closed once set up -> proxy CPU per session
#   idle           9000 idle WebSockets from 99 source addresses -> VmRSS growth per
#                  proxied WebSocket
#   balance        1000 WebSocket sessions from ONE address, each asking `whoami`
#                  -> sessions per node, busiest node over the mean of all 3
#   storm          4000 sessions the real client's way (polling, then upgrade) from 4000
#                  source addresses, spread over the nodes by each proxy's stickiness;
#                  then node-1 is SIGKILLed (by the load generator, which so knows the
#                  instant) and every orphan reconnects with socket.io-client's back-off
#                  (1 s x 2^n up to 5 s, randomization 0.5). Fresh nodes and proxy, with
#                  the failure handling each one's Socket.IO guide gives (below), 3 runs
#                  -> time from the kill to each orphan connected again (p50, p99), proxy
#                  CPU from the kill until the last orphan is back / sessions re-made
#   burst          9000 idle WebSockets opened as a burst, 64 and then 2048 set-ups in
#                  flight, each against a fresh proxy process, to the Socket.IO nodes
#                  and to plain WebSocket nodes (`tether node --plain-websocket`)
#                  -> VmRSS growth per WebSocket 10 s after the burst, still held: what
#                  the set-up burst left behind in the proxy's allocator
#   multicore      each proxy with 2 workers (tether TOKIO_WORKER_THREADS=2, nginx
#                  worker_processes 2 with a master and `listen ... reuseport`, HAProxy
#                  nbthread 2), and again with 1 worker, nothing pinned: proxy, nodes and
#                  load generator (`--threads 2`) share both cores. 200 clients from 99
#                  source addresses (nginx hashes $remote_addr, as in the storm, so every
#                  proxy spreads them over the nodes): WebSocket echo 64 B, polling echo
#                  (5 s each) and 2000 session set-ups, 3 runs interleaved (2 workers, then
#                  1) -> messages, HTTP requests and sessions per proxy CPU-second (CPU of
#                  every process of the proxy), per second, and 2 workers over 1
#
# --quick halves durations and counts (a smoke run; the burst only at 2048 in flight,
# Socket.IO nodes, memory 5 s after); --only SCENARIOS (comma-separated: echo, setup,
# idle, balance, storm, burst, multicore) runs just those, and its report goes to
# <date>-<host>-only-SCENARIOS.md, leaving latest.md alone (--burst-only is --only
# burst). --access-log FORMAT gives tether an
# access log to a file in the work directory (nginx's and HAProxy's stay off, as always),
# to weigh what it costs. Writes
# benches/results/<date>-<host>.md, benches/results/<date>-ratios.svg and copies to
# latest.md / latest.svg. Installs nginx and haproxy (Debian packages) when missing.
# Loopback only; stops everything it started, by pid, even on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started_at=$(date +%s)
# The machine is shared: how busy it was when the run started and ended goes in the report.
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

quick=0 access_log="" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --burst-only) only=burst ;;
    --access-log) access_log=${2:-}; shift || true
      case "$access_log" in plain|json) ;; *) echo "--access-log takes plain or json" >&2; exit 2 ;; esac ;;
    --only) only=${2:-}; shift || true ;;
    -h|--help) sed -n '2,59p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (--quick, --access-log plain|json, --only LIST, --burst-only)" >&2; exit 2 ;;
  esac
  shift
done
# Durations in seconds and client counts; --quick halves them.
# The echo and polling scenarios run $reps times, interleaved; the report takes medians.
# The burst scenario: set-ups in flight, upstream kinds, seconds from the burst's end
# to the memory reading.
echo_secs=5; reps=3; echo_clients=50; setup_n=2000; idle_n=9000; idle_hold=6; balance_n=1000
storm_n=4000; storm_reps=3
burst_flights="64 2048"; burst_upstreams="socketio plain"; burst_after=10
# The multicore scenario: clients, seconds, sessions set up, workers compared.
mc_clients=200; mc_secs=5; mc_setup_n=2000; mc_workers="2 1"
if [ "$quick" = 1 ]; then
  echo_secs=3; reps=1; echo_clients=25; setup_n=1000; idle_n=4500; idle_hold=3; balance_n=500
  storm_n=1000; storm_reps=1
  burst_flights="2048"; burst_upstreams="socketio"; burst_after=5
  mc_clients=100; mc_secs=3; mc_setup_n=1000
fi
# Where the proxy, the nodes and the load generator run, the load generator's threads and
# the proxy's workers: the multicore scenario changes them while it runs.
proxy_cpus=0 node_cpus=1 bench_cpus=1 bench_threads=1 workers=1
# Whether a scenario runs (all of them without --only).
wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
# The proxy holds two fds per idle WebSocket (client side, node side).
fd_limit=$(ulimit -n)
if [ "$fd_limit" != unlimited ] && [ $((idle_n * 2 + 200)) -gt "$fd_limit" ]; then
  idle_n=$(( (fd_limit - 200) / 2 ))
  echo "note: open-file limit $fd_limit: idle scenario reduced to $idle_n WebSockets" >&2
fi
# In the storm a reconnecting orphan holds up to 3 more (polling, upgrade) for a moment.
if [ "$fd_limit" != unlimited ] && [ $((storm_n * 3 + 200)) -gt "$fd_limit" ]; then
  storm_n=$(( (fd_limit - 200) / 3 ))
  echo "note: open-file limit $fd_limit: storm reduced to $storm_n sessions" >&2
fi

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -E"
  $sudo apt-get install -y -qq --no-install-recommends nginx-light haproxy >/dev/null
fi
PATH="$PATH:/usr/sbin"
t0=$(date +%s)
cargo build --release --quiet --bin tether
echo "build: $(( $(date +%s) - t0 )) s" >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tether="$target_dir/release/tether"

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU seconds (user+system) a process has used.
# "user system" CPU seconds so far, kept apart: on loopback most of a proxy's time is the
# kernel's (the same system calls for every proxy), and user time is what a proxy controls.
# Summed over the process and its children (nginx's workers under a master); the
# process's own figure covers all its threads.
cpu() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v hz="$(getconf CLK_TCK)" -v p="$1" '
      { pid = $1; sub(/^.*\) /, "") }  # past "(comm) ": $2 is the ppid, $12 utime, $13 stime
      pid == p || $2 == p { u += $12; s += $13 }
      END { print u / hz "," s / hz }'
}
rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
wait_port() {
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}
# Stops pids we started (SIG, then KILL after 5 s) and forgets them.
stop() { # SIG pid...
  local sig=$1 keep=() p q alive; shift
  for p in "$@"; do kill "-$sig" "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0; for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for p in "$@"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for q in "${pids[@]}"; do
    for p in "$@"; do [ "$q" = "$p" ] && continue 2; done
    keep+=("$q")
  done
  pids=("${keep[@]}")
}

results="$work/results.jsonl"
: > "$results"
node_ports=(); node_pids=()
start_nodes() { # [plain]: plain WebSocket echo nodes instead of Socket.IO ones
  node_ports=(); node_pids=()
  local i p kind=()
  [ "${1:-}" = plain ] && kind=(--plain-websocket)
  for i in 1 2 3; do
    p=$(port)
    taskset -c "$node_cpus" "$tether" node "${kind[@]}" --port "$p" --id "node-$i" >"$work/node-$i.log" 2>&1 &
    pids+=($!); node_pids+=($!); node_ports+=("$p")
  done
  for p in "${node_ports[@]}"; do wait_port "$p"; done
}
# SIGINT: a node stops at once (SIGTERM would drain first).
stop_nodes() { stop INT "${node_pids[@]}"; node_pids=(); }

fill() { # template out: the template with @PORT@ @NODE1..3@ @WORK@ filled in
  sed -e "s|@PORT@|$proxy_port|g" -e "s|@NODE1@|${node_ports[0]}|g" \
      -e "s|@NODE2@|${node_ports[1]}|g" -e "s|@NODE3@|${node_ports[2]}|g" \
      -e "s|@WORK@|$work|g" "benches/compare/$1" > "$2"
}

# The storm's failure handling, as each proxy's guide for Socket.IO gives it. nginx: passive
# (max_fails/fail_timeout as nginx's own guide writes them), and `hash $remote_addr
# consistent`, the socket.io guide's first choice: ip_hash keys on the first three octets
# only, which would put the storm's 127.1.x.y clients on a handful of keys. HAProxy:
# active checks of GET /health, as the repo's fixture (and the socket.io guide) has them.
# tether: its config as above (passive detection; a refused handshake goes to the next
# server).
storm_config() { # name file
  case "$1" in
    nginx) sed -i -e 's|^\(\s*\)ip_hash;|\1hash $remote_addr consistent;|' \
                  -e 's|^\(\s*server 127.0.0.1:[0-9]*\);|\1 max_fails=3 fail_timeout=30s;|' "$2" ;;
    haproxy) sed -i -e 's|^\(\s*\)hash-type consistent|&\n\1option httpchk GET /health\n\1http-check expect status 200\n\1default-server inter 2s fall 3 rise 2|' \
                    -e 's|^\(\s*server node-[0-9] 127.0.0.1:[0-9]*\)$|\1 check|' "$2" ;;
  esac
}

# The multicore scenario's config: $workers workers; nginx under a master (a worker
# process each; as root the workers stay root, to write where the master can), a listen
# socket per worker (`reuseport`: the kernel spreads connections, where one shared socket
# lets the busiest worker take most), and `hash $remote_addr consistent` as in the storm
# (ip_hash keys on 127.0.0, one node for every source).
multicore_config() { # name file
  case "$1" in
    nginx) sed -i -e "s|^worker_processes 1;|worker_processes $workers;|" \
                  -e "s|^master_process off;|master_process on;\nuser $(id -un);|" \
                  -e 's|^\(\s*listen 127.0.0.1:[0-9]*\) backlog=4096;|\1 backlog=4096 reuseport;|' \
                  -e 's|^\(\s*\)ip_hash;|\1hash $remote_addr consistent;|' "$2" ;;
    haproxy) sed -i -e "s|^\(\s*\)nbthread 1$|\1nbthread $workers|" "$2" ;;
  esac
}

proxy_pid=""; proxy_port=""
start_proxy() { # name [storm|multicore]
  proxy_port=$(port)
  case "$1" in
    direct) proxy_pid=""; proxy_port=${node_ports[0]}; return 0 ;;
    tether)
      fill tether.yaml.in "$work/tether.yaml"
      printf 'shutdown_grace: 1s\n' >> "$work/tether.yaml"
      if [ -n "$access_log" ]; then
        printf 'access_log: { path: "%s/access.log", format: %s }\n' "$work" "$access_log" >> "$work/tether.yaml"
      fi
      TOKIO_WORKER_THREADS=$workers taskset -c "$proxy_cpus" "$tether" run --config "$work/tether.yaml" \
        >"$work/tether.log" 2>&1 &
      ;;
    nginx)
      mkdir -p "$work/nginx"
      fill nginx.conf.in "$work/nginx/nginx.conf"
      [ "${2:-}" = storm ] && storm_config nginx "$work/nginx/nginx.conf"
      [ "${2:-}" = multicore ] && multicore_config nginx "$work/nginx/nginx.conf"
      taskset -c "$proxy_cpus" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" >"$work/nginx.log" 2>&1 &
      ;;
    haproxy)
      fill haproxy.cfg.in "$work/haproxy.cfg"
      [ "${2:-}" = storm ] && storm_config haproxy "$work/haproxy.cfg"
      [ "${2:-}" = multicore ] && multicore_config haproxy "$work/haproxy.cfg"
      taskset -c "$proxy_cpus" haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
      ;;
  esac
  proxy_pid=$!; pids+=("$proxy_pid")
  wait_port "$proxy_port" || { cat "$work/$1.log" "$work/nginx/error.log" 2>/dev/null >&2; return 1; }
}

# One scenario against the current target: runs the load generator ($bench_cpus) and
# appends {target, scenario, cpu_s, user_s, sys_s, rss..., bench} to $results.
measure() { # target scenario bench-args...
  local target=$1 scenario=$2; shift 2
  local out="$work/$target-$scenario.json" samp="$work/$target-$scenario.sample.json"
  local c0=0,0 c1=0,0 r0=0 bp sp=""
  if [ -n "$proxy_pid" ]; then c0=$(cpu "$proxy_pid"); r0=$(rss "$proxy_pid"); fi
  taskset -c "$bench_cpus" "$tether" bench --url "http://127.0.0.1:$proxy_port" \
    --threads "$bench_threads" --json --quiet \
    "$@" >"$out" 2>"$work/$target-$scenario.err" &
  bp=$!; pids+=("$bp")
  if [ -n "$proxy_pid" ] && [[ "$scenario" = idle || "$scenario" = burst* ]]; then
    python3 benches/compare/sample.py "$proxy_pid" "$bp" 0.25 "$burst_after" >"$samp" &
    sp=$!; pids+=("$sp")
  fi
  local rc=0
  wait "$bp" || rc=$?
  [ -n "$sp" ] && { wait "$sp" || true; }
  if [ -n "$proxy_pid" ]; then c1=$(cpu "$proxy_pid"); fi
  if [ "$rc" -ne 0 ] || [ ! -s "$out" ]; then
    echo "  $target $scenario: the load generator failed (exit $rc):" >&2
    tail -5 "$work/$target-$scenario.err" >&2
    echo '{}' > "$out"
  fi
  python3 - "$target" "$scenario" "$c0" "$c1" "$r0" "$out" "$samp" >>"$results" <<'PY'
import json, os, sys
target, scenario, c0, c1, r0, out, samp = sys.argv[1:]
(u0, s0), (u1, s1) = (map(float, c.split(",")) for c in (c0, c1))
row = {"target": target, "scenario": scenario, "cpu_s": round(u1 + s1 - u0 - s0, 4),
       "user_s": round(u1 - u0, 4), "sys_s": round(s1 - s0, 4),
       "rss_kib_before": int(r0), "bench": json.load(open(out))}
if os.path.exists(samp) and os.path.getsize(samp):
    row["sample"] = json.load(open(samp))
print(json.dumps(row))
PY
  python3 - "$results" <<'PY' >&2
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1]); b = r["bench"]
print(f"  {r['target']:8} {r['scenario']:8} established {b.get('established', 0):5} "
      f"failed {b.get('failed_total', '?'):>4}  acked {b.get('messages_acked', 0):7} "
      f"p99 {b.get('rtt_us', {}).get('p99', 0):6} us  setup/s {b.get('setup_rate', 0):8}  "
      f"proxy cpu {r['cpu_s']:.2f} s")
st = b.get("storm")
if st:
    rec = st["recovered_us"]
    cpu = st.get("cpu_us_per_recovered")
    print(f"  {'':8} {'':8} killed {st.get('killed_node')}: dropped {st['dropped']} "
          f"(expected {st['orphans_expected']}, elsewhere {st.get('dropped_elsewhere')}, before the kill "
          f"{st.get('dropped_before_kill')}) recovered {st['recovered']} "
          f"failed attempts {st['failed_attempts']}  p50 {rec['p50'] / 1e3:.0f} ms "
          f"p99 {rec['p99'] / 1e3:.0f} ms all {st['all_recovered_s']:.2f} s  "
          f"cpu/session {cpu if cpu is None else round(cpu)} us  landed {st['landed']}")
PY
}

run_target() { # name
  local t=$1 t0
  t0=$(date +%s)
  echo "== $t" >&2
  local d="${echo_secs}s" rep
  if wanted echo || wanted setup || wanted idle || wanted balance; then
    start_nodes
    start_proxy "$t"
    for rep in $(seq "$reps"); do
      wanted echo || break
      measure "$t" ws64 --transport websocket --mode echo --clients "$echo_clients" \
        --duration "$d" --payload-bytes 64
      measure "$t" ws4096 --transport websocket --mode echo --clients "$echo_clients" \
        --duration "$d" --payload-bytes 4096
      measure "$t" poll --transport polling-only --mode echo --clients "$echo_clients" \
        --duration "$d" --payload-bytes 64
    done
    wanted setup && measure "$t" setup --transport polling --mode connect --clients "$setup_n" --concurrency 64
    if [ "$t" != direct ] && wanted idle; then
      measure "$t" idle --transport websocket --mode idle --clients "$idle_n" \
        --duration "${idle_hold}s" --sources 127.0.0.2-127.0.0.100 --concurrency 128 --timeout 30s
    fi
    if [ "$t" != direct ] && wanted balance; then
      measure "$t" balance --transport websocket --mode connect --whoami --clients "$balance_n"
    fi
    if [ -n "$proxy_pid" ]; then stop TERM "$proxy_pid"; fi
    stop_nodes
  fi
  if [ "$t" != direct ] && wanted storm; then
    for rep in $(seq "$storm_reps"); do
      start_nodes
      start_proxy "$t" storm
      measure "$t" storm --transport polling --mode storm --clients "$storm_n" \
        --sources 127.1.0.0/16 --concurrency 64 --kill-pid "${node_pids[0]}" --kill-node node-1 \
        --cpu-pid "$proxy_pid" --duration 60s --timeout 20s
      stop TERM "$proxy_pid"
      stop_nodes
    done
  fi
  if [ "$t" != direct ] && wanted burst; then
    local up flight transport suffix
    for up in $burst_upstreams; do
      transport=websocket suffix=""
      [ "$up" = plain ] && transport=plain-websocket suffix=-plain
      start_nodes "$up"
      for flight in $burst_flights; do
        # A fresh process each time: what a burst leaves depends on what came before.
        start_proxy "$t"
        sleep 0.5
        measure "$t" "burst$flight$suffix" --transport "$transport" --mode idle \
          --clients "$idle_n" --concurrency "$flight" --duration "$((burst_after + 2))s" \
          --sources 127.0.0.2-127.0.0.100 --timeout 30s
        stop TERM "$proxy_pid"
      done
      stop_nodes
    done
  fi
  if [ "$t" != direct ] && wanted multicore; then
    local w src=127.0.0.2-127.0.0.100
    proxy_cpus=0,1 node_cpus=0,1 bench_cpus=0,1 bench_threads=2
    start_nodes
    for rep in $(seq "$reps"); do
      for w in $mc_workers; do
        workers=$w
        start_proxy "$t" multicore
        sleep 0.3 # nginx's master forks its workers after it listens
        measure "$t" "w$w-ws64" --transport websocket --mode echo --clients "$mc_clients" \
          --duration "${mc_secs}s" --payload-bytes 64 --sources "$src"
        measure "$t" "w$w-poll" --transport polling-only --mode echo --clients "$mc_clients" \
          --duration "${mc_secs}s" --payload-bytes 64 --sources "$src"
        measure "$t" "w$w-setup" --transport polling --mode connect --clients "$mc_setup_n" \
          --concurrency 64 --sources "$src"
        stop TERM "$proxy_pid"
      done
    done
    stop_nodes
    proxy_cpus=0 node_cpus=1 bench_cpus=1 bench_threads=1 workers=1
  fi
  echo "   ($t: $(( $(date +%s) - t0 )) s)" >&2
}

targets="direct tether nginx haproxy"
if [ -n "$only" ] && ! wanted echo && ! wanted setup; then targets="tether nginx haproxy"; fi
for t in $targets; do run_target "$t"; done

# Machine description and report.
date_s=$(date +%F); host=$(hostname -s 2>/dev/null || hostname)
{
  echo "nproc: $(nproc)"
  lscpu | head -n 15
  echo "kernel: $(uname -srm)"
  echo "load average (1, 5, 15 min): $load_at_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "nginx: $(nginx -v 2>&1)"
  echo "haproxy: $(haproxy -v 2>&1 | head -n 1)"
  echo "rustc: $(rustc -V)"
  echo "tether: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
} > "$work/machine.txt"
mkdir -p benches/results
name="$date_s-$host${only:+-only-${only//,/-}}"
python3 benches/compare/report.py --results "$results" --machine "$work/machine.txt" \
  --out-dir benches/results --date "$date_s" --host "$host" --quick "$quick" --name "$name" \
  ${only:+--no-latest --only "$only"} \
  --elapsed "$(( $(date +%s) - started_at ))" \
  --params "${access_log:+tether with an access log ($access_log, to a file); }echo and polling: $echo_clients clients x ${echo_secs}s, $reps runs each; setup: $setup_n sessions; idle: $idle_n WebSockets held ${idle_hold}s; balance: $balance_n sessions; storm: $storm_n sessions, node-1 killed, $storm_reps runs; burst: $idle_n WebSockets with $burst_flights set-ups in flight ($burst_upstreams upstreams), memory ${burst_after}s after; multicore: $mc_clients clients x ${mc_secs}s and $mc_setup_n sessions, $mc_workers workers, $reps runs each${only:+; only: $only}"
cp "$results" "benches/results/$name.jsonl"
echo "total $(( $(date +%s) - started_at )) s" >&2
