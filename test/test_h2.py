"""HTTP/2 on the client side, against the live daemon: curl (ALPN h2 and prior
knowledge), h2load, and a Python ``h2`` client for what curl cannot do (floods, a
reader that never opens its window, resets)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest
from conftest import free_port, have
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from tlscerts import CA

pytestmark = pytest.mark.skipif(not have("curl"), reason="curl is needed")


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path / "pki")


def h2_reverse(port: int, o, site=None, plain_port: int | None = None,
               workers: int = 1) -> dict:
    routes = [{"match": {"path": ["/local"]},
               "local_response": {"status": 200, "body": "local over h2"}},
              {"match": {}, "upstreams": [f"http://{o.addr}"]}]
    cfg = {"runtime": {"worker_threads": workers}, "reverse": []}
    if site is not None:
        cfg["reverse"].append({"name": "tls", "listen": f"127.0.0.1:{plain_port or 0}",
                               "tls": {"certificates": [{"sni": "site.test",
                                                         "cert": str(site.cert),
                                                         "key": str(site.key),
                                                         "default": True}]},
                               "routes": routes})
    return cfg


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True,
                          text=True)


def test_curl_h2_over_tls_and_h2c_prior_knowledge_through_the_pipeline(qpxd, ca, origin):
    o = origin()
    site = ca.issue("site", "site.test")
    tls_port, plain_port = free_port(), free_port()
    routes = [{"match": {"path": ["/local"]},
               "local_response": {"status": 200, "body": "local over h2"}},
              {"match": {}, "upstreams": [f"http://{o.addr}"]}]
    d = qpxd({"reverse": [
        {"name": "tls", "listen": f"127.0.0.1:{tls_port}", "routes": routes,
         "tls": {"certificates": [{"sni": "site.test", "cert": str(site.cert),
                                   "key": str(site.key)}]}},
        {"name": "plain", "listen": f"127.0.0.1:{plain_port}", "routes": routes}]})
    base = ["--cacert", str(ca.path), "--resolve", f"site.test:{tls_port}:127.0.0.1"]
    url = f"https://site.test:{tls_port}"
    # several requests on one connection (curl reuses it), all as HTTP/2
    r = curl(*base, "--http2", "-w", "%{http_version}\n", f"{url}/local", f"{url}/a?x=1",
             "-H", "X-Test: h2", "-b", "a=1", "-b", "b=2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("\n2\n") + out.endswith("2\n") >= 2, out
    assert "local over h2" in out and "origin o" in out and "GET /a?x=1 HTTP/1.1" in out
    assert "x-forwarded-proto: https" in out and "x-test: h2" in out
    assert b"\r\nCookie: a=1;b=2\r\n" in o.requests[-1][0]
    # request bodies: with a length, and without one (re-framed as chunked)
    r = curl(*base, "--http2", "--data-binary", "x" * 100000, f"{url}/post")
    assert "body-length: 100000" in r.stdout, r.stdout
    r = curl(*base, "--http2", "-H", "Transfer-Encoding: chunked", "--data-binary",
             "@-", f"{url}/post2")
    assert r.returncode == 0
    # h2c with prior knowledge on the cleartext listener
    r = curl("--http2-prior-knowledge", "-w", " %{http_version}",
             f"http://127.0.0.1:{plain_port}/local")
    assert r.stdout == "local over h2 2", r.stdout + r.stderr
    # HTTP/1.1 still works on both
    r = curl(*base, "--http1.1", "-w", " %{http_version}", f"{url}/local")
    assert r.stdout == "local over h2 1.1"
    time.sleep(0.8)
    lines = [json.loads(x) for x in d.out().splitlines() if x.startswith("{")]
    assert sum(1 for x in lines if x["target"] == "/a?x=1" and x["status"] == 200) == 1


def test_h2load_many_streams_on_few_connections(qpxd, ca, origin):
    if not have("h2load"):
        pytest.skip("h2load (nghttp2-client) is not installed")
    o = origin()
    site = ca.issue("site", "site.test")
    port = free_port()
    qpxd({"reverse": [{"name": "tls", "listen": f"127.0.0.1:{port}",
                       "tls": {"certificates": [{"sni": "site.test", "cert": str(site.cert),
                                                 "key": str(site.key), "default": True}]},
                       "routes": [{"match": {}, "upstreams": [f"http://{o.addr}"]}]}]})
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "50",
                        f"https://127.0.0.1:{port}/h2load"], capture_output=True, text=True,
                       timeout=120)
    assert "2000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout
    assert "status codes: 2000 2xx" in r.stdout


class Client:
    """A raw HTTP/2 client over TLS (ALPN h2) or cleartext."""

    def __init__(self, port: int, ca: CA | None = None, window: int | None = None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca.path))
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname="site.test")
        self.sock = raw
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str, extra=()) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(b":method", b"GET"), (b":path", path.encode()),
                                   (b":scheme", b"https"), (b":authority", b"site.test"),
                                   *extra], end_stream=True)
        self.flush()
        return sid

    def events(self, timeout: float = 10.0) -> list:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLError, OSError):
            return [ConnectionTerminated()]
        if not data:
            return [ConnectionTerminated()]
        evs = self.h2.receive_data(data)
        self.flush()
        return evs

    def run(self, sids: set[int], timeout: float = 20.0) -> dict[int, dict]:
        """Read until every stream in ``sids`` ended; {sid: {status, body}}."""
        out = {s: {"status": None, "body": b"", "reset": False} for s in sids}
        left = set(sids)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for ev in self.events():
                if isinstance(ev, ResponseReceived):
                    out[ev.stream_id]["status"] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, DataReceived):
                    out[ev.stream_id]["body"] += ev.data
                    self.h2.acknowledge_received_data(ev.flow_controlled_length,
                                                      ev.stream_id)
                elif isinstance(ev, (StreamEnded, StreamReset)):
                    if isinstance(ev, StreamReset):
                        out[ev.stream_id]["reset"] = True
                    left.discard(ev.stream_id)
                elif isinstance(ev, ConnectionTerminated):
                    return out
            self.flush()
        return out


def tls_reverse_to(port, site, o) -> dict:
    return {"reverse": [{"name": "tls", "listen": f"127.0.0.1:{port}",
                         "tls": {"certificates": [{"sni": "site.test", "cert": str(site.cert),
                                                   "key": str(site.key), "default": True}]},
                         "routes": [{"match": {"path": ["/local"]},
                                     "local_response": {"status": 200, "body": "local"}},
                                    {"match": {}, "upstreams": [f"http://{o.addr}"]}]}]}


def test_concurrent_streams_limits_and_refusals(qpxd, ca, origin):
    o = origin()
    site = ca.issue("site", "site.test")
    port = free_port()
    qpxd(tls_reverse_to(port, site, o))
    c = Client(port, ca)
    sids = {c.get(f"/s{i}") for i in range(60)}
    res = c.run(sids)
    assert all(r["status"] == 200 and b"origin o" in r["body"] for r in res.values())
    assert {r["body"].split(b"\n")[1] for r in res.values()} == \
        {b"GET /s%d HTTP/1.1" % i for i in range(60)}
    # cookie crumbs are joined into one field (RFC 9113 §8.2.3)
    s = c.get("/cookies", [(b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert c.run({s})[s]["status"] == 200
    assert any(b"\r\nCookie: a=1; b=2\r\n" in h for h, _ in o.requests)
    # a header list larger than max_header_bytes: 431 for that stream only
    big = c.get("/big", [(b"x-big", b"a" * 40000)])
    ok = c.get("/local")
    res = c.run({big, ok})
    assert res[big]["status"] == 431 and res[ok]["status"] == 200
    # connection-specific fields are refused (RFC 9113 §8.2.2) and gRPC gets a clear 502
    grpc = c.get("/svc.Method", [(b"content-type", b"application/grpc")])
    res = c.run({grpc})
    assert res[grpc]["status"] == 502 and b"trailers" in res[grpc]["body"]


def test_a_reader_that_opens_no_window_costs_no_memory(qpxd, ca, origin):
    """A client that never grants window: qpxd sends the head, stalls the stream and,
    through it, the upstream read - the worker does not buffer the 200 MB response."""
    o = origin()
    site = ca.issue("site", "site.test")
    port = free_port()
    d = qpxd(tls_reverse_to(port, site, o))
    worker = d.workers()[0]

    def rss() -> int:
        with open(f"/proc/{worker}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    c = Client(port, ca, window=0)
    sid = c.get("/size/200000000")
    got_head = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not got_head:
        got_head = any(isinstance(e, ResponseReceived) for e in c.events(1.0))
    time.sleep(2.0)
    assert got_head
    assert rss() - before < 30 * 1024 * 1024, (before, rss())
    # other connections are served meanwhile
    other = Client(port, ca)
    s2 = other.get("/local")
    assert other.run({s2})[s2]["status"] == 200
    c.h2.reset_stream(sid)
    c.flush()


def flood(port: int, ca: CA, kind: str, n: int = 1200) -> list:
    c = Client(port, ca)
    for i in range(n):
        if kind == "reset":
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, [(b":method", b"GET"), (b":path", b"/local"),
                                    (b":scheme", b"https"), (b":authority", b"site.test")],
                              end_stream=True)
            c.h2.reset_stream(sid)
        elif kind == "ping":
            c.h2.ping(b"%08d" % i)
        else:
            c.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i % 2})
        if i % 50 == 0:
            try:
                c.flush()
            except OSError:
                break
    try:
        c.flush()
    except OSError:
        pass
    evs = []
    for _ in range(200):
        batch = c.events(2.0)
        evs += batch
        if any(isinstance(e, ConnectionTerminated) for e in batch):
            break
    return evs


@pytest.mark.parametrize("kind,what", [("reset", "RST_STREAM"), ("ping", "PING"),
                                       ("settings", "SETTINGS")])
def test_floods_end_in_goaway_and_other_connections_are_served(qpxd, ca, origin, kind,
                                                                what):
    o = origin()
    site = ca.issue("site", "site.test")
    port = free_port()
    d = qpxd(tls_reverse_to(port, site, o))
    evs = flood(port, ca, kind)
    gone = [e for e in evs if isinstance(e, ConnectionTerminated) and e.error_code]
    assert gone and gone[0].error_code == 11, evs[-3:]  # ENHANCE_YOUR_CALM
    d.wait_log(f"flood: over 1000 {what}")
    c = Client(port, ca)
    s = c.get("/local")
    assert c.run({s})[s]["status"] == 200


def test_graceful_stop_sends_goaway_and_open_streams_finish(qpxd, ca, origin):
    o = origin()
    site = ca.issue("site", "site.test")
    port = free_port()
    d = qpxd(tls_reverse_to(port, site, o))
    idle = Client(port, ca)  # an idle HTTP/2 connection: it gets GOAWAY at the drain
    s = idle.get("/local")
    assert idle.run({s})[s]["status"] == 200
    slow = subprocess.Popen(["curl", "-sS", "--http2", "--cacert", str(ca.path),
                             "--resolve", f"site.test:{port}:127.0.0.1", "-w",
                             "\n%{http_code} %{http_version}",
                             f"https://site.test:{port}/slow?s=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    os.kill(d.pid, signal.SIGTERM)
    goaway = None
    deadline = time.monotonic() + 10
    while goaway is None and time.monotonic() < deadline:
        goaway = next((e for e in idle.events(5.0) if isinstance(e, ConnectionTerminated)),
                      None)
    assert goaway is not None and goaway.error_code == 0, goaway
    out, err = slow.communicate(timeout=20)
    assert "GET /slow?s=2 HTTP/1.1" in out and out.endswith("200 2"), (out, err)
    assert d.proc.wait(20) == 0


@pytest.mark.parametrize("field", [(b"connection", b"keep-alive"), (b"te", b"gzip"),
                                   (b"transfer-encoding", b"chunked"),
                                   (b"upgrade", b"websocket")])
def test_connection_specific_fields_are_refused(qpxd, ca, origin, field):
    """RFC 9113 §8.2.2: a request with a connection-specific field is malformed; it never
    reaches the pipeline or the upstream."""
    o = origin()
    site = ca.issue("site", "site.test")
    port = free_port()
    qpxd(tls_reverse_to(port, site, o))
    c = Client(port, ca)
    c.h2.config.validate_outbound_headers = False  # let the bad field out
    c.h2.config.normalize_outbound_headers = False
    s = c.get("/x", [field])
    res = c.run({s}, timeout=10)
    assert res[s]["status"] in (None, 400), res
    assert not o.requests
