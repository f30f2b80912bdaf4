"""Request signatures and response encryption, exactly as CONTRACT.md section 1 fixes them.

`Signer` checks (and, for clients, makes) the `X-Timestamp` / `X-Nonce` / `X-Signature`
headers: HMAC-SHA256 with `api.token` over::

    METHOD \\n URI \\n TIMESTAMP \\n NONCE \\n hex(SHA-256(body))

`Cipher.create("aes-256-gcm" | "aes-256-cbc", key_hex)` encrypts answers:

- aes-256-gcm: base64(nonce(12) ‖ ciphertext ‖ tag(16)), associated data = the request's
  `X-Nonce`, so an answer can't be replayed onto another request;
- aes-256-cbc: base64(iv(16) ‖ ciphertext), PKCS#7, no associated data (older crawlers).

A nonce is remembered through a `NonceStore` (atomic check-and-record of a 60-bit
`nonce_key`): `MemoryNonceStore` here by default, the server's journal one
(service/noncestore.py) given by start.py. Nothing here knows HTTP: the handler hands in
the method, URI, headers and body and maps `Unauthorized` / `RateLimited` to its answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import logging
import math
import os
import re
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad, unpad
from Crypto.Util.strxor import strxor

from common.errors import RateLimited, Unauthorized

log = logging.getLogger(__name__)

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


class NonceStore(Protocol):
    """Where `Signer` records the nonces it accepted, each as a 64-bit `nonce_key`.

    `add` is the one check-and-record, atomic: True when `key` was not live (recorded now,
    live until `until`, unix seconds), False when it is (the replay). A record is live while
    `until >= now`; a store may keep expired records a while, but never lets one refuse a
    request. Raises `RateLimited` when it can't record (full, or its disk failed): the
    request is genuine, and admitting it unrecorded would let it be replayed.

    `MemoryNonceStore` below (tests, in-process servers); the server's is
    `service.noncestore.JournalNonceStore`, which keeps them across restarts.
    """

    def add(self, key: int, until: int, now: float) -> bool: ...

    def live(self, now: float) -> int:
        """How many records are live at `now` (tests, diagnostics; may be slow)."""
        ...


def nonce_key(nonce: str) -> int:
    """A nonce's record key: the top 60 bits of an 8-byte BLAKE2b, in [0, 2**60).

    Fixed-size, whatever the nonce's length (16-64 characters), and below 2**60 so that
    CPython holds it in a 32-byte int (a 64-bit one takes 36): the store keeps one per live
    nonce. A replay always has the same key; two different nonces share one with
    probability live/2^60 (8e-13 with 900,000 live), and then the later is refused as a
    replay, never admitted twice. Only a correctly signed request is recorded, so choosing
    colliding nonces takes the token.
    """
    digest = hashlib.blake2b(nonce.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 4


class MemoryNonceStore:
    """`NonceStore` in a dict, forgotten at exit: for tests and in-process servers.

    At most `max_live` records: when all are live a new one is refused (`RateLimited`, retry
    when the earliest expires) rather than forgetting a live nonce, which would reopen a
    replay hole.
    """

    def __init__(self, max_live: int = 200_000) -> None:
        if max_live <= 0:
            raise ValueError("max_live must be positive")
        self._max_live = max_live
        self._until: dict[int, int] = {}  # key -> until
        self._expiry: list[tuple[int, int]] = []  # heap of (until, key), earliest first

    def add(self, key: int, until: int, now: float) -> bool:
        self._expire(now)
        if key in self._until:
            return False
        if len(self._until) >= self._max_live:
            log.warning("nonce store full (%d live nonces); refusing requests", len(self._until))
            retry_after = self._expiry[0][0] - now
            raise RateLimited(retry_after, "too many signed requests in the time window")
        self._until[key] = until
        heapq.heappush(self._expiry, (until, key))
        return True

    def live(self, now: float) -> int:
        self._expire(now)
        return len(self._until)

    def _expire(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] < now:
            _, key = heapq.heappop(heap)
            del self._until[key]


class Signer:
    """Verifies signed requests; signs them for clients.

    `window` is how far (seconds) a request's timestamp may be from `clock()`. A nonce is
    remembered (in `nonces`, a `NonceStore`) until no request carrying it could pass the
    timestamp check any more and it is at least `window` seconds old, so a replay inside the
    window is always caught. Only requests with a correct signature are recorded (garbage
    can't fill the store). Nothing here does I/O but what the store does.
    """

    def __init__(
        self,
        token: str,
        window: int = 300,
        clock: Callable[[], float] = time.time,
        *,
        nonces: NonceStore | None = None,
    ) -> None:
        if not token:
            raise ValueError("the signing token is empty")
        if window <= 0:
            raise ValueError("window must be positive")
        self._key = token.encode()
        self._window = window
        self._clock = clock
        self._nonces: NonceStore = MemoryNonceStore() if nonces is None else nonces

    def verify(self, method: str, uri: str, headers: Mapping[str, str], body: bytes) -> None:
        """Raises `Unauthorized` (why is in its message, for the log only) unless the
        request is signed by the token, fresh, and its nonce is new.

        Raises `RateLimited` when the nonce store can't record the nonce.
        """
        timestamp, nonce, signature, now = self._check(headers)
        expected = self._signature(method, uri, timestamp, nonce, body)
        if not hmac.compare_digest(expected, signature):
            raise Unauthorized("wrong signature")
        # Only now, with a valid signature, may the request cost a record.
        # Replayable while its timestamp passes the check (until sent_at + window), and
        # "seen within the window" for `window` seconds from now: kept for the later, in
        # whole seconds rounded up (kept a fraction longer, never shorter).
        until = math.ceil(max(now, int(timestamp)) + self._window)
        if not self._nonces.add(nonce_key(nonce), until, now):
            raise Unauthorized("nonce already used")

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """The checks `verify` can make before the body has arrived: the three headers are
        there, well formed, and the timestamp is inside the window. Stateless and cheap, so
        a server can refuse a request (or an oversized body) without reading its body."""
        self._check(headers)

    def _check(self, headers: Mapping[str, str]) -> tuple[str, str, str, float]:
        timestamp = headers.get("X-Timestamp")
        nonce = headers.get("X-Nonce")
        signature = headers.get("X-Signature")
        if timestamp is None or nonce is None or signature is None:
            raise Unauthorized("missing signature headers")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise Unauthorized("malformed X-Timestamp")
        if not _NONCE.fullmatch(nonce):
            raise Unauthorized("malformed X-Nonce")
        if not _SIGNATURE.fullmatch(signature):
            raise Unauthorized("malformed X-Signature")
        now = self._clock()
        if abs(now - int(timestamp)) > self._window:
            raise Unauthorized("timestamp outside the window")
        return timestamp, nonce, signature, now

    def sign(
        self,
        method: str,
        uri: str,
        body: bytes = b"",
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """The three headers a client sends with a request (fresh timestamp and nonce)."""
        ts = str(int(self._clock()) if timestamp is None else timestamp)
        nc = secrets.token_urlsafe(24) if nonce is None else nonce
        return {
            "X-Timestamp": ts,
            "X-Nonce": nc,
            "X-Signature": self._signature(method.upper(), uri, ts, nc, body),
        }

    def __len__(self) -> int:
        """How many nonces are remembered now."""
        return self._nonces.live(self._clock())

    def _signature(self, method: str, uri: str, timestamp: str, nonce: str, body: bytes) -> str:
        digest = hashlib.sha256(body).hexdigest()
        message = f"{method}\n{uri}\n{timestamp}\n{nonce}\n{digest}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


class DecryptError(ValueError):
    """An answer that is not what this cipher and key produced (tampered, truncated, or
    encrypted for another request)."""


class Cipher:
    """Encrypts answers (server) and decrypts them (clients). Use `Cipher.create`."""

    name: ClassVar[str]
    _by_name: ClassVar[dict[str, type[Cipher]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Cipher._by_name[cls.name] = cls

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("an AES-256 key is 32 bytes (64 hex characters)")
        self._key = key

    @staticmethod
    def names() -> list[str]:
        return sorted(Cipher._by_name)

    @staticmethod
    def create(name: str, key_hex: str) -> Cipher:
        """The cipher named by `api.cipher` with the key `api.aes_key` (64 hex chars)."""
        try:
            cls = Cipher._by_name[name]
        except KeyError:
            raise ValueError(f"unknown cipher {name!r} (one of {Cipher.names()})") from None
        if not re.fullmatch(r"[0-9A-Fa-f]{64}", key_hex):
            raise ValueError("the AES key must be 64 hex characters")
        return cls(bytes.fromhex(key_hex))

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """base64 (ASCII bytes) of the encrypted `plaintext`."""
        raise NotImplementedError

    def decrypt(self, body: bytes | str, aad: bytes) -> bytes:
        """The plaintext of an answer; raises `DecryptError` when it is not authentic."""
        raise NotImplementedError


def _b64decode(body: bytes | str) -> bytes:
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DecryptError("not base64") from e


class GcmCipher(Cipher):
    """AES-256-GCM, 12-byte random nonce, 16-byte tag, the request nonce as AAD.

    pycryptodome's `AES.new(MODE_GCM)` spends ~30 µs per object building what depends only
    on the key (the hash subkey H and its GHASH tables) and two counter-mode ciphers: about
    two thirds of a 2 KB answer's encryption. `_FastGcm` computes those key-only parts once
    and does per answer only the CTR pass, one GHASH call and one block for the tag
    (~3× faster). It leans on pycryptodome internals, so it is proved against `AES.new`
    when the cipher is built and not used if that check fails; decryption (clients only)
    always goes through the public API.
    """

    name = "aes-256-gcm"

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self._fast = _FastGcm.build(key)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        if self._fast is not None:
            sealed = self._fast.seal(nonce, plaintext, aad)
        else:
            sealed = _reference_seal(self._key, nonce, plaintext, aad)
        return base64.b64encode(sealed)

    def decrypt(self, body: bytes | str, aad: bytes) -> bytes:
        raw = _b64decode(body)
        if len(raw) < 12 + 16:
            raise DecryptError("too short for nonce and tag")
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=raw[:12], mac_len=16)
        cipher.update(aad)
        try:
            return cipher.decrypt_and_verify(raw[12:-16], raw[-16:])
        except ValueError as e:
            raise DecryptError("authentication failed") from e


def _reference_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    cipher.update(aad)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return nonce + ciphertext + tag


class _FastGcm:
    """GCM encryption (NIST SP 800-38D, 96-bit IV) with the key-only work done once."""

    def __init__(self, key: bytes) -> None:
        from Crypto.Cipher import _mode_gcm
        from Crypto.Util import _raw_api

        self._key = key
        self._ecb = AES.new(key, AES.MODE_ECB)  # stateless: reused for every tag block
        self._impl = _mode_gcm._ghash_clmul or _mode_gcm._ghash_portable
        # Holding the _GHASH object keeps its expanded tables (freed with it) alive.
        # pycryptodome's stub declares this private class without types.
        self._tables = _mode_gcm._GHASH(  # type: ignore[no-untyped-call]
            self._ecb.encrypt(bytes(16)), self._impl
        )
        self._exp_key = self._tables._exp_key.get()
        self._raw = _raw_api

    @classmethod
    def build(cls, key: bytes) -> _FastGcm | None:
        """A checked instance, or None (then `AES.new` is used) if pycryptodome changed."""
        try:
            fast = cls(key)
            for size in (0, 1, 16, 33, 1000):
                nonce, data, aad = os.urandom(12), os.urandom(size), os.urandom(size % 40)
                if fast.seal(nonce, data, aad) != _reference_seal(key, nonce, data, aad):
                    raise ValueError("differs from AES.new(MODE_GCM)")
        except Exception:
            log.warning("precomputed AES-GCM unavailable, using AES.new per answer", exc_info=True)
            return None
        return fast

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        # Counter blocks are nonce ‖ ctr32, starting at inc32(J0) = 2; J0 itself masks the tag.
        ciphertext = AES.new(self._key, AES.MODE_CTR, nonce=nonce, initial_value=2).encrypt(
            plaintext
        )
        blocks = b"".join(
            (
                aad,
                bytes(-len(aad) % 16),
                ciphertext,
                bytes(-len(ciphertext) % 16),
                struct.pack(">QQ", 8 * len(aad), 8 * len(ciphertext)),
            )
        )
        tag = strxor(self._ghash(blocks), self._ecb.encrypt(nonce + b"\x00\x00\x00\x01"))
        return nonce + ciphertext + tag

    def _ghash(self, blocks: bytes) -> bytes:
        raw = self._raw
        y = raw.create_string_buffer(16)
        result = self._impl.ghash(
            y, raw.c_uint8_ptr(blocks), raw.c_size_t(len(blocks)), y, self._exp_key
        )
        if result:
            raise ValueError(f"GHASH failed with {result}")
        return bytes(raw.get_raw_buffer(y))


class CbcCipher(Cipher):
    """AES-256-CBC, 16-byte random IV, PKCS#7, no associated data (`aad` is ignored).

    CBC has no integrity: a tampered answer fails only when the padding breaks, otherwise it
    decrypts to garbage. It exists for older crawlers; GCM is the default.
    """

    name = "aes-256-cbc"

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        iv = os.urandom(16)
        cipher = AES.new(self._key, AES.MODE_CBC, iv=iv)
        return base64.b64encode(iv + cipher.encrypt(pad(plaintext, 16)))

    def decrypt(self, body: bytes | str, aad: bytes) -> bytes:
        raw = _b64decode(body)
        if len(raw) < 32 or len(raw) % 16:
            raise DecryptError("not an IV and whole blocks")
        cipher = AES.new(self._key, AES.MODE_CBC, iv=raw[:16])
        try:
            return unpad(cipher.decrypt(raw[16:]), 16)
        except ValueError as e:
            raise DecryptError("bad padding") from e
