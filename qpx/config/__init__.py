"""Configuration: load (YAML, env, include) → schema (voluptuous) → typed model.

``load_config(files)`` is the only entry point the rest of qpxd uses.  It returns the
immutable :class:`~qpx.config.model.Config` and the list of warnings, or raises
:class:`~qpx.config.errors.ConfigError` listing every problem with file, line and path.
"""

from __future__ import annotations

from voluptuous import MultipleInvalid

from .build import Builder
from .errors import ConfigError, Issue, dotted
from .loader import Document, load_documents
from .model import Config
from .schema import TOP

__all__ = ["Config", "ConfigError", "Issue", "load_config"]

_MESSAGES = {
    "extra keys not allowed": "unknown key",
    "required key not provided": "required key is missing",
    "expected a dictionary": "expected a mapping",
}


def _schema_issues(doc: Document, error: MultipleInvalid) -> list[Issue]:
    out = []
    for e in error.errors:
        path = tuple(e.path)
        file, line = doc.locate(path)
        message = _MESSAGES.get(e.error_message, e.error_message)
        out.append(Issue(file or "<config>", dotted(path), message, line))
    return out


def _sorted(issues: list[Issue]) -> list[Issue]:
    return sorted(issues, key=lambda i: (i.file, i.line or 0, i.path))


def load_config(files: list[str] | str) -> tuple[Config, list[Issue]]:
    """Load, validate and build the configuration from ``files`` (merged in order)."""
    if isinstance(files, str):
        files = [files]
    doc = load_documents(list(files))
    try:
        data = TOP(doc.data)
    except MultipleInvalid as e:
        raise ConfigError(_sorted(_schema_issues(doc, e))) from None
    builder = Builder(doc)
    cfg = builder.build(data)
    if builder.issues:
        raise ConfigError(_sorted(builder.issues))
    return cfg, builder.warnings
