"""The SQLite outbox: events waiting for the broker's confirm, in the order written.

The publisher (service/publisher.py) writes each event here before it is sent and deletes
it once the broker confirmed it; what is here at a stop goes out after the next start.
Durability (WAL, synchronous=NORMAL) and where SQLite runs: see service/publisher.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.sqlite import checkpoint, open_db, wal_bytes, write

# Past this size the WAL is checkpointed with TRUNCATE (see Outbox.checkpoint).
WAL_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event in the outbox: `seq` orders them (and names the row to delete)."""

    seq: int
    routing_key: str
    message_id: str
    body: bytes


_MIGRATIONS = (
    # Lean on purpose: each publish commits its own row (a sequential producer can't be
    # batched), and with WAL a commit writes every page it touched. AUTOINCREMENT (its
    # sqlite_sequence page) and a UNIQUE index on message_id would write ~2.4x the bytes per
    # event (measured: 16.8 KB vs 6.9 KB of WAL per 1 KB event). Consumers drop duplicates by
    # message_id anyway (at-least-once), and seq is handed out by the one writer, growing.
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        routing_key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL
    )
    """,
)


class Outbox:
    """The SQLite outbox: events waiting for the broker's confirm, in the order written.

    One writer (this object, on the event loop): `seq` comes from an in-memory counter that
    starts past the file's highest seq and only grows, so the drain's "everything after seq N"
    cursor never skips a row, even after the table was emptied.
    """

    def __init__(
        self,
        db_path: str | Path,
        max_events: int,
        *,
        synchronous: str = "NORMAL",
        wal_limit: int = WAL_LIMIT,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be positive")
        self.max_events = max_events
        self.wal_limit = wal_limit
        self.truncations = 0  # TRUNCATE checkpoints so far (the WAL passed wal_limit)
        self.path = Path(db_path)
        # Checkpoints happen in checkpoint(), on a thread: see common/sqlite.py.
        self._conn: sqlite3.Connection = open_db(
            db_path, "outbox", _MIGRATIONS, synchronous=synchronous, autocheckpoint=False
        )
        count, last = self._conn.execute("SELECT COUNT(*), MAX(seq) FROM outbox").fetchone()
        self.size: int = count
        self.writes = 0  # transactions so far (the checkpointer skips an idle outbox)
        self._last_seq: int = last or 0

    def append(self, rows: Sequence[tuple[str, str, bytes]]) -> list[OutboxRow]:
        """Writes (routing_key, message_id, body) rows in one transaction, in order; returns
        them with their seq."""
        now = time.time()
        first = self._last_seq + 1
        params = [(first + i, rk, mid, body, now) for i, (rk, mid, body) in enumerate(rows)]
        insert = (
            "INSERT INTO outbox (seq, routing_key, message_id, body, created_at)"
            " VALUES (?, ?, ?, ?, ?)"
        )
        if len(params) == 1:
            self._conn.execute(insert, params[0])  # one statement is its own transaction
        else:
            with write(self._conn) as c:
                c.executemany(insert, params)
        self._last_seq += len(params)
        self.size += len(params)
        self.writes += 1
        return [OutboxRow(seq, rk, mid, body) for seq, rk, mid, body, _ in params]

    @property
    def last_seq(self) -> int:
        """The highest seq ever written through this object (or found in the file)."""
        return self._last_seq

    def read(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows with seq > after_seq, oldest first."""
        rows = self._conn.execute(
            "SELECT seq, routing_key, message_id, body FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def delete(self, seqs: Iterable[int]) -> int:
        """Removes confirmed rows; returns how many were there."""
        params = [(s,) for s in seqs]
        if not params:
            return 0
        with write(self._conn) as c:
            before = c.total_changes
            c.executemany("DELETE FROM outbox WHERE seq = ?", params)
            removed = c.total_changes - before
        self.size -= removed
        self.writes += 1
        return removed

    def checkpoint(self) -> tuple[int, int, int]:
        """Moves the WAL into the database file (blocking, fsyncs: call it in a thread).
        Returns SQLite's (busy, WAL pages, pages checkpointed).

        PASSIVE first: it never blocks the loop's writes, and does the copying and the
        fsync. But under a steady stream of commits it never ends with every frame copied,
        so the WAL never rewinds and would grow without bound (measured: 618 MB after 60 s
        at 1,000 events/s). So when the WAL file is past `wal_limit`, a TRUNCATE follows at
        once: it holds the writers off only while it copies the few frames written since
        the PASSIVE one and truncates the file (the loop's write waits that long, in its
        busy handler)."""
        result = checkpoint(self.path)
        if wal_bytes(self.path) > self.wal_limit:
            result = checkpoint(self.path, "TRUNCATE")
            self.truncations += 1
        return result

    @property
    def wal_bytes(self) -> int:
        """The size of the outbox's WAL file now."""
        return wal_bytes(self.path)

    def close(self) -> None:
        self._conn.close()  # the last connection to close checkpoints the WAL
