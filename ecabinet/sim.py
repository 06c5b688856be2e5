"""The cabinet emulator's runner: :class:`CabinetProtocol` + :class:`Device` + a journal + MQTT.

Four tasks, like a firmware's main loop and its interrupt handlers::

    link (MQTT reader) ──► inbox ──► main: protocol ──► actions ──► journal (PersistState first)
    mechanics (device) ──►   ▲             │                        outbox ──► link (writer)
    heartbeat timer ─────────┘             └──────────────────────► device (OpenSlot, …)

Rule 1: only the main task calls the protocol and the journal, one input at a time, and runs each
        action list in order; nothing in it awaits, so an input is handled whole or not at all.
        A PersistState is on disk before the next action of its list (protocol Rule 4).
Rule 2: publishing is the link task's business: the main task queues (the *outbox*), the link
        task publishes in order and drops a message from the queue only once the broker has it.
        A drop in the connection leaves the rest queued; per topic, the order of counters is kept
        (the controller checks counters per channel).  Retained messages (inventory, status)
        supersede older queued ones on the same topic; heartbeats are not queued while offline.
Rule 3: every (re)connection asks the protocol for a fresh :class:`ConnectPlan` (a new will with a
        new counter, the ``online`` status, the boot faults, a fresh inventory), persisted before
        CONNECT; failures back off exponentially with full jitter (AWS Architecture Blog,
        "Exponential Backoff and Jitter") so twenty cabinets do not hammer a restarted broker in step.
Rule 4: :meth:`CabinetSim.stop` is the clean path (``offline``/``shutdown`` published, then
        DISCONNECT, so the broker discards the will); :meth:`CabinetSim.power_loss` is not: the
        socket is shut under the client with no DISCONNECT (MQTT 5.0 3.1.2.5: the server then
        publishes the will), every task is cancelled, the journal closed as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from ecabinet.device import (
    CardGone,
    CardSensed,
    Device,
    DeviceEvent,
    DoorOpened,
    DoorShut,
    FaultDetected,
    Hand,
    Mechanics,
    PowerCut,
    ScanDone,
)
from ecabinet.device_journal import DeviceJournal
from ecabinet.errors import CabinetError, LinkError
from ecabinet.mqtt import BrokerAddress, Inbound, MqttLink, connect
from ecabinet.protocol import (
    Action,
    CabinetProtocol,
    CabinetState,
    LightSlot,
    OpenSlot,
    PersistState,
    Publish,
    ReportSecurityEvent,
    ScanSlots,
)
from ecabinet.security import CabinetKeys, RandomSource
from ecabinet.topics import CHANNELS, Channel, topic

__all__ = ["Backoff", "CabinetSim", "SimError"]

log = logging.getLogger("ecabinet.sim")

#: Messages kept for the broker while offline; beyond it the oldest go (and are counted).
OUTBOX_LIMIT: Final = 10_000
#: QoS 1 publishes handed to the client before the broker's PUBACK of the first: the reports of
#: one door movement (ack, door opened, card gone) leave back to back instead of one broker round
#: trip apart.  Order is kept: the client writes them in call order, and the broker forwards one
#: client's messages in the order it received them (MQTT 3.1.1 and 5.0, 4.6 "Message ordering").
#: Below Mosquitto's default receive maximum (20), so that the broker never holds them back, and
#: below the number of pending publishes aiomqtt warns about (more than 10).
IN_FLIGHT: Final = 8
HISTORY_LIMIT: Final = 10_000


class SimError(CabinetError):
    """The emulator cannot run: wrong geometry for its state, not started, or it has failed."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: attempt n waits uniform(0, min(maximum, initial * factor**n)) seconds."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.factor >= 1):
            raise ValueError("0 < initial <= maximum and factor >= 1")

    def delay(self, attempt: int, random: RandomSource) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        fraction = int.from_bytes(random(4), "big") / 2**32
        return ceiling * fraction


# -- main task inputs besides Inbound and DeviceEvent ------------------------------------------


@dataclass(frozen=True, slots=True)
class _Beat:
    pass


@dataclass(frozen=True, slots=True)
class _FlushInventory:
    pass


@dataclass(frozen=True, slots=True)
class _Plan:
    done: asyncio.Future[Publish]


@dataclass(frozen=True, slots=True)
class _Stop:
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class _Hand:
    act: Callable[[], list[DeviceEvent]]
    done: asyncio.Future[list[DeviceEvent]]


