#!/usr/bin/env python3
"""A first benchmark: userd pinned to one CPU, wrk pinned to the other, a few rounds, medians.

Reports req/s, latency p50/p99 (wrk), server CPU microseconds per request (utime+stime from /proc/PID/stat over
the timed window, divided by the requests wrk completed) and peak RSS (VmHWM). The full side-by-side harness
(Hyper, nginx, floors) is `./dev bench`'s job; this measures userd alone.

usage: wrk_pinned.py USERD [--backend io_uring|epoll] [--rounds 3] [--duration 10] [--connections 100] [--path /v1/user]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import Server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def wrk_latency(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", text, re.M)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("userd")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--path", default="/v1/user")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--load-cpu", default="1")
    ap.add_argument("--backend", default="io_uring")
    a = ap.parse_args()
    srv = Server(["taskset", "-c", a.server_cpu, a.userd, "--listen", "127.0.0.1:0", "--threads", "1",
                  "--backend", a.backend])
    url = f"http://127.0.0.1:{srv.port}{a.path}"
    try:
        subprocess.run(["taskset", "-c", a.load_cpu, "wrk", "-t1", "-c", str(a.connections), "-d2s", url],
                       capture_output=True, check=True)  # warm-up
        rows = []
        for _ in range(a.rounds):
            c0, t0 = cpu_seconds(srv.pid), time.monotonic()
            out = subprocess.run(["taskset", "-c", a.load_cpu, "wrk", "-t1", "-c", str(a.connections),
                                  f"-d{a.duration}s", "--latency", url], capture_output=True, text=True, check=True).stdout
            c1 = cpu_seconds(srv.pid)
            reqs = int(re.search(r"(\d+) requests in", out).group(1))
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
            rows.append({"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                         "p50": wrk_latency(out, 50), "p99": wrk_latency(out, 99),
                         "cpu_us": (c1 - c0) * 1e6 / reqs, "errors": errors.group(0) if errors else "none",
                         "wall": time.monotonic() - t0})
        hwm = re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{srv.pid}/status").read()).group(1)
    finally:
        srv.stop()
    for i, r in enumerate(rows, 1):
        print(f"round {i}: {r['rps']:.0f} req/s  p50 {r['p50']:.0f} us  p99 {r['p99']:.0f} us  "
              f"{r['cpu_us']:.2f} CPU us/req  errors: {r['errors']}")
    med = {k: statistics.median(r[k] for r in rows) for k in ("rps", "p50", "p99", "cpu_us")}
    print(f"median: {med['rps']:.0f} req/s  p50 {med['p50']:.0f} us  p99 {med['p99']:.0f} us  "
          f"{med['cpu_us']:.2f} CPU us/req  peak RSS {int(hwm) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
