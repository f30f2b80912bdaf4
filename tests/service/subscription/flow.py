"""What the subscription flow's tests share: the emulator's world, the `Flow` of one test
(pool, join map, publisher, subscriber, emulator), and small helpers that act through the
public surface only (the facade, its parts' public methods, join map rows, the emulator).

The fixtures that build them are in this directory's conftest.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from common.errors import AccountUnusable
from common.utils import parse_peer
from model.joinmap import JoinMap
from model.pool import TeleClients
from service.publisher import Publisher
from service.subscriber import Subscriber
from tests.fixtures.rabbitmq import Consumer

ACCOUNTS = (1001, 1002, 1003)
NEWS = 2001  # public broadcast channel, 5 posts, no account in it
TALK = 2002  # public megagroup, every account in it already
PHOTO = 7001
NEWS_ID = -(10**12) - NEWS
TALK_ID = -(10**12) - TALK
JOIN = "channels.joinChannel"


def world_spec() -> dict[str, Any]:
    """The emulator's world of these tests: three accounts, NEWS and TALK."""
    return {
        "users": [
            *({"id": u, "first_name": f"Acc{u}", "phone": f"1555000{u}"} for u in ACCOUNTS),
            {"id": 3001, "first_name": "Member"},
        ],
        "photos": [{"id": PHOTO}],
        "chats": [
            {"id": NEWS, "kind": "broadcast", "title": "News daily", "username": "news"},
            {"id": TALK, "kind": "megagroup", "title": "News talk", "username": "talk",
             "members": {**{str(u): 0 for u in ACCOUNTS}, "3001": 0}},
        ],
        "messages": [
            *({"chat": NEWS, "text": f"post {i}"} for i in range(1, 6)),
            {"chat": TALK, "text": "hello", "from_id": 3001},
        ],
    }  # fmt: skip


class Flow:
    """The pieces of one test: pool, join map, outbox, publisher, subscriber, the emulator."""

    def __init__(
        self,
        pool: TeleClients,
        joinmap: JoinMap,
        publisher: Publisher,
        subscriber: Subscriber,
        rpc: Any,
    ) -> None:
        self.pool, self.joinmap, self.publisher = pool, joinmap, publisher
        self.subscriber, self.rpc = subscriber, rpc


class FakeMediaQueue:
    """Stands in for the media processor: records what it is given."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def submit(self, media: Any) -> dict[str, Any]:
        self.submitted.append(media)
        return {"key": media.key, "state": "downloading", "url": None}

    def get(self, key: str) -> dict[str, Any] | None:
        return None


class ShiftedClock:
    """time.time, plus what a test adds."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


def of(consumer: Consumer, event: str) -> list[Any]:
    return [m for m in consumer.messages if m.routing_key == event]


async def settle(flow: Flow) -> None:
    """Waits until every event handed to the publisher is confirmed by the broker."""
    await asyncio.wait_for(flow.publisher.wait_empty(), 20)


def joins(flow: Flow) -> dict[str, int]:
    """channels.joinChannel calls per account so far."""
    return {f"acc{u}": flow.rpc.count(JOIN, u) for u in ACCOUNTS}


def uid(account: str) -> int:
    """The emulator's user id of an account named acc<user id>."""
    return int(account.removeprefix("acc"))


async def check(flow: Flow) -> None:
    """One account check, and the takeover batch it started (its own task) to its end."""
    await flow.subscriber.check_accounts()
    batch = flow.subscriber.takeover.batch
    if batch is not None:
        async with asyncio.timeout(20):
            await batch


async def replace_subscriber(flow: Flow, joinmap: JoinMap | None = None, **options: Any) -> None:
    """Stops the flow's subscriber and starts another in its place (the fixture stops it)."""
    await flow.subscriber.stop()
    flow.joinmap = joinmap or flow.joinmap
    options.setdefault("takeover_pace", 0.05)  # not 2 s: tests stay fast
    flow.subscriber = Subscriber(
        flow.pool, flow.joinmap, flow.publisher, poll_interval=3600, **options
    )
    await flow.subscriber.start()


async def ban(flow: Flow, name: str) -> None:
    """Bans the account in the emulator and lets it learn so (its next call)."""
    flow.rpc.deactivated_ban(uid(name))
    with pytest.raises(AccountUnusable):
        await flow.pool.get(name).get_entity(parse_peer("@talk"))  # it learns it is banned


def joined_by(flow: Flow, peer_id: int, accounts: list[str]) -> bool:
    sub = flow.joinmap.get(peer_id)
    return sub is not None and sub["state"] == "joined" and sub["account"] in accounts


def own(flow: Flow, account: str, msg: Any) -> int:
    """The id `account` knows a basic-group message by."""
    own_id = flow.rpc.world.own_id(uid(account), msg.id)
    assert own_id is not None
    return int(own_id)


async def post_to(flow: Flow, chat_id: int, text: str) -> Any:
    return await flow.rpc.post_message(chat_id, text, from_id=3001)


def texts(consumer: Consumer, peer_id: int) -> list[str]:
    """The texts of the chat's message.new events, in arrival order."""
    return [
        m.body["message"]["text"]
        for m in of(consumer, "message.new")
        if m.body["peer"]["id"] == peer_id
    ]
