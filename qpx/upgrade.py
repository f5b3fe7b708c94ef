"""Binary upgrade (USR2) and systemd socket activation: listening sockets that arrive
already bound.

USR2, as nginx does it, with gunicorn's re-exec:

1. the old master renames its PID file to ``FILE.oldbin`` and starts the installed
   ``qpxd`` again with its own argv (:class:`Upgrade`), passing every listening socket
   (all SO_REUSEPORT group members and the metrics socket) as inherited descriptors
   named in ``QPXD_LISTEN_FDS``, and a pipe in ``QPXD_UPGRADE_FD``;
2. the new master adopts those sockets by address instead of binding
   (:func:`inherited_sockets`), validates its configuration, starts its workers, writes
   its PID file and says ``ready`` on the pipe (:func:`report_ready`; under systemd also
   ``MAINPID=``);
3. only then does the old master stop its workers gracefully, as on TERM, and exit.
   The accept queues live in the sockets both masters hold, so no connection is lost.

If the new master fails at any point (bad configuration, import error, crash, not ready
within ``worker_timeout_ms``), the old one logs why, takes its PID file back, and serves
on as if nothing happened.

Socket activation: with ``LISTEN_PID`` = our PID, ``LISTEN_FDS`` descriptors from 3 on
(``LISTEN_FDNAMES`` only for the log) are adopted the same way, by the address they are
bound to.  Configured addresses nobody passed are bound as usual; passed sockets no
listener uses are logged and closed.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

from . import log

FDS_ENV = "QPXD_LISTEN_FDS"
PIPE_ENV = "QPXD_UPGRADE_FD"
SD_LISTEN_FDS_START = 3


def _listening(fd: int) -> socket.socket | None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and \
                sock.type == socket.SOCK_STREAM:
            return sock
    except OSError:
        pass
    sock.detach()
    return None


def inherited_sockets() -> tuple[list[socket.socket], str]:
    """Listening sockets handed to this process (upgrade or systemd), and where they
    came from ("upgrade", "systemd" or ""); the environment variables are removed so no
    child sees them."""
    env = os.environ
    if FDS_ENV in env:
        fds = [int(x) for x in env.pop(FDS_ENV).split(",") if x.strip().isdigit()]
        origin = "upgrade"
    elif env.get("LISTEN_PID") == str(os.getpid()) and env.get("LISTEN_FDS", "").isdigit():
        n = int(env["LISTEN_FDS"])
        names = env.get("LISTEN_FDNAMES", "").split(":")
        fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
        origin = "systemd"
        log.log(logging.INFO, "socket activation", fds=n,
                names=",".join(x for x in names if x) or None)
    else:
        return [], ""
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    out = []
    for fd in fds:
        sock = _listening(fd)
        if sock is None:
            log.log(logging.WARNING, "inherited descriptor is not a listening TCP socket; "
                    "ignored", fd=fd, origin=origin)
            continue
        os.set_inheritable(fd, True)
        out.append(sock)
    return out, origin


def handoff_fd() -> int:
    """The pipe to the master we upgrade from (-1: not an upgrade)."""
    fd = os.environ.pop(PIPE_ENV, "")
    return int(fd) if fd.isdigit() else -1


def report_ready(fd: int, pid: int) -> None:
    """The new master is serving: tell the old one (and systemd, whose main PID we
    become: the unit needs ``NotifyAccess=all``)."""
    from . import sdnotify

    try:
        os.write(fd, b"ready %d\n" % pid)
        os.close(fd)
    except OSError:
        pass
    sdnotify.notify(f"MAINPID={pid}", "READY=1")


class Upgrade:
    """One USR2 upgrade in flight, seen from the old master."""

    def __init__(self, pid: int, pipe: int, deadline: float, pidlock):
        self.pid = pid
        self.pipe = pipe
        self.deadline = deadline
        self.pidlock = pidlock
        self.buf = b""

    @classmethod
    def start(cls, fds: list[int], timeout: float, pidlock) -> "Upgrade":
        """Re-execute qpxd (same interpreter, same argv) with ``fds`` inherited; our
        PID file (a :class:`~qpx.pidfile.PidFile`) becomes ``FILE.oldbin`` first, so
        the new master can take the real name."""
        held = pidlock.fd >= 0
        if held:
            os.rename(pidlock.path, pidlock.path + ".oldbin")
            pidlock.path += ".oldbin"
        try:
            return cls._spawn(fds, timeout, pidlock)
        except OSError:
            if held:
                _take_back(pidlock)
            raise

    @classmethod
    def _spawn(cls, fds: list[int], timeout: float, pidlock) -> "Upgrade":
        r, w = os.pipe()
        os.set_blocking(r, False)
        env = dict(os.environ)
        env[FDS_ENV] = ",".join(map(str, fds))
        env[PIPE_ENV] = str(w)
        mdir = env.get("PROMETHEUS_MULTIPROC_DIR", "")
        if os.path.basename(mdir).startswith("qpxd-metrics-"):
            del env["PROMETHEUS_MULTIPROC_DIR"]  # ours: the new master makes its own
        argv = [sys.executable] + sys.argv
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - replaced by exec
            try:
                for fd in fds + [w]:
                    os.set_inheritable(fd, True)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        os.close(w)
        return cls(pid, r, time.monotonic() + timeout, pidlock)

    def poll(self) -> str | None:
        """"ready", a failure reason, or None (still starting)."""
        try:
            while True:
                chunk = os.read(self.pipe, 4096)
                if not chunk:
                    return "the new master closed the handoff pipe before it was ready"
                self.buf += chunk
                if b"ready" in self.buf:
                    return "ready"
        except BlockingIOError:
            pass
        if time.monotonic() >= self.deadline:
            return "the new master was not ready in time"
        return None

    def exited(self, status: int) -> str:
        code = os.waitstatus_to_exitcode(status)
        how = f"exit code {code}" if code >= 0 else f"signal {-code}"
        return f"the new master exited ({how}) before it was ready"

    def abort(self) -> None:
        """The new master failed: make sure it is gone, take the PID file back."""
        import signal

        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.close()
        if self.pidlock.fd >= 0 and self.pidlock.path.endswith(".oldbin"):
            _take_back(self.pidlock)

    def close(self) -> None:
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1


def _take_back(pidlock) -> None:
    """``FILE.oldbin`` → ``FILE`` again (the new master failed and left it alone)."""
    real = pidlock.path[:-len(".oldbin")]
    try:
        os.rename(pidlock.path, real)
        pidlock.path = real
    except OSError as e:
        log.log(logging.ERROR, "cannot restore the PID file", path=real,
                error=e.strerror or str(e))


class UpgradeSignals:
    """The master's side of upgrades and inherited sockets (a mixin of
    :class:`~qpx.arbiter.Arbiter`: it uses its registry, PID file, configuration and
    ``handle_term``)."""

    def _adopt_inherited(self, cfg) -> None:
        """Sockets passed by the master we upgrade from, or by systemd, are adopted by
        address; the ones no listener uses are closed (and said so)."""
        self._handoff = handoff_fd()
        socks, origin = inherited_sockets()
        if not socks:
            return
        adopted = self.registry.adopt(socks, fixed=True)
        unused = self.registry.close_except([a for _, _, a in _endpoints(cfg)])
        log.log(logging.INFO, "adopted listening sockets", origin=origin,
                sockets=len(adopted), addresses=sorted(set(adopted)))
        if unused:
            log.log(logging.WARNING, "passed sockets that no listener uses; closed",
                    origin=origin, addresses=[str(a) for a in unused])

    def handle_usr2(self) -> None:
        """Binary upgrade: start the installed qpxd as a new master on our sockets."""
        if self.stopping:
            return
        if self.upgrade is not None:
            log.log(logging.WARNING, "upgrade refused: one is in flight",
                    new_master=self.upgrade.pid)
            return
        fds = sorted(self.registry.fds())
        timeout = self.cfg.runtime.worker_timeout_ms / 1000.0 + _ready_timeout()
        try:
            self.upgrade = Upgrade.start(fds, timeout, self.pidlock)
        except OSError as e:
            log.log(logging.ERROR, "upgrade failed: cannot start the new master; still "
                    "serving", error=e.strerror or str(e))
            return
        log.log(logging.INFO, "upgrade: new master started", new_master=self.upgrade.pid)

    def _poll_upgrade(self) -> None:
        result = self.upgrade.poll()
        if result == "ready":
            log.log(logging.INFO, "upgrade complete: the new master serves; stopping "
                    "this one", new_master=self.upgrade.pid)
            self.upgrade.close()
            self.handed_over = True
            self.handle_term()
        elif result is not None:
            self._upgrade_failed(result)

    def _upgrade_failed(self, why: str) -> None:
        if self.handed_over:
            return  # it served, then exited: not ours to judge any more
        log.log(logging.ERROR, f"upgrade failed: {why}; still serving",
                new_master=self.upgrade.pid)
        self.upgrade.abort()
        self.upgrade = None


def _endpoints(cfg):
    from .arbiter import endpoints

    return endpoints(cfg)


def _ready_timeout() -> float:
    from .arbiter import READY_TIMEOUT

    return READY_TIMEOUT
