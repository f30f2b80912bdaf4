"""Three `start.py serve` processes behind a real nginx on the shipped template
(docs/deploy/nginx-tgc.conf, rendered by tests/fixtures/nginx_front.py), as docs/DEPLOY.md runs
them: each process with its own session (one account of the demo world each), its own
data.dir, one storage server (nginx WebDAV with docs/deploy/storage-nginx.conf) and one
RabbitMQ exchange for all; the emulator (two DCs) in this process.

What is checked, from the outside (the API through the front, each process's own port, the
front's access log naming the process that answered, the emulator's getFile calls, the
storage's files and access log, the one queue):
- a peer's requests stick to one process, whatever its spelling (@name, name, t.me/name)
  and the method (GET, POST with `peer` in the query, DELETE); peers spread over all three;
  a replayed request lands where its nonce was seen (401);
- the same file reached through two processes is downloaded once (the getFile calls of
  one download) and stored once (one PUT): the second process asks the storage first;
  both processes' events arrive on the one exchange;
- a media record is found through the front whichever process holds it (a 404 goes on);
- a process stopped (SIGTERM) mid-run: every request of a steady load still answers 200,
  the stopped process's peers are served by one other process each, the others' stay put.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from telethon.tl import functions, types
from tornado.httpclient import AsyncHTTPClient

from model.downloader import part_count
from service.apiclient import ApiClient, ApiResponse
from service.cryptor import Signer
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import World
from tests.fixtures.nginx import Nginx
from tests.fixtures.nginx_front import NginxFront
from tests.fixtures.rabbitmq import Rabbit
from tests.fixtures.server_config import AES_KEY, TOKEN, write_config
from tests.fixtures.server_process import ServeProcess
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.slow

# A 1.3 MB document in the media channel: three 512 KB parts.
SHARED_DOC = 6301
SHARED_SIZE = 1_300_000
SHARED_MSG = 40
PART_SIZE = 512 * 1024
ACCOUNTS = (dw.ACCOUNT_A, dw.ACCOUNT_B, dw.ACCOUNT_C)
# Public peers of the demo world every account can see, in the spelling the load uses.
PEERS = ["@tgc_news", "@tgc_media", "@tgc_chat", "@alice_w", "@bob_builder", "@helper_bot"]


class GetFileCounter:
    """Wraps the emulator's dispatcher: counts upload.getFile by document id and account."""

    def __init__(self, rpc: TelegramRpc) -> None:
        self.rpc = rpc
        self.calls: Counter[tuple[int, int | None]] = Counter()

    async def __call__(self, ctx: Any, request: Any) -> Any:
        if isinstance(request, functions.upload.GetFileRequest) and isinstance(
            request.location, types.InputDocumentFileLocation
        ):
            self.calls[(request.location.id, ctx.user_id)] += 1
        return await self.rpc(ctx, request)

    def of(self, doc_id: int) -> Counter[int | None]:
        return Counter({user: n for (doc, user), n in self.calls.items() if doc == doc_id})


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    data = dw.demo_dict()
    data["documents"].append(
        {"id": SHARED_DOC, "kind": "file", "size": SHARED_SIZE, "file_name": "shared.pdf",
         "mime_type": "application/pdf"}
    )  # fmt: skip
    data["messages"].append(
        {"chat": dw.MEDIA, "id": SHARED_MSG, "text": "shared", "media": {"document": SHARED_DOC}}
    )
    return TelegramRpc(World.from_dict(data))


@pytest.fixture
def getfiles(fake_telegram: FakeTelegram) -> GetFileCounter:
    rpc = fake_telegram.dispatcher
    assert isinstance(rpc, TelegramRpc)
    counter = GetFileCounter(rpc)
    fake_telegram.dispatcher = counter  # the cluster reads it per request
    return counter


