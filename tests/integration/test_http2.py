#!/usr/bin/python3
"""HTTP/2 end to end: real clients (curl, nghttp, h2load) over h2c and h2 on TLS, and raw frames for what a
client library refuses to send (floods, bad frames, a preface split across packets). Every attack is followed
by a check that another client is still served.

Needs Debian's /usr/bin/python3 (python3-hpack) and nghttp2-client; run by meson once per backend.
"""
import argparse
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hpack  # noqa: E402

from harness import Server, allocation_count, connect, read_response, run_tests  # noqa: E402

ARGS = None
DATASET = b""
PKI = None
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
PROTOCOL_ERROR, SETTINGS_TIMEOUT, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x4, 0x7, 0x8, 0xB


def frame(kind, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def request_block(path, method="GET", extra=()):
    return hpack.Encoder().encode([(":method", method), (":scheme", "http"), (":path", path),
                                   (":authority", "t"), *extra])


class Raw:
    """A hand-driven HTTP/2 client connection: frames out as given, frames in as read."""

    def __init__(self, port, preface=True, timeout=5.0, auto_window=True):
        self.auto_window = auto_window  # answer every DATA with WINDOW_UPDATEs: large answers keep flowing
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.dec = hpack.Decoder()
        self.headers, self.bodies, self.ended, self.resets = {}, {}, set(), {}
        if preface:
            self.s.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, *frames):
        self.s.sendall(b"".join(frames))

    def get(self, sid, path, method="GET", extra=()):
        self.send(frame(HEADERS, END_STREAM | END_HEADERS, sid, request_block(path, method, extra)))

    def next(self, timeout=5.0):
        """The next frame (kind, flags, sid, payload), or None at EOF or after timeout. Every header block is
        decoded as it comes (HPACK's table is the connection's), and what streams receive is kept by stream."""
        self.s.settimeout(timeout)
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            try:
                chunk = self.s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return None
            if not chunk:
                return None
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        kind, flags, sid = self.buf[3], self.buf[4], struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        if kind == SETTINGS and not flags & ACK:
            self.send(frame(SETTINGS, ACK, 0))
        elif kind == HEADERS:
            self.headers.setdefault(sid, {}).update(
                {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                 for k, v in self.dec.decode(payload)})
        elif kind == DATA:
            self.bodies[sid] = self.bodies.get(sid, b"") + payload
            if payload and self.auto_window:
                inc = struct.pack(">I", len(payload))
                self.send(frame(WINDOW_UPDATE, 0, 0, inc), frame(WINDOW_UPDATE, 0, sid, inc))
        elif kind == RST_STREAM:
            self.resets[sid] = struct.unpack(">I", payload)[0]
        if kind in (HEADERS, DATA) and flags & END_STREAM:
            self.ended.add(sid)
        return kind, flags, sid, payload

    def until(self, pred, timeout=5.0):
        """Reads until pred(frame) holds: that frame; None at EOF or timeout."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            f = self.next(max(left, 0.01)) if left > 0 else None
            if f is None or pred(f):
                return f

    def response(self, sid, timeout=5.0):
        """(headers dict, body) of stream sid; raises on a reset or the end of the connection."""
        end = time.monotonic() + timeout
        while sid not in self.ended:
            if sid in self.resets:
                raise ConnectionError(f"stream {sid} reset: {self.resets[sid]}")
            if self.next(max(end - time.monotonic(), 0.01)) is None:
                raise EOFError(f"no response on stream {sid}")
        return self.headers.get(sid, {}), self.bodies.get(sid, b"")

    def closed_by_peer(self):
        try:
            self.s.settimeout(0.5)
            return self.s.recv(1) == b""
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self):
        self.s.close()


def run(*argv, timeout=30):
    return subprocess.run(argv, capture_output=True, timeout=timeout)


def curl(*args):
    p = run("curl", "-s", "-o", "-", "-w", "\n%{http_version} %{http_code}", *args)
    body, _, tail = p.stdout.rpartition(b"\n")
    return tail.decode(), body


def userd(*flags, tls=False):
    argv = [ARGS.userd, "--listen", "127.0.0.1:0", "--threads", "1", "--backend", ARGS.backend, *flags]
    if tls:
        argv += ["--tls-listen", "127.0.0.1:0", "--tls-cert", f"{PKI}/c.pem", "--tls-key", f"{PKI}/k.pem"]
    return Server(argv)


def tls_port(srv, timeout=5.0):
    """The HTTPS port, from the line userd prints after its plain one."""
    end = time.monotonic() + timeout
    buf = ""
    while True:
        for line in srv.stderr_lines + buf.splitlines():
            if "HTTPS listening on" in line:
                return int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no HTTPS listening line in {srv.stderr_lines}")
        r, _, _ = select.select([srv.proc.stderr], [], [], left)
        if r:
            chunk = os.read(srv.proc.stderr.fileno(), 4096).decode(errors="replace")
            if not chunk:
                raise AssertionError(f"userd ended: {srv.stderr_lines}")
            buf += chunk
            srv.stderr_lines += [l for l in chunk.splitlines() if l]


def served(test, port):
    """Another client gets the dataset over HTTP/2 and over HTTP/1.1."""
    test.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/v1/user"), ("2 200", DATASET))
    test.assertEqual(curl("--http1.1", f"http://127.0.0.1:{port}/v1/user"), ("1.1 200", DATASET))


def refused_then_served(test, c, port, status):
    """Stream 1 of c was answered status; its connection (stream 3) and another client are still served."""
    headers, _ = c.response(1)
    test.assertEqual(headers[":status"], status)
    c.get(3, "/v1/user")
    headers, body = c.response(3)
    test.assertEqual((headers[":status"], body), ("200", DATASET))
    c.close()
    served(test, port)


def served_stream(test, port):
    test.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/ticks?count=1"),
                     ("2 200", b'{"tick":0}\n'))


def sanitized(program):
    return "asan" in run("ldd", program).stdout.decode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Clients(unittest.TestCase):
    def test_curl_nghttp_and_h2load_get_the_dataset_over_h2c(self):
        with userd() as srv:
            url = f"http://127.0.0.1:{srv.port}/v1/user"
            self.assertEqual(curl("--http2-prior-knowledge", url), ("2 200", DATASET))
            p = run("nghttp", url)
            self.assertEqual((p.returncode, p.stdout), (0, DATASET))
            p = run("h2load", "-n", "20000", "-c", "10", "-m", "10", url, timeout=60)
            out = p.stdout.decode()
            self.assertIn("Application protocol: h2c", out)
            self.assertIn("20000 succeeded, 0 failed, 0 errored", out)
            self.assertIn("status codes: 20000 2xx", out)
            self.assertEqual(srv.stop(), 0)

    def test_tls_offers_h2_then_http11_by_alpn(self):
        with userd(tls=True) as srv:
            url = f"https://127.0.0.1:{tls_port(srv)}/v1/user"
            self.assertEqual(curl("-k", "--http2", url), ("2 200", DATASET))
            self.assertEqual(curl("-k", "--http1.1", url), ("1.1 200", DATASET))
            p = run("h2load", "-n", "5000", "-c", "5", "-m", "10", url, timeout=60)
            out = p.stdout.decode()
            self.assertIn("Application protocol: h2", out)
            self.assertIn("5000 succeeded, 0 failed, 0 errored", out)
            p = run("nghttp", url)
            self.assertEqual((p.returncode, p.stdout), (0, DATASET))
            self.assertEqual(srv.stop(), 0)

    def test_h2_over_tls_meets_rfc9113_9_2(self):
        """TLS 1.2 or later, ephemeral key exchange with an AEAD suite, no renegotiation: a client offering only
        a CBC suite under TLS 1.2, or only TLS 1.1, gets no handshake; one with an AEAD suite gets h2."""
        with userd(tls=True) as srv:
            addr = f"127.0.0.1:{tls_port(srv)}"

            def s_client(*flags):
                p = subprocess.run(["openssl", "s_client", "-connect", addr, "-alpn", "h2", *flags],
                                   input=b"", capture_output=True, timeout=10)
                return p.stdout.decode(errors="replace")
            self.assertIn("ALPN protocol: h2", s_client("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"))
            self.assertIn("ALPN protocol: h2", s_client("-tls1_3"))
            for flags in (("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"), ("-tls1_1",)):
                out = s_client(*flags)
                self.assertNotIn("ALPN protocol: h2", out, flags)
                self.assertRegex(out, r"Cipher is \(NONE\)|no peer certificate available", flags)
            served(self, srv.port)
            self.assertEqual(srv.stop(), 0)

    def test_http2_off_is_http11_only(self):
        with userd("--http2", "off", tls=True) as srv:
            self.assertEqual(curl("-k", "--http2", f"https://127.0.0.1:{tls_port(srv)}/v1/user"), ("1.1 200", DATASET))
            version, _ = curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/v1/user")
            self.assertNotEqual(version, "2 200")
            self.assertEqual(curl(f"http://127.0.0.1:{srv.port}/v1/user"), ("1.1 200", DATASET))
            self.assertEqual(srv.stop(), 0)

    def test_an_upgrade_to_h2c_is_ignored_and_answered_as_http11(self):
        with userd() as srv:
            s = connect(srv.port)
            s.sendall(b"GET /v1/user HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
            status, headers, body = read_response(s)
            self.assertEqual((status, body), (200, DATASET))
            self.assertNotIn("upgrade", headers)
            s.close()
            self.assertEqual(srv.stop(), 0)

    def test_head_errors_and_the_protocol_a_handler_sees(self):
        with userd() as srv:
            url = f"http://127.0.0.1:{srv.port}"
            p = run("curl", "-s", "--http2-prior-knowledge", "-I", f"{url}/v1/user")
            head = p.stdout.decode().lower()
            self.assertIn("http/2 200", head)
            self.assertIn("content-length: 3696", head)
            self.assertEqual(curl("--http2-prior-knowledge", f"{url}/nope"), ("2 404", b'{"error":"not found"}'))
            p = run("curl", "-s", "--http2-prior-knowledge", "-X", "POST", "-d", "x", "-D", "-", f"{url}/v1/user")
            self.assertIn(b"HTTP/2 405", p.stdout)
            self.assertIn(b"allow: GET, HEAD", p.stdout)
            self.assertEqual(srv.stop(), 0)
        with Server([ARGS.hello, "127.0.0.1:0", ARGS.backend]) as srv:
            url = f"http://127.0.0.1:{srv.port}/protocol"
            self.assertEqual(curl("--http2-prior-knowledge", url), ("2 200", b"HTTP/2"))
            self.assertEqual(curl("--http1.1", url), ("1.1 200", b"HTTP/1.1"))
            self.assertEqual(srv.stop(), 0)

    def test_the_access_log_names_the_protocol(self):
        path = tempfile.mktemp(suffix=".log")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        with userd("--access-log", path) as srv:
            url = f"http://127.0.0.1:{srv.port}/v1/user"
            self.assertEqual(curl("--http2-prior-knowledge", url)[0], "2 200")
            self.assertEqual(curl("--http1.1", url)[0], "1.1 200")
            time.sleep(0.5)  # written on the loop's tick
            self.assertEqual(srv.stop(), 0)
        lines = open(path).read().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn(" GET /v1/user HTTP/2 200 3696 ", lines[0])
        self.assertIn(" GET /v1/user HTTP/1.1 200 3696 ", lines[1])

    def test_metrics_count_requests_by_protocol(self):
        with userd() as srv:
            url = f"http://127.0.0.1:{srv.port}"
            for _ in range(3):
                self.assertEqual(curl("--http2-prior-knowledge", f"{url}/v1/user")[0], "2 200")
            self.assertEqual(curl("--http1.1", f"{url}/v1/user")[0], "1.1 200")
            _, text = curl("--http1.1", f"{url}/metrics")
            self.assertIn(b'userd_requests_by_protocol_total{protocol="HTTP/2"} 3\n', text)
            self.assertIn(b'userd_requests_by_protocol_total{protocol="HTTP/1.1"} 1\n', text)
            self.assertIn(b"userd_http2_connections_total 3\n", text)
            self.assertEqual(srv.stop(), 0)

    def test_the_proxy_answers_over_h2_from_its_upstream(self):
        with userd() as up, userd("--upstream", "http://127.0.0.1:1/v1/avatar") as dead:
            self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{dead.port}/v1/user")[0], "2 502")
            with userd("--upstream", f"http://127.0.0.1:{up.port}/v1/avatar") as proxy:
                p = run("h2load", "-n", "2000", "-c", "4", "-m", "10", f"http://127.0.0.1:{proxy.port}/v1/user",
                        timeout=60)
                self.assertIn("2000 succeeded, 0 failed, 0 errored", p.stdout.decode())
                self.assertIn("status codes: 2000 2xx", p.stdout.decode())
                self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{proxy.port}/v1/user"),
                                 ("2 200", DATASET))
                self.assertEqual(proxy.stop(), 0)
            self.assertEqual(dead.stop(), 0)
            self.assertEqual(up.stop(), 0)

    def test_answers_from_other_threads_and_streams_over_h2(self):
        with Server([ARGS.offload, "127.0.0.1:0", ARGS.backend]) as srv:
            url = f"http://127.0.0.1:{srv.port}/fib/25"
            p = run("h2load", "-n", "400", "-c", "2", "-m", "8", url, timeout=60)
            self.assertIn("400 succeeded, 0 failed, 0 errored", p.stdout.decode())
            self.assertIn("status codes: 400 2xx", p.stdout.decode())
            self.assertEqual(srv.stop(), 0)
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            base = f"http://127.0.0.1:{srv.port}"
            self.assertEqual(curl("--http2-prior-knowledge", f"{base}/ticks?count=3"),
                             ("2 200", b'{"tick":0}\n{"tick":1}\n{"tick":2}\n'))
            big2 = curl("--http2-prior-knowledge", f"{base}/numbers?count=100000")
            big1 = curl("--http1.1", f"{base}/numbers?count=100000")
            self.assertEqual(big2[0], "2 200")
            self.assertGreater(len(big2[1]), 1_000_000)
            self.assertEqual(big2[1], big1[1])
            p = run("curl", "-s", "--http2-prior-knowledge", "-I", f"{base}/ticks?count=3")
            self.assertIn(b"HTTP/2 200", p.stdout)
            self.assertEqual(curl("--http2-prior-knowledge", f"{base}/ticks?count=2"),
                             ("2 200", b'{"tick":0}\n{"tick":1}\n'))  # the loop goes on after the HEAD
            self.assertEqual(srv.stop(), 0)

    def test_a_stream_ends_with_trailers_over_h2_and_http11(self):
        """Stream::end(trailers): after the body, a last HEADERS frame with END_STREAM on HTTP/2, the chunked
        trailer section on HTTP/1.1; from the loop thread (/numbers) and from another (/ticks)."""
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            c = Raw(srv.port)
            for sid, path, body in ((1, "/numbers?count=3&trailers=1", b'{"n":0}\n{"n":1}\n{"n":2}\n'),
                                    (3, "/ticks?count=2&trailers=1", b'{"tick":0}\n{"tick":1}\n')):
                c.get(sid, path)
                kinds = []
                while True:
                    f = c.until(lambda f: f[2] == sid)
                    self.assertIsNotNone(f, path)
                    kinds.append((f[0], bool(f[1] & END_STREAM)))
                    if f[1] & END_STREAM:
                        break
                self.assertEqual(kinds[0], (HEADERS, False))
                self.assertEqual(kinds[-1], (HEADERS, True), kinds)  # the trailers end the stream
                self.assertTrue(all(k == (DATA, False) for k in kinds[1:-1]), kinds)
                self.assertEqual(c.bodies[sid], body)
                self.assertEqual(c.headers[sid]["x-lines"], path.split("count=")[1][0])
            c.close()
            for path in ("/numbers?count=3&trailers=1", "/ticks?count=2&trailers=1"):
                s = connect(srv.port)
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
                s.close()
                self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", got)
                lines = path.split("count=")[1][0]
                self.assertTrue(got.endswith(f"\r\n0\r\nx-lines: {lines}\r\n\r\n".encode()), got[-60:])
            self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/numbers?count=2"),
                             ("2 200", b'{"n":0}\n{"n":1}\n'))  # without: as before
            self.assertEqual(srv.stop(), 0)


class Frames(unittest.TestCase):
    def test_a_preface_split_byte_by_byte_is_recognised(self):
        with userd() as srv:
            c = Raw(srv.port, preface=False)
            for b in PREFACE:
                c.send(bytes([b]))
                time.sleep(0.002)
            c.send(frame(SETTINGS, 0, 0))
            c.get(1, "/v1/user")
            headers, body = c.response(1)
            self.assertEqual((headers[":status"], body), ("200", DATASET))
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_http11_bytes_after_the_preface_are_a_connection_error(self):
        with userd() as srv:
            c = Raw(srv.port, preface=False)
            c.send(PREFACE + b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n")
            f = c.until(lambda f: f[0] == GOAWAY, timeout=3)
            self.assertIsNotNone(f)
            self.assertEqual(struct.unpack(">I", f[3][4:8])[0], PROTOCOL_ERROR)
            self.assertTrue(c.closed_by_peer())
            c.close()
            served(self, srv.port)
            self.assertEqual(srv.stop(), 0)

    def test_many_streams_on_one_connection_each_get_their_answer(self):
        with userd() as srv:
            c = Raw(srv.port)
            c.send(*[frame(HEADERS, END_STREAM | END_HEADERS, sid, request_block("/v1/user"))
                     for sid in range(1, 40, 2)])
            for sid in range(1, 40, 2):
                headers, body = c.response(sid)
                self.assertEqual((headers[":status"], body), ("200", DATASET))
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_a_header_list_over_the_head_limit_is_431_and_the_connection_goes_on(self):
        with userd() as srv:
            c = Raw(srv.port)
            block = request_block("/v1/user", extra=[("x-big", "a" * 12000)])
            c.send(frame(HEADERS, END_STREAM, 1, block[:8000]), frame(CONTINUATION, END_HEADERS, 1, block[8000:]))
            refused_then_served(self, c, srv.port, "431")
            self.assertEqual(srv.stop(), 0)

    def test_a_body_over_max_body_is_413_and_the_connection_goes_on(self):
        with userd() as srv:
            c = Raw(srv.port)
            c.send(frame(HEADERS, END_HEADERS, 1, request_block("/v1/user", "POST")))
            conn_win = stream_win = 65535
            sent, total = 0, (1 << 20) + 50_000
            while sent < total and 1 not in c.ended:  # within the windows the server opens as it reads
                n = min(16384, conn_win, stream_win, total - sent)
                if n <= 0:
                    f = c.until(lambda f: f[0] == WINDOW_UPDATE or 1 in c.ended, timeout=5)
                    if 1 in c.ended:
                        break
                    self.assertIsNotNone(f, f"no WINDOW_UPDATE after {sent} bytes")
                    inc = struct.unpack(">I", f[3])[0]
                    if f[2] == 0:
                        conn_win += inc
                    else:
                        stream_win += inc
                    continue
                c.send(frame(DATA, 0, 1, b"x" * n))
                sent += n
                conn_win -= n
                stream_win -= n
            self.assertLess(sent, (1 << 20) + 2 * 65536)  # answered as the bound was passed, not at the end
            headers, body = c.response(1)
            self.assertEqual(headers[":status"], "413")
            c.get(3, "/v1/user")
            headers, body = c.response(3)
            self.assertEqual((headers[":status"], body), ("200", DATASET))
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_streams_beyond_max_concurrent_streams_are_refused(self):
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            c = Raw(srv.port)
            c.until(lambda f: f[0] == SETTINGS and f[1] & ACK, timeout=2)
            c.send(*[frame(HEADERS, END_STREAM | END_HEADERS, sid, request_block("/ticks?count=100000"))
                     for sid in range(1, 2 * 130 + 1, 2)])
            # RFC 9113 5.1.2: the 129th is refused (RST_STREAM), or, as nghttp2 does once our SETTINGS are
            # acknowledged, the connection ends with PROTOCOL_ERROR after the 128 it took.
            f = c.until(lambda f: f[0] in (RST_STREAM, GOAWAY), timeout=5)
            self.assertIsNotNone(f)
            if f[0] == RST_STREAM:
                self.assertEqual(f[2], 2 * 128 + 1)
                self.assertIn(struct.unpack(">I", f[3])[0], (REFUSED_STREAM, PROTOCOL_ERROR))
            else:
                self.assertEqual(struct.unpack(">II", f[3][:8]), (2 * 128 - 1, PROTOCOL_ERROR))
            c.close()
            self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/ticks?count=1"),
                             ("2 200", b'{"tick":0}\n'))
            self.assertEqual(srv.stop(), 0)

    def test_a_reset_stream_is_gone_for_its_producer_on_another_thread(self):
        """Each stream has its own token (the exchange table): once the client resets a stream, Stream::alive()
        says false to the thread that writes it. The example's ticker (256 streams at most) lets go of the 256
        reset streams, and the next client gets its ticks, not a 503."""
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            conns = []
            sids = range(1, 2 * 128, 2)
            for _ in range(2):
                c = Raw(srv.port)
                c.until(lambda f: f[0] == SETTINGS and f[1] & ACK, timeout=2)
                c.send(*[frame(HEADERS, END_STREAM | END_HEADERS, sid, request_block("/ticks?count=100000"))
                         for sid in sids])
                c.until(lambda f, c=c: all(c.bodies.get(sid) for sid in sids), timeout=10)
                self.assertTrue(all(c.bodies.get(sid) for sid in sids))  # every stream ticks
                c.send(*[rst(sid) for sid in sids])
                conns.append(c)
            time.sleep(0.5)
            self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/ticks?count=2"),
                             ("2 200", b'{"tick":0}\n{"tick":1}\n'))
            for c in conns:  # the connections that reset their streams are still served
                c.get(1001, "/ticks?count=1")
                headers, body = c.response(1001)
                self.assertEqual((headers[":status"], body), ("200", b'{"tick":0}\n'))
                c.close()
            self.assertEqual(srv.stop(), 0)

    def test_a_stream_whose_window_stays_shut_holds_back_only_its_own_producer(self):
        """Off-loop writes to a stream whose client never opens its window wait in bounded buffers (the stream's
        own, then the inbox's per-stream bound, then write() says false): the server does not grow, the
        connection's other streams flow, and nothing the producer was told was taken is lost."""
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            c = Raw(srv.port, auto_window=False)
            c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))  # the connection's window: wide open
            c.until(lambda f: f[0] == SETTINGS and f[1] & ACK, timeout=2)
            c.get(1, "/ticks?count=100000&size=65536")  # 6.4 MB/s for a client that takes 64 KiB of it
            c.until(lambda f: False, timeout=0.7)
            before = rss_kib(srv.pid)
            c.until(lambda f: False, timeout=2.0)
            grown = rss_kib(srv.pid) - before
            if not sanitized(ARGS.stream):  # ASan's quarantine holds what is freed: RSS says nothing there
                self.assertLess(grown, 2048, f"{grown} KiB more for a stream whose window is shut")
            c.get(3, "/ticks?count=5")
            headers, body = c.response(3, timeout=5)
            self.assertEqual((headers[":status"], body.count(b"\n")), ("200", 5))
            c.auto_window = True  # the client reads again: what was taken arrives, in order, without a gap
            c.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 24)))
            c.until(lambda f: len(c.bodies.get(1, b"")) >= 40 * 65536, timeout=10)
            lines = c.bodies[1].split(b"\n")[:40]
            self.assertEqual([int(l.split(b":")[1].split(b"}")[0]) for l in lines], list(range(40)))
            self.assertTrue(all(len(l) == 65535 for l in lines))
            c.send(rst(1))
            c.close()
            served_stream(self, srv.port)
            self.assertEqual(srv.stop(), 0)

    def test_a_stream_its_client_never_lets_flow_is_reset_at_the_send_deadline(self):
        """A client whose windows stay shut (SETTINGS_INITIAL_WINDOW_SIZE 0) gets the head and no DATA: at the
        send deadline that stream is reset (CANCEL) and its answer let go; the connection and everyone else go
        on, and once the client opens its windows it is served."""
        with userd("--send-timeout", "1") as srv:
            c = Raw(srv.port, preface=False)
            c.send(PREFACE + settings_frame((4, 0)))
            c.until(lambda f: f[0] == SETTINGS and f[1] & ACK, timeout=2)
            start = time.monotonic()
            c.get(1, "/v1/user")
            f = c.until(lambda f: f[0] == RST_STREAM and f[2] == 1, timeout=6)
            took = time.monotonic() - start
            self.assertIsNotNone(f, "the stuck stream was never reset")
            self.assertEqual(struct.unpack(">I", f[3])[0], CANCEL)
            self.assertGreater(took, 0.9)
            self.assertLess(took, 4.0)
            self.assertEqual(c.headers[1][":status"], "200")  # the head went out, the body could not
            self.assertNotIn(1, c.bodies)
            c.send(settings_frame((4, 65535)))
            c.get(3, "/v1/user")
            headers, body = c.response(3)
            self.assertEqual((headers[":status"], body), ("200", DATASET))
            served(self, srv.port)
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_a_stuck_stream_is_reset_while_the_connections_other_streams_flow(self):
        """The send deadline is the stream's: a stream whose window stays shut is reset within about a send
        timeout even while the same connection keeps answering other streams (whose sends would otherwise
        keep the connection's own deadline from ever passing)."""
        with userd("--send-timeout", "1") as srv:
            c = Raw(srv.port, preface=False)
            c.send(PREFACE + settings_frame((4, 0)))  # every stream's window shut until the client opens it
            c.until(lambda f: f[0] == SETTINGS and f[1] & ACK, timeout=2)
            start = time.monotonic()
            c.get(1, "/v1/user")  # never opened
            sid = 3
            while 1 not in c.resets and time.monotonic() - start < 6:
                c.get(sid, "/v1/user")
                c.send(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 65535)))
                headers, body = c.response(sid)
                self.assertEqual((headers[":status"], body), ("200", DATASET))
                sid += 2
                c.until(lambda f: False, timeout=0.02)
            took = time.monotonic() - start
            self.assertEqual(c.resets.get(1), CANCEL, f"stream 1 not reset after {took:.1f} s")
            self.assertLess(took, 3.5)
            self.assertGreater(sid, 21)  # the other streams flowed meanwhile
            c.close()
            served(self, srv.port)
            self.assertEqual(srv.stop(), 0)

    def test_rapid_reset_ends_in_goaway_and_others_are_served(self):
        with userd() as srv:
            c = Raw(srv.port)
            block = request_block("/v1/user")
            goaway = None
            sid = 1
            for _ in range(40):  # up to 4000 streams opened and reset at once (CVE-2023-44487)
                batch = []
                for _ in range(100):
                    batch += [frame(HEADERS, END_STREAM | END_HEADERS, sid, block),
                              frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))]
                    sid += 2
                try:
                    c.send(*batch)
                except (BrokenPipeError, ConnectionResetError):
                    break
            goaway = c.until(lambda f: f[0] == GOAWAY, timeout=5)
            self.assertIsNotNone(goaway, "the connection went on after 4000 resets")
            self.assertEqual(struct.unpack(">I", goaway[3][4:8])[0], ENHANCE_YOUR_CALM)
            c.close()
            served(self, srv.port)
            self.assertEqual(srv.stop(), 0)

    def test_a_continuation_flood_is_a_connection_error(self):
        with userd() as srv:
            c = Raw(srv.port)
            enc = hpack.Encoder()
            c.send(frame(HEADERS, END_STREAM, 1, enc.encode([(":method", "GET"), (":scheme", "http"),
                                                            (":path", "/v1/user"), (":authority", "t")])))
            try:
                for i in range(2000):  # CVE-2024-27316 / CVE-2024-28182: header blocks that never end
                    c.send(frame(CONTINUATION, 0, 1, enc.encode([(f"x-{i}", "y")])))
            except (BrokenPipeError, ConnectionResetError):
                pass
            f = c.until(lambda f: f[0] == GOAWAY or f[0] == HEADERS, timeout=5)
            self.assertTrue(f is None or f[0] == GOAWAY, f)  # closed, or GOAWAY: never an answer
            c.close()
            served(self, srv.port)
            self.assertEqual(srv.stop(), 0)

    def test_floods_of_frames_that_make_no_progress_end_in_enhance_your_calm(self):
        """SETTINGS, WINDOW_UPDATE, PRIORITY, empty DATA and PING frames, 10,000 at once from a client that reads
        what it is sent: each kind spends the connection's frame budget (5,000, refilled 1,000/s, as Envoy's) and
        ends in GOAWAY ENHANCE_YOUR_CALM (PING and SETTINGS may instead meet nghttp2's own bound on ACKs queued
        unsent, a close, when the server writes slower than they come, as under ASan); others are served."""
        floods = {
            "SETTINGS": frame(SETTINGS, 0, 0),
            "WINDOW_UPDATE": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)),
            "PRIORITY": frame(2, 0, 3, struct.pack(">IB", 0, 15)),  # stream 3: idle; RFC 9113 allows it
            "empty DATA": frame(DATA, 0, 1, b""),
            "PING": frame(PING, 0, 0, b"\0" * 8),
        }
        with userd() as srv:
            for name, one in floods.items():
                c = Raw(srv.port)
                c.until(lambda f: f[0] == SETTINGS and f[1] & ACK, timeout=2)
                if name == "empty DATA":  # a request whose body never comes, only empty frames
                    c.send(frame(HEADERS, END_HEADERS, 1, request_block("/v1/user", "POST")))
                c.send(one * 10_000)
                # Up to 10,000 ACKs to read first, frame by frame: slow on a loaded machine, hence the long wait.
                f = c.until(lambda f: f[0] == GOAWAY, timeout=30)
                if f is None:  # PING and SETTINGS: nghttp2's own guard (1,000 ACKs queued) may end it first
                    self.assertIn(name, ("PING", "SETTINGS"), f"{name}: no GOAWAY")
                    self.assertTrue(c.closed_by_peer(), f"{name}: neither GOAWAY nor a close")
                else:
                    self.assertEqual(struct.unpack(">I", f[3][4:8])[0], ENHANCE_YOUR_CALM, name)
                c.close()
                served(self, srv.port)
            self.assertEqual(srv.stop(), 0)

    def test_an_hpack_bomb_is_431_and_the_connection_goes_on(self):
        """A 4,000-byte field put into the HPACK table once and referenced 2,000 times in one block (8 MB when
        decoded, from 6 KB on the wire): the list passes the header limit, that stream is answered 431 and the
        decoded copies are not kept; the connection goes on."""
        def lit(b):
            return (bytes([len(b)]) if len(b) < 127 else b"\x7f" + hpack_tail(len(b) - 127)) + b

        def hpack_tail(v):
            out = b""
            while v >= 128:
                out += bytes([v % 128 | 128])
                v //= 128
            return out + bytes([v])
        with userd() as srv:
            before = rss_kib(srv.pid)
            c = Raw(srv.port)
            c.until(lambda f: f[0] == SETTINGS and f[1] & ACK, timeout=2)
            block = request_block("/v1/user") + b"\x40" + lit(b"x-bomb") + lit(b"b" * 4000) + b"\xbe" * 2000
            c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
            refused_then_served(self, c, srv.port, "431")
            if not sanitized(ARGS.userd):
                self.assertLess(rss_kib(srv.pid) - before, 4096)
            self.assertEqual(srv.stop(), 0)

    def test_a_ping_flood_from_a_client_that_never_reads_is_bounded(self):
        with userd() as srv:
            before = rss_kib(srv.pid)
            c = Raw(srv.port)
            c.s.settimeout(10)
            ping = frame(PING, 0, 0, b"12345678") * 1000
            sent = 0
            try:
                for _ in range(400):  # up to 400,000 PINGs (6.8 MB) whose ACKs are never read
                    c.s.sendall(ping)
                    sent += 1000
            except (socket.timeout, BrokenPipeError, ConnectionResetError):
                pass
            grown = rss_kib(srv.pid) - before
            self.assertLess(grown, 32 * 1024, f"RSS grew {grown} KiB after {sent} PINGs")
            served(self, srv.port)
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_memory_per_idle_h2_connection(self):
        """Measured, and bounded: 300 connections, each after one request, against as many on HTTP/1.1."""
        per = {}
        for proto in ("h1", "h2"):
            with userd() as srv:
                base = rss_kib(srv.pid)
                conns = []
                for _ in range(300):
                    if proto == "h2":
                        c = Raw(srv.port)
                        c.get(1, "/v1/user")
                        c.response(1)
                    else:
                        c = connect(srv.port)
                        c.sendall(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n")
                        read_response(c)
                    conns.append(c)
                time.sleep(0.3)
                per[proto] = (rss_kib(srv.pid) - base) / 300
                for c in conns:
                    c.close()
                self.assertEqual(srv.stop(), 0)
        print(f"\n  RSS per idle connection after one request: HTTP/1.1 {per['h1']:.1f} KiB, "
              f"HTTP/2 {per['h2']:.1f} KiB", file=sys.stderr)
        self.assertLess(per["h2"], 64)

    def test_no_allocation_per_request_in_the_steady_state(self):
        """After a warm-up, 10,000 requests on one HTTP/2 connection, ten streams in flight at a time, allocate
        nothing: nghttp2 allocates from the loop's pool, and a stream's state is reused."""
        if not ARGS.alloc_counter or sanitized(ARGS.userd):
            self.skipTest("no allocation counter in a sanitizer build")
        counter = os.path.join(PKI, "allocs")
        srv = Server([ARGS.userd, "--listen", "127.0.0.1:0", "--threads", "1", "--backend", ARGS.backend],
                     env={"LD_PRELOAD": ARGS.alloc_counter, "ALLOC_COUNTER_FILE": counter})

        def snapshot():
            return allocation_count(srv.pid, counter)[0]  # userd's own; OpenSSL's (none on h2c) is second
        try:
            c, sid = Raw(srv.port), 1

            def batches(n):
                nonlocal sid
                for _ in range(n // 10):
                    ids = list(range(sid, sid + 20, 2))
                    sid += 20
                    c.send(*[frame(HEADERS, END_STREAM | END_HEADERS, i, request_block("/v1/user")) for i in ids])
                    for i in ids:
                        headers, body = c.response(i)
                        self.assertEqual((headers[":status"], body), ("200", DATASET))
                        del c.headers[i], c.bodies[i]
                    c.ended.clear()
            batches(2000)
            before = snapshot()
            batches(10000)
            self.assertEqual(snapshot() - before, 0)
            c.close()
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_a_settings_ack_that_never_comes_is_a_settings_timeout(self):
        """RFC 9113 6.5.3: our SETTINGS unacknowledged for the header timeout ends the connection with GOAWAY
        SETTINGS_TIMEOUT; a client that acknowledges is not affected."""
        with userd("--header-timeout", "1") as srv:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(PREFACE + frame(SETTINGS, 0, 0))  # and never an ACK
            good = Raw(srv.port)
            self.assertIsNotNone(good.until(lambda f: f[0] == SETTINGS))  # read, and so acknowledged
            t0, got, codes = time.monotonic(), b"", []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            took = time.monotonic() - t0
            while len(got) >= 9:
                n, kind = int.from_bytes(got[:3], "big"), got[3]
                if kind == GOAWAY:
                    codes.append(struct.unpack(">I", got[13:17])[0])
                got = got[9 + n:]
            self.assertEqual(codes, [SETTINGS_TIMEOUT])
            self.assertGreater(took, 0.8)
            self.assertLess(took, 3)
            good.get(1, "/v1/user")  # acknowledged (Raw does), and idle as long: still served
            self.assertEqual(good.response(1)[1], DATASET)
            good.close()
            s.close()
            self.assertEqual(srv.stop(), 0)

    def test_each_stream_has_its_own_body_deadline(self):
        """A request still being read is 408 at the body timeout of its own HEADERS: a stream that began later on
        the same connection is not cut with it, and finishes."""
        with userd("--body-timeout", "2") as srv:
            c = Raw(srv.port)
            self.assertIsNotNone(c.until(lambda f: f[0] == SETTINGS))  # acknowledged, as a client does at once
            c.send(frame(HEADERS, END_HEADERS, 1, request_block("/v1/user")))  # a body is to follow
            time.sleep(1.2)
            c.send(frame(HEADERS, END_HEADERS, 3, request_block("/v1/user")))
            t0 = time.monotonic()
            headers, _ = c.response(1, timeout=5)
            self.assertEqual(headers[":status"], "408")
            self.assertLess(time.monotonic() - t0, 1.8)
            self.assertNotIn(3, c.headers)
            c.send(frame(DATA, END_STREAM, 3, b"x"))
            headers, body = c.response(3)
            self.assertEqual((headers[":status"], body), ("200", DATASET))
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_a_handler_that_does_not_answer_is_503_at_the_handler_timeout(self):
        """The proxy to an upstream that accepts and never answers: 503 on that stream at --handler-timeout, before
        the longer upstream timeout; the connection's other streams are served."""
        stall = socket.socket()
        stall.bind(("127.0.0.1", 0))
        stall.listen(64)  # never accepted: connections wait in the backlog, unanswered
        with userd("--upstream", f"http://127.0.0.1:{stall.getsockname()[1]}/v1/avatar", "--upstream-timeout", "10",
                   "--handler-timeout", "0.5") as srv:
            c = Raw(srv.port)
            t0 = time.monotonic()
            c.get(1, "/v1/user")
            c.get(3, "/healthz")
            self.assertEqual(c.response(3)[0][":status"], "200")
            headers, body = c.response(1, timeout=5)
            took = time.monotonic() - t0
            self.assertEqual((headers[":status"], body), ("503", b'{"error":"handler timed out"}'))
            self.assertGreater(took, 0.4)
            self.assertLess(took, 1.7)
            c.close()
            self.assertEqual(srv.stop(), 0)
        stall.close()

    def test_an_idle_h2_connection_is_closed_at_the_idle_timeout(self):
        with userd("--idle-timeout", "1") as srv:
            c = Raw(srv.port)
            t0 = time.monotonic()
            self.assertIsNone(c.until(lambda f: False, timeout=5))
            self.assertLess(time.monotonic() - t0, 4)
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_a_graceful_stop_sends_goaway_and_finishes_streams_in_flight(self):
        with Server([ARGS.offload, "127.0.0.1:0", ARGS.backend]) as srv:
            c = Raw(srv.port)
            c.get(1, "/fib/35")
            time.sleep(0.05)
            srv.proc.send_signal(signal.SIGTERM)
            f = c.until(lambda f: f[0] == GOAWAY, timeout=5)
            self.assertIsNotNone(f)
            self.assertEqual(struct.unpack(">I", f[3][:4])[0] & 0x7FFFFFFF, 1)  # last stream id: ours
            headers, body = c.response(1, timeout=10)
            self.assertEqual((headers[":status"], body), ("200", b'{"n":35,"fib":9227465}'))
            self.assertEqual(srv.proc.wait(timeout=10), 0)


# RFC 9113 / RFC 7541 cases the way h2spec states them (../shared/docs/h2spec-cases.tsv names them by section):
# what to send after the preface and SETTINGS, and what must follow. Outcomes, as h2spec's verifier judges:
#   conn:  a connection error: GOAWAY with one of the codes, or the connection closed
#   stream: a stream error on that stream: RST_STREAM with one of the codes, or a connection error
#   ping:  the connection goes on: a PING sent after the case is answered
#   headers: the stream is answered (HEADERS on it)
FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x3, 0x5, 0x6, 0x9
PRIORITY, PUSH_PROMISE = 2, 5


def hb(path="/v1/user", method="GET", extra=(), pseudo=None, huffman=True):
    fields = pseudo if pseudo is not None else [(":method", method), (":scheme", "http"), (":path", path),
                                                (":authority", "t")]
    return hpack.Encoder().encode([*fields, *extra], huffman=huffman)


def settings_frame(*pairs, flags=0, sid=0):
    return frame(SETTINGS, flags, sid, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def wu(sid, inc):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))


def rst(sid, code=CANCEL):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


H = END_HEADERS
HS = END_HEADERS | END_STREAM
P = [(":method", "GET"), (":scheme", "http"), (":path", "/v1/user"), (":authority", "t")]
CASES = [
    # section, description, frames, outcome, stream, codes
    ("3.5/2", "invalid preface", None, "conn", 0, (PROTOCOL_ERROR,)),
    ("4.1/1", "unknown frame type", [frame(0x20, 0, 0, b"xx")], "ping", 0, ()),
    ("4.1/2", "undefined flag on PING", [frame(PING, 0x16, 0, b"12345678")], "ping", 0, ()),
    ("4.1/3", "reserved bit in stream id", [frame(HEADERS, HS, 0x80000001, hb())], "headers", 1, ()),
    ("4.2/1", "DATA of 2^14 octets", [frame(HEADERS, H, 1, hb(method="POST")), frame(DATA, END_STREAM, 1, b"x" * 16384)],
     "headers", 1, ()),
    ("4.2/2", "DATA over SETTINGS_MAX_FRAME_SIZE", [frame(HEADERS, H, 1, hb(method="POST")),
                                                    frame(DATA, END_STREAM, 1, b"x" * 16385)],
     "stream", 1, (FRAME_SIZE_ERROR,)),
    ("4.2/3", "HEADERS over SETTINGS_MAX_FRAME_SIZE", [frame(HEADERS, HS, 1, hb(extra=[("x", "y" * 16400)], huffman=False))],
     "conn", 0, (FRAME_SIZE_ERROR,)),
    ("4.3/1", "invalid header block fragment", [frame(HEADERS, HS, 1, b"\x7f\xff\xff\xff\x7f")],
     "conn", 0, (COMPRESSION_ERROR,)),
    ("4.3/2", "PRIORITY inside a header block", [frame(HEADERS, END_STREAM, 1, hb()[:3]),
                                                 frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15))],
     "conn", 0, (PROTOCOL_ERROR,)),
    ("4.3/3", "HEADERS to another stream inside a header block", [frame(HEADERS, END_STREAM, 1, hb()[:3]),
                                                                  frame(HEADERS, HS, 3, hb())],
     "conn", 0, (PROTOCOL_ERROR,)),
    ("5.1/1", "idle: DATA", [frame(DATA, END_STREAM, 1, b"x")], "stream", 1, (PROTOCOL_ERROR, STREAM_CLOSED)),
    ("5.1/2", "idle: RST_STREAM", [rst(1)], "conn", 0, (PROTOCOL_ERROR,)),
    ("5.1/3", "idle: WINDOW_UPDATE", [wu(1, 100)], "conn", 0, (PROTOCOL_ERROR,)),
    ("5.1/4", "idle: CONTINUATION", [frame(CONTINUATION, H, 1, hb())], "conn", 0, (PROTOCOL_ERROR,)),
    ("5.1/5", "half closed (remote): DATA", [frame(HEADERS, HS, 1, hb("/ticks")), frame(DATA, 0, 1, b"x")],
     "stream", 1, (STREAM_CLOSED,)),
    ("5.1/6", "half closed (remote): HEADERS", [frame(HEADERS, HS, 1, hb()), frame(HEADERS, HS, 1, hb())],
     "stream", 1, (STREAM_CLOSED,)),
    ("5.1/8", "closed: DATA after RST_STREAM", [frame(HEADERS, H, 1, hb(method="POST")), rst(1),
                                                frame(DATA, 0, 1, b"x")], "stream", 1, (STREAM_CLOSED,)),
    ("5.1/9", "closed: HEADERS after RST_STREAM", [frame(HEADERS, H, 1, hb(method="POST")), rst(1),
                                                   frame(HEADERS, HS, 1, hb())], "stream", 1, (STREAM_CLOSED,)),
    ("5.1.1/1", "even stream id", [frame(HEADERS, HS, 2, hb())], "conn", 0, (PROTOCOL_ERROR,)),
    ("5.1.1/2", "stream id smaller than the previous", [frame(HEADERS, HS, 5, hb()), frame(HEADERS, HS, 3, hb())],
     "conn", 0, (PROTOCOL_ERROR,)),
    ("5.3.1/1", "HEADERS depending on itself", [frame(HEADERS, HS | 0x20, 1, struct.pack(">IB", 1, 15) + hb())],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("5.3.1/2", "PRIORITY depending on itself", [frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 15))],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("5.4.1/2", "invalid PING: GOAWAY", [frame(PING, 0, 0, b"1234567")], "conn", 0, (FRAME_SIZE_ERROR,)),
    ("5.5/1", "unknown extension frame", [frame(0xFF, 0, 0, b"")], "ping", 0, ()),
    ("5.5/2", "unknown frame inside a header block", [frame(HEADERS, END_STREAM, 1, hb()[:3]),
                                                      frame(0xFF, 0, 1, b"")], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.1/1", "DATA on stream 0", [frame(DATA, 0, 0, b"x")], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.1/3", "DATA with an invalid pad length", [frame(HEADERS, H, 1, hb(method="POST")),
                                                  frame(DATA, END_STREAM | 0x8, 1, b"\x06xxxx")],
     "conn", 0, (PROTOCOL_ERROR,)),
    ("6.2/1", "HEADERS without END_HEADERS, then PRIORITY", [frame(HEADERS, END_STREAM, 1, hb()[:3]),
                                                             frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 15))],
     "conn", 0, (PROTOCOL_ERROR,)),
    ("6.2/3", "HEADERS on stream 0", [frame(HEADERS, HS, 0, hb())], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.2/4", "HEADERS with an invalid pad length", [frame(HEADERS, HS | 0x8, 1, b"\xff" + hb())],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("6.3/1", "PRIORITY on stream 0", [frame(PRIORITY, 0, 0, struct.pack(">IB", 0, 15))], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.3/2", "PRIORITY of 4 octets", [frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00")], "stream", 1, (FRAME_SIZE_ERROR,)),
    ("6.4/1", "RST_STREAM on stream 0", [rst(0)], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.4/2", "RST_STREAM on an idle stream", [rst(3)], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.4/3", "RST_STREAM of 3 octets", [frame(HEADERS, H, 1, hb(method="POST")), frame(RST_STREAM, 0, 1, b"\x00\x00\x00")],
     "stream", 1, (FRAME_SIZE_ERROR,)),
    ("6.5/1", "SETTINGS ACK with a payload", [settings_frame((4, 100), flags=ACK)], "conn", 0, (FRAME_SIZE_ERROR,)),
    ("6.5/2", "SETTINGS on a stream", [settings_frame((4, 100), sid=1)], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.5/3", "SETTINGS of 3 octets", [frame(SETTINGS, 0, 0, b"\x00\x04\x00")], "conn", 0,
     (PROTOCOL_ERROR, FRAME_SIZE_ERROR)),
    ("6.5.2/1", "ENABLE_PUSH of 2", [settings_frame((2, 2))], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.5.2/2", "INITIAL_WINDOW_SIZE over 2^31-1", [settings_frame((4, 1 << 31))], "conn", 0, (FLOW_CONTROL_ERROR,)),
    ("6.5.2/3", "MAX_FRAME_SIZE below 16384", [settings_frame((5, 16383))], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.5.2/4", "MAX_FRAME_SIZE over 2^24-1", [settings_frame((5, 1 << 24))], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.5.2/5", "an unknown setting", [settings_frame((0xFF, 1))], "ping", 0, ()),
    ("6.7/3", "PING on a stream", [frame(PING, 0, 1, b"12345678")], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.7/4", "PING of 9 octets", [frame(PING, 0, 0, b"123456789")], "conn", 0, (FRAME_SIZE_ERROR,)),
    ("6.8/1", "GOAWAY on a stream", [frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0))], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.9/1", "WINDOW_UPDATE of 0", [wu(0, 0)], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.9/2", "WINDOW_UPDATE of 0 on a stream", [frame(HEADERS, H, 1, hb(method="POST")), wu(1, 0)],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("6.9/3", "WINDOW_UPDATE of 3 octets", [frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01")], "conn", 0, (FRAME_SIZE_ERROR,)),
    ("6.9.1/2", "connection window over 2^31-1", [wu(0, 0x7FFFFFFF), wu(0, 0x7FFFFFFF)], "conn", 0,
     (FLOW_CONTROL_ERROR,)),
    ("6.9.1/3", "stream window over 2^31-1", [frame(HEADERS, H, 1, hb(method="POST")), wu(1, 0x7FFFFFFF),
                                              wu(1, 0x7FFFFFFF)], "stream", 1, (FLOW_CONTROL_ERROR,)),
    ("6.9.2/3", "INITIAL_WINDOW_SIZE over the maximum", [settings_frame((4, 0x80000000))], "conn", 0,
     (FLOW_CONTROL_ERROR,)),
    ("6.10/1", "CONTINUATION frames after HEADERS", [frame(HEADERS, END_STREAM, 1, hb()[:2]),
                                                    frame(CONTINUATION, 0, 1, hb()[2:5]),
                                                    frame(CONTINUATION, H, 1, hb()[5:])], "headers", 1, ()),
    ("6.10/2", "CONTINUATION followed by another frame", [frame(HEADERS, END_STREAM, 1, hb()[:2]),
                                                          frame(CONTINUATION, 0, 1, hb()[2:5]),
                                                          frame(DATA, 0, 1, b"x")], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.10/3", "CONTINUATION on stream 0", [frame(HEADERS, END_STREAM, 1, hb()[:2]),
                                            frame(CONTINUATION, H, 0, hb()[2:])], "conn", 0, (PROTOCOL_ERROR,)),
    ("6.10/4", "CONTINUATION after END_HEADERS", [frame(HEADERS, HS, 1, hb()), frame(CONTINUATION, H, 1, hb())],
     "conn", 0, (PROTOCOL_ERROR,)),
    ("6.10/6", "CONTINUATION after DATA", [frame(HEADERS, H, 1, hb(method="POST")), frame(DATA, 0, 1, b"x"),
                                           frame(CONTINUATION, H, 1, hb())], "conn", 0, (PROTOCOL_ERROR,)),
    ("7/1", "GOAWAY with an unknown code", [frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0xFF))], "ping_or_close", 0, ()),
    ("7/2", "RST_STREAM with an unknown code", [frame(HEADERS, H, 1, hb(method="POST")), rst(1, 0xFF)], "ping", 0, ()),
    ("8.1/1", "a second HEADERS without END_STREAM", [frame(HEADERS, H, 1, hb(method="POST")),
                                                      frame(HEADERS, H, 1, hb(pseudo=[], extra=[("x", "y")]))],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2/1", "an uppercase field name", [frame(HEADERS, HS, 1, hb(extra=[("X-Up", "1")]))], "stream", 1,
     (PROTOCOL_ERROR,)),
    ("8.1.2.1/1", "an unknown pseudo-field", [frame(HEADERS, HS, 1, hb(pseudo=P + [(":foo", "1")]))], "stream", 1,
     (PROTOCOL_ERROR,)),
    ("8.1.2.1/2", "a response pseudo-field", [frame(HEADERS, HS, 1, hb(pseudo=P + [(":status", "200")]))],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.1/3", "a pseudo-field in trailers", [frame(HEADERS, H, 1, hb(method="POST")),
                                                 frame(HEADERS, HS, 1, hb(pseudo=[(":method", "GET")]))],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.1/4", "a pseudo-field after a regular field", [frame(HEADERS, HS, 1, hb(pseudo=P[:3] + [("x", "1"),
                                                                                                    P[3]]))],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.2/1", "a connection-specific field", [frame(HEADERS, HS, 1, hb(extra=[("connection", "keep-alive")]))],
     "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.2/2", "TE other than trailers", [frame(HEADERS, HS, 1, hb(extra=[("te", "gzip")]))], "stream", 1,
     (PROTOCOL_ERROR,)),
    ("8.1.2.3/1", "an empty :path", [frame(HEADERS, HS, 1, hb(path=""))], "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.3/2", "no :method", [frame(HEADERS, HS, 1, hb(pseudo=P[1:]))], "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.3/3", "no :scheme", [frame(HEADERS, HS, 1, hb(pseudo=[P[0], P[2], P[3]]))], "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.3/4", "no :path", [frame(HEADERS, HS, 1, hb(pseudo=[P[0], P[1], P[3]]))], "stream", 1, (PROTOCOL_ERROR,)),
    ("8.1.2.3/5", "two :method", [frame(HEADERS, HS, 1, hb(pseudo=P + [(":method", "GET")]))], "stream", 1,
     (PROTOCOL_ERROR,)),
    ("8.1.2.3/7", "two :path", [frame(HEADERS, HS, 1, hb(pseudo=P + [(":path", "/")]))], "stream", 1,
     (PROTOCOL_ERROR,)),
    ("8.1.2.6/1", "content-length unlike the DATA", [frame(HEADERS, H, 1, hb(method="POST",
                                                                          extra=[("content-length", "1")])),
                                                     frame(DATA, END_STREAM, 1, b"xxxx")], "stream", 1,
     (PROTOCOL_ERROR,)),
    ("8.2/1", "PUSH_PROMISE from a client", [frame(PUSH_PROMISE, H, 1, struct.pack(">I", 2) + hb())], "conn", 0,
     (PROTOCOL_ERROR,)),
    ("hpack/2.3.3/1", "an index beyond the tables", [frame(HEADERS, HS, 1, b"\xff\x7f")], "conn", 0,
     (COMPRESSION_ERROR,)),
    ("hpack/4.2/1", "a table size update over the limit", [frame(HEADERS, HS, 1, b"\x3f\xe1\x7f" + hb())],
     "conn", 0, (COMPRESSION_ERROR,)),
    ("hpack/5.2/1", "a Huffman string with EOS", [frame(HEADERS, HS, 1, b"\x40\x81\xff\x81\x80" + hb())],
     "conn", 0, (COMPRESSION_ERROR,)),
    ("hpack/6.3/1", "a table size update after a field", [frame(HEADERS, HS, 1, hb() + b"\x20")], "conn", 0,
     (COMPRESSION_ERROR,)),
]


