"""The resolution budget end to end: the real HTTP API on the DC emulator
(tests/fixtures/api_server.py), one account. Its budget survives a restart (its per-day
budget spent, then a new pool, budget store and HTTP server on the same data dir, as a new
process would build them), and GET /api/v1/accounts shows what is left of it.

The emulator counts every contacts.resolveUsername it serves, so "refused" means none
reached it. One FakeClock is the accounts' monotonic clock and the store's wall clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.budgetstore import ResolveBudgetStore
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fixtures.api_server import API_CIPHERS, ApiServer, demo_dispatcher
from tests.model.faketelethon import FakeClock

RESOLVE = "contacts.resolveUsername"
PER_DAY = 2
REFILL = 86400 / PER_DAY  # one token back every 12 hours


@pytest.fixture
def fakedc_dispatcher() -> Any:
    return demo_dispatcher()


def _one_account_server(
    fake_telegram: FakeTelegram,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    clock: FakeClock,
    per_day: int,
) -> ApiServer:
    """The API server (not started) on ACCOUNT_A alone, its budget on `clock`: 5 a minute,
    `per_day` a day."""
    from telethon import TelegramClient

    TelegramClient._config = None  # an earlier test's emulator (see the api_server fixture)
    fake_telegram.dispatcher.set_pusher(fake_telegram.push)
    sessions = telegram_session(dw.ACCOUNT_A, name="acc_a").parent
    data = tmp_path / "data"
    data.mkdir()
    options = {"clock": clock, "resolve_per_minute": 5, "resolve_per_day": per_day}
    return ApiServer(fake_telegram, sessions, data, API_CIPHERS[0], pool_options=options)


@pytest.mark.timeout(120)
async def test_a_spent_day_stays_spent_across_a_restart(
    fake_telegram: FakeTelegram, telegram_session: Callable[..., Path], tmp_path: Path
) -> None:
    clock = FakeClock(1_700_000_000.0)
    server = _one_account_server(fake_telegram, telegram_session, tmp_path, clock, PER_DAY)
    rpc, data = fake_telegram.dispatcher, server.data_dir
    stores: list[ResolveBudgetStore] = []

    async def start() -> None:
        # What start.py's _start_pool does: a store on data.dir, given to every account.
        stores.append(ResolveBudgetStore(data / "resolve_budget.sqlite3", clock=clock))
        server.pool_options["resolve_store"] = stores[-1]
        await server.start()

    async def peer(name: str) -> Any:
        return await server.get(f"/api/v1/peer?peer=@{name}")

    def resolutions() -> int:
        return int(rpc.count(RESOLVE, dw.ACCOUNT_A))

    await start()
    try:
        for name in ("member_000", "member_001"):
            answer = await peer(name)
            assert answer.ok and answer.data["username"] == name, answer
        assert resolutions() == PER_DAY
        assert (await peer("member_002")).code == "RATE_LIMITED"  # spent, before a restart

        await server.stop()
        stores[-1].close()
        await start()  # a new process on the same data dir and session files

        answer = await peer("member_002")
        assert (answer.status, answer.code) == (429, "RATE_LIMITED"), answer
        assert answer.error is not None
        assert REFILL - 60 < answer.error["retry_after"] <= REFILL  # not a fresh day
        assert resolutions() == PER_DAY  # nothing reached the emulator
        answer = await peer("member_000")  # known peers still cost nothing
        assert answer.ok and resolutions() == PER_DAY

        clock.advance(REFILL)  # one token back
        answer = await peer("member_002")
        assert answer.ok and answer.data["username"] == "member_002", answer
        assert resolutions() == PER_DAY + 1
        assert (await peer("member_003")).code == "RATE_LIMITED"  # and only one
        assert resolutions() == PER_DAY + 1
    finally:
        await server.close()
        for store in stores:
            store.close()


@pytest.mark.timeout(120)
async def test_resolutions_left_drop_per_resolution_and_come_back_with_the_refill(
    fake_telegram: FakeTelegram, telegram_session: Callable[..., Path], tmp_path: Path
) -> None:
    """5 a minute (one back every 12 s), 200 a day (one back every 432 s)."""
    clock = FakeClock(1_700_000_000.0)
    server = _one_account_server(fake_telegram, telegram_session, tmp_path, clock, 200)

    async def left() -> dict[str, int]:
        answer = await server.get("/api/v1/accounts")
        assert answer.ok, answer
        (account,) = answer.data["accounts"]
        return dict(account["resolutions_left"])

    await server.start()
    try:
        assert await left() == {"minute": 5, "day": 200}
        for n, name in enumerate(("member_000", "member_001", "member_002"), start=1):
            assert (await server.get(f"/api/v1/peer?peer=@{name}")).ok
            assert await left() == {"minute": 5 - n, "day": 200 - n}
        assert fake_telegram.dispatcher.count(RESOLVE, dw.ACCOUNT_A) == 3
        assert (await server.get("/api/v1/peer?peer=@member_000")).ok  # known: free
        assert await left() == {"minute": 2, "day": 197}
        clock.advance(12)
        assert await left() == {"minute": 3, "day": 197}
        clock.advance(24)
        assert await left() == {"minute": 5, "day": 197}
        clock.advance(60)  # full: no more than the cap
        assert await left() == {"minute": 5, "day": 197}
        clock.advance(3 * 432 - 96)
        assert await left() == {"minute": 5, "day": 200}
    finally:
        await server.close()
