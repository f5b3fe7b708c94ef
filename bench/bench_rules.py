#!/usr/bin/env python3
"""Benchmark of the rule engine: prefilter vs linear scan on a realistic rule mix.

    python bench/bench_rules.py [--json OUT] [--sizes 10,1000,10000,100000]
                                [--alternatives]

The rule mix (``make_rules``) imitates an ad/tracker blocklist with extras: ~50 %
single exact hosts, 8 % multi-host rules, 25 % ``*.suffix`` rules (half of them
``[d, *.d]``), 4 % SNI rules, 4 % CIDR rules (some with a host), ports, methods,
exact paths, a few host globs (min(10, n/100)) and header rules (min(5, n/200)),
and a catch-all at the end.  Requests (``make_requests``): 40 % hosts named by a
rule, 20 % subdomains of suffix rules, 40 % unknown hosts (those fall through to the
catch-all, the most expensive case).  One "match" = ``first_match`` (prefilter + full
match of the candidates) or ``first_match_linear``.  Each figure is the median over
several repeats of the mean time per match over the request mix.

``--alternatives`` also measures the prefilter representations the design was chosen
from (see qpx/rules/prefilter.py for the recorded figures).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qpx.config.model import HeaderMatch, MatchSpec  # noqa: E402
from qpx.rules import MatchContext, RuleSet, parse_ip  # noqa: E402
from qpx.rules.matcher import compile_check  # noqa: E402

TLDS = ["com", "net", "org", "io", "de", "ru", "cn", "info", "xyz", "co.uk"]
GLOBS = ["*tracker*", "ads?.*.net", "*.doubleclick.*", "*metrics*.io", "telemetry.*",
         "*[0-9][0-9][0-9].xyz", "{ad,ads,adserver}.*", "*.cdn-*.com", "beacon*", "*pixel*"]


class Headers:
    __slots__ = ("d",)

    def __init__(self, pairs):
        d: dict[str, list[str]] = {}
        for k, v in pairs:
            d.setdefault(k.lower(), []).append(v)
        self.d = d

    def get_all(self, lname):
        return self.d.get(lname, [])


def _label(rnd):
    return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                   for _ in range(rnd.randint(3, 10)))


def _domain(rnd):
    return f"{_label(rnd)}.{rnd.choice(TLDS)}"


def _v4(a: int, plen: int) -> str:
    return f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/{plen}"


def make_rules(n: int, seed: int = 1) -> list[MatchSpec]:
    rnd = random.Random(seed)
    if n <= 0:
        return []
    n_globs = min(10, max(1, n // 100))
    n_hdr = min(5, max(1, n // 200))
    picked = rnd.sample(range(n - 1), min(n - 1, n_globs + n_hdr))
    glob_ids, hdr_ids = set(picked[:n_globs]), set(picked[n_globs:])
    rules: list[MatchSpec] = []
    g = 0
    for i in range(n - 1):
        if i in glob_ids:
            if rnd.random() < 0.3:
                rules.append(MatchSpec(host=(_domain(rnd),), path=("/api/*",)))
            else:
                rules.append(MatchSpec(host=(GLOBS[g % len(GLOBS)],)))
                g += 1
            continue
        if i in hdr_ids:
            if rnd.random() < 0.5:
                rules.append(MatchSpec(headers=(HeaderMatch("x-debug-token"),)))
            else:
                rules.append(MatchSpec(host=(_domain(rnd),), headers=(
                    HeaderMatch("user-agent", regex=r"curl/[0-9]+"),)))
            continue
        r = rnd.random()
        if r < 0.50:
            rules.append(MatchSpec(host=(_domain(rnd),)))
        elif r < 0.58:
            rules.append(MatchSpec(host=tuple(_domain(rnd) for _ in range(rnd.randint(2, 4)))))
        elif r < 0.70:
            rules.append(MatchSpec(host=(f"*.{_domain(rnd)}",)))
        elif r < 0.83:
            d = _domain(rnd)
            rules.append(MatchSpec(host=(d, f"*.{d}")))
        elif r < 0.87:
            d = _domain(rnd)
            rules.append(MatchSpec(sni=(d,) if rnd.random() < 0.5 else (f"*.{d}",)))
        elif r < 0.90:
            if rnd.random() < 0.8:
                plen = rnd.choice([8, 12, 16, 20, 24, 24, 28, 32, 32])
                cidr = _v4(rnd.getrandbits(32) >> (32 - plen) << (32 - plen), plen)
            else:
                plen = rnd.choice([32, 48, 56, 64])
                a = (0x2001 << 112 | rnd.getrandbits(112)) >> (128 - plen) << (128 - plen)
                cidr = f"{ipaddress.IPv6Address(a)}/{plen}"
            rules.append(MatchSpec(src_ip=(cidr,)))
        elif r < 0.91:
            plen = rnd.choice([16, 24])
            a = (10 << 24 | rnd.getrandbits(24)) >> (32 - plen) << (32 - plen)
            rules.append(MatchSpec(src_ip=(_v4(a, plen),), host=(_domain(rnd),)))
        elif r < 0.93:
            rules.append(MatchSpec(host=(_domain(rnd),),
                                   dst_port=(rnd.choice([8080, 8443, 80, 443]),)))
        elif r < 0.935:
            rules.append(MatchSpec(dst_port=(rnd.choice([25, 6667, 3389, 23]),)))
        elif r < 0.95:
            rules.append(MatchSpec(host=(_domain(rnd),),
                                   method=(rnd.choice(["POST", "PUT", "DELETE"]),)))
        elif r < 0.952:
            rules.append(MatchSpec(method=("TRACE",) if rnd.random() < 0.5
                                   else ("PROPFIND", "MKCOL")))
        elif r < 0.97:
            rules.append(MatchSpec(host=(_domain(rnd),), path=(f"/{_label(rnd)}",)))
        else:
            rules.append(MatchSpec(host=(_domain(rnd),),
                                   src_ip=("192.168.0.0/16", "10.0.0.0/8")))
    rules.append(MatchSpec())
    return rules


def make_requests(rules: list[MatchSpec], n: int = 2000, seed: int = 2) -> list[MatchContext]:
    rnd = random.Random(seed)
    hosts, sufs = [], []
    for r in rules:
        for h in r.host:
            if h.startswith("*.") and not any(c in h[2:] for c in "*?[]{}"):
                sufs.append(h[2:])
            elif not any(c in h for c in "*?[]{}"):
                hosts.append(h)
    out = []
    for _ in range(n):
        x = rnd.random()
        if x < 0.4 and hosts:
            host = rnd.choice(hosts)
        elif x < 0.6 and sufs:
            host = f"{_label(rnd)}.{rnd.choice(sufs)}"
        else:
            host = _domain(rnd)
        if rnd.random() < 0.9:
            ip = (f"{rnd.choice([10, 192, 172, rnd.randint(1, 223)])}.{rnd.randint(0, 255)}."
                  f"{rnd.randint(0, 255)}.{rnd.randint(1, 254)}")
        else:
            ip = f"2001:db8:{rnd.getrandbits(16):x}::{rnd.getrandbits(16):x}"
        port = 443 if rnd.random() < 0.7 else 80
        hdrs = Headers([("host", host), ("accept", "*/*"),
                        ("user-agent", "curl/8.1" if rnd.random() < 0.1 else "Mozilla/5.0")])
        out.append(MatchContext(
            src_ip=parse_ip(ip), dst_port=port,
            host=host.upper() if rnd.random() < 0.05 else host,
            sni=host if port == 443 else None,
            method="GET" if rnd.random() < 0.85 else "POST",
            path=f"/{_label(rnd)}/{_label(rnd)}?q={rnd.randint(0, 99)}", headers=hdrs))
    return out


def per_match_us(fn, reqs, repeats: int) -> float:
    """Median over ``repeats`` of the mean µs per call of ``fn`` over ``reqs``."""
    fn(reqs[0])
    results = []
    for _ in range(repeats):
        gc.disable()
        t = time.perf_counter()
        for c in reqs:
            fn(c)
        dt = time.perf_counter() - t
        gc.enable()
        results.append(dt / len(reqs) * 1e6)
    return statistics.median(results)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def bench_main(sizes, repeats: int) -> list[dict]:
    rows = []
    print(f"# {machine()}")
    # parse_ip runs once per connection (src_ip); measured here, never in a unit test
    for text in ("192.168.100.200", "2001:db8::1", "::ffff:10.1.2.3"):
        best = min(timeit.repeat(lambda t=text: parse_ip(t), number=20000, repeat=5)) / 20000
        print(f"parse_ip({text}): {best * 1e6:.2f} µs")
    print(f"{'rules':>8} {'compile s':>9} {'prefilter µs':>13} {'linear µs':>11} "
          f"{'speed-up':>9} {'candidates':>10}")
    for n in sizes:
        specs = make_rules(n)
        t = time.perf_counter()
        rs = RuleSet.compile(specs)
        compile_s = time.perf_counter() - t
        reqs = make_requests(specs)
        sample = reqs[:max(30, min(len(reqs), 400_000 // max(n, 1)))]
        for c in sample[:200]:
            assert rs.first_match(c) == rs.first_match_linear(c)
        pre = per_match_us(rs.first_match, reqs, repeats)
        lin = per_match_us(rs.first_match_linear, sample, max(3, repeats // 2))
        cands = statistics.mean((rs.first_match(c), c.candidates)[1] for c in reqs)
        row = dict(rules=n, compile_s=round(compile_s, 3), prefilter_us=round(pre, 2),
                   linear_us=round(lin, 1), speedup=round(lin / pre, 1),
                   candidates=round(cands, 2), requests=len(reqs),
                   linear_requests=len(sample), repeats=repeats)
        rows.append(row)
        print(f"{n:>8} {compile_s:>9.2f} {pre:>13.2f} {lin:>11.1f} {lin / pre:>8.0f}x "
              f"{cands:>10.1f}")
    return rows


# --------------------------------------------------------------------------- alternatives
# Prototypes of the representations the prefilter was chosen from.  Synthetic like the
# PERFORMANCE.md table: 6 dimension masks over n rules (dense: 50-97 % of the bits set)
# whose AND keeps <= 5 rules; one lookup = AND them in order (early stop) and list the
# survivors ascending.


def _synthetic(n: int, rnd: random.Random):
    survivors = sorted(rnd.sample(range(n), 5))
    masks = []
    for density in (0.97, 0.9, 0.95, 0.5, 0.8, 0.9):  # method, port, src, host, sni, path
        bits = {i for i in range(n) if rnd.random() < density} | set(survivors)
        masks.append(bits)
    # make sure the AND is exactly the survivors
    common = set.intersection(*masks)
    for i in common - set(survivors):
        masks[3].discard(i)
    return survivors, masks


def _to_bytearray(bits, n):
    buf = bytearray((n + 7) >> 3)
    for i in bits:
        buf[i >> 3] |= 1 << (i & 7)
    return buf


def alt_int_masks(n, masks):
    ints = [sum(1 << i for i in sorted(m)) if n <= 20000 else
            int.from_bytes(_to_bytearray(m, n), "little") for m in masks]

    def lookup():
        acc = ints[0]
        for m in ints[1:]:
            acc &= m
            if not acc:
                return []
        out = []
        while acc:
            low = acc & -acc
            out.append(low.bit_length() - 1)
            acc ^= low
        return out

    return lookup


def alt_from_bytes(n, masks):
    bufs = [_to_bytearray(m, n) for m in masks]

    def lookup():
        acc = int.from_bytes(bufs[0], "little")
        for b in bufs[1:]:
            acc &= int.from_bytes(b, "little")
            if not acc:
                return []
        out = []
        while acc:
            low = acc & -acc
            out.append(low.bit_length() - 1)
            acc ^= low
        return out

    return lookup


def alt_memoryview_loop(n, masks):
    words = (n + 63) >> 6
    bufs = [memoryview(_to_bytearray(m, words * 64)).cast("Q") for m in masks]
    local = threading.local()

    def lookup():
        try:
            scratch = local.s
        except AttributeError:
            scratch = local.s = memoryview(bytearray(words * 8)).cast("Q")
        first = bufs[0]
        for w in range(words):
            scratch[w] = first[w]
        for b in bufs[1:]:
            nz = 0
            for w in range(words):
                v = scratch[w] & b[w]
                scratch[w] = v
                nz |= v
            if not nz:
                return []
        out = []
        for w in range(words):
            v = scratch[w]
            while v:
                low = v & -v
                out.append((w << 6) + low.bit_length() - 1)
                v ^= low
        return out

    return lookup


def alt_selective_first(n, masks, walk: int = 50):
    """Walk the ids of the most selective dimension (a ~``walk``-id list for this
    request), test the other dimensions' bytearray bits."""
    bufs = [_to_bytearray(m, n) for m in masks]
    rnd = random.Random(7)
    survivors = sorted(set.intersection(*masks))
    pool = sorted(masks[3] - set(survivors))  # the walked dimension's own ids
    ids = sorted(set(rnd.sample(pool, walk - len(survivors))) | set(survivors))
    others = bufs[:3] + bufs[4:]

    def lookup():
        out = []
        for i in ids:
            b, bit = i >> 3, 1 << (i & 7)
            for m in others:
                if not m[b] & bit:
                    break
            else:
                out.append(i)
        return out

    return lookup


