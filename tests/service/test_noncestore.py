"""service/noncestore.py: the SQLite nonce store (check-and-record, expiry, restarts, a
SIGKILL, a full disk, the cap). Through the real server: tests/test_nonces_server.py."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.errors import RateLimited
from common.sqlite import schema_version
from service.noncestore import RETRY_ON_ERROR, SqliteNonceStore, cap_for_window
from tests.fixtures.server_config import ROOT
from tests.fixtures.wait import wait_for

NOW = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nonces.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteNonceStore]:
    s = SqliteNonceStore(path, max_live=1000)
    yield s
    s.close()


# --- check and record ------------------------------------------------------------------


def test_a_key_is_recorded_once_and_refused_while_live(store: SqliteNonceStore) -> None:
    until = int(NOW) + 300
    assert store.add(42, until, NOW) is True
    assert store.add(42, until, NOW + 300) is False  # live up to and including `until`
    assert store.add(-(2**63), until, NOW) and store.add(2**63 - 1, until, NOW)
    assert store.rows == 3 and store.live(NOW) == 3
    assert store.live(NOW + 300.5) == 0


def test_an_expired_row_not_purged_yet_never_refuses(store: SqliteNonceStore) -> None:
    assert store.add(7, int(NOW) + 10, NOW)
    assert store.add(7, int(NOW) + 20, NOW + 10.5)  # expired at NOW+10: recorded again
    assert store.rows == 1  # the row was renewed, not added
    assert store.add(7, int(NOW) + 30, NOW + 20) is False  # the renewed one is live


def test_the_schema_is_versioned_with_small_pages(store: SqliteNonceStore) -> None:
    assert schema_version(store._conn, "nonces") == 1
    assert store._conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


class StoreMachine(RuleBasedStateMachine):
    """The store against a dict of key -> until: adds, time passing, purges, restarts."""

    keys = st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 12345, 99, -7])

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="noncestore-")
        self.path = Path(self.folder) / "n.sqlite3"
        self.store = SqliteNonceStore(self.path, max_live=10**6)
        self.now = NOW
        self.model: dict[int, int] = {}

    @rule(key=keys, lifetime=st.integers(0, 600))
    def add(self, key: int, lifetime: int) -> None:
        until = int(self.now) + lifetime
        live = key in self.model and self.model[key] >= self.now
        assert self.store.add(key, until, self.now) is (not live)
        if not live:
            self.model[key] = until

    @rule(seconds=st.floats(0, 400))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(limit=st.integers(1, 5))
    def purge(self, limit: int) -> None:
        expired = {k for k, until in self.model.items() if until < self.now}
        assert self.store.purge(self.now, limit) == min(limit, len(expired))
        # Which of the expired ones went (the earliest; ties in any order): the store says.
        kept = {k for (k,) in self.store._conn.execute("SELECT key FROM nonces")}
        assert set(self.model) - kept <= expired
        self.model = {k: until for k, until in self.model.items() if k in kept}

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = SqliteNonceStore(self.path, max_live=10**6)

    @precondition(lambda self: self.model)
    @rule()
    def crash(self) -> None:
        # The connection is dropped without a close (no final checkpoint); a new one reads
        # what the first had committed, from the WAL.
        old = self.store
        self.store = SqliteNonceStore(self.path, max_live=10**6)
        old.close()

    @invariant()
    def same_live_set(self) -> None:
        live = sum(1 for until in self.model.values() if until >= self.now)
        assert self.store.live(self.now) == live
        assert self.store.rows == len(self.model)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


# --- durability ------------------------------------------------------------------------

_CHILD = """
import sys
from service.noncestore import SqliteNonceStore
store = SqliteNonceStore(sys.argv[1], max_live=10**6)
for key in range(10**9):
    assert store.add(key, 2_000_000_000, 1_800_000_000.0)
    print(key, flush=True)  # the request runs only now: its nonce is recorded
