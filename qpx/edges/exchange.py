"""One request forwarded upstream and its response relayed back: :class:`UpstreamExchange`.

Every edge hands over a request whose head :mod:`qpx.http.writer` has already written.
The exchange gets a connection (pooled, or dialed under the upstream deadline), writes
head and body, reads the response head under the same deadline (connect + response
head: ``upstream_http_timeout_ms`` or the route's ``timeout_ms``), writes the head for
the client and relays the body (:mod:`qpx.bodies`), then returns the connection to the
pool when its framing leaves no doubt.  It owns its state; what the client session must
learn (bytes the client sent past the request, whether to close) comes back in the
:class:`ExchangeResult`, and the session applies it.

Failure mapping (DESIGN.md "Status codes"): refused/reset/bad framing → 502, timeout →
504, as :class:`~qpx.http.errors.UpstreamError` built complete where it is raised.  A
pooled connection that fails before any response byte, for a request whose body was not
yet sent, is retried once on a fresh connection (the peer closed an idle keep-alive
connection under us: nothing was processed).
"""

from __future__ import annotations

import errno
import time

from ..bodies import (
    BodyFramingError,
    BodyTooLarge,
    EarlyEOF,
    SinkError,
    SourceError,
    relay_body,
)
from ..http import writer
from ..http.chunked import ChunkedDecoder, ChunkError, encode_chunks
from ..http.errors import BadResponse, HttpError, UpstreamError
from ..http.headers import HeaderOps
from ..http.request import Request
from ..http.response import Response, ResponseHeadParser
from ..netio import Conn, DeadlineExceeded
from ..relay import tunnel
from ..upstream import ResolveError, Target, is_local_destination, is_own_listener, literal_ip
from .services import Services
from .session import ClientGone, ClientSession

monotonic = time.monotonic

# This host, not the upstream, ran out of something: never the upstream's fault.
LOCAL_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# How long an upstream that stopped taking the request body gets to show the response
# it sent (RFC 9112 §9.5: an early answer, e.g. 413, is relayed, not lost).
EARLY_ANSWER_WAIT = 1.0
# Body bytes read with a response head up to this size are joined to the head for one
# write; past it the copy costs more than a second system call.
JOIN_LIMIT = 16384


class ExchangeResult:
    """What an exchange did: the status relayed, bytes from the client (body) and to it,
    the upstream's label, the connect + response-head latency, the bytes the client sent
    past this request (``client_rest``), whether its connection must close, and whether
    the upstream answered before taking the whole body (``early``: the rest of the
    client's body is unread)."""

    __slots__ = ("status", "bytes_in", "bytes_out", "upstream", "head_latency",
                 "client_rest", "close", "early")

    def __init__(self, upstream: str):
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream = upstream
        self.head_latency = 0.0
        self.client_rest = b""
        self.close = False
        self.early = False


def dial(services: Services, listener: str, target: Target, deadline: float) -> Conn:
    """Resolve, guard and connect.  Raises HttpError (403/508) for refused targets and
    UpstreamError (502/504) when the upstream cannot be reached."""
    t0 = monotonic()
    label = target.label
    try:
        addrs = services.dialer.addresses(target.host, target.port, deadline)
    except ResolveError as e:
        raise UpstreamError(502, str(e), sent=False, upstream=label) from None
    except DeadlineExceeded:
        raise UpstreamError(504, f"resolving {target.host} timed out", sent=False,
                            upstream=label) from None
    for _, sockaddr in addrs:
        if is_own_listener(services.own_addresses, sockaddr[0], sockaddr[1]):
            raise HttpError(508, f"{label} is this proxy's own listener", "loop_detected")
        if target.guard:
            ip = literal_ip(sockaddr[0])
            if ip is not None and is_local_destination(ip):
                raise HttpError(403, f"destination {sockaddr[0]} is local", "forbidden")
    try:
        conn = services.dialer.connect(addrs, deadline)
    except DeadlineExceeded:
        raise UpstreamError(504, f"connecting to {label} timed out", sent=False,
                            upstream=label) from None
    except OSError as e:
        if e.errno in LOCAL_ERRNOS:
            raise UpstreamError(503, f"connecting to {label}: this host is out of "
                                     f"resources ({e.strerror or e})", sent=False,
                                upstream=label, local=True) from None
        raise UpstreamError(502, f"connecting to {label}: {e.strerror or e}", sent=False,
                            upstream=label) from None
    if target.tls is not None:
        _upstream_tls(services, listener, target, conn, deadline)
    if services.metrics is not None:
        services.metrics.upstream_connect(listener, monotonic() - t0)
    return conn