@dataclass
class Fleet:
    front: NginxFront
    servers: list[ServeProcess]
    urls: list[str]  # http://127.0.0.1:PORT of each process
    api: ApiClient  # through the front

    def address(self, i: int) -> str:
        return self.urls[i].removeprefix("http://")

    def index(self, address: str) -> int:
        return [self.address(i) for i in range(len(self.urls))].index(address)

    def direct(self, i: int) -> ApiClient:
        return ApiClient(self.urls[i], TOKEN, AES_KEY)

    async def logged(self, n: int) -> None:
        """Waits until the front's access log has `n` lines: nginx writes a request's line
        after its answer went out, so the client can be ahead of the log."""
        await wait_for(lambda: len(self.front.routed()) >= n, within=10, what=f"{n} log lines")

    def owners(self, since: int = 0) -> dict[str, set[str]]:
        """Route key → the processes that answered its requests (front log from `since`)."""
        out: dict[str, set[str]] = defaultdict(set)
        for line in self.front.routed()[since:]:
            out[line.route].add(line.answered_by)
        return out


@pytest.fixture
async def fleet(
    tmp_path: Path,
    fake_telegram: FakeTelegram,
    getfiles: GetFileCounter,
    nginx_dav_put_once: Nginx,
    rabbit: Rabbit,
) -> AsyncIterator[Fleet]:
    servers = []
    for i, user_id in enumerate(ACCOUNTS):
        home = tmp_path / f"p{i}"
        # docs/DEPLOY.md: a session in one process only; a data.dir of its own.
        fake_telegram.make_session(home / "sessions" / f"acc{user_id}", user_id)
        props = {
            "media.part_size": "512K",
            "storage.url": nginx_dav_put_once.base_url,
            "storage.timeout": "10",
            "storage.retry_max_delay": "1",
            "rabbitmq.url": rabbit.url,
            "rabbitmq.exchange": rabbit.exchange,
            "rabbitmq.queue": rabbit.queue,
            "telegram.resolve_per_minute": "100",
        }
        servers.append(ServeProcess(write_config(home, props)))
    front: NginxFront | None = None
    try:
        urls = list(await asyncio.gather(*(s.start() for s in servers)))
        front = NginxFront(tmp_path / "front", [u.removeprefix("http://") for u in urls])
        front.start()
        async with ApiClient(front.base_url, TOKEN, AES_KEY) as api:
            yield Fleet(front, servers, urls, api)
    finally:
        if front is not None:
            front.stop()
        for s in servers:
            if s.proc is not None and s.proc.returncode is None:
                s.proc.kill()
                await s.proc.wait()


async def ok(api: ApiClient, method: str, uri: str, body: dict[str, Any] | None = None) -> Any:
    answer: ApiResponse = await api.request(method, uri, body)
    assert answer.ok, (method, uri, answer)
    return answer.data


@pytest.mark.parametrize(
    ("spellings", "route"),
    [
        (["@tgc_news", "%40tgc_news", "tgc_news", "t.me/tgc_news", "t.me%2ftgc_news",
          "https%3A%2F%2Ft.me%2Fs%2Ftgc_news%2F15", "https://telegram.me/tgc_news/3",
          "www.t.me/tgc_news"], "tgc_news"),
        (["-1000000002001"], "-1000000002001"),
        (["t.me/+SmAlLgRoUp0004"], "t.me/+SmAlLgRoUp0004"),
    ],
)  # fmt: skip
def test_the_template_routes_a_peers_spellings_alike(
    tmp_path: Path, spellings: list[str], route: str
) -> None:
    """The template's map, without tgc behind it (nginx answers 502, and logs the key)."""
    front = NginxFront(tmp_path, ["127.0.0.1:9", "127.0.0.1:10"])
    front.start()
    try:
        for spelling in spellings:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{front.base_url}/api/v1/peer?peer={spelling}", timeout=5)
        deadline = time.monotonic() + 5  # nginx logs a request after answering it
        while len(front.routed()) < len(spellings) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {line.route for line in front.routed()} == {route}
        assert len(front.routed()) == len(spellings)
    finally:
        front.stop()


