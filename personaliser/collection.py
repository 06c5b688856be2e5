"""From the line to the counter: passed cards handed over to the e-cabinet side, and the cabinet's
outcomes written back to the card life cycle (DESIGN §3: PASSED → DISPATCHED → STOCKED → ISSUED
or RETURNED).

Two stores, one truth each.  The line's store (``perso.db``) owns the card life cycle and the
personal data; the cabinet store (``cabinet.db``, :mod:`ecabinet.store`) owns slots, commands and
discrepancies and holds no personal data: only ids, chip serials and keyed digests of the HKIC and
receipt numbers.  They are written in a fixed order so a crash between the two writes loses
nothing:

1. hand-over: the cabinet store registers the card first (idempotent on application id), then the
   line's store moves PASSED → DISPATCHED;
2. outcomes: the cabinet store records STOCKED / ISSUED / RETURNED first (that is what the
   sensors said), then the line's store follows (the callbacks of :class:`CollectionService`);
3. :func:`catch_up` re-applies step 2 for every card whose line state lags its cabinet state —
   run at every start, so a crash between the two writes is repaired, never guessed.

Step 2 runs on a thread of its own (:class:`FollowingBridge`) in a long-running service: the
line's store syncs every life-cycle milestone (a full fsync, ISSUED with its purge), and on the
event loop that fsync held up every other officer's request.  One worker keeps the moves in the
order the cabinet reported them; the flows await a card's move before they answer, so "issued"
still means "issued and purged" to whoever asked.

Every transition carries an idempotency key derived from the card and the target state, so
re-applying one is a no-op.  ISSUED and RETURNED purge the card's personal data in the same
transaction (the store's ``purge_at``; the portrait stays until the hand-over for the officer's
comparison).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ecabinet.store import CabinetStore, CardState, NewCard, lookup_digest
from personaliser.errors import IllegalTransitionError
from personaliser.lifecycle import BlankState, State
from personaliser.store.base import Store

__all__ = ["Bridge", "FollowingBridge", "HandOver", "catch_up", "hand_over"]

#: The line state each cabinet state implies, in life-cycle order.
_FOLLOWS: dict[CardState, tuple[State, ...]] = {
    CardState.STOCKED: (State.STOCKED,),
    CardState.RETRIEVING: (State.STOCKED,),
    CardState.ISSUED: (State.STOCKED, State.ISSUED),
    CardState.RETURNING: (State.STOCKED,),
    CardState.RETURNED: (State.STOCKED, State.RETURNED),
}


@dataclass(frozen=True, slots=True)
class HandOver:
    registered: int  # new in the cabinet store
    dispatched: int  # moved PASSED -> DISPATCHED in the line's store
    offices: dict[str, int]


def _serials(store: Store, application_ids: set[str]) -> dict[str, str]:
    """Chip serial of each application's good blank (late binding: only GOOD blanks have one)."""
    serials: dict[str, str] = {}
    for batch in store.list_batches():
        for blank in store.blanks(batch.batch_id):
            if (
                blank.state is BlankState.GOOD
                and blank.application_id in application_ids
                and blank.serial is not None
            ):
                serials[blank.application_id] = blank.serial
    return serials


def hand_over(
    store: Store,
    cabinets: CabinetStore,
    lookup_key: bytes,
    *,
    tray: str = "line",
    application_ids: Iterable[str] | None = None,
) -> HandOver:
    """Register every PASSED card (or those named) with the cabinet side, then DISPATCH it."""
    wanted = None if application_ids is None else set(application_ids)
    records = [
        r
        for r in store.list_applications(state=State.PASSED)
        if wanted is None or r.application_id in wanted
    ]
    if not records:
        return HandOver(0, 0, {})
    serials = _serials(store, {r.application_id for r in records})
    cards: list[NewCard] = []
    for record in records:
        app = store.load_application(record.application_id)
        if record.office is None or record.collection_date is None:
            continue  # cannot happen for a PASSED card (intake requires both); never guess one
        cards.append(
            NewCard(
                application_id=record.application_id,
                card_serial=serials[record.application_id],
                office=record.office,
                collection_date=record.collection_date,
                hkid_digest=lookup_digest(lookup_key, "hkid", app.hkid),
                receipt_digest=(
                    lookup_digest(lookup_key, "receipt", app.receipt_number)
                    if app.receipt_number
                    else None
                ),
            )
        )
    registered = cabinets.register_cards(cards)
    offices: dict[str, int] = {}
    for card in cards:
        store.transition(
            card.application_id,
            State.DISPATCHED,
            idempotency_key=f"{card.application_id}:dispatch",
            tray=tray,
        )
        offices[card.office] = offices.get(card.office, 0) + 1
    return HandOver(registered, len(cards), offices)


class Bridge:
    """The :class:`~ecabinet.service.CollectionService` callbacks: each cabinet outcome moves the
    card along the line's life cycle (after the cabinet store has recorded it)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __repr__(self) -> str:
        return "Bridge()"

    def stocked(self, application_id: str, cabinet: str, slot: str) -> None:
        self._move(application_id, State.STOCKED, cabinet=cabinet, slot=slot)

    def issued(self, application_id: str, officer: str) -> None:
        self._move(application_id, State.ISSUED, officer=officer)

    def returned(self, application_id: str, actor: str) -> None:
        self._move(application_id, State.RETURNED, reason=f"uncollected; by {actor}")

    def _move(self, application_id: str, to: State, **fields: str) -> None:
        self._store.transition(
            application_id, to, idempotency_key=f"{application_id}:{to.value.lower()}", **fields
        )


class FollowingBridge:
    """:class:`Bridge`'s moves on one worker thread, in the order they were asked for.

    Each call returns the move's :class:`~concurrent.futures.Future` (its exception, if the move
    failed): :class:`~ecabinet.service.CollectionService` awaits it before a flow answers and
    records a failure.  The store gives the worker a connection of its own (SQLite connections
    are per thread).  :meth:`close` waits for the moves already asked for.
    """

    def __init__(self, store: Store) -> None:
        self._bridge = Bridge(store)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="line-store")

    def __repr__(self) -> str:
        return "FollowingBridge()"

    def stocked(self, application_id: str, cabinet: str, slot: str) -> Future[None]:
        return self._worker.submit(self._bridge.stocked, application_id, cabinet, slot)

    def issued(self, application_id: str, officer: str) -> Future[None]:
        return self._worker.submit(self._bridge.issued, application_id, officer)

    def returned(self, application_id: str, actor: str) -> Future[None]:
        return self._worker.submit(self._bridge.returned, application_id, actor)

    def close(self) -> None:
        self._worker.shutdown(wait=True)


def catch_up(store: Store, cabinets: CabinetStore) -> int:
    """Bring the line's store up to what the cabinet store recorded; returns transitions made."""
    bridge = Bridge(store)
    moved = 0
    for state, steps in _FOLLOWS.items():
        for card in cabinets.cards(state=state):
            current = store.get(card.application_id).state
            for step in steps:
                if current is step or current in (State.ISSUED, State.RETURNED):
                    continue
                if step is State.STOCKED and current is State.DISPATCHED:
                    bridge.stocked(
                        card.application_id, card.cabinet or "unknown", card.slot or "unknown"
                    )
                elif step is State.ISSUED and current is State.STOCKED:
                    bridge.issued(card.application_id, card.officer or "unknown")
                elif step is State.RETURNED and current is State.STOCKED:
                    bridge.returned(card.application_id, card.officer or "controller")
                else:
                    raise IllegalTransitionError(card.application_id, current.value, step.value)
                current = step
                moved += 1
    return moved
