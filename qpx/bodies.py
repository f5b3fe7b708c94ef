"""Message bodies in transit between two connections: read by their framing, written by
ours.  (The byte mover beside :mod:`qpx.relay`; the framing rules are sans-IO in
:mod:`qpx.http.chunked`.)

A body is read with the framing its head declared — ``length`` (Content-Length),
``chunked`` (decoded by :mod:`qpx.http.chunked`), ``eof`` (a response delimited by the
connection closing) — and written with the framing qpxd chose for the next hop:
``length`` (same byte count), ``chunked`` (re-encoded, one chunk per piece, trailers
dropped) or ``raw`` (bytes as they come, for a close-delimited response).  Nothing is
buffered whole: pieces go out as they arrive, through a buffer borrowed from the worker's
pool for one read and its write (a transfer waiting on its sender holds no buffer).

Timeouts: each read must make progress within ``idle`` seconds (a body that stalls is a
pause-based desync risk: the message is incomplete and both connections are closed,
RFC 9112 §6.3); each write within ``send_timeout`` (a client that stops reading).
Failures say which side failed (:class:`SourceError` / :class:`SinkError`), so a client
that drops mid-upload is not blamed on the upstream, nor the reverse.
"""

from __future__ import annotations

import time

from .http.chunked import LAST_CHUNK, ChunkedDecoder, ChunkError, encode_chunk
from .netio import BufferPool, Conn, DeadlineExceeded

monotonic = time.monotonic


class BodyFramingError(Exception):
    """The peer sent a body that does not follow its declared framing."""


class EarlyEOF(Exception):
    """The peer closed before the declared end of the body."""


class BodyTooLarge(Exception):
    """The body grew past the size the receiver accepts (``limit``)."""


class SourceError(Exception):
    """Reading the body failed: the sending peer reset or stalled past ``idle``.
    ``timeout`` tells which."""

    def __init__(self, reason: str, timeout: bool):
        super().__init__(reason)
        self.timeout = timeout


class SinkError(Exception):
    """Writing the body failed: the receiving peer reset or stopped reading for
    ``send_timeout``.  ``timeout`` tells which."""

    def __init__(self, reason: str, timeout: bool):
        super().__init__(reason)
        self.timeout = timeout


def _write(dst: Conn | None, data, send_timeout: float, chunked: bool) -> None:
    if dst is None or not len(data):
        return
    try:
        if chunked:
            dst.sendall(encode_chunk(data), send_timeout)
        else:
            dst.sendall(data, send_timeout)
    except DeadlineExceeded:
        raise SinkError("the receiver stopped reading", True) from None
    except OSError as e:
        raise SinkError(f"writing: {e.strerror or e}", False) from None


def _wait(src: Conn, idle: float) -> None:
    src.deadline = monotonic() + idle
    try:
        src.wait_readable()
    except DeadlineExceeded:
        raise SourceError(f"no body byte for {idle:g}s", True) from None


def _copy(src: Conn, dst: Conn | None, remaining: int, chunked_out: bool, idle: float,
          send_timeout: float, pool: BufferPool) -> int:
    """Copy ``remaining`` bytes (-1: until EOF) from ``src`` to ``dst``.  A buffer is
    borrowed per read, so a transfer waiting on its sender holds none."""
    recv_into = src.sock.recv_into
    total = 0
    while remaining:
        buf = pool.get()
        try:
            size = remaining if 0 < remaining < len(buf) else 0
            try:
                n = recv_into(buf, size)
            except BlockingIOError:
                n = -1
            except OSError as e:
                raise SourceError(f"reading: {e.strerror or e}", False) from None
            if n > 0:
                with memoryview(buf) as view:
                    _write(dst, view[:n], send_timeout, chunked_out)
        finally:
            pool.put(buf)
        if n < 0:
            _wait(src, idle)
            continue
        if n == 0:
            if remaining > 0:
                raise EarlyEOF(f"peer closed with {remaining} body bytes missing")
            return total
        total += n
        if remaining > 0:
            remaining -= n
    return total


def _end(dst: Conn | None, chunked_out: bool, send_timeout: float) -> None:
    if chunked_out and dst is not None:
        _write(dst, LAST_CHUNK, send_timeout, False)


def relay_body(src: Conn, dst: Conn | None, initial: bytes, kind: str, length: int,
               out: str, *, idle: float, send_timeout: float, pool: BufferPool,
               max_trailer: int = 32768, decoder: ChunkedDecoder | None = None,
               limit: int = -1) -> tuple[bytes, int]:
    """Copy one body from ``src`` to ``dst`` (``None`` discards it).  ``initial`` holds
    bytes already read after the head.  Returns (bytes read past the body, body size).
    Raises :class:`BodyFramingError` or :class:`EarlyEOF` (the sender broke the
    framing), :class:`SourceError` (the sender failed), :class:`SinkError` (the
    receiver failed) or :class:`BodyTooLarge` (a chunked body past ``limit`` bytes,
    when ``limit`` >= 0; nothing past the limit is written)."""
    chunked_out = out == "chunked"
    if kind == "length":
        head = initial[:length]
        rest = initial[length:]
        _write(dst, head, send_timeout, chunked_out)
        total = len(head)
        if length - total:
            total += _copy(src, dst, length - total, chunked_out, idle, send_timeout, pool)
        _end(dst, chunked_out, send_timeout)
        return rest, total

    if kind == "chunked":
        total = 0
        if decoder is None:
            decoder = ChunkedDecoder(max_trailer)
        elif decoder.done:
            _end(dst, chunked_out, send_timeout)
            return decoder.rest, 0
        data = initial
        while True:
            if data:
                try:
                    pieces = decoder.feed(data)
                except ChunkError as e:
                    raise BodyFramingError(str(e)) from None
                for piece in pieces:
                    total += len(piece)
                    if 0 <= limit < total:
                        raise BodyTooLarge(f"body over {limit} bytes")
                    _write(dst, piece, send_timeout, chunked_out)
                if decoder.done:
                    _end(dst, chunked_out, send_timeout)
                    return decoder.rest, total
            try:
                data = src.recv(timeout=idle)
            except DeadlineExceeded:
                raise SourceError(f"no body byte for {idle:g}s", True) from None
            except OSError as e:
                raise SourceError(f"reading: {e.strerror or e}", False) from None
            if not data:
                raise EarlyEOF("peer closed inside a chunked body")

    if kind == "eof":
        _write(dst, initial, send_timeout, chunked_out)
        total = len(initial) + _copy(src, dst, -1, chunked_out, idle, send_timeout, pool)
        _end(dst, chunked_out, send_timeout)
        return b"", total

    return initial, 0  # "none"
