"""What every LDS1 elementary file shares: the outer tag and length, tag-list templates, CBEFF.

- :class:`LDSFile` reads and writes the file's outer data object (tag from :mod:`chip.lds.tags`,
  Doc 9303-10 4.6 table 38); subclasses only encode and decode its content.
- :func:`encode_tagged` / :func:`decode_tagged` handle the templates whose elements are all optional
  and announced by a tag list DO'5C' (DG11 and DG12, Doc 9303-10 4.7.11 and 4.7.12).
- :func:`encode_bit_group` / :func:`decode_bit_group` handle the biometric information template
  group of DG2–DG4 (Doc 9303-10 4.7.2.1, 4.7.3.1; ISO/IEC 7816-11 nested BITs with CBEFF headers).

Every malformed input raises :class:`chip.errors.EncodingError` with ``field`` naming the file and,
where known, the element.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Self

from chip.errors import EncodingError
from chip.lds.tags import by_name
from chip.tlv import encode_tag, iter_tags, iter_tlv, tlv, unwrap

__all__ = [
    "BiometricTemplate",
    "Element",
    "Kind",
    "LDSFile",
    "decode_bit_group",
    "decode_tagged",
    "encode_bit_group",
    "encode_tagged",
    "validate_tagged",
]


class LDSFile(ABC):
    """Base of the frozen dataclasses in ``chip.lds``: ``from_bytes`` / ``to_bytes`` of an EF."""

    __slots__ = ()

    #: The file's name in the table of :mod:`chip.lds.tags` (``"EF.COM"``, ``"DG1"`` …).
    EF_NAME: ClassVar[str]

    @classmethod
    def tag(cls) -> int:
        tag = by_name(cls.EF_NAME).tag
        if tag is None:  # pragma: no cover - only EFs with a tag derive from LDSFile
            raise TypeError(f"{cls.EF_NAME} has no tag")
        return tag

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        try:
            return cls._decode(unwrap(data, cls.tag()))
        except EncodingError as exc:
            if exc.field is not None:
                raise
            raise EncodingError(str(exc), field=cls.EF_NAME) from exc

    def to_bytes(self) -> bytes:
        return tlv(self.tag(), self._encode())

    @classmethod
    @abstractmethod
    def _decode(cls, content: bytes) -> Self:
        """The file from the value of its outer data object."""

    @abstractmethod
    def _encode(self) -> bytes:
        """The value of the file's outer data object."""


# --- templates with a tag list (DG11, DG12) ---------------------------------------------------

_TAG_LIST = 0x5C
_CONTENT_SPECIFIC = 0xA0
_COUNT = 0x02


class Kind(Enum):
    TEXT = "text"  # UTF-8; "this template may contain non-Latin characters" (9303-10 4.7.11)
    BINARY = "binary"  # an image per ISO/IEC 10918
    DATE = "date"  # yyyymmdd as 8 ASCII digits
    TIMESTAMP = "timestamp"  # yyyymmddhhmmss as 14 ASCII digits
    NAMES = "names"  # A0 { 02 count, <tag> repeated count times }


_DIGITS = {Kind.DATE: 8, Kind.TIMESTAMP: 14}


@dataclass(frozen=True, slots=True)
class Element:
    """One optional element of a tag-list template: its tag, the attribute holding it, its kind.

    Absent elements are ``None`` (``()`` for :attr:`Kind.NAMES`).
    """

    tag: int
    attr: str
    kind: Kind


def validate_tagged(obj: object, elements: Sequence[Element], file: str) -> None:
    """Check that each present attribute can be encoded as its element."""
    for element in elements:
        value = getattr(obj, element.attr)
        field = f"{file}.{element.attr}"
        if element.kind is Kind.NAMES:
            if not isinstance(value, tuple) or not all(isinstance(n, str) for n in value):
                raise EncodingError("expected a tuple of names", field=field)
            if len(value) > 0xFF:
                raise EncodingError("too many names for a one-byte count", field=field)
        elif value is None:
            continue
        elif element.kind is Kind.BINARY:
            if not isinstance(value, bytes):
                raise EncodingError("expected bytes", field=field)
        elif not isinstance(value, str):
            raise EncodingError("expected text", field=field)
        elif element.kind in _DIGITS and not re.fullmatch(
            rf"[0-9]{{{_DIGITS[element.kind]}}}", value
        ):
            raise EncodingError(f"expected {_DIGITS[element.kind]} digits", field=field)


