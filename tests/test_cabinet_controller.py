"""ecabinet.controller over a real broker (amqtt, EmbeddedBroker) and real emulated cabinets.

No fake broker and no sleeps as synchronisation: every wait is on an event (an ack, an operation's
end, a reconciliation, the emulator's own ``wait_until``), with a timeout that fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest

from ecabinet.audit import AuditWriter, verify
from ecabinet.broker import EmbeddedBroker
from ecabinet.controller import (
    CabinetOfflineError,
    CommandKind,
    CommandTimeoutError,
    Outcome,
    SiteController,
)
from ecabinet.device import DoorOpened, FaultKind, Hand, Mechanics
from ecabinet.messages import CardRemoved, Heartbeat, RejectReason, seal
from ecabinet.mqtt import BrokerAddress, Inbound, connect
from ecabinet.protocol import Acked, CabinetProtocol, CabinetState, Publish, Rejected
from ecabinet.security import SiteKey
from ecabinet.sim import Backoff, CabinetSim
from ecabinet.store import CabinetStore, CardState, CommandRow, CommandStatus, NewCard
from ecabinet.topics import Channel, topic
from tests.brokers import unique_id

SITE = SiteKey("S1", bytes(range(32)))
AUDIT_KEY = bytes(range(32, 64))
OFFICE = "OFF1"
DAY = date(2025, 3, 10)
WAIT = 15.0  # a generous upper bound for any single awaited event on a loaded 2-core machine

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@dataclass
class Site:
    """A broker, emulated cabinets, a store, an audit log and a controller, all started."""

    tmp: Path
    broker: Any  # EmbeddedBroker or ecabinet.mosquitto.MosquittoBroker
    address: BrokerAddress  # the controller's
    store: CabinetStore
    audit: AuditWriter
    controller: SiteController
    sims: dict[str, CabinetSim]
    shapes: dict[str, tuple[int, int]]
    controller_args: dict[str, Any] = field(default_factory=dict)

    def new_controller(self, **overrides: Any) -> SiteController:
        args = {**self.controller_args, **overrides}
        return SiteController(self.address, SITE, self.store, self.audit, **args)

    def entries(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The audit log's entries so far (after the controller's queue is written out)."""
        self.controller.audit_log.flush(WAIT)
        lines = self.audit.path.read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return [r for r in records if kind is None or r["kind"] == kind]

    def register(self, *numbers: int, office: str = OFFICE, day: date = DAY) -> list[str]:
        cards = [NewCard(f"APP{n:04d}", f"SER{n:04d}", office, day) for n in numbers]
        self.store.register_cards(cards)
        return [c.application_id for c in cards]

    async def restart_controller(self, *, crash: bool) -> None:
        for sim in self.sims.values():  # nothing in flight to the old connection (see teardown)
            await sim.wait_idle(WAIT)
        if crash:
            await self.controller.abort()
        else:
            await self.controller.stop()
        self.controller = self.new_controller()
        await self.controller.start()
        await self.ready()

    async def ready(self) -> None:
        """Every cabinet online and reconciled once since the controller started."""
        await self.controller.wait_connected(WAIT)
        for cabinet in self.sims:
            await self.controller.wait_online(cabinet, WAIT)
            await self.controller.wait_reconciled(cabinet, timeout=WAIT)


def make_sim(
    tmp: Path,
    address: BrokerAddress,
    cabinet: str,
    shape: tuple[int, int],
    hand: Hand,
    **extra: Any,
) -> CabinetSim:
    return CabinetSim(
        SITE.site,
        cabinet,
        SITE.cabinet(cabinet),
        address,
        tmp / f"sim-{cabinet}",
        drawers=shape[0],
        slots_per_drawer=shape[1],
        mechanics=Mechanics.instant(),
        hand=hand,
        heartbeat_s=0.5,
        backoff=Backoff(initial=0.05, maximum=0.5),
        **extra,
    )


