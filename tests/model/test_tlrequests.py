"""model/tlrequests.py: which TL request fits a channel, a basic group or a user, and what
of Telegram's answer is kept. Pure functions over real Telethon TL objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from telethon import functions, types

from model import tlrequests as tl

DATE = datetime(2024, 1, 1, tzinfo=UTC)
CHANNEL = types.InputPeerChannel(2001, 77)
CHAT = types.InputPeerChat(2003)
USER = types.InputPeerUser(301, 55)


def channel(cid: int, username: str | None = None, **kw: Any) -> types.Channel:
    return types.Channel(
        cid, f"c{cid}", types.ChatPhotoEmpty(), DATE, access_hash=1, username=username, **kw
    )


def test_each_peer_kind_gets_its_own_request() -> None:
    assert isinstance(tl.full_request(CHANNEL), functions.channels.GetFullChannelRequest)
    assert tl.full_request(CHANNEL).channel == types.InputChannel(2001, 77)
    assert isinstance(tl.full_request(CHAT), functions.messages.GetFullChatRequest)
    assert isinstance(tl.full_request(USER), functions.users.GetFullUserRequest)
    assert isinstance(tl.messages_request(CHANNEL, [1]), functions.channels.GetMessagesRequest)
    assert isinstance(tl.messages_request(CHAT, [1]), functions.messages.GetMessagesRequest)
    assert isinstance(tl.leave_request(CHANNEL), functions.channels.LeaveChannelRequest)
    assert isinstance(tl.leave_request(CHAT), functions.messages.DeleteChatUserRequest)
    assert tl.leave_request(USER) is None  # nothing to leave


def test_the_history_window_starts_at_the_lower_of_offset_and_max() -> None:
    assert tl.history_request(CHANNEL, 10, 0, 0, 0).offset_id == 0  # the newest
    assert tl.history_request(CHANNEL, 10, 50, 0, 0).offset_id == 50
    far = tl.history_request(CHANNEL, 10, 0, 5, 14)
    assert (far.offset_id, far.max_id, far.min_id) == (14, 14, 5)
    assert tl.history_request(CHANNEL, 10, 9, 0, 14).offset_id == 9


def test_a_bad_message_id_blames_the_first_one_given() -> None:
    assert tl.history_blame(offset_id=0, max_id=9, min_id=3) == {
        "LIMIT_INVALID": "limit",
        "MSG_ID_INVALID": "max_id",
    }
    assert tl.history_blame(offset_id=0, max_id=0, min_id=0) == {"LIMIT_INVALID": "limit"}


def test_messages_by_id_keep_the_order_asked_and_only_this_peers() -> None:
    mine = [types.Message(i, types.PeerChannel(2001), DATE, "m") for i in (3, 1)]
    other = types.Message(2, types.PeerChannel(9), DATE, "elsewhere")
    found = tl.by_id_of([*mine, other], -(10**12) - 2001, [1, 2, 3])
    assert [m.id if m else None for m in found] == [1, None, 3]


def test_search_keeps_public_chats_results_first_each_once_cut_to_limit() -> None:
    public, mega = channel(1, "pub", broadcast=True), channel(2, "mega", megagroup=True)
    private = channel(3)  # no username: a chat the account is in must not show through
    collectible = channel(
        4, usernames=[types.Username("nft", active=True)], broadcast=True
    )  # an active collectible username is public
    group = types.Chat(5, "basic", types.ChatPhotoEmpty(), 3, DATE, 1)
    res = types.contacts.Found(
        my_results=[types.PeerChannel(3), types.PeerChannel(1), types.PeerChannel(4)],
        results=[types.PeerChannel(2), types.PeerChat(5), types.PeerChannel(1)],
        chats=[public, mega, private, collectible, group],
        users=[],
    )
    assert [c.id for c in tl.public_chats(res, 10)] == [2, 1, 4]
    assert [c.id for c in tl.public_chats(res, 2)] == [2, 1]


def test_an_offset_date_starts_the_window_instead_of_an_id() -> None:
    dated = tl.history_request(CHANNEL, 10, 50, 5, 40, offset_date=1_700_000_000)
    assert (dated.offset_id, dated.offset_date, dated.min_id, dated.max_id) == (
        0, 1_700_000_000, 5, 40
    )
    assert bytes(dated)  # serialised as Telegram's int date
    assert tl.history_request(CHANNEL, 10, 50, 0, 0).offset_date is None


def test_search_in_a_chat_names_its_filter_and_sender() -> None:
    bare = tl.search_request(CHANNEL, "word", None, None, 20, 0)
    assert isinstance(bare.filter, types.InputMessagesFilterEmpty) and bare.from_id is None
    photos = tl.search_request(CHAT, "", USER, "photo", 5, 99)
    assert isinstance(photos.filter, types.InputMessagesFilterPhotos)
    assert (photos.peer, photos.from_id, photos.limit, photos.offset_id) == (CHAT, USER, 5, 99)
    assert (photos.min_date, photos.max_date, photos.add_offset) == (None, None, 0)
    for name, cls in tl.SEARCH_FILTERS.items():
        assert isinstance(tl.search_request(CHANNEL, "", None, name, 1, 0).filter, cls)


def test_a_search_counts_what_telegram_counted() -> None:
    msgs = [types.Message(i, types.PeerChannel(2001), DATE, "m") for i in (3, 2)]
    whole = types.messages.Messages(messages=msgs, topics=[], chats=[], users=[])
    part = types.messages.MessagesSlice(count=40, messages=msgs, topics=[], chats=[], users=[])
    assert (tl.count_of(whole), tl.count_of(part)) == (2, 40)
def test_replies_ask_a_thread_newest_first_from_an_offset() -> None:
    req = tl.replies_request(CHANNEL, 12, 30, 400)
    assert isinstance(req, functions.messages.GetRepliesRequest)
    assert (req.peer, req.msg_id, req.limit, req.offset_id) == (CHANNEL, 12, 30, 400)
    assert (req.add_offset, req.min_id, req.max_id, req.offset_date) == (0, 0, 0, None)
    assert tl.REPLIES_BLAME["MSG_ID_INVALID"] == "msg_id"


def test_the_discussion_group_is_where_the_thread_lives() -> None:
    post_channel = channel(2001, "news", broadcast=True)
    group = channel(2103, "talk", megagroup=True)
    asked = -(10**12) - 2001
    comment = types.Message(5, types.PeerChannel(2103), DATE, "c")
    page = types.messages.ChannelMessages(
        pts=1, count=45, messages=[comment], topics=[], chats=[post_channel, group], users=[]
    )
    assert tl.discussion_of(page, asked) is group and tl.count_of(page) == 45
    empty = types.messages.ChannelMessages(
        pts=1, count=0, messages=[], topics=[], chats=[post_channel, group], users=[]
    )
    assert tl.discussion_of(empty, asked) is group and tl.count_of(empty) == 0
    # A megagroup's own thread: no discussion group.
    own = types.messages.ChannelMessages(
        pts=1, count=1, messages=[comment], topics=[], chats=[group], users=[]
    )
    assert tl.discussion_of(own, -(10**12) - 2103) is None
    whole = types.messages.Messages(messages=[comment], topics=[], chats=[group], users=[])
    assert tl.count_of(whole) == 1
