"""The transparent edge: traffic redirected to qpxd without any client setting.

Target discovery, in order: the PROXY destination (a trusted frontend said where the
client was going), then the kernel's original destination (``SO_ORIGINAL_DST`` for IPv4,
``IP6T_SO_ORIGINAL_DST`` for IPv6, after an iptables/nftables REDIRECT), then the HTTP
``Host`` / TLS SNI (port 80/443).  An original destination equal to the listener's own
address means the connection was not redirected and counts as unknown.

The first bytes are sniffed under ``tls_peek_timeout_ms``:

- a TLS ClientHello (reassembled across records, bounded) → rules on ``sni``,
  ``dst_port``, ``src_ip`` and ``host`` = SNI → the raw bytes relayed to the target
  (``direct``/``tunnel``) or through an upstream proxy's CONNECT (``proxy``); ``block``
  and ``respond`` close;
- anything else → HTTP, handled like the forward edge (rules, actions, header control,
  local responses), each request sent to the discovered target; ``block`` answers 403
  ``messages.forbidden``, upstream failures 502/504 (not a silent close);
- no byte at all (server-speaks-first protocols) → when the target is known and the
  rules allow its port (with no host), a raw relay; otherwise close.

Loop guard: a target that is one of qpxd's own listening addresses is refused (508 for
HTTP, close otherwise), never dialed.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time

from .. import log
from ..http import writer
from ..http.errors import HttpError, UpstreamError
from ..http.h2map import looks_like_preface
from ..http.request import Request
from ..netio import Conn, DeadlineExceeded
from ..policy import ListenerPolicy
from ..relay import tunnel
from ..rules import MatchContext
from ..tlssniff import ClientHelloSniffer, NotTls
from ..upstream import Target
from .common import (
    HttpEdge,
    answer_blocked,
    answer_local,
    connect_via,
    peek_hello,
    refuse_trace_and_loops,
)
from .exchange import UpstreamExchange, dial
from .services import Services
from .session import ClientSession

monotonic = time.monotonic

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-NAT destination of a REDIRECTed connection, or None."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            ip = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            ip = socket.inet_ntop(socket.AF_INET, raw[4:8])
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            log.log(logging.DEBUG, "SO_ORIGINAL_DST failed", error=str(e))
        return None
    local = sock.getsockname()
    if (ip, port) == (local[0], local[1]):
        return None  # not redirected: conntrack reports our own address
    return ip, port


class TransparentEdge(HttpEdge):
    def __init__(self, lp: ListenerPolicy, services: Services):
        super().__init__(services, lp.name, lp.model.xdp, lp.trusted, lp.filter,
                         lp.limits)
        self.lp = lp
        self.guard = not lp.model.allow_local_destinations
        # inspecting: the ClientHello must stay in the socket for our own TLS server
        self.exact_prologue = lp.inspection is not None

    # ------------------------------------------------------------------ connection

    def start(self, session: ClientSession) -> None:
        """Find the target, sniff the first bytes, and take the TLS, HTTP or raw path."""
        conn = session.conn
        target = session.client.proxy_dst or original_destination(conn.sock)
        session.target = target
        if self.exact_prologue and not session.buf:
            data = self._peek_first(conn)
            if data[:1] == b"\x16":
                self._tls_peeked(session, target)
                return
            if data:
                data = conn.recv()  # HTTP or h2c: take the bytes
        else:
            data = self._sniff(conn, session.buf)
        if not data:
            self._raw(session, target)
        elif data[0] == 0x16:
            self._tls(session, target, data)
        elif looks_like_preface(data):  # h2c with prior knowledge
            self.serve_h2(conn, session.client, data, target)
        else:
            session.buf = data
            self.serve(session)

    def _sniff(self, conn: Conn, data: bytes) -> bytes:
        """The first bytes the client sends within the peek timeout (b"" if none)."""
        if data:
            return data
        conn.deadline = monotonic() + self.services.peek_timeout
        try:
            data = conn.recv()
        except DeadlineExceeded:
            data = b""
        conn.deadline = 0.0
        return data

    def _peek_first(self, conn: Conn) -> bytes:
        conn.deadline = monotonic() + self.services.peek_timeout
        try:
            return conn.peek()
        except DeadlineExceeded:
            return b""
        finally:
            conn.deadline = 0.0

    def _tls_peeked(self, session: ClientSession, target) -> None:
        """A TLS flow on an inspecting listener: the ClientHello is peeked (left in the
        socket), so the rule may relay it untouched or inspect it."""
        started = monotonic()
        hello = peek_hello(session.conn, self.services.peek_timeout)
        if isinstance(hello, str):
            self._refuse(session, started, hello)
            return
        decided = self._tls_decision(session, target, hello.sni, started)
        if decided is None:
            return
        decision, host, port = decided
        sni = hello.sni
        if decision.action.type == "inspect" and not decision.challenge:
            from .inspect import open_origin, serve_decrypted

            try:
                tgt, up = open_origin(self, self.lp, host, port, self.guard, sni)
            except (HttpError, UpstreamError) as e:
                self._refuse(session, started, f"inspect: {e}", decision.rule)
                return

            def log_line(reason):
                session.log_request(None, 200, started, decision.rule, "inspect",
                                    upstream=tgt.label, reason=reason)
            serve_decrypted(self, self.lp, session, sni or host, port, tgt, up, log_line)
            return
        self._relay_tls(session, decision, host, port, sni, b"", started)

    def _decide(self, session: ClientSession, port: int, host: str | None, sni: str | None):
        ctx = MatchContext(src_ip=session.client.key, dst_port=port, host=host, sni=sni)
        decision = self.lp.decide(ctx, self.services.policy.users)
        self.count_rules(ctx)
        return decision

    def _refuse(self, session: ClientSession, started: float, why: str, rule=None) -> None:
        session.log_request(None, 0, started, rule=rule, action="close", reason=why)

    def _target(self, decision, host: str, port: int, deadline: float,
                session: ClientSession):
        """Dial the target (direct) or the upstream proxy and CONNECT through it."""
        via = decision.action.via
        if via is None:
            return dial(self.services, self.name, Target(host, port, via_proxy=False,
                                                         guard=self.guard), deadline), b""
        up = dial(self.services, self.name, Target(via.host, via.port, via_proxy=True,
                                                   guard=False, tls=via.tls), deadline)
        try:
            rest = connect_via(self.services, up, writer.authority(host, port), deadline)
        except BaseException:
            up.close()
            raise
        return up, rest

    def _relay(self, session: ClientSession, decision, host: str, port: int, first: bytes,
               started: float, kind: str) -> None:
        services = self.services
        try:
            up, rest = self._target(decision, host, port, monotonic() + services.upstream_timeout,
                                    session)
        except Exception as e:  # HttpError (guard/loop) or UpstreamError: close quietly
            self._refuse(session, started, f"{kind}: {e}", decision.rule)
            return
        try:
            sent_up, sent_down = tunnel(session.conn, up, services.tunnel_idle,
                                        services.buffers, to_b=first, to_a=rest)
            if services.metrics is not None:
                services.metrics.tunnel_bytes(self.name, sent_up, sent_down)
            session.log_request(None, 200, started, rule=decision.rule, action=kind,
                                bytes_in=sent_up, bytes_out=sent_down,
                                upstream=f"{host}:{port}")
        except (OSError, DeadlineExceeded):
            pass
        finally:
            up.close()

    def _tls(self, session: ClientSession, target, data: bytes) -> None:
        started = monotonic()
        conn = session.conn
        sniffer = ClientHelloSniffer()
        conn.deadline = monotonic() + self.services.peek_timeout
        try:
            hello = sniffer.feed(data)
            while hello is None:
                chunk = conn.recv()
                if not chunk:
                    self._refuse(session, started, "closed inside the TLS ClientHello")
                    return
                hello = sniffer.feed(chunk)
        except NotTls as e:
            self._refuse(session, started, f"not a TLS ClientHello: {e}")
            return
        except DeadlineExceeded:
            self._refuse(session, started, "ClientHello not complete before the peek deadline")
            return
        conn.deadline = 0.0
        decided = self._tls_decision(session, target, hello.sni, started)
        if decided is not None:
            decision, host, port = decided
            self._relay_tls(session, decision, host, port, hello.sni, bytes(sniffer.raw),
                            started)

    def _tls_decision(self, session: ClientSession, target, sni: str | None,
                      started: float):
        """(decision, host, port) for a TLS flow, or None (refused and logged)."""
        if target is None and sni is None:
            self._refuse(session, started, "TLS without SNI and no original destination")
            return None
        host, port = target if target is not None else (sni, 443)
        return self._decide(session, port, sni or host, sni), host, port

    def _relay_tls(self, session: ClientSession, decision, host: str, port: int,
                   sni: str | None, first: bytes, started: float) -> None:
        if decision.action.type not in ("direct", "tunnel", "proxy") or decision.challenge:
            self._refuse(session, started, f"TLS to {sni or host}:{port} refused by "
                                           f"{decision.rule or 'the default action'}",
                         decision.rule)
            return
        self._relay(session, decision, host, port, first, started, "tls")

    def _raw(self, session: ClientSession, target) -> None:
        started = monotonic()
        if target is None:
            self._refuse(session, started, "no bytes and no original destination")
            return
        host, port = target
        decision = self._decide(session, port, None, None)
        if decision.action.type not in ("direct", "tunnel", "proxy") or decision.challenge:
            self._refuse(session, started, f"silent client to {host}:{port} refused by "
                                           f"{decision.rule or 'the default action'}",
                         decision.rule)
            return
        self._relay(session, decision, host, port, b"", started, "raw")

    # ------------------------------------------------------------------ HTTP

    def handle_request(self, session: ClientSession, req: Request, started: float) -> bool:
        services = self.services
        policy = services.policy
        if req.method == "CONNECT":
            raise HttpError(405, "CONNECT on a transparent listener", "forbidden")
        refuse_trace_and_loops(req, services)
        if session.target is not None:
            host, port = session.target
        elif req.host:
            host, port = req.host, req.port or 80
        else:
            raise HttpError(400, "no destination: not redirected and no Host header")
        ctx = MatchContext(session.client.key, port, req.host or host, None, req.method,
                           req.path, req)
        decision = self.lp.decide(ctx, policy.users, req.get(b"proxy-authorization")
                                  if self.lp.needs_auth else None)
        self.count_rules(ctx)
        action = decision.action
        control = decision.headers
        if decision.challenge or action.type == "block":
            return answer_blocked(session, req, started, "forbidden", decision.rule,
                                  "blocked")
        if action.type == "respond":
            return answer_local(session, req, started, action.reply,
                                control.response if control else None, decision.rule)
        return self.forward(session, req, decision, started, host, port)

    def forward(self, session: ClientSession, req: Request, decision, started: float,
                host: str, port: int) -> bool:
        services = self.services
        action = decision.action
        control = decision.headers
        headers = None
        if control is not None and control.request is not None:
            headers = control.request.apply(req.headers)
        host_hdr = writer.authority(req.host, req.port) if req.form == "absolute" else \
            (req.get(b"host") or writer.authority(host, port))
        if action.via is not None:
            absolute = writer.authority(host, port)
            target = Target(action.via.host, action.via.port, via_proxy=True, guard=False,
                            tls=action.via.tls)
        else:
            absolute = None
            target = Target(host, port, via_proxy=False, guard=self.guard)
        head = writer.request_head(req, req.method.encode(), (req.path or "/").encode("ascii"),
                                   absolute, host_hdr, services.policy.via, headers)
        result = UpstreamExchange(session, req, target,
                                  control.response if control is not None else None,
                                  req.upgrade is not None).run(head, services.upstream_timeout)
        return self.finish(session, req, started, decision.rule, action.type, result)
