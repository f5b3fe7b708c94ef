"""The voluptuous schema of the seed-era configuration (``version: 1``).

The schema checks shape and types only: which keys exist, which are required, and the
type and range of every scalar.  Unknown keys are rejected at any depth.  Defaults are
not filled in here — they live on the model dataclasses (``model.py``) — and cross-field
rules (references, duplicates, "not supported by this build") are in ``build.py``.

Every key of the original's schema (spec §1.3-§1.10) is listed, including those of
features this build does not implement (``http3``, ``tls_inspection``, ``ftp``, ``cache``,
``exporter``, ``auth.ldap``, reverse ``tls``): they must parse so that ``build.py`` can
refuse them by name when they are enabled, and accept them when they are disabled.
"""

from __future__ import annotations

import re

from voluptuous import Any, Invalid, MultipleInvalid, Optional, Required, Schema

# --------------------------------------------------------------------------- scalars


def _describe(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (dict, list)):
        return "a mapping" if isinstance(v, dict) else "a list"
    return repr(v)


def Int(lo: int | None = None, hi: int | None = None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"expected an integer, got {_describe(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if hi is None:
                raise Invalid(f"must be at least {lo}, got {v}")
            raise Invalid(f"must be between {lo} and {hi}, got {v}")
        return v
    return check


def Bool(v):
    if not isinstance(v, bool):
        raise Invalid(f"expected true or false, got {_describe(v)}")
    return v


def Str(v):
    if not isinstance(v, str):
        raise Invalid(f"expected a string, got {_describe(v)}")
    return v


def NonBlank(v):
    Str(v)
    if not v.strip():
        raise Invalid("must not be empty")
    return v


def HeaderValue(v):
    """Header values may be written as numbers (``DNT: 1``); they become strings."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise Invalid(f"expected a string, got {_describe(v)}")
    return str(v)


def List(item):
    """A list whose every element is checked, and every element's errors reported
    (voluptuous's own ``[item]`` stops at the first element with a nested error)."""
    schema = Schema(item)

    def check(v):
        if not isinstance(v, list):
            raise Invalid(f"expected a list, got {_describe(v)}")
        out, errors = [], []
        for i, element in enumerate(v):
            try:
                out.append(schema(element))
            except MultipleInvalid as e:
                errors.extend(Invalid(x.error_message, path=[i] + x.path) for x in e.errors)
            except Invalid as e:
                errors.append(Invalid(e.error_message, path=[i] + e.path))
        if errors:
            raise MultipleInvalid(errors)
        return out
    return check


def Nullable(s):
    """``s`` or null (with ``s``'s own error message when it is neither)."""
    schema = Schema(s)

    def check(v):
        return None if v is None else schema(v)
    return check


def Choice(*values: str, fold: bool = False):
    def check(v):
        Str(v)
        key = v.lower() if fold else v
        if key not in values:
            raise Invalid(f"must be one of {', '.join(values)}; got {v!r}")
        return key
    return check


_LISTEN = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})$")


def Listen(v):
    """``IP:port`` or ``[IPv6]:port`` with a literal address (no host names)."""
    import ipaddress

    Str(v)
    m = _LISTEN.match(v)
    if not m:
        raise Invalid(f"expected IP:port or [IPv6]:port, got {v!r}")
    host = m.group(1) or m.group(2)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(f"{host!r} is not an IP address (listen takes a literal address)") \
            from None
    if m.group(1) and ip.version != 6:
        raise Invalid(f"brackets are for IPv6 addresses, got {v!r}")
    port = int(m.group(3))
    if not 0 < port < 65536:
        raise Invalid(f"port must be between 1 and 65535, got {port}")
    return v


Port = Int(0, 65535)
Ms = Int(1)
Bytes = Int(1)

# --------------------------------------------------------------------------- blocks

LOCAL_RESPONSE = {
    Optional("status"): Int(200, 599),  # 1xx would leave the exchange unfinished
    Optional("body"): Str,
    Optional("content_type"): Nullable(Str),
    Optional("headers"): Nullable({Str: HeaderValue}),
}

ACTION = {
    Required("type"): Choice("inspect", "tunnel", "block", "direct", "proxy", "respond"),
    Optional("upstream"): Nullable(Str),
    Optional("local_response"): Nullable(LOCAL_RESPONSE),
}

REGEX_REPLACE = {Required("header"): NonBlank, Required("pattern"): NonBlank,
                 Required("replace"): Str}

