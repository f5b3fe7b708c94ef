"""HTTP/1.1 request heads: strict parsing and validation (sans-IO).

Tokenising is done by llhttp (through ``httptools``) in its strict mode; qpxd adds the
rules llhttp leaves to the application.  Where RFC 9112 lets a recipient "reject or
repair", qpxd rejects (DESIGN.md, reliability-anchors.md qpxd-R11):

- framing: Content-Length must be ``1*DIGIT`` and single-valued (llhttp), CL together
  with Transfer-Encoding is refused (RFC 9112 §6.1 "MAY reject"; we always do), the only
  transfer coding is ``chunked`` on its own (others: 501, §6.1 "SHOULD 501"),
  Transfer-Encoding in HTTP/1.0 is faulty framing (§6.1) → 400;
- lines: bare LF, bare CR, obs-fold, whitespace before the colon or before the first
  header, NUL/CTL in values, non-token names → 400 (llhttp strict mode, §2.2 / §5);
- request target (§3.2): origin-form for ordinary requests, absolute-form ``http://``,
  authority-form only with CONNECT and with a port (RFC 9110 §9.3.6), ``*`` only with
  OPTIONS; no fragment, no userinfo (RFC 9110 §4.2.4);
- Host (§3.2): required in HTTP/1.1, at most one, a valid ``uri-host[:port]``;
- ``Connection`` may not nominate Content-Length, Transfer-Encoding or Host (hop-by-hop
  stripping must never remove framing); ``Expect`` other than ``100-continue`` → 417;
- limits: request line over ``max_request_line_bytes`` → 414, head over
  ``max_header_bytes`` or more than ``max_header_count`` fields → 431; HTTP/0.9 → 400,
  other versions → 505, methods llhttp does not know → 501.

The head is fed to llhttp incrementally as bytes arrive, so garbage is refused at once,
but never beyond the end of the head (the first CRLFCRLF): bodies are framed by
``qpx.http.body``, which re-serialises them, so llhttp's parser object lives for one
head only and is never asked to skip or decode a body.
"""

from __future__ import annotations

import ipaddress
import re

import httptools

from .errors import HttpError

_HOST = re.compile(rb"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9\-._~]*))(?::([0-9]{1,5}))?$")
_SCHEME = re.compile(rb"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/[0-9]\.[0-9]$")
_TE_LINE = re.compile(rb"(?im)^transfer-encoding[ \t]*:[ \t]*([^\r\n]*)")
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"host"))
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}


def te_error(value: bytes) -> HttpError | None:
    """None when ``value`` is exactly ``chunked``; else the refusal RFC 9112 §6.1/§6.3
    asks for: 400 when chunked is there but not last (or the list is malformed), 501 for
    any other coding (qpxd decodes no coding but chunked)."""
    codings = [c.strip().lower() for c in value.split(b",")]
    if codings == [b"chunked"]:
        return None
    if b"chunked" in codings or not all(codings):
        return HttpError(400, "Transfer-Encoding: chunked is not the only and last coding",
                         "bad_request")
    return HttpError(501, "unsupported transfer coding", "not_implemented")


class Limits:
    __slots__ = ("max_line", "max_head", "max_count")

    def __init__(self, max_line: int = 8192, max_head: int = 32768, max_count: int = 100):
        self.max_line = max_line
        self.max_head = max_head
        self.max_count = max_count


def parse_host(value: bytes) -> tuple[str, int | None]:
    """``uri-host [ ":" port ]`` → (lowercased host, port or None).  IPv6 keeps its
    brackets off; a single trailing dot is dropped so ``example.com.`` cannot slip past a
    rule written for ``example.com``.  Raises ValueError when invalid."""
    m = _HOST.match(value)
    if not m:
        raise ValueError("invalid host")
    v6, name, port = m.groups()
    if v6 is not None:
        host = str(ipaddress.IPv6Address(v6.decode()))
    else:
        host = name.decode().lower()
        if host.endswith(".") and len(host) > 1:
            host = host[:-1]
        if not host or ".." in host or host.startswith("."):
            raise ValueError("invalid host")
    if port is not None:
        p = int(port)
        if p > 65535 or (len(port) > 1 and port[:1] == b"0"):
            raise ValueError("invalid port")
        return host, p
    return host, None


