"""The typed, immutable configuration model.

Everything outside ``qpx.config`` reads these frozen dataclasses, never raw YAML
dictionaries.  ``qpx.config.build`` turns a validated document into a :class:`Config`;
defaults live here, next to the field they belong to, and match the original qpxd
(spec §1.3-§1.10) except where noted as ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# --------------------------------------------------------------------------- basics


@dataclass(frozen=True, slots=True)
class ListenAddr:
    """A literal socket address: ``127.0.0.1:8080`` or ``[::1]:8080``."""

    host: str
    port: int

    @property
    def family(self) -> int:
        import socket

        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One header condition: presence, exact ``value`` (case-sensitive) or ``regex``
    (unanchored search; when set, ``value`` is ignored)."""

    name: str
    value: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class MatchSpec:
    """Conditions of a rule or route: AND across fields, OR within a field's list.
    An empty tuple means "any"; a non-empty one needs the request to have the field."""

    src_ip: tuple[str, ...] = ()
    dst_port: tuple[int, ...] = ()
    host: tuple[str, ...] = ()
    sni: tuple[str, ...] = ()
    method: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()

    def is_empty(self) -> bool:
        return not (self.src_ip or self.dst_port or self.host or self.sni or self.method
                    or self.path or self.headers)


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class RegexReplace:
    header: str
    pattern: str
    replace: str


@dataclass(frozen=True, slots=True)
class HeaderControl:
    """Header mutations, applied per direction as set → add → remove → regex replace."""

    request_set: tuple[tuple[str, str], ...] = ()
    request_add: tuple[tuple[str, str], ...] = ()
    request_remove: tuple[str, ...] = ()
    request_regex_replace: tuple[RegexReplace, ...] = ()
    response_set: tuple[tuple[str, str], ...] = ()
    response_add: tuple[tuple[str, str], ...] = ()
    response_remove: tuple[str, ...] = ()
    response_regex_replace: tuple[RegexReplace, ...] = ()

    def has_request(self) -> bool:
        return bool(self.request_set or self.request_add or self.request_remove
                    or self.request_regex_replace)

    def has_response(self) -> bool:
        return bool(self.response_set or self.response_add or self.response_remove
                    or self.response_regex_replace)


@dataclass(frozen=True, slots=True)
class LocalResponse:
    status: int = 200
    body: str = ""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


ACTION_TYPES = ("direct", "proxy", "block", "respond", "tunnel", "inspect")


@dataclass(frozen=True, slots=True)
class Action:
    type: str
    upstream: str | None = None
    local_response: LocalResponse | None = None


@dataclass(frozen=True, slots=True)
class RuleAuth:
    require: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: MatchSpec = field(default_factory=MatchSpec)
    action: Action | None = None  # None: the listener's default_action applies
    auth: RuleAuth | None = None
    headers: HeaderControl | None = None


@dataclass(frozen=True, slots=True)
class FilterRule:
    """A connection filter entry: evaluated on (src_ip, dst_port) before any HTTP byte."""

    name: str
    match: MatchSpec
    action: str = "block"


# --------------------------------------------------------------------------- PROXY metadata


@dataclass(frozen=True, slots=True)
class Xdp:
    enabled: bool = False
    metadata_mode: str = "proxy-v1"
    require_metadata: bool = True
    trusted_peers: tuple[str, ...] = ()
    metadata_timeout_ms: int = 5000  # ours: one deadline for the whole header


# --------------------------------------------------------------------------- listeners


