"""service/bodybudget.py, and the bodies service/basehandler.py admits through it, over raw
sockets against make_app/make_server: a quiet body is cut by the body timeout, the budget of
unverified bodies refuses the next one at once (429) and is whole again afterwards, a GET or
DELETE with a body is 413 unread, a body outside /api/v1 is 400 unread."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.bodybudget import BodyBudget, announced_body
from service.cryptor import Cipher, Signer
from tests.fixtures.handler_app import KEY, MAX_BODY, TOKEN, Api, serving_api
from tests.fixtures.wait import wait_for

CIPHER = "aes-256-gcm"

# --- the budget itself ------------------------------------------------------------------


def test_the_budget_bounds_bytes_and_bodies() -> None:
    budget = BodyBudget(max_bytes=1000, max_bodies=2)
    first = budget.admit(600)
    assert first is not None and (budget.bytes, budget.bodies) == (600, 1)
    assert budget.admit(500) is None  # 1100 bytes: over
    second = budget.admit(400)
    assert second is not None and (budget.bytes, budget.bodies) == (1000, 2)
    first.release()
    assert budget.admit(1) is not None  # a third body fits in bytes...
    assert budget.admit(1) is None  # ...but not a fourth: two bodies at most
    assert budget.refused == 2
    first.release()  # idempotent
    assert (budget.bytes, budget.bodies) == (401, 2)


def test_a_hold_grows_within_the_budget() -> None:
    budget = BodyBudget(max_bytes=1000, max_bodies=10)
    chunked = budget.admit(0)
    assert chunked is not None
    assert chunked.cover(700) and budget.bytes == 700
    assert chunked.cover(300)  # smaller than the hold: nothing to add
    other = budget.admit(300)
    assert other is not None
    assert not chunked.cover(701) and budget.bytes == 1000 and budget.refused == 1
    chunked.release()
    other.release()
    assert (budget.bytes, budget.bodies) == (0, 0)


def test_one_body_is_admitted_while_nothing_is_held_whatever_its_size() -> None:
    # A budget below server.max_body_bytes still serves, one such body at a time.
    budget = BodyBudget(max_bytes=1024, max_bodies=10)
    big = budget.admit(4096)
    assert big is not None and budget.admit(1) is None
    big.release()
    assert budget.admit(4096) is not None


@pytest.mark.parametrize(
    ("headers", "size"),
    [
        ({}, None),
        ({"Content-Length": "0"}, None),
        ({"Content-Length": "12"}, 12),
        ({"Transfer-Encoding": "chunked"}, 0),
        ({"Content-Length": "1, 1"}, 0),  # Tornado's to judge; not known yet
    ],
)
def test_announced_body(headers: dict[str, str], size: int | None) -> None:
    assert announced_body(headers) == size


# --- over raw sockets -------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _parse(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Answer(int(lines[0].split()[1]), headers, body)


class Conn:
    """A raw request: headers and part of a body sent; `answer()` reads until the server
    closes the connection, then closes it here too."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nonce: str
    ) -> None:
        self.reader, self.writer, self.nonce = reader, writer, nonce

    async def answer(self, within: float = 5.0) -> Answer:
        try:
            return _parse(await asyncio.wait_for(self.reader.read(), within))
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()


async def send(
    api: Api,
    method: str = "POST",
    uri: str = "/api/v1/subscriptions",
    *,
    length: int | None = MAX_BODY,
    chunked: bool = False,
    sent: bytes = b"x" * 100,
    genuine: bool = False,
    close: bool = False,
) -> Conn:
    """Headers announcing a body of `length` (or chunked), then `sent`, then quiet. The
    signature headers are well formed and fresh, the signature itself wrong (anyone can
    send that) unless `genuine` (signed over an empty body)."""
    headers = Signer(TOKEN).sign(method, uri, b"")
    if not genuine:
        headers["X-Signature"] = "0" * 64
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    elif length is not None:
        headers["Content-Length"] = str(length)
    if close:
        headers["Connection"] = "close"
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"{method} {uri} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + sent)
    await writer.drain()
    return Conn(reader, writer, headers["X-Nonce"])


def _error(api: Api, answer: Answer, nonce: str) -> dict[str, object]:
    plain = Cipher.create(api.cipher, KEY).decrypt(answer.body, nonce.encode())
    document = orjson.loads(plain)
    assert document["ok"] is False
    error: dict[str, object] = document["error"]
    return error


def budget_of(api: Api) -> BodyBudget:
    budget: BodyBudget = api.app.settings["tgc_body_budget"]
    return budget


async def _metric(api: Api, name: str) -> float:
    body = (await api.raw("GET", "/metrics")).body.decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


