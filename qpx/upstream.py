"""Reaching upstreams: name resolution, the destination guard, keep-alive pools, dialing.

- :class:`Resolver` answers IP literals at once and caches ``getaddrinfo`` results (run on
  the hub's threadpool, sized by ``runtime.max_blocking_threads``) for ``ttl`` seconds.
  The addresses it returns are the ones dialed: no second lookup (DNS rebinding).
- :func:`is_local_destination` is the SSRF guard of reliability-anchors qpxd-R24:
  loopback, unspecified, link-local and multicast targets, and the host's own interface
  addresses (:mod:`qpx.hostaddrs`), in every form (IPv4-mapped too), are refused unless
  a listener sets ``allow_local_destinations``; :func:`is_own_listener` is the loop
  guard, over the same forms.
- :class:`Target` names where a request goes (the endpoint to dial, its pool key and
  log label); :class:`TargetCache` builds them once per host for the forward edge.
- :class:`ConnectionPool` keeps idle keep-alive upstream connections per key, most
  recently used first, each with the response parser that stayed in step with it,
  drops them after ``idle_timeout`` and checks a connection is still open (no EOF, no
  stray bytes: its armed read watcher tells) before lending it.  Only connections whose
  last exchange was framed without any doubt are ever returned to it (qpxd-R16).
"""

from __future__ import annotations

import ipaddress
import socket
import time

from .hostaddrs import host_addresses
from .http.writer import authority, hostport
from .netio import Conn, DeadlineExceeded, Sweeper, open_connection

monotonic = time.monotonic


def literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def canonical_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
                 ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_local_destination(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, unspecified, link-local, multicast, or one of the host's own interface
    addresses (in any of their forms)."""
    ip = canonical_ip(ip)
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast \
        or str(ip) in host_addresses()


def is_own_listener(own: set[tuple[str, int]] | frozenset, ip: str, port: int) -> bool:
    """Whether (ip, port) reaches one of our listening sockets (loop guard).  Every form
    counts: IPv4-mapped addresses, the unspecified address (a connect to ``0.0.0.0`` or
    ``::`` reaches this host), loopback and the host's own addresses for wildcard
    listeners."""
    if (ip, port) in own:
        return True
    addr = literal_ip(ip)
    if addr is None:
        return False
    addr = canonical_ip(addr)
    text = str(addr)
    if (text, port) in own:
        return True
    if addr.is_unspecified:
        return any(p == port for _, p in own)
    if ("0.0.0.0", port) in own or ("::", port) in own:
        return addr.is_loopback or text in host_addresses()
    return False


class Target:
    """Where a request goes: the endpoint to dial and the pool key it shares."""

    __slots__ = ("host", "port", "key", "guard", "label", "tls", "sni")

    def __init__(self, host: str, port: int, via_proxy: bool, guard: bool, tls=None,
                 sni: str | None = None):
        self.host, self.port = host, port
        # The guard is part of the key: a connection dialed for a listener that allows
        # local destinations must never be lent to one that refuses them.  So is the
        # TLS context: a plain connection is never lent for an https:// one.
        self.key = ("proxy", host, port, tls) if via_proxy else (host, port, guard, tls)
        if sni is not None:  # a name that is not the host: a connection serves only it
            self.key += (sni,)
        self.guard = guard  # refuse local destinations (SSRF guard)
        self.label = hostport(host, port)
        self.tls = tls  # ssl.SSLContext of an https:// upstream, else None
        self.sni = sni or host  # the TLS server name (a transparent flow's may differ)


class TargetCache:
    """Targets of direct requests by (host, port): a forward edge sees the same few hosts
    over and over, and a Target (pool key, label, Host bytes) is built once for each."""

    __slots__ = ("guard", "_map")

    def __init__(self, guard: bool):
        self.guard = guard
        self._map: dict[tuple[str, int | None], tuple[Target, bytes]] = {}

    def get(self, host: str, port: int | None) -> tuple[Target, bytes]:
        """(the Target, the authority as the request named it: Host bytes)."""
        key = (host, port)
        hit = self._map.get(key)
        if hit is None:
            if len(self._map) >= 4096:
                self._map.clear()
            hit = (Target(host, port or 80, False, self.guard), authority(host, port))
            self._map[key] = hit
        return hit


class ResolveError(Exception):
    pass


class Resolver:
    def __init__(self, ttl: float = 30.0, negative_ttl: float = 5.0, max_entries: int = 10000):
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._cache: dict[tuple[str, int], tuple[float, list | None]] = {}

    def resolve(self, host: str, port: int, timeout: float) -> list[tuple[int, tuple]]:
        ip = literal_ip(host)
        if ip is not None:
            if ip.version == 6:
                return [(socket.AF_INET6, (str(ip), port, 0, 0))]
            return [(socket.AF_INET, (str(ip), port))]
        key = (host, port)
        now = monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            if hit[1] is None:
                raise ResolveError(f"cannot resolve {host}")
            return hit[1]
        import gevent

        try:
            with gevent.Timeout(timeout, DeadlineExceeded()):
                infos = gevent.get_hub().resolver.getaddrinfo(
                    host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError, ValueError):
            # UnicodeError: the IDNA codec refuses the name (a label over 63 octets)
            self._store(key, now + self.negative_ttl, None)
            raise ResolveError(f"cannot resolve {host}") from None
        addrs = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
        self._store(key, now + self.ttl, addrs)
        return addrs

    def _store(self, key, expires: float, value) -> None:
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = (expires, value)


class ConnectionPool:
    """Idle upstream connections keyed by a :class:`Target`'s key, each lent with the
    response parser (or None) that stayed in step with it."""

    def __init__(self, max_idle_per_key: int = 64, idle_timeout: float = 30.0):
        self.max_idle_per_key = max_idle_per_key
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple, list[tuple[float, Conn, object]]] = {}
        self._sessions: dict[tuple, object] = {}  # TLS session per key, for resumption

    def tls_session(self, key: tuple):
        return self._sessions.get(key)

    def remember_session(self, key: tuple, conn: Conn) -> None:
        """Keep a TLS connection's session to resume the next dial with the same key."""
        session = conn.sock.session
        if session is not None:
            if len(self._sessions) >= 4096:
                self._sessions.clear()
            self._sessions[key] = session

    def get(self, key: tuple) -> tuple[Conn, object] | None:
        """(connection, its parser) or None."""
        stack = self._idle.get(key)
        if not stack:
            return None
        now = monotonic()
        limit = now - self.idle_timeout
        while stack:
            since, conn, parser = stack.pop()
            # Checked before every reuse: bytes waiting mean the peer is out of step
            # with us (qpxd-R16), EOF that it closed the connection (a request sent on
            # it would be lost with its streaming body).  The armed read watcher says
            # so without a system call (Conn.idle_alive).
            if since >= limit and conn.idle_alive():
                return conn, parser
            conn.close()
        return None

    def put(self, key: tuple, conn: Conn, parser=None) -> None:
        if conn.closed:
            return
        stack = self._idle.setdefault(key, [])
        if len(stack) >= self.max_idle_per_key:
            stack.pop(0)[1].close()
        conn.deadline = 0.0
        stack.append((monotonic(), conn, parser))

    def purge(self) -> int:
        """Close connections idle for longer than ``idle_timeout``; returns how many."""
        limit = monotonic() - self.idle_timeout
        closed = 0
        for key in list(self._idle):
            stack = self._idle[key]
            keep = [e for e in stack if e[0] >= limit and not e[1].closed]
            for t, c, _ in stack:
                if t < limit:
                    c.close()
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def close_all(self) -> None:
        for stack in self._idle.values():
            for _, conn, _ in stack:
                conn.close()
        self._idle.clear()

    def idle_count(self) -> int:
        return sum(len(s) for s in self._idle.values())


class Dialer:
    """Resolve + guard + connect, with the connect bounded by ``deadline``."""

    def __init__(self, resolver: Resolver, sweeper: Sweeper | None):
        self.resolver = resolver
        self.sweeper = sweeper

    def addresses(self, host: str, port: int, deadline: float) -> list[tuple[int, tuple]]:
        return self.resolver.resolve(host, port, max(0.001, deadline - monotonic()))

    def connect(self, addrs: list[tuple[int, tuple]], deadline: float) -> Conn:
        return open_connection(addrs, deadline, self.sweeper)
