"""From a schema-valid document to the typed :class:`~qpx.config.model.Config`.

This is where the cross-field rules of spec §1.10 live (unique names, upstream
references, action shapes, PROXY trust lists, route targets), plus ours: CIDRs with host
bits set, known ``lb`` values, regexes and globs compiled up front, duplicate listen
addresses, and "not supported by this build" for every feature of the original that this
build does not implement but a config enables.  Problems are collected, never raised one
at a time; warnings (legal but probably unintended) are returned beside the model.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any
from urllib.parse import urlsplit

from ..rules import validate_match
from . import model as m
from .errors import Issue, dotted
from .loader import Document
from .tlsblocks import TlsBlocks

# Fields of a local response that qpxd writes itself (framing and hop-by-hop).
_FRAMED_BY_QPXD = frozenset((
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "te", "trailer", "upgrade"))

UNSUPPORTED = "not supported by this build"
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
FIELD_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
METRICS_PREFIX = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_listen(text: str) -> m.ListenAddr:
    host, _, port = text.rpartition(":")
    return m.ListenAddr(host.strip("[]"), int(port))


def parse_cpu_list(text: str) -> tuple[int, ...] | None:
    text = text.replace(" ", "")
    if not CPU_LIST.match(text):
        return None
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a:
            return None
        cpus.extend(range(a, b + 1))
    return tuple(dict.fromkeys(cpus))


class Builder(TlsBlocks):
    def __init__(self, doc: Document):
        self.doc = doc
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []

    # ------------------------------------------------------------------ reporting

    def _issue(self, path: tuple, message: str) -> Issue:
        file, line = self.doc.locate(path)
        return Issue(file or "<config>", dotted(path), message, line)

    def err(self, path: tuple, message: str) -> None:
        self.issues.append(self._issue(path, message))

    def warn(self, path: tuple, message: str) -> None:
        self.warnings.append(self._issue(path, message))

    def unsupported(self, path: tuple) -> None:
        self.err(path, UNSUPPORTED)

    # ------------------------------------------------------------------ small checks

    def check_regex(self, path: tuple, pattern: str) -> None:
        try:
            re.compile(pattern)
        except re.error as e:
            self.err(path, f"invalid regex {pattern!r}: {e}")

    def check_replacement(self, path: tuple, pattern: str, template: str) -> None:
        """A reference to a group the pattern lacks (``$2`` with one group, ``$1a``
        read as group ``1a``) is an error here; the original silently put nothing there,
        which hides the typo until a request shows it."""
        try:
            compiled = re.compile(pattern)
        except re.error:
            return  # reported against the pattern
        from ..http.headers import rust_template

        try:
            compiled.sub(rust_template(template), "")
        except (re.error, IndexError) as e:
            # re.error's position is in the translated template: leave it out
            detail = e.msg if isinstance(e, re.error) else str(e)
            self.err(path, f"replacement {template!r} refers to a group pattern "
                           f"{pattern!r} does not have ({detail}); write ${{1}}x, not $1x, "
                           "when a name character follows")

    def check_match(self, path: tuple, spec: m.MatchSpec) -> None:
        for rel, message in validate_match(spec):
            self.err(path + tuple(int(p) if p.isdigit() else p for p in rel.split(".")),
                     message)

    def check_cidrs(self, path: tuple, cidrs: tuple[str, ...]) -> None:
        for rel, message in validate_match(m.MatchSpec(src_ip=cidrs)):
            self.err(path + (int(rel.split(".")[1]),), message)

    def check_header_name(self, path: tuple, name: str) -> None:
        if not TOKEN.match(name):
            self.err(path, f"invalid header name {name!r}")

    def check_header_value(self, path: tuple, value: str) -> None:
        if not FIELD_VALUE.match(value) or value != value.strip(" \t"):
            self.err(path, f"invalid header value {value!r} (control characters or "
                           "surrounding whitespace)")

    def check_upstream_ref(self, path: tuple, ref: str, cfg_upstreams: dict) -> None:
        if "://" in ref:
            self.check_proxy_url(path, ref)
        elif ref not in cfg_upstreams:
            self.err(path, f"references unknown upstream {ref!r}")

    def check_proxy_url(self, path: tuple, url: str) -> None:
        try:
            u = urlsplit(url)
            port = u.port
        except ValueError as e:
            self.err(path, f"invalid URL {url!r}: {e}")
            return
        if u.username is not None or u.password is not None:
            self.err(path, f"URL {url!r} must not contain credentials")
        elif u.scheme == "h3":
            self.err(path, f"{u.scheme}:// upstream proxies: {UNSUPPORTED}")
        elif u.scheme not in ("http", "https") or not u.hostname:
            self.err(path, f"expected an http[s]://host[:port] URL, got {url!r}")
        elif u.path not in ("", "/") or u.query or u.fragment:
            self.err(path, f"an upstream proxy URL has no path, got {url!r}")
        del port

    def check_origin_url(self, path: tuple, url: str) -> None:
        try:
            u = urlsplit(url)
            _ = u.port  # urlsplit checks the port only when asked
        except ValueError as e:
            self.err(path, f"invalid URL {url!r}: {e}")
            return
        if u.scheme in ("h3", "ws", "wss"):
            self.err(path, f"{u.scheme}:// upstreams: {UNSUPPORTED}")
        elif u.scheme not in ("http", "https") or not u.hostname:
            self.err(path, f"expected an http[s]://host[:port][/base] URL, got {url!r}")
        elif u.username is not None or u.password is not None:
            self.err(path, f"URL {url!r} must not contain credentials")
        elif u.query or u.fragment:
            self.err(path, f"an upstream URL has no query or fragment, got {url!r}")

    # ------------------------------------------------------------------ pieces

    def match(self, raw: dict | None, path: tuple) -> m.MatchSpec:
        raw = raw or {}
        spec = m.MatchSpec(
            src_ip=tuple(raw.get("src_ip") or ()),
            dst_port=tuple(raw.get("dst_port") or ()),
            host=tuple(raw.get("host") or ()),
            sni=tuple(raw.get("sni") or ()),
            method=tuple(raw.get("method") or ()),
            path=tuple(raw.get("path") or ()),
            headers=tuple(m.HeaderMatch(h["name"], h.get("value"), h.get("regex"))
                          for h in raw.get("headers") or ()),
        )
        self.check_match(path, spec)
        return spec

    def header_control(self, raw: dict | None, path: tuple) -> m.HeaderControl | None:
        if not raw:
            return None
        out: dict[str, Any] = {}
        for key in ("request_set", "request_add", "response_set", "response_add"):
            items = tuple((raw.get(key) or {}).items())
            for name, value in items:
                self.check_header_name(path + (key, name), name)
                self.check_header_value(path + (key, name), value)
            out[key] = items
        for key in ("request_remove", "response_remove"):
            names = tuple(raw.get(key) or ())
            for i, name in enumerate(names):
                self.check_header_name(path + (key, i), name)
            out[key] = names
        for key in ("request_regex_replace", "response_regex_replace"):
            items = []
            for i, r in enumerate(raw.get(key) or ()):
                self.check_header_name(path + (key, i, "header"), r["header"])
                self.check_regex(path + (key, i, "pattern"), r["pattern"])
                self.check_replacement(path + (key, i, "replace"), r["pattern"], r["replace"])
                if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7f for c in r["replace"]):
                    self.err(path + (key, i, "replace"), "must not contain control "
                             "characters (a header value cannot carry them)")
                items.append(m.RegexReplace(r["header"], r["pattern"], r["replace"]))
            out[key] = tuple(items)
        hc = m.HeaderControl(**out)
        return hc if hc.has_request() or hc.has_response() else None

    def local_response(self, raw: dict | None, path: tuple) -> m.LocalResponse | None:
        if raw is None:
            return None
        headers = tuple((raw.get("headers") or {}).items())
        for name, value in headers:
            self.check_header_name(path + ("headers", name), name)
            self.check_header_value(path + ("headers", name), value)
            if name.lower() in _FRAMED_BY_QPXD:
                self.err(path + ("headers", name), "qpxd frames local responses itself: "
                         "Content-Length, Transfer-Encoding, Connection and other "
                         "hop-by-hop fields cannot be set here")
        ct = raw.get("content_type")
        if ct is not None:
            self.check_header_value(path + ("content_type",), ct)
        return m.LocalResponse(status=raw.get("status", 200), body=raw.get("body", ""),
                               content_type=ct, headers=headers)

    def action(self, raw: dict, path: tuple, upstreams: dict) -> m.Action:
        kind = raw["type"]
        up = raw.get("upstream")
        lr = self.local_response(raw.get("local_response"), path + ("local_response",))
        if kind == "respond" and lr is None:
            self.err(path, "action type respond requires local_response")
        if kind in ("respond", "direct", "block") and up is not None:
            self.err(path + ("upstream",), f"action type {kind} must not set upstream")
        if kind != "respond" and lr is not None:
            self.err(path + ("local_response",),
                     f"action type {kind} must not set local_response")
        if up is not None:
            self.check_upstream_ref(path + ("upstream",), up, upstreams)
        return m.Action(kind, up, lr)

    def xdp(self, raw: dict | None, path: tuple) -> m.Xdp:
        if not raw or not raw.get("enabled", False):
            return m.Xdp()
        mode = raw.get("metadata_mode", "proxy-v1")
        if mode not in ("proxy-v1", "proxy-v2"):
            self.err(path + ("metadata_mode",),
                     f"unsupported xdp metadata_mode {mode!r} (expected proxy-v1 or proxy-v2)")
        peers = tuple(raw.get("trusted_peers") or ())
        if not peers:
            self.err(path + ("trusted_peers",), "xdp.enabled requires xdp.trusted_peers")
        self.check_cidrs(path + ("trusted_peers",), peers)
        return m.Xdp(True, mode, raw.get("require_metadata", True), peers,
                     raw.get("metadata_timeout_ms", 5000))

    def connection_filter(self, raw: list | None, path: tuple) -> tuple[m.FilterRule, ...]:
        out = []
        for i, f in enumerate(raw or ()):
            spec = self.match(f["match"], path + (i, "match"))
            out.append(m.FilterRule(f["name"], spec))
        return tuple(out)

    # ------------------------------------------------------------------ listeners

    def rule(self, raw: dict, path: tuple, upstreams: dict, users: tuple) -> m.Rule:
        action = raw.get("action")
        auth = raw.get("auth")
        rule_auth = None
        if auth is not None:
            require = tuple(auth.get("require") or ())
            groups = tuple(auth.get("groups") or ())
            for i, provider in enumerate(require):
                if provider == "ldap":
                    self.err(path + ("auth", "require", i), f"ldap authentication: {UNSUPPORTED}")
                elif provider != "local":
                    self.err(path + ("auth", "require", i),
                             f"unknown auth provider {provider!r} (expected local)")
            if "local" in require and not users:
                self.err(path + ("auth", "require"), "auth provider local needs auth.users")
            if groups:
                self.warn(path + ("auth", "groups"),
                          "local users have no groups: this rule can never match")
            rule_auth = m.RuleAuth(require, groups)
        return m.Rule(
            name=raw["name"],
            match=self.match(raw.get("match"), path + ("match",)),
            action=self.action(action, path + ("action",), upstreams) if action else None,
            auth=rule_auth,
            headers=self.header_control(raw.get("headers"), path + ("headers",)),
        )

    def listener(self, raw: dict, path: tuple, upstreams: dict, users: tuple) -> m.Listener:
        for key in ("http3", "ftp", "cache"):
            block = raw.get(key) or {}
            if block.get("enabled", False):
                self.err(path + (key, "enabled"), UNSUPPORTED)
        rules = tuple(self.rule(r, path + ("rules", i), upstreams, users)
                      for i, r in enumerate(raw.get("rules") or ()))
        default = self.action(raw["default_action"], path + ("default_action",), upstreams)
        upstream_proxy = raw.get("upstream_proxy")
        if upstream_proxy is not None:
            self.check_upstream_ref(path + ("upstream_proxy",), upstream_proxy, upstreams)
        if upstream_proxy is None:
            for i, r in enumerate(rules):
                if r.action and r.action.type == "proxy" and r.action.upstream is None:
                    self.warn(path + ("rules", i, "action"),
                              f"rule {r.name!r}: action proxy has no upstream and the "
                              "listener has no upstream_proxy: requests go direct")
            if default.type == "proxy" and default.upstream is None:
                self.warn(path + ("default_action",), "default action proxy has no upstream "
                          "and the listener has no upstream_proxy: requests go direct")
        return m.Listener(
            name=raw["name"], mode=raw["mode"], listen=parse_listen(raw["listen"]),
            default_action=default, rules=rules, upstream_proxy=upstream_proxy,
            xdp=self.xdp(raw.get("xdp"), path + ("xdp",)),
            connection_filter=self.connection_filter(raw.get("connection_filter"),
                                                     path + ("connection_filter",)),
            connect_ports=tuple(raw["connect_ports"]) if raw.get("connect_ports") is not None
            else (443,),
            allow_local_destinations=raw.get("allow_local_destinations", False),
            underscores_in_headers=raw.get("underscores_in_headers", False),
            max_request_body_bytes=raw.get("max_request_body_bytes"),
            inspection=self.inspection(raw, rules, default, path),
        )

    # ------------------------------------------------------------------ reverse

    def path_rewrite(self, rw: dict | None, path: tuple) -> m.PathRewrite | None:
        if not rw:
            return None
        regex = None
        if rw.get("regex"):
            rp = path + ("regex",)
            pattern, replace = rw["regex"]["pattern"], rw["regex"]["replace"]
            if not pattern.strip():
                self.err(rp + ("pattern",), "must not be empty")
            self.check_regex(rp + ("pattern",), pattern)
            if "?" in replace or "#" in replace:
                self.err(rp + ("replace",), "must not contain '?' or '#'")
            elif any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f or not c.isascii()
                     for c in replace):
                self.err(rp + ("replace",), "must not contain whitespace, control or "
                                            "non-ASCII characters (a request target "
                                            "cannot carry them)")
            self.check_replacement(rp + ("replace",), pattern, replace)
            regex = m.PathRegex(pattern, replace)
        for key in ("strip_prefix", "add_prefix"):
            v = rw.get(key)
            if v is not None and (not v.startswith("/") or any(c in v for c in "?# ")):
                self.err(path + (key,), f"must be a path starting with '/', got {v!r}")
        return m.PathRewrite(rw.get("strip_prefix"), rw.get("add_prefix"), regex)

    def route(self, raw: dict, path: tuple) -> m.Route:
        if (raw.get("cache") or {}).get("enabled", False):
            self.err(path + ("cache", "enabled"), UNSUPPORTED)
        upstreams = tuple(raw.get("upstreams") or ())
        backends_raw = raw.get("backends") or []
        lr = self.local_response(raw.get("local_response"), path + ("local_response",))
        targets = sum(1 for t in (upstreams, backends_raw, lr) if t)
        if targets != 1:
            self.err(path, "a route needs exactly one of upstreams, backends or "
                           "local_response")
        for i, u in enumerate(upstreams):
            self.check_origin_url(path + ("upstreams", i), u)
        backends = []
        if upstreams:
            backends.append(m.Backend(None, 1, upstreams))
        for i, b in enumerate(backends_raw):
            bp = path + ("backends", i)
            ups = tuple(b.get("upstreams") or ())
            if not ups:
                self.err(bp + ("upstreams",), "a backend needs at least one upstream")
            if b.get("name") is not None and not b["name"].strip():
                self.err(bp + ("name",), "must not be empty")
            for j, u in enumerate(ups):
                self.check_origin_url(bp + ("upstreams", j), u)
            backends.append(m.Backend(b.get("name"), b.get("weight", 100), ups))
        if raw.get("mirrors"):
            self.err(path + ("mirrors",), UNSUPPORTED)
        rewrite = self.path_rewrite(raw.get("path_rewrite"), path + ("path_rewrite",))
        retry = m.Retry(**raw["retry"]) if raw.get("retry") is not None else None
        hc = m.HealthCheck(**raw["health_check"]) if raw.get("health_check") is not None \
            else None
        if hc is not None and hc.path is not None and not hc.path.startswith("/"):
            self.err(path + ("health_check", "path"), "must start with '/'")
        lb = raw.get("lb", "round_robin")
        return m.Route(
            match=self.match(raw.get("match"), path + ("match",)),
            backends=tuple(backends), local_response=lr,
            headers=self.header_control(raw.get("headers"), path + ("headers",)),
            lb="least_conn" if lb == "least_connections" else lb,
            retry=retry, timeout_ms=raw.get("timeout_ms", 30000), health_check=hc,
            path_rewrite=rewrite, preserve_host=raw.get("preserve_host", True),
            tls=self.upstream_tls(raw.get("tls"), path + ("tls",)),
        )

    def reverse(self, raw: dict, path: tuple) -> m.Reverse:
        if (raw.get("http3") or {}).get("enabled", False):
            self.err(path + ("http3", "enabled"), UNSUPPORTED)
        passthrough = tuple(self.passthrough_route(r, path + ("tls_passthrough_routes", i))
                            for i, r in enumerate(raw.get("tls_passthrough_routes") or ()))
        routes = tuple(self.route(r, path + ("routes", i))
                       for i, r in enumerate(raw.get("routes") or ()))
        tls_raw = raw.get("tls") or {}
        if routes and passthrough and not tls_raw.get("certificates"):
            self.err(path + ("routes",), "HTTP routes beside tls_passthrough_routes need "
                                         "tls.certificates (the port speaks TLS)")
        if not routes and not raw.get("tls_passthrough_routes"):
            self.err(path + ("routes",), f"reverse {raw['name']!r} has no routes")
        exceptions = tuple(raw.get("sni_host_exceptions") or ())
        for rel, message in validate_match(m.MatchSpec(host=exceptions)):
            self.err(path + ("sni_host_exceptions", int(rel.split(".")[1])), message)
        return m.Reverse(
            name=raw["name"], listen=parse_listen(raw["listen"]), routes=routes,
            xdp=self.xdp(raw.get("xdp"), path + ("xdp",)),
            connection_filter=self.connection_filter(raw.get("connection_filter"),
                                                     path + ("connection_filter",)),
            enforce_sni_host_match=raw.get("enforce_sni_host_match", True),
            sni_host_exceptions=exceptions,
            underscores_in_headers=raw.get("underscores_in_headers", False),
            max_request_body_bytes=raw.get("max_request_body_bytes"),
            tls=self.server_tls(raw.get("tls"), path + ("tls",)),
            tls_passthrough_routes=passthrough,
        )

    # ------------------------------------------------------------------ top level

    def identity(self, raw: dict) -> m.Identity:
        ident = m.Identity(**raw)
        p = ("identity",)
        if not TOKEN.match(ident.proxy_name):
            self.err(p + ("proxy_name",), "must be a non-empty HTTP token (letters, digits, "
                                          "!#$%&'*+-.^_`|~)")
        if not ident.auth_realm.strip() or '"' in ident.auth_realm or "\\" in ident.auth_realm \
                or not FIELD_VALUE.match(ident.auth_realm):
            self.err(p + ("auth_realm",), "must be non-empty printable text without quotes "
                                          "or backslashes")
        if not METRICS_PREFIX.match(ident.metrics_prefix):
            self.err(p + ("metrics_prefix",), "identity.metrics_prefix must start with "
                                              "[A-Za-z_:] and continue with [A-Za-z0-9_:]")
        if ident.generated_user_agent is not None and not ident.generated_user_agent.strip():
            self.err(p + ("generated_user_agent",), "must not be empty")
        return ident

    def runtime(self, raw: dict) -> m.Runtime:
        raw = dict(raw)
        aff = raw.get("cpu_affinity")
        if isinstance(aff, str) and aff != "auto":
            cpus = parse_cpu_list(aff)
            if cpus is None:
                self.err(("runtime", "cpu_affinity"),
                         f"expected a CPU list such as '0-3,8' or 'auto', got {aff!r}")
            raw["cpu_affinity"] = cpus
        elif isinstance(aff, list):
            raw["cpu_affinity"] = tuple(dict.fromkeys(aff)) or None
        if aff == "auto" and not raw.get("cpu_affinity_iface"):
            self.err(("runtime", "cpu_affinity_iface"),
                     "cpu_affinity: auto needs cpu_affinity_iface (the NIC whose NUMA-local "
                     "CPUs to use)")
        return m.Runtime(**raw)

    def metrics(self, raw: dict | None) -> m.Metrics | None:
        if raw is None:
            return None
        p = ("metrics",)
        listen = parse_listen(raw["listen"])
        allow = tuple(raw.get("allow") or ())
        self.check_cidrs(p + ("allow",), allow)
        if not allow and not ipaddress.ip_address(listen.host).is_loopback:
            self.err(p + ("listen",), "metrics.listen must be a loopback address unless "
                                      "metrics.allow lists the networks that may scrape")
        path = raw.get("path", "/metrics")
        if not path.startswith("/"):
            path = "/" + path
        return m.Metrics(listen, path, allow, raw.get("max_concurrent_connections", 32))

    def users(self, raw: dict | None) -> tuple[m.AuthUser, ...]:
        raw = raw or {}
        if raw.get("ldap") is not None:
            self.err(("auth", "ldap"), f"LDAP authentication: {UNSUPPORTED}")
        out, seen = [], set()
        for i, u in enumerate(raw.get("users") or ()):
            p = ("auth", "users", i)
            name = u["username"]
            if not name.strip():
                self.err(p + ("username",), "must not be empty")
            elif ":" in name:
                self.err(p + ("username",), "must not contain ':' (Basic credentials)")
            elif name in seen:
                self.err(p + ("username",), f"duplicate username {name!r}")
            seen.add(name)
            if u.get("ha1") is not None:
                self.err(p + ("ha1",), f"digest authentication (ha1): {UNSUPPORTED}")
            password = u.get("password")
            if password is None:
                if u.get("ha1") is None:
                    self.err(p, "a user needs a password")
            elif not password:
                self.err(p + ("password",), "must not be empty")
            out.append(m.AuthUser(name, password or ""))
        return tuple(out)

    def upstreams(self, raw: list | None) -> tuple[m.Upstream, ...]:
        out, seen = [], set()
        for i, u in enumerate(raw or ()):
            p = ("upstreams", i)
            if not u["name"].strip():
                self.err(p + ("name",), "must not be empty")
            elif u["name"] in seen:
                self.err(p + ("name",), f"duplicate upstream name {u['name']!r}")
            seen.add(u["name"])
            self.check_proxy_url(p + ("url",), u["url"])
            out.append(m.Upstream(u["name"], u["url"],
                                  self.upstream_tls(u.get("tls"), p + ("tls",))))
        return tuple(out)

    def check_unique_names_and_addresses(self, cfg: m.Config) -> None:
        names: dict[str, tuple] = {}
        addrs: dict[tuple, tuple] = {}
        entries = [(("listeners", i), l.name, l.listen) for i, l in enumerate(cfg.listeners)]
        entries += [(("reverse", i), r.name, r.listen) for i, r in enumerate(cfg.reverse)]
        for path, name, _ in entries:
            if name in names:
                self.err(path + ("name",), f"duplicate name {name!r} (also {dotted(names[name])})")
            names.setdefault(name, path)
        if cfg.metrics is not None:
            entries.append((("metrics",), "metrics", cfg.metrics.listen))
        for path, _, listen in entries:
            key = (ipaddress.ip_address(listen.host), listen.port)
            if key in addrs:
                self.err(path + ("listen",),
                         f"address {listen} is already used by {dotted(addrs[key])}")
            addrs.setdefault(key, path)

    def build(self, data: dict) -> m.Config:
        self.state_dir = os.path.expanduser(data.get("state_dir") or ".qpx")
        if data["version"] != 1:
            self.err(("version",), f"unsupported config version {data['version']} "
                                   "(expected 1)")
        if (data.get("exporter") or {}).get("enabled", True) and data.get("exporter"):
            self.err(("exporter", "enabled"), f"exporter: {UNSUPPORTED}")
        if (data.get("cache") or {}).get("backends"):
            self.err(("cache", "backends"), UNSUPPORTED)
        messages = m.Messages(**(data.get("messages") or {}))
        for key in m.Messages.__dataclass_fields__:
            if not getattr(messages, key).strip():
                self.err(("messages", key), f"messages.{key} must not be empty")
        users = self.users(data.get("auth"))
        upstreams = self.upstreams(data.get("upstreams"))
        by_name = {u.name: u for u in upstreams}
        listeners = tuple(self.listener(raw, ("listeners", i), by_name, users)
                          for i, raw in enumerate(data.get("listeners") or ()))
        reverse = tuple(self.reverse(raw, ("reverse", i))
                        for i, raw in enumerate(data.get("reverse") or ()))
        if not listeners and not reverse:
            self.err((), "no listeners or reverse proxies configured")
        logging_raw = dict(data.get("logging") or {})
        level = logging_raw.get("level", "info")
        logging_raw["level"] = {"trace": "debug", "warn": "warning"}.get(level, level)
        state_dir = data.get("state_dir") or ".qpx"
        cfg = m.Config(
            version=data["version"],
            sources=tuple(self.doc.sources),
            state_dir=os.path.expanduser(state_dir),
            identity=self.identity(data.get("identity") or {}),
            messages=messages,
            runtime=self.runtime(data.get("runtime") or {}),
            logging=m.Logging(**logging_raw),
            metrics=self.metrics(data.get("metrics")),
            users=users,
            upstreams=upstreams,
            listeners=listeners,
            reverse=reverse,
        )
        self.check_unique_names_and_addresses(cfg)
        return cfg
