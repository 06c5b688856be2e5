"""GlobalPlatform SCP03: known answers from real traces, then host <-> card behaviour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

from chip.apdu import SW, CommandAPDU, ResponseAPDU
from chip.crypto.sp800108 import CARD_CRYPTOGRAM, HOST_CRYPTOGRAM, S_ENC, S_MAC, S_RMAC, scp03_kdf
from chip.errors import (
    AuthenticationError,
    CardSecureMessagingError,
    EncodingError,
    ProtocolError,
    SecureMessagingError,
    StatusWordError,
)
from chip.protocols.scp03 import (
    Scp03Card,
    Scp03CardSession,
    Scp03HostSession,
    SecurityLevel,
    StaticKeys,
    open_scp03,
)
from chip.random import ScriptedRandom
from chip.transport.base import run_flow

TRACES = load("globalplatform/scp03_pysim_traces.toml")
SRC = TRACES.source
ISD_R_AID = h(SRC["isd_r_aid"])
TRACE_NAMES = [v["name"] for v in TRACES.vectors]
CASES = ("case_1", "case_2", "case_3", "case_4")

FULL = SecurityLevel.C_MAC | SecurityLevel.C_DECRYPTION | SecurityLevel.R_MAC
EVERYTHING = FULL | SecurityLevel.R_ENCRYPTION


def keys_of(v: dict[str, Any]) -> StaticKeys:
    return StaticKeys(h(v["enc"]), h(v["mac"]), h(v["dek"]), kvn=v["kvn"])


def sequence_of(v: dict[str, Any]) -> int:
    return int.from_bytes(h(v["init_update_rsp"])[-3:], "big")


class ScriptedCard:
    """A transport that answers from a script and records what it was sent."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self.sent: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        return self.responses.pop(0)


class CardTransport:
    """A transport over an :class:`Scp03Card`: INITIALIZE UPDATE and EXTERNAL AUTHENTICATE."""

    def __init__(self, card: Scp03Card) -> None:
        self.card = card
        self.session: Scp03CardSession | None = None

    def transmit(self, apdu: bytes) -> bytes:
        cmd = CommandAPDU.from_bytes(apdu)
        if cmd.ins == 0x50:
            return self.card.initialize_update(cmd).to_bytes()
        response, self.session = self.card.external_authenticate(cmd)
        return response.to_bytes()


def host_from_trace(v: dict[str, Any]) -> tuple[Scp03HostSession, ScriptedCard]:
    init_update = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    level = SecurityLevel(h(v["ext_auth_cmd"])[2])
    transport = ScriptedCard(h(v["init_update_rsp"]) + b"\x90\x00", b"\x90\x00")
    flow = open_scp03(
        keys_of(v), security_level=level, rng=ScriptedRandom([init_update.data]), kvn=v["kvn"]
    )
    return run_flow(flow, transport), transport


def card_from_trace(v: dict[str, Any]) -> Scp03Card:
    # The response's sequence counter is the value *after* the card incremented it (6.2.2.1).
    return Scp03Card(
        keys_of(v),
        kdd=h(v["init_update_rsp"])[:10],
        sequence_counter=sequence_of(v) - 1,
        aid=ISD_R_AID,
        rng=ScriptedRandom([]),
    )


def pair(
    level: SecurityLevel, keys: StaticKeys | None = None
) -> tuple[Scp03HostSession, Scp03CardSession, Scp03Card]:
    keys = keys or StaticKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))
    card = Scp03Card(keys, kdd=bytes(range(10)), sequence_counter=0, aid=ISD_R_AID, rng=bytes)
    transport = CardTransport(card)
    host = run_flow(open_scp03(keys, security_level=level, rng=lambda n: b"\x5a" * n), transport)
    assert transport.session is not None
    return host, transport.session, card


# -- known answers: pysim's real-card traces (chip-vectors 9.1) ------------------------------


def test_aes128_session_keys_and_cryptograms() -> None:
    v = TRACES.named("AES128_11")
    keys = keys_of(v)
    host_challenge = h(v["init_update_cmd"])[5:13]
    card_challenge = h(v["init_update_rsp"])[13:21]
    context = host_challenge + card_challenge
    s_mac = scp03_kdf(keys.mac, S_MAC, 128, context)
    assert scp03_kdf(keys.enc, S_ENC, 128, context) == h(v["s_enc"])
    assert s_mac == h(v["s_mac"])
    assert scp03_kdf(keys.mac, S_RMAC, 128, context) == h(v["s_rmac"])
    assert scp03_kdf(s_mac, CARD_CRYPTOGRAM, 64, context) == h(v["card_cryptogram"])
    assert scp03_kdf(s_mac, HOST_CRYPTOGRAM, 64, context) == h(v["host_cryptogram"])
    assert h(v["init_update_rsp"])[21:29] == h(v["card_cryptogram"])
    assert h(v["ext_auth_cmd"])[5:13] == h(v["host_cryptogram"])


