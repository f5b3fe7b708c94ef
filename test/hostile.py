"""The shared hostile-input corpus (../shared/corpus/hostile_inputs.py) for the tests.

``entries(layer)`` loads the copy in ``test/data/`` (see its README) and expands the
``expand`` markers.  ``read_responses`` reads HTTP responses off a socket as a
client would: by their framing, then reports whether the server closed afterwards.
"""

from __future__ import annotations

import ast
import socket
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "data" / "hostile_inputs.py"


def load() -> dict:
    if not CORPUS.exists():
        return {}
    tree = ast.parse(CORPUS.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def entries(*layers: str) -> list[dict]:
    corpus = load()
    result = []
    for e in corpus.get("HOSTILE_INPUTS", []):
        if e["layer"] in layers:
            data = e["bytes"]
            x = e.get("expand")
            if x:
                data = data.replace(x["marker"], x["with"] * x["times"])
            result.append(dict(e, data=data))
    return result


def prefix(name: str) -> bytes:
    return load()[name]


def read_responses(sock: socket.socket, timeout: float = 5.0, max_responses: int = 10
                   ) -> tuple[list[tuple[int, bytes, bytes]], bool]:
    """Read complete responses until the server closes or goes quiet.  Returns
    ([(status, head, body)], closed)."""
    sock.settimeout(timeout)
    buf = b""
    responses: list[tuple[int, bytes, bytes]] = []
    closed = False
    deadline = time.monotonic() + timeout

    def fill() -> bool:
        nonlocal buf, closed
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            closed = True
            return False
        if not chunk:
            closed = True
            return False
        buf += chunk
        return True

    while len(responses) < max_responses and time.monotonic() < deadline:
        while b"\r\n\r\n" not in buf:
            if not fill():
                return responses, closed
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            elif name.strip().lower() == b"transfer-encoding":
                chunked = True
        if chunked:
            while not rest.endswith(b"0\r\n\r\n"):
                buf = rest
                if not fill():
                    return responses, closed
                rest = buf
            body, buf = rest, b""
        else:
            while len(rest) < length:
                buf = rest
                if not fill():
                    return responses, closed
                rest = buf
            body, buf = rest[:length], rest[length:]
        responses.append((status, head, body))
        if b"connection: close" in head.lower() or status == 101:
            sock.settimeout(2.0)
            try:
                extra = sock.recv(65536)
                closed = not extra
            except TimeoutError:
                closed = False
            except ConnectionResetError:
                closed = True
            return responses, closed
        sock.settimeout(0.5)
    return responses, closed
