"""service/fleet.py: the pool kept in line with sessions/ and the sidecars by a reload.

Real TeleClients on real session files and sidecars, Telegram replaced by the fake of
tests/model/faketelethon.py; the subscription flow's part recorded. The reload under load on
a real server process is tests/test_reload_under_load.py's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from telethon.crypto import AuthKey

from common.const import Proxy
from common.sidecar import AccountSettings
from common.utils import parse_peer
from model.pool import TeleClients
from model.session import EntitySession, SessionLock, SessionSeal
from model.teleclient import TeleClient
from service.fleet import Fleet
from tests.fixtures.wait import wait_for
from tests.model.faketelethon import FakeChat, FakeClock, FakeTelegram, fake_account

USERS = {"acc101": 101, "acc102": 102, "acc103": 103, "acc104": 104}
PROXY = "socks5://user:secret@127.0.0.1:1080"


class Flow:
    """The subscription flow's part, recorded."""

    def __init__(self) -> None:
        self.adopted: list[str] = []
        self.retired: list[str] = []

    def adopt(self, account: TeleClient) -> None:
        self.adopted.append(account.name)

    async def retire(self, account: str) -> None:
        self.retired.append(account)


class Rig:
    def __init__(self, tmp_path: Path, default_proxy: Proxy | None = None) -> None:
        self.default_proxy = default_proxy
        self.world = FakeTelegram()
        self.world.add_chat(FakeChat(2001, "News", "news", "megagroup", [101, 102, 103], [1, 2]))
        self.dir = tmp_path / "sessions"
        self.dir.mkdir()
        self.clock = FakeClock()
        self.flow = Flow()
        self.pool = TeleClients([], clock=self.clock)
        self.fleet = Fleet(
            self.pool, self.dir, self.make, default_proxy=default_proxy, flow=self.flow,
            drain_timeout=30, clock=self.clock, wall=self.clock,
        )  # fmt: skip

    def make(self, path: Path, settings: AccountSettings) -> TeleClient:
        return fake_account(
            self.world, path.parent, path.stem, USERS[path.stem],
            proxy=settings.proxy_or(self.default_proxy), label=settings.label, clock=self.clock,
        )  # fmt: skip

    def session(self, stem: str, **sidecar: str) -> Path:
        """A session file (made by a TeleClient, never started) and its sidecar, if given."""
        path = self.dir / f"{stem}.session"
        if not path.exists():
            fake_account(self.world, self.dir, stem, USERS[stem]).client.session.close()
        self.sidecar(stem, **sidecar)
        return path

    def sidecar(self, stem: str, **values: str) -> None:
        path = self.dir / f"{stem}.properties"
        if values:
            path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        else:
            path.unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(a.name for a in self.pool)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    r.session("acc101")
    r.session("acc102")
    await r.fleet.reload()  # the start, as a first reload: both join
    r.flow.adopted.clear()
    yield r
    await r.pool.stop()


def free(path: Path) -> bool:
    """Whether nobody holds the session file (the account that had it let it go)."""
    lock = SessionLock(path)
    try:
        lock.acquire()
    except Exception:
        return False
    lock.release()
    return True


async def test_a_new_session_joins_and_a_removed_one_leaves(rig: Rig) -> None:
    rig.session("acc103")
    leaving = rig.pool.get("acc101")
    (rig.dir / "acc101.session").unlink()
    done = await rig.fleet.reload()
    assert (done.added, done.removed, done.reconnected, done.refused) == (
        ["acc103"], ["acc101"], [], {}
    )
    assert rig.names() == ["acc102", "acc103"]
    assert rig.flow.adopted == ["acc103"] and rig.flow.retired == ["acc101"]
    assert rig.pool.get("acc103").usable
    assert not leaving.client.connected and free(leaving.session_path)
    # Nothing changed: nothing happens.
    again = await rig.fleet.reload()
    assert (again.added, again.removed, again.reconnected) == ([], [], [])


async def test_a_disabled_account_leaves_and_comes_back_when_enabled(rig: Rig) -> None:
    rig.sidecar("acc102", enabled="false", label="spare")
    done = await rig.fleet.reload()
    assert done.removed == ["acc102"] and rig.names() == ["acc101"]
    assert (rig.dir / "acc102.session").exists()  # its session stays as it is
    rig.sidecar("acc102", enabled="true")
    done = await rig.fleet.reload()
    assert done.added == ["acc102"] and rig.names() == ["acc101", "acc102"]


async def test_a_changed_proxy_reconnects_the_account(rig: Rig) -> None:
    before = rig.pool.get("acc102")
    rig.sidecar("acc102", proxy=PROXY)
    done = await rig.fleet.reload()
    assert (done.added, done.removed, done.reconnected) == ([], [], ["acc102"])
    after = rig.pool.get("acc102")
    assert after is not before and not before.client.connected
    assert after.proxy is not None and (after.proxy.host, after.proxy.port) == ("127.0.0.1", 1080)
    assert rig.pool.get("acc101").proxy is None
    rig.sidecar("acc102", proxy=PROXY, label="farm-eu-07")
    assert (await rig.fleet.reload()).reconnected == []  # the same proxy again: left alone
    assert rig.pool.get("acc102") is after and after.label == "farm-eu-07"  # shown at once
    rig.sidecar("acc102")  # back to telegram.proxy (none)
    assert (await rig.fleet.reload()).reconnected == ["acc102"]
    assert rig.pool.get("acc102").proxy is None


