"""GET /api/v1/accounts shows each account's username resolutions left (this minute, today),
end to end: the real HTTP API on the DC emulator (tests/fixtures/api_server.py), the pool on
a FakeClock, so the refill is a clock advance, not a sleep."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fixtures.api_server import API_CIPHERS, ApiServer, demo_dispatcher
from tests.model.faketelethon import FakeClock

PER_MINUTE = 5  # one back every 12 s
PER_DAY = 200  # one back every 432 s


@pytest.fixture
def fakedc_dispatcher() -> Any:
    return demo_dispatcher()


@pytest.mark.timeout(120)
async def test_resolutions_left_drop_per_resolution_and_come_back_with_the_refill(
    fake_telegram: FakeTelegram, telegram_session: Callable[..., Path], tmp_path: Path
) -> None:
    from telethon import TelegramClient

    TelegramClient._config = None  # an earlier test's emulator (see the api_server fixture)
    rpc = fake_telegram.dispatcher
    sessions = telegram_session(dw.ACCOUNT_A, name="acc_a").parent
    data = tmp_path / "data"
    data.mkdir()
    clock = FakeClock(1_700_000_000.0)
    options = {"clock": clock, "resolve_per_minute": PER_MINUTE, "resolve_per_day": PER_DAY}
    server = ApiServer(fake_telegram, sessions, data, API_CIPHERS[0], pool_options=options)

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
        assert rpc.count("contacts.resolveUsername", dw.ACCOUNT_A) == 3
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
        await server.stop()
