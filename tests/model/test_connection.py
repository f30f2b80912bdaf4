"""model/connection.py through a real TeleClient: every request's errors become the
service's, and the account's state follows them (flood waits per request kind, bans and
logouts for good, disconnects healed in the background), for requests the account sends
and for errors the downloader meets on its own senders (`note_error`).

Telegram is `FakeTelegram` (tests/model/faketelethon.py); fixtures in conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import errors, functions, types

from common.errors import (
    AccountUnusable,
    FloodWait,
    PeerNotFound,
    PeerPrivate,
    TelegramError,
)
from common.utils import parse_peer
from model.account import AccountState
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
