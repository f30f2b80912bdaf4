"""service/mediaprocessor.py: queues, states, dedupe, back-pressure, faults and restarts.

Telegram and the downloader are replaced by `FakeDownloads`, which writes the emulator's
deterministic bytes (tests/fakedc/files.py) part by part into the spool exactly as
model.media.download_media does (pwrite at the part's offset, on_part after each); the
storage is the real nginx (tests/fixtures/nginx.py) or the local folder. The end-to-end flow
through the emulator and the real downloader is tests/service/test_media_flow.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from telethon.tl import types

from common.errors import AccountUnusable, FloodWait, NoAccountAvailable, TgcError
from common.utils import PeerRef
from model.media import Media
from service.mediaprocessor import MediaProcessor
from service.mediasource import rebind_through
from service.mediastore import decode_parts, encode_parts
from service.storage import HttpStorage, LocalStorage, StorageError
from tests.fakedc import files
from tests.fixtures.nginx import Nginx

PART = 64 * 1024
ROOT = Path(__file__).resolve().parents[2]


def make_media(
    file_id: int,
    size: int,
    *,
    account: str = "acc1",
    file_name: str | None = "report.pdf",
    msg_id: int | None = 5,
    peer_id: int | None = -1001234567890,
) -> Media:
    return Media(
        type="document",
        kind="document",
        file_id=file_id,
        access_hash=1000 + file_id,
        file_reference=b"ref-old",
        dc_id=2,
        size=size,
        mime_type="application/pdf",
        file_name=file_name,
        account=account,
        peer_id=peer_id,
        msg_id=msg_id,
    )


def content(media: Media) -> bytes:
    return files.read(media.file_id, media.size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def query_one(db: Path, sql: str) -> Any:
    """The first column of the first row, or None (no row, or no table yet)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


