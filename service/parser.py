"""Telethon objects → the contract's plain dicts, plus a `Media` for every file.

Pure functions, no I/O. Every value in the output is a plain JSON type (dict, list, str,
int, float, bool, None): no Telethon object, datetime or bytes leaks out, so the handler and
the publisher can hand the dicts straight to orjson.

Conventions (also in docs/, for the crawler team):
- Dates are ISO 8601 in UTC with a `Z` suffix and whole seconds: `2024-05-01T12:00:00Z`.
- Ids of peers are Bot-API marked ids: users positive, basic groups `-id`, channels and
  megagroups `-100…id`. This holds for `peer_id`, `from_id`, `fwd_from.from_id`, linked
  chats and the peers inside `action`.
- Bytes (rare: inside some service actions) are base64 strings.
- `media` is null or a media descriptor (the contract's fields). A message carries at most
  one file: a photo, a document, or a link preview's photo (`webpage_photo`; the preview's
  document when it has no photo). Media without a file (geo, venue, contact, poll, dice,
  game, invoice, story, giveaway, …) give `media: null` and a small `media_info` dict
  whose `type` names the kind (`geo`, `poll`, …) and whose other keys are its plain fields;
  `media_info` is null otherwise. A link preview adds `webpage` (url, display_url,
  site_name, title, description, type); it is null otherwise.
- `action` is null for ordinary messages; for service messages a dict with `type` (the TL
  name without `MessageAction`, in snake case: `chat_add_user`, `pin_message`, …) and the
  action's fields as plain values (peers as marked ids; a new chat photo as a media
  descriptor, its `Media` returned with the others).
- `replies` is the number of comments (a channel post) or replies (a group message), from
  Telegram's MessageReplies, null when the message has no thread; `replies_info` is that
  MessageReplies in full (null likewise): `replies`, `comments` (true: a channel post's
  comments, held in the discussion group `discussion_id`, a marked id), `max_id` (the
  newest one's id in the chat holding the thread), `read_max_id`, `recent_repliers`
  (marked ids). GET /api/v1/replies reads the thread itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from telethon.tl import types
from telethon.tl.tlobject import TLObject
from telethon.utils import get_peer_id

from common.utils import utc_iso
from model.media import Media, media_from_document, media_from_photo

log = logging.getLogger(__name__)

# Keys every parsed message has, in the contract's order, then ours.
MESSAGE_FIELDS = (
    "id",
    "peer_id",
    "date",
    "edit_date",
    "text",
    "entities",
    "from_id",
    "post_author",
    "views",
    "forwards",
    "replies",
    "reply_to_msg_id",
    "fwd_from",
    "grouped_id",
    "pinned",
    "action",
    "media",
    # beyond the contract's minimum
    "reply_to_top_id",
    "post",
    "silent",
    "noforwards",
    "via_bot_id",
    "ttl_period",
    "reactions",
    "media_info",
    "webpage",
    "replies_info",
)

PEER_FIELDS = (
    "id",
    "type",
    "title",
    "first_name",
    "last_name",
    "username",
    "about",
    "participants_count",
    "verified",
    "scam",
    "fake",
    "date",
    "linked_chat_id",
    "photo",
)

_PEERS = (types.PeerUser, types.PeerChat, types.PeerChannel)
_INT64 = 2**63


# -- plain values ---------------------------------------------------------------------


def marked_id(peer: Any) -> int | None:
    """The Bot-API marked id of a Peer (or a User, Chat, Channel), None for None."""
    if peer is None:
        return None
    # The three Peer kinds directly (several per message); the rest by Telethon's rule.
    kind = type(peer)
    if kind is types.PeerChannel:
        return -(10**12) - int(peer.channel_id)
    if kind is types.PeerUser:
        return int(peer.user_id)
    if kind is types.PeerChat:
        return -int(peer.chat_id)
    return int(get_peer_id(peer, add_mark=True))


_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(cls: type) -> tuple[str, ...]:
    # A TL class's fields are its __init__ parameters (Telethon generates them so).
    names = _FIELDS.get(cls)
    if names is None:
        # Classes without fields inherit object.__init__, which has no __code__.
        # mypy: accessing __init__ on a class is "unsound" in general; here it is only read.
        code = getattr(cls.__init__, "__code__", None)  # type: ignore[misc]
        names = tuple(code.co_varnames[1 : code.co_argcount]) if code else ()
        _FIELDS[cls] = names
    return names


@functools.cache
def _snake(name: str, prefix: str) -> str:
    base = name[len(prefix) :] if name.startswith(prefix) and name != prefix else name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", base).lower()


def plain(value: Any, prefix: str = "") -> Any:
    """Any TL value as plain JSON types: peers become marked ids, TL objects dicts with a
    snake-case `type` (minus `prefix`), datetimes ISO strings, bytes base64."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        # orjson refuses integers past 64 bits (int128 nonces and the like).
        return value if -_INT64 <= value < 2 * _INT64 else str(value)
    if isinstance(value, _PEERS):
        return marked_id(value)
    if isinstance(value, dt.datetime):
        return utc_iso(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, types.Photo | types.Document):
        # Files inside polls, games, stories: named, not offered for download (their
        # access hash and reference are the account's and mean nothing to a crawler).
        return {"type": _snake(type(value).__name__, ""), "id": value.id}
    if isinstance(value, TLObject):
        return _plain_object(value, prefix)
    return str(value)


