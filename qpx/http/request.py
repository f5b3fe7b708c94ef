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
_UNDERSCORE_NAME = re.compile(rb"\r\n([^:\r\n]*_[^:\r\n]*):")
_NO_TOKENS: frozenset[bytes] = frozenset()
_PLAIN_TOKENS = frozenset((b"keep-alive", b"close"))
# hop-by-hop and proxy-control fields beyond Host/Connection/framing: their presence
# sends a request down the general (per-field) forwarding path
_RARE = re.compile(rb"\r\n(?:keep-alive:|proxy-|te:|trailer:|upgrade:|expect:|max-forwards:|"
                   rb"via:|x-forwarded-)")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}


def te_error(value: bytes) -> HttpError | None:
    """None when ``value`` is exactly ``chunked``; else the refusal RFC 9112 §6.1/§6.3
    asks for: 400 when the list is malformed or chunked is not (only once and) last —
    the framing is then unknowable — and 501 for a well-framed message that uses another
    coding (qpxd decodes no coding but chunked)."""
    codings = [c.strip().lower() for c in value.split(b",")]
    if codings == [b"chunked"]:
        return None
    if not all(codings) or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        if b"chunked" in codings or not all(codings):
            return HttpError(400, "Transfer-Encoding: chunked is not the only and last "
                                  "coding", "bad_request")
    return HttpError(501, "unsupported transfer coding", "not_implemented")


class Limits:
    """What a request head (and body) may be: request line and head sizes, field count,
    whether field names may contain ``_``, and the body size (None: unlimited; enforced
    by the upstream exchange)."""

    __slots__ = ("max_line", "max_head", "max_count", "underscores", "max_body")

    def __init__(self, max_line: int = 8192, max_head: int = 32768, max_count: int = 100,
                 underscores: bool = False, max_body: int | None = None):
        self.max_line = max_line
        self.max_head = max_head
        self.max_count = max_count
        self.underscores = underscores
        self.max_body = max_body


_host_cache: dict[bytes, tuple[str, int | None]] = {}


def parse_host(value: bytes | str) -> tuple[str, int | None]:
    """``uri-host [ ":" port ]`` → (lowercased host, port or None).  IPv6 keeps its
    brackets off; a single trailing dot is dropped so ``example.com.`` cannot slip past a
    rule written for ``example.com``.  Raises ValueError when invalid.  Valid results
    are cached (hosts repeat from request to request; the cache is bounded)."""
    hit = _host_cache.get(value)
    if hit is not None:
        return hit
    result = _parse_host(value if isinstance(value, bytes) else value.encode())
    if len(_host_cache) >= 4096:
        _host_cache.clear()
    _host_cache[value] = result
    return result


def _parse_host(value: bytes) -> tuple[str, int | None]:
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
        # RFC 1035 §2.3.4: labels of at most 63 octets, names of at most 253 (the
        # resolver would refuse longer ones with an encoding error, not a lookup miss).
        if len(host) > 253 or any(len(label) > 63 for label in host.split(".")):
            raise ValueError("host name too long")
    if port is not None:
        p = int(port)
        if p > 65535 or (len(port) > 1 and port[:1] == b"0"):
            raise ValueError("invalid port")
        return host, p
    return host, None


_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unescape(m: re.Match) -> str:
    c = int(m.group(1), 16)
    return chr(c) if c in _UNRESERVED else "%" + m.group(1).upper()


def normalize_path(target: str) -> str:
    """The path (and query) a rule matches and the upstream receives.

    RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded and other escapes
    upper-cased (§6.2.2.1-2), dot-segments removed (§5.2.4), and — as nginx's
    ``merge_slashes`` — runs of ``/`` merged.  Without this, ``/%61dmin``, ``/./admin``
    and ``//admin`` would slip past a rule for ``/admin/*`` and still reach it upstream.
    The query is left as sent.  Reserved escapes (``%2F``) stay escaped: decoding them
    would change the path's structure.  A backslash is sent on as ``%5C`` (RFC 3986 has
    no ``\\`` in a path; some servers read it as ``/``), so a ``path`` rule sees what the
    origin will see.  Most paths need none of this and cost four substring checks."""
    q = target.find("?")
    path, query = (target, "") if q < 0 else (target[:q], target[q:])
    if "%" not in path and "/." not in path and "//" not in path and "\\" not in path:
        return target
    if "\\" in path:  # as the origin receives it: a backslash is not a separator
        path = path.replace("\\", "%5C")
    if "%" in path:
        path = _UNRESERVED_ESCAPE.sub(_unescape, path)
    if "//" in path:
        while "//" in path:
            path = path.replace("//", "/")
    if "/." in path:
        out: list[str] = []
        segments = path.split("/")[1:]
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if seg == ".":
                if last:
                    out.append("")
            elif seg == "..":
                if out:
                    out.pop()
                if last:
                    out.append("")
            else:
                out.append(seg)
        path = "/" + "/".join(out)
    return path + query


