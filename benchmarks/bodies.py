#!/usr/bin/env python3
"""benchmarks/bodies.py: the large-body jobs side by side (issue 19).

- upload: 64 MB request bodies over 10 connections, each taken as a stream and counted (examples/upload's
  /discard, hyper-ref --sink, nginx reading and discarding it). Measured: server CPU per GB received, peak RSS.
- bigproxy: a 1 MB upstream body to 100 clients through the proxy (userd --no-validate, which streams;
  hyper-ref --relay, Hyper streaming both bodies; nginx with proxy_buffering and proxy_request_buffering off),
  from an nginx upstream serving the file from memory on the load core. Measured: proxy CPU per GB, peak RSS.

Every round gives each server the same fixed work (h2load -n: no request cut at a round's end), the server
pinned to CPU 0, the load (and the upstream) to the others; the servers alternate in every round, and targets
are judged on the median of per-round ratios, with their interquartile range.

usage: bodies.py --userd B --upload B [--hyper B] [--rounds 15] [--quick] [--out FILE]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import (ROOT, SERVER_CPU, Announced, Server, build_hyper, cpu_seconds, free_port,  # noqa: E402
                   load_cpus, nginx_file, peak_rss_kb)

GB = 1e9
UPLOAD_BYTES = 64 << 20
PROXY_BYTES = 1 << 20

# (job, server, against, limit): CPU per GB, and peak RSS, judged as server / against.
TARGETS = [
    ("upload", "userd io_uring", "hyper", "cpu", 0.7),
    ("upload", "userd io_uring", "nginx", "cpu", 1.0),
    ("upload", "userd io_uring", "hyper", "rss", 1.0),
    ("upload", "userd io_uring", "nginx", "rss", 1.0),
    ("bigproxy", "userd io_uring", "hyper", "cpu", 0.7),
    ("bigproxy", "userd io_uring", "nginx", "cpu", 1.0),
    ("bigproxy", "userd io_uring", "hyper", "rss", 1.0),
    ("bigproxy", "userd io_uring", "nginx", "rss", 1.0),
]


def nginx(tmp, port, server_block, upstream=""):
    return nginx_file(tmp, port, f"127.0.0.1:{port}", server_block, upstream, "sendfile on;")


def stop(s):
    if isinstance(s, Announced):
        s.proc.terminate()
        s.proc.wait(timeout=10)
    else:
        s.stop()


def pinned(cpus, argv):
    return ["taskset", "-c", cpus, *argv]


def h2load(url, n, c, data=None, headers=()):
    argv = ["h2load", "--h1", "-t1", f"-n{n}", f"-c{c}", *(a for h in headers for a in ("-H", h))]
    if data:
        argv += ["-d", data]
    out = subprocess.run(pinned(load_cpus(), [*argv, url]), capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    ok = int(m.group(1)) if m else 0
    if ok != n:
        raise RuntimeError(f"h2load: {ok} of {n} succeeded:\n{out}")
    m = re.search(r"finished in ([\d.]+)(ms|s)", out)
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def start(kind, job, args, tmp, upstream_port):
    """(server, url, headers) for one server of a job, pinned to the server core."""
    port = free_port()
    key = ("X-Api-Key: k",)
    if job == "upload":
        if kind.startswith("userd"):
            backend = kind.split()[1]
            s = Server(pinned(SERVER_CPU, [args.upload, f"127.0.0.1:{port}", backend]))
            return s, f"http://127.0.0.1:{port}/discard/x", key
        if kind == "hyper":
            s = Server(pinned(SERVER_CPU, [args.hyper, "--listen", f"127.0.0.1:{port}", "--sink"]))
            return s, f"http://127.0.0.1:{port}/discard/x", ()
        conf = nginx(tmp, port, "location /discard/ { client_max_body_size 0; client_body_buffer_size 64m; "
                                "return 200 '{}'; }")
        return Announced(pinned(SERVER_CPU, ["nginx", "-c", conf, "-e", "stderr"]), port), \
            f"http://127.0.0.1:{port}/discard/x", ()
    if kind.startswith("userd"):
        backend = kind.split()[1]
        s = Server(pinned(SERVER_CPU, [args.userd, "--listen", f"127.0.0.1:{port}", "--backend", backend,
                                       "--threads", "1", "--upstream", f"http://127.0.0.1:{upstream_port}/big.bin",
                                       "--no-validate", "--upstream-timeout", "10"]))
        return s, f"http://127.0.0.1:{port}/v1/user", ()
    if kind == "hyper":
        s = Server(pinned(SERVER_CPU, [args.hyper, "--listen", f"127.0.0.1:{port}", "--relay",
                                       f"127.0.0.1:{upstream_port}"]))
        return s, f"http://127.0.0.1:{port}/big.bin", ()
    conf = nginx(tmp, port, "location / { proxy_pass http://up; proxy_http_version 1.1; "
                            "proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off; }",
                 f"upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}")
    return Announced(pinned(SERVER_CPU, ["nginx", "-c", conf, "-e", "stderr"]), port), \
        f"http://127.0.0.1:{port}/big.bin", ()


SERVERS = ["userd io_uring", "userd epoll", "hyper", "nginx"]


def run_job(job, args, tmp, upstream_port):
    servers = {k: start(k, job, args, tmp, upstream_port) for k in SERVERS}
    if job == "upload":
        n, c, data, per_request = args.upload_requests, 10, os.path.join(tmp, "64m.bin"), UPLOAD_BYTES
    else:
        n, c, data, per_request = args.proxy_requests, 100, None, PROXY_BYTES
    res = {k: {"cpu": [], "secs": [], "rss": 0} for k in SERVERS}
    try:
        for k, (s, url, headers) in servers.items():  # warm-up: connections, buffers, the upstream pool
            h2load(url, max(c, n // 4), c, data, headers)
        for r in range(args.rounds):
            order = SERVERS if r % 2 == 0 else SERVERS[::-1]
            for k in order:
                s, url, headers = servers[k]
                c0 = cpu_seconds(s.pid)
                secs = h2load(url, n, c, data, headers)
                res[k]["cpu"].append((cpu_seconds(s.pid) - c0) / (n * per_request / GB))
                res[k]["secs"].append(secs)
        for k, (s, _, _) in servers.items():
            res[k]["rss"] = peak_rss_kb(s.pid)
    finally:
        for s, _, _ in servers.values():
            stop(s)
    return res


def iqr(v):
    q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]
    return q[0], q[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--userd", required=True)
    ap.add_argument("--upload", required=True)
    ap.add_argument("--hyper", help="the hyper-ref binary; without it, built from benchmarks/hyper-ref")
    ap.add_argument("--hyper-target-dir", default=os.path.join(ROOT, "build", "hyper-ref"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--upload-requests", type=int, default=20, help="64 MB uploads per server per round")
    ap.add_argument("--proxy-requests", type=int, default=2000, help="1 MB answers per server per round")
    ap.add_argument("--jobs", default="upload,bigproxy")
    ap.add_argument("--quick", action="store_true", help="three small rounds: proves the harness, judges nothing")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks-bodies.md"),
                    help="the report (with --quick, pass one outside docs/: a quick run judges nothing)")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.upload_requests, a.proxy_requests = 3, 10, 300
    for tool in ("h2load", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bodies: {tool} not found; `./dev bench` installs it")
    a.hyper = a.hyper or build_hyper(a.hyper_target_dir)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "64m.bin"), "wb") as f:
            f.write(os.urandom(1 << 20) * 64)
        with open(os.path.join(tmp, "big.bin"), "wb") as f:
            f.write(os.urandom(PROXY_BYTES))
        up_port = free_port()
        up_conf = nginx(tmp, up_port, f"location / {{ root {tmp}; }}")
        upstream = Announced(pinned(load_cpus(), ["nginx", "-c", up_conf, "-e", "stderr"]), up_port)
        try:
            results = {job: run_job(job, a, tmp, up_port) for job in a.jobs.split(",")}
        finally:
            stop(upstream)
    lines = report(a, results)
    print("\n".join(lines))
    open(a.out, "w").write("\n".join(lines) + "\n")


def report(a, results):
    titles = {"upload": "Upload: 64 MB bodies over 10 connections, taken as a stream (CPU per GB received)",
              "bigproxy": "Large-body proxy: a 1 MB upstream body to 100 clients (proxy CPU per GB forwarded)"}
    out = ["# Large bodies, side by side", "",
           f"`benchmarks/bodies.py`, {time.strftime('%Y-%m-%d %H:%M')}: {a.rounds} rounds; each server gets the "
           f"same fixed work per round ({a.upload_requests} uploads of 64 MB, {a.proxy_requests} answers of 1 MB), "
           "pinned to CPU 0, the load and the upstream on the other core. Medians over rounds, IQR in brackets.", ""]
    for job, res in results.items():
        out += [f"## {titles[job]}", "", "| server | CPU s per GB | GB/s | peak RSS MiB |", "|---|---|---|---|"]
        per = UPLOAD_BYTES * a.upload_requests if job == "upload" else PROXY_BYTES * a.proxy_requests
        for k, r in res.items():
            lo, hi = iqr(r["cpu"])
            gbps = statistics.median(per / GB / s for s in r["secs"])
            out.append(f"| {k} | {statistics.median(r['cpu']):.3f} ({lo:.3f}–{hi:.3f}) | {gbps:.2f} | "
                       f"{r['rss'] / 1024:.1f} |")
        out.append("")
    out += ["## Targets", "", "| job | measure | server / against | limit | median ratio (IQR) | met |",
            "|---|---|---|---|---|---|"]
    for job, server, against, measure, limit in TARGETS:
        if job not in results:
            continue
        r = results[job]
        if measure == "cpu":
            ratios = [x / y for x, y in zip(r[server]["cpu"], r[against]["cpu"])]
            med, (lo, hi) = statistics.median(ratios), iqr(ratios)
            cell = f"{med:.3f} ({lo:.3f}–{hi:.3f})"
        else:
            med = r[server]["rss"] / r[against]["rss"]
            cell = f"{med:.3f}"
        out.append(f"| {job} | {'CPU per GB' if measure == 'cpu' else 'peak RSS'} | {server} / {against} | "
                   f"≤ {limit} | {cell} | {'yes' if med <= limit else 'no'} |")
    return out


if __name__ == "__main__":
    main()
