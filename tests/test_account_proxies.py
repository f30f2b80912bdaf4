"""Per-account proxies (sidecars, common/sidecar.py) through the real server and real proxies.

The server is start.py's `Server` built from a config file, as `start.py serve` builds it,
on the emulator (tests/fakedc) in this process. Each account has a sidecar
(sessions/NAME.properties) naming its own Debian `microsocks` proxy, with a username and a
password; each proxy binds its outgoing connections to its own loopback address (127.0.0.2
for account A, 127.0.0.3 for B), and the emulator records the source address of every
connection it accepts (`FakeTelegram.accepted`). `telegram.proxy` names a proxy nobody
listens on: an account that used it instead of its sidecar's could not connect.

What is checked:
- every connection of account A (its main one, its home-DC media connection and its
  connection to DC 2 for a file there) comes from A's proxy, every one of B's from B's;
  the files end stored; /api/v1/accounts and /status show each account's proxy (host and
  port) and label, never the proxy's password;
- an account disabled by its sidecar is not in the pool and never connects;
- an account whose sidecar says `proxy=direct` connects without telegram.proxy (every one
  of its connections from 127.0.0.1);
- B's sidecar naming a wrong password, a port nobody listens on, or a proxy that never
  answers: B shows "proxy authentication failed", "proxy unreachable" or "proxy timed out"
  naming the proxy's host and port in /api/v1/accounts, /status and the log (never a
  password); A serves;
- a bad sidecar stops `start.py serve` with exit code 2 naming the key and the file;
- `start.py login` (with the sidecar written first) and `start.py accounts` connect through
  the sidecar's proxy too; `accounts` shows a disabled account as such.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from common.const import load_settings
from service.apiclient import ApiClient
from start import Server, list_accounts, login
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import DEFAULT_DATE, World
from tests.fixtures.server_config import AES_KEY, ROOT, SUBPROCESS_ENV, TOKEN, write_config
from tests.fixtures.socks5 import Socks5Proxy, free_port, microsocks
from tests.fixtures.wait import wait_for

# One channel per account, each with a photo on DC 1 and a file on DC 2 (files of their
# own: a file stored once is not downloaded again by the other account).
CHANNELS = {dw.ACCOUNT_A: ("proxied_a", 2901, 5901, 6901), dw.ACCOUNT_B: ("proxied_b", 2902, 5902, 6902)}
SOURCES = {dw.ACCOUNT_A: "127.0.0.2", dw.ACCOUNT_B: "127.0.0.3"}
PASSWORDS = {dw.ACCOUNT_A: "pa55-for-A", dw.ACCOUNT_B: "pa55-for-B"}
WRONG_PASSWORD = "not-B-s-pa55"


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    data = dw.demo_dict()
    for username, chat, photo, doc in CHANNELS.values():
        data["photos"].append({"id": photo, "dc_id": 1})
        data["documents"].append(
            {"id": doc, "kind": "file", "size": 300_000, "dc_id": 2, "file_name": f"{doc}.bin"}
        )
        data["chats"].append(
            {"id": chat, "kind": "broadcast", "title": username, "username": username,
             "creator_id": dw.USER_ALICE, "members": {str(dw.USER_ALICE): DEFAULT_DATE}}
        )  # fmt: skip
        data["messages"] += [
            {"chat": chat, "id": 1, "text": "a photo", "media": {"photo": photo}},
            {"chat": chat, "id": 2, "text": "a file on dc 2", "media": {"document": doc}},
        ]
    return TelegramRpc(World.from_dict(data))


@dataclass
class Fleet:
    """The server on its accounts, each behind its microsocks; `ports[user]` its proxy's."""

    server: Server
    api: ApiClient
    ports: dict[int, int]
    names: dict[int, str]  # user id → the account's name (its session stem)

    async def status_page(self) -> str:
        http = AsyncHTTPClient(force_instance=True)
        try:
            return (await http.fetch(f"{self.server.url}/status")).body.decode()
        finally:
            http.close()

    async def accounts(self) -> dict[str, dict[str, Any]]:
        answer = await self.api.request("GET", "/api/v1/accounts")
        assert answer.ok, answer
        return {a["name"]: a for a in answer.data["accounts"]}


def sidecar(sessions: Path, name: str, **keys: str) -> None:
    (sessions / f"{name}.properties").write_text("".join(f"{k}={v}\n" for k, v in keys.items()))