class Request:
    """A parsed, validated request head.  ``raw`` is the head as received (request line to
    the blank line); ``headers`` gives (lowercased name, name, value) byte triples in the
    client's order and case, built on first use."""

    __slots__ = ("raw", "low", "method", "target", "version", "form", "scheme", "host",
                 "port", "path", "content_length", "chunked", "keep_alive",
                 "expect_continue", "conn_tokens", "upgrade", "_headers", "drop", "plain")

    def __init__(self, raw: bytes, low: bytes):
        self.raw = raw
        self.low = low  # raw.lower(): llhttp-validated fields are found by substring
        self.form = "origin"  # origin | absolute | authority | asterisk
        self.scheme: str | None = None
        self.path: str | None = None  # path and query, for origin/absolute forms
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.conn_tokens: frozenset[bytes] = _NO_TOKENS
        self.upgrade: bytes | None = None
        self._headers = None
        # Lines a forwarded head leaves out (Host, Connection, framing), as (start, end)
        # spans of ``raw`` from their CRLF to the next; ``plain``: no other hop-by-hop
        # field is present, so the head can be forwarded from ``raw`` with these cuts.
        self.drop: list[tuple[int, int]] = []
        self.plain = True

    def forward_lines(self) -> bytes:
        """The header lines to forward (CRLF-prefixed, no final blank line), cut from
        ``raw``; only valid when ``plain``."""
        raw = self.raw
        pos = raw.index(b"\r\n")
        end = len(raw) - 4
        if not self.drop:
            return raw[pos:end]
        parts = []
        for start, stop in sorted(self.drop):
            parts.append(raw[pos:start])
            pos = stop
        parts.append(raw[pos:end])
        return b"".join(parts)

    @property
    def head_size(self) -> int:
        return len(self.raw)

    @property
    def headers(self) -> list[tuple[bytes, bytes, bytes]]:
        if self._headers is None:
            raw = self.raw
            out = []
            for line in raw[raw.index(b"\r\n") + 2:-4].split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b":")
                    out.append((name.lower(), name, value.strip(b" \t")))
            self._headers = out
        return self._headers

    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def get_all(self, lname: str) -> list[str]:
        """Header values by lowercase name, as text (rule matching)."""
        key = lname.encode("latin-1")
        return [v.decode("latin-1") for ln, _, v in self.headers if ln == key]

    def get(self, lname: bytes) -> bytes | None:
        """The first value of a field, by lowercase name."""
        key = b"\r\n" + lname + b":"
        i = self.low.find(key)
        if i < 0:
            return None
        start = i + len(key)
        return self.raw[start:self.low.find(b"\r\n", start)].strip(b" \t")

    def values(self, lname: bytes) -> list[bytes]:
        """Every value of a field, by lowercase name."""
        key = b"\r\n" + lname + b":"
        low, raw, out = self.low, self.raw, []
        i = low.find(key)
        while i >= 0:
            start = i + len(key)
            end = low.find(b"\r\n", start)
            out.append(raw[start:end].strip(b" \t"))
            i = low.find(key, end)
        return out

    def default_port(self) -> int:
        return _DEFAULT_PORTS.get(self.scheme or "http", 80)

    def passed_through(self, proxy_name: bytes) -> bool:
        """True when a Via entry's received-by is ``proxy_name`` (lowercase): the
        request has already passed this proxy (RFC 9110 §7.6.3, loop detection)."""
        if self.plain:  # no Via field at all (see ``plain``)
            return False
        for value in self.values(b"via"):
            for entry in value.split(b","):
                parts = entry.split()
                if len(parts) >= 2 and parts[1].lower() == proxy_name:
                    return True
        return False

    def max_forwards(self) -> int | None:
        """Max-Forwards of an OPTIONS/TRACE request (RFC 9110 §7.6.2), None otherwise.
        Raises :class:`HttpError` (400) when the value is not a number."""
        if self.plain or self.method not in ("OPTIONS", "TRACE"):
            return None
        value = self.get(b"max-forwards")
        if value is None:
            return None
        if not value.isdigit() or len(value) > 9:
            raise HttpError(400, "invalid Max-Forwards", "bad_request")
        return int(value)


