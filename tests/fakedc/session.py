"""Telethon session files that the emulator already knows: no DH handshake, no login.

`make_session` writes a stock Telethon SQLite session (`telethon.sessions.SQLiteSession`,
so the file is exactly what Telethon itself would write) holding the emulator's DC address
and a fresh random 256-byte auth key, and registers the key, bound to `user_id`, for DC
`dc_id` alone (the session's home DC; another DC answers -404 to it, as Telegram does) in
the cluster's registry (in-process) or its keys file (for a `serve` process).
A client started on that file is logged in as `user_id` at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from telethon.crypto import AuthKey
from telethon.sessions import SQLiteSession

from .authkeys import AuthKeyRegistry, append_key_line

SESSION_SUFFIX = ".session"


def make_session(
    path: str | os.PathLike[str],
    dc_id: int,
    host: str,
    port: int,
    user_id: int | None,
    *,
    registry: AuthKeyRegistry | None = None,
    keys_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Writes the session file (".session" is appended if missing) and returns its path.

    The key is added to `registry` if given, else appended to `keys_file`; one of the two
    is required, or no emulator would ever accept the key.
    """
    if registry is None and keys_file is None:
        raise ValueError("make_session needs a registry or a keys file to register the key")
    target = Path(path)
    if not target.name.endswith(SESSION_SUFFIX):
        target = target.with_name(target.name + SESSION_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()  # a stale file would keep its old key and entities

    key = os.urandom(256)
    session = SQLiteSession(str(target))
    try:
        session.set_dc(dc_id, host, port)
        session.auth_key = AuthKey(key)
        session.save()
    finally:
        session.close()

    if registry is not None:
        registry.add(key, user_id, dc_id)
    else:
        assert keys_file is not None
        append_key_line(Path(keys_file), key, user_id, dc_id)
    return target
