"""The publisher's broker side: the outbox drained into RabbitMQ, deleted once confirmed.

One connection, one confirm-mode channel, up to `max_in_flight` publishes unawaited; a
confirm deletes the row (batched), a nack sends it again later, a return or a lost
connection reconnects with capped backoff and resends every unconfirmed row in order.
`Publisher` (service/publisher.py) owns one `BrokerLink` and is the only caller; the
module docstring there draws how an event travels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp import commands as spec

from service.outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)

ConnectFn = Callable[[str], Awaitable[AbstractConnection]]

# Confirmed rows are deleted in batches at most this late (s).
_ACK_DELAY = 0.01
# Rows kept in memory for the drain beside the outbox.
_TAIL_MAX = 10_000
# A drain that found fewer rows than this waits `linger` s before looking again.
_LINGER_BELOW = 32


class _Broken(Exception):
    """The current connection can't be used any more: reconnect."""


class BrokerLink:
    """Sends the outbox's rows to the broker in seq order and deletes them once confirmed.

    `feed(rows)` hands it rows just written, kept in a bounded in-memory tail so that a drain
    that keeps up never reads SQLite; the outbox stays the truth. `on_deleted()` is called
    after confirmed rows left the outbox (the publisher's back-pressure looks again then).
    Counters, plain attributes: `published` (confirmed), `resent`, `nacked`, `returned`,
    `reconnects`; `connected` is set while a channel is open.
    """

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        exchange: str,
        queue: str,
        *,
        max_in_flight: int,
        reconnect_max_delay: float,
        connect: ConnectFn,
        clock: Callable[[], float],
        linger: float,
        on_deleted: Callable[[], None],
    ) -> None:
        self.outbox = outbox
        self._url = url
        self._exchange = exchange
        self._queue = queue
        self._max_in_flight = max(1, max_in_flight)
        self._max_delay = reconnect_max_delay
        self._connect = connect
        self._clock = clock
        self._linger = linger
        self._on_deleted = on_deleted

        self.published = 0  # confirmed by the broker
        self.resent = 0  # sent again after a failure (the bound on duplicates)
        self.nacked = 0
        self.returned = 0
        self.reconnects = 0
        self.connected = asyncio.Event()

        self._acked: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        # Rows written by the publisher that the drain has not read yet (bounded; the outbox
        # stays the truth: the drain reads it whenever the tail doesn't continue its cursor).
        self._tail: deque[OutboxRow] = deque()
        self._in_flight: dict[int, OutboxRow] = {}
        self._retry: list[tuple[float, OutboxRow]] = []
        self._max_sent_seq = 0
        self._generation = 0
        self._broken: BaseException | None = None
        self._wake = asyncio.Event()  # new rows, a confirm, a failure: the drain looks again
        self._task: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None
        self._stopping = False
        self._outage = Outage(clock)

    @property
    def deletes_pending(self) -> bool:
        """Confirmed rows not deleted from the outbox yet (they go within a few ms)."""
        return bool(self._acked)

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the drain task; it connects in the background."""
        self._task = asyncio.create_task(self._run(), name="publisher")

    def feed(self, rows: Sequence[OutboxRow]) -> None:
        """Rows just written to the outbox: the drain looks again."""
        if self._task is not None and len(self._tail) < _TAIL_MAX:
            self._tail.extend(rows)
        self._wake.set()

    async def stop_draining(self, grace: float) -> None:
        """Sends nothing more; waits up to `grace` s for the confirms of what is in flight."""
        self._stopping = True
        if self._task is None:
            return
        deadline = self._clock() + grace
        while self._in_flight and self._broken is None and self._clock() < deadline:
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - self._clock())):
                    await self._wake.wait()
            except TimeoutError:
                break
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def close(self) -> None:
        """Deletes what was confirmed and closes the connection (after `stop_draining`)."""
        self._flush_acks()
        await self._close_connection()

    # --- draining -----------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                channel = await self._open()
                attempt = 0
                await self._drain(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every broker failure ends here: reconnect
                if self._stopping:
                    return
                self._outage.failed(describe(exc), self.outbox.size)
            finally:
                self.connected.clear()
                await self._close_connection()
            delay = min(self._max_delay, 0.2 * 2**attempt) * random.uniform(0.5, 1.0)
            attempt = min(attempt + 1, 20)
            self.reconnects += 1
            await asyncio.sleep(delay)

    async def _open(self) -> AbstractChannel:
        async with asyncio.timeout(30):
            self._conn = conn = await self._connect(self._url)
            # on_return_raises: an unroutable (returned) event fails its confirm with
            # PublishError instead of "succeeding" with the returned message.
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            await channel.exchange_declare(self._exchange, exchange_type="topic", durable=True)
            await channel.queue_declare(self._queue, durable=True)
            await channel.queue_bind(self._queue, self._exchange, routing_key="#")
        self._generation += 1
        self._broken = None
        self._in_flight = {}
        self._retry = []
        generation = self._generation
        conn.closing.add_done_callback(partial(self._on_closed, generation))
        channel.closing.add_done_callback(partial(self._on_closed, generation))
        self.connected.set()
        self._outage.ended(self.outbox.size)
        return channel

    def _on_closed(self, generation: int, future: asyncio.Future[Any]) -> None:
        if generation == self._generation:
            exc = future.exception() if not future.cancelled() else None
            self._break(exc or _Broken("closed"))

    async def _drain(self, channel: AbstractChannel) -> None:
        self._flush_acks()  # confirmed rows of the last connection must not be sent again
        cursor = 0  # the highest seq handed to this channel
        generation = self._generation
        while True:
            self._wake.clear()
            if self._broken is not None:
                raise self._broken
            room = self._max_in_flight - len(self._in_flight)
            rows: list[OutboxRow] = []
            if room > 0:
                rows = self._due_retries(room)
                fresh = self._next_rows(cursor, room - len(rows)) if len(rows) < room else []
                rows.extend(fresh)
                if fresh:
                    cursor = fresh[-1].seq
            for row in rows:
                self._send(channel, generation, row)
            if rows:
                await asyncio.sleep(0)  # let the sends reach the socket before reading more
                if self._linger and len(rows) < _LINGER_BELOW:
                    # Events trickling in one by one: gather a few before the next sends, so
                    # the broker confirms them together (one ack frame for many).
                    await asyncio.sleep(self._linger)
                continue
            await self._wait(self._next_retry_in())

    def _next_rows(self, cursor: int, limit: int) -> list[OutboxRow]:
        """The next rows after `cursor`: from the in-memory tail of rows this process just
        wrote when it continues the cursor (no SQLite read), else from the outbox."""
        tail = self._tail
        while tail and tail[0].seq <= cursor:
            tail.popleft()
        if tail and tail[0].seq == cursor + 1:
            return [tail.popleft() for _ in range(min(limit, len(tail)))]
        if cursor >= self.outbox.last_seq:
            return []  # caught up: nothing was written after the cursor
        return self.outbox.read(cursor, limit)

    def _due_retries(self, room: int) -> list[OutboxRow]:
        if not self._retry:
            return []
        now = self._clock()
        due = [r for t, r in self._retry if t <= now][:room]
        if due:
            taken = {r.seq for r in due}
            self._retry = [(t, r) for t, r in self._retry if r.seq not in taken]
        return due

    def _next_retry_in(self) -> float | None:
        if not self._retry:
            return None
        return max(0.0, min(t for t, _ in self._retry) - self._clock())

    async def _wait(self, at_most: float | None) -> None:
        if at_most is None:
            await self._wake.wait()  # no wait_for: it costs a task per wait
            return
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # meets the wake-up (bpo-42130), and stop() would wait for the drain forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._wake.wait()

    def _send(self, channel: AbstractChannel, generation: int, row: OutboxRow) -> None:
        if row.seq <= self._max_sent_seq:
            self.resent += 1
        self._max_sent_seq = max(self._max_sent_seq, row.seq)
        self._in_flight[row.seq] = row
        task = asyncio.ensure_future(
            channel.basic_publish(  # type: ignore[call-arg]  # `wait` is missing from the ABC
                row.body,
                exchange=self._exchange,
                routing_key=row.routing_key,
                properties=spec.Basic.Properties(
                    delivery_mode=2,  # persistent: survives a broker restart
                    content_type="application/json",
                    message_id=row.message_id,
                ),
                mandatory=True,  # an unroutable event comes back instead of vanishing
                wait=False,  # don't wait for the socket drain: the confirm is what counts
            )
        )
        task.add_done_callback(partial(self._on_confirm, generation, row))

    def _on_confirm(self, generation: int, row: OutboxRow, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        acked = exc is None and isinstance(task.result(), spec.Basic.Ack)
        if acked:
            # Even a confirm from a connection already replaced is a real confirm.
            self._confirmed(row.seq)
        if generation != self._generation:
            return
        self._in_flight.pop(row.seq, None)
        if acked:
            pass
        elif isinstance(exc, aiormq.exceptions.PublishError):
            # Returned unroutable: nothing is bound to the exchange any more (someone deleted
            # our queue). Reconnecting declares it again; the event is sent again then.
            self.returned += 1
            log.warning("event %s returned unroutable; redeclaring", row.message_id)
            self._break(_Broken("an event came back unroutable"))
        elif isinstance(exc, aiormq.exceptions.DeliveryError):
            # Nacked: the broker could not take it (an internal error of the queue).
            self.nacked += 1
            log.warning("event %s nacked by the broker; retrying", row.message_id)
            self._retry.append((self._clock() + 1.0, row))
        else:
            self._break(exc or _Broken(f"unexpected confirm {task.result()!r}"))
        self._wake.set()

    def _break(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
            self._wake.set()

    def _confirmed(self, seq: int) -> None:
        self._acked.append(seq)
        self.published += 1
        if len(self._acked) == 1:
            # Deletes are batched over a few ms: fewer transactions; a crash in between only
            # sends those few confirmed events again (consumers drop them by message_id).
            self._ack_timer = asyncio.get_running_loop().call_later(_ACK_DELAY, self._flush_acks)
        elif len(self._acked) >= 1024:
            self._flush_acks()

    def _flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        acked, self._acked = self._acked, []
        if acked:
            self.outbox.delete(acked)
            self._on_deleted()

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            try:
                async with asyncio.timeout(5):
                    await conn.close()
            except Exception as exc:
                log.debug("closing the broker connection: %s", describe(exc))


def describe(exc: BaseException) -> str:
    """An exception in one short line, for the log."""
    return f"{type(exc).__name__}: {exc}"[:300]


class Outage:
    """How a broker outage is logged: one WARNING when it begins, one every `remind` seconds
    while it lasts (each reconnect attempt in between at INFO), and how long it lasted when
    it ends; not a WARNING per attempt, which at 3 a.m. buries the one line that matters
    under hundreds (the backoff tries every few seconds for as long as the broker is gone).
    """

    def __init__(self, clock: Callable[[], float], remind: float = 300.0) -> None:
        self._clock = clock
        self._remind = remind
        self.since: float | None = None  # when the outage began (None: none now)
        self.attempts = 0
        self._warned_at = 0.0

    def failed(self, reason: str, waiting: int) -> None:
        """A connection was lost or refused (`waiting`: events in the outbox)."""
        now = self._clock()
        self.attempts += 1
        if self.since is None:
            self.since, self._warned_at = now, now
            log.warning("broker connection lost or refused: %s; reconnecting with backoff, "
                        "events stay in the outbox (%d now)", reason, waiting)  # fmt: skip
        elif now - self._warned_at >= self._remind:
            self._warned_at = now
            log.warning("broker still unreachable after %.0f s (%d attempts): %s; "
                        "%d events in the outbox", now - self.since, self.attempts, reason,
                        waiting)  # fmt: skip
        else:
            log.info("broker still unreachable (attempt %d): %s", self.attempts, reason)

    def ended(self, waiting: int) -> None:
        """A channel is open again (or for the first time)."""
        if self.since is None:
            log.info("broker connected; %d events in the outbox to send", waiting)
        else:
            log.warning("broker back after %.0f s down (%d attempts); %d events in the "
                        "outbox to send", self._clock() - self.since, self.attempts,
                        waiting)  # fmt: skip
        self.since, self.attempts = None, 0

