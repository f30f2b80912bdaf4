"""Each account's username-resolution budget, and what it has spent, kept across restarts.

`ResolveBudget` is a pair of token buckets (`TokenBucket`: per minute, per day) in memory;
without `ResolveBudgetStore` a restart, or a crash loop under systemd/startup.sh, would refill
both and the daily cap would not hold. Each spend writes one row there, each start reads it
back.

Where: one small SQLite file under data.dir (data.dir/resolve_budget.sqlite3, through
common/sqlite.py like the join map), not beside the session files. The sessions folder holds
only what `start.py login` writes and what Telethon owns (the session file, its lock); the
data folder is the one the server writes its own state to, and one file with one indexed row
per account is a single upsert per resolution. Rows are keyed by the session file's stem, not
the public label: a label can move to another account when a colliding session file is added
(account_labels), the stem can't. data.dir is as local as the sessions folder (the stems are
already the session file names), and nothing here is ever answered or published.

What is stored is what was *spent* at a wall-clock time (time.time, not the monotonic clock
the buckets run on: that one restarts with the machine), per bucket. On load the time since
then refills it at the configured rate, so a changed resolve_per_minute/per_day applies at
once: a raised cap grants the difference, a lowered one leaves the account empty at worst.

A store that can't be read never stops the server: it logs a warning and every account
starts EMPTY (all of its budget spent just now, refilling from there) rather than full. We
cannot know what was spent, and a full start after a crash loop is the very burst that gets
accounts flood-waited for hours; an empty one costs at most a day of slower resolutions. A
corrupt file is moved aside (`.corrupt`) and a fresh one used, where each account's empty
start is written at once, so the next start reads again and no account comes back full; a
failed write is logged and the resolution goes ahead (its spend is still in memory).

Writes use synchronous=NORMAL (WAL, no fsync at commit): a process crash keeps every committed
spend, a power cut may lose the last ones, which is the restart case this is for anyway.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.sqlite import open_db, write

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_MIGRATIONS = (
    """
    CREATE TABLE resolve_budget (
        account TEXT PRIMARY KEY,              -- the session file's stem
        minute_spent REAL NOT NULL,            -- tokens missing from the per-minute bucket
        day_spent REAL NOT NULL,               -- tokens missing from the per-day bucket
        at REAL NOT NULL                       -- wall clock (time.time) when counted
    )
    """,
)


def _corrupt(e: sqlite3.DatabaseError) -> bool:
    return getattr(e, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT")


@dataclass(frozen=True)
class SpentBudget:
    """Tokens missing from each bucket at wall-clock time `at` (None: just now)."""

    minute: float
    day: float
    at: float | None


# What a load answers when the store can't say: everything spent, just now (see the module
# docstring); ResolveBudget reads an infinite spend as the whole capacity.
UNKNOWN = SpentBudget(float("inf"), float("inf"), None)


class ResolveBudgetStore:
    """The SQLite table of spent budgets; `load(account)` at start, `save(...)` per spend."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock  # the wall clock spends are stamped with
        self._conn: sqlite3.Connection | None = None
        # True when this start could not read what was spent: every load answers UNKNOWN.
        self.lost = False
        try:
            self._conn = open_db(self.path, "resolve_budget", _MIGRATIONS)
            return
        except sqlite3.DatabaseError as e:  # "unable to open" is one too: only these move
            error: Exception = e
            corrupt = _corrupt(e) and self.path.is_file()
        except (OSError, RuntimeError) as e:  # no folder, a newer schema's file
            error, corrupt = e, False
        self.lost = True
        log.warning(
            "resolution budgets: %s %s (%s); every account starts with its budget spent "
            "(refilling from now)",
            self.path,
            "is unreadable, moved aside" if corrupt else "can't be opened, not kept",
            error,
        )
        if corrupt:
            self._conn = self._open_fresh()

    def _open_fresh(self) -> sqlite3.Connection | None:
        try:
            for suffix in ("", "-wal", "-shm"):
                part = self.path.with_name(self.path.name + suffix)
                if part.exists():
                    part.replace(part.with_name(part.name + ".corrupt"))
            return open_db(self.path, "resolve_budget", _MIGRATIONS)
        except (OSError, RuntimeError, sqlite3.Error) as e:
            log.warning("resolution budgets: can't start a fresh %s (%s)", self.path, e)
            return None

    def load(self, account: str) -> SpentBudget | None:
        """What `account` had spent; None when it never spent (a full budget), UNKNOWN when
        the store can't say."""
        if self.lost or self._conn is None:
            return UNKNOWN
        try:
            row = self._conn.execute(
                "SELECT minute_spent, day_spent, at FROM resolve_budget WHERE account = ?",
                (account,),
            ).fetchone()
            if row is None:
                return None
            return SpentBudget(float(row[0]), float(row[1]), float(row[2]))
        except (sqlite3.Error, TypeError, ValueError) as e:
            log.warning(
                "resolution budgets: can't read account %s's row in %s (%s); it starts with "
                "its budget spent",
                account,
                self.path,
                e,
            )
            return UNKNOWN

    def save(self, account: str, spent: SpentBudget) -> None:
        """Records what `account` has spent now (one upsert); a failure is only logged."""
        if self._conn is None:
            return
        at = self.clock() if spent.at is None else spent.at
        try:
            with write(self._conn):
                self._conn.execute(
                    "INSERT INTO resolve_budget (account, minute_spent, day_spent, at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET"
                    " minute_spent = excluded.minute_spent, day_spent = excluded.day_spent,"
                    " at = excluded.at",
                    (account, spent.minute, spent.day, at),
                )
        except sqlite3.Error as e:
            log.warning(
                "resolution budgets: can't record account %s's spend in %s (%s); a restart "
                "may refill it",
                account,
                self.path,
                e,
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class TokenBucket:
    """`capacity` tokens, refilled continuously over `period` seconds."""

    def __init__(self, capacity: float, period: float, clock: Clock) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self._clock = clock
        self._tokens = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def ready_in(self) -> float:
        """Seconds until one token is there (0 when one is there now)."""
        self._refill()
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate

    def take(self) -> None:
        """Spends one token (the bucket may go below zero: `ready_in` then waits longer)."""
        self._refill()
        self._tokens -= 1

    def spent(self) -> float:
        """Tokens missing now (0: full)."""
        self._refill()
        return self.capacity - self._tokens

    def left(self) -> int:
        """Whole tokens there now (0 when empty or in debt)."""
        self._refill()
        # A refill's float arithmetic lands a hair under a whole token (12 s × 5/60 is
        # 0.9999...): that token is there.
        return max(0, int(self._tokens + 1e-9))

    def restore(self, spent: float, elapsed: float) -> None:
        """Sets the bucket to `spent` tokens missing `elapsed` seconds ago (at most all of
        them: a spend recorded under a higher capacity leaves it empty, not in debt)."""
        tokens = self.capacity - min(max(spent, 0.0), self.capacity)
        self._tokens = min(self.capacity, tokens + max(elapsed, 0.0) * self.rate)
        self._at = self._clock()


class ResolveBudget:
    """How many `contacts.resolveUsername` one account may send: per minute and per day.

    The per-minute bucket is what keeps bursts away, the daily one caps a busy day. With a
    `store` (under data.dir) both survive a restart: what `account` had spent is read back
    here and every `take` records it; without one they live in memory and a restart refills
    them.
    """

    def __init__(
        self,
        per_minute: float,
        per_day: float,
        clock: Clock = time.monotonic,
        *,
        store: ResolveBudgetStore | None = None,
        account: str = "",
    ) -> None:
        self._minute = TokenBucket(per_minute, 60, clock)
        self._day = TokenBucket(per_day, 86400, clock)
        self._buckets = [self._minute, self._day]
        self._store = store
        self._account = account
        if store is not None:
            self._restore(store)

    def _restore(self, store: ResolveBudgetStore) -> None:
        saved = store.load(self._account)
        if saved is None:
            return  # never spent anything: full
        elapsed = 0.0 if saved.at is None else store.clock() - saved.at
        self._minute.restore(saved.minute, elapsed)
        self._day.restore(saved.day, elapsed)
        if saved is UNKNOWN:
            self._save()  # the empty start, so the next start does not come back full

    def _save(self) -> None:
        if self._store is not None:
            spent = SpentBudget(self._minute.spent(), self._day.spent(), None)
            self._store.save(self._account, spent)

    def ready_in(self) -> float:
        """Seconds until a resolution may be sent (0: now)."""
        return max(b.ready_in() for b in self._buckets)

    def left(self) -> tuple[int, int]:
        """Resolutions that may be sent (this minute, today): whole tokens of each bucket,
        the minute's never more than the day's (a resolution takes one of each)."""
        day = self._day.left()
        return min(self._minute.left(), day), day

    def take(self) -> None:
        """Spends one resolution from both buckets (and records it in the store)."""
        for bucket in self._buckets:
            bucket.take()
        self._save()
