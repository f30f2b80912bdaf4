"""The plain-text DH handshake that creates an auth key (https://core.telegram.org/mtproto/auth_key).

Rules, in the order a client goes through them (Telethon's network/authenticator.py):
1. `req_pq_multi` (or the old `req_pq`) -> `resPQ`: the client's nonce, a random
   server_nonce, pq = the product of two random 31-bit primes (big-endian bytes), and the
   fingerprint of the emulator's RSA key (`EMULATOR_RSA_PUBLIC_PEM`; a test adds it to
   Telethon with `telethon.crypto.rsa.add_key(EMULATOR_RSA_PUBLIC_PEM, old=False)`, see
   `add_emulator_key()`).
2. `req_DH_params` -> `server_DH_params_ok`: the server undoes the old-style RSA
   encryption Telethon uses (``sha1(data) + data + random`` raised to e mod n, no RSA_PAD),
   checks the SHA1, nonces and p, q, then answers server_DH_inner_data (g=3, Telegram's
   2048-bit safe prime, g_a, server_time) encrypted with AES-IGE under the temporary key
   derived from new_nonce and server_nonce. Anything wrong -> the connection is closed
   (as Telegram does), never a fake answer.
3. `set_client_DH_params` -> `dh_gen_ok`: auth_key = g_b^a mod p as minimal big-endian
   bytes (as Telethon computes it), new_nonce_hash1 from it; the key is registered,
   unbound to any user, in the cluster's registry for this DC only (another DC answers
   -404 to it; see authkeys.py).
Handshake state is kept per server_nonce, so any connection of the same DC may carry
the steps. Plain answers carry a server msg_id that is 1 mod 4.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass
from hashlib import sha1

import cryptg
from Crypto.PublicKey import RSA
from Crypto.Util.number import getPrime
from telethon.crypto import AuthKey
from telethon.crypto import rsa as telethon_rsa
from telethon.extensions import BinaryReader
from telethon.helpers import generate_key_data_from_nonce
from telethon.tl import functions, types

from .authkeys import AuthKeyRegistry
from .mtproto import ANSWER, MsgIdSeq

log = logging.getLogger(__name__)

# Telegram's published DH prime (a 2048-bit safe prime) and generator.
DH_PRIME = int(
    "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f48198a0aa7c14058229493d2"
    "2530f4dbfa336f6e0ac925139543aed44cce7c3720fd51f69458705ac68cd4fe6b6b13abdc9746512969328"
    "454f18faf8c595f642477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4a4a695"
    "811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754fd17ed950d5965b4b9dd46582db11"
    "78d169c6bc465b0d6ff9ca3928fef5b9ae4e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956"
    "850ce929851f0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b",
    16,
)
DH_G = 3
_SAFETY = 2 ** (2048 - 64)

# The emulator's own RSA key pair. TEST-ONLY: it guards nothing but loopback test traffic,
# and is fixed so that a `serve` process and a client in another process agree on it.
EMULATOR_RSA_PRIVATE_PEM = """\
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAvHr5O8whYNL3tKCddq6j098AGVxV4caGxYnuqzZW06XhAWkp
SAxNLvY6VC18D5oYipAdvN0F59rEygcIiIitwng6Lua/ZwfS8wRbaU3MyO3CzVgj
RoELKkhqSJPTFPdYz5Dknr/4RmCGb/8mUbLwtB8XqKRwi0yhcntrbHh2a01Fsrt2
YPQsbpHY9vqzLQecX96FvHL0j4NdzywJtGIHElDwnAHVUO8o0ylFEheNq9m6xs8f
6EiSbgnvt3HfsF9yUstBcWBRJQQJIJJ00UWgm7MOC8elcDDuT0D5jrP3pAOd5Yw4
FoyuNlYqAtZsJtcjrbhqcWxPfGSVed6wpcjbZQIDAQABAoIBAA535tZLHbbSiwxK
a2asZ6FrKWqeTBjC8Mk3hOLkuXaRcbvLfaKXuycN5L1d09EDdGXSmU3MWQM1fSIV
tyHP/X1ZAFJls9oDX5NNyXyZvyIfdPLmv1J5XnOLpTOsEVSMhjyXc/f8ZuEe0MMb
1C5frPA5a3YD0Csz9zgUDFOCeHNVFJ+wRHAK69Ds68k2vUXPf1HF0d9+o3KNoifO
JslQUJeOsRFeuRoL/+h0f5OfB4S9gl0fmS8TuFoSMZVyOl8ZmYK90I9fYt+URSQj
3eg8jfyIAtg2d+F8qJ/gMTjM9MBG3jpP8CzjTG4cTQBbE/ELTMwdQnhEyz9emU2Y
nxWGVWMCgYEA1NB7RJ6xiRs/8xxtnzqKAeLmFQGnCk4hyoluobFrEJ79P/lCAMDt
I6dmAotiiSYWVXhcJzlt/ehSIaeOBa6/PyNj+YxJwhMFSboHYN1OynV8IFosoAQR
7fMsqJ3d0kWR5CHusk+mVg6/C+exO6Qi1qmQrNM5ICORlv2LnF8lx6MCgYEA4rpc
jGwZpdol1iyE3EieZshTat7H7pIq2FP/cYVFSAcPgSw4d0qV4X5Y6iF7BpYuXsTw
hqWHkkkVsvVCvPnd+ogOW9uxoWqhrrs+MelFhUuS2i0Od/6yYQ8FgwWJw14Bceur
2QBvurnRJ/Yln7UporIstvv+x6HwQwclW3VSIVcCgYEArnBBSkrl7SN39Ldtp6Hd
M5Sf0cIsAIdwrUqfc0wxHUuk/EY88s8w0hPJyvYji5W7os1ohAJQBVrjz5A/GqtV
OdSxgwCaCMl8gSVKHPzqM4u/delUQMl1RN0Z0xCrnUrHPf8OX/xntIybzo9YuDFf
GSOeYfs1DQH6uZAUWtWm6w8CgYA+lGPBGoFFxt2UrPsK9jxKcFad89nJXqzWwvCJ
u9gwlkpQRA1d18dg0wflr9IOMlugKsmc0ImH9gY4O/vsvybm5LDZ59yyigUQfnwf
OJzIuuBQugj5U+KWaZgC3v90XjkV4Y+wOK+eIXW6ivU9jLpuPrGa3BkprufrCEjm
Yo6FxwKBgFlMPdGYYtFpahrO/v6JBj9KOJln0T7LusG/6DPGWaAIxW147Nh6Z76y
ZcgSaHqhNJkvXFaK893X4+N66Q/yLCWd9L8/gs2B7um3TnGrjAW8USQ1Xr+xY2ej
LbA370KWxNdmDVTh4BzAJhv612VJJGaYdh/sjd5Rmk8OSX6bTyNo
-----END RSA PRIVATE KEY-----
"""
_PRIVATE = RSA.import_key(EMULATOR_RSA_PRIVATE_PEM)
# PKCS#1 "RSA PUBLIC KEY" PEM, the form telethon.crypto.rsa.add_key loads.
EMULATOR_RSA_PUBLIC_PEM: bytes = telethon_rsa.rsa.PublicKey(_PRIVATE.n, _PRIVATE.e).save_pkcs1()


def add_emulator_key() -> int:
    """Adds the emulator's public key to Telethon's key list; returns its fingerprint."""
    telethon_rsa.add_key(EMULATOR_RSA_PUBLIC_PEM, old=False)
    return fingerprint()


def fingerprint() -> int:
    pub = telethon_rsa.rsa.PublicKey(_PRIVATE.n, _PRIVATE.e)
    return int(telethon_rsa._compute_fingerprint(pub))


def _be(n: int) -> bytes:
    return bytes(telethon_rsa.get_byte_array(n))


class HandshakeError(Exception):
    """A handshake step is invalid; the connection is closed."""


@dataclass
class _Pending:
    nonce: int
    server_nonce: int
    p: int
    q: int
    new_nonce: int = 0
    a: int = 0
    tmp_key: bytes = b""
    tmp_iv: bytes = b""


class Handshaker:
    """Answers the plain (auth_key_id 0) messages of one DC."""

    def __init__(self, registry: AuthKeyRegistry, dc_id: int) -> None:
        self.registry = registry
        self.dc_id = dc_id
        self._pending: dict[int, _Pending] = {}
        self._ids = MsgIdSeq()
        self._fingerprint = fingerprint()

    def handle(self, packet: bytes) -> bytes | None:
        """One plain packet in, the plain packet to answer (None: close the connection)."""
        try:
            (length,) = struct.unpack_from("<i", packet, 16)
            request = BinaryReader(packet[20 : 20 + length]).tgread_object()
            answer = self._step(request)
        except Exception as e:  # any malformed step ends the connection, as on Telegram
            log.warning("handshake failed: %s: %s", type(e).__name__, e)
            return None
        body: bytes = answer._bytes()
        return struct.pack("<qqi", 0, self._ids.next_msg_id(ANSWER), len(body)) + body

    def _step(self, request: object) -> types.TLObject:
        if isinstance(request, functions.ReqPqMultiRequest | functions.ReqPqRequest):
            return self._res_pq(request.nonce)
        if isinstance(request, functions.ReqDHParamsRequest):
            return self._dh_params(request)
        if isinstance(request, functions.SetClientDHParamsRequest):
            return self._set_client_dh(request)
        raise HandshakeError(f"unexpected plain message {type(request).__name__}")

    def _res_pq(self, nonce: int) -> types.ResPQ:
        p, q = sorted((getPrime(31), getPrime(31)))
        while p == q:
            q = getPrime(31)
            p, q = sorted((p, q))
        server_nonce = int.from_bytes(os.urandom(16), "little", signed=True)
        self._pending[server_nonce] = _Pending(nonce, server_nonce, p, q)
        return types.ResPQ(nonce, server_nonce, _be(p * q), [self._fingerprint])

    def _pending_for(self, nonce: int, server_nonce: int) -> _Pending:
        st = self._pending.get(server_nonce)
        if st is None or st.nonce != nonce:
            raise HandshakeError("unknown nonce pair")
        return st

    def _dh_params(self, req: functions.ReqDHParamsRequest) -> types.ServerDHParamsOk:
        st = self._pending_for(req.nonce, req.server_nonce)
        if req.public_key_fingerprint != self._fingerprint:
            raise HandshakeError("unknown RSA fingerprint")
        if (int.from_bytes(req.p, "big"), int.from_bytes(req.q, "big")) != (st.p, st.q):
            raise HandshakeError("wrong p, q")
        cipher = int.from_bytes(req.encrypted_data, "big")
        plain = pow(cipher, _PRIVATE.d, _PRIVATE.n).to_bytes(256, "big")[1:]
        reader = BinaryReader(plain[20:])
        inner = reader.tgread_object()
        if sha1(plain[20 : 20 + reader.tell_position()]).digest() != plain[:20]:
            raise HandshakeError("bad SHA1 in the RSA-encrypted data")
        if not isinstance(inner, types.PQInnerData | types.PQInnerDataDc):
            raise HandshakeError(f"unexpected {type(inner).__name__}")
        if inner.nonce != st.nonce or inner.server_nonce != st.server_nonce:
            raise HandshakeError("nonce mismatch in p_q_inner_data")
        st.new_nonce = inner.new_nonce
        st.tmp_key, st.tmp_iv = generate_key_data_from_nonce(st.server_nonce, st.new_nonce)
        while True:
            st.a = int.from_bytes(os.urandom(256), "big")
            g_a = pow(DH_G, st.a, DH_PRIME)
            if _SAFETY <= g_a <= DH_PRIME - _SAFETY:
                break
        answer = types.ServerDHInnerData(
            nonce=st.nonce,
            server_nonce=st.server_nonce,
            g=DH_G,
            dh_prime=_be(DH_PRIME),
            g_a=_be(g_a),
            server_time=int(time.time()),
        )._bytes()
        with_hash = sha1(answer).digest() + answer
        with_hash += os.urandom(-len(with_hash) % 16)
        encrypted = cryptg.encrypt_ige(with_hash, st.tmp_key, st.tmp_iv)
        return types.ServerDHParamsOk(st.nonce, st.server_nonce, encrypted)

    def _set_client_dh(self, req: functions.SetClientDHParamsRequest) -> types.DhGenOk:
        st = self._pending_for(req.nonce, req.server_nonce)
        if not st.a:
            raise HandshakeError("set_client_DH_params before req_DH_params")
        plain = cryptg.decrypt_ige(req.encrypted_data, st.tmp_key, st.tmp_iv)
        reader = BinaryReader(plain[20:])
        inner = reader.tgread_object()
        if sha1(plain[20 : 20 + reader.tell_position()]).digest() != plain[:20]:
            raise HandshakeError("bad SHA1 in client_DH_inner_data")
        if not isinstance(inner, types.ClientDHInnerData):
            raise HandshakeError(f"unexpected {type(inner).__name__}")
        if inner.nonce != st.nonce or inner.server_nonce != st.server_nonce:
            raise HandshakeError("nonce mismatch in client_DH_inner_data")
        g_b = int.from_bytes(inner.g_b, "big")
        if not _SAFETY <= g_b <= DH_PRIME - _SAFETY:
            raise HandshakeError("g_b out of the safe range")
        key = _be(pow(g_b, st.a, DH_PRIME))
        del self._pending[st.server_nonce]
        self.registry.add(key, None, self.dc_id)
        new_nonce_hash1 = AuthKey(key).calc_new_nonce_hash(st.new_nonce, 1)
        log.info("handshake done: new auth key registered for DC %d", self.dc_id)
        return types.DhGenOk(st.nonce, st.server_nonce, new_nonce_hash1)
