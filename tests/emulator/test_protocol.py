"""A stock Telethon client against the emulator's protocol layer (mini world)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from telethon import TelegramClient, events
from telethon.crypto import AuthKey
from telethon.errors import AuthKeyNotFound, RPCError
from telethon.network import Connection, ConnectionTcpAbridged, ConnectionTcpIntermediate
from telethon.network.connection.tcpintermediate import RandomizedIntermediatePacketCodec
from telethon.network.mtprotostate import MTProtoState
from telethon.tl import functions, types

from tests.emulator.conftest import API_HASH, API_ID
from tests.emulator.mini_world import MiniWorld, file_bytes
from tests.fakedc.api import CallContext
from tests.fakedc.authkeys import AuthKeyRegistry
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.session import make_session
from tests.fixtures.wait import wait_for

ClientFactory = Callable[..., TelegramClient]


@pytest.fixture
def connect(
    mini_tg: FakeTelegram, tmp_path: Path, clients: list[TelegramClient]
) -> Callable[..., TelegramClient]:
    """Makes a logged-in client (not yet connected) on a fresh session file."""

    def make(user_id: int = 1000, **kwargs: object) -> TelegramClient:
        path = mini_tg.make_session(tmp_path / f"u{user_id}-{len(clients)}", user_id=user_id)
        client = TelegramClient(str(path), API_ID, API_HASH, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    return make


async def test_made_session_connects_and_get_me(
    mini_tg: FakeTelegram, mini: MiniWorld, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    me = await client.get_me()
    assert me.id == 1000 and me.is_self
    assert await client.is_user_authorized()
    assert mini.calls["help.getConfig"] == 1
    assert mini.calls["updates.getState"] == 1
    # The first request went out with salt 0 and was answered bad_server_salt, then resent.
    assert mini_tg.stats["BadServerSalt"] >= 1
    assert mini_tg.stats["NewSessionCreated"] == 1
    assert mini.contexts[0].user_id == 1000 and mini.contexts[0].dc_id == 1


async def test_many_concurrent_requests_are_answered_in_parallel(
    mini: MiniWorld, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    mini.delay = 0.2
    started = time.monotonic()
    results = await asyncio.gather(
        *(client(functions.users.GetUsersRequest([types.InputUserSelf()])) for _ in range(50))
    )
    elapsed = time.monotonic() - started
    assert all(r[0].id == 1000 for r in results)
    # 50 answers each delayed 0.2 s: sequential would take 10 s.
    assert elapsed < 2.0


async def test_requests_in_one_container(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    before = mini_tg.stats["container"]
    a, b = await client(
        [
            functions.users.GetUsersRequest([types.InputUserSelf()]),
            functions.help.GetConfigRequest(),
        ]
    )
    assert a[0].id == 1000
    assert isinstance(b, types.Config) and b.this_dc == 1
    assert mini_tg.stats["container"] > before


async def test_gzip_packed_request_is_unpacked(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    # Telethon gzips a content request over 512 bytes when that makes it smaller.
    many = [types.InputUser(user_id=2000 + i % 3, access_hash=0) for i in range(60)]
    users = await client(functions.users.GetUsersRequest(many))
    assert [u.id for u in users] == [2000 + i % 3 for i in range(60)]
    assert mini_tg.stats["gzip_packed"] >= 1


async def test_ordered_requests_use_invoke_after_msg(
    mini_tg: FakeTelegram, mini: MiniWorld, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    seen: list[str] = []
    inner = mini_tg.dispatcher

    async def recording(ctx: CallContext, request: object) -> object:
        if ctx.method in ("help.getNearestDc", "help.getConfig"):
            # The first one is slow: the second must still wait for it.
            await asyncio.sleep(0.3 if ctx.method == "help.getNearestDc" else 0)
            seen.append(ctx.method)
        return await inner(ctx, request)

    mini_tg.dispatcher = recording
    nearest, config = await client(
        [functions.help.GetNearestDcRequest(), functions.help.GetConfigRequest()], ordered=True
    )
    assert nearest.this_dc == 1 and isinstance(config, types.Config)
    assert seen == ["help.getNearestDc", "help.getConfig"]
    assert mini_tg.stats["invokeAfterMsg"] == 1


async def test_ping_delay_disconnect_closes_an_idle_connection(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    connections = mini_tg.stats["connection"]
    await client(functions.PingDelayDisconnectRequest(ping_id=1, disconnect_delay=1))
    # No further ping: the server closes it after a second, and Telethon reconnects.
    await wait_for(
        lambda: mini_tg.stats["connection"] > connections, within=5.0, what="a reconnection"
    )
    assert (await client.get_me()).id == 1000


async def test_salt_change_is_answered_bad_server_salt_and_resent(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    before = mini_tg.stats["BadServerSalt"]
    for rec in mini_tg.registry.records():
        rec.salt ^= 0x5A5A
    me = await client.get_me()
    assert me.id == 1000
    assert mini_tg.stats["BadServerSalt"] > before  # (its pending acks get one too)


async def test_ping_and_ping_delay_disconnect(connect: ClientFactory) -> None:
    client = connect(1000)
    await client.connect()
    pong = await client(functions.PingRequest(ping_id=424242))
    assert isinstance(pong, types.Pong) and pong.ping_id == 424242
    pong = await client(functions.PingDelayDisconnectRequest(ping_id=7, disconnect_delay=75))
    assert pong.ping_id == 7


async def test_future_salts_and_destroy_session(connect: ClientFactory) -> None:
    client = connect(1000)
    await client.connect()
    salts = await client(functions.GetFutureSaltsRequest(num=1))
    assert isinstance(salts, types.FutureSalts) and len(salts.salts) == 1
    answer = await client(functions.DestroySessionRequest(session_id=123456789))
    assert isinstance(answer, types.DestroySessionNone) and answer.session_id == 123456789


async def test_rpc_error_reaches_telethon(connect: ClientFactory) -> None:
    client = connect(1000)
    await client.connect()
    with pytest.raises(RPCError, match="METHOD_NOT_IN_MINI_WORLD"):
        await client(functions.help.GetSupportRequest())


@pytest.mark.parametrize("connection", [ConnectionTcpIntermediate, ConnectionTcpAbridged])
async def test_other_transports(connect: ClientFactory, connection: type) -> None:
    client = connect(1000, connection=connection)
    await client.connect()
    assert (await client.get_me()).id == 1000
    results = await asyncio.gather(*(client.get_me() for _ in range(10)))
    assert {u.id for u in results} == {1000}


async def test_pushed_updates_fire_handlers(mini_tg: FakeTelegram, connect: ClientFactory) -> None:
    client = connect(1000)
    raw: list[object] = []
    new_messages: list[str] = []
    client.add_event_handler(lambda u: raw.append(u), events.Raw)

    async def on_new(event: events.NewMessage.Event) -> None:
        new_messages.append(event.raw_text)

    client.add_event_handler(on_new, events.NewMessage)
    await client.connect()
    now = dt.datetime.now(dt.UTC)
    typing = types.UpdateUserTyping(user_id=2000, action=types.SendMessageTypingAction())
    assert mini_tg.push(1000, types.UpdateShort(update=typing, date=now)) == 1
    await wait_for(
        lambda: any(isinstance(u, types.UpdateUserTyping) for u in raw),
        within=5.0,
        what="the typing update",
    )
    msg = types.UpdateShortMessage(
        id=1, user_id=2000, message="hello", pts=2, pts_count=1, date=now
    )
    assert mini_tg.push(1000, msg) == 1
    await wait_for(lambda: new_messages == ["hello"], within=5.0, what="the new message")
    # Another user's connections get nothing.
    assert mini_tg.push(3000, types.UpdateShort(update=typing, date=now)) == 0


async def test_no_pushes_to_a_client_without_updates(
    mini_tg: FakeTelegram, mini: MiniWorld, connect: ClientFactory
) -> None:
    client = connect(1000, receive_updates=False, device_model="probe")
    await client.connect()
    assert (await client.get_me()).id == 1000
    now = dt.datetime.now(dt.UTC)
    typing = types.UpdateUserTyping(user_id=2000, action=types.SendMessageTypingAction())
    assert mini_tg.push(1000, types.UpdateShort(update=typing, date=now)) == 0
    assert mini.contexts[-1].extra["init"]["device_model"] == "probe"


async def test_drop_connection_and_telethon_reconnects(
    mini_tg: FakeTelegram, mini: MiniWorld, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    connections = mini_tg.stats["connection"]
    calls = mini.calls["users.getUsers"]
    mini.drop_on = "users.getUsers"
    me = await client.get_me()  # dropped once, resent by Telethon on a new connection
    assert me.id == 1000
    assert mini.calls["users.getUsers"] >= calls + 2  # Telethon also calls get_me on reconnect
    assert mini_tg.stats["connection"] == connections + 1


async def test_unknown_auth_key_gets_404(mini_tg: FakeTelegram, tmp_path: Path) -> None:
    dc = mini_tg.dcs[1]
    path = make_session(
        tmp_path / "stranger", 1, dc.host, dc.port, 1000, registry=AuthKeyRegistry()
    )
    client = TelegramClient(str(path), API_ID, API_HASH, connection_retries=0)
    try:
        with pytest.raises(AuthKeyNotFound):
            await client.connect()
        assert mini_tg.stats["-404"] == 1
        with contextlib.suppress(AuthKeyNotFound):  # Telethon's own copy of the error
            await client.disconnected
    finally:
        await client.disconnect()


async def test_key_of_dc1_shown_to_dc2_gets_404(mini_tg: FakeTelegram, tmp_path: Path) -> None:
    """A key belongs to the DC that made it: DC 2 answers -404 to DC 1's key, as Telegram
    does, and Telethon's sender raises AuthKeyNotFound (InvalidBufferError 404)."""
    from telethon.sessions import SQLiteSession

    path = mini_tg.make_session(tmp_path / "moved", user_id=1000)  # DC 1's key
    session = SQLiteSession(str(path))
    try:
        session.set_dc(2, mini_tg.dcs[2].host, mini_tg.port(2))  # keeps the auth key
        session.save()
    finally:
        session.close()
    client = TelegramClient(str(path), API_ID, API_HASH, connection_retries=0)
    try:
        with pytest.raises(AuthKeyNotFound):
            await client.connect()
        with contextlib.suppress(AuthKeyNotFound):
            await client.disconnected
    finally:
        await client.disconnect()
    assert mini_tg.dcs[2].stats["-404"] == 1
    assert mini_tg.dcs[1].stats["-404"] == 0
    assert mini_tg.dcs[2].stats["request"] == 0  # nothing of it was answered


