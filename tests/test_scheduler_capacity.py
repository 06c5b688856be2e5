"""Capacity plan: hand-timed examples on the 2026 Hong Kong calendar, misuse, and properties.

The hand examples use a line of 10 cards an hour, 8 hours a day from 08:00, so every ready time
can be checked on a napkin: 40 cards take a morning, 80 a day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import (
    Batch,
    DeferReason,
    LineConfig,
    Priority,
    WorkItem,
    capacity_plan,
    hong_kong_calendar,
    plan_backlog,
    plan_batches,
)
from tests.test_scheduler_batching import backlogs

HK = hong_kong_calendar()
LINE = LineConfig(cards_per_hour=10, hours_per_day=8, tray_size=40)
MON = date(2026, 3, 2)  # a week with no holidays
H = timedelta(hours=1)


def tray(batch_id: str, office: str, due: date, cards: int, *, on_site: bool = False) -> Batch:
    priority = Priority.ON_SITE if on_site else Priority.NORMAL
    items = tuple(
        WorkItem(f"{batch_id}/{n}", office, date(2026, 2, 20), priority, on_site=on_site)
        for n in range(cards)
    )
    return Batch(batch_id, office, due, priority, items, on_site)


B1 = tray("b1", "ROP-KLN", MON, 40)
B2 = tray("b2", "ROP-KLN", MON, 40)
B3 = tray("b3", "ROP-KLN", MON, 10)
B4 = tray("b4", "ROP-HKI", date(2026, 3, 4), 5)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute))


def test_hand_timed_plan() -> None:
    plan = capacity_plan([B1, B2, B3, B4], LINE, start=at(MON, 8), calendar=HK)
    tue, wed = MON + timedelta(days=1), MON + timedelta(days=2)
    got = [(s.batch_id, s.start, s.ready, s.deadline, s.slack) for s in plan.schedule]
    assert got == [
        ("b1", at(MON, 8), at(MON, 12), at(MON, 16), 4 * H),
        # Ready exactly at the end of the due day's shift: on time, slack zero.
        ("b2", at(MON, 12), at(MON, 16), at(MON, 16), 0 * H),
        # Starts the next working morning, one hour of line time late.
        ("b3", at(tue, 8), at(tue, 9), at(MON, 16), -1 * H),
        # Due Wednesday: the rest of Tuesday (6.5 h) and all of Wednesday (8 h) to spare.
        ("b4", at(tue, 9), at(tue, 9, 30), at(wed, 16), 14.5 * H),
    ]
    assert [s.batch_id for s in plan.at_risk] == ["b3"]
    assert plan.finish == at(tue, 9, 30)
    kln = plan.office("ROP-KLN")
    assert (kln.cards, kln.batches, kln.first_ready, kln.last_ready) == (
        90,
        3,
        at(MON, 12),
        at(tue, 9),
    )
    assert kln.at_risk == ("b3",)
    assert kln.due_dates_at_risk == (MON,)
    assert kln.min_slack == -1 * H
    hki = plan.office("ROP-HKI")
    assert hki.at_risk == () and hki.min_slack == 14.5 * H
    assert [row.office for row in plan.offices] == ["ROP-HKI", "ROP-KLN"]
    with pytest.raises(KeyError):
        plan.office("ROP-YL")


def test_delivery_days_move_the_deadline_back() -> None:
    plan = capacity_plan([B1, B4], LINE, start=at(MON, 8), calendar=HK, delivery_days=1)
    b1, b4 = plan.schedule
    # b1 due Monday must leave on Friday 27 Feb: ready Monday noon is 4 h of line time late.
    assert b1.deadline == at(date(2026, 2, 27), 16)
    assert b1.slack == -4 * H and b1.at_risk
    # b4 due Wednesday must be ready by Tuesday's shift end; ready Monday 12:30.
    assert b4.deadline == at(MON + timedelta(days=1), 16)
    assert b4.slack == (3.5 + 8) * H


def test_start_before_easter_waits_for_the_holidays() -> None:
    # Thu 2 Apr 2026 15:00: one hour of work, then Good Friday, the weekend, Mon 6 and Tue 7
    # Apr (holidays); work resumes Wed 8 Apr 08:00.
    thu = date(2026, 4, 2)
    plan = capacity_plan([tray("e", "ROP-KT", date(2026, 4, 8), 20)], LINE,
                         start=at(thu, 15), calendar=HK)  # fmt: skip
    (entry,) = plan.schedule
    assert (entry.start, entry.ready) == (at(thu, 15), at(date(2026, 4, 8), 9))
    assert entry.deadline == at(date(2026, 4, 8), 16)
    assert entry.slack == 7 * H


@pytest.mark.parametrize(
    ("start", "first_start"),
    [
        (at(date(2026, 3, 1), 10), at(MON, 8)),  # Sunday: first shift Monday
        (at(MON, 6), at(MON, 8)),  # before the shift
        (at(MON, 10, 15), at(MON, 10, 15)),  # mid-shift: from now
        (at(MON, 16), at(MON + timedelta(days=1), 8)),  # at shift end: next morning
        (at(MON, 19), at(MON + timedelta(days=1), 8)),  # after the shift
    ],
)
def test_start_outside_the_shift(start: datetime, first_start: datetime) -> None:
    plan = capacity_plan([tray("s", "ROP-KT", MON, 5)], LINE, start=start, calendar=HK)
    assert plan.schedule[0].start == first_start
    assert plan.schedule[0].ready == first_start + 0.5 * H


def test_a_due_date_on_a_non_working_day_means_the_shift_before() -> None:
    saturday = date(2026, 3, 7)
    plan = capacity_plan([tray("w", "ROP-KT", saturday, 5)], LINE, start=at(MON, 8), calendar=HK)
    assert plan.schedule[0].deadline == at(date(2026, 3, 6), 16)


def test_aware_start_gives_aware_times() -> None:
    hkt = timezone(timedelta(hours=8))
    start = datetime(2026, 3, 2, 8, tzinfo=hkt)
    plan = capacity_plan([B1], LINE, start=start, calendar=HK)
    assert plan.schedule[0].ready == datetime(2026, 3, 2, 12, tzinfo=hkt)
    assert plan.schedule[0].slack == 4 * H


def test_empty_plan() -> None:
    plan = capacity_plan([], LINE, start=at(MON, 8), calendar=HK)
    assert (plan.schedule, plan.offices, plan.finish) == ((), (), at(MON, 8))


def test_free_slots_defer_whole_trays_without_overtaking() -> None:
    small = tray("b5", "ROP-KLN", MON + timedelta(days=3), 10)
    home = tray("b6", "ROP-KLN", MON + timedelta(days=3), 10, on_site=True)
    plan = capacity_plan(
        [B1, B2, small, home, B4],
        LINE,
        start=at(MON, 8),
        calendar=HK,
        free_slots={"ROP-KLN": 50},
    )
    # b2 (40) does not fit after b1 (40) in 50 slots; b5 (10) would, but must not overtake b2.
    # b6 goes to a care home and needs no slot; HKI has no slot count at all.
    assert [s.batch_id for s in plan.schedule] == ["b1", "b6"]
    reasons = {(d.item.application_id.split("/")[0], d.reason) for d in plan.deferred}
    assert reasons == {
        ("b2", DeferReason.NO_FREE_SLOTS),
        ("b5", DeferReason.NO_FREE_SLOTS),
        ("b4", DeferReason.NO_SLOT_COUNT),
    }
    assert len(plan.deferred) == 40 + 10 + 5
    assert all("(tray b" in d.detail for d in plan.deferred)


def test_plan_backlog_end_to_end() -> None:
    items = [WorkItem(f"A{n:03d}", "ROP-TM", date(2026, 3, 2)) for n in range(100)]
    plan, capacity = plan_backlog(
        items, LINE, today=MON, start=at(date(2026, 3, 3), 8), calendar=HK
    )
    assert [b.size for b in plan.batches] == [40, 40, 20]
    # 100 cards at 10 an hour: 80 on Tuesday, 20 by Wednesday 10:00; due Wed 11 Mar.
    assert capacity.finish == at(date(2026, 3, 4), 10)
    assert capacity.at_risk == ()
    assert capacity.office("ROP-TM").cards == 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cards_per_hour": 0},
        {"cards_per_hour": float("nan")},
        {"cards_per_hour": float("inf")},
        {"hours_per_day": 0},
        {"hours_per_day": 25},
        {"tray_size": 0},
        {"shift_start": time(20, 0)},  # 20:00 + 8 h runs past midnight
        {"shift_start": time(8, 0, tzinfo=UTC)},
    ],
)
def test_bad_line_config(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"cards_per_hour": 10, "hours_per_day": 8, "tray_size": 40}
    with pytest.raises(ValueError):
        LineConfig(**(fields | kwargs))  # type: ignore[arg-type]


def test_capacity_misuse() -> None:
    with pytest.raises(ValueError, match="twice"):
        capacity_plan([B1, B1], LINE, start=at(MON, 8), calendar=HK)
    with pytest.raises(ValueError, match="delivery_days"):
        capacity_plan([B1], LINE, start=at(MON, 8), calendar=HK, delivery_days=-1)
    with pytest.raises(ValueError, match="non-negative"):
        capacity_plan([B1], LINE, start=at(MON, 8), calendar=HK, free_slots={"ROP-KLN": -3})


# -- properties ----------------------------------------------------------------------------------

STARTS = st.datetimes(datetime(2026, 1, 1), datetime(2027, 6, 30))
SHIFTS = st.sampled_from([(time(8), 8.0), (time(7, 30), 7.5), (time(6), 16.0), (time(0), 24.0)])


@given(
    # Deadlines roll back from due dates, up to two working days: keep them inside 2026-2027.
    backlogs(max_size=30, since=date(2026, 1, 12)),
    st.floats(1, 500),
    st.floats(1, 500),
    SHIFTS,
    STARTS,
    st.integers(1, 8),
    st.integers(0, 2),
)
def test_a_faster_line_is_never_later(
    backlog: tuple[list[WorkItem], date],
    rate_a: float,
    rate_b: float,
    shift: tuple[time, float],
    start: datetime,
    tray_size: int,
    delivery_days: int,
) -> None:
    items, today = backlog
    slow_rate, fast_rate = sorted((rate_a, rate_b))
    batches = plan_batches(items, today=today, calendar=HK, tray_size=tray_size).batches
    plans = [
        capacity_plan(
            batches,
            LineConfig(rate, shift[1], tray_size, shift[0]),
            start=start,
            calendar=HK,
            delivery_days=delivery_days,
        )
        for rate in (slow_rate, fast_rate)
    ]
    slow, fast = plans
    for s, f in zip(slow.schedule, fast.schedule, strict=True):
        assert f.ready <= s.ready
        assert f.slack >= s.slack
    assert {s.batch_id for s in fast.at_risk} <= {s.batch_id for s in slow.at_risk}
    assert fast.finish <= slow.finish

    for plan in plans:
        previous = start
        for entry in plan.schedule:
            # Work happens only inside a shift of a working day, in plan order.
            assert previous <= entry.start < entry.ready
            previous = entry.ready
            day_start = datetime.combine(entry.ready.date(), shift[0])
            if entry.ready.time() == time(0) and shift[1] == 24.0:
                day_start -= timedelta(days=1)  # a 24-hour shift ends at the next midnight
            assert HK.is_working_day(day_start.date())
            assert day_start < entry.ready <= day_start + timedelta(hours=shift[1])
            # At risk exactly when ready after the deadline (both lie on shift time).
            assert entry.at_risk == (entry.ready > entry.deadline)