def _upstream_tls(services: Services, listener: str, target: Target, conn: Conn,
                  deadline: float) -> None:
    """TLS to an https:// upstream: SNI and verification against its host name, the
    last session of the same pool key resumed.  A failure closes ``conn`` and raises
    UpstreamError 502 (504 on the deadline) naming why."""
    import ssl

    from ..tlsconn import handshake, wrap

    label = target.label
    try:
        wrap(conn, target.tls, False, target.sni,
             services.pool.tls_session(target.key))
        handshake(conn, deadline)
        return
    except ssl.SSLCertVerificationError as e:
        if services.metrics is not None:
            services.metrics.upstream_tls_failure(listener)
        error = UpstreamError(502, f"TLS to {label}: certificate verification failed: "
                                   f"{e.verify_message or e.reason}", sent=False,
                              upstream=label)
    except DeadlineExceeded:
        error = UpstreamError(504, f"TLS handshake with {label} timed out", sent=False,
                              upstream=label)
    except ssl.SSLError as e:
        error = UpstreamError(502, f"TLS handshake with {label} failed: "
                                   f"{e.reason or e}", sent=False, upstream=label)
    except OSError as e:
        error = UpstreamError(502, f"TLS handshake with {label}: {e.strerror or e}",
                              sent=False, upstream=label)
    conn.close()
    raise error


