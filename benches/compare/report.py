#!/usr/bin/env python3
"""Turns the rows benches/compare.sh collected into tables, a Markdown report and an
SVG bar chart of the ratios (drawn by hand: no packages needed).

    report.py --results R.jsonl --machine M.txt --out-dir DIR --date D --host H
              [--quick 0|1] [--elapsed S] [--params TEXT] [--name NAME] [--no-latest]

Each row of R.jsonl: {target, scenario, cpu_s, user_s, sys_s, rss_kib_before, bench: <tether bench
--json>, sample: <sample.py output, idle only>}. Prints the tables on stdout; writes
DIR/<name>.md (name: <date>-<host>), DIR/<date>-ratios.svg, and unless --no-latest
DIR/latest.md and DIR/latest.svg.
"""
import argparse
import math
import os
import shutil

import json

TARGETS = ["direct", "tether", "nginx", "haproxy"]
PROXIES = ["tether", "nginx", "haproxy"]
NAMES = {"direct": "direct", "tether": "tether", "nginx": "nginx", "haproxy": "HAProxy"}
NODES = ["node-1", "node-2", "node-3"]
# Set-ups in flight of the burst scenarios (benches/compare.sh).
BURST_FLIGHTS = [64, 2048]
# The multicore scenario's loads: (scenario suffix, bench field counted, units counted
# per unit of that field, what is counted, label).
MULTICORE = [("ws64", "messages_acked", 2, "messages", "WS relay 64 B"),
             ("poll", "http_requests", 1, "HTTP requests", "Polling echo"),
             ("setup", "established", 1, "sessions", "Session setup")]


