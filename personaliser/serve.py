"""``perso chip serve``: our chip emulator in vpcd readers, so any PC/SC host can talk to it.

Two modes (the CLI wires them; :func:`serve_image_command` and :func:`serve_blanks_command`
return exit codes, :func:`serve_image` and :class:`BlankFeeder` are the argparse-free cores):

- **one image**: a chip image file sits in one vpcd slot until stopped; the image is written back
  (atomically) whenever the host powers the card off and on exit.
- **a card feeder**: N slots, slot *i* on TCP port ``first_port + i`` (vpcd gives each reader.conf
  entry two slots on PORT and PORT + 1, see :func:`chip.transport.vpcd.reader_conf`), each
  presenting a fresh blank whose static SCP03 keys come from the keystore (the command writes the
  matching ``reader.conf`` and driver copies under ``out_dir/vpcd/`` for pcscd).  A blank that is
  SECURED (personalised and locked) when the host powers it off is finished: the slot saves it as
  ``out_dir/<serial>.img``, takes it out and presents the next blank.  A card written to but not
  SECURED when powered off is taken out as spoiled (the encoder gave up on it).

Faults are injected per card by a :class:`FaultPolicy` (drop the link after K APDUs, pull the card
during its n-th UPDATE BINARY, go mute after K APDUs).  A card that suffered one is spoiled: it is
counted and its image saved under ``out_dir/spoiled/``, never presented again.  Stock reconciles per
slot: presented = completed + spoiled + returned (blanks untouched at shutdown go back).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from chip.emulator import ChipImage, ChipOS, Lifecycle
from chip.errors import ChipError
from chip.profile import INS_UPDATE_BINARY
from chip.protocols.scp03 import StaticKeys
from chip.random import RandomSource, system_random
from chip.transport.vpcd import (
    DEFAULT_PORT,
    Backoff,
    Disposition,
    LinkEnd,
    VirtualCardSocket,
    write_reader_conf,
)
from personaliser.errors import PersoError
from personaliser.keystore import FileKeystore

__all__ = [
    "BlankFeeder",
    "FaultPlan",
    "FaultPolicy",
    "FeederSlot",
    "SlotCounters",
    "random_serials",
    "serve_blanks",
    "serve_blanks_command",
    "serve_image",
    "serve_image_command",
]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_SETUP = 0, 2
#: Blank serials: the issuer prefix then 8 random bytes (GP key diversification data, 10 bytes).
SERIAL_PREFIX = b"HK"


class _Keys(Protocol):
    def scp03_keys_for(self, kdd: bytes) -> StaticKeys: ...


def random_serials(rng: RandomSource = system_random) -> Callable[[], bytes]:
    def next_serial() -> bytes:
        return SERIAL_PREFIX + rng(8)

    return next_serial


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (main thread only; elsewhere the caller owns stopping)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- one image -----------------------------------------------------------------------------------


class _Checkpoint:
    """Saves the image whenever the host powers the card off; the card stays in the reader."""

    def __init__(self, image: ChipImage, path: Path) -> None:
        self.image = image
        self.path = path

    def on_apdu(self, apdu: bytes) -> Disposition:
        return Disposition.CONTINUE

    def on_power_off(self) -> Disposition:
        self.image.save(self.path)
        return Disposition.CONTINUE


def serve_image(
    image_path: str | Path,
    host: str,
    port: int,
    stop_event: threading.Event,
    *,
    listen: bool = False,
    rng: RandomSource = system_random,
) -> ChipImage:
    """Present the chip image in the vpcd slot at ``host:port`` until ``stop_event``; save it back."""
    path = Path(image_path)
    image = ChipImage.load(path)
    chip = ChipOS(image, rng=rng)
    link = VirtualCardSocket(host, port, listen=listen, name=f"image@{host}:{port}")
    try:
        while not stop_event.is_set():
            link.serve(chip, stop_event, _Checkpoint(image, path))
    finally:
        image.save(path)
    return image


def serve_image_command(
    image: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, listen: bool = False
) -> int:
    """``perso chip serve --image FILE``: serve until SIGINT/SIGTERM; 2 when the image is unusable."""
    stop = threading.Event()
    print(f"serving {image} on vpcd {host}:{port} (Ctrl-C to stop)", file=sys.stderr)
    with _stop_on_signals(stop):
        try:
            saved = serve_image(image, host, port, stop, listen=listen)
        except (ChipError, OSError, ValueError) as exc:
            print(f"perso: cannot serve {image}: {exc}", file=sys.stderr)
            return EXIT_SETUP
    print(f"{image} saved ({saved.lifecycle.value})", file=sys.stderr)
    return EXIT_OK


# -- the feeder ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """A fault injected into one card; the first that applies wins, counts start at 1.

    - ``drop_after_apdus = K``: the link drops before APDU K+1 reaches the card (the emulator
      "loses the connection" mid-personalisation); the host sees the card removed.
    - ``pull_on_write = n``: the n-th UPDATE BINARY reaches the card and is written, then the card
      is pulled before it answers (the worst case for a host: it cannot know the write happened).
    - ``mute_after_apdus = K``: from APDU K+1 on the card says nothing; the link closes after the
      slot's mute timeout, as a reader gives up after its response timeout.
    """

    drop_after_apdus: int | None = None
    pull_on_write: int | None = None
    mute_after_apdus: int | None = None

    def __post_init__(self) -> None:
        for name in ("drop_after_apdus", "mute_after_apdus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.pull_on_write is not None and self.pull_on_write < 1:
            raise ValueError("pull_on_write counts UPDATE BINARY commands from 1")

    def decide(self, apdus_before: int, writes_so_far: int, is_write: bool) -> Disposition:
        """What happens to the next APDU, given how many came before (this one not counted)."""
        if self.drop_after_apdus is not None and apdus_before >= self.drop_after_apdus:
            return Disposition.DROP
        if self.mute_after_apdus is not None and apdus_before >= self.mute_after_apdus:
            return Disposition.MUTE
        if is_write and self.pull_on_write is not None and writes_so_far == self.pull_on_write:
            return Disposition.PULL
        return Disposition.CONTINUE


#: Which fault (if any) a slot injects into a card: (slot index, card number in that slot from 1).
FaultPlan = Callable[[int, int], FaultPolicy | None]


def no_faults(slot: int, card: int) -> FaultPolicy | None:
    return None


class CardFate(enum.Enum):
    COMPLETED = "completed"
    SPOILED = "spoiled"
    RETURNED = "returned"


@dataclass(slots=True)
class SlotCounters:
    presented: int = 0
    completed: int = 0
    spoiled: int = 0
    returned: int = 0
    #: (serial hex, fate, why) of every card that left the slot, in order
    history: list[tuple[str, str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "presented": self.presented,
            "completed": self.completed,
            "spoiled": self.spoiled,
            "returned": self.returned,
        }


class _CardWatch:
    """The feeder's policy for one card: count APDUs and writes, apply a fault, eject when done."""

    def __init__(self, chip: ChipOS, fault: FaultPolicy | None) -> None:
        self.chip = chip
        self.fault = fault
        self.apdus = 0
        self.writes = 0

    def on_apdu(self, apdu: bytes) -> Disposition:
        # INS stays in clear under SCP03 and BAC secure messaging (GP Amendment D §6.2.4,
        # ISO/IEC 7816-4 §10.2: only CLA changes), so a write is recognisable by its INS alone.
        is_write = len(apdu) > 1 and apdu[1] == INS_UPDATE_BINARY
        if is_write:
            self.writes += 1
        fault = self.fault
        disposition = (
            Disposition.CONTINUE
            if fault is None
            else fault.decide(self.apdus, self.writes, is_write)
        )
        self.apdus += 1
        return disposition

    def on_power_off(self) -> Disposition:
        # A card the host has written to leaves the encoder when it is unpowered, finished or not:
        # a half-personalised blank must never be presented again (DESIGN §3: spoil, never reuse).
        if self.chip.image.lifecycle is not Lifecycle.BLANK:
            return Disposition.EJECT
        return Disposition.CONTINUE


