"""What ``check`` and ``run`` verify on this host beyond the schema: that the log files
can be written (a missing or read-only directory would otherwise surface only as
workers writing the access log to stderr), and that ports below 1024 can be bound
(a warning: ``check`` may run as another user than the service).

Each finding names the key and the value at fault.
"""

from __future__ import annotations

import os

from .config.model import Config

CAP_NET_BIND_SERVICE = 10


def _writable(path: str) -> str | None:
    """Why ``path`` cannot be opened for appending, or None."""
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "is not writable"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    return None


def _can_bind_low_ports() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError):
        pass
    return False


def preflight(cfg: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings) about this host for ``cfg``."""
    errors: list[str] = []
    warnings: list[str] = []
    for key in ("access_log", "error_log"):
        path = getattr(cfg.logging, key)
        if path and path != "-":
            why = _writable(path)
            if why:
                errors.append(f"logging.{key}: {path!r} cannot be written: {why}")
    addrs = [(f"listeners.{i}.listen", lst.listen) for i, lst in enumerate(cfg.listeners)]
    addrs += [(f"reverse.{i}.listen", rv.listen) for i, rv in enumerate(cfg.reverse)]
    if cfg.metrics is not None:
        addrs.append(("metrics.listen", cfg.metrics.listen))
    low = [(k, a) for k, a in addrs if 0 < a.port < 1024]
    if low and not _can_bind_low_ports():
        for key, addr in low:
            warnings.append(f"{key}: port {addr.port} is below 1024: binding it needs root "
                            "or CAP_NET_BIND_SERVICE, which this process does not have")
    return errors, warnings
