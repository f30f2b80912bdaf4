"""service/noncestore.py: the journal nonce store (check-and-record, expiry, the files,
restarts, a SIGKILL, torn and damaged records, a full disk, the cap). Through the real
server: tests/test_nonces_server.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
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
from service.noncestore import MAGIC, MAX_LIVE, RECORD, RETRY_ON_ERROR, JournalNonceStore
from tests.fixtures.server_config import ROOT
from tests.fixtures.wait import wait_for

NOW = 1_800_000_000.0  # a multiple of 300: the default window's files start here
W = 300


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nonces"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(folder: Path, clock: FakeClock) -> Iterator[JournalNonceStore]:
    s = JournalNonceStore(folder, window=W, max_live=1000, clock=clock)
    yield s
    s.close()


def journals(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix == ".journal"}


# --- check and record ------------------------------------------------------------------


def test_a_key_is_recorded_once_and_refused_while_live(store: JournalNonceStore) -> None:
    until = int(NOW) + 300
    assert store.add(42, until, NOW) is True
    assert store.add(42, until, NOW + 300) is False  # live up to and including `until`
    assert store.add(0, until, NOW) and store.add(2**60 - 1, until, NOW)
    assert store.add(2**64 - 1, until, NOW)  # any 64-bit key is kept (nonce_key's are < 2**60)
    assert len(store) == 4 and store.live(NOW) == 4
    assert store.live(NOW + 300.5) == 0


def test_an_expired_key_not_purged_yet_never_refuses(store: JournalNonceStore) -> None:
    assert store.add(7, int(NOW) + 10, NOW)
    assert store.add(8, int(NOW) + 500, NOW)
    assert store.add(7, int(NOW) + 20, NOW + 10.5)  # expired at NOW+10: recorded again
    assert len(store) == 2  # the expired one was forgotten first, not doubled
    assert store.add(7, int(NOW) + 30, NOW + 20) is False  # the new one is live
    assert store.add(8, int(NOW) + 30, NOW + 20) is False


def test_each_add_appends_one_record_to_its_windows_journal(
    store: JournalNonceStore, folder: Path
) -> None:
    assert store.add(1, int(NOW) + 299, NOW)  # epoch NOW // 300
    assert store.add(2, int(NOW) + 300, NOW)  # the next one
    assert store.add(3, int(NOW) + 301, NOW)
    assert store.add(1, int(NOW) + 299, NOW) is False  # a replay writes nothing
    first, second = f"{NOW:.0f}-{NOW + W:.0f}.journal", f"{NOW + W:.0f}-{NOW + 2 * W:.0f}.journal"
    assert journals(folder) == {first: 32, second: 48}
    data = (folder / second).read_bytes()
    assert data[:16] == MAGIC
    assert list(RECORD.iter_unpack(data[16:])) == [(2, int(NOW) + 300), (3, int(NOW) + 301)]
    assert (folder / first).stat().st_mode & 0o777 == 0o600


def test_a_replayed_key_after_a_restart_is_refused(folder: Path, clock: FakeClock) -> None:
    first = JournalNonceStore(folder, window=W, clock=clock)
    assert first.add(11, int(NOW) + 300, NOW)
    first.close()
    clock.now += 299
    again = JournalNonceStore(folder, window=W, clock=clock)
    try:
        assert again.add(11, int(NOW) + 600, clock.now) is False
        assert again.add(12, int(NOW) + 600, clock.now)
    finally:
        again.close()


class StoreMachine(RuleBasedStateMachine):
    """The store against a dict of key -> until: adds, time passing, purges, upkeep,
    restarts, a crash (the files reopened while the old store never closed), torn
    records."""

    keys = st.sampled_from([0, 1, 2, 2**60 - 1, 12345, 99, 7])

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="noncestore-")) / "nonces"
        self.now = NOW
        self.store = self._open()
        self.model: dict[int, int] = {}

    def _open(self) -> JournalNonceStore:
        return JournalNonceStore(self.folder, window=100, clock=lambda: self.now)

    @rule(key=keys, lifetime=st.integers(0, 300))
    def add(self, key: int, lifetime: int) -> None:
        until = int(self.now) + lifetime
        live = key in self.model and self.model[key] >= self.now
        assert self.store.add(key, until, self.now) is (not live)
        if not live:
            self.model[key] = until

    @rule(seconds=st.floats(0, 200))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(limit=st.integers(1, 5))
    def purge(self, limit: int) -> None:
        before = len(self.store)
        assert self.store.purge(self.now, limit) == before - len(self.store) <= limit

    @rule()
    def drop_expired(self) -> None:
        self.store.drop_expired(self.now)
        for name in journals(self.folder):
            assert int(name.split("-")[1].split(".")[0]) - 1 >= self.now  # none all expired

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = self._open()
        assert self.store.bad_records == 0

    @precondition(lambda self: self.model)
    @rule()
    def crash(self) -> None:
        # The process is gone without a close: a new store reads what the old had written.
        old = self.store
        self.store = self._open()
        old.close()

    @precondition(lambda self: bool(journals(self.folder)))
    @rule(torn=st.binary(min_size=1, max_size=15), data=st.data())
    def crash_mid_write(self, torn: bytes, data: st.DataObject) -> None:
        # A record cut short (a short write, a power cut): the next open drops it, loses
        # nothing acknowledged, and appends stay whole records.
        name = data.draw(st.sampled_from(sorted(journals(self.folder))))
        with (self.folder / name).open("ab") as f:
            f.write(torn)
        self.crash()
        assert all(size % 16 == 0 for size in journals(self.folder).values())

    @invariant()
    def same_live_set(self) -> None:
        live = sum(1 for until in self.model.values() if until >= self.now)
        assert self.store.live(self.now) == live
        assert len(self.store) >= live

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.folder.parent, ignore_errors=True)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_a_key_recorded_twice_keeps_its_latest_until(folder: Path, clock: FakeClock) -> None:
    # Only after the clock went back: a key is recorded again once it expired.
    store = JournalNonceStore(folder, window=W, clock=clock)
    assert store.add(5, int(NOW) + 10, NOW)
    assert store.add(5, int(NOW) + 400, NOW + 20)
    store.close()
    clock.now = NOW  # stepped back: both records look live
    again = JournalNonceStore(folder, window=W, clock=clock)
    try:
        assert again.live(NOW) == 1
        assert again.add(5, int(NOW) + 500, NOW + 100) is False  # the later until holds
    finally:
        again.close()


# --- the files -------------------------------------------------------------------------


def test_expired_journals_are_deleted_at_open_and_by_the_upkeep(
    folder: Path, clock: FakeClock
) -> None:
    store = JournalNonceStore(folder, window=W, clock=clock)
    assert store.add(1, int(NOW) + 10, NOW)  # file NOW..NOW+300
    assert store.add(2, int(NOW) + 310, NOW)  # file NOW+300..NOW+600
    clock.now = NOW + 299  # key 1 expired, but its file could hold a live NOW+299
    store.drop_expired(clock.now)
    assert len(journals(folder)) == 2
    clock.now = NOW + 299.5  # nothing in the first file can be live now
    store.drop_expired(clock.now)
    assert list(journals(folder)) == [f"{NOW + W:.0f}-{NOW + 2 * W:.0f}.journal"]
    store.close()
    clock.now = NOW + 600
    JournalNonceStore(folder, window=W, clock=clock).close()
    assert journals(folder) == {}


def test_an_empty_journal_is_deleted_and_foreign_files_left(
    folder: Path, clock: FakeClock
) -> None:
    folder.mkdir(parents=True)
    (folder / f"{NOW:.0f}-{NOW + W:.0f}.journal").write_bytes(MAGIC[:5])  # header torn
    (folder / "notes.txt").write_text("ops")
    store = JournalNonceStore(folder, window=W, clock=clock)
    store.close()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_torn_record_is_cut_and_appends_stay_whole(folder: Path, clock: FakeClock) -> None:
    store = JournalNonceStore(folder, window=W, clock=clock)
    for key in range(3):
        assert store.add(key, int(NOW) + 100, NOW)
    store.close()
    path = folder / f"{NOW:.0f}-{NOW + W:.0f}.journal"
    with path.open("ab") as f:
        f.write(RECORD.pack(3, int(NOW) + 100)[:9])  # cut short: never acknowledged
    again = JournalNonceStore(folder, window=W, clock=clock)
    try:
        assert again.live(NOW) == 3 and again.bad_records == 0
        assert path.stat().st_size == 16 + 3 * 16
        assert again.add(3, int(NOW) + 100, NOW)
        assert path.stat().st_size == 16 + 4 * 16
    finally:
        again.close()


def test_records_outside_their_files_range_are_skipped_and_counted(
    folder: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    folder.mkdir(parents=True)
    records = [(1, int(NOW) + 100), (0, 0), (2, int(NOW) + 400), (3, int(NOW) + 200)]
    (folder / f"{NOW:.0f}-{NOW + W:.0f}.journal").write_bytes(
        MAGIC + b"".join(RECORD.pack(*r) for r in records)
    )
    with caplog.at_level(logging.WARNING):
        store = JournalNonceStore(folder, window=W, clock=clock)
    try:
        assert store.bad_records == 2 and "2 records outside" in caplog.text
        assert store.live(NOW) == 2 and not store.add(1, int(NOW) + 100, NOW)
        assert store.add(2, int(NOW) + 100, NOW)
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["header", "directory", "range"])
def test_an_unreadable_journal_is_moved_aside(
    folder: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    folder.mkdir(parents=True)
    name = f"{NOW:.0f}-{NOW + W:.0f}.journal"
    if damage == "header":
        (folder / name).write_bytes(b"not a journal at all" * 10)
    elif damage == "directory":
        (folder / name).mkdir()  # read(2) fails: EISDIR
    else:
        name = f"{NOW + W:.0f}-{NOW:.0f}.journal"
        (folder / name).write_bytes(MAGIC)
    good = folder / f"{NOW + W:.0f}-{NOW + 2 * W:.0f}.journal"
    good.write_bytes(MAGIC + RECORD.pack(9, int(NOW) + 310))
    with caplog.at_level(logging.WARNING):
        store = JournalNonceStore(folder, window=W, clock=clock)
    try:
        assert "moved aside" in caplog.text
        assert (folder / (name + ".corrupt")).exists()
        assert store.add(9, int(NOW) + 310, NOW) is False  # the readable one was read
        assert store.add(1, int(NOW) + 100, NOW)
    finally:
        store.close()


def test_an_unreadable_folder_is_moved_aside(
    folder: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    folder.parent.mkdir(parents=True)
    folder.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        store = JournalNonceStore(folder, window=W, clock=clock)
    try:
        assert "moved aside" in caplog.text
        assert store.add(1, int(NOW) + 100, NOW) and folder.is_dir()
        [aside] = folder.parent.glob("nonces.corrupt-*")
        assert aside.read_text() == "a file where the folder should be"
    finally:
        store.close()


def test_a_changed_window_still_reads_the_old_journals(folder: Path, clock: FakeClock) -> None:
    first = JournalNonceStore(folder, window=W, clock=clock)
    assert first.add(1, int(NOW) + 250, NOW)
    first.close()
    again = JournalNonceStore(folder, window=600, clock=clock)
    try:
        assert again.add(1, int(NOW) + 650, NOW) is False
        assert again.add(2, int(NOW) + 250, NOW)  # a file of its own: NOW..NOW+600
        assert len(journals(folder)) == 2
        clock.now = NOW + 300
        again.drop_expired(clock.now)  # the old window's file expires on its own range
        assert list(journals(folder)) == [f"{NOW:.0f}-{NOW + 600:.0f}.journal"]
    finally:
        again.close()


# --- durability ------------------------------------------------------------------------

_CHILD = """
import sys
from service.noncestore import JournalNonceStore
store = JournalNonceStore(sys.argv[1], window=300, clock=lambda: 1_800_000_000.0)
for key in range(10**9):
    assert store.add(key, 1_800_000_000 + 100 + key % 400, 1_800_000_000.0)
    print(key, flush=True)  # the request runs only now: its nonce is recorded
