"""Binary upgrade (USR2) and socket activation, against the live daemon under load.

Every test runs qpxd from a copy of the source tree, so "installing a new version" is
rewriting the copy's ``__version__`` (or breaking it) between upgrades.  After an
upgrade the serving master is no longer the process the test started: it is followed
through the PID file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, alive, free_port, have, raw_request
from load import Load


def copy_tree(dst: Path) -> Path:
    dst.mkdir(parents=True)
    shutil.copytree(ROOT / "qpx", dst / "qpx",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "qpxd.py", dst / "qpxd.py")
    return dst


def set_version(tree: Path, version: str) -> None:
    init = tree / "qpx" / "__init__.py"
    lines = [f'__version__ = "{version}"' if x.startswith("__version__") else x
             for x in init.read_text().splitlines()]
    init.write_text("\n".join(lines) + "\n")


class Upgradable:
    """qpxd run from ``tree`` with a PID file; ``master`` is whoever holds the file."""

    def __init__(self, tmp: Path, tree: Path, cfg: dict):
        self.tmp, self.tree = tmp, tree
        self.cfg = tmp / "qpx.yaml"
        self.pidfile = tmp / "qpxd.pid"
        self.errlog = tmp / "qpxd.err"
        self.write(cfg)
        self._err = open(self.errlog, "ab")
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.proc = subprocess.Popen(
            [sys.executable, str(tree / "qpxd.py"), "-c", str(self.cfg), "--pid",
             str(self.pidfile)], stdout=subprocess.DEVNULL, stderr=self._err, env=env,
            cwd=tmp)
        self.wait_log("qpxd ready")
        self.seen = {self.master()}

    def write(self, cfg: dict) -> None:
        self.cfg.write_text(yaml.safe_dump({"version": 1, **cfg}, sort_keys=False))

    def log(self) -> str:
        return self.errlog.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} x{count} in the log:\n{self.log()}")

    def master(self) -> int:
        return int(self.pidfile.read_text())

    def upgrade(self, timeout: float = 30.0) -> int:
        """USR2, then wait until a new master holds the PID file and the old one is
        gone; returns the new master's PID."""
        old = self.master()
        os.kill(old, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = self.master()
            except (OSError, ValueError):
                pid = old
            if pid != old and not alive(old):
                self.seen.add(pid)
                return pid
            time.sleep(0.05)
        raise AssertionError(f"no upgrade of {old}:\n{self.log()}")

    def stop(self) -> None:
        try:  # whoever holds the PID file now (an upgrade the test did not follow)
            self.seen.add(self.master())
        except (OSError, ValueError):
            pass
        for pid in sorted(self.seen, reverse=True):
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        while any(alive(p) for p in self.seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._err.close()


@pytest.fixture
def upgradable(tmp_path):
    made: list[Upgradable] = []

    def make(cfg: dict) -> Upgradable:
        u = Upgradable(tmp_path, copy_tree(tmp_path / "build"), cfg)
        made.append(u)
        return u
    yield make
    for u in made:
        u.stop()


def forward(port: int, mport: int, workers: int = 2) -> dict:
    return {"runtime": {"worker_threads": workers, "graceful_timeout_ms": 10000},
            "logging": {"format": "text", "access_log": None},
            "metrics": {"listen": f"127.0.0.1:{mport}"},
            "listeners": [{"name": "fwd", "mode": "forward", "listen": f"127.0.0.1:{port}",
                           "default_action": {"type": "direct"},
                           "allow_local_destinations": True}]}


def served_version(mport: int) -> str:
    body = raw_request(mport, b"GET /health HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
    return body.split(b"\r\n\r\n", 1)[1].decode().strip()


def test_ten_upgrades_under_load_lose_nothing(upgradable, origin):
    o = origin()
    port, mport = free_port(), free_port()
    u = upgradable(forward(port, mport))
    assert served_version(mport).startswith("ok qpxd/")
    # a long download in flight on the first generation's workers, read slowly (~3 s)
    import socket
    import threading

    big = socket.create_connection(("127.0.0.1", port), timeout=30)
    big.sendall(b"GET http://%s/size/30000000 HTTP/1.1\r\nHost: %s\r\n\r\n"
                % (o.addr.encode(), o.addr.encode()))
    first = big.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    downloaded = [len(first.split(b"\r\n\r\n", 1)[1])]

    def read_slowly():
        while downloaded[0] < 30000000:
            chunk = big.recv(65536)
            if not chunk:
                return
            downloaded[0] += len(chunk)
            time.sleep(0.005)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    with Load(port, o.addr, keepalive=2, fresh=2, max_seconds=150) as load:
        for i in range(10):
            version = f"0.9.{i}"
            set_version(u.tree, version)
            u.upgrade()
            assert served_version(mport) == f"ok qpxd/{version}"
            metrics = raw_request(mport, b"GET /metrics HTTP/1.1\r\nHost: m\r\n"
                                         b"Connection: close\r\n\r\n").decode()
            assert f'version="{version}"' in metrics
            if i == 0:  # the old master left only when the download was complete
                reader.join(30)
                assert downloaded[0] == 30000000, f"download cut at {downloaded[0]} bytes"
                big.close()
        time.sleep(0.5)
    s = load.stats
    assert s.failures == [], s.failures[:5]
    assert s.ok > 200 and not [k for k in s.statuses if k >= 500]
    log = u.log()
    assert log.count("upgrade complete") == 10 and "Traceback" not in log
    assert not (u.tmp / "qpxd.pid.oldbin").exists()


def test_a_failed_upgrade_leaves_the_old_master_serving(upgradable, origin):
    o = origin()
    port, mport = free_port(), free_port()
    u = upgradable(forward(port, mport))
    old = u.master()
    good = u.cfg.read_text()
    with Load(port, o.addr, keepalive=2, fresh=2, max_seconds=60) as load:
        # 1. a configuration the new master refuses
        u.cfg.write_text(good.replace("mode: forward", "mode: sideways"))
        os.kill(old, signal.SIGUSR2)
        u.wait_log("upgrade failed: the new master exited (exit code 1) before it was ready;"
                   " still serving")
        assert u.master() == old and not (u.tmp / "qpxd.pid.oldbin").exists()
        u.cfg.write_text(good)
        # 2. new code that crashes at import
        init = u.tree / "qpx" / "__init__.py"
        sound = init.read_text()
        init.write_text(sound + "\nimport qpx_module_that_does_not_exist  # noqa\n")
        os.kill(old, signal.SIGUSR2)
        u.wait_log("upgrade failed", count=2)
        init.write_text(sound)
        assert u.master() == old
        # 3. a second USR2 while one is in flight is refused
        set_version(u.tree, "0.9.9")
        os.kill(old, signal.SIGUSR2)
        time.sleep(0.05)
        os.kill(old, signal.SIGUSR2)
        u.wait_log("upgrade refused: one is in flight")
        u.wait_log("upgrade complete")
        time.sleep(0.5)
    assert served_version(mport) == "ok qpxd/0.9.9"
    assert load.stats.failures == [], load.stats.failures[:5]
    assert load.stats.ok > 50


@pytest.mark.skipif(not have("systemd-socket-activate"), reason="needs systemd (apt)")
def test_socket_activation_adopts_passed_sockets_binds_the_rest(tmp_path, origin):
    o = origin()
    passed, unused, bound, mport = (free_port() for _ in range(4))
    cfg = forward(passed, mport)
    cfg["reverse"] = [{"name": "rev", "listen": f"127.0.0.1:{bound}",
                       "routes": [{"match": {}, "upstreams": [f"http://{o.addr}"]}]}]
    path = tmp_path / "qpx.yaml"
    path.write_text(yaml.safe_dump({"version": 1, **cfg}))
    errlog = tmp_path / "err.log"
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{passed}", "-l",
             f"127.0.0.1:{unused}", "--fdname=web:spare", sys.executable,
             str(ROOT / "qpxd.py"), "-c", str(path)], stdout=subprocess.DEVNULL,
            stderr=err)
        try:
            deadline = time.monotonic() + 10
            while f"Listening on 127.0.0.1:{unused}" not in errlog.read_text() and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            # systemd-socket-activate starts qpxd at the first connection: this request
            # waits in the passed socket's queue and is answered by qpxd
            resp = raw_request(passed, b"GET http://%s/first HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n" % o.addr.encode(),
                               timeout=20)
            assert resp.startswith(b"HTTP/1.1 200") and b"GET /first" in resp, resp
            while "qpxd ready" not in errlog.read_text() and time.monotonic() < deadline + 10:
                time.sleep(0.05)
            text = errlog.read_text()
            assert "adopted listening sockets origin=systemd sockets=2" in text
            assert f"passed sockets that no listener uses; closed origin=systemd " \
                   f"addresses=127.0.0.1:{unused}" in text
            with pytest.raises(ConnectionRefusedError):  # closed by qpxd, nobody listens
                raw_request(unused, b"GET / HTTP/1.1\r\n\r\n", timeout=2)
            resp = raw_request(bound, b"GET /bound HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
            assert b"GET /bound" in resp  # configured, not passed: bound as usual
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
