"""The vpcd link: framing (sans-I/O), the card socket against a fake vpcd, and the card feeder and
image server through the real stack (pyscard → our pcscd → vpcd → emulator)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chip.emulator import ChipImage, Lifecycle
from chip.errors import EncodingError, TransportError
from chip.perso import build_plan, personalise
from chip.transport.base import run_flow
from chip.transport.pcsc import PcscTransport
from chip.transport.vpcd import (
    MAX_FRAME,
    ApduFrame,
    Control,
    ControlFrame,
    Disposition,
    FrameDecoder,
    LinkEnd,
    VirtualCardSocket,
    VpcdSlot,
    encode_control,
    encode_frame,
    parse_frame,
    reader_conf,
)
from personaliser.applications import Application
from personaliser.keystore import FileKeystore
from personaliser.serve import (
    BlankFeeder,
    FaultPolicy,
    serve_blanks_command,
    serve_image,
    serve_image_command,
)
from tests.pcscd import ReaderPool, personalise_and_verify

# -- framing (vsmartcard virtualsmartcard/src/vpcd/vpcd.c sendToVICC / recvFromVICC, vpcd.h) --------


def test_control_frames_are_the_vpcd_bytes() -> None:
    # vpcd.h: VPCD_CTRL_OFF 0, _ON 1, _RESET 2, _ATR 4, each sent as a 1-byte message with a
    # 2-byte big-endian length (htons).
    assert encode_control(Control.POWER_OFF) == bytes.fromhex("000100")
    assert encode_control(Control.POWER_ON) == bytes.fromhex("000101")
    assert encode_control(Control.RESET) == bytes.fromhex("000102")
    assert encode_control(Control.GET_ATR) == bytes.fromhex("000104")
    assert encode_frame(bytes.fromhex("9000")) == bytes.fromhex("00029000")
    assert encode_frame(b"\xaa" * 0x1234)[:2] == bytes.fromhex("1234")


def test_frame_length_limit() -> None:
    assert len(encode_frame(bytes(MAX_FRAME))) == MAX_FRAME + 2
    with pytest.raises(ValueError, match="at most"):
        encode_frame(bytes(MAX_FRAME + 1))


def test_parse_frame() -> None:
    assert parse_frame(b"\x04") == ControlFrame(Control.GET_ATR)
    assert parse_frame(b"\x00") == ControlFrame(Control.POWER_OFF)
    assert parse_frame(b"\x00\xa4") == ApduFrame(b"\x00\xa4")
    with pytest.raises(EncodingError):
        parse_frame(b"")
    with pytest.raises(EncodingError, match="03"):
        parse_frame(b"\x03")
    assert "A0000002471001".lower() not in repr(
        parse_frame(bytes.fromhex("00A4040C07A0000002471001"))
    )


payloads = st.lists(
    st.one_of(st.binary(min_size=0, max_size=300), st.binary(min_size=4000, max_size=5000)),
    max_size=8,
)


@given(payloads, st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=40))
def test_decoder_reassembles_frames_however_the_stream_is_cut(
    frames: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    got: list[bytes] = []
    position, i = 0, 0
    while position < len(stream):
        step = cuts[i % len(cuts)]
        decoder.receive_data(stream[position : position + step])
        position += step
        i += 1
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
        # never early, never late: exactly the frames complete so far
        assert got == frames[: len(got)]
    assert got == frames
    assert decoder.pending == 0


@given(st.binary(min_size=1, max_size=2000))
def test_decoder_waits_for_the_last_byte(payload: bytes) -> None:
    frame = encode_frame(payload)
    decoder = FrameDecoder()
    decoder.receive_data(frame[:-1])
    assert decoder.next_frame() is None
    decoder.receive_data(frame[-1:])
    assert decoder.next_frame() == payload


def test_reader_conf_maps_two_slots_per_entry() -> None:
    text, slots = reader_conf(3, 40000, drivers=["/d/a.so", "/d/b.so"])
    assert [(s.reader, s.port) for s in slots] == [
        ("Perso VPCD A 00 00", 40000),
        ("Perso VPCD A 00 01", 40001),
        ("Perso VPCD B 00 00", 40002),
    ]
    assert text.count("FRIENDLYNAME") == 2
    assert "DEVICENAME   /dev/null:40000\nLIBPATH      /d/a.so" in text
    assert "DEVICENAME   /dev/null:40002\nLIBPATH      /d/b.so" in text
    with pytest.raises(ValueError, match="distinct copies"):
        reader_conf(3, 40000, drivers=["/d/a.so", "/d/a.so"])
    with pytest.raises(ValueError, match="slots"):
        reader_conf(17, 40000)
    with pytest.raises(ValueError, match="ports"):
        reader_conf(2, 65535)


def test_fault_policy_decisions() -> None:
    drop = FaultPolicy(drop_after_apdus=3)
    assert [drop.decide(n, 0, False) for n in range(5)] == [Disposition.CONTINUE] * 3 + [
        Disposition.DROP
    ] * 2
    mute = FaultPolicy(mute_after_apdus=0)
    assert mute.decide(0, 0, False) is Disposition.MUTE
    pull = FaultPolicy(pull_on_write=2)
    assert pull.decide(10, 1, True) is Disposition.CONTINUE
    assert pull.decide(11, 2, False) is Disposition.CONTINUE  # not a write
    assert pull.decide(11, 2, True) is Disposition.PULL
    with pytest.raises(ValueError):
        FaultPolicy(pull_on_write=0)
    with pytest.raises(ValueError):
        FaultPolicy(drop_after_apdus=-1)


# -- the card socket against a fake vpcd ---------------------------------------------------------


class FakeCard:
    def __init__(self, atr: bytes = bytes.fromhex("3B00"), response: bytes = b"\x90\x00") -> None:
        self.atr = atr
        self.response = response
        self.powered = 0
        self.apdus: list[bytes] = []

    def power_on(self) -> bytes:
        self.powered += 1
        return self.atr

    def transmit(self, apdu: bytes) -> bytes:
        self.apdus.append(apdu)
        return self.response


class Policy:
    def __init__(self, on_apdu: list[Disposition], on_power_off: Disposition) -> None:
        self.script = on_apdu
        self.power_off = on_power_off

    def on_apdu(self, apdu: bytes) -> Disposition:
        return self.script.pop(0) if self.script else Disposition.CONTINUE

    def on_power_off(self) -> Disposition:
        return self.power_off


class FakeVpcd:
    """The vpcd side of the link (server mode, as vpcd runs by default)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.server = sock or socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self, timeout_s: float = 5.0) -> socket.socket:
        self.server.settimeout(timeout_s)
        if self.conn is not None:
            self.conn.close()
        self.conn, _ = self.server.accept()
        self.conn.settimeout(timeout_s)
        return self.conn

    def send(self, payload: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(encode_frame(payload))

    def read(self, timeout_s: float = 5.0) -> bytes | None:
        """One frame from the card; None when the card closed the link."""
        assert self.conn is not None
        self.conn.settimeout(timeout_s)
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            data = self.conn.recv(65536)
            if not data:
                return None
            decoder.receive_data(data)
        return frame

    def exchange(self, payload: bytes) -> bytes | None:
        self.send(payload)
        return self.read()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def fake_vpcd() -> Iterator[FakeVpcd]:
    peer = FakeVpcd()
    yield peer
    peer.close()


class SpySocket(socket.socket):
    """Records socket options and writes of the card side."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.options: dict[tuple[int, int], int] = {}
        self.writes: list[bytes] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:  # type: ignore[override]
        self.options[(level, option)] = value
        super().setsockopt(level, option, value)

    def sendall(self, data: bytes, flags: int = 0) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))
        super().sendall(data, flags)

    def send(self, data: bytes, flags: int = 0) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return super().send(data, flags)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> list[SpySocket]:
    made: list[SpySocket] = []

    def connect(address: tuple[str, int], timeout: float | None = None) -> SpySocket:
        sock = SpySocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        made.append(sock)
        return sock

    monkeypatch.setattr("chip.transport.vpcd.socket.create_connection", connect)
    return made


def test_card_answers_vpcd_in_one_write_with_nodelay(
    fake_vpcd: FakeVpcd, spies: list[SpySocket]
) -> None:
    card = FakeCard(response=bytes(range(256)) * 16 + b"\x90\x00")
    with VirtualCardSocket("127.0.0.1", fake_vpcd.port) as link:
        link.insert(card)
        fake_vpcd.accept()
        assert fake_vpcd.exchange(b"\x04") == card.atr
        fake_vpcd.send(b"\x01")  # power on: not answered
        assert fake_vpcd.exchange(bytes.fromhex("00B0000000")) == card.response
        assert card.apdus == [bytes.fromhex("00B0000000")]
        assert card.powered == 2  # insertion, then vpcd's power on
        (spy,) = spies
        assert spy.options[(socket.IPPROTO_TCP, socket.TCP_NODELAY)] == 1
        # every answer leaves in exactly one write: the whole frame
        assert spy.writes == [encode_frame(card.atr), encode_frame(card.response)]
        start = time.perf_counter()
        for _ in range(200):
            fake_vpcd.exchange(bytes.fromhex("00A4000C023F00"))
        mean = (time.perf_counter() - start) / 200
        assert mean < 0.005, f"mean loopback round trip {mean * 1000:.2f} ms (Nagle?)"


def test_card_waits_for_vpcd_with_backoff() -> None:
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    peer = FakeVpcd(reserved)
    try:
        with VirtualCardSocket("127.0.0.1", peer.port) as link:
            link.insert(FakeCard())
            time.sleep(0.3)
            assert not link.connected
            reserved.listen(1)
            peer.accept(timeout_s=5.0)
            assert peer.exchange(b"\x04") == bytes.fromhex("3B00")
            assert link.stats.connects == 1
    finally:
        peer.close()


def test_vpcd_closing_the_link_leaves_the_card_inserted(fake_vpcd: FakeVpcd) -> None:
    card = FakeCard()
    with VirtualCardSocket("127.0.0.1", fake_vpcd.port) as link:
        link.insert(card)
        fake_vpcd.accept()
        assert fake_vpcd.exchange(b"\x04") == card.atr
        assert fake_vpcd.conn is not None
        fake_vpcd.conn.close()  # pcscd restarting
        fake_vpcd.accept()
        assert fake_vpcd.exchange(b"\x04") == card.atr
        assert link.stats.connects == 2
        assert link.ends == []


def test_remove_and_insert_another_card(fake_vpcd: FakeVpcd) -> None:
    first, second = FakeCard(bytes.fromhex("3B01")), FakeCard(bytes.fromhex("3B02"))
    with VirtualCardSocket("127.0.0.1", fake_vpcd.port) as link:
        link.insert(first)
        fake_vpcd.accept()
        assert fake_vpcd.exchange(b"\x04") == first.atr
        with pytest.raises(RuntimeError, match="already holds"):
            link.insert(second)
        assert link.remove() is first
        assert fake_vpcd.read() is None  # vpcd sees the link close: the card is gone
        assert link.remove() is None
        link.insert(second)
        fake_vpcd.accept()
        assert fake_vpcd.exchange(b"\x04") == second.atr
        assert link.ends == [LinkEnd.REMOVED]


@pytest.mark.parametrize(
    ("disposition", "executed", "end"),
    [
        (Disposition.DROP, 1, LinkEnd.DROPPED),
        (Disposition.EJECT, 1, LinkEnd.EJECTED),
        (Disposition.PULL, 2, LinkEnd.PULLED),
        (Disposition.MUTE, 1, LinkEnd.MUTED),
    ],
)
def test_policy_ends_the_link(
    fake_vpcd: FakeVpcd, disposition: Disposition, executed: int, end: LinkEnd
) -> None:
    card = FakeCard()
    policy = Policy([Disposition.CONTINUE, disposition], Disposition.CONTINUE)
    with VirtualCardSocket("127.0.0.1", fake_vpcd.port, mute_timeout_s=0.3) as link:
        link.insert(card, policy)
        fake_vpcd.accept()
        assert fake_vpcd.exchange(b"\x00\xa4\x00\x00") == b"\x90\x00"
        start = time.monotonic()
        assert fake_vpcd.exchange(b"\x00\xd6\x00\x00\x01\x55") is None
        waited = time.monotonic() - start
        assert link.wait_empty(5.0)
        assert len(card.apdus) == executed
        assert link.ends == [end]
        if disposition is Disposition.MUTE:
            assert waited >= 0.25
        else:
            assert waited < 0.25


def test_power_off_ejects_when_the_policy_says_so(fake_vpcd: FakeVpcd) -> None:
    with VirtualCardSocket("127.0.0.1", fake_vpcd.port) as link:
        link.insert(FakeCard(), Policy([], Disposition.CONTINUE))
        fake_vpcd.accept()
        fake_vpcd.send(b"\x00")  # power off: the card stays
        assert fake_vpcd.exchange(b"\x04") == bytes.fromhex("3B00")
        link.remove()
        assert fake_vpcd.read() is None
        link.insert(FakeCard(), Policy([], Disposition.EJECT))
        fake_vpcd.accept()
        fake_vpcd.send(b"\x00")
        assert fake_vpcd.read() is None
        assert link.wait_empty(5.0)
        assert link.ends == [LinkEnd.REMOVED, LinkEnd.EJECTED]


class BrokenCard(FakeCard):
    def transmit(self, apdu: bytes) -> bytes:
        raise RuntimeError(f"emulator bug with secret {apdu.hex()}")


def test_a_failing_card_is_logged_without_data_and_the_thread_lives(
    fake_vpcd: FakeVpcd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chip.transport.vpcd")
    with VirtualCardSocket("127.0.0.1", fake_vpcd.port) as link:
        link.insert(BrokenCard())
        fake_vpcd.accept()
        assert fake_vpcd.exchange(bytes.fromhex("00A4040C07A0000002471001")) is None
        fake_vpcd.accept()  # the thread is alive and serves the card again
        assert fake_vpcd.exchange(b"\x04") == bytes.fromhex("3B00")
        assert link.stats.errors == 1
        assert link.last_error == "RuntimeError"
    text = caplog.text
    assert "RuntimeError" in text
    assert "secret" not in text and "a0000002471001" not in text.lower()


def test_unknown_control_bytes_are_ignored(fake_vpcd: FakeVpcd) -> None:
    with VirtualCardSocket("127.0.0.1", fake_vpcd.port) as link:
        link.insert(FakeCard())
        fake_vpcd.accept()
        fake_vpcd.send(b"\x07")
        assert fake_vpcd.exchange(b"\x04") == bytes.fromhex("3B00")


def test_listen_mode_lets_vpcd_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    card = FakeCard()
    with VirtualCardSocket("127.0.0.1", port, listen=True) as link:
        link.insert(card)
        deadline = time.monotonic() + 5
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        peer = FakeVpcd()
        peer.conn = conn
        try:
            assert peer.exchange(b"\x04") == card.atr
            link.remove()
            assert peer.read() is None
        finally:
            peer.close()


# -- the feeder and the image server through pyscard → pcscd → vpcd -------------------------------


@pytest.mark.integration
def test_feeder_completes_cards_and_presents_the_next(
    reader_pool: ReaderPool,
    keystore: FileKeystore,
    applications: list[Application],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with reader_pool.lease(2) as slots:
        feeder = BlankFeeder(2, slots[0].port, keystore, out)
        with feeder:
            serials = []
            for slot, app in zip(slots, applications, strict=False):
                transport = PcscTransport(slot.reader)
                try:
                    verdict, serial = personalise_and_verify(transport, app, keystore)
                    assert verdict.passed, verdict.reasons
                    transport.disconnect()  # unpowered: the feeder takes the card
                finally:
                    transport.close()
                serials.append(serial.hex().upper())
            assert feeder.wait_until(
                lambda: feeder.totals()["completed"] == 2 and feeder.totals()["presented"] == 4, 10
            ), feeder.totals()
            # the next blank is there and is a different chip
            transport = PcscTransport(slots[0].reader)
            try:
                transport.connect()
                assert feeder.slots[0].current_serial not in serials
            finally:
                transport.close()
    totals = feeder.totals()
    assert totals == {"presented": 4, "completed": 2, "spoiled": 0, "returned": 2}
    for feeder_slot, serial_hex in zip(feeder.slots, serials, strict=True):
        assert feeder_slot.counters.history[0] == (
            serial_hex,
            "completed",
            "secured and powered off",
        )
        image = ChipImage.load(out / f"{serial_hex}.img")
        assert image.lifecycle is Lifecycle.SECURED
        assert image.bac_keys is not None
        assert (out / f"{serial_hex}.img").stat().st_mode & 0o077 == 0
    assert not (out / "spoiled").exists()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (FaultPolicy(drop_after_apdus=5), "dropped"),
        (FaultPolicy(pull_on_write=2), "pulled"),
        (FaultPolicy(mute_after_apdus=6), "muted"),
    ],
    ids=["drop", "pull", "mute"],
)
def test_feeder_spoils_a_faulted_card(
    reader_pool: ReaderPool,
    keystore: FileKeystore,
    applications: list[Application],
    tmp_path: Path,
    fault: FaultPolicy,
    why: str,
) -> None:
    out = tmp_path / "out"
    plan = build_plan(applications[0].to_holder(), keystore.document_signer())
    with reader_pool.lease(1) as (slot,):
        feeder = BlankFeeder(
            1,
            slot.port,
            keystore,
            out,
            faults=lambda s, n: fault if n == 1 else None,
            mute_timeout_s=0.5,
        )
        with feeder:
            transport = PcscTransport(slot.reader)
            try:
                transport.connect()
                with pytest.raises(TransportError):
                    run_flow(personalise(plan, keystore.scp03_keys_for, rng=os.urandom), transport)
                transport.disconnect()
                assert feeder.wait_until(lambda: feeder.totals()["presented"] == 2, 10)
                verdict, serial = personalise_and_verify(transport, applications[1], keystore)
                assert verdict.passed
                transport.disconnect()
            finally:
                transport.close()
            assert feeder.wait_until(lambda: feeder.totals()["completed"] == 1, 10)
            assert feeder.wait_until(lambda: feeder.slots[0].current_serial is not None, 10)
    history = feeder.slots[0].counters.history
    spoiled_serial, fate, reason = history[0]
    assert (fate, reason) == ("spoiled", why)
    assert history[1] == (serial.hex().upper(), "completed", "secured and powered off")
    assert spoiled_serial != serial.hex().upper()
    image = ChipImage.load(out / "spoiled" / f"{spoiled_serial}.img")
    assert image.lifecycle is Lifecycle.PERSONALISING
    if why == "pulled":
        # the second UPDATE BINARY (DG1) reached the chip even though its answer never came back
        assert bytes(image.app_files[0x0101].data) == plan.file("DG1")
    else:
        assert 0x0101 not in image.app_files or not any(image.app_files[0x0101].data)
    assert feeder.totals() == {"presented": 3, "completed": 1, "spoiled": 1, "returned": 1}


class HostAbortError(Exception):
    pass


class AbortAfter:
    """The host gives up after ``n`` APDUs (operator stop), leaving the card half done."""

    def __init__(self, inner: PcscTransport, n: int) -> None:
        self.inner = inner
        self.left = n

    def transmit(self, apdu: bytes) -> bytes:
        if self.left == 0:
            raise HostAbortError
        self.left -= 1
        return self.inner.transmit(apdu)


@pytest.mark.integration
def test_feeder_takes_out_a_card_the_host_abandoned(
    reader_pool: ReaderPool,
    keystore: FileKeystore,
    applications: list[Application],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    plan = build_plan(applications[0].to_holder(), keystore.document_signer())
    with reader_pool.lease(1) as (slot,):
        feeder = BlankFeeder(1, slot.port, keystore, out)
        feeder.start()
        transport = PcscTransport(slot.reader)
        try:
            transport.connect()
            flow = personalise(plan, keystore.scp03_keys_for, rng=os.urandom)
            with pytest.raises(HostAbortError):
                run_flow(flow, AbortAfter(transport, 8))
            serial = feeder.slots[0].current_serial
        finally:
            transport.close()  # unpowered while written to but not SECURED: it leaves as spoiled
            feeder.wait_until(lambda: feeder.totals()["spoiled"] >= 1, 5)
            feeder.stop()
    totals = feeder.totals()
    assert totals["completed"] == 0 and totals["spoiled"] == 1
    assert totals["presented"] == totals["spoiled"] + totals["returned"]  # the next blank went back
    assert feeder.slots[0].counters.history[0] == (
        serial,
        "spoiled",
        "powered off unfinished (personalising)",
    )
    assert ChipImage.load(out / "spoiled" / f"{serial}.img").lifecycle is Lifecycle.PERSONALISING


@pytest.mark.integration
def test_serve_image_keeps_what_the_host_wrote(
    vreader: VpcdSlot,
    keystore: FileKeystore,
    applications: list[Application],
    tmp_path: Path,
) -> None:
    serial = b"HK" + bytes(range(8))
    path = tmp_path / "card.img"
    ChipImage.blank(serial, keystore.scp03_keys_for(serial)).save(path)
    stop = threading.Event()
    server = threading.Thread(target=serve_image, args=(path, "127.0.0.1", vreader.port, stop))
    server.start()
    transport = PcscTransport(vreader.reader)
    try:
        verdict, seen = personalise_and_verify(transport, applications[2], keystore)
        assert verdict.passed and seen == serial
        transport.disconnect()  # power off: the server checkpoints the image
        deadline = time.monotonic() + 5
        while ChipImage.load(path).lifecycle is not Lifecycle.SECURED:
            assert time.monotonic() < deadline, "image not saved on power-off"
            time.sleep(0.05)
    finally:
        transport.close()
        stop.set()
        server.join(10)
    assert not server.is_alive()
    image = ChipImage.load(path)
    assert image.lifecycle is Lifecycle.SECURED
    assert path.stat().st_mode & 0o077 == 0


@pytest.mark.integration
def test_serve_image_command_stops_on_sigterm(
    vreader: VpcdSlot, keystore: FileKeystore, tmp_path: Path
) -> None:
    serial = b"HK" + bytes(range(1, 9))
    path = tmp_path / "card.img"
    ChipImage.blank(serial, keystore.scp03_keys_for(serial)).save(path)
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = serve_image_command(path, port=vreader.port)
    finally:
        timer.cancel()
    assert code == 0
    assert ChipImage.load(path).serial == serial
    assert signal.getsignal(signal.SIGTERM) is before


def test_serve_commands_refuse_bad_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve_image_command(tmp_path / "missing.img", port=1) == 2
    assert "cannot serve" in capsys.readouterr().err
    assert serve_blanks_command(2, 40000, tmp_path / "no-keys", tmp_path / "out") == 2
    assert "keystore" in capsys.readouterr().err
