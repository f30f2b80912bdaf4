"""The emulated Telegram world: who exists, who is in what, which messages and files.

Plain data, no TL objects (`render.py` turns it into what one viewing account sees) and no
network (`rpc.py` answers requests and pushes updates). A world is written in Python or JSON:

    World.from_dict({
        "users": [{"id": 1001, "first_name": "Ann", "phone": "15550001", "password": "pw"}],
        "chats": [{"id": 2001, "kind": "broadcast", "title": "News", "username": "news",
                   "members": {"1001": 0}}],
        "photos": [{"id": 5001, "dc_id": 2, "sizes": [{"type": "x", "w": 800, "h": 600,
                                                       "size": 90000}]}],
        "documents": [{"id": 6001, "kind": "video", "size": 20000000, "duration": 12}],
        "messages": [{"chat": 2001, "id": 1, "text": "hi", "media": {"photo": 5001}}],
    })

Keys (every one optional but `id`; an unknown key is refused, naming it):
    users      id, first_name, last_name, username, phone (digits: an account), password
               (2FA), hint, bot, verified, scam, fake, about, photo (a photo id)
    chats      id, kind (broadcast | megagroup | group), title, username (none: private),
               about, date, creator_id, admins [ids], members {user id: join date},
               banned [ids], join_request, invite (link hash), verified, scam, fake,
               signatures, photo, linked_chat_id, extra_participants
    photos     id, dc_id, date, sizes [{type, w, h, size, progressive}] (default: s/m/x/y),
               stripped
    documents  id, kind (video | audio | voice | file | sticker | animation | round), size,
               dc_id, date, mime_type, file_name, duration, w, h, title, performer, alt,
               thumb
    webpages   id, url, site_name, title, description, photo
    download_budget  bytes per second each account may fetch (none: unlimited), and
               download_burst, seconds of it an account may fetch at once (see budget.py);
               users take `premium` (true: FLOOD_WAIT_X rather than FLOOD_PREMIUM_WAIT_X)
    messages   chat (or to_user for a private chat), id (0: next), from_id, date, text,
               entities [{type, offset, length, url?, user_id?, language?}], reply_to,
               fwd, grouped_id, views, forwards, edit_date, post_author, pinned,
               media {photo|document|webpage: id}, action {type, ...},
               comment_to (in a discussion group: the linked channel's post it comments on)
    `python -m tests.fakedc.demo_world` prints a complete example.

Rules kept here (see ../../shared/design/TELEGRAM.md):
- An *account* is a user with a phone; bots and plain users have none.
- kind is "broadcast" (channel), "megagroup" (supergroup) or "group" (a basic group).
- A chat without a username is private: an account that is not a member can't see it.
- Channels and megagroups number their messages in their own sequence and have a `pts`
  that every new, edited or deleted message moves; `log` keeps those events so
  `updates.getChannelDifference` can replay what a client missed.
- Basic-group and private messages are numbered per account, as Telegram does ("message
  ids in basic groups and private chats are per user, in channels per channel"): each
  account's *common box* has its own sequence, and a message gets the next id of every box
  it enters (the members' at the time it is sent: a later member doesn't see it). The
  world stores each such message once under a world-wide *store id* (`common`, what
  post_message returns and edit_message/delete_messages take); `own_id` and `seen_by`
  give an account's id for it, and the rpc answers only with those.
- Comments (core.telegram.org/api/discussion, /api/threads): a broadcast channel whose
  `linked_chat_id` names a megagroup has that group as its discussion group (link_discussion
  sets both sides). Every post added to such a channel gets its automatic forward in the
  group (sent by the channel, fwd_from naming the post, saved_from_peer/msg_id too); a
  comment is a message of the group replying to that forward (`comment_to` names the post),
  and a reply inside a thread keeps the thread's top in `reply_top` (reply_to_top_id). In
  any megagroup, the replies to a message make its thread (`threads`). To build one:
      world.link_discussion(CHANNEL, GROUP)           # or linked_chat_id in a file
      post = world.add_post(CHANNEL, "text")          # its forward lands in GROUP
      c = world.add_comment(CHANNEL, post.id, "first", from_id=USER)
      world.add_comment(CHANNEL, post.id, "re", from_id=USER, reply_to=c.id)
      world.forward_of(world.chats[CHANNEL], post.id); world.threads(group).thread(top_id)
  (rpc.post_message / post_comment do the same with pushes.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tests.fakedc.budget import DEFAULT_BURST

BROADCAST = "broadcast"
MEGAGROUP = "megagroup"
GROUP = "group"
CHAT_KINDS = (BROADCAST, MEGAGROUP, GROUP)
DOC_KINDS = ("video", "audio", "voice", "file", "sticker", "animation", "round")
DEFAULT_DATE = 1_700_000_000  # 2023-11-14, a fixed past so tests are deterministic
CHANNEL_LIMIT = 500


def _build(cls: Any, data: dict[str, Any]) -> Any:
    """Builds a dataclass from a dict, naming the unknown key instead of a TypeError."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**data)


