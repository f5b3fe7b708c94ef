"""Text patterns of ``host``, ``sni`` and ``path``: classification and glob compilation.

This module owns the pattern language of rule text fields:

* **classification** - a pattern without any of ``* ? [ ] { }`` is *exact*;
  ``*.`` followed by a non-empty exact rest is a *domain suffix* (host/sni only:
  matches inputs ending with ``"." + rest``, i.e. strictly below that domain on a
  label boundary); everything else is a *glob*;
* **globs** with globset-like syntax, translated to Python regular expressions:
  ``*`` any run of characters (including ``/`` and ``.``; ``**`` is the same as
  ``*``), ``?`` one character, ``[abc]`` / ``[a-z]`` / ``[!abc]`` / ``[^abc]``
  classes (``]`` first in a class and ``-`` first or last are literal; no escapes
  inside a class), ``{a,b}`` alternation (nestable; an empty alternative matches the
  empty string), ``\\x`` a literal ``x`` outside classes;
* **ASCII lowercasing** of host/SNI patterns and inputs.

Globs are matched against attacker-controlled text (paths up to the request-line
limit), so the translation must not backtrack catastrophically: alternations are
expanded into flat alternatives, and in each alternative every interior
``* fixed`` pair becomes an atomic ``(?>.*?fixed)`` (fixed = literals, ``?`` and
classes, each exactly one character, so committing to the leftmost occurrence is
always correct) - the technique of CPython's ``fnmatch.translate``.  Matching is
then linear-ish in the input for every alternative.  matcher.py goes further and
matches literal-only alternatives with string methods (:func:`literal_segments`,
:func:`literal_chain`), keeping regexes for alternatives with ``?`` or classes.
"""

from __future__ import annotations

import re

GLOB_META = frozenset("*?[]{}")
MAX_ALTERNATIVES = 1024

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}

EXACT, SUFFIX, GLOB = "exact", "suffix", "glob"


class GlobError(ValueError):
    """A malformed glob; ``str(err)`` is the reason without the pattern."""


def ascii_lower(text: str) -> str:
    """Lowercase ASCII letters only (host names are ASCII; non-ASCII stays as is)."""
    if text.isascii():
        return text.lower()
    return text.translate(_ASCII_LOWER)


_META_SEARCH = re.compile(r"[*?\[\]{}]").search


def has_meta(text: str) -> bool:
    return _META_SEARCH(text) is not None


def classify(pattern: str, *, allow_suffix: bool) -> tuple[str, str]:
    """Return ``(kind, value)``: (EXACT, pattern), (SUFFIX, rest after ``*.``) or
    (GLOB, pattern)."""
    if not has_meta(pattern):
        return EXACT, pattern
    if allow_suffix and pattern.startswith("*.") and len(pattern) > 2:
        rest = pattern[2:]
        if not has_meta(rest):
            return SUFFIX, rest
    return GLOB, pattern


# --------------------------------------------------------------------------- glob parsing
# Tokens: ("L", char) literal, ("C", regex) class, ANY ("?"), STAR, ("A", branches).

STAR = "*"
ANY = "?"


def _parse(glob: str) -> list:
    """Parse into a nested token list; raise GlobError on malformed input."""
    stack: list[tuple[list, list]] = []  # (tokens before the group, finished branches)
    cur: list = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            if not cur or cur[-1] != STAR:
                cur.append(STAR)
        elif c == "?":
            cur.append(ANY)
        elif c == "[":
            frag, i = _parse_class(glob, i)
            cur.append(("C", frag))
        elif c == "{":
            stack.append((cur, []))
            cur = []
        elif c == "," and stack:
            stack[-1][1].append(cur)
            cur = []
        elif c == "}":
            if not stack:
                raise GlobError("unopened alternate group")
            outer, branches = stack.pop()
            branches.append(cur)
            outer.append(("A", branches))
            cur = outer
        elif c == "\\":
            if i >= n:
                raise GlobError("dangling escape")
            cur.append(("L", glob[i]))
            i += 1
        else:
            cur.append(("L", c))
    if stack:
        raise GlobError("unclosed alternate group")
    return cur


