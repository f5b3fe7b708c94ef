"""What every edge shares: per-worker services, the connection prologue, the HTTP loop.

- :class:`Services` holds one worker's shared state (policy, sweeper, upstream pool,
  buffers, logs, metrics) and its draining flag.
- :func:`prologue` runs on every accepted connection before any HTTP byte is read:
  PROXY trust and metadata (reliability-anchors §1.5), then the connection filter.
- :class:`ClientSession` is the HTTP/1.1 server side of one client connection: it reads
  request heads under the header deadline, answers errors with the right status and a
  closed connection, and ends keep-alive on draining or ``Connection: close``.
"""

from __future__ import annotations

import logging
import time

from .. import log
from ..http.errors import HttpError, UpstreamError, phrase
from ..http.headers import http_date
from ..http.request import Limits, Request, RequestHeadParser
from ..netio import BufferPool, Conn, DeadlineExceeded, Sweeper
from ..policy import Policy, TrustSet, parse_ip
from ..proxyproto import ProxyHeaderParser, ProxyProtocolError
from ..upstream import ConnectionPool, Dialer, Resolver

monotonic = time.monotonic

# How long a keep-alive connection may stay idle once its worker drains (reload,
# resize, stop): long enough for an active client's next request to arrive and get its
# answer with Connection: close, short enough to let the worker go.
DRAIN_GRACE = 1.0

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class Services:
    """Per-worker state shared by every connection of every edge."""

    def __init__(self, policy: Policy, metrics=None):
        cfg = policy.config
        rt = cfg.runtime
        self.policy = policy
        self.metrics = metrics
        self.sweeper = Sweeper(0.1)
        self.pool = ConnectionPool()
        self.resolver = Resolver()
        self.dialer = Dialer(self.resolver, self.sweeper)
        self.buffers = BufferPool()
        self.access = log.access() or log.AccessLog(None, "json")
        self.limits = Limits(rt.max_request_line_bytes, rt.max_header_bytes,
                             rt.max_header_count)
        self.header_timeout = rt.http_header_read_timeout_ms / 1000.0
        self.keepalive_timeout = rt.client_keepalive_timeout_ms / 1000.0
        self.body_timeout = rt.client_body_timeout_ms / 1000.0
        self.send_timeout = rt.send_timeout_ms / 1000.0
        self.upstream_timeout = rt.upstream_http_timeout_ms / 1000.0
        self.tunnel_idle = rt.tunnel_idle_timeout_ms / 1000.0
        self.peek_timeout = rt.tls_peek_timeout_ms / 1000.0
        self.trace_enabled = rt.trace_enabled
        self.stopping = False
        self.idle: set[ClientSession] = set()
        self.own_addresses: set[tuple[str, int]] = set()
        self.scoreboard = None  # the master's scoreboard (read by /health)

    def drain(self) -> None:
        """Stop keep-alive without racing clients.  Every later response says
        ``Connection: close``.  A connection idle between requests is not cut at once:
        a client may be sending its next request right now, and closing under it would
        make it fail (or retry).  It gets :data:`DRAIN_GRACE` seconds from its last
        response to send one (answered, then closed); a connection idle for longer is
        closed at the next sweep."""
        self.stopping = True
        now = monotonic()
        for session in list(self.idle):
            conn = session.conn
            conn.deadline = min(conn.deadline or now, max(session.idle_since + DRAIN_GRACE,
                                                          now))


class Client:
    """Who is on the other end: the socket peer, and the client PROXY metadata named."""

    __slots__ = ("peer_ip", "peer_port", "local_ip", "local_port", "ip", "port", "key",
                 "proxy_dst", "label")

    def __init__(self, peer: tuple, local: tuple):
        self.peer_ip, self.peer_port = peer[0], peer[1]
        self.local_ip, self.local_port = local[0], local[1]
        self.ip, self.port = self.peer_ip, self.peer_port
        self.key = parse_ip(self.ip)
        self.proxy_dst: tuple[str, int] | None = None
        self.label = f"{self.ip}:{self.port}"

    def set_source(self, ip: str, port: int) -> None:
        self.ip, self.port = ip, port
        self.key = parse_ip(ip)
        self.label = f"{ip}:{port}"

    @property
    def dst_port(self) -> int:
        """The port the client connected to (PROXY destination when known)."""
        return self.proxy_dst[1] if self.proxy_dst else self.local_port


def _could_be_header(data: bytes, version: int) -> bool:
    sig = V1_PREFIX if version == 1 else V2_SIGNATURE
    n = min(len(data), len(sig))
    return data[:n] == sig[:n]


