"""The emulator's answers: a `Dispatcher` (see api.py) that answers Telegram requests from a
`World`, pushes updates, and exposes fault knobs, a latency knob and counters to tests.

Rules reproduced (see ../../shared/design/TELEGRAM.md; each is tested in
tests/emulator/test_rpc.py):
- Identity is per account: access hashes and file references are derived from the viewing
  account (World.access_hash / file_reference). Another account's channel hash →
  CHANNEL_INVALID; user hash → USER_ID_INVALID (InputUser) or PEER_ID_INVALID (InputPeer);
  photo/document hash → FILE_ID_INVALID; a stale file reference → FILE_REFERENCE_EXPIRED,
  a forged one → FILE_REFERENCE_INVALID.
- A private channel (no username) is CHANNEL_PRIVATE to non-members; a banned account sees
  ChannelForbidden and gets CHANNEL_PRIVATE.
- messages.getHistory: newest first, offset_id exclusive, offset_date when offset_id is 0,
  add_offset shifts the window (negative reaches newer messages), min_id/max_id exclusive,
  limit clamped to 100; limit 0 means 20 (core.telegram.org/api/offsets: "When 0 is
  provided the limit will often default to an intermediate value like ~20"), and so for
  messages.search, which shares the window. offset_date starts at the newest message
  strictly older than it.
- messages.search: q matches by word prefixes, filters (photos, video, documents, URLs,
  voice, music, GIFs, round, pinned), from_id (a user; FROM_PEER_INVALID otherwise),
  min_date/max_date as exclusive date filters; `count` is every hit (messagesSlice or
  channelMessages when a page holds fewer).
- upload.getFile: offset % 4096 == 0 (OFFSET_INVALID), limit % 4096 == 0, 1048576 % limit
  == 0, limit ≤ 1 MiB and the part inside one 1 MiB block (LIMIT_INVALID); `precise`
  relaxes to 1 KiB steps and drops the divisor and block rules; a file on another DC →
  303 FILE_MIGRATE_X; the last part is short, past the end is empty; with a download
  budget in the world, an account that fetches faster than it gets 420 FLOOD_WAIT_X
  (premium) or FLOOD_PREMIUM_WAIT_X (not), X sized to the overdraft (budget.py).
- Unauthorised keys get 401 AUTH_KEY_UNREGISTERED on everything but help.*/auth.* and
  account.getPassword during a 2FA login.
- Basic-group and private messages carry the viewing account's own ids (World.seen_by):
  the same message has another id for each account, in answers, pushes and requests alike.
- A basic group is named by its id alone (no access hash), but only by an account that is
  or was in it: messages.getChats / getFullChat / getHistory of one it never was in →
  CHAT_ID_INVALID. Removed from it (kick): ChatForbidden, ChatParticipantsForbidden, and
  the service message (messageActionChatDeleteUser) reaches it and every member.
- Threads (core.telegram.org/api/threads, /api/discussion; world.py's docstring): a post
  of a channel with a discussion group carries messageReplies(comments, channel_id = the
  group, replies, max_id, recent_repliers); messages.getReplies pages a post's comments (or
  a megagroup message's replies) by getHistory's rules; messages.getDiscussionMessage gives
  the thread's top in the group. A post with no thread: MSG_ID_INVALID.
- Channel updates carry the channel's own pts (one per new or edited message, one per
  deleted id); they are pushed only to member accounts. updates.getDifference and
  getChannelDifference give what an account missed since a state: see difference.py.

Requests answered (everything else: 400 METHOD_INVALID, logged and listed in rpc.unknown):
    help.getConfig, help.getNearestDc, users.getUsers, users.getFullUser,
    contacts.resolveUsername, contacts.search, channels.getChannels, channels.getFullChannel,
    channels.getParticipants, channels.getParticipant, channels.getMessages,
    channels.joinChannel, channels.leaveChannel, messages.getMessages, messages.getHistory,
    messages.search, messages.getChats, messages.getFullChat, messages.getDialogs,
    messages.getReplies, messages.getDiscussionMessage,
    messages.checkChatInvite, messages.importChatInvite, messages.deleteChatUser,
    upload.getFile, auth.exportAuthorization, auth.importAuthorization, auth.sendCode,
    auth.signIn, auth.checkPassword, auth.logOut, account.getPassword, updates.getState,
    updates.getDifference, updates.getChannelDifference   (rpc.supported_methods)

Knobs (all take effect immediately; see each method's docstring):
    rpc.set_latency({"upload.getFile": 0.05, "*": 0.0})   # seconds before each answer
    rpc.slow("messages.getHistory", 2.0, times=1)          # one-off slow answers
    rpc.flood_wait("contacts.resolveUsername", 30, every=None, times=1, user_id=None)
    rpc.fail("channels.getMessages", 500, "INTERNAL", times=1, user_id=None)
    rpc.rate_limit("contacts.resolveUsername", calls=5, per=60, wait=30, escalate=2.0)
    rpc.username_not_occupied("durov")
    rpc.channel_private(channel_id)
    rpc.auth_key_unregistered(user_id); rpc.deactivated_ban(user_id)
    rpc.session_revoked(user_id); rpc.auth_key_duplicated(user_id)   # (no pushes to it either)
    rpc.expire_file_references()
    rpc.drop_connection_in_file(file_id=None, nth=2, user_id=None)
    rpc.drop_next_posts(channel_id, n)
    rpc.clear_faults()                                     # undoes the fault knobs
    rpc.world.channel_limit = 500                          # CHANNELS_TOO_MUCH beyond it
    rpc.world.download_budget = 20 * 2**20                 # getFile bytes/s per account
    rpc.login_code = "12345"                               # the code auth.signIn accepts
Pushes (async, to member accounts through the cluster's pusher): post_message (a post of
a channel with a discussion group also pushes its automatic forward there), post_comment,
edit_message, delete_messages, kick; add_member (no push).
Counters: rpc.count(method=None, user_id=None), rpc.reset_counts(), rpc.unknown.
"""

from __future__ import annotations

import bisect
import inspect
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from telethon.tl import functions, types

from tests.fakedc import difference, files, render
from tests.fakedc.api import CallContext, Pusher, RpcError
from tests.fakedc.budget import DownloadBudget
from tests.fakedc.faults import FaultKnobs
from tests.fakedc.srp import SrpServer
from tests.fakedc.world import BROADCAST, MEGAGROUP, ChatSpec, MessageSpec, UserSpec, World

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_HISTORY = 100
DEFAULT_HISTORY = 20  # what limit=0 stands for (core.telegram.org/api/offsets)
MAX_PARTICIPANTS = 200
# contacts.search answers QUERY_TOO_SHORT below this many characters: core.telegram.org
# lists the error without the number; TDLib keeps 4 as the "server-side limit"
# (MIN_SEARCH_PUBLIC_DIALOG_PREFIX_LEN; 5 in older releases).
MIN_SEARCH_QUERY = 4
LOGIN_CODE = "12345"
_USERNAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{3,31}$")
# Methods an unauthorised key may call (everything else: 401 AUTH_KEY_UNREGISTERED).
_OPEN_METHODS = ("help.", "auth.")

Handler = Callable[[CallContext, Any], Awaitable[Any]]


def method_name(request: Any) -> str:
    """'channels.getFullChannel' for functions.channels.GetFullChannelRequest."""
    name = type(request).__name__.removesuffix("Request")
    name = name[0].lower() + name[1:]
    namespace = type(request).__module__.rsplit(".", 1)[-1]
    return name if namespace == "functions" else f"{namespace}.{name}"


class FilePart(types.upload.File):  # type: ignore[misc]
    """upload.file whose bytes may be a view into the emulator's file block (files.view):
    the server's serializer (server.py `serialize_result`) copies them once, into the
    message. Serialized by Telethon (as tests do), they are bytes."""

    def _bytes(self) -> bytes:
        plain: bytes = types.upload.File(self.type, self.mtime, bytes(self.bytes))._bytes()
        return plain


