"""A worker process: gevent, imported only here and only after the fork.

The master forks a worker with a :class:`WorkerSpec` (its slot, generation and the
sockets it serves).  The worker wraps each socket in a ``StreamServer`` — one accept loop
per socket is one acceptor — spawning connection handlers into one pool bounded by
``runtime.max_concurrent_connections``; sizes the hub threadpool (DNS and other blocking
calls) from ``runtime.max_blocking_threads``; beats its heartbeat into the scoreboard;
tells the master it is ready; and stops as the master asks:

- TERM: graceful — stop accepting (close its copies of the listening sockets; the
  master's stay open), wake idle keep-alive connections and close them, let in-flight
  requests finish (their responses carry ``Connection: close``) for up to
  ``runtime.graceful_timeout_ms``, then exit;
- INT / QUIT: exit now;  USR1: reopen log files.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from . import log
from .config.model import Config
from .policy import Policy
from .scoreboard import Scoreboard

HEARTBEAT = 0.5


@dataclass
class Endpoint:
    kind: str  # "listener" | "reverse" | "metrics"
    name: str
    sockets: list[socket.socket]


@dataclass
class WorkerSpec:
    index: int
    generation: int
    entry: int  # scoreboard entry
    config: Config
    policy: Policy
    endpoints: list[Endpoint]
    scoreboard: Scoreboard
    notify_fd: int
    master_pid: int
    close_fds: set[int] = field(default_factory=set)
    cpu: int | None = None
    own_addresses: set[tuple[str, int]] = field(default_factory=set)


def _reset_process(spec: WorkerSpec) -> None:
    signal.set_wakeup_fd(-1)
    # Master-only signals are ignored: their default actions would kill (HUP) or stop
    # (TTIN, TTOU) a worker that `pkill -HUP qpxd` or a process-group signal reaches.
    # USR1 is ignored until its handler is in place; stop signals keep their default
    # (dying is the right answer before the worker serves).
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1,
                signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    keep = {s.fileno() for e in spec.endpoints for s in e.sockets}
    for fd in spec.close_fds - keep:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        from setproctitle import setproctitle

        setproctitle(f"qpxd: worker {spec.index} [gen {spec.generation}]")
    except ImportError:  # pragma: no cover - setproctitle is a dependency
        pass
    if spec.cpu is not None:
        try:
            os.sched_setaffinity(0, {spec.cpu})
        except OSError as e:
            log.log(30, "cannot pin worker", cpu=spec.cpu, error=str(e))


def _handler_for(kind: str, name: str, services):
    if kind == "listener":
        lp = services.policy.listeners[name]
        if lp.mode == "transparent":
            from .edges.transparent import TransparentEdge

            return TransparentEdge(lp, services).handle
        from .edges.forward import ForwardEdge

        return ForwardEdge(lp, services).handle
    if kind == "reverse":
        from .edges.reverse import ReverseEdge

        return ReverseEdge(services.policy.reverse[name], services).handle
    from .edges.status import StatusEdge

    return StatusEdge(services).handle


def _start_profile():
    """QPXD_PROFILE=PATH: profile this worker with cProfile and write PATH.<pid> when it
    stops (for finding hot spots; never in production, cProfile slows everything)."""
    if not os.environ.get("QPXD_PROFILE"):
        return None
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    return profile


class Worker:
    """One worker process's life after the fork: serve, beat, stop as asked."""

    def __init__(self, spec: WorkerSpec):
        import gevent.event
        import gevent.pool

        from .edges.services import Services

        self.spec = spec
        cfg = self.cfg = spec.config
        log.open_access(cfg.logging.access_log, cfg.logging.format)
        gevent.get_hub().threadpool.maxsize = cfg.runtime.blocking_threads()
        self.metrics = None
        if cfg.metrics is not None:
            from .metrics import WorkerMetrics

            self.metrics = WorkerMetrics(cfg.identity.metrics_prefix, spec.index)
        self.services = Services(spec.policy, self.metrics, spec.own_addresses,
                                 spec.scoreboard)
        self.pool = gevent.pool.Pool(cfg.runtime.max_concurrent_connections)
        self.servers: list = []
        self.status_servers: list = []
        self.done = gevent.event.Event()
        self.stopping = False

    def start_servers(self) -> None:
        """One acceptor per inherited socket, spawning into the bounded pool."""
        from .netio import Acceptor

        metrics = self.metrics
        for ep in self.spec.endpoints:
            handle = _handler_for(ep.kind, ep.name, self.services)
            for i, sock in enumerate(ep.sockets):
                sock.setblocking(False)
                handle_i = metrics.counting(handle, ep.name, i) if metrics is not None \
                    else handle
                server = Acceptor(sock, handle_i, spawn=self.pool)
                server.start()
                (self.status_servers if ep.kind == "metrics" else self.servers).append(server)
        self.services.sweeper.start()

    def graceful(self) -> None:
        """TERM: stop accepting, drain, wait for in-flight requests, then stop."""
        if self.stopping:
            return
        self.stopping = True
        for server in self.servers:
            server.close()
        self.services.drain()  # /health answers 503 from now on, until the last request ends
        self.pool.join(timeout=self.cfg.runtime.graceful_timeout_ms / 1000.0)
        for server in self.status_servers:
            server.close()
        if len(self.pool):
            log.log(30, "graceful timeout: closing remaining connections",
                    connections=len(self.pool))
            self.pool.kill(timeout=1)
        self.done.set()

    @staticmethod
    def fast() -> None:
        access = log.access()
        if access is not None:
            access.flush()
        os._exit(0)

    def heartbeat(self) -> None:
        import gevent

        spec = self.spec
        ticks = 0
        while not self.done.is_set():
            spec.scoreboard.beat(spec.entry, os.getpid(), spec.generation,
                                 time.monotonic(), len(self.pool))
            access = log.access()
            if access is not None:
                access.maybe_flush()
            log.flush_pending()
            dropped = log.report_drops()
            if self.metrics is not None:
                if dropped:
                    self.metrics.log_dropped(dropped)
                self.metrics.flush()
                self.metrics.process.update(time.monotonic())
            ticks += 1
            if ticks % 10 == 0:
                self.services.pool.purge()
            if os.getppid() != spec.master_pid and not self.stopping:
                log.log(40, "master is gone; stopping")
                gevent.spawn(self.graceful)
            gevent.sleep(HEARTBEAT)

    def run(self) -> int:
        import gevent

        self.start_servers()
        gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(self.graceful))
        gevent.signal_handler(signal.SIGINT, self.fast)
        gevent.signal_handler(signal.SIGQUIT, self.fast)
        gevent.signal_handler(signal.SIGUSR1, log.reopen)
        gevent.spawn(self.heartbeat)
        profile = _start_profile()
        os.write(self.spec.notify_fd, b"ready %d %d\n" % (os.getpid(), self.spec.generation))
        self.done.wait()
        if profile is not None:
            profile.disable()
            profile.dump_stats(f"{os.environ['QPXD_PROFILE']}.{os.getpid()}")
        self.services.pool.close_all()
        if self.metrics is not None:
            self.metrics.flush()
        access = log.access()
        if access is not None:
            access.flush()
        sys.stdout.flush()
        return 0


def run_worker(spec: WorkerSpec) -> int:
    _reset_process(spec)
    log.set_role(f"worker {spec.index}")
    return Worker(spec).run()
