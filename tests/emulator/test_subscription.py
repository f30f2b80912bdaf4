"""Which connections the emulator pushes updates to, through stock Telethon: Telegram's rule
(core.telegram.org/api/updates; the schema's invokeWithoutUpdates, "file queries"
exempt): a connection gets the account's updates once it sent a query that was neither
wrapped in invokeWithoutUpdates nor a file query, and every such connection does."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient, events
from telethon.network import ConnectionTcpIntermediate, MTProtoSender
from telethon.tl import functions, types
from telethon.tl.alltlobjects import LAYER

from tests.emulator.conftest import API_HASH, API_ID
from tests.emulator.mini_world import MiniWorld
from tests.fakedc.cluster import FakeTelegram
from tests.fixtures.wait import wait_for

ClientFactory = Callable[..., TelegramClient]
USER = 1000


class Loggers(dict[str, logging.Logger]):
    """What Telethon's senders take as `loggers`: a logger per module name."""

    def __missing__(self, key: str) -> logging.Logger:
        return logging.getLogger(key)


@pytest.fixture
def connect(mini_tg: FakeTelegram, tmp_path: Path, clients: list[TelegramClient]) -> ClientFactory:
    """A logged-in client of USER on a fresh session file (its own auth key)."""

    def make(**kwargs: Any) -> TelegramClient:
        path = mini_tg.make_session(tmp_path / f"c{len(clients)}", user_id=USER)
        client = TelegramClient(str(path), API_ID, API_HASH, **kwargs)
        clients.append(client)
        return client

    return make


def typing_update() -> types.UpdateShort:
    action = types.SendMessageTypingAction()
    return types.UpdateShort(types.UpdateUserTyping(2000, action), dt.datetime.now(dt.UTC))


def heard(client: TelegramClient) -> list[Any]:
    """The raw updates the client's handlers get, as they come."""
    seen: list[Any] = []

    async def on_update(update: Any) -> None:
        seen.append(update)

    client.add_event_handler(on_update, events.Raw)
    return seen


async def second_sender(mini_tg: FakeTelegram, client: TelegramClient, first: Any) -> Any:
    """Another connection to the home DC on the client's auth key (one more session of the
    same authorization), introduced by `first` wrapped in initConnection; its updates
    queue is returned as `sender.queue`."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    loggers = Loggers()
    sender = MTProtoSender(client.session.auth_key, loggers=loggers, updates_queue=queue)
    await sender.connect(
        ConnectionTcpIntermediate("127.0.0.1", mini_tg.port(1), 1, loggers=loggers)
    )
    init = functions.InitConnectionRequest(API_ID, "probe", "1", "1", "en", "", "en", query=first)
    await sender.send(functions.InvokeWithLayerRequest(LAYER, init))
    sender.queue = queue
    return sender


async def test_a_plain_query_subscribes_a_connection_that_had_none(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    client = connect(receive_updates=False)  # every query wrapped in invokeWithoutUpdates
    seen = heard(client)
    await client.connect()
    assert (await client.get_me()).id == USER
    assert mini_tg.push(USER, typing_update()) == 0
    await client.set_receive_updates(True)  # updates.getState, unwrapped
    assert mini_tg.push(USER, typing_update()) == 1
    await wait_for(lambda: len(seen) == 1, within=5, what="the update after subscribing")


async def test_file_queries_and_wrapped_queries_dont_subscribe(
    mini_tg: FakeTelegram, mini: MiniWorld, connect: ClientFactory, fakedc_rsa_key: int
) -> None:
    client = connect()
    seen = heard(client)
    await client.connect()  # its initConnection, unwrapped: subscribed
    wrapped = functions.InvokeWithoutUpdatesRequest(functions.help.GetConfigRequest())
    quiet = await second_sender(mini_tg, client, wrapped)
    location = types.InputDocumentFileLocation(1, 2, b"", "")
    files = await second_sender(mini_tg, client, functions.upload.GetFileRequest(location, 0, 4096))
    # Telethon's own sender for another DC: auth.importAuthorization, then upload.getFile.
    data = await client.download_file(location, bytes, dc_id=2)
    assert isinstance(data, bytes) and len(data) == mini.file_size
    try:
        conns = mini_tg.connections(USER)
        assert len(conns) == 4
        assert mini_tg.push(USER, typing_update()) == 1  # the main connection only
        await wait_for(lambda: len(seen) == 1, within=5, what="the update on the main one")
        # (The main one may have asked updates.getDifference too, by then.)
        pushed = {
            tuple(sorted(set(c.requests) - {"updates.getDifference"})): c.pushes for c in conns
        }
        assert pushed == {
            ("auth.exportAuthorization", "help.getConfig", "updates.getState", "users.getUsers"): 1,
            ("help.getConfig",): 0,
            ("upload.getFile",): 0,
            ("auth.importAuthorization", "upload.getFile"): 0,
        }
        # A plain query later subscribes the quiet one: then both get the account's updates.
        await quiet.send(functions.users.GetUsersRequest([types.InputUserSelf()]))
        assert mini_tg.push(USER, typing_update()) == 2
        update = await asyncio.wait_for(quiet.queue.get(), 5)
        assert isinstance(update, types.UpdateShort)
        assert files.queue.empty()
    finally:
        await quiet.disconnect()
        await files.disconnect()


async def test_every_subscribed_connection_of_the_account_gets_them(
    mini_tg: FakeTelegram, connect: ClientFactory
) -> None:
    clients = [connect(), connect(), connect(receive_updates=False)]
    seen = [heard(c) for c in clients]
    for client in clients:
        await client.connect()
        await client.get_me()
    assert mini_tg.push(USER, typing_update()) == 2
    await wait_for(lambda: [len(s) for s in seen] == [1, 1, 0], within=5, what="both updates")
    # force: every connection, subscribed or not (what a client does with one it did
    # not ask for); another account's connections get nothing either way.
    assert mini_tg.push(USER, typing_update(), force=True) == 3
    await wait_for(lambda: [len(s) for s in seen] == [2, 2, 1], within=5, what="forced ones")
    assert mini_tg.push(USER + 1, typing_update(), force=True) == 0
