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
- upstream choice and health from :mod:`qpx.balancer`; none healthy → 503 with
  ``Retry-After``;
- ``retry``: another attempt (on another upstream when there is one) after a connect
  failure for any request, and after a reset or timeout before the response head for
  idempotent requests without a body; ``timeout_ms`` bounds connect + response head
  (→ 504); refusals and resets → 502.  A stale pooled connection is retried once on a
  fresh one inside :func:`~qpx.edges.exchange.exchange`, whatever the policy.
- ``Upgrade`` (WebSocket): relayed both ways after the upstream's 101.
"""

from __future__ import annotations

import time

from ..balancer import Endpoint, RouteBalancer, seed_for, start_probes
from ..http.errors import HttpError, UpstreamError
from ..http.headers import serialize, strip_set
from ..http.request import Request
from ..policy import CompiledRoute, ReversePolicy
from ..rules import MatchContext
from .base import ClientSession, HttpEdge, Services
from .exchange import Target, exchange
from .forward import authority, max_forwards, via_loop

monotonic = time.monotonic

IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
_SKIP = frozenset((b"host", b"expect", b"max-forwards", b"x-forwarded-for",
                   b"x-forwarded-proto", b"x-forwarded-host"))
_SKIP_ALL = strip_set(frozenset()) | _SKIP


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


class ReverseEdge(HttpEdge):
    def __init__(self, rp: ReversePolicy, services: Services):
        super().__init__(services, rp.name, rp.model.xdp, rp.trusted, rp.filter)
        self.rp = rp
        self.balancers = [RouteBalancer(r) for r in rp.routes]
        metrics = services.metrics
        for b in self.balancers:
            for e in b.endpoints():
                e.target = Target(e.hop.host, e.hop.port, False, False)
                if metrics is not None:
                    e.on_change = self._health_changed
                    metrics.upstream_health(rp.name, e.label, True)
            start_probes(b)

    def _health_changed(self, endpoint: Endpoint, healthy: bool) -> None:
        self.services.metrics.upstream_health(self.rp.name, endpoint.label, healthy)

    def upstream_message(self, e: UpstreamError) -> str:
        return "gateway_timeout" if e.status == 504 else "reverse_error"

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        services = self.services
        if req.method == "CONNECT":
            raise HttpError(405, "CONNECT is not served by a reverse proxy", "reverse_error")
        if req.method == "TRACE" and not services.trace_enabled:
            raise HttpError(405, "TRACE is disabled", "trace_disabled")
        if via_loop(req, services.policy.proxy_name):
            raise HttpError(508, "request already passed this proxy (Via)", "loop_detected")
        if req.form == "absolute" and req.scheme != "http":
            raise HttpError(400, f"{req.scheme}:// is not served here", "bad_request")
        if req.form == "asterisk":
            n = session.reply(200, [(b"allow", b"Allow", b"GET, HEAD, POST, PUT, DELETE, "
                                     b"OPTIONS, PATCH")], b"", req, close=req.has_body())
            session.log_request(req, 200, started, action="options")
            return True
        client = session.client
        ctx = MatchContext(client.key, client.dst_port, req.host, None, req.method, req.path,
                           req)
        route = self.rp.route(ctx)
        self.count_rules(self.rp.ruleset)
        if route is None:
            raise HttpError(404, "no route matches", "reverse_error")
        if route.reply is not None:
            reply = route.reply
            headers = list(reply.headers)
            if route.headers is not None and route.headers.response is not None:
                headers = route.headers.response.apply(headers)
            n = session.reply(reply.status, headers, reply.body, req, close=req.has_body(),
                              head_only=req.method == "HEAD")
            session.log_request(req, reply.status, started, rule=route.label,
                                action="respond", bytes_out=n)
            return True
        mf = max_forwards(req)
        if mf == 0:
            n = session.reply(200, [(b"allow", b"Allow", b"GET, HEAD, POST, PUT, DELETE, "
                                     b"OPTIONS")], b"", req, close=req.has_body())
            session.log_request(req, 200, started, action="max-forwards", bytes_out=n)
            return True
        return self.forward(session, req, route, started, mf)

    def forward(self, session: ClientSession, req: Request, route: CompiledRoute,
                started: float, mf: int | None) -> bool:
        services = self.services
        balancer = self.balancers[route.index]
        path = req.path or "/"
        if route.rewrites:
            path = rewrite_path(route, path)
        headers = None
        if route.headers is not None and route.headers.request is not None:
            headers = route.headers.request.apply(req.headers)
        # RFC 9112 §3.2.2: for an absolute-form target the authority in the URI is the
        # host, whatever Host says (routing already used it).
        client_host = authority(req.host, req.port) if req.form == "absolute" else \
            (req.get(b"host") or authority(req.host or "", req.port))
        ip = session.client.ip.encode()
        xff = ip if req.plain else b", ".join(req.values(b"x-forwarded-for") + [ip])
        extra = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %s\r\n%s" \
            % (xff, client_host, services.policy.via_line)
        if mf is not None:
            extra += b"Max-Forwards: %d\r\n" % (mf - 1)
        if req.chunked:
            extra += b"Transfer-Encoding: chunked\r\n"
        elif req.content_length is not None:
            extra += b"Content-Length: %d\r\n" % req.content_length
        if req.upgrade is not None:
            extra += b"Connection: Upgrade\r\nUpgrade: " + req.upgrade + b"\r\n"
        response_control = route.headers.response if route.headers is not None else None
        seed = seed_for(session.client.ip, req.host, req.method, req.path) \
            if len(balancer.backends) > 1 else 0
        retryable = req.method in IDEMPOTENT and not req.has_body()
        method = req.method.encode()
        target_path = path.encode()
        tried: set[Endpoint] | tuple = ()
        attempt = 0
        while True:
            attempt += 1
            endpoint = balancer.pick(seed, tried)
            if endpoint is None:
                raise HttpError(503, "no healthy upstream", "no_healthy_upstream",
                                headers=((b"retry-after", b"Retry-After",
                                          str(balancer.retry_after()).encode()),))
            host = client_host if route.preserve_host else endpoint.authority_b
            if headers is None and req.plain:
                head = b"%s %s%s HTTP/1.1%s\r\nHost: %s\r\n%s\r\n" % (
                    method, endpoint.base_b, target_path, req.forward_lines(), host, extra)
            else:
                skip = strip_set(req.conn_tokens) | _SKIP if req.conn_tokens else _SKIP_ALL
                head = serialize(b"%s %s%s HTTP/1.1\r\n" % (method, endpoint.base_b,
                                                               target_path),
                                 req.headers if headers is None else headers, skip,
                                 [b"Host: " + host + b"\r\n", extra])
            target = endpoint.target
            endpoint.inflight += 1
            try:
                result = exchange(session, req, target, head, route.timeout, response_control,
                                  req.upgrade is not None)
            except UpstreamError as e:
                endpoint.failure()
                tried = tried | {endpoint} if tried else {endpoint}
                can_retry = (not e.sent) or (retryable and e.before_response)
                if attempt < route.attempts and can_retry:
                    if route.backoff:
                        import gevent

                        gevent.sleep(route.backoff)
                    continue
                raise
            finally:
                endpoint.inflight -= 1
            endpoint.success()
            if services.metrics is not None:
                services.metrics.upstream_latency(self.name, result.head_latency)
            session.log_request(req, result.status, started, route.label, "proxy",
                                result.bytes_in, result.bytes_out, result.upstream)
            return not session.closing
