"""Bytes on the wire: raw non-blocking sockets, reusable watchers, a deadline sweeper.

Every edge (forward, reverse, transparent) and the upstream pool move bytes through
:class:`Conn`.  It is deliberately not ``gevent.socket``: PERFORMANCE.md measured a raw
non-blocking socket with its own reusable read/write watchers and ``hub.wait(watcher)``
at +20-33 % request rate over gevent's socket wrappers, and a per-operation
``gevent.Timeout``/``settimeout`` at -28 %.  So:

- a :class:`Conn` owns one read and one write watcher for its whole life and tries the
  system call first, waiting only on ``EAGAIN``;
- timeouts are *deadlines*: an absolute ``time.monotonic()`` value on the connection,
  checked before every wait and enforced by one :class:`Sweeper` greenlet per worker
  that periodically throws :class:`DeadlineExceeded` into greenlets waiting past theirs.
  Setting a deadline costs one attribute store; no timer is created per operation.

Sizes: ``RECV_SIZE`` bounds one read of heads and small bodies; bulk copies (tunnels,
large bodies) borrow big buffers from :class:`BufferPool` only while they hold data, so
idle connections cost no buffer memory, and the pool caps how many big ones are out.
"""

from __future__ import annotations

import array
import errno
import fcntl
import select
import socket
import sys
import termios
import time
from collections.abc import Iterable

from gevent import getcurrent
from gevent.hub import get_hub
from gevent.server import StreamServer

monotonic = time.monotonic
_ioctl = fcntl.ioctl
_FIONREAD = termios.FIONREAD
_IOCTL_INT = array.array("i", [0])

_POLLER = select.poll()  # one per process: a worker is single-threaded
_POLLIN = select.POLLIN

RECV_SIZE = 65536
FIRST_READ = 256 << 10  # a response's first read (Conn.recv_later_large)
BULK_SIZE = 1 << 20  # 1 MiB: PERFORMANCE.md measured 2.45 GB/s vs 1.2 GB/s for 64 KiB


class DeadlineExceeded(Exception):
    """The connection's deadline passed while it waited."""


