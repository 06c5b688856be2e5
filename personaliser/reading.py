"""`perso chip read`: read a card as a border reader does, knowing only the MRZ.

The MRZ comes from the operator (document number, date of birth, date of expiry) or from an
applications file, whose applications are tried in turn: a wrong MRZ costs one failed BAC (SW 6300),
which is what a border reader's operator sees too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from chip.apdu import SW, CommandAPDU, ResponseAPDU
from chip.errors import ChipError, StatusWordError
from chip.lds.dg1 import DG1
from chip.lds.tags import EMRTD_AID
from chip.mrz import build_td1, mrz_information
from chip.random import RandomSource, system_random
from chip.transport.base import run_flow
from chip.verify import Verdict, read_and_verify
from personaliser.applications import Application

__all__ = [
    "MrzKey",
    "ReadResult",
    "describe",
    "mrz_keys_from_applications",
    "read_with_mrz",
    "save_files",
    "unprotected_read_refused",
]


class Reader(Protocol):
    name: str

    def connect(self) -> bytes: ...

    def reconnect(self, reset: bool = True) -> bytes: ...

    def transmit(self, apdu: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class MrzKey:
    """The three MRZ fields BAC needs, and where they came from (never printed)."""

    document_number: str
    date_of_birth: str
    date_of_expiry: str
    label: str = "operator"

    def __repr__(self) -> str:
        return f"MrzKey({self.label})"

    @property
    def information(self) -> str:
        return mrz_information(self.document_number, self.date_of_birth, self.date_of_expiry)


@dataclass(frozen=True, slots=True)
class ReadResult:
    verdict: Verdict | None
    key: MrzKey | None
    tried: int

    @property
    def access_denied(self) -> bool:
        return self.verdict is None


def mrz_keys_from_applications(apps: Iterable[Application]) -> list[MrzKey]:
    keys = []
    for app in apps:
        td1 = build_td1(app.to_holder())
        keys.append(
            MrzKey(td1.document_number, td1.date_of_birth, td1.date_of_expiry, app.application_id)
        )
    return keys


def read_with_mrz(
    reader: Reader,
    keys: Sequence[MrzKey],
    *,
    trust_anchors: Sequence[x509.Certificate],
    rng: RandomSource = system_random,
    extended: bool = False,
) -> ReadResult:
    """Try each MRZ until BAC succeeds; then verify the card. No key fits: access denied."""
    reader.connect()
    for tried, key in enumerate(keys, start=1):
        verdict = run_flow(
            read_and_verify(key.information, rng, trust_anchors=trust_anchors, extended=extended),
            reader,
        )
        if not verdict.access_denied:
            return ReadResult(verdict, key, tried)
        reader.reconnect(reset=True)
    return ReadResult(None, None, len(keys))


def unprotected_read_refused(reader: Reader) -> bool:
    """True when the card refuses a plain READ BINARY of DG1 (9303-11 §4.3: BAC required)."""
    reader.reconnect(reset=True)
    select = ResponseAPDU.from_bytes(
        reader.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x0C, EMRTD_AID).to_bytes())
    )
    if select.sw != SW.OK:
        raise StatusWordError(select.sw, step="read.select_application")
    read = ResponseAPDU.from_bytes(
        reader.transmit(CommandAPDU(0, 0xB0, 0x81, 0, ne=256).to_bytes())
    )
    return read.sw == SW.SECURITY_STATUS_NOT_SATISFIED and not read.data


def describe(result: ReadResult) -> list[str]:
    """Operator-facing lines: verdict, reasons and DG1 (the operator is entitled to the MRZ)."""
    if result.verdict is None:
        return [f"ACCESS DENIED: BAC refused with all {result.tried} MRZ(s) tried"]
    verdict = result.verdict
    lines = [f"verdict: {'PASSED' if verdict.passed else 'FAILED'}"]
    lines += [f"  reason: {r}" for r in verdict.reasons]
    dg1 = verdict.readout.files.get("DG1")
    if dg1 is not None:
        try:
            mrz = DG1.from_bytes(dg1).mrz
            lines.append("DG1 (MRZ):")
            lines += [f"  {mrz[i : i + 30]}" for i in range(0, len(mrz), 30)]
        except ChipError as exc:
            lines.append(f"DG1 unreadable: {type(exc).__name__}")
    return lines


def save_files(verdict: Verdict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in verdict.readout.files.items():
        (out / name).write_bytes(data)
