"""PROXY protocol v1/v2 header parsing, sans-IO.

What this module owns
---------------------
Turning the first bytes of a connection from a trusted L4 frontend into either a
fully validated :class:`ProxyInfo` plus the bytes that followed the header
(:attr:`ProxyHeaderParser.remainder`, which belong to the HTTP layer untouched),
or a :class:`ProxyProtocolError` whose ``reason`` is a stable slug for metrics and
logs.  It does no I/O and imports no gevent: the connection handler reads, calls
:meth:`ProxyHeaderParser.feed`, and acts on the answer.

The caller keeps the duties that need a socket or a clock (qpxd-R1..R9 in
``spec/reliability-anchors.md`` §1.5): deciding by peer address whether a header
is expected at all (R1; this parser must never be used to *guess*), the one
header deadline (R4), closing on EOF before the header is complete, closing
without an HTTP response and counting ``err.reason`` (R8), and using the
socket's own endpoints when the result carries none (LOCAL, UNKNOWN, UNSPEC;
R7, R9).

Spec: HAProxy ``doc/proxy-protocol.txt``: §2.1 (text format, v1), §2.2 (binary
format, v2), §2.2.1-§2.2.6 (TLVs), §2 and §5 (receiver duties), summarised in
``spec/reliability-anchors.md`` §1.1-§1.5.

Strategy
--------
* **Configured, never detected** (§2, §1.5 R2): a parser is built for the one
  version the listener is configured for.  Its first byte must be ``P`` (v1) or
  ``\\r`` (v2); anything else, including the other version's header, is an
  error at once.
* **Exact grammar or abort** (§2.1 "anything not exactly matching", R5).  v1:
  only printable US-ASCII, one SP between fields, CRLF only, the whole line at
  most 107 bytes, IPv4 as four decimal octets without leading zeroes, IPv6 by
  character whitelist then ``inet_pton`` (so no zone ids, no names), ports as
  decimal digits 0..65535 without leading zeroes (matched by regex before
  ``int()``, which alone would take ``+1``, ``1_0`` or ``' 1'``).  ``UNKNOWN``
  ignores the rest of its line (§2.1) up to the 107-byte worst case.  v2:
  signature, version 2, command LOCAL/PROXY, family/transport from the table in
  §2.2, ``len`` at most 4096 (DESIGN.md), the address block inside ``len``
  (CVE-2019-14243), and every TLV inside ``16 + len`` with the header ending on
  a TLV boundary; CRC32C exactly 4 bytes and matching (RFC 4960 App. B, via the
  ``crc32c`` package), AUTHORITY valid UTF-8 without control characters and at
  most 255 bytes, UNIQUE_ID at most 128 bytes, SSL at least 5 bytes with its
  sub-TLVs bounded by it exactly; unknown types are bounds-checked and kept.
* **Fail as soon as the bytes prove it** (§2.1 "preferably immediately"): the
  v1 prefix and the v2 signature byte by byte; v1 characters, the line length,
  and each field while it arrives (proto, IPv4 and ports as exact prefixes,
  IPv6 by character set until its field ends); the v2 fixed part as soon as
  bytes 13, 14 and 16 are in; each TLV header once its three bytes are in and
  each TLV value once it is complete; the CRC last.  The checks run in byte
  order and each sees only bytes up to the one that decides it, so the
  verdict, reason included, does not depend on how TCP split the header (§2
  recommends tolerating fragmentation; nginx #1400, twisted #8287).
* **Bounded work** (R3): v1 never looks past byte 107, v2 never past
  ``16 + len``; a partly received v2 header resumes its TLV walk where it
  stopped, so drip-fed bytes cost linear time.  Bytes after the header are
  never inspected.
* **Semantics kept narrow**: LOCAL skips ``len`` bytes and ignores the family
  byte and TLVs (§2.2: "discard the protocol block including the family");
  PROXY with AF_UNSPEC skips its block too ("ignore address information");
  valid combinations we do not serve (UDP over IPv4/IPv6) are fully validated
  but reported as ``unspec`` without addresses, so UDP ports never reach
  ``dst_port`` rules.  AF_UNIX is refused: qpxd has no use for it.  Registered
  TLV types other than NOOP may appear only once, so nothing downstream can
  disagree about which AUTHORITY or CRC32C counted.

Reason slugs: ``bad-first-byte``; v1: ``v1-bad-prefix``, ``v1-bad-char``,
``v1-bare-cr``, ``v1-bare-lf``, ``v1-too-long``, ``v1-bad-proto``,
``v1-bad-separator``, ``v1-too-many-fields``, ``v1-missing-field``,
``v1-bad-address``, ``v1-bad-port``; v2: ``v2-bad-signature``,
``v2-bad-version``, ``v2-bad-command``, ``v2-bad-family``,
``v2-bad-transport``, ``v2-unix-unsupported``, ``v2-too-long``,
``v2-address-truncated``, ``v2-tlv-overrun``, ``v2-duplicate-tlv``,
``v2-crc-bad-length``, ``v2-crc-mismatch``, ``v2-authority-too-long``,
``v2-bad-authority``, ``v2-unique-id-too-long``, ``v2-ssl-too-short``,
``v2-ssl-tlv-overrun``.
"""