@dataclass
class SizeSpec:
    """One size of a photo (PhotoSize; `progressive` gives PhotoSizeProgressive)."""

    type: str
    w: int
    h: int
    size: int
    progressive: bool = False


@dataclass
class PhotoSpec:
    id: int
    dc_id: int = 1
    date: int = DEFAULT_DATE
    sizes: list[SizeSpec] = field(default_factory=list)
    # A tiny inline preview (PhotoStrippedSize 'i'), as Telegram sends first.
    stripped: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhotoSpec:
        d = dict(d)
        sizes = [s if isinstance(s, SizeSpec) else _build(SizeSpec, s) for s in d.pop("sizes", [])]
        photo: PhotoSpec = _build(cls, {**d, "sizes": sizes})
        if not photo.sizes:
            photo.sizes = default_photo_sizes(photo.id)
        return photo

    def largest(self) -> SizeSpec:
        return max(self.sizes, key=lambda s: s.size)

    def size(self, type_: str) -> SizeSpec | None:
        return next((s for s in self.sizes if s.type == type_), None)


def default_photo_sizes(seed: int) -> list[SizeSpec]:
    """Telegram's usual ladder: s (100 px), m (320 px), x (800 px), y (1280 px, progressive)."""
    k = seed % 997
    return [
        SizeSpec("s", 100, 75, 1_500 + k),
        SizeSpec("m", 320, 240, 12_000 + k),
        SizeSpec("x", 800, 600, 65_000 + k),
        SizeSpec("y", 1280, 960, 180_000 + k, progressive=True),
    ]


@dataclass
class DocumentSpec:
    id: int
    kind: str = "file"
    size: int = 10_000
    dc_id: int = 1
    date: int = DEFAULT_DATE
    mime_type: str = ""
    file_name: str = ""
    duration: int = 0
    w: int = 0
    h: int = 0
    title: str = ""
    performer: str = ""
    alt: str = ""  # a sticker's emoji
    thumb: bool = False  # a 320 px JPEG thumbnail ('m')

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DocumentSpec:
        doc: DocumentSpec = _build(cls, dict(d))
        if doc.kind not in DOC_KINDS:
            raise ValueError(f"document {doc.id}: kind {doc.kind!r} not in {DOC_KINDS}")
        doc.mime_type = doc.mime_type or _DEFAULT_MIME[doc.kind]
        return doc


_DEFAULT_MIME = {
    "video": "video/mp4",
    "round": "video/mp4",
    "animation": "video/mp4",
    "audio": "audio/mpeg",
    "voice": "audio/ogg",
    "file": "application/pdf",
    "sticker": "image/webp",
}


@dataclass
class WebPageSpec:
    id: int
    url: str
    site_name: str = ""
    title: str = ""
    description: str = ""
    photo: int | None = None  # a PhotoSpec id

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WebPageSpec:
        spec: WebPageSpec = _build(cls, dict(d))
        return spec


@dataclass
class UserSpec:
    id: int
    first_name: str = ""
    last_name: str = ""
    username: str | None = None
    phone: str | None = None  # set: this user is an account the emulator can log in
    password: str | None = None  # 2FA (auth.checkPassword, SRP)
    hint: str = ""
    bot: bool = False
    verified: bool = False
    scam: bool = False
    fake: bool = False
    about: str = ""
    photo: int | None = None  # a PhotoSpec id (the profile photo)
    premium: bool = False  # Telegram Premium: FLOOD_WAIT_X, not FLOOD_PREMIUM_WAIT_X (budget.py)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UserSpec:
        spec: UserSpec = _build(cls, dict(d))
        return spec

    @property
    def is_account(self) -> bool:
        return self.phone is not None and not self.bot


