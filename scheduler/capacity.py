"""Capacity plan: when each batch, and each office's cards, will be ready, and what is at risk.

The line is simulated as one server working through the batches in plan order at the bottleneck
rate (DESIGN §5), only inside the shift of each working day.  Time is kept as integer microseconds
of *line time* (working hours since ``start``) and each ready time is rounded up to the microsecond
from an exact fraction, so a faster line never finishes a batch later and a batch due exactly at
the end of a shift is not called late by a rounding error.

Deadline of a batch: the end of the shift on the last working day on or before its due date, moved
back ``delivery_days`` working days to leave time to deliver.  A batch is at risk when its last card
is ready after that deadline; its slack is the line time between the two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from fractions import Fraction

from scheduler.batching import plan_batches, validate_free_slots
from scheduler.calendar import WorkingCalendar
from scheduler.models import (
    Batch,
    BatchSchedule,
    CapacityPlan,
    DeferReason,
    Deferred,
    LineConfig,
    OfficeCapacity,
    Plan,
    WorkItem,
)

__all__ = ["capacity_plan", "plan_backlog"]

_US_PER_HOUR = 3_600_000_000


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _LineClock:
    """Converts between wall-clock datetimes and line time (µs of shift time since ``start``)."""

    def __init__(self, calendar: WorkingCalendar, line: LineConfig, start: datetime) -> None:
        self._calendar = calendar
        self._shift_start = line.shift_start
        self._shift = line.shift
        self._shift_us = _us(line.shift)
        self._start = start
        self._reset()

    def _reset(self) -> None:
        day = self._start.date()
        if self._calendar.is_working_day(day):
            base = -self._partial(self._start)
        else:
            day, base = self._calendar.roll_forward(day), 0
        self._day, self._base = day, base  # line time at the start of ``_day``'s shift

    def _shift_open(self, day: date) -> datetime:
        return datetime.combine(day, self._shift_start, tzinfo=self._start.tzinfo)

    def _partial(self, moment: datetime) -> int:
        """Shift time already worked on ``moment``'s day by ``moment``."""
        day = moment.date()
        if not self._calendar.is_working_day(day):
            return 0
        return min(max(_us(moment - self._shift_open(day)), 0), self._shift_us)

    def offset(self, moment: datetime) -> int:
        """Line time from ``start`` to ``moment`` (negative if ``moment`` is earlier)."""
        s, t = self._start.date(), moment.date()
        cal = self._calendar
        days = cal.working_days_between(s, t) - cal.is_working_day(t) + cal.is_working_day(s)
        return days * self._shift_us + self._partial(moment) - self._partial(self._start)

    def at(self, offset: int, *, starting: bool = False) -> datetime:
        """The moment line time reaches ``offset``; with ``starting``, work that begins there.

        A shift's end and the next shift's start are the same line time: a batch that finishes
        at 16:00 is ready at 16:00, but the next one starts the following working morning.
        """
        if offset < self._base:
            self._reset()  # queries come in line order; this only guards against misuse
        while offset > self._base + self._shift_us or (
            starting and offset == self._base + self._shift_us
        ):
            self._day = self._calendar.add_working_days(self._day, 1)
            self._base += self._shift_us
        return self._shift_open(self._day) + timedelta(microseconds=offset - self._base)

    def deadline(self, due: date, delivery_days: int) -> datetime:
        day = self._calendar.add_working_days(self._calendar.roll_back(due), -delivery_days)
        return self._shift_open(day) + self._shift


