"""Our chip emulator as the virtual ICC behind vpcd, the virtual PC/SC reader driver of vsmartcard.

The link (vsmartcard ``virtualsmartcard/src/vpcd/vpcd.c``, release 3.3 as packaged by Debian):

- TCP; every message in either direction is a frame: a 2-byte big-endian length, then that many bytes.
- From vpcd to the card, a 1-byte frame is a control: ``00`` power off, ``01`` power on, ``02`` reset,
  ``04`` get ATR.  Only *get ATR* is answered (with the ATR); power on/off and reset are not.
- Any longer frame is a command APDU, answered by one frame holding the response APDU (data + SW).
  An empty answer means "no card" to vpcd, so the card never sends one.
- Presence: vpcd has no insertion event.  pcscd polls the slot (about every 400 ms): vpcd accepts a
  pending connection and sends *get ATR*; a connected card that answers is present.  So inserting a
  card is opening the connection and removing it is closing the connection.
- Ports: a ``reader.conf`` entry ``DEVICENAME /dev/null:PORT`` makes one vpcd reader with two slots
  (``vicc_max_slots`` = 2 in Debian's 3.3 build); slot *k* listens on TCP ``PORT + k`` (all
  interfaces) and the card connects to it.  Each entry needs its own copy of the driver file
  (see :func:`reader_conf`).  ``CHANNELID`` is not used when ``DEVICENAME`` carries a port.
- ``DEVICENAME host:PORT`` reverses the roles: vpcd connects to a card listening at
  ``host:PORT + k`` (``listen=True`` here).  With Debian's 3.3 build this works while the card
  listens, but pcscd aborts ("bit out of range 0 - FD_SETSIZE on fd_set") as soon as a slot has no
  card, so only the default direction is fit for use there.

The framing is sans-I/O (:func:`encode_frame`, :class:`FrameDecoder`, :func:`parse_frame`);
:class:`VirtualCardSocket` moves the bytes.  The 40-odd ms per APDU of vsmartcard's own Python
card is Nagle's algorithm meeting a delayed ACK: vpcd 3.3 sends each frame as two writes (length,
then payload) without ``TCP_NODELAY``, so the card side must ACK at once (``TCP_QUICKACK`` after
every read; 0.2 ms per APDU through pcscd measured, 44 ms without).  The card side itself sets
``TCP_NODELAY`` and writes every answer in one ``sendall``.  Neither logs nor exceptions carry APDU
contents (they hold personal data).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from chip.errors import EncodingError

__all__ = [
    "DEFAULT_PORT",
    "MAX_FRAME",
    "MAX_SLOTS",
    "SLOTS_PER_READER",
    "ApduFrame",
    "Backoff",
    "Control",
    "ControlFrame",
    "Disposition",
    "FrameDecoder",
    "LinkEnd",
    "LinkPolicy",
    "LinkStats",
    "VirtualCard",
    "VirtualCardSocket",
    "VpcdSlot",
    "encode_control",
    "encode_frame",
    "parse_frame",
    "reader_conf",
    "reader_entries",
    "write_reader_conf",
]

log = logging.getLogger(__name__)

#: The length prefix is 16 bits (vpcd.c sendToVICC refuses longer messages).
MAX_FRAME = 0xFFFF
_SEND_TIMEOUT_S = 5.0


class Control(enum.IntEnum):
    """Control bytes of vpcd.h (VPCD_CTRL_OFF / _ON / _RESET / _ATR)."""

    POWER_OFF = 0x00
    POWER_ON = 0x01
    RESET = 0x02
    GET_ATR = 0x04


@dataclass(frozen=True, slots=True)
class ControlFrame:
    control: Control


@dataclass(frozen=True, slots=True)
class ApduFrame:
    apdu: bytes

    def __repr__(self) -> str:
        return f"ApduFrame({len(self.apdu)} bytes)"


Frame = ControlFrame | ApduFrame


def encode_frame(payload: bytes) -> bytes:
    """One frame: 2-byte big-endian length, then the payload."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"a vpcd frame carries at most {MAX_FRAME} bytes, not {len(payload)}")
    return len(payload).to_bytes(2, "big") + payload


