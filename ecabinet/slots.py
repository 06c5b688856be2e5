"""Slots: where a slot is, how easy it is to reach, and its state machine as a table.

Rule 1: a slot moves only along :data:`TRANSITIONS`, keyed by (state, event).  Anything else raises
        :class:`~ecabinet.errors.SlotError`; the caller decides whether that is a fault to report
        (a cabinet's sensors) or a bug (a controller's own bookkeeping).
Rule 2: the life of a slot is EMPTY -> RESERVED -> OCCUPIED -> OPEN_FOR_RETRIEVAL -> EMPTY.
        RESERVED means a card is on its way (allocated by the controller, or the cabinet has opened
        the slot for a deposit); OPEN_FOR_RETRIEVAL means open with the card still in it.
Rule 3: a deposit that does not happen releases the slot (RESERVED -> EMPTY); a retrieval whose
        card is not taken closes back to OCCUPIED.  Nothing is assumed: the card sensor decides.
Rule 4: any state may fault (jam, door left open, sensor disagreeing with the record).  A fault
        leaves only through an inventory scan, which says what the sensor sees now (CLEARED_EMPTY or
        CLEARED_OCCUPIED): after a fault the cabinet reports, it never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from math import isfinite
from types import MappingProxyType
from typing import Final

from ecabinet.errors import SlotError
from ecabinet.topics import check_id

__all__ = [
    "MAX_DRAWERS",
    "MAX_SLOTS_PER_DRAWER",
    "TRANSITIONS",
    "Slot",
    "SlotEvent",
    "SlotState",
    "default_reachability",
    "layout",
    "next_state",
    "parse_slot_code",
    "slot_code",
]

MAX_DRAWERS: Final = 99
MAX_SLOTS_PER_DRAWER: Final = 999


class SlotState(StrEnum):
    EMPTY = "EMPTY"
    RESERVED = "RESERVED"
    OCCUPIED = "OCCUPIED"
    OPEN_FOR_RETRIEVAL = "OPEN_FOR_RETRIEVAL"
    FAULT = "FAULT"


class SlotEvent(StrEnum):
    RESERVE = "reserve"
    CARD_INSERTED = "card_inserted"
    RELEASE = "release"
    OPEN = "open"
    CARD_REMOVED = "card_removed"
    CLOSED_UNCOLLECTED = "closed_uncollected"
    FAULT = "fault"
    CLEARED_EMPTY = "cleared_empty"
    CLEARED_OCCUPIED = "cleared_occupied"


S = SlotState
E = SlotEvent

TRANSITIONS: Final[Mapping[SlotState, Mapping[SlotEvent, SlotState]]] = MappingProxyType(
    {
        S.EMPTY: MappingProxyType({E.RESERVE: S.RESERVED, E.FAULT: S.FAULT}),
        S.RESERVED: MappingProxyType(
            {E.CARD_INSERTED: S.OCCUPIED, E.RELEASE: S.EMPTY, E.FAULT: S.FAULT}
        ),
        S.OCCUPIED: MappingProxyType({E.OPEN: S.OPEN_FOR_RETRIEVAL, E.FAULT: S.FAULT}),
        S.OPEN_FOR_RETRIEVAL: MappingProxyType(
            {E.CARD_REMOVED: S.EMPTY, E.CLOSED_UNCOLLECTED: S.OCCUPIED, E.FAULT: S.FAULT}
        ),
        # A second fault on a faulted slot is news (another code), not an illegal move.
        S.FAULT: MappingProxyType(
            {E.FAULT: S.FAULT, E.CLEARED_EMPTY: S.EMPTY, E.CLEARED_OCCUPIED: S.OCCUPIED}
        ),
    }
)


def next_state(state: SlotState, event: SlotEvent, *, slot: str | None = None) -> SlotState:
    """The state after ``event``; ``SlotError`` (with slot, state, event) if the table has none."""
    target = TRANSITIONS[state].get(event)
    if target is None:
        raise SlotError(
            f"slot {slot or '?'}: no transition from {state.value} on {event.value}",
            slot=slot,
            state=state.value,
            event=event.value,
        )
    return target


def slot_code(drawer: int, index: int) -> str:
    """``DD-III``: the slot's name within its cabinet, as the store and officers see it."""
    _check_position(drawer, index)
    return f"{drawer:02d}-{index:03d}"