from __future__ import annotations

import re
import socket  # inet_pton/inet_ntop only: text <-> packed addresses, no I/O
from dataclasses import dataclass

import crc32c

__all__ = ["ProxyHeaderParser", "ProxyInfo", "ProxyProtocolError"]


class ProxyProtocolError(ValueError):
    """The bytes received cannot be a valid PROXY header: close the connection.

    ``reason`` is a short stable slug (see the module docstring); ``str(err)``
    is a sentence in which untrusted bytes only ever appear escaped and cut.
    """

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """A complete, validated PROXY header.

    ``src``/``dst`` are ``(ip, port)`` with the ip in canonical text form
    (``inet_ntop``: RFC 5952, IPv4-mapped as ``::ffff:a.b.c.d``); ``None`` for
    LOCAL, v1 UNKNOWN and v2 UNSPEC, where the socket endpoints apply.
    """

    version: int
    command: str  # "proxy" | "local"
    family: str  # "tcp4" | "tcp6" | "unknown" (v1) | "unspec" (v2)
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    authority: str | None = None  # TLV 0x02
    unique_id: bytes | None = None  # TLV 0x05
    alpn: bytes | None = None  # TLV 0x01
    tlvs: tuple[tuple[int, bytes], ...] = ()  # every top-level TLV, in order


def _show(data: bytes, limit: int = 32) -> str:
    """Render untrusted bytes for a message: escaped by repr(), cut at limit."""
    text = repr(bytes(data[:limit]))
    return text + "..." if len(data) > limit else text


# --------------------------------------------------------------------- v1 (§2.1)

_V1_PREFIX = b"PROXY "
_V1_MAX_LINE = 107  # worst case "PROXY UNKNOWN <ipv6> <ipv6> 65535 65535\r\n"
_V1_CR_WINDOW = _V1_MAX_LINE - 1  # the CR must sit below this index for its LF to fit
_V1_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0..255, no leading zero
_V1_IPV4 = re.compile(rb"(?:%s\.){3}%s" % (_OCTET, _OCTET))
_V1_IPV4_PREFIX = re.compile(rb"(?:%s\.){0,3}%s?" % (_OCTET, _OCTET))
_V1_IPV6_CHARS = re.compile(rb"[0-9A-Fa-f:.]{0,45}")  # 45 = six groups + dotted quad
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_PROTOS = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_FIELDS = ("source address", "destination address", "source port", "destination port")
_V1_UNKNOWN = ProxyInfo(1, "proxy", "unknown", None, None)


def _v1_port(value: bytes) -> int | None:
    if _V1_PORT.fullmatch(value):
        port = int(value)  # safe: plain ASCII digits only
        if port <= 0xFFFF:
            return port
    return None


def _v1_field_error(proto: bytes, index: int, value: bytes) -> ProxyProtocolError:
    reason = "v1-bad-address" if index < 2 else "v1-bad-port"
    return ProxyProtocolError(
        reason, f"invalid {_V1_FIELDS[index]} {_show(value)} in a {proto.decode()} line"
    )


