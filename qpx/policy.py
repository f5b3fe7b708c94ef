"""The compiled policy: everything a worker consults per connection and per request.

Built once from the :class:`~qpx.config.model.Config`, in the master before fork (so a
broken pattern stops ``run``/``check``/HUP before any socket changes, and forked workers
share the compiled pages): rule sets, actions with their upstreams resolved to
(host, port), local responses pre-rendered to bytes, header control compiled to byte
operations, PROXY trust sets, connection filters.

:meth:`ListenerPolicy.decide` is the forward-proxy policy of spec §2.4: the first
matching rule wins, except that a rule requiring authentication answers 407 when the
client has not authenticated, and a rule whose ``groups`` the user lacks is skipped.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import netaddr

from .config import model as m
from .config.errors import ConfigError, Issue
from .http import writer
from .http.headers import HeaderOps, rust_template
from .http.request import Limits
from .rules import MatchContext, RuleSet, parse_ip

# --------------------------------------------------------------------------- pieces


@dataclass(frozen=True, slots=True)
class LocalReply:
    """A pre-rendered local response: status, header triples (Content-Type included) and
    the body bytes."""

    status: int
    headers: tuple[tuple[bytes, bytes, bytes], ...]
    body: bytes

    @classmethod
    def compile(cls, lr: m.LocalResponse) -> "LocalReply":
        body = lr.body.encode("utf-8")
        headers: list[tuple[bytes, bytes, bytes]] = []
        ctype = lr.content_type or ("text/plain; charset=utf-8" if body else None)
        if ctype:
            headers.append((b"content-type", b"Content-Type", ctype.encode("latin-1")))
        for name, value in lr.headers:
            ln = name.lower().encode("latin-1")
            headers = [h for h in headers if h[0] != ln]
            headers.append((ln, name.encode("latin-1"), value.encode("latin-1")))
        return cls(lr.status, tuple(headers), body)


class CompiledHeaderControl:
    """A rule's or route's header control, compiled to byte operations once:
    ``request`` and ``response`` are :class:`~qpx.http.headers.HeaderOps` or None."""

    __slots__ = ("request", "response")

    def __init__(self, hc: m.HeaderControl):
        self.request = HeaderOps(
            hc.request_set, hc.request_add, hc.request_remove,
            [(r.header, r.pattern, r.replace) for r in hc.request_regex_replace]) \
            if hc.has_request() else None
        self.response = HeaderOps(
            hc.response_set, hc.response_add, hc.response_remove,
            [(r.header, r.pattern, r.replace) for r in hc.response_regex_replace]) \
            if hc.has_response() else None

    @classmethod
    def compile(cls, hc: m.HeaderControl | None) -> "CompiledHeaderControl | None":
        return cls(hc) if hc is not None else None


@dataclass(frozen=True, slots=True)
class Hop:
    """An upstream proxy or origin endpoint; ``tls`` is the client context of an
    https:// one."""

    host: str
    port: int
    base_path: str = ""
    tls: object = None  # ssl.SSLContext

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_hop(url: str, tls: m.UpstreamTls | None = None) -> Hop:
    u = urlsplit(url)
    host = u.hostname or ""
    base = u.path.rstrip("/") if u.path not in ("", "/") else ""
    if u.scheme == "https":
        from .tlsctx import client_context

        tls = tls or m.UpstreamTls()
        return Hop(host, u.port or 443, base, client_context(tls.verify, tls.ca_file))
    return Hop(host, u.port or 80, base)


@dataclass(frozen=True, slots=True)
class ActionPlan:
    type: str  # direct | proxy | block | respond | tunnel
    via: Hop | None = None  # upstream proxy; None: go direct
    reply: LocalReply | None = None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    action: ActionPlan
    require_auth: bool
    groups: tuple[str, ...]
    headers: CompiledHeaderControl | None
    decision: "Decision"  # what the rule decides (built once: no per-request object)


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str | None  # the rule's name; None when the default applied
    action: ActionPlan
    headers: CompiledHeaderControl | None = None
    challenge: bool = False  # answer 407
    user: str | None = None


