"""The scheduler's public surface and its purity (DESIGN §2: pure planning, no I/O, no clock)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import scheduler

PACKAGE = Path(scheduler.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))

#: Packages the scheduler must not import: its peers (DESIGN §2 dependency direction) and I/O.
FORBIDDEN_IMPORTS = {
    "chip",
    "personaliser",
    "printer",
    "ecabinet",
    "bench",
    "asyncio",
    "socket",
    "subprocess",
    "sqlite3",
    "os",
    "time",
    "random",
    "urllib",
    "http",
}
#: Clock reads: today's date and the start time are parameters.  (``time.time()`` cannot appear:
#: the ``time`` module is a forbidden import, while ``datetime.time(8, 0)`` is a value.)
CLOCK_CALLS = {"now", "today", "utcnow", "monotonic", "perf_counter", "time_ns"}
#: Only the holiday-list loaders in calendar.py may read a file.
FILE_READS = {"open", "read_text", "read_bytes"}


def test_public_api_is_pinned() -> None:
    assert sorted(scheduler.__all__) == [
        "Batch",
        "BatchSchedule",
        "CapacityPlan",
        "DUE_WORKING_DAYS",
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
    for name in scheduler.__all__:
        assert getattr(scheduler, name) is not None


def _called_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN_IMPORTS
    called = _called_names(tree)
    assert not called & CLOCK_CALLS
    if path.name != "calendar.py":
        assert not called & FILE_READS


def test_the_purity_check_can_fail() -> None:
    tree = ast.parse("import datetime\nx = datetime.datetime.now()\nopen('f')\n")
    assert _called_names(tree) & CLOCK_CALLS == {"now"}
    assert _called_names(tree) & FILE_READS == {"open"}
