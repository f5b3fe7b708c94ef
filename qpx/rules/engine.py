"""The public face of the rule engine: ``MatchContext`` and ``RuleSet``.

This module owns the API the daemon and the CLI use:

* :class:`MatchContext` - what is known about a request (every field optional);
* :class:`RuleSet` - an ordered list of compiled ``MatchSpec`` with ``first_match``
  (prefiltered, see prefilter.py), ``matching_indices``, ``explain`` and the linear
  reference scans used by the tests and the benchmark.

Rule sets are compiled once, in the master before fork, and are read-only
afterwards; the only per-request mutable state is the per-thread scratch of the
prefilter; per-request facts (how many candidates a match examined) are written into
the request's own :class:`MatchContext`.  Nothing here imports gevent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .matcher import compile_check, field_checks
from .patterns import ascii_lower
from .prefilter import Prefilter
from .validate import validate_match

if TYPE_CHECKING:  # qpx.config imports qpx.rules: no runtime import back
    from ..config.model import MatchSpec


class MatchContext:
    """One request as the rules see it; None means "the request has no such field".

    ``src_ip`` is a key from :func:`qpx.rules.parse_ip`; ``host``/``sni`` any case
    (the engine lowercases); ``method`` as sent; ``path`` with the query string;
    ``headers`` None or an object with ``get_all(lowercase_name) -> list[str]``.
    ``candidates`` is set by :meth:`RuleSet.first_match`: the rules it examined
    (prefilter survivors walked until the winner), for metrics.
    """

    __slots__ = ("src_ip", "dst_port", "host", "sni", "method", "path", "headers",
                 "candidates")

    def __init__(self, src_ip=None, dst_port=None, host=None, sni=None, method=None,
                 path=None, headers=None) -> None:
        self.src_ip = src_ip
        self.dst_port = dst_port
        self.host = host
        self.sni = sni
        self.method = method
        self.path = path
        self.headers = headers
        self.candidates = 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__[:-1]
                           if getattr(self, n) is not None)
        return f"MatchContext({fields})"


class RuleCompileError(ValueError):
    """A spec failed validation; ``errors`` lists ``(path, message)`` pairs where the
    path starts with the rule index."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))


def _lower(value):
    if value is None:
        return None
    return value.lower() if value.isascii() else ascii_lower(value)


class RuleSet:
    """Compiled rules in config order.

    ``first_match(ctx) -> int``: index of the first matching rule, -1 if none.
    ``matching_indices(ctx) -> list[int]``: every matching index, ascending.
    ``explain(ctx)``: ``(index, first failing field | None)`` up to the first match.
    ``first_match_linear`` / ``matching_indices_linear``: the reference scans.
    ``headers.get_all`` is called during matching and must not block or re-enter.
    """

    __slots__ = ("specs", "prefilter", "first_match", "matching_indices", "_full",
                 "_fields")

    def __init__(self, specs: Sequence[MatchSpec]) -> None:
        self.specs = tuple(specs)
        self.prefilter = Prefilter(self.specs)
        self._full = None  # per-rule full checks, built on first linear use
        self._fields: dict[int, list] = {}  # per-rule field checks, built by explain
        # bound once: the hot path is one call without attribute lookups on the class
        self.first_match = self.prefilter.bind_first_match()
        self.matching_indices = self.prefilter.bind_matching_indices()

    @classmethod
    def compile(cls, specs: Sequence[MatchSpec], *, validate: bool = True) -> "RuleSet":
        """Compile ``specs`` (0 .. 200 000 of them).  Raises RuleCompileError if any
        spec is invalid (``validate=False`` skips the check for specs already
        validated by the config loader)."""
        if validate:
            errors = []
            for i, spec in enumerate(specs):
                errors += [(f"{i}.{p}", m) for p, m in validate_match(spec)]
            if errors:
                raise RuleCompileError(errors)
        return cls(specs)

    def __len__(self) -> int:
        return len(self.specs)

    # ------------------------------------------------------------------ reference paths
    def _checks(self) -> list:
        if self._full is None:
            self._full = [compile_check(s) for s in self.specs]
        return self._full

    def first_match_linear(self, ctx: MatchContext) -> int:
        """First matching index by testing every rule in order (no prefilter)."""
        host, sni = _lower(ctx.host), _lower(ctx.sni)
        for i, check in enumerate(self._checks()):
            if check(ctx, host, sni):
                return i
        return -1

    def matching_indices_linear(self, ctx: MatchContext) -> list[int]:
        host, sni = _lower(ctx.host), _lower(ctx.sni)
        return [i for i, check in enumerate(self._checks()) if check(ctx, host, sni)]

    def explain(self, ctx: MatchContext) -> list[tuple[int, str | None]]:
        """``(index, first failing field)`` for every rule up to the first match,
        which is reported as ``(index, None)``.  Linear; for ``qpxd match``."""
        host, sni = _lower(ctx.host), _lower(ctx.sni)
        out: list[tuple[int, str | None]] = []
        for i, spec in enumerate(self.specs):
            checks = self._fields.get(i)
            if checks is None:
                checks = self._fields[i] = field_checks(spec)
            failed = next((name for name, fn in checks if not fn(ctx, host, sni)), None)
            out.append((i, failed))
            if failed is None:
                break
        return out

    def candidates(self, ctx: MatchContext) -> list[int]:
        """Every rule the prefilter lets through (ascending), before full matching."""
        return self.prefilter.candidates(ctx, _lower(ctx.host), _lower(ctx.sni))
