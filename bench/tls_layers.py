"""Which TLS layer costs less Python per record: ``SSLSocket`` (OpenSSL does the socket
I/O in C) or ``SSLObject`` over two ``MemoryBIO``s (Python moves every record between the
socket and OpenSSL).  The question qpx/tlsconn.py had to answer.

A server thread echoes over an ``SSLSocket``; the client sends 16 KiB and reads the echo
back, N times, once through each layer; the figure is the client thread's CPU time per
round trip (``time.thread_time``), so the server's share does not count.

Run: .venv/bin/python bench/tls_layers.py   (makes a throw-away certificate)
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tempfile
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

N = 3000
SIZE = 16384


def make_cert(tmp: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.test")]), False)
            .sign(key, hashes.SHA256()))
    c, k = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
    with open(c, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(k, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return c, k


def serve(lsock: socket.socket, ctx: ssl.SSLContext) -> None:
    for _ in range(4):
        raw, _ = lsock.accept()
        s = ctx.wrap_socket(raw, server_side=True)
        while True:
            data = s.recv(65536)
            if not data:
                break
            s.sendall(data)
        s.close()


def via_sslsocket(port: int, cctx: ssl.SSLContext) -> float:
    s = cctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                         server_hostname="bench.test")
    payload = b"x" * SIZE
    t0 = time.thread_time()
    for _ in range(N):
        s.sendall(payload)
        got = 0
        while got < SIZE:
            got += len(s.recv(65536))
    t = time.thread_time() - t0
    s.close()
    return t / N


def via_memorybio(port: int, cctx: ssl.SSLContext) -> float:
    raw = socket.create_connection(("127.0.0.1", port))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = cctx.wrap_bio(inc, out, server_hostname="bench.test")

    def flush():
        data = out.read()
        if data:
            raw.sendall(data)

    while True:
        try:
            obj.do_handshake()
            flush()
            break
        except ssl.SSLWantReadError:
            flush()
            inc.write(raw.recv(65536))
    payload = b"x" * SIZE
    t0 = time.thread_time()
    for _ in range(N):
        obj.write(payload)
        flush()
        got = 0
        while got < SIZE:
            try:
                got += len(obj.read(65536))
            except ssl.SSLWantReadError:
                inc.write(raw.recv(65536))
    t = time.thread_time() - t0
    raw.close()
    return t / N


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_cert(tmp)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(cert, key)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(cert)
        lsock = socket.create_server(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        t = threading.Thread(target=serve, args=(lsock, sctx), daemon=True)
        t.start()
        global SIZE
        for SIZE in (200, 16384):
            a = via_sslsocket(port, cctx)
            b = via_memorybio(port, cctx)
            print(f"{SIZE} B round trip, client CPU: SSLSocket {a * 1e6:.1f} µs, "
                  f"MemoryBIO {b * 1e6:.1f} µs ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
