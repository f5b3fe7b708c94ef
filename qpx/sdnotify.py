"""systemd ``Type=notify`` support: READY=1, RELOADING=1, STOPPING=1 to $NOTIFY_SOCKET.

A no-op when the variable is unset (not started by systemd).  RELOADING=1 carries
MONOTONIC_USEC as systemd ≥ 253 asks for ``Type=notify-reload``; older versions ignore it.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    msg = "\n".join(states)
    if "RELOADING=1" in states:
        msg += f"\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(msg.encode())
        return True
    except OSError:
        return False
