"""What service/ needs of model/'s accounts, written once as protocols.

`model.pool.TeleClients` satisfies `Pool` and `ClientLookup`, `TeleClient` satisfies
`TeleClientLike`; tests hand in fakes with the same few members. The queries, the handler
and the media pipeline all type against these, so a change of the pool's surface shows in
one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from common.utils import PeerRef
from model.downloader import MediaConnections

T = TypeVar("T")


class Pool(Protocol):
    """What the service needs of `model.pool.TeleClients`: run an operation on the
    best account for a peer (the next one when an account can't serve), and describe the
    accounts."""

    async def run(
        self, op: Callable[[Any], Awaitable[T]], peer: PeerRef | None = None
    ) -> tuple[T, Any]: ...

    def accounts(self) -> list[dict[str, Any]]: ...

    def usable(self) -> bool: ...


class TeleClientLike(Protocol):
    """What the media pipeline uses of one account, `model.teleclient.TeleClient`."""

    name: str
    media_connections: MediaConnections  # what the downloader fetches parts over
    pending_downloads: int  # kept by the media pipeline; the pool's weighted pick reads it

    async def get_messages(self, ref: PeerRef, ids: list[int]) -> tuple[Any, list[Any]]: ...

    async def get_full(self, ref: PeerRef) -> tuple[Any, Any]: ...

    def note_error(self, error: BaseException) -> BaseException: ...


class ClientLookup(Protocol):
    """`TeleClients` (or a dict in tests): the account of a name. A name it doesn't know
    gives None or raises (KeyError, LookupError or a TgcError)."""

    def get(self, name: str, /) -> TeleClientLike | None: ...