@pytest.mark.timeout(120)
async def test_a_peers_requests_stick_to_one_process_and_peers_spread(fleet: Fleet) -> None:
    api = fleet.api
    for peer in PEERS:
        name = peer.removeprefix("@")
        for spelling in (peer, name, f"t.me/{name}", f"https://t.me/s/{name}"):
            await ok(api, "GET", f"/api/v1/peer?peer={spelling}")
        await ok(api, "GET", f"/api/v1/messages?peer={name}&limit=3")
    # Subscriptions: the POST carries the peer in its query (docs/API.md), so it routes too.
    joined = await ok(api, "POST", "/api/v1/subscriptions?peer=@tgc_news")
    left = await ok(api, "DELETE", "/api/v1/subscriptions?peer=tgc_news")
    assert joined["state"] == "joined" and left["state"] == "left"
    # Many peers (members of the demo world's crowd) spread over every process.
    crowd = [f"member_{i:03d}" for i in range(24)]
    for name in crowd:
        await ok(api, "GET", f"/api/v1/peer?peer={name}")

    await fleet.logged(len(PEERS) * 5 + 2 + len(crowd))
    owners = fleet.owners()
    for peer in PEERS:
        name = peer.removeprefix("@")
        assert len(owners[name]) == 1, (peer, owners[name])
    requests_per_route = Counter(line.route for line in fleet.front.routed())
    assert requests_per_route["tgc_news"] == 5 + 2  # every spelling, the POST, the DELETE
    assert {next(iter(owners[name])) for name in crowd} == {
        fleet.address(i) for i in range(3)
    }, "24 peers, yet not every process serves some"
    assert all(line.status == 200 for line in fleet.front.routed())

    # A replayed request lands where its nonce was seen, and is refused there.
    uri = "/api/v1/peer?peer=%40tgc_chat"
    headers = Signer(TOKEN).sign("GET", uri, b"")
    http = AsyncHTTPClient(force_instance=True)
    try:
        codes = [
            (await http.fetch(fleet.front.base_url + uri, headers=headers, raise_error=False)).code
            for _ in range(2)
        ]
    finally:
        http.close()
    assert codes == [200, 401]
    await fleet.logged(len(PEERS) * 5 + 2 + len(crowd) + 2)
    replays = [line for line in fleet.front.routed() if line.request.split()[1] == uri]
    assert len({line.answered_by for line in replays}) == 1


@pytest.mark.timeout(120)
async def test_a_file_reached_through_two_processes_is_downloaded_and_stored_once(
    fleet: Fleet, getfiles: GetFileCounter, nginx_dav_put_once: Nginx, rabbit: Rabbit
) -> None:
    uri = f"/api/v1/messages?peer=@tgc_media&ids={SHARED_MSG}"
    async with rabbit.consumer() as consumer:
        first = await ok(fleet.api, "GET", uri)
        key = first["messages"][0]["media"]["key"]
        # The media record through the front: a 404 from a process that never saw the key
        # goes on to the next, until the one that holds it answers.
        await wait_for(
            lambda: _stored(fleet.api, key), within=30, what="stored via process 1", step=0.1
        )
        line = next(r for r in fleet.front.routed() if f"ids={SHARED_MSG}" in r.request)
        holder = fleet.index(line.answered_by)
        other = (holder + 1) % 3

        # The same message asked of another process directly: it asks the storage first.
        async with fleet.direct(other) as direct, fleet.direct(holder) as at_holder:
            second = await ok(direct, "GET", uri)
            assert second["messages"][0]["media"]["key"] == key
            await wait_for(
                lambda: _stored(direct, key), within=30, what="stored via process 2", step=0.1
            )
            record = await ok(direct, "GET", f"/api/v1/media/{key}")
            assert record["url"] == (await ok(at_holder, "GET", f"/api/v1/media/{key}"))["url"]
        # Both processes publish media.stored to the one exchange: one message id (the
        # same message's file), from two accounts, for consumers to drop as duplicates.
        await consumer.wait_until(
            lambda c: {m.body.get("account") for m in c.messages if key in m.message_id}
            >= {f"acc{ACCOUNTS[holder]}", f"acc{ACCOUNTS[other]}"},
            within=30,
        )

    # /metrics of each process (its own port): which one found it in the storage.
    found = [await _found_in_storage(url) for url in fleet.urls]
    assert found[other] == 1 and found[holder] == 0, found

    parts = part_count(SHARED_SIZE, PART_SIZE)
    assert getfiles.of(SHARED_DOC) == Counter({ACCOUNTS[holder]: parts})  # one download
    puts = await nginx_dav_put_once.logged(f'"PUT /{key[:2]}/{key}', 1)
    assert len(puts) == 1 and ('" 201 ' in puts[0]), puts
    heads = await nginx_dav_put_once.logged(f'"HEAD /{key[:2]}/{key}', 2)
    assert len(heads) == 2, heads  # each process asked once before its download was due
    assert [p.name for p in nginx_dav_put_once.files()] == [f"{key}.pdf"]