class FeederSlot:
    """One slot of the feeder: a thread presenting blanks one after another on one vpcd port."""

    def __init__(self, feeder: BlankFeeder, index: int, port: int) -> None:
        self.feeder = feeder
        self.index = index
        self.port = port
        self.counters = SlotCounters()
        self.link = VirtualCardSocket(
            feeder.host,
            port,
            backoff=feeder.backoff,
            mute_timeout_s=feeder.mute_timeout_s,
            name=f"feeder-slot-{index}@{feeder.host}:{port}",
        )
        self.current_serial: str | None = None
        self._watch: _CardWatch | None = None
        self._armed: FaultPolicy | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"FeederSlot({self.index}, port={self.port})"

    def inject(self, fault: FaultPolicy) -> None:
        """Apply ``fault`` to the card in the slot now (its APDUs counted from its insertion);
        if the slot is between cards, to the next one."""
        watch = self._watch
        if watch is not None:
            watch.fault = fault
        else:
            self._armed = fault

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.link.name, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        feeder, stop = self.feeder, self.feeder.stop_event
        number = 0
        while not stop.is_set():
            if number:
                # The slot stays empty for longer than pcscd's presence poll (400 ms): vpcd only
                # reports a card gone when a poll finds no connection, so a faster swap can look
                # like the same card staying in (its removal seen by no one), and a head waiting
                # for the reader to empty would wait forever. Real feeders take this long too.
                stop.wait(feeder.swap_s)
                if stop.is_set():
                    break
            number += 1
            try:
                serial = feeder.serials()
                keys = feeder.keystore.scp03_keys_for(serial)
                chip = ChipOS(ChipImage.blank(serial, keys), rng=feeder.rng)
            except Exception as exc:  # the slot thread must not die silently
                log.error("slot %d: cannot make a blank: %s", self.index, type(exc).__name__)
                feeder.record_error(self, type(exc).__name__)
                stop.wait(1.0)
                continue
            fault, self._armed = self._armed or feeder.faults(self.index, number), None
            watch = _CardWatch(chip, fault)
            self._watch = watch
            feeder.record_presented(self, serial.hex().upper())
            end: LinkEnd | None = None
            try:
                end = self.link.serve(chip, stop, watch)
            except Exception as exc:  # the slot thread must not die silently
                log.error("slot %d: card failed: %s", self.index, type(exc).__name__)
                feeder.record_error(self, type(exc).__name__)
            self._watch = None
            self._account(chip, end)

    def _account(self, chip: ChipOS, end: LinkEnd | None) -> None:
        """Decide the card's fate, keep its image, and count it (even if the image cannot be saved)."""
        image = chip.image
        serial = image.serial.hex().upper()
        out = self.feeder.out_dir
        target: Path | None = None
        if end is LinkEnd.EJECTED and image.lifecycle is Lifecycle.SECURED:
            fate, why = CardFate.COMPLETED, "secured and powered off"
            target = out / f"{serial}.img"
        elif end is LinkEnd.EJECTED:
            fate, why = CardFate.SPOILED, f"powered off unfinished ({image.lifecycle.value})"
            target = out / "spoiled" / f"{serial}.img"
        elif end is LinkEnd.STOPPED and image.lifecycle is Lifecycle.BLANK:
            fate, why = CardFate.RETURNED, "untouched blank at shutdown"
        else:
            fate = CardFate.SPOILED
            why = end.value if end is not None else "emulator error"
            if end is LinkEnd.STOPPED:
                why = f"left in the slot at shutdown ({image.lifecycle.value})"
            target = out / "spoiled" / f"{serial}.img"
        if target is not None:
            try:
                target.parent.mkdir(exist_ok=True)
                image.save(target)
            except OSError as exc:
                log.error("slot %d: cannot save a card image: %s", self.index, exc.strerror)
                self.feeder.record_error(self, type(exc).__name__)
                why += " (image not saved)"
        self.feeder.record(self, serial, fate, why)


