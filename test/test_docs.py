"""The configuration reference (docs/configuration.md) documents every schema key."""

from __future__ import annotations

import re

from conftest import ROOT
from voluptuous import Optional, Required, Schema

from qpx.config import schema

DOC = ROOT / "docs" / "configuration.md"


def _unwrap(v) -> tuple[dict | None, bool]:
    """(the mapping schema behind ``v`` or None, whether it is a list of them)."""
    if isinstance(v, Schema):
        return _unwrap(v.schema)
    if isinstance(v, dict):
        return v, False
    name = getattr(v, "__qualname__", "")
    if name.startswith(("List.", "Nullable.")):
        cells = [c.cell_contents for c in v.__closure__ or ()]
        inner = next(c for c in cells if isinstance(c, Schema))
        mapping, is_list = _unwrap(inner)
        return mapping, is_list or name.startswith("List.")
    return None, False


def schema_keys(mapping: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Every (section path, key) of the schema, paths written as in the doc
    (``listeners[].rules[].match``)."""
    out = []
    for k, v in mapping.items():
        key = k.schema if isinstance(k, (Optional, Required)) else k
        if not isinstance(key, str):
            continue
        out.append((prefix, key))
        sub, is_list = _unwrap(v)
        if sub is not None:
            path = f"{prefix}.{key}" if prefix else key
            out += schema_keys(sub, path + ("[]" if is_list else ""))
    return out


def documented() -> dict[str, set[str]]:
    """Section path -> keys in its table.  A heading names one or more paths in
    backticks; "Top level" is the empty path."""
    sections: dict[str, set[str]] = {}
    current: list[str] = []
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            paths = re.findall(r"`([^`]+)`", line)
            current = paths if paths else ([""] if "Top level" in line else [])
            for p in current:
                sections.setdefault(p, set())
        m = re.match(r"\| `([a-z0-9_]+)` \|", line)
        if m:
            for p in current:
                sections[p].add(m.group(1))
    return sections


def test_every_schema_key_is_in_the_reference():
    keys = schema_keys(schema.TOP.schema)
    assert len(keys) > 300  # the walk reached every nested block
    docs = documented()
    missing = [f"{p}.{k}" if p else k for p, k in keys if k not in docs.get(p, ())]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_the_reference_documents_no_key_the_schema_lacks():
    known: dict[str, set[str]] = {}
    for p, k in schema_keys(schema.TOP.schema):
        known.setdefault(p, set()).add(k)
    known[""].add("include")  # read by the loader, not the schema
    stale = [f"{p}.{k}" for p, ks in documented().items() for k in ks
             if k not in known.get(p, ())]
    assert not stale, f"docs/configuration.md documents keys that do not exist: {stale}"


def test_every_message_key_is_documented():
    docs = documented()
    assert set(schema.MESSAGE_KEYS) <= docs["messages"]