def _hold_back(
    batches: Iterable[Batch], free_slots: Mapping[str, int] | None
) -> tuple[list[Batch], list[Deferred]]:
    planned: list[Batch] = []
    deferred: list[Deferred] = []
    left = None if free_slots is None else validate_free_slots(free_slots)
    seen: set[str] = set()
    for batch in batches:
        if batch.batch_id in seen:
            raise ValueError(f"batch {batch.batch_id} is planned twice")
        seen.add(batch.batch_id)
        if left is None or batch.on_site:
            planned.append(batch)
            continue
        free = left.get(batch.office)
        if free is None:
            reason, detail = DeferReason.NO_SLOT_COUNT, f"no free-slot count for {batch.office}"
        elif batch.size > free:
            # A tray is dispatched whole, and once one tray does not fit, later (less urgent,
            # later due) trays must not overtake it: the office is closed for this plan.
            # plan_batches(free_slots=...) fills the last slots with a partial tray instead.
            left[batch.office] = 0
            reason, detail = DeferReason.NO_FREE_SLOTS, f"{batch.office} cabinets full"
        else:
            left[batch.office] = free - batch.size
            planned.append(batch)
            continue
        deferred.extend(
            Deferred(item, reason, f"{detail} (tray {batch.batch_id})") for item in batch.items
        )
    return planned, deferred


def capacity_plan(
    batches: Iterable[Batch],
    line: LineConfig,
    *,
    start: datetime,
    calendar: WorkingCalendar,
    free_slots: Mapping[str, int] | None = None,
    delivery_days: int = 0,
) -> CapacityPlan:
    """Simulate ``line`` working through ``batches`` in the given order from ``start``.

    ``free_slots`` holds back whole trays an office has no room for (see :func:`_hold_back`),
    reported in ``CapacityPlan.deferred``.  ``start`` may be naive or aware; results share its
    tzinfo.  Raises ``ValueError`` on a repeated batch id, a negative ``delivery_days`` or slot
    count, or a date outside the calendar's years.
    """
    if delivery_days < 0:
        raise ValueError("delivery_days must not be negative")
    planned, deferred = _hold_back(batches, free_slots)
    clock = _LineClock(calendar, line, start)
    card_us = Fraction(_US_PER_HOUR) / Fraction(line.cards_per_hour)
    deadlines: dict[date, tuple[datetime, int]] = {}
    schedule: list[BatchSchedule] = []
    cards = 0
    for batch in planned:
        begin = clock.at(math.ceil(cards * card_us), starting=True)
        cards += batch.size
        ready_us = math.ceil(cards * card_us)
        ready = clock.at(ready_us)
        if batch.due_date not in deadlines:
            deadline = clock.deadline(batch.due_date, delivery_days)
            deadlines[batch.due_date] = (deadline, clock.offset(deadline))
        deadline, deadline_us = deadlines[batch.due_date]
        schedule.append(
            BatchSchedule(
                batch.batch_id,
                batch.office,
                batch.due_date,
                batch.priority,
                batch.size,
                begin,
                ready,
                deadline,
                timedelta(microseconds=deadline_us - ready_us),
            )
        )
    return CapacityPlan(
        start,
        schedule[-1].ready if schedule else start,
        tuple(schedule),
        _office_rows(schedule),
        tuple(deferred),
    )


def _office_rows(schedule: list[BatchSchedule]) -> tuple[OfficeCapacity, ...]:
    by_office: dict[str, list[BatchSchedule]] = {}
    for entry in schedule:
        by_office.setdefault(entry.office, []).append(entry)
    rows = []
    for office in sorted(by_office):
        entries = by_office[office]
        late = [e for e in entries if e.at_risk]
        rows.append(
            OfficeCapacity(
                office,
                sum(e.cards for e in entries),
                len(entries),
                min(e.ready for e in entries),
                max(e.ready for e in entries),
                tuple(e.batch_id for e in late),
                tuple(sorted({e.due_date for e in late})),
                min(e.slack for e in entries),
            )
        )
    return tuple(rows)


def plan_backlog(
    items: Iterable[WorkItem],
    line: LineConfig,
    *,
    today: date,
    start: datetime,
    calendar: WorkingCalendar,
    free_slots: Mapping[str, int] | None = None,
    delivery_days: int = 0,
) -> tuple[Plan, CapacityPlan]:
    """Batch a backlog into ``line``'s trays, then plan the line's capacity over it."""
    plan = plan_batches(
        items, today=today, calendar=calendar, tray_size=line.tray_size, free_slots=free_slots
    )
    return plan, capacity_plan(
        plan.batches, line, start=start, calendar=calendar, delivery_days=delivery_days
    )
