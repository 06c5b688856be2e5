"""The machine readable zone of a TD1 card: check digits, transliteration, names, build and parse.

ICAO Doc 9303 (8th ed., 2021) Part 3 (4.6 names, 4.8 dates, 4.9 check digits, 6.A transliteration)
and Part 5 (4.2.2 TD1 data structure, 4.2.3 truncation of names, 4.2.4 check digits); the BAC/PACE
seed is Part 11, 9.7.2.  Errors are :class:`chip.errors.EncodingError` naming the field; messages
never carry the data itself.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from chip.errors import EncodingError
from chip.hkid import parse_hkid
from chip.holder import HolderData

__all__ = [
    "TD1",
    "build_td1",
    "check_digit",
    "format_name",
    "mrz_information",
    "parse_td1",
    "transliterate",
]

TD1_LINE = 30
_FILLER = "<"
_VALUES = {
    **{str(d): d for d in range(10)},
    **{chr(ord("A") + i): 10 + i for i in range(26)},
    _FILLER: 0,
}
_WEIGHTS = (7, 3, 1)
_MRZ_CHARS = re.compile(r"[A-Z0-9<]*")
_NAME_CHARS = re.compile(r"[A-Z<]*")

# Part 3, 6.A (amended 2024).  Where the table offers a choice ("AE or A", "N or NXX") the first,
# recommended form is used, so that one name always gives one MRZ.
_LATIN: dict[str, str] = {
    **dict.fromkeys("ÀÁÂÃĀĂĄ", "A"),
    "Ä": "AE",
    "Å": "AA",
    "Æ": "AE",
    **dict.fromkeys("ÇĆĈĊČ", "C"),
    **dict.fromkeys("ÐĎĐ", "D"),
    **dict.fromkeys("ÈÉÊËĒĔĖĘĚ", "E"),
    **dict.fromkeys("ĜĞĠĢ", "G"),
    **dict.fromkeys("ĤĦ", "H"),
    **dict.fromkeys("ÌÍÎÏĨĪĬĮİ", "I"),
    "Ĳ": "IJ",
    "Ĵ": "J",
    "Ķ": "K",
    **dict.fromkeys("ĹĻĽĿŁ", "L"),
    **dict.fromkeys("ÑŃŅŇŊ", "N"),
    **dict.fromkeys("ÒÓÔÕŌŎŐ", "O"),
    "Ö": "OE",
    "Ø": "OE",
    "Œ": "OE",
    **dict.fromkeys("ŔŖŘ", "R"),
    **dict.fromkeys("ŚŜŞŠ", "S"),
    "ẞ": "SS",
    **dict.fromkeys("ŢŤŦ", "T"),
    "Þ": "TH",
    **dict.fromkeys("ÙÚÛŨŪŬŮŰŲ", "U"),
    "Ü": "UE",
    "Ŵ": "W",
    **dict.fromkeys("ÝŶŸ", "Y"),
    **dict.fromkeys("ŹŻŽ", "Z"),
}
# Part 3, 4.6: an apostrophe is dropped and the parts joined ("D'ARTAGNAN" → "DARTAGNAN").
_APOSTROPHES = frozenset("'\u2018\u2019\u02bc\u0060\u00b4")
# Part 3, 4.6: a hyphen, and a comma between name components, become a single filler.
_SEPARATORS = frozenset(",")


def check_digit(field: str, *, name: str | None = None) -> str:
    """Part 3, 4.9: weights 7, 3, 1 repeating, A–Z = 10–35, ``<`` = 0, modulus 10."""
    total = 0
    for i, c in enumerate(field):
        value = _VALUES.get(c)
        if value is None:
            raise EncodingError("character outside the MRZ alphabet", field=name)
        total += value * _WEIGHTS[i % 3]
    return str(total % 10)


def transliterate(name: str, *, field: str = "name") -> str:
    """A name as written by the applicant → MRZ components joined by ``<`` (Part 3, 4.6 and 6.A).

    Letters with diacritics follow table 6.A; spaces, hyphens and commas separate components;
    apostrophes and other punctuation are dropped; digits and any other script are refused.
    """
    out: list[str] = []
    for i, c in enumerate(unicodedata.normalize("NFC", name.upper())):
        if "A" <= c <= "Z":
            out.append(c)
        elif c in _LATIN:
            out.append(_LATIN[c])
        elif c.isspace() or c in _SEPARATORS or unicodedata.category(c) == "Pd":
            out.append(" ")
        elif c in _APOSTROPHES or unicodedata.category(c).startswith("P"):
            continue
        else:
            raise EncodingError(f"character {i} cannot be written in the MRZ", field=field)
    return _FILLER.join("".join(out).split())


def _fit(components: list[str], n: int) -> str:
    """Exactly ``n`` characters of ``components`` ending in a letter (Part 5, 4.2.2.3 and 4.2.3).

    The caller has checked that the components do not fit.  Cutting at ``n`` is one of the methods
    Part 5, 4.2.3 shows ("one or more name components truncated"); when the cut lands on a filler,
    the last component that can spare a letter gives one up so that the next component's initial
    ends the field.
    """
    cut = _FILLER.join(components)[:n]
    if cut[-1] != _FILLER:
        return cut
    included = cut[:-1].split(_FILLER)
    following = components[len(included)]
    for k in range(len(included) - 1, -1, -1):
        if len(included[k]) > 1:
            included[k] = included[k][:-1]
            return _FILLER.join(included) + _FILLER + following[0]
    raise EncodingError("name cannot be truncated to end in a letter", field="name")


def format_name(primary: str, secondary: str, length: int = TD1_LINE) -> str:
    """The MRZ name field: ``PRIMARY<<SECONDARY`` filled or truncated to ``length`` characters.

    ``primary`` and ``secondary`` are already transliterated (components joined by ``<``).
    Truncation (Part 5, 4.2.2.3; Part 4, 4.2.2.1 for 39 positions): the secondary identifier is cut
    first; if the primary identifier alone leaves no room for ``<<`` and one letter of the
    secondary, the primary is cut to make that room.  The field then ends in a letter, which
    tells a reader that truncation may have occurred.
    """
    primary_parts = primary.split(_FILLER) if primary else []
    secondary_parts = secondary.split(_FILLER) if secondary else []
    if not primary_parts or not all(primary_parts) or not all(secondary_parts):
        raise EncodingError("empty name component", field="name")
    if not _NAME_CHARS.fullmatch(primary + secondary):
        raise EncodingError("name must be transliterated to A-Z and '<'", field="name")
    joined_primary = _FILLER.join(primary_parts)
    full = joined_primary + (_FILLER * 2 + _FILLER.join(secondary_parts) if secondary_parts else "")
    if len(full) <= length:
        return full.ljust(length, _FILLER)
    if not secondary_parts:
        return _fit(primary_parts, length)
    if len(joined_primary) + 3 <= length:
        rest = length - len(joined_primary) - 2
        return joined_primary + _FILLER * 2 + _fit(secondary_parts, rest)
    return _fit(primary_parts, length - 3) + _FILLER * 2 + secondary_parts[0][0]


def _yymmdd(value: date | str, field: str) -> str:
    """Part 3, 4.8: YYMMDD; unknown parts of a date of birth are fillers."""
    text = value.strftime("%y%m%d") if isinstance(value, date) else value
    if not re.fullmatch(r"[0-9<]{6}", text):
        raise EncodingError("date must be YYMMDD", field=field)
    return text


def mrz_information(
    document_number: str, date_of_birth: date | str, date_of_expiry: date | str
) -> str:
    """The BAC/PACE key seed input, Doc 9303-11 9.7.2: number, DOB, DOE, each with its check digit.

    The document number keeps its ``<`` fillers up to nine characters: a seed built from the bare
    number (as JMRTD's ``MRZInfo.getDocumentNumber()`` gives it) is a different key.
    """
    if not re.fullmatch(r"[A-Z0-9<]{1,9}", document_number):
        raise EncodingError(
            "document number must be 1 to 9 MRZ characters", field="document_number"
        )
    number = document_number.ljust(9, _FILLER)
    dob = _yymmdd(date_of_birth, "date_of_birth")
    doe = _yymmdd(date_of_expiry, "date_of_expiry")
    return "".join((number, check_digit(number), dob, check_digit(dob), doe, check_digit(doe)))


_FIELD_RULES: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    # field, what it may hold once trailing fillers are dropped, whether those are padding
    ("document_code", re.compile(r"[A-Z<]{1,2}"), True),
    ("issuing_state", re.compile(r"[A-Z<]{1,3}"), True),
    ("document_number", re.compile(r"[A-Z0-9<]{1,9}"), True),
    ("optional_data_1", re.compile(r"[A-Z0-9<]{0,15}"), True),
    ("date_of_birth", re.compile(r"[0-9<]{6}"), False),
    ("date_of_expiry", re.compile(r"[0-9<]{6}"), False),
    ("nationality", re.compile(r"[A-Z<]{1,3}"), True),
    ("optional_data_2", re.compile(r"[A-Z0-9<]{0,11}"), True),
    ("name", re.compile(r"[A-Z<]{1,30}"), True),
)
_SEXES = frozenset("MFX<")


@dataclass(frozen=True, slots=True)
class TD1:
    """A TD1 MRZ (Part 5, 4.2.2) as fields; :attr:`lines` and :attr:`text` are derived from them.

    Values are kept without their trailing fillers (``document_number="L898902C"``); check digits
    are always computed, never stored.  ``str(td1)`` is the three lines, ``td1.text`` the 90
    characters of DG1.  ``sex`` is the MRZ character: ``M``, ``F`` or ``<``.
    """

    document_code: str
    issuing_state: str
    document_number: str
    optional_data_1: str
    date_of_birth: str
    sex: str
    date_of_expiry: str
    nationality: str
    optional_data_2: str
    name: str

    def __post_init__(self) -> None:
        for field, pattern, padded in _FIELD_RULES:
            value = getattr(self, field)
            if padded:
                value = value.rstrip(_FILLER)
                object.__setattr__(self, field, value)
            if not pattern.fullmatch(value):
                raise EncodingError(f"{field} does not fit the TD1 field", field=field)
        # Part 5, 4.2.2.3 note k: the first character of a TD1 document code is A, C or I.
        if self.document_code[0] not in "ACI":
            raise EncodingError(
                "TD1 document code must start with A, C or I", field="document_code"
            )
        if self.sex not in _SEXES or len(self.sex) != 1:
            raise EncodingError("sex must be M, F, X or <", field="sex")

    @property
    def lines(self) -> tuple[str, str, str]:
        number = self.document_number.ljust(9, _FILLER)
        upper = "".join(
            (
                self.document_code.ljust(2, _FILLER),
                self.issuing_state.ljust(3, _FILLER),
                number,
                check_digit(number),
                self.optional_data_1.ljust(15, _FILLER),
            )
        )
        middle = "".join(
            (
                self.date_of_birth,
                check_digit(self.date_of_birth),
                self.sex,
                self.date_of_expiry,
                check_digit(self.date_of_expiry),
                self.nationality.ljust(3, _FILLER),
                self.optional_data_2.ljust(11, _FILLER),
            )
        )
        middle += _composite(upper, middle)
        return upper, middle, self.name.ljust(TD1_LINE, _FILLER)

    @property
    def text(self) -> str:
        """The 90 characters as stored in DG1 (Doc 9303-10 4.7.1.1)."""
        return "".join(self.lines)

    @property
    def primary_identifier(self) -> str:
        return self.name.split(_FILLER * 2, 1)[0].replace(_FILLER, " ")

    @property
    def secondary_identifier(self) -> str:
        parts = self.name.split(_FILLER * 2, 1)
        return parts[1].strip(_FILLER).replace(_FILLER, " ") if len(parts) == 2 else ""

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def __repr__(self) -> str:
        return "TD1(<personal data>)"


def _composite(upper: str, middle: str) -> str:
    """Part 5, 4.2.4: upper 6–30, middle 1–7, 9–15 and 19–29."""
    return check_digit(upper[5:30] + middle[0:7] + middle[8:15] + middle[18:29])


_SEX_TO_MRZ = {"M": "M", "F": "F", "X": _FILLER}


def build_td1(holder: HolderData) -> TD1:
    """The TD1 MRZ of a card: the HKIC number (without brackets) goes into optional data 1."""
    if len(holder.document_number) > 9:
        # Part 5 note j allows longer numbers (spilling into optional data), but optional data 1
        # carries the HKIC number on this card, so a long number has nowhere to go.
        raise EncodingError(
            "document numbers over nine characters are not supported", field="document_number"
        )
    optional = (
        "".join(parse_hkid(holder.personal_number, field="personal_number"))
        if holder.personal_number
        else ""
    )
    sex = _SEX_TO_MRZ.get(holder.sex)
    if sex is None:
        raise EncodingError("sex must be M, F or X", field="sex")
    surname = transliterate(holder.surname, field="surname")
    if not surname:
        raise EncodingError("surname is empty", field="surname")
    given = transliterate(holder.given_names, field="given_names")
    return TD1(
        document_code=holder.document_code,
        issuing_state=holder.issuing_state,
        document_number=holder.document_number,
        optional_data_1=optional,
        date_of_birth=_yymmdd(holder.date_of_birth, "date_of_birth"),
        sex=sex,
        date_of_expiry=_yymmdd(holder.date_of_expiry, "date_of_expiry"),
        nationality=holder.nationality,
        optional_data_2="",
        name=format_name(surname, given, TD1_LINE),
    )


def parse_td1(text: str) -> TD1:
    """A TD1 MRZ (three lines, or the 90 characters of DG1) with every check digit verified."""
    mrz = "".join(text.split())
    if len(mrz) != 3 * TD1_LINE or not _MRZ_CHARS.fullmatch(mrz):
        raise EncodingError("a TD1 MRZ is 90 characters of A-Z, 0-9 and '<'", field="mrz")
    upper, middle, lower = mrz[:30], mrz[30:60], mrz[60:]
    if upper[14] == _FILLER:
        raise EncodingError("long document numbers are not supported", field="document_number")
    for field, value, digit in (
        ("document_number", upper[5:14], upper[14]),
        ("date_of_birth", middle[0:6], middle[6]),
        ("date_of_expiry", middle[8:14], middle[14]),
        ("composite", "", middle[29]),
    ):
        expected = (
            _composite(upper, middle) if field == "composite" else check_digit(value, name=field)
        )
        if digit != expected:
            raise EncodingError("check digit does not match", field=field)
    return TD1(
        document_code=upper[0:2],
        issuing_state=upper[2:5],
        document_number=upper[5:14],
        optional_data_1=upper[15:30],
        date_of_birth=middle[0:6],
        sex=middle[7],
        date_of_expiry=middle[8:14],
        nationality=middle[15:18],
        optional_data_2=middle[18:29],
        name=lower,
    )