def _connection(req: Request, low: bytes) -> None:
    """``Connection`` tokens, keep-alive, the upgrade offer, Expect, and whether the
    head can be forwarded from its raw bytes (``plain``)."""
    tokens = None
    at = low.find(b"\r\nconnection:")
    while at >= 0:
        end = low.find(b"\r\n", at + 13)
        if tokens is None:
            tokens = set()
        for t in low[at + 13:end].split(b","):
            t = t.strip()
            if t:
                tokens.add(t)
        req.drop.append((at, end))
        at = low.find(b"\r\nconnection:", end)
    if tokens is not None:
        if not tokens.isdisjoint(_FRAMING):
            raise HttpError(400, "Connection nominates a framing header", "bad_request")
        req.conn_tokens = frozenset(tokens)
        if b"upgrade" in tokens:
            upgrade = req.get(b"upgrade")
            # h2c upgrades turn the proxy into a blind tunnel for HTTP/2 requests no
            # rule ever sees (h2c smuggling): the offer is dropped, the request
            # served as plain HTTP/1.1 (RFC 9113 §3.1 deprecates h2c upgrades).
            if upgrade is not None and b"h2c" not in upgrade.lower():
                req.upgrade = upgrade
        if not tokens <= _PLAIN_TOKENS:
            req.plain = False
    req.keep_alive = (tokens is None or b"close" not in tokens) if req.version == 11 \
        else (tokens is not None and b"keep-alive" in tokens)
    if _RARE.search(low) is not None:  # hop-by-hop fields other than the above
        req.plain = False
        if low.find(b"\r\nexpect:") >= 0:
            for value in req.values(b"expect"):
                if value.lower() != b"100-continue":
                    raise HttpError(417, "unsupported expectation", "bad_request")
            req.expect_continue = req.version == 11


def _host(req: Request, raw: bytes, low: bytes) -> tuple[str, int | None] | None:
    """The Host field (RFC 9112 §3.2): required in HTTP/1.1, at most one, valid."""
    at = low.find(b"\r\nhost:")
    if at < 0:
        if req.version == 11:
            raise HttpError(400, "missing Host header", "bad_request")
        return None
    end = low.find(b"\r\n", at + 7)
    if low.find(b"\r\nhost:", end) >= 0:
        raise HttpError(400, "more than one Host header", "bad_request")
    try:
        host = parse_host(raw[at + 7:end].strip(b" \t"))
    except ValueError:
        raise HttpError(400, "invalid Host header", "bad_request") from None
    req.drop.append((at, end))
    return host


