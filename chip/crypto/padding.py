"""ISO/IEC 9797-1 padding method 2, the padding of ICAO Doc 9303 Part 11 secure messaging and BAC.

Method 2 appends one ``80`` byte and then the fewest ``00`` bytes that reach a block boundary, so
data that already fills whole blocks still gains a full block: the padding can always be removed
without knowing the original length.
"""

from __future__ import annotations

from chip.errors import EncodingError

__all__ = ["pad", "unpad"]


def pad(data: bytes, block: int) -> bytes:
    """Pad ``data`` to a multiple of ``block`` bytes with ``80 00 .. 00`` (at least one byte)."""
    if block <= 0:
        raise ValueError("block size must be positive")
    return data + b"\x80" + bytes(block - 1 - len(data) % block)


def unpad(data: bytes, *, block: int | None = None) -> bytes:
    """Remove method-2 padding; :class:`EncodingError` if there is none.

    With ``block`` the input must be whole blocks and the padding at most one block long, which is
    what a decrypted secure-messaging data object must satisfy.
    """
    if block is not None and (not data or len(data) % block):
        raise EncodingError("padded data is not a whole number of blocks", field="padding")
    end = len(data.rstrip(b"\x00")) - 1
    if end < 0 or data[end] != 0x80:
        raise EncodingError("padding marker 80 missing", field="padding")
    if block is not None and len(data) - end > block:
        raise EncodingError("padding longer than one block", field="padding")
    return data[:end]