class Request:
    """A parsed, validated request head.  ``headers`` keeps the client's order and case
    as (lowercased name, name, value) byte triples."""

    __slots__ = ("method", "target", "version", "headers", "form", "scheme", "host", "port",
                 "path", "content_length", "chunked", "keep_alive", "expect_continue",
                 "conn_tokens", "upgrade", "head_size")

    def __init__(self):
        self.method = ""
        self.target = ""
        self.version = 11
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.form = "origin"  # origin | absolute | authority | asterisk
        self.scheme: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.path: str | None = None  # path and query, for origin/absolute forms
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.expect_continue = False
        self.conn_tokens: frozenset[bytes] = frozenset()
        self.upgrade: bytes | None = None
        self.head_size = 0

    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def get_all(self, lname: str) -> list[str]:
        """Header values by lowercase name, as text (rule matching)."""
        key = lname.encode("latin-1")
        return [v.decode("latin-1") for ln, _, v in self.headers if ln == key]

    def get(self, lname: bytes) -> bytes | None:
        for ln, _, v in self.headers:
            if ln == lname:
                return v
        return None

    def default_port(self) -> int:
        return _DEFAULT_PORTS.get(self.scheme or "http", 80)


class _Collect:
    """httptools callback sink for one head."""

    __slots__ = ("url", "headers", "done")

    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


