"""Basic groups end to end, on the real HTTP API (and its subscription flow, publishing to the
real broker) and the DC emulator's demo world.

Asked by its marked id (-CHAT_ID): no username, no access hash, no session that met it
before; a member account serves it, an account that is not in it passes it on, and a group
no account is in is 404 (remembered, so a crawler retrying it costs the pool no second round).
Subscribed: a deletion there is a message.deleted under the id its message.new carried
(Telegram's updateDeleteMessages names no chat), a kick of the account in it a
subscription.changed to kicked.

The demo world's basic group SMALL has ACCOUNT_A and ACCOUNT_B in it, not ACCOUNT_C.
(`start.py demo`'s printed requests include one by marked id: tests/test_start_demo.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from common.utils import parse_peer
from tests.fakedc import demo_world as dw
from tests.fixtures.api_server import ApiServer, demo_dispatcher
from tests.fixtures.rabbitmq import Consumer, Rabbit

HISTORY = "messages.getHistory"
SMALL = f"-{dw.SMALL}"
MEMBERS = (dw.ACCOUNT_A, dw.ACCOUNT_B)


@pytest.fixture
def fakedc_dispatcher() -> Any:
    return demo_dispatcher()


def _account(server: ApiServer, user_id: int) -> Any:
    return server.pool.get(f"acc{user_id}")


def _counts(server: ApiServer) -> dict[int, int]:
    return {u: server.rpc.count(HISTORY, u) for u in (*MEMBERS, dw.ACCOUNT_C)}


async def test_a_basic_group_by_marked_id_is_served_by_a_member(api_server: ApiServer) -> None:
    assert not any(tc.knows(parse_peer(SMALL)) for tc in api_server.pool)  # never met
    # The non-member is the least busy account: the pool asks it first.
    for user_id in MEMBERS:
        _account(api_server, user_id).pending_downloads = 5
    before = _counts(api_server)
    answer = await api_server.get(f"/api/v1/messages?peer={SMALL}&limit=10")
    assert answer.ok, answer
    texts = [m["text"] for m in answer.data["messages"]]
    assert texts[:2] == ["hello Ann", "hi all"] and answer.data["next_offset_id"] is None
    assert {m["peer_id"] for m in answer.data["messages"]} == {-dw.SMALL}
    asked = {u for u, n in _counts(api_server).items() if n > before[u]}
    assert dw.ACCOUNT_C in asked and len(asked & set(MEMBERS)) == 1  # C passed it on
    peer = await api_server.get(f"/api/v1/peer?peer={SMALL}")
    assert peer.ok and (peer.data["type"], peer.data["title"]) == ("group", "Small Group")
    # The member that served it knows it now, and is asked first from here on.
    (server,) = asked & set(MEMBERS)
    assert _account(api_server, server).knows(parse_peer(SMALL))
    before = _counts(api_server)
    assert (await api_server.get(f"/api/v1/messages?peer={SMALL}&limit=1")).ok
    assert {u for u, n in _counts(api_server).items() if n > before[u]} == {server}


async def test_a_basic_group_no_account_is_in_is_404_and_remembered(
    api_server: ApiServer,
) -> None:
    before = api_server.rpc.count(HISTORY)
    missing = await api_server.get("/api/v1/messages?peer=-99999&limit=5")
    assert (missing.status, missing.code) == (404, "PEER_NOT_FOUND"), missing
    assert missing.error is not None and "no account is a member" in missing.error["message"]
    assert api_server.rpc.count(HISTORY) - before == 3  # every account asked once
    again = await api_server.get("/api/v1/messages?peer=-99999&limit=5")
    assert (again.status, again.code) == (404, "PEER_NOT_FOUND")
    assert api_server.rpc.count(HISTORY) - before == 3  # from memory


async def test_a_basic_group_every_member_was_removed_from_is_not_served(
    api_server: ApiServer,
) -> None:
    for user_id in MEMBERS:
        await api_server.rpc.kick(user_id, dw.SMALL)
    answer = await api_server.get(f"/api/v1/messages?peer={SMALL}&limit=5")
    assert (answer.status, answer.code) == (404, "PEER_NOT_FOUND"), answer


def _events(consumer: Consumer, event: str) -> list[Any]:
    return [m for m in consumer.messages if m.routing_key == event]


async def test_a_deletion_and_a_kick_in_a_subscribed_basic_group_become_events(
    subscriptions_server: ApiServer, rabbit: Rabbit
) -> None:
    server = subscriptions_server
    link = f"https://t.me/+{dw.INVITE_SMALL}"
    answer = await server.api.request("POST", "/api/v1/subscriptions", {"peer": link})
    assert answer.ok and answer.data["peer"]["id"] == -dw.SMALL, answer
    account = answer.data["account"]
    user_id = int(account.removeprefix("acc"))
    async with rabbit.consumer() as consumer:
        doomed = await server.rpc.post_message(dw.SMALL, "gone soon", from_id=dw.USER_ALICE)
        own_id = server.rpc.world.own_id(user_id, doomed.id)
        await consumer.wait_for_ids([f"-{dw.SMALL}:{own_id}:message.new"])
        await server.rpc.delete_messages(dw.SMALL, [doomed.id])
        await consumer.wait_for_ids([f"-{dw.SMALL}:{own_id}:message.deleted"])
        await server.rpc.kick(user_id, dw.SMALL)
        await consumer.wait_until(
            lambda c: any(m.body["state"] == "kicked" for m in _events(c, "subscription.changed"))
        )
        await server.publisher.wait_empty()
    (deleted,) = _events(consumer, "message.deleted")
    assert deleted.body["message"] == {"id": own_id, "peer_id": -dw.SMALL}
    kicks = [m.body for m in _events(consumer, "subscription.changed") if m.body["state"] == "kicked"]
    assert [(k["account"], k["peer"]["id"]) for k in kicks] == [(account, -dw.SMALL)]
    subs = await server.get("/api/v1/subscriptions")
    assert subs.ok and all(s["peer"]["id"] != -dw.SMALL for s in subs.data["subscriptions"])
