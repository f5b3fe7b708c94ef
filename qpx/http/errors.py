"""The one exception the HTTP layer raises for a request that must be refused.

:class:`HttpError` carries the status to answer, a short reason for the log line, and the
``messages.*`` key whose text becomes the body.  Every HttpError closes the connection
after the response: a request qpxd refused is one whose framing it may not fully know.
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


class UpstreamError(Exception):
    """The upstream leg failed: ``status`` is 502 (refused, reset, bad framing) or 504
    (timeout); ``before_response`` tells whether no byte of a response had arrived and
    ``sent`` whether any byte of the request may have reached the upstream (False for a
    failed connect: safe to retry anywhere); ``stale`` that a reused keep-alive
    connection turned out closed (EOF or reset before any response byte: a replay on a
    fresh connection is safe)."""

    def __init__(self, status: int, reason: str, before_response: bool = True,
                 upstream: str | None = None, sent: bool = True, stale: bool = False):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.before_response = before_response
        self.upstream = upstream
        self.sent = sent
        self.stale = stale
