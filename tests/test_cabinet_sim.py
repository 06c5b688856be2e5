"""The cabinet emulator (ecabinet.sim) over a real broker, driven by a real ControllerProtocol.

Most tests use the embedded amqtt broker (in-process, fast); one runs against Mosquitto (MQTT 5,
TLS, passwords, ACLs).  The controller side here is only ``ControllerProtocol`` on a second link:
every ack and event the tests look at has had its MAC and counter checked by it.  Waiting is on
events (the emulator's ``wait_until``, the controller's outcomes), never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ecabinet import sim as sim_module
from ecabinet.broker import EmbeddedBroker, free_port
from ecabinet.device import DoorOpened, FaultKind, Hand, Mechanics
from ecabinet.errors import LinkError
from ecabinet.keyfile import KeyFileError, read_cabinet_key_file, write_cabinet_key_file
from ecabinet.messages import (
    AckStatus,
    CardInserted,
    CardRemoved,
    DoorClosed,
    FaultCode,
    FaultEvent,
    Heartbeat,
    InventorySnapshot,
    Message,
    SecurityEvent,
    SecurityEventKind,
    SlotOpened,
    Status,
)
from ecabinet.mqtt import BrokerAddress, MqttLink, connect
from ecabinet.protocol import (
    Acked,
    ControllerProtocol,
    Duplicate,
    Outcome,
    Outgoing,
    Publish,
    Received,
    UnmatchedAck,
)
from ecabinet.security import CabinetKeys, SiteKey
from ecabinet.sim import Backoff, CabinetSim, SimError
from ecabinet.simcli import main as sim_main
from ecabinet.simcli import parse_fault
from ecabinet.slots import SlotState

SITE = SiteKey("S1", bytes(range(32)))
FAST = Backoff(initial=0.05, maximum=0.3)
REPO = Path(__file__).resolve().parent.parent
M = TypeVar("M", bound=Message)


def run(coro: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def now() -> datetime:
    return datetime.now(UTC)


class Controller:
    """ControllerProtocol on its own link: every outcome kept, awaited by predicate."""

    def __init__(self, address: BrokerAddress, client_id: str = "controller") -> None:
        self.address = address
        self.client_id = client_id
        self.protocol = ControllerProtocol(SITE)
        self.outcomes: list[Outcome] = []
        self._changed = asyncio.Event()
        self._stack = AsyncExitStack()
        self.link: MqttLink | None = None

    async def __aenter__(self) -> Controller:
        self.link = await self._stack.enter_async_context(
            connect(self.address, client_id=self.client_id)
        )
        await self.link.subscribe(self.protocol.subscriptions())
        reader = asyncio.create_task(self._read(self.link))
        self._stack.push_async_callback(_cancel, reader)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _read(self, link: MqttLink) -> None:
        async for message in link.messages():
            self.outcomes.append(self.protocol.receive(message.topic, message.payload, now=now()))
            self._changed.set()

    async def send(self, out: Outgoing) -> Outgoing:
        assert self.link is not None
        await self.link.publish(out)
        return out

    async def wait_for(
        self, match: Callable[[Outcome], bool], *, start: int = 0, timeout: float = 10.0
    ) -> Outcome:
        async with asyncio.timeout(timeout):
            while True:
                for outcome in self.outcomes[start:]:
                    if match(outcome):
                        return outcome
                self._changed.clear()
                await self._changed.wait()

    async def received(
        self,
        kind: type[M],
        match: Callable[[M], bool] = lambda m: True,
        *,
        start: int = 0,
        timeout: float = 10.0,
    ) -> M:
        """The first authentic message of ``kind`` (from ``start``) that ``match``es."""
        outcome = await self.wait_for(
            lambda o: isinstance(o, Received) and isinstance(o.message, kind) and match(o.message),
            start=start,
            timeout=timeout,
        )
        assert isinstance(outcome, Received) and isinstance(outcome.message, kind)
        return outcome.message

    async def acked(self, out: Outgoing, *, status: AckStatus = AckStatus.ACCEPTED) -> Acked:
        outcome = await self.wait_for(
            lambda o: isinstance(o, Acked) and o.pending.correlation_id == out.correlation_id
        )
        assert isinstance(outcome, Acked) and outcome.ack.status is status
        return outcome

    def messages(self, kind: type[M]) -> list[M]:
        return [
            o.message
            for o in self.outcomes
            if isinstance(o, Received) and isinstance(o.message, kind)
        ]


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def make_sim(address: BrokerAddress, state_dir: Path, **kw: Any) -> CabinetSim:
    options: dict[str, Any] = {
        "drawers": 2,
        "slots_per_drawer": 3,
        "mechanics": Mechanics.instant(),
        "backoff": FAST,
    }
    options.update(kw)
    cabinet = options.pop("cabinet", "C1")
    return CabinetSim("S1", cabinet, SITE.cabinet(cabinet), address, state_dir, **options)


def slot_report(
    inventory: InventorySnapshot, drawer: int, index: int
) -> tuple[SlotState, str | None]:
    report = inventory.slots[(drawer - 1) * inventory.slots_per_drawer + index - 1]
    return report.state, report.card_serial


def in_state(drawer: int, index: int, state: SlotState) -> Callable[[InventorySnapshot], bool]:
    return lambda inventory: slot_report(inventory, drawer, index)[0] is state


def online(status: Status) -> bool:
    return status.state == "online"


def opened(sim: CabinetSim, drawer: int, index: int) -> int:
    return sum(
        isinstance(e, DoorOpened) and (e.drawer, e.index) == (drawer, index)
        for e in sim.device_events
    )


# -- the happy paths -----------------------------------------------------------------------------


def test_deposit_then_retrieval(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker, Controller(broker.address) as ctl:
            sim = make_sim(broker.address, tmp_path)
            await sim.start()
            try:
                await ctl.received(Status, online)
                mark = len(ctl.outcomes)
                out = await ctl.send(ctl.protocol.deposit("C1", 1, 2, "04AA01", now=now()))
                await ctl.acked(out)
                closed = await ctl.received(DoorClosed, start=mark)
                assert closed.card_present
                sequence = [
                    type(o.message)
                    for o in ctl.outcomes[mark:]
                    if isinstance(o, Received)
                    and isinstance(o.message, SlotOpened | CardInserted | DoorClosed)
                ]
                assert sequence == [SlotOpened, CardInserted, DoorClosed]
                inserted = ctl.messages(CardInserted)[-1]
                assert (inserted.card_serial, inserted.expected_serial) == ("04AA01", "04AA01")
                await sim.wait_idle()

                # A controller that connects now learns the slot from the retained inventory.
                async with Controller(broker.address, "late-controller") as late:
                    inventory = await late.received(
                        InventorySnapshot, lambda m: slot_report(m, 1, 2)[0] is SlotState.OCCUPIED
                    )
                    assert slot_report(inventory, 1, 2) == (SlotState.OCCUPIED, "04AA01")

                mark = len(ctl.outcomes)
                out = await ctl.send(
                    ctl.protocol.open_for_retrieval("C1", 1, 2, "04AA01", now=now())
                )
                await ctl.acked(out)
                removed = await ctl.received(CardRemoved, start=mark)
                assert removed.card_serial == "04AA01"
                closed = await ctl.received(DoorClosed, start=mark)
                assert not closed.card_present
                await sim.wait_idle()
                assert sim.device.sense(1, 2) is None
                assert sim.protocol.slot_state(1, 2) is SlotState.EMPTY
                assert not sim.device.slot(1, 2).lit
                assert not sim.security_notes
            finally:
                await sim.stop()

    run(scenario())


def test_coalesced_inventory_arrives_once_after_a_burst_of_changes(tmp_path: Path) -> None:
    """protocol.py Rule 6 over a real broker: three deposits' changes, then one fresh snapshot."""

    async def scenario() -> None:
        async with EmbeddedBroker() as broker, Controller(broker.address) as ctl:
            sim = make_sim(broker.address, tmp_path, inventory_interval_s=0.3)
            await sim.start()
            try:
                await ctl.received(Status, online)
                await ctl.received(InventorySnapshot)  # the connect snapshot, at once
                mark = len(ctl.outcomes)
                for index, serial in enumerate(("04AA01", "04AA02", "04AA03"), start=1):
                    out = await ctl.send(ctl.protocol.deposit("C1", 1, index, serial, now=now()))
                    await ctl.acked(out)
                    await ctl.received(DoorClosed, lambda m, i=index: m.index == i, start=mark)
                snapshot = await ctl.received(
                    InventorySnapshot, in_state(1, 3, SlotState.OCCUPIED), start=mark
                )
                assert [slot_report(snapshot, 1, i) for i in (1, 2, 3)] == [
                    (SlotState.OCCUPIED, s) for s in ("04AA01", "04AA02", "04AA03")
                ]
                await sim.wait_idle()
                sent = [
                    o for o in ctl.outcomes[mark:]
                    if isinstance(o, Received) and isinstance(o.message, InventorySnapshot)
                ]  # fmt: skip
                # Nine slot changes; without coalescing that is nine ~snapshots, here one or two.
                assert 1 <= len(sent) <= 2, len(sent)
            finally:
                await sim.stop()

    run(scenario())


