"""The command line: check on every shipped and compatibility file, match, usage."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, QPXD, ROOT

from qpx import __version__


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(QPXD + list(args), capture_output=True, text=True, cwd=ROOT)


SHIPPED = [ROOT / "etc" / "qpx.yaml"] + sorted((ROOT / "etc" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_checks(path):
    r = run("check", "-c", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("config ok: ")


COMPAT = DATA / "compat"
ACCEPTED = [
    "usecases/01-getting-started/forward-local-dev-direct.yaml",
    "usecases/01-getting-started/forward-minimal.yaml",
    "usecases/01-getting-started/reverse-basic-http.yaml",
    "usecases/01-getting-started/transparent-linux-original-dst.yaml",
    "usecases/02-secure-egress/forward-adblock-privacy.yaml",
    "usecases/02-secure-egress/forward-local-auth-basic-digest.yaml",
    "usecases/02-secure-egress/forward-upstream-chain.yaml",
    "usecases/03-service-publishing/reverse-load-balance-retry.yaml",
    "usecases/03-service-publishing/reverse-path-rewrite.yaml",
    "usecases/06-local-response/all-modes-policy.yaml",
    "usecases/06-local-response/forward-debug.yaml",
    "usecases/06-local-response/reverse-maintenance.yaml",
    "usecases/06-local-response/transparent-captive-portal.yaml",
    "usecases/08-performance-and-xdp/runtime-multicore-scaling.yaml",
    "usecases/08-performance-and-xdp/xdp-forward-reverse-proxy-metadata.yaml",
    "usecases/09-composition/include-forward.yaml",
    "usecases/09-composition/include-transparent-reverse.yaml",
    "usecases/09-composition/multi-mode-office-gateway.yaml",
    "usecases/02-secure-egress/forward-authenticated-upstream.yaml",
    "usecases/07-observability-debug/forward-header-rewrite.yaml",
    "usecases/07-observability-debug/forward-websocket-debug.yaml",
    "usecases/99-test-fixtures/e2e-forward.yaml",
    "usecases/99-test-fixtures/e2e-reverse.yaml",
    "usecases/99-test-fixtures/e2e-transparent.yaml",
]
REFUSED = {
    "qpx.example.yaml": ["exporter.enabled", "auth.ldap", "listeners.0.http3.enabled",
                         "listeners.0.rules.1.auth.require.0",
                         "reverse.0.http3.enabled"],
    "usecases/03-service-publishing/reverse-advanced-routing.yaml": [
        "reverse.0.routes.0.mirrors"],
}
# TLS inspection: accepted, with the original's warning that run will make the CA
INSPECTING = ["usecases/02-secure-egress/forward-firewall-style-policy.yaml",
              "usecases/02-secure-egress/forward-tls-inspection-selective.yaml",
              "usecases/11-transparent-intercept/transparent-mitm-selective.yaml"]
TLS_SAMPLES = ["usecases/03-service-publishing/reverse-tls-termination.yaml",
               "usecases/03-service-publishing/reverse-tls-passthrough-sni.yaml",
               "usecases/03-service-publishing/reverse-http2-tls.yaml"]
needs_compat = pytest.mark.skipif(not COMPAT.exists(), reason="shared/compat is absent")


@needs_compat
@pytest.mark.parametrize("rel", ACCEPTED)
def test_compat_configs_accepted(rel):
    r = run("check", "-c", str(COMPAT / rel))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


@needs_compat
def test_compat_proxy_without_upstream_warns_and_names_the_rule():
    r = run("check", "-c", str(COMPAT / "usecases/02-secure-egress/"
                                         "forward-local-auth-basic-digest.yaml"))
    assert r.returncode == 0
    assert "rule 'allow-authenticated-users': action proxy has no upstream" in r.stderr


@needs_compat
@pytest.mark.parametrize("rel,paths", list(REFUSED.items()))
def test_compat_configs_refused_by_name(rel, paths):
    r = run("check", "-c", str(COMPAT / rel))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")
             and not re.search(r"\.(cert|key): cannot read /etc/qpx/certs/\S+: No such", line)]
    assert len(lines) == len(paths), lines
    for line, path in zip(lines, paths):
        assert f": {path}: " in line and line.endswith("not supported by this build"), line


@needs_compat
@pytest.mark.parametrize("rel", INSPECTING)
def test_compat_inspection_samples_pass_and_warn_that_run_makes_the_ca(rel, tmp_path):
    import os

    env = {**os.environ, "QPX_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    r = subprocess.run(QPXD + ["check", "-c", str(COMPAT / rel)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "run will generate one there" in r.stderr and "qpxd gen-ca -d " in r.stderr


@needs_compat
@pytest.mark.parametrize("rel", TLS_SAMPLES)
def test_compat_tls_samples_need_only_their_certificate_files(rel, tmp_path):
    """The original's TLS samples: the only errors are the certificate files this
    machine lacks, named by key path and file; with real files they pass."""
    import yaml
    from tlscerts import CA

    r = run("check", "-c", str(COMPAT / rel))
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 1 and lines and "Traceback" not in r.stderr
    for line in lines:
        assert re.search(r": reverse\.\d+\.tls\.certificates\.\d+\.(cert|key): cannot "
                         r"read /etc/qpx/certs/\S+\.(crt|key): No such file or directory$",
                         line), line
    doc = yaml.safe_load((COMPAT / rel).read_text())
    ca = CA(tmp_path / "pki")
    for rv in doc["reverse"]:
        for i, c in enumerate(rv["tls"]["certificates"]):
            pair = ca.issue(f"c{i}", c["sni"].replace("*", "wild"))
            c["cert"], c["key"] = str(pair.cert), str(pair.key)
    real = tmp_path / "real.yaml"
    real.write_text(yaml.safe_dump(doc))
    r = run("check", "-c", str(real))
    assert r.returncode == 0, r.stderr


def test_match_prints_the_rule_and_why_earlier_ones_failed(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("""
version: 1
listeners:
  - name: fwd
    mode: forward
    listen: "127.0.0.1:18080"
    default_action: { type: block }
    rules:
      - name: ads
        match: { host: ["*.ads.example"] }
        action: { type: block }
      - name: corp
        match: { src_ip: ["10.0.0.0/8"], method: [GET] }
        action: { type: direct }
      - name: api
        match: { host: ["api.example.com"], path: ["/v1/*"],
                 headers: [{ name: X-Team, value: core }] }
        action: { type: respond, local_response: { status: 202 } }