def prologue(conn: Conn, client: Client, services: Services, name: str, xdp, trusted:
             TrustSet | None, filt) -> bytes | None:
    """PROXY metadata and connection filter.  Returns the bytes already read that belong
    to the application protocol, or None when the connection must be closed (the reason
    is logged; nothing is sent: the peer may be an L4 frontend, not a browser)."""
    metrics = services.metrics
    data = b""
    if trusted is not None:
        required = xdp.require_metadata
        if client.peer_ip not in trusted:
            if required:
                _refuse(services, name, client, "proxy-untrusted-peer",
                        "PROXY metadata required but the peer is not trusted")
                return None
        else:
            version = 2 if xdp.metadata_mode == "proxy-v2" else 1
            parser = ProxyHeaderParser(version)
            conn.deadline = monotonic() + xdp.metadata_timeout_ms / 1000.0
            info = None
            try:
                while info is None:
                    chunk = conn.recv()
                    if not chunk:
                        _refuse(services, name, client, "proxy-eof",
                                "connection closed before the PROXY header")
                        return None
                    data += chunk
                    try:
                        info = parser.feed(chunk)
                    except ProxyProtocolError as e:
                        if not required and not _could_be_header(data, version):
                            break  # optional metadata, plain client: keep its bytes
                        _refuse(services, name, client, f"proxy-{e.reason}", str(e))
                        return None
            except DeadlineExceeded:
                _refuse(services, name, client, "proxy-timeout",
                        "PROXY header not complete before the deadline")
                return None
            except OSError as e:
                _refuse(services, name, client, "proxy-io", str(e))
                return None
            conn.deadline = 0.0
            if info is not None:
                data = parser.remainder
                if info.src is None:
                    if required:
                        _refuse(services, name, client, f"proxy-{info.command}-{info.family}",
                                f"PROXY {info.command} {info.family} carries no client "
                                "address and metadata is required")
                        return None
                else:
                    client.set_source(info.src[0], info.src[1])
                    client.proxy_dst = info.dst
                if metrics is not None:
                    metrics.proxy_header(name, "accepted")
    if filt is not None:
        hit = filt.match(client.key, client.dst_port)
        if hit is not None:
            if metrics is not None:
                metrics.filter_drop(name, hit)
            closed_before_http(name, client, "filter", f"dropped by connection filter {hit}")
            return None
    return data


def _refuse(services: Services, name: str, client: Client, reason: str, detail: str) -> None:
    if services.metrics is not None:
        services.metrics.proxy_header(name, reason)
    closed_before_http(name, client, reason, detail)


def closed_before_http(name: str, client: Client, reason: str, detail: str) -> None:
    """The one log line of a connection that ends before its first request: refused
    PROXY header, filter drop, nothing sent in time, closed or reset silently."""
    log.log(logging.INFO, "connection closed before HTTP", listener=name,
            peer=f"{client.peer_ip}:{client.peer_port}", reason=reason, detail=detail)


class ClientGone(Exception):
    """The client closed (``kind`` "eof") or broke ("reset") the connection."""

    def __init__(self, detail: str, kind: str = "eof"):
        super().__init__(detail)
        self.kind = kind


