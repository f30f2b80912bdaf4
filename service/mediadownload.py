"""The download stage of the media pipeline: each item with the account it is bound to,
into its spool file, part by part, and on to the upload queue.

What a failed download means is read from the service's errors, which model/ already made
of Telegram's (model/tgerrors.py classifies them once; the downloader and `TeleClient`
raise FloodWait, AccountUnusable and TelegramError, and `TeleClient.note_error` records
them on the account):

- FloodWait: the account is paused for that long, the item goes back to the front of its
  queue and continues from its parts;
- AccountUnusable (banned, logged out, not in the pool): the `rebind` hook may bind the
  file to another account that sees it, else the item fails with the reason; the account's
  other queued items then meet `_client_for`'s check and fail without asking Telegram;
- a dropped or timed-out connection (OSError, TelegramError TIMEOUT, an account
  reconnecting): tried again with backoff from the parts written, `max_attempts` times;
- anything else fails the item with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from common.errors import AccountUnusable, FloodWait, TelegramError, TgcError
from service.mediaqueue import Backoff, Pipeline, describe
from service.mediasource import Rebind, refetch_reference
from service.mediastore import Item, State
from service.ports import TeleClientLike

log = logging.getLogger(__name__)

# model.downloader.download_media's signature.
DownloadFn = Callable[..., Awaitable[None]]
# Asked before each download: True when the storage already had the file and the item is
# now stored (the upload stage's `stored_elsewhere`).
StoredElsewhere = Callable[[Item], Awaitable[bool]]


class DownloadStage:
    """The download workers' work: `worker()` runs one worker until cancelled."""

    def __init__(
        self,
        work: Pipeline,
        download: DownloadFn,
        rebind: Rebind | None,
        *,
        parts_in_flight: int,
        max_attempts: int,
        backoff: Backoff,
        parts_flush_interval: float,
        stored_elsewhere: StoredElsewhere | None = None,
    ) -> None:
        self._work = work
        self._stored_elsewhere = stored_elsewhere
        self._download = download
        self._rebind = rebind
        self._parts_in_flight = parts_in_flight
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._parts_flush_interval = parts_flush_interval
        self.downloaded_bytes = 0  # for /metrics and the status page

    async def worker(self) -> None:
        """Takes the next (account, key) the queue allows and downloads it, forever."""
        work = self._work
        while True:
            account, key = await work.downloads.get()
            try:
                item = work.items.get(key)
                if item is not None:
                    await self._download_one(item)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A bug, not a Telegram answer (those are handled below): fail the item
                # rather than leave it "downloading" forever, and keep the worker.
                log.exception("media %s: download worker error", key)
                work.fail_on_bug(key, e)
            finally:
                work.downloads.release(account)

    async def _download_one(self, item: Item) -> None:
        work = self._work
        # Before the account is even asked: another process may have stored the file.
        if self._stored_elsewhere is not None and await self._stored_elsewhere(item):
            return
        try:
            tele = self._client_for(item)
        except TgcError as e:
            await self._failed(item, e)
            return
        if item.reserved == 0:
            await work.budget.reserve(item.media.size)
            item.reserved = item.media.size
        path = work.spool.path(item.key)
        if item.done_parts and not path.exists():
            item.done_parts.clear()  # the spool was wiped: start over
        work.set_state(item, State.DOWNLOADING)
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
            work.db.save_parts(item)
            raise
        except Exception as e:
            # The downloader calls Telegram outside the TeleClient's _invoke: its flood
            # waits and bans are recorded on the account here (the pool and
            # /api/v1/accounts see them; a banned account's other items are not sent).
            await self._failed(item, tele.note_error(e))
            return
        work.uncount(item.key)
        item.done_parts.clear()
        item.attempts = 0
        work.set_state(item, State.UPLOADING)
        work.queue_upload(item)

    def _client_for(self, item: Item) -> TeleClientLike:
        account = item.media.account
        tele = self._work.lookup(account)
        if tele is None:
            raise AccountUnusable(account, "unknown", "not in the pool")
        state = str(getattr(tele, "state", "ok") or "ok").lower()
        if state in ("banned", "unauthorized"):
            # Told by Telegram before (the reason is its error name): nothing is sent.
            reason = getattr(tele, "reason", None) or "can't download with it"
            raise AccountUnusable(account, state, reason)
        return tele

    def _on_part(self, item: Item, index: int, size: int) -> None:
        self.downloaded_bytes += size
        item.done_parts.add(index)
        now = time.monotonic()
        if now - item.parts_saved_at >= self._parts_flush_interval:
            self._work.db.save_parts(item)
            item.parts_saved_at = now

    async def _refresh_reference(self, item: Item, tele: TeleClientLike) -> bytes:
        """The downloader's `refresh_reference`: the same account's new reference of the
        same file, kept in the row."""
        reference = await refetch_reference(tele, item.media)
        item.media.file_reference = reference
        self._work.db.save_media(item)
        log.info("media %s: file reference refreshed", item.key)
        return reference

    async def _failed(self, item: Item, error: BaseException) -> None:
        work = self._work
        work.db.save_parts(item)
        account = item.media.account
        if isinstance(error, FloodWait):
            log.warning("media %s: account %s must wait %d s", item.key, account, error.retry_after)
            work.downloads.pause(account, error.retry_after)
            work.set_state(item, State.PENDING)
            work.queue_download(item, front=True)
            return
        if isinstance(error, AccountUnusable) and not _retryable(error):
            await self._account_unusable(item, error)
            return
        if _retryable(error):
            item.attempts += 1
            if item.attempts < self._max_attempts:
                delay = self._backoff.delay(item.attempts)
                log.warning(
                    "media %s: download interrupted (%s), attempt %d, again in %.1f s",
                    item.key, describe(error), item.attempts, delay,
                )  # fmt: skip
                work.set_state(item, State.PENDING)
                work.requeue_later(item, delay)
                return
        work.fail(item, describe(error))

    async def _account_unusable(self, item: Item, error: AccountUnusable) -> None:
        work = self._work
        other = await self._rebind(item.media, error) if self._rebind is not None else None
        if other is None or other.key != item.key:
            work.fail(item, error.message)
            return
        log.info(
            "media %s: account %s unusable, bound to %s", item.key, error.account, other.account
        )
        work.uncount(item.key)
        item.media = other
        work.set_state(item, State.PENDING)
        work.queue_download(item)


def _retryable(error: BaseException) -> bool:
    """A dropped or timed-out connection, or an account reconnecting: the parts written
    stay, the download goes on later."""
    if isinstance(error, AccountUnusable):
        return str(error.state) == "disconnected"  # the TeleClient reconnects by itself
    if isinstance(error, TelegramError):
        return error.rpc_error == "TIMEOUT"  # TeleClient's "Telegram did not answer"
    return isinstance(error, OSError)  # ConnectionError and TimeoutError among them
