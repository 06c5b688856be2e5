"""ICAO 9303 secure messaging: worked examples on both sides, then round trips and tampering."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

from chip.apdu import CommandAPDU, ResponseAPDU
from chip.crypto.des import RetailMac, Tdes
from chip.crypto.padding import pad
from chip.crypto.sm import AesSecureMessaging, SecureMessaging, TdesSecureMessaging
from chip.errors import CardSecureMessagingError, EncodingError, SecureMessagingError

D4 = load("icao-9303-part11/appendix-d-sm.toml")
AES = load("icao-9303-part11/aes-sm.toml")


def d4_pair() -> tuple[TdesSecureMessaging, TdesSecureMessaging]:
    src = D4.source
    ssc = int(src["initial_ssc"], 16)
    reader = TdesSecureMessaging(h(src["ks_enc"]), h(src["ks_mac"]), ssc)
    chip = TdesSecureMessaging(h(src["ks_enc"]), h(src["ks_mac"]), ssc)
    return reader, chip


def aes_session(v: dict[str, Any], ssc: int) -> AesSecureMessaging:
    return AesSecureMessaging(h(v["ks_enc"]), h(v["ks_mac"]), ssc)


# -- known answers: ICAO Appendix D.4 (3DES) -----------------------------------------------------


def test_d4_reader_side_byte_for_byte() -> None:
    reader, _ = d4_pair()
    for v in D4.vectors:
        protected = reader.wrap_command(CommandAPDU.from_bytes(h(v["plain_command"])))
        assert protected.to_bytes() == h(v["protected_command"]), v["name"]
        assert reader.ssc == int(v["command_ssc"], 16)
        plain = reader.unwrap_response(ResponseAPDU.from_bytes(h(v["protected_response"])))
        assert plain == ResponseAPDU(h(v["response_data"]), int(v["response_sw"], 16)), v["name"]
        assert reader.ssc == int(v["response_ssc"], 16)


def test_d4_chip_side_byte_for_byte() -> None:
    _, chip = d4_pair()
    for v in D4.vectors:
        plain = chip.unwrap_command(CommandAPDU.from_bytes(h(v["protected_command"])))
        assert plain.to_bytes() == h(v["plain_command"]), v["name"]
        assert chip.ssc == int(v["command_ssc"], 16)
        answer = ResponseAPDU(h(v["response_data"]), int(v["response_sw"], 16))
        assert chip.wrap_response(answer).to_bytes() == h(v["protected_response"]), v["name"]
        assert chip.ssc == int(v["response_ssc"], 16)


# -- known answers: AES (no ICAO example; jcexpress and gmrtd rows) ------------------------------


def test_aes_jcexpress_select_both_sides() -> None:
    v = AES.named("jcexpress-select-aid")
    start = int(v["command_ssc"], 16) - 1
    reader, chip = aes_session(v, start), aes_session(v, start)
    protected = reader.wrap_command(CommandAPDU.from_bytes(h(v["plain_command"])))
    assert protected.to_bytes() == h(v["protected_command"])
    assert chip.unwrap_command(protected).to_bytes() == h(v["plain_command"])
    response = chip.wrap_response(ResponseAPDU(h(v["response_data"]), int(v["response_sw"], 16)))
    assert response.to_bytes() == h(v["protected_response"])
    assert reader.unwrap_response(response) == ResponseAPDU(b"", 0x9000)
    assert reader.ssc == chip.ssc == int(v["response_ssc"], 16)


def test_aes_gmrtd_real_chip_command() -> None:
    v = AES.named("gmrtd-mse-set-at")
    reader = aes_session(v, int(v["command_ssc"], 16) - 1)
    protected = reader.wrap_command(CommandAPDU.from_bytes(h(v["plain_command"])))
    assert protected.to_bytes() == h(v["protected_command"])
    chip = aes_session(v, int(v["command_ssc"], 16) - 1)
    assert chip.unwrap_command(protected).to_bytes() == h(v["plain_command"])


def test_aes_gmrtd_real_chip_response_with_long_do87() -> None:
    v = AES.named("gmrtd-read-response")
    start = int(v["response_ssc"], 16) - 1
    reader = aes_session(v, start)
    plain = reader.unwrap_response(ResponseAPDU.from_bytes(h(v["protected_response"])))
    assert plain == ResponseAPDU(h(v["response_data"]), 0x9000)
    # The chip side, given the same plain answer, produces the same bytes (IV and MAC agree).
    chip = aes_session(v, start)
    assert chip.wrap_response(plain).to_bytes() == h(v["protected_response"])


# -- framing rules -------------------------------------------------------------------------------


def tdes_pair(ssc: int = 0) -> tuple[TdesSecureMessaging, TdesSecureMessaging]:
    key_enc, key_mac = bytes(range(16)), bytes(range(16, 32))
    return TdesSecureMessaging(key_enc, key_mac, ssc), TdesSecureMessaging(key_enc, key_mac, ssc)


def aes_pair(ssc: int = 0, key_length: int = 16) -> tuple[AesSecureMessaging, AesSecureMessaging]:
    key_enc, key_mac = bytes(range(key_length)), bytes(range(1, key_length + 1))
    return AesSecureMessaging(key_enc, key_mac, ssc), AesSecureMessaging(key_enc, key_mac, ssc)


def test_odd_ins_uses_do85_both_ways() -> None:
    reader, chip = tdes_pair()
    protected = reader.wrap_command(
        CommandAPDU(0x00, 0xB1, 0x01, 0x1E, b"\x54\x02\x00\x00", ne=256)
    )
    assert protected.data[0] == 0x85
    assert protected.data[1] == 8  # cryptogram only, no padding-content indicator
    assert chip.unwrap_command(protected).data == b"\x54\x02\x00\x00"
    response = chip.wrap_response(ResponseAPDU(b"\x53\x02\x60\x14", 0x9000))
    assert response.data[0] == 0x85
    assert reader.unwrap_response(response) == ResponseAPDU(b"\x53\x02\x60\x14", 0x9000)


def test_le_encoding_and_extended_framing() -> None:
    reader, _ = tdes_pair()
    short = reader.wrap_command(CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=256))
    assert short.data[:3] == b"\x97\x01\x00" and short.ne == 256 and not short.is_extended
    long_le = reader.wrap_command(CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=65536))
    assert long_le.data[:4] == b"\x97\x02\x00\x00" and long_le.ne == 65536
    assert long_le.to_bytes()[-2:] == b"\x00\x00"
    le_257 = reader.wrap_command(CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=257))
    assert le_257.data[:4] == b"\x97\x02\x01\x01" and le_257.is_extended
    # 239 bytes pad to 240: 87 81 F1 01 <240> + 8E 08 <8> = 254 bytes, still short.
    fits = reader.wrap_command(CommandAPDU(0x00, 0xD6, 0x00, 0x00, bytes(239)))
    assert len(fits.data) == 254 and not fits.is_extended
    # 240 bytes pad to 248: the body is 262 bytes, so Lc' and Le' go extended.
    spills = reader.wrap_command(CommandAPDU(0x00, 0xD6, 0x00, 0x00, bytes(240)))
    assert len(spills.data) == 262 and spills.to_bytes()[4:7] == b"\x00\x01\x06"
    assert spills.to_bytes()[-2:] == b"\x00\x00"


def test_protected_cla_keeps_channel_and_chaining_bits() -> None:
    reader, chip = tdes_pair()
    for cla, protected_cla in (
        (0x00, 0x0C),
        (0x01, 0x0D),
        (0x10, 0x1C),
        (0x80, 0x8C),
        (0x41, 0x61),
    ):
        protected = reader.wrap_command(CommandAPDU(cla, 0xA4, 0x02, 0x0C, b"\x01\x1e"))
        assert protected.cla == protected_cla
        assert chip.unwrap_command(protected).cla == cla


@pytest.mark.parametrize("cla", [0x0C, 0x04, 0x08, 0x60, 0xFF, 0xF3])
def test_wrapping_refuses_a_cla_it_cannot_flag_and_changes_nothing(cla: int) -> None:
    reader, _ = tdes_pair(ssc=5)
    with pytest.raises(ValueError):
        reader.wrap_command(CommandAPDU(cla, 0xB0, 0x00, 0x00, ne=4))
    assert reader.ssc == 5 and not reader.dead


def test_wrapping_refuses_data_too_long_for_one_apdu_and_changes_nothing() -> None:
    reader, _ = aes_pair(ssc=9)
    with pytest.raises(ValueError, match="too long"):
        reader.wrap_command(CommandAPDU(0x00, 0xD6, 0x00, 0x00, bytes(65535)))
    with pytest.raises(ValueError, match="too long"):
        reader.wrap_command(CommandAPDU(0x00, 0xD6, 0x00, 0x00, bytes(65520), ne=65536))
    assert reader.ssc == 9 and not reader.dead


def test_wrapping_refuses_a_response_too_long_for_one_apdu_and_changes_nothing() -> None:
    _, chip = tdes_pair(ssc=3)
    with pytest.raises(ValueError, match="too long"):
        chip.wrap_response(ResponseAPDU(bytes(65530), 0x9000))
    assert chip.ssc == 3 and not chip.dead


def test_ssc_wraps_around() -> None:
    reader, chip = tdes_pair(ssc=(1 << 64) - 1)
    chip.unwrap_command(reader.wrap_command(CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=1)))
    assert reader.ssc == chip.ssc == 0
    with pytest.raises(ValueError, match="SSC"):
        AesSecureMessaging(bytes(16), bytes(16), 1 << 128)


def test_repr_hides_keys_and_ssc() -> None:
    reader, _ = d4_pair()
    text = repr(reader)
    assert "979E" not in text.upper() and "887022" not in text and "hidden" in text


# -- errors: status words, dead sessions ---------------------------------------------------------


def chip_refusal(chip: SecureMessaging, cmd: CommandAPDU) -> int:
    with pytest.raises(CardSecureMessagingError) as info:
        chip.unwrap_command(cmd)
    assert chip.dead
    return info.value.sw


def protected_select() -> tuple[TdesSecureMessaging, TdesSecureMessaging, CommandAPDU]:
    reader, chip = d4_pair()
    return reader, chip, reader.wrap_command(CommandAPDU.from_bytes(h("00A4020C02011E")))


def test_chip_answers_6987_for_a_plain_command() -> None:
    _, chip, _ = protected_select()
    assert chip_refusal(chip, CommandAPDU.from_bytes(h("00A4020C02011E"))) == 0x6987


def test_chip_answers_6987_when_the_mac_object_is_missing() -> None:
    _, chip, cmd = protected_select()
    stripped = CommandAPDU(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data[:11], ne=256)
    assert chip_refusal(chip, stripped) == 0x6987


def test_chip_answers_6988_for_a_wrong_mac() -> None:
    _, chip, cmd = protected_select()
    forged = CommandAPDU(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data[:-1] + b"\x00", ne=256)
    assert chip_refusal(chip, forged) == 0x6988


@pytest.mark.parametrize("ne", [None, 1, 255])
def test_chip_answers_6988_for_a_protected_command_without_le_00(ne: int | None) -> None:
    _, chip, cmd = protected_select()
    assert chip_refusal(chip, CommandAPDU(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, ne)) == 0x6988


@pytest.mark.parametrize(
    "body",
    [
        h("8E08") + bytes(8) + h("9701 00"),  # object after DO'8E'
        h("970100 8709 01") + bytes(8) + h("8E08") + bytes(8),  # wrong order
        h("9901 00 8E08") + bytes(8),  # response object in a command
        h("8E07") + bytes(7),  # short MAC
        h("8783"),  # unsupported length form
        h("8710 01") + bytes(4),  # overruns the APDU
    ],
)
def test_chip_answers_6988_for_malformed_objects(body: bytes) -> None:
    _, chip = tdes_pair()
    assert chip_refusal(chip, CommandAPDU(0x0C, 0xB0, 0x00, 0x00, body, ne=256)) == 0x6988


def test_dead_session_refuses_everything_on_both_sides() -> None:
    reader, chip, cmd = protected_select()
    chip_refusal(chip, CommandAPDU.from_bytes(h("00A4020C02011E")))
    with pytest.raises(CardSecureMessagingError) as info:
        chip.unwrap_command(cmd)  # the genuine command, now too late
    assert info.value.sw == 0x6988
    with pytest.raises(CardSecureMessagingError):
        chip.wrap_response(ResponseAPDU(b"", 0x9000))

    with pytest.raises(SecureMessagingError):
        reader.unwrap_response(ResponseAPDU.status(0x6987))
    assert reader.dead
    with pytest.raises(SecureMessagingError):
        reader.wrap_command(CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=4))
    with pytest.raises(SecureMessagingError):
        reader.unwrap_response(ResponseAPDU.from_bytes(h("990290008E08FA855A5D4C50A8ED9000")))


@pytest.mark.parametrize(
    "raw",
    [
        "8E08FA855A5D4C50A8ED9000",  # no DO'99'
        "990290008E08FA855A5D4C50A8ED6A82",  # good MAC, but the trailer disagrees with DO'99'
        "990290008E08FA855A5D4C50A8EE9000",  # wrong MAC
        "990190008E08FA855A5D4C50A8ED9000",  # malformed DO'99' length
    ],
)
def test_reader_rejects_bad_responses(raw: str) -> None:
    reader, chip, cmd = protected_select()
    chip.unwrap_command(cmd)
    with pytest.raises(SecureMessagingError) as info:
        reader.unwrap_response(ResponseAPDU.from_bytes(h(raw)))
    assert not isinstance(info.value, CardSecureMessagingError)
    assert info.value.step == "sm.unwrap_response"
    assert reader.dead


def test_bad_padding_under_a_good_mac_is_rejected() -> None:
    # A broken chip: DO'87' over 8 bytes that were never padded, with a correct MAC.
    reader, _ = tdes_pair()
    reader.wrap_command(CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=8))
    key_enc, key_mac = bytes(range(16)), bytes(range(16, 32))
    ssc = (2).to_bytes(8, "big")
    do87 = b"\x87\x09\x01" + Tdes(key_enc).encrypt(b"ABCDEFGH")
    do99 = b"\x99\x02\x90\x00"
    mac = RetailMac(key_mac).mac(pad(ssc + do87 + do99, 8), padded=True)
    with pytest.raises(SecureMessagingError, match="padding"):
        reader.unwrap_response(ResponseAPDU(do87 + do99 + b"\x8e\x08" + mac, 0x9000))
    assert reader.dead


# -- properties: round trips and tampering -------------------------------------------------------


def _plain_cla(cla: int) -> int:
    return cla & ~(0x20 if cla & 0xC0 == 0x40 else 0x0C)


commands = st.builds(
    CommandAPDU,
    cla=st.integers(0, 0xFE).map(_plain_cla).filter(lambda cla: cla != 0xF3),  # F3 -> FF
    ins=st.integers(0, 0xFF),
    p1=st.integers(0, 0xFF),
    p2=st.integers(0, 0xFF),
    data=st.binary(max_size=1000),
    ne=st.one_of(st.none(), st.integers(1, 256), st.integers(257, 65536)),
)
responses = st.builds(ResponseAPDU, data=st.binary(max_size=1000), sw=st.integers(0x6000, 0x9FFF))
variants = st.sampled_from(["3des", "aes128", "aes192", "aes256"])
sscs = st.integers(0, (1 << 64) - 1)


def session_pair(variant: str, ssc: int) -> tuple[SecureMessaging, SecureMessaging]:
    if variant == "3des":
        return tdes_pair(ssc)
    return aes_pair(ssc, {"aes128": 16, "aes192": 24, "aes256": 32}[variant])


@given(variants, sscs, st.lists(st.tuples(commands, responses), min_size=1, max_size=3))
def test_exchanges_round_trip(
    variant: str, ssc: int, exchanges: list[tuple[CommandAPDU, ResponseAPDU]]
) -> None:
    reader, chip = session_pair(variant, ssc)
    for cmd, resp in exchanges:
        protected = reader.wrap_command(cmd)
        assert protected.cla != cmd.cla and protected.ne in (256, 65536)
        assert protected.is_extended == (len(protected.data) > 255 or (cmd.ne or 0) > 256)
        # Through the transport encoding, as a real link would carry it.
        assert chip.unwrap_command(CommandAPDU.from_bytes(protected.to_bytes())) == cmd
        answer = chip.wrap_response(resp)
        assert reader.unwrap_response(ResponseAPDU.from_bytes(answer.to_bytes())) == resp
        assert reader.ssc == chip.ssc
    assert reader.ssc == (ssc + 2 * len(exchanges)) % (1 << (8 * reader.block))


def _flip(raw: bytes, bit: int) -> bytes:
    index, mask = divmod(bit % (8 * len(raw)), 8)
    return raw[:index] + bytes((raw[index] ^ (1 << mask),)) + raw[index + 1 :]


@given(variants, sscs, commands, st.integers(min_value=0))
def test_any_flipped_bit_in_a_protected_command_is_rejected(
    variant: str, ssc: int, cmd: CommandAPDU, bit: int
) -> None:
    reader, chip = session_pair(variant, ssc)
    wrapped = reader.wrap_command(cmd)
    raw = _flip(wrapped.to_bytes(), bit)
    try:
        tampered = CommandAPDU.from_bytes(raw)
    except EncodingError:
        return  # a broken length field never reaches secure messaging: the APDU codec refuses it
    if (tampered.cla, tampered.ins, tampered.p1, tampered.p2, tampered.data) == (
        wrapped.cla, wrapped.ins, wrapped.p1, wrapped.p2, wrapped.data,
    ):  # fmt: skip
        # Only the outer Le changed: it is outside the MAC by design (Doc 9303 Part 11, 9.8.4:
        # the protected Le travels in DO'97').  The chip refuses an outer Le other than '00', and
        # may take another encoding of '00' (short for extended): then it sees exactly the command
        # that was sent, never another one.
        assert tampered.ne != wrapped.ne
        try:
            assert chip.unwrap_command(tampered) == cmd
        except CardSecureMessagingError:
            assert chip.dead
        return
    with pytest.raises(CardSecureMessagingError) as info:
        chip.unwrap_command(tampered)
    assert info.value.sw in (0x6987, 0x6988)
    assert chip.dead
    with pytest.raises(SecureMessagingError):
        chip.wrap_response(ResponseAPDU(b"", 0x9000))


@given(variants, sscs, responses, st.integers(min_value=0))
def test_any_flipped_bit_in_a_protected_response_is_rejected(
    variant: str, ssc: int, resp: ResponseAPDU, bit: int
) -> None:
    reader, chip = session_pair(variant, ssc)
    raw = _flip(chip.wrap_response(resp).to_bytes(), bit)
    with pytest.raises(SecureMessagingError):
        reader.unwrap_response(ResponseAPDU.from_bytes(raw))
    assert reader.dead
    with pytest.raises(SecureMessagingError):
        reader.wrap_command(CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=1))


@given(variants, sscs, commands)
def test_a_replayed_command_is_rejected(variant: str, ssc: int, cmd: CommandAPDU) -> None:
    reader, chip = session_pair(variant, ssc)
    protected = reader.wrap_command(cmd)
    chip.unwrap_command(protected)
    with pytest.raises(CardSecureMessagingError) as info:
        chip.unwrap_command(protected)
    assert info.value.sw == 0x6988
