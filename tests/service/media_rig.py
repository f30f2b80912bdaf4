"""The media pipeline's test rig, shared by tests/service/test_media{processor,store,queue,
download,upload,source}.py.

Telegram and the downloader are replaced by `FakeDownloads`, which writes the emulator's
deterministic bytes (tests/fakedc/files.py) part by part into the spool exactly as
model.downloader.download_media does (pwrite at the part's offset, on_part after each); the
storage is the real nginx (tests/fixtures/nginx.py) or the local folder. The end-to-end flow
through the emulator and the real downloader is tests/service/test_media_flow.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from common.errors import AccountUnusable, NoAccountAvailable
from common.utils import PeerRef
from model.media import Media
from service.mediaprocessor import MediaProcessor
from service.storage import HttpStorage, LocalStorage
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


def stored_on(nginx: Nginx, media: Media) -> Path:
    return nginx.path_of(f"{media.key[:2]}/{media.key}{media.extension}")


class FakeDownloads:
    """model.downloader.download_media's contract, with knobs: a gate, faults, a pace."""

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


class GatedStorage:
    """Any storage, held at a gate; counts the puts tried and those that went through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.tried: Counter[str] = Counter()
        self.puts: Counter[str] = Counter()
        self.fail_with: BaseException | None = None

    async def put(self, path: Path, key: str, ext: str, size: int, mime: str) -> str:
        await self.gate.wait()
        self.tried[key] += 1
        if self.fail_with is not None:
            raise self.fail_with
        url: str = await self.inner.put(path, key, ext, size, mime)
        self.puts[key] += 1
        return url

    async def find(self, key: str, ext: str, size: int) -> str | None:
        found: str | None = await self.inner.find(key, ext, size)
        return found

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

    def processor(
        self, storage: Any = None, *, clients: Any = None, **kwargs: Any
    ) -> MediaProcessor:
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
            clients if clients is not None else self.clients,
            **options,
        )
        self.processors.append(p)
        return p

    def spool_files(self) -> list[str]:
        return sorted(p.name for p in self.spool.glob("*"))


@contextlib.asynccontextmanager
async def running_rig(tmp: Path) -> AsyncIterator[Rig]:
    """A rig whose processors are stopped on the way out (the `rig` fixture of each module)."""
    rig = Rig(tmp)
    try:
        yield rig
    finally:
        for p in rig.processors:
            await p.stop()


def child_main(db: str, spool: str, base_url: str, file_id: str, size: str) -> None:
    """The processor of the SIGKILL test, in its own process: downloads slowly, forever."""

    async def main() -> None:
        downloads = FakeDownloads()
        downloads.part_delay = 0.05
        p = MediaProcessor(
            db, spool, HttpStorage(base_url), {"acc1": FakeTele("acc1")},
            part_size=PART, download=downloads, parts_flush_interval=0.0,
        )  # fmt: skip
        await p.start()
        p.submit(make_media(int(file_id), int(size)))
        await asyncio.Event().wait()

    asyncio.run(main())
