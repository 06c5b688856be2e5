"""Slot allocation for one office: pure and deterministic.

Two aims (DESIGN §6, issue 6):

1. **Soonest out, nearest to hand.**  Cards are placed in order of collection date, each into the
   most reachable free slot of the cabinet chosen for it, so within a cabinet a card collected
   earlier never sits in a less reachable slot than one collected later.
2. **No queue at one cabinet.**  Each card goes to the cabinet holding the fewest cards for its
   collection day so far, counting cards already stocked, so one day's collections spread over the
   office's cabinets: within one card of each other when every cabinet has room.

Ties go to the cabinet whose best free slot is more reachable, then to the cabinet id; cards of the
same day are taken in card id order.  The result depends on the inputs' contents only, never on
their order, so the controller can recompute an allocation and get the same one.

Capacity is checked before anything is placed: an office with fewer free slots than cards gets a
:class:`~ecabinet.errors.CapacityError` and no partial allocation.  :func:`free_slots_by_office`
is the ``free_slots`` mapping :func:`scheduler.capacity_plan` takes, so the scheduler never sends
an office more cards than it has room for (``ecabinet`` does not import ``scheduler``: the caller
passes the mapping across).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from ecabinet.errors import CapacityError
from ecabinet.slots import Slot, SlotState
from ecabinet.topics import check_id

__all__ = [
    "Allocation",
    "CardToPlace",
    "OfficeSlots",
    "Placement",
    "SlotView",
    "allocate",
    "free_slots",
    "free_slots_by_office",
]


@dataclass(frozen=True, slots=True)
class SlotView:
    """A slot as the controller's slot map sees it.

    ``collection_date`` is the expected collection day of the card held or reserved there; it is
    what spreads a day's collections, so give it for every RESERVED and OCCUPIED slot you know it for.
    """

    slot: Slot
    state: SlotState
    collection_date: date | None = None

    @property
    def free(self) -> bool:
        return self.state is SlotState.EMPTY


@dataclass(frozen=True, slots=True)
class OfficeSlots:
    office: str
    slots: tuple[SlotView, ...]

    def __post_init__(self) -> None:
        check_id(self.office, "office")
        keys = [view.slot.key for view in self.slots]
        if len(set(keys)) != len(keys):
            raise ValueError(f"office {self.office}: a slot is listed twice")

    @property
    def cabinets(self) -> tuple[str, ...]:
        return tuple(sorted({view.slot.cabinet for view in self.slots}))


@dataclass(frozen=True, slots=True)
class CardToPlace:
    """A card to deposit: an id (application id or chip serial, never personal data) and the day
    the applicant is expected to collect it."""

    card_id: str
    collection_date: date

    def __post_init__(self) -> None:
        if not isinstance(self.card_id, str) or not self.card_id:
            raise ValueError("card_id must be a non-empty string")
        if type(self.collection_date) is not date:
            raise TypeError("collection_date must be a datetime.date")


@dataclass(frozen=True, slots=True)
class Placement:
    card_id: str
    collection_date: date
    slot: Slot


@dataclass(frozen=True, slots=True)
class Allocation:
    """Placements in the order they were decided: by collection date, then card id."""

    office: str
    placements: tuple[Placement, ...]

    def slot_of(self, card_id: str) -> Slot:
        for placement in self.placements:
            if placement.card_id == card_id:
                return placement.slot
        raise KeyError(card_id)


def free_slots(office: OfficeSlots) -> int:
    """Slots that can take a card now: EMPTY ones (a RESERVED slot is already promised)."""
    return sum(1 for view in office.slots if view.free)


def free_slots_by_office(offices: Iterable[OfficeSlots]) -> dict[str, int]:
    """office -> free slots, the ``free_slots`` argument of the scheduler's capacity plan."""
    result: dict[str, int] = {}
    for office in offices:
        if office.office in result:
            raise ValueError(f"office {office.office} is given twice")
        result[office.office] = free_slots(office)
    return result


def _reach_order(slot: Slot) -> tuple[float, int, int]:
    return (-slot.reachability, slot.drawer, slot.index)


def allocate(office: OfficeSlots, cards: Iterable[CardToPlace]) -> Allocation:
    """Place every card in a free slot of ``office``, or raise ``CapacityError`` placing none.

    ``ValueError`` if a card id repeats.
    """
    order = sorted(cards, key=lambda card: (card.collection_date, card.card_id))
    ids = [card.card_id for card in order]
    if len(set(ids)) != len(ids):
        raise ValueError("a card is given twice")
    available = free_slots(office)
    if len(order) > available:
        raise CapacityError(office.office, needed=len(order), free=available)

    # Free slots per cabinet, most reachable first; ``taken`` is how far down each list we are.
    free: dict[str, list[Slot]] = {}
    for view in office.slots:
        if view.free:
            free.setdefault(view.slot.cabinet, []).append(view.slot)
    for slots in free.values():
        slots.sort(key=_reach_order)
    taken = dict.fromkeys(free, 0)
    load: Counter[tuple[str, date]] = Counter(
        (view.slot.cabinet, view.collection_date)
        for view in office.slots
        if view.collection_date is not None and not view.free
    )

    placements: list[Placement] = []
    for card in order:
        day = card.collection_date
        cabinet = min(
            (c for c in free if taken[c] < len(free[c])),
            key=lambda c: (load[(c, day)], -free[c][taken[c]].reachability, c),
        )
        slot = free[cabinet][taken[cabinet]]
        taken[cabinet] += 1
        load[(cabinet, day)] += 1
        placements.append(Placement(card.card_id, day, slot))
    return Allocation(office.office, tuple(placements))