def load(path):
    """{(target, scenario): [row, ...]}: the echo and polling scenarios run several
    times (interleaved), the others once."""
    rows = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.setdefault((r["target"], r["scenario"]), []).append(r)
    return rows


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def metrics(rows):
    """{metric key: {target: value}} and the metric descriptions, in display order."""
    m = {}
    spec = []  # (key, label, unit, lower_is_better, decimals, in_chart, vs_direct)

    def put(key, target, value):
        m.setdefault(key, {})[target] = value

    def put_median(key, target, values):
        v = median(values)
        if v is not None:
            put(key, target, v)

    for t in TARGETS:
        for sc in ("ws64", "ws4096", "poll"):
            reps = [r for r in rows.get((t, sc), []) if r["bench"]]
            if not reps:
                continue
            b = [r["bench"] for r in reps]
            put_median(f"{sc}_rate", t, [x.get("messages_per_sec", 0) for x in b])
            put_median(f"{sc}_p50", t, [x.get("rtt_us", {}).get("p50", 0) for x in b])
            put_median(f"{sc}_p99", t, [x.get("rtt_us", {}).get("p99", 0) for x in b])
            put(f"{sc}_failed", t, sum(x.get("failed_total", 0) for x in b))
            if t == "direct":
                continue
            key, unit = (("request", "http_requests") if sc == "poll"
                         else (sc, "messages_acked"))
            per = 1 if sc == "poll" else 2  # an ack is a message each way
            for part, field in (("cpu", "cpu_s"), ("user", "user_s"), ("sys", "sys_s")):
                put_median(f"{key}_{part}", t, [r[field] * 1e6 / (per * r["bench"][unit])
                                                for r in reps
                                                if r["bench"].get(unit) and field in r])
        r = (rows.get((t, "setup")) or [None])[-1]
        if r and r["bench"]:
            b = r["bench"]
            est = b.get("established", 0)
            put("setup_rate", t, b.get("setup_rate", 0))
            put("setup_p99", t, b.get("setup_us", {}).get("p99", 0))
            put("setup_failed", t, b.get("failed_total", 0))
            if t != "direct" and est:
                put("setup_cpu", t, r["cpu_s"] * 1e6 / est)
        r = (rows.get((t, "idle")) or [None])[-1]
        if r and r["bench"] and r.get("sample"):
            b, s = r["bench"], r["sample"]
            est = b.get("established", 0)
            put("idle_established", t, est)
            if est:
                put("idle_rss", t, (s["rss_kib_at_fds_max"] - r["rss_kib_before"]) * 1024 / est)
        for flight in BURST_FLIGHTS:
            for suffix in ("", "-plain"):
                r = (rows.get((t, f"burst{flight}{suffix}")) or [None])[-1]
                if r and r["bench"] and r.get("sample", {}).get("rss_kib_after"):
                    est = r["bench"].get("established", 0)
                    if est:
                        put(f"burst{flight}{suffix}_rss", t,
                            (r["sample"]["rss_kib_after"] - r["rss_kib_before"]) * 1024 / est)
        r = (rows.get((t, "balance")) or [None])[-1]
        if r and r["bench"]:
            per = r["bench"].get("per_node", {}) or {}
            counts = [per.get(n, 0) for n in NODES] + [v for k, v in per.items() if k not in NODES]
            total = sum(counts)
            if total:
                put("balance_split", t, "/".join(str(c) for c in counts))
                put("balance", t, max(counts) / (total / len(NODES)))

        # Multicore: throughput per proxy CPU-second (every process of the proxy), per
        # second, the proxy's cores busy, and 2 workers over 1.
        for sc, field, per, _what, _label in MULTICORE:
            for w in (1, 2):
                reps = [r for r in rows.get((t, f"w{w}-{sc}"), [])
                        if r["bench"] and r["bench"].get(field) and r.get("cpu_s")]
                if not reps or t == "direct":
                    continue
                b = [r["bench"] for r in reps]
                put_median(f"mc{w}_{sc}_per_cpu", t,
                           [per * r["bench"][field] / r["cpu_s"] for r in reps])
                put_median(f"mc{w}_{sc}_rate", t,
                           [x.get("setup_rate") if sc == "setup"
                            else x.get("messages_per_sec") for x in b])
                put_median(f"mc{w}_{sc}_cores", t,
                           [r["cpu_s"] / r["bench"]["elapsed_s"] for r in reps
                            if r["bench"].get("elapsed_s")])
                put(f"mc{w}_{sc}_failed", t, sum(x.get("failed_total", 0) for x in b))
            per_cpu = m.get(f"mc2_{sc}_per_cpu", {}).get(t)
            if per_cpu:
                put(f"mc2_{sc}_cpu", t, 1e6 / per_cpu)
            for kind in ("per_cpu", "rate"):
                one = m.get(f"mc1_{sc}_{kind}", {}).get(t)
                two = m.get(f"mc2_{sc}_{kind}", {}).get(t)
                if one and two:
                    put(f"mc_{sc}_{kind}_scale", t, two / one)

        storms = [r["bench"]["storm"] for r in rows.get((t, "storm"), [])
                  if r["bench"] and r["bench"].get("storm")]
        if storms:
            put_median("storm_p50", t, [st["recovered_us"]["p50"] / 1e3 for st in storms
                                        if st["recovered"]])
            put_median("storm_p99", t, [st["recovered_us"]["p99"] / 1e3 for st in storms
                                        if st["recovered"]])
            put_median("storm_all", t, [st["all_recovered_s"] for st in storms])
            put_median("storm_cpu", t, [st.get("cpu_us_per_recovered") for st in storms])
            put("storm_orphans", t, " ".join(
                f"{st['recovered']}/{st['dropped']}"
                + (f" ({st['dropped_elsewhere']} elsewhere)" if st.get("dropped_elsewhere")
                   else "") for st in storms))
            put("storm_failed", t, sum(st["failed_attempts"] for st in storms))

    spec = [
        ("ws64_cpu", "WS relay 64 B: proxy CPU per message", "µs", True, 2, True, False),
        ("ws64_user", "WS relay 64 B: of which user space", "µs", True, 2, False, False),
        ("ws64_sys", "WS relay 64 B: of which kernel", "µs", True, 2, False, False),
        ("ws4096_cpu", "WS relay 4 KiB: proxy CPU per message", "µs", True, 2, True, False),
        ("ws4096_user", "WS relay 4 KiB: of which user space", "µs", True, 2, False, False),
        ("ws4096_sys", "WS relay 4 KiB: of which kernel", "µs", True, 2, False, False),
        ("ws64_p99", "WS echo 64 B: ack p99", "µs", True, 0, True, True),
        ("ws4096_p99", "WS echo 4 KiB: ack p99", "µs", True, 0, True, True),
        ("ws64_p50", "WS echo 64 B: ack p50", "µs", True, 0, False, True),
        ("ws4096_p50", "WS echo 4 KiB: ack p50", "µs", True, 0, False, True),
        ("ws64_rate", "WS echo 64 B: acks per second", "/s", False, 0, False, True),
        ("ws4096_rate", "WS echo 4 KiB: acks per second", "/s", False, 0, False, True),
        ("request_cpu", "Polling: proxy CPU per HTTP request", "µs", True, 2, True, False),
        ("request_user", "Polling: of which user space", "µs", True, 2, False, False),
        ("request_sys", "Polling: of which kernel", "µs", True, 2, False, False),
        ("poll_p99", "Polling echo: ack p99", "µs", True, 0, False, True),
        ("poll_rate", "Polling echo: acks per second", "/s", False, 0, False, True),
        ("setup_cpu", "Session setup: proxy CPU per session", "µs", True, 0, True, False),
        ("setup_rate", "Session setup: sessions per second", "/s", False, 0, False, True),
        ("setup_p99", "Session setup: p99", "µs", True, 0, False, True),
        ("idle_rss", "Idle WebSocket: proxy RSS per connection", "B", True, 0, True, False),
        ("idle_established", "Idle WebSockets held", "", False, 0, False, False),
        *[(f"burst{f}{sfx}_rss",
           f"Burst, {f} set-ups in flight{up}: RSS per WebSocket after", "B", True, 0,
           f == BURST_FLIGHTS[-1], False)
          for f in BURST_FLIGHTS for sfx, up in (("", ""), ("-plain", ", plain WS upstream"))],
        ("balance", "One client IP: busiest node / mean", "×", True, 2, True, False),
        ("balance_split", "One client IP: sessions per node", "", None, 0, False, False),
        ("ws64_failed", "WS echo 64 B: failed clients", "", None, 0, False, False),
        ("ws4096_failed", "WS echo 4 KiB: failed clients", "", None, 0, False, False),
        ("poll_failed", "Polling echo: failed clients", "", None, 0, False, False),
        ("setup_failed", "Session setup: failed sessions", "", None, 0, False, False),
        ("storm_p50", "Storm: time to recovered p50", "ms", True, 0, True, False),
        ("storm_p99", "Storm: time to recovered p99", "ms", True, 0, True, False),
        ("storm_all", "Storm: last orphan recovered", "s", True, 2, False, False),
        ("storm_cpu", "Storm: proxy CPU per re-established session", "µs", True, 0, True,
         False),
        ("storm_orphans", "Storm: sessions recovered/dropped, each run", "", None, 0, False,
         False),
        ("storm_failed", "Storm: failed reconnection attempts, all runs", "", None, 0, False,
         False),
        *[row for sc, _f, _p, what, label in MULTICORE for row in (
            (f"mc2_{sc}_per_cpu", f"2 workers, {label}: {what} per proxy CPU-second", "/s",
             False, 0, False, False),
            # The same, as the chart draws it (lower is better there).
            (f"mc2_{sc}_cpu", f"2 workers, {label}: proxy CPU per {what[:-1]}", "µs", True,
             2 if sc != "setup" else 0, True, False),
            (f"mc2_{sc}_rate", f"2 workers, {label}: "
             + ("sessions per second" if sc == "setup" else "acks per second"), "/s", False, 0,
             False, False),
            (f"mc2_{sc}_cores", f"2 workers, {label}: proxy CPU-seconds per second", "", None,
             2, False, False),
            (f"mc1_{sc}_per_cpu", f"1 worker, unpinned, {label}: {what} per proxy CPU-second",
             "/s", False, 0, False, False),
            (f"mc1_{sc}_rate", f"1 worker, unpinned, {label}: "
             + ("sessions per second" if sc == "setup" else "acks per second"), "/s", False, 0,
             False, False),
            (f"mc1_{sc}_cores", f"1 worker, unpinned, {label}: proxy CPU-seconds per second",
             "", None, 2, False, False),
            (f"mc_{sc}_rate_scale", f"{label}: throughput, 2 workers over 1", "×", False, 2,
             False, False),
            (f"mc_{sc}_per_cpu_scale", f"{label}: per proxy CPU-second, 2 workers over 1", "×",
             False, 2, False, False),
            (f"mc2_{sc}_failed", f"2 workers, {label}: failed clients", "", None, 0, False,
             False),
        )],
    ]
    return m, [s for s in spec if s[0] in m]


