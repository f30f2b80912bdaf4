"""A loopback control channel for the emulator run as its own process.

An in-process test turns the emulator's knobs and makes its pushes by calling the dispatcher
(`rpc.flood_wait(...)`, `await rpc.post_message(...)`). `python -m tests.fakedc serve
--control-port N` offers the same to another process (bench/soak.py, a test) over TCP on
127.0.0.1:

    async with ControlClient(port) as control:
        await control.call("flood_wait", method="messages.getHistory", seconds=10, user_id=1001)
        await control.call("fail", method="*", code=500, message="INTERNAL", times=20)
        doc = await control.call("add_document", spec={"id": 100001, "size": 300_000})
        posted = await control.call("post_message", chat_id=3001, text="hi",
                                    media={"document": 100001})   # {"id", "pts", ...}
        n = await control.call("count", method="upload.getFile")
        await control.call("clear_faults")

Wire: one JSON object per line each way, `{"op": NAME, "args": {...}}` answered by
`{"ok": true, "result": ...}` or `{"ok": false, "error": "TypeError: ..."}`; requests on one
connection are answered in order. Only the operations in `Control.OPS` exist (a name is never
looked up as an attribute of the dispatcher): the fault and latency knobs of faults.py and the
counters, the pushes of rpc.py (post_message, edit_message, delete_messages, kick) and
add_member, `add_document` / `add_photo` (a new file in the world, from the world file's
dict form), `drop_connections`, `stats` and `accepted` (each connection's source address
and user: `[{"dc", "source", "port", "user_id"}]`, of one `user_id` if given) of the
cluster, and `ping`. A message comes back
as `{"id", "pts", "chat", "date"}`, plus `own_ids` (account → its own id) in a basic group.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson

from .cluster import FakeTelegram
from .rpc import TelegramRpc
from .world import DocumentSpec, MessageSpec, PhotoSpec

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# One request line at most (a world dict for add_document is small).
MAX_LINE = 1 << 20


class ControlError(Exception):
    """The emulator refused or failed an operation (its message says which and why)."""


def message_info(msg: MessageSpec, rpc: TelegramRpc) -> dict[str, Any]:
    """A posted or edited message as the other process needs it: ids, not TL objects."""
    info: dict[str, Any] = {"id": msg.id, "pts": msg.pts, "chat": msg.chat, "date": msg.date}
    chat = rpc.world.chats.get(msg.chat) if msg.chat is not None else None
    if chat is not None and not chat.is_channel:
        holders = rpc.world.common_holders(msg)
        info["own_ids"] = {str(a): rpc.world.own_id(a, msg.id) for a in holders}
    return info


class Control:
    """The operations of the channel, bound to one dispatcher and its cluster."""

    # The dispatcher's own methods reachable as they are (kwargs passed through).
    KNOBS = frozenset({
        "set_latency", "slow", "flood_wait", "fail", "rate_limit", "clear_faults",
        "username_not_occupied", "channel_private", "auth_key_unregistered",
        "deactivated_ban", "session_revoked", "auth_key_duplicated",
        "expire_file_references", "drop_connection_in_file", "drop_next_posts",
        "count", "reset_counts", "add_member", "delete_messages", "kick",
    })  # fmt: skip
    OPS = KNOBS | {
        "ping", "post_message", "edit_message", "add_document", "add_photo",
        "drop_connections", "stats", "unknown", "accepted",
    }  # fmt: skip

    def __init__(self, rpc: TelegramRpc, telegram: FakeTelegram) -> None:
        self.rpc = rpc
        self.telegram = telegram

    async def run(self, op: str, args: dict[str, Any]) -> Any:
        """Runs one operation; its JSON-able result."""
        if op not in self.OPS:
            raise ControlError(f"unknown op {op!r}; known: {sorted(self.OPS)}")
        if op in self.KNOBS:
            result = getattr(self.rpc, op)(**args)
            if inspect.isawaitable(result):
                result = await result
            return result
        special: Callable[..., Any] = getattr(self, f"_{op}")
        result = special(**args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _ping(self) -> str:
        return "pong"

    async def _post_message(self, chat_id: int, **kwargs: Any) -> dict[str, Any]:
        msg = await self.rpc.post_message(chat_id, **kwargs)
        return message_info(msg, self.rpc)

    async def _edit_message(self, chat_id: int, msg_id: int, text: str, **kwargs: Any) -> Any:
        msg = await self.rpc.edit_message(chat_id, msg_id, text, **kwargs)
        return message_info(msg, self.rpc)

    def _add_document(self, spec: dict[str, Any]) -> int:
        doc = DocumentSpec.from_dict(spec)
        if doc.id in self.rpc.world.documents:
            raise ControlError(f"document {doc.id} exists")
        return self.rpc.world.add_document(doc).id

    def _add_photo(self, spec: dict[str, Any]) -> dict[str, Any]:
        photo = PhotoSpec.from_dict(spec)
        if photo.id in self.rpc.world.photos:
            raise ControlError(f"photo {photo.id} exists")
        self.rpc.world.add_photo(photo)
        return {"id": photo.id, "sizes": {s.type: s.size for s in photo.sizes}}

    def _drop_connections(self, user_id: int | None = None) -> int:
        return self.telegram.drop_connections(user_id)

    def _accepted(self, user_id: int | None = None) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self.telegram.accepted(user_id)]

    def _stats(self) -> dict[str, int]:
        return dict(self.telegram.stats)

    def _unknown(self) -> list[str]:
        return list(self.rpc.unknown)


class ControlServer:
    """Serves `Control` on 127.0.0.1:`port` (0: a free one, `port` tells which after start)."""

    def __init__(self, control: Control, port: int = 0) -> None:
        self.control = control
        self.port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_client, HOST, self.port, limit=MAX_LINE
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                writer.write(orjson.dumps(await self._answer(line)) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = orjson.loads(line)
            op, args = request["op"], request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ControlError('a request is {"op": NAME, "args": {...}}')
            return {"ok": True, "result": await self.control.run(op, args)}
        except Exception as e:  # the other process gets the reason; the channel lives on
            log.info("fakedc control: %r refused: %s", line[:200], e)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}


class ControlClient:
    """The other end: `await call(op, **args)` returns the result or raises ControlError.
    Calls are serialised on one connection (opened on first use, or by `async with`)."""

    def __init__(self, port: int, host: str = HOST, *, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> ControlClient:
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_LINE), self.timeout
            )
            self._reader, self._writer = reader, writer
            return reader, writer
        return self._reader, self._writer

    async def call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            reader, writer = await self._connect()
            try:
                writer.write(orjson.dumps({"op": op, "args": args}) + b"\n")
                line = await asyncio.wait_for(self._exchange(writer, reader), self.timeout)
            except BaseException:
                await self.close()  # a half-read answer would be the next call's
                raise
        answer = orjson.loads(line)
        if not answer.get("ok"):
            raise ControlError(f"{op}: {answer.get('error')}")
        return answer.get("result")

    @staticmethod
    async def _exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> bytes:
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ConnectionError("the emulator closed the control channel")
        return line

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
