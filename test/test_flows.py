"""Ordinary flows real traffic has (issue 16): slow uploads, origins that answer early,
pooled connections the origin closed, responses cut by a graceful stop, refused bodies,
lingering close, SSRF into the host itself, the loop guard's address forms.

Every test runs the real daemon against real (scripted) origins on loopback, and each
failed on the code before its fix.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from conftest import forward_config, free_port, have, raw_request, reverse_config
from servers import Scripted


def ok(body: bytes, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/") else 0


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """One response (status, head, body) from ``sock``: Content-Length, chunked or
    close-delimited."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed inside the head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    low = head.lower()
    if b"content-length:" in low:
        n = int(low.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("closed inside the body")
            body += chunk
        body = body[:n]
    elif b"transfer-encoding: chunked" in low:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("closed inside the chunked body")
            body += chunk
    elif not head.startswith(b"HTTP/1.1 1") and b" 204 " not in head[:13]:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status(head), head, body


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def get_status(port: int, target: str, host: str) -> int:
    return status(raw_request(port, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                              % (target.encode(), host.encode())))


@pytest.fixture
def scripted():
    made = []

    def make(script):
        o = Scripted(script)
        made.append(o)
        return o
    yield make
    for o in made:
        o.close()


# --------------------------------------------------------------------------- 1. slow uploads


def trickle_post(port: int, target: bytes, host: bytes, size: int, seconds: float,
                 pieces: int = 10) -> tuple[int, bytes]:
    with connect(port) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
                  % (target, host, size))
        piece = size // pieces
        for i in range(pieces):
            time.sleep(seconds / pieces)
            s.sendall(b"u" * (piece if i < pieces - 1 else size - piece * (pieces - 1)))
        code, _, body = read_response(s)
        return code, body


