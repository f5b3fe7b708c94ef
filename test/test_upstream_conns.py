"""Upstream connections that misbehave, and clients that leave mid-exchange.

Each origin here is a script (servers.Scripted) doing what a well-behaved server never
does: bytes on an idle keep-alive connection, a close after an informational response,
a flood nobody reads.  The proxy under test is the real daemon.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
from conftest import forward_config, free_port, raw_request, reverse_config
from servers import Scripted


def ok(body: bytes, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def get(port: int, url: str, timeout: float = 5.0) -> bytes:
    host = url.split("/")[2]
    return raw_request(port, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                       % (url.encode(), host.encode()), timeout=timeout)


def status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/") else 0


def serve_rest(srv, conn, msg, body: bytes) -> None:
    """Answer ``msg`` and every later request on ``conn`` with ``body``."""
    while msg is not None:
        conn.sendall(ok(body))
        msg = srv.read_request(conn, msg[2])


@pytest.fixture
def proxied(qpxd):
    """``proxied(script)`` → (scripted origin, port of a forward qpxd in front of it,
    the daemon); ``tunnel=True`` allows CONNECT to the origin's port."""
    made = []

    def make(script, runtime: dict | None = None, tunnel: bool = False):
        o = Scripted(script)
        made.append(o)
        port = free_port()
        cfg = forward_config(port, **({"connect_ports": [o.port]} if tunnel else {}))
        if runtime:
            cfg["runtime"] = runtime
        return o, port, qpxd(cfg)

    yield make
    for o in made:
        o.close()


def access(d, timeout: float = 5.0, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        entries = [json.loads(line) for line in d.out().splitlines() if line.startswith("{")]
        entries = [e for e in entries if "status" in e]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_stray_bytes_on_an_idle_pooled_connection_are_never_served(proxied):
    def script(conn, n, srv):
        msg = srv.read_request(conn)
        if n == 0:
            conn.sendall(ok(b"first"))
            time.sleep(0.1)  # idle in qpxd's pool now: an unsolicited "response"
            conn.sendall(ok(b"EVIL"))
            srv.read_request(conn, b"")  # whatever comes next is never answered
            time.sleep(2)
        serve_rest(srv, conn, msg, b"fresh")

    o, port, _ = proxied(script)
    assert get(port, f"http://{o.addr}/1").endswith(b"first")
    time.sleep(0.3)  # well inside the pool's 1 s no-peek window
    r = get(port, f"http://{o.addr}/2")
    assert status(r) == 200 and r.endswith(b"fresh"), r
    assert o.connections == 2


def test_a_pooled_connection_the_origin_closed_is_retried_once(proxied):
    def script(conn, n, srv):
        msg = srv.read_request(conn)
        if n == 0:  # keep-alive, then the origin closes it anyway
            conn.sendall(ok(b"conn0"))
            return
        serve_rest(srv, conn, msg, b"conn%d" % n)

    o, port, _ = proxied(script)
    assert get(port, f"http://{o.addr}/1").endswith(b"conn0")
    time.sleep(0.2)  # the FIN has arrived; the pool lends it (< 1 s) without a peek
    r = get(port, f"http://{o.addr}/2")
    assert status(r) == 200 and r.endswith(b"conn1"), r
    assert len(o.requests) == 2  # nothing was replayed onto a live connection


def test_no_replay_after_an_informational_response(proxied):
    """The origin answered something (a 102) and then closed: the request may have been
    processed, so it is not sent again — 502, and the origin saw it once."""
    def script(conn, n, srv):
        msg = srv.read_request(conn)
        if n == 0:
            conn.sendall(ok(b"first"))
            srv.read_request(conn, msg[2])
            conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
            return
        serve_rest(srv, conn, msg, b"replayed")

    o, port, _ = proxied(script)
    assert get(port, f"http://{o.addr}/1").endswith(b"first")
    assert status(get(port, f"http://{o.addr}/2")) == 502
    assert len(o.requests) == 2 and o.connections == 1


def test_pooled_connection_of_a_permissive_listener_is_not_lent_to_a_guarded_one(qpxd, origin):
    """The SSRF guard runs when dialing; a connection dialed for a listener that allows
    local destinations must not let another listener skip it."""
    o = origin()
    open_port, guarded_port = free_port(), free_port()
    rules = [{"name": "lo", "match": {"src_ip": ["127.0.0.0/8"]}, "action": {"type": "direct"}}]
    cfg = {"listeners": [
        {"name": "open", "mode": "forward", "listen": f"127.0.0.1:{open_port}",
         "default_action": {"type": "block"}, "allow_local_destinations": True,
         "rules": rules},
        {"name": "guarded", "mode": "forward", "listen": f"127.0.0.1:{guarded_port}",
         "default_action": {"type": "block"}, "rules": rules}]}
    qpxd(cfg)
    with socket.create_connection(("127.0.0.1", open_port), timeout=5) as s:
        s.sendall(b"GET http://%s/a HTTP/1.1\r\nHost: %s\r\n\r\n" % ((o.addr.encode(),) * 2))
        data = b""
        while b"body-length" not in data:
            data += s.recv(65536)
    assert status(data) == 200
    assert status(get(guarded_port, f"http://{o.addr}/b")) == 403
    assert len(o.requests) == 1


def test_tunnel_idle_timeout_reaches_both_blocked_directions(proxied):
    """A CONNECT client that neither reads nor writes while the origin floods: one
    greenlet waits to read the client, another to write to it.  The idle timeout must
    end both (the tunnel is torn down, the origin sees its connection go)."""
    ended = threading.Event()

    def flood(conn, n, srv):
        conn.settimeout(20)
        block = b"x" * 65536
        try:
            while True:
                conn.sendall(block)
        except OSError:
            ended.set()

    o, port, _ = proxied(flood, runtime={"tunnel_idle_timeout_ms": 1000}, tunnel=True)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % ((o.addr.encode(),) * 2))
        t0 = time.monotonic()
        assert ended.wait(10), "the tunnel outlived its idle timeout"
        assert time.monotonic() - t0 < 8


