"""EF.DG1: the MRZ as one composite data element, 61 { 5F1F mrz } (Doc 9303-10 4.7.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

from chip.errors import EncodingError
from chip.holder import HolderData
from chip.lds.base import LDSFile
from chip.mrz import TD1, build_td1, parse_td1
from chip.tlv import tlv, unwrap

__all__ = ["DG1"]

_MRZ = 0x5F1F
# 9303-10 tables 40-42: TD1 3 x 30, TD2 2 x 36, TD3 2 x 44 characters.
_LENGTHS = frozenset((90, 72, 88))
_MRZ_CHARS = re.compile(r"[A-Z0-9<]*")


@dataclass(frozen=True, slots=True)
class DG1(LDSFile):
    """The MRZ exactly as printed, without line breaks.

    Check digits are not verified here (the Part 10 TD1 sample itself carries a composite that
    does not match); :meth:`td1` parses and verifies a TD1.
    """

    EF_NAME = "DG1"

    mrz: str

    def __post_init__(self) -> None:
        if len(self.mrz) not in _LENGTHS or not _MRZ_CHARS.fullmatch(self.mrz):
            raise EncodingError(
                "DG1 holds a TD1, TD2 or TD3 MRZ of A-Z, 0-9 and '<'", field="DG1.mrz"
            )

    @classmethod
    def from_holder(cls, holder: HolderData) -> Self:
        return cls(build_td1(holder).text)

    def td1(self) -> TD1:
        return parse_td1(self.mrz)

    def _encode(self) -> bytes:
        return tlv(_MRZ, self.mrz.encode("ascii"))

    @classmethod
    def _decode(cls, content: bytes) -> Self:
        value = unwrap(content, _MRZ)
        try:
            return cls(value.decode("ascii"))
        except UnicodeDecodeError as exc:
            raise EncodingError("the MRZ is ASCII", field="DG1.mrz") from exc

    def __repr__(self) -> str:
        return "DG1(<personal data>)"
