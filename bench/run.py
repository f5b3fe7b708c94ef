"""``make bench``: qpxd beside the proxies a user would pick instead, in one run.

Layout (2-core box): the proxy under test on CPU 0; wrk, the bulk client and the nginx
origin on CPU 1 — the same for every peer.  Each figure is the median of ``--runs``
runs (default 5) of ``--seconds`` (default 5) with min–max, the peers of a section
measured round-robin (run 1 of each, run 2 of each, ...) so drift hits all alike;
ratios are against peers measured in the same run.  Writes docs/benchmarks.md and
docs/benchmarks.json.

    python bench/run.py [--runs 5] [--seconds 5] [--only forward,connect,...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import (ROOT, HaproxyReverse, NginxOrigin, NginxReverse, ProxyPy, Qpxd,  # noqa
                   Squid, Tinyproxy, cpu_seconds, free_port, rss_kb)

LOAD_CPU, PROXY_CPU = 1, 0
SECTIONS = ("engine", "forward", "browser", "connect", "get1m", "reverse", "tls", "h2",
            "inspect", "scaling", "spread", "rules", "memory")


def units(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000.0 if unit == "us" else value if unit == "ms" else value * 1000.0


def wrk(url: str, seconds: float, *, script: bool, env: dict | None = None,
        connections: int = 50, cpu: int | None = LOAD_CPU,
        headers: tuple[str, ...] = ()) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", str(ROOT / "bench" / "lua" / "forward.lua")]
    cmd.append(url)
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    try:
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env={**os.environ, **(env or {})}, timeout=seconds + 30)
        out = r.stdout
    except subprocess.TimeoutExpired as e:
        out, r = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or ""), None
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99_m = re.search(r"99%\s+(\d[\d.]*(?:us|ms|s))", out)
    if rps_m is None or p99_m is None:  # wrk failed: a zero row that says why
        why = (out + (r.stderr if r is not None else "timed out"))[-300:]
        return {"rps": 0.0, "p99_ms": 0.0, "errors": -1, "non2xx": 0, "failed": why}
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    mb_s = 0.0
    if m := re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out):
        mb_s = float(m.group(1)) * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0,
                                    "GB": 1024.0}[m.group(2)]
    return {"rps": float(rps_m.group(1)), "p99_ms": units(p99_m.group(1)), "errors": errors,
            "non2xx": non2xx, "mb_s": mb_s}


def syscalls_per_request(peer, load) -> dict | None:
    """System calls per request of ``peer``'s processes (``strace -c -f`` attached for one
    short ``load()`` run): the total and the five most frequent, per request."""
    if not shutil.which("strace"):
        return None
    pids = peer.pids()
    out = peer.dir / "strace.txt"
    cmd = ["strace", "-c", "-f", "-o", str(out)]
    for pid in pids:
        cmd += ["-p", str(pid)]
    tracer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = load()
    tracer.send_signal(2)
    tracer.wait(30)
    requests = r["rps"] * 2
    if not requests or not out.exists():
        return None
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit() and not line.startswith("100.00"):
            calls[parts[-1]] = int(parts[3])
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:5]
    return {"per_request": total / requests,
            "top": {k: round(v / requests, 2) for k, v in top}}


def full_handshakes(port: int, seconds: float, procs: int = 3,
                    cpu: int | None = LOAD_CPU) -> dict:
    """Full TLS handshakes per second (``openssl s_time -new``: no session is resumed),
    ``procs`` clients in parallel, each fetching /100b once per connection."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
           "-time", f"{max(1, round(seconds))}", "-www", "/100b"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    t0 = time.monotonic()
    running = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True) for _ in range(procs)]
    total = 0
    for p in running:
        out, _ = p.communicate(timeout=seconds + 60)
        m = re.search(r"(\d+) connections in [\d.]+s;", out)
        total += int(m.group(1)) if m else 0
    wall = time.monotonic() - t0
    return {"rps": total / wall, "p99_ms": 0.0, "errors": 0, "non2xx": 0, "mb_s": 0.0}


