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
    def __init__(self, status: int, reason: str, message: str = "bad_request"):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message = message  # a messages.* key


class UpstreamError(Exception):
    """The upstream leg failed: ``status`` is 502 (refused, reset, bad framing) or 504
    (timeout); ``before_response`` tells whether no byte of a response had arrived."""

    def __init__(self, status: int, reason: str, before_response: bool = True):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.before_response = before_response
