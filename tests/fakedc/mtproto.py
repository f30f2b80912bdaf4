"""MTProto 2.0 as the server side sees it: transport framing, message crypto, msg_ids.

Transports (https://core.telegram.org/mtproto/mtproto-transports), told apart by the first
bytes a client sends on a new TCP connection:
- ``0xef`` -> abridged: length/4 in one byte (< 127) or ``0x7f`` + 3 bytes little-endian.
- ``0xeeeeeeee`` -> intermediate: 4-byte little-endian length, then the payload.
- ``0xdddddddd`` -> padded intermediate: as intermediate, the length counting 0-15 random
  bytes of padding after the payload (TDLib sends 0-15, Telethon 0-3). The reader strips
  them: a plain (auth_key_id 0) packet keeps a multiple of 4 bytes (its own length field
  bounds the message), an encrypted one 24 + 16n bytes (msg_key and AES blocks). Answers
  go out unpadded (zero padding; Telethon's reader only strips 0-3 bytes).
- anything else -> full (Telethon's default): those 4 bytes are already the total length of
  the first packet; each packet is ``len:int32 seq:int32 payload crc32:uint32`` where len
  counts all four parts, seq counts packets per direction from 0, and the CRC covers
  len+seq+payload. A bad CRC or a seq out of order closes the connection.
A transport error (e.g. -404 "auth key not found") is a 4-byte payload holding the negative
code, framed by the same transport.

Encrypted messages (https://core.telegram.org/mtproto/description):
``auth_key_id:int64 msg_key:int128 encrypted_data``; the plaintext is
``salt:int64 session_id:int64 msg_id:int64 seq_no:int32 length:int32 body padding`` with
12..1024 bytes of padding making it a multiple of 16. msg_key is the middle 128 bits of
SHA256(auth_key[88+x : 88+x+32] + plaintext) with x=0 client->server and x=8
server->client; the AES-256-IGE key and iv come from SHA256(msg_key + auth_key[x:x+36]) and
SHA256(auth_key[40+x:76+x] + msg_key). A message whose msg_key does not match, or whose
length field does not fit, is rejected (the caller drops the connection).

Server msg_ids (what Telethon's MTProtoState checks): odd, strictly increasing within a
session, close to the current time (Telethon ignores ids more than 300 s old or 30 s new):
``unixtime << 32 | fraction``, made 1 mod 4 for answers to requests and 3 mod 4 for content
the server sends on its own (pushed updates).
Server seq_no: content-related messages get 2n+1 (n = content-related messages sent so
far in the session, then n is incremented); others (acks, containers) get 2n.

Speed: an answer is joined once into one plaintext buffer (cryptg wants ``bytes``), hashed
without another copy, encrypted by cryptg (AES-IGE in C), and the full transport's CRC is
computed incrementally over the frame parts, which are written without being joined.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import struct
import time
import zlib
from hashlib import sha256
from typing import Any

import cryptg

ABRIDGED_TAG = 0xEF
INTERMEDIATE_TAG = b"\xee\xee\xee\xee"
PADDED_INTERMEDIATE_TAG = b"\xdd\xdd\xdd\xdd"

_LEN_SEQ = struct.Struct("<ii")
_CRC = struct.Struct("<I")
_INT = struct.Struct("<i")
_HEADER = struct.Struct("<qqqii")  # salt, session_id, msg_id, seq_no, length
_KEY_ID = struct.Struct("<Q")
# A piece of a packet to write: an encrypted message is a bytearray (encrypted in place).
Chunk = bytes | bytearray


def _native_cipher() -> Any:
    """tgc_ige (native/tgc_ige.c, which startup.sh builds into .venv) when this CPU runs it:
    a 1 MB answer encrypted in place with AES-NI, ~2.5x cryptg's speed here. Telegram's
    CPUs are not the client's; the emulator shares the machine's, so the less of it a part
    takes, the closer a download here is to a real one. The emulator imports nothing of the
    product: this is the extension itself, not model/ige.py."""
    try:
        module = importlib.import_module("tgc_ige")
    except ImportError:
        return None
    return module if module.available() else None


_TGC_IGE = _native_cipher()

# The biggest packet a client may send; Telegram's own limit is about 1 MB per container.
MAX_PACKET = 4 << 20


class TransportError(Exception):
    """The byte stream is not valid for its transport; the connection must be closed."""


class CryptoError(Exception):
    """An encrypted message failed its checks (msg_key, length); the connection is closed."""


# -- transports ---------------------------------------------------------------------------


class Codec:
    """Reads and frames packets of one transport on one connection."""

    name = "base"

    async def read_packet(self, reader: asyncio.StreamReader) -> bytes:
        raise NotImplementedError

    def frame(self, parts: list[Chunk]) -> list[Chunk]:
        """The buffers to write, in order, to send the concatenation of `parts` as one
        packet (the parts are not joined: the socket takes them as they are)."""
        raise NotImplementedError


class FullCodec(Codec):
    name = "full"

    def __init__(self, first_len: bytes) -> None:
        self._pending_len: bytes | None = first_len
        self._recv_seq = 0
        self._send_seq = 0

    async def read_packet(self, reader: asyncio.StreamReader) -> bytes:
        if self._pending_len is not None:
            len_bytes, self._pending_len = self._pending_len, None
        else:
            len_bytes = await reader.readexactly(4)
        (length,) = _INT.unpack(len_bytes)
        if length < 12 or length > MAX_PACKET:
            raise TransportError(f"full transport: bad length {length}")
        rest = await reader.readexactly(length - 4)
        (seq,) = _INT.unpack_from(rest, 0)
        (crc,) = _CRC.unpack_from(rest, length - 8)
        if zlib.crc32(memoryview(rest)[: length - 8], zlib.crc32(len_bytes)) != crc:
            raise TransportError("full transport: bad CRC")
        if seq != self._recv_seq:
            raise TransportError(f"full transport: seq {seq}, expected {self._recv_seq}")
        self._recv_seq += 1
        return rest[4 : length - 8]

    def frame(self, parts: list[Chunk]) -> list[Chunk]:
        head = _LEN_SEQ.pack(sum(map(len, parts)) + 12, self._send_seq)
        self._send_seq += 1
        crc = zlib.crc32(head)
        for part in parts:
            crc = zlib.crc32(part, crc)
        return [head, *parts, _CRC.pack(crc)]


class IntermediateCodec(Codec):
    name = "intermediate"

    async def read_packet(self, reader: asyncio.StreamReader) -> bytes:
        (length,) = _INT.unpack(await reader.readexactly(4))
        if length < 4 or length > MAX_PACKET:
            raise TransportError(f"intermediate transport: bad length {length}")
        return await reader.readexactly(length)

    def frame(self, parts: list[Chunk]) -> list[Chunk]:
        return [_INT.pack(sum(map(len, parts))), *parts]


class PaddedIntermediateCodec(IntermediateCodec):
    name = "padded-intermediate"

    async def read_packet(self, reader: asyncio.StreamReader) -> bytes:
        packet = await super().read_packet(reader)
        n = len(packet)
        if n >= 24 and packet[:8] != bytes(8):
            keep = 24 + (n - 24) // 16 * 16  # auth_key_id, msg_key, whole AES blocks
        else:
            keep = n - n % 4
        return packet[:keep] if keep != n else packet


class AbridgedCodec(Codec):
    name = "abridged"

    async def read_packet(self, reader: asyncio.StreamReader) -> bytes:
        first = (await reader.readexactly(1))[0]
        if first >= 0x7F:
            words = int.from_bytes(await reader.readexactly(3), "little")
        else:
            words = first
        if words == 0 or words * 4 > MAX_PACKET:
            raise TransportError(f"abridged transport: bad length {words * 4}")
        return await reader.readexactly(words * 4)

    def frame(self, parts: list[Chunk]) -> list[Chunk]:
        words = sum(map(len, parts)) >> 2
        if words < 0x7F:
            return [bytes((words,)), *parts]
        return [b"\x7f" + words.to_bytes(3, "little"), *parts]


async def detect_codec(reader: asyncio.StreamReader) -> Codec:
    """Reads the first bytes of a connection and returns the codec they announce."""
    first = await reader.readexactly(1)
    if first[0] == ABRIDGED_TAG:
        return AbridgedCodec()
    head = first + await reader.readexactly(3)
    if head == INTERMEDIATE_TAG:
        return IntermediateCodec()
    if head == PADDED_INTERMEDIATE_TAG:
        return PaddedIntermediateCodec()
    return FullCodec(head)


def transport_error(code: int) -> bytes:
    """The payload of a transport error, e.g. ``transport_error(404)`` for an unknown key."""
    return _INT.pack(-abs(code))


# -- message crypto -----------------------------------------------------------------------


def key_id_of(auth_key: bytes) -> int:
    """auth_key_id: the lower 64 bits of SHA1(auth_key), as Telethon's AuthKey computes it."""
    from hashlib import sha1

    return int(_KEY_ID.unpack_from(sha1(auth_key).digest(), 12)[0])


