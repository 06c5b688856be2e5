"""What goes on one chip: the holder's data as the chip stage sees it.

The application model (validation, JSONL intake) belongs to ``personaliser``; it converts to this
frozen value so that ``chip`` knows nothing about batches or intake (DESIGN §2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from chip.biometrics import FingerView

__all__ = ["HolderData"]


@dataclass(frozen=True, slots=True)
class HolderData:
    """Holder and document data for a TD1 identity card.

    Latin names are as the applicant wrote them; ``chip.mrz`` transliterates them to the MRZ
    alphabet (ICAO 9303-3 6.A).  The repr shows no personal data.
    """

    document_number: str
    surname: str
    given_names: str
    date_of_birth: date
    sex: str  # "M", "F" or "X"
    date_of_expiry: date
    date_of_issue: date
    nationality: str = "CHN"
    issuing_state: str = "CHN"
    document_code: str = "ID"
    personal_number: str = ""  # HKIC number, e.g. "A123456(3)"
    name_national: str = ""  # full name in national characters, e.g. Chinese (DG11 tag 5F0E)
    chinese_commercial_code: str = ""  # four-digit codes per character, space-separated
    place_of_birth: str = ""
    issuing_authority: str = "IMMIGRATION DEPARTMENT HONG KONG SAR"
    portrait_jpeg: bytes = b""
    fingers: tuple[FingerView, ...] = field(default=())

    def __repr__(self) -> str:
        return "HolderData(<personal data>)"