async def _found_in_storage(url: str) -> float:
    http = AsyncHTTPClient(force_instance=True)
    try:
        text = (await http.fetch(url + "/metrics")).body.decode()
    finally:
        http.close()
    (line,) = [x for x in text.splitlines() if x.startswith("tgc_media_found_in_storage_total ")]
    return float(line.split()[1])


async def _stored(api: ApiClient, key: str) -> bool:
    answer = await api.request("GET", f"/api/v1/media/{key}")
    assert answer.ok or answer.status == 404, answer
    return answer.ok and answer.data["state"] == "stored"


@pytest.mark.timeout(120)
async def test_a_process_stopped_mid_run_has_its_peers_served_by_the_next(fleet: Fleet) -> None:
    api = fleet.api
    for peer in PEERS:
        await ok(api, "GET", f"/api/v1/messages?peer={peer}&limit=3")
    await fleet.logged(len(PEERS))
    before = {route: next(iter(ups)) for route, ups in fleet.owners().items()}
    names = [p.removeprefix("@") for p in PEERS]
    load = Counter(before[name] for name in names)
    victim_address = load.most_common(1)[0][0]
    victim = fleet.index(victim_address)
    moved = [n for n in names if before[n] == victim_address]

    failures: list[Any] = []
    answered = 0
    stop_load = asyncio.Event()

    async def worker(offset: int) -> None:
        nonlocal answered
        i = offset
        while not stop_load.is_set():
            peer = PEERS[i % len(PEERS)]
            i += 1
            try:
                answer = await api.request("GET", f"/api/v1/messages?peer={peer}&limit=3")
            except OSError as e:
                failures.append((peer, repr(e)))
                continue
            if not answer.ok:
                failures.append((peer, answer.status, answer.error))
            answered += 1

    workers = [asyncio.ensure_future(worker(k)) for k in range(4)]
    try:
        await wait_for(lambda: answered >= 20, within=30, what="the load running")
        # Lines from here on are the requests sent after it (or in flight then).
        stopped_at = len(fleet.front.routed())
        started = time.monotonic()
        await fleet.servers[victim].stop()  # SIGTERM: drains, exits 0
        stop_took = time.monotonic() - started
        after_stop = answered
        await wait_for(lambda: answered >= after_stop + 40, within=30, what="load after stop")
    finally:
        stop_load.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(*workers)
    assert failures == [], failures[:5]

    await fleet.logged(len(PEERS) + answered)
    after = fleet.owners(since=stopped_at)
    log = fleet.front.routed()[stopped_at:]
    late = [line for line in log if victim_address not in line.upstreams]
    assert late, "nothing was answered after the stop"
    late_owners: dict[str, set[str]] = defaultdict(set)
    for line in late:
        late_owners[line.route].add(line.answered_by)
    for name in names:
        assert victim_address not in late_owners[name], name
        assert len(late_owners[name]) == 1, (name, late_owners[name])  # one next process
        if name not in moved:
            assert late_owners[name] == {before[name]}, name  # the others stay where they were
    assert after  # the log after the stop was read
    assert stop_took < 20
