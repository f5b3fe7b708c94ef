"""The full matcher: the authoritative semantics of one rule (``MatchSpec``).

This module owns what "rule i matches request r" means; the prefilter only narrows
which rules get here.  A rule compiles to one Python function
``check(ctx, host, sni) -> bool`` where ``host``/``sni`` are the request's values
already ASCII-lowercased by the caller (once per request, not per rule):

* ``src_ip``: the key (see iptrie.parse_ip) lies in one of the CIDRs
  (``key >> shift == value`` per CIDR, a prefix trie for more than 4);
* ``dst_port`` / ``method``: membership (methods uppercased at compile time, the
  request method compared as is);
* ``host`` / ``sni``: exact set, then ``*.suffix`` (``host.endswith("." + suffix)``),
  then globs;
* ``path``: exact set or glob, case-sensitive, query string included;
* ``headers[k]``: name case-insensitive (``ctx.headers.get_all(lname)``); regex ->
  unanchored ``re.search`` on each value, else value -> exact equality with one of
  the values, else presence.

AND across fields (cheap fields first), OR within a field; a field the rule names
but the request lacks (None) fails.

The function is generated: per *shape* (which fields, which pattern strategies) one
factory is ``exec``-ed and cached, and each rule calls it with its constants, so a
check is a single Python frame with the tests inlined.  Globs use string-method
strategies where they can (``P*`` -> startswith, ``*S`` -> endswith, ``*M*`` -> ``in``,
literal chains -> ``find``), else their regex (guarded by a required literal).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .iptrie import CidrSet, cidr_test, parse_cidr
from .patterns import (
    EXACT,
    SUFFIX,
    alternative_regex,
    ascii_lower,
    classify,
    glob_alternatives,
    glob_regex,
    literal_chain,
    literal_segments,
    longest_literal,
)

if TYPE_CHECKING:  # qpx.config imports qpx.rules: no runtime import back
    from ..config.model import MatchSpec

FIELD_ORDER = ("src_ip", "dst_port", "host", "sni", "method", "path")  # config order
_FAST_ORDER = ("method", "dst_port", "src_ip", "host", "sni", "path")  # evaluation order
_MAX_INLINE_ALTERNATIVES = 8
_MAX_INLINE_CIDRS = 4


def lower_keep(text: str) -> str:
    """ASCII-lowercase, returning the same object when nothing changes (so compiled
    tables share the strings of the config)."""
    low = ascii_lower(text)
    return text if low == text else low


class TextPatterns:
    """The patterns of one text field of one rule, by class (deduplicated)."""

    __slots__ = ("exact", "suffixes", "globs")

    def __init__(self, patterns, *, lower: bool) -> None:
        exact: dict[str, None] = {}
        suffixes: dict[str, None] = {}
        globs: dict[str, None] = {}
        for p in patterns:
            if lower:
                p = lower_keep(p)
            kind, value = classify(p, allow_suffix=lower)
            (exact if kind == EXACT else suffixes if kind == SUFFIX else globs)[value] = None
        self.exact = tuple(exact)
        self.suffixes = tuple(suffixes)
        self.globs = tuple(globs)


# --------------------------------------------------------------------------- code generation


class _Gen:
    """Accumulates the body of one check function and its constants."""

    __slots__ = ("lines", "consts")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list = []

    def k(self, value) -> str:
        self.consts.append(value)
        return f"_{len(self.consts) - 1}"

    def emit(self, line: str) -> None:
        self.lines.append("        " + line)


_FACTORIES: dict[str, object] = {}


def _finish(g: _Gen):
    params = ", ".join(f"_{i}" for i in range(len(g.consts)))
    body = "\n".join(g.lines)
    src = (f"def make({params}):\n"
           f"    def check(c, h, s):\n{body}\n        return True\n"
           f"    return check\n")
    factory = _FACTORIES.get(src)
    if factory is None:
        ns: dict = {}
        exec(compile(src, "<qpx.rules check>", "exec"), ns)  # noqa: S102 - our own text
        factory = _FACTORIES[src] = ns["make"]
    return factory(*g.consts)


def _glob_parts(g: _Gen, var: str, glob: str) -> list[str]:
    """Boolean expressions over ``var``; the glob matches iff one is true."""
    alts = glob_alternatives(glob)
    if len(alts) > _MAX_INLINE_ALTERNATIVES:
        rx = re.compile(glob_regex(glob), re.DOTALL).fullmatch
        return [f"{g.k(rx)}({var}) is not None"]
    parts = []
    for alt in alts:
        segs = literal_segments(alt)
        if segs is None:  # has ? or a class: regex, guarded by a required literal
            rx = re.compile(alternative_regex(alt), re.DOTALL).fullmatch
            lit = longest_literal(alt)
            expr = f"{g.k(rx)}({var}) is not None"
            parts.append(f"({g.k(lit)} in {var} and {expr})" if len(lit) >= 2 else expr)
        elif len(segs) == 1:
            parts.append(f"{var} == {g.k(segs[0])}")
        elif len(segs) == 2:
            pre, suf = segs
            if not pre and not suf:
                return ["True"]
            if not suf:
                parts.append(f"{var}.startswith({g.k(pre)})")
            elif not pre:
                parts.append(f"{var}.endswith({g.k(suf)})")
            else:
                parts.append(f"(len({var}) >= {g.k(len(pre) + len(suf))} and "
                             f"{var}.startswith({g.k(pre)}) and {var}.endswith({g.k(suf)}))")
        elif len(segs) == 3 and not segs[0] and not segs[2]:
            parts.append(f"{g.k(segs[1])} in {var}")
        else:
            fn = literal_chain(segs[0], tuple(segs[1:-1]), segs[-1])
            parts.append(f"{g.k(fn)}({var})")
    return parts


def _emit_text(g: _Gen, var: str, tp: TextPatterns) -> None:
    """Fail unless the text value ``var`` (h, s or x) matches one of the patterns."""
    if not tp.suffixes and not tp.globs:  # None never equals / is never in the set
        if len(tp.exact) == 1:
            g.emit(f"if {var} != {g.k(tp.exact[0])}: return False")
        else:
            g.emit(f"if {var} not in {g.k(frozenset(tp.exact))}: return False")
        return
    parts: list[str] = []
    if tp.exact:
        parts.append(f"{var} in {g.k(frozenset(tp.exact))}")
    if tp.suffixes:
        dotted = tuple("." + x for x in tp.suffixes)
        parts.append(f"{var}.endswith({g.k(dotted if len(dotted) > 1 else dotted[0])})")
    for glob in tp.globs:
        parts.extend(_glob_parts(g, var, glob))
    g.emit(f"if {var} is None: return False")
    if "True" not in parts:
        g.emit(f"if not ({' or '.join(parts)}): return False")


def _emit_field(g: _Gen, name: str, spec) -> None:
    if name == "method":
        methods = tuple(dict.fromkeys(m.upper() for m in spec.method))
        if len(methods) == 1:
            g.emit(f"if c.method != {g.k(methods[0])}: return False")
        else:
            g.emit(f"if c.method not in {g.k(frozenset(methods))}: return False")
    elif name == "dst_port":
        ports = tuple(dict.fromkeys(spec.dst_port))
        if len(ports) == 1:
            g.emit(f"if c.dst_port != {g.k(ports[0])}: return False")
        else:
            g.emit(f"if c.dst_port not in {g.k(frozenset(ports))}: return False")
    elif name == "src_ip":
        tests = tuple(dict.fromkeys(cidr_test(*parse_cidr(x)) for x in spec.src_ip))
        if len(tests) > _MAX_INLINE_CIDRS:
            g.emit(f"if not {g.k(CidrSet(spec.src_ip).contains)}(c.src_ip): return False")
        else:
            g.emit("ip = c.src_ip")
            g.emit("if ip is None: return False")
            conds = " and ".join(f"ip >> {g.k(sh)} != {g.k(v)}" for sh, v in tests)
            g.emit(f"if {conds}: return False")
    elif name == "host":
        _emit_text(g, "h", TextPatterns(spec.host, lower=True))
    elif name == "sni":
        _emit_text(g, "s", TextPatterns(spec.sni, lower=True))
    elif name == "path":
        tp = TextPatterns(spec.path, lower=False)
        if tp.globs:
            g.emit("x = c.path")
            _emit_text(g, "x", tp)
        elif len(tp.exact) == 1:
            g.emit(f"if c.path != {g.k(tp.exact[0])}: return False")
        else:
            g.emit(f"if c.path not in {g.k(frozenset(tp.exact))}: return False")
    else:  # pragma: no cover
        raise ValueError(name)


def _emit_header(g: _Gen, hm, fetched: bool) -> None:
    if not fetched:
        g.emit("hs = c.headers")
        g.emit("if hs is None: return False")
    name = g.k(hm.name.lower())
    if hm.regex is not None:
        g.emit(f"for v in hs.get_all({name}):")
        g.emit(f"    if {g.k(re.compile(hm.regex).search)}(v) is not None: break")
        g.emit("else:")
        g.emit("    return False")
    elif hm.value is not None:
        g.emit(f"if {g.k(hm.value)} not in hs.get_all({name}): return False")
    else:
        g.emit(f"if not hs.get_all({name}): return False")


def _named(spec, name: str) -> bool:
    return bool(getattr(spec, name))


def compile_check(spec: "MatchSpec", skip: str | None = None):
    """The check of ``spec`` (every field but ``skip``), cheap fields first."""
    g = _Gen()
    for name in _FAST_ORDER:
        if name != skip and _named(spec, name):
            _emit_field(g, name, spec)
    for k, hm in enumerate(spec.headers):
        _emit_header(g, hm, fetched=k > 0)
    if not g.lines:
        return always_true
    return _finish(g)


def always_true(c, h, s) -> bool:
    return True


def field_checks(spec: "MatchSpec") -> list[tuple[str, object]]:
    """``(field name, check)`` per named field, in config order (for explain)."""
    out = []
    for name in FIELD_ORDER:
        if _named(spec, name):
            g = _Gen()
            _emit_field(g, name, spec)
            out.append((name, _finish(g)))
    for k, hm in enumerate(spec.headers):
        g = _Gen()
        _emit_header(g, hm, fetched=False)
        out.append((f"headers.{k}", _finish(g)))
    return out
