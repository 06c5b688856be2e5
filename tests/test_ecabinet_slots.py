"""ecabinet.slots: the state table walked entry by entry, slot codes, layout and reachability."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecabinet.errors import SlotError
from ecabinet.slots import (
    TRANSITIONS,
    Slot,
    SlotEvent,
    SlotState,
    default_reachability,
    layout,
    next_state,
    parse_slot_code,
    slot_code,
)

S, E = SlotState, SlotEvent

EXPECTED = {
    (S.EMPTY, E.RESERVE): S.RESERVED,
    (S.EMPTY, E.FAULT): S.FAULT,
    (S.RESERVED, E.CARD_INSERTED): S.OCCUPIED,
    (S.RESERVED, E.RELEASE): S.EMPTY,
    (S.RESERVED, E.FAULT): S.FAULT,
    (S.OCCUPIED, E.OPEN): S.OPEN_FOR_RETRIEVAL,
    (S.OCCUPIED, E.FAULT): S.FAULT,
    (S.OPEN_FOR_RETRIEVAL, E.CARD_REMOVED): S.EMPTY,
    (S.OPEN_FOR_RETRIEVAL, E.CLOSED_UNCOLLECTED): S.OCCUPIED,
    (S.OPEN_FOR_RETRIEVAL, E.FAULT): S.FAULT,
    (S.FAULT, E.FAULT): S.FAULT,
    (S.FAULT, E.CLEARED_EMPTY): S.EMPTY,
    (S.FAULT, E.CLEARED_OCCUPIED): S.OCCUPIED,
}


def test_table_is_exactly_the_expected_one() -> None:
    table = {(s, e): t for s, row in TRANSITIONS.items() for e, t in row.items()}
    assert table == EXPECTED
    assert set(TRANSITIONS) == set(SlotState)


@pytest.mark.parametrize("state", list(SlotState))
@pytest.mark.parametrize("event", list(SlotEvent))
def test_every_pair_either_moves_as_the_table_says_or_raises(
    state: SlotState, event: SlotEvent
) -> None:
    if (state, event) in EXPECTED:
        assert next_state(state, event, slot="01-001") is EXPECTED[(state, event)]
    else:
        with pytest.raises(SlotError) as info:
            next_state(state, event, slot="01-001")
        assert (info.value.slot, info.value.state, info.value.event) == (
            "01-001",
            state.value,
            event.value,
        )


def test_the_main_path_and_every_state_can_fault() -> None:
    state = S.EMPTY
    for event in (E.RESERVE, E.CARD_INSERTED, E.OPEN, E.CARD_REMOVED):
        state = next_state(state, event)
    assert state is S.EMPTY
    assert all(next_state(s, E.FAULT) is S.FAULT for s in SlotState)


def test_fault_leaves_only_through_a_scan() -> None:
    assert set(TRANSITIONS[S.FAULT]) == {E.FAULT, E.CLEARED_EMPTY, E.CLEARED_OCCUPIED}
    assert all(E.CLEARED_EMPTY not in TRANSITIONS[s] for s in SlotState if s is not S.FAULT)


@given(st.integers(1, 99), st.integers(1, 999))
def test_slot_code_round_trips(drawer: int, index: int) -> None:
    assert parse_slot_code(slot_code(drawer, index)) == (drawer, index)


@pytest.mark.parametrize("bad", ["1-1", "00-001", "01-000", "100-001", "01_001", " 01-001", ""])
def test_bad_slot_codes(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_slot_code(bad)


def test_layout_and_reachability() -> None:
    slots = layout("C1", 10, 50)
    assert len(slots) == 500 and len({s.key for s in slots}) == 500
    assert all(0.0 <= s.reachability <= 1.0 for s in slots)
    best = max(slots, key=lambda s: s.reachability)
    assert best.index == 1 and best.drawer in (4, 5)  # a little above the middle, at the front
    # Within a drawer, the front is easier; at the front, the bottom drawer is the hardest.
    assert default_reachability(5, 1, 10, 50) > default_reachability(5, 50, 10, 50)
    assert default_reachability(10, 1, 10, 50) < default_reachability(1, 1, 10, 50)
    assert default_reachability(1, 1, 1, 1) == 1.0


@pytest.mark.parametrize("score", [-0.01, 1.01, float("nan"), float("inf")])
def test_slot_refuses_a_bad_score(score: float) -> None:
    with pytest.raises(ValueError):
        Slot("C1", 1, 1, score)


def test_slot_refuses_a_bad_position() -> None:
    with pytest.raises(ValueError):
        Slot("C1", 0, 1, 0.5)
    with pytest.raises(ValueError):
        Slot("C1", 1, 1000, 0.5)
    with pytest.raises(ValueError):
        Slot("C/1", 1, 1, 0.5)
