"""Reading a chip as a border reader does: SELECT the application, BAC, then SM reads of every file.

Files are read by short EF identifier (ICAO 9303-10 §3.6.2 / ISO 7816-4 §11.3.3: READ BINARY with
P1 = 0x80 | SFI selects and reads in one command).  With extended length the whole file comes in one
response; with short APDUs in chunks of 223 bytes, the most a 3DES-SM response carries in 256 bytes
(9303-11 §9.8.6, the value every reader uses: DO'87' + DO'99' + DO'8E' fit in 256 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chip.apdu import SW, CommandAPDU, ResponseAPDU
from chip.crypto.sm import SecureMessaging
from chip.errors import EncodingError, StatusWordError
from chip.lds.com import EFCom
from chip.lds.tags import EMRTD_AID, by_name, by_tag
from chip.protocols.bac import bac
from chip.random import RandomSource
from chip.transport.base import Flow

__all__ = ["SHORT_READ", "CardReadout", "read_card", "read_file", "select_application"]

SHORT_READ = 0xDF
EXTENDED_READ = 65536
SUCCESS = (SW.OK, SW.WARNING_END_OF_FILE)


@dataclass(frozen=True, slots=True)
class CardReadout:
    """Raw file bytes exactly as read, in reading order (EF.COM first, EF.SOD last)."""

    files: dict[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"CardReadout({list(self.files)})"


def select_application() -> Flow[None]:
    response = yield CommandAPDU(0x00, 0xA4, 0x04, 0x0C, EMRTD_AID)
    if response.sw != SW.OK:
        raise StatusWordError(response.sw, step="read.select_application")


def _exchange(sm: SecureMessaging, cmd: CommandAPDU) -> Flow[ResponseAPDU]:
    return sm.unwrap_response((yield sm.wrap_command(cmd)))


def read_file(sm: SecureMessaging, name: str, *, extended: bool = True) -> Flow[bytes]:
    """Read one LDS file by SFI under secure messaging; returns its exact bytes."""
    ef = by_name(name)
    if ef.sfi is None:
        raise ValueError(f"{name} has no short EF identifier")
    first_ne = EXTENDED_READ if extended else SHORT_READ
    response = yield from _exchange(sm, CommandAPDU(0x00, 0xB0, 0x80 | ef.sfi, 0x00, ne=first_ne))
    if response.sw not in SUCCESS:
        raise StatusWordError(response.sw, step=f"read.{name}")
    data = bytearray(response.data)
    total = _file_length(bytes(data))
    while len(data) < total:
        ne = min(total - len(data), EXTENDED_READ if extended else SHORT_READ)
        offset = len(data)
        if offset > 0x7FFF:
            raise EncodingError(f"{name} longer than even-INS READ BINARY reaches", field=name)
        cmd = CommandAPDU(0x00, 0xB0, offset >> 8, offset & 0xFF, ne=ne)
        response = yield from _exchange(sm, cmd)
        if response.sw not in SUCCESS or not response.data:
            raise StatusWordError(response.sw, step=f"read.{name}")
        data += response.data
    return bytes(data[:total])


def _file_length(head: bytes) -> int:
    """Total length of a BER-TLV encoded file from its first bytes (tag, length)."""
    if len(head) < 2:
        raise EncodingError("file too short for a TLV header", field="length")
    i = 1
    if head[0] & 0x1F == 0x1F:
        while i < len(head) and head[i] & 0x80:
            i += 1
        i += 1
    if i >= len(head):
        raise EncodingError("file too short for a TLV header", field="length")
    first = head[i]
    if first < 0x80:
        return i + 1 + first
    n = first & 0x7F
    if n == 0 or n > 3 or i + 1 + n > len(head):
        raise EncodingError("unsupported TLV length", field="length")
    return i + 1 + n + int.from_bytes(head[i + 1 : i + 1 + n], "big")


def read_card(
    mrz_information: str, rng: RandomSource, *, extended: bool = True
) -> Flow[CardReadout]:
    """SELECT, BAC with the MRZ, then EF.COM, every data group it lists, and EF.SOD."""
    yield from select_application()
    sm = yield from bac(mrz_information, rng)
    files: dict[str, bytes] = {}
    files["EF.COM"] = yield from read_file(sm, "EF.COM", extended=extended)
    com = EFCom.from_bytes(files["EF.COM"])
    for tag in com.tags:
        try:
            ef = by_tag(tag)
        except KeyError:
            raise EncodingError(f"EF.COM lists unknown tag {tag:02X}", field="EF.COM") from None
        files[ef.name] = yield from read_file(sm, ef.name, extended=extended)
    files["EF.SOD"] = yield from read_file(sm, "EF.SOD", extended=extended)
    return CardReadout(files)
