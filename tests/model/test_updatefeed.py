"""model/updatefeed.py: updates held until the consumer opens the feed, and the update state
written only once what it covers was handled. Against a stand-in for what the feed uses of
a TelegramClient, which behaves as Telethon does: an update is applied to the MessageBox,
then handed to the handlers in a task of its own, in order (the end to end version, over
the emulator: tests/service/subscription/test_catchup.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from telethon._updates import EntityCache, SessionState
from telethon.sessions import SQLiteSession
from telethon.tl import types

from common.errors import TelegramError
from model.session import EntitySession
from model.updatefeed import UpdateFeed
from tests.fixtures.wait import wait_for

WHEN = datetime(2026, 1, 2, tzinfo=UTC)
Handler = Callable[[Any], Awaitable[None]]


class Loggers(dict[str, logging.Logger]):
    def __missing__(self, key: str) -> logging.Logger:
        return logging.getLogger(key)


class Client:
    """What UpdateFeed uses of a TelegramClient (its private parts under Telethon's names)."""

    def __init__(self) -> None:
        self._log = Loggers()
        self._message_box: Any = None
        self._mb_entity_cache = EntityCache()
        self._event_handler_tasks: set[asyncio.Task[None]] = set()
        self.handlers: list[Handler] = []

    def add_event_handler(self, callback: Handler, event: Any) -> None:
        self.handlers.append(callback)

    def receive(self, pts: int) -> asyncio.Task[None]:
        """An update of the account at `pts`: applied to the box, then dispatched."""
        self._message_box.set_state(types.updates.State(pts, 0, WHEN, 0, 0))
        task = asyncio.ensure_future(self._dispatch(pts))
        self._event_handler_tasks.add(task)
        task.add_done_callback(self._event_handler_tasks.discard)
        return task

    async def _dispatch(self, update: Any) -> None:
        for handler in list(self.handlers):
            await handler(update)


class Consumer:
    """The handler after the feed's: records updates, blocks while `gate` is clear."""

    def __init__(self, client: Client) -> None:
        self.entered = 0
        self.seen: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()
        client.add_event_handler(self.on_update, None)

    async def on_update(self, update: Any) -> None:
        self.entered += 1
        await self.gate.wait()
        self.seen.append(update)


@pytest.fixture
def session(tmp_path: Path) -> EntitySession:
    s = EntitySession(str(tmp_path / "acc.session"))
    yield s
    s.close()


@pytest.fixture
def client() -> Client:
    return Client()


def saved_pts(session: EntitySession) -> int | None:
    plain = SQLiteSession(session.filename)
    try:
        states = dict(plain.get_update_states())
    finally:
        plain.close()
    return states[0].pts if 0 in states else None


def logged_in(client: Client, pts: int = 10) -> None:
    client._message_box.load(SessionState(0, 0, False, pts, 0, int(WHEN.timestamp()), 0, None), [])


async def test_updates_wait_for_open(client: Client, session: EntitySession) -> None:
    feed = UpdateFeed(client, session)
    consumer = Consumer(client)  # registered after the feed: its handler runs second
    logged_in(client)
    client.receive(11)
    client.receive(12)
    await wait_for(lambda: feed.held == 2, what="both held")
    assert consumer.seen == [] and not feed.is_open
    feed.open()
    await wait_for(lambda: consumer.seen == [11, 12], what="both handed on")
    client.receive(13)
    await wait_for(lambda: consumer.seen == [11, 12, 13], what="the next one at once")


async def test_the_state_is_written_once_what_it_covers_was_handled(
    client: Client, session: EntitySession
) -> None:
    feed = UpdateFeed(client, session)
    consumer = Consumer(client)
    logged_in(client)
    feed.open()
    consumer.gate.clear()  # the consumer is busy with what comes now
    busy = client.receive(11)
    await wait_for(lambda: consumer.entered == 1, what="11 handed on")
    await feed.hold(within=0.05)  # 11 not handled in time: nothing written
    assert saved_pts(session) is None
    consumer.gate.set()
    await busy
    await feed.hold()
    assert saved_pts(session) == 11


async def test_nothing_held_is_written(client: Client, session: EntitySession) -> None:
    feed = UpdateFeed(client, session, save_every=0.01)
    Consumer(client)
    logged_in(client)
    feed.open()
    feed.start()
    await wait_for(lambda: saved_pts(session) == 10, what="the state written while running")
    await feed.hold()
    client.receive(11)  # held: the consumer stopped
    await wait_for(lambda: feed.held == 1, what="11 held")
    await feed.hold()  # returns at once: 11 is not handled
    await feed.stop()  # closed: no last write either
    assert saved_pts(session) == 10


async def test_stop_writes_a_last_time_when_open(client: Client, session: EntitySession) -> None:
    feed = UpdateFeed(client, session, save_every=3600)
    consumer = Consumer(client)
    logged_in(client)
    feed.open()
    feed.start()
    await client.receive(11)
    assert consumer.seen == [11]
    await feed.stop()
    assert saved_pts(session) == 11


async def test_follow_tracks_a_joined_channel_from_its_pts(
    client: Client, session: EntitySession
) -> None:
    feed = UpdateFeed(client, session)
    logged_in(client)
    channel = types.Channel(5, "News", types.ChatPhotoEmpty(), WHEN, access_hash=7)
    asked: list[Any] = []

    async def invoke(request: Any) -> Any:
        asked.append(request)
        full = types.ChannelFull(
            5, "", 0, 0, 0, types.PhotoEmpty(0), types.PeerNotifySettings(), [], pts=77
        )
        return types.messages.ChatFull(full, [channel], [])

    await feed.follow(types.Chat(8, "group", None, 1, WHEN, 1), invoke)  # not a channel
    await feed.follow(channel, invoke)
    await feed.follow(channel, invoke)  # tracked already: not asked again
    assert feed.follows(5) and len(asked) == 1

    async def failing(request: Any) -> Any:
        raise TelegramError("INTERNAL", "try later")

    other = types.Channel(6, "Talk", types.ChatPhotoEmpty(), WHEN, access_hash=9)
    await feed.follow(other, failing)  # logged: its first update starts it
    assert not feed.follows(6)


async def test_an_idle_feed_wakes_only_when_an_update_comes(
    client: Client, session: EntitySession
) -> None:
    feed = UpdateFeed(client, session, save_every=0.01)
    Consumer(client)
    logged_in(client)
    feed.open()
    feed.start()
    await wait_for(lambda: saved_pts(session) == 10, what="the first write after the start")
    await wait_for(lambda: feed.saver_idle, what="the saver asleep: nothing moved since")
    client.receive(11)
    await wait_for(lambda: saved_pts(session) == 11, what="the update's state written")
    await wait_for(lambda: feed.saver_idle, what="asleep again")
    await feed.stop()