class Conn:
    """A non-blocking socket with its own watchers and an absolute deadline (0 = none)."""

    __slots__ = ("sock", "fd", "_rw", "_ww", "_hub", "_wait", "_reader", "_rseq", "waiting",
                 "wwaiting", "deadline", "closed", "_registry", "__weakref__")

    def __init__(self, sock: socket.socket, registry: "Sweeper | None" = None):
        sock.setblocking(False)
        self.sock = sock
        self.fd = fd = sock.fileno()
        hub = get_hub()
        loop = hub.loop
        self._rw = loop.io(fd, 1)
        self._ww = loop.io(fd, 2)
        self._hub = hub
        self._wait = hub.wait
        self._reader = None  # the greenlet waiting to read
        self._rseq = 0  # counts read waits: an interrupt aimed at one wait hits no later one
        # A tunnel has one greenlet reading a connection while another writes to it, so
        # the read and the write waiter are kept apart: the sweeper and interrupt()
        # must reach both.
        self.waiting = None  # the read watcher while a greenlet waits on it
        self.wwaiting = None  # the write watcher while a greenlet waits on it
        self.deadline = 0.0
        self.closed = False
        self._registry = registry
        if registry is not None:
            registry.conns.add(self)

    # ------------------------------------------------------------------ waiting

    def _block(self, watcher) -> None:
        """Wait for the read watcher (the only watcher the hot paths wait on).

        Unlike ``hub.wait`` the read watcher is left running after the wake-up: with
        epoll, libev turns every stop + start of an fd's only watcher into an
        ``epoll_ctl(ADD)`` that fails with EEXIST - a wasted system call per wait, two
        per proxied request.  A readiness event that finds nobody waiting stops the
        watcher (the next wait starts it again), so an idle pooled connection does not
        keep a level-triggered event spinning."""
        deadline = self.deadline
        if deadline and monotonic() >= deadline:
            raise DeadlineExceeded()
        self.waiting = watcher
        self._reader = getcurrent()
        self._rseq += 1
        if not watcher.active:
            watcher.start(self._readable)
        try:
            self._hub.switch()
        finally:
            self._reader = None
            self.waiting = None

    def _readable(self) -> None:
        """Read watcher callback, in the hub."""
        reader = self._reader
        if reader is None:
            self._rw.stop()
            return
        try:
            reader.switch()
        except BaseException:  # as gevent's Waiter.switch does
            self._hub.handle_error(reader, *sys.exc_info())

    def wait_readable(self) -> None:
        self._block(self._rw)

    def wait_writable(self) -> None:
        deadline = self.deadline
        if deadline and monotonic() >= deadline:
            raise DeadlineExceeded()
        watcher = self._ww
        self.wwaiting = watcher
        try:
            self._wait(watcher)
        finally:
            self.wwaiting = None

    # ------------------------------------------------------------------ reading

    def recv(self, size: int = RECV_SIZE, timeout: float = 0.0) -> bytes:
        """Bytes received, ``b""`` at EOF.  Blocks (cooperatively) until data or EOF,
        at most until the connection's deadline; a ``timeout`` (seconds) replaces that
        deadline when the call has to wait."""
        sock = self.sock
        while True:
            try:
                return sock.recv(size)
            except BlockingIOError:
                if timeout:
                    self.deadline = monotonic() + timeout
                self._block(self._rw)

    def recv_later(self, size: int = RECV_SIZE) -> bytes:
        """``recv`` for data that cannot have arrived yet (a response just after its
        request, a keep-alive client's next request): wait for readability first.
        Trying first would cost a failing syscall plus a BlockingIOError, whose errno
        text CPython decodes through iconv, on nearly every call."""
        sock = self.sock
        while True:
            self._block(self._rw)
            try:
                return sock.recv(size)
            except BlockingIOError:
                continue

    def recv_later_large(self, pool: "BufferPool", size: int = FIRST_READ) -> bytes:
        """:meth:`recv_later` of up to ``size`` bytes, read into a buffer borrowed from
        ``pool``.  For the first read of a response: it takes all that has arrived, so
        a large body leaves in large writes from its first byte, as through a tunnel
        (1 MiB GETs: 0.68x the tunnel's MB/s with a 64 KiB first read, 0.95x), without CPython
        allocating ``size`` bytes per call and shrinking them (past glibc's mmap
        threshold that is an mmap, mremap and munmap per request)."""
        sock = self.sock
        while True:
            self._block(self._rw)
            buf = pool.get()  # only after the wait: a buffer is never held idle
            try:
                n = sock.recv_into(buf, min(size, len(buf)))
                with memoryview(buf) as view:
                    return bytes(view[:n])
            except BlockingIOError:
                continue
            finally:
                pool.put(buf)

    def recv_into(self, buf, size: int = 0, timeout: float = 0.0) -> int:
        """Like ``recv``, into ``buf``; ``timeout`` as in :meth:`sendall`."""
        sock = self.sock
        while True:
            try:
                return sock.recv_into(buf, size)
            except BlockingIOError:
                if timeout:
                    self.deadline = monotonic() + timeout
                self._block(self._rw)

    def peek(self, size: int = RECV_SIZE) -> bytes:
        """The bytes readable now, left in the socket (``MSG_PEEK``); waits for some.
        ``b""`` at EOF.  For the prologue of TLS listeners, whose handshake must find
        the ClientHello still in the socket."""
        sock = self.sock
        while True:
            try:
                return sock.recv(size, socket.MSG_PEEK)
            except BlockingIOError:
                self._block(self._rw)

    def recv_nowait(self, size: int = RECV_SIZE) -> bytes | None:
        """Whatever is readable now: bytes, ``b""`` at EOF, ``None`` if nothing yet."""
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            return None

    def pending(self) -> int:
        """Bytes readable right now (FIONREAD); -1 if the socket is gone.  The ioctl
        writes into one preallocated int: half the cost of the bytes-copy form."""
        try:
            _ioctl(self.fd, _FIONREAD, _IOCTL_INT, True)
        except OSError:
            return -1
        return _IOCTL_INT[0]

    def idle_alive(self) -> bool:
        """True when an idle pooled connection is still open and has nothing pending,
        without a system call in the usual case.  The read watcher stays armed between
        exchanges (see :meth:`_block`): bytes or an EOF arriving while nobody reads make
        the hub stop it, or leave its event pending if the hub has not dispatched it
        yet.  An armed watcher with no pending event means nothing has arrived up to
        the hub's last ``epoll_wait`` - nginx's keep-alive check; the ``poll`` of
        :meth:`peek_alive` is only the fallback for a watcher that is not armed.  Bytes
        arriving after the last ``epoll_wait`` go unseen either way (they could arrive
        just after a ``poll`` too)."""
        rw = self._rw
        if rw.active and not rw.pending:
            return True
        return self.peek_alive()

    def peek_alive(self) -> bool:
        """True when an idle connection is still open and has nothing pending (a pooled
        upstream connection the peer has closed polls readable: EOF).  One ``poll``
        with no timeout: 0.6 µs here, half a ``MSG_PEEK`` that raises BlockingIOError
        when all is well."""
        poller = _POLLER
        fd = self.fd
        poller.register(fd, _POLLIN)
        try:
            return not poller.poll(0)
        finally:
            poller.unregister(fd)

    # ------------------------------------------------------------------ writing

    def sendall(self, data, timeout: float = 0.0) -> None:
        """Send everything.  ``timeout`` (seconds without progress) becomes the deadline
        only when the socket buffer is full and the call has to wait; 0 keeps the
        connection's current deadline."""
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        total = len(data)
        if sent == total:
            return
        view = memoryview(data)
        while sent < total:
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                if timeout:
                    self.deadline = monotonic() + timeout
                self.wait_writable()

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._registry is not None:
            self._registry.conns.discard(self)
        self._rw.close()
        self._ww.close()
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0): for connections in an unknown protocol state."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            except OSError:
                pass
        self.close()

    def interrupt(self, error: BaseException) -> bool:
        """Throw ``error`` into every greenlet waiting on this connection (a reader,
        a writer, or both in a tunnel).  True when there was one."""
        woke = False
        if self._reader is not None:
            self._hub.loop.run_callback(self._throw_reader, self._rseq, error)
            woke = True
        if self.wwaiting is not None:
            self._hub.cancel_wait(self.wwaiting, error)
            woke = True
        return woke

    def _throw_reader(self, seq: int, error: BaseException) -> None:
        reader = self._reader
        if reader is not None and seq == self._rseq:  # still the wait it was aimed at
            reader.throw(error)



