"""Telegram's RPC errors, named and classified once for every caller.

An account's calls (model/connection.py), the downloader's own connections and the media
processor meet the same errors; all of them ask here what an error is in the service's
terms (`domain_error`) and what it says about the account (`account_fate`), so a ban, a
logout or a flood wait reads the same to the pool's state and to a media item.

A transient failure (`is_transient`: one of Telegram's 500s, a -503 timeout) is neither the
call's fault nor the account's: it becomes TransientTelegramError, which the pool answers by
moving the call to another account at once, as it does a flood wait; so does a call whose
connection dropped under it (`ConnectionLost`, named CONNECTION_LOST).

Requests are named here too: `request_name` is the bounded label metrics count calls by,
`request_kind` the flood-wait bucket a request's FLOOD_WAIT goes to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from telethon import errors, functions
from telethon.errors.rpcerrorlist import rpc_errors_dict, rpc_errors_re

from common.errors import (
    AccountUnusable,
    FloodWait,
    InvalidArgument,
    PeerNotFound,
    PeerPrivate,
    TelegramError,
    TgcError,
    TransientTelegramError,
)

_ERROR_NAMES = {cls: name for name, cls in rpc_errors_dict.items()}
_ERROR_NAMES.update({cls: pattern.replace(r"(\d+)", "X") for pattern, cls in rpc_errors_re})

# The account is gone for good: Telegram banned it, or its key is in use elsewhere.
BANNED = frozenset({"USER_DEACTIVATED", "USER_DEACTIVATED_BAN", "AUTH_KEY_DUPLICATED"})

# About the peer a call named (PeerNotFound, PeerPrivate), not about the account.
NOT_FOUND = frozenset(
    {
        "USERNAME_NOT_OCCUPIED",
        "USERNAME_INVALID",
        "PEER_ID_INVALID",
        "CHANNEL_INVALID",
        "CHAT_ID_INVALID",
        "USER_ID_INVALID",
        "INVITE_HASH_EXPIRED",
        "INVITE_HASH_INVALID",
        "INVITE_HASH_EMPTY",
    }
)
PRIVATE = frozenset(
    {
        "CHANNEL_PRIVATE",
        "CHAT_FORBIDDEN",
        "CHAT_ADMIN_REQUIRED",
        "USER_BANNED_IN_CHANNEL",
        "CHANNEL_PUBLIC_GROUP_NA",
    }
)

# Flood waits are kept per request kind: a wait on contacts.resolveUsername (the sensitive
# one, hours long after bursts) must not stop the account from reading peers it knows.
RESOLVE = "resolve"
# Nor may one on upload.getFile (Telegram's download throttle, FLOOD_PREMIUM_WAIT_X for
# non-premium accounts): it slows the account's downloads (model/downloader.py), not its reads.
DOWNLOAD = "download"
OTHER = "other"
# What metrics name a flood wait by, whatever its seconds (FLOOD_WAIT_X, FLOOD_PREMIUM_WAIT_X).
FLOOD_WAIT = "FLOOD_WAIT"

Fate = Literal["banned", "unauthorized"]

# Telegram's own failures, about neither the call nor the account: its 500s (INTERNAL,
# RPC_CALL_FAIL, INTERDC_X_CALL_ERROR, "No workers running" as -500) and -503 "Timeout".
# The same call can succeed at once elsewhere; Telethon's _call would retry it on the same
# connection, 2 s apart (see model/telethon_internals.py call_once).
TRANSIENT = (errors.ServerError, errors.TimedOutError)
# What metrics and the 502 name a call by whose connection dropped while it waited.
CONNECTION_LOST = "CONNECTION_LOST"


class ConnectionLost(Exception):
    """The connection a call waited on dropped and was not back in time: the answer may
    never come on this account (Telethon sends the request again once it reconnects), so
    the call is given up here and can be served by another account."""


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


def is_flood(exc: BaseException) -> bool:
    """Whether Telegram asked to wait before the next such request (FLOOD_WAIT_X, and its
    premium variant)."""
    return isinstance(exc, (errors.FloodWaitError, errors.FloodPremiumWaitError))


def is_transient(exc: BaseException) -> bool:
    """Whether Telegram failed the call for a passing reason of its own (a 500, a -503):
    another account, or this one a moment later, may answer it."""
    return isinstance(exc, TRANSIENT)


def lost_connection_error(account: str, seconds: float) -> TransientTelegramError:
    """The service's error for a call whose connection dropped (`ConnectionLost`)."""
    return TransientTelegramError(
        CONNECTION_LOST,
        account,
        f"the connection to Telegram dropped during the call and was not back in {seconds:g} s",
    )


def error_label(exc: errors.RPCError) -> str:
    """The name metrics count an error by: FLOOD_WAIT for every flood wait, else Telegram's."""
    return FLOOD_WAIT if is_flood(exc) else rpc_error_name(exc)


def telethon_cause(error: BaseException | None) -> errors.RPCError | None:
    """The Telethon RPC error `error` is, or was raised from (`raise ... from e`)."""
    for _ in range(5):  # a short chain: the downloader wraps once
        if error is None or isinstance(error, errors.RPCError):
            return error
        error = error.__cause__
    return None


def domain_error(
    exc: errors.RPCError,
    account: str,
    *,
    peer: str = "",
    blame: Mapping[str, str] | None = None,
) -> TgcError:
    """The service's error for Telegram's `exc`, met by `account` on a call about `peer`.

    In this order: a flood wait is FloodWait (the seconds Telegram asked for, at least 1);
    a transient failure (`is_transient`) is TransientTelegramError; a name in `blame` (Telegram name → the caller's argument it blames) is InvalidArgument
    on that argument; an error that says the account is banned or logged out is
    AccountUnusable with that state; with a `peer`, the NOT_FOUND names are PeerNotFound
    and the PRIVATE names PeerPrivate; anything else is TelegramError with its name. The
    caller keeps the account's state from the answer (model.account.AccountStatus)."""
    if isinstance(exc, (errors.FloodWaitError, errors.FloodPremiumWaitError)):
        return FloodWait(max(1, exc.seconds), account)
    name = rpc_error_name(exc)
    if is_transient(exc):
        return TransientTelegramError(name, account)
    if blame and name in blame:
        return InvalidArgument(blame[name], f"Telegram refused it ({name})")
    fate = account_fate(exc)
    if fate is not None:
        return AccountUnusable(account, fate, name)
    if peer and name in NOT_FOUND:
        return PeerNotFound(peer, f"{peer} not found ({name})")
    if peer and name in PRIVATE:
        return PeerPrivate(peer, f"{peer} is not visible to the service ({name})")
    return TelegramError(name)


def _unwrapped(request: Any) -> Any:
    while hasattr(request, "query"):  # invokeWithLayer & co wrap the real request
        request = request.query
    return request


def request_kind(request: Any) -> str:
    """The flood-wait bucket of a request: RESOLVE for contacts.resolveUsername, DOWNLOAD for
    upload.getFile, else OTHER."""
    request = _unwrapped(request)
    if isinstance(request, functions.contacts.ResolveUsernameRequest):
        return RESOLVE
    if isinstance(request, functions.upload.GetFileRequest):
        return DOWNLOAD
    return OTHER


def request_name(request: Any) -> str:
    """`channels.GetFullChannelRequest(...)` → "channels.GetFullChannel" (a bounded label)."""
    request = _unwrapped(request)
    module = type(request).__module__.rpartition(".")[2]
    return f"{module}.{type(request).__name__.removesuffix('Request')}"