def h2load(url: str, seconds: float, connections: int, streams: int,
           cpu: int | None = LOAD_CPU) -> dict:
    """HTTP/2 requests per second with h2load (``connections`` × ``streams``)."""
    cmd = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", "-D", f"{seconds:g}", url]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", r.stdout)
    ok = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", r.stdout)
    if rps is None or ok is None:
        return {"rps": 0.0, "p99_ms": 0.0, "errors": -1, "non2xx": 0, "mb_s": 0.0,
                "failed": (r.stdout + r.stderr)[-300:]}
    return {"rps": float(rps.group(1)), "p99_ms": 0.0,
            "errors": int(ok.group(2)) + int(ok.group(3)), "non2xx": 0, "mb_s": 0.0}


def bulk(mode: str, origin: int, seconds: float, proxy: int | None = None) -> dict:
    cmd = ["taskset", "-c", str(LOAD_CPU), sys.executable, str(ROOT / "bench" / "bulk.py"),
           mode, str(origin), str(seconds)] + ([str(proxy)] if proxy else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    if r.returncode != 0:
        return {"mb_s": 0.0, "error": r.stderr.strip()[-300:]}
    return json.loads(r.stdout)


def correctness_gate(proxy_port: int, origin: NginxOrigin) -> bool:
    """Two requests on one keep-alive connection to two origins reach their own origin."""
    try:
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as s:
            answers = []
            for port in (origin.port, origin.port_b):
                s.sendall(b"GET http://127.0.0.1:%d/who HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                          % (port, port))
                data = b""
                while not (data.endswith(b"origin-a\n") or data.endswith(b"origin-b\n")):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                answers.append(data[-9:])
            return answers == [b"origin-a\n", b"origin-b\n"]
    except OSError:
        return False


def summarize(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="qpxd-bench-"))
        self.results: dict = {"sections": {}}
        self.origin = NginxOrigin(self.work, LOAD_CPU)

    def repeat(self, fn) -> list[dict]:
        return [fn() for _ in range(self.args.runs)]

    def run_peer(self, peer, fn, **meta) -> dict:
        row = {"peer": peer.name, **meta}
        try:
            peer.start()
        except Exception as e:  # noqa: BLE001 - a peer that cannot start is reported
            row["unavailable"] = str(e)[:200]
            peer.stop()
            return row
        try:
            row.update(fn(peer))
        finally:
            peer.stop()
        return row

    def interleaved(self, entries: list, once, prepare=None) -> list[dict]:
        """Run ``once(peer)`` for every peer, round-robin, ``--runs`` times: all peers
        are started first (idle ones cost nothing), so slow drift of this shared machine
        hits every peer alike instead of whichever was measured last.  ``entries`` are
        peers, or (peer, meta) pairs; ``prepare(peer)`` may add fields (the gate) once;
        a ``None`` peer is the direct-to-origin row."""
        rows, live = [], []
        try:
            for entry in entries:
                peer, meta = entry if isinstance(entry, tuple) else (entry, {})
                row = {"peer": peer.name if peer is not None else "direct to origin",
                       **meta, "runs": []}
                rows.append(row)
                if peer is not None:
                    try:
                        peer.start()
                    except Exception as e:  # noqa: BLE001 - reported, not fatal
                        row["unavailable"] = str(e)[:200]
                        del row["runs"]
                        peer.stop()
                        continue
                live.append((peer, row))  # stopped below, whatever happens next
                if peer is not None and prepare is not None:
                    row.update(prepare(peer))
            for _ in range(self.args.runs):
                for peer, row in live:
                    if "unavailable" in row:
                        continue
                    try:
                        row["runs"].append(once(peer))
                    except Exception as e:  # noqa: BLE001 - this peer's row only
                        row["unavailable"] = f"a run failed: {e}"[:200]
                        del row["runs"]
        finally:
            for peer, _ in live:
                if peer is not None:
                    peer.stop()
        return rows

    # ------------------------------------------------------------------ sections

    def forward_peers(self):
        peers = [Qpxd(self.work, PROXY_CPU), Squid(self.work, PROXY_CPU),
                 Tinyproxy(self.work, PROXY_CPU)]
        python = self.proxypy_python()
        if python:
            peers.append(ProxyPy(self.work, PROXY_CPU, python))
        return peers

    def proxypy_python(self) -> str | None:
        venv = ROOT / ".bench" / "proxypy"
        py = venv / "bin" / "python"
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "proxy.py"],
                           capture_output=True, check=False)
        ok = subprocess.run([str(py), "-c", "import proxy"], capture_output=True)
        return str(py) if ok.returncode == 0 else None

    def section_engine(self) -> list[dict]:
        """The rule engine alone (bench/bench_rules.py): µs per complete match."""
        out = self.work / "rules.json"
        cmd = ["taskset", "-c", str(PROXY_CPU), sys.executable,
               str(ROOT / "bench" / "bench_rules.py"), "--json", str(out)]
        if self.args.quick:
            cmd += ["--sizes", "10,1000,10000", "--repeats", "3"]
        subprocess.run(cmd, capture_output=True, timeout=900)
        return json.loads(out.read_text()) if out.exists() else [{"unavailable": True}]

    def section_forward(self, browser: bool = False) -> list[dict]:
        env = {"ORIGIN": f"127.0.0.1:{self.origin.port}", "OBJ": "/100b",
               "BROWSER": "1" if browser else "0"}
        secs = self.args.seconds
        peers = [p for p in self.forward_peers()
                 if not browser or p.name in ("qpxd", "squid")]

        def once(p):
            if p is None:
                return wrk(f"http://127.0.0.1:{self.origin.port}/100b", secs, script=False)
            pids = p.pids()
            c0 = cpu_seconds(pids)
            r = wrk(f"http://127.0.0.1:{p.port}/", secs, script=True, env=env)
            r["cpu_us"] = (cpu_seconds(pids) - c0) * 1e6 / max(r["rps"] * secs, 1)
            return r

        def prepare(p):
            out = {"gate": correctness_gate(p.port, self.origin)}
            if not browser:  # system calls per request: strace -c on a short run
                out["syscalls"] = syscalls_per_request(
                    p, lambda: wrk(f"http://127.0.0.1:{p.port}/", 2, script=True, env=env))
            return out
        rows = self.interleaved([None] + peers, once, prepare=prepare)
        for row in rows:
            if "runs" in row:
                row["rps"] = summarize(row["runs"], "rps")
                row["p99_ms"] = summarize(row["runs"], "p99_ms")
                if row["peer"] != "direct to origin":
                    row["cpu_us"] = summarize(row["runs"], "cpu_us")
        return rows

    def section_bulk(self, mode: str) -> list[dict]:
        secs = self.args.seconds

        def once(p):
            if p is None:
                return bulk("direct", self.origin.port, secs)
            pids = p.pids()
            c0 = cpu_seconds(pids)
            r = bulk(mode, self.origin.port, secs, p.port)
            mib = r.get("bytes", 0) / (1 << 20)
            r["cpu_us"] = (cpu_seconds(pids) - c0) * 1e6 / max(mib, 1e-9)
            return r
        rows = self.interleaved([None, Qpxd(self.work, PROXY_CPU), Squid(self.work, PROXY_CPU)],
                                once)
        for row in rows:
            if "runs" in row:
                row["mb_s"] = summarize(row["runs"], "mb_s")
                if row["peer"] != "direct to origin":
                    row["cpu_us"] = summarize(row["runs"], "cpu_us")
        return rows

    def section_reverse(self) -> list[dict]:
        secs = self.args.seconds
        o = self.origin.port
        pinned = [Qpxd(self.work, PROXY_CPU, mode="reverse", origin_port=o, label="qpxd"),
                  NginxReverse(self.work, PROXY_CPU, o), HaproxyReverse(self.work, PROXY_CPU, o)]
        floating = [Qpxd(self.work, None, mode="reverse", origin_port=o, workers=2,
                         acceptors=1, label="qpxd 2w"),
                    NginxReverse(self.work, None, o, workers=2),
                    HaproxyReverse(self.work, None, o, threads=2)]

        def once(p):
            pids = p.pids()
            c0 = cpu_seconds(pids)
            r = wrk(f"http://127.0.0.1:{p.port}/100b", secs, script=False,
                    cpu=LOAD_CPU if p.cpu is not None else None)
            r["cpu_s"] = cpu_seconds(pids) - c0
            r["req_per_cpu_s"] = r["rps"] * secs / max(r["cpu_s"], 1e-9)
            return r
        def prepare(p):
            return {"syscalls": syscalls_per_request(
                p, lambda: wrk(f"http://127.0.0.1:{p.port}/100b", 2, script=False))}
        rows = self.interleaved(pinned, once, prepare=prepare) + \
            self.interleaved(floating, once)
        for row in rows:
            if "runs" in row:
                for r in row["runs"]:
                    r["cpu_us"] = 1e6 / max(r["req_per_cpu_s"], 1e-9)
                for key in ("rps", "p99_ms", "req_per_cpu_s", "cpu_us"):
                    row[key] = summarize(row["runs"], key)
        return rows

    def section_tls(self) -> list[dict]:
        """TLS termination on the reverse edge, one worker each, pinned: full handshakes
        (openssl s_time -new) and resumed ones (wrk with ``Connection: close``: wrk
        resumes its session) per key type; keep-alive requests and 1 MiB downloads
        against nginx and qpxd's own cleartext listener."""
        from certs import make_cert

        secs = self.args.seconds
        o = self.origin.port
        certs = {k: make_cert(self.work / "certs", k) for k in ("ecdsa", "rsa")}

        def measured(p, url: str, full: bool = False, **kw) -> dict:
            pids = p.pids()
            c0 = cpu_seconds(pids)
            r = full_handshakes(p.port, secs) if full else wrk(url, secs, script=False, **kw)
            r["cpu_s"] = cpu_seconds(pids) - c0
            r["req_per_cpu_s"] = r["rps"] * secs / max(r["cpu_s"], 1e-9)
            return r

        rows = []
        for kind, (cert, key) in certs.items():
            peers = [Qpxd(self.work, PROXY_CPU, mode="reverse", origin_port=o,
                          tls=(cert, key)),
                     NginxReverse(self.work, PROXY_CPU, o, tls=(cert, key)),
                     HaproxyReverse(self.work, PROXY_CPU, o, tls=(cert, key))]
            part = self.interleaved(peers, lambda p: measured(p, "", full=True))
            rows += [{**r, "test": "full handshakes", "key": kind} for r in part]
            part = self.interleaved(peers, lambda p: measured(
                p, f"https://127.0.0.1:{p.port}/100b", headers=("Connection: close",)))
            rows += [{**r, "test": "resumed handshakes", "key": kind} for r in part]
        cert, key = certs["ecdsa"]
        peers = [Qpxd(self.work, PROXY_CPU, mode="reverse", origin_port=o, tls=(cert, key),
                      label="qpxd tls"),
                 Qpxd(self.work, PROXY_CPU, mode="reverse", origin_port=o,
                      label="qpxd cleartext"),
                 NginxReverse(self.work, PROXY_CPU, o, tls=(cert, key), label="nginx tls")]

        def keepalive(p):
            scheme = "http" if p.name == "qpxd cleartext" else "https"
            r = measured(p, f"{scheme}://127.0.0.1:{p.port}/100b")
            big = wrk(f"{scheme}://127.0.0.1:{p.port}/1m", secs, script=False,
                      connections=4)
            r["mb_s"] = big["mb_s"]
            return r
        rows += [{**r, "test": "keepalive", "key": "ecdsa"}
                 for r in self.interleaved(peers, keepalive)]
        for row in rows:
            if "runs" in row:
                for k in ("rps", "p99_ms", "req_per_cpu_s", "mb_s"):
                    row[k] = summarize(row["runs"], k)
        return rows

    def section_h2(self) -> list[dict]:
        """HTTP/2 on the reverse edge (TLS, ALPN h2), one worker each, pinned: h2load with
        1 connection x 100 streams and 50 connections x 10 streams against nginx's
        HTTP/2 reverse proxy on the same upstream, and qpxd's own HTTP/1.1 keep-alive."""
        from certs import make_cert

        secs = self.args.seconds
        o = self.origin.port
        cert = make_cert(self.work / "certs-h2", "ecdsa")
        rows = []
        for conns, streams in ((1, 100), (50, 10)):
            peers = [Qpxd(self.work, PROXY_CPU, mode="reverse", origin_port=o, tls=cert),
                     NginxReverse(self.work, PROXY_CPU, o, tls=cert, http2=True)]

            def once(p, conns=conns, streams=streams):
                pids = p.pids()
                c0 = cpu_seconds(pids)
                r = h2load(f"https://127.0.0.1:{p.port}/100b", secs, conns, streams)
                r["cpu_s"] = cpu_seconds(pids) - c0
                r["req_per_cpu_s"] = r["rps"] * secs / max(r["cpu_s"], 1e-9)
                return r
            rows += [{**r, "test": f"h2 {conns}x{streams}"}
                     for r in self.interleaved(peers, once)]
        h1 = Qpxd(self.work, PROXY_CPU, mode="reverse", origin_port=o, tls=cert,
                  label="qpxd http/1.1")

        def once_h1(p):
            pids = p.pids()
            c0 = cpu_seconds(pids)
            r = wrk(f"https://127.0.0.1:{p.port}/100b", secs, script=False)
            r["cpu_s"] = cpu_seconds(pids) - c0
            r["req_per_cpu_s"] = r["rps"] * secs / max(r["cpu_s"], 1e-9)
            return r
        rows += [{**r, "test": "http/1.1 keep-alive (wrk -c50)"}
                 for r in self.interleaved([h1], once_h1)]
        for row in rows:
            if "runs" in row:
                for k in ("rps", "req_per_cpu_s"):
                    row[k] = summarize(row["runs"], k)
        return rows

    def section_inspect(self) -> list[dict]:
        """TLS inspection: HTTPS keep-alive requests decrypted by a forward qpxd (TLS to the
        client and to an nginx TLS front of the origin) against qpxd's TLS-terminating
        reverse edge, with the same Python client; compared per qpxd CPU-second (the
        client, one Python process, limits req/s for both)."""
        from certs import make_cert

        secs = self.args.seconds
        o = self.origin.port
        cert = make_cert(self.work / "certs-inspect", "ecdsa", "localhost")
        front = NginxReverse(self.work, LOAD_CPU, o, tls=cert, label="nginx tls front")
        front.start()
        try:
            peers = [Qpxd(self.work, PROXY_CPU, inspect=True, label="qpxd inspecting"),
                     Qpxd(self.work, PROXY_CPU, mode="reverse", origin_port=o, tls=cert,
                          label="qpxd tls reverse")]

            def once(p):
                pids = p.pids()
                c0 = cpu_seconds(pids)
                if p.name == "qpxd inspecting":
                    args = ["inspect", str(p.port), str(front.port),
                            str(p.dir / "state" / "ca.crt")]
                else:
                    args = ["reverse", str(p.port), "-", "-"]
                r = subprocess.run(["taskset", "-c", str(LOAD_CPU), sys.executable,
                                    str(ROOT / "bench" / "tls_load.py"), *args, str(secs),
                                    "8"], capture_output=True, text=True,
                                   timeout=secs + 60)
                data = json.loads(r.stdout)
                cpu = cpu_seconds(pids) - c0
                return {"rps": data["requests"] / data["seconds"],
                        "req_per_cpu_s": data["requests"] / max(cpu, 1e-9)}
            rows = self.interleaved(peers, once)
        finally:
            front.stop()
        leaf = subprocess.run([sys.executable, str(ROOT / "bench" / "leaf_cost.py")],
                              capture_output=True, text=True, timeout=300).stdout.strip()
        for row in rows:
            if "runs" in row:
                for k in ("rps", "req_per_cpu_s"):
                    row[k] = summarize(row["runs"], k)
        return rows + [{"peer": "leaf certificates", "leaf_cost": leaf}]

    def section_scaling(self) -> list[dict]:
        secs = self.args.seconds
        env = {"ORIGIN": f"127.0.0.1:{self.origin.port}", "OBJ": "/100b"}
        entries = [(Qpxd(self.work, None, workers=w, acceptors=a, label=f"qpxd {w}w x {a}a"),
                    {"workers": w, "acceptors": a}) for w, a in ((1, 1), (2, 1), (2, 2))]
        rows = self.interleaved(entries, lambda p: wrk(f"http://127.0.0.1:{p.port}/", secs,
                                                       script=True, env=env, cpu=None))
        for row in rows:
            if "runs" in row:
                row["rps"] = summarize(row["runs"], "rps")
                row["p99_ms"] = summarize(row["runs"], "p99_ms")
        return rows

    def section_spread(self) -> list[dict]:
        """New connections (Connection: close) over 2 workers with 1 and 4 acceptor
        sockets each: how evenly SO_REUSEPORT spreads them (accepted-connection metrics
        per worker and per socket)."""
        env = {"ORIGIN": f"127.0.0.1:{self.origin.port}", "OBJ": "/100b"}
        rows = []
        for acceptors in (1, 4):
            peer = Qpxd(self.work, None, workers=2, acceptors=acceptors, metrics=True,
                        label=f"qpxd 2w x {acceptors}a")

            def measure(p):
                r = wrk(f"http://127.0.0.1:{p.port}/", min(self.args.seconds, 3), script=True,
                        env={**env, "CLOSE": "1"}, cpu=None)
                time.sleep(1.0)
                per_worker, per_socket = accepted(p.metrics_port)
                return {"rps": r["rps"], "per_worker": per_worker, "per_socket": per_socket}
            rows.append(self.run_peer(peer, measure, acceptors=acceptors))
        return rows

    def section_rules(self) -> list[dict]:
        secs = self.args.seconds
        env = {"ORIGIN": f"127.0.0.1:{self.origin.port}", "OBJ": "/100b"}
        entries = [(Qpxd(self.work, PROXY_CPU, rules=blocklist(n - 1), label=f"qpxd {n} rules"),
                    {"rules": n}) for n in (10, 10000)]
        rows = self.interleaved(entries, lambda p: wrk(f"http://127.0.0.1:{p.port}/", secs,
                                                       script=True, env=env))
        for row in rows:
            if "runs" in row:
                row["rps"] = summarize(row["runs"], "rps")
        return rows

    def section_memory(self) -> list[dict]:
        peer = Qpxd(self.work, PROXY_CPU, label="qpxd memory")

        def measure(p):
            time.sleep(1.0)
            worker = p.workers()[0]
            idle = rss_kb(worker)
            master = rss_kb(p.proc.pid)
            conns = hold_connections(p.port, self.origin.port, self.args.idle_connections)
            time.sleep(1.0)
            loaded = rss_kb(worker)
            for s in conns:
                s.close()
            return {"idle_worker_mb": idle / 1024, "master_mb": master / 1024,
                    "connections": len(conns), "worker_mb_with_conns": loaded / 1024,
                    "total_mb_with_conns": (loaded + master) / 1024}
        return [self.run_peer(peer, measure)]

    # ------------------------------------------------------------------ main

    def run(self) -> dict:
        only = set(self.args.only.split(",")) if self.args.only else set(SECTIONS)
        self.origin.start()
        try:
            plan = [("engine", self.section_engine),
                    ("forward", lambda: self.section_forward()),
                    ("browser", lambda: self.section_forward(browser=True)),
                    ("connect", lambda: self.section_bulk("connect")),
                    ("get1m", lambda: self.section_bulk("get")),
                    ("reverse", self.section_reverse),
                    ("tls", self.section_tls),
                    ("h2", self.section_h2),
                    ("inspect", self.section_inspect),
                    ("scaling", self.section_scaling),
                    ("spread", self.section_spread),
                    ("rules", self.section_rules),
                    ("memory", self.section_memory)]
            partial = ROOT / "bench" / "results" / "partial.json"
            partial.parent.mkdir(parents=True, exist_ok=True)
            for name, fn in plan:
                if name in only:
                    print(f"== {name}", flush=True)
                    t0 = time.monotonic()
                    try:
                        self.results["sections"][name] = fn()
                    except Exception as e:  # noqa: BLE001 - one broken section, not the run
                        import traceback

                        traceback.print_exc()
                        self.results["sections"][name] = {"failed": repr(e)[:300]}
                    print(f"   {time.monotonic() - t0:.0f}s: "
                          + json.dumps(self.results["sections"][name], default=str)[:400],
                          flush=True)
                    partial.write_text(json.dumps(self.results, indent=1, default=str))
        finally:
            self.origin.stop()
            shutil.rmtree(self.work, ignore_errors=True)
        return self.results