@pytest.mark.parametrize("name", TRACE_NAMES)
def test_host_replays_trace(name: str) -> None:
    v = TRACES.named(name)
    session, transport = host_from_trace(v)
    assert transport.sent == [h(v["init_update_cmd"]), h(v["ext_auth_cmd"])]
    assert session.kdd == bytes(10)
    assert session.key_version == v["kvn"]
    assert session.sequence_counter == sequence_of(v)
    assert int(session.security_level) == h(v["ext_auth_cmd"])[2]

    get_eid = session.wrap_command(CommandAPDU.from_bytes(h(SRC["get_eid_cmd_plain"])))
    assert get_eid.to_bytes() == h(v["get_eid_cmd"])
    response = session.unwrap_response(ResponseAPDU(h(v["get_eid_rsp"]), SW.OK))
    assert response == ResponseAPDU(h(SRC["get_eid_rsp_plain"]), SW.OK)
    # The four ISO cases continue the same chain and the same encryption counter.
    for case in CASES:
        wrapped = session.wrap_command(CommandAPDU.from_bytes(h(SRC[f"{case}_plain"])))
        assert wrapped.to_bytes() == h(v[case]), case


@pytest.mark.parametrize("name", TRACE_NAMES)
def test_card_replays_trace(name: str) -> None:
    v = TRACES.named(name)
    card = card_from_trace(v)
    response = card.initialize_update(CommandAPDU.from_bytes(h(v["init_update_cmd"])))
    assert response.to_bytes() == h(v["init_update_rsp"]) + b"\x90\x00"
    assert card.sequence_counter == sequence_of(v)

    response, session = card.external_authenticate(CommandAPDU.from_bytes(h(v["ext_auth_cmd"])))
    assert response == ResponseAPDU.status(SW.OK)
    assert session is not None
    assert int(session.security_level) == h(v["ext_auth_cmd"])[2]

    command = session.unwrap_command(CommandAPDU.from_bytes(h(v["get_eid_cmd"])))
    assert command.to_bytes() == h(SRC["get_eid_cmd_plain"])
    wrapped = session.wrap_response(ResponseAPDU(h(SRC["get_eid_rsp_plain"]), SW.OK))
    assert wrapped == ResponseAPDU(h(v["get_eid_rsp"]), SW.OK)
    for case in CASES:
        command = session.unwrap_command(CommandAPDU.from_bytes(h(v[case])))
        assert command.to_bytes() == h(SRC[f"{case}_plain"]), case


@pytest.mark.parametrize("name", ["AES128_11", "AES256_11"])
def test_card_random_challenge_gives_same_cryptogram(name: str) -> None:
    v = TRACES.named(name)
    trace = h(v["init_update_rsp"])
    card = Scp03Card(
        keys_of(v),
        kdd=bytes(10),
        sequence_counter=7,
        aid=ISD_R_AID,
        rng=ScriptedRandom([trace[13:21]]),
        pseudo_random_challenge=False,
    )
    response = card.initialize_update(CommandAPDU.from_bytes(h(v["init_update_cmd"])))
    # Table 5-1: i = 60 (random challenge); Table 7-3: no sequence counter, 29 bytes.
    assert response.data == trace[:12] + b"\x60" + trace[13:29]
    assert card.sequence_counter == 7
    response, session = card.external_authenticate(CommandAPDU.from_bytes(h(v["ext_auth_cmd"])))
    assert response.sw == SW.OK
    assert session is not None


def test_pseudo_random_challenge_depends_on_aid() -> None:
    # 6.2.2.1: the context is sequence counter || AID; the trace's card is an eUICC whose
    # SecureChannel invoker is the ISD-R, so the GP ISD AID does not reproduce its challenge.
    v = TRACES.named("AES128_11")
    card = Scp03Card(
        keys_of(v),
        kdd=bytes(10),
        sequence_counter=1,
        aid=h("A000000151000000"),
        rng=ScriptedRandom([]),
    )
    response = card.initialize_update(CommandAPDU.from_bytes(h(v["init_update_cmd"])))
    assert response.data[13:21] != h(v["init_update_rsp"])[13:21]
    assert response.data[-3:] == b"\x00\x00\x02"


