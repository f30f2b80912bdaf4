"""The gap poll: what the pushes missed is read from Telegram and published once, a long
backlog in order, a caught-up chat at the cost of one request, a flood wait ending a round;
and the poll loop ends on stop() whatever it was doing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from common.utils import parse_peer
from model.joinmap import JoinMap
from model.pool import TeleClients
from service.subscriber import Subscriber
from tests.fixtures.rabbitmq import Rabbit
from tests.fixtures.wait import wait_for
from tests.service.subscription.flow import NEWS, NEWS_ID, TALK_ID, Flow, of, settle


async def test_stop_ends_the_poll_loop_when_a_wake_meets_the_cancel(tmp_path: Path) -> None:
    """A wake-up and stop()'s cancel in the same loop turn: the poll loop must end. (Python
    3.11's wait_for returned the wake-up's result and swallowed the cancel, bpo-42130: the
    loop went on and stop() never returned.)"""

    class Quiet:
        async def publish_event(self, event: Any) -> None:
            pass

    joinmap = JoinMap(tmp_path / "j.db")
    quiet: Any = Quiet()  # all the publisher the loop needs
    subscriber = Subscriber(
        TeleClients([]), joinmap, quiet, poll_interval=3600, check_interval=3600
    )
    await subscriber.start()
    # The first (empty) poll round is over: the loop waits.
    await wait_for(lambda: subscriber.poller.idle, within=5, what="the poll loop waiting")
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("subscriber-")]
    names = {"subscriber-poll", "subscriber-accounts", "subscriber-flush"}
    assert names <= {t.get_name() for t in tasks}
    subscriber.poll_soon()  # the wake-up completes the loop's wait on the next turn...
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(subscriber.stop())  # ...and the cancel lands in it
    done, _ = await asyncio.wait({stopping}, timeout=5)  # (wait: it doesn't cancel stop())
    assert stopping in done and all(t.done() for t in tasks)
    joinmap.close()


async def test_missed_pushes_are_found_by_the_poll_once(flow: Flow, rabbit: Rabbit) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    async with rabbit.consumer() as consumer:
        flow.rpc.drop_next_posts(NEWS, 3)
        lost = [await flow.rpc.post_message(NEWS, f"lost {i}") for i in range(3)]
        assert await flow.subscriber.poll_chat(NEWS_ID) == 3
        assert await flow.subscriber.poll_chat(NEWS_ID) == 0  # nothing twice
        assert flow.subscriber.poll_found == 3  # what /metrics and /status show
        # the next push follows a pts gap: Telethon may fetch the lost ones again too
        pushed = await flow.rpc.post_message(NEWS, "pushed")
        ids = [f"{NEWS_ID}:{p.id}:message.new" for p in [*lost, pushed]]
        await consumer.wait_for_ids(ids)
        assert await flow.subscriber.poll_chat(NEWS_ID) == 0
        await settle(flow)
    counts = consumer.counts()
    assert [counts[i] for i in ids] == [1, 1, 1, 1]
    assert [m.body["message"]["text"] for m in of(consumer, "message.new")] == [
        "lost 0", "lost 1", "lost 2", "pushed"
    ]  # fmt: skip
    assert flow.joinmap.last_message_id(NEWS_ID) == pushed.id


async def test_the_poll_walks_a_long_backlog_in_order(flow: Flow, rabbit: Rabbit) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    async with rabbit.consumer() as consumer:
        flow.rpc.drop_next_posts(NEWS, 250)
        posts = [await flow.rpc.post_message(NEWS, f"p{i}") for i in range(250)]
        flow.subscriber.poll_soon()  # what the interval or a reconnect does
        ids = [f"{NEWS_ID}:{p.id}:message.new" for p in posts]
        await consumer.wait_for_ids(ids)
        await settle(flow)
    assert [m.message_id for m in of(consumer, "message.new")] == ids


async def test_a_caught_up_poll_costs_one_request(flow: Flow) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    flow.rpc.reset_counts()
    assert await flow.subscriber.poll_chat(NEWS_ID) == 0
    assert flow.rpc.count("messages.getHistory") == 1


async def test_a_flood_wait_ends_the_poll_round(flow: Flow) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    await flow.subscriber.subscribe(parse_peer("@talk"))
    flow.rpc.flood_wait("messages.getHistory", 30, times=None)
    flow.rpc.reset_counts()
    await flow.subscriber.poller.poll_round([NEWS_ID, TALK_ID], pace=0)
    # NEWS met the wait (on the one account that knows it by id); TALK was not asked at all
    assert flow.rpc.count("messages.getHistory") == 1