def _v1_address(proto: bytes, index: int, value: bytes) -> str:
    if proto == b"TCP4":
        if _V1_IPV4.fullmatch(value):
            return value.decode("ascii")  # already canonical: no leading zeroes
    elif _V1_IPV6_CHARS.fullmatch(value):
        try:
            packed = socket.inet_pton(socket.AF_INET6, value.decode("ascii"))
        except OSError:
            pass
        else:
            return socket.inet_ntop(socket.AF_INET6, packed)
    raise _v1_field_error(proto, index, value)


def _v1_growing_field_ok(proto: bytes, index: int, value: bytes) -> bool:
    """Can `value`, the field still arriving, be the start of a valid one?"""
    if index >= 2:
        return not value or _v1_port(value) is not None
    if proto == b"TCP4":
        return _V1_IPV4_PREFIX.fullmatch(value) is not None
    return _V1_IPV6_CHARS.fullmatch(value) is not None


def _v1_fields(line: bytes, complete: bool) -> tuple[bytes, list[str], list[int]]:
    """Check the fields of `line` (the text after "PROXY ") left to right.

    With complete=False no CRLF has arrived yet and the last field may still be
    growing, so it is checked only as a possible prefix.  Returns the proto and
    the parsed addresses and ports (what is complete of them).
    """
    proto, *values = line.split(b" ")
    if not values and not complete:
        if not any(known.startswith(proto) for known in _V1_PROTOS):
            raise ProxyProtocolError("v1-bad-proto", f"unknown protocol {_show(proto)}")
        return proto, [], []
    if proto == b"UNKNOWN":  # §2.1: the rest of the line is ignored
        return proto, [], []
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(
            "v1-bad-proto", f"protocol {_show(proto)} is not TCP4, TCP6 or UNKNOWN"
        )
    addresses: list[str] = []
    ports: list[int] = []
    for index, value in enumerate(values):
        if index == len(_V1_FIELDS):
            raise ProxyProtocolError(
                "v1-too-many-fields", "data after the destination port (a trailing SP?)"
            )
        if not complete and index == len(values) - 1:
            if not _v1_growing_field_ok(proto, index, value):
                raise _v1_field_error(proto, index, value)
        elif not value:
            raise ProxyProtocolError(
                "v1-bad-separator",
                f"empty {_V1_FIELDS[index]}: fields are separated by exactly one SP",
            )
        elif index < 2:
            addresses.append(_v1_address(proto, index, value))
        else:
            port = _v1_port(value)
            if port is None:
                raise _v1_field_error(proto, index, value)
            ports.append(port)
    return proto, addresses, ports


def _v1_info(line: bytes) -> ProxyInfo:
    proto, addresses, ports = _v1_fields(line, complete=True)
    if proto == b"UNKNOWN":
        return _V1_UNKNOWN
    if len(ports) < 2:
        missing = _V1_FIELDS[len(addresses) + len(ports)]
        raise ProxyProtocolError("v1-missing-field", f"the line ends before the {missing}")
    return ProxyInfo(
        1,
        "proxy",
        "tcp4" if proto == b"TCP4" else "tcp6",
        (addresses[0], ports[0]),
        (addresses[1], ports[1]),
    )


def _v1_bad_byte(buf: bytearray, at: int) -> ProxyProtocolError:
    byte = buf[at]
    if byte == 0x0D:
        return ProxyProtocolError("v1-bare-cr", f"CR not followed by LF at offset {at}")
    if byte == 0x0A:
        return ProxyProtocolError("v1-bare-lf", f"LF without CR at offset {at}")
    return ProxyProtocolError("v1-bad-char", f"non-printable byte 0x{byte:02x} at offset {at}")


# --------------------------------------------------------------------- v2 (§2.2)

_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature + ver_cmd + fam + len
_V2_MAX_LEN = 4096  # largest `len` accepted: the header is at most 16 + 4096 bytes
_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC = 0x00
_V2_ADDRESS_LEN = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36}  # TCP4, UDP4, TCP6, UDP6
_V2_STREAM = {0x11: ("tcp4", 4), 0x21: ("tcp6", 16)}  # family name, address width