_CODE: Final = re.compile(r"(\d{2})-(\d{3})")


def parse_slot_code(code: str) -> tuple[int, int]:
    """(drawer, index) from ``DD-III``; ``ValueError`` otherwise."""
    match = _CODE.fullmatch(code) if isinstance(code, str) else None
    if match is None:
        raise ValueError("a slot code is DD-III")
    drawer, index = int(match[1]), int(match[2])
    _check_position(drawer, index)
    return drawer, index


def _check_position(drawer: int, index: int) -> None:
    for name, value, top in (
        ("drawer", drawer, MAX_DRAWERS),
        ("index", index, MAX_SLOTS_PER_DRAWER),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ValueError(f"{name} must be an int in 1..{top}")


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot: cabinet, drawer (1 = top), index within the drawer (1 = front), reachability.

    ``reachability`` is in [0, 1], higher is easier for an officer to reach; allocation puts the
    cards due soonest in the highest.  A site may measure it; :func:`default_reachability` is a
    heuristic for when it has not.
    """

    cabinet: str
    drawer: int
    index: int
    reachability: float

    def __post_init__(self) -> None:
        check_id(self.cabinet, "cabinet")
        _check_position(self.drawer, self.index)
        r = self.reachability
        if isinstance(r, bool) or not isinstance(r, int | float) or not isfinite(r):
            raise ValueError("reachability must be a finite number")
        if not 0.0 <= r <= 1.0:
            raise ValueError("reachability must be in [0, 1]")

    @property
    def code(self) -> str:
        return slot_code(self.drawer, self.index)

    @property
    def key(self) -> tuple[str, int, int]:
        """Identity without the score: (cabinet, drawer, index)."""
        return (self.cabinet, self.drawer, self.index)


#: The drawer height, as a fraction from the top, that is easiest to reach: a little above the
#: middle of a waist-high cabinet, where neither bending nor stretching is needed.
_BEST_HEIGHT: Final = 0.4


def default_reachability(drawer: int, index: int, drawers: int, slots_per_drawer: int) -> float:
    """A heuristic score: drawers near :data:`_BEST_HEIGHT` and slots near the front score highest.

    Height weighs more than depth (0.7 vs 0.3): a low drawer means bending for every card, a deep
    slot only a longer reach into an open drawer.  Rounded to 6 places so scores print and compare
    the same everywhere.
    """
    _check_position(drawer, index)
    if not (1 <= drawer <= drawers and 1 <= index <= slots_per_drawer):
        raise ValueError("position outside the cabinet")
    # One drawer: no height to choose, so no height penalty either.
    height = _BEST_HEIGHT if drawers == 1 else (drawer - 1) / (drawers - 1)
    off_height = abs(height - _BEST_HEIGHT) / max(_BEST_HEIGHT, 1.0 - _BEST_HEIGHT)
    depth = 0.0 if slots_per_drawer == 1 else (index - 1) / (slots_per_drawer - 1)
    return round(1.0 - 0.7 * off_height - 0.3 * depth, 6)


def layout(cabinet: str, drawers: int, slots_per_drawer: int) -> tuple[Slot, ...]:
    """Every slot of a cabinet, drawer by drawer, with :func:`default_reachability` scores."""
    _check_position(drawers, slots_per_drawer)
    return tuple(
        Slot(cabinet, d, i, default_reachability(d, i, drawers, slots_per_drawer))
        for d in range(1, drawers + 1)
        for i in range(1, slots_per_drawer + 1)
    )
