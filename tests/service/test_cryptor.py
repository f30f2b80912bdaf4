"""service/cryptor.py: signatures (window, replay, the nonce store) and both answer ciphers.

The replay tests run the Signer on both nonce stores: `MemoryNonceStore` and the server's
`JournalNonceStore` (service/noncestore.py, whose own tests are tests/service/
test_noncestore.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from common.errors import RateLimited, Unauthorized
from service.cryptor import (
    CbcCipher,
    Cipher,
    DecryptError,
    GcmCipher,
    MemoryNonceStore,
    NonceStore,
    Signer,
    _FastGcm,
    nonce_key,
)
from service.noncestore import JournalNonceStore

KEY_HEX = "00112233445566778899aabbccddeeff" * 2
NOW = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


methods = st.sampled_from(["GET", "POST", "DELETE", "PUT"])
uris = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=80
).map(lambda s: "/" + s)
bodies = st.binary(max_size=300)
nonces = st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True)

StoreFactory = Callable[[], NonceStore]


@pytest.fixture(params=["memory", "journal"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Builds the nonce store a test's Signer records in: each kind in turn."""
    opened: list[JournalNonceStore] = []

    def make() -> NonceStore:
        if request.param == "memory":
            return MemoryNonceStore()
        store = JournalNonceStore(tmp_path / f"nonces{len(opened)}", window=300)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


# --- Signer -----------------------------------------------------------------------------


def test_signature_is_the_contract_formula() -> None:
    signer = Signer("s3cret", clock=FakeClock())
    body = b'{"peer": "@x"}'
    headers = signer.sign("post", "/api/v1/subscriptions?a=1", body, nonce="n" * 16)
    message = (
        "POST\n/api/v1/subscriptions?a=1\n"
        + str(int(NOW))
        + "\n"
        + "n" * 16
        + "\n"
        + hashlib.sha256(body).hexdigest()
    )
    expected = hmac.new(b"s3cret", message.encode(), hashlib.sha256).hexdigest()
    assert headers == {"X-Timestamp": str(int(NOW)), "X-Nonce": "n" * 16, "X-Signature": expected}


def test_generated_nonces_are_valid_and_distinct() -> None:
    signer = Signer("t", clock=FakeClock())
    seen = {signer.sign("GET", "/")["X-Nonce"] for _ in range(200)}
    assert len(seen) == 200
    for _ in range(50):
        signer.verify("GET", "/", signer.sign("GET", "/"), b"")


@given(method=methods, uri=uris, body=bodies, nonce=nonces)
def test_any_signed_request_verifies(method: str, uri: str, body: bytes, nonce: str) -> None:
    signer = Signer("token-ü", clock=FakeClock())
    headers = signer.sign(method, uri, body, nonce=nonce)
    signer.verify(method, uri, HTTPHeaders(headers), body)


@given(
    method=methods,
    uri=uris,
    body=bodies,
    part=st.sampled_from(["method", "uri", "body", "timestamp", "nonce", "signature", "token"]),
    data=st.data(),
)
def test_any_mutation_fails(
    method: str, uri: str, body: bytes, part: str, data: st.DataObject
) -> None:
    clock = FakeClock()
    signer = Signer("token", clock=clock)
    headers = signer.sign(method, uri, body)
    if part == "method":
        method = data.draw(methods.filter(lambda m: m != method))
    elif part == "uri":
        uri = data.draw(uris.filter(lambda u: u != uri))
    elif part == "body":
        body = data.draw(bodies.filter(lambda b: b != body))
    elif part == "timestamp":
        delta = data.draw(st.integers(-300, 300).filter(bool))
        headers["X-Timestamp"] = str(int(headers["X-Timestamp"]) + delta)
    elif part == "nonce":
        headers["X-Nonce"] = data.draw(nonces.filter(lambda n: n != headers["X-Nonce"]))
    elif part == "signature":
        sig = headers["X-Signature"]
        i = data.draw(st.integers(0, len(sig) - 1))
        c = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != sig[i]))
        headers["X-Signature"] = sig[:i] + c + sig[i + 1 :]
    else:
        signer = Signer("token2", clock=clock)
    with pytest.raises(Unauthorized):
        signer.verify(method, uri, headers, body)
    assert len(signer) == 0  # a rejected request leaves nothing behind


@pytest.mark.parametrize(
    ("offset", "ok"), [(0, True), (300, True), (-300, True), (301, False), (-301, False)]
)
def test_clock_skew_boundaries(offset: int, ok: bool) -> None:
    signer = Signer("t", window=300, clock=FakeClock())
    headers = signer.sign("GET", "/a", timestamp=int(NOW) + offset)
    if ok:
        signer.verify("GET", "/a", headers, b"")
    else:
        with pytest.raises(Unauthorized, match="window"):
            signer.verify("GET", "/a", headers, b"")


