"""A stock Telethon client against the emulator's protocol layer (mini world)."""

from __future__ import annotations

from pathlib import Path

from telethon import TelegramClient

from tests.emulator.conftest import API_HASH, API_ID
from tests.emulator.mini_world import MiniWorld
from tests.fakedc.cluster import FakeTelegram


async def test_made_session_connects_and_get_me(
    mini_tg: FakeTelegram, mini: MiniWorld, tmp_path: Path
) -> None:
    path = mini_tg.make_session(tmp_path / "a", user_id=1000)
    client = TelegramClient(str(path), API_ID, API_HASH)
    await client.connect()
    try:
        me = await client.get_me()
        assert me.id == 1000 and me.is_self
        assert await client.is_user_authorized()
    finally:
        await client.disconnect()
    assert mini.calls["help.getConfig"] == 1
    assert mini.calls["updates.getState"] == 1
