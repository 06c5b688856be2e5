"""The one table of elementary files: name ↔ FID ↔ SFI ↔ tag ↔ DG number.

ICAO Doc 9303 Part 10 (8th ed., 2021), 4.6 table 35 (LDS1 application files) and 3.11/3.12
(EF.CardAccess, EF.CardSecurity, EF.ATR/INFO in the master file).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EF", "EF_TABLE", "EMRTD_AID", "by_dg", "by_fid", "by_name", "by_tag"]

#: ICAO 9303-10 4.1: the LDS1 eMRTD application identifier.
EMRTD_AID = bytes.fromhex("A0000002471001")


@dataclass(frozen=True, slots=True)
class EF:
    name: str
    fid: int
    sfi: int | None
    tag: int | None
    dg: int | None = None
    in_mf: bool = False


_DG_TAGS = {
    1: 0x61, 2: 0x75, 3: 0x63, 4: 0x76, 5: 0x65, 6: 0x66, 7: 0x67, 8: 0x68,
    9: 0x69, 10: 0x6A, 11: 0x6B, 12: 0x6C, 13: 0x6D, 14: 0x6E, 15: 0x6F, 16: 0x70,
}  # fmt: skip

EF_TABLE: tuple[EF, ...] = (
    EF("EF.COM", 0x011E, 0x1E, 0x60),
    *(EF(f"DG{n}", 0x0100 + n, n, tag, dg=n) for n, tag in _DG_TAGS.items()),
    EF("EF.SOD", 0x011D, 0x1D, 0x77),
    EF("EF.CardAccess", 0x011C, 0x1C, None, in_mf=True),
    EF("EF.CardSecurity", 0x011D, 0x1D, None, in_mf=True),
    EF("EF.ATR/INFO", 0x2F01, 0x01, None, in_mf=True),
    EF("EF.DIR", 0x2F00, 0x1E, None, in_mf=True),
)

_BY_NAME = {ef.name: ef for ef in EF_TABLE}
_BY_APP_FID = {ef.fid: ef for ef in EF_TABLE if not ef.in_mf}
_BY_TAG = {ef.tag: ef for ef in EF_TABLE if ef.tag is not None}
_BY_DG = {ef.dg: ef for ef in EF_TABLE if ef.dg is not None}


def by_name(name: str) -> EF:
    return _BY_NAME[name]


def by_fid(fid: int) -> EF:
    """Look up a file of the eMRTD application by FID."""
    return _BY_APP_FID[fid]


def by_tag(tag: int) -> EF:
    return _BY_TAG[tag]


def by_dg(dg: int) -> EF:
    return _BY_DG[dg]
