"""The DH handshake: a stock Telethon client with an empty session creates a key."""

from __future__ import annotations

from pathlib import Path

from telethon import TelegramClient
from telethon.sessions import SQLiteSession
from telethon.tl import functions, types

from tests.emulator.conftest import API_HASH, API_ID
from tests.emulator.mini_world import MiniWorld
from tests.fakedc.cluster import FakeTelegram


async def test_empty_session_runs_dh_and_is_answered(
    mini_tg: FakeTelegram, mini: MiniWorld, tmp_path: Path, fakedc_rsa_key: int
) -> None:
    session = SQLiteSession(str(tmp_path / "fresh"))
    session.set_dc(1, "127.0.0.1", mini_tg.port(1))
    client = TelegramClient(session, API_ID, API_HASH)
    keys_before = len(mini_tg.registry.records())
    try:
        await client.connect()
        assert client.session.auth_key is not None
        config = await client(functions.help.GetConfigRequest())
        assert isinstance(config, types.Config)
        assert [o.port for o in config.dc_options] == [mini_tg.port(1), mini_tg.port(2)]
        # The key exists but is bound to nobody: not logged in.
        assert not await client.is_user_authorized()
    finally:
        await client.disconnect()
    assert len(mini_tg.registry.records()) == keys_before + 1
    rec = mini_tg.registry.get(client.session.auth_key.key_id, 1)
    assert rec is not None and rec.user_id is None
    assert mini_tg.registry.get(client.session.auth_key.key_id, 2) is None  # DC 1's alone


async def test_dh_on_dc2_makes_a_key_of_dc2(
    mini_tg: FakeTelegram, tmp_path: Path, fakedc_rsa_key: int
) -> None:
    session = SQLiteSession(str(tmp_path / "fresh2"))
    session.set_dc(2, "127.0.0.1", mini_tg.port(2))
    client = TelegramClient(session, API_ID, API_HASH)
    try:
        await client.connect()
        nearest = await client(functions.help.GetNearestDcRequest())
        assert nearest.this_dc == 2
    finally:
        await client.disconnect()
    key_id = client.session.auth_key.key_id
    assert mini_tg.registry.get(key_id, 2) is not None
    assert mini_tg.registry.get(key_id, 1) is None