class BlankFeeder:
    """N slots on ports ``first_port .. first_port + N - 1``, each presenting blanks in turn."""

    def __init__(
        self,
        count: int,
        first_port: int,
        keystore: _Keys,
        out_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        serials: Callable[[], bytes] | None = None,
        faults: FaultPlan = no_faults,
        rng: RandomSource = system_random,
        backoff: Backoff | None = None,
        mute_timeout_s: float = 2.0,
        swap_s: float = 0.6,
    ) -> None:
        if count < 1:
            raise ValueError("a feeder has at least one slot")
        if first_port <= 0 or first_port + count - 1 > 65535:
            raise ValueError("ports out of range")
        self.host = host
        self.keystore = keystore
        self.out_dir = Path(out_dir)
        self.serials = serials or random_serials(rng)
        self.faults = faults
        self.rng = rng
        self.backoff = backoff
        self.mute_timeout_s = mute_timeout_s
        self.swap_s = swap_s
        self.stop_event = threading.Event()
        self.errors: list[tuple[int, str]] = []
        self._changed = threading.Condition()
        self.slots = [FeederSlot(self, i, first_port + i) for i in range(count)]

    def __repr__(self) -> str:
        return f"BlankFeeder({len(self.slots)} slots from port {self.slots[0].port})"

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for slot in self.slots:
            slot.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        for slot in self.slots:
            slot.join(timeout_s)

    def __enter__(self) -> BlankFeeder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record_presented(self, slot: FeederSlot, serial: str) -> None:
        with self._changed:
            slot.current_serial = serial
            slot.counters.presented += 1
            self._changed.notify_all()

    def record(self, slot: FeederSlot, serial: str, fate: CardFate, why: str) -> None:
        with self._changed:
            slot.current_serial = None
            counters = slot.counters
            if fate is CardFate.COMPLETED:
                counters.completed += 1
            elif fate is CardFate.SPOILED:
                counters.spoiled += 1
            else:
                counters.returned += 1
            counters.history.append((serial, fate.value, why))
            self._changed.notify_all()

    def record_error(self, slot: FeederSlot, what: str) -> None:
        with self._changed:
            self.errors.append((slot.index, what))
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` holds after a card left a slot (tests, supervisors)."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout_s)

    def totals(self) -> dict[str, int]:
        keys = ("presented", "completed", "spoiled", "returned")
        return {k: sum(getattr(s.counters, k) for s in self.slots) for k in keys}


def serve_blanks(
    count: int,
    first_port: int,
    keystore: _Keys,
    out_dir: str | Path,
    *,
    host: str,
    stop_event: threading.Event,
    serials: Callable[[], bytes] | None = None,
    faults: FaultPlan = no_faults,
    rng: RandomSource = system_random,
) -> list[SlotCounters]:
    """Run a feeder until ``stop_event`` is set; return each slot's counters."""
    feeder = BlankFeeder(
        count, first_port, keystore, out_dir, host=host, serials=serials, faults=faults, rng=rng
    )
    with feeder:
        stop_event.wait()
    return [slot.counters for slot in feeder.slots]


def serve_blanks_command(
    count: int, first_port: int, keys_dir: Path, out_dir: Path, *, host: str = "127.0.0.1"
) -> int:
    """``perso chip serve --blanks N``: feed blanks until SIGINT/SIGTERM, then print the counters."""
    try:
        keystore = FileKeystore(keys_dir)
        conf, slots = write_reader_conf(Path(out_dir) / "vpcd", count, first_port)
    except (PersoError, ValueError, OSError) as exc:
        print(f"perso: {exc}", file=sys.stderr)
        return EXIT_SETUP
    print(f"feeding blanks into {count} vpcd slots; run: pcscd -f -c {conf}", file=sys.stderr)
    for slot in slots:
        print(f"  {slot.reader!r} <- {host}:{slot.port}", file=sys.stderr)
    stop = threading.Event()
    with _stop_on_signals(stop):
        try:
            counters = serve_blanks(
                count, first_port, keystore, out_dir, host=host, stop_event=stop
            )
        except OSError as exc:
            print(f"perso: {exc}", file=sys.stderr)
            return EXIT_SETUP
    print(json.dumps({"slots": [c.as_dict() for c in counters]}, indent=2))
    return EXIT_OK