def bench_alternatives(sizes, repeats: int) -> list[dict]:
    rows = []
    print("\n# alternatives: one lookup = 6 masks AND-ed (early stop), <= 5 survivors listed")
    print(f"{'rules':>8} {'int masks':>10} {'from_bytes':>11} {'mv loop':>9} {'sel-first':>10}"
          "   (µs; int masks and from_bytes allocate ∝ rules per lookup)")
    for n in sizes:
        rnd = random.Random(n)
        survivors, masks = _synthetic(n, rnd)
        row = {"rules": n}
        for name, make in (("int_masks", alt_int_masks), ("from_bytes", alt_from_bytes),
                           ("memoryview_loop", alt_memoryview_loop),
                           ("selective_first", alt_selective_first)):
            fn = make(n, masks)
            assert fn() == survivors, name
            k = 3 if name == "memoryview_loop" and n > 20000 else 200
            row[name] = round(per_match_us(lambda _: fn(), [None] * k, repeats), 2)
        rows.append(row)
        print(f"{n:>8} {row['int_masks']:>10.2f} {row['from_bytes']:>11.2f} "
              f"{row['memoryview_loop']:>9.1f} {row['selective_first']:>10.2f}")
    # the src trie: bit-by-bit walk vs one dict probe per used prefix length
    print("\n# src_ip trie lookup, 2 000 IPv4 CIDRs (/8../32), random client addresses")
    rnd = random.Random(3)
    cidrs = []
    for _ in range(2000):
        plen = rnd.choice([8, 12, 16, 20, 24, 24, 28, 32, 32])
        cidrs.append((rnd.getrandbits(32) >> (32 - plen) << (32 - plen), plen))
    root: dict = {}
    for net, plen in cidrs:
        node = root
        for b in range(plen):
            node = node.setdefault((net >> (31 - b)) & 1, {})
        node["ids"] = node.get("ids", 0) + 1

    def bitwise(k):
        node, hits = root, 0
        for b in range(32):
            hits += node.get("ids", 0)
            node = node.get((k >> (31 - b)) & 1)
            if node is None:
                return hits
        return hits + node.get("ids", 0)

    from qpx.rules.iptrie import PrefixTrie
    trie = PrefixTrie()
    for i, (net, plen) in enumerate(cidrs):
        trie.insert(32, plen, net, i)
    trie.freeze()

    def levels(k):
        out: list = []
        trie.lookup(k, out)
        return len(out)

    keys = [rnd.getrandbits(32) for _ in range(500)] + [net for net, _ in cidrs[:500]]
    assert [bitwise(k) for k in keys] == [levels(k) for k in keys]
    t_bit = per_match_us(bitwise, keys, repeats)
    t_lvl = per_match_us(levels, keys, repeats)
    print(f"bit-by-bit dict trie {t_bit:.2f} µs, level-compressed (dict per used length) "
          f"{t_lvl:.2f} µs")
    rows.append({"src_trie_bitwise_us": round(t_bit, 2), "src_trie_levels_us": round(t_lvl, 2)})
    return rows


