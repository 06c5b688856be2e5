"""Production: intake, batch plan/start/status, stock, the line (start, pause, resume, drain,
stop, status) and ``/metrics``.  The operations are :mod:`personaliser.operations`, as the CLI's."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ecabinet.officers import Officer
from personaliser.operations import (
    cabinet_free_slots,
    import_applications,
    plan,
    start_batches,
    start_of,
    status,
    stock_report,
)
from personaliser.web.auth import Permission
from personaliser.web.errors import ERROR_RESPONSES, ApiError
from personaliser.web.linerun import LineBusyError
from personaliser.web.models import (
    BatchPlanned,
    BatchStatusOut,
    DeferredOut,
    ErrorBody,
    IntakeRequest,
    IntakeResult,
    LineCommandResult,
    LineStartRequest,
    LineStatusOut,
    PlanRequest,
    PlanResult,
    ProgressSample,
    RejectionOut,
    StartRequest,
    StartResult,
    StationOut,
    StockOut,
)
from personaliser.web.state import WebState, metrics_reader, officer_with, web_state
from scheduler import CapacityPlan, LineConfig, Plan

__all__ = ["router"]

router = APIRouter(tags=["production"])

CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "the line is (not) running"}
}


def _plan(state: WebState, body: PlanRequest) -> tuple[Plan, CapacityPlan]:
    today = body.today or date.today()
    line = LineConfig(
        cards_per_hour=body.cards_per_hour,
        hours_per_day=body.hours_per_day,
        tray_size=body.tray_size,
    )
    return plan(
        state.store,
        today=today,
        line=line,
        start=start_of(today) if body.today else None,
        free_slots=cabinet_free_slots(state.home, state.store),
    )


@router.post("/api/applications", response_model=IntakeResult, responses=ERROR_RESPONSES)
async def intake(
    body: IntakeRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.INTAKE))],
) -> IntakeResult:
    """Import approved applications (idempotent on application id).  A bad record is reported
    with its position, field and reason, never its value; the others are stored."""
    state = web_state(request)
    # The intake path reads JSONL files (personaliser.applications.read_applications, line
    # numbers in its rejections); the records go through a private temporary file beside the
    # store (mkstemp: 0600), removed at once.
    fd, name = tempfile.mkstemp(prefix=".intake-", suffix=".jsonl", dir=state.home.path)
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in body.applications:
                fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        counts, rejections = import_applications(state.store, path)
    finally:
        path.unlink(missing_ok=True)
    state.audit(
        officer.officer_id,
        "intake",
        {"new": counts.new, "duplicate": counts.duplicate, "conflicting": counts.conflicting,
         "rejected": counts.rejected},
    )  # fmt: skip
    return IntakeResult(
        new=counts.new,
        duplicate=counts.duplicate,
        conflicting=counts.conflicting,
        rejected=counts.rejected,
        rejections=[
            RejectionOut(
                line=r.line, field=r.field, reason=r.reason, application_id=r.application_id
            )
            for r in rejections[:500]
        ],
    )


@router.post("/api/batches/plan", response_model=PlanResult, responses=ERROR_RESPONSES)
async def plan_batches(
    body: PlanRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.BATCH_PLAN))],
) -> PlanResult:
    """Plan every approved application into trays (recorded as batches); capacity-checked
    against the offices' free cabinet slots."""
    state = web_state(request)
    the_plan, capacity = _plan(state, body)
    ready = {s.batch_id: s for s in capacity.schedule}
    state.audit(
        officer.officer_id,
        "batch.planned",
        {"batches": len(the_plan.batches), "cards": the_plan.cards, "deferred": len(the_plan.deferred)},
    )  # fmt: skip
    return PlanResult(
        cards=the_plan.cards,
        batches=[
            BatchPlanned(
                batch_id=b.batch_id,
                office=b.office,
                due_date=b.due_date,
                priority=b.priority.name.lower(),
                cards=len(b.items),
                ready=ready[b.batch_id].ready.isoformat() if b.batch_id in ready else None,
                at_risk=b.batch_id in ready and ready[b.batch_id].at_risk,
            )
            for b in the_plan.batches
        ],
        deferred=[
            DeferredOut(application_id=d.item.application_id, reason=d.reason.value)
            for d in the_plan.deferred
        ],
        at_risk=len(capacity.at_risk),
    )


@router.post(
    "/api/batches/start",
    response_model=StartResult,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorBody, "description": "unknown batch"}},
)
async def start(
    body: StartRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.BATCH_START))],
) -> StartResult:
    """Queue the cards of the chosen batches (or all) for the line."""
    state = web_state(request)
    the_plan, _ = _plan(state, body)
    try:
        queued = start_batches(state.store, the_plan, None if body.all else list(body.batch_ids))
    except ValueError:
        raise ApiError(404, "unknown_batch") from None
    state.audit(
        officer.officer_id,
        "batch.started",
        {"batches": sorted(queued)[:50], "cards": sum(queued.values())},
    )
    return StartResult(queued=queued)


