"""model/connection.py through a real TeleClient: every request's errors become the
service's, and the account's state follows them (flood waits per request kind, bans and
logouts for good, disconnects healed in the background), for requests the account sends
and for errors the downloader meets on its own senders (`note_error`).

Telegram is `FakeTelegram` (tests/model/faketelethon.py); fixtures in conftest.py. The
proxy tests at the end run Telethon through a real SOCKS5 proxy to the emulator.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import errors, functions, types

from common.const import Proxy
from common.errors import (
    AccountUnusable,
    FloodWait,
    PeerNotFound,
    PeerPrivate,
    TelegramError,
)
from common.utils import parse_peer
from model.account import AccountState
from model.teleclient import TeleClient
from tests.fakedc.demo_world import ACCOUNT_A
from tests.fakedc.demo_world import NEWS as DEMO_NEWS
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.socks5 import Socks5Proxy, free_port, microsocks
from tests.fixtures.wait import wait_for
from tests.model.faketelethon import (
    ME,
    NEWS,
    SECRET,
    TALK,
    FakeClient,
    FakeClock,
    FakeTelegram,
    fake_account,
)


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


async def test_unknown_and_private_peers(world: FakeTelegram, make: Callable[..., Any]) -> None:
    tc = await make()
    with pytest.raises(PeerNotFound) as nf:
        await tc.get_entity(parse_peer("@nobody_here"))
    assert nf.value.peer == "@nobody_here"
    world.private.add(SECRET)
    with pytest.raises(PeerPrivate):
        await tc.get_history(parse_peer("@secret"))
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


async def test_every_request_is_observed_with_its_outcome(
    world: FakeTelegram, make: Callable[..., Any]
) -> None:
    tc = await make()
    seen: list[tuple[str, str | None, float]] = []
    tc.call_observer = lambda *call: seen.append(call)
    await tc.search("News")
    world.errors[None, "Search"] = "SOMETHING_NEW"
    with pytest.raises(TelegramError):
        await tc.search("News")
    world.flood[ME, "Search"] = 5
    with pytest.raises(FloodWait):
        await tc.search("News")
    assert [(m, e) for m, e, _ in seen] == [
        ("contacts.Search", None),
        ("contacts.Search", "SOMETHING_NEW"),
        ("contacts.Search", "FLOOD_WAIT"),
    ]
    assert all(seconds >= 0 for _, _, seconds in seen)


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
    await wait_for(lambda: tc.state is AccountState.OK, within=5, what="the reconnect")
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
        await wait_for(lambda: tc.state is AccountState.OK, within=5, what="the reconnect")
        assert tc.state is AccountState.OK and tc.user_id == ME and tc.client.refuse_connects == 0
    finally:
        await tc.stop()


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
    # A wait on getFile is Telegram's download throttle: the downloads wait (the media
    # pipeline pauses the account), the pool still picks the account for reads.
    assert tc.ready_in(None) == 0
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


# --- through a SOCKS5 proxy, to the emulator (tests/fakedc) --------------------------------
#
# The proxy is tests/fixtures/socks5.py's (RFC 1928/1929, forwarding for real) or Debian's
# microsocks. An account that can't connect through it says which step failed and where,
# never the password.

PROXY_USER, PROXY_PASSWORD = "tgc", "Pr0xy-s3cret"
WRONG_PASSWORD = "not-the-Pa55word"
# Short enough that a test does not wait out Telethon's five connect attempts.
CONNECT_TIMEOUT = 2.0


@contextlib.asynccontextmanager
async def socks5_port(kind: str) -> AsyncIterator[int]:
    if kind == "microsocks":
        async with microsocks(PROXY_USER, PROXY_PASSWORD) as port:
            yield port
    else:
        async with Socks5Proxy(PROXY_USER, PROXY_PASSWORD) as proxy:
            yield proxy.port


def socks5(port: int, password: str = PROXY_PASSWORD) -> Proxy:
    return Proxy("socks5", "127.0.0.1", port, PROXY_USER, password)


@contextlib.asynccontextmanager
async def account_through(session: Path, proxy: Proxy) -> AsyncIterator[TeleClient]:
    """A started TeleClient on the emulator's session file, connecting through `proxy`;
    its background reconnects far apart (the test reads the first failure)."""
    tc = TeleClient(
        session,
        FAKEDC_API_ID,
        FAKEDC_API_HASH,
        proxy=proxy,
        request_timeout=CONNECT_TIMEOUT,
        reconnect_delay=600,
    )
    await tc.start()
    try:
        yield tc
    finally:
        await tc.stop()


def assert_disconnected_because(
    tc: TeleClient, begins: str, caplog: pytest.LogCaptureFixture
) -> str:
    """The account is disconnected with a reason that begins so, shown the same in its
    description and in the log, and no password anywhere."""
    assert tc.state is AccountState.DISCONNECTED
    reason = tc.reason or ""
    assert reason.startswith(f"connect failed: {begins}"), reason
    assert tc.describe()["reason"] == reason
    assert any(reason in r.getMessage() for r in caplog.records), "not in the log"
    shown = caplog.text + repr(tc.describe())
    assert PROXY_PASSWORD not in shown and WRONG_PASSWORD not in shown
    return reason


@pytest.mark.parametrize("kind", ["asyncio", "microsocks"])
async def test_through_a_socks5_proxy_the_password_works_and_a_wrong_one_is_named(
    kind: str, telegram_session: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with socks5_port(kind) as port:
        async with account_through(telegram_session(ACCOUNT_A), socks5(port)) as good:
            assert (good.state, good.user_id, good.reason) == (AccountState.OK, ACCOUNT_A, None)
            entity, messages = await good.get_history(parse_peer("@tgc_news"), limit=2)
            assert entity.id == DEMO_NEWS and len(messages) == 2
        bad_proxy = socks5(port, WRONG_PASSWORD)
        async with account_through(telegram_session(ACCOUNT_A), bad_proxy) as bad:
            reason = assert_disconnected_because(bad, "proxy authentication failed", caplog)
            assert f"socks5 proxy 127.0.0.1:{port}" in reason
            assert "TimeoutError" not in reason


async def test_a_dead_proxy_port_is_unreachable(
    telegram_session: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    async with account_through(telegram_session(ACCOUNT_A), socks5(port)) as tc:
        reason = assert_disconnected_because(tc, "proxy unreachable", caplog)
        assert f"127.0.0.1:{port}: Connection refused" in reason


async def test_a_proxy_that_refuses_the_tunnel_says_what_it_answered(
    telegram_session: Callable[..., Path],
    fake_telegram: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Socks5Proxy(PROXY_USER, PROXY_PASSWORD) as proxy:
        proxy.reply = 2  # RFC 1928: connection not allowed by ruleset
        async with account_through(telegram_session(ACCOUNT_A), socks5(proxy.port)) as tc:
            reason = assert_disconnected_because(tc, "proxy refused the connection", caplog)
            dc = fake_telegram.dcs[1]
            assert f"'connection not allowed by ruleset' to CONNECT {dc.host}:{dc.port}" in reason


async def test_a_proxy_that_never_answers_is_a_timeout_at_the_greeting(
    telegram_session: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with Socks5Proxy(PROXY_USER, PROXY_PASSWORD) as proxy:
        proxy.silent = True
        async with account_through(telegram_session(ACCOUNT_A), socks5(proxy.port)) as tc:
            reason = assert_disconnected_because(tc, "proxy timed out", caplog)
            assert f"127.0.0.1:{proxy.port} did not answer the greeting in 2 s" in reason