async def wait_for(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Polls `condition` until true (the pipeline runs on this loop, so it moves meanwhile)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class FakeDownloads:
    """model.media.download_media's contract, with knobs: a gate, faults, a pace."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, frozenset[int]]] = []  # key, account, done parts
        self.fetched: Counter[tuple[str, int]] = Counter()
        self.faults: dict[str, list[BaseException]] = {}
        self.fault_after_parts = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.part_delay = 0.0
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()
        self.on_each_part: Callable[[], None] | None = None
        self.refresh_first = False
        self.refreshed: list[bytes] = []

    async def __call__(
        self,
        client: Any,
        media: Media,
        path: Path,
        *,
        parts_in_flight: int,
        part_size: int,
        done_parts: set[int] | None,
        refresh_reference: Callable[[], Awaitable[bytes]] | None,
        on_part: Callable[[int, int], None] | None,
    ) -> None:
        done = set(done_parts or ())
        self.calls.append((media.key, media.account, frozenset(done)))
        self.active[media.account] += 1
        self.max_active[media.account] = max(
            self.max_active[media.account], self.active[media.account]
        )
        try:
            await self.gate.wait()
            if self.refresh_first and refresh_reference is not None:
                self.refreshed.append(await refresh_reference())
            await self._write(media, Path(path), part_size, done, on_part)
        finally:
            self.active[media.account] -= 1

    async def _write(
        self,
        media: Media,
        path: Path,
        part_size: int,
        done: set[int],
        on_part: Callable[[int, int], None] | None,
    ) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            written = 0
            for index in range(max(1, -(-media.size // part_size))):
                if index in done:
                    continue
                faults = self.faults.get(media.key)
                if faults and written >= self.fault_after_parts:
                    raise faults.pop(0)
                data = files.read(media.file_id, media.size, index * part_size, part_size)
                os.pwrite(fd, data, index * part_size)
                self.fetched[(media.key, index)] += 1
                written += 1
                if on_part is not None:
                    on_part(index, len(data))
                if self.on_each_part is not None:
                    self.on_each_part()
                await asyncio.sleep(self.part_delay)
            os.ftruncate(fd, media.size)
        finally:
            os.close(fd)


class FakeTele:
    """A TeleClient as the processor sees it; get_messages answers from `messages`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client = object()
        self.pending_downloads = 0
        self.state = "ok"
        self.messages: dict[int, Any] = {}
        self.asked: list[tuple[PeerRef, list[int]]] = []
        self.full: Any = None
        self.noted: list[BaseException] = []  # the downloader's errors handed to note_error

    def note_error(self, error: BaseException) -> BaseException:
        self.noted.append(error)
        return error

    async def get_messages(self, ref: PeerRef, ids: list[int]) -> tuple[Any, list[Any]]:
        self.asked.append((ref, ids))
        return None, [self.messages.get(i) for i in ids]

    async def get_full(self, ref: PeerRef) -> tuple[Any, Any]:
        self.asked.append((ref, []))
        return None, self.full


class GatedStorage:
    """Any storage, held at a gate; counts the puts that went through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.puts: Counter[str] = Counter()
        self.fail_with: BaseException | None = None

    async def put(self, path: Path, key: str, ext: str, size: int, mime: str) -> str:
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        url: str = await self.inner.put(path, key, ext, size, mime)
        self.puts[key] += 1
        return url

    async def close(self) -> None:
        await self.inner.close()


class Rig:
    """Builds processors on one db/spool with fakes, and stops them all after the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "media.db"
        self.spool = tmp / "spool"
        self.local = tmp / "media"
        self.downloads = FakeDownloads()
        self.clients = {"acc1": FakeTele("acc1"), "acc2": FakeTele("acc2")}
        self.stored: list[dict[str, Any]] = []
        self.processors: list[MediaProcessor] = []

    def processor(self, storage: Any = None, **kwargs: Any) -> MediaProcessor:
        options: dict[str, Any] = {
            "download_workers": 4,
            "upload_workers": 2,
            "per_account": 2,
            "part_size": PART,
            "spool_max_bytes": 1 << 30,
            "on_stored": self.stored.append,
            "download": self.downloads,
            "retry_base": 0.02,
            "retry_max": 0.1,
            "parts_flush_interval": 0.0,
        }
        options.update(kwargs)
        p = MediaProcessor(
            self.db,
            self.spool,
            storage if storage is not None else LocalStorage(self.local),
            self.clients,
            **options,
        )
        self.processors.append(p)
        return p

    def spool_files(self) -> list[str]:
        return sorted(p.name for p in self.spool.glob("*"))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    yield r
    for p in r.processors:
        await p.stop()


def stored_on(nginx: Nginx, media: Media) -> Path:
    return nginx.path_of(f"{media.key[:2]}/{media.key}{media.extension}")


# -- pure helpers ------------------------------------------------------------------------------


@given(st.sets(st.integers(min_value=0, max_value=5000), max_size=300))
def test_parts_round_trip(parts: set[int]) -> None:
    text = encode_parts(parts)
    assert decode_parts(text) == parts
    assert len(text) <= len(",".join(map(str, sorted(parts))))


def test_parts_are_ranges() -> None:
    assert encode_parts({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert encode_parts(set()) == "" and decode_parts("") == set()


# -- the flow ------------------------------------------------------------------------------------


async def test_stored_byte_exact_on_nginx(rig: Rig, nginx_dav: Nginx) -> None:
    items = [make_media(i, size) for i, size in enumerate([1, 4096, PART, PART * 3 + 17, 2_000_000], 1)]
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    for m in items:
        assert p.submit(m)["state"] == "pending"
    await wait_for(lambda: all((p.get(m.key) or {}).get("state") == "stored" for m in items))

    for m in items:
        record = p.get(m.key)
        assert record is not None
        assert record["url"] == f"{nginx_dav.base_url}/{m.key[:2]}/{m.key}.pdf"
        assert record["size"] == m.size and record["mime_type"] == "application/pdf"
        assert record["error"] is None and record["updated_at"].endswith("Z")
        assert sha(stored_on(nginx_dav, m).read_bytes()) == sha(content(m))
    await wait_for(lambda: rig.spool_files() == [])  # deleted once nginx confirmed
    assert sorted(e["key"] for e in rig.stored) == sorted(m.key for m in items)
    assert {e["account"] for e in rig.stored} == {"acc1"}
    assert {e["msg_id"] for e in rig.stored} == {5}


async def test_one_key_in_ten_submits_is_downloaded_once(rig: Rig, nginx_dav: Nginx) -> None:
    storage = GatedStorage(HttpStorage(nginx_dav.base_url, timeout=5))
    p = rig.processor(storage)
    await p.start()
    # Ten messages, two accounts, one file: the same key.
    same = [make_media(77, 300_000, account=f"acc{1 + i % 2}", msg_id=i) for i in range(10)]
    records = [p.submit(m) for m in same]
    assert {r["key"] for r in records} == {same[0].key}
    await wait_for(lambda: (p.get(same[0].key) or {}).get("state") == "stored")
    for m in same:  # and after it is stored, still once
        assert p.submit(m)["state"] == "stored"

    assert [c[0] for c in rig.downloads.calls] == [same[0].key]
    assert storage.puts == Counter({same[0].key: 1})
    assert len(rig.stored) == 1
    assert nginx_dav.files() == [Path(same[0].key[:2]) / f"{same[0].key}.pdf"]


async def test_states_pending_downloading_uploading_stored(rig: Rig, tmp_path: Path) -> None:
    storage = GatedStorage(LocalStorage(rig.local))
    storage.gate.clear()
    rig.downloads.gate.clear()
    p = rig.processor(storage)
    m = make_media(3, PART * 2)
    assert p.submit(m)["state"] == "pending"  # accepted before start, kept in the table
    await p.start()
    await wait_for(lambda: p.get(m.key)["state"] == "downloading")  # type: ignore[index]
    assert rig.clients["acc1"].pending_downloads == 1
    rig.downloads.gate.set()
    await wait_for(lambda: p.get(m.key)["state"] == "uploading")  # type: ignore[index]
    assert rig.clients["acc1"].pending_downloads == 0
    assert rig.spool_files() == [f"{m.key}.part"]
    storage.gate.set()
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    record = p.get(m.key)
    assert record is not None and record["url"] == (rig.local / m.key[:2] / f"{m.key}.pdf").as_uri()
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)
    assert p.get("0" * 32) is None


async def test_nginx_down_items_wait_and_are_stored_when_it_returns(
    rig: Rig, nginx_dav: Nginx
) -> None:
    nginx_dav.stop()
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=2))
    await p.start()
    items = [make_media(i, 200_000) for i in range(10, 14)]
    for m in items:
        p.submit(m)
    await wait_for(lambda: all(p.get(m.key)["state"] == "uploading" for m in items))  # type: ignore[index]
    await asyncio.sleep(0.3)  # several failed attempts: nothing lost, nothing failed
    assert all(p.get(m.key)["state"] == "uploading" for m in items)  # type: ignore[index]
    assert len(rig.spool_files()) == 4

    nginx_dav.start()
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in items))  # type: ignore[index]
    for m in items:
        assert stored_on(nginx_dav, m).read_bytes() == content(m)
    await wait_for(lambda: rig.spool_files() == [])
    assert len(rig.downloads.calls) == 4


