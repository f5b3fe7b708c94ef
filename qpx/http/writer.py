"""Every HTTP/1.1 head qpxd writes, as pure functions of parsed messages (sans-IO).

The other half of :mod:`qpx.http.request` / :mod:`qpx.http.response`, in the manner of
h11's ``_writers.py``: edges decide, this module formats.  Nothing here touches a
socket, a clock (beyond the cached ``Date``) or the configuration; policy arrives as
bytes (``via``) and compiled :class:`~qpx.http.headers.HeaderOps`.

Strategy (RFC 9112, RFC 9110 §7.6):

- a forwarded message never carries the framing it arrived with: qpxd writes
  ``Content-Length`` / ``Transfer-Encoding: chunked`` itself (§6), drops hop-by-hop
  fields and whatever ``Connection`` nominated (RFC 9110 §7.6.1), and appends
  ``Via: 1.1 <proxy_name>`` (§7.6.3);
- the common case is cut from the received bytes (``Request.forward_lines`` /
  ``Response.forward_head``: no field list is built); anything unusual (rare hop-by-hop
  fields, header control) goes through the per-field :func:`~qpx.http.headers.serialize`;
- request heads come in three variants: forward/transparent (:func:`request_head`, the
  client's Host or the target authority), reverse (:func:`reverse_request_head` with
  ``X-Forwarded-*``), and CONNECT to an upstream proxy (:func:`connect_request`);
- response heads for the client (:func:`response_head`, :func:`upgrade_head`) follow the
  framing chosen by :func:`choose_framing` (RFC 9112 §6.3); local replies
  (:func:`local_reply`) are complete messages.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import phrase
from .headers import HeaderOps, Triples, http_date, serialize, strip_set
from .request import Request
from .response import Response

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\nVia: "
_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"

# fields a forwarded request never carries as received (qpxd writes its own)
_FORWARD_SKIP = frozenset((b"host", b"expect", b"max-forwards"))
_REVERSE_SKIP = _FORWARD_SKIP | frozenset((b"x-forwarded-for", b"x-forwarded-proto",
                                           b"x-forwarded-host"))
_REVERSE_SKIP_ALL = strip_set(frozenset()) | _REVERSE_SKIP
_TRACE_HIDDEN = (b"proxy-authorization", b"authorization", b"cookie")


def via_value(proxy_name: str) -> bytes:
    """Our ``Via`` entry: ``1.1 <proxy_name>`` (RFC 9110 §7.6.3)."""
    return b"1.1 " + proxy_name.encode("ascii")


def via_line(via: bytes) -> bytes:
    return b"Via: " + via + b"\r\n"


def hostport(host: str, port: int | None) -> str:
    """``host[:port]`` with IPv6 literals in brackets."""
    h = f"[{host}]" if ":" in host else host
    return h if port is None else f"{h}:{port}"


def authority(host: str, port: int | None) -> bytes:
    """:func:`hostport` as the bytes of a Host field or a request target."""
    return hostport(host, port).encode("ascii")


# --------------------------------------------------------------------------- requests


def _framing_line(req: Request) -> bytes:
    if req.chunked:
        return _TE_CHUNKED
    if req.content_length is not None:
        return b"Content-Length: %d\r\n" % req.content_length
    return b""


def request_head(req: Request, method: bytes, path: bytes, absolute: bytes | None,
                 host: bytes, via: bytes, headers: Triples | None = None,
                 max_forwards: int | None = None, scheme: bytes = b"http") -> bytes:
    """A forward or transparent request head: the request line (origin-form ``path``,
    or absolute-form ``<scheme>://<absolute><path>`` for an upstream proxy), the
    client's fields minus hop-by-hop ones, our ``Host``, ``Via`` and framing.
    ``headers``: a header-controlled field list; None forwards the client's fields."""
    first_line = b"%s %s HTTP/1.1\r\n" % (method, path) if absolute is None else \
        b"%s %s://%s%s HTTP/1.1\r\n" % (method, scheme, absolute, path)
    if headers is None and req.plain:  # the common case: cut the raw head
        parts = [first_line[:-2], req.forward_lines(), b"\r\nHost: ", host, b"\r\nVia: ",
                 via, b"\r\n"]
        if req.chunked:
            parts.append(_TE_CHUNKED)
        elif req.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % req.content_length)
        parts.append(b"\r\n")
        return b"".join(parts)
    skip = strip_set(req.conn_tokens) | _FORWARD_SKIP
    extra = [b"Host: " + host + b"\r\n", b"Via: " + via + b"\r\n"]
    if max_forwards is not None:
        extra.append(b"Max-Forwards: %d\r\n" % max_forwards)
    extra.append(_framing_line(req))
    if req.upgrade is not None:
        extra.append(b"Connection: Upgrade\r\nUpgrade: " + req.upgrade + b"\r\n")
    return serialize(first_line, req.headers if headers is None else headers, skip, extra)


