"""Scale: the scheduler planning a large backlog (seconds and peak memory).

Run in a child process (``python -m bench.scale N``) so that its peak resident set is its own, not
the benchmark's earlier line runs'; ``ru_maxrss`` is the kernel's high-water mark (getrusage(2):
kilobytes on Linux).  Building the WorkItems is timed apart from ``plan_batches``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from scheduler import Priority, WorkItem, hong_kong_calendar, plan_batches

__all__ = ["measure_scale", "plan_in_process", "work_items"]

ROOT = Path(__file__).resolve().parents[1]
TODAY = date(2026, 11, 2)
OFFICES = tuple(f"OFFICE-{n:02d}" for n in range(20))
# Mostly normal, some urgent and on-site, a little rework (which keeps its original due date).
MIX = (Priority.NORMAL,) * 16 + (
    Priority.URGENT,
    Priority.URGENT,
    Priority.ON_SITE,
    Priority.REWORK,
)


def work_items(count: int) -> list[WorkItem]:
    """``count`` varied items over 20 offices and 30 approval days; deterministic."""
    days = [TODAY - timedelta(days=d) for d in range(30)]
    items = []
    for n in range(count):
        priority = MIX[n % len(MIX)]
        approved = days[(n * 7) % len(days)]
        items.append(
            WorkItem(
                application_id=f"APP-{n:08d}",
                office=OFFICES[(n * 13) % len(OFFICES)],
                approved_on=approved,
                priority=priority,
                due_date=approved + timedelta(days=9) if priority is Priority.REWORK else None,
            )
        )
    return items


def _peak_rss_kb() -> int:
    # VmHWM (proc(5)) is this process image's own high-water mark; ru_maxrss survives execve(2)
    # and so can report the parent's peak instead.  ru_maxrss is the fallback off Linux.
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def plan_in_process(count: int) -> dict[str, Any]:
    calendar = hong_kong_calendar()
    t0 = time.perf_counter()
    items = work_items(count)
    t1 = time.perf_counter()
    the_plan = plan_batches(items, today=TODAY, calendar=calendar, tray_size=50)
    t2 = time.perf_counter()
    peak_kb = _peak_rss_kb()
    return {
        "applications": count,
        "build_items_s": round(t1 - t0, 3),
        "plan_s": round(t2 - t1, 3),
        "batches": len(the_plan.batches),
        "cards_planned": the_plan.cards,
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "bytes_per_application": round(peak_kb * 1024 / count) if count else None,
        "target_plan_s_per_million": 10.0,
        "plan_s_per_million": round((t2 - t1) * 1_000_000 / count, 3) if count else None,
    }


def measure_scale(count: int) -> dict[str, Any]:
    """:func:`plan_in_process` in a fresh interpreter (a clean peak-memory figure)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", str(count)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


if __name__ == "__main__":
    print(json.dumps(plan_in_process(int(sys.argv[1]))))
