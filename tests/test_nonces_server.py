"""Issue 11, items 1 and 2: the server's nonce store (start.py wires service/noncestore.py).

1. A captured signed request can't be replayed after the server restarts, whether it
   stopped gracefully or was SIGKILLed right after answering it: a real `start.py serve`
   process on a fixed data dir (tests/fixtures/server_config.py). No accounts needed: the
   nonce is recorded when the signature is checked, before the route runs (POST
   /api/v1/subscriptions answers 503 without accounts, but it ran).
2. Past the old cache's 200,000 live nonces honest requests still pass: the server's own
   Signer, in-process, takes 210,000 (3,000/s for 70 s), then an HTTP request.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from common.const import Settings, load_settings
from service.apiclient import ApiClient
from service.cryptor import Signer
from start import Server
from tests.fixtures.server_config import AES_KEY, TOKEN, write_config
from tests.fixtures.server_process import serving
from tests.fixtures.wait import wait_for

UNAUTHORIZED = {"ok": False, "error": {"code": "UNAUTHORIZED"}}
BODY = orjson.dumps({"peer": "@tgc_news"})


async def send(
    settings: Settings, method: str, uri: str, headers: Mapping[str, str]
) -> HTTPResponse:
    url = (settings.run_dir / "tgc.url").read_text().strip()
    http = AsyncHTTPClient(force_instance=True)
    try:
        body = BODY if method == "POST" else None
        return await http.fetch(
            url + uri, method=method, headers=dict(headers), body=body, raise_error=False
        )
    finally:
        http.close()


def _is_unauthorized(response: HTTPResponse) -> bool:
    return response.code == 401 and orjson.loads(response.body) == UNAUTHORIZED


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
async def test_a_signed_request_replayed_after_a_restart_is_401(tmp_path: Path, stop: str) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    signer = Signer(TOKEN)
    captured = {
        "POST": ("/api/v1/subscriptions", signer.sign("POST", "/api/v1/subscriptions", BODY)),
        "GET": ("/api/v1/accounts", signer.sign("GET", "/api/v1/accounts")),
    }
    async with serving(settings, config) as proc:
        for method, (uri, headers) in captured.items():
            first = await send(settings, method, uri, headers)
            assert first.code in (200, 503), (method, first.code)  # it ran
            assert _is_unauthorized(await send(settings, method, uri, headers))  # a replay
        if stop == "SIGKILL":  # at once: nothing but what the requests wrote is on disk
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        else:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0

    async with serving(settings, config):
        for method, (uri, headers) in captured.items():
            replay = await send(settings, method, uri, headers)
            assert _is_unauthorized(replay), (method, replay.code)
        # A fresh request still passes: only the captured nonces are refused.
        uri = "/api/v1/accounts"
        assert (await send(settings, "GET", uri, signer.sign("GET", uri))).code == 200
    assert list((settings.data.dir / "nonces").glob("*.journal"))


@pytest.mark.slow
async def test_honest_requests_pass_past_200_000_live_nonces(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path), env={})
    server = Server(settings)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.app is not None or task.done(), within=20, what="serving")
        assert server.app is not None
        signer: Signer = server.app.settings["tgc_signer"]  # the one the handlers use
        client = Signer(TOKEN)
        t0 = time.monotonic()
        for _ in range(210_000):  # each a distinct nonce, each written to the journal
            signer.verify("GET", "/api/v1/accounts", client.sign("GET", "/api/v1/accounts"), b"")
        elapsed = time.monotonic() - t0
        assert server.nonces.live(time.time()) == 210_000
        assert elapsed < 30  # ~15 µs each (signing and checking) on this 2-CPU machine
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            answer = await api.request("GET", "/api/v1/accounts")
            assert answer.status == 200 and answer.ok, answer
    finally:
        server.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
