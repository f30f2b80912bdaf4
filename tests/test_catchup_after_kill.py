"""SIGKILL, then a start on the same data (issue 11, item 13): `start.py serve` as a
subprocess against the emulator in this process and the real broker. The edits and
deletions made in a subscribed channel while the server was dead (which the gap poll,
asking `min_id`, can't see) and a post it missed are published once each when it starts
again: each account catches up from the update state it saved in its session file while
it ran (tests/service/subscription/test_catchup.py has the in-process cases)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.const import load_settings
from service.apiclient import ApiClient
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures import server_config
from tests.fixtures.server_config import AES_KEY, TOKEN
from tests.fixtures.server_process import serving_url, spawn
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.slow

NEWS_ID = -(10**12) - dw.NEWS


def saved_channel_pts(session: Path, channel_id: int) -> int | None:
    with sqlite3.connect(session, timeout=10) as db:
        row = db.execute("select pts from update_state where id = ?", (channel_id,)).fetchone()
    return None if row is None else int(row[0])


def watermark(joinmap: Path, peer_id: int) -> int | None:
    with sqlite3.connect(joinmap, timeout=10) as db:
        row = db.execute("select last_message_id from peers where peer_id = ?", (peer_id,))
        found = row.fetchone()
    return None if found is None else int(found[0])


def new(msg_id: int) -> str:
    return f"{NEWS_ID}:{msg_id}:message.new"


async def test_what_happened_while_killed_is_published_once_after_the_restart(
    tmp_path: Path,
    telegram_session: Callable[..., Path],
    fake_telegram: FakeTelegram,
    rabbit: Any,
) -> None:
    rpc: TelegramRpc = fake_telegram.dispatcher
    for user_id in (dw.ACCOUNT_A, dw.ACCOUNT_B):
        telegram_session(user_id, name=f"acc{user_id}")
    config = server_config.write_config(
        tmp_path,
        {
            "rabbitmq.url": rabbit.url,
            "rabbitmq.exchange": rabbit.exchange,
            "rabbitmq.queue": rabbit.queue,
            "subscriptions.poll_interval": "3600",
        },
    )
    settings = load_settings(config, env={})
    async with rabbit.consumer() as consumer:
        proc = await spawn(config)
        try:
            url = await serving_url(proc, settings.run_dir)
            async with ApiClient(url, TOKEN, AES_KEY) as api:
                joined = await api.request("POST", "/api/v1/subscriptions", {"peer": "@tgc_news"})
                assert joined.ok, joined
            before = await rpc.post_message(dw.NEWS, "before the kill")
            await consumer.wait_for_ids([new(before.id)])
            session = settings.telegram.sessions_dir / f"{joined.data['account']}.session"
            pts = rpc.world.chats[dw.NEWS].pts
            await wait_for(
                lambda: saved_channel_pts(session, dw.NEWS) == pts,
                what="the update state saved while running",
            )
            # And the channel's watermark (written each second): else the first poll after
            # the restart publishes that post again (a duplicate across a kill, by design).
            joinmap = settings.data.dir / "joinmap.sqlite3"
            await wait_for(
                lambda: watermark(joinmap, NEWS_ID) == before.id, what="the watermark saved"
            )
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        old = await rpc.edit_message(dw.NEWS, 140, "post 140, corrected")
        edited = await rpc.edit_message(dw.NEWS, before.id, "before the kill, corrected")
        await rpc.delete_messages(dw.NEWS, [141, 142])
        missed = await rpc.post_message(dw.NEWS, "while dead")
        expected = [
            f"{NEWS_ID}:140:message.edited:{old.edit_date}",
            f"{NEWS_ID}:{before.id}:message.edited:{edited.edit_date}",
            f"{NEWS_ID}:141:message.deleted",
            f"{NEWS_ID}:142:message.deleted",
            new(missed.id),
        ]

        again = await spawn(config)
        try:
            await serving_url(again, settings.run_dir)
            await consumer.wait_for_ids(expected)
            # What the catch-up brings comes before a post made now: then all of it is in.
            after = await rpc.post_message(dw.NEWS, "after the restart")
            await consumer.wait_for_ids([new(after.id)])
            again.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(again.communicate(), 30)
            assert again.returncode == 0, err.decode()[-2000:]
        finally:
            if again.returncode is None:
                again.kill()
                await again.wait()
    counts = consumer.counts()
    assert {i: counts[i] for i in expected} == {i: 1 for i in expected}
    assert counts[new(before.id)] == 1
