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
  ``cooldown_ms``; a success (or a passing probe, :mod:`qpx.health`) restores it at once.
"""

from __future__ import annotations

import random
import time
import zlib

from .config.model import HealthCheck
from .policy import CompiledRoute, Hop
from .upstream import Target

monotonic = time.monotonic


class Endpoint:
    """One upstream of a route in one worker: where to dial, and its health.
    ``on_change(endpoint, healthy)`` is called when it is ejected or restored."""

    __slots__ = ("hop", "label", "fails", "down_until", "inflight", "threshold", "cooldown",
                 "on_change", "authority_b", "base_b", "target")

    def __init__(self, hop: Hop, threshold: int, cooldown: float, on_change=None):
        self.hop = hop
        self.label = hop.authority
        self.authority_b = hop.authority.encode()  # Host when preserve_host is off
        self.base_b = hop.base_path.encode()  # the upstream URL's path prefix
        self.target = Target(hop.host, hop.port, via_proxy=False, guard=False, tls=hop.tls)
        self.fails = 0
        self.down_until = 0.0
        self.inflight = 0
        self.threshold = threshold
        self.cooldown = cooldown
        self.on_change = on_change

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
    """The upstreams of one route (per worker).  ``on_change`` is handed to every
    :class:`Endpoint` (health metrics)."""

    def __init__(self, route: CompiledRoute, on_change=None):
        hc = route.health or HealthCheck()
        self.route = route
        self.lb = route.lb
        self.backends = [Backend(b.name, b.weight,
                                 [Endpoint(h, hc.fail_threshold, hc.cooldown_ms / 1000.0,
                                           on_change) for h in b.hops])
                         for b in route.backends]
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
