"""The server's listening sockets, and the descriptors they need.

    raise_descriptor_limit()                       # once, at the start of the process
    sockets = bind(host, port, source)             # ConfigError naming server.host / .port
    guard = AcceptGuard()
    http.add_sockets([guard.guard(s) for s in sockets])

Out of descriptors, `accept()` fails with EMFILE while the connection stays in the listen
backlog: the socket is still readable, so Tornado's accept handler runs again at once and
the loop spins at 100% CPU, with asyncio logging a traceback each turn. A guarded socket
instead stops reading the listening socket for `pause` seconds and tries again; the other
connections (and the requests on them) are served meanwhile, and accepting resumes within
`pause` of a descriptor coming free. One line is logged per `report_every` seconds at most.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop

from common.errors import ConfigError

log = logging.getLogger(__name__)

# accept() fails with these while the process (EMFILE) or the system (ENFILE) has no
# descriptor free, or the kernel no memory for one: waiting is the only remedy.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
MAX_DESCRIPTORS = 1 << 20  # Linux's default fs.nr_open: what a process can have anyway
BACKLOG = 128  # Tornado's default


def raise_descriptor_limit() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard limit, at most 2**20 (each account holds ~4
    descriptors, each connection one: the usual soft default, 1024, is a few hundred accounts).
    Logs the figure; returns (soft before, soft now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Capped: a container's "infinity" is 2**30 on Linux, and code that walks every possible
    # descriptor (closing them before an exec) would walk a billion.
    target = MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("descriptors: can't raise the limit from %d to %d: %s", soft, target, e)
            return soft, soft
        log.info(
            "descriptors: limit raised from %d to %d (hard limit %s)", soft, target, _figure(hard)
        )
        return soft, target
    log.info(
        "descriptors: limit %s (hard limit %s; for more accounts or connections raise it "
        "with `ulimit -Hn` or systemd's LimitNOFILE=)",
        _figure(soft),
        _figure(hard),
    )
    return soft, soft


def _figure(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def bind(host: str, port: int, source: Path) -> list[socket.socket]:
    """Listening sockets on host:port (several for a name with IPv4 and IPv6 addresses).

    A host that is not an address of this machine, a port in use or a privileged port is a
    bad config: ConfigError naming the key (server.host or server.port) and `source`."""
    try:
        return _listening_sockets(host, port)
    except socket.gaierror as e:
        raise ConfigError(
            "server.host", str(source), f"{host!r} can't be resolved: {e.strerror}"
        ) from None
    except OSError as e:
        key, reason = _bind_failure(host, port, e)
        raise ConfigError(key, str(source), reason) from None


def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Tornado's bind_sockets without its leak (a socket whose bind fails is left open, and
    so are those bound before it): here every socket made is closed on a failure."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in _addresses(host, port):
            if port == 0 and sockets:  # every address on the port the first one was given
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            try:
                sock.bind(address)
            except OSError as e:
                # "localhost" is also ::1 on a host whose IPv6 is off (containers): skip it.
                if e.errno == errno.EADDRNOTAVAIL and host == "localhost" and address[0] == "::1":
                    sockets.pop().close()
                    continue
                raise
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _addresses(host: str, port: int) -> list[tuple[Any, ...]]:
    found = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    # Each once, in the resolver's order within a family, IPv4 first: as Tornado binds them.
    return sorted(dict.fromkeys(found), key=lambda a: a[0])


def _bind_failure(host: str, port: int, e: OSError) -> tuple[str, str]:
    why = e.strerror or str(e)
    if e.errno == errno.EADDRNOTAVAIL:
        return "server.host", f"{host} is not an address of this machine ({why})"
    if e.errno == errno.EADDRINUSE:
        return "server.port", f"port {port} on {host} is already in use by another process ({why})"
    if e.errno == errno.EACCES:
        privileged = "; ports below 1024 need privileges" if port < 1024 else ""
        return "server.port", f"not allowed to listen on port {port} ({why}{privileged})"
    return "server.host", f"can't listen on {host} port {port} ({why})"


class AcceptGuard:
    """Makes listening sockets pause instead of spin while no descriptor is free.

    `refused` counts the accept() calls that failed for want of one (the connection waits
    in the backlog meanwhile: it is served, late, once a descriptor is free, or the client
    gives up). `short_since` is when the current shortage began (None while accepting).
    """

    def __init__(
        self,
        *,
        pause: float = 0.1,
        report_every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pause = pause
        self.report_every = report_every
        self._clock = clock
        self.refused = 0
        self.short_since: float | None = None
        self._unreported = 0  # refusals not in a logged line yet
        self._announced = False  # this shortage's warning was logged
        self._last_line = -float("inf")

    def guard(self, sock: socket.socket) -> socket.socket:
        """The same listening socket (its descriptor moves to the returned object) whose
        accept() pauses the loop's reading of it when no descriptor is free."""
        guarded = _GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.setblocking(False)
        guarded.guard = self
        return guarded

    # --- called by the guarded sockets ---

    def out_of_descriptors(self, sock: socket.socket, error: OSError) -> None:
        loop = IOLoop.current()
        loop.update_handler(sock, 0)  # stop reading it; Tornado's handler stays registered
        loop.call_later(self.pause, self._resume, sock)
        now = self._clock()
        self.refused += 1
        self._unreported += 1
        if self.short_since is None:
            self.short_since = now
        if now - self._last_line >= self.report_every:
            log.warning(
                "out of file descriptors (%s, limit %d): not accepting new connections, "
                "trying again every %g s; %d accept() calls failed since the last report",
                errno.errorcode.get(error.errno or 0, error.errno),
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                self.pause,
                self._unreported,
            )
            self._reported(now)
            self._announced = True

    def accepted(self) -> None:
        if self.short_since is None:
            return
        now = self._clock()
        if self._announced:
            log.info(
                "accepting connections again after %.1f s out of descriptors "
                "(%d more accept() calls failed)",
                now - self.short_since,
                self._unreported,
            )
            self._reported(now)
        self.short_since = None
        self._announced = False

    def _reported(self, now: float) -> None:
        self._unreported = 0
        self._last_line = now

    def _resume(self, sock: socket.socket) -> None:
        # HTTPServer.stop() removes the handler and closes the socket: then nothing to resume.
        if sock.fileno() != -1:
            IOLoop.current().update_handler(sock, IOLoop.READ)


class _GuardedSocket(socket.socket):
    """A listening socket whose accept() reports a descriptor shortage to its guard and
    raises BlockingIOError instead, which ends Tornado's accept loop quietly."""

    guard: AcceptGuard

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            connection = super().accept()
        except OSError as e:
            if e.errno not in OUT_OF_DESCRIPTORS:
                raise
            self.guard.out_of_descriptors(self, e)
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)) from None
        self.guard.accepted()
        return connection