class UpstreamExchange:
    """One request/response exchange with one upstream target."""

    __slots__ = ("session", "services", "req", "target", "label", "control", "upgrade",
                 "data", "rest", "pending", "decoder", "conn", "parser", "result", "early",
                 "max_body")

    def __init__(self, session: ClientSession, req: Request, target: Target,
                 control: HeaderOps | None = None, upgrade: bool = False):
        self.session = session
        self.services = session.services
        self.req = req
        self.target = target
        self.label = target.label
        self.control = control  # response header control
        self.upgrade = upgrade
        self.conn: Conn | None = None
        self.parser: ResponseHeadParser | None = None
        self.result = ExchangeResult(target.label)
        self.early = False  # the upstream answered before taking the whole body
        self.max_body = session.limits.max_body

    # ------------------------------------------------------------------ request

    def _decode_start(self, head: bytes, buf: bytes) -> None:
        """Decode the chunked body bytes already here before anything goes upstream: a
        malformed start is refused with nothing sent (the upstream never sees a doomed
        request)."""
        decoder = ChunkedDecoder(self.session.limits.max_head)
        try:
            pieces = decoder.feed(buf)
        except ChunkError as e:
            raise HttpError(400, f"bad request body: {e}", "bad_request") from None
        size = sum(len(p) for p in pieces)
        if self.max_body is not None and size > self.max_body:
            raise too_large(self.max_body)
        self.data = head + encode_chunks(pieces, decoder.done)
        self.result.bytes_in = size
        self.rest = decoder.rest if decoder.done else b""
        self.pending = not decoder.done
        self.decoder = decoder

    def _send_on(self, conn: Conn) -> UpstreamError | None:
        """Write the request (head, and the body as the client sends it).  When the
        upstream stops taking it (reset, or no longer reading), the failure is returned,
        not raised: the upstream may have answered early, and that answer is the one to
        relay (:meth:`_send`)."""
        services = self.services
        req = self.req
        try:
            conn.sendall(self.data, services.send_timeout)
        except DeadlineExceeded:
            return UpstreamError(504, "sending to upstream timed out", upstream=self.label)
        except OSError as e:
            # A pooled connection the peer had closed (EPIPE, ECONNRESET) is stale;
            # whatever it did with the bytes, it answered nothing, and all of them are
            # still here to send again.
            return UpstreamError(502, f"sending to upstream: {e.strerror or e}", stale=True,
                                 upstream=self.label)
        self.result.client_rest = self.rest
        if not self.pending:
            return None
        client = self.session.conn
        if req.expect_continue:
            try:
                client.sendall(writer.CONTINUE, services.send_timeout)
            except (OSError, DeadlineExceeded) as e:
                raise ClientGone(f"sending 100 Continue: {e}") from None
        framing = "chunked" if req.chunked else "length"
        try:
            self.result.client_rest, n = relay_body(
                client, conn, self.rest, framing, req.content_length or 0, framing,
                idle=services.body_timeout, send_timeout=services.send_timeout,
                pool=services.buffers, max_trailer=self.session.limits.max_head,
                decoder=self.decoder,
                limit=-1 if self.max_body is None else self.max_body - self.result.bytes_in)
        except BodyTooLarge:
            raise too_large(self.max_body) from None
        except BodyFramingError as e:
            raise HttpError(400, f"bad request body: {e}", "bad_request") from None
        except (EarlyEOF, SourceError) as e:
            raise ClientGone(f"request body incomplete: {e}") from None
        except SinkError as e:
            return UpstreamError(504 if e.timeout else 502, f"sending the body upstream: {e}",
                                 upstream=self.label)
        self.result.bytes_in += n
        return None

    def _read_head(self, conn: Conn, parser, deadline: float) -> tuple[Response, bytes]:
        """The next final (or 101) response head and the bytes read after it; 1xx
        informational heads are skipped.  ``stale`` marks the one case a replay is
        safe: the connection closed or reset before a single response byte."""
        data = b""
        got = False  # any response byte at all (an informational head counts)
        max_head = self.session.limits.max_head * 2
        label = self.label
        while True:
            parser = parser.reset() if parser is not None else ResponseHeadParser(max_head)
            try:
                resp = parser.feed(data) if data else None
                conn.deadline = deadline
                first = True
                while resp is None:
                    try:
                        chunk = (conn.recv_later_large(self.services.buffers) if first
                                 else conn.recv())
                        first = False
                    except DeadlineExceeded:
                        raise UpstreamError(504, "upstream response timed out",
                                            before_response=not got, upstream=label) from None
                    except OSError as e:
                        raise UpstreamError(502, "upstream connection failed: "
                                            f"{e.strerror or e}", before_response=not got,
                                            stale=not got, upstream=label) from None
                    if not chunk:
                        raise UpstreamError(502, "upstream closed the connection",
                                            before_response=not got, stale=not got,
                                            upstream=label)
                    got = True
                    resp = parser.feed(chunk)
            except BadResponse as e:  # malformed: never replayed
                raise UpstreamError(502, e.reason, before_response=False,
                                    upstream=label) from None
            conn.deadline = 0.0
            if 100 <= resp.status < 200 and resp.status != 101:
                data = parser.rest
                continue
            self.parser = parser
            return resp, parser.rest

    def _send(self, deadline: float, timeout: float) -> tuple[Response, bytes]:
        """Write the request and read the response head: by ``deadline`` (connect and
        response head), or ``timeout`` after the last body byte went out when the body
        was streamed (a slow client is the body timeout's business, not the
        upstream's).  A pooled connection found closed (EOF or reset before any response
        byte) is replaced by a fresh one once, when nothing of the request was taken
        yet.  An upstream that stopped taking the body but answered gets its answer
        relayed.  The upstream connection is closed on every failure."""
        services = self.services
        pooled = None if self.upgrade else services.pool.get(self.target.key)
        conn, parser = pooled if pooled is not None else (None, None)
        reused = conn is not None
        while True:
            if conn is None:
                conn = dial(services, self.session.name, self.target, deadline)
            try:
                failed = self._send_on(conn)
                if self.pending and failed is None:
                    deadline = max(deadline, monotonic() + timeout)
                if failed is None:
                    head = self._read_head(conn, parser, deadline)
                else:
                    head = self._early_answer(conn, parser, failed, deadline)
                self.conn = conn
                if not reused and self.target.tls is not None:
                    # a TLS 1.3 ticket arrives before the response: keep the session
                    # for the next dial to this upstream, whatever becomes of this one
                    services.pool.remember_session(self.target.key, conn)
                return head
            except UpstreamError as e:
                conn.abort()
                conn = parser = None
                if reused and e.stale:
                    reused = False
                    continue
                raise
            except BaseException:
                conn.abort()
                raise

    def _early_answer(self, conn: Conn, parser, failed: UpstreamError,
                      deadline: float) -> tuple[Response, bytes]:
        """The upstream stopped taking the request: the response it sent before, if
        any (relayed, then both connections close); else ``failed`` is raised."""
        try:
            resp, rest = self._read_head(
                conn, parser, min(deadline, monotonic() + EARLY_ANSWER_WAIT))
        except UpstreamError:
            raise failed from None
        if resp.status == 101:
            raise failed
        self.early = self.result.early = True
        self.result.client_rest = b""  # the rest of the client's body stays unread
        return resp, rest

    # ------------------------------------------------------------------ response

    def run(self, head: bytes, timeout: float) -> ExchangeResult:
        """Send the request (``head`` written, body still to come from the client) and
        relay the response.  Raises HttpError/UpstreamError before anything was sent to
        the client; after that, failures raise :class:`ClientGone`."""
        started = monotonic()
        # The request as it leaves: the head plus every body byte already here, and the
        # state to stream the rest.  The client's buffered bytes stay intact until they
        # are on their way (a failed connect can be retried elsewhere).
        req = self.req
        buf = self.session.buf
        self.data, self.rest, self.pending, self.decoder = head, buf, req.has_body(), None
        if req.content_length and not req.expect_continue and len(buf) >= req.content_length:
            n = req.content_length
            self.data, self.rest, self.pending = head + buf[:n], buf[n:], False
            self.result.bytes_in = n
        elif req.chunked and buf:
            self._decode_start(head, buf)
        if self.max_body is not None and (req.content_length or 0) > self.max_body:
            raise too_large(self.max_body)
        resp, rest = self._send(started + timeout, timeout)
        self.result.head_latency = monotonic() - started
        if resp.status == 101:
            if not self.upgrade:
                self.conn.abort()
                raise UpstreamError(502, "unexpected 101 from upstream", upstream=self.label)
            return self._upgraded(resp, rest)
        return self._relay(resp, rest, timeout)

    def _relay(self, resp: Response, rest: bytes, timeout: float) -> ExchangeResult:
        services = self.services
        req = self.req
        conn = self.conn
        client = self.session.conn
        result = self.result
        framing = writer.choose_framing(req, resp, self.early or self.session.wants_close(req))
        out_head = writer.response_head(req, resp, framing, services.policy.via_line,
                                        self.control)
        result.status = resp.status
        inbound, outbound, result.close = framing
        reusable = resp.keep_alive and inbound != "eof" and not self.early
        keep_parser = False
        try:
            length = resp.content_length or 0
            if inbound == "length" and len(rest) >= length:
                body = rest[:length] if length < len(rest) else rest
                send_head(client, out_head, body, services.send_timeout)
                leftover = rest[length:] if length < len(rest) else b""
                result.bytes_out = len(out_head) + length
                keep_parser = reusable and not leftover
                if keep_parser:
                    self.parser.feed_body(body)  # llhttp stays in step: reuse it next time
            else:
                if inbound == "length" and outbound == "length" and rest:
                    # The body bytes that came with the head leave with it.
                    send_head(client, out_head, rest, services.send_timeout)
                    result.bytes_out = len(out_head) + len(rest)
                    length -= len(rest)
                    rest = b""
                else:
                    client.sendall(out_head, services.send_timeout)
                    result.bytes_out = len(out_head)
                leftover, n = relay_body(
                    conn, client, rest, inbound, length, outbound,
                    idle=max(timeout, services.body_timeout),
                    send_timeout=services.send_timeout, pool=services.buffers,
                    max_trailer=self.session.limits.max_head)
                result.bytes_out += n
        except (BodyFramingError, EarlyEOF, SourceError) as e:
            # The upstream broke the body: the client must not take a truncated message
            # for a complete one, so its connection is reset, not closed.
            conn.abort()
            client.abort()
            raise ClientGone(f"upstream response body broken: {e}") from None
        except (SinkError, OSError, DeadlineExceeded) as e:
            conn.abort()
            raise ClientGone(f"relaying the response: {e}") from None
        if reusable and not leftover:
            services.pool.put(self.target.key, conn, self.parser if keep_parser else None)
        else:
            conn.close()
        return result

    def _upgraded(self, resp: Response, rest: bytes) -> ExchangeResult:
        """101 Switching Protocols: pass the head on, then tunnel both ways."""
        services = self.services
        conn = self.conn
        result = self.result
        out = writer.upgrade_head(resp, services.policy.via, self.control)
        result.status = 101
        result.close = True
        try:
            self.session.conn.sendall(out)
            sent_up, sent_down = tunnel(self.session.conn, conn, services.tunnel_idle,
                                        services.buffers, to_b=result.client_rest, to_a=rest)
            result.client_rest = b""
            result.bytes_in += sent_up
            result.bytes_out += len(out) + sent_down
            if services.metrics is not None:
                services.metrics.tunnel_bytes(self.session.name, sent_up, sent_down)
        except (OSError, DeadlineExceeded):
            pass  # the tunnel ended by reset or idle timeout: both sides are closed below
        finally:
            conn.close()
        return result


def send_head(client, head: bytes, body: bytes, timeout: float) -> None:
    """A response head and the body bytes read with it: one write when the body is
    small, two when joining them would copy a large first read (up to FIRST_READ)."""
    if len(body) <= JOIN_LIMIT:
        client.sendall(head + body, timeout)
    else:
        client.sendall(head, timeout)
        client.sendall(body, timeout)


def too_large(limit: int) -> HttpError:
    return HttpError(413, f"request body over {limit} bytes", "payload_too_large")
