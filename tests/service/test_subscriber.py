"""The subscription flow end to end: the DC emulator (three accounts, stock Telethon over
MTProto) pushes posts, edits, deletions and kicks; the Subscriber turns them into events;
the Publisher puts them on the real broker; a consumer in the test reads the queue."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from common.errors import (
    AccountUnusable,
    AlreadySubscribed,
    NoAccountAvailable,
    NotSubscribed,
    PeerPrivate,
)
from common.utils import parse_peer
from model.account import AccountState
from model.joinmap import JoinMap
from model.pool import TeleClients
from service.publisher import Outbox, Publisher
from service.subscriber import FULL_RECHECK, Subscriber, _Recent
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.rabbitmq import Consumer, Rabbit

ACCOUNTS = (1001, 1002, 1003)
NEWS = 2001  # public broadcast channel, 5 posts, no account in it
TALK = 2002  # public megagroup, every account in it already
PHOTO = 7001
NEWS_ID = -(10**12) - NEWS
TALK_ID = -(10**12) - TALK


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    world = World.from_dict(
        {
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
        }
    )  # fmt: skip
    return TelegramRpc(world)


class Flow:
    """The pieces of one test: pool, join map, outbox, publisher, subscriber, the emulator."""

    def __init__(self, pool: TeleClients, joinmap: JoinMap, publisher: Publisher,
                 subscriber: Subscriber, rpc: Any) -> None:
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


@pytest.fixture
def media_queue() -> FakeMediaQueue:
    return FakeMediaQueue()


@pytest.fixture
async def flow(
    fake_telegram: Any, telegram_session: Callable[..., Path], tmp_path: Path, rabbit: Rabbit,
    media_queue: FakeMediaQueue,
) -> AsyncIterator[Flow]:
    paths = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    pool = TeleClients.from_sessions_dir(
        paths[0].parent, FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0,
        request_timeout=10,
    )
    await pool.start()
    joinmap = JoinMap(tmp_path / "joinmap.db")
    outbox = Outbox(tmp_path / "outbox.db", max_events=100_000)
    publisher = Publisher(outbox, rabbit.url, rabbit.exchange, rabbit.queue,
                          reconnect_max_delay=0.5)
    await publisher.start()
    subscriber = Subscriber(pool, joinmap, publisher, poll_interval=3600, check_interval=3600,
                            media_queue=media_queue, takeover_pace=0.05)
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


def of(consumer: Consumer, event: str) -> list[Any]:
    return [m for m in consumer.messages if m.routing_key == event]


async def settle(flow: Flow) -> None:
    """Waits until every event handed to the publisher is confirmed by the broker."""
    await asyncio.wait_for(flow.publisher.wait_empty(), 20)


# --- the bounded recent set -----------------------------------------------------------------


def test_recent_claims_once_and_forgets_the_oldest() -> None:
    recent = _Recent(3)
    assert recent.claim("a") and not recent.claim("a")
    for key in "bcd":
        assert recent.claim(key)
    assert "a" not in recent and "d" in recent
    assert recent.claim("a")  # forgotten, so new again
    recent.forget("a")
    assert recent.claim("a")


async def test_an_event_the_publisher_refused_is_not_marked_published(tmp_path: Path) -> None:
    from common.errors import ShuttingDown
    from service.publisher import make_event

    class Refusing:
        calls = 0

        async def publish_event(self, event: Any) -> None:
            self.calls += 1
            if self.calls == 1:
                raise ShuttingDown("stopping")

    joinmap = JoinMap(tmp_path / "j.db")
    subscriber = Subscriber(TeleClients([]), joinmap, Refusing())  # type: ignore[arg-type]
    event = make_event("message.deleted", {"id": NEWS_ID}, account="a", message={"id": 1})
    with pytest.raises(ShuttingDown):
        await subscriber._publish_once(event)
    assert await subscriber._publish_once(event)  # seen again (a replay): published now
    assert not await subscriber._publish_once(event)  # and only once
    joinmap.close()


async def test_stop_ends_the_poll_loop_when_a_wake_meets_the_cancel(tmp_path: Path) -> None:
    """A wake-up and stop()'s cancel in the same loop turn: the poll loop must end. (Python
    3.11's wait_for returned the wake-up's result and swallowed the cancel, bpo-42130: the
    loop went on and stop() never returned.)"""

    class Quiet:
        async def publish_event(self, event: Any) -> None:
            pass

    joinmap = JoinMap(tmp_path / "j.db")
    subscriber = Subscriber(
        TeleClients([]), joinmap, Quiet(), poll_interval=3600, check_interval=3600  # type: ignore[arg-type]
    )
    await subscriber.start()
    for _ in range(3):
        await asyncio.sleep(0)  # the first (empty) poll round is over: the loop waits
    tasks = list(subscriber._tasks)
    subscriber.poll_soon()  # the wake-up completes the loop's wait on the next turn...
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(subscriber.stop())  # ...and the cancel lands in it
    done, _ = await asyncio.wait({stopping}, timeout=5)  # (wait: it doesn't cancel stop())
    assert stopping in done and all(t.done() for t in tasks)
    joinmap.close()


async def test_the_watermark_waits_for_ids_handled_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.subscriber as subscriber_module

    monkeypatch.setattr(subscriber_module, "GAP_WAIT", 0.05)
    joinmap = JoinMap(tmp_path / "j.db")
    joinmap.record_join(NEWS_ID, "acc1001", type="channel")
    joinmap.set_last_message_id(NEWS_ID, 5)
    subscriber = Subscriber(TeleClients([]), joinmap, None)  # type: ignore[arg-type]
    subscriber._advance(NEWS_ID, 7)  # 6 is still being handled by another task
    assert joinmap.last_message_id(NEWS_ID) == 5
    subscriber._advance(NEWS_ID, 6)
    assert joinmap.last_message_id(NEWS_ID) == 7
    assert subscriber._ahead == {}
    # The timer armed while 7 waited for 6 fires (it unlists itself) and finds no gap.
    assert NEWS_ID in subscriber._gap_timers
    await asyncio.wait_for(_until(lambda: NEWS_ID not in subscriber._gap_timers), 5)
    assert subscriber._poll_now == set()  # no gap: no poll
    subscriber._advance(NEWS_ID, 9)  # 8 never comes: a lost push
    assert joinmap.last_message_id(NEWS_ID) == 7
    await asyncio.wait_for(_until(lambda: NEWS_ID in subscriber._poll_now), 5)
    joinmap.close()


# --- joins and leaves -------------------------------------------------------------------------


async def test_subscribe_then_posts_edits_deletes_become_events(
    flow: Flow, rabbit: Rabbit
) -> None:
    async with rabbit.consumer() as consumer:
        sub = await flow.subscriber.subscribe(parse_peer("@news"))
        assert sub["peer"] == {"id": NEWS_ID, "type": "channel", "title": "News daily",
                               "username": "news"}
        assert sub["state"] == "joined" and sub["last_message_id"] == 5  # history is not news
        assert flow.joinmap.list() == [sub]
        with pytest.raises(AlreadySubscribed):
            await flow.subscriber.subscribe(parse_peer(str(NEWS_ID)))

        post = await flow.rpc.post_message(NEWS, "breaking")
        await consumer.wait_for_ids([f"{NEWS_ID}:{post.id}:message.new"])
        edited = await flow.rpc.edit_message(NEWS, post.id, "breaking, corrected")
        await consumer.wait_for_ids([f"{NEWS_ID}:{post.id}:message.edited:{edited.edit_date}"])
        await flow.rpc.delete_messages(NEWS, [post.id])
        await consumer.wait_for_ids([f"{NEWS_ID}:{post.id}:message.deleted"])
        await settle(flow)

    changed = of(consumer, "subscription.changed")
    assert len(changed) == 1 and changed[0].body["state"] == "joined"
    assert changed[0].body["peer"]["id"] == NEWS_ID
    new = of(consumer, "message.new")
    assert len(new) == 1
    body = new[0].body
    assert body["event"] == "message.new" and body["account"] == sub["account"]
    assert body["message"]["id"] == post.id and body["message"]["text"] == "breaking"
    assert body["message"]["peer_id"] == NEWS_ID and body["at"].endswith("Z")
    assert of(consumer, "message.edited")[0].body["message"]["text"] == "breaking, corrected"
    assert of(consumer, "message.deleted")[0].body["message"] == {"id": post.id,
                                                                  "peer_id": NEWS_ID}
    assert all(m.delivery_mode == 2 for m in consumer.messages)
    assert flow.joinmap.last_message_id(NEWS_ID) == post.id


async def test_files_of_new_posts_go_to_the_media_queue(
    flow: Flow, rabbit: Rabbit, media_queue: FakeMediaQueue
) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    async with rabbit.consumer() as consumer:
        post = await flow.rpc.post_message(NEWS, "a picture", media={"photo": PHOTO})
        await consumer.wait_for_ids([f"{NEWS_ID}:{post.id}:message.new"])
    descriptor = of(consumer, "message.new")[0].body["message"]["media"]
    assert descriptor["type"] == "photo" and descriptor["state"] == "downloading"
    assert [m.key for m in media_queue.submitted] == [descriptor["key"]]
    assert media_queue.submitted[0].account == of(consumer, "message.new")[0].body["account"]


async def test_unsubscribe_leaves_and_says_so(flow: Flow, rabbit: Rabbit) -> None:
    with pytest.raises(NotSubscribed):
        await flow.subscriber.unsubscribe(parse_peer("@news"))
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    user_id = int(sub["account"].removeprefix("acc"))
    news = flow.rpc.world.chats[NEWS]
    assert flow.rpc.world.is_member(news, user_id)
    async with rabbit.consumer() as consumer:
        left = await flow.subscriber.unsubscribe(parse_peer("@news"))
        assert left["state"] == "left"
        await flow.rpc.post_message(NEWS, "nobody listens")
        await consumer.wait_until(lambda c: len(of(c, "subscription.changed")) == 2)
        await settle(flow)
    assert [m.body["state"] for m in of(consumer, "subscription.changed")] == ["joined", "left"]
    assert of(consumer, "message.new") == []
    assert flow.joinmap.list() == []
    assert not flow.rpc.world.is_member(news, user_id)  # it really left


# --- joins Telegram refuses: CHANNELS_TOO_MUCH, INVITE_REQUEST_SENT ------------------------

JOIN = "channels.joinChannel"


def joins(flow: Flow) -> dict[str, int]:
    return {f"acc{u}": flow.rpc.count(JOIN, u) for u in ACCOUNTS}


class ShiftedClock:
    """time.time, plus what a test adds."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