_TLV_ALPN, _TLV_AUTHORITY, _TLV_CRC32C, _TLV_UNIQUE_ID, _TLV_SSL = 0x01, 0x02, 0x03, 0x05, 0x20
# Registered types that describe one property of the connection: at most once each.
_TLV_NAMES = {
    _TLV_ALPN: "ALPN",
    _TLV_AUTHORITY: "AUTHORITY",
    _TLV_CRC32C: "CRC32C",
    _TLV_UNIQUE_ID: "UNIQUE_ID",
    _TLV_SSL: "SSL",
    0x30: "NETNS",
}
_TLV_SIZES = {  # type: (min, max, reason) -- §2.2.3, §2.2.5, §2.2.6; HAProxy's 255
    _TLV_CRC32C: (4, 4, "v2-crc-bad-length"),
    _TLV_AUTHORITY: (0, 255, "v2-authority-too-long"),
    _TLV_UNIQUE_ID: (0, 128, "v2-unique-id-too-long"),
    _TLV_SSL: (5, _V2_MAX_LEN, "v2-ssl-too-short"),  # client(1) + verify(4)
}
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _check_v2_family(fam: int) -> None:
    """The family/transport byte of a PROXY command (§2.2 table)."""
    if fam >> 4 > 3:
        raise ProxyProtocolError("v2-bad-family", f"address family {fam >> 4} is undefined")
    if fam & 0x0F > 2:
        raise ProxyProtocolError("v2-bad-transport", f"transport {fam & 0x0F} is undefined")
    if fam >> 4 == 3:
        raise ProxyProtocolError("v2-unix-unsupported", "AF_UNIX addresses are not supported")
    if fam != _UNSPEC and fam not in _V2_ADDRESS_LEN:
        raise ProxyProtocolError(
            "v2-bad-family", f"family/transport byte 0x{fam:02x} is not a defined combination"
        )


def _check_tlv_head(kind: int, size: int, earlier: list[tuple[int, bytes]]) -> None:
    """What a TLV's type and length alone can prove wrong."""
    if kind in _TLV_NAMES and any(seen == kind for seen, _ in earlier):
        raise ProxyProtocolError("v2-duplicate-tlv", f"second {_TLV_NAMES[kind]} TLV")
    if kind in _TLV_SIZES:
        low, high, reason = _TLV_SIZES[kind]
        if not low <= size <= high:
            raise ProxyProtocolError(
                reason, f"{_TLV_NAMES[kind]} TLV of {size} bytes (allowed {low}..{high})"
            )


def _check_tlv_value(kind: int, value: bytes) -> None:
    """What a complete TLV value can prove wrong."""
    if kind == _TLV_AUTHORITY:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProxyProtocolError(
                "v2-bad-authority", f"AUTHORITY {_show(value)} is not valid UTF-8"
            ) from None
        if _CONTROL_CHARS.search(text):
            raise ProxyProtocolError(
                "v2-bad-authority", f"AUTHORITY {_show(value)} contains control characters"
            )
    elif kind == _TLV_SSL:  # sub-TLVs after client(1) + verify(4), bounded by the parent
        pos, end = 5, len(value)
        while end - pos >= 3:
            pos += 3 + (value[pos + 1] << 8 | value[pos + 2])
        if pos != end:
            raise ProxyProtocolError(
                "v2-ssl-tlv-overrun", "SSL sub-TLVs do not end exactly where the SSL TLV ends"
            )


