"""EF.DG2: the portrait as an ISO/IEC 19794-5:2005 facial record in a CBEFF template.

Doc 9303-10 4.7.2:
75 { 7F61 { 02 n, 7F60 { A1 {80 0101, 81 02, 87 0101, 88 0008}, 5F2E record } … } }.
One face per template is written.  The record (19794-5:2005 clause 5):

- header: 'FAC\\0', version '010\\0', record length (4), number of faces (2);
- facial information: block length (4), feature points (2), gender, eye colour, hair colour,
  feature mask (3), expression (2), pose angle yaw/pitch/roll (3), their uncertainty (3);
- feature points, 8 bytes each: type, major/minor code, x (2), y (2), reserved (2);
- image information: face image type, image data type, width (2), height (2), colour space,
  source type, device type (2), quality (2); then the image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

from chip.errors import EncodingError
from chip.holder import HolderData
from chip.lds.base import BiometricTemplate, LDSFile, decode_bit_group, encode_bit_group
from chip.tlv import unwrap

__all__ = ["DG2", "FaceImage", "FeaturePoint", "jpeg_size"]

_FIELD = "DG2"
#: CBEFF biometric type "facial features" (ISO/IEC 19785-1; 9303-10 A.3 example '81' '01' '02').
BIOMETRIC_TYPE_FACE = 0x02
#: SC 37 format type of an ISO/IEC 19794-5 face image (9303-10 A.3 example '88' '02' '0008').
FORMAT_TYPE_FACE = 0x0008
_BIT_GROUP = 0x7F61

_RECORD_HEADER = struct.Struct(">4s4sIH")  # 'FAC\0', '010\0', record length, number of faces
_FACE_INFO = struct.Struct(">IHBBB3sH3s3s")  # block length … pose angle uncertainty: 20 bytes
_FEATURE_POINT = struct.Struct(">BBHHH")
_IMAGE_INFO = struct.Struct(">BBHHBBHH")  # 12 bytes
_FORMAT_ID = b"FAC\x00"
_VERSION = b"010\x00"

IMAGE_DATA_JPEG = 0
IMAGE_DATA_JPEG2000 = 1
FACE_IMAGE_FULL_FRONTAL = 1

# ITU-T T.81 (ISO/IEC 10918-1) B.1.1.3: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# T.81 B.1.1.2: markers without a length: TEM, RSTn, SOI, EOI.
_STANDALONE = frozenset((0x01, *range(0xD0, 0xDA)))
_SOS = 0xDA


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """``(width, height)`` from the first SOFn frame header of a JPEG (ITU-T T.81 B.2.2).

    Walks the marker segments by their lengths, so a 15 KB portrait costs a handful of steps.
    """
    if jpeg[:2] != b"\xff\xd8":
        raise EncodingError("portrait is not a JPEG (no SOI marker)", field="DG2.jpeg")
    pos = 2
    end = len(jpeg)
    while pos + 1 < end:
        if jpeg[pos] != 0xFF:
            raise EncodingError("JPEG marker expected", field="DG2.jpeg")
        marker = jpeg[pos + 1]
        if marker == 0xFF:  # T.81 B.1.1.2: any marker may be preceded by fill bytes
            pos += 1
            continue
        pos += 2
        if marker in _STANDALONE:
            continue
        if marker == _SOS or pos + 2 > end:
            break
        length = int.from_bytes(jpeg[pos : pos + 2], "big")
        if marker in _SOF_MARKERS:
            if length < 8 or pos + 7 > end:
                break
            height, width = struct.unpack_from(">HH", jpeg, pos + 3)
            if width == 0 or height == 0:
                raise EncodingError("JPEG frame header has no size", field="DG2.jpeg")
            return width, height
        if length < 2:
            break
        pos += length
    raise EncodingError("no JPEG frame header before the scan", field="DG2.jpeg")


@dataclass(frozen=True, slots=True)
class FeaturePoint:
    """19794-5 5.6.4: an MPEG-4 feature point; ``code`` is major (high nibble) and minor code."""

    kind: int
    code: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class FaceImage:
    """One face of a 19794-5 record.  ``width``/``height`` of 0 are read from the JPEG."""

    jpeg: bytes
    width: int = 0
    height: int = 0
    gender: int = 0
    eye_colour: int = 0
    hair_colour: int = 0
    feature_mask: int = 0
    expression: int = 0
    pose_angle: tuple[int, int, int] = (0, 0, 0)
    pose_angle_uncertainty: tuple[int, int, int] = (0, 0, 0)
    feature_points: tuple[FeaturePoint, ...] = ()
    face_image_type: int = FACE_IMAGE_FULL_FRONTAL
    image_data_type: int = IMAGE_DATA_JPEG
    colour_space: int = 0
    source_type: int = 0
    device_type: int = 0
    quality: int = 0

    def __post_init__(self) -> None:
        if not self.width or not self.height:
            if self.image_data_type != IMAGE_DATA_JPEG:
                raise EncodingError("width and height are needed for JPEG 2000", field="DG2.size")
            width, height = jpeg_size(self.jpeg)
            object.__setattr__(self, "width", self.width or width)
            object.__setattr__(self, "height", self.height or height)
        if len(self.pose_angle) != 3 or len(self.pose_angle_uncertainty) != 3:
            raise EncodingError("pose angles are yaw, pitch and roll", field="DG2.face")
        self._information()

    def _information(self) -> bytes:
        """Facial information, feature points and image information: everything but the image."""
        points = self.feature_points
        try:
            return b"".join(
                (
                    _FACE_INFO.pack(
                        _FACE_INFO.size
                        + _FEATURE_POINT.size * len(points)
                        + _IMAGE_INFO.size
                        + len(self.jpeg),
                        len(points),
                        self.gender,
                        self.eye_colour,
                        self.hair_colour,
                        self.feature_mask.to_bytes(3, "big"),
                        self.expression,
                        bytes(self.pose_angle),
                        bytes(self.pose_angle_uncertainty),
                    ),
                    *(_FEATURE_POINT.pack(p.kind, p.code, p.x, p.y, 0) for p in points),
                    _IMAGE_INFO.pack(
                        self.face_image_type,
                        self.image_data_type,
                        self.width,
                        self.height,
                        self.colour_space,
                        self.source_type,
                        self.device_type,
                        self.quality,
                    ),
                )
            )
        except (struct.error, OverflowError, ValueError) as exc:
            raise EncodingError("face image value out of range", field="DG2.face") from exc

    def encode(self) -> bytes:
        """The facial information, feature points, image information and image (one face)."""
        return self._information() + self.jpeg

    def __repr__(self) -> str:
        return f"FaceImage({self.width}x{self.height}, {len(self.jpeg)} bytes)"


def _decode_record(record: bytes) -> list[FaceImage]:
    if len(record) < _RECORD_HEADER.size:
        raise EncodingError("facial record shorter than its header", field="DG2.record")
    format_id, version, length, count = _RECORD_HEADER.unpack_from(record)
    if format_id != _FORMAT_ID or version != _VERSION:
        raise EncodingError("not an ISO/IEC 19794-5:2005 facial record", field="DG2.record")
    if length != len(record):
        raise EncodingError("facial record length does not match", field="DG2.record")
    faces: list[FaceImage] = []
    pos = _RECORD_HEADER.size
    for _ in range(count):
        if pos + _FACE_INFO.size > len(record):
            raise EncodingError("facial record truncated", field="DG2.record")
        block, points, gender, eyes, hair, mask, expression, pose, uncertainty = (
            _FACE_INFO.unpack_from(record, pos)
        )
        image_start = pos + _FACE_INFO.size + _FEATURE_POINT.size * points + _IMAGE_INFO.size
        end = pos + block
        if image_start > end or end > len(record):
            raise EncodingError("facial information block length is wrong", field="DG2.record")
        feature_points = tuple(
            FeaturePoint(kind, code, x, y)
            for kind, code, x, y, _reserved in (
                _FEATURE_POINT.unpack_from(record, pos + _FACE_INFO.size + i * _FEATURE_POINT.size)
                for i in range(points)
            )
        )
        image_type, data_type, width, height, colour, source, device, quality = (
            _IMAGE_INFO.unpack_from(record, image_start - _IMAGE_INFO.size)
        )
        faces.append(
            FaceImage(
                jpeg=record[image_start:end],
                width=width,
                height=height,
                gender=gender,
                eye_colour=eyes,
                hair_colour=hair,
                feature_mask=int.from_bytes(mask, "big"),
                expression=expression,
                pose_angle=(pose[0], pose[1], pose[2]),
                pose_angle_uncertainty=(uncertainty[0], uncertainty[1], uncertainty[2]),
                feature_points=feature_points,
                face_image_type=image_type,
                image_data_type=data_type,
                colour_space=colour,
                source_type=source,
                device_type=device,
                quality=quality,
            )
        )
        pos = end
    if pos != len(record):
        raise EncodingError("bytes after the last face", field="DG2.record")
    return faces


def _encode_record(face: FaceImage) -> bytes:
    body = face.encode()
    return _RECORD_HEADER.pack(_FORMAT_ID, _VERSION, _RECORD_HEADER.size + len(body), 1) + body


@dataclass(frozen=True, slots=True)
class DG2(LDSFile):
    """The encoded face(s); the first is the one inspection systems compare (9303-10 4.7.2)."""

    EF_NAME = "DG2"

    faces: tuple[FaceImage, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.faces) <= 9:
            # 9303-10 table 45: 1 to 9 face encodings.
            raise EncodingError("DG2 holds one to nine faces", field="DG2.faces")

    @classmethod
    def from_holder(cls, holder: HolderData) -> Self:
        return cls((FaceImage(holder.portrait_jpeg),))

    def _encode(self) -> bytes:
        return encode_bit_group(
            [
                BiometricTemplate(BIOMETRIC_TYPE_FACE, FORMAT_TYPE_FACE, _encode_record(face))
                for face in self.faces
            ]
        )

    @classmethod
    def _decode(cls, content: bytes) -> Self:
        templates = decode_bit_group(
            unwrap(content, _BIT_GROUP),
            biometric_type=BIOMETRIC_TYPE_FACE,
            format_type=FORMAT_TYPE_FACE,
            field=_FIELD,
        )
        return cls(tuple(face for t in templates for face in _decode_record(t.data)))

    def __repr__(self) -> str:
        return f"DG2(faces={len(self.faces)})"