async def test_an_account_telegram_finds_full_is_skipped_and_the_join_moves_on(
    flow: Flow,
) -> None:
    clock = ShiftedClock()
    await _replace_subscriber(flow, clock=clock)
    # acc1001 (the pool's first pick) is in chats the join map doesn't know: Telegram says
    # it is full, every time it is asked.
    flow.rpc.fail(JOIN, 400, "CHANNELS_TOO_MUCH", times=1000, user_id=1001)
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    assert sub["state"] == "joined" and sub["account"] != "acc1001"
    assert joins(flow)["acc1001"] == 1 and sum(joins(flow).values()) == 2
    await flow.subscriber.unsubscribe(parse_peer("@news"))
    # Marked full: not asked again (its join map count hasn't dropped)...
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    assert sub["account"] != "acc1001" and joins(flow)["acc1001"] == 1
    await flow.subscriber.unsubscribe(parse_peer("@news"))
    clock.shift = FULL_RECHECK + 1  # ...until the recheck time has passed
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    assert sub["account"] != "acc1001" and joins(flow)["acc1001"] == 2


async def test_when_telegram_finds_every_account_full_the_answer_is_503(flow: Flow) -> None:
    flow.rpc.world.channel_limit = 1  # each account is in TALK already
    with pytest.raises(NoAccountAvailable, match="channel limit: acc1001, acc1002, acc1003"):
        await flow.subscriber.subscribe(parse_peer("@news"))
    assert joins(flow) == dict.fromkeys(joins(flow), 1)  # each tried once
    with pytest.raises(NoAccountAvailable):
        await flow.subscriber.subscribe(parse_peer("@news"))
    assert sum(joins(flow).values()) == 3  # all marked full: nobody asked again
    assert flow.joinmap.list() == []
    # A leave through the API frees the mark of that account.
    flow.rpc.world.channel_limit = 2
    flow.joinmap.record_join(
        NEWS_ID, "acc1002", type="channel", title="News daily", username="news"
    )
    flow.rpc.add_member(1002, NEWS)
    await flow.subscriber.unsubscribe(parse_peer("@news"))
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    assert sub["account"] == "acc1002" and sum(joins(flow).values()) == 4