def test_fractional_server_clock_boundary() -> None:
    signer = Signer("t", window=300, clock=FakeClock(NOW + 300.5))
    with pytest.raises(Unauthorized):
        signer.verify("GET", "/", signer.sign("GET", "/", timestamp=int(NOW)), b"")


def test_replay_is_refused_within_the_window(make_store: StoreFactory) -> None:
    clock = FakeClock()
    signer = Signer("t", clock=clock, nonces=make_store())
    headers = signer.sign("GET", "/a")
    signer.verify("GET", "/a", headers, b"")
    clock.now += 299
    with pytest.raises(Unauthorized, match="nonce"):
        signer.verify("GET", "/a", headers, b"")


def test_nonce_reused_with_a_fresh_timestamp_is_refused(make_store: StoreFactory) -> None:
    clock = FakeClock()
    signer = Signer("t", clock=clock, nonces=make_store())
    signer.verify("GET", "/a", signer.sign("GET", "/a", nonce="x" * 20), b"")
    clock.now += 200
    again = signer.sign("GET", "/b", nonce="x" * 20)
    with pytest.raises(Unauthorized, match="nonce"):
        signer.verify("GET", "/b", again, b"")


def test_nonce_kept_until_its_timestamp_is_stale(make_store: StoreFactory) -> None:
    # Sent from 300 s in the future: replayable until NOW + 600, so kept that long.
    clock = FakeClock()
    signer = Signer("t", clock=clock, nonces=make_store())
    headers = signer.sign("GET", "/a", timestamp=int(NOW) + 300)
    signer.verify("GET", "/a", headers, b"")
    clock.now += 599
    with pytest.raises(Unauthorized, match="nonce"):
        signer.verify("GET", "/a", headers, b"")
    clock.now += 2
    assert len(signer) == 0
    with pytest.raises(Unauthorized, match="window"):
        signer.verify("GET", "/a", headers, b"")


def test_nonces_expire_with_the_window(make_store: StoreFactory) -> None:
    clock = FakeClock()
    signer = Signer("t", clock=clock, nonces=make_store())
    for i in range(100):
        clock.now = NOW + i
        signer.verify("GET", "/", signer.sign("GET", "/"), b"")
    assert len(signer) == 100
    clock.now = NOW + 300 + 49.5  # the first 50 are older than the window now
    assert len(signer) == 50
    clock.now = NOW + 1000
    assert len(signer) == 0


def test_memory_store_drops_what_expired() -> None:
    store = MemoryNonceStore()
    for key in range(100):
        assert store.add(key, int(NOW) + key, NOW)
    assert store.live(NOW + 1000) == 0
    assert store._expiry == [] and store._until == {}


def test_a_replayed_nonce_after_a_restart_is_refused(tmp_path: Path) -> None:
    # The server's store: a new Signer on the same file (a restart) still knows the nonce.
    clock = FakeClock()
    first = JournalNonceStore(tmp_path / "nonces", window=300, clock=clock)
    headers = Signer("t", clock=clock).sign("POST", "/a", b"{}")
    Signer("t", clock=clock, nonces=first).verify("POST", "/a", headers, b"{}")
    first.close()
    clock.now += 299
    again = JournalNonceStore(tmp_path / "nonces", window=300, clock=clock)
    try:
        with pytest.raises(Unauthorized, match="nonce"):
            Signer("t", clock=clock, nonces=again).verify("POST", "/a", headers, b"{}")
    finally:
        again.close()


