"""The TL side of an account's calls: which request fits the peer, what of the answer counts.

Pure functions over Telethon's TL objects, no I/O: `TeleClient` sends what these build and
hands them what came back. A channel (or megagroup), a basic group and a user each need
their own request for the same question; Telegram's answers mix the asked peer with others
that must not show through (search results, messages of other chats).

The `*_BLAME` maps name, for the Telegram errors that mean a caller's value is bad, the
argument of the TeleClient method that carried it (InvalidArgument on it, not a
TelegramError).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from telethon import functions, types, utils

from common.errors import PeerPrivate

SEARCH_BLAME = {"QUERY_TOO_SHORT": "q", "SEARCH_QUERY_EMPTY": "q", "LIMIT_INVALID": "limit"}
IDS_BLAME = {"MSG_ID_INVALID": "ids", "MESSAGE_IDS_EMPTY": "ids"}
PARTICIPANTS_BLAME = {"LIMIT_INVALID": "limit", "OFFSET_INVALID": "offset"}
SEARCH_MESSAGES_BLAME = {
    "LIMIT_INVALID": "limit",
    "MSG_ID_INVALID": "offset_id",
    "FROM_PEER_INVALID": "sender",
    "INPUT_FILTER_INVALID": "filter_name",
    "SEARCH_QUERY_EMPTY": "q",
}
# The message kinds messages.search can filter a chat's messages by, by the API's name.
# Telegram has more: mentions and calls are the serving account's own (meaningless for a
# pool); geo, contacts and chat photos are left out until the emulator's world can hold
# such messages and a test can prove them.
SEARCH_FILTERS: dict[str, type] = {
    "photo": types.InputMessagesFilterPhotos,
    "video": types.InputMessagesFilterVideo,
    "photo_video": types.InputMessagesFilterPhotoVideo,
    "document": types.InputMessagesFilterDocument,
    "url": types.InputMessagesFilterUrl,
    "voice": types.InputMessagesFilterVoice,
    "music": types.InputMessagesFilterMusic,
    "gif": types.InputMessagesFilterGif,
    "round_video": types.InputMessagesFilterRoundVideo,
    "round_voice": types.InputMessagesFilterRoundVoice,
    "pinned": types.InputMessagesFilterPinned,
}
# messages.getReplies: MSG_ID_INVALID is a message with no thread (none such, or a post of
# a channel without a discussion group).
REPLIES_BLAME = {"MSG_ID_INVALID": "msg_id", "LIMIT_INVALID": "limit"}
# At most this many members per channels.getParticipants (Telegram's own cap).
PARTICIPANTS_PAGE = 200


def input_channel(p: Any) -> Any:
    """types.InputChannel of an InputPeerChannel."""
    return types.InputChannel(p.channel_id, p.access_hash)


def full_request(p: Any) -> Any:
    """channels.getFullChannel, messages.getFullChat or users.getFullUser for the peer."""
    if isinstance(p, types.InputPeerChannel):
        return functions.channels.GetFullChannelRequest(input_channel(p))
    if isinstance(p, types.InputPeerChat):
        return functions.messages.GetFullChatRequest(p.chat_id)
    return functions.users.GetFullUserRequest(types.InputUser(p.user_id, p.access_hash))


def full_of(res: Any) -> tuple[list[Any], Any]:
    """(the entities to find the peer among, its ChannelFull | ChatFull | UserFull)."""
    if isinstance(res, types.users.UserFull):
        return res.users, res.full_user
    return res.chats, res.full_chat


def history_request(
    p: Any, limit: int, offset_id: int, min_id: int, max_id: int, offset_date: int | None = None
) -> Any:
    """messages.getHistory, newest first; offset_id, min_id, max_id exclusive (0: none).
    With `offset_date` (unix seconds) the window starts at the newest message strictly
    older than it instead of at an id (which of the two Telegram honours when both are
    sent is not documented, so one is); min_id and max_id still filter it."""
    # Telegram takes `limit` messages from offset_id (0: the newest) and only then drops
    # those outside min_id..max_id: a max_id far below the newest would give an empty
    # page. Start the window at the lower of offset_id and max_id instead, as Telethon's
    # iter_messages does.
    top = 0 if offset_date is not None else window_top(offset_id, max_id)
    return functions.messages.GetHistoryRequest(
        peer=p,
        offset_id=top,
        offset_date=offset_date,
        add_offset=0,
        limit=limit,
        max_id=max_id,
        min_id=min_id,
        hash=0,
    )


def window_top(offset_id: int, max_id: int) -> int:
    """The id a history window starts below: the lower of offset_id and max_id (0: none)."""
    return min(i for i in (offset_id, max_id) if i) if offset_id or max_id else 0


def history_blame(**ids: int) -> dict[str, str]:
    """A bad message id in messages.getHistory is the first one the caller gave."""
    given = [name for name, value in ids.items() if value]
    return {"LIMIT_INVALID": "limit"} | ({"MSG_ID_INVALID": given[0]} if given else {})


def search_request(
    p: Any, q: str, from_peer: Any | None, filter_name: str | None, limit: int, offset_id: int
) -> Any:
    """messages.search in one chat: `q` (may be empty), sent by `from_peer` (an InputPeer),
    of the kind `filter_name` names (a key of SEARCH_FILTERS), older than offset_id."""
    return functions.messages.SearchRequest(
        peer=p,
        q=q,
        filter=SEARCH_FILTERS[filter_name]() if filter_name else types.InputMessagesFilterEmpty(),
        min_date=None,
        max_date=None,
        offset_id=offset_id,
        add_offset=0,
        limit=limit,
        max_id=0,
        min_id=0,
        hash=0,
        from_id=from_peer,
    )


def replies_request(p: Any, msg_id: int, limit: int, offset_id: int) -> Any:
    """messages.getReplies: the comments of a channel post (held in its discussion group) or
    the reply thread of a megagroup message; newest first, offset_id exclusive."""
    return functions.messages.GetRepliesRequest(
        peer=p,
        msg_id=msg_id,
        offset_id=offset_id,
        offset_date=None,
        add_offset=0,
        limit=limit,
        max_id=0,
        min_id=0,
        hash=0,
    )


def count_of(res: Any) -> int:
    """How many messages match in all: a slice's (or a channel's) `count`, else the page's
    own length (messages.messages is the whole result)."""
    count = getattr(res, "count", None)
    return len(messages_of(res)) if count is None else int(count)


def discussion_of(res: Any, asked: int) -> Any | None:
    """The discussion megagroup a getReplies answer read from: the chat its messages are
    in, or (an empty page) the one megagroup it names besides the asked peer; None when
    the thread is in the asked peer itself (a megagroup's own reply thread)."""
    groups = {
        utils.get_peer_id(c): c
        for c in getattr(res, "chats", [])
        if isinstance(c, types.Channel) and c.megagroup
    }
    for msg in getattr(res, "messages", []):
        peer = getattr(msg, "peer_id", None)
        if peer is not None:
            found = utils.get_peer_id(peer)
            return None if found == asked else groups.get(found)
    others = [c for marked, c in groups.items() if marked != asked]
    return others[0] if len(others) == 1 else None


def messages_request(p: Any, ids: list[int]) -> Any:
    """channels.getMessages for a channel, messages.getMessages (the account's common box
    of users and basic groups) for the rest."""
    wanted = [types.InputMessageID(i) for i in ids]
    if isinstance(p, types.InputPeerChannel):
        return functions.channels.GetMessagesRequest(input_channel(p), wanted)
    return functions.messages.GetMessagesRequest(wanted)


def entities_of(res: Any) -> list[Any]:
    """The chats and users an answer carries."""
    return [*getattr(res, "chats", []), *getattr(res, "users", [])]


def messages_of(res: Any) -> list[Any]:
    """An answer's messages, without the empty ones (ids that do not exist)."""
    # Telethon's own get_messages also runs each message's _finish_init (sender and
    # chat objects, the client reference): ~0.45 ms a page of 100, a seventh of an API
    # answer's CPU, for attributes nobody here reads (the parser and the subscriber
    # read the TL fields). The messages are Telethon's custom Message all the same.
    return [m for m in getattr(res, "messages", []) if not isinstance(m, types.MessageEmpty)]


def by_id_of(messages: Iterable[Any], marked_id: int, ids: list[int]) -> list[Any | None]:
    """The peer's messages in the order of `ids`, None where one is missing.
    messages.getMessages is not scoped to a chat: other chats' messages are dropped."""
    found = {m.id: m for m in messages if utils.get_peer_id(m.peer_id) == marked_id}
    return [found.get(i) for i in ids]


def participants_request(p: Any, limit: int, offset: int) -> Any:
    """channels.getParticipants: the recent members, at most PARTICIPANTS_PAGE."""
    return functions.channels.GetParticipantsRequest(
        input_channel(p),
        types.ChannelParticipantsRecent(),
        offset,
        min(limit, PARTICIPANTS_PAGE),
        hash=0,
    )


def participant_users(res: Any) -> list[Any]:
    """The users of a channels.channelParticipants answer, in the answer's order."""
    users = {u.id: u for u in res.users}
    ids = [_participant_user_id(x) for x in res.participants]
    return [users[i] for i in ids if i in users]


def _participant_user_id(participant: Any) -> int:
    if hasattr(participant, "peer"):  # channelParticipantBanned / Left name a peer
        return int(utils.get_peer_id(participant.peer, add_mark=False))
    return int(participant.user_id)


def chat_members(res: Any, raw: str) -> list[Any]:
    """Every member of a basic group, from its messages.chatFull; PeerPrivate when the
    account may not see them (chatParticipantsForbidden)."""
    members = getattr(res.full_chat.participants, "participants", None)
    if members is None:
        raise PeerPrivate(raw, f"{raw}: its members are hidden from this account")
    users = {u.id: u for u in res.users}
    return [users[m.user_id] for m in members if m.user_id in users]


def public_chats(res: Any, limit: int) -> list[Any]:
    """The public channels and groups of a contacts.found, at most `limit`.

    Telegram answers `results` (global) and `my_results` (what this account is in or has
    as contacts, private chats included): both are read, global ones first, each chat
    once, and only a public one is kept: a channel or megagroup with a username (its own
    or an active collectible one). A basic group has none, and a private chat the account
    is in must not show through (it would leak the pool's memberships); users and bots
    are not chats. Each list is capped by Telegram separately, so the merged one is cut
    to `limit` here."""

    def public(chat: Any) -> bool:
        if not isinstance(chat, types.Channel):  # Chat, ChatForbidden, ChannelForbidden
            return False
        return bool(chat.username) or any(u.active for u in chat.usernames or ())

    chats = {utils.get_peer_id(c): c for c in res.chats if public(c)}
    order = [utils.get_peer_id(p) for p in [*res.results, *res.my_results]]
    seen: set[int] = set()
    out = []
    for marked in order:
        if marked in chats and marked not in seen:
            seen.add(marked)
            out.append(chats[marked])
    return out[:limit]


def leave_request(p: Any) -> Any | None:
    """channels.leaveChannel or messages.deleteChatUser(self); None for a user."""
    if isinstance(p, types.InputPeerChannel):
        return functions.channels.LeaveChannelRequest(input_channel(p))
    if isinstance(p, types.InputPeerChat):
        return functions.messages.DeleteChatUserRequest(p.chat_id, types.InputUserSelf())
    return None
