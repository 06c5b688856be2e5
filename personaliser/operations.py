"""The operator's commands as functions over a store: import, plan, start, status, stock.

The CLI (``perso applications import``, ``perso batch plan|start|status``, ``perso stock report``)
and, later, the HTTP service call these; they print nothing and return values.

A *home* directory holds what one line host needs: ``keys/`` (the keystore) and ``perso.db``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

from personaliser import store as store_module
from personaliser.applications import Rejection, read_applications
from personaliser.keystore import FileKeystore
from personaliser.lifecycle import State
from personaliser.store.base import IntakeCounts, StockCounts, Store
from personaliser.store.crypto import PersonalDataCipher
from scheduler import (
    CapacityPlan,
    LineConfig,
    Plan,
    Priority,
    WorkingCalendar,
    WorkItem,
    hong_kong_calendar,
    plan_backlog,
)

__all__ = [
    "DEFAULT_HOME",
    "BatchStatus",
    "Home",
    "import_applications",
    "plan",
    "start_batches",
    "status",
    "stock_report",
]

DEFAULT_HOME = "perso-home"
HONG_KONG = ZoneInfo("Asia/Hong_Kong")


@dataclass(frozen=True, slots=True)
class Home:
    path: Path

    @classmethod
    def resolve(cls, path: str | None) -> Home:
        return cls(Path(path or os.environ.get("PERSO_HOME") or DEFAULT_HOME))

    @property
    def keys(self) -> Path:
        return self.path / "keys"

    @property
    def db(self) -> Path:
        return self.path / "perso.db"

    def keystore(self) -> FileKeystore:
        return FileKeystore(self.keys)

    def ensure(self) -> FileKeystore:
        """Create the home and its keystore on first use (embedded defaults)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.keys.exists():
            return FileKeystore.init(self.keys)
        if not (self.keys / "data.key").exists():
            FileKeystore.add_data_key(self.keys)
        if not (self.keys / "cabinet.key").exists():
            FileKeystore.add_cabinet_key(self.keys)
        return FileKeystore(self.keys)

    def open_store(self, keystore: FileKeystore | None = None) -> Store:
        ks = keystore or self.keystore()
        cipher = PersonalDataCipher(ks.data_key())
        # Personal data stays until the card is handed over: the counter officer compares the
        # portrait with the applicant at the counter (issue 6); ISSUED or RETURNED purge it.
        return store_module.open(
            f"sqlite:///{self.db.resolve()}", cipher=cipher, purge_at=State.ISSUED
        )


def start_of(day: date) -> datetime:
    """Midnight in Hong Kong: planning "as of" a day starts the simulated line at its first shift."""
    return datetime.combine(day, time(0), tzinfo=HONG_KONG)


def import_applications(store: Store, path: Path) -> tuple[IntakeCounts, list[Rejection]]:
    """Validate and store a JSONL file; idempotent on application id."""
    items = list(read_applications(path))
    counts = store.add_applications(items, source=str(path))
    return counts, [i for i in items if isinstance(i, Rejection)]


def _work_items(store: Store) -> list[WorkItem]:
    items = []
    for record in store.list_applications(state=State.APPROVED):
        if record.office is None or record.approved_at is None:
            continue
        priority = Priority.from_label(record.priority or "normal")
        items.append(
            WorkItem(
                application_id=record.application_id,
                office=record.office,
                approved_on=record.approved_at.date(),
                priority=priority,
                on_site=priority is Priority.ON_SITE,
            )
        )
    return items


def plan(
    store: Store,
    *,
    today: date,
    line: LineConfig,
    start: datetime | None = None,
    calendar: WorkingCalendar | None = None,
    free_slots: Mapping[str, int] | None = None,
) -> tuple[Plan, CapacityPlan]:
    """Plan every approved application into trays and simulate the line; record the batches.

    ``free_slots`` (office -> cabinet slots not yet promised, :func:`cabinet_free_slots`) caps
    what each office is sent; the rest is deferred with its reason (issue 6)."""
    cal = calendar or hong_kong_calendar()
    when = start or datetime.now(UTC)
    batches, capacity = plan_backlog(
        _work_items(store), line, today=today, start=when, calendar=cal, free_slots=free_slots
    )
    for batch in batches.batches:
        store.add_batch(batch.batch_id, office=batch.office, due_date=batch.due_date)
    return batches, capacity


#: Cards already on their way to an office's cabinets: each will take a slot that is free now.
_IN_PIPELINE = (State.QUEUED, State.ENCODING, State.ENCODED, State.PRINTING, State.PRINTED,
                State.VERIFYING, State.PASSED, State.SPOILED)  # fmt: skip


def cabinet_free_slots(home: Home, store: Store) -> dict[str, int] | None:
    """Free cabinet slots per office, less the cards already in the pipeline for it (and those
    dispatched but not yet deposited, which the cabinet store counts as awaiting deposit).
    None when the home has no cabinets registered: capacity is then not checked."""
    path = home.path / "cabinet.db"
    if not path.exists():
        return None
    from ecabinet.store import CabinetStore, CardState  # noqa: PLC0415 - only with cabinets

    with CabinetStore(path) as cabinets:
        offices = {c.office for c in cabinets.cabinets()}
        if not offices:
            return None
        free = {o: cabinets.free_slots(o) for o in offices}
        for card in cabinets.cards(state=CardState.AWAITING_DEPOSIT):
            free[card.office] = free.get(card.office, 0) - 1
    for state in _IN_PIPELINE:
        for record in store.list_applications(state=state):
            if record.office in free:
                free[record.office] -= 1
    return {office: max(0, n) for office, n in free.items()}


def start_batches(store: Store, the_plan: Plan, batch_ids: list[str] | None) -> dict[str, int]:
    """Queue the members of the chosen batches (all when ``batch_ids`` is None) for the line."""
    wanted = None if batch_ids is None else set(batch_ids)
    known = {b.batch_id for b in the_plan.batches}
    if wanted is not None and wanted - known:
        raise ValueError(f"unknown batch: {', '.join(sorted(wanted - known))}")
    queued: dict[str, int] = {}
    for batch in the_plan.batches:
        if wanted is not None and batch.batch_id not in wanted:
            continue
        for item in batch.items:
            store.transition(
                item.application_id,
                State.QUEUED,
                idempotency_key=f"{item.application_id}:queue:{batch.batch_id}",
                batch_id=batch.batch_id,
            )
        queued[batch.batch_id] = len(batch.items)
    return queued


@dataclass(frozen=True, slots=True)
class BatchStatus:
    batch_id: str
    office: str
    due_date: date
    counts: dict[State, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def status(store: Store) -> list[BatchStatus]:
    return [
        BatchStatus(b.batch_id, b.office, b.due_date, store.count_by_state(batch_id=b.batch_id))
        for b in store.list_batches()
    ]


def stock_report(store: Store) -> dict[str, StockCounts]:
    return {b.batch_id: store.stock(b.batch_id) for b in store.list_batches()}
