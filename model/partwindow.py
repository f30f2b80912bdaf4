"""How many parts one account fetches at once on a data centre, and how fast it may fetch.

No fixed number of parts in flight suits every distance to Telegram (bench/media_download.py,
issue 14: 8 parts were 2.5x stock Telethon at 0 ms but 22.5x at a 50 ms round trip; 32 were
42.8x at 50 ms but 1.9x at 0 ms, where the extra parts only queue), nor Telegram itself,
which throttles an account that downloads fast for long (FLOOD_WAIT_X on upload.getFile,
FLOOD_PREMIUM_WAIT_X for accounts without Premium). So two controllers, kept on the
account's `MediaConnections` (model/downloader.py) and shared by its downloads:

`PartWindow`, per account and DC: the parts in flight, delay-based (TCP Vegas's idea). A
part's round trip when it is alone is the path's own (`base`); with more parts in flight,
each round trip grows only by the time the parts wait behind one another, so
`share = 1 − base ÷ the round's least round trip` is the share of the window that sits in
a standing queue (the CPU's, the emulator's, Telegram's) instead of adding throughput.
Every round (as many parts as the window) the window doubles while the share is below
GROW_BELOW (slow start), then grows by one while it is, and shrinks by one while it is
above SHRINK_ABOVE: throughput grows while the window does, and the window stops growing
once the parts mostly queue. The round's least round trip, as TCP Vegas: parts sent
together answer together and wait for one another in the event loop, which a mean would
read as a queue. A share, not a count of parts queued as Vegas keeps: measured on a busy
2-CPU machine against the emulator at 50 ms, a count of 2 to 4 held the window at 8 to 10
(~76 MB/s, where a fixed 32 gave ~99), Python's own handling of a part counting as queue.
The base is the least round trip of the last BASE_SPAN seconds, the first round's to begin
with (its quickest part waited behind hardly anything: a part sent alone first cost a
whole round trip of a cold download, ~60 ms of 1.2 s for 200 MB at 50 ms); every
PROBE_EVERY seconds one part is sent alone to measure it again (a window held large would
otherwise let queued round trips pass for the base). A flood wait halves the window. `ceiling`
(media.parts_in_flight) bounds it.

`DownloadPace`, per account: a rate the account's parts are paced to, set only once
Telegram said wait. A window can't express a rate (one part at 0 ms is already faster than
any budget), and answering every FLOOD_WAIT by waiting and then bursting again would meet
one every few seconds, the pattern that gets downloads "locked" slower. On a flood wait the
rate is set to BETA_RATE × what the account was allowed since its previous flood wait (the
bytes received since that wait began ÷ the time since: Telegram's refill rate, whatever its
bucket; for the first one, the last SPAN seconds' bytes ÷ (their time + the wait), unless
fewer than MIN_PARTS parts came: then only the wait). Only time the account was pushing
counts (a part waiting for its turn or in flight, or the wait itself), and only when it
pushed for at least PUSHING of the interval: an account that mostly idled and then met a
flood wait (a request-count limit, a DC's trouble) says nothing about a byte budget, and
reading its few bytes over the whole interval as one paced the account to MIN_RATE for
good (the 30-minute soak of issue 11 left 166 of 530 files pending that way, each part also
charged its whole requested size: a part is charged the bytes it can carry). While
the pace holds the parts back it grows by GROWTH per second, doubled every GROWTH_DOUBLING
seconds without a flood wait (a rate learnt too low, say from a long penalty wait, recovers
in minutes, not hours), so an account meets about one flood wait a minute at ~95% of its
budget (the token bucket of tests/fakedc/budget.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]

# The window of a fresh account and DC; slow start doubles it from there. 8: the fixed
# window shipped before this one, the best one at 0 ms (issue 14), so a near DC loses
# nothing while a far one reaches 32 in two round trips.
START = 8
# The standing queue, as a share of the window (1 − base ÷ least round trip): grow below
# GROW_BELOW, shrink above SHRINK_ABOVE; and always grow while fewer than ALPHA parts queue.
GROW_BELOW, SHRINK_ABOVE = 0.4, 0.6
ALPHA = 2.0
BASE_SPAN = 30.0  # seconds a round trip counts for the base
PROBE_EVERY = 10.0  # seconds between parts sent alone to measure the base again
# The pace: seconds of bytes the first estimate is made of, the fraction of the estimated
# budget kept after a flood wait, its growth per second while it holds parts back, a floor,
# and how long a flood wait's start stays the reference for the next estimate.
SPAN = 10.0
BETA_RATE = 0.9
GROWTH = 0.002
GROWTH_DOUBLING = 60.0  # seconds without a flood wait that double the growth
MIN_RATE = 64 * 1024.0
MIN_PARTS = 4  # parts received before a first flood wait for it to tell a rate
PUSHING = 0.5  # the share of an interval the account must have pushed for it to tell a rate
FLOOD_MEMORY = 120.0


@dataclass(slots=True)
class Slot:
    """One part's place in a window: when it was sent and whether it went alone."""

    sent: float = 0.0
    alone: bool = False


