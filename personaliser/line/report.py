"""What a line run reports: live progress while it runs, and :class:`LineReport` at the end.

Everything here is ids, counts, codes and times: a report can be written to disk, shown on a
screen or scraped without carrying personal data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from personaliser.line.recovery import RecoveryReport
from personaliser.store.base import StockCounts

__all__ = ["BatchReport", "LineProgress", "LineReport", "StationReport", "stock_dict"]


def stock_dict(s: StockCounts) -> dict[str, Any]:
    return {
        "issued": s.issued,
        "good": s.good,
        "spoiled": s.spoiled,
        "samples": s.samples,
        "returned": s.returned,
        "on_line": s.on_line,
        "balanced": s.balanced,
    }


@dataclass(frozen=True, slots=True)
class LineProgress:
    """A snapshot for a progress bar: cards done, rate, ETA, rejects."""

    requested: int
    passed: int
    spoiled: int
    held: int
    in_stations: int
    waiting: int
    elapsed_s: float
    state: str

    @property
    def cards_per_hour(self) -> float:
        return 3600.0 * self.passed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.passed / self.elapsed_s if self.elapsed_s > 0 else 0.0
        left = self.waiting + self.in_stations
        return left / rate if rate > 0 else None


@dataclass(slots=True)
class StationReport:
    name: str
    kind: str  # encoder | printer | qa
    cards: int = 0
    busy_s: float = 0.0
    faults: int = 0
    in_service: bool = True
    out_of_service_reason: str | None = None

    def as_dict(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cards": self.cards,
            "busy_s": round(self.busy_s, 6),
            "utilisation": round(min(self.busy_s / elapsed_s, 1.0), 4) if elapsed_s > 0 else 0.0,
            "faults": self.faults,
            "in_service": self.in_service,
            **({"out_of_service": self.out_of_service_reason} if not self.in_service else {}),
        }


@dataclass(slots=True)
class BatchReport:
    """One batch (delivery tray) as this run saw it, with its stock from the store."""

    batch_id: str
    office: str
    due_date: str
    requested: int = 0
    passed: int = 0
    spoiled: int = 0
    held: int = 0
    complete: bool = False
    tray: list[str] = field(default_factory=list)  # card ids in delivery order
    stock: StockCounts | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "office": self.office,
            "due_date": self.due_date,
            "cards_requested": self.requested,
            "cards_passed": self.passed,
            "cards_spoiled": self.spoiled,
            "cards_held": self.held,
            "complete": self.complete,
            "stock": stock_dict(self.stock) if self.stock is not None else None,
            "tray": self.tray,
        }


@dataclass(slots=True)
class LineReport:
    """The end of a run.  ``as_dict()`` is what ``report.json`` holds."""

    cards_requested: int = 0
    cards_passed: int = 0
    cards_spoiled: int = 0  # blanks spoiled in this run (restart spoils included)
    cards_held: list[str] = field(default_factory=list)  # attempts used up: an operator's turn
    cards_left: int = 0  # still QUEUED (the line was stopped first)
    cards_not_started: list[str] = field(default_factory=list)  # data could not be loaded/encoded
    ended: str = "done"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    stations: dict[str, StationReport] = field(default_factory=dict)
    batches: dict[str, BatchReport] = field(default_factory=dict)
    stage_seconds: dict[str, list[float]] = field(default_factory=dict)  # stage → [sum, count]
    queues: dict[str, dict[str, int]] = field(default_factory=dict)  # name → bound, max_depth
    rejects: Counter[str] = field(default_factory=Counter)
    recovery: RecoveryReport = field(default_factory=RecoveryReport)
    bottleneck: tuple[str, float] | None = None
    errors: list[str] = field(default_factory=list)
    first_out_s: float | None = None  # when the first and the last card passed, from the start
    last_out_s: float | None = None

    @property
    def throughput_cards_per_hour(self) -> float:
        """Cards passed over the whole run, filling and emptying the line included."""
        return 3600.0 * self.cards_passed / self.seconds if self.seconds > 0 else 0.0

    @property
    def line_rate_cards_per_hour(self) -> float | None:
        """The output rate once the line is full: cards after the first over the time they took."""
        if self.first_out_s is None or self.last_out_s is None or self.cards_passed < 2:
            return None
        span = self.last_out_s - self.first_out_s
        return 3600.0 * (self.cards_passed - 1) / span if span > 0 else None

    def stock_total(self) -> StockCounts:
        rows = [b.stock for b in self.batches.values() if b.stock is not None]
        return StockCounts(
            "total",
            issued=sum(s.issued for s in rows),
            good=sum(s.good for s in rows),
            spoiled=sum(s.spoiled for s in rows),
            samples=sum(s.samples for s in rows),
            returned=sum(s.returned for s in rows),
        )

    def as_dict(self) -> dict[str, Any]:
        passed = self.cards_passed
        means = {
            stage: round(total / n, 6) for stage, (total, n) in self.stage_seconds.items() if n
        }
        data: dict[str, Any] = {
            "cards_requested": self.cards_requested,
            "cards_passed": passed,
            "cards_spoiled": self.cards_spoiled,
            "cards_held": sorted(self.cards_held),
            "cards_left": self.cards_left,
            "cards_not_started": sorted(self.cards_not_started),
            "ended": self.ended,
            "stock": stock_dict(self.stock_total()),
            "stock_by_batch": {
                b.batch_id: stock_dict(b.stock) for b in self.batches.values() if b.stock
            },
            "throughput_cards_per_hour": round(self.throughput_cards_per_hour, 1),
            "line_rate_cards_per_hour": (
                None if (rate := self.line_rate_cards_per_hour) is None else round(rate, 1)
            ),
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_ms_per_card": round(1000 * self.cpu_seconds / passed, 3) if passed else None,
            "stations": {n: s.as_dict(self.seconds) for n, s in self.stations.items()},
            "stage_mean_seconds": means,
            "queues": self.queues,
            "rejects": dict(sorted(self.rejects.items())),
            "batches": [b.as_dict() for b in self.batches.values()],
            "recovery": self.recovery.as_dict(),
            "errors": self.errors,
        }
        if self.bottleneck is not None:
            stage, rate = self.bottleneck
            data["bottleneck"] = {
                "stage": stage,
                "cards_per_hour": None if rate == float("inf") else round(rate, 1),
            }
        return data
