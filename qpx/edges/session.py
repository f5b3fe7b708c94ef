"""The HTTP/1.1 server side of one client connection (per-connection state).

:class:`ClientSession` owns what lives as long as the connection: the bytes read past
the current request (``buf``), whether the connection ends after this response
(``closing``), how many requests it carried, its keep-alive idleness.  Only the session
changes that state; the upstream exchange reports what it read and decided
(:meth:`ClientSession.settle`).  It reads request heads under the header deadline,
answers local replies and errors (heads written by :mod:`qpx.http.writer`), and logs
every request (access log + metrics).
"""

from __future__ import annotations

import time

from ..http import writer
from ..http.errors import HttpError
from ..http.request import Limits, Request, RequestHeadParser
from ..netio import Conn, DeadlineExceeded
from .prologue import Client, closed_before_http
from .services import DRAIN_GRACE, Services

monotonic = time.monotonic

TEXT_PLAIN = (b"content-type", b"Content-Type", b"text/plain; charset=utf-8")

# Lingering close (nginx's lingering_close): after an answer that leaves client bytes
# unread, read and discard for this long / this much before closing, so the kernel does
# not answer the unread bytes with a reset that can destroy the answer in flight.
LINGER_TIME = 5.0
LINGER_TIME_STOPPING = 1.0
LINGER_BYTES = 65536


class ClientGone(Exception):
    """The client closed (``kind`` "eof") or broke ("reset") the connection."""

    def __init__(self, detail: str, kind: str = "eof"):
        super().__init__(detail)
        self.kind = kind


class ClientSession:
    """The server side of one client connection."""

    __slots__ = ("conn", "services", "client", "name", "buf", "closing", "requests", "target",
                 "parser", "idle_since", "limits")

    def __init__(self, conn: Conn, services: Services, client: Client, name: str,
                 initial: bytes, limits: Limits | None = None):
        self.conn = conn
        self.limits = limits if limits is not None else services.limits
        self.services = services
        self.client = client
        self.name = name
        self.buf = initial  # bytes read past the current request's head (and body)
        self.closing = False
        self.requests = 0
        self.idle_since = 0.0
        self.target: tuple[str, int] | None = None  # transparent: where the client went
        self.parser: RequestHeadParser | None = None  # reusable after a bodiless request

    # ------------------------------------------------------------------ state

    def settle(self, rest: bytes, close: bool) -> None:
        """After an exchange: ``rest`` is what the client sent past the request's body;
        ``close`` ends the connection after this response."""
        self.buf = rest
        if close:
            self.closing = True

    def end_after_this(self) -> None:
        """The connection ends after the current exchange (tunnels, upgrades)."""
        self.closing = True

    def linger(self) -> None:
        """Half-close, then discard what the client still sends (up to
        :data:`LINGER_BYTES`, for :data:`LINGER_TIME` seconds) until it closes too."""
        conn = self.conn
        self.closing = True
        conn.shutdown_write()
        conn.deadline = monotonic() + (LINGER_TIME_STOPPING if self.services.stopping
                                       else LINGER_TIME)
        left = LINGER_BYTES
        try:
            while left > 0:
                data = conn.recv()
                if not data:
                    return
                left -= len(data)
        except (OSError, DeadlineExceeded):
            pass

    def drain(self, now: float) -> None:
        """The worker drains: an idle connection gets the drain grace from its last
        response to send one more request (see :meth:`Services.drain`)."""
        conn = self.conn
        conn.deadline = min(conn.deadline or now, max(self.idle_since + DRAIN_GRACE, now))

    # ------------------------------------------------------------------ reading

    def _wait_next(self) -> bytes | None:
        """Between keep-alive requests: the first bytes of the next one, or None."""
        services = self.services
        conn = self.conn
        now = self.idle_since = monotonic()
        conn.deadline = now + (min(DRAIN_GRACE, services.keepalive_timeout)
                               if services.stopping else services.keepalive_timeout)
        services.idle.add(self)
        try:
            data = conn.recv_later()
        except DeadlineExceeded:
            # A request that arrived with the deadline (or with a drain's close) is
            # still served rather than reset.
            try:
                data = conn.recv_nowait()
            except OSError:
                return None
        except OSError:
            return None
        finally:
            services.idle.discard(self)
        return data or None

    def _wait_first(self) -> bytes | None:
        """The first bytes of a connection's first request, or None (logged)."""
        services = self.services
        try:
            data = self.conn.recv()
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
        return data

    def read_request(self) -> Request | None:
        """The next request head, or None when the connection should just close (EOF
        or idle timeout between requests, or draining).  Raises :class:`HttpError` for a
        bad request (the caller answers it) and :class:`ClientGone` on EOF mid-head."""
        services = self.services
        conn = self.conn
        parser = self.parser.reset() if self.parser is not None \
            else RequestHeadParser(self.limits)
        self.parser = None
        data = self.buf
        self.buf = b""
        if not data:
            if self.requests:
                data = self._wait_next()
                if data is None:
                    return None
                conn.deadline = monotonic() + services.header_timeout
            else:
                conn.deadline = monotonic() + services.header_timeout
                data = self._wait_first()
                if data is None:
                    return None
        elif self.requests or not conn.deadline:
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

    def reply(self, status: int, headers, body: bytes, req: Request | None, *,
              close: bool = False, head_only: bool = False) -> int:
        """Send a complete local response; returns the bytes sent."""
        close = close or self.wants_close(req)
        if close:
            self.closing = True
        out = writer.local_reply(status, headers, body, self.services.policy.via,
                                 close=close, http10=req is not None and req.version == 10,
                                 head_only=head_only)
        self.conn.sendall(out, self.services.send_timeout)
        return len(out)

    def error(self, status: int, message_key: str, req: Request | None = None,
              extra: tuple = (), reason: str | None = None) -> int:
        """An error response from ``messages.*``; the connection closes after it.  A
        refusal of the client's own request also says why (``reason``, on a second
        line): a client, or the person reading its output, can fix what it can read."""
        body = self.services.policy.messages.get(message_key, b"error")
        if reason and reason.encode("utf-8", "replace") != body.rstrip(b"\n"):
            body = b"%s\n%s\n" % (body.rstrip(b"\n"),
                                   reason[:300].encode("utf-8", "backslashreplace"))
        headers = [TEXT_PLAIN]
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
            client = self.client
            services.access.record(
                self.name, client.label, req.method if req is not None else "-",
                req.target if req is not None else "-", status, rule, action, bytes_in,
                bytes_out, monotonic() - started, upstream, reason, client.tls, client.sni)
        if services.metrics is not None:
            services.metrics.request(self.name, action or "refused", status,
                                     monotonic() - started)
