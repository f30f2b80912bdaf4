"""service/handler.py over real HTTP on loopback, with small fakes of the pool, the media
processor and the subscriptions service (the real parser runs on real Telethon objects).
Integration against the emulator is the lead's: tests/integration/."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from telethon.tl import types
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets

from common.errors import (
    AlreadySubscribed,
    FloodWait,
    InvalidArgument,
    NoAccountAvailable,
    NotSubscribed,
    PeerNotFound,
    PeerPrivate,
    RateLimited,
    TelegramError,
)
from common.utils import PeerRef
from model.media import Media
from service.apiclient import ApiClient, ApiResponse
from service.cryptor import Cipher, Signer
from service.handler import Lifecycle, make_app, make_server, outer_body_limit

TOKEN = "handler-test-token"
KEY = "5a" * 32
DATE = dt.datetime(2024, 5, 1, 12, 0, 7, tzinfo=dt.UTC)
CHANNEL_ID = 1234
MARKED = -1000000001234
UNAUTHORIZED = {"ok": False, "error": {"code": "UNAUTHORIZED"}}


# --- fakes ------------------------------------------------------------------------------


def photo(photo_id: int) -> types.Photo:
    return types.Photo(
        id=photo_id,
        access_hash=9,
        file_reference=b"r",
        date=DATE,
        sizes=[types.PhotoSize(type="x", w=800, h=600, size=50_000)],
        dc_id=2,
    )


def message(msg_id: int, with_photo: bool = False) -> types.Message:
    media = types.MessageMediaPhoto(photo=photo(500 + msg_id)) if with_photo else None
    return types.Message(
        id=msg_id,
        peer_id=types.PeerChannel(CHANNEL_ID),
        date=DATE,
        message=f"m{msg_id}",
        media=media,
    )


def channel() -> types.Channel:
    return types.Channel(
        id=CHANNEL_ID,
        title="News",
        photo=types.ChatPhoto(photo_id=61, dc_id=2),
        date=DATE,
        broadcast=True,
        access_hash=5,
        username="news",
        participants_count=1000,
    )


def channel_full() -> types.messages.ChatFull:
    full = types.ChannelFull(
        id=CHANNEL_ID,
        about="All the news",
        read_inbox_max_id=0,
        read_outbox_max_id=0,
        unread_count=0,
        chat_photo=photo(61),
        notify_settings=types.PeerNotifySettings(),
        bot_info=[],
        pts=1,
        participants_count=1200,
    )
    return types.messages.ChatFull(full_chat=full, chats=[], users=[])


def user(user_id: int) -> types.User:
    return types.User(id=user_id, first_name=f"u{user_id}", access_hash=1)


class FakeAccount:
    """The TeleClient calls the queries make, over a channel of `history_size` messages."""

    name = "acc1"

    def __init__(self, history_size: int = 45, members: int = 7) -> None:
        self.history = [message(i, with_photo=i % 10 == 0) for i in range(history_size, 0, -1)]
        self.members = [user(100 + i) for i in range(members)]
        self.calls: list[tuple[Any, ...]] = []

    async def get_full(self, ref: PeerRef) -> tuple[Any, Any]:
        self.calls.append(("get_full", ref))
        return channel(), channel_full()

    async def get_history(
        self, ref: PeerRef, limit: int, offset_id: int, min_id: int, max_id: int
    ) -> tuple[Any, list[Any]]:
        self.calls.append(("get_history", ref, limit, offset_id, min_id, max_id))
        found = [
            m
            for m in self.history
            if (not offset_id or m.id < offset_id)
            and m.id > min_id
            and (not max_id or m.id < max_id)
        ]
        return channel(), found[:limit]

    async def get_messages(self, ref: PeerRef, ids: list[int]) -> tuple[Any, list[Any]]:
        by_id = {m.id: m for m in self.history}
        return channel(), [by_id.get(i) for i in ids]

    async def get_participants(
        self, ref: PeerRef, limit: int, offset: int
    ) -> tuple[Any, list[Any], int]:
        return channel(), self.members[offset : offset + limit], len(self.members)

    async def search(self, q: str, limit: int) -> list[Any]:
        self.calls.append(("search", q, limit))
        return [channel()][:limit]


class FakePool:
    def __init__(self, account: FakeAccount) -> None:
        self.account = account
        self.error: BaseException | None = None
        self.is_usable = True

    async def run(
        self, op: Callable[[Any], Awaitable[Any]], peer: PeerRef | None = None
    ) -> tuple[Any, Any]:
        if self.error is not None:
            raise self.error
        return await op(self.account), self.account

    def accounts(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "acc1",
                "phone": "+44*****90",
                "state": "ok",
                "flood_wait_until": None,
                "pending_downloads": 0,
            }
        ]

    def usable(self) -> bool:
        return self.is_usable


class FakeProcessor:
    def __init__(self) -> None:
        self.submitted: list[Media] = []
        self.records: dict[str, dict[str, Any]] = {}

    def submit(self, media: Media) -> dict[str, Any]:
        self.submitted.append(media)
        return self.records.setdefault(
            media.key, {"state": "pending", "url": None, "size": media.size}
        )

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


class FakeJoinMap:
    def __init__(self) -> None:
        self.rows = [{"peer_id": MARKED, "account": "acc1", "state": "joined"}]

    def subscriptions(self) -> list[dict[str, Any]]:
        return self.rows


class FakeSubscriptions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, PeerRef]] = []
        self.error: BaseException | None = None

    async def subscribe(self, peer: PeerRef) -> dict[str, Any]:
        self.calls.append(("subscribe", peer))
        if self.error is not None:
            raise self.error
        return {"peer_id": MARKED, "account": "acc1", "state": "joined"}

    async def unsubscribe(self, peer: PeerRef) -> dict[str, Any]:
        self.calls.append(("unsubscribe", peer))
        if self.error is not None:
            raise self.error
        return {"peer_id": MARKED, "account": "acc1", "state": "left"}


@dataclass
class Api:
    url: str
    client: ApiClient
    pool: FakePool
    processor: FakeProcessor
    subscriptions: FakeSubscriptions
    app: Any
    registry: CollectorRegistry
    cipher: str
    lifecycle: Lifecycle
    http: AsyncHTTPClient = field(default_factory=lambda: AsyncHTTPClient(force_instance=True))

    async def call(self, method: str, uri: str, body: dict[str, Any] | None = None) -> ApiResponse:
        return await self.client.request(method, uri, body)

    async def raw(
        self,
        method: str,
        uri: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> HTTPResponse:
        return await self.http.fetch(
            HTTPRequest(
                self.url + uri,
                method=method,
                headers=headers,
                body=body,
                allow_nonstandard_methods=True,
            ),
            raise_error=False,
        )


MAX_BODY = 4096


@pytest.fixture(params=["aes-256-gcm", "aes-256-cbc"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    pool, processor, subs = FakePool(FakeAccount()), FakeProcessor(), FakeSubscriptions()
    registry = CollectorRegistry()
    lifecycle = Lifecycle()
    app = make_app(
        pool=pool,
        processor=processor,
        joinmap=FakeJoinMap(),
        subscriptions=subs,
        signer=Signer(TOKEN),
        cipher=Cipher.create(request.param, KEY),
        metrics=registry,
        max_body_bytes=MAX_BODY,
        lifecycle=lifecycle,
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = make_server(app, MAX_BODY)
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    client = ApiClient(url, TOKEN, KEY, request.param)
    api = Api(url, client, pool, processor, subs, app, registry, request.param, lifecycle)
    yield api
    client.close()
    api.http.close()
    server.stop()
    await server.close_all_connections()


def assert_error(answer: ApiResponse, status: int, code: str) -> dict[str, Any]:
    assert (answer.status, answer.ok, answer.code) == (status, False, code), answer
    assert answer.headers["X-Encryption"]
    assert answer.error is not None
    return answer.error


# --- signing and encryption -------------------------------------------------------------


async def test_accounts_signed_and_encrypted(api: Api) -> None:
    answer = await api.call("GET", "/api/v1/accounts")
    assert answer.status == 200 and answer.ok
    assert answer.data == {"accounts": api.pool.accounts()}
    assert answer.headers["X-Encryption"] == api.cipher
    assert answer.headers["Content-Type"] == "text/plain; charset=us-ascii"


async def test_answer_is_bound_to_the_request_nonce(api: Api) -> None:
    if api.cipher != "aes-256-gcm":
        pytest.skip("only GCM binds the answer to the nonce")
    headers = Signer(TOKEN).sign("GET", "/api/v1/accounts")
    response = await api.raw("GET", "/api/v1/accounts", headers)
    cipher = Cipher.create(api.cipher, KEY)
    assert orjson.loads(cipher.decrypt(response.body, headers["X-Nonce"].encode()))["ok"] is True
    with pytest.raises(ValueError):
        cipher.decrypt(response.body, b"another-nonce-value")


async def test_full_nonce_cache_is_429_not_401(api: Api) -> None:
    api.app.settings["tgc_signer"] = Signer(TOKEN, max_nonces=1)
    assert (await api.call("GET", "/api/v1/accounts")).ok
    answer = await api.call("GET", "/api/v1/accounts")
    error = assert_error(answer, 429, "RATE_LIMITED")
    assert error["retry_after"] >= 299 and answer.headers["Retry-After"] == str(
        error["retry_after"]
    )


def _unauthorized(response: HTTPResponse) -> None:
    assert response.code == 401
    assert orjson.loads(response.body) == UNAUTHORIZED
    assert response.headers["Content-Type"] == "application/json"
    assert "X-Encryption" not in response.headers


@pytest.mark.parametrize(
    "tamper",
    ["none", "wrong-token", "old", "future", "bad-signature", "no-nonce", "other-uri"],
)
async def test_unauthorized_requests(api: Api, tamper: str) -> None:
    uri = "/api/v1/accounts"
    signer = Signer("other" if tamper == "wrong-token" else TOKEN)
    now = int(__import__("time").time())
    ts = {"old": now - 301, "future": now + 301}.get(tamper)
    headers = signer.sign("GET", "/api/v1/peer" if tamper == "other-uri" else uri, timestamp=ts)
    if tamper == "none":
        headers = {}
    elif tamper == "bad-signature":
        headers["X-Signature"] = "0" * 64
    elif tamper == "no-nonce":
        del headers["X-Nonce"]
    _unauthorized(await api.raw("GET", uri, headers))


async def test_replayed_request_is_unauthorized(api: Api) -> None:
    headers = Signer(TOKEN).sign("GET", "/api/v1/accounts")
    first = await api.raw("GET", "/api/v1/accounts", headers)
    assert first.code == 200
    _unauthorized(await api.raw("GET", "/api/v1/accounts", headers))


async def test_tampered_post_body_is_unauthorized(api: Api) -> None:
    headers = Signer(TOKEN).sign("POST", "/api/v1/subscriptions", b'{"peer": "@news"}')
    response = await api.raw("POST", "/api/v1/subscriptions", headers, b'{"peer": "@evil"}')
    _unauthorized(response)
    assert api.subscriptions.calls == []


async def test_unknown_api_path(api: Api) -> None:
    _unauthorized(await api.raw("GET", "/api/v1/nope"))
    assert_error(await api.call("GET", "/api/v1/nope"), 404, "NOT_FOUND")


async def test_the_api_root_itself_is_signed_like_the_rest(api: Api) -> None:
    for uri in ("/api/v1", "/api/v1?x=1"):
        _unauthorized(await api.raw("GET", uri))
        assert_error(await api.call("GET", uri), 404, "NOT_FOUND")


async def test_methods_not_served(api: Api) -> None:
    assert_error(await api.call("PUT", "/api/v1/accounts", {}), 405, "METHOD_NOT_ALLOWED")
    assert_error(await api.call("POST", "/api/v1/accounts", {}), 405, "METHOD_NOT_ALLOWED")
    head = await api.raw("HEAD", "/api/v1/accounts", Signer(TOKEN).sign("HEAD", "/api/v1/accounts"))
    assert head.code == 405 and head.body == b""
    # A method Tornado itself refuses never reaches the signature check: still just 401.
    _unauthorized(
        await api.raw("BREW", "/api/v1/accounts", Signer(TOKEN).sign("BREW", "/api/v1/accounts"))
    )


# --- routes -----------------------------------------------------------------------------


async def test_peer(api: Api) -> None:
    answer = await api.call("GET", "/api/v1/peer?peer=%40news")
    assert answer.ok
    peer = answer.data
    assert (peer["id"], peer["type"], peer["title"], peer["about"]) == (
        MARKED,
        "channel",
        "News",
        "All the news",
    )
    assert peer["photo"]["state"] == "pending"
    assert [m.key for m in api.processor.submitted] == [peer["photo"]["key"]]
    assert api.processor.submitted[0].account == "acc1"
    assert api.pool.account.calls[0] == ("get_full", PeerRef("@news", username="news"))


async def test_media_state_comes_from_the_processor(api: Api) -> None:
    first = await api.call("GET", "/api/v1/messages?peer=news&limit=10")
    descriptor = first.data["messages"][5]["media"]  # message 40 carries a photo
    assert descriptor["state"] == "pending" and descriptor["url"] is None
    api.processor.records[descriptor["key"]].update(state="stored", url="http://store/x.jpg")
    again = await api.call("GET", "/api/v1/messages?peer=news&limit=10")
    assert again.data["messages"][5]["media"]["state"] == "stored"
    assert again.data["messages"][5]["media"]["url"] == "http://store/x.jpg"
    record = await api.call("GET", f"/api/v1/media/{descriptor['key']}")
    assert record.data == {
        "key": descriptor["key"],
        "state": "stored",
        "url": "http://store/x.jpg",
        "size": 50_000,
    }


async def test_media_unknown_and_malformed_key(api: Api) -> None:
    assert_error(await api.call("GET", "/api/v1/media/" + "0" * 32), 404, "NOT_FOUND")
    error = assert_error(await api.call("GET", "/api/v1/media/xyz"), 400, "INVALID_PARAM")
    assert error["param"] == "key"


async def test_history_pages_to_the_end(api: Api) -> None:
    seen: list[int] = []
    uri = "/api/v1/messages?peer=-1000000001234&limit=20"
    pages = 0
    while True:
        answer = await api.call("GET", uri)
        assert answer.ok
        seen += [m["id"] for m in answer.data["messages"]]
        pages += 1
        offset = answer.data["next_offset_id"]
        if offset is None:
            break
        uri = f"/api/v1/messages?peer=-1000000001234&limit=20&offset_id={offset}"
    assert seen == list(range(45, 0, -1)) and pages == 3


async def test_history_default_limit_and_bounds(api: Api) -> None:
    answer = await api.call("GET", "/api/v1/messages?peer=news&min_id=10&max_id=40")
    assert [m["id"] for m in answer.data["messages"]] == list(range(39, 19, -1))
    assert answer.data["next_offset_id"] == 20
    last = await api.call("GET", "/api/v1/messages?peer=news&min_id=10&max_id=40&offset_id=20")
    assert [m["id"] for m in last.data["messages"]] == list(range(19, 10, -1))
    assert last.data["next_offset_id"] is None
    assert api.pool.account.calls[-1] == (
        "get_history",
        PeerRef("news", username="news"),
        20,
        20,
        10,
        40,
    )


@pytest.mark.parametrize(
    ("uri", "call"),
    [
        # The contract's own spelling: empty values are the defaults.
        (
            "/api/v1/messages?peer=news&limit=&offset_id=&min_id=&max_id=",
            ("get_history", PeerRef("news", username="news"), 20, 0, 0, 0),
        ),
        (
            "/api/v1/messages?peer=news&limit=5&offset_id=30&min_id=&max_id=",
            ("get_history", PeerRef("news", username="news"), 5, 30, 0, 0),
        ),
        # An empty `ids` is no `ids`: the paging form, which then takes the paging params.
        (
            "/api/v1/messages?peer=news&ids=&limit=3",
            ("get_history", PeerRef("news", username="news"), 3, 0, 0, 0),
        ),
        ("/api/v1/search?q=news&limit=", ("search", "news", 20)),
    ],
)
async def test_an_empty_optional_parameter_is_its_default(
    api: Api, uri: str, call: tuple[Any, ...]
) -> None:
    answer = await api.call("GET", uri)
    assert answer.status == 200 and answer.ok, answer
    assert api.pool.account.calls[-1] == call


async def test_empty_optional_parameters_elsewhere(api: Api) -> None:
    answer = await api.call("GET", "/api/v1/participants?peer=news&limit=&offset=")
    assert answer.ok and len(answer.data["participants"]) == 7  # limit 100, offset 0
    listed = await api.call("GET", "/api/v1/subscriptions?peer=")
    assert listed.ok and listed.data == {"subscriptions": FakeJoinMap().rows}
    error = assert_error(
        await api.call("DELETE", "/api/v1/subscriptions?peer="), 400, "INVALID_PARAM"
    )
    assert error["param"] == "peer" and api.subscriptions.calls == []


async def test_messages_by_ids_in_order_with_nulls(api: Api) -> None:
    answer = await api.call("GET", "/api/v1/messages?peer=news&ids=3,999,1")
    assert [m and m["id"] for m in answer.data["messages"]] == [3, None, 1]
    assert set(answer.data) == {"messages"}


async def test_participants(api: Api) -> None:
    first = await api.call("GET", "/api/v1/participants?peer=news&limit=5")
    assert first.data["count"] == 7 and first.data["next_offset"] == 5
    assert [p["first_name"] for p in first.data["participants"]] == [
        f"u{100 + i}" for i in range(5)
    ]
    rest = await api.call("GET", "/api/v1/participants?peer=news&limit=5&offset=5")
    assert len(rest.data["participants"]) == 2 and rest.data["next_offset"] is None


async def test_search(api: Api) -> None:
    answer = await api.call("GET", "/api/v1/search?q=news%20today&limit=3")
    assert [r["id"] for r in answer.data["results"]] == [MARKED]
    assert api.pool.account.calls[-1] == ("search", "news today", 3)


async def test_subscriptions(api: Api) -> None:
    listed = await api.call("GET", "/api/v1/subscriptions")
    assert listed.data == {
        "subscriptions": [{"peer_id": MARKED, "account": "acc1", "state": "joined"}]
    }
    joined = await api.call("POST", "/api/v1/subscriptions", {"peer": "t.me/news"})
    assert joined.ok and joined.data["state"] == "joined"
    left = await api.call("DELETE", "/api/v1/subscriptions?peer=%40news")
    assert left.ok and left.data["state"] == "left"
    assert [(c, p.username) for c, p in api.subscriptions.calls] == [
        ("subscribe", "news"),
        ("unsubscribe", "news"),
    ]


async def test_subscription_conflicts(api: Api) -> None:
    sub = {"peer_id": MARKED, "account": "acc1", "state": "joined"}
    api.subscriptions.error = AlreadySubscribed("@news", sub)
    error = assert_error(
        await api.call("POST", "/api/v1/subscriptions", {"peer": "@news"}),
        409,
        "ALREADY_SUBSCRIBED",
    )
    assert error["subscription"] == sub
    api.subscriptions.error = NotSubscribed("@news")
    assert_error(await api.call("DELETE", "/api/v1/subscriptions?peer=news"), 409, "NOT_SUBSCRIBED")


@pytest.mark.parametrize(
    ("uri", "param"),
    [
        ("/api/v1/peer", "peer"),
        ("/api/v1/peer?peer=", "peer"),
        ("/api/v1/peer?peer=a%20b", "peer"),
        ("/api/v1/peer?peer=news&peer=other", "peer"),
        ("/api/v1/peer?peer=news&foo=1", "foo"),
        ("/api/v1/peer?peer=%FF%FE", "peer"),
        ("/api/v1/messages?peer=news&limit=0", "limit"),
        ("/api/v1/messages?peer=news&limit=101", "limit"),
        ("/api/v1/messages?peer=news&limit=abc", "limit"),
        ("/api/v1/messages?peer=news&limit=%2B5", "limit"),
        ("/api/v1/messages?peer=news&offset_id=-1", "offset_id"),
        ("/api/v1/messages?peer=news&min_id=1.5", "min_id"),
        ("/api/v1/messages?peer=news&max_id=99999999999", "max_id"),
        ("/api/v1/messages?peer=news&ids=1,x", "ids"),
        ("/api/v1/messages?peer=news&ids=0", "ids"),
        ("/api/v1/messages?peer=news&ids=" + ",".join(["1"] * 101), "ids"),
        ("/api/v1/messages?peer=news&ids=1&limit=5", "limit"),
        ("/api/v1/messages?ids=1", "peer"),
        ("/api/v1/messages?peer=&limit=5&offset_id=", "peer"),
        ("/api/v1/messages?peer=news&offset_id=&offset_id=5", "offset_id"),
        ("/api/v1/messages?peer=news&offsetid=", "offsetid"),
        ("/api/v1/participants?peer=news&limit=201", "limit"),
        ("/api/v1/participants?peer=news&offset=x", "offset"),
        ("/api/v1/search", "q"),
        ("/api/v1/search?q=%20", "q"),
        ("/api/v1/search?q=&limit=", "q"),
        ("/api/v1/accounts?x=", "x"),
        ("/api/v1/search?q=" + "a" * 129, "q"),
        ("/api/v1/search?q=x&limit=0", "limit"),
        ("/api/v1/accounts?x=1", "x"),
        ("/api/v1/subscriptions?peer=news", "peer"),
        ("/api/v1/media/" + "0" * 32 + "?a=1", "a"),
    ],
)
async def test_each_bad_parameter_is_named(api: Api, uri: str, param: str) -> None:
    error = assert_error(await api.call("GET", uri), 400, "INVALID_PARAM")
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"", "body"),
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"peer": "news", "extra": 1}', "extra"),
        (b'{"peer": true}', "peer"),
        (b'{"peer": ["news"]}', "peer"),
        (b"{}", "peer"),
    ],
)
async def test_bad_post_bodies(api: Api, body: bytes, param: str) -> None:
    headers = Signer(TOKEN).sign("POST", "/api/v1/subscriptions", body)
    response = await api.raw("POST", "/api/v1/subscriptions", headers, body)
    plain = orjson.loads(
        Cipher.create(api.cipher, KEY).decrypt(response.body, headers["X-Nonce"].encode())
    )
    assert response.code == 400 and plain["error"]["code"] == "INVALID_PARAM"
    assert plain["error"]["param"] == param


async def test_post_with_query_is_refused(api: Api) -> None:
    error = assert_error(
        await api.call("POST", "/api/v1/subscriptions?peer=x", {"peer": "news"}),
        400,
        "INVALID_PARAM",
    )
    assert error["param"] == "peer"


async def test_subscriptions_without_the_service(api: Api) -> None:
    api.app.settings["tgc_subscriptions"] = None
    assert_error(
        await api.call("POST", "/api/v1/subscriptions", {"peer": "news"}), 503, "UNAVAILABLE"
    )
    assert (await api.call("GET", "/api/v1/subscriptions")).ok


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (FloodWait(11.2, "acc1"), 429, "FLOOD_WAIT", 12),
        (RateLimited(30), 429, "RATE_LIMITED", 30),
        (PeerNotFound("@nobody"), 404, "PEER_NOT_FOUND", None),
        (PeerPrivate("@secret"), 403, "PEER_PRIVATE", None),
        (TelegramError("CHAT_ADMIN_REQUIRED"), 502, "TELEGRAM_ERROR", None),
        (NoAccountAvailable(), 503, "NO_ACCOUNT_AVAILABLE", None),
    ],
)
async def test_domain_errors_map_to_the_contract(
    api: Api, error: Exception, status: int, code: str, retry_after: int | None
) -> None:
    api.pool.error = error
    answer = await api.call("GET", "/api/v1/peer?peer=news")
    body = assert_error(answer, status, code)
    assert body.get("retry_after") == retry_after
    assert answer.headers.get("Retry-After") == (None if retry_after is None else str(retry_after))


@pytest.mark.parametrize(
    ("argument", "uri", "param"),
    [
        ("ref", "/api/v1/participants?peer=someone", "peer"),
        ("q", "/api/v1/search?q=ab", "q"),
        ("max_id", "/api/v1/messages?peer=news&max_id=9", "max_id"),
    ],
)
async def test_an_argument_the_model_refuses_is_400_naming_the_parameter(
    api: Api, argument: str, uri: str, param: str
) -> None:
    # The model names its own method's argument; the answer names the API's parameter.
    api.pool.error = InvalidArgument(argument, "Telegram refused it (SOME_ERROR)")
    error = assert_error(await api.call("GET", uri), 400, "INVALID_PARAM")
    assert error["param"] == param
    assert error["message"] == f"{param}: Telegram refused it (SOME_ERROR)"


async def test_each_failed_request_is_logged_once_naming_its_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.startswith("service.")]

    with caplog.at_level(logging.DEBUG, logger="service"):
        await api.call("GET", "/api/v1/messages?peer=news&limit=0")
        (bad_param,) = lines()
        caplog.clear()
        api.pool.error = PeerNotFound("@nobody")
        await api.call("GET", "/api/v1/peer?peer=nobody")
        (not_found,) = lines()
        caplog.clear()
        _unauthorized(await api.raw("GET", "/api/v1/accounts"))
        (unsigned,) = lines()
    assert bad_param.levelno == logging.INFO and bad_param.name == "service.metrics"
    assert "GET /api/v1/messages 400" in bad_param.getMessage()
    assert "INVALID_PARAM limit: must be from 1 to 100" in bad_param.getMessage()
    assert "404" in not_found.getMessage() and "PEER_NOT_FOUND" in not_found.getMessage()
    assert "401" in unsigned.getMessage() and "UNAUTHORIZED" in unsigned.getMessage()


async def test_unexpected_error_is_500_without_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api.pool.error = RuntimeError("secret detail at /srv/x.py line 3")
    with caplog.at_level(logging.ERROR, logger="service.handler"):
        answer = await api.call("GET", "/api/v1/peer?peer=news")
    assert answer.status == 500 and answer.error == {
        "code": "INTERNAL",
        "message": "internal error",
    }
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)


async def test_draining(api: Api) -> None:
    api.lifecycle.draining = True  # as start.py does when a stop begins
    assert_error(await api.call("GET", "/api/v1/accounts"), 503, "SHUTTING_DOWN")
    _unauthorized(await api.raw("GET", "/api/v1/accounts"))
    health = await api.raw("GET", "/healthz")
    assert health.code == 503 and orjson.loads(health.body)["status"] == "shutting_down"
    api.lifecycle.draining = False
    assert (await api.call("GET", "/api/v1/accounts")).ok


# --- body limits (after tornado's BodyLimitsTest) ----------------------------------------


def _post_body(size: int) -> bytes:
    body = orjson.dumps({"peer": "news"})
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def test_body_at_the_limit_is_served(api: Api) -> None:
    body = _post_body(MAX_BODY)
    headers = Signer(TOKEN).sign("POST", "/api/v1/subscriptions", body)
    response = await api.raw("POST", "/api/v1/subscriptions", headers, body)
    assert response.code == 200


async def test_body_over_the_limit_is_413(api: Api) -> None:
    body = _post_body(MAX_BODY + 1)
    headers = Signer(TOKEN).sign("POST", "/api/v1/subscriptions", body)
    response = await api.raw("POST", "/api/v1/subscriptions", headers, body)
    assert response.code == 413
    plain = Cipher.create(api.cipher, KEY).decrypt(response.body, headers["X-Nonce"].encode())
    assert orjson.loads(plain)["error"]["code"] == "BODY_TOO_LARGE"
    assert api.subscriptions.calls == []


async def test_oversized_unsigned_body_is_401(api: Api) -> None:
    _unauthorized(await api.raw("POST", "/api/v1/subscriptions", {}, b"x" * (MAX_BODY + 1)))


async def test_huge_announced_body_is_refused_without_reading_it(api: Api) -> None:
    # Announce 1 GB, send nothing: the answer must come at once, then the connection closes.
    headers = Signer(TOKEN).sign("POST", "/api/v1/subscriptions", b"")
    host, port = api.url.removeprefix("http://").split(":")
    stream = IOStream(socket.socket())
    await stream.connect((host, int(port)))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    await stream.write(
        f"POST /api/v1/subscriptions HTTP/1.1\r\nHost: x\r\nContent-Length: {2**30}\r\n{head}\r\n".encode()
    )
    data = await stream.read_until_close()
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.count(b"HTTP/1.1") == 1  # nothing after our answer


def _assert_413(api: Api, response: HTTPResponse, nonce: str) -> None:
    assert response.code == 413
    assert response.headers["X-Encryption"] == api.cipher
    plain = orjson.loads(Cipher.create(api.cipher, KEY).decrypt(response.body, nonce.encode()))
    assert plain["ok"] is False and plain["error"]["code"] == "BODY_TOO_LARGE"
    assert api.subscriptions.calls == []


async def _post_chunked(api: Api, body: bytes, url: str | None = None) -> HTTPResponse:
    """POST with Transfer-Encoding: chunked (a body producer, no Content-Length): the whole
    body goes as one chunk."""
    headers = Signer(TOKEN).sign("POST", "/api/v1/subscriptions", body)

    async def producer(write: Callable[[bytes], Awaitable[None]]) -> None:
        await write(body)

    request = HTTPRequest(
        (url or api.url) + "/api/v1/subscriptions",
        method="POST",
        headers=headers,
        body_producer=producer,
    )
    response = await api.http.fetch(request, raise_error=False)
    assert "Content-Length" not in response.request.headers
    return response


async def test_chunked_body_at_the_limit_is_served(api: Api) -> None:
    response = await _post_chunked(api, _post_body(MAX_BODY))
    assert response.code == 200 and len(api.subscriptions.calls) == 1


async def test_chunked_body_over_the_limit_is_the_contracts_413(api: Api) -> None:
    body = _post_body(MAX_BODY * 3)
    response = await _post_chunked(api, body)
    _assert_413(api, response, response.request.headers["X-Nonce"])
    assert response.headers["Connection"] == "close"
    # One byte over is enough.
    response = await _post_chunked(api, _post_body(MAX_BODY + 1))
    _assert_413(api, response, response.request.headers["X-Nonce"])


async def _raw_chunked(api: Api, chunks: list[bytes], body: bytes) -> bytes:
    """Sends `chunks` (already framed) after signed headers on a raw socket; returns all
    the server wrote until it closed the connection."""
    headers = Signer(TOKEN).sign("POST", "/api/v1/subscriptions", body)
    host, port = api.url.removeprefix("http://").split(":")
    stream = IOStream(socket.socket())
    await stream.connect((host, int(port)))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    await stream.write(
        "POST /api/v1/subscriptions HTTP/1.1\r\nHost: x\r\n"
        f"Transfer-Encoding: chunked\r\n{head}\r\n".encode()
    )
    try:
        for chunk in chunks:
            await stream.write(chunk)
    except StreamClosedError:
        pass  # the server answered and closed before taking it all
    return await stream.read_until_close()


@pytest.mark.parametrize("size", [MAX_BODY * 3, 2 * outer_body_limit(MAX_BODY)])
async def test_many_small_chunks_over_the_limit_get_one_413_then_close(
    api: Api, size: int
) -> None:
    # The larger size goes on past Tornado's own limit: the connection must close after
    # the 413 before Tornado's reading reaches it, or its 400 would follow the answer.
    body = _post_body(size)
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    framed = [b"%x\r\n%s\r\n" % (len(c), c) for c in pieces] + [b"0\r\n\r\n"]
    data = await _raw_chunked(api, [b"".join(framed)], body)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.count(b"HTTP/1.1") == 1  # no 400 of Tornado's behind it
    assert b"\r\nConnection: close\r\n" in data.split(b"\r\n\r\n")[0] + b"\r\n"
    assert api.subscriptions.calls == []


async def test_a_chunk_announced_over_the_outer_guard_gets_tornados_400(api: Api) -> None:
    # The documented limit of the count: Tornado refuses a chunk header announcing more
    # than its own limit before any byte of it reaches the handler.
    size = outer_body_limit(MAX_BODY) + 1
    data = await _raw_chunked(api, [b"%x\r\n" % size, b"x" * 100], b"")
    assert data.startswith(b"HTTP/1.1 400 ") and api.subscriptions.calls == []


async def test_the_limit_holds_on_a_server_built_without_make_server(api: Api) -> None:
    from tornado.httpserver import HTTPServer

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(api.app)  # Tornado's default limit: 100 MB
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        response = await _post_chunked(api, _post_body(MAX_BODY * 3), url)
    finally:
        server.stop()
        await server.close_all_connections()
    _assert_413(api, response, response.request.headers["X-Nonce"])


# --- health and metrics -----------------------------------------------------------------


async def test_healthz(api: Api) -> None:
    ok = await api.raw("GET", "/healthz")
    assert ok.code == 200 and orjson.loads(ok.body) == {"ok": True, "status": "ok"}
    api.pool.is_usable = False
    down = await api.raw("GET", "/healthz")
    assert down.code == 503 and orjson.loads(down.body)["status"] == "no_usable_account"


async def test_unknown_plain_path_is_json_404(api: Api) -> None:
    response = await api.raw("GET", "/nope")
    assert response.code == 404 and orjson.loads(response.body)["error"]["code"] == "NOT_FOUND"


async def test_metrics_count_requests_by_route_and_status(api: Api) -> None:
    await api.call("GET", "/api/v1/accounts")
    await api.call("GET", "/api/v1/accounts")
    await api.raw("GET", "/api/v1/accounts")
    await api.call("GET", "/api/v1/media/" + "0" * 32)
    await api.raw("BREW", "/api/v1/accounts")
    text = (await api.raw("GET", "/metrics")).body.decode()
    assert 'tgc_http_requests_total{method="GET",route="/api/v1/accounts",status="200"} 2.0' in text
    assert 'tgc_http_requests_total{method="GET",route="/api/v1/accounts",status="401"} 1.0' in text
    assert (
        'tgc_http_requests_total{method="GET",route="/api/v1/media/{key}",status="404"} 1.0' in text
    )
    assert (
        'tgc_http_request_duration_seconds_count{method="GET",route="/api/v1/accounts"} 3.0' in text
    )
