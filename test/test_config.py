"""The configuration system: every rule of issue 2, each with its exact error text.

Most tests go through ``qpxd check`` as a user would (a subprocess), and assert the whole
error line: file, line, dotted path and message.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import QPXD, ROOT

from qpx.config import ConfigError, load_config


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text if not text.startswith("\n") else textwrap.dedent(text).lstrip())
    return p


def check(*files: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    args = []
    for f in files:
        args += ["-c", str(f)]
    return subprocess.run(QPXD + ["check"] + args, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


MINIMAL = """\
version: 1
listeners:
  - name: fwd
    mode: forward
    listen: "127.0.0.1:18080"
    default_action: { type: block }
"""


def errors(r: subprocess.CompletedProcess) -> list[str]:
    return [line[len("error: "):] for line in r.stderr.splitlines() if line.startswith("error: ")]


def test_minimal_config_is_ok(tmp_path):
    r = check(write(tmp_path, "a.yaml", MINIMAL))
    assert r.returncode == 0 and r.stdout == "config ok: 1 listeners, 0 reverse\n"


def test_unknown_keys_name_file_line_and_dotted_path_and_all_are_reported(tmp_path):
    f = write(tmp_path, "a.yaml", """
        version: 1
        runtime:
          worker_thread: 4
        listeners:
          - name: fwd
            mode: forward
            listen: "127.0.0.1:18080"
            default_action: { type: block }
            rules:
              - name: a
                match: { host: [x] }
              - name: b
              - name: c
                match:
                  hosts: [x]
          - name: two
            mode: forward
            listen: "127.0.0.1:18081"
            default_action: { type: block }
            bogus: true
    """)
    r = check(f)
    assert r.returncode == 1
    assert errors(r) == [
        f"{f}:3: runtime.worker_thread: unknown key",
        f"{f}:15: listeners.0.rules.2.match.hosts: unknown key",
        f"{f}:20: listeners.1.bogus: unknown key",
    ]
    assert r.stderr.strip().endswith("config invalid: 3 errors")


def test_type_errors_are_precise(tmp_path):
    f = write(tmp_path, "a.yaml", MINIMAL + "runtime:\n  tcp_backlog: \"lots\"\n"
                                            "  reuse_port: \"yes\"\n  worker_threads: 0\n")
    assert errors(check(f)) == [
        f"{f}:8: runtime.tcp_backlog: expected an integer, got 'lots'",
        f"{f}:9: runtime.reuse_port: expected true or false, got 'yes'",
        f"{f}:10: runtime.worker_threads: must be between 1 and 256, got 0",
    ]


def test_env_expansion_in_values_only(tmp_path, monkeypatch):
    f = write(tmp_path, "a.yaml", """
        version: 1
        # ${NOT_SET_ANYWHERE} in a comment is inert
        state_dir: "${QPX_T_DIR:-/tmp/default-dir}"
        runtime:
          tcp_backlog: ${QPX_T_BACKLOG}
        listeners:
          - name: fwd
            mode: forward
            listen: "127.0.0.1:${QPX_T_PORT:-18080}"
            default_action: { type: block }
    """)
    monkeypatch.setenv("QPX_T_BACKLOG", "321")
    monkeypatch.setenv("QPX_T_DIR", "")  # set but empty: POSIX :- takes the default
    cfg, _ = load_config([str(f)])
    assert cfg.runtime.tcp_backlog == 321  # a plain scalar is re-typed after expansion
    assert cfg.state_dir == "/tmp/default-dir"
    assert str(cfg.listeners[0].listen) == "127.0.0.1:18080"
    monkeypatch.delenv("QPX_T_BACKLOG")
    with pytest.raises(ConfigError) as e:
        load_config([str(f)])
    assert [str(i) for i in e.value.issues] == [
        f"{f}:5: runtime.tcp_backlog: environment variable QPX_T_BACKLOG is not set and has "
        "no default (write ${QPX_T_BACKLOG:-default} to give one)"]


def test_includes_merge_maps_append_named_lists_and_attribute_errors(tmp_path):
    write(tmp_path, "frag/base.yaml", "") if False else None
    (tmp_path / "frag").mkdir()
    write(tmp_path, "frag/obs.yaml", """
        logging: { level: debug, format: text }
        runtime: { tcp_backlog: 100, worker_threads: 3 }
    """)
    write(tmp_path, "frag/fwd.yaml", """
        upstreams: [{ name: up1, url: "http://127.0.0.1:3128" }]
        listeners:
          - name: inc
            mode: forward
            listen: "127.0.0.1:18090"
            default_action: { type: proxy, upstream: up1 }
    """)
    main = write(tmp_path, "main.yaml", MINIMAL + "include: [frag/obs.yaml, frag/fwd.yaml]\n"
                                                  "runtime: { tcp_backlog: 200 }\n")
    cfg, _ = load_config([str(main)])
    assert [l.name for l in cfg.listeners] == ["inc", "fwd"]  # appended, includes first
    assert cfg.runtime.tcp_backlog == 200 and cfg.runtime.worker_threads == 3  # merged
    assert cfg.logging.level == "debug"
    assert len(cfg.sources) == 3
    write(tmp_path, "frag/dup.yaml", """
        listeners:
          - name: fwd
            mode: forward
            listen: "127.0.0.1:18099"
            default_action: { type: block }
            typo_key: 1
    """)
    bad = write(tmp_path, "bad.yaml", MINIMAL + "include: [frag/dup.yaml]\n")
    assert errors(check(bad)) == [
        f"{tmp_path / 'frag/dup.yaml'}:6: listeners.0.typo_key: unknown key"]
    (tmp_path / "frag/dup.yaml").write_text((tmp_path / "frag/dup.yaml").read_text()
                                            .replace("    typo_key: 1\n", ""))
    assert errors(check(bad)) == [
        f"{bad}:3: listeners.1.name: duplicate name 'fwd' (also listeners.0)"]


def test_include_cycle_and_missing_include(tmp_path):
    write(tmp_path, "a.yaml", "version: 1\ninclude: [b.yaml]\n")
    b = write(tmp_path, "b.yaml", "include: [a.yaml]\n")
    assert errors(check(tmp_path / "a.yaml")) == [
        f"{b}: include.0: include cycle: a.yaml -> b.yaml -> a.yaml"]
    m = write(tmp_path, "m.yaml", MINIMAL + "include: [nope.yaml]\n")
    assert errors(check(m)) == [
        f"{m}: include.0: cannot read '{tmp_path / 'nope.yaml'}': No such file or directory"]


def test_several_files_merge_in_order(tmp_path):
    a = write(tmp_path, "a.yaml", MINIMAL)
    b = write(tmp_path, "b.yaml", """
        reverse:
          - name: rev
            listen: "127.0.0.1:19080"
            routes: [{ match: {}, local_response: { body: hi } }]
    """)
    r = check(a, b)
    assert r.returncode == 0 and r.stdout == "config ok: 1 listeners, 1 reverse\n"


@pytest.mark.parametrize("snippet,expected", [
    ("listen: \"127.0.0.1\"", "listeners.0.listen: expected IP:port or [IPv6]:port, got "
                              "'127.0.0.1'"),
    ("listen: \"[::1:80\"", "listeners.0.listen: expected IP:port or [IPv6]:port, got "
                            "'[::1:80'"),
    ("listen: \"localhost:80\"", "listeners.0.listen: expected IP:port or [IPv6]:port, got "
                                 "'localhost:80'"),
    ("mode: reverse", "listeners.0.mode: must be one of forward, transparent; got 'reverse'"),
])
def test_listener_shape_errors(tmp_path, snippet, expected):
    key = snippet.split(":")[0]
    text = "\n".join(line if not line.strip().startswith(key + ":") else
                     line.split(key)[0] + snippet for line in MINIMAL.splitlines())
    f = write(tmp_path, "a.yaml", text)
    errs = errors(check(f))
    assert len(errs) == 1 and errs[0].split(": ", 1)[1] == expected, errs


RULES = """
    version: 1
    upstreams: [{ name: corp, url: "http://127.0.0.1:3128" }]
    listeners:
      - name: fwd
        mode: forward
        listen: "127.0.0.1:18080"
        default_action: { type: block }
        rules:
          - name: r
            match:
              %s
            action: { type: direct }
