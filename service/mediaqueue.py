"""The media pipeline's flow control, and the state its two stages share.

- `AccountQueue`: download work by account, round robin over accounts, at most
  `per_account` downloads of one account at a time, none of an account paused by a flood
  wait;
- `SpoolBudget`: back-pressure, bytes reserved in the spool before a download starts;
- `Backoff`: capped, jittered exponential delays between attempts;
- `Pipeline`: the unfinished items of this process, the queues between the download and
  the upload stage, and the state changes both make (each written to the table at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from common.errors import TgcError
from service.mediastore import Item, MediaTable, SpoolFiles, State, public_record
from service.ports import ClientLookup, TeleClientLike
from service.storage import StorageError

log = logging.getLogger(__name__)


class AccountQueue:
    """Download work by account: round robin over accounts, at most `per_account` items of
    one account at a time, none of an account that is paused (flood wait)."""

    def __init__(self, per_account: int) -> None:
        self._per_account = per_account
        self._waiting: dict[str, deque[str]] = {}  # insertion order = round-robin order
        self._busy: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def put(self, account: str, key: str, *, front: bool = False) -> None:
        queue = self._waiting.setdefault(account, deque())
        if front:
            queue.appendleft(key)
        else:
            queue.append(key)
        self._changed.set()

    def pause(self, account: str, seconds: float) -> None:
        """No item of `account` is handed out for `seconds` (a longer pause wins)."""
        until = time.monotonic() + seconds
        self._paused_until[account] = max(until, self._paused_until.get(account, 0.0))

    def release(self, account: str) -> None:
        """One item `get` handed out for `account` is done."""
        self._busy[account] -= 1
        self._changed.set()

    async def get(self) -> tuple[str, str]:
        """The next (account, key) to download; waits until one may go."""
        while True:
            picked = self._pick()
            if picked is not None:
                return picked
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wake()):  # wait_for may eat a cancel
                    await self._changed.wait()

    def _pick(self) -> tuple[str, str] | None:
        now = time.monotonic()
        for account in list(self._waiting):
            if self._busy.get(account, 0) >= self._per_account:
                continue
            if self._paused_until.get(account, 0.0) > now:
                continue
            queue = self._waiting.pop(account)
            key = queue.popleft()
            if queue:
                self._waiting[account] = queue  # to the end: the next account goes first
            self._busy[account] = self._busy.get(account, 0) + 1
            return account, key
        return None

    def _next_wake(self) -> float | None:
        now = time.monotonic()
        ends = [
            self._paused_until[a] - now
            for a in self._waiting
            if self._paused_until.get(a, 0.0) > now
        ]
        return max(0.0, min(ends)) if ends else None


class SpoolBudget:
    """Bytes reserved in the spool. A reservation waits while it would pass the limit,
    unless nothing is reserved (a file larger than the whole spool goes alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def reserve(self, size: int) -> None:
        while self.used and self.used + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += size

    def force(self, size: int) -> None:
        """Counts bytes already on disk, whatever the limit says."""
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self._freed.set()


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: base × 2^(attempt-1), at most `cap`, jittered down to half
    so that items failing together don't retry in lockstep."""

    base: float
    cap: float

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Pipeline:
    """What the download and upload stages share: the unfinished items this process works
    on, the queues between the stages, the spool, and the accounts' `pending_downloads`
    (the items queued or downloading for each, which the pool's weighted choice reads).

    Every state change goes through `set_state`, which writes the row at once."""

    def __init__(
        self,
        db: MediaTable,
        spool: SpoolFiles,
        clients: ClientLookup,
        *,
        per_account: int,
        spool_max_bytes: int,
    ) -> None:
        self.db = db
        self.spool = spool
        self.budget = SpoolBudget(spool_max_bytes)
        self.clients = clients
        self.items: dict[str, Item] = {}
        self.downloads = AccountQueue(per_account)
        self.uploads: asyncio.Queue[str] = asyncio.Queue()
        self.running = False
        self._counted: dict[str, TeleClientLike] = {}  # key → the account counting it
        self._timers: set[asyncio.TimerHandle] = set()

    def lookup(self, account: str) -> TeleClientLike | None:
        """The account of that name, or None when the pool has none."""
        try:
            return self.clients.get(account)
        except (KeyError, LookupError, TgcError):
            return None

    # --- queueing --------------------------------------------------------------------------

    def queue_download(self, item: Item, *, front: bool = False) -> None:
        self._count(item)
        self.downloads.put(item.media.account, item.key, front=front)

    def requeue_later(self, item: Item, delay: float) -> None:
        """Queues the item's download again after `delay` seconds, if still running."""

        def requeue() -> None:
            self._timers.discard(timer)
            if self.running and item.key in self.items:
                self.queue_download(item)

        timer = asyncio.get_running_loop().call_later(delay, requeue)
        self._timers.add(timer)

    def queue_upload(self, item: Item) -> None:
        self.uploads.put_nowait(item.key)

    def _count(self, item: Item) -> None:
        """Adds the item to its account's pending_downloads (once)."""
        if item.key in self._counted:
            return
        tele = self.lookup(item.media.account)
        if tele is not None:
            tele.pending_downloads += 1
            self._counted[item.key] = tele

    def uncount(self, key: str) -> None:
        """Takes the item off its account's pending_downloads."""
        tele = self._counted.pop(key, None)
        if tele is not None:
            tele.pending_downloads = max(0, tele.pending_downloads - 1)

    # --- states -----------------------------------------------------------------------------

    def set_state(self, item: Item, state: State, error: str | None = None) -> None:
        item.state = state
        item.error = error
        self.db.save(item)

    def fail(self, item: Item, error: str) -> None:
        """The item ends `failed` with the reason; its spool file and budget are freed."""
        log.warning("media %s failed: %s", item.key, error)
        self.uncount(item.key)
        item.done_parts.clear()
        self.set_state(item, State.FAILED, error)
        self.forget(item)

    def fail_on_bug(self, key: str, error: Exception) -> None:
        """A bug, not an answer of Telegram or the storage: the item fails rather than stay
        downloading or uploading forever."""
        item = self.items.get(key)
        if item is not None:
            with contextlib.suppress(Exception):
                self.fail(item, f"internal error: {describe(error)}")

    def finish(self, item: Item, url: str) -> None:
        """The item ends `stored`; only now that the storage has it and the table says so
        is its spool file deleted."""
        item.url = url
        self.set_state(item, State.STORED)
        self.forget(item)
        log.info("media %s stored (%d bytes)", item.key, item.media.size)

    def forget(self, item: Item) -> None:
        """Deletes the item's spool file, frees its budget, drops it from this process."""
        self.spool.discard(item.key)
        self.release_spool(item)
        self.items.pop(item.key, None)

    def release_spool(self, item: Item) -> None:
        self.budget.release(item.reserved)
        item.reserved = 0

    def record(self, key: str) -> dict[str, Any]:
        """The public record of a key the table has."""
        row = self.db.get(key)
        assert row is not None
        return public_record(row)

    # --- stop -------------------------------------------------------------------------------

    def stop_requeueing(self) -> None:
        """No item is queued again from now on (the timers of retries are cancelled)."""
        self.running = False
        for timer in self._timers:
            timer.cancel()

    def let_go(self) -> None:
        """Saves every item's parts and drops them, once the workers are cancelled: the rows
        keep the states for the next start."""
        for item in self.items.values():
            self.db.save_parts(item)
        for key in list(self._counted):
            self.uncount(key)
        self.items.clear()


def describe(error: BaseException) -> str:
    """The reason a failed item shows. Telegram's errors arrive as the service's own
    (model/ converts them: FloodWait, AccountUnusable, TelegramError naming the RPC error),
    the storage's as StorageError; anything else is named by its type."""
    if isinstance(error, TgcError | StorageError):
        text = error.message
    else:
        text = f"{type(error).__name__}: {error}"
    return text[:500]