def test_client_reset_mid_upload_is_the_clients_fault_not_the_upstreams(proxied):
    got = threading.Event()

    def script(conn, n, srv):
        conn.settimeout(10)
        try:
            while conn.recv(65536):
                got.set()
        except OSError:
            pass

    o, port, d = proxied(script)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST http://%s/up HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000000\r\n\r\n"
              % ((o.addr.encode(),) * 2) + b"y" * 100000)
    assert got.wait(5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST
    entries = access(d)
    assert entries and entries[-1]["status"] == 499, entries
    assert "request body incomplete" in entries[-1].get("reason", ""), entries


@pytest.mark.parametrize("host,expected", [
    ("a" * 64 + ".example", 400),  # a label over 63 octets (RFC 1035)
    (("b" * 60 + ".") * 5 + "example", 400),  # a name over 253 octets
    ("c" * 63 + ".invalid", 502),  # legal, and nobody answers for it
])
def test_overlong_host_names_are_refused_not_crashed_on(qpxd, host, expected):
    port = free_port()
    d = qpxd(forward_config(port))
    r = get(port, f"http://{host}/")
    assert status(r) == expected, r[:200]
    assert "Traceback" not in d.log()


def test_h2c_upgrade_offer_is_dropped(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(forward_config(port))
    r = raw_request(port, b"GET http://%s/h2c HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade, "
                    b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"
                    b"\r\n\r\n" % ((o.addr.encode(),) * 2), read_all=False)
    assert status(r) == 200, r
    head = o.requests[0][0].lower()
    assert b"upgrade" not in head and b"http2-settings" not in head


@pytest.mark.parametrize("path", ["/%61dmin/x", "/./admin/x", "//admin/x", "/pub/../admin/x",
                                  "/pub/%2e%2e/admin/x"])
def test_path_tricks_do_not_slip_past_a_path_rule(qpxd, origin, path):
    o = origin()
    port = free_port()
    rules = [{"name": "no-admin", "match": {"path": ["/admin/*"]}, "action": {"type": "block"}},
             {"name": "lo", "match": {"src_ip": ["127.0.0.0/8"]}, "action": {"type": "direct"}}]
    qpxd(forward_config(port, rules=rules))
    assert status(get(port, f"http://{o.addr}{path}")) == 403
    r = get(port, f"http://{o.addr}/pub/./a//b/%7euser?q=/./x")
    assert status(r) == 200
    assert o.requests[-1][0].startswith(b"GET /pub/a/b/~user?q=/./x HTTP/1.1\r\n")


def test_reverse_absolute_form_uses_the_uri_authority_as_host(qpxd, origin):
    """RFC 9112 §3.2.2: with an absolute-form target the Host header is ignored; the
    route was chosen by the URI's host, and the upstream must hear the same host."""
    o = origin()
    port = free_port()
    routes = [{"match": {"host": ["site.test"]}, "upstreams": [f"http://{o.addr}"]}]
    qpxd(reverse_config(port, routes))
    r = raw_request(port, b"GET http://site.test/x HTTP/1.1\r\nHost: other.test\r\n"
                    b"Connection: close\r\n\r\n")
    assert status(r) == 200, r
    head = o.requests[0][0]
    assert b"\r\nHost: site.test\r\n" in head and b"other.test" not in head
