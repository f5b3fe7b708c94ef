"""TLS on a :class:`~qpx.netio.Conn`: the handshake and non-blocking reads and writes.

The layer is OpenSSL's own socket I/O (``ssl.SSLSocket`` over the connection's
non-blocking descriptor), not ``SSLObject`` over ``MemoryBIO``s, where Python moves every
record between the socket and OpenSSL.  bench/tls_layers.py (client CPU per round trip,
three runs on this 2-core host): 200 B 12.6-13.1 µs with SSLSocket vs 13.0-14.6 µs with
MemoryBIO; 16 KiB 21.5-24.8 µs vs 24.3-26.0 µs.  Near-equal, so the choice follows the
code: with ``SSLSocket`` the connection's watchers, deadlines and sweeper, and the body and
tunnel pumps that call ``sock.recv_into`` directly, stay exactly as they are:

- :class:`TlsSocket` turns OpenSSL's want-read/want-write into ``BlockingIOError``, the
  signal every :class:`~qpx.netio.Conn` method (and the body and tunnel pumps, which call
  ``sock.recv_into`` directly) already waits on;
- :class:`TlsConn` is the connection once wrapped (the same object, its class switched:
  no copy of its state): a read that must wait first (``recv_later``) takes what OpenSSL
  already decrypted, and the pool's liveness check looks past TLS records that carry no
  data (session tickets).

Bytes read before the handshake cannot be handed to OpenSSL: the prologue therefore
reads exactly the PROXY header on TLS listeners and peeks at the ClientHello.
"""

from __future__ import annotations

import ssl
import time

from .netio import Conn

monotonic = time.monotonic
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsSocket(ssl.SSLSocket):
    """``SSLSocket`` whose would-block errors are ``BlockingIOError``."""

    sni: str | None = None  # the ClientHello's server name (server side)
    refusal: str | None = None  # why the SNI callback refused the handshake

    def recv(self, buflen=1024, flags=0):
        try:
            return super().recv(buflen, flags)
        except _WANT:
            raise BlockingIOError() from None

    def recv_into(self, buffer, nbytes=None, flags=0):
        try:
            return super().recv_into(buffer, nbytes, flags)
        except _WANT:
            raise BlockingIOError() from None

    def send(self, data, flags=0):
        try:
            return super().send(data, flags)
        except _WANT:
            raise BlockingIOError() from None


class TlsConn(Conn):
    """A :class:`Conn` whose socket is a :class:`TlsSocket`."""

    __slots__ = ()

    def recv_later(self, size: int = 65536) -> bytes:
        if self.sock.pending():
            return self.sock.recv(size)
        return Conn.recv_later(self, size)

    def recv_later_large(self, pool, size: int = 65536) -> bytes:
        return self.recv_later(size)  # the TLS layer reads records, not socket buffers

    def idle_alive(self) -> bool:
        # plaintext the TLS layer already holds never shows on the socket
        return not self.sock.pending() and Conn.idle_alive(self)

    def peek_alive(self) -> bool:
        if not Conn.peek_alive(self):
            # readable: a session ticket or a key update is no reason to drop it, data or
            # a close is
            try:
                data = self.sock.recv(1)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if data:
                return False
            return False
        return not self.sock.pending()

    def shutdown_write(self) -> None:
        # close_notify is a write of its own that could block; a TCP half-close tells the
        # peer the same for everything qpxd relays
        Conn.shutdown_write(self)


def wrap(conn: Conn, ctx: ssl.SSLContext, server_side: bool,
         server_hostname: str | None = None, session=None) -> TlsConn:
    """Wrap ``conn``'s socket (same descriptor, same watchers); no handshake yet."""
    conn.sock = ctx.wrap_socket(conn.sock, server_side=server_side,
                                server_hostname=server_hostname,
                                do_handshake_on_connect=False, session=session)
    conn.__class__ = TlsConn
    return conn  # type: ignore[return-value]


def handshake(conn: TlsConn, deadline: float) -> None:
    """Complete the handshake by ``deadline`` (absolute).  Raises ``ssl.SSLError``
    (refused, bad bytes), ``OSError`` or :class:`~qpx.netio.DeadlineExceeded`."""
    sock = conn.sock
    conn.deadline = deadline
    while True:
        try:
            sock.do_handshake()
            break
        except ssl.SSLWantReadError:
            conn.wait_readable()
        except ssl.SSLWantWriteError:
            conn.wait_writable()
    conn.deadline = 0.0


def version_label(conn: Conn) -> str | None:
    """``TLSv1.3`` etc. for a TLS connection, None for a plain one."""
    sock = conn.sock
    return sock.version() if isinstance(sock, ssl.SSLSocket) else None
