"""The server's nonce store: every nonce accepted within the window, in SQLite, so that a
captured request can't be replayed after a restart, nor after a SIGKILL.

`SqliteNonceStore` is the `service.cryptor.NonceStore` that start.py gives the `Signer`:
one row per accepted nonce in data.dir/nonces.sqlite3, keyed by `nonce_key` (8 bytes of
BLAKE2b, stored as the rowid itself: ~20 bytes a row whatever the nonce's length), with the
time it may be forgotten, indexed.

Durability. `add` is one autocommit INSERT: the PRIMARY KEY conflict *is* the replay, so
check and record are one atomic step, and when it returns the commit's WAL frames have been
written to the file (synchronous=NORMAL: write(2), no fsync). The Signer admits a request
only after that, so every nonce whose request ran is in the operating system's hands: a
SIGKILL (or any crash of the process) loses none. A power cut or kernel crash can lose the
commits since the last WAL fsync (each checkpoint, about once a second); no commit is ever
batched or deferred.

Capacity. Nothing is held in memory per nonce: the file holds the window and the page cache
is bounded (`CACHE_KIB`), so memory doesn't grow with the rate. 3,000 signed requests/s
over a 300 s window is 900,000 live rows (bench/nonces.py gives the figures: time per
check, RSS, disk). Expired rows are deleted by timestamp through the index, in small
batches, once a second off the request path; then a checkpoint on a thread.

Refusing is the last resort: `max_live` (start.py: `cap_for_window`, sized for 10,000
requests/s, well above what the server can answer) or a write that fails (a full disk, an
I/O error) raise `RateLimited`; never forgetting a live nonce to make room. At the cap the
refusal ends as the earliest row expires (within the window for timestamps not from the
future); a failing disk is retried after `RETRY_ON_ERROR` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from common.errors import RateLimited
from common.sqlite import checkpoint, open_db

log = logging.getLogger(__name__)

_MIGRATIONS = (
    # The key is the rowid (an INTEGER PRIMARY KEY): no second copy of it in a unique index.
    # Every commit writes at least one page per B-tree it touched, hence the small page
    # (PAGE_SIZE) and nothing but the one index expiry needs.
    """
    CREATE TABLE nonces (
        key INTEGER PRIMARY KEY,               -- service.cryptor.nonce_key(nonce)
        until INTEGER NOT NULL                 -- unix seconds: live while until >= now
    );
    CREATE INDEX nonces_until ON nonces (until)
    """,
)

PAGE_SIZE = 1024
CACHE_KIB = 4096  # SQLite's page cache for this file: the store's memory, whatever the rate
RATE_CAP = 10_000  # signed requests/s a full window holds before refusing (cap_for_window)
RETRY_ON_ERROR = 10.0  # seconds: Retry-After when the file can't be written
# How long a request may wait for the write lock that a RESTART checkpoint holds (~ms).
BUSY_MS = 1000
_WARN_EVERY = 60.0  # seconds between two warnings of the same refusal


def cap_for_window(window: int) -> int:
    """The hard row cap for a window of `window` seconds: RATE_CAP requests/s for the whole
    window, ~2.6 times what the server answers at most (~3,800/s), so honest traffic never
    meets it (3,000,000 rows, ~70 MB of disk, at the default 300 s)."""
    return window * RATE_CAP


class SqliteNonceStore:
    """The accepted nonces in SQLite (see the module docstring).

    `add` and `live` run on the event loop (one connection, this process its only writer:
    the pid file locks data.dir). `start()` runs the upkeep (expiry, checkpoints) every
    `every` seconds; `stop()` ends it and closes the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_live: int,
        clock: Callable[[], float] = time.time,
        every: float = 1.0,
        purge_batch: int = 250,
        wal_limit: int = 16 * 1024 * 1024,
    ) -> None:
        if max_live <= 0 or purge_batch <= 0 or every <= 0:
            raise ValueError("max_live, purge_batch and every must be positive")
        self.path = Path(path)
        self.max_live = max_live
        self._clock = clock
        self._every = every
        self._purge_batch = purge_batch
        self._wal_limit = wal_limit
        self._conn = self._open()
        # Rows in the file, expired ones not yet purged included: what the cap counts.
        self.rows: int = self._conn.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]
        self.writes = 0  # commits so far (the upkeep skips the checkpoint of an idle file)
        self._checkpointed = 0
        self._warned: dict[str, float] = {}
        self._upkeep: asyncio.Task[None] | None = None

    # --- NonceStore ---

    def add(self, key: int, until: int, now: float) -> bool:
        """True: recorded (durable when this returns); False: live already, a replay."""
        if self.rows >= self.max_live:
            self._make_room(key, now)
        try:
            self._conn.execute("INSERT INTO nonces (key, until) VALUES (?, ?)", (key, until))
        except sqlite3.IntegrityError:
            return self._renew(key, until, now)
        except sqlite3.Error as e:
            raise self._failed(e) from None
        self.rows += 1
        self.writes += 1
        return True

    def live(self, now: float) -> int:
        row = self._conn.execute("SELECT COUNT(*) FROM nonces WHERE until >= ?", (now,))
        return int(row.fetchone()[0])

    # --- upkeep ---

    def purge(self, now: float, limit: int) -> int:
        """Deletes up to `limit` expired rows (the earliest first), one transaction."""
        cur = self._conn.execute(
            "DELETE FROM nonces WHERE key IN"
            " (SELECT key FROM nonces WHERE until < ? ORDER BY until LIMIT ?)",
            (now, limit),
        )
        removed = cur.rowcount
        self.rows -= removed
        self.writes += 1 if removed else 0
        return removed

    async def start(self) -> None:
        """Runs the upkeep every `every` seconds until `stop()`."""
        if self._upkeep is None:
            self._upkeep = asyncio.create_task(self._upkeep_loop(), name="nonce-store-upkeep")

    async def stop(self) -> None:
        """Ends the upkeep and closes the file (every accepted nonce is in it already)."""
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
            self._upkeep = None
        self.close()

    def close(self) -> None:
        """Closes the file (idempotent); `stop()` does it after the upkeep ended."""
        self._conn.close()  # the last connection: checkpoints the WAL into the file

    async def upkeep(self) -> None:
        """One round: the expired rows in batches (yielding to requests between them), then
        a checkpoint on a thread."""
        while True:
            if self.purge(self._clock(), self._purge_batch) < self._purge_batch:
                break
            await asyncio.sleep(0)  # the requests' turn between two batches
        if self.writes != self._checkpointed:
            self._checkpointed = self.writes
            await asyncio.to_thread(self._checkpoint)

    async def _upkeep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self.upkeep()
            except Exception as e:  # the next round tries again; requests go on meanwhile
                self._warn("upkeep", "nonce store %s: upkeep failed: %s", self.path, e)

    def _checkpoint(self) -> None:
        checkpoint(self.path)
        # Under a steady stream of requests a PASSIVE checkpoint never reaches the WAL's end
        # (see common.sqlite.checkpoint): rewind it once it has grown, while little is left.
        wal = self.path.with_name(self.path.name + "-wal")
        with contextlib.suppress(FileNotFoundError):
            if wal.stat().st_size > self._wal_limit:
                checkpoint(self.path, "RESTART")

    # --- the rare paths ---

    def _open(self) -> sqlite3.Connection:
        def connect() -> sqlite3.Connection:
            conn = open_db(
                self.path, "nonces", _MIGRATIONS, autocheckpoint=False, page_size=PAGE_SIZE
            )
            conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.execute(f"PRAGMA journal_size_limit={self._wal_limit}")
            return conn

        try:
            return connect()
        except sqlite3.DatabaseError as e:
            if getattr(e, "sqlite_errorname", "") not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise
            error = e
        # A broken file must not keep the server down; what it held is lost, and says so.
        log.warning(
            "nonce store %s is unreadable (%s): moved aside (.corrupt), starting empty; "
            "requests accepted before this start could be replayed within their window",
            self.path,
            error,
        )
        for suffix in ("", "-wal", "-shm"):
            part = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                part.replace(part.with_name(part.name + ".corrupt"))
        return connect()

    def _renew(self, key: int, until: int, now: float) -> bool:
        # The key is there: a replay, unless its row expired and was not purged yet.
        try:
            cur = self._conn.execute(
                "UPDATE nonces SET until = ? WHERE key = ? AND until < ?", (until, key, now)
            )
        except sqlite3.Error as e:
            raise self._failed(e) from None
        self.writes += cur.rowcount
        return cur.rowcount == 1

    def _make_room(self, key: int, now: float) -> None:
        """At the cap: purge what expired; if every row is live, refuse until the earliest
        expires rather than forget a live nonce (a replay hole). A replay is still a replay
        (the caller's insert finds it)."""
        try:
            while self.purge(now, self._purge_batch) == self._purge_batch:
                pass
            if self.rows < self.max_live:
                return
            replay = self._conn.execute(
                "SELECT 1 FROM nonces WHERE key = ? AND until >= ?", (key, now)
            ).fetchone()
            if replay:
                return
            earliest = self._conn.execute("SELECT MIN(until) FROM nonces").fetchone()[0]
        except sqlite3.Error as e:
            raise self._failed(e) from None
        self._warn("full", "nonce store full (%d live nonces); refusing requests", self.rows)
        raise RateLimited(earliest - now, "too many signed requests in the time window")

    def _failed(self, e: sqlite3.Error) -> RateLimited:
        self._warn("error", "nonce store %s can't record a nonce (%s); refusing", self.path, e)
        return RateLimited(RETRY_ON_ERROR, "the server can't record the request's nonce now")

    def _warn(self, what: str, message: str, *args: object) -> None:
        # Once a minute per kind: a refusal repeats for every request while it lasts.
        now = time.monotonic()
        if now - self._warned.get(what, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[what] = now
            log.warning(message, *args)