class _Collect:
    """httptools callback sink for one head (no per-header callbacks: fields are read
    from the validated raw head)."""

    __slots__ = ("url", "done")

    def __init__(self):
        self.url = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.done = True

    # httptools looks every callback up with getattr(); a missing attribute costs an
    # AttributeError (with a formatted message) per parser, so say "none" explicitly.
    on_header = on_body = on_message_begin = on_message_complete = None
    on_chunk_header = on_chunk_complete = on_status = None


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

    def reset(self) -> "RequestHeadParser":
        """Ready for the next head on the same connection.  Only after a request llhttp
        saw complete: no body, no upgrade (it was fed the head alone, so a body would
        leave it mid-message; the caller then makes a new parser)."""
        self.buf = bytearray()
        self.fed = 0
        sink = self._sink
        sink.url = b""
        sink.done = False
        self.rest = b""
        return self

    def feed(self, data: bytes) -> Request | None:
        buf = self.buf
        if not buf and data[:1] not in (b"\r", b"\n"):
            # The common case: a whole head in one read.  Feed llhttp the bytes as they
            # are, no buffer copies; llhttp completes at the first CRLFCRLF (it rejects
            # anything that would make that CRLFCRLF not the end of the head).
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                stop = end + 4
                self.buf = data  # only read by error classification from here on
                self._run(data if stop == len(data) else data[:stop])
                if not self._sink.done:
                    raise self._classify("head did not complete")
                limits = self.limits
                line_end = data.find(b"\r\n", 0, limits.max_line + 2)
                if line_end < 0:
                    raise HttpError(414, "request line too long", "bad_request")
                if stop > limits.max_head:
                    raise HttpError(431, "request header section too large", "bad_request")
                if stop < len(data):
                    self.rest = data[stop:]
                    return self._finish(data[:stop], line_end)
                return self._finish(data, line_end)
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
        raw = bytes(buf[:stop]).lstrip(b"\r\n")  # empty lines before the request line
        return self._finish(raw, raw.find(b"\r\n"))

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

    def _finish(self, raw: bytes, line_end: int) -> Request:
        parser = self._parser
        low = raw.lower()
        req = Request(raw, low)
        req.method = method = parser.get_method().decode("ascii")
        # llhttp has checked "HTTP/" DIGIT "." DIGIT at the end of the request line (or
        # no version at all: HTTP/0.9)
        version = raw[line_end - 8:line_end]
        if version == b"HTTP/1.1":
            req.version = 11
        elif version == b"HTTP/1.0":
            req.version = 10
        elif version[:5] != b"HTTP/":
            raise HttpError(400, "HTTP/0.9 is not supported", "bad_request")
        else:
            raise HttpError(505, f"{version.decode()} is not supported", "bad_request")
        limits = self.limits
        if len(raw) > 4 * limits.max_count and raw.count(b"\r\n") - 2 > limits.max_count:
            raise HttpError(431, "too many header fields", "bad_request")
        if not limits.underscores and b"_" in raw:
            m = _UNDERSCORE_NAME.search(raw)
            if m is not None:
                # CGI/WSGI backends read "_" and "-" alike: Transfer_Encoding would be a
                # second Transfer-Encoding to them (nginx drops such fields; we refuse)
                raise HttpError(400, f"header name with an underscore: "
                                     f"{m.group(1).decode('latin-1')}", "bad_request")
        # framing (RFC 9112 §6); llhttp has rejected repeated or malformed Content-Length
        drop = req.drop
        te_at = low.find(b"\r\ntransfer-encoding:")
        if te_at >= 0:
            if low.find(b"\r\ntransfer-encoding:", te_at + 2) >= 0:
                raise HttpError(400, "Transfer-Encoding repeated", "bad_request")
            if req.version == 10:
                raise HttpError(400, "Transfer-Encoding in HTTP/1.0", "bad_request")
            end = low.find(b"\r\n", te_at + 20)
            err = te_error(raw[te_at + 20:end].strip(b" \t"))
            if err is not None:
                raise err
            req.chunked = True
            drop.append((te_at, end))
        at = low.find(b"\r\ncontent-length:")
        if at >= 0:
            if te_at >= 0:
                raise HttpError(400, "Content-Length with Transfer-Encoding", "bad_request")
            end = low.find(b"\r\n", at + 17)
            cl = raw[at + 17:end].strip(b" \t")
            if len(cl) > 18:
                raise HttpError(400, "Content-Length too large", "bad_request")
            req.content_length = int(cl)  # llhttp has checked 1*DIGIT
            drop.append((at, end))
        _connection(req, low)
        host_hdr = _host(req, raw, low)
        req.host, req.port = host_hdr if host_hdr else (None, None)
        self._target(req, self._sink.url, method, host_hdr)
        return req

    @staticmethod
    def _target(req: Request, url: bytes, method: str, host_hdr) -> None:
        try:
            target = url.decode()
        except UnicodeDecodeError:
            target = "\x80"
        if not target.isascii():
            raise HttpError(400, "non-ASCII byte in request target", "bad_request")
        if "#" in target:
            raise HttpError(400, "fragment in request target", "bad_request")
        req.target = target
        if method == "CONNECT":
            if "/" in target or "@" in target:
                raise HttpError(400, "CONNECT needs authority-form host:port", "bad_request")
            try:
                host, port = parse_host(url)
            except ValueError:
                raise HttpError(400, "invalid CONNECT target", "bad_request") from None
            if port is None or port == 0:
                raise HttpError(400, "CONNECT target needs a port", "bad_request")
            req.form, req.host, req.port = "authority", host, port
            return
        if target[:1] == "/":
            req.path = normalize_path(target)  # form "origin" is the default
            return
        if target == "*":
            if method != "OPTIONS":
                raise HttpError(400, "asterisk-form is only for OPTIONS", "bad_request")
            req.form = "asterisk"
            return
        if target[:7].lower() == "http://":
            scheme, start = "http", 7
        else:
            m = _SCHEME.match(url)
            if not m:
                raise HttpError(400, "invalid request target", "bad_request")
            scheme, start = m.group(1).lower().decode(), m.end()
        cut = target.find("/", start)
        if cut < 0:
            cut = len(target)
        q = target.find("?", start, cut)
        if q >= 0:
            cut = q
        authority = target[start:cut]
        try:
            host, port = parse_host(authority)
        except ValueError:
            why = "userinfo in" if "@" in authority else "invalid authority in"
            raise HttpError(400, f"{why} request target", "bad_request") from None
        if not host:
            raise HttpError(400, "empty host in request target", "bad_request")
        req.form, req.scheme, req.host, req.port = "absolute", scheme, host, port
        tail = target[cut:]
        req.path = normalize_path(tail if tail[:1] == "/" else "/" + tail)
