"""Deterministic file bytes of any size, generated on the fly.

Every emulated file (a photo size, a document, a thumbnail) is identified by an integer
`file_key` and has a `size`. Its byte at position `i` is `BLOCK[(shift(file_key) + i) % P]`,
where BLOCK is one pseudo-random block of a prime length P a little over 1 MiB. So:

- a 1 GB file costs no memory: only the block (plus a 1 MiB tail copy) exists, ~2 MiB total;
- serving a part is one slice of a bytes object (a memcpy), well under 1 ms for 1 MiB;
- because P is prime and larger than any part, consecutive 1 MiB parts of the same file
  differ, and two files differ by their shift, so a client that swaps, repeats or misplaces
  parts produces a file that no longer compares equal.

Tests compare what a client downloaded with `read(file_key, size)` or `digest(...)`.
"""

from __future__ import annotations

import hashlib
import random

MIB = 1024 * 1024
# The smallest prime above 1 MiB + 1000: a part (≤ 1 MiB) never wraps the block twice.
BLOCK_LEN = 1_049_599
_SEED = 0x7467632D66616B65  # "tgc-fake"


def _make_block() -> bytes:
    block = random.Random(_SEED).randbytes(BLOCK_LEN)
    # The block followed by its first MiB: any window of ≤ 1 MiB starting inside the block
    # is then one contiguous slice.
    return block + block[:MIB]


_BLOCK = _make_block()
_VIEW = memoryview(_BLOCK)


def _shift(file_key: int) -> int:
    # Knuth's multiplicative hash spreads neighbouring keys far apart in the block.
    return (file_key * 2654435761) % BLOCK_LEN


def read(file_key: int, size: int, offset: int = 0, limit: int | None = None) -> bytes:
    """Returns bytes [offset, min(offset + limit, size)) of the file; b'' past its end."""
    if offset < 0:
        raise ValueError("negative offset")
    end = size if limit is None else min(size, offset + limit)
    if offset >= end:
        return b""
    if end - offset <= MIB:
        return bytes(view(file_key, size, offset, end - offset))
    return b"".join(
        read(file_key, size, pos, min(MIB, end - pos)) for pos in range(offset, end, MIB)
    )


def view(file_key: int, size: int, offset: int, limit: int) -> bytes | memoryview:
    """`read`, as a view into the block when the part is one slice of it (≤ 1 MiB, what a
    getFile asks): the answer's serializer copies it once, into the message, instead of
    twice."""
    end = min(size, offset + limit)
    if offset < 0 or offset >= end or end - offset > MIB:
        return read(file_key, size, offset, limit)
    start = (_shift(file_key) + offset) % BLOCK_LEN
    return _VIEW[start : start + end - offset]


def digest(file_key: int, size: int) -> str:
    """SHA-256 hex of the whole file, computed in 1 MiB steps (no full copy in memory)."""
    h = hashlib.sha256()
    for pos in range(0, size, MIB):
        h.update(read(file_key, size, pos, MIB))
    return h.hexdigest()
