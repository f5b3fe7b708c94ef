"""HTTPS keep-alive load for the TLS inspection benchmark, the same client for both rows.

    python bench/tls_load.py inspect PROXY_PORT ORIGIN_PORT CA SECONDS CONNS
    python bench/tls_load.py reverse PORT - - SECONDS CONNS

``inspect``: each connection CONNECTs through the forward proxy to 127.0.0.1:ORIGIN_PORT,
does TLS trusting CA (the inspection CA) and sends GET /100b on that one connection until
the time is up; ``reverse``: TLS straight to PORT (no verification), the same requests.
Threads, one per connection.  Prints one JSON object: requests, seconds.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time


def worker(mode, port, origin, ca, until, counts, i):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if mode == "inspect":
        raw.sendall(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % origin)
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(4096)
        ctx = ssl.create_default_context(cafile=ca)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(raw, server_hostname="localhost")
    req = b"GET /100b HTTP/1.1\r\nHost: localhost\r\n\r\n"
    n = 0
    while time.monotonic() < until:
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection {i} closed by the server")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                length = int(buf[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) >= end + 4 + length:
                    break
        n += 1
    counts[i] = n
    s.close()


def main() -> None:
    mode, port, origin, ca, seconds, conns = sys.argv[1:7]
    port, seconds, conns = int(port), float(seconds), int(conns)
    origin = int(origin) if origin != "-" else 0
    counts = [0] * conns
    until = time.monotonic() + seconds
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(mode, port, origin, ca, until, counts, i))
               for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"requests": sum(counts), "seconds": time.monotonic() - t0}))


if __name__ == "__main__":
    main()
