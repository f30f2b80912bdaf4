"""A fast, resumable download of one Telegram file, and the connections it goes over.

Telethon's own download asks for one part at a time, so its speed is one part per round
trip (~2.5 MB/s at 50 ms). Here `parts_in_flight` workers share one list of parts, each
keeping one `upload.getFile` in flight on the same connection, and write every part at
its offset with os.pwrite in a thread: speed ≈ bytes in flight ÷ round trip until the CPU
is full, memory ≈ parts_in_flight × part_size, never the whole file.

How many of those workers actually have a part in flight is the account's window on that
DC (model/partwindow.py `PartWindow`, `parts_in_flight` its ceiling): it grows while the
account's throughput grows with it, goes back when a growth bought nothing, and halves
when Telegram says wait.
A flood wait on getFile (Telegram's download throttle) also paces the account's parts
(`DownloadPace`) and is its own flood-wait kind (model/tgerrors.py DOWNLOAD): the account's
downloads slow down, its API reads go on.

The connections are an account's `MediaConnections`, which its `TeleClient` owns and
closes. Telethon's private parts used for them are model/telethon_internals.py's.
Queues, the spool and storage are service/mediaprocessor.py's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from telethon import errors
from telethon.tl import functions, types

from common.errors import AccountUnusable, FloodWait, TelegramError, TgcError
from model.partwindow import DownloadPace, PartWindow
from model.telethon_internals import (
    Sender,
    borrow_exported_sender,
    call,
    close_sender,
    main_sender,
    open_home_sender,
    return_exported_sender,
    sender_connected,
)
from model.tgerrors import TRANSIENT, account_fate, rpc_error_name

if TYPE_CHECKING:
    from telethon import TelegramClient

    from model.media import Media

log = logging.getLogger(__name__)

MIB = 1 << 20
_PART_STEP = 4096
# FILE_REFERENCE_EXPIRED again and again means the refresh gives nothing usable.
_MAX_REFRESHES = 5
# A part that fails on a lost connection is asked again this many times, with backoff.
_CONNECTION_RETRIES = 5
_RETRY_DELAY = 0.5
_REFERENCE_ERRORS = (errors.FileReferenceExpiredError, errors.FilerefUpgradeNeededError)
# FLOOD_PREMIUM_WAIT_X is how Telegram slows non-premium accounts that download fast.
_FLOOD_ERRORS = (errors.FloodWaitError, errors.FloodPremiumWaitError)
# Seconds the home media connection stays open unused (Telethon's exported senders: 60).
MEDIA_IDLE_CLOSE = 60.0
RefreshReference = Callable[[], Awaitable[bytes]]
OnPart = Callable[[int, int], None]
Part = bytes | memoryview  # a part's bytes as the connection hands them over
Release = Callable[[int | None], None]  # gives a part's place in the window back: its bytes
OpenSender = Callable[["TelegramClient"], Awaitable[Sender]]


def part_count(size: int, part_size: int = MIB) -> int:
    """How many parts of `part_size` a file of `size` bytes has."""
    return -(-size // part_size)


def check_part_size(part_size: int) -> None:
    """Telegram's rule: a multiple of 4 KB that divides 1 MB (so no part crosses a 1 MB
    boundary when offsets are multiples of it)."""
    if part_size <= 0 or part_size % _PART_STEP or MIB % part_size:
        raise ValueError(f"part_size {part_size} must be a multiple of 4096 dividing 1 MiB")


# -- the connections --------------------------------------------------------------------------


class MediaConnections:
    """The connections one account's downloads fetch parts over. Its `TeleClient` owns it
    and closes it in `stop()`.

    A file on another DC goes over Telethon's exported sender for that DC (the private API
    its own downloads use: auth exported once, the connection shared; Telethon closes it).
    A file on the home DC goes over a media connection of our own: same auth key as the
    main connection (nothing to export or import; Telegram allows several connections,
    each its own MTProto session, per key), what Telegram's own apps do for media, so the
    account's API calls don't queue behind megabytes of parts. It never subscribes to the
    account's updates (they come on the main connection; see
    `model.telethon_internals.open_home_sender`). It is opened on the first
    borrow, shared by the account's home-DC downloads, and closed after `idle_close`
    seconds unused, when the client disconnects (Telethon's disconnect closes only its own
    senders), or by `close()`; a later borrow opens a new one.

    Ours rather than Telethon's exported sender for the home DC too: Telethon holds its
    borrow lock while it connects to another DC and exports the authorization there
    (retries included, ~6 s when that DC is down), and every borrow or return waits on that
    lock; a home-DC download must not stall behind a foreign DC.

    `open_sender` opens the home media connection (tests give a fake one); `clock` is the
    monotonic clock of the window and pace.

    It also keeps how the account's downloads fare, shared by all of them: its window of
    parts in flight per DC (`window`) and its pace (`pace`), see model/partwindow.py.
    """

    def __init__(
        self,
        client: TelegramClient,
        *,
        idle_close: float = MEDIA_IDLE_CLOSE,
        open_sender: OpenSender = open_home_sender,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.idle_close = idle_close
        self._open_sender = open_sender
        self._lock = asyncio.Lock()  # one open at a time
        self._sender: Sender = None
        self._borrows = 0
        self._idle: asyncio.TimerHandle | None = None
        self._watch: asyncio.Task[None] | None = None
        # Every home media connection opened here, the current and closed ones: one given
        # back after it was replaced must not go to Telethon as an exported sender.
        self._ours: weakref.WeakSet[Any] = weakref.WeakSet()
        self._closing: set[asyncio.Task[None]] = set()  # idle disconnects under way
        self._clock = clock
        self.pace = DownloadPace(clock)
        self._windows: dict[int, PartWindow] = {}

    def window(self, dc_id: int, ceiling: int) -> PartWindow:
        """The account's window of parts in flight on `dc_id` (0: the home DC), bounded by
        `ceiling` (the caller's parts_in_flight)."""
        dc = dc_id or self.client.session.dc_id
        window = self._windows.get(dc)
        if window is None:
            window = self._windows[dc] = PartWindow(ceiling, clock=self._clock)
        window.ceiling = max(1, ceiling)
        return window

    def describe(self) -> dict[str, Any]:
        """How the account's downloads fare: bytes, pace, flood waits, and per DC its window."""
        return {
            **self.pace.describe(),
            "dcs": {dc: w.describe() for dc, w in self._windows.items()},
        }

    @property
    def in_use(self) -> int:
        """How many borrows of the home media connection are out now."""
        return self._borrows

    async def borrow(self, dc_id: int, *, media_connection: bool = True) -> Sender:
        """A sender for a file on `dc_id` (0: the home DC); give it back with `give_back`.

        On the home DC the media connection, or the main connection when
        `media_connection` is False (nothing to give back then); on another DC Telethon's
        exported sender. Raises Telethon's errors (an RPC error while authorising on
        another DC, a connection error)."""
        home = not dc_id or dc_id == self.client.session.dc_id
        if home and not media_connection:
            return main_sender(self.client)
        if home:
            return await self._borrow_home()
        return await borrow_exported_sender(self.client, dc_id)

    async def give_back(self, sender: Sender) -> None:
        """Gives back a sender from `borrow`."""
        if sender in self._ours:
            self._give_back_home(sender)
        elif sender is not main_sender(self.client):
            await return_exported_sender(self.client, sender)

    async def close(self) -> None:
        """Closes the home media connection now, if one is open (and waits for idle ones
        still closing). Closing twice is harmless."""
        await _disconnect(self._detach())
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _borrow_home(self) -> Sender:
        async with self._lock:
            if self._sender is None or not sender_connected(self._sender):
                await self._open()
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self._borrows += 1
            return self._sender

    def _give_back_home(self, sender: Sender) -> None:
        if sender is not self._sender:
            return  # closed (client disconnected) since it was borrowed
        self._borrows -= 1
        if self._borrows == 0:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.idle_close, self._close_if_idle)

    async def _open(self) -> None:
        await _disconnect(self._detach())  # a sender whose reconnects failed: start afresh
        sender = await self._open_sender(self.client)
        self._ours.add(sender)
        self._sender, self._borrows = sender, 0
        self._watch = asyncio.ensure_future(self._close_with_client(sender))

    async def _close_with_client(self, sender: Sender) -> None:
        try:
            await self.client.disconnected
        except Exception:
            pass  # the main connection failed for good: close ours all the same
        if self._sender is sender:
            self._detach()
        await close_sender(sender)

    def _close_if_idle(self) -> None:
        self._idle = None
        if self._borrows == 0 and self._sender is not None:
            log.debug("closing the idle media connection to dc %s", self._sender.dc_id)
            # Detached now, not in the task: a borrow in between gets a new sender.
            task = asyncio.ensure_future(_disconnect(self._detach()))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _detach(self) -> Sender:
        """Drops the current sender and what watches it; returns it for the caller to close."""
        sender = self._sender
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        if self._idle is not None:
            self._idle.cancel()
        self._sender, self._borrows, self._watch, self._idle = None, 0, None, None
        return sender


