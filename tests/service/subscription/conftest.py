"""The subscription flow end to end: the DC emulator (three accounts, stock Telethon over
MTProto) pushes posts, edits, deletions and kicks; the Subscriber turns them into events;
the Publisher puts them on the real broker; a consumer in the test reads the queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from model.joinmap import JoinMap
from model.pool import TeleClients
from service.outbox import Outbox
from service.publisher import Publisher
from service.subscriber import Subscriber
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.rabbitmq import Rabbit
from tests.service.subscription.flow import ACCOUNTS, FakeMediaQueue, Flow, world_spec


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    return TelegramRpc(World.from_dict(world_spec()))


@pytest.fixture
def media_queue() -> FakeMediaQueue:
    return FakeMediaQueue()


@pytest.fixture
async def flow(
    fake_telegram: Any,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    rabbit: Rabbit,
    media_queue: FakeMediaQueue,
) -> AsyncIterator[Flow]:
    paths = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    pool = TeleClients.from_sessions_dir(
        paths[0].parent, FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0,
        request_timeout=10,
    )  # fmt: skip
    await pool.start()
    joinmap = JoinMap(tmp_path / "joinmap.db")
    outbox = Outbox(tmp_path / "outbox.db", max_events=100_000)
    publisher = Publisher(
        outbox, rabbit.url, rabbit.exchange, rabbit.queue, reconnect_max_delay=0.5
    )
    await publisher.start()
    subscriber = Subscriber(
        pool, joinmap, publisher, poll_interval=3600, check_interval=3600,
        media_queue=media_queue, takeover_pace=0.05,
    )  # fmt: skip
    await subscriber.start()
    flow = Flow(pool, joinmap, publisher, subscriber, fake_telegram.dispatcher)
    try:
        yield flow
    finally:
        # Bounded: a stop that hangs fails the test loudly instead of stalling the run.
        # flow.subscriber: the one a test put in the fixture's place, if it did.
        for stop in (flow.subscriber.stop(), pool.stop(), publisher.stop(grace=1)):
            await asyncio.wait_for(stop, 15)
        outbox.close()
        joinmap.close()
