"""The forward edge: clients configured to use qpxd as their HTTP proxy.

Accepts absolute-form ``http://`` requests and ``CONNECT host:port`` (origin-form is
refused with 400: a forward listener is no open reverse proxy).  Per request: loop and
TRACE checks, the listener's rules (with Basic auth, spec §2.4), then the action:

- ``block`` → 403 ``messages.blocked``; ``respond`` → the rule's local response;
- ``direct`` → the origin, pooled keep-alive connections, SSRF guard and
  ``connect_ports`` for CONNECT;
- ``proxy`` / ``tunnel`` → through the action's (or listener's) upstream proxy: absolute
  form for plain HTTP, ``CONNECT`` for tunnels; without any upstream, direct.

Every request is decided on its own, so two requests on one keep-alive connection to
two origins each reach their own origin.
"""

from __future__ import annotations

import time

from ..http.errors import HttpError, UpstreamError
from ..http.headers import serialize, strip_set
from ..http.request import Request
from ..http.response import ResponseHeadParser
from ..netio import Conn, DeadlineExceeded
from ..policy import ActionPlan, Decision, ListenerPolicy
from ..relay import tunnel
from ..rules import MatchContext
from .base import ClientSession, HttpEdge, Services
from .exchange import Target, TargetCache, dial, exchange

monotonic = time.monotonic

_SKIP_EXTRA = frozenset((b"host", b"expect", b"max-forwards"))
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n"


def via_loop(req: Request, proxy_name: bytes) -> bool:
    """True when a Via entry's received-by is our own name (RFC 9110 §7.6.3)."""
    if req.plain:  # no Via field at all (see Request.plain)
        return False
    for value in req.values(b"via"):
        for entry in value.split(b","):
            parts = entry.split()
            if len(parts) >= 2 and parts[1].lower() == proxy_name:
                return True
    return False


def authority(host: str, port: int | None) -> bytes:
    h = f"[{host}]" if ":" in host else host
    return (h if port is None else f"{h}:{port}").encode("ascii")


def request_head(req: Request, first_line: bytes, host: bytes, via: bytes, headers=None,
                 max_forwards: int | None = None) -> bytes:
    """The head sent upstream: our framing, our Host, hop-by-hop fields stripped.
    ``headers``: a header-controlled field list; None forwards the client's fields."""
    if headers is None and req.plain:  # the common case: cut the raw head, no field list
        parts = [first_line[:-2], req.forward_lines(), b"\r\nHost: ", host, b"\r\nVia: ", via,
                 b"\r\n"]
        if req.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif req.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % req.content_length)
        parts.append(b"\r\n")
        return b"".join(parts)
    skip = strip_set(req.conn_tokens) | _SKIP_EXTRA
    extra = [b"Host: " + host + b"\r\n", b"Via: " + via + b"\r\n"]
    if max_forwards is not None:
        extra.append(b"Max-Forwards: %d\r\n" % max_forwards)
    if req.chunked:
        extra.append(b"Transfer-Encoding: chunked\r\n")
    elif req.content_length is not None:
        extra.append(b"Content-Length: %d\r\n" % req.content_length)
    if req.upgrade is not None:
        extra.append(b"Connection: Upgrade\r\nUpgrade: " + req.upgrade + b"\r\n")
    return serialize(first_line, req.headers if headers is None else headers, skip, extra)


def max_forwards(req: Request) -> int | None:
    """Max-Forwards of an OPTIONS/TRACE request (RFC 9110 §7.6.2), None otherwise."""
    if req.plain or req.method not in ("OPTIONS", "TRACE"):
        return None
    value = req.get(b"max-forwards")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 9:
        raise HttpError(400, "invalid Max-Forwards", "bad_request")
    return int(value)


