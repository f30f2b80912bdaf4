"""service/basehandler.py over real HTTP on loopback: the signed and encrypted request, the
one error→HTTP mapping, draining and the body limits, through the app of service/handler.py
with the fakes of tests/fixtures/handler_app.py."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets

from common.errors import (
    FloodWait,
    InvalidArgument,
    InvalidParam,
    NoAccountAvailable,
    PeerNotFound,
    PeerPrivate,
    RateLimited,
    TelegramError,
)
from service.basehandler import date_param, outer_body_limit
from service.cryptor import Cipher, MemoryNonceStore, Signer
from tests.fixtures.handler_app import (
    CIPHERS,
    KEY,
    MAX_BODY,
    TOKEN,
    UNAUTHORIZED,
    Api,
    assert_error,
    serving_api,
)


@pytest.fixture(params=CIPHERS)
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    async with serving_api(request.param) as api:
        yield api


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
    api.app.settings["tgc_signer"] = Signer(TOKEN, nonces=MemoryNonceStore(max_live=1))
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
    # Future: a minute past the window, so that a slow request can't bring it back inside
    # (the window's exact edge is test_cryptor's, on a fake clock).
    ts = {"old": now - 301, "future": now + 360}.get(tamper)
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
    put = await api.call("PUT", "/api/v1/accounts", {})
    assert_error(put, 405, "METHOD_NOT_ALLOWED")
    assert put.headers["Allow"] == "GET"  # RFC 9110: a 405 says what the route serves
    post = await api.call("POST", "/api/v1/accounts", {})
    assert_error(post, 405, "METHOD_NOT_ALLOWED")
    assert post.headers["Allow"] == "GET"
    patch = await api.call("PATCH", "/api/v1/subscriptions", {})
    assert_error(patch, 405, "METHOD_NOT_ALLOWED")
    assert patch.headers["Allow"] == "GET, POST, DELETE"
    head = await api.raw("HEAD", "/api/v1/accounts", Signer(TOKEN).sign("HEAD", "/api/v1/accounts"))
    assert head.code == 405 and head.body == b"" and head.headers["Allow"] == "GET"
    # A method Tornado itself refuses never reaches the signature check: still just 401.
    _unauthorized(
        await api.raw("BREW", "/api/v1/accounts", Signer(TOKEN).sign("BREW", "/api/v1/accounts"))
    )


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/status"])
@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "BREW"])
async def test_methods_not_served_outside_the_api_say_allow(api: Api, path: str, method: str) -> None:
    # BREW is refused by Tornado itself (not a method it knows): mapped the same way.
    response = await api.raw(method, path, body=b"{}" if method in ("POST", "PUT") else None)
    assert response.code == 405 and response.headers["Allow"] == "GET"
    assert orjson.loads(response.body)["error"]["code"] == "METHOD_NOT_ALLOWED"


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
    with caplog.at_level(logging.ERROR, logger="service.basehandler"):
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
async def test_many_small_chunks_over_the_limit_get_one_413_then_close(api: Api, size: int) -> None:
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


# --- date parameters ----------------------------------------------------------------------


@given(
    when=st.datetimes(
        min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
        timezones=st.timezones(),
    )
)  # fmt: skip
def test_a_date_param_reads_any_iso_8601_date_time(when: dt.datetime) -> None:
    expected = (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds()
    assert date_param({"since": when.isoformat()}, "since") == expected


def test_date_param_forms_and_refusals() -> None:
    def read(raw: str) -> float | None:
        return date_param({"until": raw}, "until")

    assert read("2024-05-01") == read("2024-05-01T00:00:00Z") == 1_714_521_600
    assert read("2024-05-01T02:00:00+02:00") == read("2024-05-01t00:00:00z") == 1_714_521_600
    assert read("2024-05-01T02:00:00 02:00") == 1_714_521_600  # a "+" the query made a space
    assert read("2016-12-31T23:59:60Z") == read("2017-01-01T00:00:00Z")  # the leap second
    assert date_param({}, "until") is None
    for bad in ("yesterday", "2024-13-01", "1714521600", "2024-05-01T25:00:00Z", ""):
        with pytest.raises(InvalidParam) as refused:
            read(bad)
        assert refused.value.param == "until"