reverse:
  - name: rev
    listen: "127.0.0.1:19080"
    routes:
      - match: { host: [a.example] }
        upstreams: ["http://127.0.0.1:8080/base"]
""")
    r = run("match", "-c", str(cfg), "--listener", "fwd", "--src-ip", "192.0.2.1",
            "--host", "api.example.com", "--path", "/v1/x?y", "--method", "get",
            "--header", "X-Team: core")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "listener 'fwd': 3 rules",
        "  0: 'ads' does not match: host",
        "  1: 'corp' does not match: src_ip",
        "  2: 'api' MATCHES",
        "-> action: respond (local response 202)",
    ]
    r = run("match", "-c", str(cfg), "--listener", "fwd", "--host", "other.example")
    assert r.returncode == 3
    assert r.stdout.splitlines()[-1] == "-> no rule matches: default action block"
    r = run("match", "-c", str(cfg), "--reverse", "rev", "--host", "a.example")
    assert r.returncode == 0 and "upstreams: 127.0.0.1:8080/base (lb round_robin)" in r.stdout
    r = run("match", "-c", str(cfg), "--listener", "nope")
    assert r.returncode == 2 and "no listener 'nope' (listeners: fwd)" in r.stderr
    r = run("match", "-c", str(cfg), "--listener", "fwd", "--src-ip", "not-ip")
    assert r.returncode == 2


def test_version_help_and_usage_errors():
    r = run("version")
    assert r.returncode == 0 and r.stdout == f"qpxd {__version__}\n"
    r = run("--help")
    assert r.returncode == 0
    for word in ("run", "check", "match", "kill -HUP", "exit codes"):
        assert word in r.stdout
    r = run("run", "--help")
    assert "default /etc/qpx/qpx.yaml" in " ".join(r.stdout.split())
    r = run()
    assert r.returncode == 2
    r = run("-c")
    assert r.returncode == 2


def test_operator_habits_v_t_and_the_default_config():
    for flag in ("-v", "--version"):
        r = run(flag)
        assert r.returncode == 0 and r.stdout == f"qpxd {__version__}\n"
    r = run("-t", "-c", str(ROOT / "etc" / "qpx.yaml"))  # nginx's -t: check
    assert r.returncode == 0 and r.stdout.startswith("config ok")
    r = run("-c", str(ROOT / "etc" / "qpx.yaml"), "-t")
    assert r.returncode == 0 and r.stdout.startswith("config ok")
    if not Path("/etc/qpx/qpx.yaml").exists():  # without -c: the default path, named
        r = run("check")
        assert r.returncode == 1 and "/etc/qpx/qpx.yaml" in r.stderr


def test_run_refuses_a_broken_config_before_binding(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlisteners: []\nbogus: 1\n")
    r = run("-c", str(bad))
    assert r.returncode == 1
    assert "bogus: unknown key" in r.stderr and "Traceback" not in r.stderr


def test_console_script_is_installed():
    exe = Path(QPXD[0]).parent / "qpxd"
    if not exe.exists():
        pytest.skip("qpxd console script not installed in this environment")
    r = subprocess.run([str(exe), "version"], capture_output=True, text=True)
    assert r.stdout == f"qpxd {__version__}\n"


def test_check_catches_what_run_would_fail_on(tmp_path):
    """Log paths that cannot be written are errors naming the key and value; ports
    below 1024 without the capability are a warning."""
    cfg = tmp_path / "q.yaml"
    cfg.write_text(
        "version: 1\n"
        "listeners:\n"
        "  - {name: a, mode: forward, listen: '127.0.0.1:8081',"
        " default_action: {type: direct}}\n"
        f"logging: {{access_log: {tmp_path}/missing/access.log, error_log: {tmp_path}}}\n")
    r = run("check", "-c", str(cfg))
    assert r.returncode == 1
    assert f"logging.access_log: '{tmp_path}/missing/access.log' cannot be written: " \
           f"directory {tmp_path}/missing does not exist" in r.stderr
    assert f"logging.error_log: '{tmp_path}' cannot be written: is a directory" in r.stderr
    r = run("run", "-c", str(cfg))  # run refuses the same way, before binding anything
    assert r.returncode == 1 and "logging.access_log" in r.stderr
    (tmp_path / "missing").mkdir()
    cfg.write_text(cfg.read_text().replace(f", error_log: {tmp_path}", ""))
    r = run("check", "-c", str(cfg))
    assert r.returncode == 0, r.stderr


def test_check_warns_about_low_ports_without_the_capability(tmp_path, monkeypatch):
    """(In-process: the suite runs as root, and the venv may not be reachable for an
    unprivileged user.)"""
    from qpx import preflight
    from qpx.config import load_config

    cfg_path = tmp_path / "q.yaml"
    cfg_path.write_text("version: 1\nlisteners:\n  - {name: a, mode: forward, listen: "
                        "'127.0.0.1:81', default_action: {type: direct}}\n")
    cfg, _ = load_config([str(cfg_path)])
    monkeypatch.setattr(preflight, "_can_bind_low_ports", lambda: False)
    errors, warnings = preflight.preflight(cfg)
    assert not errors
    assert warnings == ["listeners.0.listen: port 81 is below 1024: binding it needs root "
                        "or CAP_NET_BIND_SERVICE, which this process does not have"]
    monkeypatch.setattr(preflight, "_can_bind_low_ports", lambda: True)
    assert preflight.preflight(cfg) == ([], [])