async def test_a_refused_upload_fails_the_item(rig: Rig) -> None:
    storage = GatedStorage(LocalStorage(rig.local))
    storage.fail_with = StorageError("PUT http://x/…: 413 Request Entity Too Large")
    p = rig.processor(storage)
    await p.start()
    m = make_media(4, 1000)
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert p.get(m.key)["error"] == "PUT http://x/…: 413 Request Entity Too Large"  # type: ignore[index]
    await wait_for(lambda: rig.spool_files() == [])
    assert rig.stored == []
    assert p.stats()["spool_bytes"] == 0
    # A failed key brought again is tried again.
    storage.fail_with = None
    assert p.submit(m)["state"] == "pending"
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]


def reconfigure(nginx: Nginx, old: str, new: str) -> None:
    """Edits the running nginx's config and restarts it on the same port."""
    text = nginx.conf.read_text()
    assert old in text
    nginx.conf.write_text(text.replace(old, new))
    nginx.restart()


@pytest.mark.parametrize(
    ("status", "mistake"),
    [
        # Every PUT forbidden (a deny rule, a read-only share).
        (403, ("autoindex on;", "autoindex on; deny all;")),
        # WebDAV's PUT left out of the location: 405 for every PUT.
        (405, ("dav_methods PUT DELETE MKCOL;", "dav_methods off;")),
    ],
    ids=["403", "405"],
)
async def test_a_misconfigured_storage_keeps_the_file_until_it_is_fixed(
    rig: Rig,
    nginx_dav: Nginx,
    caplog: pytest.LogCaptureFixture,
    status: int,
    mistake: tuple[str, str],
) -> None:
    reconfigure(nginx_dav, *mistake)
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    m = make_media(5, 200_000)
    url = f"{nginx_dav.base_url}/{m.key[:2]}/{m.key}.pdf"
    p.submit(m)
    refused = f"PUT {url}: {status} "

    def logged() -> bool:
        return any(r.levelname == "ERROR" and refused in r.getMessage() for r in caplog.records)

    await wait_for(logged)  # an error naming the status and the URL, for ops to see
    await wait_for(lambda: sum(refused in r.getMessage() for r in caplog.records) >= 3)
    # Refused again and again: the item waits with its file, nothing is lost.
    assert p.get(m.key)["state"] == "uploading"  # type: ignore[index]
    assert rig.spool_files() == [f"{m.key}.part"]
    assert (rig.spool / f"{m.key}.part").read_bytes() == content(m)

    reconfigure(nginx_dav, mistake[1], mistake[0])  # ops fix it
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert p.get(m.key)["url"] == url  # type: ignore[index]
    assert stored_on(nginx_dav, m).read_bytes() == content(m)
    await wait_for(lambda: rig.spool_files() == [])
    assert len(rig.downloads.calls) == 1  # downloaded once


