"""The reverse edge with several real origins: routing, balancing, health, rewrites."""

from __future__ import annotations

import collections
import socket
import threading
import time

import pytest
from conftest import free_port, raw_request, reverse_config
from servers import UpgradeEcho


def get(port: int, host: str, path: str = "/", *, source: str | None = None,
        extra: bytes = b"", timeout: float = 10) -> tuple[int, bytes, bytes]:
    resp = raw_request(port, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s\r\n"
                       % (path.encode(), host.encode(), extra), source=source, timeout=timeout)
    head, _, body = resp.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    return status, head, body


def served_by(body: bytes) -> str:
    return body.split(b"\n")[0].split(b" ")[1].decode() if body.startswith(b"origin ") else "?"


def route(match: dict, upstreams=None, **kw) -> dict:
    r = {"match": match}
    if upstreams is not None:
        r["upstreams"] = upstreams
    r.update(kw)
    return r


def test_host_and_path_routing_in_order(qpxd, origin):
    a, b = origin("a"), origin("b")
    port = free_port()
    qpxd(reverse_config(port, [
        route({"host": ["app.test"], "path": ["/api/*"]}, [f"http://{a.addr}"]),
        route({"host": ["app.test"]}, [f"http://{b.addr}"]),
        route({"host": ["status.test"]}, [], local_response={
            "status": 200, "content_type": "application/json", "body": '{"ok":true}'},
            headers={"response_set": {"X-Local": "1"}}),
    ]))
    assert served_by(get(port, "app.test", "/api/v1?x=1")[2]) == "a"
    assert served_by(get(port, "APP.test", "/other")[2]) == "b"
    status, head, body = get(port, "status.test", "/anything")
    assert status == 200 and body == b'{"ok":true}' and b"X-Local: 1" in head
    status, head, body = get(port, "nope.test")
    assert status == 404 and body == b"reverse error\nno route matches\n"
    assert b"GET /api/v1?x=1 HTTP/1.1" in a.requests[0][0]


def test_round_robin_over_three_origins(qpxd, origin):
    os_ = [origin(n) for n in "abc"]
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://{o.addr}" for o in os_])]))
    counts = collections.Counter(served_by(get(port, "x.test")[2]) for _ in range(300))
    assert set(counts) == {"a", "b", "c"}
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_least_conn_avoids_the_slow_origin(qpxd, origin):
    slow = origin("slow", delay=0.4)
    fast = [origin("f1"), origin("f2")]
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://{o.addr}" for o in [slow] + fast],
                                     lb="least_conn")]))
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def worker():
        for _ in range(10):
            name = served_by(get(port, "x.test")[2])
            with lock:
                counts[name] += 1

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counts.values()) == 60
    assert counts["slow"] < 12, counts  # round-robin would give it 20


def test_weighted_split_is_sticky_and_close_to_weights(qpxd, origin):
    stable, canary = origin("stable"), origin("canary")
    port = free_port()
    qpxd(reverse_config(port, [route({}, backends=[
        {"name": "stable", "weight": 90, "upstreams": [f"http://{stable.addr}"]},
        {"name": "canary", "weight": 10, "upstreams": [f"http://{canary.addr}"]}])]))
    counts: collections.Counter = collections.Counter()
    for i in range(1000):
        src = f"127.1.{i // 250}.{i % 250 + 1}"
        counts[served_by(get(port, "x.test", "/same", source=src)[2])] += 1
    assert 850 <= counts["stable"] <= 950, counts
    first = served_by(get(port, "x.test", "/same", source="127.1.0.7")[2])
    assert all(served_by(get(port, "x.test", "/same", source="127.1.0.7")[2]) == first
               for _ in range(5))


def test_retries_passive_ejection_and_active_recovery(qpxd, origin):
    a, b = origin("a"), origin("b")
    c = origin("c")
    c_port = c.port
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://{o.addr}" for o in (a, b, c)],
                                     retry={"attempts": 3, "backoff_ms": 10},
                                     health_check={"interval_ms": 300, "timeout_ms": 200,
                                                   "fail_threshold": 1, "cooldown_ms": 60000,
                                                   "path": "/health"})]))
    c.close()
    time.sleep(0.2)
    results = [get(port, "x.test") for _ in range(30)]
    assert all(s == 200 for s, _, _ in results), [s for s, _, _ in results]
    names = collections.Counter(served_by(b) for _, _, b in results)
    assert names["c"] == 0 and names["a"] > 5 and names["b"] > 5
    c2 = origin("c", port=c_port)  # restart on the same port: probes bring it back
    deadline = time.monotonic() + 5
    seen = False
    while time.monotonic() < deadline and not seen:
        seen = served_by(get(port, "x.test")[2]) == "c"
    assert seen, "the restarted origin never got traffic back"
    assert any(h.startswith(b"GET /health HTTP/1.1") for h, _ in c2.requests)


