"""The forward edge against real clients (curl, raw sockets) and real origins."""

from __future__ import annotations

import base64
import socket
import subprocess
import threading
import time

import pytest
from conftest import forward_config, free_port, have, raw_request
from servers import UpgradeEcho

pytestmark = pytest.mark.skipif(not have("curl"), reason="curl is not installed")


def curl(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          timeout=timeout)


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/") else 0


def test_get_through_proxy_reaches_origin_with_via(qpxd, origin):
    o = origin("a")
    port = free_port()
    qpxd(forward_config(port))
    r = curl("-x", f"http://127.0.0.1:{port}", f"http://{o.addr}/hello", "-D", "-")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert b"HTTP/1.1 200" in out
    assert b"origin a\nGET /hello HTTP/1.1\n" in out  # origin-form upstream
    assert b"via: 1.1 qpx" in out  # the origin saw our Via
    assert b"\r\nVia: 1.1 qpx\r\n" in out  # and so does the client
    head = o.requests[0][0]
    assert head.startswith(b"GET /hello HTTP/1.1\r\n")
    assert b"Host: " + o.addr.encode() in head


def test_two_origins_on_one_keepalive_connection(qpxd, origin):
    a, b = origin("a"), origin("b")
    port = free_port()
    qpxd(forward_config(port))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for o in (a, b, a):
            s.sendall(b"GET http://%s/x HTTP/1.1\r\nHost: %s\r\n\r\n" % (o.addr.encode(),
                                                                          o.addr.encode()))
            data = b""
            while b"body-length" not in data:
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            assert b"origin " + o.name.encode() + b"\n" in data
    assert len(a.requests) == 2 and len(b.requests) == 1


def test_post_head_and_chunked_upload(qpxd, origin, tmp_path):
    o = origin()
    port = free_port()
    qpxd(forward_config(port))
    proxy = f"http://127.0.0.1:{port}"
    r = curl("-x", proxy, "--data-binary", "x" * 100000, f"http://{o.addr}/post")
    assert b"body-length: 100000" in r.stdout, r.stdout[:300]
    r = curl("-x", proxy, "-I", f"http://{o.addr}/head")
    assert b"HTTP/1.1 200" in r.stdout and b"Content-Length: " in r.stdout
    src = tmp_path / "upload.bin"
    src.write_bytes(b"y" * 70000)
    r = curl("-x", proxy, "-H", "Transfer-Encoding: chunked", "-T", str(src),
             f"http://{o.addr}/put")
    assert b"body-length: 70000" in r.stdout, r.stdout[:300]
    assert o.requests[-1][1] == b"y" * 70000
    # the upload reached the origin re-chunked by qpxd
    assert b"Transfer-Encoding: chunked" in o.requests[-1][0]


