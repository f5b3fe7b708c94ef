"""The shipped operator files work as written: the systemd unit passes
``systemd-analyze verify`` (with ExecStart pointed at this checkout's qpxd), the
logrotate snippet parses and its postrotate signals the PID file the unit writes, and
``--help`` names that same PID path."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import QPXD, ROOT, have

UNIT = ROOT / "contrib" / "systemd" / "qpxd.service"
LOGROTATE = ROOT / "contrib" / "logrotate" / "qpxd"


def unit_pid_path() -> str:
    m = re.search(r"^ExecStart=\S+ run .*--pid (\S+)", UNIT.read_text(), re.M)
    assert m, "ExecStart must write a PID file"
    return m.group(1)


def test_the_unit_installs_from_a_venv_and_verifies(tmp_path):
    text = UNIT.read_text()
    assert "ExecStart=/opt/qpxd/bin/qpxd run -c /etc/qpx/qpx.yaml" in text
    assert "python3 -m venv /opt/qpxd" in text  # the recipe Debian 12 accepts (PEP 668)
    if not have("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    qpxd = Path(QPXD[0]).parent / "qpxd"
    if not qpxd.exists():
        pytest.skip("the qpxd console script is not installed in this environment")
    unit = tmp_path / "qpxd.service"
    unit.write_text(text.replace("/opt/qpxd/bin/qpxd", str(qpxd)))
    sock = tmp_path / "qpxd.socket"
    sock.write_text((UNIT.parent / "qpxd.socket").read_text())
    r = subprocess.run(["systemd-analyze", "verify", str(unit), str(sock)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "qpxd.service" not in r.stderr and "qpxd.socket" not in r.stderr, r.stderr
    # an upgrade's new master reports MAINPID= itself
    assert "NotifyAccess=all" in text and "kill -s USR2 --kill-whom=main" in text


def test_one_pid_path_in_the_unit_help_and_logrotate():
    pid = unit_pid_path()
    assert pid == "/run/qpxd/qpxd.pid"
    r = subprocess.run(QPXD + ["--help"], capture_output=True, text=True)
    assert f"$(cat {pid})" in r.stdout
    assert f"kill -USR1 \"$(cat {pid})\"" in LOGROTATE.read_text()


def test_logrotate_snippet_parses(tmp_path):
    if not have("logrotate"):
        pytest.skip("logrotate is not installed")
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "access.log").write_text("x\n")
    conf = tmp_path / "qpxd"
    conf.write_text(LOGROTATE.read_text().replace("/var/log/qpxd", str(logs))
                    .replace("create 0640 qpxd qpxd", "create 0640 root root"))
    r = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "error" not in (r.stderr + r.stdout).lower()
