"""Collection flows: what the CLI and the HTTP API call (issue 6 *Flows*).

::

    register_cards ─► deposit ─► (STOCKED) ─► find ─► retrieve ─► (ISSUED) ─► on_issued: purge
                                      └──────── return_uncollected ─► (RETURNED) ─► on_returned

Rules:

1. Office-bound: an officer sees and opens only cards held at their own office; a card of another
   office is refused (``AuthorisationError(reason="other_office")``) exactly like a wrong receipt
   is, before anything is sent to a cabinet.
2. Every refusal is audited (actor: the officer; payload: ids and reason codes, never an HKIC or
   receipt number), and so is every look-up: who looked for a card, by what kind of key.
3. One opening per request: a second ``retrieve`` of a card whose retrieval is under way in this
   process joins the first; from elsewhere it fails in the store (the card is RETRIEVING, not
   STOCKED), so a slot never opens twice.
4. A deposit is done when the slot's sensor read the right serial in the right slot (STOCKED); a
   wrong serial is a discrepancy, never a STOCKED card.  Capacity is checked before anything is
   sent: an office without room for the whole tray gets ``CapacityError`` and nothing opens.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final, Literal

from ecabinet.allocation import CardToPlace, OfficeSlots, SlotView, allocate
from ecabinet.controller import (
    CabinetOfflineError,
    CardChange,
    CommandTimeoutError,
    Outcome,
    SiteController,
    SlotOperation,
)
from ecabinet.errors import AuthorisationError, CabinetError, CapacityError, SlotError
from ecabinet.officers import Officer, Role, require_role
from ecabinet.protocol import Rejected
from ecabinet.slots import Slot, SlotState, slot_code
from ecabinet.store import (
    CabinetStore,
    CardRecord,
    CardState,
    CardStateError,
    DiscrepancyRecord,
    NewCard,
    lookup_digest,
)
from ecabinet.topics import check_id

__all__ = [
    "COUNTER_ROLES",
    "CabinetStatus",
    "CardView",
    "CollectionService",
    "DepositReport",
    "RetrievalResult",
    "ReturnReport",
    "SiteStatus",
]

#: Who may find and retrieve cards for applicants.
COUNTER_ROLES: Final = frozenset({Role.COUNTER_OFFICER, Role.SUPERVISOR})

# The outcome callbacks return None (done when they return) or a concurrent Future (done on a
# thread of their own, e.g. personaliser.collection.FollowingBridge): the flows await it.
OnStocked = Callable[[str, str, str], "Future[None] | None"]  # application_id, cabinet, slot code
OnIssued = Callable[[str, str], "Future[None] | None"]  # application_id, officer id
OnReturned = Callable[[str, str], "Future[None] | None"]  # application_id, actor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CardView:
    """What an officer is shown: ids, state and place; no digests, no personal data."""

    application_id: str
    state: CardState
    office: str
    collection_date: date
    cabinet: str | None
    slot: str | None


def _view(card: CardRecord) -> CardView:
    return CardView(
        card.application_id,
        card.state,
        card.office,
        card.collection_date,
        card.cabinet,
        card.slot,
    )


@dataclass(frozen=True, slots=True)
class DepositReport:
    """application id -> outcome code (``stocked``, ``not_deposited``, ``discrepancy``,
    ``refused``, ``pending``, ``offline``, ``timed_out``, ``not_found``, ``card_<state>``, …)."""

    results: dict[str, str]

    @property
    def stocked(self) -> list[str]:
        return sorted(a for a, r in self.results.items() if r == Outcome.STOCKED.value)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.results.values()))


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    """``outcome``: ``issued``, ``not_taken`` (door closed with the card in), ``refused`` (the
    cabinet would not open), ``discrepancy``, or ``pending`` (still open when we stopped waiting)."""

    application_id: str
    outcome: str
    cabinet: str
    slot: str
    ack_latency: float | None
    #: When the open command's ack arrived (``time.perf_counter``), so a caller can time its own
    #: request to the ack (issue 6's latency) with the clock it started.
    acked_at: float | None = None


@dataclass(frozen=True, slots=True)
class ReturnReport:
    results: dict[str, str]

    @property
    def returned(self) -> list[str]:
        return sorted(a for a, r in self.results.items() if r == Outcome.RETURNED.value)


@dataclass(frozen=True, slots=True)
class CabinetStatus:
    cabinet: str
    office: str
    online: bool | None
    slots: int
    occupancy: dict[str, int]
    open_discrepancies: int


@dataclass(frozen=True, slots=True)
class SiteStatus:
    cabinets: tuple[CabinetStatus, ...]
    discrepancies: tuple[DiscrepancyRecord, ...]


class CollectionService:
    """The flows over one site's controller and store."""

    def __init__(
        self,
        controller: SiteController,
        store: CabinetStore,
        lookup_key: bytes,
        *,
        on_stocked: OnStocked | None = None,
        on_issued: OnIssued | None = None,
        on_returned: OnReturned | None = None,
        parallel: int = 8,
        operation_timeout: float = 120.0,
    ) -> None:
        if len(lookup_key) < 32:
            raise ValueError("a lookup key is at least 32 bytes")
        self._controller = controller
        self._store = store
        self._audit = controller  # one audit order for the controller and the flows
        self._key = bytes(lookup_key)
        self._on_stocked = on_stocked
        self._on_issued = on_issued
        self._on_returned = on_returned
        self._parallel = parallel
        self._timeout = operation_timeout
        self._planned: set[tuple[str, int, int]] = set()
        self._planning = asyncio.Lock()
        self._retrievals: dict[str, asyncio.Task[RetrievalResult]] = {}
        #: Outcome callbacks still running on their own thread, by card (the latest one).
        self._following: dict[str, asyncio.Future[None]] = {}
        controller.add_listener(self._changed)

    def __repr__(self) -> str:
        return f"CollectionService({self._controller!r})"

    def _changed(self, change: CardChange) -> None:
        moving: Future[None] | None = None
        if change.state is CardState.STOCKED and self._on_stocked is not None:
            if change.cabinet is not None and change.slot is not None:
                moving = self._on_stocked(change.application_id, change.cabinet, change.slot)
        elif change.state is CardState.ISSUED and self._on_issued is not None:
            moving = self._on_issued(change.application_id, change.actor)
        elif change.state is CardState.RETURNED and self._on_returned is not None:
            moving = self._on_returned(change.application_id, change.actor)
        if moving is not None:
            self._follow(change, moving)

    def _follow(self, change: CardChange, moving: Future[None]) -> None:
        """Keep a callback running on its own thread until it ends; record it if it fails (as the
        controller records a listener that raises: the card's state says what is still due, and
        the next start's catch-up applies it)."""
        waiter = asyncio.wrap_future(moving)
        application_id = change.application_id
        self._following[application_id] = waiter

        def ended(done: asyncio.Future[None]) -> None:
            if self._following.get(application_id) is done:
                del self._following[application_id]
            error = None if done.cancelled() else done.exception()
            if error is not None:
                log.error("card listener failed: %s", type(error).__name__)
                self._audit.audit(
                    "controller",
                    "listener.failed",
                    {
                        "application_id": application_id,
                        "card_state": change.state.value,
                        "error": type(error).__name__,
                    },
                )

        waiter.add_done_callback(ended)

    async def _followed(self, application_id: str) -> None:
        """Until the card's outcome callback has ended (its failure is recorded by ``_follow``)."""
        waiter = self._following.get(application_id)
        if waiter is not None:
            await asyncio.wait([waiter])

    def _refuse(self, actor: str, flow: str, reason: str, **payload: Any) -> None:
        self._audit.audit(actor, f"{flow}.refused", {"reason": reason, **payload})

    # -- registration and capacity --------------------------------------------------------------

    def lookup(self, kind: Literal["hkid", "receipt"], value: str) -> str:
        """The digest the store keeps for an HKIC or receipt number (for the line's hand-over)."""
        return lookup_digest(self._key, kind, value)

    def register_cards(self, cards: Iterable[NewCard], *, actor: str = "line") -> int:
        """Cards coming from the line; idempotent.  Returns how many were new."""
        batch = list(cards)
        added = self._store.register_cards(batch)
        self._audit.audit(actor, "cards.registered", {"offered": len(batch), "added": added})
        return added

    def capacity(self, office: str) -> int:
        """Free slots at ``office`` (the scheduler's ``free_slots`` for it)."""
        return self._store.free_slots(office)

    def capacity_by_office(self) -> dict[str, int]:
        offices = sorted({c.office for c in self._store.cabinets()})
        return {office: self._store.free_slots(office) for office in offices}

    # -- deposit --------------------------------------------------------------------------------

    async def deposit(self, actor: str, application_ids: Iterable[str]) -> DepositReport:
        """Deposit a tray: allocate, then for each card open its slot and wait for the sensor."""
        check_id(actor, "actor")
        ids = list(dict.fromkeys(application_ids))
        results: dict[str, str] = {}
        by_office: dict[str, list[CardRecord]] = {}
        for app in ids:
            card = self._store.card(app)
            if card is None:
                results[app] = "not_found"
            elif card.state not in (CardState.AWAITING_DEPOSIT, CardState.EXCEPTION):
                results[app] = f"card_{card.state.value.lower()}"
            else:
                by_office.setdefault(card.office, []).append(card)
        plans: list[tuple[CardRecord, Slot]] = []
        # One plan at a time, each reading and then extending the set of slots held for trays
        # being deposited.  The plan itself (10,000 slots: ~0.2 s) runs in a thread, so officers'
        # requests are not held up behind it.
        async with self._planning:
            try:
                for office, cards in sorted(by_office.items()):
                    online = frozenset(
                        c.cabinet
                        for c in self._store.cabinets(office=office)
                        if self._controller.online(c.cabinet) is True
                    )
                    try:
                        placed = await asyncio.to_thread(
                            self._plan, office, cards, online, frozenset(self._planned)
                        )
                    except CapacityError as exc:
                        self._refuse(
                            actor,
                            "deposit",
                            "capacity",
                            office=office,
                            needed=exc.needed,
                            free=exc.free,
                        )
                        raise
                    self._planned.update(slot.key for _, slot in placed)
                    plans.extend(placed)
            except BaseException:
                self._planned.difference_update(slot.key for _, slot in plans)
                raise
        self._audit.audit(
            actor, "deposit.started", {"cards": len(plans), "offices": sorted(by_office)}
        )
        limit = asyncio.Semaphore(self._parallel)

        async def one(card: CardRecord, slot: Slot) -> None:
            async with limit:
                try:
                    results[card.application_id] = await self._deposit_one(actor, card, slot)
                finally:
                    self._planned.discard(slot.key)

        await asyncio.gather(*(one(card, slot) for card, slot in plans))
        # What the operator is told survives an OS crash, in both stores.
        await asyncio.gather(self._controller.durable(), *map(self._followed, results))
        return DepositReport(results)

    def _plan(
        self,
        office: str,
        cards: list[CardRecord],
        online: frozenset[str],
        planned: frozenset[tuple[str, int, int]],
    ) -> list[tuple[CardRecord, Slot]]:
        """Allocate a tray (in a worker thread: store reads and pure allocation only).  Slots
        held for trays still being deposited count as taken."""
        views = []
        for stored, collected in self._store.office_slots(office):
            if stored.cabinet not in online:
                continue  # nothing can be put into an offline cabinet
            state = stored.state
            if (stored.cabinet, stored.drawer, stored.index) in planned:
                state = SlotState.RESERVED
            slot = Slot(stored.cabinet, stored.drawer, stored.index, stored.reachability)
            views.append(SlotView(slot, state, collected))
        allocation = allocate(
            OfficeSlots(office, tuple(views)),
            [CardToPlace(c.application_id, c.collection_date) for c in cards],
        )
        by_id = {c.application_id: c for c in cards}
        return [(by_id[p.card_id], p.slot) for p in allocation.placements]

    async def _deposit_one(self, actor: str, card: CardRecord, slot: Slot) -> str:
        try:
            op = await self._controller.deposit(
                actor, card.application_id, slot.cabinet, slot.drawer, slot.index
            )
        except (SlotError, CardStateError) as exc:
            # The slot or the card changed since the plan: nothing was sent.
            return getattr(exc, "reason", None) or "slot_taken"
        return await self._settle(op)

    async def _settle(self, op: SlotOperation) -> str:
        """Wait for the ack, then for the slot operation's end; a short code for the report."""
        try:
            answer = await asyncio.shield(op.ack)
        except CabinetError as exc:
            return _error_code(exc)
        if isinstance(answer, Rejected):
            return Outcome.REFUSED.value
        try:
            async with asyncio.timeout(self._timeout):
                result = await asyncio.shield(op.done)
        except TimeoutError:
            return "pending"
        return result.outcome.value

    # -- find -----------------------------------------------------------------------------------

    def find(
        self,
        officer: Officer,
        *,
        application_id: str | None = None,
        hkid: str | None = None,
        receipt: str | None = None,
    ) -> list[CardView]:
        """Cards held at the officer's office matching exactly one key.  Cards of other offices
        are never shown: if only such cards match, ``AuthorisationError(other_office)``."""
        try:
            require_role(officer, COUNTER_ROLES)
        except AuthorisationError:
            self._refuse(officer.officer_id, "find", "role")
            raise
        given = [(k, v) for k, v in (("application_id", application_id), ("hkid", hkid), ("receipt", receipt)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise ValueError("find by exactly one of application_id, hkid, receipt")
        by, value = given[0]
        if by == "application_id":
            card = self._store.card(value)
            found = [] if card is None else [card]
        else:
            kind: Literal["hkid", "receipt"] = "hkid" if by == "hkid" else "receipt"
            found = self._store.cards_by_digest(kind, lookup_digest(self._key, kind, value))
        mine = [c for c in found if c.office == officer.office]
        if found and not mine:
            self._refuse(officer.officer_id, "find", "other_office", by=by)
            raise AuthorisationError("the card is held at another office", reason="other_office")
        self._audit.audit(
            officer.officer_id,
            "find",
            {"by": by, "application_ids": [c.application_id for c in mine][:20]},
        )
        return [_view(c) for c in mine]

    # -- retrieve -------------------------------------------------------------------------------

    async def retrieve(
        self, officer: Officer, application_id: str, receipt: str
    ) -> RetrievalResult:
        """Check the officer, office and receipt; open the card's slot; wait for the card to be
        taken.  Refusals raise (and are audited) before anything is sent."""
        actor = officer.officer_id
        try:
            require_role(officer, COUNTER_ROLES)
        except AuthorisationError:
            self._refuse(actor, "retrieve", "role", application_id=application_id)
            raise
        card = self._store.card(application_id)
        if card is None:
            self._refuse(actor, "retrieve", "not_found", application_id=application_id)
            raise CardStateError(
                "no such card", application_id=application_id, state=None, reason="not_found"
            )
        if card.office != officer.office:
            self._refuse(actor, "retrieve", "other_office", application_id=application_id)
            raise AuthorisationError("the card is held at another office", reason="other_office")
        if card.state in (CardState.ISSUED, CardState.RETURNED):
            # Gone from the cabinet, and its receipt digest with it: say so, not "wrong receipt".
            reason = f"card_{card.state.value.lower()}"
            self._refuse(actor, "retrieve", reason, application_id=application_id)
            raise CardStateError(
                f"card is {card.state.value}",
                application_id=application_id,
                state=card.state.value,
                reason=reason,
            )
        expected = card.receipt_digest or ""
        if not hmac.compare_digest(lookup_digest(self._key, "receipt", receipt), expected):
            self._refuse(actor, "retrieve", "wrong_receipt", application_id=application_id)
            raise AuthorisationError("the receipt does not match the card", reason="wrong_receipt")
        running = self._retrievals.get(application_id)
        if running is not None:
            # Rule 3: the same card asked for again while its slot is opening: one opening.
            self._audit.audit(actor, "retrieve.joined", {"application_id": application_id})
            return await asyncio.shield(running)
        if card.state is not CardState.STOCKED:
            reason = f"card_{card.state.value.lower()}"
            self._refuse(actor, "retrieve", reason, application_id=application_id)
            raise CardStateError(
                f"card is {card.state.value}",
                application_id=application_id,
                state=card.state.value,
                reason=reason,
            )
        task = asyncio.get_running_loop().create_task(self._open(actor, card, "retrieval"))
        self._retrievals[application_id] = task
        task.add_done_callback(lambda _: self._retrievals.pop(application_id, None))
        return await asyncio.shield(task)

    async def _open(
        self, actor: str, card: CardRecord, purpose: Literal["retrieval", "return"]
    ) -> RetrievalResult:
        op = await self._controller.open_slot(actor, card, purpose)
        assert op.drawer is not None and op.index is not None
        code = slot_code(op.drawer, op.index)
        answer = await asyncio.shield(op.ack)
        acked_at = None if op.ack_latency is None else op.started + op.ack_latency
        if isinstance(answer, Rejected):
            return RetrievalResult(
                card.application_id, Outcome.REFUSED.value, op.cabinet, code, op.ack_latency,
                acked_at,
            )  # fmt: skip
        try:
            async with asyncio.timeout(self._timeout):
                result = await asyncio.shield(op.done)
            outcome = result.outcome.value
        except TimeoutError:
            outcome = "pending"
        # The officer hands the card over on this answer: the cabinet store durable, and the
        # line's store moved on (ISSUED, personal data purged).
        await asyncio.gather(self._controller.durable(), self._followed(card.application_id))
        return RetrievalResult(
            card.application_id, outcome, op.cabinet, code, op.ack_latency, acked_at
        )

    # -- uncollected cards ----------------------------------------------------------------------

    async def return_uncollected(
        self, actor: str, now: datetime, retention_days: int
    ) -> ReturnReport:
        """Open the slot of every card STOCKED before ``now - retention_days`` for it to be
        taken back; RETURNED once the sensor says it is out."""
        check_id(actor, "actor")
        if retention_days < 0:
            raise ValueError("retention_days >= 0")
        due = self._store.stocked_before(now - timedelta(days=retention_days))
        self._audit.audit(
            actor, "return.started", {"cards": len(due), "retention_days": retention_days}
        )
        results: dict[str, str] = {}
        limit = asyncio.Semaphore(self._parallel)

        async def one(card: CardRecord) -> None:
            async with limit:
                try:
                    result = await self._open(actor, card, "return")
                    results[card.application_id] = result.outcome
                except (CabinetError, asyncio.CancelledError) as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    results[card.application_id] = _error_code(exc)

        await asyncio.gather(*(one(card) for card in due))
        await self._controller.durable()
        return ReturnReport(results)

    # -- status and discrepancies ---------------------------------------------------------------

    def status(self) -> SiteStatus:
        occupancy = self._store.occupancy()
        discrepancies = tuple(self._store.discrepancies())
        per_cabinet = Counter(d.cabinet for d in discrepancies)
        cabinets = tuple(
            CabinetStatus(
                record.cabinet,
                record.office,
                self._controller.online(record.cabinet),
                record.drawers * record.slots_per_drawer,
                {s.value: n for s, n in sorted(occupancy.get(record.cabinet, {}).items())},
                per_cabinet[record.cabinet],
            )
            for record in self._store.cabinets()
        )
        return SiteStatus(cabinets, discrepancies)

    async def resolve_discrepancy(
        self, supervisor: Officer, discrepancy_id: int, resolution: str
    ) -> DiscrepancyRecord:
        """Close a discrepancy once a supervisor has dealt with the slot: the cabinet scans, and
        the slot takes what its sensor reads now (see ``CabinetStore.resolve_discrepancy``)."""
        actor = supervisor.officer_id
        try:
            require_role(supervisor, {Role.SUPERVISOR})
        except AuthorisationError:
            self._refuse(actor, "discrepancy.resolve", "role", discrepancy_id=discrepancy_id)
            raise
        record = self._store.discrepancy(discrepancy_id)
        if record is None:
            raise KeyError(discrepancy_id)
        cabinet = self._store.cabinet(record.cabinet)
        if cabinet is None or cabinet.office != supervisor.office:
            self._refuse(
                actor, "discrepancy.resolve", "other_office", discrepancy_id=discrepancy_id
            )
            raise AuthorisationError("the cabinet is at another office", reason="other_office")
        state: SlotState | None = None
        serial: str | None = None
        if record.drawer is not None and record.index is not None:
            snapshot = await self._controller.scan(record.cabinet, actor=actor)
            report = next(
                s for s in snapshot.slots if (s.drawer, s.index) == (record.drawer, record.index)
            )
            state, serial = report.state, report.card_serial
        try:
            closed, stocked = self._store.resolve_discrepancy(
                discrepancy_id,
                resolved_by=actor,
                resolution=resolution,
                sensed_state=state,
                sensed_serial=serial,
            )
        except SlotError as exc:
            self._refuse(
                actor,
                "discrepancy.resolve",
                "slot_not_settled",
                discrepancy_id=discrepancy_id,
                slot_state=exc.state,
            )
            raise
        payload: dict[str, Any] = {
            "discrepancy_id": discrepancy_id,
            "cabinet": record.cabinet,
            "resolution": resolution,
        }
        if record.drawer is not None and record.index is not None:
            payload["slot"] = slot_code(record.drawer, record.index)
        if stocked is not None:
            payload["application_id"] = stocked.application_id
        self._audit.audit(actor, "discrepancy.resolved", payload)
        if stocked is not None:
            self._changed(
                CardChange(
                    stocked.application_id, stocked.state, actor, stocked.cabinet, stocked.slot
                )
            )
            await self._followed(stocked.application_id)
        await self._controller.durable()
        return closed


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, CabinetOfflineError):
        return "offline"
    if isinstance(exc, CommandTimeoutError):
        return "timed_out"
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else "link_error"