# -- host side behaviour -----------------------------------------------------------------------


def _host_flow(v: dict[str, Any], response: bytes, level: SecurityLevel | None = None) -> None:
    init_update = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    level = SecurityLevel(h(v["ext_auth_cmd"])[2]) if level is None else level
    flow = open_scp03(keys_of(v), security_level=level, rng=ScriptedRandom([init_update.data]))
    run_flow(flow, ScriptedCard(response, b"\x90\x00"))


def test_host_rejects_wrong_card_cryptogram() -> None:
    v = TRACES.named("AES128_11")
    data = bytearray(h(v["init_update_rsp"]))
    data[28] ^= 0x01
    with pytest.raises(AuthenticationError) as info:
        _host_flow(v, bytes(data) + b"\x90\x00")
    assert info.value.step == "scp03.card_cryptogram"


def test_host_rejects_wrong_keys() -> None:
    v = TRACES.named("AES128_11")
    init_update = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    wrong = StaticKeys(bytes(16), bytes(16), bytes(16))
    flow = open_scp03(wrong, security_level=FULL, rng=ScriptedRandom([init_update.data]))
    with pytest.raises(AuthenticationError):
        run_flow(flow, ScriptedCard(h(v["init_update_rsp"]) + b"\x90\x00"))


@pytest.mark.parametrize(
    ("responses", "sw", "step"),
    [
        ((b"\x6a\x88",), 0x6A88, "scp03.initialize_update"),
        ((None, b"\x63\x00"), 0x6300, "scp03.external_authenticate"),
    ],
)
def test_host_raises_on_error_status(
    responses: tuple[bytes | None, ...], sw: int, step: str
) -> None:
    v = TRACES.named("AES128_11")
    script = [r if r is not None else h(v["init_update_rsp"]) + b"\x90\x00" for r in responses]
    init_update = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    level = SecurityLevel(0x11)
    flow = open_scp03(keys_of(v), security_level=level, rng=ScriptedRandom([init_update.data]))
    with pytest.raises(StatusWordError) as info:
        run_flow(flow, ScriptedCard(*script))
    assert info.value.sw == sw
    assert info.value.step == step


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        (lambda d: d[:11] + b"\x02" + d[12:], ProtocolError),  # SCP02 announced
        (lambda d: d[:12] + b"\x71" + d[13:], ProtocolError),  # S16 mode
        (lambda d: d[:12] + b"\x10" + d[13:], ProtocolError),  # no R-MAC support
        (lambda d: d[:-1], EncodingError),  # truncated sequence counter
        (lambda d: d[:12], EncodingError),  # no key information
    ],
)
def test_host_rejects_malformed_initialize_update(
    patch: Callable[[bytes], bytes], error: type[Exception]
) -> None:
    v = TRACES.named("AES128_11")
    with pytest.raises(error):
        _host_flow(v, patch(h(v["init_update_rsp"])) + b"\x90\x00")


def test_host_rejects_other_key_version() -> None:
    v = TRACES.named("AES128_11")
    init_update = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    flow = open_scp03(
        keys_of(v), security_level=FULL, rng=ScriptedRandom([init_update.data]), kvn=0x31
    )
    assert next(flow).p1 == 0x31
    with pytest.raises(ProtocolError):
        flow.send(ResponseAPDU(h(v["init_update_rsp"]), SW.OK))


@pytest.mark.parametrize("level", [0x02, 0x10, 0x12, 0x21, 0x31, 0x23, 0x04])
def test_host_refuses_levels_outside_table_7_6(level: int) -> None:
    with pytest.raises(ValueError, match="Table 7-6"):
        keys = StaticKeys(bytes(16), bytes(16), bytes(16))
        next(open_scp03(keys, security_level=SecurityLevel(level), rng=bytes))


def test_host_asks_card_keys_by_kdd() -> None:
    v = TRACES.named("AES256_11")
    seen: list[bytes] = []

    def lookup(kdd: bytes) -> StaticKeys:
        seen.append(kdd)
        return keys_of(v)

    init_update = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    rng = ScriptedRandom([init_update.data])
    flow = open_scp03(lookup, security_level=SecurityLevel(0x11), rng=rng)
    transport = ScriptedCard(h(v["init_update_rsp"]) + b"\x90\x00", b"\x90\x00")
    run_flow(flow, transport)
    assert seen == [bytes(10)]
    assert transport.sent[1] == h(v["ext_auth_cmd"])


