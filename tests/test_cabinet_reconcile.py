"""ecabinet.reconcile: the snapshot against the slot map; corrections only on evidence."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecabinet.messages import InventorySnapshot, SlotReport
from ecabinet.reconcile import CorrectionKind, ExpectedSlot, reconcile
from ecabinet.slots import SlotState
from ecabinet.store import DiscrepancyKind

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
S = SlotState


Report = tuple[SlotState, str | None]


def snapshot(reports: Sequence[Report], drawers: int, per: int) -> InventorySnapshot:
    slots = tuple(
        SlotReport(drawer=1 + n // per, index=1 + n % per, state=state, card_serial=serial)
        for n, (state, serial) in enumerate(reports)
    )
    return InventorySnapshot(
        counter=5, issued_at=T0, sequence=3, drawers=drawers, slots_per_drawer=per, slots=slots
    )


def expected(reports: Sequence[Report], per: int, **extra: object) -> list[ExpectedSlot]:
    return [
        ExpectedSlot(
            1 + n // per,
            1 + n % per,
            state,
            serial,
            None if serial is None else f"APP-{serial}",
            **extra,  # type: ignore[arg-type]
        )
        for n, (state, serial) in enumerate(reports)
    ]


serials = st.text("ABCDEF0123456789", min_size=4, max_size=8)
steady = st.one_of(st.just((S.EMPTY, None)), serials.map(lambda s: (S.OCCUPIED, s)))
#: Every (state, serial) a cabinet can report for a slot.
any_report = st.one_of(
    st.just((S.EMPTY, None)),
    serials.map(lambda s: (S.OCCUPIED, s)),
    st.just((S.RESERVED, None)),
    serials.map(lambda s: (S.OPEN_FOR_RETRIEVAL, s)),
    st.just((S.FAULT, None)),
    serials.map(lambda s: (S.FAULT, s)),
)


@given(
    st.integers(1, 3).flatmap(
        lambda d: st.integers(1, 4).flatmap(
            lambda n: st.tuples(
                st.just(d), st.just(n), st.lists(steady, min_size=d * n, max_size=d * n)
            )
        )
    )
)
def test_a_snapshot_equal_to_the_store_yields_nothing(case: tuple[int, int, list[Report]]) -> None:
    drawers, per, reports = case
    result = reconcile(
        "C1",
        snapshot(reports, drawers, per),
        expected(reports, per),
        drawers=drawers,
        slots_per_drawer=per,
    )
    assert result.clean
    assert result.sequence == 3


@given(
    st.integers(1, 3).flatmap(
        lambda d: st.integers(1, 4).flatmap(
            lambda n: st.tuples(
                st.just(d),
                st.just(n),
                st.lists(steady, min_size=d * n, max_size=d * n),
                st.integers(0, d * n - 1),
                any_report,
            )
        )
    )
)
def test_any_single_change_yields_exactly_one_discrepancy_naming_that_slot(
    case: tuple[int, int, list[Report], int, Report],
) -> None:
    drawers, per, reports, position, change = case
    if reports[position] == change:
        change = (S.FAULT, None)  # make it a change
    sensed = list(reports)
    sensed[position] = change
    result = reconcile(
        "C1",
        snapshot(sensed, drawers, per),
        expected(reports, per),
        drawers=drawers,
        slots_per_drawer=per,
    )
    assert result.corrections == ()
    assert len(result.discrepancies) == 1
    found = result.discrepancies[0]
    assert (found.drawer, found.index) == (1 + position // per, 1 + position % per)
    assert found.cabinet == "C1"
    assert found.sensed_serial == change[1]
    assert found.expected_serial == reports[position][1]


@pytest.mark.parametrize(
    ("stored", "performed", "sensed", "outcome"),
    [
        # deposits: the card on its way to a RESERVED slot
        ((S.RESERVED, "A1"), False, (S.OCCUPIED, "A1"), CorrectionKind.DEPOSIT_COMPLETED),
        ((S.RESERVED, "A1"), True, (S.OCCUPIED, "A1"), CorrectionKind.DEPOSIT_COMPLETED),
        ((S.RESERVED, "A1"), True, (S.EMPTY, None), CorrectionKind.DEPOSIT_NOT_DONE),
        ((S.RESERVED, "A1"), False, (S.EMPTY, None), CorrectionKind.DEPOSIT_NOT_DONE),
        ((S.RESERVED, "A1"), True, (S.RESERVED, None), None),  # door open, card coming
        ((S.RESERVED, "A1"), True, (S.OCCUPIED, "B2"), DiscrepancyKind.WRONG_CARD),
        ((S.RESERVED, "A1"), True, (S.FAULT, None), DiscrepancyKind.SLOT_FAULT),
        ((S.RESERVED, "A1"), True, (S.OPEN_FOR_RETRIEVAL, "A1"), DiscrepancyKind.STATE_MISMATCH),
        # retrievals and returns: the slot opened for the card in it
        ((S.OPEN_FOR_RETRIEVAL, "A1"), True, (S.EMPTY, None), CorrectionKind.OPEN_COMPLETED),
        # not acknowledged: the card may have gone, but not on our word
        ((S.OPEN_FOR_RETRIEVAL, "A1"), False, (S.EMPTY, None), DiscrepancyKind.MISSING_CARD),
        ((S.OPEN_FOR_RETRIEVAL, "A1"), True, (S.OCCUPIED, "A1"), CorrectionKind.OPEN_NOT_DONE),
        ((S.OPEN_FOR_RETRIEVAL, "A1"), False, (S.OCCUPIED, "A1"), CorrectionKind.OPEN_NOT_DONE),
        ((S.OPEN_FOR_RETRIEVAL, "A1"), True, (S.OPEN_FOR_RETRIEVAL, "A1"), None),
        ((S.OPEN_FOR_RETRIEVAL, "A1"), True, (S.OCCUPIED, "B2"), DiscrepancyKind.WRONG_CARD),
        ((S.OPEN_FOR_RETRIEVAL, "A1"), True, (S.RESERVED, None), DiscrepancyKind.STATE_MISMATCH),
        # stocked and empty slots: any change is a discrepancy
        ((S.OCCUPIED, "A1"), True, (S.EMPTY, None), DiscrepancyKind.MISSING_CARD),
        ((S.EMPTY, None), False, (S.OCCUPIED, "B2"), DiscrepancyKind.UNEXPECTED_CARD),
        ((S.EMPTY, None), False, (S.RESERVED, None), DiscrepancyKind.STATE_MISMATCH),
    ],
)
def test_each_slot_case(
    stored: tuple[SlotState, str | None],
    performed: bool,
    sensed: tuple[SlotState, str | None],
    outcome: object,
) -> None:
    result = reconcile(
        "C1",
        snapshot([sensed], 1, 1),
        expected([stored], 1, performed=performed),
        drawers=1,
        slots_per_drawer=1,
    )
    if outcome is None:
        assert result.clean
    elif isinstance(outcome, CorrectionKind):
        assert result.discrepancies == ()
        assert [c.kind for c in result.corrections] == [outcome]
        correction = result.corrections[0]
        assert (correction.drawer, correction.index) == (1, 1)
        assert correction.application_id == f"APP-{stored[1]}"
    else:
        assert result.corrections == ()
        assert [d.kind for d in result.discrepancies] == [outcome]


def test_busy_and_already_faulted_slots_are_left_alone() -> None:
    sensed = [(S.EMPTY, None), (S.OCCUPIED, "X9")]
    stored = [
        ExpectedSlot(1, 1, S.OPEN_FOR_RETRIEVAL, "A1", "APP-A1", busy=True),  # ack awaited
        ExpectedSlot(1, 2, S.FAULT, None, None),  # an open discrepancy
    ]
    assert reconcile("C1", snapshot(sensed, 1, 2), stored, drawers=1, slots_per_drawer=2).clean


def test_a_snapshot_of_another_shape_is_one_layout_mismatch() -> None:
    sensed = [(S.EMPTY, None)] * 4
    stored = expected([(S.OCCUPIED, "A1")] * 1 + [(S.EMPTY, None)] * 5, 3)
    result = reconcile("C1", snapshot(sensed, 2, 2), stored, drawers=2, slots_per_drawer=3)
    assert [d.kind for d in result.discrepancies] == [DiscrepancyKind.LAYOUT_MISMATCH]
    assert result.discrepancies[0].drawer is None
    assert result.corrections == ()


def test_results_come_in_slot_order_whatever_the_input_order() -> None:
    sensed = [(S.EMPTY, None), (S.OCCUPIED, "B2"), (S.EMPTY, None)]
    stored = expected([(S.OCCUPIED, "A1"), (S.EMPTY, None), (S.OCCUPIED, "C3")], 3)
    forward = reconcile("C1", snapshot(sensed, 1, 3), stored, drawers=1, slots_per_drawer=3)
    backward = reconcile("C1", snapshot(sensed, 1, 3), stored[::-1], drawers=1, slots_per_drawer=3)
    assert forward == backward
    assert [d.index for d in forward.discrepancies] == [1, 2, 3]
