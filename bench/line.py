"""Line efficiency: realistic service times on a virtual clock, throughput over the bottleneck's.

DESIGN §5: the slowest station sets the line rate, so a line that keeps it busy delivers its
capacity (``LineSettings.bottleneck``).  The run uses :func:`~personaliser.line.run_virtual`, so a
12-second chip costs no real time while every station sees a real line's order of events.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.engine import prepare_home
from personaliser.lifecycle import State
from personaliser.line import LineSettings, NullObserver, run_line, run_virtual

__all__ = ["LineResult", "StationTimeline", "measure_line", "reference_settings"]


def reference_settings() -> LineSettings:
    """Issue 5's reference line: 16 heads x 12 s per chip, 2 print stations x 3.6 s, QA 1 s."""
    return LineSettings.model_validate(
        {
            "heads": {"count": 16, "encode_s": 12.0},
            "printers": {"count": 2, "service_s": 3.6, "render": "never"},
            "qa": {"service_s": 1.0},
            "output": {"chip_files": False, "chip_image": False},
        }
    )


@dataclass(slots=True)
class StationTimeline(NullObserver):
    """Records, on the loop's (virtual) clock, when each station finished a card."""

    done: dict[str, list[float]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def station_busy(self, station: str, kind: str, busy: bool) -> None:
        if not busy:
            self.kinds[station] = kind
            self.done.setdefault(station, []).append(asyncio.get_running_loop().time())

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        if to_state is State.PASSED:
            self.done.setdefault("passed", []).append(asyncio.get_running_loop().time())


@dataclass(frozen=True, slots=True)
class LineResult:
    cards: int
    cards_passed: int
    virtual_s: float
    wall_s: float
    bottleneck: str
    capacity_per_hour: float
    throughput_per_hour: float
    line_rate_per_hour: float | None
    stages: dict[str, float]
    timeline: dict[str, list[float]]
    kinds: dict[str, str]

    @property
    def efficiency(self) -> float:
        return self.throughput_per_hour / self.capacity_per_hour

    def as_dict(self) -> dict[str, Any]:
        steady = self.line_rate_per_hour
        return {
            "cards": self.cards,
            "cards_passed": self.cards_passed,
            "virtual_s": round(self.virtual_s, 1),
            "wall_s": round(self.wall_s, 3),
            "speedup_over_real_time": round(self.virtual_s / self.wall_s, 1)
            if self.wall_s
            else None,
            "capacity_per_hour": {k: round(v, 1) for k, v in self.stages.items()},
            "bottleneck": {
                "stage": self.bottleneck,
                "cards_per_hour": round(self.capacity_per_hour, 1),
            },
            "throughput_cards_per_hour": round(self.throughput_per_hour, 1),
            "efficiency": round(self.efficiency, 4),
            "steady_rate_cards_per_hour": None if steady is None else round(steady, 1),
            "steady_efficiency": None
            if steady is None
            else round(steady / self.capacity_per_hour, 4),
            "target_efficiency": 0.97,
        }


def measure_line(cards: int, settings: LineSettings | None = None, *, seed: int = 0) -> LineResult:
    """Run ``cards`` synthetic cards through ``settings`` (default: the reference line)."""
    cfg = settings or reference_settings()
    stage, capacity = cfg.bottleneck()
    timeline = StationTimeline()
    with tempfile.TemporaryDirectory(prefix="perso-bench-line-") as tmp:
        root = Path(tmp)
        home, keystore = prepare_home(root, cards, seed=seed)
        with home.open_store(keystore) as store:
            wall0 = time.perf_counter()
            report = run_virtual(
                run_line(store, keystore, cfg, out_dir=root / "out", observer=timeline)
            )
            wall = time.perf_counter() - wall0
    return LineResult(
        cards=cards,
        cards_passed=report.cards_passed,
        virtual_s=report.seconds,
        wall_s=wall,
        bottleneck=stage,
        capacity_per_hour=capacity,
        throughput_per_hour=report.throughput_cards_per_hour,
        line_rate_per_hour=report.line_rate_cards_per_hour,
        stages=cfg.capacity_per_hour(),
        timeline=timeline.done,
        kinds=timeline.kinds,
    )
