"""ecabinet.protocol: the cabinet and controller sides driven against each other, no broker."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    InventorySnapshot,
    RejectReason,
    SecurityEvent,
    SecurityEventKind,
    SlotOpened,
    Status,
    open_message,
    seal,
)
from ecabinet.protocol import (
    REPORT_COUNTER_BLOCK,
    Acked,
    Action,
    CabinetProtocol,
    CabinetState,
    ControllerProtocol,
    ControllerState,
    Duplicate,
    LightSlot,
    OpenPurpose,
    OpenSlot,
    Outcome,
    Outgoing,
    PersistState,
    Publish,
    Received,
    Refused,
    Reissued,
    Rejected,
    ReportSecurityEvent,
    Resend,
    ScanSlots,
    TimedOut,
    UnmatchedAck,
)
from ecabinet.security import SiteKey
from ecabinet.slots import SlotState
from ecabinet.topics import Channel, topic

MASTER = bytes(range(32))
SITE = SiteKey("S1", MASTER)
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def scripted_random(seed: str = "") -> Callable[[int], bytes]:
    """Reproducible bytes, so ids in a failing run are the same the next time."""
    counter = itertools.count()
    return lambda n: hashlib.sha256(f"{seed}{next(counter)}".encode()).digest()[:n]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def make_cabinet(
    clock: Clock, state: CabinetState | None = None, cabinet: str = "C1", boot: int = 0, **kw: Any
) -> CabinetProtocol:
    return CabinetProtocol(
        "S1",
        cabinet,
        SITE.cabinet(cabinet),
        state or CabinetState.empty(2, 3),
        clock=clock,
        random=scripted_random(f"{cabinet}/{boot}"),
        **kw,
    )


def make_controller(**kw: Any) -> ControllerProtocol:
    return ControllerProtocol(SITE, random=scripted_random("ctl"), **kw)


def publishes(actions: Iterable[Action], channel: Channel | None = None) -> list[Publish]:
    return [
        a
        for a in actions
        if isinstance(a, Publish) and (channel is None or a.topic.endswith("/" + channel.value))
    ]


def physical(actions: Iterable[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, OpenSlot | LightSlot | ScanSlots)]


def deliver(
    actions: Iterable[Action], controller: ControllerProtocol, now: datetime
) -> list[Outcome]:
    return [controller.receive(p.topic, p.payload, now=now) for p in publishes(actions)]


def ack_of(actions: Iterable[Action]) -> Ack:
    (publish,) = publishes(actions, Channel.ACK)
    message = open_message(Channel.ACK, publish.payload, SITE.cabinet("C1").report)
    assert isinstance(message, Ack)
    return message


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cabinet(clock: Clock) -> CabinetProtocol:
    return make_cabinet(clock)


@pytest.fixture
def controller() -> ControllerProtocol:
    return make_controller()


def stock(
    cabinet: CabinetProtocol,
    controller: ControllerProtocol,
    clock: Clock,
    drawer: int,
    index: int,
    serial: str,
) -> None:
    out = controller.deposit("C1", drawer, index, serial, now=clock.now)
    assert isinstance(
        deliver(cabinet.receive(out.topic, out.payload), controller, clock.now)[0], Acked
    )
    deliver(cabinet.card_inserted(drawer, index, serial), controller, clock.now)
    deliver(cabinet.door_closed(drawer, index), controller, clock.now)
    assert cabinet.slot_state(drawer, index) is SlotState.OCCUPIED


# -- session -------------------------------------------------------------------------------------


def test_connect_plan_will_and_online(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    plan = cabinet.connect()
    assert plan.persist is not None  # the will's counter is reserved before CONNECT
    assert plan.will.topic == "perso/v1/S1/C1/status" and plan.will.retain and plan.will.qos == 1
    online, inventory = publishes(plan.after)
    first, second = deliver(plan.after, controller, clock.now)
    assert isinstance(first, Received) and isinstance(first.message, Status)
    assert first.message.state == "online" and first.message.boot_id == cabinet.boot_id
    assert isinstance(second, Received) and isinstance(second.message, InventorySnapshot)
    # Later the broker delivers the will: it verifies and is newer than the online status.
    lost = controller.receive(plan.will.topic, plan.will.payload, now=clock.now)
    assert isinstance(lost, Received) and isinstance(lost.message, Status)
    assert (lost.message.state, lost.message.cause) == ("offline", "lost")
    assert lost.message.counter == first.message.counter + 1
    assert inventory.retain and online.retain


def test_heartbeats_are_qos0_and_persist_only_per_block(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    cabinet.connect()
    persisted = 0
    counters = []
    for _ in range(3 * REPORT_COUNTER_BLOCK):
        actions = cabinet.heartbeat()
        persisted += sum(isinstance(a, PersistState) for a in actions)
        (beat,) = publishes(actions)
        assert beat.qos == 0 and not beat.retain
        outcome = controller.receive(beat.topic, beat.payload, now=clock.now)
        assert isinstance(outcome, Received) and isinstance(outcome.message, Heartbeat)
        counters.append(outcome.message.counter)
    assert counters == sorted(set(counters))
    assert 2 <= persisted <= 4


def test_restart_never_reuses_a_report_counter(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    plan = cabinet.connect()
    state = plan.persist.state if plan.persist else cabinet.snapshot()
    for _ in range(5):
        deliver(cabinet.heartbeat(), controller, clock.now)  # used, never persisted
    restarted = make_cabinet(
        clock, CabinetState.model_validate_json(state.model_dump_json()), boot=1
    )
    for action in restarted.connect().after:
        if isinstance(action, Publish):
            outcome = controller.receive(action.topic, action.payload, now=clock.now)
            assert isinstance(outcome, Received) and not outcome.repeat
    outcome = deliver(restarted.heartbeat(), controller, clock.now)[0]
    assert isinstance(outcome, Received)


# -- the happy paths -----------------------------------------------------------------------------


def test_deposit_then_retrieval(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    deliver(cabinet.connect().after, controller, clock.now)
    out = controller.deposit("C1", 1, 2, "04AA01", now=clock.now)
    assert (out.topic, out.qos, out.retain) == ("perso/v1/S1/C1/cmd", 1, False)
    assert (
        out.response_topic == "perso/v1/S1/C1/ack"
        and out.correlation_data == out.correlation_id.bytes
    )
    actions = cabinet.receive(out.topic, out.payload)
    assert isinstance(actions[0], PersistState)  # write-ahead: before the door opens
    assert actions[0].state.command_counter == 1
    assert physical(actions) == [
        LightSlot(1, 2, None, out.command_id),
        OpenSlot(1, 2, OpenPurpose.DEPOSIT, out.command_id),
    ]
    acked, inventory = deliver(actions, controller, clock.now)
    assert isinstance(acked, Acked) and acked.ack.status is AckStatus.ACCEPTED
    assert (
        acked.pending.command_id == out.command_id
        and acked.ack.correlation_id == out.correlation_id
    )
    assert isinstance(inventory, Received) and isinstance(inventory.message, InventorySnapshot)
    assert inventory.message.slots[1].state is SlotState.RESERVED
    assert controller.pending() == ()

    events = deliver(cabinet.slot_opened(1, 2, out.command_id), controller, clock.now)
    assert isinstance(events[0], Received) and isinstance(events[0].message, SlotOpened)
    inserted = deliver(cabinet.card_inserted(1, 2, "04AA01"), controller, clock.now)
    assert isinstance(inserted[0], Received) and isinstance(inserted[0].message, CardInserted)
    assert (inserted[0].message.card_serial, inserted[0].message.expected_serial) == (
        "04AA01",
        "04AA01",
    )
    deliver(cabinet.door_closed(1, 2), controller, clock.now)
    assert cabinet.slot_state(1, 2) is SlotState.OCCUPIED

    out = controller.open_for_retrieval("C1", 1, 2, "04AA01", now=clock.now)
    actions = cabinet.receive(out.topic, out.payload)
    assert OpenSlot(1, 2, OpenPurpose.RETRIEVAL, out.command_id) in physical(actions)
    assert isinstance(deliver(actions, controller, clock.now)[0], Acked)
    removed = deliver(cabinet.card_removed(1, 2), controller, clock.now)
    assert isinstance(removed[0], Received) and isinstance(removed[0].message, CardRemoved)
    assert removed[0].message.card_serial == "04AA01"
    assert cabinet.slot_state(1, 2) is SlotState.EMPTY
    closed = deliver(cabinet.door_closed(1, 2), controller, clock.now)
    assert isinstance(closed[0], Received) and isinstance(closed[0].message, DoorClosed)
    assert closed[0].message.card_present is False


def test_light_return_and_inventory_scan(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    stock(cabinet, controller, clock, 2, 3, "04BB")
    out = controller.light("C1", 2, 3, 5000, now=clock.now)
    assert physical(cabinet.receive(out.topic, out.payload)) == [
        LightSlot(2, 3, 5000, out.command_id)
    ]
    out = controller.return_uncollected("C1", 2, 3, "04BB", now=clock.now)
    assert OpenSlot(2, 3, OpenPurpose.RETURN, out.command_id) in physical(
        cabinet.receive(out.topic, out.payload)
    )
    out = controller.inventory_scan("C1", now=clock.now)
    assert physical(cabinet.receive(out.topic, out.payload)) == [ScanSlots(out.command_id)]
    actions = cabinet.scan_result({(2, 3): "04BB"})
    (snapshot,) = publishes(actions, Channel.INVENTORY)
    assert snapshot.retain


# -- security ------------------------------------------------------------------------------------


def assert_refused(actions: list[Action], kind: SecurityEventKind) -> None:
    assert physical(actions) == []
    notes = [a for a in actions if isinstance(a, ReportSecurityEvent)]
    assert [n.kind for n in notes] == [kind]


def test_qos1_duplicate_performs_once_and_resends_the_recorded_ack(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    out = controller.deposit("C1", 1, 1, "04CC", now=clock.now)
    first = cabinet.receive(out.topic, out.payload)
    clock.tick(1)
    again = cabinet.receive(out.topic, out.payload)
    assert again == publishes(first, Channel.ACK)  # byte for byte, nothing else
    assert physical(again) == [] and not any(isinstance(a, PersistState) for a in again)
    assert cabinet.slot_state(1, 1) is SlotState.RESERVED
    outcomes = [
        controller.receive(p.topic, p.payload, now=clock.now)
        for p in [*publishes(first, Channel.ACK), *publishes(again)]
    ]
    assert isinstance(outcomes[0], Acked) and isinstance(outcomes[1], Duplicate)


def test_replayed_command_is_refused_and_reported(
    clock: Clock, controller: ControllerProtocol
) -> None:
    cabinet = make_cabinet(clock, recent_limit=1)  # the capture has left the duplicate window
    stock(cabinet, controller, clock, 1, 1, "04DD")
    captured = controller.open_for_retrieval("C1", 1, 1, "04DD", now=clock.now)
    deliver(cabinet.receive(captured.topic, captured.payload), controller, clock.now)
    deliver(cabinet.card_removed(1, 1), controller, clock.now)
    deliver(cabinet.door_closed(1, 1), controller, clock.now)
    stock(cabinet, controller, clock, 1, 1, "04DD")  # the card is back (say, re-deposited)
    state_before = cabinet.snapshot()

    actions = cabinet.receive(captured.topic, captured.payload)
    assert_refused(actions, SecurityEventKind.REPLAY)
    nack = ack_of(actions)
    assert (nack.status, nack.reason) == (AckStatus.REJECTED, RejectReason.STALE_COUNTER)
    assert nack.last_counter == state_before.command_counter
    assert cabinet.slot_state(1, 1) is SlotState.OCCUPIED
    assert cabinet.snapshot().command_counter == state_before.command_counter
    outcome = deliver(actions, controller, clock.now)[0]
    assert isinstance(outcome, UnmatchedAck) and outcome.replay_reported


def test_same_counter_with_another_command_is_refused(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    out = controller.deposit("C1", 1, 1, "04EE", now=clock.now)
    cabinet.receive(out.topic, out.payload)
    same_counter = DepositCommand(
        counter=1, issued_at=clock.now, command_id=UUID(int=7), correlation_id=UUID(int=8),
        response_topic=out.response_topic, drawer=1, index=2, card_serial="04EF",
    )  # fmt: skip
    _, payload = seal(same_counter, SITE.cabinet("C1").command)
    actions = cabinet.receive(out.topic, payload)
    assert_refused(actions, SecurityEventKind.REPLAY)
    assert cabinet.slot_state(1, 2) is SlotState.EMPTY


@pytest.mark.parametrize(
    "forge",
    [
        lambda p: p.replace(b'"drawer":1', b'"drawer":2'),  # edited, MAC kept
        lambda p: p[:-4] + (b"0" if p[-4:-3] != b"0" else b"1") + p[-3:],  # MAC changed
        lambda p: json.dumps({k: v for k, v in json.loads(p).items() if k != "mac"}).encode(),
    ],
    ids=["edited", "mac-flipped", "mac-removed"],
)
def test_forged_command_is_refused_and_reported(
    forge: Callable[[bytes], bytes],
    cabinet: CabinetProtocol,
    controller: ControllerProtocol,
    clock: Clock,
) -> None:
    out = controller.deposit("C1", 1, 1, "04FF", now=clock.now)
    actions = cabinet.receive(out.topic, forge(out.payload))
    assert_refused(actions, SecurityEventKind.BAD_MAC)
    assert publishes(actions, Channel.ACK) == []  # no answer to a message nobody can vouch for
    (reported,) = deliver(actions, controller, clock.now)
    assert isinstance(reported, Received) and isinstance(reported.message, SecurityEvent)
    assert (reported.message.kind, reported.message.channel) == (
        SecurityEventKind.BAD_MAC,
        Channel.CMD,
    )
    # Nothing moved: the genuine command still goes through.
    assert physical(cabinet.receive(out.topic, out.payload))


def test_wrong_key_is_a_forgery(cabinet: CabinetProtocol, clock: Clock) -> None:
    rogue = ControllerProtocol(SiteKey("S1", bytes(32)), random=scripted_random("rogue"))
    out = rogue.deposit("C1", 1, 1, "04AB", now=clock.now)
    assert_refused(cabinet.receive(out.topic, out.payload), SecurityEventKind.BAD_MAC)


def test_command_on_another_cabinets_topic(clock: Clock, controller: ControllerProtocol) -> None:
    c1, c2 = make_cabinet(clock, cabinet="C1"), make_cabinet(clock, cabinet="C2")
    for_c2 = controller.deposit("C2", 1, 1, "04AC", now=clock.now)
    # Delivered to C1 on C2's topic (a misrouting broker): refused on the topic alone.
    assert_refused(c1.receive(for_c2.topic, for_c2.payload), SecurityEventKind.WRONG_TOPIC)
    # C2's command republished on C1's topic: C1's key does not verify it.
    assert_refused(
        c1.receive(topic("S1", "C1", Channel.CMD), for_c2.payload), SecurityEventKind.BAD_MAC
    )
    for wrong in ("perso/v1/S1/C1/ack", "perso/v1/S2/C1/cmd", "perso/v1/S1/C1/cmd/x"):
        assert_refused(c1.receive(wrong, for_c2.payload), SecurityEventKind.WRONG_TOPIC)
    assert physical(c2.receive(for_c2.topic, for_c2.payload))


def test_malformed_command(cabinet: CabinetProtocol) -> None:
    assert_refused(cabinet.receive("perso/v1/S1/C1/cmd", b"{not json"), SecurityEventKind.MALFORMED)


def test_command_id_conflict(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    out = controller.deposit("C1", 1, 1, "04AD", now=clock.now)
    cabinet.receive(out.topic, out.payload)
    sealed = open_message(Channel.CMD, out.payload, SITE.cabinet("C1").command)
    reused = sealed.model_copy(update={"counter": 50, "mac": None, "index": 3})
    _, payload = seal(reused, SITE.cabinet("C1").command)
    actions = cabinet.receive(out.topic, payload)
    assert_refused(actions, SecurityEventKind.COMMAND_ID_CONFLICT)
    assert ack_of(actions).reason is RejectReason.COMMAND_ID_CONFLICT
    assert cabinet.slot_state(1, 3) is SlotState.EMPTY
    assert cabinet.snapshot().command_counter == 1


def test_never_opens_for_the_wrong_card(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    stock(cabinet, controller, clock, 1, 1, "04RIGHT")
    out = controller.open_for_retrieval("C1", 1, 1, "04WRONG", now=clock.now)
    actions = cabinet.receive(out.topic, out.payload)
    assert physical(actions) == []
    outcome = deliver(actions, controller, clock.now)[0]
    assert isinstance(outcome, Rejected) and outcome.ack.reason is RejectReason.SERIAL_MISMATCH
    # Recorded: the duplicate gets the same answer, even if the slot changed since.
    assert cabinet.receive(out.topic, out.payload) == publishes(actions, Channel.ACK)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda c, now: c.deposit("C1", 1, 1, "04X", now=now), RejectReason.SLOT_STATE),
        (lambda c, now: c.open_for_retrieval("C1", 1, 2, "04X", now=now), RejectReason.SLOT_STATE),
        (lambda c, now: c.light("C1", 9, 1, 100, now=now), RejectReason.UNKNOWN_SLOT),
        (lambda c, now: c.deposit("C1", 3, 1, "04X", now=now), RejectReason.UNKNOWN_SLOT),
    ],
)
def test_semantic_rejections(
    build: Callable[[ControllerProtocol, datetime], Outgoing],
    reason: RejectReason,
    cabinet: CabinetProtocol,
    controller: ControllerProtocol,
    clock: Clock,
) -> None:
    stock(cabinet, controller, clock, 1, 1, "04X")
    out = build(controller, clock.now)
    actions = cabinet.receive(out.topic, out.payload)
    assert physical(actions) == []
    outcome = deliver(actions, controller, clock.now)[0]
    assert isinstance(outcome, Rejected) and outcome.ack.reason is reason


def test_response_topic_must_be_the_cabinets_own(cabinet: CabinetProtocol, clock: Clock) -> None:
    command = DepositCommand(
        counter=1, issued_at=clock.now, command_id=UUID(int=1), correlation_id=UUID(int=2),
        response_topic="perso/v1/S1/C2/ack", drawer=1, index=1, card_serial="04AE",
    )  # fmt: skip
    _, payload = seal(command, SITE.cabinet("C1").command)
    actions = cabinet.receive("perso/v1/S1/C1/cmd", payload)
    assert physical(actions) == []
    (answer,) = publishes(actions, Channel.ACK)
    assert answer.topic == "perso/v1/S1/C1/ack"
    assert ack_of(actions).reason is RejectReason.RESPONSE_TOPIC


def test_expired_command(clock: Clock, controller: ControllerProtocol) -> None:
    cabinet = make_cabinet(clock, max_command_age=timedelta(seconds=30))
    out = controller.deposit("C1", 1, 1, "04AF", now=clock.now)
    clock.tick(31)
    actions = cabinet.receive(out.topic, out.payload)
    assert_refused(actions, SecurityEventKind.EXPIRED)
    outcome = deliver(actions, controller, clock.now)[0]
    assert isinstance(outcome, Reissued) and outcome.reason is RejectReason.EXPIRED
    assert outcome.pending.command.issued_at == clock.now
    assert physical(
        cabinet.receive(outcome.pending.outgoing.topic, outcome.pending.outgoing.payload)
    )


# -- controller: retries, re-issues, timeouts ----------------------------------------------------


def test_retry_resends_the_same_bytes_and_the_cabinet_answers_its_recorded_ack(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    out = controller.deposit("C1", 1, 1, "04B0", now=clock.now)
    assert controller.next_deadline() == clock.now + timedelta(seconds=2)
    first = cabinet.receive(out.topic, out.payload)  # performed; its ack is lost
    assert controller.due(clock.tick(1.9)) == []
    (resend,) = controller.due(clock.tick(0.1))
    assert isinstance(resend, Resend)
    assert resend.pending.outgoing == out and resend.pending.attempts == 2
    again = cabinet.receive(resend.pending.outgoing.topic, resend.pending.outgoing.payload)
    assert physical(again) == [] and again == publishes(first, Channel.ACK)
    (outcome,) = deliver(again, controller, clock.now)
    assert isinstance(outcome, Acked)
    assert controller.due(clock.tick(60)) == [] and controller.next_deadline() is None


def test_gives_up_after_max_attempts(controller: ControllerProtocol, clock: Clock) -> None:
    out = controller.deposit("C1", 1, 1, "04B1", now=clock.now)
    sent = [out]
    for _ in range(2):
        (resend,) = controller.due(clock.tick(2))
        assert isinstance(resend, Resend)
        sent.append(resend.pending.outgoing)
    (gave_up,) = controller.due(clock.tick(2))
    assert isinstance(gave_up, TimedOut) and gave_up.pending.attempts == 3
    assert {s.payload for s in sent} == {out.payload}
    assert controller.pending() == () and controller.next_deadline() is None


def test_an_overtaken_command_is_reissued_and_the_late_copy_never_acts(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    lost = controller.deposit("C1", 1, 1, "04B2", now=clock.now)  # counter 1, delayed in flight
    later = controller.deposit("C1", 1, 2, "04B3", now=clock.now)  # counter 2, arrives first
    deliver(cabinet.receive(later.topic, later.payload), controller, clock.now)
    actions = cabinet.receive(lost.topic, lost.payload)
    assert physical(actions) == []
    (outcome,) = deliver(actions, controller, clock.now)
    assert isinstance(outcome, Reissued) and outcome.reason is RejectReason.STALE_COUNTER
    fresh = outcome.pending.outgoing
    assert fresh.correlation_id == lost.correlation_id and fresh.command_id != lost.command_id
    assert outcome.previous_command_id == lost.command_id
    acted = cabinet.receive(fresh.topic, fresh.payload)
    assert OpenSlot(1, 1, OpenPurpose.DEPOSIT, fresh.command_id) in physical(acted)
    assert isinstance(deliver(acted, controller, clock.now)[0], Acked)
    # The delayed original turns up again: still stale, still nothing.
    assert physical(cabinet.receive(lost.topic, lost.payload)) == []


def test_controller_that_lost_its_counter_resynchronises(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    for index in (1, 2, 3):
        out = controller.light("C1", 1, index, 100, now=clock.now)
        deliver(cabinet.receive(out.topic, out.payload), controller, clock.now)
    # Restored from nothing: its counter starts at 1 again.  (Its own random stream: the same
    # scripted stream would repeat the old command ids, a conflict this test is not about.)
    amnesiac = ControllerProtocol(SITE, random=scripted_random("amnesiac"))
    out = amnesiac.deposit("C1", 2, 1, "04B4", now=clock.now)
    (outcome,) = deliver(cabinet.receive(out.topic, out.payload), amnesiac, clock.now)
    assert isinstance(outcome, Reissued)
    assert outcome.pending.command.counter == 4
    assert isinstance(
        deliver(
            cabinet.receive(outcome.pending.outgoing.topic, outcome.pending.outgoing.payload),
            amnesiac,
            clock.now,
        )[0],
        Acked,
    )


def test_reissues_are_bounded(clock: Clock) -> None:
    controller = make_controller(max_reissues=1)
    cabinet = make_cabinet(clock, max_command_age=timedelta(seconds=1))
    out = controller.deposit("C1", 1, 1, "04B5", now=clock.now)
    clock.tick(5)
    (first,) = deliver(cabinet.receive(out.topic, out.payload), controller, clock.now)
    assert isinstance(first, Reissued)
    clock.tick(5)
    fresh = first.pending.outgoing
    (second,) = deliver(cabinet.receive(fresh.topic, fresh.payload), controller, clock.now)
    assert isinstance(second, Rejected) and second.ack.reason is RejectReason.EXPIRED


def test_ack_for_a_pending_command_is_accepted_even_if_older_than_other_acks(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    a = controller.light("C1", 1, 1, 100, now=clock.now)
    b = controller.light("C1", 1, 2, 100, now=clock.now)
    ack_a = publishes(cabinet.receive(a.topic, a.payload), Channel.ACK)
    ack_b = publishes(cabinet.receive(b.topic, b.payload), Channel.ACK)
    assert isinstance(deliver(ack_b, controller, clock.now)[0], Acked)
    assert isinstance(
        deliver(ack_a, controller, clock.now)[0], Acked
    )  # older counter, still pending
    assert isinstance(deliver(ack_a, controller, clock.now)[0], Duplicate)


def test_late_ack_after_timeout_is_unmatched(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    out = controller.deposit("C1", 1, 1, "04B6", now=clock.now)
    for _ in range(3):
        controller.due(clock.tick(2))
    (outcome,) = deliver(cabinet.receive(out.topic, out.payload), controller, clock.now)[:1]
    assert isinstance(outcome, UnmatchedAck) and not outcome.replay_reported


def test_cancel(controller: ControllerProtocol, clock: Clock) -> None:
    out = controller.deposit("C1", 1, 1, "04B7", now=clock.now)
    cancelled = controller.cancel(out.correlation_id)
    assert cancelled is not None and cancelled.command_id == out.command_id
    assert controller.due(clock.tick(10)) == [] and controller.cancel(out.correlation_id) is None


# -- controller: verifying what cabinets send ----------------------------------------------------


def test_controller_refuses_forged_replayed_and_misplaced_reports(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    deliver(cabinet.connect().after, controller, clock.now)
    (old,) = publishes(cabinet.fault(FaultCode.JAM, 1, 1), Channel.EVT)
    (new,) = publishes(cabinet.fault(FaultCode.JAM, 1, 2), Channel.EVT)
    assert isinstance(controller.receive(new.topic, new.payload, now=clock.now), Received)
    replayed = controller.receive(old.topic, old.payload, now=clock.now)
    assert isinstance(replayed, Refused) and replayed.kind is SecurityEventKind.REPLAY
    assert isinstance(controller.receive(new.topic, new.payload, now=clock.now), Duplicate)
    forged = controller.receive(new.topic, new.payload.replace(b'"jam"', b'"other"'), now=clock.now)
    assert isinstance(forged, Refused) and forged.kind is SecurityEventKind.BAD_MAC
    moved = controller.receive(
        "perso/v1/S1/C2/evt", new.payload, now=clock.now
    )  # C1's event as C2's
    assert (
        isinstance(moved, Refused)
        and moved.kind is SecurityEventKind.BAD_MAC
        and moved.cabinet == "C2"
    )
    for wrong in ("perso/v1/S2/C1/evt", "perso/v1/S1/C1/cmd", "elsewhere"):
        outcome = controller.receive(wrong, new.payload, now=clock.now)
        assert isinstance(outcome, Refused) and outcome.kind is SecurityEventKind.WRONG_TOPIC
    garbage = controller.receive(new.topic, b"[]", now=clock.now)
    assert isinstance(garbage, Refused) and garbage.kind is SecurityEventKind.MALFORMED


def test_retained_snapshot_redelivered_on_resubscribe(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    plan = cabinet.connect()
    (first,) = publishes(plan.after, Channel.INVENTORY)
    assert isinstance(controller.receive(first.topic, first.payload, now=clock.now), Received)
    again = controller.receive(first.topic, first.payload, now=clock.now)
    assert isinstance(again, Received) and again.repeat
    # A controller restarted from its persisted state gets the retained copy too.
    restored = make_controller(
        state=ControllerState.model_validate_json(controller.snapshot().model_dump_json())
    )
    outcome = restored.receive(first.topic, first.payload, now=clock.now)
    assert isinstance(outcome, Received) and outcome.repeat
    # But once a newer snapshot is in, the older one is never handed out again: ignored by a
    # controller that has seen it, refused as a replay by one that has not.
    (newer,) = publishes(cabinet.fault(FaultCode.JAM, 2, 2), Channel.INVENTORY)
    for receiver in (controller, restored):
        assert isinstance(receiver.receive(newer.topic, newer.payload, now=clock.now), Received)
    assert isinstance(controller.receive(first.topic, first.payload, now=clock.now), Duplicate)
    stale = restored.receive(first.topic, first.payload, now=clock.now)
    assert isinstance(stale, Refused) and stale.kind is SecurityEventKind.REPLAY


def test_subscriptions(controller: ControllerProtocol) -> None:
    assert dict(controller.subscriptions()) == {
        "perso/v1/S1/+/ack": 1,
        "perso/v1/S1/+/evt": 1,
        "perso/v1/S1/+/inventory": 1,
        "perso/v1/S1/+/heartbeat": 0,
        "perso/v1/S1/+/status": 1,
    }


# -- sensors, faults, restarts -------------------------------------------------------------------


def test_sensor_surprises_fault_the_slot_and_a_scan_clears_it(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    actions = cabinet.card_inserted(2, 2, "04C0")  # nobody asked for a deposit here
    kinds = [
        type(o.message).__name__
        for o in deliver(actions, controller, clock.now)
        if isinstance(o, Received)
    ]
    assert kinds == ["CardInserted", "FaultEvent", "InventorySnapshot"]
    assert cabinet.slot_state(2, 2) is SlotState.FAULT
    cabinet.scan_result({(2, 2): "04C0"})
    assert cabinet.slot_state(2, 2) is SlotState.OCCUPIED
    # An idle slot whose sensor disagrees faults; the record takes what is sensed.
    cabinet.scan_result({(2, 2): None})
    assert cabinet.slot_state(2, 2) is SlotState.FAULT
    assert cabinet.inventory().slots[4].card_serial is None
    cabinet.card_removed(1, 1)
    assert cabinet.slot_state(1, 1) is SlotState.FAULT


def test_abandoned_deposit_and_uncollected_retrieval(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    out = controller.deposit("C1", 1, 1, "04C1", now=clock.now)
    cabinet.receive(out.topic, out.payload)
    cabinet.door_closed(1, 1)
    assert cabinet.slot_state(1, 1) is SlotState.EMPTY
    stock(cabinet, controller, clock, 1, 2, "04C2")
    out = controller.open_for_retrieval("C1", 1, 2, "04C2", now=clock.now)
    cabinet.receive(out.topic, out.payload)
    (closed,) = [
        o
        for o in deliver(cabinet.door_closed(1, 2), controller, clock.now)
        if isinstance(o, Received) and isinstance(o.message, DoorClosed)
    ]
    assert isinstance(closed.message, DoorClosed) and closed.message.card_present
    assert cabinet.slot_state(1, 2) is SlotState.OCCUPIED


def test_power_loss_mid_deposit(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    deliver(cabinet.connect().after, controller, clock.now)
    out = controller.deposit("C1", 1, 3, "04C3", now=clock.now)
    actions = cabinet.receive(out.topic, out.payload)
    persisted = actions[0]
    assert isinstance(persisted, PersistState)
    # Power lost right after the state was written: the slot was open, the ack never went out.
    rebooted = make_cabinet(
        clock, CabinetState.model_validate_json(persisted.state.model_dump_json()), boot=1
    )
    assert rebooted.boot_id != cabinet.boot_id
    assert rebooted.slot_state(1, 3) is SlotState.FAULT  # nobody knows what happened meanwhile
    plan = rebooted.connect()
    received = [o for o in deliver(plan.after, controller, clock.now) if isinstance(o, Received)]
    faults = [o.message for o in received if isinstance(o.message, FaultEvent)]
    assert [(f.code, f.drawer, f.index) for f in faults] == [
        (FaultCode.POWER_LOSS, None, None),
        (FaultCode.POWER_LOSS, 1, 3),
    ]
    # The controller's retry: the recorded ack, and the door is not opened a second time.
    retry = rebooted.receive(out.topic, out.payload)
    assert physical(retry) == []
    assert isinstance(deliver(retry, controller, clock.now)[0], Acked)


def test_clean_shutdown_reports_no_power_loss(cabinet: CabinetProtocol, clock: Clock) -> None:
    cabinet.connect()
    actions = cabinet.disconnect()
    assert isinstance(actions[0], PersistState) and actions[0].state.clean_shutdown
    (offline,) = publishes(actions)
    assert offline.retain and b'"cause":"shutdown"' in offline.payload
    rebooted = make_cabinet(clock, actions[0].state, boot=1)
    events = [p for p in publishes(rebooted.connect().after, Channel.EVT)]
    assert events == []


def test_device_misuse_is_value_error(cabinet: CabinetProtocol) -> None:
    with pytest.raises(ValueError):
        cabinet.card_inserted(9, 9, "04")
    with pytest.raises(ValueError):
        cabinet.fault(FaultCode.JAM, 1, None)
    with pytest.raises(ValueError):
        make_controller().deposit("C1", 1, 1, "04", now=datetime(2025, 1, 1))


def test_reprs_carry_no_payloads_or_keys(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    out = controller.deposit("C1", 1, 1, "04C4", now=clock.now)
    actions = cabinet.receive(out.topic, out.payload)
    text = repr(actions) + repr(out) + repr(cabinet) + repr(controller)
    assert "04C4" not in text and "mac" not in text
    assert SITE.cabinet("C1").command.hex() not in text


# -- the property: whatever the network does, a command acts at most once --------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_lossy_duplicating_network_never_acts_twice(data: st.DataObject) -> None:
    clock = Clock()
    cabinet = make_cabinet(clock, CabinetState.empty(1, 8))
    controller = make_controller(max_attempts=4)
    fate = st.sampled_from(["deliver", "drop", "twice"])
    performed: dict[UUID, int] = {}
    results: dict[UUID, Outcome] = {}
    in_flight: list[tuple[str, bytes]] = []

    def send_down(topic_: str, payload: bytes) -> None:
        choice = data.draw(fate)
        in_flight.extend([(topic_, payload)] * {"deliver": 1, "drop": 0, "twice": 2}[choice])

    def run_cabinet() -> None:
        data.draw(st.randoms(use_true_random=False)).shuffle(in_flight)
        while in_flight:
            topic_, payload = in_flight.pop()
            for action in cabinet.receive(topic_, payload):
                if isinstance(action, OpenSlot):
                    performed[action.command_id] = performed.get(action.command_id, 0) + 1
                if isinstance(action, Publish) and action.topic.endswith("/ack"):
                    for _ in range({"deliver": 1, "drop": 0, "twice": 2}[data.draw(fate)]):
                        outcome = controller.receive(action.topic, action.payload, now=clock.now)
                        handle(outcome)

    request_of: dict[UUID, UUID] = {}  # command id -> correlation id

    def handle(outcome: Outcome) -> None:
        if isinstance(outcome, Acked | Rejected | TimedOut):
            results.setdefault(outcome.pending.correlation_id, outcome)
        elif isinstance(outcome, Resend | Reissued):
            request_of[outcome.pending.command_id] = outcome.pending.correlation_id
            send_down(outcome.pending.outgoing.topic, outcome.pending.outgoing.payload)

    corr: list[UUID] = []
    for index in range(1, data.draw(st.integers(1, 6)) + 1):
        out = controller.deposit("C1", 1, index, f"04D{index}", now=clock.now)
        corr.append(out.correlation_id)
        request_of[out.command_id] = out.correlation_id
        send_down(out.topic, out.payload)
    for _ in range(12):
        run_cabinet()
        clock.tick(2)
        for outcome in controller.due(clock.now):
            handle(outcome)
    run_cabinet()
    for outcome in controller.due(clock.tick(100)):
        handle(outcome)

    assert all(count == 1 for count in performed.values())  # at most once, per command id
    opened_slots = [s for s in range(1, 9) if cabinet.slot_state(1, s) is SlotState.RESERVED]
    assert len(opened_slots) == len(performed)  # one opening per slot, never two
    assert len({request_of[c] for c in performed}) == len(performed)  # one per request
    for c in corr:
        ended = results.get(c)
        assert ended is not None  # every request ended: acked, rejected or timed out
        if isinstance(ended, Acked):
            assert performed.get(ended.pending.command_id) == 1
    for command_id in performed:
        # A command that acted is never reported refused: at worst its acks were all lost.
        assert isinstance(results[request_of[command_id]], Acked | TimedOut)


def test_inventory_sequence_counts_changes_only(
    cabinet: CabinetProtocol, controller: ControllerProtocol, clock: Clock
) -> None:
    def sequence(actions: Iterable[Action]) -> int:
        (snapshot,) = publishes(actions, Channel.INVENTORY)
        message = open_message(Channel.INVENTORY, snapshot.payload, SITE.cabinet("C1").report)
        assert isinstance(message, InventorySnapshot)
        return message.sequence

    assert sequence(cabinet.connect().after) == 1
    assert sequence(cabinet.connect().after) == 1  # a reconnect republishes, changes nothing
    assert sequence(cabinet.scan_result({(1, 1): None})) == 1  # a scan that finds what we knew
    out = controller.deposit("C1", 1, 1, "04C5", now=clock.now)
    assert sequence(cabinet.receive(out.topic, out.payload)) == 2
    assert sequence(cabinet.card_inserted(1, 1, "04C5")) == 3
    assert publishes(cabinet.door_closed(1, 1), Channel.INVENTORY) == []  # OCCUPIED stays OCCUPIED
    # A restart with no slot open changes nothing either.
    assert sequence(make_cabinet(clock, cabinet.snapshot(), boot=1).connect().after) == 3
    (beat,) = publishes(cabinet.heartbeat())
    assert b'"inventory_sequence":3' in beat.payload


# -- Rule 6: coalesced snapshots ---------------------------------------------------------------


def snapshots(actions: Iterable[Action]) -> list[InventorySnapshot]:
    out = []
    for p in publishes(actions, Channel.INVENTORY):
        message = open_message(Channel.INVENTORY, p.payload, SITE.cabinet("C1").report)
        assert isinstance(message, InventorySnapshot)
        out.append(message)
    return out


def test_coalesced_inventory_goes_once_per_interval_and_is_never_lost(
    clock: Clock, controller: ControllerProtocol
) -> None:
    cabinet = make_cabinet(clock, inventory_interval=timedelta(seconds=2))
    assert len(snapshots(cabinet.connect().after)) == 1  # connect: at once
    assert cabinet.inventory_due() is None
    out = controller.deposit("C1", 1, 1, "04AA01", now=clock.now)
    first = cabinet.receive(out.topic, out.payload)
    # The change came right after the connect snapshot: it waits, but its PersistState does not.
    assert snapshots(first) == [] and isinstance(first[0], PersistState)
    assert cabinet.inventory_due() == clock.now + timedelta(seconds=2)
    inserted = cabinet.card_inserted(1, 1, "04AA01")
    assert snapshots(inserted) == []
    assert publishes(inserted, Channel.EVT)  # the events go out at once
    closed = cabinet.door_closed(1, 1)
    assert snapshots(closed) == []
    clock.tick(2)
    (snap,) = snapshots(cabinet.flush_inventory())
    # One snapshot for three changes, and it says what the last one left.
    assert snap.slots[0].state is SlotState.OCCUPIED and snap.slots[0].card_serial == "04AA01"
    assert cabinet.inventory_due() is None and cabinet.flush_inventory() == []
    # A scan is never held back.
    scan = controller.inventory_scan("C1", now=clock.now)
    cabinet.receive(scan.topic, scan.payload)
    assert len(snapshots(cabinet.scan_result({(1, 1): "04AA01"}))) == 1


def test_without_an_interval_every_change_publishes(
    clock: Clock, controller: ControllerProtocol
) -> None:
    cabinet = make_cabinet(clock)
    cabinet.connect()
    out = controller.deposit("C1", 1, 1, "04AA01", now=clock.now)
    assert len(snapshots(cabinet.receive(out.topic, out.payload))) == 1
    assert cabinet.inventory_due() is None
