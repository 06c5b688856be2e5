"""CBC over one long-lived cipher context, answering each call as a fresh context would.

Secure messaging encrypts, decrypts or MACs one short message per APDU, each from its own IV
(3DES SM: zero; AES SM and SCP03: a per-message ICV).  Setting up a ``cryptography`` cipher
context costs more than the cipher itself on a short APDU, so a session keeps one context per
direction.  A CBC context carries its last ciphertext block C over as the next call's chaining
value; to start a call from ``iv`` instead, its first block is adjusted (NIST SP 800-38A 6.2,
C_i = E(P_i xor C_{i-1})):

- encryption: feed ``P_1 xor iv xor C`` so that the cipher sees ``P_1 xor iv``;
- decryption: the context returns ``D(C_1) xor C``; xor that with ``C xor iv`` to get ``P_1``.

Data must be whole blocks (callers check: a CBC context silently buffers a partial block).  Not
safe to share between threads, like the session objects that hold it.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, CipherContext, modes

__all__ = ["ChainedCbc", "xor_block"]


def xor_block(a: bytes, b: bytes) -> bytes:
    """``a xor b`` for two blocks of the same length."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


class ChainedCbc:
    """One direction of CBC under one key; the context is made on first use."""

    __slots__ = ("_algorithm", "_block", "_context", "_decrypt", "_last", "_zero")

    def __init__(self, algorithm: CipherAlgorithm, block: int, *, decrypt: bool) -> None:
        self._algorithm = algorithm
        self._block = block
        self._context: CipherContext | None = None
        self._decrypt = decrypt
        self._zero = bytes(block)
        self._last = self._zero  # the context's chaining value: the last ciphertext block

    def _make(self) -> CipherContext:
        cipher = Cipher(self._algorithm, modes.CBC(bytes(self._block)))
        self._context = cipher.decryptor() if self._decrypt else cipher.encryptor()
        return self._context

    def run(self, data: bytes, iv: bytes) -> bytes:
        """CBC of whole blocks ``data`` starting from ``iv``."""
        if not data:
            return b""
        context = self._context or self._make()
        block, last = self._block, self._last
        # What the first block is xored with: C xor iv (3DES SM and the retail MAC use a zero IV).
        mask = None if last == iv else last if iv == self._zero else xor_block(last, iv)
        if self._decrypt:
            self._last = data[-block:]
            out = context.update(data)
            return out if mask is None else xor_block(out[:block], mask) + out[block:]
        if mask is not None:
            data = xor_block(data[:block], mask) + data[block:]
        out = context.update(data)
        self._last = out[-block:]
        return out

    def __repr__(self) -> str:
        return f"ChainedCbc({self._algorithm.name}, decrypt={self._decrypt}, <key hidden>)"
