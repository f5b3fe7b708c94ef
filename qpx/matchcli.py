"""``qpxd match``: which rule (or reverse route) a described request hits, and why.

Prints, in config order, every rule before the winner with the first field that did not
match, then the winner and its action — or that no rule matched and the default action
applies (exit 3).  The same compiled rule sets as the daemon are used, so what this
prints is what the daemon does (except authentication, which it names but cannot try).
"""

from __future__ import annotations

import sys

from .config.model import Config
from .policy import Policy
from .rules import MatchContext, parse_ip


class _Headers:
    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = [(n.strip().lower(), v.strip()) for n, v in pairs]

    def get_all(self, lname: str) -> list[str]:
        return [v for n, v in self.pairs if n == lname]


def _usage(msg: str) -> int:
    print(f"qpxd match: {msg}", file=sys.stderr)
    return 2


def describe_action(action) -> str:
    out = action.type
    if action.via is not None:
        out += f" via upstream {action.via.authority}"
    elif action.type in ("proxy", "tunnel"):
        out += " (no upstream: direct)"
    if action.reply is not None:
        out += f" (local response {action.reply.status})"
    return out


def run_match(cfg: Config, policy: Policy, args) -> int:
    headers = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            return _usage(f"--header {h!r}: expected 'Name: value'")
        headers.append((name, value))
    src = None
    if args.src_ip is not None:
        src = parse_ip(args.src_ip)
        if src is None:
            return _usage(f"--src-ip {args.src_ip!r} is not an IP address")
    if args.dst_port is not None and not 0 <= args.dst_port <= 65535:
        return _usage(f"--dst-port {args.dst_port} is out of range 0-65535")
    ctx = MatchContext(src_ip=src, dst_port=args.dst_port, host=args.host, sni=args.sni,
                       method=args.method.upper() if args.method else None, path=args.path,
                       headers=_Headers(headers) if headers else None)
    if args.listener is not None:
        lp = policy.listeners.get(args.listener)
        if lp is None:
            names = ", ".join(policy.listeners) or "none"
            return _usage(f"no listener {args.listener!r} (listeners: {names})")
        ruleset, label = lp.ruleset, f"listener {lp.name!r}"
        names = [r.name for r in lp.rules]
    else:
        rp = policy.reverse.get(args.reverse)
        if rp is None:
            names = ", ".join(policy.reverse) or "none"
            return _usage(f"no reverse {args.reverse!r} (reverse: {names})")
        ruleset, label = rp.ruleset, f"reverse {rp.name!r}"
        names = [f"route {i}" for i in range(len(rp.routes))]

    print(f"{label}: {len(names)} {'rules' if args.listener else 'routes'}")
    for index, failed in ruleset.explain(ctx):
        if failed is not None:
            print(f"  {index}: {names[index]!r} does not match: {failed}")
            continue
        print(f"  {index}: {names[index]!r} MATCHES")
        if args.listener is not None:
            rule = lp.rules[index]
            print(f"-> action: {describe_action(rule.action)}")
            if rule.require_auth:
                print("   (requires proxy authentication: without valid credentials the "
                      "answer is 407)")
        else:
            route = rp.routes[index]
            if route.reply is not None:
                print(f"-> local response {route.reply.status}")
            else:
                ups = ", ".join(h.authority + h.base_path for b in route.backends
                                for h in b.hops)
                print(f"-> upstreams: {ups} (lb {route.lb})")
        return 0
    if args.listener is not None:
        print(f"-> no rule matches: default action {describe_action(lp.default)}")
    else:
        print("-> no route matches: 404")
    return 3