HEADER_CONTROL = {
    Optional(k): Nullable({Str: HeaderValue}) for k in
    ("request_set", "request_add", "response_set", "response_add")
} | {
    Optional("request_remove"): Nullable(List(Str)),
    Optional("response_remove"): Nullable(List(Str)),
    Optional("request_regex_replace"): Nullable(List(REGEX_REPLACE)),
    Optional("response_regex_replace"): Nullable(List(REGEX_REPLACE)),
}

HEADER_MATCH = {Required("name"): NonBlank, Optional("value"): Nullable(Str),
                Optional("regex"): Nullable(Str)}

MATCH = {
    Optional("src_ip"): Nullable(List(Str)),
    Optional("dst_port"): Nullable(List(Port)),
    Optional("host"): Nullable(List(Str)),
    Optional("sni"): Nullable(List(Str)),
    Optional("method"): Nullable(List(Str)),
    Optional("path"): Nullable(List(Str)),
    Optional("headers"): Nullable(List(HEADER_MATCH)),
}

RULE = {
    Required("name"): NonBlank,
    Optional("match"): Nullable(MATCH),
    Optional("auth"): Nullable({Optional("require"): Nullable(List(Str)),
                                Optional("groups"): Nullable(List(Str))}),
    Optional("action"): Nullable(ACTION),
    Optional("headers"): Nullable(HEADER_CONTROL),
}

XDP = {
    Optional("enabled"): Bool,
    Optional("metadata_mode"): Str,
    Optional("require_metadata"): Bool,
    Optional("trusted_peers"): Nullable(List(Str)),
    Optional("metadata_timeout_ms"): Ms,
}

CONNECTION_FILTER = {
    Required("name"): NonBlank,
    Required("match"): {Optional("src_ip"): Nullable(List(Str)),
                        Optional("dst_port"): Nullable(List(Port))},
    Optional("action"): {Required("type"): Choice("block")},
}

TLS_INSPECTION = {
    Optional("enabled"): Bool,
    Optional("ca"): Nullable(Any(Str, dict)),
    Optional("verify_upstream"): Bool,
    Optional("verify_exceptions"): Nullable(List(Str)),
}

LISTENER_HTTP3 = {
    Optional("enabled"): Bool,
    Optional("listen"): Nullable(Str),
    Optional("connect_udp"): Nullable({Optional("enabled"): Bool,
                                       Optional("idle_timeout_secs"): Int(1),
                                       Optional("max_capsule_buffer_bytes"): Bytes}),
}

FTP = {Optional("enabled"): Bool, Optional("max_request_body_bytes"): Bytes,
       Optional("max_download_bytes"): Bytes, Optional("timeout_ms"): Ms}

LISTENER_CACHE = {Optional("enabled"): Bool, Optional("backend"): Str,
                  Optional("namespace"): Nullable(Str), Optional("default_ttl_secs"): Int(0),
                  Optional("max_object_bytes"): Bytes,
                  Optional("allow_set_cookie_store"): Bool}

LISTENER = {
    Required("name"): NonBlank,
    Required("mode"): Choice("forward", "transparent"),
    Required("listen"): Listen,
    Required("default_action"): ACTION,
    Optional("rules"): Nullable(List(RULE)),
    Optional("upstream_proxy"): Nullable(Str),
    Optional("tls_inspection"): Nullable(TLS_INSPECTION),
    Optional("http3"): Nullable(LISTENER_HTTP3),
    Optional("ftp"): Nullable(FTP),
    Optional("xdp"): Nullable(XDP),
    Optional("cache"): Nullable(LISTENER_CACHE),
    Optional("connection_filter"): Nullable(List(CONNECTION_FILTER)),
    Optional("connect_ports"): Nullable(List(Port)),
    Optional("allow_local_destinations"): Bool,
    Optional("underscores_in_headers"): Bool,
    Optional("max_request_body_bytes"): Nullable(Int(0)),
}

def TlsVersion(v):
    """``"1.2"``/``"1.3"`` (also written unquoted, which YAML reads as a number, or as
    ``TLSv1.2``)."""
    text = str(v) if isinstance(v, (str, float)) and not isinstance(v, bool) else None
    if text is not None and text.lower().startswith("tlsv"):
        text = text[4:]
    if text not in ("1.2", "1.3"):
        raise Invalid(f"must be 1.2 or 1.3, got {v!r}")
    return text


