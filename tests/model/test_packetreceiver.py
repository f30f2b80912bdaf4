"""model/packetreceiver.py: TCP intermediate packets received into their own buffers, on a
fake transport (the real one: every media download of tests/model/test_downloader.py and
the process tests goes through it, proxies and dropped connections included)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.packetreceiver import MAX_PACKET, PacketReceiver


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.aborted = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True


class Stream:
    """The stream protocol the receiver stands in front of: what it is still told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def pause_writing(self) -> None:
        self.calls.append(("pause_writing", None))

    def resume_writing(self) -> None:
        self.calls.append(("resume_writing", None))

    def eof_received(self) -> bool:
        self.calls.append(("eof_received", None))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("connection_lost", exc))


def framed(packets: list[bytes]) -> bytes:
    return b"".join(struct.pack("<i", len(p)) + p for p in packets)


def feed(receiver: PacketReceiver, data: bytes, chunks: list[int]) -> None:
    """Delivers `data` as the transport would: into the receiver's buffers, at most the
    next chunk size (or what the buffer takes) at a time."""
    pos, i = 0, 0
    while pos < len(data):
        buf = receiver.get_buffer(-1)
        n = min(len(buf), len(data) - pos, chunks[i % len(chunks)] if chunks else len(data))
        buf[:n] = data[pos : pos + n]
        receiver.buffer_updated(n)
        pos, i = pos + n, i + 1


def make() -> tuple[PacketReceiver, FakeTransport, Stream]:
    transport, stream = FakeTransport(), Stream()
    return PacketReceiver(stream, transport), transport, stream  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    packets=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12),
    chunks=st.lists(st.integers(1, 5000), max_size=8),
)
async def test_every_packet_comes_whole_however_the_bytes_are_cut(
    packets: list[bytes], chunks: list[int]
) -> None:
    receiver, transport, _ = make()
    got: list[bytes] = []
    for packet in packets:  # taken as they come: reading never stays paused
        feed(receiver, framed([packet]), chunks)
        got.append(bytes(await asyncio.wait_for(receiver.next(), 1)))
    assert got == packets and transport.reading


async def test_reading_pauses_while_packets_wait_and_resumes_as_they_are_taken() -> None:
    receiver, transport, _ = make()
    packets = [bytes([i]) * 10 for i in range(PacketReceiver.MAX_QUEUED)]
    feed(receiver, framed(packets), [])
    assert not transport.reading
    assert bytes(await receiver.next()) == packets[0]
    assert transport.reading
    assert [bytes(await receiver.next()) for _ in packets[1:]] == packets[1:]


async def test_a_waiting_reader_wakes_for_the_packet() -> None:
    receiver, _, _ = make()
    waiting = asyncio.ensure_future(receiver.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    feed(receiver, framed([b"late"]), [3])
    assert bytes(await asyncio.wait_for(waiting, 1)) == b"late"


async def test_the_end_of_the_connection_is_raised_after_what_came_whole() -> None:
    receiver, _, stream = make()
    feed(receiver, framed([b"whole"]) + struct.pack("<i", 100) + b"part", [])
    assert receiver.eof_received() is False  # the transport closes
    assert bytes(await receiver.next()) == b"whole"
    with pytest.raises(ConnectionResetError, match="closed the connection"):
        await receiver.next()
    receiver.connection_lost(None)
    assert [c for c, _ in stream.calls] == ["eof_received", "connection_lost"]


async def test_a_lost_connection_wakes_a_waiting_reader_with_its_error() -> None:
    receiver, _, stream = make()
    waiting = asyncio.ensure_future(receiver.next())
    await asyncio.sleep(0)
    reset = ConnectionResetError(104, "reset by peer")
    receiver.connection_lost(reset)
    with pytest.raises(ConnectionResetError) as raised:
        await asyncio.wait_for(waiting, 1)
    assert raised.value is reset and stream.calls == [("connection_lost", reset)]


@pytest.mark.parametrize("length", [0, -404, MAX_PACKET + 1])
async def test_a_length_no_packet_has_breaks_the_connection(length: int) -> None:
    receiver, transport, _ = make()
    feed(receiver, struct.pack("<i", length), [])
    assert transport.aborted
    with pytest.raises(ConnectionError, match="the stream is broken"):
        await receiver.next()


def test_the_writers_flow_control_still_reaches_the_stream() -> None:
    receiver, _, stream = make()
    receiver.pause_writing()
    receiver.resume_writing()
    assert [c for c, _ in stream.calls] == ["pause_writing", "resume_writing"]
