"""The emulator's answers, called directly with TL request objects (no network).

Every answer goes through a TL round trip (serialised and parsed back with Telethon's own
reader), so an answer the protocol layer could not send fails here first.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from telethon import password as tpassword
from telethon.extensions import BinaryReader
from telethon.tl import functions as F
from telethon.tl import types as T

from tests.fakedc import files, render
from tests.fakedc.api import CallContext, DcOption, DropConnection, RpcError
from tests.fakedc.demo_world import (
    ACCOUNT_2FA,
    ACCOUNT_A,
    ACCOUNT_B,
    ACCOUNT_C,
    ALBUM_IDS,
    AVATAR,
    BOT,
    CHAT,
    MEDIA,
    MEDIA_IDS,
    NEWS,
    PASSWORD,
    PHOTO_DC1,
    PHOTO_DC2,
    PRIVATE_GROUP,
    REQUESTS,
    SECRET,
    SMALL,
    USER_ALICE,
    USER_BOB,
    VIDEO_20MB,
    VIDEO_SIZE,
    WEB_PHOTO,
    demo_world,
)
from tests.fakedc.rpc import TelegramRpc, check_part, method_name
from tests.fakedc.world import DEFAULT_DATE, World

DC_OPTIONS = [DcOption(1, "127.0.0.1", 10001), DcOption(2, "127.0.0.1", 10002)]
MIB = 1024 * 1024


def roundtrip(obj: Any) -> Any:
    if isinstance(obj, list):
        return [roundtrip(o) for o in obj]
    data = bytes(obj)
    back = BinaryReader(data).tgread_object()
    assert bytes(back) == data
    return back


class Bound:
    """A fake auth key: remembers what bind_user bound it to."""

    def __init__(self, user_id: int | None, dc_id: int = 1, key: int = 1) -> None:
        self.ctx = CallContext(
            dc_id=dc_id,
            auth_key_id=key,
            session_id=key,
            user_id=user_id,
            dc_options=DC_OPTIONS,
            bind_user=self._bind,
        )
        self.bound: list[int] = []

    def _bind(self, user_id: int) -> None:
        self.bound.append(user_id)
        self.ctx.user_id = user_id


@pytest.fixture
def world() -> World:
    return demo_world()


@pytest.fixture
def pushed() -> list[tuple[int, Any]]:
    return []


@pytest.fixture
def rpc(world: World, pushed: list[tuple[int, Any]]) -> TelegramRpc:
    return TelegramRpc(world, pusher=lambda uid, upd: pushed.append((uid, roundtrip(upd))))


async def call(rpc: TelegramRpc, req: Any, user: int | None = ACCOUNT_A, dc: int = 1) -> Any:
    return roundtrip(await rpc(Bound(user, dc).ctx, req))


async def fails(rpc: TelegramRpc, req: Any, user: int | None = ACCOUNT_A, dc: int = 1) -> str:
    with pytest.raises(RpcError) as info:
        await rpc(Bound(user, dc).ctx, req)
    return info.value.message


def ichan(world: World, viewer: int, chat_id: int) -> T.InputChannel:
    return T.InputChannel(chat_id, world.access_hash("channel", viewer, chat_id))


def ipeer(world: World, viewer: int, chat_id: int) -> T.InputPeerChannel:
    return T.InputPeerChannel(chat_id, world.access_hash("channel", viewer, chat_id))


def history(peer: Any, offset_id: int = 0, limit: int = 10, add_offset: int = 0,
            min_id: int = 0, max_id: int = 0, offset_date: Any = None) -> Any:
    return F.messages.GetHistoryRequest(
        peer=peer, offset_id=offset_id, offset_date=offset_date, add_offset=add_offset,
        limit=limit, max_id=max_id, min_id=min_id, hash=0,
    )


# --- help, users, auth gate -----------------------------------------------------------


async def test_get_config_names_every_dc_and_this_one(rpc: TelegramRpc) -> None:
    config = await call(rpc, F.help.GetConfigRequest(), user=None, dc=2)
    assert config.this_dc == 2
    assert [(o.id, o.port) for o in config.dc_options] == [(1, 10001), (2, 10002)]
    nearest = await call(rpc, F.help.GetNearestDcRequest(), user=None, dc=2)
    assert (nearest.this_dc, nearest.nearest_dc) == (2, 2)


async def test_an_unbound_key_gets_auth_key_unregistered(rpc: TelegramRpc) -> None:
    assert await fails(rpc, F.updates.GetStateRequest(), user=None) == "AUTH_KEY_UNREGISTERED"
    assert await fails(rpc, F.users.GetUsersRequest([T.InputUserSelf()]), user=None) == (
        "AUTH_KEY_UNREGISTERED"
    )


async def test_get_users_self_and_others_with_per_account_hashes(
    rpc: TelegramRpc, world: World
) -> None:
    (me,) = await call(rpc, F.users.GetUsersRequest([T.InputUserSelf()]))
    assert me.is_self and me.id == ACCOUNT_A and me.phone == "15550001001"
    resolved = await call(rpc, F.contacts.ResolveUsernameRequest("alice_w"))
    alice = resolved.users[0]
    assert not alice.is_self and alice.phone is None and alice.verified
    (again,) = await call(rpc, F.users.GetUsersRequest([T.InputUser(alice.id, alice.access_hash)]))
    assert again.id == USER_ALICE
    # Account B can't use the hash account A received.
    req = F.users.GetUsersRequest([T.InputUser(alice.id, alice.access_hash)])
    assert await fails(rpc, req, user=ACCOUNT_B) == "USER_ID_INVALID"
    bot = (await call(rpc, F.contacts.ResolveUsernameRequest("helper_bot"))).users[0]
    assert bot.bot and bot.bot_info_version == 1


async def test_get_full_user_has_about_and_profile_photo(rpc: TelegramRpc, world: World) -> None:
    iu = T.InputUser(USER_ALICE, world.access_hash("user", ACCOUNT_A, USER_ALICE))
    full = await call(rpc, F.users.GetFullUserRequest(iu))
    assert full.full_user.about == "down the rabbit hole"
    assert full.full_user.profile_photo.id == AVATAR
    mine = await call(rpc, F.users.GetFullUserRequest(T.InputUserSelf()))
    assert mine.users[0].is_self


# --- contacts -------------------------------------------------------------------------


async def test_resolve_username_left_reflects_the_viewer(rpc: TelegramRpc, world: World) -> None:
    as_a = await call(rpc, F.contacts.ResolveUsernameRequest("TGC_media"))
    as_c = await call(rpc, F.contacts.ResolveUsernameRequest("tgc_media"), user=ACCOUNT_C)
    assert isinstance(as_a.peer, T.PeerChannel) and as_a.peer.channel_id == MEDIA
    assert as_a.chats[0].left is False and as_c.chats[0].left is True
    assert as_a.chats[0].broadcast and as_a.chats[0].username == "tgc_media"
    assert as_a.chats[0].access_hash == world.access_hash("channel", ACCOUNT_A, MEDIA)
    assert as_a.chats[0].access_hash != as_c.chats[0].access_hash
    mega = await call(rpc, F.contacts.ResolveUsernameRequest("tgc_chat"))
    assert mega.chats[0].megagroup and not mega.chats[0].broadcast


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("nobody_here", "USERNAME_NOT_OCCUPIED"),
        ("abc", "USERNAME_INVALID"),
        ("1abcde", "USERNAME_INVALID"),
        ("abcde_", "USERNAME_INVALID"),
        ("bad-name", "USERNAME_INVALID"),
    ],
)
async def test_resolve_username_errors(rpc: TelegramRpc, name: str, error: str) -> None:
    assert await fails(rpc, F.contacts.ResolveUsernameRequest(name)) == error


async def test_contacts_search_splits_my_results_by_membership(rpc: TelegramRpc) -> None:
    found = await call(rpc, F.contacts.SearchRequest("tgc_", 50))
    mine = {p.channel_id for p in found.my_results}
    others = {p.channel_id for p in found.results if isinstance(p, T.PeerChannel)}
    assert mine == {NEWS, MEDIA, CHAT}
    assert others == {REQUESTS}
    assert {c.id for c in found.chats} == mine | others
    secret_a = await call(rpc, F.contacts.SearchRequest("secret", 10))
    secret_c = await call(rpc, F.contacts.SearchRequest("secret", 10), user=ACCOUNT_C)
    assert [p.channel_id for p in secret_a.my_results] == [SECRET]
    assert secret_c.my_results == [] and secret_c.results == []
    users = await call(rpc, F.contacts.SearchRequest("bob_", 10))
    assert [u.id for u in users.users] == [USER_BOB]


async def test_contacts_search_refuses_empty_and_short_queries(rpc: TelegramRpc) -> None:
    assert await fails(rpc, F.contacts.SearchRequest("", 10)) == "SEARCH_QUERY_EMPTY"
    assert await fails(rpc, F.contacts.SearchRequest("   ", 10)) == "SEARCH_QUERY_EMPTY"
    assert await fails(rpc, F.contacts.SearchRequest("tgc", 10)) == "QUERY_TOO_SHORT"
    assert await fails(rpc, F.contacts.SearchRequest("нов", 10)) == "QUERY_TOO_SHORT"
    assert (await call(rpc, F.contacts.SearchRequest("news", 10))).chats  # 4 are enough


# --- channels -------------------------------------------------------------------------


async def test_get_channels_checks_the_viewers_hash(rpc: TelegramRpc, world: World) -> None:
    chats = await call(rpc, F.channels.GetChannelsRequest([ichan(world, ACCOUNT_A, NEWS)]))
    assert chats.chats[0].id == NEWS and chats.chats[0].verified
    req = F.channels.GetChannelsRequest([ichan(world, ACCOUNT_A, NEWS)])
    assert await fails(rpc, req, user=ACCOUNT_B) == "CHANNEL_INVALID"
    assert await fails(rpc, F.channels.GetChannelsRequest([T.InputChannel(999, 1)])) == (
        "CHANNEL_INVALID"
    )


async def test_get_full_channel_and_channel_private(rpc: TelegramRpc, world: World) -> None:
    full = await call(rpc, F.channels.GetFullChannelRequest(ichan(world, ACCOUNT_A, NEWS)))
    assert full.full_chat.pts == world.chats[NEWS].pts
    assert full.full_chat.participants_count == world.chats[NEWS].participants_count
    assert full.full_chat.about == "News of the emulator"
    # A private channel the account is not in (it got the hash from an invite link, say).
    req = F.channels.GetFullChannelRequest(ichan(world, ACCOUNT_C, SECRET))
    assert await fails(rpc, req, user=ACCOUNT_C) == "CHANNEL_PRIVATE"
    secret = await call(rpc, F.channels.GetFullChannelRequest(ichan(world, ACCOUNT_A, SECRET)))
    assert secret.chats[0].username is None


async def test_channel_private_knob_forbids_everyone(rpc: TelegramRpc, world: World) -> None:
    rpc.channel_private(NEWS)
    req = F.channels.GetFullChannelRequest(ichan(world, ACCOUNT_A, NEWS))
    assert await fails(rpc, req) == "CHANNEL_PRIVATE"
    chats = await call(rpc, F.channels.GetChannelsRequest([ichan(world, ACCOUNT_A, NEWS)]))
    assert isinstance(chats.chats[0], T.ChannelForbidden)
    rpc.clear_faults()
    assert (await call(rpc, req)).full_chat.id == NEWS


async def test_participants_of_a_broadcast_need_admin_rights(rpc: TelegramRpc, world: World) -> None:
    req = F.channels.GetParticipantsRequest(
        ichan(world, ACCOUNT_A, NEWS), T.ChannelParticipantsRecent(), 0, 100, 0
    )
    assert await fails(rpc, req) == "CHAT_ADMIN_REQUIRED"
    as_admin = F.channels.GetParticipantsRequest(
        ichan(world, USER_ALICE, NEWS), T.ChannelParticipantsRecent(), 0, 100, 0
    )
    assert (await call(rpc, as_admin, user=USER_ALICE)).count == len(world.chats[NEWS].members)


async def test_megagroup_participants_page_by_200_and_filter(rpc: TelegramRpc, world: World) -> None:
    ic = ichan(world, ACCOUNT_A, CHAT)
    total = len(world.chats[CHAT].members)
    first = await call(rpc, F.channels.GetParticipantsRequest(ic, T.ChannelParticipantsRecent(), 0, 500, 0))
    assert first.count == total and len(first.participants) == 200
    # Recent: newest member first (account A joined last).
    assert isinstance(first.participants[0], T.ChannelParticipantSelf)
    assert first.participants[0].user_id == ACCOUNT_A
    rest = await call(rpc, F.channels.GetParticipantsRequest(ic, T.ChannelParticipantsRecent(), 200, 200, 0))
    assert len(rest.participants) == total - 200
    seen = {p.user_id for p in first.participants} | {p.user_id for p in rest.participants}
    assert seen == set(world.chats[CHAT].members)
    assert {u.id for u in rest.users} == {p.user_id for p in rest.participants}
    search = await call(rpc, F.channels.GetParticipantsRequest(ic, T.ChannelParticipantsSearch("member_00"), 0, 100, 0))
    assert search.count == 10
    admins = await call(rpc, F.channels.GetParticipantsRequest(ic, T.ChannelParticipantsAdmins(), 0, 100, 0))
    kinds = {type(p).__name__: p.user_id for p in admins.participants}
    assert kinds == {"ChannelParticipantCreator": USER_ALICE, "ChannelParticipantAdmin": USER_BOB}
    bots = await call(rpc, F.channels.GetParticipantsRequest(ic, T.ChannelParticipantsBots(), 0, 100, 0))
    assert [u.id for u in bots.users] == [BOT]
    kicked = F.channels.GetParticipantsRequest(ic, T.ChannelParticipantsKicked(""), 0, 100, 0)
    assert await fails(rpc, kicked) == "CHAT_ADMIN_REQUIRED"


async def test_channel_get_messages_keeps_order_and_empties(rpc: TelegramRpc, world: World) -> None:
    ic = ichan(world, ACCOUNT_A, NEWS)
    ids = [T.InputMessageID(i) for i in (5, 9999, 3)]
    got = await call(rpc, F.channels.GetMessagesRequest(ic, ids))
    assert isinstance(got, T.messages.ChannelMessages)
    assert [(type(m).__name__, m.id) for m in got.messages] == [
        ("Message", 5), ("MessageEmpty", 9999), ("Message", 3)
    ]
    assert await fails(rpc, F.channels.GetMessagesRequest(ic, [])) == "MESSAGE_IDS_EMPTY"
    pinned = await call(rpc, F.channels.GetMessagesRequest(ic, [T.InputMessagePinned()]))
    assert pinned.messages[0].id == 150


# --- history --------------------------------------------------------------------------


async def test_get_history_follows_telegrams_offsets(rpc: TelegramRpc, world: World) -> None:
    peer = ipeer(world, ACCOUNT_A, NEWS)

    async def ids(**kw: Any) -> list[int]:
        got = await call(rpc, history(peer, **kw))
        assert isinstance(got, T.messages.ChannelMessages)
        assert got.count == 150 and got.pts == world.chats[NEWS].pts
        return [m.id for m in got.messages]

    assert await ids(limit=3) == [150, 149, 148]
    assert await ids(offset_id=100, limit=3) == [99, 98, 97]  # offset_id exclusive
    assert await ids(offset_id=100, add_offset=-5, limit=10) == list(range(104, 94, -1))
    assert await ids(offset_id=100, add_offset=2, limit=2) == [97, 96]
    # min_id/max_id filter the window offset_id/add_offset/limit chose (Telethon's comment
    # in _MessagesIter: low bounds without an offset return nothing).
    assert await ids(min_id=95, max_id=100, limit=100) == [99, 98, 97, 96]
    assert await ids(min_id=5, max_id=10, limit=100) == []
    assert await ids(offset_id=100, min_id=95, max_id=99, limit=100) == [98, 97, 96]
    assert len(await ids(limit=500)) == 100  # limit at most 100
    # limit 0 is Telegram's default, "an intermediate value like ~20" (api/offsets), not 0.
    assert await ids(limit=0) == list(range(150, 130, -1))
    assert await ids(offset_id=100, limit=0) == list(range(99, 79, -1))
    assert await ids(offset_id=3, limit=10) == [2, 1]
    assert await ids(offset_date=DEFAULT_DATE + 60 * 50, limit=2) == [49, 48]


async def test_history_renders_every_message_kind(rpc: TelegramRpc, world: World) -> None:
    got = await call(rpc, history(ipeer(world, ACCOUNT_A, MEDIA), limit=100))
    by_id = {m.id: m for m in got.messages}
    assert isinstance(by_id[1], T.MessageService)
    assert isinstance(by_id[1].action, T.MessageActionChannelCreate)
    photo = by_id[MEDIA_IDS["photo_dc2"]].media.photo
    assert photo.dc_id == 2 and isinstance(photo.sizes[0], T.PhotoStrippedSize)
    assert isinstance(photo.sizes[-1], T.PhotoSizeProgressive)
    album = [by_id[i].grouped_id for i in ALBUM_IDS]
    assert len(set(album)) == 1 and album[0]
    video = by_id[MEDIA_IDS["video"]].media
    assert video.video and video.document.size == VIDEO_SIZE
    assert any(isinstance(a, T.DocumentAttributeVideo) for a in video.document.attributes)
    voice = by_id[MEDIA_IDS["voice"]].media
    assert voice.voice and voice.document.attributes[0].voice
    sticker = by_id[MEDIA_IDS["sticker"]].media.document
    assert any(isinstance(a, T.DocumentAttributeSticker) for a in sticker.attributes)
    anim = by_id[MEDIA_IDS["animation"]].media.document
    assert any(isinstance(a, T.DocumentAttributeAnimated) for a in anim.attributes)
    assert by_id[MEDIA_IDS["round"]].media.round
    page = by_id[MEDIA_IDS["webpage"]].media.webpage
    assert page.photo.id == WEB_PHOTO and page.site_name == "Example"
    post = by_id[MEDIA_IDS["file"]]
    assert post.post and post.views == 10 and post.forwards == 1 and post.from_id is None
    news = await call(rpc, history(ipeer(world, ACCOUNT_A, NEWS), offset_id=101, limit=1))
    n100 = news.messages[0]
    assert n100.edit_date is not None and n100.fwd_from.from_id.channel_id == MEDIA
    assert [type(e).__name__ for e in n100.entities] == [
        "MessageEntityBold", "MessageEntityUrl", "MessageEntityTextUrl"
    ]
    assert MEDIA in {c.id for c in news.chats}  # the forward's source comes along


async def test_history_of_basic_groups_and_private_chats(rpc: TelegramRpc, world: World) -> None:
    small = await call(rpc, history(T.InputPeerChat(SMALL), limit=100))
    assert isinstance(small, T.messages.Messages)
    assert [getattr(m, "message", None) for m in small.messages][:2] == [
        "hello Ann", "hi all"
    ]
    sliced = await call(rpc, history(T.InputPeerChat(SMALL), limit=1))
    assert isinstance(sliced, T.messages.MessagesSlice) and sliced.count == 3
    alice = T.InputPeerUser(USER_ALICE, world.access_hash("user", ACCOUNT_A, USER_ALICE))
    dm = await call(rpc, history(alice))
    assert [m.message for m in dm.messages] == ["a private hello"]
    assert await fails(rpc, history(T.InputPeerChat(SMALL)), user=ACCOUNT_C) == "CHAT_ID_INVALID"
    assert await fails(rpc, history(alice), user=ACCOUNT_B) == "PEER_ID_INVALID"
    req = history(ipeer(world, ACCOUNT_C, PRIVATE_GROUP))
    assert await fails(rpc, req, user=ACCOUNT_C) == "CHANNEL_PRIVATE"


async def test_messages_get_messages_reads_the_common_box(rpc: TelegramRpc, world: World) -> None:
    ids = sorted(world.common)
    got = await call(rpc, F.messages.GetMessagesRequest([T.InputMessageID(i) for i in ids]))
    assert [type(m).__name__ for m in got.messages] == ["MessageService", "Message", "Message", "Message"]
    as_b = await call(rpc, F.messages.GetMessagesRequest([T.InputMessageID(ids[-1])]), user=ACCOUNT_B)
    assert isinstance(as_b.messages[0], T.MessageEmpty)  # the private chat is A's, not B's


async def test_basic_group_chats_and_full_chat(rpc: TelegramRpc) -> None:
    chats = await call(rpc, F.messages.GetChatsRequest([SMALL]))
    assert chats.chats[0].title == "Small Group" and chats.chats[0].participants_count == 3
    assert await fails(rpc, F.messages.GetChatsRequest([NEWS])) == "CHAT_ID_INVALID"
    full = await call(rpc, F.messages.GetFullChatRequest(SMALL))
    parts = full.full_chat.participants.participants
    assert {type(p).__name__ for p in parts} == {"ChatParticipantCreator", "ChatParticipant"}
    assert {u.id for u in full.users} == {ACCOUNT_A, ACCOUNT_B, USER_ALICE}
    outsider = await call(rpc, F.messages.GetFullChatRequest(SMALL), user=ACCOUNT_C)
    assert isinstance(outsider.full_chat.participants, T.ChatParticipantsForbidden)


async def test_get_dialogs_lists_the_accounts_chats(rpc: TelegramRpc) -> None:
    got = await call(rpc, F.messages.GetDialogsRequest(None, 0, T.InputPeerEmpty(), 100, 0))
    peers = {render_id(d.peer) for d in got.dialogs}
    assert peers == {NEWS, MEDIA, SECRET, CHAT, PRIVATE_GROUP, SMALL}
    assert {(render_id(m.peer_id), m.id) for m in got.messages} == {
        (render_id(d.peer), d.top_message) for d in got.dialogs
    }
    page = await call(rpc, F.messages.GetDialogsRequest(None, 0, T.InputPeerEmpty(), 2, 0))
    assert isinstance(page, T.messages.DialogsSlice) and page.count == 6


def render_id(peer: Any) -> int:
    return getattr(peer, "channel_id", None) or getattr(peer, "chat_id", None) or peer.user_id


# --- join / leave ---------------------------------------------------------------------


async def test_join_and_leave_answer_updates_with_the_viewers_channel(
    rpc: TelegramRpc, world: World
) -> None:
    ic = ichan(world, ACCOUNT_C, MEDIA)
    joined = await call(rpc, F.channels.JoinChannelRequest(ic), user=ACCOUNT_C)
    assert isinstance(joined, T.Updates)
    assert joined.updates == [T.UpdateChannel(MEDIA)] and joined.chats[0].left is False
    assert ACCOUNT_C in world.chats[MEDIA].members
    assert await fails(rpc, F.channels.JoinChannelRequest(ic), user=ACCOUNT_C) == (
        "USER_ALREADY_PARTICIPANT"
    )
    left = await call(rpc, F.channels.LeaveChannelRequest(ic), user=ACCOUNT_C)
    assert left.chats[0].left is True and ACCOUNT_C not in world.chats[MEDIA].members
    assert await fails(rpc, F.channels.LeaveChannelRequest(ic), user=ACCOUNT_C) == (
        "USER_NOT_PARTICIPANT"
    )


async def test_join_errors(rpc: TelegramRpc, world: World) -> None:
    req = F.channels.JoinChannelRequest(ichan(world, ACCOUNT_C, REQUESTS))
    assert await fails(rpc, req, user=ACCOUNT_C) == "INVITE_REQUEST_SENT"
    assert world.chats[REQUESTS].requests == [ACCOUNT_C]
    req = F.channels.JoinChannelRequest(ichan(world, ACCOUNT_C, SECRET))
    assert await fails(rpc, req, user=ACCOUNT_C) == "CHANNEL_PRIVATE"
    world.channel_limit = len(world.joined_channels(ACCOUNT_C))
    req = F.channels.JoinChannelRequest(ichan(world, ACCOUNT_C, MEDIA))
    assert await fails(rpc, req, user=ACCOUNT_C) == "CHANNELS_TOO_MUCH"
    req = F.channels.JoinChannelRequest(ichan(world, ACCOUNT_A, MEDIA))
    assert await fails(rpc, req, user=ACCOUNT_C) == "CHANNEL_INVALID"


async def test_the_default_channel_limit_is_500(rpc: TelegramRpc, world: World) -> None:
    from tests.fakedc.world import ChatSpec

    for i in range(500 - len(world.joined_channels(ACCOUNT_C))):
        world.add_chat(ChatSpec(id=900_000 + i, username=f"bulk{i}", members={ACCOUNT_C: 0}))
    req = F.channels.JoinChannelRequest(ichan(world, ACCOUNT_C, MEDIA))
    assert await fails(rpc, req, user=ACCOUNT_C) == "CHANNELS_TOO_MUCH"


# --- files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "limit", "precise", "error"),
    [
        (0, 4096, False, None),
        (0, MIB, False, None),
        (MIB - 4096, 4096, False, None),
        (512 * 1024, 512 * 1024, False, None),
        (100, 4096, False, "OFFSET_INVALID"),
        (0, 1000, False, "LIMIT_INVALID"),
        (0, 3 * 4096, False, "LIMIT_INVALID"),  # does not divide 1 MiB
        (0, 2 * MIB, False, "LIMIT_INVALID"),
        (0, 0, False, "LIMIT_INVALID"),
        (MIB - 4096, 8192, False, "LIMIT_INVALID"),  # crosses the 1 MiB boundary
        (1024, 3 * 1024, True, None),
        (MIB - 1024, 4096, True, None),
        (512, 1024, True, "OFFSET_INVALID"),
        (0, 1000, True, "LIMIT_INVALID"),
        (0, MIB + 1024, True, "LIMIT_INVALID"),
    ],
)
def test_part_rules(offset: int, limit: int, precise: bool, error: str | None) -> None:
    if error is None:
        check_part(offset, limit, precise)
    else:
        with pytest.raises(RpcError) as info:
            check_part(offset, limit, precise)
        assert info.value.message == error


async def media_of(rpc: TelegramRpc, world: World, viewer: int, msg_id: int) -> Any:
    got = await call(rpc, F.channels.GetMessagesRequest(ichan(world, viewer, MEDIA), [T.InputMessageID(msg_id)]), user=viewer)
    return got.messages[0].media


def doc_location(doc: Any) -> T.InputDocumentFileLocation:
    return T.InputDocumentFileLocation(doc.id, doc.access_hash, doc.file_reference, "")


async def test_get_file_serves_the_deterministic_bytes(rpc: TelegramRpc, world: World) -> None:
    doc = (await media_of(rpc, world, ACCOUNT_A, MEDIA_IDS["video"])).document
    loc = doc_location(doc)
    key = render.document_file_key(VIDEO_20MB)
    first = await call(rpc, F.upload.GetFileRequest(loc, 0, MIB))
    assert isinstance(first.type, T.storage.FileMp4)
    assert first.bytes == files.read(key, VIDEO_SIZE, 0, MIB)
    middle = await call(rpc, F.upload.GetFileRequest(loc, 7 * MIB, 128 * 1024))
    assert isinstance(middle.type, T.storage.FilePartial)
    assert middle.bytes == files.read(key, VIDEO_SIZE, 7 * MIB, 128 * 1024)
    last = await call(rpc, F.upload.GetFileRequest(loc, 20 * MIB, MIB))
    assert len(last.bytes) == VIDEO_SIZE - 20 * MIB
    past = await call(rpc, F.upload.GetFileRequest(loc, 21 * MIB, MIB))
    assert past.bytes == b""


async def test_get_file_identity_and_reference_rules(rpc: TelegramRpc, world: World) -> None:
    doc = (await media_of(rpc, world, ACCOUNT_A, MEDIA_IDS["file"])).document
    loc = doc_location(doc)
    # Another account's hash.
    assert await fails(rpc, F.upload.GetFileRequest(loc, 0, 4096), user=ACCOUNT_B) == "FILE_ID_INVALID"
    forged = T.InputDocumentFileLocation(doc.id, doc.access_hash, b"x" * 24, "")
    assert await fails(rpc, F.upload.GetFileRequest(forged, 0, 4096)) == "FILE_REFERENCE_INVALID"
    rpc.expire_file_references()
    assert await fails(rpc, F.upload.GetFileRequest(loc, 0, 4096)) == "FILE_REFERENCE_EXPIRED"
    fresh = (await media_of(rpc, world, ACCOUNT_A, MEDIA_IDS["file"])).document
    assert fresh.file_reference != doc.file_reference
    assert len((await call(rpc, F.upload.GetFileRequest(doc_location(fresh), 0, 4096))).bytes) == 4096


async def test_a_file_on_another_dc_migrates(rpc: TelegramRpc, world: World) -> None:
    photo = (await media_of(rpc, world, ACCOUNT_A, MEDIA_IDS["photo_dc2"])).photo
    largest = photo.sizes[-1]
    loc = T.InputPhotoFileLocation(photo.id, photo.access_hash, photo.file_reference, largest.type)
    assert await fails(rpc, F.upload.GetFileRequest(loc, 0, 4096), dc=1) == "FILE_MIGRATE_2"
    got = await call(rpc, F.upload.GetFileRequest(loc, 0, MIB), dc=2)
    spec = world.photos[PHOTO_DC2].largest()
    assert got.bytes == files.read(render.photo_file_key(PHOTO_DC2, spec.type), spec.size)
    assert isinstance(got.type, T.storage.FileJpeg)
    bad = T.InputPhotoFileLocation(photo.id, photo.access_hash, photo.file_reference, "w")
    assert await fails(rpc, F.upload.GetFileRequest(bad, 0, 4096), dc=2) == "LOCATION_INVALID"


async def test_thumbs_and_profile_photos(rpc: TelegramRpc, world: World) -> None:
    doc = (await media_of(rpc, world, ACCOUNT_A, MEDIA_IDS["video"])).document
    thumb = doc.thumbs[0]
    loc = T.InputDocumentFileLocation(doc.id, doc.access_hash, doc.file_reference, thumb.type)
    assert len((await call(rpc, F.upload.GetFileRequest(loc, 0, MIB))).bytes) == thumb.size
    peer = T.InputPeerUser(USER_ALICE, world.access_hash("user", ACCOUNT_A, USER_ALICE))
    big = T.InputPeerPhotoFileLocation(peer=peer, photo_id=AVATAR, big=True)
    assert len((await call(rpc, F.upload.GetFileRequest(big, 0, MIB))).bytes) == 60_000
    small = T.InputPeerPhotoFileLocation(peer=peer, photo_id=AVATAR, big=False)
    assert len((await call(rpc, F.upload.GetFileRequest(small, 0, MIB))).bytes) == 8_000
    chan = T.InputPeerPhotoFileLocation(peer=ipeer(world, ACCOUNT_A, MEDIA), photo_id=PHOTO_DC1, big=True)
    assert len((await call(rpc, F.upload.GetFileRequest(chan, 0, MIB))).bytes) == world.photos[PHOTO_DC1].largest().size


async def test_drop_connection_in_the_middle_of_a_file(rpc: TelegramRpc, world: World) -> None:
    loc = doc_location((await media_of(rpc, world, ACCOUNT_A, MEDIA_IDS["video"])).document)
    rpc.drop_connection_in_file(VIDEO_20MB, nth=2)
    await call(rpc, F.upload.GetFileRequest(loc, 0, MIB))
    with pytest.raises(DropConnection):
        await rpc(Bound(ACCOUNT_A).ctx, F.upload.GetFileRequest(loc, MIB, MIB))
    # Once: the retry is served.
    await call(rpc, F.upload.GetFileRequest(loc, MIB, MIB))


# --- auth -----------------------------------------------------------------------------


async def test_export_import_authorization_binds_the_key_on_the_other_dc(rpc: TelegramRpc) -> None:
    exported = await call(rpc, F.auth.ExportAuthorizationRequest(2), dc=1)
    assert exported.id == ACCOUNT_A
    fresh = Bound(None, dc_id=2, key=77)
    auth = roundtrip(await rpc(fresh.ctx, F.auth.ImportAuthorizationRequest(exported.id, exported.bytes)))
    assert fresh.bound == [ACCOUNT_A] and auth.user.is_self
    other = Bound(None, dc_id=2, key=78)
    with pytest.raises(RpcError, match="AUTH_BYTES_INVALID"):
        await rpc(other.ctx, F.auth.ImportAuthorizationRequest(exported.id, b"wrong"))
    assert await fails(rpc, F.auth.ExportAuthorizationRequest(1), dc=1) == "DC_ID_INVALID"


async def test_sign_in_with_a_phone_code(rpc: TelegramRpc) -> None:
    key = Bound(None, key=5)
    phone = "+15550001002"
    assert await fails(rpc, F.auth.SendCodeRequest("+19999", 1, "h", T.CodeSettings()), user=None) == (
        "PHONE_NUMBER_INVALID"
    )
    sent = roundtrip(await rpc(key.ctx, F.auth.SendCodeRequest(phone, 1, "h", T.CodeSettings())))
    with pytest.raises(RpcError, match="PHONE_CODE_INVALID"):
        await rpc(key.ctx, F.auth.SignInRequest(phone, sent.phone_code_hash, "00000"))
    auth = await rpc(key.ctx, F.auth.SignInRequest(phone, sent.phone_code_hash, rpc.login_code))
    assert key.bound == [ACCOUNT_B] and auth.user.id == ACCOUNT_B


async def test_sign_in_with_2fa_runs_real_srp(rpc: TelegramRpc) -> None:
    key = Bound(None, key=6)
    phone = "15550001004"
    sent = await rpc(key.ctx, F.auth.SendCodeRequest(phone, 1, "h", T.CodeSettings()))
    with pytest.raises(RpcError, match="SESSION_PASSWORD_NEEDED"):
        await rpc(key.ctx, F.auth.SignInRequest(phone, sent.phone_code_hash, rpc.login_code))
    assert key.bound == []
    pwd = roundtrip(await rpc(key.ctx, F.account.GetPasswordRequest()))
    assert pwd.has_password and pwd.hint == "xkcd"
    wrong = tpassword.compute_check(pwd, "wrong password")
    with pytest.raises(RpcError, match="PASSWORD_HASH_INVALID"):
        await rpc(key.ctx, F.auth.CheckPasswordRequest(wrong))
    pwd = await rpc(key.ctx, F.account.GetPasswordRequest())  # a fresh SRP round
    right = tpassword.compute_check(pwd, PASSWORD)
    auth = await rpc(key.ctx, F.auth.CheckPasswordRequest(right))
    assert key.bound == [ACCOUNT_2FA] and auth.user.id == ACCOUNT_2FA
    with pytest.raises(RpcError, match="SRP_ID_INVALID"):  # an SRP round is single-use
        await rpc(key.ctx, F.auth.CheckPasswordRequest(right))


async def test_account_without_password_reports_none(rpc: TelegramRpc) -> None:
    pwd = await call(rpc, F.account.GetPasswordRequest())
    assert not pwd.has_password and pwd.srp_B is None


# --- updates and pushes ---------------------------------------------------------------


async def test_post_edit_delete_push_to_member_accounts_with_channel_pts(
    rpc: TelegramRpc, world: World, pushed: list[tuple[int, Any]]
) -> None:
    pts0 = world.chats[NEWS].pts
    msg = await rpc.post_message(NEWS, "breaking", entities=[{"type": "bold", "offset": 0, "length": 8}])
    assert msg.id == 151 and msg.pts == pts0 + 1
    assert sorted(uid for uid, _ in pushed) == [ACCOUNT_A, ACCOUNT_B, ACCOUNT_C]
    for uid, updates in pushed:
        (upd,) = updates.updates
        assert isinstance(upd, T.UpdateNewChannelMessage)
        assert (upd.pts, upd.pts_count, upd.message.id) == (pts0 + 1, 1, 151)
        assert updates.chats[0].access_hash == world.access_hash("channel", uid, NEWS)
    pushed.clear()
    await rpc.edit_message(NEWS, 151, "breaking (edited)")
    upd = pushed[0][1].updates[0]
    assert isinstance(upd, T.UpdateEditChannelMessage)
    assert upd.message.edit_date is not None and upd.pts == pts0 + 2
    pushed.clear()
    await rpc.delete_messages(NEWS, [150, 151])
    upd = pushed[0][1].updates[0]
    assert isinstance(upd, T.UpdateDeleteChannelMessages)
    assert (upd.messages, upd.pts, upd.pts_count) == ([150, 151], pts0 + 4, 2)
    got = await call(rpc, history(ipeer(world, ACCOUNT_A, NEWS), limit=1))
    assert got.messages[0].id == 149


async def test_a_banned_or_logged_out_account_gets_no_pushes(
    rpc: TelegramRpc, pushed: list[tuple[int, Any]]
) -> None:
    # Telegram ends a deactivated account's sessions and a logged-out key's: no updates.
    rpc.deactivated_ban(ACCOUNT_B)
    rpc.auth_key_unregistered(ACCOUNT_C)
    await rpc.post_message(NEWS, "after the ban")
    assert [uid for uid, _ in pushed] == [ACCOUNT_A]
    rpc.clear_faults()
    pushed.clear()
    await rpc.post_message(NEWS, "reinstated")
    assert sorted(uid for uid, _ in pushed) == [ACCOUNT_A, ACCOUNT_B, ACCOUNT_C]


async def test_pushes_of_a_basic_group_move_each_accounts_pts(
    rpc: TelegramRpc, world: World, pushed: list[tuple[int, Any]]
) -> None:
    state = await call(rpc, F.updates.GetStateRequest())
    msg = await rpc.post_message(SMALL, "new in small", from_id=USER_ALICE)
    assert sorted(uid for uid, _ in pushed) == [ACCOUNT_A, ACCOUNT_B]
    upd = dict(pushed)[ACCOUNT_A].updates[0]
    assert isinstance(upd, T.UpdateNewMessage) and upd.pts == state.pts + 1
    diff = await call(rpc, F.updates.GetDifferenceRequest(pts=state.pts, date=state.date, qts=0))
    assert [m.id for m in diff.new_messages] == [msg.id] and diff.state.pts == state.pts + 1
    empty = await call(rpc, F.updates.GetDifferenceRequest(pts=state.pts + 1, date=state.date, qts=0))
    assert isinstance(empty, T.updates.DifferenceEmpty)


async def test_get_difference_keeps_a_basic_groups_edits_and_deletions(
    rpc: TelegramRpc, world: World
) -> None:
    """What Telegram keeps for getDifference: a message edited since (once, as it is now,
    at the pts of its last edit) and each deletion (the account's own id), with their pts;
    a message both new and edited since comes once, as new."""
    old = await rpc.post_message(SMALL, "old", from_id=USER_ALICE)
    gone = await rpc.post_message(SMALL, "gone soon", from_id=USER_ALICE)
    state = await call(rpc, F.updates.GetStateRequest())
    await rpc.edit_message(SMALL, old.id, "old, edited")
    await rpc.edit_message(SMALL, old.id, "old, edited twice")
    await rpc.delete_messages(SMALL, [gone.id])
    fresh = await rpc.post_message(SMALL, "fresh", from_id=USER_ALICE)
    await rpc.edit_message(SMALL, fresh.id, "fresh, edited")
    diff = await call(rpc, F.updates.GetDifferenceRequest(pts=state.pts, date=state.date, qts=0))
    assert diff.state.pts == state.pts + 5
    assert [(m.id, m.message) for m in diff.new_messages] == [
        (world.own_id(ACCOUNT_A, fresh.id), "fresh, edited")
    ]
    edit, deletion = diff.other_updates
    assert isinstance(edit, T.UpdateEditMessage) and edit.message.message == "old, edited twice"
    assert (edit.message.id, edit.pts, edit.pts_count) == (
        world.own_id(ACCOUNT_A, old.id), state.pts + 2, 1
    )
    assert isinstance(deletion, T.UpdateDeleteMessages)
    assert (deletion.messages, deletion.pts) == ([world.own_id(ACCOUNT_A, gone.id)], state.pts + 3)


async def test_get_channel_difference_gives_each_edited_message_once(
    rpc: TelegramRpc, world: World
) -> None:
    ic = ichan(world, ACCOUNT_A, NEWS)
    old = await rpc.post_message(NEWS, "old")
    pts = world.chats[NEWS].pts
    post = await rpc.post_message(NEWS, "first")  # pts + 1
    await rpc.edit_message(NEWS, old.id, "old, edited")  # pts + 2
    await rpc.edit_message(NEWS, old.id, "old, edited again")  # pts + 3
    await rpc.edit_message(NEWS, post.id, "first, edited")  # pts + 4: new in this difference
    diff = await call(rpc, F.updates.GetChannelDifferenceRequest(ic, T.ChannelMessagesFilterEmpty(), pts, 100))
    assert [(m.id, m.message) for m in diff.new_messages] == [(post.id, "first, edited")]
    (edit,) = diff.other_updates
    assert isinstance(edit, T.UpdateEditChannelMessage)
    assert (edit.message.id, edit.message.message, edit.pts) == (old.id, "old, edited again", pts + 3)


async def test_basic_group_ids_are_each_accounts_own(
    rpc: TelegramRpc, world: World, pushed: list[tuple[int, Any]]
) -> None:
    """Telegram numbers basic-group messages per account: A's box also holds a private
    chat, so the next message of SMALL has another id for A than for B, everywhere."""
    msg = await rpc.post_message(SMALL, "one message, two ids", from_id=USER_ALICE)
    own = {a: world.own_id(a, msg.id) for a in (ACCOUNT_A, ACCOUNT_B)}
    assert own == {ACCOUNT_A: 5, ACCOUNT_B: 4}  # A: 3 in SMALL + 1 private before; B: 3
    assert {uid: upd.updates[0].message.id for uid, upd in pushed} == own
    for account, mine in own.items():
        page = await call(rpc, history(T.InputPeerChat(SMALL), min_id=mine - 1), user=account)
        assert [(m.id, m.message) for m in page.messages] == [(mine, "one message, two ids")]
        by_id = F.messages.GetMessagesRequest([T.InputMessageID(mine)])
        assert (await call(rpc, by_id, user=account)).messages[0].message == "one message, two ids"
        dialogs = F.messages.GetDialogsRequest(None, 0, T.InputPeerEmpty(), 100, 0)
        listed = (await call(rpc, dialogs, user=account)).dialogs
        assert {render_id(d.peer): d.top_message for d in listed}[SMALL] == mine
    pushed.clear()
    await rpc.delete_messages(SMALL, [msg.id])
    assert {uid: upd.updates[0].messages for uid, upd in pushed} == {ACCOUNT_A: [5], ACCOUNT_B: [4]}
    # A later member doesn't see what was sent before it joined.
    rpc.add_member(ACCOUNT_C, SMALL)
    assert (await call(rpc, history(T.InputPeerChat(SMALL)), user=ACCOUNT_C)).messages == []


async def test_dropped_posts_come_back_through_get_channel_difference(
    rpc: TelegramRpc, world: World, pushed: list[tuple[int, Any]]
) -> None:
    ic = ichan(world, ACCOUNT_A, NEWS)
    first = await rpc.post_message(NEWS, "seen")
    rpc.drop_next_posts(NEWS, 2)
    lost = [await rpc.post_message(NEWS, f"lost {i}") for i in range(2)]
    assert len(pushed) == 3  # only the first post reached the 3 accounts
    await rpc.edit_message(NEWS, first.id, "seen (edited)")
    await rpc.delete_messages(NEWS, [1])
    diff = await call(rpc, F.updates.GetChannelDifferenceRequest(ic, T.ChannelMessagesFilterEmpty(), first.pts, 100))
    assert isinstance(diff, T.updates.ChannelDifference) and diff.final
    assert [m.id for m in diff.new_messages] == [m.id for m in lost]
    assert [type(u).__name__ for u in diff.other_updates] == [
        "UpdateEditChannelMessage", "UpdateDeleteChannelMessages"
    ]
    assert diff.pts == world.chats[NEWS].pts
    empty = await call(rpc, F.updates.GetChannelDifferenceRequest(ic, T.ChannelMessagesFilterEmpty(), diff.pts, 100))
    assert isinstance(empty, T.updates.ChannelDifferenceEmpty) and empty.pts == diff.pts
    old = await call(rpc, F.updates.GetChannelDifferenceRequest(ic, T.ChannelMessagesFilterEmpty(), 5, 100))
    assert isinstance(old, T.updates.ChannelDifferenceTooLong)
    assert old.dialog.pts == diff.pts and len(old.messages) == 100
    small = await call(rpc, F.updates.GetChannelDifferenceRequest(ic, T.ChannelMessagesFilterEmpty(), first.pts, 1))
    assert isinstance(small, T.updates.ChannelDifferenceTooLong)


async def test_kick_pushes_update_channel_to_that_account_only(
    rpc: TelegramRpc, world: World, pushed: list[tuple[int, Any]]
) -> None:
    await rpc.kick(ACCOUNT_B, NEWS)
    assert [uid for uid, _ in pushed] == [ACCOUNT_B]
    updates = pushed[0][1]
    assert updates.updates == [T.UpdateChannel(NEWS)]
    assert isinstance(updates.chats[0], T.ChannelForbidden)
    req = history(ipeer(world, ACCOUNT_B, NEWS))
    assert await fails(rpc, req, user=ACCOUNT_B) == "CHANNEL_PRIVATE"
    pushed.clear()
    await rpc.post_message(NEWS, "after kick")
    assert sorted(uid for uid, _ in pushed) == [ACCOUNT_A, ACCOUNT_C]
    pushed.clear()
    await rpc.kick(ACCOUNT_C, NEWS, ban=False)
    assert pushed[0][1].chats[0].left is True
    rpc.add_member(ACCOUNT_B, NEWS)
    assert (await call(rpc, req, user=ACCOUNT_B)).messages


# --- knobs and counters ---------------------------------------------------------------


async def test_flood_wait_once_every_nth_and_per_account(rpc: TelegramRpc) -> None:
    req = F.contacts.ResolveUsernameRequest("tgc_news")
    rpc.flood_wait("contacts.resolveUsername", 30)
    assert await fails(rpc, req) == "FLOOD_WAIT_30"
    await call(rpc, req)
    rpc.flood_wait("contacts.resolveUsername", 5, every=3, times=None)
    outcomes = []
    for _ in range(6):
        try:
            await call(rpc, req)
            outcomes.append("ok")
        except RpcError as e:
            outcomes.append(e.message)
    assert outcomes == ["ok", "ok", "FLOOD_WAIT_5"] * 2
    rpc.clear_faults()
    rpc.flood_wait("contacts.resolveUsername", 7, times=None, user_id=ACCOUNT_B)
    await call(rpc, req)
    assert await fails(rpc, req, user=ACCOUNT_B) == "FLOOD_WAIT_7"
    assert await fails(rpc, req, user=ACCOUNT_B) == "FLOOD_WAIT_7"


async def test_username_not_occupied_knob(rpc: TelegramRpc) -> None:
    rpc.username_not_occupied("TGC_News")
    assert await fails(rpc, F.contacts.ResolveUsernameRequest("tgc_news")) == "USERNAME_NOT_OCCUPIED"


@pytest.mark.parametrize(
    ("knob", "error"),
    [("auth_key_unregistered", "AUTH_KEY_UNREGISTERED"), ("deactivated_ban", "USER_DEACTIVATED_BAN")],
)
async def test_account_fates_fail_every_call_of_that_account(
    rpc: TelegramRpc, knob: str, error: str
) -> None:
    getattr(rpc, knob)(ACCOUNT_B)
    with pytest.raises(RpcError) as info:
        await rpc(Bound(ACCOUNT_B).ctx, F.updates.GetStateRequest())
    assert (info.value.code, info.value.message) == (401, error)
    await call(rpc, F.updates.GetStateRequest())  # other accounts are fine


async def test_latency_and_slow_answers(rpc: TelegramRpc) -> None:
    # Bounds far apart so a busy machine can't blur them.
    rpc.set_latency({"updates.getState": 0.3})
    start = time.monotonic()
    await call(rpc, F.updates.GetStateRequest())
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    await call(rpc, F.help.GetNearestDcRequest())
    assert time.monotonic() - start < 0.3
    rpc.set_latency({})
    rpc.slow("help.getNearestDc", 0.3)
    start = time.monotonic()
    await call(rpc, F.help.GetNearestDcRequest())
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    await call(rpc, F.help.GetNearestDcRequest())  # slow() was for one call only
    assert time.monotonic() - start < 0.3


async def test_counters_by_method_and_account(rpc: TelegramRpc) -> None:
    req = F.contacts.ResolveUsernameRequest("tgc_news")
    await call(rpc, req)
    await call(rpc, req)
    await call(rpc, req, user=ACCOUNT_B)
    await fails(rpc, F.contacts.ResolveUsernameRequest("nobody_here"))
    assert rpc.count("contacts.resolveUsername") == 4
    assert rpc.count("contacts.resolveUsername", user_id=ACCOUNT_A) == 3
    assert rpc.count(user_id=ACCOUNT_B) == 1
    rpc.reset_counts()
    assert rpc.count() == 0


async def test_an_unknown_method_is_logged_and_refused(rpc: TelegramRpc) -> None:
    assert await fails(rpc, F.messages.SendMessageRequest(T.InputPeerSelf(), "x")) == "METHOD_INVALID"
    assert rpc.unknown == ["messages.sendMessage"]


def test_the_docstring_lists_exactly_the_supported_methods() -> None:
    import re

    from tests.fakedc import rpc as rpc_module

    doc = rpc_module.__doc__ or ""
    block = doc.split("Requests answered", 1)[1].split("Knobs", 1)[0]
    listed = set(re.findall(r"[a-z]+\.[a-zA-Z]+", block)) - {"rpc.unknown", "rpc.supported"}
    assert listed == set(TelegramRpc(demo_world()).supported_methods)


def test_method_names_and_the_supported_list() -> None:
    assert method_name(F.channels.GetFullChannelRequest(T.InputChannelEmpty())) == "channels.getFullChannel"
    assert method_name(F.InvokeWithLayerRequest(1, F.help.GetConfigRequest())) == "invokeWithLayer"
    methods = TelegramRpc(demo_world()).supported_methods
    assert "upload.getFile" in methods and "updates.getChannelDifference" in methods


# --- invite links and basic groups ----------------------------------------------------


async def test_check_and_import_chat_invite(rpc: TelegramRpc, world: World) -> None:
    from tests.fakedc.demo_world import INVITE_REQUESTS, INVITE_SECRET, INVITE_SMALL

    assert await fails(rpc, F.messages.CheckChatInviteRequest("nope")) == "INVITE_HASH_INVALID"
    already = await call(rpc, F.messages.CheckChatInviteRequest(INVITE_SECRET))
    assert isinstance(already, T.ChatInviteAlready) and already.chat.id == SECRET
    preview = await call(rpc, F.messages.CheckChatInviteRequest(INVITE_SECRET), user=ACCOUNT_C)
    assert isinstance(preview, T.ChatInvite) and preview.broadcast and not preview.public
    joined = await call(rpc, F.messages.ImportChatInviteRequest(INVITE_SECRET), user=ACCOUNT_C)
    assert joined.chats[0].id == SECRET and joined.chats[0].left is False
    assert await fails(rpc, F.messages.ImportChatInviteRequest(INVITE_SECRET), user=ACCOUNT_C) == (
        "USER_ALREADY_PARTICIPANT"
    )
    assert await fails(rpc, F.messages.ImportChatInviteRequest(INVITE_REQUESTS), user=ACCOUNT_C) == (
        "INVITE_REQUEST_SENT"
    )
    state = await call(rpc, F.updates.GetStateRequest(), user=ACCOUNT_C)
    small = await call(rpc, F.messages.ImportChatInviteRequest(INVITE_SMALL), user=ACCOUNT_C)
    (upd,) = small.updates
    assert isinstance(upd, T.UpdateNewMessage) and upd.pts == state.pts + 1
    assert isinstance(upd.message.action, T.MessageActionChatJoinedByLink)
    assert ACCOUNT_C in world.chats[SMALL].members


async def test_leave_a_basic_group(
    rpc: TelegramRpc, world: World, pushed: list[tuple[int, Any]]
) -> None:
    left = await call(rpc, F.messages.DeleteChatUserRequest(SMALL, T.InputUserSelf()), user=ACCOUNT_B)
    assert isinstance(left.updates[0].message.action, T.MessageActionChatDeleteUser)
    assert left.chats[0].left is True and ACCOUNT_B not in world.chats[SMALL].members
    assert [uid for uid, _ in pushed] == [ACCOUNT_A]  # the remaining member is told
    again = F.messages.DeleteChatUserRequest(SMALL, T.InputUserSelf())
    assert await fails(rpc, again, user=ACCOUNT_B) == "USER_NOT_PARTICIPANT"
    other = T.InputUser(USER_ALICE, world.access_hash("user", ACCOUNT_A, USER_ALICE))
    req = F.messages.DeleteChatUserRequest(SMALL, other)
    assert await fails(rpc, req) == "CHAT_ADMIN_REQUIRED"


# --- search, single participant, log out, generic failures ----------------------------


def search(peer: Any, q: str = "", flt: Any = None, limit: int = 100, from_id: Any = None,
           min_date: Any = None, max_date: Any = None, offset_id: int = 0) -> Any:
    return F.messages.SearchRequest(
        peer=peer, q=q, filter=flt or T.InputMessagesFilterEmpty(), min_date=min_date,
        max_date=max_date, offset_id=offset_id, add_offset=0, limit=limit, max_id=0, min_id=0,
        hash=0, from_id=from_id,
    )


async def test_search_messages_by_text_and_filter(rpc: TelegramRpc, world: World) -> None:
    news = ipeer(world, ACCOUNT_A, NEWS)
    bold = await call(rpc, search(news, "bold news", limit=3))
    assert bold.count == 15 and [m.id for m in bold.messages] == [150, 140, 130]
    media = ipeer(world, ACCOUNT_A, MEDIA)

    async def ids(flt: Any) -> list[int]:
        return [m.id for m in (await call(rpc, search(media, flt=flt))).messages]

    assert await ids(T.InputMessagesFilterPhotos()) == [6, 5, 4, 3, 2]
    assert await ids(T.InputMessagesFilterVoice()) == [MEDIA_IDS["voice"]]
    assert await ids(T.InputMessagesFilterGif()) == [MEDIA_IDS["animation"]]
    assert await ids(T.InputMessagesFilterUrl()) == [MEDIA_IDS["webpage"]]
    chat = ipeer(world, ACCOUNT_A, CHAT)
    alice = T.InputPeerUser(USER_ALICE, world.access_hash("user", ACCOUNT_A, USER_ALICE))
    assert [m.id for m in (await call(rpc, search(chat, from_id=alice))).messages] == [40]
    small = await call(rpc, search(T.InputPeerChat(SMALL), "hi", limit=1))
    assert isinstance(small, T.messages.Messages) and len(small.messages) == 1


async def test_search_dates_are_filters_and_offset_id_pages(rpc: TelegramRpc, world: World) -> None:
    news = ipeer(world, ACCOUNT_A, NEWS)
    # Post i is dated DEFAULT_DATE + 60 i: min_date and max_date are exclusive filters,
    # together with offset_id (not offsets that offset_id would override).
    lo, hi = DEFAULT_DATE + 60 * 20, DEFAULT_DATE + 60 * 90
    got = await call(rpc, search(news, "bold", min_date=lo, max_date=hi, limit=3))
    assert got.count == 6 and [m.id for m in got.messages] == [80, 70, 60]
    rest = await call(rpc, search(news, "bold", min_date=lo, max_date=hi, offset_id=60))
    assert [m.id for m in rest.messages] == [50, 40, 30] and rest.count == 6
    assert (await call(rpc, search(news, "bold", max_date=DEFAULT_DATE + 60 * 10))).count == 0


async def test_search_matches_word_prefixes(rpc: TelegramRpc, world: World) -> None:
    news = ipeer(world, ACCOUNT_A, NEWS)
    assert (await call(rpc, search(news, "NEW"))).count == 149  # a prefix, any case
    assert (await call(rpc, search(news, "ews"))).count == 0  # not inside a word
    assert [m.id for m in (await call(rpc, search(news, "post 14"))).messages][:2] == [149, 148]


async def test_search_from_id_must_be_a_user_of_the_viewer(rpc: TelegramRpc, world: World) -> None:
    chat = ipeer(world, ACCOUNT_A, CHAT)
    forged = T.InputPeerUser(USER_ALICE, world.access_hash("user", ACCOUNT_B, USER_ALICE))
    assert await fails(rpc, search(chat, from_id=forged)) == "FROM_PEER_INVALID"
    assert await fails(rpc, search(chat, from_id=ipeer(world, ACCOUNT_A, NEWS))) == "FROM_PEER_INVALID"


async def test_history_offset_date_is_strict_and_add_offset_shifts(
    rpc: TelegramRpc, world: World
) -> None:
    peer = ipeer(world, ACCOUNT_A, NEWS)

    async def ids(**kw: Any) -> list[int]:
        return [m.id for m in (await call(rpc, history(peer, **kw))).messages]

    at_50 = DEFAULT_DATE + 60 * 50  # post 50's date: strictly older starts at 49
    assert await ids(offset_date=at_50, limit=2) == [49, 48]
    assert await ids(offset_date=at_50 + 1, limit=2) == [50, 49]
    assert await ids(offset_date=at_50, add_offset=-2, limit=4) == [51, 50, 49, 48]
    assert await ids(offset_date=DEFAULT_DATE, limit=5) == []  # nothing older than post 1


async def test_get_participant(rpc: TelegramRpc, world: World) -> None:
    chat = ichan(world, ACCOUNT_A, CHAT)
    bob = T.InputPeerUser(USER_BOB, world.access_hash("user", ACCOUNT_A, USER_BOB))
    got = await call(rpc, F.channels.GetParticipantRequest(chat, bob))
    assert isinstance(got.participant, T.ChannelParticipantAdmin)
    me = await call(rpc, F.channels.GetParticipantRequest(chat, T.InputPeerSelf()))
    assert isinstance(me.participant, T.ChannelParticipantSelf)
    req = F.channels.GetParticipantRequest(ichan(world, ACCOUNT_C, CHAT), T.InputPeerSelf())
    assert await fails(rpc, req, user=ACCOUNT_C) == "USER_NOT_PARTICIPANT"


async def test_log_out_unregisters_that_key_only(rpc: TelegramRpc) -> None:
    key = Bound(ACCOUNT_A, key=11)
    assert isinstance(await rpc(key.ctx, F.auth.LogOutRequest()), T.auth.LoggedOut)
    with pytest.raises(RpcError, match="AUTH_KEY_UNREGISTERED"):
        await rpc(key.ctx, F.updates.GetStateRequest())
    await rpc(Bound(ACCOUNT_A, key=12).ctx, F.updates.GetStateRequest())


@pytest.mark.parametrize(
    ("knob", "code", "error"),
    [("session_revoked", 401, "SESSION_REVOKED"), ("auth_key_duplicated", 406, "AUTH_KEY_DUPLICATED")],
)
async def test_more_account_fates(rpc: TelegramRpc, knob: str, code: int, error: str) -> None:
    getattr(rpc, knob)(ACCOUNT_C)
    with pytest.raises(RpcError) as info:
        await rpc(Bound(ACCOUNT_C).ctx, F.help.GetNearestDcRequest())
    assert (info.value.code, info.value.message) == (code, error)
    rpc.clear_faults()
    await rpc(Bound(ACCOUNT_C).ctx, F.help.GetNearestDcRequest())


async def test_fail_knob_answers_any_error_n_times(rpc: TelegramRpc) -> None:
    rpc.fail("updates.getState", 500, "INTERNAL", times=2, user_id=ACCOUNT_A)
    await call(rpc, F.updates.GetStateRequest(), user=ACCOUNT_B)
    for _ in range(2):
        with pytest.raises(RpcError) as info:
            await rpc(Bound(ACCOUNT_A).ctx, F.updates.GetStateRequest())
        assert (info.value.code, info.value.message) == (500, "INTERNAL")
    await call(rpc, F.updates.GetStateRequest())


async def test_rate_limit_escalates_per_account(world: World) -> None:
    now = [1000.0]
    rpc = TelegramRpc(world, clock=lambda: now[0])
    req = F.contacts.ResolveUsernameRequest("tgc_news")
    rpc.rate_limit("contacts.resolveUsername", calls=2, per=60, wait=30)
    await call(rpc, req)
    await call(rpc, req)
    assert await fails(rpc, req) == "FLOOD_WAIT_30"
    await call(rpc, req, user=ACCOUNT_B)  # another account has its own budget
    now[0] += 10
    assert await fails(rpc, req) == "FLOOD_WAIT_20"  # still waiting: the remainder
    now[0] += 21
    await call(rpc, req)
    await call(rpc, req)
    assert await fails(rpc, req) == "FLOOD_WAIT_60"  # second strike: doubled
    now[0] += 61
    await call(rpc, req)


async def test_get_difference_names_channels_that_changed_since_date(
    world: World,
) -> None:
    now = [2_000_000_000.0]
    rpc = TelegramRpc(world, clock=lambda: now[0])
    state = await call(rpc, F.updates.GetStateRequest())
    empty = await call(rpc, F.updates.GetDifferenceRequest(pts=state.pts, date=state.date, qts=0))
    assert isinstance(empty, T.updates.DifferenceEmpty)
    now[0] += 5
    await rpc.post_message(NEWS, "while you were away")
    diff = await call(rpc, F.updates.GetDifferenceRequest(pts=state.pts, date=state.date, qts=0))
    assert isinstance(diff, T.updates.Difference)
    assert diff.other_updates == [T.UpdateChannelTooLong(NEWS, pts=world.chats[NEWS].pts)]
    assert diff.state.pts == state.pts and NEWS in {c.id for c in diff.chats}
    later = await call(rpc, F.updates.GetDifferenceRequest(pts=state.pts, date=int(now[0]) + 1, qts=0))
    assert isinstance(later, T.updates.DifferenceEmpty)
    # Not a member: not named.
    other = await call(rpc, F.updates.GetDifferenceRequest(pts=1, date=state.date, qts=0), user=ACCOUNT_2FA)
    assert isinstance(other, T.updates.DifferenceEmpty)


async def test_a_group_post_without_sender_comes_from_the_creator(
    rpc: TelegramRpc, pushed: list[tuple[int, Any]]
) -> None:
    msg = await rpc.post_message(CHAT, "hello group")
    assert msg.from_id == USER_ALICE
    upd = dict(pushed)[ACCOUNT_A].updates[0]
    assert upd.message.from_id == T.PeerUser(USER_ALICE) and not upd.message.post
