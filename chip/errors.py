"""The chip package's exception tree (one root, machine-readable fields).

::

    ChipError                     root of what this package raises on bad data or a bad peer
    ├── EncodingError             malformed bytes or text from outside (TLV, LDS, MRZ, APDU)
    ├── ProtocolError             a protocol run went wrong; carries ``step``
    │   ├── SecureMessagingError  SM missing, wrong MAC, bad padding: the session is dead
    │   │   └── CardSecureMessagingError  chip side: a command refused; carries ``sw``
    │   ├── AuthenticationError   BAC / SCP03 cryptogram or challenge mismatch
    │   └── StatusWordError       the card answered an unexpected status word; carries ``sw``
    ├── VerificationError         passive authentication or readback failed; carries ``reasons``
    └── TransportError            card removed, reader gone, connection dropped; carries ``reader``
        ├── CardRemovedError      no card in the reader, or it was removed or reset under us
        ├── ReaderGoneError       the reader (or the PC/SC service itself) is not there
        └── CardMuteError         the card does not answer (reader timeout, transmission failed)

Caller misuse (wrong key length, impossible argument) is ``ValueError`` / ``TypeError``, as in the
standard library.  Foreign exceptions are mapped at the boundary with ``raise ... from exc``.
Messages never carry key material or personal data: they name the step, the field and the status word.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CardMuteError",
    "CardRemovedError",
    "CardSecureMessagingError",
    "ChipError",
    "EncodingError",
    "ProtocolError",
    "ReaderGoneError",
    "SecureMessagingError",
    "StatusWordError",
    "TransportError",
    "VerificationError",
]


class ChipError(Exception):
    """Root of the chip package's exceptions."""


class EncodingError(ChipError):
    """Malformed bytes or text coming from outside (TLV, LDS file, MRZ field, APDU)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ProtocolError(ChipError):
    """A protocol run failed; ``step`` names where (e.g. ``"bac.external_authenticate"``)."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


class SecureMessagingError(ProtocolError):
    """Secure messaging failed (missing DO, MAC mismatch, bad padding). The session is dead."""


class CardSecureMessagingError(SecureMessagingError):
    """The chip side refused a secured command; ``sw`` is the status word it answers with.

    Raised by card-side sessions (the emulator's SCP03 and SM layers) so the emulator can turn
    it into a response without knowing which check failed (GP Amendment D 5.6: security error).
    """

    def __init__(self, message: str, *, sw: int, step: str | None = None) -> None:
        super().__init__(message, step=step)
        self.sw = sw


class AuthenticationError(ProtocolError):
    """A cryptogram, challenge or authentication token did not verify."""


class StatusWordError(ProtocolError):
    """The card answered ``sw`` where success was expected."""

    def __init__(self, sw: int, *, step: str | None = None, message: str | None = None) -> None:
        super().__init__(message or f"card answered SW {sw:04X}", step=step)
        self.sw = sw


class VerificationError(ChipError):
    """A readback or passive authentication check failed; ``reasons`` lists every failed check."""

    def __init__(self, message: str, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class TransportError(ChipError):
    """The transport lost the card or reader (card removed, reader gone, connection dropped)."""

    def __init__(self, message: str, *, reader: str | None = None) -> None:
        super().__init__(message)
        self.reader = reader


class CardRemovedError(TransportError):
    """No card in the reader, or the card was removed or reset: its volatile state is lost."""


class ReaderGoneError(TransportError):
    """The reader is unknown or unavailable, or the PC/SC service is not running."""


class CardMuteError(TransportError):
    """The card did not answer: the reader timed out or could not complete the exchange."""
