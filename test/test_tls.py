"""TLS on every edge, against the live daemon with real clients: reverse termination by
SNI, https upstreams and upstream proxies, resumption across workers, bad input."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import time

import pytest
from conftest import free_port, have, raw_request
from servers import TlsOrigin, UpgradeEcho
from tlscerts import CA

pytestmark = pytest.mark.skipif(not have("openssl") or not have("curl"),
                                reason="openssl and curl are needed")


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path / "pki")


def tls_reverse(port: int, certificates: list[dict], routes: list | None = None,
                workers: int = 1, **entry) -> dict:
    rv = {"name": "rev", "listen": f"127.0.0.1:{port}",
          "tls": {"certificates": certificates},
          "routes": routes or [{"match": {}, "local_response": {"status": 200,
                                                                "body": "hello over tls"}}]}
    rv.update(entry)
    return {"runtime": {"worker_threads": workers}, "reverse": [rv]}


def cert_entry(pair, sni: str, **extra) -> dict:
    return {"sni": sni, "cert": str(pair.cert), "key": str(pair.key), **extra}


def handshake_cn(port: int, ca: CA, sni: str | None, **ctx_opts) -> str:
    """The common name of the certificate qpxd presents for ``sni``."""
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.check_hostname = False
    for k, v in ctx_opts.items():
        setattr(ctx, k, v)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            cert = s.getpeercert()
            return dict(x[0] for x in cert["subject"])["commonName"]


def curl(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), *args],
                          capture_output=True, text=True)


def test_certificate_by_sni_exact_wildcard_default_and_none(qpxd, ca):
    a = ca.issue("a", "a.test")
    wild = ca.issue("wild", "*.w.test")
    fallback = ca.issue("fallback", "fallback.test")
    port = free_port()
    d = qpxd(tls_reverse(port, [cert_entry(a, "a.test"), cert_entry(wild, "*.w.test")]))
    assert handshake_cn(port, ca, "a.test") == "a.test"
    assert handshake_cn(port, ca, "A.Test") == "a.test"  # SNI is lower-cased
    assert handshake_cn(port, ca, "x.w.test") == "*.w.test"
    for name in ("b.test", "x.y.w.test", "w.test", None):  # a wildcard covers one label
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure"):
            handshake_cn(port, ca, name)
    d.wait_log("no certificate for 'b.test'")
    d.wait_log("no certificate for clients without SNI")
    # with a default certificate, unknown names and clients without SNI get it
    port2 = free_port()
    qpxd(tls_reverse(port2, [cert_entry(a, "a.test"),
                             cert_entry(fallback, "fallback.test", default=True)]))
    assert handshake_cn(port2, ca, "a.test") == "a.test"
    assert handshake_cn(port2, ca, "b.test") == "fallback.test"
    assert handshake_cn(port2, ca, None) == "fallback.test"


def test_https_reverse_with_curl_reaches_the_origin_with_forwarded_proto(qpxd, ca, origin):
    o = origin()
    site = ca.issue("site", "site.test")
    port = free_port()
    cfg = tls_reverse(port, [cert_entry(site, "site.test")],
                      routes=[{"match": {"sni": ["site.test"]},
                               "upstreams": [f"http://{o.addr}"]}])
    d = qpxd(cfg)
    r = curl("--cacert", str(ca.path), "--resolve", f"site.test:{port}:127.0.0.1",
             f"https://site.test:{port}/hello", "-H", "X-Test: 1")
    assert r.returncode == 0, r.stderr
    assert "origin o" in r.stdout and "GET /hello HTTP/1.1" in r.stdout
    assert "x-forwarded-proto: https" in r.stdout and "host: site.test:" in r.stdout
    # ALPN offers h2 and http/1.1; TLS 1.3 is negotiated; the access log names both
    r = curl("-v", "--http1.1", "--cacert", str(ca.path), "--resolve",
             f"site.test:{port}:127.0.0.1", f"https://site.test:{port}/")
    assert "ALPN: server accepted http/1.1" in r.stderr and "TLSv1.3" in r.stderr
    r = curl("-v", "--cacert", str(ca.path), "--resolve", f"site.test:{port}:127.0.0.1",
             f"https://site.test:{port}/")
    assert "ALPN: server accepted h2" in r.stderr
    time.sleep(0.8)
    lines = [json.loads(x) for x in d.out().splitlines() if x.startswith("{")]
    assert any(x.get("tls") == "TLSv1.3" and x.get("sni") == "site.test" and
               x["status"] == 200 for x in lines), lines


def test_sni_host_mismatch_is_421_unless_excepted_or_disabled(qpxd, ca):
    a = ca.issue("a", "a.test", "b.test", "c.test")
    port = free_port()
    qpxd(tls_reverse(port, [cert_entry(a, "a.test"), cert_entry(a, "b.test")],
                     sni_host_exceptions=["b.test"]))
    base = ["--cacert", str(ca.path), "--resolve", f"a.test:{port}:127.0.0.1",
            "--resolve", f"b.test:{port}:127.0.0.1", "-o", "/dev/null", "-w", "%{http_code}"]
    assert curl(*base, f"https://a.test:{port}/").stdout == "200"
    assert curl(*base, "-H", "Host: c.test", f"https://a.test:{port}/").stdout == "421"
    # an exception needs both names listed: a.test is not
    assert curl(*base, "-H", "Host: b.test", f"https://a.test:{port}/").stdout == "421"
    r = curl("--cacert", str(ca.path), "--resolve", f"a.test:{port}:127.0.0.1",
             "-H", "Host: c.test", f"https://a.test:{port}/")
    assert r.stdout == "misdirected request\nhost c.test is not the TLS server name a.test\n"
    port2 = free_port()
    qpxd(tls_reverse(port2, [cert_entry(a, "a.test")], enforce_sni_host_match=False))
    assert curl("--cacert", str(ca.path), "--resolve", f"a.test:{port2}:127.0.0.1", "-o",
                "/dev/null", "-w", "%{http_code}", "-H", "Host: c.test",
                f"https://a.test:{port2}/").stdout == "200"


def s_client(port: int, *args: str) -> str:
    # a request and -ign_eof: s_client reads until qpxd closes, so the TLS 1.3 session
    # ticket (sent after the handshake) is in when it writes -sess_out
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", "a.test", "-ign_eof", *args],
                       input="GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
                       capture_output=True, text=True, timeout=15)
    return r.stdout


def test_sessions_resume_across_workers_and_an_unchanged_reload(qpxd, ca, tmp_path):
    a = ca.issue("a", "a.test")
    port = free_port()
    d = qpxd(tls_reverse(port, [cert_entry(a, "a.test")], workers=2))
    sess = tmp_path / "sess.pem"
    for version in ("-tls1_3", "-tls1_2"):
        first = s_client(port, version, "-sess_out", str(sess))
        assert "New, TLSv1." in first, first
        # a connection lands on either worker (SO_REUSEPORT): all resume
        for _ in range(8):
            out = s_client(port, version, "-sess_in", str(sess))
            assert "Reused, TLSv1." in out, out
    s_client(port, "-tls1_3", "-sess_out", str(sess))
    d.reload()  # certificates unchanged: the tickets stay valid
    for _ in range(4):
        assert "Reused, TLSv1." in s_client(port, "-tls1_3", "-sess_in", str(sess))
    # a changed certificate is served to new connections after the reload
    b = ca.issue("a2", "a.test")
    a.cert.write_bytes(b.cert.read_bytes())
    a.key.write_bytes(b.key.read_bytes())
    d.reload()
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                          "-servername", "a.test", "-showcerts"], input="",
                         capture_output=True, text=True, timeout=15).stdout
    served = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out,
                       re.S).group(0)
    assert served.strip() == b.cert.read_text().strip()


def test_min_version_and_old_clients(qpxd, ca):
    a = ca.issue("a", "a.test")
    port = free_port()
    d = qpxd({**tls_reverse(port, [cert_entry(a, "a.test")]),
              "metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    d.config["reverse"][0]["tls"]["min_version"] = "1.3"
    d.reload(d.config)
    with pytest.raises(ssl.SSLError):
        handshake_cn(port, ca, "a.test", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert handshake_cn(port, ca, "a.test") == "a.test"
    d.wait_log("tls-version")


def test_bad_input_on_a_tls_port_is_closed_logged_and_costs_nothing_else(qpxd, ca):
    a = ca.issue("a", "a.test")
    port = free_port()
    cfg = tls_reverse(port, [cert_entry(a, "a.test")])
    cfg["runtime"]["tls_handshake_timeout_ms"] = 1000
    d = qpxd(cfg)
    # plain HTTP to the TLS port
    assert raw_request(port, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", timeout=3) == b""
    d.wait_log("plain HTTP sent to a TLS port")
    # garbage, and a truncated ClientHello followed by a close
    raw_request(port, b"\x16\x03\x01\x00\x05garbage-garbage", timeout=3)
    raw_request(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", timeout=3)
    # a client that stalls mid-handshake is cut at tls_handshake_timeout_ms
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert 0.8 < time.monotonic() - t0 < 3.0
    d.wait_log('"reason":"tls-timeout"')
    # an SNI with bytes no host name has (openssl sends whatever it is given)
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                          "-servername", "bad\x01name"], input="", capture_output=True,
                         text=True, timeout=15)
    assert "unrecognized name" in out.stderr, out.stderr
    d.wait_log("invalid SNI 'bad\\\\x01name'")  # repr, then JSON-escaped
    # a TLS 1.0 ClientHello gets a protocol_version alert and a tls-version line
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1",
                          "-cipher", "DEFAULT:@SECLEVEL=0"], input="", capture_output=True,
                         text=True, timeout=15)
    assert "alert protocol version" in out.stderr, out.stderr
    d.wait_log('"reason":"tls-version"')
    # a renegotiation attempt (TLS 1.2) is refused; the connection ends
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                          "-servername", "a.test", "-tls1_2"], input="R\n",
                         capture_output=True, text=True, timeout=15)
    assert "RENEGOTIATING" in out.stderr + out.stdout
    assert "Cipher is" in out.stdout
    # the worker still serves
    r = curl("--cacert", str(ca.path), "--resolve", f"a.test:{port}:127.0.0.1",
             f"https://a.test:{port}/")
    assert r.stdout == "hello over tls", r.stderr
    assert d.proc.poll() is None and "Traceback" not in d.log()


def test_check_refuses_missing_unreadable_and_mismatched_files(ca, tmp_path):
    from test_config import check, errors, write

    a = ca.issue("a", "a.test")
    b = ca.issue("b", "b.test")
    f = write(tmp_path, "tls.yaml", f"""
        version: 1
        reverse:
          - name: rev
            listen: "127.0.0.1:18443"
            tls:
              certificates:
                - {{ sni: a.test, cert: {tmp_path}/nope.crt, key: {a.key} }}
                - {{ sni: b.test, cert: {b.cert}, key: {a.key} }}
                - {{ sni: c.test, cert: {a.cert} }}
                - {{ sni: "x*.test", cert: {a.cert}, key: {a.key} }}
            routes: [{{ match: {{}}, local_response: {{ status: 200 }} }}]
        """)
    r = check(f)
    assert r.returncode == 1
    got = sorted(e.split(": ", 1)[1] for e in errors(r))
    assert got == sorted([
        f"reverse.0.tls.certificates.0.cert: cannot read {tmp_path}/nope.crt: No such file "
        "or directory",
        f"reverse.0.tls.certificates.1.key: the key {a.key} does not match the certificate "
        f"{b.cert}",
        "reverse.0.tls.certificates.2: a certificate needs cert and key (PEM files)",
        "reverse.0.tls.certificates.3.sni: expected a host name or *.parent, got 'x*.test'",
    ]), r.stderr
    # relative paths are read from the directory of the file that names them
    (tmp_path / "sub").mkdir()
    g = write(tmp_path / "sub", "rel.yaml", """
        version: 1
        reverse:
          - name: rev
            listen: "127.0.0.1:18443"
            tls: { certificates: [{ sni: a.test, cert: ../pki/a.crt, key: ../pki/a.key }] }
            routes: [{ match: {}, local_response: { status: 200 } }]
        """)
    assert check(g).returncode == 0, check(g).stderr


def reverse_to(port: int, upstream: str, tls: dict | None = None) -> dict:
    route = {"match": {}, "upstreams": [upstream]}
    if tls is not None:
        route["tls"] = tls
    return {"reverse": [{"name": "rev", "listen": f"127.0.0.1:{port}", "routes": [route]}]}


def test_https_upstreams_verified_by_default_and_failures_are_502_with_reason(qpxd, ca,
                                                                           tmp_path):
    good = ca.issue("good", "localhost")
    wrong = ca.issue("wrong", "other.test")
    expired = ca.issue("expired", "localhost", expired=True)
    origins = {k: TlsOrigin(p.cert, p.key) for k, p in
               (("good", good), ("wrong", wrong), ("expired", expired))}
    cases = [
        ("good", {"ca_file": str(ca.path)}, 200, None),
        ("wrong", {"ca_file": str(ca.path)}, 502, "Hostname mismatch"),
        ("expired", {"ca_file": str(ca.path)}, 502, "certificate has expired"),
        ("good", None, 502, "unable to get local issuer certificate"),  # system store
        ("wrong", {"verify": False}, 200, None),
    ]
    for name, tls, status, reason in cases:
        port = free_port()
        d = qpxd(reverse_to(port, f"https://localhost:{origins[name].port}/", tls))
        resp = raw_request(port, b"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 %d" % status), (name, tls, resp)
        if status == 200:
            assert b"tls origin sni=localhost" in resp
        else:
            time.sleep(0.8)
            assert reason in d.out(), (name, d.out())
        if tls == {"verify": False}:
            assert "TLS verification of upstreams is off" in d.log()
        d.stop()


def test_pooled_tls_upstream_connections_are_reused(qpxd, ca):
    good = ca.issue("good", "localhost")
    o = TlsOrigin(good.cert, good.key)
    port = free_port()
    qpxd(reverse_to(port, f"https://localhost:{o.port}/", {"ca_file": str(ca.path)}))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for _ in range(5):
            s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            data = b""
            while b"sni=localhost\n" not in data:
                data += s.recv(65536)
    assert o.connections == 1


@pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
def test_https_upstream_proxy_and_haproxy_send_proxy_v2_to_a_tls_listener(qpxd, ca, origin,
                                                                         tmp_path):
    """HAProxy terminates TLS for a forward qpxd (an https:// upstream proxy for the
    first qpxd), and HAProxy sends PROXY v2 to a TLS reverse listener."""
    o = origin()
    inner, outer, hp_tls, rev, hp_front = (free_port() for _ in range(5))
    qpxd({"listeners": [{"name": "inner", "mode": "forward", "listen": f"127.0.0.1:{inner}",
                         "default_action": {"type": "direct"},
                         "allow_local_destinations": True}]}, name="inner")
    prox = ca.issue("proxy", "localhost")
    bundle = tmp_path / "proxy.pem"
    bundle.write_text(prox.cert.read_text() + prox.key.read_text())
    site = ca.issue("site", "site.test")
    hcfg = tmp_path / "haproxy.cfg"
    hcfg.write_text(f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls_in
    bind 127.0.0.1:{hp_tls} ssl crt {bundle}
    default_backend inner
backend inner
    server inner 127.0.0.1:{inner}
frontend pp_in
    bind 127.0.0.1:{hp_front}
    default_backend rev
backend rev
    server rev 127.0.0.1:{rev} send-proxy-v2
""")
    hp = subprocess.Popen(["haproxy", "-f", str(hcfg), "-db"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    try:
        qpxd({"identity": {"proxy_name": "outer"},
              "upstreams": [{"name": "corp", "url": f"https://localhost:{hp_tls}",
                             "tls": {"ca_file": str(ca.path)}}],
              "listeners": [{"name": "outer", "mode": "forward",
                             "listen": f"127.0.0.1:{outer}",
                             "default_action": {"type": "proxy", "upstream": "corp"}}],
              "reverse": [{"name": "rev", "listen": f"127.0.0.1:{rev}",
                           "xdp": {"enabled": True, "metadata_mode": "proxy-v2",
                                   "trusted_peers": ["127.0.0.1/32"]},
                           "tls": {"certificates": [cert_entry(site, "site.test")]},
                           "routes": [{"match": {}, "upstreams": [f"http://{o.addr}"]}]}]},
             name="outer")
        time.sleep(0.5)
        r = curl("-x", f"http://127.0.0.1:{outer}", f"http://{o.addr}/via-tls-proxy")
        assert "GET /via-tls-proxy" in r.stdout and "origin o" in r.stdout, r.stderr
        r = curl("--cacert", str(ca.path), "--resolve", f"site.test:{hp_front}:127.0.0.1",
                 f"https://site.test:{hp_front}/behind-haproxy")
        assert "GET /behind-haproxy" in r.stdout and "x-forwarded-proto: https" in r.stdout, \
            (r.stdout, r.stderr)
        assert "x-forwarded-for: 127.0.0.1" in r.stdout
    finally:
        hp.send_signal(signal.SIGTERM)
        hp.wait(10)


def test_passthrough_routes_by_sni_before_termination(qpxd, ca):
    """Passthrough is decided on the ClientHello: the client talks TLS with the origin
    itself (its certificate, its SNI); other names are terminated by qpxd."""
    behind = ca.issue("behind", "pass.test")
    o = TlsOrigin(behind.cert, behind.key)
    own = ca.issue("own", "own.test")
    port = free_port()
    d = qpxd(tls_reverse(port, [cert_entry(own, "own.test")], tls_passthrough_routes=[
        {"match": {"sni": ["pass.test"]}, "upstreams": [f"127.0.0.1:{o.port}"]}]))
    r = curl("--cacert", str(ca.path), "--resolve", f"pass.test:{port}:127.0.0.1",
             f"https://pass.test:{port}/")
    assert r.stdout == "tls origin sni=pass.test\n", r.stderr
    assert handshake_cn(port, ca, "pass.test") == "pass.test"  # the origin's certificate
    r = curl("--cacert", str(ca.path), "--resolve", f"own.test:{port}:127.0.0.1",
             f"https://own.test:{port}/")
    assert r.stdout == "hello over tls"
    time.sleep(0.8)
    lines = [json.loads(x) for x in d.out().splitlines() if x.startswith("{")]
    assert any(x["action"] == "passthrough" and x["target"] == "pass.test" and
               x["upstream"] == f"127.0.0.1:{o.port}" and x["bytes_out"] > 0
               for x in lines), lines


def test_passthrough_only_port_closes_unknown_names_and_non_tls(qpxd, ca):
    behind = ca.issue("behind", "pass.test")
    o = TlsOrigin(behind.cert, behind.key)
    port = free_port()
    d = qpxd({"reverse": [{"name": "pt", "listen": f"127.0.0.1:{port}",
                           "tls_passthrough_routes": [
                               {"match": {"sni": ["*.test"], "src_ip": ["127.0.0.0/8"]},
                                "upstreams": [f"127.0.0.1:{o.port}"]}]}]})
    assert handshake_cn(port, ca, "pass.test") == "pass.test"
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake_cn(port, ca, "pass.example")
    d.wait_log("no passthrough route for SNI 'pass.example'")
    assert raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3) == b""
    d.wait_log("not a TLS ClientHello")


def test_forward_absolute_form_https_reaches_the_origin_over_verified_tls(qpxd, ca):
    from conftest import forward_config

    good = ca.issue("good", "localhost")
    o = TlsOrigin(good.cert, good.key)
    port = free_port()
    # the system store is OpenSSL's default paths: SSL_CERT_FILE names the test CA
    qpxd(forward_config(port), env={"SSL_CERT_FILE": str(ca.path)})
    req = (b"GET https://localhost:%d/x HTTP/1.1\r\nHost: localhost:%d\r\n"
           b"Connection: close\r\n\r\n" % (o.port, o.port))
    resp = raw_request(port, req)
    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"tls origin sni=localhost\n"), \
        resp
    port2 = free_port()
    d = qpxd(forward_config(port2))  # the real system store does not know the test CA
    resp = raw_request(port2, req)
    assert resp.startswith(b"HTTP/1.1 502"), resp
    time.sleep(0.8)
    assert "certificate verification failed: unable to get local issuer certificate" \
        in d.out(), d.out()


