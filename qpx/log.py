"""Logs: the error log (stdlib ``logging``) and the access log (one line per request).

- ``logging.format: json`` → one JSON object per line for both logs, built by one small
  formatter; ``text`` → readable lines.  ``logging.level`` sets the error log's level.
- ``logging.error_log``: a path (default: stderr); ``logging.access_log``: a path, ``-``
  for stdout, or null for none.
- The access log is written in batches (at most every ``FLUSH_INTERVAL`` seconds or
  ``FLUSH_BYTES``), never one ``write`` per request; refused requests and connections
  closed before any HTTP byte are logged too, with the reason.
- USR1 calls :func:`reopen` (logrotate): both files are reopened by path.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FLUSH_INTERVAL = 0.5
FLUSH_BYTES = 65536

logger = logging.getLogger("qpxd")


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _ts(record.created), "level": record.levelname.lower(),
               "pid": record.process, "role": self.role, "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record.created)} {record.levelname.lower():7} [{self.role} " \
               f"{record.process}] {record.getMessage()}"
        extra = getattr(record, "fields", None)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _ReopenableHandler(logging.StreamHandler):
    def __init__(self, path: str | None):
        self.path = path
        super().__init__(sys.stderr if path is None else open(path, "a", buffering=1))

    def reopen(self) -> None:
        if self.path is None:
            return
        self.acquire()
        try:
            old = self.stream
            self.stream = open(self.path, "a", buffering=1)
            old.close()
        finally:
            self.release()


_handler: _ReopenableHandler | None = None
_access: "AccessLog | None" = None


def setup(level: str, fmt: str, error_log: str | None, role: str) -> None:
    """(Re)configure the error log for this process (master or worker)."""
    global _handler
    if _handler is not None:
        logger.removeHandler(_handler)
        if _handler.path is not None:
            _handler.stream.close()
    _handler = _ReopenableHandler(error_log)
    _handler.setFormatter(JsonFormatter(role) if fmt == "json" else TextFormatter(role))
    logger.addHandler(_handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def set_role(role: str) -> None:
    if _handler is not None:
        _handler.formatter.role = role  # type: ignore[union-attr]


def log(level: int, msg: str, **fields) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields} if fields else None)


class AccessLog:
    """Buffered access log.  ``record`` takes the request's facts; the worker calls
    ``flush`` periodically and at exit."""

    def __init__(self, target: str | None, fmt: str):
        self.target = target
        self.json = fmt == "json"
        self.fd = -1
        self._own = False
        self._buf: list[bytes] = []
        self._size = 0
        self._last = time.monotonic()
        self.reopen()

    @property
    def enabled(self) -> bool:
        return self.fd >= 0

    def reopen(self) -> None:
        self.flush()
        if self._own:
            os.close(self.fd)
        self._own = False
        if self.target is None:
            self.fd = -1
        elif self.target == "-":
            self.fd = sys.stdout.fileno()
        else:
            self.fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._own = True

    def record(self, listener: str, client: str, method: str, target: str,
               status: int, rule: str | None = None, action: str | None = None,
               bytes_in: int = 0, bytes_out: int = 0, duration: float = 0.0,
               upstream: str | None = None, reason: str | None = None) -> None:
        if self.fd < 0:
            return
        now = time.time()
        if self.json:
            line = json.dumps({
                "ts": _ts(now), "listener": listener, "client": client, "method": method,
                "target": target, "rule": rule, "action": action, "status": status,
                "bytes_in": bytes_in, "bytes_out": bytes_out,
                "duration_ms": round(duration * 1000, 3), "upstream": upstream,
                "reason": reason}, separators=(",", ":"))
        else:
            line = (f'{_ts(now)} {client} {listener} "{method} {target}" {status} '
                    f"{bytes_in} {bytes_out} {duration * 1000:.3f}ms rule={rule or '-'} "
                    f"action={action or '-'} upstream={upstream or '-'}"
                    + (f' reason="{reason}"' if reason else ""))
        data = (line + "\n").encode("utf-8", "backslashreplace")
        self._buf.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buf or self.fd < 0:
            self._buf.clear()
            self._size = 0
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:
            pass

    def maybe_flush(self) -> None:
        now = time.monotonic()
        if self._buf and now - self._last >= FLUSH_INTERVAL:
            self._last = now
            self.flush()


def access() -> AccessLog | None:
    return _access


def open_access(target: str | None, fmt: str) -> AccessLog:
    global _access
    _access = AccessLog(target, fmt)
    return _access


def reopen() -> None:
    if _handler is not None:
        _handler.reopen()
    if _access is not None:
        _access.reopen()