def local_reply(session: ClientSession, req: Request, decision: Decision,
                started: float) -> bool:
    """Answer with the rule's ``local_response`` and its response header control."""
    reply = decision.action.reply
    headers = list(reply.headers)
    if decision.headers is not None and decision.headers.response is not None:
        headers = decision.headers.response.apply(headers)
    n = session.reply(reply.status, headers, reply.body, req, close=req.has_body(),
                      head_only=req.method == "HEAD")
    session.log_request(req, reply.status, started, rule=decision.rule, action="respond",
                        bytes_out=n)
    return True


def connect_via(services: Services, up: Conn, authority_b: bytes, deadline: float) -> bytes:
    """CONNECT through an upstream proxy; returns the bytes read after its 2xx head."""
    up.deadline = deadline
    try:
        up.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\nVia: %s\r\n\r\n"
                   % (authority_b, authority_b, services.policy.via))
        parser = ResponseHeadParser(65536)
        while True:
            data = up.recv()
            if not data:
                raise UpstreamError(502, "upstream proxy closed during CONNECT")
            resp = parser.feed(data)
            if resp is None:
                continue
            if 100 <= resp.status < 200:
                parser, data = ResponseHeadParser(65536), parser.rest
                resp = parser.feed(data) if data else None
                if resp is None:
                    continue
            if not 200 <= resp.status < 300:
                raise UpstreamError(502, f"upstream proxy answered CONNECT with {resp.status}")
            up.deadline = 0.0
            return parser.rest
    except DeadlineExceeded:
        raise UpstreamError(504, "upstream proxy CONNECT timed out") from None
    except OSError as e:
        raise UpstreamError(502, f"upstream proxy CONNECT failed: {e}") from None