@router.get("/api/batches", response_model=list[BatchStatusOut], responses=ERROR_RESPONSES)
async def batches(
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.BATCH_STATUS))],
) -> list[BatchStatusOut]:
    return [
        BatchStatusOut(
            batch_id=row.batch_id,
            office=row.office,
            due_date=row.due_date,
            total=row.total,
            counts={s.value: n for s, n in row.counts.items() if n},
        )
        for row in status(web_state(request).store)
    ]


@router.get("/api/stock", response_model=list[StockOut], responses=ERROR_RESPONSES)
async def stock(
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.STOCK))],
) -> list[StockOut]:
    return [
        StockOut(
            batch_id=batch_id,
            issued=s.issued,
            good=s.good,
            spoiled=s.spoiled,
            samples=s.samples,
            returned=s.returned,
            on_line=s.on_line,
            balanced=s.balanced,
        )
        for batch_id, s in stock_report(web_state(request).store).items()
    ]


# -- the line ---------------------------------------------------------------------------------------


@router.get("/api/line", response_model=LineStatusOut, responses=ERROR_RESPONSES)
async def line_status(
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.LINE_STATUS))],
) -> LineStatusOut:
    """The line now: state, counts, cards/h, stations, queue depths, rejects, and one sample a
    second of its output for the dashboard's chart."""
    snap = web_state(request).line.snapshot()
    p = snap.progress
    return LineStatusOut(
        state=snap.state,
        requested=p.requested if p else 0,
        passed=p.passed if p else 0,
        spoiled=p.spoiled if p else 0,
        held=p.held if p else 0,
        in_stations=p.in_stations if p else 0,
        waiting=p.waiting if p else 0,
        elapsed_s=round(p.elapsed_s, 3) if p else 0.0,
        cards_per_hour=round(p.cards_per_hour, 1) if p else 0.0,
        eta_s=None if p is None or p.eta_s is None else round(p.eta_s, 1),
        stations=[StationOut(name=s.name, kind=s.kind, busy=s.busy, cards=s.cards) for s in snap.stations],
        queues=snap.queues,
        rejects=snap.rejects,
        history=[
            ProgressSample(t=s.t, passed=s.passed, spoiled=s.spoiled, cards_per_hour=s.cards_per_hour)
            for s in snap.history
        ],
        ended=snap.ended,
        error=snap.error,
    )  # fmt: skip


@router.post(
    "/api/line/start",
    response_model=LineCommandResult,
    responses={**ERROR_RESPONSES, **CONFLICT},
)
async def line_start(
    body: LineStartRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.LINE_CONTROL))],
) -> LineCommandResult:
    """Run the line over the queued cards (recovery first); ``follow``: keep picking up newly
    queued cards until drained or stopped."""
    state = web_state(request)
    try:
        state.line.start(follow=body.follow, actor="line")
    except LineBusyError:
        raise ApiError(409, "line_running") from None
    state.audit(officer.officer_id, "line.start", {"follow": body.follow})
    return LineCommandResult(state=state.line.state)


def _line_command(name: str) -> None:
    @router.post(
        f"/api/line/{name}",
        response_model=LineCommandResult,
        responses={**ERROR_RESPONSES, **CONFLICT},
        name=f"line_{name}",
        summary=f"{name.capitalize()} the line",
    )
    async def command(
        request: Request,
        officer: Annotated[Officer, Depends(officer_with(Permission.LINE_CONTROL))],
    ) -> LineCommandResult:
        state = web_state(request)
        try:
            new_state = getattr(state.line, name)()
        except LineBusyError:
            raise ApiError(409, "line_not_running") from None
        state.audit(officer.officer_id, f"line.{name}", {"state": new_state})
        return LineCommandResult(state=new_state)


for _name in ("pause", "resume", "drain", "stop"):
    _line_command(_name)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **ERROR_RESPONSES,
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
    },
)  # fmt: skip
async def metrics(
    request: Request,
    reader: Annotated[str, Depends(metrics_reader)],
) -> Response:
    """Prometheus metrics: the line's (card transitions, stations, queues, rejects, stock) and
    the service's (requests by route and status, latency).  Labels carry no personal data.
    Readable by an engineer's session or with the scrape token (``--metrics-token-file``)."""
    return Response(generate_latest(web_state(request).registry), media_type=CONTENT_TYPE_LATEST)