# accept() failing for want of this host's resources: pause, retry, never a traceback
_ACCEPT_SHORTAGE = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# a connection that went away before we took it: nothing to do
_ACCEPT_GONE = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EINTR))
ACCEPT_REPORT_INTERVAL = 10.0


class Acceptor(StreamServer):
    """One accept loop on one listening socket; hands out plain sockets (the edges wrap
    them in :class:`Conn`), not gevent socket objects.

    When the host runs out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM),
    accepting pauses (50 ms, doubling up to 1 s, until an accept succeeds) and one log
    line says so at most every :data:`ACCEPT_REPORT_INTERVAL` seconds, with the count of
    failures it stands for: the queued connections wait in the backlog meanwhile."""

    _pause_delay = 0.05
    _reported_at = -1e18
    _failures = 0
    _pause_timer = None

    def do_read(self):
        sock = self.socket
        try:
            fd, address = sock._accept()
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in _ACCEPT_GONE:
                return None
            if e.errno not in _ACCEPT_SHORTAGE:
                raise
            self._pause(e)
            return None
        self._pause_delay = 0.05
        return socket.socket(sock.family, sock.type, sock.proto, fileno=fd), address

    def _pause(self, error: OSError) -> None:
        self._failures += 1
        now = monotonic()
        if now - self._reported_at >= ACCEPT_REPORT_INTERVAL:
            from . import log

            log.log(40, "accept failed: this host is out of resources; pausing accepts",
                    address=str(self.address), error=error.strerror or str(error),
                    failures=self._failures, pause_ms=int(self._pause_delay * 1000))
            self._reported_at = now
            self._failures = 0
        self.stop_accepting()
        if self._pause_timer is not None:
            self._pause_timer.close()
        self._pause_timer = self.loop.timer(self._pause_delay)
        self._pause_timer.start(self._start_accepting_if_started)
        self._pause_delay = min(1.0, self._pause_delay * 2)

    def do_close(self, sock, *args):
        sock.close()


