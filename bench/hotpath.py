"""In-process CPU cost of one forward request, for A/B work on the hot path.

One gevent process runs a real ForwardEdge, a minimal keep-alive origin and a client,
over loopback TCP, and reports CPU microseconds per request (client and origin included:
their cost is constant between variants, so differences are qpxd's).

    python bench/hotpath.py [--requests 20000] [--browser] [--profile] [--rules N] [--freeze]
                            [--reverse]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BROWSER = (b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
           b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
           b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
           b"Connection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\n"
           b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Site: none\r\nSec-Fetch-User: ?1\r\n"
           b"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 04:42:19 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
            b"Last-Modified: Sun, 29 Nov 2026 04:42:10 GMT\r\nConnection: keep-alive\r\n"
            b"ETag: \"6773a2d2-64\"\r\nAccept-Ranges: bytes\r\n\r\n" + b"x" * 99 + b"\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--rules", type=int, default=1,
                    help="rules in the listener: a block list of N-1 before the allowing rule")
    ap.add_argument("--freeze", action="store_true", help="gc.freeze() after compiling")
    ap.add_argument("--reverse", action="store_true",
                    help="a reverse listener with one route to the origin instead")
    ap.add_argument("--direct", action="store_true",
                    help="the client talks to the origin itself (the baseline to subtract)")
    args = ap.parse_args()

    import tempfile

    import gevent
    from gevent import socket as gsocket
    from gevent.server import StreamServer

    from qpx.config import load_config
    from qpx.edges.forward import ForwardEdge
    from qpx.edges.services import Services
    from qpx.policy import compile_config

    def origin(sock, addr):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = sock.recv(65536)
                if not d:
                    return
                buf += d
            buf = buf.partition(b"\r\n\r\n")[2]
            sock.sendall(RESPONSE)

    osrv = StreamServer(("127.0.0.1", 0), origin)
    osrv.start()
    oport = osrv.server_port
    cfg_file = Path(tempfile.mkdtemp()) / "q.yaml"
    cfg_file.write_text("""
version: 1
logging: {access_log: null}
listeners:
  - name: fwd
    mode: forward
    listen: "127.0.0.1:1"
    default_action: {type: block}
    allow_local_destinations: true
    rules:
      - {name: loopback, match: {src_ip: ["127.0.0.0/8"]}, action: {type: direct}}
""")
    if args.rules > 1:
        import yaml
        from run import blocklist

        doc = yaml.safe_load(cfg_file.read_text())
        doc["listeners"][0]["rules"] = blocklist(args.rules - 1) + doc["listeners"][0]["rules"]
        cfg_file.write_text(yaml.safe_dump(doc))
    if args.reverse:
        cfg_file.write_text(f"""
version: 1
logging: {{access_log: null}}
reverse:
  - name: rev
    listen: "127.0.0.1:1"
    routes:
      - match: {{}}
        upstreams: ["http://127.0.0.1:{oport}"]
""")
    cfg, _ = load_config([str(cfg_file)])
    services = Services(compile_config(cfg))
    if args.freeze:
        import gc

        gc.freeze()
    if args.reverse:
        from qpx.edges.reverse import ReverseEdge

        edge = ReverseEdge(services.policy.reverse["rev"], services)
    else:
        edge = ForwardEdge(services.policy.listeners["fwd"], services)

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)
    from qpx.netio import Acceptor

    Acceptor(lsock, edge.handle).start()
    pport = lsock.getsockname()[1]
    req = (b"GET http://127.0.0.1:%d/100b HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % (oport, oport)
           + (BROWSER if args.browser else b"") + b"\r\n")

    if args.direct or args.reverse:
        pport = oport if args.direct else pport
        req = b"GET /100b HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % oport + \
            (BROWSER if args.browser else b"") + b"\r\n"

    def client(n):
        c = gsocket.create_connection(("127.0.0.1", pport))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            c.sendall(req)
            got = b""
            while not got.endswith(b"x\n"):
                got += c.recv(65536)
        c.close()

    client(200)  # warm up
    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    t0 = time.process_time()
    w0 = time.perf_counter()
    gevent.joinall([gevent.spawn(client, args.requests // 4) for _ in range(4)])
    cpu = time.process_time() - t0
    wall = time.perf_counter() - w0
    if prof:
        prof.disable()
        import pstats
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    n = args.requests // 4 * 4
    print(f"{cpu / n * 1e6:.1f} us CPU per request ({n} requests, {n / wall:.0f} req/s "
          f"in one process)")


if __name__ == "__main__":
    main()
