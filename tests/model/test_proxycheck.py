"""model/proxycheck.py against canned proxies on loopback: each answers one conversation
with fixed bytes, so every step `diagnose` names is reached (the SOCKS5 ones through a
real proxy and Telethon are in tests/model/test_connection.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from common.const import Proxy
from model.proxycheck import diagnose
from tests.fixtures.socks5 import Socks5Proxy

TARGET = ("127.0.0.1", 443)


@contextlib.asynccontextmanager
async def canned(answer: bytes | None = None) -> AsyncIterator[int]:
    """A server that reads what comes, answers `answer` once, and keeps the connection
    until the client closes it; with `answer` None, it picks username/password (SOCKS5)
    and hangs up on the credentials, as some proxies do instead of answering status 1."""
    handlers: list[asyncio.Task[None]] = []

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"\x05\x02" if answer is None else answer)
        await writer.drain()
        if answer is None:
            await reader.read(1024)
            return
        await reader.read()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await converse(reader, writer)
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)


@pytest.mark.parametrize(
    ("scheme", "user", "answer", "reason"),
    [
        ("socks5", None, b"\x05\xff", "proxy authentication failed (socks5 proxy 127.0.0.1:{port} wants a username and password; none is configured)"),
        ("socks5", "u", b"\x05\xff", "proxy refused the connection (socks5 proxy 127.0.0.1:{port} accepts none of the authentication methods offered)"),
        ("socks5", None, b"HTTP/1.1 400 Bad Request\r\n\r\n", "proxy refused the connection (socks5 proxy 127.0.0.1:{port} does not answer as a SOCKS5 proxy)"),
        ("socks4", "u", b"\x00\x5b\x00\x00\x00\x00\x00\x00", "proxy refused the connection (socks4 proxy 127.0.0.1:{port} rejected CONNECT 127.0.0.1:443 (reply 0x5b))"),
        ("socks4", "u", b"\x00\x5d\x00\x00\x00\x00\x00\x00", "proxy authentication failed (socks4 proxy 127.0.0.1:{port} could not confirm the user id (reply 0x5d))"),
        ("socks4", None, b"\x00\x5a\x00\x00\x00\x00\x00\x00", None),
        ("http", "u", b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "proxy authentication failed (http proxy 127.0.0.1:{port} answered 407: it refused them)"),
        ("http", None, b"HTTP/1.1 403 Forbidden\r\n\r\n", "proxy refused the connection (http proxy 127.0.0.1:{port} answered 403 to CONNECT 127.0.0.1:443)"),
        ("http", None, b"HTTP/1.1 200 Connection established\r\n\r\n", None),
        ("http", None, b"SSH-2.0-OpenSSH\r\n", "proxy refused the connection (http proxy 127.0.0.1:{port} does not answer as an HTTP proxy)"),
    ],
)  # fmt: skip
async def test_each_step_is_named(
    scheme: str, user: str | None, answer: bytes, reason: str | None
) -> None:
    async with canned(answer) as port:
        found = await diagnose(Proxy(scheme, "127.0.0.1", port, user, "pw"), TARGET, 2)
    assert found == (reason.format(port=port) if reason else None)
    assert "pw" not in (found or "")


async def test_a_proxy_that_hangs_up_on_the_credentials_failed_them() -> None:
    async with canned(None) as port:
        found = await diagnose(Proxy("socks5", "127.0.0.1", port, "u", "pw"), TARGET, 2)
    assert found == (
        f"proxy authentication failed (socks5 proxy 127.0.0.1:{port} closed the connection"
        " on the username and password)"
    )


async def test_a_working_socks5_proxy_is_no_failure() -> None:
    async with Socks5Proxy("u", "pw") as proxy, canned(b"") as target:
        ok = Proxy("socks5", "127.0.0.1", proxy.port, "u", "pw")
        assert await diagnose(ok, ("127.0.0.1", target), 2) is None
        assert await diagnose(ok, None, 2) is None  # no data centre known: credentials only
