#!/usr/bin/env python3
"""Compressed answers: Accept-Encoding negotiation, br, zstd and gzip decoded by Python's brotli, zstandard and
gzip modules and by curl --compressed, over HTTP/1.1 and HTTP/2 (curl --http2-prior-knowledge); the daemon's
dataset (compressed once, at start, at the best levels), examples/compress (static, lazily cached, dynamic and
streamed bodies, and every case that must not be compressed), and the proxy (an upstream's coding forwarded
unchanged, an identity body compressed only with --compress-proxied on). Run once per backend."""
import argparse
import gzip
import http.client
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import brotli
import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Server, allocation_count, run_tests  # noqa: E402

ARGS = None
DECODE = {
    "br": brotli.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
    "gzip": gzip.decompress,
    None: lambda b: b,
}


def fetch(port, path, accept=None, method="GET", headers=()):
    """(status, headers as a dict of lowercased names to lists, raw body) over HTTP/1.1."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    h = dict(headers)
    if accept is not None:
        h["Accept-Encoding"] = accept
    c.putrequest(method, path, skip_accept_encoding=True)
    for k, v in h.items():
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    got = {}
    for k, v in r.getheaders():
        got.setdefault(k.lower(), []).append(v)
    c.close()
    return r.status, got, body


def one(h, name):
    v = h.get(name)
    return v[0] if v else None


def curl_h2(port, path, accept):
    """(headers dict, raw body) over HTTP/2 by prior knowledge; curl does not decode without --compressed."""
    with tempfile.TemporaryDirectory() as d:
        hp, bp = os.path.join(d, "h"), os.path.join(d, "b")
        subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "20", "-H", f"Accept-Encoding: {accept}",
                        "-D", hp, "-o", bp, f"http://127.0.0.1:{port}{path}"], check=True)
        lines = open(hp, encoding="latin-1").read().splitlines()
        assert lines[0].startswith("HTTP/2"), lines[0]
        got = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                got.setdefault(k.strip().lower(), []).append(v.strip())
        return got, open(bp, "rb").read()


def curl_compressed(port, path, http2=False):
    argv = ["curl", "-sS", "--compressed", "--max-time", "20", f"http://127.0.0.1:{port}{path}"]
    if http2:
        argv.insert(1, "--http2-prior-knowledge")
    return subprocess.run(argv, check=True, capture_output=True).stdout


def userd(*flags):
    return Server([ARGS.userd, "--backend", ARGS.backend, "--threads", "1", "--listen", "127.0.0.1:0", *flags])


class Dataset(unittest.TestCase):
    """The daemon's /v1/user: the dataset, compressed at start."""

    @classmethod
    def setUpClass(cls):
        cls.srv = userd()
        cls.plain = open(ARGS.dataset, "rb").read()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_each_coding_decodes_to_the_dataset(self):
        for coding in ("br", "zstd", "gzip"):
            status, h, body = fetch(self.srv.port, "/v1/user", coding)
            self.assertEqual(status, 200)
            self.assertEqual(one(h, "content-encoding"), coding)
            self.assertEqual(one(h, "vary"), "Accept-Encoding")
            self.assertEqual(int(one(h, "content-length")), len(body))
            self.assertLess(len(body), len(self.plain) // 3, coding)
            self.assertEqual(DECODE[coding](body), self.plain, coding)

    def test_best_levels_were_used_at_start(self):
        # The same libraries at their best levels give these bytes: the body was compressed once, at start,
        # not at a per-request level.
        _, _, br = fetch(self.srv.port, "/v1/user", "br")
        self.assertEqual(br, brotli.compress(self.plain, quality=11, lgwin=22))
        _, _, gz = fetch(self.srv.port, "/v1/user", "gzip")
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        self.assertEqual(gz, z.compress(self.plain) + z.flush())
        _, _, zs = fetch(self.srv.port, "/v1/user", "zstd")
        self.assertLessEqual(len(zs), len(zstandard.ZstdCompressor(level=3).compress(self.plain)))

    def test_negotiation(self):
        cases = [
            (None, None), ("", None), ("identity", None), ("deflate, compress", None), ("gzip;q=0", None),
            ("*;q=0", None), ("identity;q=1, gzip;q=0.5", None), ("gzip", "gzip"), ("x-gzip", "gzip"),
            ("gzip, deflate, br", "br"), ("br;q=0.5, gzip", "gzip"), ("*", "br"), ("*, br;q=0", "zstd"),
            ("GZIP", "gzip"), ("br;q=abc, gzip", "gzip"), ("zstd, gzip", "zstd"),
        ]
        for accept, want in cases:
            status, h, body = fetch(self.srv.port, "/v1/user", accept)
            self.assertEqual(status, 200)
            self.assertEqual(one(h, "content-encoding"), want, accept)
            self.assertEqual(one(h, "vary"), "Accept-Encoding", accept)  # caches must key on it either way
            self.assertEqual(DECODE[want](body), self.plain, accept)

    def test_several_accept_encoding_lines(self):
        c = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        c.sendall(b"GET /v1/user HTTP/1.1\r\nHost: x\r\nAccept-Encoding: deflate\r\nAccept-Encoding: gzip\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
        c.close()
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"\r\nContent-Encoding: gzip\r\n", head)
        self.assertEqual(gzip.decompress(body), self.plain)

    def test_head_is_never_compressed(self):
        status, h, body = fetch(self.srv.port, "/v1/user", "gzip, br", method="HEAD")
        self.assertEqual(status, 200)
        self.assertIsNone(one(h, "content-encoding"))
        self.assertEqual(int(one(h, "content-length")), len(self.plain))
        self.assertEqual(one(h, "vary"), "Accept-Encoding")
        self.assertEqual(body, b"")

    def test_curl_compressed_http1_and_http2(self):
        self.assertEqual(curl_compressed(self.srv.port, "/v1/user"), self.plain)
        self.assertEqual(curl_compressed(self.srv.port, "/v1/user", http2=True), self.plain)

    def test_http2_each_coding(self):
        for coding in ("br", "zstd", "gzip"):
            h, body = curl_h2(self.srv.port, "/v1/user", coding)
            self.assertEqual(one(h, "content-encoding"), coding)
            self.assertEqual(one(h, "vary"), "accept-encoding")
            self.assertEqual(int(one(h, "content-length")), len(body))
            self.assertEqual(DECODE[coding](body), self.plain)

    def test_small_error_bodies_stay_plain(self):
        status, h, _ = fetch(self.srv.port, "/nope", "gzip")
        self.assertEqual(status, 404)
        self.assertIsNone(one(h, "content-encoding"))

    def test_compress_off(self):
        srv = userd("--compress", "off")
        try:
            status, h, body = fetch(srv.port, "/v1/user", "gzip, br, zstd")
            self.assertEqual(status, 200)
            self.assertIsNone(one(h, "content-encoding"))
            self.assertIsNone(one(h, "vary"))
            self.assertEqual(body, self.plain)
        finally:
            srv.stop()

    def test_bad_flags(self):
        for argv in (["--compress", "maybe"], ["--compress-proxied", "yes"],
                     ["--compress", "off", "--compress-proxied", "on"]):
            p = subprocess.run([ARGS.userd, *argv], capture_output=True, timeout=10)
            self.assertEqual(p.returncode, 2, argv)
            self.assertEqual(len(p.stderr.decode().strip().splitlines()), 1, p.stderr)


class Example(unittest.TestCase):
    """examples/compress: what an embedder's bodies get."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server([ARGS.example, "127.0.0.1:0", ARGS.backend])
        cls.port = cls.srv.port

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def plain(self, path):
        status, h, body = fetch(self.port, path)
        self.assertEqual(status, 200)
        self.assertIsNone(one(h, "content-encoding"))
        return body

    def check_coded(self, path, http2=False):
        plain = self.plain(path)
        for coding in ("br", "zstd", "gzip"):
            if http2:
                h, body = curl_h2(self.port, path, coding)
            else:
                status, h, body = fetch(self.port, path, coding)
                self.assertEqual(status, 200)
            self.assertEqual(one(h, "content-encoding"), coding, path)
            self.assertEqual(DECODE[coding](body), plain, (path, coding))
            self.assertLess(len(body), len(plain), (path, coding))
        return plain

    def test_registered_lazy_and_dynamic_bodies(self):
        for http2 in (False, True):
            self.check_coded("/catalog", http2)
            self.check_coded("/page", http2)
            self.check_coded("/report?bytes=200000", http2)
            self.check_coded("/report?bytes=1000000", http2)

    def test_a_body_too_large_to_code_on_the_loop_goes_as_it_is(self):
        # Over 1 MiB, coding would hold the loop (LoopCompression::kMaxOnLoop): identity, still with Vary.
        status, h, body = fetch(self.port, "/report?bytes=3000000", "br")
        self.assertEqual(status, 200)
        self.assertIsNone(one(h, "content-encoding"))
        self.assertEqual(one(h, "vary"), "Accept-Encoding")
        self.assertEqual(len(body), len(self.plain("/report?bytes=3000000")))

    def test_lazy_cache_gives_the_same_bytes_again(self):
        first = fetch(self.port, "/page", "br")[2]
        for _ in range(3):
            self.assertEqual(fetch(self.port, "/page", "br")[2], first)

    def test_streams_decode_over_both_protocols(self):
        for http2 in (False, True):
            plain = self.check_coded("/feed?lines=20000", http2)
            self.assertEqual(plain.count(b"\n"), 20000)
        status, h, body = fetch(self.port, "/feed?lines=5", "gzip")
        self.assertEqual(one(h, "transfer-encoding"), "chunked")
        self.assertEqual(gzip.decompress(body).count(b"\n"), 5)

    def test_http10_stream_is_delimited_by_the_close(self):
        c = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        c.sendall(b"GET /feed?lines=300 HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n")
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Encoding: gzip", head)
        self.assertEqual(gzip.decompress(body).count(b"\n"), 300)

    def test_what_is_never_compressed(self):
        for path in ("/small", "/logo.png", "/raw", "/exact", "/report?bytes=500"):
            status, h, body = fetch(self.port, path, "gzip, br, zstd")
            self.assertEqual(status, 200, path)
            self.assertIsNone(one(h, "content-encoding"), path)
            self.assertIsNone(one(h, "vary"), path)
            self.assertEqual(body, self.plain(path), path)
        for path, status in (("/empty", 204), ("/unchanged", 304)):
            got, h, body = fetch(self.port, path, "gzip")
            self.assertEqual(got, status)
            self.assertIsNone(one(h, "content-encoding"), path)
            self.assertEqual(body, b"")
        # HEAD on a stream: the head only, uncompressed.
        status, h, body = fetch(self.port, "/feed?lines=10", "gzip", method="HEAD")
        self.assertEqual(status, 200)
        self.assertIsNone(one(h, "content-encoding"))

    def test_handler_coding_is_sent_as_it_is(self):
        _, _, identity = fetch(self.port, "/archive")
        for accept in ("br", "gzip", "zstd"):
            status, h, body = fetch(self.port, "/archive", accept)
            self.assertEqual(h["content-encoding"], ["gzip"])  # the handler's own, not doubled
            self.assertEqual(body, identity)
        self.assertEqual(gzip.decompress(identity), self.plain("/catalog"))

    def test_strong_etag_becomes_weak_when_compressed(self):
        _, h, _ = fetch(self.port, "/versioned")
        self.assertEqual(one(h, "etag"), '"v1"')
        _, h, _ = fetch(self.port, "/versioned", "gzip")
        self.assertEqual(one(h, "etag"), 'W/"v1"')
        h, _ = curl_h2(self.port, "/versioned", "br")
        self.assertEqual(one(h, "etag"), 'W/"v1"')

    def test_compressing_streams_are_bounded_per_loop(self):
        # 24 streams held open by clients that do not read: 16 get an encoder (LoopCompression::kMaxStreams),
        # the rest go out uncompressed; every one decodes to the same feed.
        socks = []
        for _ in range(24):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(30)
            s.connect(("127.0.0.1", self.port))
            s.sendall(b"GET /feed?lines=8000 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
            socks.append(s)
        heads = []
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(1)
            heads.append(data)
        coded = sum(1 for h in heads if b"Content-Encoding: gzip" in h)
        self.assertEqual(coded, 16)
        # Read all at once: one left unread for the send timeout would be cut.
        sel = selectors.DefaultSelector()
        data = {s: b"" for s in socks}
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                b = key.fileobj.recv(1 << 16)
                if b:
                    data[key.fileobj] += b
                else:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
        self.assertFalse(sel.get_map(), "streams still open after 60 s")
        bodies = []
        for s, head in zip(socks, heads):
            body = dechunk(data[s])
            bodies.append(gzip.decompress(body) if b"Content-Encoding: gzip" in head else body)
        self.assertTrue(all(b == bodies[0] for b in bodies))
        self.assertEqual(bodies[0].count(b"\n"), 8000)


def dechunk(data):
    out = b""
    while True:
        line, data = data.split(b"\r\n", 1)
        n = int(line, 16)
        if n == 0:
            return out
        out += data[:n]
        data = data[n + 2:]


class Proxy(unittest.TestCase):
    """userd in front of userd: the upstream's coding goes through unchanged."""

    @classmethod
    def setUpClass(cls):
        cls.up = userd()
        cls.plain = open(ARGS.dataset, "rb").read()

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def front(self, *flags):
        return userd("--upstream", f"http://127.0.0.1:{self.up.port}/v1/avatar", *flags)

    def test_streamed_proxy_forwards_the_upstreams_coding(self):
        srv = self.front("--no-validate")
        try:
            _, _, upstream_br = fetch(self.up.port, "/v1/avatar", "br")
            for coding in ("br", "gzip", "zstd"):
                status, h, body = fetch(srv.port, "/v1/user", coding)
                self.assertEqual(status, 200)
                self.assertEqual(one(h, "content-encoding"), coding)
                self.assertEqual(DECODE[coding](body), self.plain)
            _, _, body = fetch(srv.port, "/v1/user", "br")
            self.assertEqual(body, upstream_br)  # the upstream's bytes, not compressed again
            status, h, body = fetch(srv.port, "/v1/user")
            self.assertIsNone(one(h, "content-encoding"))
            self.assertEqual(body, self.plain)
        finally:
            srv.stop()

    def test_validated_proxy_compresses_only_when_asked(self):
        srv = self.front()
        try:
            status, h, body = fetch(srv.port, "/v1/user", "br")
            self.assertEqual(status, 200)
            self.assertIsNone(one(h, "content-encoding"))
            self.assertEqual(body, self.plain)
        finally:
            srv.stop()
        srv = self.front("--compress-proxied", "on")
        try:
            for coding in ("br", "zstd", "gzip"):
                status, h, body = fetch(srv.port, "/v1/user", coding)
                self.assertEqual(one(h, "content-encoding"), coding)
                self.assertEqual(DECODE[coding](body), self.plain)
        finally:
            srv.stop()



class Allocations(unittest.TestCase):
    """Compressed answers allocate nothing per request once warm: the dataset's start-time forms, and bodies
    compressed per response (an upstream's, with --compress-proxied on) by the loop's reused encoders."""

    def count(self, flags, path="/v1/user", n=1500):
        if not ARGS.alloc_counter or "asan" in subprocess.run(["ldd", ARGS.userd], capture_output=True,
                                                              text=True).stdout:
            self.skipTest("no allocation counter in a sanitizer build")
        counter = os.path.join(tempfile.mkdtemp(), "allocs")
        srv = Server([ARGS.userd, "--backend", ARGS.backend, "--threads", "1", "--listen", "127.0.0.1:0", *flags],
                     env={"LD_PRELOAD": ARGS.alloc_counter, "ALLOC_COUNTER_FILE": counter})
        try:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            plain = open(ARGS.dataset, "rb").read()

            def run(k):
                for i in range(k):
                    coding = ("br", "zstd", "gzip")[i % 3]
                    c.putrequest("GET", path, skip_accept_encoding=True)
                    c.putheader("Accept-Encoding", coding)
                    c.endheaders()
                    r = c.getresponse()
                    body = r.read()
                    self.assertEqual(r.getheader("Content-Encoding"), coding)
                    self.assertEqual(DECODE[coding](body), plain)
            run(300)
            before = allocation_count(srv.pid, counter)[0]
            run(n)
            c.close()
            return allocation_count(srv.pid, counter)[0] - before
        finally:
            srv.stop()

    def test_static_forms(self):
        self.assertEqual(self.count([]), 0)

    def test_compressed_per_response(self):
        up = userd()
        try:
            self.assertEqual(self.count(["--upstream", f"http://127.0.0.1:{up.port}/v1/avatar",
                                         "--compress-proxied", "on"]), 0)
        finally:
            up.stop()


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--userd", required=True)
    p.add_argument("--example", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--backend", default="io_uring")
    p.add_argument("--alloc-counter", default="")
    p.add_argument("names", nargs="*")
    ARGS = p.parse_args()
    run_tests(sys.modules[__name__], f"compress-{ARGS.backend}", ARGS.names)


if __name__ == "__main__":
    main()
