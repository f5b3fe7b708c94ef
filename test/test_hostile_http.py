"""Every ``layer: http`` and ``layer: slow`` entry of the hostile corpus against a running
qpxd, once through a forward listener and once through a reverse listener.

Forward: ``app.example`` goes to a recording mock (as the upstream proxy), ``/admin`` and
``/denied`` are blocked, anything else from loopback goes direct; origin-form request
lines of the corpus are rewritten to absolute-form (a forward proxy refuses origin-form),
everything else is sent byte for byte.  Reverse: the same policy as routes (a local 403
for ``/admin`` and ``/denied``), the bytes exactly as in the corpus.  For every verdict
but ``accept``, the mock must have received zero bytes.  Where the corpus allows a
choice ("A-or-B"), ``PINNED`` records qpxd's answer (``REVERSE`` where it differs).
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from conftest import DEFAULTS, Daemon, free_port, merge
from hostile import entries, read_responses
from servers import Origin

PINNED = {
    "cl_duplicate_same": "400+close",        # llhttp refuses a repeated Content-Length
    "cl_leading_zeros": "accept",             # forwarded as Content-Length: 10
    "chunk_ext_oversized": "400+close",
    "chunk_trailer_forbidden_fields": "accept",  # trailers dropped, never merged
    "http09_request": "400+close",
    "h2_prior_knowledge_preface": "505+close",
    "method_lowercase_get": "501+close",      # llhttp knows no method "get"
    "method_too_long": "501+close",           # refused at the first bytes, not after 100 KB
    "absolute_form_unsupported_scheme": "501+close",
    "via_loop": "508+close",
    "get_with_body_kept": "accept",           # body forwarded intact with its length
    "pipelined_rule_each_request": "per-request-rules",
    "connect_no_port": "400+close",
    "connect_port_25": "403",
    "connect_loopback_v6": "403",
    "connect_zero_address": "403",
    "expect_100_then_deny": "403+close",
}

REVERSE = {
    "connect_port_25": "405+close",           # a reverse proxy serves no CONNECT
    "connect_loopback_v6": "405+close",
    "connect_zero_address": "405+close",
    "absolute_form_unsupported_scheme": "400+close",
    # h2c with prior knowledge is served on reverse listeners: the answer is qpxd's
    # HTTP/2 server preface (a SETTINGS frame), and nothing is tunnelled upstream
    "h2_prior_knowledge_preface": "h2-preface",
}

HTTP = [e for e in entries("http")]
ORIGIN_FORM = re.compile(rb"(GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH) (/[^ \r\n]*)(?=[ \r\n])")


def to_absolute(data: bytes) -> bytes:
    return ORIGIN_FORM.sub(lambda m: m.group(1) + b" http://app.example" + m.group(2), data)


@pytest.fixture(scope="module", params=["forward", "reverse"])
def setup(request, tmp_path_factory):
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"hostile-{mode}")
    mock = Origin("mock")
    port = free_port()
    runtime = {"client_keepalive_timeout_ms": 2000, "http_header_read_timeout_ms": 3000,
               "client_body_timeout_ms": 1500, "send_timeout_ms": 1500}
    if mode == "forward":
        edge = {"listeners": [{
            "name": "fwd", "mode": "forward", "listen": f"127.0.0.1:{port}",
            "default_action": {"type": "block"},
            "rules": [
                {"name": "deny-admin", "match": {"host": ["app.example"],
                                                 "path": ["/admin", "/denied"]},
                 "action": {"type": "block"}},
                {"name": "app", "match": {"host": ["app.example"]},
                 "action": {"type": "proxy", "upstream": "mock"}},
                {"name": "rest", "match": {"src_ip": ["127.0.0.0/8"]},
                 "action": {"type": "direct"}},
            ]}],
            "upstreams": [{"name": "mock", "url": f"http://127.0.0.1:{mock.port}"}]}
    else:
        edge = {"reverse": [{
            "name": "rev", "listen": f"127.0.0.1:{port}",
            "routes": [
                {"match": {"path": ["/admin", "/denied"]},
                 "local_response": {"status": 403, "body": "forbidden"}},
                {"match": {"host": ["app.example"]},
                 "upstreams": [f"http://127.0.0.1:{mock.port}"]},
            ]}]}
    cfg = merge(DEFAULTS, {"identity": {"proxy_name": "qpxd-node1"}, "runtime": runtime,
                           **edge})
    d = Daemon(tmp, cfg).start()
    yield mode, d, mock, port
    d.stop()
    mock.close()


def expectation(entry: dict, mode: str) -> str:
    if mode == "reverse" and entry["name"] in REVERSE:
        return REVERSE[entry["name"]]
    return PINNED.get(entry["name"], entry["expect"])


def send(port: int, data: bytes, timeout: float = 6.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_responses(s, timeout)


@pytest.mark.parametrize("entry", HTTP, ids=[e["name"] for e in HTTP])
def test_http_corpus_entry(setup, entry):
    mode, d, mock, port = setup
    with mock.lock:
        mock.received.clear()
        mock.requests.clear()
    verdict = expectation(entry, mode)
    if verdict == "h2-preface":
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(entry["data"])
            first = s.recv(9)
        assert len(first) == 9 and first[3] == 0x4 and first[5:9] == b"\0\0\0\0", first
        time.sleep(0.05)
        assert bytes(mock.received) == b""
        return
    data = to_absolute(entry["data"]) if mode == "forward" else entry["data"]
    responses, closed = send(port, data)
    statuses = [r[0] for r in responses]
    time.sleep(0.05)
    got = bytes(mock.received)

    if verdict == "accept":
        assert statuses and all(200 <= s < 300 for s in statuses), (statuses, d.log()[-2000:])
        assert mock.requests, "nothing reached the upstream"
        check_accepted(entry["name"], mock)
        return
    if verdict == "per-request-rules":
        assert statuses == [200, 403], statuses
        assert len(mock.requests) == 1 and b"/upload" in mock.requests[0][0]
        assert b"/admin" not in got
        return
    m = re.fullmatch(r"(\d{3})(\+close)?", verdict)
    assert m, f"unpinned verdict {verdict!r}"
    assert statuses[:1] == [int(m.group(1))], (statuses, responses[:1])
    if m.group(2):
        assert closed, "the connection stayed open after the error"
        assert len(responses) == 1
    assert got == b"", f"the upstream received {got[:200]!r}"


def check_accepted(name: str, mock: Origin) -> None:
    heads = [h.split(b"\r\n") for h, _ in mock.requests]
    if name == "cl_leading_zeros":
        assert b"Content-Length: 10" in heads[0] and b"Content-Length: 010" not in heads[0]
        assert mock.requests[0][1] == b"0123456789"
    elif name == "chunk_trailer_forbidden_fields":
        assert mock.requests[0][1] == b"hello"
        assert b"evil.example" not in bytes(mock.received)
    elif name == "get_with_body_kept":
        assert mock.requests[0][1] == b"1234567890"
        assert b"Content-Length: 10" in heads[0]
        assert len(mock.requests) == 2
    elif name == "te_case_insensitive_ok":
        assert mock.requests[0][1] == b"hello"
    elif name == "uri_8000_ok":
        assert b"a" * 7986 in heads[0][0]


def absolute(mode: str, data: bytes) -> bytes:
    return to_absolute(data) if mode == "forward" else data


def test_slow_body_is_cut_at_the_body_idle_deadline(setup):
    mode, d, mock, port = setup
    entry = next(e for e in entries("slow") if e["name"] == "slow_body_drip")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(absolute(mode, entry["data"]))
        t0 = time.monotonic()
        closed_at = None
        for _ in range(5):  # a byte every 2 s: slower than the 1.5 s body idle deadline
            try:
                s.sendall(b"x")
                s.settimeout(2.0)
                data = s.recv(4096)
                if data == b"" or data:
                    closed_at = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - t0
                break
        assert closed_at is not None and closed_at < 4, closed_at


def test_slow_reader_is_cut_at_the_send_deadline(setup):
    mode, d, mock, port = setup
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(absolute(mode, b"GET /size/50000000 HTTP/1.1\r\nHost: app.example\r\n\r\n"))
    time.sleep(4.0)  # never read: qpxd's send deadline (1.5 s) must fire
    s.settimeout(5)
    total = 0
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    s.close()
    assert total < 50000000, "the whole body was delivered to a client that never read"


def test_slowloris_header_drip_is_cut_at_the_header_deadline(setup):
    mode, d, mock, port = setup
    entry = next(e for e in entries("slow") if e["name"] == "slowloris_header_drip")
    data = absolute(mode, entry["data"])
    with mock.lock:
        mock.received.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        answer = None
        for i in range(len(data)):
            try:
                s.sendall(data[i:i + 1])
                s.settimeout(0.5)
                answer = s.recv(4096)
                break  # the server spoke (408) or closed (b"")
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
                break
        took = time.monotonic() - t0
    assert answer is not None, "the trickling client was never cut off"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert 2.5 < took < 5.0, took  # the 3 s deadline is for the whole head
    assert bytes(mock.received) == b""
