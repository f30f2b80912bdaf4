"""The takeover: a banned or logged-out account's chats joined by other accounts.

How another account gets in (`rejoin_ref`): by @username; without one (a basic group, a
private channel: Telegram lets those be joined only by invite link, and another account has
no access hash for the id) by the invite link the chat was subscribed by, which the join map
keeps (never shown in answers or events); else by id, which works only for an account already
in the chat. A basic group's taker starts its own cursor at its newest id (no history again);
a channel's watermark stays, so the poll brings what came meanwhile. A chat none of these
reaches (a private channel subscribed by id, an invite link expired or revoked:
INVITE_HASH_EXPIRED or _INVALID, logged as a dead invite) stays orphaned, as below, until a
POST subscribes it again.

The ban is recorded (and said) for all its chats at once (`move_away`); the joins then go one
at a time, TAKEOVER_PACE s apart (a burst of joins earns a flood wait), in a task of their own
(the batch) that holds the API's lock only around one chat's join; a flood wait stops them
(the rest stay orphaned). A chat no account can take over then (every other one full, banned,
logged out or in a flood wait, or none there) is orphaned: the join map keeps it (nobody
joined, the latest membership banned_account: derived, so it survives a restart) and GET
/api/v1/subscriptions shows it so. The account check (service.subscription.accounts) starts a
batch at start, at once when an account's state turns ok (every orphan due then), and
otherwise each check, where an orphan waits its per-chat backoff (REJOIN_BACKOFF s, doubling
up to REJOIN_BACKOFF_MAX) so that a full pool is not asked to join every few seconds. DELETE
of an orphaned chat ends it (state left); nothing is rejoined after that. A kick is not taken
over: the chat's admins removed the account, and joining with another one would evade them
(the chat stays kicked until the API subscribes it again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from common.errors import FloodWait, PeerNotFound, TgcError
from common.utils import PeerRef, is_basic_group, parse_peer
from model.joinmap import State
from service.subscription.joins import Joins
from service.subscription.state import Shared, peer_of

log = logging.getLogger("service.subscriber")  # the flow's one logger (see joins.py)

REJOIN_BACKOFF = 30.0  # s before an orphaned chat is tried again, doubling per failure...
REJOIN_BACKOFF_MAX = 3600.0  # ...up to this
TAKEOVER_PACE = 2.0  # s between two takeover joins: a burst of joins earns a flood wait


class Backoff:
    """When each key may be tried again: `first` s after a failure, the wait doubling with
    each failure in a row up to `cap`. A key not failed (or forgotten) is due at once."""

    def __init__(
        self, first: float, cap: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._first, self._cap, self._clock = first, cap, clock
        self._next: dict[int, tuple[float, float]] = {}  # key: (due at, the wait after that)

    def due(self, key: int) -> bool:
        """Whether the key may be tried now."""
        entry = self._next.get(key)
        return entry is None or entry[0] <= self._clock()

    def failed(self, key: int) -> float:
        """Puts the key's next try off; returns by how many seconds."""
        _, wait = self._next.get(key, (0.0, self._first))
        self._next[key] = (self._clock() + wait, min(wait * 2, self._cap))
        return wait

    def forget(self, key: int) -> None:
        """The key starts afresh (due now, its next failure waits `first`)."""
        self._next.pop(key, None)

    def keep_only(self, keys: Iterable[int]) -> None:
        """Forgets every key but these."""
        keep = set(keys)
        for key in [k for k in self._next if k not in keep]:
            del self._next[key]

    def all_due(self) -> None:
        """Every key is due now (a reason to hope changed); the waits reached are kept, so
        a try that fails again still waits long."""
        self._next = {k: (0.0, wait) for k, (_, wait) in self._next.items()}


