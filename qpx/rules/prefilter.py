"""The rule prefilter: which rules can match a request at all, in ascending order.

This module owns the per-dimension index and the per-request candidate walk.

Masks
-----
Six dimensions, ANDed in this order: method, dst_port, src_ip, host, sni, path.  For
a request, dimension d admits rule i iff i is *free* in d (the rule does not name the
field, or names a glob there - globs and header conditions are never prefiltered) or
one of i's values in d is *hit* by the request (method/port equality, a CIDR
containing the address, an exact host/SNI/path, a ``*.suffix`` on a label boundary).
The survivors are the AND of the six admit masks.

* ``free[d]`` are bytearray bitsets (``bitset.BitSet``, N bits).  Their AND is the
  *always* mask: rules indexable in no dimension (catch-alls, glob-only and
  header-only rules); it is computed once, at compile time, and kept as a sorted
  tuple of ids.
* The per-value masks are kept sparse, as sorted id tuples ("posting lists") in a
  dict per dimension (method, port, exact host/SNI/path), a label suffix trie
  (flattened: one dict keyed by the suffix text, marker nodes for the inner labels)
  and a level-compressed binary prefix trie per family for CIDRs (iptrie.PrefixTrie).
* Each rule is posted under ONE *key* dimension only: among the dimensions it
  constrains without globs, the one whose values are shared by the fewest rules
  (weighted by how many requests carry such a value: port/method 16, src_ip 2,
  host/sni/path 1).  A survivor must be admitted by its key dimension without
  being free there, i.e. hit there, so ``survivors ⊆ always ∪ (postings the request
  hits)``.  The other dimensions of a keyed rule are tested by its *rest* check
  (matcher.compile_check without the key field; None when the key field is the whole
  rule, as for the typical blocklist entry) - which makes the walk return exactly
  the first survivor that fully matches.

Query (``first_match``)
-----------------------
Lowercase host/SNI once; gather into the per-thread scratch list the posting tuples
hit: a dict probe per method/port/path/exact host, root-first walks of the prefix
trie and of the suffix trie that stop at the first missing node; sort the few ids
(timsort, C); walk them ascending, skipping repeats, merged with the always tuple;
the first rule whose rest/full check passes wins.  ``ctx.candidates`` = rules
examined by that walk (keyed candidates + always-candidates up to the winner).

Scratch: one list per native thread (``threading.local()``, created at import, before
any monkey-patching).  gevent runs one hub per thread and matching never yields nor
re-enters, so one scratch per thread is exactly one per hub.  The list keeps its
capacity; a lookup allocates only the lowercased host/SNI, the suffix slices and
small ints - nothing proportional to the rule count (test_rules.py checks it with
tracemalloc: 474 B peak above baseline over 10 000 lookups, the same at 2 000 and
60 000 rules, nothing retained).

Measurements (AMD EPYC, 2 vCPU KVM, Python 3.11.7, one core via taskset; medians;
``python bench/bench_rules.py --alternatives`` reproduces them)
--------------------------------------------------------------------------------------
Representation alone - 6 dense masks ANDed with early stop, <= 5 survivors listed,
no full match (the PERFORMANCE.md setting), µs per lookup:

    rules     int masks   bytearray+from_bytes   bytearray+memoryview('Q') loop   selective-first
    1 000       1.07             2.11                      14.0                        9.8
    10 000      3.61             9.00                     114                          9.8
    100 000    22.2             66.2                     1204                          9.1

int masks and from_bytes allocate ∝ rules per lookup (excluded by the design card);
the memoryview loop is ∝ rules in Python bytecode; "selective-first" walks a 50-id
list of the most selective dimension and bit-tests the other five bytearray masks.
On the realistic rule mix (bench_rules.make_rules) the most selective dimension's
list is not 50 ids: it includes every rule free in that dimension (all rules without
a host, 7.5 %), so selective-first took 30 / 234 / 4 045 µs at 1k / 10k / 100k rules,
against 2.7 / 2.6 / 3.7-7.1 µs for the keyed postings chosen here (all including the
full match).  Dense per-value masks are not an option at that scale anyway: 100 000
rules name ~96 000 distinct hosts, one 12.5 kB mask each is ~1.2 GB; the chosen index costs
~230 B per rule in total (tracemalloc, 100 000 rules: 23 MB).  Storing the posting
lists as windowed bytearray bitsets instead of tuples: 241 ns instead of 60 ns to
list a 1-id posting, 624 vs 67 ns for 5 ids, and O(span) - 307 µs - for 2 ids far
apart.  src_ip trie over 2 000 IPv4 CIDRs: bit-by-bit walk 1.89 µs, level-compressed
(one dict probe per used prefix length, stop at the first missing node) 0.43 µs.

End to end (bench_rules.py, realistic mix, median of 7 repeats of the mean over 2 000
requests, 40 % of them falling through to the catch-all):

    rules      prefilter µs   linear µs   speed-up   candidates examined
    10            1.1            1.0          1x          2.8
    1 000         2.5           67-74        27-29x       7.1
    10 000        2.5            704        ~280x         6.7
    100 000       3.7-4.0*    8 400-9 800   ~2 300x       8.1
    * 7.1 µs in the noisiest run; compile 1.2 s for 100 000 rules.

Costs that remain linear by design: every always-candidate before the winner is
evaluated (a config with thousands of glob-only rules pays for each), and a key
posting shared by many rules (e.g. 5 000 rules that are only ``method: [GET]`` plus a
path glob) is walked in full.
"""