def test_host_r_mac_failure_kills_session() -> None:
    v = TRACES.named("AES128_11")
    session, _ = host_from_trace(v)
    session.wrap_command(CommandAPDU.from_bytes(h(SRC["get_eid_cmd_plain"])))
    forged = bytearray(h(v["get_eid_rsp"]))
    forged[0] ^= 0x80
    with pytest.raises(SecureMessagingError):
        session.unwrap_response(ResponseAPDU(bytes(forged), SW.OK))
    assert session.dead
    with pytest.raises(SecureMessagingError):
        session.wrap_command(CommandAPDU(0x80, 0xCA, 0x00, 0x66, ne=256))
    with pytest.raises(SecureMessagingError):
        session.unwrap_response(ResponseAPDU(h(v["get_eid_rsp"]), SW.OK))


def test_host_needs_r_mac_on_success() -> None:
    session, _ = host_from_trace(TRACES.named("AES128_11"))
    session.wrap_command(CommandAPDU.from_bytes(h(SRC["get_eid_cmd_plain"])))
    with pytest.raises(SecureMessagingError):
        session.unwrap_response(ResponseAPDU(b"\x01\x02", SW.OK))
    assert session.dead


def test_host_passes_error_status_without_r_mac() -> None:
    # 6.2.5: error status words carry no R-MAC.
    session, _ = host_from_trace(TRACES.named("AES128_11"))
    session.wrap_command(CommandAPDU.from_bytes(h(SRC["get_eid_cmd_plain"])))
    assert session.unwrap_response(ResponseAPDU.status(0x6A82)) == ResponseAPDU.status(0x6A82)
    assert not session.dead


# -- card side behaviour -----------------------------------------------------------------------


def test_card_initialize_update_errors() -> None:
    v = TRACES.named("AES128_11")
    card = card_from_trace(v)
    good = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    assert card.initialize_update(CommandAPDU(0x80, 0x50, 0x31, 0x00, good.data, 256)).sw == 0x6A88
    assert card.initialize_update(CommandAPDU(0x80, 0x50, 0x30, 0x01, good.data, 256)).sw == 0x6A86
    assert card.initialize_update(CommandAPDU(0x80, 0x50, 0x30, 0x00, bytes(16), 256)).sw == 0x6700
    assert card.sequence_counter == sequence_of(v) - 1
    # KVN 00 selects the first available key set (7.1.1.3).
    response = card.initialize_update(CommandAPDU(0x80, 0x50, 0x00, 0x00, good.data, 256))
    assert response.data == h(v["init_update_rsp"])


def test_card_counts_initialize_updates() -> None:
    v = TRACES.named("AES128_11")
    card = card_from_trace(v)
    command = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    challenges = set()
    for n in range(1, 4):
        response = card.initialize_update(command)
        assert card.sequence_counter == sequence_of(v) - 1 + n
        assert response.data[-3:] == card.sequence_counter.to_bytes(3, "big")
        challenges.add(response.data[13:21])
    assert len(challenges) == 3


def test_card_sequence_counter_exhausted() -> None:
    v = TRACES.named("AES128_11")
    card = Scp03Card(keys_of(v), kdd=bytes(10), sequence_counter=0xFFFFFF, aid=ISD_R_AID, rng=bytes)
    command = CommandAPDU.from_bytes(h(v["init_update_cmd"]))
    assert card.initialize_update(command).sw == SW.CONDITIONS_NOT_SATISFIED
    assert card.sequence_counter == 0xFFFFFF


def test_card_external_authenticate_needs_initialize_update() -> None:
    v = TRACES.named("AES128_11")
    card = card_from_trace(v)
    response, session = card.external_authenticate(CommandAPDU.from_bytes(h(v["ext_auth_cmd"])))
    assert (response.sw, session) == (SW.CONDITIONS_NOT_SATISFIED, None)


@pytest.mark.parametrize("index", [5, 12, 13, 20])
def test_card_refuses_forged_external_authenticate(index: int) -> None:
    v = TRACES.named("AES128_11")
    card = card_from_trace(v)
    card.initialize_update(CommandAPDU.from_bytes(h(v["init_update_cmd"])))
    forged = bytearray(h(v["ext_auth_cmd"]))
    forged[index] ^= 0x01  # 5..12 host cryptogram, 13..20 C-MAC
    response, session = card.external_authenticate(CommandAPDU.from_bytes(bytes(forged)))
    assert (response.sw, session) == (SW.VERIFICATION_FAILED, None)
    # 5.2: a failed step restarts initiation; the genuine command no longer opens a session.
    response, session = card.external_authenticate(CommandAPDU.from_bytes(h(v["ext_auth_cmd"])))
    assert (response.sw, session) == (SW.CONDITIONS_NOT_SATISFIED, None)


