"""The card life cycle table (DESIGN §3): every entry, every illegal pair, and the rules it opens with."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from personaliser.errors import BlankError, IllegalTransitionError
from personaliser.lifecycle import (
    BLANK_TRANSITIONS,
    FINAL,
    INITIAL,
    MAIN_PATH,
    STATION_STATES,
    TRANSITION_FIELDS,
    TRANSITIONS,
    BlankState,
    State,
    check,
    check_blank,
    check_fields,
)

LEGAL = sorted((a, b) for a, targets in TRANSITIONS.items() for b in targets)
ILLEGAL = sorted(set(itertools.product(State, State)) - set(LEGAL))
BLANK_LEGAL = sorted((a, b) for a, targets in BLANK_TRANSITIONS.items() for b in targets)
BLANK_ILLEGAL = sorted(set(itertools.product(BlankState, BlankState)) - set(BLANK_LEGAL))


def test_tables_cover_every_state() -> None:
    assert set(TRANSITIONS) == set(State)
    assert set(TRANSITION_FIELDS) == set(State)
    assert set(BLANK_TRANSITIONS) == set(BlankState)
    assert len(LEGAL) + len(ILLEGAL) == len(State) ** 2


@pytest.mark.parametrize(("frm", "to"), LEGAL)
def test_every_legal_transition_passes(frm: State, to: State) -> None:
    check(frm, to, card="A1")


@pytest.mark.parametrize(("frm", "to"), ILLEGAL)
def test_every_illegal_transition_raises(frm: State, to: State) -> None:
    with pytest.raises(IllegalTransitionError) as info:
        check(frm, to, card="A1")
    assert (info.value.card, info.value.from_state, info.value.to_state) == ("A1", frm, to)
    assert f"{frm.value} -> {to.value}" in str(info.value)


def test_main_path_is_in_the_table() -> None:
    assert MAIN_PATH[0] is State.APPROVED and MAIN_PATH[-1] is State.ISSUED
    for frm, to in itertools.pairwise(MAIN_PATH):
        assert to in TRANSITIONS[frm]


def test_rule_2_entry_states() -> None:
    assert {State.APPROVED, State.REJECTED} == INITIAL
    targets = {b for _, b in LEGAL}
    assert State.REJECTED not in targets
    assert [a for a, b in LEGAL if b is State.APPROVED] == [State.REJECTED]


def test_rule_3_only_stations_spoil() -> None:
    assert {a for a, b in LEGAL if b is State.SPOILED} == STATION_STATES
    stations = {State.ENCODING, State.ENCODED, State.PRINTING, State.PRINTED, State.VERIFYING}
    assert stations == STATION_STATES


def test_rule_4_spoiled_goes_back_to_the_queue_only() -> None:
    assert TRANSITIONS[State.SPOILED] == {State.QUEUED}


def test_rule_6_final_states() -> None:
    assert {State.ISSUED, State.RETURNED} == FINAL
    assert TRANSITIONS[State.STOCKED] == {State.ISSUED, State.RETURNED}


def _reachable(start: State) -> set[State]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_and_can_finish() -> None:
    assert _reachable(State.APPROVED) | {State.REJECTED} == set(State)
    for state in State:
        assert _reachable(state) & FINAL, f"{state} is a dead end"


@pytest.mark.parametrize(("frm", "to"), BLANK_LEGAL)
def test_every_legal_blank_move_passes(frm: BlankState, to: BlankState) -> None:
    check_blank(frm, to, serial="S1")


@pytest.mark.parametrize(("frm", "to"), BLANK_ILLEGAL)
def test_every_illegal_blank_move_raises(frm: BlankState, to: BlankState) -> None:
    with pytest.raises(BlankError) as info:
        check_blank(frm, to, serial="S1")
    assert info.value.serial == "S1"


def test_rule_7_every_blank_ends_accounted() -> None:
    accounted = {BlankState.GOOD, BlankState.SPOILED, BlankState.SAMPLE, BlankState.RETURNED}
    assert BLANK_TRANSITIONS[BlankState.ISSUED_TO_LINE] == accounted
    assert all(not BLANK_TRANSITIONS[s] for s in accounted)


def test_fields_required_and_allowed() -> None:
    check_fields(State.QUEUED, {"batch_id": "B1"})
    check_fields(State.SPOILED, {"reason": "write error", "station": "head-3"})
    check_fields(State.STOCKED, {"cabinet": "CAB-1", "slot": "A-01-07"})
    check_fields(State.PRINTED, {})
    with pytest.raises(ValueError, match=r"missing \['batch_id'\]"):
        check_fields(State.QUEUED, {})
    with pytest.raises(ValueError, match=r"unexpected \['surname'\]"):
        check_fields(State.ENCODING, {"surname": "CHAN TAI MAN"})
    with pytest.raises(ValueError, match="non-empty"):
        check_fields(State.SPOILED, {"reason": ""})
    with pytest.raises(ValueError, match="printable"):
        check_fields(State.SPOILED, {"reason": "bad\nline"})
    with pytest.raises(ValueError) as info:
        check_fields(State.SPOILED, {"reason": "X" * 201})
    assert "XXXX" not in str(info.value)  # field names in messages, never values