def _plain_object(obj: TLObject, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _fields(type(obj)):
        key = "type_" if name == "type" else name
        out[key] = plain(getattr(obj, name, None))
    out["type"] = _snake(type(obj).__name__, prefix)
    return out


# -- messages -------------------------------------------------------------------------


def parse_message(msg: Any, account: str) -> tuple[dict[str, Any], list[Media]]:
    """A Message or MessageService → (the contract's message dict, its files as Media).

    `account` is the name of the TeleClient that fetched it: each Media is bound to it,
    because the access hash and file reference are that account's.
    """
    if not isinstance(msg, types.Message | types.MessageService):
        raise TypeError(f"not a message: {type(msg).__name__}")
    peer_id = marked_id(msg.peer_id)
    media: list[Media] = []
    out: dict[str, Any] = {
        "id": msg.id,
        "peer_id": peer_id,
        "date": utc_iso(msg.date),
        "edit_date": utc_iso(getattr(msg, "edit_date", None)),
        "text": msg.message or "",
        "entities": _entities(msg.entities),
        "from_id": marked_id(msg.from_id),
        "post_author": getattr(msg, "post_author", None),
        "views": getattr(msg, "views", None),
        "forwards": getattr(msg, "forwards", None),
        "replies": msg.replies.replies if getattr(msg, "replies", None) else None,
        "reply_to_msg_id": None,
        "fwd_from": _fwd_from(msg.fwd_from),
        "grouped_id": getattr(msg, "grouped_id", None),
        "pinned": bool(msg.pinned),
        "action": None,
        "media": None,
        "reply_to_top_id": None,
        "post": bool(msg.post),
        "silent": bool(msg.silent),
        "noforwards": bool(msg.noforwards),
        "via_bot_id": getattr(msg, "via_bot_id", None),
        "ttl_period": msg.ttl_period,
        "reactions": _reactions(getattr(msg, "reactions", None)),
        "media_info": None,
        "webpage": None,
        "replies_info": _replies_info(getattr(msg, "replies", None)),
    }
    reply = msg.reply_to
    if isinstance(reply, types.MessageReplyHeader):
        out["reply_to_msg_id"] = reply.reply_to_msg_id
        out["reply_to_top_id"] = reply.reply_to_top_id
    if isinstance(msg, types.MessageService):
        out["action"] = _action(msg.action, account, peer_id, msg.id, media)
    elif msg.media is not None:
        _message_media(msg.media, out, account, peer_id, msg.id, media)
    return out, media


def parse_messages(
    msgs: Iterable[Any], account: str
) -> tuple[list[dict[str, Any] | None], list[Media]]:
    """Keeps the order; a missing message (None or MessageEmpty) is None in its place."""
    out: list[dict[str, Any] | None] = []
    media: list[Media] = []
    for msg in msgs:
        if msg is None or isinstance(msg, types.MessageEmpty):
            out.append(None)
            continue
        item, files = parse_message(msg, account)
        out.append(item)
        media.extend(files)
    return out, media


def _entities(entities: list[Any] | None) -> list[dict[str, Any]]:
    if not entities:
        return []
    return [_plain_object(e, "MessageEntity") for e in entities]


def _fwd_from(fwd: types.MessageFwdHeader | None) -> dict[str, Any] | None:
    if fwd is None:
        return None
    return {
        "from_id": marked_id(fwd.from_id),
        "from_name": fwd.from_name,
        "date": utc_iso(fwd.date),
        "channel_post": fwd.channel_post,
        "post_author": fwd.post_author,
        "saved_from_peer": marked_id(fwd.saved_from_peer),
        "saved_from_msg_id": fwd.saved_from_msg_id,
        "psa_type": fwd.psa_type,
    }


def _replies_info(replies: types.MessageReplies | None) -> dict[str, Any] | None:
    if replies is None:
        return None
    group = replies.channel_id
    return {
        "replies": replies.replies,
        "comments": bool(replies.comments),
        "discussion_id": None if group is None else marked_id(types.PeerChannel(group)),
        "max_id": replies.max_id,
        "read_max_id": replies.read_max_id,
        "recent_repliers": [marked_id(p) for p in replies.recent_repliers or []],
    }


def _reactions(reactions: types.MessageReactions | None) -> list[dict[str, Any]] | None:
    if reactions is None:
        return None
    out = []
    for item in reactions.results or []:
        reaction = item.reaction
        if isinstance(reaction, types.ReactionEmoji):
            name = reaction.emoticon
        elif isinstance(reaction, types.ReactionCustomEmoji):
            name = f"custom:{reaction.document_id}"
        else:
            name = _snake(type(reaction).__name__, "Reaction")
        out.append({"reaction": name, "count": item.count})
    return out


def _message_media(
    mm: Any,
    out: dict[str, Any],
    account: str,
    peer_id: int | None,
    msg_id: int,
    media: list[Media],
) -> None:
    found: Media | None = None
    if isinstance(mm, types.MessageMediaPhoto):
        if isinstance(mm.photo, types.Photo):
            found = media_from_photo(mm.photo, account=account, peer_id=peer_id, msg_id=msg_id)
    elif isinstance(mm, types.MessageMediaDocument):
        if isinstance(mm.document, types.Document):
            hint = "round" if mm.round else "voice" if mm.voice else "video" if mm.video else None
            found = media_from_document(
                mm.document, account=account, peer_id=peer_id, msg_id=msg_id, hint=hint
            )
    elif isinstance(mm, types.MessageMediaWebPage):
        out["webpage"] = _webpage(mm.webpage)
        found = _webpage_file(mm.webpage, account, peer_id, msg_id)
    elif not isinstance(mm, types.MessageMediaEmpty):
        out["media_info"] = _plain_object(mm, "MessageMedia")
    if found is not None:
        media.append(found)
        out["media"] = found.descriptor()


def _webpage(page: Any) -> dict[str, Any]:
    return {
        "url": getattr(page, "url", None),
        "display_url": getattr(page, "display_url", None),
        "site_name": getattr(page, "site_name", None),
        "title": getattr(page, "title", None),
        "description": getattr(page, "description", None),
        "type": getattr(page, "type", None),
    }


def _webpage_file(page: Any, account: str, peer_id: int | None, msg_id: int) -> Media | None:
    photo = getattr(page, "photo", None)
    if isinstance(photo, types.Photo):
        return media_from_photo(
            photo, type="webpage_photo", account=account, peer_id=peer_id, msg_id=msg_id
        )
    document = getattr(page, "document", None)
    if isinstance(document, types.Document):
        return media_from_document(document, account=account, peer_id=peer_id, msg_id=msg_id)
    return None


def _action(
    action: Any, account: str, peer_id: int | None, msg_id: int, media: list[Media]
) -> dict[str, Any] | None:
    if action is None or isinstance(action, types.MessageActionEmpty):
        return None
    photo = getattr(action, "photo", None)
    if isinstance(action, types.MessageActionChatEditPhoto) and isinstance(photo, types.Photo):
        found = media_from_photo(photo, account=account, peer_id=peer_id, msg_id=msg_id)
        out: dict[str, Any] = {"type": "chat_edit_photo", "photo": None}
        if found is not None:
            media.append(found)
            out["photo"] = found.descriptor()
        return out
    return _plain_object(action, "MessageAction")


# -- peers ----------------------------------------------------------------------------


def parse_peer(
    entity: Any, full: Any = None, account: str = ""
) -> tuple[dict[str, Any], list[Media]]:
    """A Channel, Chat or User (plus, when given, its full info: `messages.ChatFull`,
    `users.UserFull` or their inner `ChannelFull`/`ChatFull`/`UserFull`) → the contract's
    peer dict and the peer's photo as Media (only with the full info: its Photo carries the
    access hash and reference that a download needs).

    `date` is Telegram's `date` of the chat: its creation date, or when the account joined
    it if it is a member. Users have none.
    """
    inner = _unwrap_full(full)
    if isinstance(entity, types.User | types.UserEmpty):
        out = parse_user(entity)
    elif isinstance(entity, types.Channel | types.ChannelForbidden):
        out = _channel(entity)
    elif isinstance(entity, types.Chat | types.ChatForbidden | types.ChatEmpty):
        out = _chat(entity)
    else:
        raise TypeError(f"not a peer: {type(entity).__name__}")
    media: list[Media] = []
    if inner is not None:
        _apply_full(out, inner, account, media)
    return _ordered(out), media


def _unwrap_full(full: Any) -> Any:
    if isinstance(full, types.messages.ChatFull):
        return full.full_chat
    if isinstance(full, types.users.UserFull):
        return full.full_user
    return full


def _base_peer(entity: Any, kind: str) -> dict[str, Any]:
    return {
        "id": marked_id(entity),
        "type": kind,
        "title": getattr(entity, "title", None),
        "first_name": None,
        "last_name": None,
        "username": _username(entity),
        "about": None,
        "participants_count": getattr(entity, "participants_count", None),
        "verified": bool(getattr(entity, "verified", False)),
        "scam": bool(getattr(entity, "scam", False)),
        "fake": bool(getattr(entity, "fake", False)),
        "date": utc_iso(getattr(entity, "date", None)),
        "linked_chat_id": None,
        "photo": None,
    }


def _channel(entity: types.Channel | types.ChannelForbidden) -> dict[str, Any]:
    group = bool(entity.megagroup) or bool(getattr(entity, "gigagroup", False))
    out = _base_peer(entity, "megagroup" if group else "channel")
    out["forbidden"] = isinstance(entity, types.ChannelForbidden)
    out["restricted"] = bool(getattr(entity, "restricted", False))
    return out


def _chat(entity: Any) -> dict[str, Any]:
    out = _base_peer(entity, "group")
    out["forbidden"] = not isinstance(entity, types.Chat)
    migrated = getattr(entity, "migrated_to", None)
    if isinstance(migrated, types.InputChannel):
        out["migrated_to"] = marked_id(types.PeerChannel(migrated.channel_id))
    return out


def _username(entity: Any) -> str | None:
    name = getattr(entity, "username", None)
    if name:
        return str(name)
    for item in getattr(entity, "usernames", None) or []:
        if item.active:
            return str(item.username)
    return None


def _apply_full(out: dict[str, Any], full: Any, account: str, media: list[Media]) -> None:
    out["about"] = getattr(full, "about", None) or out["about"]
    if isinstance(full, types.ChannelFull):
        if full.participants_count is not None:
            out["participants_count"] = full.participants_count
        if full.linked_chat_id:
            out["linked_chat_id"] = marked_id(types.PeerChannel(full.linked_chat_id))
        photo = full.chat_photo
    elif isinstance(full, types.ChatFull):
        participants = getattr(full.participants, "participants", None)
        if out["participants_count"] is None and participants is not None:
            out["participants_count"] = len(participants)
        photo = full.chat_photo
    elif isinstance(full, types.UserFull):
        photo = full.profile_photo
    else:
        raise TypeError(f"not a full peer: {type(full).__name__}")
    if isinstance(photo, types.Photo):
        found = media_from_photo(photo, account=account, peer_id=out["id"])
        if found is not None:
            media.append(found)
            out["photo"] = found.descriptor()


def _ordered(out: dict[str, Any]) -> dict[str, Any]:
    return {**{k: out.get(k) for k in PEER_FIELDS}, **out}


def parse_user(user: Any) -> dict[str, Any]:
    """A User (a participant, a bot, an author) → a peer dict of type user or bot."""
    if isinstance(user, types.UserEmpty):
        out = _base_peer(user, "user")
        out["deleted"] = True
        return _ordered(out)
    out = _base_peer(user, "bot" if user.bot else "user")
    out["first_name"] = user.first_name
    out["last_name"] = user.last_name
    out["deleted"] = bool(user.deleted)
    out["premium"] = bool(user.premium)
    out["status"] = _status(user.status)
    return _ordered(out)


def _status(status: Any) -> dict[str, Any] | None:
    if status is None or isinstance(status, types.UserStatusEmpty):
        return None
    out: dict[str, Any] = {"type": _snake(type(status).__name__, "UserStatus")}
    if isinstance(status, types.UserStatusOffline):
        out["was_online"] = utc_iso(status.was_online)
    return out


def parse_search_result(entity: Any) -> dict[str, Any]:
    """A chat or user found by `contacts.search`: the peer dict without full info."""
    return parse_peer(entity)[0]


# -- refreshing a file reference --------------------------------------------------------


def fresh_reference(obj: Any, media: Media) -> bytes | None:
    """The file reference of `media`'s file inside a freshly fetched message or full peer
    (FILE_REFERENCE_EXPIRED: fetch again with the same account, take the new reference).
    None when the file is no longer there (the message was edited or deleted)."""
    for item in _files_in(obj):
        kind = "photo" if isinstance(item, types.Photo) else "document"
        if kind == media.kind and item.id == media.file_id:
            return bytes(item.file_reference or b"")
    return None


def _files_in(obj: Any) -> Iterator[Any]:
    obj = _unwrap_full(obj)
    for attr in ("photo", "document", "chat_photo", "profile_photo", "webpage", "action", "media"):
        value = getattr(obj, attr, None)
        if isinstance(value, types.Photo | types.Document):
            yield value
        elif (
            value is not None
            and isinstance(value, TLObject)
            and attr in ("webpage", "action", "media")
        ):
            yield from _files_in(value)
