"""Per-worker state every edge shares: policy, deadlines, pools, logs, metrics, draining.

One :class:`Services` is built by the worker after the fork and handed to every edge; it
is complete when constructed (nothing is attached afterwards).  It is the only mutable
state connections share, besides the balancers each reverse edge owns.
"""

from __future__ import annotations

import time

from .. import log
from ..http.request import Limits
from ..netio import BufferPool, Sweeper
from ..policy import Policy
from ..upstream import ConnectionPool, Dialer, Resolver

monotonic = time.monotonic

# How long a keep-alive connection may stay idle once its worker drains (reload,
# resize, stop): long enough for an active client's next request to arrive and get its
# answer with Connection: close, short enough to let the worker go.
DRAIN_GRACE = 1.0


class Services:
    """Per-worker state shared by every connection of every edge.

    ``own_addresses``: (ip, port) of every listening socket of this qpxd (loop guard);
    ``scoreboard``: the master's scoreboard (read by ``/health``), or None."""

    def __init__(self, policy: Policy, metrics=None,
                 own_addresses: frozenset[tuple[str, int]] | set = frozenset(),
                 scoreboard=None):
        cfg = policy.config
        rt = cfg.runtime
        self.policy = policy
        self.metrics = metrics
        self.own_addresses = own_addresses
        self.scoreboard = scoreboard
        self.sweeper = Sweeper(0.1)
        self.pool = ConnectionPool()
        self.resolver = Resolver()
        self.dialer = Dialer(self.resolver, self.sweeper)
        self.buffers = BufferPool()
        self.access = log.access() or log.AccessLog(None, "json")
        self.limits = Limits(rt.max_request_line_bytes, rt.max_header_bytes,
                             rt.max_header_count)
        self.header_timeout = rt.http_header_read_timeout_ms / 1000.0
        self.keepalive_timeout = rt.client_keepalive_timeout_ms / 1000.0
        self.body_timeout = rt.client_body_timeout_ms / 1000.0
        self.send_timeout = rt.send_timeout_ms / 1000.0
        self.upstream_timeout = rt.upstream_http_timeout_ms / 1000.0
        self.tunnel_idle = rt.tunnel_idle_timeout_ms / 1000.0
        self.peek_timeout = rt.tls_peek_timeout_ms / 1000.0
        self.tls_handshake_timeout = rt.tls_handshake_timeout_ms / 1000.0
        self._origin_tls = None
        self.trace_enabled = rt.trace_enabled
        self.stopping = False
        self.idle: set = set()  # client sessions waiting for their next request

    def drain(self) -> None:
        """Stop keep-alive without racing clients.  Every later response says
        ``Connection: close``.  A connection idle between requests is not cut at once:
        a client may be sending its next request right now, and closing under it would
        make it fail (or retry).  It gets :data:`DRAIN_GRACE` seconds from its last
        response to send one (answered, then closed); a connection idle for longer is
        closed at the next sweep."""
        self.stopping = True
        now = monotonic()
        for session in list(self.idle):
            session.drain(now)

    def origin_tls(self):
        """The client context for origins named by absolute-form ``https://`` URLs:
        verification against the system store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
        name another), made on first use."""
        if self._origin_tls is None:
            from ..tlsctx import client_context

            self._origin_tls = client_context()
        return self._origin_tls

    @staticmethod
    def threadpool_apply(fn, *args):
        """``fn(*args)`` on the hub's thread pool (CPU or disk work that must not hold
        up the other connections of this worker)."""
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)