from __future__ import annotations

import threading

from .bitset import BitSet
from .iptrie import PrefixTrie, parse_cidr
from .matcher import TextPatterns, always_true, compile_check
from .patterns import ascii_lower

DIMS = ("method", "dst_port", "src_ip", "host", "sni", "path")
# tie-break order when choosing the dimension a rule is indexed under
_KEY_PRIORITY = ("host", "sni", "path", "src_ip", "dst_port", "method")
# rough "how many requests carry this value" weight per dimension
_WEIGHT = {"host": 1, "sni": 1, "path": 1, "src_ip": 2, "dst_port": 16, "method": 16}

_scratch = threading.local()


def _suffix_nodes(suffix: str):
    """The label-suffix chain of ``suffix``: 'a.b.c' -> ['c', 'b.c', 'a.b.c']."""
    labels = suffix.split(".")
    return [".".join(labels[k:]) for k in range(len(labels) - 1, -1, -1)]


def _named_fields(spec) -> int:
    return ((1 if spec.method else 0) + (1 if spec.dst_port else 0) + (1 if spec.src_ip else 0)
            + (1 if spec.host else 0) + (1 if spec.sni else 0) + (1 if spec.path else 0))


def _name_hits(name: str, exact: dict | None, suffix: dict | None, buf: list) -> None:
    """Append the posting lists a host or SNI hits: its exact entry, then every label
    suffix of it (``c``, ``b.c``, ``a.b.c``) until the flattened trie has no node."""
    if exact is not None:
        p = exact.get(name)
        if p:
            buf += p
    if suffix is not None:
        pos = len(name)
        while True:
            pos = name.rfind(".", 0, pos)
            if pos < 0:
                break
            p = suffix.get(name[pos + 1:])
            if p is None:
                break
            if p:
                buf += p


class _TextIndex:
    """Exact map + label suffix trie (flattened: node key = the suffix text)."""

    __slots__ = ("exact", "suffix")

    def __init__(self) -> None:
        self.exact: dict[str, list] = {}
        self.suffix: dict[str, list] = {}

    def add_exact(self, value: str, rule: int) -> None:
        self.exact.setdefault(value, []).append(rule)

    def add_suffix(self, value: str, rule: int) -> None:
        nodes = _suffix_nodes(value)
        for node in nodes[:-1]:
            self.suffix.setdefault(node, [])
        self.suffix.setdefault(nodes[-1], []).append(rule)

    def freeze(self) -> None:
        self.exact = {k: tuple(sorted(set(v))) for k, v in self.exact.items()}
        self.suffix = {k: tuple(sorted(set(v))) for k, v in self.suffix.items()}


