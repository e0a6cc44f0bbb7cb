#!/usr/bin/env python3
"""TLS tests: userd's HTTPS listener, mutual TLS (examples/tls), an HTTPS upstream, reloads and bad input, with
real clients (curl, Python's ssl, openssl s_client, wrk). Certificates are made here with the openssl command;
no key is committed. Run once per backend (--backend io_uring|epoll)."""
import argparse
import concurrent.futures
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Server, allocation_count, fd_targets, run_tests, said  # noqa: E402

ARGS = None
DATASET = b""
PKI = None  # folder of certificates, made once


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{PKI}/{name}.key", "-out", f"{PKI}/{name}.pem", "-days", "2", "-subj", f"/CN=userd test {name}")


def make_cert(name, ca, cn, server=True):
    """A leaf signed by ca: for a server, valid for localhost and 127.0.0.1."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{PKI}/{name}.key", "-out", f"{PKI}/{name}.csr", "-subj", f"/CN={cn}/O=userd tests")
    ext = f"{PKI}/{name}.ext"
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n")
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
                else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{PKI}/{name}.csr", "-CA", f"{PKI}/{ca}.pem", "-CAkey", f"{PKI}/{ca}.key",
            "-CAcreateserial", "-out", f"{PKI}/{name}.pem", "-days", "2", "-extfile", ext)


def pki(name):
    return os.path.join(PKI, name)


def userd(*flags, tls=True, plain=True, threads=2, cert="server"):
    argv = [ARGS.userd, "--backend", ARGS.backend, "--threads", str(threads), *flags]
    if plain:
        argv += ["--listen", "127.0.0.1:0"]
    if tls:
        argv += ["--tls-listen", "127.0.0.1:0", "--tls-cert", pki(f"{cert}.pem"), "--tls-key", pki(f"{cert}.key")]
    srv = Server(argv)
    srv.tls_port = int(said(srv, r"HTTPS listening on \S+:(\d+)")) if tls else None
    if plain:
        srv.port = int(said(srv, r"userd: listening on \S+:(\d+)"))
    return srv


def client_context(ca="ca", cert=None, maximum=None):
    ctx = ssl.create_default_context(cafile=pki(f"{ca}.pem"))
    if cert:
        ctx.load_cert_chain(pki(f"{cert}.pem"), pki(f"{cert}.key"))
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def https_get(port, path="/v1/user", ctx=None, conn=None, host="localhost"):
    c = conn or http.client.HTTPSConnection(host, port, context=ctx or client_context(), timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read(), c


def metric(srv, name):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    return int(m.group(1))


def closed_without_answer(port, payload, wait=3.0):
    """Sends raw bytes to the TLS port; True when the server closes without sending an HTTP response."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(payload)
        got = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    return not got.startswith(b"HTTP/")
                got += d
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def stop_ok(test, srv):
    test.assertEqual(srv.stop(), 0, srv.stderr_lines[-5:])