async def test_a_chat_that_needs_approval_gets_one_request_and_a_403(flow: Flow) -> None:
    news = flow.rpc.world.chats[NEWS]
    news.join_request = True
    with pytest.raises(PeerPrivate, match="admin's approval") as caught:
        await flow.subscriber.subscribe(parse_peer("@news"))
    assert caught.value.code == "PEER_PRIVATE" and caught.value.status == 403
    assert sum(joins(flow).values()) == 1  # no other account files a second request
    (asker,) = news.requests
    assert f"account acc{asker}" in caught.value.message
    assert flow.joinmap.list() == []
    # Asked again before the approval: the same account, still one request.
    with pytest.raises(PeerPrivate):
        await flow.subscriber.subscribe(parse_peer("t.me/news"))
    assert joins(flow) == {f"acc{u}": 2 if u == asker else 0 for u in ACCOUNTS}
    assert news.requests == [asker]
    flow.rpc.add_member(asker, NEWS)  # an admin approves it
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    assert sub["state"] == "joined" and sub["account"] == f"acc{asker}"
    assert sum(joins(flow).values()) == 3


async def test_three_accounts_in_one_chat_publish_each_event_once(
    flow: Flow, rabbit: Rabbit
) -> None:
    await flow.subscriber.subscribe(parse_peer("@talk"))  # every account is in it
    async with rabbit.consumer() as consumer:
        posts = [await flow.rpc.post_message(TALK, f"msg {i}", from_id=3001) for i in range(5)]
        ids = [f"{TALK_ID}:{p.id}:message.new" for p in posts]
        await consumer.wait_for_ids(ids)
        # every account got every push: wait until the last one was handled too
        await asyncio.wait_for(_until(lambda: flow.subscriber.duplicates >= 2 * len(posts)), 20)
        await settle(flow)
    counts = consumer.counts()
    assert [counts[i] for i in ids] == [1] * len(posts)
    assert flow.subscriber.duplicates >= 2 * len(posts)


async def test_a_kick_marks_the_join_map_and_says_so(flow: Flow, rabbit: Rabbit) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    user_id = int(sub["account"].removeprefix("acc"))
    async with rabbit.consumer() as consumer:
        await flow.rpc.kick(user_id, NEWS)
        await consumer.wait_until(
            lambda c: any(m.body["state"] == "kicked" for m in of(c, "subscription.changed"))
        )
    kicked = flow.joinmap.get(NEWS_ID)
    assert kicked is not None and kicked["state"] == "kicked"
    assert flow.joinmap.list() == []


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
    ]
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


async def test_a_banned_accounts_chats_move_to_another(flow: Flow, rabbit: Rabbit) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    banned = flow.pool.get(sub["account"])
    flow.rpc.deactivated_ban(int(banned.name.removeprefix("acc")))
    with pytest.raises(AccountUnusable):
        await banned.get_entity(parse_peer("@talk"))  # the account learns it is banned
    assert banned.state == AccountState.BANNED
    async with rabbit.consumer() as consumer:
        await _check(flow)
        moved = flow.joinmap.get(NEWS_ID)
        assert moved is not None and moved["state"] == "joined"
        assert moved["account"] != banned.name
        post = await flow.rpc.post_message(NEWS, "after the move")
        await consumer.wait_for_ids([f"{NEWS_ID}:{post.id}:message.new"])
        await settle(flow)
    states = [(m.body["account"], m.body["state"]) for m in of(consumer, "subscription.changed")]
    assert states == [
        (banned.name, "joined"),  # the subscribe, waiting in the durable queue
        (banned.name, "banned_account"),
        (moved["account"], "joined"),
    ]


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the subscriber has no event for this
        await asyncio.sleep(0.01)


async def _check(flow: Flow) -> None:
    """One account check, and the takeover batch it started (its own task) to its end."""
    await flow.subscriber.check_accounts()
    batch = flow.subscriber._takeover
    if batch is not None:
        async with asyncio.timeout(20):
            await batch


async def test_after_a_restart_replayed_updates_are_not_news(flow: Flow, rabbit: Rabbit) -> None:
    """A new Subscriber (empty recent set, as after a restart) meets updates Telethon
    replays from before: the join map's watermark says they were published."""
    from datetime import UTC, datetime

    from telethon.tl import types

    await flow.subscriber.subscribe(parse_peer("@news"))
    post = await flow.rpc.post_message(NEWS, "before the restart")
    await asyncio.wait_for(_until(lambda: flow.joinmap.last_message_id(NEWS_ID) == post.id), 20)
    fresh = Subscriber(flow.pool, flow.joinmap, flow.publisher, poll_interval=3600)
    replayed = types.UpdateNewChannelMessage(
        message=types.Message(
            id=post.id, peer_id=types.PeerChannel(NEWS), date=datetime.now(UTC),
            message="before the restart",
        ),
        pts=0, pts_count=1,
    )
    await fresh.start()
    try:
        await fresh._on_update(flow.pool.get("acc1001"), replayed)
    finally:
        await fresh.stop()
    assert fresh.published == 0 and fresh.duplicates == 1


