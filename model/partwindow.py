"""How many parts one account fetches at once on a data centre, and how fast it may fetch.

No fixed number of parts in flight suits every distance to Telegram (bench/media_download.py,
issue 14: 8 parts were 2.5x stock Telethon at 0 ms but 22.5x at a 50 ms round trip; 32 were
42.8x at 50 ms but 1.9x at 0 ms, where the extra parts only queue), nor Telegram itself,
which throttles an account that downloads fast for long (FLOOD_WAIT_X on upload.getFile,
FLOOD_PREMIUM_WAIT_X for accounts without Premium). So two controllers, kept on the
account's `MediaConnections` (model/downloader.py) and shared by its downloads:

`PartWindow`, per account and DC: the parts in flight, grown only while throughput grows.
Each round (as many answers as the window) gives the account's throughput on the DC: the
round's bytes ÷ the time since the previous round ended (since its first part was sent,
after the window drained). A bigger window is a trial, judged by the round at the new
size: kept when that round's throughput is at least GAIN above the round before the
growth, otherwise the window goes back to its size before and holds there HOLD_ROUNDS
rounds before the next trial. Slow start doubles the window from START; after its first
failed trial, or after a flood wait, a trial adds STEP of the window (at least one part).
Only rounds that had the window full judge anything: a round of few parts (small files)
says nothing of what a bigger window would do. A flood wait halves the window; `ceiling`
(media.parts_in_flight) bounds it. The downloader gives a part's place back once the part
is written: the window bounds the parts held in memory, and the throughput it measures is
what reaches the file.

Throughput, not the round trip: the window was delay-based first (TCP Vegas: grow while
the round trip stays near the path's own, shrink as parts queue), and on this 2-CPU
machine that misread both ends (bench/media_download.py, issue 14). At 0 ms the parts'
queue is the pipeline between the emulator's CPU and ours, which a window of 1-2 starves
(166 MB/s, where 16 gave 187-217); and with the real server uploading beside the
download, round trips stayed near the base while the window grew to its ceiling and
bought nothing (a ceiling of 64 took the server's peak RSS from 116 to 147 MB moving
1 GB). A window the throughput justifies is right for both.

The first round after the window drained is timed from its first part, so it includes the
path's round trip once: against it the next, pipelined round looks better than it is, and
a path that is already full may keep one doubling (16 at 0 ms, measured) before a trial
fails.

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
# Throughput: a trial's round must beat the round before it by GAIN to be kept (a doubling
# that queues only measures ~0 ± a few %, one that fills a 50 ms path ~+40-100 %); after a
# failed trial the window holds HOLD_ROUNDS rounds; after slow start a trial adds STEP.
GAIN = 0.1
HOLD_ROUNDS = 16
STEP = 0.25
BASE_SPAN = 30.0  # seconds a round's least round trip counts for `base` (shown, not used)
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
    """One part's place in a window: when it was sent."""

    sent: float = 0.0


