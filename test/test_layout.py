"""The layering DESIGN.md promises, checked on the source: who may import whom, where
HTTP heads are written, and how big a module or a function may grow."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

QPX = Path(__file__).resolve().parents[1] / "qpx"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(QPX.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names (relative ones resolved)."""
    package = ".".join(path.relative_to(QPX.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                name = f"{prefix}.{node.module}" if node.module else prefix
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def rel(path: Path) -> str:
    return str(path.relative_to(QPX.parent))


@pytest.mark.parametrize("path", sorted((QPX / "http").glob("*.py")), ids=rel)
def test_http_is_sans_io(path):
    bad = {m for m in imported(path)
           if m.split(".")[0] == "gevent" or m.startswith(("qpx.netio", "qpx.config",
                                                             "qpx.edges", "qpx.relay",
                                                             "qpx.bodies", "qpx.upstream",
                                                             "qpx.policy"))}
    assert not bad, f"{rel(path)} imports {sorted(bad)}: qpx/http/ parses and writes only"


EDGES = ("forward", "reverse", "transparent", "status")


@pytest.mark.parametrize("edge", EDGES)
def test_no_edge_imports_another_edge(edge):
    others = {f"qpx.edges.{e}" for e in EDGES if e != edge}
    hits = {m for m in imported(QPX / "edges" / f"{edge}.py")
            if any(m == o or m.startswith(o + ".") for o in others)}
    assert not hits, f"edges/{edge}.py imports {sorted(hits)}: share through edges/common.py"


@pytest.mark.parametrize("name", ["arbiter.py", "listeners.py", "cli.py", "scoreboard.py"])
def test_the_master_never_imports_gevent(name):
    assert not {m for m in imported(QPX / name) if m.split(".")[0] == "gevent"}


_HEAD_LITERAL = re.compile(rb"HTTP/1\.[01]|^[A-Za-z][A-Za-z-]*: ")


def test_only_the_http_package_writes_heads():
    """No bytes literal that looks like a status/request line or a header field
    outside qpx/http/ (the writer module owns every head qpxd sends)."""
    found = []
    for path in modules():
        if path.parent.name == "http":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, bytes) \
                    and _HEAD_LITERAL.search(node.value):
                found.append(f"{rel(path)}:{node.lineno}: {node.value[:40]!r}")
    assert not found, "\n".join(found)


def test_module_and_function_sizes():
    too_big = []
    for path in modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{rel(path)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_big.append(f"{rel(path)}:{node.lineno} {node.name}(): {n} lines")
    assert not too_big, "\n".join(too_big)


def test_every_module_says_what_it_owns():
    missing = [rel(p) for p in modules() if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"
