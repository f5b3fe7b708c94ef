"""The ways traffic reaches qpxd: ``forward`` (clients configured with a proxy),
``reverse`` (published services), ``transparent`` (redirected traffic) and ``status``
(``/metrics``, ``/health``).

Shared by the edges, one job each: ``services`` (per-worker state), ``prologue`` (PROXY
metadata and the connection filter), ``session`` (the client connection's HTTP/1.1
state), ``common`` (the session loop and the answers several edges give) and
``exchange`` (one request to an upstream and its response back).  Edges decide; they
import these modules, never each other.
"""
