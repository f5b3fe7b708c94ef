"""The master and its workers: sockets, respawn, reload, resize, graceful stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import QPXD, ROOT, alive, forward_config, free_port, have
from load import Load


def listening_sockets(port: int) -> int:
    """LISTEN sockets bound to ``port`` in /proc/net/tcp{,6} (one per SO_REUSEPORT member)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                    n += 1
    return n


def get(port: int, origin_addr: str, path: str = "/x", timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET http://%s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                  % (origin_addr.encode(), path.encode(), origin_addr.encode()))
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def cfg_with(port: int, workers: int = 2, acceptors: int = 1, **runtime) -> dict:
    cfg = forward_config(port)
    cfg["runtime"] = {"worker_threads": workers, "acceptor_tasks_per_listener": acceptors,
                      **runtime}
    return cfg


def test_master_never_imports_gevent(qpxd):
    port = free_port()
    d = qpxd(cfg_with(port, workers=1))
    with open(f"/proc/{d.pid}/maps") as f:
        master_maps = f.read()
    with open(f"/proc/{d.workers()[0]}/maps") as f:
        worker_maps = f.read()
    assert "gevent" not in master_maps
    assert "gevent" in worker_maps  # the check can fail: the worker does map gevent
    code = ("import sys, qpx.cli, qpx.arbiter, qpx.policy, qpx.config; "
            "sys.exit(1 if any(m.split('.')[0] == 'gevent' for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_process_titles(qpxd):
    port = free_port()
    d = qpxd(cfg_with(port, workers=2))
    with open(f"/proc/{d.pid}/cmdline") as f:
        assert f.read().startswith("qpxd: master -c ")
    titles = sorted(open(f"/proc/{p}/cmdline").read().strip("\0") for p in d.workers())
    assert titles == ["qpxd: worker 0 [gen 1]", "qpxd: worker 1 [gen 1]"]


@pytest.mark.parametrize("workers,acceptors", [(2, 2), (2, 1), (1, 3)])
def test_listen_socket_count_is_workers_times_acceptors(qpxd, workers, acceptors):
    port = free_port()
    qpxd(cfg_with(port, workers=workers, acceptors=acceptors))
    assert listening_sockets(port) == workers * acceptors


def test_reuse_port_off_shares_one_socket(qpxd):
    port = free_port()
    d = qpxd(cfg_with(port, workers=2, acceptors=2, reuse_port=False))
    assert listening_sockets(port) == 1
    assert "acceptors collapse to one" in d.log()


def test_killed_worker_is_replaced_and_master_survives(qpxd, origin):
    o = origin()
    port = free_port()
    d = qpxd(cfg_with(port, workers=2))
    victim = d.workers()[0]
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2:
        pids = d.workers()
        if len(pids) == 2 and victim not in pids:
            break
        time.sleep(0.05)
    assert len(d.workers()) == 2 and victim not in d.workers()
    assert alive(d.pid)
    for _ in range(10):
        assert b"origin o" in get(port, o.addr)


def test_worker_crash_loop_stops_the_master(qpxd, tmp_path):
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    port = free_port()
    cfg = cfg_with(port, workers=1)
    cfg["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    d = qpxd(cfg, env={"PROMETHEUS_MULTIPROC_DIR": str(mdir)})
    shutil.rmtree(mdir)  # every new worker now dies at start: it cannot write its metrics
    os.kill(d.workers()[0], signal.SIGKILL)
    assert d.proc.wait(30) == 1
    out = d.log()
    assert "died within 1s of start 5 times in a row" in out
    # the operator gets one line with the cause, never a Python traceback ...
    assert "Traceback" not in out, out
    assert "worker failed" in out and "No such file or directory" in out, out
    # ... and the last line agrees with the exit code
    last = json.loads(out.strip().splitlines()[-1])
    assert last["msg"] == "qpxd stopped" and last["code"] == 1, last
    assert last["level"] == "error" and "5 times in a row" in last["reason"], last


def test_worker_that_never_gets_ready_is_killed_once_then_backed_off(qpxd, tmp_path):
    """A respawned worker that hangs before serving (here: opening an access log FIFO
    nobody reads) is killed after worker_timeout_ms - one kill and one log line per
    worker - and respawned with a growing delay, as a crashing one would be."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the first worker may open it
    port = free_port()
    cfg = cfg_with(port, workers=1, worker_timeout_ms=2000)
    cfg["logging"] = {"level": "info", "format": "json", "access_log": str(fifo)}
    d = qpxd(cfg)
    os.close(reader)  # from now on a new worker blocks in open(): never ready
    time.sleep(1.2)  # the first worker's death is no failed start: it lived past 1 s
    os.kill(d.workers()[0], signal.SIGKILL)
    d.wait_log("worker not ready in time", timeout=20, count=2)
    d.wait_log("worker died; respawning", timeout=10, count=3)
    lines = [json.loads(x) for x in d.log().splitlines() if x.startswith("{")]
    killed = [x["pid"] for x in lines if x.get("msg") == "worker not ready in time; killing"]
    assert len(killed) == len(set(killed)), killed  # one kill line per hung worker
    delays = [x["delay_s"] for x in lines if x.get("msg") == "worker died; respawning"]
    assert delays[:3] == [0.0, 0.1, 0.2], delays  # back-off grows while starts fail
    assert alive(d.pid)


def test_hup_with_broken_config_changes_nothing(qpxd, origin):
    o = origin()
    port = free_port()
    d = qpxd(cfg_with(port, workers=2))
    before = sorted(d.workers())
    good = d.config
    bad = dict(good, listeners=[dict(good["listeners"][0], rules=[
        {"name": "x", "match": {"src_ip": ["10.0.0.1/8"]}, "action": {"type": "direct"}}])])
    d.reload(bad)
    assert "reload aborted: the configuration is invalid" in d.log()
    assert "src_ip.0: invalid CIDR '10.0.0.1/8': host bits set" in d.log()
    assert sorted(d.workers()) == before
    assert b"origin o" in get(port, o.addr)


def doomed_next_generation(qpxd, tmp_path, port: int):
    """A daemon whose *next* workers cannot start: its metrics directory is removed
    after the first generation is up (workers open their metrics files at start)."""
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    cfg = cfg_with(port, workers=2)
    cfg["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    d = qpxd(cfg, env={"PROMETHEUS_MULTIPROC_DIR": str(mdir)})
    return d, lambda: shutil.rmtree(mdir)


def test_hup_whose_workers_fail_keeps_the_old_generation(qpxd, origin, tmp_path):
    o = origin()
    port = free_port()
    d, doom = doomed_next_generation(qpxd, tmp_path, port)
    before = sorted(d.workers())
    doom()
    d.reload()
    assert "reload failed" in d.log()
    assert sorted(d.workers()) == before
    assert b"origin o" in get(port, o.addr)


def test_failed_resize_takes_back_the_sockets_it_added(qpxd, origin, tmp_path):
    """A TTIN whose new workers never get ready must not leave the extra SO_REUSEPORT
    socket behind: nobody would accept from it, and the kernel would keep queueing a
    share of new connections there."""
    o = origin()
    port = free_port()
    d, doom = doomed_next_generation(qpxd, tmp_path, port)
    assert listening_sockets(port) == 2
    doom()
    d.kill(signal.SIGTTIN)
    d.wait_log("resize failed")
    assert listening_sockets(port) == 2
    for i in range(40):  # fresh connections: each hashes to some socket
        assert b"origin o" in get(port, o.addr, f"/n{i}", timeout=5)


def test_workers_ignore_master_only_signals(qpxd, origin):
    """`pkill -HUP qpxd` reaches workers too: HUP's default action would kill them and
    TTIN/TTOU's would stop them."""
    o = origin()
    port = free_port()
    d = qpxd(cfg_with(port, workers=1))
    worker = d.workers()[0]
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
        os.kill(worker, sig)
    time.sleep(0.5)
    with open(f"/proc/{worker}/stat") as f:
        state = f.read().split(") ")[1].split()[0]
    assert state in ("S", "R"), state
    assert d.workers() == [worker]
    assert b"origin o" in get(port, o.addr)


def test_reload_applies_new_rules_and_listeners(qpxd, origin):
    o = origin()
    port, port2 = free_port(), free_port()
    d = qpxd(cfg_with(port, workers=2))
    old = set(d.workers())
    cfg = cfg_with(port, workers=2)
    cfg["listeners"][0]["rules"].insert(0, {"name": "now-blocked", "match": {"path": ["/b"]},
                                            "action": {"type": "block"}})
    cfg["listeners"].append(dict(cfg["listeners"][0], name="second",
                                 listen=f"127.0.0.1:{port2}"))
    d.reload(cfg)
    assert "reload complete" in d.log()
    assert b"403 Forbidden" in get(port, o.addr, "/b")
    assert b"origin o" in get(port2, o.addr)
    new = set(d.workers())
    assert not old & new
    titles = {open(f"/proc/{p}/cmdline").read().strip("\0") for p in new}
    assert titles == {"qpxd: worker 0 [gen 2]", "qpxd: worker 1 [gen 2]"}
    d.reload(cfg_with(port, workers=2))  # the second listener goes away
    deadline = time.monotonic() + 10
    while listening_sockets(port2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listening_sockets(port2) == 0


def test_twenty_reloads_under_load_lose_nothing(qpxd, origin):
    o = origin()
    port = free_port()
    d = qpxd(cfg_with(port, workers=2, acceptors=2))
    with Load(port, o.addr, keepalive=3, fresh=3, max_seconds=60) as load:
        time.sleep(0.5)
        for _ in range(20):
            d.kill(signal.SIGHUP)
            time.sleep(0.2)
        d.wait_log("reload complete", timeout=30, count=20)
        time.sleep(0.5)
    s = load.stats
    assert s.failures == [], s.failures[:5]
    assert s.ok > 200
    assert not [k for k in s.statuses if k >= 500]
    # Not even a retry: a draining worker answers the next request on a keep-alive
    # connection (with Connection: close) instead of closing under the client.
    assert s.retried == 0, s.retried
    took = [json.loads(x)["took_ms"] for x in d.log().splitlines() if "reload complete" in x]
    print(f"\nreloads: {len(took)}, median reload {sorted(took)[len(took) // 2]:.0f} ms, "
          f"requests ok {s.ok}, retried on closed keep-alive {s.retried}, failed "
          f"{len(s.failures)}")


def test_ttin_ttou_resize_without_failures(qpxd, origin):
    o = origin()
    port = free_port()
    d = qpxd(cfg_with(port, workers=2, acceptors=1))
    with Load(port, o.addr, keepalive=2, fresh=2, max_seconds=60) as load:
        d.kill(signal.SIGTTIN)
        d.wait_log("resize complete", count=1)
        deadline = time.monotonic() + 10  # the old generation drains, then exits
        while len(d.workers()) != 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(d.workers()) == 3
        assert listening_sockets(port) == 3
        time.sleep(0.3)
        d.kill(signal.SIGTTOU)
        d.wait_log("resize complete", count=2)
        deadline = time.monotonic() + 10
        while len(d.workers()) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(d.workers()) == 2
        assert listening_sockets(port) == 3  # sockets are never closed, only remapped
        time.sleep(0.5)
    assert load.stats.failures == [], load.stats.failures[:5]
    assert load.stats.ok > 50


def test_term_lets_an_inflight_request_finish(qpxd, origin):
    o = origin()
    port = free_port()
    d = qpxd(cfg_with(port, workers=1))
    result = {}

    def slow():
        result["resp"] = get(port, o.addr, "/slow?s=2")

    import threading

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    d.kill(signal.SIGTERM)
    t.join(10)
    assert d.proc.wait(15) == 0
    assert result["resp"].startswith(b"HTTP/1.1 200")
    assert b"origin o" in result["resp"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_group_wide_term_is_a_stop_not_a_crash(qpxd):
    """Ctrl-C, systemd's control-group kill and make pass the signal to every process:
    workers may be gone before the master dispatches its own copy.  Made deterministic
    by holding the master stopped until both the worker exits and its TERM are pending."""
    port = free_port()
    d = qpxd(cfg_with(port, workers=2))
    workers = d.workers()
    os.kill(d.pid, signal.SIGSTOP)
    try:
        for w in workers:
            os.kill(w, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                open(f"/proc/{w}/stat").read().split(") ")[1][0] != "Z" for w in workers):
            time.sleep(0.05)
        os.kill(d.pid, signal.SIGTERM)
    finally:
        os.kill(d.pid, signal.SIGCONT)
    assert d.proc.wait(15) == 0
    log = d.log()
    assert "graceful stop" in log
    assert "respawning" not in log, log


def test_pidfile_and_fast_stop(qpxd, tmp_path):
    port = free_port()
    pidfile = tmp_path / "qpxd.pid"
    d = qpxd(cfg_with(port, workers=2), args=["--pid", str(pidfile)])
    assert int(pidfile.read_text()) == d.pid
    workers = d.workers()
    d.kill(signal.SIGINT)
    assert d.proc.wait(10) == 0
    assert not pidfile.exists()
    time.sleep(0.2)
    assert not any(alive(p) for p in workers)


def test_a_second_qpxd_on_the_same_ports_or_pid_file_is_refused(qpxd, tmp_path):
    """SO_REUSEPORT must not let a second instance join the first one's sockets, and a
    shared PID file is a lock, not a file to overwrite."""
    port = free_port()
    pidfile = tmp_path / "qpxd.pid"
    first = qpxd(cfg_with(port, workers=1), args=["--pid", str(pidfile)])
    second = qpxd(cfg_with(port, workers=1), start=False, name="second")
    second.start(wait=False)
    assert second.proc.wait(15) == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in second.log()
    third = qpxd(cfg_with(free_port(), workers=1), start=False, name="third",
                 args=["--pid", str(pidfile)])
    third.start(wait=False)
    assert third.proc.wait(15) == 1
    assert f"held by a running qpxd (PID {first.pid})" in third.log()
    assert int(pidfile.read_text()) == first.pid  # untouched
    assert alive(first.pid)
    first.reload()  # the master's own reloads still bind what they need
    assert "reload complete" in first.log()


def test_bind_error_names_listener_and_address(qpxd):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        d = qpxd(cfg_with(port, workers=1), start=False)
        d.start(wait=False)
        assert d.proc.wait(15) == 1
        assert f"listener 'fwd': cannot listen on 127.0.0.1:{port}: Address already in use" \
            in d.log()
    finally:
        busy.close()


@pytest.mark.skipif(not have("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_verifies():
    unit = ROOT / "contrib" / "systemd" / "qpxd.service"
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "Unknown" not in r.stderr, r.stderr


def test_sd_notify_ready_reloading_stopping(qpxd, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    port = free_port()
    d = qpxd(cfg_with(port, workers=1), start=False)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    d._err = open(d.errlog, "ab")
    d._out = open(d.outlog, "ab")
    d.proc = subprocess.Popen(QPXD + ["-c", str(d.path)], stdout=d._out, stderr=d._err, env=env,
                              cwd=d.tmp)
    d.known_pids.add(d.proc.pid)
    msgs = [sock.recv(4096).decode()]
    assert "READY=1" in msgs[0]
    d.kill(signal.SIGHUP)
    msgs.append(sock.recv(4096).decode())
    msgs.append(sock.recv(4096).decode())
    assert "RELOADING=1" in msgs[1] and "MONOTONIC_USEC=" in msgs[1]
    assert "READY=1" in msgs[2]
    d.kill(signal.SIGTERM)
    msgs.append(sock.recv(4096).decode())
    assert "STOPPING=1" in msgs[3]
    assert d.proc.wait(10) == 0
    sock.close()


def test_workers_are_pinned_to_the_cpu_list(qpxd):
    cpus = sorted(os.sched_getaffinity(0))
    port = free_port()
    cfg = cfg_with(port, workers=len(cpus) + 1)
    cfg["runtime"]["cpu_affinity"] = ",".join(str(c) for c in cpus)
    d = qpxd(cfg)
    pinned = {}
    for pid in d.workers():
        index = int(open(f"/proc/{pid}/cmdline").read().split()[2])
        pinned[index] = os.sched_getaffinity(pid)
    assert pinned == {k: {cpus[k % len(cpus)]} for k in range(len(cpus) + 1)}
    assert d.log().count("worker pinned") == len(cpus) + 1


def test_cpu_affinity_auto_uses_the_nic_numa_node(qpxd):
    from qpx.affinity import numa_local_cpus

    iface = next((n for n in os.listdir("/sys/class/net") if n != "lo"), "lo")
    expected = numa_local_cpus(iface)
    port = free_port()
    cfg = cfg_with(port, workers=1)
    cfg["runtime"].update(cpu_affinity="auto", cpu_affinity_iface=iface)
    d = qpxd(cfg)
    assert os.sched_getaffinity(d.workers()[0]) == {expected[0]}
