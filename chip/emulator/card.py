"""The chip OS: ISO/IEC 7816-4 commands over the image, the eMRTD access rules, BAC and SCP03.

Rules the emulator keeps (a conformance emulator, not a demo):

1. Every input gets a status word; nothing raises out of :meth:`ChipOS.transmit` (an internal fault
   answers 6F00 and drops every session).
2. A blank is written only through an SCP03 session (GP Card Spec v2.3 Amendment D, C-MAC required);
   a plain or BAC-protected write answers 6982.
3. After the lock (SET STATUS to SECURED) nothing is writable (6985) and every read of the eMRTD
   application needs BAC secure messaging (ICAO Doc 9303 Part 11 §4.3, 9.8): a plain SELECT of an EF or
   READ BINARY answers 6982.
4. A plain APDU received during a secure messaging session ends that session (9303-11 §9.8.6: "the
   eMRTD chip MUST abort Secure Messaging if it receives an unprotected command").
5. A secure messaging failure ends the session and answers the plain status word 6987/6988
   (9303-11 §9.8.6.1); an SCP03 failure answers 6982 and ends the secure channel (Amendment D §7.1.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from chip.apdu import SW, CommandAPDU, ResponseAPDU
from chip.crypto.kdf import bac_keys
from chip.crypto.sm import SecureMessaging
from chip.emulator.image import ChipImage, EFile, Lifecycle
from chip.emulator.meter import DEVICE_CPU
from chip.errors import AuthenticationError, ChipError, SecureMessagingError
from chip.lds.tags import EMRTD_AID
from chip.mrz import mrz_information
from chip.profile import (
    INS_CREATE_FILE,
    INS_EXTERNAL_AUTHENTICATE,
    INS_GET_CHALLENGE,
    INS_INITIALIZE_UPDATE,
    INS_PUT_DATA,
    INS_READ_BINARY,
    INS_READ_BINARY_ODD,
    INS_SELECT,
    INS_SET_STATUS,
    INS_UPDATE_BINARY,
    PUT_DATA_MRZ,
    SET_STATUS_ISD,
    STATE_SECURED,
)
from chip.protocols.bac import BacChip
from chip.protocols.scp03 import Scp03Card, Scp03CardSession
from chip.random import RandomSource, system_random
from chip.tlv import iter_tlv, tlv, unwrap

__all__ = ["ATR", "ChipOS", "ChipStats", "TimingModel", "make_atr"]

MF_FID = 0x3F00
MAX_READ_NE = (256, 65536)


def make_atr(historical: bytes) -> bytes:
    """An ATR offering T=1 (ISO/IEC 7816-3 §8.2): TS, T0, TD1 (T=1 follows), TD2, history, TCK."""
    if len(historical) > 15:
        raise ValueError("at most 15 historical bytes")
    body = bytes((0x80 | len(historical), 0x80, 0x01)) + historical
    tck = 0
    for byte in body:
        tck ^= byte
    return b"\x3b" + body + bytes((tck,))


ATR = make_atr(b"PERSO-EMRTD")


@dataclass(frozen=True, slots=True)
class TimingModel:
    """Optional device timing: latency per APDU and EEPROM write time per byte."""

    per_apdu_s: float = 0.0
    per_byte_written_s: float = 0.0


@dataclass(slots=True)
class ChipStats:
    apdus: int = 0
    bytes_written: int = 0
    modeled_seconds: float = 0.0


class _Channel(Enum):
    PLAIN = "plain"
    BAC = "bac"
    SCP = "scp"


class _DF(Enum):
    MF = "mf"
    APP = "app"


class ChipOS:
    """Processes raw command APDUs against a :class:`ChipImage` (implements the Transport seam)."""

    def __init__(
        self,
        image: ChipImage,
        *,
        rng: RandomSource = system_random,
        timing: TimingModel | None = None,
        sleep: Callable[[float], None] | None = time.sleep,
    ) -> None:
        self.image = image
        self.rng = rng
        self.timing = timing
        self.sleep = sleep
        self.stats = ChipStats()
        self.power_on()

    def __repr__(self) -> str:
        return f"ChipOS({self.image!r})"

    # -- power and sessions -------------------------------------------------------------------

    def power_on(self) -> bytes:
        """Cold or warm reset: volatile state is lost (sessions, selection), NVM is kept."""
        self._df = _DF.MF
        self._ef: EFile | None = None
        self._bac: BacChip | None = None
        self._sm: SecureMessaging | None = None
        self._scp_pending: Scp03Card | None = None
        self._scp: Scp03CardSession | None = None
        return ATR

    reset = power_on

    def _drop_sessions(self) -> None:
        self._bac = None
        self._sm = None
        self._scp_pending = None
        self._scp = None

    # -- the transport seam -------------------------------------------------------------------

    def transmit(self, apdu: bytes) -> bytes:
        # The chip's own CPU, metered apart from the host's when a benchmark asks (meter.py).
        return DEVICE_CPU.call(self._transmit, apdu)

    def _transmit(self, apdu: bytes) -> bytes:
        written_before = self.stats.bytes_written
        try:
            response = self._process(apdu)
        except Exception:
            self._drop_sessions()
            response = ResponseAPDU.status(SW.UNKNOWN)
        self.stats.apdus += 1
        if self.timing is not None:
            delay = self.timing.per_apdu_s + self.timing.per_byte_written_s * (
                self.stats.bytes_written - written_before
            )
            self.stats.modeled_seconds += delay
            if self.sleep is not None and delay > 0:
                self.sleep(delay)
        return response.to_bytes()

    def _process(self, raw: bytes) -> ResponseAPDU:
        try:
            cmd = CommandAPDU.from_bytes(raw)
        except ChipError:
            return ResponseAPDU.status(SW.WRONG_LENGTH)
        cla = cmd.cla
        if cla == 0x0C:
            return self._process_bac(cmd)
        if cla in (0x04, 0x84):
            # GP Amendment D §6.2.4: C-MAC sets CLA bit 3 (00 -> 04, 80 -> 84).
            return self._process_scp(cmd)
        if cla in (0x00, 0x80):
            # Rule 4: an unprotected command ends any secure messaging session.
            if self._sm is not None or self._scp is not None:
                self._sm = None
                self._scp = None
            return self._execute(cmd, _Channel.PLAIN)
        return ResponseAPDU.status(SW.CLA_NOT_SUPPORTED)

    def _process_bac(self, cmd: CommandAPDU) -> ResponseAPDU:
        sm = self._sm
        if sm is None:
            return ResponseAPDU.status(SW.SM_DATA_OBJECTS_MISSING)
        try:
            plain = sm.unwrap_command(cmd)
        except SecureMessagingError as exc:
            self._sm = None
            return ResponseAPDU.status(getattr(exc, "sw", SW.SM_DATA_OBJECTS_INCORRECT))
        response = self._execute(plain, _Channel.BAC)
        if self._sm is not sm:  # the command itself ended the session
            return response
        return sm.wrap_response(response)

    def _process_scp(self, cmd: CommandAPDU) -> ResponseAPDU:
        if cmd.ins == INS_EXTERNAL_AUTHENTICATE:
            pending, self._scp_pending = self._scp_pending, None
            if pending is None:
                return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED)
            response, session = pending.external_authenticate(cmd)
            self._scp = session
            return response
        session = self._scp
        if session is None:
            return ResponseAPDU.status(SW.SECURITY_STATUS_NOT_SATISFIED)
        try:
            plain = session.unwrap_command(cmd)
        except SecureMessagingError as exc:
            self._scp = None
            return ResponseAPDU.status(getattr(exc, "sw", SW.SECURITY_STATUS_NOT_SATISFIED))
        response = self._execute(plain, _Channel.SCP)
        if self._scp is not session:
            return response
        wrapped = session.wrap_response(response)
        if self.image.lifecycle is Lifecycle.SECURED:
            self._scp = None  # the secure channel ends with the personalisation domain
        return wrapped

    # -- command dispatch ---------------------------------------------------------------------

    def _execute(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        ins = cmd.ins
        if ins == INS_SELECT:
            return self._select(cmd, channel)
        if ins in (INS_READ_BINARY, INS_READ_BINARY_ODD):
            return self._read_binary(cmd, channel)
        if ins == INS_UPDATE_BINARY:
            return self._update_binary(cmd, channel)
        if ins == INS_CREATE_FILE:
            return self._create_file(cmd, channel)
        if ins == INS_GET_CHALLENGE:
            return self._get_challenge(cmd, channel)
        if ins == INS_EXTERNAL_AUTHENTICATE:
            return self._bac_authenticate(cmd, channel)
        if ins == INS_INITIALIZE_UPDATE:
            return self._initialize_update(cmd, channel)
        if ins == INS_PUT_DATA:
            return self._put_data(cmd, channel)
        if ins == INS_SET_STATUS:
            return self._set_status(cmd, channel)
        return ResponseAPDU.status(SW.INS_NOT_SUPPORTED)

    # -- access rules -------------------------------------------------------------------------

    def _may_write(self, channel: _Channel) -> SW | None:
        if self.image.lifecycle is Lifecycle.SECURED:
            return SW.CONDITIONS_NOT_SATISFIED
        if channel is not _Channel.SCP:
            return SW.SECURITY_STATUS_NOT_SATISFIED
        return None

    def _may_read(self, channel: _Channel) -> SW | None:
        if self._df is _DF.MF:
            return None  # MF files (EF.CardAccess, EF.ATR/INFO) are free to read (9303-10 §3.11)
        if self.image.lifecycle is Lifecycle.SECURED:
            return None if channel is _Channel.BAC else SW.SECURITY_STATUS_NOT_SATISFIED
        return None if channel is _Channel.SCP else SW.SECURITY_STATUS_NOT_SATISFIED

    def _files(self) -> dict[int, EFile]:
        return self.image.app_files if self._df is _DF.APP else self.image.mf_files

    # -- ISO/IEC 7816-4 file commands ---------------------------------------------------------

    def _select(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        p1, p2, data = cmd.p1, cmd.p2, cmd.data
        if p2 not in (0x00, 0x04, 0x0C):
            return ResponseAPDU.status(SW.INCORRECT_P1P2)
        if p1 == 0x04:
            if data != EMRTD_AID:
                return ResponseAPDU.status(SW.FILE_NOT_FOUND)
            self._df, self._ef = _DF.APP, None
            return ResponseAPDU(b"", SW.OK)
        if p1 not in (0x00, 0x02):
            return ResponseAPDU.status(SW.INCORRECT_P1P2)
        if p1 == 0x00 and (not data or data == MF_FID.to_bytes(2, "big")):
            self._df, self._ef = _DF.MF, None
            return ResponseAPDU(b"", SW.OK)
        if len(data) != 2:
            return ResponseAPDU.status(SW.WRONG_LENGTH)
        if (
            self._df is _DF.APP
            and self.image.lifecycle is Lifecycle.SECURED
            and channel is not _Channel.BAC
        ):
            return ResponseAPDU.status(SW.SECURITY_STATUS_NOT_SATISFIED)
        ef = self._files().get(int.from_bytes(data, "big"))
        if ef is None:
            return ResponseAPDU.status(SW.FILE_NOT_FOUND)
        self._ef = ef
        if p2 == 0x0C:
            return ResponseAPDU(b"", SW.OK)
        fcp = tlv(
            0x62, tlv(0x80, ef.size.to_bytes(2, "big")) + tlv(0x82, b"\x01") + tlv(0x83, data)
        )
        return ResponseAPDU(fcp, SW.OK)

    def _address(self, cmd: CommandAPDU) -> tuple[EFile | None, int, SW | None]:
        """Resolve the file and offset of READ/UPDATE BINARY (7816-4 §11.3.3, even INS)."""
        if cmd.p1 & 0x80:
            if cmd.p1 & 0x60:
                return None, 0, SW.INCORRECT_P1P2
            sfi = cmd.p1 & 0x1F
            ef = next((f for f in self._files().values() if f.sfi == sfi), None)
            if ef is None:
                return None, 0, SW.FILE_NOT_FOUND
            self._ef = ef
            return ef, cmd.p2, None
        if self._ef is None:
            return None, 0, SW.COMMAND_NOT_ALLOWED_NO_EF
        return self._ef, (cmd.p1 << 8) | cmd.p2, None

    def _address_odd(self, cmd: CommandAPDU) -> tuple[EFile | None, int, SW | None]:
        """READ BINARY with odd INS (7816-4 §11.3.3): offset in DO'54', file in P1-P2."""
        try:
            dos = dict(iter_tlv(cmd.data))
        except ChipError:
            return None, 0, SW.WRONG_DATA
        offset_do = dos.get(0x54)
        if offset_do is None or not 1 <= len(offset_do) <= 3:
            return None, 0, SW.WRONG_DATA
        offset = int.from_bytes(offset_do, "big")
        p1p2 = (cmd.p1 << 8) | cmd.p2
        if p1p2 == 0:
            if self._ef is None:
                return None, 0, SW.COMMAND_NOT_ALLOWED_NO_EF
            return self._ef, offset, None
        if cmd.p1 == 0 and cmd.p2 & 0x07 == 0 and cmd.p2 >> 3:
            sfi = cmd.p2 >> 3
            ef = next((f for f in self._files().values() if f.sfi == sfi), None)
        else:
            ef = self._files().get(p1p2)
        if ef is None:
            return None, 0, SW.FILE_NOT_FOUND
        self._ef = ef
        return ef, offset, None

    def _read_binary(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        refused = self._may_read(channel)
        if refused is not None:
            return ResponseAPDU.status(refused)
        if cmd.ne is None:
            return ResponseAPDU.status(SW.WRONG_LENGTH)
        odd = cmd.ins == INS_READ_BINARY_ODD
        ef, offset, error = self._address_odd(cmd) if odd else self._address(cmd)
        if error is not None or ef is None:
            return ResponseAPDU.status(error or SW.FILE_NOT_FOUND)
        if offset >= ef.size:
            return ResponseAPDU.status(SW.WRONG_P1P2)
        ne = cmd.ne
        if odd:
            # Room for the DO'53' header around the data (up to 4 bytes).
            ne = max(ne - 4, 1) if ne not in MAX_READ_NE else ne
        data = bytes(ef.data[offset : offset + ne])
        if odd:
            data = tlv(0x53, data)
        short = offset + ne > ef.size and cmd.ne not in MAX_READ_NE
        return ResponseAPDU(data, SW.WARNING_END_OF_FILE if short else SW.OK)

    def _update_binary(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        refused = self._may_write(channel)
        if refused is not None:
            return ResponseAPDU.status(refused)
        if not cmd.data:
            return ResponseAPDU.status(SW.WRONG_LENGTH)
        ef, offset, error = self._address(cmd)
        if error is not None or ef is None:
            return ResponseAPDU.status(error or SW.FILE_NOT_FOUND)
        if offset > ef.size:
            return ResponseAPDU.status(SW.WRONG_P1P2)
        end = offset + len(cmd.data)
        if end > ef.size:
            return ResponseAPDU.status(SW.NOT_ENOUGH_MEMORY)
        ef.data[offset:end] = cmd.data
        self.stats.bytes_written += len(cmd.data)
        return ResponseAPDU(b"", SW.OK)

    def _create_file(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        """CREATE FILE (ISO/IEC 7816-9 §6.1) with an FCP template (7816-4 §7.4.3)."""
        refused = self._may_write(channel)
        if refused is not None:
            return ResponseAPDU.status(refused)
        if self._df is not _DF.APP:
            return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED)
        try:
            fcp = dict(iter_tlv(unwrap(cmd.data, 0x62)))
        except ChipError:
            return ResponseAPDU.status(SW.WRONG_DATA)
        size_do, descriptor, fid_do = fcp.get(0x80), fcp.get(0x82), fcp.get(0x83)
        if size_do is None or fid_do is None or len(fid_do) != 2 or not 1 <= len(size_do) <= 3:
            return ResponseAPDU.status(SW.WRONG_DATA)
        if descriptor is not None and descriptor[:1] != b"\x01":
            return ResponseAPDU.status(SW.FUNCTION_NOT_SUPPORTED)  # transparent EFs only
        sfi: int | None = None
        sfi_do = fcp.get(0x88)
        if sfi_do is not None:
            # 7816-4 table 12: tag 88, bits 8-4 carry the SFI, bits 3-1 are zero.
            if len(sfi_do) != 1 or sfi_do[0] & 0x07 or not sfi_do[0] >> 3:
                return ResponseAPDU.status(SW.WRONG_DATA)
            sfi = sfi_do[0] >> 3
        fid = int.from_bytes(fid_do, "big")
        size = int.from_bytes(size_do, "big")
        files = self.image.app_files
        if fid in (MF_FID, 0xFFFF, 0x0000):
            return ResponseAPDU.status(SW.WRONG_DATA)
        if fid in files or (sfi is not None and any(f.sfi == sfi for f in files.values())):
            return ResponseAPDU.status(SW.FILE_EXISTS)
        if self.image.used_memory + size > self.image.memory_limit:
            return ResponseAPDU.status(SW.NOT_ENOUGH_MEMORY)
        ef = EFile(fid, size, sfi)
        files[fid] = ef
        self._ef = ef
        self.image.lifecycle = Lifecycle.PERSONALISING
        return ResponseAPDU(b"", SW.OK)

    # -- access keys and life cycle -----------------------------------------------------------

    def _put_data(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        refused = self._may_write(channel)
        if refused is not None:
            return ResponseAPDU.status(refused)
        if (cmd.p1 << 8) | cmd.p2 != PUT_DATA_MRZ:
            return ResponseAPDU.status(SW.REFERENCED_DATA_NOT_FOUND)
        try:
            fields = [value for tag, value in iter_tlv(unwrap(cmd.data, 0x62)) if tag == 0x04]
            if len(fields) != 3:
                return ResponseAPDU.status(SW.WRONG_DATA)
            number, birth, expiry = (f.decode("ascii") for f in fields)
            if len(number) != 9 or len(birth) != 6 or len(expiry) != 6:
                return ResponseAPDU.status(SW.WRONG_DATA)
            self.image.bac_keys = bac_keys(mrz_information(number, birth, expiry))
        except (ChipError, UnicodeDecodeError):
            return ResponseAPDU.status(SW.WRONG_DATA)
        return ResponseAPDU(b"", SW.OK)

    def _set_status(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        refused = self._may_write(channel)
        if refused is not None:
            return ResponseAPDU.status(refused)
        if cmd.p1 != SET_STATUS_ISD or cmd.p2 != STATE_SECURED:
            return ResponseAPDU.status(SW.INCORRECT_P1P2)
        if self.image.bac_keys is None:
            # A locked chip without access keys could never be read again.
            return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED)
        self.image.lifecycle = Lifecycle.SECURED
        return ResponseAPDU(b"", SW.OK)

    # -- authentication -----------------------------------------------------------------------

    def _get_challenge(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        if cmd.p1 or cmd.p2:
            return ResponseAPDU.status(SW.INCORRECT_P1P2)
        if cmd.ne != 8:
            return ResponseAPDU.status(SW.WRONG_LENGTH)
        if self._df is not _DF.APP or self.image.bac_keys is None:
            return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED)
        k_enc, k_mac = self.image.bac_keys
        self._bac = BacChip(k_enc, k_mac, self.rng)
        return ResponseAPDU(self._bac.get_challenge(), SW.OK)

    def _bac_authenticate(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        """EXTERNAL AUTHENTICATE of BAC (ICAO 9303-11 §4.3.4.2); a wrong MAC or RND answers 6300."""
        bac, self._bac = self._bac, None
        if bac is None or channel is not _Channel.PLAIN:
            return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED)
        if len(cmd.data) != 40:
            return ResponseAPDU.status(SW.WRONG_LENGTH)
        try:
            data, session = bac.external_authenticate(cmd.data)
        except AuthenticationError:
            return ResponseAPDU.status(SW.VERIFICATION_FAILED)
        self._sm = session
        return ResponseAPDU(data, SW.OK)

    def _initialize_update(self, cmd: CommandAPDU, channel: _Channel) -> ResponseAPDU:
        if channel is not _Channel.PLAIN or cmd.cla != 0x80:
            return ResponseAPDU.status(SW.CLA_NOT_SUPPORTED)
        if self.image.lifecycle is Lifecycle.SECURED:
            return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED)
        card = Scp03Card(
            self.image.scp03_keys,
            kdd=self.image.serial,
            sequence_counter=self.image.scp03_sequence_counter,
            aid=EMRTD_AID,
            rng=self.rng,
        )
        response = card.initialize_update(cmd)
        self.image.scp03_sequence_counter = card.sequence_counter
        self._scp = None
        self._scp_pending = card if response.ok else None
        return response