async def test_file_on_second_dc_via_dh_and_imported_authorization(
    mini_tg: FakeTelegram, mini: MiniWorld, connect: ClientFactory, fakedc_rsa_key: int
) -> None:
    client = connect(1000)
    await client.connect()
    keys_before = len(mini_tg.registry.records(dc_id=2))
    size = mini.file_size
    doc = types.Document(
        id=77,
        access_hash=88,
        file_reference=b"ref",
        date=dt.datetime.now(dt.UTC),
        mime_type="application/octet-stream",
        size=size,
        dc_id=2,
        attributes=[types.DocumentAttributeFilename("x.bin")],
    )
    # download_file takes the dc_id from the Document (download_media in 1.45 asks the
    # main DC and relies on FILE_MIGRATE_X from the world).
    data = await client.download_file(doc, bytes)
    assert data == file_bytes(0, size)
    # DC 2 got a fresh key by DH, bound to the user by auth.importAuthorization.
    assert len(mini_tg.registry.records(dc_id=2)) == keys_before + 1
    on_dc2 = [c for c in mini.contexts if c.dc_id == 2 and c.method == "upload.getFile"]
    assert on_dc2 and all(c.user_id == 1000 for c in on_dc2)
    # One export on DC 1, one import on DC 2, and DC 1's key never shown to DC 2.
    exports = [c.dc_id for c in mini.contexts if c.method == "auth.exportAuthorization"]
    imports = [c.dc_id for c in mini.contexts if c.method == "auth.importAuthorization"]
    assert (exports, imports) == ([1], [2])
    assert mini_tg.dcs[2].stats["-404"] == 0