def _parse_class(glob: str, i: int) -> tuple[str, int]:
    """Parse a class whose '[' ends just before ``i``; return (regex, next index)."""
    n = len(glob)
    negated = i < n and glob[i] in "!^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    first = True
    in_range = False
    while True:
        if i >= n:
            raise GlobError("unclosed character class")
        c = glob[i]
        i += 1
        if c == "]" and not first:
            break
        if c == "-" and not first:
            if in_range:
                lo = ranges[-1][0]
                if "-" < lo:
                    raise GlobError(f"invalid range '{lo}--'")
                ranges[-1] = (lo, "-")
                in_range = False
            else:
                in_range = True
        elif in_range:
            lo = ranges[-1][0]
            if c < lo:
                raise GlobError(f"invalid range '{lo}-{c}'")
            ranges[-1] = (lo, c)
            in_range = False
        else:
            ranges.append((c, c))
        first = False
    if in_range:
        ranges.append(("-", "-"))
    body = "".join(re.escape(a) if a == b else f"{re.escape(a)}-{re.escape(b)}"
                   for a, b in ranges)
    return (f"[^{body}]" if negated else f"[{body}]"), i


def _expand(tokens: list) -> list[list]:
    """Expand alternations into flat token lists (at most MAX_ALTERNATIVES)."""
    results: list[list] = [[]]
    for tok in tokens:
        if tok[0] == "A":
            options: list[list] = []
            for branch in tok[1]:
                options.extend(_expand(branch))
            new = []
            for prefix in results:
                for opt in options:
                    new.append(prefix + opt)
                    if len(new) > MAX_ALTERNATIVES:
                        raise GlobError(
                            f"alternation expands to more than {MAX_ALTERNATIVES} patterns")
            results = new
        else:
            for r in results:
                r.append(tok)
    out = []
    for r in results:  # "*{*,a}" -> "**" -> "*"
        flat: list = []
        for t in r:
            if t == STAR and flat and flat[-1] == STAR:
                continue
            flat.append(t)
        out.append(flat)
    return out


def glob_alternatives(glob: str) -> list[list]:
    """The flat alternatives of ``glob`` (tokens without alternation), deduplicated."""
    seen: dict[tuple, list] = {}
    for alt in _expand(_parse(glob)):
        seen.setdefault(tuple(alt), alt)
    return list(seen.values())


def _one(tok) -> str:
    if tok == ANY:
        return "."
    if tok[0] == "L":
        return re.escape(tok[1])
    return tok[1]


def alternative_regex(tokens: list) -> str:
    """One flat alternative -> regex for ``fullmatch`` (atomic interior stars)."""
    out: list[str] = []
    i, n = 0, len(tokens)
    while i < n and tokens[i] != STAR:
        out.append(_one(tokens[i]))
        i += 1
    while i < n:
        i += 1  # the star
        if i == n:
            out.append(".*")
            break
        fixed = []
        while i < n and tokens[i] != STAR:
            fixed.append(_one(tokens[i]))
            i += 1
        if i == n:
            out.append(".*" + "".join(fixed))
        else:
            out.append("(?>.*?" + "".join(fixed) + ")")
    return "".join(out)


def glob_regex(glob: str) -> str:
    """Translate a glob to a regex source meant for ``fullmatch`` with DOTALL."""
    parts = list(dict.fromkeys(alternative_regex(a) for a in glob_alternatives(glob)))
    if len(parts) == 1:
        return parts[0]
    return "(?:" + "|".join(parts) + ")"


def check_glob(glob: str) -> str | None:
    """Return the reason ``glob`` is malformed, or None."""
    try:
        re.compile(glob_regex(glob), re.DOTALL)
    except GlobError as exc:
        return str(exc)
    except re.error as exc:  # pragma: no cover - the translation should never fail
        return f"cannot compile: {exc}"
    return None


def literal_segments(tokens: list) -> list[str] | None:
    """For an alternative made only of literals and stars: the literal runs between
    stars (``"a*b*"`` -> ``["a", "b", ""]``, always len = stars + 1); else None."""
    segs = [""]
    for t in tokens:
        if t == STAR:
            segs.append("")
        elif t != ANY and t[0] == "L":
            segs[-1] += t[1]
        else:
            return None
    return segs


def longest_literal(tokens: list) -> str:
    """The longest run of literal characters in an alternative (a required substring)."""
    best, cur = "", ""
    for t in tokens:
        if t != STAR and t != ANY and t[0] == "L":
            cur += t[1]
            if len(cur) > len(best):
                best = cur
        else:
            cur = ""
    return best


def literal_chain(prefix: str, middles: tuple[str, ...], suffix: str):
    """Matcher for ``prefix*m1*m2*...*suffix`` (literal pieces): leftmost-first search
    of each middle piece is optimal, so this never backtracks."""
    lp, ls = len(prefix), len(suffix)
    need = lp + ls + sum(len(m) for m in middles)

    def match(x: str) -> bool:
        if len(x) < need or not x.startswith(prefix) or not x.endswith(suffix):
            return False
        pos, end = lp, len(x) - ls
        for m in middles:
            i = x.find(m, pos, end)
            if i < 0:
                return False
            pos = i + len(m)
        return True

    return match