"""


@pytest.mark.parametrize("match,path,message", [
    ("src_ip: [\"10.0.0.1/8\"]", "listeners.0.rules.0.match.src_ip.0",
     "invalid CIDR '10.0.0.1/8': host bits set"),
    ("src_ip: [\"10.0.0.0/33\"]", "listeners.0.rules.0.match.src_ip.0",
     "invalid CIDR '10.0.0.0/33': prefix length must be 0-32"),
    ("src_ip: [nonsense]", "listeners.0.rules.0.match.src_ip.0",
     "invalid CIDR 'nonsense': not an IP address"),
    ("host: [\"[abc\"]", "listeners.0.rules.0.match.host.0",
     "invalid glob '[abc': unclosed character class"),
    ("headers: [{ name: x, regex: \"(\" }]", "listeners.0.rules.0.match.headers.0.regex",
     "invalid regex '(': missing ), unterminated subpattern at position 0"),
])
def test_bad_patterns_are_errors_at_check_time(tmp_path, match, path, message):
    f = write(tmp_path, "a.yaml", RULES % match)
    errs = errors(check(f))
    assert [e.split(": ", 1)[1] for e in errs] == [f"{path}: {message}"], errs


@pytest.mark.parametrize("action,path,message", [
    ("{ type: proxy, upstream: nope }", "listeners.0.rules.0.action.upstream",
     "references unknown upstream 'nope'"),
    ("{ type: respond }", "listeners.0.rules.0.action",
     "action type respond requires local_response"),
    ("{ type: block, upstream: corp }", "listeners.0.rules.0.action.upstream",
     "action type block must not set upstream"),
    ("{ type: inspect }", "listeners.0.rules.0.action.type",
     "action inspect needs tls_inspection.enabled on this listener"),
    ("{ type: proxy, upstream: \"h3://corp:3128\" }", "listeners.0.rules.0.action.upstream",
     "h3:// upstream proxies: not supported by this build"),
])
def test_action_errors(tmp_path, action, path, message):
    f = write(tmp_path, "a.yaml", (RULES % "host: [x]").replace("{ type: direct }", action))
    errs = errors(check(f))
    assert [e.split(": ", 1)[1] for e in errs] == [f"{path}: {message}"], errs


@pytest.mark.parametrize("action,path,message", [
    ("{ type: respond, local_response: { status: 101 } }",
     "listeners.0.rules.0.action.local_response.status", "must be between 200 and 599, got 101"),
    ("{ type: respond, local_response: { headers: { Content-Length: \"5\" } } }",
     "listeners.0.rules.0.action.local_response.headers.Content-Length",
     "qpxd frames local responses itself: Content-Length, Transfer-Encoding, Connection and "
     "other hop-by-hop fields cannot be set here"),
    ("{ type: respond, local_response: { headers: { connection: close } } }",
     "listeners.0.rules.0.action.local_response.headers.connection",
     "qpxd frames local responses itself: Content-Length, Transfer-Encoding, Connection and "
     "other hop-by-hop fields cannot be set here"),
])
def test_local_response_limits(tmp_path, action, path, message):
    f = write(tmp_path, "a.yaml", (RULES % "host: [x]").replace("{ type: direct }", action))
    errs = errors(check(f))
    assert [e.split(": ", 1)[1] for e in errs] == [f"{path}: {message}"], errs


REWRITE = """
    version: 1
    reverse:
      - name: site
        listen: "127.0.0.1:18081"
        routes:
          - match: { path: ["/a/*"] }
            upstreams: ["http://127.0.0.1:9000"]
            path_rewrite: { regex: { pattern: "%s", replace: "%s" } }
