"""Choosing an upstream for a reverse route: weighted backends, lb policies, health.

State lives per worker process (your call, said issue 7; this is ours): each worker
tracks in-flight counts, consecutive failures and ejections of the upstreams it talks
to, and runs its own active probes.  No cross-process locking, no shared state to go
stale across reloads, and a worker's view matches what its own requests experience.
The price is N probes per interval for N workers; each worker starts its probe loop at
a random phase of the interval, so the probes are spread, not in lockstep.

- Backend choice (``backends`` with weights) is sticky per client and URL: a CRC32 of
  (client IP, host, method, path) modulo the total weight walks the backends in order,
  as the original does with FNV-1a (CRC32 runs in C; Python's ``hash`` differs between
  processes).  When the chosen backend has no healthy upstream, the others are tried in
  order; when none has one, the caller answers 503 with ``Retry-After`` (no fail-open).
- Within a backend: ``round_robin`` (over the healthy ones), ``least_conn`` (fewest
  in-flight requests, ties to the first) or ``random``.
- Passive health: ``fail_threshold`` consecutive failures eject an upstream for
  ``cooldown_ms``; a success (or a passing probe) restores it at once.  Active probes
  only where ``health_check`` is configured: an HTTP GET of ``path`` expecting 2xx/3xx,
  or a TCP connect when no path is set.
"""

from __future__ import annotations

import random
import socket
import time
import zlib

from .config.model import HealthCheck
from .policy import CompiledRoute, Hop

monotonic = time.monotonic


class Endpoint:
    __slots__ = ("hop", "label", "fails", "down_until", "inflight", "threshold", "cooldown",
                 "on_change", "authority_b", "base_b", "target")

    def __init__(self, hop: Hop, threshold: int, cooldown: float):
        self.hop = hop
        self.label = hop.authority
        self.authority_b = hop.authority.encode()  # Host when preserve_host is off
        self.base_b = hop.base_path.encode()  # the upstream URL's path prefix
        self.target = None  # the edge's dial target, set by the edge that owns it
        self.fails = 0
        self.down_until = 0.0
        self.inflight = 0
        self.threshold = threshold
        self.cooldown = cooldown
        self.on_change = None

    def healthy(self, now: float) -> bool:
        return now >= self.down_until

    def failure(self) -> None:
        self.fails += 1
        if self.fails >= self.threshold:
            now = monotonic()
            was_healthy = now >= self.down_until
            self.down_until = now + self.cooldown
            if was_healthy and self.on_change:
                self.on_change(self, False)

    def success(self) -> None:
        self.fails = 0
        if self.down_until:
            self.down_until = 0.0
            if self.on_change:
                self.on_change(self, True)


class Backend:
    __slots__ = ("name", "weight", "endpoints", "rr")

    def __init__(self, name, weight, endpoints):
        self.name, self.weight, self.endpoints, self.rr = name, weight, endpoints, 0


class RouteBalancer:
    def __init__(self, route: CompiledRoute):
        hc = route.health or HealthCheck()
        self.route = route
        self.lb = route.lb
        self.backends = [Backend(b.name, b.weight,
                                 [Endpoint(h, hc.fail_threshold, hc.cooldown_ms / 1000.0)
                                  for h in b.hops]) for b in route.backends]
        self.total = sum(b.weight for b in self.backends)
        every = self.endpoints()
        self.single = every[0] if len(every) == 1 else None

    def endpoints(self) -> list[Endpoint]:
        return [e for b in self.backends for e in b.endpoints]

    def _order(self, seed: int) -> list[Backend]:
        if len(self.backends) == 1:
            return self.backends
        point = seed % self.total
        for i, b in enumerate(self.backends):
            if point < b.weight:
                return [b] + self.backends[:i] + self.backends[i + 1:]
            point -= b.weight
        return self.backends

    def pick(self, seed: int, tried) -> Endpoint | None:
        """A healthy endpoint, preferring ones not in ``tried``; None if none is healthy."""
        now = monotonic()
        single = self.single
        if single is not None:  # one upstream: nothing to choose
            return single if now >= single.down_until else None
        for backend in self._order(seed):
            healthy = [e for e in backend.endpoints if e.healthy(now)]
            if not healthy:
                continue
            fresh = [e for e in healthy if e not in tried] or healthy
            if self.lb == "least_conn":
                return min(fresh, key=lambda e: e.inflight)
            if self.lb == "random":
                return random.choice(fresh)
            backend.rr += 1
            return fresh[backend.rr % len(fresh)]
        return None

    def retry_after(self) -> int:
        now = monotonic()
        soonest = min((e.down_until for e in self.endpoints()), default=now + 1)
        return max(1, int(soonest - now + 0.999))


def seed_for(client_ip: str, host: str | None, method: str, path: str | None) -> int:
    return zlib.crc32(f"{client_ip}|{host or ''}|{method}|{path or ''}".encode())


def probe(hop: Hop, hc: HealthCheck) -> bool:
    """One active check: TCP connect, or an HTTP GET expecting 2xx/3xx.  Blocking calls
    on a gevent socket (the worker runs this in its own greenlet)."""
    from gevent import socket as gsocket

    try:
        with gsocket.create_connection((hop.host, hop.port), timeout=hc.timeout_ms / 1000.0) \
                as s:
            if hc.path is None:
                return True
            s.settimeout(hc.timeout_ms / 1000.0)
            s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: qpxd-health\r\n"
                      b"Connection: close\r\n\r\n" % (hc.path.encode(), hop.authority.encode()))
            line = b""
            while b"\r\n" not in line and len(line) < 1024:
                chunk = s.recv(1024)
                if not chunk:
                    break
                line += chunk
            parts = line.split(b" ", 2)
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and \
                parts[1][:1] in (b"2", b"3") and len(parts[1]) == 3
    except (OSError, socket.timeout):
        return False


def start_probes(balancer: RouteBalancer) -> list:
    """Spawn one probe loop per endpoint of a route that has ``health_check``."""
    import gevent

    hc = balancer.route.health
    if hc is None:
        return []
    interval = hc.interval_ms / 1000.0

    def loop(endpoint: Endpoint) -> None:
        gevent.sleep(random.uniform(0, interval))
        while True:
            if probe(endpoint.hop, hc):
                endpoint.success()
            else:
                endpoint.failure()
            gevent.sleep(interval)

    return [gevent.spawn(loop, e) for e in balancer.endpoints()]
