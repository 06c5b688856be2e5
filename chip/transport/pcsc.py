"""PC/SC readers through pyscard: the only module that imports ``smartcard`` (STYLE habit 1).

It uses pyscard's thin ``smartcard.scard`` layer (the PC/SC calls as they are, with their return
codes) rather than its object layer, so every PC/SC error is mapped here, once, to the chip
package's tree (``raise ... from`` the pyscard error, PC/SC code and text in the message):

- card removed or reset under us, no card → :class:`~chip.errors.CardRemovedError`
- reader unknown or unavailable, pcscd not running or stopped → :class:`~chip.errors.ReaderGoneError`
- timeout, transmission failed, unresponsive card → :class:`~chip.errors.CardMuteError`
- anything else → :class:`~chip.errors.TransportError`

A transport belongs to one thread (one PC/SC context each; a new one after pcscd restarted).
``transmit`` has no timeout of its own: PC/SC cannot cancel an exchange in progress, so a mute card
is detected by the reader's response timeout (CCID: the block waiting time), which pcscd reports as
"transaction failed".  An answer without a status word (vpcd's way of reporting a card gone during
the exchange) is a mute card too; once pcscd has polled the slot empty, calls fail with
:class:`~chip.errors.CardRemovedError`.
"""

from __future__ import annotations

import time
from typing import Any

from smartcard import scard

from chip.errors import CardMuteError, CardRemovedError, ReaderGoneError, TransportError
from chip.transport.base import TransportStats

__all__ = ["PcscError", "PcscTransport", "list_readers"]

_REMOVED = frozenset(
    {
        scard.SCARD_W_REMOVED_CARD,
        scard.SCARD_W_RESET_CARD,
        scard.SCARD_W_UNPOWERED_CARD,
        scard.SCARD_E_NO_SMARTCARD,
    }
)
_GONE = frozenset(
    {
        scard.SCARD_E_READER_UNAVAILABLE,
        scard.SCARD_E_UNKNOWN_READER,
        scard.SCARD_E_NO_SERVICE,
        scard.SCARD_E_SERVICE_STOPPED,
        scard.SCARD_E_NO_READERS_AVAILABLE,
    }
)
_MUTE = frozenset(
    {
        scard.SCARD_E_TIMEOUT,
        scard.SCARD_E_NOT_TRANSACTED,
        scard.SCARD_W_UNRESPONSIVE_CARD,
        scard.SCARD_F_COMM_ERROR,
        scard.SCARD_E_COMM_DATA_LOST,
    }
)
_RETRY = _REMOVED | {scard.SCARD_W_UNRESPONSIVE_CARD}
_SERVICE_LOST = frozenset({scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED})
_PROTOCOLS = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
_RETRY_S = 0.05


class PcscError(Exception):
    """The raw PC/SC return code, kept as the ``__cause__`` of the mapped exception."""

    def __init__(self, code: int, call: str) -> None:
        super().__init__(f"{call}: {_describe(code)}")
        self.code = code
        self.call = call


def _describe(code: int) -> str:
    text = str(scard.SCardGetErrorMessage(code)).strip().rstrip(".")
    return f"{text} (0x{code & 0xFFFFFFFF:08X})"


def _error(code: int, call: str, reader: str | None, context: str) -> TransportError:
    if code in _REMOVED:
        cls: type[TransportError] = CardRemovedError
    elif code in _GONE:
        cls = ReaderGoneError
    elif code in _MUTE:
        cls = CardMuteError
    else:
        cls = TransportError
    where = f" on {reader!r}" if reader else ""
    message = f"{context}{where}: {_describe(code)}"
    if code in _SERVICE_LOST:
        message += " (is pcscd running?)"
    return cls(message, reader=reader)


def _check(code: int, call: str, reader: str | None, context: str) -> None:
    if code != scard.SCARD_S_SUCCESS:
        raise _error(code, call, reader, context) from PcscError(code, call)


def _establish() -> Any:
    code, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    _check(code, "SCardEstablishContext", None, "cannot reach the PC/SC service")
    return context


def list_readers(match: str | None = None) -> list[str]:
    """Names of the readers pcscd knows (those containing ``match``); [] when it has none."""
    context = _establish()
    try:
        code, readers = scard.SCardListReaders(context, [])
        if code == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        _check(code, "SCardListReaders", None, "cannot list readers")
    finally:
        scard.SCardReleaseContext(context)
    names = [str(r) for r in readers]
    return names if match is None else [r for r in names if match in r]


