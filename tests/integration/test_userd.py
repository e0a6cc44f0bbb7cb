#!/usr/bin/env python3
"""Integration tests: the real userd on an ephemeral 127.0.0.1 port, driven by curl, http.client and raw
sockets. Run by meson (`meson test --suite integration`) once per backend (--backend io_uring|epoll) with the
paths of the built binaries."""
import argparse
import concurrent.futures
import email.utils
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Pipeliners, Server, connect, fd_targets, free_port, get, read_response, read_until_eof,  # noqa: E402
                     run_tests)

ARGS = None
DATASET = b""

GET = b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n"


def userd(*flags, env=None):
    return Server([ARGS.userd, "--listen", "127.0.0.1:0", "--backend", ARGS.backend, *flags], env=env)


def run_userd(*flags, env=None, timeout=10):
    """Runs userd expecting it to exit on its own; returns (code, stderr)."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([ARGS.userd, *flags], capture_output=True, env=e, timeout=timeout)
    return p.returncode, p.stderr.decode()


class Serving(unittest.TestCase):
    """One server for the tests that only read from it."""

    @classmethod
    def setUpClass(cls):
        cls.srv = userd("--threads", "2")
        cls.port = cls.srv.port

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def get(self, path="/v1/user", method="GET"):
        _, body, _, r = get(self.port, path, method=method)
        return r, body

    def assert_still_serving(self):
        r, body = self.get()
        self.assertEqual(r.status, 200)
        self.assertEqual(body, DATASET)

    def test_curl_gets_the_dataset_with_the_seed_headers(self):
        out = subprocess.run(["curl", "-sS", "-D", "-", f"http://127.0.0.1:{self.port}/v1/user"],
                             capture_output=True, timeout=10, check=True).stdout
        head, body = out.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.assertEqual(lines[0], "HTTP/1.1 200 OK")
        names = [line.split(":", 1)[0] for line in lines[1:]]
        # The seed's headers, and Vary: the answer would differ for a client that asks for compression.
        self.assertEqual(names, ["Content-Type", "Engine", "Location", "Vary", "Date", "Content-Length"])
        self.assertIn("Vary: Accept-Encoding", lines)
        self.assertEqual(body, DATASET)
        users = json.loads(body)
        self.assertEqual(len(users), 20)
        self.assertEqual(users[0]["name"], "BillyStoltenberg")

    def test_http_client_sees_each_header_value(self):
        r, body = self.get()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertEqual(r.getheader("Engine"), f"userd/{ARGS.backend}")
        self.assertEqual(r.getheader("Location"), "/v1/user")
        self.assertEqual(r.getheader("Content-Length"), "3696")
        date = email.utils.parsedate_to_datetime(r.getheader("Date"))
        self.assertLess(abs(date.timestamp() - time.time()), 5)
        self.assertEqual(body, DATASET)

    def test_avatar_serves_the_same_dataset(self):
        r, body = self.get("/v1/avatar")
        self.assertEqual(r.status, 200)
        self.assertEqual(body, DATASET)

    def test_a_thousand_keep_alive_requests_share_one_connection(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.connect()
        local = c.sock.getsockname()
        for i in range(1000):
            c.request("GET", "/v1/user" if i % 2 else "/v1/avatar")
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.read(), DATASET)
            self.assertEqual(c.sock.getsockname(), local, f"reconnected at request {i}")
        c.close()

    def test_a_hundred_pipelined_requests_in_one_write_come_back_in_order(self):
        paths = ["/v1/user", "/v1/avatar", "/missing", "/v1/user"]
        want = []
        batch = b""
        for i in range(100):
            p = paths[i % 4]
            batch += f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
            want.append(404 if p == "/missing" else 200)
        s = connect(self.port)
        s.sendall(batch)
        got = []
        for _ in range(100):
            status, _, body = read_response(s)
            got.append(status)
            if status == 200:
                self.assertEqual(body, DATASET)
        self.assertEqual(got, want)
        s.close()

    def test_head_sends_headers_only(self):
        s = connect(self.port)
        s.sendall(b"HEAD /v1/user HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        status, headers, body = read_response(s, head_only=True)
        self.assertEqual((status, headers["content-length"], body), (200, "3696", b""))
        status, _, body = read_response(s)  # the next response follows at once: no body bytes in between
        self.assertEqual((status, body), (200, DATASET))
        s.close()

    def test_unknown_path_is_404_and_other_methods_405_with_allow(self):
        r, body = self.get("/v1/nothing")
        self.assertEqual(r.status, 404)
        self.assertEqual(json.loads(body), {"error": "not found"})
        r, body = self.get("/v1/user", method="DELETE")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.getheader("Allow"), "GET, HEAD")
        self.assertEqual(json.loads(body), {"error": "method not allowed"})

    def test_chunked_request_body_is_read_and_the_next_request_served(self):
        s = connect(self.port)
        s.sendall(b"POST /v1/user HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nGET /\r\n3\r\nabc\r\n0\r\n\r\n" + GET)
        self.assertEqual(read_response(s)[0], 405)
        self.assertEqual(read_response(s)[:3:2], (200, DATASET))
        s.close()

    def test_content_length_body_that_looks_like_a_request_is_only_a_body(self):
        smuggled = b"GET /v1/nothing HTTP/1.1\r\nHost: t\r\n\r\n"
        s = connect(self.port)
        s.sendall(b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled + GET)
        self.assertEqual(read_response(s)[0], 405)
        self.assertEqual(read_response(s)[0], 200)  # not the smuggled 404
        s.close()

    def test_expect_continue_gets_100_before_the_body(self):
        s = connect(self.port)
        s.sendall(b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        status, _, _ = read_response(s)
        self.assertEqual(status, 100)
        s.sendall(b"body")
        self.assertEqual(read_response(s)[0], 405)
        s.close()

    def test_http10_closes_unless_keep_alive_is_asked(self):
        s = connect(self.port)
        s.sendall(b"GET /v1/user HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = read_response(s)
        self.assertEqual((status, headers.get("connection"), body), (200, "keep-alive", DATASET))
        s.sendall(b"GET /v1/user HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(s)
        self.assertEqual((status, headers.get("connection")), (200, "close"))
        self.assertEqual(read_until_eof(s), b"")
        s.close()

    def test_client_that_half_closes_still_gets_its_answers(self):
        s = connect(self.port)
        s.sendall(GET + GET)
        s.shutdown(socket.SHUT_WR)
        data = read_until_eof(s)
        self.assertEqual(data.count(b"HTTP/1.1 200 OK"), 2)
        s.close()

    def test_each_bad_input_gets_its_status_and_a_close_and_the_next_client_is_served(self):
        cases = [
            ("malformed request line", b"GET  /v1/user HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400),
            ("malformed header", b"GET /v1/user HTTP/1.1\r\nHost t\r\n\r\n", 400),
            ("obs-fold", b"GET /v1/user HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
            ("NUL in header", b"GET /v1/user HTTP/1.1\r\nHost: t\x00\r\n\r\n", 400),
            ("HTTP/1.1 without Host", b"GET /v1/user HTTP/1.1\r\n\r\n", 400),
            ("CL and TE", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            ("differing CLs", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
            ("bad chunk size", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            ("TE gzip", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("head over 8 KiB", b"GET /v1/user HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
            ("URI over 8 KiB", b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
            ("body over 1 MiB", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n", 413),
            ("chunked body over 1 MiB", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                        b"100001\r\n", 413),
            ("HTTP/2.0", b"GET /v1/user HTTP/2.0\r\nHost: t\r\n\r\n", 505),
            ("bare CR in a header", b"GET /v1/user HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400),
            ("DEL in a header value", b"GET /v1/user HTTP/1.1\r\nHost: t\r\nX: a\x7fb\r\n\r\n", 400),
            ("space in a header name", b"GET /v1/user HTTP/1.1\r\nHost: t\r\nX Y: z\r\n\r\n", 400),
            ("64 KiB header", b"GET /v1/user HTTP/1.1\r\nHost: t\r\nX: " + b"h" * 65536 + b"\r\n\r\n", 431),
            ("1000 headers", b"GET /v1/user HTTP/1.1\r\nHost: t\r\n" + b"X: 1\r\n" * 1000 + b"\r\n", 431),
            ("TE chunked with a bad size", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           b"5x\r\nhello\r\n0\r\n\r\n", 400),
            ("Content-Length with a sign", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
        ]
        for why, raw, want in cases:
            with self.subTest(why):
                s = connect(self.port)
                s.sendall(raw + GET)  # a request after the bad one must not be answered
                data = read_until_eof(s)
                s.close()
                self.assertTrue(data.startswith(b"HTTP/1.1 %d " % want), f"{why}: {data[:80]!r}")
                self.assertIn(b"Connection: close\r\n", data)
                self.assertEqual(data.count(b"HTTP/1.1 "), 1, f"{why}: answered past the bad request")
                body = data.split(b"\r\n\r\n", 1)[1]
                self.assertIn("error", json.loads(body))
                self.assert_still_serving()

    def test_half_requests_cut_by_a_reset_leave_the_server_serving(self):
        import struct
        for partial in (b"GET /v1/us", b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab",
                        b"POST /v1/user HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe"):
            for _ in range(20):
                s = connect(self.port)
                s.sendall(partial)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # RST
        self.assert_still_serving()

    def test_a_large_body_sent_slowly_is_read_in_full(self):
        body = b"x" * 300000
        s = connect(self.port)
        s.sendall(b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 50000):
            s.sendall(body[i:i + 50000])
            time.sleep(0.01)
        s.sendall(GET)
        self.assertEqual(read_response(s)[0], 405)
        self.assertEqual(read_response(s)[0], 200)
        s.close()

    def test_two_hundred_concurrent_clients(self):
        def client(_):
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            ok = 0
            for _ in range(10):
                c.request("GET", "/v1/user")
                r = c.getresponse()
                ok += r.status == 200 and r.read() == DATASET
            c.close()
            return ok
        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            self.assertEqual(sum(pool.map(client, range(200))), 2000)

    def test_healthz(self):
        r, body = self.get("/healthz")
        self.assertEqual((r.status, json.loads(body)), (200, {"status": "ok"}))

    def test_metrics_parse_as_prometheus_text_and_count_what_happened(self):
        def scrape():
            r, body = self.get("/metrics")
            self.assertEqual(r.status, 200)
            self.assertTrue(r.getheader("Content-Type").startswith("text/plain; version=0.0.4"))
            samples, types = {}, {}
            for line in body.decode().splitlines():
                if line.startswith("# TYPE "):
                    _, _, name, kind = line.split(" ")
                    types[name] = kind
                elif line and not line.startswith("#"):
                    key, value = line.rsplit(" ", 1)
                    samples[key] = float(value)
            return samples, types
        before, types = scrape()
        for path in ["/v1/user"] * 5 + ["/nope"] * 2:
            self.get(path)
        after, _ = scrape()
        for name, kind in [("userd_requests_total", "counter"), ("userd_request_duration_seconds", "histogram"),
                           ("userd_connections_open", "gauge"), ("userd_connections_accepted_total", "counter"),
                           ("userd_backend_info", "gauge")]:
            self.assertEqual(types.get(name), kind, name)
        if ARGS.backend == "io_uring":
            for name in ("userd_uring_submit_calls_total", "userd_uring_sqes_total", "userd_uring_enobufs_total"):
                self.assertEqual(types.get(name), "counter", name)
        key = 'userd_requests_total{route="/v1/user",code="200"}'
        self.assertEqual(after[key] - before.get(key, 0), 5)
        key = 'userd_requests_total{route="other",code="404"}'
        self.assertEqual(after[key] - before.get(key, 0), 2)
        self.assertEqual(after[f'userd_backend_info{{backend="{ARGS.backend}"}}'], 1)
        buckets = sorted((float(k.split('le="')[1].rstrip('"}')), v) for k, v in after.items()
                         if k.startswith("userd_request_duration_seconds_bucket"))
        self.assertEqual(buckets[-1][1], after["userd_request_duration_seconds_count"])  # +Inf holds them all
        self.assertEqual([v for _, v in buckets], sorted(v for _, v in buckets))  # cumulative
        self.assertGreaterEqual(after["userd_connections_accepted_total"] - before["userd_connections_accepted_total"], 7)

    def test_each_thread_holds_its_own_ring_or_epoll_set(self):
        fds = fd_targets(self.srv.pid)
        rings = fds.count("anon_inode:[io_uring]")
        epolls = fds.count("anon_inode:[eventpoll]")
        if ARGS.backend == "io_uring":
            self.assertEqual(rings, 2)  # one ring per thread (--threads 2)
        else:
            self.assertEqual((rings, epolls), (0, 2))
        self.assertIn(f"({ARGS.backend}, 2 threads)", self.srv.stderr_lines[0])


class Bounds(unittest.TestCase):
    """Deadlines and limits, with short values so the test is quick."""

    @classmethod
    def setUpClass(cls):
        cls.srv = userd("--threads", "1", "--header-timeout", "0.5", "--body-timeout", "0.5",
                        "--idle-timeout", "1", "--max-conns", "20")
        cls.port = cls.srv.port

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def served(self):
        return get(self.port)[:2] == (200, DATASET)

    def test_a_head_trickling_in_gets_408_at_the_header_timeout(self):
        s = connect(self.port)
        t0 = time.monotonic()
        s.sendall(b"GET /v1/user HTTP/1.1\r\n")
        data = b""
        for part in (b"Host: t\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n"):
            time.sleep(0.2)  # each byte arrives in time, the head as a whole does not
            try:
                s.sendall(part)
            except OSError:
                break
        data = read_until_eof(s)
        took = time.monotonic() - t0
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data[:60])
        self.assertIn(b'{"error":"request header timeout"}', data)
        self.assertGreater(took, 0.4)
        self.assertLess(took, 2.0)
        self.assertTrue(self.served())

    def test_a_body_that_stops_coming_gets_408(self):
        s = connect(self.port)
        s.sendall(b"POST /v1/user HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part")
        data = read_until_eof(s)
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:60])
        self.assertIn(b"request body timeout", data)

    def test_idle_keep_alive_connections_are_closed(self):
        s = connect(self.port)
        s.sendall(GET)
        self.assertEqual(read_response(s)[0], 200)
        t0 = time.monotonic()
        self.assertEqual(read_until_eof(s), b"")  # closed without a word
        self.assertGreater(time.monotonic() - t0, 0.8)
        s.close()

    def test_a_silent_new_connection_is_closed_at_the_idle_timeout(self):
        s = connect(self.port)
        t0 = time.monotonic()
        self.assertEqual(read_until_eof(s), b"")
        took = time.monotonic() - t0
        self.assertGreater(took, 0.8)  # not at once: at the 1 s idle timeout
        self.assertLess(took, 2.5)
        s.close()

    def test_connections_beyond_max_conns_are_closed_and_the_others_kept(self):
        held = [connect(self.port) for _ in range(20)]
        for h in held[:5]:
            h.sendall(GET)
            self.assertEqual(read_response(h)[0], 200)
        extra = connect(self.port)
        extra.sendall(GET)
        try:
            self.assertEqual(read_until_eof(extra), b"")  # accepted and closed at once
        except ConnectionResetError:
            pass
        extra.close()
        for h in held[:5]:  # the connections it had keep working
            h.sendall(GET)
            self.assertEqual(read_response(h)[0], 200)
        for h in held:
            h.close()
        time.sleep(0.2)
        self.assertTrue(self.served())


class Backpressure(unittest.TestCase):
    """Clients that send without reading hold nothing for long and grow nothing without bound."""

    def test_non_reading_pipeliners_keep_a_normal_client_out_only_until_the_send_timeout(self):
        with userd("--threads", "1", "--max-conns", "5", "--send-timeout", "2") as srv:
            attack = Pipeliners(srv.port, 5, GET, 20000, seconds=20)
            try:
                time.sleep(0.5)  # they hold all five slots, their output stuck in full socket buffers
                t0 = time.monotonic()
                served = None
                while time.monotonic() - t0 < 10:
                    try:
                        if get(srv.port)[0] == 200:
                            served = time.monotonic() - t0
                            break
                    except (OSError, http.client.HTTPException):
                        time.sleep(0.1)
                self.assertIsNotNone(served, "a normal client was kept out for 10 s")
                self.assertLess(served, 4.0)  # the 2 s send timeout, the 100 ms tick, and the retry loop
                # They were let in because the send timeout closed them, not because they went away.
                end = time.monotonic() + 5
                while time.monotonic() < end and not all(c is not None for c in attack.closed_at):
                    time.sleep(0.1)
                self.assertTrue(all(c is not None for c in attack.closed_at), attack.closed_at)
            finally:
                attack.close()
            text = get(srv.port, "/metrics")[1].decode()
            self.assertRegex(text, r"(?m)^userd_send_timeouts_total [1-9]")
            self.assertRegex(text, r"(?m)^userd_recv_pauses_total [1-9]")

    def test_a_slow_reader_of_a_large_pipeline_is_served_in_full(self):
        # Progress, however slow, is not a stall: 2,000 answers (7.6 MB) read 64 KiB at a time with pauses.
        with userd("--threads", "1", "--send-timeout", "1") as srv:
            s = connect(srv.port, timeout=20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(GET * 2000)
            s.settimeout(3)
            chunks = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break  # everything came, or the server stopped sending: the count tells which
                if not chunk:
                    break
                chunks.append(chunk)
                time.sleep(0.02)  # about 3 MB/s
            buf = b"".join(chunks)
            s.close()
            self.assertEqual(buf.count(b"HTTP/1.1 200 OK"), 2000)
            self.assertEqual(srv.stop(), 0)

    def test_a_handler_that_never_answers_gets_503_at_the_handler_timeout(self):
        with Server([ARGS.hello, "127.0.0.1:0", ARGS.backend, "0.5"]) as srv:
            s = connect(srv.port)
            t0 = time.monotonic()
            s.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = read_response(s)
            took = time.monotonic() - t0
            self.assertEqual(status, 503)
            self.assertEqual(json.loads(body), {"error": "handler timed out"})
            self.assertGreater(took, 0.4)
            self.assertLess(took, 2.0)
            self.assertEqual(read_response(s)[2], b"hello\n")  # the connection goes on
            s.close()


class Lifecycle(unittest.TestCase):
    def test_sigterm_and_sigint_stop_it_with_exit_0(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            srv = userd("--threads", "1")
            c = connect(srv.port)  # an open idle connection does not hold the stop up
            self.assertEqual(srv.stop(sig, timeout=5), 0)
            c.close()

    def test_socket_activation_serves_on_the_inherited_socket(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(128)
        port, fd = ls.getsockname()[1], ls.fileno()
        # As systemd does it: the socket at fd 3, LISTEN_PID naming the process that execs userd.
        move = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "
        shell = move + 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"'
        srv = Server(["sh", "-c", shell, ARGS.userd, "--backend", ARGS.backend, "--threads", "2"], pass_fds=[fd])
        ls.close()  # userd holds the only other copy now
        try:
            self.assertEqual(srv.port, port)
            self.assertTrue(any("inherited socket" in l for l in srv.stderr_lines), srv.stderr_lines)
            for _ in range(20):
                self.assertEqual(get(port)[:2], (200, DATASET))
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_access_log_has_one_line_per_request_written_off_the_request_path(self):
        import re
        path = tempfile.mktemp(suffix=".log")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        srv = userd("--threads", "2", "--access-log", path)
        try:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            for p in ("/v1/user", "/v1/user?x=1", "/nope"):
                c.request("GET", p)
                c.getresponse().read()
            c.request("HEAD", "/v1/avatar")
            c.getresponse().read()
            s = connect(srv.port)
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400
            read_until_eof(s)
            s.close()
            time.sleep(0.5)  # flushed on the loop's 100 ms tick, while it runs
            lines = open(path).read().splitlines()
        finally:
            self.assertEqual(srv.stop(), 0)
        line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ 127\.0\.0\.1:\d+ (\S+ \S+) HTTP/1\.1 (\d{3}) (\d+) \d+\.\d{6}$")
        got = sorted((m.group(1), m.group(2), m.group(3)) for m in map(line.match, lines) if m)
        self.assertEqual(len(got), len(lines), lines)
        self.assertEqual(got, sorted([("GET /v1/user", "200", "3696"), ("GET /v1/user?x=1", "200", "3696"),
                                      ("GET /nope", "404", "21"), ("HEAD /v1/avatar", "200", "0"),
                                      ("- -", "400", "31")]))

    def test_with_http2_off_its_preface_is_an_http11_505_and_a_close(self):
        with userd("--http2", "off") as srv:
            s = connect(srv.port)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n")
            data = read_until_eof(s)
            s.close()
            self.assertTrue(data.startswith(b"HTTP/1.1 505 "), data[:80])
            self.assertEqual(data.count(b"HTTP/1.1 "), 1)
            self.assertEqual(srv.stop(), 0)

    def test_version_names_the_kernel_and_backend_features(self):
        p = subprocess.run([ARGS.userd, "--version"], capture_output=True, text=True, timeout=5)
        self.assertEqual(p.returncode, 0)
        self.assertIn("kernel: Linux", p.stdout)
        self.assertRegex(p.stdout, r"io_uring: .*opcodes: .*RECV|io_uring unavailable")

    def test_default_threads_follow_the_allowed_cpus(self):
        with userd() as srv:
            self.assertIn(f"{len(os.sched_getaffinity(0))} threads", srv.stderr_lines[0])

    def test_bad_flags_are_one_line_and_exit_2(self):
        for flags in (["--bogus"], ["--listen", "nowhere"], ["--threads", "x"], ["--listen"]):
            code, err = run_userd(*flags)
            self.assertEqual(code, 2, flags)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith("userd: "), err)

    def test_help_and_version(self):
        p = subprocess.run([ARGS.userd, "--help"], capture_output=True, timeout=5)
        self.assertEqual(p.returncode, 0)
        for flag in (b"--listen", b"--threads", b"--data", b"--user-path", b"M1_PORT"):
            self.assertIn(flag, p.stdout)
        p = subprocess.run([ARGS.userd, "--version"], capture_output=True, timeout=5)
        self.assertEqual(p.returncode, 0)
        self.assertTrue(p.stdout.startswith(b"userd 0."), p.stdout)

    def test_a_slow_but_steady_reader_of_a_large_answer_is_not_cut(self):
        """Found from outside: a client reading 32 KiB/s of a 12 MB answer was cut at the send deadline, since a
        send completes only once a third of the socket's buffer is free. The socket's own drain counts now."""
        path = big_dataset(self)
        size = os.path.getsize(path)
        with userd("--data", path, "--send-timeout", "2", "--threads", "1") as srv:
            s = connect(srv.port, timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(b"GET /v1/user HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            got = read_slowly_then_all(s, 6, 64 * 1024)  # three send deadlines long
            s.close()
            self.assertEqual(len(got.split(b"\r\n\r\n", 1)[1]), size)
            # A client that stops reading is still cut: at the deadline and one check later.
            s = connect(srv.port, timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n")
            s.recv(1000)
            time.sleep(4.5)
            got = read_until_eof(s, limit=1 << 26)
            s.close()
            self.assertLess(len(got), size)
            self.assertEqual(srv.stop(), 0)

    def test_address_in_use_is_reported(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            code, err = run_userd("--listen", f"127.0.0.1:{s.getsockname()[1]}")
        self.assertEqual(code, 1)
        self.assertIn("Address already in use", err)

    def test_a_second_instance_on_the_port_is_refused_and_the_first_keeps_every_request(self):
        port = free_port()
        with Server([ARGS.userd, "--listen", f"127.0.0.1:{port}", "--backend", ARGS.backend, "--threads", "2"]) as first:
            other = tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False)
            other.write(b'[{"second": true}]')
            other.close()
            self.addCleanup(os.unlink, other.name)
            code, err = run_userd("--listen", f"127.0.0.1:{port}", "--backend", ARGS.backend, "--data", other.name)
            self.assertEqual(code, 1, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn("Address already in use", err)
            for _ in range(32):  # fresh connections: the kernel would spread them over a shared group
                status, body, _, _ = get(port)
                self.assertEqual((status, body), (200, DATASET))
            self.assertEqual(first.stop(), 0)
        port = free_port()
        flags = ["--listen", f"127.0.0.1:{port}", "--backend", ARGS.backend, "--reuse-port"]
        with Server([ARGS.userd, *flags]) as old, Server([ARGS.userd, *flags, "--data", other.name]) as new:
            bodies = {get(port)[1] for _ in range(64)}
            self.assertIn(b'[{"second": true}]', bodies)
            self.assertEqual(old.stop(), 0)  # the old process leaves; the new one serves everyone
            for _ in range(8):
                self.assertEqual(get(port)[1], b'[{"second": true}]')
            self.assertEqual(new.stop(), 0)


def read_until_chunked_end(sock, limit=1 << 20):
    """A chunked body's bytes up to and including its last chunk, from a socket with a timeout."""
    data = getattr(sock, "_leftover", b"")
    while not data.endswith(b"0\r\n\r\n") and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock._leftover = b""
    return data


