"""runtime.cpu_affinity: CPU lists and the NIC's NUMA-local CPUs (fake sysfs trees)."""

from __future__ import annotations

import pytest

from qpx.affinity import numa_local_cpus, parse_cpulist
from qpx.config.build import parse_cpu_list


def fake_sys(tmp_path, node: str | None, nodes: dict[int, str], online: str = "0-7"):
    dev = tmp_path / "class/net/eth0/device"
    dev.mkdir(parents=True)
    if node is not None:
        (dev / "numa_node").write_text(node + "\n")
    for n, cpus in nodes.items():
        d = tmp_path / f"devices/system/node/node{n}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    cpu = tmp_path / "devices/system/cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    (cpu / "online").write_text(online + "\n")
    return str(tmp_path)


def test_nic_on_node_one_of_two(tmp_path):
    root = fake_sys(tmp_path, "1", {0: "0-3", 1: "4-7"})
    assert numa_local_cpus("eth0", root) == [4, 5, 6, 7]


def test_unknown_node_means_all_online_cpus(tmp_path):
    root = fake_sys(tmp_path, "-1", {}, online="0-2,5")
    assert numa_local_cpus("eth0", root) == [0, 1, 2, 5]
    root2 = fake_sys(tmp_path / "b", None, {}, online="0-1")
    assert numa_local_cpus("eth0", root2) == [0, 1]


@pytest.mark.parametrize("text,cpus", [("0-3", (0, 1, 2, 3)), ("0, 2-3,8", (0, 2, 3, 8)),
                                       ("3,3,1", (3, 1)), ("3-1", None), ("a", None),
                                       ("1-", None)])
def test_cpu_list_syntax(text, cpus):
    assert parse_cpu_list(text) == cpus


def test_sysfs_cpulist_parser():
    assert parse_cpulist("0-1,4,6-7\n") == [0, 1, 4, 6, 7]
