"""Request and response bodies of the HTTP API (the OpenAPI description is generated from these).

Responses carry ids, states, counts and codes.  Personal data appears in exactly one model,
:class:`HandoverCard`, returned for the one card an officer is handing over after its receipt
matched (issue 7); nothing else here has a field for it.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AuditVerification",
    "BatchPlanned",
    "BatchStatusOut",
    "CabinetOut",
    "CabinetStatusOut",
    "CardOut",
    "DeferredOut",
    "DepositRequest",
    "DepositResult",
    "DiscrepancyOut",
    "DispatchResult",
    "ErrorBody",
    "FindRequest",
    "HandoverCard",
    "HandoverRequest",
    "IntakeRequest",
    "IntakeResult",
    "LineCommandResult",
    "LineStartRequest",
    "LineStatusOut",
    "LoginRequest",
    "PlanRequest",
    "PlanResult",
    "ProgressSample",
    "RejectionOut",
    "ResolveRequest",
    "RetrievalOut",
    "RetrievalProgress",
    "RetrieveRequest",
    "ReturnRequest",
    "ReturnResult",
    "SessionOut",
    "StartRequest",
    "StartResult",
    "StationOut",
    "StockOut",
]

#: Ids as the rest of the product spells them (ecabinet.topics.check_id, Application.application_id).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(BaseModel):
    """Every refusal and error: a short code, never personal data or an input value."""

    error: str
    detail: list[str] | None = None


# -- sessions ---------------------------------------------------------------------------------------


class LoginRequest(_In):
    officer_id: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SessionOut(BaseModel):
    officer_id: str
    office: str
    role: str
    csrf_token: str
    idle_timeout_s: int
    expires_in_s: int
    #: Returned to API clients by ``POST /api/session`` only (``Authorization: Bearer``); the
    #: page's login form gets an HttpOnly cookie instead, so page scripts never see a token.
    token: str | None = None


# -- intake, batches, stock -------------------------------------------------------------------------


class IntakeRequest(_In):
    #: Approved applications as ``perso applications import`` reads them, one object each.
    applications: list[dict[str, Any]] = Field(min_length=1, max_length=2000)


class RejectionOut(BaseModel):
    line: int
    field: str
    reason: str
    application_id: str | None


class IntakeResult(BaseModel):
    new: int
    duplicate: int
    conflicting: int
    rejected: int
    rejections: list[RejectionOut]


class PlanRequest(_In):
    today: date | None = None
    tray_size: int = Field(default=50, ge=1, le=1000)
    cards_per_hour: int = Field(default=1000, ge=1, le=100_000)
    hours_per_day: int = Field(default=8, ge=1, le=16)


class BatchPlanned(BaseModel):
    batch_id: str
    office: str
    due_date: date
    priority: str
    cards: int
    ready: str | None
    at_risk: bool


class DeferredOut(BaseModel):
    application_id: str
    reason: str


class PlanResult(BaseModel):
    cards: int
    batches: list[BatchPlanned]
    deferred: list[DeferredOut]
    at_risk: int


class StartRequest(PlanRequest):
    all: bool = False
    batch_ids: list[str] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _one_choice(self) -> StartRequest:
        if self.all == bool(self.batch_ids):
            raise ValueError("give batch_ids or all=true, not both")
        return self


class StartResult(BaseModel):
    queued: dict[str, int]


class BatchStatusOut(BaseModel):
    batch_id: str
    office: str
    due_date: date
    total: int
    counts: dict[str, int]


class StockOut(BaseModel):
    batch_id: str
    issued: int
    good: int
    spoiled: int
    samples: int
    returned: int
    on_line: int
    balanced: bool


# -- the line ---------------------------------------------------------------------------------------


class LineStartRequest(_In):
    #: Keep running and pick up newly queued cards until drained or stopped.
    follow: bool = True


class StationOut(BaseModel):
    name: str
    kind: str
    busy: bool
    cards: int


class ProgressSample(BaseModel):
    t: float  # seconds since the line started
    passed: int
    spoiled: int
    cards_per_hour: float  # over the last few samples


class LineStatusOut(BaseModel):
    state: str  # idle, running, paused, draining, stopping, aborting, done, failed
    requested: int
    passed: int
    spoiled: int
    held: int
    in_stations: int
    waiting: int
    elapsed_s: float
    cards_per_hour: float
    eta_s: float | None
    stations: list[StationOut]
    queues: dict[str, int]
    rejects: dict[str, int]
    history: list[ProgressSample]
    ended: str | None
    error: str | None


class LineCommandResult(BaseModel):
    state: str


# -- the cabinets -----------------------------------------------------------------------------------


class DispatchResult(BaseModel):
    registered: int
    dispatched: int
    offices: dict[str, int]


class DepositRequest(_In):
    office: str | None = Field(default=None, pattern=ID_PATTERN)


class DepositResult(BaseModel):
    results: dict[str, str]
    counts: dict[str, int]


class ReturnRequest(_In):
    retention_days: int = Field(default=90, ge=0, le=3650)


class ReturnResult(BaseModel):
    results: dict[str, str]
    returned: list[str]


class FindRequest(_In):
    application_id: str | None = Field(default=None, pattern=ID_PATTERN)
    hkid: str | None = Field(default=None, min_length=1, max_length=20)
    receipt: str | None = Field(default=None, min_length=1, max_length=40)

    @model_validator(mode="after")
    def _exactly_one(self) -> FindRequest:
        given = [v for v in (self.application_id, self.hkid, self.receipt) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of application_id, hkid, receipt")
        return self


class CardOut(BaseModel):
    """A card as ``find`` shows it: ids, state and place; no personal data."""

    application_id: str
    state: str
    office: str
    collection_date: date
    cabinet: str | None
    slot: str | None


class HandoverRequest(_In):
    receipt: str = Field(min_length=1, max_length=40)


class HandoverCard(BaseModel):
    """The one card being handed over, with what the officer compares the applicant against."""

    application_id: str
    cabinet: str
    slot: str
    collection_date: date
    surname: str
    given_names: str
    chinese_name: str
    portrait: str  # data:image/jpeg;base64,… (served inline: never a URL that could be cached)


class RetrieveRequest(_In):
    application_id: str = Field(pattern=ID_PATTERN)
    receipt: str = Field(min_length=1, max_length=40)


class RetrievalOut(BaseModel):
    application_id: str
    outcome: str  # issued, not_taken, refused, discrepancy, pending
    cabinet: str
    slot: str
    ack_latency_ms: float | None


class RetrievalProgress(BaseModel):
    application_id: str
    #: waiting (not asked yet), opening (command sent), opened (the cabinet performed it: door
    #: open, card in reach), taken (ISSUED), not_taken (door closed with the card in), other
    phase: Literal["waiting", "opening", "opened", "taken", "not_taken", "other"]
    state: str
    cabinet: str | None
    slot: str | None


class CabinetOut(BaseModel):
    cabinet: str
    office: str
    online: bool | None
    slots: int
    occupancy: dict[str, int]
    open_discrepancies: int


class DiscrepancyOut(BaseModel):
    id: int
    cabinet: str
    slot: str | None
    kind: str
    application_id: str | None
    raised_at: str
    resolved_at: str | None
    resolved_by: str | None


class CabinetStatusOut(BaseModel):
    cabinets: list[CabinetOut]
    discrepancies: list[DiscrepancyOut]


class ResolveRequest(_In):
    resolution: str = Field(min_length=1, max_length=200)

    @field_validator("resolution")
    @classmethod
    def _printable(cls, value: str) -> str:
        # It goes into the audit log, which takes printable strings only (ecabinet/audit.py).
        if not value.isprintable():
            raise ValueError("the resolution is printable text")
        return value


class AuditVerification(BaseModel):
    ok: bool
    entries: int
    failed_at: int | None
    reason: str | None