"""


def test_every_acknowledged_key_survives_a_sigkill(path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            acknowledged = -1
            while acknowledged < 2000:  # well past the first commits, writing at full speed
                acknowledged = int(child.stdout.readline())
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            acknowledged = max([acknowledged, *(int(line) for line in child.stdout)])
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    after = SqliteNonceStore(path, max_live=10**6)
    try:
        refused = [k for k in range(acknowledged + 1) if not after.add(k, 2_000_000_000, NOW)]
        assert len(refused) == acknowledged + 1  # every acknowledged key is still there
    finally:
        after.close()


def test_a_corrupt_file_is_moved_aside_and_a_fresh_one_used(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database" * 1000)
    with caplog.at_level(logging.WARNING):
        store = SqliteNonceStore(path, max_live=10)
    try:
        assert store.add(1, int(NOW) + 300, NOW)
        assert path.with_name(path.name + ".corrupt").exists()
        assert "moved aside" in caplog.text
    finally:
        store.close()


# --- refusing: the last resort ---------------------------------------------------------


def test_at_the_cap_it_refuses_until_the_earliest_expires(path: Path) -> None:
    store = SqliteNonceStore(path, max_live=3)
    try:
        assert store.add(1, int(NOW) + 300, NOW)
        assert store.add(2, int(NOW) + 310, NOW + 10)
        assert store.add(3, int(NOW) + 320, NOW + 20)
        with pytest.raises(RateLimited) as caught:
            store.add(4, int(NOW) + 330, NOW + 30)
        assert caught.value.retry_after == 270  # when key 1 expires
        assert store.add(1, int(NOW) + 330, NOW + 30) is False  # no live key is forgotten
        # Key 1 expired: the next add purges it (no upkeep ran) and is recorded.
        assert store.add(4, int(NOW) + 600, NOW + 300.5)
        assert store.rows == 3
        assert store.add(2, int(NOW) + 600, NOW + 300.5) is False
    finally:
        store.close()


def test_the_cap_is_far_above_the_peak_window() -> None:
    assert cap_for_window(300) == 3_000_000 >= 3 * 3000 * 300


def test_a_full_disk_refuses_then_recovers(store: SqliteNonceStore) -> None:
    # max_page_count stands for a full disk: SQLite answers SQLITE_FULL either way.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")
    accepted: list[int] = []
    with pytest.raises(RateLimited) as caught:
        for key in range(10_000):
            assert store.add(key, int(NOW) + 300, NOW)
            accepted.append(key)
    assert caught.value.retry_after == RETRY_ON_ERROR
    assert all(store.add(k, int(NOW) + 300, NOW) is False for k in accepted)  # still refused
    store._conn.execute(f"PRAGMA max_page_count={pages * 1000}")  # room again
    assert store.add(10_001, int(NOW) + 300, NOW)
    assert store.rows == len(accepted) + 1


# --- upkeep ----------------------------------------------------------------------------


async def test_upkeep_purges_in_batches_and_rewinds_the_wal(path: Path) -> None:
    clock = FakeClock()
    store = SqliteNonceStore(path, max_live=10**6, clock=clock, purge_batch=100, wal_limit=1)
    try:
        for key in range(2500):
            assert store.add(key, int(NOW) + (300 if key % 2 else 1), NOW)  # half: NOW+1
        clock.now = NOW + 1.5
        await store.upkeep()
        assert store.rows == store.live(clock.now) == 1250
        # The RESTART checkpoint (the WAL is over its 1-byte limit) made the next commit
        # start the WAL over, truncated to the limit.
        assert store.add(10**6, int(NOW) + 300, clock.now)
        assert path.with_name(path.name + "-wal").stat().st_size < 64 * 1024
    finally:
        store.close()


async def test_the_wal_stays_bounded_under_a_steady_stream_of_requests(path: Path) -> None:
    # Requests keep committing while the checkpoint thread runs: a PASSIVE checkpoint alone
    # never reaches the WAL's end then, and the WAL would grow by ~3 KB a request (90 MB
    # here); the RESTART once it is over wal_limit keeps it near the limit.
    clock = FakeClock()
    store = SqliteNonceStore(path, max_live=10**6, clock=clock, every=0.02, wal_limit=256 * 1024)
    wal = path.with_name(path.name + "-wal")
    largest = 0
    await store.start()
    try:
        for key in range(30_000):
            assert store.add(key, int(NOW) + 300, NOW)
            if key % 20 == 0:
                await asyncio.sleep(0)  # the upkeep's turn, as between two requests
                largest = max(largest, wal.stat().st_size)
    finally:
        await store.stop()
    assert largest < 16 * 1024 * 1024


async def test_the_upkeep_task_runs_until_stop(path: Path) -> None:
    clock = FakeClock()
    store = SqliteNonceStore(path, max_live=100, clock=clock, every=0.01)
    await store.start()
    assert store.add(1, int(NOW) + 1, NOW) and store.add(2, int(NOW) + 100, NOW)
    clock.now = NOW + 2
    try:
        await wait_for(lambda: store.rows == 1, within=10, what="the upkeep purged")
    finally:
        await store.stop()
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        store.live(NOW)


def test_the_rows_counter_is_read_back_at_start(path: Path) -> None:
    first = SqliteNonceStore(path, max_live=10)
    for key in range(5):
        first.add(key, int(NOW) + 300, NOW)
    first.close()
    again = SqliteNonceStore(path, max_live=10)
    try:
        assert again.rows == 5
    finally:
        again.close()
