"""The transparent edge: original destination (REDIRECT in a network namespace), PROXY
destination (raw and behind HAProxy), Host/SNI fallback, SNI passthrough, server-speaks-
first relays, and the loop guard."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
import uuid

import pytest
from conftest import free_port, have, raw_request
from servers import Origin, TlsOrigin, make_cert

TRUSTED = {"enabled": True, "metadata_mode": "proxy-v1", "require_metadata": False,
           "trusted_peers": ["127.0.0.1/32"]}


def transparent_config(listen: str, rules: list | None = None, **listener) -> dict:
    lst = {"name": "tp", "mode": "transparent", "listen": listen,
           "default_action": {"type": "block"}, "allow_local_destinations": True,
           "rules": rules if rules is not None else [
               {"name": "allow", "match": {"src_ip": ["127.0.0.0/8", "10.0.0.0/8",
                                                      "fd00::/8"]},
                "action": {"type": "direct"}}]}
    lst.update(listener)
    return {"listeners": [lst], "runtime": {"tls_peek_timeout_ms": 400}}


def proxy_line(dst: tuple[str, int], src: str = "127.0.0.1") -> bytes:
    return b"PROXY TCP4 %s %s 40000 %d\r\n" % (src.encode(), dst[0].encode(), dst[1])


def test_host_fallback_without_redirect_and_loop_guard(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(transparent_config(f"127.0.0.1:{port}"))
    r = raw_request(port, b"GET /fallback HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                    % o.addr.encode())
    assert b"origin o\nGET /fallback HTTP/1.1" in r
    r = raw_request(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                    % port)
    assert r.startswith(b"HTTP/1.1 508")


def test_proxy_destination_is_the_target_and_host_is_kept(qpxd, origin):
    o = origin()
    port = free_port()
    qpxd(transparent_config(f"127.0.0.1:{port}", xdp=TRUSTED))
    r = raw_request(port, proxy_line(("127.0.0.1", o.port)) +
                    b"GET /pd HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert b"origin o\nGET /pd HTTP/1.1\nhost: app.test" in r
    # a PROXY destination that is the listener itself is a loop
    r = raw_request(port, proxy_line(("127.0.0.1", port)) +
                    b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 508")


def test_rules_block_with_403_forbidden_and_upstream_errors_answer(qpxd, origin):
    o = origin()
    port = free_port()
    rules = [{"name": "no-social", "match": {"host": ["*.social.test"]},
              "action": {"type": "block"}},
             {"name": "allow", "match": {"src_ip": ["127.0.0.0/8"]}, "action": {"type": "direct"}}]
    qpxd(transparent_config(f"127.0.0.1:{port}", rules, xdp=TRUSTED))
    r = raw_request(port, proxy_line(("127.0.0.1", o.port)) +
                    b"GET / HTTP/1.1\r\nHost: www.social.test\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 403") and r.endswith(b"forbidden")
    dead = free_port()
    r = raw_request(port, proxy_line(("127.0.0.1", dead)) +
                    b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 502")  # not a silent close
    assert o.requests == []


@pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")
def test_proxy_destination_behind_haproxy(qpxd, origin, tmp_path):
    o = origin()
    port, front = free_port(), free_port()
    qpxd(transparent_config(f"127.0.0.1:{port}", xdp=dict(TRUSTED, require_metadata=True)))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("\n".join([
        "global", "  maxconn 50", "defaults", "  mode tcp", "  timeout connect 2s",
        "  timeout client 10s", "  timeout server 10s",
        "frontend fe", f"  bind 127.0.0.1:{front}",
        # the L4 frontend tells qpxd where the client was going: the origin's port
        f"  tcp-request connection set-dst-port int({o.port})", "  default_backend be",
        "backend be", f"  server q 127.0.0.1:{port} send-proxy source 127.0.0.1"]) + "\n")
    binary = "/usr/sbin/haproxy" if have("/usr/sbin/haproxy") else "haproxy"
    hp = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", front), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        r = raw_request(front, b"GET /via-haproxy HTTP/1.1\r\nHost: app.test\r\n"
                               b"Connection: close\r\n\r\n", source="127.0.0.7")
        assert b"origin o\nGET /via-haproxy HTTP/1.1" in r, r
    finally:
        hp.terminate()
        hp.wait(5)


@pytest.fixture
def tls_origin(tmp_path):
    cert, key = make_cert(tmp_path)
    server = TlsOrigin(cert, key)
    yield server, cert
    server.close()


@pytest.mark.skipif(not have("openssl"), reason="openssl is not installed")
def test_sni_passthrough_with_certificate_checked_end_to_end(qpxd, tls_origin):
    server, cert = tls_origin
    port = free_port()
    rules = [{"name": "no-blocked", "match": {"sni": ["blocked.test"]},
              "action": {"type": "block"}},
             {"name": "tls", "match": {"sni": ["localhost"], "dst_port": [server.port]},
              "action": {"type": "tunnel"}}]
    qpxd(transparent_config(f"127.0.0.1:{port}", rules, xdp=TRUSTED))
    ctx = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(proxy_line(("127.0.0.1", server.port)))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while not data.endswith(b"\n"):
                data += tls.recv(4096)
    assert data.endswith(b"tls origin sni=localhost\n")
    ctx2 = ssl.create_default_context(cafile=str(cert))
    ctx2.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(proxy_line(("127.0.0.1", server.port)))
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            with ctx2.wrap_socket(raw, server_hostname="blocked.test") as tls:
                tls.recv(10)
    assert server.sni == ["localhost"]  # the blocked hello never reached the origin


def test_server_speaks_first_is_relayed_when_the_port_is_allowed(qpxd):
    banner = socket.socket()
    banner.bind(("127.0.0.1", 0))
    banner.listen(4)
    bport = banner.getsockname()[1]

    def serve():
        while True:
            try:
                c, _ = banner.accept()
            except OSError:
                return
            c.sendall(b"220 banner ready\r\n")
            data = c.recv(100)
            c.sendall(b"got " + data)
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    port = free_port()
    rules = [{"name": "smtp-like", "match": {"dst_port": [bport]}, "action": {"type": "direct"}}]
    qpxd(transparent_config(f"127.0.0.1:{port}", rules, xdp=TRUSTED))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(proxy_line(("127.0.0.1", bport)))
        assert s.recv(100) == b"220 banner ready\r\n"
        s.sendall(b"HELO")
        assert s.recv(100) == b"got HELO"
    other = free_port()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(proxy_line(("127.0.0.1", other)))  # a port no rule allows: closed
        assert s.recv(100) == b""
    banner.close()


# ----------------------------------------------------------------------------- netns


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    """A client network namespace linked to the host by a veth pair, IPv4 and IPv6.
    Everything added here is removed afterwards, rule by rule."""
    if os.geteuid() != 0 or not have("ip"):
        pytest.skip("needs root and iproute2 for network namespaces")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"qpxt{tag}", f"qh{tag}", f"qn{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    v4_host, v4_ns = f"10.213.{octet}.1", f"10.213.{octet}.2"
    v6_host, v6_ns = f"fd00:213:{octet:x}::1", f"fd00:213:{octet:x}::2"
    cleanup: list[list[str]] = []
    try:
        r = _sh("ip", "netns", "add", ns, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
        cleanup.append(["ip", "netns", "del", ns])
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        cleanup.insert(0, ["ip", "link", "del", host_if])
        _sh("ip", "link", "set", ns_if, "netns", ns)
        _sh("ip", "addr", "add", f"{v4_host}/24", "dev", host_if)
        _sh("ip", "-6", "addr", "add", f"{v6_host}/64", "dev", host_if, "nodad")
        _sh("ip", "link", "set", host_if, "up")
        for cmd in (["ip", "addr", "add", f"{v4_ns}/24", "dev", ns_if],
                    ["ip", "-6", "addr", "add", f"{v6_ns}/64", "dev", ns_if, "nodad"],
                    ["ip", "link", "set", ns_if, "up"], ["ip", "link", "set", "lo", "up"]):
            _sh("ip", "netns", "exec", ns, *cmd)

        def redirect(tool: str, dport: int, to_port: int) -> None:
            rule = ["-t", "nat", "-A", "PREROUTING", "-i", host_if, "-p", "tcp", "--dport",
                    str(dport), "-j", "REDIRECT", "--to-ports", str(to_port)]
            r = _sh(tool, *rule, check=False)
            if r.returncode != 0:
                pytest.skip(f"{tool} REDIRECT unavailable: {r.stderr.strip()}")
            cleanup.insert(0, [tool] + [x if x != "-A" else "-D" for x in rule])

        yield {"ns": ns, "v4_host": v4_host, "v4_ns": v4_ns, "v6_host": v6_host,
               "v6_ns": v6_ns, "redirect": redirect}
    finally:
        for cmd in cleanup:
            _sh(*cmd, check=False)


@pytest.mark.netns
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_redirected_client_reaches_origin_without_proxy_settings(qpxd, netns, family):
    if family == "ipv4":
        host_ip, tool, url_host = netns["v4_host"], "iptables", netns["v4_host"]
    else:
        host_ip, tool, url_host = netns["v6_host"], "ip6tables", f"[{netns['v6_host']}]"
    if not have(tool):
        pytest.skip(f"{tool} is not installed")
    o = Origin("behind", host_ip)
    try:
        port = free_port()
        listen = f"{host_ip}:{port}" if family == "ipv4" else f"[{host_ip}]:{port}"
        qpxd(transparent_config(listen))
        netns["redirect"](tool, o.port, port)
        r = _sh("ip", "netns", "exec", netns["ns"], "curl", "-sS", "--max-time", "5",
                f"http://{url_host}:{o.port}/redirected", check=False)
        assert "origin behind\nGET /redirected HTTP/1.1" in r.stdout, (r.stdout, r.stderr)
        assert b"Via: 1.1 qpx" in o.requests[0][0]  # it went through qpxd
    finally:
        o.close()


@pytest.mark.netns
def test_redirected_tls_passes_through_with_sni_rules(qpxd, netns, tmp_path):
    if not have("iptables") or not have("openssl"):
        pytest.skip("needs iptables and openssl")
    cert, key = make_cert(tmp_path)
    server = TlsOrigin(cert, key, netns["v4_host"])
    try:
        port = free_port()
        rules = [{"name": "tls-ok", "match": {"sni": ["localhost"]}, "action": {"type": "direct"}}]
        qpxd(transparent_config(f"{netns['v4_host']}:{port}", rules))
        netns["redirect"]("iptables", server.port, port)
        r = _sh("ip", "netns", "exec", netns["ns"], "curl", "-sS", "--max-time", "5",
                "--cacert", str(cert), "--resolve", f"localhost:{server.port}:{netns['v4_host']}",
                f"https://localhost:{server.port}/", check=False)
        assert r.stdout == "tls origin sni=localhost\n", (r.stdout, r.stderr)
    finally:
        server.close()
