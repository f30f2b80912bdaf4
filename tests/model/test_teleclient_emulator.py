"""TeleClients over real MTProto: three accounts against the DC emulator (tests/fakedc).

The emulator counts the requests it serves per method and account, so these tests can say
exactly how many `contacts.resolveUsername` a scenario cost, and its knobs make Telegram
answer FLOOD_WAIT, USER_DEACTIVATED_BAN or CHANNEL_PRIVATE like the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from common.const import KEYS_BY_NAME
from common.errors import FloodWait, InvalidArgument, PeerNotFound, PeerPrivate, RateLimited
from common.utils import parse_peer
from model.account import AccountState
from model.pool import TeleClients
from model.teleclient import TeleClient
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.model.faketelethon import FakeClock

ACCOUNTS = (1001, 1002, 1003)
NEWS = 2001  # public broadcast channel, 30 posts
TALK = 2002  # public megagroup, everyone's in it
SECRET = 2003  # private channel (no username), 1001 is a member
LONELY = 3100  # a user no account has exchanged a message with
RESOLVE = "contacts.resolveUsername"


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    members = {str(u): 0 for u in ACCOUNTS}
    world = World.from_dict(
        {
            "users": [
                *({"id": u, "first_name": f"Acc{u}", "phone": f"1555000{u}"} for u in ACCOUNTS),
                *({"id": u, "first_name": f"Member{u}"} for u in range(3001, 3011)),
                {"id": LONELY, "first_name": "Lonely", "username": "lonely"},
            ],
            "chats": [
                {"id": NEWS, "kind": "broadcast", "title": "News daily", "username": "news"},
                {"id": TALK, "kind": "megagroup", "title": "News talk", "username": "talk",
                 "members": {**members, **{str(u): 0 for u in range(3001, 3011)}}},
                {"id": SECRET, "kind": "broadcast", "title": "Secret", "members": {"1001": 0}},
            ],
            "messages": [
                *({"chat": NEWS, "text": f"post {i}"} for i in range(1, 31)),
                {"chat": TALK, "text": "hello", "from_id": 3001},
                {"chat": SECRET, "text": "psst"},
            ],
        }
    )  # fmt: skip
    return TelegramRpc(world)


@pytest.fixture
def sessions(telegram_session: Callable[..., Path]) -> Path:
    """One logged-in session file per account, in one folder as the server has them."""
    paths = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]
    return paths[0].parent


@pytest.fixture
async def make_pool(sessions: Path) -> AsyncIterator[Callable[..., Any]]:
    pools: list[TeleClients] = []

    async def make(**options: Any) -> TeleClients:
        """`options` go to each TeleClient, but `pool_clock` and `unknown_username*`
        (the pool's)."""
        options.setdefault("flood_sleep_threshold", 0)
        options.setdefault("request_timeout", 10)
        own: dict[str, Any] = {}
        if "pool_clock" in options:
            own["clock"] = options.pop("pool_clock")
        for key in ("unknown_username_ttl", "unknown_usernames_max"):
            if key in options:
                own[key] = options.pop(key)
        pool = TeleClients.from_sessions_dir(sessions, FAKEDC_API_ID, FAKEDC_API_HASH, **options)
        if own:
            pool = TeleClients(list(pool), **own)  # the same accounts, the pool's own options
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.stop()


def marked(channel_id: int) -> str:
    """The Bot-API id of a channel: -100 followed by its id."""
    return str(-(10**12) - channel_id)


def shipped(key: str) -> Any:
    """The default a config.properties key ships with (as the server parses it)."""
    spec = KEYS_BY_NAME[key]
    return spec.parse(spec.default, Path("."))


def rpc_of(fake_telegram: Any) -> Any:
    return fake_telegram.dispatcher


def resolutions(fake_telegram: Any) -> dict[int, int]:
    return {u: rpc_of(fake_telegram).count(RESOLVE, u) for u in ACCOUNTS}


def history(peer: str, **kw: Any) -> Callable[[TeleClient], Any]:
    async def op(tc: TeleClient) -> Any:
        return await tc.get_history(parse_peer(peer), **kw)

    return op


async def run_history(pool: TeleClients, peer: str, **kw: Any) -> tuple[Any, list[Any], str]:
    (entity, messages), account = await pool.run(history(peer, **kw), parse_peer(peer))
    return entity, messages, account.name


async def each_learns(pool: TeleClients, peer: str) -> None:
    """Every account resolves the peer once (as the pool would over a long life)."""
    for account in pool:
        await account.get_entity(parse_peer(peer))


# --- start, identity, the lock ---


async def test_three_accounts_start_logged_in(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool()
    listed = pool.accounts()
    assert [(a["name"], a["user_id"], a["state"]) for a in listed] == [
        (f"acc{u}", u, "ok") for u in ACCOUNTS
    ]
    assert all(a["phone"].startswith("+15") and "*" in a["phone"] for a in listed)
    assert pool.usable()


async def test_another_process_cannot_take_a_session_in_use(
    make_pool: Callable[..., Any], sessions: Path
) -> None:
    await make_pool()
    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'a')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )
    lock = sessions / "acc1001.session.lock"
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", probe, str(lock))
    assert await asyncio.wait_for(process.wait(), 30) == 3


