"""service/listener.py: the listening sockets' bind errors as config errors, the descriptor
limit, and the accept guard against a real EMFILE in this process (the whole server under a
low limit in a child process: tests/test_descriptors.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tornado.web
from tornado.httpserver import HTTPServer

from common.errors import ConfigError
from service.listener import AcceptGuard, bind, raise_descriptor_limit
from tests.fixtures.wait import wait_for

SOURCE = Path("/etc/tgc/config.properties")


# --- bind ----------------------------------------------------------------------------------


def test_an_address_of_another_machine_names_server_host() -> None:
    # 192.0.2.1 (TEST-NET-1) is nobody's address; bind() fails before any packet is sent.
    with pytest.raises(ConfigError) as caught:
        bind("192.0.2.1", 0, SOURCE)
    assert caught.value.key == "server.host" and caught.value.file == str(SOURCE)
    assert "192.0.2.1 is not an address of this machine" in str(caught.value)


def test_a_port_in_use_names_server_port() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            bind("127.0.0.1", port, SOURCE)
    assert caught.value.key == "server.port"
    assert f"port {port} on 127.0.0.1 is already in use" in str(caught.value)


def test_a_host_that_does_not_resolve_names_server_host() -> None:
    with pytest.raises(ConfigError) as caught:
        bind("no such host", 0, SOURCE)  # not even a name: the resolver refuses it at once
    assert caught.value.key == "server.host" and "can't be resolved" in str(caught.value)


def test_bind_listens_on_the_address() -> None:
    sockets = bind("127.0.0.1", 0, SOURCE)
    try:
        assert [s.getsockname()[0] for s in sockets] == ["127.0.0.1"]
    finally:
        for s in sockets:
            s.close()


# --- the descriptor limit --------------------------------------------------------------------


@contextmanager
def soft_limit(limit: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE set to `limit` for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_the_hard_one(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, hard, 1 << 20) - 1
    with soft_limit(lower), caplog.at_level(logging.INFO, "service.listener"):
        before, after = raise_descriptor_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert (before, after) == (lower, now) and now == min(hard, 1 << 20)
    assert f"descriptors: limit raised from {lower} to {now}" in caplog.text


# --- the accept guard, on a real EMFILE ------------------------------------------------------


class Hello(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


def lowest_free_descriptor() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


async def ask(sock: socket.socket) -> bytes:
    """GET / on an already connected socket; the answer's first line."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n" not in answer:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        assert chunk, "closed without an answer"
        answer += chunk
    return answer.split(b"\r\n", 1)[0]


async def test_out_of_descriptors_accepting_pauses_logs_once_and_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    guard = AcceptGuard(pause=0.05, report_every=60, clock=lambda: now[0])
    http = HTTPServer(tornado.web.Application([("/", Hello)]))
    sockets = [guard.guard(s) for s in bind("127.0.0.1", 0, SOURCE)]
    http.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    # Connected before the limit drops (the kernel completes them in the backlog, the loop
    # has not run since): the server must accept them without a descriptor free.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for c in clients:
            c.setblocking(False)
        with caplog.at_level(logging.INFO, "service.listener"):
            with soft_limit(lowest_free_descriptor()):  # no descriptor free from here
                await wait_for(lambda: guard.refused >= 1, within=10, what="a refused accept")
                t0 = time.monotonic()
                await wait_for(lambda: guard.refused >= 6, within=10, what="retries")
                # Paused between tries, not spinning: 5 more tries took 5 pauses at least
                # (an unguarded socket fails thousands of times in that time).
                assert time.monotonic() - t0 >= 5 * 0.05 * 0.9
                assert guard.short_since == 1000.0
                warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
                assert len(warnings) == 1, [r.getMessage() for r in warnings]
                assert "out of file descriptors (EMFILE" in warnings[0].getMessage()
                now[0] += 60  # a report interval later: one more line, with the count
                refused = guard.refused
                await wait_for(lambda: guard.refused > refused, within=10, what="a retry")
            # A descriptor free again: the waiting connections are accepted and answered.
            assert (await ask(clients[0])).endswith(b" 200 OK")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2 and "accept() calls failed since the last report" in warnings[1]
        assert guard.short_since is None
        assert "accepting connections again after" in caplog.text
        assert (await ask(clients[1])).endswith(b" 200 OK")
    finally:
        for c in clients:
            c.close()
        http.stop()
        await http.close_all_connections()


async def test_a_stopped_server_is_not_resumed() -> None:
    guard = AcceptGuard(pause=0.5)  # long enough to stop the server while it is paused
    resumed: list[socket.socket] = []
    resume = guard._resume

    def counted(sock: socket.socket) -> None:
        resumed.append(sock)
        resume(sock)

    guard._resume = counted  # type: ignore[method-assign]
    http = HTTPServer(tornado.web.Application([("/", Hello)]))
    sockets = [guard.guard(s) for s in bind("127.0.0.1", 0, SOURCE)]
    http.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    try:
        with soft_limit(lowest_free_descriptor()):
            await wait_for(lambda: guard.refused >= 1, within=10, what="a refused accept")
            http.stop()  # while paused: the pending resume must not touch the closed socket
            refused, before = guard.refused, len(resumed)
            await wait_for(lambda: len(resumed) > before, within=10, what="the pending resume")
        assert guard.refused == refused and sockets[0].fileno() == -1
    finally:
        client.close()
        await http.close_all_connections()