"""


@pytest.mark.parametrize("pattern,replace,message", [
    ("^/a/(.*)$", "/b/$2", "replacement '/b/$2' refers to a group pattern '^/a/(.*)$' does "
     "not have (invalid group reference 2); write ${1}x, not $1x, when a name "
     "character follows"),
    ("^/a/(.*)$", "/b/$1x", "replacement '/b/$1x' refers to a group pattern '^/a/(.*)$' "
     "does not have (bad character in group name '1x'); write ${1}x, not $1x, "
     "when a name character follows"),
    ("^/a/(.*)$", "/b /$1", "must not contain whitespace, control or non-ASCII characters "
     "(a request target cannot carry them)"),
])
def test_path_rewrite_replacement_is_checked(tmp_path, pattern, replace, message):
    f = write(tmp_path, "a.yaml", REWRITE % (pattern, replace))
    errs = errors(check(f))
    assert [e.split(": ", 1)[1] for e in errs] == \
        [f"reverse.0.routes.0.path_rewrite.regex.replace: {message}"], errs
    ok = write(tmp_path, "b.yaml", REWRITE % (pattern, "/b/${1}x"))
    assert check(ok).returncode == 0


def test_header_regex_replacement_and_worker_timeout_are_checked(tmp_path):
    f = write(tmp_path, "a.yaml", """
        version: 1
        listeners:
          - name: fwd
            mode: forward
            listen: "127.0.0.1:18080"
            default_action: { type: direct }
            rules:
              - name: r
                match: { host: [x] }
                action: { type: direct }
                headers:
                  request_regex_replace:
                    - { header: User-Agent, pattern: 'curl/(.+)', replace: 'agent-$2' }
    """)
    assert [e.split(": ", 1)[1] for e in errors(check(f))] == [
        "listeners.0.rules.0.headers.request_regex_replace.0.replace: replacement 'agent-$2' "
        "refers to a group pattern 'curl/(.+)' does not have (invalid group reference 2); write ${1}x, not $1x, when a name character follows"]
    g = write(tmp_path, "b.yaml", MINIMAL.replace("version: 1\n", "version: 1\nruntime: "
                                                  "{ worker_timeout_ms: 500 }\n"))
    assert [e.split(": ", 1)[1] for e in errors(check(g))] == [
        "runtime.worker_timeout_ms: must be at least 2000, got 500"]


@pytest.mark.parametrize("block,path", [
    ("http3: { enabled: true }", "listeners.0.http3.enabled"),
    ("ftp: { enabled: true }", "listeners.0.ftp.enabled"),
    ("cache: { enabled: true }", "listeners.0.cache.enabled"),
])
def test_enabled_unsupported_features_are_refused_disabled_accepted(tmp_path, block, path):
    f = write(tmp_path, "a.yaml", MINIMAL + "    " + block + "\n")  # a listener key
    assert [e.split(": ", 1)[1] for e in errors(check(f))] == \
        [f"{path}: not supported by this build"]
    g = write(tmp_path, "b.yaml", MINIMAL + "    " + block.replace("true", "false") + "\n")
    assert check(g).returncode == 0


def test_xdp_lb_metrics_and_auth_checks(tmp_path):
    f = write(tmp_path, "a.yaml", """
        version: 1
        metrics: { listen: "0.0.0.0:9900" }
        auth:
          users: [{ username: a }, { username: a, password: p }]
          ldap: { url: "ldaps://x", bind_dn: d, bind_password_env: E, user_base_dn: u,
                  group_base_dn: g }
        listeners:
          - name: fwd
            mode: forward
            listen: "127.0.0.1:18080"
            default_action: { type: block }
            xdp: { enabled: true, metadata_mode: proxy-v3 }
        reverse:
          - name: rev
            listen: "127.0.0.1:19080"
            routes:
              - match: {}
                upstreams: ["http://127.0.0.1:1"]
                local_response: { body: x }
    """)
    got = [e.split(": ", 1)[1] for e in errors(check(f))]
    assert got == [
        "metrics.listen: metrics.listen must be a loopback address unless metrics.allow "
        "lists the networks that may scrape",
        "auth.users.0: a user needs a password",
        "auth.users.1.username: duplicate username 'a'",
        "auth.ldap: LDAP authentication: not supported by this build",
        "listeners.0.xdp.metadata_mode: unsupported xdp metadata_mode 'proxy-v3' (expected "
        "proxy-v1 or proxy-v2)",
        "listeners.0.xdp.trusted_peers: xdp.enabled requires xdp.trusted_peers",
        "reverse.0.routes.0: a route needs exactly one of upstreams, backends or "
        "local_response",
    ], got
    g = write(tmp_path, "b.yaml", """
        version: 1
        reverse:
          - name: rev
            listen: "127.0.0.1:19080"
            routes: [{ match: {}, upstreams: ["http://127.0.0.1:1"], lb: fastest }]
    """)
    assert [e.split(": ", 1)[1] for e in errors(check(g))] == [
        "reverse.0.routes.0.lb: must be one of round_robin, least_conn, least_connections, "
        "random; got 'fastest'"]


def test_warning_for_proxy_action_without_upstream(tmp_path):
    f = write(tmp_path, "a.yaml", (RULES % "host: [x]").replace("{ type: direct }",
                                                                 "{ type: proxy }"))
    r = check(f)
    assert r.returncode == 0
    line = f.read_text().splitlines().index("        action: { type: proxy }") + 1
    assert f"warning: {f}:{line}: listeners.0.rules.0.action: rule 'r': action proxy has no " \
           "upstream and the listener has no upstream_proxy: requests go direct" in r.stderr


def test_duplicate_yaml_keys_and_bad_yaml(tmp_path):
    f = write(tmp_path, "a.yaml", MINIMAL + "version: 1\n")
    assert errors(check(f)) == [f"{f}:7: version: duplicate key"]
    g = write(tmp_path, "b.yaml", "version: 1\nlisteners: [\n")
    assert errors(check(g))[0].startswith(f"{g}:3: <yaml>: invalid YAML:")


def test_missing_file_and_no_listeners(tmp_path):
    assert errors(check(tmp_path / "none.yaml")) == [
        f"{tmp_path / 'none.yaml'}: <top>: cannot read file: No such file or directory"]
    f = write(tmp_path, "a.yaml", "version: 1\n")
    assert errors(check(f)) == [f"{f}:1: <top>: no listeners or reverse proxies configured"]
    g = write(tmp_path, "b.yaml", MINIMAL.replace("version: 1", "version: 2"))
    assert errors(check(g)) == [f"{g}:1: version: unsupported config version 2 (expected 1)"]


def test_model_is_immutable(tmp_path):
    cfg, _ = load_config([str(write(tmp_path, "a.yaml", MINIMAL))])
    with pytest.raises(AttributeError):
        cfg.listeners[0].name = "other"  # type: ignore[misc]
    assert cfg.runtime.graceful_timeout_ms == 30000
    assert cfg.runtime.max_concurrent_connections == 10000
    assert cfg.runtime.max_header_bytes == 32768
    assert cfg.runtime.client_keepalive_timeout_ms == 15000
    assert cfg.runtime.reuse_port is True and cfg.runtime.tcp_backlog == 4096
    assert cfg.listeners[0].xdp.require_metadata is True


def test_no_traceback_on_garbage(tmp_path):
    for i, text in enumerate(["- a\n- b\n", "version: [1]\n", "42\n", "\0\0\0", "version: 1\n"
                              "listeners: {a: 1}\n", "version: 1\nlisteners: [[1]]\n"]):
        f = tmp_path / f"g{i}.yaml"
        f.write_bytes(text.encode())
        r = check(f)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert errors(r), r.stderr


def test_python_api_loads_without_gevent():
    code = ("import sys; from qpx.config import load_config; "
            "sys.exit(1 if 'gevent' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_yaml_words_read_as_yaml_1_2_by_the_running_daemon(qpxd):
    """The original reads YAML 1.2: ``yes``/``no``/``on``/``off`` are strings there, and
    ``017`` is seventeen.  A header written ``X-Enabled: yes`` must load and be sent as
    the word, not refused as a boolean."""
    from conftest import free_port, raw_request

    port = free_port()
    d = qpxd({}, start=False)
    d.path.write_text(textwrap.dedent(f"""\
        version: 1
        runtime: {{worker_threads: 1}}
        listeners:
          - name: fwd
            mode: forward
            listen: 127.0.0.1:{port}
            default_action:
              type: respond
              local_response:
                status: 200
                body: ok
                headers:
                  X-Enabled: yes
                  X-Mode: off
                  X-Count: 017
                  X-Date: 2024-01-01
                  X-Quoted: "on"
        """))
    r = subprocess.run(QPXD + ["check", "-c", str(d.path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d.start()
    head = raw_request(port, b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n"
                             b"Connection: close\r\n\r\n").split(b"\r\n\r\n")[0].decode()
    for line in ("X-Enabled: yes", "X-Mode: off", "X-Count: 17", "X-Date: 2024-01-01",
                 "X-Quoted: on"):
        assert line in head, head


def test_check_refuses_one_address_used_twice_across_sections(tmp_path):
    f = write(tmp_path, "dup.yaml", """
        version: 1
        metrics: { listen: "127.0.0.1:18081" }
        listeners:
          - { name: a, mode: forward, listen: "127.0.0.1:18080", default_action: {type: block} }
          - { name: b, mode: forward, listen: "127.0.0.1:18080", default_action: {type: block} }
        reverse:
          - name: r
            listen: "127.0.0.1:18081"
            routes: [{ match: {}, upstreams: ["http://127.0.0.1:9"] }]
        """)
    r = check(f)
    assert r.returncode == 1
    assert sorted(e.split(": ", 1)[1] for e in errors(r)) == [
        "listeners.1.listen: address 127.0.0.1:18080 is already used by listeners.0",
        "metrics.listen: address 127.0.0.1:18081 is already used by reverse.0"], r.stderr
