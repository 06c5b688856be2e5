"""The personaliser's exceptions.

::

    PersoError                  root of what the personaliser raises (the chip package has its own
    │                           root, chip.errors.ChipError; the CLI maps both to messages and exit codes)
    ├── KeystoreError           keystore missing, incomplete, or its key files not private
    ├── IntakeError             an applications file cannot be read at all (not: one bad record)
    ├── ConfigError             a configuration file (site.toml) cannot be read or is invalid;
    │                           the message names the file, the field and the reason
    └── StoreError              the durable store refused or failed an operation (a database error
        │                       is mapped to this at the boundary, ``raise … from exc``)
        ├── IllegalTransitionError  the card life cycle forbids this move (card, from_state, to_state)
        ├── DuplicateError      an idempotency key or id already recorded for another operation (key)
        ├── NotFoundError       no application, batch or blank with this id (kind, key)
        ├── BlankError          a blank cannot be used as asked: already used, spoiled, or none left
        │                       on the line (batch_id, serial)
        └── PersonalDataError   personal data purged, or failing authentication: wrong key, tampered,
                                or moved from another record (application_id)

Messages and fields carry ids, states and field names, never personal data or key material.
"""

from __future__ import annotations

__all__ = [
    "BlankError",
    "ConfigError",
    "DuplicateError",
    "IllegalTransitionError",
    "IntakeError",
    "KeystoreError",
    "NotFoundError",
    "PersoError",
    "PersonalDataError",
    "StoreError",
]


class PersoError(Exception):
    """Root of the personaliser's exceptions."""


class KeystoreError(PersoError):
    """The keystore is missing, incomplete, or its key files are readable by others."""


class IntakeError(PersoError):
    """An applications file cannot be read at all."""


class ConfigError(PersoError):
    """A configuration file cannot be read or is invalid (file, field, reason in the message)."""


class StoreError(PersoError):
    """The durable store refused or failed an operation."""


class IllegalTransitionError(StoreError):
    """The card life cycle (DESIGN §3) has no transition ``from_state`` → ``to_state``."""

    def __init__(self, card: str, from_state: str, to_state: str) -> None:
        super().__init__(f"card {card}: no transition {from_state} -> {to_state}")
        self.card = card
        self.from_state = from_state
        self.to_state = to_state


class DuplicateError(StoreError):
    """An idempotency key (or a batch id) is already recorded for a different operation."""

    def __init__(self, key: str, what: str = "idempotency key") -> None:
        super().__init__(f"{what} {key!r} is already recorded for a different operation")
        self.key = key


class NotFoundError(StoreError):
    """No record of this kind with this id."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key!r}")
        self.kind = kind
        self.key = key


class BlankError(StoreError):
    """A blank cannot be used as asked (already used or spoiled, none left on the line)."""

    def __init__(self, message: str, *, batch_id: str | None = None, serial: str | None = None):
        super().__init__(message)
        self.batch_id = batch_id
        self.serial = serial


class PersonalDataError(StoreError):
    """Personal data is purged, or its ciphertext fails authentication."""

    def __init__(self, application_id: str, message: str) -> None:
        super().__init__(f"application {application_id}: {message}")
        self.application_id = application_id