class RequestHeadParser:
    """Feed bytes with :meth:`feed`; it returns a :class:`Request` once the head is
    complete (``rest`` then holds the bytes after it) or raises :class:`HttpError`."""

    __slots__ = ("limits", "buf", "fed", "_sink", "_parser", "rest")

    def __init__(self, limits: Limits):
        self.limits = limits
        self.buf = bytearray()
        self.fed = 0
        self._sink = _Collect()
        self._parser = httptools.HttpRequestParser(self._sink)
        self.rest = b""

    def feed(self, data: bytes) -> Request | None:
        buf = self.buf
        start = len(buf)
        buf += data
        limits = self.limits
        end = buf.find(b"\r\n\r\n", max(0, start - 3))
        while True:
            stop = len(buf) if end < 0 else end + 4
            if stop > self.fed:
                self._run(bytes(buf[self.fed:stop]))
                self.fed = stop
            if end < 0 or self._sink.done:
                break
            end = buf.find(b"\r\n\r\n", end + 1)  # leading empty lines: keep looking
        line_end = buf.find(b"\r\n")
        if (line_end < 0 and len(buf) > limits.max_line) or line_end > limits.max_line:
            raise HttpError(414, "request line too long", "bad_request")
        if not self._sink.done:
            if len(buf) > limits.max_head:
                raise HttpError(431, "request header section too large", "bad_request")
            return None
        if stop > limits.max_head:
            raise HttpError(431, "request header section too large", "bad_request")
        self.rest = bytes(buf[stop:])
        return self._finish(stop)

    def _run(self, chunk: bytes) -> None:
        try:
            self._parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            pass  # CONNECT / Upgrade: the head is complete; the rest is ours to handle
        except httptools.HttpParserInvalidMethodError:
            raise self._classify_method() from None
        except httptools.HttpParserError as e:
            raise self._classify(str(e)) from None

    def _classify_method(self) -> HttpError:
        """llhttp knows a fixed set of methods.  A well-formed request line with another
        token is an unimplemented method (501, RFC 9110 §9.1); anything else — e.g. a
        ``PROXY`` line from a peer that may not send one — is a bad request line."""
        buf = bytes(self.buf)
        line, crlf, _ = buf.partition(b"\r\n")
        parts = line.split(b" ")
        if not _TOKEN.match(parts[0]) or len(parts) > 3:
            return HttpError(400, "malformed request line", "bad_request")
        if crlf and (len(parts) != 3 or not _VERSION.match(parts[2])):
            return HttpError(400, "malformed request line", "bad_request")
        return HttpError(501, "unknown request method", "not_implemented")

    def _classify(self, detail: str) -> HttpError:
        head = bytes(self.buf)
        if head.startswith(b"PRI * HTTP/2.0"):
            return HttpError(505, "HTTP/2 prior knowledge is not supported", "bad_request")
        if "Transfer-Encoding" in detail or "Content-Length" in detail:
            for m in _TE_LINE.finditer(head):
                err = te_error(m.group(1))
                if err is not None and err.status == 501:
                    return err
        return HttpError(400, f"malformed request: {detail}", "bad_request")

    def _finish(self, head_size: int) -> Request:
        sink = self._sink
        parser = self._parser
        req = Request()
        req.head_size = head_size
        req.method = method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version == "1.1":
            req.version = 11
        elif version == "1.0":
            req.version = 10
        elif version == "0.9":
            raise HttpError(400, "HTTP/0.9 is not supported", "bad_request")
        else:
            raise HttpError(505, f"HTTP/{version} is not supported", "bad_request")
        if len(sink.headers) > self.limits.max_count:
            raise HttpError(431, "too many header fields", "bad_request")

        hosts: list[bytes] = []
        cl: bytes | None = None
        te: bytes | None = None
        tokens: set[bytes] = set()
        upgrade = None
        expect = False
        headers = req.headers
        for name, value in sink.headers:
            ln = name.lower()
            headers.append((ln, name, value))
            if ln == b"host":
                hosts.append(value)
            elif ln == b"content-length":
                cl = value
            elif ln == b"transfer-encoding":
                if te is not None:
                    raise HttpError(400, "Transfer-Encoding repeated", "bad_request")
                te = value
            elif ln == b"connection":
                for t in value.split(b","):
                    t = t.strip().lower()
                    if t:
                        tokens.add(t)
            elif ln == b"upgrade":
                upgrade = value
            elif ln == b"expect":
                if value.strip().lower() != b"100-continue":
                    raise HttpError(417, "unsupported expectation", "bad_request")
                expect = True

        # framing (RFC 9112 §6)
        if te is not None:
            if req.version == 10:
                raise HttpError(400, "Transfer-Encoding in HTTP/1.0", "bad_request")
            err = te_error(te)
            if err is not None:
                raise err
            req.chunked = True
        if cl is not None:
            if te is not None:
                raise HttpError(400, "Content-Length with Transfer-Encoding", "bad_request")
            if len(cl) > 18:
                raise HttpError(400, "Content-Length too large", "bad_request")
            req.content_length = int(cl)  # llhttp has checked 1*DIGIT
        if tokens & _FRAMING:
            raise HttpError(400, "Connection nominates a framing header", "bad_request")
        req.conn_tokens = frozenset(tokens)
        req.keep_alive = (b"close" not in tokens) if req.version == 11 \
            else (b"keep-alive" in tokens)
        if upgrade is not None and b"upgrade" in tokens:
            req.upgrade = upgrade
        req.expect_continue = expect and req.version == 11

        # Host (RFC 9112 §3.2)
        if len(hosts) > 1:
            raise HttpError(400, "more than one Host header", "bad_request")
        host_hdr: tuple[str, int | None] | None = None
        if hosts:
            try:
                host_hdr = parse_host(hosts[0])
            except ValueError:
                raise HttpError(400, "invalid Host header", "bad_request") from None
        elif req.version == 11:
            raise HttpError(400, "missing Host header", "bad_request")

        self._target(req, sink.url, method, host_hdr)
        return req

    @staticmethod
    def _target(req: Request, url: bytes, method: str, host_hdr) -> None:
        if b"#" in url:
            raise HttpError(400, "fragment in request target", "bad_request")
        req.target = url.decode("ascii")
        if method == "CONNECT":
            if url.startswith(b"/") or b"/" in url or b"@" in url:
                raise HttpError(400, "CONNECT needs authority-form host:port", "bad_request")
            try:
                host, port = parse_host(url)
            except ValueError:
                raise HttpError(400, "invalid CONNECT target", "bad_request") from None
            if port is None or port == 0:
                raise HttpError(400, "CONNECT target needs a port", "bad_request")
            req.form, req.host, req.port = "authority", host, port
            return
        if url == b"*":
            if method != "OPTIONS":
                raise HttpError(400, "asterisk-form is only for OPTIONS", "bad_request")
            req.form = "asterisk"
            req.host, req.port = host_hdr if host_hdr else (None, None)
            return
        if url.startswith(b"/"):
            req.form, req.path = "origin", req.target
            req.host, req.port = host_hdr if host_hdr else (None, None)
            return
        m = _SCHEME.match(url)
        if not m:
            raise HttpError(400, "invalid request target", "bad_request")
        scheme = m.group(1).lower().decode()
        rest = url[m.end():]
        cut = len(rest)
        for sep in (b"/", b"?"):
            i = rest.find(sep)
            if 0 <= i < cut:
                cut = i
        authority, tail = rest[:cut], rest[cut:]
        if b"@" in authority:
            raise HttpError(400, "userinfo in request target", "bad_request")
        try:
            host, port = parse_host(authority)
        except ValueError:
            raise HttpError(400, "invalid authority in request target", "bad_request") from None
        if not host:
            raise HttpError(400, "empty host in request target", "bad_request")
        req.form, req.scheme, req.host, req.port = "absolute", scheme, host, port
        tail_s = tail.decode("ascii")
        req.path = tail_s if tail_s.startswith("/") else "/" + tail_s
