"""common/sqlite.py's checkpoint modes: PASSIVE alone lets the WAL of a file committed to
without a pause grow; a RESTART after it (once the WAL is over a limit) rewinds it."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from common.sqlite import checkpoint, open_db

_MIGRATIONS = ("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",)
LIMIT = 256 * 1024


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    open_db(tmp_path / "a.sqlite3", "t", _MIGRATIONS).close()
    with pytest.raises(ValueError):
        checkpoint(tmp_path / "a.sqlite3", "SOMETIMES")


def test_a_restart_checkpoint_rewinds_the_wal_under_steady_commits(tmp_path: Path) -> None:
    # The store commits on one thread without pausing, as an event loop under load does,
    # while a checkpointer thread runs every 20 ms: each PASSIVE checkpoint ends with new
    # frames behind it, so no writer finds the WAL fully copied and the WAL only grows (to
    # ~280 MB here with PASSIVE alone; service/outbox.py's grew ~17 MB/s at 3,000 events/s).
    # A RESTART after it, once the WAL is over LIMIT, makes the next commit start it over
    # (truncated to journal_size_limit).
    path = tmp_path / "a.sqlite3"
    conn = open_db(path, "t", _MIGRATIONS, autocheckpoint=False)
    conn.execute(f"PRAGMA journal_size_limit={LIMIT}")
    wal = path.with_name(path.name + "-wal")
    done = threading.Event()

    def checkpointer() -> None:
        while not done.wait(0.02):
            checkpoint(path)
            if wal.stat().st_size > LIMIT:
                checkpoint(path, "RESTART")

    thread = threading.Thread(target=checkpointer)
    thread.start()
    sizes = []
    try:
        for i in range(30_000):
            conn.execute("INSERT INTO t (id, body) VALUES (?, ?)", (i, b"x" * 400))
            if i % 2 == 0:
                conn.execute("DELETE FROM t WHERE id = ?", (i - 1,))
            if i % 10 == 0:
                sizes.append(wal.stat().st_size)
    finally:
        done.set()
        thread.join()
        conn.close()
    # With PASSIVE alone the WAL never rewinds; one rewind shows the RESTART works (a busy
    # CPU starves the checkpointer's thread: a run at load 5-9 once had fewer than the 3
    # asked for before).
    rewinds = sum(1 for a, b in itertools.pairwise(sizes) if a > 4 * LIMIT > b)
    assert rewinds >= 1, (rewinds, max(sizes))