class TrustSet:
    """``xdp.trusted_peers`` as a netaddr IPSet; IPv4-mapped IPv6 peers count as IPv4."""

    def __init__(self, cidrs: tuple[str, ...]):
        self._set = netaddr.IPSet(cidrs)

    def __contains__(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return netaddr.IPAddress(int(addr), addr.version) in self._set


class Filter:
    """A connection filter: (src_ip, dst_port) rules evaluated before any HTTP byte."""

    def __init__(self, rules: tuple[m.FilterRule, ...]):
        self.names = [r.name for r in rules]
        self.rules = RuleSet.compile([r.match for r in rules])

    def match(self, src_key, dst_port: int) -> str | None:
        i = self.rules.first_match(MatchContext(src_ip=src_key, dst_port=dst_port))
        return self.names[i] if i >= 0 else None


class Users:
    """Local Basic-auth users; passwords compared in constant time."""

    def __init__(self, users: tuple[m.AuthUser, ...]):
        self._users = {u.username.encode("utf-8"): u.password.encode("utf-8") for u in users}

    def check(self, authorization: bytes | None) -> str | None:
        """The authenticated user name, or None (missing, malformed or wrong)."""
        if not authorization or not authorization.startswith(b"Basic "):
            return None
        try:
            raw = base64.b64decode(authorization[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        expected = self._users.get(user)
        ok = hmac.compare_digest(password, expected if expected is not None else
                                 b"\0" * max(1, len(password)))
        return user.decode("utf-8", "replace") if ok and expected is not None else None


# --------------------------------------------------------------------------- listeners


def entry_limits(rt: m.Runtime, underscores: bool, max_body: int | None) -> Limits:
    """The request limits of one listener or reverse entry: the runtime's, with the
    entry's own underscore policy and body limit (falling back to the runtime's)."""
    return Limits(rt.max_request_line_bytes, rt.max_header_bytes, rt.max_header_count,
                  underscores, rt.max_request_body_bytes if max_body is None else max_body)


class ListenerPolicy:
    def __init__(self, cfg: m.Config, lst: m.Listener):
        self.model = lst
        self.limits = entry_limits(cfg.runtime, lst.underscores_in_headers,
                                   lst.max_request_body_bytes)
        self.name = lst.name
        self.mode = lst.mode
        self.default = self._action(cfg, lst.default_action, lst)
        self.default_decision = Decision(None, self.default)
        self.rules = []
        for r in lst.rules:
            action = self._action(cfg, r.action, lst) if r.action else self.default
            headers = CompiledHeaderControl.compile(r.headers)
            self.rules.append(CompiledRule(r.name, action, bool(r.auth and r.auth.require),
                                           r.auth.groups if r.auth else (), headers,
                                           Decision(r.name, action, headers)))
        self.ruleset = RuleSet.compile([r.match for r in lst.rules])
        self.needs_auth = any(r.require_auth or r.groups for r in self.rules)
        self.trusted = TrustSet(lst.xdp.trusted_peers) if lst.xdp.enabled else None
        self.filter = Filter(lst.connection_filter) if lst.connection_filter else None
        self.connect_ports = frozenset(lst.connect_ports)
        self.inspection = None
        if lst.inspection is not None:
            from .inspection import InspectionPlan

            self.inspection = InspectionPlan(lst.inspection)

    @staticmethod
    def _action(cfg: m.Config, a: m.Action, lst: m.Listener) -> ActionPlan:
        via = None
        if a.type in ("proxy", "tunnel"):
            ref = a.upstream or lst.upstream_proxy
            url = cfg.upstream_url(ref)
            via = parse_hop(url, cfg.upstream_tls(ref)) if url else None
        reply = LocalReply.compile(a.local_response) if a.local_response else None
        return ActionPlan(a.type, via, reply)

    def decide(self, ctx: MatchContext, users: Users,
               authorization: bytes | None = None) -> Decision:
        if not self.needs_auth:
            i = self.ruleset.first_match(ctx)
            return self.default_decision if i < 0 else self.rules[i].decision
        user: str | None = None
        checked = False
        for i in self.ruleset.matching_indices(ctx):
            r = self.rules[i]
            if r.require_auth:
                if not checked:
                    user, checked = users.check(authorization), True
                if user is None:
                    return Decision(r.name, r.action, challenge=True)
                if r.groups:  # local users have no groups
                    continue
            elif r.groups:
                continue
            return Decision(r.name, r.action, r.headers, user=user)
        return Decision(None, self.default, user=user)


# --------------------------------------------------------------------------- reverse


@dataclass(frozen=True, slots=True)
class CompiledBackend:
    name: str | None
    weight: int
    hops: tuple[Hop, ...]


class CompiledRoute:
    def __init__(self, index: int, r: m.Route, kind: str = "route"):
        self.index = index
        self.label = f"{kind} {index}"
        self.model = r
        self.backends = tuple(CompiledBackend(b.name, b.weight,
                                              tuple(parse_hop(u, r.tls) for u in b.upstreams))
                              for b in r.backends)
        self.total_weight = sum(b.weight for b in self.backends)
        self.reply = LocalReply.compile(r.local_response) if r.local_response else None
        self.headers = CompiledHeaderControl.compile(r.headers)
        self.lb = r.lb
        self.attempts = r.retry.attempts if r.retry else 1
        self.backoff = (r.retry.backoff_ms / 1000.0) if r.retry else 0.0
        self.timeout = r.timeout_ms / 1000.0
        self.health = r.health_check
        self.preserve_host = r.preserve_host
        rw = r.path_rewrite
        self.strip_prefix = rw.strip_prefix.rstrip("/") if rw and rw.strip_prefix else None
        self.add_prefix = rw.add_prefix.rstrip("/") if rw and rw.add_prefix else None
        self.regex = (re.compile(rw.regex.pattern), rust_template(rw.regex.replace)) \
            if rw and rw.regex else None
        self.rewrites = bool(self.strip_prefix or self.add_prefix or self.regex)


class ReversePolicy:
    def __init__(self, cfg: m.Config, rv: m.Reverse):
        self.model = rv
        self.limits = entry_limits(cfg.runtime, rv.underscores_in_headers,
                                   rv.max_request_body_bytes)
        self.name = rv.name
        self.routes = [CompiledRoute(i, r) for i, r in enumerate(rv.routes)]
        self.ruleset = RuleSet.compile([r.match for r in rv.routes])
        self.trusted = TrustSet(rv.xdp.trusted_peers) if rv.xdp.enabled else None
        self.filter = Filter(rv.connection_filter) if rv.connection_filter else None
        self.tls = None
        if rv.tls is not None and rv.tls.certificates:
            from .tlsctx import ServerTls

            self.tls = ServerTls.get(rv.tls.certificates, rv.tls.min_version,
                                     ("h2", "http/1.1"))
        self.passthrough = [CompiledRoute(i, r, "passthrough")
                            for i, r in enumerate(rv.tls_passthrough_routes)]
        self.passthrough_rules = RuleSet.compile([r.match for r in rv.tls_passthrough_routes])
        self.enforce_sni = rv.enforce_sni_host_match
        self.sni_exceptions = RuleSet.compile([m.MatchSpec(host=(h,))
                                               for h in rv.sni_host_exceptions]) \
            if rv.sni_host_exceptions else None

    def sni_host_allowed(self, sni: str | None, host: str | None) -> bool:
        """The original's SNI/Host policy on TLS-terminated requests: no Host → pass;
        equal → pass; else both must match one of ``sni_host_exceptions``.  Ours: a
        client without SNI (served by the default certificate) has nothing to compare
        and passes."""
        if not self.enforce_sni or not host or sni is None:
            return True
        host = host.lower().rstrip(".")
        if host == sni:
            return True
        ex = self.sni_exceptions
        return ex is not None and ex.first_match(MatchContext(host=host)) >= 0 \
            and ex.first_match(MatchContext(host=sni)) >= 0

    def route(self, ctx: MatchContext) -> CompiledRoute | None:
        i = self.ruleset.first_match(ctx)
        return self.routes[i] if i >= 0 else None

    def passthrough_route(self, ctx: MatchContext) -> CompiledRoute | None:
        i = self.passthrough_rules.first_match(ctx)
        return self.passthrough[i] if i >= 0 else None


# --------------------------------------------------------------------------- whole config


class Policy:
    def __init__(self, cfg: m.Config):
        self.config = cfg
        self.users = Users(cfg.users)
        self.listeners = {l.name: ListenerPolicy(cfg, l) for l in cfg.listeners}
        self.reverse = {r.name: ReversePolicy(cfg, r) for r in cfg.reverse}
        self.messages = {k: getattr(cfg.messages, k).encode("utf-8")
                         for k in m.Messages.__dataclass_fields__}
        self.via = writer.via_value(cfg.identity.proxy_name)
        self.via_line = writer.via_line(self.via)
        self.proxy_name = cfg.identity.proxy_name.lower().encode("ascii")
        self.realm = cfg.identity.auth_realm.encode("latin-1")


def compile_config(cfg: m.Config) -> Policy:
    """Compile every rule set of ``cfg``; a failure is reported as a ConfigError."""
    try:
        return Policy(cfg)
    except (ValueError, re.error, netaddr.AddrFormatError, OSError) as e:  # validated before: belt
        # and braces
        raise ConfigError([Issue(cfg.sources[0] if cfg.sources else "<config>", "<compile>",
                                 f"cannot compile the configuration: {e}")]) from e


__all__ = ["ActionPlan", "Decision", "Hop", "ListenerPolicy", "LocalReply", "Policy",
           "ReversePolicy", "compile_config", "parse_ip"]
