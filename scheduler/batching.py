"""Batch planning: classes, due dates, trays, and the free-slot hold-back.

Order (DESIGN §3, issue 5): priority class first (rework, urgent, on-site, normal), then earliest
due date within a class, then office code; within a tray, approval date then application id.  The
order depends only on the items, never on the order they arrive in, and batch ids are built from
office, due date, class, destination and a sequence number, so planning the same backlog twice
gives the same plan (the store can key its idempotent QUEUED transition on the batch id).

Delivery order: an office's trays are stacked in the line order restricted to that office, so what
is made first is delivered first and the most urgent, earliest-due cards reach the cabinet first.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from datetime import date

from scheduler.calendar import WorkingCalendar
from scheduler.models import Batch, DeferReason, Deferred, Plan, Priority, WorkItem

__all__ = ["batch_id", "plan_batches"]

#: Larger than any date.toordinal() (date.max is 3,652,059): one digit of the packed key.
_DAYS = 4_000_000


def batch_id(office: str, due_date: date, priority: Priority, on_site: bool, seq: int) -> str:
    """``OFFICE-YYYYMMDD-<class><destination>-NNN``; destination C = cabinet, H = care home."""
    return f"{office}-{due_date:%Y%m%d}-{priority.code}{'H' if on_site else 'C'}-{seq:03d}"


def validate_free_slots(free_slots: Mapping[str, int]) -> dict[str, int]:
    """A mutable copy of ``free_slots`` after checking every count is a non-negative int."""
    slots: dict[str, int] = {}
    for office, free in free_slots.items():
        if isinstance(free, bool) or not isinstance(free, int) or free < 0:
            raise ValueError(f"free_slots[{office!r}] must be a non-negative int")
        slots[office] = free
    return slots


def plan_batches(
    items: Iterable[WorkItem],
    *,
    today: date,
    calendar: WorkingCalendar,
    tray_size: int,
    free_slots: Mapping[str, int] | None = None,
) -> Plan:
    """Group ``items`` into trays of at most ``tray_size`` cards, in line order.

    ``free_slots`` (office → free cabinet slots), when given, caps the cabinet cards planned for
    each office: items beyond it, taken in delivery order so the latest and least urgent wait, are
    returned in ``Plan.deferred`` with the reason.  On-site cards go to care homes and use no slot.
    An office missing from ``free_slots`` gets nothing planned: its capacity is unknown.

    Raises ``ValueError`` on misuse: ``tray_size < 1``, a duplicate application id, an approval
    after ``today``, a negative slot count, or a date outside the calendar's years.
    """
    if tray_size < 1:
        raise ValueError("tray_size must be at least 1")
    remaining = None if free_slots is None else validate_free_slots(free_slots)
    # Sorted by application id first, so the stable sort below breaks ties on it.
    backlog = sorted(items, key=_application_id)
    if not backlog:
        return Plan(today, tray_size, (), ())
    ids = [item.application_id for item in backlog]
    if len(set(ids)) != len(ids):
        raise ValueError(f"application {_first_repeat(ids)} is in the backlog twice")
    if max(item.approved_on for item in backlog) > today:
        raise ValueError("an application in the backlog is approved after today")
    # Many items share an approval date: one calendar walk per distinct date.  Only items without
    # an explicit due date need one (rework may predate the calendar's years).
    approvals = sorted({item.approved_on for item in backlog if item.due_date is None})
    due_of = {day: calendar.due_date(day) for day in approvals}
    rank = {office: n for n, office in enumerate(sorted({item.office for item in backlog}))}
    # The line order key packed into one int per item (_pack), and a sort of indices by it: a
    # million-item plan then allocates no tuples, which keeps both the comparisons and the
    # garbage collector's passes over the backlog cheap.
    keys = [_pack(item, item.due_date or due_of[item.approved_on], rank) for item in backlog]
    order = sorted(range(len(backlog)), key=keys.__getitem__)
    deferred: list[Deferred] = []
    if remaining is not None:
        order = _hold_back(order, backlog, remaining, deferred)
    ordered = [backlog[i] for i in order]
    return Plan(
        today,
        tray_size,
        _trays(ordered, [keys[i] for i in order], tray_size, due_of),
        tuple(deferred),
    )


def _hold_back(
    order: list[int], backlog: list[WorkItem], remaining: dict[str, int], deferred: list[Deferred]
) -> list[int]:
    """The entries of ``order`` that fit the offices' free slots; the others go to ``deferred``.

    Walking the line order, each office's items come in its delivery order, so counting slots
    down here holds back exactly the tail of every office's stack.  On-site cards take no slot.
    """
    kept: list[int] = []
    for index in order:
        item = backlog[index]
        if not item.on_site:
            free = remaining.get(item.office)
            if free is None:
                detail = f"no free-slot count for {item.office}"
                deferred.append(Deferred(item, DeferReason.NO_SLOT_COUNT, detail))
                continue
            if free == 0:
                detail = f"{item.office} cabinets full"
                deferred.append(Deferred(item, DeferReason.NO_FREE_SLOTS, detail))
                continue
            remaining[item.office] = free - 1
        kept.append(index)
    return kept


def _application_id(item: WorkItem) -> str:
    return item.application_id


def _first_repeat(ids: list[str]) -> str:
    seen: set[str] = set()
    for app_id in ids:
        if app_id in seen:
            return app_id
        seen.add(app_id)
    raise AssertionError("unreachable: caller found a repeat")


def _pack(item: WorkItem, due: date, rank: Mapping[str, int]) -> int:
    """Class, due date, office rank, on-site flag, approval date: one int, compared as a tuple.

    The first four "digits" name the tray group: ``_pack(...) // _DAYS`` is equal exactly for
    items that may share a tray.
    """
    group = (item.priority * _DAYS + due.toordinal()) * len(rank) + rank[item.office]
    return (group * 2 + item.on_site) * _DAYS + item.approved_on.toordinal()


def _trays(
    items: list[WorkItem], keys: list[int], tray_size: int, due_of: Mapping[date, date]
) -> tuple[Batch, ...]:
    """Cut the sorted items into trays: each tray group is one contiguous run of keys."""
    batches: list[Batch] = []
    start = 0
    while start < len(keys):
        end = bisect.bisect_left(keys, (keys[start] // _DAYS + 1) * _DAYS, start)
        head = items[start]
        office, priority, on_site = head.office, head.priority, head.on_site
        due = head.due_date or due_of[head.approved_on]
        for seq, first in enumerate(range(start, end, tray_size), start=1):
            tray = tuple(items[first : min(first + tray_size, end)])
            bid = batch_id(office, due, priority, on_site, seq)
            batches.append(Batch(bid, office, due, priority, tray, on_site))
        start = end
    return tuple(batches)