def big_dataset(test, rows=40000):
    """A JSON array of about 10 MB, written to a file removed after the test."""
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    f.write("[" + ",".join('{"id":%d,"pad":"%s"}' % (i, "x" * 230) for i in range(rows)) + "]")
    f.close()
    test.addCleanup(os.unlink, f.name)
    return f.name


def read_slowly_then_all(sock, seconds, rate):
    """Reads rate bytes a second for seconds, then everything until EOF; returns what came (cut or whole)."""
    got = bytearray()
    t0 = time.monotonic()
    step = rate // 8
    while time.monotonic() - t0 < seconds:
        chunk = sock.recv(step)
        if not chunk:
            return bytes(got)
        got += chunk
        time.sleep(0.125)
    while (chunk := sock.recv(1 << 16)):
        got += chunk
    return bytes(got)


class Datasets(unittest.TestCase):
    def write(self, content):
        f = tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False)
        f.write(content)
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_data_flag_serves_another_file(self):
        users = [{"id": "1", "name": "Ada"}, {"id": "2", "name": "Linus"}]
        path = self.write(json.dumps(users).encode())
        with userd("--data", path) as srv:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            c.request("GET", "/v1/user")
            r = c.getresponse()
            self.assertEqual(json.loads(r.read()), users)

    def test_invalid_datasets_stop_start_up_with_one_line_and_exit_2(self):
        cases = [
            (b'[{"id": 1}, {"id": tru}]', "at byte 19"),
            (b'{"id": 1}', "expected a JSON array of objects"),
            (b'[{"id": 1}, "x"]', "element 1 is not an object at byte 12"),
            (b'[{"id": 1}', "invalid JSON"),
        ]
        for content, expect in cases:
            with self.subTest(content=content):
                path = self.write(content)
                code, err = run_userd("--listen", "127.0.0.1:0", "--data", path)
                self.assertEqual(code, 2)
                self.assertEqual(len(err.splitlines()), 1, err)
                self.assertTrue(err.startswith(f"userd: {path}: "), err)
                self.assertIn(expect, err)

    def test_missing_dataset_file(self):
        code, err = run_userd("--data", "/nonexistent/users.json")
        self.assertEqual(code, 2)
        self.assertEqual(err, "userd: /nonexistent/users.json: cannot read: No such file or directory\n")


