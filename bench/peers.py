"""The processes a benchmark runs: qpxd and its peers, each on loopback, each stopped
by PID.  Every peer is configured like qpxd for the run: one worker/thread, no access
log, no cache, keep-alive on both sides, and pinned by ``taskset`` when a CPU is given.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return (["taskset", "-c", str(cpu)] + cmd) if cpu is not None else cmd


def tree(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / ticks


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Peer:
    name = "peer"

    def __init__(self, workdir: Path, cpu: int | None):
        self.dir = workdir / self.name.replace(" ", "-").replace("/", "-")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cpu = cpu
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    env: dict | None = None  # extra environment variables

    def start(self) -> "Peer":
        log = open(self.dir / "stderr.log", "ab")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(pinned(self.command(), self.cpu), stdout=log, stderr=log,
                                     cwd=self.dir, start_new_session=True, env=env)
        wait_port(self.port)
        time.sleep(0.3)
        return self

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = self.pids()
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None


class NginxOrigin(Peer):
    """The origin: static objects from nginx (C, one worker) on the load generator's CPU."""

    name = "nginx-origin"

    def __init__(self, workdir: Path, cpu: int | None):
        super().__init__(workdir, cpu)
        self.port_b = free_port()
        www = self.dir / "www"
        www.mkdir(exist_ok=True)
        (www / "100b").write_bytes(b"x" * 99 + b"\n")
        (www / "1m").write_bytes(os.urandom(1 << 20))
        (self.dir / "nginx.conf").write_text(f"""
user root; daemon off; worker_processes 1; pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log; worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {self.dir}/tmp; proxy_temp_path {self.dir}/tmp;
  fastcgi_temp_path {self.dir}/tmp; uwsgi_temp_path {self.dir}/tmp; scgi_temp_path {self.dir}/tmp;
  default_type text/plain;
  server {{ listen 127.0.0.1:{self.port} reuseport; root {www};
           location = /who {{ return 200 "origin-a\\n"; }} }}
  server {{ listen 127.0.0.1:{self.port_b}; root {www};
           location = /who {{ return 200 "origin-b\\n"; }} }}
}}
""")
        (self.dir / "tmp").mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return ["nginx", "-c", str(self.dir / "nginx.conf")]


