"""Header lists: hop-by-hop stripping, header control, Date, serialisation (sans-IO).

Headers travel as lists of ``(lowercased name, name, value)`` byte triples, in the
peer's order and case.  Forwarding rebuilds every head from that list:

- hop-by-hop fields (RFC 9110 §7.6.1) and every field the ``Connection`` header nominates
  are dropped, and so are the framing fields (``Content-Length``, ``Transfer-Encoding``):
  qpxd writes the framing of what it sends itself (qpxd-R12);
- ``Proxy-Authorization`` is never forwarded; ``Via: 1.1 <proxy_name>`` is appended;
- header control (rules and routes, spec §2.6) runs before stripping, per direction, in
  the order set → add → remove → regex replace (:class:`HeaderOps`, built once from
  plain tuples by ``qpx.policy``).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
    b"proxy-authenticate", b"proxy-authentication-info", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length",
))

Triples = list[tuple[bytes, bytes, bytes]]

_date_cache = [0, b""]


def http_date() -> bytes:
    """The current IMF-fixdate, formatted at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode("ascii")
    return _date_cache[1]


def serialize(first_line: bytes, headers: Triples, skip: frozenset | set,
              extra: list[bytes]) -> bytes:
    """``first_line`` + every header whose lowercased name is not in ``skip`` + the
    already-formatted ``extra`` lines (each ending in CRLF) + the blank line."""
    parts = [first_line]
    append = parts.append
    for ln, name, value in headers:
        if ln not in skip:
            append(name + b": " + value + b"\r\n")
    parts.extend(extra)
    parts.append(b"\r\n")
    return b"".join(parts)


def strip_set(conn_tokens: frozenset[bytes]) -> frozenset[bytes]:
    """Fields not to forward: hop-by-hop plus whatever Connection nominated."""
    return HOP_BY_HOP | conn_tokens if conn_tokens else HOP_BY_HOP


def rust_template(template: str) -> str:
    """Rust regex replacement syntax (``$1``, ``${name}``, ``$$``) → a Python ``re``
    template; backslashes are literal in Rust and stay literal here."""
    out = template.replace("\\", "\\\\")
    return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)",
                  lambda m: "$" if m.group(0) == "$$" else f"\\g<{m.group(1) or m.group(2)}>",
                  out)


_VALID_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")


class HeaderOps:
    """One direction of header control, as byte operations: set → add → remove →
    regex replace.  ``sets``/``adds`` are (name, value) pairs, ``removes`` names,
    ``regexes`` (header, pattern, Rust-style replacement) triples."""

    __slots__ = ("sets", "adds", "removes", "regexes")

    def __init__(self, sets=(), adds=(), removes=(), regexes=()):
        enc = lambda s: s.encode("latin-1")  # noqa: E731
        self.sets = [(enc(n.lower()), enc(n), enc(v)) for n, v in sets]
        self.adds = [(enc(n.lower()), enc(n), enc(v)) for n, v in adds]
        self.removes = frozenset(enc(n.lower()) for n in removes)
        self.regexes = [(enc(h.lower()), re.compile(enc(p)), enc(rust_template(r)))
                        for h, p, r in regexes]

    def apply(self, headers: Triples) -> Triples:
        if self.sets:
            names = {ln for ln, _, _ in self.sets}
            headers = [h for h in headers if h[0] not in names] + self.sets
        if self.adds:
            headers = headers + self.adds
        if self.removes:
            headers = [h for h in headers if h[0] not in self.removes]
        for ln, regex, template in self.regexes:
            first = next((h for h in headers if h[0] == ln), None)
            if first is None:
                continue
            value = regex.sub(template, first[2])
            if _VALID_VALUE.match(value):
                headers = [h for h in headers if h[0] != ln] + [(ln, first[1], value)]
        return headers
