#!/usr/bin/env python3
"""Samples a proxy's open file descriptors and resident memory while a bench runs.

    sample.py PROXY_PID WATCH_PID [INTERVAL_S]

Every INTERVAL_S (0.25 s) reads the number of entries in /proc/PROXY_PID/fd and VmRSS
from /proc/PROXY_PID/status, until WATCH_PID (the load generator) exits. Prints one
JSON object: the most fds seen, VmRSS (KiB) at the last sample holding that many (the
moment every idle connection is up), and the peak VmRSS.
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
    best_fds, rss_at_best, peak, samples = -1, 0, 0, 0
    while os.path.exists(f"/proc/{watch}") and not _zombie(watch):
        try:
            n, r = fds(proxy), rss_kib(proxy)
        except (FileNotFoundError, ProcessLookupError):
            break
        samples += 1
        peak = max(peak, r)
        if n >= best_fds:
            best_fds, rss_at_best = n, r
        time.sleep(interval)
    print(json.dumps({"fds_max": best_fds, "rss_kib_at_fds_max": rss_at_best,
                      "rss_kib_peak": peak, "samples": samples}))


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


if __name__ == "__main__":
    main()
