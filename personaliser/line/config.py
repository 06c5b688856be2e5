"""``line.toml``: what the line is made of.  The defaults are an in-process line (DESIGN §7).

::

    max_attempts = 3                # station failures before an application is held for an operator
    samples_per_batch = 0           # blanks taken from each batch for destructive QA

    [heads]                         # encoder heads
    kind = "inprocess"              # chip emulators fed with diversified blanks ...
    count = 4
    encode_s = 0.0                  # device time per card (0 = as fast as the emulator runs)
    # kind = "pcsc"                 # ... or PC/SC readers whose name contains `reader`
    # reader = "Perso VPCD"

    [printers]                      # print / engrave stations (simulated devices)
    count = 1
    service_s = 0.0
    render = "always"               # render and rasterise each face ("never": blank jobs)

    [qa]                            # QA readback
    mode = "separate"               # a reader of its own, or "same-head" (the encoder reads back)
    count = 1
    service_s = 0.0

    [queues]                        # cards that may wait between stations (back-pressure)
    to_print = 2
    to_verify = 2

    [output]
    proof_sample_rate = 0.0         # front/back proofs for this share of cards (and the first of
                                    # every batch)

    [faults]                        # injected into the in-process device models, for tests
    seed = 0
    print_jam_rate = 0.01
    verify_mismatch_on = [7]        # the 7th card read back fails its DG1 comparison

Service times are the devices' own; with all of them 0 the line runs as fast as the host can.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

__all__ = [
    "FaultSettings",
    "InProcessHeads",
    "LineSettings",
    "OutputSettings",
    "PcscHeads",
    "PrintSettings",
    "QaSettings",
    "QueueSettings",
    "load_line_config",
]

Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Ordinals = Annotated[list[Annotated[int, Field(ge=1)]], Field(max_length=10_000)]


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InProcessHeads(_Settings):
    """Encoder heads on in-process chip emulators; each takes blanks from its own feeder."""

    kind: Literal["inprocess"] = "inprocess"
    count: int = Field(default=4, ge=1, le=256)
    encode_s: Seconds = 0.0


class PcscHeads(_Settings):
    """Encoder heads on PC/SC readers (one per reader whose name contains ``reader``)."""

    kind: Literal["pcsc"]
    reader: str = Field(min_length=1, max_length=200)
    count: int | None = Field(default=None, ge=1, le=256)  # at most this many readers
    timeout_s: Seconds = 5.0  # how long a head waits for the feeder to present a card
    extended_reads: bool = False  # extended-length READ BINARY (not every reader takes it)


class PrintSettings(_Settings):
    count: int = Field(default=1, ge=1, le=64)
    service_s: Seconds = 0.0
    render: Literal["always", "never"] = "always"
    layout: str = "hkid-2018"
    dpi: int = Field(default=300, ge=100, le=1200)
    dither: Literal["floyd-steinberg", "ordered"] = "floyd-steinberg"
    #: The simulated operator's time to clear a jam or swap a ribbon (a station needing attention).
    operator_s: Seconds = 60.0


class QaSettings(_Settings):
    mode: Literal["separate", "same-head"] = "separate"
    count: int = Field(default=1, ge=1, le=64)  # readers of their own ("separate" only)
    service_s: Seconds = 0.0


class QueueSettings(_Settings):
    to_print: int = Field(default=2, ge=1, le=10_000)
    to_verify: int = Field(default=2, ge=1, le=10_000)


class OutputSettings(_Settings):
    chip_files: bool = True  # the files as read back, per passed card
    chip_image: bool = True  # the emulator's image (in-process heads)
    proof_sample_rate: Rate = 0.0
    trays: bool = True  # one file per finished batch: its cards in delivery order


class FaultSettings(_Settings):
    """Faults for the in-process device models: rates per card, or the n-th card of a stage."""

    seed: int = 0
    encoder_write_error_rate: Rate = 0.0
    encoder_mute_rate: Rate = 0.0
    print_jam_rate: Rate = 0.0
    print_laser_rate: Rate = 0.0
    verify_mismatch_rate: Rate = 0.0
    encoder_write_error_on: Ordinals = []
    encoder_mute_on: Ordinals = []
    print_jam_on: Ordinals = []
    print_laser_on: Ordinals = []
    verify_mismatch_on: Ordinals = []

    @model_validator(mode="after")
    def _rates_add_up(self) -> FaultSettings:
        if self.encoder_write_error_rate + self.encoder_mute_rate > 1.0:
            raise ValueError("encoder fault rates add up to more than 1")
        if self.print_jam_rate + self.print_laser_rate > 1.0:
            raise ValueError("print fault rates add up to more than 1")
        return self


def _head_kind(value: object) -> str | None:
    # A [heads] table without ``kind`` is the embedded default: in-process heads.
    if isinstance(value, dict):
        kind = value.get("kind", "inprocess")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


Heads = Annotated[
    Annotated[InProcessHeads, Tag("inprocess")] | Annotated[PcscHeads, Tag("pcsc")],
    Discriminator(_head_kind),
]


class LineSettings(_Settings):
    """One line: heads, print stations, QA, queues, limits.  ``LineSettings()`` is in-process."""

    heads: Heads = InProcessHeads()
    printers: PrintSettings = PrintSettings()
    qa: QaSettings = QaSettings()
    queues: QueueSettings = QueueSettings()
    output: OutputSettings = OutputSettings()
    faults: FaultSettings = FaultSettings()
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: A head failing this many cards in a row is taken out of service (personaliser.heads' rule).
    max_consecutive_failures: int = Field(default=3, ge=1, le=1000)
    samples_per_batch: int = Field(default=0, ge=0, le=100)
    #: Threads for host work (store commits, chip crypto, face rendering).  0 runs it on the event
    #: loop's own thread: it is CPU-bound, the GIL serialises it anyway, and every hand-over to a
    #: thread costs CPU, so 0 gives the least CPU per card.  N > 0 keeps the loop responsive
    #: (N compute threads and one store thread).  PC/SC heads always get a thread each.
    host_threads: int = Field(default=0, ge=0, le=64)
    follow_poll_s: Seconds = 5.0  # how often a following line looks for newly queued work

    @model_validator(mode="after")
    def _pcsc_reads_back_on_its_head(self) -> LineSettings:
        # A card in a PC/SC reader cannot travel to another reader: it is read back where it was
        # encoded, before the feeder takes it away.
        if isinstance(self.heads, PcscHeads) and self.qa.mode != "same-head":
            raise ValueError('PC/SC heads need [qa] mode = "same-head"')
        return self

    def capacity_per_hour(self, heads: int | None = None) -> dict[str, float]:
        """Cards per hour each stage can do from its service times (inf where they are 0).

        A same-head QA keeps the card in its head through printing and readback, so the head is
        then occupied for encode + print + verify.  ``heads`` overrides the head count (PC/SC).
        """
        n_heads = heads or (self.heads.count if isinstance(self.heads, InProcessHeads) else 1)
        encode_s = self.heads.encode_s if isinstance(self.heads, InProcessHeads) else 0.0
        p, q = self.printers, self.qa

        def rate(stations: int, seconds: float) -> float:
            return math.inf if seconds <= 0 else 3600.0 * stations / seconds

        if q.mode == "same-head":
            return {
                "encode": rate(n_heads, encode_s + p.service_s + q.service_s),
                "print": rate(p.count, p.service_s),
            }
        return {
            "encode": rate(n_heads, encode_s),
            "print": rate(p.count, p.service_s),
            "verify": rate(q.count, q.service_s),
        }

    def bottleneck(self, heads: int | None = None) -> tuple[str, float]:
        """The slowest stage and its rate in cards per hour (DESIGN §5: it sets the line rate)."""
        capacity = self.capacity_per_hour(heads)
        stage = min(capacity, key=lambda s: capacity[s])
        return stage, capacity[stage]


def load_line_config(path: str | Path | None = None) -> LineSettings:
    """The settings in ``path`` (a ``line.toml``), or the in-process defaults when None.

    An unreadable or invalid file raises ``ValueError`` naming the file, the field and the reason.
    """
    if path is None:
        return LineSettings()
    source = Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return LineSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{source}: {problems}") from exc