async def drain_loop() -> None:
    """Let callbacks already scheduled run: amqtt's shutdown closes its connections' transports
    but returns before their ``connection_lost`` callbacks ran, and a loop closed before they run
    leaves unclosed-transport ResourceWarnings (errors here).  Not a wait for anything."""
    for _ in range(5):
        await asyncio.sleep(0)


@asynccontextmanager
async def started_site(
    tmp: Path,
    shapes: dict[str, tuple[int, int]] | None = None,
    *,
    hand: Hand = Hand.AUTO,
    mosquitto: Any = None,
    sim_args: dict[str, Any] | None = None,
    route: Callable[[str, BrokerAddress], BrokerAddress] | None = None,
    **controller_args: Any,
) -> AsyncIterator[Site]:
    """The site on an EmbeddedBroker, or on ``mosquitto`` (a started MosquittoBroker: TLS,
    a password per device, ACLs) when given.  ``route`` may send a cabinet's connection another
    way (through a proxy that can drop the network)."""
    shapes = shapes or {"C1": (2, 5)}
    args: dict[str, Any] = {
        "ack_timeout": 1.0,
        "liveness_timeout": 5.0,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.5,
        "snapshot_wait": 5.0,
        **controller_args,
    }
    async with AsyncExitStack() as stack:
        stack.push_async_callback(drain_loop)  # runs after the broker has stopped
        if mosquitto is None:
            broker: Any = await stack.enter_async_context(EmbeddedBroker())
            address = broker.address
            cabinet_addresses = dict.fromkeys(shapes, address)
        else:
            broker = mosquitto
            address = broker.add_controller()
            cabinet_addresses = broker.add_cabinets(shapes)
        if route is not None:
            cabinet_addresses = {c: route(c, a) for c, a in cabinet_addresses.items()}
        store = stack.enter_context(CabinetStore(tmp / "cabinet.db", sync="barrier"))
        audit = stack.enter_context(AuditWriter(tmp / "audit.jsonl", key=AUDIT_KEY))
        sims = {
            c: make_sim(tmp, cabinet_addresses[c], c, s, hand, **(sim_args or {}))
            for c, s in shapes.items()
        }
        for sim in sims.values():
            await sim.start()
            stack.push_async_callback(sim.stop)
        controller = SiteController(address, SITE, store, audit, **args)
        for cabinet, (drawers, per) in shapes.items():
            controller.register_cabinet(cabinet, OFFICE, drawers, per)
        site = Site(tmp, broker, address, store, audit, controller, sims, shapes, args)
        await controller.start()
        try:
            await site.ready()
            yield site
        finally:
            # Quiesce before tearing down: amqtt 0.12.1 leaves a connection's transport unclosed
            # (a ResourceWarning) when it shuts down mid-way through a client's QoS 1 flow.
            for sim in sims.values():
                if sim.running and sim.failure is None:
                    with contextlib.suppress(TimeoutError):
                        await sim.wait_idle(WAIT)
            await site.controller.stop()


# -- connecting, commands, fail fast --------------------------------------------------------------


