"""Listening sockets, owned by the master for their whole life.

Per configured address the master binds a *group*: ``workers × acceptors`` sockets with
``SO_REUSEADDR`` + ``SO_REUSEPORT`` (the kernel spreads new connections over them), or
one shared socket when ``reuse_port`` is off.  Workers inherit the sockets by fork and
serve a slice; because the master keeps every socket open, a worker exiting (crash,
reload, resize) never destroys an accept queue — the connections in it wait for the
worker that takes over the slot.  Sockets are only ever *added* to a group (more workers
or acceptors); a group is closed only when its address leaves the configuration.

Slot mapping: with ``N`` sockets and ``W`` workers, worker ``k`` serves sockets
``[k·A, (k+1)·A)`` (``A = N // W``); sockets beyond ``W·A`` (after the worker count or
the acceptor count went down) are spread ``i mod W``.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field

from .config.model import ListenAddr


class BindError(Exception):
    def __init__(self, what: str, addr: ListenAddr, err: OSError):
        reason = err.strerror or str(err)
        hint = ""
        if err.errno == errno.EADDRINUSE:
            hint = " (another process listens there)"
        elif err.errno == errno.EACCES:
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        elif err.errno == errno.EADDRNOTAVAIL:
            hint = " (no local interface has this address)"
        super().__init__(f"{what}: cannot listen on {addr}: {reason}{hint}")


def refuse_if_taken(what: str, addr: ListenAddr) -> None:
    """SO_REUSEPORT would let us join a group another process listens on (a second qpxd
    started by mistake would silently take part of the traffic with its own config).
    Before binding an address we do not hold yet, a probe bind without SO_REUSEPORT
    finds out: EADDRINUSE means someone listens there."""
    if not addr.port:
        return
    probe = socket.socket(addr.family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if addr.family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((addr.host, addr.port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise BindError(what, addr, e) from None
    finally:
        probe.close()


@dataclass
class Group:
    addr: ListenAddr
    reuse_port: bool
    backlog: int
    sockets: list[socket.socket] = field(default_factory=list)
    # passed in (systemd, or the master we upgrade from): its SO_REUSEPORT setting is
    # not ours to change, whatever runtime.reuse_port says
    fixed: bool = False

    def _bind_one(self, what: str) -> socket.socket:
        sock = socket.socket(self.addr.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.addr.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.addr.host, self.addr.port))
            sock.listen(self.backlog)
        except OSError as e:
            sock.close()
            raise BindError(what, self.addr, e) from None
        os.set_inheritable(sock.fileno(), True)
        return sock

    def grow(self, count: int, what: str) -> int:
        """Bind sockets until the group has ``count``; returns how many were added."""
        added = 0
        want = count if self.reuse_port else 1
        while len(self.sockets) < want:
            self.sockets.append(self._bind_one(what))
            added += 1
        return added

    def slice(self, k: int, workers: int) -> list[socket.socket]:
        if not self.reuse_port:
            return list(self.sockets)
        n = len(self.sockets)
        per = max(1, n // workers)
        mine = self.sockets[k * per:(k + 1) * per] if k * per < n else []
        mine += [s for i, s in enumerate(self.sockets) if i >= workers * per and i % workers == k]
        return mine

    def set_backlog(self, backlog: int) -> None:
        if backlog != self.backlog:
            for s in self.sockets:
                s.listen(backlog)
            self.backlog = backlog

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()


class SocketRegistry:
    """Every listening socket of the master, grouped by address."""

    def __init__(self):
        self.groups: dict[tuple[str, int], Group] = {}

    @staticmethod
    def key(addr: ListenAddr) -> tuple[str, int]:
        import ipaddress

        return str(ipaddress.ip_address(addr.host)), addr.port

    def prepare(self, endpoints: list[tuple[str, ListenAddr]], workers: int, acceptors: int,
                reuse_port: bool, backlog: int) -> list[Group]:
        """Make sure every endpoint has enough sockets.  All-or-nothing: on a bind error
        the sockets bound by this call are closed again and BindError is raised."""
        created: list[tuple[Group, int]] = []
        try:
            for what, addr in endpoints:
                k = self.key(addr)
                group = self.groups.get(k)
                if group is None:
                    if reuse_port:
                        refuse_if_taken(what, addr)
                    group = Group(addr, reuse_port, backlog)
                    self.groups[k] = group
                    created.append((group, 0))
                elif group.reuse_port != reuse_port and not group.fixed:
                    raise BindError(what, addr, OSError(
                        errno.EINVAL, "runtime.reuse_port changed for an address that is "
                                      "already listening; restart qpxd to apply it"))
                before = len(group.sockets)
                group.grow(workers * acceptors, what)
                if group not in [g for g, _ in created]:
                    created.append((group, before))
                group.set_backlog(backlog)
        except BindError:
            for group, before in created:
                for s in group.sockets[before:]:
                    s.close()
                del group.sockets[before:]
                if not group.sockets:
                    self.groups.pop(self.key(group.addr), None)
            raise
        return [self.groups[self.key(addr)] for _, addr in endpoints]

    def adopt(self, socks: list[socket.socket], fixed: bool) -> list[str]:
        """Listening sockets that arrived bound (an upgrade's or systemd's) join the
        group of the address they are bound to; returns their addresses."""
        import ipaddress

        out = []
        for sock in socks:
            host, port = sock.getsockname()[:2]
            host = str(ipaddress.ip_address(host.split("%")[0]))
            addr = ListenAddr(host, port)
            key = self.key(addr)
            reuse = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(addr, reuse, -1, fixed=fixed)
            group.sockets.append(sock)
            out.append(str(addr))
        return out

    def snapshot(self) -> dict[tuple[str, int], int]:
        """How many sockets every group has now (for :meth:`rollback`)."""
        return {k: len(g.sockets) for k, g in self.groups.items()}

    def rollback(self, before: dict[tuple[str, int], int]) -> None:
        """Undo the growth since ``before`` after a failed reload or resize: sockets no
        running worker serves must not take connections the kernel would queue there
        forever.  Groups that did not exist are closed; grown groups shrink back."""
        for k in list(self.groups):
            group = self.groups[k]
            keep = before.get(k, 0)
            for s in group.sockets[keep:]:
                s.close()
            del group.sockets[keep:]
            if not group.sockets:
                del self.groups[k]

    def close_except(self, keep: list[ListenAddr]) -> list[ListenAddr]:
        wanted = {self.key(a) for a in keep}
        closed = []
        for k in list(self.groups):
            if k not in wanted:
                group = self.groups.pop(k)
                closed.append(group.addr)
                group.close()
        return closed

    def fds(self) -> set[int]:
        return {s.fileno() for g in self.groups.values() for s in g.sockets}

    def close_all(self) -> None:
        for g in self.groups.values():
            g.close()
        self.groups.clear()


def raise_nofile() -> None:
    """Every connection is a descriptor (two when proxied): lift the soft limit to the
    hard one, as nginx's worker_rlimit_nofile or HAProxy do."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