def reverse_request_head(req: Request, method: bytes, target: bytes, host: bytes,
                         client_ip: bytes, client_host: bytes, proto: bytes, via_line: bytes,
                         max_forwards: int | None, headers: Triples | None = None) -> bytes:
    """A reverse request head for one upstream: origin-form ``target`` (the upstream's
    base path already prefixed), ``Host``, ``X-Forwarded-For`` (the client appended to
    the ones it sent), ``-Proto``, ``-Host`` (the client's authority), ``Via``,
    ``Max-Forwards``, framing and the upgrade offer."""
    xff = client_ip if req.plain else b", ".join(req.values(b"x-forwarded-for") + [client_ip])
    extra = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n%s" \
        % (xff, proto, client_host, via_line)
    if max_forwards is not None:
        extra += b"Max-Forwards: %d\r\n" % max_forwards
    if req.chunked:
        extra += _TE_CHUNKED
    elif req.content_length is not None:
        extra += b"Content-Length: %d\r\n" % req.content_length
    if req.upgrade is not None:
        extra += b"Connection: Upgrade\r\nUpgrade: " + req.upgrade + b"\r\n"
    if headers is None and req.plain:
        return b"%s %s HTTP/1.1%s\r\nHost: %s\r\n%s\r\n" % (
            method, target, req.forward_lines(), host, extra)
    skip = strip_set(req.conn_tokens) | _REVERSE_SKIP if req.conn_tokens else _REVERSE_SKIP_ALL
    return serialize(b"%s %s HTTP/1.1\r\n" % (method, target),
                     req.headers if headers is None else headers, skip,
                     [b"Host: " + host + b"\r\n", extra])


def connect_request(authority_b: bytes, via: bytes) -> bytes:
    """``CONNECT`` to an upstream proxy (RFC 9110 §9.3.6: Host = the target)."""
    return b"CONNECT %s HTTP/1.1\r\nHost: %s\r\nVia: %s\r\n\r\n" % (authority_b, authority_b,
                                                                    via)


def probe_request(path: str, authority_s: str) -> bytes:
    """An active health check's GET."""
    return (b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: qpxd-health\r\n"
            b"Connection: close\r\n\r\n" % (path.encode(), authority_s.encode()))


# --------------------------------------------------------------------------- responses


class Framing(NamedTuple):
    """How a response body arrives (``inbound``: none | length | chunked | eof), how it
    leaves (``outbound``: none | length | chunked | raw) and whether the client
    connection must close after it."""

    inbound: str
    outbound: str
    close: bool


# Every possible answer, built once: choosing one allocates nothing per request.
_SAME = {kind: (Framing(kind, kind, False), Framing(kind, kind, True))
         for kind in ("none", "length", "chunked")}
_EOF_RAW = Framing("eof", "raw", True)
_CHUNKED_RAW = Framing("chunked", "raw", True)


def choose_framing(req: Request, resp: Response, client_close: bool) -> Framing:
    """How the response body is delimited (RFC 9112 §6.3) and how it is relayed: the
    same as received, except that a close-delimited body, or a chunked one for an
    HTTP/1.0 client, is sent raw and the client connection closes after it."""
    if req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
        return _SAME["none"][client_close]
    if resp.chunked:
        return _CHUNKED_RAW if req.version == 10 else _SAME["chunked"][client_close]
    if resp.content_length is not None:
        return _SAME["length"][client_close]
    return _EOF_RAW


