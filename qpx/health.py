"""Active health checks of reverse upstreams (per worker, one greenlet per endpoint).

Only routes with a ``health_check`` block are probed: an HTTP ``GET`` of ``path``
expecting a 2xx/3xx status line, or a TCP connect when no path is set, every
``interval_ms``, each bounded by ``timeout_ms``.  A probe dials through the worker's
:class:`~qpx.upstream.Dialer` and talks over the same :class:`~qpx.netio.Conn` as every
other connection (deadlines, the sweeper); it never blocks the worker.  Each worker
starts its loops at a random phase, so N workers' probes are spread, not in lockstep.
Passing probes restore an endpoint, failing ones count toward its ``fail_threshold``
(:class:`~qpx.balancer.Endpoint`).
"""

from __future__ import annotations

import random
import time

from .balancer import Endpoint, RouteBalancer
from .config.model import HealthCheck
from .http.response import status_ok
from .http.writer import probe_request
from .netio import DeadlineExceeded
from .upstream import Dialer, ResolveError

monotonic = time.monotonic


def probe(dialer: Dialer, endpoint: Endpoint, hc: HealthCheck) -> bool:
    """One check of ``endpoint``: True when it passed."""
    hop = endpoint.hop
    deadline = monotonic() + hc.timeout_ms / 1000.0
    try:
        conn = dialer.connect(dialer.addresses(hop.host, hop.port, deadline), deadline)
    except (OSError, DeadlineExceeded, ResolveError):
        return False
    try:
        if hc.path is None:
            return True
        conn.deadline = deadline
        conn.sendall(probe_request(hc.path, hop.authority))
        line = b""
        while b"\r\n" not in line and len(line) < 1024:
            chunk = conn.recv(1024)
            if not chunk:
                break
            line += chunk
        return status_ok(line)
    except (OSError, DeadlineExceeded):
        return False
    finally:
        conn.close()


def start_probes(balancer: RouteBalancer, dialer: Dialer) -> list:
    """Spawn one probe loop per endpoint of a route that has ``health_check``."""
    import gevent

    hc = balancer.route.health
    if hc is None:
        return []
    interval = hc.interval_ms / 1000.0

    def loop(endpoint: Endpoint) -> None:
        gevent.sleep(random.uniform(0, interval))
        while True:
            if probe(dialer, endpoint, hc):
                endpoint.success()
            else:
                endpoint.failure()
            gevent.sleep(interval)

    return [gevent.spawn(loop, e) for e in balancer.endpoints()]
