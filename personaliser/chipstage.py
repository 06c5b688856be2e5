"""The chip stage of the line: personalise a fresh blank per application, then verify it by readback.

Each card: build the LDS and EF.SOD (Document Signer from the keystore), take a blank whose static SCP03
keys are diversified from the perso master key by its serial, run the perso script over SCP03, reset the
chip (the card moves from the encoder to the QA reader), read it back as a border reader would (BAC,
SM, passive authentication, DG1 against the application) and record the verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chip.emulator import ChipImage, ChipOS
from chip.errors import ChipError
from chip.mrz import mrz_information
from chip.perso import PersoPlan, build_plan, personalise
from chip.random import RandomSource, system_random
from chip.transport.base import CountingTransport, run_flow
from chip.verify import Verdict, read_and_verify
from personaliser.applications import Application, Rejection
from personaliser.keystore import Keystore
from personaliser.outputs import publish_pki, write_json

__all__ = ["CardOutcome", "ChipStageReport", "personalise_card", "run_chip_stage"]

#: Blank serials: a 2-byte issuer prefix then 8 random bytes (the GP key diversification data).
SERIAL_PREFIX = b"HK"
#: In-process chips take extended-length APDUs; real readers may not (see chip.perso.SHORT_CHUNK).
EXTENDED_CHUNK = 4096


@dataclass(slots=True)
class CardOutcome:
    application_id: str
    card_id: str
    chip_serial: str
    passed: bool
    reasons: list[str]
    perso_apdus: int
    verify_apdus: int
    bytes_written: int
    seconds: float
    #: time spent inside the emulated chip (its own crypto): not host CPU on a real line
    chip_seconds: float = 0.0
    reader: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "application_id": self.application_id,
            "card_id": self.card_id,
            "chip_serial": self.chip_serial,
            "verdict": "PASSED" if self.passed else "FAILED",
            "reasons": self.reasons,
            "apdus": self.perso_apdus + self.verify_apdus,
            "perso_apdus": self.perso_apdus,
            "verify_apdus": self.verify_apdus,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 6),
            "host_seconds": round(self.seconds - self.chip_seconds, 6),
            **({"reader": self.reader} if self.reader is not None else {}),
        }


@dataclass(slots=True)
class ChipStageReport:
    cards: list[CardOutcome] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(1 for c in self.cards if c.passed)

    @property
    def failed(self) -> int:
        return len(self.cards) - self.passed

    def as_dict(self) -> dict[str, Any]:
        n = len(self.cards)
        return {
            "cards_requested": n + len({r.line for r in self.rejected}),
            "cards_personalised": n,
            "cards_passed": self.passed,
            "cards_failed": self.failed,
            "applications_rejected": len({r.line for r in self.rejected}),
            "rejections": [r.as_dict() for r in self.rejected],
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_ms_per_card": round(1000 * self.cpu_seconds / n, 3) if n else None,
            # host share only: the emulated chips' own crypto would run on the chips
            "host_ms_per_card": (
                round(1000 * sum(c.seconds - c.chip_seconds for c in self.cards) / n, 3)
                if n
                else None
            ),
            "cards": [c.as_dict() for c in self.cards],
        }


def card_id_for(serial: bytes) -> str:
    return "C" + serial.hex().upper()


def personalise_card(
    app: Application,
    keystore: Keystore,
    *,
    rng: RandomSource = system_random,
    serial: bytes | None = None,
    chunk_size: int = EXTENDED_CHUNK,
    extended_reads: bool = True,
    signing_time: datetime | None = None,
) -> tuple[CardOutcome, ChipOS, Verdict, PersoPlan]:
    """Personalise one emulated blank for ``app`` and verify it by readback."""
    start = time.perf_counter()
    serial = serial or SERIAL_PREFIX + rng(8)
    plan = build_plan(app.to_holder(), keystore.document_signer(), signing_time=signing_time)
    chip = ChipOS(ChipImage.blank(serial, keystore.scp03_keys_for(serial)), rng=rng)
    encoder = CountingTransport(chip)
    reasons: list[str] = []
    written = 0
    try:
        result = run_flow(
            personalise(plan, keystore.scp03_keys_for, rng=rng, chunk_size=chunk_size), encoder
        )
        written = result.bytes_written
    except ChipError as exc:
        step = getattr(exc, "step", None)
        reasons.append(f"personalisation failed at {step or 'unknown step'}: {type(exc).__name__}")
    chip.power_on()  # the card leaves the encoder head for the QA reader
    qa = CountingTransport(chip)
    m = plan.mrz
    verdict = run_flow(
        read_and_verify(
            mrz_information(m.document_number, m.date_of_birth, m.date_of_expiry),
            rng,
            trust_anchors=[keystore.csca_certificate()],
            expected_dg1=plan.file("DG1"),
            extended=extended_reads,
        ),
        qa,
    )
    reasons.extend(verdict.reasons)
    outcome = CardOutcome(
        application_id=app.application_id,
        card_id=card_id_for(serial),
        chip_serial=serial.hex().upper(),
        passed=not reasons,
        reasons=reasons,
        perso_apdus=encoder.stats.apdus,
        verify_apdus=qa.stats.apdus,
        bytes_written=written,
        seconds=time.perf_counter() - start,
        chip_seconds=encoder.stats.seconds + qa.stats.seconds,
    )
    return outcome, chip, verdict, plan


def _safe_name(name: str) -> str:
    return name.replace("/", "_")


def write_card(out: Path, outcome: CardOutcome, chip: ChipOS, verdict: Verdict) -> None:
    card_dir = out / "cards" / outcome.card_id
    card_dir.mkdir(parents=True, exist_ok=True)
    for name, data in verdict.readout.files.items():
        (card_dir / _safe_name(name)).write_bytes(data)
    chip.image.save(card_dir / "chip.img")


def run_chip_stage(
    items: Iterable[Application | Rejection],
    keystore: Keystore,
    out: Path,
    *,
    rng: RandomSource = system_random,
    progress: Callable[[CardOutcome], None] | None = None,
) -> ChipStageReport:
    """Personalise and verify every application; write cards, the PKI certificates and report.json."""
    out.mkdir(parents=True, exist_ok=True)
    publish_pki(keystore, out)
    report = ChipStageReport()
    wall, cpu = time.perf_counter(), time.process_time()
    for item in items:
        if isinstance(item, Rejection):
            report.rejected.append(item)
            continue
        outcome, chip, verdict, _plan = personalise_card(item, keystore, rng=rng)
        write_card(out, outcome, chip, verdict)
        report.cards.append(outcome)
        if progress is not None:
            progress(outcome)
    report.seconds = time.perf_counter() - wall
    report.cpu_seconds = time.process_time() - cpu
    write_json(out / "report.json", report.as_dict())
    return report