def test_a_duplicate_delivery_performs_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            EmbeddedBroker() as broker,
            Controller(broker.address) as ctl,
            make_sim(broker.address, tmp_path) as sim,
        ):
            await ctl.received(Status, online)
            out = ctl.protocol.deposit("C1", 2, 1, "04DUP", now=now())
            await ctl.send(out)
            await ctl.send(out)  # a QoS 1 re-delivery: the same bytes again
            await ctl.acked(out)
            await ctl.wait_for(lambda o: isinstance(o, Duplicate))  # the recorded ack, again
            await ctl.received(DoorClosed)
            await sim.wait_idle()
            assert opened(sim, 2, 1) == 1
            assert sim.device.sense(2, 1) == "04DUP"

    run(scenario())


# -- security ------------------------------------------------------------------------------------


def test_replayed_and_forged_commands_are_refused_and_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        # recent_limit=1: the capture leaves the duplicate window after one more command.
        async with (
            EmbeddedBroker() as broker,
            Controller(broker.address) as ctl,
            make_sim(broker.address, tmp_path, recent_limit=1) as sim,
        ):
            await ctl.received(Status, online)
            await ctl.acked(await ctl.send(ctl.protocol.deposit("C1", 1, 1, "04R", now=now())))
            captured = await ctl.send(ctl.protocol.open_for_retrieval("C1", 1, 1, "04R", now=now()))
            await ctl.acked(captured)
            await ctl.received(CardRemoved)
            await ctl.acked(await ctl.send(ctl.protocol.deposit("C1", 1, 1, "04R", now=now())))
            await sim.wait_idle()
            assert opened(sim, 1, 1) == 3

            await ctl.send(captured)  # the attacker replays the captured retrieval
            alarm = await ctl.wait_for(lambda o: isinstance(o, UnmatchedAck))
            assert isinstance(alarm, UnmatchedAck) and alarm.replay_reported
            await sim.wait_idle()
            assert [n.kind for n in sim.security_notes] == [SecurityEventKind.REPLAY]
            assert opened(sim, 1, 1) == 3 and sim.device.sense(1, 1) == "04R"

            forged = ctl.protocol.open_for_retrieval("C1", 1, 1, "04R", now=now())
            tampered = forged.payload.replace(b'"index":1', b'"index":2')
            await ctl.send(
                    Outgoing(
                        forged.cabinet, forged.topic, tampered, forged.qos, forged.retain,
                        forged.command_id, forged.correlation_id, forged.response_topic,
                    )
                )  # fmt: skip
            event = await ctl.received(SecurityEvent)
            assert (event.kind, event.channel) == (SecurityEventKind.BAD_MAC, "cmd")
            await sim.wait_idle()
            assert opened(sim, 1, 1) == 3 and opened(sim, 1, 2) == 0

    run(scenario())