async def test_a_file_the_storage_can_never_take_fails(rig: Rig, nginx_dav: Nginx) -> None:
    reconfigure(nginx_dav, "client_max_body_size 0;", "client_max_body_size 100k;")
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    big, small = make_media(6, 200_000), make_media(7, 50_000)
    p.submit(big)
    p.submit(small)
    await wait_for(lambda: p.get(big.key)["state"] == "failed")  # type: ignore[index]
    assert " 413 " in p.get(big.key)["error"]  # type: ignore[index]
    await wait_for(lambda: p.get(small.key)["state"] == "stored")  # type: ignore[index]
    await wait_for(lambda: rig.spool_files() == [])


async def test_a_blocked_local_folder_keeps_the_file_until_it_is_fixed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    m = make_media(8, 200_000)
    rig.local.mkdir(parents=True, exist_ok=True)
    blocker = rig.local / m.key[:2]
    blocker.write_bytes(b"a file where the key's folder should be")
    p = rig.processor(LocalStorage(rig.local))
    await p.start()
    p.submit(m)

    def refusals() -> int:
        return sum(
            r.levelname == "ERROR" and "the storage refuses uploads" in r.getMessage()
            for r in caplog.records
        )

    await wait_for(lambda: refusals() >= 2)
    assert p.get(m.key)["state"] == "uploading"  # type: ignore[index]
    assert (rig.spool / f"{m.key}.part").read_bytes() == content(m)

    blocker.unlink()  # ops fix it
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)
    await wait_for(lambda: rig.spool_files() == [])
    assert len(rig.downloads.calls) == 1


async def test_spool_back_pressure(rig: Rig) -> None:
    storage = GatedStorage(LocalStorage(rig.local))
    storage.gate.clear()
    limit = int(PART * 4 * 2.5)  # room for two files of four parts
    p = rig.processor(storage, spool_max_bytes=limit, download_workers=4, per_account=4)
    peak = [0]

    def measure() -> None:
        on_disk = sum(f.stat().st_size for f in rig.spool.glob("*.part"))
        peak[0] = max(peak[0], on_disk, p.stats()["spool_bytes"])

    rig.downloads.on_each_part = measure
    await p.start()
    items = [make_media(i, PART * 4) for i in range(20, 26)]
    for m in items:
        p.submit(m)
    await wait_for(lambda: sum(p.get(m.key)["state"] == "uploading" for m in items) == 2)  # type: ignore[index]
    await asyncio.sleep(0.2)  # the other four stay pending: the workers wait for room
    states = Counter(p.get(m.key)["state"] for m in items)  # type: ignore[index]
    assert states == Counter({"uploading": 2, "pending": 4})
    assert len(rig.downloads.calls) == 2

    storage.gate.set()
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in items))  # type: ignore[index]
    assert peak[0] <= limit
    assert p.stats()["spool_bytes"] == 0


async def test_a_file_larger_than_the_spool_still_goes_alone(rig: Rig) -> None:
    p = rig.processor(spool_max_bytes=PART)
    await p.start()
    big = make_media(30, PART * 3)
    p.submit(big)
    await wait_for(lambda: p.get(big.key)["state"] == "stored")  # type: ignore[index]


async def test_a_file_over_max_file_bytes_is_failed_not_downloaded(rig: Rig) -> None:
    p = rig.processor(max_file_bytes=PART * 2)
    await p.start()
    big, edge = make_media(200, PART * 2 + 300_000), make_media(201, PART * 2)
    record = p.submit(big)
    assert record["state"] == "failed"
    assert record["error"] == "file is 421.0 KB (431072 bytes), over media.max_file_bytes=128K"
    assert p.get(big.key) == record  # GET /api/v1/media/KEY says why
    p.submit(edge)  # exactly the limit goes
    await wait_for(lambda: p.get(edge.key)["state"] == "stored")  # type: ignore[index]
    assert [c[0] for c in rig.downloads.calls] == [edge.key]
    assert rig.clients["acc1"].pending_downloads == 0
    assert p.stats()["spool_bytes"] == 0
    # Brought again under a raised limit, the same file is downloaded.
    await p.stop()
    p2 = rig.processor(max_file_bytes=PART * 8)
    await p2.start()
    assert p2.submit(big)["state"] == "pending"
    await wait_for(lambda: p2.get(big.key)["state"] == "stored")  # type: ignore[index]


