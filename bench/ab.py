"""A/B of two qpxd builds in one run: forward and reverse req/s, same layout as
``make bench`` (qpxd on CPU 0, wrk and the nginx origin on CPU 1), the two builds
measured round-robin so the host's drift hits both alike.

    python bench/ab.py REF [--runs 5] [--seconds 5] [--b-env QPXD_PURE=1]

``REF`` is a git revision (checked out into a temporary worktree) or a directory holding
another qpxd tree; B is this checkout.  Prints medians, min–max and B/A per section; a
restructuring should stay within ±3 %.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ROOT, NginxOrigin, Qpxd, cpu_seconds  # noqa: E402
from run import LOAD_CPU, PROXY_CPU, Bench, wrk  # noqa: E402


def tree(ref: str, work: Path) -> tuple[Path, bool]:
    """(source tree of ``ref``, whether it is a worktree to remove)."""
    if Path(ref).is_dir():
        return Path(ref).resolve(), False
    dest = work / "a"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), ref],
                   check=True, capture_output=True)
    return dest, True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of build B (e.g. QPXD_PURE=1 to A/B a compiled build)")
    ap.add_argument("--record", metavar="TITLE",
                    help="append the table to docs/ab-results.md under this title")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qpxd-ab-"))
    root_a, remove = tree(args.ref, work)
    b_env = dict(kv.split("=", 1) for kv in args.b_env) or None
    bench = Bench(argparse.Namespace(runs=args.runs, seconds=args.seconds))
    origin: NginxOrigin = bench.origin
    origin.start()
    results = {}
    try:
        env = {"ORIGIN": f"127.0.0.1:{origin.port}", "OBJ": "/100b", "BROWSER": "0"}
        fwd = [Qpxd(work, PROXY_CPU, label="A", root=root_a),
               Qpxd(work, PROXY_CPU, label="B", env=b_env)]
        results["forward"] = bench.interleaved(
            fwd, lambda p: wrk(f"http://127.0.0.1:{p.port}/", args.seconds, script=True,
                               env=env))
        rev = [Qpxd(work, PROXY_CPU, mode="reverse", origin_port=origin.port, label="A",
                    root=root_a),
               Qpxd(work, PROXY_CPU, mode="reverse", origin_port=origin.port, label="B",
                    env=b_env)]

        def reverse_once(p):
            pids = p.pids()
            c0 = cpu_seconds(pids)
            r = wrk(f"http://127.0.0.1:{p.port}/100b", args.seconds, script=False,
                    cpu=LOAD_CPU)
            r["req_per_cpu_s"] = r["rps"] * args.seconds / max(cpu_seconds(pids) - c0, 1e-9)
            return r
        results["reverse"] = bench.interleaved(rev, reverse_once)
    finally:
        origin.stop()
        if remove:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(root_a)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    table = render(results)
    head = (f"A = `{args.ref}`, B = this checkout{' with ' + str(b_env) if b_env else ''}; "
            f"{args.runs} runs of {args.seconds:g} s each, round-robin, medians (min–max).")
    print(head + "\n" + table)
    if args.record:
        import time

        with open(ROOT / "docs" / "ab-results.md", "a") as f:
            f.write(f"\n## {args.record}\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
                    f", command: `python bench/ab.py {' '.join(sys.argv[1:])}`\n\n"
                    f"{head}\n\n{table}\n")
    return 0


def render(results: dict) -> str:
    lines = ["| section | figure | A | B | B/A |", "|---|---|---|---|---|"]
    for section, rows in results.items():
        for key in ["rps"] + (["req_per_cpu_s"] if section == "reverse" else []):
            cells, med = {}, {}
            for row in rows:
                values = [r[key] for r in row.get("runs", [])]
                if values:
                    med[row["peer"]] = statistics.median(values)
                    cells[row["peer"]] = (f"{med[row['peer']]:,.0f} "
                                          f"({min(values):,.0f}–{max(values):,.0f})")
            ratio = f"{med['B'] / med['A']:.3f}" if len(med) == 2 else "–"
            lines.append(f"| {section} | {key} | {cells.get('A', '–')} | {cells.get('B', '–')} "
                         f"| {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
