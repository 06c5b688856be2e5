"""The store's repository interface and the records it returns.

SQLite (``personaliser.store.sqlite``) is the embedded default; a PostgreSQL store for several line
hosts implements the same :class:`Store` protocol later (DESIGN §7).  What an implementation owes:

- every write is one transaction; a transition, its side effects on blanks, attempts, stock
  counters and the personal-data purge, and its audit event commit together or not at all;
- several transitions may share one commit (:meth:`Store.transitions`, group commit): each is still
  all-or-nothing on its own (a savepoint), and none is reported done before the shared commit;
- every write carries an idempotency key: replaying a key with the same operation is a no-op that
  returns the recorded result, reusing it for a different operation raises DuplicateError;
- personal data is stored sealed (``personaliser.store.crypto``) and purged when the card leaves the
  engine; records, events and errors carry ids, states and codes only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from types import TracebackType
from typing import Protocol

from personaliser.applications import Application, Rejection
from personaliser.lifecycle import BlankState, State

__all__ = [
    "ApplicationRecord",
    "Attempt",
    "Batch",
    "BlankRecord",
    "Event",
    "IntakeCounts",
    "SpoilEntry",
    "StockCounts",
    "Store",
    "TransitionRequest",
    "TransitionResult",
]


@dataclass(frozen=True, slots=True)
class IntakeCounts:
    """What one import did.  ``rejected`` counts bad records (lines), not their reasons."""

    new: int = 0
    duplicate: int = 0
    conflicting: int = 0  # id already stored with other content: the stored record is kept
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class ApplicationRecord:
    """An application as the line sees it: no personal data (that is ``Store.load_application``).

    ``office`` … ``priority`` are None for a record rejected at intake.
    """

    application_id: str
    state: State
    office: str | None
    collection_date: date | None
    approved_at: datetime | None
    priority: str | None
    batch_id: str | None
    attempts: int
    cabinet: str | None
    slot: str | None
    purged: bool
    created_at: datetime
    updated_at: datetime

    @property
    def queue_priority(self) -> str | None:
        """Rework jumps the queue (DESIGN §3); its due date is still ``collection_date``."""
        return "rework" if self.attempts > 0 else self.priority


@dataclass(frozen=True, slots=True)
class TransitionResult:
    seq: int
    application_id: str
    from_state: State
    to_state: State
    idempotency_key: str
    at: datetime
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class TransitionRequest:
    """One transition of a group (:meth:`Store.transitions`); the arguments of ``transition``."""

    application_id: str
    to: State
    idempotency_key: str
    actor: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    office: str
    due_date: date
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BlankRecord:
    """A physical blank, known from the moment the line identifies it (or accounts for it)."""

    blank_id: int
    serial: str | None  # None: spoiled before its chip ever answered
    batch_id: str
    state: BlankState
    application_id: str | None  # bound only when GOOD (late binding, DESIGN §3)
    reason: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at making an application's card on one blank."""

    application_id: str
    attempt: int
    batch_id: str
    blank_serial: str | None
    started_at: datetime
    ended_at: datetime | None
    outcome: State | None  # PASSED or SPOILED once ended


@dataclass(frozen=True, slots=True)
class SpoilEntry:
    seq: int
    blank_serial: str | None
    batch_id: str
    application_id: str | None  # the attempt's application; None when spoiled at the feeder
    attempt: int | None
    station: str | None
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class StockCounts:
    """Blank stock of one batch.  Reconciled when nothing is left on the line (DESIGN §3)."""

    batch_id: str
    issued: int
    good: int
    spoiled: int
    samples: int
    returned: int

    @property
    def accounted(self) -> int:
        return self.good + self.spoiled + self.samples + self.returned

    @property
    def on_line(self) -> int:
        return self.issued - self.accounted

    @property
    def balanced(self) -> bool:
        """issued = good + spoiled + samples + returned."""
        return self.issued == self.accounted


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the append-only audit trail: who did what, when, under which key."""

    seq: int
    kind: str  # intake, transition, purge, batch, issue, blank
    idempotency_key: str
    application_id: str | None
    batch_id: str | None
    blank_serial: str | None
    from_state: str | None
    to_state: str | None
    fields: Mapping[str, str]
    actor: str
    at: datetime


class Store(Protocol):
    """The durable store of applications, batches, blanks and the audit trail."""

    # -- intake
    def add_applications(
        self, items: Iterable[Application | Rejection], *, source: str
    ) -> IntakeCounts:
        """Store new applications (APPROVED) and rejections (REJECTED, with reasons).

        Idempotent on application id: importing the same file again changes nothing.  ``source``
        names the file (rejections without an application id are keyed by source and line).
        """
        ...

    def rejections(
        self, *, application_id: str | None = None, source: str | None = None
    ) -> list[Rejection]: ...

    # -- applications
    def get(self, application_id: str) -> ApplicationRecord: ...

    def list_applications(
        self,
        *,
        state: State | None = None,
        office: str | None = None,
        batch_id: str | None = None,
        limit: int | None = None,
    ) -> list[ApplicationRecord]: ...

    def count_by_state(self, *, batch_id: str | None = None) -> dict[State, int]: ...

    def load_application(self, application_id: str) -> Application:
        """The full application with its personal data; PersonalDataError once purged."""
        ...

    def transition(
        self,
        application_id: str,
        to: State,
        *,
        idempotency_key: str,
        actor: str | None = None,
        **fields: str,
    ) -> TransitionResult:
        """Move one application, with the side effects of the move, in one transaction."""
        ...

    def transitions(
        self, requests: Sequence[TransitionRequest]
    ) -> list[TransitionResult | Exception]:
        """Several independent transitions behind one commit (group commit), in order.

        Each one is applied or not on its own: a refused transition (its exception is returned in
        its place) leaves no trace and does not stop the others.  A failure of the store itself
        (StoreError) raises and commits none of them.  The commit is synced unless every one may
        be relaxed, as ``transition`` would do for each."""
        ...

    def attempts(self, application_id: str) -> list[Attempt]: ...

    def purge_personal_data(self, application_id: str, *, actor: str | None = None) -> bool:
        """Drop the sealed personal data; True if there was any."""
        ...

    # -- batches and stock
    def add_batch(self, batch_id: str, *, office: str, due_date: date) -> Batch: ...

    def get_batch(self, batch_id: str) -> Batch: ...

    def list_batches(self) -> list[Batch]: ...

    def issue_blanks(
        self, batch_id: str, count: int, *, idempotency_key: str, actor: str | None = None
    ) -> StockCounts: ...

    def record_blank(
        self,
        batch_id: str,
        to: BlankState,
        *,
        reason: str,
        idempotency_key: str,
        serial: str | None = None,
        actor: str | None = None,
    ) -> BlankRecord:
        """Account for a blank outside an attempt: a sample, a return to the vault, a misfeed."""
        ...

    def get_blank(self, serial: str) -> BlankRecord: ...

    def blanks(self, batch_id: str) -> list[BlankRecord]: ...

    def spoil_log(self, batch_id: str | None = None) -> list[SpoilEntry]: ...

    def stock(self, batch_id: str) -> StockCounts: ...

    # -- audit
    def events(
        self,
        *,
        application_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[Event]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