async def test_after_an_account_reconnects_its_chats_are_polled(
    flow: Flow, rabbit: Rabbit
) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    flow.rpc.drop_next_posts(NEWS, 2)
    lost = [await flow.rpc.post_message(NEWS, f"while away {i}") for i in range(2)]
    account = flow.pool.get(sub["account"])
    # The account was seen disconnected by the last check; now it is back.
    flow.subscriber._states[account.name] = AccountState.DISCONNECTED
    assert account.state == AccountState.OK
    async with rabbit.consumer() as consumer:
        await flow.subscriber.check_accounts()
        await consumer.wait_for_ids([f"{NEWS_ID}:{p.id}:message.new" for p in lost])


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
    await flow.subscriber._poll_round([NEWS_ID, TALK_ID], pace=0)
    # NEWS met the wait (on the one account that knows it by id); TALK was not asked at all
    assert flow.rpc.count("messages.getHistory") == 1


# --- orphaned chats: no account could take them over ---------------------------------------


def test_the_rejoin_backoff_spaces_tries_and_doubles_up_to_its_cap() -> None:
    from service.subscriber import _Backoff

    now = [100.0]
    backoff = _Backoff(30.0, 100.0, clock=lambda: now[0])
    assert backoff.due(1)  # never failed: at once
    waits = []
    for _ in range(4):
        waits.append(backoff.failed(1))
        assert not backoff.due(1)
        now[0] += waits[-1] - 0.01
        assert not backoff.due(1)  # not a moment before its time
        now[0] += 0.01
        assert backoff.due(1)
    assert waits == [30.0, 60.0, 100.0, 100.0]
    assert backoff.due(2)  # per key
    backoff.failed(1)
    backoff.all_due()  # an account became usable: due now, the wait reached kept
    assert backoff.due(1) and backoff.failed(1) == 100.0
    backoff.keep_only([2])
    assert backoff.due(1) and backoff.failed(1) == 30.0  # forgotten: from the start


async def _replace_subscriber(flow: Flow, joinmap: JoinMap | None = None, **options: Any) -> None:
    """Stops the flow's subscriber and starts another in its place (the fixture stops it)."""
    await flow.subscriber.stop()
    flow.joinmap = joinmap or flow.joinmap
    options.setdefault("takeover_pace", 0.05)  # not 2 s: tests stay fast
    flow.subscriber = Subscriber(
        flow.pool, flow.joinmap, flow.publisher, poll_interval=3600, **options
    )
    await flow.subscriber.start()


async def _ban(flow: Flow, name: str) -> None:
    flow.rpc.deactivated_ban(int(name.removeprefix("acc")))
    with pytest.raises(AccountUnusable):
        await flow.pool.get(name).get_entity(parse_peer("@talk"))  # it learns it is banned


async def _orphan_news(flow: Flow) -> tuple[str, list[str]]:
    """@news joined by one account, the two others full (channel_limit=1: each is in TALK,
    as in the emulator), then that account banned: nobody can take NEWS over."""
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    others = [tc.name for tc in flow.pool if tc.name != sub["account"]]
    for name in others:
        flow.joinmap.record_join(
            TALK_ID, name, type="megagroup", title="News talk", username="talk"
        )
    await _ban(flow, sub["account"])
    await asyncio.wait_for(_until(lambda: flow.joinmap.orphaned() == [NEWS_ID]), 20)
    return sub["account"], others


def _joined_by(flow: Flow, peer_id: int, accounts: list[str]) -> bool:
    sub = flow.joinmap.get(peer_id)
    return sub is not None and sub["state"] == "joined" and sub["account"] in accounts


def _said_joined(consumer: Consumer, peer_id: int, accounts: list[str]) -> bool:
    """Whether a subscription.changed says one of `accounts` joined the chat."""
    return any(
        m.body["peer"]["id"] == peer_id
        and m.body["state"] == "joined"
        and m.body["account"] in accounts
        for m in of(consumer, "subscription.changed")
    )


async def test_an_orphaned_chat_is_taken_over_once_an_account_has_room(
    flow: Flow, rabbit: Rabbit
) -> None:
    await _replace_subscriber(
        flow, channel_limit=1, check_interval=0.05, rejoin_backoff=0.2, rejoin_backoff_max=1.0
    )
    banned, others = await _orphan_news(flow)
    # GET /api/v1/subscriptions still shows it: nobody in it, its account banned.
    shown = [s for s in flow.joinmap.subscriptions() if s["peer"]["id"] == NEWS_ID]
    assert [(s["account"], s["state"]) for s in shown] == [(banned, "banned_account")]
    missed = await flow.rpc.post_message(NEWS, "while nobody listened")
    async with rabbit.consumer() as consumer:
        from model.joinmap import State

        for name in others:  # room again (as after a DELETE of TALK)
            flow.joinmap.set_state(TALK_ID, name, State.LEFT)
        await asyncio.wait_for(_until(lambda: _joined_by(flow, NEWS_ID, others)), 20)
        await consumer.wait_for_ids([f"{NEWS_ID}:{missed.id}:message.new"])  # polled
        await consumer.wait_until(lambda c: _said_joined(c, NEWS_ID, others))
    taker = flow.joinmap.get(NEWS_ID)
    assert taker is not None and flow.joinmap.orphaned() == []
    news = flow.rpc.world.chats[NEWS]
    assert flow.rpc.world.is_member(news, int(taker["account"].removeprefix("acc")))


async def test_an_orphaned_chat_survives_a_restart_and_is_joined_at_start(
    flow: Flow, rabbit: Rabbit, tmp_path: Path
) -> None:
    await _replace_subscriber(flow, channel_limit=1, check_interval=0.05)
    _, others = await _orphan_news(flow)
    await flow.subscriber.stop()
    flow.joinmap.close()
    reopened = JoinMap(tmp_path / "joinmap.db")  # the fixture's file, as the next start opens it
    assert reopened.orphaned() == [NEWS_ID]
    async with rabbit.consumer() as consumer:
        # The next start has room (a higher limit here; a new account would do the same).
        # No check interval to wait for: the first check runs at start.
        await _replace_subscriber(flow, reopened, check_interval=3600)
        await asyncio.wait_for(_until(lambda: _joined_by(flow, NEWS_ID, others)), 20)
        await consumer.wait_until(lambda c: _said_joined(c, NEWS_ID, others))


