"""The account's window of parts in flight and its pace (model/partwindow.py), on a fake
clock: a simulated path whose round trip is its latency plus the time parts queue."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from model.partwindow import BETA_RATE, HOLD_ROUNDS, DownloadPace, PartWindow, Slot
from tests.model.faketelethon import FakeClock

MIB = 1 << 20


async def one_round(window: PartWindow, clock: FakeClock, latency: float, service: float) -> int:
    """Sends as many parts as the window allows at once; each answers after the path's
    latency plus the time it waits behind the others (`service` seconds each). Returns the
    window's size during the round."""
    size = window.size
    slots: list[Slot] = []
    for _ in range(size):
        slot = await window.acquire()
        window.sent(slot)
        slots.append(slot)
    start = clock.now
    for i, slot in enumerate(slots):
        clock.now = start + latency + service * (i + 1)
        window.release(slot, MIB)
    return size


async def settle(window: PartWindow, clock: FakeClock, latency: float, service: float) -> int:
    """A path `latency` long to a server that takes `service` seconds a part, one at a
    time: parts are sent whenever the window has room, each answers when the server is
    done with it plus the way back. Returns the largest window of the last 200 parts."""
    server_free = clock.now
    flying: list[tuple[float, int, Slot]] = []  # (answered at, seq, slot)
    sizes: list[int] = []
    for seq in range(2000):
        while window.in_flight < window.size:
            slot = await window.acquire()
            window.sent(slot)
            start = max(clock.now + latency / 2, server_free)
            server_free = start + service
            heapq.heappush(flying, (server_free + latency / 2, seq, slot))
        at, _, slot = heapq.heappop(flying)
        clock.now = at
        window.release(slot, MIB)
        sizes.append(window.size)
    return max(sizes[-200:])


async def test_slow_start_doubles_from_the_first_round_to_the_ceiling() -> None:
    clock = FakeClock()
    window = PartWindow(32, clock=clock)
    sizes = [await one_round(window, clock, 0.05, 0.00001) for _ in range(4)]
    assert sizes == [8, 16, 32, 32]  # ×2 while throughput doubles too
    assert window.base == pytest.approx(0.05001)


async def test_at_zero_latency_parts_only_queue_so_the_window_stays_small() -> None:
    clock = FakeClock()
    window = PartWindow(64, clock=clock)
    # The server does a part in 3 ms, however many wait: no window buys more than 8 do
    # (16 is kept: the first round, timed from its first part, waited for the first answer).
    assert await settle(window, clock, latency=0.0, service=0.003) <= 20
    assert window.size in (8, 16)
    assert window.rate == pytest.approx(MIB / 0.003, rel=0.05)


async def test_at_50_ms_it_grows_until_the_path_is_full_not_beyond() -> None:
    clock = FakeClock()
    window = PartWindow(64, clock=clock)
    # 50 ms away, 3 ms of work per part: ~18 parts fill the path; 64 would only queue.
    size = await settle(window, clock, latency=0.05, service=0.003)
    assert 18 <= size <= 45


async def test_a_flood_wait_halves_it_and_it_grows_back_by_a_quarter_a_round() -> None:
    clock = FakeClock()
    window = PartWindow(32, clock=clock)
    for _ in range(6):
        await one_round(window, clock, 0.05, 0.00001)
    assert window.size == 32
    window.flood()
    assert window.size == 16 and window.floods == 1
    sizes = [await one_round(window, clock, 0.05, 0.00001) for _ in range(3)]
    assert sizes == [16, 20, 25]  # no slow start after a flood wait: +25 % while it pays


async def paced(window: PartWindow, clock: FakeClock, latency: float, gap: float) -> list[int]:
    """A path `latency` long whose parts leave no faster than one every `gap` seconds (a
    pace, a busy sender): the round trip stays the path's own while throughput is capped.
    Returns the window's size at each of 2,000 answers."""
    next_send = clock.now
    events: list[tuple[float, int, bool, Slot]] = []  # (at, seq, answered, slot)
    sizes: list[int] = []
    seq = 0
    while len(sizes) < 2000:
        while window.in_flight < window.size:
            slot = await window.acquire()
            next_send = max(next_send, clock.now)
            heapq.heappush(events, (next_send, seq := seq + 1, False, slot))
            next_send += gap
        at, _, answered, slot = heapq.heappop(events)
        clock.now = at
        if answered:
            window.release(slot, MIB)
            sizes.append(window.size)
        else:
            window.sent(slot)
            heapq.heappush(events, (at + latency, seq := seq + 1, True, slot))
    return sizes


async def test_a_window_that_buys_no_throughput_is_not_kept() -> None:
    # Issue 14's case: the round trip stayed the path's own while the window grew to its
    # ceiling and bought nothing. 5 parts fill this path; 64 would only wait to be sent.
    clock = FakeClock()
    window = PartWindow(64, clock=clock)
    sizes = await paced(window, clock, latency=0.05, gap=0.01)
    # The first round, timed from its first part, waited for the path to fill: the doubling
    # after it looked like a gain, the next one bought nothing and was undone.
    assert max(sizes) <= 32
    assert max(sizes[-1000:]) <= 20 and window.size == 16  # a trial of +25 % now and then
    assert window.base == pytest.approx(0.05)


