"""Catch-up after a stop (issue 11, item 13): what happened in a subscribed channel while the
service was down (edits and deletions the gap poll can't see, posts it can) is published
once when it starts again, from the update state each account saved in its session file.

Each test runs the stack a server runs (the accounts' pool, the Subscriber, the Publisher on
the real broker, the join map and outbox files) twice on the same files, the emulator's
world changing in between."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.utils import parse_peer
from model.joinmap import JoinMap
from model.pool import TeleClients
from model.telethon_internals import update_state
from service.outbox import Outbox
from service.publisher import Publisher
from service.subscriber import Subscriber
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.rabbitmq import Consumer, Rabbit
from tests.fixtures.wait import wait_for
from tests.service.subscription.flow import ACCOUNTS, NEWS, NEWS_ID, FakeMediaQueue


class Stack:
    """Pool, join map, outbox, publisher and subscriber on the files in `tmp`."""

    def __init__(self, sessions: Path, tmp: Path, rabbit: Rabbit) -> None:
        self.sessions, self.tmp, self.rabbit = sessions, tmp, rabbit

    async def start(self) -> Stack:
        await self.start_pool()
        await self.start_subscriber()
        return self

    async def start_pool(self) -> None:
        self.pool = TeleClients.from_sessions_dir(
            self.sessions, FAKEDC_API_ID, FAKEDC_API_HASH, request_timeout=10
        )
        await self.pool.start()

    async def start_subscriber(self) -> None:
        self.joinmap = JoinMap(self.tmp / "joinmap.db")
        self.outbox = Outbox(self.tmp / "outbox.db", max_events=100_000)
        r = self.rabbit
        self.publisher = Publisher(self.outbox, r.url, r.exchange, r.queue, reconnect_max_delay=0.5)
        await self.publisher.start()
        self.subscriber = Subscriber(
            self.pool, self.joinmap, self.publisher, poll_interval=3600, check_interval=3600,
            media_queue=FakeMediaQueue(),
        )  # fmt: skip
        await self.subscriber.start()

    async def stop(self) -> None:
        """As the server stops: the subscriber, then the accounts, then the publisher."""
        await self.subscriber.stop()
        await self.stop_rest()

    async def stop_rest(self) -> None:
        await self.pool.stop()
        await self.publisher.wait_empty()
        await self.publisher.stop(grace=1)
        self.outbox.close()
        self.joinmap.close()


def saved_channel_pts(session: Path, channel_id: int) -> int | None:
    """The channel's pts in the session file's update state (what a catch-up starts at)."""
    with sqlite3.connect(session) as db:
        row = db.execute("select pts from update_state where id = ?", (channel_id,)).fetchone()
    return None if row is None else int(row[0])


def new(msg_id: int) -> str:
    return f"{NEWS_ID}:{msg_id}:message.new"


def edited(msg: Any) -> str:
    return f"{NEWS_ID}:{msg.id}:message.edited:{msg.edit_date}"


def deleted(msg_id: int) -> str:
    return f"{NEWS_ID}:{msg_id}:message.deleted"


async def changes_while_down(rpc: Any, before: Any) -> list[str]:
    """Edits an old post and the last one, deletes two posts (one request) and one more,
    posts one: the ids of the events they must give."""
    old = await rpc.edit_message(NEWS, 3, "post 3, corrected")
    await rpc.edit_message(NEWS, before.id, "before the stop, corrected")
    twice = await rpc.edit_message(NEWS, before.id, "before the stop, corrected twice")
    await rpc.delete_messages(NEWS, [1, 2])
    await rpc.delete_messages(NEWS, [4])
    missed = await rpc.post_message(NEWS, "while down")
    return [edited(old), edited(twice), deleted(1), deleted(2), deleted(4), new(missed.id)]


async def after_restart(rpc: Any, consumer: Consumer, expected: list[str]) -> None:
    """Waits for the expected events, then for a post made after the start: what the
    catch-up brings comes before it, so nothing more of it is still on the way."""
    await consumer.wait_for_ids(expected)
    after = await rpc.post_message(NEWS, "after the start")
    await consumer.wait_for_ids([new(after.id)])


async def test_edits_and_deletions_made_while_down_are_published_once(
    fake_telegram: Any,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    rabbit: Rabbit,
) -> None:
    sessions = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    rpc = fake_telegram.dispatcher
    async with rabbit.consumer() as consumer:
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        await stack.subscriber.subscribe(parse_peer("@news"))
        before = await rpc.post_message(NEWS, "before the stop")
        await consumer.wait_for_ids([new(before.id)])
        await stack.stop()

        expected = await changes_while_down(rpc, before)

        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        try:
            await after_restart(rpc, consumer, expected)
        finally:
            await stack.stop()
    counts = consumer.counts()
    assert {i: counts[i] for i in expected} == {i: 1 for i in expected}
    assert counts[new(before.id)] == 1  # not published again by the catch-up
    texts = {m.message_id: m.body.get("message", {}).get("text") for m in consumer.messages}
    assert texts[expected[0]] == "post 3, corrected"
    assert texts[expected[1]] == "before the stop, corrected twice"


async def test_a_kill_loses_nothing_saved_before_it(
    fake_telegram: Any,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    rabbit: Rabbit,
) -> None:
    """As a SIGKILL would: the session files as they were on disk while the service ran
    (the update state its feed saved, nothing written at the stop) are what the next
    start finds."""
    sessions = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    rpc = fake_telegram.dispatcher
    async with rabbit.consumer() as consumer:
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        sub = await stack.subscriber.subscribe(parse_peer("@news"))
        before = await rpc.post_message(NEWS, "before the kill")
        await consumer.wait_for_ids([new(before.id)])
        session = sessions[0].parent / f"{sub['account']}.session"
        pts = rpc.world.chats[NEWS].pts
        await wait_for(
            lambda: saved_channel_pts(session, NEWS) == pts, what="the state saved while running"
        )
        killed = tmp_path / "killed"
        shutil.copytree(sessions[0].parent, killed, ignore=shutil.ignore_patterns("*.lock"))
        await stack.stop()
        shutil.rmtree(sessions[0].parent)
        shutil.copytree(killed, sessions[0].parent)

        expected = await changes_while_down(rpc, before)

        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        try:
            await after_restart(rpc, consumer, expected)
        finally:
            await stack.stop()
    counts = consumer.counts()
    assert {i: counts[i] for i in expected} == {i: 1 for i in expected}
    assert counts[new(before.id)] == 1


async def test_a_quiet_channel_is_caught_up_on_from_its_join(
    fake_telegram: Any,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    rabbit: Rabbit,
) -> None:
    """No update came from the channel between the join and the stop: its pts, read at the
    join, is what the catch-up starts from."""
    sessions = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    rpc = fake_telegram.dispatcher
    async with rabbit.consumer() as consumer:
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        await stack.subscriber.subscribe(parse_peer("@news"))
        await stack.stop()
        old = await rpc.edit_message(NEWS, 3, "post 3, corrected")
        await rpc.delete_messages(NEWS, [4])
        expected = [edited(old), deleted(4)]
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        try:
            await after_restart(rpc, consumer, expected)
        finally:
            await stack.stop()
    counts = consumer.counts()
    assert {i: counts[i] for i in expected} == {i: 1 for i in expected}


async def test_what_is_caught_up_before_the_subscriber_listens_waits_for_it(
    fake_telegram: Any,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    rabbit: Rabbit,
) -> None:
    """The accounts start (and catch up) before the subscription flow registers its
    callbacks, as in the server: what they fetched is held for it, not dropped."""
    sessions = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    rpc = fake_telegram.dispatcher
    async with rabbit.consumer() as consumer:
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        sub = await stack.subscriber.subscribe(parse_peer("@news"))
        await stack.stop()
        old = await rpc.edit_message(NEWS, 3, "post 3, corrected")
        await rpc.delete_messages(NEWS, [4])
        expected = [edited(old), deleted(4)]
        stack = Stack(sessions[0].parent, tmp_path, rabbit)
        await stack.start_pool()
        account = stack.pool.get(sub["account"])

        def caught_up() -> bool:
            state = update_state(account.client)
            return state is not None and state.channels.get(NEWS) == rpc.world.chats[NEWS].pts

        await wait_for(caught_up, what="the account's catch-up")
        await stack.start_subscriber()
        try:
            await after_restart(rpc, consumer, expected)
        finally:
            await stack.stop()
    counts = consumer.counts()
    assert {i: counts[i] for i in expected} == {i: 1 for i in expected}


async def test_what_comes_while_stopping_is_caught_up_on_next_start(
    fake_telegram: Any,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    rabbit: Rabbit,
) -> None:
    """An update pushed after the subscription flow stopped (the accounts still connected)
    is not published, and not counted as seen either: Telethon's own write of its update
    state at disconnect would cover it; the state saved is the one before it."""
    sessions = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    rpc = fake_telegram.dispatcher
    async with rabbit.consumer() as consumer:
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        sub = await stack.subscriber.subscribe(parse_peer("@news"))
        await stack.subscriber.stop()
        feed = stack.pool.get(sub["account"]).updates
        assert feed is not None and not feed.is_open
        late = await rpc.edit_message(NEWS, 3, "post 3, edited while stopping")
        await wait_for(lambda: feed.held == 1, what="the edit held by the stopped flow")
        await stack.stop_rest()
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        try:
            await after_restart(rpc, consumer, [edited(late)])
        finally:
            await stack.stop()
    assert consumer.counts()[edited(late)] == 1


async def test_a_channel_joined_before_its_updates_were_tracked_is_from_its_first_poll(
    fake_telegram: Any,
    telegram_session: Callable[..., Path],
    tmp_path: Path,
    rabbit: Rabbit,
) -> None:
    """Session files from before the update state was kept (or an account that stopped
    tracking the channel): the first poll after the start has it tracked again."""
    sessions = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    rpc = fake_telegram.dispatcher
    async with rabbit.consumer() as consumer:
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        sub = await stack.subscriber.subscribe(parse_peer("@news"))
        await stack.stop()
        session = sessions[0].parent / f"{sub['account']}.session"
        with sqlite3.connect(session) as db:
            db.execute("delete from update_state where id = ?", (NEWS,))
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()  # its first poll
        pts = rpc.world.chats[NEWS].pts
        await wait_for(lambda: saved_channel_pts(session, NEWS) == pts, what="NEWS tracked")
        await stack.stop()
        old = await rpc.edit_message(NEWS, 3, "post 3, corrected")
        stack = await Stack(sessions[0].parent, tmp_path, rabbit).start()
        try:
            await after_restart(rpc, consumer, [edited(old)])
        finally:
            await stack.stop()
    assert consumer.counts()[edited(old)] == 1
