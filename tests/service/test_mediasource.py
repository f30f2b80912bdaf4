"""service/mediasource.py: a file found again through Telegram: its reference refreshed from
the same message (or the peer's full info), another account's copy after a ban."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from telethon.tl import types

from common.errors import AccountUnusable
from common.utils import PeerRef
from model.downloader import download_media
from model.media import Media
from model.pool import TeleClients
from service.mediaprocessor import MediaProcessor
from service.mediasource import rebind_through
from service.parser import parse_messages
from tests.fakedc import files, render
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import DEFAULT_DATE, World
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.wait import wait_for
from tests.service.media_rig import (
    PART,
    FakePool,
    Rig,
    make_media,
    query_one,
    running_rig,
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as r:
        yield r


# A basic group whose id starts with 100 (issue 10): a Media remembers its peer as a marked
# id, and the one reading (PeerRef.from_marked_id) makes -100123 basic group 100123; a second
# parser read it as channel 123, so the group's files could neither have their reference
# refreshed nor be re-bound to another account.

GROUP = 100123
GROUP_PHOTO = 7001
ANN, BEN = 1001, 1002  # two accounts, both members of the group
GET_FILE = "upload.getFile"


async def test_file_reference_is_refreshed_from_the_same_message(rig: Rig) -> None:
    m = make_media(78, 1000, msg_id=5, peer_id=-1001234567890)
    fresh = types.Document(78, m.access_hash, b"ref-new", None, "application/pdf", 1000, 2, [])
    rig.clients["acc1"].messages[5] = types.Message(
        5, types.PeerChannel(1234567890), media=types.MessageMediaDocument(document=fresh)
    )
    rig.downloads.refresh_first = True
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert rig.downloads.refreshed == [b"ref-new"]
    ref, ids = rig.clients["acc1"].asked[0]
    assert (ref.id, ref.kind, ids) == (1234567890, "channel", [5])
    assert (
        Media.from_json(query_one(rig.db, "SELECT media FROM media")).file_reference == b"ref-new"
    )


async def test_a_peer_photo_reference_is_refreshed_from_the_full_peer(rig: Rig) -> None:
    photo = Media(
        type="photo", kind="photo", file_id=501, access_hash=1, file_reference=b"ref-old",
        dc_id=2, size=3000, mime_type="image/jpeg", thumb_size="c", account="acc1",
        peer_id=-1001234567890, msg_id=None,
    )  # fmt: skip
    fresh = types.Photo(501, 1, b"ref-new", None, [], 2)
    rig.clients["acc1"].full = types.ChannelFull(
        id=1234567890, about="", read_inbox_max_id=0, read_outbox_max_id=0, unread_count=0,
        chat_photo=fresh, notify_settings=types.PeerNotifySettings(), exported_invite=None,
        bot_info=[], pts=1,
    )  # fmt: skip
    rig.downloads.refresh_first = True
    p = rig.processor()
    await p.start()
    p.submit(photo)
    await wait_for(lambda: p.get(photo.key)["state"] == "stored")  # type: ignore[index]
    assert rig.downloads.refreshed == [b"ref-new"]
    assert rig.clients["acc1"].asked[0][0].kind == "channel"


async def test_a_message_gone_fails_the_refresh(rig: Rig) -> None:
    m = make_media(79, 1000)
    rig.downloads.refresh_first = True
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert "no longer" in p.get(m.key)["error"]  # type: ignore[index]


async def test_rebind_through_the_pool_takes_another_accounts_copy(rig: Rig) -> None:
    m = make_media(97, PART * 2, account="acc1", msg_id=5)
    doc = types.Document(97, 555, b"acc2-ref", None, "application/pdf", PART * 2, 2, [])
    rig.clients["acc2"].messages[5] = types.Message(
        5, types.PeerChannel(1234567890), media=types.MessageMediaDocument(document=doc)
    )
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")]
    pool = FakePool([rig.clients["acc1"], rig.clients["acc2"]])
    p = rig.processor(rebind=rebind_through(pool))
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert [c[1] for c in rig.downloads.calls] == ["acc1", "acc2"]
    assert rig.clients["acc1"].asked == []  # the banned account is not asked
    stored = Media.from_json(query_one(rig.db, "SELECT media FROM media"))
    assert (stored.account, stored.access_hash, stored.file_reference) == ("acc2", 555, b"acc2-ref")


async def test_rebind_through_the_pool_fails_when_no_one_has_the_file(rig: Rig) -> None:
    m = make_media(98, 1000, account="acc1", msg_id=5)
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")]
    p = rig.processor(rebind=rebind_through(FakePool([rig.clients["acc1"], rig.clients["acc2"]])))
    await p.start()
    p.submit(m)  # acc2's message 5 does not exist
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert "USER_DEACTIVATED_BAN" in p.get(m.key)["error"]  # type: ignore[index]


async def test_a_basic_group_id_starting_with_100_is_read_as_that_group(rig: Rig) -> None:
    # -100123 is basic group 100123 (not channel 123): the marked id a Media keeps.
    m = make_media(88, 1000, msg_id=5, peer_id=-GROUP)
    fresh = types.Document(88, m.access_hash, b"ref-new", None, "application/pdf", 1000, 2, [])
    rig.clients["acc1"].messages[5] = types.Message(
        5, types.PeerChat(GROUP), media=types.MessageMediaDocument(document=fresh)
    )
    rig.downloads.refresh_first = True
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    ref, ids = rig.clients["acc1"].asked[0]
    assert (ref.id, ref.kind, ids) == (GROUP, "chat", [5])


@pytest.fixture
def fakedc_dispatcher() -> Any:
    """A world of two accounts in basic group 100123, and a photo posted there."""
    return TelegramRpc(
        World.from_dict(
            {
                "users": [
                    {"id": ANN, "first_name": "Ann", "phone": "15550001001"},
                    {"id": BEN, "first_name": "Ben", "phone": "15550001002"},
                ],
                "chats": [
                    {
                        "id": GROUP,
                        "kind": "group",
                        "title": "Hundred",
                        "creator_id": ANN,
                        "members": {str(ANN): DEFAULT_DATE, str(BEN): DEFAULT_DATE},
                    }
                ],
                "photos": [{"id": GROUP_PHOTO, "dc_id": 2}],
                "messages": [
                    {"chat": GROUP, "from_id": ANN, "text": "look", "media": {"photo": GROUP_PHOTO}}
                ],
            }
        )
    )


@pytest.fixture
async def group_pool(
    fake_telegram: Any, telegram_session: Callable[..., Path]
) -> AsyncIterator[TeleClients]:
    """acc-a and acc-b, each with the group in its entity cache (as after listing dialogs)."""
    telegram_session(ANN, name="acc-a")
    sessions = telegram_session(BEN, name="acc-b").parent
    pool = TeleClients.from_sessions_dir(
        sessions, FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0, request_timeout=10
    )
    await pool.start()
    try:
        for tele in pool:
            await tele.client.get_dialogs()
        yield pool
    finally:
        await pool.stop()


async def group_photo(pool: TeleClients) -> Media:
    """The photo as acc-a fetched it from the group's history."""
    tele = pool.get("acc-a")
    _, messages = await tele.get_history(PeerRef.from_marked_id(-GROUP), limit=10)
    _, media = parse_messages(messages, tele.name)
    (photo,) = media
    assert (photo.peer_id, photo.account) == (-GROUP, "acc-a")  # the marked id: -100123
    return photo


