"""EF.DG11: additional personal details (Doc 9303-10 4.7.11, table 71).

Every element is optional and announced in the tag list DO'5C'.  Text is UTF-8, so the holder's
name in Chinese characters goes into 5F0E as written.  Other names are written as
A0 { 02 count, 5F0F name … } and listed as 5F0F in the tag list, as JMRTD does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from chip.holder import HolderData
from chip.lds.base import Element, Kind, LDSFile, decode_tagged, encode_tagged, validate_tagged

__all__ = ["DG11"]

# In the order of table 71, which is the order written.
_ELEMENTS = (
    Element(0x5F0E, "full_name", Kind.TEXT),
    Element(0x5F0F, "other_names", Kind.NAMES),
    Element(0x5F10, "personal_number", Kind.TEXT),
    Element(0x5F2B, "full_date_of_birth", Kind.DATE),
    Element(0x5F11, "place_of_birth", Kind.TEXT),
    Element(0x5F42, "permanent_address", Kind.TEXT),
    Element(0x5F12, "telephone", Kind.TEXT),
    Element(0x5F13, "profession", Kind.TEXT),
    Element(0x5F14, "title", Kind.TEXT),
    Element(0x5F15, "personal_summary", Kind.TEXT),
    Element(0x5F16, "proof_of_citizenship", Kind.BINARY),
    Element(0x5F17, "other_valid_td_numbers", Kind.TEXT),
    Element(0x5F18, "custody_information", Kind.TEXT),
)


@dataclass(frozen=True, slots=True)
class DG11(LDSFile):
    """``None`` (``()`` for other names) means absent.  Multi-part values (place of birth,
    address, other TD numbers) keep their '<' separators; dates are "yyyymmdd"."""

    EF_NAME = "DG11"

    full_name: str | None = None
    other_names: tuple[str, ...] = ()
    personal_number: str | None = None
    full_date_of_birth: str | None = None
    place_of_birth: str | None = None
    permanent_address: str | None = None
    telephone: str | None = None
    profession: str | None = None
    title: str | None = None
    personal_summary: str | None = None
    proof_of_citizenship: bytes | None = None
    other_valid_td_numbers: str | None = None
    custody_information: str | None = None

    def __post_init__(self) -> None:
        validate_tagged(self, _ELEMENTS, self.EF_NAME)

    @classmethod
    def from_holder(cls, holder: HolderData) -> Self:
        """Name in national characters, HKIC number, full date of birth and place of birth.

        Without a national-characters name, 5F0E carries the Latin name as "SURNAME<<GIVEN<NAMES".
        """
        latin = "<<".join(
            "<".join(part.split()) for part in (holder.surname, holder.given_names) if part.strip()
        )
        return cls(
            full_name=holder.name_national or latin or None,
            personal_number=holder.personal_number or None,
            full_date_of_birth=holder.date_of_birth.strftime("%Y%m%d"),
            place_of_birth=holder.place_of_birth or None,
        )

    def _encode(self) -> bytes:
        return encode_tagged(self, _ELEMENTS)

    @classmethod
    def _decode(cls, content: bytes) -> Self:
        return cls(**decode_tagged(content, _ELEMENTS, cls.EF_NAME))

    def __repr__(self) -> str:
        return "DG11(<personal data>)"
