"""Copying bytes between two connections: tunnels (CONNECT, Upgrade, TLS passthrough).

Each direction is a loop of ``recv_into`` a large buffer + ``sendall``; the buffer is
borrowed from the worker's :class:`~qpx.netio.BufferPool` only while it holds data.
PERFORMANCE.md measured this copy loop with a 1 MiB buffer at 2.45 GB/s on loopback and
``os.splice`` through a pipe at 1.5-1.8 GB/s, so there is no splice path.  Measured
again with 1 MiB pipes in ``make bench``'s layout (issue 22): 1 MiB GETs at 0.92× the
copy loop's MB/s; the copies go, but splice_to_socket sends more, smaller segments and
the CPU per MiB came out between 0.89× and 1.05×.  Still no splice path.

Half-close: EOF from one side shuts down the other side's write half and the tunnel
lives on until the other direction ends too.  The idle timeout counts both directions
together (unlike the original's per-direction timer): any byte either way moves both
connections' deadlines.
"""

from __future__ import annotations

import time

from .netio import BufferPool, Conn, DeadlineExceeded

monotonic = time.monotonic


class TunnelAbort(Exception):
    """Thrown into the other direction when one direction of a tunnel fails."""


class _Shared:
    __slots__ = ("a", "b", "idle", "sent")

    def __init__(self, a: Conn, b: Conn, idle: float):
        self.a, self.b, self.idle = a, b, idle
        self.sent = [0, 0]

    def touch(self) -> None:
        d = monotonic() + self.idle
        self.a.deadline = d
        self.b.deadline = d


def _pump(shared: _Shared, src: Conn, dst: Conn, pool: BufferPool, slot: int) -> None:
    recv_into = src.sock.recv_into
    while True:
        buf = pool.get()
        try:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                n = -1
            if n > 0:
                dst.sendall(memoryview(buf)[:n])
        finally:
            pool.put(buf)  # an idle direction holds no buffer while it waits
        if n < 0:
            src.wait_readable()
            continue
        if n == 0:
            dst.shutdown_write()
            return
        shared.sent[slot] += n
        shared.touch()


def tunnel(a: Conn, b: Conn, idle: float, pool: BufferPool,
           to_b: bytes = b"", to_a: bytes = b"") -> tuple[int, int]:
    """Relay until both directions have ended.  ``to_b``/``to_a`` are bytes already read
    from one side that belong to the other.  Returns (bytes a→b, bytes b→a); raises
    :class:`DeadlineExceeded` or ``OSError`` when the tunnel broke (the caller closes)."""
    import gevent

    shared = _Shared(a, b, idle)
    shared.touch()
    if to_b:
        b.sendall(to_b)
        shared.sent[0] += len(to_b)
    if to_a:
        a.sendall(to_a)
        shared.sent[1] += len(to_a)

    failure: list[BaseException] = []

    def reverse() -> None:
        try:
            _pump(shared, b, a, pool, 1)
        except (OSError, DeadlineExceeded) as e:
            failure.append(e)
            a.interrupt(TunnelAbort(str(e)))
            b.interrupt(TunnelAbort(str(e)))

    back = gevent.spawn(reverse)
    try:
        _pump(shared, a, b, pool, 0)
    except TunnelAbort:
        pass
    except BaseException:
        back.kill(block=True)
        raise
    back.join()
    if failure:
        raise failure[0]
    return shared.sent[0], shared.sent[1]
