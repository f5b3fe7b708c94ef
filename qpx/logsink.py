"""Log output that never blocks the process: :class:`Sink`.

A sink owns one log destination — a file path, stdout (``"-"``) or stderr (``None``) —
and writes to it without ever waiting.  A stalled reader (a stuck journald, a container
log driver, a pipe nobody drains) must not stop a worker's event loop: with blocking
writes, the worker would miss its heartbeat, be killed, respawn and block again.

- stdout/stderr that are pipes, FIFOs or terminals are reopened through
  ``/proc/self/fd/N`` with ``O_NONBLOCK``: a new open file description, so the flag does
  not leak to the parent's shell or to other processes sharing the original one;
  sockets (journald's stdout stream) are written with ``MSG_DONTWAIT``.  Regular files
  are written as they are (a local disk does not stall like a pipe).
- What the destination does not take at once waits in a buffer of at most
  :data:`MAX_BUFFER` bytes and is retried on the next write or :meth:`Sink.flush`; lines
  that do not fit are dropped and counted (:attr:`Sink.dropped`): losing log lines is
  bad, stopping service is worse.  The worker reports drops as a metric and a
  periodic warning.
- :meth:`Sink.reopen` (USR1, logrotate) opens the path again; when it cannot, the old
  descriptor stays and the error is returned for one log line, never raised: a log
  rotation gone wrong must not stop service.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

MAX_BUFFER = 1 << 20


def _std_target(fd: int) -> tuple[int, socket.socket | None]:
    """A non-blocking way to write what ``fd`` (1 or 2) reaches: (fd, socket)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return -1, None
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(fd))
        return sock.fileno(), sock
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            return os.open(f"/proc/self/fd/{fd}",
                           os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC), None
        except OSError:
            pass
    return os.dup(fd), None


class Sink:
    """One log destination, written without blocking (see the module docstring)."""

    def __init__(self, target: str | None):
        self.target = target
        self.dropped = 0  # lines dropped since the start
        self._buf = bytearray()
        self._sock: socket.socket | None = None
        self.fd = -1
        self._open()

    def _open(self) -> None:
        """Open the target (raises OSError for a path that cannot be opened)."""
        if self.target is None or self.target == "-":
            self.fd, self._sock = _std_target(2 if self.target is None else 1)
        else:
            self.fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                              | os.O_CLOEXEC, 0o644)
            self._sock = None

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        self._sock = None

    def reopen(self) -> OSError | None:
        """Open the path again (logrotate moved the file).  On failure the old
        descriptor is kept and the error returned."""
        self.flush()
        if self.target is None or self.target == "-":
            return None
        old_fd, old_sock = self.fd, self._sock
        try:
            self._open()
        except OSError as e:
            self.fd, self._sock = old_fd, old_sock
            return e
        if old_fd >= 0:
            os.close(old_fd)
        return None

    def write(self, data: bytes, lines: int = 1) -> None:
        """Queue ``data`` (``lines`` log lines) and write what the destination takes."""
        if len(self._buf) + len(data) > MAX_BUFFER:
            self.flush()
            if len(self._buf) + len(data) > MAX_BUFFER:
                self.dropped += lines
                return
        self._buf += data
        self.flush()

    def flush(self) -> None:
        """Write what the destination takes now; keep the rest."""
        buf = self._buf
        fd = self.fd
        while buf:
            try:
                if self._sock is not None:
                    n = self._sock.send(buf, socket.MSG_DONTWAIT)
                else:
                    n = os.write(fd, buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    return
                # the reader is gone (EPIPE) or the disk refuses (ENOSPC): count, go on
                self.dropped += buf.count(b"\n") or 1
                buf.clear()
                return
            del buf[:n]

    @property
    def pending(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        self.flush()
        self._close()