async def test_an_orphan_is_tried_at_once_when_a_flood_wait_ends(flow: Flow) -> None:
    # A long backoff: only the accounts' return to ok can bring the next try in time.
    await _replace_subscriber(flow, check_interval=0.05, rejoin_backoff=3600)
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    others = [tc.name for tc in flow.pool if tc.name != sub["account"]]
    flow.rpc.flood_wait("channels.joinChannel", 1, times=2)  # each other account meets one
    flow.rpc.reset_counts()
    await _ban(flow, sub["account"])
    await asyncio.wait_for(_until(lambda: flow.joinmap.orphaned() == [NEWS_ID]), 20)
    await asyncio.wait_for(_until(lambda: _joined_by(flow, NEWS_ID, others)), 20)
    # Two joins met the wait, one took the chat: none while the accounts waited.
    assert flow.rpc.count("channels.joinChannel") == 3


async def test_deleting_an_orphaned_chat_ends_its_takeover(flow: Flow, rabbit: Rabbit) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    for tc in flow.pool:  # the other accounts first: none is left to take NEWS over
        if tc.name != sub["account"]:
            await _ban(flow, tc.name)
    await _ban(flow, sub["account"])
    await _check(flow)
    assert flow.joinmap.orphaned() == [NEWS_ID]
    left = await flow.subscriber.unsubscribe(parse_peer("@news"))
    assert (left["account"], left["state"]) == (sub["account"], "left")
    assert flow.joinmap.orphaned() == [] and flow.joinmap.subscriptions() == []
    with pytest.raises(NotSubscribed):
        await flow.subscriber.unsubscribe(parse_peer("@news"))


# --- takeovers of many chats: paced, beside the API, stopped by a flood wait -------------------

FEEDS = 6101  # the first of the public channels `_add_feeds` adds


def _add_feeds(flow: Flow, account: str, n: int) -> list[int]:
    """n public channels (@feed0, ...) `account` is in, as after a subscribe through it;
    returns their marked ids in the join map's order (as `orphaned()` lists them)."""
    from tests.fakedc.world import ChatSpec

    ids = []
    for i in range(n):
        title, username = f"Feed {i}", f"feed{i}"
        flow.rpc.world.add_chat(
            ChatSpec(id=FEEDS + i, kind="broadcast", title=title, username=username)
        )
        peer_id = -(10**12) - (FEEDS + i)
        flow.joinmap.record_join(peer_id, account, type="channel", title=title, username=username)
        ids.append(peer_id)
    return sorted(ids)


def _join_times(flow: Flow) -> list[float]:
    """When each channels.joinChannel is sent from now on (time.monotonic())."""
    times: list[float] = []

    def observe(method: str, error: str | None, seconds: float) -> None:
        if method == "channels.JoinChannel":
            times.append(time.monotonic() - seconds)

    flow.pool.observe_calls(observe)
    return times


async def test_a_banned_accounts_chats_are_said_at_once_and_joined_paced(
    flow: Flow, rabbit: Rabbit
) -> None:
    pace = 0.1
    await _replace_subscriber(flow, check_interval=3600, takeover_pace=pace)
    feeds = _add_feeds(flow, "acc1001", 5)
    joins = _join_times(flow)
    await _ban(flow, "acc1001")
    async with rabbit.consumer() as consumer:
        await _check(flow)
        assert flow.joinmap.orphaned() == []
        await consumer.wait_until(lambda c: len(of(c, "subscription.changed")) == 10)
    assert len(joins) == 5
    gaps = [b - a for a, b in itertools.pairwise(joins)]
    assert min(gaps) >= pace - 0.001, gaps  # a burst: a few ms apart
    said = [(m.body["peer"]["id"], m.body["state"]) for m in of(consumer, "subscription.changed")]
    # Every chat's ban is said before the first join.
    assert sorted(said[:5]) == [(p, "banned_account") for p in feeds]
    assert sorted(said[5:]) == [(p, "joined") for p in feeds]


async def test_the_api_and_the_account_check_are_served_during_a_takeover_batch(
    flow: Flow,
) -> None:
    await _replace_subscriber(flow, check_interval=3600, takeover_pace=0.3)
    feeds = _add_feeds(flow, "acc1001", 4)
    await _ban(flow, "acc1001")
    await flow.subscriber.check_accounts()  # returns with the batch under way
    batch = flow.subscriber._takeover
    assert batch is not None and not batch.done()
    await asyncio.wait_for(_until(lambda: len(flow.joinmap.orphaned()) == 3), 20)
    # The batch waits its pace (0.3 s) before the next join: the API is not held up by the
    # three joins still to come, nor is the next account check.
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    await flow.subscriber.unsubscribe(parse_peer("@news"))
    await flow.subscriber.check_accounts()
    assert sub["state"] == "joined"
    assert len(flow.joinmap.orphaned()) >= 2 and not batch.done()
    async with asyncio.timeout(20):
        await batch
    assert all(_joined_by(flow, p, ["acc1002", "acc1003"]) for p in feeds)