def accepted(metrics_port: int) -> tuple[dict, dict]:
    """qpx_connections_accepted_total for the forward listener, by worker and socket."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    per_worker: dict = {}
    per_socket: dict = {}
    for line in text.splitlines():
        m = re.match(r'qpx_connections_accepted_total\{acceptor="(\d+)",listener="fwd",'
                     r'worker="(\d+)"\} ([\d.e+]+)', line)
        if m:
            n = int(float(m.group(3)))
            per_worker[m.group(2)] = per_worker.get(m.group(2), 0) + n
            per_socket[f"w{m.group(2)}/a{m.group(1)}"] = n
    return per_worker, per_socket


def blocklist(n: int) -> list[dict]:
    """A realistic block list: exact hosts and *.suffix hosts, a few CIDRs and ports."""
    rules = []
    for i in range(n):
        if i % 50 == 0:
            match = {"src_ip": [f"10.{i // 256 % 256}.{i % 256}.0/24"]}
        elif i % 3 == 0:
            match = {"host": [f"*.ads{i}.example"]}
        elif i % 97 == 0:
            match = {"dst_port": [20000 + i % 1000], "method": ["POST"]}
        else:
            match = {"host": [f"tracker{i}.example.net"]}
        rules.append({"name": f"block-{i}", "match": match, "action": {"type": "block"}})
    return rules


def hold_connections(port: int, origin: int, n: int) -> list[socket.socket]:
    """``n`` keep-alive client connections, each after one completed request."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = []
    req = b"GET http://127.0.0.1:%d/100b HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (origin, origin)
    for _ in range(min(n, hard - 200)):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 100:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"connection closed: {data[:200]!r}")
            data += chunk
        conns.append(s)
    return conns


