"""FakeTelegram: a cluster of emulated DCs on 127.0.0.1 sharing one world.

All DCs (default ids 1 and 2) share one world (the dispatcher) and one auth-key registry,
in which each key belongs to one DC: the home DC of a session file `make_session` wrote, or
the DC that ran the DH handshake (one handshaker per DC). Another DC answers -404 to it; a
client reaches another DC's files with a key of that DC and auth.importAuthorization. Each
listens on its own port (free ports unless given); `dc_options` lists them all, in
`help.getConfig`'s order, for the world to answer with.

    tg = FakeTelegram(dispatcher, dc_ids=(1, 2))
    await tg.start()
    path = tg.make_session(tmp_path / "a.session", user_id=1000)
    ... TelegramClient(str(path), api_id, api_hash) ...
    tg.push(1000, types.UpdateShort(...))
    await tg.stop()
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .api import DcOption, Dispatcher
from .authkeys import AuthKeyRegistry
from .handshake import Handshaker
from .server import Accepted, ClientConnection, DcServer, tune_malloc
from .session import make_session

log = logging.getLogger(__name__)


class FakeTelegram:
    def __init__(
        self,
        dispatcher: Dispatcher,
        dc_ids: Iterable[int] = (1, 2),
        *,
        host: str = "127.0.0.1",
        ports: dict[int, int] | None = None,
        keys_file: str | os.PathLike[str] | None = None,
        malloc_tuning: bool = True,
    ) -> None:
        """`ports` maps dc_id to a fixed port (others get free ones); `keys_file` lets other
        processes add keys (see authkeys.py); `malloc_tuning` applies `tune_malloc()` to
        this process on start (keeps 1 MB answers off mmap/munmap)."""
        self.dispatcher = dispatcher
        self.host = host
        self.registry = AuthKeyRegistry(keys_file)
        self._malloc_tuning = malloc_tuning
        ports = ports or {}
        self.dcs: dict[int, DcServer] = {
            dc_id: DcServer(
                dc_id,
                self.registry,
                self._dispatch,
                host=host,
                port=ports.get(dc_id, 0),
                dc_options=lambda: self.dc_options,
                plain_handler=Handshaker(self.registry, dc_id).handle,
            )
            for dc_id in dc_ids
        }
        self.main_dc_id = next(iter(self.dcs))

    async def _dispatch(self, ctx: Any, request: Any) -> Any:
        # An indirection so tests may swap `self.dispatcher` at run time.
        return await self.dispatcher(ctx, request)

    async def start(self) -> None:
        if self._malloc_tuning:
            tune_malloc()
        for dc in self.dcs.values():
            await dc.start()

    async def stop(self) -> None:
        for dc in self.dcs.values():
            await dc.stop()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def dc_options(self) -> list[DcOption]:
        return [DcOption(dc.dc_id, dc.host, dc.port) for dc in self.dcs.values()]

    @property
    def stats(self) -> Counter[str]:
        """The protocol layer's counters (see DcServer.stats), summed over all DCs."""
        total: Counter[str] = Counter()
        for dc in self.dcs.values():
            total.update(dc.stats)
        return total

    def port(self, dc_id: int | None = None) -> int:
        return self.dcs[self.main_dc_id if dc_id is None else dc_id].port

    def make_session(
        self, path: str | os.PathLike[str], user_id: int | None, dc_id: int | None = None
    ) -> Path:
        """Writes a Telethon session file for `user_id` on `dc_id` (default: the first DC),
        with a fresh auth key that DC (only) knows; returns the file's path."""
        dc = self.dcs[self.main_dc_id if dc_id is None else dc_id]
        return make_session(path, dc.dc_id, dc.host, dc.port, user_id, registry=self.registry)

    def push(self, user_id: int, updates: Any, *, force: bool = False) -> int:
        """Sends a TL `Updates` object to every live, update-subscribed connection of the
        user on any DC (with `force`, to every live connection of the user: what a client
        does with an update it did not subscribe to), at once; returns how many connections
        it was sent to."""
        return sum(dc.push(user_id, updates, force=force) for dc in self.dcs.values())

    def connections(self, user_id: int | None = None) -> list[ClientConnection]:
        """The live connections (of one user, if given) on every DC: their `requests` and
        `pushes` say what went through each."""
        return [
            conn
            for dc in self.dcs.values()
            for conn in dc.connections
            if user_id is None or (conn.key is not None and conn.key.user_id == user_id)
        ]

    def accepted(self, user_id: int | None = None) -> list[Accepted]:
        """Every connection accepted on every DC (the last ACCEPTED_KEPT per DC, closed ones
        too), of one user if given: where each came from (`source`, `port`)."""
        return [
            a
            for dc in self.dcs.values()
            for a in dc.accepted
            if user_id is None or a.user_id == user_id
        ]

    def pusher(self, user_id: int, updates: Any) -> None:
        """`push` shaped as the seam's `Pusher` (returns None), to hand to the world."""
        self.push(user_id, updates)

    def drop_connections(self, user_id: int | None = None) -> int:
        """Aborts every connection (of one user, if given) on every DC; returns how many."""
        return sum(dc.drop_connections(user_id) for dc in self.dcs.values())