class Https(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = userd("--header-timeout", "1")

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.stderr_lines[-5:]

    def assert_still_serving(self):
        status, body, c = https_get(self.srv.tls_port)
        c.close()
        self.assertEqual((status, body), (200, DATASET))

    def test_curl_with_the_ca(self):
        out = subprocess.run(["curl", "-sS", "--cacert", pki("ca.pem"), "-w", "\n%{http_version} %{ssl_verify_result}",
                              f"https://localhost:{self.srv.tls_port}/v1/user"], capture_output=True, timeout=20)
        body, _, tail = out.stdout.rpartition(b"\n")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(body, DATASET)
        self.assertEqual(tail, b"2 0")  # ALPN h2, verified

    def test_curl_without_the_ca_refuses(self):
        out = subprocess.run(["curl", "-sS", f"https://localhost:{self.srv.tls_port}/v1/user"], capture_output=True,
                             timeout=20)
        self.assertNotEqual(out.returncode, 0)

    def test_python_1000_keep_alive_requests(self):
        c = None
        for _ in range(1000):
            status, body, c = https_get(self.srv.tls_port, conn=c)
            self.assertEqual((status, body), (200, DATASET))
        self.assertEqual(c.sock.version(), "TLSv1.3")
        c.close()

    def test_alpn_prefers_h2_then_http11(self):
        for offer, want in ((["h2", "http/1.1"], "h2"), (["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"),
                            (["h2"], "h2"), (["spdy/3"], None)):
            ctx = client_context()
            ctx.set_alpn_protocols(offer)
            with socket.create_connection(("127.0.0.1", self.srv.tls_port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    self.assertEqual(s.selected_alpn_protocol(), want, offer)
                    if want == "h2":  # the server's preface: a SETTINGS frame, once ours is in
                        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                        self.assertEqual(s.recv(9)[3], 4)
                    else:  # no ALPN answer means HTTP/1.1
                        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 200"))

    def test_tls12_works_and_tls11_is_refused(self):
        status, body, c = https_get(self.srv.tls_port, ctx=client_context(maximum=ssl.TLSVersion.TLSv1_2))
        self.assertEqual(c.sock.version(), "TLSv1.2")
        c.close()
        self.assertEqual((status, body), (200, DATASET))
        ctx = client_context()
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # so that this client really offers TLS 1.1
        before = metric(self.srv, "userd_tls_handshake_failures_total")
        with self.assertRaisesRegex(ssl.SSLError, "PROTOCOL_VERSION"):  # the server's alert says why
            https_get(self.srv.tls_port, ctx=ctx)
        # The server saw the hello and refused it (not the client declining to send one).
        self.assertEqual(metric(self.srv, "userd_tls_handshake_failures_total") - before, 1)

    def test_session_resumption(self):
        before = metric(self.srv, "userd_tls_resumed_total")
        for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(maximum=maximum)
            with socket.create_connection(("127.0.0.1", self.srv.tls_port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.recv(1000)  # TLS 1.3 tickets arrive after the handshake
                    session = s.session
            with socket.create_connection(("127.0.0.1", self.srv.tls_port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.recv(1000)
                    self.assertTrue(s.session_reused, maximum)
        self.assertEqual(metric(self.srv, "userd_tls_resumed_total") - before, 2)

    def test_openssl_s_client(self):
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{self.srv.tls_port}", "-CAfile",
                              pki("ca.pem"), "-servername", "localhost", "-verify_return_error", "-quiet",
                              "-alpn", "http/1.1"],
                             input=b"GET /v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                             capture_output=True, timeout=20)
        self.assertIn(b"HTTP/1.1 200 OK", out.stdout)
        self.assertTrue(out.stdout.endswith(DATASET), out.stdout[-100:])

    def test_wrk_over_https(self):
        out = subprocess.run(["wrk", "-t1", "-c20", "-d2s", f"https://127.0.0.1:{self.srv.tls_port}/v1/user"],
                             capture_output=True, text=True, timeout=30).stdout
        self.assertNotIn("Non-2xx", out)
        self.assertNotIn("Socket errors", out)
        self.assertGreater(int(re.search(r"(\d+) requests in", out).group(1)), 1000)

    def test_plaintext_http_to_the_tls_port_is_closed(self):
        before = metric(self.srv, "userd_tls_handshake_failures_total")
        self.assertTrue(closed_without_answer(self.srv.tls_port, b"GET /v1/user HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertTrue(closed_without_answer(self.srv.tls_port, os.urandom(3000)))
        self.assertGreaterEqual(metric(self.srv, "userd_tls_handshake_failures_total") - before, 2)
        self.assert_still_serving()

    def test_truncated_and_stalled_handshakes(self):
        hello = self.client_hello()
        before = metric(self.srv, "userd_tls_handshake_failures_total")
        # Truncated: half a ClientHello, then the client goes.
        with socket.create_connection(("127.0.0.1", self.srv.tls_port)) as s:
            s.sendall(hello[: len(hello) // 2])
        # Stalled: half a ClientHello, then silence: the header timeout (1 s here) closes it.
        t0 = time.monotonic()
        self.assertTrue(closed_without_answer(self.srv.tls_port, hello[: len(hello) // 2], wait=5))
        self.assertLess(time.monotonic() - t0, 4)
        # Silent from the start.
        t0 = time.monotonic()
        self.assertTrue(closed_without_answer(self.srv.tls_port, b"", wait=5))
        self.assertLess(time.monotonic() - t0, 4)
        self.assertGreaterEqual(metric(self.srv, "userd_tls_handshake_failures_total") - before, 2)
        self.assert_still_serving()

    def client_hello(self):
        """The bytes of a real ClientHello, from Python's ssl through memory BIOs."""
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_context().wrap_bio(inc, out, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return out.read()

    def test_renegotiation_is_refused_with_a_close(self):
        before = metric(self.srv, "userd_tls_record_failures_total")
        p = subprocess.Popen(["openssl", "s_client", "-tls1_2", "-connect", f"127.0.0.1:{self.srv.tls_port}",
                              "-CAfile", pki("ca.pem"), "-servername", "localhost"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        p.stdin.write(b"R\n")  # s_client's command: renegotiate
        p.stdin.flush()
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            self.fail("the connection was not closed after a renegotiation attempt")
        self.assertIn(b"RENEGOTIATING", out)
        self.assertEqual(metric(self.srv, "userd_tls_record_failures_total") - before, 1)
        self.assert_still_serving()

    def test_client_closes_mid_record(self):
        before = metric(self.srv, "userd_tls_record_failures_total")
        ctx = client_context()
        raw = socket.create_connection(("127.0.0.1", self.srv.tls_port))
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1000)
        plain = socket.socket(fileno=s.detach())
        plain.sendall(b"\x17\x03\x03\x01\x00" + b"x" * 40)  # an application record cut short
        plain.close()
        for _ in range(50):  # counted once the server has seen the close
            if metric(self.srv, "userd_tls_record_failures_total") > before:
                break
            time.sleep(0.02)
        self.assertEqual(metric(self.srv, "userd_tls_record_failures_total"), before + 1)
        # And a record that is complete but forged.
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.srv.tls_port)), server_hostname="localhost")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1000)
        plain = socket.socket(fileno=s.detach())
        plain.settimeout(5)
        plain.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))
        self.assertEqual(plain.recv(100), b"")  # closed: a record that does not authenticate
        plain.close()
        self.assert_still_serving()

    def test_many_clients_at_once(self):
        def one(_):
            c = None
            for _ in range(50):
                status, body, c = https_get(self.srv.tls_port, conn=c)
                if (status, body) != (200, DATASET):
                    return False
            c.close()
            return True
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            self.assertTrue(all(pool.map(one, range(32))))

    def test_large_request_body_over_tls(self):
        # Over the 16 KiB record size and the receive buffers: a 413 for the daemon's GET-only routes comes after
        # the whole body was read, decrypted record by record.
        c = http.client.HTTPSConnection("localhost", self.srv.tls_port, context=client_context(), timeout=10)
        c.request("POST", "/v1/user", body=b"x" * 300_000)
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 405)
        status, body, _ = https_get(self.srv.tls_port, conn=c)
        self.assertEqual((status, body), (200, DATASET))
        c.close()


@unittest.skipIf("ASAN_OPTIONS" in os.environ, "RSS figures mean nothing under ASan's quarantine")
class Memory(unittest.TestCase):
    def test_clients_that_never_read_a_large_answer_hold_little_memory(self):
        """Found from outside: 40 TLS clients that never read a 4.9 MB answer took RSS from 14 MB to 412 MB, the
        whole answer encrypted at once, twice over; a plain connection holds 6 KiB. Ciphertext is now made only a
        few records ahead of what the socket takes."""
        data = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json_rows = ",".join('{"id":%d,"pad":"%s"}' % (i, "x" * 230) for i in range(20000))
        data.write("[" + json_rows + "]")
        data.close()
        self.addCleanup(os.unlink, data.name)
        size = os.path.getsize(data.name)
        srv = userd("--data", data.name, "--threads", "1", "--send-timeout", "60", plain=False)
        try:
            def rss():
                return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{srv.pid}/status").read()).group(1))
            ctx = client_context()
            warm = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.tls_port), timeout=10),
                                   server_hostname="localhost")
            warm.sendall(b"GET /v1/user HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            got = b""
            while (chunk := warm.recv(1 << 16)):
                got += chunk
            self.assertGreater(len(got), size)  # one whole answer, read: the server has warmed up
            warm.close()
            base = rss()
            clients = []
            for _ in range(40):
                raw = socket.socket()
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                raw.settimeout(10)
                raw.connect(("127.0.0.1", srv.tls_port))
                c = ctx.wrap_socket(raw, server_hostname="localhost")
                c.sendall(b"GET /v1/user HTTP/1.1\r\nHost: t\r\n\r\n")
                clients.append(c)
            time.sleep(1.0)
            grown = rss() - base
            for c in clients:
                c.close()
            print(f"RSS grew {grown} kB for 40 clients", file=sys.stderr)
            self.assertLess(grown, 16 * 1024, f"RSS grew {grown} kB for 40 clients of a {size} byte answer")
            status, body, c = https_get(srv.tls_port)
            c.close()
            self.assertEqual(status, 200)
            self.assertEqual(len(body), size)
        finally:
            stop_ok(self, srv)


    def test_a_burst_of_tls_clients_gives_its_memory_back(self):
        """Found by the attack: after 2,000 TLS connections closed, RSS stayed at its peak: OpenSSL's frees never
        led to a heap trim, and every idle slot kept its buffers."""
        srv = userd("--threads", "1", "--max-tls-handshakes", "4000", plain=True)
        try:
            def rss():
                return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{srv.pid}/status").read()).group(1))
            ctx = client_context()
            base = rss()
            clients = []
            for _ in range(1500):
                c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.tls_port), timeout=10),
                                    server_hostname="localhost")
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                clients.append(c)
            for c in clients:
                c.recv(1000)
            peak = rss()
            for c in clients:
                c.close()
            time.sleep(1.0)  # ticks: the slots shed their buffers, the heap is trimmed
            after = rss()
            print(f"RSS base {base} kB, peak {peak} kB, after {after} kB", file=sys.stderr)
            self.assertGreater(peak - base, 20 * 1024)  # the burst did cost memory
            self.assertLess(after - base, (peak - base) / 2, f"base {base} kB, peak {peak} kB, after {after} kB")
        finally:
            stop_ok(self, srv)


class SlowReaders(unittest.TestCase):
    def test_a_slow_but_steady_tls_reader_of_a_large_answer_is_not_cut(self):
        """Found from outside (epoll, TLS): a client reading 32 KiB/s of a 12 MB answer was cut at the send
        deadline with a truncated body. The socket's own drain counts as progress, on TLS as on plain."""
        data = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        data.write("[" + ",".join('{"id":%d,"pad":"%s"}' % (i, "x" * 230) for i in range(20000)) + "]")
        data.close()
        self.addCleanup(os.unlink, data.name)
        size = os.path.getsize(data.name)
        srv = userd("--data", data.name, "--threads", "1", "--send-timeout", "2", plain=False)
        try:
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            raw.settimeout(10)
            raw.connect(("127.0.0.1", srv.tls_port))
            c = client_context().wrap_socket(raw, server_hostname="localhost")
            c.sendall(b"GET /v1/user HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            got = bytearray()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 6:  # 64 KiB/s for three send deadlines
                chunk = c.recv(8192)
                if not chunk:
                    break
                got += chunk
                time.sleep(0.125)
            while (chunk := c.recv(1 << 16)):
                got += chunk
            c.close()
            self.assertEqual(len(bytes(got).split(b"\r\n\r\n", 1)[1]), size)
        finally:
            stop_ok(self, srv)


class Handshakes(unittest.TestCase):
    def test_handshakes_in_progress_are_bounded_and_the_rest_is_served(self):
        """Found by the attack: handshakes in progress cost 50-60 KiB each and were bounded only by --max-conns and
        the header timeout. Past --max-tls-handshakes a new TLS connection is closed at once and counted."""
        srv = userd("--threads", "1", "--max-tls-handshakes", "8", "--header-timeout", "2")
        try:
            done = ssl_client = client_context()
            served = done.wrap_socket(socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5),
                                      server_hostname="localhost")  # past its handshake before the flood
            stalled = [socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5) for _ in range(8)]
            time.sleep(0.2)
            refused = 0
            for _ in range(5):
                s = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5)
                try:
                    refused += s.recv(10) == b""  # closed at once, before any handshake
                except ConnectionResetError:
                    refused += 1
                s.close()
            self.assertEqual(refused, 5)
            self.assertEqual(metric(srv, "userd_tls_handshakes_refused_total"), 5)
            served.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection already in goes on
            self.assertIn(b"200 OK", served.recv(1000))
            served.close()
            for s in stalled:  # the stalled ones end (or the header timeout ends them): room for new ones again
                s.close()
            time.sleep(0.3)
            status, body, c = https_get(srv.tls_port, ctx=ssl_client)
            c.close()
            self.assertEqual((status, body), (200, DATASET))
        finally:
            stop_ok(self, srv)


class Listeners(unittest.TestCase):
    def listening_ports(self, pid):
        inodes = {t[8:-1] for t in fd_targets(pid) if t.startswith("socket:[")}
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).read().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # LISTEN
                    ports.add(int(f[1].rsplit(":", 1)[1], 16))
        return ports

    def test_tls_only_opens_no_plain_listener(self):
        srv = userd(plain=False, threads=1)
        try:
            self.assertEqual(self.listening_ports(srv.pid), {srv.tls_port})
            self.assertFalse(any(l.startswith("userd: listening on") for l in srv.stderr_lines))
            status, body, c = https_get(srv.tls_port)
            c.close()
            self.assertEqual((status, body), (200, DATASET))
        finally:
            stop_ok(self, srv)

    def test_openssl_is_mapped_only_when_tls_is_served(self):
        """libuserd loads libssl on first use: a plain-only daemon does not pay its 1.7 MiB of RSS."""
        def maps_ssl(srv):
            return any("libssl.so" in line or "libcrypto.so" in line for line in open(f"/proc/{srv.pid}/maps"))
        plain = userd(tls=False, threads=1)
        https = userd(threads=1)
        try:
            self.assertFalse(maps_ssl(plain))
            self.assertTrue(maps_ssl(https))
        finally:
            stop_ok(self, plain)
            stop_ok(self, https)

    def test_both_listeners_on_the_same_loops(self):
        srv = userd(threads=1)
        try:
            self.assertEqual(self.listening_ports(srv.pid), {srv.port, srv.tls_port})
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            c.request("GET", "/v1/user")
            self.assertEqual(c.getresponse().read(), DATASET)
            status, body, c2 = https_get(srv.tls_port)
            self.assertEqual((status, body), (200, DATASET))
            c.close()
            c2.close()
        finally:
            stop_ok(self, srv)

    def test_bad_files_at_start_are_one_line_and_exit_2(self):
        garbage = pki("garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        cases = [
            (["--tls-cert", pki("missing.pem"), "--tls-key", pki("server.key")], "missing.pem"),
            (["--tls-cert", garbage, "--tls-key", pki("server.key")], "garbage.pem"),
            (["--tls-cert", pki("server.pem"), "--tls-key", pki("other.key")], "does not match"),
            (["--tls-cert", pki("server.pem")], "--tls-key"),
            (["--tls-cert", pki("server.pem"), "--tls-key", pki("server.key"), "--tls-client-ca", garbage],
             "garbage.pem"),
        ]
        for flags, says in cases:
            out = subprocess.run([ARGS.userd, "--tls-listen", "127.0.0.1:0", *flags], capture_output=True,
                                 text=True, timeout=10)
            self.assertEqual(out.returncode, 2, (flags, out.stderr))
            self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
            self.assertIn(says, out.stderr)

    def test_version_says_which_tls(self):
        out = subprocess.run([ARGS.userd, "--version"], capture_output=True, text=True, timeout=10).stdout
        self.assertRegex(out, r"TLS: OpenSSL 3\.\S+ .*kTLS not used")


class MutualTls(unittest.TestCase):
    """examples/tls: ServerConfig::tls with a client CA, and Request::tls() in the handler."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server([ARGS.tls_example, "127.0.0.1:0", ARGS.backend, pki("server.pem"), pki("server.key"),
                          pki("ca.pem")])

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def whoami(self, ctx):
        status, body, c = https_get(self.srv.port, "/whoami", ctx=ctx)
        c.close()
        return status, body.decode()

    def test_a_client_certificate_from_the_ca_is_accepted_and_named(self):
        for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            status, body = self.whoami(client_context(cert="client", maximum=maximum))
            self.assertEqual(status, 200)
            self.assertRegex(body, r"^TLSv1\.[23] O=userd tests,CN=service-a\n$")

    def test_no_certificate_or_another_ca_is_refused_with_the_reason(self):
        # The server's alert reaches the client before the close: it says why.
        for ctx, reason in ((client_context(), "CERTIFICATE_REQUIRED"), (client_context(cert="stranger"), "UNKNOWN_CA")):
            with self.assertRaisesRegex(ssl.SSLError, reason):
                self.whoami(ctx)
        status, body = self.whoami(client_context(cert="client"))
        self.assertEqual(status, 200)


class HttpsUpstream(unittest.TestCase):
    """The seed's pair over TLS: microservice2 serves HTTPS only, microservice1 proxies to it."""

    @classmethod
    def setUpClass(cls):
        cls.m2 = userd(threads=1)

    @classmethod
    def tearDownClass(cls):
        assert cls.m2.stop() == 0

    def proxy(self, *flags, host="localhost"):
        return userd(f"--upstream", f"https://{host}:{self.m2.tls_port}/v1/avatar", *flags, tls=False, threads=1)

    def get(self, port, n=1):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        out = []
        for _ in range(n):
            c.request("GET", "/v1/user")
            r = c.getresponse()
            out.append((r.status, r.read()))
        c.close()
        return out

    def test_verified_upstream_with_pooled_connections_and_resumption(self):
        m1 = self.proxy("--upstream-ca", pki("ca.pem"), "--upstream-conns", "4")
        try:
            hs0, res0 = metric(self.m2, "userd_tls_handshakes_total"), metric(self.m2, "userd_tls_resumed_total")
            self.assertEqual(self.get(m1.port, 200), [(200, DATASET)] * 200)
            # Parallel clients make the pool open more connections: those resume the first one's session.
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda _: self.get(m1.port, 20), range(8)))
            self.assertTrue(all(r == [(200, DATASET)] * 20 for r in results))
            handshakes = metric(self.m2, "userd_tls_handshakes_total") - hs0
            self.assertLessEqual(handshakes, 4)  # keep-alive: at most one per pooled connection
            self.assertGreaterEqual(handshakes, 2)
            self.assertEqual(metric(self.m2, "userd_tls_resumed_total") - res0, handshakes - 1)
        finally:
            stop_ok(self, m1)

    def test_numeric_address_is_verified_against_the_ip_san(self):
        m1 = self.proxy("--upstream-ca", pki("ca.pem"), host="127.0.0.1")
        try:
            self.assertEqual(self.get(m1.port), [(200, DATASET)])
        finally:
            stop_ok(self, m1)

    def test_unverified_upstream_is_a_502_and_insecure_is_named_so(self):
        m1 = self.proxy()  # the system store does not know the test CA
        try:
            [(status, body)] = self.get(m1.port)
            self.assertEqual(status, 502)
            self.assertIn(b'"error"', body)
        finally:
            stop_ok(self, m1)
        m1 = self.proxy("--upstream-ca", pki("other.pem"))
        try:
            self.assertEqual(self.get(m1.port)[0][0], 502)
        finally:
            stop_ok(self, m1)
        m1 = self.proxy("--upstream-insecure")
        try:
            self.assertTrue(any("not verified" in l for l in m1.stderr_lines), m1.stderr_lines)
            self.assertEqual(self.get(m1.port), [(200, DATASET)])
        finally:
            stop_ok(self, m1)

    def test_a_record_that_does_not_authenticate_is_a_malformed_response(self):
        """An HTTPS upstream that completes its handshake, reads the request and then writes bytes that are no
        TLS record: 502 with the malformed-response error (the connection cannot be trusted), not "closed"."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki("server.pem"), pki("server.key"))
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        lsock.settimeout(10)

        def serve():
            try:
                raw, _ = lsock.accept()
                with ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(65536)  # the request
                    os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + b"\xaa" * 32)  # an application-data record
                    time.sleep(1)                                              # that no key opens
            except OSError:
                pass
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        m1 = userd("--upstream", f"https://127.0.0.1:{lsock.getsockname()[1]}/v1/avatar", "--upstream-insecure",
                   tls=False, threads=1)
        try:
            status, body = self.get(m1.port)[0]
            self.assertEqual(status, 502)
            self.assertEqual(body, b'{"error":"malformed upstream response"}')
        finally:
            stop_ok(self, m1)
            t.join(timeout=5)
            lsock.close()

    def test_plain_upstream_behind_https_url_is_a_502(self):
        plain = userd(tls=False, threads=1)
        m1 = userd("--upstream", f"https://127.0.0.1:{plain.port}/v1/avatar", "--upstream-insecure", tls=False,
                   threads=1)
        try:
            self.assertEqual(self.get(m1.port)[0][0], 502)
        finally:
            stop_ok(self, m1)
            stop_ok(self, plain)


class Reload(unittest.TestCase):
    def test_sighup_under_load_swaps_the_certificate_without_a_failed_request(self):
        work = tempfile.mkdtemp(dir=PKI)
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        shutil.copy(pki("server.pem"), cert)
        shutil.copy(pki("server.key"), key)
        srv = Server([ARGS.userd, "--backend", ARGS.backend, "--threads", "2", "--listen", "127.0.0.1:0",
                      "--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key])
        tls_port = int(said(srv, r"HTTPS listening on \S+:(\d+)"))
        stop = threading.Event()
        failures, done = [], [0]

        def load(fresh):
            c = None
            while not stop.is_set():
                try:
                    status, body, c = https_get(tls_port, conn=None if fresh else c)
                    if fresh:
                        c.close()
                    if (status, body) != (200, DATASET):
                        failures.append(status)
                    done[0] += 1
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))
                    c = None

        def serial():
            with socket.create_connection(("127.0.0.1", tls_port)) as raw:
                with client_context().wrap_socket(raw, server_hostname="localhost") as s:
                    return s.getpeercert()["serialNumber"]

        threads = [threading.Thread(target=load, args=(k % 2 == 0,)) for k in range(4)]
        try:
            for t in threads:
                t.start()
            time.sleep(0.5)
            first = serial()
            for _ in range(3):
                shutil.copy(pki("server2.pem"), cert + ".new")
                shutil.copy(pki("server2.key"), key + ".new")
                os.replace(cert + ".new", cert)
                os.replace(key + ".new", key)
                os.kill(srv.pid, signal.SIGHUP)
                time.sleep(0.4)
                self.assertNotEqual(serial(), first)
                shutil.copy(pki("server.pem"), cert)
                shutil.copy(pki("server.key"), key)
                os.kill(srv.pid, signal.SIGHUP)
                time.sleep(0.4)
                self.assertEqual(serial(), first)
            # A bad file keeps the old certificate, and says so once.
            with open(cert, "w") as f:
                f.write("garbage\n")
            os.kill(srv.pid, signal.SIGHUP)
            time.sleep(0.4)
            self.assertEqual(serial(), first)
        finally:
            stop.set()
            for t in threads:
                t.join()
            code = srv.stop()
        self.assertEqual(code, 0)
        self.assertEqual(failures, [])
        self.assertGreater(done[0], 100)
        hups = [l for l in srv.stderr_lines if "SIGHUP" in l]
        self.assertEqual(len([l for l in hups if "reloaded" in l]), 6, hups)
        self.assertEqual(len([l for l in hups if "keeping the previous" in l]), 1, hups)


class Allocations(unittest.TestCase):
    def test_no_allocation_per_request_once_the_handshake_is_done(self):
        """userd's own code allocates nothing per TLS request. OpenSSL 3.0's record layer mallocs and frees a
        40-byte block for each record it reads or writes (a WPACKET sub-packet): counted apart, and bounded."""
        if not ARGS.alloc_counter or "asan" in subprocess.run(["ldd", ARGS.userd], capture_output=True,
                                                                text=True).stdout:
            self.skipTest("no allocation counter in a sanitizer build")
        counter = os.path.join(tempfile.mkdtemp(dir=PKI), "allocs")
        srv = Server([ARGS.userd, "--backend", ARGS.backend, "--threads", "1", "--tls-listen", "127.0.0.1:0",
                      "--tls-cert", pki("server.pem"), "--tls-key", pki("server.key")],
                     env={"LD_PRELOAD": ARGS.alloc_counter, "ALLOC_COUNTER_FILE": counter})

        def snapshot():
            return allocation_count(srv.pid, counter)
        try:
            c = None
            for _ in range(2000):
                status, body, c = https_get(srv.port, conn=c)
            before = snapshot()
            for _ in range(10000):
                status, body, c = https_get(srv.port, conn=c)
                self.assertEqual(status, 200)
            after = snapshot()
            self.assertEqual(after[0] - before[0], 0)  # libuserd, the daemon, libc: nothing
            self.assertLessEqual(after[1] - before[1], 4 * 10000)  # OpenSSL: two per record at most, freed at once
            c.close()
        finally:
            stop_ok(self, srv)


def main():
    global ARGS, DATASET, PKI
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True)
    ap.add_argument("--userd", required=True)
    ap.add_argument("--tls-example", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--alloc-counter", default="")
    ap.add_argument("names", nargs="*")
    ARGS = ap.parse_args()
    DATASET = open(ARGS.dataset, "rb").read()
    PKI = tempfile.mkdtemp(prefix="userd-tls-")
    try:
        make_ca("ca")
        make_ca("other")
        make_cert("server", "ca", "localhost")
        make_cert("server2", "ca", "localhost")
        make_cert("client", "ca", "service-a", server=False)
        make_cert("stranger", "other", "service-b", server=False)
        run_tests(sys.modules[__name__], f"tls-{ARGS.backend}", ARGS.names)
    finally:
        shutil.rmtree(PKI, ignore_errors=True)


if __name__ == "__main__":
    main()
