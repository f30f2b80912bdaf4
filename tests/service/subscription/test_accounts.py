"""The account check's reaction to a reconnect: the account's chats are polled (the pushes
of the time it was away may be lost). Bans and recoveries: test_takeover.py."""

from __future__ import annotations

from common.utils import parse_peer
from model.account import AccountState
from tests.fixtures.rabbitmq import Rabbit
from tests.service.subscription.flow import NEWS, NEWS_ID, Flow


async def test_after_an_account_reconnects_its_chats_are_polled(flow: Flow, rabbit: Rabbit) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    flow.rpc.drop_next_posts(NEWS, 2)
    lost = [await flow.rpc.post_message(NEWS, f"while away {i}") for i in range(2)]
    account = flow.pool.get(sub["account"])
    assert account.state == AccountState.OK
    async with rabbit.consumer() as consumer:
        # The account was seen disconnected by the last check; this one sees it back.
        await flow.subscriber.accounts.changed(
            account.name, AccountState.DISCONNECTED, account.state
        )
        await consumer.wait_for_ids([f"{NEWS_ID}:{p.id}:message.new" for p in lost])
