"""TLS inspection: what a leaf certificate costs, cold (generated and written to the
disk cache), from the disk cache (another worker or a restart), and warm (this worker's
memory).  Run: .venv/bin/python bench/leaf_cost.py"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpx import ca  # noqa: E402


def main(n: int = 200) -> None:
    with tempfile.TemporaryDirectory() as d:
        ca.generate(d)
        authority = ca.load(d)
        store = ca.LeafStore(authority, f"{d}/leaves")
        hosts = [f"h{i}.example.test" for i in range(n)]
        t0 = time.perf_counter()
        for h in hosts:
            store.context(h)
        cold = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for h in hosts:
            store.context(h)
        warm = (time.perf_counter() - t0) / n
        fresh = ca.LeafStore(authority, f"{d}/leaves")  # another worker, or a restart
        t0 = time.perf_counter()
        for h in hosts:
            fresh.context(h)
        disk = (time.perf_counter() - t0) / n
    print(f"leaf per host: cold {cold * 1000:.2f} ms, from disk {disk * 1000:.2f} ms, "
          f"warm {warm * 1e6:.1f} µs ({n} hosts)")


if __name__ == "__main__":
    main()