class TelegramRpc(FaultKnobs):
    """Answers requests from a World. Construct with the world and (or later `set_pusher`)
    the cluster's pusher; hand it to FakeTelegram as its dispatcher. The knobs and counters
    come from FaultKnobs (faults.py)."""

    def __init__(
        self,
        world: World,
        pusher: Pusher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.world = world
        self._pusher = pusher
        self._clock = clock
        self._init_faults()
        self.login_code = LOGIN_CODE
        self._code_hashes: dict[str, str] = {}  # phone_code_hash → phone
        self._awaiting_password: dict[int, int] = {}  # auth_key_id → user id
        self._logged_out_keys: set[int] = set()
        self._srp = SrpServer()
        self._exported: dict[bytes, int] = {}  # exported authorization bytes → user id
        self._handlers: dict[type, Handler] = self._handler_table()
        self.download_budget = DownloadBudget(clock)  # the world's budget, per account

    # === the Dispatcher ===================================================================

    async def __call__(self, ctx: CallContext, request: Any) -> Any:
        method = ctx.method or method_name(request)
        self._counts[(method, ctx.user_id)] += 1
        await self._delay(method)
        handler = self._handlers.get(type(request))
        if handler is None:
            log.warning("fakedc: unsupported request %s", method)
            self.unknown.append(method)
            raise RpcError(400, "METHOD_INVALID")
        self._check_account(ctx, method)
        self._check_flood(method, ctx.user_id)
        self._check_rate(method, ctx.user_id)
        self._check_fail(method, ctx.user_id)
        return await handler(ctx, request)

    def set_pusher(self, pusher: Pusher) -> None:
        self._pusher = pusher

    def _handler_table(self) -> dict[type, Handler]:
        f = functions
        return {
            f.help.GetConfigRequest: self._get_config,
            f.help.GetNearestDcRequest: self._get_nearest_dc,
            f.users.GetUsersRequest: self._get_users,
            f.users.GetFullUserRequest: self._get_full_user,
            f.contacts.ResolveUsernameRequest: self._resolve_username,
            f.contacts.SearchRequest: self._contacts_search,
            f.channels.GetChannelsRequest: self._get_channels,
            f.channels.GetFullChannelRequest: self._get_full_channel,
            f.channels.GetParticipantsRequest: self._get_participants,
            f.channels.GetParticipantRequest: self._get_participant,
            f.channels.GetMessagesRequest: self._channel_messages,
            f.channels.JoinChannelRequest: self._join_channel,
            f.channels.LeaveChannelRequest: self._leave_channel,
            f.messages.GetMessagesRequest: self._common_messages,
            f.messages.GetHistoryRequest: self._get_history,
            f.messages.SearchRequest: self._search_messages,
            f.messages.GetRepliesRequest: self._get_replies,
            f.messages.GetDiscussionMessageRequest: self._get_discussion_message,
            f.messages.GetChatsRequest: self._get_chats,
            f.messages.GetFullChatRequest: self._get_full_chat,
            f.messages.GetDialogsRequest: self._get_dialogs,
            f.messages.CheckChatInviteRequest: self._check_chat_invite,
            f.messages.ImportChatInviteRequest: self._import_chat_invite,
            f.messages.DeleteChatUserRequest: self._delete_chat_user,
            f.upload.GetFileRequest: self._get_file,
            f.auth.ExportAuthorizationRequest: self._export_authorization,
            f.auth.ImportAuthorizationRequest: self._import_authorization,
            f.auth.SendCodeRequest: self._send_code,
            f.auth.SignInRequest: self._sign_in,
            f.auth.CheckPasswordRequest: self._check_password,
            f.auth.LogOutRequest: self._log_out,
            f.account.GetPasswordRequest: self._get_password,
            f.updates.GetStateRequest: self._get_state,
            f.updates.GetDifferenceRequest: self._get_difference,
            f.updates.GetChannelDifferenceRequest: self._get_channel_difference,
        }

    @property
    def supported_methods(self) -> list[str]:
        return sorted(method_name(object.__new__(cls)) for cls in self._handlers)

    def _check_account(self, ctx: CallContext, method: str) -> None:
        """The auth gate: unbound keys may only log in; then the account's fate knobs."""
        uid = ctx.user_id
        if uid is None:
            if method.startswith(_OPEN_METHODS):
                return
            if method == "account.getPassword" and ctx.auth_key_id in self._awaiting_password:
                return
            raise RpcError(401, "AUTH_KEY_UNREGISTERED")
        if ctx.auth_key_id in self._logged_out_keys:
            raise RpcError(401, "AUTH_KEY_UNREGISTERED")
        self._check_fate(uid)

    # === identity helpers =================================================================

    def _now(self) -> int:
        return int(self._clock())

    def _me(self, ctx: CallContext) -> UserSpec:
        assert ctx.user_id is not None  # _check_account guarantees it past auth.*
        return self.world.users[ctx.user_id]

    def _user_from_input(self, ctx: CallContext, iu: Any, error: str = "USER_ID_INVALID") -> UserSpec:
        if isinstance(iu, types.InputUserSelf | types.InputPeerSelf):
            return self._me(ctx)
        if isinstance(iu, types.InputUserFromMessage | types.InputPeerUserFromMessage):
            if iu.user_id in self.world.users:
                return self.world.users[iu.user_id]
            raise RpcError(400, error)
        if isinstance(iu, types.InputUser | types.InputPeerUser):
            user = self.world.users.get(iu.user_id)
            expected = self.world.access_hash("user", ctx.user_id, iu.user_id)
            if user is None or iu.access_hash != expected:
                raise RpcError(400, error)
            return user
        raise RpcError(400, error)

    def _channel_from_input(self, ctx: CallContext, ic: Any) -> ChatSpec:
        if isinstance(ic, types.InputChannelFromMessage | types.InputPeerChannelFromMessage):
            chat = self.world.chats.get(ic.channel_id)
            if chat is None or not chat.is_channel:
                raise RpcError(400, "CHANNEL_INVALID")
            return chat
        if not isinstance(ic, types.InputChannel | types.InputPeerChannel):
            raise RpcError(400, "CHANNEL_INVALID")
        chat = self.world.chats.get(ic.channel_id)
        expected = self.world.access_hash("channel", ctx.user_id, ic.channel_id)
        if chat is None or not chat.is_channel or ic.access_hash != expected:
            raise RpcError(400, "CHANNEL_INVALID")
        return chat

    def _peer_from_input(self, ctx: CallContext, peer: Any) -> ChatSpec | UserSpec:
        if isinstance(peer, types.InputPeerChannel | types.InputPeerChannelFromMessage):
            return self._channel_from_input(ctx, peer)
        if isinstance(peer, types.InputPeerChat):
            chat = self.world.chats.get(peer.chat_id)
            if chat is None or chat.is_channel:
                raise RpcError(400, "CHAT_ID_INVALID")
            return chat
        if isinstance(peer, types.InputPeerEmpty):
            raise RpcError(400, "PEER_ID_INVALID")
        return self._user_from_input(ctx, peer, "PEER_ID_INVALID")

    def _forbidden(self, chat: ChatSpec, viewer: int | None) -> bool:
        """Whether the viewer sees ChannelForbidden (banned, or the channel_private knob)."""
        if chat.id in self._private:
            return True
        return viewer is not None and self.world.is_banned(chat, viewer)

    def _check_readable(self, ctx: CallContext, chat: ChatSpec) -> None:
        viewer = ctx.user_id
        if self._forbidden(chat, viewer) or not self.world.can_read(chat, viewer or 0):
            raise RpcError(400, "CHANNEL_PRIVATE")

    def _chat_view(self, chat: ChatSpec, viewer: int | None) -> Any:
        return render.chat(self.world, chat, viewer, forbidden=self._forbidden(chat, viewer))

    def _users(self, ids: set[int] | list[int], viewer: int | None) -> list[types.User]:
        return [render.user(self.world, self.world.users[i], viewer) for i in sorted(set(ids))]

    def _entities_for(
        self, msgs: list[MessageSpec], viewer: int
    ) -> tuple[list[types.User], list[Any]]:
        user_ids, chat_ids = render.referenced(self.world, msgs)
        chats = [self._chat_view(self.world.chats[c], viewer) for c in sorted(chat_ids)]
        return self._users(user_ids, viewer), chats

    # === help =============================================================================

    async def _get_config(self, ctx: CallContext, req: Any) -> types.Config:
        now = self._now()
        options = [
            types.DcOption(id=o.id, ip_address=o.host, port=o.port, static=False)
            for o in ctx.dc_options
        ]
        return types.Config(
            date=now,
            expires=now + 3600,
            test_mode=False,
            this_dc=ctx.dc_id,
            dc_options=options,
            dc_txt_domain_name="localhost",
            chat_size_max=200,
            megagroup_size_max=200_000,
            forwarded_count_max=100,
            online_update_period_ms=210_000,
            offline_blur_timeout_ms=5_000,
            offline_idle_timeout_ms=30_000,
            online_cloud_timeout_ms=300_000,
            notify_cloud_delay_ms=30_000,
            notify_default_delay_ms=1_500,
            push_chat_period_ms=60_000,
            push_chat_limit=2,
            edit_time_limit=172_800,
            revoke_time_limit=2_147_483_647,
            revoke_pm_time_limit=2_147_483_647,
            rating_e_decay=2_419_200,
            stickers_recent_limit=200,
            channels_read_media_period=604_800,
            call_receive_timeout_ms=20_000,
            call_ring_timeout_ms=90_000,
            call_connect_timeout_ms=30_000,
            call_packet_timeout_ms=10_000,
            me_url_prefix="https://t.me/",
            caption_length_max=1024,
            message_length_max=4096,
            webfile_dc_id=ctx.dc_id,
        )

    async def _get_nearest_dc(self, ctx: CallContext, req: Any) -> types.NearestDc:
        return types.NearestDc(country="ZZ", this_dc=ctx.dc_id, nearest_dc=ctx.dc_id)

    # === users ============================================================================

    async def _get_users(self, ctx: CallContext, req: Any) -> list[types.User]:
        users = [self._user_from_input(ctx, iu) for iu in req.id]
        return [render.user(self.world, u, ctx.user_id) for u in users]

    async def _get_full_user(self, ctx: CallContext, req: Any) -> Any:
        user = self._user_from_input(ctx, req.id)
        photo = None
        if user.photo is not None:
            photo = render.photo(
                self.world, self.world.photos[user.photo], ctx.user_id or 0, f"profile:{user.id}"
            )
        full = types.UserFull(
            id=user.id,
            settings=types.PeerSettings(),
            notify_settings=types.PeerNotifySettings(),
            common_chats_count=0,
            about=user.about or None,
            profile_photo=photo,
            bot_info=types.BotInfo(user_id=user.id, description=user.about) if user.bot else None,
        )
        return types.users.UserFull(
            full_user=full, chats=[], users=[render.user(self.world, user, ctx.user_id)]
        )

    # === contacts =========================================================================

    async def _resolve_username(self, ctx: CallContext, req: Any) -> Any:
        name = req.username
        if not _USERNAME_RE.match(name) or name.endswith("_"):
            raise RpcError(400, "USERNAME_INVALID")
        found = None if name.lower() in self._unoccupied else self.world.by_username(name)
        if found is None:
            raise RpcError(400, "USERNAME_NOT_OCCUPIED")
        if isinstance(found, UserSpec):
            return types.contacts.ResolvedPeer(
                peer=types.PeerUser(found.id),
                chats=[],
                users=[render.user(self.world, found, ctx.user_id)],
            )
        return types.contacts.ResolvedPeer(
            peer=render.peer_of_chat(found),
            chats=[self._chat_view(found, ctx.user_id)],
            users=[],
        )

    async def _contacts_search(self, ctx: CallContext, req: Any) -> Any:
        """Public chats and users whose title, name or username contains q (case-folded);
        what the account is in comes in my_results, the rest in results."""
        viewer = self._me(ctx).id
        q = req.q.casefold()
        if not q.strip():
            raise RpcError(400, "SEARCH_QUERY_EMPTY")
        if len(q) < MIN_SEARCH_QUERY:
            raise RpcError(400, "QUERY_TOO_SHORT")
        limit = max(0, min(req.limit, 100))
        mine: list[Any] = []
        others: list[Any] = []
        chats: list[Any] = []
        users: list[Any] = []
        for chat in self.world.chats.values():
            member = viewer in chat.members
            if not (chat.is_public or member) or self.world.is_banned(chat, viewer):
                continue
            if q in chat.title.casefold() or q in (chat.username or "").casefold():
                (mine if member else others).append(render.peer_of_chat(chat))
                chats.append(self._chat_view(chat, viewer))
        for user in self.world.users.values():
            if user.username and user.id != viewer:
                name = f"{user.first_name} {user.last_name}".casefold()
                if q in user.username.casefold() or q in name:
                    others.append(types.PeerUser(user.id))
                    users.append(render.user(self.world, user, viewer))
        mine, others = mine[:limit], others[:limit]
        kept = {render_peer_id(p) for p in (*mine, *others)}
        return types.contacts.Found(
            my_results=mine,
            results=others,
            chats=[c for c in chats if c.id in kept],
            users=[u for u in users if u.id in kept],
        )

    # === channels and chats ===============================================================

    async def _get_channels(self, ctx: CallContext, req: Any) -> Any:
        chats = [self._channel_from_input(ctx, ic) for ic in req.id]
        return types.messages.Chats(chats=[self._chat_view(c, ctx.user_id) for c in chats])

    async def _get_full_channel(self, ctx: CallContext, req: Any) -> Any:
        chat = self._channel_from_input(ctx, req.channel)
        self._check_readable(ctx, chat)
        viewer = self._me(ctx).id
        photo: Any = types.PhotoEmpty(id=0)
        if chat.photo is not None:
            photo = render.photo(
                self.world, self.world.photos[chat.photo], viewer, f"chatphoto:{chat.id}"
            )
        top = chat.top_id()
        is_admin = viewer in chat.admins or viewer == chat.creator_id
        full = types.ChannelFull(
            id=chat.id,
            about=chat.about,
            read_inbox_max_id=top,
            read_outbox_max_id=top,
            unread_count=0,
            chat_photo=photo,
            notify_settings=types.PeerNotifySettings(),
            bot_info=[],
            pts=chat.pts,
            can_view_participants=chat.kind == MEGAGROUP or is_admin or None,
            participants_count=chat.participants_count,
            admins_count=len(chat.admins) + (chat.creator_id is not None),
            linked_chat_id=chat.linked_chat_id,
            # requests_pending and recent_requesters share one TL flag.
            requests_pending=len(chat.requests) if chat.requests and is_admin else None,
            recent_requesters=chat.requests[-5:] if chat.requests and is_admin else None,
        )
        chats = [self._chat_view(chat, viewer)]
        if chat.linked_chat_id in self.world.chats:
            chats.append(self._chat_view(self.world.chats[chat.linked_chat_id], viewer))
        return types.messages.ChatFull(full_chat=full, chats=chats, users=[])

    async def _get_participants(self, ctx: CallContext, req: Any) -> Any:
        chat = self._channel_from_input(ctx, req.channel)
        self._check_readable(ctx, chat)
        viewer = self._me(ctx).id
        is_admin = viewer in chat.admins or viewer == chat.creator_id
        if chat.kind == BROADCAST and not is_admin:
            raise RpcError(400, "CHAT_ADMIN_REQUIRED")
        flt = req.filter
        if isinstance(flt, types.ChannelParticipantsKicked | types.ChannelParticipantsBanned):
            if not is_admin:
                raise RpcError(400, "CHAT_ADMIN_REQUIRED")
            ids = list(chat.banned)
        else:
            # Recent: newest member first.
            ids = sorted(chat.members, key=lambda u: (-chat.members[u], u))
            ids = [u for u in ids if self._participant_matches(chat, u, flt)]
        limit = max(0, min(req.limit, MAX_PARTICIPANTS))
        page = ids[req.offset : req.offset + limit]
        return types.channels.ChannelParticipants(
            count=len(ids),
            participants=[self._participant(chat, u, viewer) for u in page],
            chats=[],
            users=self._users(page, viewer),
        )

    async def _get_participant(self, ctx: CallContext, req: Any) -> Any:
        chat = self._channel_from_input(ctx, req.channel)
        self._check_readable(ctx, chat)
        viewer = self._me(ctx).id
        user = self._user_from_input(ctx, req.participant, "PARTICIPANT_ID_INVALID")
        if user.id not in chat.members and user.id not in chat.banned:
            raise RpcError(400, "USER_NOT_PARTICIPANT")
        is_admin = viewer in chat.admins or viewer == chat.creator_id
        if chat.kind == BROADCAST and not is_admin and user.id != viewer:
            raise RpcError(400, "CHAT_ADMIN_REQUIRED")
        return types.channels.ChannelParticipant(
            participant=self._participant(chat, user.id, viewer),
            chats=[],
            users=self._users([user.id], viewer),
        )

    def _participant_matches(self, chat: ChatSpec, uid: int, flt: Any) -> bool:
        user = self.world.users.get(uid)
        if user is None:
            return False
        if isinstance(flt, types.ChannelParticipantsAdmins):
            return uid in chat.admins or uid == chat.creator_id
        if isinstance(flt, types.ChannelParticipantsBots):
            return user.bot
        if isinstance(flt, types.ChannelParticipantsSearch | types.ChannelParticipantsContacts):
            q = flt.q.casefold()
            name = f"{user.first_name} {user.last_name}".casefold()
            return not q or q in name or q in (user.username or "").casefold()
        return True

    def _participant(self, chat: ChatSpec, uid: int, viewer: int) -> Any:
        if uid in chat.banned:
            return types.ChannelParticipantBanned(
                peer=types.PeerUser(uid),
                kicked_by=chat.creator_id or uid,
                date=chat.date,
                banned_rights=types.ChatBannedRights(until_date=0, view_messages=True),
                left=True,
            )
        date = chat.members.get(uid, chat.date)
        if uid == chat.creator_id:
            return types.ChannelParticipantCreator(user_id=uid, admin_rights=render.admin_rights())
        if uid in chat.admins:
            return types.ChannelParticipantAdmin(
                user_id=uid,
                promoted_by=chat.creator_id or uid,
                date=date,
                admin_rights=render.admin_rights(),
                is_self=uid == viewer or None,
            )
        if uid == viewer:
            return types.ChannelParticipantSelf(
                user_id=uid, inviter_id=chat.creator_id or uid, date=date
            )
        return types.ChannelParticipant(user_id=uid, date=date)

    def _basic_group(self, chat_id: int, viewer: int | None) -> ChatSpec:
        """A basic group as `viewer` may name it: CHAT_ID_INVALID for one it never was in
        (a basic group is reached by its members only, by id alone; Telegram answers an
        outsider as for an id that does not exist)."""
        chat = self.world.chats.get(chat_id)
        if chat is None or chat.is_channel or not self.world.ever_in(chat, viewer or 0):
            raise RpcError(400, "CHAT_ID_INVALID")
        return chat

    async def _get_chats(self, ctx: CallContext, req: Any) -> Any:
        out = [self._chat_view(self._basic_group(i, ctx.user_id), ctx.user_id) for i in req.id]
        return types.messages.Chats(chats=out)

    async def _get_full_chat(self, ctx: CallContext, req: Any) -> Any:
        chat = self._basic_group(req.chat_id, ctx.user_id)
        viewer = self._me(ctx).id
        participants: Any
        if viewer in chat.members:
            participants = types.ChatParticipants(
                chat_id=chat.id,
                participants=[self._chat_participant(chat, u) for u in sorted(chat.members)],
                version=1,
            )
            users = self._users(list(chat.members), viewer)
        else:
            participants = types.ChatParticipantsForbidden(chat_id=chat.id)
            users = []
        full = types.ChatFull(
            id=chat.id,
            about=chat.about,
            participants=participants,
            notify_settings=types.PeerNotifySettings(),
        )
        return types.messages.ChatFull(
            full_chat=full, chats=[self._chat_view(chat, viewer)], users=users
        )

    def _chat_participant(self, chat: ChatSpec, uid: int) -> Any:
        date = chat.members[uid]
        inviter = chat.creator_id or uid
        if uid == chat.creator_id:
            return types.ChatParticipantCreator(user_id=uid)
        if uid in chat.admins:
            return types.ChatParticipantAdmin(user_id=uid, inviter_id=inviter, date=date)
        return types.ChatParticipant(user_id=uid, inviter_id=inviter, date=date)

    # === join / leave =====================================================================

    async def _join_channel(self, ctx: CallContext, req: Any) -> Any:
        chat = self._channel_from_input(ctx, req.channel)
        viewer = self._me(ctx).id
        if self._forbidden(chat, viewer):
            raise RpcError(400, "CHANNEL_PRIVATE")
        if viewer in chat.members:
            raise RpcError(400, "USER_ALREADY_PARTICIPANT")
        if not chat.is_public:
            # Private chats are joined through an invite link, which the emulator lacks.
            raise RpcError(400, "CHANNEL_PRIVATE")
        if len(self.world.joined_channels(viewer)) >= self.world.channel_limit:
            raise RpcError(400, "CHANNELS_TOO_MUCH")
        if chat.join_request:
            if viewer not in chat.requests:
                chat.requests.append(viewer)
            raise RpcError(400, "INVITE_REQUEST_SENT")
        chat.members[viewer] = self._now()
        return self._channel_updates(chat, viewer)

    async def _leave_channel(self, ctx: CallContext, req: Any) -> Any:
        chat = self._channel_from_input(ctx, req.channel)
        viewer = self._me(ctx).id
        if self._forbidden(chat, viewer):
            raise RpcError(400, "CHANNEL_PRIVATE")
        if viewer not in chat.members:
            raise RpcError(400, "USER_NOT_PARTICIPANT")
        del chat.members[viewer]
        return self._channel_updates(chat, viewer)

    def _channel_updates(self, chat: ChatSpec, viewer: int) -> types.Updates:
        """What Telegram answers (and pushes) when a membership changes: updateChannel and
        the Channel as the viewer now sees it (left, or ChannelForbidden when banned)."""
        return types.Updates(
            updates=[types.UpdateChannel(channel_id=chat.id)],
            users=[],
            chats=[self._chat_view(chat, viewer)],
            date=self._now(),
            seq=0,
        )

    def _invited(self, invite_hash: str) -> ChatSpec:
        chat = self.world.by_invite(invite_hash)
        if chat is None:
            raise RpcError(400, "INVITE_HASH_INVALID")
        return chat

    async def _check_chat_invite(self, ctx: CallContext, req: Any) -> Any:
        """ChatInviteAlready for a member, else ChatInvite (a preview of the chat)."""
        chat = self._invited(req.hash)
        viewer = self._me(ctx).id
        if self._forbidden(chat, viewer):
            raise RpcError(400, "CHANNEL_PRIVATE")
        if viewer in chat.members:
            return types.ChatInviteAlready(chat=self._chat_view(chat, viewer))
        return types.ChatInvite(
            title=chat.title,
            photo=types.PhotoEmpty(id=0),
            participants_count=chat.participants_count,
            color=0,
            channel=chat.is_channel or None,
            broadcast=chat.kind == BROADCAST or None,
            public=chat.is_public or None,
            megagroup=chat.kind == MEGAGROUP or None,
            request_needed=chat.join_request or None,
            about=chat.about or None,
        )

    async def _import_chat_invite(self, ctx: CallContext, req: Any) -> Any:
        """Joins through an invite link: private chats too; Updates as joinChannel answers
        (for a basic group: the service message 'joined by link' with the account's pts)."""
        chat = self._invited(req.hash)
        viewer = self._me(ctx).id
        if self._forbidden(chat, viewer):
            raise RpcError(400, "CHANNEL_PRIVATE")
        if viewer in chat.members:
            raise RpcError(400, "USER_ALREADY_PARTICIPANT")
        if chat.is_channel and len(self.world.joined_channels(viewer)) >= self.world.channel_limit:
            raise RpcError(400, "CHANNELS_TOO_MUCH")
        if chat.join_request:
            if viewer not in chat.requests:
                chat.requests.append(viewer)
            raise RpcError(400, "INVITE_REQUEST_SENT")
        chat.members[viewer] = self._now()
        if chat.is_channel:
            return self._channel_updates(chat, viewer)
        action = {"type": "joined_by_link", "inviter_id": chat.creator_id or viewer}
        return await self._basic_group_service(chat, viewer, action)

    async def _delete_chat_user(self, ctx: CallContext, req: Any) -> Any:
        """Leaves a basic group (only the account itself may be removed here)."""
        chat = self.world.chats.get(req.chat_id)
        if chat is None or chat.is_channel:
            raise RpcError(400, "CHAT_ID_INVALID")
        viewer = self._me(ctx).id
        if self._user_from_input(ctx, req.user_id).id != viewer:
            raise RpcError(400, "CHAT_ADMIN_REQUIRED")
        if viewer not in chat.members:
            raise RpcError(400, "USER_NOT_PARTICIPANT")
        del chat.members[viewer]
        return await self._basic_group_service(chat, viewer, {"type": "delete_user", "user_id": viewer})

    async def _basic_group_service(
        self, chat: ChatSpec, viewer: int, action: dict[str, Any]
    ) -> types.Updates:
        """Adds a service message to a basic group, pushes it to the other members and
        answers the caller with it (updateNewMessage at the caller's next pts)."""
        msg = MessageSpec(chat=chat.id, from_id=viewer, date=self._now(), action=action)
        self.world.add_message(msg)
        if not self.world.common_visible(msg, viewer):
            self.world.box_add(viewer, msg.id)  # one who left still gets its "left" message
        others = [u for u in self.world.common_viewers(msg) if u != viewer]
        await self._push_common(msg, "new", viewers=others)
        pts = self.world.account_event(viewer, msg.id, "new")
        users, chats = self._entities_for([msg], viewer)
        update = types.UpdateNewMessage(message=self._seen(msg, viewer), pts=pts, pts_count=1)
        return types.Updates(updates=[update], users=users, chats=chats, date=self._now(), seq=0)

    # === messages =========================================================================

    async def _channel_messages(self, ctx: CallContext, req: Any) -> Any:
        chat = self._channel_from_input(ctx, req.channel)
        self._check_readable(ctx, chat)
        viewer = self._me(ctx).id
        if not req.id:
            raise RpcError(400, "MESSAGE_IDS_EMPTY")
        found = [self._input_message(chat.messages, im) for im in req.id]
        return self._messages_answer(chat, found, viewer, count=len(found), with_empty=True)

    def _input_message(self, box: dict[int, MessageSpec], im: Any) -> MessageSpec | int:
        """The message an InputMessage names, or its id when there is none."""
        if isinstance(im, int):
            im = types.InputMessageID(im)
        if isinstance(im, types.InputMessageID):
            msg_id: int = im.id
            return box.get(msg_id, msg_id)
        if isinstance(im, types.InputMessageReplyTo):
            msg = box.get(im.id)
            target = msg.reply_to if msg is not None else None
            return box.get(target or 0, target or 0)
        if isinstance(im, types.InputMessagePinned):
            pinned = [m for m in box.values() if m.pinned]
            return max(pinned, key=lambda m: m.id) if pinned else 0
        raise RpcError(400, "MESSAGE_ID_INVALID")

    async def _common_messages(self, ctx: CallContext, req: Any) -> Any:
        viewer = self._me(ctx).id
        visible = {m.id: m for m in self.world.common_box(viewer)}
        found = [self._input_message(visible, im) for im in req.id]
        msgs = [m for m in found if isinstance(m, MessageSpec)]
        users, chats = self._entities_for(msgs, viewer)
        rendered = [
            render.message(self.world, m, viewer)
            if isinstance(m, MessageSpec)
            else message_empty(m, None)
            for m in found
        ]
        return types.messages.Messages(messages=rendered, topics=[], chats=chats, users=users)

    def _messages_answer(
        self,
        chat: ChatSpec | None,
        found: list[MessageSpec | int],
        viewer: int,
        count: int,
        with_empty: bool = False,
    ) -> Any:
        msgs = [m for m in found if isinstance(m, MessageSpec)]
        users, chats = self._entities_for(msgs, viewer)
        rendered = [
            render.message(self.world, m, viewer)
            if isinstance(m, MessageSpec)
            else message_empty(m, chat)
            for m in found
            if with_empty or isinstance(m, MessageSpec)
        ]
        if chat is not None and chat.is_channel:
            if not any(c.id == chat.id for c in chats):
                chats.append(self._chat_view(chat, viewer))
            return types.messages.ChannelMessages(
                pts=chat.pts, count=count, messages=rendered, topics=[], chats=chats, users=users
            )
        if count <= len(rendered):
            return types.messages.Messages(messages=rendered, topics=[], chats=chats, users=users)
        return types.messages.MessagesSlice(
            count=count, messages=rendered, topics=[], chats=chats, users=users
        )

    async def _get_history(self, ctx: CallContext, req: Any) -> Any:
        viewer = self._me(ctx).id
        chat, box = self._history_box(ctx, viewer, req.peer)
        window = history_window(
            box, req.offset_id, _ts(req.offset_date), req.add_offset, req.limit, req.min_id, req.max_id
        )
        return self._messages_answer(chat, list(window), viewer, count=len(box))

    def _history_box(
        self, ctx: CallContext, viewer: int, input_peer: Any
    ) -> tuple[ChatSpec | None, list[MessageSpec]]:
        """The chat (None for a private chat) and its messages, newest first (a channel's
        list is the world's cached one: read it, don't change it)."""
        peer = self._peer_from_input(ctx, input_peer)
        chat: ChatSpec | None = None
        if isinstance(peer, ChatSpec):
            chat = peer
            if chat.is_channel:
                self._check_readable(ctx, chat)
                return chat, self.world.newest_first(chat)
            else:
                if viewer not in chat.members:
                    raise RpcError(400, "CHAT_ID_INVALID")
                box = [m for m in self.world.common_box(viewer) if m.chat == chat.id]
        else:
            other = peer.id
            box = [
                m
                for m in self.world.common_box(viewer)
                if m.chat is None and {m.from_id, m.to_user} == {viewer, other}
            ]
        box.sort(key=lambda m: m.id, reverse=True)
        return chat, box

    async def _search_messages(self, ctx: CallContext, req: Any) -> Any:
        """messages.search in one chat: every word of q starts a word of the text (case
        folded: Telegram's search is by word prefixes, "news" finds "newsletter", "ews"
        finds nothing), the media filter matches, from_id (an InputPeer of the viewer's,
        FROM_PEER_INVALID for a bad one) sent it, and min_date < date < max_date (each
        when non-zero, as core.telegram.org describes them: filters, not offsets); then
        getHistory's window rules (offset_id, add_offset, limit, min_id, max_id) over the
        hits. `count` is every hit."""
        viewer = self._me(ctx).id
        chat, box = self._history_box(ctx, viewer, req.peer)
        sender = self._search_sender(ctx, req.from_id)
        words = search_words(req.q)
        low, high = _ts(req.min_date), _ts(req.max_date)
        hits = [
            m
            for m in box
            if words_match(words, m.text)
            and self._filter_matches(m, req.filter)
            and (sender is None or m.from_id == sender)
            and (not low or m.date > low)
            and (not high or m.date < high)
        ]
        window = history_window(
            hits, req.offset_id, None, req.add_offset, req.limit, req.min_id, req.max_id
        )
        return self._messages_answer(chat, list(window), viewer, count=len(hits))

    def _search_sender(self, ctx: CallContext, from_id: Any) -> int | None:
        """The user id messages.search's from_id names (None: anyone)."""
        if from_id is None:
            return None
        return self._user_from_input(ctx, from_id, "FROM_PEER_INVALID").id

    def _filter_matches(self, msg: MessageSpec, flt: Any) -> bool:
        if isinstance(flt, types.InputMessagesFilterEmpty):
            return True
        if isinstance(flt, types.InputMessagesFilterPinned):
            return msg.pinned
        if isinstance(flt, types.InputMessagesFilterUrl):
            return any(e["type"] in ("url", "text_url") for e in msg.entities) or bool(
                msg.media and "webpage" in msg.media
            )
        media = msg.media or {}
        kind = self.world.documents[media["document"]].kind if "document" in media else None
        wanted: dict[type, set[str | None]] = {
            types.InputMessagesFilterPhotos: {"photo"},
            types.InputMessagesFilterVideo: {"video"},
            types.InputMessagesFilterPhotoVideo: {"photo", "video"},
            types.InputMessagesFilterDocument: {"file", "audio", "video", "animation", "sticker"},
            types.InputMessagesFilterMusic: {"audio"},
            types.InputMessagesFilterVoice: {"voice"},
            types.InputMessagesFilterRoundVideo: {"round"},
            types.InputMessagesFilterRoundVoice: {"round", "voice"},
            types.InputMessagesFilterGif: {"animation"},
        }
        label = "photo" if "photo" in media else kind
        return label is not None and label in wanted.get(type(flt), set())

    async def _get_dialogs(self, ctx: CallContext, req: Any) -> Any:
        """The account's channels, megagroups and basic groups that have messages, newest
        top message first; offset_peer continues after that dialog."""
        viewer = self._me(ctx).id
        entries: list[tuple[ChatSpec, MessageSpec]] = []
        for chat in self.world.chats.values():
            if viewer not in chat.members:
                continue
            box = (
                chat.messages
                if chat.is_channel
                else {m.id: m for m in self.world.common_box(viewer) if m.chat == chat.id}
            )
            if box:
                entries.append((chat, box[max(box)]))
        entries.sort(key=lambda e: (e[1].date, e[0].id), reverse=True)
        if not isinstance(req.offset_peer, types.InputPeerEmpty):
            offset_id = render_peer_id(req.offset_peer)
            ids = [c.id for c, _ in entries]
            if offset_id in ids:
                entries = entries[ids.index(offset_id) + 1 :]
        total = len(entries)
        entries = entries[: max(0, min(req.limit, 100))]
        dialogs = [
            types.Dialog(
                peer=render.peer_of_chat(c),
                top_message=m.id,
                read_inbox_max_id=m.id,
                read_outbox_max_id=m.id,
                unread_count=0,
                unread_mentions_count=0,
                unread_reactions_count=0,
                unread_poll_votes_count=0,
                notify_settings=types.PeerNotifySettings(),
                pts=c.pts if c.is_channel else None,
            )
            for c, m in entries
        ]
        msgs = [m for _, m in entries]
        users, chats = self._entities_for(msgs, viewer)
        rendered = [render.message(self.world, m, viewer) for m in msgs]
        if total > len(entries):
            return types.messages.DialogsSlice(
                count=total, dialogs=dialogs, messages=rendered, chats=chats, users=users
            )
        return types.messages.Dialogs(dialogs=dialogs, messages=rendered, chats=chats, users=users)

    # === files ============================================================================

    async def _get_file(self, ctx: CallContext, req: Any) -> Any:
        check_part(req.offset, req.limit, bool(req.precise))
        viewer = self._me(ctx).id
        file_id, dc_id, key, size, mime = self._locate(ctx, req.location, viewer)
        if dc_id != ctx.dc_id:
            raise RpcError(303, f"FILE_MIGRATE_{dc_id}")
        self._check_drop(file_id, viewer)
        self._check_budget(viewer, max(0, min(req.limit, size - req.offset)))
        data = files.view(key, size, req.offset, req.limit)
        return FilePart(
            type=storage_type(mime) if req.offset == 0 else types.storage.FilePartial(),
            mtime=0,
            bytes=data,
        )

    def _check_budget(self, viewer: int, nbytes: int) -> None:
        """The world's download budget (budget.py): FLOOD_WAIT_X / FLOOD_PREMIUM_WAIT_X."""
        budget = self.world.download_budget
        if budget is not None and nbytes > 0:
            premium = self.world.users[viewer].premium
            self.download_budget.take(viewer, nbytes, budget, self.world.download_burst, premium)

    def _locate(self, ctx: CallContext, loc: Any, viewer: int) -> tuple[int, int, int, int, str]:
        """(file id, dc, file key, size, mime) of a location; FILE_ID_INVALID for another
        account's hash, FILE_REFERENCE_EXPIRED/INVALID for a stale or foreign reference."""
        if isinstance(loc, types.InputDocumentFileLocation):
            doc = self.world.documents.get(loc.id)
            if doc is None or loc.access_hash != self.world.access_hash("document", viewer, loc.id):
                raise RpcError(400, "FILE_ID_INVALID")
            self._check_reference(viewer, "document", doc.id, loc.file_reference)
            if loc.thumb_size:
                size = render.thumb_size(doc, loc.thumb_size)
                if size is None:
                    raise RpcError(400, "LOCATION_INVALID")
                return doc.id, doc.dc_id, render.thumb_file_key(doc.id, loc.thumb_size), size, "image/jpeg"
            return doc.id, doc.dc_id, render.document_file_key(doc.id), doc.size, doc.mime_type
        if isinstance(loc, types.InputPhotoFileLocation):
            photo = self.world.photos.get(loc.id)
            if photo is None or loc.access_hash != self.world.access_hash("photo", viewer, loc.id):
                raise RpcError(400, "FILE_ID_INVALID")
            self._check_reference(viewer, "photo", photo.id, loc.file_reference)
            spec = photo.size(loc.thumb_size)
            if spec is None:
                raise RpcError(400, "LOCATION_INVALID")
            return photo.id, photo.dc_id, render.photo_file_key(photo.id, spec.type), spec.size, "image/jpeg"
        if isinstance(loc, types.InputPeerPhotoFileLocation):
            peer = self._peer_from_input(ctx, loc.peer)
            if peer.photo != loc.photo_id or loc.photo_id not in self.world.photos:
                raise RpcError(400, "LOCATION_INVALID")
            photo = self.world.photos[loc.photo_id]
            spec = photo.largest() if loc.big else min(photo.sizes, key=lambda s: s.size)
            return photo.id, photo.dc_id, render.photo_file_key(photo.id, spec.type), spec.size, "image/jpeg"
        raise RpcError(400, "LOCATION_INVALID")

    def _check_reference(self, viewer: int, kind: str, file_id: int, ref: bytes) -> None:
        if not ref:
            raise RpcError(400, "FILE_REFERENCE_EMPTY")
        state = self.world.check_file_reference(viewer, kind, file_id, ref)
        if state == "expired":
            raise RpcError(400, "FILE_REFERENCE_EXPIRED")
        if state == "invalid":
            raise RpcError(400, "FILE_REFERENCE_INVALID")

    # === threads and comments =============================================================

    async def _get_replies(self, ctx: CallContext, req: Any) -> Any:
        """messages.getReplies: the comments of a channel's post (messages of its
        discussion group, readable without joining it) or the reply thread of a megagroup
        message; newest first, paged by getHistory's window rules; `count` is the thread's."""
        viewer = self._me(ctx).id
        group, top, channel = self._thread_top(ctx, req.peer, req.msg_id)
        thread = self.world.threads(group).thread(top.id)
        window = history_window(
            thread, req.offset_id, _ts(req.offset_date), req.add_offset, req.limit, req.min_id, req.max_id
        )
        answer = self._messages_answer(group, list(window), viewer, count=len(thread))
        if channel is not None and not any(c.id == channel.id for c in answer.chats):
            answer.chats.append(self._chat_view(channel, viewer))
        return answer

    async def _get_discussion_message(self, ctx: CallContext, req: Any) -> Any:
        """messages.getDiscussionMessage: the thread's top in the group (a post's automatic
        forward, or the megagroup message itself) and where the thread stands."""
        viewer = self._me(ctx).id
        group, top, channel = self._thread_top(ctx, req.peer, req.msg_id)
        thread = self.world.threads(group).thread(top.id)
        users, chats = self._entities_for([top], viewer)
        for chat in (group, channel):
            if chat is not None and not any(c.id == chat.id for c in chats):
                chats.append(self._chat_view(chat, viewer))
        newest = thread[0].id if thread else None
        return types.messages.DiscussionMessage(
            messages=[render.message(self.world, top, viewer)],
            unread_count=0,
            chats=chats,
            users=users,
            max_id=newest,
            read_inbox_max_id=newest,
            read_outbox_max_id=newest,
        )

    def _thread_top(
        self, ctx: CallContext, input_peer: Any, msg_id: int
    ) -> tuple[ChatSpec, MessageSpec, ChatSpec | None]:
        """(the megagroup holding the thread, the thread's top message, the broadcast
        channel asked when it is a post's comments). A post without a discussion group (or
        posted before the link), a message that does not exist: MSG_ID_INVALID; a basic
        group or a user: PEER_ID_INVALID (threads live in channels and megagroups)."""
        peer = self._peer_from_input(ctx, input_peer)
        if not isinstance(peer, ChatSpec) or not peer.is_channel:
            raise RpcError(400, "PEER_ID_INVALID")
        self._check_readable(ctx, peer)
        if peer.kind == BROADCAST:
            group = self.world.discussion_of(peer)
            forward = self.world.forward_of(peer, msg_id) if msg_id in peer.messages else None
            if group is None or forward is None:
                raise RpcError(400, "MSG_ID_INVALID")
            return group, forward, peer
        top = peer.messages.get(msg_id)
        if top is None:
            raise RpcError(400, "MSG_ID_INVALID")
        return peer, top, None

    # === auth =============================================================================

    async def _export_authorization(self, ctx: CallContext, req: Any) -> Any:
        me = self._me(ctx)
        if req.dc_id == ctx.dc_id or req.dc_id not in {o.id for o in ctx.dc_options}:
            raise RpcError(400, "DC_ID_INVALID")
        token = os.urandom(32)
        self._exported[token] = me.id
        return types.auth.ExportedAuthorization(id=me.id, bytes=token)

    async def _import_authorization(self, ctx: CallContext, req: Any) -> Any:
        user_id = self._exported.get(req.bytes)
        if user_id is None or user_id != req.id:
            raise RpcError(400, "AUTH_BYTES_INVALID")
        return self._authorize(ctx, user_id)

    def _authorize(self, ctx: CallContext, user_id: int) -> Any:
        ctx.bind_user(user_id)
        ctx.user_id = user_id
        self._awaiting_password.pop(ctx.auth_key_id, None)
        return types.auth.Authorization(user=render.user(self.world, self.world.users[user_id], user_id))

    async def _log_out(self, ctx: CallContext, req: Any) -> Any:
        """Logs this auth key out: its later calls answer AUTH_KEY_UNREGISTERED."""
        if ctx.user_id is None:
            raise RpcError(401, "AUTH_KEY_UNREGISTERED")
        self._logged_out_keys.add(ctx.auth_key_id)
        return types.auth.LoggedOut()

    async def _send_code(self, ctx: CallContext, req: Any) -> Any:
        if self.world.account_by_phone(req.phone_number) is None:
            raise RpcError(400, "PHONE_NUMBER_INVALID")
        code_hash = os.urandom(8).hex()
        self._code_hashes[code_hash] = req.phone_number.lstrip("+")
        return types.auth.SentCode(
            type=types.auth.SentCodeTypeApp(length=len(self.login_code)),
            phone_code_hash=code_hash,
            timeout=120,
        )

    async def _sign_in(self, ctx: CallContext, req: Any) -> Any:
        phone = req.phone_number.lstrip("+")
        if self._code_hashes.get(req.phone_code_hash) != phone:
            raise RpcError(400, "PHONE_CODE_EXPIRED")
        if not req.phone_code:
            raise RpcError(400, "PHONE_CODE_EMPTY")
        if req.phone_code != self.login_code:
            raise RpcError(400, "PHONE_CODE_INVALID")
        user = self.world.account_by_phone(phone)
        assert user is not None  # sendCode checked it
        del self._code_hashes[req.phone_code_hash]
        if user.password:
            self._awaiting_password[ctx.auth_key_id] = user.id
            raise RpcError(401, "SESSION_PASSWORD_NEEDED")
        return self._authorize(ctx, user.id)

    def _password_user(self, ctx: CallContext) -> UserSpec:
        uid = ctx.user_id or self._awaiting_password.get(ctx.auth_key_id)
        if uid is None:
            raise RpcError(401, "AUTH_KEY_UNREGISTERED")
        return self.world.users[uid]

    async def _get_password(self, ctx: CallContext, req: Any) -> Any:
        user = self._password_user(ctx)
        algo = SrpServer.algo(user.id, self.world.secret)
        secure = types.SecurePasswordKdfAlgoPBKDF2HMACSHA512iter100000(salt=os.urandom(8))
        if not user.password:
            return types.account.Password(
                new_algo=algo, new_secure_algo=secure, secure_random=os.urandom(32)
            )
        srp_id, srp_b = self._srp.start(user.id, user.password, algo)
        return types.account.Password(
            new_algo=algo,
            new_secure_algo=secure,
            secure_random=os.urandom(32),
            has_password=True,
            current_algo=algo,
            srp_B=srp_b,
            srp_id=srp_id,
            hint=user.hint or None,
        )

    async def _check_password(self, ctx: CallContext, req: Any) -> Any:
        user = self._password_user(ctx)
        check = req.password
        srp_id = getattr(check, "srp_id", 0)
        if self._srp.user_of(srp_id) != user.id:
            raise RpcError(400, "SRP_ID_INVALID")
        if self._srp.check(srp_id, check.A, check.M1) != user.id:
            raise RpcError(400, "PASSWORD_HASH_INVALID")
        return self._authorize(ctx, user.id)

    # === updates ==========================================================================

    async def _get_state(self, ctx: CallContext, req: Any) -> Any:
        me = self._me(ctx)
        return types.updates.State(
            pts=self.world.account_pts.get(me.id, 1),
            qts=0,
            date=self._now(),
            seq=0,
            unread_count=0,
        )

    async def _get_difference(self, ctx: CallContext, req: Any) -> Any:
        """See difference.py: the common box's events after pts, and every joined channel
        that changed since `date` named by updateChannelTooLong."""
        me = self._me(ctx)
        since = _ts(req.date) or 0
        stale = [
            c
            for c in self.world.joined_channels(me.id)
            if not self._forbidden(c, me.id) and c.log and c.log[-1].date >= since
        ]
        return difference.account_difference(
            self.world, self._viewer(me.id), req.pts, stale, self._now()
        )

    async def _get_channel_difference(self, ctx: CallContext, req: Any) -> Any:
        chat = self._channel_from_input(ctx, req.channel)
        self._check_readable(ctx, chat)
        viewer = self._viewer(self._me(ctx).id)
        return difference.channel_difference(self.world, chat, viewer, req.pts, req.limit)

    def _viewer(self, viewer: int) -> difference.Viewer:
        return difference.Viewer(
            viewer,
            entities=lambda msgs: self._entities_for(msgs, viewer),
            chat=lambda chat: self._chat_view(chat, viewer),
        )

    # === pushes (called by tests) =========================================================

    async def post_message(
        self,
        chat_id: int,
        text: str = "",
        *,
        media: dict[str, int] | None = None,
        from_id: int | None = None,
        entities: list[dict[str, Any]] | None = None,
        reply_to: int | None = None,
        fwd: dict[str, Any] | None = None,
        grouped_id: int | None = None,
        views: int | None = None,
        forwards: int | None = None,
        post_author: str | None = None,
        action: dict[str, Any] | None = None,
    ) -> MessageSpec:
        """Adds a message to a channel, megagroup or basic group and pushes
        updateNewChannelMessage / updateNewMessage to every member account (unless
        drop_next_posts holds it back). Returns the stored message (its id, its pts; in a
        basic group `id` is the store id, world.own_id(account, id) an account's own)."""
        chat = self.world.chats[chat_id]
        if from_id is None and chat.kind != BROADCAST:
            from_id = chat.creator_id  # a group message always has a sender
        msg = MessageSpec(
            chat=chat_id,
            from_id=from_id,
            date=self._now(),
            text=text,
            entities=list(entities or []),
            reply_to=reply_to,
            fwd=fwd,
            grouped_id=grouped_id,
            views=views if views is not None else (1 if chat.kind == BROADCAST else None),
            forwards=forwards if forwards is not None else (0 if chat.kind == BROADCAST else None),
            post_author=post_author,
            media=media,
            action=action,
        )
        if not chat.is_channel:
            self.world.add_message(msg)
            dropped = self._take_dropped_post(chat_id)
            await self._push_common(msg, "new", push=not dropped)
            return msg
        self.world._check_media(msg)
        await self._post_channel_message(chat, msg)
        group = self.world.discussion_of(chat)
        forward = self.world.discussion_copy(chat, msg)
        if group is not None and forward is not None:  # every post reaches the group
            await self._post_channel_message(group, forward)
        return msg

    async def post_comment(
        self,
        channel_id: int,
        post_id: int,
        text: str,
        *,
        from_id: int,
        reply_to: int | None = None,
    ) -> MessageSpec:
        """Comments on a channel's post: a message of its discussion group replying to the
        post's automatic forward (or, with `reply_to`, to that comment of the group, inside
        the thread), pushed to the group's member accounts. Returns it (its id in the group)."""
        group = self.world.discussion_of(self.world.chats[channel_id])
        if group is None:
            raise ValueError(f"channel {channel_id} has no discussion group")
        msg = MessageSpec(
            chat=group.id,
            from_id=from_id,
            date=self._now(),
            text=text,
            reply_to=reply_to,
            comment_to=post_id,
        )
        await self._post_channel_message(group, msg)
        return msg

    async def _post_channel_message(self, chat: ChatSpec, msg: MessageSpec) -> None:
        """Stores a new message of a channel or megagroup (its next id, a pts event) and
        pushes updateNewChannelMessage, unless drop_next_posts holds it back."""
        self.world.place_in_thread(chat, msg)
        msg.id = chat.next_id
        chat.next_id += 1
        chat.messages[msg.id] = msg
        event = self.world.channel_event(chat, "new", [msg.id], self._now())
        msg.pts = event.pts
        if self._take_dropped_post(chat.id):
            return
        await self._push_channel(
            chat,
            lambda viewer: types.UpdateNewChannelMessage(
                message=render.message(self.world, msg, viewer),
                pts=event.pts,
                pts_count=event.pts_count,
            ),
            [msg],
        )

    async def edit_message(
        self,
        chat_id: int,
        msg_id: int,
        text: str,
        *,
        entities: list[dict[str, Any]] | None = None,
    ) -> MessageSpec:
        """Edits a message (by its channel id, or store id in a basic group: text,
        entities, edit_date = now) and pushes
        updateEditChannelMessage / updateEditMessage to member accounts."""
        chat = self.world.chats[chat_id]
        box = chat.messages if chat.is_channel else self.world.common
        msg = box[msg_id]
        msg.text = text
        msg.entities = list(entities or [])
        msg.edit_date = max(self._now(), msg.date + 1)
        if not chat.is_channel:
            await self._push_common(msg, "edit")
            return msg
        event = self.world.channel_event(chat, "edit", [msg_id], self._now())
        await self._push_channel(
            chat,
            lambda viewer: types.UpdateEditChannelMessage(
                message=render.message(self.world, msg, viewer),
                pts=event.pts,
                pts_count=event.pts_count,
            ),
            [msg],
        )
        return msg

    async def delete_messages(self, chat_id: int | None, ids: list[int]) -> None:
        """Deletes messages and pushes updateDeleteChannelMessages (ids only, pts_count =
        len(ids)) / updateDeleteMessages to member accounts. `chat_id` None: private
        messages (store ids), updateDeleteMessages to both sides' accounts."""
        chat = self.world.chats[chat_id] if chat_id is not None else None
        if chat is None or not chat.is_channel:
            for i in ids:
                msg = self.world.common.pop(i)
                await self._push_common(msg, "delete")
            return
        for i in ids:
            chat.messages.pop(i, None)
        event = self.world.channel_event(chat, "delete", ids, self._now())
        await self._push_channel(
            chat,
            lambda viewer: types.UpdateDeleteChannelMessages(
                channel_id=chat.id, messages=list(ids), pts=event.pts, pts_count=event.pts_count
            ),
            [],
        )

    async def kick(self, user_id: int, chat_id: int, ban: bool = True) -> None:
        """Removes the account from a channel/megagroup (banned unless ban=False) and pushes
        updateChannel with the Channel as it now sees it (ChannelForbidden, or left=True).
        From a basic group: its creator removes it (banned: the chat is ChatForbidden to it
        then), and the service message messageActionChatDeleteUser comes to every member
        and to the removed account as updateNewMessage, each under its own id, as Telegram
        tells a basic group's members (no updateChannel: a basic group has no pts of its own)."""
        chat = self.world.chats[chat_id]
        chat.members.pop(user_id, None)
        if ban and user_id not in chat.banned:
            chat.banned.append(user_id)
        if not chat.is_channel:
            action = {"type": "delete_user", "user_id": user_id}
            kicker = chat.creator_id if chat.creator_id != user_id else None
            msg = MessageSpec(chat=chat.id, from_id=kicker, date=self._now(), action=action)
            self.world.add_message(msg)
            viewers = self.world.common_holders(msg)
            if self.world.users[user_id].is_account:
                self.world.box_add(user_id, msg.id)  # the removed one hears of it too
                viewers.append(user_id)
            await self._push_common(msg, "new", viewers=viewers)
            return
        await self._push(user_id, self._channel_updates(chat, user_id))

    def add_member(self, user_id: int, chat_id: int) -> None:
        """Makes the account a member without a request (e.g. an approved join request)."""
        chat = self.world.chats[chat_id]
        chat.members[user_id] = self._now()
        if user_id in chat.requests:
            chat.requests.remove(user_id)
        if user_id in chat.banned:
            chat.banned.remove(user_id)

    async def _push_channel(
        self, chat: ChatSpec, make: Callable[[int], Any], msgs: list[MessageSpec]
    ) -> None:
        for viewer in sorted(chat.members):
            if not self.world.users.get(viewer, UserSpec(0)).is_account:
                continue
            users, chats = self._entities_for(msgs, viewer)
            if not any(c.id == chat.id for c in chats):
                chats.append(self._chat_view(chat, viewer))
            updates = types.Updates(
                updates=[make(viewer)], users=users, chats=chats, date=self._now(), seq=0
            )
            await self._push(viewer, updates)

    async def _push_common(
        self, msg: MessageSpec, kind: str, viewers: list[int] | None = None, push: bool = True
    ) -> None:
        """Moves the pts of each account whose box holds the message and (unless
        push=False: a lost update) pushes updateNewMessage / updateEditMessage /
        updateDeleteMessages to it, with the account's own id of the message."""
        for viewer in self.world.common_holders(msg) if viewers is None else viewers:
            pts = self.world.account_event(viewer, msg.id, kind)
            if not push:
                continue
            update: Any
            if kind == "new":
                update = types.UpdateNewMessage(
                    message=self._seen(msg, viewer), pts=pts, pts_count=1
                )
            elif kind == "edit":
                update = types.UpdateEditMessage(
                    message=self._seen(msg, viewer), pts=pts, pts_count=1
                )
            else:
                own = self.world.seen_by(msg, viewer).id
                update = types.UpdateDeleteMessages(messages=[own], pts=pts, pts_count=1)
            users, chats = self._entities_for([msg], viewer)
            await self._push(
                viewer,
                types.Updates(updates=[update], users=users, chats=chats, date=self._now(), seq=0),
            )

    def _seen(self, msg: MessageSpec, viewer: int) -> Any:
        """The TL message `viewer` gets (a common-box message under its own id)."""
        return render.message(self.world, self.world.seen_by(msg, viewer), viewer)

    async def _push(self, user_id: int, updates: Any) -> None:
        if self._pusher is None or user_id in self._fates:
            return  # a banned or logged-out account's sessions get no updates from Telegram
        try:
            result = self._pusher(user_id, updates)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a dead connection must not break the test's world change
            log.exception("fakedc: push to %s failed", user_id)


# --- pure rules (unit-tested on their own) -----------------------------------------------


def check_part(offset: int, limit: int, precise: bool) -> None:
    """Telegram's upload.getFile part rules (see the module docstring)."""
    step = 1024 if precise else 4096
    if offset < 0 or offset % step:
        raise RpcError(400, "OFFSET_INVALID")
    if limit <= 0 or limit % step or limit > MIB:
        raise RpcError(400, "LIMIT_INVALID")
    if not precise:
        if MIB % limit:
            raise RpcError(400, "LIMIT_INVALID")
        if offset // MIB != (offset + limit - 1) // MIB:
            raise RpcError(400, "LIMIT_INVALID")


def search_words(q: str) -> list[str]:
    """The case-folded words of a messages.search query."""
    return re.findall(r"\w+", q.casefold())


def words_match(words: list[str], text: str) -> bool:
    """Whether every query word starts some word of `text` (no words: every text)."""
    if not words:
        return True
    have = re.findall(r"\w+", text.casefold())
    return all(any(h.startswith(w) for h in have) for w in words)


def history_window(
    box: list[MessageSpec],
    offset_id: int,
    offset_date: int | None,
    add_offset: int,
    limit: int,
    min_id: int,
    max_id: int,
) -> list[MessageSpec]:
    """messages.getHistory over `box` (newest first): start at the first message older than
    offset_id (or than offset_date when offset_id is 0), shift by add_offset, take limit
    (≤ 100; 0 stands for 20), then keep only min_id < id < max_id."""
    limit = DEFAULT_HISTORY if limit == 0 else max(0, min(limit, MAX_HISTORY))
    if offset_id:
        # The first message older than offset_id; box is sorted by id, descending.
        start = bisect.bisect_right(box, -offset_id, key=lambda m: -m.id)
    elif offset_date:
        start = next((i for i, m in enumerate(box) if m.date < offset_date), len(box))
    else:
        start = 0
    start += add_offset
    end = start + limit
    window = box[max(start, 0) : max(end, 0)]
    return [m for m in window if m.id > min_id and (not max_id or m.id < max_id)]


_STORAGE = {
    "image/jpeg": types.storage.FileJpeg,
    "image/png": types.storage.FilePng,
    "image/gif": types.storage.FileGif,
    "image/webp": types.storage.FileWebp,
    "video/mp4": types.storage.FileMp4,
    "video/quicktime": types.storage.FileMov,
    "audio/mpeg": types.storage.FileMp3,
    "application/pdf": types.storage.FilePdf,
}


def message_empty(msg_id: int, chat: ChatSpec | None) -> Any:
    # Telethon's patched MessageEmpty wants peer_id as an argument (the TL field is optional).
    peer = render.peer_of_chat(chat) if chat is not None else None
    return types.MessageEmpty(id=msg_id, peer_id=peer)


def storage_type(mime: str) -> Any:
    return _STORAGE.get(mime, types.storage.FileUnknown)()


def render_peer_id(peer: Any) -> int:
    for attr in ("channel_id", "chat_id", "user_id"):
        if hasattr(peer, attr):
            return int(getattr(peer, attr))
    return 0


def _ts(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return int(value) or None
    return int(value.timestamp())