class Environment(unittest.TestCase):
    def test_the_seeds_m1_variables_choose_address_and_path(self):
        port = free_port()
        env = {"M1_DOMAIN": "http://127.0.0.1", "M1_PORT": str(port), "M1_PATH": "/v9/people"}
        srv = Server([ARGS.userd, "--threads", "1", "--backend", ARGS.backend], env=env)
        try:
            self.assertEqual(srv.port, port)
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v9/people")
            r = c.getresponse()
            self.assertEqual((r.status, r.getheader("Location"), r.read()), (200, "/v9/people", DATASET))
            c.request("GET", "/v1/user")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 404)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_flags_win_over_the_environment(self):
        with Server([ARGS.userd, "--listen", "127.0.0.1:0", "--backend", ARGS.backend], env={"M1_PORT": "1"}) as srv:
            self.assertNotEqual(srv.port, 1)


class Example(unittest.TestCase):
    def test_route_parameters_query_values_and_the_peer_reach_an_embedders_handler(self):
        with Server([ARGS.hello, "127.0.0.1:0", ARGS.backend]) as srv:
            s = connect(srv.port)
            s.sendall(b"GET /greet/J%C3%BCrgen?punct=%21 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = read_response(s)
            self.assertEqual(status, 200)
            self.assertEqual(body.decode(), f"hello, J\u00fcrgen! from 127.0.0.1:{s.getsockname()[1]}\n")
            s.sendall(b"GET /greet/a%zz HTTP/1.1\r\nHost: t\r\n\r\n")  # malformed: 400, and it goes on
            self.assertEqual(read_response(s)[0], 400)
            s.sendall(b"GET /greet/ HTTP/1.1\r\nHost: t\r\n\r\n")  # {name} needs a non-empty segment
            self.assertEqual(read_response(s)[0], 404)
            s.sendall(b"POST /greet/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            status, headers, _ = read_response(s)
            self.assertEqual((status, headers.get("allow")), (405, "GET, HEAD"))
            s.close()

    def test_wrk_against_a_route_answered_from_four_pool_threads(self):
        with Server([ARGS.offload, "127.0.0.1:0", ARGS.backend]) as srv:
            self.assertEqual(get(srv.port, "/fib/20")[:2], (200, b'{"n":20,"fib":6765}'))
            out = subprocess.run(["wrk", "-t2", "-c48", "-d3s", "--timeout", "5s", f"http://127.0.0.1:{srv.port}/fib/15"],  # within its queue of 64
                                 capture_output=True, text=True, timeout=60).stdout
            self.assertNotIn("Socket errors", out, out)
            self.assertNotIn("Non-2xx", out, out)
            self.assertGreater(int(re.search(r"(\d+) requests in", out).group(1)), 1000, out)
            self.assertEqual(get(srv.port, "/fib/36")[0], 400)
            self.assertEqual(srv.stop(), 0)  # in the sanitizer build a leak or a race report changes this

    def test_the_rest_example_routes_parses_and_checks_its_key(self):
        with Server([ARGS.rest, "127.0.0.1:0", ARGS.backend]) as srv:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            key = {"X-Api-Key": "secret"}

            def call(method, path, body=None, headers=key):
                c.request(method, path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                return r.status, json.loads(data) if data else None

            self.assertEqual(call("GET", "/v1/users", headers={})[0], 401)  # the middleware answers
            self.assertEqual(call("POST", "/v1/users", json.dumps({"name": "Ada", "email": "ada@example.org"})),
                             (201, {"id": 1, "name": "Ada", "email": "ada@example.org"}))
            self.assertEqual(call("POST", "/v1/users", json.dumps({"name": "Alan \"T\"", "email": "a@t"}))[0], 201)
            self.assertEqual(call("POST", "/v1/users", json.dumps({"name": "Grace", "email": "g@h"}))[0], 201)
            self.assertEqual(call("POST", "/v1/users", "{not json")[0], 400)
            self.assertEqual(call("GET", "/v1/users/2"), (200, {"id": 2, "name": 'Alan "T"', "email": "a@t"}))
            self.assertEqual([u["name"] for u in call("GET", "/v1/users?prefix=A")[1]], ["Ada", 'Alan "T"'])
            self.assertEqual([u["id"] for u in call("GET", "/v1/users?prefix=Gr%61")[1]], [3])
            for bad in ("1abc", "1%2F..%2Fadmin", "+1", "%201", "99999999999999999999999", "0x1"):
                self.assertEqual(call("GET", f"/v1/users/{bad}")[0], 404, bad)  # not user 1
                self.assertEqual(call("DELETE", f"/v1/users/{bad}")[0], 404, bad)
            self.assertEqual(call("DELETE", "/v1/users/1")[0], 204)
            self.assertEqual(call("GET", "/v1/users/1")[0], 404)
            self.assertEqual(call("PUT", "/v1/users/2", "{}")[0], 405)
            self.assertEqual(call("GET", "/v1/users?prefix=%zz")[0], 400)
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_a_large_stream_to_a_slow_reader_costs_little_memory(self):
        size_mb = 10 if "ASAN_OPTIONS" in os.environ else 100  # the sanitizer build is ten times slower
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            def rss():
                return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{srv.pid}/status").read()).group(1))
            base = rss()
            lines = size_mb * 1_000_000 // 14  # {"n":1234567}\n is 14 bytes for most of them
            s = connect(srv.port, timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(f"GET /numbers?count={lines} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            got, peak, tail = 0, base, b""
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
                tail = (tail + chunk)[-64:]
                if tail.endswith(b"\r\n0\r\n\r\n"):
                    break
                if got % (1 << 22) < len(chunk):
                    peak = max(peak, rss())
                    time.sleep(0.01)  # a reader slower than the producer
            s.close()
            self.assertTrue(tail.endswith(b"\r\n0\r\n\r\n"), tail)
            self.assertIn(f'{{"n":{lines - 1}}}'.encode(), tail)
            self.assertGreater(got, size_mb * 1_000_000 * 0.9)
            self.assertLess(peak - base, 8 * 1024, f"RSS {base} kB, peak {peak} kB")
            self.assertEqual(srv.stop(), 0)

    def test_the_offload_example_skips_work_for_clients_that_left_and_bounds_its_queue(self):
        with Server([ARGS.offload, "127.0.0.1:0", ARGS.backend]) as srv:
            for _ in range(200):  # clients that ask for the most expensive answer and leave at once
                s = connect(srv.port)
                s.sendall(b"GET /fib/35 HTTP/1.1\r\nHost: t\r\n\r\n")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            time.sleep(0.2)
            t0 = time.monotonic()
            status, body, _, _ = get(srv.port, "/fib/20")
            self.assertEqual((status, body), (200, b'{"n":20,"fib":6765}'))
            self.assertLess(time.monotonic() - t0, 2.0)  # not behind 200 abandoned computations
            # A flood that stays: at most 64 wait, the rest are told at once.
            socks = [connect(srv.port, timeout=30) for _ in range(100)]
            for s in socks:
                s.sendall(b"GET /fib/30 HTTP/1.1\r\nHost: t\r\n\r\n")
            statuses = [read_response(s)[0] for s in socks]
            for s in socks:
                s.close()
            self.assertEqual(set(statuses) - {200, 503}, set())
            self.assertIn(503, statuses)
            self.assertGreaterEqual(statuses.count(200), 64)
            self.assertEqual(srv.stop(), 0)

    def test_the_stream_example_serves_many_tick_streams_from_one_thread(self):
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            socks = []
            for _ in range(200):
                s = connect(srv.port)
                s.sendall(b"GET /ticks?count=100000 HTTP/1.1\r\nHost: t\r\n\r\n")
                socks.append(s)
            for s in socks:
                self.assertIn(b"200 OK", s.recv(100))
            threads = len(os.listdir(f"/proc/{srv.pid}/task"))
            self.assertLess(threads, 8)  # the loop, the ticker, the main thread: not one per stream
            for s in socks:
                s.close()
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            c.request("GET", "/ticks?count=3")
            self.assertEqual(c.getresponse().read(), b'{"tick":0}\n{"tick":1}\n{"tick":2}\n')
            c.close()
            self.assertEqual(srv.stop(), 0)

    def test_a_graceful_stop_delivers_answers_and_streams_from_other_threads(self):
        with Server([ARGS.offload, "127.0.0.1:0", ARGS.backend]) as srv:
            socks = [connect(srv.port, timeout=15) for _ in range(16)]
            for s in socks:  # 16 requests for 4 pool threads: most are still waiting at the stop, even on a busy machine
                s.sendall(b"GET /fib/35 HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.05)
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            closing = 0
            for s in socks:
                status, headers, body = read_response(s)
                self.assertEqual((status, body), (200, b'{"n":35,"fib":9227465}'))
                closing += headers.get("connection") == "close"
                self.assertEqual(read_until_eof(s), b"")  # and closed right after it
                s.close()
            self.assertGreater(closing, 0)  # answered after the stop began
            self.assertEqual(srv.proc.wait(timeout=10), 0)
            self.assertLess(time.monotonic() - t0, 8)  # not held for the whole drain timeout
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            s = connect(srv.port, timeout=15)
            s.sendall(b"GET /ticks?count=50 HTTP/1.1\r\nHost: t\r\n\r\n")
            s.recv(1)  # the stream has begun
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            body = read_until_eof(s)
            self.assertTrue(body.endswith(b"\r\n0\r\n\r\n"), body[-40:])
            self.assertIn(b'{"tick":49}', body)
            self.assertEqual(srv.proc.wait(timeout=10), 0)
            self.assertLess(time.monotonic() - t0, 8)

    def test_head_on_a_streamed_route_answers_the_head_and_the_loop_goes_on(self):
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:  # one loop thread
            s = connect(srv.port, timeout=5)
            for path in ("/numbers?count=99999999999", "/ticks?count=99999999"):
                s.sendall(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                status, headers, body = read_response(s, head_only=True)
                self.assertEqual((status, headers.get("transfer-encoding"), body), (200, "chunked", b""))
            s.sendall(b"GET /numbers?count=2 HTTP/1.1\r\nHost: t\r\n\r\n")  # the same connection goes on
            self.assertIn(b'{"n":1}', read_until_chunked_end(s))
            # The one loop thread still serves everyone else, and stops when asked.
            self.assertEqual(get(srv.port, "/numbers?count=1")[:2], (200, b'{"n":0}\n'))
            s.close()
            t0 = time.monotonic()
            self.assertEqual(srv.stop(timeout=5), 0)
            self.assertLess(time.monotonic() - t0, 3)

    def test_streams_from_another_thread_and_a_client_that_leaves_mid_stream(self):
        with Server([ARGS.stream, "127.0.0.1:0", ARGS.backend]) as srv:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            c.request("GET", "/ticks?count=20")
            r = c.getresponse()
            self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
            lines = r.read().decode().splitlines()
            self.assertEqual([json.loads(l)["tick"] for l in lines], list(range(20)))
            c.request("GET", "/numbers?count=3")  # the same connection goes on
            self.assertEqual(c.getresponse().read(), b'{"n":0}\n{"n":1}\n{"n":2}\n')
            c.close()
            for path in ("/ticks?count=1000", "/numbers?count=100000000"):
                s = connect(srv.port)
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                s.recv(100)
                s.close()  # gone mid-stream
            time.sleep(0.3)
            self.assertEqual(get(srv.port, "/numbers?count=1")[:2], (200, b'{"n":0}\n'))
            self.assertEqual(srv.stop(), 0)  # in the sanitizer build a leak or an error report changes this

    def test_the_embedding_example_answers_now_and_later(self):
        srv = Server([ARGS.hello, "127.0.0.1:0", ARGS.backend])
        try:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            c.request("GET", "/hello?name=embedder")
            r = c.getresponse()
            self.assertEqual((r.status, r.read()), (200, b"hello, embedder\n"))
            waiter = connect(srv.port)
            waiter.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.2)
            c.request("GET", "/wake")
            r = c.getresponse()
            self.assertEqual(r.read(), b"woke one\n")
            status, _, body = read_response(waiter)
            self.assertEqual((status, body), (200, b"woken\n"))
            waiter.close()
        finally:
            self.assertEqual(srv.stop(), 0)


def main():
    global ARGS, DATASET
    ap = argparse.ArgumentParser()
    ap.add_argument("--userd", required=True)
    ap.add_argument("--hello", required=True)
    ap.add_argument("--offload", required=True)
    ap.add_argument("--rest", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--backend", choices=["io_uring", "epoll"], required=True)
    ARGS, rest = ap.parse_known_args()
    DATASET = open(ARGS.dataset, "rb").read()
    run_tests(sys.modules[__name__], f"integration-{ARGS.backend}", rest)


if __name__ == "__main__":
    main()
