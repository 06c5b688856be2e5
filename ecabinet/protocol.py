"""The cabinet protocol, sans-I/O: a cabinet side and a controller side, no networking, no clock.

Like h11, these objects only turn inputs into outputs.  A transport (aiomqtt, an in-process
broker, a test) moves the bytes; a device (real firmware, the emulator) moves the doors::

    cabinet side                                     controller side
    ────────────                                     ───────────────
    receive(topic, payload) ─► [Action, …]            deposit(…)/open_for_retrieval(…)/… ─► Outgoing
    card_inserted(…)/door_closed(…)/… ─► [Action, …]  receive(topic, payload, now=) ─► Outcome
    connect() ─► ConnectPlan (last will + publishes)  due(now) ─► [Resend | TimedOut, …]
    heartbeat() / disconnect() ─► [Action, …]          snapshot() ─► ControllerState

Rules the cabinet side keeps (issue 6, DESIGN §6):

Rule 1: a command is checked in this order: topic, MAC, command id, counter, age.  Nothing is
        decided about a message before its MAC verifies, so a forger learns nothing and can make
        the cabinet do nothing but report him (:class:`ReportSecurityEvent` and a ``security`` event).
Rule 2: a command id already answered is answered again with the *recorded* ack, byte for byte,
        and nothing is performed: that makes QoS 1 duplicates and controller retries harmless.
        A command id seen before with another MAC is refused (``command_id_conflict``).
Rule 3: a command's counter must be strictly above the last accepted (``stale_counter``
        otherwise, with the cabinet's last counter so an honest controller can resynchronise).
        Refusals before the command (stale, expired, conflict) take no counter and record nothing.
Rule 4: write-ahead: every action list that changes what must survive a power loss (the last
        counter, the recorded acks, the report counter reservation, the slots) starts with
        :class:`PersistState`.  The device persists it before doing anything else in the list, so
        a slot is never opened for a command that a restart would let through again: physical
        actions happen at most once, and a lost one shows up as a missing event, never a repeat.
Rule 5: the cabinet reports what its sensors say and never guesses: a sensor input the slot table
        does not expect faults the slot (:mod:`ecabinet.slots` Rule 4), and a slot that was open
        when the cabinet booted is faulted until an inventory scan says what is in it.
Rule 6: the retained snapshot is published on connect and after an inventory scan at once, and
        after other changes at most once per ``inventory_interval`` when one is set (None: after
        every change).  The events carry each change as it happens; the snapshot is what a
        controller that was away reconciles against, so a newer one supersedes any older one and
        sending one per change would only cost (a 500-slot snapshot is ~40 kB to seal and check).
        A transport calls :meth:`CabinetProtocol.flush_inventory` at
        :meth:`CabinetProtocol.inventory_due`.

The controller side builds commands (ids, counters, MACs), matches acks by correlation id, verifies
the cabinet's MACs and counters (per channel, since MQTT orders messages per topic only: MQTT 5.0
4.6), tracks deadlines against the caller's ``now`` and says when to resend (same bytes: same
command id, same counter, so the cabinet answers with its recorded ack) and when a refusal calls
for a re-issue (new command id and counter, same correlation id).
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecabinet.errors import BadMacError, MalformedMessageError, ReplayError, WrongTopicError
from ecabinet.messages import (
    Ack,
    AckStatus,
    CardInserted,
    CardRemoved,
    DepositCommand,
    DoorClosed,
    FaultCode,
    FaultEvent,
    Heartbeat,
    InventoryScanCommand,
    InventorySnapshot,
    LightCommand,
    Message,
    OpenForRetrievalCommand,
    RejectReason,
    ReturnUncollectedCommand,
    SecurityEvent,
    SecurityEventKind,
    SlotOpened,
    SlotReport,
    Status,
    open_message,
    seal,
)
from ecabinet.security import (
    MAX_COUNTER,
    CabinetKeys,
    RandomSource,
    RecentCache,
    SiteKey,
    check_counter,
)
from ecabinet.slots import (
    MAX_DRAWERS,
    MAX_SLOTS_PER_DRAWER,
    SlotEvent,
    SlotState,
    next_state,
    slot_code,
)
from ecabinet.topics import CHANNELS, UP_CHANNELS, Channel, parse_topic, subscription, topic
from ecabinet.topics import check_id as _check_id

__all__ = [
    "REPORT_COUNTER_BLOCK",
    "Acked",
    "Action",
    "CabinetProtocol",
    "CabinetState",
    "CommandMessage",
    "ConnectPlan",
    "ControllerProtocol",
    "ControllerState",
    "Duplicate",
    "LightSlot",
    "OpenPurpose",
    "OpenSlot",
    "Outcome",
    "Outgoing",
    "PendingCommand",
    "PersistState",
    "Publish",
    "Received",
    "RecordedAck",
    "Refused",
    "Reissued",
    "Rejected",
    "ReportSecurityEvent",
    "Resend",
    "ScanSlots",
    "SlotRecord",
    "TimedOut",
    "UnmatchedAck",
]

#: Report counters are reserved in blocks, so a heartbeat does not cost a flash write: after a
#: restart the cabinet resumes above the reserved block and never reuses a counter.
REPORT_COUNTER_BLOCK: Final = 64

CommandMessage = (
    DepositCommand
    | OpenForRetrievalCommand
    | LightCommand
    | InventoryScanCommand
    | ReturnUncollectedCommand
)
_Report = SlotOpened | CardInserted | CardRemoved | DoorClosed | FaultEvent | SecurityEvent
_R = TypeVar("_R", SlotOpened, CardInserted, CardRemoved, DoorClosed, FaultEvent, SecurityEvent)


def _new_uuid(random: RandomSource) -> UUID:
    return UUID(bytes=random(16), version=4)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


# == cabinet side: actions =======================================================================


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def __repr__(self) -> str:
        return f"Publish({self.topic!r}, {len(self.payload)} bytes, qos={self.qos}, retain={self.retain})"


class OpenPurpose(StrEnum):
    DEPOSIT = "deposit"
    RETRIEVAL = "retrieval"
    RETURN = "return"


@dataclass(frozen=True, slots=True)
class OpenSlot:
    """Unlock the slot's door; the device reports ``slot_opened`` when it has."""

    drawer: int
    index: int
    purpose: OpenPurpose
    command_id: UUID


