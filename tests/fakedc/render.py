"""World objects → the Telethon TL objects one viewing account receives.

Everything identity-bearing is per viewer: access hashes, file references, `left` on a
Channel, `is_self` on a User, `out` on a Message. Kept apart from rpc.py so the request
handlers read as rules, not as object construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from telethon.tl import types

from tests.fakedc.world import (
    BROADCAST,
    MEGAGROUP,
    ChatSpec,
    DocumentSpec,
    MessageSpec,
    PhotoSpec,
    SizeSpec,
    UserSpec,
    World,
)

# --- file keys (what files.py generates bytes for) ---------------------------------------


def photo_file_key(photo_id: int, size_type: str) -> int:
    return photo_id * 1000 + ord(size_type[0])


def document_file_key(doc_id: int) -> int:
    return doc_id * 1000


def thumb_file_key(doc_id: int, size_type: str) -> int:
    return doc_id * 1000 + ord(size_type[0])


# --- peers ----------------------------------------------------------------------------


def user(world: World, spec: UserSpec, viewer: int | None) -> types.User:
    is_self = viewer == spec.id
    return types.User(
        id=spec.id,
        is_self=is_self,
        access_hash=world.access_hash("user", viewer, spec.id),
        first_name=spec.first_name or None,
        last_name=spec.last_name or None,
        username=spec.username,
        phone=spec.phone if is_self else None,
        bot=spec.bot,
        bot_info_version=1 if spec.bot else None,
        bot_nochats=spec.bot or None,
        verified=spec.verified,
        scam=spec.scam,
        fake=spec.fake,
        photo=_user_photo(world, spec),
        status=None if spec.bot else types.UserStatusRecently(),
    )


def _user_photo(world: World, spec: UserSpec) -> types.UserProfilePhoto | None:
    if spec.photo is None:
        return None
    return types.UserProfilePhoto(photo_id=spec.photo, dc_id=world.photos[spec.photo].dc_id)


def _chat_photo(world: World, photo_id: int | None) -> Any:
    if photo_id is None:
        return types.ChatPhotoEmpty()
    return types.ChatPhoto(photo_id=photo_id, dc_id=world.photos[photo_id].dc_id)


def chat(world: World, spec: ChatSpec, viewer: int | None, forbidden: bool = False) -> Any:
    """A Channel (left reflects the viewer), ChannelForbidden (banned / private to them),
    Chat or ChatForbidden."""
    if not spec.is_channel:
        if forbidden:
            return types.ChatForbidden(id=spec.id, title=spec.title)
        return types.Chat(
            id=spec.id,
            title=spec.title,
            photo=_chat_photo(world, spec.photo),
            participants_count=spec.participants_count,
            date=spec.date,
            version=1,
            creator=viewer == spec.creator_id,
            left=viewer is not None and viewer not in spec.members,
        )
    access_hash = world.access_hash("channel", viewer, spec.id)
    if forbidden:
        return types.ChannelForbidden(
            id=spec.id,
            access_hash=access_hash,
            title=spec.title,
            broadcast=spec.kind == BROADCAST,
            megagroup=spec.kind == MEGAGROUP,
        )
    is_admin = viewer is not None and (viewer in spec.admins or viewer == spec.creator_id)
    return types.Channel(
        id=spec.id,
        title=spec.title,
        photo=_chat_photo(world, spec.photo),
        date=spec.date,
        creator=viewer == spec.creator_id,
        left=viewer not in spec.members,
        broadcast=spec.kind == BROADCAST,
        megagroup=spec.kind == MEGAGROUP,
        verified=spec.verified,
        scam=spec.scam,
        fake=spec.fake,
        signatures=spec.signatures,
        has_link=spec.linked_chat_id is not None,
        join_request=spec.join_request or None,
        join_to_send=(spec.join_request and spec.kind == MEGAGROUP) or None,
        access_hash=access_hash,
        username=spec.username,
        admin_rights=admin_rights() if is_admin else None,
        participants_count=spec.participants_count,
    )


def admin_rights() -> types.ChatAdminRights:
    return types.ChatAdminRights(
        change_info=True,
        post_messages=True,
        edit_messages=True,
        delete_messages=True,
        ban_users=True,
        invite_users=True,
        pin_messages=True,
    )


def peer_of_chat(spec: ChatSpec) -> types.PeerChannel | types.PeerChat:
    return types.PeerChannel(spec.id) if spec.is_channel else types.PeerChat(spec.id)


# --- files ----------------------------------------------------------------------------


def _photo_size(spec: SizeSpec) -> Any:
    if spec.progressive:
        # Progressive JPEG: the client reads the largest of `sizes` as the size to fetch.
        steps = [spec.size // 8, spec.size // 4, spec.size // 2, spec.size]
        return types.PhotoSizeProgressive(type=spec.type, w=spec.w, h=spec.h, sizes=steps)
    return types.PhotoSize(type=spec.type, w=spec.w, h=spec.h, size=spec.size)


_STRIPPED = bytes.fromhex("0128280000")  # a header-only stripped preview: enough for clients


def photo(world: World, spec: PhotoSpec, viewer: int, context: str) -> types.Photo:
    sizes: list[Any] = []
    if spec.stripped:
        sizes.append(types.PhotoStrippedSize(type="i", bytes=_STRIPPED))
    sizes.extend(_photo_size(s) for s in spec.sizes)
    return types.Photo(
        id=spec.id,
        access_hash=world.access_hash("photo", viewer, spec.id),
        file_reference=world.file_reference(viewer, "photo", spec.id, context),
        date=spec.date,
        sizes=sizes,
        dc_id=spec.dc_id,
    )


def document(world: World, spec: DocumentSpec, viewer: int, context: str) -> types.Document:
    thumbs = [types.PhotoSize(type="m", w=320, h=180, size=9_000 + spec.id % 500)]
    return types.Document(
        id=spec.id,
        access_hash=world.access_hash("document", viewer, spec.id),
        file_reference=world.file_reference(viewer, "document", spec.id, context),
        date=spec.date,
        mime_type=spec.mime_type,
        size=spec.size,
        dc_id=spec.dc_id,
        attributes=document_attributes(spec),
        thumbs=thumbs if spec.thumb else None,
    )


def thumb_size(spec: DocumentSpec, type_: str) -> int | None:
    return 9_000 + spec.id % 500 if spec.thumb and type_ == "m" else None


def document_attributes(spec: DocumentSpec) -> list[Any]:
    """The attributes Telegram attaches per kind (what Telethon reads to tell them apart)."""
    attrs: list[Any] = []
    if spec.kind in ("video", "round", "animation"):
        attrs.append(
            types.DocumentAttributeVideo(
                duration=float(spec.duration),
                w=spec.w or 1280,
                h=spec.h or 720,
                round_message=spec.kind == "round" or None,
                supports_streaming=spec.kind == "video" or None,
                nosound=spec.kind == "animation" or None,
            )
        )
    if spec.kind == "animation":
        attrs.append(types.DocumentAttributeAnimated())
    if spec.kind in ("audio", "voice"):
        attrs.append(
            types.DocumentAttributeAudio(
                duration=spec.duration,
                voice=spec.kind == "voice" or None,
                title=spec.title or None,
                performer=spec.performer or None,
                waveform=b"\x00\x10\x20" if spec.kind == "voice" else None,
            )
        )
    if spec.kind == "sticker":
        attrs.append(types.DocumentAttributeImageSize(w=spec.w or 512, h=spec.h or 512))
        attrs.append(
            types.DocumentAttributeSticker(
                alt=spec.alt or "🙂", stickerset=types.InputStickerSetEmpty()
            )
        )
    if spec.file_name:
        attrs.append(types.DocumentAttributeFilename(file_name=spec.file_name))
    return attrs


def media(world: World, msg: MessageSpec, viewer: int) -> Any:
    if not msg.media:
        return None
    context = f"msg:{msg.chat}:{msg.id}"
    ((kind, ref),) = msg.media.items()
    if kind == "photo":
        return types.MessageMediaPhoto(photo=photo(world, world.photos[ref], viewer, context))
    if kind == "document":
        spec = world.documents[ref]
        return types.MessageMediaDocument(
            document=document(world, spec, viewer, context),
            video=spec.kind in ("video", "round") or None,
            round=spec.kind == "round" or None,
            voice=spec.kind == "voice" or None,
        )
    page = world.webpages[ref]
    return types.MessageMediaWebPage(
        webpage=types.WebPage(
            id=page.id,
            url=page.url,
            display_url=page.url.split("://", 1)[-1],
            hash=0,
            type="article" if page.photo is None else "photo",
            site_name=page.site_name or None,
            title=page.title or None,
            description=page.description or None,
            photo=None
            if page.photo is None
            else photo(world, world.photos[page.photo], viewer, context),
        )
    )


# --- messages -------------------------------------------------------------------------

_ENTITY: dict[str, Any] = {
    "bold": types.MessageEntityBold,
    "italic": types.MessageEntityItalic,
    "underline": types.MessageEntityUnderline,
    "strike": types.MessageEntityStrike,
    "spoiler": types.MessageEntitySpoiler,
    "code": types.MessageEntityCode,
    "url": types.MessageEntityUrl,
    "email": types.MessageEntityEmail,
    "phone": types.MessageEntityPhone,
    "mention": types.MessageEntityMention,
    "hashtag": types.MessageEntityHashtag,
    "cashtag": types.MessageEntityCashtag,
    "bot_command": types.MessageEntityBotCommand,
}


def entity(d: dict[str, Any]) -> Any:
    kind, offset, length = d["type"], d["offset"], d["length"]
    if kind in _ENTITY:
        return _ENTITY[kind](offset=offset, length=length)
    if kind == "text_url":
        return types.MessageEntityTextUrl(offset=offset, length=length, url=d["url"])
    if kind == "pre":
        return types.MessageEntityPre(offset=offset, length=length, language=d.get("language", ""))
    if kind == "mention_name":
        return types.MessageEntityMentionName(offset=offset, length=length, user_id=d["user_id"])
    if kind == "blockquote":
        return types.MessageEntityBlockquote(offset=offset, length=length)
    raise ValueError(f"unknown entity type {kind!r}")


def action(d: dict[str, Any]) -> Any:
    kind = d["type"]
    if kind == "channel_create":
        return types.MessageActionChannelCreate(title=d["title"])
    if kind == "chat_create":
        return types.MessageActionChatCreate(title=d["title"], users=list(d.get("users", [])))
    if kind == "add_user":
        return types.MessageActionChatAddUser(users=list(d["users"]))
    if kind == "delete_user":
        return types.MessageActionChatDeleteUser(user_id=d["user_id"])
    if kind == "joined_by_link":
        return types.MessageActionChatJoinedByLink(inviter_id=d["inviter_id"])
    if kind == "edit_title":
        return types.MessageActionChatEditTitle(title=d["title"])
    if kind == "pin":
        return types.MessageActionPinMessage()
    if kind == "history_clear":
        return types.MessageActionHistoryClear()
    raise ValueError(f"unknown action type {kind!r}")


def action_user_ids(d: dict[str, Any]) -> list[int]:
    return [*d.get("users", []), *(d[k] for k in ("user_id", "inviter_id") if k in d)]


def _fwd(d: dict[str, Any] | None, default_date: int) -> types.MessageFwdHeader | None:
    if d is None:
        return None
    from_id: Any = None
    if "from_user" in d:
        from_id = types.PeerUser(d["from_user"])
    elif "from_channel" in d:
        from_id = types.PeerChannel(d["from_channel"])
    saved = d.get("saved_from_channel")
    return types.MessageFwdHeader(
        date=d.get("date", default_date),
        from_id=from_id,
        from_name=d.get("from_name"),
        channel_post=d.get("channel_post"),
        post_author=d.get("post_author"),
        saved_from_peer=None if saved is None else types.PeerChannel(saved),
        saved_from_msg_id=d.get("saved_from_msg_id"),
    )


def message_peer(world: World, msg: MessageSpec, viewer: int) -> Any:
    if msg.chat is not None:
        return peer_of_chat(world.chats[msg.chat])
    other = msg.to_user if msg.from_id == viewer else msg.from_id
    return types.PeerUser(other or 0)


def message(world: World, msg: MessageSpec, viewer: int) -> Any:
    chat = world.chats[msg.chat] if msg.chat is not None else None
    post = chat is not None and chat.kind == BROADCAST
    common: dict[str, Any] = {
        "id": msg.id,
        "peer_id": message_peer(world, msg, viewer),
        "date": msg.date,
        "out": msg.from_id == viewer and msg.from_id is not None,
        "post": post or None,
        "from_id": _sender(msg),
        "reply_to": None
        if msg.reply_to is None
        else types.MessageReplyHeader(reply_to_msg_id=msg.reply_to, reply_to_top_id=msg.reply_top),
    }
    if msg.action is not None:
        return types.MessageService(action=action(msg.action), **common)
    # views and forwards share one TL flag: both or neither.
    counted = post and (msg.views is not None or msg.forwards is not None)
    return types.Message(
        message=msg.text,
        entities=[entity(e) for e in msg.entities] or None,
        fwd_from=_fwd(msg.fwd, msg.date),
        media=media(world, msg, viewer),
        views=(msg.views or 0) if counted else None,
        forwards=(msg.forwards or 0) if counted else None,
        edit_date=msg.edit_date,
        post_author=msg.post_author,
        grouped_id=msg.grouped_id,
        pinned=msg.pinned or None,
        replies=replies(world, chat, msg) if chat is not None else None,
        **common,
    )


def _sender(msg: MessageSpec) -> Any:
    if msg.from_chat is not None:  # a channel wrote it (an automatic forward)
        return types.PeerChannel(msg.from_chat)
    return None if msg.from_id is None else types.PeerUser(msg.from_id)


RECENT_REPLIERS = 3


def replies(world: World, chat: ChatSpec, msg: MessageSpec) -> types.MessageReplies | None:
    """messageReplies of a post of a channel with a discussion group (comments=True,
    channel_id = the group; from the post's automatic forward on), of that forward, and of
    any megagroup message that has replies; None otherwise."""
    if chat.kind == BROADCAST:
        group = world.discussion_of(chat)
        forward = None if group is None else world.forward_of(chat, msg.id)
        if group is None or forward is None:
            return None
        return _replies(world.threads(group).thread(forward.id), forward, group.id)
    if chat.kind != MEGAGROUP:
        return None
    thread = world.threads(chat).thread(msg.id)
    if not thread and msg.from_chat is None:
        return None
    return _replies(thread, msg, None)


def _replies(
    thread: list[MessageSpec], top: MessageSpec, channel_id: int | None
) -> types.MessageReplies:
    repliers: list[int] = []
    for m in thread:
        if m.from_id is not None and m.from_id not in repliers:
            repliers.append(m.from_id)
    recent = [types.PeerUser(u) for u in repliers[:RECENT_REPLIERS]]
    return types.MessageReplies(
        replies=len(thread),
        replies_pts=top.pts,
        comments=channel_id is not None or None,
        recent_repliers=recent if channel_id is not None and recent else None,
        channel_id=channel_id,
        max_id=thread[0].id if thread else None,
    )


def referenced(world: World, msgs: Iterable[MessageSpec]) -> tuple[set[int], set[int]]:
    """(user ids, chat ids) that the messages mention, so answers carry their entities."""
    user_ids: set[int] = set()
    chat_ids: set[int] = set()
    for m in msgs:
        if m.chat is not None:
            chat_ids.add(m.chat)
        if m.from_chat is not None:
            chat_ids.add(m.from_chat)
        for uid in (m.from_id, m.to_user):
            if uid is not None:
                user_ids.add(uid)
        if m.fwd:
            if "from_user" in m.fwd:
                user_ids.add(m.fwd["from_user"])
            if "from_channel" in m.fwd:
                chat_ids.add(m.fwd["from_channel"])
        if m.action:
            user_ids.update(action_user_ids(m.action))
        for e in m.entities:
            if "user_id" in e:
                user_ids.add(e["user_id"])
    return {u for u in user_ids if u in world.users}, {c for c in chat_ids if c in world.chats}
