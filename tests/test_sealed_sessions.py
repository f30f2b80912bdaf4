"""Sealed sessions end to end: `start.py serve` refusing a sealed file without its key or
with a wrong one (a real process, exit code 2), `start.py sessions seal|unseal`, a server
serving through sealed sessions, and a login writing a sealed file. The format and the
conversion's atomicity are tests/model/test_session.py's."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common.const import load_settings
from model.session import SessionLock, is_sealed
from service.apiclient import ApiClient
from start import Server, list_accounts, login
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures.server_config import AES_KEY, ROOT, SUBPROCESS_ENV, TOKEN, write_config
from tests.fixtures.wait import wait_for

KEY = "3c" * 32
WRONG_KEY = "c3" * 32

pytestmark = pytest.mark.slow  # child processes and the emulator


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    return TelegramRpc(dw.demo_world())


@pytest.fixture
def sessions(telegram_session: Callable[..., Path], fake_telegram: FakeTelegram) -> list[Path]:
    return [telegram_session(u, name=f"acc{u}") for u in (dw.ACCOUNT_A, dw.ACCOUNT_B)]


def auth_column(path: Path) -> bytes:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (column,) = db.execute("select auth_key from sessions").fetchone()
    return bytes(column)


def cli(config: Path, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = dict(SUBPROCESS_ENV)
    if key is not None:
        env["TGC_TELEGRAM_SESSION_KEY"] = key
    return subprocess.run(
        [sys.executable, "start.py", *args, "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_seal_and_unseal_convert_every_file(sessions: list[Path], tmp_path: Path) -> None:
    config = write_config(tmp_path)
    plain = {p: auth_column(p) for p in sessions}
    done = cli(config, "sessions", "seal")
    assert done.returncode == 0, done.stderr
    assert all(f"{p}: sealed" in done.stdout for p in sessions)
    for path in sessions:
        assert is_sealed(auth_column(path)) and plain[path] not in path.read_bytes()
    again = cli(config, "sessions", "seal")
    assert again.returncode == 0 and all(f"{p}: already sealed" in again.stdout for p in sessions)
    wrong = cli(config, "sessions", "unseal", key=WRONG_KEY)
    assert wrong.returncode == 2 and "telegram.session_key" in wrong.stderr
    assert "does not open with this key" in wrong.stderr and "Traceback" not in wrong.stderr
    done = cli(config, "sessions", "unseal")
    assert done.returncode == 0, done.stderr
    assert {p: auth_column(p) for p in sessions} == plain
    keyless = cli(config, "sessions", "seal", key=None)
    assert keyless.returncode == 2 and "telegram.session_key" in keyless.stderr
    assert not any(is_sealed(auth_column(p)) for p in sessions)


def test_seal_refuses_a_file_a_server_holds(sessions: list[Path], tmp_path: Path) -> None:
    held = SessionLock(sessions[1])
    held.acquire()
    try:
        done = cli(write_config(tmp_path), "sessions", "seal")
    finally:
        held.release()
    assert done.returncode == 2 and "in use by another process" in done.stderr
    assert not is_sealed(auth_column(sessions[1]))


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "is sealed and telegram.session_key is not set"),
        (WRONG_KEY, "does not open with this key"),
    ],
)
def test_serve_refuses_a_sealed_file_without_its_key(
    sessions: list[Path], tmp_path: Path, key: str | None, reason: str
) -> None:
    config = write_config(tmp_path)
    assert cli(config, "sessions", "seal").returncode == 0
    done = cli(config, "serve", "--no-console", key=key)
    assert done.returncode == 2, done.stderr
    assert "telegram.session_key" in done.stderr and reason in done.stderr
    assert any(str(p) in done.stderr for p in sessions)  # names the file
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "run" / "tgc.pid").exists()


async def test_a_server_serves_through_sealed_sessions(sessions: list[Path], tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert cli(config, "sessions", "seal").returncode == 0
    server = Server(load_settings(config, env={"TGC_TELEGRAM_SESSION_KEY": KEY}))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.url_file.exists() or task.done(), within=20.0,
                       what="the url file")
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            answer = await api.request("GET", "/api/v1/accounts")
            assert answer.ok, answer
            assert sorted(a["state"] for a in answer.data["accounts"]) == ["ok", "ok"]
            peer = await api.request("GET", "/api/v1/peer?peer=@tgc_news")
            assert peer.ok and peer.data["title"] == "TGC News"
    finally:
        server.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    assert all(is_sealed(auth_column(p)) for p in sessions)  # still sealed after the stop


async def test_login_writes_a_sealed_file(tmp_path: Path, fake_telegram: FakeTelegram) -> None:
    settings = load_settings(write_config(tmp_path), env={"TGC_TELEGRAM_SESSION_KEY": KEY})
    path = await login(
        settings, "+1 555 000 1001", ask=lambda _: "12345", ask_secret=lambda _: "",
        say=lambda _: None, dc=(1, "127.0.0.1", fake_telegram.port(1)),
    )
    assert path is not None and is_sealed(auth_column(path))
    rows = await list_accounts(settings)
    assert [(r["state"], r["user_id"]) for r in rows] == [("ok", dw.ACCOUNT_A)]
