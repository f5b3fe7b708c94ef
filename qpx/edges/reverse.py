"""The reverse edge: publishing services behind routes.

Per request: CONNECT → 405, TRACE → 405 unless enabled, then the first route whose
``match`` fits (same engine and fields as rules; ``dst_port`` is the port the client
reached — the PROXY destination when a trusted frontend sent one).  No route → 404.
A route answers locally (``local_response``) or forwards:

- ``path_rewrite``: ``strip_prefix`` on a segment boundary (``/api`` strips ``/api/x``
  and ``/api`` but not ``/apix``), then ``add_prefix``, then the first ``regex`` match
  replaced; the query string is kept aside and re-attached; an upstream URL's base path
  is prefixed last;
- header control, ``X-Forwarded-For`` (appended: the client, i.e. the PROXY source when
  present), ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Via``; ``Host`` is the
  client's (``preserve_host``, default) or the upstream's authority;
- upstream choice and health from :mod:`qpx.balancer` (probes: :mod:`qpx.health`); none
  healthy → 503 with ``Retry-After``;
- ``retry``: another attempt (on another upstream when there is one) after a connect
  failure for any request, and after a reset or timeout before the response head for
  idempotent requests without a body; ``timeout_ms`` bounds connect + response head
  (→ 504); refusals and resets → 502.  A stale pooled connection is retried once on a
  fresh one inside :class:`~qpx.edges.exchange.UpstreamExchange`, whatever the policy.
- ``Upgrade`` (WebSocket): relayed both ways after the upstream's 101.
"""

from __future__ import annotations

import time

from ..balancer import Endpoint, RouteBalancer, seed_for
from ..health import start_probes
from ..http import writer
from ..http.errors import HttpError, UpstreamError
from ..http.h2map import looks_like_preface
from ..http.request import Request
from ..netio import Conn, DeadlineExceeded
from ..policy import CompiledRoute, ReversePolicy
from ..relay import tunnel
from ..rules import MatchContext
from .common import (
    ALLOW_REVERSE,
    HttpEdge,
    answer_local,
    answer_max_forwards,
    peek_hello,
    refuse_trace_and_loops,
)
from .exchange import UpstreamExchange, dial
from .prologue import Client, closed_before_http
from .services import Services
from .session import ClientSession

monotonic = time.monotonic

IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


def rewrite_path(route: CompiledRoute, target: str) -> str:
    path, sep, query = target.partition("?")
    strip = route.strip_prefix
    if strip and (path == strip or path.startswith(strip + "/")):
        path = path[len(strip):] or "/"
    if route.add_prefix:
        path = route.add_prefix + path
    if route.regex is not None:
        regex, template = route.regex
        path = regex.sub(template, path, count=1) or "/"
        if not path.startswith("/"):
            path = "/" + path
    return path + sep + query


PASSTHROUGH_ONLY = object()  # a TLS port without certificates of its own