"""


def test_every_acknowledged_key_survives_a_sigkill_mid_write(folder: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            acknowledged = -1
            while acknowledged < 5000:  # across two journals, writing at full speed
                acknowledged = int(child.stdout.readline())
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            acknowledged = max([acknowledged, *(int(line) for line in child.stdout)])
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    after = JournalNonceStore(folder, window=300, clock=lambda: NOW)
    try:
        assert after.bad_records == 0
        refused = [k for k in range(acknowledged + 1) if not after.add(k, int(NOW) + 100, NOW)]
        assert len(refused) == acknowledged + 1  # every acknowledged key is still there
    finally:
        after.close()


_FSIZE_CHILD = """
import resource, sys
from common.errors import RateLimited
from service.noncestore import JournalNonceStore
limit = 16 + 100 * 16 + 7  # the header, 100 records, then room for 7 bytes of the 101st
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
store = JournalNonceStore(sys.argv[1], window=300, clock=lambda: 1_800_000_000.0)
accepted = refused = 0
for key in range(200):
    try:
        store.add(key, 1_800_000_100, 1_800_000_000.0)
        accepted += 1
    except RateLimited as e:
        assert e.retry_after == 10.0
        refused += 1
print(accepted, refused)
"""


def test_a_file_size_limit_refuses_with_429_and_leaves_whole_records(folder: Path) -> None:
    # The kernel's own short write and then EFBIG (RLIMIT_FSIZE; Python ignores SIGXFSZ).
    out = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.split() == ["100", "100"]
    assert journals(folder) == {f"{NOW:.0f}-{NOW + W:.0f}.journal": 16 + 100 * 16}
    after = JournalNonceStore(folder, window=W, clock=lambda: NOW)
    try:
        assert after.live(NOW) == 100 and after.bad_records == 0
    finally:
        after.close()


# --- refusing: the last resort ---------------------------------------------------------


def test_a_full_disk_refuses_then_recovers(folder: Path, clock: FakeClock) -> None:
    full = False

    def write(fd: int, data: bytes) -> int:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    store = JournalNonceStore(folder, window=W, clock=clock, write=write)
    try:
        assert store.add(1, int(NOW) + 100, NOW)
        full = True
        with pytest.raises(RateLimited) as caught:
            store.add(2, int(NOW) + 100, NOW)
        assert caught.value.retry_after == RETRY_ON_ERROR
        with pytest.raises(RateLimited):  # a new journal can't be started either
            store.add(3, int(NOW) + 400, NOW)
        assert store.add(1, int(NOW) + 100, NOW) is False  # still refused as a replay
        full = False
        assert store.add(2, int(NOW) + 100, NOW) and store.add(3, int(NOW) + 400, NOW)
        assert len(store) == 3
    finally:
        store.close()
    again = JournalNonceStore(folder, window=W, clock=clock)
    try:
        assert again.live(NOW) == 3 and again.bad_records == 0
    finally:
        again.close()


def test_a_short_write_is_cut_back_to_whole_records(folder: Path, clock: FakeClock) -> None:
    short = False

    def write(fd: int, data: bytes) -> int:
        return os.write(fd, data[:5] if short else data)

    store = JournalNonceStore(folder, window=W, clock=clock, write=write)
    try:
        assert store.add(1, int(NOW) + 100, NOW)
        short = True
        with pytest.raises(RateLimited):
            store.add(2, int(NOW) + 100, NOW)
        short = False
        assert store.add(2, int(NOW) + 100, NOW)
    finally:
        store.close()
    assert list(journals(folder).values()) == [16 + 2 * 16]


def test_at_the_cap_it_refuses_until_the_earliest_expires(folder: Path) -> None:
    store = JournalNonceStore(folder, window=W, max_live=3, clock=lambda: NOW)
    try:
        assert store.add(1, int(NOW) + 300, NOW)
        assert store.add(2, int(NOW) + 310, NOW + 10)
        assert store.add(3, int(NOW) + 320, NOW + 20)
        with pytest.raises(RateLimited) as caught:
            store.add(4, int(NOW) + 330, NOW + 30)
        assert caught.value.retry_after == 270  # when key 1 expires
        assert store.add(1, int(NOW) + 330, NOW + 30) is False  # no live key is forgotten
        # Key 1 expired: the next add forgets it (no upkeep ran) and is recorded.
        assert store.add(4, int(NOW) + 600, NOW + 300.5)
        assert len(store) == 3
        assert store.add(2, int(NOW) + 600, NOW + 300.5) is False
    finally:
        store.close()


def test_the_cap_is_far_above_the_peak_window() -> None:
    assert MAX_LIVE >= 2 * 3000 * 300


# --- upkeep ----------------------------------------------------------------------------


async def test_upkeep_purges_in_batches_deletes_and_syncs(folder: Path, clock: FakeClock) -> None:
    store = JournalNonceStore(folder, window=W, clock=clock, purge_batch=100)
    try:
        for key in range(2500):
            assert store.add(key, int(NOW) + (300 if key % 2 else 1), NOW)  # half: NOW+1
        clock.now = NOW + 1.5
        await store.upkeep()
        assert len(store) == store.live(clock.now) == 1250
        assert store._synced == store.writes == 2500
        clock.now = NOW + 300
        await store.upkeep()
        assert len(journals(folder)) == 1  # the first window's file went
    finally:
        store.close()


async def test_the_upkeep_task_runs_until_stop(folder: Path, clock: FakeClock) -> None:
    store = JournalNonceStore(folder, window=W, max_live=100, clock=clock, every=0.01)
    await store.start()
    assert store.add(1, int(NOW) + 1, NOW) and store.add(2, int(NOW) + 400, NOW)
    clock.now = NOW + 300
    try:
        await wait_for(
            lambda: len(store) == 1 and len(journals(folder)) == 1,
            within=10,
            what="the upkeep purged and deleted",
        )
    finally:
        await asyncio.wait_for(store.stop(), 10)
    assert store._upkeep is None and all(j.fd < 0 for j in store._files.values())