async def test_an_account_told_direct_leaves_the_global_proxy(tmp_path: Path) -> None:
    rig = Rig(tmp_path, default_proxy=Proxy("socks5", "127.0.0.1", 1081))
    rig.session("acc101")
    rig.session("acc102")
    try:
        await rig.fleet.reload()
        assert all(a.proxy is not None and a.proxy.port == 1081 for a in rig.pool)
        rig.sidecar("acc102", proxy="direct")
        assert (await rig.fleet.reload()).reconnected == ["acc102"]
        assert rig.pool.get("acc102").proxy is None and rig.pool.get("acc101").proxy is not None
        assert (await rig.fleet.reload()).reconnected == []  # still direct: left alone
    finally:
        await rig.pool.stop()


async def test_a_bad_sidecar_is_refused_and_its_account_keeps_running(rig: Rig) -> None:
    running = rig.pool.get("acc101")
    (rig.dir / "acc101.properties").write_text(f"proxy={PROXY}\nenabeld=false\n")
    done = await rig.fleet.reload()
    assert list(done.refused) == ["acc101"] and "enabeld" in done.refused["acc101"]
    assert "secret" not in done.refused["acc101"]
    assert rig.pool.get("acc101") is running and running.client.connected
    assert (done.removed, done.reconnected) == ([], [])


async def test_a_held_or_sealed_file_is_refused_until_it_can_be_opened(rig: Rig) -> None:
    path = rig.session("acc103")
    held = SessionLock(path)
    held.acquire()  # a login under way
    try:
        done = await rig.fleet.reload()
    finally:
        held.release()
    assert "in use by another process" in done.refused["acc103"] and rig.names() == ["acc101", "acc102"]
    # A file sealed with a key this server was not given: refused, naming the key.
    sealed = EntitySession(str(rig.dir / "acc104.session"), seal=SessionSeal(bytes(32)))
    sealed.auth_key = AuthKey(bytes(range(256)))
    sealed.save()
    sealed.close()
    done = await rig.fleet.reload()
    assert done.added == ["acc103"] and list(done.refused) == ["acc104"]
    assert "telegram.session_key" in done.refused["acc104"]
    assert rig.names() == ["acc101", "acc102", "acc103"]


async def test_a_leaving_account_finishes_its_work_first(rig: Rig) -> None:
    leaving = rig.pool.get("acc101")
    leaving.pending_downloads = 1  # a download bound to it is under way
    (rig.dir / "acc101.session").unlink()
    reload = asyncio.create_task(rig.fleet.reload())
    await wait_for(lambda: rig.flow.retired == ["acc101"], what="its chats handed over")
    # Out of the pool at once (no new call picks it), still connected for its download.
    assert rig.names() == ["acc102"] and not reload.done()
    assert leaving.client.connected
    leaving.pending_downloads = 0
    done = await asyncio.wait_for(reload, 5)
    assert done.removed == ["acc101"] and not leaving.client.connected


async def test_a_leaving_account_waits_no_longer_than_the_drain_timeout(rig: Rig) -> None:
    leaving = rig.pool.get("acc101")
    leaving.pending_downloads = 1  # never ends (its account is paused by a flood wait)
    (rig.dir / "acc101.session").unlink()
    reload = asyncio.create_task(rig.fleet.reload())
    await wait_for(lambda: rig.flow.retired == ["acc101"], what="its chats handed over")
    assert not reload.done()
    rig.clock.advance(31)
    done = await asyncio.wait_for(reload, 5)
    assert done.removed == ["acc101"] and not leaving.client.connected


async def test_a_call_in_flight_on_a_leaving_account_finishes_on_it(rig: Rig) -> None:
    leaving = rig.pool.get("acc101")
    leaving.client.gate = asyncio.Event()  # its answers wait
    call = asyncio.create_task(leaving.get_history(parse_peer("@news"), limit=1))
    await wait_for(lambda: leaving.client.at_gate == 1, what="the call in flight")
    assert leaving.in_flight == 1
    (rig.dir / "acc101.session").unlink()
    reload = asyncio.create_task(rig.fleet.reload())
    await wait_for(lambda: rig.flow.retired == ["acc101"], what="its chats handed over")
    assert not reload.done() and leaving.client.connected and rig.names() == ["acc102"]
    leaving.client.gate.set()
    _, messages = await asyncio.wait_for(call, 5)  # answered, not cut
    assert messages
    done = await asyncio.wait_for(reload, 5)
    assert done.removed == ["acc101"] and leaving.in_flight == 0
    assert not leaving.client.connected


async def test_the_last_reload_and_what_it_refused_are_kept_for_status_and_metrics(
    rig: Rig,
) -> None:
    rig.clock.advance(60)
    (rig.dir / "acc102.properties").write_text("enabeld=false\n")
    await rig.fleet.reload()
    d = rig.fleet.describe()
    assert (d["reloads"], d["failures"], d["last_error"]) == (2, 0, None)
    assert d["last_at"] == rig.clock.now
    assert d["last"] == "0 added, 0 removed, 0 reconnected, 1 refused"
    assert list(d["refused"]) == ["acc102"] and "enabeld" in d["refused"]["acc102"]


async def test_a_missing_sessions_folder_fails_the_reload_and_removes_nobody(rig: Rig) -> None:
    rig.dir.rename(rig.dir.with_name("moved"))
    with pytest.raises(FileNotFoundError, match="sessions folder"):
        await rig.fleet.reload()
    assert rig.names() == ["acc101", "acc102"]
    d = rig.fleet.describe()
    assert (d["reloads"], d["failures"]) == (1, 1)
    assert "sessions folder" in d["last_error"] and d["last"] is None