@dataclass
class MessageSpec:
    """A message. For a channel/megagroup `chat` is its id and `id` its own sequence; for a
    basic group `chat` too (`id` its store id; accounts see their own, World.seen_by); for a
    private chat `chat` is None
    and `to_user` names the other side. `media` is {"photo": id}, {"document": id} or
    {"webpage": id}; `action` (a service message) is {"type": ..., ...} (see render.py);
    `fwd` is {"from_user": id} or {"from_channel": id, "channel_post": n, "post_author": s}
    or {"from_name": s}, with an optional "date"."""

    id: int = 0  # 0: the next id of the chat's sequence
    chat: int | None = None
    to_user: int | None = None
    from_id: int | None = None  # None in a broadcast channel: the channel posted it
    date: int = DEFAULT_DATE
    text: str = ""
    entities: list[dict[str, Any]] = field(default_factory=list)
    reply_to: int | None = None
    fwd: dict[str, Any] | None = None
    grouped_id: int | None = None
    views: int | None = None
    forwards: int | None = None
    edit_date: int | None = None
    post_author: str | None = None
    pinned: bool = False
    media: dict[str, int] | None = None
    action: dict[str, Any] | None = None
    pts: int = 0  # the chat's pts when it was created (set by the world)
    # Threads: the top of the thread a reply sits in (reply_to_top_id), when it replies to
    # a reply; the channel that sent it (an automatic forward in a discussion group); the
    # linked channel's post a comment is on (the world turns it into reply_to).
    reply_top: int | None = None
    from_chat: int | None = None
    comment_to: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MessageSpec:
        spec: MessageSpec = _build(cls, dict(d))
        return spec


@dataclass
class ChannelEvent:
    """One step of a channel's pts sequence: pts after the event and how far it moved."""

    pts: int
    pts_count: int
    kind: str  # "new", "edit", "delete"
    ids: list[int]
    date: int = DEFAULT_DATE


@dataclass
class ChatSpec:
    id: int
    kind: str = BROADCAST
    title: str = ""
    username: str | None = None
    about: str = ""
    date: int = DEFAULT_DATE
    creator_id: int | None = None
    admins: list[int] = field(default_factory=list)
    # user id → the date they joined (JSON keys are strings; from_dict converts them).
    members: dict[int, int] = field(default_factory=dict)
    banned: list[int] = field(default_factory=list)
    join_request: bool = False  # joinChannel → INVITE_REQUEST_SENT
    invite: str | None = None  # the hash of its invite link (t.me/+HASH)
    verified: bool = False
    scam: bool = False
    fake: bool = False
    signatures: bool = False
    photo: int | None = None
    linked_chat_id: int | None = None
    extra_participants: int = 0  # members beyond those listed (participants_count only)
    pts: int = 1
    next_id: int = 1
    messages: dict[int, MessageSpec] = field(default_factory=dict)
    log: list[ChannelEvent] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)  # pending join requests

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatSpec:
        d = dict(d)
        internal = {"pts", "next_id", "messages", "log"} & set(d)
        if internal:
            # The world derives these from the messages; a file can't set them.
            raise ValueError(f"chat {d.get('id')}: keys {sorted(internal)} are the world's own")
        members = {int(k): int(v) for k, v in d.pop("members", {}).items()}
        spec: ChatSpec = _build(cls, {**d, "members": members})
        if spec.kind not in CHAT_KINDS:
            raise ValueError(f"chat {spec.id}: kind {spec.kind!r} not in {CHAT_KINDS}")
        return spec

    @property
    def is_channel(self) -> bool:
        """A channel in the API sense: broadcast or megagroup (not a basic group)."""
        return self.kind != GROUP

    @property
    def is_public(self) -> bool:
        return self.username is not None

    @property
    def participants_count(self) -> int:
        return len(self.members) + self.extra_participants

    def top_id(self) -> int:
        return max(self.messages, default=0)


