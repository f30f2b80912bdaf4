"""The subscription flow: joins and leaves, Telegram's updates → events, and the gap poll.

    pool.on_update ──▶ Subscriber._on_update ──▶ parser ──▶ Publisher (outbox first)
                                        └──────▶ JoinMap (kicked, last message id)
    poll loop (every poll_interval, after an account reconnects, on a gap)
        └─ messages.getHistory(min_id=last_message_id) ──▶ the same path, once

Once: an event reaches the publisher once even when several accounts sit in the chat and
when both the push and the poll bring it. Two guards, both cheap:

- `_Recent`, a bounded set of the last event ids (`CHAT:MSG:EVENT[:EDIT_DATE]`) handed to
  the publisher: an id is claimed before the first await, so concurrent callbacks of two
  accounts can't both publish it (Telethon dispatches each update in its own task);
- the join map's `last_message_id` per chat, a watermark meaning "every message up to here
  was published": a new message at or below it is old news, also after a restart (when
  the recent set is empty and Telethon replays updates). It moves only when it stays true:
  over the ids right after it that are published, or past a page the poll read whole. A
  message beyond a gap is published at once; if the gap is still there a second later
  (not just an update handled out of order), the chat is polled and the poll reads the
  gap from Telegram.

The watermark moves after the publisher has the event in its outbox, so a crash in between
publishes the message again (a duplicate with the same message_id), never loses it.

Basic groups number their messages per account (the same message has another id for each
account in it; channels and megagroups have per-chat ids), so there:
- the watermark is per account: the join map's cursor of the (group, account) membership, in
  that account's own ids, meaning the same ("every message up to here was published");
- across accounts a message is claimed by what it is (chat, date, sender, text, media, and
  the edit date of an edit: a hash in `_Recent`), so one event comes of a message however
  many accounts see it, pushed or polled;
- an account's ids are shared with its private chats and other basic groups, so an id past
  its cursor may sit behind other chats' messages rather than a lost one: it waits in
  `_group_ahead` as above, and after GAP_WAIT the chat is polled *as that account*;
- a poll reads a basic group as each account with ids waiting past its cursor, else as one
  joined account, the first with a cursor (one without starts it at the newest, publishing
  nothing, as for channels), with messages.getHistory(min_id=its cursor) in its ids;
- after a restart, when the content hashes are gone, the cursors keep a poll or a replayed
  update of the same account from publishing again. Another account's first sight of a
  message published before may publish it again under that account's id (a duplicate,
  never a loss).
updateDeleteMessages outside channels names no chat and is ignored.

Accounts: an account at its channel limit (model.joinmap.CHANNELS_PER_ACCOUNT) is skipped
when joining, and so is one that Telegram answered CHANNELS_TOO_MUCH (it may be in chats the
join map doesn't know: joined by hand, or its limit is lower) until it leaves a chat through
the API or FULL_RECHECK s pass; the join moves to the next account, and only when none can
join is the answer 503 NO_ACCOUNT_AVAILABLE. A chat that admits members only with an admin's
approval (INVITE_REQUEST_SENT) gets one join request, from one account, and the answer 403
PEER_PRIVATE saying so; a later POST of the chat is joined by that same account (so the
admins see one request), which works once they approved it.

A banned or logged-out account's chats are joined again by other accounts (`_rejoin_ref`):
by @username; without one (a basic group, a private channel: Telegram lets those be joined
only by invite link, and another account has no access hash for the id) by the invite link
the chat was subscribed by, which the join map keeps (never shown in answers or events);
else by id, which works only for an account already in the chat. A basic group's taker
starts its own cursor at its newest id (no history again); a channel's watermark stays, so
the poll brings what came meanwhile. A chat none of these reaches (a private channel
subscribed by id, an invite link expired or revoked: INVITE_HASH_EXPIRED or _INVALID, logged
as a dead invite) stays orphaned, as below, until a POST subscribes it again. The ban is
recorded (and said) for all its chats at once; the joins then go one at a time,
TAKEOVER_PACE s apart (a burst of joins earns a flood wait), in a task of their own that
holds the API's lock only around one chat's join; a flood wait stops them (the rest stay
orphaned). A chat no account can take over then (every other one full, banned, logged out or
in a flood wait, or none there) is orphaned: the join map keeps it (nobody joined, the
latest membership banned_account: derived, so it survives a restart) and GET
/api/v1/subscriptions shows it so. The account check joins it as soon as an account can: at
start, at once when an account's state turns ok, and otherwise after a per-chat backoff
(REJOIN_BACKOFF s, doubling up to REJOIN_BACKOFF_MAX) so that a full pool is not asked to
join every few seconds. DELETE of an orphaned chat ends it (state left); nothing is rejoined
after that. A kick is not taken over: the chat's admins removed the account, and joining
with another one would evade them (the chat stays kicked until the API subscribes it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from telethon.tl import types

from common.errors import (
    AccountUnusable,
    AlreadySubscribed,
    FloodWait,
    JoinRequestSent,
    NoAccountAvailable,
    NotSubscribed,
    PeerNotFound,
    TelegramError,
    TgcError,
)
from common.utils import PeerRef, parse_peer
from model.account import AccountState
from model.joinmap import CHANNELS_PER_ACCOUNT, JoinMap, State
from model.media import Media
from model.pool import TeleClients
from model.teleclient import TeleClient
from service import parser, queries
from service.publisher import Event, Publisher, make_event

log = logging.getLogger(__name__)

HISTORY_PAGE = 100  # messages.getHistory's own cap
GAP_WAIT = 1.0  # s an id published past the watermark may wait before its chat is polled
MAX_PAGES_PER_POLL = 20  # per chat and poll: a long outage drains over several polls
REJOIN_BACKOFF = 30.0  # s before an orphaned chat is tried again, doubling per failure...
REJOIN_BACKOFF_MAX = 3600.0  # ...up to this
TAKEOVER_PACE = 2.0  # s between two takeover joins: a burst of joins earns a flood wait
# An account Telegram answered CHANNELS_TOO_MUCH is not asked to join again for this long
# (unless it leaves a chat through the API first): its owner may have freed room by hand,
# and one wasted join an hour per full account costs nothing.
FULL_RECHECK = 3600.0
JOIN_REQUESTS_MAX = 10_000  # chats whose pending join request is remembered (the oldest go)


class _Recent:
    """A bounded set remembering the most recent keys (oldest forgotten first)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def claim(self, key: str) -> bool:
        """True the first time a key is seen (and remembers it), False after."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._keys


class _Backoff:
    """When each key may be tried again: `first` s after a failure, the wait doubling with
    each failure in a row up to `cap`. A key not failed (or forgotten) is due at once."""

    def __init__(
        self, first: float, cap: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._first, self._cap, self._clock = first, cap, clock
        self._next: dict[int, tuple[float, float]] = {}  # key: (due at, the wait after that)

    def due(self, key: int) -> bool:
        entry = self._next.get(key)
        return entry is None or entry[0] <= self._clock()

    def failed(self, key: int) -> float:
        """Puts the key's next try off; returns by how many seconds."""
        _, wait = self._next.get(key, (0.0, self._first))
        self._next[key] = (self._clock() + wait, min(wait * 2, self._cap))
        return wait

    def forget(self, key: int) -> None:
        self._next.pop(key, None)

    def keep_only(self, keys: Iterable[int]) -> None:
        keep = set(keys)
        for key in [k for k in self._next if k not in keep]:
            del self._next[key]

    def all_due(self) -> None:
        """Every key is due now (a reason to hope changed); the waits reached are kept, so
        a try that fails again still waits long."""
        self._next = {k: (0.0, wait) for k, (_, wait) in self._next.items()}


