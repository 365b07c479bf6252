#!/usr/bin/env python3
"""Samples a proxy's open file descriptors and resident memory while a bench runs.

    sample.py PROXY_PID WATCH_PID [INTERVAL_S [AFTER_S]]

Every INTERVAL_S (0.25 s) reads the number of entries in /proc/PROXY_PID/fd and VmRSS
from /proc/PROXY_PID/status, until WATCH_PID (the load generator) exits. Prints one
JSON object: the most fds seen, VmRSS (KiB) at the last sample holding that many (the
moment every idle connection is up), the peak VmRSS, and VmRSS AFTER_S (10) seconds
after the burst ended (the first sample with the most fds), while they are still held:
what an allocator kept of the set-up burst shows there.
"""
import json
import os
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    proxy, watch = int(sys.argv[1]), int(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.25
    after = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    best_fds, rss_at_best, peak, samples = -1, 0, 0, 0
    history = []  # (seconds, fds, rss)
    t0 = time.monotonic()
    while os.path.exists(f"/proc/{watch}") and not _zombie(watch):
        try:
            n, r = fds(proxy), rss_kib(proxy)
        except (FileNotFoundError, ProcessLookupError):
            break
        samples += 1
        history.append((time.monotonic() - t0, n, r))
        peak = max(peak, r)
        if n >= best_fds:
            best_fds, rss_at_best = n, r
        time.sleep(interval)
    out = {"fds_max": best_fds, "rss_kib_at_fds_max": rss_at_best,
           "rss_kib_peak": peak, "samples": samples}
    # The burst ends at the first sample holding the most fds; a sample AFTER_S later,
    # still holding them all, is the memory the held connections keep.
    up = next((t for t, n, _ in history if n >= best_fds), None)
    if up is not None:
        later = [(t, n, r) for t, n, r in history if t >= up + after and n >= best_fds]
        if later:
            out["burst_s"] = round(up, 2)
            out["rss_kib_after"] = later[0][2]
            out["after_s"] = round(later[0][0] - up, 2)
    print(json.dumps(out))


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


if __name__ == "__main__":
    main()