async def _disconnect(sender: Sender) -> None:
    if sender is not None:
        await close_sender(sender)


class MediaClient(Protocol):
    """What the downloader needs of an account: its media connections (a `TeleClient`)."""

    @property
    def media_connections(self) -> MediaConnections: ...


# -- one download ---------------------------------------------------------------------------


async def download_media(
    client: MediaClient,
    media: Media,
    path: str | os.PathLike[str],
    *,
    parts_in_flight: int = 8,
    part_size: int = MIB,
    done_parts: set[int] | None = None,
    refresh_reference: RefreshReference | None = None,
    on_part: OnPart | None = None,
    media_connection: bool = True,
) -> None:
    """Downloads `media` with `client` (the TeleClient of the account it is bound to) into
    `path`, over `client.media_connections`.

    Part `i` covers bytes [i × part_size, (i + 1) × part_size) and is written at that
    offset; the file is created if missing and never truncated before the end, so a
    download resumes: `done_parts` names the parts already in the file (it is updated in
    place), and `on_part(index, nbytes)` is called after each part is written, for the
    caller to persist. Keep `part_size` the same across resumes.

    Raises `FloodWait` (the caller decides to wait; progress is kept), `AccountUnusable`
    (the account was banned or logged out meanwhile), `TelegramError` (any other Telegram
    refusal, FILE_REFERENCE_EXPIRED when `refresh_reference` is None or keeps failing), or
    `ConnectionError` when the connection stays down after retries. A dropped connection
    is otherwise survived: Telethon reconnects and resends, a part that failed is asked
    again.

    `refresh_reference()` is awaited on FILE_REFERENCE_EXPIRED (once, however many parts
    met it) and must return the file's new reference for the same account (fetch the
    message again); `media.file_reference` is updated and the download continues.

    A file of unknown size (`media.size` ≤ 0) is fetched until a short part; `done_parts`
    is ignored then.

    `media_connection`: a file on the account's home DC is fetched over the account's
    media connection (see `MediaConnections`), not the main one (measured on the emulator,
    a loaded 2-core machine: get_messages took a median ~180–250 ms during a download on
    the shared connection, ~20–75 ms with the media connection, ~2 ms idle).
    Files on other DCs always use Telethon's exported sender.
    """
    check_part_size(part_size)
    if parts_in_flight < 1:
        raise ValueError("parts_in_flight must be at least 1")
    loop = asyncio.get_running_loop()
    # Opened inline: one syscall, and an fd opened in a thread would leak if we were
    # cancelled while waiting for it.
    fd = _open_spool(os.fspath(path))
    job = _Job(
        client.media_connections,
        media,
        fd,
        part_size,
        done_parts,
        refresh_reference,
        on_part,
        media_connection,
    )
    try:
        await job.borrow(media.dc_id)
        await job.run(parts_in_flight)
        await loop.run_in_executor(None, os.ftruncate, fd, job.total_size())
    finally:
        await job.settle_writes()
        await job.release()
        os.close(fd)