async def test_a_flood_wait_stops_the_takeover_batch_and_the_rest_move_when_it_ends(
    flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    # A long backoff: only the accounts' return to ok can bring the next try in time.
    await _replace_subscriber(flow, check_interval=3600, rejoin_backoff=3600, takeover_pace=0.05)
    feeds = _add_feeds(flow, "acc1001", 4)
    takers = ["acc1002", "acc1003"]
    flow.rpc.flood_wait("channels.joinChannel", 1, times=2)  # each taker meets one
    flow.rpc.reset_counts()
    caplog.set_level(logging.WARNING, logger="service.subscriber")
    await _ban(flow, "acc1001")
    await _check(flow)
    # The first chat met the wait on both takers; the batch stopped there: the other chats
    # were not tried (none backed off), none is asked of a pool that just said wait.
    assert flow.rpc.count("channels.joinChannel") == 2
    assert flow.joinmap.orphaned() == feeds
    assert [p for p in feeds if not flow.subscriber._rejoin_after.due(p)] == feeds[:1]
    assert "takeovers stopped by a flood wait of 1 s" in caplog.text
    await _check(flow)  # a check during the wait sees the takers waiting: nobody is asked
    assert flow.rpc.count("channels.joinChannel") == 2
    waiting = [flow.pool.get(n) for n in takers]
    await asyncio.wait_for(_until(lambda: all(tc.state == AccountState.OK for tc in waiting)), 5)
    await _check(flow)  # the takers are ok again: every chat at once, backoff or not
    assert flow.joinmap.orphaned() == []
    assert all(_joined_by(flow, p, takers) for p in feeds)
    assert flow.rpc.count("channels.joinChannel") == 2 + len(feeds)


async def test_stop_ends_a_takeover_batch_at_once(flow: Flow) -> None:
    await _replace_subscriber(flow, check_interval=3600, takeover_pace=30)
    _add_feeds(flow, "acc1001", 3)
    await _ban(flow, "acc1001")
    await flow.subscriber.check_accounts()
    await asyncio.wait_for(_until(lambda: len(flow.joinmap.orphaned()) == 2), 20)
    batch = flow.subscriber._takeover
    assert batch is not None and not batch.done()  # 30 s to the next join
    async with asyncio.timeout(2):
        await flow.subscriber.stop()
    assert batch.cancelled()


# --- basic groups: message ids per account ------------------------------------------------------

GROUP = 4001  # a basic group every account is in already (joined outside the API)
GROUP_ID = -GROUP
GROUP_LINK = "https://t.me/+BasicGroup4001"


def _add_basic_group(flow: Flow) -> Any:
    """Adds GROUP, with private chats that give one message another id for each account
    (acc1002's box holds one message more than acc1001's, acc1003's two). Returns its last
    message (history at the join)."""
    from tests.fakedc.world import ChatSpec, MessageSpec

    world = flow.rpc.world
    members = {**dict.fromkeys(ACCOUNTS, 0), 3001: 0}
    world.add_chat(
        ChatSpec(
            id=GROUP,
            kind="group",
            title="Small group",
            creator_id=3001,
            invite="BasicGroup4001",
            members=members,
        )
    )
    for n, uid in enumerate(ACCOUNTS):
        for i in range(n):
            world.add_message(MessageSpec(to_user=uid, from_id=3001, text=f"dm {i}"))
    return world.add_message(MessageSpec(chat=GROUP, from_id=3001, text="history"))


def _own(flow: Flow, account: str, msg: Any) -> int:
    """The id `account` knows a basic-group message by."""
    own = flow.rpc.world.own_id(int(account.removeprefix("acc")), msg.id)
    assert own is not None
    return int(own)


def _cursor(flow: Flow, account: str) -> int:
    return flow.joinmap.member_last_message_id(GROUP_ID, account)


async def _cursor_reaches(flow: Flow, account: str, msg: Any) -> None:
    await asyncio.wait_for(_until(lambda: _cursor(flow, account) == _own(flow, account, msg)), 20)


def _group_texts(consumer: Consumer) -> list[str]:
    return [
        m.body["message"]["text"]
        for m in of(consumer, "message.new")
        if m.body["peer"]["id"] == GROUP_ID
    ]


async def _post(flow: Flow, text: str) -> Any:
    return await flow.rpc.post_message(GROUP, text, from_id=3001)


async def test_missed_pushes_in_a_basic_group_are_found_by_the_poll_once(
    flow: Flow, rabbit: Rabbit
) -> None:
    history = _add_basic_group(flow)
    sub = await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    account = sub["account"]
    assert (sub["peer"]["id"], sub["peer"]["type"]) == (GROUP_ID, "group")
    # The watermark starts at the newest message, in the joining account's own ids.
    assert sub["last_message_id"] == _own(flow, account, history) == _cursor(flow, account)
    async with rabbit.consumer() as consumer:
        flow.rpc.drop_next_posts(GROUP, 3)
        lost = [await _post(flow, f"lost {i}") for i in range(3)]
        assert await flow.subscriber.poll_chat(GROUP_ID) == 3
        assert _cursor(flow, account) == _own(flow, account, lost[-1])
        assert await flow.subscriber.poll_chat(GROUP_ID) == 0  # nothing twice
        before = flow.subscriber.duplicates
        # The next push follows a pts gap on each of the three accounts: each fetches the
        # lost ones again (getDifference), 4 sights each, 12 in all, one of them published.
        pushed = await _post(flow, "pushed")
        await consumer.wait_until(lambda c: "pushed" in _group_texts(c))
        await asyncio.wait_for(_until(lambda: flow.subscriber.duplicates - before >= 11), 20)
        assert await flow.subscriber.poll_chat(GROUP_ID) == 0
        await settle(flow)
    assert _group_texts(consumer) == ["lost 0", "lost 1", "lost 2", "pushed"]
    assert set(consumer.counts().values()) == {1}
    assert _cursor(flow, account) == _own(flow, account, pushed)


async def test_two_accounts_in_a_basic_group_publish_each_message_once(
    flow: Flow, rabbit: Rabbit
) -> None:
    _add_basic_group(flow)
    await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    with pytest.raises(AlreadySubscribed):  # the pool's next account: recorded all the same
        await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    accounts = [m["account"] for m in flow.joinmap.memberships(GROUP_ID) if m["state"] == "joined"]
    assert len(accounts) == 2
    async with rabbit.consumer() as consumer:
        posts = [await _post(flow, f"msg {i}") for i in range(5)]
        assert len({_own(flow, a, posts[0]) for a in accounts}) == 2  # one message, two ids
        # Each account's cursor follows its pushes, in its own ids.
        await asyncio.wait_for(
            _until(lambda: all(_cursor(flow, a) == _own(flow, a, posts[-1]) for a in accounts)), 20
        )
        flow.rpc.drop_next_posts(GROUP, 2)
        lost = [await _post(flow, f"lost {i}") for i in range(2)]
        assert await flow.subscriber.poll_chat(GROUP_ID) == 2  # as one of the two
        assert await flow.subscriber.poll_chat(GROUP_ID) == 0
        await consumer.wait_until(lambda c: len(_group_texts(c)) == 7)
        await settle(flow)
    assert _group_texts(consumer) == [*(f"msg {i}" for i in range(5)), "lost 0", "lost 1"]
    assert set(consumer.counts().values()) == {1}
    assert max(_cursor(flow, a) - _own(flow, a, lost[-1]) for a in accounts) == 0


async def test_a_basic_group_id_past_the_cursor_is_settled_by_a_poll_as_its_account(
    flow: Flow, rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.subscriber as subscriber_module
    from tests.fakedc.world import MessageSpec

    monkeypatch.setattr(subscriber_module, "GAP_WAIT", 0.05)
    _add_basic_group(flow)
    account = (await flow.subscriber.subscribe(parse_peer(GROUP_LINK)))["account"]
    uid = int(account.removeprefix("acc"))
    async with rabbit.consumer() as consumer:
        first = await _post(flow, "before a private message")
        await _cursor_reaches(flow, account, first)
        # A private message takes the account's next id: the group's next one skips it.
        flow.rpc.world.add_message(MessageSpec(to_user=uid, from_id=3001, text="dm"))
        flow.rpc.reset_counts()
        second = await _post(flow, "after it")
        assert _own(flow, account, second) == _own(flow, account, first) + 2
        # Only a read of the group as that account can tell 1 id apart from a lost message.
        await _cursor_reaches(flow, account, second)
        assert flow.rpc.count("messages.getHistory", user_id=uid) >= 1
        await settle(flow)
    assert _group_texts(consumer) == ["before a private message", "after it"]


async def test_after_a_restart_a_basic_group_is_not_published_again(
    flow: Flow, rabbit: Rabbit, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from telethon.tl import types

    _add_basic_group(flow)
    account = (await flow.subscriber.subscribe(parse_peer(GROUP_LINK)))["account"]
    async with rabbit.consumer() as consumer:
        pushed = [await _post(flow, f"pushed {i}") for i in range(2)]
        flow.rpc.drop_next_posts(GROUP, 1)
        lost = await _post(flow, "lost")
        assert await flow.subscriber.poll_chat(GROUP_ID) == 1
        await consumer.wait_until(lambda c: len(_group_texts(c)) == 3)
        await _cursor_reaches(flow, account, lost)
        await flow.subscriber.stop()  # writes the cursors
        flow.rpc.drop_next_posts(GROUP, 1)
        await _post(flow, "while down")
        # The next start: the join map from its file, no content hashes in memory.
        reopened = JoinMap(tmp_path / "joinmap.db")
        fresh = Subscriber(
            flow.pool, reopened, flow.publisher, poll_interval=3600, check_interval=3600
        )
        try:
            assert await fresh.poll_chat(GROUP_ID) == 1  # from the cursor on disk: only the new
            # An update Telethon replays from before the restart, handled as an update is
            # (fresh is not started: its own poll loop is not under test here).
            replayed = types.Message(
                id=_own(flow, account, pushed[0]),
                peer_id=types.PeerChat(GROUP),
                date=datetime.now(UTC),
                message="pushed 0",
                from_id=types.PeerUser(3001),
            )
            await fresh._on_message(flow.pool.get(account), replayed, "message.new")
            await consumer.wait_until(lambda c: len(_group_texts(c)) == 4)
            await settle(flow)
        finally:
            reopened.close()
    assert fresh.published == 1 and fresh.duplicates == 1
    assert _group_texts(consumer) == ["pushed 0", "pushed 1", "lost", "while down"]


# --- takeover by invite link: basic groups and private channels -------------------------------

SMALL = 4002  # a basic group no account is in, joined by its invite link
SMALL_ID = -SMALL
SMALL_INVITE = "SmallGroup4002"
SECRET = 2003  # a private channel (no username), joined by its invite link
SECRET_ID = -(10**12) - SECRET
SECRET_INVITE = "SecretNews2003"


def _add_invite_chats(flow: Flow) -> None:
    """SMALL and SECRET, with history; only a non-account member in them: the accounts can
    join them by invite link only, and none of them has met them."""
    from tests.fakedc.world import ChatSpec, MessageSpec

    world = flow.rpc.world
    for chat_id, kind, title, invite in (
        (SMALL, "group", "Small by invite", SMALL_INVITE),
        (SECRET, "broadcast", "Secret news", SECRET_INVITE),
    ):
        world.add_chat(
            ChatSpec(
                id=chat_id, kind=kind, title=title, creator_id=3001, invite=invite,
                members={3001: 0},
            )
        )  # fmt: skip
    world.add_message(MessageSpec(chat=SMALL, from_id=3001, text="small history"))
    for i in range(3):
        world.add_message(MessageSpec(chat=SECRET, text=f"secret history {i}"))


async def _ban_and_silence(flow: Flow, name: str, chats: list[int]) -> None:
    """Bans the account; Telegram then sends it nothing (the emulator would still push to a
    member: it is taken out of the chats, so every event below comes through the taker)."""
    await _ban(flow, name)
    for chat_id in chats:
        flow.rpc.world.chats[chat_id].members.pop(int(name.removeprefix("acc")), None)


def _newest_own_id(flow: Flow, account: str, chat_id: int) -> int:
    """The newest message of a basic group in `account`'s own ids."""
    uid = int(account.removeprefix("acc"))
    world = flow.rpc.world
    own = [world.own_id(uid, s) for s, m in world.common.items() if m.chat == chat_id]
    return max(i for i in own if i is not None)


async def test_a_basic_group_and_a_private_channel_move_by_their_invite_links(
    flow: Flow, rabbit: Rabbit
) -> None:
    _add_invite_chats(flow)
    group = await flow.subscriber.subscribe(parse_peer(f"https://t.me/+{SMALL_INVITE}"))
    secret = await flow.subscriber.subscribe(parse_peer(f"t.me/joinchat/{SECRET_INVITE}"))
    assert (group["peer"]["type"], secret["peer"]["type"]) == ("group", "channel")
    assert secret["peer"]["username"] is None and secret["last_message_id"] == 3
    # Kept for a takeover, never answered.
    assert flow.joinmap.invite(SMALL_ID) == SMALL_INVITE
    assert flow.joinmap.invite(SECRET_ID) == SECRET_INVITE
    assert "SmallGroup" not in repr(group) and "SecretNews" not in repr(secret)
    banned = sorted({group["account"], secret["account"]})
    for name in banned:
        await _ban_and_silence(flow, name, [SMALL, SECRET])
    async with rabbit.consumer() as consumer:
        flow.rpc.reset_counts()
        await _check(flow)
        # Another account joined each by its link (no account knew them by id).
        assert flow.rpc.count("messages.importChatInvite") == 2
        takers = {}
        for peer_id, chat_id in ((SMALL_ID, SMALL), (SECRET_ID, SECRET)):
            sub = flow.joinmap.get(peer_id)
            assert sub is not None and sub["state"] == "joined"
            assert sub["account"] not in banned
            takers[peer_id] = sub["account"]
            uid = int(sub["account"].removeprefix("acc"))
            assert flow.rpc.world.is_member(flow.rpc.world.chats[chat_id], uid)
        assert flow.joinmap.orphaned() == []
        # The taker's cursor of the basic group starts at its own newest id (its "joined by
        # link" message), not at 0 nor at the banned account's ids.
        newest = _newest_own_id(flow, takers[SMALL_ID], SMALL)
        assert flow.joinmap.member_last_message_id(SMALL_ID, takers[SMALL_ID]) == newest
        assert flow.joinmap.last_message_id(SECRET_ID) == 3  # the channel's stays
        post = await _post_to(flow, SMALL, "small after the move")
        secret_post = await flow.rpc.post_message(SECRET, "secret after the move")
        await consumer.wait_for_ids([f"{SECRET_ID}:{secret_post.id}:message.new"])
        await consumer.wait_until(lambda c: "small after the move" in _texts(c, SMALL_ID))
        # A poll of each finds nothing: no history again, nothing twice.
        assert await flow.subscriber.poll_chat(SMALL_ID) == 0
        assert await flow.subscriber.poll_chat(SECRET_ID) == 0
        await settle(flow)
    assert _texts(consumer, SMALL_ID) == ["small after the move"]
    assert _texts(consumer, SECRET_ID) == ["secret after the move"]
    assert set(consumer.counts().values()) == {1}
    small_new = [m for m in of(consumer, "message.new") if m.body["peer"]["id"] == SMALL_ID]
    assert small_new[0].body["account"] == takers[SMALL_ID]
    assert small_new[0].body["message"]["id"] == _own(flow, takers[SMALL_ID], post)
    for peer_id, sub, start in ((SMALL_ID, group, newest), (SECRET_ID, secret, 3)):
        changed = [m.body for m in of(consumer, "subscription.changed")
                   if m.body["peer"]["id"] == peer_id]  # fmt: skip
        assert [(b["account"], b["state"]) for b in changed] == [
            (sub["account"], "joined"),  # the subscribe, waiting in the durable queue
            (sub["account"], "banned_account"),
            (takers[peer_id], "joined"),
        ]
        assert changed[-1]["subscription"]["last_message_id"] == start
    assert not any(
        "SmallGroup" in repr(m.body) or "SecretNews" in repr(m.body) for m in consumer.messages
    )


@pytest.mark.parametrize(
    ("chat_id", "peer_id", "invite", "dead"),
    [
        (SMALL, SMALL_ID, SMALL_INVITE, "INVITE_HASH_EXPIRED"),
        (SECRET, SECRET_ID, SECRET_INVITE, "INVITE_HASH_INVALID"),
    ],
    ids=["basic-group-expired", "private-channel-revoked"],
)
async def test_a_chat_whose_invite_link_is_dead_stays_orphaned_and_the_log_says_why(
    flow: Flow,
    caplog: pytest.LogCaptureFixture,
    chat_id: int,
    peer_id: int,
    invite: str,
    dead: str,
) -> None:
    import logging

    await _replace_subscriber(flow, check_interval=3600, rejoin_backoff=0.2, rejoin_backoff_max=0.2)
    _add_invite_chats(flow)
    sub = await flow.subscriber.subscribe(parse_peer(f"https://t.me/+{invite}"))
    if dead == "INVITE_HASH_EXPIRED":
        flow.rpc.fail("messages.importChatInvite", 400, dead, times=1000)
    else:  # revoked: Telegram no longer knows the link
        flow.rpc.world.chats[chat_id].invite = "RevokedLink" + str(chat_id)
    await _ban_and_silence(flow, sub["account"], [chat_id])
    flow.rpc.reset_counts()
    caplog.set_level(logging.WARNING, logger="service.subscriber")
    await _check(flow)
    assert flow.joinmap.orphaned() == [peer_id]
    assert flow.rpc.count("messages.importChatInvite") == 1  # one account asked, not each
    said = [r.getMessage() for r in caplog.records if "invite link" in r.getMessage()]
    assert len(said) == 1 and str(peer_id) in said[0] and dead in said[0]
    assert "is dead" in said[0] and "subscribed again with a new link" in said[0]
    assert invite not in caplog.text  # the hash stays out of the log
    # The next check comes before the backoff is over: Telegram is not asked again.
    await _check(flow)
    assert flow.rpc.count("messages.importChatInvite") == 1
    await asyncio.wait_for(_until(lambda: flow.subscriber._rejoin_after.due(peer_id)), 5)
    await _check(flow)
    assert flow.rpc.count("messages.importChatInvite") == 2
    assert flow.joinmap.orphaned() == [peer_id]
    # What the log asks for: a new link, subscribed through the API, ends the orphan.
    flow.rpc.clear_faults()
    flow.rpc.deactivated_ban(int(sub["account"].removeprefix("acc")))
    flow.rpc.world.chats[chat_id].invite = f"FreshLink{chat_id}"
    again = await flow.subscriber.subscribe(parse_peer(f"https://t.me/+FreshLink{chat_id}"))
    assert again["state"] == "joined" and again["account"] != sub["account"]
    assert flow.joinmap.orphaned() == [] and flow.joinmap.invite(peer_id) == f"FreshLink{chat_id}"


async def _post_to(flow: Flow, chat_id: int, text: str) -> Any:
    return await flow.rpc.post_message(chat_id, text, from_id=3001)


def _texts(consumer: Consumer, peer_id: int) -> list[str]:
    return [
        m.body["message"]["text"]
        for m in of(consumer, "message.new")
        if m.body["peer"]["id"] == peer_id
    ]
