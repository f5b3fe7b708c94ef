"""What the three edges share: the connection loop and the answers they all give.

:class:`HttpEdge` is accept → :func:`~qpx.edges.prologue.prologue` → the HTTP/1.1
session loop; an edge subclasses it and implements :meth:`HttpEdge.handle_request`
(returning whether the connection may carry another request).  The loop turns the
exceptions of a request into its answer and its log line: :class:`HttpError` → that
status, :class:`UpstreamError` → 502/504, :class:`ClientGone` → 499 in the log.

The helpers below are the preambles and local answers more than one edge gives (TRACE
and Via-loop checks, blocks, local responses, Max-Forwards, CONNECT through an upstream
proxy).  Edges import this module and never each other.
"""

from __future__ import annotations

import logging
import time

from .. import log
from ..http import writer
from ..http.errors import BadResponse, HttpError, UpstreamError
from ..http.headers import HeaderOps
from ..http.request import Request
from ..http.response import ResponseHeadParser
from ..netio import Conn, DeadlineExceeded
from ..policy import LocalReply
from ..tlssniff import MAX_HELLO, ClientHelloSniffer, NotTls
from .prologue import Client, closed_before_http, prologue
from .services import Services
from .session import TEXT_PLAIN, ClientGone, ClientSession

monotonic = time.monotonic

ALLOW_FORWARD = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, CONNECT"
ALLOW_REVERSE = b"GET, HEAD, POST, PUT, DELETE, OPTIONS"


