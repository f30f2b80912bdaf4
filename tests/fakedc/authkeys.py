"""The auth keys a cluster knows, each belonging to one DC, and which account each is bound to.

Rules (core.telegram.org/api/datacenter, "Authorization transfer": an auth key is made
with, and known to, one DC; another DC learns the account only through
auth.exportAuthorization on the home DC and auth.importAuthorization on a key of its own;
core.telegram.org/mtproto/mtproto-transports: an unknown auth_key_id gets error -404):
- A key is known once it is registered for its DC: by the session-file helper
  (`make_session`, for the session's home DC, bound to a user at once), or by a finished
  DH handshake (for the DC that ran it, unbound until `auth.signIn`/`auth.checkPassword`/
  `auth.importAuthorization` binds it through `CallContext.bind_user`). `get(key_id,
  dc_id)` finds a key only on its own DC, so a key shown to another DC of the cluster is
  unknown there and answered -404, as Telegram does; the world decides what an unbound key
  may do.
- Each key has one current server salt (random, per key); a message with another salt is
  answered `bad_server_salt` with this one.
- Which connections of a key get pushed updates is the session's business (server.py):
  a key knows nothing of it.
- Optional keys file, so a separate process (`python -m tests.fakedc make-session`) can add
  keys to a running `serve`: one JSON object per line,
  ``{"auth_key": "<hex>", "user_id": N|null, "dc_id": N}``, appended in a single write (a
  line without "dc_id", from an older make-session, belongs to DC 1). The registry reads
  lines it has not seen yet whenever it meets an unknown auth_key_id, before the server
  answers -404. Keys made in-process are appended too, so the file is the whole list.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .mtproto import key_id_of

log = logging.getLogger(__name__)


@dataclass
class KeyRecord:
    key: bytes
    key_id: int
    dc_id: int  # the DC that knows the key (its home DC, or the one that ran the DH)
    user_id: int | None = None
    salt: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "little", signed=True))


class AuthKeyRegistry:
    """auth_key_id -> KeyRecord (each of one DC), optionally backed by an append-only keys
    file shared by the DCs of a cluster."""

    def __init__(self, keys_file: str | os.PathLike[str] | None = None) -> None:
        self._keys: dict[int, KeyRecord] = {}
        self._file = Path(keys_file) if keys_file is not None else None
        self._file_pos = 0
        self._lock = threading.Lock()  # make-session may run in a thread of the test process
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            self._file.touch(exist_ok=True)
            self._load_new_lines()

    @property
    def keys_file(self) -> Path | None:
        return self._file

    def add(self, key: bytes, user_id: int | None, dc_id: int) -> KeyRecord:
        """Registers a key for DC `dc_id` (and appends it to the keys file, if any). A key
        belongs to one DC: adding it for another raises ValueError."""
        rec = self._remember(key, user_id, dc_id)
        if self._file is not None:
            append_key_line(self._file, key, user_id, dc_id)
        return rec

    def get(self, key_id: int, dc_id: int) -> KeyRecord | None:
        """The key if DC `dc_id` knows it (None for a key of another DC, as for no key)."""
        rec = self._keys.get(key_id)
        if rec is None and self._file is not None:
            self._load_new_lines()
            rec = self._keys.get(key_id)
        return rec if rec is not None and rec.dc_id == dc_id else None

    def bind(self, key_id: int, user_id: int) -> None:
        rec = self._keys[key_id]
        rec.user_id = user_id
        if self._file is not None:
            append_key_line(self._file, rec.key, user_id, rec.dc_id)

    def forget(self, key_id: int) -> None:
        """Drops a key (the server then answers -404 to it, as for a destroyed key)."""
        self._keys.pop(key_id, None)

    def records(self, dc_id: int | None = None) -> list[KeyRecord]:
        """The known keys (of one DC, if given)."""
        return [r for r in self._keys.values() if dc_id is None or r.dc_id == dc_id]

    def _remember(self, key: bytes, user_id: int | None, dc_id: int) -> KeyRecord:
        with self._lock:
            key_id = key_id_of(key)
            rec = self._keys.get(key_id)
            if rec is None:
                rec = self._keys[key_id] = KeyRecord(key, key_id, dc_id, user_id)
            elif rec.dc_id != dc_id:
                raise ValueError(f"auth key {key_id:#x} belongs to DC {rec.dc_id}, not {dc_id}")
            elif user_id is not None:
                rec.user_id = user_id
            return rec

    def _load_new_lines(self) -> None:
        assert self._file is not None
        with self._file.open("rb") as f:
            f.seek(self._file_pos)
            data = f.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a half-written one waits
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                dc_id = obj.get("dc_id", 1)
                self._remember(bytes.fromhex(obj["auth_key"]), obj.get("user_id"), int(dc_id))
            except (ValueError, KeyError, TypeError):
                log.warning("keys file %s: skipping a malformed line", self._file)
        self._file_pos += end


def append_key_line(path: Path, key: bytes, user_id: int | None, dc_id: int) -> None:
    """Appends one key line with a single O_APPEND write, so concurrent writers and the
    reading server never see a torn line."""
    obj = {"auth_key": key.hex(), "user_id": user_id, "dc_id": dc_id}
    line = json.dumps(obj).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