def _aes_key_iv(auth_key: bytes, msg_key: bytes, x: int) -> tuple[bytes, bytes]:
    a = sha256(msg_key + auth_key[x : x + 36]).digest()
    b = sha256(auth_key[40 + x : 76 + x] + msg_key).digest()
    return a[:8] + b[8:24] + a[24:32], b[:8] + a[8:24] + b[24:32]


class Decrypted:
    """One decrypted client packet: its header fields and the message body."""

    __slots__ = ("body", "msg_id", "salt", "seq_no", "session_id")

    def __init__(self, salt: int, session_id: int, msg_id: int, seq_no: int, body: bytes):
        self.salt = salt
        self.session_id = session_id
        self.msg_id = msg_id
        self.seq_no = seq_no
        self.body = body


def decrypt_client_message(auth_key: bytes, packet: bytes) -> Decrypted:
    """Decrypts a client->server packet (x=0). `packet` starts with auth_key_id."""
    if len(packet) < 24 + 32 or (len(packet) - 24) % 16:
        raise CryptoError("encrypted packet has a bad size")
    msg_key = packet[8:24]
    key, iv = _aes_key_iv(auth_key, msg_key, 0)
    plain = cryptg.decrypt_ige(packet[24:], key, iv)
    if sha256(auth_key[88:120] + plain).digest()[8:24] != msg_key:
        raise CryptoError("msg_key mismatch")
    salt, session_id, msg_id, seq_no, length = _HEADER.unpack_from(plain, 0)
    padding = len(plain) - 32 - length
    if length < 0 or length % 4 or not 12 <= padding <= 1024:
        raise CryptoError("message length does not fit the packet")
    return Decrypted(salt, session_id, msg_id, seq_no, plain[32 : 32 + length])


