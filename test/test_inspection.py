"""TLS inspection: ``qpxd gen-ca``, the ``inspect`` action, rules inside HTTPS; against
the live daemon with curl and ``requests``, to TLS origins whose certificates come from
a CA made in the test."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time

import pytest
import requests
from conftest import QPXD, free_port, have
from servers import TlsEchoOrigin
from tlscerts import CA

pytestmark = pytest.mark.skipif(not have("curl") or not have("openssl"),
                                reason="curl and openssl are needed")


def qpxd_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(QPXD + list(args), capture_output=True, text=True, timeout=60)


def test_gen_ca_writes_a_ca_refuses_to_overwrite_and_says_how_to_trust_it(tmp_path):
    d = tmp_path / "ca"
    r = qpxd_cmd("gen-ca", "-d", str(d))
    assert r.returncode == 0, r.stderr
    assert "update-ca-certificates" in r.stdout and "certutil" in r.stdout \
        and "--cacert" in r.stdout
    assert stat.S_IMODE(os.stat(d / "ca.key").st_mode) == 0o600
    text = subprocess.run(["openssl", "x509", "-in", str(d / "ca.crt"), "-noout", "-text"],
                          capture_output=True, text=True).stdout
    assert "CA:TRUE, pathlen:0" in text and "Certificate Sign" in text
    assert "prime256v1" in text or "P-256" in text
    before = (d / "ca.crt").read_bytes()
    r = qpxd_cmd("gen-ca", "-d", str(d))
    assert r.returncode == 1 and "already holds a CA" in r.stderr and "--force" in r.stderr
    assert (d / "ca.crt").read_bytes() == before
    assert qpxd_cmd("gen-ca", "-d", str(d), "--force").returncode == 0
    assert (d / "ca.crt").read_bytes() != before


def inspecting(port: int, state: str, origin_port: int, mport: int | None = None,
               **inspection) -> dict:
    cfg = {"state_dir": state, "listeners": [{
        "name": "fwd", "mode": "forward", "listen": f"127.0.0.1:{port}",
        "allow_local_destinations": True, "connect_ports": [],
        "tls_inspection": {"enabled": True, **inspection},
        "default_action": {"type": "block"},
        "rules": [
            {"name": "deny-admin", "match": {"path": ["/admin*"]}, "action": {"type": "block"}},
            {"name": "tag", "match": {"path": ["/tagged*"]}, "action": {"type": "inspect"},
             "headers": {"request_set": {"X-Test": "inspected"}}},
            {"name": "inspect-local", "match": {"host": ["localhost", "other.test"]},
             "action": {"type": "inspect"}},
        ]}]}
    if mport:
        cfg["metrics"] = {"listen": f"127.0.0.1:{mport}"}
    return cfg


@pytest.fixture
def origin_ca(tmp_path):
    return CA(tmp_path / "origin-ca")


def test_inspected_https_with_curl_and_requests(qpxd, origin_ca, tmp_path):
    o = TlsEchoOrigin(*vars(origin_ca.issue("o", "localhost")).values())
    port, mport = free_port(), free_port()
    state = tmp_path / "state"
    d = qpxd(inspecting(port, str(state), o.port, mport),
             env={"SSL_CERT_FILE": str(origin_ca.path)})  # the "system store" for origins
    ca = state / "ca.crt"
    assert ca.exists() and stat.S_IMODE(os.stat(state / "ca.key").st_mode) == 0o600
    base = ["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{port}",
            "--cacert", str(ca)]
    url = f"https://localhost:{o.port}"
    # keep-alive: two requests in one tunnel, a POST with a body
    r = subprocess.run(base + [f"{url}/one", f"{url}/two"], capture_output=True, text=True)
    assert "GET /one HTTP/1.1" in r.stdout and "GET /two HTTP/1.1" in r.stdout, r.stderr
    r = subprocess.run(base + ["--data-binary", "x" * 5000, f"{url}/post"],
                       capture_output=True, text=True)
    assert "POST /post HTTP/1.1" in r.stdout and "body-length: 5000" in r.stdout
    # a path rule blocks one URL inside HTTPS; header control applies inside too
    r = subprocess.run(base + ["-w", " %{http_code}", f"{url}/admin/users"],
                       capture_output=True, text=True)
    assert r.stdout.endswith(" 403") and "blocked" in r.stdout
    r = subprocess.run(base + [f"{url}/tagged"], capture_output=True, text=True)
    assert "x-test: inspected" in r.stdout
    # a client that offers HTTP/2 gets it inside the tunnel (ALPN on the leaf)
    r = subprocess.run(base + ["--http2", "-w", " %{http_version}", f"{url}/h2-inside"],
                       capture_output=True, text=True)
    assert "GET /h2-inside HTTP/1.1" in r.stdout and r.stdout.endswith(" 2"), r.stdout
    assert not any(b"/admin" in h for h, _ in o.requests)
    # Python requests, verify= the inspection CA
    resp = requests.get(f"{url}/via-requests", verify=str(ca), timeout=20,
                        proxies={"https": f"http://127.0.0.1:{port}"})
    assert resp.status_code == 200 and "GET /via-requests" in resp.text
    time.sleep(0.8)
    lines = [json.loads(x) for x in d.out().splitlines() if x.startswith("{")]
    assert any(x["method"] == "GET" and x["target"] == "/admin/users" and x["status"] == 403
               and x["rule"] == "deny-admin" for x in lines), lines
    metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{mport}/metrics"],
                             capture_output=True, text=True).stdout
    assert 'qpx_inspection_leaf_certificates_total{listener="fwd",source="generated"} 1.0' \
        in metrics, metrics
    assert "qpx_inspected_tunnels_total" in metrics
    # a restart reuses the leaf from the disk cache
    d.stop()
    d2 = qpxd(inspecting(port, str(state), o.port, mport),
              env={"SSL_CERT_FILE": str(origin_ca.path)})
    r = subprocess.run(base + [f"{url}/again"], capture_output=True, text=True)
    assert "GET /again" in r.stdout
    time.sleep(0.8)
    metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{mport}/metrics"],
                             capture_output=True, text=True).stdout
    assert 'source="disk"} 1.0' in metrics and 'source="generated"' not in metrics
    assert d2.proc.poll() is None


def test_origin_certificate_problems_are_never_hidden(qpxd, origin_ca, tmp_path):
    wrong = TlsEchoOrigin(*vars(origin_ca.issue("w", "elsewhere.test")).values())
    port = free_port()
    state = tmp_path / "state"
    d = qpxd(inspecting(port, str(state), wrong.port),
             env={"SSL_CERT_FILE": str(origin_ca.path)})
    base = ["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{port}",
            "--cacert", str(state / "ca.crt")]
    r = subprocess.run(base + ["-v", f"https://localhost:{wrong.port}/x"],
                       capture_output=True, text=True)
    assert "CONNECT tunnel failed, response 502" in r.stderr, r.stderr
    time.sleep(0.8)
    assert "certificate verification failed" in d.out() and "Hostname mismatch" in d.out()
    # unless the host is a verify exception
    port2 = free_port()
    qpxd(inspecting(port2, str(state), wrong.port, verify_exceptions=["localhost"]),
         env={"SSL_CERT_FILE": str(origin_ca.path)})
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{port2}",
                        "--cacert", str(state / "ca.crt"),
                        f"https://localhost:{wrong.port}/x"], capture_output=True, text=True)
    assert "GET /x HTTP/1.1" in r.stdout, r.stderr


def test_clients_that_refuse_or_speak_no_tls_are_logged(qpxd, origin_ca, tmp_path):
    o = TlsEchoOrigin(*vars(origin_ca.issue("o", "localhost")).values())
    port = free_port()
    d = qpxd(inspecting(port, str(tmp_path / "state"), o.port),
             env={"SSL_CERT_FILE": str(origin_ca.path)})
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{port}",
                        f"https://localhost:{o.port}/"], capture_output=True, text=True)
    assert r.returncode == 60  # curl: the peer's certificate is not trusted
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % o.port)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # plain HTTP, no TLS
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass  # closed: that is the point
    time.sleep(0.8)
    out = d.out()
    assert "the client does not trust the inspection CA" in out, out
    assert "the client sent no TLS after CONNECT" in out, out


def test_check_names_bad_cas_and_unusable_state_dirs(tmp_path):
    from test_config import check, errors, write

    good = tmp_path / "good"
    assert qpxd_cmd("gen-ca", "-d", str(good)).returncode == 0
    other = tmp_path / "other"
    assert qpxd_cmd("gen-ca", "-d", str(other)).returncode == 0
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca.crt").write_bytes((good / "ca.crt").read_bytes())
    (mixed / "ca.key").write_bytes((other / "ca.key").read_bytes())
    (mixed / "ca.key").chmod(0o600)
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in ("ca.crt", "ca.key"):
        (loose / f).write_bytes((good / f).read_bytes())
    (loose / "ca.key").chmod(0o644)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")

    def listener(name, ca):
        return (f"  - {{ name: {name}, mode: forward, listen: \"127.0.0.1:{free_port()}\", "
                f"default_action: {{type: inspect}}, tls_inspection: {{enabled: true, "
                f"ca: \"{ca}\"}} }}\n")
    f = write(tmp_path, "c.yaml", "version: 1\nlisteners:\n" + listener("a", mixed)
              + listener("b", loose) + listener("c", blocker / "sub") + listener("d", good)
              + f"  - {{ name: e, mode: forward, listen: \"127.0.0.1:{free_port()}\", "
                "default_action: {type: inspect} }\n")
    r = check(f)
    got = sorted(e.split(": ", 1)[1] for e in errors(r))
    assert got == sorted([
        f"listeners.0.tls_inspection.ca: the key {mixed}/ca.key does not match the "
        f"certificate {mixed}/ca.crt",
        f"listeners.1.tls_inspection.ca: {loose}/ca.key is readable by others (mode 0644): "
        f"it signs certificates for any site; chmod 600 {loose}/ca.key",
        f"listeners.2.tls_inspection.ca: no CA in {blocker}/sub and {blocker} is not "
        "writable: run cannot make one (qpxd gen-ca -d DIR, or another state_dir)",
        "listeners.4.default_action.type: action inspect needs tls_inspection.enabled on "
        "this listener"]), r.stderr


def test_transparent_tls_flow_inspected_by_sni(qpxd, origin_ca, tmp_path):
    """A transparent listener behind an L4 frontend (the PROXY header names the original
    destination): a TLS flow whose SNI the rules inspect is decrypted, and a path rule
    decides inside it; another SNI is relayed untouched (the origin's own certificate)."""
    import ssl

    o = TlsEchoOrigin(*vars(origin_ca.issue("o", "localhost", "pass.test")).values())
    port = free_port()
    state = tmp_path / "state"
    d = qpxd({"state_dir": str(state), "listeners": [{
        "name": "tp", "mode": "transparent", "listen": f"127.0.0.1:{port}",
        "allow_local_destinations": True,
        "xdp": {"enabled": True, "metadata_mode": "proxy-v1",
                "trusted_peers": ["127.0.0.1/32"]},
        "tls_inspection": {"enabled": True},
        "default_action": {"type": "tunnel"},
        "rules": [
            {"name": "deny-admin", "match": {"sni": ["localhost"], "path": ["/admin*"]},
             "action": {"type": "block"}},
            {"name": "inspect", "match": {"sni": ["localhost"]},
             "action": {"type": "inspect"}}]}]},
        env={"SSL_CERT_FILE": str(origin_ca.path)})

    def fetch(sni: str, path: str, trust) -> tuple[str, bytes]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 %d\r\n" % o.port)
        ctx = ssl.create_default_context(cafile=str(trust))
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            issuer = dict(x[0] for x in s.getpeercert()["issuer"])["commonName"]
            s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                      % (path.encode(), sni.encode()))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return issuer, data

    issuer, data = fetch("localhost", "/inside", state / "ca.crt")
    assert issuer == "qpxd inspection CA" and b"GET /inside HTTP/1.1" in data, data
    issuer, data = fetch("localhost", "/admin/x", state / "ca.crt")
    assert data.startswith(b"HTTP/1.1 403"), data
    issuer, data = fetch("pass.test", "/untouched", origin_ca.path)
    assert issuer == "qpx test CA" and b"GET /untouched HTTP/1.1" in data
    assert not any(b"/admin" in h for h, _ in o.requests)
    d.wait_log("qpxd ready")


def test_an_unwritable_leaf_cache_falls_back_to_memory_with_one_warning(qpxd, origin_ca,
                                                                       tmp_path):
    o = TlsEchoOrigin(*vars(origin_ca.issue("o", "localhost")).values())
    port = free_port()
    state = tmp_path / "state"
    assert qpxd_cmd("gen-ca", "-d", str(state)).returncode == 0
    (state / "leaves").write_text("a file where the cache directory would be\n")
    d = qpxd(inspecting(port, str(state), o.port), env={"SSL_CERT_FILE": str(origin_ca.path)})
    base = ["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{port}",
            "--cacert", str(state / "ca.crt")]
    for i in range(2):
        r = subprocess.run(base + [f"https://localhost:{o.port}/m{i}"], capture_output=True,
                           text=True)
        assert f"GET /m{i} HTTP/1.1" in r.stdout, r.stderr
    assert d.log().count("leaf certificate cache not writable") == 1, d.log()