class Subscriber:
    """Joins/leaves for the API, Telegram updates to events, and the gap poll.

    `subscribe`/`unsubscribe` are what POST/DELETE /api/v1/subscriptions call.
    """

    def __init__(
        self,
        pool: TeleClients,
        joinmap: JoinMap,
        publisher: Publisher,
        *,
        poll_interval: float = 60.0,
        poll_pace: float = 0.2,
        check_interval: float = 5.0,
        channel_limit: int = CHANNELS_PER_ACCOUNT,
        recent_size: int = 100_000,
        media_queue: queries.MediaQueue | None = None,
        clock: Callable[[], float] = time.time,
        rejoin_backoff: float = REJOIN_BACKOFF,
        rejoin_backoff_max: float = REJOIN_BACKOFF_MAX,
        takeover_pace: float = TAKEOVER_PACE,
    ) -> None:
        self._pool = pool
        self._joinmap = joinmap
        self._publisher = publisher
        self._poll_interval = poll_interval
        self._poll_pace = poll_pace
        self._check_interval = check_interval
        self._channel_limit = channel_limit
        self._recent = _Recent(recent_size)
        self._media_queue = media_queue
        self._clock = clock
        self._poll_now: set[int] = set()  # chats to poll at once (a gap, a reconnect)
        self._poll_all = True  # the first poll covers every chat (missed while down)
        self._wake = asyncio.Event()
        self._states: dict[str, AccountState] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._api_lock = asyncio.Lock()
        self._leaving: set[tuple[int, str]] = set()
        # Accounts Telegram found full (CHANNELS_TOO_MUCH): name → when, on `clock`.
        self._full: dict[str, float] = {}
        # Chats with a join request pending: the ref's key → the account that filed it.
        self._requests: dict[str, str] = {}
        self._rejoin_after = _Backoff(rejoin_backoff, rejoin_backoff_max)  # orphaned chats
        self._takeover_pace = takeover_pace
        self._last_takeover = float("-inf")  # time.monotonic() at the end of the last try
        self._takeover: asyncio.Task[None] | None = None  # the takeover batch, while it runs
        self._running = False
        self._ahead: dict[int, set[int]] = {}  # per chat: ids published past the watermark
        self._group_ahead: dict[tuple[int, str], set[int]] = {}  # the same, basic groups
        self._gap_timers: dict[int, asyncio.TimerHandle] = {}
        self.published = 0  # events handed to the publisher
        self.duplicates = 0  # events dropped as already published
        self.polls = 0  # chats polled
        self.poll_found = 0  # messages a poll published that the updates had missed

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        self._states = {tc.name: tc.state for tc in self._pool}
        self._pool.on_update(self._on_update)
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="subscriber-poll"),
            asyncio.create_task(self._watch_accounts(), name="subscriber-accounts"),
            asyncio.create_task(self._flush_loop(), name="subscriber-flush"),
        ]

    async def stop(self) -> None:
        self._running = False  # the pool keeps calling back until it stops: ignore it
        for timer in self._gap_timers.values():
            timer.cancel()
        self._gap_timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._joinmap.flush()

    async def _flush_loop(self, every: float = 1.0) -> None:
        # The per-message cursor moves in memory; it reaches the disk once a second (a crash
        # in between publishes that second's messages again: duplicates, never a loss).
        while True:
            await asyncio.sleep(every)
            self._joinmap.flush()

    def poll_soon(self, peer_id: int | None = None) -> None:
        """Polls one chat (or, with None, every chat) at once instead of at the interval."""
        if peer_id is None:
            self._poll_all = True
        else:
            self._poll_now.add(peer_id)
        self._wake.set()

    # --- the API's joins and leaves -----------------------------------------------------

    async def subscribe(self, ref: PeerRef) -> dict[str, Any]:
        """Joins the chat with one account (the pool's pick among those below the channel
        limit), records it, publishes subscription.changed. AlreadySubscribed (409) when an
        account is in it already."""
        # One join or leave at a time: two POSTs for one chat must not join two accounts.
        # They are rare, and a flood wait answers at once (the pool doesn't sleep on it).
        async with self._api_lock:
            return await self._subscribe(ref)

    async def _subscribe(self, ref: PeerRef) -> dict[str, Any]:
        known = self._known(ref)
        if known is not None and known["state"] == State.JOINED:
            raise AlreadySubscribed(str(ref), known)
        try:
            entity, account = await self._pool.run(self._joiner(ref), ref)
        except NoAccountAvailable:
            full = sorted(tc.name for tc in self._pool if tc.usable and self._is_full(tc.name))
            if not full:
                raise
            raise NoAccountAvailable(
                f"no account can join {ref}: at the channel limit: {', '.join(full)}"
            ) from None
        peer = _peer_of(entity)
        existing = self._joinmap.get(peer["id"])
        start = await self._newest_id(account, peer["id"])
        # The invite is kept: it is how another account gets in when this one is banned.
        sub = await self._record_join(peer, account.name, start, invite=ref.invite)
        if existing is not None and existing["state"] == State.JOINED:
            # Known under another name (an invite link of a chat joined by username): one
            # subscription per chat; this account's membership is recorded all the same.
            raise AlreadySubscribed(str(ref), existing)
        return sub

    def _joiner(self, ref: PeerRef) -> Callable[[TeleClient], Awaitable[Any]]:
        key = _ref_key(ref)

        async def join(tc: TeleClient) -> Any:
            # AccountUnusable: the pool moves on to the next account (not broken, just not
            # this one).
            if self._is_full(tc.name):
                raise AccountUnusable(tc.name, "full", "at its channel limit")
            asked = self._requests.get(key)
            if asked is not None and asked != tc.name and self._asker_usable(asked):
                raise AccountUnusable(tc.name, "skipped", f"{asked}'s join request is pending")
            try:
                entity = await tc.join(ref)
            except JoinRequestSent:
                self._requests.pop(key, None)
                self._requests[key] = tc.name
                while len(self._requests) > JOIN_REQUESTS_MAX:
                    del self._requests[next(iter(self._requests))]
                raise
            except TelegramError as e:
                if e.rpc_error != "CHANNELS_TOO_MUCH":
                    raise
                self._full[tc.name] = self._clock()
                log.warning(
                    "account %s is full (CHANNELS_TOO_MUCH, %d chats in the join map): no"
                    " joins for it for %.0f s or until it leaves a chat through the API",
                    tc.name,
                    self._joinmap.count(tc.name),
                    FULL_RECHECK,
                )
                raise AccountUnusable(tc.name, "full", "Telegram answered CHANNELS_TOO_MUCH") from None
            self._requests.pop(key, None)
            return entity

        return join

    def _is_full(self, account: str) -> bool:
        """At the channel limit by the join map's count, or found full by Telegram less
        than FULL_RECHECK ago and not left a chat through the API since."""
        if self._joinmap.count(account) >= self._channel_limit:
            return True
        at = self._full.get(account)
        if at is None:
            return False
        if self._clock() - at >= FULL_RECHECK:
            del self._full[account]
            return False
        return True

    def _asker_usable(self, account: str) -> bool:
        try:
            return self._pool.get(account).usable and not self._is_full(account)
        except NoAccountAvailable:
            return False  # not in the pool any more

    async def unsubscribe(self, ref: PeerRef) -> dict[str, Any]:
        """Every account in the chat leaves it; NotSubscribed (409) if none is in it."""
        async with self._api_lock:
            return await self._unsubscribe(ref)

    async def _unsubscribe(self, ref: PeerRef) -> dict[str, Any]:
        known = self._known(ref)
        if known is not None and known["state"] == State.BANNED_ACCOUNT:
            return await self._drop_orphan(known)  # nobody to leave: just stop taking it over
        if known is None or known["state"] != State.JOINED:
            raise NotSubscribed(str(ref))
        peer_id = known["peer"]["id"]
        target = parse_peer(str(peer_id))
        last = known
        for member in self._joinmap.memberships(peer_id):
            if member["state"] != State.JOINED:
                continue
            tc = self._pool.get(member["account"])
            # Telegram's updateChannel for our own leave is not a kick.
            self._leaving.add((peer_id, tc.name))
            try:
                await tc.leave(target)
            except AccountUnusable:
                if tc.usable:
                    raise  # disconnected: still in the chat; the caller may try again
                # banned or logged out: out of the chat for our purposes
            finally:
                self._leaving.discard((peer_id, tc.name))
            self._full.pop(tc.name, None)  # a chat less: room for a join again
            last = await self._change(peer_id, member["account"], State.LEFT) or last
        return last

    def _known(self, ref: PeerRef) -> dict[str, Any] | None:
        if ref.username is not None:
            return self._joinmap.find_username(ref.username)
        for marked in ref.marked_ids():
            sub = self._joinmap.get(marked)
            if sub is not None:
                return sub
        return None

    async def _newest_id(self, tc: TeleClient, peer_id: int) -> int:
        """The chat's newest message id now (0 if unknown), in `tc`'s own ids for a basic
        group: what was posted before a join is history, not news, so the watermark (a basic
        group's: this account's cursor) starts there."""
        try:
            _, newest = await tc.get_history(parse_peer(str(peer_id)), limit=1)
        except TgcError as e:
            log.info("newest message of %s unknown (%s): the poll starts it", peer_id, e.code)
            return 0
        return int(newest[0].id) if newest else 0

    async def _record_join(
        self, peer: dict[str, Any], account: str, start: int = 0, invite: str | None = None
    ) -> dict[str, Any]:
        sub = self._joinmap.record_join(
            peer["id"],
            account,
            type=peer["type"],
            title=peer.get("title") or "",
            username=peer.get("username"),
            invite=invite,
        )
        if start and self._start_watermark(peer["id"], account, start):
            sub["last_message_id"] = start
        await self._publish_subscription(sub)
        return sub

    def _start_watermark(self, peer_id: int, account: str, start: int) -> bool:
        if _is_basic_group(peer_id):
            return self._joinmap.set_member_last_message_id(peer_id, account, start)
        return self._joinmap.set_last_message_id(peer_id, start)

    async def _change(self, peer_id: int, account: str, state: State) -> dict[str, Any] | None:
        sub = self._joinmap.set_state(peer_id, account, state)
        if sub is not None:
            await self._publish_subscription(sub)
        return sub

    async def _publish_subscription(self, sub: dict[str, Any]) -> None:
        now = self._clock()
        event = make_event(
            "subscription.changed",
            _event_peer(sub["peer"]),
            account=sub["account"],
            at=now,
            extra={"state": sub["state"], "subscription": sub},
            id_suffix=f"{sub['account']}:{sub['state']}:{int(now * 1000)}",
        )
        await self._publisher.publish_event(event)
        self.published += 1

    # --- updates ------------------------------------------------------------------------

    async def _on_update(self, tc: TeleClient, update: Any) -> None:
        if not self._running:
            return
        if isinstance(update, types.UpdateNewChannelMessage | types.UpdateNewMessage):
            await self._on_message(tc, update.message, "message.new")
        elif isinstance(update, types.UpdateEditChannelMessage | types.UpdateEditMessage):
            await self._on_message(tc, update.message, "message.edited")
        elif isinstance(update, types.UpdateDeleteChannelMessages):
            await self._on_deleted(tc, parser.marked_id(types.PeerChannel(update.channel_id)), update.messages)
        elif isinstance(update, types.UpdateChannel):
            await self._on_channel(tc, update)

    async def _on_message(self, tc: TeleClient, msg: Any, event: str) -> None:
        if not isinstance(msg, types.Message | types.MessageService):
            return
        peer_id = parser.marked_id(msg.peer_id)
        if peer_id is None:
            return
        sub = self._joinmap.get(peer_id)
        if sub is None or sub["state"] != State.JOINED:
            return  # a chat the account is in but nobody subscribed to
        if isinstance(msg.peer_id, types.PeerChannel):
            await self._channel_message(tc, sub, msg, event)
        elif isinstance(msg.peer_id, types.PeerChat):
            await self._group_message(tc, sub, msg, event)

    async def _channel_message(self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str) -> None:
        peer_id = sub["peer"]["id"]
        last = self._joinmap.last_message_id(peer_id)
        if event == "message.new" and msg.id <= last:
            self.duplicates += 1
            return
        await self._publish_message(tc, sub, msg, event)
        if event == "message.new":
            self._advance(peer_id, msg.id)

    def _advance(self, peer_id: int, msg_id: int) -> None:
        """Moves the watermark over `msg_id` and the published ids right after it.

        Updates are handled in tasks of their own, so 7 may be done before 6: ids published
        beyond the watermark wait in `_ahead` until the ones before them are done. One that
        still waits after GAP_WAIT s sits behind a real gap (a lost push): the chat is polled.
        """
        ahead = self._ahead.setdefault(peer_id, set())
        ahead.add(msg_id)
        last = new = self._joinmap.last_message_id(peer_id)
        while new + 1 in ahead:
            new += 1
        if new > last:
            self._joinmap.set_last_message_id(peer_id, new, persist=False)
        self._prune(peer_id, new)
        if peer_id in self._ahead and peer_id not in self._gap_timers:
            self._gap_timers[peer_id] = asyncio.get_running_loop().call_later(
                GAP_WAIT, self._gap_check, peer_id
            )

    def _prune(self, peer_id: int, upto: int) -> None:
        ahead = self._ahead.get(peer_id)
        if ahead is None:
            return
        ahead.difference_update([i for i in ahead if i <= upto])
        if not ahead:
            del self._ahead[peer_id]

    def _gap_check(self, peer_id: int) -> None:
        self._gap_timers.pop(peer_id, None)
        if peer_id in self._ahead:
            self.poll_soon(peer_id)  # the poll reads the gap from Telegram

    async def _group_message(self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str) -> None:
        # Basic groups number messages per account: the same message has another id for
        # each account. The account's own cursor tells old news (also after a restart);
        # across accounts the message is claimed by what it is.
        peer_id = sub["peer"]["id"]
        last = self._joinmap.member_last_message_id(peer_id, tc.name)
        if event == "message.new" and msg.id <= last:
            self.duplicates += 1
            return
        await self._publish_group(tc, sub, msg, event)
        if event == "message.new" and tc.name in self._joined_accounts(peer_id):
            self._advance_group(peer_id, tc.name, msg.id)

    async def _publish_group(
        self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str
    ) -> bool:
        """A basic group's message, published once across accounts; False when it was."""
        key = _content_key(sub["peer"]["id"], msg, event)
        if not self._recent.claim(key):
            self.duplicates += 1
            return False
        try:
            return await self._publish_message(tc, sub, msg, event)
        except BaseException:
            self._recent.forget(key)  # not in the outbox: the next sight publishes it
            raise

    def _joined_accounts(self, peer_id: int) -> list[str]:
        """The accounts in the chat, oldest membership first."""
        members = self._joinmap.memberships(peer_id)
        return [m["account"] for m in members if m["state"] == State.JOINED]

    def _advance_group(self, peer_id: int, account: str, msg_id: int) -> None:
        """`_advance` for one account's cursor of a basic group. Its ids are shared with the
        account's other chats, so an id that can't join the cursor is no proof of a lost
        message; the poll as that account after GAP_WAIT settles it either way."""
        key = (peer_id, account)
        ahead = self._group_ahead.setdefault(key, set())
        ahead.add(msg_id)
        last = new = self._joinmap.member_last_message_id(peer_id, account)
        while new + 1 in ahead:
            new += 1
        if new > last:
            self._joinmap.set_member_last_message_id(peer_id, account, new, persist=False)
        self._prune_group(key, new)
        if key in self._group_ahead and peer_id not in self._gap_timers:
            self._gap_timers[peer_id] = asyncio.get_running_loop().call_later(
                GAP_WAIT, self._group_gap_check, peer_id
            )

    def _prune_group(self, key: tuple[int, str], upto: int) -> None:
        ahead = self._group_ahead.get(key)
        if ahead is None:
            return
        ahead.difference_update([i for i in ahead if i <= upto])
        if not ahead:
            del self._group_ahead[key]

    def _group_gap_check(self, peer_id: int) -> None:
        self._gap_timers.pop(peer_id, None)
        if any(key[0] == peer_id for key in self._group_ahead):
            self.poll_soon(peer_id)  # polled as each account with ids waiting

    async def _publish_message(self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str) -> bool:
        """Parses and publishes once; False when it was already published."""
        message, media = parser.parse_message(msg, tc.name)
        ev = make_event(event, _event_peer(sub["peer"]), account=tc.name, message=message,
                        at=_message_time(msg, event, self._clock))
        return await self._publish_once(ev, media)

    async def _publish_once(self, ev: Event, media: list[Media] | None = None) -> bool:
        if not self._recent.claim(ev.message_id):
            self.duplicates += 1
            return False
        if media and self._media_queue is not None:
            # The files go to the media queue like the API's (a media.stored event follows
            # when stored); the event's descriptors show the state they have now.
            try:
                queries.attach_media([ev.body["message"]], media, self._media_queue)
            except TgcError as e:
                log.warning("media of %s not queued: %s", ev.message_id, e.code)
        try:
            await self._publisher.publish_event(ev)
        except BaseException:
            # Not in the outbox: let the next sight of it (a replay, the poll) publish it.
            self._recent.forget(ev.message_id)
            raise
        self.published += 1
        return True

    async def _on_deleted(self, tc: TeleClient, peer_id: int | None, ids: Iterable[int]) -> None:
        sub = self._joinmap.get(peer_id) if peer_id is not None else None
        if sub is None or sub["state"] != State.JOINED:
            return
        for msg_id in ids:
            ev = make_event("message.deleted", _event_peer(sub["peer"]), account=tc.name,
                            message={"id": msg_id, "peer_id": peer_id}, clock=self._clock)
            await self._publish_once(ev)

    async def _on_channel(self, tc: TeleClient, update: types.UpdateChannel) -> None:
        """updateChannel: something about the channel changed for this account; it may
        have been removed (kicked or banned: ChannelForbidden, or left=True)."""
        peer_id = parser.marked_id(types.PeerChannel(update.channel_id))
        if peer_id is None:
            return
        member = next(
            (m for m in self._joinmap.memberships(peer_id) if m["account"] == tc.name), None
        )
        if member is None or member["state"] != State.JOINED or (peer_id, tc.name) in self._leaving:
            return
        entity = getattr(update, "_entities", {}).get(peer_id)
        if entity is None:
            try:
                entity = await tc.get_entity(parse_peer(str(peer_id)))
            except TgcError as e:
                log.info("account %s lost %s (%s)", tc.name, peer_id, e.code)
                entity = None
        gone = entity is None or isinstance(entity, types.ChannelForbidden) or bool(
            getattr(entity, "left", False)
        )
        if isinstance(entity, types.Channel):
            peer = _peer_of(entity)
            self._joinmap.update_peer(peer_id, title=peer.get("title"), username=peer.get("username"))
        if gone:
            log.warning("account %s was removed from %s", tc.name, peer_id)
            await self._change(peer_id, tc.name, State.KICKED)

    # --- the gap poll -------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            full = self._poll_all
            if full:
                self._poll_all = False
                chats = set(self._joinmap.joined_peers()) | self._poll_now
            else:
                chats = set(self._poll_now)
            self._poll_now.clear()
            await self._poll_round(sorted(chats), pace=self._poll_pace if full else 0.0)
            if self._poll_now or self._poll_all:
                continue
            self._wake.clear()
            try:
                # Not wait_for: on 3.11 it can swallow the cancel of stop() (bpo-42130).
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                self._poll_all = True

    async def _poll_round(self, chats: list[int], pace: float) -> None:
        """Polls the chats one after the other, `pace` s apart: a round over hundreds of
        chats must not turn into a burst of getHistory that earns a flood wait."""
        for i, peer_id in enumerate(chats):
            if i and pace:
                await asyncio.sleep(pace)
            try:
                await self.poll_chat(peer_id)
            except FloodWait as e:
                # Every able account waits: the rest of the round waits for the next one.
                log.warning("poll round stopped by a flood wait of %d s", e.retry_after)
                return
            except TgcError as e:
                log.info("poll of %s failed: %s", peer_id, e.code)
            except Exception:
                log.exception("poll of %s failed", peer_id)

    async def poll_chat(self, peer_id: int) -> int:
        """Reads what is newer than the chat's watermark, oldest first, publishes what was
        not published yet, moves the watermark. Returns how many events it published.

        One getHistory when the chat is caught up or fewer than 100 messages behind (the
        usual case); a longer backlog is walked in windows from the watermark up. A basic
        group is read as one account in it, in its own ids (`_poll_group`).
        """
        sub = self._joinmap.get(peer_id)
        if sub is None or sub["state"] != State.JOINED:
            return 0
        if _is_basic_group(peer_id):
            return await self._poll_group(sub)
        if peer_id > -(10**12):
            return 0  # not a chat
        self.polls += 1
        ref = parse_peer(str(peer_id))
        low = self._joinmap.last_message_id(peer_id)
        if low == 0:
            # No watermark (joined outside the API?): start at the newest, publish nothing.
            (_, newest), _ = await self._pool.run(_history(ref, 0, 0, limit=1), ref)
            if newest:
                self._joinmap.set_last_message_id(peer_id, newest[0].id)
            return 0
        (_, page), tc = await self._pool.run(_history(ref, low, 0), ref)
        if len(page) < HISTORY_PAGE:
            count = await self._publish_page(tc, sub, page)  # all there is after `low`
        else:
            count = await self._walk_backlog(sub, ref, low)
        self.poll_found += count
        self._joinmap.flush()
        if count:
            log.info("poll of %s found %d messages the updates missed", peer_id, count)
        return count

    async def _walk_backlog(self, sub: dict[str, Any], ref: PeerRef, low: int) -> int:
        # Windows (low, low + 101), the oldest messages after the watermark first, so the
        # watermark moves past what was read however long the backlog (the rest next poll).
        peer_id, count = sub["peer"]["id"], 0
        for _ in range(MAX_PAGES_PER_POLL):
            (_, page), tc = await self._pool.run(_history(ref, low, low + HISTORY_PAGE + 1), ref)
            if page:
                count += await self._publish_page(tc, sub, page)
                low = max(m.id for m in page)
                continue
            (_, newer), _ = await self._pool.run(_history(ref, low, 0, limit=1), ref)
            if not newer:
                break  # caught up
            low = min(low + HISTORY_PAGE, newer[0].id - 1)  # a run of deleted ids: skip it
            self._joinmap.set_last_message_id(peer_id, low, persist=False)
        return count

    async def _publish_page(self, tc: TeleClient, sub: dict[str, Any], page: list[Any]) -> int:
        """Publishes a page of history oldest first; moves the watermark to its newest."""
        count = 0
        for msg in sorted(page, key=lambda m: m.id):
            if await self._publish_message(tc, sub, msg, "message.new"):
                count += 1
        if page:
            newest = max(m.id for m in page)
            # The page is all there is up to `newest`: gaps below it were deletions.
            self._joinmap.set_last_message_id(sub["peer"]["id"], newest, persist=False)
            self._prune(sub["peer"]["id"], newest)
        return count

    async def _poll_group(self, sub: dict[str, Any]) -> int:
        """Polls a basic group as each account with ids waiting past its cursor (only a read
        in its own ids closes that), else as one account: the first in it with a cursor,
        or any in it (its first poll starts the cursor)."""
        peer_id = sub["peer"]["id"]
        joined = self._joined_accounts(peer_id)
        gapped = [a for a in joined if (peer_id, a) in self._group_ahead]
        count, polled = 0, False
        for account in gapped:
            found = await self._try_poll_group_as(account, sub)
            count, polled = count + (found or 0), polled or found is not None
        if not polled:
            by_cursor = sorted(
                joined, key=lambda a: self._joinmap.member_last_message_id(peer_id, a) == 0
            )
            for account in by_cursor:
                found = await self._try_poll_group_as(account, sub)
                if found is not None:
                    count, polled = count + found, True
                    break
        if not polled:
            log.info("poll of %s: none of its accounts can read it now", peer_id)
        self.poll_found += count
        self._joinmap.flush()
        if count:
            log.info("poll of %s found %d messages the updates missed", peer_id, count)
        return count

    async def _try_poll_group_as(self, account: str, sub: dict[str, Any]) -> int | None:
        """How many the poll as `account` published; None when that account can't now."""
        ref = parse_peer(str(sub["peer"]["id"]))
        try:
            tc = self._pool.get(account)
            if tc.ready_in(ref) != 0:
                return None  # unusable, disconnected, in a flood wait, or never met the chat
            return await self._poll_group_as(tc, sub, ref)
        except TgcError as e:
            # A flood wait of this account is not every account's: the round goes on.
            log.info("poll of %s as %s failed: %s", sub["peer"]["id"], account, e.code)
            return None

    async def _poll_group_as(self, tc: TeleClient, sub: dict[str, Any], ref: PeerRef) -> int:
        peer_id = sub["peer"]["id"]
        self.polls += 1
        low = self._joinmap.member_last_message_id(peer_id, tc.name)
        if low == 0:
            # No cursor (joined outside the API?): start at the newest, publish nothing.
            _, newest = await tc.get_history(ref, limit=1)
            top = int(newest[0].id) if newest else 0
            self._joinmap.set_member_last_message_id(peer_id, tc.name, top)
            self._prune_group((peer_id, tc.name), top)
            return 0
        _, page = await tc.get_history(ref, limit=HISTORY_PAGE, min_id=low)
        if len(page) < HISTORY_PAGE:
            return await self._publish_group_page(tc, sub, page)  # all there is after `low`
        return await self._walk_group_backlog(tc, sub, ref, low)

    async def _walk_group_backlog(
        self, tc: TeleClient, sub: dict[str, Any], ref: PeerRef, low: int
    ) -> int:
        # `_walk_backlog` as one account. Its other chats' messages leave runs of ids that
        # are not this chat's: skipped like deleted ones.
        peer_id, count = sub["peer"]["id"], 0
        for _ in range(MAX_PAGES_PER_POLL):
            _, page = await tc.get_history(
                ref, limit=HISTORY_PAGE, min_id=low, max_id=low + HISTORY_PAGE + 1
            )
            if page:
                count += await self._publish_group_page(tc, sub, page)
                low = max(m.id for m in page)
                continue
            _, newer = await tc.get_history(ref, limit=1, min_id=low)
            if not newer:
                break  # caught up
            low = min(low + HISTORY_PAGE, newer[0].id - 1)
            self._joinmap.set_member_last_message_id(peer_id, tc.name, low, persist=False)
        return count

    async def _publish_group_page(
        self, tc: TeleClient, sub: dict[str, Any], page: list[Any]
    ) -> int:
        """`_publish_page` for a basic group: claimed by content, `tc`'s cursor moved."""
        peer_id, count = sub["peer"]["id"], 0
        for msg in sorted(page, key=lambda m: m.id):
            if await self._publish_group(tc, sub, msg, "message.new"):
                count += 1
        if page:
            newest = max(m.id for m in page)
            # All there is up to `newest` in this chat: the ids below it that are not here
            # are other chats' of the account, or deleted.
            self._joinmap.set_member_last_message_id(peer_id, tc.name, newest, persist=False)
            self._prune_group((peer_id, tc.name), newest)
        return count

    # --- accounts -----------------------------------------------------------------------

    async def _watch_accounts(self) -> None:
        """Follows each account's state: after a reconnect its chats are polled (updates
        may have been lost meanwhile); a banned or logged-out account's chats move; orphaned
        chats are tried again. The first check runs at start (orphans of a former run)."""
        while True:
            try:
                await self.check_accounts()
            except Exception:
                log.exception("account check failed")  # the next one may do better
            await asyncio.sleep(self._check_interval)

    async def check_accounts(self) -> None:
        usable_again = False
        for tc in list(self._pool):
            before = self._states.get(tc.name)
            now = tc.state
            self._states[tc.name] = now
            if now == before:
                continue
            if now == AccountState.OK:
                usable_again = True
            if before == AccountState.DISCONNECTED and now in (AccountState.OK, AccountState.FLOOD_WAIT):
                for sub in self._joinmap.by_account(tc.name):
                    self.poll_soon(sub["peer"]["id"])
            if now in (AccountState.BANNED, AccountState.UNAUTHORIZED):
                await self._move_away(tc.name)
        if usable_again:
            self._rejoin_after.all_due()  # an account can join now: don't wait for the backoff
        self._start_takeovers()

    async def _move_away(self, account: str) -> None:
        async with self._api_lock:  # not beside an API join of the same chat
            await self._move_away_locked(account)

    async def _move_away_locked(self, account: str) -> None:
        """Records the ban in each of the account's chats at once, and says so; the takeover
        batch (`_retry_orphans`, started by the check after this) joins them elsewhere."""
        lost = self._joinmap.record_account_banned(account)
        for sub in lost:
            self._rejoin_after.forget(sub["peer"]["id"])  # newly orphaned: due at once
            await self._publish_subscription(sub)

    def _start_takeovers(self) -> None:
        """Runs the takeover batch in its own task, unless one runs (it also takes what has
        become due meanwhile): paced over hundreds of chats it takes minutes, and the account
        check must go on meanwhile (another ban, a reconnect's poll). stop() cancels it."""
        if not self._running or (self._takeover is not None and not self._takeover.done()):
            return
        if self._takeover is not None and self._takeover in self._tasks:
            self._tasks.remove(self._takeover)  # the last batch, over
        self._takeover = asyncio.create_task(self._retry_orphans(), name="subscriber-takeover")
        self._tasks.append(self._takeover)

    async def _retry_orphans(self) -> None:
        """The takeover batch: joins each orphaned chat whose backoff is over with an account
        that can, one at a time, `takeover_pace` s apart (Telegram answers a burst of joins
        with a flood wait). `_api_lock` is held around one chat's join only, never across the
        pace: API calls go in between. A flood wait ends the batch (every account able to join
        waits): the rest stay orphaned for the next check, or until an account turns ok."""
        tried: set[int] = set()  # each chat once a batch, whatever came of it
        try:
            while (peer_id := self._next_orphan(tried)) is not None:
                tried.add(peer_id)
                await self._pace_takeover()
                try:
                    async with self._api_lock:
                        await self._take_over(peer_id)
                except FloodWait as e:
                    log.warning(
                        "takeovers stopped by a flood wait of %s s; the other orphaned chats"
                        " are tried later",
                        e.retry_after,
                    )
                    return
                except Exception:
                    self._rejoin_after.failed(peer_id)  # not first in every batch from now on
                    log.exception("taking %s over failed", peer_id)
        except Exception:
            log.exception("takeover batch failed")  # the next check starts another

    def _next_orphan(self, tried: set[int]) -> int | None:
        """The next orphaned chat due for a try and not tried in this batch yet."""
        orphans = self._joinmap.orphaned()
        self._rejoin_after.keep_only(orphans)  # subscribed or deleted through the API since
        return next((p for p in orphans if p not in tried and self._rejoin_after.due(p)), None)

    async def _pace_takeover(self) -> None:
        """Waits until `takeover_pace` s have passed since the last takeover try ended (in
        this batch or the one before)."""
        wait = self._last_takeover + self._takeover_pace - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # cancellable: stop() ends the batch here at once

    async def _take_over(self, peer_id: int) -> None:
        """Joins an orphaned chat with another account (under `_api_lock`). When no account
        can, it stays orphaned and its next try waits (the backoff). A FloodWait is raised
        after that: every account able to join waits, the batch stops."""
        sub = self._joinmap.get(peer_id)
        if sub is None or sub["state"] != State.BANNED_ACCOUNT:
            # Joined by another account, left through the API, or kicked (not taken over:
            # the chat's admins removed us; another account would evade them).
            self._rejoin_after.forget(peer_id)
            return
        ref = _rejoin_ref(sub["peer"], self._joinmap.invite(peer_id))
        try:
            await self._rejoin(ref, sub)
        except TgcError as e:
            wait = self._rejoin_after.failed(peer_id)
            if ref.invite is not None and isinstance(e, PeerNotFound):
                # INVITE_HASH_EXPIRED or _INVALID (revoked): no account gets in by it again.
                # Tried again only after the backoff (up to an hour): one request a try.
                log.warning(
                    "%s can't be taken over: the invite link it was subscribed by is dead"
                    " (%s); it stays orphaned until it is subscribed again with a new link"
                    " (POST /api/v1/subscriptions); next try in %.1f s",
                    peer_id,
                    e,
                    wait,
                )
                return
            log.warning(
                "no account could take over %s (%s: %s): orphaned, next try in %.1f s"
                " or when an account becomes usable",
                peer_id,
                e.code,
                e,
                wait,
            )
            if isinstance(e, FloodWait):
                raise
            return
        finally:
            self._last_takeover = time.monotonic()  # the pace counts from here
        self._rejoin_after.forget(peer_id)

    async def _drop_orphan(self, sub: dict[str, Any]) -> dict[str, Any]:
        """DELETE of an orphaned chat: its memberships of banned or logged-out accounts
        become left (through the API), so it is no longer taken over."""
        peer_id, last = sub["peer"]["id"], sub
        for member in self._joinmap.memberships(peer_id):
            if member["state"] == State.BANNED_ACCOUNT:
                last = await self._change(peer_id, member["account"], State.LEFT) or last
        self._rejoin_after.forget(peer_id)
        return last

    async def _rejoin(self, ref: PeerRef, old: dict[str, Any]) -> None:
        join = self._joiner(ref)
        entity, account = await self._pool.run(join, ref)
        peer = _peer_of(entity)
        if peer["id"] != old["peer"]["id"]:
            raise PeerNotFound(str(ref), f"{ref} is another chat now")
        # A basic group's messages are numbered per account: the taker's cursor starts at
        # its own newest id (what it sees from before its join is not news). A channel's
        # watermark is the chat's and stays, so the poll finds what came while orphaned.
        start = await self._newest_id(account, peer["id"]) if _is_basic_group(peer["id"]) else 0
        await self._record_join(peer, account.name, start)
        log.warning("%s moved to account %s", peer["id"], account.name)
        self.poll_soon(peer["id"])  # what came while nobody listened


