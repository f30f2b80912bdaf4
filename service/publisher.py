"""Events → a durable SQLite outbox → RabbitMQ with publisher confirms, reconnecting.

CONTRACT.md section 3 is what consumers rely on: a durable topic exchange and a durable queue
bound with `#` declared at start; persistent JSON messages with a stable `message_id`;
at-least-once: an event leaves the outbox only when the broker confirmed it.

How an event travels::

    publish() ──(group commit, one transaction per loop turn)──▶ Outbox (SQLite, WAL)
                                                                    │ read in seq order
    drain task ── basic_publish × up to max_in_flight, unawaited ◀──┘
        │ confirm (Basic.Ack) ──▶ delete from the outbox (batched)
        │ nack / return       ──▶ sent again later, in seq order among the retries
        │ (a drain that found only a few rows lingers 2 ms: events that trickle in one by one
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
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiormq
import orjson
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp import commands as spec

from common.errors import ShuttingDown
from common.sqlite import checkpoint, open_db, write
from common.utils import utc_iso

log = logging.getLogger(__name__)

ROUTING_KEYS = (
    "message.new",
    "message.edited",
    "message.deleted",
    "subscription.changed",
    "media.stored",
)

# The outbox warns when it is this full (fraction of max_events).
NEAR_FULL = 0.8
# Confirmed rows are deleted in batches at most this late (s).
_ACK_DELAY = 0.01
# Rows kept in memory for the drain beside the outbox.
_TAIL_MAX = 10_000
# A drain that found fewer rows than this waits `linger` s before looking again.
_LINGER_BELOW = 32


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    routing_key: str
    body: dict[str, Any]
    message_id: str


def make_event(
    event: str,
    peer: dict[str, Any],
    *,
    account: str,
    message: dict[str, Any] | None = None,
    at: float | datetime | None = None,
    extra: dict[str, Any] | None = None,
    id_suffix: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Event:
    """Builds an event as CONTRACT.md section 3 says.

    Body: `{"event", "peer", "message", "account", "at"}` (+ `extra` fields). `message_id` is
    `CHAT:MSG:EVENT[:EDIT_DATE]`, the same every time the same event is built, so that a
    consumer drops duplicates by it:

    - message.new ``-1001:55:message.new``; message.deleted ``-1001:55:message.deleted``
    - message.edited ``-1001:55:message.edited:1700000000`` (the edit date, unix seconds)
    - others have no message: MSG is 0 and `id_suffix` tells them apart, e.g.
      subscription.changed ``-1001:0:subscription.changed:acc1:kicked:1700000000`` and
      media.stored ``-1001:55:media.stored:KEY`` (with the message it belongs to).

    >>> make_event("message.new", {"id": -1001}, account="a", message={"id": 5}, at=0).message_id
    '-1001:5:message.new'
    """
    if event not in ROUTING_KEYS:
        raise ValueError(f"unknown event {event!r}")
    chat = peer["id"]
    msg_id = message["id"] if message else 0
    parts = [str(chat), str(msg_id), event]
    if event == "message.edited":
        edit_date = (message or {}).get("edit_date")
        if edit_date is None:
            raise ValueError("message.edited needs the message's edit_date")
        parts.append(str(_unix(edit_date)))
    if id_suffix is not None:
        parts.append(id_suffix)
    when = clock() if at is None else at
    body: dict[str, Any] = {"event": event, "peer": peer, "account": account, "at": utc_iso(when)}
    if message is not None:
        body["message"] = message
    if extra:
        body.update(extra)
    return Event(event, body, ":".join(parts))


def _unix(value: float | int | str | datetime) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, str):
        return int(datetime.fromisoformat(value).timestamp())
    return int(value)


# --- the outbox -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    routing_key: str
    message_id: str
    body: bytes


_MIGRATIONS = (
    # Lean on purpose: each publish commits its own row (a sequential producer can't be
    # batched), and with WAL a commit writes every page it touched. AUTOINCREMENT (its
    # sqlite_sequence page) and a UNIQUE index on message_id would write ~2.4x the bytes per
    # event (measured: 16.8 KB vs 6.9 KB of WAL per 1 KB event). Consumers drop duplicates by
    # message_id anyway (at-least-once), and seq is handed out by the one writer, growing.
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        routing_key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL
    )
    """,
)


