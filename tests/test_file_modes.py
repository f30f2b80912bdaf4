"""What the service writes is private to its user (issue 11, item 7): a real `start.py
serve` and `start.py login`, started with the usual umask 022, create their folders 0700
and their files 0600 (session files hold auth keys); files that were already there keep
their mode and are named in a warning at the start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common.const import load_settings
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.handshake import EMULATOR_RSA_PUBLIC_PEM
from tests.fixtures.server_config import ROOT, SUBPROCESS_ENV, write_config
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.slow  # child processes


def usual_umask() -> None:  # in the child, before exec: what a login shell gives
    os.umask(0o022)


async def start_py(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "start.py",
        *args,
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=usual_umask,
    )


def modes(root: Path) -> dict[Path, int]:
    """Every folder and file under `root` (itself included) → its permission bits."""
    found = {root: stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path] = stat.S_IMODE(path.lstat().st_mode)
    return found


def not_private(root: Path) -> dict[str, str]:
    """What group or others may use under `root`: {path: mode}; empty when all private."""
    return {str(p): f"{m:04o}" for p, m in modes(root).items() if m & 0o077}


async def test_serve_creates_private_files_and_names_the_open_ones(
    tmp_path: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> None:
    # Session files made the old way (umask 022 in this process): 0644 in a 0755 folder.
    sessions = [telegram_session(u, name=f"acc{u}") for u in (dw.ACCOUNT_A, dw.ACCOUNT_B)]
    given = modes(tmp_path / "sessions")
    assert given[sessions[0]] == 0o644 and given[tmp_path / "sessions"] == 0o755
    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    url_file = settings.run_dir / "tgc.url"
    proc = await start_py("serve", "--no-console", "--config", str(config))
    try:
        await wait_for(
            lambda: url_file.exists() or proc.returncode is not None, within=30, what="serving"
        )
        assert proc.returncode is None, await proc.communicate()
        # While it runs: the locks it made beside the sessions are private too (SQLite
        # gives a journal, a WAL and its -shm their database's mode: as open as it is).
        now = modes(tmp_path / "sessions")
        made = {p: m for p, m in now.items() if p not in given}
        assert any(p.name.endswith(".lock") for p in made), made
        for path, bits in made.items():
            stem = re.sub(r"-(journal|wal|shm)$", "", path.name)
            database = path.with_name(stem)
            assert bits == given.get(database, 0o600), (path, f"{bits:04o}")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for root in (settings.data.dir, settings.log.dir):
        assert not_private(root) == {}
        assert modes(root)[root] == 0o700
    assert any(settings.data.dir.glob("*.sqlite3")) and settings.log.file.exists()
    # Ops' files keep their mode (no silent chmod), and the log says which are open.
    assert {p: m for p, m in modes(tmp_path / "sessions").items() if p in given} == given
    log = settings.log.file.read_text()
    assert "readable by other users of this machine" in log
    assert f"{sessions[0]} (0644)" in log and f"{tmp_path / 'sessions'} (0755)" in log
    assert f"chmod -R go-rwx {tmp_path / 'sessions'}" in log


async def test_login_writes_a_private_session_file(
    tmp_path: Path, fake_telegram: FakeTelegram
) -> None:
    config = tmp_path / "config.properties"
    config.write_text(
        "telegram.api_id=12345\n"
        "telegram.api_hash=0123456789abcdef0123456789abcdef\n"
        "telegram.timeout=10\n"
        "telegram.sessions_dir=accounts/sessions\n"
        "data.dir=data\n"
        "log.dir=logs\n"
    )
    rsa_key = tmp_path / "emulator-rsa.pem"
    rsa_key.write_bytes(EMULATOR_RSA_PUBLIC_PEM)
    proc = await start_py(
        "login",
        "--config", str(config),
        "--phone", "+15550001001",
        "--dc", f"127.0.0.1:{fake_telegram.port(1)}",
        "--dc-rsa-key", str(rsa_key),
    )  # fmt: skip
    code = fake_telegram.dispatcher.login_code
    out, err = await asyncio.wait_for(proc.communicate(f"{code}\n".encode()), 40)
    assert proc.returncode == 0, (out, err)
    session = tmp_path / "accounts" / "sessions" / "15550001001.session"
    assert modes(session) == {session: 0o600}
    assert not_private(tmp_path / "accounts") == {}
    assert not_private(tmp_path / "logs") == {}