class PartWindow:
    """The parts in flight of one account on one DC (see the module docstring)."""

    def __init__(self, ceiling: int = 8, *, start: int = START, clock: Clock = time.monotonic):
        self.ceiling = max(1, ceiling)
        self.limit = float(max(1, min(start, self.ceiling)))
        self.in_flight = 0
        self.parts = 0
        self.floods = 0
        self._clock = clock
        self._slow_start = True
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._bases: deque[tuple[float, float]] = deque()  # (at, least round trip)
        self._probing = False  # the first round's quickest part gives the base
        self._probed_at = clock()
        self._round_parts = 0
        self._round_min = math.inf

    def __repr__(self) -> str:
        return f"<PartWindow {self.size}/{self.ceiling} in flight {self.in_flight}>"

    @property
    def size(self) -> int:
        """How many parts may be in flight now."""
        if self._probing:
            return 1
        return max(1, min(self.ceiling, int(self.limit)))

    @property
    def base(self) -> float | None:
        """The path's own round trip as measured (seconds), if any yet."""
        return min((rtt for _, rtt in self._bases), default=None)

    async def acquire(self) -> Slot:
        """Waits for a place in the window; give it back with `release`."""
        if self.in_flight >= self.size or self._waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.in_flight -= 1  # granted as we were cancelled: give it back
                    self._wake()
                else:
                    self._waiters.remove(waiter)
                raise
        else:
            self.in_flight += 1
        return Slot(alone=self.in_flight == 1)

    def sent(self, slot: Slot) -> None:
        """The part of `slot` leaves now (after any pacing)."""
        slot.sent = self._clock()
        slot.alone = slot.alone and self.in_flight == 1

    def release(self, slot: Slot, nbytes: int | None) -> None:
        """Gives the place back; `nbytes` of a part answered (None: it failed)."""
        self.in_flight -= 1
        if nbytes is not None and slot.sent:
            self._sample(self._clock() - slot.sent, slot.alone)
        self._wake()

    def flood(self) -> None:
        """Telegram said wait: half the window, and no more slow start."""
        self.floods += 1
        self.limit = max(1.0, min(self.limit, float(self.ceiling)) / 2)
        self._slow_start = False
        self._new_round()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _sample(self, rtt: float, alone: bool) -> None:
        now = self._clock()
        self.parts += 1
        if self._probing:
            if alone:
                self._add_base(now, rtt)
                self._probing, self._probed_at = False, now
                self._new_round()
            return
        self._round_parts += 1
        self._round_min = min(self._round_min, rtt)
        if self._round_parts >= self.size:
            self._end_round(now)

    def _add_base(self, now: float, rtt: float) -> None:
        self._bases.append((now, rtt))
        while self._bases and self._bases[0][0] < now - BASE_SPAN:
            self._bases.popleft()

    def _end_round(self, now: float) -> None:
        # The round's least round trip, not its mean (as TCP Vegas): parts sent together
        # answer together and wait for one another in the event loop, which a mean would
        # read as a queue; only a queue that stays makes even the quickest part late.
        least = self._round_min
        self._add_base(now, least)
        base = self.base or least
        share = 1 - base / least if least > 0 else 0.0
        grow = share < GROW_BELOW or share * self.size < ALPHA
        limit = min(self.limit, float(self.ceiling))
        if self._slow_start and grow:
            limit *= 2
        else:
            self._slow_start = False
            if grow:
                limit += 1
            elif share > SHRINK_ABOVE:
                limit -= 1
        self.limit = max(1.0, min(limit, float(self.ceiling)))
        self._new_round()
        if now - self._probed_at >= PROBE_EVERY:
            self._probing = True

    def _new_round(self) -> None:
        self._round_parts, self._round_min = 0, math.inf

    def describe(self) -> dict[str, Any]:
        base = self.base
        return {
            "window": self.size,
            "ceiling": self.ceiling,
            "in_flight": self.in_flight,
            "base_rtt_ms": None if base is None else round(base * 1000, 1),
            "parts": self.parts,
            "flood_waits": self.floods,
        }


