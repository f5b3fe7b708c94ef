"""The exceptions of the HTTP layer, and status phrases.

- :class:`HttpError`: a request that must be refused — the status to answer, a short
  reason for the log line, and the ``messages.*`` key whose text becomes the body.  Every
  HttpError closes the connection after the response: a request qpxd refused is one
  whose framing it may not fully know.
- :class:`BadResponse`: the sans-IO response parser's refusal of an upstream's head
  (RFC 9112 §6.3: discard it, close the connection, answer 502).  The upstream exchange
  turns it into an :class:`UpstreamError` that names the upstream.
- :class:`UpstreamError`: the upstream leg failed.  Built complete where it is raised,
  never modified afterwards.
"""

from __future__ import annotations

from http import HTTPStatus

PHRASES: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
PHRASES.setdefault(508, "Loop Detected")
PHRASES.setdefault(421, "Misdirected Request")


def phrase(status: int) -> str:
    return PHRASES.get(status, "Unknown")


class HttpError(Exception):
    def __init__(self, status: int, reason: str, message: str = "bad_request",
                 headers: tuple = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message = message  # a messages.* key
        self.headers = headers  # extra (lname, name, value) response headers


class BadResponse(Exception):
    """An upstream's response head (or its framing) that qpxd refuses to relay."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UpstreamError(Exception):
    """The upstream leg failed: ``status`` is 502 (refused, reset, bad framing) or 504
    (timeout); ``before_response`` tells whether no byte of a response had arrived and
    ``sent`` whether any byte of the request may have reached the upstream (False for a
    failed connect: safe to retry anywhere); ``stale`` that a reused keep-alive
    connection turned out closed (EOF or reset before any response byte: a replay on a
    fresh connection is safe); ``upstream`` names the upstream for the log line;
    ``local`` that this host, not the upstream, failed (out of file descriptors, buffers
    or memory: the upstream's health must not suffer for it)."""

    def __init__(self, status: int, reason: str, before_response: bool = True,
                 upstream: str | None = None, sent: bool = True, stale: bool = False,
                 local: bool = False):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.before_response = before_response
        self.upstream = upstream
        self.sent = sent
        self.stale = stale
        self.local = local
