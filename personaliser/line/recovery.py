"""Start-up recovery: put the store back in a state the line can run from, after any stop.

A line can die at any instant (SIGKILL, power loss).  Every transition is one durable transaction
(DESIGN §3), so the store holds exactly the last committed state of every card.  What it cannot
know is where a card that was *in a station* physically is now, so recovery is conservative:

Rule 1: an application in a station state (ENCODING … VERIFYING) has its blank spoiled (spoil log
        reason ``line_restart``, station :data:`RESTART_STATION`) and is re-queued.  A half-written
        chip, or a card that was printed but never read back, is never trusted.
Rule 2: an application SPOILED but not yet re-queued (the line died between the two commits) is
        re-queued, unless its *station* failures reached ``max_attempts``: then it is held for an
        operator.  Restarts do not count as failures: a crash is not the card's fault, and counting
        it would let a few kills exhaust a good application's attempts.
Rule 3: a batch with nothing left to make (no QUEUED card, none in a station) returns the blanks it
        still has on the line to the vault, so its stock reconciles: issued = good + spoiled +
        samples + returned.
Rule 4: every step is keyed by (application, attempt, target state) or by the batch's stock
        counters, so running recovery twice, or dying during it, changes nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from personaliser.lifecycle import STATION_STATES, BlankState, State
from personaliser.line.observer import LineObserver, NullObserver
from personaliser.store.base import ApplicationRecord, Store

__all__ = [
    "RESTART_STATION",
    "RecoveryReport",
    "attempt_key",
    "batch_has_work",
    "recover",
    "requeue_or_hold",
    "return_unused_blanks",
    "station_failures",
]

#: The station named on spoils made by recovery (not by a device failing).
RESTART_STATION = "line-restart"
_ORDER = (State.ENCODING, State.ENCODED, State.PRINTING, State.PRINTED, State.VERIFYING)


def attempt_key(application_id: str, attempt: int, to: State) -> str:
    """The idempotency key of a line transition: one per (application, attempt, target state)."""
    return f"line/{application_id}/{attempt}/{to.value}"


def station_failures(store: Store, application_id: str) -> int:
    """Attempts of this application that a station failed (restarts excluded, Rule 2)."""
    return sum(
        1
        for e in store.events(application_id=application_id)
        if e.kind == "transition"
        and e.to_state == State.SPOILED.value
        and e.fields.get("station") != RESTART_STATION
    )


def requeue_or_hold(
    store: Store, record: ApplicationRecord, *, max_attempts: int, actor: str
) -> bool:
    """Re-queue a SPOILED application in its batch (rework keeps the batch's due date); False
    if it has used up its attempts and stays SPOILED for an operator."""
    if station_failures(store, record.application_id) >= max_attempts:
        return False
    assert (
        record.batch_id is not None
    )  # SPOILED comes from a station, and stations are after QUEUED
    store.transition(
        record.application_id,
        State.QUEUED,
        idempotency_key=attempt_key(record.application_id, record.attempts, State.QUEUED),
        actor=actor,
        batch_id=record.batch_id,
    )
    return True


def batch_has_work(store: Store, batch_id: str) -> bool:
    """Whether anything of the batch is queued or in a station."""
    counts = store.count_by_state(batch_id=batch_id)
    return any(counts.get(s, 0) for s in (State.QUEUED, *STATION_STATES))


def return_unused_blanks(store: Store, batch_id: str, *, actor: str) -> int:
    """Return the batch's blanks still on the line to the vault (Rule 3); how many went back.

    Each return is keyed by the batch's accounted count before it, which only grows, so a replay
    after a crash between two returns neither repeats one nor skips one.
    """
    returned = 0
    stock = store.stock(batch_id)
    while stock.on_line > 0:
        store.record_blank(
            batch_id,
            BlankState.RETURNED,
            reason="unused at the end of the batch",
            idempotency_key=f"line/return/{batch_id}/{stock.accounted}",
            actor=actor,
        )
        returned += 1
        stock = store.stock(batch_id)
    return returned


@dataclass(slots=True)
class RecoveryReport:
    spoiled: list[tuple[str, State]] = field(default_factory=list)  # (application, its state)
    requeued: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # SPOILED, attempts used up
    returned: dict[str, int] = field(default_factory=dict)  # batch → blanks back to the vault

    def as_dict(self) -> dict[str, Any]:
        return {
            "spoiled": len(self.spoiled),
            "spoiled_in": {
                s.value: n
                for s in _ORDER
                if (n := sum(1 for _a, state in self.spoiled if state is s))
            },
            "requeued": len(self.requeued),
            "held": sorted(self.held),
            "blanks_returned": dict(sorted(self.returned.items())),
        }


def _last_station(store: Store, application_id: str) -> str | None:
    for e in reversed(store.events(application_id=application_id)):
        if e.kind == "transition" and "station" in e.fields:
            return e.fields["station"]
    return None


def recover(
    store: Store,
    *,
    max_attempts: int = 3,
    actor: str = "line",
    observer: LineObserver | None = None,
) -> RecoveryReport:
    """Apply Rules 1-3 to the whole store (one line runtime per store) and say what changed.

    ``observer`` hears the transitions and stock movements, from the calling thread.
    """
    seen = observer or NullObserver()
    report = RecoveryReport()
    for state in _ORDER:
        for record in store.list_applications(state=state):
            app_id = record.application_id
            where = _last_station(store, app_id)
            reason = f"line_restart: the line stopped with the card in {state.value}"
            if where is not None and where != RESTART_STATION:
                reason += f" at {where}"
            store.transition(
                app_id,
                State.SPOILED,
                idempotency_key=attempt_key(app_id, record.attempts, State.SPOILED),
                actor=actor,
                reason=reason,
                station=RESTART_STATION,
            )
            seen.card_transition(app_id, state, State.SPOILED)
            seen.reject("line_restart")
            seen.stock("spoiled")
            report.spoiled.append((app_id, state))
    for record in store.list_applications(state=State.SPOILED):
        if requeue_or_hold(store, record, max_attempts=max_attempts, actor=actor):
            seen.card_transition(record.application_id, State.SPOILED, State.QUEUED)
            report.requeued.append(record.application_id)
        else:
            report.held.append(record.application_id)
    for batch in store.list_batches():
        if store.stock(batch.batch_id).on_line and not batch_has_work(store, batch.batch_id):
            n = return_unused_blanks(store, batch.batch_id, actor=actor)
            seen.stock("returned", n)
            report.returned[batch.batch_id] = n
    return report
