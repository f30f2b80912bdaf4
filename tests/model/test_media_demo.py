"""The parser and model/downloader.py's download_media on what the emulator really sends: every message of the
demo world's media channel (photos on DC 1 and 2, an album, every document kind, a link
preview) and a channel's own photo, parsed from Telethon's deserialised objects and
downloaded byte-exact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from telethon import TelegramClient
from telethon.tl import functions

from model.downloader import MediaConnections, download_media
from model.media import Media
from service.parser import MESSAGE_FIELDS, parse_messages, parse_peer
from tests.fakedc import files, render
from tests.fakedc.demo_world import ACCOUNT_A, ALBUM_GROUP, MEDIA_IDS, demo_world
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc

    return TelegramRpc(demo_world())


@pytest.fixture
async def client(fake_telegram: Any, telegram_session: Any) -> AsyncIterator[TelegramClient]:
    path = telegram_session(ACCOUNT_A, dc_id=1)
    # Telethon caches help.getConfig (the DCs' addresses) on the class, process-wide: a
    # cluster of an earlier test would leave its DC 2 port there.
    TelegramClient._config = None
    tg = TelegramClient(str(path), FAKEDC_API_ID, FAKEDC_API_HASH, receive_updates=False)
    tg.flood_sleep_threshold = 0
    # What download_media takes of a TeleClient: the account's media connections.
    tg.media_connections = MediaConnections(tg)
    await tg.connect()
    try:
        yield tg
    finally:
        await tg.media_connections.close()
        await tg.disconnect()


def emulated(media: Media) -> bytes:
    if media.kind == "photo":
        key = render.photo_file_key(media.file_id, media.thumb_size)
    else:
        key = render.document_file_key(media.file_id)
    return files.read(key, media.size)


EXPECTED_TYPES = {
    MEDIA_IDS["photo_dc1"]: "photo",
    MEDIA_IDS["photo_dc2"]: "photo",
    **dict.fromkeys(MEDIA_IDS["album"], "photo"),
    MEDIA_IDS["video"]: "video",
    MEDIA_IDS["audio"]: "audio",
    MEDIA_IDS["voice"]: "voice",
    MEDIA_IDS["file"]: "document",
    MEDIA_IDS["sticker"]: "sticker",
    MEDIA_IDS["animation"]: "animation",
    MEDIA_IDS["round"]: "video_note",
    MEDIA_IDS["webpage"]: "webpage_photo",
    MEDIA_IDS["file_dc2"]: "document",
}


async def test_media_channel_parses_and_every_file_downloads(
    client: TelegramClient, tmp_path: Path
) -> None:
    msgs = await client.get_messages("tgc_media", limit=100)
    out, media = parse_messages(msgs, "acc-a")
    orjson.dumps(out)
    by_id = {m["id"]: m for m in out if m}
    assert all(tuple(m)[: len(MESSAGE_FIELDS)] == MESSAGE_FIELDS for m in by_id.values())
    assert {i: by_id[i]["media"]["type"] for i in EXPECTED_TYPES} == EXPECTED_TYPES
    assert by_id[1]["action"]["type"] == "channel_create" and by_id[1]["media"] is None
    assert {by_id[i]["grouped_id"] for i in MEDIA_IDS["album"]} == {ALBUM_GROUP}
    assert by_id[MEDIA_IDS["webpage"]]["webpage"]["url"] == "https://example.com/page"
    assert {m.dc_id for m in media} == {1, 2}
    video = by_id[MEDIA_IDS["video"]]["media"]
    assert (video["width"], video["height"], video["file_name"]) == (1920, 1080, "clip.mp4")
    for item in media:
        path = tmp_path / item.key
        await download_media(client, item, path, parts_in_flight=4, part_size=256 * 1024)
        assert path.read_bytes() == emulated(item), f"{item.type} {item.file_id} differs"


async def test_channel_photo_from_full_info_downloads(
    client: TelegramClient, tmp_path: Path
) -> None:
    entity = await client.get_entity("tgc_media")
    full = await client(functions.channels.GetFullChannelRequest(entity))
    peer, media = parse_peer(entity, full, "acc-a")
    orjson.dumps(peer)
    assert peer["type"] == "channel" and peer["username"] == "tgc_media"
    assert len(media) == 1 and peer["photo"] == media[0].descriptor()
    await download_media(client, media[0], tmp_path / "avatar")
    assert (tmp_path / "avatar").read_bytes() == emulated(media[0])