def machine() -> dict:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for tool, args in (("squid", ["-v"]), ("nginx", ["-v"]), ("haproxy", ["-v"]),
                       ("tinyproxy", ["-v"]), ("wrk", ["-v"])):
        r = subprocess.run([tool] + args, capture_output=True, text=True)
        text = (r.stdout + r.stderr).strip().splitlines()
        versions[tool] = text[0][:80] if text else "?"
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "versions": versions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default="", help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--idle-connections", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="1 run of 2 s (a smoke test)")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--merge", action="store_true",
                    help="replace only the sections run in OUT/benchmarks.json (the others "
                         "keep their earlier figures; the report names both runs)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds, args.idle_connections = 1, 2.0, 1000
    missing = [t for t in ("wrk", "nginx", "squid", "tinyproxy", "haproxy", "taskset",
                           "h2load")
               if not shutil.which(t)]
    if missing:
        print(f"bench: missing {', '.join(missing)} (make bench installs them as root)",
              file=sys.stderr)
        return 2
    t0 = time.time()
    results = Bench(args).run()
    results["machine"] = machine()
    results["command"] = "make bench" if not (args.only or args.quick or args.runs != 5
                                              or args.seconds != 5) else \
        "python bench/run.py " + " ".join(sys.argv[1:])
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0))
    results["layout"] = (f"proxy under test on CPU {PROXY_CPU}; wrk, bulk client and nginx "
                         f"origin on CPU {LOAD_CPU} (taskset); scaling rows float")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    old = out / "benchmarks.json"
    if args.merge and old.exists():
        earlier = json.loads(old.read_text())
        sections = earlier.get("sections", {})
        sections.update(results["sections"])
        results["sections"] = sections
        results["command"] = (f"{earlier.get('command')} ({earlier.get('date')}), then "
                              f"{results['command']} for {args.only}")
    (out / "benchmarks.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    from report import render

    (out / "benchmarks.md").write_text(render(results))
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
