"""ISO/IEC 7816-4 command and response APDUs (clause 5.1), short and extended length.

Encoding cases (7816-4 5.1, table 2/3), with Nc = len(data) and Ne = expected response length:

- case 1: header only;
- case 2: header + Le (short: 1 byte, 00 = 256; extended: 00 + 2 bytes, 0000 = 65536);
- case 3: header + Lc + data (short Lc 1..255; extended 00 + 2 bytes);
- case 4: header + Lc + data + Le (extended: Lc is 00 + 2 bytes, Le is 2 bytes).

``ne`` is the number of bytes the command expects (``None`` when there is no Le field).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from chip.errors import EncodingError

__all__ = ["SW", "CommandAPDU", "ResponseAPDU"]

SHORT_MAX_NC = 255
SHORT_MAX_NE = 256
EXTENDED_MAX = 65535
EXTENDED_MAX_NE = 65536


class SW(IntEnum):
    """Status words used by this project (ISO/IEC 7816-4 5.6, ICAO 9303-11 9.8.3)."""

    OK = 0x9000
    WARNING_END_OF_FILE = 0x6282
    VERIFICATION_FAILED = 0x6300
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    SM_NOT_SUPPORTED = 0x6882
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED_NO_EF = 0x6986
    SM_DATA_OBJECTS_MISSING = 0x6987
    SM_DATA_OBJECTS_INCORRECT = 0x6988
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCED_DATA_NOT_FOUND = 0x6A88
    FILE_EXISTS = 0x6A89
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    UNKNOWN = 0x6F00


@dataclass(frozen=True, slots=True)
class CommandAPDU:
    """A command APDU. ``ne`` is None for no Le field, else 1..65536."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int | None = None

    def __post_init__(self) -> None:
        # One comparison chain on the common path: a line builds tens of APDUs per card.
        if not (
            0 <= self.cla <= 0xFF and 0 <= self.ins <= 0xFF and 0 <= self.p1 <= 0xFF
            and 0 <= self.p2 <= 0xFF
        ):  # fmt: skip
            for name in ("cla", "ins", "p1", "p2"):
                value = getattr(self, name)
                if not 0 <= value <= 0xFF:
                    raise ValueError(f"{name} must be a byte, got {value}")
        if len(self.data) > EXTENDED_MAX:
            raise ValueError("command data longer than 65535 bytes")
        if self.ne is not None and not 1 <= self.ne <= EXTENDED_MAX_NE:
            raise ValueError("ne must be 1..65536 or None")

    @property
    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))

    @property
    def is_extended(self) -> bool:
        return len(self.data) > SHORT_MAX_NC or (self.ne is not None and self.ne > SHORT_MAX_NE)

    def to_bytes(self, *, extended: bool | None = None) -> bytes:
        """Encode; extended length is used when needed, or forced with ``extended=True``."""
        data, ne = self.data, self.ne
        nc = len(data)
        needed = nc > SHORT_MAX_NC or (ne is not None and ne > SHORT_MAX_NE)
        ext = needed if extended is None else extended
        if not ext and needed:
            raise ValueError("command needs extended length")
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        if ext:
            lc = b"\x00" + nc.to_bytes(2, "big") if nc else b""
            if ne is None:
                return header + lc + data
            le = b"" if nc else b"\x00"
            return header + lc + data + le + (0 if ne == EXTENDED_MAX_NE else ne).to_bytes(2, "big")
        lc = bytes((nc,)) if nc else b""
        if ne is None:
            return header + lc + data
        return header + lc + data + bytes((0 if ne == SHORT_MAX_NE else ne,))

    @classmethod
    def from_bytes(cls, raw: bytes) -> CommandAPDU:
        """Decode any of the seven 7816-4 encodings; raise :class:`EncodingError` otherwise."""
        n = len(raw)
        if n < 4:
            raise EncodingError("APDU shorter than its 4-byte header", field="header")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        b = len(body)
        if b == 0:
            return cls(cla, ins, p1, p2)
        if b == 1:
            return cls(cla, ins, p1, p2, ne=body[0] or SHORT_MAX_NE)
        if body[0] != 0:
            nc = body[0]
            if b == 1 + nc:
                return cls(cla, ins, p1, p2, bytes(body[1:]))
            if b == 2 + nc:
                return cls(cla, ins, p1, p2, bytes(body[1 : 1 + nc]), body[1 + nc] or SHORT_MAX_NE)
            raise EncodingError("short Lc does not match the body length", field="Lc")
        # First body byte 00 with more bytes following: extended length.
        if b == 3:
            le = int.from_bytes(body[1:3], "big")
            return cls(cla, ins, p1, p2, ne=le or EXTENDED_MAX_NE)
        if b < 3:
            raise EncodingError("truncated extended length field", field="Lc")
        nc = int.from_bytes(body[1:3], "big")
        if nc == 0:
            raise EncodingError("extended Lc of zero", field="Lc")
        if b == 3 + nc:
            return cls(cla, ins, p1, p2, bytes(body[3:]))
        if b == 5 + nc:
            le = int.from_bytes(body[3 + nc :], "big")
            return cls(cla, ins, p1, p2, bytes(body[3 : 3 + nc]), le or EXTENDED_MAX_NE)
        raise EncodingError("extended Lc does not match the body length", field="Lc")

    def __repr__(self) -> str:
        # Data may be key material or personal data: show only its length.
        return (
            f"CommandAPDU(cla={self.cla:02X}, ins={self.ins:02X}, p1={self.p1:02X}, "
            f"p2={self.p2:02X}, nc={len(self.data)}, ne={self.ne})"
        )


@dataclass(frozen=True, slots=True)
class ResponseAPDU:
    """A response APDU: data followed by the two status bytes."""

    data: bytes
    sw: int

    def __post_init__(self) -> None:
        if not 0 <= self.sw <= 0xFFFF:
            raise ValueError("status word must be 16 bits")

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    @property
    def ok(self) -> bool:
        return self.sw == SW.OK

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> ResponseAPDU:
        if len(raw) < 2:
            raise EncodingError("response shorter than its status word", field="SW")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))

    @classmethod
    def status(cls, sw: int) -> ResponseAPDU:
        return cls(b"", sw)

    def __repr__(self) -> str:
        return f"ResponseAPDU(len={len(self.data)}, sw={self.sw:04X})"