class Sweeper:
    """One per worker: every ``interval`` seconds, wake connections whose deadline passed."""

    def __init__(self, interval: float = 0.1):
        self.conns: set[Conn] = set()
        self.interval = interval
        self._glet = None

    def start(self) -> None:
        import gevent

        self._glet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._glet is not None:
            self._glet.kill(block=False)

    def sweep(self, now: float) -> int:
        woken = 0
        for conn in list(self.conns):
            d = conn.deadline
            if d and now >= d and (conn.waiting is not None or conn.wwaiting is not None):
                conn.interrupt(DeadlineExceeded())
                woken += 1
        return woken

    def _run(self) -> None:
        import gevent

        while True:
            gevent.sleep(self.interval)
            self.sweep(monotonic())


class BufferPool:
    """Relay buffers, lent only while a copy holds data (idle transfers hold none).

    Big buffers (1 MiB) make bulk copies fast, but a buffer stays lent while its data
    waits on a slow reader, so a thousand slow downloads would pin a gigabyte.  At most
    ``max_big`` big buffers are out at once; past that, borrowers get a small one
    (64 KiB: still a full socket buffer's worth per system call).  Memory held by
    transfers is therefore bounded by ``max_big`` MiB plus 64 KiB per blocked transfer.
    """

    def __init__(self, size: int = BULK_SIZE, keep: int = 8, max_big: int = 32,
                 small: int = RECV_SIZE):
        self.size = size
        self.small = small
        self.keep = keep
        self.max_big = max_big
        self.big_out = 0
        self._free: list[bytearray] = []
        self._free_small: list[bytearray] = []

    def get(self) -> bytearray:
        if self.big_out < self.max_big:
            self.big_out += 1
            return self._free.pop() if self._free else bytearray(self.size)
        return self._free_small.pop() if self._free_small else bytearray(self.small)

    def put(self, buf: bytearray) -> None:
        if len(buf) == self.size:
            self.big_out -= 1
            if len(self._free) < self.keep:
                self._free.append(buf)
        elif len(self._free_small) < self.keep:
            self._free_small.append(buf)


def tune_stream_socket(sock: socket.socket) -> None:
    """TCP_NODELAY: a response head and body in separate segments must not wait on
    Nagle + delayed ACK (PERFORMANCE.md: 1.1k req/s without it)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def open_connection(addrs: Iterable[tuple], deadline: float,
                    registry: Sweeper | None = None) -> Conn:
    """Connect to the first of ``addrs`` ((family, sockaddr) pairs) that accepts before
    ``deadline``.  Raises the last ``OSError`` or :class:`DeadlineExceeded`."""
    last: Exception = OSError(errno.EHOSTUNREACH, "no address to connect to")
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        tune_stream_socket(sock)
        conn = Conn(sock, registry)
        conn.deadline = deadline
        try:
            err = sock.connect_ex(sockaddr)
            if err == errno.EINPROGRESS:
                conn.wait_writable()
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except BaseException:
            conn.close()
            raise
        if err == 0:
            conn.deadline = 0.0
            return conn
        conn.close()
        last = OSError(err, errno.errorcode.get(err, str(err)))
        if err == errno.ECONNREFUSED:
            last = ConnectionRefusedError(err, "connection refused")
    raise last