def test_start_connects_and_reconciles_every_cabinet(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_site(tmp_path, {"C1": (2, 5), "C2": (1, 4)}) as site:
            for cabinet in ("C1", "C2"):
                record = site.store.cabinet(cabinet)
                assert record is not None and record.status == "online"
                assert site.controller.reconciliations(cabinet) >= 1
            done = site.entries("reconcile.done")
            assert {e["payload"]["cabinet"] for e in done} == {"C1", "C2"}
            assert all(e["payload"]["discrepancies"] == 0 for e in done)
            assert site.entries("link.connected")

    run(scenario())
    verify(tmp_path / "audit.jsonl", key=AUDIT_KEY, anchored=True)


def test_deposit_and_retrieval_through_the_controller(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_site(tmp_path) as site:
            (app,) = site.register(1)
            c = site.controller
            op = await c.deposit("op1", app, "C1", 1, 2)
            assert isinstance(await op.ack, Acked)
            result = await c.wait_done(op.correlation_id)
            assert (result.outcome, result.drawer, result.index) == (Outcome.STOCKED, 1, 2)
            card = site.store.card(app)
            assert card is not None and card.state is CardState.STOCKED
            assert site.sims["C1"].device.sense(1, 2) == "SER0001"

            opened = await c.open_slot("off1", card, "retrieval")
            assert isinstance(await opened.ack, Acked)
            assert opened.ack_latency is not None and opened.ack_latency > 0
            assert (await c.wait_done(opened.correlation_id)).outcome is Outcome.ISSUED
            assert site.store.card(app).state is CardState.ISSUED  # type: ignore[union-attr]
            assert site.sims["C1"].device.sense(1, 2) is None
            assert site.store.command(str(opened.correlation_id)).status is CommandStatus.ACKED  # type: ignore[union-attr]
            kinds = [e["kind"] for e in site.entries()]
            for expected in ("command.sent", "ack.accepted", "event.slot_opened",
                             "event.card_inserted", "event.card_removed", "event.door_closed"):  # fmt: skip
                assert expected in kinds
            sent = [
                e
                for e in site.entries("command.sent")
                if e["payload"]["command"] == "open_for_retrieval"
            ]
            assert sent[0]["actor"] == "off1" and sent[0]["payload"]["slot"] == "01-002"

    run(scenario())


def test_a_command_to_an_offline_cabinet_fails_fast(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_site(tmp_path) as site:
            await site.sims["C1"].stop()  # clean shutdown: retained offline status
            loop = asyncio.get_running_loop()
            await site.controller.wait_status("C1", online=False, timeout=WAIT)
            started = loop.time()
            with pytest.raises(CabinetOfflineError):
                await site.controller.command(CommandKind.INVENTORY_SCAN, "C1")
            assert loop.time() - started < 0.5
            assert site.store.cabinet("C1").status == "offline"  # type: ignore[union-attr]
            assert site.entries("cabinet.offline")

    run(scenario())


def test_a_refused_open_changes_nothing_and_the_sensors_raise_the_discrepancy(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with started_site(tmp_path) as site:
            (app,) = site.register(1)
            # The store believes the card is in 02-003; the cabinet's slot is empty.
            fake = CommandRow(
                "00000000-0000-4000-8000-000000000001", str(uuid4()), "C1", "deposit", "op1"
            )
            site.store.begin_deposit(
                app, cabinet="C1", drawer=2, index=3, command=fake, state=None, actor="op1"
            )
            card = site.store.complete_deposit(app)
            raised = expect_audit(site, "discrepancy.raised")
            op = await site.controller.open_slot("off1", card, "retrieval")
            answer = await op.ack
            assert isinstance(answer, Rejected) and answer.ack.reason is RejectReason.SLOT_STATE
            assert (await op.done).outcome is Outcome.REFUSED
            assert opened_count(site.sims["C1"], 2, 3) == 0
            payload = await asyncio.wait_for(raised, WAIT)
            assert (payload["kind"], payload["slot"]) == ("missing_card", "02-003")
            assert site.store.card(app).state is CardState.EXCEPTION  # type: ignore[union-attr]

    run(scenario())


# -- faults: broker restart, cabinet power loss, controller restart --------------------------------


@pytest.mark.integration
def test_mosquitto_killed_mid_retrieval_then_restarted(
    tmp_path: Path, fresh_mosquitto: Any
) -> None:
    async def scenario() -> None:
        async with started_site(tmp_path, hand=Hand.MANUAL, mosquitto=fresh_mosquitto) as site:
            (app,) = site.register(1)
            c, sim = site.controller, site.sims["C1"]
            op = await c.deposit("op1", app, "C1", 2, 1)
            await op.ack
            await sim.insert_card(2, 1, "SER0001")
            await sim.close_door(2, 1)
            assert (await c.wait_done(op.correlation_id)).outcome is Outcome.STOCKED
            card = site.store.card(app)
            assert card is not None
            opened = await c.open_slot("off1", card, "retrieval")
            await opened.ack
            await sim.wait_idle(WAIT)
            before = c.reconciliations("C1")
            connections = c.connections

            fresh_mosquitto.kill()  # SIGKILL with the door open
            await sim.wait_until(lambda: not sim.connected, WAIT)
            await sim.remove_card(2, 1)  # the officer takes the card meanwhile
            await sim.close_door(2, 1)
            fresh_mosquitto.start()  # same port, same users

            await c.wait_reconciled("C1", after=before, timeout=WAIT)
            assert c.connections == connections + 1
            assert (await c.wait_done(opened.correlation_id)).outcome is Outcome.ISSUED
            assert site.store.card(app).state is CardState.ISSUED  # type: ignore[union-attr]
            assert site.entries("link.lost")
            # The link works again: a fresh command is answered, and nothing was left unexplained.
            assert isinstance(await c.command(CommandKind.INVENTORY_SCAN, "C1"), Acked)
            assert site.store.discrepancies() == []
            assert opened_count(sim, 2, 1) == 2  # the deposit and the retrieval: no more

    run(scenario())


def test_cabinet_power_loss_mid_deposit_is_reconciled_from_the_sensors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_site(tmp_path) as site:
            (app,) = site.register(1)
            c, sim = site.controller, site.sims["C1"]
            sim.device.inject(FaultKind.POWER_LOSS, 1, 3)  # right after the card goes in
            before = c.reconciliations("C1")
            op = await c.deposit("op1", app, "C1", 1, 3)
            # The ack may or may not leave before the power goes; the last will does, and an
            # offline cabinet's pending commands fail at once.
            await sim.wait_until(lambda: not sim.running, WAIT)
            await c.wait_status("C1", online=False, timeout=WAIT)
            assert site.store.card(app).state is CardState.DEPOSITING  # type: ignore[union-attr]
            await sim.start()  # power back: the slot was open, so the cabinet faults it

            result = await asyncio.wait_for(asyncio.shield(op.done), WAIT)
            assert result.outcome is Outcome.STOCKED  # the sensors say the card is in
            assert c.reconciliations("C1") > before
            assert site.store.card(app).state is CardState.STOCKED  # type: ignore[union-attr]
            assert site.entries("cabinet.restarted")
            assert [e["payload"]["code"] for e in site.entries("event.fault")].count(
                "power_loss"
            ) >= 1
            assert site.entries("correction.deposit_completed")
            assert site.store.discrepancies() == []

    run(scenario())


def test_controller_crash_and_restart_resumes_from_the_store(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_site(tmp_path, hand=Hand.MANUAL) as site:
            (app,) = site.register(1)
            op = await site.controller.deposit("op1", app, "C1", 1, 1)
            await op.ack
            await site.sims["C1"].insert_card(1, 1, "SER0001")
            await site.sims["C1"].close_door(1, 1)
            await site.controller.wait_done(op.correlation_id)
            card = site.store.card(app)
            assert card is not None
            opened = await site.controller.open_slot("off1", card, "retrieval")
            await opened.ack
            used = site.sims["C1"].protocol.snapshot().command_counter

            await site.restart_controller(crash=True)  # the door is still open
            assert site.entries("command.abandoned") == []  # it had its ack: nothing unanswered
            await site.sims["C1"].remove_card(1, 1)  # taken while the new controller runs
            await site.sims["C1"].close_door(1, 1)

            await card_reaches(site, app, CardState.ISSUED)
            # No counter reuse: the cabinet accepts the new controller's next command as is.
            answer = await site.controller.command(CommandKind.INVENTORY_SCAN, "C1")
            assert isinstance(answer, Acked)
            assert answer.pending.command.counter > used
            assert not site.entries("command.reissued")

    run(scenario())


def opened_count(sim: CabinetSim, drawer: int, index: int) -> int:
    """How often the cabinet's door at drawer/index physically opened."""
    return sum(
        isinstance(e, DoorOpened) and (e.drawer, e.index) == (drawer, index)
        for e in sim.device_events
    )


async def card_reaches(site: Site, application_id: str, state: CardState) -> None:
    """Until the card is in ``state`` (woken by the controller's card listener, not a poll)."""
    reached = asyncio.Event()

    def listener(change: Any) -> None:
        if change.application_id == application_id and change.state is state:
            reached.set()

    site.controller.add_listener(listener)
    card = site.store.card(application_id)
    if card is not None and card.state is state:
        return
    await asyncio.wait_for(reached.wait(), WAIT)


def expect_audit(
    site: Site, kind: str, predicate: Callable[[dict[str, Any]], bool] = lambda p: True
) -> asyncio.Future[dict[str, Any]]:
    """A future for the payload of the next audit entry of ``kind`` (the controller's audit
    listener sets it; registered now, so create it before causing the entry)."""
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def listener(actor: str, entry_kind: str, payload: dict[str, Any]) -> None:
        if entry_kind == kind and predicate(payload) and not got.done():
            got.set_result(payload)

    site.controller.add_audit_listener(listener)
    return got


# -- security and timeouts -------------------------------------------------------------------------


def test_replays_forgeries_and_strangers_are_refused_audited_and_open_nothing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        # recent_limit=1: the cabinet forgets an answered command id after one more command.
        async with started_site(tmp_path, sim_args={"recent_limit": 1}) as site:
            (app,) = site.register(1)
            c, sim = site.controller, site.sims["C1"]
            # An eavesdropper on the broker (amqtt lets anyone in: the MACs are the defence).
            async with connect(site.address, client_id="eavesdropper") as spy:
                await spy.subscribe([(topic("S1", "C1", Channel.CMD), 1)])
                captured: list[Inbound] = []
                seen_open = asyncio.Event()

                async def listen() -> None:
                    async for message in spy.messages():
                        captured.append(message)
                        if b'"open_for_retrieval"' in message.payload:
                            seen_open.set()

                listening = asyncio.create_task(listen())
                op = await c.deposit("op1", app, "C1", 1, 1)
                await c.wait_done(op.correlation_id)
                card = site.store.card(app)
                assert card is not None
                opened = await c.open_slot("off1", card, "retrieval")
                assert (await c.wait_done(opened.correlation_id)).outcome is Outcome.ISSUED
                await asyncio.wait_for(seen_open.wait(), WAIT)
                capture = next(m for m in captured if b'"open_for_retrieval"' in m.payload)
                await c.command(CommandKind.INVENTORY_SCAN, "C1")  # the cabinet moves on
                await sim.wait_idle(WAIT)
                doors = opened_count(sim, 1, 1)

                alarm = expect_audit(site, "security.replay_reported")
                await spy.publish(Publish(capture.topic, capture.payload, 1, False))
                assert (await asyncio.wait_for(alarm, WAIT))["reason"] == "stale_counter"
                await sim.wait_idle(WAIT)
                assert opened_count(sim, 1, 1) == doors  # the replay opened nothing

                now = datetime.now(UTC)
                fake = CardRemoved(
                    counter=10**9, issued_at=now, event_id=uuid4(), drawer=1, index=2
                )
                _, forged = seal(fake, bytes(32))  # not the cabinet's key
                _, beat = seal(
                    Heartbeat(counter=1, issued_at=now, boot_id=uuid4(), inventory_sequence=0),
                    SITE.cabinet("ZZ9").report,  # authentic, but no such cabinet registered
                )
                first = expect_audit(site, "security.refused", lambda p: p["kind"] == "bad_mac")
                await spy.publish(Publish(topic("S1", "C1", Channel.EVT), forged, 1, False))
                refused = await asyncio.wait_for(first, WAIT)
                assert (refused["cabinet"], refused["channel"]) == ("C1", "evt")
                for _ in range(2):
                    await spy.publish(
                        Publish(topic("S1", "ZZ9", Channel.HEARTBEAT), beat, 1, False)
                    )
                # A sentinel from the same publisher: once it is handled, so are the heartbeats.
                sentinel = expect_audit(site, "security.refused")
                await spy.publish(Publish(topic("S1", "C1", Channel.EVT), forged, 1, False))
                await asyncio.wait_for(sentinel, WAIT)
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)

            assert [e["payload"]["cabinet"] for e in site.entries("security.unknown_cabinet")] == [
                "ZZ9"
            ]
            assert site.store.card(app).state is CardState.ISSUED  # type: ignore[union-attr]
            assert site.store.discrepancies() == []

    run(scenario())


@pytest.mark.integration
def test_a_silent_cabinet_gets_the_same_bytes_again_a_timeout_then_is_offline(
    tmp_path: Path, fresh_mosquitto: Any
) -> None:
    # On Mosquitto (amqtt 0.12.1 leaves this client's connection unclosed at its shutdown); a
    # broker of its own, as the cabinets leave retained messages behind.
    mosquitto = fresh_mosquitto
    cabinet, mute_id = unique_id(), unique_id("M")

    async def scenario() -> None:
        async with started_site(
            tmp_path,
            {cabinet: (1, 2)},
            mosquitto=mosquitto,
            ack_timeout=0.2,
            max_attempts=3,
            liveness_timeout=2.0,
        ) as site:
            c = site.controller
            c.register_cabinet(mute_id, OFFICE, 1, 2)
            # A cabinet that says it is online and then never answers: a bare protocol object.
            mute = CabinetProtocol("S1", mute_id, SITE.cabinet(mute_id), CabinetState.empty(1, 2))
            plan = mute.connect()
            address = mosquitto.add_cabinet(mute_id)
            async with connect(address, client_id=mute_id, will=plan.will) as link:
                await link.subscribe([(topic("S1", mute_id, Channel.CMD), 1)])
                for action in plan.after:
                    if isinstance(action, Publish):
                        await link.publish(action)
                await c.wait_online(mute_id, WAIT)
                received: list[bytes] = []
                three = asyncio.Event()

                async def listen() -> None:
                    async for message in link.messages():
                        received.append(message.payload)
                        if len(received) == 3:
                            three.set()

                listening = asyncio.create_task(listen())
                started = asyncio.get_running_loop().time()
                with pytest.raises(CommandTimeoutError) as timed_out:
                    await c.command(CommandKind.INVENTORY_SCAN, mute_id)
                assert asyncio.get_running_loop().time() - started < 3.0
                await asyncio.wait_for(three.wait(), WAIT)
                assert len(set(received[:3])) == 1  # resent as the very same bytes
                corr = str(timed_out.value.correlation_id)
                record = site.store.command(corr)
                assert record is not None and record.status is CommandStatus.TIMED_OUT
                mine = [e for e in site.entries() if e["payload"].get("correlation_id") == corr]
                assert [e["kind"] for e in mine] == [
                    "command.sent",
                    "command.resent",
                    "command.resent",
                    "command.timed_out",
                ]
                # No heartbeat either: after liveness_timeout of silence it is offline, and a
                # command fails at once instead of waiting for acks that will not come.
                await c.wait_status(mute_id, online=False, timeout=WAIT)
                assert c.online(cabinet)  # the talkative cabinet is not affected
                with pytest.raises(CabinetOfflineError):
                    await c.command(CommandKind.INVENTORY_SCAN, mute_id)
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)
            causes = [e["payload"] for e in site.entries("cabinet.offline")]
            assert {"cabinet": mute_id, "cause": "silent"} in causes

    run(scenario())
