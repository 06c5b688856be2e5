"""The e-cabinets: dispatch and deposit trays, find, hand over and retrieve a card, return
uncollected cards, status, discrepancies, and the audit log's verification.

The flows are :class:`~ecabinet.service.CollectionService`'s (as the CLI's): they check the role,
the office and the receipt, and audit look-ups, refusals and every door movement themselves, so
the handlers here do not write those entries again.

Personal data (issue 7): ``find`` shows ids, state and place only.  The applicant's name and
portrait come from ``handover``: the officer's receipt scan finds the card at their own office
(audited as a find), then the line's store gives the sealed personal data it keeps until the
card is ISSUED (:meth:`Store.load_application`).  After the retrieval the data is purged, and the
page keeps nothing.
"""

from __future__ import annotations

import asyncio
import base64
import pathlib
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from ecabinet.audit import verify
from ecabinet.errors import AuditError
from ecabinet.officers import Officer
from ecabinet.service import CardView
from ecabinet.slots import slot_code
from ecabinet.store import CardState, CommandStatus, DiscrepancyRecord
from personaliser.collection import hand_over
from personaliser.web.auth import Permission
from personaliser.web.errors import ERROR_RESPONSES, ApiError
from personaliser.web.models import (
    ID_PATTERN,
    AuditVerification,
    CabinetOut,
    CabinetStatusOut,
    CardOut,
    DepositRequest,
    DepositResult,
    DiscrepancyOut,
    DispatchResult,
    ErrorBody,
    FindRequest,
    HandoverCard,
    HandoverRequest,
    ResolveRequest,
    RetrievalOut,
    RetrievalProgress,
    RetrieveRequest,
    ReturnRequest,
    ReturnResult,
)
from personaliser.web.state import officer_with, web_state

__all__ = ["router"]

router = APIRouter(tags=["cabinet"])

_CARD_ERRORS = {
    **ERROR_RESPONSES,
    404: {"model": ErrorBody, "description": "no such card at this office"},
    409: {"model": ErrorBody, "description": "the card is not in a state that allows this"},
    503: {"model": ErrorBody, "description": "the cabinet is offline"},
    504: {"model": ErrorBody, "description": "the cabinet did not answer"},
}


def _discrepancy_out(d: DiscrepancyRecord) -> DiscrepancyOut:
    return DiscrepancyOut(
        id=d.id,
        cabinet=d.cabinet,
        slot=None if d.drawer is None or d.index is None else slot_code(d.drawer, d.index),
        kind=d.kind.value,
        application_id=d.application_id,
        raised_at=d.raised_at,
        resolved_at=d.resolved_at,
        resolved_by=d.resolved_by,
    )


def _card_out(view: CardView) -> CardOut:
    return CardOut(
        application_id=view.application_id,
        state=view.state.value,
        office=view.office,
        collection_date=view.collection_date,
        cabinet=view.cabinet,
        slot=view.slot,
    )


@router.post("/api/cabinet/dispatch", response_model=DispatchResult, responses=ERROR_RESPONSES)
async def dispatch(
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_DISPATCH))],
) -> DispatchResult:
    """Hand the line's PASSED cards over to the cabinet side (DISPATCHED, awaiting deposit)."""
    state = web_state(request)
    done = hand_over(state.store, state.site.cabinets, state.keystore.lookup_key(), tray="web")
    state.audit(
        officer.officer_id,
        "cards.dispatched",
        {"registered": done.registered, "dispatched": done.dispatched},
    )
    return DispatchResult(
        registered=done.registered, dispatched=done.dispatched, offices=done.offices
    )


@router.post(
    "/api/cabinet/deposit",
    response_model=DepositResult,
    responses={**_CARD_ERRORS, 409: {"model": ErrorBody, "description": "not enough free slots"}},
)
async def deposit(
    body: DepositRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_DEPOSIT))],
) -> DepositResult:
    """Deposit every dispatched card (of one office): slots allocated, opened, the right card
    sensed in the right slot (STOCKED)."""
    state = web_state(request)
    cards = state.site.cabinets.cards(state=CardState.AWAITING_DEPOSIT, office=body.office)
    report = await state.site.service.deposit(officer.officer_id, [c.application_id for c in cards])
    return DepositResult(results=report.results, counts=report.counts())


@router.post("/api/cabinet/return", response_model=ReturnResult, responses=_CARD_ERRORS)
async def return_uncollected(
    body: ReturnRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_RETURN))],
) -> ReturnResult:
    """Open the slot of every card uncollected past the retention period, to take it back."""
    service = web_state(request).site.service
    report = await service.return_uncollected(
        officer.officer_id, datetime.now(UTC), body.retention_days
    )
    return ReturnResult(results=report.results, returned=report.returned)


@router.post("/api/cabinet/find", response_model=list[CardOut], responses=_CARD_ERRORS)
async def find(
    body: FindRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_FIND))],
) -> list[CardOut]:
    """Cards at the officer's own office matching one key (ids, state, place; no personal
    data).  A card of another office: 403 other_office."""
    views = web_state(request).site.service.find(
        officer, application_id=body.application_id, hkid=body.hkid, receipt=body.receipt
    )
    return [_card_out(v) for v in views]


