"""Transport codecs and MTProto 2.0 message crypto against Telethon's own implementation."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from telethon.crypto import AuthKey
from telethon.network import (
    ConnectionTcpAbridged,
    ConnectionTcpFull,
    ConnectionTcpIntermediate,
)
from telethon.network.mtprotostate import MTProtoState

from tests.fakedc import mtproto
from tests.fakedc.mtproto import (
    ANSWER,
    PUSH,
    MsgIdSeq,
    decrypt_client_message,
    detect_codec,
    encrypt_server_message,
    key_id_of,
)


class _Loggers(dict):  # Telethon indexes its loggers dict by module name
    def __missing__(self, key: str) -> logging.Logger:
        return logging.getLogger(key)


def telethon_codec(conn_cls: type):  # type: ignore[no-untyped-def]
    conn = conn_cls("127.0.0.1", 1, 1, loggers=_Loggers())
    return conn.packet_codec(conn)


def feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@settings(max_examples=50, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=3000).map(lambda b: b + b"\0" * (-len(b) % 4)),
                      min_size=1, max_size=4),
    conn_cls=st.sampled_from([ConnectionTcpFull, ConnectionTcpIntermediate, ConnectionTcpAbridged]),
)
def test_codecs_read_what_telethon_writes_and_back(payloads: list[bytes], conn_cls: type) -> None:
    async def run() -> None:
        theirs = telethon_codec(conn_cls)
        wire = (theirs.tag or b"") + b"".join(theirs.encode_packet(p) for p in payloads)
        reader = feed(wire)
        ours = await detect_codec(reader)
        assert [await ours.read_packet(reader) for _ in payloads] == payloads
        back = feed(b"".join(b"".join(ours.frame([p[:1], p[1:]])) for p in payloads))
        assert [await theirs.read_packet(back) for _ in payloads] == payloads

    asyncio.run(run())


@settings(max_examples=50, deadline=None)
@given(
    body=st.binary(min_size=0, max_size=5000).map(lambda b: b + b"\0" * (-len(b) % 4)),
    cryptg_only=st.booleans(),
)
def test_crypto_round_trips_with_telethons_state(body: bytes, cryptg_only: bool) -> None:
    # Both ciphers of the emulator: tgc_ige where startup.sh built it, cryptg otherwise.
    with mock.patch.object(mtproto, "_TGC_IGE", None if cryptg_only else mtproto._TGC_IGE):
        round_trip(body)


def round_trip(body: bytes) -> None:
    key = os.urandom(256)
    state = MTProtoState(AuthKey(key), loggers=_Loggers())
    state.salt = 1234
    # client -> server
    obj_body = struct.pack("<I", 0x62D6B459) + b"\x15\xc4\xb5\x1c" + struct.pack("<i", 0)
    packet = state.encrypt_message_data(struct.pack("<qii", 4 << 32, 1, len(body)) + body)
    dec = decrypt_client_message(key, packet)
    assert (dec.salt, dec.session_id, dec.body) == (1234, state.id, body)
    # server -> client: Telethon checks msg_key, session id, parity and time; a msgs_ack.
    ids = MsgIdSeq()
    parts = encrypt_server_message(
        key, key_id_of(key), 1234, state.id, ids.next_msg_id(ANSWER), 0, [obj_body]
    )
    msg = state.decrypt_message_data(b"".join(parts))
    assert msg is not None and msg.obj.msg_ids == []


def test_server_msg_ids_are_odd_increasing_with_the_right_residue() -> None:
    ids = MsgIdSeq()
    seen = [ids.next_msg_id(ANSWER if i % 3 else PUSH) for i in range(2000)]
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert all(m % 4 == (ANSWER if i % 3 else PUSH) for i, m in enumerate(seen))
    seqs = [ids.next_seq_no(c) for c in (True, False, True, True, False)]
    assert seqs == [1, 2, 3, 5, 6]


@settings(max_examples=50, deadline=None)
@given(
    blocks=st.lists(st.integers(min_value=2, max_value=200), min_size=1, max_size=4),
    pads=st.lists(st.integers(min_value=0, max_value=15), min_size=4, max_size=4),
)
def test_padded_intermediate_strips_0_to_15_bytes(blocks: list[int], pads: list[int]) -> None:
    """Padded intermediate (tag 0xdddddddd): the length counts 0-15 random bytes after the
    payload (TDLib's amount; Telethon's codec pads 0-3); an encrypted packet (auth_key_id,
    msg_key, AES blocks) and a plain one (auth_key_id 0, 4-byte aligned) come out whole."""

    async def run() -> None:
        packets = [os.urandom(8) + os.urandom(16) + os.urandom(16 * n) for n in blocks]
        packets.append(bytes(8) + os.urandom(8) + struct.pack("<i", 20) + os.urandom(20))
        wire = b"\xdd\xdd\xdd\xdd"
        for i, p in enumerate(packets):
            pad = pads[i % 4] if p[:8] != bytes(8) else pads[i % 4] % 4
            wire += struct.pack("<i", len(p) + pad) + p + os.urandom(pad)
        reader = feed(wire)
        ours = await detect_codec(reader)
        assert ours.name == "padded-intermediate"
        assert [await ours.read_packet(reader) for _ in packets] == packets

    asyncio.run(run())