REVERSE_TLS = {
    Optional("certificates"): Nullable(List({
        Required("sni"): Str, Optional("cert"): Nullable(Str), Optional("key"): Nullable(Str),
        Optional("pkcs12"): Nullable(Str), Optional("pkcs12_password_env"): Nullable(Str),
        Optional("default"): Bool})),
    Optional("min_version"): TlsVersion,
}

# ours: TLS towards upstreams (https:// origins and upstream proxies)
UPSTREAM_TLS = {Optional("verify"): Bool, Optional("ca_file"): Nullable(Str)}


HEALTH_CHECK = {Optional("interval_ms"): Ms, Optional("timeout_ms"): Ms,
                Optional("fail_threshold"): Int(1), Optional("cooldown_ms"): Ms,
                Optional("path"): Nullable(Str)}

RETRY = {Optional("attempts"): Int(1, 100), Optional("backoff_ms"): Int(0)}

PATH_REWRITE = {
    Optional("strip_prefix"): Nullable(Str),
    Optional("add_prefix"): Nullable(Str),
    Optional("regex"): Nullable({Required("pattern"): Str, Required("replace"): Str}),
}

ROUTE_CACHE = {Optional("enabled"): Bool, Optional("backend"): Str,
               Optional("namespace"): Nullable(Str), Optional("default_ttl_secs"): Int(0),
               Optional("max_object_bytes"): Bytes, Optional("allow_set_cookie_store"): Bool}

ROUTE = {
    Required("match"): Nullable(MATCH),
    Optional("upstreams"): Nullable(List(Str)),
    Optional("backends"): Nullable(List({Optional("name"): Nullable(Str),
                                         Optional("weight"): Int(1),
                                         Optional("upstreams"): Nullable(List(Str))})),
    Optional("mirrors"): Nullable(List({Optional("name"): Nullable(Str),
                                        Optional("percent"): Int(1, 100),
                                        Optional("upstreams"): Nullable(List(Str))})),
    Optional("local_response"): Nullable(LOCAL_RESPONSE),
    Optional("headers"): Nullable(HEADER_CONTROL),
    Optional("lb"): Choice("round_robin", "least_conn", "least_connections", "random",
                           fold=True),
    Optional("retry"): Nullable(RETRY),
    Optional("timeout_ms"): Ms,
    Optional("health_check"): Nullable(HEALTH_CHECK),
    Optional("cache"): Nullable(ROUTE_CACHE),
    Optional("path_rewrite"): Nullable(PATH_REWRITE),
    Optional("preserve_host"): Bool,
    Optional("tls"): Nullable(UPSTREAM_TLS),
}

TLS_PASSTHROUGH_ROUTE = {
    Required("match"): {Optional("src_ip"): Nullable(List(Str)),
                        Optional("dst_port"): Nullable(List(Port)),
                        Optional("sni"): Nullable(List(Str))},
    Required("upstreams"): List(Str),
    Optional("lb"): Str, Optional("retry"): Nullable(RETRY), Optional("timeout_ms"): Ms,
    Optional("health_check"): Nullable(HEALTH_CHECK),
}


REVERSE_HTTP3 = {
    Optional("enabled"): Bool,
    Optional("listen"): Nullable(Str),
    Optional("passthrough_upstreams"): Nullable(List(Str)),
    Optional("passthrough_max_sessions"): Int(1),
    Optional("passthrough_idle_timeout_secs"): Int(1),
    Optional("passthrough_max_new_sessions_per_sec"): Int(1),
    Optional("passthrough_min_client_bytes"): Int(1),
    Optional("passthrough_max_amplification"): Int(1),
}

REVERSE = {
    Required("name"): NonBlank,
    Required("listen"): Listen,
    Optional("tls"): Nullable(REVERSE_TLS),
    Optional("http3"): Nullable(REVERSE_HTTP3),
    Optional("xdp"): Nullable(XDP),
    Optional("connection_filter"): Nullable(List(CONNECTION_FILTER)),
    Optional("enforce_sni_host_match"): Bool,
    Optional("sni_host_exceptions"): Nullable(List(Str)),
    Optional("routes"): Nullable(List(ROUTE)),
    Optional("tls_passthrough_routes"): Nullable(List(TLS_PASSTHROUGH_ROUTE)),
    Optional("underscores_in_headers"): Bool,
    Optional("max_request_body_bytes"): Nullable(Int(0)),
}