def test_all_origins_down_is_503_with_retry_after(qpxd):
    dead = [free_port(), free_port()]
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://127.0.0.1:{p}" for p in dead],
                                     health_check={"interval_ms": 200, "timeout_ms": 100,
                                                   "fail_threshold": 1,
                                                   "cooldown_ms": 30000})]))
    time.sleep(0.8)
    status, head, body = get(port, "x.test")
    assert status == 503 and body == b"no healthy upstream"
    retry_after = int(head.lower().split(b"retry-after: ")[1].split(b"\r\n")[0])
    assert 1 <= retry_after <= 30


def test_refused_upstream_is_502_and_silent_upstream_504(qpxd, origin):
    silent = origin("s")
    port = free_port()
    qpxd(reverse_config(port, [
        route({"path": ["/silent"]}, [f"http://{silent.addr}"], timeout_ms=800),
        route({}, [f"http://127.0.0.1:{free_port()}"])]))
    status, _, body = get(port, "x.test", "/refused")
    assert status == 502 and body == b"reverse error"
    t0 = time.monotonic()
    status, _, body = get(port, "x.test", "/silent")
    assert status == 504 and body == b"gateway timeout"
    assert 0.6 < time.monotonic() - t0 < 3


@pytest.mark.parametrize("rewrite,path,expected", [
    ({"strip_prefix": "/api"}, "/api/users?q=1", "/users?q=1"),
    ({"strip_prefix": "/api"}, "/api", "/"),
    ({"strip_prefix": "/api"}, "/apix/users", "/apix/users"),  # segment boundary
    ({"add_prefix": "/v2"}, "/users", "/v2/users"),
    ({"strip_prefix": "/api/v1", "add_prefix": "/v2"}, "/api/v1/users", "/v2/users"),
    ({"regex": {"pattern": "^/old/(.*)$", "replace": "/new/$1"}}, "/old/a/b?z", "/new/a/b?z"),
    ({"regex": {"pattern": "^/x/(\\w+)", "replace": "$1"}}, "/x/abc", "/abc"),
])
def test_path_rewrite(qpxd, origin, rewrite, path, expected):
    o = origin()
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://{o.addr}"], path_rewrite=rewrite)]))
    assert get(port, "x.test", path)[0] == 200
    assert o.requests[0][0].split(b"\r\n")[0] == b"GET %s HTTP/1.1" % expected.encode()


def test_upstream_base_path_and_preserve_host(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(reverse_config(port, [
        route({"host": ["keep.test"]}, [f"http://{o.addr}/base"]),
        route({"host": ["swap.test"]}, [f"http://{o.addr}"], preserve_host=False)]))
    get(port, "keep.test", "/p?q")
    get(port, "swap.test", "/p")
    first, second = o.requests[0][0], o.requests[1][0]
    assert first.startswith(b"GET /base/p?q HTTP/1.1") and b"Host: keep.test" in first
    assert b"Host: " + o.addr.encode() in second
    assert b"X-Forwarded-Host: swap.test" in second


def test_x_forwarded_headers_with_and_without_proxy_metadata(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://{o.addr}"])], xdp={
        "enabled": True, "metadata_mode": "proxy-v1", "require_metadata": False,
        "trusted_peers": ["127.0.0.1/32"]}))
    get(port, "x.test", extra=b"X-Forwarded-For: 198.51.100.1\r\n", source="127.0.0.5")
    head = o.requests[-1][0]
    assert b"X-Forwarded-For: 198.51.100.1, 127.0.0.5" in head
    assert b"X-Forwarded-Proto: http" in head and b"X-Forwarded-Host: x.test" in head
    raw_request(port, b"PROXY TCP4 203.0.113.7 198.51.100.10 51000 443\r\n"
                      b"GET / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n")
    assert b"X-Forwarded-For: 203.0.113.7\r\n" in o.requests[-1][0] + b"\r\n"


def test_websocket_through_reverse(qpxd):
    ws = UpgradeEcho()
    wport = ws.port
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://127.0.0.1:{wport}"])]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: x.test\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        s.sendall(b"hi")
        got = b""
        while len(got) < 7:
            got += s.recv(4096)
        assert got == b"echo:hi"


def test_connect_and_trace_are_refused(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(reverse_config(port, [route({}, [f"http://{o.addr}"])]))
    r = raw_request(port, b"CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 405")
    r = raw_request(port, b"TRACE / HTTP/1.1\r\nHost: x.test\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 405")
    assert o.requests == []