# -- faults, power, the broker -------------------------------------------------------------------


def test_power_loss_mid_deposit_then_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker, Controller(broker.address) as ctl:
            sim = make_sim(broker.address, tmp_path, hand=Hand.MANUAL)
            await sim.start()
            try:
                first = await ctl.received(Status, online)
                out = await ctl.send(ctl.protocol.deposit("C1", 1, 3, "04PL", now=now()))
                await ctl.acked(out)
                await ctl.received(SlotOpened)
                # The card goes in, and the power fails before the sensor's event is handled.
                sim.device.inject(FaultKind.POWER_LOSS, 1, 3)
                await sim.insert_card(1, 3, "04PL")
                will = await ctl.received(Status, lambda s: s.state == "offline")
                assert will.cause == "lost" and will.boot_id == first.boot_id
                assert not sim.running and sim.power_cuts == 1
                assert ctl.messages(CardInserted) == []
                assert sim.device.sense(1, 3) == "04PL"  # physically in the slot

                mark = len(ctl.outcomes)
                await sim.start()  # power returns: boot from the journal
                again = await ctl.received(Status, online, start=mark)
                assert again.boot_id != first.boot_id and sim.boots == 2
                faults: list[FaultEvent] = []
                while len(faults) < 2:
                    faults.append(
                        await ctl.received(FaultEvent, lambda f: f not in faults, start=mark)
                    )
                assert {(f.code, f.drawer, f.index) for f in faults} == {
                    (FaultCode.POWER_LOSS, None, None),
                    (FaultCode.POWER_LOSS, 1, 3),
                }
                inventory = await ctl.received(InventorySnapshot, start=mark)
                assert slot_report(inventory, 1, 3)[0] is SlotState.FAULT
                assert (
                    sim.device.sense(1, 3) == "04PL" and sim.device.slot(1, 3).door.value == "open"
                )

                # The controller, unsure, sends the deposit again (same bytes): the journal kept
                # its recorded ack, so it is answered and nothing is performed twice.
                await ctl.send(out)
                await ctl.wait_for(lambda o: isinstance(o, Duplicate), start=mark)
                await sim.close_door(1, 3)
                await ctl.received(DoorClosed, start=mark)
                await sim.wait_idle()
                assert opened(sim, 1, 3) == 1  # once, before the power loss; never again

                # The controller asks what is really there; the sensor says: the card.
                mark = len(ctl.outcomes)
                await ctl.acked(await ctl.send(ctl.protocol.inventory_scan("C1", now=now())))
                scanned = await ctl.received(
                    InventorySnapshot, lambda m: slot_report(m, 1, 3)[0] is not SlotState.FAULT,
                    start=mark,
                )  # fmt: skip
                assert slot_report(scanned, 1, 3) == (SlotState.OCCUPIED, "04PL")
            finally:
                await sim.stop()

    run(scenario())


