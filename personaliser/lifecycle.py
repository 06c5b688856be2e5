"""The card life cycle of DESIGN §3 as data: application states, blank states, their transitions.

Rule 1: an application moves only along :data:`TRANSITIONS`.  Anything else raises
        :class:`~personaliser.errors.IllegalTransitionError`, and the store refuses it before it
        changes anything.
Rule 2: an application enters the life cycle in one of two states only: APPROVED (a valid record) or
        REJECTED (intake validation failed; its reasons are kept).  REJECTED leaves only for
        APPROVED, when a corrected record for the same application id is imported.
Rule 3: every *station* state (ENCODING … VERIFYING) may fail into SPOILED.  Before a blank is taken
        (APPROVED, QUEUED) there is nothing to spoil; after verification (PASSED onwards) a fault is
        not a station failure and needs an operator, not the line.
Rule 4: SPOILED leaves only for QUEUED: the application is re-queued at top priority and keeps its
        collection (due) date (DESIGN §3 "rework first", the Bundesdruckerei 2010 lesson).
Rule 5: late binding.  An application is bound to a blank (chip serial) only on entering PASSED, when
        encode and verify both succeeded.  Until then the blank is ISSUED_TO_LINE; if the attempt fails
        the blank becomes SPOILED, goes to the spoil log and is never used again.
Rule 6: STOCKED ends in ISSUED (collected) or RETURNED (past the retention period); ISSUED and
        RETURNED are final, and so is a card's personal data: it is purged by then at the latest.
Rule 7: a blank issued to a batch ends as exactly one of GOOD, SPOILED, SAMPLE or RETURNED (to the
        vault), all final; so once a batch is reconciled, issued = good + spoiled + samples + returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from personaliser.errors import BlankError, IllegalTransitionError

__all__ = [
    "BLANK_TRANSITIONS",
    "FINAL",
    "INITIAL",
    "MAIN_PATH",
    "STATION_STATES",
    "TRANSITIONS",
    "TRANSITION_FIELDS",
    "BlankState",
    "FieldSpec",
    "State",
    "check",
    "check_blank",
    "check_fields",
]


class State(StrEnum):
    """Where an application is in the life cycle (DESIGN §3)."""

    APPROVED = "APPROVED"
    QUEUED = "QUEUED"
    ENCODING = "ENCODING"
    ENCODED = "ENCODED"
    PRINTING = "PRINTING"
    PRINTED = "PRINTED"
    VERIFYING = "VERIFYING"
    PASSED = "PASSED"
    DISPATCHED = "DISPATCHED"
    STOCKED = "STOCKED"
    ISSUED = "ISSUED"
    SPOILED = "SPOILED"
    RETURNED = "RETURNED"
    REJECTED = "REJECTED"


class BlankState(StrEnum):
    """Where a physical blank (a chip card body) is, for stock reconciliation."""

    ISSUED_TO_LINE = "ISSUED_TO_LINE"
    GOOD = "GOOD"
    SPOILED = "SPOILED"
    SAMPLE = "SAMPLE"
    RETURNED = "RETURNED"


S = State

#: The straight path of DESIGN §3, without branches.
MAIN_PATH: Final = (
    S.APPROVED, S.QUEUED, S.ENCODING, S.ENCODED, S.PRINTING, S.PRINTED, S.VERIFYING, S.PASSED,
    S.DISPATCHED, S.STOCKED, S.ISSUED,
)  # fmt: skip

#: Rule 3: the states in which a blank is in a station.
STATION_STATES: Final = frozenset({S.ENCODING, S.ENCODED, S.PRINTING, S.PRINTED, S.VERIFYING})

#: Rule 2.
INITIAL: Final = frozenset({S.APPROVED, S.REJECTED})

TRANSITIONS: Final[Mapping[State, frozenset[State]]] = MappingProxyType(
    {
        S.REJECTED: frozenset({S.APPROVED}),
        S.APPROVED: frozenset({S.QUEUED}),
        S.QUEUED: frozenset({S.ENCODING}),
        S.ENCODING: frozenset({S.ENCODED, S.SPOILED}),
        S.ENCODED: frozenset({S.PRINTING, S.SPOILED}),
        S.PRINTING: frozenset({S.PRINTED, S.SPOILED}),
        S.PRINTED: frozenset({S.VERIFYING, S.SPOILED}),
        S.VERIFYING: frozenset({S.PASSED, S.SPOILED}),
        S.SPOILED: frozenset({S.QUEUED}),
        S.PASSED: frozenset({S.DISPATCHED}),
        S.DISPATCHED: frozenset({S.STOCKED}),
        S.STOCKED: frozenset({S.ISSUED, S.RETURNED}),
        S.ISSUED: frozenset(),
        S.RETURNED: frozenset(),
    }
)

#: Rule 6.
FINAL: Final = frozenset(s for s, targets in TRANSITIONS.items() if not targets)

B = BlankState

#: Rule 7.  A blank first seen on the line is ISSUED_TO_LINE; every exit is final.
BLANK_TRANSITIONS: Final[Mapping[BlankState, frozenset[BlankState]]] = MappingProxyType(
    {
        B.ISSUED_TO_LINE: frozenset({B.GOOD, B.SPOILED, B.SAMPLE, B.RETURNED}),
        B.GOOD: frozenset(),
        B.SPOILED: frozenset(),
        B.SAMPLE: frozenset(),
        B.RETURNED: frozenset(),
    }
)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """The fields a transition into a state must and may carry (ids and codes, never personal data)."""

    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()


_STATION = frozenset({"station", "blank_serial"})

#: What each transition records.  ``blank_serial`` may arrive at any station step: a head learns the
#: chip serial only when the chip first answers (its key diversification data), and a blank that
#: never answered is spoiled without one.
TRANSITION_FIELDS: Final[Mapping[State, FieldSpec]] = MappingProxyType(
    {
        S.APPROVED: FieldSpec(),
        S.REJECTED: FieldSpec(),
        S.QUEUED: FieldSpec(required=frozenset({"batch_id"})),
        S.ENCODING: FieldSpec(optional=_STATION),
        S.ENCODED: FieldSpec(optional=_STATION),
        S.PRINTING: FieldSpec(optional=_STATION),
        S.PRINTED: FieldSpec(optional=_STATION),
        S.VERIFYING: FieldSpec(optional=_STATION),
        S.PASSED: FieldSpec(optional=_STATION),
        S.SPOILED: FieldSpec(required=frozenset({"reason"}), optional=_STATION),
        S.DISPATCHED: FieldSpec(optional=frozenset({"tray"})),
        S.STOCKED: FieldSpec(required=frozenset({"cabinet", "slot"})),
        S.ISSUED: FieldSpec(optional=frozenset({"officer"})),
        S.RETURNED: FieldSpec(optional=frozenset({"reason"})),
    }
)

MAX_FIELD_CHARS = 200


def check(from_state: State, to_state: State, *, card: str = "?") -> None:
    """Raise IllegalTransitionError unless the table has ``from_state`` → ``to_state``."""
    if to_state not in TRANSITIONS[from_state]:
        raise IllegalTransitionError(card, from_state.value, to_state.value)


def check_blank(from_state: BlankState, to_state: BlankState, *, serial: str | None = None) -> None:
    """Raise BlankError unless a blank may go from ``from_state`` to ``to_state`` (Rule 7)."""
    if to_state not in BLANK_TRANSITIONS[from_state]:
        raise BlankError(
            f"blank {serial or '(unidentified)'} is {from_state.value}, cannot become {to_state.value}",
            serial=serial,
        )


def check_fields(to_state: State, fields: Mapping[str, str]) -> None:
    """Raise ValueError if ``fields`` are not what a transition into ``to_state`` carries.

    Values are short printable codes; the message names fields, never their values.
    """
    spec = TRANSITION_FIELDS[to_state]
    missing = spec.required - fields.keys()
    unknown = fields.keys() - spec.required - spec.optional
    if missing or unknown:
        raise ValueError(
            f"a transition to {to_state.value} needs {sorted(spec.required)}"
            f" and may carry {sorted(spec.optional)};"
            f" missing {sorted(missing)}, unexpected {sorted(unknown)}"
        )
    for name, value in fields.items():
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD_CHARS:
            raise ValueError(f"field {name} must be a non-empty string of at most 200 characters")
        if not value.isprintable():
            raise ValueError(f"field {name} must be printable")