class DownloadPace:
    """The rate one account's parts are paced to once Telegram said wait (module docstring)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.rate: float | None = None  # bytes per second; None: not paced
        self.bytes = 0  # received, in all
        self.floods = 0  # distinct flood waits met on getFile
        self.wait_until = 0.0  # the end (on the clock) of the flood wait running, if any
        self._clock = clock
        self._next = 0.0
        self._grown_at = 0.0
        # (at, bytes, pushed() then) of the last SPAN s
        self._recent: deque[tuple[float, int, float]] = deque()
        self._flood_at: float | None = None
        self._flood_pushed = 0.0  # pushed() at the last flood wait
        self._flood_wait = 0.0  # its seconds
        self._since_flood = 0
        self._active = 0  # parts between begin() and end()
        self._pushed = 0.0  # seconds with a part active, up to _pushed_at
        self._pushed_at = 0.0

    def waiting(self) -> float:
        """Seconds left of the flood wait running (0: none)."""
        return max(0.0, self.wait_until - self._clock())

    def pushed(self) -> float:
        """Seconds, in all, the account had a part waiting for its turn or in flight."""
        if self._active:
            return self._pushed + self._clock() - self._pushed_at
        return self._pushed

    def begin(self) -> None:
        """A part wants to go (before its turn)."""
        if not self._active:
            self._pushed_at = self._clock()
        self._active += 1

    def end(self) -> None:
        """The part of `begin` was answered or failed."""
        self._active -= 1
        if not self._active:
            self._pushed += self._clock() - self._pushed_at

    @contextlib.asynccontextmanager
    async def turn(self, nbytes: int) -> AsyncIterator[None]:
        """A part of at most `nbytes`: waits for its turn at the pace, counts as pushing."""
        self.begin()
        try:
            await self.wait(nbytes)
            yield
        finally:
            self.end()

    async def wait(self, nbytes: int) -> None:
        """Before sending a part of `nbytes`: waits for its turn at the pace."""
        rate = self.rate
        if rate is None:
            return
        now = self._clock()
        start = max(now, self._next)
        self._next = start + nbytes / rate
        if start > now:
            # Held back: the pace binds, probe for more, faster the longer Telegram is quiet.
            quiet = now - (self._flood_at if self._flood_at is not None else now)
            growth = GROWTH * 2 ** min(quiet / GROWTH_DOUBLING, 6.0)
            self.rate = rate * (1 + growth * min(now - self._grown_at, 1.0))
            self._grown_at = now
            await asyncio.sleep(start - now)
        else:
            self._grown_at = now

    def received(self, nbytes: int) -> None:
        now = self._clock()
        self.bytes += nbytes
        self._since_flood += nbytes
        self._recent.append((now, nbytes, self.pushed()))
        while self._recent and self._recent[0][0] < now - SPAN:
            self._recent.popleft()

    def flood(self, seconds: float) -> bool:
        """Telegram asked to wait `seconds` before the next getFile: the pace slows. False
        when it is the wait already known (other parts in flight met it too)."""
        now = self._clock()
        if now < self.wait_until:
            return False
        pushed = self.pushed()
        allowed: float | None = None
        if self._flood_at is not None and now - self._flood_at <= FLOOD_MEMORY:
            # Since the last wait began: that wait counts as Telegram's time, not as ours.
            allowed = self._allowed(self._since_flood, pushed - self._flood_pushed,
                                    now - self._flood_at - self._flood_wait, self._flood_wait)  # fmt: skip
        elif len(self._recent) >= MIN_PARTS:
            first, _, pushed_then = self._recent[0]
            received = sum(n for _, n, _ in self._recent)
            allowed = self._allowed(received, pushed - pushed_then, now - first, seconds)
        # else too little seen to tell a rate: the wait alone, and the window halves
        if allowed is not None:
            self.rate = max(MIN_RATE, BETA_RATE * allowed)
        self.floods += 1
        self._flood_at, self._since_flood = now, 0
        self._flood_pushed, self._flood_wait = pushed, seconds
        self.wait_until = now + seconds
        return True

    @staticmethod
    def _allowed(received: int, pushing: float, interval: float, wait: float) -> float | None:
        """Bytes per second Telegram allowed: `received` while pushing for `pushing` s of an
        `interval`, plus a `wait` of Telegram's; None when the account pushed for too little
        of the interval to tell (it idled: the wait was no byte budget's)."""
        if pushing < PUSHING * max(0.0, interval):
            return None
        return received / max(pushing + wait, 1e-3)

    def describe(self) -> dict[str, Any]:
        return {
            "downloaded_bytes": self.bytes,
            "rate_limit": None if self.rate is None else round(self.rate),
            "flood_waits": self.floods,
            "waiting": round(self.waiting(), 1),
        }
