"""PcscTransport through the real stack: pyscard → our pcscd → vpcd → our chip emulator."""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chip.emulator import ChipImage, ChipOS, EFile, Lifecycle
from chip.emulator.card import ATR
from chip.errors import (
    CardMuteError,
    CardRemovedError,
    ReaderGoneError,
    TransportError,
)
from chip.transport.pcsc import PcscError, PcscTransport, _error, list_readers
from chip.transport.vpcd import Disposition, VirtualCardSocket, VpcdSlot
from personaliser.applications import Application
from personaliser.keystore import FileKeystore
from tests.pcscd import Pcscd, personalise_and_verify

SELECT_AID = bytes.fromhex("00A4040C07A0000002471001")
ROOT = Path(__file__).resolve().parent.parent


def blank(keystore: FileKeystore, serial: bytes = b"HK" + bytes(8)) -> ChipOS:
    return ChipOS(ChipImage.blank(serial, keystore.scp03_keys_for(serial)))


class Recorder:
    """A link policy that notes power-offs and can fail one APDU."""

    def __init__(self, fail_at: int | None = None, how: Disposition = Disposition.CONTINUE) -> None:
        self.fail_at = fail_at
        self.how = how
        self.apdus = 0
        self.powered_off = threading.Event()

    def on_apdu(self, apdu: bytes) -> Disposition:
        self.apdus += 1
        return self.how if self.apdus == self.fail_at else Disposition.CONTINUE

    def on_power_off(self) -> Disposition:
        self.powered_off.set()
        return Disposition.CONTINUE


# -- without pcscd -----------------------------------------------------------------------------


def test_only_the_pcsc_transport_imports_smartcard() -> None:
    importers = []
    for package in ("chip", "personaliser", "printer", "ecabinet", "scheduler"):
        for path in (ROOT / package).rglob("*.py"):
            if re.search(r"^\s*(from|import)\s+smartcard\b", path.read_text(), re.MULTILINE):
                importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["chip/transport/pcsc.py"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SCARD_W_REMOVED_CARD", CardRemovedError),
        ("SCARD_W_RESET_CARD", CardRemovedError),
        ("SCARD_E_NO_SMARTCARD", CardRemovedError),
        ("SCARD_W_UNPOWERED_CARD", CardRemovedError),
        ("SCARD_E_READER_UNAVAILABLE", ReaderGoneError),
        ("SCARD_E_UNKNOWN_READER", ReaderGoneError),
        ("SCARD_E_NO_SERVICE", ReaderGoneError),
        ("SCARD_E_SERVICE_STOPPED", ReaderGoneError),
        ("SCARD_E_NO_READERS_AVAILABLE", ReaderGoneError),
        ("SCARD_E_TIMEOUT", CardMuteError),
        ("SCARD_E_NOT_TRANSACTED", CardMuteError),
        ("SCARD_W_UNRESPONSIVE_CARD", CardMuteError),
        ("SCARD_F_COMM_ERROR", CardMuteError),
        ("SCARD_E_SHARING_VIOLATION", TransportError),
    ],
)
def test_pcsc_codes_map_to_the_exception_tree(name: str, expected: type[TransportError]) -> None:
    from smartcard import scard

    code = getattr(scard, name)
    exc = _error(code, "SCardTransmit", "Reader 00 00", "the APDU exchange failed")
    assert type(exc) is expected
    assert exc.reader == "Reader 00 00"
    assert f"0x{code:08X}" in str(exc)


# -- through pcscd -----------------------------------------------------------------------------


@pytest.mark.integration
def test_list_readers(pcscd: Pcscd) -> None:
    readers = list_readers()
    assert set(pcscd.readers) <= set(readers)
    assert list_readers("Perso VPCD A") == ["Perso VPCD A 00 00", "Perso VPCD A 00 01"]
    assert list_readers("no such reader") == []


@pytest.mark.integration
def test_pyscard_sees_our_atr_and_the_card_answers(
    vreader: VpcdSlot, vcard: VirtualCardSocket, keystore: FileKeystore
) -> None:
    vcard.insert(blank(keystore))
    with PcscTransport(vreader.reader) as transport:
        assert transport.atr == ATR
        assert transport.transmit(SELECT_AID) == bytes.fromhex("9000")
        assert transport.transmit(bytes.fromhex("00A4040C07A0000002471002")) == bytes.fromhex(
            "6A82"
        )
        assert transport.stats.apdus == 2
        assert transport.stats.bytes_sent == 2 * len(SELECT_AID)
        assert transport.stats.bytes_received == 4
        assert transport.connected
    assert not transport.connected
    vcard.remove()


