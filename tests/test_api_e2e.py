"""The HTTP API end to end (issue 3, "Done when"), with every part real.

The DC emulator (two DCs, the demo world: channels, megagroups, a basic group, users, a
bot, 150 news posts, every media kind) serves three accounts, each a Telethon session
file; the `TeleClients` pool runs on those files behind the real Tornado application of
`service/handler.py` on a free 127.0.0.1 port, with the real media processor (files stored
in a temporary folder). Every request is signed and every answer decrypted by the
reference client `service/apiclient.py`, with each cipher (the `api_server` fixture runs
every test under aes-256-gcm and aes-256-cbc).

The emulator counts the requests it serves per method and account, so the tests can say
which account served a call and how many `contacts.resolveUsername` a scenario cost; its
knobs make Telegram answer FLOOD_WAIT, USER_DEACTIVATED_BAN or CHANNEL_PRIVATE.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from common.utils import parse_peer
from service.apiclient import ApiResponse
from service.cryptor import Signer
from tests.fakedc import demo_world as dw
from tests.fixtures.api_server import ApiServer, demo_dispatcher
from tests.fixtures.rabbitmq import Rabbit
from tests.fixtures.wait import wait_for

RESOLVE = "contacts.resolveUsername"
HISTORY = "messages.getHistory"
ACCOUNTS = (dw.ACCOUNT_A, dw.ACCOUNT_B, dw.ACCOUNT_C)
UNAUTHORIZED = {"ok": False, "error": {"code": "UNAUTHORIZED"}}


@pytest.fixture
def fakedc_dispatcher() -> Any:
    return demo_dispatcher()


def marked(channel_id: int) -> int:
    """The Bot-API id of a channel: -100 followed by its id."""
    return -(10**12) - channel_id


async def ok(server: ApiServer, uri: str) -> Any:
    answer = await server.get(uri)
    assert answer.status == 200 and answer.ok, (uri, answer.status, answer.error)
    return answer.data


def served_by(server: ApiServer, method: str, before: dict[int, int]) -> list[int]:
    """The accounts whose count of `method` grew since `before`."""
    return [u for u in ACCOUNTS if server.rpc.count(method, u) > before.get(u, 0)]


def counts(server: ApiServer, method: str) -> dict[int, int]:
    return {u: server.rpc.count(method, u) for u in ACCOUNTS}


async def walk_history(server: ApiServer, peer: str, limit: int, **extra: int) -> list[list[int]]:
    """Every page of /messages from the newest, following next_offset_id to null."""
    pages: list[list[int]] = []
    query = "".join(f"&{k}={v}" for k, v in extra.items())
    uri = f"/api/v1/messages?peer={quote(peer)}&limit={limit}{query}"
    for _ in range(1000):
        data = await ok(server, uri)
        assert set(data) >= {"messages", "next_offset_id"}
        pages.append([m["id"] for m in data["messages"]])
        if data["next_offset_id"] is None:
            return pages
        assert data["next_offset_id"] == pages[-1][-1]  # the oldest id of this page
        uri = f"/api/v1/messages?peer={quote(peer)}&limit={limit}{query}"
        uri += f"&offset_id={data['next_offset_id']}"
    raise AssertionError("paging never ended")


# --- the read routes ------------------------------------------------------------------------


async def test_peer_of_every_kind(api_server: ApiServer) -> None:
    channel = await ok(api_server, "/api/v1/peer?peer=@tgc_news")
    assert (channel["id"], channel["type"], channel["title"]) == (
        marked(dw.NEWS),
        "channel",
        "TGC News",
    )
    assert channel["username"] == "tgc_news" and channel["verified"] is True
    assert channel["about"] == "News of the emulator"
    assert channel["participants_count"] == 5004  # 4 members + 5000 more the world counts

    group = await ok(api_server, "/api/v1/peer?peer=https%3A%2F%2Ft.me%2Ftgc_chat")
    assert (group["id"], group["type"], group["title"]) == (marked(dw.CHAT), "megagroup", "TGC Chat")
    assert group["participants_count"] == dw.CROWD_SIZE + 4

    user = await ok(api_server, "/api/v1/peer?peer=alice_w")
    assert (user["id"], user["type"], user["first_name"], user["last_name"]) == (
        dw.USER_ALICE,
        "user",
        "Alice",
        "Liddell",
    )
    assert user["about"] == "down the rabbit hole" and user["verified"] is True
    assert user["photo"]["type"] == "photo" and len(user["photo"]["key"]) == 32
    assert user["photo"]["state"] in ("pending", "downloading", "uploading", "stored")

    bot = await ok(api_server, "/api/v1/peer?peer=%40helper_bot")
    assert (bot["id"], bot["type"], bot["about"]) == (dw.BOT, "bot", "I help.")

    # A basic group has no username: an account learns it by being in it (an update here),
    # then its id works.
    missing = await api_server.get(f"/api/v1/peer?peer=-{dw.SMALL}")
    assert (missing.status, missing.code) == (404, "PEER_NOT_FOUND")
    await api_server.rpc.post_message(dw.SMALL, "hi again", from_id=dw.USER_ALICE)
    account_a = api_server.pool.get(f"acc{dw.ACCOUNT_A}")
    await wait_for(
        lambda: account_a.knows(parse_peer(f"-{dw.SMALL}")),
        within=10.0,
        what="account A knowing the basic group",
    )
    small = await ok(api_server, f"/api/v1/peer?peer=-{dw.SMALL}")
    assert (small["id"], small["type"], small["title"]) == (-dw.SMALL, "group", "Small Group")
    assert small["participants_count"] == 3


@pytest.mark.parametrize("limit", [1, 7, 75, 100])
async def test_history_pages_to_the_end_each_message_once(
    api_server: ApiServer, limit: int
) -> None:
    pages = await walk_history(api_server, "@tgc_news", limit)
    seen = [i for page in pages for i in page]
    assert seen == list(range(dw.NEWS_POSTS, 0, -1))  # newest first, each once, all of them
    assert all(len(page) == limit for page in pages[:-1])
    # 150 = 2 x 75: the page that reaches id 1 is the last one, no empty page after it.
    assert len(pages) == -(-dw.NEWS_POSTS // limit)


async def test_history_by_marked_id_with_min_and_max_id(api_server: ApiServer) -> None:
    first = await ok(api_server, "/api/v1/messages?peer=@tgc_news")  # the default limit
    assert [m["id"] for m in first["messages"]] == list(range(150, 130, -1))
    assert first["next_offset_id"] == 131
    message = first["messages"][0]
    assert message["peer_id"] == marked(dw.NEWS) and message["text"].startswith("Bold news 150")
    assert [e["type"] for e in message["entities"]][:1] == ["bold"]
    assert message["date"].endswith("Z") and message["pinned"] is True
    assert {"edit_date", "entities", "views", "forwards", "fwd_from", "media"} <= set(message)

    peer = str(marked(dw.NEWS))  # known from the username now: no resolution needed
    window = await ok(api_server, f"/api/v1/messages?peer={peer}&min_id=10&max_id=20&limit=100")
    assert [m["id"] for m in window["messages"]] == list(range(19, 10, -1))  # both exclusive
    assert window["next_offset_id"] is None

    pages = await walk_history(api_server, peer, 4, min_id=10, max_id=20)
    assert [i for page in pages for i in page] == list(range(19, 10, -1))
    assert pages[-1] and len(pages) == 3  # 4 + 4 + 1


async def test_empty_optional_parameters_are_their_defaults(api_server: ApiServer) -> None:
    # A crawler that fills the contract's template `&offset_id=&min_id=&max_id=` as written.
    uri = "/api/v1/messages?peer=@tgc_news&limit=&offset_id=&min_id=&max_id="
    first = await ok(api_server, uri)
    assert [m["id"] for m in first["messages"]] == list(range(150, 130, -1))
    nxt = first["next_offset_id"]
    second = await ok(
        api_server, f"/api/v1/messages?peer=@tgc_news&limit=5&offset_id={nxt}&min_id=&max_id="
    )
    assert [m["id"] for m in second["messages"]] == list(range(130, 125, -1))
    page = await ok(api_server, "/api/v1/messages?peer=@tgc_news&ids=&limit=2")  # no ids: paging
    assert [m["id"] for m in page["messages"]] == [150, 149]
    members = await ok(api_server, "/api/v1/participants?peer=@tgc_chat&limit=&offset=")
    assert len(members["participants"]) == 100 and members["next_offset"] == 100
    found = await ok(api_server, "/api/v1/search?q=tgc_&limit=")
    assert found["results"]


async def test_messages_by_id_in_order_with_null_for_missing(api_server: ApiServer) -> None:
    data = await ok(api_server, "/api/v1/messages?peer=@tgc_news&ids=150,999999,2,1,75")
    got = data["messages"]
    assert [m and m["id"] for m in got] == [150, None, 2, 1, 75]
    assert got[3]["action"]["type"] == "channel_create"  # the service message
    assert set(data) == {"messages"}


async def test_participants_paging(api_server: ApiServer) -> None:
    seen: list[int] = []
    kinds: dict[int, str] = {}
    offset = 0
    while True:
        data = await ok(api_server, f"/api/v1/participants?peer=@tgc_chat&limit=100&offset={offset}")
        assert data["count"] == dw.CROWD_SIZE + 4
        seen += [p["id"] for p in data["participants"]]
        kinds |= {p["id"]: p["type"] for p in data["participants"]}
        if data["next_offset"] is None:
            break
        offset = data["next_offset"]
        assert offset == len(seen)
    assert len(seen) == len(set(seen)) == dw.CROWD_SIZE + 4
    assert {dw.USER_ALICE, dw.BOT, dw.ACCOUNT_A} <= set(seen)
    assert (kinds[dw.BOT], kinds[dw.USER_ALICE]) == ("bot", "user")


async def test_search_accounts_subscriptions(api_server: ApiServer) -> None:
    found = await ok(api_server, "/api/v1/search?q=tgc_&limit=10")
    ids = {r["id"]: r["type"] for r in found["results"]}
    assert ids[marked(dw.NEWS)] == "channel" and ids[marked(dw.CHAT)] == "megagroup"
    assert marked(dw.SECRET) not in ids  # private: not in public search
    assert len((await ok(api_server, "/api/v1/search?q=tgc_&limit=1"))["results"]) == 1
    # Chats some accounts are in without a username (a private channel and megagroup, a
    # basic group): Telegram lists them in my_results; the API shows public chats only.
    before = counts(api_server, "contacts.search")
    for q in ("Secret", "Group", "Hidden"):
        for _ in ACCOUNTS:  # the pool turns: each account's answer
            results = (await ok(api_server, f"/api/v1/search?q={q}"))["results"]
            assert [r["id"] for r in results if not r["username"]] == [], (q, results)
    assert dw.ACCOUNT_A in served_by(api_server, "contacts.search", before)  # in all of them

    accounts = (await ok(api_server, "/api/v1/accounts"))["accounts"]
    assert [(a["name"], a["user_id"], a["state"]) for a in accounts] == [
        (f"acc{u}", u, "ok") for u in ACCOUNTS
    ]
    for a in accounts:
        assert a["flood_wait_until"] is None and a["pending_downloads"] >= 0
        assert a["phone"].startswith("+1") and "*" in a["phone"] and "0001001" not in a["phone"]

    assert await ok(api_server, "/api/v1/subscriptions") == {"subscriptions": []}


async def test_media_state_after_a_page_with_media(api_server: ApiServer) -> None:
    page = await ok(api_server, "/api/v1/messages?peer=@tgc_media&ids=2,3")
    photos = [m["media"] for m in page["messages"]]  # one on DC 1, one on DC 2
    assert [p["type"] for p in photos] == ["photo", "photo"]
    assert all(p["state"] in ("pending", "downloading", "uploading", "stored") for p in photos)

    states: dict[str, dict[str, Any]] = {}

    async def poll() -> bool:
        for p in photos:
            answer = await api_server.get(f"/api/v1/media/{p['key']}")
            assert answer.ok, answer
            states[p["key"]] = answer.data
        assert all(s["state"] != "failed" for s in states.values()), states
        return all(s["state"] == "stored" for s in states.values())

    await wait_for(poll, within=30, what="both photos stored", step=0.05)
    for p in photos:
        record = states[p["key"]]
        assert (record["key"], record["size"], record["mime_type"]) == (
            p["key"],
            p["size"],
            "image/jpeg",
        )
        stored = Path(urlsplit(record["url"]).path)
        assert await asyncio.to_thread(os.path.getsize, stored) == p["size"]

    # The same page again carries the stored state and URL, and downloads nothing new.
    files_before = api_server.rpc.count("upload.getFile")
    again = await ok(api_server, "/api/v1/messages?peer=@tgc_media&ids=2,3")
    assert [m["media"]["state"] for m in again["messages"]] == ["stored", "stored"]
    assert [m["media"]["url"] for m in again["messages"]] == [
        states[p["key"]]["url"] for p in photos
    ]
    assert api_server.rpc.count("upload.getFile") == files_before

    unknown = await api_server.get("/api/v1/media/" + "0" * 32)
    assert (unknown.status, unknown.code) == (404, "NOT_FOUND")


async def test_unsigned_routes(api_server: ApiServer) -> None:
    health = await api_server.raw("GET", "/healthz", {})
    assert health.code == 200 and json.loads(health.body) == {"ok": True, "status": "ok"}
    metrics = await api_server.raw("GET", "/metrics", {})
    assert metrics.code == 200 and b"tgc_http_requests" in metrics.body


# --- Telegram's faults ------------------------------------------------------------------------


async def test_flood_wait_on_one_account_is_served_by_another(api_server: ApiServer) -> None:
    before = counts(api_server, HISTORY)
    await ok(api_server, "/api/v1/messages?peer=@tgc_news&limit=5")
    (first,) = served_by(api_server, HISTORY, before)

    api_server.rpc.flood_wait(HISTORY, 300, times=None, user_id=first)
    before = counts(api_server, HISTORY)
    data = await ok(api_server, "/api/v1/messages?peer=@tgc_news&limit=5")
    assert [m["id"] for m in data["messages"]] == [150, 149, 148, 147, 146]
    asked = served_by(api_server, HISTORY, before)
    assert first in asked and len(asked) == 2  # the flooded one, then one other

    accounts = {a["user_id"]: a for a in (await ok(api_server, "/api/v1/accounts"))["accounts"]}
    assert accounts[first]["state"] == "flood_wait"
    assert accounts[first]["flood_wait_until"] is not None
    assert [accounts[u]["state"] for u in ACCOUNTS if u != first] == ["ok", "ok"]

    # While it waits, the account is skipped: nobody asks it again.
    for _ in range(4):
        await ok(api_server, "/api/v1/messages?peer=@tgc_news&limit=5")
    assert api_server.rpc.count(HISTORY, first) == before[first] + 1


async def test_flood_wait_on_every_account_is_429(api_server: ApiServer) -> None:
    api_server.rpc.flood_wait(HISTORY, 30, times=None)
    before = counts(api_server, HISTORY)
    answer = await api_server.get("/api/v1/messages?peer=@tgc_news&limit=5")
    assert (answer.status, answer.code) == (429, "FLOOD_WAIT")
    assert answer.error is not None and 25 <= answer.error["retry_after"] <= 30
    assert answer.headers["Retry-After"] == str(answer.error["retry_after"])
    assert served_by(api_server, HISTORY, before) == list(ACCOUNTS)  # each tried once

    # The pool remembers: the next request is answered without asking Telegram.
    before = counts(api_server, HISTORY)
    again = await api_server.get("/api/v1/messages?peer=@tgc_news&limit=5")
    assert (again.status, again.code) == (429, "FLOOD_WAIT")
    assert counts(api_server, HISTORY) == before
    health = await api_server.raw("GET", "/healthz", {})
    assert health.code == 200  # flood waits end: the pool is still usable


async def test_a_banned_account_leaves_the_rotation(api_server: ApiServer) -> None:
    banned = dw.ACCOUNT_B
    api_server.rpc.deactivated_ban(banned)
    for _ in range(6):  # no peer: the pool rotates over every account
        found = await ok(api_server, "/api/v1/search?q=tgc_")
        assert found["results"]
    accounts = {a["user_id"]: a["state"] for a in (await ok(api_server, "/api/v1/accounts"))["accounts"]}
    assert accounts == {dw.ACCOUNT_A: "ok", banned: "banned", dw.ACCOUNT_C: "ok"}

    calls = api_server.rpc.count(user_id=banned)
    for _ in range(6):
        await ok(api_server, "/api/v1/search?q=tgc_")
        await ok(api_server, "/api/v1/messages?peer=@tgc_news&limit=1")
    assert api_server.rpc.count(user_id=banned) == calls  # never asked again


async def test_unknown_peers_are_404(api_server: ApiServer) -> None:
    for uri in (
        "/api/v1/peer?peer=@nosuch_name_here",
        "/api/v1/messages?peer=nosuch_name_here&limit=3",
        f"/api/v1/messages?peer={marked(9999)}",  # an id no account has seen
        "/api/v1/participants?peer=-99999",
    ):
        answer = await api_server.get(uri)
        assert (answer.status, answer.code) == (404, "PEER_NOT_FOUND"), (uri, answer)
        assert answer.error is not None and answer.error["message"]


async def test_private_channel_is_403(api_server: ApiServer) -> None:
    await ok(api_server, "/api/v1/peer?peer=@tgc_news")  # known, then it turns private
    api_server.rpc.channel_private(dw.NEWS)
    api_server.rpc.channel_private(dw.CHAT)
    for uri in (
        f"/api/v1/messages?peer={marked(dw.NEWS)}&limit=5",
        "/api/v1/peer?peer=@tgc_news",
        "/api/v1/peer?peer=@tgc_chat",  # never seen before: resolved, then refused
        "/api/v1/participants?peer=@tgc_chat",
    ):
        answer = await api_server.get(uri)
        assert (answer.status, answer.code) == (403, "PEER_PRIVATE"), (uri, answer)


# --- the HTTP layer's refusals ----------------------------------------------------------------


def assert_plain_401(response: Any, case: str = "") -> None:
    assert response.code == 401, case
    assert json.loads(response.body) == UNAUTHORIZED, case  # that and nothing else
    assert "X-Encryption" not in response.headers, case
    assert response.headers["Content-Type"].startswith("application/json"), case


async def test_bad_signatures_are_a_plain_401(api_server: ApiServer) -> None:
    uri = "/api/v1/accounts"
    good = api_server.sign("GET", uri)
    cases: dict[str, dict[str, str]] = {
        "wrong signature": {**good, "X-Signature": "0" * 64},
        "signed for another uri": api_server.sign("GET", "/api/v1/search?q=x"),
        "another token": Signer("not-the-token").sign("GET", uri),
        "old timestamp": api_server.sign("GET", uri, timestamp=int(time.time()) - 301),
        # A minute past the window: +301 passed once the requests before it took a second
        # (the window's exact edge is test_cryptor's, on a fake clock).
        "future timestamp": api_server.sign("GET", uri, timestamp=int(time.time()) + 360),
        "no signature": {k: v for k, v in good.items() if k != "X-Signature"},
        "malformed nonce": api_server.sign("GET", uri, nonce="short"),
        "no headers": {},
    }
    for name, headers in cases.items():
        assert_plain_401(await api_server.raw("GET", uri, headers), name)

    # The genuine request passes once; the same nonce again is a replay.
    first = await api_server.raw("GET", uri, good)
    assert first.code == 200 and first.headers["X-Encryption"] == api_server.cipher
    data = json.loads(api_server.decrypt(first, good["X-Nonce"]))
    assert data["ok"] and len(data["data"]["accounts"]) == 3
    assert_plain_401(await api_server.raw("GET", uri, good))
    # A replayed nonce with a fresh signature over a new timestamp is still a replay.
    again = api_server.sign("GET", uri, nonce=good["X-Nonce"])
    assert_plain_401(await api_server.raw("GET", uri, again))
    # Unsigned requests never reach the routes, not even a 404 or a 400.
    assert_plain_401(await api_server.raw("GET", "/api/v1/nothing", {}))
    assert_plain_401(await api_server.raw("GET", "/api/v1/messages?limit=0", {}))


INVALID = [
    ("/api/v1/peer", "peer"),
    ("/api/v1/peer?peer=", "peer"),
    ("/api/v1/peer?peer=%40a", "peer"),
    ("/api/v1/peer?peer=0", "peer"),
    ("/api/v1/peer?peer=@tgc_news&peer=@tgc_chat", "peer"),
    ("/api/v1/peer?peer=@tgc_news&extra=1", "extra"),
    ("/api/v1/messages?peer=@tgc_news&limit=0", "limit"),
    ("/api/v1/messages?peer=@tgc_news&limit=101", "limit"),
    ("/api/v1/messages?peer=@tgc_news&limit=ten", "limit"),
    ("/api/v1/messages?peer=@tgc_news&limit=-1", "limit"),
    ("/api/v1/messages?peer=@tgc_news&offset_id=-5", "offset_id"),
    ("/api/v1/messages?peer=@tgc_news&offset_id=1.5", "offset_id"),
    ("/api/v1/messages?peer=@tgc_news&min_id=x", "min_id"),
    ("/api/v1/messages?peer=@tgc_news&max_id=99999999999", "max_id"),
    ("/api/v1/messages?peer=@tgc_news&offsetid=5", "offsetid"),
    ("/api/v1/messages?peer=@tgc_news&ids=1,a", "ids"),
    ("/api/v1/messages?peer=@tgc_news&ids=0", "ids"),
    ("/api/v1/messages?peer=@tgc_news&ids=" + ",".join(map(str, range(1, 102))), "ids"),
    ("/api/v1/messages?peer=@tgc_news&ids=1,2&limit=5", "limit"),
    ("/api/v1/messages?limit=5", "peer"),
    ("/api/v1/messages?peer=&limit=5&offset_id=", "peer"),
    ("/api/v1/messages?peer=@tgc_news&offsetid=", "offsetid"),
    ("/api/v1/participants?peer=@tgc_chat&limit=0", "limit"),
    ("/api/v1/participants?peer=@tgc_chat&limit=201", "limit"),
    ("/api/v1/participants?peer=@tgc_chat&offset=-1", "offset"),
    ("/api/v1/search", "q"),
    ("/api/v1/search?q=%20%20", "q"),
    ("/api/v1/search?q=&limit=", "q"),
    ("/api/v1/search?q=" + "x" * 129, "q"),
    ("/api/v1/search?q=tgc&limit=0", "limit"),
    ("/api/v1/media/NOT-A-KEY", "key"),
    ("/api/v1/accounts?verbose=1", "verbose"),
    ("/api/v1/subscriptions?peer=@tgc_news", "peer"),
]


async def test_each_malformed_parameter_is_400_naming_it(api_server: ApiServer) -> None:
    calls = api_server.rpc.count()
    for uri, param in INVALID:
        answer = await api_server.get(uri)
        assert (answer.status, answer.code) == (400, "INVALID_PARAM"), (uri, answer)
        assert answer.error is not None and answer.error["param"] == param, (uri, answer.error)
    assert api_server.rpc.count() == calls  # refused before any account was asked


async def test_a_query_telegram_finds_too_short_is_400_on_q(api_server: ApiServer) -> None:
    before = api_server.rpc.count("contacts.search")
    answer = await api_server.get("/api/v1/search?q=tgc")
    assert (answer.status, answer.code) == (400, "INVALID_PARAM"), answer
    assert answer.error is not None and answer.error["param"] == "q"
    assert "QUERY_TOO_SHORT" in answer.error["message"]
    assert api_server.rpc.count("contacts.search") == before + 1  # Telegram's call, once


async def test_an_oversized_body_is_413(api_server: ApiServer) -> None:
    big = {"peer": "@tgc_news", "pad": "x" * api_server.max_body_bytes}
    answer = await api_server.api.request("POST", "/api/v1/subscriptions", big)
    assert (answer.status, answer.code) == (413, "BODY_TOO_LARGE")  # encrypted, as a signed one

    # Unsigned and oversized: refused all the same, with the plain 401.
    response = await api_server.raw("POST", "/api/v1/subscriptions", {}, b"x" * (1 << 20))
    assert_plain_401(response)

    # Chunked (no Content-Length): the same encrypted 413, counted as the body comes in.
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    body = json.dumps(big).encode()
    headers = api_server.sign("POST", "/api/v1/subscriptions", body)

    async def producer(write: Callable[[bytes], Any]) -> None:
        for i in range(0, len(body), 4096):
            await write(body[i : i + 4096])

    http = AsyncHTTPClient(force_instance=True)
    try:
        response = await http.fetch(
            HTTPRequest(
                api_server.url + "/api/v1/subscriptions",
                method="POST",
                headers=headers,
                body_producer=producer,
                request_timeout=30,
            ),
            raise_error=False,
        )
    finally:
        http.close()
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.code == 413
    plain = json.loads(api_server.decrypt(response, headers["X-Nonce"]))
    assert plain["error"]["code"] == "BODY_TOO_LARGE"
    assert await ok(api_server, "/api/v1/subscriptions") == {"subscriptions": []}


# --- username resolutions: at most one per account, none after a restart -----------------------


async def fifty(server: ApiServer, uris: list[str]) -> list[ApiResponse]:
    answers = await asyncio.gather(*(server.get(uri) for uri in uris))
    assert all(a.ok for a in answers), [a.error for a in answers if not a.ok]
    return answers


async def test_the_same_peer_fifty_times_costs_one_resolution_per_account_at_most(
    api_server: ApiServer,
) -> None:
    routes = [
        "/api/v1/peer?peer=@tgc_news",
        "/api/v1/messages?peer=%40tgc_news&limit=3",
        "/api/v1/messages?peer=tgc_news&ids=5,6",
        "/api/v1/peer?peer=t.me%2Ftgc_news",
        "/api/v1/messages?peer=@TGC_News&limit=1",
    ]
    uris = [routes[i % len(routes)] for i in range(50)]
    await fifty(api_server, uris)  # all at once
    first = counts(api_server, RESOLVE)
    assert 1 <= sum(first.values()) and max(first.values()) == 1, first

    # The accounts that know it keep serving it; make them wait so the others must serve
    # too: each of those resolves once at most as well.
    for user_id in [u for u, n in first.items() if n]:
        api_server.rpc.flood_wait(HISTORY, 300, times=None, user_id=user_id)
    await fifty(api_server, uris)
    await fifty(api_server, uris[::-1])
    spread = counts(api_server, RESOLVE)
    assert max(spread.values()) == 1 and sum(spread.values()) >= 2, spread

    api_server.rpc.clear_faults()
    await api_server.restart()  # a new pool on the same session files
    await fifty(api_server, uris)
    await fifty(api_server, [u.replace("@tgc_news", str(marked(dw.NEWS))) for u in uris])
    assert counts(api_server, RESOLVE) == spread  # none after the restart
    # Still the same peer: a different username costs a resolution, as it should.
    await ok(api_server, "/api/v1/peer?peer=@tgc_chat")
    assert sum(counts(api_server, RESOLVE).values()) == sum(spread.values()) + 1


async def test_resolutions_beyond_every_budget_are_429_rate_limited(api_server: ApiServer) -> None:
    budget = api_server.pool_options["resolve_per_minute"]  # per account, a token bucket
    names = [f"member_{i:03d}" for i in range(len(ACCOUNTS) * budget + 1)]
    for name in names[:-1]:
        assert (await ok(api_server, f"/api/v1/peer?peer=@{name}"))["username"] == name
    assert counts(api_server, RESOLVE) == dict.fromkeys(ACCOUNTS, budget)

    answer = await api_server.get(f"/api/v1/peer?peer=@{names[-1]}")
    assert (answer.status, answer.code) == (429, "RATE_LIMITED"), answer
    assert answer.error is not None and 0 < answer.error["retry_after"] <= 60
    assert answer.headers["Retry-After"] == str(answer.error["retry_after"])
    assert counts(api_server, RESOLVE) == dict.fromkeys(ACCOUNTS, budget)  # nobody overspent
    # Peers already known cost nothing and are still served.
    assert (await ok(api_server, f"/api/v1/peer?peer=@{names[0]}"))["username"] == names[0]


# --- subscriptions: the real Subscriber, Publisher and broker (`subscriptions_server`) ---------

SUBS = "/api/v1/subscriptions"
JOIN = "channels.joinChannel"
LABELS = {f"acc{u}" for u in ACCOUNTS}


async def post_sub(server: ApiServer, body: dict[str, Any]) -> ApiResponse:
    return await server.api.request("POST", SUBS, body)


async def delete_sub(server: ApiServer, peer: str) -> ApiResponse:
    return await server.api.request("DELETE", SUBS, params={"peer": peer})


def refused(answer: ApiResponse, status: int, code: str) -> dict[str, Any]:
    """The error of an answer that must be `status` `code`, with a message."""
    assert (answer.status, answer.code, answer.ok) == (status, code, False), answer
    assert answer.error is not None and answer.error["message"], answer
    return answer.error


async def test_subscribe_list_event_leave(subscriptions_server: ApiServer, rabbit: Rabbit) -> None:
    server = subscriptions_server
    peer = {
        "id": marked(dw.MEDIA),
        "type": "channel",
        "title": "TGC Media",
        "username": "tgc_media",
    }
    async with rabbit.consumer() as consumer:
        answer = await post_sub(server, {"peer": "@tgc_media"})
        assert answer.status == 200 and answer.ok, answer
        sub = answer.data
        assert sub["peer"] == peer and sub["state"] == "joined" and sub["account"] in LABELS
        newest = server.rpc.world.chats[dw.MEDIA].top_id()
        assert sub["last_message_id"] == newest  # what came before the join is not news
        joiner = int(sub["account"].removeprefix("acc"))
        assert joiner in server.rpc.world.chats[dw.MEDIA].members
        assert await ok(server, SUBS) == {"subscriptions": [sub]}

        for spelling in ("@tgc_media", str(marked(dw.MEDIA))):  # known under either
            error = refused(await post_sub(server, {"peer": spelling}), 409, "ALREADY_SUBSCRIBED")
            assert error["subscription"] == sub, spelling
        assert await ok(server, SUBS) == {"subscriptions": [sub]}

        post = await server.rpc.post_message(dw.MEDIA, "fresh from the emulator")
        await consumer.wait_for_ids([f"{marked(dw.MEDIA)}:{post.id}:message.new"])
        (new,) = [m for m in consumer.messages if m.routing_key == "message.new"]
        assert new.body["event"] == "message.new" and new.body["account"] in LABELS
        assert new.body["message"]["id"] == post.id and new.body["message"]["text"] == (
            "fresh from the emulator"
        )
        assert new.body["message"]["peer_id"] == marked(dw.MEDIA) and new.delivery_mode == 2

        left = await delete_sub(server, "@tgc_media")
        assert left.status == 200 and left.ok, left
        assert left.data["peer"] == peer and left.data["account"] == sub["account"]
        assert left.data["state"] == "left"
        assert joiner not in server.rpc.world.chats[dw.MEDIA].members
        assert await ok(server, SUBS) == {"subscriptions": []}
        refused(await delete_sub(server, "@tgc_media"), 409, "NOT_SUBSCRIBED")

        def changed(c: Any) -> list[str]:
            return [m.body["state"] for m in c.messages if m.routing_key == "subscription.changed"]

        await consumer.wait_until(lambda c: len(changed(c)) >= 2)
        assert changed(consumer) == ["joined", "left"]


async def test_subscribing_unknown_and_private_peers(subscriptions_server: ApiServer) -> None:
    server = subscriptions_server
    refused(await post_sub(server, {"peer": "@nosuch_name_here"}), 404, "PEER_NOT_FOUND")
    refused(await post_sub(server, {"peer": str(marked(9999))}), 404, "PEER_NOT_FOUND")
    assert server.rpc.count(JOIN) == 0  # nothing to join
    server.rpc.channel_private(dw.CHAT)  # resolved, then Telegram refuses the join
    refused(await post_sub(server, {"peer": "@tgc_chat"}), 403, "PEER_PRIVATE")
    refused(await delete_sub(server, "@tgc_chat"), 409, "NOT_SUBSCRIBED")
    assert await ok(server, SUBS) == {"subscriptions": []}


async def test_every_account_full_by_telegram_is_503(subscriptions_server: ApiServer) -> None:
    server = subscriptions_server
    server.rpc.world.channel_limit = 1  # every account is in @tgc_news: CHANNELS_TOO_MUCH
    error = refused(await post_sub(server, {"peer": "@tgc_ask"}), 503, "NO_ACCOUNT_AVAILABLE")
    assert "channel limit: acc1001, acc1002, acc1003" in error["message"]
    assert counts(server, JOIN) == dict.fromkeys(ACCOUNTS, 1)  # each tried once
    # Telegram said so: the accounts stay full for a while, without asking it again.
    refused(await post_sub(server, {"peer": "@tgc_chat"}), 503, "NO_ACCOUNT_AVAILABLE")
    assert counts(server, JOIN) == dict.fromkeys(ACCOUNTS, 1)
    assert await ok(server, SUBS) == {"subscriptions": []}


@pytest.mark.parametrize("api_subscriber_options", [{"channel_limit": 1}])  # join_limit=1
async def test_every_account_at_the_join_limit_is_503(subscriptions_server: ApiServer) -> None:
    server = subscriptions_server
    accounts = set()
    for name in ("@tgc_news", "@tgc_media", "@tgc_chat"):  # one chat each, then full
        answer = await post_sub(server, {"peer": name})
        assert answer.status == 200 and answer.ok, (name, answer)
        accounts.add(answer.data["account"])
    assert accounts == LABELS
    joins = counts(server, JOIN)
    error = refused(await post_sub(server, {"peer": "@tgc_ask"}), 503, "NO_ACCOUNT_AVAILABLE")
    assert "channel limit: acc1001, acc1002, acc1003" in error["message"]
    assert counts(server, JOIN) == joins  # the join map said so: Telegram not asked
    assert len((await ok(server, SUBS))["subscriptions"]) == 3


async def test_a_chat_needing_approval_is_403_naming_the_account(
    subscriptions_server: ApiServer,
) -> None:
    server = subscriptions_server
    chat = server.rpc.world.chats[dw.REQUESTS]
    error = refused(await post_sub(server, {"peer": "@tgc_ask"}), 403, "PEER_PRIVATE")
    (asker,) = chat.requests  # one join request, from one account
    assert f"account acc{asker}" in error["message"] and "approval" in error["message"]
    assert await ok(server, SUBS) == {"subscriptions": []}
    again = refused(await post_sub(server, {"peer": "@tgc_ask"}), 403, "PEER_PRIVATE")
    assert f"account acc{asker}" in again["message"]
    assert chat.requests == [asker]
    assert counts(server, JOIN) == {u: 2 if u == asker else 0 for u in ACCOUNTS}
    server.rpc.add_member(asker, dw.REQUESTS)  # an admin approves it
    answer = await post_sub(server, {"peer": "@tgc_ask"})
    assert answer.status == 200 and answer.ok, answer
    assert (answer.data["account"], answer.data["state"]) == (f"acc{asker}", "joined")


async def test_malformed_subscription_requests_are_400_naming_the_param(
    subscriptions_server: ApiServer,
) -> None:
    server = subscriptions_server
    calls = server.rpc.count()
    bodies: list[tuple[dict[str, Any], str]] = [
        ({}, "peer"),
        ({"peer": ""}, "peer"),
        ({"peer": None}, "peer"),
        ({"peer": "@a"}, "peer"),
        ({"peer": True}, "peer"),
        ({"peer": ["@tgc_news"]}, "peer"),
        ({"peer": 0}, "peer"),
        ({"peer": "@tgc_news", "limit": 5}, "limit"),
    ]
    for body, param in bodies:
        error = refused(await post_sub(server, body), 400, "INVALID_PARAM")
        assert error["param"] == param, (body, error)
    # A POST may carry the peer in its query (docs/DEPLOY.md), but not a different one, nor
    # anything else there.
    for uri, body, param in (
        (SUBS + "?peer=@tgc_chat", {"peer": "@tgc_news"}, "peer"),
        (SUBS + "?peer=@tgc_news&peer=@tgc_news", None, "peer"),
        (SUBS + "?peer=@tgc_news&limit=5", None, "limit"),
    ):
        query = await server.api.request("POST", uri, body)
        assert refused(query, 400, "INVALID_PARAM")["param"] == param, (uri, body)
    for raw in (b"", b"peer=@tgc_news", b'["@tgc_news"]', b'{"peer": '):
        headers = {**server.sign("POST", SUBS, raw), "Content-Type": "application/json"}
        response = await server.raw("POST", SUBS, headers, raw)
        plain = json.loads(server.decrypt(response, headers["X-Nonce"]))
        assert response.code == 400 and plain["error"]["code"] == "INVALID_PARAM", (raw, plain)
        assert plain["error"]["param"] == "body", (raw, plain)
    for uri, param in (
        (SUBS, "peer"),
        (SUBS + "?peer=", "peer"),
        (SUBS + "?peer=@tgc_news&peer=@tgc_chat", "peer"),
        (SUBS + "?peer=@tgc_news&account=acc1001", "account"),
    ):
        error = refused(await server.api.request("DELETE", uri), 400, "INVALID_PARAM")
        assert error["param"] == param, (uri, error)
    assert server.rpc.count() == calls  # refused before any account was asked
    assert await ok(server, SUBS) == {"subscriptions": []}
