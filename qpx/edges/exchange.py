"""One request forwarded upstream and its response relayed back (all edges use this).

:func:`exchange` takes an already-serialised request head, gets a connection (pooled, or
dialed under the upstream deadline), writes head and body, reads the response head under
the same deadline (connect + response head: ``upstream_http_timeout_ms`` or the route's
``timeout_ms``), rewrites the head for the client and relays the body.

Failure mapping (DESIGN.md "Status codes"): refused/reset/bad framing → 502, timeout →
504.  A pooled connection that fails before any response byte, for a request whose body
was not yet sent, is retried once on a fresh connection (the peer closed an idle
keep-alive connection under us: nothing was processed).  An upstream connection goes back
to the pool only after a response framed without doubt and a request fully sent.
"""

from __future__ import annotations

import time

from ..http.body import (BodyFramingError, EarlyEOF, SinkError, SourceError, encode_chunks,
                         relay_body)
from ..http.chunked import ChunkedDecoder, ChunkError
from ..http.errors import HttpError, UpstreamError
from ..http.headers import Triples, http_date, strip_set
from ..http.request import Request
from ..http.response import Response, ResponseHeadParser
from ..netio import Conn, DeadlineExceeded
from ..relay import tunnel
from ..upstream import ResolveError, is_local_destination, is_own_listener, literal_ip
from .base import ClientGone, ClientSession

monotonic = time.monotonic

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Target:
    """Where a request goes: the endpoint to dial and the pool key it shares."""

    __slots__ = ("host", "port", "key", "guard", "label")

    def __init__(self, host: str, port: int, via_proxy: bool, guard: bool):
        self.host, self.port = host, port
        # The guard is part of the key: a connection dialed for a listener that allows
        # local destinations must never be lent to one that refuses them.
        self.key = ("proxy", host, port) if via_proxy else (host, port, guard)
        self.guard = guard  # refuse local destinations (SSRF guard)
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TargetCache:
    """Targets of direct requests by (host, port): a forward edge sees the same few hosts
    over and over, and a Target (pool key, label, Host bytes) is built once for each."""

    __slots__ = ("guard", "_map")

    def __init__(self, guard: bool):
        self.guard = guard
        self._map: dict[tuple[str, int | None], tuple[Target, bytes]] = {}

    def get(self, host: str, port: int | None) -> tuple[Target, bytes]:
        """(the Target, the authority as the request named it: Host bytes)."""
        key = (host, port)
        hit = self._map.get(key)
        if hit is None:
            if len(self._map) >= 4096:
                self._map.clear()
            h = f"[{host}]" if ":" in host else host
            hit = (Target(host, port or 80, False, self.guard),
                   (h if port is None else f"{h}:{port}").encode("ascii"))
            self._map[key] = hit
        return hit


class Result:
    __slots__ = ("status", "bytes_in", "bytes_out", "upstream", "head_latency")

    def __init__(self, status=0, bytes_in=0, bytes_out=0, upstream=None):
        self.status, self.bytes_in, self.bytes_out, self.upstream = \
            status, bytes_in, bytes_out, upstream
        self.head_latency = 0.0


def dial(session: ClientSession, target: Target, deadline: float) -> Conn:
    """Resolve, guard and connect.  Raises HttpError (403/508) for refused targets and
    UpstreamError (502/504) when the upstream cannot be reached."""
    services = session.services
    t0 = monotonic()
    try:
        addrs = services.dialer.addresses(target.host, target.port, deadline)
    except ResolveError as e:
        raise UpstreamError(502, str(e), sent=False) from None
    except DeadlineExceeded:
        raise UpstreamError(504, f"resolving {target.host} timed out", sent=False) from None
    for _, sockaddr in addrs:
        if is_own_listener(services.own_addresses, sockaddr[0], sockaddr[1]):
            raise HttpError(508, f"{target.label} is this proxy's own listener",
                            "loop_detected")
        if target.guard:
            ip = literal_ip(sockaddr[0])
            if ip is not None and is_local_destination(ip):
                raise HttpError(403, f"destination {sockaddr[0]} is local", "forbidden")
    try:
        conn = services.dialer.connect(addrs, deadline)
    except DeadlineExceeded:
        raise UpstreamError(504, f"connecting to {target.label} timed out",
                            sent=False) from None
    except OSError as e:
        raise UpstreamError(502, f"connecting to {target.label}: {e.strerror or e}",
                            sent=False) from None
    if services.metrics is not None:
        services.metrics.upstream_connect(session.name, monotonic() - t0)
    return conn


