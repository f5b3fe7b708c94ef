"""HTTP/2 on a client connection (h2 over TLS by ALPN, h2c with prior knowledge).

The ``h2`` library keeps the protocol state (frames, HPACK, stream states, flow-control
windows); this module drives it over the connection's :class:`~qpx.netio.Conn`:

- one greenlet per connection reads frames and dispatches events; one greenlet per
  stream runs the edge's ordinary HTTP/1.1 session over a :class:`StreamConn` — a
  connection-shaped object whose reads deliver the request as HTTP/1.1
  (:func:`~qpx.http.h2map.request_head` + body, chunked when it has no length) and whose
  writes turn the HTTP/1.1 response back into HEADERS and DATA
  (:class:`~qpx.http.h2map.ResponseReader`).  So every stream goes through the same
  parser, limits, rules, routes, header control, retries, pool and access log as an
  HTTP/1.1 request, to the same pooled HTTP/1.1 upstream connections;
- flow control both ways: a response is written only within the stream's and the
  connection's send windows (a slow reader stalls its stream, and through it the
  upstream read: nothing is buffered beyond one window), and request body bytes are
  acknowledged (WINDOW_UPDATE) only when the stream has consumed them;
- limits: ``MAX_CONCURRENT_STREAMS`` (100), ``MAX_HEADER_LIST_SIZE``
  (``runtime.max_header_bytes``); floods of RST_STREAM (rapid reset, CVE-2023-44487),
  PING, SETTINGS and empty DATA frames (CVE-2019-9512/9514/9515/9518 classes) beyond
  :data:`FLOOD_LIMIT` in :data:`FLOOD_WINDOW` seconds end the connection with GOAWAY
  ENHANCE_YOUR_CALM and one log line;
- graceful stop (worker drain): GOAWAY NO_ERROR, open streams finish, then the close.

All writes to the socket go through one lock: a greenlet blocked on a full socket never
lets another interleave its frames.
"""

from __future__ import annotations

import logging
import time

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from . import log
from .http.h2map import H2RequestError, ResponseReader, request_head
from .netio import Conn, DeadlineExceeded

monotonic = time.monotonic

MAX_STREAMS = 100
INITIAL_WINDOW = 1 << 20  # per stream, for request bodies
FLOOD_WINDOW = 10.0
FLOOD_LIMIT = 1000  # RST_STREAM / PING / SETTINGS / empty DATA per window
IDLE_CHECK = 1.0  # how often an idle connection looks at the worker's drain flag


class StreamGone(ConnectionResetError):
    """The client reset the stream (or the connection went away)."""