async def test_a_queued_file_over_a_lowered_limit_is_failed_at_start(rig: Rig) -> None:
    queued, small = make_media(202, PART * 4), make_media(203, 1000)
    p = rig.processor()
    p.submit(queued)  # before start: pending in the table
    p.submit(small)
    await p.stop()
    p2 = rig.processor(max_file_bytes=PART)
    await p2.start()
    await wait_for(lambda: p2.get(small.key)["state"] == "stored")  # type: ignore[index]
    record = p2.get(queued.key)
    assert record is not None and record["state"] == "failed"
    assert record["error"] == "file is 256.0 KB (262144 bytes), over media.max_file_bytes=64K"
    assert [c[0] for c in rig.downloads.calls] == [small.key]


async def test_without_auto_download_files_are_described_not_queued(rig: Rig) -> None:
    stored, failed, new = make_media(204, 1000), make_media(205, 1000), make_media(206, 1000)
    rig.downloads.faults[failed.key] = [ZeroDivisionError("oops")]
    p = rig.processor()
    await p.start()
    p.submit(stored)
    p.submit(failed)
    await wait_for(lambda: p.get(stored.key)["state"] == "stored")  # type: ignore[index]
    await wait_for(lambda: p.get(failed.key)["state"] == "failed")  # type: ignore[index]
    await p.stop()
    calls = len(rig.downloads.calls)

    p2 = rig.processor(auto_download=False)
    await p2.start()
    assert p2.submit(stored) == p2.get(stored.key)  # what the table knows: stored, its url
    assert p2.submit(stored)["url"] is not None
    assert p2.submit(failed)["state"] == "failed"  # not tried again
    record = p2.submit(new)
    assert record["state"] is None and record["url"] is None and record["size"] == 1000
    assert p2.get(new.key) is None  # nothing kept: GET /api/v1/media/KEY is 404
    assert p2.stats()["in_progress"] == 0 and p2.stats()["downloads_queued"] == 0
    assert len(rig.downloads.calls) == calls
    assert rig.clients["acc1"].pending_downloads == 0


async def test_per_account_concurrency_and_round_robin(rig: Rig) -> None:
    rig.downloads.part_delay = 0.01
    p = rig.processor(per_account=1, download_workers=4)
    await p.start()
    a = [make_media(i, PART * 3, account="acc1") for i in range(40, 44)]
    b = [make_media(i, PART * 3, account="acc2") for i in range(50, 52)]
    for m in a + b:
        p.submit(m)
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in a + b))  # type: ignore[index]
    assert rig.downloads.max_active == Counter({"acc1": 1, "acc2": 1})
    order = [c[1] for c in rig.downloads.calls]
    assert order[:2] == ["acc1", "acc2"]  # acc2 is not stuck behind acc1's four
    assert rig.clients["acc1"].pending_downloads == rig.clients["acc2"].pending_downloads == 0


async def test_pending_downloads_count_queued_items(rig: Rig) -> None:
    rig.downloads.gate.clear()
    p = rig.processor(per_account=1)
    await p.start()
    for i in range(60, 63):
        p.submit(make_media(i, 1000))
    await wait_for(lambda: len(rig.downloads.calls) == 1)
    assert rig.clients["acc1"].pending_downloads == 3  # one downloading, two queued
    rig.downloads.gate.set()
    await wait_for(lambda: rig.clients["acc1"].pending_downloads == 0)


# -- faults ----------------------------------------------------------------------------------------


async def test_flood_wait_pauses_that_account_and_resumes(rig: Rig) -> None:
    m = make_media(70, PART * 4, account="acc1")
    other = make_media(71, PART * 2, account="acc2")
    rig.downloads.faults[m.key] = [FloodWait(1, account="acc1")]
    rig.downloads.fault_after_parts = 2
    p = rig.processor()
    await p.start()
    started = time.monotonic()
    p.submit(m)
    await wait_for(lambda: len(rig.downloads.calls) == 1 and p.get(m.key)["state"] == "pending")  # type: ignore[index]
    p.submit(other)  # acc2 is not paused
    await wait_for(lambda: p.get(other.key)["state"] == "stored")  # type: ignore[index]
    assert p.get(m.key)["state"] == "pending"  # type: ignore[index]
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]

    assert time.monotonic() - started >= 0.9
    calls = [c for c in rig.downloads.calls if c[0] == m.key]
    assert calls[1][2] == frozenset({0, 1})  # continued from the parts it had
    assert max(rig.downloads.fetched[(m.key, i)] for i in range(4)) == 1
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)