class PcscTransport:
    """One PC/SC reader as a transport: connect to the card in it, exchange APDUs, unpower it.

    ``stats`` counts APDUs, bytes and the wall time of every ``transmit`` (the round trip through
    pcscd and the reader), so a head pool can report the mean APDU round trip.
    """

    def __init__(self, reader: str, *, timeout_s: float = 5.0, exclusive: bool = False) -> None:
        self.name = reader
        self.timeout_s = timeout_s
        self.share = scard.SCARD_SHARE_EXCLUSIVE if exclusive else scard.SCARD_SHARE_SHARED
        self.stats = TransportStats()
        self.atr: bytes | None = None
        self._context: Any = None
        self._card: Any = None
        self._pci = scard.SCARD_PCI_T1

    def __repr__(self) -> str:
        return f"PcscTransport({self.name!r}, connected={self._card is not None})"

    @property
    def connected(self) -> bool:
        return self._card is not None

    @property
    def mean_round_trip_s(self) -> float | None:
        return self.stats.seconds / self.stats.apdus if self.stats.apdus else None

    # -- context --------------------------------------------------------------------------------

    def _ctx(self) -> Any:
        if self._context is None:
            self._context = _establish()
        return self._context

    def _check(self, code: int, call: str, context: str) -> None:
        if code == scard.SCARD_S_SUCCESS:
            return
        if code in _SERVICE_LOST:
            # The context and handle died with pcscd; the next connect() starts afresh.
            self._context = self._card = None
        _check(code, call, self.name, context)

    def close(self) -> None:
        """Unpower the card if connected and release the PC/SC context."""
        try:
            if self._card is not None:
                self.disconnect()
        except TransportError:
            pass
        finally:
            if self._context is not None:
                scard.SCardReleaseContext(self._context)
                self._context = None

    def __enter__(self) -> PcscTransport:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the card -------------------------------------------------------------------------------

    def connect(self) -> bytes:
        """Wait up to ``timeout_s`` for a card, connect (T=0 or T=1) and return its ATR."""
        if self._card is not None:
            raise RuntimeError(f"{self.name!r} is already connected")
        deadline = time.monotonic() + self.timeout_s
        while True:
            if not self.wait_for_card(max(0.0, deadline - time.monotonic())):
                raise CardRemovedError(
                    f"no card in {self.name!r} within {self.timeout_s} s", reader=self.name
                )
            code, card, protocol = scard.SCardConnect(
                self._ctx(), self.name, self.share, _PROTOCOLS
            )
            if code in _RETRY and time.monotonic() < deadline:
                # pcscd polls its slots, so right after a card change it may still show the
                # previous card (present, or present and mute); wait for it to catch up.
                time.sleep(_RETRY_S)
                continue
            self._check(code, "SCardConnect", "cannot connect to the card")
            break
        self._card = card
        self._pci = (
            scard.SCARD_PCI_T0 if protocol == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        )
        return self._read_atr()

    def _read_atr(self) -> bytes:
        code, _reader, _state, _protocol, atr = scard.SCardStatus(self._card)
        self._check(code, "SCardStatus", "cannot read the ATR")
        self.atr = bytes(atr)
        return self.atr

    def reconnect(self, reset: bool = True) -> bytes:
        """Warm reset (``reset=True``; the card loses its volatile state) and return the ATR."""
        if self._card is None:
            raise CardRemovedError("not connected to a card", reader=self.name)
        disposition = scard.SCARD_RESET_CARD if reset else scard.SCARD_LEAVE_CARD
        code, protocol = scard.SCardReconnect(self._card, self.share, _PROTOCOLS, disposition)
        self._check(code, "SCardReconnect", "cannot reset the card")
        self._pci = (
            scard.SCARD_PCI_T0 if protocol == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        )
        return self._read_atr()

    def transmit(self, apdu: bytes) -> bytes:
        """Send one command APDU (short or extended length) and return data + SW."""
        card = self._card
        if card is None:
            raise CardRemovedError("not connected to a card", reader=self.name)
        start = time.perf_counter()
        code, response = scard.SCardTransmit(card, self._pci, list(apdu))
        elapsed = time.perf_counter() - start
        self._check(code, "SCardTransmit", "the APDU exchange failed")
        if len(response) < 2:
            # Every response APDU ends with SW1-SW2 (ISO/IEC 7816-4 §5.1). vpcd reports a card that
            # vanished mid-exchange as success with no bytes (vpcd.c vicc_transmit returns 0).
            raise CardMuteError(
                f"the card on {self.name!r} gave no status word ({len(response)} bytes)",
                reader=self.name,
            )
        stats = self.stats
        stats.apdus += 1
        stats.seconds += elapsed
        stats.bytes_sent += len(apdu)
        stats.bytes_received += len(response)
        return bytes(response)

    def disconnect(self, eject: bool = False) -> None:
        """Release the card and unpower it (SCARD_UNPOWER_CARD): a feeder takes it on power-off.

        ``eject`` (the card goes to the output rather than staying for another connect) changes
        nothing here: SCARD_EJECT_CARD needs a reader with a mechanism, and pcscd 1.9.9 then only
        powers the card down after its grace period (0.8 s measured with vpcd), which would hold
        the feeder up; unpowering is the signal every feeder sees.
        """
        card, self._card = self._card, None
        if card is None:
            return
        code = scard.SCardDisconnect(card, scard.SCARD_UNPOWER_CARD)
        if code in _REMOVED:
            return  # nothing left to unpower
        self._check(code, "SCardDisconnect", "cannot release the card")

    # -- waiting --------------------------------------------------------------------------------

    def wait_for_card(self, timeout_s: float) -> bool:
        """True once a card is in the reader (mute or not); False after ``timeout_s``."""
        return self._wait(timeout_s, present=True)

    def wait_for_removal(self, timeout_s: float) -> bool:
        """True once the reader is empty; False after ``timeout_s``."""
        return self._wait(timeout_s, present=False)

    def _wait(self, timeout_s: float, *, present: bool) -> bool:
        context = self._ctx()
        deadline = time.monotonic() + timeout_s
        known = scard.SCARD_STATE_UNAWARE
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            code, states = scard.SCardGetStatusChange(context, left_ms, [(self.name, known)])
            if code == scard.SCARD_E_TIMEOUT:
                return False
            self._check(code, "SCardGetStatusChange", "cannot watch the reader")
            _name, state, _atr = states[0]
            if state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
                raise ReaderGoneError(f"reader {self.name!r} is not available", reader=self.name)
            if present:
                if state & scard.SCARD_STATE_PRESENT:
                    return True
            elif state & scard.SCARD_STATE_EMPTY:
                return True
            if left_ms == 0:
                return False
            known = state & ~scard.SCARD_STATE_CHANGED
