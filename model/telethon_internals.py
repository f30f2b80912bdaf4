"""Telethon's private parts the project relies on, behind small named functions.

Telethon's public API downloads one part per round trip over the main connection; the
parallel downloader (model/downloader.py) needs what Telethon's own downloads use inside:
its sender for another DC (auth exported once, the connection shared), a call through a
given sender, and a second connection to the home DC opened the way Telethon opens its
own. The entity session (model/session.py) reads a row count with Telethon's SQL helper,
and an `updateChannel` comes with the entities Telethon attaches to raw updates.

None of that is public: any Telethon release may rename it. So every such name is used
here and only here, and `INTERNALS` lists each with the kind it must have;
tests/model/test_telethon_internals.py walks that list against the installed Telethon and
fails naming the attribute an upgrade moved. Add a name to `INTERNALS` when a function
here starts relying on one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import telethon.client.updates
from telethon import TelegramClient
from telethon.network import ConnectionTcpFull, ConnectionTcpIntermediate, MTProtoSender
from telethon.sessions import SQLiteSession
from telethon.tl import functions
from telethon.tl.alltlobjects import LAYER

from model.tgerrors import ConnectionLost, is_transient

# Telethon's `MTProtoSender` (untyped): a connection and its MTProto session. Opaque to
# callers: they borrow it, pass it to `call` and give it back.
Sender: TypeAlias = Any

Kind = Literal["coroutine function", "function", "class", "client attribute", "set on updates"]


@dataclass(frozen=True, slots=True)
class Internal:
    """One private piece of Telethon this module uses.

    `owner` is where it lives (a class or a module); `kind` what it must be: a coroutine
    function or a plain function of `owner`, a class, an attribute a constructed
    `TelegramClient` has (of type `type_of` when given), or an attribute Telethon sets on
    raw updates (`owner` is the module that sets it). `params` are parameter names its
    signature must still have; `used_for` says what breaks when it moves.
    """

    owner: Any
    name: str
    kind: Kind
    used_for: str
    params: tuple[str, ...] = ()
    type_of: type | None = None

    @property
    def label(self) -> str:
        """`TelegramClient._call`: how a failure names it."""
        return f"{getattr(self.owner, '__name__', self.owner)}.{self.name}"


# The one list of what this module relies on; the test walks it.
INTERNALS: tuple[Internal, ...] = (
    Internal(TelegramClient, "_sender", "client attribute", "main_sender: the main connection",
             type_of=MTProtoSender),
    Internal(TelegramClient, "_borrow_exported_sender", "coroutine function",
             "borrow_exported_sender: files on another DC", params=("dc_id",)),
    Internal(TelegramClient, "_return_exported_sender", "coroutine function",
             "return_exported_sender: files on another DC", params=("sender",)),
    Internal(TelegramClient, "_call", "coroutine function",
             "call: every file part goes through a chosen sender", params=("sender", "request")),
    Internal(TelegramClient, "_connection", "client attribute",
             "open_home_sender: the client's transport class", type_of=type),
    Internal(TelegramClient, "_log", "client attribute", "open_home_sender: Telethon's loggers"),
    Internal(TelegramClient, "_init_request", "client attribute",
             "open_home_sender: the client's initConnection",
             type_of=functions.InitConnectionRequest),
    Internal(TelegramClient, "_proxy", "client attribute", "open_home_sender: the client's proxy"),
    Internal(TelegramClient, "_local_addr", "client attribute",
             "open_home_sender: the client's local address"),
    Internal(telethon.network, "MTProtoSender", "class",
             "open_home_sender: a second connection", params=("auth_key", "loggers")),
    Internal(MTProtoSender, "connect", "coroutine function", "open_home_sender",
             params=("connection",)),
    Internal(MTProtoSender, "send", "function", "open_home_sender: initConnection",
             params=("request",)),
    Internal(MTProtoSender, "is_connected", "function", "sender_connected"),
    Internal(MTProtoSender, "_transport_connected", "function",
             "call_once: a call leaves a connection that dropped"),
    Internal(MTProtoSender, "disconnect", "coroutine function", "close_sender"),
    Internal(ConnectionTcpIntermediate, "__init__", "function",
             "open_home_sender: the transport of the media connection",
             params=("ip", "port", "dc_id", "loggers", "proxy", "local_addr")),
    Internal(SQLiteSession, "_execute", "function",
             "session_execute: the entity session's username count", params=("stmt",)),
    Internal(telethon.client.updates, "_entities", "set on updates",
             "update_entities: the entities that came with an update"),
)  # fmt: skip


# -- the senders ----------------------------------------------------------------------------


def main_sender(client: TelegramClient) -> Sender:
    """The client's main connection (the one its API calls and updates use)."""
    return client._sender


async def borrow_exported_sender(client: TelegramClient, dc_id: int) -> Sender:
    """Telethon's sender for another DC: connected and authorised there on first use (the
    authorization exported and imported once), shared by every borrower. Give it back with
    `return_exported_sender`; Telethon closes it when unused."""
    return await client._borrow_exported_sender(dc_id)


async def return_exported_sender(client: TelegramClient, sender: Sender) -> None:
    """Gives back a sender from `borrow_exported_sender`."""
    await client._return_exported_sender(sender)


