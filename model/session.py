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

Sealed sessions (opt-in, telegram.session_key): the auth key is stored encrypted,
AES-256-GCM under the 32-byte session key, in the `auth_key` column itself; every other
row and column stays Telethon's. A sealed column is `SEALED_MAGIC | nonce (12) |
ciphertext | tag (16)` (the magic is the associated data), 292 bytes for Telethon's
256-byte keys, never a valid key of its own length. `SessionSeal` seals and opens;
`EntitySession` opens the key at load and seals it at every write (the row is written by
`StoredAuthKeyRow`, model/telethon_internals.py), and refuses a sealed file without the
key, with a wrong one, or a plain file while a key is set (ConfigError naming
telegram.session_key and the file: start.py exits 2). `convert_session` seals or unseals
an existing file atomically: a copy is converted beside it and renamed over it, so a crash
leaves either file whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Literal

from Crypto.Cipher import AES
from Crypto.Random import get_random_bytes
from telethon import utils
from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession
from telethon.tl import types
from telethon.tl.tlobject import TLObject

from common.errors import ConfigError
from model.account import account_label
from model.telethon_internals import StoredAuthKeyRow, UpdateState, session_execute

log = logging.getLogger(__name__)

_SQLITE_READONLY_DBMOVED = 1032  # sqlite3.h: a write to a file renamed or deleted meanwhile
_ACCOUNT_ROW = 0  # Telethon's id of the account's own row in `update_state`

# What an entity's row is made of (model: MemorySession._entity_to_row): if none of these
# changed, neither did the row. `min` entities carry no usable hash and make no row.
_ROW_FIELDS = ("access_hash", "min", "username", "phone", "first_name", "last_name", "title")


SESSION_KEY = "telegram.session_key"  # the setting every sealing error names
SEALED_MAGIC = b"TGCSEAL1"
_NONCE, _TAG = 12, 16


class SessionSeal:
    """AES-256-GCM over an account's auth key, under the 32-byte session key.

    >>> seal = SessionSeal(bytes(32))
    >>> seal.open(seal.seal(b"k" * 256), "x.session") == b"k" * 256
    True
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a session key is 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "<SessionSeal>"  # never the key

    @classmethod
    def from_hex(cls, key: str) -> SessionSeal | None:
        """The seal of telegram.session_key (64 hex characters); None when it is empty."""
        return cls(bytes.fromhex(key)) if key else None

    def seal(self, plain: bytes) -> bytes:
        """The stored form of `plain`: magic, a fresh nonce, ciphertext, tag."""
        nonce = get_random_bytes(_NONCE)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG)
        cipher.update(SEALED_MAGIC)
        body, tag = cipher.encrypt_and_digest(plain)
        return SEALED_MAGIC + nonce + body + tag

    def open(self, sealed: bytes, file: str) -> bytes:
        """The plain key of a sealed column; ConfigError naming the key and `file` when the
        tag does not check (another key sealed it, or the column was altered)."""
        nonce = sealed[len(SEALED_MAGIC) : len(SEALED_MAGIC) + _NONCE]
        body, tag = sealed[len(SEALED_MAGIC) + _NONCE : -_TAG], sealed[-_TAG:]
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG)
        cipher.update(SEALED_MAGIC)
        try:
            return bytes(cipher.decrypt_and_verify(body, tag))
        except ValueError:
            raise ConfigError(
                SESSION_KEY, file, "the session's auth key does not open with this key "
                "(sealed with another key, or altered)"
            ) from None


def is_sealed(column: bytes | None) -> bool:
    """Whether an `auth_key` column holds a sealed key (a plain one is 256 bytes)."""
    return (
        column is not None
        and column.startswith(SEALED_MAGIC)
        and len(column) > len(SEALED_MAGIC) + _NONCE + _TAG
        and len(column) != 256
    )


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
class EntitySession(StoredAuthKeyRow, SQLiteSession):  # type: ignore[misc]
    """SQLiteSession that skips entities whose row it wrote already, unchanged.

    `remember` bounds the memory of written rows (one small tuple per entity); past it the
    memory starts again empty, which only costs a rewrite of each entity once more.
    With a `seal`, the auth key is sealed in the file (see the module docstring); the
    session in memory holds it plain, as Telethon needs it.
    """

    def __init__(
        self,
        session_id: str | None = None,
        *,
        remember: int = 100_000,
        seal: SessionSeal | None = None,
    ) -> None:
        self._seal = seal  # before Telethon's __init__: a new file's row is written in it
        self._identity: tuple[int, int] | None = None  # the file's, once in WAL mode
        self.moved = False  # the file was moved or deleted under it: no more writes
        super().__init__(session_id)
        try:
            self._open_auth_key()
        except ConfigError:
            self.close()
            raise
        self._remember = remember
        self._written: dict[tuple[type, int], tuple[Any, ...]] = {}
        self.skipped = 0  # entities not rewritten (for tests and curiosity)
        self._state_written: UpdateState | None = None

        if session_id is not None and session_id != ":memory:":
            _write_ahead(self)
            self._identity = _file_identity(self.filename)

    def close(self) -> None:
        """Closes the file; one moved or deleted under it first gets what its WAL holds.

        In WAL mode SQLite goes on writing a renamed or deleted file (into `<old name>-wal`)
        but at close it neither folds that WAL into the file nor removes it: the moved file
        would lack what the account learnt since, and a stale WAL left at the old name would
        be replayed into any new session file created there (a re-login), corrupting it."""
        moved = self._identity is not None and _file_identity(self.filename) != self._identity
        if moved:
            with contextlib.suppress(sqlite3.Error):
                self.save()  # a checkpoint takes only what is committed
                session_execute(self, "pragma wal_checkpoint(TRUNCATE)")
        super().close()
        if moved:
            log.warning(
                "the session file of account %s was moved or deleted while it ran: what it "
                "learnt since is in the moved file",
                account_label(Path(self.filename).stem.removesuffix(".session")),
            )
            if not os.path.exists(self.filename):
                for leftover in ("-wal", "-shm"):
                    Path(f"{self.filename}{leftover}").unlink(missing_ok=True)

    def set_update_state(self, entity_id: int, state: Any) -> None:
        """Telethon's own writes of its update state: ignored (see the module docstring)."""

    def save_update_state(self, state: UpdateState) -> None:
        """Writes the account's update state (the rows that changed since the last write;
        channels no longer tracked lose theirs) and commits."""
        before = self._state_written
        if state == before or self.moved:
            return
        try:
            self._write_update_state(state, before)
        except sqlite3.OperationalError as e:
            self._moved_away(e)

    def _write_update_state(self, state: UpdateState, before: UpdateState | None) -> None:
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
        if not self.save_entities or self.moved:
            return
        fresh = [e for e in _entities_of(tlo) if self._changed(e)]
        if fresh:
            try:
                super().process_entities(fresh)  # a list: Telethon takes it as the entities
            except sqlite3.OperationalError as e:
                self._moved_away(e)

    def _moved_away(self, error: sqlite3.OperationalError) -> None:
        """The file was renamed or deleted under the open session (SQLite refuses writes
        then: SQLITE_READONLY_DBMOVED). The account keeps serving from memory, writing
        nothing more, until a reload retires it; anything else is raised again."""
        if getattr(error, "sqlite_errorcode", None) != _SQLITE_READONLY_DBMOVED:
            raise error
        if not self.moved:
            self.moved = True
            log.warning(
                "the session file of account %s was moved or deleted while it runs: it "
                "writes nothing more to it (a reload takes it out of the pool)",
                account_label(Path(self.filename).stem.removesuffix(".session")),
            )

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
        self._open_auth_key()  # Telethon read the row back: the stored form

    def stored_auth_key(self, key: bytes) -> bytes:
        return self._seal.seal(key) if self._seal is not None else key

    def _open_auth_key(self) -> None:
        """The key Telethon loaded from the row, opened (or refused) for use in memory."""
        column = self.auth_key.key if self.auth_key else None
        if not column:
            return  # no key yet (a new session): the first one is written sealed
        if is_sealed(column):
            if self._seal is None:
                raise ConfigError(
                    SESSION_KEY, self.filename,
                    "the session's auth key is sealed and telegram.session_key is not set "
                    "(TGC_TELEGRAM_SESSION_KEY in the environment)",
                )
            # The property's setter of MemorySession: in memory only, no row rewritten.
            MemorySession.auth_key.fset(self, AuthKey(self._seal.open(column, self.filename)))
        elif self._seal is not None:
            raise ConfigError(
                SESSION_KEY, self.filename,
                "telegram.session_key is set but this session's auth key is not sealed: "
                "seal it with `python start.py sessions seal` (server stopped)",
            )


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when nothing is there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


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


Conversion = Literal["seal", "unseal"]


def convert_session(path: Path, seal: SessionSeal, to: Conversion) -> bool:
    """Seals (or unseals) the auth keys of session file `path`; False when it already was.

    Atomic: the file is copied beside itself (`VACUUM INTO`: a fresh file, no free page
    keeps the old form), converted there, synced, and renamed over the original, so a
    crash at any point leaves the original or the converted file, whole. The caller holds
    the session's `SessionLock` (no process may have the file open meanwhile).
    ConfigError (naming telegram.session_key and the file) when a sealed key does not open.
    """
    partial = path.with_name(f".{path.name}.{to}-tmp")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()  # a crash's leftover: the original is whole
    # Read-write, not read-only: the file is in WAL mode (_write_ahead), and a read-only
    # connection leaves `-wal`/`-shm` beside it, which SQLite would replay into the new file
    # renamed over it (a killed server's WAL, say): corrupt. Closed, this folds them in.
    source = sqlite3.connect(path)
    try:
        # tmp_auth_key came with Telethon 1.40's schema (version 8); older files lack it.
        names = {r[1] for r in source.execute("pragma table_info(sessions)")}
        tmp = "tmp_auth_key" if "tmp_auth_key" in names else "null"
        rows = source.execute(f"select dc_id, auth_key, {tmp} from sessions").fetchall()
        changes = [_converted(row, seal, to, str(path)) for row in rows]
        if all(change is None for change in changes):
            return False
        source.execute("vacuum into ?", (str(partial),))
    finally:
        source.close()
    try:
        copy = sqlite3.connect(partial)
        try:
            copy.execute("pragma secure_delete = on")  # the replaced column zeroed, not freed
            with copy:
                for (dc_id, *_), change in zip(rows, changes, strict=True):
                    if change is not None:
                        copy.execute(
                            "update sessions set auth_key = ? where dc_id = ?", (change[0], dc_id)
                        )
                        if tmp != "null":
                            copy.execute(
                                "update sessions set tmp_auth_key = ? where dc_id = ?",
                                (change[1], dc_id),
                            )
        finally:
            copy.close()
        _fsync(partial)
        for leftover in ("-wal", "-shm"):  # anything still there is in the copy already
            Path(f"{path}{leftover}").unlink(missing_ok=True)
        partial.replace(path)
        _fsync(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return True


def _converted(
    row: tuple[int, bytes | None, bytes | None], seal: SessionSeal, to: Conversion, file: str
) -> tuple[bytes, bytes] | None:
    """The row's (auth_key, tmp_auth_key) columns converted; None when already converted."""
    columns = [c or b"" for c in row[1:]]
    if to == "seal":
        for column in filter(is_sealed, columns):
            seal.open(column, file)  # sealed already, but with this key? (ConfigError if not)
        if not any(c and not is_sealed(c) for c in columns):
            return None
        new = [seal.seal(c) if c and not is_sealed(c) else c for c in columns]
    else:
        if not any(is_sealed(c) for c in columns):
            return None
        new = [seal.open(c, file) if is_sealed(c) else c for c in columns]
    return new[0], new[1]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
