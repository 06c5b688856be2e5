"""The line's devices behind one small interface each: encoder heads, QA readers, print jobs.

Everything here is blocking host work: the runtime calls it on the event loop's thread or on a
host thread (``host_threads``), and a PC/SC head always on its own thread, since a PC/SC context
belongs to one thread.  Encoder failures come back as values (:class:`EncodeOutcome`; print faults
are the print station's business) with a short reason code for metrics and a detail for the spoil
log: exception class, protocol step and status word, never personal data.

Fault injection for the in-process device models (DESIGN §5) lives here too: :class:`LineFaults`
decides per card, by the card's ordinal at a stage or by a seeded rate, whether the encoder gets a
write error (the chip answers 6581 to an UPDATE BINARY) or goes mute, whether the print jams or the
laser faults, and whether the readback is compared against a wrong DG1 (a verify mismatch).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from cryptography import x509

from chip.apdu import SW
from chip.emulator import DEVICE_CPU, ChipImage, ChipOS, CpuMeter
from chip.errors import CardMuteError, ChipError, ReaderGoneError, TransportError
from chip.mrz import mrz_information
from chip.perso import SHORT_CHUNK, PersoPlan, build_plan, personalise
from chip.pki import DocumentSigner
from chip.profile import INS_UPDATE_BINARY
from chip.protocols.scp03 import StaticKeys
from chip.random import RandomSource
from chip.transport.base import CountingTransport, Transport, run_flow
from chip.transport.inprocess import InProcessReader
from chip.verify import Verdict, read_and_verify
from personaliser.applications import Application
from personaliser.chipstage import EXTENDED_CHUNK, SERIAL_PREFIX, card_id_for
from personaliser.faces import card_face
from personaliser.keystore import Keystore
from printer.driver import Fault, FaultKind, PrintJob
from printer.layout import Layout
from printer.proof import write_proofs
from printer.raster import Method, diffuse, pack_for_engraver
from printer.render import render_back, render_front

__all__ = [
    "RENDER_CPU",
    "EncodeOutcome",
    "EncoderFault",
    "Head",
    "InProcessHead",
    "LineFaults",
    "PcscHead",
    "ReadbackCheck",
    "describe",
    "expected_dg1",
    "prepare",
    "publish_card",
    "readback_chip",
    "render_job",
    "sampled",
    "stage_card",
]

K = TypeVar("K")


def describe(exc: BaseException) -> str:
    """Class, step and status word of a failure: what the spoil log may carry."""
    step = getattr(exc, "step", None)
    sw = getattr(exc, "sw", None)
    where = f" at {step}" if step else ""
    status = f" SW={int(sw):04X}" if isinstance(sw, int) else ""
    return f"{type(exc).__name__}{where}{status}"


# -- fault injection -------------------------------------------------------------------------------


class EncoderFault(Enum):
    WRITE_ERROR = "write_error"
    MUTE = "mute"


class LineFaults:
    """Which card fails where: by ordinal at a stage (1-based) or at a seeded rate per card.

    Ordinals count cards in the order they reach the stage on the whole line, so a test can say
    "the 3rd card encoded gets a write error" whatever head it lands on.  Thread-safe.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        encoder_rates: Mapping[EncoderFault, float] | None = None,
        encoder_on: Mapping[EncoderFault, Iterable[int]] | None = None,
        print_rates: Mapping[FaultKind, float] | None = None,
        print_on: Mapping[FaultKind, Iterable[int]] | None = None,
        verify_mismatch_rate: float = 0.0,
        verify_mismatch_on: Iterable[int] = (),
    ) -> None:
        self._lock = threading.Lock()
        self._uniform = random.Random(seed).random  # noqa: S311 - fault injection, not a secret
        self._encoder_rates = dict(encoder_rates or {})
        self._encoder_on = {k: frozenset(v) for k, v in (encoder_on or {}).items()}
        self._print_rates = dict(print_rates or {})
        self._print_on = {k: frozenset(v) for k, v in (print_on or {}).items()}
        self._verify_rate = verify_mismatch_rate
        self._verify_on = frozenset(verify_mismatch_on)
        self._counts = {"encode": 0, "print": 0, "verify": 0}

    def _next(self, stage: str) -> tuple[int, float]:
        with self._lock:
            self._counts[stage] += 1
            return self._counts[stage], self._uniform()

    @staticmethod
    def _pick(
        n: int, u: float, on: Mapping[K, frozenset[int]], rates: Mapping[K, float]
    ) -> K | None:
        for kind, ordinals in on.items():
            if n in ordinals:
                return kind
        edge = 0.0
        for kind, rate in rates.items():
            edge += rate
            if u < edge:
                return kind
        return None

    def encoder(self) -> EncoderFault | None:
        n, u = self._next("encode")
        return self._pick(n, u, self._encoder_on, self._encoder_rates)

    def next_fault(self, job: PrintJob) -> Fault | None:
        """printer.driver.FaultPolicy: one decision per card fed to any print station."""
        n, u = self._next("print")
        kind = self._pick(n, u, self._print_on, self._print_rates)
        return None if kind is None else Fault(kind)

    def verify_mismatch(self) -> bool:
        n, u = self._next("verify")
        return n in self._verify_on or u < self._verify_rate


