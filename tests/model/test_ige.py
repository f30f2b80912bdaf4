"""AES-256-IGE decryption of the media connections (model/ige.py, native/tgc_ige.c): the
same bytes as cryptg (Telethon's), in place for a bytearray, bad lengths refused."""

from __future__ import annotations

import platform

import cryptg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import ige

blocks = st.integers(0, 300).flatmap(lambda n: st.binary(min_size=16 * n, max_size=16 * n))
keys = st.binary(min_size=32, max_size=32)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="tgc_ige's cipher is x86-64's AES-NI")
def test_startup_built_the_native_backend() -> None:
    # .venv is made by startup.sh, which builds native/: CI must run what ships.
    assert ige.BACKEND == "tgc_ige"


@settings(max_examples=200, deadline=None)
@given(data=blocks, key=keys, iv=keys, prefix=st.binary(max_size=40))
def test_in_place_gives_cryptgs_bytes_and_leaves_the_prefix(
    data: bytes, key: bytes, iv: bytes, prefix: bytes
) -> None:
    cipher = cryptg.encrypt_ige(data, key, iv)
    assert cryptg.decrypt_ige(cipher, key, iv) == data
    body = bytearray(prefix + cipher)
    plain = ige.decrypt_tail(body, len(prefix), key, iv)
    assert bytes(plain) == data
    assert bytes(body[: len(prefix)]) == prefix
    if ige.BACKEND == "tgc_ige":  # a view of the packet, decrypted where it lies
        assert isinstance(plain, memoryview) and plain.obj is body
        assert bytes(body[len(prefix) :]) == data


@settings(max_examples=100, deadline=None)
@given(data=blocks, key=keys, iv=keys)
def test_bytes_are_decrypted_into_a_copy(data: bytes, key: bytes, iv: bytes) -> None:
    cipher = cryptg.encrypt_ige(data, key, iv)
    kept = bytes(cipher)
    assert ige.decrypt_tail(cipher, 0, key, iv) == data
    assert cipher == kept
    assert ige.decrypt_copy(cipher, key, iv) == data  # the fallback, whichever runs here


@pytest.mark.parametrize("size", [1, 15, 17, 1000])
def test_a_length_not_of_whole_blocks_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        ige.decrypt_tail(bytearray(size), 0, bytes(32), bytes(32))
    with pytest.raises(ValueError, match="multiple of 16"):
        ige.decrypt_copy(bytes(size), bytes(32), bytes(32))


@pytest.mark.skipif(ige.BACKEND != "tgc_ige", reason="the native backend is not in use here")
def test_the_native_call_checks_its_arguments() -> None:
    import tgc_ige

    with pytest.raises(ValueError, match="32 bytes"):
        tgc_ige.decrypt_into(bytearray(16), bytes(16), bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        tgc_ige.decrypt_into(bytearray(16), bytes(32), bytes(33))
    with pytest.raises(TypeError):
        tgc_ige.decrypt_into(bytes(16), bytes(32), bytes(32))  # read-only: not in place
    buf = bytearray(1 << 20)  # big enough to decrypt without the GIL
    expected = cryptg.decrypt_ige(bytes(buf), bytes(range(32)), bytes(32))
    tgc_ige.decrypt_into(buf, bytes(range(32)), bytes(32))
    assert buf == expected
