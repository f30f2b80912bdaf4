"""Live accounts on a real server process (issue 13, "Done when"): `start.py serve` as a
subprocess against the emulator (in this process), SIGHUP while requests, downloads and
subscriptions run.

The server starts with account A alone: it holds the subscriptions and the downloads. While
signed requests run without pause and a 20 MB video downloads part by part, account B logs
in (`start.py`'s login, against the emulator, while the server runs: it writes the session
file) and A's session file is taken away; then SIGHUP. B joins the pool, A leaves it: no
request fails (not even with a 503: the pool never runs dry), A's chats are taken over by B,
the posts made before, during and after the reload each reach the outbox, and every file is
stored. The summary the server writes for `./startup.sh reload` says what happened.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from common.const import load_settings
from service.apiclient import ApiClient
from start import login
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures import server_config
from tests.fixtures.server_config import AES_KEY, TOKEN
from tests.fixtures.server_process import media_states, refusing_port, serving_url, spawn
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.slow

MEDIA_PAGE = "/api/v1/messages?peer=@tgc_media&limit=11&offset_id=15"
NEWS_ID, CHAT_ID = -(10**12) - dw.NEWS, -(10**12) - dw.CHAT  # marked ids
READS = [
    "/api/v1/messages?peer=@tgc_news&limit=5",
    "/api/v1/peer?peer=@tgc_chat",
    "/api/v1/accounts",
    "/api/v1/messages?peer=@tgc_chat&limit=3",
]


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    return TelegramRpc(dw.demo_world())


def outbox_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return {m for (m,) in conn.execute("SELECT message_id FROM outbox")}
    finally:
        conn.close()


async def keep_reading(api: ApiClient, stop: asyncio.Event, seen: Counter[str]) -> None:
    """One client's reads, one after another, until `stop`: each answer's status counted."""
    i = 0
    while not stop.is_set():
        answer = await api.request("GET", READS[i % len(READS)])
        seen[f"{answer.status} {answer.code or ''}".strip()] += 1
        i += 1


@pytest.mark.timeout(180)  # a process, a login, a 20 MB download: minutes on a loaded machine
async def test_an_account_added_and_one_removed_under_load(
    tmp_path: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> None:
    rpc: TelegramRpc = fake_telegram.dispatcher
    old = telegram_session(dw.ACCOUNT_A, name="old")
    config = server_config.write_config(
        tmp_path,
        {
            "telegram.timeout": "10",
            # Events stay in the outbox (the broker refuses): the test reads them there.
            "rabbitmq.url": f"amqp://guest:guest@127.0.0.1:{refusing_port()}/",
            "rabbitmq.reconnect_max_delay": "1",
            "subscriptions.poll_interval": "2",
        },
    )
    settings = load_settings(config, env={})
    outbox = settings.data.dir / "outbox.sqlite3"
    # A part of a file every 0.3 s: the 20 MB video is still downloading at the reload.
    rpc.set_latency({"upload.getFile": 0.3, "*": 0.0})
    proc = await spawn(config)
    try:
        url = await serving_url(proc, settings.run_dir)
        async with ApiClient(url, TOKEN, AES_KEY, max_clients=20) as api:
            for peer in ("@tgc_news", "@tgc_chat"):
                joined = await api.request("POST", "/api/v1/subscriptions", {"peer": peer})
                assert joined.ok and joined.data["account"] == "old", joined
            # B logs in while the server runs (it writes the file; the reload takes it);
            # A's session file goes away.
            added = await login(
                settings, "+1 555 000 1002", ask=lambda _: rpc.login_code,
                ask_secret=lambda _: "", say=lambda _: None,
                dc=(1, "127.0.0.1", fake_telegram.port(1)),
            )
            assert added is not None
            old.rename(tmp_path / "retired.session")
            page = await api.request("GET", MEDIA_PAGE)
            assert page.ok, page
            keys = [m["media"]["key"] for m in page.data["messages"] if (m.get("media") or {}).get("key")]
            assert len(keys) >= 8, page.data
            before = await rpc.post_message(dw.NEWS, "before the reload")
            await wait_for(
                lambda: f"{NEWS_ID}:{before.id}:message.new" in outbox_ids(outbox),
                within=15, what="the first post's event",
            )
            await wait_for(
                lambda: rpc.count("upload.getFile") >= 5, within=15, what="downloads under way"
            )

            stop, seen = asyncio.Event(), Counter[str]()
            readers = [asyncio.ensure_future(keep_reading(api, stop, seen)) for _ in range(4)]
            states = await media_states(api, keys)
            assert "downloading" in states.values(), states
            proc.send_signal(signal.SIGHUP)
            during = await rpc.post_message(dw.CHAT, "during the reload")
            await wait_for(settings.run_dir.joinpath("tgc.reloaded").exists, within=40,
                           what="the reload's summary")
            summary = settings.run_dir.joinpath("tgc.reloaded").read_text()

            async def taken_over() -> bool:
                subs = (await api.request("GET", "/api/v1/subscriptions")).data["subscriptions"]
                return {s["peer"]["id"]: (s["account"], s["state"]) for s in subs} == {
                    NEWS_ID: ("+15*******02", "joined"), CHAT_ID: ("+15*******02", "joined")
                }

            await wait_for(taken_over, within=30, what="the chats taken over by the new account")
            after = await rpc.post_message(dw.NEWS, "after the reload")

            async def all_stored() -> bool:
                return set((await media_states(api, keys)).values()) == {"stored"}

            await wait_for(all_stored, within=60, what="every file stored", step=0.1)
            wanted = {
                f"{NEWS_ID}:{before.id}:message.new",
                f"{CHAT_ID}:{during.id}:message.new",
                f"{NEWS_ID}:{after.id}:message.new",
            }
            await wait_for(lambda: wanted <= outbox_ids(outbox), within=30,
                           what="every post's event")
            stop.set()
            await asyncio.gather(*readers)
            accounts = (await api.request("GET", "/api/v1/accounts")).data["accounts"]
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        for reader in locals().get("readers", []):
            reader.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert summary.split(" ", 2)[2].strip() == "1 added, 1 removed, 0 reconnected, 0 refused"
    assert [(a["name"], a["state"]) for a in accounts] == [("+15*******02", "ok")]
    # Every read answered, none refused: the new account joined before the old one left.
    assert sum(seen.values()) >= 20 and set(seen) == {"200"}, seen
    log = settings.log.file.read_text()
    assert "account +15*******02 joined the pool" in log and "account old left the pool" in log
    print(f"\nreads during the reload: {dict(seen)}; reload: {summary.strip()}")