class _FaultyTransport:
    """Makes one card's encoder fail as configured; otherwise passes APDUs through."""

    def __init__(self, inner: Transport, fault: EncoderFault, reader: str) -> None:
        self.inner = inner
        self.fault = fault
        self.reader = reader
        self.apdus = 0

    def transmit(self, apdu: bytes) -> bytes:
        self.apdus += 1
        # INS stays in clear under SCP03 (GP Amendment D §6.2.4), so a write is seen by its INS.
        if (
            self.fault is EncoderFault.WRITE_ERROR
            and len(apdu) > 1
            and apdu[1] == INS_UPDATE_BINARY
        ):
            return SW.MEMORY_FAILURE.to_bytes(2, "big")  # ISO/IEC 7816-4 §5.6: 6581
        # Past SELECT and the SCP03 handshake: the chip dies with files half written.
        if self.fault is EncoderFault.MUTE and self.apdus > 8:
            raise CardMuteError("the card stopped answering (injected)", reader=self.reader)
        return self.inner.transmit(apdu)


# -- encoder heads ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodeOutcome:
    """One blank through an encoder head.  ``serial`` is known once the chip answered."""

    serial: str | None
    ok: bool
    code: str = ""  # reason code when not ok
    detail: str = ""
    apdus: int = 0
    bytes_written: int = 0
    reader_gone: bool = False


