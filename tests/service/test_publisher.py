"""The outbox and the publisher: events reach the real broker once confirmed, survive broker
outages (a loopback proxy drops and refuses the connection) and a SIGKILLed publisher."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiormq
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from common.errors import ShuttingDown
from service.broker import Outage
from service.events import make_event
from service.outbox import Outbox
from service.publisher import Publisher
from tests.fixtures.rabbitmq import BrokerProxy, Rabbit
from tests.fixtures.wait import wait_for

PEER = {"id": -1001234567890, "type": "channel", "title": "News", "username": "news"}


def event_for(i: int) -> tuple[str, dict, str]:
    ev = make_event(
        "message.new",
        PEER,
        account="acc1",
        message={"id": i, "peer_id": PEER["id"], "text": "x" * 200},
        at=1_700_000_000 + i,
    )
    return ev.routing_key, ev.body, ev.message_id


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.db", max_events=100_000)
    yield box
    box.close()


@pytest.fixture
async def publisher_factory(outbox: Outbox) -> AsyncIterator:
    made: list[Publisher] = []

    async def make(url: str, rabbit: Rabbit | None = None, **kw) -> Publisher:  # type: ignore[no-untyped-def]
        names = (rabbit.exchange, rabbit.queue) if rabbit else ("telegram", "telegram.events")
        kw.setdefault("reconnect_max_delay", 0.5)
        p = Publisher(kw.pop("outbox", outbox), url, *names, **kw)
        await p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        await p.stop(grace=0)


# --- the publisher against the real broker --------------------------------------------------


async def test_publishes_persistent_json_with_ids(
    rabbit: Rabbit, publisher_factory, outbox: Outbox  # type: ignore[no-untyped-def]
) -> None:
    registry = CollectorRegistry()
    async with rabbit.consumer() as consumer:
        pub = await publisher_factory(rabbit.url, rabbit, registry=registry)
        events = [event_for(i) for i in range(1, 501)]
        await asyncio.gather(*(pub.publish(*e) for e in events))
        await consumer.wait_for_count(500)
    assert [m.message_id for m in consumer.messages] == [e[2] for e in events]  # in order
    first = consumer.messages[0]
    assert first.routing_key == "message.new"
    assert first.delivery_mode == 2 and first.content_type == "application/json"
    assert first.body == events[0][1]
    await asyncio.wait_for(pub.wait_empty(), 20)
    assert pub.published == 500 and pub.resent == 0
    text = generate_latest(registry).decode()
    assert "tgc_events_published_total 500.0" in text
    assert "tgc_outbox_events 0.0" in text


async def test_declares_durable_topology(rabbit: Rabbit, publisher_factory) -> None:  # type: ignore[no-untyped-def]
    pub = await publisher_factory(rabbit.url, rabbit)
    await asyncio.wait_for(pub.connected.wait(), 10)
    async with rabbit.channel() as channel:
        # durable: a transient redeclare of the same names is refused
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.queue_declare(rabbit.queue, durable=False)
    async with rabbit.channel() as channel:
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.exchange_declare(rabbit.exchange, exchange_type="topic", durable=False)
    async with rabbit.channel() as channel:
        # bound with '#': any routing key reaches the queue, even with no consumer
        await channel.basic_publish(b"{}", exchange=rabbit.exchange, routing_key="a.b.c")
        ok = await channel.queue_declare(rabbit.queue, passive=True)
        assert ok.message_count == 1


async def test_empty_url_keeps_events_and_a_later_start_drains_them(
    rabbit: Rabbit, publisher_factory, outbox: Outbox  # type: ignore[no-untyped-def]
) -> None:
    offline = await publisher_factory("")
    for i in range(1, 51):
        await offline.publish(*event_for(i))
    assert outbox.size == 50 and offline.published == 0
    await offline.stop()
    async with rabbit.consumer() as consumer:
        pub = await publisher_factory(rabbit.url, rabbit)
        await consumer.wait_for_count(50)
    assert [m.message_id for m in consumer.messages] == [event_for(i)[2] for i in range(1, 51)]
    await asyncio.wait_for(pub.wait_empty(), 20)


async def test_events_trickling_in_share_a_commit(publisher_factory, outbox: Outbox) -> None:  # type: ignore[no-untyped-def]
    """Updates arrive one per loop turn: at most one outbox commit per `commit_every`, so
    they share one (each publish() still returns only once its event is committed, in
    order); the first after a quiet spell is committed at once."""
    pub = await publisher_factory("", commit_every=0.2)
    await asyncio.wait_for(pub.publish(*event_for(1)), 0.1)  # at once: nothing committed lately
    assert outbox.writes == 1 and outbox.size == 1
    tasks = []
    for i in range(2, 12):
        tasks.append(asyncio.ensure_future(pub.publish(*event_for(i))))
        await asyncio.sleep(0)  # the next one comes a loop turn later, like updates do
    assert outbox.size == 1  # within commit_every of the last commit: held
    await asyncio.gather(*tasks)
    assert outbox.writes == 2 and outbox.size == 11  # one transaction for the ten
    assert [r.message_id for r in outbox.read(0, 20)] == [event_for(i)[2] for i in range(1, 12)]


async def test_broker_down_at_start_then_back(
    rabbit: Rabbit, broker_proxy: BrokerProxy, publisher_factory, outbox: Outbox,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.broker")
    await broker_proxy.refuse()
    pub = await publisher_factory(broker_proxy.url, rabbit)
    for i in range(1, 101):
        await pub.publish(*event_for(i))  # returns: the outbox has it
    assert outbox.size == 100
    await wait_for(lambda: pub.reconnects >= 3, within=30, what="three reconnects")  # it keeps trying
    async with rabbit.consumer() as consumer:
        await broker_proxy.accept()
        await consumer.wait_for_count(100)
    assert [m.message_id for m in consumer.messages] == [event_for(i)[2] for i in range(1, 101)]
    # The outage in the log: one WARNING when it began, one when it ended, the attempts
    # between at INFO (not a WARNING each, burying what matters).
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "service.broker" and r.levelno >= logging.WARNING]  # fmt: skip
    assert len(warnings) == 2, warnings
    assert "lost or refused" in warnings[0] and "broker back after" in warnings[1]
    assert sum("still unreachable" in r.getMessage() for r in caplog.records) >= 2


def test_a_long_outage_is_recalled_every_few_minutes_not_at_every_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.broker")
    clock = [0.0]
    outage = Outage(lambda: clock[0], remind=300)
    for _ in range(120):  # 10 minutes of attempts every 5 s (the last at 595 s)
        outage.failed("ConnectionRefusedError", waiting=7)
        clock[0] += 5
    outage.ended(waiting=9)
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    warned = [m for lvl, m in levels if lvl == logging.WARNING]
    assert len(warned) == 3, warned  # began, 300 s on, ended
    assert "still unreachable after 300 s (61 attempts)" in warned[1]
    assert warned[2] == "broker back after 600 s down (120 attempts); 9 events in the outbox to send"
    assert sum(lvl == logging.INFO for lvl, _ in levels) == 118
    assert outage.since is None and outage.attempts == 0


async def test_full_outbox_makes_publish_wait_not_drop(
    tmp_path: Path, rabbit: Rabbit, broker_proxy: BrokerProxy, publisher_factory  # type: ignore[no-untyped-def]
) -> None:
    box = Outbox(tmp_path / "small.db", max_events=100)
    await broker_proxy.refuse()
    pub = await publisher_factory(broker_proxy.url, rabbit, outbox=box)
    for i in range(1, 101):
        await pub.publish(*event_for(i))
    blocked = asyncio.ensure_future(pub.publish(*event_for(101)))
    await wait_for(lambda: pub.waiting == 1, within=5, what="a waiting publish")  # not written
    assert not blocked.done() and box.size == 100
    async with rabbit.consumer() as consumer:
        await broker_proxy.accept()
        await asyncio.wait_for(blocked, 20)
        await consumer.wait_for_count(101)
    assert len(consumer.counts()) == 101
    await pub.stop()  # before its outbox closes (the owner's order)
    box.close()


async def test_stop_wakes_a_waiting_publish(tmp_path: Path, publisher_factory) -> None:  # type: ignore[no-untyped-def]
    box = Outbox(tmp_path / "tiny.db", max_events=1)
    pub = await publisher_factory("", outbox=box)
    await pub.publish(*event_for(1))
    blocked = asyncio.ensure_future(pub.publish(*event_for(2)))
    await wait_for(lambda: pub.waiting == 1, within=5, what="a publish blocked on the full outbox")
    await pub.stop()
    with pytest.raises(ShuttingDown):
        await blocked
    assert pub.waiting == 0 and box.size == 1
    box.close()


async def test_a_deleted_queue_is_declared_again(
    rabbit: Rabbit, publisher_factory  # type: ignore[no-untyped-def]
) -> None:
    pub = await publisher_factory(rabbit.url, rabbit)
    await asyncio.wait_for(pub.connected.wait(), 10)
    async with rabbit.channel() as channel:
        await channel.queue_delete(rabbit.queue)  # an operator's mistake
    await pub.publish(*event_for(1))  # comes back unroutable (mandatory)
    await wait_for(lambda: pub.returned >= 1, within=30, what="the event returned")
    async with rabbit.consumer() as consumer:
        await consumer.wait_for_ids([event_for(1)[2]])


async def test_nacked_events_are_sent_again(
    rabbit: Rabbit, publisher_factory  # type: ignore[no-untyped-def]
) -> None:
    extra = f"{rabbit.queue}.extra"
    async with rabbit.channel() as channel:
        await rabbit.declare(channel)
        # a second queue that rejects publishes beyond 5 messages: the broker nacks them
        await channel.queue_declare(
            extra, arguments={"x-max-length": 5, "x-overflow": "reject-publish"}
        )
        await channel.queue_bind(extra, rabbit.exchange, routing_key="#")
    pub = await publisher_factory(rabbit.url, rabbit)
    for i in range(1, 11):
        await pub.publish(*event_for(i))
    await wait_for(lambda: pub.nacked >= 5, within=30, what="five nacks")
    async with rabbit.channel() as channel:
        await channel.queue_delete(extra)  # the obstacle is gone: the retries go through
    await asyncio.wait_for(pub.wait_empty(), 20)
    assert pub.resent == pub.nacked >= 5
    async with rabbit.consumer() as consumer:
        # a nack says "not taken by every queue": ours got the first copy already, the retry
        # is a duplicate that its message_id gives away
        await consumer.wait_for_count(10 + pub.resent)
    counts = consumer.counts()
    assert set(counts) == {event_for(i)[2] for i in range(1, 11)}
    assert sum(c - 1 for c in counts.values()) <= pub.resent


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_thousand_events_through_drops_and_refusals(
    rabbit: Rabbit, broker_proxy: BrokerProxy, publisher_factory, outbox: Outbox  # type: ignore[no-untyped-def]
) -> None:
    """The connection is cut and refused again and again while 10,000 events are produced:
    every event arrives, and the only duplicates are events sent again after a cut."""
    n = 10_000
    events = [event_for(i) for i in range(1, n + 1)]
    async with rabbit.consumer() as consumer:
        pub = await publisher_factory(broker_proxy.url, rabbit)

        async def produce() -> None:
            for i, e in enumerate(events):
                await pub.publish(*e)
                if i % 100 == 0:
                    await asyncio.sleep(0.001)  # spread production over the faults

        def idle() -> bool:
            return producing.done() and pub.outbox.size == 0

        async def break_things() -> int:
            cuts = 0
            while not producing.done() or cuts < 3:
                # Only a live connection is cut (each cut is one the publisher must see),
                # once it carried traffic (a confirm came back) unless there is none left.
                await wait_for(
                    lambda: pub.connected.is_set() and broker_proxy.clients > 0,
                    within=30,
                    what="a live connection",
                )
                confirmed = pub.published
                await wait_for(
                    lambda c=confirmed: pub.published > c or idle(),
                    within=30,
                    what="a confirm on this connection",
                )
                seen = pub.reconnects
                refusing = cuts % 2 == 0
                await broker_proxy.cut() if refusing else await broker_proxy.drop()
                cuts += 1
                # The publisher has seen the connection lost, and after a cut also had an
                # attempt refused, before the proxy listens again.
                await wait_for(
                    lambda s=seen, n=2 if refusing else 1: pub.reconnects >= s + n,
                    within=30,
                    what="the cut seen by the publisher",
                )
                await broker_proxy.accept()
            return cuts

        producing = asyncio.ensure_future(produce())
        cuts = await break_things()
        await producing
        await consumer.wait_for_ids([e[2] for e in events], within=50)
    counts = consumer.counts()
    assert set(counts) == {e[2] for e in events}
    # The last cut can land after every event was confirmed: then nothing waits on the
    # reconnect it causes, so wait for the publisher to have seen every cut.
    await wait_for(lambda: pub.reconnects >= cuts, within=30, what="every cut seen")
    duplicates = sum(c - 1 for c in counts.values())
    print(f"cuts={cuts} reconnects={pub.reconnects} resent={pub.resent} duplicates={duplicates}")
    assert cuts >= 3 and pub.reconnects >= 3
    assert duplicates <= pub.resent
    await asyncio.wait_for(pub.wait_empty(), 20)


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from service.outbox import Outbox
    from service.publisher import Publisher

    async def main():
        box = Outbox(sys.argv[1], max_events=100_000)
        pub = Publisher(box, sys.argv[2], sys.argv[3], sys.argv[4], max_in_flight=64)
        await pub.start()
        await asyncio.Event().wait()  # drains until killed

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_sigkill_while_draining_loses_nothing(
    tmp_path: Path, rabbit: Rabbit, publisher_factory  # type: ignore[no-untyped-def]
) -> None:
    path = tmp_path / "crash.db"
    n = 20_000
    events = [event_for(i) for i in range(1, n + 1)]
    box = Outbox(path, max_events=100_000)
    box.append([(rk, mid, orjson.dumps(body)) for rk, body, mid in events])
    box.close()
    async with rabbit.consumer() as consumer:
        child = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", CHILD, str(path), rabbit.url, rabbit.exchange, rabbit.queue),
            cwd=Path(__file__).parents[2],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        try:
            await consumer.wait_for_count(1000, within=30)  # draining has begun
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        left = sqlite3.connect(path).execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        assert 0 < left < n  # killed in the middle of the drain
        print(f"killed with {left} of {n} events left in the outbox")
        box = Outbox(path, max_events=100_000)
        pub = await publisher_factory(rabbit.url, rabbit, outbox=box)
        await consumer.wait_for_ids([e[2] for e in events], within=50)
    assert set(consumer.counts()) == {e[2] for e in events}
    await asyncio.wait_for(pub.wait_empty(), 20)
    await pub.stop()  # before its outbox closes (the owner's order)
    box.close()
