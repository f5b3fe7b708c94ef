"""HTTP/1.1 response heads from upstreams: strict parsing and the rewrite for the client.

llhttp (through ``httptools``) validates the head in strict mode, fed only up to the end
of the head.  A response whose framing a downstream parser could read differently is
refused with 502 and its connection discarded (RFC 9112 §6.3: "the proxy MUST close the
connection to the server, discard the received response, and send a 502"):
Content-Length together with Transfer-Encoding, a transfer coding other than
``chunked``, repeated or malformed Content-Length, malformed lines, oversized heads.

Speed: a response head is mostly forwarded as it came.  llhttp runs without per-header
Python callbacks; once it has validated the head, substring searches in its lowercased
copy find the few fields qpxd acts on (framing, ``Connection``, ``Date``) and
:meth:`Response.forward_head` drops the hop-by-hop lines from the raw bytes.  The
per-header list (``headers``) is built only when response header control needs it.
"""

from __future__ import annotations

import re

import httptools

from .errors import BadResponse

_PLAIN_TOKENS = frozenset((b"keep-alive", b"close"))
_COMMON_CONNECTION = {v: frozenset((v.strip(),)) for v in
                      (b" keep-alive", b"keep-alive", b" close", b"close")}
# hop-by-hop fields beyond Connection/Keep-Alive/framing: their presence sends the
# response down the general (per-field) path
_RARE = re.compile(rb"\r\n(?:proxy-|te:|trailer:|upgrade:)")


