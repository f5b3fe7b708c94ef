"""Validation of one ``MatchSpec`` before anything is compiled or bound.

This module owns the error messages of rule conditions: :func:`validate_match`
returns every problem as ``(relative path, message)``, the path relative to the
match object (``"src_ip.1"``, ``"host.0"``, ``"headers.2.regex"``), so the config
loader can prefix it with where the match object lives.  An empty list means
``RuleSet.compile`` will accept the spec.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .iptrie import CidrError, parse_cidr
from .patterns import GLOB, ascii_lower, check_glob, classify

if TYPE_CHECKING:  # qpx.config imports qpx.rules: no runtime import back
    from ..config.model import MatchSpec

# RFC 9110 token characters (method names, header field names)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def _text_errors(field: str, values, *, lower: bool, what: str) -> list[tuple[str, str]]:
    errors = []
    for k, pattern in enumerate(values):
        path = f"{field}.{k}"
        if not isinstance(pattern, str):
            errors.append((path, f"expected a string, got {type(pattern).__name__}"))
            continue
        if not pattern:
            errors.append((path, f"empty {what} pattern"))
            continue
        kind, _ = classify(ascii_lower(pattern) if lower else pattern, allow_suffix=lower)
        if kind == GLOB:
            reason = check_glob(ascii_lower(pattern) if lower else pattern)
            if reason is not None:
                errors.append((path, f"invalid glob {pattern!r}: {reason}"))
    return errors


def validate_match(spec: MatchSpec) -> list[tuple[str, str]]:
    """Every problem of ``spec`` as ``(relative path, message)``; [] when valid."""
    errors: list[tuple[str, str]] = []

    for k, cidr in enumerate(spec.src_ip):
        try:
            parse_cidr(cidr)
        except CidrError as exc:
            errors.append((f"src_ip.{k}", str(exc)))

    for k, port in enumerate(spec.dst_port):
        if isinstance(port, bool) or not isinstance(port, int):
            errors.append((f"dst_port.{k}", f"invalid port {port!r}: expected an integer"))
        elif not 0 <= port <= 65535:
            errors.append((f"dst_port.{k}", f"port {port} out of range 0-65535"))

    errors += _text_errors("host", spec.host, lower=True, what="host")
    errors += _text_errors("sni", spec.sni, lower=True, what="sni")

    for k, method in enumerate(spec.method):
        path = f"method.{k}"
        if not isinstance(method, str):
            errors.append((path, f"expected a string, got {type(method).__name__}"))
        elif not method:
            errors.append((path, "empty method"))
        elif not _is_token(method):
            errors.append((path, f"invalid method token {method!r}"))

    errors += _text_errors("path", spec.path, lower=False, what="path")

    for k, hm in enumerate(spec.headers):
        path = f"headers.{k}"
        if not all(hasattr(hm, a) for a in ("name", "value", "regex")):
            errors.append((path, f"expected a header condition, got {type(hm).__name__}"))
            continue
        if not isinstance(hm.name, str):
            errors.append((f"{path}.name", f"expected a string, got {type(hm.name).__name__}"))
        elif not hm.name:
            errors.append((f"{path}.name", "empty header name"))
        elif not _is_token(hm.name):
            errors.append((f"{path}.name", f"invalid header name {hm.name!r}"))
        if hm.regex is not None:
            if not isinstance(hm.regex, str):
                errors.append((f"{path}.regex",
                               f"expected a string, got {type(hm.regex).__name__}"))
            else:
                try:
                    re.compile(hm.regex)
                except re.error as exc:
                    errors.append((f"{path}.regex", f"invalid regex {hm.regex!r}: {exc}"))
        elif hm.value is not None and not isinstance(hm.value, str):
            errors.append((f"{path}.value", f"expected a string, got {type(hm.value).__name__}"))
    return errors
