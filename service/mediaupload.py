"""The upload stage of the media pipeline: each downloaded spool file to the storage, once,
then the media.stored callback.

Uploads retry with capped, jittered exponential backoff while the storage is down or
answers 5xx, and also on answers that mean it is set up wrong (401, 403, 404, 405, 407,
409: logged as errors naming the status and the URL), so a config mistake loses no
downloaded file; an answer this file can never pass (400, 413…) fails the item.

The callback runs after the state is stored and is marked done only when it returned, so a
crash between the two sends it again at the next start (at least once, as the events are).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from service.mediaqueue import Backoff, Pipeline, describe
from service.mediastore import Item, State, origin, public_record
from service.storage import Storage, StorageError, StorageMisconfigured, StorageUnavailable

log = logging.getLogger(__name__)

# The media.stored event: gets the record plus where the file was seen (account, peer, msg).
OnStored = Callable[[dict[str, Any]], Awaitable[None] | None]


class UploadStage:
    """The upload workers' work: `worker()` runs one worker until cancelled."""

    def __init__(
        self, work: Pipeline, storage: Storage, on_stored: OnStored | None, backoff: Backoff
    ) -> None:
        self._work = work
        self._storage = storage
        self._on_stored = on_stored
        self._backoff = backoff
        self.uploaded_bytes = 0  # for /metrics and the status page
        self.found_stored = 0  # items another process had stored: not downloaded here

    async def worker(self) -> None:
        """Takes the next downloaded item and stores it, forever."""
        work = self._work
        while True:
            key = await work.uploads.get()
            item = work.items.get(key)
            if item is None:
                continue
            try:
                await self._upload_one(item)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("media %s: upload worker error", key)
                work.fail_on_bug(key, e)

    async def _upload_one(self, item: Item) -> None:
        work = self._work
        path = work.spool.path(item.key)
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
                delay = self._backoff.delay(attempt)
                log.error(
                    "media %s: the storage refuses uploads (%s): check the storage server and"
                    " storage.url; the file is kept, attempt %d, again in %.1f s",
                    item.key, e.message, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
            except StorageUnavailable as e:
                attempt += 1
                delay = self._backoff.delay(attempt)
                log.warning(
                    "media %s: storage unavailable (%s), attempt %d, again in %.1f s",
                    item.key, e.message, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
            except FileNotFoundError:
                log.warning("media %s: spool file gone before upload, downloading again", item.key)
                work.release_spool(item)
                work.set_state(item, State.PENDING)
                work.queue_download(item)
                return
            except (StorageError, OSError) as e:
                work.fail(item, describe(e))
                return
        self.uploaded_bytes += media.size
        work.finish(item, url)
        await self.notify(item.key)

    async def stored_elsewhere(self, item: Item) -> bool:
        """Store-once across processes (docs/DEPLOY.md): asked before a download. When the
        storage already holds the key's object whole (another process stored it), the item
        ends `stored` with its URL and the media.stored callback runs, with no download.
        A storage that can't tell now is no answer: the download goes ahead."""
        media = item.media
        try:
            url = await self._storage.find(item.key, media.extension, media.size)
        except StorageError as e:
            log.debug("media %s: the storage can't tell if it has it (%s)", item.key, e.message)
            return False
        if url is None:
            return False
        work = self._work
        work.uncount(item.key)
        item.done_parts.clear()
        work.finish(item, url)
        self.found_stored += 1
        log.info("media %s: already in the storage, not downloaded", item.key)
        await self.notify(item.key)
        return True

    async def notify(self, key: str) -> None:
        """Runs the media.stored callback for a stored key; marks it done once it returned."""
        db = self._work.db
        if self._on_stored is None:
            db.mark_notified(key)
            return
        row = db.get(key)
        if row is None:
            return
        event = {**public_record(row), **origin(row)}
        try:
            result = self._on_stored(event)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("media %s: the media.stored callback failed; retried at next start", key)
            return
        db.mark_notified(key)

    async def notify_unnotified(self) -> None:
        """The callbacks a stop or a crash left unconfirmed."""
        for key in self._work.db.unnotified():
            await self.notify(key)
