"""Real peers for the tests: a recording HTTP origin, a TCP echo server, a TLS server.

They run in threads of the test process, on free loopback ports, and record exactly the
bytes they receive, so a test can assert that nothing of a refused request ever reached
an upstream.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(256)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.received = bytearray()
        self.connections = 0
        self._stop = False
        self._conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer) -> None:
        raise NotImplementedError

    def record(self, data: bytes) -> None:
        with self.lock:
            self.received += data

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self._conns:
                try:  # shutdown wakes a thread blocked in recv; close alone would not
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    c.close()
                except OSError:
                    pass


def read_http_message(conn: socket.socket, buf: bytes, record) -> tuple[bytes, bytes, bytes] | None:
    """Read one request (head, body) from ``conn``; returns (head, body, rest) or None."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        record(data)
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        # lenient like a CGI/WSGI backend: surrounding blanks ignored, "_" read as "-"
        name = name.replace(b"_", b"-")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            while b"\r\n" not in rest:
                data = conn.recv(65536)
                if not data:
                    return None
                record(data)
                rest += data
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                data = conn.recv(65536)
                if not data:
                    return None
                record(data)
                rest += data
            if size == 0:
                # trailers until blank line
                while not rest.startswith(b"\r\n") and b"\r\n\r\n" not in rest:
                    data = conn.recv(65536)
                    if not data:
                        return None
                    record(data)
                    rest += data
                if rest.startswith(b"\r\n"):
                    rest = rest[2:]
                else:
                    rest = rest.partition(b"\r\n\r\n")[2]
                return head, body, rest
            body += rest[:size]
            rest = rest[size + 2:]
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None
        record(data)
        rest += data
    return head, rest[:length], rest[length:]


class Origin(_Server):
    """A keep-alive HTTP/1.1 origin.  Responses by path:

    - ``/slow?s=N``: waits N seconds first; ``/silent``: never answers;
    - ``/size/N``: N bytes of body; ``/chunked/N``: N bytes in chunks of 1000;
    - ``/close``: closes after a response without Content-Length (close-delimited);
    - ``/status/N``: that status; anything else: 200 with a small text body that names
      this origin (``origin <name>``), the request line and a few request headers.
    Every request head is appended to ``requests`` as (head bytes, body bytes).
    """

    def __init__(self, name: str = "o", host: str = "127.0.0.1", port: int = 0,
                 delay: float = 0.0):
        self.name = name
        self.delay = delay
        self.requests: list[tuple[bytes, bytes]] = []
        super().__init__(host, port)

    def _serve(self, conn: socket.socket, peer) -> None:
        buf = b""
        try:
            while True:
                msg = read_http_message(conn, buf, self.record)
                if msg is None:
                    return
                head, body, buf = msg
                with self.lock:
                    self.requests.append((head, body))
                if not self.respond(conn, head, body):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def respond(self, conn: socket.socket, head: bytes, body: bytes) -> bool:
        line = head.split(b"\r\n")[0]
        method, target = line.split(b" ")[0], line.split(b" ")[1]
        path = target.split(b"?")[0]
        if target.startswith(b"http://"):
            path = b"/" + target.split(b"/", 3)[3].split(b"?")[0] if target.count(b"/") >= 3 else b"/"
        headers = {}
        for h in head.split(b"\r\n")[1:]:
            n, _, v = h.partition(b":")
            headers.setdefault(n.strip().lower(), v.strip())
        close = headers.get(b"connection", b"").lower() == b"close"
        if self.delay:
            time.sleep(self.delay)
        if path.startswith(b"/slow"):
            secs = float(target.split(b"s=")[1]) if b"s=" in target else 2.0
            time.sleep(secs)
        if path == b"/silent":
            time.sleep(3600)
            return False
        status = 200
        extra = b""
        if path.startswith(b"/status/"):
            status = int(path.split(b"/")[2])
        if path.startswith(b"/size/"):
            n = int(path.split(b"/")[2])
            payload = (b"0123456789abcdef" * (n // 16 + 1))[:n]
        elif path.startswith(b"/chunked/"):
            n = int(path.split(b"/")[2])
            payload = (b"x" * n)
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 1000]), payload[i:i + 1000])
                              for i in range(0, n, 1000)) + b"0\r\n\r\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"X-Origin: " + self.name.encode() + b"\r\n\r\n" + chunks)
            return not close
        else:
            payload = b"origin " + self.name.encode() + b"\n" + line + b"\n"
            for key in (b"host", b"via", b"x-forwarded-for", b"x-forwarded-proto",
                        b"x-forwarded-host", b"x-test"):
                if key in headers:
                    payload += key + b": " + headers[key] + b"\n"
            payload += b"body-length: %d\n" % len(body)
        if path == b"/close":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Origin: " + self.name.encode() +
                         b"\r\nConnection: close\r\n\r\n" + payload)
            return False
        if method == b"HEAD":
            out = b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\nX-Origin: %s\r\n%s\r\n" % (
                status, len(payload), self.name.encode(), extra)
        elif status in (204, 304):
            out = b"HTTP/1.1 %d X\r\nX-Origin: %s\r\n\r\n" % (status, self.name.encode())
        else:
            out = b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\nX-Origin: %s\r\n" \
                  b"Connection: keep-alive, X-Drop\r\nKeep-Alive: timeout=5\r\nX-Drop: 1\r\n%s\r\n" % (
                      status, len(payload), self.name.encode(), extra) + payload
        conn.sendall(out)
        return not close


