"""Fixtures of the account tests (TeleClient and its parts): a small fake Telegram world,
an injected clock, and started TeleClients on real session files in tmp_path.

A test module that needs another world (tests/model/test_pool.py) defines its own `world`,
which takes precedence over this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from model.teleclient import TeleClient
from tests.model.faketelethon import (
    GROUP,
    ME,
    NEWS,
    SECRET,
    TALK,
    FakeChat,
    FakeClock,
    FakeTelegram,
    fake_account,
)


@pytest.fixture
def world() -> FakeTelegram:
    """A public broadcast channel, a public megagroup, a basic group, a private channel."""
    w = FakeTelegram()
    w.add_chat(FakeChat(NEWS, "News daily", "news", "broadcast", [ME], list(range(1, 31))))
    w.add_chat(FakeChat(TALK, "News talk", "talk", "megagroup", [ME, *range(300, 312)], [1, 2]))
    w.add_chat(FakeChat(GROUP, "Small group", None, "group", [ME, 301, 302], [5, 6, 7]))
    w.add_chat(FakeChat(SECRET, "Secret", "secret", "broadcast", [], [1]))
    return w


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make(
    world: FakeTelegram, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    """`await make(name="acc", user_id=ME, **options)`: a started TeleClient on `world`,
    stopped after the test."""
    started: list[TeleClient] = []

    async def make(name: str = "acc", user_id: int = ME, **options: Any) -> TeleClient:
        options.setdefault("clock", clock)
        tc = fake_account(world, tmp_path, name, user_id, **options)
        await tc.start()
        started.append(tc)
        return tc

    yield make
    for tc in started:
        await tc.stop()
