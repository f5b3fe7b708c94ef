"""Message bodies in transit: read by their framing, written by ours.

A body is read with the framing its head declared — ``length`` (Content-Length),
``chunked`` (decoded by :mod:`qpx.http.chunked`), ``eof`` (a response delimited by the
connection closing) — and written with the framing qpxd chose for the next hop:
``length`` (same byte count), ``chunked`` (re-encoded, one chunk per piece, trailers
dropped) or ``raw`` (bytes as they come, for a close-delimited response).  Nothing is
buffered whole: pieces go out as they arrive, through a buffer borrowed from the worker's
pool for the length of the transfer.

Timeouts: each read must make progress within ``idle`` seconds (a body that stalls is a
pause-based desync risk: the message is incomplete and both connections are closed,
RFC 9112 §6.3); each write within ``send_timeout`` (a client that stops reading).
"""

from __future__ import annotations

from ..netio import BufferPool, Conn
from .chunked import LAST_CHUNK, ChunkedDecoder, ChunkError



class BodyFramingError(Exception):
    """The peer sent a body that does not follow its declared framing."""


class EarlyEOF(Exception):
    """The peer closed before the declared end of the body."""


def _write(dst: Conn | None, data, send_timeout: float, chunked: bool) -> None:
    if dst is None or not len(data):
        return
    if chunked:
        dst.sendall(b"%x\r\n" % len(data) + bytes(data) + b"\r\n", send_timeout)
    else:
        dst.sendall(data, send_timeout)


def relay_body(src: Conn, dst: Conn | None, initial: bytes, kind: str, length: int,
               out: str, *, idle: float, send_timeout: float, pool: BufferPool,
               max_trailer: int = 32768,
               decoder: ChunkedDecoder | None = None) -> tuple[bytes, int]:
    """Copy one body from ``src`` to ``dst`` (``None`` discards it).  ``initial`` holds
    bytes already read after the head.  Returns (bytes read past the body, body size).
    Raises :class:`BodyFramingError`, :class:`EarlyEOF`, ``OSError`` or
    ``DeadlineExceeded``."""
    chunked_out = out == "chunked"
    total = 0
    if kind == "length":
        head = initial[:length]
        rest = initial[length:]
        _write(dst, head, send_timeout, chunked_out)
        total = len(head)
        remaining = length - total
        if remaining:
            buf = pool.get()
            view = memoryview(buf)
            try:
                while remaining:
                    n = src.recv_into(buf, min(remaining, len(buf)), idle)
                    if not n:
                        raise EarlyEOF(f"peer closed with {remaining} body bytes missing")
                    _write(dst, view[:n], send_timeout, chunked_out)
                    remaining -= n
                    total += n
            finally:
                view.release()
                pool.put(buf)
        if chunked_out and dst is not None:
            dst.sendall(LAST_CHUNK, send_timeout)
        return rest, total

    if kind == "chunked":
        if decoder is None:
            decoder = ChunkedDecoder(max_trailer)
        elif decoder.done:
            if chunked_out and dst is not None:
                dst.sendall(LAST_CHUNK, send_timeout)
            return decoder.rest, 0
        data = initial
        while True:
            if data:
                try:
                    pieces = decoder.feed(data)
                except ChunkError as e:
                    raise BodyFramingError(str(e)) from None
                for piece in pieces:
                    _write(dst, piece, send_timeout, chunked_out)
                    total += len(piece)
                if decoder.done:
                    if chunked_out and dst is not None:
                        dst.sendall(LAST_CHUNK, send_timeout)
                    return decoder.rest, total
            data = src.recv(timeout=idle)
            if not data:
                raise EarlyEOF("peer closed inside a chunked body")

    if kind == "eof":
        _write(dst, initial, send_timeout, chunked_out)
        total = len(initial)
        buf = pool.get()
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf, 0, idle)
                if not n:
                    break
                _write(dst, view[:n], send_timeout, chunked_out)
                total += n
        finally:
            view.release()
            pool.put(buf)
        if chunked_out and dst is not None:
            dst.sendall(LAST_CHUNK, send_timeout)
        return b"", total

    return initial, 0  # "none"


def encode_chunks(pieces, last: bool) -> bytes:
    """Pieces re-framed as chunks (plus the last-chunk when ``last``)."""
    out = b"".join(b"%x\r\n" % len(p) + bytes(p) + b"\r\n" for p in pieces if len(p))
    return out + LAST_CHUNK if last else out