async def test_dropped_connection_is_retried_from_the_parts_written(rig: Rig) -> None:
    m = make_media(72, PART * 5)
    rig.downloads.faults[m.key] = [ConnectionError("reset"), TimeoutError()]
    rig.downloads.fault_after_parts = 2
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert [len(c[2]) for c in rig.downloads.calls] == [0, 2, 4]
    assert all(n == 1 for n in rig.downloads.fetched.values())
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)


async def test_repeated_connection_errors_fail_the_item(rig: Rig) -> None:
    m = make_media(73, 1000)
    rig.downloads.faults[m.key] = [ConnectionError(f"down {i}") for i in range(3)]
    p = rig.processor(max_download_attempts=3)
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert p.get(m.key)["error"] == "ConnectionError: down 2"  # type: ignore[index]
    assert rig.clients["acc1"].pending_downloads == 0


async def test_banned_account_fails_with_the_reason(rig: Rig) -> None:
    m = make_media(74, 1000)
    banned = AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")
    rig.downloads.faults[m.key] = [banned]
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert "USER_DEACTIVATED_BAN" in p.get(m.key)["error"]  # type: ignore[index]
    await wait_for(lambda: rig.spool_files() == [])
    # The downloader's error went to its account, which keeps the state (TeleClient).
    assert rig.clients["acc1"].noted == [banned]


async def test_banned_account_is_replaced_through_the_rebind_hook(rig: Rig) -> None:
    m = make_media(75, PART * 2)
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")]
    asked: list[tuple[str, str]] = []

    async def rebind(media: Media, error: TgcError) -> Media | None:
        asked.append((media.account, error.code))
        return make_media(media.file_id, media.size, account="acc2", msg_id=99)

    p = rig.processor(rebind=rebind)
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert asked == [("acc1", "NO_ACCOUNT_AVAILABLE")]
    assert [c[1] for c in rig.downloads.calls] == ["acc1", "acc2"]
    assert rig.stored[0]["account"] == "acc2" and rig.stored[0]["msg_id"] == 99


class FakePool:
    """TeleClients.run as the hook sees it: accounts in order, the next one on
    AccountUnusable."""

    def __init__(self, accounts: list[FakeTele]) -> None:
        self.accounts = accounts

    async def run(self, op: Callable[[Any], Awaitable[Any]], peer: PeerRef | None = None) -> Any:
        for tele in self.accounts:
            try:
                return await op(tele), tele
            except AccountUnusable:
                continue
        raise NoAccountAvailable("nobody")


async def test_rebind_through_the_pool_takes_another_accounts_copy(rig: Rig) -> None:
    m = make_media(97, PART * 2, account="acc1", msg_id=5)
    doc = types.Document(97, 555, b"acc2-ref", None, "application/pdf", PART * 2, 2, [])
    rig.clients["acc2"].messages[5] = types.Message(
        5, types.PeerChannel(1234567890), media=types.MessageMediaDocument(document=doc)
    )
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")]
    pool = FakePool([rig.clients["acc1"], rig.clients["acc2"]])
    p = rig.processor(rebind=rebind_through(pool))
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert [c[1] for c in rig.downloads.calls] == ["acc1", "acc2"]
    assert rig.clients["acc1"].asked == []  # the banned account is not asked
    stored = Media.from_json(query_one(rig.db, "SELECT media FROM media"))
    assert (stored.account, stored.access_hash, stored.file_reference) == ("acc2", 555, b"acc2-ref")


async def test_rebind_through_the_pool_fails_when_no_one_has_the_file(rig: Rig) -> None:
    m = make_media(98, 1000, account="acc1", msg_id=5)
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")]
    p = rig.processor(rebind=rebind_through(FakePool([rig.clients["acc1"], rig.clients["acc2"]])))
    await p.start()
    p.submit(m)  # acc2's message 5 does not exist
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert "USER_DEACTIVATED_BAN" in p.get(m.key)["error"]  # type: ignore[index]


async def test_unknown_or_banned_account_in_the_pool(rig: Rig) -> None:
    rig.clients["acc2"].state = "banned"
    p = rig.processor()
    await p.start()
    ghost = make_media(76, 100, account="nobody")
    banned = make_media(77, 100, account="acc2")
    p.submit(ghost)
    p.submit(banned)
    await wait_for(lambda: p.get(ghost.key)["state"] == p.get(banned.key)["state"] == "failed")  # type: ignore[index]
    assert "nobody" in p.get(ghost.key)["error"]  # type: ignore[index]
    assert "banned" in p.get(banned.key)["error"]  # type: ignore[index]
    assert rig.downloads.calls == []


