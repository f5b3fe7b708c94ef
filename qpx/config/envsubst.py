"""``${VAR}`` / ``${VAR:-default}`` expansion inside YAML scalar values.

Unlike the original (which rewrote the raw file text, comments and keys included), qpxd
expands only scalar *values*, after YAML parsing, so a ``${X}`` in a comment is inert
and an expanded value can never change the document's structure.  ``:-`` follows POSIX:
the default is taken when the variable is unset **or empty**.  An unset variable without
a default is an error that names the variable.  There is no escape syntax; text that is
not a well-formed reference (``$X``, ``${1x}``, ``${`` alone) is left as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}\n]*))?\}")


class MissingVariable(Exception):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"environment variable {name} is not set and has no default "
                         f"(write ${{{name}:-default}} to give one)")


def has_reference(text: str) -> bool:
    return "${" in text and _REF.search(text) is not None


def expand(text: str, env: Mapping[str, str] | None = None) -> str:
    """Expand every reference in ``text``; raise :class:`MissingVariable` for the first
    unset variable that has no default."""
    environ = os.environ if env is None else env

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            raise MissingVariable(name)
        return value

    return _REF.sub(sub, text)