async def call(client: TelegramClient, sender: Sender, request: Any) -> Any:
    """Sends `request` over `sender` as `client(request)` would over the main connection:
    Telethon's retries, flood-wait handling and error conversion included."""
    return await client._call(sender, request)


@dataclass
class Link:
    """How `call_once` watches one client's connection: a call waiting on a connection that
    has been down `lost_after` seconds (checked every `poll`) gives up; `down_since` (on
    the loop's clock) is when the calls last saw it go down, kept across calls so that the
    next one gives up at once while it stays down."""

    lost_after: float = 0.5
    poll: float = 0.1
    down_since: float | None = None

    def down_for(self, sender: Sender) -> float:
        """Seconds the connection has been seen down while Telethon reconnects it (0: it is
        up, or Telethon gave up, which its own ConnectionError reports)."""
        if not sender.is_connected() or sender._transport_connected():
            self.down_since = None
            return 0.0
        now = asyncio.get_running_loop().time()
        if self.down_since is None:
            self.down_since = now
        return now - self.down_since


async def call_once(client: TelegramClient, request: Any, link: Link) -> Any:
    """`client(request)` through Telethon's own `_call` (the answer's entities cached, flood
    waits slept up to the client's threshold, migrations followed), but left at the first
    transient failure.

    `_call` retries Telegram's 500s and -503s on the same connection, sleeping 2 s before
    each retry and once more after the last try, even with request_retries=0; the pool can
    serve the call with another account at once instead. Such an error is raised here as
    Telegram's own, as soon as it comes. And a call whose connection drops stays pending in
    Telethon until it reconnects (its retries can take a minute when the DC or the proxy is
    gone): once the connection has been down `link.lost_after` s, ConnectionLost."""
    if link.down_for(client._sender) >= link.lost_after:
        raise ConnectionLost("the connection is down")
    try:
        return await client._call(_SendOnce(client._sender, link), request)
    except _Transient as e:
        raise e.error from None


class _Transient(Exception):
    """Carries a transient RPC error past `_call`'s retry loop, which catches only RPC
    errors of its own lists."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _SendOnce:
    """Stands in for the client's sender in `_call`: sends through it, then waits for the
    answer while watching the connection (see `call_once`)."""

    def __init__(self, sender: Sender, link: Link) -> None:
        self.sender = sender
        self.link = link

    def send(self, request: Any, ordered: bool = False) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.answer(self.sender.send(request, ordered=ordered)))

    async def answer(self, future: asyncio.Future[Any]) -> Any:
        link = self.link
        try:
            while not future.done():
                await asyncio.wait((future,), timeout=link.poll)
                if not future.done() and link.down_for(self.sender) >= link.lost_after:
                    future.cancel()  # Telethon would send it again after reconnecting
                    raise ConnectionLost(f"not back in {link.lost_after:g} s")
        except asyncio.CancelledError:
            future.cancel()  # as awaiting Telethon's future directly would have
            raise
        error = future.exception()
        if error is not None and is_transient(error):
            raise _Transient(error)
        return future.result()


async def open_home_sender(client: TelegramClient) -> Sender:
    """A new connection to the client's home DC with the client's auth key, introduced with
    the client's own initConnection: one more MTProto session of the same authorization
    (Telegram allows several per key), nothing to export or import. The caller closes it
    (`close_sender`); the client's `disconnect` does not know it."""
    session = client.session
    sender = MTProtoSender(session.auth_key, loggers=client._log)
    await sender.connect(_home_connection(client))
    try:
        client._init_request.query = functions.help.GetConfigRequest()
        await sender.send(functions.InvokeWithLayerRequest(LAYER, client._init_request))
    except BaseException:
        await sender.disconnect()
        raise
    sender.dc_id = session.dc_id  # as Telethon marks its exported senders
    return sender


def _home_connection(client: TelegramClient) -> Any:
    session = client.session
    # The default TCP-full transport checksums every packet with CRC32, which MTProto's own
    # msg_key check makes redundant: intermediate saves ~8% of the client's CPU per MB.
    # Any other transport (an MTProxy's obfuscated one) is kept as the client has it.
    transport = client._connection
    if transport is ConnectionTcpFull:
        transport = ConnectionTcpIntermediate
    return transport(
        session.server_address,
        session.port,
        session.dc_id,
        loggers=client._log,
        proxy=client._proxy,
        local_addr=client._local_addr,
    )


def sender_connected(sender: Sender) -> bool:
    """Whether `sender` is connected (False once its reconnects gave up)."""
    return bool(sender.is_connected())


async def close_sender(sender: Sender) -> None:
    """Disconnects a sender from `open_home_sender` (never raises: Telethon's doesn't)."""
    await sender.disconnect()


# -- sessions and updates -------------------------------------------------------------------


def session_execute(session: SQLiteSession, stmt: str, *values: Any) -> Any:
    """Runs one SQL statement on a Telethon SQLite session; its first row (or None)."""
    return session._execute(stmt, *values)


def update_entities(update: Any) -> dict[int, Any]:
    """The users and chats (by marked id) that came with a raw update, as Telethon attaches
    them before dispatching it; empty when it attached none."""
    entities = getattr(update, "_entities", None)
    return entities if isinstance(entities, dict) else {}