class ClientSession:
    """The server side of one client connection."""

    __slots__ = ("conn", "services", "client", "name", "buf", "closing", "requests", "target",
                 "parser", "idle_since")

    def __init__(self, conn: Conn, services: Services, client: Client, name: str,
                 initial: bytes):
        self.conn = conn
        self.services = services
        self.client = client
        self.name = name
        self.buf = initial
        self.closing = False
        self.requests = 0
        self.idle_since = 0.0
        self.target: tuple[str, int] | None = None  # transparent: where the client went
        self.parser: RequestHeadParser | None = None  # reusable after a bodiless request

    def read_request(self) -> Request | None:
        """The next request head, or None when the connection should just close (EOF
        or idle timeout between requests, or draining).  Raises :class:`HttpError` for a
        bad request (the caller answers it) and :class:`ClientGone` on EOF mid-head."""
        services = self.services
        conn = self.conn
        parser = self.parser.reset() if self.parser is not None \
            else RequestHeadParser(services.limits)
        self.parser = None
        data = self.buf
        self.buf = b""
        if not data:
            if self.requests:
                now = self.idle_since = monotonic()
                conn.deadline = now + (min(DRAIN_GRACE, services.keepalive_timeout)
                                       if services.stopping else services.keepalive_timeout)
                services.idle.add(self)
                try:
                    data = conn.recv_later()
                except DeadlineExceeded:
                    # A request that arrived with the deadline (or with a drain's
                    # close) is still served rather than reset.
                    try:
                        data = conn.recv_nowait()
                    except OSError:
                        return None
                except OSError:
                    return None
                finally:
                    services.idle.discard(self)
                if not data:
                    return None
                conn.deadline = monotonic() + services.header_timeout
            else:
                conn.deadline = monotonic() + services.header_timeout
                try:
                    data = conn.recv()
                except DeadlineExceeded:
                    closed_before_http(self.name, self.client, "timeout",
                                       f"no request within {services.header_timeout:g}s")
                    return None
                except OSError as e:
                    closed_before_http(self.name, self.client, "reset", str(e))
                    return None
                if not data:
                    closed_before_http(self.name, self.client, "eof",
                                       "closed without sending a request")
                    return None
        elif self.requests:
            conn.deadline = monotonic() + services.header_timeout
        elif not conn.deadline:
            conn.deadline = monotonic() + services.header_timeout
        self.requests += 1
        try:
            while True:
                req = parser.feed(data)
                if req is not None:
                    self.buf = parser.rest
                    conn.deadline = 0.0
                    if not req.content_length and not req.chunked and req.upgrade is None \
                            and req.form != "authority":
                        self.parser = parser  # llhttp saw the whole message: reuse it
                    return req
                data = conn.recv()
                if not data:
                    raise ClientGone("client closed inside a request head")
        except DeadlineExceeded:
            raise HttpError(408, "request head not complete before the deadline",
                            "bad_request") from None
        except OSError as e:
            raise ClientGone(str(e), "reset") from None

    # ------------------------------------------------------------------ responses

    def wants_close(self, req: Request | None) -> bool:
        return self.closing or self.services.stopping or req is None or not req.keep_alive

    def reply(self, status: int, headers: list[tuple[bytes, bytes, bytes]] | tuple,
              body: bytes, req: Request | None, *, close: bool = False,
              head_only: bool = False) -> int:
        """Send a complete local response; returns the bytes sent."""
        close = close or self.wants_close(req)
        if close:
            self.closing = True
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase(status).encode())]
        for _, name, value in headers:
            lines.append(name + b": " + value + b"\r\n")
        lines.append(b"Date: " + http_date() + b"\r\n")
        lines.append(b"Via: " + self.services.policy.via + b"\r\n")
        if status >= 200 and status not in (204, 304):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        if close:
            lines.append(b"Connection: close\r\n")
        elif req is not None and req.version == 10:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        send_body = not head_only and status >= 200 and status not in (204, 304)
        out = b"".join(lines) + (body if send_body else b"")
        self.conn.sendall(out, self.services.send_timeout)
        return len(out)

    def error(self, status: int, message_key: str, req: Request | None = None,
              extra: tuple = ()) -> int:
        """An error response from ``messages.*``; the connection closes after it."""
        body = self.services.policy.messages.get(message_key, b"error")
        headers = [(b"content-type", b"Content-Type", b"text/plain; charset=utf-8")]
        headers.extend(extra)
        try:
            return self.reply(status, headers, body, req, close=True,
                              head_only=req is not None and req.method == "HEAD")
        except (OSError, DeadlineExceeded):
            return 0

    def log_request(self, req: Request | None, status: int, started: float,
                    rule: str | None = None, action: str | None = None, bytes_in: int = 0,
                    bytes_out: int = 0, upstream: str | None = None,
                    reason: str | None = None) -> None:
        """Access log line and request metrics.  (Positional on the hot paths: keyword
        matching costs ~500 instructions per argument in CPython 3.11.)"""
        services = self.services
        if services.access.enabled:
            services.access.record(
                self.name, self.client.label, req.method if req is not None else "-",
                req.target if req is not None else "-", status, rule, action, bytes_in,
                bytes_out, monotonic() - started, upstream, reason)
        if services.metrics is not None:
            services.metrics.request(self.name, action or "refused", status,
                                     monotonic() - started)


class HttpEdge:
    """Accept → prologue → HTTP session loop; subclasses implement :meth:`handle_request`
    and return whether the connection may carry another request."""

    def __init__(self, services: Services, name: str, xdp, trusted, filt):
        self.services = services
        self.name = name
        self.xdp = xdp
        self.trusted = trusted
        self.filter = filt

    def handle(self, sock, address) -> None:
        services = self.services
        conn = Conn(sock, services.sweeper)
        try:
            client = Client(address, sock.getsockname())
            initial = prologue(conn, client, services, self.name, self.xdp, self.trusted,
                               self.filter)
            if initial is not None:
                self.serve(ClientSession(conn, services, client, self.name, initial))
        except (OSError, DeadlineExceeded):
            pass
        finally:
            conn.close()

    def serve(self, session: ClientSession) -> None:
        while True:
            started = monotonic()
            req = None
            try:
                req = session.read_request()
                if req is None:
                    return
                if not self.handle_request(session, req, started):
                    return
            except HttpError as e:
                n = session.error(e.status, e.message, req, e.headers)
                session.log_request(req, e.status, started, bytes_out=n, reason=e.reason)
                return
            except UpstreamError as e:
                n = session.error(e.status, self.upstream_message(e), req)
                session.log_request(req, e.status, started, bytes_out=n, reason=e.reason,
                                    action="upstream-error", upstream=e.upstream)
                return
            except ClientGone as e:
                if req is not None:
                    session.log_request(req, 499, started, reason=str(e))
                elif session.requests <= 1:
                    closed_before_http(session.name, session.client, e.kind, str(e))
                else:
                    log.log(logging.INFO, "client closed inside a request head",
                            listener=session.name, client=session.client.label,
                            reason=e.kind, detail=str(e), served=session.requests - 1)
                return
            if session.closing:
                return

    def count_rules(self, ruleset) -> None:
        metrics = self.services.metrics
        if metrics is not None:
            metrics.rules(self.name, ruleset.last_candidates)

    def upstream_message(self, e: UpstreamError) -> str:
        return "gateway_timeout" if e.status == 504 else "proxy_error"

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        raise NotImplementedError
