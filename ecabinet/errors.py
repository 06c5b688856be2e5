"""The e-cabinet package's exception tree (one root, machine-readable fields).

::

    CabinetError                   root of what this package raises on bad data or a bad peer
    ├── ProtocolError              a message broke the cabinet protocol; carries ``channel``
    │   ├── ReplayError            counter not above the last one accepted; carries ``counter``, ``last``
    │   ├── BadMacError            MAC missing, malformed or wrong (one bare failure: it says nothing
    │   │                          about how the MAC was wrong, as pyca/cryptography's InvalidSignature)
    │   ├── WrongTopicError        topic outside the scheme, for another site or cabinet, or the
    │   │                          wrong channel for this side or this message
    │   └── MalformedMessageError  not JSON, too large, duplicate keys, or not the schema; ``field``
    ├── AuthorisationError         an officer, office or receipt check refused an operation; ``reason``
    ├── SlotError                  no such slot, or the slot state table forbids the move;
    │   │                          carries ``slot``, ``state``, ``event``
    │   └── CapacityError          an office has fewer free slots than cards; ``office``, ``needed``,
    │                              ``free``
    ├── AuditError                 the audit log fails verification; carries ``index`` and ``reason``
    ├── LinkError                  the MQTT connection failed or dropped (a supervisor reconnects)
    └── MosquittoError             Mosquitto is missing, or its files cannot be written or read
        └── BrokerStartError       Mosquitto did not start or reload; carries ``log_tail``

Caller misuse (an id with a ``/`` in it, a key of the wrong length) is ``ValueError`` /
``TypeError``, as in the standard library.  The protocol objects in :mod:`ecabinet.protocol` do not
raise for a peer's misbehaviour: they turn these errors into security events and outcomes, so one
forged message cannot stop a cabinet or a controller.  Messages and fields carry ids, counters,
slot codes and states, never key material, MACs or personal data.  This tree is separate from
``chip.errors``: ``ecabinet`` must not import ``chip`` (DESIGN §2).
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "AuthorisationError",
    "BadMacError",
    "BrokerStartError",
    "CabinetError",
    "CapacityError",
    "LinkError",
    "MalformedMessageError",
    "MosquittoError",
    "ProtocolError",
    "ReplayError",
    "SlotError",
    "WrongTopicError",
]


class CabinetError(Exception):
    """Root of the e-cabinet package's exceptions."""


class ProtocolError(CabinetError):
    """A message broke the cabinet protocol; ``channel`` names the topic channel if known."""

    def __init__(self, message: str, *, channel: str | None = None) -> None:
        super().__init__(message)
        self.channel = channel


class ReplayError(ProtocolError):
    """A counter not strictly above the last accepted one: a replay, or a message overtaken."""

    def __init__(self, counter: int, last: int, *, channel: str | None = None) -> None:
        # Counters are not secret: they are in every payload in clear.
        super().__init__(f"counter {counter} is not above {last}", channel=channel)
        self.counter = counter
        self.last = last


class BadMacError(ProtocolError):
    """The MAC did not verify.  Deliberately without detail."""

    def __init__(self, *, channel: str | None = None) -> None:
        super().__init__("message authentication failed", channel=channel)


class WrongTopicError(ProtocolError):
    """A topic outside ``perso/v1/{site}/{cabinet}/{channel}``, or not meant for this receiver."""


class MalformedMessageError(ProtocolError):
    """A payload that is not a message of the protocol; ``field`` names the offending field."""

    def __init__(
        self, message: str, *, field: str | None = None, channel: str | None = None
    ) -> None:
        super().__init__(message, channel=channel)
        self.field = field


class LinkError(CabinetError):
    """The MQTT connection failed or dropped; a supervisor reconnects.  Never carries credentials."""


class AuthorisationError(CabinetError):
    """An officer, office or receipt check refused an operation; ``reason`` is a short code."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SlotError(CabinetError):
    """No such slot, or the slot state table has no entry for this (state, event)."""

    def __init__(
        self,
        message: str,
        *,
        slot: str | None = None,
        state: str | None = None,
        event: str | None = None,
    ) -> None:
        super().__init__(message)
        self.slot = slot
        self.state = state
        self.event = event


class CapacityError(SlotError):
    """An office's cabinets have fewer free slots than cards to place."""

    def __init__(self, office: str, *, needed: int, free: int) -> None:
        super().__init__(f"office {office}: {needed} cards to place but only {free} free slots")
        self.office = office
        self.needed = needed
        self.free = free


class AuditError(CabinetError):
    """The audit log fails verification at entry ``index`` (0-based position in the file)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"audit entry {index}: {reason}")
        self.index = index
        self.reason = reason


class MosquittoError(CabinetError):
    """Mosquitto is missing, or its files cannot be written or read."""


class BrokerStartError(MosquittoError):
    """Mosquitto did not start (or reload); ``log_tail`` holds the end of its log and stderr."""

    def __init__(self, message: str, *, log_tail: str) -> None:
        super().__init__(
            f"{message}\n--- mosquitto log tail ---\n{log_tail}" if log_tail else message
        )
        self.log_tail = log_tail
