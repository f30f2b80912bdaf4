"""`python -m tests.fakedc serve` and `make-session` as separate processes, with a stock
Telethon client in the test process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from telethon import TelegramClient
from telethon.tl import functions

from tests.fakedc.demo_world import ACCOUNT_A, ACCOUNT_B, demo_dict
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakedc", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def test_serve_and_make_session_processes(tmp_path: Path) -> None:
    port = free_port()
    keys = tmp_path / "keys"
    # One session made before the server starts, one while it runs.
    before = await run_cli("make-session", "--port", str(port), "--out", str(tmp_path / "a"),
                           "--keys", str(keys))
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakedc", "serve", "--port", str(port), "--keys", str(keys),
        "--log-level", "WARNING", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 30)
        assert f"DC 1 127.0.0.1:{port}" in line.decode()
        during = await run_cli("make-session", "--port", str(port), "--out",
                               str(tmp_path / "b"), "--user-id", str(ACCOUNT_B),
                               "--keys", str(keys))
        for path, user_id in ((before, ACCOUNT_A), (during, ACCOUNT_B)):
            TelegramClient._config = None
            client = TelegramClient(path, FAKEDC_API_ID, FAKEDC_API_HASH)
            await client.connect()
            try:
                assert (await client.get_me()).id == user_id
            finally:
                await client.disconnect()
    finally:
        server.terminate()
        assert await asyncio.wait_for(server.wait(), 30) == 0
        TelegramClient._config = None


async def test_serve_a_world_file_and_a_session_on_dc2(tmp_path: Path) -> None:
    """`serve --world FILE` answers from that file; a session made for DC 2 (its key in the
    keys file, for DC 2 alone) is answered there."""
    world = demo_dict()
    ann = next(u for u in world["users"] if u["id"] == ACCOUNT_A)
    ann["first_name"] = "FromTheFile"
    world_file = tmp_path / "world.json"
    world_file.write_text(json.dumps(world), encoding="utf-8")
    port, dc2_port = free_port(), free_port()
    keys = tmp_path / "keys"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakedc", "serve", "--port", str(port),
        "--dc2-port", str(dc2_port), "--world", str(world_file), "--keys", str(keys),
        "--log-level", "WARNING", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 30)
        assert f"DC 2 127.0.0.1:{dc2_port}" in line.decode()
        sessions = [
            await run_cli("make-session", "--port", str(p), "--dc-id", str(dc), "--out",
                          str(tmp_path / f"dc{dc}"), "--keys", str(keys))
            for dc, p in ((1, port), (2, dc2_port))
        ]
        for path, dc in zip(sessions, (1, 2), strict=True):
            TelegramClient._config = None
            client = TelegramClient(path, FAKEDC_API_ID, FAKEDC_API_HASH)
            await client.connect()
            try:
                me = await client.get_me()
                assert (me.id, me.first_name) == (ACCOUNT_A, "FromTheFile")
                assert (await client(functions.help.GetNearestDcRequest())).this_dc == dc
            finally:
                await client.disconnect()
    finally:
        server.terminate()
        assert await asyncio.wait_for(server.wait(), 30) == 0
        TelegramClient._config = None


async def test_default_keys_file_serves_a_dc2_session_made_by_dc2s_port(tmp_path: Path) -> None:
    """Without --keys: make-session for DC 2, given DC 2's port, reaches the same keys file
    (a symlink serve keeps while it runs), and its session is answered on DC 2."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the default keys files land here
    port, dc2_port = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakedc", "serve", "--port", str(port),
        "--dc2-port", str(dc2_port), "--log-level", "WARNING",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )
    alias = tmp_path / f"tgc-fakedc-{dc2_port}.keys"
    try:
        assert server.stdout is not None
        await asyncio.wait_for(server.stdout.readline(), 30)
        assert alias.is_symlink() and alias.resolve() == tmp_path / f"tgc-fakedc-{port}.keys"
        path = await run_cli("make-session", "--port", str(dc2_port), "--dc-id", "2",
                             "--out", str(tmp_path / "dc2"), env=env)
        TelegramClient._config = None
        client = TelegramClient(path, FAKEDC_API_ID, FAKEDC_API_HASH)
        await client.connect()
        try:
            assert (await client.get_me()).id == ACCOUNT_A
            assert (await client(functions.help.GetNearestDcRequest())).this_dc == 2
        finally:
            await client.disconnect()
    finally:
        server.terminate()
        assert await asyncio.wait_for(server.wait(), 30) == 0
        TelegramClient._config = None
    assert not alias.exists() and not alias.is_symlink()  # gone with the server
