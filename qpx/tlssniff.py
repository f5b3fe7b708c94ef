"""Reading the server name out of a TLS ClientHello, sans-IO (RFC 8446 §4.1.2, RFC 6066 §3).

Transparent and passthrough paths never terminate TLS: they only need the SNI to decide,
then relay the bytes untouched.  :class:`ClientHelloSniffer` takes bytes as they arrive,
reassembles the handshake message across TLS records (a ClientHello with post-quantum
key shares spans several records), and is bounded at ``MAX_HELLO`` bytes.  It answers
``None`` (need more), or a :class:`Hello` with the SNI (or ``None`` when the client sent
none), or raises :class:`NotTls` when the bytes are not a ClientHello at all.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HELLO = 65536
HANDSHAKE = 22
CLIENT_HELLO = 1


class NotTls(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Hello:
    sni: str | None
    alpn: tuple[str, ...] = ()


def looks_like_tls(data: bytes) -> bool:
    """The first bytes of a TLS handshake record carrying a ClientHello."""
    return len(data) >= 6 and data[0] == HANDSHAKE and data[1] == 3 and data[5] == CLIENT_HELLO


class ClientHelloSniffer:
    def __init__(self):
        self.raw = bytearray()

    def feed(self, data: bytes) -> Hello | None:
        self.raw += data
        raw = self.raw
        if len(raw) > MAX_HELLO + 5 * 16:
            raise NotTls("ClientHello larger than 64 KiB")
        body = bytearray()
        pos = 0
        while pos + 5 <= len(raw):
            if raw[pos] != HANDSHAKE or raw[pos + 1] != 3:
                raise NotTls("not a TLS handshake record")
            length = int.from_bytes(raw[pos + 3:pos + 5], "big")
            if length == 0 or length > 16384 + 2048:
                raise NotTls("bad TLS record length")
            if pos + 5 + length > len(raw):
                body += raw[pos + 5:]
                break
            body += raw[pos + 5:pos + 5 + length]
            pos += 5 + length
            if len(body) >= 4:
                need = 4 + int.from_bytes(body[1:4], "big")
                if len(body) >= need:
                    break
        if len(body) < 4:
            return None
        if body[0] != CLIENT_HELLO:
            raise NotTls("first handshake message is not a ClientHello")
        need = 4 + int.from_bytes(body[1:4], "big")
        if need > MAX_HELLO:
            raise NotTls("ClientHello larger than 64 KiB")
        if len(body) < need:
            return None
        return parse_client_hello(bytes(body[4:need]))


def parse_client_hello(msg: bytes) -> Hello:
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + msg[pos]  # session id
        pos += 2 + int.from_bytes(msg[pos:pos + 2], "big")  # cipher suites
        pos += 1 + msg[pos]  # compression methods
        if pos == len(msg):
            return Hello(None)
        end = pos + 2 + int.from_bytes(msg[pos:pos + 2], "big")
        if end > len(msg):
            raise NotTls("extensions overrun the ClientHello")
        pos += 2
        sni = None
        alpn: list[str] = []
        while pos + 4 <= end:
            etype = int.from_bytes(msg[pos:pos + 2], "big")
            elen = int.from_bytes(msg[pos + 2:pos + 4], "big")
            data = msg[pos + 4:pos + 4 + elen]
            if len(data) != elen:
                raise NotTls("extension overruns the ClientHello")
            pos += 4 + elen
            if etype == 0 and sni is None:
                sni = _server_name(data)
            elif etype == 16:
                alpn = _alpn(data)
        return Hello(sni, tuple(alpn))
    except IndexError:
        raise NotTls("truncated ClientHello") from None


def _server_name(data: bytes) -> str | None:
    total = int.from_bytes(data[0:2], "big")
    pos, end = 2, min(2 + total, len(data))
    while pos + 3 <= end:
        kind = data[pos]
        n = int.from_bytes(data[pos + 1:pos + 3], "big")
        name = data[pos + 3:pos + 3 + n]
        pos += 3 + n
        if kind == 0:
            try:
                text = name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                raise NotTls("server name is not ASCII") from None
            if not text or any(not (c.isalnum() or c in "-._") for c in text):
                raise NotTls("invalid server name")
            return text
    return None


def _alpn(data: bytes) -> list[str]:
    out, pos = [], 2
    while pos < len(data):
        n = data[pos]
        out.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return out
