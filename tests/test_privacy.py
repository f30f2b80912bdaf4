"""No phone number leaves the process: a pool whose session files are named by phone numbers
(what `start.py login` writes) shows masked labels in every API answer, the /status page,
/metrics and every event body, end to end on the real server (start.py's `Server`) and the
DC emulator's demo world.

Two of the files mask alike (+15*******01), so the collision suffix is exercised too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from common.const import load_settings
from service.apiclient import ApiClient
from start import Server
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures.wait import wait_for

TOKEN = "privacy-token-0123456789abcdef"
AES_KEY = "6b" * 32
# The session stems, and the accounts' own numbers as Telegram reports them (users.getUsers).
STEMS = {dw.ACCOUNT_A: "15550001001", dw.ACCOUNT_B: "15550009901"}
PHONES = ("15550001001", "15550001002")
LABELS = {dw.ACCOUNT_A: "+15*******01", dw.ACCOUNT_B: "+15*******01#2"}
# A full number, or the digits a mask hides (a partial leak: "5550001" of 15550001001).
LEAK = re.compile("|".join(re.escape(n[2:-2]) for n in (*STEMS.values(), *PHONES)))
# Where a leak could hide: a run of 7 digits or more that is not a decimal's (a timing value
# on /metrics, 0.0055000105, once held "5500010").
NUMBER = re.compile(r"(?<![\d.])\d{7,}(?![\d.])")


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    return TelegramRpc(dw.demo_world())


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.properties"
    path.write_text(
        "server.port=0\nserver.shutdown_timeout=10\n"
        f"api.token={TOKEN}\napi.aes_key={AES_KEY}\n"
        "telegram.api_id=12345\ntelegram.api_hash=" + "0123456789abcdef" * 2 + "\n"
        "telegram.timeout=5\ntelegram.sessions_dir=sessions\ndata.dir=data\nlog.dir=logs\n"
    )
    return path


def assert_no_phone(where: str, text: str) -> None:
    found = next((m for m in NUMBER.finditer(text) if LEAK.search(m.group())), None)
    assert found is None, f"{where} shows a phone number: ...{text[max(0, found.start() - 80):found.end() + 80]}..."


async def test_no_answer_page_or_event_shows_a_session_phone(
    tmp_path: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> None:
    for user_id, stem in STEMS.items():
        telegram_session(user_id, name=stem)
    config = write_config(tmp_path)
    server = Server(load_settings(config, env={}))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.url_file.exists() or task.done(), what="the server's url file")
    rpc: TelegramRpc = fake_telegram.dispatcher
    answers: dict[str, Any] = {}
    http = AsyncHTTPClient(force_instance=True)
    try:
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:

            async def ask(method: str, uri: str, body: Any = None) -> Any:
                answer = await api.request(method, uri, body)
                answers[f"{method} {uri}"] = answer.data if answer.ok else answer.error
                return answer

            accounts = (await ask("GET", "/api/v1/accounts")).data["accounts"]
            assert sorted((a["name"], a["user_id"]) for a in accounts) == sorted(
                (label, user_id) for user_id, label in LABELS.items()
            )
            assert {a["phone"] for a in accounts} == {"+15*******01", "+15*******02"}
            # Join (subscription.changed), a post with a photo (message.new and, once the
            # photo is stored, media.stored), the media records, and history with media.
            assert (await ask("POST", "/api/v1/subscriptions", {"peer": "@tgc_chat"})).ok
            subs = (await ask("GET", "/api/v1/subscriptions")).data["subscriptions"]
            assert [s["account"] for s in subs] and set(s["account"] for s in subs) <= set(LABELS.values())
            post = await rpc.post_message(dw.CHAT, "a picture", media={"photo": dw.PHOTO_DC1})
            history = (await ask("GET", "/api/v1/messages?peer=@tgc_media&limit=20")).data
            keys = [m["media"]["key"] for m in history["messages"] if m.get("media")]
            await ask("GET", "/api/v1/peer?peer=@tgc_chat")

            def events() -> list[dict[str, Any]]:
                return [orjson.loads(r.body) for r in server.outbox.read(0, 10_000)]

            await wait_for(lambda: any(e["event"] == "message.new" and e["message"]["id"] == post.id for e in events()), what="message.new of the post")
            await wait_for(lambda: any(e["event"] == "media.stored" for e in events()), what="media.stored")
            for key in keys:
                await ask("GET", f"/api/v1/media/{key}")
            # A flood wait on every account: warnings that name the accounts (shown on
            # /status) and an error answer.
            rpc.flood_wait("contacts.search", 30, times=None)
            refused = await ask("GET", "/api/v1/search?q=tgc_news")
            assert refused.code == "FLOOD_WAIT"
            await ask("GET", "/api/v1/accounts")
            assert (await ask("DELETE", "/api/v1/subscriptions?peer=@tgc_chat")).ok

        page = (await http.fetch(f"{server.url}/status")).body.decode()
        metrics = (await http.fetch(f"{server.url}/metrics")).body.decode()
        health = (await http.fetch(f"{server.url}/healthz", raise_error=False)).body.decode()
        bodies = events()
    finally:
        http.close()
        server.request_stop()
        assert await task == 0

    # The labels are there (so the checks below look at the right things) ...
    assert LABELS[dw.ACCOUNT_A] in page and "flood wait" in page
    kinds = {e["event"] for e in bodies}
    assert {"subscription.changed", "message.new", "media.stored"} <= kinds, kinds
    assert {e["account"] for e in bodies} <= set(LABELS.values())
    # ... and no number anywhere.
    for where, answer in answers.items():
        assert_no_phone(where, orjson.dumps(answer).decode())
    for event in bodies:
        assert_no_phone(f"event {event['event']}", orjson.dumps(event).decode())
    assert_no_phone("/status", page)
    assert_no_phone("/metrics", metrics)
    assert_no_phone("/healthz", health)
