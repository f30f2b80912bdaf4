"""The media connection and the account's updates (issue 11, item 12), over the DC emulator:
an account downloading on its home DC while its channel posts gets every update on its
main connection and none on the media connection (which never subscribed), and an update
pushed to the media connection all the same is dropped quietly, never an ERROR."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import events
from telethon.tl import functions, types

from model.downloader import MIB, download_media
from model.media import Media
from model.teleclient import TeleClient
from model.telethon_internals import call
from tests.fakedc import files
from tests.fakedc.render import document_file_key
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.wait import wait_for

ACCOUNT = 1001
CHANNEL = 2001
DOC = 6001  # on DC 1, the account's home: over the media connection
SIZE = 4 * MIB + 321


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    world = World.from_dict(
        {
            "users": [{"id": ACCOUNT, "first_name": "A", "phone": "15550001"}],
            "chats": [
                {"id": CHANNEL, "kind": "broadcast", "title": "Files", "username": "files",
                 "members": {str(ACCOUNT): 0}}
            ],
            "documents": [{"id": DOC, "kind": "file", "size": SIZE, "dc_id": 1}],
            "messages": [{"chat": CHANNEL, "id": 1, "media": {"document": DOC}}],
        }
    )  # fmt: skip
    return TelegramRpc(world)


@pytest.fixture
async def account(telegram_session: Callable[..., Path]) -> AsyncIterator[TeleClient]:
    """ACCOUNT's TeleClient, receiving updates, started, its update feed open."""
    tele = TeleClient(telegram_session(ACCOUNT, dc_id=1), FAKEDC_API_ID, FAKEDC_API_HASH)
    assert tele.updates is not None
    tele.updates.open()
    await tele.start()
    try:
        yield tele
    finally:
        await tele.stop()


def heard(tele: TeleClient) -> list[Any]:
    seen: list[Any] = []

    async def on_update(update: Any) -> None:
        seen.append(update)

    tele.client.add_event_handler(on_update, events.Raw)
    return seen


async def the_document(tele: TeleClient) -> Media:
    from service.parser import parse_messages

    msgs = await tele.client.get_messages("files", ids=[1])
    _, media = parse_messages(msgs, tele.name)
    return media[0]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_updates_reach_the_main_connection_only_while_downloading(
    account: TeleClient, fake_telegram: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rpc = fake_telegram.dispatcher
    seen = heard(account)
    media = await the_document(account)
    rpc.set_latency({"upload.getFile": 0.02})  # the download lasts while the posts come
    out = tmp_path / "f.bin"
    download = asyncio.create_task(download_media(account, media, out, parts_in_flight=2))
    await wait_for(lambda: account.media_connections.in_use > 0, what="the media connection")
    for i in range(5):
        await rpc.post_message(CHANNEL, f"post {i}")
    await asyncio.wait_for(download, 30)
    posts = lambda: [u for u in seen if isinstance(u, types.UpdateNewChannelMessage)]  # noqa: E731
    await wait_for(lambda: len(posts()) == 5, what="the five posts, on the main connection")
    conns = fake_telegram.connections(ACCOUNT)
    (media_conn,) = [c for c in conns if "upload.getFile" in c.requests]
    (main,) = [c for c in conns if c is not media_conn]
    assert media_conn.pushes == 0 and main.pushes == 5
    assert out.read_bytes() == files.read(document_file_key(DOC), SIZE)
    assert errors_logged(caplog) == []


async def test_an_update_pushed_to_the_media_connection_anyway_is_dropped(
    account: TeleClient, fake_telegram: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen = heard(account)
    media = await the_document(account)
    sender = await account.media_connections.borrow(1)
    try:
        typing = types.UpdateUserTyping(2000, types.SendMessageTypingAction())
        assert fake_telegram.push(ACCOUNT, types.UpdateShort(typing, 0), force=True) == 2
        # The push went out before this answer on the same connection: once the answer is
        # in, the media connection has handled the push too.
        part = functions.upload.GetFileRequest(media.location(), 0, 4096)
        answer = await call(account.client, sender, part)
        assert len(answer.bytes) == 4096 and sender.is_connected()
    finally:
        await account.media_connections.give_back(sender)
    await wait_for(lambda: len(seen) == 1, what="the update on the main connection")
    assert errors_logged(caplog) == []