def encode_tagged(obj: object, elements: Sequence[Element]) -> bytes:
    """DO'5C' listing the present elements, then the elements in the order of ``elements``."""
    present: list[int] = []
    body: list[bytes] = []
    for element in elements:
        value = getattr(obj, element.attr)
        if value is None or value == ():
            continue
        present.append(element.tag)
        if element.kind is Kind.NAMES:
            names = b"".join(tlv(element.tag, name.encode("utf-8")) for name in value)
            body.append(tlv(_CONTENT_SPECIFIC, tlv(_COUNT, bytes((len(value),))) + names))
        elif element.kind is Kind.BINARY:
            body.append(tlv(element.tag, value))
        else:
            body.append(tlv(element.tag, value.encode("utf-8")))
    tag_list = tlv(_TAG_LIST, b"".join(encode_tag(t) for t in present))
    return tag_list + b"".join(body)


def _decode_digits(value: bytes, kind: Kind, field: str) -> str:
    digits = _DIGITS[kind]
    # 9303-10 4.7.12: inspection systems should accept BCD dates as well as ASCII.
    text = value.hex() if len(value) == digits // 2 else _decode_text(value, field)
    if not re.fullmatch(rf"[0-9]{{{digits}}}", text):
        raise EncodingError(f"expected {digits} digits", field=field)
    return text


