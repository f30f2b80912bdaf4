"""TeleClient on its own: its life on a session file, and the calls the service makes.

Telegram is `FakeTelegram` (tests/model/faketelethon.py) behind a real Telethon SQLite
session; tests/model/test_teleclient_emulator.py runs the same ideas over real MTProto. The
account's parts have their own modules: test_connection.py (requests, errors, state),
test_resolver.py (peers, the budget), test_membership.py (joins and leaves).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import types

from common.errors import ConfigError, InvalidArgument, PeerPrivate, TelegramError
from common.utils import parse_peer
from model.account import AccountState
from model.teleclient import TeleClient
from tests.model.faketelethon import (
    GROUP,
    ME,
    NEWS,
    TALK,
    FakeTelegram,
    fake_account,
    learn_group,
)

# --- life and the session lock ---


async def test_start_reads_the_account(make: Callable[..., Any]) -> None:
    tc = await make()
    assert (tc.state, tc.user_id, tc.usable) == (AccountState.OK, ME, True)
    d = tc.describe()
    assert d["phone"].startswith("+44") and "*" in d["phone"]
    assert (d["name"], d["user_id"], d["state"], d["flood_wait_until"]) == ("acc", ME, "ok", None)


async def test_a_session_serves_one_owner(
    world: FakeTelegram, tmp_path: Path, make: Callable[..., Any]
) -> None:
    await make("shared")
    second = fake_account(world, tmp_path, "shared", ME)
    with pytest.raises(ConfigError, match="in use by another process"):
        await second.start()
    await second.stop()  # closes its session file, frees no lock it never had


async def test_the_lock_is_freed_at_stop(world: FakeTelegram, tmp_path: Path) -> None:
    first = fake_account(world, tmp_path, "a", ME)
    await first.start()
    await first.stop()
    second = fake_account(world, tmp_path, "a", ME)
    await second.start()
    assert second.state is AccountState.OK
    await second.stop()


# --- arguments Telegram refuses ---


@pytest.mark.parametrize(
    ("method", "error", "call", "argument"),
    [
        ("Search", "QUERY_TOO_SHORT", lambda tc: tc.search("ab"), "q"),
        ("Search", "SEARCH_QUERY_EMPTY", lambda tc: tc.search(" "), "q"),
        ("GetMessages", "MSG_ID_INVALID", lambda tc: tc.get_messages(parse_peer("@news"), [5]), "ids"),
        ("GetHistory", "MSG_ID_INVALID", lambda tc: tc.get_history(parse_peer("@news"), max_id=9), "max_id"),
        ("GetHistory", "LIMIT_INVALID", lambda tc: tc.get_history(parse_peer("@news")), "limit"),
        ("GetParticipants", "OFFSET_INVALID", lambda tc: tc.get_participants(parse_peer("@talk")), "offset"),
        ("Search", "FROM_PEER_INVALID", lambda tc: tc.search_messages(parse_peer("@news"), "", sender=parse_peer("@talk")), "sender"),
        ("Search", "INPUT_FILTER_INVALID", lambda tc: tc.search_messages(parse_peer("@news"), "", filter_name="gif"), "filter_name"),
        ("Search", "MSG_ID_INVALID", lambda tc: tc.search_messages(parse_peer("@news"), "a", offset_id=9), "offset_id"),
    ],
)  # fmt: skip
async def test_errors_that_blame_an_argument_name_it(
    world: FakeTelegram,
    make: Callable[..., Any],
    method: str,
    error: str,
    call: Callable[[TeleClient], Any],
    argument: str,
) -> None:
    tc = await make()
    await tc.get_entity(parse_peer("@news"))  # resolved before the error is set up
    await tc.get_entity(parse_peer("@talk"))
    world.errors[None, method] = error
    with pytest.raises(InvalidArgument) as caught:
        await call(tc)
    assert caught.value.argument == argument and error in caught.value.message
    assert tc.state is AccountState.OK


async def test_a_bad_message_id_nobody_chose_is_telegrams_error(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    await tc.get_entity(parse_peer("@news"))
    world.errors[None, "GetHistory"] = "MSG_ID_INVALID"
    with pytest.raises(TelegramError) as caught:
        await tc.get_history(parse_peer("@news"))  # no offset_id, min_id or max_id given
    assert caught.value.rpc_error == "MSG_ID_INVALID"


# --- the calls ---


async def test_history_pages_with_offset_min_and_max(make: Callable[..., Any]) -> None:
    tc = await make()
    news = parse_peer("@news")
    entity, page = await tc.get_history(news, limit=10)
    assert entity.id == NEWS and [m.id for m in page] == list(range(30, 20, -1))
    _, page = await tc.get_history(news, limit=10, offset_id=21)
    assert [m.id for m in page] == list(range(20, 10, -1))
    _, page = await tc.get_history(news, limit=100, min_id=25, max_id=28)
    assert [m.id for m in page] == [27, 26]
    assert page[0].chat_id == -(10**12) - NEWS  # finished like Telethon's own messages


async def test_messages_by_id_keep_order_with_none_for_missing(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    _, msgs = await tc.get_messages(parse_peer("@news"), [3, 999, 1])
    assert [m.id if m else None for m in msgs] == [3, None, 1]
    # A basic group goes through messages.getMessages, which is not scoped to a chat.
    learn_group(tc, world)
    entity, msgs = await tc.get_messages(parse_peer(str(-GROUP)), [6, 8])
    assert entity.id == GROUP and [m.id if m else None for m in msgs] == [6, None]


async def test_participants_of_megagroups_and_basic_groups(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    entity, users, total = await tc.get_participants(parse_peer("@talk"), limit=5, offset=2)
    assert entity.id == TALK and total == 13
    assert [u.id for u in users] == [301, 302, 303, 304, 305]
    # Basic groups: the account learns the group from any answer that shows it.
    learn_group(tc, world)
    entity, users, total = await tc.get_participants(parse_peer(str(-GROUP)), limit=2, offset=1)
    assert (entity.id, total, [u.id for u in users]) == (GROUP, 3, [301, 302])
    with pytest.raises(InvalidArgument) as caught:
        await tc.get_participants(parse_peer(str(ME)))
    assert caught.value.argument == "ref"  # the peer, as get_participants names it


async def test_only_channels_and_megagroups_have_threads(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    learn_group(tc, world)
    for peer in (str(-GROUP), str(ME)):
        with pytest.raises(InvalidArgument) as caught:
            await tc.get_replies(parse_peer(peer), 1)
        assert caught.value.argument == "ref"


async def test_a_broadcast_channels_members_are_private(make: Callable[..., Any]) -> None:
    tc = await make()
    with pytest.raises(PeerPrivate, match="CHAT_ADMIN_REQUIRED"):
        await tc.get_participants(parse_peer("@news"))
    assert tc.state is AccountState.OK


async def test_full_info(make: Callable[..., Any]) -> None:
    tc = await make()
    entity, full = await tc.get_full(parse_peer("@talk"))
    assert entity.id == TALK and full.id == TALK and full.participants_count == 13


async def test_search_lists_chats_public_results_first(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    world.chats[TALK].members.remove(ME)
    tc = await make()
    found = await tc.search("News", limit=10)
    assert [c.id for c in found] == [TALK, NEWS]  # results before my_results
    assert all(isinstance(c, types.Channel) for c in found)
