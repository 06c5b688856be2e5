"""The physical cabinet of the emulator: doors, lights, card sensors, a hand, and faults.

A discrete-event model with no clock and no I/O of its own, in the sans-I/O style of
:mod:`ecabinet.protocol`: the caller says what time it is (``advance(now_ms)``) and gets back what
the sensors saw (:data:`DeviceEvent`).  :mod:`ecabinet.sim` drives it on the event loop's clock;
tests drive it on a virtual one, so a 3-second deposit takes no time to test.

What the model keeps (per slot): the door (closed/open), the light, and the card physically in the
slot.  The card sensor reads that card, except when a fault says otherwise.  Timings
(:class:`Mechanics`) are the motor and the officer's hand::

    OpenSlot ──door_open_ms──► DoorOpened ──insert_ms──► CardSensed ──close_ms──► DoorShut
                                (deposit)                (the hand put the card in; auto hand)
                          └──── (retrieval/return) ──remove_ms──► CardGone ──close_ms──► DoorShut

Rule 1: the device reports sensors, never the protocol's view: a card put into a slot the
        protocol thinks empty is sensed like any other (the protocol decides it is a fault).
Rule 2: a physical change is announced to ``on_change`` before the sensor event that follows it,
        so the emulator can journal the physics first: a card put in just before a power cut is
        still in its slot after the restart, even though its ``card_inserted`` never went out.
Rule 3: injected faults are one-shot: each fires at the first occasion that matches its slot
        (or any slot, if none was named) and is then spent.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final
from uuid import UUID

from ecabinet.errors import CabinetError
from ecabinet.messages import FaultCode
from ecabinet.protocol import OpenPurpose
from ecabinet.slots import MAX_DRAWERS, MAX_SLOTS_PER_DRAWER, slot_code

__all__ = [
    "CardGone",
    "CardSensed",
    "Device",
    "DeviceError",
    "DeviceEvent",
    "Door",
    "DoorOpened",
    "DoorShut",
    "FaultDetected",
    "FaultKind",
    "Hand",
    "Mechanics",
    "PhysicalSlot",
    "PhysicalState",
    "PowerCut",
    "ScanDone",
]


class DeviceError(CabinetError):
    """A physically impossible request: a card into a closed door, a second card into a slot."""


class Door(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class Hand(StrEnum):
    """``auto``: the officer puts in / takes out the card and closes the door by themselves.
    ``manual``: nothing happens until a caller does it (:meth:`Device.insert_card` …)."""

    AUTO = "auto"
    MANUAL = "manual"


class FaultKind(StrEnum):
    """Faults a test (or ``perso cabinet sim --fault``) can inject."""

    DOOR_LEFT_OPEN = "door_left_open"  # the auto hand never closes the door: the watchdog reports
    JAM = "jam"  # the door does not open: a ``jam`` fault instead of ``slot_opened``
    SENSOR_MISMATCH = "sensor_mismatch"  # the next insertion is read as another serial
    WRONG_CARD = "wrong_card"  # the auto hand puts another card in than the deposit named
    CARD_NOT_TAKEN = "card_not_taken"  # the auto hand leaves the card in on a retrieval/return
    POWER_LOSS = "power_loss"  # the power fails right after the next card movement


@dataclass(frozen=True, slots=True)
class Mechanics:
    """Mechanical timings in milliseconds, divided by ``speed`` (2.0: everything twice as fast).

    The defaults are those of a real cabinet and counter: the lock and door spring take 300 ms,
    an officer needs about 1.5 s to put a card in or take it out and 0.8 s to push the door shut;
    an inventory scan reads each sensor in 2 ms.  ``door_alarm_ms`` is the firmware's watchdog:
    a door open that long is reported ``door_left_open`` (None: no watchdog).
    """

    door_open_ms: int = 300
    insert_ms: int = 1500
    remove_ms: int = 1500
    close_ms: int = 800
    scan_ms_per_slot: int = 2
    door_alarm_ms: int | None = 30_000
    speed: float = 1.0

    def __post_init__(self) -> None:
        timings = (self.door_open_ms, self.insert_ms, self.remove_ms, self.close_ms)
        if any(t < 0 for t in (*timings, self.scan_ms_per_slot)):
            raise ValueError("mechanical timings are >= 0 ms")
        if self.door_alarm_ms is not None and self.door_alarm_ms < 0:
            raise ValueError("door_alarm_ms is >= 0 ms or None")
        if not self.speed > 0:
            raise ValueError("speed must be > 0")

    @classmethod
    def instant(cls, *, door_alarm_ms: int | None = None) -> Mechanics:
        """Every movement takes no time (tests); the watchdog off unless asked for."""
        return cls(0, 0, 0, 0, 0, door_alarm_ms)

    def ms(self, value: int) -> int:
        return round(value / self.speed)


# -- what the sensors report ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoorOpened:
    drawer: int
    index: int
    command_id: UUID | None


@dataclass(frozen=True, slots=True)
class CardSensed:
    """The slot's sensor read ``serial`` after a card went in."""

    drawer: int
    index: int
    serial: str


