"""TLS contexts: server certificates chosen by SNI, client contexts for https upstreams.

Everything here runs in the master (``check``, ``run`` and every reload) before the
workers fork, so every worker shares the same contexts — and with them the session
ticket keys, so a client resumes on whichever worker of the SO_REUSEPORT group takes its
next connection.  Contexts are cached by what they are made of (file contents, version,
ALPN): a reload that does not change a certificate keeps its context, and the tickets
issued before the reload stay valid; a changed file builds a new one, which new
connections get while established ones keep theirs.

Server side (:class:`ServerTls`): one context per certificate; the connection starts on a
*base* context whose ``sni_callback`` switches to the certificate for the ClientHello's
server name (lower-cased): an exact name first, then a ``*.parent`` wildcard (one
label), then the ``default: true`` certificate; none of them → a handshake_failure
alert, as the original.  The base context is the default certificate's when there is
one (so tickets and clients without SNI work without a switch).

Settings: TLS 1.2 minimum (``min_version: "1.3"`` raises it), TLS 1.3 preferred, TLS 1.2
limited to ECDHE with AES-GCM or ChaCha20 (Mozilla "intermediate"), no renegotiation, no
compression, ALPN ``http/1.1``.

Client side (:func:`client_context`): certificate and host name verification on by
default, against the system store or ``ca_file``; ``verify: false`` is explicit and warned
about at start.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl

from .tlsconn import TlsSocket

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_cache: dict[tuple, ssl.SSLContext] = {}
# what a server name may hold (RFC 6066: a DNS host name; "_" as real names have it)
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")


class TlsFileError(ValueError):
    """A certificate or key that cannot be used; the message names the file and why."""


def _fingerprint(*paths: str | None) -> tuple:
    out = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        try:
            with open(p, "rb") as f:
                out.append(hashlib.sha256(f.read()).hexdigest())
        except OSError as e:
            raise TlsFileError(f"cannot read {p}: {e.strerror or e}") from None
    return tuple(out)


def _base_server_context(min_version: str, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslsocket_class = TlsSocket
    ctx.minimum_version = VERSIONS[min_version]
    ctx.options |= (ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_COMPRESSION)
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def certificate_context(cert: str, key: str, min_version: str = "1.2",
                        alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A server context holding one certificate chain; cached by content.  Raises
    :class:`TlsFileError` for a missing, unreadable or mismatched pair."""
    ident = ("server", _fingerprint(cert, key), min_version, alpn)
    ctx = _cache.get(ident)
    if ctx is not None:
        return ctx
    ctx = _base_server_context(min_version, alpn)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "KEY_VALUES_MISMATCH" in reason.upper() or "mismatch" in reason.lower():
            raise TlsFileError(f"the key {key} does not match the certificate {cert}") \
                from None
        raise TlsFileError(f"cannot load {cert} / {key}: {reason}") from None
    except OSError as e:
        raise TlsFileError(f"cannot load {cert} / {key}: {e.strerror or e}") from None
    _cache[ident] = ctx
    return ctx


class ServerTls:
    """The certificates of one TLS listener, chosen by SNI.  ``context`` is what
    accepted connections are wrapped with; the chosen name lands on the socket
    (``sock.sni``).  Build it with :meth:`get`: the same certificates (by content) and
    settings give the same object, whose base context keeps its ticket keys."""

    @classmethod
    def get(cls, certificates, min_version: str = "1.2",
            alpn: tuple[str, ...] = ("http/1.1",)) -> "ServerTls":
        ident = ("listener", tuple((c.sni.lower(), c.default, _fingerprint(c.cert, c.key))
                                   for c in certificates), min_version, alpn)
        hit = _cache.get(ident)
        if hit is None:
            hit = _cache[ident] = cls(certificates, min_version, alpn)
        return hit

    def __init__(self, certificates, min_version: str = "1.2",
                 alpn: tuple[str, ...] = ("http/1.1",)):
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        self.default: ssl.SSLContext | None = None
        for c in certificates:
            ctx = certificate_context(c.cert, c.key, min_version, alpn)
            name = c.sni.lower().rstrip(".")
            if name.startswith("*."):
                self.wildcard.setdefault(name[2:], ctx)
            elif name:
                self.exact.setdefault(name, ctx)
            if c.default and self.default is None:
                self.default = ctx
        # The base context carries the callback (and issues the session tickets).  It
        # must be a context of its own: a certificate's context is shared by listeners.
        base = _base_server_context(min_version, alpn)
        if self.default is not None:
            first = next(c for c in certificates if c.default)
            base.load_cert_chain(first.cert, first.key)
        base.sni_callback = self._choose
        self.context = base

    def lookup(self, name: str | None) -> ssl.SSLContext | None:
        if name:
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            parent = name.partition(".")[2]
            if parent:
                ctx = self.wildcard.get(parent)
                if ctx is not None:
                    return ctx
        return self.default

    def _choose(self, sock, server_name: str | None, base: ssl.SSLContext):
        name = server_name.lower().rstrip(".") if server_name else None
        if name is not None and not _HOST_NAME.fullmatch(name):
            sock.refusal = f"invalid SNI {server_name!r}"
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.sni = name
        ctx = self.lookup(name)
        if ctx is None:
            sock.refusal = "no certificate for " + (repr(name) if name else "clients "
                                                      "without SNI")
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        if ctx is not self.default:
            sock.context = ctx
        return None


def client_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """A context for connections to upstreams (origins or proxies); cached."""
    ident = ("client", verify, _fingerprint(ca_file) if ca_file else None)
    ctx = _cache.get(ident)
    if ctx is not None:
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslsocket_class = TlsSocket
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_file:
            try:
                ctx.load_verify_locations(cafile=ca_file)
            except (ssl.SSLError, OSError) as e:
                raise TlsFileError(f"cannot load CA file {ca_file}: "
                                   f"{getattr(e, 'reason', None) or e}") from None
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _cache[ident] = ctx
    return ctx


def resolve_path(path: str, base_file: str | None) -> str:
    """A certificate path as written, relative to the directory of the file that names
    it (a systemd service's working directory is ``/``)."""
    if os.path.isabs(path) or not base_file:
        return path
    return os.path.normpath(os.path.join(os.path.dirname(base_file), path))
