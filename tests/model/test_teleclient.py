"""TeleClient on its own: cache-first peers, the resolution budget, error mapping, state.

Telegram is `FakeTelegram` (tests/model/faketelethon.py) behind a real Telethon SQLite
session; tests/model/test_teleclient_emulator.py runs the same ideas over real MTProto.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import errors, functions, types

from common.const import Proxy
from common.errors import (
    AccountUnusable,
    ConfigError,
    FloodWait,
    InvalidParam,
    PeerNotFound,
    PeerPrivate,
    RateLimited,
    TelegramError,
)
from common.utils import parse_peer
from model.teleclient import (
    AccountState,
    ResolveBudget,
    TeleClient,
)
from tests.model.faketelethon import FakeChat, FakeClient, FakeClock, FakeTelegram, fake_account

ME = 101
NEWS = 2001  # a public broadcast channel
TALK = 2002  # a public megagroup
GROUP = 2003  # a basic group
SECRET = 2004  # a private channel


@pytest.fixture
def world() -> FakeTelegram:
    w = FakeTelegram()
    w.add_chat(FakeChat(NEWS, "News daily", "news", "broadcast", [ME], list(range(1, 31))))
    w.add_chat(FakeChat(TALK, "News talk", "talk", "megagroup", [ME, *range(300, 312)], [1, 2]))
    w.add_chat(FakeChat(GROUP, "Small group", None, "group", [ME, 301, 302], [5, 6, 7]))
    w.add_chat(FakeChat(SECRET, "Secret", "secret", "broadcast", [], [1]))
    return w


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make(
    world: FakeTelegram, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    started: list[TeleClient] = []

    async def make(name: str = "acc", user_id: int = ME, **options: Any) -> TeleClient:
        options.setdefault("clock", clock)
        tc = fake_account(world, tmp_path, name, user_id, **options)
        await tc.start()
        started.append(tc)
        return tc

    yield make
    for tc in started:
        await tc.stop()


def learn_group(tc: TeleClient, world: FakeTelegram) -> None:
    """The account meets the basic group in some answer (basic groups have no username)."""
    tc.client.session.process_entities(types.messages.Chats([world.channel(ME, world.chats[GROUP])]))


def channel_id(bare: int) -> str:
    return str(-(10**12) - bare)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Polls a condition of the account or its fake client (they have no event for it)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


# --- pure pieces ---


def test_the_proxy_setting_reaches_telethon(tmp_path: Path) -> None:
    proxy = Proxy("socks5", "127.0.0.9", 1080, "u@x", "p:w")
    with_proxy = TeleClient(tmp_path / "a.session", 1, "0" * 32, proxy=proxy)
    direct = TeleClient(tmp_path / "b.session", 1, "0" * 32)
    try:
        assert with_proxy.client._proxy == proxy.to_telethon()
        assert with_proxy.client._proxy["rdns"] is True
        assert direct.client._proxy is None
    finally:
        with_proxy.client.session.close()
        direct.client.session.close()


def test_budget_refills_per_minute_and_per_day(clock: FakeClock) -> None:
    budget = ResolveBudget(per_minute=2, per_day=3, clock=clock)
    budget.take()
    budget.take()
    assert budget.ready_in() == pytest.approx(30)  # 2 a minute: one token every 30 s
    clock.advance(30)
    assert budget.ready_in() == 0
    budget.take()  # the day's third
    clock.advance(60)
    assert budget.ready_in() == pytest.approx(86400 / 3 - 90, abs=1)


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


@pytest.mark.parametrize(
    ("error", "state"),
    [
        ("AUTH_KEY_UNREGISTERED", AccountState.UNAUTHORIZED),
        ("SESSION_REVOKED", AccountState.UNAUTHORIZED),
        ("USER_DEACTIVATED_BAN", AccountState.BANNED),
        ("AUTH_KEY_DUPLICATED", AccountState.BANNED),
    ],
)
async def test_an_account_that_cannot_log_in_is_out_for_good(
    world: FakeTelegram, make: Callable[..., Any], error: str, state: AccountState
) -> None:
    world.errors[ME, "GetUsers"] = error
    tc = await make()
    assert tc.state is state and not tc.usable
    assert tc.ready_in(None) is None
    before = sum(world.calls.values())
    with pytest.raises(AccountUnusable) as caught:
        await tc.get_entity(parse_peer("@news"))
    assert caught.value.state == state
    assert sum(world.calls.values()) == before  # never asked again


# --- peers: cache first, username last ---


async def test_an_id_is_looked_up_in_the_cache_only(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    with pytest.raises(PeerNotFound, match="@username"):
        await tc.get_entity(parse_peer(channel_id(NEWS)))
    assert world.count("GetChannels") == 0 and world.count("ResolveUsername") == 0

    by_name = await tc.get_entity(parse_peer("@news"))
    by_id = await tc.get_entity(parse_peer(channel_id(NEWS)))
    by_bare_id = await tc.get_entity(parse_peer(str(NEWS)))
    assert by_name.id == by_id.id == by_bare_id.id == NEWS
    assert world.count("ResolveUsername") == 1
    assert world.count("GetChannels") == 2


async def test_a_cached_username_is_not_resolved_again_even_after_a_restart(
    world: FakeTelegram, tmp_path: Path, make: Callable[..., Any]
) -> None:
    tc = await make("keeper")
    for _ in range(5):
        await tc.get_entity(parse_peer("https://t.me/News"))
    assert world.count("ResolveUsername") == 1
    assert tc.knows(parse_peer("@news"))
    await tc.stop()

    again = await make("keeper")
    assert again.knows(parse_peer("@news")) and again.knows(parse_peer(channel_id(NEWS)))
    entity, _ = await again.get_history(parse_peer("@news"), limit=1)
    assert entity.id == NEWS
    assert world.count("ResolveUsername") == 1


async def test_concurrent_callers_share_one_resolution(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    gate = asyncio.Event()
    assert isinstance(tc.client, FakeClient)
    tc.client.gate = gate
    calls = [asyncio.create_task(tc.get_entity(parse_peer("@talk"))) for _ in range(10)]
    await until(lambda: tc.client.at_gate == 1)  # one resolution in flight
    assert tc.knows(parse_peer("@talk"))  # resolving counts as knowing: the pool sends it here
    gate.set()
    entities = await asyncio.gather(*calls)
    assert {e.id for e in entities} == {TALK}
    assert world.count("ResolveUsername") == 1


async def test_a_cancelled_resolution_lets_its_waiters_try_again(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    gate = asyncio.Event()
    assert isinstance(tc.client, FakeClient)
    tc.client.gate = gate
    first = asyncio.create_task(tc.get_entity(parse_peer("@talk")))
    await until(lambda: tc.client.at_gate == 1)  # its resolution is in flight
    second = asyncio.create_task(tc.get_entity(parse_peer("@talk")))
    # One loop turn: a new task runs to its first await, here waiting on the first's
    # resolution (nothing outside shows that wait; it sends no request of its own).
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await until(lambda: tc.client.at_gate == 1)  # the waiter tries again itself
    assert not second.done()
    gate.set()
    assert (await second).id == TALK
    assert first.cancelled()


async def test_the_budget_stops_resolutions_not_cached_peers(
    world: FakeTelegram, make: Callable[..., Any], clock: FakeClock
) -> None:
    tc = await make(resolve_per_minute=1, resolve_per_day=100)
    await tc.get_entity(parse_peer("@news"))
    assert tc.ready_in(parse_peer("@talk")) == pytest.approx(60)
    assert tc.resolve_blocked_by_budget()
    with pytest.raises(RateLimited) as caught:
        await tc.get_entity(parse_peer("@talk"))
    assert caught.value.retry_after == 60
    assert (await tc.get_entity(parse_peer("@news"))).id == NEWS  # known: costs nothing
    clock.advance(60)
    assert (await tc.get_entity(parse_peer("@talk"))).id == TALK
    assert world.count("ResolveUsername") == 2


# --- errors ---


async def test_unknown_and_private_peers(world: FakeTelegram, make: Callable[..., Any]) -> None:
    tc = await make()
    with pytest.raises(PeerNotFound) as nf:
        await tc.get_entity(parse_peer("@nobody_here"))
    assert nf.value.peer == "@nobody_here"
    world.private.add(SECRET)
    with pytest.raises(PeerPrivate):
        await tc.get_history(parse_peer("@secret"))
    with pytest.raises(PeerPrivate, match="CHAT_ADMIN_REQUIRED"):
        await tc.get_participants(parse_peer("@news"))
    assert tc.state is AccountState.OK


async def test_flood_waits_are_kept_per_request_kind(
    world: FakeTelegram, make: Callable[..., Any], clock: FakeClock
) -> None:
    tc = await make()
    await tc.get_entity(parse_peer("@news"))
    world.flood[ME, "ResolveUsername"] = 300
    with pytest.raises(FloodWait) as caught:
        await tc.get_entity(parse_peer("@talk"))
    assert (caught.value.retry_after, caught.value.account) == (300, "acc")
    assert tc.state is AccountState.FLOOD_WAIT
    assert tc.describe()["flood_wait_until"].endswith("Z")
    assert tc.ready_in(parse_peer("@talk")) == pytest.approx(300)
    assert tc.ready_in(parse_peer("@news")) == 0  # a known peer is still served
    assert (await tc.get_history(parse_peer("@news"), limit=2))[0].id == NEWS

    world.flood[ME, "GetHistory"] = 20
    with pytest.raises(FloodWait):
        await tc.get_history(parse_peer("@news"))
    assert tc.ready_in(parse_peer("@news")) == pytest.approx(20)
    clock.advance(301)
    assert tc.state is AccountState.OK and tc.flood_until is None


async def test_a_ban_mid_way_takes_the_account_out(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    world.errors[None, "ResolveUsername"] = "USER_DEACTIVATED_BAN"
    with pytest.raises(AccountUnusable):
        await tc.get_entity(parse_peer("@news"))
    assert tc.state is AccountState.BANNED
    assert tc.describe()["state"] == "banned"


async def test_other_rpc_errors_keep_their_name(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    world.errors[None, "Search"] = "SOMETHING_NEW"
    with pytest.raises(TelegramError) as caught:
        await tc.search("x")
    assert caught.value.rpc_error == "SOMETHING_NEW"


@pytest.mark.parametrize(
    ("method", "error", "call", "param"),
    [
        ("Search", "QUERY_TOO_SHORT", lambda tc: tc.search("ab"), "q"),
        ("Search", "SEARCH_QUERY_EMPTY", lambda tc: tc.search(" "), "q"),
        ("GetMessages", "MSG_ID_INVALID", lambda tc: tc.get_messages(parse_peer("@news"), [5]), "ids"),
        ("GetHistory", "MSG_ID_INVALID", lambda tc: tc.get_history(parse_peer("@news"), max_id=9), "max_id"),
        ("GetHistory", "LIMIT_INVALID", lambda tc: tc.get_history(parse_peer("@news")), "limit"),
        ("GetParticipants", "OFFSET_INVALID", lambda tc: tc.get_participants(parse_peer("@talk")), "offset"),
    ],
)  # fmt: skip
async def test_errors_that_blame_a_parameter_name_it(
    world: FakeTelegram,
    make: Callable[..., Any],
    method: str,
    error: str,
    call: Callable[[TeleClient], Any],
    param: str,
) -> None:
    tc = await make()
    await tc.get_entity(parse_peer("@news"))  # resolved before the error is set up
    await tc.get_entity(parse_peer("@talk"))
    world.errors[None, method] = error
    with pytest.raises(InvalidParam) as caught:
        await call(tc)
    assert caught.value.param == param and error in caught.value.message
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


async def test_a_lost_connection_is_noticed_and_healed(make: Callable[..., Any]) -> None:
    tc = await make(reconnect_delay=0.01)
    fake = tc.client
    assert isinstance(fake, FakeClient)
    fake.connected = False  # the socket died and Telethon gave up
    with pytest.raises(AccountUnusable) as caught:
        await tc.search("News")
    assert caught.value.state == AccountState.DISCONNECTED
    assert tc.ready_in(None) is None and tc.usable
    assert fake._disconnected is not None
    fake._disconnected.set_result(None)
    for _ in range(500):
        if tc.state is AccountState.OK:
            break
        await asyncio.sleep(0.01)
    assert tc.state is AccountState.OK
    assert {c.id for c in await tc.search("News")} == {TALK, NEWS}


async def test_an_account_that_cannot_connect_at_start_keeps_trying(
    world: FakeTelegram, tmp_path: Path
) -> None:
    tc = fake_account(world, tmp_path, "late", ME, reconnect_delay=0.01)
    assert isinstance(tc.client, FakeClient)
    tc.client.refuse_connects = 3
    await tc.start()  # not fatal: the service starts with the accounts it can reach
    try:
        assert tc.state is AccountState.DISCONNECTED and tc.user_id is None
        assert "refuses" in (tc.reason or "")
        for _ in range(500):
            if tc.state is AccountState.OK:
                break
            await asyncio.sleep(0.01)
        assert tc.state is AccountState.OK and tc.user_id == ME and tc.client.refuse_connects == 0
    finally:
        await tc.stop()


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
    with pytest.raises(InvalidParam):
        await tc.get_participants(parse_peer(str(ME)))


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


async def test_join_and_leave_are_idempotent(world: FakeTelegram, make: Callable[..., Any]) -> None:
    tc = await make()
    secret = parse_peer("@secret")
    assert (await tc.join(secret)).id == SECRET and ME in world.chats[SECRET].members
    assert (await tc.join(secret)).id == SECRET  # USER_ALREADY_PARTICIPANT is fine
    assert (await tc.leave(secret)).id == SECRET and ME not in world.chats[SECRET].members
    assert (await tc.leave(secret)).id == SECRET  # USER_NOT_PARTICIPANT is fine
    learn_group(tc, world)
    with pytest.raises(InvalidParam, match="invite link"):
        await tc.join(parse_peer(str(-GROUP)))


def test_requests_are_classified_for_flood_waits() -> None:
    from model.teleclient import RESOLVE, _request_kind

    wrapped = functions.InvokeWithLayerRequest(1, functions.contacts.ResolveUsernameRequest("x"))
    assert _request_kind(wrapped) == RESOLVE
    assert _request_kind(functions.contacts.SearchRequest("x", 1)) != RESOLVE


async def test_errors_met_outside_invoke_keep_the_accounts_state(
    make: Callable[..., Any], clock: FakeClock
) -> None:
    """The downloader's errors (raised `from` Telethon's) reach the account's state."""
    tc = await make()
    seen: list[tuple[str, str | None, float]] = []
    tc.call_observer = lambda *call: seen.append(call)
    get_file = functions.upload.GetFileRequest(
        types.InputDocumentFileLocation(1, 2, b"", ""), 0, 4096
    )

    def raised_from(cause: Exception) -> Exception:
        try:
            raise TelegramError("WRAPPED") from cause
        except TelegramError as e:
            return e

    other = raised_from(errors.FileIdInvalidError(get_file))
    assert tc.note_error(other) is other  # says nothing about the account
    assert tc.note_error(ConnectionError("reset")).args == ("reset",)
    assert tc.state is AccountState.OK

    flood = tc.note_error(raised_from(errors.FloodWaitError(get_file, capture=40)))
    assert isinstance(flood, FloodWait) and (flood.retry_after, flood.account) == (40, "acc")
    assert tc.state is AccountState.FLOOD_WAIT
    assert tc.flood_until == pytest.approx(clock() + 40)
    assert tc.ready_in(None) == pytest.approx(40)  # the pool skips it meanwhile
    assert (tc.flood_waits, tc.flood_wait_seconds) == (1, 40)
    clock.advance(41)
    assert tc.state is AccountState.OK

    banned = tc.note_error(raised_from(errors.UserDeactivatedBanError(get_file)))
    assert isinstance(banned, AccountUnusable) and banned.reason == "USER_DEACTIVATED_BAN"
    assert tc.state is AccountState.BANNED and tc.reason == "USER_DEACTIVATED_BAN"
    assert not tc.usable and tc.ready_in(None) is None
    assert [(m, e) for m, e, _ in seen] == [
        ("upload.GetFile", "FILE_ID_INVALID"),
        ("upload.GetFile", "FLOOD_WAIT"),
        ("upload.GetFile", "USER_DEACTIVATED_BAN"),
    ]


async def test_a_logout_met_outside_invoke_makes_the_account_unauthorized(
    make: Callable[..., Any],
) -> None:
    tc = await make()
    error = errors.AuthKeyUnregisteredError(None)
    unusable = tc.note_error(error)
    assert isinstance(unusable, AccountUnusable) and unusable.state == AccountState.UNAUTHORIZED
    assert tc.state is AccountState.UNAUTHORIZED and tc.reason == "AUTH_KEY_UNREGISTERED"
