"""Fixtures of the protocol-layer tests: a two-DC FakeTelegram on the mini world."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from telethon import TelegramClient

from tests.emulator.mini_world import MiniWorld
from tests.fakedc.cluster import FakeTelegram

API_ID, API_HASH = 12345, "0123456789abcdef0123456789abcdef"


@pytest.fixture
def mini() -> MiniWorld:
    return MiniWorld()


@pytest.fixture
async def mini_tg(mini: MiniWorld) -> AsyncIterator[FakeTelegram]:
    tg = FakeTelegram(mini, dc_ids=(1, 2))
    TelegramClient._config = None  # Telethon caches the DC addresses on the class
    await tg.start()
    try:
        yield tg
    finally:
        await tg.stop()
        TelegramClient._config = None


@pytest.fixture
async def clients() -> AsyncIterator[list[TelegramClient]]:
    """Telethon clients a test made; disconnected after it, whatever it did."""
    made: list[TelegramClient] = []
    yield made
    for client in made:
        await client.disconnect()
