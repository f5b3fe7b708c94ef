"""TLS inspection of a CONNECT tunnel: the ``inspect`` action on a forward listener.

Order (the origin's certificate problems are never hidden, never trusted silently):

1. connect to the origin and complete TLS with it, verifying its certificate against the
   system store unless the host is in ``verify_exceptions`` — a failure answers the
   CONNECT with 502 and the reason in the access log;
2. answer ``200 Connection Established``;
3. terminate the client's TLS with a leaf certificate for the CONNECT host, signed by the
   inspection CA (cached, or made on the hub's thread pool: other connections go on),
   offering ``h2`` and ``http/1.1`` by ALPN; a client that refuses it (it does not trust
   the CA) is logged as such;
4. serve the decrypted HTTP/1.1 requests through the listener's rules — ``host``, ``sni``
   are the CONNECT host, ``path``, ``method`` and ``headers`` the request's — so
   ``block``, ``respond`` and header control work inside HTTPS; everything else goes to
   the origin over pooled TLS connections (the first one is the connection of step 1).
"""

from __future__ import annotations

import ssl
import time

from ..http import writer
from ..http.errors import HttpError
from ..http.request import Request
from ..netio import DeadlineExceeded
from ..policy import ListenerPolicy
from ..rules import MatchContext
from ..tlsconn import handshake, wrap
from ..upstream import Target
from .common import HttpEdge, answer_blocked, answer_local, refuse_trace_and_loops
from .exchange import UpstreamExchange, dial
from .session import ClientSession

monotonic = time.monotonic


def open_origin(edge: HttpEdge, lp: ListenerPolicy, host: str, port: int, guard: bool,
                server_name: str | None = None) -> tuple[Target, object]:
    """Connect to the origin and complete TLS with it, verified unless excepted.
    Raises UpstreamError (502/504, the reason said) or HttpError (guards)."""
    services = edge.services
    plan = lp.inspection
    if plan is None or plan.leaves is None:
        raise HttpError(502, "TLS inspection has no CA", "proxy_error")
    name = server_name or host
    target = Target(host, port, via_proxy=False, guard=guard, tls=plan.origin_context(name),
                    sni=server_name if server_name and server_name != host else None)
    return target, dial(services, edge.name, target, monotonic() + services.upstream_timeout)


def serve_decrypted(edge: HttpEdge, lp: ListenerPolicy, session: ClientSession, name: str,
                    port: int, target: Target, up, log_line, authorization=None) -> bool:
    """TLS with the client (a leaf for ``name``), then its requests through the rules;
    ``log_line(reason)`` writes the flow's own access log line."""
    services = edge.services
    metrics = services.metrics
    try:
        ctx, kind = services.threadpool_apply(lp.inspection.leaves.context, name)
        if metrics is not None:
            metrics.leaf(edge.name, kind)
        conn = session.conn
        try:
            wrap(conn, ctx, True)
            handshake(conn, monotonic() + services.tls_handshake_timeout)
        except (ssl.SSLError, OSError, DeadlineExceeded) as e:
            log_line(client_refusal(e))
            up.close()
            return False
    except BaseException:
        up.close()
        raise
    services.pool.put(target.key, up)  # the first decrypted request takes it
    log_line(None)
    if metrics is not None:
        metrics.inspected(edge.name)
    inner = InspectedEdge(edge, lp, name, port, target, authorization)
    if conn.sock.selected_alpn_protocol() == "h2":  # the client offered it: HTTP/2 inside
        inner.serve_h2(conn, session.client, b"")
    else:
        inner.serve(ClientSession(conn, services, session.client, edge.name, b"",
                                  edge.limits))
    return False


def intercept(edge: HttpEdge, lp: ListenerPolicy, session: ClientSession, req: Request,
              decision, started: float, guard: bool) -> bool:
    """A CONNECT whose rule says ``inspect``."""
    if session.buf:
        raise HttpError(400, "TLS bytes arrived before the CONNECT answer", "bad_request")
    host = req.host.lower()
    target, up = open_origin(edge, lp, host, req.port, guard)
    try:
        session.conn.sendall(writer.connect_established(edge.services.policy.via))
    except BaseException:
        up.close()
        raise
    session.end_after_this()

    def log_line(reason):
        session.log_request(req, 200, started, decision.rule, "inspect",
                            upstream=target.label, reason=reason)
    return serve_decrypted(edge, lp, session, host, req.port, target, up, log_line,
                           req.get(b"proxy-authorization") if lp.needs_auth else None)


def client_refusal(e: BaseException) -> str:
    if isinstance(e, DeadlineExceeded):
        return "the client did not complete TLS with the inspection certificate"
    reason = getattr(e, "reason", None) or str(e)
    if "UNKNOWN_CA" in reason or "CERTIFICATE_UNKNOWN" in reason or "BAD_CERTIFICATE" in \
            reason:
        return f"the client does not trust the inspection CA ({reason})"
    if reason in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNEXPECTED_MESSAGE") or \
            "record" in reason.lower():
        return f"the client sent no TLS after CONNECT ({reason})"
    return f"TLS with the client failed: {reason}"


class InspectedEdge(HttpEdge):
    """The decrypted requests of one inspected tunnel."""

    def __init__(self, parent: HttpEdge, lp: ListenerPolicy, host: str, port: int,
                 target: Target, authorization: bytes | None):
        super().__init__(parent.services, parent.name, None, None, None, parent.limits)
        self.lp = lp
        self.host, self.port = host, port
        self.target = target
        self.authorization = authorization
        self.authority = writer.authority(host, port if port != 443 else None)

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        services = self.services
        if req.method == "CONNECT":
            raise HttpError(405, "CONNECT inside an inspected tunnel", "bad_request")
        refuse_trace_and_loops(req, services)
        if req.host and req.host.lower() != self.host:
            raise HttpError(421, f"host {req.host} is not the inspected host {self.host}",
                            "misdirected_request")
        ctx = MatchContext(session.client.key, self.port, self.host, self.host, req.method,
                           req.path, req)
        decision = self.lp.decide(ctx, services.policy.users, self.authorization)
        self.count_rules(ctx)
        action = decision.action
        if action.type == "block":
            return answer_blocked(session, req, started, "blocked", decision.rule,
                                  "blocked by rule inside an inspected tunnel")
        if action.type == "respond":
            return answer_local(session, req, started, action.reply,
                                decision.headers.response if decision.headers else None,
                                decision.rule)
        control = decision.headers
        headers = None
        if control is not None and control.request is not None:
            headers = control.request.apply(req.headers)
        mf = req.max_forwards()
        head = writer.request_head(req, req.method.encode(), (req.path or "/").encode(),
                                   None, req.get(b"host") or self.authority,
                                   services.policy.via, headers,
                                   None if mf is None else max(mf - 1, 0))
        result = UpstreamExchange(session, req, self.target,
                                  control.response if control is not None else None,
                                  req.upgrade is not None).run(head, services.upstream_timeout)
        return self.finish(session, req, started, decision.rule, "inspect", result)