def status_ok(line: bytes) -> bool:
    """Whether a status line (or the start of a response) says 2xx or 3xx: the one
    question an active health check asks."""
    parts = line.split(b"\r\n", 1)[0].split(b" ", 2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and \
        parts[1][:1] in (b"2", b"3") and len(parts[1]) == 3


def _connection_tokens(low: bytes, drop: list) -> set[bytes] | frozenset[bytes] | None:
    """The tokens of every ``Connection`` field (their lines added to ``drop``)."""
    tokens: set[bytes] | frozenset[bytes] | None = None
    at = low.find(b"\r\nconnection:")
    while at >= 0:
        end = low.find(b"\r\n", at + 13)
        value = low[at + 13:end]
        if tokens is None and value in _COMMON_CONNECTION:
            tokens = _COMMON_CONNECTION[value]
        else:
            tokens = set(tokens or ())
            for t in value.split(b","):
                t = t.strip()
                if t:
                    tokens.add(t)
        drop.append((at, end))
        at = low.find(b"\r\nconnection:", end)
    return tokens


class Response:
    __slots__ = ("status", "reason", "version", "raw", "content_length", "chunked",
                 "keep_alive", "conn_tokens", "has_date", "_headers", "drop", "plain",
                 "cl_span")

    def __init__(self, raw: bytes, status: int, reason: bytes, version: int):
        self.raw = raw  # the head, status line to the blank line included
        self.status = status
        self.reason = reason
        self.version = version
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.conn_tokens: frozenset[bytes] = frozenset()
        self.has_date = False
        self._headers = None
        self.drop: list[tuple[int, int]] = []  # hop-by-hop and framing lines of raw
        self.plain = True  # no other hop-by-hop field: forward from raw minus drop
        self.cl_span: tuple[int, int] | None = None  # the Content-Length line of raw

    @property
    def headers(self) -> list[tuple[bytes, bytes, bytes]]:
        """(lowercased name, name, value) triples, built on first use."""
        if self._headers is None:
            out = []
            for line in self.raw[self.raw.index(b"\r\n") + 2:-4].split(b"\r\n"):
                name, _, value = line.partition(b":")
                out.append((name.lower(), name, value.strip(b" \t")))
            self._headers = out
        return self._headers

    def get(self, lname: bytes) -> bytes | None:
        for ln, _, v in self.headers:
            if ln == lname:
                return v
        return None

    def keeps_length_line(self) -> bool:
        """Whether the received Content-Length line can be forwarded as it is (the same
        length is sent on, written canonically: no leading zeros)."""
        span = self.cl_span
        return span is not None and (self.raw[span[0] + 17:span[1]].strip(b" \t")[:1] != b"0"
                                     or self.content_length == 0)

    def forward_head(self, keep_length: bool = False) -> bytes | None:
        """The head's header lines as the client may see them (hop-by-hop and framing
        lines removed — the Content-Length line too unless ``keep_length``), starting
        with CRLF, without the final blank line; or None when other hop-by-hop fields
        are present (the caller then works from ``headers``)."""
        if not self.plain:
            return None
        raw = self.raw
        pos = raw.index(b"\r\n")
        end = len(raw) - 4
        drop = self.drop
        if self.cl_span is not None and not keep_length:
            drop = drop + [self.cl_span]
        if not drop:
            return raw[pos:end]
        parts = []
        for start, stop in sorted(drop):
            parts.append(raw[pos:start])
            pos = stop
        parts.append(raw[pos:end])
        return b"".join(parts)


class _Collect:
    __slots__ = ("reason", "done")

    def __init__(self):
        self.reason = b""
        self.done = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_headers_complete(self) -> None:
        self.done = True

    # httptools looks every callback up with getattr(); a missing attribute costs an
    # AttributeError (with a formatted message) per parser, so say "none" explicitly.
    on_header = on_body = on_message_begin = on_message_complete = None
    on_chunk_header = on_chunk_complete = on_url = None


class ResponseHeadParser:
    __slots__ = ("max_head", "buf", "fed", "_sink", "_parser", "rest")

    def __init__(self, max_head: int = 65536):
        self.max_head = max_head
        self.buf = bytearray()
        self.fed = 0
        self._sink = _Collect()
        self._parser = httptools.HttpResponseParser(self._sink)
        self.rest = b""

    def reset(self) -> "ResponseHeadParser":
        """Ready for the next head on the same connection (after :meth:`feed_body` has
        taken the whole previous body, so llhttp saw the message end)."""
        self.buf = bytearray()
        self.fed = 0
        sink = self._sink
        sink.reason = b""
        sink.done = False
        self.rest = b""
        return self

    def feed_body(self, body: bytes) -> None:
        """Let llhttp see a (complete, Content-Length framed) body, so that the parser
        can be reused for the next response on this connection."""
        self._run(body)

    def _run(self, chunk) -> None:
        try:
            self._parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as e:
            raise BadResponse(f"malformed response head: {e}") from None

    def feed(self, data: bytes) -> Response | None:
        if not self.buf:  # the common case: the whole head in one read, no copies
            end = data.find(b"\r\n\r\n")
            if 0 <= end < self.max_head:
                stop = end + 4
                head = data if stop == len(data) else data[:stop]
                self._run(head)
                if not self._sink.done:
                    raise BadResponse("malformed response head")
                self.rest = data[stop:] if stop < len(data) else b""
                return self._finish(head)
        buf = self.buf
        start = len(buf)
        buf += data
        end = buf.find(b"\r\n\r\n", max(0, start - 3))
        stop = len(buf) if end < 0 else end + 4
        if stop > self.fed:
            self._run(bytes(buf[self.fed:stop]))
            self.fed = stop
        if not self._sink.done:
            if len(buf) > self.max_head or end >= 0:
                raise BadResponse("response head too large or malformed")
            return None
        if stop > self.max_head:  # completed by the read that crossed the limit
            raise BadResponse(f"response head larger than {self.max_head} bytes")
        self.rest = bytes(buf[stop:])
        return self._finish(bytes(buf[:stop]))

    def _finish(self, head: bytes) -> Response:
        version = head[:9]  # llhttp has checked "HTTP/" DIGIT "." DIGIT SP
        if version == b"HTTP/1.1 ":
            v = 11
        elif version == b"HTTP/1.0 ":
            v = 10
        else:
            raise BadResponse(f"unsupported response version {version[:8]!r}")
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:  # RFC 9110 §15: three digits, 1xx to 5xx
            raise BadResponse(f"response status {status:03d} is outside 100-599")
        resp = Response(head, status, self._sink.reason, v)
        low = head.lower()
        drop = resp.drop
        cl = te = None
        at = low.find(b"\r\ncontent-length:")
        if at >= 0:
            end = low.find(b"\r\n", at + 17)
            cl = head[at + 17:end].strip(b" \t")
            resp.cl_span = (at, end)
        at = low.find(b"\r\ntransfer-encoding:")
        if at >= 0:
            end = low.find(b"\r\n", at + 20)
            if low.find(b"\r\ntransfer-encoding:", end) >= 0:
                raise BadResponse("Transfer-Encoding repeated in response")
            te = head[at + 20:end].strip(b" \t")
            drop.append((at, end))
        resp.has_date = low.find(b"\r\ndate:") >= 0
        tokens = _connection_tokens(low, drop)
        at = low.find(b"\r\nkeep-alive:")
        if at >= 0:
            end = low.find(b"\r\n", at + 13)
            drop.append((at, end))
            if low.find(b"\r\nkeep-alive:", end) >= 0:
                resp.plain = False
        if (tokens and not tokens <= _PLAIN_TOKENS) or _RARE.search(low) is not None:
            resp.plain = False
        if te is not None:
            if cl is not None:
                raise BadResponse("response has Content-Length and Transfer-Encoding")
            if te.strip().lower() != b"chunked":
                raise BadResponse("response transfer coding is not chunked")
            resp.chunked = True
        if cl is not None:
            if len(cl) > 18:
                raise BadResponse("response Content-Length too large")
            resp.content_length = int(cl)  # llhttp has checked 1*DIGIT and duplicates
        if tokens:
            resp.conn_tokens = frozenset(tokens)
            resp.keep_alive = (b"close" not in tokens) if v == 11 else (b"keep-alive" in tokens)
        else:
            resp.keep_alive = v == 11
        return resp
