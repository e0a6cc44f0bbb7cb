#!/usr/bin/env python3
"""./dev bench: userd side by side with Hyper, nginx and two floors, on this machine, in one run.

Each server under test runs pinned to CPU 0; wrk (and, for the proxy scenario, the shared upstream: nginx
serving the dataset) run on the other CPUs. Servers are alternated A B C ... for --rounds rounds of --duration
seconds after a warm-up; the figures are medians. Per server: req/s, p50/p99 latency, CPU microseconds per
request (utime+stime of the server's process tree over the timed window / requests), peak RSS (VmHWM),
non-2xx and socket errors. Every body is checked against the dataset before load. A malloc counter
(LD_PRELOAD) checks that userd allocates nothing over 10,000 keep-alive requests after warm-up.

Writes docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import Server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SERVER_CPU = "0"


def load_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    rest = [c for c in cpus if str(c) != SERVER_CPU]
    return ",".join(map(str, rest or cpus))


def tree(pid):
    """pid and all its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / TICK


def peak_rss_kb(pid):
    total = 0
    for p in tree(pid):
        try:
            total += int(re.search(r"VmHWM:\s+(\d+)", open(f"/proc/{p}/status").read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def latency_us(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\b", text, re.M)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else float("nan")


def wrk(url, seconds, connections=100):
    out = subprocess.run(["taskset", "-c", load_cpus(), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", url], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": latency_us(out, 50), "p99": latency_us(out, 99),
            "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)}


def nginx_conf(tmp, port, mode, dataset, upstream_port=None):
    body = dataset.decode().replace("\\", "\\\\").replace("'", "\\'")
    if mode == "static":
        loc = ("location = /v1/user { default_type application/json; add_header Engine nginx; "
               f"add_header Location /v1/user; return 200 '{body}'; }}\n"
               f"location = /v1/avatar {{ default_type application/json; return 200 '{body}'; }}")
        up = ""
    else:
        up = f"upstream m2 {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
        loc = ("location = /v1/user { proxy_pass http://m2/v1/avatar; proxy_http_version 1.1; "
               "proxy_set_header Connection \"\"; add_header Engine nginx; add_header Location /v1/user; }")
    conf = f"""daemon off; master_process off; worker_processes 1; pid {tmp}/nginx-{port}.pid;
error_log stderr crit;
events {{ worker_connections 8192; use epoll; }}
http {{
  access_log off; server_tokens off; keepalive_requests 10000000; keepalive_timeout 300;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp};
  scgi_temp_path {tmp};
  {up}
  server {{ listen 127.0.0.1:{port}; {loc} }}
}}
"""
    path = os.path.join(tmp, f"nginx-{port}.conf")
    open(path, "w").write(conf)
    return path


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Announced(Server):
    """A server that does not print a `listening on` line: wait for its port instead."""

    def __init__(self, argv, port, env=None):
        import socket
        full = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=full,
                                     preexec_fn=lambda: __import__("ctypes").CDLL(None).prctl(1, signal.SIGTERM))
        self.port, self.stderr_lines = port, []
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{argv} did not listen on {port}")


def check_body(port, dataset):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/v1/user")
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or body != dataset:
        raise RuntimeError(f"port {port}: status {r.status}, body of {len(body)} bytes differs from the dataset")


def count_allocations(a, dataset, extra=()):
    """Allocations userd makes over 10,000 keep-alive requests after a warm-up on the same connection."""
    tmp = tempfile.mkdtemp()
    counter = os.path.join(tmp, "allocs")
    env = {"LD_PRELOAD": a.alloc_counter, "ALLOC_COUNTER_FILE": counter}
    results = {}
    for backend in ("io_uring", "epoll"):
        srv = Server([a.userd, "--listen", "127.0.0.1:0", "--threads", "1", "--backend", backend, *extra], env=env)
        try:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)

            def run(n):
                for _ in range(n):
                    c.request("GET", "/v1/user")
                    r = c.getresponse()
                    if r.read() != dataset:
                        raise RuntimeError("body differs")

            def snapshot():
                os.kill(srv.pid, signal.SIGUSR2)
                for _ in range(100):
                    time.sleep(0.02)
                    if os.path.exists(counter):
                        v = int(open(counter).read())
                        os.unlink(counter)
                        return v
                raise RuntimeError("no allocation count")
            run(2000)
            before = snapshot()
            run(10000)
            results[backend] = snapshot() - before
            c.close()
        finally:
            srv.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def main():
    ap = argparse.ArgumentParser()
    for k in ("userd", "floor-uring", "floor-epoll", "hyper", "alloc-counter", "dataset"):
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one round of 2 s: proves the harness, judges nothing")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--from-json", help="rewrite the report and chart from a earlier run's benchmarks.json")
    a = ap.parse_args()
    if a.from_json:
        saved = json.load(open(a.from_json))
        a.rounds, a.duration, a.quick = (saved["method"][k] for k in ("rounds", "duration_s", "quick"))
        report(a, saved["results"], saved["allocations"], saved["machine"])
        return
    if a.quick:
        a.rounds, a.duration, a.warmup = 1, 2, 1
    dataset = open(a.dataset, "rb").read()
    tmp = tempfile.mkdtemp(prefix="userd-bench-")
    pin = ["taskset", "-c", SERVER_CPU]
    started = []

    def start(argv, port=None, env=None):
        srv = Announced(argv, port, env) if port else Server(argv, env=env)
        started.append(srv)
        check_body(srv.port, dataset)
        return srv

    results = {"static": {}, "proxy": {}}
    try:
        # The shared upstream for the proxy scenario: nginx serving the dataset, off the server CPU.
        up_port = free_port()
        start(["taskset", "-c", load_cpus(), "nginx", "-c", nginx_conf(tmp, up_port, "static", dataset)],
              port=up_port)
        data_file = os.path.join(tmp, "avatars.json")
        open(data_file, "wb").write(dataset)
        upstream_url = f"http://127.0.0.1:{up_port}/v1/avatar"
        servers = {"static": {}, "proxy": {}}
        for backend in ("io_uring", "epoll"):
            servers["static"][f"userd {backend}"] = start(
                pin + [a.userd, "--listen", "127.0.0.1:0", "--threads", "1", "--backend", backend])
            servers["proxy"][f"userd {backend}"] = start(
                pin + [a.userd, "--listen", "127.0.0.1:0", "--threads", "1", "--backend", backend,
                           "--upstream", upstream_url])
        servers["static"]["hyper"] = start(pin + [a.hyper, "--listen", "127.0.0.1:0", "--static", data_file])
        servers["proxy"]["hyper"] = start(pin + [a.hyper, "--listen", "127.0.0.1:0", "--upstream", upstream_url])
        p = free_port()
        servers["static"]["nginx"] = start(pin + ["nginx", "-c", nginx_conf(tmp, p, "static", dataset)], port=p)
        p = free_port()
        servers["proxy"]["nginx"] = start(pin + ["nginx", "-c", nginx_conf(tmp, p, "proxy", dataset, up_port)],
                                          port=p)
        servers["static"]["io_uring floor"] = start(pin + [a.floor_uring, "0"])
        servers["static"]["epoll floor"] = start(pin + [a.floor_epoll, "0"])

        for scenario, group in servers.items():
            for name, srv in group.items():
                wrk(f"http://127.0.0.1:{srv.port}/v1/user", a.warmup)
                results[scenario][name] = {"rounds": []}
        for rnd in range(a.rounds):
            for scenario, group in servers.items():
                for name, srv in group.items():
                    c0 = cpu_seconds(srv.pid)
                    w = wrk(f"http://127.0.0.1:{srv.port}/v1/user", a.duration)
                    w["cpu_us"] = (cpu_seconds(srv.pid) - c0) * 1e6 / max(w["requests"], 1)
                    results[scenario][name]["rounds"].append(w)
                    print(f"round {rnd + 1} {scenario:6} {name:15} {w['rps']:9.0f} req/s  {w['cpu_us']:6.2f} CPU us/req"
                          f"  p99 {w['p99']:7.0f} us  errors {w['errors']}", flush=True)
        for scenario, group in servers.items():
            for name, srv in group.items():
                r = results[scenario][name]
                for k in ("rps", "p50", "p99", "cpu_us"):
                    r[k] = statistics.median(x[k] for x in r["rounds"])
                r["errors"] = sum(x["errors"] for x in r["rounds"])
                r["rss_kb"] = peak_rss_kb(srv.pid)
    finally:
        for srv in started:
            try:
                srv.stop(timeout=5)
            except Exception:
                srv.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    allocs = {"static": count_allocations(a, dataset)}
    up = Server(["taskset", "-c", load_cpus(), a.userd, "--listen", "127.0.0.1:0", "--threads", "1"])
    try:
        allocs["proxy"] = count_allocations(a, dataset, ["--upstream", f"http://127.0.0.1:{up.port}/v1/avatar"])
    finally:
        up.stop()
    report(a, results, allocs)


def targets(res, allocs):
    s, p = res["static"], res["proxy"]
    cpu = lambda g, n: g[n]["cpu_us"]  # noqa: E731
    rows = [
        ("static: userd io_uring <= 1.15 x io_uring floor", cpu(s, "userd io_uring"), 1.15 * cpu(s, "io_uring floor")),
        ("static: userd io_uring <= 0.7 x nginx", cpu(s, "userd io_uring"), 0.7 * cpu(s, "nginx")),
        ("proxy: userd io_uring <= 0.45 x Hyper", cpu(p, "userd io_uring"), 0.45 * cpu(p, "hyper")),
        ("proxy: userd io_uring <= 0.65 x nginx", cpu(p, "userd io_uring"), 0.65 * cpu(p, "nginx")),
        ("static: userd epoll <= nginx", cpu(s, "userd epoll"), cpu(s, "nginx")),
        ("proxy: userd epoll <= nginx", cpu(p, "userd epoll"), cpu(p, "nginx")),
        ("static: io_uring <= 0.95 x epoll", cpu(s, "userd io_uring"), 0.95 * cpu(s, "userd epoll")),
        ("proxy: io_uring <= 0.95 x epoll", cpu(p, "userd io_uring"), 0.95 * cpu(p, "userd epoll")),
    ]
    out = [(name, f"{have:.2f} µs", f"{limit:.2f} µs", have <= limit) for name, have, limit in rows]
    for sc, g in res.items():
        for b in ("io_uring", "epoll"):
            u = g[f"userd {b}"]
            out.append((f"{sc}: userd {b} peak RSS <= Hyper's", f"{u['rss_kb'] / 1024:.1f} MiB",
                        f"{g['hyper']['rss_kb'] / 1024:.1f} MiB", u["rss_kb"] <= g["hyper"]["rss_kb"]))
            out.append((f"{sc}: userd {b} p99 <= Hyper's", f"{u['p99']:.0f} µs", f"{g['hyper']['p99']:.0f} µs",
                        u["p99"] <= g["hyper"]["p99"]))
    errors = sum(r["errors"] for g in res.values() for r in g.values())
    out.append(("zero errors (non-2xx, socket errors), all servers", str(errors), "0", errors == 0))
    for sc, per in allocs.items():
        for b, n in per.items():
            out.append((f"{sc}: userd {b} allocations over 10,000 keep-alive requests", str(n), "0", n == 0))
    return out


def report(a, res, allocs, machine=None):
    os.makedirs(a.out, exist_ok=True)
    machine = machine or {"cpus": os.cpu_count(), "model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                                      if l.startswith("model name")), "?"),
               "kernel": platform.release(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    tg = targets(res, allocs)
    json.dump({"machine": machine, "method": {"rounds": a.rounds, "duration_s": a.duration, "quick": a.quick},
               "results": res, "allocations": allocs,
               "targets": [{"target": t[0], "measured": t[1], "limit": t[2], "met": t[3]} for t in tg]},
              open(os.path.join(a.out, "benchmarks.json"), "w"), indent=1)
    chart(a, res)
    lines = ["# Benchmarks", "",
             "Regenerated by `./dev bench` (`benchmarks/bench.py`); do not edit by hand. Raw figures: "
             "[benchmarks.json](benchmarks.json).", "",
             f"Machine: {machine['cpus']} CPUs ({machine['model']}), Linux {machine['kernel']}, {machine['date']}."
             + (" **Quick mode: one 2 s round, figures not meaningful.**" if a.quick else ""), "",
             "## Method", "",
             f"Each server runs pinned to CPU {SERVER_CPU} with one thread or worker; `wrk -t1 -c100` and (proxy) the "
             "shared upstream, nginx serving the dataset from memory, run on the other CPU. Servers alternate A B C "
             f"... for {a.rounds} round(s) of {a.duration} s after a warm-up; figures are medians. CPU µs/request is "
             "utime+stime of the server's process tree over each timed window divided by the requests wrk completed. "
             "Peak RSS is VmHWM at the end. Every body was checked against the dataset before load.", "",
             "Servers: userd (`--threads 1`, each backend); Hyper 0.14 + tokio (`benchmarks/hyper-ref`, Debian's "
             "crates); nginx 1.22 (one worker, `return 200` from memory / `proxy_pass` over a keep-alive upstream "
             "pool); two floors (`benchmarks/floor_*.cpp`: the canned response for each request seen, no parsing).", ""]
    for sc, title in (("static", "Static: `/v1/user` from memory"), ("proxy", "Proxy: `/v1/user` → upstream `/v1/avatar`")):
        g = res[sc]
        h = g["hyper"]
        lines += [f"## {title}", "", "| server | req/s | p50 | p99 | CPU µs/req | CPU vs Hyper | peak RSS | errors |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in g.items():
            lines.append(f"| {name} | {r['rps']:,.0f} | {r['p50']:.0f} µs | {r['p99']:.0f} µs | {r['cpu_us']:.2f} | "
                         f"{r['cpu_us'] / h['cpu_us']:.2f}× | {r['rss_kb'] / 1024:.1f} MiB | {r['errors']} |")
        lines.append("")
    lines += ["## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    lines += [f"| {t[0]} | {t[1]} | {t[2]} | {'yes' if t[3] else '**no**'} |" for t in tg]
    lines += ["", "![CPU per request and throughput](benchmarks.png)", "",
              "## Context", "",
              "The seed's Hyper microservice1 reported about 80,000 req/s with `wrk -t12 -c100 -d15s` on a "
              "12-thread laptop, using 16–32 MB (`../shared/docs/seed-hyper-results.txt`): another machine and all "
              "its cores, so only the ratios above compare.", ""]
    notes = os.path.join(HERE, "NOTES.md")  # what the numbers do not say: changes measured, targets explained
    if os.path.exists(notes):
        lines += [open(notes).read()]
    open(os.path.join(a.out, "benchmarks.md"), "w").write("\n".join(lines))
    met = sum(t[3] for t in tg)
    print(f"bench: {met} of {len(tg)} targets met; wrote {a.out}/benchmarks.md, .json, .png")


def chart(a, res):
    if not shutil.which("gnuplot"):
        print("bench: gnuplot not found, no chart", file=sys.stderr)
        return
    tmp = tempfile.mkdtemp()
    dat = os.path.join(tmp, "d.dat")
    with open(dat, "w") as f:
        for sc, g in res.items():
            for name, r in g.items():
                f.write(f"\"{sc}: {name}\" {r['cpu_us']:.3f} {r['rps'] / 1000:.1f}\n")
    script = f"""set terminal pngcairo size 1100,520 font ",10"
set output "{os.path.join(a.out, 'benchmarks.png')}"
set multiplot layout 1,2
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.8
set xtics rotate by -40 left
set grid ytics
set key off
set title "CPU µs per request (lower is better)"
plot "{dat}" using 2:xtic(1) lc rgb "#3070b0"
set title "thousand requests per second (one server CPU)"
plot "{dat}" using 3:xtic(1) lc rgb "#50a050"
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
