"""Bulk transfer client: 1 MiB objects, back to back on one keep-alive connection.

    python bench/bulk.py MODE ORIGIN_PORT SECONDS [PROXY_PORT]

MODE ``direct`` (GET from the origin: the ceiling), ``get`` (absolute-form GET through a
forward proxy) or ``connect`` (a CONNECT tunnel, then GETs inside it).  Prints one JSON
object: bytes received, seconds, MB/s, objects.  Reads with ``recv_into`` a 1 MiB
buffer so the client costs little next to the proxy under test.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def read_head(s: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return length, rest


def main() -> None:
    mode, origin_port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    proxy_port = int(sys.argv[4]) if len(sys.argv) > 4 else None
    origin = f"127.0.0.1:{origin_port}".encode()
    s = socket.create_connection(("127.0.0.1", proxy_port or origin_port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "connect":
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (origin, origin))
        status, _ = read_head(s, bytearray())
    target = b"http://" + origin + b"/1m" if mode == "get" else b"/1m"
    request = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, origin)
    buf = bytearray(1 << 20)
    total = objects = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        s.sendall(request)
        length, rest = read_head(s, buf)
        got = len(rest)
        while got < length:
            n = s.recv_into(buf)
            if not n:
                raise ConnectionError("closed mid-body")
            got += n
        total += got
        objects += 1
    took = time.monotonic() - t0
    s.close()
    print(json.dumps({"bytes": total, "seconds": took, "mb_s": total / took / 1e6,
                      "objects": objects}))


if __name__ == "__main__":
    main()
