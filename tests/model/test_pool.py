"""TeleClients, the pool: who gets a call, and what the caller hears when nobody can take it.

Real TeleClients on real session files, with Telegram replaced by `FakeTelegram`
(tests/model/faketelethon.py) and the clock injected: no sleeps, no network.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import errors

from common.const import KEYS_BY_NAME, Proxy
from common.errors import (
    ConfigError,
    FloodWait,
    NoAccountAvailable,
    PeerNotFound,
    PeerPrivate,
    RateLimited,
    TransientTelegramError,
)
from common.utils import parse_peer
from model.account import AccountState
from model.connection import CONNECTION_GRACE
from model.pool import TeleClients
from model.teleclient import TeleClient
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.socks5 import Socks5Proxy
from tests.fixtures.wait import wait_for
from tests.model.faketelethon import FakeChat, FakeClient, FakeClock, FakeTelegram, fake_account

A, B, C = 101, 102, 103
NEWS, TALK, ECHO, QUIZ = 2001, 2002, 2003, 2004


@pytest.fixture
def world() -> FakeTelegram:
    w = FakeTelegram()
    for chat_id, name in ((NEWS, "news"), (TALK, "talk"), (ECHO, "echo"), (QUIZ, "quiz")):
        w.add_chat(FakeChat(chat_id, name.title(), name, "megagroup", [A, B, C], [1, 2, 3]))
    return w


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_pool(
    world: FakeTelegram, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    pools: list[TeleClients] = []

    async def make(*user_ids: int, **options: Any) -> TeleClients:
        options.setdefault("clock", clock)
        accounts = [fake_account(world, tmp_path, f"acc{u}", u, **options) for u in user_ids]
        pool = TeleClients(accounts, clock=clock)
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.stop()


def history(peer: str) -> Callable[[TeleClient], Any]:
    async def op(tc: TeleClient) -> Any:
        return await tc.get_history(parse_peer(peer), limit=1)

    return op


async def who(pool: TeleClients, peer: str | None = None) -> str:
    async def op(tc: TeleClient) -> str:
        if peer is not None:
            await tc.get_entity(parse_peer(peer))
        return tc.name

    name, account = await pool.run(op, parse_peer(peer) if peer else None)
    assert name == account.name
    return name


# --- choosing ---


async def test_the_least_busy_account_gets_the_call(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool(A, B, C)
    pool.get("acc101").pending_downloads = 5
    pool.get("acc102").pending_downloads = 0
    pool.get("acc103").pending_downloads = 2
    assert [await who(pool) for _ in range(3)] == ["acc102"] * 3
    pool.get("acc102").pending_downloads = 9
    assert await who(pool) == "acc103"


async def test_equally_busy_accounts_take_turns(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool(A, B, C)
    picks = [await who(pool) for _ in range(6)]
    assert sorted(picks[:3]) == ["acc101", "acc102", "acc103"]
    assert picks[3:] == picks[:3]


async def test_accounts_that_know_the_peer_come_first(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B, C)
    await pool.get("acc103").get_entity(parse_peer("@news"))
    pool.get("acc103").pending_downloads = 50  # busy, but asking another costs a resolution
    assert {await who(pool, "@news") for _ in range(5)} == {"acc103"}
    assert world.count("ResolveUsername") == 1


async def test_fifty_asks_cost_one_resolution_sequential_or_concurrent(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B, C)
    for _ in range(50):
        (entity, _), _ = await pool.run(history("@news"), parse_peer("@news"))
        assert entity.id == NEWS
    assert world.count("ResolveUsername") == 1

    await asyncio.gather(*(pool.run(history("@talk"), parse_peer("@talk")) for _ in range(50)))
    assert world.count("ResolveUsername") == 2


async def test_a_numeric_id_goes_only_to_accounts_that_know_it(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B, C)
    peer_id = str(-(10**12) - ECHO)
    with pytest.raises(PeerNotFound, match="@username"):
        await pool.run(history(peer_id), parse_peer(peer_id))
    await pool.run(history("@echo"), parse_peer("@echo"))
    (entity, _), account = await pool.run(history(peer_id), parse_peer(peer_id))
    assert entity.id == ECHO and account.knows(parse_peer("@echo"))


# --- what a pick costs: it must not walk every account ---


def count_cache_lookups(pool: TeleClients) -> dict[str, int]:
    """Counts, per account, how often the pool asks its entity cache (`knows`)."""
    asked: dict[str, int] = {}
    for tc in pool:
        real = tc.knows

        def counting(peer: Any, real: Any = real, name: str = tc.name) -> bool:
            asked[name] = asked.get(name, 0) + 1
            return bool(real(peer))

        tc.knows = counting  # type: ignore[method-assign]
    return asked


async def test_a_call_about_a_known_peer_asks_only_the_knowers(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    users = [A, B, C, *range(110, 140)]
    world.chats[NEWS].members.extend(u for u in users if u not in world.chats[NEWS].members)
    pool = await make_pool(*users)
    asked = count_cache_lookups(pool)
    await pool.run(history("@news"), parse_peer("@news"))  # nobody knows it: a walk
    await pool.run(history("@news"), parse_peer("@news"))  # a walk finds who resolved it
    assert sum(asked.values()) >= 2 * len(users)
    asked.clear()
    served = {(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(20)}
    assert len(served) == 1 and world.count("ResolveUsername") == 1
    assert sum(asked.values()) <= 20 * 2  # the knower only, not 33 accounts per call
    assert set(asked) == served


async def test_a_call_about_no_peer_stops_at_the_first_idle_account(
    make_pool: Callable[..., Any],
) -> None:
    pool = await make_pool(A, B, C, *range(110, 140))
    looked: list[str] = []
    for tc in pool:
        real = tc.ready_in

        def spying(peer: Any, real: Any = real, name: str = tc.name) -> float | None:
            looked.append(name)
            result: float | None = real(peer)
            return result

        tc.ready_in = spying  # type: ignore[method-assign]
    picks = [await who(pool) for _ in range(40)]
    assert len(looked) == 40  # one look per call: the least recently picked is idle
    assert sorted(picks[:33]) == sorted(tc.name for tc in pool)  # and they take turns


async def test_a_knower_met_later_shares_the_peer_once_the_memory_expires(
    world: FakeTelegram, make_pool: Callable[..., Any], clock: FakeClock
) -> None:
    pool = await make_pool(A, B)
    first = await who(pool, "@news")  # resolves it
    assert await who(pool, "@news") == first  # a walk: the one knower is remembered
    other = next(tc for tc in pool if tc.name != first)
    await other.get_entity(parse_peer("@news"))  # met outside the pool (an update, a join)
    assert {await who(pool, "@news") for _ in range(4)} == {first}  # remembered: one knower
    clock.advance(61)
    assert {await who(pool, "@news") for _ in range(4)} == {first, other.name}
    assert world.count("ResolveUsername") == 2


async def test_when_the_remembered_knowers_wait_another_knower_serves_without_resolving(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B, C)
    first = await who(pool, "@news")
    assert await who(pool, "@news") == first  # remembered as the one knower
    other = next(tc for tc in pool if tc.name != first)
    await other.get_entity(parse_peer("@news"))
    resolutions = world.count("ResolveUsername")
    world.flood[pool.get(first).client.user_id, "GetHistory"] = 60
    served = {(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(3)}
    assert served == {other.name}
    assert world.count("ResolveUsername") == resolutions


async def test_the_preferred_account_takes_the_call_when_it_can_and_knows_the_peer(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B, C)
    for name in ("acc101", "acc102"):
        await pool.get(name).get_entity(parse_peer("@news"))
    resolutions = world.count("ResolveUsername")
    for _ in range(3):
        _, account = await pool.run(history("@news"), parse_peer("@news"), prefer="acc102")
        assert account.name == "acc102"
    # A peer it does not know: the usual pick (it would resolve it as any other would).
    await pool.run(history("@talk"), parse_peer("@talk"), prefer="acc103")
    assert world.count("ResolveUsername") == resolutions + 1
    world.flood[B, "GetHistory"] = 60  # in a flood wait: a knower that can serve is asked
    _, account = await pool.run(history("@news"), parse_peer("@news"), prefer="acc102")
    assert account.name == "acc101"


# --- flood waits ---


async def test_a_flood_wait_moves_the_call_to_another_account(
    world: FakeTelegram, make_pool: Callable[..., Any], clock: FakeClock
) -> None:
    pool = await make_pool(A, B)
    world.flood[A, "GetHistory"] = 40
    served = {(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(4)}
    assert served == {"acc102"}
    flooded = pool.get("acc101")
    assert flooded.state is AccountState.FLOOD_WAIT
    assert world.count("GetHistory", A) == 1  # asked once, then left alone until the end
    listed = {d["name"]: d for d in pool.accounts()}
    assert listed["acc101"]["state"] == "flood_wait" and listed["acc101"]["flood_wait_until"]
    assert listed["acc102"]["state"] == "ok"

    del world.flood[A, "GetHistory"]
    clock.advance(41)
    assert flooded.state is AccountState.OK
    served = {(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(4)}
    assert served == {"acc101", "acc102"}


async def test_when_every_account_waits_the_earliest_end_is_the_answer(
    world: FakeTelegram, make_pool: Callable[..., Any], clock: FakeClock
) -> None:
    pool = await make_pool(A, B, C)
    for user, seconds in ((A, 300), (B, 30), (C, 120)):
        world.flood[user, "GetHistory"] = seconds
    with pytest.raises(FloodWait) as caught:
        await pool.run(history("@news"), parse_peer("@news"))
    assert (caught.value.retry_after, caught.value.account) == (30, "acc102")
    clock.advance(10)
    with pytest.raises(FloodWait) as again:  # nobody asked: the pool knows they all wait
        await pool.run(history("@news"), parse_peer("@news"))
    assert again.value.retry_after == 20
    assert world.count("GetHistory") == 3


async def test_a_resolve_flood_wait_still_lets_the_account_serve_known_peers(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A)
    await pool.run(history("@news"), parse_peer("@news"))
    world.flood[A, "ResolveUsername"] = 3600
    with pytest.raises(FloodWait) as caught:
        await pool.run(history("@talk"), parse_peer("@talk"))
    assert caught.value.retry_after == 3600
    (entity, _), _ = await pool.run(history("@news"), parse_peer("@news"))
    assert entity.id == NEWS


# --- the resolution budget ---


async def test_spent_budgets_answer_rate_limited_before_any_account_is_burnt(
    world: FakeTelegram, make_pool: Callable[..., Any], clock: FakeClock
) -> None:
    pool = await make_pool(A, B, C, resolve_per_minute=1, resolve_per_day=100)
    for name in ("@news", "@talk", "@echo"):
        await pool.run(history(name), parse_peer(name))
    assert {world.count("ResolveUsername", u) for u in (A, B, C)} == {1}
    with pytest.raises(RateLimited) as caught:
        await pool.run(history("@quiz"), parse_peer("@quiz"))
    assert caught.value.retry_after == 60
    assert world.count("ResolveUsername") == 3
    # Peers some account knows are still served.
    await pool.run(history("@news"), parse_peer("@news"))
    clock.advance(60)
    (entity, _), _ = await pool.run(history("@quiz"), parse_peer("@quiz"))
    assert entity.id == QUIZ


# --- accounts out of rotation ---


async def test_a_banned_account_leaves_the_rotation(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B)
    world.errors[A, "GetHistory"] = "USER_DEACTIVATED_BAN"
    served = [(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(6)]
    assert set(served) == {"acc102"}
    assert world.count("GetHistory", A) == 1
    assert pool.get("acc101").state is AccountState.BANNED
    assert {d["name"]: d["state"] for d in pool.accounts()} == {
        "acc101": "banned",
        "acc102": "ok",
    }
    assert pool.usable()
    world.errors[B, "GetHistory"] = "AUTH_KEY_UNREGISTERED"
    with pytest.raises(NoAccountAvailable):
        await pool.run(history("@news"), parse_peer("@news"))
    assert pool.get("acc102").state is AccountState.UNAUTHORIZED
    assert not pool.usable()


async def test_an_id_asked_of_no_usable_account_is_503_not_peer_not_found(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    # PEER_NOT_FOUND would tell the crawler the peer doesn't exist; the truth is that no
    # account can serve anything.
    peer_id = str(-(10**12) - NEWS)
    with pytest.raises(NoAccountAvailable):
        await TeleClients([]).run(history(peer_id), parse_peer(peer_id))
    pool = await make_pool(A)
    await pool.run(history("@news"), parse_peer("@news"))
    world.errors[A, "GetHistory"] = "USER_DEACTIVATED_BAN"
    with pytest.raises(NoAccountAvailable):
        await pool.run(history(peer_id), parse_peer(peer_id))
    assert not pool.usable()
    with pytest.raises(NoAccountAvailable):
        await pool.run(history(peer_id), parse_peer(peer_id))


async def test_accounts_that_fail_at_start_are_reported_not_used(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    world.errors[A, "GetUsers"] = "AUTH_KEY_UNREGISTERED"
    pool = await make_pool(A, B)
    assert [d["state"] for d in pool.accounts()] == ["unauthorized", "ok"]
    assert {await who(pool) for _ in range(3)} == {"acc102"}


async def test_a_disconnected_account_is_skipped(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool(A, B)
    fake = pool.get("acc101").client
    assert isinstance(fake, FakeClient)
    fake.connected = False
    assert {await who(pool, "@news") for _ in range(4)} == {"acc102"}
    assert pool.get("acc101").describe()["state"] == "disconnected"


async def test_a_network_error_moves_the_call_to_another_account(
    make_pool: Callable[..., Any],
) -> None:
    # Telethon hands its last connect error to the requests in flight when it gives up: an
    # OSError such as ENETUNREACH, not always a ConnectionError.
    class Unreachable(FakeClient):
        async def __call__(self, request: Any) -> Any:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

    pool = await make_pool(A, B)
    for account in pool:
        await account.get_entity(parse_peer("@news"))
    pool.get("acc101").client.__class__ = Unreachable
    served = {(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(4)}
    assert served == {"acc102"}
    assert pool.get("acc101").state is AccountState.DISCONNECTED


# --- private peers ---


async def test_private_for_one_account_is_served_by_another_that_knows_it(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B)
    for account in pool:
        await account.get_entity(parse_peer("@news"))
    world.errors[A, "GetHistory"] = "CHANNEL_PRIVATE"  # A was banned from the channel
    served = {(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(4)}
    assert served == {"acc102"}

    world.private.add(NEWS)
    with pytest.raises(PeerPrivate):
        await pool.run(history("@news"), parse_peer("@news"))


async def test_private_asks_no_new_resolution(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A, B, C)
    world.private.add(TALK)
    with pytest.raises(PeerPrivate):
        await pool.run(history("@talk"), parse_peer("@talk"))
    assert world.count("ResolveUsername") == 1


# --- basic groups: by id alone, through a member ---


async def test_a_basic_group_by_id_is_served_by_a_member_whoever_is_asked_first(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    world.add_chat(FakeChat(5001, "Group", None, "group", [B], [7, 8]))
    pool = await make_pool(A, B, C)
    pool.get("acc102").pending_downloads = 3  # the member is the last one picked
    (_, msgs), served = await pool.run(history("-5001"), parse_peer("-5001"))
    assert served.name == "acc102" and [m.id for m in msgs] == [8]
    assert world.count("GetHistory") == 3  # A and C were not in it: CHAT_ID_INVALID
    # It knows the group now: asked first from here on, however busy.
    assert pool.get("acc102").knows(parse_peer("-5001"))
    (_, _), served = await pool.run(history("-5001"), parse_peer("-5001"))
    assert served.name == "acc102" and world.count("GetHistory") == 4


async def test_a_basic_group_no_account_is_in_is_not_found_and_remembered(
    world: FakeTelegram, make_pool: Callable[..., Any], clock: FakeClock
) -> None:
    world.add_chat(FakeChat(5001, "Group", None, "group", [300], [7]))
    pool = await make_pool(A, B)
    for _ in range(2):
        with pytest.raises(PeerNotFound, match="no account is a member of basic group -5001"):
            await pool.run(history("-5001"), parse_peer("-5001"))
    assert world.count("GetHistory") == 2  # the second answered from memory
    world.chats[5001].members.append(A)  # added meanwhile: found once the memory expires
    clock.advance(301)
    (_, _), served = await pool.run(history("-5001"), parse_peer("-5001"))
    assert served.name == "acc101"


async def test_a_basic_group_whose_member_waits_is_a_flood_wait_not_a_404(
    world: FakeTelegram, make_pool: Callable[..., Any]
) -> None:
    world.add_chat(FakeChat(5001, "Group", None, "group", [B], [7]))
    world.flood[(B, "GetHistory")] = 30
    pool = await make_pool(A, B)
    with pytest.raises(FloodWait) as caught:
        await pool.run(history("-5001"), parse_peer("-5001"))
    assert caught.value.retry_after == pytest.approx(30)
    del world.flood[(B, "GetHistory")]
    with pytest.raises(FloodWait):  # not remembered as "no member": B still waits
        await pool.run(history("-5001"), parse_peer("-5001"))


# --- the rest of the surface ---


async def test_get_and_accounts(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool(A, B)
    assert pool.get("acc101").name == "acc101" and len(pool) == 2
    with pytest.raises(NoAccountAvailable):
        pool.get("nobody")
    pool.get("acc102").pending_downloads = 3
    assert pool.accounts()[1] == {
        "name": "acc102",
        "label": None,
        "proxy": None,
        "phone": "+44********02",
        "user_id": B,
        "state": "ok",
        "reason": None,
        "flood_wait_until": None,
        "pending_downloads": 3,
        "resolutions_left": {"minute": 5, "day": 200},
    }


async def test_updates_of_every_account_reach_the_callback(
    make_pool: Callable[..., Any],
) -> None:
    pool = await make_pool(A, B)
    seen: list[tuple[str, Any]] = []

    async def callback(tc: TeleClient, update: Any) -> None:
        seen.append((tc.name, update))

    async def broken(tc: TeleClient, update: Any) -> None:
        raise RuntimeError("a bug in one subscriber must not stop the others")

    pool.on_update(broken)
    pool.on_update(callback)
    handlers = [h for account in pool for h, _ in account.client.handlers]
    assert len(handlers) == 2  # one handler per client, however many callbacks
    for handler, update in zip(handlers, ("u1", "u2"), strict=True):
        await handler(update)
    assert seen == [("acc101", "u1"), ("acc102", "u2")]


async def test_a_held_session_stops_the_start(
    world: FakeTelegram, tmp_path: Path, make_pool: Callable[..., Any]
) -> None:
    await make_pool(A)
    other = TeleClients([fake_account(world, tmp_path, "acc101", A)])
    with pytest.raises(ConfigError, match="in use"):
        await other.start()


def test_from_sessions_dir_builds_one_account_per_session_file(tmp_path: Path) -> None:
    for name in ("one", "two"):
        TeleClient(tmp_path / name, 1, "hash").client.session.close()
    (tmp_path / "notes.txt").write_text("not a session")
    pool = TeleClients.from_sessions_dir(tmp_path, 1, "hash", resolve_per_minute=3)
    try:
        assert sorted(a.name for a in pool) == ["one", "two"]
    finally:
        for account in pool:
            account.client.session.close()


def test_from_sessions_dir_follows_each_sessions_sidecar(tmp_path: Path) -> None:
    for name in ("one", "two", "off"):
        TeleClient(tmp_path / name, 1, "hash").client.session.close()
    (tmp_path / "one.properties").write_text("proxy=socks5://u:p@127.0.0.2:1080\nlabel=eu-1\n")
    (tmp_path / "off.properties").write_text("enabled=false\n")
    shared = Proxy("http", "127.0.0.9", 3128)
    pool = TeleClients.from_sessions_dir(tmp_path, 1, "hash", proxy=shared)
    try:
        by_name = {a.name: a for a in pool}
        assert sorted(by_name) == ["one", "two"]  # "off" is left out
        assert by_name["one"].proxy == Proxy("socks5", "127.0.0.2", 1080, "u", "p")
        assert by_name["two"].proxy == shared
        one, two = by_name["one"].describe(), by_name["two"].describe()
        assert (one["label"], one["proxy"]) == ("eu-1", "socks5://127.0.0.2:1080")
        assert (two["label"], two["proxy"]) == (None, "http://127.0.0.9:3128")
    finally:
        for account in pool:
            account.client.session.close()


def test_a_bad_sidecar_builds_no_account(tmp_path: Path) -> None:
    TeleClient(tmp_path / "one", 1, "hash").client.session.close()
    (tmp_path / "one.properties").write_text("proxy=socks5://user:hunter2@nowhere\n")
    with pytest.raises(ConfigError) as caught:
        TeleClients.from_sessions_dir(tmp_path, 1, "hash")
    assert caught.value.key == "proxy" and caught.value.file == str(tmp_path / "one.properties")
    assert "hunter2" not in str(caught.value)


# --- account labels (model/account.py, tests/model/test_account.py) in the pool ---


async def test_a_pool_on_phone_named_sessions_shows_labels_and_finds_by_either(
    world: FakeTelegram, tmp_path: Path, clock: FakeClock
) -> None:
    accounts = [
        fake_account(world, tmp_path, "15550001001", A, clock=clock),
        fake_account(world, tmp_path, "15550009901", B, clock=clock),
        fake_account(world, tmp_path, "acc103", C, clock=clock),
    ]
    pool = TeleClients(accounts, clock=clock)
    await pool.start()
    try:
        assert [tc.name for tc in pool] == ["+15*******01", "+15*******01#2", "acc103"]
        assert [tc.session_name for tc in pool] == ["15550001001", "15550009901", "acc103"]
        assert [d["name"] for d in pool.accounts()] == ["+15*******01", "+15*******01#2", "acc103"]
        # By label, and by stem (rows stored before labels existed name the stem).
        assert pool.get("+15*******01#2") is pool.get("15550009901") is accounts[1]
        assert pool.relabeled() == {"15550001001": "+15*******01", "15550009901": "+15*******01#2"}
        with pytest.raises(NoAccountAvailable) as missing:
            pool.get("15559999999")
        assert "15559999999" not in str(missing.value)
        # What the pool says of an account (errors, runs) uses the label too.
        name, account = await pool.run(lambda tc: asyncio.sleep(0, tc.name))
        assert name == account.name and "1555" not in name
    finally:
        await pool.stop()


# --- transient failures: moved to another account at once ---


class Internal(FakeClient):
    """An account Telegram answers 500 INTERNAL on every call (after its start)."""

    async def __call__(self, request: Any) -> Any:
        raise errors.ServerError(request, "INTERNAL", 500)


async def test_a_transient_failure_moves_the_call_and_502_only_when_all_failed(
    make_pool: Callable[..., Any], world: FakeTelegram, clock: FakeClock
) -> None:
    pool = await make_pool(A, B)
    for account in pool:
        await account.get_entity(parse_peer("@news"))
    pool.get("acc101").client.__class__ = Internal
    served = {(await pool.run(history("@news"), parse_peer("@news")))[1].name for _ in range(4)}
    assert served == {"acc102"}
    assert pool.get("acc101").state is AccountState.OK  # Telegram's hiccup, not the account's
    # Every account fails it: the crawler gets Telegram's error (502), even though another
    # account is in a flood wait (which would otherwise answer 429).
    world.flood[B, "GetHistory"] = 60
    with pytest.raises(TransientTelegramError):
        await pool.run(history("@news"), parse_peer("@news"))
    world.flood.clear()
    clock.advance(61)
    pool.get("acc102").client.__class__ = Internal
    with pytest.raises(TransientTelegramError) as caught:
        await pool.run(history("@news"), parse_peer("@news"))
    assert (caught.value.status, caught.value.rpc_error) == (502, "INTERNAL")


# --- the same on the emulator (tests/fakedc): unmodified Telethon over real MTProto ---

EMU_A, EMU_B = 1001, 1002
EMU_NEWS = 2001
GET_HISTORY = "messages.getHistory"
# The bound on the time from a transient failure to the answer: the failing account's round
# trip and the next one's, no sleep (measured on this emulator: a few ms; 8 s before, when
# Telethon retried each INTERNAL on the same account four times, 2 s apart).
TRANSIENT_BOUND = 1.0


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    world = World.from_dict(
        {
            "users": [
                {"id": u, "first_name": f"Acc{u}", "phone": f"1555000{u}"} for u in (EMU_A, EMU_B)
            ],
            "chats": [
                {"id": EMU_NEWS, "kind": "broadcast", "title": "News", "username": "news"},
            ],
            "messages": [{"chat": EMU_NEWS, "text": f"post {i}"} for i in range(1, 11)],
        }
    )
    return TelegramRpc(world)


@pytest.fixture
async def emulator_pool(
    telegram_session: Callable[..., Path],
) -> AsyncIterator[Callable[..., Any]]:
    """`await emulator_pool(proxy_a=None)`: acc1001 and acc1002 started on the emulator,
    with Telethon's retries as shipped (telegram.request_retries), acc1001 through
    `proxy_a` if given; both know @news, and acc1001 is asked first (acc1002 looks busy)."""
    pools: list[TeleClients] = []

    async def make(proxy_a: Proxy | None = None) -> TeleClients:
        retries = KEYS_BY_NAME["telegram.request_retries"]
        accounts = [
            TeleClient(
                telegram_session(user, name=f"acc{user}"),
                FAKEDC_API_ID,
                FAKEDC_API_HASH,
                request_retries=retries.parse(retries.default, Path(".")),
                request_timeout=20,
                proxy=proxy_a if user == EMU_A else None,
            )
            for user in (EMU_A, EMU_B)
        ]
        pool = TeleClients(accounts)
        await pool.start()
        pools.append(pool)
        for account in pool:
            await account.get_entity(parse_peer("@news"))
        pool.get("acc1002").pending_downloads = 1
        return pool

    yield make
    for pool in pools:
        await pool.stop()


async def timed_history(pool: TeleClients) -> tuple[str, float]:
    t0 = time.monotonic()
    (_, messages), account = await pool.run(history("@news"), parse_peer("@news"))
    assert len(messages) == 1
    return account.name, time.monotonic() - t0


@pytest.mark.parametrize(("code", "name"), [(500, "INTERNAL"), (-503, "Timeout")])
async def test_a_transient_error_on_one_account_is_served_by_another_at_once(
    emulator_pool: Callable[..., Any], fake_telegram: Any, code: int, name: str
) -> None:
    pool = await emulator_pool()
    rpc = fake_telegram.dispatcher
    rpc.fail(GET_HISTORY, code, name, times=1000, user_id=EMU_A)
    rpc.reset_counts()
    for _ in range(3):
        served, took = await timed_history(pool)
        assert served == "acc1002" and took < TRANSIENT_BOUND, (served, took)
    # Each call asked acc1001 once (Telethon retried nothing) and then acc1002 once.
    assert (rpc.count(GET_HISTORY, EMU_A), rpc.count(GET_HISTORY, EMU_B)) == (3, 3)
    assert [a["state"] for a in pool.accounts()] == ["ok", "ok"]


async def test_when_every_account_fails_the_crawler_gets_502_within_the_bound(
    emulator_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await emulator_pool()
    rpc = fake_telegram.dispatcher
    rpc.fail(GET_HISTORY, 500, "INTERNAL", times=1000)
    rpc.reset_counts()
    t0 = time.monotonic()
    with pytest.raises(TransientTelegramError) as caught:
        await pool.run(history("@news"), parse_peer("@news"))
    took = time.monotonic() - t0
    assert took < TRANSIENT_BOUND, took
    assert (caught.value.status, caught.value.code, caught.value.rpc_error) == (
        502,
        "TELEGRAM_ERROR",
        "INTERNAL",
    )
    assert (rpc.count(GET_HISTORY, EMU_A), rpc.count(GET_HISTORY, EMU_B)) == (1, 1)


async def test_a_connection_dropped_mid_call_moves_the_call_at_once(
    emulator_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    """acc1001 reaches Telegram through a SOCKS5 proxy that dies while acc1001's call waits
    for its answer: the call is served by acc1002 once the connection has been down
    CONNECTION_GRACE, not after telegram.timeout; the next call does not wait again."""
    rpc = fake_telegram.dispatcher
    async with Socks5Proxy() as proxy:
        pool = await emulator_pool(proxy_a=Proxy("socks5", "127.0.0.1", proxy.port))
        rpc.reset_counts()
        rpc.slow(GET_HISTORY, 10)  # the next getHistory (acc1001's) hangs
        call = asyncio.create_task(timed_history(pool))
        await wait_for(lambda: rpc.count(GET_HISTORY, EMU_A) == 1, what="acc1001's call sent")
        proxy.refuse = True  # Telethon's reconnects fail from now on
        t0 = time.monotonic()
        assert await proxy.cut() >= 2
        served, _ = await call
        took = time.monotonic() - t0
        assert served == "acc1002" and took < CONNECTION_GRACE + TRANSIENT_BOUND, took
        served, took = await timed_history(pool)
        assert served == "acc1002" and took < TRANSIENT_BOUND, took
        assert (rpc.count(GET_HISTORY, EMU_A), rpc.count(GET_HISTORY, EMU_B)) == (1, 2)
        assert pool.get("acc1001").state is AccountState.OK  # Telethon still reconnects


# --- live accounts (service/fleet.py's reload) ---


async def test_an_added_account_takes_calls_updates_and_is_observed(
    world: FakeTelegram, tmp_path: Path, clock: FakeClock, make_pool: Callable[..., Any]
) -> None:
    pool = await make_pool(A)
    seen: list[tuple[str, Any]] = []
    observed: list[str] = []

    async def callback(tc: TeleClient, update: Any) -> None:
        seen.append((tc.name, update))

    pool.on_update(callback)
    pool.observe_calls(lambda method, error, seconds: observed.append(method))
    added = fake_account(world, tmp_path, "acc102", B, clock=clock)
    await added.start()
    try:
        pool.add(added)
        pool.get("acc101").pending_downloads = 5  # busier: the new one gets the next calls
        assert [await who(pool, "@news") for _ in range(2)] == ["acc102"] * 2
        assert observed  # its requests reach the pool's call observer
        ((handler, _),) = added.client.handlers
        await handler("u1")
        assert seen == [("acc102", "u1")]
        assert [a["name"] for a in pool.accounts()] == ["acc101", "acc102"]
    finally:
        await pool.remove("acc102").stop()


async def test_a_removed_account_is_picked_no_more(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool(A, B)
    gone = pool.remove("acc101")
    assert gone.name == "acc101" and len(pool) == 1
    assert {await who(pool) for _ in range(4)} == {"acc102"}
    assert [a["name"] for a in pool.accounts()] == ["acc102"]
    # Until it is forgotten, the downloads bound to it still find it, by label or stem.
    assert pool.get("acc101") is gone
    with pytest.raises(NoAccountAvailable):
        pool.remove("acc101")
    await gone.stop()
    pool.forget(gone)
    with pytest.raises(NoAccountAvailable):
        pool.get("acc101")


async def test_the_pools_stop_stops_an_account_still_leaving(
    make_pool: Callable[..., Any],
) -> None:
    pool = await make_pool(A, B)
    leaving = pool.remove("acc101")
    await pool.stop()
    assert not leaving.client.connected


async def test_a_live_label_never_moves_to_an_added_account(
    world: FakeTelegram, tmp_path: Path, clock: FakeClock
) -> None:
    # 15550001001 and 15559991001 mask alike (+15*******01): the lower stem would take the
    # plain mask from a pool built with both, but the live account keeps it.
    live = fake_account(world, tmp_path, "15559991001", A, clock=clock)
    pool = TeleClients([live], clock=clock)
    await pool.start()
    try:
        added = fake_account(world, tmp_path, "15550001001", B, clock=clock)
        await added.start()
        pool.add(added)
        assert (live.name, added.name) == ("+15*******01", "+15*******01#2")
        assert pool.get("15550001001") is added and pool.get("+15*******01#2") is added
    finally:
        await pool.stop()