async def test_rounds_that_never_fill_the_window_do_not_grow_it() -> None:
    clock = FakeClock()
    window = PartWindow(64, clock=clock)
    for _ in range(20):  # three small files at a time, 50 ms away
        slots = [await window.acquire() for _ in range(3)]
        for slot in slots:
            window.sent(slot)
        clock.advance(0.05)
        for slot in slots:
            window.release(slot, 100_000)
    assert window.size == 8


async def test_a_failed_trial_holds_before_the_next() -> None:
    clock = FakeClock()
    window = PartWindow(64, clock=clock)
    sizes = await paced(window, clock, latency=0.05, gap=0.01)
    trials = [i for i in range(1, len(sizes)) if sizes[i] > sizes[i - 1]]
    # After slow start, a trial every HOLD_ROUNDS + 2 rounds of 16 answers or so, not
    # every round.
    late = [i for i in trials if i > 500]
    assert len(late) >= 2 and min(b - a for a, b in itertools.pairwise(late)) >= HOLD_ROUNDS * 16


async def test_a_waiting_part_cancelled_leaves_no_place_taken() -> None:
    window = PartWindow(1, start=1)
    first = await window.acquire()
    waiting = asyncio.ensure_future(window.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    window.release(first, None)
    assert window.in_flight == 0
    again = await asyncio.wait_for(window.acquire(), 1)
    window.release(again, None)
    assert window.in_flight == 0


def test_the_pace_is_set_by_the_first_flood_wait_from_what_came() -> None:
    clock = FakeClock()
    pace = DownloadPace(clock)
    assert pace.rate is None
    pace.begin()
    for _ in range(30):  # 30 MiB in 1 s
        clock.advance(1 / 30)
        pace.received(MIB)
    pace.end()
    assert pace.flood(1)
    # What came ÷ (its time + the wait): ~30 MiB over ~2 s.
    assert pace.rate == pytest.approx(BETA_RATE * 30 * MIB / (29 / 30 + 1), rel=0.01)
    assert not pace.flood(1)  # the same wait, met by another part
    assert pace.floods == 1 and pace.waiting() == pytest.approx(1)


def test_the_next_flood_wait_measures_what_telegram_allowed_since_the_last() -> None:
    clock = FakeClock()
    pace = DownloadPace(clock)
    pace.begin()
    for _ in range(10):
        clock.advance(0.01)
        pace.received(MIB)
    pace.end()
    pace.flood(1)
    clock.advance(1)  # the wait
    pace.begin()
    for _ in range(40):  # 40 MiB in 2 s, then Telegram says wait again
        clock.advance(0.05)
        pace.received(MIB)
    pace.end()
    pace.flood(1)
    assert pace.rate == pytest.approx(BETA_RATE * 40 * MIB / 3)  # 40 MiB in the 3 s since
    assert pace.describe()["flood_waits"] == 2


def test_a_flood_wait_before_any_part_sets_no_pace() -> None:
    pace = DownloadPace(FakeClock())
    assert pace.flood(3) and pace.rate is None and pace.waiting() == 3


def photos_now_and_then(pace: DownloadPace, clock: FakeClock, n: int = 8) -> None:
    """A 50 KiB photo every 1.2 s, its one part 0.05 s in flight: an account mostly idle."""
    for _ in range(n):
        clock.advance(1.2)
        pace.begin()
        clock.advance(0.05)
        pace.received(50 * 1024)
        pace.end()


def test_a_flood_wait_after_idling_sets_no_pace() -> None:
    # The soak's case: small photos now and then, then a FLOOD_WAIT that is no byte budget.
    clock = FakeClock()
    pace = DownloadPace(clock)
    photos_now_and_then(pace, clock)
    assert pace.flood(20) and pace.rate is None
    clock.advance(60)  # the next fault, a minute later, after more of the same
    photos_now_and_then(pace, clock)
    assert pace.flood(20) and pace.rate is None


def test_time_pushing_is_counted_across_overlapping_parts() -> None:
    clock = FakeClock()
    pace = DownloadPace(clock)
    pace.begin()
    clock.advance(1)
    pace.begin()  # a second part while the first is in flight
    clock.advance(1)
    pace.end()
    assert pace.pushed() == pytest.approx(2)
    clock.advance(1)
    pace.end()
    clock.advance(5)  # idle
    assert pace.pushed() == pytest.approx(3)


async def test_a_turn_counts_as_pushing_and_waits_at_the_pace() -> None:
    pace = DownloadPace()
    pace.rate = 1024 * 1024.0
    async with pace.turn(1024):
        assert pace.pushed() >= 0
    async with pace.turn(1024):  # 1 KiB at 1 MiB/s: held back ~1 ms at most
        pass
    pushed = pace.pushed()
    await asyncio.sleep(0.01)
    assert pace.pushed() == pushed  # no part active: the time idle is not counted
