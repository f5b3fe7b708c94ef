"""CPU placement: the NUMA-local CPUs of a NIC, for ``runtime.cpu_affinity: auto``.

The same sysfs lookup as ``contrib/irq/irq-affinity-plan``: the NIC's
``device/numa_node``, then that node's ``cpulist``; all online CPUs when the node is
unknown (-1, or no NUMA information), so worker pinning follows the IRQ plan.
"""

from __future__ import annotations

import os


def parse_cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def numa_local_cpus(iface: str, sys_root: str = "/sys") -> list[int]:
    node = _read(os.path.join(sys_root, "class/net", iface, "device/numa_node"))
    if node is not None and node.lstrip("-").isdigit() and int(node) >= 0:
        cpus = _read(os.path.join(sys_root, f"devices/system/node/node{int(node)}/cpulist"))
        if cpus:
            return parse_cpulist(cpus)
    online = _read(os.path.join(sys_root, "devices/system/cpu/online"))
    return parse_cpulist(online) if online else sorted(os.sched_getaffinity(0))


def cpu_plan(cfg) -> list[int] | None:
    """The CPUs workers are pinned to, in order, or None for no pinning."""
    aff = cfg.runtime.cpu_affinity
    if aff is None:
        return None
    if aff == "auto":
        return numa_local_cpus(cfg.runtime.cpu_affinity_iface or "")
    return list(aff)