async def test_session_file_is_telethons_own(mini_tg: FakeTelegram, tmp_path: Path) -> None:
    from telethon.sessions import SQLiteSession

    path = mini_tg.make_session(tmp_path / "s", user_id=5)
    assert path.name == "s.session"
    session = SQLiteSession(str(path))
    try:
        assert session.dc_id == 1 and session.port == mini_tg.port(1)
        assert session.auth_key is not None and len(session.auth_key.key) == 256
        assert mini_tg.registry.get(session.auth_key.key_id, 1) is not None
        assert mini_tg.registry.get(session.auth_key.key_id, 2) is None
    finally:
        session.close()


# --- bad_msg_notification and padded intermediate ----------------------------------------


async def test_client_clock_behind_gets_16_and_telethon_corrects_it(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    state = client._sender._state
    state.time_offset, state._last_msg_id = -1000, 0  # msg_ids 1000 s in the past
    assert (await client.get_me()).id == 1000  # 16, Telethon takes the server's time, resends
    assert mini_tg.dcs[1].stats["bad_msg_16"] >= 1
    assert abs(state.time_offset) <= 2


async def test_client_clock_ahead_gets_17_and_telethon_corrects_it(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    state = client._sender._state
    state.time_offset, state._last_msg_id = 1000, 0  # msg_ids 1000 s ahead
    assert (await client.get_me()).id == 1000
    assert mini_tg.dcs[1].stats["bad_msg_17"] >= 1
    assert abs(state.time_offset) <= 2


async def test_sequence_reset_gets_32_and_telethon_pumps_it(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(1000)
    await client.connect()
    assert (await client.get_me()).id == 1000
    client._sender._state._sequence = 0  # seq_nos below those the session already had
    assert (await client.get_me()).id == 1000  # 32: Telethon adds 64 and resends
    assert mini_tg.dcs[1].stats["bad_msg_32"] >= 1


class _Loggers(dict):  # type: ignore[type-arg]  # Telethon indexes its loggers by module
    def __missing__(self, key: str) -> logging.Logger:
        return logging.getLogger(key)


class RawSession:
    """A hand-made MTProto session on one intermediate-transport connection, for messages
    Telethon never sends (msg_ids it would not choose)."""

    def __init__(self, key: bytes, salt: int) -> None:
        self.state = MTProtoState(AuthKey(key), loggers=_Loggers())
        self.state.salt = salt
        self.base = (int(time.time()) << 32) & ~3  # msg_ids are base + 4k (+ residue)
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(b"\xee\xee\xee\xee")

    def send(self, msg_id: int, seq_no: int, request: object) -> None:
        body = request._bytes()  # type: ignore[attr-defined]
        data = self.state.encrypt_message_data(struct.pack("<qii", msg_id, seq_no, len(body)) + body)
        self.writer.write(struct.pack("<i", len(data)) + data)

    async def answer(self, kind: type) -> object:
        """The next message of type `kind` the server sends (others are skipped)."""
        async with asyncio.timeout(5):
            while True:
                (n,) = struct.unpack("<i", await self.reader.readexactly(4))
                msg = self.state.decrypt_message_data(await self.reader.readexactly(n))
                if msg is not None and isinstance(msg.obj, kind):
                    return msg.obj

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw(mini_tg: FakeTelegram) -> AsyncIterator[RawSession]:
    key = os.urandom(256)
    rec = mini_tg.registry.add(key, 1000, 1)
    session = RawSession(key, rec.salt)
    await session.open(mini_tg.port(1))
    yield session
    session.close()


async def test_msg_id_not_divisible_by_4_gets_18(mini_tg: FakeTelegram, raw: RawSession) -> None:
    raw.send(raw.base + 4 + 1, 1, functions.PingRequest(ping_id=1))
    bad = await raw.answer(types.BadMsgNotification)
    assert (bad.bad_msg_id, bad.error_code) == (raw.base + 5, 18)
    raw.send(raw.base + 8, 3, functions.PingRequest(ping_id=2))  # the session goes on
    assert (await raw.answer(types.Pong)).ping_id == 2
    assert mini_tg.dcs[1].stats["bad_msg_18"] == 1


async def test_seq_no_against_the_sessions_messages_gets_32_and_33(
    mini_tg: FakeTelegram, raw: RawSession
) -> None:
    b = raw.base
    raw.send(b + 40, 5, functions.PingRequest(ping_id=1))
    assert (await raw.answer(types.Pong)).ping_id == 1
    cases = [
        (b + 44, 3, 32),  # a lower msg_id (b+40) had a higher seq_no
        (b + 48, 5, 32),  # ... or the same odd one
        (b + 36, 7, 33),  # a higher msg_id (b+40) had a lower seq_no
        (b + 32, 5, 33),  # ... or the same odd one
    ]
    for msg_id, seq_no, code in cases:
        raw.send(msg_id, seq_no, functions.PingRequest(ping_id=9))
        bad = await raw.answer(types.BadMsgNotification)
        assert (bad.bad_msg_id, bad.bad_msg_seqno, bad.error_code) == (msg_id, seq_no, code)
    raw.send(b + 52, 7, functions.PingRequest(ping_id=2))  # in order again: answered
    assert (await raw.answer(types.Pong)).ping_id == 2
    raw.send(b + 28, 4, types.MsgsAck([1]))  # even seq_nos may repeat: no complaint
    raw.send(b + 24, 4, types.MsgsAck([1]))
    raw.send(b + 56, 9, functions.PingRequest(ping_id=3))
    assert (await raw.answer(types.Pong)).ping_id == 3
    stats = mini_tg.dcs[1].stats
    assert (stats["bad_msg_32"], stats["bad_msg_33"]) == (2, 2)


class _Padded(RandomizedIntermediatePacketCodec):
    """Telethon's own padded-intermediate codec (0-3 bytes of padding), announced by its tag
    as without obfuscation (Telethon sends it only inside MTProxy's obfuscation)."""

    tag = b"\xdd\xdd\xdd\xdd"


class _PaddedLikeTdlib(_Padded):
    """0-15 bytes of padding, as TDLib sends (mtproto-transports: padded intermediate)."""

    def encode_packet(self, data: bytes) -> bytes:
        data += os.urandom(random.randint(0, 15))
        return struct.pack("<i", len(data)) + data


class ConnectionTcpPadded(Connection):
    packet_codec = _Padded


class ConnectionTcpPaddedLikeTdlib(Connection):
    packet_codec = _PaddedLikeTdlib


@pytest.mark.parametrize("connection", [ConnectionTcpPadded, ConnectionTcpPaddedLikeTdlib])
async def test_padded_intermediate_transport(
    mini_tg: FakeTelegram, connect: ClientFactory, connection: type
) -> None:
    client = connect(1000, connection=connection)
    await client.connect()
    results = await asyncio.gather(*(client.get_me() for _ in range(20)))
    assert {u.id for u in results} == {1000}


async def test_padded_intermediate_runs_the_dh_handshake(
    mini_tg: FakeTelegram, tmp_path: Path, fakedc_rsa_key: int, clients: list[TelegramClient]
) -> None:
    from telethon.sessions import SQLiteSession

    session = SQLiteSession(str(tmp_path / "fresh-padded"))
    session.set_dc(1, "127.0.0.1", mini_tg.port(1))
    client = TelegramClient(session, API_ID, API_HASH, connection=ConnectionTcpPaddedLikeTdlib)
    clients.append(client)
    await client.connect()  # plain packets with 0-15 bytes of padding
    assert client.session.auth_key is not None
    assert (await client(functions.help.GetNearestDcRequest())).this_dc == 1