def test_large_and_chunked_responses(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(forward_config(port))
    proxy = f"http://127.0.0.1:{port}"
    r = curl("-x", proxy, f"http://{o.addr}/size/3000000", "-o", "-")
    assert len(r.stdout) == 3000000
    assert r.stdout[:16] == b"0123456789abcdef"
    r = curl("-x", proxy, f"http://{o.addr}/chunked/123456", "-o", "-")
    assert r.stdout == b"x" * 123456
    r = curl("-x", proxy, f"http://{o.addr}/close", "-o", "-")
    assert b"origin o" in r.stdout


def test_large_bodies_back_to_back_on_one_connection(qpxd, origin):
    """Bodies longer than the first upstream read leave with the head in one write and
    the rest streamed: every byte arrives, the connection stays in step, and the access
    log counts head plus body."""
    import json
    o = origin()
    port = free_port()
    d = qpxd(forward_config(port))
    sizes = [1_500_000, 70_000, 10, 2_000_000]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        buf = b""
        for n in sizes:
            s.sendall(b"GET http://%s/size/%d HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (o.addr.encode(), n, o.addr.encode()))
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, buf = buf.partition(b"\r\n\r\n")
            assert b"Content-Length: %d" % n in head, head
            while len(buf) < n:
                chunk = s.recv(1 << 20)
                assert chunk, "closed mid-body"
                buf += chunk
            body, buf = buf[:n], buf[n:]
            assert body == (b"0123456789abcdef" * (n // 16 + 1))[:n]
        assert buf == b""
    deadline = time.monotonic() + 5
    lines = []
    while time.monotonic() < deadline:
        lines = [json.loads(ln) for ln in d.out().splitlines()
                 if ln.startswith("{") and '/size/' in ln]
        if len(lines) == len(sizes):
            break
        time.sleep(0.1)
    assert [e["status"] for e in lines] == [200] * len(sizes), d.out()[-600:]
    for e, n in zip(lines, sizes):
        assert n < e["bytes_out"] < n + 400, (n, e)


def test_rules_block_respond_and_default(qpxd, origin):
    o = origin()
    port = free_port()
    rules = [
        {"name": "no-ads", "match": {"host": ["*.ads.test"]}, "action": {"type": "block"}},
        {"name": "page", "match": {"host": ["portal.test"], "path": ["/login*"]},
         "action": {"type": "respond", "local_response": {
             "status": 451, "body": "go away", "headers": {"X-Policy": "p1"}}},
         "headers": {"response_set": {"X-Rule": "page"}}},
        {"name": "ok", "match": {"src_ip": ["127.0.0.1/32"], "host": ["127.0.0.1"]},
         "action": {"type": "direct"}},
    ]
    qpxd(forward_config(port, rules))
    proxy = f"http://127.0.0.1:{port}"
    r = curl("-x", proxy, "http://x.ads.test/", "-D", "-")
    assert b"HTTP/1.1 403" in r.stdout and r.stdout.endswith(b"blocked")
    r = curl("-x", proxy, "http://portal.test/login?a=1", "-D", "-")
    assert b"HTTP/1.1 451" in r.stdout and b"X-Policy: p1" in r.stdout
    assert b"X-Rule: page" in r.stdout and r.stdout.endswith(b"go away")
    r = curl("-x", proxy, "http://portal.test/other", "-D", "-")  # no rule: default block
    assert b"HTTP/1.1 403" in r.stdout
    r = curl("-x", proxy, f"http://{o.addr}/fine")
    assert b"origin o" in r.stdout
    assert len(o.requests) == 1


def test_header_control_both_directions(qpxd, origin):
    o = origin()
    port = free_port()
    rules = [{"name": "hc", "match": {"src_ip": ["127.0.0.0/8"]}, "action": {"type": "direct"},
              "headers": {"request_set": {"X-Test": "set-by-qpx"},
                          "request_remove": ["X-Secret"],
                          "response_add": {"X-Added": "yes"},
                          "response_remove": ["X-Origin"],
                          "request_regex_replace": [{"header": "User-Agent",
                                                     "pattern": "curl/(\\S+)",
                                                     "replace": "agent-$1"}]}}]
    qpxd(forward_config(port, rules))
    r = curl("-x", f"http://127.0.0.1:{port}", "-H", "X-Secret: s3", "-D", "-",
             f"http://{o.addr}/h")
    assert b"x-test: set-by-qpx" in r.stdout
    assert b"X-Added: yes" in r.stdout and b"X-Origin" not in r.stdout
    head = o.requests[0][0]
    assert b"X-Secret" not in head and b"User-Agent: agent-" in head


def test_hop_by_hop_headers_are_stripped(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(forward_config(port))
    req = (b"GET http://%s/h HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive, X-Remove\r\n"
           b"X-Remove: 1\r\nKeep-Alive: 300\r\nProxy-Authorization: Basic eDp5\r\n"
           b"TE: trailers\r\nProxy-Connection: keep-alive\r\nVia: 1.0 old-proxy\r\n"
           b"X-Keep: yes\r\n\r\n" % (o.addr.encode(), o.addr.encode()))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        resp = b""
        while b"body-length" not in resp:
            resp += s.recv(65536)
    head = o.requests[0][0].lower()
    for name in (b"x-remove", b"keep-alive", b"proxy-authorization", b"\r\nte:",
                 b"proxy-connection", b"connection:"):
        assert name not in head, name
    assert b"x-keep: yes" in head
    assert b"via: 1.0 old-proxy" in head and b"via: 1.1 qpx" in head
    rhead = resp.split(b"\r\n\r\n")[0].lower()
    assert b"x-drop" not in rhead and b"keep-alive:" not in rhead
    assert b"via: 1.1 qpx" in rhead and b"date:" in rhead


def test_upstream_errors_502_and_504(qpxd, origin):
    port = free_port()
    dead = free_port()
    o = origin()
    cfg = forward_config(port)
    cfg["runtime"] = {"upstream_http_timeout_ms": 1000}
    qpxd(cfg)
    proxy = f"http://127.0.0.1:{port}"
    r = curl("-x", proxy, f"http://127.0.0.1:{dead}/", "-D", "-")
    assert b"HTTP/1.1 502" in r.stdout and r.stdout.endswith(b"proxy error")
    t0 = time.monotonic()
    r = curl("-x", proxy, f"http://{o.addr}/silent", "-D", "-")
    took = time.monotonic() - t0
    assert b"HTTP/1.1 504" in r.stdout and r.stdout.endswith(b"gateway timeout")
    assert 0.8 < took < 4, took


def test_via_loop_is_508_and_trace_405_and_origin_form_400(qpxd):
    port = free_port()
    qpxd(forward_config(port))
    r = raw_request(port, b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nVia: 1.1 qpx\r\n\r\n")
    # the message, then the reason on its own line (a refusal says why)
    assert status_of(r) == 508 and r.split(b"\r\n\r\n", 1)[1] == \
        b"loop detected\nrequest already passed this proxy (Via)\n"
    r = raw_request(port, b"TRACE http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert status_of(r) == 405
    r = raw_request(port, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert status_of(r) == 400 and b"Connection: close" in r


def test_connect_tunnel_to_echo(qpxd, echo):
    e = echo()
    port = free_port()
    qpxd(forward_config(port, connect_ports=[e.port]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nearly" % (e.addr.encode(),
                                                                    e.addr.encode()))
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1024)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length" not in head.lower()
        rest = head.split(b"\r\n\r\n", 1)[1]
        payload = bytes(range(256)) * 4096
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        got = rest
        while len(got) < 5 + len(payload):
            chunk = s.recv(1 << 20)
            assert chunk
            got += chunk
        assert got == b"early" + payload


def test_connect_port_not_allowed_is_403(qpxd, echo):
    e = echo()
    port = free_port()
    qpxd(forward_config(port))  # connect_ports defaults to [443]
    r = raw_request(port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (e.addr.encode(),
                                                                        e.addr.encode()))
    assert status_of(r) == 403
    assert e.connections == 0
    # the client learns why: the configured message, then the access log's reason
    port_no = e.addr.rsplit(":", 1)[1]
    assert r.split(b"\r\n\r\n", 1)[1] == \
        b"forbidden\nCONNECT to port %s is not allowed\n" % port_no.encode(), r


def test_refusal_bodies_carry_the_reason_within_configured_messages(qpxd):
    port = free_port()
    cfg = forward_config(port, allow_local_destinations=False)
    cfg["messages"] = {"forbidden": "Denied by ACME policy"}
    qpxd(cfg)
    r = raw_request(port, b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
    assert status_of(r) == 403
    assert r.split(b"\r\n\r\n", 1)[1] == \
        b"Denied by ACME policy\ndestination 127.0.0.1 is local\n", r


@pytest.mark.skipif(not have("openssl"), reason="openssl is not installed")
def test_connect_to_https_origin_with_curl(qpxd, tmp_path):
    from servers import TlsOrigin, make_cert

    cert, key = make_cert(tmp_path)
    tls = TlsOrigin(cert, key)
    try:
        port = free_port()
        qpxd(forward_config(port, connect_ports=[tls.port]))
        r = curl("-p", "-x", f"http://127.0.0.1:{port}", "--cacert", str(cert),
                 f"https://localhost:{tls.port}/secure")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"tls origin sni=localhost\n"
    finally:
        tls.close()


def test_basic_auth_407_then_200(qpxd, origin):
    o = origin()
    port = free_port()
    cfg = forward_config(port, [{"name": "authed", "match": {"host": ["*"]},
                                 "auth": {"require": ["local"]}, "action": {"type": "direct"}}])
    cfg["auth"] = {"users": [{"username": "alice", "password": "s3cret"}]}
    cfg["identity"] = {"auth_realm": "corp"}
    qpxd(cfg)
    proxy = f"http://127.0.0.1:{port}"
    r = curl("-x", proxy, f"http://{o.addr}/", "-D", "-")
    assert b"HTTP/1.1 407" in r.stdout
    assert b'Proxy-Authenticate: Basic realm="corp"' in r.stdout
    r = curl("-x", proxy, "--proxy-user", "alice:wrong", f"http://{o.addr}/", "-D", "-")
    assert b"HTTP/1.1 407" in r.stdout
    r = curl("-x", proxy, "--proxy-user", "alice:s3cret", f"http://{o.addr}/", "-D", "-")
    assert b"HTTP/1.1 200" in r.stdout and b"origin o" in r.stdout
    assert b"proxy-authorization" not in o.requests[-1][0].lower()
    assert len(o.requests) == 1


def test_chaining_to_second_qpxd_and_tinyproxy(qpxd, origin, tmp_path):
    o = origin()
    edge, inner = free_port(), free_port()
    inner_cfg = forward_config(inner)
    inner_cfg["identity"] = {"proxy_name": "qpx-inner"}
    qpxd(inner_cfg, name="inner")
    cfg = forward_config(edge, [{"name": "via-inner", "match": {"host": ["*"]},
                                 "action": {"type": "proxy", "upstream": "inner"}}])
    cfg["upstreams"] = [{"name": "inner", "url": f"http://127.0.0.1:{inner}"}]
    qpxd(cfg, name="edge")
    r = curl("-x", f"http://127.0.0.1:{edge}", f"http://{o.addr}/chain", "-D", "-")
    assert b"origin o" in r.stdout
    assert b"via: 1.1 qpx, 1.1 qpx-inner" in r.stdout.lower() or \
        (b"1.1 qpx" in o.requests[0][0] and b"1.1 qpx-inner" in o.requests[0][0])
    if not have("tinyproxy"):
        pytest.skip("tinyproxy is not installed")
    tp_port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {tp_port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\n"
                    f"Allow 127.0.0.1\nLogLevel Error\nPidFile \"{tmp_path}/tp.pid\"\n")
    binary = "/usr/bin/tinyproxy" if have("/usr/bin/tinyproxy") else "tinyproxy"
    tp = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", tp_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        edge2 = free_port()
        cfg = forward_config(edge2, [{"name": "via-tp", "match": {"host": ["*"]},
                                      "action": {"type": "proxy", "upstream": "tp"}}])
        cfg["upstreams"] = [{"name": "tp", "url": f"http://127.0.0.1:{tp_port}"}]
        qpxd(cfg, name="edge2")
        r = curl("-x", f"http://127.0.0.1:{edge2}", f"http://{o.addr}/tiny")
        assert b"origin o\nGET /tiny HTTP/1.1" in r.stdout, r
    finally:
        tp.terminate()
        tp.wait(5)


def test_connect_through_an_upstream_proxy_chain(qpxd, echo):
    """CONNECT on the edge with a `proxy` action: the edge CONNECTs through the inner
    qpxd, then relays both ways (bytes the client sent early included)."""
    e = echo()
    edge, inner = free_port(), free_port()
    inner_cfg = forward_config(inner, connect_ports=[e.port])
    inner_cfg["identity"] = {"proxy_name": "qpx-inner"}  # the same name is a Via loop: 508
    qpxd(inner_cfg, name="inner")
    cfg = forward_config(edge, [{"name": "via-inner", "match": {"host": ["*"]},
                                 "action": {"type": "proxy", "upstream": "inner"}}],
                         connect_ports=[e.port])
    cfg["upstreams"] = [{"name": "inner", "url": f"http://127.0.0.1:{inner}"}]
    qpxd(cfg, name="edge")
    with socket.create_connection(("127.0.0.1", edge), timeout=5) as s:
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nping" % ((e.addr.encode(),) * 2))
        data = b""
        while not data.endswith(b"ping"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        s.sendall(b"pong")
        got = b""
        while got != b"pong":
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
    assert e.connections == 1
    blocked = raw_request(edge, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    assert status_of(blocked) == 403  # the edge's connect_ports hold before any chaining


def test_slow_header_client_is_cut_off_while_others_are_served(qpxd, origin):
    o = origin()
    port = free_port()
    cfg = forward_config(port)
    cfg["runtime"] = {"http_header_read_timeout_ms": 1500}
    qpxd(cfg)
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    closed_after = None
    try:
        for ch in b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-a: b\r\n":
            slow.sendall(bytes([ch]))
            r = curl("-x", f"http://127.0.0.1:{port}", f"http://{o.addr}/ok")
            assert b"origin o" in r.stdout
            time.sleep(0.05)
            if time.monotonic() - t0 > 5:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - t0
    if closed_after is None:
        data = slow.recv(4096)
        closed_after = time.monotonic() - t0
        assert data.startswith(b"HTTP/1.1 408") or data == b""
    slow.close()
    assert closed_after < 4.5


def test_upgrade_websocket_through_forward(qpxd, echo):
    """An Upgrade request: on 101 the bytes flow both ways."""
    ws_origin = UpgradeEcho(bytes.upper)
    oport = ws_origin.port
    port = free_port()
    qpxd(forward_config(port))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET http://127.0.0.1:%d/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n" % (oport, oport))
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        s.sendall(b"ping")
        got = b""
        while len(got) < 4:
            got += s.recv(4096)
        assert got == b"PING"
    assert b"upgrade: websocket" in ws_origin.heads[0].lower()


def test_access_log_records_refused_and_served(qpxd, origin):
    o = origin()
    port = free_port()
    d = qpxd(forward_config(port))
    curl("-x", f"http://127.0.0.1:{port}", f"http://{o.addr}/logged")
    raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and d.out().count("\n") < 2:
        time.sleep(0.1)
    out = d.out()
    assert f'"target":"http://{o.addr}/logged"' in out
    assert '"status":400' in out and '"reason":"a forward proxy needs' in out


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()
