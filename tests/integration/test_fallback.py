#!/usr/bin/env python3
"""io_uring refused (a seccomp filter like Docker's default): --backend auto serves on epoll after one log line;
--backend io_uring exits 2 with a message."""
import argparse
import http.client
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, fd_targets, run_tests  # noqa: E402

ARGS = None


class Fallback(unittest.TestCase):
    def test_auto_serves_on_epoll_when_io_uring_is_refused(self):
        srv = Server([ARGS.deny, ARGS.userd, "--listen", "127.0.0.1:0", "--backend", "auto", "--threads", "2"])
        try:
            notes = [l for l in srv.stderr_lines if "io_uring unavailable" in l]
            self.assertEqual(len(notes), 1, srv.stderr_lines)
            self.assertIn("Operation not permitted", notes[0])
            self.assertIn("(epoll, 2 threads)", srv.stderr_lines[-1])
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            for _ in range(3):
                c.request("GET", "/v1/user")
                r = c.getresponse()
                self.assertEqual((r.status, r.getheader("Engine")), (200, "userd/epoll"))
                self.assertEqual(len(r.read()), 3696)
            fds = fd_targets(srv.pid)
            self.assertNotIn("anon_inode:[io_uring]", fds)
            self.assertEqual(fds.count("anon_inode:[eventpoll]"), 2)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_explicit_io_uring_refused_exits_2_with_a_message(self):
        p = subprocess.run([ARGS.deny, ARGS.userd, "--listen", "127.0.0.1:0", "--backend", "io_uring"],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 2)
        self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
        self.assertIn("--backend io_uring refused", p.stderr)
        self.assertIn("Operation not permitted", p.stderr)

    def test_without_the_filter_auto_picks_io_uring(self):
        with Server([ARGS.userd, "--listen", "127.0.0.1:0", "--threads", "1"]) as srv:
            if any("io_uring unavailable" in l for l in srv.stderr_lines):
                self.skipTest("io_uring is refused on this machine itself")
            self.assertIn("(io_uring, 1 threads)", srv.stderr_lines[-1])


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--userd", required=True)
    ap.add_argument("--deny", required=True)
    ARGS = ap.parse_args()
    run_tests(sys.modules[__name__], "fallback", ())


if __name__ == "__main__":
    main()
