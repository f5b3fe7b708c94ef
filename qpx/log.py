"""Logs: the error log (stdlib ``logging``) and the access log (one line per request).

- ``logging.format: json`` → one JSON object per line for both logs, built by one small
  formatter; ``text`` → readable lines.  ``logging.level`` sets the error log's level.
- ``logging.error_log``: a path (default: stderr); ``logging.access_log``: a path, ``-``
  for stdout, or null for none.
- The access log is written in batches (at most every ``FLUSH_INTERVAL`` seconds or
  ``FLUSH_BYTES``), never one ``write`` per request; refused requests and connections
  closed before any HTTP byte are logged too, with the reason.
- USR1 calls :func:`reopen` (logrotate): both files are reopened by path.  A path that
  cannot be opened again keeps the old descriptor and says so in one error line; the
  next USR1 tries again.  A worker that cannot open the access log at start writes it to
  stderr instead (and says so): logs never stop service.
- Both logs write through :class:`~qpx.logsink.Sink`: never blocking, bounded, lines
  that do not fit are dropped and counted (:func:`dropped`), and reported by
  :func:`report_drops` at most every ``DROP_REPORT_INTERVAL`` seconds.
"""

from __future__ import annotations

import json
import logging
import time

from .logsink import Sink

FLUSH_INTERVAL = 0.5
FLUSH_BYTES = 65536
DROP_REPORT_INTERVAL = 10.0

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
            out.update((k, v) for k, v in extra.items() if v is not None)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def _text(v: object) -> str:
    """A field value in a text line: quoted when it has spaces, lists comma-joined."""
    if isinstance(v, (list, tuple)):
        v = ",".join(map(str, v))
    v = str(v)
    return f'"{v}"' if (" " in v or not v) else v


class TextFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record.created)} {record.levelname.lower():7} [{self.role} " \
               f"{record.process}] {record.getMessage()}"
        extra = getattr(record, "fields", None)
        if extra:
            line += "".join(f" {k}={_text(v)}" for k, v in extra.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class SinkHandler(logging.Handler):
    """The error log's handler: formatted records into a non-blocking :class:`Sink`."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path
        self.sink = Sink(path)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write((self.format(record) + "\n").encode("utf-8", "backslashreplace"))
        except Exception:  # a log record must never take the process down
            self.handleError(record)

    def reopen(self) -> None:
        failed = self.sink.reopen()
        if failed is not None:
            log(logging.ERROR, "cannot reopen the error log; still writing to the old file",
                path=self.path, error=failed.strerror or str(failed))

    def close(self) -> None:
        self.sink.close()
        super().close()


_handler: SinkHandler | None = None
_access: "AccessLog | None" = None


def setup(level: str, fmt: str, error_log: str | None, role: str) -> None:
    """(Re)configure the error log for this process (master or worker)."""
    global _handler
    new = SinkHandler(error_log)
    if _handler is not None:
        logger.removeHandler(_handler)
        _handler.close()
    _handler = new
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
    ``flush`` periodically and at exit.  ``enabled`` is False for ``access_log: null``."""

    def __init__(self, target: str | None, fmt: str):
        self.target = target
        self.json = fmt == "json"
        self.enabled = target is not None
        self.sink: Sink | None = None
        if self.enabled:
            try:
                self.sink = Sink(target)
            except OSError as e:
                self.sink = Sink(None)
                log(logging.ERROR, "cannot open the access log; writing it to stderr",
                    path=target, error=e.strerror or str(e))
        self._buf: list[bytes] = []
        self._size = 0
        self._last = time.monotonic()

    def reopen(self) -> None:
        self.flush()
        if self.sink is None:
            return
        if self.sink.target != self.target:  # fell back to stderr at start: try again
            try:
                sink = Sink(self.target)
            except OSError as e:
                log(logging.ERROR, "cannot reopen the access log; still writing to stderr",
                    path=self.target, error=e.strerror or str(e))
                return
            sink.dropped = self.sink.dropped
            self.sink.close()
            self.sink = sink
            return
        failed = self.sink.reopen()
        if failed is not None:
            log(logging.ERROR, "cannot reopen the access log; still writing to the old file",
                path=self.target, error=failed.strerror or str(failed))

    def record(self, listener: str, client: str, method: str, target: str,
               status: int, rule: str | None = None, action: str | None = None,
               bytes_in: int = 0, bytes_out: int = 0, duration: float = 0.0,
               upstream: str | None = None, reason: str | None = None,
               tls: str | None = None, sni: str | None = None) -> None:
        if self.sink is None:
            return
        now = time.time()
        if self.json:
            fields = {
                "ts": _ts(now), "listener": listener, "client": client, "method": method,
                "target": target, "rule": rule, "action": action, "status": status,
                "bytes_in": bytes_in, "bytes_out": bytes_out,
                "duration_ms": round(duration * 1000, 3), "upstream": upstream,
                "reason": reason}
            if tls is not None:  # TLS-terminated connections only
                fields["tls"] = tls
                fields["sni"] = sni
            line = json.dumps(fields, separators=(",", ":"))
        else:
            line = (f'{_ts(now)} {client} {listener} "{method} {target}" {status} '
                    f"{bytes_in} {bytes_out} {duration * 1000:.3f}ms"
                    + (f" rule={_text(rule)}" if rule else "")
                    + (f" action={action}" if action else "")
                    + (f" upstream={upstream}" if upstream else "")
                    + (f" tls={tls}" if tls else "") + (f" sni={sni}" if sni else "")
                    + (f' reason="{reason}"' if reason else ""))
        data = (line + "\n").encode("utf-8", "backslashreplace")
        self._buf.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.sink is None:
            self._buf.clear()
            self._size = 0
            return
        if self._buf:
            lines = len(self._buf)
            data = b"".join(self._buf)
            self._buf.clear()
            self._size = 0
            self.sink.write(data, lines)
        elif self.sink.pending:
            self.sink.flush()

    def maybe_flush(self) -> None:
        now = time.monotonic()
        if (self._buf or (self.sink is not None and self.sink.pending)) \
                and now - self._last >= FLUSH_INTERVAL:
            self._last = now
            self.flush()


def access() -> AccessLog | None:
    return _access


def open_access(target: str | None, fmt: str) -> AccessLog:
    global _access
    _access = AccessLog(target, fmt)
    return _access


def reopen() -> None:
    """USR1: reopen both logs by path; failures are logged, never raised."""
    if _handler is not None:
        _handler.reopen()
    if _access is not None:
        _access.reopen()


def dropped() -> int:
    """Log lines this process dropped so far (both logs): their readers stalled."""
    n = 0
    if _handler is not None:
        n += _handler.sink.dropped
    if _access is not None and _access.sink is not None:
        n += _access.sink.dropped
    return n


_drops = {"counted": 0, "warned": 0, "at": 0.0}


def report_drops() -> int:
    """Called periodically: the lines dropped since the last call (for the metric), and
    a warning line about them at most every DROP_REPORT_INTERVAL seconds."""
    total = dropped()
    new = total - _drops["counted"]
    _drops["counted"] = total
    now = time.monotonic()
    if total > _drops["warned"] and now - _drops["at"] >= DROP_REPORT_INTERVAL:
        log(logging.WARNING, "log lines dropped: a log reader is not keeping up",
            dropped=total - _drops["warned"], total=total)
        _drops["warned"] = total
        _drops["at"] = now
    return max(new, 0)


def flush_pending() -> None:
    """Retry what the error log's destination did not take yet."""
    if _handler is not None and _handler.sink.pending:
        _handler.sink.flush()
