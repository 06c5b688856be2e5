"""DES primitives of BAC and 3DES secure messaging (ICAO Doc 9303 Part 11, 4.3 and 9.8).

- two-key 3DES (K1 || K2 || K1) in CBC mode without padding;
- ISO/IEC 9797-1 MAC algorithm 3 ("retail MAC"): single-DES CBC under Ka over every block, then
  the last result decrypted under Kb and encrypted under Ka;
- odd-parity adjustment of DES keys, which ICAO applies to derived keys (9.7.1).

``cryptography`` keeps DES in ``hazmat.decrepit`` and deprecates 8- and 16-byte ``TripleDES`` keys,
so keys are expanded here: K1 || K2 || K1 for two-key 3DES, K || K || K for single DES (EDE with
three equal keys is DES).

The keyed classes hold their prepared algorithm objects, and one CBC context per direction for
the whole session (:class:`chip.crypto.cbc.ChainedCbc`), so that a session does not rebuild
them for every APDU; they are not safe to share between threads.
"""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, modes

from chip.crypto.cbc import ChainedCbc, xor_block
from chip.crypto.padding import pad

__all__ = [
    "BLOCK",
    "RetailMac",
    "Tdes",
    "adjust_parity",
    "retail_mac",
    "tdes_decrypt",
    "tdes_encrypt",
]

BLOCK = 8
_ZERO_IV = bytes(BLOCK)

# Bit 0 of each key byte is its parity bit; DES keys carry odd parity per byte (FIPS 46-3).
_ODD_PARITY = bytes((b & 0xFE) | ((b >> 1).bit_count() + 1) % 2 for b in range(256))


def adjust_parity(key: bytes) -> bytes:
    """Set bit 0 of every byte so that each byte has an odd number of 1 bits."""
    return key.translate(_ODD_PARITY)


def _check_key16(key: bytes) -> None:
    if len(key) != 16:
        raise ValueError("two-key 3DES needs a 16-byte key (K1 || K2)")


def _check_blocks(data: bytes, iv: bytes) -> None:
    # A CBC context buffers a partial block silently; refuse it instead of losing bytes.
    if len(data) % BLOCK:
        raise ValueError("3DES-CBC data must be a whole number of 8-byte blocks")
    if len(iv) != BLOCK:
        raise ValueError("3DES-CBC IV must be 8 bytes")


class Tdes:
    """Two-key 3DES in CBC mode, no padding, under one key."""

    __slots__ = ("_decryptor", "_encryptor")

    def __init__(self, key16: bytes) -> None:
        _check_key16(key16)
        algorithm = TripleDES(key16 + key16[:8])
        self._encryptor = ChainedCbc(algorithm, BLOCK, decrypt=False)
        self._decryptor = ChainedCbc(algorithm, BLOCK, decrypt=True)

    def encrypt(self, data: bytes, iv: bytes = _ZERO_IV) -> bytes:
        _check_blocks(data, iv)
        return self._encryptor.run(data, iv)

    def decrypt(self, data: bytes, iv: bytes = _ZERO_IV) -> bytes:
        _check_blocks(data, iv)
        return self._decryptor.run(data, iv)

    def __repr__(self) -> str:
        return "Tdes(<key hidden>)"


class RetailMac:
    """ISO/IEC 9797-1 MAC algorithm 3 with DES, key Ka || Kb, 8-byte MAC, zero IV.

    The output transformation E_Ka(D_Kb(H_n)), with H_n = E_Ka(x_n xor H_{n-1}), equals 3DES-EDE
    of (x_n xor H_{n-1}) under Ka || Kb || Ka.  So the single-DES CBC runs in one call over all
    blocks but the last, and one long-lived 3DES-ECB context finishes the last block.
    """

    __slots__ = ("_final", "_single")

    def __init__(self, key16: bytes) -> None:
        _check_key16(key16)
        ka = key16[:8]
        self._single = ChainedCbc(TripleDES(ka + ka + ka), BLOCK, decrypt=False)
        # One block through 3DES-ECB is the MAC's output transformation, not a mode for data.
        final = modes.ECB()  # noqa: S305
        self._final: CipherContext = Cipher(TripleDES(key16 + ka), final).encryptor()

    def mac(self, data: bytes, *, padded: bool = False) -> bytes:
        """The 8-byte MAC of ``data``; padding method 2 is applied unless ``padded=True``."""
        if not padded:
            data = pad(data, BLOCK)
        elif not data or len(data) % BLOCK:
            raise ValueError("pre-padded MAC input must be a non-empty multiple of 8 bytes")
        last = data[-BLOCK:]
        if len(data) > BLOCK:
            head = self._single.run(data[:-BLOCK], _ZERO_IV)
            last = xor_block(last, head[-BLOCK:])
        return self._final.update(last)

    def __repr__(self) -> str:
        return "RetailMac(<key hidden>)"


def tdes_encrypt(key16: bytes, data: bytes, iv: bytes = _ZERO_IV) -> bytes:
    """Two-key 3DES-CBC encryption of whole blocks (no padding)."""
    return Tdes(key16).encrypt(data, iv)


def tdes_decrypt(key16: bytes, data: bytes, iv: bytes = _ZERO_IV) -> bytes:
    """Two-key 3DES-CBC decryption of whole blocks (no padding removed)."""
    return Tdes(key16).decrypt(data, iv)


def retail_mac(key16: bytes, data: bytes, *, padded: bool = False) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 (DES, padding method 2 unless ``padded``), 8 bytes."""
    return RetailMac(key16).mac(data, padded=padded)