class ForwardEdge(HttpEdge):
    def __init__(self, lp: ListenerPolicy, services: Services):
        super().__init__(services, lp.name, lp.model.xdp, lp.trusted, lp.filter)
        self.lp = lp
        self.guard = not lp.model.allow_local_destinations
        self.targets = TargetCache(self.guard)

    # ------------------------------------------------------------------ request

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        services = self.services
        policy = services.policy
        if req.form in ("origin", "asterisk"):
            raise HttpError(400, "a forward proxy needs an absolute URI or CONNECT")
        if req.method == "TRACE" and not services.trace_enabled:
            raise HttpError(405, "TRACE is disabled", "trace_disabled")
        if via_loop(req, policy.proxy_name):
            raise HttpError(508, "request already passed this proxy (Via)", "loop_detected")
        connect = req.method == "CONNECT"
        if not connect and req.scheme != "http":
            raise HttpError(501, f"{req.scheme}:// is not proxied (use CONNECT)",
                            "not_implemented")
        port = req.port or 80
        ctx = MatchContext(session.client.key, port, req.host, req.host if connect else None,
                           req.method, req.path, req)
        decision = self.lp.decide(ctx, policy.users, req.get(b"proxy-authorization")
                                  if self.lp.needs_auth else None)
        self.count_rules(self.lp.ruleset)
        action = decision.action
        if decision.challenge:
            n = session.reply(407, [(b"proxy-authenticate", b"Proxy-Authenticate",
                                     b'Basic realm="' + policy.realm + b'"'),
                                    (b"content-type", b"Content-Type",
                                     b"text/plain; charset=utf-8")],
                              policy.messages["proxy_auth_required"], req,
                              close=req.has_body())
            session.log_request(req, 407, started, rule=decision.rule, action="auth",
                                bytes_out=n, reason="proxy authentication required")
            return True
        if action.type == "block":
            n = session.reply(403, [(b"content-type", b"Content-Type",
                                     b"text/plain; charset=utf-8")],
                              policy.messages["blocked"], req, close=req.has_body())
            session.log_request(req, 403, started, rule=decision.rule, action="block",
                                bytes_out=n, reason="blocked by rule" if decision.rule
                                else "blocked by default action")
            return True
        if action.type == "respond":
            return local_reply(session, req, decision, started)
        if connect:
            return self.connect(session, req, decision, started)
        return self.forward(session, req, decision, started, port)

    def forward(self, session: ClientSession, req: Request, decision: Decision,
                started: float, port: int) -> bool:
        services = self.services
        action: ActionPlan = decision.action
        mf = max_forwards(req)
        if mf == 0:
            return self.answer_max_forwards(session, req, started, decision)
        headers = None
        if decision.headers is not None and decision.headers.request is not None:
            headers = decision.headers.request.apply(req.headers)
        direct, host = self.targets.get(req.host, req.port)
        target_path = req.path.encode("ascii")
        if action.via is not None:
            first = b"%s http://%s%s HTTP/1.1\r\n" % (req.method.encode(), host, target_path)
            target = Target(action.via.host, action.via.port, True, False)
        else:
            first = b"%s %s HTTP/1.1\r\n" % (req.method.encode(), target_path)
            target = direct
        head = request_head(req, first, host, services.policy.via, headers,
                            None if mf is None else mf - 1)
        resp_control = decision.headers.response if decision.headers is not None else None
        result = exchange(session, req, target, head, services.upstream_timeout, resp_control,
                          req.upgrade is not None)
        if services.metrics is not None:
            services.metrics.upstream_latency(self.name, result.head_latency)
        session.log_request(req, result.status, started, decision.rule, action.type,
                            result.bytes_in, result.bytes_out, result.upstream)
        return not session.closing

    def answer_max_forwards(self, session: ClientSession, req: Request, started: float,
                            decision: Decision) -> bool:
        if req.method == "TRACE":
            echo = b"%s %s HTTP/1.1\r\n" % (req.method.encode(), req.target.encode()) + \
                b"".join(n + b": " + v + b"\r\n" for ln, n, v in req.headers
                         if ln not in (b"proxy-authorization", b"authorization", b"cookie")) \
                + b"\r\n"
            n = session.reply(200, [(b"content-type", b"Content-Type", b"message/http")],
                              echo, req, close=req.has_body())
        else:
            n = session.reply(200, [(b"allow", b"Allow",
                                     b"GET, HEAD, POST, PUT, DELETE, OPTIONS, CONNECT")],
                              b"", req, close=req.has_body())
        session.log_request(req, 200, started, rule=decision.rule, action="max-forwards",
                            bytes_out=n)
        return True

    # ------------------------------------------------------------------ CONNECT

    def connect(self, session: ClientSession, req: Request, decision: Decision,
                started: float) -> bool:
        services = self.services
        action = decision.action
        ports = self.lp.connect_ports
        if ports and req.port not in ports:
            raise HttpError(403, f"CONNECT to port {req.port} is not allowed", "forbidden")
        deadline = monotonic() + services.upstream_timeout
        authority_b = authority(req.host, req.port)
        if action.via is not None:
            target = Target(action.via.host, action.via.port, via_proxy=True, guard=False)
        else:
            target = Target(req.host, req.port, via_proxy=False,
                            guard=not self.lp.model.allow_local_destinations)
        up = dial(session, target, deadline)
        try:
            leftover = b""
            if action.via is not None:
                leftover = connect_via(services, up, authority_b, deadline)
            out = ESTABLISHED + b"Via: " + services.policy.via + b"\r\n\r\n"
            session.conn.sendall(out)
            session.closing = True
            try:
                up_bytes, down_bytes = tunnel(session.conn, up, services.tunnel_idle,
                                              services.buffers, to_b=session.buf,
                                              to_a=leftover)
            except (OSError, DeadlineExceeded) as e:
                session.log_request(req, 200, started, rule=decision.rule,
                                    action=action.type, upstream=target.label,
                                    reason=f"tunnel ended: {e}")
                return False
            if services.metrics is not None:
                services.metrics.tunnel_bytes(self.name, up_bytes, down_bytes)
            session.log_request(req, 200, started, rule=decision.rule, action=action.type,
                                bytes_in=up_bytes, bytes_out=len(out) + down_bytes,
                                upstream=target.label)
            return False
        finally:
            up.close()