@router.post("/api/cabinet/handover", response_model=HandoverCard, responses=_CARD_ERRORS)
async def handover(
    body: HandoverRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_RETRIEVE))],
) -> HandoverCard:
    """The card a receipt is for, at the officer's office, with the applicant's name and
    portrait to compare with the person at the counter.  Nothing opens."""
    state = web_state(request)
    views = state.site.service.find(officer, receipt=body.receipt)
    stocked = [v for v in views if v.state is CardState.STOCKED]
    if not stocked:
        if views:
            raise ApiError(409, f"card_{views[0].state.value.lower()}")
        raise ApiError(404, "not_found")
    if len(stocked) > 1:
        raise ApiError(409, "ambiguous_receipt")
    view = stocked[0]
    assert view.cabinet is not None and view.slot is not None
    app = state.store.load_application(view.application_id)
    state.audit(officer.officer_id, "handover.shown", {"application_id": view.application_id})
    portrait = base64.b64encode(app.portrait_jpeg).decode("ascii")
    return HandoverCard(
        application_id=view.application_id,
        cabinet=view.cabinet,
        slot=view.slot,
        collection_date=view.collection_date,
        surname=app.surname,
        given_names=app.given_names,
        chinese_name=app.chinese_name,
        portrait=f"data:image/jpeg;base64,{portrait}",
    )


@router.post("/api/cabinet/retrieve", response_model=RetrievalOut, responses=_CARD_ERRORS)
async def retrieve(
    body: RetrieveRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_RETRIEVE))],
) -> RetrievalOut:
    """Check office and receipt, open the card's slot and wait until the card is taken (or the
    door closed with it in).  Any refusal happens before anything is sent to a cabinet."""
    result = await web_state(request).site.service.retrieve(
        officer, body.application_id, body.receipt
    )
    return RetrievalOut(
        application_id=result.application_id,
        outcome=result.outcome,
        cabinet=result.cabinet,
        slot=result.slot,
        ack_latency_ms=None if result.ack_latency is None else round(result.ack_latency * 1e3, 2),
    )


@router.get(
    "/api/cabinet/retrievals/{application_id}",
    response_model=RetrievalProgress,
    responses=_CARD_ERRORS,
)
async def retrieval_progress(
    application_id: Annotated[str, Path(pattern=ID_PATTERN)],
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_RETRIEVE))],
) -> RetrievalProgress:
    """Where a retrieval this officer started stands (for the counter page's live status).  A
    card of another office, or one opened by someone else, is 404: this is no look-up."""
    cabinets = web_state(request).site.cabinets
    card = cabinets.card(application_id)
    if card is None or card.office != officer.office:
        raise ApiError(404, "not_found")
    if card.state is CardState.STOCKED:
        return RetrievalProgress(
            application_id=application_id, phase="waiting", state=card.state.value,
            cabinet=None, slot=None,
        )  # fmt: skip
    if card.officer != officer.officer_id:
        raise ApiError(404, "not_found")
    phase: str = "other"
    if card.state is CardState.ISSUED:
        phase = "taken"
    elif card.state is CardState.RETRIEVING and card.cabinet is not None:
        phase = "opening"
        if card.drawer is not None and card.index is not None:
            command = cabinets.last_commands(card.cabinet).get((card.drawer, card.index))
            if command is not None and command.status is CommandStatus.ACKED:
                phase = "opened"
    return RetrievalProgress.model_validate(
        {"application_id": application_id, "phase": phase, "state": card.state.value,
         "cabinet": card.cabinet, "slot": card.slot}
    )  # fmt: skip


@router.get("/api/cabinet/status", response_model=CabinetStatusOut, responses=ERROR_RESPONSES)
async def cabinet_status(
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.CABINET_STATUS))],
) -> CabinetStatusOut:
    """Occupancy, link state and open discrepancies per cabinet."""
    status = web_state(request).site.service.status()
    return CabinetStatusOut(
        cabinets=[
            CabinetOut(
                cabinet=c.cabinet,
                office=c.office,
                online=c.online,
                slots=c.slots,
                occupancy=c.occupancy,
                open_discrepancies=c.open_discrepancies,
            )
            for c in status.cabinets
        ],
        discrepancies=[_discrepancy_out(d) for d in status.discrepancies if d.open],
    )


@router.post(
    "/api/cabinet/discrepancies/{discrepancy_id}/resolve",
    response_model=DiscrepancyOut,
    responses=_CARD_ERRORS,
)
async def resolve(
    discrepancy_id: Annotated[int, Path(ge=1, le=2**62)],
    body: ResolveRequest,
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.DISCREPANCY_RESOLVE))],
) -> DiscrepancyOut:
    """Close a discrepancy of the supervisor's office once the slot was dealt with (the cabinet
    scans; the slot takes what its sensor reads)."""
    try:
        d = await web_state(request).site.service.resolve_discrepancy(
            officer, discrepancy_id, body.resolution
        )
    except KeyError:  # the service's "no such discrepancy"
        raise ApiError(404, "not_found") from None
    return _discrepancy_out(d)


@router.get("/api/audit/verify", response_model=AuditVerification, responses=ERROR_RESPONSES)
async def audit_verify(
    request: Request,
    officer: Annotated[Officer, Depends(officer_with(Permission.AUDIT_VERIFY))],
) -> AuditVerification:
    """Verify the audit log's hash chain, MACs and anchor (as ``perso audit verify``)."""
    state = web_state(request)
    await state.site.controller.flush_audit(timeout=30.0)
    log = state.home.path / "audit.log"
    key = state.keystore.audit_key()
    # Reading and hashing the whole file is the one slow part: in a thread, off the loop (it
    # touches no store, only the log file the audit queue has flushed).
    try:
        await asyncio.to_thread(verify, log, key=key, anchored=True)
    except AuditError as exc:
        entries = await asyncio.to_thread(_count_lines, log)
        return AuditVerification(ok=False, entries=entries, failed_at=exc.index, reason=exc.reason)
    entries = await asyncio.to_thread(_count_lines, log)
    return AuditVerification(ok=True, entries=entries, failed_at=None, reason=None)


def _count_lines(path: pathlib.Path) -> int:
    return path.read_bytes().count(b"\n")
