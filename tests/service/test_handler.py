"""service/handler.py over real HTTP on loopback: the routes, /healthz and /metrics, with
the fakes of tests/fixtures/handler_app.py. The request path every route shares (signature,
body bound, errors) is test_basehandler.py's. Against the emulator: test_handler_emulator.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from common.errors import AlreadySubscribed, NotSubscribed
from common.utils import PeerRef
from service.cryptor import Cipher, Signer
from tests.fixtures.handler_app import (
    CIPHERS,
    KEY,
    MARKED,
    TOKEN,
    Api,
    FakeJoinMap,
    assert_error,
    serving_api,
)


@pytest.fixture(params=CIPHERS)
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    async with serving_api(request.param) as api:
        yield api


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


async def test_search_in_a_chat_pages_and_counts(api: Api) -> None:
    uri = "/api/v1/messages/search?peer=news&q=%20word%20&from=@alice&filter=photo&limit=20"
    first = await api.call("GET", uri)
    assert first.ok and first.data["count"] == 45 and first.data["next_offset_id"] == 26
    assert [m["id"] for m in first.data["messages"]] == list(range(45, 25, -1))
    assert api.pool.account.calls[-1] == (
        "search_messages", PeerRef("news", username="news"), "word",
        PeerRef("@alice", username="alice"), "photo", 20, 0,
    )  # fmt: skip
    last = await api.call("GET", uri + "&offset_id=6")
    assert [m["id"] for m in last.data["messages"]] == [5, 4, 3, 2, 1]
    assert last.data["next_offset_id"] is None
    by_kind = await api.call("GET", "/api/v1/messages/search?peer=news&filter=voice")
    assert by_kind.ok and api.pool.account.calls[-1][2:5] == ("", None, "voice")


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
        ("/api/v1/replies?peer=news", "msg_id"),
        ("/api/v1/replies?peer=news&msg_id=", "msg_id"),
        ("/api/v1/replies?peer=news&msg_id=0", "msg_id"),
        ("/api/v1/replies?peer=news&msg_id=2147483648", "msg_id"),
        ("/api/v1/replies?msg_id=3", "peer"),
        ("/api/v1/replies?peer=news&msg_id=3&limit=101", "limit"),
        ("/api/v1/replies?peer=news&msg_id=3&offset_id=-1", "offset_id"),
        ("/api/v1/replies?peer=news&msg_id=3&min_id=1", "min_id"),
        ("/api/v1/search", "q"),
        ("/api/v1/search?q=%20", "q"),
        ("/api/v1/search?q=&limit=", "q"),
        ("/api/v1/accounts?x=", "x"),
        ("/api/v1/search?q=" + "a" * 129, "q"),
        ("/api/v1/search?q=x&limit=0", "limit"),
        ("/api/v1/accounts?x=1", "x"),
        ("/api/v1/subscriptions?peer=news", "peer"),
        ("/api/v1/media/" + "0" * 32 + "?a=1", "a"),
        ("/api/v1/messages?peer=news&since=monday", "since"),
        ("/api/v1/messages?peer=news&until=2024-02-30", "until"),
        ("/api/v1/messages?peer=news&since=2024-05-02&until=2024-05-01T23:59:59Z", "until"),
        ("/api/v1/messages?peer=news&ids=1&since=2024-05-01", "since"),
        ("/api/v1/messages/search?peer=news", "q"),
        ("/api/v1/messages/search?peer=news&q=%20&offset_id=5", "q"),
        ("/api/v1/messages/search?peer=news&q=" + "a" * 129, "q"),
        ("/api/v1/messages/search?peer=news&filter=photos", "filter"),
        ("/api/v1/messages/search?peer=news&from=a%20b", "from"),
        ("/api/v1/messages/search?peer=news&from=t.me/%2BAbCdEfGh12", "from"),
        ("/api/v1/messages/search?peer=news&q=x&limit=101", "limit"),
        ("/api/v1/messages/search?peer=news&q=x&offset_id=x", "offset_id"),
        ("/api/v1/messages/search?peer=news&q=x&min_id=1", "min_id"),
        ("/api/v1/messages/search?q=x", "peer"),
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


async def test_post_query_and_body_naming_different_peers_is_refused(api: Api) -> None:
    error = assert_error(
        await api.call("POST", "/api/v1/subscriptions?peer=other", {"peer": "news"}),
        400,
        "INVALID_PARAM",
    )
    assert error["param"] == "peer" and "different peers" in error["message"]
    assert api.subscriptions.calls == []


@pytest.mark.parametrize(
    ("uri", "body"),
    [
        ("/api/v1/subscriptions?peer=%40news", None),  # the query only, no body at all
        ("/api/v1/subscriptions?peer=news", {}),
        ("/api/v1/subscriptions?peer=t.me%2FNews", {"peer": "@news"}),  # both, agreeing
        ("/api/v1/subscriptions?peer=", {"peer": "news"}),  # empty: as if absent
    ],
)
async def test_post_may_carry_the_peer_in_its_query(
    api: Api, uri: str, body: dict[str, str] | None
) -> None:
    """CONTRACT section 1: so that a proxy in front of several servers can route by it."""
    joined = await api.call("POST", uri, body)
    assert joined.ok, joined
    assert [(c, p.username) for c, p in api.subscriptions.calls] == [("subscribe", "news")]


@pytest.mark.parametrize(
    ("uri", "body", "param"),
    [
        ("/api/v1/subscriptions?peer=123", {"peer": "news"}, "peer"),  # an id, a username
        ("/api/v1/subscriptions?peer=-100123", {"peer": 123}, "peer"),  # a user maybe
        ("/api/v1/subscriptions?peer=news&peer=news", None, "peer"),
        ("/api/v1/subscriptions?peer=news&limit=1", None, "limit"),
        ("/api/v1/subscriptions?peer=a%20b", None, "peer"),
        ("/api/v1/subscriptions?peer=%FF", None, "peer"),
        ("/api/v1/subscriptions?peer=", None, "body"),  # nothing routed: the body is needed
    ],
)
async def test_bad_post_queries_are_named(
    api: Api, uri: str, body: dict[str, Any] | None, param: str
) -> None:
    error = assert_error(await api.call("POST", uri, body), 400, "INVALID_PARAM")
    assert error["param"] == param and api.subscriptions.calls == []


async def test_subscriptions_without_the_service(api: Api) -> None:
    api.app.settings["tgc_subscriptions"] = None
    assert_error(
        await api.call("POST", "/api/v1/subscriptions", {"peer": "news"}), 503, "UNAVAILABLE"
    )
    assert (await api.call("GET", "/api/v1/subscriptions")).ok


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


# --- hostile requests outside /api/v1 ---------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/status", "/nope"])
@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary=xyz", "Multipart/Mixed"],
)
async def test_a_multipart_header_outside_the_api_is_400_not_500(
    api: Api, path: str, content_type: str
) -> None:
    # Tornado used to parse it as a form (no body: no final boundary) and its 400 became
    # a 500 INTERNAL: a false server error for health probes and the metrics.
    response = await api.raw("GET", path, {"Content-Type": content_type})
    assert response.code == 400
    assert orjson.loads(response.body)["error"] == {
        "code": "INVALID_PARAM",
        "param": "body",
        "message": "body: a multipart Content-Type announces a body: none here",
    }
    text = (await api.raw("GET", "/metrics")).body.decode()
    route = {"/nope": "unmatched"}.get(path, path)
    assert f'method="GET",route="{route}",status="400"}} 1.0' in text
    assert 'status="5' not in text  # no server error counted
    # The same request without the header is served as before.
    assert (await api.raw("GET", path)).code in (200, 403, 404)
