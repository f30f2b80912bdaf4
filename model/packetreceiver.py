"""TCP intermediate packets received without copies: `PacketReceiver`, the receiving side of
the media connection's transport (model/telethon_internals.py `MediaTransport`).

Telegram's intermediate transport frames each packet as a 4-byte little-endian length and
the packet (core.telegram.org/mtproto/mtproto-transports#intermediate). An asyncio
StreamReader gathers a 1 MB packet in a buffer that grows by reallocation as it arrives
(each step copying what came) and then copies it out: ~3.5 MB of copies per MB, on the
loop's thread. asyncio's BufferedProtocol lets the kernel write each packet straight into
a bytearray of its length instead.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

# A bound on one packet's length: a file part is 1 MiB and a few bytes; a length beyond
# this is a broken stream, not an answer to wait for.
MAX_PACKET = 16 << 20


class PacketReceiver(asyncio.BufferedProtocol):
    """TCP intermediate packets (a 4-byte little-endian length, then the packet) received
    into a bytearray each, by the kernel's copy alone. The stream protocol it replaces
    still gets everything but the data: the writer's flow control and the end of the
    connection (so Telethon's writer drains and closes as before). At most MAX_QUEUED
    packets wait to be taken; beyond, reading pauses."""

    MAX_QUEUED = 4

    def __init__(self, stream: asyncio.BaseProtocol, transport: asyncio.BaseTransport) -> None:
        self._stream: Any = stream
        self._transport: Any = transport
        self._header = bytearray(4)
        self._packet: bytearray | None = None  # the one being received, once its length came
        self._filled = 0
        self._ready: deque[bytearray] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False

    async def next(self) -> bytearray:
        """The next whole packet; raises the connection's end (an OSError, as Telethon's
        receive loop expects of a closed connection)."""
        while not self._ready:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        packet = self._ready.popleft()
        if self._paused and len(self._ready) < self.MAX_QUEUED:
            self._paused = False
            self._transport.resume_reading()
        return packet

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self._header if self._packet is None else self._packet
        return memoryview(target)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._packet is None:
            if self._filled == len(self._header):
                self._start_packet(struct.unpack("<i", self._header)[0])
            return
        if self._filled == len(self._packet):
            self._ready.append(self._packet)
            self._packet, self._filled = None, 0
            self._wake()
            if len(self._ready) >= self.MAX_QUEUED and not self._paused:
                self._paused = True
                self._transport.pause_reading()

    def _start_packet(self, length: int) -> None:
        self._filled = 0
        if not 0 < length <= MAX_PACKET:
            self._end(ConnectionError(f"a packet of {length} bytes: the stream is broken"))
            self._transport.abort()
            return
        self._packet = bytearray(length)

    def eof_received(self) -> bool:
        self._end(ConnectionResetError("the server closed the connection"))
        self._stream.eof_received()
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionResetError("the connection closed"))
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()

    def _end(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
