"""EF.DG3: fingerprint templates as ISO/IEC 19794-2:2005 finger minutiae records in CBEFF.

Doc 9303-10 4.7.3: 63 { 7F61 { 02 n, 7F60 { A1 {80 0101, 81 08, 82 subtype, 87 0101, 88 type},
5F2E record } … } [, 53 issuer data when n = 0] }, one finger per template (4.7.3.2.4).

Interoperability note: 9303-10 4.7.3.1 asks that the first finger in DG3 be an ISO/IEC 19794-4
finger *image* (format type 0007).  This product stores minutiae templates, as the design asks;
readers that only handle images will skip them.

The 19794-2:2005 record format (clause 7):

- header (24 bytes): 'FMR\\0', version ' 20\\0', record length (4), capture equipment
  certification (4 bits) and device type (12 bits), image width and height (2 each),
  horizontal and vertical resolution in pixels per cm (2 each), number of views, reserved byte;
- per view: finger position, view number (4 bits) and impression type (4 bits), finger quality,
  number of minutiae, 6 bytes per minutia (type in 2 bits and x in 14, 2 reserved bits and y in
  14, angle in 360/256 degree units, quality), then the extended data length (2) and data.

Not modelled by :class:`chip.biometrics.FingerView`, so written as zero and dropped on reading:
capture equipment and device, view number, impression type (0 = live-scan plain) and extended
data.  Files using them are read, but re-encode differently.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from chip.biometrics import FingerView, Minutia
from chip.errors import EncodingError
from chip.holder import HolderData
from chip.lds.base import BiometricTemplate, LDSFile, decode_bit_group, encode_bit_group
from chip.tlv import iter_tlv, tlv

__all__ = ["DG3", "finger_subtype"]

_FIELD = "DG3"
#: CBEFF biometric type "fingerprint" (9303-10 4.7.3.2.3 table 51: '81' '01' '08').
BIOMETRIC_TYPE_FINGER = 0x08
#: SC 37 (format owner 0101) BDB format type of an ISO/IEC 19794-2 finger minutiae record, from
#: the IBIA CBEFF registry (as quoted by MOSIP's CBEFF documentation: 2 = finger minutiae,
#: 7 = finger image, 8 = face image).  Not checked against the registry itself.
FORMAT_TYPE_FINGER_MINUTIAE = 0x0002
_BIT_GROUP = 0x7F61
_ISSUER_DATA = 0x53

_HEADER = struct.Struct(">4s4sIHHHHHBB")
_VIEW = struct.Struct(">BBBB")
_MINUTIA = struct.Struct(">HHBB")
_EXTENDED = struct.Struct(">H")
_FORMAT_ID = b"FMR\x00"
_VERSION = b" 20\x00"
_COORDINATE = 0x3FFF


def finger_subtype(position: int) -> int:
    """CBEFF subtype of a 19794-2 finger position (9303-10 4.7.3.2.1 table 49).

    b2b1 = 01 right, 10 left; b5b4b3 = 001 thumb … 101 little; positions 1–5 are the right hand's
    thumb to little finger, 6–10 the left hand's; 0 (unknown) is "no information given".
    """
    if position == 0:
        return 0x00
    if 1 <= position <= 5:
        return 0b01 | (position << 2)
    if 6 <= position <= 10:
        return 0b10 | ((position - 5) << 2)
    raise EncodingError("finger position is 0 to 10", field="DG3.position")


def _encode_record(view: FingerView) -> bytes:
    """A 19794-2 record holding one finger view."""
    try:
        # One pass over the minutiae: range checks inline and one struct.pack for all of them
        # (a DG3 of two fingers has some 60 minutiae, encoded for every card).
        flat: list[int] = []
        for m in view.minutiae:
            kind, x, y, quality = m.kind, m.x, m.y, m.quality
            # 19794-2:2005 7.4.1: minutia type (or reserved bits) above a 14-bit coordinate.
            if not (0 <= kind <= 2 and 0 <= x <= _COORDINATE and 0 <= y <= _COORDINATE):
                raise ValueError("minutia type is 0 to 2 and coordinates are 14 bits")
            if not 0 <= quality <= 100:
                raise ValueError("quality is 0 to 100")
            flat += ((kind << 14) | x, y, m.angle, quality)
        minutiae = struct.pack(">" + "HHBB" * len(view.minutiae), *flat)
        if not 0 <= view.quality <= 100:
            raise ValueError("quality is 0 to 100")
        finger_subtype(view.position)
        body = (
            _VIEW.pack(view.position, 0, view.quality, len(view.minutiae))
            + minutiae
            + _EXTENDED.pack(0)
        )
        resolution = view.resolution_ppcm
        header = _HEADER.pack(
            _FORMAT_ID,
            _VERSION,
            _HEADER.size + len(body),
            0,
            view.width,
            view.height,
            resolution,
            resolution,
            1,
            0,
        )
    except (struct.error, ValueError) as exc:
        raise EncodingError("finger view value out of range", field="DG3.finger") from exc
    return header + body


def _decode_record(record: bytes) -> list[FingerView]:
    if len(record) < _HEADER.size:
        raise EncodingError("finger minutiae record shorter than its header", field="DG3.record")
    format_id, version, length, _device, width, height, x_res, y_res, count, _ = (
        _HEADER.unpack_from(record)
    )
    if format_id != _FORMAT_ID or version != _VERSION:
        raise EncodingError("not an ISO/IEC 19794-2:2005 minutiae record", field="DG3.record")
    if length != len(record):
        raise EncodingError("minutiae record length does not match", field="DG3.record")
    if x_res != y_res:
        raise EncodingError("different horizontal and vertical resolutions", field="DG3.record")
    views: list[FingerView] = []
    pos = _HEADER.size
    try:
        for _ in range(count):
            position, _impression, quality, n = _VIEW.unpack_from(record, pos)
            pos += _VIEW.size
            minutiae = []
            for _ in range(n):
                x, y, angle, m_quality = _MINUTIA.unpack_from(record, pos)
                minutiae.append(
                    Minutia(x >> 14, x & _COORDINATE, y & _COORDINATE, angle, m_quality)
                )
                pos += _MINUTIA.size
            (extended,) = _EXTENDED.unpack_from(record, pos)
            pos += _EXTENDED.size + extended
            views.append(FingerView(position, quality, width, height, x_res, tuple(minutiae)))
    except struct.error as exc:
        raise EncodingError("minutiae record truncated", field="DG3.record") from exc
    if pos != len(record):
        raise EncodingError("minutiae record length does not match its views", field="DG3.record")
    return views


@dataclass(frozen=True, slots=True)
class DG3(LDSFile):
    """Finger views, one per template.  With none, ``issuer_data`` (DO'53', e.g. random bytes)
    keeps the file's hash from being the same on every card (9303-10 4.7.3.2.2)."""

    EF_NAME = "DG3"

    fingers: tuple[FingerView, ...] = ()
    issuer_data: bytes | None = None
    # The records, encoded (and so checked) once when the file is made.
    _records: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_records", tuple(_encode_record(v) for v in self.fingers))

    @classmethod
    def from_holder(cls, holder: HolderData) -> Self:
        return cls(holder.fingers)

    def _encode(self) -> bytes:
        group = encode_bit_group(
            [
                BiometricTemplate(
                    BIOMETRIC_TYPE_FINGER,
                    FORMAT_TYPE_FINGER_MINUTIAE,
                    record,
                    subtype=finger_subtype(view.position),
                )
                for view, record in zip(self.fingers, self._records, strict=True)
            ]
        )
        if self.issuer_data is None:
            return group
        return group + tlv(_ISSUER_DATA, self.issuer_data)

    @classmethod
    def _decode(cls, content: bytes) -> Self:
        items = list(iter_tlv(content))
        if not items or items[0][0] != _BIT_GROUP:
            raise EncodingError("DG3 starts with a biometric group (7F61)", field=_FIELD)
        if len(items) > 2 or (len(items) == 2 and items[1][0] != _ISSUER_DATA):
            raise EncodingError("only issuer data (53) may follow the group", field=_FIELD)
        templates = decode_bit_group(
            items[0][1],
            biometric_type=BIOMETRIC_TYPE_FINGER,
            format_type=FORMAT_TYPE_FINGER_MINUTIAE,
            field=_FIELD,
        )
        fingers: list[FingerView] = []
        for template in templates:
            views = _decode_record(template.data)
            if (
                template.subtype is not None
                and len(views) == 1
                and template.subtype != finger_subtype(views[0].position)
            ):
                raise EncodingError(
                    "biometric subtype contradicts the finger position", field=_FIELD
                )
            fingers.extend(views)
        return cls(tuple(fingers), items[1][1] if len(items) == 2 else None)

    def __repr__(self) -> str:
        return f"DG3(fingers={len(self.fingers)})"
