#!/usr/bin/env python3
"""Proxy tests: userd as the seed's microservice1 in front of a real upstream: another userd (the seed's pair)
or fake_upstream.py misbehaving on command. Run once per backend (--backend io_uring|epoll)."""
import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import re
import socket
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Server, connect, free_port, get, read_response, read_until_eof, run_tests  # noqa: E402

ARGS = None
DATASET = b""
GET = b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n"


def userd(*flags):
    return Server([ARGS.userd, "--listen", "127.0.0.1:0", "--backend", ARGS.backend, "--threads", "2", *flags])


def fake(mode, port=0, *flags):
    return Server([sys.executable, os.path.join(HERE, "fake_upstream.py"), mode, ARGS.dataset, "--port", str(port),
                   *flags])


def stop_ok(test, server):
    """Cleanup: the server must stop with exit 0 (a sanitizer report or a crash would change it)."""
    test.assertEqual(server.stop(), 0, server.stderr_lines[-5:])


class SeedPair(unittest.TestCase):
    """microservice2 = userd serving /v1/avatar; microservice1 = userd proxying /v1/user to it."""

    @classmethod
    def setUpClass(cls):
        cls.m2 = userd()
        cls.m1 = userd("--upstream", f"http://127.0.0.1:{cls.m2.port}/v1/avatar")
        cls.port = cls.m1.port

    @classmethod
    def tearDownClass(cls):
        assert cls.m1.stop() == 0
        assert cls.m2.stop() == 0

    def test_bodies_and_headers_match_the_seed(self):
        status, body, _, r = get(self.port)
        self.assertEqual((status, body), (200, DATASET))
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertEqual(r.getheader("Engine"), f"userd/{ARGS.backend}")
        self.assertEqual(r.getheader("Location"), "/v1/user")
        self.assertEqual(r.getheader("Content-Length"), "3696")
        self.assertIsNotNone(r.getheader("Date"))

    def test_a_thousand_keep_alive_requests(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for _ in range(1000):
            status, body, _, _ = get(self.port, conn=c)
            self.assertEqual((status, body), (200, DATASET))
        c.close()

    def test_fifty_pipelined_requests(self):
        s = connect(self.port)
        s.sendall(GET * 50)
        for _ in range(50):
            status, _, body = read_response(s)
            self.assertEqual((status, body), (200, DATASET))
        s.close()

    def test_two_hundred_concurrent_clients(self):
        def client(_):
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            ok = sum(get(self.port, conn=c)[:2] == (200, DATASET) for _ in range(5))
            c.close()
            return ok
        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            self.assertEqual(sum(pool.map(client, range(200))), 1000)

    def test_upstream_metrics_count_results_and_pooled_connections(self):
        get(self.port)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        ok = [l for l in text.splitlines() if l.startswith("userd_upstream_requests_total{") and 'result="ok"' in l]
        self.assertEqual(len(ok), 1, text)
        self.assertGreater(float(ok[0].rsplit(" ", 1)[1]), 0)
        pool = [l for l in text.splitlines() if l.startswith("userd_upstream_pool_connections{")]
        self.assertEqual(len(pool), 1)
        self.assertGreater(float(pool[0].rsplit(" ", 1)[1]), 0)

    def test_avatar_is_served_locally(self):
        self.assertEqual(get(self.port, "/v1/avatar")[:2], (200, DATASET))


class Misbehaving(unittest.TestCase):
    def through(self, mode, *flags):
        up = fake(mode)
        self.addCleanup(up.stop)  # the fake upstream dies by signal: its code is not ours
        m1 = userd("--upstream", f"http://127.0.0.1:{up.port}/v1/avatar", *flags)
        self.addCleanup(stop_ok, self, m1)
        return m1

    def assert_error(self, port, want, limit, conn=None):
        status, body, took, r = get(port, conn=conn)
        self.assertEqual(status, want, body)
        self.assertIn("error", json.loads(body))
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertLess(took, limit)
        return took

    def assert_keeps_serving(self, port, conn):
        # The same keep-alive connection still works, and so does the local route.
        self.assertEqual(get(port, "/v1/avatar", conn=conn)[:2], (200, DATASET))

    def test_chunked_upstream_body_is_forwarded_whole(self):
        m1 = self.through("chunked")
        for _ in range(20):
            self.assertEqual(get(m1.port)[:2], (200, DATASET))

    def test_slow_body_within_the_timeout_arrives_and_its_time_is_measured(self):
        m1 = self.through("slow", "--upstream-timeout", "2")
        t0 = time.monotonic()
        self.assertEqual(get(m1.port)[:2], (200, DATASET))
        took = time.monotonic() - t0
        # The duration histogram saw it: about 0.4 s (four 0.1 s pauses), whichever clock the loop reads.
        text = get(m1.port, "/metrics")[1].decode()
        total = float(re.search(r"^userd_request_duration_seconds_sum (\S+)$", text, re.M).group(1))
        below = int(re.search(r'^userd_request_duration_seconds_bucket\{le="0.25"\} (\d+)$', text, re.M).group(1))
        upto = int(re.search(r'^userd_request_duration_seconds_bucket\{le="1"\} (\d+)$', text, re.M).group(1))
        self.assertGreater(total, 0.3)
        self.assertLessEqual(total, took + 0.05)
        self.assertEqual(upto - below, 1)

    def test_slow_body_past_the_timeout_is_504(self):
        m1 = self.through("slow", "--upstream-timeout", "0.2")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        took = self.assert_error(m1.port, 504, 1.0, conn=c)
        self.assertGreater(took, 0.15)
        self.assert_keeps_serving(m1.port, c)

    def test_invalid_json_is_502(self):
        m1 = self.through("invalid")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        self.assert_error(m1.port, 502, 1.0, conn=c)
        self.assert_keeps_serving(m1.port, c)

    def test_invalid_json_passes_with_no_validate(self):
        m1 = self.through("invalid", "--no-validate")
        self.assertEqual(get(m1.port)[:2], (200, b'[{"id": "1", "name": '))

    def test_upstream_500_is_502(self):
        m1 = self.through("status500")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        self.assert_error(m1.port, 502, 1.0, conn=c)
        self.assert_keeps_serving(m1.port, c)

    def test_body_cut_short_then_close_is_502(self):
        m1 = self.through("cut")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        self.assert_error(m1.port, 502, 1.0, conn=c)
        self.assert_keeps_serving(m1.port, c)

    def test_upstream_that_accepts_and_stalls_is_504_at_the_timeout(self):
        m1 = self.through("stall", "--upstream-timeout", "0.5")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        took = self.assert_error(m1.port, 504, 1.5, conn=c)
        self.assertGreater(took, 0.4)
        self.assert_keeps_serving(m1.port, c)

    def test_refused_upstream_is_502_at_once(self):
        m1 = userd("--upstream", f"http://127.0.0.1:{free_port()}/v1/avatar")
        self.addCleanup(stop_ok, self, m1)
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        for _ in range(3):
            self.assert_error(m1.port, 502, 0.5, conn=c)
        self.assert_keeps_serving(m1.port, c)

    def test_upstream_closing_after_each_answer_is_retried_transparently(self):
        m1 = self.through("close")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        for _ in range(30):
            self.assertEqual(get(m1.port, conn=c)[:2], (200, DATASET))

    def test_clients_that_leave_mid_request_break_nothing(self):
        m1 = self.through("slow", "--upstream-timeout", "2", "--upstream-conns", "2")
        for _ in range(6):
            s = connect(m1.port)
            s.sendall(GET)
            s.close()  # gone while userd waits for the slow upstream
        time.sleep(0.6)
        for _ in range(3):
            self.assertEqual(get(m1.port)[:2], (200, DATASET))

    def test_upstream_down_then_back_is_served_again_without_restart(self):
        port = free_port()
        m2 = Server([ARGS.userd, "--listen", f"127.0.0.1:{port}", "--backend", ARGS.backend, "--threads", "1"])
        m1 = userd("--upstream", f"http://127.0.0.1:{port}/v1/avatar")
        self.addCleanup(stop_ok, self, m1)
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        self.assertEqual(get(m1.port, conn=c)[:2], (200, DATASET))
        self.assertEqual(m2.stop(), 0)
        for _ in range(5):
            self.assert_error(m1.port, 502, 1.0, conn=c)
        m2 = Server([ARGS.userd, "--listen", f"127.0.0.1:{port}", "--backend", ARGS.backend, "--threads", "1"])
        self.addCleanup(stop_ok, self, m2)
        for _ in range(20):
            self.assertEqual(get(m1.port, conn=c)[:2], (200, DATASET))

    def assert_framing_refused(self, mode):
        up = fake(mode, 0, "--log-accepts")
        m1 = userd("--upstream", f"http://127.0.0.1:{up.port}/v1/avatar", "--threads", "1")
        self.addCleanup(stop_ok, self, m1)
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        for _ in range(3):
            self.assert_error(m1.port, 502, 1.0, conn=c)
        self.assert_keeps_serving(m1.port, c)
        up.stop()
        # Each answer closed its upstream connection: three requests, three connections.
        self.assertEqual(sum(l == "accepted" for l in up.stderr_lines), 3, up.stderr_lines)
        text = get(m1.port, "/metrics")[1].decode()
        self.assertRegex(text, r'userd_upstream_requests_total\{[^}]*result="bad_response"\} 3')

    def test_an_unrequested_101_is_502_and_its_connection_closed(self):
        self.assert_framing_refused("upgrade")

    def test_transfer_encoding_with_content_length_is_502_and_its_connection_closed(self):
        self.assert_framing_refused("te_and_cl")

    def test_a_transfer_encoding_other_than_chunked_is_502_not_forwarded(self):
        self.assert_framing_refused("gzip")

    def test_the_upstream_queue_is_bounded_and_overflow_is_503_at_once(self):
        m1 = self.through("stall", "--threads", "1", "--upstream-conns", "1", "--upstream-queue", "2",
                          "--upstream-timeout", "2")
        socks = []
        for _ in range(6):
            s = connect(m1.port)
            s.sendall(GET)
            socks.append(s)
        results = []
        for s in socks:
            t0 = time.monotonic()
            status, _, body = read_response(s)
            results.append((status, time.monotonic() - t0, json.loads(body)["error"]))
            s.close()
        fast = [r for r in results if r[0] == 503]
        self.assertEqual(len(fast), 3, results)  # one in flight, two queued, three refused
        for _, took, error in fast:
            self.assertLess(took, 0.5)
            self.assertEqual(error, "too many upstream requests queued")
        self.assertEqual(sorted(r[0] for r in results), [503, 503, 503, 504, 504, 504])
        text = get(m1.port, "/metrics")[1].decode()
        self.assertRegex(text, r'userd_upstream_requests_total\{[^}]*result="overloaded"\} 3')

    def test_the_handler_timeout_answers_503_before_a_longer_upstream_timeout(self):
        m1 = self.through("stall", "--upstream-timeout", "10", "--handler-timeout", "0.5")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        status, body, took, _ = get(m1.port, conn=c)
        self.assertEqual((status, json.loads(body)), (503, {"error": "handler timed out"}))
        self.assertGreater(took, 0.4)
        self.assertLess(took, 1.5)
        self.assert_keeps_serving(m1.port, c)

    def test_failures_are_logged_at_most_once_a_second_per_cause(self):
        m1 = userd("--upstream", f"http://127.0.0.1:{free_port()}/v1/avatar", "--threads", "1")
        c = http.client.HTTPConnection("127.0.0.1", m1.port, timeout=10)
        t0 = time.monotonic()
        for _ in range(200):
            self.assertEqual(get(m1.port, conn=c)[0], 502)
        seconds = time.monotonic() - t0
        self.assertEqual(m1.stop(), 0)
        logged = [l for l in m1.stderr_lines if "upstream unreachable" in l]
        self.assertGreaterEqual(len(logged), 1)
        self.assertLessEqual(len(logged), int(seconds) + 2, logged)


class GracefulStop(unittest.TestCase):
    def test_sigterm_finishes_requests_in_flight_and_closes_idle_ones(self):
        up = fake("slow")  # the body takes about 0.4 s
        self.addCleanup(up.stop)
        m1 = userd("--upstream", f"http://127.0.0.1:{up.port}/v1/avatar", "--upstream-timeout", "5")
        idle = connect(m1.port)
        idle.sendall(GET)
        self.assertEqual(read_response(idle)[0], 200)  # a keep-alive connection, now idle
        busy = connect(m1.port)
        busy.sendall(GET)  # in flight on the slow upstream
        time.sleep(0.1)
        t0 = time.monotonic()
        m1.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        with self.assertRaises(ConnectionRefusedError):  # the listeners close at once
            socket.create_connection(("127.0.0.1", m1.port), timeout=1)
        self.assertEqual(read_until_eof(idle), b"")  # the idle one is closed without a word
        status, headers, body = read_response(busy)  # the busy one gets its answer, then the close
        self.assertEqual((status, body), (200, DATASET))
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(m1.stop(), 0)
        self.assertLess(time.monotonic() - t0, 3)

    def test_the_drain_timeout_bounds_the_wait(self):
        up = fake("stall")
        self.addCleanup(up.stop)
        m1 = userd("--upstream", f"http://127.0.0.1:{up.port}/v1/avatar", "--upstream-timeout", "30",
                   "--drain-timeout", "0.5")
        busy = connect(m1.port)
        busy.sendall(GET)
        time.sleep(0.1)
        t0 = time.monotonic()
        self.assertEqual(m1.stop(), 0)
        self.assertLess(time.monotonic() - t0, 2)
        busy.close()


class Embedding(unittest.TestCase):
    def test_the_gateway_example_answers_now_and_after_its_upstream(self):
        m2 = userd()
        self.addCleanup(stop_ok, self, m2)
        gw = Server([ARGS.gateway, "127.0.0.1:0", f"127.0.0.1:{m2.port}"])
        self.addCleanup(stop_ok, self, gw)
        self.assertEqual(get(gw.port, "/now")[:2], (200, b'{"now":true}'))
        self.assertEqual(get(gw.port, "/users")[:2], (200, DATASET))


class Environment(unittest.TestCase):
    def test_an_upstream_name_that_does_not_resolve_is_one_line_in_the_resolvers_words_and_exit_2(self):
        p = subprocess.run([ARGS.userd, "--listen", "127.0.0.1:0", "--backend", ARGS.backend,
                            "--upstream", "http://no-such-host.invalid:3000/v1/avatar"],
                           capture_output=True, timeout=30)
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 2, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("resolve upstream address", err)
        self.assertNotIn("Invalid argument", err)  # the resolver's reason, not a made-up errno
        self.assertRegex(err, r"resolve upstream address: \S")

    def test_the_seeds_m2_variables_turn_the_proxy_on(self):
        m2 = userd()
        self.addCleanup(stop_ok, self, m2)
        env = {"M2_DOMAIN": "http://127.0.0.1", "M2_PORT": str(m2.port), "M2_PATH": "/v1/avatar"}
        m1 = Server([ARGS.userd, "--listen", "127.0.0.1:0", "--backend", ARGS.backend], env=env)
        self.addCleanup(stop_ok, self, m1)
        self.assertTrue(any("proxies to http://127.0.0.1:%d/v1/avatar" % m2.port in l for l in m1.stderr_lines))
        self.assertEqual(get(m1.port)[:2], (200, DATASET))


class Overload(unittest.TestCase):
    """200 clients through a small pool to an upstream that drops keep-alive connections at random: retries,
    a queue that never empties, connections settling and closing. Runs in the sanitizer build too, where a
    use-after-free or a leak ends userd with a report, and the exit code check fails the test."""

    def test_two_hundred_clients_through_a_flaky_upstream(self):
        up = fake("flaky")
        self.addCleanup(up.stop)
        m1 = userd("--upstream", f"http://127.0.0.1:{up.port}/v1/avatar", "--upstream-conns", "8",
                   "--upstream-timeout", "5")
        out = subprocess.run(["wrk", "-t2", "-c200", "-d8s", "--timeout", "10s", f"http://127.0.0.1:{m1.port}/v1/user"],
                             capture_output=True, text=True, timeout=60).stdout
        after = get(m1.port)
        self.assertIn(after[0], (200, 502), after[1])
        text = get(m1.port, "/metrics")[1].decode()
        stop_ok(self, m1)
        codes = {}
        for m in re.finditer(r'(?m)^userd_requests_total\{route="/v1/user",code="(\w+)"\} (\d+)', text):
            codes[m.group(1)] = codes.get(m.group(1), 0) + int(m.group(2))
        answered = sum(codes.values())
        self.assertGreater(answered, 500, out)
        self.assertEqual(set(k for k, v in codes.items() if v) - {"200", "502", "503", "504"}, set(), codes)
        self.assertGreater(codes.get("200", 0), answered * 0.8, codes)  # retries hide most of the drops
        retries = re.search(r"(?m)^userd_upstream_retries_total\{[^}]*\} (\d+)", text)
        self.assertIsNotNone(retries, text)
        self.assertGreater(int(retries.group(1)), 0)  # the drops did happen, and were retried


def main():
    global ARGS, DATASET
    ap = argparse.ArgumentParser()
    ap.add_argument("--userd", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--backend", choices=["io_uring", "epoll"], required=True)
    ARGS, rest = ap.parse_known_args()
    DATASET = open(ARGS.dataset, "rb").read()
    run_tests(sys.modules[__name__], f"proxy-{ARGS.backend}", rest)


if __name__ == "__main__":
    main()
