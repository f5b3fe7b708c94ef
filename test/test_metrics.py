"""Metrics across workers, restarts and reloads; /health; logs and log reopening."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
from conftest import forward_config, free_port, raw_request
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, path: str = "/metrics", source: str | None = None) -> tuple[int, str]:
    resp = raw_request(port, b"GET %s HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
                       % path.encode(), source=source)
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(text: str, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples(text).items()
               if n == name and want <= set(lab))


def get(port: int, origin_addr: str, n: int = 1) -> None:
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET http://%s/m HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                      % (origin_addr.encode(), origin_addr.encode()))
            while s.recv(65536):
                pass


def config(port: int, mport: int, workers: int = 2, **extra) -> dict:
    cfg = forward_config(port)
    cfg["runtime"] = {"worker_threads": workers, "acceptor_tasks_per_listener": 2}
    cfg["metrics"] = {"listen": f"127.0.0.1:{mport}"}
    cfg.update(extra)
    return cfg


def wait_total(mport, name, expected, timeout=5.0, **labels) -> float:
    deadline = time.monotonic() + timeout
    value = -1.0
    while time.monotonic() < deadline:
        value = total(scrape(mport)[1], name, **labels)
        if value == expected:
            return value
        time.sleep(0.2)
    return value


def test_counters_add_up_over_workers_restarts_and_reloads(qpxd, origin):
    o = origin()
    port, mport = free_port(), free_port()
    d = qpxd(config(port, mport))
    threads = [threading.Thread(target=get, args=(port, o.addr, 250)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    name = "qpx_requests_total"
    assert wait_total(mport, name, 1000, listener="fwd", action="direct",
                      status_class="2xx") == 1000
    text = scrape(mport)[1]
    per_worker = {w: total(text, "qpx_connections_accepted_total", listener="fwd", worker=w)
                  for w in ("0", "1")}
    assert sum(per_worker.values()) == 1000 and all(per_worker.values()), per_worker
    assert total(text, "qpx_request_duration_seconds_count", listener="fwd") == 1000
    assert total(text, "qpx_rule_evaluations_total", listener="fwd") == 1000
    # a worker killed -9 after its last flush keeps its counts in the totals
    time.sleep(0.7)
    os.kill(d.workers()[0], signal.SIGKILL)
    time.sleep(0.5)
    assert total(scrape(mport)[1], name, listener="fwd") == 1000
    d.reload()
    get(port, o.addr, 10)
    assert wait_total(mport, name, 1010, listener="fwd") == 1010
    text = scrape(mport)[1]
    assert total(text, "qpx_reloads_total", result="ok") == 1
    assert total(text, "qpx_worker_restarts_total") == 1


def test_exposition_parses_and_names_are_prefixed(qpxd, origin):
    o = origin()
    port, mport = free_port(), free_port()
    qpxd(config(port, mport, identity={"metrics_prefix": "edge"}))
    get(port, o.addr, 3)
    time.sleep(0.7)
    status, text = scrape(mport)
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(text)}
    for expected in ("edge_requests", "edge_request_duration_seconds",
                     "edge_connections_accepted", "edge_connections_active",
                     "edge_upstream_response_seconds", "edge_upstream_connect_seconds",
                     "edge_rule_evaluations",
                     "edge_reloads", "edge_workers"):
        assert expected in names, (expected, sorted(names))
    assert not any(n.startswith("qpx_") for n in names)


def test_no_pid_labels_build_info_and_per_process_gauges(qpxd, origin):
    """Series are keyed by role (master, worker index), never by PID, so a reload does
    not multiply them; build_info names the version; every process publishes its RSS,
    CPU seconds and open fds."""
    import platform

    from qpx import __version__

    o = origin()
    port, mport = free_port(), free_port()
    d = qpxd(config(port, mport, workers=2))
    get(port, o.addr, 2)

    def scraped_after_beats():
        time.sleep(2.5)  # every process samples itself every 2 s
        return scrape(mport)[1]

    text = scraped_after_beats()
    assert "pid=" not in text, [line for line in text.splitlines() if "pid=" in line]
    assert total(text, "qpx_build_info", version=__version__,
                 python=platform.python_version(), build="python") == 1
    for who in ("master", "0", "1"):
        assert total(text, "qpx_process_resident_memory_bytes", process=who) > 10e6, who
        assert total(text, "qpx_process_open_fds", process=who) >= 3, who
        assert total(text, "qpx_process_cpu_seconds", process=who) > 0, who
    series = len(samples(text))
    d.reload()
    after = scraped_after_beats()
    assert "pid=" not in after
    # new workers replace old ones under the same labels: the series do not multiply
    assert len(samples(after)) <= series + 2, (series, len(samples(after)))


def test_health_is_200_running_and_reloading_503_while_stopping(qpxd, origin):
    o = origin()
    port, mport = free_port(), free_port()
    d = qpxd(config(port, mport, workers=1))
    from qpx import __version__

    assert scrape(mport, "/health") == (200, f"ok qpxd/{__version__}\n")
    d.kill(signal.SIGHUP)  # a load balancer must not drop the node for a reload
    seen = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        seen.append(scrape(mport, "/health")[0])
        time.sleep(0.01)
    d.wait_log("reload complete")
    assert len(seen) > 20 and set(seen) == {200}, seen
    slow = threading.Thread(target=lambda: raw_request(
        port, b"GET http://%s/slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n" % o.addr.encode()))
    slow.start()
    time.sleep(0.5)
    d.kill(signal.SIGTERM)
    time.sleep(0.3)
    assert scrape(mport, "/health")[0] == 503
    slow.join(10)
    assert d.proc.wait(15) == 0


def test_proxy_header_and_filter_counters(qpxd):
    port, mport = free_port(), free_port()
    cfg = {"reverse": [{"name": "rev", "listen": f"127.0.0.1:{port}",
                        "xdp": {"enabled": True, "metadata_mode": "proxy-v1",
                                "trusted_peers": ["127.0.0.1/32"]},
                        "connection_filter": [{"name": "drop-net",
                                               "match": {"src_ip": ["198.51.100.0/24"]}}],
                        "routes": [{"match": {}, "local_response": {"body": "ok"}}]}],
           "metrics": {"listen": f"127.0.0.1:{mport}"},
           "runtime": {"worker_threads": 1}}
    qpxd(cfg)
    req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    raw_request(port, b"PROXY TCP4 203.0.113.1 10.0.0.1 1 80\r\n" + req)
    raw_request(port, b"PROXY TCP4 010.0.0.1 10.0.0.1 1 80\r\n" + req)
    raw_request(port, b"PROXY TCP4 198.51.100.9 10.0.0.1 1 80\r\n" + req)
    time.sleep(0.7)
    text = scrape(mport)[1]
    assert total(text, "qpx_proxy_headers_total", listener="rev", result="accepted") == 2
    assert total(text, "qpx_proxy_headers_total", listener="rev",
                 result="proxy-v1-bad-address") == 1
    assert total(text, "qpx_connection_filter_drops_total", filter="drop-net") == 1


def test_metrics_refuse_clients_outside_allow(qpxd):
    if os.geteuid() != 0:
        pytest.skip("needs root to add an interface with a non-loopback address")
    tag = uuid.uuid4().hex[:6]
    ifname, ip = f"qd{tag}", f"10.214.{int(tag[:2], 16) % 250 + 1}.1"
    r = subprocess.run(["ip", "link", "add", ifname, "type", "veth", "peer", "name",
                        f"qe{tag}"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot add a veth interface: {r.stderr!r}")
    try:
        subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", ifname], check=True)
        subprocess.run(["ip", "link", "set", ifname, "up"], check=True)
        mport = free_port()
        cfg = forward_config(free_port())
        cfg["metrics"] = {"listen": f"0.0.0.0:{mport}", "allow": ["192.0.2.0/24"]}
        qpxd(cfg)
        assert scrape(mport, source=ip)[0] == 403  # neither loopback nor allowed
        assert scrape(mport)[0] == 200  # loopback is always allowed
    finally:
        subprocess.run(["ip", "link", "del", ifname], capture_output=True)


def test_access_log_file_reopens_on_usr1(qpxd, origin, tmp_path):
    o = origin()
    port = free_port()
    access = tmp_path / "access.log"
    cfg = forward_config(port)
    cfg["logging"] = {"access_log": str(access), "format": "json"}
    d = qpxd(cfg)
    get(port, o.addr, 2)
    time.sleep(0.8)
    rotated = tmp_path / "access.log.1"
    access.rename(rotated)
    d.kill(signal.SIGUSR1)
    time.sleep(0.5)
    get(port, o.addr, 3)
    time.sleep(0.8)
    assert len(rotated.read_text().splitlines()) == 2
    lines = access.read_text().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[0])
    assert rec["status"] == 200 and rec["listener"] == "fwd" and rec["action"] == "direct"
    assert rec["client"].startswith("127.0.0.1:") and rec["rule"] == "loopback"


def test_text_logs_and_refusals_are_logged(qpxd):
    port = free_port()
    cfg = forward_config(port)
    cfg["logging"] = {"format": "text", "access_log": "-"}
    d = qpxd(cfg)
    raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.8)
    out = d.out()
    assert '"GET /" 400' in out and 'reason="a forward proxy needs' in out
    assert " info " in d.log() and "qpxd ready" in d.log()
    d.reload()
    # no placeholder noise: fields without a value are left out, not printed as
    # "None" or "-"; every line starts with the same timestamp form
    for text in (out, d.log()):
        for line in text.splitlines():
            assert "=None" not in line and "=-" not in line and "[]" not in line, line
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line), line


def test_every_connection_closed_before_http_logs_why(qpxd, origin):
    port = free_port()
    cfg = forward_config(port)
    cfg["runtime"] = {"http_header_read_timeout_ms": 300}
    d = qpxd(cfg)
    socket.create_connection(("127.0.0.1", port)).close()  # nothing sent
    with socket.create_connection(("127.0.0.1", port)) as s:  # half a head, then gone
        s.sendall(b"GET http://x/ HTTP/1.1\r\nHo")
        time.sleep(0.1)
    with socket.create_connection(("127.0.0.1", port)) as s:  # silent past the deadline
        s.settimeout(5)
        assert s.recv(100) == b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in d.log().splitlines() if x.startswith("{")]
        closed = [x for x in lines if x.get("msg") == "connection closed before HTTP"]
        if len(closed) >= 3:
            break
        time.sleep(0.1)
    reasons = sorted((x["reason"], x["detail"]) for x in closed)
    assert reasons == [("eof", "client closed inside a request head"),
                       ("eof", "closed without sending a request"),
                       ("timeout", "no request within 0.3s")], reasons
    assert all(x["listener"] == "fwd" and x["peer"].startswith("127.0.0.1:") for x in closed)

    # After a served request the same drop is no "closed before HTTP": its own line.
    o = origin()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(5)
        s.sendall(b"GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n" % ((o.addr.encode(),) * 2))
        got = b""
        while b"origin o" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
        s.sendall(b"GET http://x/ HTTP/1.1\r\nHo")
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    mid = []
    while time.monotonic() < deadline and not mid:
        lines = [json.loads(x) for x in d.log().splitlines() if x.startswith("{")]
        mid = [x for x in lines if x.get("msg") == "client closed inside a request head"]
        time.sleep(0.1)
    assert [(x["reason"], x["served"]) for x in mid] == [("eof", 1)], mid
    assert len([x for x in lines if x.get("msg") == "connection closed before HTTP"]) == 3
