"""Pure planning for the personalisation line: due dates, batches, delivery order, capacity.

No I/O and no clock: today's date and the start time are parameters, so a plan can be replayed and
simulated faster than real time (DESIGN §2).  The one exception is reading the bundled holiday
lists (:func:`hong_kong_calendar`).  Caller misuse raises ``ValueError`` or ``TypeError``.

::

    items ──plan_batches──► Plan (batches in line order, deferred)
                              └──capacity_plan──► CapacityPlan (ready times, at-risk, per office)
"""

from __future__ import annotations

from scheduler.batching import batch_id, plan_batches
from scheduler.calendar import (
    DUE_WORKING_DAYS,
    Holiday,
    HolidayList,
    WorkingCalendar,
    hong_kong_calendar,
    hong_kong_holiday_lists,
    load_holidays,
    parse_holidays,
)
from scheduler.capacity import capacity_plan, plan_backlog
from scheduler.models import (
    Batch,
    BatchSchedule,
    CapacityPlan,
    DeferReason,
    Deferred,
    LineConfig,
    OfficeCapacity,
    Plan,
    Priority,
    WorkItem,
)

__all__ = [
    "DUE_WORKING_DAYS",
    "Batch",
    "BatchSchedule",
    "CapacityPlan",
    "DeferReason",
    "Deferred",
    "Holiday",
    "HolidayList",
    "LineConfig",
    "OfficeCapacity",
    "Plan",
    "Priority",
    "WorkItem",
    "WorkingCalendar",
    "batch_id",
    "capacity_plan",
    "hong_kong_calendar",
    "hong_kong_holiday_lists",
    "load_holidays",
    "parse_holidays",
    "plan_backlog",
    "plan_batches",
]
