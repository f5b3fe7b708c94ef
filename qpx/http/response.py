"""HTTP/1.1 response heads from upstreams: strict parsing (sans-IO).

The same llhttp tokenising as requests, fed only up to the end of the head.  A response
whose framing a downstream parser could read differently is refused with 502 and its
connection discarded (RFC 9112 §6.3: "the proxy MUST close the connection to the server,
discard the received response, and send a 502"): Content-Length together with
Transfer-Encoding, a transfer coding other than ``chunked``, repeated or malformed
Content-Length, malformed lines, oversized heads.
"""

from __future__ import annotations

import httptools

from .errors import UpstreamError


class Response:
    __slots__ = ("status", "reason", "version", "headers", "content_length", "chunked",
                 "keep_alive", "conn_tokens", "head_size")

    def __init__(self):
        self.status = 0
        self.reason = b""
        self.version = 11
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.conn_tokens: frozenset[bytes] = frozenset()
        self.head_size = 0

    def get(self, lname: bytes) -> bytes | None:
        for ln, _, v in self.headers:
            if ln == lname:
                return v
        return None


class _Collect:
    __slots__ = ("reason", "headers", "done")

    def __init__(self):
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


class ResponseHeadParser:
    __slots__ = ("max_head", "buf", "fed", "_sink", "_parser", "rest")

    def __init__(self, max_head: int = 65536):
        self.max_head = max_head
        self.buf = bytearray()
        self.fed = 0
        self._sink = _Collect()
        self._parser = httptools.HttpResponseParser(self._sink)
        self.rest = b""

    def feed(self, data: bytes) -> Response | None:
        buf = self.buf
        start = len(buf)
        buf += data
        end = buf.find(b"\r\n\r\n", max(0, start - 3))
        stop = len(buf) if end < 0 else end + 4
        if stop > self.fed:
            try:
                self._parser.feed_data(bytes(buf[self.fed:stop]))
            except httptools.HttpParserUpgrade:
                pass
            except httptools.HttpParserError as e:
                raise UpstreamError(502, f"malformed response head: {e}") from None
            self.fed = stop
        if not self._sink.done:
            if len(buf) > self.max_head or end >= 0:
                raise UpstreamError(502, "response head too large or malformed")
            return None
        self.rest = bytes(buf[stop:])
        return self._finish(stop)

    def _finish(self, head_size: int) -> Response:
        sink = self._sink
        resp = Response()
        resp.head_size = head_size
        resp.status = self._parser.get_status_code()
        resp.reason = sink.reason
        version = self._parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise UpstreamError(502, f"unsupported response version HTTP/{version}")
        resp.version = 11 if version == "1.1" else 10
        cl = te = None
        tokens: set[bytes] = set()
        headers = resp.headers
        for name, value in sink.headers:
            ln = name.lower()
            headers.append((ln, name, value))
            if ln == b"content-length":
                cl = value
            elif ln == b"transfer-encoding":
                if te is not None:
                    raise UpstreamError(502, "Transfer-Encoding repeated in response")
                te = value
            elif ln == b"connection":
                for t in value.split(b","):
                    t = t.strip().lower()
                    if t:
                        tokens.add(t)
        if te is not None:
            if cl is not None:
                raise UpstreamError(502, "response has Content-Length and Transfer-Encoding")
            if te.strip().lower() != b"chunked":
                raise UpstreamError(502, "response transfer coding is not chunked")
            resp.chunked = True
        if cl is not None:
            if len(cl) > 18:
                raise UpstreamError(502, "response Content-Length too large")
            resp.content_length = int(cl)
        resp.conn_tokens = frozenset(tokens)
        resp.keep_alive = (b"close" not in tokens) if resp.version == 11 \
            else (b"keep-alive" in tokens)
        return resp
