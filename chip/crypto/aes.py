"""AES primitives of PACE and AES secure messaging (ICAO Doc 9303 Part 11, 9.8; RFC 4493).

- AES-CBC without padding (data objects are padded by the caller with method 2);
- AES-ECB of whole blocks (the secure-messaging IV is E(KS_Enc, SSC));
- AES-CMAC (RFC 4493, NIST SP 800-38B), full 16 bytes; secure messaging truncates it to 8.

The keyed classes keep their prepared objects (an ECB context, CBC contexts that carry over
between calls as :class:`chip.crypto.cbc.ChainedCbc`, a keyed CMAC to copy) so that a session
does not rebuild them for every APDU; they are not safe to share between threads.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from chip.crypto.cbc import ChainedCbc

__all__ = [
    "BLOCK",
    "Aes",
    "AesCmac",
    "aes_cbc_decrypt",
    "aes_cbc_encrypt",
    "aes_cmac",
    "aes_ecb_encrypt",
]

BLOCK = 16
_KEY_SIZES = frozenset((16, 24, 32))


def _check_key(key: bytes) -> None:
    if len(key) not in _KEY_SIZES:
        raise ValueError("AES keys are 16, 24 or 32 bytes")


def _check_iv(iv: bytes) -> None:
    if len(iv) != BLOCK:
        raise ValueError("AES-CBC IV must be 16 bytes")


def _check_blocks(data: bytes) -> None:
    # A CBC/ECB context buffers a partial block silently; refuse it instead of losing bytes.
    if len(data) % BLOCK:
        raise ValueError("AES data must be a whole number of 16-byte blocks")


class Aes:
    """AES under one key: CBC without padding, and ECB through one long-lived context."""

    __slots__ = ("_decryptor", "_ecb", "_encryptor")

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        algorithm = algorithms.AES(key)
        # ECB of single blocks is what 9.8 prescribes for the IV, not a mode for data.
        ecb = modes.ECB()  # noqa: S305
        self._ecb: CipherContext = Cipher(algorithm, ecb).encryptor()
        self._encryptor = ChainedCbc(algorithm, BLOCK, decrypt=False)
        self._decryptor = ChainedCbc(algorithm, BLOCK, decrypt=True)

    def cbc_encrypt(self, data: bytes, iv: bytes) -> bytes:
        _check_blocks(data)
        _check_iv(iv)
        return self._encryptor.run(data, iv)

    def cbc_decrypt(self, data: bytes, iv: bytes) -> bytes:
        _check_blocks(data)
        _check_iv(iv)
        return self._decryptor.run(data, iv)

    def ecb_encrypt(self, blocks: bytes) -> bytes:
        # ECB keeps no state between blocks, so one context serves every call.
        _check_blocks(blocks)
        return self._ecb.update(blocks)

    def __repr__(self) -> str:
        return "Aes(<key hidden>)"


class AesCmac:
    """AES-CMAC under one key; each MAC starts from a copy of the keyed context."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._keyed = CMAC(algorithms.AES(key))

    def mac(self, data: bytes) -> bytes:
        context = self._keyed.copy()
        context.update(data)
        return context.finalize()

    def __repr__(self) -> str:
        return "AesCmac(<key hidden>)"


def aes_cbc_encrypt(key: bytes, data: bytes, iv: bytes) -> bytes:
    """AES-CBC encryption of whole blocks (no padding)."""
    _check_key(key)
    _check_blocks(data)
    return Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor().update(data)


def aes_cbc_decrypt(key: bytes, data: bytes, iv: bytes) -> bytes:
    """AES-CBC decryption of whole blocks (no padding removed)."""
    _check_key(key)
    _check_blocks(data)
    return Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor().update(data)


def aes_ecb_encrypt(key: bytes, block: bytes) -> bytes:
    """AES-ECB encryption of one or more whole blocks."""
    _check_key(key)
    _check_blocks(block)
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)  # noqa: S305


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (RFC 4493), 16 bytes."""
    _check_key(key)
    context = CMAC(algorithms.AES(key))
    context.update(data)
    return context.finalize()
