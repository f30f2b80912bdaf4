"""Joins and leaves through the API: the join map, subscription.changed, the accounts Telegram
finds full (CHANNELS_TOO_MUCH) and the chats that need an admin's approval."""

from __future__ import annotations

import pytest

from common.errors import NoAccountAvailable, NotSubscribed, PeerPrivate
from common.utils import parse_peer
from service.subscription.joins import FULL_RECHECK
from tests.fixtures.rabbitmq import Rabbit
from tests.service.subscription.flow import (
    ACCOUNTS,
    JOIN,
    NEWS,
    NEWS_ID,
    Flow,
    ShiftedClock,
    joins,
    of,
    replace_subscriber,
    settle,
    uid,
)


async def test_unsubscribe_leaves_and_says_so(flow: Flow, rabbit: Rabbit) -> None:
    with pytest.raises(NotSubscribed):
        await flow.subscriber.unsubscribe(parse_peer("@news"))
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    user_id = uid(sub["account"])
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


async def test_an_account_telegram_finds_full_is_skipped_and_the_join_moves_on(
    flow: Flow,
) -> None:
    clock = ShiftedClock()
    await replace_subscriber(flow, clock=clock)
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
