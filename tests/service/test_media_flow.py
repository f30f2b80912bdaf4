"""The media flow end to end, with every real part: the DC emulator (two DCs) behind real
TeleClients, model.downloader.download_media, the processor, and nginx WebDAV.

A history page of the demo world's media channel (photos on DC 1 and 2, an album, every
document kind, a link preview's photo) is parsed and handed to the processor as the handler
does; every item must end `stored` on nginx byte-exact, each file fetched from the emulator
once. Then the faults: expired file references, FLOOD_WAIT, a connection dropped mid-file,
nginx away for a while, and the processor's process killed with SIGKILL mid-download.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from common.errors import FloodWait, NoAccountAvailable
from common.utils import parse_peer
from model.downloader import part_count
from model.media import Media
from model.pool import TeleClients
from service.mediaprocessor import MediaProcessor
from service.mediasource import rebind_through
from service.mediastore import decode_parts
from service.parser import parse_messages
from service.storage import HttpStorage
from tests.fakedc import files, render
from tests.fakedc.demo_world import (
    ACCOUNT_A,
    ACCOUNT_B,
    FILE_PDF,
    MEDIA,
    VIDEO_20MB,
    demo_dict,
)
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID
from tests.fixtures.nginx import Nginx
from tests.fixtures.wait import wait_for
from tests.service.media_rig import GatedStorage

ROOT = Path(__file__).resolve().parents[2]
GET_FILE = "upload.getFile"
# Ten more posts of the same PDF: one key, one download.
REPOSTS = range(16, 26)


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    data = demo_dict()
    data["messages"] += [
        {"chat": MEDIA, "id": i, "text": f"again {i}", "media": {"document": FILE_PDF}}
        for i in REPOSTS
    ]
    return TelegramRpc(World.from_dict(data))


@pytest.fixture
def sessions(telegram_session: Callable[..., Path]) -> Path:
    telegram_session(ACCOUNT_A, name="acc-a")
    return telegram_session(ACCOUNT_B, name="acc-b").parent


async def start_pool(sessions: Path) -> TeleClients:
    pool = TeleClients.from_sessions_dir(
        sessions, FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0, request_timeout=10
    )
    await pool.start()
    return pool


@pytest.fixture
async def pool(sessions: Path, fake_telegram: Any) -> AsyncIterator[TeleClients]:
    p = await start_pool(sessions)
    yield p
    await p.stop()


class Flow:
    def __init__(self, tmp: Path, pool: TeleClients, nginx: Nginx, rpc: Any) -> None:
        self.tmp, self.pool, self.nginx, self.rpc = tmp, pool, nginx, rpc
        self.stored: list[dict[str, Any]] = []
        self.processors: list[MediaProcessor] = []
        self.storage: GatedStorage | None = None  # the last processor's (counts its puts)

    def processor(self, **options: Any) -> MediaProcessor:
        opts: dict[str, Any] = {
            "download_workers": 4, "upload_workers": 2, "per_account": 2,
            "parts_in_flight": 4, "on_stored": self.stored.append,
            "retry_base": 0.05, "retry_max": 0.2,
        }  # fmt: skip
        opts.update(options)
        self.storage = GatedStorage(HttpStorage(self.nginx.base_url, timeout=5))
        p = MediaProcessor(
            self.tmp / "media.db", self.tmp / "spool", self.storage, self.pool, **opts,
        )  # fmt: skip
        self.processors.append(p)
        return p

    async def page(self, account: str = "acc-a", limit: int = 100) -> list[Media]:
        """A history page of the media channel, parsed as the handler does."""
        tele = self.pool.get(account)
        _, messages = await tele.get_history(parse_peer("tgc_media"), limit=limit)
        _, media = parse_messages(messages, tele.name)
        return media


@pytest.fixture
async def flow(
    tmp_path: Path, pool: TeleClients, nginx_dav: Nginx, fake_telegram: Any
) -> AsyncIterator[Flow]:
    f = Flow(tmp_path, pool, nginx_dav, fake_telegram.dispatcher)
    yield f
    for p in f.processors:
        await p.stop()


def emulated(media: Media) -> bytes:
    if media.kind == "photo":
        key = render.photo_file_key(media.file_id, media.thumb_size)
    else:
        key = render.document_file_key(media.file_id)
    return files.read(key, media.size)


def on_nginx(nginx: Nginx, media: Media) -> bytes:
    return nginx.path_of(f"{media.key[:2]}/{media.key}{media.extension}").read_bytes()


def all_in(p: MediaProcessor, media: list[Media], state: str) -> bool:
    return all((p.get(m.key) or {}).get("state") == state for m in media)


def unique(media: list[Media]) -> list[Media]:
    return list({m.key: m for m in media}.values())


async def test_a_history_page_ends_stored_byte_exact_each_file_once(flow: Flow) -> None:
    media = await flow.page()
    distinct = unique(media)
    types = {m.type for m in distinct}
    assert {"photo", "video", "document", "audio", "voice", "sticker", "animation",
            "video_note", "webpage_photo"} <= types  # fmt: skip
    assert {m.dc_id for m in distinct} == {1, 2}
    assert len(media) - len(distinct) >= len(REPOSTS)  # the reposted PDF, one key
    flow.rpc.reset_counts()
    p = flow.processor()
    await p.start()
    for m in media:
        p.submit(m)
    await wait_for(lambda: all_in(p, distinct, "stored"), within=50)

    for m in distinct:
        assert on_nginx(flow.nginx, m) == emulated(m), f"{m.type} {m.file_id} differs"
        record = p.get(m.key)
        assert record is not None and record["url"].startswith(flow.nginx.base_url)
    assert flow.rpc.count(GET_FILE) == sum(part_count(m.size) for m in distinct)
    assert sorted(r["key"] for r in flow.stored) == sorted(m.key for m in distinct)
    assert len(flow.nginx.files()) == len(distinct)
    await wait_for(lambda: list((flow.tmp / "spool").iterdir()) == [])
    assert all(t.pending_downloads == 0 for t in flow.pool)


async def test_the_same_file_from_two_accounts_is_downloaded_once(flow: Flow) -> None:
    pdf_a = [m for m in await flow.page("acc-a") if m.file_id == FILE_PDF]
    pdf_b = [m for m in await flow.page("acc-b") if m.file_id == FILE_PDF]
    assert len(pdf_a) == len(pdf_b) == 1 + len(REPOSTS)
    assert pdf_a[0].account != pdf_b[0].account and pdf_a[0].key == pdf_b[0].key
    flow.rpc.reset_counts()
    p = flow.processor()
    await p.start()
    for a, b in zip(pdf_a, pdf_b, strict=True):
        p.submit(a)
        p.submit(b)
    await wait_for(lambda: all_in(p, pdf_a[:1], "stored"))
    assert flow.rpc.count(GET_FILE) == part_count(pdf_a[0].size)
    assert len(flow.stored) == 1
    assert on_nginx(flow.nginx, pdf_a[0]) == emulated(pdf_a[0])


async def test_expired_file_references_are_refreshed(flow: Flow) -> None:
    media = unique(await flow.page())
    flow.rpc.expire_file_references()  # every reference the page carried is stale now
    flow.rpc.reset_counts()
    p = flow.processor()
    await p.start()
    for m in media:
        p.submit(m)
    await wait_for(lambda: all_in(p, media, "stored"), within=50)
    for m in media:
        assert on_nginx(flow.nginx, m) == emulated(m)
    # Each file's message was fetched again, by the account it is bound to.
    assert flow.rpc.count("channels.getMessages") >= len({m.msg_id for m in media})


async def test_flood_wait_on_get_file_is_waited_out(flow: Flow) -> None:
    video = next(m for m in await flow.page() if m.file_id == VIDEO_20MB)
    flow.rpc.reset_counts()
    flow.rpc.flood_wait(GET_FILE, 1, every=9)  # mid-file: parts 0..7 are in by then
    p = flow.processor()
    await p.start()
    started = time.monotonic()
    p.submit(video)
    await wait_for(lambda: p.get(video.key)["state"] == "downloading")  # type: ignore[index]
    await wait_for(lambda: p.get(video.key)["state"] == "pending")  # type: ignore[index]
    flow.rpc.clear_faults()  # one wait is enough; the account is paused for 1 s now
    await wait_for(lambda: all_in(p, [video], "stored"))
    assert time.monotonic() - started >= 1.0
    assert on_nginx(flow.nginx, video) == emulated(video)
    # The parts written before the wait were not asked again: at most the refused one and
    # those in flight beside it (parts_in_flight=4) were.
    assert flow.rpc.count(GET_FILE) <= part_count(video.size) + 4


async def test_a_connection_dropped_mid_file_is_survived(flow: Flow) -> None:
    video = next(m for m in await flow.page() if m.file_id == VIDEO_20MB)
    flow.rpc.drop_connection_in_file(file_id=VIDEO_20MB, nth=5)
    p = flow.processor()
    await p.start()
    p.submit(video)
    await wait_for(lambda: all_in(p, [video], "stored"))
    assert on_nginx(flow.nginx, video) == emulated(video)


async def test_nginx_away_for_a_while(flow: Flow) -> None:
    media = unique(await flow.page())[:6]
    flow.nginx.stop()
    p = flow.processor()
    await p.start()
    for m in media:
        p.submit(m)
    await wait_for(lambda: all_in(p, media, "uploading"))
    # A few failed PUTs (the two upload workers two each): the items wait, nothing fails.
    storage = flow.storage
    assert storage is not None
    await wait_for(lambda: sum(storage.tried.values()) >= 4, what="four refused puts")
    assert all_in(p, media, "uploading")
    flow.nginx.start()
    await wait_for(lambda: all_in(p, media, "stored"))
    for m in media:
        assert on_nginx(flow.nginx, m) == emulated(m)


async def test_a_banned_account_fails_its_files_with_the_reason(flow: Flow) -> None:
    pdf = next(m for m in await flow.page("acc-a") if m.file_id == FILE_PDF)
    flow.rpc.deactivated_ban(ACCOUNT_A)
    p = flow.processor()
    await p.start()
    p.submit(pdf)
    await wait_for(lambda: all_in(p, [pdf], "failed"))
    assert "USER_DEACTIVATED_BAN" in p.get(pdf.key)["error"]  # type: ignore[index]


async def test_a_banned_account_hands_its_files_to_another(flow: Flow) -> None:
    video = next(m for m in await flow.page("acc-a") if m.file_id == VIDEO_20MB)
    await flow.page("acc-b")  # acc-b has seen the channel: it can reach it by id
    flow.rpc.deactivated_ban(ACCOUNT_A)
    p = flow.processor(rebind=rebind_through(flow.pool))
    await p.start()
    p.submit(video)
    await wait_for(lambda: all_in(p, [video], "stored"))
    assert on_nginx(flow.nginx, video) == emulated(video)
    assert [r["account"] for r in flow.stored] == ["acc-b"]


async def test_flood_wait_on_get_file_marks_the_account_flood_waited(flow: Flow) -> None:
    video = next(m for m in await flow.page("acc-a") if m.file_id == VIDEO_20MB)
    acc_a = flow.pool.get("acc-a")
    flow.rpc.flood_wait(GET_FILE, 3, user_id=ACCOUNT_A)  # the first getFile of acc-a
    p = flow.processor()
    await p.start()
    before = time.time()
    p.submit(video)
    await wait_for(lambda: str(acc_a.state) == "flood_wait")
    after = time.time()
    # GET /api/v1/accounts shows it, with the end of the wait.
    described = next(a for a in flow.pool.accounts() if a["name"] == "acc-a")
    assert described["state"] == "flood_wait"
    until = datetime.fromisoformat(described["flood_wait_until"]).timestamp()
    assert before + 3 - 1 <= until <= after + 3 + 1
    assert (acc_a.flood_waits, acc_a.flood_wait_seconds) == (1, 3)
    # A wait on getFile is Telegram's download throttle: the pool still gives acc-a reads
    # (after acc-b, which has fewer pending downloads), only its downloads wait.
    tried: list[str] = []

    async def busy(tele: Any) -> None:
        tried.append(tele.name)
        raise FloodWait(60, tele.name)

    with pytest.raises(NoAccountAvailable):
        await flow.pool.run(busy)
    assert tried == ["acc-b", "acc-a"]
    assert acc_a.ready_in(None) == 0
    # The wait over, the file is downloaded by its own account.
    await wait_for(lambda: all_in(p, [video], "stored"))
    assert time.time() - before >= 3 - 1  # the wait was waited out (± a clock second)
    assert on_nginx(flow.nginx, video) == emulated(video)
    assert str(acc_a.state) == "ok"


@pytest.mark.parametrize("rebind", [False, True], ids=["failed", "rebound"])
async def test_an_account_banned_mid_file(flow: Flow, rebind: bool) -> None:
    page = unique(await flow.page("acc-a"))
    video = next(m for m in page if m.file_id == VIDEO_20MB)
    queued = [m for m in page if m is not video][:5]
    await flow.page("acc-b")  # acc-b has seen the channel: it can reach it by id
    acc_a = flow.pool.get("acc-a")
    flow.rpc.set_latency({GET_FILE: 0.02})  # slow enough to ban it halfway through
    flow.rpc.reset_counts()
    in_flight = 2
    p = flow.processor(
        per_account=1,
        parts_in_flight=in_flight,
        rebind=rebind_through(flow.pool) if rebind else None,
    )
    await p.start()
    for m in [video, *queued]:  # one at a time per account: the others wait in the queue
        p.submit(m)
    await wait_for(lambda: flow.rpc.count(GET_FILE, ACCOUNT_A) >= 6)
    assert all_in(p, queued, "pending")
    flow.rpc.deactivated_ban(ACCOUNT_A)
    sent_before_ban = flow.rpc.count(GET_FILE, ACCOUNT_A)

    everything = [video, *queued]
    if rebind:
        await wait_for(lambda: all_in(p, everything, "stored"), within=50)
        for m in everything:
            assert on_nginx(flow.nginx, m) == emulated(m)
        assert {r["account"] for r in flow.stored} == {"acc-b"}
        # The video went on from the parts acc-a had written (all it sent but those in
        # flight when the ban came).
        total = sum(part_count(m.size) for m in everything)
        assert flow.rpc.count(GET_FILE, ACCOUNT_B) <= total - (sent_before_ban - in_flight)
    else:
        await wait_for(lambda: all_in(p, everything, "failed"), within=50)
        for m in everything:
            assert "USER_DEACTIVATED_BAN" in p.get(m.key)["error"]  # type: ignore[index]
    assert str(acc_a.state) == "banned" and acc_a.reason == "USER_DEACTIVATED_BAN"
    assert next(a for a in flow.pool.accounts() if a["name"] == "acc-a")["state"] == "banned"
    # Only the parts in flight when the ban came met it: the queued files of the banned
    # account were not each tried against Telegram.
    assert flow.rpc.count(GET_FILE, ACCOUNT_A) - sent_before_ban <= in_flight
    assert acc_a.pending_downloads == 0


def child_main(sessions: str, db: str, spool: str, base_url: str, media_json: str) -> None:
    """The processor of the SIGKILL test in its own process, with its own pool."""

    async def main() -> None:
        pool = await start_pool(Path(sessions))
        p = MediaProcessor(
            db, spool, HttpStorage(base_url), pool, parts_in_flight=2,
            parts_flush_interval=0.0,
        )  # fmt: skip
        await p.start()
        p.submit(Media.from_json(media_json))
        await asyncio.Event().wait()

    asyncio.run(main())


def saved_parts(db: Path) -> set[int]:
    if not db.exists():
        return set()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            row = conn.execute("SELECT done_parts FROM media").fetchone()
        except sqlite3.OperationalError:
            return set()
    return decode_parts(row[0]) if row else set()


async def test_sigkill_mid_download_then_start_again(
    flow: Flow, sessions: Path, fake_telegram: Any
) -> None:
    video = next(m for m in await flow.page() if m.file_id == VIDEO_20MB)
    total = part_count(video.size)
    # The pool of this test holds the session files: a server's successor starts after it.
    await flow.pool.stop()
    flow.rpc.set_latency({GET_FILE: 0.05})  # slow enough to kill it halfway
    flow.rpc.reset_counts()
    db = flow.tmp / "media.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys; from tests.service.test_media_flow import child_main; child_main(*sys.argv[1:])",
        str(sessions), str(db), str(flow.tmp / "spool"), flow.nginx.base_url, video.to_json(),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        await wait_for(lambda: len(saved_parts(db)) >= 4, within=40)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    at_kill = saved_parts(db)
    assert 4 <= len(at_kill) < total
    fetched_by_child = flow.rpc.count(GET_FILE)

    flow.rpc.set_latency({})
    flow.pool = await start_pool(sessions)
    try:
        p = flow.processor()
        await p.start()
        await wait_for(lambda: all_in(p, [video], "stored"), within=40)
        after = flow.rpc.count(GET_FILE) - fetched_by_child
    finally:
        await p.stop()
        await flow.pool.stop()
    assert on_nginx(flow.nginx, video) == emulated(video)
    # Resumed: the parts saved before the kill were not asked again.
    assert after <= total - len(at_kill)
    assert flow.nginx.files() == [Path(video.key[:2]) / f"{video.key}{video.extension}"]
