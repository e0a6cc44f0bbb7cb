#!/usr/bin/env python3
"""A/B two userd binaries on the static or proxy job: alternated A B A B ..., pinned like ./dev bench, medians.
For judging one change at a time on a noisy machine.

usage: ab.py A_USERD B_USERD [--backend io_uring] [--pairs 6] [--duration 3] [--proxy | --pipelined]
             [--b-flags "..."]
(--b-flags: extra userd flags for B only, e.g. "--extra-routes 1000" against the same binary as A)
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import PIPELINE, cpu_seconds, load_cpus, wrk, SERVER_CPU  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import Server  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--backend", default="io_uring")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--proxy", action="store_true")
    ap.add_argument("--pipelined", action="store_true", help="16 requests per write (benchmarks/pipeline.lua)")
    ap.add_argument("--b-flags", default="")
    x = ap.parse_args()
    up = None
    extra = []
    if x.proxy:
        up = Server(["taskset", "-c", load_cpus(), x.a, "--listen", "127.0.0.1:0", "--threads", "1"])
        extra = ["--upstream", f"http://127.0.0.1:{up.port}/v1/avatar"]
    servers = {k: Server(["taskset", "-c", SERVER_CPU, b, "--listen", "127.0.0.1:0", "--threads", "1",
                          "--backend", x.backend, *extra, *more]) for k, b, more in
               (("A", x.a, []), ("B", x.b, x.b_flags.split()))}
    res = {"A": [], "B": []}
    try:
        for s in servers.values():
            wrk(f"http://127.0.0.1:{s.port}/v1/user", 1)
        for _ in range(x.pairs):
            for k, s in servers.items():
                c0 = cpu_seconds(s.pid)
                w = wrk(f"http://127.0.0.1:{s.port}/v1/user", x.duration, script=PIPELINE if x.pipelined else None)
                res[k].append(((cpu_seconds(s.pid) - c0) * 1e6 / w["requests"], w["rps"]))
    finally:
        for s in servers.values():
            s.stop()
        if up:
            up.stop()
    med = {k: (statistics.median(c for c, _ in v), statistics.median(r for _, r in v)) for k, v in res.items()}
    for k, (c, r) in med.items():
        print(f"{k}: {c:.2f} CPU us/req  {r:.0f} req/s   all: " + " ".join(f"{c:.2f}" for c, _ in res[k]))
    print(f"B/A CPU per request: {med['B'][0] / med['A'][0]:.3f} (ratio of medians)")
    # Each pair ran back to back, so its own ratio cancels the drift between pairs: judge on their median.
    ratios = sorted(b[0] / a[0] for a, b in zip(res["A"], res["B"]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"B/A CPU per request, median of per-pair ratios: {statistics.median(ratios):.3f} "
          f"(IQR {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
