"""The session file of one account: who may open it (`SessionLock`) and how it is written
(`EntitySession`: Telethon's SQLiteSession, minus rewriting what it has).

One process owns a session file: `SessionLock` holds an exclusive `flock` on
`<session>.lock` for as long as an account (or a login) has the file open.

Telethon hands the users and chats of every update it receives to
`Session.process_entities`, and SQLiteSession answers with an ``INSERT OR REPLACE`` of every
one of them, changed or not. A subscribed channel brings the same channel (and often the
same users) with each post, so the session rewrote the same rows for every message: ~20 µs
of the ~120 µs Telethon spends per update here (bench/events.py --push), and WAL bytes.

`EntitySession` writes a row only when what Telethon stores of the entity (its access hash,
username, phone, display name) may have changed since this process wrote it. The file stays
Telethon's own format: any Telethon can open it, and the entity cache by id and by username
(what model/resolver.py relies on) sees the same rows.

Its update state (the `update_state` table Telethon loads at connect to catch up) is
written only by `save_update_state`: Telethon's own writes (each minute, and at disconnect
after cancelling the handlers still running) may be ahead of what the account's updates
consumer was handed, which a catch-up would then never bring again (see
model/updatefeed.py).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from telethon import utils
from telethon.sessions import SQLiteSession
from telethon.tl import types
from telethon.tl.tlobject import TLObject

from common.errors import ConfigError
from model.telethon_internals import UpdateState, session_execute

_ACCOUNT_ROW = 0  # Telethon's id of the account's own row in `update_state`

# What an entity's row is made of (model: MemorySession._entity_to_row): if none of these
# changed, neither did the row. `min` entities carry no usable hash and make no row.
_ROW_FIELDS = ("access_hash", "min", "username", "phone", "first_name", "last_name", "title")


class SessionLock:
    """An exclusive `flock` on `<session>.lock`: one process owns a session file.

    Two processes on one session would share its auth key, which Telegram answers with
    AUTH_KEY_DUPLICATED and kills the key for good; refusing to start is far cheaper.
    """

    def __init__(self, session_path: Path) -> None:
        self.path = session_path.with_name(session_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock; ConfigError when another process holds it."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                "telegram.sessions_dir",
                str(self.path.with_suffix("")),
                "the session file is in use by another process (lock held on "
                f"{self.path}); a session file can serve one process only",
            ) from None
        self._fd = fd

    def release(self) -> None:
        """Frees the lock (harmless when not held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# Telethon ships no type information (no py.typed): its classes are Any to mypy.
class EntitySession(SQLiteSession):  # type: ignore[misc]
    """SQLiteSession that skips entities whose row it wrote already, unchanged.

    `remember` bounds the memory of written rows (one small tuple per entity); past it the
    memory starts again empty, which only costs a rewrite of each entity once more.
    """

    def __init__(self, session_id: str | None = None, *, remember: int = 100_000) -> None:
        super().__init__(session_id)
        self._remember = remember
        self._written: dict[tuple[type, int], tuple[Any, ...]] = {}
        self.skipped = 0  # entities not rewritten (for tests and curiosity)
        self._state_written: UpdateState | None = None

        if session_id is not None and session_id != ":memory:":
            _write_ahead(self)

    def set_update_state(self, entity_id: int, state: Any) -> None:
        """Telethon's own writes of its update state: ignored (see the module docstring)."""

    def save_update_state(self, state: UpdateState) -> None:
        """Writes the account's update state (the rows that changed since the last write;
        channels no longer tracked lose theirs) and commits."""
        before = self._state_written
        if state == before:
            return
        account = (state.pts, state.qts, state.date, state.seq)
        if before is None or account != (before.pts, before.qts, before.date, before.seq):
            row = types.updates.State(*account, unread_count=0)
            super().set_update_state(_ACCOUNT_ROW, row)
        old = before.channels if before is not None else {}
        for channel_id, pts in state.channels.items():
            if old.get(channel_id) != pts:
                row = types.updates.State(pts, 0, state.date, 0, unread_count=0)
                super().set_update_state(channel_id, row)
        gone = [c for c in old if c not in state.channels] if before is not None else None
        self._forget_channels(gone, keep=list(state.channels))
        self.save()
        self._state_written = state

    def _forget_channels(self, gone: list[int] | None, keep: list[int]) -> None:
        # None: what the file holds is not known yet (the first write): keep only `keep`.
        if gone is None:
            marks = ",".join("?" * len(keep))
            where = f"id != {_ACCOUNT_ROW}" + (f" and id not in ({marks})" if keep else "")
            session_execute(self, f"delete from update_state where {where}", *keep)
        for channel_id in gone or ():
            session_execute(self, "delete from update_state where id = ?", channel_id)

    def process_entities(self, tlo: Any) -> None:
        if not self.save_entities:
            return
        fresh = [e for e in _entities_of(tlo) if self._changed(e)]
        if fresh:
            super().process_entities(fresh)  # a list: Telethon takes it as the entities

    def _changed(self, entity: Any) -> bool:
        if not isinstance(entity, TLObject) or not hasattr(entity, "id"):
            return False  # Telethon makes no row of these either
        key = (type(entity), entity.id)
        signature = tuple(getattr(entity, f, None) for f in _ROW_FIELDS)
        if self._written.get(key) == signature:
            self.skipped += 1
            return False
        if len(self._written) >= self._remember:
            self._written.clear()
        self._written[key] = signature
        return True

    def get_entity_rows_by_username(self, username: str) -> Any:
        # Telethon clears the username of the older of two rows that claim one (someone took
        # a freed username): a row changed behind our back, so forget what was written.
        claims = session_execute(self, "select count(*) from entities where username = ?", username)
        if claims and claims[0] > 1:
            self._written.clear()
        return super().get_entity_rows_by_username(username)

    def set_dc(self, dc_id: int, server_address: str, port: int) -> None:
        # A new DC is a new auth key and, for Telethon, possibly a cleared entity table.
        self._written.clear()
        super().set_dc(dc_id, server_address, port)


def _write_ahead(session: SQLiteSession) -> None:
    """The file in WAL mode, committed without waiting for the disk (synchronous=NORMAL).

    With Telethon's rollback journal each commit waited for two fsyncs, ~14 ms on this
    kind of disk, on the event loop: each account commits at least twice as it starts
    (Telethon's connect, the first update state), so 1,000 accounts blocked the loop for
    ~30 s before all were usable. In WAL a commit is ~0.1 ms. A crash of the process loses
    nothing; a crash of the machine may lose the last commits (entities and an update
    state, found again by a resolution or a longer catch-up), never the file. The file
    stays a SQLite database any Telethon opens; while it is open, `<file>-wal` and
    `<file>-shm` sit beside it (two more descriptors per account), and a clean close
    folds them back in."""
    session_execute(session, "pragma journal_mode = wal")
    session_execute(session, "pragma synchronous = normal")


def _entities_of(tlo: Any) -> list[Any]:
    """The entities Telethon's `_entities_to_rows` would look at, in its order."""
    if not isinstance(tlo, TLObject) and utils.is_list_like(tlo):
        return list(tlo)
    found = []
    for one in ("user", "chat"):
        if hasattr(tlo, one):
            found.append(getattr(tlo, one))
    for many in ("chats", "users"):
        value = getattr(tlo, many, None)
        if value is not None and utils.is_list_like(value):
            found.extend(value)
    return found