class ReverseEdge(HttpEdge):
    def __init__(self, rp: ReversePolicy, services: Services):
        super().__init__(services, rp.name, rp.model.xdp, rp.trusted, rp.filter,
                         rp.limits)
        self.rp = rp
        # a TLS port: terminated (certificates), passed through (passthrough routes), or
        # both (passthrough routes first, decided on the ClientHello)
        self.tls = rp.tls if rp.tls is not None or not rp.passthrough else PASSTHROUGH_ONLY
        metrics = services.metrics
        on_change = self._health_changed if metrics is not None else None
        self.balancers = [RouteBalancer(r, on_change) for r in rp.routes]
        self.passthrough = [RouteBalancer(r, on_change) for r in rp.passthrough]
        for b in self.balancers + self.passthrough:
            if metrics is not None:
                for e in b.endpoints():
                    metrics.upstream_health(rp.name, e.label, True)
            start_probes(b, services.dialer)

    def _health_changed(self, endpoint: Endpoint, healthy: bool) -> None:
        self.services.metrics.upstream_health(self.rp.name, endpoint.label, healthy)

    def upstream_message(self, e: UpstreamError) -> str:
        return "gateway_timeout" if e.status == 504 else "reverse_error"

    def start(self, session: ClientSession) -> None:
        """Cleartext: HTTP/2 with prior knowledge (the connection preface), else
        HTTP/1.1.  (On TLS, ALPN decided before.)"""
        if self.tls is None and looks_like_preface(self.first_bytes(session)):
            self.serve_h2(session.conn, session.client, session.buf)
            return
        self.serve(session)

    # ------------------------------------------------------------------ TLS passthrough

    def terminate(self, conn: Conn, client: Client) -> bool:
        """Passthrough routes first (on the ClientHello, peeked: the bytes stay in the
        socket for the upstream or for OpenSSL), then termination."""
        if self.passthrough:
            started = monotonic()
            hello = peek_hello(conn, self.services.peek_timeout)
            if isinstance(hello, str):
                closed_before_http(self.name, client, "tls-hello", hello)
                return False
            route = self.rp.passthrough_route(
                MatchContext(client.key, client.dst_port, None, hello.sni))
            if route is not None:
                self.pass_through(conn, client, route, hello.sni, started)
                return False
            if self.rp.tls is None:
                closed_before_http(self.name, client, "tls-no-route",
                                   f"no passthrough route for SNI {hello.sni!r}")
                return False
        return HttpEdge.terminate(self, conn, client)

    def pass_through(self, conn: Conn, client: Client, route: CompiledRoute,
                     sni: str | None, started: float) -> None:
        """Relay the TLS connection untouched to the route's upstream (health-aware,
        with the route's retries for connect failures); one access log line."""
        services = self.services
        balancer = self.passthrough[route.index]
        tried: set | tuple = ()
        for attempt in range(route.attempts):
            endpoint = balancer.pick(0, tried)
            if endpoint is None:
                self.log_passthrough(client, sni, route, 503, started, 0, 0, None,
                                     "no healthy upstream")
                return
            try:
                up = dial(services, self.name, endpoint.target, monotonic() + route.timeout)
            except (UpstreamError, HttpError) as e:
                if isinstance(e, UpstreamError) and not e.local:
                    endpoint.failure()
                tried = tried | {endpoint} if tried else {endpoint}
                if attempt + 1 < route.attempts:
                    continue
                self.log_passthrough(client, sni, route, e.status, started, 0, 0,
                                     endpoint.label, e.reason)
                return
            endpoint.success()
            break
        endpoint.inflight += 1
        up_bytes = down_bytes = 0
        try:
            up_bytes, down_bytes = tunnel(conn, up, services.tunnel_idle, services.buffers)
        except (OSError, DeadlineExceeded):
            pass
        finally:
            endpoint.inflight -= 1
            up.close()
        if services.metrics is not None:
            services.metrics.tunnel_bytes(self.name, up_bytes, down_bytes)
        self.log_passthrough(client, sni, route, 200, started, up_bytes, down_bytes,
                             endpoint.label, None)

    def log_passthrough(self, client: Client, sni: str | None, route: CompiledRoute,
                        status: int, started: float, bytes_in: int, bytes_out: int,
                        upstream: str | None, reason: str | None) -> None:
        services = self.services
        if services.access.enabled:
            services.access.record(self.name, client.label, "TLS", sni or "-", status,
                                   route.label, "passthrough", bytes_in, bytes_out,
                                   monotonic() - started, upstream, reason, None, sni)
        if services.metrics is not None:
            services.metrics.request(self.name, "passthrough", status,
                                     monotonic() - started)

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        if req.method == "CONNECT":
            raise HttpError(405, "CONNECT is not served by a reverse proxy", "reverse_error")
        refuse_trace_and_loops(req, self.services)
        if req.form == "absolute" and req.scheme != "http":
            raise HttpError(400, f"{req.scheme}:// is not served here", "bad_request")
        if req.form == "asterisk":
            session.reply(200, [(b"allow", b"Allow", ALLOW_REVERSE + b", PATCH")], b"", req,
                          close=req.has_body())
            session.log_request(req, 200, started, action="options")
            return True
        client = session.client
        if client.tls is not None and not self.rp.sni_host_allowed(client.sni, req.host):
            raise HttpError(421, f"host {req.host} is not the TLS server name {client.sni}",
                            "misdirected_request")
        ctx = MatchContext(client.key, client.dst_port, req.host, client.sni, req.method,
                           req.path, req)
        route = self.rp.route(ctx)
        self.count_rules(ctx)
        if route is None:
            raise HttpError(404, "no route matches", "reverse_error")
        if route.reply is not None:
            return answer_local(session, req, started, route.reply,
                                route.headers.response if route.headers else None,
                                route.label)
        mf = req.max_forwards()
        if mf == 0:
            return answer_max_forwards(session, req, started, None, ALLOW_REVERSE,
                                       echo_trace=False)
        return self.forward(session, req, route, started, mf)

    def forward(self, session: ClientSession, req: Request, route: CompiledRoute,
                started: float, mf: int | None) -> bool:
        """Pick an upstream and exchange, as often as the route's retry policy allows."""
        balancer = self.balancers[route.index]
        target = (rewrite_path(route, req.path or "/") if route.rewrites
                  else req.path or "/").encode()
        headers = control = None
        if route.headers is not None:
            control = route.headers.response
            if route.headers.request is not None:
                headers = route.headers.request.apply(req.headers)
        # RFC 9112 §3.2.2: for an absolute-form target the authority in the URI is the
        # host, whatever Host says (routing already used it).
        client_host = writer.authority(req.host, req.port) if req.form == "absolute" else \
            (req.get(b"host") or writer.authority(req.host or "", req.port))
        seed = seed_for(session.client.ip, req.host, req.method, req.path) \
            if len(balancer.backends) > 1 else 0
        retryable = req.method in IDEMPOTENT and not req.has_body()
        tried: set[Endpoint] | tuple = ()
        attempt = 0
        while True:
            attempt += 1
            endpoint = balancer.pick(seed, tried)
            if endpoint is None:
                raise HttpError(503, "no healthy upstream", "no_healthy_upstream",
                                headers=((b"retry-after", b"Retry-After",
                                          str(balancer.retry_after()).encode()),))
            head = writer.reverse_request_head(
                req, req.method.encode(), endpoint.base_b + target,
                client_host if route.preserve_host else endpoint.authority_b,
                session.client.ip.encode(), client_host,
                b"http" if session.client.tls is None else b"https",
                self.services.policy.via_line, None if mf is None else mf - 1, headers)
            endpoint.inflight += 1
            try:
                result = UpstreamExchange(session, req, endpoint.target, control,
                                          req.upgrade is not None).run(head, route.timeout)
            except UpstreamError as e:
                if not e.local:  # this host's shortage is not the upstream's failure
                    endpoint.failure()
                tried = tried | {endpoint} if tried else {endpoint}
                if attempt < route.attempts and ((not e.sent) or
                                                 (retryable and e.before_response)):
                    if route.backoff:
                        import gevent

                        gevent.sleep(route.backoff)
                    continue
                raise
            finally:
                endpoint.inflight -= 1
            endpoint.success()
            return self.finish(session, req, started, route.label, "proxy", result)