class HttpEdge:
    """Accept → prologue → HTTP session loop; subclasses implement :meth:`handle_request`
    and return whether the connection may carry another request."""

    def __init__(self, services: Services, name: str, xdp, trusted, filt, limits=None):
        self.services = services
        self.name = name
        self.limits = limits if limits is not None else services.limits
        self.xdp = xdp
        self.trusted = trusted
        self.filter = filt
        self.tls = None  # a tlsctx.ServerTls on TLS listeners
        self.exact_prologue = False  # read nothing past a PROXY header (TLS, inspection)

    def handle(self, sock, address) -> None:
        services = self.services
        conn = Conn(sock, services.sweeper)
        try:
            client = Client(address, sock.getsockname())
            tls = self.tls
            initial = prologue(conn, client, services, self.name, self.xdp, self.trusted,
                               self.filter, tls is not None or self.exact_prologue)
            if initial is not None and (tls is None or self.terminate(conn, client)):
                if tls is not None and conn.sock.selected_alpn_protocol() == "h2":
                    self.serve_h2(conn, client, b"")
                else:
                    self.start(ClientSession(conn, services, client, self.name, initial,
                                             self.limits))
        except (OSError, DeadlineExceeded):
            pass
        except BaseException:
            # Killed (the worker's graceful timeout): whatever this connection was
            # sending is cut short, and a reset says so where a FIN would not.
            conn.abort()
            raise
        finally:
            conn.close()

    def terminate(self, conn: Conn, client: Client) -> bool:
        """The TLS handshake of a client connection (certificate by SNI), bounded by
        ``tls_handshake_timeout_ms``.  False when it failed: counted by outcome, logged
        with the reason, closed without a byte more."""
        import ssl

        from ..tlsconn import handshake, wrap

        services = self.services
        metrics = services.metrics
        try:
            wrap(conn, self.tls.context, True)
            handshake(conn, monotonic() + services.tls_handshake_timeout)
        except DeadlineExceeded:
            outcome, detail = "timeout", "TLS handshake not complete before the deadline"
        except ssl.SSLError as e:
            outcome, detail = tls_failure(conn, e)
        except OSError as e:
            outcome, detail = "error", f"TLS handshake: {e.strerror or e}"
        else:
            sock = conn.sock
            client.sni = sock.sni
            client.tls = sock.version()
            if metrics is not None:
                metrics.tls_handshake(self.name, "ok", sock.session_reused)
            return True
        if metrics is not None:
            metrics.tls_handshake(self.name, outcome)
        closed_before_http(self.name, client, f"tls-{outcome}", detail)
        return False

    def serve_h2(self, conn: Conn, client: Client, initial: bytes,
                 target: tuple[str, int] | None = None) -> None:
        """An HTTP/2 connection: every stream runs :meth:`serve` over its own
        connection-shaped stream (:mod:`qpx.h2session`)."""
        from ..h2session import H2Session

        services = self.services

        def serve_stream(stream) -> None:
            session = ClientSession(stream, services, client, self.name, b"", self.limits)
            session.target = target
            self.serve(session)

        H2Session(conn, services, self.name, client, serve_stream, initial,
                  self.limits).serve()

    def first_bytes(self, session: ClientSession) -> bytes:
        """The connection's first bytes (already read, or read now under the header
        timeout; b"" on timeout or EOF, which the session loop then reports)."""
        if session.buf:
            return session.buf
        conn = session.conn
        conn.deadline = monotonic() + self.services.header_timeout
        try:
            session.buf = conn.recv()
        except (DeadlineExceeded, OSError):
            session.buf = b""
        return session.buf

    def start(self, session: ClientSession) -> None:
        """A connection past its prologue (the transparent edge sniffs here first)."""
        self.serve(session)

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
                n = session.error(e.status, e.message, req, e.headers, e.reason)
                session.log_request(req, e.status, started, bytes_out=n, reason=e.reason)
                session.linger()
                return
            except UpstreamError as e:
                n = session.error(e.status, self.upstream_message(e), req)
                session.log_request(req, e.status, started, bytes_out=n, reason=e.reason,
                                    action="upstream-error", upstream=e.upstream)
                session.linger()
                return
            except ClientGone as e:
                self._client_gone(session, req, started, e)
                return
            if session.closing:
                return

    @staticmethod
    def _client_gone(session: ClientSession, req: Request | None, started: float,
                     e: ClientGone) -> None:
        if req is not None:
            session.log_request(req, 499, started, reason=str(e))
        elif session.requests <= 1:
            closed_before_http(session.name, session.client, e.kind, str(e))
        else:
            log.log(logging.INFO, "client closed inside a request head",
                    listener=session.name, client=session.client.label,
                    reason=e.kind, detail=str(e), served=session.requests - 1)

    def count_rules(self, ctx) -> None:
        """Rule metrics from the request's own match context."""
        metrics = self.services.metrics
        if metrics is not None:
            metrics.rules(self.name, ctx.candidates)

    def finish(self, session: ClientSession, req: Request, started: float, rule: str | None,
               action: str, result) -> bool:
        """After an exchange: the session takes what the exchange learned, the request
        is logged; whether the connection may carry another request."""
        session.settle(result.client_rest, result.close)
        metrics = self.services.metrics
        if metrics is not None:
            metrics.upstream_latency(self.name, result.head_latency)
        session.log_request(req, result.status, started, rule, action, result.bytes_in,
                            result.bytes_out, result.upstream)
        if result.early:  # the client may still be sending the body nobody reads
            session.linger()
        return not session.closing

    def upstream_message(self, e: UpstreamError) -> str:
        return "gateway_timeout" if e.status == 504 else "proxy_error"

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        raise NotImplementedError


_VERSION_REASONS = ("UNSUPPORTED_PROTOCOL", "WRONG_VERSION_NUMBER", "NO_PROTOCOLS_AVAILABLE",
                    "TLSV1_ALERT_PROTOCOL_VERSION", "VERSION_TOO_LOW")


def tls_failure(conn: Conn, e) -> tuple[str, str]:
    """(outcome, detail) of a failed client handshake, for the metric and the log."""
    reason = getattr(e, "reason", None) or str(e)
    refusal = getattr(conn.sock, "refusal", None)
    if refusal:
        return "no_cert", refusal
    if any(v in reason for v in _VERSION_REASONS):
        return "version", f"TLS version refused ({reason})"
    if reason == "HTTP_REQUEST":
        return "error", "plain HTTP sent to a TLS port"
    return "error", f"TLS handshake failed: {reason}"


# --------------------------------------------------------------------------- preambles