RUNTIME = {
    Optional("worker_threads"): Nullable(Int(1, 256)),
    Optional("max_blocking_threads"): Nullable(Int(1)),
    Optional("acceptor_tasks_per_listener"): Nullable(Int(1, 1024)),
    Optional("reuse_port"): Bool,
    Optional("tcp_backlog"): Int(1),
    Optional("max_ftp_concurrency"): Int(1),
    Optional("trace_enabled"): Bool,
    **{Optional(k): Bytes for k in (
        "max_h3_request_body_bytes", "max_h3_response_body_bytes",
        "max_reverse_retry_template_body_bytes", "max_header_bytes",
        "max_request_line_bytes")},
    **{Optional(k): Ms for k in (
        "upstream_http_timeout_ms", "tls_peek_timeout_ms", "http_header_read_timeout_ms",
        "upgrade_wait_timeout_ms", "tunnel_idle_timeout_ms", "h3_read_timeout_ms",
        "graceful_timeout_ms", "client_keepalive_timeout_ms", "client_body_timeout_ms",
        "send_timeout_ms", "tls_handshake_timeout_ms")},
    # Workers beat once a second: below 2 s a busy but healthy worker would be killed.
    Optional("worker_timeout_ms"): Int(2000),
    Optional("max_concurrent_connections"): Int(1),
    Optional("max_header_count"): Int(1),
    Optional("max_request_body_bytes"): Nullable(Int(0)),
    Optional("cpu_affinity"): Nullable(Any(Str, List(Int(0)))),
    Optional("cpu_affinity_iface"): Nullable(Str),
}

MESSAGE_KEYS = (
    "blocked", "forbidden", "trace_disabled", "proxy_error", "proxy_auth_required",
    "reverse_error", "cache_miss", "unsupported_ftp_method", "ftp_disabled",
    "connect_udp_disabled", "upstream_connect_udp_failed", "bad_request",
    "gateway_timeout", "no_healthy_upstream", "loop_detected", "misdirected_request",
    "not_implemented", "payload_too_large",
)

EXPORTER = {
    Optional("enabled"): Bool,
    Optional("endpoint"): Str,
    Optional("max_queue_events"): Int(1),
    Optional("allow_insecure"): Bool,
    Optional("tls"): Nullable(dict),
    Optional("capture"): Nullable({Optional("plaintext"): Bool, Optional("encrypted"): Bool,
                                   Optional("max_chunk_bytes"): Bytes}),
}

LDAP = {
    Required("url"): Str, Required("bind_dn"): Str, Required("bind_password_env"): Str,
    Required("user_base_dn"): Str, Required("group_base_dn"): Str,
    Optional("timeout_ms"): Ms, Optional("require_starttls"): Bool,
    Optional("user_filter"): Str, Optional("group_filter"): Str, Optional("group_attr"): Str,
}

TOP = Schema({
    Required("version"): Int(),
    Optional("state_dir"): Nullable(Str),
    Optional("identity"): Nullable({
        Optional("proxy_name"): Str, Optional("auth_realm"): Str,
        Optional("metrics_prefix"): Str, Optional("generated_user_agent"): Nullable(Str)}),
    Optional("messages"): Nullable({Optional(k): Str for k in MESSAGE_KEYS}),
    Optional("runtime"): Nullable(RUNTIME),
    Optional("logging"): Nullable({
        Optional("level"): Choice("trace", "debug", "info", "warn", "warning", "error",
                                  "critical", fold=True),
        Optional("format"): Choice("json", "text", fold=True),
        Optional("access_log"): Nullable(Str),
        Optional("error_log"): Nullable(Str)}),
    Optional("metrics"): Nullable({
        Required("listen"): Listen, Optional("path"): Str,
        Optional("allow"): Nullable(List(Str)),
        Optional("max_concurrent_connections"): Int(1)}),
    Optional("exporter"): Nullable(EXPORTER),
    Optional("auth"): Nullable({
        Optional("users"): Nullable(List({Required("username"): Str,
                                          Optional("password"): Nullable(Str),
                                          Optional("ha1"): Nullable(Str)})),
        Optional("ldap"): Nullable(LDAP)}),
    Optional("upstreams"): Nullable(List({Required("name"): Str, Required("url"): Str,
                                          Optional("tls"): Nullable(UPSTREAM_TLS)})),
    Optional("cache"): Nullable({Optional("backends"): Nullable(List(dict))}),
    Optional("listeners"): Nullable(List(LISTENER)),
    Optional("reverse"): Nullable(List(REVERSE)),
})
