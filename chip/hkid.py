"""Hong Kong identity card numbers: ``A123456(3)``.

The Immigration Department publishes no specification of the check digit; the algorithm here is the
one every open-source validator uses (see tests/vectors/hkid): letters are worth A=10 … Z=35, a
single-letter prefix is left-padded with a space worth 36, the eight positions are weighted
9, 8, … 2, and the check is (11 − sum mod 11) mod 11 with 10 written ``A``.

Error messages name the field, never the number (it is personal data).
"""

from __future__ import annotations

import re

from chip.errors import EncodingError

__all__ = ["format_hkid", "hkid_check_digit", "is_valid_hkid", "parse_hkid"]

_BODY = re.compile(r"([A-Z]{1,2})([0-9]{6})")
_BRACKETED = re.compile(r"([A-Z]{1,2}[0-9]{6})\(([0-9A])\)")
_PLAIN = re.compile(r"([A-Z]{1,2}[0-9]{6})([0-9A])")
_SPACE_VALUE = 36
_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2)


def _letter_value(c: str) -> int:
    return _SPACE_VALUE if c == " " else ord(c) - ord("A") + 10


def hkid_check_digit(body: str, *, field: str = "hkid") -> str:
    """Check digit (``'0'``–``'9'`` or ``'A'``) of a body of one or two letters and six digits."""
    match = _BODY.fullmatch(body)
    if match is None:
        raise EncodingError("HKID body must be one or two letters and six digits", field=field)
    letters, digits = match.groups()
    values = [_letter_value(c) for c in letters.rjust(2)] + [int(d) for d in digits]
    check = (11 - sum(w * v for w, v in zip(_WEIGHTS, values, strict=True)) % 11) % 11
    return "A" if check == 10 else str(check)


def format_hkid(body: str, *, field: str = "hkid") -> str:
    """``"A123456"`` → ``"A123456(3)"``."""
    return f"{body}({hkid_check_digit(body, field=field)})"


def parse_hkid(text: str, *, field: str = "hkid") -> tuple[str, str]:
    """``(body, check digit)`` of ``"A123456(3)"`` or ``"A1234563"``; the check digit must match."""
    match = _BRACKETED.fullmatch(text) or _PLAIN.fullmatch(text)
    if match is None:
        raise EncodingError("not an HKID number", field=field)
    body, check = match.groups()
    if hkid_check_digit(body, field=field) != check:
        raise EncodingError("HKID check digit does not match", field=field)
    return body, check


def is_valid_hkid(text: str) -> bool:
    try:
        parse_hkid(text)
    except EncodingError:
        return False
    return True
