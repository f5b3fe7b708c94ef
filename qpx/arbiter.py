"""The master process: sockets, workers, signals, reload.  It never imports gevent.

Modelled on gunicorn's arbiter: signal handlers only queue the signal (and
``signal.set_wakeup_fd`` wakes the ``select`` loop); the loop dispatches each queued
signal to ``handle_<name>``.  The master

- validates and compiles the configuration before binding anything (``cli`` did it for
  the first start; ``handle_hup`` does it again on every reload);
- owns every listening socket (:mod:`qpx.listeners`) for its whole life;
- forks generations of workers; a worker reports ``ready`` over a pipe and beats a
  heartbeat into the :mod:`qpx.scoreboard`; a dead worker is respawned with back-off, a
  silent one is killed and respawned, and a slot whose worker dies within 1 s of start
  five times in a row stops the master with an error instead of spinning.

Reload (HUP), as DESIGN.md's table: validate → bind new listeners (abort on failure) →
fork generation G+1 → wait until every new worker is ready (roll back on death or
timeout) → gracefully stop generation G → close listeners no longer configured.  A
configuration that fails validation is logged with every error and changes nothing.
TTIN/TTOU change the worker count with the same generation roll, so the sockets of a
removed worker are remapped, never orphaned.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import sys
import time
from dataclasses import dataclass

from . import log, sdnotify
from .affinity import cpu_plan
from .config import ConfigError, load_config
from .config.model import Config
from .inspection import ensure_ca
from .listeners import BindError, SocketRegistry, raise_nofile
from .pidfile import PidFile, PidFileBusy
from .policy import Policy, compile_config
from .scoreboard import RELOADING, RUNNING, STARTING, STOPPING, Scoreboard
from .upgrade import Upgrade, UpgradeSignals, report_ready

monotonic = time.monotonic

READY_TIMEOUT = 30.0
QUICK_DEATH = 1.0
QUICK_DEATH_LIMIT = 5
MAX_WORKERS = 256  # the schema's cap on worker_threads; the scoreboard fits a full roll
SIGNALS = {
    signal.SIGHUP: "hup", signal.SIGTERM: "term", signal.SIGINT: "int",
    signal.SIGQUIT: "quit", signal.SIGUSR1: "usr1", signal.SIGTTIN: "ttin",
    signal.SIGTTOU: "ttou", signal.SIGCHLD: "chld", signal.SIGUSR2: "usr2",
}
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


@dataclass
class WorkerInfo:
    pid: int
    index: int
    generation: int
    entry: int
    started: float
    ready: bool = False
    kill_at: float = 0.0  # draining: SIGKILL after this (0 = serving)
    killed: bool = False  # SIGKILLed as hung: waiting to be reaped


def endpoints(cfg: Config) -> list[tuple[str, str, object]]:
    """(kind, name, address) for everything that listens."""
    out: list[tuple[str, str, object]] = [("listener", l.name, l.listen) for l in cfg.listeners]
    out += [("reverse", r.name, r.listen) for r in cfg.reverse]
    if cfg.metrics is not None:
        out.append(("metrics", "metrics", cfg.metrics.listen))
    return out


def _worker_failed(index: int, e: BaseException) -> None:
    """One line naming the cause for the operator; the traceback only at debug level
    (it is for us, not for them)."""
    if isinstance(e, OSError) and e.strerror:
        cause = e.strerror + (f": {e.filename}" if e.filename else "")
    else:
        cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    log.log(logging.CRITICAL, "worker failed", worker=index, error=cause)
    log.logger.debug("worker failure traceback", exc_info=True)


class Arbiter(UpgradeSignals):
    def __init__(self, files: list[str], cfg: Config, policy: Policy,
                 pidfile: str | None = None):
        self.files = files
        self.cfg = cfg
        self.policy = policy
        self.pidfile = pidfile
        self.pidlock = PidFile(pidfile or "")
        self.registry = SocketRegistry()
        self.scoreboard = Scoreboard()
        self.workers: dict[int, WorkerInfo] = {}
        self.generation = 0
        self.num_workers = cfg.runtime.workers()
        self.sig_queue: list[int] = []
        self.stopping = False
        self.exit_code = 0
        self.exit_reason = ""
        self.respawn_at: dict[int, float] = {}
        self.quick_deaths: dict[int, int] = {}
        self.pid = os.getpid()
        self.metrics = None
        self._wake_r = self._wake_w = self._notify_r = self._notify_w = -1
        self._ready: set[int] = set()
        self.upgrade: Upgrade | None = None  # a USR2 upgrade in flight (old master)
        self.handed_over = False  # the new master serves: we drain and exit
        self._handoff = -1  # new master: the pipe to tell the old one we are ready

    # ------------------------------------------------------------------ start

    def run(self) -> int:
        cfg = self.cfg
        log.setup(cfg.logging.level, cfg.logging.format, cfg.logging.error_log, "master")
        try:
            from setproctitle import setproctitle

            setproctitle(f"qpxd: master -c {' -c '.join(self.files)}")
        except ImportError:  # pragma: no cover
            pass
        self._setup_metrics_dir()
        raise_nofile()
        if self.pidfile:
            try:
                self.pidlock.acquire(self.pid)
            except (PidFileBusy, OSError) as e:
                log.log(logging.ERROR, f"cannot start: {e}")
                return 1
        self._adopt_inherited(cfg)
        try:
            self._bind(cfg, self.num_workers)
        except BindError as e:
            log.log(logging.ERROR, str(e))
            self.pidlock.release()
            return 1
        self._setup_signals()
        self.scoreboard.set_master(STARTING, self.num_workers)
        if not self._roll(cfg, self.policy, self.num_workers, "start"):
            log.log(logging.ERROR, "workers failed to start; exiting")
            self._stop_all(signal.SIGKILL)
            self._cleanup()
            return 1
        self.scoreboard.set_master(RUNNING, self.num_workers)
        sdnotify.notify("READY=1", f"STATUS=serving with {self.num_workers} workers")
        addrs = ", ".join(f"{k}:{n}={a}" for k, n, a in endpoints(cfg))
        log.log(logging.INFO, "qpxd ready", workers=self.num_workers,
                acceptors=cfg.runtime.acceptors(), listen=addrs)
        if self._handoff >= 0:
            report_ready(self._handoff, self.pid)
            self._handoff = -1
        try:
            self._loop()
        finally:
            self._cleanup()
        return self.exit_code

    def _setup_metrics_dir(self) -> None:
        """Every process writes its metrics to files in one directory (prometheus_client
        multiprocess mode); it must exist before the first worker forks, and before a
        reload could turn metrics on, so it is made at start whatever the config says."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from .metrics_dir import make_dir

            make_dir()
        from .metrics import MasterMetrics

        self.metrics = MasterMetrics(self.cfg.identity.metrics_prefix)

    def _setup_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._notify_r, self._notify_w = os.pipe()
        os.set_blocking(self._notify_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, sig, frame) -> None:
        # A burst of CHLDs collapses into one reap; a flood of HUP/TTIN is capped; a
        # stop signal is never dropped.
        queue = self.sig_queue
        if sig == signal.SIGCHLD and sig in queue:
            return
        if len(queue) >= 32 and sig not in STOP_SIGNALS:
            return
        queue.append(sig)

    def _bind(self, cfg: Config, workers: int) -> None:
        rt = cfg.runtime
        if not rt.reuse_port and rt.acceptors() > 1:
            log.log(logging.WARNING, "reuse_port is off: every address gets one socket "
                    "shared by all workers (acceptors collapse to one per worker)")
        self.registry.prepare([(f"{k} {n!r}", a) for k, n, a in endpoints(cfg)], workers,
                              rt.acceptors(), rt.reuse_port, rt.tcp_backlog)

    # ------------------------------------------------------------------ workers

    def _spawn(self, index: int, generation: int, cfg: Config, policy: Policy,
               workers: int) -> int:
        from .worker import Endpoint, WorkerSpec

        entry = self.scoreboard.allocate()
        groups = self.registry.groups
        eps = [Endpoint(kind, name, groups[self.registry.key(addr)].slice(index, workers))
               for kind, name, addr in endpoints(cfg)]
        cpus = cpu_plan(cfg)
        own = {(self.registry.key(a)[0], a.port) for _, _, a in endpoints(cfg)}
        spec = WorkerSpec(
            index=index, generation=generation, entry=entry, config=cfg, policy=policy,
            endpoints=eps, scoreboard=self.scoreboard, notify_fd=self._notify_w,
            master_pid=self.pid,
            close_fds=self.registry.fds() | {self._wake_r, self._wake_w, self._notify_r,
                                             self._handoff} - {-1},
            cpu=cpus[index % len(cpus)] if cpus else None, own_addresses=own)
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything alive now (the compiled config above all: 10 000 rules are ~10^5
        # objects) goes to the permanent generation for the child: its collections
        # never traverse them again, and their pages stay shared with the master.
        # (10 000 rules: 287k instead of 303k instructions per request, as with one
        # rule: bench/hotpath.py under callgrind.)  The master
        # unfreezes at once, so the configurations it replaces stay collectable.  The
        # callers collect first (once per roll or respawn: 17-30 ms at 10 000 rules), so
        # garbage such as a replaced config's cycles is not frozen into a worker, which
        # could never free it.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            self.scoreboard.release(entry)
            raise
        if pid:
            gc.unfreeze()
        if pid == 0:  # the worker
            code = 1
            try:
                from .worker import run_worker

                code = run_worker(spec)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:
                _worker_failed(index, e)
            finally:
                os._exit(code)
        self.workers[pid] = WorkerInfo(pid, index, generation, entry, monotonic())
        if spec.cpu is not None:
            log.log(logging.INFO, "worker pinned", worker=index, pid=pid, cpu=spec.cpu)
        return pid

    def _wait_ready(self, pids: list[int], timeout: float) -> str | None:
        """None when every pid reported ready; else why not."""
        deadline = monotonic() + timeout
        pending = set(pids)
        while True:
            pending -= self._ready
            if not pending:
                return None
            if self._stop_queued():
                return "a stop signal arrived"
            dead = [p for p in pending if p not in self.workers]
            if dead:
                return f"worker pid {dead[0]} exited during start"
            left = deadline - monotonic()
            if left <= 0:
                return f"{len(pending)} worker(s) not ready after {timeout:.0f}s"
            self._sleep(min(left, 0.5))
            self._reap(starting=set(pending))

    def _roll(self, cfg: Config, policy: Policy, workers: int, reason: str) -> bool:
        """Start a new generation with ``workers`` workers; retire the old one."""
        t0 = monotonic()
        before = self.registry.snapshot()
        try:
            self._bind(cfg, workers)
        except BindError as e:
            log.log(logging.ERROR, f"{reason} aborted: {e}; still serving the previous "
                    "configuration")
            return False
        old = [w for w in self.workers.values() if not w.kill_at]
        generation = self.generation + 1
        new: list[int] = []
        try:
            gc.collect()
            for i in range(workers):
                new.append(self._spawn(i, generation, cfg, policy, workers))
            why = self._wait_ready(new, READY_TIMEOUT)
        except Exception as e:  # fork failed (EAGAIN, ENOMEM), scoreboard full, ...
            why = f"cannot start worker {len(new)}: {e}"
        if why is not None:
            for pid in new:
                self._kill(pid, signal.SIGKILL)
            self._reap_blocking(new, 5.0)
            if self.generation:
                self.registry.rollback(before)
            tail = "; still serving the previous configuration" if self.generation else ""
            log.log(logging.ERROR, f"{reason} failed: {why}{tail}", generation=generation)
            return False
        self.generation = generation
        self.cfg, self.policy, self.num_workers = cfg, policy, workers
        if self.metrics is not None:
            self.metrics.workers.set(workers)
        self.respawn_at.clear()
        self.quick_deaths.clear()
        grace = cfg.runtime.graceful_timeout_ms / 1000.0
        for w in old:
            w.kill_at = monotonic() + grace + 5.0
            self._kill(w.pid, signal.SIGTERM)
        closed = self.registry.close_except([a for _, _, a in endpoints(cfg)])
        log.log(logging.INFO, f"{reason} complete", generation=generation, workers=workers,
                took_ms=round((monotonic() - t0) * 1000, 1),
                closed=[str(a) for a in closed] or None)
        return True

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self, starting: set[int] | None = None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.upgrade is not None and pid == self.upgrade.pid:
                self._upgrade_failed(self.upgrade.exited(status))
                continue
            info = self.workers.pop(pid, None)
            if info is None:
                continue
            self.scoreboard.release(info.entry)
            if self.metrics is not None:
                self.metrics.process_dead(pid)
            self._ready.discard(pid)
            self._exited(info, status, starting or set())

    def _reap_blocking(self, pids: list[int], timeout: float) -> None:
        deadline = monotonic() + timeout
        while any(p in self.workers for p in pids) and monotonic() < deadline:
            self._sleep(0.05)
            self._reap(starting=set(pids))

    def _stop_queued(self) -> bool:
        return any(s in STOP_SIGNALS for s in self.sig_queue)

    def _exited(self, info: WorkerInfo, status: int, starting: set[int]) -> None:
        code = os.waitstatus_to_exitcode(status)
        lived = monotonic() - info.started
        # A stop signal still in the queue counts as stopping: a signal sent to the whole
        # process group (Ctrl-C, systemd's control-group kill, make's propagation) can
        # end the workers before the master has dispatched its own copy.
        if info.kill_at or self.stopping or info.pid in starting or self._stop_queued():
            log.log(logging.DEBUG, "worker exited", pid=info.pid, worker=info.index,
                    generation=info.generation, code=code)
            return
        if info.generation != self.generation or info.index >= self.num_workers:
            return
        # A failed start: dead within a second, or never ready (hung before serving).
        failed = lived < QUICK_DEATH or not info.ready
        n = self.quick_deaths.get(info.index, 0) + 1 if failed else 0
        self.quick_deaths[info.index] = n
        if n >= QUICK_DEATH_LIMIT:
            how = f"died within {QUICK_DEATH:.0f}s of start" if lived < QUICK_DEATH else \
                "never got ready"
            self.exit_reason = f"worker {info.index} {how} {n} times in a row " \
                f"(last exit code {code})"
            log.log(logging.CRITICAL, f"{self.exit_reason}; stopping")
            self.exit_code = 1
            self.handle_term()
            return
        delay = min(0.1 * (2 ** (n - 1)), 5.0) if n else 0.0
        self.respawn_at[info.index] = monotonic() + delay
        log.log(logging.WARNING, "worker died; respawning", pid=info.pid, worker=info.index,
                code=code, lived_s=round(lived, 3), delay_s=delay)

    def _respawn_due(self) -> None:
        now = monotonic()
        for index, when in list(self.respawn_at.items()):
            if when <= now and not self.stopping:
                del self.respawn_at[index]
                try:
                    gc.collect()
                    self._spawn(index, self.generation, self.cfg, self.policy,
                                self.num_workers)
                except Exception as e:  # fork failed: try again, the master stays up
                    log.log(logging.ERROR, "cannot respawn worker; retrying in 1s",
                            worker=index, error=str(e))
                    self.respawn_at[index] = now + 1.0
                    continue
                if self.metrics is not None:
                    self.metrics.restarts.inc()

    def _check_heartbeats(self) -> None:
        now = monotonic()
        limit = self.cfg.runtime.worker_timeout_ms / 1000.0
        for w in list(self.workers.values()):
            if w.kill_at:
                if now > w.kill_at:
                    log.log(logging.WARNING, "worker did not stop in time; killing",
                            pid=w.pid, worker=w.index)
                    self._kill(w.pid, signal.SIGKILL)
                    w.kill_at = now + 3600
                continue
            if w.killed:  # already SIGKILLed (one log line, one kill): wait for the reap
                continue
            if not w.ready:
                # a respawned worker that never reports ready (hung importing, blocked
                # on a file) is killed like a silent one, and respawned with back-off
                if now - w.started > limit:
                    log.log(logging.ERROR, "worker not ready in time; killing", pid=w.pid,
                            worker=w.index, waited_s=round(now - w.started, 1))
                    self._kill(w.pid, signal.SIGKILL)
                    w.killed = True
                continue
            beat = self.scoreboard.last_beat(w.entry)
            if beat and now - beat > limit:
                log.log(logging.ERROR, "worker heartbeat lost; killing", pid=w.pid,
                        worker=w.index, silent_s=round(now - beat, 1))
                self._kill(w.pid, signal.SIGKILL)
                w.killed = True

    def _stop_all(self, sig: int) -> None:
        for pid in list(self.workers):
            self._kill(pid, sig)

    # ------------------------------------------------------------------ loop

    def _sleep(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_r, self._notify_r], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        if self._notify_r in ready:
            self._read_notifications()

    def _read_notifications(self) -> None:
        try:
            data = os.read(self._notify_r, 65536)
        except BlockingIOError:
            return
        for line in data.split(b"\n"):
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"ready":
                pid = int(parts[1])
                self._ready.add(pid)
                if pid in self.workers:
                    self.workers[pid].ready = True

    def _loop(self) -> None:
        while True:
            self._sleep(1.0)
            self._reap()
            while self.sig_queue:
                sig = self.sig_queue.pop(0)
                getattr(self, f"handle_{SIGNALS[sig]}")()
            if self.stopping:
                if not self.workers:
                    return
            else:
                self._respawn_due()
            self._check_heartbeats()
            if self.upgrade is not None and not self.handed_over:
                self._poll_upgrade()
            log.flush_pending()
            dropped = log.report_drops()
            if self.metrics is not None:
                if dropped:
                    self.metrics.log_dropped.inc(dropped)
                self.metrics.process.update(monotonic())

    # ------------------------------------------------------------------ signals

    def handle_chld(self) -> None:
        self._reap()

    def handle_hup(self) -> None:
        if self.stopping:
            return
        log.log(logging.INFO, "reloading configuration", files=self.files)
        sdnotify.notify("RELOADING=1")
        self.scoreboard.set_master(RELOADING, self.num_workers)
        try:
            try:
                cfg, warnings = load_config(self.files)
                policy = compile_config(cfg)
                ensure_ca(policy)  # a reload may turn TLS inspection on
            except (ConfigError, OSError, ValueError) as e:
                if not isinstance(e, ConfigError):
                    e = ConfigError([f"TLS inspection CA: {e}"])
                for issue in e.issues:
                    log.log(logging.ERROR, f"config error: {issue}")
                log.log(logging.ERROR, "reload aborted: the configuration is invalid; still "
                        "serving the previous one", errors=len(e.issues))
                self._count_reload("invalid")
                return
            for w in warnings:
                log.log(logging.WARNING, f"config warning: {w}")
            if (cfg.logging.level, cfg.logging.format, cfg.logging.error_log) != \
                    (self.cfg.logging.level, self.cfg.logging.format, self.cfg.logging.error_log):
                log.setup(cfg.logging.level, cfg.logging.format, cfg.logging.error_log, "master")
            ok = self._roll(cfg, policy, cfg.runtime.workers(), "reload")
            self._count_reload("ok" if ok else "failed")
        finally:
            if not self.stopping:
                self.scoreboard.set_master(RUNNING, self.num_workers)
                sdnotify.notify("READY=1")

    def _count_reload(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.reloads.labels(result).inc()

    def handle_term(self) -> None:
        if self.stopping:
            return
        log.log(logging.INFO, "graceful stop", workers=len(self.workers))
        self.stopping = True
        if not self.handed_over:  # else systemd's main PID is the new master now
            sdnotify.notify("STOPPING=1")
        self.scoreboard.set_master(STOPPING, 0)
        self.respawn_at.clear()
        grace = self.cfg.runtime.graceful_timeout_ms / 1000.0
        for w in self.workers.values():
            w.kill_at = min(w.kill_at or float("inf"), monotonic() + grace + 5.0)
        self._stop_all(signal.SIGTERM)
        self.registry.close_all()

    def handle_int(self) -> None:
        log.log(logging.INFO, "fast stop", workers=len(self.workers))
        self.stopping = True
        sdnotify.notify("STOPPING=1")
        self.scoreboard.set_master(STOPPING, 0)
        self.respawn_at.clear()
        for w in self.workers.values():
            w.kill_at = monotonic() + 2.0
        self._stop_all(signal.SIGQUIT)
        self.registry.close_all()

    handle_quit = handle_int

    def handle_usr1(self) -> None:
        log.reopen()
        self._stop_all(signal.SIGUSR1)

    def handle_ttin(self) -> None:
        if self.stopping:
            return
        if self.num_workers >= MAX_WORKERS:
            log.log(logging.WARNING, f"resize refused: already at {MAX_WORKERS} workers")
            return
        self._roll(self.cfg, self.policy, self.num_workers + 1, "resize")

    def handle_ttou(self) -> None:
        if not self.stopping and self.num_workers > 1:
            self._roll(self.cfg, self.policy, self.num_workers - 1, "resize")

    # ------------------------------------------------------------------ end

    def _cleanup(self) -> None:
        self.registry.close_all()
        self.pidlock.release()
        mdir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        if mdir and os.path.basename(mdir).startswith("qpxd-metrics-"):
            import shutil

            shutil.rmtree(mdir, ignore_errors=True)
        if self.exit_code:
            log.log(logging.ERROR, "qpxd stopped", code=self.exit_code,
                    reason=self.exit_reason or "error")
        else:
            log.log(logging.INFO, "qpxd stopped", code=0)
