"""A tiny in-memory Telegram for unit tests of TeleClient and the pool: no network, no MTProto.

`FakeTelegram` is a world of a few channels, groups and accounts that answers raw Telethon
requests the way the real one does for what TeleClient sends (per-account access hashes,
USERNAME_NOT_OCCUPIED, CHANNEL_PRIVATE, flood waits and bans as knobs), and counts the
requests per account and method. `FakeClient` stands in for `telethon.TelegramClient`
around a real Telethon session, which it feeds with every answer's entities exactly like
Telethon's `_call`, so TeleClient's cache lookups meet the real SQLite session.

The integration tests run the same scenarios against the MTProto emulator (tests/fakedc).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from telethon import errors, types
from telethon._updates import EntityCache

from model.clientfactory import ClientOptions
from model.teleclient import TeleClient

DATE = datetime(2024, 1, 1, tzinfo=UTC)

# The account and chats of the world tests/model/conftest.py builds.
ME = 101
NEWS = 2001  # a public broadcast channel
TALK = 2002  # a public megagroup
GROUP = 2003  # a basic group
SECRET = 2004  # a private channel


@dataclass
class FakeChat:
    id: int
    title: str
    username: str | None = None
    kind: str = "broadcast"  # broadcast | megagroup | group
    members: list[int] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)  # ids; newest is the largest


def message_empty(msg_id: int) -> Any:
    """messageEmpty as Telethon reads it: Telethon patches the class with its custom
    Message, whose constructor does not fit the TL one, so build it bare."""
    empty = types.MessageEmpty.__new__(types.MessageEmpty)
    empty.id, empty.peer_id = msg_id, None
    return empty


class FakeTelegram:
    def __init__(self) -> None:
        self.chats: dict[int, FakeChat] = {}
        self.users: dict[int, str] = {}  # account id -> phone
        self.calls: Counter[tuple[int, str]] = Counter()
        # (account id or None for all, method name) -> seconds of FLOOD_WAIT to answer
        self.flood: dict[tuple[int | None, str], int] = {}
        self.errors: dict[tuple[int | None, str], str] = {}  # same keys -> an RPC error name
        self.private: set[int] = set()  # chat ids that answer CHANNEL_PRIVATE

    def add_chat(self, chat: FakeChat) -> FakeChat:
        self.chats[chat.id] = chat
        return chat

    def count(self, method: str, account: int | None = None) -> int:
        return sum(n for (a, m), n in self.calls.items() if m == method and account in (None, a))

    # --- access hashes are per viewing account, like Telegram's ---

    @staticmethod
    def access_hash(viewer: int, obj_id: int) -> int:
        return (viewer * 1_000_003 + obj_id * 7919) % (2**62) + 1

    def channel(self, viewer: int, chat: FakeChat) -> Any:
        if chat.kind == "group":
            return types.Chat(chat.id, chat.title, types.ChatPhotoEmpty(), len(chat.members), DATE, 1)
        return types.Channel(
            chat.id,
            chat.title,
            types.ChatPhotoEmpty(),
            DATE,
            broadcast=chat.kind == "broadcast" or None,
            megagroup=chat.kind == "megagroup" or None,
            left=viewer not in chat.members,
            access_hash=self.access_hash(viewer, chat.id),
            username=chat.username,
            participants_count=len(chat.members),
        )

    def user(self, viewer: int, user_id: int) -> Any:
        return types.User(
            user_id,
            is_self=user_id == viewer or None,
            access_hash=self.access_hash(viewer, user_id),
            first_name=f"User {user_id}",
            phone=self.users.get(user_id),
        )

    # --- answering ---

    def answer(self, viewer: int, request: Any) -> Any:
        method = type(request).__name__.removesuffix("Request")
        self.calls[viewer, method] += 1
        for key in ((viewer, method), (None, method)):
            if key in self.flood:
                raise errors.FloodWaitError(request=request, capture=self.flood[key])
            if key in self.errors:
                raise errors.rpc_message_to_error(
                    types.RpcError(400, self.errors[key]), request
                )
        handler = getattr(self, "_" + method, None)
        if handler is None:
            raise errors.RPCError(request, "METHOD_NOT_FAKED", 400)
        return handler(viewer, request)

    def _fail(self, request: Any, name: str) -> errors.RPCError:
        return errors.rpc_message_to_error(types.RpcError(400, name), request)

    def _chat_of(self, viewer: int, request: Any, peer: Any) -> FakeChat:
        if isinstance(peer, (types.InputPeerChat, int)):
            chat_id = peer if isinstance(peer, int) else peer.chat_id
            chat = self.chats.get(chat_id)
            # A basic group is reached by id alone, by its members only (Telegram's rule).
            if chat is None or chat.kind != "group" or viewer not in chat.members:
                raise self._fail(request, "CHAT_ID_INVALID")
            return chat
        chat = self.chats.get(peer.channel_id)
        if chat is None or peer.access_hash != self.access_hash(viewer, chat.id):
            raise self._fail(request, "CHANNEL_INVALID")
        if chat.id in self.private:
            raise self._fail(request, "CHANNEL_PRIVATE")
        return chat

    def _GetUsers(self, viewer: int, request: Any) -> Any:
        return [
            self.user(viewer, viewer if isinstance(u, types.InputUserSelf) else u.user_id)
            for u in request.id
        ]

    def _ResolveUsername(self, viewer: int, request: Any) -> Any:
        for chat in self.chats.values():
            if chat.username and chat.username.lower() == request.username.lower():
                return types.contacts.ResolvedPeer(
                    types.PeerChannel(chat.id), [self.channel(viewer, chat)], []
                )
        raise self._fail(request, "USERNAME_NOT_OCCUPIED")

    def _GetChannels(self, viewer: int, request: Any) -> Any:
        chats = [self._chat_of(viewer, request, c) for c in request.id]
        return types.messages.Chats([self.channel(viewer, c) for c in chats])

    def _GetChats(self, viewer: int, request: Any) -> Any:
        chats = [self._chat_of(viewer, request, i) for i in request.id]
        return types.messages.Chats([self.channel(viewer, c) for c in chats])

    def _GetFullChannel(self, viewer: int, request: Any) -> Any:
        chat = self._chat_of(viewer, request, request.channel)
        full = types.ChannelFull(
            chat.id, "about", 0, 0, 0, types.PhotoEmpty(0), types.PeerNotifySettings(), [], 1,
            participants_count=len(chat.members),
        )
        return types.messages.ChatFull(full, [self.channel(viewer, chat)], [])

    def _GetFullChat(self, viewer: int, request: Any) -> Any:
        chat = self._chat_of(viewer, request, request.chat_id)
        members = [types.ChatParticipant(u, 0, DATE) for u in chat.members]
        full = types.ChatFull(
            chat.id, "about", types.ChatParticipants(chat.id, members, 1), types.PeerNotifySettings()
        )
        users = [self.user(viewer, u) for u in chat.members]
        return types.messages.ChatFull(full, [self.channel(viewer, chat)], users)

    def _peer(self, chat: FakeChat) -> Any:
        return types.PeerChat(chat.id) if chat.kind == "group" else types.PeerChannel(chat.id)

    def _GetHistory(self, viewer: int, request: Any) -> Any:
        chat = self._chat_of(viewer, request, request.peer)
        ids = sorted(chat.messages, reverse=True)
        ids = [
            i
            for i in ids
            if (not request.offset_id or i < request.offset_id)
            and (not request.max_id or i < request.max_id)
            and i > request.min_id
        ][: request.limit]
        msgs = [types.Message(i, self._peer(chat), DATE, f"m{i}") for i in ids]
        return types.messages.Messages(msgs, [], [self.channel(viewer, chat)], [])

    def _channel_messages(self, viewer: int, chat: FakeChat, ids: list[int]) -> Any:
        msgs = [
            types.Message(i, self._peer(chat), DATE, f"m{i}")
            if i in chat.messages
            else message_empty(i)
            for i in ids
        ]
        return types.messages.Messages(msgs, [], [self.channel(viewer, chat)], [])

    def _GetMessages(self, viewer: int, request: Any) -> Any:
        if hasattr(request, "channel"):
            chat = self._chat_of(viewer, request, request.channel)
        else:  # messages.getMessages: the account's common box; here the one basic group
            chat = next(c for c in self.chats.values() if c.kind == "group")
        return self._channel_messages(viewer, chat, [m.id for m in request.id])

    def _GetParticipants(self, viewer: int, request: Any) -> Any:
        chat = self._chat_of(viewer, request, request.channel)
        if chat.kind == "broadcast":
            raise self._fail(request, "CHAT_ADMIN_REQUIRED")
        page = chat.members[request.offset : request.offset + request.limit]
        parts = [types.ChannelParticipant(u, DATE) for u in page]
        users = [self.user(viewer, u) for u in page]
        return types.channels.ChannelParticipants(len(chat.members), parts, [], users)

    def _Search(self, viewer: int, request: Any) -> Any:
        found = [c for c in self.chats.values() if c.username and request.q in c.title]
        mine = [c for c in found if viewer in c.members]
        others = [c for c in found if viewer not in c.members]
        return types.contacts.Found(
            [self._peer(c) for c in mine],
            [self._peer(c) for c in others],
            [self.channel(viewer, c) for c in found],
            [],
        )

    def _JoinChannel(self, viewer: int, request: Any) -> Any:
        chat = self._chat_of(viewer, request, request.channel)
        if viewer in chat.members:
            raise self._fail(request, "USER_ALREADY_PARTICIPANT")
        chat.members.append(viewer)
        return types.Updates([], [], [self.channel(viewer, chat)], DATE, 1)

    def _LeaveChannel(self, viewer: int, request: Any) -> Any:
        chat = self._chat_of(viewer, request, request.channel)
        if viewer not in chat.members:
            raise self._fail(request, "USER_NOT_PARTICIPANT")
        chat.members.remove(viewer)
        return types.Updates([], [], [self.channel(viewer, chat)], DATE, 1)


class FakeSender:
    """The client's sender as model.telethon_internals.call_once watches it: always up."""

    def is_connected(self) -> bool:
        return True

    def _transport_connected(self) -> bool:
        return True