@settings(max_examples=40, deadline=None)
@given(nonce=nonces, replay_after=st.integers(0, 300), later=st.integers(301, 10_000))
def test_a_nonce_is_accepted_once_in_the_window_and_forgotten_after(
    nonce: str, replay_after: int, later: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        clock = FakeClock()
        for store in (
            MemoryNonceStore(),
            JournalNonceStore(Path(folder) / "nonces", window=300, clock=clock),
        ):
            clock.now = NOW
            signer = Signer("t", clock=clock, nonces=store)
            signer.verify("GET", "/", signer.sign("GET", "/", nonce=nonce), b"")
            clock.now = NOW + replay_after  # a replay, or the nonce with a fresh timestamp
            for timestamp in {int(NOW), int(clock.now)}:
                again = signer.sign("GET", "/", nonce=nonce, timestamp=timestamp)
                with pytest.raises(Unauthorized, match="nonce"):
                    signer.verify("GET", "/", again, b"")
            clock.now = NOW + later  # past the window: the nonce is forgotten
            signer.verify("GET", "/", signer.sign("GET", "/", nonce=nonce), b"")
            if isinstance(store, JournalNonceStore):
                store.close()


def test_nonce_key_is_a_60_bit_digest_in_a_32_byte_int() -> None:
    keys = {nonce_key(f"nonce-{i:012d}") for i in range(10_000)}
    assert len(keys) == 10_000
    assert all(0 <= k < 2**60 for k in keys)
    assert max(keys) >= 2**59  # the whole range is used
    assert sys.getsizeof(max(keys)) == sys.getsizeof(2**60 - 1) == 32  # the store keeps one each
    assert nonce_key("a" * 16) == nonce_key("a" * 16) != nonce_key("a" * 17)


def test_full_memory_store_refuses_rather_than_forgets() -> None:
    clock = FakeClock()
    signer = Signer("t", clock=clock, nonces=MemoryNonceStore(max_live=3))
    first = signer.sign("GET", "/")
    signer.verify("GET", "/", first, b"")
    clock.now += 10
    for _ in range(2):
        signer.verify("GET", "/", signer.sign("GET", "/"), b"")
    late = signer.sign("GET", "/")
    with pytest.raises(RateLimited) as caught:
        signer.verify("GET", "/", late, b"")
    assert caught.value.retry_after == 290  # when the first nonce may be forgotten
    with pytest.raises(Unauthorized):  # and the first nonce is still refused
        signer.verify("GET", "/", first, b"")
    clock.now = NOW + 301
    signer.verify("GET", "/", signer.sign("GET", "/"), b"")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Timestamp", None),
        ("X-Nonce", None),
        ("X-Signature", None),
        ("X-Timestamp", "1.5"),
        ("X-Timestamp", "-5"),
        ("X-Timestamp", ""),
        ("X-Timestamp", "9" * 13),
        ("X-Nonce", "short"),
        ("X-Nonce", "a" * 65),
        ("X-Nonce", "a" * 15 + "!"),
        ("X-Nonce", "ü" * 16),
        ("X-Signature", "A" * 64),
        ("X-Signature", "0" * 63),
        ("X-Signature", "ü" * 64),
    ],
)
def test_missing_or_malformed_header(name: str, value: str | None) -> None:
    signer = Signer("t", clock=FakeClock())
    headers = signer.sign("GET", "/")
    if value is None:
        del headers[name]
    else:
        headers[name] = value
    with pytest.raises(Unauthorized):
        signer.verify("GET", "/", headers, b"")
    with pytest.raises(Unauthorized):
        signer.check_headers(headers)


def test_check_headers_needs_no_body_and_keeps_no_state() -> None:
    clock = FakeClock()
    signer = Signer("t", clock=clock)
    headers = signer.sign("POST", "/", b"body")
    headers["X-Signature"] = "0" * 64  # not checked without the body
    signer.check_headers(headers)
    signer.check_headers(headers)
    assert len(signer) == 0
    clock.now += 301
    with pytest.raises(Unauthorized, match="window"):
        signer.check_headers(headers)


def test_signer_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Signer("")
    with pytest.raises(ValueError):
        Signer("t", window=0)
    with pytest.raises(ValueError):
        MemoryNonceStore(max_live=0)


# --- Ciphers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcm() -> Cipher:
    return Cipher.create("aes-256-gcm", KEY_HEX)


@pytest.fixture(scope="module")
def cbc() -> Cipher:
    return Cipher.create("aes-256-cbc", KEY_HEX)


def test_create_picks_by_name() -> None:
    assert isinstance(Cipher.create("aes-256-gcm", KEY_HEX), GcmCipher)
    assert isinstance(Cipher.create("aes-256-cbc", KEY_HEX.upper()), CbcCipher)
    assert Cipher.names() == ["aes-256-cbc", "aes-256-gcm"]
    for name, key in [
        ("aes-128-gcm", KEY_HEX),
        ("aes-256-gcm", KEY_HEX[:-2]),
        ("aes-256-gcm", "zz" * 32),
    ]:
        with pytest.raises(ValueError):
            Cipher.create(name, key)


def test_gcm_uses_the_precomputed_path(gcm: GcmCipher) -> None:
    # If pycryptodome's internals change this fails loudly instead of silently slowing down.
    assert gcm._fast is not None


@pytest.mark.parametrize(
    ("plaintext", "ciphertext", "tag"),
    [
        # McGrew & Viega, "The GCM mode", test cases 13 and 14 (K = 0^256, IV = 0^96).
        ("", "", "530f8afbc74536b9a963b4f1c4cb738b"),
        ("00" * 16, "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"),
    ],
)
def test_fast_gcm_known_answers(plaintext: str, ciphertext: str, tag: str) -> None:
    fast = _FastGcm(bytes(32))
    sealed = fast.seal(bytes(12), bytes.fromhex(plaintext), b"")
    assert sealed.hex() == "00" * 12 + ciphertext + tag