@pytest.mark.parametrize(("p1", "p2", "sw"), [(0x02, 0x00, 0x6A86), (0x11, 0x01, 0x6A86)])
def test_card_external_authenticate_p1_p2(p1: int, p2: int, sw: int) -> None:
    v = TRACES.named("AES128_11")
    card = card_from_trace(v)
    card.initialize_update(CommandAPDU.from_bytes(h(v["init_update_cmd"])))
    data = h(v["ext_auth_cmd"])[5:]
    response, session = card.external_authenticate(CommandAPDU(0x84, 0x82, p1, p2, data))
    assert (response.sw, session) == (sw, None)


def test_card_external_authenticate_wrong_length() -> None:
    v = TRACES.named("AES128_11")
    card = card_from_trace(v)
    card.initialize_update(CommandAPDU.from_bytes(h(v["init_update_cmd"])))
    data = h(v["ext_auth_cmd"])[5:13]
    response, session = card.external_authenticate(CommandAPDU(0x84, 0x82, 0x11, 0x00, data))
    assert (response.sw, session) == (SW.WRONG_LENGTH, None)


def test_new_initialize_update_ends_session() -> None:
    host, card_session, card = pair(FULL)
    card.initialize_update(CommandAPDU(0x80, 0x50, 0x00, 0x00, bytes(8), 256))
    assert card_session.dead
    with pytest.raises(CardSecureMessagingError):
        card_session.unwrap_command(host.wrap_command(CommandAPDU(0x80, 0xCA, 0, 0x66, ne=256)))


def test_card_strips_error_responses() -> None:
    _, card_session, _ = pair(EVERYTHING)
    assert card_session.wrap_response(ResponseAPDU(b"junk", 0x6A82)) == ResponseAPDU.status(0x6A82)


def test_keys_stay_out_of_reprs() -> None:
    v = TRACES.named("AES128_11")
    keys = keys_of(v)
    host, card_session, card = pair(EVERYTHING, keys)
    for text in (repr(keys), repr(host), repr(card_session), repr(card)):
        for secret in (keys.enc, keys.mac, keys.dek):
            assert secret.hex() not in text.lower()
            assert secret.hex()[:8] not in text.lower()
    assert repr(keys) == "StaticKeys(kvn=30, aes=128)"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"enc": bytes(15), "mac": bytes(15), "dek": bytes(15)},
        {"enc": bytes(16), "mac": bytes(32), "dek": bytes(16)},
        {"enc": bytes(16), "mac": bytes(16), "dek": bytes(16), "kvn": 0},
    ],
)
def test_static_keys_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StaticKeys(**kwargs)


# -- host <-> card ------------------------------------------------------------------------------

# CLA bytes a caller hands in: first interindustry (channels 0-3, with/without chaining) and
# further interindustry (channels 4-19), GP proprietary or not, without SM indication.
PLAIN_CLAS = [c | b for c in (0x00, 0x10, 0x80, 0x90) for b in range(4)] + [
    c | b for c in (0x40, 0x50, 0xC0, 0xD0) for b in range(16)
]

commands = st.builds(
    CommandAPDU,
    cla=st.sampled_from(PLAIN_CLAS),
    ins=st.integers(0, 255),
    p1=st.integers(0, 255),
    p2=st.integers(0, 255),
    data=st.one_of(st.binary(max_size=40), st.binary(min_size=230, max_size=300)),
    ne=st.one_of(st.none(), st.integers(1, 256), st.integers(257, 65536)),
)
responses = st.builds(
    ResponseAPDU,
    data=st.binary(max_size=300),
    sw=st.sampled_from([0x9000, 0x6282, 0x6310]),
)
levels = st.sampled_from([SecurityLevel(x) for x in (0x01, 0x03, 0x11, 0x13, 0x33)])