def emulated(media: Media) -> bytes:
    return files.read(render.photo_file_key(media.file_id, media.thumb_size), media.size)


def group_processor(rig: Rig, pool: TeleClients, **options: Any) -> MediaProcessor:
    return rig.processor(clients=pool, download=download_media, **options)


async def test_a_basic_group_file_reference_is_refreshed_through_the_group(
    rig: Rig, group_pool: TeleClients, fake_telegram: Any
) -> None:
    photo = await group_photo(group_pool)
    stale = photo.file_reference
    rpc = fake_telegram.dispatcher
    rpc.expire_file_references()  # the reference acc-a has is stale now
    rpc.reset_counts()
    p = group_processor(rig, group_pool)
    await p.start()
    p.submit(photo)
    await wait_for(lambda: p.get(photo.key)["state"] in ("stored", "failed"), what="an end")
    assert p.get(photo.key)["state"] == "stored", p.get(photo.key)  # type: ignore[index]
    # acc-a met FILE_REFERENCE_EXPIRED and fetched the message again from basic group 100123.
    assert rpc.count("messages.getMessages", ANN) >= 1
    assert rpc.count("channels.getMessages") == 0
    stored = Media.from_json(query_one(rig.db, "SELECT media FROM media"))
    assert stored.account == "acc-a" and stored.file_reference != stale
    assert (rig.local / photo.key[:2] / f"{photo.key}.jpg").read_bytes() == emulated(photo)
    assert [r["peer_id"] for r in rig.stored] == [-GROUP]


async def test_a_basic_group_file_is_rebound_to_another_member_after_a_ban(
    rig: Rig, group_pool: TeleClients, fake_telegram: Any
) -> None:
    photo = await group_photo(group_pool)
    rpc = fake_telegram.dispatcher
    rpc.expire_file_references()
    rpc.deactivated_ban(ANN)
    rpc.reset_counts()
    p = group_processor(rig, group_pool, rebind=rebind_through(group_pool))
    await p.start()
    p.submit(photo)
    await wait_for(lambda: p.get(photo.key)["state"] in ("stored", "failed"), what="an end")
    assert p.get(photo.key)["state"] == "stored", p.get(photo.key)  # type: ignore[index]
    # acc-b, the other member, fetched the message from basic group 100123 and downloaded
    # its own copy of the file.
    assert rpc.count("messages.getMessages", BEN) >= 1
    assert rpc.count(GET_FILE, BEN) >= 1
    assert [r["account"] for r in rig.stored] == ["acc-b"]
    assert (rig.local / photo.key[:2] / f"{photo.key}.jpg").read_bytes() == emulated(photo)
    assert str(group_pool.get("acc-a").state) == "banned"
