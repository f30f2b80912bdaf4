"""The subscription flow: joins and leaves, Telegram's updates → events, and the gap poll.

    POST/DELETE /api/v1/subscriptions ──▶ Joins ──▶ JoinMap, subscription.changed
    pool.on_update ──▶ Intake ──▶ parser ──▶ Publisher (outbox first)
                          └─────▶ JoinMap (kicked, the watermarks)
    GapPoller (every poll_interval, after an account reconnects, on a gap)
        └─ messages.getHistory(min_id=the watermark) ──▶ Intake's publishing, once
    AccountWatch (every check_interval) ──▶ Takeover of a banned account's chats

`Subscriber` composes the parts (service/subscription/: one job per module, each module's
docstring says its rules) and is what start.py wires, the API calls and /metrics and /status
read. The parts are public attributes (`joins`, `intake`, `poller`, `takeover`, `accounts`)
for what the facade doesn't forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from common.utils import PeerRef
from model.joinmap import CHANNELS_PER_ACCOUNT, JoinMap
from model.pool import TeleClients
from model.teleclient import TeleClient
from service import queries
from service.publisher import Publisher
from service.subscription.accounts import AccountWatch
from service.subscription.gappoll import GapPoller
from service.subscription.intake import Intake
from service.subscription.joins import Joins
from service.subscription.state import Shared
from service.subscription.takeover import (
    REJOIN_BACKOFF,
    REJOIN_BACKOFF_MAX,
    TAKEOVER_PACE,
    Backoff,
    Takeover,
)


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
        shared = Shared(
            pool, joinmap, publisher, media_queue=media_queue, clock=clock, recent_size=recent_size
        )
        self._shared = shared
        self.joins = Joins(shared, channel_limit=channel_limit)
        self.intake = Intake(shared, self.joins)
        self.poller = GapPoller(shared, self.intake, interval=poll_interval, pace=poll_pace)
        self.takeover = Takeover(
            shared,
            self.joins,
            backoff=Backoff(rejoin_backoff, rejoin_backoff_max),
            pace=takeover_pace,
        )
        self.accounts = AccountWatch(shared, self.takeover, interval=check_interval)
        self._tasks: list[asyncio.Task[None]] = []

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listens to the pool's updates (and lets on those each account held since it
        connected: what it caught up on), and starts the poll loop, the account check (its
        first check at once) and the watermarks' flush."""
        self._shared.running = True
        self.accounts.start()
        self._shared.pool.on_update(self.intake.on_update)
        for account in self._shared.pool:
            if account.updates is not None:
                account.updates.open()
        self._tasks = [
            asyncio.create_task(self.poller.run(), name="subscriber-poll"),
            asyncio.create_task(self.accounts.run(), name="subscriber-accounts"),
            asyncio.create_task(self._flush_loop(), name="subscriber-flush"),
        ]

    async def stop(self) -> None:
        """Holds the accounts' updates (the update state saved once those let on are
        published: the next start catches up on the rest), ends the loops and a takeover
        batch under way; writes the watermarks."""
        feeds = [a.updates for a in self._shared.pool if a.updates is not None]
        await asyncio.gather(*(feed.hold() for feed in feeds))
        self._shared.running = False  # the pool keeps calling back until it stops: ignore it
        self._shared.watermarks.stop()
        tasks = list(self._tasks)
        if self.takeover.batch is not None:
            tasks.append(self.takeover.batch)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._shared.joinmap.flush()

    async def _flush_loop(self, every: float = 1.0) -> None:
        # The per-message cursor moves in memory; it reaches the disk once a second (a crash
        # in between publishes that second's messages again: duplicates, never a loss).
        while True:
            await asyncio.sleep(every)
            self._shared.joinmap.flush()

    # --- live accounts (service/fleet.py) ----------------------------------------------------

    def adopt(self, account: TeleClient) -> None:
        """An account that joined the pool while the flow runs: its updates flow from now
        on (what it caught up on at connect first). The next account check sees it ok and
        makes every orphaned chat due."""
        if self._shared.running and account.updates is not None:
            account.updates.open()

    async def retire(self, account: str) -> None:
        """An account that left the pool (removed or disabled): its chats move to other
        accounts as after a ban (recorded now, joined by the takeover batch started now)."""
        self.accounts.forget(account)
        await self.takeover.move_away(account)
        self.takeover.start_batch()

    # --- what the API and start.py call ---------------------------------------------------

    async def subscribe(self, ref: PeerRef) -> dict[str, Any]:
        """Joins the chat with one account (the pool's pick among those below the channel
        limit), records it, publishes subscription.changed. AlreadySubscribed (409) when an
        account is in it already."""
        return await self.joins.subscribe(ref)

    async def unsubscribe(self, ref: PeerRef) -> dict[str, Any]:
        """Every account in the chat leaves it; NotSubscribed (409) if none is in it."""
        return await self.joins.unsubscribe(ref)

    def poll_soon(self, peer_id: int | None = None) -> None:
        """Polls one chat (or, with None, every chat) at once instead of at the interval."""
        self._shared.polls.soon(peer_id)

    async def poll_chat(self, peer_id: int) -> int:
        """Reads what is newer than the chat's watermark and publishes what was not
        published yet; returns how many events it published."""
        return await self.poller.poll_chat(peer_id)

    async def check_accounts(self) -> None:
        """One account check: reconnected accounts' chats polled, banned ones' moved, and a
        takeover batch started (in its own task: `takeover.batch`)."""
        await self.accounts.check()

    # --- the counters SubscriberCollector and /status read ----------------------------------

    @property
    def published(self) -> int:
        """Events handed to the publisher."""
        return self._shared.counts.published

    @property
    def duplicates(self) -> int:
        """Events dropped as already published."""
        return self._shared.counts.duplicates

    @property
    def polls(self) -> int:
        """Chats polled."""
        return self._shared.counts.polls

    @property
    def poll_found(self) -> int:
        """Messages a poll published that the updates had missed."""
        return self._shared.counts.poll_found
