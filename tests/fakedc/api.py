"""The seam between the emulator's protocol layer and its world.

The protocol layer (`tests/fakedc/server.py`, `mtproto.py`, `cluster.py`) speaks MTProto 2.0
to an unmodified Telethon client: transports, encryption, auth keys (the session-file helper
and the DH handshake), salts, msg_ids, containers, gzip, acks, pings, rpc_result and
rpc_error, and the wrappers `invokeWithLayer`, `initConnection`, `invokeWithoutUpdates`,
which it unwraps. Every other request it hands, decoded as a Telethon TL object, to a
`Dispatcher` (the world's API, `tests/fakedc/rpc.py`), each as its own asyncio task so a slow
answer never holds back another.

The world (`tests/fakedc/world.py`, `rpc.py`) answers those requests as Telegram would, keeps
the per-account state (access hashes, membership, pts) and decides what updates to push;
it pushes them through the `Pusher` the protocol layer gives it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class RpcError(Exception):
    """Answered to the client as `rpc_error` (Telethon raises the matching RPCError)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class DropConnection(Exception):
    """Raised by the dispatcher to make the protocol layer close the TCP connection without
    answering (a fault knob: 'the connection drops in the middle of a file')."""


@dataclass(frozen=True)
class DcOption:
    id: int
    host: str
    port: int


@dataclass
class CallContext:
    """What the world knows about the caller of one request."""

    dc_id: int
    auth_key_id: int
    session_id: int
    # The account (user id) the auth key is bound to; None until auth.signIn or
    # auth.importAuthorization binds it. A key belongs to one DC (see authkeys.py).
    user_id: int | None
    # Every DC of the cluster, for help.getConfig's dc_options.
    dc_options: list[DcOption] = field(default_factory=list)
    # Binds this auth key to an account (auth.signIn, auth.checkPassword,
    # auth.importAuthorization). Set by the protocol layer.
    bind_user: Callable[[int], None] = lambda _user_id: None
    # The method name of the request (e.g. "upload.getFile"), for counters and knobs.
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Dispatcher(Protocol):
    async def __call__(self, ctx: CallContext, request: Any) -> Any:
        """Returns the TL object to send back as the rpc_result, or raises RpcError or
        DropConnection."""
        ...


# Pushes a TL `Updates` object to every live connection whose auth key is bound to the user.
Pusher = Callable[[int, Any], Awaitable[None] | None]
