"""ISO/IEC 7816-4 APDU encoding: the seven cases, short and extended, and malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chip.apdu import CommandAPDU, ResponseAPDU
from chip.errors import EncodingError


@pytest.mark.parametrize(
    ("apdu", "encoded"),
    [
        (CommandAPDU(0x00, 0xA4, 0x04, 0x0C), "00A4040C"),  # case 1
        (CommandAPDU(0x00, 0x84, 0x00, 0x00, ne=8), "0084000008"),  # case 2S
        (CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=256), "00B0000000"),  # case 2S, Le 00 = 256
        (CommandAPDU(0x00, 0xA4, 0x02, 0x0C, b"\x01\x1e"), "00A4020C02011E"),  # case 3S
        (CommandAPDU(0x00, 0x82, 0, 0, bytes(40), ne=40), "0082000028" + "00" * 40 + "28"),  # 4S
        (CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=65536), "00B0000000000000"[:14]),  # case 2E
        (CommandAPDU(0x00, 0xB0, 0x00, 0x00, ne=1000), "00B00000" + "0003E8"),  # case 2E
        (CommandAPDU(0x00, 0xD6, 0, 0, bytes(300)), "00D60000" + "00012C" + "00" * 300),  # 3E
        (
            CommandAPDU(0x0C, 0xB0, 0, 0, bytes(300), ne=65536),
            "0CB00000" + "00012C" + "00" * 300 + "0000",
        ),  # case 4E
    ],
)
def test_encodings(apdu: CommandAPDU, encoded: str) -> None:
    assert apdu.to_bytes().hex().upper() == encoded.upper()
    assert CommandAPDU.from_bytes(bytes.fromhex(encoded)) == apdu


commands = st.builds(
    CommandAPDU,
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=600),
    st.one_of(st.none(), st.integers(1, 65536)),
)


@given(commands, st.booleans())
def test_round_trip(apdu: CommandAPDU, force_extended: bool) -> None:
    raw = apdu.to_bytes(extended=True if force_extended else None)
    assert CommandAPDU.from_bytes(raw) == apdu


@given(st.binary(max_size=400))
def test_malformed_bytes_raise_encoding_error_only(raw: bytes) -> None:
    try:
        apdu = CommandAPDU.from_bytes(raw)
    except EncodingError:
        return
    assert apdu.to_bytes(extended=None if len(raw) <= 261 else True)[:4] == raw[:4]


def test_short_form_refused_when_extended_needed() -> None:
    with pytest.raises(ValueError, match="extended"):
        CommandAPDU(0, 0xD6, 0, 0, bytes(256)).to_bytes(extended=False)


def test_repr_hides_data() -> None:
    secret = b"SECRET-PERSONAL-DATA"
    assert "SECRET" not in repr(CommandAPDU(0, 0xD6, 0, 0, secret))
    assert "SECRET" not in repr(ResponseAPDU(secret, 0x9000))


def test_response_round_trip() -> None:
    assert ResponseAPDU.from_bytes(bytes.fromhex("01029000")) == ResponseAPDU(b"\x01\x02", 0x9000)
    with pytest.raises(EncodingError):
        ResponseAPDU.from_bytes(b"\x90")
