"""A strict chunked transfer-coding decoder (RFC 9112 §7.1), sans-IO.

qpxd never forwards chunk framing as received: it decodes here and re-encodes what it
sends (qpxd-R12), so a peer's odd framing can never reach the next hop.  Strict profile:

- ``chunk-size`` is 1 to 16 hex digits — no ``0x``, sign, underscore or whitespace
  (Python's ``int(x, 16)`` accepts ``0_2e``: aiohttp CVE-2023-47627);
- chunk extensions must match the RFC grammar and the whole size line is bounded
  (``MAX_LINE``), so an extension flood is refused early (CVE-2023-39326 class);
- every line ends in CRLF; a bare CR or LF, or chunk data not followed by exactly CRLF,
  is an error, and after an error nothing more is parsed (never resynchronise);
- trailer fields are syntax-checked and dropped: never merged into the head, never used
  for routing (gevent CVE-2023-41419 was a trailer-parsing smuggle).
"""

from __future__ import annotations

import re

MAX_LINE = 4096 + 18
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QSTRING = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN +
    rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QSTRING + rb"))?)*")
_TRAILER_LINE = re.compile(_TOKEN + rb":[ \t]*[\x21-\x7e\x80-\xff]*"
                           rb"(?:[ \t]+[\x21-\x7e\x80-\xff]+)*[ \t]*")

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkError(ValueError):
    pass


class ChunkedDecoder:
    """``feed(data)`` returns the body pieces found in ``data`` (memoryview slices of it,
    valid until the caller reuses ``data``); ``done`` turns true after the last chunk and
    the trailer section, and ``rest`` then holds the bytes that followed."""

    __slots__ = ("state", "remaining", "line", "trailer_size", "max_trailer", "done", "rest")

    def __init__(self, max_trailer: int = 32768):
        self.state = _SIZE
        self.remaining = 0
        self.line = bytearray()
        self.trailer_size = 0
        self.max_trailer = max_trailer
        self.done = False
        self.rest = b""

    def _take_line(self, data, view: memoryview, pos: int, limit: int
                   ) -> tuple[bytes | None, int]:
        """Collect one CRLF-terminated line starting at ``pos``: (line or None, new pos)."""
        line = self.line
        end = len(view)
        nl = data.find(b"\n", pos, pos + limit + 2 - len(line))
        if nl >= 0:
            nl -= pos
        elif end - pos > limit + 1 - len(line):
            raise ChunkError("chunk line too long")
        if nl < 0:
            line += view[pos:end]
            if len(line) > limit:
                raise ChunkError("chunk line too long")
            if b"\r" in line[:-1]:
                raise ChunkError("bare CR in chunk line")
            return None, end
        line += view[pos:pos + nl]
        if len(line) > limit + 1:
            raise ChunkError("chunk line too long")
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            raise ChunkError("chunk line not terminated by CRLF")
        out = bytes(line[:-1])
        line.clear()
        return out, pos + nl + 1

    def feed(self, data) -> list[memoryview]:
        if self.done:
            raise ChunkError("data after the last chunk")
        if isinstance(data, memoryview):
            data = data.tobytes()
        view = memoryview(data)
        pieces: list[memoryview] = []
        pos, end = 0, len(view)
        while pos < end:
            state = self.state
            if state == _DATA:
                n = min(self.remaining, end - pos)
                pieces.append(view[pos:pos + n])
                pos += n
                self.remaining -= n
                if not self.remaining:
                    self.state = _DATA_END
            elif state == _SIZE:
                line, pos = self._take_line(data, view, pos, MAX_LINE)
                if line is None:
                    break
                m = _SIZE_LINE.fullmatch(line)
                if m is None:
                    raise ChunkError("invalid chunk size line")
                size = int(m.group(1), 16)
                if size:
                    self.remaining = size
                    self.state = _DATA
                else:
                    self.state = _TRAILER
            elif state == _DATA_END:
                need = 2 - len(self.line)
                got = bytes(view[pos:pos + need])
                self.line += got
                pos += len(got)
                if len(self.line) == 2:
                    if self.line != b"\r\n":
                        raise ChunkError("chunk data not followed by CRLF")
                    self.line.clear()
                    self.state = _SIZE
                elif self.line != b"\r":
                    raise ChunkError("chunk data not followed by CRLF")
            elif state == _TRAILER:
                line, pos = self._take_line(data, view, pos, self.max_trailer)
                if line is None:
                    break
                if not line:
                    self.state = _DONE
                    self.done = True
                    self.rest = bytes(view[pos:])
                    return pieces
                self.trailer_size += len(line) + 2
                if self.trailer_size > self.max_trailer:
                    raise ChunkError("trailer section too large")
                if _TRAILER_LINE.fullmatch(line) is None:
                    raise ChunkError("invalid trailer field")
        return pieces


LAST_CHUNK = b"0\r\n\r\n"


def encode_chunk(data) -> bytes:
    """One chunk: size line, data, CRLF (``data`` must not be empty)."""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


def encode_chunks(pieces, last: bool) -> bytes:
    """Pieces re-framed as chunks (plus the last-chunk when ``last``)."""
    out = b"".join(b"%x\r\n" % len(p) + bytes(p) + b"\r\n" for p in pieces if len(p))
    return out + LAST_CHUNK if last else out
