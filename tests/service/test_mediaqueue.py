"""service/mediaqueue.py: the flow control: spool back-pressure, per-account concurrency and
round robin, the accounts' pending_downloads, a flood-waited account paused."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.errors import FloodWait
from service.mediaqueue import AccountQueue, Backoff
from service.storage import LocalStorage
from tests.fixtures.wait import wait_for
from tests.service.media_rig import (
    PART,
    GatedStorage,
    Rig,
    content,
    make_media,
    running_rig,
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as r:
        yield r


async def test_spool_back_pressure(rig: Rig) -> None:
    storage = GatedStorage(LocalStorage(rig.local))
    storage.gate.clear()
    limit = int(PART * 4 * 2.5)  # room for two files of four parts
    p = rig.processor(storage, spool_max_bytes=limit, download_workers=4, per_account=4)
    peak = [0]

    def measure() -> None:
        on_disk = sum(f.stat().st_size for f in rig.spool.glob("*.part"))
        peak[0] = max(peak[0], on_disk, p.stats()["spool_bytes"])

    rig.downloads.on_each_part = measure
    await p.start()
    items = [make_media(i, PART * 4) for i in range(20, 26)]
    for m in items:
        p.submit(m)
    await wait_for(lambda: sum(p.get(m.key)["state"] == "uploading" for m in items) == 2)  # type: ignore[index]
    # The other four stay pending: the workers took them all off the queue and wait for
    # room (they hold them before asking the budget; none reached the downloader).
    await wait_for(lambda: p.stats()["downloads_queued"] == 0, what="all four taken up")
    states = Counter(p.get(m.key)["state"] for m in items)  # type: ignore[index]
    assert states == Counter({"uploading": 2, "pending": 4})
    assert len(rig.downloads.calls) == 2

    storage.gate.set()
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in items))  # type: ignore[index]
    assert peak[0] <= limit
    assert p.stats()["spool_bytes"] == 0


async def test_a_file_larger_than_the_spool_still_goes_alone(rig: Rig) -> None:
    p = rig.processor(spool_max_bytes=PART)
    await p.start()
    big = make_media(30, PART * 3)
    p.submit(big)
    await wait_for(lambda: p.get(big.key)["state"] == "stored")  # type: ignore[index]


async def test_per_account_concurrency_and_round_robin(rig: Rig) -> None:
    rig.downloads.part_delay = 0.01
    p = rig.processor(per_account=1, download_workers=4)
    await p.start()
    a = [make_media(i, PART * 3, account="acc1") for i in range(40, 44)]
    b = [make_media(i, PART * 3, account="acc2") for i in range(50, 52)]
    for m in a + b:
        p.submit(m)
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in a + b))  # type: ignore[index]
    assert rig.downloads.max_active == Counter({"acc1": 1, "acc2": 1})
    order = [c[1] for c in rig.downloads.calls]
    # acc2 is not stuck behind acc1's four. (Which of the two first starts is up to the
    # storage's answer to "is it there already?", asked by each before its download.)
    assert sorted(order[:2]) == ["acc1", "acc2"]
    assert rig.clients["acc1"].pending_downloads == rig.clients["acc2"].pending_downloads == 0


async def test_pending_downloads_count_queued_items(rig: Rig) -> None:
    rig.downloads.gate.clear()
    p = rig.processor(per_account=1)
    await p.start()
    for i in range(60, 63):
        p.submit(make_media(i, 1000))
    await wait_for(lambda: len(rig.downloads.calls) == 1)
    assert rig.clients["acc1"].pending_downloads == 3  # one downloading, two queued
    rig.downloads.gate.set()
    await wait_for(lambda: rig.clients["acc1"].pending_downloads == 0)


async def test_flood_wait_pauses_that_account_and_resumes(rig: Rig) -> None:
    m = make_media(70, PART * 4, account="acc1")
    other = make_media(71, PART * 2, account="acc2")
    rig.downloads.faults[m.key] = [FloodWait(1, account="acc1")]
    rig.downloads.fault_after_parts = 2
    p = rig.processor()
    await p.start()
    started = time.monotonic()
    p.submit(m)
    await wait_for(lambda: len(rig.downloads.calls) == 1 and p.get(m.key)["state"] == "pending")  # type: ignore[index]
    p.submit(other)  # acc2 is not paused
    await wait_for(lambda: p.get(other.key)["state"] == "stored")  # type: ignore[index]
    assert p.get(m.key)["state"] == "pending"  # type: ignore[index]
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]

    assert time.monotonic() - started >= 0.9
    calls = [c for c in rig.downloads.calls if c[0] == m.key]
    assert calls[1][2] == frozenset({0, 1})  # continued from the parts it had
    assert max(rig.downloads.fetched[(m.key, i)] for i in range(4)) == 1
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)


async def test_account_queue_round_robin_limit_and_pause() -> None:
    queue = AccountQueue(per_account=1)
    for key in ("a1", "a2"):
        queue.put("acc1", key)
    queue.put("acc2", "b1")
    queue.put("acc3", "c1")
    queue.pause("acc3", 60)
    assert [await queue.get(), await queue.get()] == [("acc1", "a1"), ("acc2", "b1")]
    assert len(queue) == 2  # a2 waits for acc1's slot, c1 for acc3's pause
    queue.put("acc1", "a0", front=True)
    queue.release("acc1")
    assert await queue.get() == ("acc1", "a0")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await queue.get()  # acc1 busy, acc3 paused: nothing may go


def test_backoff_is_capped_and_jittered_down_to_half() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
