"""Telethon's private parts the project relies on, behind small named functions.

Telethon's public API downloads one part per round trip over the main connection; the
parallel downloader (model/downloader.py) needs what Telethon's own downloads use inside:
its sender for another DC (auth exported once, the connection shared), a call through a
given sender, and a second connection to the home DC opened the way Telethon opens its
own (which must not receive updates: it has no queue for them). The entity session
(model/session.py) reads a row count with Telethon's SQL helper, and an `updateChannel`
comes with the entities Telethon attaches to raw updates. An account's update feed
(model/updatefeed.py) reads the update state of Telethon's MessageBox and the dispatch
tasks under way, seeds a joined channel's pts, and gives the client a MessageBox that
keeps what a difference hands back (see `KeepingMessageBox`).

None of that is public: any Telethon release may rename it. So every such name is used
here and only here, and `INTERNALS` lists each with the kind it must have;
tests/model/test_telethon_internals.py walks that list against the installed Telethon and
fails naming the attribute an upgrade moved. Add a name to `INTERNALS` when a function
here starts relying on one.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import struct
import time
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Literal, TypeAlias

import telethon._updates.messagebox as messagebox
import telethon.client.updates
import telethon.network.mtprotostate as mtprotostate
from telethon import TelegramClient
from telethon._updates import EntityCache, MessageBox
from telethon._updates.messagebox import ENTRY_ACCOUNT, ENTRY_SECRET, PtsInfo
from telethon.errors import InvalidBufferError, SecurityError
from telethon.extensions import BinaryReader
from telethon.extensions.messagepacker import MessagePacker
from telethon.network import ConnectionTcpFull, ConnectionTcpIntermediate, MTProtoSender
from telethon.network.mtprotostate import MTProtoState
from telethon.sessions import SQLiteSession
from telethon.tl import functions, types
from telethon.tl.alltlobjects import LAYER
from telethon.tl.core import TLMessage

from model import ige
from model.packetreceiver import PacketReceiver
from model.tgerrors import ConnectionLost, is_transient

log = logging.getLogger(__name__)

# Telethon's `MTProtoSender` (untyped): a connection and its MTProto session. Opaque to
# callers: they borrow it, pass it to `call` and give it back.
Sender: TypeAlias = Any

Kind = Literal[
    "coroutine function",
    "function",
    "class",
    "attribute",
    "client attribute",
    "instance attribute",
    "set on updates",
]


@dataclass(frozen=True, slots=True)
class Internal:
    """One private piece of Telethon this module uses.

    `owner` is where it lives (a class or a module); `kind` what it must be: a coroutine
    function or a plain function of `owner`, a class, any other attribute of `owner` (a
    constant, a slot), an attribute a constructed `TelegramClient` has (of type `type_of`
    when given), an attribute a constructed `owner` has (an MTProtoSender, its packer, an
    MTProtoState), or an attribute Telethon sets on raw updates (`owner` is the module that
    sets it). `params` are parameter names its signature must still have; `used_for` says
    what breaks when it moves.
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
             "open_home_sender: a second connection, its updates to an UpdateSink",
             params=("auth_key", "loggers", "updates_queue")),
    Internal(MTProtoSender, "_handle_update", "coroutine function",
             "UpdateSink: a sender hands each update pushed to it to its queue's put_nowait"),
    Internal(MTProtoSender, "connect", "coroutine function", "open_home_sender",
             params=("connection",)),
    Internal(MTProtoSender, "send", "function", "open_home_sender: initConnection",
             params=("request",)),
    Internal(MTProtoSender, "is_connected", "function", "sender_connected"),
    Internal(MTProtoSender, "_transport_connected", "function",
             "call_once: a call leaves a connection that dropped"),
    Internal(MTProtoSender, "disconnect", "coroutine function", "close_sender"),
    Internal(MTProtoSender, "_state", "instance attribute",
             "open_home_sender: the media connection's MediaState", type_of=MTProtoState),
    Internal(MTProtoSender, "_send_queue", "instance attribute",
             "open_home_sender: the packer that numbers messages with the same state",
             type_of=MessagePacker),
    Internal(MessagePacker, "_state", "instance attribute", "open_home_sender: the packer's state",
             type_of=MTProtoState),
    Internal(MTProtoState, "_highest_remote_id", "instance attribute",
             "MediaState: Telethon's duplicate check"),
    Internal(MTProtoState, "_recent_remote_ids", "instance attribute",
             "MediaState: Telethon's duplicate check"),
    Internal(MTProtoState, "_ignore_count", "instance attribute",
             "MediaState: Telethon's count of ignored messages"),
    Internal(mtprotostate, "MTProtoState", "class", "MediaState: a sender's MTProto session",
             params=("auth_key", "loggers")),
    Internal(MTProtoState, "decrypt_message_data", "function",
             "MediaState: what it replaces, Telethon's checks kept", params=("body",)),
    Internal(MTProtoState, "_calc_key", "function", "MediaState: the AES key and iv",
             params=("auth_key", "msg_key", "client")),
    Internal(MTProtoState, "update_time_offset", "function", "MediaState: Telethon's checks",
             params=("correct_msg_id",)),
    Internal(MTProtoState, "_count_ignored", "function", "MediaState: Telethon's checks"),
    Internal(mtprotostate, "MSG_TOO_OLD_DELTA", "attribute", "MediaState: Telethon's checks"),
    Internal(mtprotostate, "MSG_TOO_NEW_DELTA", "attribute", "MediaState: Telethon's checks"),
    Internal(ConnectionTcpIntermediate, "_connect", "coroutine function",
             "MediaTransport: Telethon connects (a proxy included), then PacketReceiver reads",
             params=("timeout", "ssl")),
    Internal(ConnectionTcpIntermediate, "_recv", "coroutine function",
             "MediaTransport: what the connection's receive loop awaits for each packet"),
    Internal(ConnectionTcpIntermediate, "_writer", "instance attribute",
             "MediaTransport: the transport under Telethon's writer"),
    Internal(ConnectionTcpIntermediate, "__init__", "function",
             "open_home_sender: the transport of the media connection",
             params=("ip", "port", "dc_id", "loggers", "proxy", "local_addr")),
    Internal(SQLiteSession, "_execute", "function",
             "session_execute: the entity session's username count", params=("stmt",)),
    Internal(SQLiteSession, "_update_session_table", "function",
             "StoredAuthKeyRow: sealed sessions, the one writer of the auth key's row"),
    Internal(telethon.client.updates, "_entities", "set on updates",
             "update_entities: the entities that came with an update"),
    Internal(TelegramClient, "_message_box", "client attribute",
             "the update feed: the update state, a joined channel's pts", type_of=MessageBox),
    Internal(TelegramClient, "_mb_entity_cache", "client attribute",
             "follow_channel: the hash getChannelDifference needs", type_of=EntityCache),
    Internal(TelegramClient, "_event_handler_tasks", "client attribute",
             "dispatch_tasks: the updates handed to handlers and not handled yet", type_of=set),
    Internal(MessageBox, "session_state", "function", "update_state"),
    Internal(MessageBox, "is_empty", "function", "update_state"),
    Internal(MessageBox, "try_set_channel_state", "function", "follow_channel",
             params=("id", "pts")),
    Internal(MessageBox, "load", "function", "KeepingMessageBox: a reload starts over",
             params=("session_state", "channel_states")),
    Internal(MessageBox, "apply_difference_type", "function",
             "KeepingMessageBox: an account difference's other updates",
             params=("diff", "chat_hashes")),
    Internal(MessageBox, "apply_channel_difference", "function",
             "KeepingMessageBox: a channel difference's other updates",
             params=("request", "diff", "chat_hashes")),
    Internal(MessageBox, "getting_diff_for", "attribute", "KeepingMessageBox.load"),
    Internal(MessageBox, "possible_gaps", "attribute", "KeepingMessageBox.load"),
    Internal(PtsInfo, "from_update", "function", "KeepingMessageBox: an update's entry",
             params=("update",)),
    Internal(messagebox, "ENTRY_ACCOUNT", "attribute",
             "KeepingMessageBox: the account's entry"),
    Internal(messagebox, "ENTRY_SECRET", "attribute",
             "KeepingMessageBox: the secret chats' entry"),
    Internal(EntityCache, "extend", "function", "follow_channel", params=("users", "chats")),
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
    (`close_sender`); the client's `disconnect` does not know it.

    It never subscribes to updates: Telegram subscribes a connection when it sends a query
    not wrapped in invokeWithoutUpdates (file queries excepted: core.telegram.org/api/
    updates), so its initConnection goes wrapped, as Telethon's `receive_updates=False`
    does. A Telethon sender built without an updates queue fails on every update pushed
    to it (an ERROR traceback each); this one drops them into an `UpdateSink`, should
    Telegram push one all the same."""
    session = client.session
    sink = UpdateSink()
    sender = MTProtoSender(session.auth_key, loggers=client._log, updates_queue=sink)
    # Its MTProto session reads file parts without copying them (MediaState); the packer
    # numbers outgoing messages with the same state.
    sender._state = sender._send_queue._state = MediaState(session.auth_key, client._log)
    await sender.connect(_home_connection(client))
    try:
        client._init_request.query = functions.help.GetConfigRequest()
        init = functions.InvokeWithoutUpdatesRequest(client._init_request)
        await sender.send(functions.InvokeWithLayerRequest(LAYER, init))
    except BaseException:
        await sender.disconnect()
        raise
    sender.dc_id = session.dc_id  # as Telethon marks its exported senders
    return sender


_RPC_RESULT = 0xF35C6D01
_UPLOAD_FILE = types.upload.File.CONSTRUCTOR_ID


class MediaState(MTProtoState):  # type: ignore[misc]
    """The MTProto session of a media connection: Telethon's, except how an answer is read.

    Telethon's `decrypt_message_data` copies a 1 MB file part five times after decrypting
    it (the msg_key check hashes `key + plaintext`, a concatenation; the rpc_result's body
    and then the bytes are slices of bytes), about a sixth of the client's CPU per MB
    downloaded (measured with perf, issue 14). Here the msg_key is hashed in two updates,
    and an rpc_result carrying upload.file is read through a memoryview: Telethon's own
    readers then slice views, and the part's bytes reach the downloader as a view of the
    decrypted message, copied only once, by the kernel, into the file. The message is
    decrypted by model/ige.py: in the packet's own buffer, with AES-NI, where it can (AES
    was then half the client's CPU per MB). Every other message is read from bytes as
    Telethon does. The checks are Telethon 1.45's, in its order
    (tests/model/test_telethon_internals.py holds both to the same answers)."""

    # Telethon's (untyped) attributes, as this class uses them.
    _highest_remote_id: int
    _recent_remote_ids: Any

    def decrypt_message_data(self, body: bytes | bytearray) -> TLMessage | None:
        now = time.time()  # as early as possible, as Telethon takes it
        if len(body) < 8:
            raise InvalidBufferError(bytes(body))
        key_id = struct.unpack("<Q", body[:8])[0]
        if key_id != self.auth_key.key_id:
            raise SecurityError("Server replied with an invalid auth key")
        msg_key = bytes(body[8:24])
        aes_key, aes_iv = self._calc_key(self.auth_key.key, msg_key, False)
        # A packet of MediaTransport is a bytearray: decrypted in place (model/ige.py).
        plain = ige.decrypt_tail(body, 24, aes_key, aes_iv)
        # core.telegram.org/mtproto/security_guidelines: checking the SHA-256 hash.
        check = sha256(self.auth_key.key[96 : 96 + 32])
        check.update(plain)
        if msg_key != check.digest()[8:24]:
            raise SecurityError("Received msg_key doesn't match with expected one")
        reader = BinaryReader(memoryview(plain) if _is_file_part(plain) else bytes(plain))
        reader.read_long()  # remote_salt
        if reader.read_long() != self.id:
            raise SecurityError("Server replied with a wrong session ID (see FAQ for details)")
        remote_msg_id = reader.read_long()
        if remote_msg_id % 2 != 1:
            raise SecurityError("Server sent an even msg_id")
        if remote_msg_id <= self._highest_remote_id and remote_msg_id in self._recent_remote_ids:
            self._log.warning("Server resent the older message %d, ignoring", remote_msg_id)
            self._count_ignored()
            return None
        remote_sequence = reader.read_int()
        reader.read_int()  # msg_len; the padding is never read
        obj = reader.tgread_object()
        if obj.CONSTRUCTOR_ID in (
            types.BadServerSalt.CONSTRUCTOR_ID,
            types.BadMsgNotification.CONSTRUCTOR_ID,
        ):
            if not self._highest_remote_id and not self.time_offset:
                self.update_time_offset(remote_msg_id)
        else:
            time_delta = (now + self.time_offset) - (remote_msg_id >> 32)
            if time_delta > mtprotostate.MSG_TOO_OLD_DELTA:
                self._log.warning("Server sent a very old message with ID %d, ignoring",
                                  remote_msg_id)  # fmt: skip
                self._count_ignored()
                return None
            if -time_delta > mtprotostate.MSG_TOO_NEW_DELTA:
                self._log.warning("Server sent a very new message with ID %d, ignoring",
                                  remote_msg_id)  # fmt: skip
                self._count_ignored()
                return None
        self._recent_remote_ids.append(remote_msg_id)
        self._highest_remote_id = remote_msg_id
        self._ignore_count = 0
        return TLMessage(remote_msg_id, remote_sequence, obj)


def _is_file_part(plain: bytes | memoryview) -> bool:
    """Whether a decrypted message is an rpc_result whose result is upload.file (after the
    32-byte header: rpc_result's constructor, req_msg_id, the result's constructor)."""
    return (
        len(plain) >= 48
        and struct.unpack_from("<I", plain, 32)[0] == _RPC_RESULT
        and struct.unpack_from("<I", plain, 44)[0] == _UPLOAD_FILE
    )


class UpdateSink:
    """The updates queue of a sender that never asked for updates: what Telegram pushes to
    it anyway is counted and dropped (the main connection gets the account's updates)."""

    def __init__(self) -> None:
        self.dropped = 0

    def put_nowait(self, update: Any) -> None:
        self.dropped += 1
        log.debug("a media connection dropped a %s pushed to it", type(update).__name__)


class MediaTransport(ConnectionTcpIntermediate):  # type: ignore[misc]
    """The media connection's transport: Telethon's TCP intermediate, each packet received
    straight into a buffer of its own length (`PacketReceiver`) rather than through an
    asyncio StreamReader, whose buffer grows by reallocation while a 1 MB packet arrives
    (each step copying what came) and which then copies the packet out: ~3.5 MB of
    copies per MB received, on the loop's thread (perf, issue 14). Connecting (a proxy
    included) and sending stay Telethon's."""

    receiver: PacketReceiver

    async def _connect(self, timeout: float | None = None, ssl: Any = None) -> None:  # noqa: ASYNC109 - Telethon's signature
        await super()._connect(timeout=timeout, ssl=ssl)
        # Nothing has come yet: the server answers only what is asked, and nothing is.
        transport = self._writer.transport
        self.receiver = PacketReceiver(transport.get_protocol(), transport)
        transport.set_protocol(self.receiver)

    async def _recv(self) -> bytearray:
        return await self.receiver.next()


def _home_connection(client: TelegramClient) -> Any:
    session = client.session
    # The default TCP-full transport checksums every packet with CRC32, which MTProto's own
    # msg_key check makes redundant: intermediate saves ~8% of the client's CPU per MB, and
    # MediaTransport receives each packet without copies. Any other transport (an MTProxy's
    # obfuscated one) is kept as the client has it.
    transport = client._connection
    if transport in (ConnectionTcpFull, ConnectionTcpIntermediate):
        transport = MediaTransport
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


class StoredAuthKeyRow(SQLiteSession):  # type: ignore[misc]
    """A SQLiteSession whose auth key reaches the file as `stored_auth_key(key)` makes it.

    Telethon writes the `sessions` row (DC, address, port, auth key, takeout id) in
    `_update_session_table` alone, whenever any of them changes; this writes the same row,
    by column name, with the stored form of the keys in place of the keys (model/session.py
    seals them). The plain key never reaches the file, not even in an uncommitted page.
    """

    def stored_auth_key(self, key: bytes) -> bytes:
        """What the file holds for `key` (the key itself here; sealed in a subclass)."""
        return key

    def _update_session_table(self) -> None:
        key = self.auth_key.key if self.auth_key else None
        tmp = self.tmp_auth_key if self.store_tmp_auth_key_on_disk else None
        tmp_key = tmp.key if tmp else None
        session_execute(self, "delete from sessions")
        session_execute(
            self,
            "insert or replace into sessions (dc_id, server_address, port, auth_key, "
            "takeout_id, tmp_auth_key) values (?, ?, ?, ?, ?, ?)",
            self.dc_id,
            self.server_address,
            self.port,
            self.stored_auth_key(key) if key else b"",
            self.takeout_id,
            self.stored_auth_key(tmp_key) if tmp_key else b"",
        )


def update_entities(update: Any) -> dict[int, Any]:
    """The users and chats (by marked id) that came with a raw update, as Telethon attaches
    them before dispatching it; empty when it attached none."""
    entities = getattr(update, "_entities", None)
    return entities if isinstance(entities, dict) else {}


# -- the update state -----------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateState:
    """Where an account's updates stand (what Telethon's MessageBox holds): the account's
    pts, qts, date and seq, and each tracked channel's pts. What getDifference and
    getChannelDifference continue from."""

    pts: int
    qts: int
    date: datetime.datetime
    seq: int
    channels: dict[int, int] = field(default_factory=dict)


def update_state(client: TelegramClient) -> UpdateState | None:
    """The client's update state now; None while it has none (not logged in yet)."""
    box = client._message_box
    if box.is_empty():
        return None
    account, channels = box.session_state()
    return UpdateState(
        account["pts"], account["qts"], account["date"], account["seq"], dict(channels)
    )


def dispatch_tasks(client: TelegramClient) -> set[asyncio.Task[Any]]:
    """The tasks handing updates to the client's handlers now. Telethon (without
    sequential_updates, as the project builds it) creates one per update as it applies the
    update to its MessageBox, without yielding in between: every update an `update_state`
    covers is in one of these, or was handled."""
    return set(client._event_handler_tasks)


def follow_channel(client: TelegramClient, channel: Any, pts: int) -> None:
    """Makes the client track a channel's updates from `pts` on (unless it does already),
    so a later catch-up asks getChannelDifference for it: Telethon starts tracking a
    channel only at its first update, which a quiet channel may not send before a stop."""
    client._mb_entity_cache.extend([], [channel])
    client._message_box.try_set_channel_state(channel.id, pts)


def follows_channel(client: TelegramClient, channel_id: int) -> bool:
    """Whether the client tracks the channel's updates."""
    _, channels = client._message_box.session_state()
    return channel_id in channels


def install_message_box(client: TelegramClient) -> None:
    """Gives a client that has not connected yet a `KeepingMessageBox`."""
    client._message_box = KeepingMessageBox(client._log["messagebox"])


class KeepingMessageBox(MessageBox):  # type: ignore[misc]
    """Telethon's MessageBox, keeping the updates a difference hands back.

    Telethon 1.45 applies a difference by setting the entry's pts to the difference's and
    then sending `other_updates` through its pts check, which drops every one that carries
    a pts (all of them are at or below the new pts; an account difference's are also
    skipped as "being fetched"): the edits and deletions a catch-up was for never reach a
    handler. Here those are handed on (before the new messages, as Telethon orders the
    rest); each is new to the client, since the difference starts at its pts.

    And a `load` (each connect of a client with catch_up) starts over from the state
    loaded: a difference under way for the state before is dropped (its entry may not be
    in the loaded state, which Telethon's update loop would die on).
    """

    def load(self, session_state: Any, channel_states: Any) -> None:
        self.getting_diff_for.clear()
        self.possible_gaps.clear()
        super().load(session_state, channel_states)

    def apply_difference_type(self, diff: Any, chat_hashes: Any) -> Any:
        updates, users, chats = super().apply_difference_type(diff, chat_hashes)
        kept = _kept(diff.other_updates, (ENTRY_ACCOUNT, ENTRY_SECRET), updates)
        return [*kept, *updates], users, chats

    def apply_channel_difference(self, request: Any, diff: Any, chat_hashes: Any) -> Any:
        updates, users, chats = super().apply_channel_difference(request, diff, chat_hashes)
        if isinstance(diff, types.updates.ChannelDifference):
            kept = _kept(diff.other_updates, (request.channel.channel_id,), updates)
            updates = [*kept, *updates]
        return updates, users, chats


def _kept(other: list[Any], entries: tuple[Any, ...], handed: list[Any]) -> list[Any]:
    """The updates of `other` that carry a pts of one of `entries` and are not in
    `handed` already, in pts order."""
    kept = []
    for update in other:
        if isinstance(update, types.UpdateChannelTooLong) or any(update is h for h in handed):
            continue
        info = PtsInfo.from_update(update)
        if info is not None and info.entry in entries:
            kept.append((info.pts, update))
    return [u for _, u in sorted(kept, key=lambda p: p[0])]
