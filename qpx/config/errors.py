"""Configuration errors: every problem names the file, the dotted key path and what is wrong.

A :class:`ConfigError` carries *all* problems found, not just the first, so that one
``qpxd check`` run shows everything an operator has to fix.
"""

from __future__ import annotations

from dataclasses import dataclass


def dotted(path: tuple | list) -> str:
    """``("listeners", 0, "rules")`` → ``"listeners.0.rules"``; the empty path is ``"<top>"``."""
    return ".".join(str(p) for p in path) if path else "<top>"


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}"


class ConfigError(Exception):
    """One or more problems in the configuration; ``issues`` lists them in file order."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))
