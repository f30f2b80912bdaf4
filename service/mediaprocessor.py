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
  "pending"); items queued before still finish; the table remembers what each file
  needs (`seen`), so `queue_now(key)` (POST /api/v1/media/KEY) can download it later, and
  also tries a failed item again;
- files larger than `max_file_bytes` are not downloaded: `submit` records them `failed`
  with the reason (the limit may be raised and the file brought again);
- store-once across processes: before a download the storage is asked whether it holds
  the key's object already (`Storage.find`: HEAD, or a stat); if so the item is stored
  with that URL and nothing is downloaded (docs/DEPLOY.md);
- back-pressure: each download reserves the file's size in the spool first; at
  `spool_max_bytes` the download workers wait for uploads to free space (one file larger
  than the whole spool still goes, alone);
- uploads retry with capped, jittered exponential backoff while the storage is down or
  answers 5xx, and also on answers that mean it is set up wrong (401, 403, 404, 405, 407,
  409: logged as errors naming the status and the URL), so a config mistake loses no
  downloaded file; an answer this file can never pass (400, 413…) fails the item.

Everything runs on the event loop. The parts of a download are saved at most every
`parts_flush_interval` seconds, so a crash costs at most that much re-downloading.

The parts, each in its module: the table and the spool files (service/mediastore.py), the
queues, the flow control and the state the stages share (service/mediaqueue.py), the
download stage and what its errors mean (service/mediadownload.py), the upload stage and
the callback (service/mediaupload.py), and finding a file again through Telegram, a new
reference or another account's copy (service/mediasource.py).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common.errors import ShuttingDown
from model.downloader import check_part_size, download_media
from model.media import Media
from service.mediadownload import DownloadFn, DownloadStage
from service.mediaqueue import Backoff, Pipeline
from service.mediasource import Rebind
from service.mediastore import (
    Item,
    MediaTable,
    SpoolFiles,
    State,
    not_queued,
    public_record,
)
from service.mediaupload import OnStored, UploadStage
from service.ports import ClientLookup
from service.storage import Storage, object_name

log = logging.getLogger(__name__)

# Keys `_remember` keeps in memory so as not to rewrite their row at every answer.
_REMEMBERED_MAX = 65536