def peek_hello(conn: Conn, timeout: float):
    """The ClientHello (a :class:`~qpx.tlssniff.Hello`) read with ``MSG_PEEK`` within
    ``timeout``, the bytes left in the socket; or a string saying why not.  A hello
    split over several segments is polled every 5 ms (a peek leaves the socket readable,
    so waiting on it would spin)."""
    import gevent

    deadline = monotonic() + timeout
    conn.deadline = deadline
    seen = 0
    try:
        while True:
            data = conn.peek(MAX_HELLO + 1024)
            if not data:
                return "closed before the ClientHello was complete"
            if len(data) > seen:
                seen = len(data)
                hello = ClientHelloSniffer().feed(data)
                if hello is not None:
                    return hello
            if monotonic() >= deadline:
                raise DeadlineExceeded()
            gevent.sleep(0.005)
    except NotTls as e:
        return f"not a TLS ClientHello: {e}"
    except DeadlineExceeded:
        return "ClientHello not complete before the peek deadline"
    except OSError as e:
        return f"reading the ClientHello: {e.strerror or e}"
    finally:
        conn.deadline = 0.0




def refuse_trace_and_loops(req: Request, services: Services) -> None:
    """TRACE (off unless ``runtime.trace_enabled``: 405) and a request that already
    passed this proxy (its Via names us: 508)."""
    if req.method == "TRACE" and not services.trace_enabled:
        raise HttpError(405, "TRACE is disabled", "trace_disabled")
    if not req.plain and req.passed_through(services.policy.proxy_name):
        raise HttpError(508, "request already passed this proxy (Via)", "loop_detected")


# --------------------------------------------------------------------------- local answers


def answer_blocked(session: ClientSession, req: Request, started: float, message: str,
                   rule: str | None, reason: str) -> bool:
    """403 with ``messages.<message>``."""
    n = session.reply(403, [TEXT_PLAIN], session.services.policy.messages[message], req,
                      close=req.has_body())
    session.log_request(req, 403, started, rule=rule, action="block", bytes_out=n,
                        reason=reason)
    return True


def answer_local(session: ClientSession, req: Request, started: float, reply: LocalReply,
                 control: HeaderOps | None, rule: str | None) -> bool:
    """A rule's or route's ``local_response``, through its response header control."""
    headers = list(reply.headers)
    if control is not None:
        headers = control.apply(headers)
    n = session.reply(reply.status, headers, reply.body, req, close=req.has_body(),
                      head_only=req.method == "HEAD")
    session.log_request(req, reply.status, started, rule=rule, action="respond",
                        bytes_out=n)
    return True


def answer_max_forwards(session: ClientSession, req: Request, started: float,
                        rule: str | None, allow: bytes, echo_trace: bool) -> bool:
    """``Max-Forwards: 0`` (RFC 9110 §7.6.2): this hop answers OPTIONS (Allow) and,
    with ``echo_trace``, TRACE (the request echoed)."""
    if echo_trace and req.method == "TRACE":
        n = session.reply(200, [(b"content-type", b"Content-Type", b"message/http")],
                          writer.trace_echo(req), req, close=req.has_body())
    else:
        n = session.reply(200, [(b"allow", b"Allow", allow)], b"", req, close=req.has_body())
    session.log_request(req, 200, started, rule=rule, action="max-forwards", bytes_out=n)
    return True


# --------------------------------------------------------------------------- upstream proxy


def connect_via(services: Services, up: Conn, authority_b: bytes, deadline: float) -> bytes:
    """CONNECT through an upstream proxy; returns the bytes read after its 2xx head."""
    up.deadline = deadline
    try:
        up.sendall(writer.connect_request(authority_b, services.policy.via))
        parser = ResponseHeadParser(65536)
        while True:
            data = up.recv()
            if not data:
                raise UpstreamError(502, "upstream proxy closed during CONNECT")
            resp = parser.feed(data)
            if resp is None:
                continue
            if 100 <= resp.status < 200:
                parser, data = ResponseHeadParser(65536), parser.rest
                resp = parser.feed(data) if data else None
                if resp is None:
                    continue
            if not 200 <= resp.status < 300:
                raise UpstreamError(502, f"upstream proxy answered CONNECT with {resp.status}")
            up.deadline = 0.0
            return parser.rest
    except BadResponse as e:
        raise UpstreamError(502, f"upstream proxy CONNECT: {e.reason}") from None
    except DeadlineExceeded:
        raise UpstreamError(504, "upstream proxy CONNECT timed out") from None
    except OSError as e:
        raise UpstreamError(502, f"upstream proxy CONNECT failed: {e}") from None
