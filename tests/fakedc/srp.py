"""The server side of Telegram's 2FA check (SRP-6a as Telegram defines it), so that
Telethon's own `telethon.password.compute_check` is what proves the password.

    server = SrpServer()
    algo = server.algo(user_id, secret)             # PasswordKdfAlgo... for account.password
    srp_id, srp_b = server.start(user_id, password, algo)
    user_id = server.check(srp_id, A, M1)           # None: wrong password (or unknown round)

Telegram's definitions (core.telegram.org/api/srp), with H = SHA-256:
    x = PH2(password, salt1, salt2)   v = g^x   k = H(p | g)
    B = k·v + g^b                      u = H(A | B)
    S = (A · v^u)^b                    K = H(S)
    M1 = H(H(p) xor H(g) | H(salt1) | H(salt2) | A | B | K)
All numbers are 256-byte big-endian in hashes. Each round (srp_id) is single-use.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TypeAlias

from telethon import password as tp
from telethon.tl import types

Algo: TypeAlias = types.PasswordKdfAlgoSHA256SHA256PBKDF2HMACSHA512iter100000SHA256ModPow

G = 3
# Telegram's 2048-bit safe prime (the one telethon/password.py accepts without factoring).
P_BYTES = bytes.fromhex(
    "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f"
    "48198a0aa7c14058229493d22530f4dbfa336f6e0ac925139543aed44cce7c37"
    "20fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f64"
    "2477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4"
    "a4a695811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754"
    "fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4"
    "e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f"
    "0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b"
)
P = int.from_bytes(P_BYTES, "big")
_K = int.from_bytes(tp.sha256(P_BYTES, tp.big_num_for_hash(G)), "big")


@dataclass
class _Round:
    user_id: int
    b: int
    big_b: int
    v: int
    algo: Algo


class SrpServer:
    def __init__(self) -> None:
        self._rounds: dict[int, _Round] = {}

    @staticmethod
    def algo(user_id: int, secret: bytes) -> Algo:
        """The account's KDF parameters: stable salts derived from the world's secret."""
        salt = hashlib.sha256(secret + b"salt" + str(user_id).encode()).digest()
        return Algo(salt1=salt[:16], salt2=salt[16:], g=G, p=P_BYTES)

    def start(self, user_id: int, password: str, algo: Algo) -> tuple[int, bytes]:
        """A new round: (srp_id, srp_B as 256 bytes)."""
        x = int.from_bytes(tp.compute_hash(algo, password), "big")
        v = pow(G, x, P)
        b = int.from_bytes(os.urandom(256), "big")
        big_b = (_K * v + pow(G, b, P)) % P
        srp_id = int.from_bytes(os.urandom(8), "big", signed=True)
        self._rounds[srp_id] = _Round(user_id, b, big_b, v, algo)
        return srp_id, tp.big_num_for_hash(big_b)

    def user_of(self, srp_id: int) -> int | None:
        r = self._rounds.get(srp_id)
        return None if r is None else r.user_id

    def check(self, srp_id: int, a_bytes: bytes, m1: bytes) -> int | None:
        """The round's user id when M1 proves the password; the round is used up either way."""
        r = self._rounds.pop(srp_id, None)
        if r is None:
            return None
        big_a = int.from_bytes(a_bytes, "big")
        if not 0 < big_a < P:
            return None
        a_for_hash = tp.big_num_for_hash(big_a)
        b_for_hash = tp.big_num_for_hash(r.big_b)
        u = int.from_bytes(tp.sha256(a_for_hash, b_for_hash), "big")
        s = pow(big_a * pow(r.v, u, P) % P, r.b, P)
        k = tp.sha256(tp.big_num_for_hash(s))
        expected = tp.sha256(
            tp.xor(tp.sha256(P_BYTES), tp.sha256(tp.big_num_for_hash(G))),
            tp.sha256(r.algo.salt1),
            tp.sha256(r.algo.salt2),
            a_for_hash,
            b_for_hash,
            k,
        )
        return r.user_id if expected == m1 else None