class StreamConn:
    """One stream, shaped like the :class:`~qpx.netio.Conn` an HTTP/1.1 session uses."""

    __slots__ = ("h2s", "sid", "inbox", "ended", "readable", "writable", "reader",
                 "deadline", "closed", "reset", "chunked", "sock", "started", "finished",
                 "method", "_unacked")

    def __init__(self, h2s: "H2Session", sid: int, head: bytes, chunked: bool,
                 end_stream: bool, method: bytes):
        self.h2s = h2s
        self.sid = sid
        self.inbox = bytearray(head)  # the request as HTTP/1.1 bytes, then its body
        self.ended = end_stream
        self.readable = Event()
        self.writable = Event()
        self.reader = ResponseReader(method == b"HEAD")
        self.deadline = 0.0
        self.closed = False
        self.reset = False
        self.chunked = chunked
        self.sock = self  # the body pumps call conn.sock.recv_into
        self.started = False  # response HEADERS sent
        self.finished = False  # response ended (END_STREAM sent)
        self.method = method
        self._unacked = 0
        if end_stream and chunked:
            self.inbox += b"0\r\n\r\n"

    # -- request side (fed by the connection greenlet) -------------------------

    def feed(self, data: bytes, flow: int) -> None:
        if self.chunked and data:
            self.inbox += b"%x\r\n%s\r\n" % (len(data), data)
        else:
            self.inbox += data
        self._unacked += flow
        self.readable.set()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            if self.chunked:
                self.inbox += b"0\r\n\r\n"
            self.readable.set()

    def gone(self) -> None:
        self.reset = True
        self.readable.set()
        self.writable.set()

    # -- reading (the session and the body pumps) ------------------------------

    def _take(self, size: int) -> bytes:
        n = min(size, len(self.inbox)) if size else len(self.inbox)
        data = bytes(self.inbox[:n])
        del self.inbox[:n]
        if self._unacked:  # the client may send more now: give its window back
            self.h2s.ack(self.sid, self._unacked)
            self._unacked = 0
        return data

    def wait_readable(self) -> None:
        while not self.inbox and not self.ended and not self.reset:
            self.readable.clear()
            timeout = None
            if self.deadline:
                timeout = self.deadline - monotonic()
                if timeout <= 0:
                    raise DeadlineExceeded()
            if not self.readable.wait(timeout) and self.deadline:
                raise DeadlineExceeded()
        if self.reset and not self.inbox:
            raise StreamGone("the client reset the stream")

    def recv(self, size: int = 65536, timeout: float = 0.0) -> bytes:
        if timeout and not self.inbox:
            self.deadline = monotonic() + timeout
        self.wait_readable()
        return self._take(size)

    recv_later = recv

    def recv_nowait(self, size: int = 65536) -> bytes | None:
        if self.inbox or self.ended:
            return self._take(size)
        return None

    def recv_into(self, buf, size: int = 0, flags: int = 0) -> int:
        """Non-blocking, as a raw socket's (the pumps wait with wait_readable)."""
        if not self.inbox:
            if self.reset:
                raise StreamGone("the client reset the stream")
            if self.ended:
                return 0
            raise BlockingIOError()
        data = self._take(min(size or len(buf), len(buf)))
        buf[:len(data)] = data
        return len(data)

    # -- writing: the HTTP/1.1 response becomes frames --------------------------

    def sendall(self, data, timeout: float = 0.0) -> None:
        if self.reset:
            raise StreamGone("the client reset the stream")
        if self.finished:
            return  # e.g. bytes after a HEAD response's head: HTTP/1.1 sends none either
        try:
            events = self.reader.feed(data)
        except ValueError as e:
            raise OSError(f"response for HTTP/2 stream: {e}") from None
        h2s = self.h2s
        n = len(events)
        for i, ev in enumerate(events):
            kind = ev[0]
            if kind == "headers":
                h2s.send_headers(self, ev[1], ev[2])
                self.started = True
                self.finished = ev[2]
            elif kind == "data":
                end = i + 1 < n and events[i + 1][0] == "end"
                h2s.send_data(self, ev[1], timeout, end)
                if end:
                    self.finished = True
            elif not self.finished:
                h2s.end_stream(self)
                self.finished = True
        h2s.flush()  # one write for the whole piece: head, body and end together

    def shutdown_write(self) -> None:
        for ev in self.reader.finish():
            if ev[0] == "end" and not self.finished:
                self.h2s.end_stream(self)
                self.finished = True
                try:
                    self.h2s.flush()
                except StreamGone:
                    pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.shutdown_write()
        if not self.finished and not self.reset:
            self.h2s.reset_stream(self, ErrorCodes.INTERNAL_ERROR if self.started
                                  else ErrorCodes.REFUSED_STREAM)

    def abort(self) -> None:
        self.close()

    def peek_alive(self) -> bool:
        return not self.reset

    def interrupt(self, error: BaseException) -> bool:
        return False