@dataclass(frozen=True, slots=True)
class Inspection:
    """``tls_inspection`` of a listener: the CA directory (``ca``, else ``state_dir``)
    holding ca.crt and ca.key, and how origins are verified."""

    ca_dir: str
    verify_upstream: bool = True
    verify_exceptions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    mode: str  # "forward" | "transparent"
    listen: ListenAddr
    default_action: Action
    rules: tuple[Rule, ...] = ()
    upstream_proxy: str | None = None
    xdp: Xdp = field(default_factory=Xdp)
    connection_filter: tuple[FilterRule, ...] = ()
    # ours: CONNECT only to these ports (empty: any port), and whether targets on
    # loopback / unspecified / link-local addresses may be reached at all.
    connect_ports: tuple[int, ...] = (443,)
    allow_local_destinations: bool = False
    # ours: header names with "_" are refused unless allowed (CGI/WSGI read them as "-")
    underscores_in_headers: bool = False
    max_request_body_bytes: int | None = None  # None: runtime.max_request_body_bytes
    inspection: Inspection | None = None


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate of a TLS listener: ``sni`` is a name or ``*.parent``; paths are
    resolved against the directory of the file that named them."""

    sni: str
    cert: str
    key: str
    default: bool = False  # ours: for clients without SNI or with an unknown name


@dataclass(frozen=True, slots=True)
class ServerTls:
    certificates: tuple[Certificate, ...]
    min_version: str = "1.2"  # ours


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """ours: TLS towards https:// upstreams (origins and upstream proxies)."""

    verify: bool = True
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class Backend:
    name: str | None
    weight: int
    upstreams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mirror:
    name: str | None
    percent: int
    upstreams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 2
    backoff_ms: int = 100


@dataclass(frozen=True, slots=True)
class HealthCheck:
    interval_ms: int = 5000
    timeout_ms: int = 1000
    fail_threshold: int = 3
    cooldown_ms: int = 30000
    path: str | None = None  # ours: HTTP probe expecting 2xx/3xx; None = TCP connect


@dataclass(frozen=True, slots=True)
class PathRegex:
    pattern: str
    replace: str


@dataclass(frozen=True, slots=True)
class PathRewrite:
    strip_prefix: str | None = None
    add_prefix: str | None = None
    regex: PathRegex | None = None


LB_POLICIES = ("round_robin", "least_conn", "random")


@dataclass(frozen=True, slots=True)
class Route:
    match: MatchSpec
    backends: tuple[Backend, ...] = ()  # `upstreams: [...]` becomes one backend
    mirrors: tuple[Mirror, ...] = ()
    local_response: LocalResponse | None = None
    headers: HeaderControl | None = None
    lb: str = "round_robin"
    retry: Retry | None = None  # None: one attempt, no backoff
    timeout_ms: int = 30000
    health_check: HealthCheck | None = None
    path_rewrite: PathRewrite | None = None
    preserve_host: bool = True  # ours: the upstream sees the client's Host
    tls: UpstreamTls = field(default_factory=UpstreamTls)  # for https:// upstreams


@dataclass(frozen=True, slots=True)
class Reverse:
    name: str
    listen: ListenAddr
    routes: tuple[Route, ...] = ()
    xdp: Xdp = field(default_factory=Xdp)
    connection_filter: tuple[FilterRule, ...] = ()
    enforce_sni_host_match: bool = True
    sni_host_exceptions: tuple[str, ...] = ()
    underscores_in_headers: bool = False  # ours, as on listeners
    max_request_body_bytes: int | None = None  # ours, as on listeners
    tls: ServerTls | None = None
    tls_passthrough_routes: tuple[Route, ...] = ()  # upstreams as tcp://host:port


# --------------------------------------------------------------------------- global blocks


@dataclass(frozen=True, slots=True)
class Identity:
    proxy_name: str = "qpx"
    auth_realm: str = "qpx"
    metrics_prefix: str = "qpx"
    generated_user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class Messages:
    blocked: str = "blocked"
    forbidden: str = "forbidden"
    trace_disabled: str = "trace disabled"
    proxy_error: str = "proxy error"
    proxy_auth_required: str = "proxy auth required"
    reverse_error: str = "reverse error"
    cache_miss: str = "cache miss"
    unsupported_ftp_method: str = "unsupported ftp method"
    ftp_disabled: str = "ftp over http disabled"
    connect_udp_disabled: str = "connect-udp disabled"
    upstream_connect_udp_failed: str = "upstream connect-udp failed"
    # ours: bodies for the status codes the original never produced
    bad_request: str = "bad request"
    gateway_timeout: str = "gateway timeout"
    no_healthy_upstream: str = "no healthy upstream"
    loop_detected: str = "loop detected"
    misdirected_request: str = "misdirected request"
    not_implemented: str = "not implemented"
    payload_too_large: str = "payload too large"