def response_head(req: Request, resp: Response, framing: Framing, via_line: bytes,
                  control: HeaderOps | None = None) -> bytes:
    """The upstream's response head as the client receives it."""
    inbound, out, close = framing
    keep_length = out == "length" and resp.keeps_length_line()
    fwd = resp.forward_head(keep_length) if control is None else None
    if fwd is not None:
        raw = resp.raw
        status_line = raw[:raw.index(b"\r\n")] if resp.version == 11 else \
            b"HTTP/1.1 %d %s" % (resp.status, resp.reason)
        lines = [status_line, fwd, b"\r\n"]
        has_date = resp.has_date
    else:
        keep_length = False
        headers: Triples = resp.headers
        if control is not None:
            headers = control.apply(headers)
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
    lines.append(via_line)
    if keep_length:
        pass
    elif out == "length" or (inbound == "none" and resp.content_length is not None
                             and req.method == "HEAD"):
        lines.append(b"Content-Length: %d\r\n" % (resp.content_length or 0))
    elif out == "chunked":
        lines.append(_TE_CHUNKED)
    if close:
        lines.append(_CLOSE)
    elif req.version == 10:
        lines.append(_KEEP_ALIVE)
    lines.append(b"\r\n")
    return b"".join(lines)


def upgrade_head(resp: Response, via: bytes, control: HeaderOps | None = None) -> bytes:
    """``101 Switching Protocols`` as the client receives it: the upstream's fields
    minus hop-by-hop ones, but ``Upgrade`` kept and ``Connection: Upgrade``."""
    headers = resp.headers
    if control is not None:
        headers = control.apply(headers)
    skip = strip_set(resp.conn_tokens) - {b"upgrade", b"connection"}
    lines = [b"HTTP/1.1 101 %s\r\n" % (resp.reason or b"Switching Protocols")]
    for ln, name, value in headers:
        if ln not in skip and ln != b"connection":
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"Connection: Upgrade\r\n")
    lines.append(b"Via: " + via + b"\r\n\r\n")
    return b"".join(lines)


def connect_established(via: bytes) -> bytes:
    """The 200 that opens a CONNECT tunnel (no framing fields, RFC 9110 §9.3.6)."""
    return _ESTABLISHED + via + b"\r\n\r\n"


def has_body(status: int) -> bool:
    return status >= 200 and status not in (204, 304)


def local_reply(status: int, headers, body: bytes, via: bytes, *, close: bool,
                http10: bool = False, head_only: bool = False) -> bytes:
    """A complete response qpxd answers itself: status line, ``headers`` ((lname, name,
    value) triples), Date, Via, framing, and the body unless ``head_only``.
    ``http10``: the client spoke HTTP/1.0 and the connection stays open."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase(status).encode())]
    for _, name, value in headers:
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"Date: " + http_date() + b"\r\n")
    lines.append(b"Via: " + via + b"\r\n")
    with_body = has_body(status)
    if with_body:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        lines.append(_CLOSE)
    elif http10:
        lines.append(_KEEP_ALIVE)
    lines.append(b"\r\n")
    return b"".join(lines) + (body if with_body and not head_only else b"")


def simple_response(status: int, content_type: bytes, body: bytes) -> bytes:
    """A minimal complete response that closes the connection (status endpoints)."""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s"
            % (status, phrase(status).encode(), content_type, len(body), body))


def trace_echo(req: Request) -> bytes:
    """The body of a TRACE answered here (Max-Forwards: 0): the request as received,
    credentials and cookies left out (RFC 9110 §9.3.8)."""
    return b"%s %s HTTP/1.1\r\n" % (req.method.encode(), req.target.encode()) + \
        b"".join(n + b": " + v + b"\r\n" for ln, n, v in req.headers
                 if ln not in _TRACE_HIDDEN) + b"\r\n"