def encode_control(control: Control) -> bytes:
    return encode_frame(bytes((control,)))


def parse_frame(payload: bytes) -> Frame:
    """Classify one frame from vpcd: a 1-byte frame is a control, anything longer an APDU."""
    if not payload:
        raise EncodingError("empty vpcd frame", field="vpcd.frame")
    if len(payload) == 1:
        try:
            return ControlFrame(Control(payload[0]))
        except ValueError:
            raise EncodingError(
                f"unknown vpcd control byte {payload[0]:02X}", field="vpcd.control"
            ) from None
    return ApduFrame(payload)


class FrameDecoder:
    """Reassembles frames from a byte stream however it is chunked (h11 style: data in, frames out)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame's payload, or None until more data arrives."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        end = 2 + ((buffer[0] << 8) | buffer[1])
        if len(buffer) < end:
            return None
        payload = bytes(buffer[2:end])
        del buffer[:end]
        return payload

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)


# -- reader configuration ------------------------------------------------------------------------

#: vpcd's default port (vpcd.h VPCDPORT)
DEFAULT_PORT = 35963
#: slots per reader.conf entry (VPCDSLOTS of Debian's vsmartcard 3.3 build; read off the driver)
SLOTS_PER_READER = 2
#: pcscd serves at most this many slots (PCSCLITE_MAX_READERS_CONTEXTS of pcsc-lite 1.9.9)
MAX_SLOTS = 16
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"


@dataclass(frozen=True, slots=True)
class VpcdSlot:
    """One card slot: the PC/SC reader name pcscd gives it and the TCP port of its card."""

    reader: str
    port: int


def reader_entries(count: int) -> int:
    """reader.conf entries (vpcd readers) needed for ``count`` slots."""
    return -(-count // SLOTS_PER_READER)


def reader_conf(
    count: int,
    first_port: int,
    *,
    prefix: str = "Perso VPCD",
    drivers: Sequence[str] = (VPCD_DRIVER,),
) -> tuple[str, list[VpcdSlot]]:
    """A ``reader.conf`` giving ``count`` vpcd slots on ports ``first_port .. first_port+count-1``.

    Each entry is one vpcd reader with two slots on PORT and PORT + 1, so entries step by two.
    pcscd names a slot ``"<FRIENDLYNAME> 00 0k"`` (reader number 00 while the friendly name is
    unique, slot k); an odd ``count`` leaves the last entry's second slot unused (and listed).

    ``drivers`` gives one driver file per entry, and they must be distinct copies: vpcd keeps its
    connections in a static array indexed by slot number (ifd-vpcd.c ``ctx[slot]``), and pcscd loads
    a driver path once, so two entries sharing a file overwrite each other's slots and only the
    last entry ever sees a card (seen with Debian's 3.3). :func:`write_reader_conf` makes copies.
    """
    if not 1 <= count <= MAX_SLOTS:
        raise ValueError(f"pcscd serves 1 to {MAX_SLOTS} slots, not {count}")
    if first_port <= 0 or first_port + count - 1 > 65535:
        raise ValueError("ports out of range")
    entries = reader_entries(count)
    if len(drivers) != entries or len(set(drivers)) != entries:
        raise ValueError(f"{count} slots need {entries} distinct copies of the vpcd driver")
    blocks: list[str] = []
    slots: list[VpcdSlot] = []
    for j, driver in enumerate(drivers):
        name = f"{prefix} {chr(ord('A') + j)}"
        port = first_port + SLOTS_PER_READER * j
        blocks.append(
            f'FRIENDLYNAME "{name}"\nDEVICENAME   /dev/null:{port}\nLIBPATH      {driver}\n'
        )
        for k in range(SLOTS_PER_READER):
            if len(slots) < count:
                slots.append(VpcdSlot(f"{name} 00 {k:02X}", port + k))
    return "\n".join(blocks), slots


def write_reader_conf(
    directory: str | os.PathLike[str],
    count: int,
    first_port: int,
    *,
    prefix: str = "Perso VPCD",
    driver: str = VPCD_DRIVER,
) -> tuple[Path, list[VpcdSlot]]:
    """Write ``reader.conf`` and one copy of the vpcd driver per entry into ``directory``.

    Run ``pcscd -c DIRECTORY/reader.conf``.  The directory must allow mapping code (not noexec).
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    copies = []
    for j in range(reader_entries(count)):
        copy = root / f"libifdvpcd-{chr(ord('a') + j)}.so"
        shutil.copyfile(driver, copy)
        copies.append(str(copy))
    text, slots = reader_conf(count, first_port, prefix=prefix, drivers=copies)
    conf = root / "reader.conf"
    conf.write_text(text, encoding="ascii")
    return conf, slots


# -- the card side over a socket ---------------------------------------------------------------


class VirtualCard(Protocol):
    """What sits in a virtual reader: :class:`chip.emulator.ChipOS` provides it."""

    def power_on(self) -> bytes: ...

    def transmit(self, apdu: bytes) -> bytes: ...


class Disposition(enum.Enum):
    """What happens to a frame (decided by a :class:`LinkPolicy` before the card sees it)."""

    #: the card processes it normally
    CONTINUE = "continue"
    #: the card leaves the reader now: a feeder takes it away (the link closes)
    EJECT = "eject"
    #: the link drops now, before the card sees the APDU (the emulator "loses the connection")
    DROP = "drop"
    #: the card processes the APDU, then leaves before answering: the answer is lost
    PULL = "pull"
    #: the card processes nothing more and never answers; the link closes after the mute timeout
    MUTE = "mute"


class LinkEnd(enum.Enum):
    """Why :meth:`VirtualCardSocket.serve` returned: the card is no longer in the reader."""

    EJECTED = "ejected"
    DROPPED = "dropped"
    PULLED = "pulled"
    MUTED = "muted"
    #: :meth:`VirtualCardSocket.remove` was called
    REMOVED = "removed"
    #: the stop event was set
    STOPPED = "stopped"


_ENDS = {
    Disposition.EJECT: LinkEnd.EJECTED,
    Disposition.DROP: LinkEnd.DROPPED,
    Disposition.PULL: LinkEnd.PULLED,
    Disposition.MUTE: LinkEnd.MUTED,
}


class LinkPolicy(Protocol):
    """Hooks of a card feeder or a fault injector; called from the socket's thread."""

    def on_apdu(self, apdu: bytes) -> Disposition: ...

    def on_power_off(self) -> Disposition: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays while vpcd is not there (pcscd not started yet, or restarting)."""

    first_s: float = 0.02
    max_s: float = 0.5
    factor: float = 2.0

    def delays(self) -> Callable[[], float]:
        current = [self.first_s]

        def step() -> float:
            delay = current[0]
            current[0] = min(delay * self.factor, self.max_s)
            return delay

        return step


@dataclass(slots=True)
class LinkStats:
    connects: int = 0
    apdus: int = 0
    controls: int = 0
    errors: int = 0


def _quickack(sock: socket.socket) -> None:
    # vpcd (3.3, as Debian ships it) writes each frame as two send()s, the 2-byte length then
    # the payload, without TCP_NODELAY; Nagle holds the payload until the length is ACKed, and we
    # have nothing to send before the payload arrives, so our delayed-ACK timer (40 ms) would set
    # the pace: 44 ms per APDU measured, 90 ms per reset (POWER_ON and GET_ATR: two frames).
    # Upstream vpcd.c later builds the frame in one buffer. TCP_QUICKACK is not sticky on Linux,
    # so it is set again after every read.
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


_TCP_QUICKACK: int | None = (
    getattr(socket, "TCP_QUICKACK", None) if sys.platform == "linux" else None
)


class VirtualCardSocket:
    """One virtual card slot: connects to vpcd at ``host:port`` and answers it with a card.

    :meth:`serve` is the blocking core (one card, until it leaves the reader or ``stop`` is set);
    it reconnects with backoff when vpcd is not there, and a connection closed by vpcd (pcscd
    restarting) does not take the card out: it reconnects and the card stays inserted.

    For tests, the object also runs its own thread: :meth:`start`, :meth:`insert` a card,
    :meth:`remove` it (close the link), :meth:`insert` another, :meth:`stop`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        listen: bool = False,
        backoff: Backoff | None = None,
        mute_timeout_s: float = 2.0,
        poll_s: float = 0.05,
        name: str | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError("port out of range")
        self.host = host
        self.port = port
        self.listen = listen
        self.backoff = backoff or Backoff()
        self.mute_timeout_s = mute_timeout_s
        self.poll_s = poll_s
        self.name = name or f"vpcd-card@{host}:{port}"
        self.stats = LinkStats()
        self.last_error: str | None = None
        self._leave = threading.Event()
        self._connected = threading.Event()
        # threaded mode
        self._lock = threading.Condition()
        self._card: VirtualCard | None = None
        self._policy: LinkPolicy | None = None
        self._serving = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ends: list[LinkEnd] = []

    def __repr__(self) -> str:
        return f"VirtualCardSocket({self.name!r})"

    @property
    def connected(self) -> bool:
        """True while the link to vpcd is up (the card is in the reader)."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- the blocking core ----------------------------------------------------------------------

    def serve(
        self, card: VirtualCard, stop: threading.Event, policy: LinkPolicy | None = None
    ) -> LinkEnd:
        """Present ``card`` until it leaves the reader (policy, :meth:`remove`) or ``stop`` is set."""
        atr = card.power_on()  # inserting a card: vpcd asks for the ATR before it powers it
        delay = self.backoff.delays()
        listener = self._listener() if self.listen else None
        try:
            while True:
                if stop.is_set():
                    return LinkEnd.STOPPED
                if self._leave.is_set():
                    return LinkEnd.REMOVED
                sock = self._accept(listener) if listener is not None else self._connect()
                if sock is None:
                    if listener is None:
                        self._sleep(delay(), stop)
                    continue
                delay = self.backoff.delays()
                self.stats.connects += 1
                self._connected.set()
                try:
                    end = self._session(sock, card, atr, stop, policy)
                finally:
                    self._connected.clear()
                    _close(sock)
                if end is not None:
                    return end
                # vpcd closed the link (pcscd stopping or restarting): the card stays inserted.
                self._sleep(delay(), stop)
        finally:
            if listener is not None:
                _close(listener)

    def _sleep(self, seconds: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not self._leave.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, self.poll_s))

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=1.0)
        except OSError:
            return None
        return self._prepare(sock)

    def _listener(self) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(1)
        listener.settimeout(self.poll_s)
        return listener

    def _accept(self, listener: socket.socket) -> socket.socket | None:
        try:
            sock, _peer = listener.accept()
        except (TimeoutError, OSError):
            return None
        return self._prepare(sock)

    def _prepare(self, sock: socket.socket) -> socket.socket:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.poll_s)
        return sock

    def _session(
        self,
        sock: socket.socket,
        card: VirtualCard,
        atr: bytes,
        stop: threading.Event,
        policy: LinkPolicy | None,
    ) -> LinkEnd | None:
        """Answer frames until the card leaves (a LinkEnd) or vpcd closes the link (None)."""
        decoder = FrameDecoder()
        stats = self.stats
        while True:
            if stop.is_set():
                return LinkEnd.STOPPED
            if self._leave.is_set():
                return LinkEnd.REMOVED
            try:
                data = sock.recv(65536 + 2)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not data:
                return None
            _quickack(sock)
            decoder.receive_data(data)
            while (payload := decoder.next_frame()) is not None:
                try:
                    frame = parse_frame(payload)
                except EncodingError as exc:
                    log.warning("%s: ignoring a frame from vpcd: %s", self.name, exc)
                    continue
                if isinstance(frame, ControlFrame):
                    stats.controls += 1
                    control = frame.control
                    if control is Control.GET_ATR:
                        answer = encode_frame(atr)
                    elif control is Control.POWER_OFF:
                        disposition = (
                            policy.on_power_off() if policy is not None else Disposition.CONTINUE
                        )
                        if disposition is not Disposition.CONTINUE:
                            return _ENDS[disposition]
                        continue
                    else:  # power on or warm reset: volatile state is lost (ISO/IEC 7816-3 reset)
                        atr = card.power_on()
                        continue
                else:
                    stats.apdus += 1
                    disposition = (
                        policy.on_apdu(frame.apdu) if policy is not None else Disposition.CONTINUE
                    )
                    if disposition in (Disposition.EJECT, Disposition.DROP):
                        return _ENDS[disposition]
                    if disposition is Disposition.MUTE:
                        self._mute(sock, stop)
                        return LinkEnd.MUTED
                    response = card.transmit(frame.apdu)
                    if disposition is Disposition.PULL:
                        return LinkEnd.PULLED
                    answer = encode_frame(response)
                # Reads poll every poll_s; a send waits longer, or a slow peer would get half a
                # frame and the stream would be out of step.
                sock.settimeout(_SEND_TIMEOUT_S)
                try:
                    sock.sendall(answer)
                except OSError:
                    return None
                finally:
                    sock.settimeout(self.poll_s)

    def _mute(self, sock: socket.socket, stop: threading.Event) -> None:
        """Say nothing, then close: a real reader gives up after its response timeout (BWT)."""
        deadline = time.monotonic() + self.mute_timeout_s
        while time.monotonic() < deadline and not stop.is_set() and not self._leave.is_set():
            try:
                if not sock.recv(4096):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    # -- threaded mode (tests, tools) -----------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> VirtualCardSocket:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def insert(self, card: VirtualCard, policy: LinkPolicy | None = None) -> None:
        """Put ``card`` in the reader (the thread connects it); the slot must be empty."""
        with self._lock:
            if self._card is not None:
                raise RuntimeError("the slot already holds a card; remove it first")
            self._card, self._policy = card, policy
            self._lock.notify_all()

    def remove(self, timeout_s: float = 5.0) -> VirtualCard | None:
        """Take the card out (close the link) and return it; None if the slot was empty."""
        with self._lock:
            card = self._card
            if card is None:
                return None
            if self._serving:
                self._leave.set()
                if not self._lock.wait_for(lambda: not self._serving, timeout_s):
                    raise TimeoutError(f"{self.name}: the card did not leave within {timeout_s} s")
            self._card = self._policy = None
            self._leave.clear()
            self._lock.notify_all()
            return card

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait until the card left by itself (policy eject, pull, mute)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._card is None, timeout_s)

    def _run(self) -> None:
        delay = self.backoff.delays()
        while not self._stop.is_set():
            with self._lock:
                self._lock.wait_for(lambda: self._card is not None or self._stop.is_set())
                if self._stop.is_set():
                    return
                card, policy = self._card, self._policy
                self._serving = True
            assert card is not None
            end: LinkEnd | None = None
            try:
                end = self.serve(card, self._stop, policy)
            except Exception as exc:  # the slot thread must not die silently
                self.stats.errors += 1
                self.last_error = type(exc).__name__
                log.error(
                    "%s: card failed with %s; serving it again", self.name, type(exc).__name__
                )
                log.debug("%s: failure detail", self.name, exc_info=True)
            with self._lock:
                self._serving = False
                if end is not None:
                    self.ends.append(end)
                    if end is not LinkEnd.STOPPED:
                        self._card = self._policy = None
                self._lock.notify_all()
            if end is None:
                self._stop.wait(delay())


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