def fmt(v, decimals):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if decimals == 0:
        return f"{v:,.0f}"
    return f"{v:,.{decimals}f}"


def ratio(m, key, a, b):
    va, vb = m.get(key, {}).get(a), m.get(key, {}).get(b)
    if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and vb:
        return va / vb
    return None


def tables(m, spec):
    raw = ["| metric | unit | " + " | ".join(NAMES[t] for t in TARGETS) + " |",
           "|---|---|" + "---:|" * len(TARGETS)]
    for key, label, unit, _lower, dec, _chart, _vs in spec:
        raw.append(f"| {label} | {unit} | "
                   + " | ".join(fmt(m[key].get(t), dec) for t in TARGETS) + " |")
    rat = ["| metric | better | tether/nginx | tether/HAProxy | tether/direct |",
           "|---|---|---:|---:|---:|"]
    for key, label, unit, lower, _dec, _chart, vs_direct in spec:
        if lower is None or key == "idle_established":
            continue
        cells = [ratio(m, key, "tether", "nginx"), ratio(m, key, "tether", "haproxy"),
                 ratio(m, key, "tether", "direct") if vs_direct else None]
        rat.append(f"| {label} | {'lower' if lower else 'higher'} | "
                   + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(raw), "\n".join(rat)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(m, spec, title, subtitle):
    """Horizontal bars on a log2 axis centred on 1 (parity): left = tether lower."""
    items = [(label, unit, key) for key, label, unit, lower, _d, chart, _v in spec if chart]
    series = [("nginx", "tether / nginx", "#2a9d8f"), ("haproxy", "tether / HAProxy", "#e76f51")]
    lo, hi = -3.0, 3.0  # log2 range: 1/8 .. 8
    left, width, label_w = 20, 860, 300
    ax_x0, ax_x1 = left + label_w, left + label_w + 500
    bar_h, gap, group_gap = 14, 3, 14
    top = 92
    group_h = len(series) * (bar_h + gap) + group_gap
    height = top + len(items) * group_h + 60

    def x(v):
        lv = min(max(math.log2(v), lo), hi)
        return ax_x0 + (lv - lo) / (hi - lo) * (ax_x1 - ax_x0)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
           f'font-size="12">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="24" font-size="16" font-weight="bold">{esc(title)}</text>',
           f'<text x="{left}" y="44" fill="#555">{esc(subtitle)}</text>']
    # Legend.
    lx = left
    for _t, name, color in series:
        out.append(f'<rect x="{lx}" y="56" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="66">{esc(name)}</text>')
        lx += 150
    out.append(f'<text x="{lx}" y="66" fill="#555">&lt; 1: tether uses less / is faster'
               f' (log scale)</text>')
    # Grid.
    bottom = top + len(items) * group_h
    for e in range(int(lo), int(hi) + 1):
        gx = x(2.0 ** e)
        lab = f"{2 ** e:g}" if e >= 0 else f"1/{2 ** -e}"
        stroke = "#333" if e == 0 else "#ddd"
        out.append(f'<line x1="{gx:.1f}" y1="{top - 6}" x2="{gx:.1f}" y2="{bottom}" '
                   f'stroke="{stroke}" stroke-width="{1.5 if e == 0 else 1}"/>')
        out.append(f'<text x="{gx:.1f}" y="{bottom + 16}" text-anchor="middle" '
                   f'fill="#555">{lab}×</text>')
    # Bars.
    y = top
    for label, unit, key in items:
        out.append(f'<text x="{ax_x0 - 8}" y="{y + bar_h + 2}" text-anchor="end">'
                   f'{esc(label)}</text>')
        for i, (t, _name, color) in enumerate(series):
            by = y + i * (bar_h + gap)
            r = ratio(m, key, "tether", t)
            if r is None or r <= 0:
                out.append(f'<text x="{x(1) + 4:.1f}" y="{by + bar_h - 3}" fill="#999">'
                           f'n/a</text>')
                continue
            x1, x0 = x(r), x(1)
            a, b = min(x0, x1), max(x0, x1)
            out.append(f'<rect x="{a:.1f}" y="{by}" width="{max(b - a, 1):.1f}" '
                       f'height="{bar_h}" fill="{color}"><title>{esc(label)}: '
                       f'{r:.3f}</title></rect>')
            clipped = not (2.0 ** lo <= r <= 2.0 ** hi)
            tx, anchor = (b + 4, "start") if r >= 1 else (a - 4, "end")
            out.append(f'<text x="{tx:.1f}" y="{by + bar_h - 3}" text-anchor="{anchor}" '
                       f'font-size="11">{r:.2f}{" (clipped)" if clipped else ""}</text>')
        y += group_h
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--quick", default="0")
    ap.add_argument("--elapsed", default="?")
    ap.add_argument("--params", default="")
    ap.add_argument("--name", default=None)
    ap.add_argument("--no-latest", action="store_true")
    ap.add_argument("--only", default="")
    a = ap.parse_args()

    m, spec = metrics(load(a.results))
    raw, rat = tables(m, spec)
    machine = open(a.machine).read().rstrip()
    quick = a.quick == "1"
    print("Raw figures\n" + raw + "\n\nRatios\n" + rat)

    svg_name = f"{a.date}-ratios.svg"
    md = f"""# tether vs nginx vs HAProxy — {a.date}, {a.host}{' (--quick)' if quick else ''}

Produced by `bash benches/compare.sh{' --quick' if quick else ''}{' --only ' + a.only if a.only else ''}` in {a.elapsed} s.
Each proxy runs alone, pinned to core 0 with one worker (tether: `TOKIO_WORKER_THREADS=1`;
nginx: `worker_processes 1`, `ip_hash`, keep-alive upstreams; HAProxy: `nbthread 1`,
`balance source`, `hash-type consistent`); the three bundled nodes (`tether node`) and the
load generator (`tether bench --threads 1`) share core 1. "direct": the load generator
straight at one node, no proxy. Proxy CPU is utime+stime from `/proc/PID/stat` around
each scenario; memory is VmRSS from `/proc/PID/status`.

Scenarios: {a.params}.

- CPU per relayed message = proxy CPU / (2 × acks): a message each way.
- Polling: clients on long-polling for good (`--transport polling-only`), echoing back
  to back: each message is a POST on one keep-alive connection and its ack comes back
  on the GET kept pending on another, as a browser does it. CPU per HTTP request = proxy
  CPU / every request the load generator made (setup included, about 2 per ack).
- Session setup is the real client's dance (polling handshake, `POST 40`, GET poll, a
  pending GET poll while the WebSocket upgrade is probed): proxy CPU per session.
- Idle memory: VmRSS once every WebSocket is up (most open fds) minus VmRSS before,
  per established WebSocket (the proxy holds two sockets for each).
- Burst memory: the same WebSockets opened as a burst (64 or 2048 set-ups in flight) on a
  fresh proxy process, to the Socket.IO nodes or to plain WebSocket nodes; VmRSS some
  seconds after the burst ended (all still held) minus VmRSS before, per WebSocket: the
  set-up buffers an allocator kept after the burst show there.
- Balance: all sessions from 127.0.0.1; busiest node over the mean of the 3 nodes
  (3.00 = everything on one node, as `ip_hash`/`balance source` do by design).
- Multicore (rows "2 workers", "1 worker, unpinned"): each proxy with 2 workers
  (tether `TOKIO_WORKER_THREADS=2`; nginx `worker_processes 2` under a master, `listen
  ... reuseport`; HAProxy `nbthread 2`) and then 1, nothing pinned: the proxy, the nodes
  and the load generator (`--threads 2`) share both cores, so a proxy cannot have 2
  cores to itself and the figure that compares is throughput per proxy CPU-second (CPU of
  every process of the proxy, nginx's master and workers). Clients come from 99 source
  addresses and nginx hashes `$remote_addr` (as in the storm): every proxy spreads them
  over the 3 nodes. "CPU-seconds per second": how much of the 2 cores the proxy used.
- Storm: sessions set up the real client's way from as many source addresses, node-1
  SIGKILLed by the load generator; each orphan reconnects with socket.io-client's
  back-off (1 s × 2^n up to 5 s, ±50 %), a new session each attempt. Time to recovered:
  from the kill until the orphan's new session is set up (upgraded) on a live node;
  median over the runs of each run's p50 / p99. Proxy CPU from the kill until the last
  orphan is back, over the sessions re-made. Failure handling as each proxy's Socket.IO
  guide gives it: nginx passive (`max_fails=3 fail_timeout=30s`, `hash $remote_addr
  consistent`), HAProxy active (`option httpchk GET /health`, `inter 2s fall 3 rise 2`),
  tether its config as is (passive).

The echo and polling scenarios run several times each, interleaved (see above), and each
of their figures is the median over those runs. Even so, on this shared virtual machine
proxy CPU per message and per request moves by up to ±20 % between whole runs of this
script, for every proxy alike; RSS per WebSocket and the balance figure are steady.
Latency and acks per second swing up to 2-3×: with one echo in flight per client they
are set by how core 1 (three nodes and the load generator) happens to schedule. Compare
several runs (the `.jsonl` next to this file holds every raw report).

## Ratios

![ratios]({svg_name})

{rat}

## Raw figures

{raw}

## Machine

```
{machine}
```
"""
    os.makedirs(a.out_dir, exist_ok=True)
    name = a.name or f"{a.date}-{a.host}"
    if a.no_latest:
        svg_name = f"{name}-ratios.svg"
        md = md.replace(f"]({a.date}-ratios.svg)", f"]({svg_name})")
    md_path = os.path.join(a.out_dir, f"{name}.md")
    svg_path = os.path.join(a.out_dir, svg_name)
    with open(md_path, "w") as f:
        f.write(md)
    with open(svg_path, "w") as f:
        f.write(svg(m, spec, f"tether relative to nginx and HAProxy ({a.date})",
                    f"one worker each on core 0"
                    f"{' (multicore rows: 2 workers, unpinned)' if 'mc2_ws64_cpu' in m else ''}"
                    f"; {a.host}{', --quick' if quick else ''}"))
    if a.no_latest:
        print(f"\nwrote {md_path}, {svg_path}")
        return
    shutil.copyfile(svg_path, os.path.join(a.out_dir, "latest.svg"))
    with open(os.path.join(a.out_dir, "latest.md"), "w") as f:
        f.write(md.replace(f"]({svg_name})", "](latest.svg)"))
    print(f"\nwrote {md_path}, {svg_path}, latest.md, latest.svg")


if __name__ == "__main__":
    main()
