"""BER-TLV as used by ISO/IEC 7816-4 and ICAO Doc 9303-10 (4.4): definite lengths only.

A tag is the integer value of its encoded bytes (``0x5F1F``, ``0x7F61``, ``0x5F8001``), which is how
Doc 9303 and ISO/IEC 7816 print them.  Malformed input raises :class:`chip.errors.EncodingError`
and nothing else; an impossible argument from the caller (a negative length, a tag that is not a
well-formed BER tag) raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from chip.errors import EncodingError

__all__ = [
    "encode_length",
    "encode_tag",
    "is_constructed",
    "iter_tags",
    "iter_tlv",
    "read_tag",
    "read_tlv",
    "tlv",
    "unwrap",
]

# ISO/IEC 7816-4:2020 6.3: tag fields of one, two or three bytes.
_MAX_TAG_BYTES = 3
# ISO/IEC 7816-4:2020 6.3, table 11: length fields '81'..'84'; nothing on an eMRTD comes close.
_MAX_LENGTH_BYTES = 4


def encode_tag(tag: int) -> bytes:
    """The bytes of ``tag``; ``ValueError`` unless they form a BER tag (ISO/IEC 8825-1 8.1.2)."""
    if tag <= 0:
        raise ValueError("tag must be positive")
    encoded = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    if len(encoded) > _MAX_TAG_BYTES:
        raise ValueError("tag longer than three bytes")
    first = encoded[0]
    if first == 0xFF:
        raise ValueError("'FF' is not a valid first tag byte")
    if len(encoded) == 1:
        if first & 0x1F == 0x1F:
            raise ValueError("one-byte tag announces subsequent bytes")
        return encoded
    # 8825-1 8.1.2.4: low five bits all ones, then bytes with b8 set except the last.
    if first & 0x1F != 0x1F or any(b & 0x80 == 0 for b in encoded[1:-1]) or encoded[-1] & 0x80:
        raise ValueError("malformed multi-byte tag")
    return encoded


def encode_length(n: int) -> bytes:
    """Definite length, short form below 128 and the shortest long form above (8825-1 8.1.3)."""
    if n < 0:
        raise ValueError("length must not be negative")
    if n < 0x80:
        return bytes((n,))
    size = (n.bit_length() + 7) // 8
    if size > _MAX_LENGTH_BYTES:
        raise ValueError("length does not fit in four bytes")
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


# A file or APDU uses a handful of tags many times; each is checked and encoded once.
_encoded_tag = lru_cache(maxsize=512)(encode_tag)


def tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    length = bytes((n,)) if n < 0x80 else encode_length(n)
    return b"".join((_encoded_tag(tag), length, value))


def is_constructed(tag: int) -> bool:
    """Bit b6 of the first tag byte (8825-1 8.1.2.5)."""
    return bool(encode_tag(tag)[0] & 0x20)


def read_tag(data: bytes, offset: int = 0) -> tuple[int, int]:
    """The tag starting at ``offset`` and the offset after it."""
    end = len(data)
    if offset >= end:
        raise EncodingError("TLV truncated: tag missing")
    first = data[offset]
    # 7816-4 6.3: '00' and 'FF' are padding or invalid as a first tag byte.
    if first in (0x00, 0xFF):
        raise EncodingError(f"invalid tag byte {first:02X}")
    tag = first
    pos = offset + 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= end:
                raise EncodingError("TLV truncated inside a tag")
            if pos - offset >= _MAX_TAG_BYTES:
                raise EncodingError("tag longer than three bytes")
            byte = data[pos]
            tag = (tag << 8) | byte
            pos += 1
            if not byte & 0x80:
                break
    return tag, pos


def _read_length(data: bytes, offset: int) -> tuple[int, int]:
    end = len(data)
    if offset >= end:
        raise EncodingError("TLV truncated: length missing")
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    if first == 0x80:
        # 7816-4 and Doc 9303 use definite lengths only; a personaliser never writes '80'.
        raise EncodingError("indefinite length is not allowed")
    size = first & 0x7F
    if size > _MAX_LENGTH_BYTES:
        raise EncodingError(f"length field of {size} bytes is not supported")
    if offset + 1 + size > end:
        raise EncodingError("TLV truncated inside a length")
    return int.from_bytes(data[offset + 1 : offset + 1 + size], "big"), offset + 1 + size


def read_tlv(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """``(tag, value, next_offset)`` of the data object starting at ``offset``."""
    if offset < 0:
        raise ValueError("offset must not be negative")
    tag, pos = read_tag(data, offset)
    length, pos = _read_length(data, pos)
    stop = pos + length
    if stop > len(data):
        raise EncodingError(
            f"TLV {tag:X} truncated: {length} bytes announced, {len(data) - pos} left"
        )
    return tag, data[pos:stop], stop


def iter_tlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every sibling data object in ``data``, which they must fill exactly."""
    offset = 0
    end = len(data)
    while offset < end:
        tag, value, offset = read_tlv(data, offset)
        yield tag, value


def iter_tags(data: bytes) -> Iterator[int]:
    """The tags of a tag list such as DO'5C' (Doc 9303-10 4.6.1, 4.7.11): tags without lengths."""
    offset = 0
    end = len(data)
    while offset < end:
        tag, offset = read_tag(data, offset)
        yield tag


def unwrap(data: bytes, tag: int) -> bytes:
    """The value of the single data object ``tag`` that ``data`` consists of."""
    found, value, end = read_tlv(data, 0)
    if found != tag:
        raise EncodingError(f"expected tag {tag:X}, found {found:X}")
    if end != len(data):
        raise EncodingError(f"{len(data) - end} bytes after TLV {tag:X}")
    return value
