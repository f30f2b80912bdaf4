"""Why a connection through `telegram.proxy` failed, in words an operator can act on.

Telethon does not say it. python-socks raises ProxyError ("Username and password
authentication failure"), ProxyConnectionError or ProxyTimeoutError, but Telethon patches
them into plain ConnectionErrors on its first proxied connect, retries each connect five
times a second apart, and then raises "Connection to Telegram failed 5 time(s)": the cause
is gone, or the connect timeout ends it first and the account showed "connect failed:
TimeoutError:". So when an account can't connect through a proxy, `diagnose` asks the
proxy itself what it does: it connects, greets, authenticates and asks for a tunnel to
the account's data centre, as Telethon would, and names the first step that fails:

- proxy unreachable: no TCP connection to the proxy (refused, no route, unknown name);
- proxy authentication failed: the proxy refused the username and password (or wants
  some and none is configured);
- proxy refused the connection: it would not open the tunnel to the data centre (its
  answer named), or does not speak the protocol configured;
- proxy timed out: no answer to a step within the time given.

None when every step passes: the failure is beyond the proxy. The answer names the proxy's
scheme, host and port, never its username or password.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import socket
import struct

from common.const import Proxy

# RFC 1928 section 6: the REP field of a SOCKS5 reply.
SOCKS5_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
_NO_ACCEPTABLE_METHOD = 0xFF
_USER_PASSWORD = 0x02


class _Failed(Exception):
    """A step's failure, its reason as `diagnose` returns it."""


class _Probe:
    """One conversation with the proxy; `step` names what is being waited for."""

    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.where = f"{proxy.scheme} proxy {proxy.host}:{proxy.port}"
        self.step = "the greeting"

    async def ask(self, step: str, data: bytes, answer: int) -> bytes:
        """Sends `data` and reads `answer` bytes back, as `step`."""
        self.step = step
        self.writer.write(data)
        await self.writer.drain()
        return await self.reader.readexactly(answer)

    def refused(self, why: str) -> _Failed:
        return _Failed(f"proxy refused the connection ({self.where} {why})")

    def auth_failed(self, why: str) -> _Failed:
        return _Failed(f"proxy authentication failed ({self.where} {why})")

    # --- the protocols ---

    async def socks5(self, target: tuple[str, int] | None) -> None:
        p = self.proxy
        methods = bytes([0x00, _USER_PASSWORD] if p.username is not None else [0x00])
        version, method = await self.ask("the greeting", b"\x05" + bytes([len(methods)]) + methods, 2)
        if version != 5:
            raise self.refused("does not answer as a SOCKS5 proxy")
        if method == _NO_ACCEPTABLE_METHOD:
            if p.username is None:
                raise self.auth_failed("wants a username and password; none is configured")
            raise self.refused("accepts none of the authentication methods offered")
        if method == _USER_PASSWORD:
            user = (p.username or "").encode()
            password = (p.password or "").encode()
            request = b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password
            try:
                _, status = await self.ask("the username and password", request, 2)
            except asyncio.IncompleteReadError:
                raise self.auth_failed("closed the connection on the username and password") from None
            if status != 0:
                raise self.auth_failed("refused the username and password")
        elif method != 0:
            raise self.refused(f"chose an authentication method it was not offered ({method})")
        if target is None:
            return
        host, port = target
        header = await self.ask(f"CONNECT {host}:{port}", b"\x05\x01\x00" + _socks5_address(host, port), 2)
        if header[1] != 0:
            reply = SOCKS5_REPLIES.get(header[1], f"reply {header[1]}")
            raise self.refused(f"answered '{reply}' to CONNECT {host}:{port}")

    async def socks4(self, target: tuple[str, int] | None) -> None:
        if target is None:
            return
        host, port = target
        user = (self.proxy.username or "").encode() + b"\x00"
        try:
            address, name = ipaddress.IPv4Address(host).packed, b""
        except ValueError:  # SOCKS4a: the proxy resolves the name
            address, name = b"\x00\x00\x00\x01", host.encode() + b"\x00"
        request = b"\x04\x01" + struct.pack(">H", port) + address + user + name
        _, status = struct.unpack(">BB", (await self.ask(f"CONNECT {host}:{port}", request, 8))[:2])
        if status in (0x5C, 0x5D):
            raise self.auth_failed(f"could not confirm the user id (reply {status:#x})")
        if status != 0x5A:
            raise self.refused(f"rejected CONNECT {host}:{port} (reply {status:#x})")

    async def http(self, target: tuple[str, int] | None) -> None:
        if target is None:
            return
        host, port = target
        p = self.proxy
        lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
        if p.username is not None:
            token = base64.b64encode(f"{p.username}:{p.password or ''}".encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        self.step = f"CONNECT {host}:{port}"
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        status_line = (await self.reader.readline()).decode("latin-1").strip()
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise self.refused("does not answer as an HTTP proxy")
        code = int(parts[1])
        if code == 407:
            why = "wants a username and password" if p.username is None else "refused them"
            raise self.auth_failed(f"answered 407: it {why}")
        if not 200 <= code < 300:
            raise self.refused(f"answered {code} to CONNECT {host}:{port}")


def _os_error(e: OSError) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed (...)"."""
    if isinstance(e, socket.gaierror):
        return f"its name does not resolve ({e.strerror})"
    return os.strerror(e.errno) if e.errno else str(e)


def _socks5_address(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        address = b"\x03" + bytes([len(name)]) + name
    else:
        address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    return address + struct.pack(">H", port)


async def diagnose(proxy: Proxy, target: tuple[str, int] | None, step_timeout: float) -> str | None:
    """What stops a connection through `proxy` to `target` (host, port): a reason as the
    module docstring lists them, or None when the proxy lets it through. `target` None
    checks the greeting and the credentials only. Each step gets `step_timeout` seconds."""
    where = f"{proxy.scheme} proxy {proxy.host}:{proxy.port}"
    try:
        async with asyncio.timeout(step_timeout):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    except TimeoutError:
        return f"proxy timed out ({where}: no TCP connection in {step_timeout:g} s)"
    except OSError as e:
        return f"proxy unreachable ({where}: {_os_error(e)})"
    probe = _Probe(proxy, reader, writer)
    handshake = {"socks5": probe.socks5, "socks4": probe.socks4, "http": probe.http}[proxy.scheme]
    try:
        async with asyncio.timeout(step_timeout):
            await handshake(target)
    except _Failed as e:
        return str(e)
    except TimeoutError:
        return f"proxy timed out ({where} did not answer {probe.step} in {step_timeout:g} s)"
    except (OSError, asyncio.IncompleteReadError):
        return f"proxy refused the connection ({where} closed it at {probe.step})"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return None
