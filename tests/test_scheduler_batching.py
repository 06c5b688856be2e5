"""Batch planning: a worked example, misuse, the free-slot hold-back, and properties.

The hypothesis strategies here (``backlogs``) are reused by the capacity tests.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import (
    Batch,
    DeferReason,
    Plan,
    Priority,
    WorkItem,
    hong_kong_calendar,
    plan_batches,
)

HK = hong_kong_calendar()
TODAY = date(2026, 3, 4)
R, U, OS, N = Priority.REWORK, Priority.URGENT, Priority.ON_SITE, Priority.NORMAL


def ids(batch: Batch) -> list[str]:
    return [item.application_id for item in batch.items]


# -- a worked example ----------------------------------------------------------------------------
#
# Approvals on Mon 2 Mar 2026 are due Wed 11 Mar, on Tue 3 Mar due Thu 12 Mar (no holidays).
EXAMPLE = [
    WorkItem("N3", "ROP-KLN", date(2026, 3, 3)),
    WorkItem("N1", "ROP-KLN", date(2026, 3, 2)),
    WorkItem("N2", "ROP-KLN", date(2026, 3, 2)),
    WorkItem("N0", "ROP-KLN", date(2026, 3, 2)),
    WorkItem("H1", "ROP-HKI", date(2026, 3, 2)),
    WorkItem("U1", "ROP-KLN", date(2026, 3, 3), U),
    WorkItem("O1", "ROP-KLN", date(2026, 3, 2), OS),
    # Rework re-planned on 4 Mar keeps the due date of its first run, already past.
    WorkItem("R1", "ROP-HKI", date(2026, 2, 20), R, due_date=date(2026, 3, 3)),
    WorkItem("R2", "ROP-KLN", date(2026, 2, 25), R, due_date=date(2026, 3, 6), on_site=True),
]


def test_worked_example() -> None:
    plan = plan_batches(EXAMPLE, today=TODAY, calendar=HK, tray_size=2)
    assert [(b.batch_id, ids(b)) for b in plan.batches] == [
        ("ROP-HKI-20260303-RC-001", ["R1"]),
        ("ROP-KLN-20260306-RH-001", ["R2"]),
        ("ROP-KLN-20260312-UC-001", ["U1"]),
        ("ROP-KLN-20260311-OH-001", ["O1"]),
        ("ROP-HKI-20260311-NC-001", ["H1"]),
        ("ROP-KLN-20260311-NC-001", ["N0", "N1"]),
        ("ROP-KLN-20260311-NC-002", ["N2"]),
        ("ROP-KLN-20260312-NC-001", ["N3"]),
    ]
    assert [b.batch_id for b in plan.stack("ROP-HKI")] == [
        "ROP-HKI-20260303-RC-001",
        "ROP-HKI-20260311-NC-001",
    ]
    assert list(plan.stacks()) == ["ROP-HKI", "ROP-KLN"]
    assert plan.offices() == ("ROP-HKI", "ROP-KLN")
    assert [b.batch_id for b in plan.overdue()] == ["ROP-HKI-20260303-RC-001"]
    assert plan.cards == len(EXAMPLE)
    assert plan.deferred == ()
    assert plan.batches[1].on_site and plan.batches[3].on_site and not plan.batches[0].on_site


def test_replanning_the_same_backlog_gives_the_same_plan() -> None:
    first = plan_batches(EXAMPLE, today=TODAY, calendar=HK, tray_size=2)
    again = plan_batches(list(reversed(EXAMPLE)), today=TODAY, calendar=HK, tray_size=2)
    assert again == first


def test_free_slots_hold_back_the_tail_of_each_office() -> None:
    plan = plan_batches(
        EXAMPLE, today=TODAY, calendar=HK, tray_size=2, free_slots={"ROP-KLN": 3, "ROP-XX": 9}
    )
    # KLN cabinet cards in delivery order: U1, N0, N1, N2, N3 (R2 and O1 go to care homes).
    kln = [i for b in plan.stack("ROP-KLN") for i in ids(b)]
    assert kln == ["R2", "U1", "O1", "N0", "N1"]
    reasons = {d.item.application_id: d.reason for d in plan.deferred}
    assert reasons == {
        "R1": DeferReason.NO_SLOT_COUNT,  # HKI is not in free_slots: capacity unknown
        "H1": DeferReason.NO_SLOT_COUNT,
        "N2": DeferReason.NO_FREE_SLOTS,
        "N3": DeferReason.NO_FREE_SLOTS,
    }
    assert all("ROP-" in d.detail for d in plan.deferred)


def test_zero_free_slots_defers_all_cabinet_cards() -> None:
    plan = plan_batches(
        EXAMPLE, today=TODAY, calendar=HK, tray_size=9, free_slots={"ROP-KLN": 0, "ROP-HKI": 0}
    )
    assert [i for b in plan.batches for i in ids(b)] == ["R2", "O1"]
    assert len(plan.deferred) == len(EXAMPLE) - 2


def test_empty_backlog() -> None:
    assert plan_batches([], today=TODAY, calendar=HK, tray_size=5) == Plan(TODAY, 5, ())


# -- misuse --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "kwargs", "match"),
    [
        (EXAMPLE, {"tray_size": 0}, "tray_size"),
        ([*EXAMPLE, WorkItem("N1", "ROP-KT", date(2026, 3, 2))], {}, "N1 is in the backlog twice"),
        ([WorkItem("F", "ROP-KT", date(2026, 3, 5))], {}, "after today"),
        (EXAMPLE, {"free_slots": {"ROP-KLN": -1}}, "non-negative"),
        (EXAMPLE, {"free_slots": {"ROP-KLN": True}}, "non-negative"),
        ([WorkItem("Y", "ROP-KT", date(2025, 12, 30))], {}, "no holiday list for 2025"),
    ],
)
def test_misuse_raises_value_error(
    items: list[WorkItem], kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"today": TODAY, "calendar": HK, "tray_size": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        plan_batches(items, **args)  # type: ignore[arg-type]


def test_rework_before_the_calendar_years_needs_no_calendar() -> None:
    old = WorkItem("R0", "ROP-KT", date(2025, 12, 1), R, due_date=date(2025, 12, 10))
    plan = plan_batches([old], today=TODAY, calendar=HK, tray_size=2)
    assert plan.batches[0].due_date == date(2025, 12, 10)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"priority": R}, ValueError),  # rework without its original due date
        ({"due_date": date(2026, 3, 1)}, ValueError),  # due before approval
        ({"priority": N, "on_site": True}, ValueError),  # on-site normal is class ON_SITE
        ({"application_id": ""}, ValueError),
        ({"office": ""}, ValueError),
        ({"approved_on": datetime(2026, 3, 2, 9)}, TypeError),
        ({"priority": 3}, TypeError),
    ],
)
def test_bad_work_items(kwargs: dict[str, object], error: type[Exception]) -> None:
    fields: dict[str, object] = {
        "application_id": "A",
        "office": "ROP-KT",
        "approved_on": date(2026, 3, 2),
    } | kwargs
    with pytest.raises(error):
        WorkItem(**fields)  # type: ignore[arg-type]


def test_on_site_class_implies_on_site_delivery() -> None:
    assert WorkItem("A", "ROP-KT", date(2026, 3, 2), OS).on_site
    assert Priority.from_label("on_site") is OS
    assert [p.code for p in Priority] == ["R", "U", "O", "N"]
    with pytest.raises(ValueError):
        Priority.from_label("asap")


# -- properties ----------------------------------------------------------------------------------

OFFICES = ("ROP-HKI", "ROP-KLN", "ROP-KT")
FIRST_APPROVAL, LAST_APPROVAL = date(2026, 1, 1), date(2027, 11, 30)


@st.composite
def work_items(draw: st.DrawFn, application_id: str, since: date = FIRST_APPROVAL) -> WorkItem:
    office = draw(st.sampled_from(OFFICES))
    approved = draw(st.dates(since, LAST_APPROVAL))
    priority = draw(st.sampled_from(Priority))
    on_site = priority is OS or (priority in (R, U) and draw(st.booleans()))
    due: date | None = None
    if priority is R or draw(st.integers(0, 9)) == 0:
        due = approved + timedelta(days=draw(st.integers(0, 20)))
    return WorkItem(application_id, office, approved, priority, due, on_site)


@st.composite
def backlogs(
    draw: st.DrawFn, max_size: int = 40, since: date = FIRST_APPROVAL
) -> tuple[list[WorkItem], date]:
    app_ids = draw(
        st.lists(st.text("ABC0123", min_size=1, max_size=5), unique=True, max_size=max_size)
    )
    items = [draw(work_items(app_id, since)) for app_id in app_ids]
    latest = max((i.approved_on for i in items), default=since)
    return items, latest + timedelta(days=draw(st.integers(0, 30)))


def line_key(batch: Batch) -> tuple[Priority, date, str]:
    return batch.priority, batch.due_date, batch.office


@given(backlogs(), st.integers(1, 6))
def test_plan_invariants(backlog: tuple[list[WorkItem], date], tray: int) -> None:
    # One generated backlog checks every invariant: generating it is most of the cost.
    items, today = backlog
    plan = plan_batches(items, today=today, calendar=HK, tray_size=tray)

    # Every item in exactly one tray; no tray over the tray size; ids unique.
    planned = [i for b in plan.batches for i in b.items]
    assert Counter(i.application_id for i in planned) == Counter(i.application_id for i in items)
    assert set(planned) == set(items)
    assert all(1 <= b.size <= tray for b in plan.batches)
    assert len({b.batch_id for b in plan.batches}) == len(plan.batches)

    # A tray is one office, class, destination and due date; rework keeps its date.
    for batch in plan.batches:
        for item in batch.items:
            assert (item.office, item.priority, item.on_site) == (
                batch.office,
                batch.priority,
                batch.on_site,
            )
            assert batch.due_date >= item.approved_on
            assert batch.due_date == (item.due_date or HK.due_date(item.approved_on))
        assert re.fullmatch(
            rf"{batch.office}-{batch.due_date:%Y%m%d}-{batch.priority.code}[CH]-\d{{3}}",
            batch.batch_id,
        )

    # Line order: class, then earliest due date, then office.  Each office's stack: rework,
    # urgent, on-site, normal, with EDD inside each class.
    keys = [line_key(b) for b in plan.batches]
    assert keys == sorted(keys)
    for office, stack in plan.stacks().items():
        classes = [(b.priority, b.due_date) for b in stack]
        assert classes == sorted(classes), office


@given(backlogs(), st.integers(1, 6), st.randoms(use_true_random=False))
def test_planning_ignores_input_order(
    backlog: tuple[list[WorkItem], date], tray: int, rng: random.Random
) -> None:
    items, today = backlog
    shuffled = list(items)
    rng.shuffle(shuffled)
    first = plan_batches(items, today=today, calendar=HK, tray_size=tray)
    assert plan_batches(shuffled, today=today, calendar=HK, tray_size=tray) == first


@given(backlogs(), st.integers(1, 6), st.dictionaries(st.sampled_from(OFFICES), st.integers(0, 15)))
def test_free_slots_are_never_exceeded(
    backlog: tuple[list[WorkItem], date], tray: int, free: dict[str, int]
) -> None:
    items, today = backlog
    full = plan_batches(items, today=today, calendar=HK, tray_size=tray)
    held = plan_batches(items, today=today, calendar=HK, tray_size=tray, free_slots=free)
    planned = {i for b in held.batches for i in b.items}
    deferred = [d.item for d in held.deferred]
    assert planned.isdisjoint(deferred)
    assert planned | set(deferred) == set(items)
    assert not any(i.on_site for i in deferred)
    for office in OFFICES:
        wanted = [i for b in full.stack(office) for i in b.items if not i.on_site]
        got = [i for b in held.stack(office) for i in b.items if not i.on_site]
        # Exactly the first `free` cabinet cards of the office's delivery order are planned.
        assert got == wanted[: free.get(office, 0)]
        expected = DeferReason.NO_FREE_SLOTS if office in free else DeferReason.NO_SLOT_COUNT
        assert all(d.reason is expected for d in held.deferred if d.item.office == office)
