"""A bounded load client for the reload and resize tests.

Threads send GETs through a forward proxy, either on keep-alive connections or on a new
connection per request, until stopped (or their time bound runs out).  Like browsers and
curl (RFC 9112 §9.3.1), a request that finds its *reused* connection closed before any
byte of the response is retried once on a new connection; that is counted as
``retried``, not as a failure.  Anything else that goes wrong is a failure with its
reason: connect errors, resets, timeouts, and any 5xx.
"""

from __future__ import annotations

import collections
import socket
import threading
import time


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.retried = 0
        self.failures: list[str] = []
        self.statuses: collections.Counter = collections.Counter()

    def add(self, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status >= 500:
                self.failures.append(f"status {status}")
            else:
                self.ok += 1

    def fail(self, why: str) -> None:
        with self.lock:
            self.failures.append(why)


class _Closed(Exception):
    def __init__(self, got_bytes: bool):
        self.got_bytes = got_bytes


def _read_response(sock: socket.socket) -> tuple[int, bool]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed(bool(buf))
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        n = name.strip().lower()
        if n == b"content-length":
            length = int(value)
        elif n == b"connection" and b"close" in value.lower():
            close = True
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed(True)
        rest += chunk
    return status, close


class Load:
    def __init__(self, proxy_port: int, origin_addr: str, *, keepalive: int = 2,
                 fresh: int = 2, max_seconds: float = 60.0, pause: float = 0.002):
        self.proxy_port = proxy_port
        self.request = (b"GET http://%s/load HTTP/1.1\r\nHost: %s\r\n\r\n"
                        % (origin_addr.encode(), origin_addr.encode()))
        self.stats = Stats()
        self.max_seconds = max_seconds
        self.pause = pause
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._keepalive, daemon=True)
                        for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self._fresh, daemon=True)
                         for _ in range(fresh)]

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _running(self, t0: float) -> bool:
        return not self._stop.is_set() and time.monotonic() - t0 < self.max_seconds

    def _keepalive(self) -> None:
        t0 = time.monotonic()
        sock = None
        reused = False
        while self._running(t0):
            try:
                if sock is None:
                    sock, reused = self._connect(), False
                try:
                    sock.sendall(self.request)
                    status, close = _read_response(sock)
                except (_Closed, ConnectionResetError, BrokenPipeError) as e:
                    got = isinstance(e, _Closed) and e.got_bytes
                    sock.close()
                    sock = None
                    if reused and not got:
                        with self.stats.lock:
                            self.stats.retried += 1
                        sock, reused = self._connect(), False
                        sock.sendall(self.request)
                        status, close = _read_response(sock)
                    else:
                        raise
                self.stats.add(status)
                reused = True
                if close:
                    sock.close()
                    sock = None
            except (OSError, _Closed) as e:
                self.stats.fail(f"keep-alive: {type(e).__name__}: {e}")
                if sock is not None:
                    sock.close()
                sock = None
            time.sleep(self.pause)
        if sock is not None:
            sock.close()

    def _fresh(self) -> None:
        t0 = time.monotonic()
        req = self.request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        while self._running(t0):
            try:
                with self._connect() as s:
                    s.sendall(req)
                    status, _ = _read_response(s)
                self.stats.add(status)
            except (OSError, _Closed) as e:
                self.stats.fail(f"new connection: {type(e).__name__}: {e}")
            time.sleep(self.pause)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(15)
