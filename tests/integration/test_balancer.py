#!/usr/bin/env python3
"""userd behind load balancers that speak the PROXY protocol: haproxy 2.6 (send-proxy, send-proxy-v2, TLS passed
through), nginx's stream module (proxy_protocol on) and curl --haproxy-protocol, then malformed, truncated,
oversized, slow and unauthorised headers from a raw socket. The client is told apart from the balancer by its
source address: clients connect from 127.0.0.2, the balancers from 127.0.0.3, so the access log says which one
userd believed. Run once per backend (--backend io_uring|epoll)."""
import argparse
import http.client
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Server, free_port, run_tests, said  # noqa: E402

ARGS = None
WORK = None
CLIENT = "127.0.0.2"    # where clients connect from
BALANCER = "127.0.0.3"  # where the balancers connect to userd from
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def userd(*flags, tls=False):
    log = os.path.join(WORK, f"access-{time.monotonic_ns()}.log")
    argv = [ARGS.userd, "--backend", ARGS.backend, "--threads", "2", "--listen", "127.0.0.1:0",
            "--proxy-protocol", "--access-log", log, *flags]
    if tls:
        argv += ["--tls-listen", "127.0.0.1:0", "--tls-cert", f"{WORK}/cert.pem", "--tls-key", f"{WORK}/key.pem"]
    srv = Server(argv)
    srv.port = int(said(srv, r"userd: listening on \S+:(\d+)"))
    srv.tls_port = int(said(srv, r"HTTPS listening on \S+:(\d+)")) if tls else None
    srv.log = log
    return srv


def log_lines(srv, count, timeout=5.0):
    """The access log's lines but /metrics (the tests' own), once there are count of them. Each loop writes its
    own lines on its 100 ms tick, so lines of requests on different loops may come in any order."""
    deadline = time.monotonic() + timeout
    while True:
        lines = open(srv.log).read().splitlines() if os.path.exists(srv.log) else []
        lines = [line for line in lines if line.split()[3] != "/metrics"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def peers(lines):
    return [line.split()[1] for line in lines]


def logged(srv, expected, timeout=5.0):
    """True once every peer in expected has a line in the access log."""
    deadline = time.monotonic() + timeout
    while True:
        have = set(peers(log_lines(srv, 0, timeout=0)))
        if set(expected) <= have:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def v1(src=CLIENT, sport=40000, dst="127.0.0.1", dport=80):
    return f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()


def v2(src=CLIENT, sport=40000, command=0x21, family=0x11, tlvs=b""):
    block = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, 443) + tlvs
    return V2_SIG + bytes([command, family]) + struct.pack("!H", len(block)) + block


def raw(port, source=CLIENT, timeout=5.0):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def exchange(port, data, source=CLIENT, timeout=5.0, me=None):
    """Sends data, half-closes, and returns everything the server sent before it closed (and in me, when given,
    appends the socket's own address)."""
    with raw(port, source, timeout) as s:
        if me is not None:
            me.append("%s:%d" % s.getsockname())
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # closed already: a refusal at the first bytes
            pass
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                return out
            if not b:
                return out
            out += b


def metric(srv, name):
    text = exchange(srv.port, v1(src=BALANCER) + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    source=BALANCER).decode()
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    if not m:
        raise AssertionError(f"no {name} in {text[:300]!r}")
    return int(m.group(1))