class FakeClient:
    """What TeleClient uses of telethon.TelegramClient, answered by a FakeTelegram.

    Requests come through `_call(sender, request)` (as Telethon's `_call`, which
    model.telethon_internals.call_once uses), which answers as `client(request)` does."""

    def __init__(self, world: FakeTelegram, user_id: int, session: Any) -> None:
        self.world = world
        self.user_id = user_id
        self.session = session
        self._self_id = user_id
        self._mb_entity_cache = EntityCache()
        self.handlers: list[tuple[Any, Any]] = []
        self.connected = False
        self.gate: asyncio.Event | None = None  # when set, requests wait for it
        self.at_gate = 0  # requests waiting for the gate now
        self.refuse_connects = 0  # how many connects fail before one succeeds
        self._disconnected: asyncio.Future[None] | None = None
        self._sender = FakeSender()

    async def _call(self, sender: Any, request: Any) -> Any:
        return await self(request)

    async def __call__(self, request: Any) -> Any:
        if not self.connected:
            raise ConnectionError("Cannot send requests while disconnected")
        if self.gate is not None:
            self.at_gate += 1
            try:
                await self.gate.wait()
            finally:
                self.at_gate -= 1
        result = self.world.answer(self.user_id, request)
        self.session.process_entities(result)  # what Telethon's _call does with every answer
        return result

    async def connect(self) -> None:
        if self.refuse_connects > 0:
            self.refuse_connects -= 1
            raise ConnectionRefusedError("the fake refuses this connect")
        self.connected = True
        self._disconnected = asyncio.get_running_loop().create_future()

    async def disconnect(self) -> None:
        self.connected = False
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        self.session.close()

    @property
    def disconnected(self) -> asyncio.Future[None]:
        assert self._disconnected is not None
        return asyncio.shield(self._disconnected)

    def add_event_handler(self, callback: Any, event: Any) -> None:
        self.handlers.append((callback, event))


def fake_account(
    world: FakeTelegram, tmp: Path, name: str, user_id: int, **options: Any
) -> TeleClient:
    """A real TeleClient on a real session file in `tmp`, its network replaced by `world`:
    its client factory builds a FakeClient around the session TeleClient opened."""
    world.users[user_id] = f"4470000{user_id:05d}"

    def fake_client(session: Any, options: ClientOptions) -> FakeClient:
        return FakeClient(world, user_id, session)

    path = tmp / f"{name}.session"
    return TeleClient(path, 1, "hash", receive_updates=False, client_factory=fake_client, **options)


class FakeClock:
    """An injectable monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def learn_group(tc: TeleClient, world: FakeTelegram) -> None:
    """The account meets the basic group in some answer (basic groups have no username)."""
    group = world.channel(tc.client.user_id, world.chats[GROUP])
    tc.client.session.process_entities(types.messages.Chats([group]))


def channel_id(bare: int) -> str:
    """The Bot-API (marked) id of a channel, as the API takes it."""
    return str(-(10**12) - bare)