class Outbox:
    """The SQLite outbox: events waiting for the broker's confirm, in the order written.

    One writer (this object, on the event loop): `seq` comes from an in-memory counter that
    starts past the file's highest seq and only grows, so the drain's "everything after seq N"
    cursor never skips a row, even after the table was emptied.
    """

    def __init__(
        self, db_path: str | Path, max_events: int, *, synchronous: str = "NORMAL"
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be positive")
        self.max_events = max_events
        self.path = Path(db_path)
        # Checkpoints happen in checkpoint(), on a thread: see common/sqlite.py.
        self._conn: sqlite3.Connection = open_db(
            db_path, "outbox", _MIGRATIONS, synchronous=synchronous, autocheckpoint=False
        )
        count, last = self._conn.execute("SELECT COUNT(*), MAX(seq) FROM outbox").fetchone()
        self.size: int = count
        self.writes = 0  # transactions so far (the checkpointer skips an idle outbox)
        self._last_seq: int = last or 0

    def append(self, rows: Sequence[tuple[str, str, bytes]]) -> list[OutboxRow]:
        """Writes (routing_key, message_id, body) rows in one transaction, in order; returns
        them with their seq."""
        now = time.time()
        first = self._last_seq + 1
        params = [(first + i, rk, mid, body, now) for i, (rk, mid, body) in enumerate(rows)]
        insert = (
            "INSERT INTO outbox (seq, routing_key, message_id, body, created_at)"
            " VALUES (?, ?, ?, ?, ?)"
        )
        if len(params) == 1:
            self._conn.execute(insert, params[0])  # one statement is its own transaction
        else:
            with write(self._conn) as c:
                c.executemany(insert, params)
        self._last_seq += len(params)
        self.size += len(params)
        self.writes += 1
        return [OutboxRow(seq, rk, mid, body) for seq, rk, mid, body, _ in params]

    @property
    def last_seq(self) -> int:
        """The highest seq ever written through this object (or found in the file)."""
        return self._last_seq

    def read(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows with seq > after_seq, oldest first."""
        rows = self._conn.execute(
            "SELECT seq, routing_key, message_id, body FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def delete(self, seqs: Iterable[int]) -> int:
        """Removes confirmed rows; returns how many were there."""
        params = [(s,) for s in seqs]
        if not params:
            return 0
        with write(self._conn) as c:
            before = c.total_changes
            c.executemany("DELETE FROM outbox WHERE seq = ?", params)
            removed = c.total_changes - before
        self.size -= removed
        self.writes += 1
        return removed

    def checkpoint(self) -> tuple[int, int, int]:
        """Moves the WAL into the database file (blocking, fsyncs: call it in a thread).
        Returns SQLite's (busy, WAL pages, pages checkpointed)."""
        return checkpoint(self.path)

    def close(self) -> None:
        self._conn.close()  # the last connection to close checkpoints the WAL


# --- the publisher --------------------------------------------------------------------------

ConnectFn = Callable[[str], Awaitable[AbstractConnection]]


class _Broken(Exception):
    """The current connection can't be used any more: reconnect."""


class Publisher:
    """One connection, one confirm-mode channel, many publishes in flight.

    `publish()` returns once the event is in the outbox; the drain task sends it. With
    `url=""` events stay in the outbox. `linger` (s, 0 to turn it off) is how long a drain
    that found fewer than 32 events waits for more before sending again. Counters for /metrics are plain attributes
    (`published`, `resent`, `nacked`, `returned`, `reconnects`, `outbox.size`) and, when a
    prometheus `registry` is given, metrics registered in it.
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
        registry: Any = None,
        linger: float = 0.002,
    ) -> None:
        self.outbox = outbox
        self._linger = linger
        self._url = url
        self._exchange = exchange
        self._queue = queue
        self._max_in_flight = max(1, max_in_flight)
        self._max_delay = reconnect_max_delay
        self._connect = connect
        self._clock = clock

        self.published = 0  # confirmed by the broker
        self.resent = 0  # sent again after a failure (the bound on duplicates)
        self.nacked = 0
        self.returned = 0
        self.reconnects = 0
        self.waiting = 0  # publish() calls waiting for room in a full outbox
        self.connected = asyncio.Event()

        self._pending: list[tuple[str, str, bytes, asyncio.Future[None]]] = []
        self._acked: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        # Rows written by publish() that the drain has not read yet (bounded; the outbox
        # stays the truth: the drain reads it whenever the tail doesn't continue its cursor).
        self._tail: deque[OutboxRow] = deque()
        self._in_flight: dict[int, OutboxRow] = {}
        self._retry: list[tuple[float, OutboxRow]] = []
        self._max_sent_seq = 0
        self._generation = 0
        self._broken: BaseException | None = None
        self._wake = asyncio.Event()  # new rows, a confirm, a failure: the drain looks again
        self._room = asyncio.Event()  # the outbox is below its bound
        self._room.set()
        self._empty = asyncio.Event()  # nothing waits in the outbox
        self._warned_level = 0
        self._task: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None
        self._stopping = False
        self._metrics = _Metrics(registry, self) if registry is not None else None

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
        self._task = asyncio.create_task(self._run(), name="publisher")

    async def stop(self, grace: float = 5.0) -> None:
        """Stops: no new events; waits up to `grace` s for confirms of what is in flight; the
        rest stays in the outbox for the next start. Does not close the outbox (its owner does)."""
        self._stopping = True
        self._room.set()  # wake publishers waiting for room: they raise ShuttingDown
        if self._pending:
            self._flush_pending()
        if self._task is not None:
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
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
        self._flush_acks()
        await self._close_connection()
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
                log.warning("outbox checkpoint failed: %s", _describe(exc))

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
            # Group commit: every publish() of this loop turn goes in one transaction.
            asyncio.get_running_loop().call_soon(self._flush_pending)
        await future

    async def wait_empty(self) -> None:
        """Returns when every event written so far is confirmed and out of the outbox."""
        while self.outbox.size or self._pending or self._acked:
            self._empty.clear()
            await self._empty.wait()

    async def publish_event(self, event: Event) -> None:
        await self.publish(event.routing_key, event.body, event.message_id)

    def _full(self) -> bool:
        return self.outbox.size + len(self._pending) >= self.outbox.max_events

    def _flush_pending(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
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
        if self._task is not None and len(self._tail) < _TAIL_MAX:
            self._tail.extend(written)
        self._update_room()
        self._wake.set()

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
                log.warning("broker connection lost or refused: %s", _describe(exc))
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
        log.info("broker connected; %d events in the outbox to send", self.outbox.size)
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
            self._update_room()

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            try:
                async with asyncio.timeout(5):
                    await conn.close()
            except Exception as exc:
                log.debug("closing the broker connection: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class _Metrics:
    """A prometheus-client collector reading a Publisher's plain counters at scrape time."""

    _COUNTERS = (
        ("tgc_events_published", "published", "Events confirmed by the broker."),
        ("tgc_events_resent", "resent", "Events sent again after a failure."),
        ("tgc_events_nacked", "nacked", "Events the broker nacked."),
        ("tgc_events_returned", "returned", "Events that came back unroutable."),
        ("tgc_publisher_reconnects", "reconnects", "Broker reconnections."),
    )

    def __init__(self, registry: Any, publisher: Publisher) -> None:
        self._publisher = publisher
        registry.register(self)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