class Qpxd(Peer):
    name = "qpxd"

    def __init__(self, workdir: Path, cpu: int | None, *, mode: str = "forward",
                 origin_port: int = 0, workers: int = 1, acceptors: int = 1,
                 rules: list | None = None, label: str | None = None,
                 metrics: bool = False, root: Path = ROOT, env: dict | None = None,
                 tls: tuple[Path, Path] | None = None, inspect: bool = False):
        self.name = label or "qpxd"
        self.root = root  # the source tree to run (an A/B run compares two)
        self.env = env
        super().__init__(workdir, cpu)
        self.metrics_port = free_port() if metrics else None
        rt = {"worker_threads": workers, "acceptor_tasks_per_listener": acceptors,
              "tcp_backlog": 4096}
        cfg: dict = {"version": 1, "runtime": rt,
                     "logging": {"level": "warning", "format": "text", "access_log": None}}
        if mode == "forward":
            cfg["listeners"] = [{
                "name": "fwd", "mode": "forward", "listen": f"127.0.0.1:{self.port}",
                "default_action": {"type": "block"}, "allow_local_destinations": True,
                "connect_ports": [],
                "rules": (rules or []) + [{"name": "loopback",
                                           "match": {"src_ip": ["127.0.0.0/8"]},
                                           "action": {"type": "inspect" if inspect
                                                      else "direct"}}]}]
            if inspect:  # the CA lands in state_dir; origins are not verified here
                cfg["state_dir"] = str(self.dir / "state")
                cfg["listeners"][0]["tls_inspection"] = {"enabled": True,
                                                         "verify_upstream": False}
        else:
            cfg["reverse"] = [{"name": "rev", "listen": f"127.0.0.1:{self.port}",
                               "routes": [{"match": {},
                                           "upstreams": [f"http://127.0.0.1:{origin_port}"]}]}]
            if tls is not None:
                cfg["reverse"][0]["tls"] = {"certificates": [
                    {"sni": "bench.test", "cert": str(tls[0]), "key": str(tls[1]),
                     "default": True}]}
        if self.metrics_port:
            cfg["metrics"] = {"listen": f"127.0.0.1:{self.metrics_port}"}
        (self.dir / "qpx.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    def command(self) -> list[str]:
        return [sys.executable, str(self.root / "qpxd.py"), "-c", str(self.dir / "qpx.yaml")]

    def workers(self) -> list[int]:
        return [p for p in self.pids() if p != self.proc.pid]


class Squid(Peer):
    name = "squid"

    def __init__(self, workdir: Path, cpu: int | None):
        super().__init__(workdir, cpu)
        os.chmod(self.dir, 0o777)
        (self.dir / "squid.conf").write_text(f"""
http_port 127.0.0.1:{self.port}
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_log {self.dir}/cache.log
pid_filename {self.dir}/squid.pid
coredump_dir {self.dir}
workers 1
shutdown_lifetime 0 seconds
forwarded_for delete
max_filedescriptors 20000
""")

    def command(self) -> list[str]:
        return ["squid", "-N", "-f", str(self.dir / "squid.conf")]


class Tinyproxy(Peer):
    name = "tinyproxy"

    def __init__(self, workdir: Path, cpu: int | None):
        super().__init__(workdir, cpu)
        (self.dir / "tinyproxy.conf").write_text(
            f"Port {self.port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 200\n"
            f"Allow 127.0.0.1\nLogLevel Critical\nPidFile \"{self.dir}/tp.pid\"\n"
            "DisableViaHeader Yes\n")

    def command(self) -> list[str]:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        return [binary, "-d", "-c", str(self.dir / "tinyproxy.conf")]


class ProxyPy(Peer):
    name = "proxy.py"

    def __init__(self, workdir: Path, cpu: int | None, python: str):
        super().__init__(workdir, cpu)
        self.python = python

    def command(self) -> list[str]:
        return [self.python, "-m", "proxy", "--hostname", "127.0.0.1", "--port",
                str(self.port), "--num-workers", "1", "--num-acceptors", "1",
                "--log-level", "ERROR"]


class NginxReverse(Peer):
    name = "nginx"

    def __init__(self, workdir: Path, cpu: int | None, origin_port: int, workers: int = 1,
                 tls: tuple[Path, Path] | None = None, label: str | None = None,
                 http2: bool = False):
        self.name = label or ("nginx" if workers == 1 else f"nginx {workers}w")
        super().__init__(workdir, cpu)
        ssl = "" if tls is None else (f" ssl{' http2' if http2 else ''}; "
                                      f"ssl_certificate {tls[0]}; "
                                      f"ssl_certificate_key {tls[1]}; "
                                      "ssl_protocols TLSv1.2 TLSv1.3")
        (self.dir / "tmp").mkdir(exist_ok=True)
        (self.dir / "nginx.conf").write_text(f"""
user root; daemon off; worker_processes {workers}; pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log; worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
  access_log off; keepalive_requests 1000000;
  client_body_temp_path {self.dir}/tmp; proxy_temp_path {self.dir}/tmp;
  fastcgi_temp_path {self.dir}/tmp; uwsgi_temp_path {self.dir}/tmp; scgi_temp_path {self.dir}/tmp;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{self.port}{ssl};
           location / {{ proxy_pass http://origin; proxy_http_version 1.1;
                         proxy_set_header Connection ""; }} }}
}}
""")

    def command(self) -> list[str]:
        return ["nginx", "-c", str(self.dir / "nginx.conf")]


class HaproxyReverse(Peer):
    name = "haproxy"

    def __init__(self, workdir: Path, cpu: int | None, origin_port: int, threads: int = 1,
                 tls: tuple[Path, Path] | None = None):
        self.name = "haproxy" if threads == 1 else f"haproxy {threads}t"
        super().__init__(workdir, cpu)
        ssl = ""
        if tls is not None:
            bundle = self.dir / "bundle.pem"
            bundle.write_text(tls[0].read_text() + tls[1].read_text())
            ssl = f" ssl crt {bundle}"
        (self.dir / "haproxy.cfg").write_text(f"""
global
  nbthread {threads}
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{self.port}{ssl}
  default_backend be
backend be
  server origin 127.0.0.1:{origin_port}
""")

    def command(self) -> list[str]:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return [binary, "-db", "-f", str(self.dir / "haproxy.cfg")]