def bench_realistic_selective_first(sizes, repeats: int) -> list[dict]:
    """End to end on the realistic mix: walk the smallest per-dimension candidate list
    (rules free in that dimension + the request's hits), test the other dimensions'
    admit bits (bytearray free mask | set of hits), full match the survivors."""
    from qpx.rules.matcher import TextPatterns
    from qpx.rules.patterns import ascii_lower
    rows = []
    print("\n# realistic mix, 'most selective dimension first' (walk + bytearray bit tests)")
    for n in sizes:
        specs = make_rules(n)
        rs = RuleSet.compile(specs)
        reqs = make_requests(specs)
        dims = ("method", "dst_port", "host", "sni", "path")  # src omitted: ~always free
        free = {d: [] for d in dims}
        post: dict = {d: {} for d in dims}
        for i, s in enumerate(specs):
            for d in dims:
                vals = getattr(s, d)
                if d in ("host", "sni", "path") and vals:
                    tp = TextPatterns(vals, lower=d != "path")
                    if tp.globs:
                        vals = ()
                    else:
                        vals = [("e", v) for v in tp.exact] + [("s", v) for v in tp.suffixes]
                elif d == "method":
                    vals = [m.upper() for m in vals]
                if not vals:
                    free[d].append(i)
                for v in vals:
                    post[d].setdefault(v, []).append(i)
        free_bits = {d: _to_bytearray(free[d], n) for d in dims}
        checks = [compile_check(s) for s in specs]

        def hits(d, ctx, host, sni):
            p = post[d]
            if d == "method":
                return p.get(ctx.method, [])
            if d == "dst_port":
                return p.get(ctx.dst_port, [])
            v = host if d == "host" else sni if d == "sni" else ctx.path
            if v is None:
                return []
            out = list(p.get(("e", v), []))
            for k in range(len(v)):
                if v[k] == ".":
                    out += p.get(("s", v[k + 1:]), [])
            return out

        def lookup(ctx):
            host = ascii_lower(ctx.host) if ctx.host else None
            sni = ascii_lower(ctx.sni) if ctx.sni else None
            h = {d: hits(d, ctx, host, sni) for d in dims}
            best = min(dims, key=lambda d: len(free[d]) + len(h[d]))
            walk = sorted(set(free[best]).union(h[best]))
            hs = {d: set(h[d]) for d in dims if d != best}
            for i in walk:
                b, bit = i >> 3, 1 << (i & 7)
                for d, s in hs.items():
                    if not (free_bits[d][b] & bit or i in s):
                        break
                else:
                    if checks[i](ctx, host, sni):
                        return i
            return -1

        for c in reqs[:100]:
            assert lookup(c) == rs.first_match(c)
        t = per_match_us(lookup, reqs[:300], max(3, repeats // 2))
        row = {"rules": n, "selective_first_us": round(t, 1),
               "chosen_us": round(per_match_us(rs.first_match, reqs, repeats), 2)}
        rows.append(row)
        print(f"{n:>8} selective-first {t:8.1f} µs   chosen (keyed postings) "
              f"{row['chosen_us']:.2f} µs")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--sizes", default="10,1000,10000,100000")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--alternatives", action="store_true",
                    help="also measure the alternative prefilter representations")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    result = {"machine": machine(), "rules": bench_main(sizes, args.repeats)}
    if args.alternatives:
        result["alternatives"] = bench_alternatives([n for n in sizes if n >= 1000] or sizes,
                                                    args.repeats)
        result["realistic_selective_first"] = bench_realistic_selective_first(
            [n for n in sizes if 1000 <= n <= 100000], args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