_Input = Inbound | DeviceEvent | _Beat | _FlushInventory | _Plan | _Stop | _Hand


def _channel(publish: Publish) -> str:
    return publish.topic.rsplit("/", 1)[-1]


_RETAINED: Final = frozenset(c.value for c, spec in CHANNELS.items() if spec.retain)


class CabinetSim:
    """One emulated cabinet.  ``await start()``, then ``stop()`` or ``power_loss()``; ``start()``
    again to boot from the persisted state (a restart).

    ``state_dir`` holds the journal (:mod:`ecabinet.device_journal`); ``durable=False`` skips its
    fsyncs, for load tests only (a machine crash may then lose state; the default is durable).
    ``mechanics`` and ``hand`` are the device's (:mod:`ecabinet.device`); inject faults with
    ``sim.device.inject(...)``.  Tests wait with :meth:`wait_until` / :meth:`wait_idle` and look
    at ``device_events``, ``security_notes``, ``connections``, ``boots``, ``power_cuts``.
    """

    def __init__(
        self,
        site: str,
        cabinet: str,
        keys: CabinetKeys,
        address: BrokerAddress,
        state_dir: str | os.PathLike[str],
        *,
        drawers: int,
        slots_per_drawer: int,
        mechanics: Mechanics | None = None,
        hand: Hand = Hand.AUTO,
        heartbeat_s: float = 30.0,
        durable: bool = True,
        backoff: Backoff | None = None,
        keepalive: int = 10,
        connect_timeout: float = 5.0,
        max_command_age: timedelta | None = None,
        recent_limit: int = 256,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random: RandomSource = os.urandom,
        client_id: str | None = None,
        inventory_interval_s: float | None = None,
    ) -> None:
        if heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be > 0")
        self.site = site
        self.cabinet = cabinet
        self.address = address
        self.state_dir = Path(state_dir)
        self.drawers = drawers
        self.slots_per_drawer = slots_per_drawer
        self.mechanics = mechanics or Mechanics()
        self.hand = Hand(hand)
        self.heartbeat_s = heartbeat_s
        self.durable = durable
        self.backoff = backoff or Backoff()
        self.client_id = client_id or f"cabinet-{site}-{cabinet}"
        self._keys = keys
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._max_age = max_command_age
        self._recent_limit = recent_limit
        self._clock = clock
        self._random = random
        self._cmd_topic = topic(site, cabinet, Channel.CMD)
        # protocol.py Rule 6: None publishes the retained snapshot after every change.
        self._inventory_interval = (
            timedelta(seconds=inventory_interval_s) if inventory_interval_s is not None else None
        )
        self._inventory_timer: asyncio.TimerHandle | None = None
        # Per boot:
        self._protocol: CabinetProtocol | None = None
        self._device: Device | None = None
        self._journal: DeviceJournal | None = None
        self._persisted: CabinetState | None = None
        self._inbox: asyncio.Queue[_Input] = asyncio.Queue()
        self._outbox: deque[Publish] = deque()  # not yet handed to the client
        self._inflight: deque[Publish] = deque()  # handed to it, waiting for the PUBACK
        self._outbox_ready = asyncio.Event()
        self._write_error: BaseException | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._link: MqttLink | None = None
        self._closing = False
        self._handling = False
        self._changed: asyncio.Future[None] | None = None
        # Observable by tests and the CLI (counters survive restarts):
        self.running = False
        self.connected = False
        self.failure: BaseException | None = None
        self.boots = 0
        self.connections = 0
        self.power_cuts = 0
        self.published = 0
        self.dropped = 0
        self.misrouted = 0
        #: The latest device events and refusals (bounded: a cabinet may run for months).
        self.device_events: deque[DeviceEvent] = deque(maxlen=HISTORY_LIMIT)
        self.security_notes: deque[ReportSecurityEvent] = deque(maxlen=HISTORY_LIMIT)

    def __repr__(self) -> str:
        return (
            f"CabinetSim({self.site}/{self.cabinet}, {self.address.url()}, running={self.running}, "
            f"connected={self.connected}, boots={self.boots})"
        )

    # -- observation ---------------------------------------------------------------------------

    @property
    def protocol(self) -> CabinetProtocol:
        if self._protocol is None:
            raise SimError("the cabinet has not been started")
        return self._protocol

    @property
    def device(self) -> Device:
        if self._device is None:
            raise SimError("the cabinet has not been started")
        return self._device

    @property
    def journal(self) -> DeviceJournal:
        if self._journal is None:
            raise SimError("the cabinet has not been started")
        return self._journal

    @property
    def queued(self) -> int:
        """Messages waiting for the broker (Rule 2): not yet sent, or sent and not acknowledged."""
        return len(self._outbox) + len(self._inflight)

    def idle(self) -> bool:
        """Connected, nothing to handle, nothing moving, nothing waiting to be published."""
        return (
            self.running
            and self.connected
            and self._inbox.empty()
            and not self._handling
            and not self.queued
            and self._device is not None
            and not self._device.busy()
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = 10.0) -> None:
        """Return when ``predicate()`` holds; re-checked after every step the emulator takes.

        ``TimeoutError`` after ``timeout`` seconds; the emulator's failure, if it failed.
        """
        async with asyncio.timeout(timeout):
            while True:
                if self.failure is not None:
                    raise SimError("the cabinet emulator failed") from self.failure
                if predicate():
                    return
                await asyncio.shield(self._next_change())

    async def wait_idle(self, timeout: float | None = 10.0) -> None:
        await self.wait_until(self.idle, timeout)

    def _next_change(self) -> asyncio.Future[None]:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Power up: load the journal, boot the protocol and the device, start connecting."""
        if self.running:
            raise SimError("the cabinet is running already")
        journal = DeviceJournal(self.state_dir, durable=self.durable)
        try:
            state, physical = journal.load()
            if state is None:
                state = CabinetState.empty(self.drawers, self.slots_per_drawer)
            elif (state.drawers, state.slots_per_drawer) != (self.drawers, self.slots_per_drawer):
                raise SimError(
                    f"the state directory holds a {state.drawers}x{state.slots_per_drawer} "
                    f"cabinet, not {self.drawers}x{self.slots_per_drawer}"
                )
            protocol = CabinetProtocol(
                self.site,
                self.cabinet,
                self._keys,
                state,
                clock=self._clock,
                random=self._random,
                max_command_age=self._max_age,
                recent_limit=self._recent_limit,
                inventory_interval=self._inventory_interval,
            )
        except BaseException:
            journal.close()
            raise
        self._journal = journal
        self._persisted = state
        self._protocol = protocol
        self._device = Device(
            self.drawers,
            self.slots_per_drawer,
            mechanics=self.mechanics,
            hand=self.hand,
            physical=physical,
            now_ms=self._now_ms(),
            on_change=journal.record_physical,
        )
        self._inbox = asyncio.Queue()
        self._outbox.clear()
        self._inflight.clear()
        self._outbox_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self.failure = None
        self.running = True
        self.boots += 1
        self._tasks = [
            asyncio.create_task(self._guarded(self._main()), name=f"{self.client_id}:main"),
            asyncio.create_task(
                self._guarded(self._mechanics()), name=f"{self.client_id}:mechanics"
            ),
            asyncio.create_task(self._guarded(self._link_loop()), name=f"{self.client_id}:link"),
            asyncio.create_task(
                self._guarded(self._heartbeats()), name=f"{self.client_id}:heartbeat"
            ),
        ]
        log.info("cabinet %s/%s booted (boot %d)", self.site, self.cabinet, self.boots)
        self._notify()

    async def stop(self, timeout: float = 5.0) -> None:
        """Clean shutdown: ``offline``/``shutdown`` persisted and published, then DISCONNECT."""
        if not self.running:
            return
        try:
            await self._request(_Stop)
        except asyncio.CancelledError:
            await self._halt()  # the caller gave up waiting: still leave nothing running
            raise
        except SimError:
            if self._device is not None and not self._device.powered:
                await self.power_loss()  # the power failed first: no clean path left
                return
            await self._halt()
            raise
        if self.connected:
            with contextlib.suppress(TimeoutError, SimError):
                await self.wait_until(lambda: not self.queued or not self.connected, timeout)
        await self._halt()
        log.info("cabinet %s/%s stopped cleanly", self.site, self.cabinet)

    async def _halt(self) -> None:
        self.running = False
        # Cancelling the link task leaves mqtt.connect() by its clean path (DISCONNECT).
        await self._cancel_tasks()
        if self._device is not None:
            self._device.power_off()
        self._power_down()

    async def power_loss(self) -> None:
        """Stop dead (Rule 4): no offline status, no DISCONNECT; the broker sends the will."""
        if not self.running:
            return
        self.running = False
        self.power_cuts += 1
        link = self._link
        client = _abort(link) if link is not None else None
        if self._device is not None:
            self._device.power_off()
        await self._cancel_tasks()
        await _reap(client)
        self._power_down()
        log.info("cabinet %s/%s lost power", self.site, self.cabinet)

    async def power_cycle(self) -> None:
        await self.power_loss()
        await self.start()

    async def __aenter__(self) -> CabinetSim:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _power_down(self) -> None:
        if self._inventory_timer is not None:
            self._inventory_timer.cancel()
            self._inventory_timer = None
        if self._journal is not None:
            self._journal.close()
        self.connected = False
        self._link = None
        self._notify()

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    # -- the hand, for tests (manual mode, or a person at the cabinet in any mode) -------------

    async def insert_card(self, drawer: int, index: int, serial: str) -> list[DeviceEvent]:
        return await self._by_hand(lambda: self.device.insert_card(drawer, index, serial))

    async def remove_card(self, drawer: int, index: int) -> list[DeviceEvent]:
        return await self._by_hand(lambda: self.device.remove_card(drawer, index))

    async def close_door(self, drawer: int, index: int) -> list[DeviceEvent]:
        return await self._by_hand(lambda: self.device.close_door(drawer, index))

    async def _by_hand(self, act: Callable[[], list[DeviceEvent]]) -> list[DeviceEvent]:
        events: list[DeviceEvent] = await self._request(lambda done: _Hand(act, done))
        return events

    async def _request(self, make: Callable[[asyncio.Future[Any]], _Input]) -> Any:
        """Hand an input to the main task and wait for it to be handled."""
        if not self.running or not self._tasks:
            raise SimError("the cabinet is not running")
        main = self._tasks[0]
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(make(done))
        await asyncio.wait({done, main}, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            raise SimError("the cabinet stopped before handling the request") from self.failure
        return done.result()

    # -- main task (Rule 1) --------------------------------------------------------------------

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A journal that cannot be written, a CA file that is not there, or a bug: the
            # firmware halts rather than act on state it could not keep.  The broker will
            # publish the will.
            log.exception("cabinet %s/%s halted", self.site, self.cabinet)
            self.failure = exc
            self._notify()
            self._spawn(self.power_loss())

    async def _main(self) -> None:
        while True:
            item = await self._inbox.get()
            self._handling = True
            try:
                self._handle(item)
                self._schedule_inventory()
            finally:
                self._handling = False
                self._notify()

    def _schedule_inventory(self) -> None:
        """Arm one timer for a coalesced snapshot (protocol.py Rule 6)."""
        if self._inventory_timer is not None or self._protocol is None:
            return
        due = self._protocol.inventory_due()
        if due is None:
            return
        delay = max(0.0, (due - self._protocol_now()).total_seconds())
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._inventory_timer = None
            self._inbox.put_nowait(_FlushInventory())

        self._inventory_timer = loop.call_later(delay, fire)

    def _protocol_now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._background.discard)

    def _handle(self, item: _Input) -> None:
        protocol = self.protocol
        if isinstance(item, PowerCut):
            self._spawn(self.power_loss())
        elif not self.device.powered:
            # The power is gone (the power_loss task is on its way): nothing is acted on.
            if isinstance(item, _Plan | _Hand | _Stop):
                item.done.set_exception(SimError("the cabinet has no power"))
        elif isinstance(item, _Stop):
            self._closing = True
            self._run(protocol.disconnect())
            item.done.set_result(None)
        elif self._closing:
            # After the offline status nothing is acted on: no door opens, no online again.
            if isinstance(item, _Plan | _Hand):
                item.done.set_exception(SimError("the cabinet is shutting down"))
        elif isinstance(item, _Plan):
            self._connect_plan(item)
        elif isinstance(item, Inbound):
            self._run(protocol.receive(item.topic, item.payload))
        elif isinstance(item, _Beat):
            if self.connected:
                self._run(protocol.heartbeat())
        elif isinstance(item, _FlushInventory):
            self._run(protocol.flush_inventory())
        elif isinstance(item, _Hand):
            try:
                events = item.act()
            except (CabinetError, ValueError) as exc:
                item.done.set_exception(exc)
                return
            for event in events:
                self._sensed(event)
            item.done.set_result(events)
        else:
            self._sensed(item)

    def _sensed(self, event: DeviceEvent) -> None:
        protocol = self.protocol
        self.device_events.append(event)
        if isinstance(event, DoorOpened):
            actions = protocol.slot_opened(event.drawer, event.index, event.command_id)
        elif isinstance(event, CardSensed):
            actions = protocol.card_inserted(event.drawer, event.index, event.serial)
        elif isinstance(event, CardGone):
            actions = protocol.card_removed(event.drawer, event.index)
        elif isinstance(event, DoorShut):
            actions = protocol.door_closed(event.drawer, event.index)
        elif isinstance(event, FaultDetected):
            actions = protocol.fault(event.code, event.drawer, event.index)
        elif isinstance(event, ScanDone):
            actions = protocol.scan_result(event.sensed)
        else:
            assert isinstance(event, PowerCut)
            self._spawn(self.power_loss())
            return  # nothing after a power cut was sensed (device.PowerCut)
        self._run(actions)

    def _connect_plan(self, request: _Plan) -> None:
        plan = self.protocol.connect()
        if plan.persist is not None:
            self._persist(plan.persist)
        # A late heartbeat is worthless (topics.py); acks and events wait for the link.
        heartbeat = Channel.HEARTBEAT.value
        self._outbox = deque(p for p in self._outbox if _channel(p) != heartbeat)
        self._run(plan.after)
        request.done.set_result(plan.will)

    def _run(self, actions: list[Action] | tuple[Action, ...]) -> None:
        device = self.device
        moved = False
        for action in actions:
            if isinstance(action, PersistState):
                self._persist(action)
            elif isinstance(action, Publish):
                self._enqueue(action)
            elif isinstance(action, OpenSlot):
                device.open_slot(
                    action.drawer,
                    action.index,
                    action.purpose,
                    action.command_id,
                    card=self._expected(action.drawer, action.index),
                    now_ms=self._now_ms(),
                )
                moved = True
            elif isinstance(action, LightSlot):
                device.light(action.drawer, action.index, action.duration_ms, now_ms=self._now_ms())
                moved = True
            elif isinstance(action, ScanSlots):
                device.scan(action.command_id, now_ms=self._now_ms())
                moved = True
            else:
                assert isinstance(action, ReportSecurityEvent)
                # The reason never quotes the message (protocol.ReportSecurityEvent).
                log.warning(
                    "cabinet %s/%s refused a message: %s (%s)",
                    self.site,
                    self.cabinet,
                    action.kind.value,
                    action.reason,
                )
                self.security_notes.append(action)
        if moved:
            self._wake.set()

    def _persist(self, action: PersistState) -> None:
        self.journal.persist(action.state)
        self._persisted = action.state

    def _expected(self, drawer: int, index: int) -> str | None:
        """The serial a deposit named: the persisted slot record that precedes its OpenSlot."""
        state = self._persisted
        if state is None:
            return None
        return state.slots[(drawer - 1) * state.slots_per_drawer + index - 1].expected_serial

    def _enqueue(self, publish: Publish) -> None:
        channel = _channel(publish)
        if channel == Channel.HEARTBEAT.value and not self.connected:
            return
        if channel in _RETAINED:
            # The newest retained message says all an older queued one would (Rule 2).
            self._outbox = deque(p for p in self._outbox if p.topic != publish.topic)
        self._outbox.append(publish)
        while self._outbox and self.queued > OUTBOX_LIMIT:
            self._outbox.popleft()
            self.dropped += 1
        self._outbox_ready.set()

    # -- mechanics task ------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(asyncio.get_running_loop().time() * 1000)

    async def _mechanics(self) -> None:
        device = self.device
        while device.powered:
            self._wake.clear()
            events = device.advance(self._now_ms())
            for event in events:
                self._inbox.put_nowait(event)
            if events:
                self._notify()
            due = device.next_due()
            if due is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0, due - self._now_ms()) / 1000):
                        await self._wake.wait()

    # -- heartbeat task ------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self._inbox.put_nowait(_Beat())

    # -- link task (Rules 2, 3) ----------------------------------------------------------------

    async def _link_loop(self) -> None:
        attempt = 0
        while True:
            try:
                will: Publish = await self._request(_Plan)
            except SimError:
                if self._closing:
                    return  # stop() came first: no more connections
                raise
            try:
                async with connect(
                    self.address,
                    client_id=self.client_id,
                    will=will,
                    keepalive=self._keepalive,
                    timeout=self._connect_timeout,
                ) as link:
                    self._link = link  # from here a power loss must cut this connection
                    await link.subscribe([(self._cmd_topic, CHANNELS[Channel.CMD].qos)])
                    self.connected = True
                    self.connections += 1
                    attempt = 0
                    log.info("cabinet %s/%s connected to %s", self.site, self.cabinet, link)
                    self._notify()
                    await self._pump(link)
            except LinkError as exc:
                log.info("cabinet %s/%s: link down: %s", self.site, self.cabinet, exc)
            finally:
                self._link = None
                self.connected = False
                self._notify()
            await asyncio.sleep(self.backoff.delay(attempt, self._random))
            attempt += 1

    async def _pump(self, link: MqttLink) -> None:
        reader = asyncio.create_task(self._read(link))
        writer = asyncio.create_task(self._write(link))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in done:
            task.result()  # the LinkError that ended it
        raise LinkError("connection closed")

    async def _read(self, link: MqttLink) -> None:
        cmd = "/" + Channel.CMD.value
        async for message in link.messages():
            if message.topic.endswith(cmd):
                # Any cabinet's cmd topic goes to the protocol: one misrouted to us is reported.
                self._inbox.put_nowait(message)
            else:
                # A report channel can carry no command.  amqtt 0.12.1 sends a connecting client
                # the retained messages matching *every* client's subscriptions (its broker.py,
                # "publish retained messages to a pre-existing session's subscriptions"), so a
                # cabinet on the embedded broker receives the other cabinets' inventories: noise
                # to drop, not an attack to report.
                self.misrouted += 1
        raise LinkError("connection closed")

    async def _write(self, link: MqttLink) -> None:
        """Hand the outbox to the client in order, up to IN_FLIGHT unacknowledged; a message
        leaves the queue when the broker has acknowledged it.  When the link goes, whatever is
        unacknowledged goes back to the front of the outbox, in order, to be sent again on the
        next connection (at least once, Rule 2)."""
        sending: set[asyncio.Task[None]] = set()
        self._write_error = None
        try:
            while True:
                while not self._outbox or len(self._inflight) >= IN_FLIGHT:
                    if self._write_error is not None:
                        raise self._write_error
                    self._outbox_ready.clear()
                    await self._outbox_ready.wait()
                if self._write_error is not None:
                    raise self._write_error
                publish = self._outbox.popleft()
                self._inflight.append(publish)
                # A task's first step calls the client's publish: tasks start in creation order,
                # so the messages are written in outbox order.
                task = asyncio.create_task(self._send(link, publish))
                sending.add(task)
                task.add_done_callback(sending.discard)
        finally:
            for task in list(sending):
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
            self._outbox.extendleft(reversed(self._inflight))
            self._inflight.clear()

    async def _send(self, link: MqttLink, publish: Publish) -> None:
        try:
            await link.publish(publish)
        except LinkError as exc:
            self._write_error = exc
            self._outbox_ready.set()
            return
        # Acknowledged: normally the oldest in flight (the broker acknowledges in order).
        for position, waiting in enumerate(self._inflight):
            if waiting is publish:
                del self._inflight[position]
                break
        self.published += 1
        self._outbox_ready.set()
        self._notify()


def _abort(link: MqttLink) -> Any:
    """Shut the TCP connection under the MQTT client without a DISCONNECT packet.

    ``MqttLink`` has no public way to do this (a clean exit always sends DISCONNECT), so this
    reaches through it to aiomqtt's paho client socket; returns the aiomqtt client for
    :func:`_reap`.  Shutting down, not closing: the event loop still watches the descriptor.
    """
    client = getattr(link, "_client", None)
    paho = getattr(client, "_client", None)
    sock = paho.socket() if paho is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    return client


async def _reap(client: Any) -> None:
    """Collect aiomqtt's 'unexpected disconnection' so asyncio does not log it as unretrieved."""
    disconnected = getattr(client, "_disconnected", None)
    if not isinstance(disconnected, asyncio.Future):
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await asyncio.wait({disconnected})
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()
