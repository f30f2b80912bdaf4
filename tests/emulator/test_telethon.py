"""A stock Telethon client against the whole emulator: the protocol layer (H1's cluster)
with the demo world's dispatcher. Asserts what Telethon returns, raises and fires."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient, errors, events
from telethon.tl import functions as F
from telethon.tl import types as T

from tests.fakedc import files, render
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.demo_world import (
    ACCOUNT_2FA,
    ACCOUNT_A,
    ACCOUNT_B,
    ACCOUNT_C,
    ALBUM_IDS,
    CHAT,
    MEDIA_IDS,
    NEWS,
    PASSWORD,
    PHOTO_DC1,
    PHOTO_DC2,
    VIDEO_20MB,
    VIDEO_SIZE,
    demo_world,
)
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import DEFAULT_DATE, World
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.wait import wait_for

ClientFactory = Callable[..., TelegramClient]


@pytest.fixture
def world() -> World:
    return demo_world()


@pytest.fixture
def fakedc_dispatcher(world: World) -> TelegramRpc:
    """Overrides the fixture of tests/fixtures/fakedc.py: the demo world answers."""
    return TelegramRpc(world)


@pytest.fixture
def rpc(fake_telegram: FakeTelegram, fakedc_dispatcher: TelegramRpc) -> TelegramRpc:
    logging.getLogger("telethon").setLevel(logging.WARNING)
    fakedc_dispatcher.set_pusher(fake_telegram.push)
    return fakedc_dispatcher


@pytest.fixture
def connect(
    fake_telegram: FakeTelegram, rpc: TelegramRpc, tmp_path: Path, clients: list[TelegramClient]
) -> Callable[..., Any]:
    """`await connect(user_id)`: a connected client on a fresh session file of that account
    (flood_sleep_threshold=0 so FLOOD_WAIT surfaces as FloodWaitError)."""

    # Telethon caches help.getConfig at class level (TelegramBaseClient._get_dc) for the
    # whole process: another test's cluster would leave its DC ports there.
    TelegramClient._config = None

    async def make(user_id: int | None, dc_id: int = 1) -> TelegramClient:
        path = fake_telegram.make_session(tmp_path / f"s{len(clients)}-{user_id}", user_id, dc_id=dc_id)
        client = TelegramClient(
            str(path), FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0
        )
        clients.append(client)
        await client.connect()
        return client

    return make


def collect(into: list[Any], pick: Callable[[Any], Any] = lambda e: e) -> Callable[[Any], Any]:
    """An event handler (Telethon awaits handlers) appending pick(event) to `into`."""

    async def handler(event: Any) -> None:
        into.append(pick(event))

    return handler


# --- entities and reading -------------------------------------------------------------


async def test_get_me_and_entities_by_username(connect: Any, rpc: TelegramRpc) -> None:
    client = await connect(ACCOUNT_A)
    me = await client.get_me()
    assert me.id == ACCOUNT_A and me.phone == "15550001001"
    news = await client.get_entity("tgc_news")
    assert isinstance(news, T.Channel) and news.id == NEWS and news.broadcast and not news.left
    alice = await client.get_entity("@alice_w")
    assert isinstance(alice, T.User) and alice.first_name == "Alice"
    assert rpc.count("contacts.resolveUsername", user_id=ACCOUNT_A) == 2
    # Cached now: no new resolution.
    await client.get_input_entity("tgc_news")
    assert rpc.count("contacts.resolveUsername") == 2
    with pytest.raises(ValueError):
        await client.get_entity("nobody_here")
    with pytest.raises(errors.UsernameInvalidError):
        await client(F.contacts.ResolveUsernameRequest("abc"))
    full = await client(F.users.GetFullUserRequest(alice))
    assert full.full_user.about == "down the rabbit hole"


async def test_get_messages_and_iter_messages_with_offsets(connect: Any) -> None:
    client = await connect(ACCOUNT_B)
    news = await client.get_entity("tgc_news")
    latest = await client.get_messages(news, limit=5)
    assert [m.id for m in latest] == [150, 149, 148, 147, 146]
    assert latest.total == 150
    older = [m.id async for m in client.iter_messages(news, offset_id=100, limit=150)]
    assert older == list(range(99, 0, -1))  # two requests of 100, then the end
    ranged = [m.id async for m in client.iter_messages(news, min_id=10, max_id=20)]
    assert ranged == list(range(19, 10, -1))
    oldest = [m.id async for m in client.iter_messages(news, reverse=True, limit=5)]
    assert oldest == [1, 2, 3, 4, 5]
    some = await client.get_messages(news, ids=[5, 9999, 140])
    assert [m.id if m else None for m in some] == [5, None, 140]
    bold = await client.get_messages(news, ids=100)
    assert bold.text.startswith("**Bold**") and bold.fwd_from.channel_post == 2
    assert isinstance(bold.action, type(None)) and bold.views == 200


async def test_every_kind_of_media_reaches_telethon(connect: Any) -> None:
    client = await connect(ACCOUNT_A)
    media = await client.get_entity("tgc_media")
    msgs = {m.id: m async for m in client.iter_messages(media)}
    assert msgs[1].action is not None
    assert msgs[MEDIA_IDS["photo_dc1"]].photo is not None
    assert msgs[MEDIA_IDS["video"]].video is not None
    assert msgs[MEDIA_IDS["audio"]].audio is not None
    assert msgs[MEDIA_IDS["voice"]].voice is not None
    assert msgs[MEDIA_IDS["sticker"]].sticker is not None
    assert msgs[MEDIA_IDS["animation"]].gif is not None
    assert msgs[MEDIA_IDS["round"]].video_note is not None
    assert msgs[MEDIA_IDS["file"]].file.name == "report.pdf"
    assert msgs[MEDIA_IDS["webpage"]].web_preview.photo is not None
    assert len({msgs[i].grouped_id for i in ALBUM_IDS}) == 1


async def test_participants_search_and_dialogs(connect: Any) -> None:
    client = await connect(ACCOUNT_A)
    chat = await client.get_entity("tgc_chat")
    everyone = await client.get_participants(chat)
    assert len(everyone) == everyone.total == 264  # two calls: 200 + 64
    admins = await client.get_participants(chat, filter=T.ChannelParticipantsAdmins)
    assert len(admins) == 2
    found = await client.get_participants(chat, search="member_00")
    assert len(found) == 10
    with pytest.raises(errors.ChatAdminRequiredError):
        await client.get_participants(await client.get_entity("tgc_news"))
    result = await client(F.contacts.SearchRequest("tgc_", 10))
    assert {p.channel_id for p in result.my_results} == {NEWS, CHAT, 2002}
    dialogs = await client.get_dialogs()
    assert {d.id for d in dialogs} >= {-1000000000000 - NEWS, -1000000000000 - CHAT}


async def test_join_and_leave(connect: Any, world: World) -> None:
    client = await connect(ACCOUNT_C)
    media = await client.get_entity("tgc_media")
    assert media.left
    await client(F.channels.JoinChannelRequest(media))
    assert ACCOUNT_C in world.chats[2002].members
    with pytest.raises(errors.UserAlreadyParticipantError):
        await client(F.channels.JoinChannelRequest(media))
    await client(F.channels.LeaveChannelRequest(media))
    assert ACCOUNT_C not in world.chats[2002].members
    with pytest.raises(errors.InviteRequestSentError):
        await client(F.channels.JoinChannelRequest(await client.get_entity("tgc_ask")))
    world.channel_limit = 1
    with pytest.raises(errors.ChannelsTooMuchError):
        await client(F.channels.JoinChannelRequest(media))


# --- files ----------------------------------------------------------------------------


async def test_download_a_20mb_document_byte_exact(connect: Any) -> None:
    client = await connect(ACCOUNT_A)
    media = await client.get_entity("tgc_media")
    msg = await client.get_messages(media, ids=MEDIA_IDS["video"])
    start = time.monotonic()
    data = await client.download_media(msg, file=bytes)
    elapsed = time.monotonic() - start
    assert len(data) == VIDEO_SIZE
    expected = files.digest(render.document_file_key(VIDEO_20MB), VIDEO_SIZE)
    assert hashlib.sha256(data).hexdigest() == expected
    logging.getLogger(__name__).info("20 MB download: %.1f MB/s", VIDEO_SIZE / elapsed / 1e6)


async def test_download_photos_on_both_dcs(connect: Any, rpc: TelegramRpc, world: World) -> None:
    client = await connect(ACCOUNT_A)
    media = await client.get_entity("tgc_media")
    for msg_id, photo_id in ((MEDIA_IDS["photo_dc1"], PHOTO_DC1), (MEDIA_IDS["photo_dc2"], PHOTO_DC2)):
        msg = await client.get_messages(media, ids=msg_id)
        data = await client.download_media(msg, file=bytes)
        spec = world.photos[photo_id].largest()
        assert data == files.read(render.photo_file_key(photo_id, spec.type), spec.size)
    # The DC 2 photo went through exportAuthorization on DC 1 and importAuthorization on DC 2.
    assert rpc.count("auth.exportAuthorization") == 1
    assert rpc.count("auth.importAuthorization") == 1


async def test_expired_file_reference_is_refetched_by_telethon(
    connect: Any, rpc: TelegramRpc
) -> None:
    client = await connect(ACCOUNT_A)
    media = await client.get_entity("tgc_media")
    msg = await client.get_messages(media, ids=MEDIA_IDS["file"])
    rpc.expire_file_references()
    rpc.reset_counts()
    # Telethon answers FILE_REFERENCE_EXPIRED by fetching the message again (same account)
    # and retrying with the new reference.
    data = await client.download_media(msg, file=bytes)
    assert data == files.read(render.document_file_key(msg.document.id), 250_000)
    assert rpc.count("channels.getMessages") == 1
    assert rpc.count("upload.getFile") == 3  # expired, then 2 parts of 128 KB


async def test_a_connection_dropped_mid_file_is_resumed_by_telethon(
    connect: Any, rpc: TelegramRpc
) -> None:
    client = await connect(ACCOUNT_A)
    media = await client.get_entity("tgc_media")
    msg = await client.get_messages(media, ids=MEDIA_IDS["audio"])
    rpc.drop_connection_in_file(msg.document.id, nth=5)
    rpc.reset_counts()
    data = await client.download_media(msg, file=bytes)
    size = msg.document.size
    assert data == files.read(render.document_file_key(msg.document.id), size)
    parts = -(-size // (128 * 1024))
    assert rpc.count("upload.getFile") == parts + 1  # the dropped one was asked again


# --- errors ---------------------------------------------------------------------------


async def test_fault_knobs_surface_as_telethons_errors(connect: Any, rpc: TelegramRpc) -> None:
    client = await connect(ACCOUNT_B)
    # ≤ 3 s so Telethon's own memory of the wait doesn't block the next call.
    rpc.flood_wait("contacts.resolveUsername", 2)
    with pytest.raises(errors.FloodWaitError) as info:
        await client.get_entity("tgc_chat")
    assert info.value.seconds == 2
    rpc.username_not_occupied("tgc_chat")
    with pytest.raises(ValueError):
        await client.get_entity("tgc_chat")
    news = await client.get_entity("tgc_news")
    rpc.channel_private(NEWS)
    with pytest.raises(errors.ChannelPrivateError):
        await client.get_messages(news, limit=1)
    rpc.clear_faults()
    rpc.deactivated_ban(ACCOUNT_B)
    with pytest.raises(errors.UserDeactivatedBanError):
        await client.get_messages(news, limit=1)
    rpc.clear_faults()
    rpc.auth_key_unregistered(ACCOUNT_B)
    with pytest.raises(errors.AuthKeyUnregisteredError):
        await client.get_messages(news, limit=1)


async def _fastest(call: Callable[[], Any], runs: int = 3) -> float:
    """The shortest of `runs` timings of `await call()` (the least disturbed by a busy CPU)."""
    best = float("inf")
    for _ in range(runs):
        start = time.monotonic()
        await call()
        best = min(best, time.monotonic() - start)
    return best


async def test_latency_knob_delays_answers(connect: Any, rpc: TelegramRpc) -> None:
    """Compared with the same calls without the knob, so a slow machine can't pass it
    without the delay; and only the method named is delayed."""
    client = await connect(ACCOUNT_A)
    news = await client.get_entity("tgc_news")

    def history() -> Any:
        return client.get_messages(news, limit=1)

    plain = await _fastest(history)
    me_plain = await _fastest(client.get_me)
    rpc.set_latency({"messages.getHistory": 0.3})
    slowed = await _fastest(history)
    me_slowed = await _fastest(client.get_me)
    assert slowed >= 0.3
    assert slowed - plain >= 0.25, (plain, slowed)
    assert me_slowed - me_plain < 0.15, (me_plain, me_slowed)  # users.getUsers: no delay
    rpc.set_latency({})
    assert await _fastest(history) - plain < 0.15  # and gone once unset


async def test_slow_knob_delays_only_the_next_calls(connect: Any, rpc: TelegramRpc) -> None:
    client = await connect(ACCOUNT_A)
    news = await client.get_entity("tgc_news")

    def history() -> Any:
        return client.get_messages(news, limit=1)

    plain = await _fastest(history)
    rpc.slow("messages.getHistory", 0.3, times=1)
    start = time.monotonic()
    await history()
    once = time.monotonic() - start
    after = await _fastest(history)
    assert once >= 0.3 and once - plain >= 0.25, (plain, once)
    assert after - plain < 0.15, (plain, after)


async def test_flood_wait_every_nth_call_through_telethon(
    connect: Any, rpc: TelegramRpc
) -> None:
    a = await connect(ACCOUNT_A)
    b = await connect(ACCOUNT_B)
    req = F.contacts.ResolveUsernameRequest("tgc_news")
    # ≤ 3 s: Telethon then keeps no memory of the wait that would block the next call.
    rpc.flood_wait("contacts.resolveUsername", 2, every=3, times=None, user_id=ACCOUNT_A)
    rpc.reset_counts()
    outcomes = []
    for _ in range(6):
        try:
            await a(req)
            outcomes.append("ok")
        except errors.FloodWaitError as e:
            outcomes.append(f"wait {e.seconds}")
        await b(req)  # another account: never
    assert outcomes == ["ok", "ok", "wait 2"] * 2
    assert rpc.count("contacts.resolveUsername", user_id=ACCOUNT_A) == 6
    assert rpc.count("contacts.resolveUsername", user_id=ACCOUNT_B) == 6
    # A client whose flood_sleep_threshold covers the wait sleeps it and retries on its own.
    rpc.clear_faults()
    rpc.flood_wait("contacts.resolveUsername", 1, every=2, times=None)
    a.flood_sleep_threshold = 10
    rpc.reset_counts()
    start = time.monotonic()
    for _ in range(2):
        resolved = await a(req)
        assert resolved.peer.channel_id == NEWS
    assert time.monotonic() - start >= 1.0  # the 2nd call waited, then its retry passed
    assert rpc.count("contacts.resolveUsername") == 3


# --- login ----------------------------------------------------------------------------


async def test_sign_in_with_code_and_with_2fa(connect: Any, rpc: TelegramRpc) -> None:
    client = await connect(None)
    assert not await client.is_user_authorized()
    await client.send_code_request("+15550001003")
    with pytest.raises(errors.PhoneCodeInvalidError):
        await client.sign_in("+15550001003", "99999")
    me = await client.sign_in("+15550001003", rpc.login_code)
    assert me.id == ACCOUNT_C and await client.is_user_authorized()

    other = await connect(None)
    await other.send_code_request("+15550001004")
    with pytest.raises(errors.SessionPasswordNeededError):
        await other.sign_in("+15550001004", rpc.login_code)
    with pytest.raises(errors.PasswordHashInvalidError):
        await other.sign_in(password="nope")
    me = await other.sign_in(password=PASSWORD)
    assert me.id == ACCOUNT_2FA


# --- updates --------------------------------------------------------------------------


async def test_pushed_updates_fire_telethons_events(connect: Any, rpc: TelegramRpc) -> None:
    client = await connect(ACCOUNT_B)
    got: dict[str, list[Any]] = {"new": [], "edit": [], "del": [], "raw": []}
    client.add_event_handler(collect(got["new"]), events.NewMessage(chats=[NEWS]))
    client.add_event_handler(collect(got["edit"]), events.MessageEdited(chats=[NEWS]))
    client.add_event_handler(collect(got["del"]), events.MessageDeleted())
    client.add_event_handler(collect(got["raw"]), events.Raw(types=T.UpdateChannel))
    await client.get_entity("tgc_news")  # a request after connect: the key gets updates
    msg = await rpc.post_message(NEWS, "hot news")
    await wait_for(lambda: len(got["new"]) == 1, within=10.0, what="the NewMessage event")
    assert got["new"][0].message.id == msg.id and got["new"][0].raw_text == "hot news"
    await rpc.edit_message(NEWS, msg.id, "hot news (edited)")
    await wait_for(lambda: len(got["edit"]) == 1, within=10.0, what="the MessageEdited event")
    assert got["edit"][0].raw_text == "hot news (edited)"
    await rpc.delete_messages(NEWS, [msg.id, 149])
    await wait_for(lambda: len(got["del"]) == 1, within=10.0, what="the MessageDeleted event")
    assert sorted(got["del"][0].deleted_ids) == [149, msg.id]
    await rpc.kick(ACCOUNT_B, NEWS)
    await wait_for(lambda: len(got["raw"]) == 1, within=10.0, what="the UpdateChannel")
    assert got["raw"][0].channel_id == NEWS


async def test_a_pts_gap_is_filled_by_get_channel_difference(
    connect: Any, rpc: TelegramRpc
) -> None:
    client = await connect(ACCOUNT_C)
    texts: list[str] = []
    client.add_event_handler(collect(texts, lambda e: e.raw_text), events.NewMessage(chats=[NEWS]))
    await client.get_entity("tgc_news")
    await rpc.post_message(NEWS, "one")
    await wait_for(lambda: texts == ["one"], within=10.0, what="the first post")
    rpc.drop_next_posts(NEWS, 2)
    await rpc.post_message(NEWS, "two (lost)")
    await rpc.post_message(NEWS, "three (lost)")
    await rpc.post_message(NEWS, "four")
    await wait_for(lambda: len(texts) == 4, within=10.0, what="the lost posts filled in")
    assert sorted(texts) == sorted(["one", "two (lost)", "three (lost)", "four"])
    assert rpc.count("updates.getChannelDifference", user_id=ACCOUNT_C) >= 1


async def test_invite_links_and_basic_groups(connect: Any, world: World) -> None:
    from tests.fakedc.demo_world import INVITE_PRIVATE_GROUP, PRIVATE_GROUP, SMALL

    client = await connect(ACCOUNT_C)
    preview = await client(F.messages.CheckChatInviteRequest(INVITE_PRIVATE_GROUP))
    assert isinstance(preview, T.ChatInvite) and preview.megagroup
    updates = await client(F.messages.ImportChatInviteRequest(INVITE_PRIVATE_GROUP))
    group = updates.chats[0]
    assert group.id == PRIVATE_GROUP and not group.left
    assert [m.message async for m in client.iter_messages(group)] == ["psst"]
    a = await connect(ACCOUNT_A)
    await a.get_dialogs()  # the basic group comes into A's entity cache
    small = await a.get_entity(-SMALL)
    assert small.title == "Small Group"
    members = await a.get_participants(small)
    assert {u.id for u in members} == set(world.chats[SMALL].members)
    await a(F.messages.DeleteChatUserRequest(SMALL, T.InputUserSelf()))
    assert ACCOUNT_A not in world.chats[SMALL].members


async def test_iter_messages_search_and_filters(connect: Any) -> None:
    client = await connect(ACCOUNT_A)
    news = await client.get_entity("tgc_news")
    found = [m.id async for m in client.iter_messages(news, search="bold news", limit=100)]
    assert found == list(range(150, 0, -10))[:15]
    media = await client.get_entity("tgc_media")
    photos = [m.id async for m in client.iter_messages(media, filter=T.InputMessagesFilterPhotos)]
    assert photos == [6, 5, 4, 3, 2]


async def test_iter_messages_by_date_and_sender(connect: Any) -> None:
    """Stock Telethon's date and sender paging: offset_date (getHistory) and from_user
    with a date bound (messages.search's from_id and max_date), across pages."""
    client = await connect(ACCOUNT_A)
    news = await client.get_entity("tgc_news")
    at_100 = datetime.fromtimestamp(DEFAULT_DATE + 60 * 100, UTC)
    older = [m.id async for m in client.iter_messages(news, offset_date=at_100, limit=30)]
    assert older == list(range(99, 69, -1))
    newer = [m.id async for m in client.iter_messages(news, offset_date=at_100, reverse=True)]
    assert newer == list(range(100, 151))
    chat = await client.get_entity("tgc_chat")
    alice = await client.get_entity("alice_w")
    said = [m.id async for m in client.iter_messages(chat, from_user=alice)]
    assert said == [40]
    bold = [m.id async for m in client.iter_messages(news, search="bold", offset_date=at_100)]
    assert bold == list(range(90, 0, -10))


async def test_log_out_and_more_account_fates(connect: Any, rpc: TelegramRpc) -> None:
    client = await connect(ACCOUNT_C)
    assert await client.log_out()
    other = await connect(ACCOUNT_B)
    rpc.session_revoked(ACCOUNT_B)
    with pytest.raises(errors.SessionRevokedError):
        await other.get_entity("tgc_news")
    rpc.clear_faults()
    rpc.auth_key_duplicated(ACCOUNT_B)
    with pytest.raises(errors.AuthKeyDuplicatedError):
        await other.get_entity("tgc_chat")


async def test_catch_up_after_being_offline(
    fake_telegram: FakeTelegram, rpc: TelegramRpc, tmp_path: Path, clients: list[TelegramClient]
) -> None:
    path = str(fake_telegram.make_session(tmp_path / "offline", ACCOUNT_A))
    first = TelegramClient(path, FAKEDC_API_ID, FAKEDC_API_HASH)
    seen: list[str] = []
    first.add_event_handler(collect(seen, lambda e: e.raw_text), events.NewMessage(chats=[NEWS]))
    try:
        await first.connect()
        await first.get_entity("tgc_news")
        await rpc.post_message(NEWS, "online")
        # Once seen, the client tracks NEWS's pts.
        await wait_for(lambda: seen == ["online"], within=10.0, what="the online post")
    finally:
        await first.disconnect()  # saves the update state in the session file
    await rpc.post_message(NEWS, "missed 1")
    await rpc.post_message(NEWS, "missed 2")
    again = TelegramClient(path, FAKEDC_API_ID, FAKEDC_API_HASH, catch_up=True)
    clients.append(again)
    caught: list[str] = []
    again.add_event_handler(collect(caught, lambda e: e.raw_text), events.NewMessage(chats=[NEWS]))
    await again.connect()
    await wait_for(lambda: len(caught) == 2, within=10.0, what="the missed posts caught up")
    assert caught == ["missed 1", "missed 2"]
    assert rpc.count("updates.getDifference", user_id=ACCOUNT_A) >= 1
    assert rpc.count("updates.getChannelDifference", user_id=ACCOUNT_A) >= 1


async def test_a_gap_in_a_basic_group_is_filled_by_get_difference(
    connect: Any, rpc: TelegramRpc
) -> None:
    from tests.fakedc.demo_world import SMALL, USER_ALICE

    client = await connect(ACCOUNT_B)
    texts: list[str] = []
    client.add_event_handler(collect(texts, lambda e: e.raw_text), events.NewMessage(chats=[-SMALL]))
    await client.get_dialogs()
    await rpc.post_message(SMALL, "first", from_id=USER_ALICE)
    await wait_for(lambda: texts == ["first"], within=10.0, what="the first post")
    rpc.drop_next_posts(SMALL, 1)
    await rpc.post_message(SMALL, "lost", from_id=USER_ALICE)
    await rpc.post_message(SMALL, "last", from_id=USER_ALICE)
    await wait_for(lambda: len(texts) == 3, within=10.0, what="the lost post filled in")
    assert sorted(texts) == ["first", "last", "lost"]
    assert rpc.count("updates.getDifference", user_id=ACCOUNT_B) >= 1


async def test_download_profile_photos(connect: Any, world: World) -> None:
    from tests.fakedc.demo_world import AVATAR

    client = await connect(ACCOUNT_A)
    alice = await client.get_entity("alice_w")
    data = await client.download_profile_photo(alice, file=bytes)
    big = world.photos[AVATAR].largest()
    assert data == files.read(render.photo_file_key(AVATAR, big.type), big.size)
    media = await client.get_entity("tgc_media")
    small = await client.download_profile_photo(media, file=bytes, download_big=False)
    smallest = min(world.photos[PHOTO_DC1].sizes, key=lambda s: s.size)
    assert small == files.read(render.photo_file_key(PHOTO_DC1, smallest.type), smallest.size)
