"""Events benchmark: our outbox-first Publisher against raw aiormq pipelined confirms.

    .venv/bin/python bench/events.py [--events 20000] [--in-flight 256] [--rounds 3] [--url amqp://...]

Both sides publish the same ~1 KB `message.new` bodies (built by `make_event`, serialised by
orjson on both sides) as persistent messages with publisher confirms to a topic exchange and
a durable queue of their own on the broker (deleted after), and count until the last
confirm:

- raw: aiormq, one channel in confirm mode, up to --in-flight publishes unconfirmed at once;
- ours: `Publisher.publish()` one event after the other (each awaited: the SQLite outbox
  commit is included), the drain task sending and deleting confirmed rows from the outbox.

The two alternate for --rounds rounds in the same run (the broker's and the machine's state
drift between runs, MEASURED.md); the best and the median of each are compared, in wall
time and per second of this process's CPU (steadier when other work shares the machine:
the client's CPU is the limit here, not the broker). Target (issue 5): ours ≥ 70% of raw. The emulator's push side of the end-to-end flow is the subscriber's, measured
apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiormq
import orjson
from pamqp import commands as spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.publisher import Event, Outbox, Publisher, make_event

PEER = {"id": -1001234567890, "type": "channel", "title": "Bench", "username": "bench"}


def make_events(n: int) -> list[Event]:
    text = "lorem ipsum dolor sit amet " * 30  # ~800 bytes: a ~1 KB body with the rest
    return [
        make_event(
            "message.new",
            PEER,
            account="acc1",
            message={"id": i, "peer_id": PEER["id"], "date": "2026-01-01T00:00:00+00:00",
                     "text": text, "views": i, "media": None},
            at=1_700_000_000 + i,
        )
        for i in range(1, n + 1)
    ]


async def declare(url: str, exchange: str, queue: str) -> None:
    conn = await aiormq.connect(url)
    channel = await conn.channel()
    await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(queue, durable=True)
    await channel.queue_bind(queue, exchange, routing_key="#")
    await conn.close()


async def cleanup(url: str, exchange: str, queue: str) -> None:
    conn = await aiormq.connect(url)
    channel = await conn.channel()
    await channel.queue_delete(queue)
    await channel.exchange_delete(exchange)
    await conn.close()


async def purge(url: str, queue: str) -> None:
    conn = await aiormq.connect(url)
    channel = await conn.channel()
    await channel.queue_purge(queue)
    await conn.close()


@dataclass
class Rate:
    wall: float  # events per second
    cpu: float  # events per second of this process's CPU time


async def raw(url: str, exchange: str, events: list[Event], in_flight: int) -> Rate:
    conn = await aiormq.connect(url)
    channel = await conn.channel(publisher_confirms=True)
    window = asyncio.Semaphore(in_flight)

    async def one(ev: Event) -> None:
        try:
            confirm = await channel.basic_publish(
                orjson.dumps(ev.body),
                exchange=exchange,
                routing_key=ev.routing_key,
                properties=spec.Basic.Properties(
                    delivery_mode=2, content_type="application/json", message_id=ev.message_id
                ),
                mandatory=True,
            )
            assert isinstance(confirm, spec.Basic.Ack)
        finally:
            window.release()

    start, cpu = time.perf_counter(), time.process_time()
    tasks = []
    for ev in events:
        await window.acquire()
        tasks.append(asyncio.ensure_future(one(ev)))
    await asyncio.gather(*tasks)
    rate = Rate(len(events) / (time.perf_counter() - start),
                len(events) / (time.process_time() - cpu))
    await conn.close()
    return rate


async def ours(url: str, exchange: str, queue: str, events: list[Event], in_flight: int) -> Rate:
    with tempfile.TemporaryDirectory() as tmp:
        box = Outbox(Path(tmp) / "outbox.db", max_events=len(events) + 1)
        pub = Publisher(box, url, exchange, queue, max_in_flight=in_flight)
        await pub.start()
        await pub.connected.wait()
        start, cpu = time.perf_counter(), time.process_time()
        for ev in events:
            await pub.publish(ev.routing_key, ev.body, ev.message_id)
        await pub.wait_empty()
        rate = Rate(len(events) / (time.perf_counter() - start),
                    len(events) / (time.process_time() - cpu))
        assert box.size == 0 and pub.resent == 0, (box.size, pub.resent)
        await pub.stop()
        box.close()
    return rate


async def main(args: Any) -> None:
    events = make_events(args.events)
    size = sum(len(orjson.dumps(e.body)) for e in events) / len(events)
    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"tgc.bench.{tag}", f"tgc.bench.{tag}.events"
    await declare(args.url, exchange, queue)
    raws: list[Rate] = []
    oursl: list[Rate] = []
    try:
        for r in range(args.rounds):
            a = await raw(args.url, exchange, events, args.in_flight)
            await purge(args.url, queue)
            b = await ours(args.url, exchange, queue, events, args.in_flight)
            await purge(args.url, queue)
            raws.append(a)
            oursl.append(b)
            print(f"round {r + 1}: raw aiormq {a.wall:6.0f} ev/s ({a.cpu:6.0f}/cpu-s)   "
                  f"ours {b.wall:6.0f} ev/s ({b.cpu:6.0f}/cpu-s)   "
                  f"ratio {b.wall / a.wall:.0%} (cpu {b.cpu / a.cpu:.0%})")
    finally:
        await cleanup(args.url, exchange, queue)
    print(f"{args.events} persistent events of {size:.0f} B, {args.in_flight} in flight, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for what, pick in (("best", max), ("median", statistics.median)):
        w_raw, w_ours = pick(x.wall for x in raws), pick(x.wall for x in oursl)
        c_raw, c_ours = pick(x.cpu for x in raws), pick(x.cpu for x in oursl)
        print(f"{what}: raw aiormq pipelined confirms {w_raw:.0f} ev/s; outbox + publisher "
              f"end to end {w_ours:.0f} ev/s; ratio {w_ours / w_raw:.0%} "
              f"(per CPU second: {c_raw:.0f} vs {c_ours:.0f}, {c_ours / c_raw:.0%}); target >= 70%")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    asyncio.run(main(parser.parse_args()))
