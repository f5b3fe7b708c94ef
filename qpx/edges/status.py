"""The status endpoint on ``metrics.listen``: ``/metrics`` and ``/health``.

- ``/metrics``: every process's counters in Prometheus text format
  (:func:`qpx.metrics.exposition`, rendered on the hub's threadpool: it reads files);
- ``/health``: 200 while the master runs its workers — a reload included (the old
  generation serves until the new one is ready) — and this worker is not draining;
  503 while starting or stopping.

Loopback clients are always allowed, others only inside ``metrics.allow`` (403
otherwise).  One request per connection; the answer closes it.
"""

from __future__ import annotations

import ipaddress
import time

from ..http.errors import HttpError
from ..http.request import Limits, RequestHeadParser
from ..http.writer import simple_response
from ..netio import Conn, DeadlineExceeded
from ..scoreboard import RELOADING, RUNNING
from .services import Services

monotonic = time.monotonic
TEXT = b"text/plain"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


def _version_line() -> bytes:
    from .. import __version__

    return f"qpxd/{__version__}\n".encode()


VERSION_LINE = _version_line()  # which code serves (a USR2 upgrade changes it)


class StatusEdge:
    """Serves /metrics and /health (tiny HTTP/1.1 server); an answer is (status,
    content type, body)."""

    def __init__(self, services: Services):
        cfg = services.policy.config.metrics
        self.services = services
        self.path = cfg.path.encode()
        self.allow = [ipaddress.ip_network(c) for c in cfg.allow]

    def allowed(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.is_loopback or any(addr in net for net in self.allow)

    def health(self) -> tuple[int, bytes, bytes]:
        state, _ = self.services.scoreboard.master_state()
        ok = state in (RUNNING, RELOADING) and not self.services.stopping
        return (200, TEXT, b"ok " + VERSION_LINE) if ok else \
            (503, TEXT, b"unavailable " + VERSION_LINE)

    def metrics(self) -> tuple[int, bytes, bytes]:
        import gevent

        from ..metrics import exposition

        m = self.services.metrics
        if m is not None:
            m.flush()
        return 200, PROMETHEUS, gevent.get_hub().threadpool.apply(exposition)

    def answer(self, conn: Conn) -> tuple[int, bytes, bytes] | None:
        parser = RequestHeadParser(Limits())
        conn.deadline = monotonic() + 10
        req = None
        while req is None:
            data = conn.recv()
            if not data:
                return None
            req = parser.feed(data)
        path = (req.path or "").split("?")[0].encode()
        if path == b"/health":
            return self.health()
        if path == self.path and req.method in ("GET", "HEAD"):
            return self.metrics()
        return 404, TEXT, b"not found\n"

    def handle(self, sock, address) -> None:
        conn = Conn(sock, self.services.sweeper)
        try:
            if not self.allowed(address[0]):
                answer = (403, TEXT, b"forbidden\n")
            else:
                answer = self.answer(conn)
                if answer is None:
                    return
            conn.deadline = monotonic() + 10
            conn.sendall(simple_response(*answer))
        except (HttpError, OSError, DeadlineExceeded):
            pass
        finally:
            conn.close()