class MediaProcessor:
    """The download and upload queues, their workers, and the table that remembers them.

    `storage` is owned from here on: `stop()` closes it. `clients.get(media.account)` gives
    the TeleClient a media item is bound to; its `pending_downloads` counts the items queued
    or downloading for it, which the pool's weighted choice reads. `rebind` (see
    `service.mediasource.rebind_through`) may hand a banned account's files to another.
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
        self._db = MediaTable(db_path, clock)
        self._work = Pipeline(
            self._db,
            SpoolFiles(spool_dir),
            clients,
            per_account=per_account,
            spool_max_bytes=spool_max_bytes,
        )
        backoff = Backoff(retry_base, retry_max)
        self._uploader = UploadStage(self._work, storage, on_stored, backoff)
        self._downloader = DownloadStage(
            self._work,
            download or download_media,
            rebind,
            parts_in_flight=parts_in_flight,
            max_attempts=max_download_attempts,
            backoff=backoff,
            parts_flush_interval=parts_flush_interval,
            stored_elsewhere=self._uploader.stored_elsewhere,
        )
        self._storage = storage
        self._download_workers = download_workers
        self._upload_workers = upload_workers
        self._part_size = part_size
        self._max_file_bytes = max_file_bytes
        self._auto_download = auto_download
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._remembered: set[str] = set()  # keys `_remember` wrote in this process

    @property
    def downloaded_bytes(self) -> int:
        """Bytes downloaded from Telegram by this process (for /metrics and the status page)."""
        return self._downloader.downloaded_bytes

    @property
    def uploaded_bytes(self) -> int:
        """Bytes stored in the storage by this process."""
        return self._uploader.uploaded_bytes

    @property
    def found_stored(self) -> int:
        """Items the storage already held when their download was due (another process
        stored them): stored here without a download."""
        return self._uploader.found_stored

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Takes up the unfinished items of the table and starts the workers."""
        if self._closed:
            raise ShuttingDown("the media processor was stopped")
        work = self._work
        if work.running:
            return
        work.running = True
        for row in self._db.unfinished():
            try:
                self._resume(row)
            except (ValueError, TypeError, KeyError) as e:
                # A record this code can't read (a corrupted row, a changed key scheme)
                # must not keep the server from starting.
                log.error("media %s: unreadable record, marked failed: %s", row["key"], e)
                self._db.fail_unreadable(row["key"], f"unreadable record: {e}"[:500])
        await asyncio.to_thread(work.spool.remove_orphans, work.items)
        for i in range(self._download_workers):
            self._spawn(self._downloader.worker(), f"media-download-{i}")
        for i in range(self._upload_workers):
            self._spawn(self._uploader.worker(), f"media-upload-{i}")
        self._spawn(self._uploader.notify_unnotified(), "media-notify")
        log.info(
            "media processor started: %d to download, %d to upload",
            len(work.downloads),
            work.uploads.qsize(),
        )

    async def stop(self) -> None:
        """Stops the workers where they are, saves the parts of every download, closes.

        Items keep their state in the table; the next `start()` (of a new processor on the
        same file) resumes them.
        """
        if self._closed:
            return
        self._closed = True
        self._work.stop_requeueing()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._work.let_go()
        await self._work.spool.settle()
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
        work = self._work
        item = work.items.get(media.key)
        if item is not None:
            return work.record(item.key)
        row = self._db.get(media.key)
        if row is not None and row["state"] != State.FAILED:
            # Stored, or unfinished while stopped: `start()` picks the latter up.
            return public_record(row)
        if not self._auto_download:
            self._remember(media)
            return public_record(row) if row is not None else not_queued(media)
        return self._queue(media)

    def queue_now(self, key: str) -> dict[str, Any] | None:
        """POST /api/v1/media/KEY: queues that file now, whatever `auto_download` says; a
        failed one is tried again. Returns the record (a stored or queued one as it is);
        None for a key no answer of this server described."""
        if self._closed:
            raise ShuttingDown("the media processor is stopping")
        work = self._work
        if key in work.items:
            return work.record(key)
        row = self._db.get(key)
        if row is not None and row["state"] != State.FAILED:
            return public_record(row)
        # The newest Media an answer carried (auto_download=false), else the failed row's.
        media = self._db.seen(key)
        if media is None and row is not None:
            try:
                media = Media.from_json(row["media"])
            except (ValueError, TypeError, KeyError) as e:
                log.warning("media %s: unreadable record, not queued: %s", key, e)
                return public_record(row)
        if media is None:
            return None
        return self._queue(media)

    def _queue(self, media: Media) -> dict[str, Any]:
        """A new (or failed) key into the table and the download queue; its record."""
        work = self._work
        item = Item(media=media, part_size=self._part_size)
        self._db.insert_pending(item)
        too_big = self._too_big(media)
        if too_big is not None:
            log.info("media %s not downloaded: %s", media.key, too_big)
            work.set_state(item, State.FAILED, too_big)
            return work.record(item.key)
        if work.running:
            work.items[item.key] = item
            work.queue_download(item)
        log.debug("media %s queued (%s, %d bytes)", media.key, media.type, media.size)
        return work.record(item.key)

    def _remember(self, media: Media) -> None:
        """Keeps what POST /api/v1/media/KEY needs to download `media` later: written
        once per key and process (the table keeps it across restarts; a later download
        finds a newer reference through the message if this one expired)."""
        if media.key in self._remembered:
            return
        if len(self._remembered) >= _REMEMBERED_MAX:
            self._remembered.clear()  # a bound; at worst a key is written once more
        self._db.remember(media)
        self._remembered.add(media.key)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of GET /api/v1/media/KEY: key, type, state, size, mime_type,
        file_name, url, error, updated_at; None for an unknown key."""
        if self._closed:
            raise ShuttingDown("the media processor is stopped")
        row = self._db.get(key)
        return public_record(row) if row is not None else None

    def stats(self) -> dict[str, int]:
        """Queue lengths and spool use, for health and metrics."""
        work = self._work
        return {
            "downloads_queued": len(work.downloads),
            "uploads_queued": work.uploads.qsize(),
            "in_progress": len(work.items),
            "spool_bytes": work.budget.used,
            "spool_max_bytes": work.budget.limit,
            "found_in_storage": self.found_stored,
        }

    # --- taking items up ------------------------------------------------------------------

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
        work = self._work
        item = Item.from_row(row)
        too_big = self._too_big(item.media)
        if too_big is not None and item.state != State.UPLOADING:
            # Queued under a larger limit; an item already in the spool may still go.
            log.info("media %s not downloaded: %s", item.key, too_big)
            work.set_state(item, State.FAILED, too_big)
            return
        work.items[item.key] = item
        if item.state == State.UPLOADING:
            # Its spool file is on disk already: count it whatever the budget says.
            item.reserved = item.media.size
            work.budget.force(item.reserved)
            work.queue_upload(item)
        else:
            work.queue_download(item)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


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
