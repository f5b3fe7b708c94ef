"""Unit tests of the HTTP layer: head parsers (whole, fragmented, pipelined), chunked
decoding, head rewriting, header control.  The live-daemon tests cover the same rules end
to end; these pin the parsers' behaviour byte by byte, fast path and slow path alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qpx.config.model import HeaderControl, RegexReplace
from qpx.http.chunked import ChunkedDecoder, ChunkError
from qpx.http.errors import BadResponse, HttpError
from qpx.http.headers import rust_template
from qpx.http.request import Limits, RequestHeadParser, parse_host
from qpx.http.response import ResponseHeadParser
from qpx.policy import CompiledHeaderControl

BROWSER = (b"GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n"
           b"User-Agent: x\r\nConnection: keep-alive\r\nProxy-Connection: keep-alive\r\n"
           b"Accept: */*\r\n\r\n")


def parse(data: bytes, step: int | None = None):
    p = RequestHeadParser(Limits())
    if step is None:
        return p.feed(data), p.rest
    req = None
    for i in range(0, len(data), step):
        req = p.feed(data[i:i + step])
        if req is not None:
            return req, p.rest + data[i + step:]
    return req, b""


def summary(req):
    return (req.method, req.target, req.version, req.form, req.scheme, req.host, req.port,
            req.path, req.content_length, req.chunked, req.keep_alive, req.expect_continue,
            req.conn_tokens, req.upgrade, req.plain, req.headers)


@pytest.mark.parametrize("step", [None, 1, 2, 7, 64])
def test_fragmented_feeding_gives_the_same_request(step):
    whole, rest = parse(BROWSER + b"NEXT")
    assert rest == b"NEXT"
    req, rest2 = parse(BROWSER + b"NEXT", step)
    assert summary(req) == summary(whole) and rest2 == b"NEXT"
    assert whole.host == "example.com" and whole.port == 8080
    assert whole.path == "/a/b?c=d" and whole.form == "absolute"


def test_plain_forwarding_cuts_host_and_connection_lines():
    req, _ = parse(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n"
                   b"Connection: keep-alive\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n")
    assert req.plain
    assert req.forward_lines() == b"\r\nX-A: 1\r\nX-B: 2"
    assert req.keep_alive and req.content_length == 0


def test_rare_hop_by_hop_fields_take_the_general_path():
    req, _ = parse(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTE: trailers\r\n\r\n")
    assert not req.plain
    req, _ = parse(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: x-secret\r\n"
                   b"X-Secret: 1\r\n\r\n")
    assert not req.plain and req.conn_tokens == {b"x-secret"}
    req, _ = parse(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade-Insecure-Requests: 1\r\n\r\n")
    assert req.plain  # a field that merely starts like "upgrade" is not Upgrade


def test_leading_empty_lines_are_skipped():
    req, rest = parse(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nX")
    assert req.path == "/" and rest == b"X" and req.raw.startswith(b"GET ")


@pytest.mark.parametrize("data,status", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 40000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
])
def test_refusals(data, status):
    for step in (None, 3):
        with pytest.raises(HttpError) as e:
            r, _ = parse(data, step)
            assert r is not None, "incomplete head"
        assert e.value.status == status, e.value.reason


def test_parser_reuse_after_a_bodiless_request():
    p = RequestHeadParser(Limits())
    a = p.feed(b"GET http://a/1 HTTP/1.1\r\nHost: a\r\n\r\n")
    b = p.reset().feed(b"GET http://b/2 HTTP/1.1\r\nHost: b\r\n\r\n")
    assert (a.host, a.path, b.host, b.path) == ("a", "/1", "b", "/2")


@pytest.mark.parametrize("value,expected", [
    (b"Example.COM", ("example.com", None)), (b"a.b:8080", ("a.b", 8080)),
    (b"[::1]:443", ("::1", 443)), (b"example.com.", ("example.com", None)),
])
def test_parse_host(value, expected):
    assert parse_host(value) == expected


@pytest.mark.parametrize("value", [b"a b", b"a/b", b"u@a", b"a:99999", b"a:080", b"..", b"a,b",
                                   b"[1.2.3.4]", b""])
def test_parse_host_rejects(value):
    with pytest.raises(ValueError):
        parse_host(value)


RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
            b"Keep-Alive: timeout=5\r\nX-A: 1\r\n\r\nhello")


@pytest.mark.parametrize("step", [None, 1, 5])
def test_response_parse_and_forward_head(step):
    p = ResponseHeadParser()
    resp = None
    data = RESPONSE
    if step is None:
        resp = p.feed(data)
    else:
        for i in range(0, len(data), step):
            resp = p.feed(data[i:i + step])
            if resp is not None:
                break
    assert resp.status == 200 and resp.content_length == 5 and resp.keep_alive
    assert resp.forward_head() == b"\r\nServer: s\r\nX-A: 1"
    assert resp.forward_head(keep_length=True) == b"\r\nServer: s\r\nContent-Length: 5\r\nX-A: 1"


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
])
def test_response_refusals(head):
    # refused by the parser; the upstream exchange answers the client 502 for it
    with pytest.raises(BadResponse) as e:
        ResponseHeadParser().feed(head)
    assert e.value.reason


def test_response_with_nominated_fields_is_not_plain():
    resp = ResponseHeadParser().feed(b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\n"
                                     b"X-Secret: 1\r\nContent-Length: 0\r\n\r\n")
    assert resp.forward_head() is None and resp.conn_tokens == {b"x-secret"}
    assert [ln for ln, _, _ in resp.headers] == [b"connection", b"x-secret", b"content-length"]


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(1, 50))
def test_chunked_round_trip_any_split(pieces, step):
    data = chunked(pieces) + b"REST"
    d = ChunkedDecoder()
    out = b""
    for i in range(0, len(data), step):
        for p in d.feed(data[i:i + step]):
            out += bytes(p)
        if d.done:
            assert d.rest + data[i + step:] == b"REST"
            break
    assert d.done and out == b"".join(pieces)


@pytest.mark.parametrize("bad", [b"0x5\r\nhello\r\n0\r\n\r\n", b"0_2e\r\n\r\n",
                                 b"5\r\nhelloXX0\r\n\r\n", b"5 \r\nhello\r\n0\r\n\r\n",
                                 b"5\nhello\r\n0\r\n\r\n", b"12345678901234567\r\n",
                                 b"1;" + b"a" * 5000 + b"\r\nZ\r\n0\r\n\r\n",
                                 b"0\r\nBad Line\r\n\r\n", b"-1\r\n"])
def test_chunked_refusals(bad):
    with pytest.raises(ChunkError):
        d = ChunkedDecoder()
        d.feed(bad)
        assert d.done


def test_header_control_order_and_regex():
    hc = CompiledHeaderControl(HeaderControl(
        request_set=(("X-Set", "1"),), request_add=(("X-Add", "a"),),
        request_remove=("X-Gone",),
        request_regex_replace=(RegexReplace("User-Agent", r"curl/(\S+)", "agent-$1"),)))
    out = hc.request.apply([(b"x-set", b"X-Set", b"old"), (b"x-gone", b"X-Gone", b"1"),
                            (b"user-agent", b"User-Agent", b"curl/8.0")])
    assert out == [(b"x-set", b"X-Set", b"1"), (b"x-add", b"X-Add", b"a"),
                   (b"user-agent", b"User-Agent", b"agent-8.0")]


@pytest.mark.parametrize("rust,python", [("$1", r"\g<1>"), ("${name}x", r"\g<name>x"),
                                          ("$$", "$"), ("a\\b", "a\\\\b")])
def test_rust_replacement_templates(rust, python):
    assert rust_template(rust) == python


@pytest.mark.parametrize("target,expected", [
    ("/", "/"),
    ("/a/b?c=d", "/a/b?c=d"),
    ("/.well-known/x", "/.well-known/x"),
    ("/%61dmin", "/admin"),  # unreserved escapes decoded (RFC 3986 §6.2.2.2)
    ("/%7euser/%2fx", "/~user/%2Fx"),  # reserved ones kept, hex upper-cased
    ("/./admin", "/admin"),  # dot-segments (§5.2.4)
    ("/a/b/../c", "/a/c"),
    ("/a/../../b", "/b"),  # never above the root
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/a/%2e%2e/b", "/b"),  # an escaped dot-segment is a dot-segment
    ("//a///b", "/a/b"),  # merged slashes (nginx merge_slashes)
    ("/x?q=/./y//z", "/x?q=/./y//z"),  # the query is left alone
])
def test_normalize_path(target, expected):
    from qpx.http.request import normalize_path

    assert normalize_path(target) == expected


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%41", "%2F"]), max_size=8))
def test_normalize_path_is_idempotent_and_rooted(segments):
    from qpx.http.request import normalize_path

    once = normalize_path("/" + "/".join(segments))
    assert once.startswith("/") and normalize_path(once) == once
    assert "/./" not in once and "/../" not in once and "//" not in once


def test_parsed_targets_are_normalized_for_both_forms():
    req, _ = parse(b"GET http://h.test/a/./%62//c HTTP/1.1\r\nHost: h.test\r\n\r\n")
    assert req.path == "/a/b/c"
    req, _ = parse(b"GET /a/../b HTTP/1.1\r\nHost: h.test\r\n\r\n")
    assert req.path == "/b"


def test_h2c_upgrade_is_not_an_upgrade():
    req, _ = parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert req.upgrade is None
    req, _ = parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\n\r\n")
    assert req.upgrade == b"websocket"


def test_buffer_pool_caps_big_buffers_in_flight():
    from qpx.netio import BufferPool

    pool = BufferPool(size=1 << 20, max_big=2, small=1 << 16)
    lent = [pool.get() for _ in range(4)]
    assert [len(b) for b in lent] == [1 << 20, 1 << 20, 1 << 16, 1 << 16]
    pool.put(lent[0])
    assert len(pool.get()) == 1 << 20  # a big one is free again
    for b in lent[1:]:
        pool.put(b)
    assert pool.big_out == 1


def test_a_first_response_read_holds_no_buffer_while_it_waits():
    """A response's first read borrows its big buffer only once bytes are there: 50
    exchanges waiting on slow upstreams must not pin (or churn) 50 MiB of buffers."""
    import socket

    import gevent

    from qpx.netio import BufferPool, Conn

    pool = BufferPool(size=1 << 20, max_big=2, small=1 << 16)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = Conn(ours)
        reader = gevent.spawn(conn.recv_later_large, pool)
        gevent.sleep(0.05)
        assert not reader.ready() and pool.big_out == 0
        theirs.sendall(b"h" * 100000)
        assert reader.get(timeout=5) == b"h" * 100000
        assert pool.big_out == 0
        conn.close()
