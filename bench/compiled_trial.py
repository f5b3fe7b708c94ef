"""Would a compiled build pay?  Builds a Cython-compiled copy of this tree and A/Bs it
against the pure-Python tree with ``bench/ab.py`` (same run, round-robin).

    python bench/compiled_trial.py [--typed] [--modules a.py,b.py] [--runs 5] [--seconds 5]
                                   [--record TITLE]

The copy is a git worktree of HEAD in a temporary directory; the listed modules are
compiled in place there (``cythonize``, ``build_ext --inplace``), so the same ``.py``
files are the source of both builds.  ``--typed`` adds augmenting ``.pxd`` files that
turn the request and response parsers and their results into native classes with typed
attributes (Cython's pure-Python mode: the ``.py`` files stay unchanged).  qpxd ships no
compiled build: issue 22 kept one only at >= 1.15x forward req/s, and neither variant
came near it (docs/ab-results.md).  Needs Cython and a C compiler:
``.venv/bin/pip install cython``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The per-request path: parsing, head writing, the exchange, sessions, the edges, the
# byte movers, the pool, the rule prefilter, the policy and the access log.
HOT = ["qpx/http/request.py", "qpx/http/response.py", "qpx/http/writer.py",
       "qpx/http/headers.py", "qpx/edges/exchange.py", "qpx/edges/session.py",
       "qpx/edges/forward.py", "qpx/edges/reverse.py", "qpx/edges/common.py",
       "qpx/netio.py", "qpx/bodies.py", "qpx/upstream.py", "qpx/rules/prefilter.py",
       "qpx/policy.py", "qpx/log.py"]
TYPED = ["qpx/http/request.py", "qpx/http/response.py"]

PXD = {
    "qpx/http/request.pxd": """
cdef class Limits:
    cdef public Py_ssize_t max_line, max_head, max_count
    cdef public bint underscores
    cdef public object max_body

cdef class Request:
    cdef public bytes raw, low
    cdef public object method, target, scheme, host, port, path, content_length
    cdef public object conn_tokens, upgrade, _headers
    cdef public int version
    cdef public str form
    cdef public bint chunked, keep_alive, expect_continue, plain
    cdef public list drop

cdef class _Collect:
    cdef public bytes url
    cdef public bint done

cdef class RequestHeadParser:
    cdef public Limits limits
    cdef public object buf, _parser
    cdef public Py_ssize_t fed
    cdef public _Collect _sink
    cdef public bytes rest
""",
    "qpx/http/response.pxd": """
cdef class Response:
    cdef public int status, version
    cdef public bytes reason, raw
    cdef public object content_length, conn_tokens, _headers, cl_span
    cdef public bint chunked, keep_alive, has_date, plain
    cdef public list drop

cdef class _Collect:
    cdef public bytes reason
    cdef public bint done

cdef class ResponseHeadParser:
    cdef public Py_ssize_t max_head, fed
    cdef public object buf, _parser
    cdef public _Collect _sink
    cdef public bytes rest
""",
}

BUILD = """
import sys
from setuptools import setup
from Cython.Build import cythonize
sys.argv = ["setup", "build_ext", "--inplace"]
setup(name="qpxd-trial", ext_modules=cythonize(
    {modules!r}, nthreads=2, quiet=True,
    compiler_directives={{"language_level": 3, "annotation_typing": False}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--typed", action="store_true",
                    help="typed native classes for the parsers (compiles those two only, "
                         "unless --modules says otherwise)")
    ap.add_argument("--modules", help="comma list of modules to compile "
                                      "(default: the 15 per-request modules)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--record", metavar="TITLE", help="passed on to ab.py")
    args = ap.parse_args()
    try:
        import Cython  # noqa: F401
    except ImportError:
        print("compiled_trial: needs Cython: .venv/bin/pip install cython", file=sys.stderr)
        return 2
    modules = args.modules.split(",") if args.modules else (TYPED if args.typed else HOT)
    work = Path(tempfile.mkdtemp(prefix="qpxd-compiled-"))
    tree = work / "compiled"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), "HEAD"],
                   check=True, capture_output=True)
    try:
        if args.typed:
            for name, text in PXD.items():
                (tree / name).write_text(text.lstrip())
        subprocess.run([sys.executable, "-c", BUILD.format(modules=modules)], cwd=tree,
                       check=True)
        built = sorted(str(p.relative_to(tree)) for p in tree.glob("qpx/**/*.so"))
        print(f"compiled {len(built)} modules: {', '.join(built)}", flush=True)
        cmd = [sys.executable, str(tree / "bench" / "ab.py"), str(ROOT),
               "--runs", str(args.runs), "--seconds", str(args.seconds)]
        if args.record:
            cmd += ["--record", args.record]
        results = tree / "docs" / "ab-results.md"
        before = len(results.read_text())
        result = subprocess.run(cmd, cwd=tree)
        if args.record:  # ab.py appended to the worktree's copy: carry the new part over
            with open(ROOT / "docs" / "ab-results.md", "a") as f:
                f.write(results.read_text()[before:])
        return result.returncode
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