@pytest.mark.integration
def test_short_and_extended_read_binary_end_to_end(
    vreader: VpcdSlot, vcard: VirtualCardSocket, keystore: FileKeystore
) -> None:
    chip = blank(keystore)
    content = bytes(range(256)) * 80  # 20480 bytes: an extended response of 20 KB through pcscd
    chip.image.mf_files[0x011C] = EFile(0x011C, len(content), 0x1C, bytearray(content))
    vcard.insert(chip)
    with PcscTransport(vreader.reader) as transport:
        # short READ BINARY by SFI (ISO/IEC 7816-4 §11.3.3), Le = 00: 256 bytes
        short = transport.transmit(bytes.fromhex("00B09C0000"))
        assert short == content[:256] + b"\x90\x00"
        # extended READ BINARY, Le = 0000 (65536): the whole file in one response
        extended = transport.transmit(bytes.fromhex("00B00000000000"))
        assert extended == content + b"\x90\x00"
        # extended Le at an offset
        tail = transport.transmit(bytes.fromhex("00B04000000000"))
        assert tail == content[0x4000:] + b"\x90\x00"
    vcard.remove()


@pytest.mark.integration
@pytest.mark.parametrize("extended", [False, True], ids=["short", "extended"])
def test_personalise_and_verify_over_pcsc(
    vreader: VpcdSlot,
    vcard: VirtualCardSocket,
    keystore: FileKeystore,
    applications: list[Application],
    extended: bool,
) -> None:
    chip = blank(keystore, b"HK" + os.urandom(8))
    vcard.insert(chip)
    transport = PcscTransport(vreader.reader)
    try:
        verdict, serial = personalise_and_verify(
            transport, applications[0], keystore, extended=extended
        )
    finally:
        transport.close()
    assert verdict.passed, verdict.reasons
    assert serial == chip.image.serial
    assert chip.image.lifecycle is Lifecycle.SECURED
    assert set(verdict.readout.files) >= {"EF.COM", "DG1", "DG2", "EF.SOD"}
    assert transport.stats.apdus > (20 if extended else 100)
    vcard.remove()


@pytest.mark.integration
def test_mean_apdu_round_trip_is_not_nagle_bound(
    vreader: VpcdSlot,
    vcard: VirtualCardSocket,
    keystore: FileKeystore,
    record_property: Callable[[str, object], None],
) -> None:
    vcard.insert(blank(keystore))
    with PcscTransport(vreader.reader) as transport:
        samples = []
        for _ in range(500):
            start = time.perf_counter()
            transport.transmit(SELECT_AID)
            samples.append(time.perf_counter() - start)
        mean_ms = transport.mean_round_trip_s * 1000  # type: ignore[operator]
    vcard.remove()
    median_ms = statistics.median(samples) * 1000
    record_property("mean_apdu_round_trip_ms", round(mean_ms, 3))
    record_property("median_apdu_round_trip_ms", round(median_ms, 3))
    print(f"APDU round trip through pcscd+vpcd: mean {mean_ms:.3f} ms, median {median_ms:.3f} ms")
    # Nagle's algorithm meeting a delayed ACK costs 40 ms per exchange on Linux.
    assert mean_ms < 10, f"mean APDU round trip {mean_ms:.1f} ms"


@pytest.mark.integration
def test_reconnect_resets_and_disconnect_unpowers(
    vreader: VpcdSlot, vcard: VirtualCardSocket, keystore: FileKeystore
) -> None:
    chip = blank(keystore)
    resets = []
    power_on = chip.power_on

    def counting_power_on() -> bytes:
        resets.append(time.monotonic())
        return power_on()

    chip.power_on = counting_power_on  # type: ignore[method-assign]
    recorder = Recorder()
    vcard.insert(chip, recorder)
    transport = PcscTransport(vreader.reader)
    try:
        transport.connect()
        before = len(resets)
        assert transport.reconnect(reset=True) == ATR
        assert len(resets) == before + 1  # a warm reset reached the chip
        assert transport.reconnect(reset=False) == ATR
        assert len(resets) == before + 1
        # vpcd sends RESET and GET ATR as two small writes: without our immediate ACK, Nagle on
        # its side holds the second for our delayed ACK (about 90 ms per reset measured)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            transport.reconnect(reset=True)
            times.append(time.perf_counter() - start)
        assert statistics.median(times) < 0.010, f"reset takes {statistics.median(times):.3f} s"
        assert not recorder.powered_off.is_set()
        transport.disconnect()
        # SCARD_UNPOWER_CARD reaches the card at once (a feeder acts on it)
        assert recorder.powered_off.wait(0.5)
        transport.disconnect()  # already released: nothing happens
    finally:
        transport.close()
    vcard.remove()


