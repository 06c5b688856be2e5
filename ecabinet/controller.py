"""The site controller: one MQTT connection, its supervisor, the slot map, reconciliation.

::

    SiteController
    ├── supervisor task   connect ─ subscribe ─ read ─ (LinkError) ─ backoff with jitter ─ again
    ├── timer task        ControllerProtocol.due(now): resend the same bytes, or time out
    ├── watchdog task     a cabinet silent for ``liveness_timeout`` is offline
    └── reconciler tasks  one per cabinet: snapshot (+ scan if faulted) vs the store (reconcile.py)

Inbound messages are handled one at a time, synchronously, in the reader: verify
(:class:`~ecabinet.protocol.ControllerProtocol`), write the store (one transaction), append the
audit entry, wake whoever waits.  No inbound queue builds up inside the controller; the number of
commands awaiting an ack is bounded by ``max_in_flight``.

Rules:

1. Write-ahead: a command's row, the slot/card change it makes and the protocol counters are one
   store transaction committed before the command is published; the audit entry is queued before
   the publish.  A restarted controller never reuses a counter and knows every command it may have
   sent; commands a previous run left unanswered are *abandoned*, never re-sent (a door must not
   open long after the officer who asked has gone), and their slots are reconciled from the
   sensors.
2. Evidence only: the store changes on authenticated reports (acks, events, snapshots).  A
   snapshot is compared with the store only if it is newer than every report already applied (the
   cabinet's report counter is one sequence over all its channels) and was received on the
   current connection (events published while we were away are lost to us).  Whatever does not
   match is a discrepancy (reconcile.py), left open for a supervisor.
3. A barrier before a verdict: when an answer went missing (a command timed out or was abandoned,
   the cabinet restarted, an insert or removal event is evidently lost), the reconciler first has
   the cabinet scan.  The scan travels on the cmd topic behind every earlier command (MQTT keeps
   one publisher's order per topic), so the snapshot that follows it says what became of them.
4. Which opening closed?  A ``door_closed`` is taken as the end of an operation only after that
   operation's own ``slot_opened`` arrived; an earlier opening's event arriving late (or one from
   before a restart) is left to the sensors.
5. Fail fast: a command to a cabinet that is offline (last will, clean shutdown, or silent for
   ``liveness_timeout``), or while the broker is unreachable for more than ``connect_wait``,
   raises at once instead of hanging.
6. Inventory snapshots (~30 kB for 500 slots, ~2 ms to verify) are kept raw as they arrive and
   verified only when reconciliation needs one: a busy cabinet publishes many, and verifying each
   would put milliseconds on every officer's request for nothing.
7. The audit log gets every command, ack, event, refusal and discrepancy (ids and codes only),
   through :class:`~ecabinet.auditq.AuditQueue`: one ordered writer thread, so an fsync never
   stalls the event loop.  The AuditWriter handed over belongs to the controller from then on;
   the flows append through :meth:`SiteController.audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal
from uuid import UUID

from ecabinet.audit import AuditWriter
from ecabinet.auditq import AuditQueue
from ecabinet.errors import CabinetError, LinkError, WrongTopicError
from ecabinet.messages import (
    CardInserted,
    CardRemoved,
    DoorClosed,
    FaultEvent,
    Heartbeat,
    InventorySnapshot,
    SecurityEvent,
    SlotOpened,
    Status,
)
from ecabinet.mqtt import BrokerAddress, Inbound, MqttLink, connect
from ecabinet.protocol import (
    Acked,
    ControllerProtocol,
    Duplicate,
    Outgoing,
    Received,
    Refused,
    Reissued,
    Rejected,
    Resend,
    TimedOut,
    UnmatchedAck,
)
from ecabinet.reconcile import Correction, CorrectionKind, Discrepancy, ExpectedSlot, reconcile
from ecabinet.security import SiteKey
from ecabinet.slots import SlotState, slot_code
from ecabinet.store import (
    CabinetRecord,
    CabinetStore,
    CardRecord,
    CardState,
    CardStateError,
    CommandRow,
    CommandStatus,
    DiscrepancyKind,
    StoredSlot,
)
from ecabinet.topics import Channel, parse_topic

__all__ = [
    "CabinetOfflineError",
    "CardChange",
    "CommandKind",
    "CommandTimeoutError",
    "LatencySummary",
    "OperationResult",
    "Outcome",
    "SiteController",
    "SlotOperation",
]

log = logging.getLogger(__name__)

_CONTROLLER: Final = "controller"
_SYSTEM_RANDOM: Final = random.SystemRandom()
_FINISHED_KEPT: Final = 4096


class CabinetOfflineError(LinkError):
    """The cabinet is offline (last will, clean shutdown or silence): nothing was sent."""

    def __init__(self, cabinet: str) -> None:
        super().__init__(f"cabinet {cabinet} is offline")
        self.cabinet = cabinet


class CommandTimeoutError(CabinetError):
    """No ack after every attempt; whether the cabinet acted is for reconciliation to find out."""

    def __init__(self, cabinet: str, correlation_id: UUID) -> None:
        super().__init__(f"cabinet {cabinet}: no answer to request {correlation_id}")
        self.cabinet = cabinet
        self.correlation_id = correlation_id


class CommandKind(StrEnum):
    DEPOSIT = "deposit"
    OPEN_FOR_RETRIEVAL = "open_for_retrieval"
    RETURN_UNCOLLECTED = "return_uncollected"
    LIGHT = "light"
    INVENTORY_SCAN = "inventory_scan"


_SLOT_KINDS: Final = frozenset(
    {CommandKind.DEPOSIT, CommandKind.OPEN_FOR_RETRIEVAL, CommandKind.RETURN_UNCOLLECTED}
)


class Outcome(StrEnum):
    """How a slot operation ended, as far as the controller can tell."""

    STOCKED = "stocked"
    NOT_DEPOSITED = "not_deposited"  # door closed empty, or the sensor says no card went in
    ISSUED = "issued"
    RETURNED = "returned"
    NOT_TAKEN = "not_taken"  # the door closed with the card still in the slot
    REFUSED = "refused"  # the cabinet rejected the command; nothing was opened
    DISCREPANCY = "discrepancy"  # raised; a supervisor must resolve it
    ABANDONED = "abandoned"  # the controller stopped


@dataclass(frozen=True, slots=True)
class OperationResult:
    outcome: Outcome
    cabinet: str
    drawer: int
    index: int
    application_id: str | None
    reason: str | None = None
    discrepancy_id: int | None = None


@dataclass(frozen=True, slots=True)
class CardChange:
    """A card changed state because of a report or a correction (for on_stocked, on_issued …)."""

    application_id: str
    state: CardState
    actor: str
    cabinet: str | None
    slot: str | None


@dataclass(eq=False)
class SlotOperation:
    """One command in flight and, for slot commands, the physical operation it starts.

    ``ack`` resolves with the cabinet's answer (or fails with CommandTimeoutError,
    CabinetOfflineError); ``done`` with how the slot operation ended.
    """

    correlation_id: UUID
    kind: CommandKind
    cabinet: str
    drawer: int | None
    index: int | None
    card_serial: str | None
    application_id: str | None
    actor: str
    started: float
    ack: asyncio.Future[Acked | Rejected]
    done: asyncio.Future[OperationResult]
    ack_latency: float | None = None
    #: The cabinet reported ``slot_opened`` for this operation's command: from then on a
    #: ``door_closed`` of the slot is this opening's, not an earlier one's arriving late.
    opened: bool = False

    @property
    def key(self) -> tuple[str, int, int] | None:
        if self.drawer is None or self.index is None:
            return None
        return (self.cabinet, self.drawer, self.index)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(eq=False)
class _Live:
    """What the controller knows of one cabinet right now (not persisted but for status)."""

    record: CabinetRecord
    online: bool | None = None
    boot_id: str | None = None
    last_seen: float = 0.0
    heartbeat_saved: float = 0.0
    raw: Inbound | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    snapshot: InventorySnapshot | None = None
    #: Highest report counter whose effect is in the store: a snapshot to compare must be newer.
    applied: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reconciles: int = 0
    reconciled: asyncio.Event = field(default_factory=asyncio.Event)
    deferred: str | None = None
    #: A command went to the cabinet and its answer never came (timed out, abandoned): until an
    #: inventory scan sent after it has answered, no snapshot can say whether it was performed.
    unsettled: bool = False


Listener = Callable[[CardChange], None]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SiteController:
    """The controller for one site.  ``async with SiteController(...) as controller:``."""

    def __init__(
        self,
        address: BrokerAddress,
        site_key: SiteKey,
        store: CabinetStore,
        audit: AuditWriter,
        *,
        client_id: str | None = None,
        ack_timeout: float = 2.0,
        max_attempts: int = 3,
        max_reissues: int = 2,
        liveness_timeout: float = 90.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        connect_wait: float = 2.0,
        snapshot_wait: float = 10.0,
        max_in_flight: int = 256,
        keepalive: int = 10,
        random_bytes: Callable[[int], bytes] = os.urandom,
        jitter: Callable[[], float] = _SYSTEM_RANDOM.random,
    ) -> None:
        self.site = site_key.site
        self._address = address
        self._store = store
        self._sync_task: asyncio.Future[None] | None = None  # the barrier in progress
        self._publish_order = asyncio.Lock()
        # Rule 7, without the disk on the event loop: entries go to one ordered writer thread.
        self._audit = AuditQueue(audit)
        self._client_id = client_id or f"controller-{self.site}"
        self._proto = ControllerProtocol(
            site_key,
            random=random_bytes,
            ack_timeout=timedelta(seconds=ack_timeout),
            max_attempts=max_attempts,
            max_reissues=max_reissues,
            state=store.load_controller_state(self.site),
        )
        self._liveness = liveness_timeout
        self._backoff = (reconnect_initial, reconnect_max)
        self._connect_wait = connect_wait
        self._snapshot_wait = snapshot_wait
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._keepalive = keepalive
        self._jitter = jitter
        self._live: dict[str, _Live] = {}
        self._ops: dict[UUID, SlotOperation] = {}
        self._slot_ops: dict[tuple[str, int, int], SlotOperation] = {}
        #: Operations that have ended, so a late ``wait_done`` still gets the answer.
        self._finished: OrderedDict[UUID, SlotOperation] = OrderedDict()
        self._listeners: list[Listener] = []
        self._strangers: set[str] = set()
        self._audit_listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        self._latencies: deque[float] = deque(maxlen=100_000)
        self._link: MqttLink | None = None
        self._connected = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconcilers: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self._failure: BaseException | None = None
        self._changed = asyncio.Event()
        self.connections = 0

    def __repr__(self) -> str:
        return (
            f"SiteController(site={self.site!r}, {self._address.url()}, cabinets={len(self._live)})"
        )

    # -- life cycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> SiteController:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._running:
            raise RuntimeError("controller already started")
        self._running = True
        self._audit.start()
        self._audit_entry(_CONTROLLER, "controller.started", {"site": self.site})
        abandoned = self._store.abandon_open_commands()
        for command in abandoned:
            self._audit_entry(
                _CONTROLLER,
                "command.abandoned",
                {
                    "correlation_id": command.correlation_id,
                    "command_id": command.command_id,
                    "cabinet": command.cabinet,
                    "reason": "controller_restart",
                },
            )
        for record in self._store.cabinets():
            if record.site == self.site:
                self._watch(record)
        for command in abandoned:
            if command.cabinet in self._live:
                self._live[command.cabinet].unsettled = True
        self._spawn(self._supervise(), "supervisor")
        self._spawn(self._timer(), "timer")
        self._spawn(self._watchdog(), "watchdog")

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        stopped = LinkError("controller stopped")
        for op in list(self._ops.values()):
            self._fail_ack(op, stopped)
        for op in list(self._slot_ops.values()):
            self._finish(op, Outcome.ABANDONED, reason="controller_stopped")
        self._store.save_controller_state(self._proto.snapshot())
        self._audit_entry(_CONTROLLER, "controller.stopped", {"site": self.site})
        await asyncio.to_thread(self._audit.close)

    async def abort(self) -> None:
        """Stop as a crash would: no state saved beyond what each change committed, nothing
        audited, the connection dropped (tests of a controller restart)."""
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for op in [*self._ops.values(), *self._slot_ops.values()]:
            self._fail_ack(op, LinkError("controller aborted"))
            if not op.done.done():
                op.done.cancel()
        # The audit worker is stopped too (after what it holds: two workers must never share
        # one writer); a real crash would lose those queued entries instead.
        await asyncio.to_thread(self._audit.close)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._client_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # An unexpected failure (the audit log refusing writes, the store failing): the
            # controller stops taking commands rather than act without a record.
            self._failure = task.exception()
            log.error("controller task %s failed", task.get_name(), exc_info=self._failure)

    def _pulse(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def add_listener(self, listener: Listener) -> None:
        """Called with every :class:`CardChange` (STOCKED, ISSUED, RETURNED, EXCEPTION, …)."""
        self._listeners.append(listener)

    def register_cabinet(
        self, cabinet: str, office: str, drawers: int, slots_per_drawer: int
    ) -> CabinetRecord:
        """Register a cabinet of this site (idempotent) and start watching it."""
        record = self._store.register_cabinet(self.site, cabinet, office, drawers, slots_per_drawer)
        if self._running and cabinet not in self._live:
            self._watch(record)
            if self._connected.is_set():
                self._request_reconcile(cabinet)
        return record

    def _watch(self, record: CabinetRecord) -> None:
        live = _Live(record, boot_id=record.boot_id)
        self._live[record.cabinet] = live
        if self._running:
            self._reconcilers[record.cabinet] = self._spawn(
                self._reconciler(record.cabinet), f"reconcile:{record.cabinet}"
            )

    # -- state for callers ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    def online(self, cabinet: str) -> bool | None:
        live = self._live.get(cabinet)
        return None if live is None else live.online

    async def wait_online(self, cabinet: str, timeout: float | None = None) -> None:
        await self.wait_status(cabinet, online=True, timeout=timeout)

    async def wait_status(
        self, cabinet: str, *, online: bool, timeout: float | None = None
    ) -> None:
        """Until the controller holds ``cabinet`` online (or offline)."""

        async def until() -> None:
            live = self._cabinet(cabinet)
            while live.online is not online:
                await self._changed.wait()

        async with asyncio.timeout(timeout):
            await until()

    def reconciliations(self, cabinet: str) -> int:
        """How many reconciliations of ``cabinet`` have completed (for waiting on the next)."""
        return self._cabinet(cabinet).reconciles

    async def wait_reconciled(
        self, cabinet: str, *, after: int = 0, timeout: float | None = None
    ) -> None:
        """Until more than ``after`` reconciliations of ``cabinet`` have completed."""

        async def until() -> None:
            live = self._cabinet(cabinet)
            while live.reconciles <= after:
                event = live.reconciled
                await event.wait()

        async with asyncio.timeout(timeout):
            await until()

    async def reconcile_now(self, cabinet: str, timeout: float | None = None) -> None:
        """Reconcile ``cabinet`` now (a fresh snapshot, a scan if none comes) and wait for it."""
        live = self._cabinet(cabinet)
        done = live.reconciles
        self._request_reconcile(cabinet)
        await self.wait_reconciled(cabinet, after=done, timeout=timeout)

    def operation(self, correlation_id: UUID) -> SlotOperation | None:
        return (
            self._ops.get(correlation_id)
            or self._finished.get(correlation_id)
            or next(
                (op for op in self._slot_ops.values() if op.correlation_id == correlation_id), None
            )
        )

    async def wait_done(self, correlation_id: UUID) -> OperationResult:
        """How the slot operation of ``correlation_id`` ended (card stocked, removed, …)."""
        op = self.operation(correlation_id)
        if op is None:
            raise KeyError(correlation_id)
        return await asyncio.shield(op.done)

    def ack_latencies(self) -> list[float]:
        """Seconds from each request to its ack being recorded (the most recent 100,000)."""
        return list(self._latencies)

    def latency_summary(self) -> LatencySummary | None:
        data = sorted(self._latencies)
        if not data:
            return None
        cuts = statistics.quantiles(data, n=100, method="inclusive") if len(data) > 1 else data * 99
        return LatencySummary(len(data), cuts[49] * 1e3, cuts[98] * 1e3, data[-1] * 1e3)

    def _cabinet(self, cabinet: str) -> _Live:
        live = self._live.get(cabinet)
        if live is None:
            raise CabinetError(f"cabinet {cabinet} is not registered at site {self.site}")
        return live

    # -- supervisor -----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        initial, ceiling = self._backoff
        delay = initial
        while True:
            try:
                async with connect(
                    self._address, client_id=self._client_id, keepalive=self._keepalive
                ) as link:
                    await link.subscribe(self._proto.subscriptions())
                    self._link = link
                    self.connections += 1
                    delay = initial
                    self._on_connected()
                    async for message in link.messages():
                        self._on_message(message)
                    raise LinkError("message stream ended")
            except LinkError as exc:
                self._audit_entry(_CONTROLLER, "link.lost", {"reason": _short(str(exc))})
            finally:
                self._link = None
                self._connected.clear()
            # Full jitter over [delay/2, delay): controllers and cabinets that lost the same
            # broker do not all come back in the same instant.
            await asyncio.sleep(delay * (0.5 + 0.5 * self._jitter()))
            delay = min(delay * 2, ceiling)

    def _on_connected(self) -> None:
        self._audit_entry(
            _CONTROLLER,
            "link.connected",
            {"broker": self._address.url(), "mqtt": self._address.version},
        )
        now = time.monotonic()
        for cabinet, live in self._live.items():
            live.last_seen = now  # a grace period: nobody could be heard while we were away
            # Events published while we were away are lost to us (clean session): compare with
            # a snapshot received on this connection (retained, or fresh), never an older one.
            live.snapshot = live.raw = None
            self._request_reconcile(cabinet)
        self._connected.set()

    # -- commands -------------------------------------------------------------------------------

    async def command(
        self,
        kind: CommandKind,
        cabinet: str,
        drawer: int | None = None,
        index: int | None = None,
        card_serial: str | None = None,
        *,
        actor: str = _CONTROLLER,
        application_id: str | None = None,
        duration_ms: int | None = None,
    ) -> Acked | Rejected:
        """Send one command and wait for the cabinet's answer (resending and re-issuing as the
        protocol says).  A slot command sent this way changes no card or slot in the store: the
        flows use :meth:`deposit` and :meth:`open_slot`."""
        op = await self._start(
            kind,
            cabinet,
            actor=actor,
            drawer=drawer,
            index=index,
            card_serial=card_serial,
            application_id=application_id,
            duration_ms=duration_ms,
            prepare=self._store.record_command,
            track_slot=False,
        )
        return await asyncio.shield(op.ack)

    async def deposit(
        self, actor: str, application_id: str, cabinet: str, drawer: int, index: int
    ) -> SlotOperation:
        """Reserve ``cabinet``/``drawer``/``index`` for the card and open it for the card to be
        put in (reservation and command in one store transaction)."""
        card = self._store.card(application_id)
        if card is None:
            raise CardStateError(
                "no such card", application_id=application_id, state=None, reason="not_found"
            )
        return await self._start(
            CommandKind.DEPOSIT,
            cabinet,
            drawer=drawer,
            index=index,
            card_serial=card.card_serial,
            application_id=application_id,
            actor=actor,
            prepare=lambda row, state: self._store.begin_deposit(
                application_id,
                cabinet=cabinet,
                drawer=drawer,
                index=index,
                command=row,
                state=state,
                actor=actor,
            ),
        )

    async def open_slot(
        self, actor: str, card: CardRecord, purpose: Literal["retrieval", "return"]
    ) -> SlotOperation:
        """Open a STOCKED card's slot for the applicant (``retrieval``) or to take an
        uncollected card back (``return``).  The card's move to RETRIEVING/RETURNING is the
        write-ahead record: a second request for the same card fails in the store and opens
        nothing."""
        if card.cabinet is None or card.drawer is None or card.index is None:
            raise CardStateError(
                "card is not in a slot",
                application_id=card.application_id,
                state=card.state.value,
                reason="no_slot",
            )
        kind = (
            CommandKind.OPEN_FOR_RETRIEVAL
            if purpose == "retrieval"
            else CommandKind.RETURN_UNCOLLECTED
        )
        app = card.application_id
        return await self._start(
            kind,
            card.cabinet,
            drawer=card.drawer,
            index=card.index,
            card_serial=card.card_serial,
            application_id=app,
            actor=actor,
            prepare=lambda row, state: self._store.begin_open(
                app, purpose, row, state, officer=actor
            ),
        )

    async def scan(self, cabinet: str, *, actor: str = _CONTROLLER) -> InventorySnapshot:
        """Have the cabinet read every sensor; the fresh snapshot it publishes after the ack."""
        answer = await self.command(CommandKind.INVENTORY_SCAN, cabinet, actor=actor)
        if isinstance(answer, Rejected):
            raise CabinetError(f"cabinet {cabinet} refused the scan: {answer.ack.reason}")
        return await self._snapshot_after(self._cabinet(cabinet), answer.ack.counter)

    async def _ready(self, cabinet: str) -> _Live:
        live = self._cabinet(cabinet)
        failure = self._failure or self._audit.failure
        if failure is not None:
            raise CabinetError("controller failed; see its log") from failure
        if not self._running:
            raise LinkError("controller is not running")
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(self._connect_wait):
                    await self._connected.wait()
            except TimeoutError:
                raise LinkError("controller is not connected to the broker") from None
        if live.online is not True:
            raise CabinetOfflineError(cabinet)
        return live

    async def _start(
        self,
        kind: CommandKind,
        cabinet: str,
        *,
        actor: str,
        prepare: Callable[[CommandRow, Any], object],
        drawer: int | None = None,
        index: int | None = None,
        card_serial: str | None = None,
        application_id: str | None = None,
        duration_ms: int | None = None,
        track_slot: bool = True,
    ) -> SlotOperation:
        await self._ready(cabinet)
        await self._in_flight.acquire()
        try:
            started = time.perf_counter()
            out = self._build(
                kind,
                cabinet=cabinet,
                drawer=drawer,
                index=index,
                card_serial=card_serial,
                duration_ms=duration_ms,
            )
            row = CommandRow(
                correlation_id=str(out.correlation_id),
                command_id=str(out.command_id),
                cabinet=cabinet,
                kind=kind.value,
                actor=actor,
                drawer=drawer,
                index=index,
                card_serial=card_serial,
                application_id=application_id,
            )
            try:
                prepare(row, self._proto.snapshot())  # write-ahead (Rule 1)
            except BaseException:
                self._proto.cancel(out.correlation_id)
                raise
        except BaseException:
            self._in_flight.release()
            raise
        loop = asyncio.get_running_loop()
        op = SlotOperation(
            out.correlation_id,
            kind,
            cabinet,
            drawer,
            index,
            card_serial,
            application_id,
            actor,
            started,
            loop.create_future(),
            loop.create_future(),
        )
        op.ack.add_done_callback(lambda _: self._in_flight.release())
        self._ops[op.correlation_id] = op
        key = op.key
        if track_slot and kind in _SLOT_KINDS and key is not None:
            earlier = self._slot_ops.get(key)
            if earlier is not None:
                # The store let a new operation start, so the earlier one is settled there; its
                # waiters learn it ended without an outcome of its own.
                self._finish(earlier, Outcome.ABANDONED, reason="superseded")
            self._slot_ops[key] = op
        else:
            op.done.cancel()  # nothing physical to wait for
        self._audit_entry(actor, "command.sent", self._command_payload(op, out.command_id))
        self._timer_wake.set()
        await self._publish(out)
        return op

    def _build(
        self,
        kind: CommandKind,
        *,
        cabinet: str,
        drawer: int | None,
        index: int | None,
        card_serial: str | None,
        duration_ms: int | None,
    ) -> Outgoing:
        now = _utcnow()
        p = self._proto
        if kind is CommandKind.INVENTORY_SCAN:
            return p.inventory_scan(cabinet, now=now)
        if drawer is None or index is None:
            raise ValueError(f"{kind.value} names a drawer and an index")
        if kind is CommandKind.LIGHT:
            return p.light(cabinet, drawer, index, duration_ms or 5000, now=now)
        if card_serial is None:
            raise ValueError(f"{kind.value} names a card serial")
        build = {
            CommandKind.DEPOSIT: p.deposit,
            CommandKind.OPEN_FOR_RETRIEVAL: p.open_for_retrieval,
            CommandKind.RETURN_UNCOLLECTED: p.return_uncollected,
        }[kind]
        return build(cabinet, drawer, index, card_serial, now=now)

    async def durable(self) -> None:
        """Until every store commit made so far is on disk (``CabinetStore.make_durable``).

        Flows call it before they answer; :meth:`_publish` before a command leaves (write-ahead).
        Concurrent callers share one fsync on a worker thread: the loop never waits on the disk."""
        store = self._store
        target = store.commit_count
        while store.durable_count < target:
            task = self._sync_task
            if task is None or task.done():
                task = self._sync_task = asyncio.ensure_future(
                    asyncio.to_thread(store.make_durable)
                )
            await asyncio.shield(task)

    async def _publish(self, out: Outgoing) -> None:
        # Rule 1: the command's row and counters are on disk before it leaves.  Commands must
        # also leave in the order their counters were drawn (a cabinet refuses a counter lower
        # than one it has seen): the lock is FIFO and taken before any wait, and the holder
        # hands the command to the client (paho queues it synchronously, in call order) before
        # the next waiter runs.
        async with self._publish_order:
            await self.durable()
        link = self._link
        if link is None:
            return  # the deadline resends it once we are back, or times it out
        try:
            await link.publish(out)
        except LinkError as exc:
            log.warning("publish of %s failed: %s", out.correlation_id, exc)

    def _publish_later(self, out: Outgoing) -> None:
        self._spawn(self._publish(out), "publish")

    @staticmethod
    def _command_payload(op: SlotOperation, command_id: UUID) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "correlation_id": str(op.correlation_id),
            "command_id": str(command_id),
            "cabinet": op.cabinet,
            "command": op.kind.value,
        }
        if op.drawer is not None and op.index is not None:
            payload["slot"] = slot_code(op.drawer, op.index)
        if op.card_serial is not None:
            payload["card_serial"] = op.card_serial
        if op.application_id is not None:
            payload["application_id"] = op.application_id
        return payload

    # -- deadlines ------------------------------------------------------------------------------

    async def _timer(self) -> None:
        while True:
            deadline = self._proto.next_deadline()
            timeout = None if deadline is None else max(0.0, (deadline - _utcnow()).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._timer_wake.wait()
            self._timer_wake.clear()
            for item in self._proto.due(_utcnow()):
                if isinstance(item, Resend):
                    pending = item.pending
                    self._audit_entry(
                        _CONTROLLER,
                        "command.resent",
                        {
                            "correlation_id": str(pending.correlation_id),
                            "command_id": str(pending.command_id),
                            "cabinet": pending.cabinet,
                            "attempt": pending.attempts,
                        },
                    )
                    self._publish_later(pending.outgoing)
                else:
                    self._on_timed_out(item)

    def _on_timed_out(self, item: TimedOut) -> None:
        pending = item.pending
        self._store.command_answered(str(pending.correlation_id), CommandStatus.TIMED_OUT)
        self._audit_entry(
            _CONTROLLER,
            "command.timed_out",
            {
                "correlation_id": str(pending.correlation_id),
                "command_id": str(pending.command_id),
                "cabinet": pending.cabinet,
                "attempts": pending.attempts,
            },
        )
        op = self._ops.pop(pending.correlation_id, None)
        if op is not None:
            self._fail_ack(op, CommandTimeoutError(pending.cabinet, pending.correlation_id))
        live = self._live.get(pending.cabinet)
        if live is not None:
            live.unsettled = True
        # The slot's fate is for the sensors to tell: the operation stays open until then.
        self._request_reconcile(pending.cabinet)

    # -- liveness -------------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        period = max(0.05, self._liveness / 4)
        while True:
            await asyncio.sleep(period)
            if not self._connected.is_set():
                continue  # we cannot hear anyone: that says nothing about the cabinets
            now = time.monotonic()
            for cabinet, live in self._live.items():
                if live.online and now - live.last_seen > self._liveness:
                    self._went_offline(cabinet, live, "silent")

    def _went_offline(self, cabinet: str, live: _Live, cause: str) -> None:
        live.online = False
        self._pulse()
        self._store.set_cabinet_status(cabinet, "offline")
        self._audit_entry(cabinet, "cabinet.offline", {"cabinet": cabinet, "cause": cause})
        # Commands awaiting this cabinet's ack fail now; the slots are reconciled when it is back.
        for op in [o for o in self._ops.values() if o.cabinet == cabinet]:
            if self._proto.cancel(op.correlation_id) is not None:
                live.unsettled = True
                self._store.command_answered(
                    str(op.correlation_id), CommandStatus.ABANDONED, reason="cabinet_offline"
                )
            self._ops.pop(op.correlation_id, None)
            self._fail_ack(op, CabinetOfflineError(cabinet))

    def _came_online(self, cabinet: str, live: _Live, boot_id: str | None) -> None:
        restarted = boot_id is not None and live.boot_id is not None and boot_id != live.boot_id
        was = live.online
        live.online = True
        self._pulse()
        if boot_id is not None:
            live.boot_id = boot_id
        if restarted:
            # What the cabinet did before it went down is for its sensors to say: openings seen
            # before the restart no longer vouch for a door_closed after it.
            live.unsettled = True
            for op in self._slot_ops.values():
                if op.cabinet == cabinet:
                    op.opened = False
        if was is not True or restarted:
            self._store.set_cabinet_status(cabinet, "online", boot_id=boot_id)
            self._audit_entry(
                cabinet,
                "cabinet.restarted" if restarted else "cabinet.online",
                {"cabinet": cabinet, "boot_id": boot_id or "unknown"},
            )
            self._request_reconcile(cabinet)

    # -- inbound --------------------------------------------------------------------------------

    def _on_message(self, message: Inbound) -> None:
        try:
            where = parse_topic(message.topic, site=self.site)
        except WrongTopicError:
            where = None
        if where is not None and where.cabinet not in self._live:
            # Once per cabinet and run: an unregistered cabinet's heartbeats must not flood the log.
            if where.cabinet not in self._strangers:
                self._strangers.add(where.cabinet)
                self._audit_entry(
                    _CONTROLLER,
                    "security.unknown_cabinet",
                    {"cabinet": where.cabinet, "channel": where.channel.value},
                )
            return
        if where is not None and where.channel is Channel.INVENTORY:
            # Rule 6: keep it raw; verified when a reconciliation needs it.
            live = self._live[where.cabinet]
            live.raw = message
            self._arrival(live)
            return
        outcome = self._proto.receive(message.topic, message.payload, now=_utcnow())
        self._dispatch(outcome, message.retain)

    @staticmethod
    def _arrival(live: _Live) -> None:
        event, live.arrived = live.arrived, asyncio.Event()
        event.set()

    async def _wait_arrival(self, live: _Live) -> None:
        await live.arrived.wait()

    def _dispatch(self, outcome: Any, retained: bool) -> None:
        if isinstance(outcome, Acked | Rejected):
            self._on_answer(outcome)
        elif isinstance(outcome, Reissued):
            self._on_reissued(outcome)
        elif isinstance(outcome, Received):
            self._on_received(outcome, retained)
        elif isinstance(outcome, UnmatchedAck):
            self._on_unmatched(outcome)
        elif isinstance(outcome, Refused):
            payload: dict[str, Any] = {"kind": outcome.kind.value, "reason": _short(outcome.reason)}
            if outcome.cabinet is not None:
                payload["cabinet"] = outcome.cabinet
            if outcome.channel is not None:
                payload["channel"] = outcome.channel.value
            self._audit_entry(_CONTROLLER, "security.refused", payload)
        elif not isinstance(outcome, Duplicate):  # a QoS 1 duplicate: already handled
            raise AssertionError(f"unexpected outcome {type(outcome).__name__}")

    def _note_applied(self, cabinet: str, counter: int) -> None:
        live = self._live[cabinet]
        live.applied = max(live.applied, counter)

    def _seen(self, cabinet: str) -> None:
        self._live[cabinet].last_seen = time.monotonic()

    def _on_answer(self, outcome: Acked | Rejected) -> None:
        cabinet, ack = outcome.cabinet, outcome.ack
        self._seen(cabinet)
        corr = outcome.pending.correlation_id
        accepted = isinstance(outcome, Acked)
        self._store.command_answered(
            str(corr),
            CommandStatus.ACKED if accepted else CommandStatus.REJECTED,
            reason=None if ack.reason is None else ack.reason.value,
        )
        payload = {
            "correlation_id": str(corr),
            "command_id": str(ack.command_id),
            "cabinet": cabinet,
            "status": ack.status.value,
        }
        if ack.reason is not None:
            payload["reason"] = ack.reason.value
        self._audit_entry(cabinet, "ack.accepted" if accepted else "ack.rejected", payload)
        op = self._ops.pop(corr, None)
        if op is None:
            return
        if (
            isinstance(outcome, Rejected)
            and op.key is not None
            and self._slot_ops.get(op.key) is op
        ):
            self._undo_refused(op, ack.reason.value if ack.reason else "rejected")
        op.ack_latency = time.perf_counter() - op.started
        self._latencies.append(op.ack_latency)
        if not op.ack.done():
            op.ack.set_result(outcome)

    def _undo_refused(self, op: SlotOperation, reason: str) -> None:
        """The cabinet refused: nothing opened.  Put the card back where the store had it, and
        have the sensors say what the slot really holds (the refusal says it is not what we
        thought: reconciliation raises the discrepancy)."""
        assert op.application_id is not None
        try:
            if op.kind is CommandKind.DEPOSIT:
                card = self._store.release_deposit(op.application_id)
            else:
                card = self._store.cancel_open(op.application_id)
            self._notify(card, op.actor)
        except CardStateError as exc:
            log.warning("undo of a refused command found the card %s", exc.reason)
        self._finish(op, Outcome.REFUSED, reason=reason)
        self._request_reconcile(op.cabinet)

    def _on_reissued(self, outcome: Reissued) -> None:
        pending = outcome.pending
        self._seen(pending.cabinet)
        self._store.command_reissued(
            str(pending.correlation_id), str(pending.command_id), self._proto.snapshot()
        )
        self._audit_entry(
            pending.cabinet,
            "command.reissued",
            {
                "correlation_id": str(pending.correlation_id),
                "command_id": str(pending.command_id),
                "previous_command_id": str(outcome.previous_command_id),
                "cabinet": pending.cabinet,
                "reason": outcome.reason.value,
            },
        )
        self._timer_wake.set()
        self._publish_later(pending.outgoing)

    def _on_unmatched(self, outcome: UnmatchedAck) -> None:
        ack = outcome.ack
        self._seen(outcome.cabinet)
        payload: dict[str, Any] = {
            "cabinet": outcome.cabinet,
            "command_id": str(ack.command_id),
            "correlation_id": str(ack.correlation_id),
            "status": ack.status.value,
        }
        if ack.reason is not None:
            payload["reason"] = ack.reason.value
        if outcome.replay_reported:
            # The cabinet refused a command we are not waiting for: somebody replayed one.
            self._audit_entry(outcome.cabinet, "security.replay_reported", payload)
            return
        self._audit_entry(outcome.cabinet, "ack.unmatched", payload)
        if ack.reason is None:
            # A late ack is still authenticated evidence that the command was performed.
            known = self._store.command_by_id(str(ack.command_id))
            if known is not None and known.status is not CommandStatus.ACKED:
                self._store.command_answered(known.correlation_id, CommandStatus.ACKED)
                self._request_reconcile(outcome.cabinet)

    def _on_received(self, outcome: Received, retained: bool) -> None:
        cabinet, message = outcome.cabinet, outcome.message
        live = self._live[cabinet]
        if isinstance(message, Status):
            self._on_status(cabinet, live, message, retained)
            return
        if isinstance(message, Heartbeat):
            self._seen(cabinet)
            now = time.monotonic()
            self._came_online(cabinet, live, str(message.boot_id))
            if now - live.heartbeat_saved > 10.0:
                live.heartbeat_saved = now
                self._store.set_cabinet_status(cabinet, "online", heartbeat=True)
            return
        if isinstance(message, InventorySnapshot):  # only via _parse_latest
            return
        self._seen(cabinet)
        if live.online is not True:
            self._came_online(cabinet, live, None)
        if isinstance(message, CardInserted | CardRemoved):
            # Always followed by a snapshot (a state change or a fault): compare only with that.
            self._note_applied(cabinet, message.counter)
        if isinstance(message, SecurityEvent):
            self._audit_entry(
                cabinet,
                "event.security",
                {
                    "cabinet": cabinet,
                    "kind": message.kind.value,
                    "channel": None if message.channel is None else message.channel.value,
                },
            )
        elif isinstance(message, SlotOpened):
            self._on_slot_opened(cabinet, message)
        elif isinstance(message, CardInserted):
            self._on_card_inserted(cabinet, message)
        elif isinstance(message, CardRemoved):
            self._on_card_removed(cabinet, message)
        elif isinstance(message, DoorClosed):
            self._on_door_closed(cabinet, message)
        elif isinstance(message, FaultEvent):
            self._on_fault(cabinet, message)

    def _on_status(self, cabinet: str, live: _Live, message: Status, retained: bool) -> None:
        boot = str(message.boot_id)
        if message.state == "online":
            if not retained:
                self._seen(cabinet)
            self._note_applied(cabinet, message.counter)
            self._came_online(cabinet, live, boot)
        elif live.online is not False:
            self._went_offline(cabinet, live, message.cause)

    # -- events ---------------------------------------------------------------------------------

    def _event_payload(self, cabinet: str, drawer: int, index: int, **extra: Any) -> dict[str, Any]:
        payload = {"cabinet": cabinet, "slot": slot_code(drawer, index)}
        payload.update({k: v for k, v in extra.items() if v is not None})
        return payload

    def _on_slot_opened(self, cabinet: str, event: SlotOpened) -> None:
        command = None
        if event.command_id is not None:
            command = self._store.command_performed(str(event.command_id))
        op = self._slot_ops.get((cabinet, event.drawer, event.index))
        if (
            op is not None
            and command is not None
            and str(op.correlation_id) == command.correlation_id
        ):
            op.opened = True
        self._audit_entry(
            cabinet,
            "event.slot_opened",
            self._event_payload(
                cabinet,
                event.drawer,
                event.index,
                command_id=None if event.command_id is None else str(event.command_id),
                correlation_id=None if command is None else command.correlation_id,
            ),
        )

    def _on_card_inserted(self, cabinet: str, event: CardInserted) -> None:
        slot = self._store.slot(cabinet, event.drawer, event.index)
        result: dict[str, Any] = {}
        if slot is None:
            result["result"] = "unknown_slot"
        elif slot.state is SlotState.RESERVED and slot.application_id is not None:
            if event.card_serial == slot.card_serial:
                card = self._store.complete_deposit(slot.application_id)
                self._notify(card, None)
                self._finish_slot(slot, Outcome.STOCKED)
                result = {"application_id": card.application_id, "card_state": card.state.value}
            else:
                result = self._discrepancy_from_event(
                    slot, DiscrepancyKind.WRONG_CARD, event.card_serial
                )
        elif slot.state is SlotState.OCCUPIED and slot.card_serial == event.card_serial:
            result["result"] = "already_applied"
        elif slot.state is SlotState.FAULT:
            result["result"] = "slot_has_open_discrepancy"
        else:
            kind = (
                DiscrepancyKind.UNEXPECTED_CARD
                if slot.card_serial is None
                else DiscrepancyKind.WRONG_CARD
            )
            result = self._discrepancy_from_event(slot, kind, event.card_serial)
        self._audit_entry(
            cabinet,
            "event.card_inserted",
            self._event_payload(
                cabinet,
                event.drawer,
                event.index,
                card_serial=event.card_serial,
                expected_serial=event.expected_serial,
                **result,
            ),
        )

    def _on_card_removed(self, cabinet: str, event: CardRemoved) -> None:
        slot = self._store.slot(cabinet, event.drawer, event.index)
        result: dict[str, Any] = {}
        if slot is None:
            result["result"] = "unknown_slot"
        elif slot.state is SlotState.OPEN_FOR_RETRIEVAL and slot.application_id is not None:
            card = self._store.complete_open(slot.application_id)
            self._notify(card, None)
            self._finish_slot(
                slot, Outcome.ISSUED if card.state is CardState.ISSUED else Outcome.RETURNED
            )
            result = {"application_id": card.application_id, "card_state": card.state.value}
        elif slot.state in (SlotState.EMPTY, SlotState.FAULT):
            result["result"] = "already_applied"
        else:
            kind = (
                DiscrepancyKind.MISSING_CARD
                if slot.state is SlotState.OCCUPIED
                else DiscrepancyKind.STATE_MISMATCH
            )
            result = self._discrepancy_from_event(slot, kind, None)
        self._audit_entry(
            cabinet,
            "event.card_removed",
            self._event_payload(
                cabinet, event.drawer, event.index, card_serial=event.card_serial, **result
            ),
        )

    def _on_door_closed(self, cabinet: str, event: DoorClosed) -> None:
        slot = self._store.slot(cabinet, event.drawer, event.index)
        result: dict[str, Any] = {}
        op = self._slot_ops.get((cabinet, event.drawer, event.index))
        in_flight = slot is not None and slot.state in (
            SlotState.RESERVED,
            SlotState.OPEN_FOR_RETRIEVAL,
        )
        if in_flight and (op is None or not op.opened):
            # Which opening closed?  Not one we saw open: an earlier one's event arriving after
            # the next command went out, or one from before a controller restart.  The sensors
            # decide (reconciliation), not the guess.
            if op is None:
                self._live[cabinet].unsettled = True  # a scan, then the sensors decide
                self._request_reconcile(cabinet)
            result["result"] = "earlier_opening" if op is not None else "reconcile"
        elif slot is not None and slot.application_id is not None:
            if slot.state is SlotState.RESERVED and not event.card_present:
                card = self._store.release_deposit(slot.application_id)
                self._notify(card, None)
                self._finish_slot(slot, Outcome.NOT_DEPOSITED)
                result = {"application_id": card.application_id, "card_state": card.state.value}
            elif slot.state is SlotState.OPEN_FOR_RETRIEVAL and event.card_present:
                card = self._store.cancel_open(slot.application_id)
                self._notify(card, None)
                self._finish_slot(slot, Outcome.NOT_TAKEN)
                result = {"application_id": card.application_id, "card_state": card.state.value}
            if "card_state" in result:
                self._note_applied(cabinet, event.counter)
            elif slot.state in (SlotState.RESERVED, SlotState.OPEN_FOR_RETRIEVAL):
                # The insert/removal event should have come first: one was lost (we were away
                # when it was published).  A scan, then the sensors decide.
                self._live[cabinet].unsettled = True
                self._request_reconcile(cabinet)
                result["result"] = "reconcile"
        self._audit_entry(
            cabinet,
            "event.door_closed",
            self._event_payload(
                cabinet, event.drawer, event.index, card_present=event.card_present, **result
            ),
        )

    def _on_fault(self, cabinet: str, event: FaultEvent) -> None:
        payload: dict[str, Any] = {"cabinet": cabinet, "code": event.code.value}
        if event.drawer is not None and event.index is not None:
            payload["slot"] = slot_code(event.drawer, event.index)
        self._audit_entry(cabinet, "event.fault", payload)
        # A faulted slot is cleared only by a scan; the reconciler scans and compares.
        self._request_reconcile(cabinet)

    def _discrepancy_from_event(
        self, slot: StoredSlot, kind: DiscrepancyKind, sensed: str | None
    ) -> dict[str, Any]:
        found = Discrepancy(
            slot.cabinet,
            slot.drawer,
            slot.index,
            kind,
            slot.card_serial,
            sensed,
            slot.application_id,
        )
        record_id = self._raise(found)
        return {"discrepancy_id": record_id}

    def _raise(self, found: Discrepancy) -> int:
        record, new = self._store.raise_discrepancy(
            found.cabinet,
            found.drawer,
            found.index,
            found.kind,
            expected_serial=found.expected_serial,
            sensed_serial=found.sensed_serial,
            application_id=found.application_id,
        )
        if new:
            payload: dict[str, Any] = {
                "discrepancy_id": record.id,
                "cabinet": found.cabinet,
                "kind": found.kind.value,
            }
            if found.drawer is not None and found.index is not None:
                payload["slot"] = slot_code(found.drawer, found.index)
            for name in ("expected_serial", "sensed_serial", "application_id"):
                value = getattr(found, name)
                if value is not None:
                    payload[name] = value
            self._audit_entry(_CONTROLLER, "discrepancy.raised", payload)
            if found.application_id is not None:
                card = self._store.card(found.application_id)
                if card is not None:
                    self._notify(card, None)
        if found.drawer is not None and found.index is not None:
            op = self._slot_ops.get((found.cabinet, found.drawer, found.index))
            if op is not None:
                self._finish(
                    op, Outcome.DISCREPANCY, reason=found.kind.value, discrepancy=record.id
                )
        return record.id

    # -- operations and listeners ---------------------------------------------------------------

    def _finish_slot(self, slot: StoredSlot, outcome: Outcome, reason: str | None = None) -> None:
        op = self._slot_ops.get((slot.cabinet, slot.drawer, slot.index))
        if op is not None and op.application_id == slot.application_id:
            self._finish(op, outcome, reason=reason)

    def _finish(
        self,
        op: SlotOperation,
        outcome: Outcome,
        *,
        reason: str | None = None,
        discrepancy: int | None = None,
    ) -> None:
        key = op.key
        if key is not None and self._slot_ops.get(key) is op:
            del self._slot_ops[key]
        self._finished[op.correlation_id] = op
        while len(self._finished) > _FINISHED_KEPT:
            self._finished.popitem(last=False)
        if not op.done.done():
            assert op.drawer is not None and op.index is not None
            op.done.set_result(
                OperationResult(
                    outcome, op.cabinet, op.drawer, op.index, op.application_id, reason, discrepancy
                )
            )

    @staticmethod
    def _fail_ack(op: SlotOperation, exc: BaseException) -> None:
        if not op.ack.done():
            op.ack.set_exception(exc)
            op.ack.exception()  # retrieved here: a caller that stopped waiting is no error

    def _notify(self, card: CardRecord, actor: str | None) -> None:
        change = CardChange(
            card.application_id,
            card.state,
            actor or card.officer or _CONTROLLER,
            card.cabinet,
            card.slot,
        )
        for listener in self._listeners:
            try:
                listener(change)
            except Exception as exc:
                # A listener (the lead's purge of personal data) failing must not stop the
                # controller; it is recorded, and the card's state says what is still due.
                log.exception("card listener failed")
                self._audit_entry(
                    _CONTROLLER,
                    "listener.failed",
                    {
                        "application_id": card.application_id,
                        "card_state": card.state.value,
                        "error": type(exc).__name__,
                    },
                )

    # -- reconciliation -------------------------------------------------------------------------

    def _request_reconcile(self, cabinet: str) -> None:
        live = self._live.get(cabinet)
        if live is not None:
            live.wake.set()

    async def _reconciler(self, cabinet: str) -> None:
        live = self._live[cabinet]
        while True:
            await live.wake.wait()
            live.wake.clear()
            if not self._connected.is_set():
                continue  # _on_connected wakes us again
            try:
                await self._reconcile_cabinet(cabinet, live)
            except (LinkError, CommandTimeoutError, CabinetError, TimeoutError) as exc:
                # Deferred, not dropped: the next connect, status or event wakes us again.
                live.deferred = type(exc).__name__
                self._audit_entry(
                    _CONTROLLER,
                    "reconcile.deferred",
                    {"cabinet": cabinet, "reason": _short(str(exc))},
                )

    def _parse_latest(self, live: _Live) -> None:
        raw, live.raw = live.raw, None
        if raw is None:
            return
        outcome = self._proto.receive(raw.topic, raw.payload, now=_utcnow())
        if isinstance(outcome, Received) and isinstance(outcome.message, InventorySnapshot):
            live.snapshot = outcome.message
            if not raw.retain:
                live.last_seen = time.monotonic()
        elif not isinstance(outcome, Duplicate):
            self._dispatch(outcome, raw.retain)

    async def _snapshot_after(self, live: _Live, counter: int) -> InventorySnapshot:
        """The cabinet's latest snapshot once it is newer than report ``counter``."""

        async def until() -> InventorySnapshot:
            while True:
                self._parse_latest(live)
                if live.snapshot is not None and live.snapshot.counter > counter:
                    return live.snapshot
                await self._wait_arrival(live)

        try:
            async with asyncio.timeout(self._snapshot_wait):
                return await until()
        except TimeoutError:
            raise CabinetError(
                f"cabinet {live.record.cabinet}: no inventory newer than report {counter}"
            ) from None

    async def _fresh_snapshot(self, cabinet: str, live: _Live) -> InventorySnapshot:
        """A snapshot newer than every report applied to the store; a scan if none comes."""
        try:
            return await self._snapshot_after(live, live.applied)
        except CabinetError:
            if live.online is not True:
                raise CabinetOfflineError(cabinet) from None
        return await self.scan(cabinet)

    async def _reconcile_cabinet(self, cabinet: str, live: _Live) -> None:
        scanned = False
        while True:
            if live.unsettled and not scanned:
                # A barrier: the scan goes out on the cmd topic after every unanswered command,
                # so the cabinet has seen them all (or never will) before it reads its sensors,
                # and the snapshot it then publishes says what became of them.
                if live.online is not True:
                    raise CabinetOfflineError(cabinet)
                scanned = True
                live.unsettled = False
                snapshot = await self.scan(cabinet)
            else:
                snapshot = await self._fresh_snapshot(cabinet, live)
            self._parse_latest(live)  # anything that arrived meanwhile
            snapshot = live.snapshot or snapshot
            if snapshot.counter <= live.applied:
                continue  # an event overtook it while we waited: wait for the next one
            slots = self._store.slot_map(cabinet)
            faulted = {(s.drawer, s.index) for s in snapshot.slots if s.state is SlotState.FAULT}
            unknown_faults = faulted - {
                (s.drawer, s.index) for s in slots if s.state is SlotState.FAULT
            }
            if unknown_faults and not scanned and live.online:
                # A faulted slot says nothing about its card until the sensors are read again.
                scanned = True
                await self.scan(cabinet)
                continue
            if live.unsettled:
                scanned = False  # another command went unanswered meanwhile: scan again
                continue
            # From here to the end: no await, so no report can slip in between the snapshot
            # check above and the store changes below.
            self._apply_reconciliation(cabinet, live, snapshot, slots)
            return

    def _expected(self, cabinet: str, slots: list[StoredSlot]) -> list[ExpectedSlot]:
        commands = self._store.last_commands(cabinet)
        busy = {
            (getattr(p.command, "drawer", None), getattr(p.command, "index", None))
            for p in self._proto.pending()
            if p.cabinet == cabinet
        }
        expected = []
        for s in slots:
            command = commands.get((s.drawer, s.index))
            performed = command is not None and command.status is CommandStatus.ACKED
            expected.append(
                ExpectedSlot(
                    s.drawer,
                    s.index,
                    s.state,
                    s.card_serial,
                    s.application_id,
                    performed=performed,
                    busy=(s.drawer, s.index) in busy,
                )
            )
        return expected

    def _apply_reconciliation(
        self, cabinet: str, live: _Live, snapshot: InventorySnapshot, slots: list[StoredSlot]
    ) -> None:
        record = live.record
        result = reconcile(
            cabinet,
            snapshot,
            self._expected(cabinet, slots),
            drawers=record.drawers,
            slots_per_drawer=record.slots_per_drawer,
        )
        for correction in result.corrections:
            self._correct(correction)
        for found in result.discrepancies:
            self._raise(found)
        live.deferred = None
        self._audit_entry(
            _CONTROLLER,
            "reconcile.done",
            {
                "cabinet": cabinet,
                "sequence": snapshot.sequence,
                "counter": snapshot.counter,
                "corrections": len(result.corrections),
                "discrepancies": len(result.discrepancies),
            },
        )
        live.reconciles += 1
        event, live.reconciled = live.reconciled, asyncio.Event()
        event.set()

    def _correct(self, correction: Correction) -> None:
        app = correction.application_id
        if app is None:
            return
        kind = correction.kind
        try:
            if kind is CorrectionKind.DEPOSIT_COMPLETED:
                card = self._store.complete_deposit(app)
                outcome = Outcome.STOCKED
            elif kind is CorrectionKind.DEPOSIT_NOT_DONE:
                card = self._store.release_deposit(app)
                outcome = Outcome.NOT_DEPOSITED
            elif kind is CorrectionKind.OPEN_COMPLETED:
                card = self._store.complete_open(app)
                outcome = Outcome.ISSUED if card.state is CardState.ISSUED else Outcome.RETURNED
            else:
                card = self._store.cancel_open(app)
                outcome = Outcome.NOT_TAKEN
        except CardStateError as exc:
            # The card is not where the slot map says: that is a discrepancy, not a correction.
            self._raise(
                Discrepancy(
                    correction.cabinet,
                    correction.drawer,
                    correction.index,
                    DiscrepancyKind.STATE_MISMATCH,
                    correction.card_serial,
                    None,
                    app,
                )
            )
            log.warning("correction %s not applicable: %s", kind.value, exc.reason)
            return
        self._audit_entry(
            _CONTROLLER,
            f"correction.{kind.value}",
            {
                "cabinet": correction.cabinet,
                "slot": slot_code(correction.drawer, correction.index),
                "application_id": app,
                "card_state": card.state.value,
            },
        )
        self._notify(card, None)
        op = self._slot_ops.get((correction.cabinet, correction.drawer, correction.index))
        if op is not None and op.application_id == app:
            self._finish(op, outcome, reason=kind.value)

    # -- audit ----------------------------------------------------------------------------------

    def _audit_entry(self, actor: str, kind: str, payload: dict[str, Any]) -> None:
        self._audit.append(actor, kind, payload)
        for listener in self._audit_listeners:
            try:
                listener(actor, kind, payload)
            except Exception:
                log.exception("audit listener failed")

    def add_audit_listener(self, listener: Callable[[str, str, dict[str, Any]], None]) -> None:
        """Called with (actor, kind, payload) for every entry as it is queued: alarms
        (``security.*``, ``discrepancy.raised``) can go to metrics or a pager from here."""
        self._audit_listeners.append(listener)

    def audit(self, actor: str, kind: str, payload: dict[str, Any]) -> None:
        """Append an entry to the site's audit log, in order with the controller's own (the
        flows' refusals and look-ups go here: one writer, one order)."""
        self._audit_entry(actor, kind, payload)

    @property
    def audit_log(self) -> AuditQueue:
        """The queue in front of the audit writer (``flush()`` before reading the file)."""
        return self._audit

    async def flush_audit(self, timeout: float | None = None) -> None:
        """Until every audit entry so far is on disk."""
        await asyncio.to_thread(self._audit.flush, timeout)


def _short(text: str) -> str:
    """An error text fit for the audit log: printable and short."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned[:200] or "unknown"
