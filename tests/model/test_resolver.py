"""model/resolver.py through a real TeleClient: an id is found in the session's cache only,
a username there first and by one paid resolution last, once per account however many ask
at once, and never again after a restart (the session file keeps it).

Telegram is `FakeTelegram` (tests/model/faketelethon.py); fixtures in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from common.errors import FloodWait, PeerNotFound, RateLimited, UnknownUsername
from common.utils import parse_peer
from tests.fixtures.wait import wait_for
from tests.model.faketelethon import (
    NEWS,
    TALK,
    FakeClient,
    FakeClock,
    FakeTelegram,
    channel_id,
)


async def test_an_id_is_looked_up_in_the_cache_only(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    with pytest.raises(PeerNotFound, match="@username"):
        await tc.get_entity(parse_peer(channel_id(NEWS)))
    assert world.count("GetChannels") == 0 and world.count("ResolveUsername") == 0

    by_name = await tc.get_entity(parse_peer("@news"))
    by_id = await tc.get_entity(parse_peer(channel_id(NEWS)))
    by_bare_id = await tc.get_entity(parse_peer(str(NEWS)))
    assert by_name.id == by_id.id == by_bare_id.id == NEWS
    assert world.count("ResolveUsername") == 1
    assert world.count("GetChannels") == 2


async def test_a_username_nobody_holds_is_unknown_username(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    with pytest.raises(UnknownUsername) as caught:  # a PeerNotFound the pool remembers
        await tc.get_entity(parse_peer("https://t.me/Nobody_here"))
    assert caught.value.username == "nobody_here"  # as parse_peer folds it: the cache key
    assert caught.value.peer == "https://t.me/Nobody_here"
    assert "USERNAME_NOT_OCCUPIED" in caught.value.message


async def test_a_cached_username_is_not_resolved_again_even_after_a_restart(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make("keeper")
    for _ in range(5):
        await tc.get_entity(parse_peer("https://t.me/News"))
    assert world.count("ResolveUsername") == 1
    assert tc.knows(parse_peer("@news"))
    await tc.stop()

    again = await make("keeper")
    assert again.knows(parse_peer("@news")) and again.knows(parse_peer(channel_id(NEWS)))
    entity, _ = await again.get_history(parse_peer("@news"), limit=1)
    assert entity.id == NEWS
    assert world.count("ResolveUsername") == 1


async def test_concurrent_callers_share_one_resolution(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    gate = asyncio.Event()
    assert isinstance(tc.client, FakeClient)
    tc.client.gate = gate
    calls = [asyncio.create_task(tc.get_entity(parse_peer("@talk"))) for _ in range(10)]
    await wait_for(lambda: tc.client.at_gate == 1, within=5, what="one resolution in flight")
    assert tc.knows(parse_peer("@talk"))  # resolving counts as knowing: the pool sends it here
    gate.set()
    entities = await asyncio.gather(*calls)
    assert {e.id for e in entities} == {TALK}
    assert world.count("ResolveUsername") == 1


async def test_a_cancelled_resolution_lets_its_waiters_try_again(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    gate = asyncio.Event()
    assert isinstance(tc.client, FakeClient)
    tc.client.gate = gate
    first = asyncio.create_task(tc.get_entity(parse_peer("@talk")))
    await wait_for(lambda: tc.client.at_gate == 1, within=5, what="the first's resolution")
    second = asyncio.create_task(tc.get_entity(parse_peer("@talk")))
    # One loop turn: a new task runs to its first await, here waiting on the first's
    # resolution (nothing outside shows that wait; it sends no request of its own).
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await wait_for(lambda: tc.client.at_gate == 1, within=5, what="the waiter's own try")
    assert not second.done()
    gate.set()
    assert (await second).id == TALK
    assert first.cancelled()


async def test_the_budget_stops_resolutions_not_cached_peers(
    world: FakeTelegram, make: Callable[..., Any], clock: FakeClock
) -> None:
    tc = await make(resolve_per_minute=1, resolve_per_day=100)
    await tc.get_entity(parse_peer("@news"))
    assert tc.ready_in(parse_peer("@talk")) == pytest.approx(60)
    assert tc.resolve_blocked_by_budget()
    with pytest.raises(RateLimited) as caught:
        await tc.get_entity(parse_peer("@talk"))
    assert caught.value.retry_after == 60
    assert (await tc.get_entity(parse_peer("@news"))).id == NEWS  # known: costs nothing
    clock.advance(60)
    assert (await tc.get_entity(parse_peer("@talk"))).id == TALK
    assert world.count("ResolveUsername") == 2


async def test_a_resolve_flood_wait_is_not_the_budget(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make(resolve_per_minute=5)
    world.flood[None, "ResolveUsername"] = 600
    with pytest.raises(FloodWait):
        await tc.get_entity(parse_peer("@talk"))
    assert tc.ready_in(parse_peer("@talk")) == pytest.approx(600)
    assert not tc.resolve_blocked_by_budget()  # the flood wait is what holds it back