class Haproxy:
    """haproxy in the foreground, TCP mode, one frontend on a free port passing to userd with send-proxy(-v2)."""

    def __init__(self, target_port, send):
        self.port = free_port()
        cfg = os.path.join(WORK, f"haproxy-{self.port}.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
  maxconn 256
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend in
  bind 127.0.0.1:{self.port}
  default_backend userd
backend userd
  server u 127.0.0.1:{target_port} {send} source {BALANCER}
""")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_port(self.port, self.proc)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class NginxStream:
    """nginx's stream module, as its users configure it in front of a backend: proxy_protocol on."""

    def __init__(self, target_port):
        self.port = free_port()
        d = os.path.join(WORK, f"nginx-{self.port}")
        os.makedirs(d)
        cfg = os.path.join(d, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
stream {{
  server {{
    listen 127.0.0.1:{self.port};
    proxy_bind {BALANCER};
    proxy_pass 127.0.0.1:{target_port};
    proxy_protocol on;
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", cfg, "-p", d], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_port(self.port, self.proc)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited: {proc.stderr.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def get_via(port, path="/v1/user", tls=False):
    """One request from CLIENT through a balancer's port, with Python's http.client."""
    if tls:
        ctx = ssl.create_default_context(cafile=f"{WORK}/cert.pem")
        c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10, source_address=(CLIENT, 0))
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(CLIENT, 0))
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    local = c.sock.getsockname()
    c.close()
    return r.status, body, f"{local[0]}:{local[1]}"


class Balancers(unittest.TestCase):
    def test_haproxy_v1_and_v2_name_the_client(self):
        with userd() as srv:
            for i, send in enumerate(("send-proxy", "send-proxy-v2")):
                h = Haproxy(srv.port, send)
                try:
                    status, body, me = get_via(h.port)
                finally:
                    h.close()
                self.assertEqual(status, 200, send)
                self.assertIn(b'"name"', body)
                self.assertIn(me, peers(log_lines(srv, i + 1)), send)

    def test_tls_behind_haproxy_v2(self):
        with userd(tls=True) as srv:
            os.environ.pop("SSLKEYLOGFILE", None)
            h = Haproxy(srv.tls_port, "send-proxy-v2")
            try:
                status, _, me = get_via(h.port, tls=True)
            finally:
                h.close()
            self.assertEqual(status, 200)
            self.assertEqual(peers(log_lines(srv, 1))[0], me)

    def test_nginx_stream_proxy_protocol(self):
        with userd() as srv:
            n = NginxStream(srv.port)
            try:
                status, _, me = get_via(n.port)
                # HTTP/2 by prior knowledge through the same balancer: the header comes before the preface.
                out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--interface", CLIENT, "-o", "/dev/null",
                                      "-w", "%{http_version} %{http_code}", f"http://127.0.0.1:{n.port}/v1/user"],
                                     capture_output=True, text=True, timeout=20)
            finally:
                n.close()
            self.assertEqual(status, 200)
            self.assertEqual(out.stdout, "2 200", out.stderr)
            lines = log_lines(srv, 2)
            self.assertIn(me, peers(lines))
            h2 = [line for line in lines if "HTTP/2" in line]
            self.assertEqual(len(h2), 1, lines)
            self.assertTrue(h2[0].split()[1].startswith(CLIENT + ":"), lines)

    def test_curl_haproxy_protocol(self):
        with userd() as srv:
            out = subprocess.run(["curl", "-sS", "--haproxy-protocol", "--interface", CLIENT, "-o", "/dev/null",
                                  "-w", "%{http_code} %{local_ip}:%{local_port}", f"http://127.0.0.1:{srv.port}/v1/user"],
                                 capture_output=True, text=True, timeout=20)
            code, me = out.stdout.split()
            self.assertEqual(code, "200", out.stderr)
            self.assertEqual(peers(log_lines(srv, 1))[0], me)


class Headers(unittest.TestCase):
    """Raw headers: what a balancer sends is served, anything else is closed unanswered and counted."""

    @classmethod
    def setUpClass(cls):
        cls.srv = userd("--header-timeout", "1")

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def served(self, header, request=b"GET /v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
        """Served; returns the socket's own address."""
        me = []
        out = exchange(self.srv.port, header + request, me=me)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out[:200])
        return me[0]

    def refused(self, data, half_close=True):
        before = metric(self.srv, "userd_proxy_header_failures_total")
        if half_close:
            out = exchange(self.srv.port, data)
        else:
            with raw(self.srv.port) as s:
                s.sendall(data)
                out = s.recv(65536)
        self.assertEqual(out, b"", data[:60])
        self.assertEqual(metric(self.srv, "userd_proxy_header_failures_total"), before + 1, data[:60])

    def test_v1_v2_and_the_named_source_in_the_log(self):
        mine = [self.served(v1(src="198.51.100.20", sport=1234)),
                self.served(v2(src="203.0.113.7", sport=4321, tlvs=b"\x01\x00\x02h2" + b"\x05\x00\x04uniq")),
                self.served(b"PROXY TCP6 2001:db8::5 2001:db8::1 999 80\r\n")]
        self.assertTrue(logged(self.srv, ["198.51.100.20:1234", "203.0.113.7:4321", "[2001:db8::5]:999"]))
        self.assertFalse(set(mine) & set(peers(log_lines(self.srv, 0, timeout=0))))

    def test_local_and_unknown_keep_the_socket_peer(self):
        mine = [self.served(V2_SIG + b"\x20\x00\x00\x00"), self.served(b"PROXY UNKNOWN\r\n")]
        self.assertTrue(logged(self.srv, mine))

    def test_one_byte_at_a_time(self):
        with raw(self.srv.port) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for b in v2(src="192.0.2.99", sport=7):
                s.send(bytes([b]))
                time.sleep(0.002)
            s.sendall(b"GET /v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 200 "))
        self.assertTrue(logged(self.srv, ["192.0.2.99:7"]))

    def test_malformed(self):
        for data in (b"GET /v1/user HTTP/1.1\r\nHost: x\r\n\r\n",  # no header at all
                     b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",            # LF alone
                     b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
                     b"PROXY " + b"x" * 200,                         # no end within 107 bytes
                     v2(command=0x22),                               # unknown command
                     v2(family=0x12),                                # UDP
                     v2(tlvs=b"\x01\x00\x09h2")):                    # a TLV past the end
            self.refused(data)

    def test_oversized_and_truncated(self):
        self.refused(V2_SIG + b"\x21\x11\xff\xff" + b"\x00" * 100, half_close=False)  # 64 KiB announced
        self.refused(v1()[:20])   # closed mid-header
        self.refused(v2()[:14])

    def test_a_slow_header_is_closed_at_the_header_deadline(self):
        before = metric(self.srv, "userd_proxy_header_failures_total")
        with raw(self.srv.port, timeout=6) as s:
            s.sendall(b"PROXY TCP4 1.2.3.4")
            t0 = time.monotonic()
            self.assertEqual(s.recv(100), b"")
            waited = time.monotonic() - t0
        self.assertLess(waited, 3.0)
        self.assertGreater(waited, 0.5)
        self.assertEqual(metric(self.srv, "userd_proxy_header_failures_total"), before + 1)

    def test_the_peer_is_not_a_metrics_label(self):
        self.served(v1(src="198.51.100.77"))
        text = exchange(self.srv.port, v1(src=BALANCER) + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        source=BALANCER)
        self.assertTrue(text.startswith(b"HTTP/1.1 200 "), text[:100])
        self.assertNotIn(b"198.51.100.77", text)


class Sources(unittest.TestCase):
    def test_only_proxy_from_may_connect(self):
        with userd("--proxy-from", f"{BALANCER}/32,::1") as srv:
            refused = metric(srv, "userd_proxy_refused_total")
            out = exchange(srv.port, v1() + b"GET /v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", source=CLIENT)
            self.assertEqual(out, b"")
            self.assertEqual(metric(srv, "userd_proxy_refused_total"), refused + 1)
            h = Haproxy(srv.port, "send-proxy-v2")
            try:
                status, _, me = get_via(h.port)
            finally:
                h.close()
            self.assertEqual(status, 200)
            self.assertIn(me, peers(log_lines(srv, 1)))

    def test_bad_flags_exit_2(self):
        for flags in (["--proxy-from", "10.0.0.1/8", "--proxy-protocol"], ["--proxy-from", "nowhere", "--proxy-protocol"],
                      ["--proxy-from", "10.0.0.0/8"]):
            r = subprocess.run([ARGS.userd, "--listen", "127.0.0.1:0", *flags], capture_output=True, text=True,
                               timeout=10)
            self.assertEqual(r.returncode, 2, flags)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)


def main():
    global ARGS, WORK
    p = argparse.ArgumentParser()
    p.add_argument("--userd", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("names", nargs="*")
    ARGS = p.parse_args()
    for tool in ("haproxy", "nginx", "curl", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (./dev installs it)")
    WORK = tempfile.mkdtemp(prefix="userd-balancer-")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", f"{WORK}/key.pem", "-out", f"{WORK}/cert.pem", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                       check=True, capture_output=True)
        run_tests(sys.modules[__name__], f"balancer-{ARGS.backend}", ARGS.names)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
