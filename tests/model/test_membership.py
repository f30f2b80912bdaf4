"""model/membership.py through a real TeleClient: joining and leaving are idempotent, a
basic group joins by invite link only, a chat that needs an admin's approval files one
request (JoinRequestSent), and a user is nothing to join or leave.

Telegram is `FakeTelegram` (tests/model/faketelethon.py); fixtures in conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from common.errors import InvalidArgument, JoinRequestSent, PeerPrivate
from common.utils import parse_peer
from tests.model.faketelethon import GROUP, ME, SECRET, FakeTelegram, learn_group


async def test_join_and_leave_are_idempotent(world: FakeTelegram, make: Callable[..., Any]) -> None:
    tc = await make()
    secret = parse_peer("@secret")
    assert (await tc.join(secret)).id == SECRET and ME in world.chats[SECRET].members
    assert (await tc.join(secret)).id == SECRET  # USER_ALREADY_PARTICIPANT is fine
    assert (await tc.leave(secret)).id == SECRET and ME not in world.chats[SECRET].members
    assert (await tc.leave(secret)).id == SECRET  # USER_NOT_PARTICIPANT is fine
    learn_group(tc, world)
    with pytest.raises(InvalidArgument, match="invite link") as caught:
        await tc.join(parse_peer(str(-GROUP)))
    assert caught.value.argument == "ref"


async def test_a_chat_that_needs_approval_files_one_request(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    world.errors[None, "JoinChannel"] = "INVITE_REQUEST_SENT"
    with pytest.raises(JoinRequestSent) as caught:
        await tc.join(parse_peer("@secret"))
    assert isinstance(caught.value, PeerPrivate)  # 403 PEER_PRIVATE to the API
    assert (caught.value.peer, caught.value.account) == ("@secret", "acc")
    assert "approval" in caught.value.message
    assert world.count("JoinChannel") == 1


async def test_a_user_is_nothing_to_leave(make: Callable[..., Any]) -> None:
    tc = await make()
    _, users, _ = await tc.get_participants(parse_peer("@talk"), limit=1)  # meets user 300
    with pytest.raises(InvalidArgument, match="nothing to leave") as caught:
        await tc.leave(parse_peer(str(users[0].id)))
    assert caught.value.argument == "ref"
