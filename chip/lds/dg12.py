"""EF.DG12: additional document details (Doc 9303-10 4.7.12, table 73).

Every element is optional and announced in the tag list DO'5C'.  Names of other persons are
written as A0 { 02 count, 5F1A name … } and listed as 5F1A in the tag list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from chip.holder import HolderData
from chip.lds.base import Element, Kind, LDSFile, decode_tagged, encode_tagged, validate_tagged

__all__ = ["DG12"]

# In the order of table 73, which is the order written.
_ELEMENTS = (
    Element(0x5F19, "issuing_authority", Kind.TEXT),
    Element(0x5F26, "date_of_issue", Kind.DATE),
    Element(0x5F1A, "other_persons", Kind.NAMES),
    Element(0x5F1B, "endorsements", Kind.TEXT),
    Element(0x5F1C, "tax_exit_requirements", Kind.TEXT),
    Element(0x5F1D, "image_of_front", Kind.BINARY),
    Element(0x5F1E, "image_of_rear", Kind.BINARY),
    Element(0x5F55, "personalization_time", Kind.TIMESTAMP),
    Element(0x5F56, "personalization_system_serial", Kind.TEXT),
)


@dataclass(frozen=True, slots=True)
class DG12(LDSFile):
    """``None`` (``()`` for other persons) means absent; dates are "yyyymmdd", the
    personalization time "yyyymmddhhmmss"."""

    EF_NAME = "DG12"

    issuing_authority: str | None = None
    date_of_issue: str | None = None
    other_persons: tuple[str, ...] = ()
    endorsements: str | None = None
    tax_exit_requirements: str | None = None
    image_of_front: bytes | None = None
    image_of_rear: bytes | None = None
    personalization_time: str | None = None
    personalization_system_serial: str | None = None

    def __post_init__(self) -> None:
        validate_tagged(self, _ELEMENTS, self.EF_NAME)

    @classmethod
    def from_holder(cls, holder: HolderData) -> Self:
        return cls(
            issuing_authority=holder.issuing_authority or None,
            date_of_issue=holder.date_of_issue.strftime("%Y%m%d"),
        )

    def _encode(self) -> bytes:
        return encode_tagged(self, _ELEMENTS)

    @classmethod
    def _decode(cls, content: bytes) -> Self:
        return cls(**decode_tagged(content, _ELEMENTS, cls.EF_NAME))

    def __repr__(self) -> str:
        return "DG12(<personal data>)"
