"""The master's PID file, held as a lock for the master's whole life.

A second ``qpxd --pid FILE`` on the same file fails at once, naming the running PID,
instead of overwriting the file (and deleting it on exit, leaving the first master
without one).  The lock is a POSIX record lock (``lockf``): it belongs to the master
process only — forked workers do not inherit it — and the kernel drops it when the
master dies, however it dies, so a stale file never blocks a start.
"""

from __future__ import annotations

import fcntl
import os


class PidFileBusy(Exception):
    pass


class PidFile:
    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def acquire(self, pid: int) -> None:
        """Lock the file and write ``pid``; raises PidFileBusy (another master holds it)
        or OSError (cannot create it)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PidFileBusy(f"{self.path} is held by a running qpxd (PID {holder}); "
                              "stop it first, or reload it with HUP") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Remove the file (still ours: we hold the lock) and drop the lock."""
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1