def encrypt_server_message(
    auth_key: bytes,
    auth_key_id: int,
    salt: int,
    session_id: int,
    msg_id: int,
    seq_no: int,
    body_parts: list[bytes],
) -> list[Chunk]:
    """Encrypts one server->client message (x=8) whose body is the concatenation of
    `body_parts`, and returns the transport payload as parts: auth_key_id, msg_key, data."""
    length = sum(len(p) for p in body_parts)
    pad_len = -(32 + length + 12) % 16 + 12
    parts = [_HEADER.pack(salt, session_id, msg_id, seq_no, length), *body_parts]
    parts.append(os.urandom(pad_len))
    if _TGC_IGE is None:
        plain = b"".join(parts)
        msg_key = _msg_key(auth_key, plain)
        key, iv = _aes_key_iv(auth_key, msg_key, 8)
        return [_KEY_ID.pack(auth_key_id), msg_key, cryptg.encrypt_ige(plain, key, iv)]
    buffer = bytearray().join(parts)
    msg_key = _msg_key(auth_key, buffer)
    key, iv = _aes_key_iv(auth_key, msg_key, 8)
    _TGC_IGE.encrypt_into(buffer, key, iv)  # the plaintext is not needed again
    return [_KEY_ID.pack(auth_key_id), msg_key, buffer]


def _msg_key(auth_key: bytes, plain: bytes | bytearray) -> bytes:
    check = sha256(auth_key[96:128])
    check.update(plain)  # not over key + plain: a 1 MB answer would be copied once more
    return check.digest()[8:24]


# -- msg_id and seq_no --------------------------------------------------------------------


ANSWER = 1  # msg_id residue mod 4 for answers to client requests
PUSH = 3  # msg_id residue mod 4 for content the server sends on its own


class MsgIdSeq:
    """Server msg_id and seq_no generator for one session."""

    __slots__ = ("_content_sent", "_last_id")

    def __init__(self) -> None:
        self._last_id = 0
        self._content_sent = 0

    def next_msg_id(self, residue: int) -> int:
        now = time.time()
        whole = int(now)
        candidate = (whole << 32) | (int((now - whole) * (1 << 32)) & ~3) | residue
        if candidate <= self._last_id:
            candidate = ((self._last_id + 4) & ~3) | residue
        self._last_id = candidate
        return candidate

    def next_seq_no(self, content_related: bool) -> int:
        if content_related:
            self._content_sent += 1
            return self._content_sent * 2 - 1
        return self._content_sent * 2


def client_msg_time_ok(msg_id: int, now: float | None = None) -> bool:
    """Telegram's rule for client msg_ids: not more than 300 s in the past nor 30 s ahead."""
    t = msg_id >> 32
    now = time.time() if now is None else now
    return now - 300 <= t <= now + 30