@dataclass(frozen=True, slots=True)
class LightSlot:
    """Light the slot; ``duration_ms=None``: until its door closes."""

    drawer: int
    index: int
    duration_ms: int | None
    command_id: UUID


@dataclass(frozen=True, slots=True)
class ScanSlots:
    """Read every slot's card sensor and call :meth:`CabinetProtocol.scan_result`."""

    command_id: UUID


@dataclass(frozen=True, slots=True)
class PersistState:
    """Write ``state`` durably before performing the rest of the action list (Rule 4)."""

    state: CabinetState

    def __repr__(self) -> str:
        s = self.state
        return f"PersistState(command_counter={s.command_counter}, inventory_sequence={s.inventory_sequence})"


@dataclass(frozen=True, slots=True)
class ReportSecurityEvent:
    """A refused message, for the device's own log.  ``reason`` never quotes the message."""

    kind: SecurityEventKind
    channel: Channel | None
    reason: str


Action = Publish | OpenSlot | LightSlot | ScanSlots | PersistState | ReportSecurityEvent


@dataclass(frozen=True, slots=True)
class ConnectPlan:
    """Persist ``persist`` (if any), CONNECT with ``will`` as the last will, then run ``after``.

    The will is the retained ``offline`` status, sealed now with a counter one above the
    ``online`` status in ``after``, so the broker's later delivery of it still verifies and is
    newer than the ``online`` it follows.
    """

    persist: PersistState | None
    will: Publish
    after: tuple[Action, ...]


# == cabinet side: persistent state ==============================================================

_Drawer = Annotated[int, Field(ge=1, le=MAX_DRAWERS)]
_Index = Annotated[int, Field(ge=1, le=MAX_SLOTS_PER_DRAWER)]
_Count = Annotated[int, Field(ge=0, le=MAX_COUNTER)]


class SlotRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    drawer: _Drawer
    index: _Index
    state: SlotState = SlotState.EMPTY
    card_serial: str | None = None
    expected_serial: str | None = None