def _decode_text(value: bytes, field: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncodingError("text is not UTF-8", field=field) from exc


def _decode_names(value: bytes, element: Element, field: str) -> list[str]:
    items = list(iter_tlv(value))
    if not items or items[0][0] != _COUNT or len(items[0][1]) != 1:
        raise EncodingError(
            "content-specific template must start with a one-byte count", field=field
        )
    names = items[1:]
    if items[0][1][0] != len(names) or any(tag != element.tag for tag, _ in names):
        raise EncodingError("count does not match the names that follow", field=field)
    return [_decode_text(name, field) for _, name in names]


def decode_tagged(content: bytes, elements: Sequence[Element], file: str) -> dict[str, Any]:
    """The attributes of a tag-list template whose tag list names exactly the elements present."""
    items = list(iter_tlv(content))
    if not items or items[0][0] != _TAG_LIST:
        raise EncodingError("template must start with a tag list (5C)", field=f"{file}.tag_list")
    by_tag = {element.tag: element for element in elements}
    names_element = next((e for e in elements if e.kind is Kind.NAMES), None)
    values: dict[str, Any] = {}
    for tag, value in items[1:]:
        element = names_element if tag == _CONTENT_SPECIFIC else by_tag.get(tag)
        if element is None:
            raise EncodingError(f"unexpected tag {tag:X}", field=file)
        field = f"{file}.{element.attr}"
        if element.kind is Kind.NAMES:
            # A0 is how 9303-10 (8th ed.) writes them; JMRTD also reads bare, repeated tags.
            names = (
                _decode_names(value, element, field)
                if tag == _CONTENT_SPECIFIC
                else [_decode_text(value, field)]
            )
            values[element.attr] = (*values.get(element.attr, ()), *names)
            continue
        if element.attr in values:
            raise EncodingError("element appears twice", field=field)
        if element.kind is Kind.BINARY:
            values[element.attr] = value
        elif element.kind in _DIGITS:
            values[element.attr] = _decode_digits(value, element.kind, field)
        else:
            values[element.attr] = _decode_text(value, field)
    listed = {
        names_element.tag if names_element and t == _CONTENT_SPECIFIC else t
        for t in iter_tags(items[0][1])
    }
    present = {e.tag for e in elements if e.attr in values}
    if listed != present:
        raise EncodingError(
            "tag list does not match the elements present", field=f"{file}.tag_list"
        )
    return values


# --- biometric information template group (DG2, DG3) ----------------------------------------------

_BIT_GROUP = 0x7F61
_BIT = 0x7F60
_BHT = 0xA1
_BDB = 0x5F2E
_BDB_39794 = 0x7F2E
_HEADER_VERSION = 0x80
_BIOMETRIC_TYPE = 0x81
_BIOMETRIC_SUBTYPE = 0x82
_FORMAT_OWNER = 0x87
_FORMAT_TYPE = 0x88
#: ISO/IEC JTC 1/SC 37 as CBEFF format owner (9303-10 4.7.3.2.3 table 51: '87' '02' '01 01').
FORMAT_OWNER_SC37 = 0x0101
_ICAO_HEADER_VERSION = b"\x01\x01"


@dataclass(frozen=True, slots=True)
class BiometricTemplate:
    """One BIT: the CBEFF header values that identify its data, and the biometric data block."""

    biometric_type: int
    format_type: int
    data: bytes
    subtype: int | None = None


def encode_bit_group(templates: Sequence[BiometricTemplate]) -> bytes:
    """DO'7F61' with the instance count and one nested DO'7F60' per template (9303-10 table 44)."""
    if len(templates) > 0xFF:
        raise ValueError("at most 255 biometric templates fit a one-byte count")
    parts = [tlv(_COUNT, bytes((len(templates),)))]
    for template in templates:
        header = [
            tlv(_HEADER_VERSION, _ICAO_HEADER_VERSION),
            tlv(_BIOMETRIC_TYPE, bytes((template.biometric_type,))),
        ]
        if template.subtype is not None:
            header.append(tlv(_BIOMETRIC_SUBTYPE, bytes((template.subtype,))))
        header.append(tlv(_FORMAT_OWNER, FORMAT_OWNER_SC37.to_bytes(2, "big")))
        header.append(tlv(_FORMAT_TYPE, template.format_type.to_bytes(2, "big")))
        parts.append(tlv(_BIT, tlv(_BHT, b"".join(header)) + tlv(_BDB, template.data)))
    return tlv(_BIT_GROUP, b"".join(parts))


def decode_bit_group(
    value: bytes, *, biometric_type: int, format_type: int, field: str
) -> list[BiometricTemplate]:
    """The templates of a DO'7F61' value whose headers say ``format_type`` of SC 37.

    Optional header elements (creation date, validity, creator, 83/85/86) are accepted and
    dropped; a BDB in ISO/IEC 39794 form (DO'7F2E') is refused.
    """
    items = list(iter_tlv(value))
    if not items or items[0][0] != _COUNT or len(items[0][1]) != 1:
        raise EncodingError("biometric group must start with a one-byte count", field=field)
    bits = items[1:]
    if items[0][1][0] != len(bits) or any(tag != _BIT for tag, _ in bits):
        raise EncodingError("instance count does not match the templates", field=field)
    templates: list[BiometricTemplate] = []
    for _, bit in bits:
        parts = list(iter_tlv(bit))
        if len(parts) != 2 or parts[0][0] != _BHT:
            raise EncodingError("a template is a header (A1) and a data block", field=field)
        if parts[1][0] == _BDB_39794:
            raise EncodingError("ISO/IEC 39794 data blocks are not supported", field=field)
        if parts[1][0] != _BDB:
            raise EncodingError("data block must be tagged 5F2E", field=field)
        header = dict(iter_tlv(parts[0][1]))
        owner = int.from_bytes(header.get(_FORMAT_OWNER, b""), "big")
        found_type = int.from_bytes(header.get(_FORMAT_TYPE, b""), "big")
        if owner != FORMAT_OWNER_SC37 or found_type != format_type:
            raise EncodingError("unexpected CBEFF format owner or type", field=f"{field}.header")
        kind = header.get(_BIOMETRIC_TYPE)
        if kind is not None and int.from_bytes(kind, "big") != biometric_type:
            raise EncodingError("unexpected CBEFF biometric type", field=f"{field}.header")
        subtype = header.get(_BIOMETRIC_SUBTYPE)
        if subtype is not None and len(subtype) != 1:
            raise EncodingError("biometric subtype is one byte", field=f"{field}.header")
        templates.append(
            BiometricTemplate(
                biometric_type=biometric_type,
                format_type=format_type,
                data=parts[1][1],
                subtype=subtype[0] if subtype is not None else None,
            )
        )
    return templates