def test_clean_stop_restart_and_heartbeats(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker, Controller(broker.address) as ctl:
            sim = make_sim(broker.address, tmp_path, heartbeat_s=0.05)
            await sim.start()
            first = await ctl.received(Status, online)
            await ctl.received(Heartbeat, lambda h: h.boot_id == first.boot_id)
            await sim.stop()
            down = await ctl.received(Status, lambda s: s.state == "offline")
            assert down.cause == "shutdown"
            assert sim.journal is not None and not sim.running

            mark = len(ctl.outcomes)
            await sim.start()
            try:
                again = await ctl.received(Status, online, start=mark)
                beats = 0
                while beats < 2:
                    await ctl.received(
                        Heartbeat,
                        lambda h: h.boot_id == again.boot_id,
                        start=len(ctl.outcomes) if beats else mark,
                    )
                    beats += 1
                await sim.wait_idle()
                # A clean shutdown is no power loss: no fault reported after the restart.
                assert [m for m in ctl.messages(FaultEvent)] == []
                assert [s.cause for s in ctl.messages(Status)] == ["connect", "shutdown", "connect"]
            finally:
                await sim.stop()

    run(scenario())


def test_reconnects_by_itself_after_a_broker_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        broker = EmbeddedBroker(port=port)
        await broker.start()
        sim = make_sim(broker.address, tmp_path, hand=Hand.MANUAL)
        try:
            async with Controller(broker.address) as ctl:
                await sim.start()
                await ctl.received(Status, online)
                await ctl.acked(await ctl.send(ctl.protocol.deposit("C1", 1, 1, "04BR", now=now())))
                await ctl.received(SlotOpened)
                await sim.insert_card(1, 1, "04BR")
                await sim.wait_idle()
            await broker.stop()
            await sim.wait_until(lambda: not sim.connected)

            # While the broker is away the door is shut: the event waits in the outbox.
            await sim.close_door(1, 1)
            assert sim.queued >= 1

            broker = EmbeddedBroker(port=port)
            await broker.start()
            await sim.wait_until(lambda: sim.connections == 2)
            await sim.wait_idle()
            assert sim.queued == 0
            async with Controller(broker.address, "controller-2") as ctl:
                await ctl.received(Status, online)
                inventory = await ctl.received(InventorySnapshot)
                assert slot_report(inventory, 1, 1) == (SlotState.OCCUPIED, "04BR")
            assert sim.protocol.slot_state(1, 1) is SlotState.OCCUPIED
        finally:
            await sim.stop()
            await broker.stop()

    run(scenario())


def test_injected_jam_and_sensor_mismatch_reach_the_controller(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            EmbeddedBroker() as broker,
            Controller(broker.address) as ctl,
            make_sim(broker.address, tmp_path) as sim,
        ):
            await ctl.received(Status, online)
            sim.device.inject(FaultKind.JAM, 2, 1)
            await ctl.acked(await ctl.send(ctl.protocol.deposit("C1", 2, 1, "04J", now=now())))
            jam = await ctl.received(FaultEvent)
            assert (jam.code, jam.drawer, jam.index) == (FaultCode.JAM, 2, 1)
            assert ctl.messages(SlotOpened) == []

            sim.device.inject(FaultKind.SENSOR_MISMATCH, 2, 2)
            await ctl.acked(await ctl.send(ctl.protocol.deposit("C1", 2, 2, "04SM", now=now())))
            inserted = await ctl.received(CardInserted)
            assert (inserted.card_serial, inserted.expected_serial) == ("MISREAD", "04SM")
            await ctl.received(DoorClosed)
            # A scan reads the sensor again: the record was wrong, the slot faults and takes
            # what is really there; a second scan clears it (slots.py Rule 4).
            for expected in (SlotState.FAULT, SlotState.OCCUPIED):
                mark = len(ctl.outcomes)
                await ctl.acked(await ctl.send(ctl.protocol.inventory_scan("C1", now=now())))
                scanned = await ctl.received(
                    InventorySnapshot,
                    in_state(2, 2, expected),
                    start=mark,
                )
                assert slot_report(scanned, 2, 2) == (expected, "04SM")
            mismatch = await ctl.received(FaultEvent, lambda f: f.index == 2)
            assert mismatch.code is FaultCode.SENSOR_MISMATCH

    run(scenario())


def test_a_journal_that_cannot_be_written_halts_the_cabinet_before_it_acts(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker, Controller(broker.address) as ctl:
            sim = make_sim(broker.address, tmp_path)
            await sim.start()
            try:
                first = await ctl.received(Status, online)

                def broken(state: object) -> None:
                    raise OSError(28, "No space left on device")

                sim.journal.persist = broken  # type: ignore[method-assign]
                await ctl.send(ctl.protocol.deposit("C1", 1, 1, "04FULL", now=now()))
                with pytest.raises(SimError, match="failed"):
                    await sim.wait_until(lambda: False)
                will = await ctl.received(Status, lambda s: s.state == "offline")
                assert (will.cause, will.boot_id) == ("lost", first.boot_id)
                assert opened(sim, 1, 1) == 0 and sim.device.sense(1, 1) is None
                assert isinstance(sim.failure, OSError) and not sim.running
            finally:
                await sim.stop()
            # The same state directory with another geometry is refused.
            with pytest.raises(SimError, match="2x3"):
                await make_sim(broker.address, tmp_path, drawers=3).start()

    run(scenario())


def test_outbox_keeps_order_per_topic_and_only_the_newest_retained(tmp_path: Path) -> None:
    sim = make_sim(BrokerAddress("127.0.0.1", 1), tmp_path)  # never started: offline

    def publish(channel: str, body: bytes) -> Publish:
        return Publish(f"perso/v1/S1/C1/{channel}", body, 0 if channel == "heartbeat" else 1, False)

    queue = [
        publish("evt", b"e1"),
        publish("inventory", b"i1"),
        publish("ack", b"a1"),
        publish("heartbeat", b"h1"),  # worthless once late: not kept while offline
        publish("evt", b"e2"),
        publish("inventory", b"i2"),  # says all that i1 said
    ]
    for item in queue:
        sim._enqueue(item)
    assert [p.payload for p in sim._outbox] == [b"e1", b"a1", b"e2", b"i2"]
    assert sim.queued == 4


class _SlowBroker:
    """A link whose PUBACKs come when the test says: records the order messages were handed over."""

    def __init__(self) -> None:
        self.handed: list[bytes] = []
        self.pubacks: dict[bytes, asyncio.Future[None]] = {}

    async def publish(self, message: Publish) -> None:
        self.handed.append(message.payload)
        self.pubacks[message.payload] = asyncio.get_running_loop().create_future()
        await self.pubacks[message.payload]


def test_reports_leave_back_to_back_in_order_and_unacked_ones_are_sent_again(
    tmp_path: Path,
) -> None:
    sim = make_sim(BrokerAddress("127.0.0.1", 1), tmp_path)  # never started: offline
    window = sim_module.IN_FLIGHT
    bodies = [f"e{n}".encode() for n in range(window + 4)]

    async def scenario() -> None:
        for body in bodies:
            sim._enqueue(Publish("perso/v1/S1/C1/evt", body, 1, False))
        broker = _SlowBroker()
        writer = asyncio.create_task(sim._write(broker))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        # A window's worth handed over without waiting for a single PUBACK, in outbox order.
        assert broker.handed == bodies[:window] and sim.queued == len(bodies)
        for body in bodies[:3]:
            broker.pubacks[body].set_result(None)
        await asyncio.sleep(0.01)
        assert broker.handed == bodies[: window + 3] and sim.queued == len(bodies) - 3
        assert sim.published == 3
        # The link goes while e3… are unacknowledged: they go back, in order, ahead of the rest.
        broker.pubacks[bodies[4]].set_exception(LinkError("connection lost"))
        with pytest.raises(LinkError):
            await asyncio.wait_for(writer, 5)
        assert [p.payload for p in sim._outbox] == bodies[3:] and sim.queued == len(bodies) - 3
        again = _SlowBroker()
        resend = asyncio.create_task(sim._write(again))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert again.handed == bodies[3 : 3 + window]
        resend.cancel()
        with pytest.raises(asyncio.CancelledError):
            await resend
        assert [p.payload for p in sim._outbox] == bodies[3:]

    asyncio.run(scenario())


def test_backoff_grows_with_full_jitter() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    assert backoff.delay(0, lambda n: b"\xff" * n) < 0.1
    assert backoff.delay(10, lambda n: b"\xff" * n) == pytest.approx(1.0, rel=1e-6)
    assert backoff.delay(3, lambda n: b"\x00" * n) == 0.0
    assert backoff.delay(3, lambda n: b"\x80" + b"\x00" * (n - 1)) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        Backoff(initial=0)


# -- against Mosquitto (MQTT 5, TLS, passwords, ACLs) --------------------------------------------


@pytest.mark.integration
def test_against_mosquitto(tmp_path: Path, fresh_mosquitto: Any) -> None:
    from tests.brokers import unique_id

    cabinet = unique_id("C")
    cabinet_address = fresh_mosquitto.add_cabinet(cabinet)
    controller_address = fresh_mosquitto.add_controller()

    async def scenario() -> None:
        async with Controller(controller_address, "controller") as ctl:
            sim = make_sim(cabinet_address, tmp_path, cabinet=cabinet)
            await sim.start()
            try:
                first = await ctl.received(Status, online)
                out = await ctl.send(ctl.protocol.deposit(cabinet, 1, 1, "04MQ", now=now()))
                await ctl.acked(out)
                await ctl.received(DoorClosed)
                await sim.power_loss()
                will = await ctl.received(Status, lambda s: s.state == "offline")
                assert (will.cause, will.boot_id) == ("lost", first.boot_id)
                mark = len(ctl.outcomes)
                await sim.start()
                await ctl.received(Status, online, start=mark)
                inventory = await ctl.received(InventorySnapshot, start=mark)
                assert slot_report(inventory, 1, 1) == (SlotState.OCCUPIED, "04MQ")
            finally:
                await sim.stop()
            down = await ctl.received(Status, lambda s: s.cause == "shutdown")
            assert down.state == "offline"

    run(scenario())


# -- the key file and the command line ------------------------------------------------------------


def test_key_file_round_trip_and_refusals(tmp_path: Path) -> None:
    keys = SITE.cabinet("C1")
    path = write_cabinet_key_file(tmp_path / "c1.key", keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 129 and text.endswith("\n")
    assert read_cabinet_key_file(path).to_bytes() == keys.to_bytes()
    secret = keys.to_bytes().hex()

    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600") as too_open:
        read_cabinet_key_file(path)
    path.chmod(0o600)
    path.write_text(secret.upper() + "\n")
    with pytest.raises(KeyFileError, match="hex") as bad:
        read_cabinet_key_file(path)
    same = CabinetKeys.from_bytes(bytes(64)[:32] + bytes(range(32)))
    write_cabinet_key_file(path, same)
    path.write_text("00" * 64 + "\n")
    with pytest.raises(KeyFileError, match="two keys") as equal:
        read_cabinet_key_file(path)
    with pytest.raises(KeyFileError, match="cannot open"):
        read_cabinet_key_file(tmp_path / "missing.key")
    for caught in (too_open, bad, equal):
        assert secret not in str(caught.value) and secret.upper() not in str(caught.value)


def test_parse_fault() -> None:
    assert parse_fault("jam") == (FaultKind.JAM, None, None)
    assert parse_fault("power_loss@2/15") == (FaultKind.POWER_LOSS, 2, 15)
    for bad in ("melt", "jam@2", "jam@a/b"):
        with pytest.raises(ValueError):
            parse_fault(bad)


def test_cli_refuses_bad_arguments_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = write_cabinet_key_file(tmp_path / "k", SITE.cabinet("C1"))
    base = ["--site", "S1", "--cabinet", "C1", "--broker", "mqtt://127.0.0.1:1"]
    base += ["--state-dir", str(tmp_path / "state")]
    assert sim_main([*base, "--key-file", str(tmp_path / "nope")]) == 2
    assert sim_main([*base, "--key-file", str(key), "--fault", "jam@9/9"]) == 2
    assert sim_main([*base, "--key-file", str(key), "--broker", "http://x"]) == 2
    assert "perso:" in capsys.readouterr().err


@pytest.mark.integration
def test_cli_runs_a_cabinet_until_sigterm(tmp_path: Path, fresh_mosquitto: Any) -> None:
    """``python -m ecabinet.simcli`` over TLS with a password file, an injected power loss (the
    process powers the cabinet up again by itself), then SIGTERM: a clean shutdown, status 0."""
    cabinet = "C9"
    key = write_cabinet_key_file(tmp_path / "c9.key", SITE.cabinet(cabinet))
    address = fresh_mosquitto.add_cabinet(cabinet)
    password_file = tmp_path / "c9.password"
    password_file.write_text(address.password + "\n")
    password_file.chmod(0o600)

    async def scenario() -> None:
        async with Controller(fresh_mosquitto.add_controller()) as ctl:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ecabinet.simcli",
                "--site", "S1", "--cabinet", cabinet, "--drawers", "1", "--slots", "2",
                "--broker", address.url(), "--ca", str(address.ca_file),
                "--username", address.username, "--password-file", str(password_file),
                "--key-file", str(key), "--state-dir", str(tmp_path / "state"),
                "--speed", "100", "--heartbeat", "0.2",
                "--fault", "power_loss@1/1", "--restart-after", "0.1",
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                first = await ctl.received(Status, online, timeout=30)
                # The injected power loss: the will, then the cabinet powers up again by itself.
                await ctl.send(ctl.protocol.deposit(cabinet, 1, 1, "04PWR", now=now()))
                await ctl.received(Status, lambda s: s.cause == "lost")
                await ctl.received(Status, lambda s: online(s) and s.boot_id != first.boot_id)
                out = await ctl.send(ctl.protocol.deposit(cabinet, 1, 2, "04CLI", now=now()))
                await ctl.acked(out)
                closed = await ctl.received(DoorClosed, lambda m: m.index == 2)
                assert closed.card_present
                await ctl.received(Heartbeat)
                mark = len(ctl.outcomes)
                process.send_signal(signal.SIGTERM)
                down = await ctl.received(Status, lambda s: s.state == "offline", start=mark)
                assert down.cause == "shutdown"
                assert await asyncio.wait_for(process.wait(), 10) == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            assert process.stderr is not None
            err = (await process.stderr.read()).decode()
            assert f"cabinet S1/{cabinet}: 1x2 slots" in err and "power lost" in err
            for secret in (key.read_text().strip(), address.password):
                assert secret not in err

    run(scenario())
