"""Reconciliation, pure: a cabinet's inventory snapshot against the controller's slot map.

After every reconnect, cabinet restart or fault, the controller compares what the cabinet's sensors
say (its retained :class:`~ecabinet.messages.InventorySnapshot`) with what its own store says
(issue 6: "discrepancies raised, never guessed away").  For each slot the answer is one of:

- **agreement**: nothing to do;
- a **correction**: the store lagged behind an event that was lost, and the sensor reading is
  exactly what that event would have said.  Only four, each named for its evidence:

  ========================  ======================  =====================  =====================
  correction                store slot              sensor reads           and also
  ========================  ======================  =====================  =====================
  ``deposit_completed``     RESERVED for serial E   OCCUPIED, serial E
  ``deposit_not_done``      RESERVED for serial E   EMPTY, nothing         (the card is in hand)
  ``open_completed``        OPEN for serial E       EMPTY, nothing         the open command was
                                                                           acknowledged
  ``open_not_done``         OPEN for serial E       OCCUPIED, serial E
  ========================  ======================  =====================  =====================

- a **discrepancy** for anything else, which the controller records, audits and leaves open until
  a supervisor resolves it.  In particular an open slot found empty when the open command was
  never acknowledged is a ``missing_card``: the card may have been taken, but not on our word.

Slots with a command still awaiting its ack (``busy``) and slots already FAULT in the store (an
open discrepancy) are skipped: the first are in flight, the second wait for a supervisor.

The function is pure and total: the same inputs give the same answer, in drawer/index order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from ecabinet.messages import InventorySnapshot, SlotReport
from ecabinet.slots import SlotState
from ecabinet.store import DiscrepancyKind

__all__ = [
    "Correction",
    "CorrectionKind",
    "Discrepancy",
    "ExpectedSlot",
    "Reconciliation",
    "reconcile",
]


class CorrectionKind(StrEnum):
    DEPOSIT_COMPLETED = "deposit_completed"
    DEPOSIT_NOT_DONE = "deposit_not_done"
    OPEN_COMPLETED = "open_completed"
    OPEN_NOT_DONE = "open_not_done"


@dataclass(frozen=True, slots=True)
class ExpectedSlot:
    """A slot as the store has it.  ``performed``: the last command on the slot was acknowledged
    (or a ``slot_opened`` named it); ``busy``: a command on it still awaits its ack."""

    drawer: int
    index: int
    state: SlotState
    card_serial: str | None = None
    application_id: str | None = None
    performed: bool = False
    busy: bool = False


@dataclass(frozen=True, slots=True)
class Discrepancy:
    cabinet: str
    drawer: int | None
    index: int | None
    kind: DiscrepancyKind
    expected_serial: str | None
    sensed_serial: str | None
    application_id: str | None


@dataclass(frozen=True, slots=True)
class Correction:
    cabinet: str
    drawer: int
    index: int
    kind: CorrectionKind
    application_id: str | None
    card_serial: str | None


@dataclass(frozen=True, slots=True)
class Reconciliation:
    cabinet: str
    sequence: int
    discrepancies: tuple[Discrepancy, ...]
    corrections: tuple[Correction, ...]

    @property
    def clean(self) -> bool:
        return not self.discrepancies and not self.corrections


_STEADY: dict[SlotState, SlotState] = {
    # What the sensor shows while the store's state holds: the in-flight states are "in progress".
    SlotState.EMPTY: SlotState.EMPTY,
    SlotState.OCCUPIED: SlotState.OCCUPIED,
    SlotState.RESERVED: SlotState.RESERVED,
    SlotState.OPEN_FOR_RETRIEVAL: SlotState.OPEN_FOR_RETRIEVAL,
}


def _expected_serial_seen(expected: ExpectedSlot) -> str | None:
    # A RESERVED slot holds no card yet although the store names the card on its way.
    return None if expected.state is SlotState.RESERVED else expected.card_serial


def _compare(
    cabinet: str, expected: ExpectedSlot, sensed: SlotReport
) -> Discrepancy | Correction | None:
    state, serial = sensed.state, sensed.card_serial
    e_state, e_serial = expected.state, expected.card_serial
    if _STEADY.get(e_state) is state and serial == _expected_serial_seen(expected):
        return None

    def correction(kind: CorrectionKind) -> Correction:
        return Correction(
            cabinet, expected.drawer, expected.index, kind, expected.application_id, e_serial
        )

    def discrepancy(kind: DiscrepancyKind) -> Discrepancy:
        return Discrepancy(
            cabinet,
            expected.drawer,
            expected.index,
            kind,
            e_serial,
            serial,
            expected.application_id,
        )

    if state is SlotState.FAULT:
        return discrepancy(DiscrepancyKind.SLOT_FAULT)
    occupied_by_expected = state is SlotState.OCCUPIED and serial is not None and serial == e_serial
    empty = state is SlotState.EMPTY and serial is None
    if e_state is SlotState.RESERVED:
        if occupied_by_expected:
            return correction(CorrectionKind.DEPOSIT_COMPLETED)
        if empty:
            return correction(CorrectionKind.DEPOSIT_NOT_DONE)
    if e_state is SlotState.OPEN_FOR_RETRIEVAL:
        if occupied_by_expected:
            return correction(CorrectionKind.OPEN_NOT_DONE)
        if empty:
            if expected.performed:
                return correction(CorrectionKind.OPEN_COMPLETED)
            return discrepancy(DiscrepancyKind.MISSING_CARD)
    if serial is not None and serial != e_serial:
        return discrepancy(
            DiscrepancyKind.UNEXPECTED_CARD if e_serial is None else DiscrepancyKind.WRONG_CARD
        )
    if empty and e_serial is not None:
        return discrepancy(DiscrepancyKind.MISSING_CARD)
    return discrepancy(DiscrepancyKind.STATE_MISMATCH)


def reconcile(
    cabinet: str,
    snapshot: InventorySnapshot,
    expected: Iterable[ExpectedSlot],
    *,
    drawers: int,
    slots_per_drawer: int,
) -> Reconciliation:
    """Compare ``snapshot`` with the store's slots of ``cabinet`` (registered as ``drawers`` x
    ``slots_per_drawer``).  A snapshot of another shape is one ``layout_mismatch`` and nothing
    else: slot by slot comparison would compare different slots."""
    if (snapshot.drawers, snapshot.slots_per_drawer) != (drawers, slots_per_drawer):
        mismatch = Discrepancy(
            cabinet, None, None, DiscrepancyKind.LAYOUT_MISMATCH, None, None, None
        )
        return Reconciliation(cabinet, snapshot.sequence, (mismatch,), ())
    sensed = {(s.drawer, s.index): s for s in snapshot.slots}
    discrepancies: list[Discrepancy] = []
    corrections: list[Correction] = []
    for slot in sorted(expected, key=lambda e: (e.drawer, e.index)):
        if slot.busy or slot.state is SlotState.FAULT:
            continue
        report = sensed.get((slot.drawer, slot.index))
        if report is None:
            raise ValueError(f"slot {slot.drawer}/{slot.index} is outside the cabinet's layout")
        outcome = _compare(cabinet, slot, report)
        if isinstance(outcome, Discrepancy):
            discrepancies.append(outcome)
        elif isinstance(outcome, Correction):
            corrections.append(outcome)
    return Reconciliation(cabinet, snapshot.sequence, tuple(discrepancies), tuple(corrections))
