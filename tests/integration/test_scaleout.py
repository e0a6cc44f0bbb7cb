#!/usr/bin/env python3
"""Scaling out: two userd instances behind nginx (Debian's package) on loopback. Both receive traffic, and one
stopping gracefully under load loses no request: its listener closes (nginx moves on), its requests in flight
finish."""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import http.client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, free_port, run_tests  # noqa: E402

ARGS = None


def nginx_in_front(ports):
    tmp = tempfile.mkdtemp(prefix="userd-lb-")
    port = free_port()
    servers = "".join(f"server 127.0.0.1:{p} max_fails=0;" for p in ports)
    conf = f"""daemon off; master_process off; worker_processes 1; pid {tmp}/nginx.pid; error_log stderr crit;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  upstream userd {{ {servers} keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://userd;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""
    open(f"{tmp}/nginx.conf", "w").write(conf)
    proc = subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf"], stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: __import__("ctypes").CDLL(None).prctl(1, signal.SIGTERM))
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            c.getresponse().read()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start")


def served_requests(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    m = re.search(r'^userd_requests_total\{route="/v1/user",code="200"\} (\d+)$', text, re.M)
    return int(m.group(1)) if m else 0


class ScaleOut(unittest.TestCase):
    def test_two_instances_share_the_load_and_one_stops_without_losing_a_request(self):
        a = Server([ARGS.userd, "--listen", "127.0.0.1:0", "--threads", "1"])
        b = Server([ARGS.userd, "--listen", "127.0.0.1:0", "--threads", "1"])
        lb, port = nginx_in_front([a.port, b.port])
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for _ in range(100):
                c.request("GET", "/v1/user")
                r = c.getresponse()
                self.assertEqual((r.status, len(r.read())), (200, 3696))
            self.assertGreater(served_requests(a.port), 10)  # nginx round-robins: both take a share
            self.assertGreater(served_requests(b.port), 10)

            out = subprocess.Popen(["wrk", "-t1", "-c20", "-d4s", f"http://127.0.0.1:{port}/v1/user"],
                                   stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)
            self.assertEqual(a.stop(signal.SIGTERM), 0)  # graceful, under load
            text = out.communicate(timeout=30)[0]
            requests = int(re.search(r"(\d+) requests in", text).group(1))
            self.assertGreater(requests, 1000, text)
            self.assertNotIn("Non-2xx", text)
            self.assertNotIn("Socket errors", text)
            self.assertGreater(served_requests(b.port), 100)
        finally:
            lb.send_signal(signal.SIGTERM)
            lb.wait(timeout=10)
            if a.proc.poll() is None:
                a.stop()
            self.assertEqual(b.stop(), 0)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--userd", required=True)
    ARGS = ap.parse_args()
    run_tests(sys.modules[__name__], "scaleout", ())


if __name__ == "__main__":
    main()
