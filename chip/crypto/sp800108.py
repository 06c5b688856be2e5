"""NIST SP 800-108 key derivation in counter mode with CMAC-AES as the PRF.

Two front ends over one loop (SP 800-108 Rev. 1, 4.1 "KDF in Counter Mode"):

- :func:`kdf_counter_cmac` — the counter ``[i]_r`` *before* the fixed input data, the layout of
  the CAVP ``KDFCTR`` vectors marked ``BEFORE_FIXED``;
- :func:`scp03_kdf` — GlobalPlatform's data derivation scheme (GP Card Spec v2.3 Amendment D
  v1.2, 4.1.5), where a one-byte counter sits *in the middle* of the fixed input:
  ``label (11 x 00 || constant) || 00 || L (2 bytes) || i (1 byte) || context``.
  SP 800-108 allows the reordering as long as the layout is unambiguous.

Output is the leftmost ``length_bits`` of ``K(1) || K(2) || ...`` with ``K(i) = CMAC(KI, ...)``.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

__all__ = [
    "CARD_CHALLENGE",
    "CARD_CRYPTOGRAM",
    "HOST_CRYPTOGRAM",
    "S_ENC",
    "S_MAC",
    "S_RMAC",
    "kdf_counter_cmac",
    "keyed_cmac",
    "scp03_kdf",
]

# GP Amendment D 4.1.5, Table 4-1: derivation constants.
CARD_CRYPTOGRAM = 0x00
HOST_CRYPTOGRAM = 0x01
CARD_CHALLENGE = 0x02
S_ENC = 0x04
S_MAC = 0x06
S_RMAC = 0x07

_BLOCK_BITS = 128
_AES_KEY_LENGTHS = frozenset((16, 24, 32))
_COUNTER_WIDTHS = frozenset((8, 16, 24, 32))
_SCP03_LABEL_ZEROS = bytes(11)


def keyed_cmac(key: bytes) -> CMAC:
    """A CMAC-AES keyed with ``key``, to derive several values under one key schedule."""
    if len(key) not in _AES_KEY_LENGTHS:
        raise ValueError("CMAC-AES key must be 16, 24 or 32 bytes")
    return CMAC(algorithms.AES(key))


def _derive(key: bytes | CMAC, before: bytes, after: bytes, length_bits: int, r: int) -> bytes:
    if r not in _COUNTER_WIDTHS:
        raise ValueError("counter width r must be 8, 16, 24 or 32 bits")
    if length_bits <= 0 or length_bits % 8:
        raise ValueError("length_bits must be a positive multiple of 8")
    blocks = -(-length_bits // _BLOCK_BITS)
    # SP 800-108 4.1 step 2: n > 2^r - 1 is an error (the counter would wrap).
    if blocks > (1 << r) - 1:
        raise ValueError("length_bits too large for the counter width")
    # One keyed CMAC, copied per block: the key schedule is done once per derivation.
    keyed = key if isinstance(key, CMAC) else keyed_cmac(key)
    width = r // 8
    out = bytearray()
    for i in range(1, blocks + 1):
        prf = keyed.copy()
        prf.update(before + i.to_bytes(width, "big") + after)
        out += prf.finalize()
    return bytes(out[: length_bits // 8])


def kdf_counter_cmac(
    key: bytes | CMAC, fixed_input: bytes, length_bits: int, *, r: int = 32
) -> bytes:
    """SP 800-108 counter mode, PRF = CMAC-AES, ``K(i) = CMAC(key, [i]_r || fixed_input)``.

    ``key`` may be a :func:`keyed_cmac` (it is copied, never updated).
    """
    return _derive(key, b"", fixed_input, length_bits, r)


def scp03_kdf(key: bytes, constant: int, length_bits: int, context: bytes) -> bytes:
    """GP Amendment D 4.1.5 data derivation (session keys, cryptograms, card challenge).

    ``length_bits`` is L: 0x0040 for a cryptogram or challenge in S8 mode, the key length in
    bits for a session key (Amendment D 6.2.1, 6.2.2).
    """
    if not 0 <= constant <= 0xFF:
        raise ValueError("derivation constant must be a byte")
    if not 0 < length_bits <= 0xFFFF:
        raise ValueError("L must fit the 2-byte field")
    before = _SCP03_LABEL_ZEROS + bytes((constant, 0x00)) + length_bits.to_bytes(2, "big")
    return _derive(key, before, context, length_bits, 8)
