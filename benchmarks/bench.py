#!/usr/bin/env python3
"""./dev bench: userd side by side with Hyper, nginx and two floors, on this machine, in one run.

Jobs: static (wrk, 100 keep-alive connections), pipelined (16 requests per write), proxy (to a shared nginx
upstream), the seed's pair (microservice1 and microservice2 of the same kind, both on the server core), and
fixed rate (h2load offering the same 10,000 req/s to every server, static and proxy).

Each server under test runs pinned to CPU 0; the load generator (and the shared upstream) run on the other
CPUs. Every round runs each job's servers back to back, for --rounds rounds of --duration seconds after a
warm-up; a target is judged on the median of its per-round ratios (this machine drifts within seconds, so
only servers measured moments apart compare), printed with the interquartile range. Per server: req/s, latency,
CPU microseconds per request (the server processes' run time from /proc/PID/task/*/schedstat over the
timed window / requests), peak RSS
(VmHWM), non-2xx and socket errors. Every body is checked against the dataset before load. A malloc counter
(LD_PRELOAD) checks that userd allocates nothing over 10,000 keep-alive requests after warm-up.

Writes docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png (or --out DIR).
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
from harness import Server, allocation_count  # noqa: E402

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
    """CPU time of pid's process tree: each thread's schedstat run time, in ns, where /proc/PID/stat counts in
    clock ticks (10 ms), too coarse for a 2 s round at a fixed 10,000 req/s."""
    total = 0
    for p in tree(pid):
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                total += int(open(f"/proc/{p}/task/{t}/schedstat").read().split()[0])
        except OSError:
            pass
    return total / 1e9


def status_kb(pid, field):
    """A /proc/PID/status memory field (VmHWM, VmRSS), summed over pid's process tree."""
    total = 0
    for p in tree(pid):
        try:
            total += int(re.search(rf"{field}:\s+(\d+)", open(f"/proc/{p}/status").read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def peak_rss_kb(pid):
    return status_kb(pid, "VmHWM")


def latency_us(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\b", text, re.M)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else float("nan")


def wrk(url, seconds, connections=100, script=None, headers=(), env=None):
    out = subprocess.run(["taskset", "-c", load_cpus(), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", *(["-s", script] if script else []),
                          *[a for h in headers for a in ("-H", h)], url],
                         capture_output=True, text=True, check=True, env=env).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": latency_us(out, 50), "p99": latency_us(out, 99),
            "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)}


def h2load_us(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


def h2load(url, seconds, rate=None, connections=100, streams=None, env=None):
    """With rate: the same offered load for every server, `rate` requests per second spread over `connections`
    of HTTP/1.1. With streams: HTTP/2 (h2c by prior knowledge, or ALPN h2 over https), `streams` requests in
    flight on each connection, as fast as the server answers."""
    mode = ["-m", str(streams)] if streams else ["--h1", f"--rps={max(1, rate // connections)}"]
    # Bounded: h2load waits at the end for every request in flight, and a server that stalls one would hold the
    # run (seen once in 360 runs, against nginx over TLS at -m100).
    out = subprocess.run(["taskset", "-c", load_cpus(), "h2load", *mode, "-t1", f"-c{connections}",
                          f"-D{seconds}", url], capture_output=True, text=True, check=True, env=env,
                         timeout=seconds + 60).stdout
    req = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    done = int(req.group(2))
    if streams and done and not re.search(r"Application protocol: h2c?\b", out):
        raise RuntimeError(f"{url}: h2load did not speak HTTP/2:\n{out}")
    return {"requests": done, "rps": done / seconds, "mean": h2load_us(lat.group(3)), "max": h2load_us(lat.group(2)),
            "errors": int(req.group(4)) + int(req.group(5)) + int(req.group(6)) + max(0, done - int(codes.group(1)))}


def nginx_conf(tmp, port, mode, dataset, upstream_port=None):
    body = dataset.decode().replace("\\", "\\\\").replace("'", "\\'")
    listen = f"127.0.0.1:{port}"
    if mode in ("h2c", "h2"):  # nginx 1.22: `http2` on the listen line; without ssl it is h2c by prior knowledge
        listen += " http2"
        mode = "tls" if mode == "h2" else "static"
    if mode == "tls":  # the static answer over HTTPS; upstream_port carries the certificate folder
        listen += (f" ssl; ssl_certificate {upstream_port}/cert.pem; ssl_certificate_key {upstream_port}/key.pem; "
                   "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on")
        mode = "static"
    if mode == "static":
        loc = ("location = /v1/user { default_type application/json; add_header Engine nginx; "
               f"add_header Location /v1/user; return 200 '{body}'; }}\n"
               f"location = /v1/avatar {{ default_type application/json; return 200 '{body}'; }}")
        up = ""
    else:
        up = f"upstream m2 {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
        loc = ("location = /v1/user { proxy_pass http://m2/v1/avatar; proxy_http_version 1.1; "
               "proxy_set_header Connection \"\"; add_header Engine nginx; add_header Location /v1/user; }")
    return nginx_file(tmp, port, listen, loc, up)


def nginx_file(tmp, port, listen, server_block, upstream="", http_extra=""):
    """An nginx config as its users run it for speed: one worker, no access log, epoll, long keep-alive."""
    conf = f"""daemon off; master_process off; worker_processes 1; pid {tmp}/nginx-{port}.pid;
error_log stderr crit;
events {{ worker_connections 8192; use epoll; }}
http {{
  access_log off; server_tokens off; keepalive_requests 10000000; keepalive_timeout 300; {http_extra}
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp};
  scgi_temp_path {tmp};
  {upstream}
  server {{ listen {listen}; {server_block} }}
}}
"""
    path = os.path.join(tmp, f"nginx-{port}.conf")
    open(path, "w").write(conf)
    return path


def h2o_conf(tmp, port, data_file, tls_dir=None):
    """h2o as its users run it for speed: one thread, no access log, the dataset through `file.file` (h2o keeps
    the file open and sends it from the page cache)."""
    ssl = (f"\n  ssl:\n    certificate-file: {tls_dir}/cert.pem\n    key-file: {tls_dir}/key.pem\n"
           "    minimum-version: TLSv1.2\n    ocsp-update-interval: 0" if tls_dir else "")
    # run as root, h2o switches to `user` (nobody by default), who could not read the bench's private folder
    conf = f"""user: root
num-threads: 1
error-log: /dev/null
pid-file: {tmp}/h2o-{port}.pid
listen:
  host: 127.0.0.1
  port: {port}{ssl}
hosts:
  default:
    paths:
      /v1/user:
        file.file: {data_file}
"""
    path = os.path.join(tmp, f"h2o-{port}.conf")
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


def check_body(port, dataset, scheme="http"):
    if scheme == "https":
        import ssl
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ssl._create_unverified_context())
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/v1/user")
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or body != dataset:
        raise RuntimeError(f"port {port}: status {r.status}, body of {len(body)} bytes differs from the dataset")


def check_body_h2(port, dataset, scheme):
    """The body and the protocol over HTTP/2: curl by prior knowledge (h2c) or ALPN (h2)."""
    host = "localhost" if scheme == "https" else "127.0.0.1"
    out = subprocess.run(["curl", "-sk", "--max-time", "5",
                          "--http2" if scheme == "https" else "--http2-prior-knowledge",
                          "-w", "\n%{http_code} %{http_version}", f"{scheme}://{host}:{port}/v1/user"],
                         capture_output=True, check=True).stdout
    body, _, tail = out.rpartition(b"\n")
    if tail != b"200 2" or body != dataset:
        raise RuntimeError(f"port {port}: HTTP/2 answer {tail!r}, body of {len(body)} bytes")


def idle_h2_kib(port, pid, n=500):
    """What an idle h2c connection costs the server in memory: n connections each past the preface and the
    SETTINGS exchange, then nothing; the growth of the server's resident memory over n, in KiB."""
    import socket
    before = status_kb(pid, "VmRSS")
    socks = []
    try:
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            socks.append(c)
        for c in socks:  # the server's SETTINGS (and, from some, a WINDOW_UPDATE): then ours acknowledged
            got = b""
            while len(got) < 9 or got[3] != 4:
                got += c.recv(4096)
            c.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        time.sleep(1)
        return (status_kb(pid, "VmRSS") - before) / n
    finally:
        for c in socks:
            c.close()


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
                return allocation_count(srv.pid, counter)[0]  # userd's own; OpenSSL's is second
            run(2000)
            before = snapshot()
            run(10000)
            results[backend] = snapshot() - before
            c.close()
        finally:
            srv.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return results


PIPELINE = os.path.join(HERE, "pipeline.lua")


def build_hyper(target_dir):
    """The Hyper reference, built offline from Debian's crates (cargo reads hyper-ref/.cargo/config.toml only
    from inside that folder)."""
    if not shutil.which("cargo"):
        sys.exit("bench: cargo not found; `./dev bench` installs it")
    subprocess.run(["cargo", "build", "--release", "--offline", "-q"], cwd=os.path.join(HERE, "hyper-ref"),
                   env=dict(os.environ, CARGO_TARGET_DIR=target_dir), check=True)
    return os.path.join(target_dir, "release", "hyper-ref")

# job: (title, how it loads the server)
JOBS = {
    "static": ("Static: `/v1/user` from memory, 100 keep-alive connections", "wrk"),
    "pipelined": ("Pipelined: 16 requests per write (`benchmarks/pipeline.lua`), 100 connections", "pipelined"),
    "proxy": ("Proxy: `/v1/user` → upstream `/v1/avatar` (nginx on the load core), 100 connections", "wrk"),
    "pair": ("The seed's pair: microservice1 → microservice2 of the same kind, both on the server core; CPU of "
             "both", "wrk"),
    "fixed-static": ("Fixed rate, static: the same 10,000 req/s offered to every server (h2load, 100 connections)",
                     "fixed"),
    "fixed-proxy": ("Fixed rate, proxy: the same 10,000 req/s offered to every server (h2load, 100 connections)",
                    "fixed"),
    "tls": ("TLS keep-alive: static over TLS 1.3 (TLS_AES_128_GCM_SHA256, the same certificate), 100 connections",
            "tls"),
    "tls-handshake": ("TLS handshakes: a new TLS 1.3 connection per request (`Connection: close`), 100 connections; "
                      "CPU µs per request is CPU per handshake", "handshake"),
    "compressed": ("Compressed static: `/v1/user` with `Accept-Encoding: gzip, br`, 100 keep-alive connections; nginx "
                   "with `gzip_static` and `brotli_static` on files pre-compressed at the best levels; \"plain\" is "
                   "userd without the header", "wrk"),
    "h2c": ("HTTP/2 h2c: `/v1/user` by prior knowledge, `h2load -t1 -c100 -m10`", "h2:10"),
    "h2c-m100": ("HTTP/2 h2c, 100 streams in flight per connection: `h2load -t1 -c100 -m100`", "h2:100"),
    "h2": ("HTTP/2 over TLS 1.3 (ALPN h2, TLS_AES_128_GCM_SHA256): `h2load -t1 -c100 -m10`", "h2:10"),
    "h2-m100": ("HTTP/2 over TLS 1.3, 100 streams in flight per connection: `h2load -t1 -c100 -m100`", "h2:100"),
}

PANEL = {"static": "static, 100 keep-alive connections", "pipelined": "pipelined, 16 requests per write",
         "proxy": "proxy to an nginx upstream", "pair": "the seed's pair (CPU of both services)",
         "fixed-static": "static at a fixed 10,000 req/s", "fixed-proxy": "proxy at a fixed 10,000 req/s",
         "tls": "static over TLS 1.3, keep-alive", "tls-handshake": "a TLS 1.3 handshake per request",
         "compressed": "static, Accept-Encoding: gzip, br",
         "h2c": "h2c, 100 connections x 10 streams", "h2c-m100": "h2c, 100 connections x 100 streams",
         "h2": "h2 over TLS 1.3, 100 x 10 streams", "h2-m100": "h2 over TLS 1.3, 100 x 100 streams"}

# (job, server, against, measure, limit): judged on the median over rounds of server's measure / against's.
TARGETS = [
    ("static", "userd io_uring", "io_uring floor", "cpu_us", 1.05),
    ("pipelined", "userd io_uring", "userd epoll", "cpu_us", 1.0),
    ("pipelined", "userd io_uring", "hyper", "cpu_us", 0.3),
    ("pipelined", "userd io_uring", "nginx", "cpu_us", 0.2),
    ("proxy", "userd io_uring", "hyper", "cpu_us", 0.5),
    ("proxy", "userd io_uring", "nginx", "cpu_us", 0.7),
    ("pair", "userd", "hyper", "cpu_us", 0.35),
    ("pair", "userd", "nginx", "cpu_us", 0.5),
    ("fixed-static", "userd io_uring", "hyper", "cpu_us", 0.6),
    ("fixed-static", "userd io_uring", "hyper", "mean", 1.0),
    ("fixed-static", "userd io_uring", "nginx", "mean", 1.0),
    ("fixed-proxy", "userd io_uring", "hyper", "cpu_us", 0.6),
    ("fixed-proxy", "userd io_uring", "hyper", "mean", 1.0),
    ("fixed-proxy", "userd io_uring", "nginx", "mean", 1.0),
    ("tls", "userd io_uring", "nginx", "cpu_us", 1.0),
    ("tls", "userd epoll", "nginx", "cpu_us", 1.0),
    ("compressed", "userd io_uring", "userd io_uring plain", "cpu_us", 1.0),
    ("compressed", "userd io_uring", "nginx", "cpu_us", 0.8),
    ("tls-handshake", "userd io_uring", "nginx", "cpu_us", 1.0),  # handshakes per CPU-second >= nginx's
    ("tls-handshake", "userd epoll", "nginx", "cpu_us", 1.0),
    *[(j, "userd io_uring", peer, "cpu_us", limit) for j in ("h2c", "h2c-m100")
      for peer, limit in (("h2o", 0.8), ("hyper", 0.3), ("nginx", 0.25))],
    *[(j, "userd io_uring", "h2o", "cpu_us", 0.9) for j in ("h2", "h2-m100")],
]
# Goals beyond the targets: below what a naive server on the same kernel interface costs.
GOALS = [
    ("static", "userd io_uring", "io_uring floor", "cpu_us", 0.95),
    ("pipelined", "userd io_uring", "epoll floor", "cpu_us", 1.0),
]
MEASURE = {"cpu_us": "CPU µs/req", "mean": "mean latency"}


class Entry:
    """One server of one job: the processes whose CPU counts and the port the load goes to."""

    def __init__(self, procs, scheme="http", headers=()):
        self.procs = procs
        self.port = procs[-1].port
        self.scheme = scheme
        self.headers = list(headers)  # request headers of its load (wrk jobs)

    def cpu(self):
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def rss_kb(self):
        return sum(peak_rss_kb(p.pid) for p in self.procs)


# wrk's OpenSSL offers TLS 1.3 with TLS_AES_128_GCM_SHA256 only: every server then runs the same suite.
TLS_CLIENT_CONF = """openssl_conf = conf
[conf]
ssl_conf = ssl
[ssl]
system_default = client
[client]
MinProtocol = TLSv1.3
Ciphersuites = TLS_AES_128_GCM_SHA256
"""


def load(kind, e, seconds, rate, tls_env=None):
    # A host name over TLS: wrk sends the URL's host as SNI, and rustls refuses an address there (RFC 6066).
    url = f"{e.scheme}://{'localhost' if e.scheme == 'https' else '127.0.0.1'}:{e.port}/v1/user"
    if kind.startswith("h2:"):
        return h2load(url, seconds, streams=int(kind[3:]), env=tls_env)
    if kind == "fixed":
        return h2load(url, seconds, rate)
    if kind in ("tls", "handshake"):
        return wrk(url, seconds, headers=["Connection: close"] if kind == "handshake" else (), env=tls_env)
    return wrk(url, seconds, script=PIPELINE if kind == "pipelined" else None, headers=e.headers)


ACCEPT = "Accept-Encoding: gzip, br"


def wire_bytes(port, headers):
    """Bytes of one whole response to GET /v1/user with these request headers: what each request costs the wire."""
    import socket
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(("GET /v1/user HTTP/1.1\r\nHost: localhost\r\n" + "".join(h + "\r\n" for h in headers) +
               "Connection: close\r\n\r\n").encode())
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.close()
    return n


def check_compressed(port, dataset):
    """curl decodes what the server chose for `gzip, br` back to the dataset, and says which coding it was."""
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "--compressed", "-H", ACCEPT, "-D", "-",
                          f"http://127.0.0.1:{port}/v1/user"], capture_output=True, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    coding = re.search(rb"(?im)^content-encoding:\s*(\S+)", head)
    if body != dataset or not coding:
        raise RuntimeError(f"port {port}: compressed answer {head[:200]!r} does not decode to the dataset")
    return coding.group(1).decode()


def nginx_compressed_conf(tmp, port, dataset):
    """nginx as its users serve pre-compressed JSON for speed: gzip_static and (Debian's module) brotli_static
    on files compressed at the best levels, open_file_cache, sendfile."""
    import gzip as gz
    root = os.path.join(tmp, f"htdocs-c-{port}")
    os.makedirs(os.path.join(root, "v1"))
    open(os.path.join(root, "v1", "user"), "wb").write(dataset)
    open(os.path.join(root, "v1", "user.gz"), "wb").write(gz.compress(dataset, 9, mtime=0))
    br = shutil.which("brotli")
    module = "/usr/lib/nginx/modules/ngx_http_brotli_static_module.so"
    if br and os.path.exists(module):
        subprocess.run([br, "-q", "11", "-w", "22", "-f", "-o", os.path.join(root, "v1", "user.br"),
                        os.path.join(root, "v1", "user")], check=True)
    brotli_on = br and os.path.exists(module)
    loc = (f"location = /v1/user {{ root {root}; default_type application/json; gzip_static on; "
           f"{'brotli_static on; ' if brotli_on else ''}add_header Engine nginx; add_header Location /v1/user; }}")
    path = nginx_file(tmp, port, f"127.0.0.1:{port}", loc,
                      http_extra="sendfile on; tcp_nopush on; open_file_cache max=100 inactive=60s; "
                                 "open_file_cache_valid 60s;")
    if brotli_on:
        conf = open(path).read()
        open(path, "w").write(f"load_module {module};\n" + conf)
    return path


def main():
    ap = argparse.ArgumentParser()
    for k in ("userd", "floor-uring", "floor-epoll", "alloc-counter", "dataset"):
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--hyper", help="the hyper-ref binary; without it, built from benchmarks/hyper-ref")
    ap.add_argument("--hyper-target-dir", default=os.path.join(ROOT, "build", "hyper-ref"),
                    help="cargo's target folder when building hyper-ref")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--duration", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rate", type=int, default=10000, help="offered req/s in the fixed-rate jobs")
    ap.add_argument("--jobs", default=",".join(JOBS), help="comma-separated subset of " + ",".join(JOBS))
    ap.add_argument("--quick", action="store_true", help="three rounds of 1 s: proves the harness, judges nothing")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--print-tables", action="store_true", help="print the report's tables when done")
    ap.add_argument("--from-json", help="rewrite the report and chart from a earlier run's benchmarks.json")
    a = ap.parse_args()
    if a.from_json:
        saved = json.load(open(a.from_json))
        for k in ("rounds", "duration", "quick", "rate"):
            setattr(a, k, saved["method"][k])
        report(a, saved["results"], saved["allocations"], saved["machine"])
        return
    if a.quick:
        a.rounds, a.duration, a.warmup = 3, 1, 1
    missing = [t for t in ("wrk", "h2load", "nginx", "h2o", "nghttpd", "taskset", "gnuplot", "curl") if not shutil.which(t)]
    if missing:
        sys.exit(f"bench: {', '.join(missing)} not found; `./dev bench` installs them")
    if not a.hyper:
        a.hyper = build_hyper(a.hyper_target_dir)
    jobs = [j for j in a.jobs.split(",") if j]
    if any(j not in JOBS for j in jobs):
        sys.exit(f"bench: --jobs takes {','.join(JOBS)}")
    dataset = open(a.dataset, "rb").read()
    tmp = tempfile.mkdtemp(prefix="userd-bench-")
    pin = ["taskset", "-c", SERVER_CPU]
    started = []

    def start(argv, port=None):
        srv = Announced(argv, port) if port else Server(argv)
        started.append(srv)
        return srv

    def nginx(mode, upstream_port=None, cpus=SERVER_CPU):
        p = free_port()
        return start(["taskset", "-c", cpus, "nginx", "-c", nginx_conf(tmp, p, mode, dataset, upstream_port)], port=p)

    def userd(backend, *extra):
        return start(pin + [a.userd, "--listen", "127.0.0.1:0", "--threads", "1", "--backend", backend, *extra])

    # One certificate for every TLS server, made here (no key is committed); ECDSA P-256, as a modern default.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem", "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    open(f"{tmp}/client.cnf", "w").write(TLS_CLIENT_CONF)
    tls_env = dict(os.environ, OPENSSL_CONF=f"{tmp}/client.cnf")
    tls_files = ["--tls-cert", f"{tmp}/cert.pem", "--tls-key", f"{tmp}/key.pem"]

    results = {j: {} for j in jobs}
    try:
        # The shared upstream for the proxy jobs: nginx serving the dataset, off the server CPU.
        up_port = nginx("static", cpus=load_cpus()).port
        data_file = os.path.join(tmp, "avatars.json")
        open(data_file, "wb").write(dataset)
        upstream = f"http://127.0.0.1:{up_port}/v1/avatar"
        hyper_static = lambda: start(pin + [a.hyper, "--listen", "127.0.0.1:0", "--static", data_file])  # noqa: E731
        hyper_proxy = lambda url: start(pin + [a.hyper, "--listen", "127.0.0.1:0", "--upstream", url])  # noqa: E731

        def static_set(floors):
            s = {f"userd {b}": Entry([userd(b)]) for b in ("io_uring", "epoll")}
            s["hyper"], s["nginx"] = Entry([hyper_static()]), Entry([nginx("static")])
            if floors:
                s["io_uring floor"] = Entry([start(pin + [a.floor_uring, "0"])])
                s["epoll floor"] = Entry([start(pin + [a.floor_epoll, "0"])])
            return s

        def proxy_set():
            s = {f"userd {b}": Entry([userd(b, "--upstream", upstream)]) for b in ("io_uring", "epoll")}
            s["hyper"], s["nginx"] = Entry([hyper_proxy(upstream)]), Entry([nginx("proxy", up_port)])
            return s

        def pair_set():
            m2 = userd("io_uring")
            s = {"userd": Entry([m2, userd("io_uring", "--upstream", f"http://127.0.0.1:{m2.port}/v1/avatar")])}
            m2 = hyper_static()
            s["hyper"] = Entry([m2, hyper_proxy(f"http://127.0.0.1:{m2.port}/v1/user")])
            m2 = nginx("static")
            s["nginx"] = Entry([m2, nginx("proxy", m2.port)])
            return s

        def tls_set():
            s = {f"userd {b}": Entry([start(pin + [a.userd, "--tls-listen", "127.0.0.1:0", *tls_files, "--threads", "1",
                                                   "--backend", b])], "https") for b in ("io_uring", "epoll")}
            s["hyper"] = Entry([start(pin + [a.hyper, "--listen", "127.0.0.1:0", "--static", data_file, *tls_files])],
                               "https")
            s["nginx"] = Entry([nginx("tls", tmp)], "https")
            return s

        htdocs = os.path.join(tmp, "htdocs")
        os.makedirs(os.path.join(htdocs, "v1"))
        shutil.copy(data_file, os.path.join(htdocs, "v1", "user"))

        def h2_set(tls):
            """userd (HTTP/2 is on by default), h2o, nginx, nghttpd and Hyper (`http2_only`)."""
            sch = "https" if tls else "http"
            s = {f"userd {b}": Entry([start(pin + [a.userd, "--tls-listen" if tls else "--listen", "127.0.0.1:0",
                                                   *(tls_files if tls else ()), "--threads", "1", "--backend", b])],
                                     sch) for b in ("io_uring", "epoll")}
            p = free_port()
            s["h2o"] = Entry([start(pin + ["h2o", "-c", h2o_conf(tmp, p, data_file, tmp if tls else None)], port=p)],
                             sch)
            s["nginx"] = Entry([nginx("h2" if tls else "h2c", tmp)], sch)
            p = free_port()
            s["nghttpd"] = Entry([start(pin + ["nghttpd", "-a", "127.0.0.1", "-d", htdocs, str(p),
                                               *((f"{tmp}/key.pem", f"{tmp}/cert.pem") if tls else ("--no-tls",))],
                                        port=p)], sch)
            s["hyper"] = Entry([start(pin + [a.hyper, "--listen", "127.0.0.1:0", "--static", data_file, "--http2",
                                             *(tls_files if tls else ())])], sch)
            return s

        def compressed_set():
            s = {f"userd {b}": Entry([userd(b)], headers=[ACCEPT]) for b in ("io_uring", "epoll")}
            s["userd io_uring plain"] = Entry([userd("io_uring")])
            p = free_port()
            s["nginx"] = Entry([start(["taskset", "-c", SERVER_CPU, "nginx", "-c", nginx_compressed_conf(tmp, p, dataset)],
                                      port=p)], headers=[ACCEPT])
            return s

        make = {"compressed": compressed_set, "h2c": lambda: h2_set(False), "h2c-m100": lambda: h2_set(False), "h2": lambda: h2_set(True),
                "h2-m100": lambda: h2_set(True), "tls": tls_set, "tls-handshake": tls_set, "static": lambda: static_set(True), "pipelined": lambda: static_set(True), "proxy": proxy_set,
                "pair": pair_set, "fixed-static": lambda: static_set(False), "fixed-proxy": proxy_set}
        servers = {j: make[j]() for j in jobs}
        idle = {}  # measured on servers no load has touched yet: after load, freed memory stays resident
        if "h2c" in servers:
            idle = {name: idle_h2_kib(e.port, e.procs[-1].pid) for name, e in servers["h2c"].items()}
        for j, group in servers.items():
            for name, e in group.items():
                if JOBS[j][1].startswith("h2:"):
                    check_body_h2(e.port, dataset, e.scheme)
                else:
                    check_body(e.port, dataset, e.scheme)
                results[j][name] = {"rounds": []}
                if j == "compressed":
                    if e.headers:
                        results[j][name]["coding"] = check_compressed(e.port, dataset)
                    results[j][name]["wire_bytes"] = wire_bytes(e.port, e.headers)
                load(JOBS[j][1], e, a.warmup, a.rate, tls_env)
        for rnd in range(a.rounds):
            for j, group in servers.items():
                for name, e in group.items():
                    c0 = e.cpu()
                    w = load(JOBS[j][1], e, a.duration, a.rate, tls_env)
                    w["cpu_us"] = (e.cpu() - c0) * 1e6 / max(w["requests"], 1)
                    results[j][name]["rounds"].append(w)
                    lat = (f"mean {w['mean']:7.0f} us" if "mean" in w else f"p99 {w['p99']:7.0f} us")
                    print(f"round {rnd + 1:2} {j:12} {name:15} {w['rps']:9.0f} req/s  {w['cpu_us']:6.2f} CPU us/req"
                          f"  {lat}  errors {w['errors']}", flush=True)
        for j, group in servers.items():
            for name, e in group.items():
                r = results[j][name]
                for k in r["rounds"][0]:
                    if k not in ("errors", "coding", "wire_bytes"):
                        r[k] = statistics.median(x[k] for x in r["rounds"])
                r["errors"] = sum(x["errors"] for x in r["rounds"])
                r["rss_kb"] = e.rss_kb()
                if j == "h2c":
                    r["idle_h2_kib"] = idle[name]
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


def ratios(res, job, server, against, measure):
    """Per-round ratios of server's measure to against's: the two ran moments apart in each round."""
    return [x[measure] / y[measure] for x, y in zip(res[job][server]["rounds"], res[job][against]["rounds"])
            if y[measure] > 0]


def spread(v):
    """Median and interquartile range."""
    if len(v) < 2:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[1], q[0], q[2]


def judge(res, rows):
    out = []
    for job, server, against, measure, limit in rows:
        if job not in res or server not in res[job] or against not in res[job]:
            continue
        med, q1, q3 = spread(ratios(res, job, server, against, measure))
        out.append({"target": f"{job}: {server} {MEASURE[measure]} ≤ {limit:g} × {against}",
                    "median": round(med, 3), "q1": round(q1, 3), "q3": round(q3, 3), "limit": limit,
                    "met": med <= limit})
    return out


def targets(res, allocs):
    out = judge(res, TARGETS)
    for job in ("static", "proxy"):
        for b in ("io_uring", "epoll"):
            if job not in res:
                continue
            u, h = res[job][f"userd {b}"], res[job]["hyper"]
            out.append({"target": f"{job}: userd {b} peak RSS ≤ Hyper's", "measured": f"{u['rss_kb'] / 1024:.1f} MiB",
                        "limit": f"{h['rss_kb'] / 1024:.1f} MiB", "met": u["rss_kb"] <= h["rss_kb"]})
            med, q1, q3 = spread(ratios(res, job, f"userd {b}", "hyper", "p99"))
            out.append({"target": f"{job}: userd {b} p99 ≤ Hyper's", "median": round(med, 3), "q1": round(q1, 3),
                        "q3": round(q3, 3), "limit": 1.0, "met": med <= 1.0})
    if "h2c" in res and "idle_h2_kib" in res["h2c"].get("nginx", {}):
        for b in ("io_uring", "epoll"):
            u, n = res["h2c"][f"userd {b}"]["idle_h2_kib"], res["h2c"]["nginx"]["idle_h2_kib"]
            out.append({"target": f"h2c: userd {b} memory per idle HTTP/2 connection ≤ nginx's",
                        "measured": f"{u:.1f} KiB", "limit": f"{n:.1f} KiB", "met": u <= n})
    # userd's; the others' are in the tables (in the handshake job wrk counts read errors on the connections
    # Hyper closes after `Connection: close`, while every response arrives).
    errors = sum(r["errors"] for g in res.values() for n, r in g.items() if n.startswith("userd"))
    out.append({"target": "zero errors (non-2xx, socket errors, failed requests), userd in every job",
                "measured": str(errors), "limit": "0", "met": errors == 0})
    for sc, per in allocs.items():
        for b, n in per.items():
            out.append({"target": f"{sc}: userd {b} allocations over 10,000 keep-alive requests", "measured": str(n),
                        "limit": "0", "met": n == 0})
    return out


def cell(t):
    if "median" in t:
        return f"{t['median']:.3f}", f"{t['q1']:.3f}–{t['q3']:.3f}", f"{t['limit']:g}"
    return t["measured"], "", t["limit"]


def report(a, res, allocs, machine=None):
    os.makedirs(a.out, exist_ok=True)
    machine = machine or {"cpus": os.cpu_count(), "model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                                      if l.startswith("model name")), "?"),
               "kernel": platform.release(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    tg, goals = targets(res, allocs), judge(res, GOALS)
    json.dump({"machine": machine, "method": {"rounds": a.rounds, "duration": a.duration, "quick": a.quick,
                                              "rate": a.rate},
               "results": res, "allocations": allocs, "targets": tg, "goals": goals},
              open(os.path.join(a.out, "benchmarks.json"), "w"), indent=1)
    chart(a, res)
    lines = ["# Benchmarks", "",
             "Regenerated by `./dev bench` (`benchmarks/bench.py`); do not edit by hand. Raw figures: "
             "[benchmarks.json](benchmarks.json).", "",
             f"Machine: {machine['cpus']} CPUs ({machine['model']}), Linux {machine['kernel']}, {machine['date']}."
             + (" **Quick mode: three 1 s rounds, figures not meaningful.**" if a.quick else ""), "",
             "## Method", "",
             f"Each server runs pinned to CPU {SERVER_CPU} with one thread or worker; the load generator (`wrk -t1`, "
             "or h2load for the fixed-rate jobs) and, for the proxy jobs, the shared upstream (nginx serving the "
             "dataset from memory) run on the other CPU. Each round runs every job's servers back to back, "
             f"{a.duration} s each, for {a.rounds} rounds after a warm-up. A server's figures below are medians "
             "over rounds; ratios (targets, \"vs Hyper\") are medians of per-round ratios, because this machine "
             "drifts within seconds and only servers measured moments apart compare; the interquartile range of "
             "those ratios is printed beside them. CPU µs/request is the run time of the server's threads "
             "(`/proc/PID/task/*/schedstat`, in ns: `/proc/PID/stat`'s 10 ms ticks are too coarse for 2 s at a fixed "
             "rate) over each timed window divided by the requests completed. Peak RSS is VmHWM at the end. Every body was "
             "checked against the dataset before load.", "",
             "Servers: userd (`--threads 1`, each backend); Hyper 0.14 + tokio (`benchmarks/hyper-ref`, Debian's "
             "crates); nginx 1.22 (one worker, `return 200` from memory / `proxy_pass` over a keep-alive upstream "
             "pool); two floors (`benchmarks/floor_*.cpp`: canned responses for the requests seen in each read, "
             "all in one send, no parsing). In the HTTP/2 jobs (h2load, `-m` streams per connection): h2o 2.2.5 "
             "(one thread, `file.file`, no access log), nginx (`listen ... http2`), nghttpd 1.52 (the dataset as a "
             "file; the same libnghttp2 as userd) and Hyper with `http2_only`.", ""]
    for job, g in res.items():
        fixed = JOBS[job][1] == "fixed" or JOBS[job][1].startswith("h2:")  # h2load: mean and max
        lines += [f"## {JOBS[job][0]}", "",
                  "| server | req/s | " + ("mean | max" if fixed else "p50 | p99") +
                  " | CPU µs/req | CPU vs Hyper (IQR) | peak RSS | errors |", "|---|---|---|---|---|---|---|---|"]
        for name, r in g.items():
            vs = "—"
            if "hyper" in g:
                med, q1, q3 = spread(ratios(res, job, name, "hyper", "cpu_us"))
                vs = f"{med:.2f}× ({q1:.2f}–{q3:.2f})"
            lat = (f"{r['mean']:.0f} µs | {r['max']:.0f} µs" if fixed else
                   # wrk records no latency for pipelined requests
                   "— | —" if job == "pipelined" else f"{r['p50']:.0f} µs | {r['p99']:.0f} µs")
            lines.append(f"| {name} | {r['rps']:,.0f} | {lat} | {r['cpu_us']:.2f} | {vs} | "
                         f"{r['rss_kb'] / 1024:.1f} MiB | {r['errors']} |")
        if any("wire_bytes" in r for r in g.values()):
            lines += ["", "Bytes on the wire per response (head and body, as each server sent it): " +
                      ", ".join(f"{n} {r['wire_bytes']:,}" + (f" ({r['coding']})" if r.get("coding") else "")
                                for n, r in g.items() if "wire_bytes" in r) + "."]
        if any("idle_h2_kib" in r for r in g.values()):
            lines += ["", "Memory per idle h2c connection (500 connections past the SETTINGS exchange, growth of "
                      "resident memory / 500): " + ", ".join(f"{n} {r['idle_h2_kib']:.1f} KiB" for n, r in g.items()
                                                              if "idle_h2_kib" in r) + "."]
        lines.append("")
    lines += ["## Targets", "", "Ratios are medians of per-round ratios; IQR is their interquartile range.", "",
              "| target | measured | IQR | limit | met |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | " + " | ".join(cell(t)) + f" | {'yes' if t['met'] else '**no**'} |" for t in tg]
    lines += ["", "Goals beyond the targets (issue 12): below the naive floors.", "",
              "| goal | measured | IQR | limit | met |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | " + " | ".join(cell(t)) + f" | {'yes' if t['met'] else '**no**'} |" for t in goals]
    lines += ["", "![CPU per request, one panel per job](benchmarks.png)", "",
              "## Context", "",
              "The seed's Hyper microservice1 reported about 80,000 req/s with `wrk -t12 -c100 -d15s` on a "
              "12-thread laptop, using 16–32 MB (`../shared/docs/seed-hyper-results.txt`): another machine and all "
              "its cores, so only the ratios above compare.", ""]
    notes = os.path.join(HERE, "NOTES.md")  # what the numbers do not say: changes measured, targets explained
    if os.path.exists(notes):
        lines += [open(notes).read()]
    open(os.path.join(a.out, "benchmarks.md"), "w").write("\n".join(lines))
    if getattr(a, "print_tables", False):
        print("\n".join(lines[lines.index("## Method"):lines.index("## Context")]))
    else:
        print("\n".join(f"{t['target']}: " + " ".join(x for x in cell(t) if x) + (" met" if t["met"] else " MISSED")
                        for t in tg + goals))
    met = sum(t["met"] for t in tg)
    print(f"bench: {met} of {len(tg)} targets met; wrote {a.out}/benchmarks.md, .json, .png")


def chart(a, res):
    """One panel per job, axes from zero, each bar labelled with its value and its ratio to Hyper."""
    if not shutil.which("gnuplot"):
        print("bench: gnuplot not found, no chart", file=sys.stderr)
        return
    tmp = tempfile.mkdtemp()
    panels = []
    for i, (job, g) in enumerate(res.items()):
        dat = os.path.join(tmp, f"{i}.dat")
        with open(dat, "w") as f:
            for name, r in g.items():
                vs = f"{spread(ratios(res, job, name, 'hyper', 'cpu_us'))[0]:.2f}× Hyper" if "hyper" in g else ""
                f.write(f"\"{name}\" {r['cpu_us']:.3f} \"{r['cpu_us']:.2f}\" \"{vs}\"\n")
        top = max(r["cpu_us"] for r in g.values()) * 1.3
        panels.append(f"""set title "{PANEL[job]}"
set yrange [0:{top:.2f}]
set xrange [-0.6:{len(g) - 0.4}]
plot "{dat}" using 0:2:xtic(1) with boxes lc rgb "#3070b0", \\
     "" using 0:2:3 with labels offset 0,1.6, "" using 0:2:4 with labels offset 0,0.7 font ",8"
""")
    rows = (len(panels) + 2) // 3
    script = f"""set terminal pngcairo size 1500,{450 * rows} font ",10" noenhanced
set output "{os.path.join(a.out, 'benchmarks.png')}"
set multiplot layout {rows},{min(3, len(panels))} title "CPU µs per request on one server core (lower is better); each bar: value, and ratio to Hyper (median of rounds)"
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by -25 left
set grid ytics
set key off
set ylabel "CPU µs / request"
{"".join(panels)}unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