@pytest.mark.integration
def test_no_card_and_unknown_reader(vreader: VpcdSlot, pcscd: Pcscd) -> None:
    transport = PcscTransport(vreader.reader, timeout_s=0.3)
    try:
        start = time.monotonic()
        with pytest.raises(CardRemovedError, match="no card"):
            transport.connect()
        assert 0.25 < time.monotonic() - start < 3
        assert transport.wait_for_card(0.1) is False
        assert transport.wait_for_removal(0.1) is True
        with pytest.raises(CardRemovedError, match="not connected"):
            transport.transmit(SELECT_AID)
    finally:
        transport.close()
    ghost = PcscTransport("No Such Reader 00 00", timeout_s=0.3)
    try:
        with pytest.raises(ReaderGoneError) as info:
            ghost.connect()
        assert isinstance(info.value.__cause__, PcscError)
        assert info.value.reader == "No Such Reader 00 00"
    finally:
        ghost.close()


@pytest.mark.integration
def test_card_removed_between_commands(
    vreader: VpcdSlot, vcard: VirtualCardSocket, keystore: FileKeystore
) -> None:
    vcard.insert(blank(keystore))
    transport = PcscTransport(vreader.reader)
    watcher = PcscTransport(vreader.reader)
    try:
        transport.connect()
        assert transport.transmit(SELECT_AID)[-2:] == b"\x90\x00"
        vcard.remove()
        assert watcher.wait_for_removal(3.0)
        with pytest.raises(CardRemovedError) as info:
            transport.transmit(SELECT_AID)
        assert isinstance(info.value.__cause__, PcscError)
        transport.disconnect()  # a removed card needs no unpowering
    finally:
        transport.close()
        watcher.close()


@pytest.mark.integration
@pytest.mark.parametrize("how", [Disposition.MUTE, Disposition.DROP], ids=["mute", "vanishes"])
def test_card_that_stops_answering_is_mute(
    vreader: VpcdSlot, vcard: VirtualCardSocket, keystore: FileKeystore, how: Disposition
) -> None:
    vcard.insert(blank(keystore), Recorder(fail_at=3, how=how))
    transport = PcscTransport(vreader.reader)
    try:
        transport.connect()
        transport.transmit(SELECT_AID)
        transport.transmit(SELECT_AID)
        start = time.monotonic()
        with pytest.raises(CardMuteError):
            transport.transmit(SELECT_AID)
        waited = time.monotonic() - start
        if how is Disposition.MUTE:
            assert waited >= 0.4  # the card's link closes after its 0.5 s "reader timeout"
        # and once pcscd has seen the slot empty, it is a removed card
        assert transport.wait_for_removal(3.0)
        with pytest.raises(CardRemovedError):
            transport.transmit(SELECT_AID)
    finally:
        transport.close()
    assert vcard.wait_empty(3.0)


@pytest.mark.integration
def test_reader_gone_when_pcscd_stops(
    pcscd: Pcscd, vreader: VpcdSlot, keystore: FileKeystore
) -> None:
    link = VirtualCardSocket("127.0.0.1", vreader.port)
    link.start()
    link.insert(blank(keystore))
    transport = PcscTransport(vreader.reader)
    try:
        transport.connect()
        pcscd.stop()
        with pytest.raises(ReaderGoneError, match="pcscd"):
            transport.transmit(SELECT_AID)
        with pytest.raises(ReaderGoneError):
            list_readers()
        with pytest.raises(ReaderGoneError):
            transport.connect()  # the old handle died with pcscd: connect starts afresh
        pcscd.start()
        # the card reconnects to the new vpcd by itself; the same transport finds it again
        transport.connect()
        assert transport.transmit(SELECT_AID) == b"\x90\x00"
        assert link.stats.connects == 2
    finally:
        transport.close()
        if not pcscd.running:
            pcscd.start()
        link.stop()
