"""ecabinet.messages: round trips, the sealed wire form byte for byte, and what open_message refuses."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ecabinet.errors import BadMacError, MalformedMessageError
from ecabinet.messages import (
    MAX_PAYLOAD_BYTES,
    Ack,
    AckStatus,
    CardInserted,
    CardRemoved,
    DepositCommand,
    DoorClosed,
    FaultCode,
    FaultEvent,
    Heartbeat,
    InventoryScanCommand,
    InventorySnapshot,
    LightCommand,
    Message,
    OpenForRetrievalCommand,
    RejectReason,
    ReturnUncollectedCommand,
    SecurityEvent,
    SecurityEventKind,
    SlotOpened,
    SlotReport,
    Status,
    open_message,
    seal,
)
from ecabinet.security import MAX_COUNTER, canonical_json, derive_cabinet_keys
from ecabinet.slots import SlotState
from ecabinet.topics import Channel

KEYS = derive_cabinet_keys(bytes(range(32)), "S1", "C1")
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
ACK_TOPIC = "perso/v1/S1/C1/ack"


def _deposit(**changes: Any) -> DepositCommand:
    fields: dict[str, Any] = {
        "counter": 42,
        "issued_at": T0,
        "command_id": UUID("00000000-0000-4000-8000-000000000001"),
        "correlation_id": UUID("00000000-0000-4000-8000-000000000002"),
        "response_topic": ACK_TOPIC,
        "drawer": 3,
        "index": 17,
        "card_serial": "04A1B2C3D4E5F6",
    }
    fields.update(changes)
    return DepositCommand(**fields)


# -- the wire form, byte for byte ---------------------------------------------------------------

DEPOSIT_BODY = (
    b'{"card_serial":"04A1B2C3D4E5F6","command_id":"00000000-0000-4000-8000-000000000001",'
    b'"correlation_id":"00000000-0000-4000-8000-000000000002","counter":42,"drawer":3,'
    b'"index":17,"issued_at":"2025-03-01T09:30:00Z","response_topic":"perso/v1/S1/C1/ack",'
    b'"type":"deposit"}'
)


def test_sealed_deposit_is_the_canonical_json_with_a_hand_computed_mac() -> None:
    sealed, payload = seal(_deposit(), KEYS.command)
    mac = hmac.new(KEYS.command, DEPOSIT_BODY, hashlib.sha256).hexdigest()
    assert sealed.mac == mac
    # "mac" sorts between "issued_at" and "response_topic": rebuild the expected bytes by hand.
    expected = DEPOSIT_BODY.replace(
        b',"response_topic"', f',"mac":"{mac}","response_topic"'.encode()
    )
    assert payload == expected
    assert open_message(Channel.CMD, payload, KEYS.command) == sealed


def test_sealing_is_stable() -> None:
    assert seal(_deposit(), KEYS.command)[1] == seal(_deposit(), KEYS.command)[1]


def test_mac_covers_the_object_as_received_not_a_reserialisation() -> None:
    # Another implementation may write an offset and spaces; the MAC is over the canonical form
    # of what it sent, and the parsed time is normalised to UTC.
    obj = json.loads(DEPOSIT_BODY)
    obj["issued_at"] = "2025-03-01T17:30:00+08:00"
    mac = hmac.new(KEYS.command, canonical_json(obj), hashlib.sha256).hexdigest()
    payload = json.dumps({**obj, "mac": mac}, indent=2).encode()
    message = open_message(Channel.CMD, payload, KEYS.command)
    assert isinstance(message, DepositCommand)
    assert message.issued_at == T0 and message.issued_at.tzinfo is UTC


# -- round trips -------------------------------------------------------------------------------

uuids = st.uuids(version=4)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
counters = st.integers(1, MAX_COUNTER)
drawers = st.integers(1, 99)
indexes = st.integers(1, 999)
serials = st.from_regex(r"[0-9A-Za-z-]{1,40}", fullmatch=True)


def _command(cls: type[Message], **extra: Any) -> st.SearchStrategy[Message]:
    return st.builds(
        cls,
        counter=counters,
        issued_at=times,
        command_id=uuids,
        correlation_id=uuids,
        response_topic=st.just(ACK_TOPIC),
        **extra,
    )


def _event(cls: type[Message], **extra: Any) -> st.SearchStrategy[Message]:
    return st.builds(cls, counter=counters, issued_at=times, event_id=uuids, **extra)


slot = {"drawer": drawers, "index": indexes}
messages = {
    Channel.CMD: st.one_of(
        _command(DepositCommand, card_serial=serials, **slot),
        _command(OpenForRetrievalCommand, card_serial=serials, **slot),
        _command(ReturnUncollectedCommand, card_serial=serials, **slot),
        _command(LightCommand, duration_ms=st.integers(1, 600_000), **slot),
        _command(InventoryScanCommand),
    ),
    Channel.ACK: st.one_of(
        st.builds(
            Ack, counter=counters, issued_at=times, command_id=uuids, correlation_id=uuids,
            status=st.just(AckStatus.ACCEPTED),
        ),
        st.builds(
            Ack, counter=counters, issued_at=times, command_id=uuids, correlation_id=uuids,
            status=st.just(AckStatus.REJECTED),
            reason=st.sampled_from([r for r in RejectReason if r is not RejectReason.STALE_COUNTER]),
        ),
        st.builds(
            Ack, counter=counters, issued_at=times, command_id=uuids, correlation_id=uuids,
            status=st.just(AckStatus.REJECTED), reason=st.just(RejectReason.STALE_COUNTER),
            last_counter=st.integers(0, MAX_COUNTER),
        ),
    ),
    Channel.EVT: st.one_of(
        _event(SlotOpened, command_id=st.none() | uuids, **slot),
        _event(CardInserted, card_serial=serials, expected_serial=st.none() | serials, **slot),
        _event(CardRemoved, card_serial=st.none() | serials, **slot),
        _event(DoorClosed, card_present=st.booleans(), **slot),
        _event(FaultEvent, code=st.sampled_from(FaultCode), **slot),
        _event(FaultEvent, code=st.sampled_from(FaultCode)),
        _event(SecurityEvent, kind=st.sampled_from(SecurityEventKind), channel=st.none() | st.sampled_from(Channel)),
    ),
    Channel.HEARTBEAT: st.builds(
        Heartbeat, counter=counters, issued_at=times, boot_id=uuids,
        inventory_sequence=st.integers(0, MAX_COUNTER),
    ),
    Channel.STATUS: st.one_of(
        st.builds(Status, counter=counters, issued_at=times, boot_id=uuids, state=st.just("online"), cause=st.just("connect")),
        st.builds(Status, counter=counters, issued_at=times, boot_id=uuids, state=st.just("offline"), cause=st.sampled_from(["shutdown", "lost"])),
    ),
}  # fmt: skip


@pytest.mark.parametrize("channel", list(messages), ids=str)
@given(data=st.data())
def test_seal_open_round_trip(channel: Channel, data: st.DataObject) -> None:
    message = data.draw(messages[channel])
    sealed, payload = seal(message, KEYS.report)
    opened = open_message(channel, payload, KEYS.report)
    assert opened == sealed
    assert opened.model_copy(update={"mac": None}) == message
    # The JSON round trip through pydantic alone, too.
    assert type(message).model_validate_json(message.model_dump_json()) == message
    # And the payload is the canonical encoding of itself.
    assert canonical_json(json.loads(payload)) == payload


@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.lists(st.sampled_from(list(SlotState)), min_size=20, max_size=20),
)
def test_inventory_round_trip(drawers: int, per: int, states: list[SlotState]) -> None:
    reports = tuple(
        SlotReport(
            drawer=d,
            index=i,
            state=states[(d * per + i) % 20],
            card_serial=None if states[(d * per + i) % 20] is SlotState.EMPTY else f"S{d}-{i}",
        )
        for d in range(1, drawers + 1)
        for i in range(1, per + 1)
    )
    snapshot = InventorySnapshot(
        counter=5, issued_at=T0, sequence=9, drawers=drawers, slots_per_drawer=per, slots=reports
    )
    sealed, payload = seal(snapshot, KEYS.report)
    assert open_message(Channel.INVENTORY, payload, KEYS.report) == sealed


# -- what open_message refuses -----------------------------------------------------------------


def _sealed_payload(obj: dict[str, Any], key: bytes = KEYS.command) -> bytes:
    body = {k: v for k, v in obj.items() if k != "mac"}
    return canonical_json(
        {**body, "mac": hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()}
    )


def test_any_changed_field_breaks_the_mac() -> None:
    _, payload = seal(_deposit(), KEYS.command)
    obj = json.loads(payload)
    for field, value in [
        ("drawer", 4),
        ("index", 18),
        ("card_serial", "04A1B2C3D4E5F7"),
        ("counter", 43),
    ]:
        forged = canonical_json({**obj, field: value})
        with pytest.raises(BadMacError):
            open_message(Channel.CMD, forged, KEYS.command)


def test_wrong_key_or_direction_or_missing_mac_is_bad_mac() -> None:
    _, payload = seal(_deposit(), KEYS.command)
    other = derive_cabinet_keys(bytes(range(32)), "S1", "C2")
    for key in (KEYS.report, other.command):
        with pytest.raises(BadMacError):
            open_message(Channel.CMD, payload, key)
    obj = json.loads(payload)
    del obj["mac"]
    with pytest.raises(BadMacError):
        open_message(Channel.CMD, canonical_json(obj), KEYS.command)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe{}",
        '{"a": 1}'.encode("utf-16"),
        b'{"counter": 1, "counter": 2}',
        b'{"counter": 1.5}',
        b'{"counter": NaN}',
        b"[" * 100_000,
    ],
)
def test_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        open_message(Channel.CMD, payload, KEYS.command)


def test_too_large_is_refused_before_parsing() -> None:
    with pytest.raises(MalformedMessageError, match="too large"):
        open_message(Channel.CMD, b" " * (MAX_PAYLOAD_BYTES + 1), KEYS.command)


def test_authentic_but_off_schema_is_malformed_and_quotes_nothing() -> None:
    obj = json.loads(DEPOSIT_BODY)
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"card_serial": "SECRET NAME"}, "card_serial"),
        ({"drawer": 0}, "drawer"),
        ({"counter": "42"}, "counter"),  # strict: a string is not a counter
        ({"counter": MAX_COUNTER + 1}, "counter"),
        ({"extra": 1}, "extra"),
        ({"type": "self_destruct"}, None),
        ({"issued_at": "2025-03-01T09:30:00"}, "issued_at"),  # no offset: refused
    ]
    for change, field in cases:
        payload = _sealed_payload({**obj, **change})
        with pytest.raises(MalformedMessageError) as info:
            open_message(Channel.CMD, payload, KEYS.command)
        assert "SECRET" not in str(info.value)
        if field is not None:
            assert info.value.field is not None and field in info.value.field


def test_a_message_on_the_wrong_channel_does_not_parse() -> None:
    _, payload = seal(_deposit(), KEYS.report)
    with pytest.raises(MalformedMessageError):
        open_message(Channel.ACK, payload, KEYS.report)


# -- model invariants --------------------------------------------------------------------------


def test_ack_consistency() -> None:
    base: dict[str, Any] = {
        "counter": 1, "issued_at": T0, "command_id": UUID(int=1), "correlation_id": UUID(int=2),
    }  # fmt: skip
    with pytest.raises(ValidationError):
        Ack(**base, status=AckStatus.REJECTED)
    with pytest.raises(ValidationError):
        Ack(**base, status=AckStatus.ACCEPTED, reason=RejectReason.SLOT_STATE)
    with pytest.raises(ValidationError):
        Ack(**base, status=AckStatus.REJECTED, reason=RejectReason.STALE_COUNTER)
    with pytest.raises(ValidationError):
        Ack(**base, status=AckStatus.REJECTED, reason=RejectReason.SLOT_STATE, last_counter=3)


def test_fault_names_both_or_neither_and_status_cause_fits() -> None:
    with pytest.raises(ValidationError):
        FaultEvent(counter=1, issued_at=T0, event_id=UUID(int=1), code=FaultCode.JAM, drawer=1)
    with pytest.raises(ValidationError):
        Status(counter=1, issued_at=T0, boot_id=UUID(int=1), state="online", cause="lost")
    with pytest.raises(ValidationError):
        Status(counter=1, issued_at=T0, boot_id=UUID(int=1), state="offline", cause="connect")


def test_inventory_must_list_every_slot_in_order() -> None:
    one = SlotReport(drawer=1, index=1, state=SlotState.EMPTY)
    two = SlotReport(drawer=1, index=2, state=SlotState.EMPTY)
    for slots in [(one,), (two, one), (one, one), (one, two, two)]:
        with pytest.raises(ValidationError):
            InventorySnapshot(
                counter=1, issued_at=T0, sequence=1, drawers=1, slots_per_drawer=2, slots=slots
            )


def test_issued_at_is_normalised_to_utc() -> None:
    hong_kong = timezone(timedelta(hours=8))
    message = _deposit(issued_at=datetime(2025, 3, 1, 17, 30, tzinfo=hong_kong))
    assert message.issued_at == T0 and message.issued_at.tzinfo is UTC
    with pytest.raises(ValidationError):
        _deposit(issued_at=datetime(2025, 3, 1, 9, 30))