@settings(max_examples=300)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    plaintext=st.binary(max_size=600),
    aad=st.binary(max_size=80),
)
def test_fast_gcm_equals_pycryptodome(
    key: bytes, nonce: bytes, plaintext: bytes, aad: bytes
) -> None:
    reference = AES.new(key, AES.MODE_GCM, nonce=nonce)
    reference.update(aad)
    ciphertext, tag = reference.encrypt_and_digest(plaintext)
    assert _FastGcm(key).seal(nonce, plaintext, aad) == nonce + ciphertext + tag


@given(plaintext=st.binary(max_size=2000), aad=st.binary(max_size=64))
def test_gcm_round_trip(gcm: Cipher, plaintext: bytes, aad: bytes) -> None:
    body = gcm.encrypt(plaintext, aad)
    assert body.isascii()
    raw = base64.b64decode(body)
    assert len(raw) == 12 + len(plaintext) + 16
    assert gcm.decrypt(body, aad) == plaintext
    assert gcm.decrypt(body.decode(), aad) == plaintext


def test_gcm_nonces_are_fresh(gcm: Cipher) -> None:
    heads = {base64.b64decode(gcm.encrypt(b"x", b"n"))[:12] for _ in range(100)}
    assert len(heads) == 100


@given(plaintext=st.binary(max_size=300), aad=st.binary(max_size=40), data=st.data())
def test_gcm_any_tampered_byte_fails(
    gcm: Cipher, plaintext: bytes, aad: bytes, data: st.DataObject
) -> None:
    raw = bytearray(base64.b64decode(gcm.encrypt(plaintext, aad)))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(DecryptError):
        gcm.decrypt(base64.b64encode(bytes(raw)), aad)


@given(plaintext=st.binary(max_size=100), aad=st.binary(max_size=40), other=st.binary(max_size=40))
def test_gcm_answer_is_bound_to_the_request_nonce(
    gcm: Cipher, plaintext: bytes, aad: bytes, other: bytes
) -> None:
    if other == aad:
        return
    with pytest.raises(DecryptError):
        gcm.decrypt(gcm.encrypt(plaintext, aad), other)


def test_gcm_wrong_key_fails(gcm: Cipher) -> None:
    other = Cipher.create("aes-256-gcm", "ff" * 32)
    with pytest.raises(DecryptError):
        other.decrypt(gcm.encrypt(b"hello", b"n"), b"n")


@pytest.mark.parametrize("body", [b"", b"!!!!", base64.b64encode(b"x" * 27), "not base64 ü"])
def test_gcm_garbage_fails(gcm: Cipher, body: bytes | str) -> None:
    with pytest.raises(DecryptError):
        gcm.decrypt(body, b"")


def test_gcm_without_the_fast_path_is_the_same_cipher() -> None:
    slow = Cipher.create("aes-256-gcm", KEY_HEX)
    assert isinstance(slow, GcmCipher)
    slow._fast = None
    fast = Cipher.create("aes-256-gcm", KEY_HEX)
    assert fast.decrypt(slow.encrypt(b"abc", b"n"), b"n") == b"abc"


@given(plaintext=st.binary(max_size=2000), aad=st.binary(max_size=64))
def test_cbc_round_trip(cbc: Cipher, plaintext: bytes, aad: bytes) -> None:
    body = cbc.encrypt(plaintext, aad)
    raw = base64.b64decode(body)
    assert len(raw) == 16 + (len(plaintext) // 16 + 1) * 16
    assert cbc.decrypt(body, b"ignored") == plaintext


def test_cbc_is_standard_aes_cbc_pkcs7(cbc: Cipher) -> None:
    raw = base64.b64decode(cbc.encrypt(b"0123456789", b""))
    plain = AES.new(bytes.fromhex(KEY_HEX), AES.MODE_CBC, iv=raw[:16]).decrypt(raw[16:])
    assert plain == b"0123456789" + bytes([6]) * 6


@given(plaintext=st.binary(max_size=200), data=st.data())
def test_cbc_tampering_never_yields_the_plaintext(
    cbc: Cipher, plaintext: bytes, data: st.DataObject
) -> None:
    # CBC has no integrity: a tampered answer either fails or decrypts to something else.
    raw = bytearray(base64.b64decode(cbc.encrypt(plaintext, b"")))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        assert cbc.decrypt(base64.b64encode(bytes(raw)), b"") != plaintext
    except DecryptError:
        pass


@pytest.mark.parametrize("body", [b"", base64.b64encode(b"x" * 16), base64.b64encode(b"x" * 40)])
def test_cbc_garbage_fails(cbc: Cipher, body: bytes) -> None:
    with pytest.raises(DecryptError):
        cbc.decrypt(body, b"")


def test_cipher_rejects_short_key() -> None:
    with pytest.raises(ValueError):
        GcmCipher(os.urandom(16))
