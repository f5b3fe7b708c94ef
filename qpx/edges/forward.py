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

from ..http import writer
from ..http.errors import HttpError
from ..http.request import Request
from ..netio import DeadlineExceeded
from ..policy import ActionPlan, Decision, ListenerPolicy
from ..relay import tunnel
from ..rules import MatchContext
from ..upstream import Target, TargetCache
from .common import (
    ALLOW_FORWARD,
    HttpEdge,
    answer_blocked,
    answer_local,
    answer_max_forwards,
    connect_via,
    refuse_trace_and_loops,
)
from .exchange import UpstreamExchange, dial
from .services import Services
from .session import TEXT_PLAIN, ClientSession

monotonic = time.monotonic


class ForwardEdge(HttpEdge):
    def __init__(self, lp: ListenerPolicy, services: Services):
        super().__init__(services, lp.name, lp.model.xdp, lp.trusted, lp.filter,
                         lp.limits)
        self.lp = lp
        self.guard = not lp.model.allow_local_destinations
        self.targets = TargetCache(self.guard)

    # ------------------------------------------------------------------ request

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        policy = self.services.policy
        if req.form in ("origin", "asterisk"):
            raise HttpError(400, "a forward proxy needs an absolute URI or CONNECT")
        refuse_trace_and_loops(req, self.services)
        connect = req.method == "CONNECT"
        if not connect and req.scheme not in ("http", "https"):
            raise HttpError(501, f"{req.scheme}:// is not proxied (use CONNECT)",
                            "not_implemented")
        port = req.port or 80
        ctx = MatchContext(session.client.key, port, req.host, req.host if connect else None,
                           req.method, req.path, req)
        decision = self.lp.decide(ctx, policy.users, req.get(b"proxy-authorization")
                                  if self.lp.needs_auth else None)
        self.count_rules(ctx)
        action = decision.action
        if decision.challenge:
            return self.challenge(session, req, started, decision)
        if action.type == "block":
            return answer_blocked(session, req, started, "blocked", decision.rule,
                                  "blocked by rule" if decision.rule
                                  else "blocked by default action")
        if action.type == "respond":
            return answer_local(session, req, started, action.reply,
                                decision.headers.response if decision.headers else None,
                                decision.rule)
        if connect:
            return self.connect(session, req, decision, started)
        return self.forward(session, req, decision, started)

    def challenge(self, session: ClientSession, req: Request, started: float,
                  decision: Decision) -> bool:
        """407 with ``Proxy-Authenticate: Basic``."""
        policy = self.services.policy
        n = session.reply(407, [(b"proxy-authenticate", b"Proxy-Authenticate",
                                 b'Basic realm="' + policy.realm + b'"'), TEXT_PLAIN],
                          policy.messages["proxy_auth_required"], req, close=req.has_body())
        session.log_request(req, 407, started, rule=decision.rule, action="auth",
                            bytes_out=n, reason="proxy authentication required")
        return True

    def forward(self, session: ClientSession, req: Request, decision: Decision,
                started: float) -> bool:
        services = self.services
        action: ActionPlan = decision.action
        mf = req.max_forwards()
        if mf == 0:
            return answer_max_forwards(session, req, started, decision.rule, ALLOW_FORWARD,
                                       echo_trace=True)
        control = decision.headers
        headers = None
        if control is not None and control.request is not None:
            headers = control.request.apply(req.headers)
        if req.scheme == "https":  # absolute-form https://: qpxd speaks TLS to the origin
            host = writer.authority(req.host, req.port)
            direct = Target(req.host, req.port or 443, False, self.guard,
                            services.origin_tls())
        else:
            direct, host = self.targets.get(req.host, req.port)
        if action.via is not None:
            target = Target(action.via.host, action.via.port, True, False, action.via.tls)
            absolute = host
        else:
            target, absolute = direct, None
        head = writer.request_head(req, req.method.encode(), req.path.encode("ascii"),
                                   absolute, host, services.policy.via, headers,
                                   None if mf is None else mf - 1, req.scheme.encode())
        result = UpstreamExchange(session, req, target,
                                  control.response if control is not None else None,
                                  req.upgrade is not None).run(head, services.upstream_timeout)
        return self.finish(session, req, started, decision.rule, action.type, result)

    # ------------------------------------------------------------------ CONNECT

    def connect(self, session: ClientSession, req: Request, decision: Decision,
                started: float) -> bool:
        services = self.services
        action = decision.action
        ports = self.lp.connect_ports
        if ports and req.port not in ports:
            raise HttpError(403, f"CONNECT to port {req.port} is not allowed", "forbidden")
        if action.type == "inspect":
            from .inspect import intercept

            return intercept(self, self.lp, session, req, decision, started, self.guard)
        deadline = monotonic() + services.upstream_timeout
        if action.via is not None:
            target = Target(action.via.host, action.via.port, via_proxy=True, guard=False,
                            tls=action.via.tls)
        else:
            target = Target(req.host, req.port, via_proxy=False, guard=self.guard)
        up = dial(services, self.name, target, deadline)
        try:
            leftover = b""
            if action.via is not None:
                leftover = connect_via(services, up, writer.authority(req.host, req.port),
                                       deadline)
            out = writer.connect_established(services.policy.via)
            session.conn.sendall(out)
            session.end_after_this()
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
