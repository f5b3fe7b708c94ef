"""The scoreboard: a shared anonymous mmap the master creates before forking.

Entry 0 is the master's: its state (starting/running/reloading/stopping) and how many
workers it has — ``/health`` reads it.  Every other entry belongs to one live worker
process (assigned by the master at fork, freed when it is reaped): its pid, generation
and the ``time.monotonic()`` of its last heartbeat.  CLOCK_MONOTONIC is system-wide on
Linux, so master and workers compare the same clock.  Writes are single aligned 8-byte
stores; a torn read can only make a heartbeat look a beat older.
"""

from __future__ import annotations

import mmap
import struct

ENTRY = struct.Struct("=qqdq")  # pid, generation, last beat, state/count
SIZE = 1024

STARTING, RUNNING, RELOADING, STOPPING = range(4)


class Scoreboard:
    def __init__(self, entries: int = SIZE):
        self.entries = entries
        self.mem = mmap.mmap(-1, ENTRY.size * entries)
        self._free = list(range(entries - 1, 0, -1))

    # master side -------------------------------------------------------------

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError("scoreboard full")
        return self._free.pop()

    def release(self, entry: int) -> None:
        ENTRY.pack_into(self.mem, entry * ENTRY.size, 0, 0, 0.0, 0)
        self._free.append(entry)

    def set_master(self, state: int, workers: int) -> None:
        ENTRY.pack_into(self.mem, 0, state, workers, 0.0, 0)

    def last_beat(self, entry: int) -> float:
        return ENTRY.unpack_from(self.mem, entry * ENTRY.size)[2]

    # worker side -------------------------------------------------------------

    def beat(self, entry: int, pid: int, generation: int, now: float, connections: int) -> None:
        ENTRY.pack_into(self.mem, entry * ENTRY.size, pid, generation, now, connections)

    def master_state(self) -> tuple[int, int]:
        state, workers, _, _ = ENTRY.unpack_from(self.mem, 0)
        return state, workers