def _open_spool(path: str) -> int:
    # O_NOFOLLOW: the spool path is ours, a symlink planted there is not followed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o600)


def _pwrite_all(fd: int, data: Part, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return len(data)


class _Job:
    """The state the part workers of one download share."""

    def __init__(
        self,
        connections: MediaConnections,
        media: Media,
        fd: int,
        part_size: int,
        done_parts: set[int] | None,
        refresh_reference: RefreshReference | None,
        on_part: OnPart | None,
        media_connection: bool,
    ) -> None:
        self.connections = connections
        self.media = media
        self.fd = fd
        self.part_size = part_size
        self.sized = media.size > 0
        self.done = done_parts if done_parts is not None else set()
        self.refresh_reference = refresh_reference
        self.on_part = on_part
        self.media_connection = media_connection
        self.sender: Sender = None
        self.refreshes = 0
        self.lock = asyncio.Lock()  # one reference refresh / DC switch at a time
        self.next_index = 0
        self.end_index: int | None = None  # unknown size: the short part's index
        self.end_bytes = 0
        self.writes: set[asyncio.Future[int]] = set()
        self.todo: Iterator[int] | None = None
        self.ceiling = 1  # parts_in_flight, the bound of the account's window (run)
        self.failed: list[BaseException] = []  # the parts' errors, first first
        if self.sized:
            n = part_count(media.size, part_size)
            self.todo = iter([i for i in range(n) if i not in self.done])
        else:
            self.done.clear()

    # -- the connection -----------------------------------------------------------------

    async def borrow(self, dc_id: int) -> None:
        """A sender for the file's DC (see `MediaConnections.borrow`). The new sender is
        in place before the old one is given back, so a part never sees none."""
        old = self.sender
        log.debug("file %s on dc %d: borrowing a sender", self.media.key, dc_id)
        try:
            self.sender = await self.connections.borrow(
                dc_id, media_connection=self.media_connection
            )
        except _FLOOD_ERRORS as e:
            raise FloodWait(e.seconds, account=self.media.account) from e
        except errors.RPCError as e:
            raise _domain_error(e, self.media.account) from e
        if old is not None:
            await self.connections.give_back(old)

    async def release(self) -> None:
        if self.sender is not None:
            await self.connections.give_back(self.sender)
        self.sender = None

    async def settle_writes(self) -> None:
        """Waits for writes still running in threads: the fd must not be closed (and its
        number reused by another file) under a pwrite, even when the download is
        cancelled."""
        if self.writes:
            await asyncio.gather(*self.writes, return_exceptions=True)

    # -- the parts ----------------------------------------------------------------------

    def next_part(self) -> int | None:
        if self.todo is not None:
            return next(self.todo, None)
        if self.end_index is not None and self.next_index > self.end_index:
            return None
        index = self.next_index
        self.next_index += 1
        return index

    def total_size(self) -> int:
        if self.sized:
            return self.media.size
        return (self.end_index or 0) * self.part_size + self.end_bytes

    async def run(self, parts_in_flight: int) -> None:
        self.ceiling = parts_in_flight
        workers = [asyncio.create_task(self.worker()) for _ in range(parts_in_flight)]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            # The first to fail, not any of `done`: a flood wait's own error (Telethon's,
            # for the account's state), not a part that then met the wait it set.
            failed = [e for t in done if (e := t.exception()) is not None]
            if failed:
                raise next((e for e in self.failed if e in failed), failed[0])
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while (index := self.next_part()) is not None:
            try:
                data, release = await self.fetch(index)
            except Exception as e:
                self.failed.append(e)
                raise
            # The part keeps its place in the window until it is written: the window bounds
            # the parts held in memory (a slow disk slows the download, it does not pile
            # parts up), and its throughput is what reaches the file.
            try:
                nbytes = len(data)
                if not self.accept(index, data):
                    continue
                if data:
                    offset = index * self.part_size
                    write = loop.run_in_executor(None, _pwrite_all, self.fd, data, offset)
                    self.writes.add(write)
                    write.add_done_callback(self.writes.discard)
                    # Shielded: a cancelled worker leaves its write running; settle_writes
                    # waits.
                    await asyncio.shield(write)
            finally:
                # Not kept while this worker waits for its next place: the parts_in_flight
                # workers held a written part each (1 MB), beyond the window (issue 14:
                # 64 workers, a window of 16-32, the server's peak RSS 145 MB, not 113).
                del data
                release(nbytes)
            self.done.add(index)
            if self.on_part is not None:
                self.on_part(index, nbytes)

    def accept(self, index: int, data: Part) -> bool:
        """Checks a part's length: full, or the file's last part; False for a part past
        the end of a file of unknown size."""
        if self.sized:
            expected = min(self.part_size, self.media.size - index * self.part_size)
            if len(data) != expected:
                raise TelegramError(
                    "FILE_PART_SIZE",
                    f"FILE_PART_SIZE: part {index} has {len(data)} bytes, not {expected}",
                )
            return True
        if self.end_index is not None and index > self.end_index:
            return False
        if len(data) < self.part_size:
            self.end_index, self.end_bytes = index, len(data)
        return True

    async def fetch(self, index: int) -> tuple[Part, Release]:
        """One part, surviving what can be survived (see download_media), and what gives
        its place in the window back (call it with the bytes kept, once they are written)."""
        failures = 0
        while True:
            reference, sender = self.media.file_reference, self.sender
            request = functions.upload.GetFileRequest(
                location=self.media.location(),
                offset=index * self.part_size,
                limit=self.part_size,
            )
            try:
                result, release = await self.get(sender, request)
            except _REFERENCE_ERRORS:
                await self.refresh(reference)
                continue
            except errors.FileMigrateError as e:
                await self.switch_dc(sender, e.new_dc)
                continue
            except _FLOOD_ERRORS as e:
                if self.connections.pace.flood(e.seconds):
                    self.connections.window(self.media.dc_id, self.ceiling).flood()
                raise FloodWait(e.seconds, account=self.media.account) from e
            except TRANSIENT as e:
                # Telethon's _call already retried these; a few more tries, then give up.
                failures += 1
                if failures > _CONNECTION_RETRIES:
                    raise _domain_error(e, self.media.account) from e
                log.info("file %s part %d: %s, retrying", self.media.key, index, type(e).__name__)
                await asyncio.sleep(_RETRY_DELAY * failures)
                continue
            except errors.RPCError as e:
                raise _domain_error(e, self.media.account) from e
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
                failures += 1
                if failures > _CONNECTION_RETRIES:
                    raise ConnectionError(f"part {index}: {e!r}") from e
                log.info("file %s part %d: %r, retrying", self.media.key, index, e)
                await asyncio.sleep(_RETRY_DELAY * failures)
                continue
            if not isinstance(result, types.upload.File):
                release(None)
                # FileCdnRedirect: only sent to clients that set cdn_supported; we don't.
                name = type(result).__name__
                raise TelegramError("FILE_CDN_REDIRECT", f"FILE_CDN_REDIRECT: unexpected {name}")
            # A view of the decrypted answer on the media connection (MediaState), bytes on
            # the others: either is written as it is, never copied here.
            part: Part = result.bytes
            return part, release

    async def get(self, sender: Sender, request: Any) -> tuple[Any, Release]:
        """One getFile, in its turn: a place in the account's window on the file's DC, the
        account's pace; the bytes are what the pace learns from. The answer comes with what
        gives the place back (the window learns from when that is called); on an error the
        place is given back here."""
        window = self.connections.window(self.media.dc_id, self.ceiling)
        pace = self.connections.pace
        slot = await window.acquire()
        try:
            if waiting := pace.waiting():
                # Telegram's wait on this account's getFile still runs (another download
                # met it): nothing is sent, the caller waits as for its own.
                raise FloodWait(math.ceil(waiting), account=self.media.account)
            async with pace.turn(self.part_bytes(request.offset)):
                window.sent(slot)
                result = await call(self.connections.client, sender, request)
                pace.received(len(getattr(result, "bytes", b"")))
        except BaseException:
            window.release(slot, None)
            raise
        return result, functools.partial(window.release, slot)

    def part_bytes(self, offset: int) -> int:
        """The most a part at `offset` can carry: what the pace charges it (a small photo
        charged a whole part paced a throttled account to a fraction of its budget)."""
        if self.sized:
            return max(1, min(self.part_size, self.media.size - offset))
        return self.part_size

    async def refresh(self, used: bytes) -> None:
        async with self.lock:
            if self.media.file_reference != used:
                return  # another part already refreshed it
            if self.refresh_reference is None or self.refreshes >= _MAX_REFRESHES:
                raise TelegramError("FILE_REFERENCE_EXPIRED")
            self.refreshes += 1
            log.info("file %s: reference expired, refreshing", self.media.key)
            fresh = await self.refresh_reference()
            if not fresh or fresh == used:
                raise TelegramError(
                    "FILE_REFERENCE_EXPIRED",
                    "FILE_REFERENCE_EXPIRED: the refreshed reference is not new",
                )
            self.media.file_reference = bytes(fresh)

    async def switch_dc(self, used: Sender, dc_id: int) -> None:
        async with self.lock:
            if self.sender is not used:
                return
            log.info("file %s lives on dc %d, not %d", self.media.key, dc_id, self.media.dc_id)
            self.media.dc_id = dc_id
            await self.borrow(dc_id)


def _domain_error(error: errors.RPCError, account: str) -> TgcError:
    name = rpc_error_name(error)
    fate = account_fate(error)
    if fate is not None:
        return AccountUnusable(account, fate, name)
    return TelegramError(name)