@dataclass(frozen=True, slots=True)
class CardGone:
    drawer: int
    index: int


@dataclass(frozen=True, slots=True)
class DoorShut:
    drawer: int
    index: int


@dataclass(frozen=True, slots=True)
class FaultDetected:
    code: FaultCode
    drawer: int
    index: int


@dataclass(frozen=True, slots=True)
class ScanDone:
    command_id: UUID | None
    sensed: Mapping[tuple[int, int], str | None]


@dataclass(frozen=True, slots=True)
class PowerCut:
    """The power failed: the device has stopped; nothing after this was sensed."""


DeviceEvent = DoorOpened | CardSensed | CardGone | DoorShut | FaultDetected | ScanDone | PowerCut


# -- physical state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhysicalSlot:
    """One slot as it physically is (what a person looking at the cabinet would see)."""

    door: Door
    lit: bool
    card: str | None

    def __repr__(self) -> str:
        # A chip serial is no personal data (messages.py), but a repr needs only its presence.
        return f"PhysicalSlot(door={self.door.value}, lit={self.lit}, card={self.card is not None})"


@dataclass(frozen=True, slots=True)
class PhysicalState:
    """What survives a power loss physically: the cards in their slots and the open doors."""

    cards: Mapping[tuple[int, int], str] = field(default_factory=dict)
    open_doors: frozenset[tuple[int, int]] = frozenset()

    def __repr__(self) -> str:
        return f"PhysicalState({len(self.cards)} cards, {len(self.open_doors)} doors open)"


@dataclass(slots=True)
class _Slot:
    card: str | None = None
    door: Door = Door.CLOSED
    lit: bool = False
    light_until_close: bool = False
    light_generation: int = 0
    #: Incremented on every opening: a hand step or watchdog of an earlier opening is stale.
    opening: int = 0


@dataclass(order=True, slots=True)
class _Step:
    due: int
    seq: int
    mechanical: bool = field(compare=False)  # False: a timer (light, watchdog), not a movement
    run: Callable[[], list[DeviceEvent]] = field(compare=False)


@dataclass(slots=True)
class _Armed:
    kind: FaultKind
    position: tuple[int, int] | None
    serial: str | None


_MISREAD: Final = "MISREAD"

OnChange = Callable[[int, int, str | None, bool], None]


def _other_serial(serial: str | None, given: str | None, fallback: str) -> str:
    """A serial that is not ``serial``: ``given`` if the fault named one, else a fixed stand-in."""
    if given is not None:
        return given
    return fallback if serial != fallback else fallback + "-2"