async def test_file_reference_is_refreshed_from_the_same_message(rig: Rig) -> None:
    m = make_media(78, 1000, msg_id=5, peer_id=-1001234567890)
    fresh = types.Document(78, m.access_hash, b"ref-new", None, "application/pdf", 1000, 2, [])
    rig.clients["acc1"].messages[5] = types.Message(
        5, types.PeerChannel(1234567890), media=types.MessageMediaDocument(document=fresh)
    )
    rig.downloads.refresh_first = True
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert rig.downloads.refreshed == [b"ref-new"]
    ref, ids = rig.clients["acc1"].asked[0]
    assert (ref.id, ref.kind, ids) == (1234567890, "channel", [5])
    assert Media.from_json(query_one(rig.db, "SELECT media FROM media")).file_reference == b"ref-new"


async def test_a_peer_photo_reference_is_refreshed_from_the_full_peer(rig: Rig) -> None:
    photo = Media(
        type="photo", kind="photo", file_id=501, access_hash=1, file_reference=b"ref-old",
        dc_id=2, size=3000, mime_type="image/jpeg", thumb_size="c", account="acc1",
        peer_id=-1001234567890, msg_id=None,
    )  # fmt: skip
    fresh = types.Photo(501, 1, b"ref-new", None, [], 2)
    rig.clients["acc1"].full = types.ChannelFull(
        id=1234567890, about="", read_inbox_max_id=0, read_outbox_max_id=0, unread_count=0,
        chat_photo=fresh, notify_settings=types.PeerNotifySettings(), exported_invite=None,
        bot_info=[], pts=1,
    )  # fmt: skip
    rig.downloads.refresh_first = True
    p = rig.processor()
    await p.start()
    p.submit(photo)
    await wait_for(lambda: p.get(photo.key)["state"] == "stored")  # type: ignore[index]
    assert rig.downloads.refreshed == [b"ref-new"]
    assert rig.clients["acc1"].asked[0][0].kind == "channel"


async def test_a_disconnected_account_is_waited_for_not_failed(rig: Rig) -> None:
    m = make_media(85, PART * 2)
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "disconnected", "connection lost")]
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert len(rig.downloads.calls) == 2


async def test_a_message_gone_fails_the_refresh(rig: Rig) -> None:
    m = make_media(79, 1000)
    rig.downloads.refresh_first = True
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert "no longer" in p.get(m.key)["error"]  # type: ignore[index]


async def test_path_traversal_names_land_under_the_key(rig: Rig, nginx_dav: Nginx) -> None:
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    evil = [
        make_media(80, 500, file_name="../../etc/passwd"),
        make_media(81, 500, file_name="a\x00b/../../x.sh"),
        make_media(82, 500, file_name="/etc/shadow\x00.pdf"),
    ]
    for m in evil:
        p.submit(m)
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in evil))  # type: ignore[index]
    expected = sorted(Path(m.key[:2]) / f"{m.key}.pdf" for m in evil)
    assert nginx_dav.files() == expected
    assert sorted(rig.tmp.rglob("passwd")) == [] and sorted(rig.tmp.rglob("*.sh")) == []
    for m in evil:
        assert p.get(m.key)["url"].endswith(f"/{m.key[:2]}/{m.key}.pdf")  # type: ignore[index]


async def test_a_failing_stored_callback_is_called_again_at_the_next_start(rig: Rig) -> None:
    seen: list[str] = []

    async def flaky(record: dict[str, Any]) -> None:
        seen.append(record["key"])
        raise RuntimeError("broker gone")

    m = make_media(83, 1000)
    p = rig.processor(on_stored=flaky)
    await p.start()
    p.submit(m)
    await wait_for(lambda: seen == [m.key])
    await p.stop()

    p2 = rig.processor()  # on_stored = rig.stored.append
    await p2.start()
    await wait_for(lambda: len(rig.stored) == 1)
    assert rig.stored[0]["key"] == m.key and rig.stored[0]["state"] == "stored"
    await p2.stop()
    p3 = rig.processor()
    await p3.start()
    await asyncio.sleep(0.05)
    assert len(rig.stored) == 1  # confirmed once, not sent again
    assert rig.downloads.calls == [(m.key, "acc1", frozenset())]


# -- restarts -----------------------------------------------------------------------------------


