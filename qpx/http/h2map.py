"""HTTP/2 ↔ HTTP/1.1 message mapping, sans-IO (RFC 9113 §8).

qpxd serves HTTP/2 streams through its HTTP/1.1 pipeline: every stream's request is
written here as the HTTP/1.1 request it means and parsed by the same strict parser as
any other (so every limit and refusal applies unchanged), and the HTTP/1.1 response
qpxd writes for it is read back here into HEADERS and DATA.

Request (:func:`request_head`): pseudo-headers become the request line and ``Host``
(``:authority`` wins over a ``host`` field); ``cookie`` crumbs are joined with ``; ``
(§8.2.3); connection-specific fields (``connection``, ``keep-alive``,
``proxy-connection``, ``transfer-encoding``, ``upgrade``, ``te`` other than
``trailers``) are refused (§8.2.2) — the h2 library checks them too.  A body is framed
by its ``content-length`` when the client sent one, else chunked.

Response (:class:`ResponseReader`): the status line and fields of the HTTP/1.1 head
(minus connection-specific ones) become HEADERS; the body, by its framing
(Content-Length, chunked, or until the end), becomes DATA; interim 1xx responses become
informational HEADERS.
"""

from __future__ import annotations

from .chunked import ChunkedDecoder, ChunkError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"))


class H2RequestError(ValueError):
    """A request HTTP/2 forbids or HTTP/1.1 cannot say; the stream gets 400."""


def looks_like_preface(data: bytes) -> bool:
    """``data`` starts the HTTP/2 connection preface (h2c with prior knowledge)."""
    n = min(len(data), len(PREFACE))
    return n >= 3 and data[:n] == PREFACE[:n]


def request_head(headers: list[tuple[bytes, bytes]], end_stream: bool
                 ) -> tuple[bytes, bool, bytes]:
    """(HTTP/1.1 request head, whether the body must be chunk-encoded, method)."""
    pseudo: dict[bytes, bytes] = {}
    fields: list[bytes] = []
    cookies: list[bytes] = []
    host = None
    has_length = False
    for name, value in headers:
        if name.startswith(b":"):
            if name in pseudo or fields or cookies:
                raise H2RequestError("pseudo-header repeated or after a regular field")
            pseudo[name] = value
            continue
        if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise H2RequestError(f"connection-specific field {name.decode()!r} in "
                                 "HTTP/2")
        if name == b"te":
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
            continue
        if name == b"content-length":
            has_length = True
        fields.append(name + b": " + value + b"\r\n")
    method = pseudo.get(b":method")
    if not method:
        raise H2RequestError("no :method")
    authority = pseudo.get(b":authority") or host
    if method == b"CONNECT":
        if b":path" in pseudo or b":scheme" in pseudo or not authority:
            raise H2RequestError("CONNECT needs :authority only")
        target = authority
    else:
        target = pseudo.get(b":path")
        if not target or not pseudo.get(b":scheme"):
            raise H2RequestError("no :path or :scheme")
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    if authority:
        lines.append(b"Host: " + authority + b"\r\n")
    lines.extend(fields)
    if cookies:
        lines.append(b"Cookie: " + b"; ".join(cookies) + b"\r\n")
    chunked = not end_stream and not has_length
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), chunked, method


class ResponseReader:
    """Feed the HTTP/1.1 bytes written for one stream; get back events:
    ``("headers", [(name, value)...], end_stream)`` (``:status`` first; informational
    ones never end the stream), ``("data", bytes)``, ``("end",)``.  ``head_request``:
    the response has no body whatever its fields say."""

    def __init__(self, head_request: bool):
        self.head_request = head_request
        self.buf = b""
        self.state = "head"  # head | length | chunked | close | done
        self.remaining = 0
        self.decoder: ChunkedDecoder | None = None

    def feed(self, data) -> list[tuple]:
        out: list[tuple] = []
        data = bytes(data)
        while data and self.state != "done":
            if self.state == "head":
                self.buf += data
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return out
                head, data = self.buf[:end], self.buf[end + 4:]
                self.buf = b""
                self._head(head, out)
            elif self.state == "length":
                piece, data = data[:self.remaining], data[self.remaining:]
                self.remaining -= len(piece)
                out.append(("data", piece))
                if not self.remaining:
                    self.state = "done"
                    out.append(("end",))
            elif self.state == "chunked":
                try:
                    pieces = self.decoder.feed(data)
                except ChunkError as e:
                    raise ValueError(f"chunked response: {e}") from None
                out.extend(("data", bytes(p)) for p in pieces if len(p))
                data = b""
                if self.decoder.done:
                    self.state = "done"
                    out.append(("end",))
            else:  # close-delimited: everything until the end
                out.append(("data", data))
                data = b""
        return out

    def finish(self) -> list[tuple]:
        """The writer is done (shutdown): a close-delimited body ends here."""
        if self.state == "close":
            self.state = "done"
            return [("end",)]
        return []

    @property
    def done(self) -> bool:
        return self.state == "done"

    def _head(self, head: bytes, out: list) -> None:
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        drop = set(CONNECTION_SPECIFIC)
        fields = []
        length = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"connection":
                drop.update(t.strip().lower() for t in value.split(b","))
            if name == b"content-length":
                length = int(value)
            if name == b"transfer-encoding" and value.lower().endswith(b"chunked"):
                chunked = True
            fields.append((name, value))
        fields = [(n, v) for n, v in fields if n not in drop]
        headers = [(b":status", str(status).encode())] + fields
        if 100 <= status < 200:
            out.append(("headers", headers, False))  # interim: another head follows
            return
        if self.head_request or status in (204, 304):
            self.state = "done"
            out.append(("headers", headers, True))
            return
        if chunked:
            self.state = "chunked"
            self.decoder = ChunkedDecoder()
            out.append(("headers", headers, False))
        elif length is not None:
            out.append(("headers", headers, length == 0))
            self.state, self.remaining = ("length", length) if length else ("done", 0)
        else:
            self.state = "close"
            out.append(("headers", headers, False))
