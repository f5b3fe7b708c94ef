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
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
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
    from .metrics import MetricsEdge

    return MetricsEdge(services).handle


def _start_profile():
    """QPXD_PROFILE=PATH: profile this worker with cProfile and write PATH.<pid> when it
    stops (for finding hot spots; never in production, cProfile slows everything)."""
    if not os.environ.get("QPXD_PROFILE"):
        return None
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    return profile


def run_worker(spec: WorkerSpec) -> int:
    _reset_process(spec)
    cfg = spec.config
    log.set_role(f"worker {spec.index}")

    import gevent
    import gevent.event
    import gevent.pool

    from .edges.base import Services
    from .netio import Acceptor

    log.open_access(cfg.logging.access_log, cfg.logging.format)
    hub = gevent.get_hub()
    hub.threadpool.maxsize = cfg.runtime.blocking_threads()
    metrics = None
    if cfg.metrics is not None:
        from .metrics import WorkerMetrics

        metrics = WorkerMetrics(cfg.identity.metrics_prefix, spec.index)
    services = Services(spec.policy, metrics)
    services.own_addresses = spec.own_addresses
    services.scoreboard = spec.scoreboard
    pool = gevent.pool.Pool(cfg.runtime.max_concurrent_connections)
    servers = []
    metrics_servers = []
    for ep in spec.endpoints:
        handle = _handler_for(ep.kind, ep.name, services)
        for i, sock in enumerate(ep.sockets):
            sock.setblocking(False)
            if metrics is not None:
                handle_i = metrics.counting(handle, ep.name, i)
            else:
                handle_i = handle
            server = Acceptor(sock, handle_i, spawn=pool)
            server.start()
            (metrics_servers if ep.kind == "metrics" else servers).append(server)
    services.sweeper.start()

    done = gevent.event.Event()
    state = {"stopping": False}

    def graceful() -> None:
        if state["stopping"]:
            return
        state["stopping"] = True
        for server in servers:
            server.close()
        services.drain()  # /health answers 503 from now on, until the last request ends
        pool.join(timeout=cfg.runtime.graceful_timeout_ms / 1000.0)
        for server in metrics_servers:
            server.close()
        if len(pool):
            log.log(30, "graceful timeout: closing remaining connections",
                    connections=len(pool))
            pool.kill(timeout=1)
        done.set()

    def fast() -> None:
        log.access() and log.access().flush()
        os._exit(0)

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(graceful))
    gevent.signal_handler(signal.SIGINT, fast)
    gevent.signal_handler(signal.SIGQUIT, fast)
    gevent.signal_handler(signal.SIGUSR1, log.reopen)

    def heartbeat() -> None:
        ticks = 0
        while not done.is_set():
            spec.scoreboard.beat(spec.entry, os.getpid(), spec.generation,
                                 time.monotonic(), len(pool))
            access = log.access()
            if access is not None:
                access.maybe_flush()
            if metrics is not None:
                metrics.flush()
            ticks += 1
            if ticks % 10 == 0:
                services.pool.purge()
            if os.getppid() != spec.master_pid and not state["stopping"]:
                log.log(40, "master is gone; stopping")
                gevent.spawn(graceful)
            gevent.sleep(HEARTBEAT)

    gevent.spawn(heartbeat)
    profile = _start_profile()
    os.write(spec.notify_fd, b"ready %d %d\n" % (os.getpid(), spec.generation))
    done.wait()
    if profile is not None:
        profile.disable()
        profile.dump_stats(f"{os.environ['QPXD_PROFILE']}.{os.getpid()}")
    services.pool.close_all()
    if metrics is not None:
        metrics.flush()
    access = log.access()
    if access is not None:
        access.flush()
    sys.stdout.flush()
    return 0
