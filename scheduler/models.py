"""The scheduler's values: work items in, batches and plans out.

All frozen: a plan is a value the line runtime and the store can keep, compare and replay.
Nothing here holds personal data; an item is known by its application id and office only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import Enum, IntEnum
from math import isfinite

__all__ = [
    "Batch",
    "BatchSchedule",
    "CapacityPlan",
    "DeferReason",
    "Deferred",
    "LineConfig",
    "OfficeCapacity",
    "Plan",
    "Priority",
    "WorkItem",
]


class Priority(IntEnum):
    """Priority classes, most urgent first: the integer order is the queue order.

    Rework first (DESIGN §3, the Bundesdruckerei 2010 lesson: re-personalisations jump the queue);
    then urgent; then on-site delivery to care homes, whose visit dates are fixed; then normal.
    """

    REWORK = 0
    URGENT = 1
    ON_SITE = 2
    NORMAL = 3

    @classmethod
    def from_label(cls, label: str) -> Priority:
        """From the intake label (``"rework"``, ``"urgent"``, ``"on_site"``, ``"normal"``)."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown priority label {label!r}") from None

    @property
    def code(self) -> str:
        """One letter for batch ids: R, U, O, N."""
        return self.name[0]


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One approved application waiting for a card.

    ``due_date`` overrides the computed due date; rework must carry it, since rework keeps the
    original due date (DESIGN §3).  ``on_site`` means the card goes to a care home, not to the
    office's cabinet: it never shares a tray with cabinet cards and takes no cabinet slot.
    """

    application_id: str
    office: str
    approved_on: date
    priority: Priority = Priority.NORMAL
    due_date: date | None = None
    on_site: bool = False

    def __post_init__(self) -> None:
        if not self.application_id or not self.office:
            raise ValueError("application_id and office must not be empty")
        # datetime is a date subclass, but comparing one with a date raises TypeError deep in a
        # sort; refuse it here where the caller can see why.
        if type(self.approved_on) is not date:
            raise TypeError("approved_on must be a datetime.date (use .date() on a datetime)")
        if not isinstance(self.priority, Priority):
            raise TypeError("priority must be a Priority")
        if self.due_date is not None:
            if type(self.due_date) is not date:
                raise TypeError("due_date must be a datetime.date")
            if self.due_date < self.approved_on:
                raise ValueError("due_date is before approval")
        if self.priority is Priority.REWORK and self.due_date is None:
            raise ValueError("rework keeps its original due date: due_date is required")
        if self.priority is Priority.ON_SITE and not self.on_site:
            # The class is the destination: an on-site class card always goes to a care home.
            object.__setattr__(self, "on_site", True)
        if self.priority is Priority.NORMAL and self.on_site:
            raise ValueError("an on-site card of normal urgency is Priority.ON_SITE")


@dataclass(frozen=True, slots=True)
class Batch:
    """One delivery tray: cards for one office and destination, one due date, one class."""

    batch_id: str
    office: str
    due_date: date
    priority: Priority
    items: tuple[WorkItem, ...]
    on_site: bool = False

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("a batch holds at least one item")

    @property
    def size(self) -> int:
        return len(self.items)


class DeferReason(Enum):
    """Why an item was held back instead of planned (DESIGN §6: capacity checked before dispatch)."""

    NO_FREE_SLOTS = "no_free_slots"  # the office's cabinets are full up to this item
    NO_SLOT_COUNT = "no_slot_count"  # free_slots was given but does not name the office


@dataclass(frozen=True, slots=True)
class Deferred:
    item: WorkItem
    reason: DeferReason
    detail: str


@dataclass(frozen=True)
class Plan:
    """Batches in line order (class, then due date, then office), and what was held back.

    The line order restricted to one office is that office's delivery order (:meth:`stack`).
    """

    today: date
    tray_size: int
    batches: tuple[Batch, ...]
    deferred: tuple[Deferred, ...] = ()

    @property
    def cards(self) -> int:
        return sum(b.size for b in self.batches)

    def offices(self) -> tuple[str, ...]:
        return tuple(sorted({b.office for b in self.batches}))

    def stack(self, office: str) -> tuple[Batch, ...]:
        """``office``'s trays in delivery order: the order the output stacker lays them down."""
        return tuple(b for b in self.batches if b.office == office)

    def stacks(self) -> dict[str, tuple[Batch, ...]]:
        stacks: dict[str, list[Batch]] = {}
        for batch in self.batches:
            stacks.setdefault(batch.office, []).append(batch)
        return {office: tuple(stacks[office]) for office in sorted(stacks)}

    def overdue(self) -> tuple[Batch, ...]:
        """Batches already past their due date on ``today`` (typically rework)."""
        return tuple(b for b in self.batches if b.due_date < self.today)


@dataclass(frozen=True)
class LineConfig:
    """A personalisation line as the planner sees it: one rate, one shift a working day.

    The working days themselves come from the :class:`~scheduler.calendar.WorkingCalendar`.
    ``cards_per_hour`` is the bottleneck station's rate (DESIGN §5: the slowest module sets it).
    """

    cards_per_hour: float
    hours_per_day: float
    tray_size: int
    shift_start: time = time(8, 0)

    def __post_init__(self) -> None:
        if not (isfinite(self.cards_per_hour) and self.cards_per_hour > 0):
            raise ValueError("cards_per_hour must be a positive number")
        if not (isfinite(self.hours_per_day) and 0 < self.hours_per_day <= 24):
            raise ValueError("hours_per_day must be in (0, 24]")
        if self.tray_size < 1:
            raise ValueError("tray_size must be at least 1")
        if self.shift_start.tzinfo is not None:
            raise ValueError("shift_start is a wall-clock time without tzinfo")
        since_midnight = datetime.combine(date.min, self.shift_start) - datetime.min
        if since_midnight + self.shift > timedelta(days=1):
            raise ValueError("the shift must end by midnight (one shift per working day)")

    @property
    def shift(self) -> timedelta:
        return timedelta(hours=self.hours_per_day)


@dataclass(frozen=True, slots=True)
class BatchSchedule:
    """When the line works on one batch, against the batch's deadline.

    ``slack`` is line time (working hours of the line, not wall-clock time) from ``ready`` to
    ``deadline``: negative means late by that much production.
    """

    batch_id: str
    office: str
    due_date: date
    priority: Priority
    cards: int
    start: datetime
    ready: datetime
    deadline: datetime
    slack: timedelta

    @property
    def at_risk(self) -> bool:
        return self.slack < timedelta(0)


@dataclass(frozen=True, slots=True)
class OfficeCapacity:
    """One office's row in a capacity plan."""

    office: str
    cards: int
    batches: int
    first_ready: datetime
    last_ready: datetime
    at_risk: tuple[str, ...]  # batch ids, in line order
    due_dates_at_risk: tuple[date, ...]
    min_slack: timedelta


@dataclass(frozen=True)
class CapacityPlan:
    start: datetime
    finish: datetime  # when the last planned batch is ready (``start`` if nothing is planned)
    schedule: tuple[BatchSchedule, ...]  # line order
    offices: tuple[OfficeCapacity, ...]  # by office code
    deferred: tuple[Deferred, ...] = ()

    @property
    def at_risk(self) -> tuple[BatchSchedule, ...]:
        return tuple(s for s in self.schedule if s.at_risk)

    def office(self, office: str) -> OfficeCapacity:
        for row in self.offices:
            if row.office == office:
                return row
        raise KeyError(office)
