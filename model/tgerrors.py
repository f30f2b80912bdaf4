"""Telegram's RPC errors, named and classified once for every caller in model/.

The account's calls (`TeleClient._invoke`) and the downloader's own connections
(`model/media.py`) meet the same errors; both ask here what an error says about the
account, so a ban or a logout reads the same to the pool's state and to a media item.
"""

from __future__ import annotations

from typing import Literal

from telethon import errors
from telethon.errors.rpcerrorlist import rpc_errors_dict, rpc_errors_re

_ERROR_NAMES = {cls: name for name, cls in rpc_errors_dict.items()}
_ERROR_NAMES.update({cls: pattern.replace(r"(\d+)", "X") for pattern, cls in rpc_errors_re})

# The account is gone for good: Telegram banned it, or its key is in use elsewhere.
BANNED = frozenset({"USER_DEACTIVATED", "USER_DEACTIVATED_BAN", "AUTH_KEY_DUPLICATED"})

Fate = Literal["banned", "unauthorized"]


def rpc_error_name(exc: errors.RPCError) -> str:
    """Telegram's own name of an error (CHANNEL_PRIVATE, FLOOD_WAIT_X, ...)."""
    return _ERROR_NAMES.get(type(exc)) or str(exc.message or type(exc).__name__)


def account_fate(exc: errors.RPCError) -> Fate | None:
    """What the error says of the account that met it: banned, logged out, or nothing.

    Every 401 (AUTH_KEY_UNREGISTERED, SESSION_REVOKED, SESSION_EXPIRED, ...) means the
    session no longer logs in; BANNED names are banned even when Telegram sends them as
    another class."""
    if rpc_error_name(exc) in BANNED:
        return "banned"
    if isinstance(exc, (errors.UnauthorizedError, errors.AuthKeyError)):
        return "unauthorized"
    return None