def _ref_key(ref: PeerRef) -> str:
    """One key for the spellings of one reference (@Name, t.me/name; an invite; an id)."""
    if ref.username is not None:
        return f"@{ref.username}"
    if ref.invite is not None:
        return f"+{ref.invite}"
    return f"{ref.kind}:{ref.id}"


def _rejoin_ref(peer: dict[str, Any], invite: str | None = None) -> PeerRef:
    """How another account finds the chat: by username if it has one, else by the invite
    link it was subscribed by (a basic group or a private channel is joined only so), else
    by id (found only by accounts that have met the chat)."""
    if peer.get("username"):
        return parse_peer("@" + peer["username"])
    if invite:
        # Named by the chat's id, not the link: the hash stays out of logs and errors.
        return PeerRef(f"{peer['id']} (by its invite link)", invite=invite)
    return parse_peer(str(peer["id"]))


def _is_basic_group(peer_id: int) -> bool:
    """A basic group's marked id: -1 … -999999999999 (channels are -100…, users positive)."""
    return -(10**12) < peer_id < 0


def _content_key(peer_id: int, msg: Any, event: str) -> str:
    """What a basic-group message is, the same for every account that sees it (its id is
    not): chat, date, sender, text, service action, the media's id (album items share the
    rest), and for an edit its date (a new message read after an edit keeps its key)."""
    media = getattr(msg, "media", None)
    item = getattr(media, "photo", None) or getattr(media, "document", None)
    action = type(getattr(msg, "action", None)).__name__
    edited = getattr(msg, "edit_date", None) if event != "message.new" else None
    what = (
        f"{peer_id}:{msg.date}:{parser.marked_id(msg.from_id)}:{event}:{edited}:{action}:"
        f"{getattr(item, 'id', None)}:"
    )
    text = (getattr(msg, "message", "") or "").encode()
    return "group:" + hashlib.blake2b(what.encode() + text, digest_size=16).hexdigest()


def _history(
    ref: PeerRef, min_id: int, max_id: int, limit: int = HISTORY_PAGE
) -> Callable[[TeleClient], Awaitable[tuple[Any, list[Any]]]]:
    async def op(tc: TeleClient) -> tuple[Any, list[Any]]:
        return await tc.get_history(ref, limit=limit, min_id=min_id, max_id=max_id)

    return op


def _peer_of(entity: Any) -> dict[str, Any]:
    peer, _ = parser.parse_peer(entity)
    return peer


def _event_peer(peer: dict[str, Any]) -> dict[str, Any]:
    return {k: peer.get(k) for k in ("id", "type", "title", "username")}


def _message_time(msg: Any, event: str, clock: Callable[[], float]) -> Any:
    if event == "message.edited" and getattr(msg, "edit_date", None) is not None:
        return msg.edit_date
    if event == "message.new" and getattr(msg, "date", None) is not None:
        return msg.date
    return clock()
