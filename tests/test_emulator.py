"""The chip OS emulator: access rules before and after the lock, status words, the image file."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from chip.apdu import SW, CommandAPDU, ResponseAPDU
from chip.emulator import ChipImage, ChipOS, Lifecycle
from chip.errors import StatusWordError
from chip.lds.tags import EMRTD_AID
from chip.mrz import mrz_information
from chip.perso import build_plan, personalise
from chip.protocols.bac import bac
from chip.protocols.scp03 import StaticKeys
from chip.reader import read_file
from chip.transport.base import run_flow

SERIAL = bytes.fromhex("484B0011223344556677")
KEYS = StaticKeys(enc=bytes(range(16)), mac=bytes(range(16, 32)), dek=bytes(range(32, 48)))


def send(chip: ChipOS, cmd: CommandAPDU) -> ResponseAPDU:
    return ResponseAPDU.from_bytes(chip.transmit(cmd.to_bytes()))


def select_app(chip: ChipOS) -> ResponseAPDU:
    return send(chip, CommandAPDU(0x00, 0xA4, 0x04, 0x0C, EMRTD_AID))


def personalised(keystore, app):  # type: ignore[no-untyped-def]
    plan = build_plan(app.to_holder(), keystore.document_signer())
    chip = ChipOS(ChipImage.blank(SERIAL, KEYS))
    run_flow(personalise(plan, KEYS, rng=os.urandom), chip)
    chip.power_on()
    m = plan.mrz
    return chip, plan, mrz_information(m.document_number, m.date_of_birth, m.date_of_expiry)


def test_blank_refuses_plain_writes() -> None:
    chip = ChipOS(ChipImage.blank(SERIAL, KEYS))
    assert select_app(chip).sw == SW.OK
    create = CommandAPDU(0x00, 0xE0, 0, 0, bytes.fromhex("6208800200108302011E"))
    assert send(chip, create).sw == SW.SECURITY_STATUS_NOT_SATISFIED
    assert send(chip, CommandAPDU(0x00, 0xD6, 0, 0, b"x")).sw == SW.SECURITY_STATUS_NOT_SATISFIED
    assert send(chip, CommandAPDU(0x80, 0xF0, 0x80, 0x0F)).sw == SW.SECURITY_STATUS_NOT_SATISFIED
    assert chip.image.app_files == {}


def test_locked_chip_refuses_unprotected_read(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    chip, _plan, _mrz = personalised(keystore, applications[0])
    assert chip.image.lifecycle is Lifecycle.SECURED
    assert select_app(chip).sw == SW.OK
    assert send(chip, CommandAPDU(0x00, 0xB0, 0x81, 0x00, ne=256)).sw == 0x6982
    assert send(chip, CommandAPDU(0x00, 0xA4, 0x02, 0x0C, b"\x01\x01")).sw == 0x6982


def test_locked_chip_refuses_bac_with_wrong_mrz(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    chip, _plan, good = personalised(keystore, applications[0])
    wrong = mrz_information("XX0000000", "700101", "300101")
    assert wrong != good
    run_flow(select_flow(), chip)
    try:
        run_flow(bac(wrong, os.urandom), chip)
    except StatusWordError as exc:
        assert exc.sw == SW.VERIFICATION_FAILED
    else:
        raise AssertionError("BAC with a wrong MRZ succeeded")


def select_flow():  # type: ignore[no-untyped-def]
    response = yield CommandAPDU(0x00, 0xA4, 0x04, 0x0C, EMRTD_AID)
    assert response.sw == SW.OK


def test_locked_chip_refuses_every_write(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    chip, _plan, mrz = personalised(keystore, applications[0])
    before = chip.image.to_json()
    # Plain writes.
    select_app(chip)
    for cmd in (
        CommandAPDU(0x00, 0xE0, 0, 0, bytes.fromhex("6208800200108302010D")),
        CommandAPDU(0x00, 0xD6, 0x81, 0, b"\x00"),
        CommandAPDU(0x00, 0xDA, 0x00, 0x62, b"\x62\x00"),
        CommandAPDU(0x80, 0x50, 0x00, 0x00, bytes(8), ne=256),
    ):
        assert send(chip, cmd).sw in (SW.CONDITIONS_NOT_SATISFIED, 0x6982)
    # Writes under BAC secure messaging are refused too.
    run_flow(select_flow(), chip)
    sm = run_flow(bac(mrz, os.urandom), chip)
    for cmd in (
        CommandAPDU(0x00, 0xD6, 0x81, 0, b"\x00"),
        CommandAPDU(0x00, 0xE0, 0, 0, bytes.fromhex("6208800200108302010D")),
    ):
        reply = sm.unwrap_response(send(chip, sm.wrap_command(cmd)))
        assert reply.sw == SW.CONDITIONS_NOT_SATISFIED
    assert chip.image.to_json() == before


def test_bac_read_matches_what_was_written(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    chip, plan, mrz = personalised(keystore, applications[1])
    run_flow(select_flow(), chip)
    sm = run_flow(bac(mrz, os.urandom), chip)
    for name in ("EF.COM", "DG1", "DG2", "EF.SOD"):
        assert run_flow(read_file(sm, name, extended=False), chip) == plan.file(name)


def test_plain_command_ends_secure_messaging(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    chip, _plan, mrz = personalised(keystore, applications[0])
    run_flow(select_flow(), chip)
    sm = run_flow(bac(mrz, os.urandom), chip)
    assert send(chip, CommandAPDU(0x00, 0xB0, 0x81, 0x00, ne=4)).sw == 0x6982
    # The old session is gone: a protected command now finds no SM session.
    reply = send(chip, sm.wrap_command(CommandAPDU(0x00, 0xB0, 0x81, 0x00, ne=4)))
    assert reply.sw == SW.SM_DATA_OBJECTS_MISSING


def test_image_round_trip(tmp_path, keystore, applications) -> None:  # type: ignore[no-untyped-def]
    chip, plan, mrz = personalised(keystore, applications[2])
    path = tmp_path / "chip.img"
    chip.image.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = ChipImage.load(path)
    assert loaded.to_json() == chip.image.to_json()
    again = ChipOS(loaded)
    run_flow(select_flow(), again)
    sm = run_flow(bac(mrz, os.urandom), again)
    assert run_flow(read_file(sm, "DG1"), again) == plan.file("DG1")


def test_unknown_class_and_instruction() -> None:
    chip = ChipOS(ChipImage.blank(SERIAL, KEYS))
    assert send(chip, CommandAPDU(0xA0, 0xA4, 0, 0)).sw == SW.CLA_NOT_SUPPORTED
    assert send(chip, CommandAPDU(0x00, 0x12, 0, 0)).sw == SW.INS_NOT_SUPPORTED
    assert ResponseAPDU.from_bytes(chip.transmit(b"\x00\xa4")).sw == SW.WRONG_LENGTH


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8))
def test_random_bytes_always_get_a_status_word(frames: list[bytes]) -> None:
    chip = ChipOS(ChipImage.blank(SERIAL, KEYS))
    select_app(chip)
    for frame in frames:
        reply = chip.transmit(frame)
        assert len(reply) >= 2
        assert reply[-2] in (
            0x61,
            0x62,
            0x63,
            0x64,
            0x65,
            0x67,
            0x68,
            0x69,
            0x6A,
            0x6B,
            0x6D,
            0x6E,
            0x6F,
            0x90,
        )


@given(
    st.integers(0, 255),
    st.sampled_from([0xA4, 0xB0, 0xB1, 0xD6, 0xE0, 0x84, 0x82, 0x50, 0xDA, 0xF0]),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=300),
    st.one_of(st.none(), st.integers(1, 65536)),
)
def test_random_commands_on_a_locked_chip_write_nothing(cla, ins, p1, p2, data, ne) -> None:  # type: ignore[no-untyped-def]
    image = ChipImage.blank(SERIAL, KEYS)
    image.lifecycle = Lifecycle.SECURED
    image.bac_keys = (bytes(16), bytes(16))
    chip = ChipOS(image)
    before = image.to_json()
    select_app(chip)
    reply = ResponseAPDU.from_bytes(
        chip.transmit(CommandAPDU(cla, ins, p1, p2, data, ne).to_bytes())
    )
    assert reply.sw != SW.UNKNOWN
    assert image.to_json() == before


def test_status_words_of_a_locked_chip(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    chip, _plan, mrz = personalised(keystore, applications[0])
    assert (
        send(chip, CommandAPDU(0x00, 0xA4, 0x04, 0x0C, bytes.fromhex("A0000000031010"))).sw
        == 0x6A82
    )
    select_app(chip)
    assert send(chip, CommandAPDU(0x00, 0x84, 0x00, 0x00, ne=4)).sw == 0x6700
    run_flow(select_flow(), chip)
    sm = run_flow(bac(mrz, os.urandom), chip)
    # 6A82 under SM for a file that does not exist (DG5).
    reply = sm.unwrap_response(send(chip, sm.wrap_command(CommandAPDU(0, 0xB0, 0x85, 0, ne=4))))
    assert reply.sw == 0x6A82
    # 6986: no current EF after that; then 6B00 for an offset beyond the end of DG1.
    reply = sm.unwrap_response(send(chip, sm.wrap_command(CommandAPDU(0, 0xB0, 0x00, 0, ne=4))))
    assert reply.sw == 0x6986
    reply = sm.unwrap_response(send(chip, sm.wrap_command(CommandAPDU(0, 0xB0, 0x81, 0, ne=4))))
    assert reply.sw == 0x9000
    reply = sm.unwrap_response(send(chip, sm.wrap_command(CommandAPDU(0, 0xB0, 0x7F, 0, ne=4))))
    assert reply.sw == 0x6B00
    # 6988: a protected command with a wrong MAC ends the session.
    wrapped = sm.wrap_command(CommandAPDU(0, 0xB0, 0x81, 0, ne=4)).to_bytes()
    tampered = wrapped[:-3] + bytes([wrapped[-3] ^ 1]) + wrapped[-2:]
    assert ResponseAPDU.from_bytes(chip.transmit(tampered)).sw == 0x6988
    assert send(chip, CommandAPDU(0x0C, 0xB0, 0x81, 0, b"\x97\x01\x04", ne=256)).sw == 0x6987


def test_scp03_refuses_wrong_keys_and_unauthenticated_commands() -> None:
    from chip.errors import AuthenticationError
    from chip.protocols.scp03 import SecurityLevel, open_scp03

    chip = ChipOS(ChipImage.blank(SERIAL, KEYS))
    select_app(chip)
    wrong = StaticKeys(enc=bytes(16), mac=bytes(16), dek=bytes(16))
    level = SecurityLevel.C_MAC | SecurityLevel.C_DECRYPTION
    try:
        run_flow(open_scp03(wrong, security_level=level, rng=os.urandom), chip)
    except AuthenticationError:
        pass
    else:
        raise AssertionError("SCP03 opened with the wrong static keys")
    # A C-MAC'd command without a session is refused, and nothing was created.
    assert send(chip, CommandAPDU(0x04, 0xE0, 0, 0, bytes(16))).sw == 0x6982
    assert chip.image.app_files == {}


def test_timing_model_accumulates_modeled_time(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    from chip.emulator import TimingModel

    slept: list[float] = []
    plan = build_plan(applications[0].to_holder(), keystore.document_signer())
    chip = ChipOS(
        ChipImage.blank(SERIAL, KEYS),
        timing=TimingModel(per_apdu_s=0.004, per_byte_written_s=0.00001),
        sleep=slept.append,
    )
    result = run_flow(personalise(plan, KEYS, rng=os.urandom), chip)
    expected = 0.004 * chip.stats.apdus + 0.00001 * result.bytes_written
    assert abs(chip.stats.modeled_seconds - expected) < 1e-9
    assert abs(sum(slept) - expected) < 1e-9
    assert chip.stats.bytes_written == result.bytes_written == sum(len(f.data) for f in plan.files)
