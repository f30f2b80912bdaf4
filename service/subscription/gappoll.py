"""The gap poll: reads from Telegram what the updates missed.

    poll loop (every poll_interval, after an account reconnects, on a gap, after a takeover)
        └─ messages.getHistory(min_id=the watermark) ──▶ Intake's publishing, once

A round over every chat (each `interval`) runs in lanes, one per account: each chat is
polled in the lane of one account in it (the one with the fewest chats so far in the round),
each lane `pace` s between its chats, the lanes side by side. The pace is what keeps one
account's getHistory from turning into a burst that earns it a flood wait, and flood waits
are per account: a round over 5,000 chats spread over 10 accounts takes a tenth of the
time it takes on one. A flood wait ends the lane that met it (the pool moves a call to
another able account first: it reaches the lane only when every able account waits).

One getHistory when a chat is caught up or fewer than HISTORY_PAGE messages behind (the
usual case); a longer backlog is walked in windows from the watermark up, at most
MAX_PAGES_PER_POLL per chat and poll (a long outage drains over several polls).

A channel's poll also has each account in it track the channel's updates if it does not
yet (joined before they were tracked, or dropped since: one channels.getFullChannel each,
once), so that a catch-up after a stop asks for its edits and deletions, which no poll sees.

A basic group is read as each account with ids waiting past its cursor (only a read in its
own ids settles those), else as one joined account, the first with a cursor (one without
starts it at the newest, publishing nothing, as for channels), with
messages.getHistory(min_id=its cursor) in its ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from common.errors import FloodWait, NoAccountAvailable, TgcError
from common.utils import PeerRef, is_basic_group
from model.teleclient import TeleClient
from service.subscription.intake import Intake
from service.subscription.state import Shared

log = logging.getLogger("service.subscriber")  # the flow's one logger (see joins.py)

HISTORY_PAGE = 100  # messages.getHistory's own cap
MAX_PAGES_PER_POLL = 20  # per chat and poll: a long outage drains over several polls

Sub = dict[str, Any]
Sleep = Callable[[float], Awaitable[None]]


class GapPoller:
    """Polls the chats the poll queue names (`Shared.polls`), or every joined chat each
    `interval` s, each account's chats `pace` s apart in a round over every chat (`sleep`
    waits those: injectable for tests)."""

    def __init__(
        self,
        shared: Shared,
        intake: Intake,
        *,
        interval: float = 60.0,
        pace: float = 0.2,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._shared = shared
        self._intake = intake
        self._interval = interval
        self._pace = pace
        self._sleep = sleep

    @property
    def idle(self) -> bool:
        """Whether the loop waits for the interval or the next ask (no round under way)."""
        return self._shared.polls.waiting

    async def run(self) -> None:
        """The poll loop, until cancelled."""
        queue = self._shared.polls
        while True:
            everything, chats = queue.take()
            if everything:
                chats |= set(self._shared.joinmap.joined_peers())
            await self.poll_round(sorted(chats), pace=self._pace if everything else 0.0)
            await queue.wait(self._interval)

    async def poll_round(self, chats: list[int], pace: float) -> None:
        """Polls the chats in lanes, one per account, each lane `pace` s between its chats
        (see the module docstring); returns when every lane is done."""
        lanes = self.lanes(chats)
        await asyncio.gather(*(self._poll_lane(a, lane, pace) for a, lane in lanes.items()))

    def lanes(self, chats: list[int]) -> dict[str | None, list[int]]:
        """{account: its chats in this round}: each chat in the lane of a usable account in
        it, the one with the fewest chats so far; None for the chats with none such (the
        pool chooses their account)."""
        lanes: dict[str | None, list[int]] = {}
        for peer_id in chats:
            accounts = [a for a in self._shared.joined_accounts(peer_id) if self._usable(a)]
            account = min(accounts, key=lambda a: len(lanes.get(a, ())), default=None)
            lanes.setdefault(account, []).append(peer_id)
        return lanes

    def _usable(self, account: str) -> bool:
        try:
            return self._shared.pool.get(account).usable
        except NoAccountAvailable:
            return False  # a row of an account no longer in the pool

    async def _poll_lane(self, account: str | None, chats: list[int], pace: float) -> None:
        """Polls one lane's chats one after the other, `pace` s apart: a burst of getHistory
        earns the account a flood wait. A flood wait ends the lane (the rest waits for the
        next round)."""
        for i, peer_id in enumerate(chats):
            if i and pace:
                await self._sleep(pace)
            try:
                await self.poll_chat(peer_id, prefer=account)
            except FloodWait as e:
                log.warning(
                    "poll round of account %s stopped by a flood wait of %d s",
                    account or "(any)",
                    e.retry_after,
                )
                return
            except TgcError as e:
                log.info("poll of %s failed: %s", peer_id, e.code)
            except Exception:
                log.exception("poll of %s failed", peer_id)

    async def poll_chat(self, peer_id: int, *, prefer: str | None = None) -> int:
        """Reads what is newer than the chat's watermark, oldest first, publishes what was
        not published yet, moves the watermark. Returns how many events it published.
        `prefer`: the account to read a channel as when it can (its lane's)."""
        sub = self._shared.joined(peer_id)
        if sub is None:
            return 0
        if is_basic_group(peer_id):
            return await self._poll_group(sub)
        ref = PeerRef.from_marked_id(peer_id)
        if ref.kind != "channel":
            return 0  # not a chat
        self._shared.counts.polls += 1
        joinmap = self._shared.joinmap
        low = joinmap.last_message_id(peer_id)
        if low == 0:
            # No watermark (joined outside the API?): start at the newest, publish nothing.
            history = _history(ref, 0, 0, limit=1)
            (_, newest), _ = await self._shared.pool.run(history, ref, prefer=prefer)
            if newest:
                joinmap.set_last_message_id(peer_id, newest[0].id)
            return 0
        (_, page), tc = await self._shared.pool.run(_history(ref, low, 0), ref, prefer=prefer)
        if len(page) < HISTORY_PAGE:
            count = await self._publish_page(tc, sub, page)  # all there is after `low`
        else:
            count = await self._walk_backlog(sub, ref, low, prefer)
        await self._follow(peer_id, ref)
        return self._found(peer_id, count)

    async def _follow(self, peer_id: int, ref: PeerRef) -> None:
        """Each account in the channel tracks its updates (see the module docstring)."""
        for account in self._shared.joined_accounts(peer_id):
            try:
                tc = self._shared.pool.get(account)
                if tc.ready_in(ref) == 0:
                    await tc.follow_updates(ref)
            except TgcError as e:
                log.info("account %s does not track %s yet: %s", account, peer_id, e.code)

    def _found(self, peer_id: int, count: int) -> int:
        self._shared.counts.poll_found += count
        self._shared.joinmap.flush()
        if count:
            log.info("poll of %s found %d messages the updates missed", peer_id, count)
        return count

    async def _walk_backlog(self, sub: Sub, ref: PeerRef, low: int, prefer: str | None) -> int:
        # Windows (low, low + 101), the oldest messages after the watermark first, so the
        # watermark moves past what was read however long the backlog (the rest next poll).
        peer_id, count, pool = sub["peer"]["id"], 0, self._shared.pool
        for _ in range(MAX_PAGES_PER_POLL):
            window = _history(ref, low, low + HISTORY_PAGE + 1)
            (_, page), tc = await pool.run(window, ref, prefer=prefer)
            if page:
                count += await self._publish_page(tc, sub, page)
                low = max(m.id for m in page)
                continue
            (_, newer), _ = await pool.run(_history(ref, low, 0, limit=1), ref, prefer=prefer)
            if not newer:
                break  # caught up
            low = min(low + HISTORY_PAGE, newer[0].id - 1)  # a run of deleted ids: skip it
            self._shared.joinmap.set_last_message_id(peer_id, low, persist=False)
        return count

    async def _publish_page(self, tc: TeleClient, sub: Sub, page: list[Any]) -> int:
        """Publishes a page of history oldest first; moves the watermark to its newest."""
        count = 0
        for msg in sorted(page, key=lambda m: m.id):
            if await self._intake.publish_message(tc, sub, msg, "message.new"):
                count += 1
        if page:
            # The page is all there is up to its newest: gaps below it were deletions.
            self._shared.watermarks.settle(sub["peer"]["id"], max(m.id for m in page))
        return count

    # --- basic groups -------------------------------------------------------------------

    async def _poll_group(self, sub: Sub) -> int:
        """Polls a basic group as each account with ids waiting past its cursor (only a read
        in its own ids closes that), else as one account: the first in it with a cursor,
        or any in it (its first poll starts the cursor)."""
        peer_id = sub["peer"]["id"]
        joined = self._shared.joined_accounts(peer_id)
        gapped = [a for a in joined if self._shared.watermarks.gapped(peer_id, a)]
        count, polled = 0, False
        for account in gapped:
            found = await self._try_poll_group_as(account, sub)
            count, polled = count + (found or 0), polled or found is not None
        if not polled:
            cursor = self._shared.joinmap.member_last_message_id
            for account in sorted(joined, key=lambda a: cursor(peer_id, a) == 0):
                found = await self._try_poll_group_as(account, sub)
                if found is not None:
                    count, polled = count + found, True
                    break
        if not polled:
            log.info("poll of %s: none of its accounts can read it now", peer_id)
        return self._found(peer_id, count)

    async def _try_poll_group_as(self, account: str, sub: Sub) -> int | None:
        """How many the poll as `account` published; None when that account can't now."""
        ref = PeerRef.from_marked_id(sub["peer"]["id"])
        try:
            tc = self._shared.pool.get(account)
            if tc.ready_in(ref) != 0:
                return None  # unusable, disconnected or in a flood wait
            return await self._poll_group_as(tc, sub, ref)
        except TgcError as e:
            # A flood wait of this account is not every account's: the round goes on.
            log.info("poll of %s as %s failed: %s", sub["peer"]["id"], account, e.code)
            return None

    async def _poll_group_as(self, tc: TeleClient, sub: Sub, ref: PeerRef) -> int:
        peer_id = sub["peer"]["id"]
        self._shared.counts.polls += 1
        low = self._shared.joinmap.member_last_message_id(peer_id, tc.name)
        if low == 0:
            # No cursor (joined outside the API?): start at the newest, publish nothing.
            _, newest = await tc.get_history(ref, limit=1)
            top = int(newest[0].id) if newest else 0
            self._shared.watermarks.settle_group(peer_id, tc.name, top, persist=True)
            return 0
        _, page = await tc.get_history(ref, limit=HISTORY_PAGE, min_id=low)
        if len(page) < HISTORY_PAGE:
            return await self._publish_group_page(tc, sub, page)  # all there is after `low`
        return await self._walk_group_backlog(tc, sub, ref, low)

    async def _walk_group_backlog(self, tc: TeleClient, sub: Sub, ref: PeerRef, low: int) -> int:
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
            joinmap = self._shared.joinmap
            joinmap.set_member_last_message_id(peer_id, tc.name, low, persist=False)
        return count

    async def _publish_group_page(self, tc: TeleClient, sub: Sub, page: list[Any]) -> int:
        """`_publish_page` for a basic group: claimed by content, `tc`'s cursor moved."""
        count = 0
        for msg in sorted(page, key=lambda m: m.id):
            if await self._intake.publish_group(tc, sub, msg, "message.new"):
                count += 1
        if page:
            # All there is up to the newest in this chat: the ids below it that are not here
            # are other chats' of the account, or deleted.
            newest = max(m.id for m in page)
            self._shared.watermarks.settle_group(sub["peer"]["id"], tc.name, newest)
        return count


def _history(
    ref: PeerRef, min_id: int, max_id: int, limit: int = HISTORY_PAGE
) -> Callable[[TeleClient], Awaitable[tuple[Any, list[Any]]]]:
    async def op(tc: TeleClient) -> tuple[Any, list[Any]]:
        return await tc.get_history(ref, limit=limit, min_id=min_id, max_id=max_id)

    return op