async def test_a_quiet_body_is_cut_by_the_body_timeout_and_gives_its_budget_back() -> None:
    async with serving_api(CIPHER, body_timeout=0.5) as api:
        budget = budget_of(api)
        conns = [await send(api) for _ in range(5)]
        await wait_for(lambda: budget.bodies == 5, within=5, what="5 bodies held")
        assert budget.bytes == 5 * MAX_BODY
        assert await _metric(api, "tgc_http_unverified_bodies") == 5
        t0 = time.monotonic()
        for conn in conns:
            # No answer to a body that never came: the connection just closes.
            assert await asyncio.wait_for(conn.reader.read(), 5) == b""
        assert time.monotonic() - t0 < 2.5
        await wait_for(lambda: (budget.bodies, budget.bytes) == (0, 0), within=2, what="released")
        for conn in conns:
            conn.close()
        assert api.subscriptions.calls == []


async def test_the_budget_refuses_the_next_body_at_once_and_is_whole_again_after() -> None:
    async with serving_api(CIPHER, unverified_bodies=3) as api:
        budget = budget_of(api)
        held = [await send(api) for _ in range(3)]
        await wait_for(lambda: budget.bodies == 3, within=5, what="3 bodies held")
        # The fourth, even a genuine one, is refused before a byte of its body is read.
        fourth = await send(api, genuine=True, sent=b"")
        answer = await fourth.answer()
        assert answer.status == 429 and answer.headers["Connection"] == "close"
        assert answer.headers["Retry-After"] == "10"  # the body timeout, default 10 s
        error = _error(api, answer, fourth.nonce)
        assert error["code"] == "RATE_LIMITED" and error["retry_after"] == 10
        # Requests without a body never meet the budget.
        assert (await api.call("GET", "/api/v1/accounts")).ok
        assert await _metric(api, "tgc_http_unverified_bodies_refused_total") == 1
        for conn in held:
            conn.close()
        await wait_for(lambda: (budget.bodies, budget.bytes) == (0, 0), within=5, what="released")
        assert (await api.call("POST", "/api/v1/subscriptions", {"peer": "news"})).ok
        assert budget.bodies == 0 and len(api.subscriptions.calls) == 1


async def test_the_budgets_bytes_refuse_a_body_and_a_chunked_one_mid_way() -> None:
    async with serving_api(CIPHER, unverified_body_bytes=2 * MAX_BODY) as api:
        budget = budget_of(api)
        held = [await send(api, length=MAX_BODY - 96) for _ in range(2)]
        await wait_for(lambda: budget.bodies == 2, within=5, what="2 bodies held")
        small = await send(api, length=200, sent=b"")  # 200 bytes more than the budget has
        answer = await small.answer()
        assert answer.status == 429 and _error(api, answer, small.nonce)["code"] == "RATE_LIMITED"
        # A chunked body is admitted (its size unknown), and refused once its chunks pass
        # what the budget has left: the 429 comes mid-body, and the connection closes.
        chunk = b"y" * 300  # 192 bytes are left
        chunked = await send(api, chunked=True, sent=b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = await chunked.answer()
        assert answer.status == 429 and answer.headers["Connection"] == "close"
        assert _error(api, answer, chunked.nonce)["code"] == "RATE_LIMITED"
        for conn in held:
            conn.close()
        await wait_for(lambda: (budget.bodies, budget.bytes) == (0, 0), within=5, what="released")


async def test_a_body_whose_signature_was_checked_leaves_the_budget() -> None:
    async with serving_api(CIPHER, unverified_bodies=1) as api:
        budget = budget_of(api)
        for _ in range(3):  # one at a time: each gives its place back once checked
            assert (await api.call("POST", "/api/v1/subscriptions", {"peer": "news"})).ok
            assert (budget.bodies, budget.bytes) == (0, 0)
        wrong = await send(api, length=3, sent=b"abc", close=True)  # whole, wrongly signed
        assert (await wrong.answer()).status == 401
        assert (budget.bodies, budget.bytes) == (0, 0)


@pytest.mark.parametrize(
    ("method", "uri"),
    [("GET", "/api/v1/accounts"), ("DELETE", "/api/v1/subscriptions?peer=news")],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_a_get_or_delete_with_a_body_is_413_unread(method: str, uri: str, chunked: bool) -> None:
    async with serving_api(CIPHER) as api:
        # A gigabyte announced, nothing sent: the answer comes at once, then the close.
        conn = await send(api, method, uri, length=2**30, chunked=chunked, sent=b"", genuine=True)
        answer = await conn.answer()
        assert answer.status == 413 and answer.headers["Connection"] == "close"
        error = _error(api, answer, conn.nonce)
        assert error["code"] == "BODY_TOO_LARGE"
        assert error["message"] == f"a {method} request takes no body"
        assert budget_of(api).refused == 0 and api.subscriptions.calls == []
        # Without a body (or with an empty one) the same request is served.
        empty = await send(api, method, uri, length=0, sent=b"", genuine=True, close=True)
        assert (await empty.answer()).status == 200


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/status", "/nope"])
async def test_a_body_outside_the_api_is_400_unread(path: str) -> None:
    async with serving_api(CIPHER) as api:
        conn = await send(api, "GET", path, length=2**30, sent=b"")
        answer = await conn.answer()
        assert answer.status == 400 and "X-Encryption" not in answer.headers
        assert orjson.loads(answer.body)["error"] == {
            "code": "INVALID_PARAM",
            "param": "body",
            "message": "body: this route takes no body",
        }
