"""Basic groups: message ids per account. Each account's cursor in its own ids, a message
published once however many accounts see it, an id past the cursor settled by a poll as that
account, and no message published again after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import service.subscription.watermarks as watermarks_module
from common.errors import AlreadySubscribed
from common.utils import parse_peer
from model.joinmap import JoinMap
from service.subscriber import Subscriber
from tests.fixtures.rabbitmq import Consumer, Rabbit
from tests.fixtures.wait import wait_for
from tests.service.subscription.flow import (
    ACCOUNTS,
    Flow,
    own,
    post_to,
    replace_subscriber,
    settle,
    texts,
    uid,
)

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
    for n, user_id in enumerate(ACCOUNTS):
        for i in range(n):
            world.add_message(MessageSpec(to_user=user_id, from_id=3001, text=f"dm {i}"))
    return world.add_message(MessageSpec(chat=GROUP, from_id=3001, text="history"))


def _cursor(flow: Flow, account: str) -> int:
    return flow.joinmap.member_last_message_id(GROUP_ID, account)


async def _cursor_reaches(flow: Flow, account: str, msg: Any) -> None:
    await wait_for(
        lambda: _cursor(flow, account) == own(flow, account, msg),
        what=f"{account}'s cursor at {msg.id}",
    )


def _group_texts(consumer: Consumer) -> list[str]:
    return texts(consumer, GROUP_ID)


async def _post(flow: Flow, text: str) -> Any:
    return await post_to(flow, GROUP, text)


async def test_missed_pushes_in_a_basic_group_are_found_by_the_poll_once(
    flow: Flow, rabbit: Rabbit
) -> None:
    history = _add_basic_group(flow)
    sub = await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    account = sub["account"]
    assert (sub["peer"]["id"], sub["peer"]["type"]) == (GROUP_ID, "group")
    # The watermark starts at the newest message, in the joining account's own ids.
    assert sub["last_message_id"] == own(flow, account, history) == _cursor(flow, account)
    async with rabbit.consumer() as consumer:
        flow.rpc.drop_next_posts(GROUP, 3)
        lost = [await _post(flow, f"lost {i}") for i in range(3)]
        assert await flow.subscriber.poll_chat(GROUP_ID) == 3
        assert _cursor(flow, account) == own(flow, account, lost[-1])
        assert await flow.subscriber.poll_chat(GROUP_ID) == 0  # nothing twice
        before = flow.subscriber.duplicates
        # The next push follows a pts gap on each of the three accounts: each fetches the
        # lost ones again (getDifference), 4 sights each, 12 in all, one of them published.
        pushed = await _post(flow, "pushed")
        await consumer.wait_until(lambda c: "pushed" in _group_texts(c))
        await wait_for(
            lambda: flow.subscriber.duplicates - before >= 11, what="every sight handled"
        )
        assert await flow.subscriber.poll_chat(GROUP_ID) == 0
        await settle(flow)
    assert _group_texts(consumer) == ["lost 0", "lost 1", "lost 2", "pushed"]
    assert set(consumer.counts().values()) == {1}
    assert _cursor(flow, account) == own(flow, account, pushed)


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
        assert len({own(flow, a, posts[0]) for a in accounts}) == 2  # one message, two ids
        # Each account's cursor follows its pushes, in its own ids.
        await wait_for(
            lambda: all(_cursor(flow, a) == own(flow, a, posts[-1]) for a in accounts),
            what="both cursors at the last push",
        )
        flow.rpc.drop_next_posts(GROUP, 2)
        lost = [await _post(flow, f"lost {i}") for i in range(2)]
        assert await flow.subscriber.poll_chat(GROUP_ID) == 2  # as one of the two
        assert await flow.subscriber.poll_chat(GROUP_ID) == 0
        await consumer.wait_until(lambda c: len(_group_texts(c)) == 7)
        await settle(flow)
    assert _group_texts(consumer) == [*(f"msg {i}" for i in range(5)), "lost 0", "lost 1"]
    assert set(consumer.counts().values()) == {1}
    assert max(_cursor(flow, a) - own(flow, a, lost[-1]) for a in accounts) == 0


async def test_a_basic_group_id_past_the_cursor_is_settled_by_a_poll_as_its_account(
    flow: Flow, rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakedc.world import MessageSpec

    monkeypatch.setattr(watermarks_module, "GAP_WAIT", 0.05)
    _add_basic_group(flow)
    account = (await flow.subscriber.subscribe(parse_peer(GROUP_LINK)))["account"]
    async with rabbit.consumer() as consumer:
        first = await _post(flow, "before a private message")
        await _cursor_reaches(flow, account, first)
        # A private message takes the account's next id: the group's next one skips it.
        flow.rpc.world.add_message(MessageSpec(to_user=uid(account), from_id=3001, text="dm"))
        flow.rpc.reset_counts()
        second = await _post(flow, "after it")
        assert own(flow, account, second) == own(flow, account, first) + 2
        # Only a read of the group as that account can tell 1 id apart from a lost message.
        await _cursor_reaches(flow, account, second)
        assert flow.rpc.count("messages.getHistory", user_id=uid(account)) >= 1
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
                id=own(flow, account, pushed[0]),
                peer_id=types.PeerChat(GROUP),
                date=datetime.now(UTC),
                message="pushed 0",
                from_id=types.PeerUser(3001),
            )
            await fresh.intake.on_message(flow.pool.get(account), replayed, "message.new")
            await consumer.wait_until(lambda c: len(_group_texts(c)) == 4)
            await settle(flow)
        finally:
            reopened.close()
    assert fresh.published == 1 and fresh.duplicates == 1
    assert _group_texts(consumer) == ["pushed 0", "pushed 1", "lost", "while down"]


def _events(consumer: Consumer, event: str) -> list[Any]:
    return [m for m in consumer.messages if m.routing_key == event]


def _kicks(consumer: Consumer) -> list[str]:
    """The accounts of the subscription.changed events to `kicked`."""
    changed = _events(consumer, "subscription.changed")
    return [m.body["account"] for m in changed if m.body["state"] == "kicked"]


async def test_a_kick_from_a_basic_group_marks_the_join_map_and_says_so(
    flow: Flow, rabbit: Rabbit
) -> None:
    _add_basic_group(flow)
    account = (await flow.subscriber.subscribe(parse_peer(GROUP_LINK)))["account"]
    async with rabbit.consumer() as consumer:
        await flow.rpc.kick(uid(account), GROUP)
        await consumer.wait_until(
            lambda c: any(m.body["state"] == "kicked" for m in _events(c, "subscription.changed"))
        )
        await settle(flow)
    changes = [(m.body["account"], m.body["state"]) for m in _events(consumer, "subscription.changed")]
    assert changes[-1] == (account, "kicked") and changes.count((account, "kicked")) == 1
    (member,) = flow.joinmap.memberships(GROUP_ID)
    assert (member["account"], member["state"]) == (account, "kicked")
    sub = flow.joinmap.get(GROUP_ID)
    assert sub is not None and sub["state"] == "kicked"
    # The service message itself is news like any other, once.
    (removal,) = [m for m in _events(consumer, "message.new") if m.body["peer"]["id"] == GROUP_ID]
    assert removal.body["message"]["action"] is not None


async def test_a_kick_of_one_of_two_accounts_is_seen_and_the_other_stays(
    flow: Flow, rabbit: Rabbit
) -> None:
    _add_basic_group(flow)
    await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    with pytest.raises(AlreadySubscribed):  # a second account joins all the same
        await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    first, second = [m["account"] for m in flow.joinmap.memberships(GROUP_ID)]
    async with rabbit.consumer() as consumer:
        await flow.rpc.kick(uid(second), GROUP)
        await consumer.wait_until(lambda c: any(_kicks(c)))
        await post_to(flow, GROUP, "after the kick")
        await consumer.wait_until(lambda c: "after the kick" in _group_texts(c))
        await settle(flow)
    states = {m["account"]: m["state"] for m in flow.joinmap.memberships(GROUP_ID)}
    assert states == {first: "joined", second: "kicked"}
    assert _kicks(consumer) == [second]


async def test_a_deletion_in_a_basic_group_is_published_once_under_the_id_it_was_published(
    flow: Flow, rabbit: Rabbit
) -> None:
    from tests.fakedc.world import MessageSpec

    _add_basic_group(flow)
    await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    with pytest.raises(AlreadySubscribed):
        await flow.subscriber.subscribe(parse_peer(GROUP_LINK))
    accounts = [m["account"] for m in flow.joinmap.memberships(GROUP_ID)]
    async with rabbit.consumer() as consumer:
        doomed = await _post(flow, "deleted soon")
        kept = await _post(flow, "kept")
        assert len({own(flow, a, doomed) for a in accounts}) == 2  # one message, two ids
        await consumer.wait_until(lambda c: _group_texts(c) == ["deleted soon", "kept"])
        (new,) = [m for m in _events(consumer, "message.new") if m.body["message"]["text"] == doomed.text]
        # A private message of each account, deleted: its id is no basic group's.
        world = flow.rpc.world
        dms = [
            world.add_message(MessageSpec(to_user=uid(a), from_id=3001, text="private"))
            for a in accounts
        ]
        await flow.rpc.delete_messages(None, [dm.id for dm in dms])
        before = flow.subscriber.duplicates
        await flow.rpc.delete_messages(GROUP, [doomed.id])
        await consumer.wait_until(lambda c: len(_events(c, "message.deleted")) >= 1)
        # Both accounts were told (each under its own id): one event, the other a duplicate.
        await wait_for(
            lambda: flow.subscriber.duplicates > before, what="the second account's deletion"
        )
        await settle(flow)
    (deleted,) = _events(consumer, "message.deleted")
    assert deleted.body["message"] == {"id": new.body["message"]["id"], "peer_id": GROUP_ID}
    assert deleted.body["peer"]["id"] == GROUP_ID
    assert deleted.message_id == f"{GROUP_ID}:{new.body['message']['id']}:message.deleted"
    assert kept.id in world.common


async def test_a_deletion_after_a_restart_still_finds_its_basic_group(
    flow: Flow, rabbit: Rabbit, tmp_path: Path
) -> None:
    _add_basic_group(flow)
    account = (await flow.subscriber.subscribe(parse_peer(GROUP_LINK)))["account"]
    async with rabbit.consumer() as consumer:
        doomed = await _post(flow, "deleted after a restart")
        await consumer.wait_until(lambda c: doomed.text in _group_texts(c))
        await _cursor_reaches(flow, account, doomed)
        # The next start: the join map from its file, nothing of the old flow in memory.
        await flow.subscriber.stop()
        flow.joinmap.close()
        await replace_subscriber(flow, JoinMap(tmp_path / "joinmap.db"))
        await flow.rpc.delete_messages(GROUP, [doomed.id])
        await consumer.wait_until(lambda c: len(_events(c, "message.deleted")) == 1)
        await settle(flow)
    (deleted,) = _events(consumer, "message.deleted")
    assert deleted.body["message"] == {"id": own(flow, account, doomed), "peer_id": GROUP_ID}