class Conformance(unittest.TestCase):
    def judge(self, srv, case):
        name, desc, frames, outcome, sid, codes = case
        if frames is None:  # the preface itself is wrong
            c = Raw(srv.port, preface=False)
            c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(SETTINGS, 0, 0))
        else:
            c = Raw(srv.port)
            c.until(lambda f: f[0] == SETTINGS and not f[1] & ACK, timeout=2)
            c.send(*frames)
        try:
            if outcome in ("ping", "ping_or_close"):
                try:
                    c.send(frame(PING, 0, 0, b"h2spec!!"))
                except (BrokenPipeError, ConnectionResetError):
                    self.assertEqual(outcome, "ping_or_close", f"{name} {desc}: closed")
                    return
                f = c.until(lambda f: f[0] == PING and f[1] & ACK and f[3] == b"h2spec!!", timeout=2)
                if f is None and outcome == "ping_or_close":
                    return
                self.assertIsNotNone(f, f"{name} {desc}: no PING ACK")
            elif outcome == "headers":
                f = c.until(lambda f: f[0] in (HEADERS, RST_STREAM, GOAWAY), timeout=2)
                self.assertTrue(f is not None and f[0] == HEADERS and f[2] == sid, f"{name} {desc}: {f}")
            else:
                f = c.until(lambda f: f[0] == GOAWAY or (outcome == "stream" and f[0] == RST_STREAM and f[2] == sid),
                            timeout=2)
                if f is None:
                    # closed counts as a connection error; a timeout does not
                    self.assertTrue(c.closed_by_peer(), f"{name} {desc}: neither an error nor a close")
                    return
                code = struct.unpack(">I", f[3][4:8] if f[0] == GOAWAY else f[3][:4])[0]
                self.assertIn(code, codes, f"{name} {desc}: {'GOAWAY' if f[0] == GOAWAY else 'RST_STREAM'} {code}")
        finally:
            c.close()

    def test_every_case_of_the_battery(self):
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            failed = []
            for case in CASES:
                try:
                    self.judge(srv, case)
                except AssertionError as e:
                    failed.append(str(e))
            self.assertEqual(failed, [])
            self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/ticks?count=1"),
                             ("2 200", b'{"tick":0}\n'))
            self.assertEqual(srv.stop(), 0)


def main():
    global ARGS, DATASET, PKI
    ap = argparse.ArgumentParser()
    for a in ("--backend", "--userd", "--hello", "--offload", "--stream", "--dataset"):
        ap.add_argument(a, required=True)
    ap.add_argument("--alloc-counter", default="")
    ap.add_argument("names", nargs="*")
    ARGS = ap.parse_args()
    DATASET = open(ARGS.dataset, "rb").read()
    PKI = tempfile.mkdtemp(prefix="userd-h2-")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", f"{PKI}/k.pem", "-out", f"{PKI}/c.pem", "-days", "2",
                        "-subj", "/CN=localhost"], check=True, capture_output=True)
        run_tests(sys.modules[__name__], f"http2-{ARGS.backend}", ARGS.names)
    finally:
        shutil.rmtree(PKI, ignore_errors=True)


if __name__ == "__main__":
    main()
