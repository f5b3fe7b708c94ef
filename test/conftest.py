"""Test harness: start the real qpxd as a subprocess on free loopback ports.

``qpxd(config)`` writes the configuration (a dict, merged over test-friendly defaults) to
a temporary file, starts ``qpxd.py -c FILE``, waits for the master's "qpxd ready" log
line, and at the end of the test stops it by PID (TERM, then KILL for anything left,
workers included).  Origins and echo servers come from ``servers.py``.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from servers import Echo, Origin, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QPXD = [sys.executable, str(ROOT / "qpxd.py")]
SHARED = ROOT.parent / "shared"
DATA = Path(__file__).resolve().parent / "data"

DEFAULTS = {
    "version": 1,
    "runtime": {"worker_threads": 1, "acceptor_tasks_per_listener": 1,
                "graceful_timeout_ms": 5000},
    "logging": {"level": "info", "format": "json"},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except OSError:
        return False


class Daemon:
    def __init__(self, tmp: Path, config: dict, name: str = "qpxd", env: dict | None = None,
                 args: list[str] | None = None, defaults: bool = True):
        self.defaults = defaults
        self.tmp = tmp
        self.config = config
        self.path = tmp / f"{name}.yaml"
        self.errlog = tmp / f"{name}.err"
        self.outlog = tmp / f"{name}.out"
        self.access = tmp / f"{name}.access"
        self.env = env
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.preexec = None  # run in the child before exec (limits, ...)
        self.known_pids: set[int] = set()
        self.write(config)

    def write(self, config: dict) -> None:
        self.config = config
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, wait: bool = True, timeout: float = 20.0) -> "Daemon":
        env = dict(os.environ)
        env.update(self.env or {})
        env.pop("NOTIFY_SOCKET", None)
        self._err = open(self.errlog, "ab")
        self._out = open(self.outlog, "ab")
        self.proc = subprocess.Popen(QPXD + ["-c", str(self.path)] + self.args,
                                     stdout=self._out, stderr=self._err, env=env,
                                     cwd=self.tmp, preexec_fn=self.preexec)
        self.known_pids.add(self.proc.pid)
        if wait:
            self.wait_log("qpxd ready", timeout)
            self.known_pids.update(self.workers())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.errlog.read_text(errors="replace") if self.errlog.exists() else ""

    def out(self) -> str:
        return self.outlog.read_text(errors="replace") if self.outlog.exists() else ""

    def wait_log(self, text: str, timeout: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"qpxd exited with {self.proc.returncode} waiting for "
                                     f"{text!r}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the log after {timeout}s:\n{self.log()}")

    def workers(self) -> list[int]:
        pids = children(self.pid)
        self.known_pids.update(pids)
        return pids

    def kill(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def reload(self, config: dict | None = None, timeout: float = 20.0) -> None:
        if config is not None:
            self.write(merge(DEFAULTS, config) if self.defaults else config)
        n = self.log().count("reload complete") + self.log().count("reload aborted") + \
            self.log().count("reload failed")
        self.kill(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count("reload complete") + log.count("reload aborted") + \
                    log.count("reload failed") > n:
                self.known_pids.update(self.workers())
                return
            time.sleep(0.05)
        raise AssertionError(f"reload did not finish:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        self.known_pids.update(self.workers())
        if self.proc.poll() is None:
            try:
                self.kill(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.known_pids:
            if pid != self.proc.pid and alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._err.close()
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def qpxd(tmp_path):
    """Factory: ``qpxd(config_dict, start=True)`` → a running :class:`Daemon`."""
    started: list[Daemon] = []

    def make(config: dict, *, start: bool = True, name: str = "qpxd", defaults: bool = True,
             **kw) -> Daemon:
        cfg = merge(DEFAULTS, config) if defaults else config
        d = Daemon(tmp_path, cfg, name=f"{name}{len(started) or ''}", defaults=defaults, **kw)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def origin():
    servers: list[Origin] = []

    def make(name: str = "o", host: str = "127.0.0.1", port: int = 0,
             delay: float = 0.0) -> Origin:
        o = Origin(name, host, port, delay)
        servers.append(o)
        return o

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def echo():
    servers: list[Echo] = []

    def make(host: str = "127.0.0.1") -> Echo:
        e = Echo(host)
        servers.append(e)
        return e

    yield make
    for s in servers:
        s.close()


def forward_config(port: int, rules: list | None = None, **listener) -> dict:
    """A forward listener on ``port`` that allows loopback clients directly."""
    lst = {
        "name": "fwd", "mode": "forward", "listen": f"127.0.0.1:{port}",
        "default_action": {"type": "block"}, "allow_local_destinations": True,
        "rules": rules if rules is not None else [
            {"name": "loopback", "match": {"src_ip": ["127.0.0.0/8"]},
             "action": {"type": "direct"}}],
    }
    lst.update(listener)
    return {"listeners": [lst]}


def reverse_config(port: int, routes: list, **reverse) -> dict:
    rv = {"name": "rev", "listen": f"127.0.0.1:{port}", "routes": routes}
    rv.update(reverse)
    return {"reverse": [rv]}


def raw_request(port: int, data: bytes, *, host: str = "127.0.0.1", timeout: float = 5.0,
                read_all: bool = True, source: str | None = None) -> bytes:
    """Send ``data`` on a fresh connection and return everything read until the server
    closes (or ``timeout``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if not read_all:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def have(tool: str) -> bool:
    return shutil.which(tool) is not None or os.path.exists(f"/usr/sbin/{tool}")


__all__ = ["DATA", "Daemon", "forward_config", "reverse_config", "free_port", "raw_request", "have", "ROOT", "SHARED"]