class Scripted(_Server):
    """An origin whose every connection runs ``script(conn, n, server)``: ``n`` counts
    connections from 0.  For upstream misbehaviour no well-behaved server shows (stray
    bytes on an idle connection, a response cut short, a flood)."""

    def __init__(self, script, host: str = "127.0.0.1"):
        self.script = script
        self.requests: list[tuple[bytes, bytes]] = []
        self._numbers = itertools.count()
        super().__init__(host)

    def read_request(self, conn: socket.socket, buf: bytes = b""):
        msg = read_http_message(conn, buf, self.record)
        if msg is not None:
            with self.lock:
                self.requests.append((msg[0], msg[1]))
        return msg

    def _serve(self, conn: socket.socket, peer) -> None:
        try:
            self.script(conn, next(self._numbers), self)
        except OSError:
            pass
        finally:
            conn.close()


class Echo(_Server):
    """TCP echo: every byte received is sent back."""

    def _serve(self, conn: socket.socket, peer) -> None:
        try:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    conn.shutdown(socket.SHUT_WR)
                    return
                self.record(data)
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()


def make_cert(directory: Path, cn: str = "localhost") -> tuple[Path, Path]:
    key = directory / "key.pem"
    cert = directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class TlsOrigin(_Server):
    """HTTPS: answers every request with 200 and a body naming the SNI it saw."""

    def __init__(self, cert: Path, key: Path, host: str = "127.0.0.1",
                 keepalive: bool = True):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sni: list[str | None] = []
        self.resumed: list[bool] = []  # per connection: was the TLS session resumed
        self.keepalive = keepalive
        self.ctx.sni_callback = lambda s, name, c: self.sni.append(name)
        super().__init__(host)

    def _serve(self, conn: socket.socket, peer) -> None:
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.resumed.append(tls.session_reused)
                buf = b""
                while True:
                    msg = read_http_message(tls, buf, lambda d: None)
                    if msg is None:
                        return
                    head, body, buf = msg
                    payload = b"tls origin sni=%s\n" % (self.sni[-1] or "-").encode()
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                                % (len(payload), b"" if self.keepalive else
                                   b"Connection: close\r\n", payload))
                    if not self.keepalive:
                        return
        except (OSError, ssl.SSLError):
            pass


class TlsEchoOrigin(Origin):
    """:class:`Origin` over TLS: the same answers (they name the request line and a few
    request headers), the same recording."""

    def __init__(self, cert: Path, key: Path, name: str = "tls"):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        super().__init__(name)

    def _serve(self, conn: socket.socket, peer) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        super()._serve(tls, peer)


class UpgradeEcho(_Server):
    """A WebSocket-style upstream: answers the first request head with 101, then sends
    back ``transform(chunk)`` for every chunk; over TLS when ``ctx`` is given.  The
    request heads are kept in ``heads``."""

    def __init__(self, transform=lambda d: b"echo:" + d, ctx: ssl.SSLContext | None = None):
        self.transform = transform
        self.ctx = ctx
        self.heads: list[bytes] = []
        super().__init__()

    def _serve(self, conn: socket.socket, peer) -> None:
        try:
            c = self.ctx.wrap_socket(conn, server_side=True) if self.ctx else conn
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.heads.append(data.partition(b"\r\n\r\n")[0])
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\n")
            while d := c.recv(4096):
                c.sendall(self.transform(d))
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
