"""The media pipeline: download with the bound account into a spool, upload to storage, once.

    submit(media) ──► download queue ──► download workers ──► spool/{key}.part
                      (per account,      (the account the                │
                       round robin)       media is bound to)             ▼
                                   stored ◄── upload workers ◄── upload queue

A media item is known by its key (the mmh3 hash of the Telegram file, the same from any
account), so ten messages or three accounts bringing one file make one download and one
upload: `submit` of a key that is stored or on its way returns the record it already has.

Every state change (pending → downloading → uploading → stored | failed) is written to SQLite
with the `Media` (its file reference may be refreshed) and the parts already in the spool
file, so `get(key)` answers from the table and a stop or a crash (SIGKILL included) loses
nothing: `start()` takes up what was pending, downloading or uploading, and a partly
downloaded file continues from its parts. The spool file is deleted only after the storage
confirmed the object. The `media.stored` callback runs after the state is stored and is
marked done only when it returned, so a crash between the two sends it again at the next
start (at least once, as the events are).

Flow control:
- per account at most `per_account` downloads at a time, accounts served round robin; an
  account Telegram asked to wait (FLOOD_WAIT) is paused for that long and its items requeued;
- the downloader's Telegram errors go to the account's `TeleClient.note_error`, as `_invoke`'s
  do: a flood wait shows in the pool (which skips the account until it ends) and in
  /api/v1/accounts, a ban or logout takes the account out of rotation, and its other queued
  items then fail with the reason (or move to another account through `rebind`) without
  each asking Telegram;
- `auto_download=False` describes files without queueing them: `submit` answers what the
  table knows of a key, or a record with state None (nothing will download it, so not
  "pending"); items queued before still finish;
- files larger than `max_file_bytes` are not downloaded: `submit` records them `failed`
  with the reason (the limit may be raised and the file brought again);
- back-pressure: each download reserves the file's size in the spool first; at
  `spool_max_bytes` the download workers wait for uploads to free space (one file larger
  than the whole spool still goes, alone);
- uploads retry with capped, jittered exponential backoff while the storage is down or
  answers 5xx, and also on answers that mean it is set up wrong (401, 403, 404, 405, 407,
  409: logged as errors naming the status and the URL), so a config mistake loses no
  downloaded file; an answer this file can never pass (400, 413…) fails the item.

Everything runs on the event loop. The SQLite statements are single-row writes in WAL mode
with synchronous=NORMAL (no fsync at commit: tens of microseconds), cheaper than a thread
hop; the parts of a download are saved at most every `parts_flush_interval` seconds, so a
crash costs at most that much re-downloading.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from telethon import errors as tl_errors

from common.errors import (
    AccountUnusable,
    FloodWait,
    ShuttingDown,
    TelegramError,
    TgcError,
)
from common.sqlite import open_db, write
from common.utils import PeerRef
from model.downloader import MediaConnections, check_part_size, download_media
from model.media import Media
from service.parser import fresh_reference, parse_message
from service.storage import (
    Storage,
    StorageError,
    StorageMisconfigured,
    StorageUnavailable,
    object_name,
)

log = logging.getLogger(__name__)


class State(StrEnum):
    PENDING = "pending"
    DOWNLOADING = "downloading"
    UPLOADING = "uploading"
    STORED = "stored"
    FAILED = "failed"


UNFINISHED = (State.PENDING, State.DOWNLOADING, State.UPLOADING)


class TeleClientLike(Protocol):
    """What the processor uses of `model.teleclient.TeleClient`."""

    name: str
    media_connections: MediaConnections  # what the downloader fetches parts over
    pending_downloads: int

    async def get_messages(self, ref: PeerRef, ids: list[int]) -> tuple[Any, list[Any]]: ...

    async def get_full(self, ref: PeerRef) -> tuple[Any, Any]: ...

    def note_error(self, error: BaseException) -> BaseException: ...


class ClientLookup(Protocol):
    """`TeleClients` (or a dict in tests): the TeleClient of an account name."""

    def get(self, name: str, /) -> Any: ...


# model.downloader.download_media's signature.
DownloadFn = Callable[..., Awaitable[None]]
# The media.stored event: gets the record plus where the file was seen (account, peer, msg).
OnStored = Callable[[dict[str, Any]], Awaitable[None] | None]
# The hook for a banned/logged-out account: return the same file bound to another account
# that can see it (or None to fail the item).
Rebind = Callable[[Media, TgcError], Awaitable[Media | None]]


class MediaProcessor:
    """The download and upload queues, their workers, and the table that remembers them.

    `storage` is owned from here on: `stop()` closes it. `clients.get(media.account)` gives
    the TeleClient a media item is bound to; its `pending_downloads` counts the items queued
    or downloading for it, which the pool's weighted choice reads.
    """

    def __init__(
        self,
        db_path: str | Path,
        spool_dir: str | Path,
        storage: Storage,
        clients: ClientLookup,
        *,
        download_workers: int = 4,
        upload_workers: int = 2,
        per_account: int = 2,
        parts_in_flight: int = 8,
        part_size: int = 1024 * 1024,
        spool_max_bytes: int = 2 * 1024**3,
        max_file_bytes: int | None = None,
        auto_download: bool = True,
        on_stored: OnStored | None = None,
        download: DownloadFn | None = None,
        rebind: Rebind | None = None,
        max_download_attempts: int = 5,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        parts_flush_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(download_workers, upload_workers, per_account, parts_in_flight) < 1:
            raise ValueError("worker counts, per_account and parts_in_flight must be >= 1")
        check_part_size(part_size)
        if max_file_bytes is not None and max_file_bytes < 1:
            raise ValueError("max_file_bytes must be >= 1")
        self._db = _MediaTable(db_path, clock)
        self._spool_dir = Path(spool_dir)
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._storage = storage
        self._clients = clients
        self._download_workers = download_workers
        self._upload_workers = upload_workers
        self._parts_in_flight = parts_in_flight
        self._part_size = part_size
        self._max_file_bytes = max_file_bytes
        self._auto_download = auto_download
        self._on_stored = on_stored
        self._download = download or download_media
        self._rebind = rebind
        self._max_download_attempts = max_download_attempts
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._parts_flush_interval = parts_flush_interval
        self._clock = clock

        self._items: dict[str, _Item] = {}  # every unfinished item this process works on
        self._downloads = _AccountQueue(per_account)
        self._uploads: asyncio.Queue[str] = asyncio.Queue()
        self._spool = _SpoolBudget(spool_max_bytes)
        self._counted: dict[str, Any] = {}  # key → the TeleClient whose pending_downloads has it
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._deleting: set[asyncio.Future[None]] = set()
        self._discards = itertools.count()
        self._running = False
        self._closed = False
        # Totals for /metrics and the status page, read at scrape time.
        self.downloaded_bytes = 0
        self.uploaded_bytes = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Takes up the unfinished items of the table and starts the workers."""
        if self._closed:
            raise ShuttingDown("the media processor was stopped")
        if self._running:
            return
        self._running = True
        for row in self._db.unfinished():
            try:
                self._resume(row)
            except (ValueError, TypeError, KeyError) as e:
                # A record this code can't read (a corrupted row, a changed key scheme)
                # must not keep the server from starting.
                log.error("media %s: unreadable record, marked failed: %s", row["key"], e)
                self._db.fail_unreadable(row["key"], f"unreadable record: {e}"[:500])
        await asyncio.to_thread(self._remove_orphan_spool_files)
        for i in range(self._download_workers):
            self._spawn(self._download_worker(), f"media-download-{i}")
        for i in range(self._upload_workers):
            self._spawn(self._upload_worker(), f"media-upload-{i}")
        self._spawn(self._notify_unnotified(), "media-notify")
        log.info(
            "media processor started: %d to download, %d to upload",
            len(self._downloads),
            self._uploads.qsize(),
        )

    async def stop(self) -> None:
        """Stops the workers where they are, saves the parts of every download, closes.

        Items keep their state in the table; the next `start()` (of a new processor on the
        same file) resumes them.
        """
        if self._closed:
            return
        self._running = False
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for item in self._items.values():
            self._db.save_parts(item)
        for key in list(self._counted):
            self._uncount(key)
        self._items.clear()
        await asyncio.gather(*self._deleting, return_exceptions=True)
        await self._storage.close()
        self._db.close()
        log.info("media processor stopped")

    # --- the public surface ---------------------------------------------------------------

    def submit(self, media: Media) -> dict[str, Any]:
        """Queues `media` unless its key is stored or already on its way; returns the record.

        A failed key is tried again with this (newer) Media: another message or account may
        serve it now. A file over `max_file_bytes` is recorded `failed` with the reason and
        not downloaded. Without `auto_download` nothing is queued: the answer is the record
        the table has, or one with state None and nothing stored for it.
        """
        if self._closed:
            raise ShuttingDown("the media processor is stopping")
        object_name(media.key, media.extension)  # a key that can't be a path component
        item = self._items.get(media.key)
        if item is not None:
            return self._record(item.key)
        row = self._db.get(media.key)
        if row is not None and row["state"] != State.FAILED:
            # Stored, or unfinished while stopped: `start()` picks the latter up.
            return _public(row)
        if not self._auto_download:
            return _public(row) if row is not None else _not_queued(media)
        item = _Item(media=media, part_size=self._part_size)
        self._db.insert_pending(item)
        too_big = self._too_big(media)
        if too_big is not None:
            log.info("media %s not downloaded: %s", media.key, too_big)
            self._set_state(item, State.FAILED, too_big)
            return self._record(item.key)
        if self._running:
            self._items[item.key] = item
            self._queue_download(item)
        log.debug("media %s queued (%s, %d bytes)", media.key, media.type, media.size)
        return self._record(item.key)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of GET /api/v1/media/KEY: key, type, state, size, mime_type,
        file_name, url, error, updated_at; None for an unknown key."""
        if self._closed:
            raise ShuttingDown("the media processor is stopped")
        row = self._db.get(key)
        return _public(row) if row is not None else None

    def stats(self) -> dict[str, int]:
        """Queue lengths and spool use, for health and metrics."""
        return {
            "downloads_queued": len(self._downloads),
            "uploads_queued": self._uploads.qsize(),
            "in_progress": len(self._items),
            "spool_bytes": self._spool.used,
            "spool_max_bytes": self._spool.limit,
        }

    # --- queueing -----------------------------------------------------------------------------

    def _too_big(self, media: Media) -> str | None:
        """Why `media` is not downloaded, when it is over the size limit."""
        limit = self._max_file_bytes
        if limit is None or media.size <= limit:
            return None
        return (
            f"file is {_size_text(media.size)} ({media.size} bytes),"
            f" over media.max_file_bytes={_setting_text(limit)}"
        )

    def _resume(self, row: sqlite3.Row) -> None:
        item = _Item.from_row(row)
        too_big = self._too_big(item.media)
        if too_big is not None and item.state != State.UPLOADING:
            # Queued under a larger limit; an item already in the spool may still go.
            log.info("media %s not downloaded: %s", item.key, too_big)
            self._set_state(item, State.FAILED, too_big)
            return
        self._items[item.key] = item
        if item.state == State.UPLOADING:
            # Its spool file is on disk already: count it whatever the budget says.
            item.reserved = item.media.size
            self._spool.force(item.reserved)
            self._uploads.put_nowait(item.key)
        else:
            self._queue_download(item)

    def _queue_download(self, item: _Item, *, front: bool = False) -> None:
        self._count(item)
        self._downloads.put(item.media.account, item.key, front=front)

    def _requeue_later(self, item: _Item, delay: float) -> None:
        def requeue() -> None:
            self._timers.discard(timer)
            if self._running and item.key in self._items:
                self._queue_download(item)

        timer = asyncio.get_running_loop().call_later(delay, requeue)
        self._timers.add(timer)

    def _count(self, item: _Item) -> None:
        """Adds the item to its account's pending_downloads (once)."""
        if item.key in self._counted:
            return
        tele = self._lookup(item.media.account)
        if tele is not None:
            tele.pending_downloads += 1
            self._counted[item.key] = tele

    def _uncount(self, key: str) -> None:
        tele = self._counted.pop(key, None)
        if tele is not None:
            tele.pending_downloads = max(0, tele.pending_downloads - 1)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- downloading --------------------------------------------------------------------------

    async def _download_worker(self) -> None:
        while True:
            account, key = await self._downloads.get()
            try:
                item = self._items.get(key)
                if item is not None:
                    await self._download_one(item)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A bug, not a Telegram answer (those are handled below): fail the item
                # rather than leave it "downloading" forever, and keep the worker.
                log.exception("media %s: download worker error", key)
                self._fail_on_bug(key, e)
            finally:
                self._downloads.release(account)

    async def _download_one(self, item: _Item) -> None:
        try:
            tele = self._client_for(item)
        except TgcError as e:
            await self._download_failed(item, e)
            return
        if item.reserved == 0:
            await self._spool.reserve(item.media.size)
            item.reserved = item.media.size
        path = self._spool_path(item.key)
        if item.done_parts and not path.exists():
            item.done_parts.clear()  # the spool was wiped: start over
        self._set_state(item, State.DOWNLOADING)
        try:
            await self._download(
                tele,
                item.media,
                path,
                parts_in_flight=self._parts_in_flight,
                part_size=item.part_size,
                done_parts=set(item.done_parts),
                refresh_reference=lambda: self._refresh_reference(item, tele),
                on_part=lambda index, size: self._on_part(item, index, size),
            )
        except asyncio.CancelledError:
            self._db.save_parts(item)
            raise
        except Exception as e:
            # The downloader calls Telegram outside the TeleClient's _invoke: its flood
            # waits and bans are recorded on the account here (the pool and
            # /api/v1/accounts see them; a banned account's other items are not sent).
            await self._download_failed(item, tele.note_error(e))
            return
        self._uncount(item.key)
        item.done_parts.clear()
        item.attempts = 0
        self._set_state(item, State.UPLOADING)
        self._uploads.put_nowait(item.key)

    def _client_for(self, item: _Item) -> TeleClientLike:
        account = item.media.account
        tele = self._lookup(account)
        if tele is None:
            raise AccountUnusable(account, "unknown", "not in the pool")
        state = str(getattr(tele, "state", "ok") or "ok").lower()
        if state in ("banned", "unauthorized"):
            # Told by Telegram before (the reason is its error name): nothing is sent.
            reason = getattr(tele, "reason", None) or "can't download with it"
            raise AccountUnusable(account, state, reason)
        return tele

    def _lookup(self, account: str) -> Any:
        try:
            return self._clients.get(account)
        except (KeyError, LookupError, TgcError):
            return None

    def _on_part(self, item: _Item, index: int, size: int) -> None:
        self.downloaded_bytes += size
        item.done_parts.add(index)
        now = time.monotonic()
        if now - item.parts_saved_at >= self._parts_flush_interval:
            self._db.save_parts(item)
            item.parts_saved_at = now

    async def _download_failed(self, item: _Item, error: BaseException) -> None:
        self._db.save_parts(item)
        account = item.media.account
        flood = _flood_seconds(error)
        if flood is not None:
            log.warning("media %s: account %s must wait %d s", item.key, account, flood)
            self._downloads.pause(account, flood)
            self._set_state(item, State.PENDING)
            self._queue_download(item, front=True)
            return
        unusable = _as_unusable(error, account)
        if unusable is not None and not _is_transient(unusable):
            await self._account_unusable(item, unusable)
            return
        if _is_transient(error):
            item.attempts += 1
            if item.attempts < self._max_download_attempts:
                delay = self._backoff(item.attempts)
                log.warning(
                    "media %s: download interrupted (%s), attempt %d, again in %.1f s",
                    item.key, _describe(error), item.attempts, delay,
                )
                self._set_state(item, State.PENDING)
                self._requeue_later(item, delay)
                return
        self._fail(item, _describe(error))

    async def _account_unusable(self, item: _Item, error: AccountUnusable) -> None:
        other = await self._rebind(item.media, error) if self._rebind is not None else None
        if other is None or other.key != item.key:
            self._fail(item, error.message)
            return
        log.info("media %s: account %s unusable, bound to %s", item.key, error.account, other.account)
        self._uncount(item.key)
        item.media = other
        self._set_state(item, State.PENDING)
        self._queue_download(item)

    async def _refresh_reference(self, item: _Item, tele: TeleClientLike) -> bytes:
        """Fetches the message (or the peer, for its own photo) again with the same account
        and takes the new file reference of the same file."""
        media = item.media
        if media.peer_id is None:
            raise TelegramError("FILE_REFERENCE_EXPIRED", "nowhere to refresh the reference from")
        ref = _peer_ref(media.peer_id)
        if media.msg_id is not None:
            _, messages = await tele.get_messages(ref, [media.msg_id])
            found: list[Any] = [m for m in messages if m is not None]
        else:  # a peer's own photo
            _, full = await tele.get_full(ref)
            found = [full]
        reference = next(
            (r for r in (fresh_reference(o, media) for o in found) if r is not None), None
        )
        if reference is None:
            raise TelegramError("FILE_REFERENCE_EXPIRED", "the message no longer has this file")
        media.file_reference = reference
        self._db.save_media(item)
        log.info("media %s: file reference refreshed", item.key)
        return reference

    # --- uploading ---------------------------------------------------------------------------

    async def _upload_worker(self) -> None:
        while True:
            key = await self._uploads.get()
            item = self._items.get(key)
            if item is None:
                continue
            try:
                await self._upload_one(item)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("media %s: upload worker error", key)
                self._fail_on_bug(key, e)

    async def _upload_one(self, item: _Item) -> None:
        path = self._spool_path(item.key)
        media = item.media
        attempt = 0
        while True:
            try:
                url = await self._storage.put(
                    path, item.key, media.extension, media.size, media.mime_type
                )
                break
            except StorageMisconfigured as e:
                attempt += 1
                delay = self._backoff(attempt)
                log.error(
                    "media %s: the storage refuses uploads (%s): check the storage server and"
                    " storage.url; the file is kept, attempt %d, again in %.1f s",
                    item.key, e.message, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
            except StorageUnavailable as e:
                attempt += 1
                delay = self._backoff(attempt)
                log.warning(
                    "media %s: storage unavailable (%s), attempt %d, again in %.1f s",
                    item.key, e.message, attempt, delay,
                )
                await asyncio.sleep(delay)
            except FileNotFoundError:
                log.warning("media %s: spool file gone before upload, downloading again", item.key)
                self._release_spool(item)
                self._set_state(item, State.PENDING)
                self._queue_download(item)
                return
            except (StorageError, OSError) as e:
                self._fail(item, _describe(e))
                return
        self.uploaded_bytes += media.size
        self._finish(item, url)
        await self._notify(item.key)

    def _finish(self, item: _Item, url: str) -> None:
        item.url = url
        self._set_state(item, State.STORED)
        # Only now that the storage has it and the table says so.
        self._discard_spool(item.key)
        self._release_spool(item)
        self._items.pop(item.key, None)
        log.info("media %s stored (%d bytes)", item.key, item.media.size)

    async def _notify(self, key: str) -> None:
        if self._on_stored is None:
            self._db.mark_notified(key)
            return
        row = self._db.get(key)
        if row is None:
            return
        event = {**_public(row), **_origin(row)}
        try:
            result = self._on_stored(event)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("media %s: the media.stored callback failed; retried at next start", key)
            return
        self._db.mark_notified(key)

    async def _notify_unnotified(self) -> None:
        for key in self._db.unnotified():
            await self._notify(key)

    # --- states and the spool ----------------------------------------------------------------

    def _set_state(self, item: _Item, state: State, error: str | None = None) -> None:
        item.state = state
        item.error = error
        self._db.save(item)

    def _fail(self, item: _Item, error: str) -> None:
        log.warning("media %s failed: %s", item.key, error)
        self._uncount(item.key)
        item.done_parts.clear()
        self._set_state(item, State.FAILED, error)
        self._discard_spool(item.key)
        self._release_spool(item)
        self._items.pop(item.key, None)

    def _fail_on_bug(self, key: str, error: Exception) -> None:
        item = self._items.get(key)
        if item is not None:
            with contextlib.suppress(Exception):
                self._fail(item, f"internal error: {_describe(error)}")

    def _release_spool(self, item: _Item) -> None:
        self._spool.release(item.reserved)
        item.reserved = 0

    def _spool_path(self, key: str) -> Path:
        return self._spool_dir / f"{key}.part"

    def _discard_spool(self, key: str) -> None:
        """Deletes a spool file without blocking the loop: freeing a large file's blocks
        takes a while (0.3 s per GB measured on this ext4). Renamed first, so the key's
        path is free at once for a new download of it."""
        path = self._spool_path(key)
        trash = path.with_name(f"{key}.{next(self._discards)}.del")
        try:
            path.rename(trash)
        except FileNotFoundError:
            return
        future = asyncio.get_running_loop().run_in_executor(None, _unlink, trash)
        self._deleting.add(future)
        future.add_done_callback(self._deleting.discard)

    def _remove_orphan_spool_files(self) -> None:
        """Spool files of no unfinished item (a crash after `stored`, before the unlink),
        and deletions a stop or a crash interrupted. Runs in a thread."""
        for path in self._spool_dir.glob("*.del"):
            _unlink(path)
        for path in self._spool_dir.glob("*.part"):
            if path.stem not in self._items:
                log.info("removing orphan spool file %s", path.name)
                _unlink(path)

    def _backoff(self, attempt: int) -> float:
        delay = min(self._retry_max, self._retry_base * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)  # jitter: items don't retry in lockstep

    def _record(self, key: str) -> dict[str, Any]:
        row = self._db.get(key)
        assert row is not None
        return _public(row)


# --- the item and its table --------------------------------------------------------------------


@dataclass(eq=False)
class _Item:
    media: Media
    part_size: int
    state: State = State.PENDING
    done_parts: set[int] = field(default_factory=set)
    url: str | None = None
    error: str | None = None
    reserved: int = 0  # spool bytes this item holds in the budget
    attempts: int = 0  # interrupted downloads in a row (this process only)
    parts_saved_at: float = 0.0

    @property
    def key(self) -> str:
        return self.media.key

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> _Item:
        return cls(
            media=Media.from_json(row["media"]),
            part_size=row["part_size"],
            state=State(row["state"]),
            done_parts=decode_parts(row["done_parts"]),
            url=row["url"],
            error=row["error"],
        )


_MIGRATIONS = (
    """
    CREATE TABLE media (
        key TEXT PRIMARY KEY,                  -- common.utils.media_key: 32 hex
        state TEXT NOT NULL CHECK (state IN
            ('pending', 'downloading', 'uploading', 'stored', 'failed')),
        media TEXT NOT NULL,                   -- Media.to_json(): ids, reference, account
        type TEXT NOT NULL,
        size INTEGER NOT NULL,
        mime_type TEXT NOT NULL,
        file_name TEXT,
        part_size INTEGER NOT NULL,
        done_parts TEXT NOT NULL DEFAULT '',   -- ranges of parts in the spool: "0-9,12"
        url TEXT,
        error TEXT,
        notified INTEGER NOT NULL DEFAULT 0,   -- the media.stored callback returned
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX media_unfinished ON media (created_at)
        WHERE state IN ('pending', 'downloading', 'uploading');
    CREATE INDEX media_unnotified ON media (updated_at)
        WHERE state = 'stored' AND notified = 0
    """,
)


class _MediaTable:
    """The `media` table: one row per key, written by this process only."""

    def __init__(self, path: str | Path, clock: Callable[[], float]) -> None:
        self._conn = open_db(path, "media", _MIGRATIONS)
        self._conn.row_factory = sqlite3.Row
        self._clock = clock

    def close(self) -> None:
        self._conn.close()

    def get(self, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM media WHERE key = ?", (key,)
        ).fetchone()
        return row

    def unfinished(self) -> list[sqlite3.Row]:
        return self._conn.execute(
            "SELECT * FROM media WHERE state IN ('pending', 'downloading', 'uploading')"
            " ORDER BY created_at"
        ).fetchall()

    def unnotified(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT key FROM media WHERE state = 'stored' AND notified = 0 ORDER BY updated_at"
        ).fetchall()
        return [r["key"] for r in rows]

    def insert_pending(self, item: _Item) -> None:
        """A new key, or a failed one tried again (everything but created_at is reset)."""
        media, now = item.media, self._clock()
        with write(self._conn) as c:
            c.execute(
                "INSERT INTO media (key, state, media, type, size, mime_type, file_name,"
                " part_size, done_parts, url, error, notified, created_at, updated_at)"
                " VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, '', NULL, NULL, 0, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET state = 'pending', media = excluded.media,"
                " type = excluded.type, size = excluded.size, mime_type = excluded.mime_type,"
                " file_name = excluded.file_name, part_size = excluded.part_size,"
                " done_parts = '', url = NULL, error = NULL, notified = 0,"
                " updated_at = excluded.updated_at",
                (
                    media.key, media.to_json(), media.type, media.size, media.mime_type,
                    media.file_name, item.part_size, now, now,
                ),
            )

    def save(self, item: _Item) -> None:
        """The item's state, parts, url, error and Media, in one statement."""
        with write(self._conn) as c:
            c.execute(
                "UPDATE media SET state = ?, media = ?, done_parts = ?, url = ?, error = ?,"
                " updated_at = ? WHERE key = ?",
                (
                    str(item.state), item.media.to_json(), encode_parts(item.done_parts),
                    item.url, item.error, self._clock(), item.key,
                ),
            )

    def save_parts(self, item: _Item) -> None:
        with write(self._conn) as c:
            c.execute(
                "UPDATE media SET done_parts = ? WHERE key = ?",
                (encode_parts(item.done_parts), item.key),
            )

    def save_media(self, item: _Item) -> None:
        with write(self._conn) as c:
            c.execute(
                "UPDATE media SET media = ? WHERE key = ?", (item.media.to_json(), item.key)
            )

    def fail_unreadable(self, key: str, error: str) -> None:
        with write(self._conn) as c:
            c.execute(
                "UPDATE media SET state = 'failed', error = ?, updated_at = ? WHERE key = ?",
                (error, self._clock(), key),
            )

    def mark_notified(self, key: str) -> None:
        with write(self._conn) as c:
            c.execute("UPDATE media SET notified = 1 WHERE key = ?", (key,))


def _public(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "key": row["key"],
        "type": row["type"],
        "state": row["state"],
        "size": row["size"],
        "mime_type": row["mime_type"],
        "file_name": row["file_name"],
        "url": row["url"],
        "error": row["error"],
        "updated_at": _iso(row["updated_at"]),
    }


def _not_queued(media: Media) -> dict[str, Any]:
    """`_public`'s shape for a file the processor was not asked to download."""
    return {
        "key": media.key,
        "type": media.type,
        "state": None,
        "size": media.size,
        "mime_type": media.mime_type,
        "file_name": media.file_name,
        "url": None,
        "error": None,
        "updated_at": None,
    }


def _origin(row: sqlite3.Row) -> dict[str, Any]:
    media = Media.from_json(row["media"])
    return {"account": media.account, "peer_id": media.peer_id, "msg_id": media.msg_id}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _size_text(n: int) -> str:
    """5476083302 → "5.1 GB" (binary units, as the settings count them)."""
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


def _setting_text(n: int) -> str:
    """4294967296 → "4G": a size the way config.properties writes it."""
    for unit, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def encode_parts(parts: Iterable[int]) -> str:
    """{0, 1, 2, 5, 7, 8} → "0-2,5,7-8": a 1 GB file's 1024 parts in a few bytes."""
    ordered = sorted(set(parts))
    out: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def decode_parts(text: str) -> set[int]:
    parts: set[int] = set()
    for chunk in filter(None, text.split(",")):
        first, _, last = chunk.partition("-")
        parts.update(range(int(first), int(last or first) + 1))
    return parts


# --- flow control -----------------------------------------------------------------------------


class _AccountQueue:
    """Download work by account: round robin over accounts, at most `per_account` items of
    one account at a time, none of an account that is paused (flood wait)."""

    def __init__(self, per_account: int) -> None:
        self._per_account = per_account
        self._waiting: dict[str, deque[str]] = {}  # insertion order = round-robin order
        self._busy: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def put(self, account: str, key: str, *, front: bool = False) -> None:
        queue = self._waiting.setdefault(account, deque())
        if front:
            queue.appendleft(key)
        else:
            queue.append(key)
        self._changed.set()

    def pause(self, account: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._paused_until[account] = max(until, self._paused_until.get(account, 0.0))

    def release(self, account: str) -> None:
        self._busy[account] -= 1
        self._changed.set()

    async def get(self) -> tuple[str, str]:
        while True:
            picked = self._pick()
            if picked is not None:
                return picked
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wake()):  # wait_for may eat a cancel
                    await self._changed.wait()

    def _pick(self) -> tuple[str, str] | None:
        now = time.monotonic()
        for account in list(self._waiting):
            if self._busy.get(account, 0) >= self._per_account:
                continue
            if self._paused_until.get(account, 0.0) > now:
                continue
            queue = self._waiting.pop(account)
            key = queue.popleft()
            if queue:
                self._waiting[account] = queue  # to the end: the next account goes first
            self._busy[account] = self._busy.get(account, 0) + 1
            return account, key
        return None

    def _next_wake(self) -> float | None:
        now = time.monotonic()
        ends = [
            self._paused_until[a] - now
            for a in self._waiting
            if self._paused_until.get(a, 0.0) > now
        ]
        return max(0.0, min(ends)) if ends else None


class _SpoolBudget:
    """Bytes reserved in the spool. A reservation waits while it would pass the limit,
    unless nothing is reserved (a file larger than the whole spool goes alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def reserve(self, size: int) -> None:
        while self.used and self.used + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += size

    def force(self, size: int) -> None:
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self._freed.set()


# --- another account for a file ---------------------------------------------------------------


class Pool(Protocol):
    """What `rebind_through` needs of `model.teleclient.TeleClients`."""

    async def run(self, op: Callable[[Any], Awaitable[Any]], peer: PeerRef | None = None) -> Any: ...


def rebind_through(pool: Pool) -> Rebind:
    """The `rebind` hook over the pool: when the account a file is bound to is banned or
    logged out, another account fetches the same message, and its own copy of the file (its
    access hash and reference, the same key) continues the download.

    Only accounts that can reach the peer by id are asked (the Media does not keep the
    username); a file whose message is gone, or seen by no other account, fails as before.
    """

    async def rebind(media: Media, error: TgcError) -> Media | None:
        if media.peer_id is None or media.msg_id is None:
            return None
        ref = _peer_ref(media.peer_id)
        msg_id = media.msg_id

        async def fetch(tele: Any) -> tuple[Any, list[Any]]:
            if tele.name == media.account:
                # The pool does not know yet; this makes it try the next account.
                raise AccountUnusable(tele.name, "unusable", "it can't download this file")
            result: tuple[Any, list[Any]] = await tele.get_messages(ref, [msg_id])
            return result

        try:
            (_, messages), tele = await pool.run(fetch, ref)
        except TgcError as e:
            log.info("media %s: no other account can fetch it (%s)", media.key, e.code)
            return None
        for message in messages:
            if message is None:
                continue
            _, found = parse_message(message, tele.name)
            for other in found:
                if other.key == media.key:
                    return other
        return None

    return rebind


# --- errors and Telegram objects -----------------------------------------------------------------


def _flood_seconds(error: BaseException) -> int | None:
    if isinstance(error, FloodWait):
        return error.retry_after
    if isinstance(error, tl_errors.FloodError):
        return max(1, int(getattr(error, "seconds", 0) or 1))
    return None


def _as_unusable(error: BaseException, account: str) -> AccountUnusable | None:
    if isinstance(error, AccountUnusable):
        return error
    if isinstance(error, tl_errors.UnauthorizedError):
        # USER_DEACTIVATED_BAN, AUTH_KEY_UNREGISTERED, SESSION_REVOKED …: the account is gone.
        state = "banned" if "BAN" in str(error.message) else "unauthorized"
        return AccountUnusable(account, state, str(error.message))
    return None


def _is_transient(error: BaseException) -> bool:
    # A dropped or timed-out connection, or Telegram's own 500s: the parts written stay.
    if isinstance(error, AccountUnusable):
        return str(error.state) == "disconnected"  # the TeleClient reconnects by itself
    if isinstance(error, TelegramError):
        return error.rpc_error == "TIMEOUT"  # TeleClient's "Telegram did not answer"
    return isinstance(error, ConnectionError | TimeoutError | OSError | tl_errors.ServerError)


def _describe(error: BaseException) -> str:
    if isinstance(error, TgcError | StorageError):
        text = error.message
    elif isinstance(error, tl_errors.RPCError):
        text = f"Telegram answered {error.message}"
    else:
        text = f"{type(error).__name__}: {error}"
    return text[:500]


def _peer_ref(peer_id: int) -> PeerRef:
    """The marked id a Media remembers, as a PeerRef (positive marked ids are users)."""
    text = str(peer_id)
    if peer_id > 0:
        return PeerRef(text, id=peer_id, kind="user")
    if text.startswith("-100"):
        return PeerRef(text, id=int(text[4:]), kind="channel")
    return PeerRef(text, id=-peer_id, kind="chat")
