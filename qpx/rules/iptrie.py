"""IP addresses and CIDRs: request keys, CIDR parsing, the per-family prefix trie.

This module owns how an address is represented while matching:

* :func:`parse_ip` turns the text of a client address into an opaque *key*: an
  ``int``; IPv4 is the 32-bit value, IPv6 is its 128-bit value with bit 128 set
  (so the two families never collide).  IPv4-mapped IPv6 (``::ffff:a.b.c.d``)
  becomes the IPv4 key, and a zone suffix (``fe80::1%eth0``) is ignored.
* :func:`parse_cidr` (compile time, via netaddr) validates a CIDR and returns it
  as ``(shift, value)``: an address key ``k`` is inside iff ``k >> shift == value``
  (the family flag is part of ``value``, so one test works for both families).
  Configured CIDRs inside ``::ffff:0:0/96`` are rewritten to the IPv4 CIDR they
  denote, because mapped inputs are IPv4 keys.
* :class:`PrefixTrie`, one binary prefix trie per family, *level-compressed*: a
  node exists only at depths (prefix lengths) some CIDR of that family uses, and
  each used depth is a hash table ``prefix bits -> node``.  A node carries the
  payloads of the CIDRs ending there, or is a pure marker for deeper CIDRs, so a
  lookup walks the used depths from the root and stops at the first missing node,
  exactly like a bit-by-bit walk that stops at the first missing child - but costs
  one dict probe per used depth instead of one step per bit (see prefilter.py for
  the measured difference).
* :class:`CidrSet`, the containment test the full matcher uses for one rule.
"""

from __future__ import annotations

import functools
import socket

import netaddr

V6_FLAG = 1 << 128
_V4_LIMIT = 1 << 32
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


def parse_ip(text) -> int | None:
    """Address text -> opaque key (see the module docstring); None if invalid."""
    try:
        if ":" not in text:
            return _from_bytes(_inet_pton(_AF_INET, text), "big")
        if "%" in text:
            text = text.partition("%")[0]
        v = _from_bytes(_inet_pton(_AF_INET6, text), "big")
    except (OSError, TypeError, ValueError):
        return None
    if v >> 32 == 0xFFFF:
        return v & 0xFFFFFFFF
    return v | V6_FLAG


def is_v4(key: int) -> bool:
    return key < _V4_LIMIT


def ip_text(key: int) -> str:
    """Key -> canonical address text (for explanations and logs)."""
    if key < _V4_LIMIT:
        return socket.inet_ntop(_AF_INET, key.to_bytes(4, "big"))
    return socket.inet_ntop(_AF_INET6, (key ^ V6_FLAG).to_bytes(16, "big"))


class CidrError(ValueError):
    pass


@functools.lru_cache(maxsize=65536)
def parse_cidr(text) -> tuple[int, int, int]:
    """CIDR text -> ``(width, prefix_len, network_key)``; raise CidrError.

    ``width`` is 32 or 128; ``network_key`` is the network address as a key (IPv6
    carries the family flag).  A bare address is a /32 or /128.  The address is
    parsed by netaddr (strict inet_pton rules); a prefix is 1-3 decimal digits.
    """
    if not isinstance(text, str):
        raise CidrError(f"invalid CIDR {text!r}: expected a string")
    if not text:
        raise CidrError("empty CIDR")
    addr, slash, plen_text = text.partition("/")
    try:
        ip = netaddr.IPAddress(addr)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise CidrError(f"invalid CIDR {text!r}: not an IP address") from None
    width = 32 if ip.version == 4 else 128
    if slash:
        if not (plen_text.isascii() and plen_text.isdigit() and len(plen_text) <= 3):
            raise CidrError(f"invalid CIDR {text!r}: prefix length must be 0-{width}")
        plen = int(plen_text)
        if plen > width:
            raise CidrError(f"invalid CIDR {text!r}: prefix length must be 0-{width}")
    else:
        plen = width
    value = int(ip)
    if value & ((1 << (width - plen)) - 1):
        raise CidrError(f"invalid CIDR {text!r}: host bits set")
    if width == 128:
        if plen >= 96 and value >> 32 == 0xFFFF:  # IPv4-mapped: an IPv4 CIDR
            return 32, plen - 96, value & 0xFFFFFFFF
        value |= V6_FLAG
    return width, plen, value


def cidr_test(width: int, plen: int, network_key: int) -> tuple[int, int]:
    """``(shift, value)`` such that key k is inside iff ``k >> shift == value``."""
    shift = width - plen
    return shift, network_key >> shift


class PrefixTrie:
    """Level-compressed binary prefix trie, one per family; payloads are ints."""

    __slots__ = ("_build", "levels4", "levels6")

    def __init__(self) -> None:
        self._build: dict[tuple[int, int], dict[int, list]] = {}
        self.levels4: tuple = ()
        self.levels6: tuple = ()

    def insert(self, width: int, plen: int, network_key: int, payload: int) -> None:
        shift = width - plen
        level = self._build.setdefault((width, shift), {})
        level.setdefault(network_key >> shift, []).append(payload)

    def freeze(self) -> "PrefixTrie":
        """Build the lookup levels (root first), adding marker nodes."""
        for width in (32, 128):
            shifts = sorted((s for (w, s) in self._build if w == width), reverse=True)
            tables = {s: {k: tuple(sorted(set(v))) for k, v in self._build[(width, s)].items()}
                      for s in shifts}
            # markers: every node's ancestor at the next shallower used depth (walking
            # from the deepest level up makes this transitive)
            for j in range(len(shifts) - 1, 0, -1):
                deeper, shallower = shifts[j], shifts[j - 1]
                up = shallower - deeper
                target = tables[shallower]
                for k in tables[deeper]:
                    target.setdefault(k >> up, ())
            levels = tuple((s, tables[s]) for s in shifts)
            if width == 32:
                self.levels4 = levels
            else:
                self.levels6 = levels
        self._build = {}
        return self

    def lookup(self, key: int, out: list) -> None:
        """Append the payloads of every CIDR containing ``key`` (root first)."""
        for shift, table in (self.levels4 if key < _V4_LIMIT else self.levels6):
            node = table.get(key >> shift)
            if node is None:
                return
            if node:
                out += node

    def __bool__(self) -> bool:
        return bool(self.levels4 or self.levels6 or self._build)


class CidrSet:
    """Does a key fall into any of a rule's CIDRs?  Small sets test each CIDR;
    large ones use a PrefixTrie."""

    __slots__ = ("tests", "trie", "contains")

    def __init__(self, cidrs) -> None:
        parsed = [parse_cidr(c) for c in cidrs]
        self.tests = tuple(dict.fromkeys(cidr_test(*p) for p in parsed))
        self.trie = None
        if len(self.tests) > 4:
            trie = PrefixTrie()
            for p in parsed:
                trie.insert(*p, 0)
            self.trie = trie.freeze()
            self.contains = self._contains_trie
        else:
            self.contains = self._contains_list

    def _contains_list(self, key) -> bool:
        if key is None:
            return False
        for shift, value in self.tests:
            if key >> shift == value:
                return True
        return False

    def _contains_trie(self, key) -> bool:
        if key is None:
            return False
        out: list = []
        self.trie.lookup(key, out)
        return bool(out)
