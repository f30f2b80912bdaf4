"""The server's nonce store: every nonce accepted within the window, in memory for the
check and in an append-only journal on disk, so that a captured request can't be replayed
after a restart, nor after a SIGKILL.

`JournalNonceStore` is the `service.cryptor.NonceStore` that start.py gives the `Signer`.

Lookups. A set of the accepted `nonce_key`s (60-bit ints: 32 bytes each in CPython) and,
for exact expiry, per-second buckets (`until` second -> its keys). A key in the set whose
second has passed is forgotten by the upkeep (off the request path, once a second, in
batches); a request that meets such a key first purges what expired, so an expired nonce
never refuses a request, and a live one always does.

Durability. Before `add` returns True it has `os.write`n one 16-byte record (key, until) to
an O_APPEND file: the record is in the operating system's hands when the request runs, so
a SIGKILL (or any crash of the process) loses no nonce whose request ran. Nothing is
fsynced on the request path: the upkeep fsyncs the journals on a thread once a second, so a
power cut or kernel crash can lose up to about a second of nonces (those requests could
then be replayed within their window).

Files. data.dir/nonces/<start>-<end>.journal holds the records whose `until` is in
[start, end), one file per `window` seconds (epoch = until // window): a 16-byte header
(`MAGIC`), then the records. At start the files that may still hold live nonces are read
(a torn trailing record, left by a short write, is cut off; a record whose `until` is not
in its file's range is skipped and counted), the expired ones deleted; at run time the
upkeep deletes a file once none of its nonces can be live. A file (or the folder) that
can't be read is moved aside (`.corrupt`) with a warning, and the store starts without it.

Refusing is the last resort (`RateLimited`, never forgetting a live nonce to make room):
at `MAX_LIVE` live nonces (memory: ~90 bytes per nonce, see the constant), until the
earliest expires (within the window for timestamps not from the future); or when a record
can't be written (a full disk, an I/O error), `RETRY_ON_ERROR` seconds, for as long as
that lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import re
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from common.errors import RateLimited

log = logging.getLogger(__name__)

RECORD = struct.Struct("<QQ")  # key, until (unix seconds): 16 bytes, written whole
MAGIC = b"tgc-nonces\x00\x00\x00\x00\x00\x01"  # a journal's header, one record long
# Memory, measured (bench/nonces.py): ~90 bytes per live nonce (the int 32, its set slot
# 28-37 at the set's load factor, its bucket's list slot ~9, the allocator's slack), 80 MiB
# at 900,000 (3,000 requests/s over 300 s). The cap, 2,000,000 (~170 MiB, measured), is
# 6,600 requests/s over the default 300 s window: 1.75 times what the server can answer
# (~3,800/s), so honest traffic never meets it; a longer window reaches it at a lower rate
# (550/s at 3,600 s), memory staying bounded whatever comes.
MAX_LIVE = 2_000_000
RETRY_ON_ERROR = 10.0  # seconds: Retry-After while the journal can't be written
_WARN_EVERY = 60.0  # seconds between two warnings of the same refusal
_NAME = re.compile(r"([0-9]{1,12})-([0-9]{1,12})\.journal")

Write = Callable[[int, bytes], int]  # os.write's signature (tests inject a failing one)


class _Unreadable(Exception):
    """A journal that is not one (bad header, bad name): moved aside."""


@dataclass
class _Journal:
    path: Path
    end: int  # the file holds untils in [start, end)
    fd: int = -1  # opened for appending on its first write


class JournalNonceStore:
    """The accepted nonces in memory and in append-only journals (see the module docstring).

    `add` and `live` run on the event loop (this process is the folder's only writer: the
    pid file locks data.dir). `start()` runs the upkeep (expiry, file deletion, fsync) every
    `every` seconds; `stop()` ends it and closes the files. Keys are ints in [0, 2**64);
    `service.cryptor.nonce_key` gives them below 2**60 (32-byte ints).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        window: int,
        max_live: int = MAX_LIVE,
        clock: Callable[[], float] = time.time,
        every: float = 1.0,
        purge_batch: int = 1000,
        write: Write = os.write,
    ) -> None:
        if window <= 0 or max_live <= 0 or purge_batch <= 0 or every <= 0:
            raise ValueError("window, max_live, purge_batch and every must be positive")
        self.folder = Path(folder)
        self.window = window
        self.max_live = max_live
        self._clock = clock
        self._every = every
        self._purge_batch = purge_batch
        self._write = write
        self._keys: set[int] = set()  # accepted keys, expired ones not purged yet included
        self._buckets: dict[int, list[int]] = {}  # until second -> its keys
        self._seconds: list[int] = []  # heap of the buckets' seconds
        self._files: dict[tuple[int, int], _Journal] = {}  # (start, end) -> journal
        self._retired: list[int] = []  # fds of journals given up after a failed write
        # The journal of the last write: most requests' `until` falls in it.
        self._cur_start = self._cur_end = 0
        self._cur_fd = -1
        self.writes = 0  # records written so far
        self.bad_records = 0  # records skipped at load (not in their file's range)
        self._synced = 0
        self._folder_changed = False  # a journal created or deleted since the last fsync
        self._warned: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._upkeep: asyncio.Task[None] | None = None
        self._load()

    # --- NonceStore ---

    def add(self, key: int, until: int, now: float) -> bool:
        """True: recorded (in the OS's hands when this returns); False: live, a replay."""
        keys = self._keys
        if key in keys and not self._expired(key, now):
            return False
        if len(keys) >= self.max_live:
            self._make_room(now)
        if self._cur_start <= until < self._cur_end:
            fd = self._cur_fd
        else:
            fd = self._journal_for(until)
        record = RECORD.pack(key, until)
        try:
            written = self._write(fd, record)
        except OSError as e:
            raise self._failed(fd, e) from None
        if written != RECORD.size:
            raise self._failed(fd, OSError(f"short write ({written} of {RECORD.size} bytes)"))
        self.writes += 1
        keys.add(key)
        bucket = self._buckets.get(until)
        if bucket is None:
            self._buckets[until] = [key]
            heapq.heappush(self._seconds, until)
        else:
            bucket.append(key)
        return True

    def live(self, now: float) -> int:
        return sum(len(keys) for second, keys in self._buckets.items() if second >= now)

    def __len__(self) -> int:
        """Keys held in memory, expired ones not purged yet included: what the cap counts."""
        return len(self._keys)

    # --- upkeep ---

    def purge(self, now: float, limit: int | None = None) -> int:
        """Forgets up to `limit` (None: all) expired keys, the earliest seconds first."""
        seconds, buckets, keys = self._seconds, self._buckets, self._keys
        removed = 0
        while seconds and seconds[0] < now:
            bucket = buckets[seconds[0]]
            take = len(bucket) if limit is None else min(len(bucket), limit - removed)
            if take:
                keys.difference_update(bucket[-take:])
                del bucket[-take:]
                removed += take
            if bucket:
                break  # the limit is reached
            del buckets[heapq.heappop(seconds)]
        return removed

    async def start(self) -> None:
        """Runs the upkeep every `every` seconds until `stop()`."""
        if self._upkeep is None:
            self._stopping.clear()
            self._upkeep = asyncio.create_task(self._upkeep_loop(), name="nonce-store-upkeep")

    async def stop(self) -> None:
        """Ends the upkeep (letting a running fsync finish) and closes the files."""
        if self._upkeep is not None:
            self._stopping.set()
            await self._upkeep
            self._upkeep = None
        self.close()

    def close(self) -> None:
        """Closes the journals (idempotent); every accepted nonce is written already."""
        for journal in self._files.values():
            if journal.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(journal.fd)
                journal.fd = -1
        self._close_retired()
        self._cur_start = self._cur_end = 0
        self._cur_fd = -1

    async def upkeep(self) -> None:
        """One round: the expired keys in batches (yielding to requests between them), the
        journals no nonce is live in deleted, then an fsync of what was written, on a
        thread."""
        now = self._clock()
        while True:
            if self.purge(now, self._purge_batch) < self._purge_batch:
                break
            await asyncio.sleep(0)  # the requests' turn between two batches
        self.drop_expired(now)
        self._close_retired()  # no fsync can be running: this task is the only one
        if self.writes != self._synced or self._folder_changed:
            self._synced, self._folder_changed = self.writes, False
            fds = [j.fd for j in self._files.values() if j.fd >= 0]
            await asyncio.to_thread(self._sync, fds)

    def drop_expired(self, now: float) -> None:
        """Deletes the journals whose every `until` (< end) has passed."""
        for span, journal in list(self._files.items()):
            if journal.end - 1 < now:
                del self._files[span]
                if journal.fd >= 0:
                    if journal.fd == self._cur_fd:
                        self._cur_start = self._cur_end = 0
                        self._cur_fd = -1
                    os.close(journal.fd)
                self._unlink(journal.path)

    async def _upkeep_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every)
            try:
                await self.upkeep()
            except Exception as e:  # the next round tries again; requests go on meanwhile
                self._warn("upkeep", "nonce store %s: upkeep failed: %s", self.folder, e)

    def _sync(self, fds: Iterable[int]) -> None:
        # Power-loss durability, about once a second (a SIGKILL needs none of it).
        for fd in fds:
            os.fsync(fd)
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    # --- the rare paths of add ---

    def _expired(self, key: int, now: float) -> bool:
        """A key met again: a replay, unless it expired and was not purged yet."""
        self.purge(now)
        return key not in self._keys

    def _make_room(self, now: float) -> None:
        """At the cap: forget what expired; if every key is live, refuse until the earliest
        expires rather than forget a live nonce (a replay hole)."""
        self.purge(now)
        if len(self._keys) < self.max_live:
            return
        self._warn("full", "nonce store full (%d live nonces); refusing requests", len(self))
        raise RateLimited(self._seconds[0] - now, "too many signed requests in the time window")

    def _journal_for(self, until: int) -> int:
        """The fd of the journal `until` belongs in, opened (created) if need be."""
        start = until - until % self.window
        end = start + self.window
        journal = self._files.get((start, end))
        if journal is None:
            journal = _Journal(self.folder / f"{start}-{end}.journal", end)
            self._files[(start, end)] = journal
        if journal.fd < 0:
            try:
                journal.fd = self._open_for_append(journal.path)
            except OSError as e:
                raise self._failed(-1, e) from None
        self._cur_start, self._cur_end, self._cur_fd = start, end, journal.fd
        return journal.fd

    def _open_for_append(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size % RECORD.size:  # a torn record (or header): appends stay aligned
                size -= size % RECORD.size
                os.ftruncate(fd, size)
            if size == 0:
                self._folder_changed = True
                if self._write(fd, MAGIC) != len(MAGIC):
                    raise OSError(f"short write of {path}'s header")
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no record was acknowledged in it
            os.close(fd)
            raise
        return fd

    def _failed(self, fd: int, error: OSError) -> RateLimited:
        """A record not written: cut what part of it was (appends stay aligned) or, if
        that fails too, give the journal up (the next write reopens it and cuts then)."""
        if fd >= 0:
            try:
                size = os.fstat(fd).st_size
                if size % RECORD.size:
                    os.ftruncate(fd, size - size % RECORD.size)
            except OSError:
                for span, journal in list(self._files.items()):
                    if journal.fd == fd:
                        journal.fd = -1
                        self._retired.append(fd)  # closed by the upkeep, after any fsync
                        del self._files[span]
                self._cur_start = self._cur_end = 0
                self._cur_fd = -1
        self._warn(
            "error", "nonce store %s can't record a nonce (%s); refusing", self.folder, error
        )
        return RateLimited(RETRY_ON_ERROR, "the server can't record the request's nonce now")

    def _close_retired(self) -> None:
        while self._retired:
            with contextlib.suppress(OSError):
                os.close(self._retired.pop())

    def _warn(self, what: str, message: str, *args: object) -> None:
        # Once a minute per kind: a refusal repeats for every request while it lasts.
        now = time.monotonic()
        if now - self._warned.get(what, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[what] = now
            log.warning(message, *args)

    # --- opening ---

    def _load(self) -> None:
        """Reads the journals that may hold live nonces; deletes the expired ones."""
        now = self._clock()
        duplicates: list[tuple[int, int]] = []
        for name in sorted(self._list_folder()):
            match = _NAME.fullmatch(name)
            if match is None:
                continue  # not a journal (one moved aside, say): left alone
            path = self.folder / name
            start, end = int(match[1]), int(match[2])
            if start < end and end - 1 < now:
                self._unlink(path)  # every nonce in it expired
                continue
            try:
                kept = self._read(path, start, end, now, duplicates)
            except (OSError, _Unreadable) as e:
                self._move_aside(path, e)
                continue
            if kept:
                self._files[(start, end)] = _Journal(path, end)
        self._seconds = sorted(self._buckets)  # a sorted list is a heap
        if duplicates:
            self._keep_latest(duplicates)
        if self.bad_records:
            log.warning(
                "nonce store %s: %d records outside their file's range skipped (damaged files?)",
                self.folder,
                self.bad_records,
            )

    def _list_folder(self) -> list[str]:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.listdir(self.folder)
        except OSError as e:
            error = e
        # The server must not stay down for it; what the folder held is lost, and says so.
        aside = self.folder.with_name(f"{self.folder.name}.corrupt-{time.time_ns()}")
        log.warning(
            "nonce store %s is unreadable (%s): moved aside (%s), starting empty; requests "
            "accepted before this start could be replayed within their window",
            self.folder,
            error,
            aside.name,
        )
        self.folder.rename(aside)  # if even that fails, the start fails
        self.folder.mkdir(mode=0o700, parents=True)
        return []

    def _read(
        self, path: Path, start: int, end: int, now: float, duplicates: list[tuple[int, int]]
    ) -> bool:
        """Loads `path`'s live records; False if the file was empty (and is deleted)."""
        if start >= end:
            raise _Unreadable(f"an empty range in its name {path.name}")
        data = path.read_bytes()
        if len(data) < len(MAGIC):
            path.unlink()  # created, header not (all) written: no record was acknowledged
            return False
        if data[: len(MAGIC)] != MAGIC:
            raise _Unreadable("not a nonce journal (bad header)")
        whole = len(data) - len(data) % RECORD.size
        if whole != len(data):
            log.info("nonce store %s: a torn trailing record cut off", path)
            os.truncate(path, whole)
        keys, buckets, bad = self._keys, self._buckets, 0
        for key, until in RECORD.iter_unpack(memoryview(data)[len(MAGIC) : whole]):
            if not start <= until < end:  # damaged (a record of zeros, say)
                bad += 1
            elif until < now:
                continue
            elif key in keys:
                duplicates.append((key, until))
            else:
                keys.add(key)
                bucket = buckets.get(until)
                if bucket is None:
                    buckets[until] = [key]
                else:
                    bucket.append(key)
        self.bad_records += bad
        return True

    def _keep_latest(self, duplicates: list[tuple[int, int]]) -> None:
        # A key recorded twice, both still live: only if the clock went back since (a key is
        # recorded again only once expired). The later `until` is the one to keep.
        latest: dict[int, int] = {}
        for key, until in duplicates:
            latest[key] = max(until, latest.get(key, until))
        for second, bucket in list(self._buckets.items()):
            moved = [k for k in bucket if k in latest and latest[k] > second]
            for key in moved:
                bucket.remove(key)
                self._buckets.setdefault(latest[key], []).append(key)
        for second in [s for s, b in self._buckets.items() if not b]:
            del self._buckets[second]
        self._seconds = sorted(self._buckets)

    def _move_aside(self, path: Path, error: Exception) -> None:
        log.warning(
            "nonce journal %s is unreadable (%s): moved aside (.corrupt); requests accepted "
            "before this start could be replayed within their window",
            path,
            error,
        )
        path.replace(path.with_name(path.name + ".corrupt"))

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
            self._folder_changed = True
        except OSError as e:
            self._warn("unlink", "nonce store: can't delete %s: %s", path, e)