@pytest.fixture
def fleet(
    tmp_path: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> Callable[..., Any]:
    """`async with fleet() as f`: accounts A and B (and C, disabled by its sidecar) each
    behind its own microsocks, the server started on them. `b_proxy(port)`, given B's
    microsocks port, gives the proxy B's sidecar names instead of that one."""

    @asynccontextmanager
    async def start(b_proxy: Callable[[int], str] | None = None) -> AsyncIterator[Fleet]:
        names = {user: f"acc{user}" for user in (dw.ACCOUNT_A, dw.ACCOUNT_B, dw.ACCOUNT_C)}
        sessions = tmp_path / "sessions"
        for user, name in names.items():
            telegram_session(user, name=name)
        sidecar(sessions, names[dw.ACCOUNT_C], enabled="false")
        async with AsyncExitStack() as stack:
            ports: dict[int, int] = {}
            for user, source in SOURCES.items():
                ports[user] = await stack.enter_async_context(
                    microsocks(f"user{user}", PASSWORDS[user], bind=source)
                )
                proxy = f"socks5://user{user}:{PASSWORDS[user]}@127.0.0.1:{ports[user]}"
                if user == dw.ACCOUNT_B and b_proxy is not None:
                    proxy = b_proxy(ports[user])
                sidecar(sessions, names[user], proxy=proxy, label=f"farm {user}")
            nobody = f"socks5://x:global-pa55@127.0.0.1:{free_port()}"
            config = write_config(tmp_path, {"telegram.proxy": nobody, "telegram.timeout": "4"})
            server = Server(load_settings(config, env={}))
            task = asyncio.create_task(server.serve())
            try:
                await wait_for(
                    lambda: server.url_file.exists() or task.done(), within=30, what="the url file"
                )
                assert not task.done(), task
                async with ApiClient(server.url, TOKEN, AES_KEY) as api:
                    yield Fleet(server, api, ports, names)
            finally:
                server.request_stop()
                assert await asyncio.wait_for(task, 30) == 0

    return start


async def stored_page(fleet: Fleet, username: str) -> set[str]:
    """Reads the channel's page and waits until its files are stored; their keys."""
    page = await fleet.api.request("GET", f"/api/v1/messages?peer=@{username}&limit=10")
    assert page.ok, page
    keys = {m["media"]["key"] for m in page.data["messages"] if (m.get("media") or {}).get("key")}
    assert len(keys) == 2, page.data

    async def stored() -> bool:
        for key in keys:
            record = await fleet.api.request("GET", f"/api/v1/media/{key}")
            assert record.ok and record.data["state"] != "failed", record
            if record.data["state"] != "stored":
                return False
        return True

    await wait_for(stored, within=30, what=f"the files of @{username} stored", step=0.1)
    return keys


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_every_connection_of_an_account_comes_from_its_own_proxy(
    fleet: Callable[..., Any], fake_telegram: FakeTelegram
) -> None:
    async with fleet() as f:
        accounts = await f.accounts()
        assert sorted(accounts) == sorted(f.names[u] for u in SOURCES)  # C is disabled
        for user, port in f.ports.items():
            shown = accounts[f.names[user]]
            assert shown["state"] == "ok", shown
            assert shown["proxy"] == f"socks5://127.0.0.1:{port}"
            assert shown["label"] == f"farm {user}"
        # A first (the least recently picked), then B: A has just been picked.
        for user in SOURCES:
            await stored_page(f, CHANNELS[user][0])
        page = await f.status_page()
        for user, port in f.ports.items():
            assert f"via socks5://127.0.0.1:{port}" in page and f"farm {user}" in page
        shown_text = str(await f.accounts()) + page
        assert not any(p in shown_text for p in PASSWORDS.values())

    for user, source in SOURCES.items():
        seen = fake_telegram.accepted(user)
        assert {a.source for a in seen} == {source}, [a.as_dict() for a in seen]
        # The account's main connection, its home-DC media connection and DC 2's.
        files_on = {a.dc_id for a in seen if a.requests["upload.getFile"]}
        assert files_on == {1, 2}, [a.as_dict() for a in seen]
        home = [a for a in seen if a.dc_id == 1]
        assert any(a.requests["upload.getFile"] == 0 for a in home), "no main connection"
    assert not fake_telegram.accepted(dw.ACCOUNT_C)
    # Nothing reached the emulator other than through the two proxies.
    assert {a.source for a in fake_telegram.accepted()} == set(SOURCES.values())


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_an_account_told_direct_connects_without_the_global_proxy(
    fleet: Callable[..., Any], fake_telegram: FakeTelegram
) -> None:
    # telegram.proxy names a proxy nobody listens on: B can only serve if it goes direct.
    async with fleet(b_proxy=lambda _port: "direct") as f:
        accounts = await f.accounts()
        b = accounts[f.names[dw.ACCOUNT_B]]
        assert (b["state"], b["proxy"]) == ("ok", None), b
        # A first (the least recently picked), then B: A has just been picked.
        for user in SOURCES:
            await stored_page(f, CHANNELS[user][0])
    seen = fake_telegram.accepted(dw.ACCOUNT_B)
    assert seen and {a.source for a in seen} == {"127.0.0.1"}, [a.as_dict() for a in seen]
    assert {a.dc_id for a in seen if a.requests["upload.getFile"]} == {1, 2}
    assert {a.source for a in fake_telegram.accepted(dw.ACCOUNT_A)} == {"127.0.0.2"}


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("failure", ["wrong password", "nobody listens", "silent proxy"])
async def test_a_failing_proxy_fails_that_account_only_and_says_how(
    failure: str,
    fleet: Callable[..., Any],
    fake_telegram: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="model.account")
    async with AsyncExitStack() as stack:
        user, password = f"user{dw.ACCOUNT_B}", PASSWORDS[dw.ACCOUNT_B]
        other_port: int | None = None  # B's sidecar names this port instead of B's proxy's
        if failure == "wrong password":
            password, said = WRONG_PASSWORD, "proxy authentication failed"
        elif failure == "nobody listens":
            other_port, said = free_port(), "proxy unreachable"
        else:  # accepts the connection, never answers a byte
            silent = await stack.enter_async_context(Socks5Proxy(user, password))
            silent.silent = True
            other_port, said = silent.port, "proxy timed out"
        f = await stack.enter_async_context(
            fleet(b_proxy=lambda port: f"socks5://{user}:{password}@127.0.0.1:{other_port or port}")
        )
        where = f"socks5 proxy 127.0.0.1:{other_port or f.ports[dw.ACCOUNT_B]}"
        accounts = await f.accounts()
        a, b = accounts[f.names[dw.ACCOUNT_A]], accounts[f.names[dw.ACCOUNT_B]]
        assert a["state"] == "ok", a
        assert b["state"] == "disconnected", b
        assert b["reason"].startswith(f"connect failed: {said} ({where}"), b
        page = await f.status_page()
        assert f"{said} ({where}" in page
        # A serves: a page and its files, through A's proxy.
        await stored_page(f, CHANNELS[dw.ACCOUNT_A][0])
        logged = [r.getMessage() for r in caplog.records if said in r.getMessage()]
        assert logged and all(where in m and f.names[dw.ACCOUNT_B] in m for m in logged), logged
        shown_text = str(accounts) + page + "\n".join(r.getMessage() for r in caplog.records)
        assert not any(p in shown_text for p in (WRONG_PASSWORD, *PASSWORDS.values()))
    assert not fake_telegram.accepted(dw.ACCOUNT_B)
    assert {a.source for a in fake_telegram.accepted(dw.ACCOUNT_A)} == {SOURCES[dw.ACCOUNT_A]}


def test_a_bad_sidecar_stops_the_start_with_exit_code_2(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / "acc1.session").write_bytes(b"")
    sidecar(sessions, "acc1", proxy="socks5://user:very-secret-pa55@127.0.0.1", label="x")
    proc = subprocess.run(
        [sys.executable, "start.py", "serve", "--no-console", "--config", str(config)],
        cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{sessions / 'acc1.properties'}: proxy: needs a port" in proc.stderr
    assert "very-secret" not in proc.stderr and "Traceback" not in proc.stderr
    # The exit code startup.sh reads is the same, and the log says why.
    assert (tmp_path / "data" / "run" / "tgc.exit").read_text().split()[1] == "2"
    logged = (tmp_path / "logs" / "tgc.log").read_text()
    assert "acc1.properties: proxy: needs a port" in logged and "very-secret" not in logged


async def test_login_and_accounts_go_through_the_sidecars_proxy(
    tmp_path: Path, fake_telegram: FakeTelegram
) -> None:
    settings = load_settings(write_config(tmp_path), env={})
    sessions = settings.telegram.sessions_dir
    sessions.mkdir(parents=True)
    source = SOURCES[dw.ACCOUNT_A]
    async with microsocks("login", "login-pa55", bind=source) as port:
        # Written before the login: the account's first connection is already its proxy's.
        sidecar(sessions, "15550001001", proxy=f"socks5://login:login-pa55@127.0.0.1:{port}",
                label="new one")  # fmt: skip
        path = await login(
            settings, "+15550001001", ask=lambda _: "12345", say=lambda _: None,
            dc=(1, "127.0.0.1", fake_telegram.port(1)),
        )  # fmt: skip
        assert path == sessions / "15550001001.session"
        (sessions / "15550001002.session").write_bytes(b"")
        sidecar(sessions, "15550001002", enabled="false")
        rows = {r["session"]: r for r in await list_accounts(settings)}
    assert rows["15550001001"]["state"] == "ok" and rows["15550001001"]["label"] == "new one"
    assert rows["15550001001"]["proxy"] == f"socks5://127.0.0.1:{port}"
    assert rows["15550001002"]["state"] == "disabled by its sidecar"
    seen = fake_telegram.accepted()
    assert len(seen) >= 2 and {a.source for a in seen} == {source}, [a.as_dict() for a in seen]
    assert {a.user_id for a in seen} == {dw.ACCOUNT_A}
