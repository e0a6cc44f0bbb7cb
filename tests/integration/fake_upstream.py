#!/usr/bin/env python3
"""A test upstream that misbehaves on command, for userd's proxy tests. Binds 127.0.0.1 only and exits when its
parent dies or after --lifetime seconds.

usage: fake_upstream.py MODE DATASET [--port P]
modes: ok, chunked, slow, invalid, status500, cut, stall, close (answers, then closes the connection),
       upgrade (an unrequested 101, then a 200), te_and_cl (chunked with a Content-Length), gzip (Transfer-Encoding:
       gzip), flaky (answers, but drops keep-alive connections at random: after an answer, or instead of one)
With --log-accepts it prints "accepted" on stderr for each connection (only for tests that read it all: under
load a pipe nobody reads fills, and the accept loop would block on it).
"""
import argparse
import ctypes
import random
import signal
import socket
import sys
import threading
import time

ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the test


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def serve(conn, mode, body):
    buf = b""
    served = 0  # answers given on this connection
    try:
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            ok_head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            if mode == "ok" or mode == "close":
                conn.sendall(ok_head % len(body) + body)
                if mode == "close":
                    return
            elif mode == "chunked":
                out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                for i in range(0, len(body), 1000):
                    part = body[i:i + 1000]
                    out += b"%x\r\n%s\r\n" % (len(part), part)
                conn.sendall(out + b"0\r\n\r\n")
            elif mode == "slow":
                conn.sendall(ok_head % len(body))
                for i in range(0, len(body), len(body) // 4 + 1):
                    time.sleep(0.1)
                    conn.sendall(body[i:i + len(body) // 4 + 1])
            elif mode == "invalid":
                bad = b'[{"id": "1", "name": '
                conn.sendall(ok_head % len(bad) + bad)
            elif mode == "status500":
                err = b'{"error":"boom"}'
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(err), err))
            elif mode == "cut":
                conn.sendall(ok_head % len(body) + body[:100])
                return
            elif mode == "stall":
                while conn.recv(65536):
                    pass
                return
            elif mode == "upgrade":
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" +
                             ok_head % len(body) + body)
            elif mode == "te_and_cl":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                             b"Content-Length: %d\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), len(body), body))
            elif mode == "gzip":
                import gzip
                packed = gzip.compress(body)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n" + packed)
                return
            elif mode == "flaky":
                if served and random.random() < 0.2:
                    return  # a reused connection dropped instead of answered: the client retries
                conn.sendall(ok_head % len(body) + body)
                if random.random() < 0.2:
                    return  # dropped after the answer: the client notices while idle
                served += 1
    except OSError:
        return
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("dataset")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--lifetime", type=float, default=300)
    ap.add_argument("--log-accepts", action="store_true")
    a = ap.parse_args()
    body = open(a.dataset, "rb").read()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", a.port))
    ls.listen(512)
    print(f"fake_upstream: listening on 127.0.0.1:{ls.getsockname()[1]} ({a.mode})", file=sys.stderr, flush=True)
    threading.Timer(a.lifetime, lambda: ctypes.CDLL(None).exit(0)).start()
    while True:
        conn, _ = ls.accept()
        if a.log_accepts:
            print("accepted", file=sys.stderr, flush=True)
        threading.Thread(target=serve, args=(conn, a.mode, body), daemon=True).start()


if __name__ == "__main__":
    main()
