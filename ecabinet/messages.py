"""The cabinet protocol's messages (pydantic v2) and their sealed wire form.

Every message is one JSON object with a ``type``, the sender's ``counter``, an ``issued_at`` time
(RFC 3339, UTC) and a ``mac`` (:mod:`ecabinet.security`).  Commands add a ``command_id`` (the
idempotency key: a cabinet performs a command id once), a ``correlation_id`` (the controller's
request: it survives a re-issue under a new command id) and a ``response_topic``.  MQTT 5 carries
the last two as the Response Topic and Correlation Data properties (MQTT 5.0 3.3.2.3.5-6); the
payload carries them as well because MQTT 3.1.1 has no properties and because the properties are
not covered by the MAC: a cabinet trusts the payload's copy only.

No message carries personal data: slots, card (chip) serials, ids and codes.  No floats: the
canonical encoding then needs no number formatting rules.

Receiving (:func:`open_message`): size cap, strict UTF-8 JSON without duplicate keys, floats or
NaN, then the MAC over the canonical encoding of the object *as received* minus ``mac``, and only
then the schema.  Checking the MAC on the received object rather than on a re-serialised model
means a sender's formatting choices (a ``+08:00`` offset, a trailing zero) never break it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ecabinet.errors import MalformedMessageError
from ecabinet.security import MAX_COUNTER, canonical_json, compute_mac, verify_mac
from ecabinet.slots import MAX_DRAWERS, MAX_SLOTS_PER_DRAWER, SlotState
from ecabinet.topics import Channel

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Ack",
    "AckStatus",
    "AnyMessage",
    "CardInserted",
    "CardRemoved",
    "Command",
    "DepositCommand",
    "DoorClosed",
    "Event",
    "FaultCode",
    "FaultEvent",
    "Heartbeat",
    "InventoryScanCommand",
    "InventorySnapshot",
    "LightCommand",
    "Message",
    "OpenForRetrievalCommand",
    "RejectReason",
    "ReturnUncollectedCommand",
    "SecurityEvent",
    "SecurityEventKind",
    "SlotOpened",
    "SlotReport",
    "Status",
    "adapter_for",
    "open_message",
    "seal",
]

#: Far above a 999 x 99-slot inventory's size, far below what a broker would let through.
MAX_PAYLOAD_BYTES: Final = 256 * 1024

Counter = Annotated[int, Field(ge=1, le=MAX_COUNTER)]
Drawer = Annotated[int, Field(ge=1, le=MAX_DRAWERS)]
Index = Annotated[int, Field(ge=1, le=MAX_SLOTS_PER_DRAWER)]
#: A chip serial as sensed by a slot's reader: short, printable, no personal data.
Serial = Annotated[str, Field(pattern=r"^[0-9A-Za-z-]{1,40}$")]
Mac = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class AckStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class RejectReason(StrEnum):
    """Why a cabinet refused an authentic command.

    The first three are refusals *before* the command: the counter is not taken and the command id
    is not recorded, so a re-issue under a fresh counter can succeed.  The others are the
    command's recorded answer: a duplicate gets the same rejection again.
    """

    STALE_COUNTER = "stale_counter"
    EXPIRED = "expired"
    COMMAND_ID_CONFLICT = "command_id_conflict"
    RESPONSE_TOPIC = "response_topic"
    UNKNOWN_SLOT = "unknown_slot"
    SLOT_STATE = "slot_state"
    SERIAL_MISMATCH = "serial_mismatch"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE: Final = frozenset(
    {RejectReason.STALE_COUNTER, RejectReason.EXPIRED, RejectReason.COMMAND_ID_CONFLICT}
)


class FaultCode(StrEnum):
    DOOR_LEFT_OPEN = "door_left_open"
    JAM = "jam"
    SENSOR_MISMATCH = "sensor_mismatch"
    POWER_LOSS = "power_loss"
    OTHER = "other"


class SecurityEventKind(StrEnum):
    """What a receiver refused and reported.  Each is an alarm for the audit log."""

    BAD_MAC = "bad_mac"
    MALFORMED = "malformed"
    WRONG_TOPIC = "wrong_topic"
    REPLAY = "replay"
    EXPIRED = "expired"
    COMMAND_ID_CONFLICT = "command_id_conflict"


class Message(BaseModel):
    """Fields every message has.  ``mac`` is None only on a message not yet sealed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    counter: Counter
    issued_at: AwareDatetime
    mac: Mac | None = None

    @field_validator("issued_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


# -- commands (controller -> cabinet, channel cmd) ------------------------------------------------


class _Command(Message):
    command_id: UUID
    correlation_id: UUID
    response_topic: Annotated[str, Field(min_length=1, max_length=256)]


class DepositCommand(_Command):
    """Open ``drawer``/``index`` for a deposit of the card with chip serial ``card_serial``."""

    type: Literal["deposit"] = "deposit"
    drawer: Drawer
    index: Index
    card_serial: Serial


class OpenForRetrievalCommand(_Command):
    """Light and open the slot, if it holds ``card_serial``, for an officer to take the card."""

    type: Literal["open_for_retrieval"] = "open_for_retrieval"
    drawer: Drawer
    index: Index
    card_serial: Serial


class LightCommand(_Command):
    type: Literal["light"] = "light"
    drawer: Drawer
    index: Index
    duration_ms: Annotated[int, Field(ge=1, le=600_000)]


class InventoryScanCommand(_Command):
    """Read every slot's card sensor and publish a fresh inventory snapshot."""

    type: Literal["inventory_scan"] = "inventory_scan"


class ReturnUncollectedCommand(_Command):
    """Open the slot for an uncollected card past retention to be taken back (DESIGN §3 RETURNED)."""

    type: Literal["return_uncollected"] = "return_uncollected"
    drawer: Drawer
    index: Index
    card_serial: Serial


Command = Annotated[
    DepositCommand
    | OpenForRetrievalCommand
    | LightCommand
    | InventoryScanCommand
    | ReturnUncollectedCommand,
    Field(discriminator="type"),
]

# -- cabinet -> controller --------------------------------------------------------------------


class Ack(Message):
    """A cabinet's answer to one command (channel ack).  Physical progress follows as events."""

    type: Literal["ack"] = "ack"
    command_id: UUID
    correlation_id: UUID
    status: AckStatus
    reason: RejectReason | None = None
    #: With ``stale_counter`` only: the cabinet's last accepted command counter, so a controller
    #: that lost its own counter can resynchronise from an authenticated answer.
    last_counter: Annotated[int, Field(ge=0, le=MAX_COUNTER)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Ack:
        if (self.status is AckStatus.REJECTED) != (self.reason is not None):
            raise ValueError("a rejected ack has a reason and an accepted one has none")
        if (self.reason is RejectReason.STALE_COUNTER) != (self.last_counter is not None):
            raise ValueError("last_counter comes with stale_counter and only with it")
        return self


class _Event(Message):
    event_id: UUID


class SlotOpened(_Event):
    type: Literal["slot_opened"] = "slot_opened"
    drawer: Drawer
    index: Index
    command_id: UUID | None = None


class CardInserted(_Event):
    """The slot's sensor read ``card_serial``; ``expected_serial`` is what the deposit named."""

    type: Literal["card_inserted"] = "card_inserted"
    drawer: Drawer
    index: Index
    card_serial: Serial
    expected_serial: Serial | None = None


class CardRemoved(_Event):
    type: Literal["card_removed"] = "card_removed"
    drawer: Drawer
    index: Index
    card_serial: Serial | None = None


class DoorClosed(_Event):
    type: Literal["door_closed"] = "door_closed"
    drawer: Drawer
    index: Index
    card_present: bool


class FaultEvent(_Event):
    """A fault; without a slot it is the cabinet's (power loss, a drawer's motor)."""

    type: Literal["fault"] = "fault"
    code: FaultCode
    drawer: Drawer | None = None
    index: Index | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> FaultEvent:
        if (self.drawer is None) != (self.index is None):
            raise ValueError("a fault names both drawer and index, or neither")
        return self


class SecurityEvent(_Event):
    """The cabinet refused a message it could not trust.  Nothing of the message is echoed."""

    type: Literal["security"] = "security"
    kind: SecurityEventKind
    channel: Channel | None = None


Event = Annotated[
    SlotOpened | CardInserted | CardRemoved | DoorClosed | FaultEvent | SecurityEvent,
    Field(discriminator="type"),
]


class SlotReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    drawer: Drawer
    index: Index
    state: SlotState
    card_serial: Serial | None = None


class InventorySnapshot(Message):
    """Every slot, in drawer then index order (retained on channel inventory).

    ``sequence`` counts the cabinet's inventory changes; it survives restarts, so a controller can
    tell a snapshot it has reconciled from a newer one.
    """

    type: Literal["inventory"] = "inventory"
    sequence: Annotated[int, Field(ge=1, le=MAX_COUNTER)]
    drawers: Drawer
    slots_per_drawer: Index
    slots: tuple[SlotReport, ...]

    @model_validator(mode="after")
    def _complete(self) -> InventorySnapshot:
        expected = [
            (d, i) for d in range(1, self.drawers + 1) for i in range(1, self.slots_per_drawer + 1)
        ]
        if [(s.drawer, s.index) for s in self.slots] != expected:
            raise ValueError("slots must list every slot once, in drawer then index order")
        return self


class Heartbeat(Message):
    type: Literal["heartbeat"] = "heartbeat"
    boot_id: UUID
    inventory_sequence: Annotated[int, Field(ge=0, le=MAX_COUNTER)]


class Status(Message):
    """``online`` on connect; ``offline`` as the last will (cause ``lost``) or on shutdown."""

    type: Literal["status"] = "status"
    state: Literal["online", "offline"]
    cause: Literal["connect", "shutdown", "lost"]
    boot_id: UUID

    @model_validator(mode="after")
    def _cause_fits(self) -> Status:
        if (self.state == "online") != (self.cause == "connect"):
            raise ValueError("online is caused by connect; offline by shutdown or lost")
        return self


AnyMessage = (
    DepositCommand
    | OpenForRetrievalCommand
    | LightCommand
    | InventoryScanCommand
    | ReturnUncollectedCommand
    | Ack
    | SlotOpened
    | CardInserted
    | CardRemoved
    | DoorClosed
    | FaultEvent
    | SecurityEvent
    | InventorySnapshot
    | Heartbeat
    | Status
)

_ADAPTERS: Final[Mapping[Channel, TypeAdapter[Any]]] = {
    Channel.CMD: TypeAdapter(Command),
    Channel.ACK: TypeAdapter(Ack),
    Channel.EVT: TypeAdapter(Event),
    Channel.INVENTORY: TypeAdapter(InventorySnapshot),
    Channel.HEARTBEAT: TypeAdapter(Heartbeat),
    Channel.STATUS: TypeAdapter(Status),
}


def adapter_for(channel: Channel) -> TypeAdapter[Any]:
    """The validator of the messages one channel carries (for tests and JSON Schema export)."""
    return _ADAPTERS[channel]


M = TypeVar("M", bound=Message)


def seal(message: M, key: bytes) -> tuple[M, bytes]:
    """MAC ``message`` with ``key``: the sealed message and its canonical payload bytes."""
    body = message.model_dump(mode="json", exclude={"mac"})
    mac = compute_mac(key, canonical_json(body))
    body["mac"] = mac
    return message.model_copy(update={"mac": mac}), canonical_json(body)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins; refusing both keeps the MAC'd value and the
    # acted-on value the same whatever parser the other side used.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _no_float(text: str) -> Any:
    raise ValueError("floats are not part of the protocol")


def open_message(channel: Channel, payload: bytes, key: bytes) -> AnyMessage:
    """Verify and parse a payload received on ``channel``.

    ``MalformedMessageError`` if it is not a protocol message, ``BadMacError`` if the MAC does not
    verify with ``key``.  Counters, topics and duplicates are the protocol objects' business.
    """
    where = channel.value
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedMessageError("payload too large", channel=where)
    try:
        obj = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (ValueError, RecursionError):
        raise MalformedMessageError("payload is not a JSON object", channel=where) from None
    if not isinstance(obj, dict):
        raise MalformedMessageError("payload is not a JSON object", channel=where)
    mac = obj.pop("mac", None)
    verify_mac(key, canonical_json(obj), mac, channel=where)
    try:
        message: AnyMessage = _ADAPTERS[channel].validate_json(payload, strict=True)
    except ValidationError as exc:
        # Only locations and error types: a validation error's own text quotes the input.
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise MalformedMessageError(
            f"{exc.error_count()} schema error(s); first: {first['type']} at {field or 'top level'}",
            field=field,
            channel=where,
        ) from None
    return message
