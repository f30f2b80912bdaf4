"""`serve --control-port`: another process turns the emulator's knobs and makes its pushes
(tests/fakedc/control.py), seen by a stock Telethon client in the test process."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient, errors, events
from telethon.tl import functions

from tests.emulator.test_cli import ROOT, free_port
from tests.fakedc.control import ControlClient, ControlError
from tests.fakedc.demo_world import ACCOUNT_A, NEWS
from tests.fakedc.session import make_session
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.wait import wait_for


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The emulator process with a control channel on a free port; its ready file's JSON."""
    ready = tmp_path / "ready.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakedc", "serve", "--port", str(free_port()),
        "--keys", str(tmp_path / "keys"), "--control-port", "0", "--ready-file", str(ready),
        "--log-level", "WARNING", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_for(lambda: ready.exists() or proc.returncode is not None, within=30,
                       what="the ready file")  # fmt: skip
        assert proc.returncode is None
        yield json.loads(ready.read_text())
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        TelegramClient._config = None


async def test_pushes_and_knobs_from_another_process(
    served: dict[str, Any], tmp_path: Path
) -> None:
    assert served["control"] and set(served["dcs"]) == {"1", "2"}
    path = make_session(tmp_path / "a", 1, "127.0.0.1", served["dcs"]["1"], ACCOUNT_A,
                        keys_file=served["keys"])  # fmt: skip
    TelegramClient._config = None
    # From an address of its own: the emulator's record of connections names it.
    client = TelegramClient(str(path), FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0,
                            local_addr="127.0.0.5")  # fmt: skip
    texts: list[str] = []

    async def on_new(event: Any) -> None:
        texts.append(event.raw_text)

    client.add_event_handler(on_new, events.NewMessage(chats=[NEWS]))
    await client.connect()
    try:
        async with ControlClient(served["control"]) as control:
            assert await control.call("ping") == "pong"
            await client.get_entity("tgc_news")  # a request after connect: updates flow
            posted = await control.call("post_message", chat_id=NEWS, text="from afar")
            assert posted["chat"] == NEWS and posted["id"] == 151
            await wait_for(lambda: texts == ["from afar"], within=10, what="the pushed post")

            # A new file in the world, posted with a message: the client sees the document.
            assert await control.call("add_document", spec={"id": 99001, "size": 5000}) == 99001
            with_doc = await control.call("post_message", chat_id=NEWS, media={"document": 99001})
            (msg,) = await client.get_messages(NEWS, ids=[with_doc["id"]])
            assert msg.document is not None and msg.document.id == 99001

            # Knobs: a flood wait for one account (the counter saw the call), an error, then
            # every fault cleared.
            before = await control.call("count", method="users.getUsers", user_id=ACCOUNT_A)
            await control.call("flood_wait", method="users.getUsers", seconds=7,
                               user_id=ACCOUNT_A)  # fmt: skip
            with pytest.raises(errors.FloodWaitError) as flood:
                await client.get_me()
            assert flood.value.seconds == 7
            after = await control.call("count", method="users.getUsers", user_id=ACCOUNT_A)
            assert after - before == 1
            resolve = functions.contacts.ResolveUsernameRequest("alice_w")
            await control.call("fail", method="contacts.resolveUsername", code=400,
                               message="BAD_THING", times=5)  # fmt: skip
            with pytest.raises(errors.BadRequestError, match="BAD_THING"):
                await client(resolve)
            await control.call("clear_faults")
            assert (await client(resolve)).users[0].username == "alice_w"

            # Refusals come back as errors, and the channel stays usable.
            with pytest.raises(ControlError, match="unknown op"):
                await control.call("__class__")
            with pytest.raises(ControlError, match="TypeError"):
                await control.call("flood_wait", nope=1)
            # Where each connection came from, and whose it is.
            seen = await control.call("accepted", user_id=ACCOUNT_A)
            assert {(a["dc"], a["source"], a["user_id"]) for a in seen} == {
                (1, "127.0.0.5", ACCOUNT_A)
            }, seen
            assert sum(a["requests"].get("users.getUsers", 0) for a in seen) >= 2
            assert await control.call("accepted", user_id=ACCOUNT_A + 999) == []
            assert await control.call("drop_connections", user_id=ACCOUNT_A) >= 1
            assert await control.call("ping") == "pong"
    finally:
        await client.disconnect()