class World:
    """Every object of the emulated Telegram, plus the per-account rules that derive from it
    (access hashes, file references, membership)."""

    def __init__(self, secret: bytes = b"tgc-fakedc") -> None:
        self.secret = secret
        self.users: dict[int, UserSpec] = {}
        self.chats: dict[int, ChatSpec] = {}
        self.photos: dict[int, PhotoSpec] = {}
        self.documents: dict[int, DocumentSpec] = {}
        self.webpages: dict[int, WebPageSpec] = {}
        # Basic-group and private messages by store id (one world-wide sequence), and
        # each account's own numbering of the ones in its box: store id → own id, the
        # reverse, and the account's next own id.
        self.common: dict[int, MessageSpec] = {}
        self.common_next_id = 1
        self.box_ids: dict[int, dict[int, int]] = {}
        self.box_store: dict[int, dict[int, int]] = {}
        self.box_next: dict[int, int] = {}
        # Account-level pts (moves with common-box messages), per account, and the log of
        # (pts after, message id, kind) that updates.getDifference replays.
        self.account_pts: dict[int, int] = {}
        self.account_log: dict[int, list[tuple[int, int, str]]] = {}
        self.channel_limit = CHANNEL_LIMIT
        # Bytes per second each account may fetch with upload.getFile (None: unlimited) and
        # the seconds of it the bucket holds: see budget.py.
        self.download_budget: float | None = None
        self.download_burst = DEFAULT_BURST
        # Bumped by expire_file_references(): every reference issued before is stale.
        self.file_ref_epoch = 1
        # chat id → ((pts, count) it was built at, its messages newest first).
        self._newest_first: dict[int, tuple[tuple[int, int], list[MessageSpec]]] = {}
        # megagroup id → ((pts, count) it was built at, its threads).
        self._threads: dict[int, tuple[tuple[int, int], Threads]] = {}

    # --- loading -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> World:
        known = {"users", "chats", "photos", "documents", "webpages", "messages", "secret"}
        known |= {"download_budget", "download_burst"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"world: unknown keys {sorted(unknown)}")
        world = cls(secret=str(data.get("secret", "tgc-fakedc")).encode())
        if data.get("download_budget") is not None:
            world.download_budget = float(data["download_budget"])
        world.download_burst = float(data.get("download_burst", DEFAULT_BURST))
        for u in data.get("users", []):
            world.add_user(UserSpec.from_dict(u))
        for p in data.get("photos", []):
            world.add_photo(PhotoSpec.from_dict(p))
        for doc in data.get("documents", []):
            world.add_document(DocumentSpec.from_dict(doc))
        for w in data.get("webpages", []):
            world.add_webpage(WebPageSpec.from_dict(w))
        for c in data.get("chats", []):
            world.add_chat(ChatSpec.from_dict(c))
        for chat in list(world.chats.values()):
            group = world.discussion_of(chat)
            if group is not None:  # a file names the link on the channel's side
                world.link_discussion(chat.id, group.id)
        for m in data.get("messages", []):
            world.add_message(MessageSpec.from_dict(m))
        return world

    @classmethod
    def from_json_file(cls, path: str | Path) -> World:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def add_user(self, user: UserSpec) -> UserSpec:
        self._unique(user.id)
        self.users[user.id] = user
        if user.is_account:
            self.account_pts.setdefault(user.id, 1)
        return user

    def add_chat(self, chat: ChatSpec) -> ChatSpec:
        self._unique(chat.id)
        self.chats[chat.id] = chat
        return chat

    def add_photo(self, photo: PhotoSpec) -> PhotoSpec:
        self.photos[photo.id] = photo
        return photo

    def add_document(self, doc: DocumentSpec) -> DocumentSpec:
        self.documents[doc.id] = doc
        return doc

    def add_webpage(self, page: WebPageSpec) -> WebPageSpec:
        self.webpages[page.id] = page
        return page

    def _unique(self, id_: int) -> None:
        # Users and chats share the Bot-API id space in tests' minds; keep them apart.
        if id_ in self.users or id_ in self.chats:
            raise ValueError(f"id {id_} used twice")

    def add_message(self, msg: MessageSpec) -> MessageSpec:
        """Stores a message (no pts event: this is the world as it was before the test)."""
        self._check_media(msg)
        if msg.chat is not None and self.chats[msg.chat].is_channel:
            chat = self.chats[msg.chat]
            self.place_in_thread(chat, msg)
            if msg.id == 0:
                msg.id = chat.next_id
            if msg.id in chat.messages:
                raise ValueError(f"chat {chat.id}: message {msg.id} twice")
            chat.next_id = max(chat.next_id, msg.id + 1)
            chat.pts += 1
            msg.pts = chat.pts
            chat.messages[msg.id] = msg
            forward = self.discussion_copy(chat, msg)
            if forward is not None:
                self.add_message(forward)
            return msg
        if msg.chat is None and msg.to_user is None:
            raise ValueError("a message needs chat or to_user")
        if msg.id == 0:
            msg.id = self.common_next_id
        if msg.id in self.common:
            raise ValueError(f"common message {msg.id} twice")
        self.common_next_id = max(self.common_next_id, msg.id + 1)
        self.common[msg.id] = msg
        msg.pts = 0
        for account in self.common_viewers(msg):
            self.box_add(account, msg.id)
        return msg

    def box_add(self, account: int, store_id: int) -> None:
        """Puts a stored common message into the account's box under its next own id."""
        own = self.box_next.get(account, 1)
        self.box_next[account] = own + 1
        self.box_ids.setdefault(account, {})[store_id] = own
        self.box_store.setdefault(account, {})[own] = store_id

    def account_event(self, account: int, msg_id: int, kind: str) -> int:
        """Moves an account's pts by one for a common-box message; returns the new pts."""
        pts = self.account_pts.get(account, 1) + 1
        self.account_pts[account] = pts
        self.account_log.setdefault(account, []).append((pts, msg_id, kind))
        return pts

    def _check_media(self, msg: MessageSpec) -> None:
        if not msg.media:
            return
        ((kind, ref),) = msg.media.items()
        table: dict[str, dict[int, Any]] = {
            "photo": self.photos,
            "document": self.documents,
            "webpage": self.webpages,
        }
        if kind not in table or ref not in table[kind]:
            raise ValueError(f"message {msg.id}: unknown media {msg.media}")

    # --- channel sequence (used by the pushes in rpc.py) ---------------------------------

    def channel_event(
        self, chat: ChatSpec, kind: str, ids: list[int], date: int = DEFAULT_DATE
    ) -> ChannelEvent:
        count = len(ids) if kind == "delete" else 1
        chat.pts += count
        event = ChannelEvent(chat.pts, count, kind, list(ids), date)
        chat.log.append(event)
        return event

    def newest_first(self, chat: ChatSpec) -> list[MessageSpec]:
        """A channel's messages sorted by id, descending; cached until its pts moves (every
        new, edited or deleted message moves it), so paging a 100k-message channel doesn't
        sort it per request."""
        key = (chat.pts, len(chat.messages))
        cached = self._newest_first.get(chat.id)
        if cached is None or cached[0] != key:
            ordered = sorted(chat.messages.values(), key=lambda m: m.id, reverse=True)
            cached = (key, ordered)
            self._newest_first[chat.id] = cached
        return cached[1]

    def events_since(self, chat: ChatSpec, pts: int) -> list[ChannelEvent] | None:
        """The events after `pts`; None when the log doesn't reach back that far."""
        if pts >= chat.pts:
            return []
        first_logged = chat.log[0].pts - chat.log[0].pts_count if chat.log else chat.pts
        if pts < first_logged:
            return None
        return [e for e in chat.log if e.pts > pts]

    # --- comments and threads (see the module docstring) ---------------------------------

    def link_discussion(self, channel_id: int, group_id: int) -> None:
        """Makes the megagroup the broadcast channel's discussion group (both sides' link);
        posts added from now on get their automatic forward in it."""
        channel, group = self.chats[channel_id], self.chats[group_id]
        if channel.kind != BROADCAST or group.kind != MEGAGROUP:
            raise ValueError(f"{channel_id} must be a broadcast channel, {group_id} a megagroup")
        channel.linked_chat_id = group_id
        group.linked_chat_id = channel_id

    def discussion_of(self, chat: ChatSpec) -> ChatSpec | None:
        """The discussion megagroup of a broadcast channel, if it has one."""
        group = self.chats.get(chat.linked_chat_id or 0)
        if chat.kind != BROADCAST or group is None or group.kind != MEGAGROUP:
            return None
        return group

    def discussion_copy(self, channel: ChatSpec, post: MessageSpec) -> MessageSpec | None:
        """The automatic forward of a post into the channel's discussion group, not stored
        yet (None without a group, or for a service message): sent by the channel, naming
        the post in fwd_from and in saved_from_peer/saved_from_msg_id."""
        group = self.discussion_of(channel)
        if group is None or post.action is not None:
            return None
        fwd: dict[str, Any] = {
            "from_channel": channel.id,
            "channel_post": post.id,
            "date": post.date,
            "saved_from_channel": channel.id,
            "saved_from_msg_id": post.id,
        }
        if post.post_author:
            fwd["post_author"] = post.post_author
        return MessageSpec(
            chat=group.id,
            from_chat=channel.id,
            date=post.date,
            text=post.text,
            entities=list(post.entities),
            fwd=fwd,
            grouped_id=post.grouped_id,
            media=dict(post.media) if post.media else None,
        )

    def place_in_thread(self, chat: ChatSpec, msg: MessageSpec) -> None:
        """Fills a megagroup message's thread fields before it is stored: a comment
        (`comment_to`) replies to its post's forward; a reply to a reply keeps the thread's
        top in `reply_top`, as Telegram's reply_to_top_id."""
        if chat.kind != MEGAGROUP:
            return
        if msg.comment_to is not None:
            channel = self.chats.get(chat.linked_chat_id or 0)
            forward = None if channel is None else self.forward_of(channel, msg.comment_to)
            if forward is None:
                raise ValueError(f"chat {chat.id}: no forward of post {msg.comment_to} to comment")
            if msg.reply_to is None:
                msg.reply_to = forward.id
        if msg.reply_to is None or msg.reply_top is not None:
            return
        target = chat.messages.get(msg.reply_to)
        top = None if target is None else target.reply_top or target.reply_to
        if top is not None:
            msg.reply_top = top

    def forward_of(self, channel: ChatSpec, post_id: int) -> MessageSpec | None:
        """The post's automatic forward in the channel's discussion group."""
        group = self.discussion_of(channel)
        if group is None:
            return None
        fwd_id = self.threads(group).forwards.get(post_id)
        return None if fwd_id is None else group.messages.get(fwd_id)

    def threads(self, group: ChatSpec) -> Threads:
        """A megagroup's threads (cached until its pts moves, like newest_first)."""
        key = (group.pts, len(group.messages))
        cached = self._threads.get(group.id)
        if cached is None or cached[0] != key:
            cached = (key, Threads.of(group))
            self._threads[group.id] = cached
        return cached[1]

    def add_post(self, channel_id: int, text: str = "", **fields: Any) -> MessageSpec:
        """A post (MessageSpec fields as keywords) and, with a discussion group, its
        automatic forward there."""
        return self.add_message(MessageSpec(chat=channel_id, text=text, **fields))

    def add_comment(
        self, channel_id: int, post_id: int, text: str, from_id: int, **fields: Any
    ) -> MessageSpec:
        """A comment on a post, in the channel's discussion group (`reply_to` a comment's
        id in the group to answer that comment inside the thread)."""
        group = self.discussion_of(self.chats[channel_id])
        if group is None:
            raise ValueError(f"channel {channel_id} has no discussion group")
        msg = MessageSpec(chat=group.id, text=text, from_id=from_id, comment_to=post_id, **fields)
        return self.add_message(msg)

    # --- who sees what -------------------------------------------------------------------

    def accounts(self) -> list[UserSpec]:
        return [u for u in self.users.values() if u.is_account]

    def account_by_phone(self, phone: str) -> UserSpec | None:
        digits = phone.lstrip("+")
        return next((u for u in self.accounts() if u.phone == digits), None)

    def by_username(self, username: str) -> UserSpec | ChatSpec | None:
        name = username.lower()
        for u in self.users.values():
            if u.username and u.username.lower() == name:
                return u
        for c in self.chats.values():
            if c.username and c.username.lower() == name:
                return c
        return None

    def by_invite(self, invite_hash: str) -> ChatSpec | None:
        return next((c for c in self.chats.values() if c.invite == invite_hash), None)

    def is_member(self, chat: ChatSpec, user_id: int) -> bool:
        return user_id in chat.members

    def is_banned(self, chat: ChatSpec, user_id: int) -> bool:
        return user_id in chat.banned

    def can_read(self, chat: ChatSpec, user_id: int) -> bool:
        """Public chats are readable by anyone not banned; private ones by members only."""
        if self.is_banned(chat, user_id):
            return False
        return chat.is_public or self.is_member(chat, user_id)

    def joined_channels(self, user_id: int) -> list[ChatSpec]:
        return [c for c in self.chats.values() if c.is_channel and user_id in c.members]

    def common_viewers(self, msg: MessageSpec) -> list[int]:
        """Accounts whose common box holds this basic-group or private message."""
        if msg.chat is not None:
            ids = list(self.chats[msg.chat].members)
        else:
            ids = [i for i in (msg.from_id, msg.to_user) if i is not None]
        return [i for i in ids if i in self.users and self.users[i].is_account]

    def common_visible(self, msg: MessageSpec, viewer: int) -> bool:
        """Whether the message is in the viewer's box (it was a member when it was sent)."""
        return self.own_id(viewer, msg.id) is not None

    def common_holders(self, msg: MessageSpec) -> list[int]:
        """The current viewers whose box holds the message (who hear of its edits)."""
        return [v for v in self.common_viewers(msg) if self.common_visible(msg, v)]

    def own_id(self, account: int, store_id: int) -> int | None:
        """The id `account` knows a basic-group or private message by; None if it is not in
        the account's box."""
        return self.box_ids.get(account, {}).get(store_id)

    def seen_by(self, msg: MessageSpec, viewer: int) -> MessageSpec:
        """The message as `viewer` gets it: a common-box message as a copy carrying the
        viewer's own ids (its id, the id it replies to); a channel message as it is."""
        if msg.chat is not None and self.chats[msg.chat].is_channel:
            return msg
        box = self.box_ids.get(viewer, {})
        if msg.id not in box:
            raise KeyError(f"message {msg.id} is not in account {viewer}'s box")
        reply = box.get(msg.reply_to) if msg.reply_to is not None else None
        return replace(msg, id=box[msg.id], reply_to=reply)

    def common_box(self, viewer: int) -> list[MessageSpec]:
        """The stored messages of the viewer's box, as it sees them (own ids), in its order."""
        store = self.box_store.get(viewer, {})
        return [self.seen_by(self.common[s], viewer) for s in store.values() if s in self.common]

    # --- identity rules: per viewing account ---------------------------------------------

    def _mac(self, *parts: object) -> bytes:
        text = ":".join(str(p) for p in parts).encode()
        return hmac.new(self.secret, text, hashlib.sha256).digest()

    def access_hash(self, kind: str, viewer: int | None, obj_id: int) -> int:
        """The access_hash `viewer` gets for an object: a keyed hash of (viewer, object), so
        another account's hash is useless (CHANNEL_INVALID, USER_ID_INVALID, ...)."""
        value: int = struct.unpack(">q", self._mac("hash", kind, viewer, obj_id)[:8])[0]
        return value or 1

    def file_reference(self, viewer: int, file_kind: str, file_id: int, context: str) -> bytes:
        """A reference bound to (viewer, file, context) and to the current epoch:
        epoch (4 bytes) + context tag (8) + MAC (12)."""
        tag = self._mac("ctx", context)[:8]
        epoch = struct.pack(">I", self.file_ref_epoch)
        mac = self._mac("ref", viewer, file_kind, file_id, self.file_ref_epoch, tag.hex())[:12]
        return epoch + tag + mac

    def check_file_reference(self, viewer: int, file_kind: str, file_id: int, ref: bytes) -> str:
        """'ok', 'expired' (stale epoch) or 'invalid' (not one this viewer was given)."""
        if len(ref) != 24:
            return "invalid"
        (epoch,) = struct.unpack(">I", ref[:4])
        tag = ref[4:12]
        mac = self._mac("ref", viewer, file_kind, file_id, epoch, tag.hex())[:12]
        if not hmac.compare_digest(mac, ref[12:]):
            return "invalid"
        return "ok" if epoch == self.file_ref_epoch else "expired"

    def expire_file_references(self) -> None:
        self.file_ref_epoch += 1


@dataclass
class Threads:
    """A megagroup's reply threads: top message id → its replies (newest first), and, in a
    discussion group, post id → the id of the post's automatic forward."""

    replies: dict[int, list[MessageSpec]] = field(default_factory=dict)
    forwards: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, group: ChatSpec) -> Threads:
        threads = cls()
        for msg in sorted(group.messages.values(), key=lambda m: m.id, reverse=True):
            top = msg.reply_top or msg.reply_to
            if top is not None:
                threads.replies.setdefault(top, []).append(msg)
            saved = (msg.fwd or {}).get("saved_from_msg_id")
            if saved is not None and msg.from_chat == group.linked_chat_id:
                threads.forwards[int(saved)] = msg.id
        return threads

    def thread(self, top_id: int) -> list[MessageSpec]:
        return self.replies.get(top_id, [])


def now() -> int:
    return int(time.time())
