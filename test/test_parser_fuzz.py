"""Hypothesis fuzzing of the three parsers that read bytes from the network: PROXY v1,
PROXY v2 and the HTTP/1.1 request head.  The property: whatever the bytes and however
they are split, a parser answers "need more", a result, or its own error type
(ProxyProtocolError, HttpError) — never any other exception.

`make test` runs a bounded number of examples; `make soak` (marker ``slow``) runs
10⁵ per parser, as issue 6 asks.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qpx.http.errors import HttpError
from qpx.http.request import Limits, RequestHeadParser
from qpx.proxyproto import ProxyHeaderParser, ProxyProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

# Bytes that look like the start of a header more often than chance would, so the fuzzer
# gets past the first checks: real prefixes, then noise.
PROXY_BYTES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda rest: b"PROXY " + rest, st.binary(max_size=120)),
    st.builds(lambda fam, rest: b"PROXY " + fam + b" " + rest,
              st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN"]), st.binary(max_size=100)),
    st.builds(lambda vc, fam, n, rest: V2_SIGNATURE + bytes([vc, fam]) + n.to_bytes(2, "big")
              + rest,
              st.sampled_from([0x20, 0x21, 0x22, 0x11, 0x31]),
              st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x99]),
              st.integers(0, 600), st.binary(max_size=600)),
)

HTTP_BYTES = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda m, t, rest: m + b" " + t + b" HTTP/1.1\r\n" + rest,
              st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS", b"G\x00T", b"get"]),
              st.sampled_from([b"/", b"http://a/b", b"a:443", b"*", b"/%61/../x", b"//x",
                               b"http://[::1]:8/", b"http://a b/"]),
              st.binary(max_size=300)),
    st.builds(lambda fields: b"GET http://h/ HTTP/1.1\r\n" + b"".join(
        n + b":" + v + b"\r\n" for n, v in fields) + b"\r\n",
        st.lists(st.tuples(st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding",
                                            b"Connection", b"Upgrade", b"Expect", b"X"]),
                           st.binary(max_size=30)), max_size=6)),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points:
        chunks.append(data[last:p])
        last = p
    chunks.append(data[last:])
    return [c for c in chunks if c]


def _feed(parser, own_error: type[Exception], data: bytes, cuts: list[int]) -> None:
    try:
        for chunk in _split(data, cuts):
            if parser.feed(chunk) is not None:
                return
    except own_error:
        return


def _feed_proxy(version: int, data: bytes, cuts: list[int]) -> None:
    _feed(ProxyHeaderParser(version), ProxyProtocolError, data, cuts)


def _feed_http(data: bytes, cuts: list[int]) -> None:
    _feed(RequestHeadParser(Limits(max_line=200, max_head=600, max_count=8)), HttpError,
          data, cuts)


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


CUTS = st.lists(st.integers(0, 1000), max_size=4)


@given(PROXY_BYTES, CUTS)
@fuzz(1500)
def test_proxy_v1_parser_only_raises_its_own_error(data, cuts):
    _feed_proxy(1, data, cuts)


@given(PROXY_BYTES, CUTS)
@fuzz(1500)
def test_proxy_v2_parser_only_raises_its_own_error(data, cuts):
    _feed_proxy(2, data, cuts)


@given(HTTP_BYTES, CUTS)
@fuzz(1500)
def test_http_request_parser_only_raises_its_own_error(data, cuts):
    _feed_http(data, cuts)


@pytest.mark.slow
@pytest.mark.parametrize("parser", ["proxy-v1", "proxy-v2", "http"])
def test_hundred_thousand_inputs_per_parser(parser):
    if parser == "http":
        body = given(HTTP_BYTES, CUTS)(fuzz(100_000)(_feed_http))
    else:
        version = 1 if parser == "proxy-v1" else 2
        body = given(PROXY_BYTES, CUTS)(fuzz(100_000)(
            lambda data, cuts: _feed_proxy(version, data, cuts)))
    body()
