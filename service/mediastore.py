"""What the media pipeline keeps across a stop or a crash: the `media` table and the spool.

One row per key (the mmh3 hash of the Telegram file): its state, the `Media` (with the file
reference last refreshed), the parts already in the spool file, the url once stored, the
reason once failed, and whether the media.stored callback returned. The spool holds
`{key}.part`, the file being downloaded and then uploaded.

The statements are single-row writes in WAL mode with synchronous=NORMAL (no fsync at
commit: tens of microseconds), cheap enough to run on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from common.sqlite import open_db, write
from common.utils import utc_iso
from model.media import Media

log = logging.getLogger(__name__)


class State(StrEnum):
    """A media item's state, as GET /api/v1/media/KEY shows it."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    UPLOADING = "uploading"
    STORED = "stored"
    FAILED = "failed"


UNFINISHED = (State.PENDING, State.DOWNLOADING, State.UPLOADING)


@dataclass(eq=False)
class Item:
    """One unfinished media item of this process: its row, plus what only memory holds."""

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
    def from_row(cls, row: sqlite3.Row) -> Item:
        """The item of a row; ValueError, TypeError or KeyError for a row it can't read."""
        return cls(
            media=Media.from_json(row["media"]),
            part_size=row["part_size"],
            state=State(row["state"]),
            done_parts=decode_parts(row["done_parts"]),
            url=row["url"],
            error=row["error"],
        )


MIGRATIONS = (
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
    # Files an answer described while media.auto_download=false queued nothing: what
    # POST /api/v1/media/KEY needs to download one later (its newest Media: reference,
    # account, message). A key already in `media` needs no row here.
    """
    CREATE TABLE seen (
        key TEXT PRIMARY KEY,
        media TEXT NOT NULL,                   -- Media.to_json()
        seen_at REAL NOT NULL
    )
    """,
)


class MediaTable:
    """The `media` table: one row per key, written by this process only."""

    def __init__(self, path: str | Path, clock: Callable[[], float]) -> None:
        self._conn = open_db(path, "media", MIGRATIONS)
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
        """Pending, downloading and uploading rows, oldest first."""
        return self._conn.execute(
            "SELECT * FROM media WHERE state IN ('pending', 'downloading', 'uploading')"
            " ORDER BY created_at"
        ).fetchall()

    def unnotified(self) -> list[str]:
        """Keys stored but whose media.stored callback has not returned yet."""
        rows = self._conn.execute(
            "SELECT key FROM media WHERE state = 'stored' AND notified = 0 ORDER BY updated_at"
        ).fetchall()
        return [r["key"] for r in rows]

    def insert_pending(self, item: Item) -> None:
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
            )  # fmt: skip

    def save(self, item: Item) -> None:
        """The item's state, parts, url, error and Media, in one statement."""
        with write(self._conn) as c:
            c.execute(
                "UPDATE media SET state = ?, media = ?, done_parts = ?, url = ?, error = ?,"
                " updated_at = ? WHERE key = ?",
                (
                    str(item.state), item.media.to_json(), encode_parts(item.done_parts),
                    item.url, item.error, self._clock(), item.key,
                ),
            )  # fmt: skip

    def save_parts(self, item: Item) -> None:
        with write(self._conn) as c:
            c.execute(
                "UPDATE media SET done_parts = ? WHERE key = ?",
                (encode_parts(item.done_parts), item.key),
            )

    def save_media(self, item: Item) -> None:
        with write(self._conn) as c:
            c.execute("UPDATE media SET media = ? WHERE key = ?", (item.media.to_json(), item.key))

    def fail_unreadable(self, key: str, error: str) -> None:
        with write(self._conn) as c:
            c.execute(
                "UPDATE media SET state = 'failed', error = ?, updated_at = ? WHERE key = ?",
                (error, self._clock(), key),
            )

    def remember(self, media: Media) -> None:
        """A file an answer described without queueing it (the newest Media wins)."""
        with write(self._conn) as c:
            c.execute(
                "INSERT INTO seen (key, media, seen_at) VALUES (?, ?, ?) ON CONFLICT (key)"
                " DO UPDATE SET media = excluded.media, seen_at = excluded.seen_at",
                (media.key, media.to_json(), self._clock()),
            )

    def seen(self, key: str) -> Media | None:
        """The Media `remember` kept for `key`; None for a key no answer described (or a
        record this code can't read)."""
        row = self._conn.execute("SELECT media FROM seen WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return Media.from_json(row["media"])
        except (ValueError, TypeError, KeyError) as e:
            log.warning("media %s: unreadable seen record: %s", key, e)
            return None

    def mark_notified(self, key: str) -> None:
        with write(self._conn) as c:
            c.execute("UPDATE media SET notified = 1 WHERE key = ?", (key,))


def public_record(row: sqlite3.Row) -> dict[str, Any]:
    """The record of GET /api/v1/media/KEY (and of the media.stored event)."""
    return {
        "key": row["key"],
        "type": row["type"],
        "state": row["state"],
        "size": row["size"],
        "mime_type": row["mime_type"],
        "file_name": row["file_name"],
        "url": row["url"],
        "error": row["error"],
        "updated_at": utc_iso(row["updated_at"]),
    }


def not_queued(media: Media) -> dict[str, Any]:
    """`public_record`'s shape for a file the pipeline was not asked to download."""
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


def origin(row: sqlite3.Row) -> dict[str, Any]:
    """Where the stored file was seen: the account, peer and message of its Media."""
    media = Media.from_json(row["media"])
    return {"account": media.account, "peer_id": media.peer_id, "msg_id": media.msg_id}


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
    """encode_parts' inverse: "0-2,5" → {0, 1, 2, 5}."""
    parts: set[int] = set()
    for chunk in filter(None, text.split(",")):
        first, _, last = chunk.partition("-")
        parts.update(range(int(first), int(last or first) + 1))
    return parts


class SpoolFiles:
    """The spool folder: `{key}.part` per item on its way. A file is deleted off the event
    loop (freeing a large file's blocks takes a while: 0.3 s per GB measured on this ext4),
    renamed first, so the key's path is free at once for a new download of it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._discards = itertools.count()
        self._deleting: set[asyncio.Future[None]] = set()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.part"

    def discard(self, key: str) -> None:
        """Deletes the key's spool file, if any, in a thread."""
        path = self.path(key)
        trash = path.with_name(f"{key}.{next(self._discards)}.del")
        try:
            path.rename(trash)
        except FileNotFoundError:
            return
        future = asyncio.get_running_loop().run_in_executor(None, _unlink, trash)
        self._deleting.add(future)
        future.add_done_callback(self._deleting.discard)

    async def settle(self) -> None:
        """Waits for the deletions under way."""
        await asyncio.gather(*self._deleting, return_exceptions=True)

    def remove_orphans(self, keep: Container[str]) -> None:
        """Spool files of no key in `keep` (a crash after `stored`, before the unlink), and
        deletions a stop or a crash interrupted. Blocking: run it in a thread."""
        for path in self.folder.glob("*.del"):
            _unlink(path)
        for path in self.folder.glob("*.part"):
            if path.stem not in keep:
                log.info("removing orphan spool file %s", path.name)
                _unlink(path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