class Head(Protocol):
    """An encoder head: a reader slot in front of a feeder.  One card at a time; blocking."""

    name: str

    def load(self) -> EncodeOutcome | None:
        """Take the blank the feeder presents and power it; the failure if none could be taken.

        Nothing has touched a blank when this fails, so there is nothing to spoil.
        """
        ...

    def encode(
        self, plan: PersoPlan, keystore: Keystore, rng: RandomSource, fault: EncoderFault | None
    ) -> EncodeOutcome:
        """Personalise and lock the loaded blank; the card stays in the head."""
        ...

    def readback(self, plan: PersoPlan, check: ReadbackCheck) -> Verdict:
        """Reset the card in the head and read it back as a border reader would."""
        ...

    def release(self) -> ChipOS | None:
        """Unpower the card so the feeder moves it on; an in-process head hands over the chip."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReadbackCheck:
    """What a QA readback needs besides the card: trust anchors, rng, the DG1 to compare with."""

    anchors: Sequence[x509.Certificate]
    rng: RandomSource
    expected_dg1: bytes
    extended: bool


def _encode_on(
    transport: Transport,
    plan: PersoPlan,
    keystore: Keystore,
    rng: RandomSource,
    *,
    name: str,
    fault: EncoderFault | None,
    chunk_size: int,
    fallback_serial: Callable[[], bytes | None],
) -> EncodeOutcome:
    kdd = bytearray()

    def keys_for(serial: bytes) -> StaticKeys:
        kdd[:] = serial
        return keystore.scp03_keys_for(serial)

    wire: Transport = transport if fault is None else _FaultyTransport(transport, fault, name)
    counting = CountingTransport(wire)
    try:
        result = run_flow(personalise(plan, keys_for, rng=rng, chunk_size=chunk_size), counting)
    except ChipError as exc:
        raw = bytes(kdd) or fallback_serial()
        code = "chip_mute" if isinstance(exc, CardMuteError) else "encode_error"
        if isinstance(exc, ReaderGoneError):
            code = "reader_gone"
        return EncodeOutcome(
            raw.hex().upper() if raw else None,
            False,
            code,
            describe(exc),
            counting.stats.apdus,
            reader_gone=isinstance(exc, ReaderGoneError),
        )
    return EncodeOutcome(
        bytes(kdd).hex().upper(),
        True,
        apdus=counting.stats.apdus,
        bytes_written=result.bytes_written,
    )


def _verify_on(transport: Transport, plan: PersoPlan, check: ReadbackCheck) -> Verdict:
    m = plan.mrz
    return run_flow(
        read_and_verify(
            mrz_information(m.document_number, m.date_of_birth, m.date_of_expiry),
            check.rng,
            trust_anchors=check.anchors,
            expected_dg1=check.expected_dg1,
            extended=check.extended,
        ),
        transport,
    )


class InProcessHead:
    """A head on an in-process reader whose feeder makes blanks with diversified SCP03 keys."""

    def __init__(self, name: str, keystore: Keystore, rng: RandomSource) -> None:
        self.name = name
        self._keystore = keystore
        self._rng = rng
        self._out: ChipOS | None = None
        self.reader = InProcessReader(name, self._blank, output=self._take)

    def __repr__(self) -> str:
        return f"InProcessHead({self.name!r})"

    def _blank(self) -> ChipOS:
        # The feeder's blank comes keyed from the card maker: its making is the device's CPU.
        return DEVICE_CPU.call(self._make_blank)

    def _make_blank(self) -> ChipOS:
        serial = SERIAL_PREFIX + self._rng(8)
        return ChipOS(ChipImage.blank(serial, self._keystore.scp03_keys_for(serial)), rng=self._rng)

    def _take(self, chip: ChipOS) -> None:
        self._out = chip

    def _serial(self) -> bytes | None:
        card = self.reader.card
        return None if card is None else card.image.serial

    def load(self) -> EncodeOutcome | None:
        self.reader.connect()  # the feeder never runs dry in process
        return None

    def encode(
        self, plan: PersoPlan, keystore: Keystore, rng: RandomSource, fault: EncoderFault | None
    ) -> EncodeOutcome:
        return _encode_on(
            self.reader,
            plan,
            keystore,
            rng,
            name=self.name,
            fault=fault,
            chunk_size=EXTENDED_CHUNK,
            fallback_serial=self._serial,
        )

    def readback(self, plan: PersoPlan, check: ReadbackCheck) -> Verdict:
        self.reader.reconnect(reset=True)
        return _verify_on(self.reader, plan, check)

    def release(self) -> ChipOS | None:
        self._out = None
        self.reader.disconnect(eject=True)
        chip, self._out = self._out, None
        return chip

    def close(self) -> None:
        self.reader.disconnect(eject=True)


class PcscHead:
    """A head on a PC/SC reader (``chip.transport.pcsc``); use it from one thread only."""

    def __init__(self, reader: str, *, timeout_s: float, extended_reads: bool) -> None:
        # Imported here: pyscard is an optional dependency that only PC/SC lines need.
        from chip.transport.pcsc import PcscTransport  # noqa: PLC0415

        self.name = reader
        self.extended_reads = extended_reads
        self._transport = PcscTransport(reader, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"PcscHead({self.name!r})"

    def load(self) -> EncodeOutcome | None:
        try:
            self._transport.connect()
        except TransportError as exc:
            gone = isinstance(exc, ReaderGoneError)
            return EncodeOutcome(
                None, False, "reader_gone" if gone else "no_card", describe(exc), reader_gone=gone
            )
        return None

    def encode(
        self, plan: PersoPlan, keystore: Keystore, rng: RandomSource, fault: EncoderFault | None
    ) -> EncodeOutcome:
        return _encode_on(
            self._transport,
            plan,
            keystore,
            rng,
            name=self.name,
            fault=fault,
            chunk_size=SHORT_CHUNK,
            fallback_serial=lambda: None,
        )

    def readback(self, plan: PersoPlan, check: ReadbackCheck) -> Verdict:
        self._transport.reconnect(reset=True)  # the card's volatile state is lost, as on a move
        return _verify_on(self._transport, plan, check)

    def release(self) -> ChipOS | None:
        with contextlib.suppress(TransportError):
            self._transport.disconnect(eject=True)
        return None

    def close(self) -> None:
        self._transport.close()


def readback_chip(chip: ChipOS, plan: PersoPlan, check: ReadbackCheck) -> Verdict:
    """QA on a reader of its own: the in-process chip arrives from the printer and is powered up."""
    chip.power_on()
    return _verify_on(chip, plan, check)


def prepare(app: Application, signer: DocumentSigner) -> PersoPlan:
    """Everything to be written to the chip (LDS, EF.SOD signed by the Document Signer)."""
    return build_plan(app.to_holder(), signer)


def expected_dg1(plan: PersoPlan, *, corrupt: bool = False) -> bytes:
    dg1 = plan.file("DG1")
    if corrupt:  # an injected verify mismatch: the readback is compared with a wrong DG1
        return dg1[:-1] + bytes((dg1[-1] ^ 0x01,))
    return dg1


# -- printing ----------------------------------------------------------------------------------------


def render_job(
    app: Application, serial: str, layout: Layout, *, dpi: int, dither: Method
) -> PrintJob:
    """The engraving of one card: both faces rendered, dithered and packed for the laser.

    The two sides go to the engraver as one raster, front rows then back rows: the station turns
    the card over between them, and one job per card keeps the card id the job's idempotency key.
    """
    card_id = card_id_for(bytes.fromhex(serial))
    face = card_face(app, chip_serial=serial, card_id=card_id)
    front = pack_for_engraver(diffuse(render_front(face, layout, dpi), method=dither))
    back = pack_for_engraver(diffuse(render_back(face, layout, dpi), method=dither))
    return PrintJob(card_id, engrave=np.vstack((front, back)))


# -- output ------------------------------------------------------------------------------------------


def sampled(card_id: str, rate: float) -> bool:
    """Whether a card gets proofs: a stable share of card ids, whatever order they finish in."""
    return rate > 0 and zlib.crc32(card_id.encode("ascii")) < rate * 2**32


#: Face rendering for proofs (the printer's work on a real line), metered apart by benchmarks.
RENDER_CPU = CpuMeter("render")


def _write_new(path: Path, data: bytes) -> None:
    # A plain write: the staging folder is published by one rename only once the card has
    # PASSED, and dropped at start-up otherwise, so no reader ever sees a half-written file
    # and a per-file temporary name and rename would buy nothing.
    with open(path, "xb") as fh:
        fh.write(data)


def stage_card(
    staging: Path,
    card_id: str,
    *,
    files: Mapping[str, bytes],
    chip: ChipOS | None,
    proof: tuple[Application, str, Layout] | None,
) -> Path | None:
    """Write a card's outputs under ``staging/cards/<card_id>``; published once it has PASSED.

    None when the line is set to write nothing for the card (no folder is made).
    """
    if not files and chip is None and proof is None:
        return None
    folder = staging / "cards" / card_id
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in files.items():
        _write_new(folder / name.replace("/", "_"), data)
    if chip is not None:
        chip.image.save(folder / "chip.img")
    if proof is not None:
        app, serial, layout = proof
        RENDER_CPU.call(
            lambda: write_proofs(
                [card_face(app, chip_serial=serial, card_id=card_id)], staging, layout
            )
        )
    return folder


def publish_card(staged: Path | None, out_dir: Path) -> Path | None:
    """Move a staged card into ``out_dir/cards`` (one rename: a reader never sees half a card)."""
    if staged is None:
        return None  # nothing was staged for the card
    target = out_dir / "cards" / staged.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # a card id is a blank's serial, used once; only a replayed publish
        shutil.rmtree(target)
    staged.replace(target)
    return target
