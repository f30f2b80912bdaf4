"""One Telegram account: `TeleClient`, the calls the service makes on one session file.

A `TeleClient` puts together what one account is made of: its session file (locked by
`model.session.SessionLock` while it runs), its Telethon client (built by a
`model.clientfactory.ClientFactory`), its `model.connection.Connection` (every request,
Telethon's errors turned into the service's, the account's `AccountStatus` kept), and its
`model.resolver.PeerResolver` (peers from the session's cache first, a username resolution
paid from the account's budget last) and its `model.membership.Membership` (joins and
leaves). The TL shape of each call is `model.tlrequests`'s; the pool of accounts is
`model.pool.TeleClients`. Its updates (when it receives them) are its
`model.updatefeed.UpdateFeed`'s: caught up at start on what it missed while down, held
until the consumer opens the feed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from telethon import functions, types, utils

from common.const import Proxy
from common.errors import (
    AccountUnusable,
    InvalidArgument,
    PeerNotFound,
    TgcError,
)
from common.utils import PeerRef, mask_phone, utc_iso
from model import tlrequests as tl
from model.account import AccountState, AccountStatus, Clock, account_label
from model.budgetstore import ResolveBudget, ResolveBudgetStore
from model.clientfactory import ClientFactory, ClientOptions, build_client
from model.connection import CallObserver, Connection
from model.downloader import MediaConnections
from model.membership import Membership
from model.resolver import Cached, Entity, PeerResolver, pick_entity
from model.session import EntitySession, SessionLock, SessionSeal
from model.tgerrors import OTHER
from model.updatefeed import UpdateFeed

log = logging.getLogger(__name__)


class TeleClient:
    """One Telegram account: one Telethon session file.

    `name` is the account's public label (`session_name`, the file's stem, may be a phone
    number and stays local). `pending_downloads` is kept by the media processor (up when
    it queues a download bound to this account, down when it ends); the pool gives busy
    accounts less new work. `flood_waits` and `flood_wait_seconds` count the flood waits
    met; `call_observer` (set by `TeleClients.observe_calls`) is told of every request.
    `updates` is its UpdateFeed (None when built with receive_updates=False): the
    consumer of its updates opens it once its callbacks are registered, and holds it when
    it stops.
    """

    def __init__(
        self,
        session_path: str | os.PathLike[str],
        api_id: int,
        api_hash: str,
        *,
        proxy: Proxy | None = None,
        label: str | None = None,
        resolve_per_minute: float = 5,
        resolve_per_day: float = 200,
        flood_sleep_threshold: int = 0,
        request_retries: int = 2,
        request_timeout: float = 30.0,
        reconnect_delay: float = 1.0,
        reconnect_max_delay: float = 60.0,
        receive_updates: bool = True,
        device_model: str | None = None,
        app_version: str | None = None,
        system_version: str | None = None,
        lang_code: str = "en",
        clock: Clock = time.monotonic,
        resolve_store: ResolveBudgetStore | None = None,
        session_key: bytes | None = None,
        client_factory: ClientFactory = build_client,
    ) -> None:
        path = Path(session_path)
        if path.suffix != ".session":
            path = path.with_name(path.name + ".session")
        self.session_name = path.stem  # may be a phone number: stays in this process
        self.session_path = path
        # The operator's name for it (its sidecar's `label`): shown, never a key of anything.
        self.label = label
        self.proxy = proxy  # what its connections go through (a reload compares it)
        self.pending_downloads = 0
        self.user_id: int | None = None
        self.phone: str | None = None
        self.display_name: str | None = None
        self._clock = clock
        self._started = False
        self._lock = SessionLock(path)
        self._status = AccountStatus(account_label(path.stem), clock)
        options = ClientOptions(
            api_id,
            api_hash,
            proxy=proxy,
            flood_sleep_threshold=flood_sleep_threshold,
            request_retries=request_retries,
            receive_updates=receive_updates,
            catch_up=receive_updates,
            device_model=device_model,
            app_version=app_version,
            system_version=system_version,
            lang_code=lang_code,
        )
        # ConfigError (naming telegram.session_key) when the file's key does not open.
        seal = SessionSeal(session_key) if session_key is not None else None
        session = EntitySession(str(path), seal=seal)
        self.client = client_factory(session, options)
        self.updates = UpdateFeed(self.client, session) if receive_updates else None
        self._connection = Connection(
            self.client,
            self._status,
            on_connect=self._check_account,
            timeout=request_timeout,
            reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay,
            proxy=proxy,
        )
        self._invoke = self._connection.invoke
        # Keyed by the stem: a label can move to another account (see model.budgetstore).
        budget = ResolveBudget(
            resolve_per_minute, resolve_per_day, clock, store=resolve_store, account=path.stem
        )
        self._peers = PeerResolver(self.client.session, self._invoke, self._status, budget)
        self._membership = Membership(self._invoke, self._peers, self.client.session, self._status)
        # The connections its downloads use besides Telethon's (model/downloader.py).
        self.media_connections = MediaConnections(self.client)

    def __repr__(self) -> str:
        return f"<TeleClient {self.name} {self.state}>"

    # --- life ---

    async def start(self) -> None:
        """Locks the session file, connects and checks the account.

        Raises ConfigError when another process holds the session. Nothing else is fatal:
        an account that can't connect is disconnected and reconnects in the background,
        one that is banned or logged out is reported and left alone.
        """
        self._lock.acquire()
        self._started = True
        await self._connection.open()
        if self.updates is not None:
            self.updates.start()

    async def stop(self) -> None:
        """Disconnects (Telethon saves the session's entities then) and frees the lock.
        Stopping twice is harmless (a second Telethon disconnect would stall 5 s)."""
        if not self._started:
            self.client.session.close()  # never connected (e.g. the lock was held)
            return
        self._started = False
        await self._connection.stop_watching()
        try:
            if self.updates is not None:
                await self.updates.stop()
            await self.client.disconnect()
            # Its home-DC media connection (model/downloader.py) is not Telethon's to close.
            await self.media_connections.close()
        finally:
            self._lock.release()

    async def _check_account(self) -> None:
        # users.getUsers(self) rather than Telethon's is_user_authorized(), which turns every
        # error into False: a ban (USER_DEACTIVATED_BAN) must not pass for a logout.
        try:
            users = await self._invoke(functions.users.GetUsersRequest([types.InputUserSelf()]))
        except AccountUnusable:
            return  # reported by the connection; the pool leaves it out
        except TgcError as e:  # a flood wait or a hiccup: the account may still serve
            log.warning("account %s: could not read its user (%s)", self.name, e)
            return
        me = users[0]
        self.user_id = me.id
        self.phone = me.phone
        self.display_name = utils.get_display_name(me) or None
        log.info("account %s ready (user %s)", self.name, self.user_id)

    # --- state (the account's AccountStatus) ---

    @property
    def name(self) -> str:
        """The public label (answers, events, stored rows); the pool may add a suffix."""
        return self._status.name

    @name.setter
    def name(self, label: str) -> None:
        self._status.name = label

    @property
    def state(self) -> AccountState:
        """ok, flood_wait (while a wait runs), banned, unauthorized or disconnected."""
        return self._status.state

    @property
    def usable(self) -> bool:
        """False for good when banned or logged out: the pool never asks it again."""
        return self._status.usable

    @property
    def reason(self) -> str | None:
        """Why the account is banned, unauthorized or disconnected."""
        return self._status.reason

    @property
    def flood_until(self) -> float | None:
        """The latest end (on the injected clock) of a flood wait still running, if any."""
        return self._status.flood_until

    @property
    def flood_waits(self) -> int:
        return self._status.flood_waits

    @property
    def flood_wait_seconds(self) -> int:
        return self._status.flood_wait_seconds

    @property
    def in_flight(self) -> int:
        """Requests this account sent and Telegram has not answered yet."""
        return self._connection.in_flight

    @property
    def call_observer(self) -> CallObserver | None:
        return self._connection.call_observer

    @call_observer.setter
    def call_observer(self, observer: CallObserver | None) -> None:
        self._connection.call_observer = observer

    def ready_in(self, peer: PeerRef | None) -> float | None:
        """Seconds until this account can take a call about `peer` (0: now); None: it can't
        (unusable, disconnected, or an id it does not know)."""
        if not self._status.connected:
            return None
        wait = self._status.flood_ready_in(OTHER)
        if peer is None or peer.invite is not None or self.knows(peer):
            return wait
        if peer.username is None:
            return None  # an id is only ever found in the cache
        return max(wait, self._peers.resolution_ready_in())

    def resolve_blocked_by_budget(self) -> bool:
        """Whether the resolution budget, not a flood wait, holds resolutions back."""
        return self._peers.blocked_by_budget()

    def knows(self, peer: PeerRef) -> bool:
        """Whether the session holds the peer's access hash (or is resolving it right now)."""
        return self._peers.knows(peer)

    def note_error(self, error: BaseException) -> BaseException:
        """Keeps the account's state for a Telegram error met outside its own requests (the
        downloader's senders): see `model.connection.Connection.note_error`."""
        return self._connection.note_error(error)

    def describe(self, wall_clock: Clock = time.time) -> dict[str, Any]:
        """The account as its public description lists it: label, the operator's label
        (sidecar), the proxy it connects through (scheme://host:port, never the credentials),
        masked phone, user id, state, why it is banned, unauthorized or disconnected
        (`reason`, else None), the end of its flood wait (a UTC date) and its pending
        downloads."""
        until = self.flood_until
        wall = None if until is None else wall_clock() + (until - self._clock())
        return {
            "name": self.name,
            "label": self.label,
            "proxy": self.proxy.address if self.proxy is not None else None,
            "phone": mask_phone(self.phone) if self.phone else None,
            "user_id": self.user_id,
            "state": str(self.state),
            "reason": self.reason,
            "flood_wait_until": utc_iso(wall),
            "pending_downloads": self.pending_downloads,
        }

    # --- the calls ---

    async def get_entity(self, ref: PeerRef) -> Entity:
        """The peer's User, Chat or Channel: cache by id first, username resolution last."""
        cached, entity = await self._peers.input_peer(ref)
        return entity if entity is not None else await self._peers.entity(cached, str(ref))

    async def get_full(self, ref: PeerRef) -> tuple[Entity, Any]:
        """(entity, ChannelFull | ChatFull | UserFull)."""
        cached, _ = await self._peers.input_peer(ref)
        res = await self._invoke(tl.full_request(cached.input_peer), peer=str(ref))
        found, full = tl.full_of(res)
        return pick_entity(found, cached.marked_id, str(ref)), full

    async def get_history(
        self,
        ref: PeerRef,
        limit: int = 20,
        offset_id: int = 0,
        min_id: int = 0,
        max_id: int = 0,
        offset_date: int | None = None,
    ) -> tuple[Entity, list[Any]]:
        """messages.getHistory: newest first; offset_id, min_id, max_id exclusive (0: none);
        `offset_date` (unix seconds), when given, starts the page at the newest message
        strictly older than it instead of below offset_id or max_id."""
        cached, entity = await self._peers.input_peer(ref)
        res = await self._invoke(
            tl.history_request(cached.input_peer, limit, offset_id, min_id, max_id, offset_date),
            peer=str(ref),
            blame=tl.history_blame(offset_id=offset_id, max_id=max_id, min_id=min_id),
        )
        return await self._page(res, cached, entity, str(ref))

    async def search_messages(
        self,
        ref: PeerRef,
        q: str,
        *,
        sender: PeerRef | None = None,
        filter_name: str | None = None,
        limit: int = 20,
        offset_id: int = 0,
    ) -> tuple[Entity, list[Any], int]:
        """messages.search in one chat: (entity, the page newest first, how many match in
        all). `sender` is resolved like any peer (this account's cache by id first, a
        username resolution last); `filter_name` is a key of tlrequests.SEARCH_FILTERS."""
        cached, entity = await self._peers.input_peer(ref)
        from_peer = None
        if sender is not None:
            from_peer = (await self._peers.input_peer(sender))[0].input_peer
        request = tl.search_request(cached.input_peer, q, from_peer, filter_name, limit, offset_id)
        res = await self._invoke(request, peer=str(ref), blame=tl.SEARCH_MESSAGES_BLAME)
        entity, messages = await self._page(res, cached, entity, str(ref))
        return entity, messages, tl.count_of(res)

    async def get_messages(self, ref: PeerRef, ids: list[int]) -> tuple[Entity, list[Any | None]]:
        """Messages by id, in the order asked; None where a message does not exist."""
        cached, entity = await self._peers.input_peer(ref)
        request = tl.messages_request(cached.input_peer, ids)
        res = await self._invoke(request, peer=str(ref), blame=tl.IDS_BLAME)
        entity, messages = await self._page(res, cached, entity, str(ref))
        return entity, tl.by_id_of(messages, cached.marked_id, ids)

    async def get_replies(
        self, ref: PeerRef, msg_id: int, limit: int = 20, offset_id: int = 0
    ) -> tuple[Entity, list[Any], int, Entity | None]:
        """messages.getReplies: (entity, messages newest first, how many the thread holds,
        the discussion group or None). The comments of channel post `msg_id` are messages
        of the channel's discussion group; a megagroup's thread is its own (no discussion
        group then). offset_id is exclusive (0: the newest). A message with no thread is
        InvalidArgument on `msg_id`; a basic group or a user has none (on `ref`)."""
        cached, entity = await self._peers.input_peer(ref)
        raw = str(ref)
        if not isinstance(cached.input_peer, types.InputPeerChannel):
            raise InvalidArgument("ref", f"{raw} is not a channel or a megagroup (no threads)")
        request = tl.replies_request(cached.input_peer, msg_id, limit, offset_id)
        res = await self._invoke(request, peer=raw, blame=tl.REPLIES_BLAME)
        entity, messages = await self._page(res, cached, entity, raw)
        return entity, messages, tl.count_of(res), tl.discussion_of(res, cached.marked_id)

    async def _page(
        self, res: Any, cached: Cached, entity: Entity | None, raw: str
    ) -> tuple[Entity, list[Any]]:
        if entity is None:
            try:
                entity = pick_entity(tl.entities_of(res), cached.marked_id, raw)
            except PeerNotFound:
                # Telegram lists only the peers its messages mention: an empty page of a
                # private chat or a basic group names none. Ask for the peer itself.
                entity = await self._peers.entity(cached, raw)
        return entity, tl.messages_of(res)

    async def get_participants(
        self, ref: PeerRef, limit: int = 100, offset: int = 0
    ) -> tuple[Entity, list[Any], int]:
        """(entity, users, total). Megagroups list recent members (at most 200 per call);
        a broadcast channel's members need admin rights (PeerPrivate); basic groups come
        whole from messages.getFullChat and are sliced here."""
        cached, entity = await self._peers.input_peer(ref)
        p, raw = cached.input_peer, str(ref)
        if isinstance(p, types.InputPeerChannel):
            request = tl.participants_request(p, limit, offset)
            res = await self._invoke(request, peer=raw, blame=tl.PARTICIPANTS_BLAME)
            # res.chats holds chats that are members, not the channel itself.
            entity = entity or await self._peers.entity(cached, raw)
            return entity, tl.participant_users(res), res.count
        if isinstance(p, types.InputPeerChat):
            res = await self._invoke(functions.messages.GetFullChatRequest(p.chat_id), peer=raw)
            listed = tl.chat_members(res, raw)
            entity = pick_entity(res.chats, cached.marked_id, raw)
            return entity, listed[offset : offset + limit], len(listed)
        raise InvalidArgument("ref", f"{raw} is a user: users have no participants")

    async def search(self, q: str, limit: int = 20) -> list[Entity]:
        """contacts.search: the public channels and groups found, at most `limit` (see
        `model.tlrequests.public_chats`). How short a query may be is Telegram's call (its
        limit is undocumented and spares short usernames): a query it finds too short is
        InvalidArgument on `q`."""
        request = functions.contacts.SearchRequest(q, limit)
        return tl.public_chats(await self._invoke(request, blame=tl.SEARCH_BLAME), limit)

    async def join(self, ref: PeerRef) -> Entity:
        """Joins a channel or megagroup (by username or id) or any chat by invite link:
        see `model.membership.Membership.join` (JoinRequestSent when an admin must approve).
        A channel's updates are tracked from the join on (a catch-up asks for them)."""
        entity = await self._membership.join(ref)
        if self.updates is not None:
            await self.updates.follow(entity, self._invoke)
        return entity

    async def follow_updates(self, ref: PeerRef) -> None:
        """Tracks the updates of a channel the account is in (joined before its updates
        were tracked, or dropped since) from now on, so a catch-up after a stop asks for
        them; nothing when it does already, for another peer, or without updates."""
        feed = self.updates
        if feed is None or ref.kind != "channel" or ref.id is None or feed.follows(ref.id):
            return
        await feed.follow(await self.get_entity(ref), self._invoke)

    async def leave(self, ref: PeerRef) -> Entity:
        """Leaves a channel, megagroup or basic group; leaving twice is not an error."""
        return await self._membership.leave(ref)
