"""The emulator's download budget: how fast one account may fetch file bytes.

In TELEGRAM.md's terms ("Limits and errors"), what is known:
- Downloads are throttled per account. Users of Telegram downloaders report FLOOD_WAIT_X on
  `upload.getFile` after sustained fast downloading (not after a burst of a few parts), and
  one reports a download "locked at 169 kB/s" after a run of flood waits.
- FLOOD_PREMIUM_WAIT_X (420) is Telegram's slow-down for accounts without Telegram Premium
  (core.telegram.org/api/errors; Telethon: FloodPremiumWaitError, `seconds` = X): "a wait
  of X seconds is required in non-premium accounts". A premium account meets plain
  FLOOD_WAIT_X instead.
- X is in seconds, at least 1, and the same kind of request is refused until it passes.

What is a guess (Telegram publishes neither the model nor the numbers), so a knob here:
- The model: a token bucket per account, refilled at `budget` bytes per second and holding
  at most `budget × burst` bytes (a fresh account starts full). A getFile takes the bytes
  it answers; one that would overdraw the bucket is refused, takes nothing, and X is the
  seconds until the bucket holds enough for it again (the overdraft ÷ budget, rounded up,
  at least 1). Waiting X therefore always suffices; asking sooner is refused again with
  the time still left.
- The bucket is per account, across its data centres and connections, the same for
  premium accounts (only the error's name differs) and `burst` is 2 s by default.

Set through the world (`World.download_budget` in bytes per second, None: unlimited;
`World.download_burst` in seconds; `UserSpec.premium`) or `serve --download-budget MBPS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from tests.fakedc.api import RpcError

DEFAULT_BURST = 2.0  # seconds of budget the bucket holds (a guess, see above)


@dataclass
class _Bucket:
    tokens: float
    at: float


class DownloadBudget:
    """Per-account token buckets on `clock` (seconds)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self.refused: dict[int, int] = {}  # user id → getFile calls refused (for tests, benches)

    def take(self, user_id: int, nbytes: int, budget: float, burst: float, premium: bool) -> None:
        """Takes `nbytes` from the account's bucket, or raises the 420 Telegram answers."""
        capacity = max(budget * burst, float(nbytes))  # one part always fits, eventually
        now = self._clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * budget)
        bucket.at = now
        if nbytes <= bucket.tokens:
            bucket.tokens -= nbytes
            return
        wait = max(1, math.ceil((nbytes - bucket.tokens) / budget))
        self.refused[user_id] = self.refused.get(user_id, 0) + 1
        name = "FLOOD_WAIT" if premium else "FLOOD_PREMIUM_WAIT"
        raise RpcError(420, f"{name}_{wait}")

    def reset(self) -> None:
        self._buckets.clear()
        self.refused.clear()
