"""What the printer prints: one card face as a plain value, knowing nothing about chips or stores.

The personaliser fills it (``personaliser.faces``); the MRZ lines arrive ready-made, because the MRZ
is the chip's business (``chip.mrz``) and the printer only reproduces it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

__all__ = ["CardFace"]

_MRZ_LINE = re.compile(r"[A-Z0-9<]{30}")  # ICAO Doc 9303-5, 4.2.2: TD1, three lines of 30
_CARD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # becomes a directory name in proofs
_HEX = re.compile(r"[0-9A-F]{8,64}")
_CARD_NUMBER = re.compile(r"[A-Z]{1,2}[0-9]{6}\([0-9A]\)")


@dataclass(frozen=True, slots=True)
class CardFace:
    """Everything printed on the front and back of one card.

    ``card_number`` carries its check digit in brackets (``"A123456(3)"``); ``symbols`` is the
    HKIC symbol string (``"***AZ"``); ``chip_serial`` is the blank's serial in upper-case hex and
    feeds the per-card security element that binds face and chip.  The repr shows the card id
    only: every other field is personal data or ties to it.
    """

    card_id: str
    chip_serial: str
    english_name: str
    chinese_name: str
    chinese_commercial_code: str
    date_of_birth: date
    sex: str
    date_of_first_registration: date
    date_of_issue: date
    card_number: str
    symbols: str
    mrz_lines: tuple[str, str, str]
    portrait_jpeg: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _CARD_ID.fullmatch(self.card_id):
            raise ValueError("card_id must be 1-40 characters A-Z, a-z, 0-9, '_', '-'")
        if not _HEX.fullmatch(self.chip_serial):
            raise ValueError("chip_serial must be 8-64 upper-case hex digits")
        if len(self.mrz_lines) != 3 or not all(_MRZ_LINE.fullmatch(x) for x in self.mrz_lines):
            raise ValueError("mrz_lines must be three lines of 30 characters A-Z, 0-9, '<'")
        if not _CARD_NUMBER.fullmatch(self.card_number):
            raise ValueError("card_number must look like 'A123456(3)'")
        if self.sex not in ("M", "F", "X"):
            raise ValueError("sex must be M, F or X")
        if not self.portrait_jpeg.startswith(b"\xff\xd8"):
            raise ValueError("portrait_jpeg is not a JPEG")

    def __repr__(self) -> str:
        return f"CardFace(card_id={self.card_id!r})"

    __str__ = __repr__