def test_websocket_over_tls_to_a_wss_style_upstream(qpxd, ca):
    """wss:// at the edge: TLS terminated by qpxd, the upgrade relayed both ways to an
    https:// upstream (TLS on both legs)."""
    up = ca.issue("up", "localhost")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(up.cert, up.key)
    wport = UpgradeEcho(ctx=sctx).port
    site = ca.issue("site", "site.test")
    port = free_port()
    qpxd(tls_reverse(port, [cert_entry(site, "site.test")], routes=[
        {"match": {}, "upstreams": [f"https://localhost:{wport}"],
         "tls": {"ca_file": str(ca.path)}}]))
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="site.test") as s:
            s.sendall(b"GET /chat HTTP/1.1\r\nHost: site.test\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head
            for msg in (b"one", b"two" * 5000):
                s.sendall(msg)
                want = b"echo:" + msg
                got = b""
                while len(got) < len(want):
                    got += s.recv(65536)
                assert got.startswith(b"echo:") and got.replace(b"echo:", b"") == msg


def test_upstream_tls_sessions_are_resumed_on_new_connections(qpxd, ca):
    good = ca.issue("good", "localhost")
    o = TlsOrigin(good.cert, good.key, keepalive=False)  # every response closes
    port = free_port()
    qpxd(reverse_to(port, f"https://localhost:{o.port}/", {"ca_file": str(ca.path)}))
    for _ in range(4):
        resp = raw_request(port, b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 200"), resp
    assert o.connections == 4
    assert o.resumed[0] is False and all(o.resumed[1:]), o.resumed