# --- peers: once by username, then by id, never twice ---


async def test_by_username_then_by_id(make_pool: Callable[..., Any], fake_telegram: Any) -> None:
    pool = await make_pool()
    by_name, msgs, first = await run_history(pool, "@news", limit=5)
    assert by_name.id == NEWS and [m.id for m in msgs] == [30, 29, 28, 27, 26]
    for peer in (marked(NEWS), str(NEWS), "https://t.me/news", f"t.me/c/{NEWS}/3"):
        entity, _, served = await run_history(pool, peer, limit=1)
        assert entity.id == NEWS and served == first  # only the account that knows it
    assert sum(resolutions(fake_telegram).values()) == 1

    with pytest.raises(PeerNotFound, match="@username"):
        await run_history(pool, marked(TALK))  # nobody has met it yet


async def test_fifty_asks_cost_at_most_one_resolution_per_account_and_none_after_restart(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    for _ in range(25):
        await run_history(pool, "@news", limit=1)
    await asyncio.gather(*(run_history(pool, "@news", limit=1) for _ in range(25)))
    assert sum(resolutions(fake_telegram).values()) == 1  # the pool keeps to who knows it
    # Asked on every account (as flood waits and load spread calls over a long life).
    accounts = list(pool)
    for i in range(50):
        await accounts[i % 3].get_entity(parse_peer("@news"))
    assert resolutions(fake_telegram) == dict.fromkeys(ACCOUNTS, 1)
    await pool.stop()

    restarted = await make_pool()  # new TeleClients on the same session files
    assert all(a.knows(parse_peer("@news")) for a in restarted)
    await asyncio.gather(*(run_history(restarted, "@news", limit=1) for _ in range(25)))
    accounts = list(restarted)
    for i in range(25):
        await accounts[i % 3].get_history(parse_peer(marked(NEWS)), limit=1)
    assert resolutions(fake_telegram) == dict.fromkeys(ACCOUNTS, 1)  # none after the restart


# --- flood waits, bans ---


async def test_flood_wait_on_one_account_is_served_by_another(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    await each_learns(pool, "@news")
    rpc_of(fake_telegram).flood_wait("messages.getHistory", 120, times=None, user_id=1001)
    served = {(await run_history(pool, "@news", limit=1))[2] for _ in range(6)}
    assert served == {"acc1002", "acc1003"}
    assert rpc_of(fake_telegram).count("messages.getHistory", 1001) == 1
    waiting = {a["name"]: a for a in pool.accounts()}["acc1001"]
    assert waiting["state"] == "flood_wait" and waiting["flood_wait_until"]


async def test_flood_wait_on_every_account_answers_the_earliest_end(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    await each_learns(pool, "@news")
    for user, seconds in zip(ACCOUNTS, (300, 40, 120), strict=True):
        rpc_of(fake_telegram).flood_wait("messages.getHistory", seconds, times=None, user_id=user)
    with pytest.raises(FloodWait) as caught:
        await run_history(pool, "@news")
    assert caught.value.retry_after in (39, 40)  # a second may pass between the answers
    assert caught.value.account == "acc1002"
    assert {a["state"] for a in pool.accounts()} == {"flood_wait"}


async def test_a_banned_account_leaves_the_rotation(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    await each_learns(pool, "@news")
    rpc_of(fake_telegram).deactivated_ban(1002)
    served = [(await run_history(pool, "@news", limit=1))[2] for _ in range(6)]
    assert "acc1002" not in served[1:] and set(served) >= {"acc1001", "acc1003"}
    banned = pool.get("acc1002")
    assert banned.state is AccountState.BANNED and not banned.usable
    before = rpc_of(fake_telegram).count(user_id=1002)
    for _ in range(5):
        await run_history(pool, "@news", limit=1)
    assert rpc_of(fake_telegram).count(user_id=1002) == before  # never asked again
    assert {a["name"]: a["state"] for a in pool.accounts()}["acc1002"] == "banned"


async def test_with_the_shipped_threshold_a_short_flood_wait_moves_on_at_once(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    # With a threshold above 3 s, Telethon would sleep through FLOOD_WAIT_3 inside the call
    # (request_retries times), the HTTP request hanging and the account counted ok.
    pool = await make_pool(
        flood_sleep_threshold=shipped("telegram.flood_sleep_threshold"),
        request_retries=shipped("telegram.request_retries"),
    )
    await each_learns(pool, "@news")
    rpc_of(fake_telegram).flood_wait("messages.getHistory", 3, times=None, user_id=1001)
    async with asyncio.timeout(2.5):  # less than the wait: nobody slept through it
        _, _, served = await run_history(pool, "@news", limit=1)
    assert served != "acc1001"
    assert rpc_of(fake_telegram).count("messages.getHistory", 1001) == 1  # tried first, once
    assert pool.get("acc1001").state is AccountState.FLOOD_WAIT  # the pool saw the wait


# --- unknown and private peers ---


async def test_unknown_username_is_peer_not_found(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    with pytest.raises(PeerNotFound):
        await run_history(pool, "@nobody_here")
    rpc_of(fake_telegram).username_not_occupied("news")
    with pytest.raises(PeerNotFound):
        await run_history(pool, "@news")


async def ask_dead(pool: TeleClients, peer: str) -> None:
    with pytest.raises(PeerNotFound):
        await run_history(pool, peer, limit=1)


@pytest.mark.parametrize("error", ["USERNAME_NOT_OCCUPIED", "USERNAME_INVALID"])
async def test_a_dead_username_costs_one_resolution_and_one_token(
    make_pool: Callable[..., Any], fake_telegram: Any, error: str
) -> None:
    # One token a minute per account: what each dead ask would cost is visible at once.
    pool = await make_pool(resolve_per_minute=1)
    rpc = rpc_of(fake_telegram)
    rpc.fail(RESOLVE, 400, error, times=1)  # the next resolution, whatever the name
    await ask_dead(pool, "@ghost")
    for _ in range(9):
        await ask_dead(pool, "@ghost")
    await asyncio.gather(*(ask_dead(pool, p) for p in ["@Ghost", "t.me/ghost"] * 5))
    assert sum(resolutions(fake_telegram).values()) == 1
    # Two accounts still hold their token: two live names resolve, a third finds none left.
    for peer, chat in (("@news", NEWS), ("@talk", TALK)):
        entity, _, _ = await run_history(pool, peer, limit=1)
        assert entity.id == chat
    with pytest.raises(RateLimited):
        await run_history(pool, "@lonely", limit=1)
    assert sum(resolutions(fake_telegram).values()) == 3


async def test_a_dead_username_is_asked_again_after_the_ttl(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    clock = FakeClock()
    pool = await make_pool(pool_clock=clock, unknown_username_ttl=60)
    rpc = rpc_of(fake_telegram)
    rpc.username_not_occupied("news")  # "news" is free for now
    await ask_dead(pool, "@news")
    clock.now += 59
    await ask_dead(pool, "@news")
    assert sum(resolutions(fake_telegram).values()) == 1
    clock.now += 2  # past the TTL: asked again, and again cached
    for _ in range(3):
        await ask_dead(pool, "@news")
    assert sum(resolutions(fake_telegram).values()) == 2
    rpc.clear_faults()  # somebody registers it
    await ask_dead(pool, "@news")  # still the cached answer...
    clock.now += 61
    entity, _, _ = await run_history(pool, "@news", limit=1)  # ...until the TTL ends
    assert entity.id == NEWS
    assert sum(resolutions(fake_telegram).values()) == 3


async def test_the_dead_username_cache_is_bounded(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool(unknown_usernames_max=2)
    for name in ("gone_a", "gone_b", "gone_c"):
        await ask_dead(pool, f"@{name}")
    assert sum(resolutions(fake_telegram).values()) == 3
    await ask_dead(pool, "@gone_c")
    await ask_dead(pool, "@gone_b")
    assert sum(resolutions(fake_telegram).values()) == 3  # the newest two are kept
    await ask_dead(pool, "@gone_a")  # the oldest was forgotten
    assert sum(resolutions(fake_telegram).values()) == 4


async def test_private_channel_is_peer_private(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    await each_learns(pool, "@news")
    rpc_of(fake_telegram).channel_private(NEWS)
    with pytest.raises(PeerPrivate):
        await run_history(pool, "@news")
    assert all(a.state is AccountState.OK for a in pool)


# --- the other calls, end to end ---


async def test_history_pages_to_the_end(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool()
    seen: list[int] = []
    offset = 0
    while True:
        _, page, _ = await run_history(pool, "@news", limit=7, offset_id=offset)
        if not page:
            break
        seen += [m.id for m in page]
        offset = page[-1].id
    assert seen == list(range(30, 0, -1))
    _, page, _ = await run_history(pool, "@news", limit=100, min_id=10, max_id=14)
    assert [m.id for m in page] == [13, 12, 11]


async def test_an_empty_answer_still_names_its_peer(make_pool: Callable[..., Any]) -> None:
    # Telegram lists only the users and chats its messages mention: an empty page of a
    # private chat carries none, which must not read as PEER_NOT_FOUND.
    pool = await make_pool()
    entity, page, _ = await run_history(pool, "@lonely", limit=10)
    assert entity.id == LONELY and page == []
    (entity, found), _ = await pool.run(
        lambda tc: tc.get_messages(parse_peer("@lonely"), [999]), parse_peer("@lonely")
    )
    assert entity.id == LONELY and found == [None]


async def test_messages_participants_full_search_join_leave(make_pool: Callable[..., Any]) -> None:
    pool = await make_pool()

    async def on(peer: str, call: Callable[[TeleClient], Any]) -> Any:
        return (await pool.run(call, parse_peer(peer)))[0]

    _, msgs = await on("@news", lambda tc: tc.get_messages(parse_peer("@news"), [3, 999, 1]))
    assert [m.id if m else None for m in msgs] == [3, None, 1]

    entity, users, total = await on(
        "@talk", lambda tc: tc.get_participants(parse_peer("@talk"), limit=5, offset=0)
    )
    assert entity.id == TALK and total == 13 and len(users) == 5

    entity, full = await on("@talk", lambda tc: tc.get_full(parse_peer("@talk")))
    assert entity.id == full.id == TALK

    found, _ = await pool.run(lambda tc: tc.search("News", limit=10))
    assert {c.id for c in found} == {NEWS, TALK}

    joined, account = await pool.run(lambda tc: tc.join(parse_peer("@news")), parse_peer("@news"))
    assert joined.id == NEWS and not joined.left
    left = await account.leave(parse_peer("@news"))
    assert left.id == NEWS


async def test_a_search_query_telegram_finds_too_short_blames_q(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    with pytest.raises(InvalidArgument) as caught:
        await pool.run(lambda tc: tc.search("new"))
    assert caught.value.argument == "q" and "QUERY_TOO_SHORT" in caught.value.message
    # The caller's mistake: one account asked, none taken out of rotation.
    assert sum(rpc_of(fake_telegram).count("contacts.search", u) for u in ACCOUNTS) == 1
    assert all(a["state"] == "ok" for a in pool.accounts())


async def test_search_returns_only_public_chats_trimmed_to_limit(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    from telethon.tl import functions

    from tests.fakedc.world import ChatSpec

    world = rpc_of(fake_telegram).world
    everyone = {u: 0 for u in ACCOUNTS}
    world.chats[SECRET].members.update(everyone)  # a private channel every account is in
    for spec in (
        {"id": 2901, "kind": "megagroup", "title": "Secret circle", "members": everyone},
        {"id": 2902, "kind": "group", "title": "Secret family", "members": everyone},
        {"id": 2903, "kind": "megagroup", "title": "Secret fans", "username": "secretfans",
         "members": everyone},
        {"id": 2904, "kind": "broadcast", "title": "Secret news", "username": "secretnews"},
    ):  # fmt: skip
        world.add_chat(ChatSpec.from_dict(spec))
    pool = await make_pool()

    # What Telegram answers: the private chats the account is in come in my_results.
    raw, _ = await pool.run(lambda tc: tc.client(functions.contacts.SearchRequest("Secret", 10)))
    assert {c.id for c in raw.chats} == {SECRET, 2901, 2902, 2903, 2904}
    assert len(raw.my_results) == 4 and len(raw.results) == 1

    found, _ = await pool.run(lambda tc: tc.search("Secret", limit=10))
    assert [c.id for c in found] == [2904, 2903]  # public ones only: results, then my_results

    # Telegram caps results and my_results each at the limit: the merged list is cut to it.
    raw, _ = await pool.run(lambda tc: tc.client(functions.contacts.SearchRequest("Secret", 1)))
    assert len(raw.my_results) + len(raw.results) == 2
    found, _ = await pool.run(lambda tc: tc.search("Secret", limit=1))
    assert [c.id for c in found] == [2904]


async def test_updates_reach_the_callback_with_their_account(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    rpc_of(fake_telegram).set_pusher(fake_telegram.push)
    pool = await make_pool(receive_updates=True)
    got: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def callback(tc: TeleClient, update: Any) -> None:
        if type(update).__name__ == "UpdateNewChannelMessage":
            await got.put((tc.name, update))

    pool.on_update(callback)
    for tc in pool:  # each account holds its updates until its consumer listens
        assert tc.updates is not None
        tc.updates.open()
    await each_learns(pool, "@talk")
    await rpc_of(fake_telegram).post_message(TALK, "fresh", from_id=3002)
    names = set()
    while len(names) < len(ACCOUNTS):
        name, update = await asyncio.wait_for(got.get(), 20)
        assert update.message.message == "fresh"
        names.add(name)
    assert names == {f"acc{u}" for u in ACCOUNTS}


async def test_a_resolution_is_on_disk_at_once_not_only_at_stop(
    make_pool: Callable[..., Any], sessions: Path
) -> None:
    import sqlite3

    pool = await make_pool()
    _, _, name = await run_history(pool, "@news", limit=1)
    # Another connection sees only committed rows: a crash now would not lose this one.
    with contextlib.closing(sqlite3.connect(sessions / f"{name}.session")) as db:
        rows = db.execute("select id from entities where username = 'news'").fetchall()
    assert rows == [(-(10**12) - NEWS,)]


async def test_a_dropped_connection_heals_without_losing_the_account(
    make_pool: Callable[..., Any], fake_telegram: Any
) -> None:
    pool = await make_pool()
    await run_history(pool, "@news", limit=1)
    assert fake_telegram.drop_connections() >= len(ACCOUNTS)
    for _ in range(5):  # Telethon reconnects by itself; the calls just go on
        entity, _, _ = await run_history(pool, "@news", limit=1)
        assert entity.id == NEWS
    assert {a["state"] for a in pool.accounts()} == {"ok"}
