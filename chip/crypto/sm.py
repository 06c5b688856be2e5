"""ICAO Doc 9303 Part 11 secure messaging (9.8), sans-I/O, for either end of the link.

One object is one session seen from one side: the reader calls :meth:`~SecureMessaging.wrap_command`
and :meth:`~SecureMessaging.unwrap_response`, the chip :meth:`~SecureMessaging.unwrap_command` and
:meth:`~SecureMessaging.wrap_response`.  Each call advances the send sequence counter (SSC) once,
before its MAC, so both ends stay in step (Appendix D.4 shows the sequence).

Protected command and response (9.8.4; the data objects are those of ISO/IEC 7816-4 SM)::

    CLA' INS P1 P2 | Lc' | [DO'87' or DO'85'] [DO'97'] DO'8E' | Le' ('00' or '0000')
                          [DO'87' or DO'85'] DO'99' DO'8E'      | SW1 SW2

- DO'87' = 01 || E(pad(data)) for an even INS, DO'85' = E(pad(data)) for an odd INS (9.8.4);
- DO'97' = Le in one byte (Ne <= 256, '00' = 256) or two bytes ('0000' = 65536);
- DO'99' = the status word; DO'8E' = 8-byte MAC over pad(SSC || pad(header) || DOs) for a
  command and pad(SSC || DOs) for a response.

The 3DES and AES variants differ only in block size (and so SSC size and padding), IV and MAC:
3DES uses a zero IV and the retail MAC; AES uses IV = E(KS_Enc, SSC) and CMAC truncated to 8 bytes.

Rules (in the manner of h11):

1. Any missing or incorrect data object, MAC or padding raises :class:`SecureMessagingError`
   and kills the session; a dead session refuses every further call.  On the chip side the
   error is a :class:`CardSecureMessagingError` whose ``sw`` (6987 objects missing, 6988 objects
   incorrect) is the status word to answer with, unprotected, as 9.8 requires.
2. The MAC is checked before anything is decrypted, so padding errors leak nothing.
3. Caller misuse (a command that is already protected, one too long to protect) is a
   ``ValueError`` and changes nothing: the session stays alive and the SSC does not advance.
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from typing import ClassVar

from chip.apdu import (
    EXTENDED_MAX,
    EXTENDED_MAX_NE,
    SHORT_MAX_NC,
    SHORT_MAX_NE,
    CommandAPDU,
    ResponseAPDU,
)
from chip.crypto.aes import Aes, AesCmac
from chip.crypto.des import RetailMac, Tdes
from chip.crypto.padding import pad, unpad
from chip.errors import CardSecureMessagingError, EncodingError, SecureMessagingError
from chip.tlv import encode_length, read_tlv

__all__ = ["AesSecureMessaging", "SecureMessaging", "TdesSecureMessaging"]

SW_SM_MISSING = 0x6987
SW_SM_INCORRECT = 0x6988

_DO_DATA = 0x87  # padding-content indicator || cryptogram (even INS)
_DO_DATA_ODD = 0x85  # cryptogram only (odd INS, whose data is BER-TLV)
_DO_LE = 0x97
_DO_SW = 0x99
_DO_MAC = 0x8E
_PADDING_INDICATOR = 0x01  # ISO/IEC 7816-4: padded as ISO/IEC 9797-1 method 2
_MAC_LENGTH = 8
_DO_MAC_HEADER = bytes((_DO_MAC, _MAC_LENGTH))
_TOO_LONG = "data too long to protect in one APDU (use command chaining or shorter reads)"
# The order data objects must come in (9.8.4), for a command (DO'97') and a response (DO'99').
_RANKS = {
    middle: {_DO_DATA: 0, _DO_DATA_ODD: 0, middle: 1, _DO_MAC: 2} for middle in (_DO_LE, _DO_SW)
}


def _encode_le(ne: int) -> bytes:
    if ne <= SHORT_MAX_NE:
        return bytes((ne & 0xFF,))
    return (ne & 0xFFFF).to_bytes(2, "big")


def _protect_cla(cla: int) -> int:
    # ISO/IEC 7816-4 5.4.1: in the further interindustry class (01xx xxxx) b6 flags SM; elsewhere
    # b4-b3 = 11 (SM, header authenticated), giving '0C' on the basic channel (9.8.4).
    # Chaining and logical-channel bits are kept.
    flag = 0x20 if cla & 0xC0 == 0x40 else 0x0C
    if cla & flag:
        raise ValueError("command already carries secure-messaging indication bits")
    if cla | flag == 0xFF:
        raise ValueError("CLA FF is invalid (ISO/IEC 7816-3 reserves it for PPS)")
    return cla | flag


def _unprotect_cla(cla: int) -> int | None:
    flag = 0x20 if cla & 0xC0 == 0x40 else 0x0C
    if cla == 0xFF or cla & flag != flag:
        return None
    return cla & ~flag


class SecureMessaging(ABC):
    """An ICAO 9303 secure-messaging session, one side of it; see the module docstring."""

    __slots__ = ("_dead", "_odd_ins", "_ssc")

    block: ClassVar[int]

    def __init__(self, ssc: int) -> None:
        if not 0 <= ssc < 1 << (8 * self.block):
            raise ValueError(f"the SSC is a {self.block}-byte unsigned integer")
        self._ssc = ssc
        self._dead = False
        self._odd_ins = False

    @property
    def ssc(self) -> int:
        """The send sequence counter after the last message produced or accepted."""
        return self._ssc

    @property
    def dead(self) -> bool:
        """True after any secure-messaging error: the session refuses every further call."""
        return self._dead

    # -- what the variants supply ---------------------------------------------------------------

    @abstractmethod
    def _encrypt(self, data: bytes, ssc: bytes) -> bytes: ...

    @abstractmethod
    def _decrypt(self, data: bytes, ssc: bytes) -> bytes: ...

    @abstractmethod
    def _mac(self, padded: bytes) -> bytes: ...

    # -- reader side ----------------------------------------------------------------------------

    def wrap_command(self, cmd: CommandAPDU) -> CommandAPDU:
        """Protect a plain command (reader side)."""
        step = "sm.wrap_command"
        self._require_alive(step, card=False)
        cla = _protect_cla(cmd.cla)
        ssc = self._ssc_bytes(self._ssc + 1)
        body = bytearray()
        if cmd.data:
            body += self._data_object(cmd.ins, cmd.data, ssc)
        if cmd.ne is not None:
            le = _encode_le(cmd.ne)
            body += bytes((_DO_LE, len(le))) + le
        header = bytes((cla, cmd.ins, cmd.p1, cmd.p2))
        mac = self._mac(pad(ssc + pad(header, self.block) + body, self.block))
        body += _DO_MAC_HEADER + mac
        if len(body) > EXTENDED_MAX:
            raise ValueError(_TOO_LONG)
        extended = len(body) > SHORT_MAX_NC or (cmd.ne is not None and cmd.ne > SHORT_MAX_NE)
        protected = CommandAPDU(
            cla, cmd.ins, cmd.p1, cmd.p2, bytes(body), EXTENDED_MAX_NE if extended else SHORT_MAX_NE
        )
        self._advance()
        self._odd_ins = bool(cmd.ins & 1)
        return protected

    def unwrap_response(self, resp: ResponseAPDU) -> ResponseAPDU:
        """Check and decrypt a protected response (reader side)."""
        step = "sm.unwrap_response"
        self._require_alive(step, card=False)
        if not resp.data:
            # 9.8: a chip that detects an SM error answers 6987/6988 in plain and ends the session.
            raise self._fail(
                SW_SM_MISSING,
                f"response carries no SM data objects (card answered SW {resp.sw:04X})",
                step,
                card=False,
            )
        data_do, sw_value, mac_at, mac = self._parse(resp.data, _DO_SW, step, card=False)
        if sw_value is None:
            raise self._fail(SW_SM_MISSING, "response lacks DO'99'", step, card=False)
        ssc = self._advance()
        self._verify(ssc + resp.data[:mac_at], mac, step, card=False)
        if len(sw_value) != 2:
            raise self._fail(SW_SM_INCORRECT, "DO'99' is not two bytes", step, card=False)
        sw = int.from_bytes(sw_value, "big")
        if sw != resp.sw:
            # Only DO'99' is authenticated; a trailer that disagrees with it has been altered.
            raise self._fail(
                SW_SM_INCORRECT, "status word differs from the one in DO'99'", step, card=False
            )
        data = self._open(data_do, ssc, step, card=False) if data_do is not None else b""
        return ResponseAPDU(data, sw)

    # -- chip side ------------------------------------------------------------------------------

    def unwrap_command(self, cmd: CommandAPDU) -> CommandAPDU:
        """Check and decrypt a protected command (chip side)."""
        step = "sm.unwrap_command"
        self._require_alive(step, card=True)
        cla = _unprotect_cla(cmd.cla)
        if cla is None:
            raise self._fail(SW_SM_MISSING, "command is not protected", step, card=True)
        if cmd.ne not in (SHORT_MAX_NE, EXTENDED_MAX_NE):
            # 9.8.4: Le' is '00' or '0000'; it is outside the MAC, so anything else is tampering.
            raise self._fail(
                SW_SM_INCORRECT, "protected command must end in Le' 00", step, card=True
            )
        if not cmd.data:
            raise self._fail(SW_SM_MISSING, "command carries no data objects", step, card=True)
        data_do, le_value, mac_at, mac = self._parse(cmd.data, _DO_LE, step, card=True)
        ssc = self._advance()
        header = pad(cmd.header, self.block)
        self._verify(ssc + header + cmd.data[:mac_at], mac, step, card=True)
        ne: int | None = None
        if le_value is not None:
            if len(le_value) == 1:
                ne = le_value[0] or SHORT_MAX_NE
            elif len(le_value) == 2:
                ne = int.from_bytes(le_value, "big") or EXTENDED_MAX_NE
            else:
                raise self._fail(SW_SM_INCORRECT, "DO'97' is not one or two bytes", step, card=True)
        data = self._open(data_do, ssc, step, card=True) if data_do is not None else b""
        self._odd_ins = bool(cmd.ins & 1)
        return CommandAPDU(cla, cmd.ins, cmd.p1, cmd.p2, data, ne)

    def wrap_response(self, resp: ResponseAPDU) -> ResponseAPDU:
        """Protect a plain response (chip side); odd-INS commands get DO'85' (9.8.4)."""
        self._require_alive("sm.wrap_response", card=True)
        ssc = self._ssc_bytes(self._ssc + 1)
        body = bytearray()
        if resp.data:
            body += self._data_object(1 if self._odd_ins else 0, resp.data, ssc)
        body += bytes((_DO_SW, 2)) + resp.sw.to_bytes(2, "big")
        body += _DO_MAC_HEADER + self._mac(pad(ssc + body, self.block))
        if len(body) > EXTENDED_MAX_NE:
            raise ValueError(_TOO_LONG)
        self._advance()
        return ResponseAPDU(bytes(body), resp.sw)

    # -- shared machinery -----------------------------------------------------------------------

    def _ssc_bytes(self, value: int) -> bytes:
        return (value % (1 << (8 * self.block))).to_bytes(self.block, "big")

    def _advance(self) -> bytes:
        encoded = self._ssc_bytes(self._ssc + 1)
        self._ssc = int.from_bytes(encoded, "big")
        return encoded

    def _data_object(self, ins: int, data: bytes, ssc: bytes) -> bytes:
        padded = pad(data, self.block)
        if len(padded) >= EXTENDED_MAX:
            raise ValueError(_TOO_LONG)
        cryptogram = self._encrypt(padded, ssc)
        if ins & 1:
            return bytes((_DO_DATA_ODD,)) + encode_length(len(cryptogram)) + cryptogram
        return (
            bytes((_DO_DATA,))
            + encode_length(len(cryptogram) + 1)
            + bytes((_PADDING_INDICATOR,))
            + cryptogram
        )

    def _open(self, data_do: tuple[int, bytes], ssc: bytes, step: str, *, card: bool) -> bytes:
        tag, value = data_do
        if tag == _DO_DATA:
            if not value or value[0] != _PADDING_INDICATOR:
                raise self._fail(
                    SW_SM_INCORRECT, "DO'87' padding indicator is not 01", step, card=card
                )
            value = value[1:]
        if not value or len(value) % self.block:
            raise self._fail(SW_SM_INCORRECT, "cryptogram is not whole blocks", step, card=card)
        try:
            return unpad(self._decrypt(value, ssc), block=self.block)
        except EncodingError as exc:
            raise self._fail(SW_SM_INCORRECT, "bad padding in cryptogram", step, card=card) from exc

    def _verify(self, mac_input: bytes, mac: bytes, step: str, *, card: bool) -> None:
        if not hmac.compare_digest(self._mac(pad(mac_input, self.block)), mac):
            raise self._fail(SW_SM_INCORRECT, "MAC in DO'8E' does not verify", step, card=card)

    def _parse(
        self, body: bytes, middle: int, step: str, *, card: bool
    ) -> tuple[tuple[int, bytes] | None, bytes | None, int, bytes]:
        """Split ``[DO'87'|DO'85'] [DO'middle'] DO'8E'`` (this order, 9.8.4).

        Returns the data object (tag, value), the middle object's value, the offset of DO'8E'
        (the MAC covers everything before it) and the MAC.
        """
        rank = _RANKS[middle]
        data_do: tuple[int, bytes] | None = None
        middle_value: bytes | None = None
        last_rank = -1
        pos, end = 0, len(body)
        while pos < end:
            start = pos
            try:
                tag, value, pos = read_tlv(body, pos)
            except EncodingError as exc:
                raise self._fail(SW_SM_INCORRECT, "malformed data object", step, card=card) from exc
            if tag not in rank or rank[tag] <= last_rank:
                raise self._fail(
                    SW_SM_INCORRECT, f"unexpected data object {tag:02X}", step, card=card
                )
            last_rank = rank[tag]
            if tag == _DO_MAC:
                if pos != end:
                    raise self._fail(SW_SM_INCORRECT, "data after DO'8E'", step, card=card)
                if len(value) != _MAC_LENGTH:
                    raise self._fail(SW_SM_INCORRECT, "DO'8E' is not 8 bytes", step, card=card)
                return data_do, middle_value, start, value
            if tag == middle:
                middle_value = value
            else:
                data_do = (tag, value)
        raise self._fail(SW_SM_MISSING, "DO'8E' missing", step, card=card)

    def _require_alive(self, step: str, *, card: bool) -> None:
        if self._dead:
            message = "secure-messaging session is dead after an earlier error"
            if card:
                raise CardSecureMessagingError(message, sw=SW_SM_INCORRECT, step=step)
            raise SecureMessagingError(message, step=step)

    def _fail(self, sw: int, message: str, step: str, *, card: bool) -> SecureMessagingError:
        self._dead = True
        if card:
            return CardSecureMessagingError(message, sw=sw, step=step)
        return SecureMessagingError(message, step=step)

    def __repr__(self) -> str:
        # Keys and the SSC (which carries RND.IFD bits under BAC) stay out of reprs.
        return f"{type(self).__name__}(<keys hidden>, dead={self._dead})"


class TdesSecureMessaging(SecureMessaging):
    """3DES secure messaging after BAC: 8-byte SSC, zero IV, retail MAC (9.8; App. D.4)."""

    __slots__ = ("_cipher", "_mac_key")

    block = 8
    _ZERO_IV = bytes(8)

    def __init__(self, ks_enc: bytes, ks_mac: bytes, ssc: int) -> None:
        super().__init__(ssc)
        self._cipher = Tdes(ks_enc)
        self._mac_key = RetailMac(ks_mac)

    def _encrypt(self, data: bytes, ssc: bytes) -> bytes:
        return self._cipher.encrypt(data, self._ZERO_IV)

    def _decrypt(self, data: bytes, ssc: bytes) -> bytes:
        return self._cipher.decrypt(data, self._ZERO_IV)

    def _mac(self, padded: bytes) -> bytes:
        return self._mac_key.mac(padded, padded=True)


class AesSecureMessaging(SecureMessaging):
    """AES secure messaging after PACE: 16-byte SSC, IV = E(KS_Enc, SSC), CMAC truncated to 8."""

    __slots__ = ("_cipher", "_mac_key")

    block = 16

    def __init__(self, ks_enc: bytes, ks_mac: bytes, ssc: int) -> None:
        super().__init__(ssc)
        self._cipher = Aes(ks_enc)
        self._mac_key = AesCmac(ks_mac)

    def _encrypt(self, data: bytes, ssc: bytes) -> bytes:
        return self._cipher.cbc_encrypt(data, self._cipher.ecb_encrypt(ssc))

    def _decrypt(self, data: bytes, ssc: bytes) -> bytes:
        return self._cipher.cbc_decrypt(data, self._cipher.ecb_encrypt(ssc))

    def _mac(self, padded: bytes) -> bytes:
        return self._mac_key.mac(padded)[:_MAC_LENGTH]