@dataclass(frozen=True, slots=True)
class Runtime:
    worker_threads: int | None = None  # worker processes; None: CPU count
    max_blocking_threads: int | None = None  # hub threadpool; None: max(workers*32, 128)
    acceptor_tasks_per_listener: int | None = None  # None: worker_threads
    reuse_port: bool = True
    tcp_backlog: int = 4096
    max_ftp_concurrency: int = 32
    trace_enabled: bool = False
    max_h3_request_body_bytes: int = 16 * 1024 * 1024
    max_h3_response_body_bytes: int = 16 * 1024 * 1024
    max_reverse_retry_template_body_bytes: int = 8 * 1024 * 1024
    upstream_http_timeout_ms: int = 30000
    tls_peek_timeout_ms: int = 1000
    http_header_read_timeout_ms: int = 10000
    upgrade_wait_timeout_ms: int = 10000
    tunnel_idle_timeout_ms: int = 300000
    h3_read_timeout_ms: int = 10000
    # ours
    graceful_timeout_ms: int = 30000
    max_concurrent_connections: int = 10000
    max_header_bytes: int = 32768
    max_request_line_bytes: int = 8192
    max_header_count: int = 100
    max_request_body_bytes: int | None = None  # None: unlimited
    client_keepalive_timeout_ms: int = 15000
    client_body_timeout_ms: int = 30000
    send_timeout_ms: int = 30000
    tls_handshake_timeout_ms: int = 10000
    worker_timeout_ms: int = 30000
    cpu_affinity: tuple[int, ...] | str | None = None  # CPU list, "auto", or None
    cpu_affinity_iface: str | None = None

    def workers(self) -> int:
        return self.worker_threads or min(os.cpu_count() or 1, 256)

    def acceptors(self) -> int:
        """Acceptor sockets per worker.  Unset: one, so a listener gets one socket per
        worker — the same socket count as the original's default (acceptors =
        worker_threads, shared by its threads); DESIGN.md multiplies by workers."""
        return max(1, self.acceptor_tasks_per_listener or 1)

    def blocking_threads(self) -> int:
        return self.max_blocking_threads or max(self.workers() * 32, 128)


@dataclass(frozen=True, slots=True)
class Logging:
    level: str = "info"
    format: str = "json"
    access_log: str | None = "-"  # ours: path, "-" for stdout, None for off
    error_log: str | None = None  # ours: path; None: stderr


@dataclass(frozen=True, slots=True)
class Metrics:
    listen: ListenAddr
    path: str = "/metrics"
    allow: tuple[str, ...] = ()
    max_concurrent_connections: int = 32


@dataclass(frozen=True, slots=True)
class AuthUser:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    tls: UpstreamTls = field(default_factory=UpstreamTls)


@dataclass(frozen=True, slots=True)
class Config:
    version: int
    sources: tuple[str, ...]  # every file read, main file first
    state_dir: str = ".qpx"
    identity: Identity = field(default_factory=Identity)
    messages: Messages = field(default_factory=Messages)
    runtime: Runtime = field(default_factory=Runtime)
    logging: Logging = field(default_factory=Logging)
    metrics: Metrics | None = None
    users: tuple[AuthUser, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    listeners: tuple[Listener, ...] = ()
    reverse: tuple[Reverse, ...] = ()

    def upstream_url(self, ref: str | None) -> str | None:
        """Resolve an upstream reference (a name, or a URL containing ``://``)."""
        if ref is None:
            return None
        if "://" in ref:
            return ref
        for up in self.upstreams:
            if up.name == ref:
                return up.url
        return None

    def upstream_tls(self, ref: str | None) -> "UpstreamTls | None":
        """The TLS settings of a named upstream (a URL reference has the defaults)."""
        for up in self.upstreams:
            if up.name == ref:
                return up.tls
        return None
