"""Basic Access Control: the ICAO Appendix D example on both sides, failures, and a property."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

from chip.apdu import CommandAPDU, ResponseAPDU
from chip.crypto.des import RetailMac, Tdes
from chip.crypto.kdf import bac_keys
from chip.crypto.sm import TdesSecureMessaging
from chip.errors import AuthenticationError, ProtocolError, StatusWordError
from chip.protocols.bac import GET_CHALLENGE, BacChip, bac, session_from
from chip.random import ScriptedRandom
from chip.transport.base import Flow, run_flow

BAC = load("icao-9303-part11/appendix-d-bac.toml")
D4 = load("icao-9303-part11/appendix-d-sm.toml")
KEYS = BAC.named("document-keys")
AUTH = BAC.named("mutual-authentication")
MRZ = KEYS["mrz_information"]


def reader_rng() -> ScriptedRandom:
    return ScriptedRandom([h(AUTH["rnd_ifd"]), h(AUTH["k_ifd"])])


def chip_rng() -> ScriptedRandom:
    return ScriptedRandom([h(AUTH["rnd_ic"]), h(AUTH["k_ic"])])


def d4_chip() -> BacChip:
    return BacChip(h(KEYS["k_enc"]), h(KEYS["k_mac"]), chip_rng())


def finish(flow: Flow[TdesSecureMessaging], response: ResponseAPDU) -> TdesSecureMessaging:
    with pytest.raises(StopIteration) as done:
        flow.send(response)
    session: TdesSecureMessaging = done.value.value
    return session


def assert_is_the_d4_session(session: TdesSecureMessaging, *, reader: bool) -> None:
    """KS_Enc, KS_MAC and SSC are right iff the session replays Appendix D.4 byte for byte."""
    assert session.ssc == int(AUTH["ssc"], 16)
    for v in D4.vectors:
        if reader:
            protected = session.wrap_command(CommandAPDU.from_bytes(h(v["plain_command"])))
            assert protected.to_bytes() == h(v["protected_command"])
            session.unwrap_response(ResponseAPDU.from_bytes(h(v["protected_response"])))
        else:
            session.unwrap_command(CommandAPDU.from_bytes(h(v["protected_command"])))
            answer = ResponseAPDU(h(v["response_data"]), int(v["response_sw"], 16))
            assert session.wrap_response(answer).to_bytes() == h(v["protected_response"])


# -- known answers: Appendix D.3 -----------------------------------------------------------------


def test_reader_side_d3_byte_for_byte() -> None:
    flow = bac(MRZ, reader_rng())
    assert next(flow).to_bytes() == h(AUTH["get_challenge_apdu"])
    external_authenticate = flow.send(ResponseAPDU(h(AUTH["rnd_ic"]), 0x9000))
    assert external_authenticate.to_bytes() == h(AUTH["external_authenticate_apdu"])
    session = finish(flow, ResponseAPDU(h(AUTH["resp_data"]), 0x9000))
    assert_is_the_d4_session(session, reader=True)


def test_chip_side_d3_byte_for_byte() -> None:
    chip = d4_chip()
    assert chip.get_challenge() == h(AUTH["rnd_ic"])
    answer, session = chip.external_authenticate(h(AUTH["e_ifd"]) + h(AUTH["m_ifd"]))
    assert answer == h(AUTH["resp_data"])
    assert answer[32:] == h(AUTH["m_ic"])
    assert_is_the_d4_session(session, reader=False)


def test_session_keys_d3() -> None:
    session = session_from(h(AUTH["k_ifd"]), h(AUTH["k_ic"]), h(AUTH["rnd_ic"]), h(AUTH["rnd_ifd"]))
    assert bytes(a ^ b for a, b in zip(h(AUTH["k_ifd"]), h(AUTH["k_ic"]), strict=True)) == h(
        AUTH["ks_seed"]
    )
    reference = TdesSecureMessaging(h(AUTH["ks_enc"]), h(AUTH["ks_mac"]), int(AUTH["ssc"], 16))
    plain = CommandAPDU.from_bytes(h(D4.vectors[0]["plain_command"]))
    assert session.wrap_command(plain) == reference.wrap_command(plain)


def test_get_challenge_apdu_constant() -> None:
    assert GET_CHALLENGE.to_bytes() == h("0084000008")


# -- the two sides together, over the transport seam ---------------------------------------------


class BacOnlyCard:
    """A card that answers GET CHALLENGE and EXTERNAL AUTHENTICATE, then speaks secure messaging."""

    def __init__(self, chip: BacChip) -> None:
        self.chip = chip
        self.session: TdesSecureMessaging | None = None

    def transmit(self, apdu: bytes) -> bytes:
        cmd = CommandAPDU.from_bytes(apdu)
        if self.session is not None:
            plain = self.session.unwrap_command(cmd)
            return self.session.wrap_response(ResponseAPDU(bytes([plain.ins]), 0x9000)).to_bytes()
        if cmd.ins == 0x84:
            return ResponseAPDU(self.chip.get_challenge(), 0x9000).to_bytes()
        try:
            data, self.session = self.chip.external_authenticate(cmd.data)
        except AuthenticationError:
            return ResponseAPDU.status(0x6300).to_bytes()
        return ResponseAPDU(data, 0x9000).to_bytes()


def test_reader_and_chip_agree_over_the_transport() -> None:
    card = BacOnlyCard(d4_chip())
    session = run_flow(bac(MRZ, reader_rng()), card)
    assert card.session is not None
    reply = session.unwrap_response(
        ResponseAPDU.from_bytes(
            card.transmit(session.wrap_command(CommandAPDU(0x00, 0xB0, 0, 0, ne=1)).to_bytes())
        )
    )
    assert reply == ResponseAPDU(b"\xb0", 0x9000)
    assert session.ssc == card.session.ssc


@given(
    st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ<", min_size=24, max_size=30),
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=16, max_size=16),
)
def test_any_keys_and_nonces_give_matching_sessions(
    mrz: str, rnd_ifd: bytes, k_ifd: bytes, rnd_ic: bytes, k_ic: bytes
) -> None:
    card = BacOnlyCard(BacChip(*bac_keys(mrz), ScriptedRandom([rnd_ic, k_ic])))
    session = run_flow(bac(mrz, ScriptedRandom([rnd_ifd, k_ifd])), card)
    assert card.session is not None
    assert session.ssc == card.session.ssc == int.from_bytes(rnd_ic[4:] + rnd_ifd[4:], "big")
    cmd = CommandAPDU(0x00, 0xA4, 0x02, 0x0C, b"\x01\x1e")
    assert card.session.unwrap_command(session.wrap_command(cmd)) == cmd


def test_wrong_mrz_is_refused_by_the_chip() -> None:
    card = BacOnlyCard(d4_chip())
    with pytest.raises(StatusWordError) as info:
        run_flow(bac("L898902C<369080619406237", reader_rng()), card)
    assert info.value.sw == 0x6300
    assert info.value.step == "bac.external_authenticate"


# -- reader-side failures ------------------------------------------------------------------------


def reader_at_external_authenticate() -> Flow[TdesSecureMessaging]:
    flow = bac(MRZ, reader_rng())
    next(flow)
    flow.send(ResponseAPDU(h(AUTH["rnd_ic"]), 0x9000))
    return flow


def test_reader_raises_on_get_challenge_status() -> None:
    flow = bac(MRZ, reader_rng())
    next(flow)
    with pytest.raises(StatusWordError) as info:
        flow.send(ResponseAPDU.status(0x6985))
    assert (info.value.sw, info.value.step) == (0x6985, "bac.get_challenge")


def test_reader_raises_on_a_short_challenge() -> None:
    flow = bac(MRZ, reader_rng())
    next(flow)
    with pytest.raises(ProtocolError) as info:
        flow.send(ResponseAPDU(b"\x01\x02\x03\x04", 0x9000))
    assert info.value.step == "bac.get_challenge"


def test_reader_raises_on_external_authenticate_status() -> None:
    with pytest.raises(StatusWordError) as info:
        reader_at_external_authenticate().send(ResponseAPDU.status(0x6300))
    assert (info.value.sw, info.value.step) == (0x6300, "bac.external_authenticate")


def _answer_for(r: bytes, *, mac_ok: bool = True) -> ResponseAPDU:
    e_ic = Tdes(h(KEYS["k_enc"])).encrypt(r)
    m_ic = RetailMac(h(KEYS["k_mac"])).mac(e_ic)
    if not mac_ok:
        m_ic = bytes(b ^ 0xFF for b in m_ic)
    return ResponseAPDU(e_ic + m_ic, 0x9000)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(_answer_for(h(AUTH["r"]), mac_ok=False), id="bad-mac"),
        pytest.param(_answer_for(h(AUTH["rnd_ic"]) + bytes(8) + h(AUTH["k_ic"])), id="bad-rnd-ifd"),
        pytest.param(_answer_for(bytes(8) + h(AUTH["r"])[8:]), id="bad-rnd-ic"),
        pytest.param(ResponseAPDU(h(AUTH["resp_data"])[:32], 0x9000), id="short"),
    ],
)
def test_reader_rejects_a_chip_that_does_not_authenticate(answer: ResponseAPDU) -> None:
    with pytest.raises(AuthenticationError) as info:
        reader_at_external_authenticate().send(answer)
    assert info.value.step == "bac.external_authenticate"


def test_reader_refuses_a_random_source_of_the_wrong_size() -> None:
    flow = bac(MRZ, lambda n: bytes(n - 1))
    next(flow)
    with pytest.raises(ValueError, match="random source"):
        flow.send(ResponseAPDU(h(AUTH["rnd_ic"]), 0x9000))


# -- chip-side failures --------------------------------------------------------------------------

GOOD = h(AUTH["e_ifd"]) + h(AUTH["m_ifd"])


def test_chip_refuses_without_a_challenge() -> None:
    with pytest.raises(AuthenticationError, match="no challenge"):
        d4_chip().external_authenticate(GOOD)


def _bad_mac() -> bytes:
    return GOOD[:-1] + bytes([GOOD[-1] ^ 1])


def _other_challenge() -> bytes:
    s = h(AUTH["rnd_ifd"]) + bytes(8) + h(AUTH["k_ifd"])
    e_ifd = Tdes(h(KEYS["k_enc"])).encrypt(s)
    return e_ifd + RetailMac(h(KEYS["k_mac"])).mac(e_ifd)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_bad_mac, id="bad-mac"),
        pytest.param(_other_challenge, id="other-challenge"),
        pytest.param(lambda: GOOD[:39], id="short"),
    ],
)
def test_chip_rejects_a_terminal_that_does_not_authenticate(data: Callable[[], bytes]) -> None:
    chip = d4_chip()
    chip.get_challenge()
    with pytest.raises(AuthenticationError) as info:
        chip.external_authenticate(data())
    assert info.value.step == "bac.external_authenticate"


def test_a_failed_attempt_uses_up_the_challenge() -> None:
    chip = d4_chip()
    chip.get_challenge()
    with pytest.raises(AuthenticationError):
        chip.external_authenticate(_bad_mac())
    with pytest.raises(AuthenticationError, match="no challenge"):
        chip.external_authenticate(GOOD)


def test_chip_repr_hides_keys() -> None:
    text = repr(d4_chip())
    assert "AB94" not in text.upper() and "hidden" in text