def test_a_slow_upload_does_not_count_against_the_upstream_timeout(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(reverse_config(port, [{"match": {}, "upstreams": [f"http://{o.addr}"],
                                "timeout_ms": 1000,
                                "health_check": {"fail_threshold": 1, "cooldown_ms": 60000}}]))
    code, body = trickle_post(port, b"/upload", b"svc", 10240, 2.5)
    assert code == 200, body
    assert b"body-length: 10240" in body
    # and the only upstream is still in service
    for _ in range(3):
        assert get_status(port, "/after", "svc") == 200


def test_forward_slow_upload_within_the_body_timeout_is_answered(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd({**forward_config(port), "runtime": {"upstream_http_timeout_ms": 1000}})
    code, body = trickle_post(port, f"http://{o.addr}/up".encode(), o.addr.encode(), 4000, 2.0)
    assert code == 200 and b"body-length: 4000" in body


def test_a_client_that_stalls_its_body_does_not_eject_the_upstream(qpxd, origin):
    o = origin()
    port = free_port()
    d = qpxd({**reverse_config(port, [{"match": {}, "upstreams": [f"http://{o.addr}"],
                                       "health_check": {"fail_threshold": 1,
                                                        "cooldown_ms": 60000}}]),
              "runtime": {"client_body_timeout_ms": 500}})
    with connect(port) as s:
        s.sendall(b"POST /stall HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\n0123")
        s.settimeout(5)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert get_status(port, "/after", "svc") == 200
    time.sleep(1.0)  # the access log flushes every 0.5 s
    assert '"status":499' in d.out() or '"status":408' in d.out()


# --------------------------------------------------------------------------- 2. early answers


def answer_early(conn, n, srv):
    """Connection 0: answer 413 after the head and close; later ones: normal."""
    if n == 0:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
                     b"Connection: close\r\n\r\ntoo large")
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
        return  # closed: later body bytes get a reset
    msg = srv.read_request(conn)
    while msg is not None:
        conn.sendall(ok(b"fine"))
        msg = srv.read_request(conn, msg[2])


@pytest.mark.parametrize("expect", [False, True])
def test_an_early_final_response_reaches_the_client(qpxd, scripted, expect):
    o = scripted(answer_early)
    port = free_port()
    qpxd(reverse_config(port, [{"match": {}, "upstreams": [f"http://127.0.0.1:{o.port}"],
                                "health_check": {"fail_threshold": 1, "cooldown_ms": 60000}}]))
    size = 8 << 20
    with connect(port) as s:
        head = b"POST /big HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n" % size
        s.sendall(head + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")

        def send_body():
            try:
                s.sendall(b"b" * size)
            except OSError:
                pass
        t = threading.Thread(target=send_body, daemon=True)
        t.start()
        code, resp_head, body = read_response(s)
        if code == 100:
            code, resp_head, body = read_response(s)
    assert code == 413, resp_head
    assert body == b"too large"
    assert get_status(port, "/next", "svc") == 200  # the upstream was not ejected


# --------------------------------------------------------------------------- 3. stale pool


def close_soon_after(conn, n, srv):
    """Answer one request with Content-Length and no Connection: close, then close."""
    msg = srv.read_request(conn)
    if msg is None:
        return
    conn.sendall(ok(b"first"))
    if n == 0:
        time.sleep(0.05)
        return
    while msg is not None:
        msg = srv.read_request(conn, msg[2])
        if msg is not None:
            conn.sendall(ok(b"len %d" % len(msg[1])))
            # later requests of this connection are answered too


def test_a_streaming_post_after_the_origin_closed_the_pooled_connection(qpxd, scripted):
    o = scripted(close_soon_after)
    port = free_port()
    qpxd(forward_config(port))
    url = b"http://127.0.0.1:%d" % o.port
    with connect(port) as s:
        s.sendall(b"GET %s/a HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (url, o.port))
        assert read_response(s)[0] == 200
        time.sleep(0.3)  # the origin closed its side meanwhile
        s.sendall(b"POST %s/b HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 1000\r\n\r\n"
                  % (url, o.port) + b"p" * 100)
        time.sleep(0.3)  # the body is still arriving
        s.sendall(b"p" * 900)
        code, _, body = read_response(s)
    assert code == 200, body
    assert o.requests[-1][1] == b"p" * 1000


# --------------------------------------------------------------------------- 4. graceful cut


def endless_close_delimited(conn, n, srv):
    if srv.read_request(conn) is None:
        return
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    try:
        while True:
            conn.sendall(b"x" * 1000)
            time.sleep(0.05)
    except OSError:
        pass


def test_a_close_delimited_response_cut_by_the_graceful_timeout_is_reset(qpxd, scripted):
    o = scripted(endless_close_delimited)
    port = free_port()
    d = qpxd({**forward_config(port), "runtime": {"graceful_timeout_ms": 1000}})
    with connect(port) as s:
        s.sendall(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % o.port)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        d.kill(signal.SIGTERM)
        s.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass


# --------------------------------------------------------------------------- 5/6. logs


def test_usr1_with_an_unopenable_log_path_keeps_serving(qpxd, origin, tmp_path):
    o = origin()
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    d = qpxd({**forward_config(port), "runtime": {"worker_threads": 2},
              "logging": {"access_log": str(logs / "access.log")}})
    url = f"http://{o.addr}/one"
    assert get_status(port, url, o.addr) == 200
    logs.rename(tmp_path / "logs.old")
    for _ in range(3):  # a log rotation gone wrong, retried by a script
        d.kill(signal.SIGUSR1)
        time.sleep(0.3)
    for _ in range(10):
        assert get_status(port, url, o.addr) == 200
    time.sleep(1.5)
    assert d.proc.poll() is None
    assert "cannot reopen the access log" in d.log()
    assert "Traceback" not in d.log()
    logs.mkdir()
    d.kill(signal.SIGUSR1)
    time.sleep(0.5)
    assert get_status(port, f"http://{o.addr}/two", o.addr) == 200
    time.sleep(1.5)  # the access log flushes every 0.5 s
    assert "/two" in (logs / "access.log").read_text()


def test_a_stalled_stdout_reader_never_stops_service(tmp_path, origin):
    """access_log: "-" into a pipe nobody reads: requests keep being answered, dropped
    lines are counted and said."""
    import yaml
    from conftest import DEFAULTS, QPXD, merge

    o = origin()
    port, mport = free_port(), free_port()
    cfg = merge(DEFAULTS, {**forward_config(port), "logging": {"access_log": "-"},
                           "metrics": {"listen": f"127.0.0.1:{mport}"}})
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg))
    err = open(tmp_path / "err", "wb")
    proc = subprocess.Popen(QPXD + ["-c", str(tmp_path / "q.yaml")], stdout=subprocess.PIPE,
                            stderr=err, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while b"qpxd ready" not in (tmp_path / "err").read_bytes():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        url = f"http://{o.addr}/" + "p" * 300
        t0 = time.monotonic()
        with connect(port) as s:
            for _ in range(3000):  # ~1.2 MB of access log into a 64 KiB pipe
                s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (url.encode(),
                                                                    o.addr.encode()))
                assert read_response(s, timeout=5)[0] == 200
        assert time.monotonic() - t0 < 60
        time.sleep(1.2)
        metrics = raw_request(mport, b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n").decode()
        dropped = [line for line in metrics.splitlines()
                   if line.startswith("qpx_log_lines_dropped_total")]
        assert dropped and float(dropped[0].split()[-1]) > 0, dropped
        assert b"log lines dropped" in (tmp_path / "err").read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.stdout.close()
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        err.close()


# --------------------------------------------------------------------------- 7/12a. upstream heads


def answer_with(head: bytes):
    def script(conn, n, srv):
        if srv.read_request(conn) is not None:
            conn.sendall(head)
            time.sleep(0.5)
    return script


@pytest.mark.parametrize("line", [b"HTTP/1.1 099 Odd\r\n", b"HTTP/1.1 000 Zero\r\n",
                                  b"HTTP/1.1 600 Big\r\n", b"HTTP/1.1 999 Big\r\n"])
def test_status_codes_outside_100_599_are_refused(qpxd, scripted, line):
    o = scripted(answer_with(line + b"Content-Length: 2\r\n\r\nok"))
    port = free_port()
    qpxd(forward_config(port))
    assert get_status(port, f"http://127.0.0.1:{o.port}/", "x") == 502


def test_a_response_head_over_the_limit_is_refused_even_when_it_completes_in_one_read(
        qpxd, scripted):
    big = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000)
                                              for i in range(70)) + b"Content-Length: 2\r\n\r\nok"

    def script(conn, n, srv):
        if srv.read_request(conn) is not None:
            conn.sendall(big[:30000])  # the first read stays under the limit,
            time.sleep(0.2)
            conn.sendall(big[30000:])  # the second completes the head past it
            time.sleep(0.5)
    o = scripted(script)
    port = free_port()
    qpxd({**forward_config(port), "runtime": {"max_header_bytes": 32768}})
    assert get_status(port, f"http://127.0.0.1:{o.port}/", "x") == 502