def _v2_endpoints(header: bytes, width: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """Source and destination of an INET (width 4) or INET6 (16) address block (§2.2)."""
    family = socket.AF_INET if width == 4 else socket.AF_INET6
    dst_at, ports_at = _V2_FIXED + width, _V2_FIXED + 2 * width
    src_ip = socket.inet_ntop(family, header[_V2_FIXED:dst_at])
    dst_ip = socket.inet_ntop(family, header[dst_at:ports_at])
    src_port = header[ports_at] << 8 | header[ports_at + 1]
    dst_port = header[ports_at + 2] << 8 | header[ports_at + 3]
    return (src_ip, src_port), (dst_ip, dst_port)


# --------------------------------------------------------------------- parser


def could_be_header(data: bytes, version: int) -> bool:
    """Whether ``data`` is (the start of) a PROXY header of ``version``: a peer for which
    metadata is optional may be a plain client, whose bytes are then served as its own."""
    sig = _V1_PREFIX if version == 1 else _V2_SIGNATURE
    n = min(len(data), len(sig))
    return data[:n] == sig[:n]


def _bad_start(head: bytes, expected: bytes, version: int) -> ProxyProtocolError:
    """The header's fixed opening (v1 "PROXY ", v2 signature) does not match."""
    if head[0] != expected[0]:
        other = _V2_SIGNATURE if version == 1 else _V1_PREFIX
        hint = ""
        if head[0] == other[0]:
            hint = f" (it may be a PROXY v{3 - version} header; this listener expects v{version})"
        return ProxyProtocolError(
            "bad-first-byte",
            f"first byte {_show(head[:1])} cannot start a PROXY v{version} header{hint}",
        )
    at = next(i for i, (got, want) in enumerate(zip(head, expected)) if got != want)
    return ProxyProtocolError(
        "v1-bad-prefix" if version == 1 else "v2-bad-signature",
        f"byte {at} of the PROXY v{version} header is {_show(head[at : at + 1])}, "
        f"expected {_show(expected[at : at + 1])}",
    )


class ProxyHeaderParser:
    """Incremental parser for one PROXY header of the configured version.

    ``feed()`` returns ``None`` while more bytes are needed (the caller's
    deadline bounds the wait), the :class:`ProxyInfo` once the header is
    complete, or raises :class:`ProxyProtocolError` as soon as the bytes so far
    cannot be a valid header.  After it returned a result or raised, the parser
    is finished: a further ``feed()`` is a caller bug and raises RuntimeError,
    not a ProxyProtocolError, so it never counts as a peer's fault.  EOF is
    not signalled here; ``feed(b"")`` just adds nothing.
    """

    __slots__ = (
        "_version", "_buf", "_state", "_remainder", "_total", "_tlv_pos", "_tlvs", "_crc_at"
    )

    def __init__(self, version: int) -> None:
        if version not in (1, 2):
            raise ValueError(f"PROXY protocol version must be 1 or 2, not {version!r}")
        self._version = version
        self._buf = bytearray()
        self._state = "reading"  # -> "done" | "failed"
        self._remainder = b""
        # v2 only: 16 + len once the fixed part passed (0 before), where the
        # TLV walk resumes, the complete TLVs so far, the CRC32C value offset.
        self._total = 0
        self._tlv_pos = 0
        self._tlvs: list[tuple[int, bytes]] = []
        self._crc_at = 0

    @property
    def remainder(self) -> bytes:
        """Bytes received after the header; they belong to the HTTP layer."""
        if self._state != "done":
            raise RuntimeError("remainder is only defined after feed() returned a ProxyInfo")
        return self._remainder

    def feed(self, data: bytes) -> ProxyInfo | None:
        """Add bytes; return the ProxyInfo once the whole header is in."""
        if self._state != "reading":
            raise RuntimeError(f"feed() on a PROXY header parser that is already {self._state}")
        self._buf += data
        try:
            done = self._parse_v1() if self._version == 1 else self._parse_v2()
        except ProxyProtocolError:
            self._state, self._buf = "failed", bytearray()
            raise
        if done is None:
            return None
        info, size = done
        self._state, self._remainder, self._buf = "done", bytes(self._buf[size:]), bytearray()
        return info

    def _parse_v1(self) -> tuple[ProxyInfo, int] | None:
        buf = self._buf
        head = bytes(buf[:6])
        if not _V1_PREFIX.startswith(head):
            raise _bad_start(head, _V1_PREFIX, 1)
        if len(head) < 6:
            return None
        special = _V1_NOT_PRINTABLE.search(buf, 6, _V1_CR_WINDOW)
        if special is None:  # no CR yet: what is in must still be a valid start
            _v1_fields(bytes(buf[6:_V1_CR_WINDOW]), complete=False)
            if len(buf) >= _V1_CR_WINDOW:
                raise ProxyProtocolError("v1-too-long", f"no CRLF within {_V1_MAX_LINE} bytes")
            return None
        end = special.start()
        if buf[end : end + 2] == b"\r\n":
            return _v1_info(bytes(buf[6:end])), end + 2
        _v1_fields(bytes(buf[6:end]), complete=False)  # an earlier field error wins
        if end + 1 == len(buf) and buf[end] == 0x0D:
            return None  # CR in, LF not yet
        raise _v1_bad_byte(buf, end)

    def _parse_v2(self) -> tuple[ProxyInfo, int] | None:
        if not self._total and not self._parse_v2_fixed():
            return None
        buf, total = self._buf, self._total
        if self._tlv_pos < total:
            self._walk_tlvs(min(len(buf), total))
        if len(buf) < total:
            return None
        return self._v2_info(bytes(buf[:total])), total

    def _parse_v2_fixed(self) -> bool:
        """Check the 16-byte fixed part as far as it is in; True once all of it passed."""
        head = bytes(self._buf[:_V2_FIXED])
        if not _V2_SIGNATURE.startswith(head[:12]):
            raise _bad_start(head, _V2_SIGNATURE, 2)
        if len(head) < 13:
            return False
        if head[12] >> 4 != 2:
            raise ProxyProtocolError("v2-bad-version", f"version {head[12] >> 4}, expected 2")
        command = head[12] & 0x0F
        if command not in (_LOCAL, _PROXY):
            raise ProxyProtocolError(
                "v2-bad-command", f"command {command} is neither LOCAL nor PROXY"
            )
        if len(head) < 14:
            return False
        fam = head[13]
        if command == _PROXY:  # LOCAL ignores the family byte (§2.2)
            _check_v2_family(fam)
        if len(head) < _V2_FIXED:
            return False
        length = int.from_bytes(head[14:16], "big")
        if length > _V2_MAX_LEN:
            raise ProxyProtocolError(
                "v2-too-long", f"header length {length} exceeds the limit of {_V2_MAX_LEN}"
            )
        self._total = _V2_FIXED + length
        if command == _LOCAL or fam == _UNSPEC:  # the whole block is skipped unread
            self._tlv_pos = self._total
            return True
        need = _V2_ADDRESS_LEN[fam]
        if length < need:
            raise ProxyProtocolError(
                "v2-address-truncated",
                f"length {length} cannot hold the {need}-byte address block of family 0x{fam:02x}",
            )
        self._tlv_pos = _V2_FIXED + need
        return True

    def _walk_tlvs(self, avail: int) -> None:
        """Check TLVs from where the last walk stopped up to `avail` received bytes."""
        buf, pos, end = self._buf, self._tlv_pos, self._total
        while pos < end:
            if end - pos < 3:
                raise ProxyProtocolError(
                    "v2-tlv-overrun", f"{end - pos} bytes at the end of the header are not a TLV"
                )
            if avail - pos < 3:
                break
            kind = buf[pos]
            start = pos + 3
            stop = start + (buf[pos + 1] << 8 | buf[pos + 2])
            if stop > end:
                raise ProxyProtocolError(
                    "v2-tlv-overrun", f"TLV 0x{kind:02x} at offset {pos} runs past the header end"
                )
            _check_tlv_head(kind, stop - start, self._tlvs)
            if stop > avail:
                break
            value = bytes(buf[start:stop])
            _check_tlv_value(kind, value)
            if kind == _TLV_CRC32C:
                self._crc_at = start
            self._tlvs.append((kind, value))
            pos = stop
        self._tlv_pos = pos

    def _v2_info(self, header: bytes) -> ProxyInfo:
        if header[12] & 0x0F == _LOCAL:
            return ProxyInfo(2, "local", "unspec", None, None)
        if self._crc_at:  # §2.2.3: CRC32c of the whole header with the field zeroed
            at = self._crc_at
            zeroed = header[:at] + b"\0\0\0\0" + header[at + 4 :]
            if crc32c.crc32c(zeroed).to_bytes(4, "big") != header[at : at + 4]:
                raise ProxyProtocolError("v2-crc-mismatch", "CRC32C does not match the header")
        family, width = _V2_STREAM.get(header[13], ("unspec", 0))
        src, dst = _v2_endpoints(header, width) if width else (None, None)
        found = dict(self._tlvs)
        authority = found.get(_TLV_AUTHORITY)
        return ProxyInfo(
            2,
            "proxy",
            family,
            src,
            dst,
            authority=None if authority is None else authority.decode("utf-8"),
            unique_id=found.get(_TLV_UNIQUE_ID),
            alpn=found.get(_TLV_ALPN),
            tlvs=tuple(self._tlvs),
        )