class Takeover:
    """Moves the chats of banned or logged-out accounts to other accounts, in batches."""

    def __init__(
        self, shared: Shared, joins: Joins, *, backoff: Backoff, pace: float = TAKEOVER_PACE
    ) -> None:
        self._shared = shared
        self._joins = joins
        self._backoff = backoff  # per orphaned chat
        self._pace = pace
        self._last = float("-inf")  # time.monotonic() at the end of the last try
        self._batch: asyncio.Task[None] | None = None

    @property
    def batch(self) -> asyncio.Task[None] | None:
        """The takeover batch's task: the one under way, else the last one (None before
        the first). stop() of the subscriber cancels it."""
        return self._batch

    def retry_due(self, peer_id: int) -> bool:
        """Whether an orphaned chat's backoff is over (the next batch tries it)."""
        return self._backoff.due(peer_id)

    def all_due(self) -> None:
        """Every orphan is due at once (an account can join now): the backoff is not waited."""
        self._backoff.all_due()

    async def move_away(self, account: str) -> None:
        """Records the ban in each of the account's chats at once, and says so; the next
        batch (`start_batch`) joins them elsewhere."""
        async with self._shared.api_lock:  # not beside an API join of the same chat
            lost = self._shared.joinmap.record_account_banned(account)
            for sub in lost:
                self._backoff.forget(sub["peer"]["id"])  # newly orphaned: due at once
                await self._joins.publish_changed(sub)

    def start_batch(self) -> None:
        """Runs the takeover batch in its own task, unless one runs (it also takes what has
        become due meanwhile): paced over hundreds of chats it takes minutes, and the account
        check must go on meanwhile (another ban, a reconnect's poll)."""
        if not self._shared.running or (self._batch is not None and not self._batch.done()):
            return
        self._batch = asyncio.create_task(self._retry_orphans(), name="subscriber-takeover")

    async def _retry_orphans(self) -> None:
        """The takeover batch: joins each orphaned chat whose backoff is over with an account
        that can, one at a time, `pace` s apart (Telegram answers a burst of joins with a
        flood wait). The API's lock is held around one chat's join only, never across the
        pace: API calls go in between. A flood wait ends the batch (every account able to
        join waits): the rest stay orphaned for the next check, or until an account turns
        ok."""
        tried: set[int] = set()  # each chat once a batch, whatever came of it
        try:
            while (peer_id := self._next_orphan(tried)) is not None:
                tried.add(peer_id)
                await self._wait_pace()
                try:
                    async with self._shared.api_lock:
                        await self._take_over(peer_id)
                except FloodWait as e:
                    log.warning(
                        "takeovers stopped by a flood wait of %s s; the other orphaned chats"
                        " are tried later",
                        e.retry_after,
                    )
                    return
                except Exception:
                    self._backoff.failed(peer_id)  # not first in every batch from now on
                    log.exception("taking %s over failed", peer_id)
        except Exception:
            log.exception("takeover batch failed")  # the next check starts another

    def _next_orphan(self, tried: set[int]) -> int | None:
        """The next orphaned chat due for a try and not tried in this batch yet."""
        orphans = self._shared.joinmap.orphaned()
        self._backoff.keep_only(orphans)  # subscribed or deleted through the API since
        return next((p for p in orphans if p not in tried and self._backoff.due(p)), None)

    async def _wait_pace(self) -> None:
        """Waits until `pace` s have passed since the last takeover try ended (in this
        batch or the one before)."""
        wait = self._last + self._pace - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # cancellable: stop() ends the batch here at once

    async def _take_over(self, peer_id: int) -> None:
        """Joins an orphaned chat with another account (under the API's lock). When no
        account can, it stays orphaned and its next try waits (the backoff). A FloodWait is
        raised after that: every account able to join waits, the batch stops."""
        sub = self._shared.joinmap.get(peer_id)
        if sub is None or sub["state"] != State.BANNED_ACCOUNT:
            # Joined by another account, left through the API, or kicked (not taken over:
            # the chat's admins removed us; another account would evade them).
            self._backoff.forget(peer_id)
            return
        ref = rejoin_ref(sub["peer"], self._shared.joinmap.invite(peer_id))
        try:
            await self._rejoin(ref, sub)
        except TgcError as e:
            wait = self._backoff.failed(peer_id)
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
            self._last = time.monotonic()  # the pace counts from here
        self._backoff.forget(peer_id)

    async def _rejoin(self, ref: PeerRef, old: dict[str, Any]) -> None:
        entity, account = await self._joins.join(ref)
        peer = peer_of(entity)
        if peer["id"] != old["peer"]["id"]:
            raise PeerNotFound(str(ref), f"{ref} is another chat now")
        # A basic group's messages are numbered per account: the taker's cursor starts at
        # its own newest id (what it sees from before its join is not news). A channel's
        # watermark is the chat's and stays, so the poll finds what came while orphaned.
        start = 0
        if is_basic_group(peer["id"]):
            start = await self._joins.newest_id(account, peer["id"])
        await self._joins.record_join(peer, account.name, start)
        log.warning("%s moved to account %s", peer["id"], account.name)
        self._shared.polls.soon(peer["id"])  # what came while nobody listened


def rejoin_ref(peer: dict[str, Any], invite: str | None = None) -> PeerRef:
    """How another account finds the chat: by username if it has one, else by the invite
    link it was subscribed by (a basic group or a private channel is joined only so), else
    by id (found only by accounts that have met the chat)."""
    if peer.get("username"):
        return parse_peer("@" + peer["username"])
    if invite:
        # Named by the chat's id, not the link: the hash stays out of logs and errors.
        return PeerRef(f"{peer['id']} (by its invite link)", invite=invite)
    return PeerRef.from_marked_id(peer["id"])
