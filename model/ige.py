"""AES-256-IGE decryption of a media connection's answers: in place, with AES-NI, where it can.

MTProto encrypts every message with AES-256 in IGE mode, which is serial: a block's input
needs the previous block's output, so a megabyte costs 65,536 times the latency of 14 AES
rounds however many cores there are. On the client's side of a download that was half of
its CPU per MB (issue 14, py-spy: cryptg's decrypt_ige ~50 % of the event loop's time, ~2.6
ms per MB in process), the one thing keeping the downloader below what the emulator could
serve. `tgc_ige` (native/tgc_ige.c, built into .venv by startup.sh) chains the blocks over
the CPU's AES instructions at that latency, ~1.2 ms per MB here where cryptg takes ~3.2, and
decrypts into the packet's own buffer instead of allocating an answer.

`BACKEND` says which one runs: "tgc_ige", or "cryptg" when the extension is missing (no
compiler where startup.sh ran) or the CPU has no AES-NI; both give the same bytes
(tests/model/test_ige.py). Only the media connections use this: Telethon's own connections
keep cryptg, through Telethon.
"""

from __future__ import annotations

import importlib
from typing import Any

import cryptg


def _native() -> Any:
    try:
        module = importlib.import_module("tgc_ige")
    except ImportError:
        return None
    return module if module.available() else None


_TGC_IGE = _native()
BACKEND = "tgc_ige" if _TGC_IGE is not None else "cryptg"


def decrypt_tail(body: bytes | bytearray, start: int, key: bytes, iv: bytes) -> bytes | memoryview:
    """The plaintext of `body[start:]` (a multiple of 16 bytes; ValueError otherwise).

    With tgc_ige and a bytearray `body`, decrypted in place: the answer is a view of
    `body`, whose ciphertext is gone. Otherwise a new bytes, `body` untouched."""
    if _TGC_IGE is not None and isinstance(body, bytearray):
        tail = memoryview(body)[start:]
        _TGC_IGE.decrypt_into(tail, key, iv)
        return tail
    return decrypt_copy(bytes(memoryview(body)[start:]), key, iv)


def decrypt_copy(data: bytes, key: bytes, iv: bytes) -> bytes:
    """cryptg's decryption, with a length it would panic on refused as tgc_ige refuses it."""
    if len(data) % 16:
        raise ValueError(f"{len(data)} bytes is not a multiple of 16")
    plain: bytes = cryptg.decrypt_ige(data, key, iv)
    return plain