class PartWindow:
    """The parts in flight of one account on one DC (see the module docstring)."""

    def __init__(self, ceiling: int = 8, *, start: int = START, clock: Clock = time.monotonic):
        self.ceiling = max(1, ceiling)
        self.limit = float(max(1, min(start, self.ceiling)))
        self.in_flight = 0
        self.parts = 0
        self.floods = 0
        self.rate: float | None = None  # bytes per second of the last round that judged
        self._clock = clock
        self._slow_start = True
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._bases: deque[tuple[float, float]] = deque()  # (at, a round's least round trip)
        self._trial: tuple[float, float] | None = None  # (limit, rate) before a growth
        self._hold = 0  # rounds left before the next trial
        self._round_parts = 0
        self._round_bytes = 0
        self._round_min = math.inf
        self._round_full = False  # an answer came with the window full
        self._round_start: float | None = None

    def __repr__(self) -> str:
        return f"<PartWindow {self.size}/{self.ceiling} in flight {self.in_flight}>"

    @property
    def size(self) -> int:
        """How many parts may be in flight now."""
        return max(1, min(self.ceiling, int(self.limit)))

    @property
    def base(self) -> float | None:
        """The least round trip of the last BASE_SPAN seconds (seconds), if any yet."""
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
        return Slot()

    def sent(self, slot: Slot) -> None:
        """The part of `slot` leaves now (after any pacing)."""
        slot.sent = self._clock()
        if self._round_start is None:
            self._round_start = slot.sent

    def release(self, slot: Slot, nbytes: int | None) -> None:
        """Gives the place back; `nbytes` of a part answered (None: it failed)."""
        full = self.in_flight >= self.size or bool(self._waiters)
        self.in_flight -= 1
        if nbytes is not None and slot.sent:
            self._sample(self._clock() - slot.sent, nbytes, full)
        if not self.in_flight and not self._waiters:
            # Nothing more to send (a file's end): the next round is timed from its own
            # first part, not across the idle time.
            self._new_round(None)
        self._wake()

    def flood(self) -> None:
        """Telegram said wait: half the window, and no more slow start."""
        self.floods += 1
        self.limit = max(1.0, min(self.limit, float(self.ceiling)) / 2)
        self._slow_start, self._trial, self.rate = False, None, None
        self._new_round(None)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _sample(self, rtt: float, nbytes: int, full: bool) -> None:
        self.parts += 1
        self._round_parts += 1
        self._round_bytes += nbytes
        self._round_min = min(self._round_min, rtt)
        self._round_full = self._round_full or full
        if self._round_parts >= self.size:
            self._end_round(self._clock())

    def _end_round(self, now: float) -> None:
        self._bases.append((now, self._round_min))
        while self._bases[0][0] < now - BASE_SPAN:
            self._bases.popleft()
        start = self._round_start
        limit = min(self.limit, float(self.ceiling))
        if start is not None and now > start and self._round_full:
            rate = self._round_bytes / (now - start)
            if self._trial is not None:
                limit = self._judge(rate)
            elif self._hold > 0:
                self.rate, self._hold = rate, self._hold - 1
            else:
                self.rate = rate
                limit = self._try_more(limit, rate)
        # else the round says nothing of what a bigger window would do
        self.limit = max(1.0, min(limit, float(self.ceiling)))
        self._new_round(now)

    def _judge(self, rate: float) -> float:
        """The round after a growth: kept (and more tried) if throughput grew by GAIN;
        otherwise back to the window before, held there HOLD_ROUNDS rounds."""
        assert self._trial is not None
        before, before_rate = self._trial
        self._trial = None
        if rate >= before_rate * (1 + GAIN):
            self.rate = rate
            return self._try_more(min(self.limit, float(self.ceiling)), rate)
        self._slow_start, self._hold, self.rate = False, HOLD_ROUNDS, before_rate
        return before

    def _try_more(self, limit: float, rate: float) -> float:
        """The window grown for a trial (unchanged, and no trial, at the ceiling)."""
        grown = limit * 2 if self._slow_start else limit + max(1.0, limit * STEP)
        grown = min(grown, float(self.ceiling))
        if int(grown) <= int(limit):
            return limit
        self._trial = (limit, rate)
        return grown

    def _new_round(self, now: float | None) -> None:
        """A round begins, timed from `now` (the previous round's end), or when None from
        its first part sent."""
        self._round_parts, self._round_bytes, self._round_min = 0, 0, math.inf
        self._round_full, self._round_start = False, now

    def describe(self) -> dict[str, Any]:
        base = self.base
        return {
            "window": self.size,
            "ceiling": self.ceiling,
            "in_flight": self.in_flight,
            "base_rtt_ms": None if base is None else round(base * 1000, 1),
            "throughput_mb_s": None if self.rate is None else round(self.rate / 1e6, 1),
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
