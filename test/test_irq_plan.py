"""Tests for contrib/irq/irq-affinity-plan against fake /proc and /sys trees built in tmp_path."""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "contrib" / "irq" / "irq-affinity-plan"
ORDERING = ("queue index parsed from the IRQ name, then IRQ number; IRQs sharing a "
            "queue index (rx/tx pair) share a CPU; IRQs without an index come last")


def load_tool():
    loader = importlib.machinery.SourceFileLoader("irq_affinity_plan", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class Box:
    """A fake host: <root>/proc and <root>/sys with CPUs, NUMA nodes, NICs and IRQs."""

    def __init__(self, root, online="0-3", nodes=None):
        self.root, self.proc, self.sys = root, root / "proc", root / "sys"
        self.ncpu = int(online.split("-")[-1]) + 1
        self.rows = []
        self.iface = None  # default --iface for run(); an explicit --iface later in argv wins
        write(self.sys / "devices/system/cpu/online", online + "\n")
        for node, cpulist in (nodes or {0: online}).items():
            write(self.sys / f"devices/system/node/node{node}/cpulist", cpulist + "\n")

    def nic(self, iface, pci="0000:01:00.0", numa_node="0", child=None, msi=()):
        self.iface = self.iface or iface
        pci_dir = self.sys / "devices/pci0000:00" / pci
        if numa_node is not None:
            write(pci_dir / "numa_node", numa_node + "\n")
        for irq in msi:
            write(pci_dir / "msi_irqs" / str(irq), "msix\n")
        device = pci_dir / child if child else pci_dir
        device.mkdir(parents=True, exist_ok=True)
        (self.sys / "class/net" / iface).mkdir(parents=True)
        (self.sys / "class/net" / iface / "device").symlink_to(device)

    def irqs(self, *rows):
        """rows: (irq, name) or (irq, name, counts); every IRQ starts with affinity 0-(ncpu-1)."""
        for row in rows:
            irq, name = row[:2]
            counts = row[2] if len(row) > 2 else [0] * self.ncpu
            self.rows.append((irq, name, counts))
            write(self.proc / f"irq/{irq}/smp_affinity_list", f"0-{self.ncpu - 1}\n")
        self.write_interrupts()

    def write_interrupts(self, bump=None):
        """(Re)write proc/interrupts; bump maps irq -> per-CPU increments."""
        lines = ["           " + "".join(f"CPU{i:<8d}" for i in range(self.ncpu))]
        for irq, name, counts in sorted(self.rows):
            counts = [c + d for c, d in zip(counts, (bump or {}).get(irq, [0] * self.ncpu))]
            cols = "".join(f"{c:>11d}" for c in counts)
            lines.append(f"{irq:>4d}:{cols}  IR-PCI-MSI {irq * 512}-edge      {name}")
        lines += ["NMI:" + "".join(f"{0:>11d}" for _ in range(self.ncpu)) + "   Non-maskable interrupts",
                  "ERR:          0"]
        write(self.proc / "interrupts", "\n".join(lines) + "\n")

    def files(self):
        return {str(p.relative_to(self.root)): p.read_text()
                for p in sorted(self.root.rglob("*")) if p.is_file() and not p.is_symlink()}


def run(box, *args, path=None):
    env = {**os.environ, "PATH": str(path or box.root / "empty-bin")}
    return subprocess.run([sys.executable, str(SCRIPT), "--proc-root", str(box.proc),
                           "--sys-root", str(box.sys), "--iface", box.iface, *args],
                          capture_output=True, text=True, timeout=10, env=env)


def run_json(box, *args, rc=0):
    res = run(box, *args, "--json")
    assert res.returncode == rc, res.stderr
    return json.loads(res.stdout)


def irq(n, name, queue, found_by, planned, current=(0, 1, 2, 3)):
    return {"irq": n, "name": name, "queue": queue, "found_by": found_by,
            "current": list(current), "planned": planned}


def advice(iface, n, cpulist):
    return [
        {"command": f"ethtool -l {iface}", "why": "confirm the queue (channel) count"},
        {"command": f"ethtool -L {iface} combined {n}", "why": "one combined queue per target CPU"},
        {"command": f"ethtool -n {iface} rx-flow-hash tcp4", "why": "RSS must hash IP SA/DA + L4 ports"},
        {"command": f"ethtool -n {iface} rx-flow-hash tcp6", "why": "same for IPv6"},
        {"command": "systemctl stop irqbalance", "why": "otherwise irqbalance rewrites smp_affinity"},
        {"command": f"CPUAffinity={cpulist}", "why": "pin qpxd (systemd unit or taskset -c) to the IRQ CPUs"},
    ]


SKIPPED = {"status": "skipped", "path": None, "current": None, "max": None, "error": None,
           "flow_hash": None}


@pytest.fixture
def ixgbe(tmp_path):
    """4-queue ixgbe-style eth0 on node 0 of a 4-CPU box, plus look-alike IRQs that must not match."""
    box = Box(tmp_path)
    box.nic("eth0", pci="0000:01:00.0", numa_node="0")
    box.irqs((0, "timer"), (27, "eth0-TxRx-2"), (25, "eth0-TxRx-0"), (26, "eth0-TxRx-1"),
             (28, "eth0-TxRx-3"), (40, "eth01-TxRx-0"), (41, "veth0-TxRx-0"))
    return box


def test_ixgbe_plan_json_exact(ixgbe):
    assert run_json(ixgbe, "--no-ethtool") == {
        "mode": "plan", "iface": "eth0", "device": "0000:01:00.0", "pci": "0000:01:00.0",
        "numa_node": 0, "policy": "numa-local", "cpus": [0, 1, 2, 3], "ordering": ORDERING,
        "notes": [],
        "irqs": [irq(25, "eth0-TxRx-0", 0, "name", 0), irq(26, "eth0-TxRx-1", 1, "name", 1),
                 irq(27, "eth0-TxRx-2", 2, "name", 2), irq(28, "eth0-TxRx-3", 3, "name", 3)],
        "excluded": [],
        "advice": advice("eth0", 4, "0-3"),
        "ethtool": SKIPPED,
    }


def test_ixgbe_plan_text(ixgbe):
    res = run(ixgbe)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.splitlines()[:7] == [
        "irq-affinity-plan: eth0 (device 0000:01:00.0, numa node 0), policy numa-local, CPUs 0-3",
        f"ordering: {ORDERING}",
        "IRQ  NAME         QUEUE  FOUND-BY  CURRENT  PLANNED",
        " 25  eth0-TxRx-0  0      name      0-3      0",
        " 26  eth0-TxRx-1  1      name      0-3      1",
        " 27  eth0-TxRx-2  2      name      0-3      2",
        " 28  eth0-TxRx-3  3      name      0-3      3",
    ]
    assert "ethtool: not on PATH; run the ethtool checks below by hand" in res.stdout
    for cmd in ("ethtool -l eth0", "ethtool -L eth0 combined 4",
                "ethtool -n eth0 rx-flow-hash tcp4", "ethtool -n eth0 rx-flow-hash tcp6"):
        assert f"  {cmd} " in res.stdout


def test_ethtool_on_path_is_run_and_reported(ixgbe, tmp_path):
    fake = tmp_path / "bin" / "ethtool"
    write(fake, "#!/bin/sh\n"
                "case \"$*\" in\n"
                "'-l eth0') printf 'Channel parameters for eth0:\\nPre-set maximums:\\n"
                "RX:\\t\\tn/a\\nTX:\\t\\tn/a\\nOther:\\t\\t1\\nCombined:\\t63\\n"
                "Current hardware settings:\\nRX:\\t\\tn/a\\nTX:\\t\\tn/a\\nOther:\\t\\t1\\n"
                "Combined:\\t4\\n' ;;\n"
                "'-n eth0 rx-flow-hash tcp4') printf 'TCP over IPV4 flows use these fields for "
                "computing Hash flow key:\\nIP SA\\nIP DA\\nL4 bytes 0 & 1 [TCP/UDP src port]\\n"
                "L4 bytes 2 & 3 [TCP/UDP dst port]\\n\\n' ;;\n"
                "'-n eth0 rx-flow-hash tcp6') printf 'TCP over IPV6 flows use these fields for "
                "computing Hash flow key:\\nIP SA\\nIP DA\\n\\n' ;;\n"
                "*) exit 3 ;;\nesac\n")
    fake.chmod(0o755)
    res = run(ixgbe, "--json", path=fake.parent)
    assert json.loads(res.stdout)["ethtool"] == {
        "status": "ok", "path": str(fake), "error": None,
        "max": {"rx": None, "tx": None, "other": 1, "combined": 63},
        "current": {"rx": None, "tx": None, "other": 1, "combined": 4},
        "flow_hash": {"tcp4": ["IP SA", "IP DA", "L4 bytes 0 & 1 [TCP/UDP src port]",
                               "L4 bytes 2 & 3 [TCP/UDP dst port]"],
                      "tcp6": ["IP SA", "IP DA"]}}
    text = run(ixgbe, path=fake.parent).stdout
    assert "ethtool -l eth0: combined 4 (max 63), rx n/a (max n/a), tx n/a (max n/a), other 1 (max 1)" in text
    assert ("ethtool -n eth0 rx-flow-hash tcp4: hashes IP SA, IP DA, L4 bytes 0 & 1 [TCP/UDP src "
            "port], L4 bytes 2 & 3 [TCP/UDP dst port] (good)") in text
    assert ("ethtool -n eth0 rx-flow-hash tcp6: hashes IP SA, IP DA; missing L4 bytes 0 & 1, L4 "
            "bytes 2 & 3: connections from one host all land on one queue (fix: ethtool -N eth0 "
            "rx-flow-hash tcp6 sdfn)") in text
    assert run_json(ixgbe)["ethtool"]["status"] == "absent"


def test_mlx5_found_by_pci_address_async_excluded(tmp_path):
    box = Box(tmp_path)
    box.nic("ens1f0np0", pci="0000:3b:00.0", numa_node="0")
    box.irqs((90, "mlx5_async0@pci:0000:3b:00.0"), (91, "mlx5_comp0@pci:0000:3b:00.0"),
             (92, "mlx5_comp1@pci:0000:3b:00.0"), (93, "mlx5_comp2@pci:0000:3b:00.0"),
             (94, "mlx5_comp0@pci:0000:3b:00.1"))
    doc = run_json(box, "--no-ethtool", "--cpus", "1-2")
    assert (doc["device"], doc["pci"], doc["cpus"]) == ("0000:3b:00.0", "0000:3b:00.0", [1, 2])
    assert doc["irqs"] == [irq(91, "mlx5_comp0@pci:0000:3b:00.0", 0, "pci", 1),
                           irq(92, "mlx5_comp1@pci:0000:3b:00.0", 1, "pci", 2),
                           irq(93, "mlx5_comp2@pci:0000:3b:00.0", 2, "pci", 1)]
    assert doc["excluded"] == [{"irq": 90, "name": "mlx5_async0@pci:0000:3b:00.0",
                                "reason": "non-queue vector (async)"}]
    assert "excluded: IRQ 90 mlx5_async0@pci:0000:3b:00.0: non-queue vector (async)" in run(box).stdout


def test_virtio_found_only_via_msi_irqs(tmp_path):
    box = Box(tmp_path)
    box.nic("eth0", pci="0000:00:03.0", numa_node="-1", child="virtio0", msi=(37, 38, 39, 40, 41))
    box.irqs((36, "virtio1-input.0"), (37, "virtio0-config"), (38, "virtio0-input.0"),
             (39, "virtio0-output.0"), (40, "virtio0-input.1"), (41, "virtio0-output.1"))
    assert run_json(box, "--no-ethtool") == {
        "mode": "plan", "iface": "eth0", "device": "virtio0", "pci": "0000:00:03.0",
        "numa_node": -1, "policy": "numa-local", "cpus": [0, 1, 2, 3], "ordering": ORDERING,
        "notes": ["NUMA node of eth0 unknown; using all online CPUs",
                  "no queue IRQ for CPUs 2-3: eth0 has fewer queues than CPUs (see ethtool -L)"],
        "irqs": [irq(38, "virtio0-input.0", 0, "msi_irqs", 0),
                 irq(39, "virtio0-output.0", 0, "msi_irqs", 0),
                 irq(40, "virtio0-input.1", 1, "msi_irqs", 1),
                 irq(41, "virtio0-output.1", 1, "msi_irqs", 1)],
        "excluded": [{"irq": 37, "name": "virtio0-config", "reason": "non-queue vector (config)"}],
        "advice": advice("eth0", 4, "0-3"),
        "ethtool": SKIPPED,
    }


@pytest.fixture
def numa2(tmp_path):
    """8 CPUs on two nodes; ens1f0 on node 1 with 6 queues, separate rx and tx vectors."""
    box = Box(tmp_path, online="0-7", nodes={0: "0-3", 1: "4-7"})
    box.nic("ens1f0", pci="0000:af:00.0", numa_node="1")
    box.irqs(*[(100 + 2 * q + d, f"ens1f0-{kind}-{q}") for q in range(6) for d, kind in enumerate(("rx", "tx"))])
    return box


def planned(doc):
    """-> {queue: CPU} after checking that the rx and tx vectors of each queue share a CPU."""
    by_queue = {}
    for q in doc["irqs"]:
        assert by_queue.setdefault(q["queue"], q["planned"]) == q["planned"], q
    assert [q["name"] for q in doc["irqs"]] == [f"ens1f0-{k}-{n}" for n in range(6) for k in ("rx", "tx")]
    return by_queue


def test_numa_local_picks_nic_node(numa2):
    doc = run_json(numa2, "--no-ethtool")
    assert (doc["numa_node"], doc["cpus"], doc["notes"]) == (1, [4, 5, 6, 7], [])
    assert planned(doc) == {0: 4, 1: 5, 2: 6, 3: 7, 4: 4, 5: 5}


def test_round_robin_spreads_over_all_online(numa2):
    doc = run_json(numa2, "--no-ethtool", "--policy", "round-robin")
    assert doc["cpus"] == list(range(8))
    assert planned(doc) == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
    assert doc["notes"] == ["no queue IRQ for CPUs 6-7: ens1f0 has fewer queues than CPUs (see ethtool -L)"]


def test_numa_local_intersects_cpus(numa2):
    doc = run_json(numa2, "--no-ethtool", "--cpus", "2-5")
    assert doc["cpus"] == [4, 5]
    assert doc["notes"] == ["dropped CPUs 2-3 (not on NUMA node 1)"]
    assert planned(doc) == {0: 4, 1: 5, 2: 4, 3: 5, 4: 4, 5: 5}
    res = run(numa2, "--cpus", "0-3")
    assert res.returncode == 2
    assert res.stderr == ("irq-affinity-plan: error: no selected CPU is on NUMA node 1 "
                          "(node CPUs 4-7); use --policy round-robin\n")


def test_interface_without_irqs(tmp_path):
    box = Box(tmp_path)
    (box.sys / "class/net/dummy0").mkdir(parents=True)
    box.iface = "dummy0"
    box.irqs((25, "eth0-TxRx-0"))
    res = run(box)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == (f"irq-affinity-plan: error: interface dummy0 has no queue IRQs (looked in "
                          f"{box.proc}/interrupts for names with 'dummy0' or PCI address -, and "
                          f"msi_irqs -; excluded 0 non-queue vectors)\n")


def test_interface_not_found(ixgbe):
    res = run(ixgbe, "--iface", "eth9")
    assert res.returncode == 1
    assert res.stderr == f"irq-affinity-plan: error: interface eth9 not found (no {ixgbe.sys}/class/net/eth9)\n"


def test_apply_writes_exactly_the_planned_files(ixgbe):
    before = ixgbe.files()
    res = run(ixgbe, "--apply", "--cpus", "1-3")
    assert res.returncode == 0, res.stderr
    after = ixgbe.files()
    changed = {k: v for k, v in after.items() if before.get(k) != v}
    assert changed == {"proc/irq/25/smp_affinity_list": "1\n", "proc/irq/26/smp_affinity_list": "2\n",
                       "proc/irq/27/smp_affinity_list": "3\n", "proc/irq/28/smp_affinity_list": "1\n"}
    assert after.keys() == before.keys()
    assert res.stdout.splitlines() == [
        f"IRQ {n} eth0-TxRx-{n - 25}: 0-3 -> {cpu} (wrote {ixgbe.proc}/irq/{n}/smp_affinity_list)"
        for n, cpu in ((25, 1), (26, 2), (27, 3), (28, 1))]


def test_apply_json(ixgbe):
    doc = run_json(ixgbe, "--apply")
    assert doc["mode"] == "apply" and "ethtool" not in doc
    assert doc["applied"] == [{"irq": n, "path": f"{ixgbe.proc}/irq/{n}/smp_affinity_list", "cpu": n - 25}
                              for n in (25, 26, 27, 28)]


@pytest.mark.parametrize("breakage", ["directory", "missing-irq-dir"])
def test_apply_refuses_and_writes_nothing(ixgbe, breakage):
    target = ixgbe.proc / "irq/27/smp_affinity_list"
    if breakage == "directory":
        target.unlink()
        target.mkdir()
        reason = "Is a directory"
    else:
        target.unlink()
        target.parent.rmdir()
        reason = "No such file or directory"
    before = ixgbe.files()
    res = run(ixgbe, "--apply")
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == (f"irq-affinity-plan: error: refusing to apply, nothing written: "
                          f"cannot write {target} ({reason})\n")
    assert ixgbe.files() == before


def test_verify_detects_drift_then_passes_after_apply(ixgbe):
    for n in (25, 26, 27, 28):
        write(ixgbe.proc / f"irq/{n}/smp_affinity_list", f"{n - 25}\n")
    write(ixgbe.proc / "irq/27/smp_affinity_list", "0-3\n")
    res = run(ixgbe, "--verify")
    assert res.returncode == 1
    assert res.stdout == ("drift: IRQ 27 eth0-TxRx-2: current 0-3, planned 2\n"
                          "verify eth0: 3 of 4 IRQs match the plan\n")
    doc = run_json(ixgbe, "--verify", rc=1)
    assert (doc["mode"], doc["ok"]) == ("verify", False)
    assert doc["drift"] == [{"irq": 27, "name": "eth0-TxRx-2", "current": [0, 1, 2, 3], "planned": 2}]
    assert run(ixgbe, "--apply").returncode == 0
    res = run(ixgbe, "--verify")
    assert (res.returncode, res.stdout) == (0, "verify eth0: 4 of 4 IRQs match the plan\n")
    assert run_json(ixgbe, "--verify")["drift"] == []


def test_verify_falls_back_to_hex_mask(ixgbe):
    for n in (25, 26, 27, 28):
        (ixgbe.proc / f"irq/{n}/smp_affinity_list").unlink()
        write(ixgbe.proc / f"irq/{n}/smp_affinity", f"00000000,{1 << (n - 25):08x}\n")
    write(ixgbe.proc / "irq/28/smp_affinity", "00000000,00000005\n")
    doc = run_json(ixgbe, "--verify", rc=1)
    assert doc["drift"] == [{"irq": 28, "name": "eth0-TxRx-3", "current": [0, 2], "planned": 3}]


def test_watch_json_flags_idle_queue(ixgbe):
    """The tool reports on stderr once it has taken the first sample; then we change the file."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--proc-root", str(ixgbe.proc),
                             "--sys-root", str(ixgbe.sys), "--iface", "eth0", "--watch", "0.5", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert first == f"irq-affinity-plan: sampled {ixgbe.proc}/interrupts, sleeping 0.5s\n"
    ixgbe.write_interrupts(bump={25: [10, 0, 0, 0], 26: [0, 7, 0, 1], 28: [0, 0, 0, 3], 0: [99] * 4})
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
    doc = json.loads(out)
    zero = {"0": 0, "1": 0, "2": 0, "3": 0}
    assert doc["mode"] == "watch" and doc["interval"] == 0.5
    assert doc["deltas"] == [
        {"irq": 25, "name": "eth0-TxRx-0", "queue": 0, "delta": 10, "per_cpu": {**zero, "0": 10}},
        {"irq": 26, "name": "eth0-TxRx-1", "queue": 1, "delta": 8, "per_cpu": {**zero, "1": 7, "3": 1}},
        {"irq": 27, "name": "eth0-TxRx-2", "queue": 2, "delta": 0, "per_cpu": zero},
        {"irq": 28, "name": "eth0-TxRx-3", "queue": 3, "delta": 3, "per_cpu": {**zero, "3": 3}},
    ]
    assert doc["cpu_totals"] == {"0": 10, "1": 7, "2": 0, "3": 4}
    assert doc["idle"] == [27]


def test_watch_text_with_injected_sleep(ixgbe, capsys):
    tool = load_tool()
    rc = tool.main(["--proc-root", str(ixgbe.proc), "--sys-root", str(ixgbe.sys), "--iface", "eth0",
                    "--watch", "2"],
                   sleep=lambda s: ixgbe.write_interrupts(bump={25: [5, 0, 0, 0], 26: [0, 5, 0, 0],
                                                                27: [0, 0, 5, 0]}))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines() == [
        "watch eth0: 4 queue IRQs over 2.0s",
        "IRQ  NAME         DELTA  PER-CPU",
        " 25  eth0-TxRx-0  5      cpu0:5",
        " 26  eth0-TxRx-1  5      cpu1:5",
        " 27  eth0-TxRx-2  5      cpu2:5",
        " 28  eth0-TxRx-3  0      -        IDLE",
        "per-CPU: cpu0:5 cpu1:5 cpu2:5 cpu3:0",
        "idle: IRQ 28 eth0-TxRx-3 took no interrupts in 2.0s",
    ]


@pytest.mark.parametrize("cpus, message", [
    ("3-1", "--cpus '3-1': range '3-1' is descending"),
    ("a", "--cpus 'a': 'a' is not a CPU number or range (expected e.g. 0-7,16-23)"),
    ("1,,2", "--cpus '1,,2': '' is not a CPU number or range (expected e.g. 0-7,16-23)"),
    ("0-", "--cpus '0-': '0-' is not a CPU number or range (expected e.g. 0-7,16-23)"),
    ("-1", "--cpus '-1': '-1' is not a CPU number or range (expected e.g. 0-7,16-23)"),
    (" ", "--cpus ' ': empty CPU list"),
    ("0-100000000", "--cpus '0-100000000': CPU 100000000 is beyond the kernel limit of 8192 CPUs"),
    ("2-9", "--cpus '2-9': CPUs 4-9 are not online (online: 0-3)"),
])
def test_bad_cpus_rejected(ixgbe, cpus, message):
    res = run(ixgbe, f"--cpus={cpus}")
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == f"irq-affinity-plan: error: {message}\n"


@pytest.mark.parametrize("args, message", [
    ((), "the following arguments are required: --iface"),
    (("--iface", "eth0", "--watch", "0"), "argument --watch: '0' is not a positive number of seconds"),
    (("--iface", "eth0", "--apply", "--verify"), "argument --verify: not allowed with argument --apply"),
    (("--iface", "eth0", "--watch", "inf"), "argument --watch: 'inf' is not a positive number of seconds"),
    (("--iface", "eth0", "--policy", "spread"), "argument --policy: invalid choice: "),
])
def test_usage_errors_are_one_line_exit_2(args, message):
    res = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=10)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr.startswith(f"irq-affinity-plan: error: {message}")
    assert res.stderr.endswith(" (see --help)\n") and res.stderr.count("\n") == 1


def test_apply_needs_root_on_real_proc(ixgbe, monkeypatch, capsys):
    tool = load_tool()
    monkeypatch.setattr(tool.os, "geteuid", lambda: 1000)
    assert tool.main(["--iface", "eth0", "--apply", "--sys-root", str(ixgbe.sys)]) == 1
    assert capsys.readouterr().err == ("irq-affinity-plan: error: --apply needs root to write "
                                       "/proc/irq/N/smp_affinity_list (try sudo)\n")


def test_queue_index_and_name_matching():
    tool = load_tool()
    nic = tool.Nic("eth0", "0000:3b:00.0", "0000:3b:00.0", 0, set())
    assert [tool.queue_index(n, nic) for n in (
        "eth0-TxRx-3", "eth0-rx-0", "i40e-eth0-TxRx-7", "mlx5_comp12@pci:0000:3b:00.0", "eth0")] == [3, 0, 7, 12, None]
    assert [tool.match_method(1, n, nic) for n in (
        "eth0-tx-2", "eth01-TxRx-0", "veth0", "mlx5_comp0@pci:0000:3b:00.0", "mlx5_comp0@pci:0000:3b:00.1")] == [
        "name", None, None, "pci", None]


def test_cpulist_round_trip():
    tool = load_tool()
    assert tool.parse_cpulist("0-7,16-23\n") == list(range(8)) + list(range(16, 24))
    assert tool.parse_cpulist("3,1,2-2") == [1, 2, 3]
    assert tool.format_cpulist([0, 1, 2, 3, 5, 7, 8]) == "0-3,5,7-8"
    assert tool.format_cpulist([]) == "-"


def test_help_and_system_python(ixgbe):
    """The script runs as an executable with the system python3 (no venv on PATH)."""
    assert os.access(SCRIPT, os.X_OK)
    res = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    for needle in ("--iface NAME", "examples:", "--json keys:", "exit status:", "round-robin"):
        assert needle in res.stdout
    res = subprocess.run([str(SCRIPT), "--proc-root", str(ixgbe.proc), "--sys-root", str(ixgbe.sys),
                          "--iface", "eth0", "--verify"], capture_output=True, text=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 1 and "0 of 4 IRQs match" in res.stdout


# Names as the drivers print them (drivers/net/ethernet/...: mlx5 eq.c, ena_netdev.c,
# i40e_main.c, ice_lib.c, ixgbe_main.c; virtio_net.c via virtio_pci "%s-input.%d").
DRIVER_NAMES = {
    "mlx5": [("mlx5_comp0@pci:0000:3b:00.0", 0), ("mlx5_comp3@pci:0000:3b:00.0", 3),
             ("mlx5_comp17@pci:0000:af:00.1", 17)],
    "ice": [("ice-ens2f0-TxRx-0", 0), ("ice-ens2f0-TxRx-3", 3), ("ice-ens2f0-TxRx-11", 11)],
    "i40e": [("i40e-enp5s0f1-TxRx-2", 2), ("i40e-enp5s0f1-TxRx-9", 9)],
    "ixgbe": [("enp1s0f0-TxRx-4", 4), ("enp1s0f0-rx-1", 1), ("enp1s0f0-tx-6", 6)],
    "virtio": [("virtio2-input.0", 0), ("virtio2-output.5", 5)],
    "ena": [("ens5-Tx-Rx-0", 0), ("ens5-Tx-Rx-7", 7)],
}


@pytest.mark.parametrize("family", sorted(DRIVER_NAMES))
def test_queue_index_per_driver_family_even_without_a_known_pci_address(family):
    """The queue number comes from the name's queue part, never from the PCI address or
    the interface name's digits - also when the tool could not learn the NIC's PCI
    address (auxiliary-bus mlx5, SR-IOV functions), where mlx5 names read as queue 0."""
    tool = load_tool()
    nic = tool.Nic("ens9", None, None, -1, set())
    for name, queue in DRIVER_NAMES[family]:
        assert tool.queue_index(name, nic) == queue, name


def test_mlx5_queues_found_by_msi_spread_over_cpus(tmp_path):
    box = Box(tmp_path)
    box.nic("ens1f0np0", pci="0000:3b:00.0", numa_node="0", child="mlx5_core.eth.0/net",
            msi=(90, 91, 92, 93, 94))
    box.irqs((90, "mlx5_async0@pci:0000:3b:00.0"), (91, "mlx5_comp0@pci:0000:3b:00.0"),
             (92, "mlx5_comp1@pci:0000:3b:00.0"), (93, "mlx5_comp2@pci:0000:3b:00.0"),
             (94, "mlx5_comp3@pci:0000:3b:00.0"))
    doc = run_json(box, "--no-ethtool", "--cpus", "0-3")
    assert [(q["irq"], q["queue"], q["planned"]) for q in doc["irqs"]] == [
        (91, 0, 0), (92, 1, 1), (93, 2, 2), (94, 3, 3)], doc


def test_ena_management_vector_is_not_a_queue(tmp_path):
    box = Box(tmp_path)
    box.nic("ens5", pci="0000:00:05.0", numa_node="0", msi=(30, 31, 32))
    box.irqs((30, "ena-mgmnt@pci:0000:00:05.0"), (31, "ens5-Tx-Rx-0"), (32, "ens5-Tx-Rx-1"))
    doc = run_json(box, "--no-ethtool", "--cpus", "0-1")
    assert [(q["irq"], q["queue"], q["planned"]) for q in doc["irqs"]] == [(31, 0, 0), (32, 1, 1)]
    assert doc["excluded"] == [{"irq": 30, "name": "ena-mgmnt@pci:0000:00:05.0",
                                "reason": "non-queue vector (mgmnt)"}]