def _read_response(up: Conn, deadline: float, max_head: int
                   ) -> tuple[Response, bytes, ResponseHeadParser]:
    """The next final (or 101) response head, the bytes read after it and the parser
    (reusable for the next response once it has seen this body); 1xx informational
    heads are skipped.  Failures raise UpstreamError; ``stale`` marks the one case a
    replay is safe: the connection closed or reset before a single response byte."""
    data = b""
    parser = up.parser
    up.parser = None
    got = False  # any response byte at all (an informational head counts)
    while True:
        parser = parser.reset() if parser is not None else ResponseHeadParser(max_head)
        try:
            resp = parser.feed(data) if data else None
        except UpstreamError as e:
            e.before_response = False  # a malformed response: never replayed
            raise
        up.deadline = deadline
        first = True
        while resp is None:
            try:
                chunk = up.recv_later() if first else up.recv()
                first = False
            except DeadlineExceeded:
                raise UpstreamError(504, "upstream response timed out",
                                    before_response=not got) from None
            except OSError as e:
                raise UpstreamError(502, f"upstream connection failed: {e.strerror or e}",
                                    before_response=not got, stale=not got) from None
            if not chunk:
                raise UpstreamError(502, "upstream closed the connection",
                                    before_response=not got, stale=not got)
            got = True
            try:
                resp = parser.feed(chunk)
            except UpstreamError as e:
                e.before_response = False
                raise
        up.deadline = 0.0
        if 100 <= resp.status < 200 and resp.status != 101:
            data = parser.rest
            continue
        return resp, parser.rest, parser


def response_framing(req: Request, resp: Response) -> str:
    """RFC 9112 §6.3: how the response body is delimited."""
    if req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
        return "none"
    if resp.chunked:
        return "chunked"
    if resp.content_length is not None:
        return "length"
    return "eof"


class _Prepared:
    """The request as it leaves: the head plus every body byte already here, and the
    state needed to stream the rest.  Building it does not consume ``session.buf``:
    that happens only once the bytes are on their way (so a failed connect can be
    retried elsewhere with the body intact)."""

    __slots__ = ("data", "rest", "pending", "decoder", "body_bytes")

    def __init__(self, session: ClientSession, req: Request, head: bytes):
        buf = session.buf
        self.data, self.rest, self.pending, self.decoder, self.body_bytes = \
            head, buf, req.has_body(), None, 0
        if req.content_length and not req.expect_continue and len(buf) >= req.content_length:
            n = req.content_length
            self.data, self.rest, self.pending, self.body_bytes = head + buf[:n], buf[n:], \
                False, n
        elif req.chunked and buf:
            # Decode what has arrived before anything goes upstream: a malformed start
            # is refused with nothing sent (the upstream never sees a doomed request).
            decoder = ChunkedDecoder(session.services.limits.max_head)
            try:
                pieces = decoder.feed(buf)
            except ChunkError as e:
                raise HttpError(400, f"bad request body: {e}", "bad_request") from None
            self.data = head + encode_chunks(pieces, decoder.done)
            self.body_bytes = sum(len(p) for p in pieces)
            self.rest = decoder.rest if decoder.done else b""
            self.pending = not decoder.done
            self.decoder = decoder


def exchange(session: ClientSession, req: Request, target: Target, head: bytes,
             timeout: float, response_control=None, upgrade: bool = False) -> Result:
    """Send ``req`` (its head already serialised as ``head``, body still to come from
    the client) to ``target`` and relay the response.  Raises HttpError/UpstreamError
    before anything was sent to the client; after that, failures close the client."""
    try:
        return _exchange(session, req, target, head, timeout, response_control, upgrade)
    except UpstreamError as e:
        if e.upstream is None:
            e.upstream = target.label
        raise