class Prefilter:
    """See the module docstring."""

    def __init__(self, specs) -> None:
        n = self.size = len(specs)
        free, counts, values = self._collect(specs)
        always = BitSet.full(n)
        for d in DIMS:
            always &= free[d]
        self.free = free
        self.always = tuple(always.indices())

        self.method: dict[str, list] = {}
        self.port: dict[int, list] = {}
        self.src = PrefixTrie()
        self.text = {d: _TextIndex() for d in ("host", "sni", "path")}
        self.key: list[str | None] = [None] * n  # the dimension each rule is indexed under
        self.rest: list = [None] * n  # check of the fields beside the key; None: nothing left
        self.always_checks = tuple(compile_check(specs[i]) for i in self.always)
        for i, (spec, vals) in enumerate(zip(specs, values)):
            if vals:
                self._post(i, spec, vals, counts)
        self.method = {k: tuple(sorted(set(v))) for k, v in self.method.items()}
        self.port = {k: tuple(sorted(set(v))) for k, v in self.port.items()}
        self.src.freeze()
        for t in self.text.values():
            t.freeze()
        self.gather = self._make_gather()

    @staticmethod
    def _collect(specs):
        """Per rule, the indexable values of each dimension it constrains; per
        dimension, the rules that leave it free and how often each value occurs."""
        n = len(specs)
        free = {d: BitSet(n) for d in DIMS}
        counts: dict[str, dict] = {d: {} for d in DIMS}
        values: list[dict[str, list]] = []
        for i, spec in enumerate(specs):
            vals: dict[str, list] = {}
            if spec.method:
                vals["method"] = [("m", m) for m in dict.fromkeys(x.upper() for x in spec.method)]
            if spec.dst_port:
                vals["dst_port"] = [("p", p) for p in dict.fromkeys(spec.dst_port)]
            if spec.src_ip:
                vals["src_ip"] = [("c", parse_cidr(c)) for c in dict.fromkeys(spec.src_ip)]
            for dim in ("host", "sni", "path"):
                patterns = getattr(spec, dim)
                if patterns:
                    tp = TextPatterns(patterns, lower=dim != "path")
                    if not tp.globs:
                        vals[dim] = [("e", v) for v in tp.exact] + [("s", v) for v in tp.suffixes]
            byte, bit = i >> 3, 1 << (i & 7)
            for d in DIMS:
                if d not in vals:
                    free[d].buf[byte] |= bit
                else:
                    cd = counts[d]
                    for v in vals[d]:
                        cd[v] = cd.get(v, 0) + 1
            values.append(vals)
        return free, counts, values

    def _post(self, i: int, spec, vals: dict, counts: dict) -> None:
        """Index rule ``i`` under its most selective dimension; keep a check of the rest."""
        if len(vals) == 1:
            (key,) = vals
        else:
            key = min(vals, key=lambda d: (sum(counts[d][v] for v in vals[d]) * _WEIGHT[d],
                                           _KEY_PRIORITY.index(d)))
        self.key[i] = key
        for kind, v in vals[key]:
            if key == "method":
                self.method.setdefault(v, []).append(i)
            elif key == "dst_port":
                self.port.setdefault(v, []).append(i)
            elif key == "src_ip":
                self.src.insert(*v, i)
            elif kind == "e":
                self.text[key].add_exact(v, i)
            else:
                self.text[key].add_suffix(v, i)
        if len(vals) == 1 and not spec.headers and _named_fields(spec) == 1:
            return  # the key hit is the whole rule
        rest = compile_check(spec, skip=key)
        self.rest[i] = None if rest is always_true else rest

    # ------------------------------------------------------------------ query
    def _make_gather(self):
        """``gather(ctx, host, sni, buf)``: append to ``buf`` the ids of the posting
        lists the request hits, dimension by dimension (unsorted, may repeat)."""
        method_map = self.method or None
        port_map = self.port or None
        levels4, levels6 = self.src.levels4, self.src.levels6
        has_src = bool(levels4 or levels6)
        h_exact = self.text["host"].exact or None
        h_suf = self.text["host"].suffix or None
        s_exact = self.text["sni"].exact or None
        s_suf = self.text["sni"].suffix or None
        p_exact = self.text["path"].exact or None

        def gather(ctx, host, sni, buf) -> None:
            if method_map is not None:
                v = ctx.method
                if v is not None:
                    p = method_map.get(v)
                    if p:
                        buf += p
            if port_map is not None:
                v = ctx.dst_port
                if v is not None:
                    p = port_map.get(v)
                    if p:
                        buf += p
            if has_src:
                v = ctx.src_ip
                if v is not None:
                    for shift, table in (levels4 if v < 4294967296 else levels6):
                        p = table.get(v >> shift)
                        if p is None:
                            break
                        if p:
                            buf += p
            if host is not None and (h_exact is not None or h_suf is not None):
                _name_hits(host, h_exact, h_suf, buf)
            if sni is not None and (s_exact is not None or s_suf is not None):
                _name_hits(sni, s_exact, s_suf, buf)
            if p_exact is not None:
                v = ctx.path
                if v is not None:
                    p = p_exact.get(v)
                    if p:
                        buf += p

        return gather

    def candidates(self, ctx, host, sni) -> list[int]:
        """Every rule that survives the prefilter, ascending (before full matching)."""
        buf: list = []
        self.gather(ctx, host, sni, buf)
        return sorted(set(buf).union(self.always))

    def bind_first_match(self):
        always = self.always
        n_always = len(always)
        always_fns = self.always_checks
        rest = self.rest
        gather = self.gather
        lower = ascii_lower
        scratch = _scratch

        def first_match(ctx) -> int:
            host = ctx.host
            if host is not None:
                host = host.lower() if host.isascii() else lower(host)
            sni = ctx.sni
            if sni is not None:
                sni = sni.lower() if sni.isascii() else lower(sni)
            try:
                buf = scratch.buf
            except AttributeError:
                buf = scratch.buf = []
            buf.clear()
            gather(ctx, host, sni, buf)
            if not buf:
                k = 0
                for fn in always_fns:
                    if fn(ctx, host, sni):
                        ctx.candidates = k + 1
                        return always[k]
                    k += 1
                ctx.candidates = k
                return -1
            if len(buf) > 1:
                buf.sort()
            ai = 0  # always-candidates done
            seen = 0  # keyed candidates done
            prev = -1
            for c in buf:
                if c == prev:
                    continue
                prev = c
                while ai < n_always and always[ai] < c:
                    ai += 1
                    if always_fns[ai - 1](ctx, host, sni):
                        ctx.candidates = ai + seen
                        return always[ai - 1]
                seen += 1
                r = rest[c]
                if r is None or r(ctx, host, sni):
                    ctx.candidates = ai + seen
                    return c
            while ai < n_always:
                ai += 1
                if always_fns[ai - 1](ctx, host, sni):
                    ctx.candidates = ai + seen
                    return always[ai - 1]
            ctx.candidates = ai + seen
            return -1

        return first_match

    def bind_matching_indices(self):
        always = self.always
        always_fns = self.always_checks
        rest = self.rest
        gather = self.gather
        lower = ascii_lower

        def matching_indices(ctx) -> list[int]:
            host = ctx.host
            if host is not None:
                host = host.lower() if host.isascii() else lower(host)
            sni = ctx.sni
            if sni is not None:
                sni = sni.lower() if sni.isascii() else lower(sni)
            buf: list = []
            gather(ctx, host, sni, buf)
            out = [c for c in set(buf) if (r := rest[c]) is None or r(ctx, host, sni)]
            out += [a for a, fn in zip(always, always_fns) if fn(ctx, host, sni)]
            out.sort()
            return out

        return matching_indices
