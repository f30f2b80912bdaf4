"""What each account has spent of its username-resolution budget, kept across restarts.

`model.teleclient.ResolveBudget` is a pair of token buckets (per minute, per day) in memory;
without this store a restart, or a crash loop under systemd/startup.sh, would refill both and
the daily cap would not hold. Each spend writes one row here, each start reads it back.

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
