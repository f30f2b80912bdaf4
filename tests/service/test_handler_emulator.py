"""The API end to end on the real parts of the read path: signed HTTP → handler → the
TeleClients pool (three accounts over real MTProto to the DC emulator) → parser → the
answer decrypted by the reference client. The media processor is a recording fake here
(it has its own tests); the lead's integration suite runs the whole server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tornado.netutil import bind_sockets

from model.media import Media
from model.pool import TeleClients
from service.apiclient import ApiClient
from service.cryptor import Cipher, Signer
from service.handler import make_app, make_server
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID

TOKEN = "emulator-api-token"
KEY = "3c" * 32
ACCOUNTS = (1001, 1002, 1003)
NEWS, TALK, SECRET = 2001, 2002, 2003


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    members = {str(u): 0 for u in ACCOUNTS}
    return TelegramRpc(
        World.from_dict(
            {
                "users": [
                    *({"id": u, "first_name": f"Acc{u}", "phone": f"1555000{u}"} for u in ACCOUNTS),
                    *({"id": u, "first_name": f"Member{u}"} for u in range(3001, 3006)),
                ],
                "chats": [
                    {"id": NEWS, "kind": "broadcast", "title": "News daily", "username": "news"},
                    {"id": TALK, "kind": "megagroup", "title": "News talk", "username": "talk",
                     "members": {**members, **{str(u): 0 for u in range(3001, 3006)}}},
                    {"id": SECRET, "kind": "broadcast", "title": "Secret", "members": {"1001": 0}},
                ],
                "messages": [
                    *({"chat": NEWS, "text": f"post {i}"} for i in range(1, 24)),
                    {"chat": TALK, "text": "hello", "from_id": 3001},
                ],
            }
        )
    )  # fmt: skip


class RecordingQueue:
    def __init__(self) -> None:
        self.submitted: list[Media] = []

    def submit(self, media: Media) -> dict[str, Any]:
        self.submitted.append(media)
        return {"state": "pending", "url": None}

    def get(self, key: str) -> dict[str, Any] | None:
        return None


@pytest.fixture
async def pool(telegram_session: Callable[..., Path]) -> AsyncIterator[TeleClients]:
    paths = [telegram_session(u, name=f"acc{u}") for u in ACCOUNTS]  # one folder, as served
    folder = paths[0].parent
    clients = TeleClients.from_sessions_dir(
        folder, FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0, request_timeout=10
    )
    await clients.start()
    yield clients
    await clients.stop()


@pytest.fixture(params=["aes-256-gcm", "aes-256-cbc"])
async def api(request: pytest.FixtureRequest, pool: TeleClients) -> AsyncIterator[ApiClient]:
    app = make_app(
        pool=pool,
        processor=RecordingQueue(),
        joinmap=None,  # type: ignore[arg-type]
        subscriptions=None,
        signer=Signer(TOKEN),
        cipher=Cipher.create(request.param, KEY),
        metrics=CollectorRegistry(),
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = make_server(app, 1 << 20)
    server.add_sockets(sockets)
    client = ApiClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", TOKEN, KEY, request.param)
    yield client
    client.close()
    server.stop()
    await server.close_all_connections()


async def test_read_routes_over_the_emulator(api: ApiClient) -> None:
    peer = await api.request("GET", "/api/v1/peer?peer=%40news")
    assert peer.ok, peer
    assert (peer.data["id"], peer.data["type"], peer.data["title"]) == (
        -1000000002001,
        "channel",
        "News daily",
    )

    seen: list[int] = []
    uri = "/api/v1/messages?peer=%40news&limit=7"
    while True:
        page = await api.request("GET", uri)
        assert page.ok, page
        seen += [m["id"] for m in page.data["messages"]]
        if page.data["next_offset_id"] is None:
            break
        uri = (
            f"/api/v1/messages?peer=-1000000002001&limit=7&offset_id={page.data['next_offset_id']}"
        )
    assert seen == sorted(set(seen), reverse=True) and len(seen) == 23

    by_id = await api.request("GET", f"/api/v1/messages?peer=news&ids={seen[0]},999999,{seen[-1]}")
    assert [m and m["id"] for m in by_id.data["messages"]] == [seen[0], None, seen[-1]]

    members = await api.request("GET", "/api/v1/participants?peer=talk&limit=3")
    assert members.ok, members
    assert members.data["count"] == 8 and len(members.data["participants"]) == 3
    assert members.data["next_offset"] == 3

    found = await api.request("GET", "/api/v1/search?q=news")
    assert found.ok and {r["id"] for r in found.data["results"]} >= {-1000000002001}

    accounts = await api.request("GET", "/api/v1/accounts")
    assert sorted(a["name"] for a in accounts.data["accounts"]) == [f"acc{u}" for u in ACCOUNTS]
    assert all(a["state"] == "ok" for a in accounts.data["accounts"])


async def test_telegram_errors_over_the_emulator(api: ApiClient) -> None:
    missing = await api.request("GET", "/api/v1/peer?peer=%40nosuchname")
    assert (missing.status, missing.code) == (404, "PEER_NOT_FOUND")
    unknown_id = await api.request("GET", "/api/v1/messages?peer=-1000000009999")
    assert (unknown_id.status, unknown_id.code) == (404, "PEER_NOT_FOUND")


async def test_a_peer_the_call_does_not_fit_is_400_on_peer(api: ApiClient) -> None:
    # The model refuses its `ref` argument (a user has no participants); the API names the
    # parameter that carried it.
    members = await api.request("GET", "/api/v1/participants?peer=talk&limit=3")
    user_id = members.data["participants"][0]["id"]  # now known to the account that asked
    answer = await api.request("GET", f"/api/v1/participants?peer={user_id}")
    assert (answer.status, answer.code) == (400, "INVALID_PARAM"), answer
    assert answer.error is not None and answer.error["param"] == "peer"
    assert "users have no participants" in answer.error["message"]
