"""ICAO key derivation (Doc 9303 Part 11, 9.7.1) and the BAC document keys (9.7.2).

``KDF(K, c) = H(K || c)`` with ``c`` a 32-bit big-endian counter: 1 for encryption, 2 for MAC,
3 for the PACE password key.  H is SHA-1 for 3DES and AES-128 (first 16 bytes) and SHA-256 for
AES-192 (first 24 bytes) and AES-256 (all 32 bytes); a 3DES key gets DES odd parity.
"""

from __future__ import annotations

from enum import Enum

from cryptography.hazmat.primitives import hashes

from chip.crypto.des import adjust_parity
from chip.errors import EncodingError

__all__ = [
    "ENC",
    "MAC",
    "PACE",
    "KeyAlg",
    "bac_key_seed",
    "bac_keys",
    "derive_key",
]

ENC = 1
MAC = 2
PACE = 3

# SHA-1 is what 9.7.1 and 9.7.2 prescribe for BAC and 3DES/AES-128 keys, not a choice made here.
_SHA1 = hashes.SHA1()  # noqa: S303
_SHA256 = hashes.SHA256()

_MRZ_ALPHABET = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ<")
# Document number (at least 9 characters) + check digit, date of birth + check digit, date of
# expiry + check digit (9.7.2); a TD1 document number may be longer.
_MRZ_INFORMATION_MIN = 9 + 1 + 6 + 1 + 6 + 1


class KeyAlg(Enum):
    """The cipher a derived key is for; it fixes the hash and the key length (9.7.1)."""

    TDES = "3DES"
    AES128 = "AES-128"
    AES192 = "AES-192"
    AES256 = "AES-256"

    @property
    def key_length(self) -> int:
        return _KEY_LENGTH[self]


_KEY_LENGTH = {KeyAlg.TDES: 16, KeyAlg.AES128: 16, KeyAlg.AES192: 24, KeyAlg.AES256: 32}


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    context = hashes.Hash(algorithm)
    context.update(data)
    return context.finalize()


def derive_key(seed: bytes, counter: int, alg: KeyAlg) -> bytes:
    """``KDF(seed, counter)`` for the key type ``alg`` (ICAO Doc 9303 Part 11, 9.7.1)."""
    if not 0 <= counter <= 0xFFFFFFFF:
        raise ValueError("the KDF counter is a 32-bit unsigned integer")
    data = seed + counter.to_bytes(4, "big")
    if alg in (KeyAlg.TDES, KeyAlg.AES128):
        key = _digest(_SHA1, data)[:16]
    else:
        key = _digest(_SHA256, data)[: alg.key_length]
    # Ka and Kb are parity-adjusted DES keys; DES ignores the parity bits, byte-exact tests do not.
    return adjust_parity(key) if alg is KeyAlg.TDES else key


def bac_key_seed(mrz_information: str) -> bytes:
    """``K_seed``: the 16 most significant bytes of SHA-1(MRZ_information) (9.7.2)."""
    if len(mrz_information) < _MRZ_INFORMATION_MIN or not _MRZ_ALPHABET.issuperset(mrz_information):
        # The message names the rule only: the MRZ is personal data.
        raise EncodingError(
            "MRZ information must be at least 24 characters of 0-9, A-Z and '<'",
            field="mrz_information",
        )
    return _digest(_SHA1, mrz_information.encode("ascii"))[:16]


def bac_keys(mrz_information: str) -> tuple[bytes, bytes]:
    """The document basic access keys ``(K_Enc, K_MAC)`` derived from the MRZ (9.7.2)."""
    seed = bac_key_seed(mrz_information)
    return derive_key(seed, ENC, KeyAlg.TDES), derive_key(seed, MAC, KeyAlg.TDES)