class RecordedAck(BaseModel):
    """A command id answered: the command's MAC (to tell a duplicate from a conflict) and the
    ack payload exactly as sent (to send it again)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: UUID
    mac: str
    ack: str


class CabinetState(BaseModel):
    """What a cabinet must keep across power loss (JSON via ``model_dump_json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    drawers: _Drawer
    slots_per_drawer: _Index
    command_counter: _Count = 0
    report_counter_reserved: _Count = 0
    inventory_sequence: _Count = 0
    clean_shutdown: bool = True
    slots: tuple[SlotRecord, ...]
    recent: tuple[RecordedAck, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> CabinetState:
        expected = [
            (d, i) for d in range(1, self.drawers + 1) for i in range(1, self.slots_per_drawer + 1)
        ]
        if [(s.drawer, s.index) for s in self.slots] != expected:
            raise ValueError("slots must list every slot once, in drawer then index order")
        return self

    @classmethod
    def empty(cls, drawers: int, slots_per_drawer: int) -> CabinetState:
        """A new cabinet: every slot empty, no counter used."""
        return cls(
            drawers=drawers,
            slots_per_drawer=slots_per_drawer,
            slots=tuple(
                SlotRecord(drawer=d, index=i)
                for d in range(1, drawers + 1)
                for i in range(1, slots_per_drawer + 1)
            ),
        )


_UNSET: Final[Any] = object()


@dataclass(slots=True)
class _SlotNow:
    """A slot's live record, with its persisted and published forms cached until it changes: a
    500-slot cabinet then rebuilds one record per command, not five hundred."""

    drawer: int
    index: int
    state: SlotState
    card_serial: str | None
    expected_serial: str | None
    _record: SlotRecord | None = None
    _report: SlotReport | None = None

    def update(
        self,
        *,
        state: SlotState | None = None,
        card_serial: str | None = _UNSET,
        expected_serial: str | None = _UNSET,
    ) -> None:
        if state is not None:
            self.state = state
        if card_serial is not _UNSET:
            self.card_serial = card_serial
        if expected_serial is not _UNSET:
            self.expected_serial = expected_serial
        self._record = self._report = None

    def record(self) -> SlotRecord:
        if self._record is None:
            # Built from checked values: model_construct skips re-validating them on every change.
            self._record = SlotRecord.model_construct(
                drawer=self.drawer,
                index=self.index,
                state=self.state,
                card_serial=self.card_serial,
                expected_serial=self.expected_serial,
            )
        return self._record

    def report(self) -> SlotReport:
        if self._report is None:
            self._report = SlotReport.model_construct(
                drawer=self.drawer, index=self.index, state=self.state, card_serial=self.card_serial
            )
        return self._report


# == cabinet side: the protocol object ===========================================================


class CabinetProtocol:
    """One cabinet's protocol state.  Not thread-safe: drive it from one task."""

    def __init__(
        self,
        site: str,
        cabinet: str,
        keys: CabinetKeys,
        state: CabinetState,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random: RandomSource = os.urandom,
        recent_limit: int = 256,
        max_command_age: timedelta | None = None,
        inventory_interval: timedelta | None = None,
    ) -> None:
        self.site = _check_id(site, "site")
        self.cabinet = _check_id(cabinet, "cabinet")
        self._keys = keys
        self._clock = clock
        self._random = random
        self._max_age = max_command_age
        self._topic = {c: topic(site, cabinet, c) for c in Channel}
        self._drawers = state.drawers
        self._per_drawer = state.slots_per_drawer
        self._command_counter = state.command_counter
        # Every counter up to the reservation may have been used before the restart.
        self._report_counter = state.report_counter_reserved
        self._reserved = state.report_counter_reserved
        self._sequence = state.inventory_sequence
        self._recent: RecentCache[UUID, RecordedAck] = RecentCache(
            recent_limit, {r.command_id: r for r in state.recent}
        )
        self._slots = {
            (s.drawer, s.index): _SlotNow(
                s.drawer, s.index, s.state, s.card_serial, s.expected_serial
            )
            for s in state.slots
        }
        self.boot_id = _new_uuid(random)
        self._clean = False
        self._dirty = True  # clean_shutdown goes False until disconnect(): persist that first
        self._inventory_changed = False
        # Rule 6: with an interval, change-driven snapshots are coalesced (see inventory_due).
        if inventory_interval is not None and inventory_interval < timedelta(0):
            raise ValueError("inventory_interval must not be negative")
        self._inventory_interval = inventory_interval
        self._inventory_sent: datetime | None = None
        self._inventory_pending = False
        self._boot_reports: list[_Report] = []
        now = self._now()
        if not state.clean_shutdown:
            self._boot_reports.append(self._event(FaultEvent, now, code=FaultCode.POWER_LOSS))
        for (drawer, index), slot in self._slots.items():
            # Open when the cabinet went down: nobody knows what happened since (Rule 5).
            if slot.state in (SlotState.RESERVED, SlotState.OPEN_FOR_RETRIEVAL):
                self._move(drawer, index, SlotEvent.FAULT)
                self._boot_reports.append(
                    self._event(
                        FaultEvent, now, code=FaultCode.POWER_LOSS, drawer=drawer, index=index
                    )
                )

    def __repr__(self) -> str:
        return (
            f"CabinetProtocol(site={self.site!r}, cabinet={self.cabinet!r}, boot_id={self.boot_id})"
        )

    # -- state --------------------------------------------------------------------------------

    def snapshot(self) -> CabinetState:
        return CabinetState(
            drawers=self._drawers,
            slots_per_drawer=self._per_drawer,
            command_counter=self._command_counter,
            report_counter_reserved=self._reserved,
            inventory_sequence=self._sequence,
            clean_shutdown=self._clean,
            slots=tuple(s.record() for s in self._slots.values()),
            recent=tuple(r for _, r in self._recent.items()),
        )

    def slot_state(self, drawer: int, index: int) -> SlotState:
        return self._slot(drawer, index).state

    def inventory(self) -> InventorySnapshot:
        """The snapshot as it would be published now (unsealed, counter not taken)."""
        return self._inventory_message(counter=1, now=self._now())

    # -- session ------------------------------------------------------------------------------

    def connect(self) -> ConnectPlan:
        now = self._now()
        online = self._status("online", "connect", now)
        will = self._status("offline", "lost", now)
        after: list[Action] = [online]
        after.extend(self._publish_report(Channel.EVT, r) for r in self._boot_reports)
        self._boot_reports.clear()
        # A (re)connecting cabinet always refreshes its retained snapshot.
        actions = self._flush(after, publish_inventory=True)
        persist = actions[0] if actions and isinstance(actions[0], PersistState) else None
        rest = tuple(actions[1:] if persist is not None else actions)
        return ConnectPlan(persist=persist, will=will, after=rest)

    def disconnect(self) -> list[Action]:
        """A clean shutdown: the retained ``offline`` status (then DISCONNECT discards the will)."""
        self._clean = True
        self._dirty = True
        return self._flush([self._status("offline", "shutdown", self._now())])

    def heartbeat(self) -> list[Action]:
        message = Heartbeat(
            counter=self._next_report_counter(),
            issued_at=self._now(),
            boot_id=self.boot_id,
            inventory_sequence=self._sequence,
        )
        return self._flush([self._sealed(Channel.HEARTBEAT, message)])

    # -- commands -----------------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes) -> list[Action]:
        """Handle one message from the ``cmd`` topic (Rules 1-4)."""
        try:
            parse_topic(topic, site=self.site, cabinet=self.cabinet, channels=(Channel.CMD,))
        except WrongTopicError as exc:
            return self._alarm(SecurityEventKind.WRONG_TOPIC, None, str(exc))
        try:
            command = open_message(Channel.CMD, payload, self._keys.command)
        except BadMacError:
            return self._alarm(SecurityEventKind.BAD_MAC, Channel.CMD, "command MAC did not verify")
        except MalformedMessageError as exc:
            return self._alarm(SecurityEventKind.MALFORMED, Channel.CMD, str(exc))
        assert isinstance(command, CommandMessage)  # the cmd adapter parses commands only
        assert command.mac is not None  # open_message verified it

        recorded = self._recent.get(command.command_id)
        if recorded is not None:
            if hmac.compare_digest(recorded.mac, command.mac):
                return [self._publish_raw(Channel.ACK, recorded.ack.encode("utf-8"))]
            return self._refuse(
                command, RejectReason.COMMAND_ID_CONFLICT, SecurityEventKind.COMMAND_ID_CONFLICT
            )
        try:
            check_counter(command.counter, self._command_counter, channel=Channel.CMD.value)
        except ReplayError:
            return self._refuse(command, RejectReason.STALE_COUNTER, SecurityEventKind.REPLAY)
        now = self._now()
        if self._max_age is not None and now - command.issued_at > self._max_age:
            return self._refuse(command, RejectReason.EXPIRED, SecurityEventKind.EXPIRED)

        self._command_counter = command.counter
        self._dirty = True
        reason, actions = self._perform(command)
        ack = self._ack(command, now, reason)
        self._recent.put(
            command.command_id,
            RecordedAck(
                command_id=command.command_id, mac=command.mac, ack=ack.payload.decode("utf-8")
            ),
        )
        return self._flush([*actions, ack])

    def _perform(self, command: CommandMessage) -> tuple[RejectReason | None, list[Action]]:
        if command.response_topic != self._topic[Channel.ACK]:
            # The cabinet may publish on its own topics only (broker ACL): answer there, and say so.
            return RejectReason.RESPONSE_TOPIC, []
        if isinstance(command, InventoryScanCommand):
            return None, [ScanSlots(command.command_id)]
        position = (command.drawer, command.index)
        slot = self._slots.get(position)
        if slot is None:
            return RejectReason.UNKNOWN_SLOT, []
        cid = command.command_id
        if isinstance(command, LightCommand):
            return None, [LightSlot(*position, command.duration_ms, cid)]
        if isinstance(command, DepositCommand):
            if slot.state is not SlotState.EMPTY:
                return RejectReason.SLOT_STATE, []
            self._move(*position, SlotEvent.RESERVE)
            slot.update(expected_serial=command.card_serial)
            return None, [
                LightSlot(*position, None, cid),
                OpenSlot(*position, OpenPurpose.DEPOSIT, cid),
            ]
        # Retrieval and return: the cabinet checks the card itself, so a slot is never opened for
        # a card it does not hold, whatever the controller's slot map says.
        if slot.state is not SlotState.OCCUPIED:
            return RejectReason.SLOT_STATE, []
        if slot.card_serial != command.card_serial:
            return RejectReason.SERIAL_MISMATCH, []
        self._move(*position, SlotEvent.OPEN)
        purpose = (
            OpenPurpose.RETRIEVAL
            if isinstance(command, OpenForRetrievalCommand)
            else OpenPurpose.RETURN
        )
        return None, [LightSlot(*position, None, cid), OpenSlot(*position, purpose, cid)]

    def _ack(self, command: CommandMessage, now: datetime, reason: RejectReason | None) -> Publish:
        ack = Ack(
            counter=self._next_report_counter(),
            issued_at=now,
            command_id=command.command_id,
            correlation_id=command.correlation_id,
            status=AckStatus.ACCEPTED if reason is None else AckStatus.REJECTED,
            reason=reason,
            last_counter=self._command_counter if reason is RejectReason.STALE_COUNTER else None,
        )
        return self._sealed(Channel.ACK, ack)

    def _refuse(
        self, command: CommandMessage, reason: RejectReason, kind: SecurityEventKind
    ) -> list[Action]:
        """Refused before the command (Rule 3): a nack, no counter taken, nothing recorded."""
        note = ReportSecurityEvent(kind, Channel.CMD, f"authentic command refused: {reason.value}")
        return self._flush([note, self._ack(command, self._now(), reason)])

    def _alarm(self, kind: SecurityEventKind, channel: Channel | None, reason: str) -> list[Action]:
        event = self._event(SecurityEvent, self._now(), kind=kind, channel=channel)
        return self._flush(
            [ReportSecurityEvent(kind, channel, reason), self._publish_report(Channel.EVT, event)]
        )

    # -- device inputs ------------------------------------------------------------------------

    def slot_opened(self, drawer: int, index: int, command_id: UUID | None = None) -> list[Action]:
        self._slot(drawer, index)
        event = self._event(
            SlotOpened, self._now(), drawer=drawer, index=index, command_id=command_id
        )
        return self._flush([self._publish_report(Channel.EVT, event)])

    def card_inserted(self, drawer: int, index: int, serial: str) -> list[Action]:
        slot = self._slot(drawer, index)
        now = self._now()
        expected = slot.expected_serial
        reports: list[_Report] = [
            self._event(
                CardInserted,
                now,
                drawer=drawer,
                index=index,
                card_serial=serial,
                expected_serial=expected,
            )
        ]
        if slot.state is SlotState.RESERVED:
            self._move(drawer, index, SlotEvent.CARD_INSERTED)
        else:
            reports.append(self._sensor_fault(drawer, index, now))
        slot.update(card_serial=serial, expected_serial=None)
        self._dirty = True
        return self._flush([self._publish_report(Channel.EVT, r) for r in reports])

    def card_removed(self, drawer: int, index: int) -> list[Action]:
        slot = self._slot(drawer, index)
        now = self._now()
        reports: list[_Report] = [
            self._event(CardRemoved, now, drawer=drawer, index=index, card_serial=slot.card_serial)
        ]
        if slot.state is SlotState.OPEN_FOR_RETRIEVAL:
            self._move(drawer, index, SlotEvent.CARD_REMOVED)
        else:
            reports.append(self._sensor_fault(drawer, index, now))
        slot.update(card_serial=None)
        self._dirty = True
        return self._flush([self._publish_report(Channel.EVT, r) for r in reports])

    def door_closed(self, drawer: int, index: int) -> list[Action]:
        slot = self._slot(drawer, index)
        if slot.state is SlotState.RESERVED:
            self._move(drawer, index, SlotEvent.RELEASE)  # the deposit did not happen
            slot.update(expected_serial=None)
        elif slot.state is SlotState.OPEN_FOR_RETRIEVAL:
            self._move(drawer, index, SlotEvent.CLOSED_UNCOLLECTED)
        event = self._event(
            DoorClosed,
            self._now(),
            drawer=drawer,
            index=index,
            card_present=slot.card_serial is not None,
        )
        return self._flush([self._publish_report(Channel.EVT, event)])

    def fault(
        self, code: FaultCode, drawer: int | None = None, index: int | None = None
    ) -> list[Action]:
        if (drawer is None) != (index is None):
            raise ValueError("give both drawer and index, or neither")
        if drawer is not None and index is not None:
            self._slot(drawer, index)
            self._move(drawer, index, SlotEvent.FAULT)
        event = self._event(FaultEvent, self._now(), code=code, drawer=drawer, index=index)
        return self._flush([self._publish_report(Channel.EVT, event)])

    def scan_result(self, sensed: Mapping[tuple[int, int], str | None]) -> list[Action]:
        """What the card sensors read, slot -> serial or None; always ends in a fresh snapshot.

        A faulted slot is cleared to what is sensed.  An idle slot whose sensor disagrees with the
        record faults and takes the sensed serial (the controller reconciles; the cabinet does not
        guess which is right).  Slots open mid-operation are left alone.
        """
        now = self._now()
        reports: list[_Report] = []
        for (drawer, index), serial in sorted(sensed.items()):
            slot = self._slot(drawer, index)
            if slot.state is SlotState.FAULT:
                cleared = SlotEvent.CLEARED_EMPTY if serial is None else SlotEvent.CLEARED_OCCUPIED
                self._move(drawer, index, cleared)
            elif slot.state in (SlotState.EMPTY, SlotState.OCCUPIED) and serial != slot.card_serial:
                reports.append(self._sensor_fault(drawer, index, now))
            else:
                continue
            slot.update(card_serial=serial, expected_serial=None)
            self._inventory_changed = True
        return self._flush(
            [self._publish_report(Channel.EVT, r) for r in reports], publish_inventory=True
        )

    # -- inventory coalescing (Rule 6) ----------------------------------------------------------

    def inventory_due(self) -> datetime | None:
        """When a coalesced snapshot is due (call :meth:`flush_inventory` then), or None."""
        if not self._inventory_pending or self._inventory_interval is None:
            return None
        if self._inventory_sent is None:
            return self._now()
        return self._inventory_sent + self._inventory_interval

    def flush_inventory(self) -> list[Action]:
        """The pending snapshot, if one is waiting (an early call publishes it early)."""
        if not self._inventory_pending:
            return []
        return self._flush([], publish_inventory=True)

    def _inventory_may_go(self, now: datetime) -> bool:
        if self._inventory_interval is None or self._inventory_sent is None:
            return True
        return now - self._inventory_sent >= self._inventory_interval

    # -- helpers ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return _aware(self._clock())

    def _slot(self, drawer: int, index: int) -> _SlotNow:
        slot = self._slots.get((drawer, index))
        if slot is None:
            raise ValueError(f"no slot {drawer}/{index} in this cabinet")
        return slot

    def _move(self, drawer: int, index: int, event: SlotEvent) -> None:
        slot = self._slots[(drawer, index)]
        slot.update(state=next_state(slot.state, event, slot=slot_code(drawer, index)))
        self._dirty = True
        self._inventory_changed = True

    def _sensor_fault(self, drawer: int, index: int, now: datetime) -> FaultEvent:
        self._move(drawer, index, SlotEvent.FAULT)
        return self._event(
            FaultEvent, now, code=FaultCode.SENSOR_MISMATCH, drawer=drawer, index=index
        )

    def _next_report_counter(self) -> int:
        self._report_counter += 1
        if self._report_counter > self._reserved:
            self._reserved = self._report_counter + REPORT_COUNTER_BLOCK - 1
            self._dirty = True
        return self._report_counter

    def _event(self, model: type[_R], now: datetime, **fields: Any) -> _R:
        # Counter 1 is a placeholder: a report takes its real counter when published, in order.
        return model(counter=1, issued_at=now, event_id=_new_uuid(self._random), **fields)

    def _publish_report(self, channel: Channel, report: Message) -> Publish:
        numbered = report.model_copy(update={"counter": self._next_report_counter()})
        return self._sealed(channel, numbered)

    def _sealed(self, channel: Channel, message: Message) -> Publish:
        _, payload = seal(message, self._keys.report)
        return self._publish_raw(channel, payload)

    def _publish_raw(self, channel: Channel, payload: bytes) -> Publish:
        spec = CHANNELS[channel]
        return Publish(self._topic[channel], payload, spec.qos, spec.retain)

    def _status(self, state: Literal["online", "offline"], cause: Any, now: datetime) -> Publish:
        message = Status(
            counter=self._next_report_counter(),
            issued_at=now,
            state=state,
            cause=cause,
            boot_id=self.boot_id,
        )
        return self._sealed(Channel.STATUS, message)

    def _inventory_message(self, counter: int, now: datetime) -> InventorySnapshot:
        return InventorySnapshot(
            counter=counter,
            issued_at=now,
            sequence=max(self._sequence, 1),  # inventory() before the first snapshot
            drawers=self._drawers,
            slots_per_drawer=self._per_drawer,
            slots=tuple(s.report() for s in self._slots.values()),
        )

    def _flush(self, actions: list[Action], *, publish_inventory: bool = False) -> list[Action]:
        """Append the snapshot if the inventory changed (or when asked); PersistState first if
        anything that must survive a power loss changed.  The sequence counts changes only.

        ``publish_inventory=True`` forces a snapshot now (connect, scan); a change alone waits
        for the coalescing interval, if one is set (Rule 6)."""
        if self._inventory_changed:
            self._inventory_changed = False
            self._sequence += 1
            self._dirty = True
            if publish_inventory or self._inventory_may_go(self._now()):
                publish_inventory = True
            else:
                self._inventory_pending = True
        if publish_inventory:
            self._inventory_pending = False
            self._inventory_sent = self._now()
            if self._sequence == 0:  # a new cabinet's first snapshot is number 1
                self._sequence = 1
                self._dirty = True
            snapshot = self._inventory_message(self._next_report_counter(), self._now())
            actions.append(self._sealed(Channel.INVENTORY, snapshot))
        if self._dirty:
            self._dirty = False
            actions.insert(0, PersistState(self.snapshot()))
        return actions


# == controller side =============================================================================


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A sealed command for the transport.  Under MQTT 5 also set the Response Topic property to
    ``response_topic`` and Correlation Data to ``correlation_data``; the payload carries both."""

    cabinet: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    command_id: UUID
    correlation_id: UUID
    response_topic: str

    @property
    def correlation_data(self) -> bytes:
        return self.correlation_id.bytes

    def __repr__(self) -> str:
        return f"Outgoing({self.topic!r}, command_id={self.command_id}, {len(self.payload)} bytes)"


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A command waiting for its ack.  ``attempts`` counts sends of these very bytes."""

    cabinet: str
    command: CommandMessage
    outgoing: Outgoing
    attempts: int
    deadline: datetime
    reissues: int = 0

    @property
    def correlation_id(self) -> UUID:
        return self.command.correlation_id

    @property
    def command_id(self) -> UUID:
        return self.command.command_id


@dataclass(frozen=True, slots=True)
class Acked:
    """The cabinet accepted the command; its physical progress follows as events."""

    cabinet: str
    pending: PendingCommand
    ack: Ack


@dataclass(frozen=True, slots=True)
class Rejected:
    """The cabinet refused the command for good (slot state, wrong card, …); or re-issues ran out."""

    cabinet: str
    pending: PendingCommand
    ack: Ack


@dataclass(frozen=True, slots=True)
class Resend:
    """No ack by the deadline: publish ``pending.outgoing`` again (the same bytes)."""

    pending: PendingCommand


@dataclass(frozen=True, slots=True)
class Reissued:
    """The cabinet refused before performing (stale counter, expired, id conflict): publish
    ``pending.outgoing``, a new command id and counter under the same correlation id."""

    pending: PendingCommand
    previous_command_id: UUID
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Every attempt went unanswered.  Whether the cabinet acted is unknown: reconcile."""

    pending: PendingCommand


@dataclass(frozen=True, slots=True)
class Received:
    """An authentic report.  ``repeat``: a retained message re-delivered unchanged."""

    cabinet: str
    message: (
        SlotOpened
        | CardInserted
        | CardRemoved
        | DoorClosed
        | FaultEvent
        | SecurityEvent
        | InventorySnapshot
        | Heartbeat
        | Status
    )
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A QoS 1 re-delivery of a message already handled: nothing to do."""

    cabinet: str
    channel: Channel


@dataclass(frozen=True, slots=True)
class UnmatchedAck:
    """An authentic, fresh ack for no pending command: late (after a timeout or cancel), or the
    cabinet answering a replayed command (``replay_reported``): audit it, alarm on the latter."""

    cabinet: str
    ack: Ack

    @property
    def replay_reported(self) -> bool:
        return self.ack.reason is not None and self.ack.reason.retryable


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the controller could not trust.  Nothing of it is acted on or echoed."""

    cabinet: str | None
    channel: Channel | None
    kind: SecurityEventKind
    reason: str


Outcome = (
    Acked | Rejected | Resend | Reissued | TimedOut | Received | Duplicate | UnmatchedAck | Refused
)


class ControllerState(BaseModel):
    """Counters a controller keeps across restarts (the store persists it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    site: str
    next_counter: dict[str, Annotated[int, Field(ge=1, le=MAX_COUNTER)]] = Field(
        default_factory=dict
    )
    last_report: dict[str, dict[Channel, _Count]] = Field(default_factory=dict)


_RETAINED: Final = frozenset(c for c in UP_CHANNELS if CHANNELS[c].retain)


@dataclass(order=True, slots=True)
class _Deadline:
    when: datetime
    seq: int
    correlation_id: UUID = field(compare=False)
    attempts: int = field(compare=False)


class ControllerProtocol:
    """The controller's side for one site.  Not thread-safe: drive it from one task."""

    def __init__(
        self,
        site_key: SiteKey,
        *,
        random: RandomSource = os.urandom,
        ack_timeout: timedelta = timedelta(seconds=2),
        max_attempts: int = 3,
        max_reissues: int = 2,
        state: ControllerState | None = None,
        seen_limit: int = 1024,
    ) -> None:
        if ack_timeout <= timedelta(0) or max_attempts < 1 or max_reissues < 0:
            raise ValueError("ack_timeout > 0, max_attempts >= 1, max_reissues >= 0")
        if state is not None and state.site != site_key.site:
            raise ValueError("controller state is for another site")
        self.site = site_key.site
        self._keys = site_key
        self._random = random
        self._timeout = ack_timeout
        self._max_attempts = max_attempts
        self._max_reissues = max_reissues
        self._next: dict[str, int] = dict(state.next_counter) if state else {}
        self._last: dict[str, dict[Channel, int]] = (
            {c: dict(v) for c, v in state.last_report.items()} if state else {}
        )
        self._seen: RecentCache[tuple[str, str], None] = RecentCache(seen_limit)
        self._pending: dict[UUID, PendingCommand] = {}
        self._deadlines: list[_Deadline] = []
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"ControllerProtocol(site={self.site!r}, pending={len(self._pending)})"

    def snapshot(self) -> ControllerState:
        return ControllerState(
            site=self.site,
            next_counter=dict(self._next),
            last_report={c: dict(v) for c, v in self._last.items()},
        )

    def subscriptions(self) -> tuple[tuple[str, int], ...]:
        """(topic filter, QoS) for every channel the controller receives on, all cabinets."""
        return tuple(
            (subscription(self.site, c), CHANNELS[c].qos) for c in Channel if c in UP_CHANNELS
        )

    # -- commands -----------------------------------------------------------------------------

    def deposit(
        self, cabinet: str, drawer: int, index: int, card_serial: str, *, now: datetime
    ) -> Outgoing:
        return self._issue(
            cabinet, DepositCommand, now, drawer=drawer, index=index, card_serial=card_serial
        )

    def open_for_retrieval(
        self, cabinet: str, drawer: int, index: int, card_serial: str, *, now: datetime
    ) -> Outgoing:
        return self._issue(
            cabinet,
            OpenForRetrievalCommand,
            now,
            drawer=drawer,
            index=index,
            card_serial=card_serial,
        )

    def return_uncollected(
        self, cabinet: str, drawer: int, index: int, card_serial: str, *, now: datetime
    ) -> Outgoing:
        return self._issue(
            cabinet,
            ReturnUncollectedCommand,
            now,
            drawer=drawer,
            index=index,
            card_serial=card_serial,
        )

    def light(
        self, cabinet: str, drawer: int, index: int, duration_ms: int, *, now: datetime
    ) -> Outgoing:
        return self._issue(
            cabinet, LightCommand, now, drawer=drawer, index=index, duration_ms=duration_ms
        )

    def inventory_scan(self, cabinet: str, *, now: datetime) -> Outgoing:
        return self._issue(cabinet, InventoryScanCommand, now)

    def _issue(
        self, cabinet: str, kind: type[CommandMessage], now: datetime, **fields: Any
    ) -> Outgoing:
        _check_id(cabinet, "cabinet")
        now = _aware(now)
        command = kind(
            counter=self._take_counter(cabinet),
            issued_at=now,
            command_id=_new_uuid(self._random),
            correlation_id=_new_uuid(self._random),
            response_topic=topic(self.site, cabinet, Channel.ACK),
            **fields,
        )
        return self._send(cabinet, command, now, reissues=0).outgoing

    def _take_counter(self, cabinet: str) -> int:
        counter = self._next.get(cabinet, 1)
        if counter > MAX_COUNTER:
            raise ValueError(f"cabinet {cabinet}: command counter exhausted; re-key the cabinet")
        self._next[cabinet] = counter + 1
        return counter

    def _send(
        self, cabinet: str, command: CommandMessage, now: datetime, *, reissues: int
    ) -> PendingCommand:
        sealed, payload = seal(command, self._keys.cabinet(cabinet).command)
        spec = CHANNELS[Channel.CMD]
        outgoing = Outgoing(
            cabinet=cabinet,
            topic=topic(self.site, cabinet, Channel.CMD),
            payload=payload,
            qos=spec.qos,
            retain=spec.retain,
            command_id=sealed.command_id,
            correlation_id=sealed.correlation_id,
            response_topic=sealed.response_topic,
        )
        pending = PendingCommand(cabinet, sealed, outgoing, 1, now + self._timeout, reissues)
        self._track(pending)
        return pending

    def _track(self, pending: PendingCommand) -> None:
        self._pending[pending.correlation_id] = pending
        heapq.heappush(
            self._deadlines,
            _Deadline(pending.deadline, next(self._seq), pending.correlation_id, pending.attempts),
        )

    # -- timeouts -----------------------------------------------------------------------------

    def pending(self) -> tuple[PendingCommand, ...]:
        return tuple(self._pending.values())

    def next_deadline(self) -> datetime | None:
        """When :meth:`due` next has something to say (None: nothing pending)."""
        while self._deadlines and not self._live(self._deadlines[0]):
            heapq.heappop(self._deadlines)
        return self._deadlines[0].when if self._deadlines else None

    def _live(self, entry: _Deadline) -> bool:
        pending = self._pending.get(entry.correlation_id)
        return (
            pending is not None
            and pending.attempts == entry.attempts
            and pending.deadline == entry.when
        )

    def due(self, now: datetime) -> list[Resend | TimedOut]:
        """Commands past their deadline: resend (same bytes) or, after ``max_attempts``, give up."""
        now = _aware(now)
        out: list[Resend | TimedOut] = []
        while self._deadlines and self._deadlines[0].when <= now:
            entry = heapq.heappop(self._deadlines)
            if not self._live(entry):
                continue
            pending = self._pending[entry.correlation_id]
            if pending.attempts >= self._max_attempts:
                del self._pending[entry.correlation_id]
                out.append(TimedOut(pending))
            else:
                again = replace(
                    pending, attempts=pending.attempts + 1, deadline=now + self._timeout
                )
                self._track(again)
                out.append(Resend(again))
        return out

    def cancel(self, correlation_id: UUID) -> PendingCommand | None:
        """Stop waiting for a command (its ack will then be an :class:`UnmatchedAck`)."""
        return self._pending.pop(correlation_id, None)

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes, *, now: datetime) -> Outcome:
        """Verify and interpret one message from a cabinet of this site."""
        now = _aware(now)
        try:
            where = parse_topic(topic, site=self.site, channels=UP_CHANNELS)
        except WrongTopicError as exc:
            return Refused(None, None, SecurityEventKind.WRONG_TOPIC, str(exc))
        cabinet, channel = where.cabinet, where.channel
        try:
            message = open_message(channel, payload, self._keys.cabinet(cabinet).report)
        except BadMacError:
            return Refused(cabinet, channel, SecurityEventKind.BAD_MAC, "report MAC did not verify")
        except MalformedMessageError as exc:
            return Refused(cabinet, channel, SecurityEventKind.MALFORMED, str(exc))
        assert message.mac is not None
        last = self._last.setdefault(cabinet, {})
        seen_key = (cabinet, message.mac)

        if isinstance(message, Ack):
            pending = self._pending.get(message.correlation_id)
            if (
                pending is not None
                and pending.cabinet == cabinet
                and pending.command_id == message.command_id
            ):
                # The pending table is this ack's replay guard: it is consumed below.  Counters of
                # acks may run backwards here: a recorded ack re-sent for a retry is older than
                # acks sent since for other commands.
                self._accept(cabinet, channel, message.counter, seen_key)
                return self._answer(pending, message, now)
            if seen_key in self._seen:
                return Duplicate(cabinet, channel)
            try:
                check_counter(message.counter, last.get(channel, 0), channel=channel.value)
            except ReplayError as exc:
                return Refused(cabinet, channel, SecurityEventKind.REPLAY, str(exc))
            self._accept(cabinet, channel, message.counter, seen_key)
            return UnmatchedAck(cabinet, message)

        assert not isinstance(message, CommandMessage)  # parse_topic admits no cmd topic
        previous = last.get(channel, 0)
        if channel in _RETAINED and message.counter == previous:
            # A retained message re-delivered on (re)subscribe: the latest we had, still true.
            return Received(cabinet, message, repeat=True)
        if seen_key in self._seen:
            return Duplicate(cabinet, channel)
        try:
            check_counter(message.counter, previous, channel=channel.value)
        except ReplayError as exc:
            return Refused(cabinet, channel, SecurityEventKind.REPLAY, str(exc))
        self._accept(cabinet, channel, message.counter, seen_key)
        return Received(cabinet, message)

    def _accept(
        self, cabinet: str, channel: Channel, counter: int, seen_key: tuple[str, str]
    ) -> None:
        last = self._last.setdefault(cabinet, {})
        last[channel] = max(last.get(channel, 0), counter)
        self._seen.put(seen_key, None)

    def _answer(self, pending: PendingCommand, ack: Ack, now: datetime) -> Outcome:
        del self._pending[pending.correlation_id]
        if ack.status is AckStatus.ACCEPTED:
            return Acked(pending.cabinet, pending, ack)
        assert ack.reason is not None
        if not ack.reason.retryable or pending.reissues >= self._max_reissues:
            return Rejected(pending.cabinet, pending, ack)
        if ack.reason is RejectReason.STALE_COUNTER and ack.last_counter is not None:
            # Authenticated by the cabinet's MAC: safe to jump our counter past it.
            self._next[pending.cabinet] = max(
                self._next.get(pending.cabinet, 1), ack.last_counter + 1
            )
        fresh = pending.command.model_copy(
            update={
                "command_id": _new_uuid(self._random),
                "counter": self._take_counter(pending.cabinet),
                "issued_at": now,
                "mac": None,
            }
        )
        again = self._send(pending.cabinet, fresh, now, reissues=pending.reissues + 1)
        return Reissued(again, pending.command_id, ack.reason)
