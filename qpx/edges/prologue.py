"""Who is on the other end, and the connection prologue before any HTTP byte.

- :class:`Client` holds the socket peer and what PROXY metadata said about the client.
- :func:`prologue` runs on every accepted connection: PROXY trust and metadata
  (reliability-anchors §1.5, parsed by :mod:`qpx.proxyproto`), then the connection
  filter.  A refusal closes without a response (the peer may be an L4 frontend, not a
  browser) and logs one line (:func:`closed_before_http`).
"""

from __future__ import annotations

import logging
import time

from .. import log
from ..netio import Conn, DeadlineExceeded
from ..policy import TrustSet, parse_ip
from ..proxyproto import ProxyHeaderParser, ProxyProtocolError, could_be_header
from .services import Services

monotonic = time.monotonic

class Client:
    """Who is on the other end: the socket peer, and the client PROXY metadata named."""

    __slots__ = ("peer_ip", "peer_port", "local_ip", "local_port", "ip", "port", "key",
                 "proxy_dst", "label", "sni", "tls")

    def __init__(self, peer: tuple, local: tuple):
        self.peer_ip, self.peer_port = peer[0], peer[1]
        self.local_ip, self.local_port = local[0], local[1]
        self.ip, self.port = self.peer_ip, self.peer_port
        self.key = parse_ip(self.ip)
        self.proxy_dst: tuple[str, int] | None = None
        self.label = f"{self.ip}:{self.port}"
        self.sni: str | None = None  # TLS-terminated connections: the ClientHello's name
        self.tls: str | None = None  # ... and the protocol version ("TLSv1.3")

    def set_source(self, ip: str, port: int) -> None:
        self.ip, self.port = ip, port
        self.key = parse_ip(ip)
        self.label = f"{ip}:{port}"

    @property
    def dst_port(self) -> int:
        """The port the client connected to (PROXY destination when known)."""
        return self.proxy_dst[1] if self.proxy_dst else self.local_port


def prologue(conn: Conn, client: Client, services: Services, name: str, xdp, trusted:
             TrustSet | None, filt, exact: bool = False) -> bytes | None:
    """PROXY metadata and connection filter.  Returns the bytes already read that belong
    to the application protocol, or None when the connection must be closed (the reason
    is logged; nothing is sent: the peer may be an L4 frontend, not a browser).
    ``exact``: read nothing past the PROXY header (TLS listeners: OpenSSL must find the
    ClientHello in the socket); the result is then always ``b""``."""
    data = b""
    if trusted is not None:
        if client.peer_ip not in trusted:
            if xdp.require_metadata:
                _refuse(services, name, client, "proxy-untrusted-peer",
                        "PROXY metadata required but the peer is not trusted")
                return None
        else:
            data = _proxy_header(conn, client, services, name, xdp, exact)
            if data is None:
                return None
    if filt is not None:
        hit = filt.match(client.key, client.dst_port)
        if hit is not None:
            if services.metrics is not None:
                services.metrics.filter_drop(name, hit)
            closed_before_http(name, client, "filter", f"dropped by connection filter {hit}")
            return None
    return data


def _proxy_header(conn: Conn, client: Client, services: Services, name: str, xdp,
                  exact: bool = False) -> bytes | None:
    """Read a trusted peer's PROXY header under ``metadata_timeout_ms`` and apply it to
    ``client``; the bytes after it, or None (refused and logged).  ``exact``: peek, and
    consume only the header's own bytes."""
    required = xdp.require_metadata
    version = 2 if xdp.metadata_mode == "proxy-v2" else 1
    parser = ProxyHeaderParser(version)
    conn.deadline = monotonic() + xdp.metadata_timeout_ms / 1000.0
    data = b""
    info = None
    try:
        while info is None:
            chunk = conn.peek() if exact else conn.recv()
            if not chunk:
                _refuse(services, name, client, "proxy-eof",
                        "connection closed before the PROXY header")
                return None
            data += chunk
            try:
                info = parser.feed(chunk)
            except ProxyProtocolError as e:
                if not required and not could_be_header(data, version) \
                        and (not exact or data == chunk):
                    conn.deadline = 0.0
                    # optional metadata, plain client: keep its bytes (in the socket
                    # when exact)
                    return b"" if exact else data
                _refuse(services, name, client, f"proxy-{e.reason}", str(e))
                return None
            if exact:  # take the header's bytes out of the socket, nothing more
                conn.recv(len(chunk) - (len(parser.remainder) if info is not None else 0))
    except DeadlineExceeded:
        _refuse(services, name, client, "proxy-timeout",
                "PROXY header not complete before the deadline")
        return None
    except OSError as e:
        _refuse(services, name, client, "proxy-io", str(e))
        return None
    conn.deadline = 0.0
    if info.src is None:
        if required:
            _refuse(services, name, client, f"proxy-{info.command}-{info.family}",
                    f"PROXY {info.command} {info.family} carries no client "
                    "address and metadata is required")
            return None
    else:
        client.set_source(info.src[0], info.src[1])
        client.proxy_dst = info.dst
    if services.metrics is not None:
        services.metrics.proxy_header(name, "accepted")
    return b"" if exact else parser.remainder


def _refuse(services: Services, name: str, client: Client, reason: str, detail: str) -> None:
    if services.metrics is not None:
        services.metrics.proxy_header(name, reason)
    closed_before_http(name, client, reason, detail)


def closed_before_http(name: str, client: Client, reason: str, detail: str) -> None:
    """The one log line of a connection that ends before its first request: refused
    PROXY header, filter drop, nothing sent in time, closed or reset silently."""
    log.log(logging.INFO, "connection closed before HTTP", listener=name,
            peer=f"{client.peer_ip}:{client.peer_port}", reason=reason, detail=detail)