class H2Session:
    """One HTTP/2 client connection.  ``serve_stream(stream_conn)`` runs a stream's
    HTTP/1.1 session (the edge's)."""

    def __init__(self, conn: Conn, services, name: str, client, serve_stream,
                 initial: bytes = b"", limits=None):
        limits = limits if limits is not None else services.limits
        self.conn = conn
        self.services = services
        self.name = name
        self.client = client
        self.serve_stream = serve_stream
        self.initial = initial
        # Outbound fields come from qpxd's own HTTP/1.1 response writer and have passed
        # the response parser: lower-cased and filtered in h2map, they skip h2's checks
        # (a third of its cost per response).  Inbound fields are checked.
        config = H2Configuration(client_side=False, header_encoding=None,
                                 validate_inbound_headers=True,
                                 validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        self.h2 = H2Connection(config=config)
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_head,
            SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
            SettingCodes.ENABLE_PUSH: 0,
        })
        self.streams: dict[int, StreamConn] = {}
        self.wlock = Semaphore()
        self.window_open = Event()
        self.floods = {"reset": [], "ping": [], "settings": [], "empty": []}
        self.goaway_sent = False
        self.dead = False

    # ------------------------------------------------------------------ writing

    def flush(self) -> None:
        with self.wlock:
            data = self.h2.data_to_send()
            if data:
                try:
                    self.conn.sendall(data, self.services.send_timeout)
                except (OSError, DeadlineExceeded):
                    self.dead = True
                    for s in self.streams.values():
                        s.gone()
                    raise StreamGone("the client connection failed") from None

    def send_headers(self, stream: StreamConn, headers, end: bool) -> None:
        """Queued; the caller flushes."""
        try:
            self.h2.send_headers(stream.sid, headers, end_stream=end)
        except H2Error as e:
            raise StreamGone(f"HTTP/2 stream {stream.sid}: {e}") from None

    def send_data(self, stream: StreamConn, data: bytes, timeout: float,
                  end: bool = False) -> None:
        """Within the flow-control windows (waiting for the client's WINDOW_UPDATE when
        they are shut); the last frame carries END_STREAM when ``end``.  Queued; whole
        windows are flushed as they fill."""
        view = memoryview(data)
        while view:
            if stream.reset or self.dead:
                raise StreamGone("the client reset the stream")
            try:
                window = min(self.h2.local_flow_control_window(stream.sid),
                             self.h2.max_outbound_frame_size)
            except H2Error as e:
                raise StreamGone(f"HTTP/2 stream {stream.sid}: {e}") from None
            if window <= 0:
                # A slow reader: wait for its WINDOW_UPDATE (nothing more is buffered)
                self.flush()
                stream.writable.clear()
                if not stream.writable.wait(timeout or self.services.send_timeout):
                    raise DeadlineExceeded()
                continue
            piece, view = view[:window], view[window:]
            self.h2.send_data(stream.sid, bytes(piece), end_stream=end and not view)
            if len(piece) >= 65536:
                self.flush()

    def end_stream(self, stream: StreamConn) -> None:
        """Queued; the caller flushes."""
        try:
            self.h2.end_stream(stream.sid)
        except H2Error:
            return

    def reset_stream(self, stream: StreamConn, code) -> None:
        try:
            self.h2.reset_stream(stream.sid, code)
            self.flush()
        except (H2Error, StreamGone):
            pass

    def ack(self, sid: int, n: int) -> None:
        try:
            self.h2.acknowledge_received_data(n, sid)
            self.flush()
        except (H2Error, StreamGone):
            pass

    # ------------------------------------------------------------------ reading

    def serve(self) -> None:
        h2 = self.h2
        h2.initiate_connection()
        # the connection's own receive window (65 535 by default) as large as a stream's:
        # uploads are not throttled by it
        h2.increment_flow_control_window(INITIAL_WINDOW - 65535)
        self.last_active = monotonic()
        try:
            self.flush()
            data = self.initial
            while not self.dead:
                if data:
                    try:
                        events = h2.receive_data(data)
                    except ProtocolError as e:
                        self.goaway(ErrorCodes.PROTOCOL_ERROR, f"protocol error: {e}")
                        return
                    for ev in events:
                        self.event(ev)
                    self.flush()
                if self.goaway_sent and not self.streams:
                    return
                data = self._read()
                if data is None:
                    return
        except StreamGone:
            pass
        finally:
            self.dead = True
            for s in list(self.streams.values()):
                s.gone()

    def _read(self) -> bytes | None:
        """The next bytes, b"" to look at the drain flag again, None at the end."""
        conn = self.conn
        services = self.services
        idle = not self.streams
        conn.deadline = monotonic() + IDLE_CHECK
        try:
            data = conn.recv()
        except DeadlineExceeded:
            if services.stopping and not self.goaway_sent:
                self.goaway(ErrorCodes.NO_ERROR, None)
            if idle and monotonic() - self.last_active > services.keepalive_timeout:
                self.goaway(ErrorCodes.NO_ERROR, None)
                return None
            return b""
        except OSError:
            return None
        if not data:
            return None
        self.last_active = monotonic()
        return data

    last_active = 0.0

    def event(self, ev) -> None:
        if isinstance(ev, RequestReceived):
            self.request(ev.stream_id, ev.headers, ev.stream_ended is not None)
        elif isinstance(ev, DataReceived):
            s = self.streams.get(ev.stream_id)
            if not ev.data and self.flooded("empty", "empty DATA frames"):
                return
            if s is not None:
                s.feed(ev.data, ev.flow_controlled_length)
            else:
                self.ack(ev.stream_id, ev.flow_controlled_length)
        elif isinstance(ev, (StreamEnded, TrailersReceived)):
            s = self.streams.get(ev.stream_id)
            if s is not None and isinstance(ev, StreamEnded):
                s.end()
        elif isinstance(ev, StreamReset):
            s = self.streams.pop(ev.stream_id, None)
            if s is not None:
                s.gone()
            if ev.remote_reset:
                self.flooded("reset", "RST_STREAM frames (rapid reset)")
        elif isinstance(ev, WindowUpdated):
            targets = self.streams.values() if ev.stream_id == 0 else \
                [self.streams[ev.stream_id]] if ev.stream_id in self.streams else []
            for s in targets:
                s.writable.set()
        elif isinstance(ev, PingReceived):
            self.flooded("ping", "PING frames")
        elif isinstance(ev, RemoteSettingsChanged):
            self.flooded("settings", "SETTINGS frames")
            for s in self.streams.values():  # the initial window may have grown
                s.writable.set()
        elif isinstance(ev, ConnectionTerminated):
            self.dead = True

    def flooded(self, kind: str, what: str) -> bool:
        now = monotonic()
        times = self.floods[kind]
        times.append(now)
        if len(times) > FLOOD_LIMIT:
            del times[:len(times) - FLOOD_LIMIT - 1]
            if now - times[0] < FLOOD_WINDOW:
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM,
                            f"flood: over {FLOOD_LIMIT} {what} in {FLOOD_WINDOW:g}s")
                self.dead = True
                return True
        return False

    def goaway(self, code, reason: str | None) -> None:
        if self.goaway_sent:
            return
        self.goaway_sent = True
        last = self.h2.highest_inbound_stream_id
        try:
            if code == ErrorCodes.NO_ERROR:
                # Graceful: h2's close_connection() would close its state machine, and
                # the open streams could not finish.  The frame goes out by hand; new
                # streams are refused from here on (see request()).
                frame = GoAwayFrame(0)
                frame.last_stream_id = last
                frame.error_code = code
                with self.wlock:
                    pending = self.h2.data_to_send()
                    self.conn.sendall(pending + frame.serialize(),
                                      self.services.send_timeout)
            else:
                self.h2.close_connection(code, last_stream_id=last)
                self.flush()
        except (H2Error, StreamGone, OSError, DeadlineExceeded):
            pass
        if reason is not None:
            log.log(logging.WARNING, "HTTP/2 connection closed", listener=self.name,
                    client=self.client.label, reason=reason)

    # ------------------------------------------------------------------ streams

    def request(self, sid: int, headers, end_stream: bool) -> None:
        if self.goaway_sent:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        try:
            head, chunked, method = request_head(headers, end_stream)
        except H2RequestError as e:
            self.refuse(sid, 400, str(e))
            return
        if any(n == b"content-type" and v.startswith(b"application/grpc")
               for n, v in headers):
            self.refuse(sid, 502, "gRPC needs HTTP trailers, which qpxd does not relay")
            return
        stream = StreamConn(self, sid, head, chunked, end_stream, method)
        self.streams[sid] = stream
        gevent.spawn(self._run_stream, stream)

    def _run_stream(self, stream: StreamConn) -> None:
        try:
            self.serve_stream(stream)
        except (OSError, DeadlineExceeded):
            pass
        finally:
            stream.close()
            self.streams.pop(stream.sid, None)
            if self.goaway_sent and not self.streams:
                self.conn.deadline = monotonic()  # wake the reader: nothing left to serve
                self.conn.interrupt(DeadlineExceeded())

    def refuse(self, sid: int, status: int, reason: str) -> None:
        """A stream refused before it reaches the HTTP/1.1 pipeline: the status, the
        reason as body, one access log line."""
        body = reason.encode() + b"\n"
        self.h2.send_headers(sid, [(b":status", str(status).encode()),
                                   (b"content-type", b"text/plain; charset=utf-8"),
                                   (b"content-length", str(len(body)).encode())])
        self.h2.send_data(sid, body, end_stream=True)
        access = self.services.access
        if access.enabled:
            access.record(self.name, self.client.label, "-", "-", status, None, None, 0,
                          len(body), 0.0, None, reason, self.client.tls, self.client.sni)
