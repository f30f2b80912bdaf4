"""Update intake: posts, edits, deletions and kicks pushed by the emulator become events on the
broker, each once (however many accounts see it, also after a restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.errors import AlreadySubscribed
from common.utils import parse_peer
from model.joinmap import JoinMap
from model.pool import TeleClients
from service.subscriber import Subscriber
from tests.fixtures.rabbitmq import Rabbit
from tests.fixtures.wait import wait_for
from tests.service.subscription.flow import (
    NEWS,
    NEWS_ID,
    PHOTO,
    TALK,
    TALK_ID,
    FakeMediaQueue,
    Flow,
    of,
    settle,
    uid,
)


async def test_an_event_the_publisher_refused_is_not_marked_published(tmp_path: Path) -> None:
    from common.errors import ShuttingDown
    from service.events import make_event

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
        await subscriber.intake.publish_once(event)
    assert await subscriber.intake.publish_once(event)  # seen again (a replay): published now
    assert not await subscriber.intake.publish_once(event)  # and only once
    assert subscriber.published == 1 and subscriber.duplicates == 1
    joinmap.close()


async def test_subscribe_then_posts_edits_deletes_become_events(flow: Flow, rabbit: Rabbit) -> None:
    async with rabbit.consumer() as consumer:
        sub = await flow.subscriber.subscribe(parse_peer("@news"))
        assert sub["peer"] == {"id": NEWS_ID, "type": "channel", "title": "News daily",
                               "username": "news"}  # fmt: skip
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
                                                                  "peer_id": NEWS_ID}  # fmt: skip
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


async def test_three_accounts_in_one_chat_publish_each_event_once(
    flow: Flow, rabbit: Rabbit
) -> None:
    await flow.subscriber.subscribe(parse_peer("@talk"))  # every account is in it
    async with rabbit.consumer() as consumer:
        posts = [await flow.rpc.post_message(TALK, f"msg {i}", from_id=3001) for i in range(5)]
        ids = [f"{TALK_ID}:{p.id}:message.new" for p in posts]
        await consumer.wait_for_ids(ids)
        # every account got every push: wait until the last one was handled too
        await wait_for(
            lambda: flow.subscriber.duplicates >= 2 * len(posts), what="every push handled"
        )
        await settle(flow)
    counts = consumer.counts()
    assert [counts[i] for i in ids] == [1] * len(posts)
    assert flow.subscriber.duplicates >= 2 * len(posts)


async def test_a_kick_marks_the_join_map_and_says_so(flow: Flow, rabbit: Rabbit) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    async with rabbit.consumer() as consumer:
        await flow.rpc.kick(uid(sub["account"]), NEWS)
        await consumer.wait_until(
            lambda c: any(m.body["state"] == "kicked" for m in of(c, "subscription.changed"))
        )
    kicked = flow.joinmap.get(NEWS_ID)
    assert kicked is not None and kicked["state"] == "kicked"
    assert flow.joinmap.list() == []


async def test_after_a_restart_replayed_updates_are_not_news(flow: Flow, rabbit: Rabbit) -> None:
    """A new Subscriber (empty recent set, as after a restart) meets updates Telethon
    replays from before: the join map's watermark says they were published."""
    from datetime import UTC, datetime

    from telethon.tl import types

    await flow.subscriber.subscribe(parse_peer("@news"))
    post = await flow.rpc.post_message(NEWS, "before the restart")
    await wait_for(
        lambda: flow.joinmap.last_message_id(NEWS_ID) == post.id, what="the watermark moved"
    )
    fresh = Subscriber(flow.pool, flow.joinmap, flow.publisher, poll_interval=3600)
    replayed = types.UpdateNewChannelMessage(
        message=types.Message(
            id=post.id, peer_id=types.PeerChannel(NEWS), date=datetime.now(UTC),
            message="before the restart",
        ),
        pts=0, pts_count=1,
    )  # fmt: skip
    await fresh.start()
    try:
        # What the pool hands the callback fresh.start() registered.
        await fresh.intake.on_update(flow.pool.get("acc1001"), replayed)
    finally:
        await fresh.stop()
    assert fresh.published == 0 and fresh.duplicates == 1
