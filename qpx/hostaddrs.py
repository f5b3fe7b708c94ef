"""This host's own interface addresses, as the kernel lists them (``/proc``).

The SSRF guard (reliability-anchors qpxd-R24) refuses loopback, link-local, multicast
and unspecified targets by their class; an address of one of the host's own interfaces
(``192.0.2.2`` on eth0, an ``fd00::`` address) is none of those, yet reaches the host
itself and every service listening on all addresses.  :func:`host_addresses` reads them
from ``/proc/net/fib_trie`` (IPv4 ``/32 host LOCAL`` entries) and ``/proc/net/if_inet6``
and keeps the set for :data:`REFRESH` seconds; a reload starts new workers, which read
it afresh.
"""

from __future__ import annotations

import ipaddress
import time

REFRESH = 30.0
FIB_TRIE = "/proc/net/fib_trie"
IF_INET6 = "/proc/net/if_inet6"

_cache: list = [frozenset(), -1e18]  # (addresses, read at)


def _ipv4(text: str) -> set[str]:
    found = set()
    last = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last:
            found.add(last)
    return found


def _ipv6(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(str(ipaddress.IPv6Address(int(fields[0], 16))))
            except ValueError:
                continue
    return found


def read_host_addresses() -> frozenset[str]:
    """Every address of every interface of this host (canonical text form)."""
    found: set[str] = set()
    for path, parse in ((FIB_TRIE, _ipv4), (IF_INET6, _ipv6)):
        try:
            with open(path) as f:
                found |= parse(f.read())
        except OSError:
            continue
    return frozenset(found)


def host_addresses() -> frozenset[str]:
    """The host's addresses, re-read at most every :data:`REFRESH` seconds."""
    now = time.monotonic()
    if now - _cache[1] >= REFRESH:
        _cache[0] = read_host_addresses()
        _cache[1] = now
    return _cache[0]