class Device:
    """One cabinet's mechanics.  Not thread-safe: drive it from one task."""

    def __init__(
        self,
        drawers: int,
        slots_per_drawer: int,
        *,
        mechanics: Mechanics | None = None,
        hand: Hand = Hand.AUTO,
        physical: PhysicalState | None = None,
        now_ms: int = 0,
        on_change: OnChange | None = None,
    ) -> None:
        if not (1 <= drawers <= MAX_DRAWERS and 1 <= slots_per_drawer <= MAX_SLOTS_PER_DRAWER):
            raise ValueError(f"drawers 1..{MAX_DRAWERS}, slots 1..{MAX_SLOTS_PER_DRAWER}")
        self.drawers = drawers
        self.slots_per_drawer = slots_per_drawer
        self.mechanics = mechanics or Mechanics()
        self.hand = Hand(hand)
        self.on_change = on_change
        self.powered = True
        self._now = now_ms
        self._slots = {
            (d, i): _Slot() for d in range(1, drawers + 1) for i in range(1, slots_per_drawer + 1)
        }
        self._steps: list[_Step] = []
        self._seq = itertools.count()
        self._armed: list[_Armed] = []
        if physical is not None:
            for position, serial in physical.cards.items():
                self._known(*position).card = serial
            for position in physical.open_doors:
                self._known(*position).door = Door.OPEN
                if self.hand is Hand.AUTO:
                    # Found open at power-up: whoever is at the cabinet pushes it shut.
                    self._closes_later(*position)

    def __repr__(self) -> str:
        return (
            f"Device({self.drawers}x{self.slots_per_drawer}, hand={self.hand.value}, "
            f"powered={self.powered}, pending={len(self._steps)})"
        )

    # -- observation ---------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return self._now

    def slot(self, drawer: int, index: int) -> PhysicalSlot:
        s = self._known(drawer, index)
        return PhysicalSlot(s.door, s.lit, s.card)

    def sense(self, drawer: int, index: int) -> str | None:
        """What the slot's card sensor reads now."""
        return self._known(drawer, index).card

    def physical(self) -> PhysicalState:
        return PhysicalState(
            cards={p: s.card for p, s in self._slots.items() if s.card is not None},
            open_doors=frozenset(p for p, s in self._slots.items() if s.door is Door.OPEN),
        )

    def busy(self) -> bool:
        """A movement (door, hand, scan) is under way; timers (lights, watchdog) do not count."""
        return any(step.mechanical for step in self._steps)

    def next_due(self) -> int | None:
        """When :meth:`advance` next has something to do (None: nothing scheduled)."""
        return self._steps[0].due if self._steps else None

    # -- faults --------------------------------------------------------------------------------

    def inject(
        self,
        fault: FaultKind,
        drawer: int | None = None,
        index: int | None = None,
        *,
        serial: str | None = None,
    ) -> None:
        """Arm a one-shot fault for a slot, or for the next occasion anywhere (Rule 3).

        ``serial``: the card a ``wrong_card`` hand puts in, or what a ``sensor_mismatch`` reads.
        """
        if (drawer is None) != (index is None):
            raise ValueError("give both drawer and index, or neither")
        position = None if drawer is None or index is None else (drawer, index)
        if position is not None:
            self._known(*position)
        self._armed.append(_Armed(FaultKind(fault), position, serial))

    def armed(self) -> tuple[tuple[FaultKind, tuple[int, int] | None], ...]:
        return tuple((a.kind, a.position) for a in self._armed)

    def _take(self, kind: FaultKind, position: tuple[int, int]) -> _Armed | None:
        for n, armed in enumerate(self._armed):
            if armed.kind is kind and armed.position in (None, position):
                return self._armed.pop(n)
        return None

    # -- commands (from the protocol's actions) ------------------------------------------------

    def open_slot(
        self,
        drawer: int,
        index: int,
        purpose: OpenPurpose,
        command_id: UUID | None = None,
        *,
        card: str | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Unlock the door.  ``card``: what an auto hand puts in for a deposit.

        ``now_ms`` (here and in :meth:`light`, :meth:`scan`): when the command came, if the
        device's clock may lag (it moves only in :meth:`advance`); movements start from then.
        """
        self._known(drawer, index)
        self._schedule(
            self.mechanics.door_open_ms,
            lambda: self._opened(drawer, index, purpose, command_id, card),
            at=now_ms,
        )

    def light(
        self, drawer: int, index: int, duration_ms: int | None, *, now_ms: int | None = None
    ) -> None:
        """Light the slot for ``duration_ms``, or (None) until its door next closes."""
        slot = self._known(drawer, index)
        self._check_power()
        slot.lit = True
        slot.light_generation += 1
        slot.light_until_close = duration_ms is None
        if duration_ms is not None:
            generation = slot.light_generation
            self._schedule(
                duration_ms,
                lambda: self._light_off(slot, generation),
                mechanical=False,
                at=now_ms,
            )

    def scan(self, command_id: UUID | None = None, *, now_ms: int | None = None) -> None:
        """Read every sensor, one after the other; :class:`ScanDone` when finished."""
        total = self.mechanics.scan_ms_per_slot * len(self._slots)
        self._schedule(total, lambda: [ScanDone(command_id, self._read_all())], at=now_ms)

    # -- the hand (manual mode, or a person at the cabinet in any mode) ------------------------

    def insert_card(self, drawer: int, index: int, serial: str) -> list[DeviceEvent]:
        slot = self._known(drawer, index)
        self._check_power()
        if slot.door is not Door.OPEN:
            raise DeviceError(f"slot {slot_code(drawer, index)}: the door is closed")
        if slot.card is not None:
            raise DeviceError(f"slot {slot_code(drawer, index)}: a card is in it already")
        return self._put(drawer, index, serial)

    def remove_card(self, drawer: int, index: int) -> list[DeviceEvent]:
        slot = self._known(drawer, index)
        self._check_power()
        if slot.door is not Door.OPEN:
            raise DeviceError(f"slot {slot_code(drawer, index)}: the door is closed")
        if slot.card is None:
            raise DeviceError(f"slot {slot_code(drawer, index)}: no card in it")
        return self._take_out(drawer, index)

    def close_door(self, drawer: int, index: int) -> list[DeviceEvent]:
        slot = self._known(drawer, index)
        self._check_power()
        if slot.door is not Door.OPEN:
            raise DeviceError(f"slot {slot_code(drawer, index)}: the door is closed already")
        return self._shut(drawer, index)

    # -- time ----------------------------------------------------------------------------------

    def advance(self, now_ms: int) -> list[DeviceEvent]:
        """Run everything due by ``now_ms``, in time order; what the sensors saw, in order."""
        events: list[DeviceEvent] = []
        while self.powered and self._steps and self._steps[0].due <= now_ms:
            step = heapq.heappop(self._steps)
            self._now = max(self._now, step.due)
            events.extend(step.run())
        self._now = max(self._now, now_ms)
        return events

    def power_off(self) -> None:
        """Stop dead: pending movements and timers are gone, lights go out; cards stay put."""
        self.powered = False
        self._steps.clear()
        for slot in self._slots.values():
            slot.lit = False

    # -- internals -----------------------------------------------------------------------------

    def _known(self, drawer: int, index: int) -> _Slot:
        slot = self._slots.get((drawer, index))
        if slot is None:
            raise ValueError(f"no slot {drawer}/{index} in this cabinet")
        return slot

    def _check_power(self) -> None:
        if not self.powered:
            raise DeviceError("the cabinet has no power")

    def _schedule(
        self,
        delay_ms: int,
        run: Callable[[], list[DeviceEvent]],
        *,
        mechanical: bool = True,
        at: int | None = None,
    ) -> None:
        self._check_power()
        start = self._now if at is None else max(self._now, at)
        due = start + self.mechanics.ms(delay_ms)
        heapq.heappush(self._steps, _Step(due, next(self._seq), mechanical, run))

    def _changed(self, drawer: int, index: int) -> None:
        if self.on_change is not None:
            slot = self._slots[(drawer, index)]
            self.on_change(drawer, index, slot.card, slot.door is Door.OPEN)

    def _opened(
        self,
        drawer: int,
        index: int,
        purpose: OpenPurpose,
        command_id: UUID | None,
        card: str | None,
    ) -> list[DeviceEvent]:
        position = (drawer, index)
        slot = self._slots[position]
        if self._take(FaultKind.JAM, position):
            slot.lit = False
            return [FaultDetected(FaultCode.JAM, drawer, index)]
        slot.opening += 1
        opening = slot.opening
        slot.door = Door.OPEN
        self._changed(drawer, index)
        alarm = self.mechanics.door_alarm_ms
        if alarm is not None:
            self._schedule(alarm, lambda: self._watchdog(drawer, index, opening), mechanical=False)
        if self.hand is Hand.AUTO:
            if purpose is OpenPurpose.DEPOSIT:
                self._schedule(
                    self.mechanics.insert_ms,
                    lambda: self._hand_inserts(drawer, index, opening, card),
                )
            else:
                self._schedule(
                    self.mechanics.remove_ms, lambda: self._hand_removes(drawer, index, opening)
                )
        return [DoorOpened(drawer, index, command_id)]

    def _still(self, drawer: int, index: int, opening: int) -> bool:
        slot = self._slots[(drawer, index)]
        return slot.door is Door.OPEN and slot.opening == opening

    def _hand_inserts(
        self, drawer: int, index: int, opening: int, card: str | None
    ) -> list[DeviceEvent]:
        if not self._still(drawer, index, opening):
            return []
        events: list[DeviceEvent] = []
        # No card named, or the slot physically full: the officer has nothing to put in.
        if card is not None and self._slots[(drawer, index)].card is None:
            wrong = self._take(FaultKind.WRONG_CARD, (drawer, index))
            serial = card if wrong is None else _other_serial(card, wrong.serial, "WRONGCARD")
            events = self._put(drawer, index, serial)
        if self.powered:
            self._hand_closes_later(drawer, index, opening)
        return events

    def _hand_removes(self, drawer: int, index: int, opening: int) -> list[DeviceEvent]:
        if not self._still(drawer, index, opening):
            return []
        events: list[DeviceEvent] = []
        left = self._take(FaultKind.CARD_NOT_TAKEN, (drawer, index))
        if left is None and self._slots[(drawer, index)].card is not None:
            events = self._take_out(drawer, index)
        if self.powered:
            self._hand_closes_later(drawer, index, opening)
        return events

    def _hand_closes_later(self, drawer: int, index: int, opening: int) -> None:
        if self._take(FaultKind.DOOR_LEFT_OPEN, (drawer, index)):
            return  # walked away: only the watchdog will notice
        self._schedule(
            self.mechanics.close_ms,
            lambda: self._shut(drawer, index) if self._still(drawer, index, opening) else [],
        )

    def _closes_later(self, drawer: int, index: int) -> None:
        slot = self._slots[(drawer, index)]
        slot.opening += 1
        self._hand_closes_later(drawer, index, slot.opening)

    def _put(self, drawer: int, index: int, serial: str) -> list[DeviceEvent]:
        self._slots[(drawer, index)].card = serial
        self._changed(drawer, index)  # Rule 2: the physics first
        if self._power_fails(drawer, index):
            return [PowerCut()]
        misread = self._take(FaultKind.SENSOR_MISMATCH, (drawer, index))
        reading = serial if misread is None else _other_serial(serial, misread.serial, _MISREAD)
        return [CardSensed(drawer, index, reading)]

    def _take_out(self, drawer: int, index: int) -> list[DeviceEvent]:
        self._slots[(drawer, index)].card = None
        self._changed(drawer, index)
        if self._power_fails(drawer, index):
            return [PowerCut()]
        return [CardGone(drawer, index)]

    def _power_fails(self, drawer: int, index: int) -> bool:
        if self._take(FaultKind.POWER_LOSS, (drawer, index)) is None:
            return False
        self.power_off()
        return True

    def _shut(self, drawer: int, index: int) -> list[DeviceEvent]:
        slot = self._slots[(drawer, index)]
        slot.door = Door.CLOSED
        if slot.light_until_close:
            slot.lit = slot.light_until_close = False
        self._changed(drawer, index)
        return [DoorShut(drawer, index)]

    def _light_off(self, slot: _Slot, generation: int) -> list[DeviceEvent]:
        if slot.light_generation == generation:
            slot.lit = False
        return []

    def _watchdog(self, drawer: int, index: int, opening: int) -> list[DeviceEvent]:
        if self._still(drawer, index, opening):
            return [FaultDetected(FaultCode.DOOR_LEFT_OPEN, drawer, index)]
        return []

    def _read_all(self) -> dict[tuple[int, int], str | None]:
        return {position: slot.card for position, slot in self._slots.items()}
