"""A reload that changes an account's proxy, through a real proxy: the server (start.py's
`Server`, in process, on the emulator) runs accounts A and B direct; then A's sidecar names
a Debian `microsocks` bound to 127.0.0.2 and B's says enabled=false, and the server reloads
(`Server.reload`, what SIGHUP runs). A reconnects through its proxy: every connection it
opens from then on, media ones included, comes from 127.0.0.2 (the emulator records each
connection's source address); B leaves and opens none; A serves alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from common.const import load_settings
from service.apiclient import ApiClient
from start import Server
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures.server_config import AES_KEY, TOKEN, write_config
from tests.fixtures.socks5 import microsocks
from tests.fixtures.wait import wait_for

PASSWORD = "pa55-for-A"


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    return TelegramRpc(dw.demo_world())


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_changed_proxy_reconnects_the_account_through_it(
    tmp_path: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> None:
    for user in (dw.ACCOUNT_A, dw.ACCOUNT_B):
        telegram_session(user, name=f"acc{user}")
    sessions = tmp_path / "sessions"
    server = Server(load_settings(write_config(tmp_path, {"telegram.timeout": "5"}), env={}))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.url_file.exists() or task.done(), within=30,
                       what="the url file")
        async with microsocks("userA", PASSWORD, bind="127.0.0.2") as port, ApiClient(
            server.url, TOKEN, AES_KEY
        ) as api:
            direct = {a.source for a in fake_telegram.accepted(dw.ACCOUNT_A)}
            assert direct and "127.0.0.2" not in direct
            before = len(fake_telegram.accepted(dw.ACCOUNT_A))
            b_before = len(fake_telegram.accepted(dw.ACCOUNT_B))
            (sessions / f"acc{dw.ACCOUNT_A}.properties").write_text(
                f"proxy=socks5://userA:{PASSWORD}@127.0.0.1:{port}\n"
            )
            (sessions / f"acc{dw.ACCOUNT_B}.properties").write_text("enabled=false\n")
            done = await server.reload()
            assert (done.added, done.removed, done.reconnected, done.refused) == (
                [], [f"acc{dw.ACCOUNT_B}"], [f"acc{dw.ACCOUNT_A}"], {}
            )
            accounts = (await api.request("GET", "/api/v1/accounts")).data["accounts"]
            assert [(a["name"], a["state"], a["proxy"]) for a in accounts] == [
                (f"acc{dw.ACCOUNT_A}", "ok", f"socks5://127.0.0.1:{port}")
            ]
            page = await api.request("GET", "/api/v1/messages?peer=@tgc_media&limit=4&offset_id=8")
            assert page.ok, page  # served by A: the only account left
            keys = [m["media"]["key"] for m in page.data["messages"] if (m.get("media") or {}).get("key")]
            assert keys, page.data

            async def stored() -> bool:
                for key in keys:
                    record = await api.request("GET", f"/api/v1/media/{key}")
                    assert record.ok and record.data["state"] != "failed", record
                    if record.data["state"] != "stored":
                        return False
                return True

            await wait_for(stored, within=30, what="the files stored through A's proxy", step=0.1)
            assert str(server.reloaded_file.read_text()).endswith(
                "0 added, 1 removed, 1 reconnected, 0 refused\n"
            )
            # What an operator watching the server sees of it.
            http = AsyncHTTPClient()
            metrics = (await http.fetch(server.url + "/metrics")).body.decode()
            assert "tgc_fleet_reloads_total 1.0" in metrics
            assert "tgc_fleet_refused_sessions 0.0" in metrics
            status = (await http.fetch(server.url + "/status")).body.decode()
            assert "0 added, 1 removed, 1 reconnected, 0 refused" in status
    finally:
        server.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    since = fake_telegram.accepted(dw.ACCOUNT_A)[before:]
    assert since and {a.source for a in since} == {"127.0.0.2"}, [a.as_dict() for a in since]
    assert any(a.requests["upload.getFile"] for a in since)  # its media connections too
    assert len(fake_telegram.accepted(dw.ACCOUNT_B)) == b_before  # B opened none after
