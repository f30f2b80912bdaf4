"""Events → a durable SQLite outbox → RabbitMQ with publisher confirms, reconnecting.

CONTRACT.md section 3 is what consumers rely on: a durable topic exchange and a durable queue
bound with `#` declared at start; persistent JSON messages with a stable `message_id`;
at-least-once: an event leaves the outbox only when the broker confirmed it.

The pieces: `service.events` builds the events, `service.outbox.Outbox` keeps them in
SQLite, `service.broker.BrokerLink` drains them into the broker; `Publisher`, here, takes
them in (group commit, back-pressure) and owns the link's life.

How an event travels::

    publish() ──(group commit, at most one transaction per 2 ms)──▶ Outbox (SQLite, WAL)
                                                                    │ read in seq order
    drain task ── basic_publish × up to max_in_flight, unawaited ◀──┘
        │ confirm (Basic.Ack) ──▶ delete from the outbox (batched)
        │ nack / return       ──▶ sent again later, in seq order among the retries
        │ (a drain that found only a few rows lingers 5 ms: events that trickle in one by one
        │  then go out a few at a time and the broker confirms them with one ack frame,
        │  which halves the client's CPU per event in the subscription flow)
        └ connection or channel lost, refused, closed ──▶ reconnect with capped backoff,
                                                         resend every unconfirmed row in order

Durability: the outbox runs WAL with synchronous=NORMAL. A commit is in the WAL file (the
OS page cache) when publish() returns, so a killed or crashed process loses nothing; only
an OS crash or power loss can lose the last commits (never corrupt the file). FULL would
fsync each commit, a few milliseconds on this kind of disk, for a failure the events' sources
mostly cover anyway: new messages come back through the subscriber's gap poll
(`min_id=last_message_id`, and the join map's cursor only moves after the outbox write).
Pass synchronous="FULL" to Outbox where power loss must lose nothing.

Where SQLite runs: on the event loop. An outbox statement is a few microseconds per row (a
single-row commit ~40 µs with WAL/NORMAL, no fsync; reads and deletes are batched by primary
key), while one aiormq publish costs ~250 µs of CPU, so a thread hop per statement would
cost more than it saves.

At the bound (`max_events` unconfirmed events): publish() waits for room (back-pressure)
rather than refusing, since a refused event is lost for good while a waiting subscriber
loses nothing: its updates stay with Telegram and its gap poll re-finds them. The log says
so loudly at 80 % and at the bound, and the `tgc_outbox_events` gauge beside
`tgc_outbox_max_events` lets an alert fire first. With `url=""` nothing drains: the outbox
keeps events for a later start with a broker, and fills up to the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiormq
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.errors import ShuttingDown
from service.broker import BrokerLink, ConnectFn, describe
from service.outbox import Outbox

if TYPE_CHECKING:
    from service.events import Event

log = logging.getLogger(__name__)

# The outbox warns when it is this full (fraction of max_events).
NEAR_FULL = 0.8
# How long a drain that found few events waits for more, so that events trickling in share
# a publish round and the broker's ack. 5 ms, not 2: at a steady 1,000 events/s
# (bench/events.py --latency, issue 14, three runs each) the service's CPU per event fell
# from 847-871 to 784-817 µs and push → confirm p99 from 173-1313 to 108-224 ms (less CPU
# is less queue). The commit interval (commit_every) stays 2 ms: a producer that awaits
# each publish() gets one event per interval through (5 ms: 200 events/s).
LINGER = 0.005


class Publisher:
    """One connection, one confirm-mode channel, many publishes in flight.

    `publish()` returns once the event is in the outbox; the drain task (a `BrokerLink`,
    service/broker.py) sends it. With `url=""` events stay in the outbox. `linger` (s, 0 to
    turn it off) is how long a drain that found fewer than 32 events waits for more before
    sending again; `commit_every` (s) is the least time between two outbox commits (0: one
    per loop turn). Counters for /metrics are plain attributes (`published`, `resent`,
    `nacked`, `returned`, `reconnects`, `outbox.size`) and, when a prometheus `registry` is
    given, metrics registered in it.
    """

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        exchange: str = "telegram",
        queue: str = "telegram.events",
        *,
        max_in_flight: int = 256,
        reconnect_max_delay: float = 60.0,
        connect: ConnectFn = aiormq.connect,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        linger: float = LINGER,
        commit_every: float = 0.002,
    ) -> None:
        self.outbox = outbox
        self._commit_every = commit_every
        self._last_commit = float("-inf")  # loop time of the last outbox commit
        self._flush_timer: asyncio.TimerHandle | None = None
        self._url = url
        self._link = BrokerLink(
            outbox,
            url,
            exchange,
            queue,
            max_in_flight=max_in_flight,
            reconnect_max_delay=reconnect_max_delay,
            connect=connect,
            clock=clock,
            linger=linger,
            on_deleted=self._update_room,
        )
        self.waiting = 0  # publish() calls waiting for room in a full outbox
        self._pending: list[tuple[str, str, bytes, asyncio.Future[None]]] = []
        self._room = asyncio.Event()  # the outbox is below its bound
        self._room.set()
        self._empty = asyncio.Event()  # nothing waits in the outbox
        self._warned_level = 0
        self._checkpoints: asyncio.Task[None] | None = None
        self._stopping = False
        if registry is not None:
            registry.register(PublisherCollector(self))

    # --- the broker side's counters -----------------------------------------------------

    @property
    def published(self) -> int:
        """Events confirmed by the broker."""
        return self._link.published

    @property
    def resent(self) -> int:
        """Events sent again after a failure (the bound on duplicates)."""
        return self._link.resent

    @property
    def nacked(self) -> int:
        """Events the broker nacked (each sent again later)."""
        return self._link.nacked

    @property
    def returned(self) -> int:
        """Events that came back unroutable."""
        return self._link.returned

    @property
    def reconnects(self) -> int:
        """Broker reconnections."""
        return self._link.reconnects

    @property
    def connected(self) -> asyncio.Event:
        """Set while a channel to the broker is open."""
        return self._link.connected

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the drain task (connecting in the background: a broker that is down at start
        must not stop the service). Events already in the outbox go first."""
        self._update_room()
        self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="outbox-checkpoint")
        if not self._url:
            log.warning(
                "rabbitmq.url is empty: events stay in the outbox (%d now)", self.outbox.size
            )
            return
        self._link.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Stops: no new events; waits up to `grace` s for confirms of what is in flight; the
        rest stays in the outbox for the next start. Does not close the outbox (its owner does)."""
        self._stopping = True
        self._room.set()  # wake publishers waiting for room: they raise ShuttingDown
        if self._pending:
            self._flush_pending()
        await self._link.stop_draining(grace)
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
        await self._link.close()
        log.info("publisher stopped: %d events left in the outbox", self.outbox.size)

    async def _checkpoint_loop(self, every: float = 1.0) -> None:
        # The outbox's WAL checkpoints run here, on a thread, never on the loop (they fsync).
        done = self.outbox.writes
        while True:
            await asyncio.sleep(every)
            if self.outbox.writes == done:
                continue  # nothing new in the WAL
            done = self.outbox.writes
            try:
                await asyncio.to_thread(self.outbox.checkpoint)
            except Exception as exc:
                log.warning("outbox checkpoint failed: %s", describe(exc))

    # --- producing ----------------------------------------------------------------------

    async def publish(self, routing_key: str, body: dict[str, Any], message_id: str) -> None:
        """Writes the event to the outbox; returns when it is committed there.

        Waits while the outbox is at its bound (see the module docstring).
        """
        data = orjson.dumps(body)
        while not self._room.is_set() or self._full():
            self._room.clear()
            self.waiting += 1
            try:
                await self._room.wait()
            finally:
                self.waiting -= 1
            if self._stopping:
                break
        if self._stopping:
            raise ShuttingDown("the publisher is stopping")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((routing_key, message_id, data, future))
        if len(self._pending) == 1:
            self._schedule_flush()
        await future

    async def wait_empty(self) -> None:
        """Returns when every event written so far is confirmed and out of the outbox."""
        while self.outbox.size or self._pending or self._link.deletes_pending:
            self._empty.clear()
            await self._empty.wait()

    async def publish_event(self, event: Event) -> None:
        """`publish` of an event built by `service.events.make_event`."""
        await self.publish(event.routing_key, event.body, event.message_id)

    def _full(self) -> bool:
        return self.outbox.size + len(self._pending) >= self.outbox.max_events

    def _schedule_flush(self) -> None:
        # Group commit: every publish() until the flush goes in one transaction. At most one
        # commit per `commit_every` s: events that trickle in one per loop turn (each update
        # is its own turn) share a commit instead of paying one each (a commit costs about
        # as much as three rows in one: 48 vs 23 µs of CPU per event measured, with the
        # delete); a publish() that comes after a quiet spell is committed at once.
        loop = asyncio.get_running_loop()
        wait = self._last_commit + self._commit_every - loop.time()
        if wait > 0:
            self._flush_timer = loop.call_later(wait, self._flush_pending)
        else:
            loop.call_soon(self._flush_pending)

    def _flush_pending(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._last_commit = asyncio.get_running_loop().time()
        try:
            written = self.outbox.append([(rk, mid, data) for rk, mid, data, _ in batch])
        except Exception as exc:
            log.exception("outbox write failed")
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for *_, future in batch:
            if not future.done():
                future.set_result(None)
        self._update_room()
        self._link.feed(written)

    def _update_room(self) -> None:
        size, bound = self.outbox.size, self.outbox.max_events
        level = 2 if size >= bound else 1 if size >= NEAR_FULL * bound else 0
        if level > self._warned_level:
            if level == 2:
                log.error(
                    "OUTBOX FULL: %d events wait for the broker; new events wait for room", size
                )
            else:
                log.warning(
                    "outbox near its bound: %d of %d events wait for the broker", size, bound
                )
        elif level < self._warned_level and level == 0:
            log.warning("outbox back to %d events", size)
        self._warned_level = level
        if size < bound:
            self._room.set()
        else:
            self._room.clear()
        if size == 0:
            self._empty.set()


class PublisherCollector(Collector):
    """A prometheus-client collector reading a Publisher's plain counters at scrape time."""

    _COUNTERS = (
        ("tgc_events_published", "published", "Events confirmed by the broker."),
        ("tgc_events_resent", "resent", "Events sent again after a failure."),
        ("tgc_events_nacked", "nacked", "Events the broker nacked."),
        ("tgc_events_returned", "returned", "Events that came back unroutable."),
        ("tgc_publisher_reconnects", "reconnects", "Broker reconnections."),
    )

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    def collect(self) -> Iterator[Metric]:
        p = self._publisher
        for name, attr, doc in self._COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(p, attr))
        yield GaugeMetricFamily(
            "tgc_outbox_events", "Events in the outbox, not yet confirmed.", value=p.outbox.size
        )
        yield GaugeMetricFamily(
            "tgc_outbox_max_events", "The outbox's bound.", value=p.outbox.max_events
        )
        yield GaugeMetricFamily(
            "tgc_publisher_connected",
            "1 when connected to the broker.",
            value=float(p.connected.is_set()),
        )
