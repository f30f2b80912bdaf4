"""The one exception hierarchy of the service.

Services raise these; `service/basehandler.py` maps them to HTTP answers in one place through
each class's `status` and `code`. Nothing below the handler knows HTTP, the numbers here
are just data the handler reads::

    TgcError                          500 INTERNAL
    ├── InvalidParam                  400 INVALID_PARAM      (param): a request's parameter
    ├── InvalidArgument               400 INVALID_PARAM      (argument): a model method's own
    │                                     argument; the handler answers the API's param
    ├── Unauthorized                  401 UNAUTHORIZED
    ├── PeerPrivate                   403 PEER_PRIVATE       (peer)
    │   └── JoinRequestSent           403 PEER_PRIVATE       (peer, account): join filed
    │                                     for an admin's approval; not tried elsewhere
    ├── NotFound                      404 NOT_FOUND
    │   └── PeerNotFound              404 PEER_NOT_FOUND     (peer)
    │       └── UnknownUsername       404 PEER_NOT_FOUND     (peer, username): nobody holds
    │                                     it; the pool remembers that for a while
    ├── AlreadySubscribed             409 ALREADY_SUBSCRIBED (peer, subscription)
    ├── NotSubscribed                 409 NOT_SUBSCRIBED     (peer)
    ├── BodyTooLarge                  413 BODY_TOO_LARGE
    ├── RetryLater                    429                    (retry_after)
    │   ├── FloodWait                 429 FLOOD_WAIT         (account, retry_after)
    │   └── RateLimited               429 RATE_LIMITED       (retry_after)
    ├── TelegramError                 502 TELEGRAM_ERROR     (rpc error name)
    │   └── TransientTelegramError    502 TELEGRAM_ERROR     (rpc error name, account): a 500,
    │                                     a -503 or a connection lost mid-call; the pool
    │                                     tries another account at once
    ├── Unavailable                   503
    │   ├── NoAccountAvailable        503 NO_ACCOUNT_AVAILABLE
    │   │   └── AccountUnusable       503 NO_ACCOUNT_AVAILABLE (account, state): banned,
    │   │                                 unauthorized, disconnected: the pool moves on
    │   └── ShuttingDown              503 SHUTTING_DOWN
    └── ConfigError                   (not HTTP: start.py exits with code 2; key, file)
"""

from __future__ import annotations

from typing import Any


class TgcError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    code: str = "INTERNAL"

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.context = context

    @property
    def retry_after(self) -> int | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        """The contract's `error` object."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


class InvalidParam(TgcError):
    status, code = 400, "INVALID_PARAM"

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}", param=param)
        self.param = param


class InvalidArgument(TgcError):
    """A method refused one of its own arguments: `argument` names it as the method's
    signature does (Telegram refused it, or it does not fit the peer). Raised below the
    service layer, which knows which API parameter the argument came from."""

    status, code = 400, "INVALID_PARAM"

    def __init__(self, argument: str, reason: str) -> None:
        super().__init__(f"{argument}: {reason}", argument=argument)
        self.argument = argument
        self.reason = reason


class Unauthorized(TgcError):
    status, code = 401, "UNAUTHORIZED"


class PeerPrivate(TgcError):
    status, code = 403, "PEER_PRIVATE"

    def __init__(self, peer: str, message: str = "") -> None:
        super().__init__(message or f"{peer} is private or no account may see it", peer=peer)
        self.peer = peer


class JoinRequestSent(PeerPrivate):
    """A join met INVITE_REQUEST_SENT: the chat admits members only with an admin's
    approval, and Telegram has filed the account's request. Not tried on another account
    (each would file one more request)."""

    def __init__(self, peer: str, account: str) -> None:
        super().__init__(
            peer,
            f"{peer} needs an admin's approval to join: account {account} sent a join request;"
            " subscribe again once an admin has approved it",
        )
        self.account = account


class NotFound(TgcError):
    status, code = 404, "NOT_FOUND"


class PeerNotFound(NotFound):
    code = "PEER_NOT_FOUND"

    def __init__(self, peer: str, message: str = "") -> None:
        super().__init__(message or f"{peer} not found", peer=peer)
        self.peer = peer


class UnknownUsername(PeerNotFound):
    """contacts.resolveUsername answered that nobody holds `username`; the pool remembers
    it for a while (model.pool.UNKNOWN_USERNAME_TTL)."""

    def __init__(self, username: str, peer: str, message: str = "") -> None:
        super().__init__(peer, message)
        self.username = username


class AlreadySubscribed(TgcError):
    status, code = 409, "ALREADY_SUBSCRIBED"

    def __init__(self, peer: str, subscription: dict[str, Any] | None = None) -> None:
        super().__init__(f"{peer} is already subscribed", peer=peer)
        self.peer = peer
        self.subscription = subscription


class NotSubscribed(TgcError):
    status, code = 409, "NOT_SUBSCRIBED"

    def __init__(self, peer: str) -> None:
        super().__init__(f"{peer} is not subscribed", peer=peer)
        self.peer = peer


class BodyTooLarge(TgcError):
    status, code = 413, "BODY_TOO_LARGE"


class RetryLater(TgcError):
    """Base of the 429s: the caller should retry after `retry_after` seconds."""

    status = 429

    def __init__(self, retry_after: float, message: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self._retry_after = max(1, int(retry_after + 0.999))

    @property
    def retry_after(self) -> int:
        return self._retry_after


class FloodWait(RetryLater):
    code = "FLOOD_WAIT"

    def __init__(self, retry_after: float, account: str | None = None, message: str = "") -> None:
        super().__init__(
            retry_after, message or f"Telegram asked to wait {int(retry_after)} s", account=account
        )
        self.account = account


class RateLimited(RetryLater):
    code = "RATE_LIMITED"


class TelegramError(TgcError):
    status, code = 502, "TELEGRAM_ERROR"

    def __init__(self, rpc_error: str, message: str = "") -> None:
        super().__init__(message or f"Telegram answered {rpc_error}", rpc_error=rpc_error)
        self.rpc_error = rpc_error


class TransientTelegramError(TelegramError):
    """Telegram failed this call on one account for a passing reason: one of its 500s
    (INTERNAL, RPC_CALL_FAIL, ...), a -503 timeout, or the account's connection dropped
    while the call waited. The same call may succeed at once on another account, so the
    pool moves it there; the crawler sees the 502 only when no account could serve."""

    def __init__(self, rpc_error: str, account: str, message: str = "") -> None:
        super().__init__(rpc_error, message or f"Telegram answered {rpc_error}")
        self.account = account
        self.context["account"] = account


class Unavailable(TgcError):
    status, code = 503, "UNAVAILABLE"


class NoAccountAvailable(Unavailable):
    code = "NO_ACCOUNT_AVAILABLE"


class ShuttingDown(Unavailable):
    code = "SHUTTING_DOWN"


class AccountUnusable(NoAccountAvailable):
    """One account can't be used any more (banned, logged out); the pool reacts to it."""

    def __init__(self, account: str, state: str, reason: str) -> None:
        super().__init__(f"account {account} is {state}: {reason}", account=account, state=state)
        self.account = account
        self.state = state
        self.reason = reason


class ConfigError(TgcError):
    """A bad config.properties: names the key and the file. start.py exits with code 2."""

    def __init__(self, key: str, file: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}", key=key, file=file)
        self.key = key
        self.file = file
