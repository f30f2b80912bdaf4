"""Opening the service's SQLite files the one way: WAL, a busy timeout, versioned schemas.

Each store (the join map, the outbox, ...) names itself and lists its migrations, oldest
first; `open_db` applies the ones a file has not seen yet, each in its own transaction, and
records them in the `migrations` table, so a file written by an older release is upgraded in
place and several stores may share one file without their version numbers colliding.

Writes go through `write(conn)`: `BEGIN IMMEDIATE` takes the write lock at the start, so two
writers never deadlock upgrading a read lock, and the busy timeout makes a second process
(a tool, a crashed server's successor) wait instead of failing at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_MS = 5000


def open_db(
    path: str | Path,
    component: str,
    migrations: Sequence[str],
    *,
    synchronous: str = "NORMAL",
    autocheckpoint: bool = True,
) -> sqlite3.Connection:
    """Opens `path` (creating its folder) and brings `component`'s schema up to date.

    The connection is in autocommit mode (`isolation_level=None`): transactions are only the
    explicit ones of `write()`, never ones the sqlite3 module opens behind our back.

    `autocheckpoint=False` leaves WAL checkpoints (the one step that fsyncs under
    synchronous=NORMAL, milliseconds on a busy disk) to `checkpoint()` on another thread, so
    a connection used on the event loop never waits for the disk.
    """
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous={synchronous!r}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if not autocheckpoint:
        conn.execute("PRAGMA wal_autocheckpoint=0")
    _migrate(conn, component, migrations)
    return conn


def checkpoint(path: str | Path, mode: str = "PASSIVE") -> tuple[int, int, int]:
    """A WAL checkpoint through a connection of its own (blocking: call it in a thread).
    Returns SQLite's (busy, wal pages, pages checkpointed).

    PASSIVE never blocks a writer, but under a steady stream of commits it never catches up
    with the WAL's end, so the WAL is never rewound and grows; RESTART blocks writers while
    it copies what is left and makes the next writer start the WAL over (run it right after
    a PASSIVE one, when little is left)."""
    if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        raise ValueError(f"mode={mode!r}")
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        busy, log_pages, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(busy), int(log_pages), int(done)
    finally:
        conn.close()


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE … COMMIT, ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection, component: str) -> int:
    row = conn.execute(
        "SELECT MAX(version) FROM migrations WHERE component = ?", (component,)
    ).fetchone()
    return int(row[0] or 0)


def _migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[str]) -> None:
    with write(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
            " PRIMARY KEY (component, version))"
        )
    current = schema_version(conn, component)
    if current > len(migrations):
        raise RuntimeError(
            f"{component}: the file's schema is version {current}, newer than this code's "
            f"{len(migrations)}; refusing to touch it"
        )
    for version, script in enumerate(migrations[current:], start=current + 1):
        with write(conn):
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO migrations (component, version, applied_at) VALUES (?, ?, ?)",
                (component, version, time.time()),
            )


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction first; our migrations are plain DDL
    # without semicolons inside literals, so splitting on ';' is enough.
    return [s.strip() for s in script.split(";") if s.strip()]
