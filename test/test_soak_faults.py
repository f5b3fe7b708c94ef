"""Mixed-fault soak (``make soak``, issue 16): slow uploads, origins that answer early, a
USR1 while the error log's directory is gone, a stdout nobody reads, and workers killed
— all at once, for a bounded time, against one reverse listener with one upstream that
is ejected after a single failure.

What must hold: no request fails except those in flight on a worker at the moment it was
killed; every answer is the origin's answer to that request; the upstream is never
ejected (no 503, ``qpx_upstream_healthy`` stays 1): none of these faults is the
upstream's.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time

import pytest
import yaml
from conftest import DEFAULTS, QPXD, free_port, merge, raw_request, reverse_config
from servers import _Server, read_http_message

DURATION = 40.0


class EarlyOrigin(_Server):
    """Answers ``/early`` with 413 + close right after the head (the body unread);
    everything else with 200 naming the request line and the body length."""

    def _serve(self, conn: socket.socket, peer) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                line = buf.split(b"\r\n", 1)[0]
                if b" /early" in line:
                    conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n"
                                 b"Connection: close\r\n\r\nearly")
                    return
                msg = read_http_message(conn, buf, lambda d: None)
                if msg is None:
                    return
                head, body, buf = msg
                payload = b"%s len=%d" % (head.split(b"\r\n")[0], len(body))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(payload), payload))
        except OSError:
            return
        finally:
            conn.close()


def read_one(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError
        body += chunk
    return int(head[9:12]), body[:n]


@pytest.mark.slow
def test_mixed_faults_lose_no_answer_and_eject_no_upstream(tmp_path):
    o = EarlyOrigin()
    port, mport = free_port(), free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = merge(DEFAULTS, {
        **reverse_config(port, [{"match": {}, "upstreams": [f"http://127.0.0.1:{o.port}"],
                                 "timeout_ms": 1000,
                                 "health_check": {"fail_threshold": 1, "cooldown_ms": 60000}}]),
        "runtime": {"worker_threads": 2, "client_body_timeout_ms": 2000},
        "logging": {"access_log": "-", "error_log": str(logs / "error.log")},
        "metrics": {"listen": f"127.0.0.1:{mport}"}})
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(QPXD + ["-c", str(tmp_path / "q.yaml")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)  # stdout never read
    failures: list[str] = []
    kills: list[float] = []
    counts = {"ok": 0, "early": 0, "slow": 0, "cut": 0}
    lock = threading.Lock()
    stop = time.monotonic() + DURATION
    try:
        deadline = time.monotonic() + 20
        errlog = logs / "error.log"
        while not (errlog.exists() and b"qpxd ready" in errlog.read_bytes()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)

        def note(kind: str, started: float, problem: str | None) -> None:
            with lock:
                if problem is None:
                    counts[kind] += 1
                elif any(started - 0.5 <= k <= time.monotonic() for k in kills):
                    counts["cut"] += 1  # in flight on a worker killed meanwhile
                else:
                    failures.append(f"{kind}: {problem}")

        def gets(n: int) -> None:
            i = 0
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                        for _ in range(20):
                            i += 1
                            s.sendall(b"GET /g%d/%d HTTP/1.1\r\nHost: svc\r\n\r\n" % (n, i))
                            code, body = read_one(s)
                            want = b"GET /g%d/%d HTTP/1.1 len=0" % (n, i)
                            if code != 200 or body != want:
                                note("ok", started, f"{code} {body[:80]!r}")
                                break
                            note("ok", started, None)
                            started = time.monotonic()
                except (OSError, EOFError) as e:
                    note("ok", started, repr(e))

        def slow_uploads() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                        s.sendall(b"POST /slow HTTP/1.1\r\nHost: svc\r\n"
                                  b"Content-Length: 2000\r\n\r\n")
                        for _ in range(8):  # 1.6 s: past the 1 s upstream timeout
                            time.sleep(0.2)
                            s.sendall(b"s" * 250)
                        code, body = read_one(s)
                        note("slow", started, None if code == 200 and body.endswith(
                            b"len=2000") else f"{code} {body[:80]!r}")
                except (OSError, EOFError) as e:
                    note("slow", started, repr(e))

        def early_answers() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                        s.sendall(b"POST /early HTTP/1.1\r\nHost: svc\r\n"
                                  b"Content-Length: 4000000\r\n\r\n")
                        sender = threading.Thread(target=lambda: _send_quietly(s, 4000000),
                                                  daemon=True)
                        sender.start()
                        code, body = read_one(s)
                        note("early", started, None if code == 413 and body == b"early"
                             else f"{code} {body[:80]!r}")
                except (OSError, EOFError) as e:
                    note("early", started, repr(e))
                time.sleep(0.1)

        def faults() -> None:
            rnd = random.Random(16)
            n = 0
            while time.monotonic() < stop - 3:
                time.sleep(2.0)
                n += 1
                if n % 2:  # USR1 while the log directory is gone, then back
                    logs.rename(tmp_path / "logs.moved")
                    proc.send_signal(signal.SIGUSR1)
                    time.sleep(0.5)
                    (tmp_path / "logs.moved").rename(logs)
                    proc.send_signal(signal.SIGUSR1)
                else:  # a worker dies
                    pids = _children(proc.pid)
                    if pids:
                        with lock:
                            kills.append(time.monotonic())
                        os.kill(rnd.choice(pids), signal.SIGKILL)

        threads = [threading.Thread(target=gets, args=(k,)) for k in range(4)]
        threads += [threading.Thread(target=slow_uploads) for _ in range(2)]
        threads += [threading.Thread(target=early_answers), threading.Thread(target=faults)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DURATION + 30)
        assert proc.poll() is None, "the daemon stopped"
        metrics = raw_request(mport, b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n").decode()
        healthy = [ln for ln in metrics.splitlines() if ln.startswith("qpx_upstream_healthy")]
        assert healthy and all(ln.endswith(" 1.0") for ln in healthy), healthy
        print(f"mixed-fault soak: {counts}, worker kills: {len(kills)}")
        assert not failures, f"{len(failures)} failed ({counts}): {failures[:10]}"
        assert counts["ok"] > 1000 and counts["slow"] > 10 and counts["early"] > 10, counts
        dropped = [ln for ln in metrics.splitlines()
                   if ln.startswith("qpx_log_lines_dropped_total")]
        assert dropped and float(dropped[0].split()[-1]) > 0, dropped
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.stdout.close()
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        o.close()


def _send_quietly(s: socket.socket, n: int) -> None:
    try:
        s.sendall(b"e" * n)
    except OSError:
        pass


def _children(pid: int) -> list[int]:
    from conftest import children

    return children(pid)
