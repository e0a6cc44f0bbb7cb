"""Starts userd (or another program printing a `listening on HOST:PORT` line) on 127.0.0.1 and stops it.

The child gets PR_SET_PDEATHSIG, so a server never outlives the test that started it.
"""
import ctypes
import os
import re
import select
import signal
import socket
import subprocess
import time

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def allocation_count(pid, counter):
    """(userd's allocations, OpenSSL's) so far, from the LD_PRELOAD counter (benchmarks/alloc_counter.c): SIGUSR2
    makes it write them to the file `counter` names."""
    os.kill(pid, signal.SIGUSR2)
    for _ in range(100):
        time.sleep(0.02)
        if os.path.exists(counter):
            v = tuple(map(int, open(counter).read().split()))
            os.unlink(counter)
            return v
    raise RuntimeError("no allocation count")


class Server:
    """A server process; `port` is read from its `listening on` line on stderr."""

    def __init__(self, argv, env=None, timeout=10.0, pass_fds=()):
        full_env = dict(os.environ)
        for k in ("M1_DOMAIN", "M1_PORT", "M1_PATH"):
            full_env.pop(k, None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env, preexec_fn=_die_with_parent,
                                     pass_fds=pass_fds)
        self.stderr_lines = []
        self.port = None
        deadline = time.monotonic() + timeout
        buf = b""
        while self.port is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(f"no 'listening on' line from {argv} in {timeout}s: {buf!r}")
            r, _, _ = select.select([self.proc.stderr], [], [], left)
            if not r:
                continue
            chunk = os.read(self.proc.stderr.fileno(), 4096)
            if not chunk:
                self.proc.wait(timeout=5)
                raise RuntimeError(f"{argv} exited {self.proc.returncode} before listening: {buf!r}")
            buf += chunk
            m = re.search(rb"listening on \S+:(\d+)", buf)
            if m:
                self.port = int(m.group(1))
        self.stderr_lines = buf.decode(errors="replace").splitlines()

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signals the server and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if not self.proc.stderr.closed:  # what it said after `listening on`, for tests that read its log
            self.stderr_lines += self.proc.stderr.read().decode(errors="replace").splitlines()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop()


def said(srv, pattern, timeout=5.0):
    """The first group of pattern in what srv wrote to stderr, reading on if its line has not been read yet (the
    harness stops at the first `listening on`)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in srv.stderr_lines:
            m = re.search(pattern, line)
            if m:
                return m.group(1)
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([srv.proc.stderr], [], [], left)[0]:
            raise RuntimeError(f"no {pattern!r} in {srv.stderr_lines}")
        srv.stderr_lines += os.read(srv.proc.stderr.fileno(), 4096).decode(errors="replace").splitlines()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(sock, head_only=False):
    """Reads one HTTP/1.1 response from a blocking socket with a timeout set. Returns (status, headers, body).

    headers: dict with lower-case names. Leftover bytes are kept on the socket object for the next call.
    """
    buf = getattr(sock, "_leftover", b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed inside a response head: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    length = 0 if head_only or status in (204, 304) or status < 200 else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed inside a response body")
        rest += chunk
    sock._leftover = rest[length:]
    return status, headers, rest[:length]


def read_until_eof(sock, limit=1 << 20):
    """Everything the peer sends until it closes (or the socket's timeout raises)."""
    data = getattr(sock, "_leftover", b"")
    sock._leftover = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class Sock(socket.socket):
    """A socket that can carry the bytes read past one response (`_leftover`)."""
    _leftover = b""


def connect(port, timeout=10.0):
    s = Sock(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def get(port, path="/v1/user", conn=None, method="GET"):
    """One request on 127.0.0.1:port (on conn, a keep-alive http.client connection, if given).
    Returns (status, body, seconds, response)."""
    import http.client
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.monotonic()
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, body, time.monotonic() - t0, r


def fd_targets(pid):
    """What each of the process's descriptors points at, e.g. 'anon_inode:[io_uring]'."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def run_tests(module, name, names=()):
    """Runs a test module's unittest cases (those whose id contains one of `names`, if given), prints the closing
    line `NAME: N passed, N failed`, and exits non-zero on a failure or when no test ran."""
    import sys
    import unittest
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    if names:
        suite = unittest.TestSuite(t for group in suite for t in group if any(n in t.id() for n in names))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    print(f"{name}: {result.testsRun - failed - len(result.skipped)} passed, {failed} failed")
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)


class Pipeliners:
    """Clients that pipeline requests and never read the answers: each writes `requests` copies of `request`
    through a socket whose receive buffer is `rcvbuf` bytes, until all is written, the server closes it, or
    `seconds` pass. `sent` counts the bytes the kernel took; `closed_at` is when each socket was refused."""

    def __init__(self, port, clients, request, requests, rcvbuf=4096, seconds=30.0, first=None):
        """first: a request each client sends, and reads the answer to, before it starts."""
        import threading
        self.payload = request * requests
        self.sent = [0] * clients
        self.closed_at = [None] * clients
        self.socks = []
        for _ in range(clients):
            s = Sock(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.connect(("127.0.0.1", port))
            if first:
                s.settimeout(10)
                s.sendall(first)
                read_response(s)
            s.setblocking(False)
            self.socks.append(s)
        self._deadline = time.monotonic() + seconds
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop and time.monotonic() < self._deadline:
            live = [i for i, s in enumerate(self.socks) if self.closed_at[i] is None and self.sent[i] < len(self.payload)]
            if not live:
                break
            _, writable, _ = select.select([], [self.socks[i] for i in live], [], 0.05)
            for i in live:
                if self.socks[i] not in writable:
                    continue
                try:
                    self.sent[i] += self.socks[i].send(self.payload[self.sent[i]:self.sent[i] + 65536])
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_at[i] = time.monotonic()
        # Written (or given up): now only notice when the server closes each socket, still reading nothing.
        while not self._stop and time.monotonic() < self._deadline:
            for i, s in enumerate(self.socks):
                if self.closed_at[i] is None and self._server_closed(s):
                    self.closed_at[i] = time.monotonic()
            if all(c is not None for c in self.closed_at):
                break
            time.sleep(0.05)

    @staticmethod
    def _server_closed(s):
        import errno
        try:
            s.send(b"")
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)  # tcpi_state: 1 = ESTABLISHED
            return info[0] not in (1,)
        except OSError as e:
            return e.errno != errno.EAGAIN

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        for s in self.socks:
            s.close()