# --------------------------------------------------------------------------- 8. underscores


def test_header_names_with_underscores_are_refused(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(forward_config(port))
    resp = raw_request(port, b"POST http://%s/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 4\r\n"
                             b"Transfer_Encoding: chunked\r\n\r\nbody" % (o.addr.encode(),
                                                                         o.addr.encode()))
    assert status(resp) == 400 and b"underscore" in resp.split(b"\r\n\r\n", 1)[1]
    assert o.received == b""
    # a value with an underscore is fine
    assert get_status(port, f"http://{o.addr}/a_b", o.addr) == 200


def test_underscores_in_header_names_can_be_allowed(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(forward_config(port, underscores_in_headers=True))
    resp = raw_request(port, b"GET http://%s/ HTTP/1.1\r\nHost: %s\r\nX_Custom: 1\r\n"
                             b"Connection: close\r\n\r\n" % (o.addr.encode(), o.addr.encode()))
    assert status(resp) == 200 and b"X_Custom: 1" in o.requests[-1][0]


# --------------------------------------------------------------------------- 9. body limit


def test_a_content_length_over_the_limit_gets_413_before_any_byte_goes_upstream(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(forward_config(port, max_request_body_bytes=1000))
    resp = raw_request(port, b"POST http://%s/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 1001\r\n"
                             b"\r\n" % (o.addr.encode(), o.addr.encode()) + b"x" * 1001)
    assert status(resp) == 413
    assert o.received == b""
    resp = raw_request(port, b"POST http://%s/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000\r\n"
                             b"Connection: close\r\n\r\n" % (o.addr.encode(), o.addr.encode())
                       + b"x" * 1000)
    assert status(resp) == 200


def test_a_chunked_body_crossing_the_limit_gets_413(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd({**reverse_config(port, [{"match": {}, "upstreams": [f"http://{o.addr}"]}],
                           max_request_body_bytes=1000)})
    # all at once: refused before anything goes upstream
    resp = raw_request(port, b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3e9\r\n" + b"c" * 1001 + b"\r\n0\r\n\r\n")
    assert status(resp) == 413 and o.received == b""
    # streamed: the upstream request is aborted, the client still learns why
    with connect(port) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"200\r\n" + b"c" * 512 + b"\r\n")
        time.sleep(0.3)
        try:
            s.sendall(b"200\r\n" + b"c" * 512 + b"\r\n0\r\n\r\n")
            code = read_response(s)[0]
        except (ConnectionResetError, BrokenPipeError, EOFError):
            code = -1  # a reset is allowed once bytes went upstream
    assert code in (413, -1)
    assert not o.requests, "the origin must not see a complete request"


# --------------------------------------------------------------------------- 10. lingering


def test_an_error_answer_survives_unread_client_bytes(qpxd, origin):
    """400 for a bad head followed by a large body: qpxd half-closes and drains instead
    of closing on unread bytes (which sends RST and can destroy the answer)."""
    o = origin()
    port = free_port()
    qpxd(forward_config(port))
    with connect(port) as s:
        s.sendall(b"POST http://%s/ HTTP/1.1\r\nHost: %s\r\nBad Header: x\r\n"
                  b"Content-Length: 40000\r\n\r\n" % (o.addr.encode(), o.addr.encode()))
        try:
            s.sendall(b"z" * 40000)
        except OSError:
            pass
        time.sleep(0.5)  # the answer waits in our receive queue meanwhile
        got = b""
        s.settimeout(10)
        while True:
            chunk = s.recv(65536)  # ConnectionResetError here is the bug
            if not chunk:
                break
            got += chunk
    assert status(got) == 400


# --------------------------------------------------------------------------- 11. SSRF, loops


@pytest.fixture
def host_addresses():
    """An IPv4 and an IPv6 address of this host that are not loopback addresses (added
    to ``lo`` for the test and removed after it; root only)."""
    if os.geteuid() != 0 or not have("ip"):
        pytest.skip("needs root and iproute2")
    added = []
    try:
        for cmd in (["ip", "addr", "add", "192.0.2.77/32", "dev", "lo"],
                    ["ip", "-6", "addr", "add", "fd00:77::1/128", "dev", "lo", "nodad"]):
            r = subprocess.run(cmd, capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"cannot add an address: {r.stderr.decode().strip()}")
            added.append(cmd)
        yield "192.0.2.77", "fd00:77::1"
    finally:
        for cmd in added:
            subprocess.run([c if c != "add" else "del" for c in cmd], capture_output=True)


def test_the_hosts_own_addresses_are_local_destinations(qpxd, origin, host_addresses):
    v4, v6 = host_addresses
    o4 = origin(host=v4)
    o6 = origin(host=v6)
    port = free_port()
    qpxd(forward_config(port, allow_local_destinations=False,
                        rules=[{"name": "all", "action": {"type": "direct"}}]))
    for url, host in ((f"http://{v4}:{o4.port}/", f"{v4}:{o4.port}"),
                      (f"http://[{v6}]:{o6.port}/", f"[{v6}]:{o6.port}"),
                      (f"http://[::ffff:{v4}]:{o4.port}/", f"[::ffff:{v4}]:{o4.port}")):
        resp = raw_request(port, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                           % (url.encode(), host.encode()))
        assert status(resp) == 403 and b"is local" in resp, (url, resp[:200])
    assert o4.received == b"" and o6.received == b""


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "0.0.0.0", "[::]", "[::ffff:0.0.0.0]"])
def test_the_loop_guard_sees_every_form_of_its_own_address(qpxd, host):
    port = free_port()
    d = qpxd(forward_config(port, connect_ports=[]))
    resp = raw_request(port, b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                       % (host.encode(), port, host.encode(), port), timeout=3)
    assert status(resp) in (403, 508), resp
    resp = raw_request(port, b"GET http://%s:%d/ HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                       % (host.encode(), port, host.encode(), port), timeout=3)
    assert status(resp) in (403, 508), resp
    assert d.log().count("connection closed before HTTP") <= 2


# --------------------------------------------------------------------------- 12. smaller edges


def test_backslashes_reach_origins_and_rules_the_same_way(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(forward_config(port, rules=[
        {"name": "deny", "match": {"path": ["/admin%5C*"]}, "action": {"type": "block"}},
        {"name": "rest", "match": {}, "action": {"type": "direct"}}]))
    resp = raw_request(port, b"GET http://%s/admin\\x HTTP/1.1\r\nHost: %s\r\n"
                             b"Connection: close\r\n\r\n" % (o.addr.encode(), o.addr.encode()))
    assert status(resp) == 403
    resp = raw_request(port, b"GET http://%s/a\\b HTTP/1.1\r\nHost: %s\r\n"
                             b"Connection: close\r\n\r\n" % (o.addr.encode(), o.addr.encode()))
    assert status(resp) == 200
    assert o.requests[-1][0].startswith(b"GET /a%5Cb HTTP/1.1")


def test_accept_failures_under_emfile_are_one_rate_limited_line(qpxd, origin, tmp_path):
    import resource

    o = origin()
    port = free_port()

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
    d = qpxd(forward_config(port), start=False)
    d.preexec = low_nofile
    d.start()
    socks = []
    try:
        for _ in range(60):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(2.0)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    log = d.log()
    assert "Traceback" not in log
    assert 1 <= log.count("accept failed") <= 5, log[-2000:]
    assert get_status(port, f"http://{o.addr}/", o.addr) == 200  # serving again


def test_stale_metrics_directories_of_a_killed_master_are_removed(qpxd, tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    port, mport = free_port(), free_port()
    cfg = {**forward_config(port), "metrics": {"listen": f"127.0.0.1:{mport}"}}
    d = qpxd(cfg, env=env)
    workers = d.workers()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("qpxd-metrics-")]
    assert len(stale) == 1
    for pid in [d.pid] + workers:
        os.kill(pid, signal.SIGKILL)
    d.proc.wait(5)
    time.sleep(0.3)
    assert stale[0].exists()
    d2 = qpxd(cfg, env=env)
    left = [p for p in tmp_path.iterdir() if p.name.startswith("qpxd-metrics-")]
    assert stale[0] not in left and len(left) == 1
    assert "removed stale metrics directory" in d2.log()