def _send(session: ClientSession, req: Request, target: Target, out: _Prepared,
          deadline: float, upgrade: bool) -> tuple[Conn, Response, bytes, int, object]:
    """Write the request and read the response head.  A pooled connection found closed
    (EOF or reset before any response byte) is replaced by a fresh one once, when the
    whole request is still in memory.  Returns (connection, response, bytes after its
    head, body bytes sent, parser).  The upstream connection is closed on every failure."""
    services = session.services
    conn = None if upgrade else services.pool.get(target.key)
    reused = conn is not None
    while True:
        if conn is None:
            conn = dial(session, target, deadline)
        try:
            return _send_on(session, req, conn, out, deadline)
        except UpstreamError as e:
            conn.abort()
            conn = None
            if reused and e.stale and not out.pending:
                reused = False
                continue
            raise
        except BaseException:
            conn.abort()
            raise


def _send_on(session: ClientSession, req: Request, conn: Conn, out: _Prepared,
             deadline: float) -> tuple[Conn, Response, bytes, int, object]:
    services = session.services
    try:
        conn.sendall(out.data, services.send_timeout)
    except DeadlineExceeded:
        raise UpstreamError(504, "sending to upstream timed out") from None
    except OSError as e:
        # Nothing of a response yet: a pooled connection the peer had closed (EPIPE,
        # ECONNRESET) is stale; whatever it did with the bytes, it answered nothing.
        raise UpstreamError(502, f"sending to upstream: {e.strerror or e}",
                            stale=True) from None
    session.buf = out.rest
    sent = out.body_bytes
    if out.pending:
        if req.expect_continue:
            try:
                session.conn.sendall(CONTINUE, services.send_timeout)
            except (OSError, DeadlineExceeded) as e:
                raise ClientGone(f"sending 100 Continue: {e}") from None
        try:
            session.buf, n = relay_body(
                session.conn, conn, session.buf, "chunked" if req.chunked else "length",
                req.content_length or 0, "chunked" if req.chunked else "length",
                idle=services.body_timeout, send_timeout=services.send_timeout,
                pool=services.buffers, max_trailer=services.limits.max_head,
                decoder=out.decoder)
            sent += n
        except BodyFramingError as e:
            raise HttpError(400, f"bad request body: {e}", "bad_request") from None
        except (EarlyEOF, SourceError) as e:
            raise ClientGone(f"request body incomplete: {e}") from None
        except SinkError as e:
            raise UpstreamError(504 if e.timeout else 502,
                                f"sending the body upstream: {e}") from None
    resp, rest, parser = _read_response(conn, deadline, services.limits.max_head * 2)
    return conn, resp, rest, sent, parser


