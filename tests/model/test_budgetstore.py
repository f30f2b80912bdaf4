"""The resolution budget (model/budgetstore.py): `ResolveBudget`'s two token buckets, its
store on real SQLite files in tmp_path, and `ResolveBudget` reading it back: what was spent survives a new store on the same file, the
wall-clock time between refills it, and an unreadable file starts every account EMPTY.

One FakeClock serves as both the buckets' monotonic clock and the store's wall clock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model.budgetstore import UNKNOWN, ResolveBudget, ResolveBudgetStore, SpentBudget, TokenBucket
from tests.model.faketelethon import FakeClock

PER_DAY = 4  # one token every 21600 s
REFILL = 86400 / PER_DAY


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def budget(store: ResolveBudgetStore, clock: FakeClock, account: str = "acc1") -> ResolveBudget:
    return ResolveBudget(per_minute=10, per_day=PER_DAY, clock=clock, store=store, account=account)


def test_budget_refills_per_minute_and_per_day() -> None:
    clock = FakeClock()
    budget = ResolveBudget(per_minute=2, per_day=3, clock=clock)
    budget.take()
    budget.take()
    assert budget.ready_in() == pytest.approx(30)  # 2 a minute: one token every 30 s
    clock.advance(30)
    assert budget.ready_in() == 0
    budget.take()  # the day's third
    clock.advance(60)
    assert budget.ready_in() == pytest.approx(86400 / 3 - 90, abs=1)


def test_resolutions_left_drop_by_one_and_come_back_with_each_refill() -> None:
    clock = FakeClock()
    budget = ResolveBudget(per_minute=5, per_day=200, clock=clock)
    assert budget.left() == (5, 200)
    budget.take()
    assert budget.left() == (4, 199)
    for _ in range(4):
        budget.take()
    assert budget.left() == (0, 195)
    budget.take()  # in debt (a caller that did not ask first): still 0, not below
    assert budget.left() == (0, 194)
    clock.advance(12)  # 5 a minute: one every 12 s, but the debt first
    assert budget.left() == (0, 194)
    clock.advance(12)
    assert budget.left() == (1, 194)
    clock.advance(48)
    assert budget.left() == (5, 194)
    clock.advance(86400 / 200)  # one of the day's back
    assert budget.left() == (5, 195)


def test_the_minute_left_never_exceeds_the_day_left() -> None:
    budget = ResolveBudget(per_minute=5, per_day=2, clock=FakeClock())
    assert budget.left() == (2, 2)
    budget.take()
    budget.take()
    assert budget.left() == (0, 0)


def test_a_bucket_restored_from_a_bigger_spend_is_empty_not_in_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, 60, clock)
    assert (bucket.spent(), bucket.ready_in()) == (0, 0)
    bucket.restore(spent=10, elapsed=0)  # spent under a higher capacity
    assert bucket.spent() == 4 and bucket.ready_in() == pytest.approx(15)
    bucket.restore(spent=2, elapsed=15)  # two missing 15 s ago: one came back since
    assert bucket.spent() == pytest.approx(1) and bucket.ready_in() == 0


def test_saved_rows_survive_a_new_store(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "data" / "resolve_budget.sqlite3"
    store = ResolveBudgetStore(path, clock=clock)
    assert store.load("acc1") is None  # never spent: a full budget
    store.save("acc1", SpentBudget(2.0, 3.0, None))  # stamped with the store's clock
    store.save("acc1", SpentBudget(1.0, 4.0, None))  # an upsert, not a second row
    store.close()
    again = ResolveBudgetStore(path, clock=clock)
    assert not again.lost
    assert again.load("acc1") == SpentBudget(1.0, 4.0, clock.now)
    assert again.load("acc2") is None
    again.close()


def test_the_day_spent_survives_a_restart_and_refills_on_the_wall_clock(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "resolve_budget.sqlite3"
    store = ResolveBudgetStore(path, clock=clock)
    first = budget(store, clock)
    for _ in range(PER_DAY):
        assert first.ready_in() == 0
        first.take()
        clock.advance(60)  # past the minute bucket: only the day's is spent
    store.close()

    store = ResolveBudgetStore(path, clock=clock)  # a new process on the same file
    again = budget(store, clock)
    assert again.ready_in() == pytest.approx(REFILL - 4 * 60)  # not refilled by the restart
    assert budget(store, clock, "acc2").ready_in() == 0  # another account: its own row
    clock.advance(REFILL)  # time spent down counts too
    store.close()
    store = ResolveBudgetStore(path, clock=clock)
    assert budget(store, clock).ready_in() == 0
    store.close()


def test_a_minute_burst_survives_a_restart_too(tmp_path: Path, clock: FakeClock) -> None:
    store = ResolveBudgetStore(tmp_path / "b.sqlite3", clock=clock)
    b = ResolveBudget(per_minute=2, per_day=100, clock=clock, store=store, account="acc1")
    b.take()
    b.take()
    store.close()
    store = ResolveBudgetStore(tmp_path / "b.sqlite3", clock=clock)
    b = ResolveBudget(per_minute=2, per_day=100, clock=clock, store=store, account="acc1")
    assert b.ready_in() == pytest.approx(30)
    store.close()


def test_a_changed_cap_applies_to_what_was_spent(tmp_path: Path, clock: FakeClock) -> None:
    store = ResolveBudgetStore(tmp_path / "b.sqlite3", clock=clock)
    store.save("acc1", SpentBudget(0.0, 4.0, None))
    raised = ResolveBudget(per_minute=10, per_day=8, clock=clock, store=store, account="acc1")
    assert raised.ready_in() == 0  # 8 a day, 4 spent: 4 left
    lowered = ResolveBudget(per_minute=10, per_day=2, clock=clock, store=store, account="acc1")
    assert lowered.ready_in() == pytest.approx(86400 / 2)  # empty, not in debt
    store.close()


def test_a_corrupt_file_starts_every_account_empty_and_is_moved_aside(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "resolve_budget.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="model.budgetstore"):
        store = ResolveBudgetStore(path, clock=clock)
    assert store.lost
    assert "unreadable" in caplog.text and "spent" in caplog.text
    assert (tmp_path / "resolve_budget.sqlite3.corrupt").read_bytes().startswith(b"this is")
    assert store.load("acc1") is UNKNOWN
    assert budget(store, clock).ready_in() == pytest.approx(REFILL)  # empty, refilling
    store.close()

    # The empty start was written: the next start reads it back instead of starting full.
    clock.advance(100)
    store = ResolveBudgetStore(path, clock=clock)
    assert not store.lost
    assert budget(store, clock).ready_in() == pytest.approx(REFILL - 100)
    store.close()


def test_a_store_that_cannot_be_opened_never_raises(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "resolve_budget.sqlite3"
    path.mkdir()  # a folder where the file should be
    with caplog.at_level(logging.WARNING, logger="model.budgetstore"):
        store = ResolveBudgetStore(path, clock=clock)
    assert store.lost and "can't be opened" in caplog.text
    assert path.is_dir()  # not moved: only a corrupt file is
    b = budget(store, clock)
    assert b.ready_in() == pytest.approx(REFILL)
    clock.advance(REFILL)
    b.take()  # the write is skipped, the spend kept in memory
    assert b.ready_in() == pytest.approx(REFILL)
    store.close()