async def test_stop_and_a_new_processor_resume_a_partial_download(rig: Rig, nginx_dav: Nginx) -> None:
    m = make_media(90, PART * 8)
    rig.downloads.part_delay = 0.05
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    p.submit(m)
    await wait_for(lambda: sum(rig.downloads.fetched.values()) >= 3)
    await p.stop()
    assert query_one(rig.db, "SELECT state FROM media") == "downloading"
    fetched_before = set(k[1] for k in rig.downloads.fetched)

    rig.downloads.part_delay = 0.0
    p2 = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p2.start()
    await wait_for(lambda: p2.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert rig.downloads.calls[1][2] == frozenset(fetched_before)
    assert all(n == 1 for n in rig.downloads.fetched.values())
    assert stored_on(nginx_dav, m).read_bytes() == content(m)


async def test_stop_while_uploading_resumes_the_upload_without_downloading(
    rig: Rig, nginx_dav: Nginx
) -> None:
    nginx_dav.stop()
    m = make_media(91, PART * 3)
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=2))
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "uploading")  # type: ignore[index]
    await p.stop()
    nginx_dav.start()
    p2 = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p2.start()
    assert p2.submit(m)["state"] == "uploading"  # on its way: not queued twice
    await wait_for(lambda: p2.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert len(rig.downloads.calls) == 1
    assert stored_on(nginx_dav, m).read_bytes() == content(m)


async def test_an_unreadable_record_is_failed_not_fatal(rig: Rig) -> None:
    good, bad = make_media(93, 1000), make_media(94, 1000)
    p = rig.processor()
    p.submit(good)
    p.submit(bad)
    await p.stop()
    with contextlib.closing(sqlite3.connect(rig.db)) as conn, conn:
        conn.execute("UPDATE media SET media = '{\"kind\": 1}' WHERE key = ?", (bad.key,))
    p2 = rig.processor()
    await p2.start()
    await wait_for(lambda: p2.get(good.key)["state"] == "stored")  # type: ignore[index]
    record = p2.get(bad.key)
    assert record is not None and record["state"] == "failed"
    assert record["error"].startswith("unreadable record")


async def test_a_bug_in_the_downloader_fails_the_item_and_keeps_the_worker(rig: Rig) -> None:
    m, after = make_media(95, 1000), make_media(96, 1000)
    rig.downloads.faults[m.key] = [ZeroDivisionError("oops")]
    p = rig.processor(download_workers=1)
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert p.get(m.key)["error"] == "ZeroDivisionError: oops"  # type: ignore[index]
    p.submit(after)
    await wait_for(lambda: p.get(after.key)["state"] == "stored")  # type: ignore[index]


async def test_orphan_spool_files_are_removed_at_start(rig: Rig) -> None:
    rig.spool.mkdir(parents=True)
    (rig.spool / f"{'ab' * 16}.part").write_bytes(b"left over")
    (rig.spool / f"{'cd' * 16}.3.del").write_bytes(b"a deletion a crash cut short")
    p = rig.processor()
    await p.start()
    assert rig.spool_files() == []


def child_main(db: str, spool: str, base_url: str, file_id: str, size: str) -> None:
    """The processor of the SIGKILL test, in its own process: downloads slowly, forever."""

    async def main() -> None:
        downloads = FakeDownloads()
        downloads.part_delay = 0.05
        p = MediaProcessor(
            db, spool, HttpStorage(base_url), {"acc1": FakeTele("acc1")},
            part_size=PART, download=downloads, parts_flush_interval=0.0,
        )
        await p.start()
        p.submit(make_media(int(file_id), int(size)))
        await asyncio.Event().wait()

    asyncio.run(main())


async def test_sigkill_mid_download_resumes_in_a_new_process(rig: Rig, nginx_dav: Nginx) -> None:
    m = make_media(92, PART * 40)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys; from tests.service.test_mediaprocessor import child_main; child_main(*sys.argv[1:])",
        str(rig.db), str(rig.spool), nginx_dav.base_url, str(m.file_id), str(m.size),
        cwd=ROOT,
    )

    def saved_parts() -> set[int]:
        if not rig.db.exists():
            return set()
        return decode_parts(query_one(rig.db, "SELECT done_parts FROM media") or "")

    try:
        await wait_for(lambda: len(saved_parts()) >= 5, within=30)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    at_kill = saved_parts()
    assert 5 <= len(at_kill) < 40

    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert len(rig.downloads.calls) == 1
    assert rig.downloads.calls[0][2] >= at_kill  # resumed from its parts
    assert set(k[1] for k in rig.downloads.fetched) == set(range(40)) - rig.downloads.calls[0][2]
    assert sha(stored_on(nginx_dav, m).read_bytes()) == sha(content(m))
    await wait_for(lambda: rig.spool_files() == [])