def _exchange(session: ClientSession, req: Request, target: Target, head: bytes,
              timeout: float, response_control, upgrade: bool) -> Result:
    services = session.services
    client = session.conn
    result = Result(0, 0, 0, target.label)
    started = monotonic()
    out = _Prepared(session, req, head)
    conn, resp, rest, result.bytes_in, parser = _send(session, req, target, out,
                                                      started + timeout, upgrade)
    result.head_latency = monotonic() - started

    if resp.status == 101:
        if not upgrade:
            conn.abort()
            raise UpstreamError(502, "unexpected 101 from upstream")
        return _upgraded(session, req, conn, resp, rest, result, response_control)

    framing = response_framing(req, resp)
    out_framing = framing
    close_client = session.wants_close(req)
    if framing == "chunked" and req.version == 10:
        out_framing, close_client = "raw", True
    elif framing == "eof":
        out_framing, close_client = "raw", True

    keep_length = out_framing == "length" and resp.keeps_length_line()
    fwd = resp.forward_head(keep_length) if response_control is None else None
    if fwd is not None:
        raw = resp.raw
        status_line = raw[:raw.index(b"\r\n")] if resp.version == 11 else \
            b"HTTP/1.1 %d %s" % (resp.status, resp.reason)
        lines = [status_line, fwd, b"\r\n"]
        has_date = resp.has_date
    else:
        keep_length = False
        headers: Triples = resp.headers
        if response_control is not None:
            headers = response_control.apply(headers)
        lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason or b"")]
        skip = strip_set(resp.conn_tokens)
        has_date = False
        for ln, name, value in headers:
            if ln in skip:
                continue
            if ln == b"date":
                has_date = True
            lines.append(name + b": " + value + b"\r\n")
    if not has_date:
        lines.append(b"Date: " + http_date() + b"\r\n")
    lines.append(services.policy.via_line)
    if keep_length:
        pass
    elif out_framing == "length" or (framing == "none" and resp.content_length is not None
                                     and req.method == "HEAD"):
        lines.append(b"Content-Length: %d\r\n" % (resp.content_length or 0))
    elif out_framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if close_client:
        lines.append(b"Connection: close\r\n")
        session.closing = True
    elif req.version == 10:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    out_head = b"".join(lines)
    result.status = resp.status

    reusable = resp.keep_alive and framing != "eof"
    try:
        if framing == "length" and len(rest) >= (resp.content_length or 0):
            n = resp.content_length or 0
            body = rest[:n] if n < len(rest) else rest
            client.sendall(out_head + body, services.send_timeout)
            leftover = rest[n:] if n < len(rest) else b""
            result.bytes_out = len(out_head) + n
            if reusable and not leftover and req.method != "HEAD":
                parser.feed_body(body)  # llhttp stays in step: reuse it next time
                conn.parser = parser
        else:
            length = resp.content_length or 0
            if framing == "length" and out_framing == "length" and rest:
                # The body bytes that came with the head leave with it: one write.
                client.sendall(out_head + rest, services.send_timeout)
                result.bytes_out = len(out_head) + len(rest)
                length -= len(rest)
                rest = b""
            else:
                client.sendall(out_head, services.send_timeout)
                result.bytes_out = len(out_head)
            leftover, n = relay_body(
                conn, client, rest, framing, length, out_framing,
                idle=timeout if timeout > services.body_timeout else services.body_timeout,
                send_timeout=services.send_timeout, pool=services.buffers,
                max_trailer=services.limits.max_head)
            result.bytes_out += n
    except (BodyFramingError, EarlyEOF, SourceError) as e:
        # The upstream broke the body: the client must not take a truncated message
        # for a complete one, so its connection is reset, not closed.
        conn.abort()
        session.closing = True
        client.abort()
        raise ClientGone(f"upstream response body broken: {e}") from None
    except (SinkError, OSError, DeadlineExceeded) as e:
        conn.abort()
        session.closing = True
        raise ClientGone(f"relaying the response: {e}") from None
    if reusable and not leftover:
        services.pool.put(target.key, conn)
    else:
        conn.close()
    return result


def _upgraded(session: ClientSession, req: Request, conn: Conn, resp: Response, rest: bytes,
              result: Result, response_control) -> Result:
    """101 Switching Protocols: pass the head on, then tunnel both ways."""
    services = session.services
    headers = resp.headers
    if response_control is not None:
        headers = response_control.apply(headers)
    skip = strip_set(resp.conn_tokens) - {b"upgrade", b"connection"}
    lines = [b"HTTP/1.1 101 %s\r\n" % (resp.reason or b"Switching Protocols")]
    for ln, name, value in headers:
        if ln not in skip and ln != b"connection":
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"Connection: Upgrade\r\n")
    lines.append(b"Via: " + services.policy.via + b"\r\n\r\n")
    out = b"".join(lines)
    session.closing = True
    result.status = 101
    try:
        session.conn.sendall(out)
        sent_up, sent_down = tunnel(session.conn, conn, services.tunnel_idle,
                                    services.buffers, to_b=session.buf, to_a=rest)
        session.buf = b""
        result.bytes_in += sent_up
        result.bytes_out += len(out) + sent_down
        if services.metrics is not None:
            services.metrics.tunnel_bytes(session.name, sent_up, sent_down)
    except (OSError, DeadlineExceeded):
        pass  # the tunnel ended by reset or idle timeout: both sides are closed below
    finally:
        conn.close()
    return result