@given(level=levels, exchanges=st.lists(st.tuples(commands, responses), min_size=1, max_size=4))
def test_round_trip(
    level: SecurityLevel, exchanges: list[tuple[CommandAPDU, ResponseAPDU]]
) -> None:
    host, card, _ = pair(level)
    for command, response in exchanges:
        wrapped = host.wrap_command(command)
        # The wrapped command survives its own encoding (extended length where needed).
        wrapped = CommandAPDU.from_bytes(wrapped.to_bytes())
        assert wrapped.cla & 0x04 or wrapped.cla & 0x20
        if level & SecurityLevel.C_DECRYPTION and len(command.data) >= 16:
            assert command.data[:16] not in wrapped.data
        assert card.unwrap_command(wrapped) == command
        back = ResponseAPDU.from_bytes(card.wrap_response(response).to_bytes())
        if level & SecurityLevel.R_ENCRYPTION and len(response.data) >= 16:
            assert response.data[:16] not in back.data
        assert host.unwrap_response(back) == response


def _flip(cmd: CommandAPDU, where: str, bit: int) -> CommandAPDU:
    if where == "data":
        data = bytearray(cmd.data)
        data[bit // 8 % len(data)] ^= 1 << (bit % 8)
        return CommandAPDU(cmd.cla, cmd.ins, cmd.p1, cmd.p2, bytes(data), cmd.ne)
    if where == "cla":
        # b8 (proprietary class) and b5 (chaining) are inside the MAC; channel bits are not.
        cla = cmd.cla ^ (0x80, 0x10)[bit % 2]
        return CommandAPDU(cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.ne)
    fields = {"ins": cmd.ins, "p1": cmd.p1, "p2": cmd.p2}
    fields[where] ^= 1 << (bit % 8)
    return CommandAPDU(cmd.cla, data=cmd.data, ne=cmd.ne, **fields)


@given(
    level=levels,
    command=commands,
    where=st.sampled_from(["cla", "ins", "p1", "p2", "data"]),
    bit=st.integers(0, 10_000),
)
def test_flipped_bit_is_refused_and_kills_session(
    level: SecurityLevel, command: CommandAPDU, where: str, bit: int
) -> None:
    host, card, _ = pair(level)
    wrapped = host.wrap_command(command)
    with pytest.raises(CardSecureMessagingError) as info:
        card.unwrap_command(_flip(wrapped, where, bit))
    assert info.value.sw == 0x6982
    assert isinstance(info.value, SecureMessagingError)
    assert card.dead
    # Dead means dead: the next genuine command is refused too.
    with pytest.raises(CardSecureMessagingError):
        card.unwrap_command(host.wrap_command(command))
    with pytest.raises(CardSecureMessagingError):
        card.wrap_response(ResponseAPDU.status(SW.OK))


@given(level=levels, command=commands)
def test_replayed_command_is_refused(level: SecurityLevel, command: CommandAPDU) -> None:
    host, card, _ = pair(level)
    wrapped = host.wrap_command(command)
    assert card.unwrap_command(wrapped) == command
    with pytest.raises(CardSecureMessagingError):
        card.unwrap_command(wrapped)
    assert card.dead


@given(first=commands, second=commands)
def test_reordered_commands_are_refused(first: CommandAPDU, second: CommandAPDU) -> None:
    host, card, _ = pair(FULL)
    host.wrap_command(first)
    with pytest.raises(CardSecureMessagingError):
        card.unwrap_command(host.wrap_command(second))


def test_stripped_mac_is_refused() -> None:
    _, card, _ = pair(FULL)
    with pytest.raises(CardSecureMessagingError):
        card.unwrap_command(CommandAPDU(0x84, 0xCA, 0x00, 0x66, b"\x01\x02", 256))
    assert card.dead


def test_no_secure_messaging_level_passes_through() -> None:
    host, card, _ = pair(SecurityLevel.NONE)
    command = CommandAPDU(0x80, 0xE2, 0x91, 0x00, b"\xbf\x3e\x03\x5c\x01\x5a", 256)
    assert host.wrap_command(command) is command
    assert card.unwrap_command(command) is command
    response = ResponseAPDU(b"\x01", SW.OK)
    assert card.wrap_response(response) is response
    assert host.unwrap_response(response) is response


def test_c_mac_only_leaves_data_readable() -> None:
    host, card, _ = pair(SecurityLevel.C_MAC)
    command = CommandAPDU(0x80, 0xE2, 0x91, 0x00, b"\xbf\x3e\x03\x5c\x01\x5a", 256)
    wrapped = host.wrap_command(command)
    assert wrapped.cla == 0x84
    assert wrapped.data[:-8] == command.data
    assert card.unwrap_command(wrapped) == command
