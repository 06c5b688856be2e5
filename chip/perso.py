"""Personalisation of one chip: the LDS built from the holder's data, then the APDU script over SCP03.

The script (a Flow: it yields command APDUs and receives responses, STYLE habit 1):

1. SELECT the eMRTD application (ICAO 9303-10 §4.1, AID A0000002471001);
2. open SCP03 with the chip's diversified static keys, C-MAC and C-DECRYPTION
   (GP Card Spec v2.3 Amendment D §6.2, §7.1.1);
3. per file: CREATE FILE with its FCP (FID, size, SFI; ISO/IEC 7816-9 §6.1) and UPDATE BINARY in
   chunks, so the created file stays current and no SELECT is needed;
4. PUT DATA of the MRZ access-key record (document number with its '<' fillers, DOB, DOE), from which
   the chip derives its BAC keys (9303-11 §9.7.2);
5. SET STATUS to SECURED: from then on nothing is writable and every read needs BAC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from chip.apdu import SW, CommandAPDU, ResponseAPDU
from chip.errors import StatusWordError
from chip.holder import HolderData
from chip.lds.com import EFCom
from chip.lds.dg1 import DG1
from chip.lds.dg2 import DG2
from chip.lds.dg3 import DG3
from chip.lds.dg11 import DG11
from chip.lds.dg12 import DG12
from chip.lds.sod import build_sod_der
from chip.lds.tags import EMRTD_AID, by_dg, by_name
from chip.mrz import TD1, build_td1
from chip.pki import DocumentSigner
from chip.profile import PUT_DATA_MRZ, SET_STATUS_ISD, STATE_SECURED
from chip.protocols.scp03 import SecurityLevel, StaticKeys, open_scp03
from chip.random import RandomSource
from chip.tlv import tlv
from chip.transport.base import Flow

__all__ = ["CardFile", "PersoPlan", "PersoResult", "build_plan", "personalise"]

#: Largest plaintext per short APDU under C-DECRYPTION + C-MAC: Lc = pad16(n) + 8 <= 255.
SHORT_CHUNK = 239
#: UPDATE BINARY with even INS addresses offsets up to 15 bits (ISO/IEC 7816-4 §11.3.3).
MAX_EVEN_OFFSET = 0x7FFF
PERSO_LEVEL = SecurityLevel.C_MAC | SecurityLevel.C_DECRYPTION


@dataclass(frozen=True, slots=True)
class CardFile:
    name: str
    fid: int
    sfi: int | None
    data: bytes

    def __repr__(self) -> str:
        return f"CardFile({self.name}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class PersoPlan:
    """Everything written to one chip, in write order, and the MRZ fields of its access keys."""

    files: tuple[CardFile, ...]
    mrz: TD1

    def __repr__(self) -> str:
        return f"PersoPlan({[f.name for f in self.files]})"

    @property
    def dg_files(self) -> dict[int, bytes]:
        return {by_name(f.name).dg or 0: f.data for f in self.files if f.name.startswith("DG")}

    def file(self, name: str) -> bytes:
        for f in self.files:
            if f.name == name:
                return f.data
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class PersoResult:
    serial: bytes
    apdus: int
    bytes_written: int


def build_plan(
    holder: HolderData, signer: DocumentSigner, *, signing_time: datetime | None = None
) -> PersoPlan:
    """Encode every data group, then EF.COM and EF.SOD over the exact bytes to be written."""
    mrz = build_td1(holder)
    dgs: dict[int, bytes] = {
        1: DG1(mrz.text).to_bytes(),
        2: DG2.from_holder(holder).to_bytes(),
    }
    if holder.fingers:
        dgs[3] = DG3.from_holder(holder).to_bytes()
    dgs[11] = DG11.from_holder(holder).to_bytes()
    dgs[12] = DG12.from_holder(holder).to_bytes()
    com = EFCom(tags=tuple(by_dg(n).tag or 0 for n in dgs)).to_bytes()
    # Unparsed: QA reads every card back and verifies its EF.SOD (chip.verify).
    sod = build_sod_der(dgs, signer, signing_time=signing_time)
    files = [CardFile("EF.COM", 0x011E, 0x1E, com)]
    files += [CardFile(f"DG{n}", by_dg(n).fid, by_dg(n).sfi, data) for n, data in dgs.items()]
    files.append(CardFile("EF.SOD", 0x011D, 0x1D, sod))
    return PersoPlan(tuple(files), mrz)


def _checked(response: ResponseAPDU, step: str) -> ResponseAPDU:
    if response.sw != SW.OK:
        raise StatusWordError(response.sw, step=step)
    return response


def personalise(
    plan: PersoPlan,
    keys: StaticKeys | Callable[[bytes], StaticKeys],
    *,
    rng: RandomSource,
    chunk_size: int = SHORT_CHUNK,
    security_level: SecurityLevel = PERSO_LEVEL,
) -> Flow[PersoResult]:
    """The perso script of one chip; ``keys`` maps the chip's KDD (its serial) to its static keys."""
    if not 1 <= chunk_size <= 65535 - 32:
        raise ValueError("chunk_size out of range")
    serial = bytearray()

    def keys_for(kdd: bytes) -> StaticKeys:
        serial[:] = kdd
        return keys(kdd) if callable(keys) else keys

    apdus = 1
    _checked((yield CommandAPDU(0x00, 0xA4, 0x04, 0x0C, EMRTD_AID)), "perso.select")
    session = yield from open_scp03(keys_for, security_level=security_level, rng=rng)
    apdus += 2

    def send(cmd: CommandAPDU, step: str) -> Flow[ResponseAPDU]:
        nonlocal apdus
        apdus += 1
        response = session.unwrap_response((yield session.wrap_command(cmd)))
        return _checked(response, step)

    written = 0
    for f in plan.files:
        if len(f.data) > MAX_EVEN_OFFSET:
            raise ValueError(f"{f.name} is larger than UPDATE BINARY can address")
        fcp = tlv(0x80, len(f.data).to_bytes(2, "big")) + tlv(0x82, b"\x01")
        fcp += tlv(0x83, f.fid.to_bytes(2, "big"))
        if f.sfi is not None:
            fcp += tlv(0x88, bytes((f.sfi << 3,)))
        yield from send(
            CommandAPDU(0x00, 0xE0, 0x00, 0x00, tlv(0x62, fcp)), f"perso.create.{f.name}"
        )
        for offset in range(0, len(f.data), chunk_size):
            chunk = f.data[offset : offset + chunk_size]
            cmd = CommandAPDU(0x00, 0xD6, offset >> 8, offset & 0xFF, chunk)
            yield from send(cmd, f"perso.update.{f.name}")
            written += len(chunk)
    mrz = plan.mrz
    record = tlv(
        0x62,
        tlv(0x04, mrz.document_number.ljust(9, "<").encode("ascii"))
        + tlv(0x04, mrz.date_of_birth.encode("ascii"))
        + tlv(0x04, mrz.date_of_expiry.encode("ascii")),
    )
    yield from send(
        CommandAPDU(0x00, 0xDA, PUT_DATA_MRZ >> 8, PUT_DATA_MRZ & 0xFF, record), "perso.put_data"
    )
    yield from send(CommandAPDU(0x80, 0xF0, SET_STATUS_ISD, STATE_SECURED), "perso.lock")
    return PersoResult(bytes(serial), apdus, written)
