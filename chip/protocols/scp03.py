"""GlobalPlatform Secure Channel Protocol '03' (AES), host side and card side, sans-I/O.

Follows GP Card Specification v2.3 Amendment D v1.2 (clause numbers below are that document's)
in S8 mode: 8-byte challenges, cryptograms and MACs, the only mode before v1.2 (Table 5-1).
S16 mode is not implemented; the host refuses a card that announces it.

Host (the perso station)::

    level = SecurityLevel.C_MAC | SecurityLevel.C_DECRYPTION
    session = run_flow(open_scp03(keys, security_level=level, rng=system_random), transport)
    response = session.unwrap_response(send(session.wrap_command(command)))

Card (the chip emulator): :class:`Scp03Card` answers INITIALIZE UPDATE and EXTERNAL AUTHENTICATE
and hands out a :class:`Scp03CardSession` that unwraps commands and wraps responses.

Invariants both sides keep:

1. The MAC chaining value starts at 16 x 00 for EXTERNAL AUTHENTICATE and is then the full
   16-byte CMAC of the last command (6.2.3, 6.2.4); R-MACs use it but never move it (6.2.5).
2. The encryption counter starts at 1 with the first command after EXTERNAL AUTHENTICATE and
   moves on with *every* command, with or without data (6.2.6); a response's ICV uses its
   command's counter with the top byte set to 80 (6.2.7).
3. Any secure messaging failure kills the session: it refuses everything afterwards (5.6).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntFlag

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from chip.apdu import SHORT_MAX_NC, SHORT_MAX_NE, SW, CommandAPDU, ResponseAPDU
from chip.crypto.cbc import ChainedCbc
from chip.crypto.sp800108 import (
    CARD_CHALLENGE,
    CARD_CRYPTOGRAM,
    HOST_CRYPTOGRAM,
    S_ENC,
    S_MAC,
    S_RMAC,
    scp03_kdf,
)
from chip.errors import (
    AuthenticationError,
    CardSecureMessagingError,
    EncodingError,
    ProtocolError,
    SecureMessagingError,
    StatusWordError,
)
from chip.random import RandomSource
from chip.transport.base import Flow

__all__ = [
    "Scp03Card",
    "Scp03CardSession",
    "Scp03HostSession",
    "SecurityLevel",
    "StaticKeys",
    "open_scp03",
]

INS_INITIALIZE_UPDATE = 0x50
INS_EXTERNAL_AUTHENTICATE = 0x82
SCP03_ID = 0x03

# "i" parameter bits, Table 5-1.
I_S16 = 0x01
I_PSEUDO_RANDOM = 0x10
I_R_MAC = 0x20
I_R_ENCRYPTION = 0x40

_BLOCK = 16
_S8 = 8
_ZERO_CHAIN = bytes(_BLOCK)
_AES_KEY_LENGTHS = frozenset((16, 24, 32))
_MAX_SEQUENCE_COUNTER = 0xFFFFFF


class SecurityLevel(IntFlag):
    """EXTERNAL AUTHENTICATE P1 (Table 7-6)."""

    NONE = 0x00
    C_MAC = 0x01
    C_DECRYPTION = 0x02
    R_MAC = 0x10
    R_ENCRYPTION = 0x20


# Table 7-6 lists exactly these combinations; C-DECRYPTION needs C-MAC, R-ENCRYPTION needs both
# C-DECRYPTION and R-MAC (5.5).
_VALID_LEVELS = frozenset((0x00, 0x01, 0x03, 0x11, 0x13, 0x33))


@dataclass(frozen=True, slots=True)
class StaticKeys:
    """One SCP03 key set (Key-ENC, Key-MAC, Key-DEK) and its key version number (6.1)."""

    enc: bytes
    mac: bytes
    dek: bytes
    kvn: int = 0x30

    def __post_init__(self) -> None:
        # 6.1: "at least one complete key set ... having the same length".
        if len(self.enc) not in _AES_KEY_LENGTHS:
            raise ValueError("SCP03 keys must be 16, 24 or 32 bytes")
        if len(self.mac) != len(self.enc) or len(self.dek) != len(self.enc):
            raise ValueError("Key-ENC, Key-MAC and Key-DEK must have the same length")
        if not 0x01 <= self.kvn <= 0xFF:
            raise ValueError("key version number must be 01..FF")

    def __repr__(self) -> str:
        return f"StaticKeys(kvn={self.kvn:02X}, aes={len(self.enc) * 8})"


@dataclass(frozen=True, slots=True)
class _SessionKeys:
    enc: bytes
    mac: bytes
    rmac: bytes

    def __repr__(self) -> str:
        return "_SessionKeys(<hidden>)"

    @classmethod
    def derive(cls, keys: StaticKeys, context: bytes) -> _SessionKeys:
        # 6.2.1, Table 6-2: S-ENC from Key-ENC, S-MAC and S-RMAC from Key-MAC, L = key length.
        bits = len(keys.enc) * 8
        return cls(
            enc=scp03_kdf(keys.enc, S_ENC, bits, context),
            mac=scp03_kdf(keys.mac, S_MAC, bits, context),
            rmac=scp03_kdf(keys.mac, S_RMAC, bits, context),
        )


def _cryptograms(keys: _SessionKeys, context: bytes) -> tuple[bytes, bytes]:
    """(card cryptogram, host cryptogram), 6.2.2.2 and 6.2.2.3."""
    return (
        scp03_kdf(keys.mac, CARD_CRYPTOGRAM, _S8 * 8, context),
        scp03_kdf(keys.mac, HOST_CRYPTOGRAM, _S8 * 8, context),
    )


def _mac_cla(cla: int) -> int:
    # 6.2.4: for the MAC the logical channel is zeroed and GP proprietary SM is shown as b3 = 1,
    # b4 = 0, whatever the interindustry coding; b8 (proprietary) and b5 (chaining) are kept.
    return (cla & 0x90) | 0x04


def _secured_cla(cla: int) -> int:
    # ISO/IEC 7816-4 5.4.1: first interindustry CLA shows SM in b4-b3, further interindustry
    # (b7 = 1, channels 4..19) in b6 (GP Card Spec v2.3 Tables 11-11 and 11-12).
    if cla & 0x40:
        return cla | 0x20
    return (cla & ~0x0C) | 0x04


def _plain_cla(cla: int) -> int:
    if cla & 0x40:
        return cla & ~0x20
    return cla & ~0x0C


def _lc_field(nc: int, ne: int | None) -> bytes:
    # The MAC covers the header "as transmitted" (6.2.4); CommandAPDU.to_bytes chooses extended
    # length by the same rule (as does GlobalPlatformPro's encodeLcLength(lc, le)), so both
    # ends agree on the Lc coding.
    if nc > SHORT_MAX_NC or (ne is not None and ne > SHORT_MAX_NE):
        return b"\x00" + nc.to_bytes(2, "big")
    return bytes((nc,))


def _response_protected(sw: int) -> bool:
    # 6.2.5: no R-MAC on error status words; only 9000 and warnings 62xx/63xx are protected.
    return sw == SW.OK or (sw >> 8) in (0x62, 0x63)


def _pad(data: bytes) -> bytes:
    # GP Card Spec v2.3 B.2.3: 80 then 00 up to a multiple of 16 (always at least one byte).
    return data + b"\x80" + bytes(_BLOCK - 1 - len(data) % _BLOCK)


def _unpad(padded: bytes) -> bytes | None:
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(padded) - len(stripped) >= _BLOCK:
        return None
    return stripped[:-1]


class _Channel:
    """The cryptographic state shared by both ends: session keys, chaining value, counter."""

    __slots__ = ("_cmac", "_decryptor", "_ecb", "_encryptor", "_rmac", "chain", "counter")

    def __init__(self, keys: _SessionKeys, chain: bytes) -> None:
        # Keyed once per session and copied per APDU: no key schedule in the per-command path,
        # and one CBC context per direction (chip.crypto.cbc: each call starts from its ICV).
        enc = algorithms.AES(keys.enc)
        self._cmac = CMAC(algorithms.AES(keys.mac))
        self._rmac = CMAC(algorithms.AES(keys.rmac))
        self._ecb = Cipher(enc, modes.ECB()).encryptor()  # noqa: S305
        self._encryptor = ChainedCbc(enc, _BLOCK, decrypt=False)
        self._decryptor = ChainedCbc(enc, _BLOCK, decrypt=True)
        self.chain = chain
        self.counter = 0

    def command_mac(self, message: bytes) -> bytes:
        mac = self._cmac.copy()
        mac.update(self.chain + message)
        return mac.finalize()

    def response_mac(self, message: bytes) -> bytes:
        mac = self._rmac.copy()
        mac.update(self.chain + message)
        return mac.finalize()[:_S8]

    def _icv(self, *, response: bool) -> bytes:
        block = bytearray(self.counter.to_bytes(_BLOCK, "big"))
        if response:
            # 6.2.7: top byte 80 keeps response ICVs apart from command ICVs.
            block[0] = 0x80
        return self._ecb.update(bytes(block))

    def encrypt(self, data: bytes, *, response: bool) -> bytes:
        return self._encryptor.run(_pad(data), self._icv(response=response))

    def decrypt(self, data: bytes, *, response: bool) -> bytes | None:
        if not data or len(data) % _BLOCK:
            return None
        return _unpad(self._decryptor.run(data, self._icv(response=response)))


# -- host side ------------------------------------------------------------------------------


class Scp03HostSession:
    """The off-card end of an open secure channel: wraps commands, unwraps responses."""

    def __init__(
        self,
        channel: _Channel,
        security_level: SecurityLevel,
        *,
        kdd: bytes,
        key_version: int,
        sequence_counter: int | None,
    ) -> None:
        self._channel = channel
        self._level = security_level
        # The level's bits, tested on every APDU, as plain booleans (IntFlag & is slow).
        self._c_mac = bool(security_level & SecurityLevel.C_MAC)
        self._c_dec = bool(security_level & SecurityLevel.C_DECRYPTION)
        self._r_mac = bool(security_level & SecurityLevel.R_MAC)
        self._r_enc = bool(security_level & SecurityLevel.R_ENCRYPTION)
        self._dead = False
        self.kdd = kdd
        self.key_version = key_version
        self.sequence_counter = sequence_counter

    def __repr__(self) -> str:
        return f"Scp03HostSession(security_level={int(self._level):02X}, dead={self._dead})"

    @property
    def security_level(self) -> SecurityLevel:
        return self._level

    @property
    def dead(self) -> bool:
        return self._dead

    def _fail(self, message: str, step: str) -> SecureMessagingError:
        self._dead = True
        return SecureMessagingError(message, step=step)

    def wrap_command(self, cmd: CommandAPDU) -> CommandAPDU:
        """Apply C-DECRYPTION (6.2.6) and C-MAC (6.2.4) as the security level asks.

        ``cmd`` is the plain command (CLA without secure messaging indication); Le is kept as
        given, so ask for Le 00 when R-MAC or R-ENCRYPTION will lengthen the response.
        """
        if self._dead:
            raise SecureMessagingError("secure channel is closed", step="scp03.wrap_command")
        if not self._c_mac:
            return cmd
        channel = self._channel
        channel.counter += 1
        data = cmd.data
        if self._c_dec and data:
            data = channel.encrypt(data, response=False)
        nc = len(data) + _S8
        if nc > 0xFFFF:
            raise ValueError("command data too long to carry padding and a C-MAC")
        header = bytes((_mac_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2)) + _lc_field(nc, cmd.ne)
        mac = channel.command_mac(header + data)
        channel.chain = mac
        return CommandAPDU(_secured_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2, data + mac[:_S8], cmd.ne)

    def unwrap_response(self, resp: ResponseAPDU) -> ResponseAPDU:
        """Check the R-MAC (6.2.5) and undo R-ENCRYPTION (6.2.7) as the security level asks."""
        if self._dead:
            raise SecureMessagingError("secure channel is closed", step="scp03.unwrap_response")
        if not self._r_mac or not _response_protected(resp.sw):
            return resp
        if len(resp.data) < _S8:
            raise self._fail("response carries no R-MAC", "scp03.unwrap_response")
        body, rmac = resp.data[:-_S8], resp.data[-_S8:]
        expected = self._channel.response_mac(body + resp.sw.to_bytes(2, "big"))
        if not hmac.compare_digest(expected, rmac):
            raise self._fail("R-MAC does not verify", "scp03.unwrap_response")
        if self._r_enc and body:
            plain = self._channel.decrypt(body, response=True)
            if plain is None:
                raise self._fail("response cryptogram malformed", "scp03.unwrap_response")
            body = plain
        return ResponseAPDU(body, resp.sw)


def open_scp03(
    keys: StaticKeys | Callable[[bytes], StaticKeys],
    *,
    security_level: SecurityLevel,
    rng: RandomSource,
    kvn: int = 0,
) -> Flow[Scp03HostSession]:
    """Explicit secure channel initiation (5.2, Figure 5-1) as an APDU flow.

    ``keys`` may be a callable taking the card's key diversification data (the first 10 bytes
    of the INITIALIZE UPDATE response) and returning that card's static keys.
    """
    level = SecurityLevel(security_level)
    if int(level) not in _VALID_LEVELS:
        raise ValueError(f"security level {int(level):02X} is not one of Table 7-6")
    if not 0 <= kvn <= 0xFF:
        raise ValueError("key version number must be a byte")
    host_challenge = rng(_S8)
    if len(host_challenge) != _S8:
        raise ValueError("random source returned the wrong length")

    # 7.1.1.2: P1 = key version (00: first available), P2 = 00, host challenge, Le 00.
    resp = yield CommandAPDU(0x80, INS_INITIALIZE_UPDATE, kvn, 0x00, host_challenge, ne=256)
    if not resp.ok:
        raise StatusWordError(resp.sw, step="scp03.initialize_update")
    data = resp.data
    if len(data) < 13:
        raise EncodingError("INITIALIZE UPDATE response too short", field="key information")
    # Table 7-3: KDD (10) || key information (kvn, 03, i) || challenge || cryptogram [|| seq (3)].
    kdd, card_kvn, scp_id, i_param = data[:10], data[10], data[11], data[12]
    step = "scp03.initialize_update"
    if scp_id != SCP03_ID:
        raise ProtocolError(f"card answered for SCP{scp_id:02X}, not SCP03", step=step)
    if i_param & I_S16:
        raise ProtocolError("card is in S16 mode, which this host does not speak", step=step)
    if kvn and card_kvn != kvn:
        raise ProtocolError("card chose another key version than requested", step=step)
    if level & SecurityLevel.R_MAC and not i_param & I_R_MAC:
        raise ProtocolError("card does not support R-MAC", step=step)
    if level & SecurityLevel.R_ENCRYPTION and not i_param & I_R_ENCRYPTION:
        raise ProtocolError("card does not support R-ENCRYPTION", step=step)
    pseudo_random = bool(i_param & I_PSEUDO_RANDOM)
    if len(data) != (32 if pseudo_random else 29):
        raise EncodingError("INITIALIZE UPDATE response has the wrong length", field="response")
    card_challenge, card_cryptogram = data[13:21], data[21:29]
    sequence_counter = int.from_bytes(data[29:32], "big") if pseudo_random else None

    static = keys if isinstance(keys, StaticKeys) else keys(kdd)
    context = host_challenge + card_challenge
    session_keys = _SessionKeys.derive(static, context)
    expected_card, host_cryptogram = _cryptograms(session_keys, context)
    if not hmac.compare_digest(expected_card, card_cryptogram):
        raise AuthenticationError("card cryptogram does not verify", step="scp03.card_cryptogram")

    # 6.2.3 / 7.1.2: EXTERNAL AUTHENTICATE is always C-MACed, from a zero chaining value, and
    # never encrypted whatever the level it asks for.
    channel = _Channel(session_keys, _ZERO_CHAIN)
    header = bytes((0x84, INS_EXTERNAL_AUTHENTICATE, int(level), 0x00, 2 * _S8))
    mac = channel.command_mac(header + host_cryptogram)
    channel.chain = mac
    resp = yield CommandAPDU(
        0x84, INS_EXTERNAL_AUTHENTICATE, int(level), 0x00, host_cryptogram + mac[:_S8]
    )
    if not resp.ok:
        raise StatusWordError(resp.sw, step="scp03.external_authenticate")
    return Scp03HostSession(
        channel, level, kdd=kdd, key_version=card_kvn, sequence_counter=sequence_counter
    )


# -- card side ------------------------------------------------------------------------------


class Scp03CardSession:
    """The card end of an open secure channel: unwraps commands, wraps responses."""

    def __init__(self, channel: _Channel, security_level: SecurityLevel) -> None:
        self._channel = channel
        self._level = security_level
        self._dead = False

    def __repr__(self) -> str:
        return f"Scp03CardSession(security_level={int(self._level):02X}, dead={self._dead})"

    @property
    def security_level(self) -> SecurityLevel:
        return self._level

    @property
    def dead(self) -> bool:
        return self._dead

    def terminate(self) -> None:
        """End the session (5.6: new INITIALIZE UPDATE, new selection, card reset)."""
        self._dead = True

    def _refuse(self, message: str) -> CardSecureMessagingError:
        # 5.6: a security error aborts the session; the command is refused with 6982.
        self._dead = True
        return CardSecureMessagingError(
            message, sw=SW.SECURITY_STATUS_NOT_SATISFIED, step="scp03.unwrap_command"
        )

    def unwrap_command(self, cmd: CommandAPDU) -> CommandAPDU:
        """Verify the C-MAC (6.2.4) and undo C-DECRYPTION (6.2.6); refuse with SW 6982."""
        if self._dead:
            raise CardSecureMessagingError(
                "secure channel is closed",
                sw=SW.SECURITY_STATUS_NOT_SATISFIED,
                step="scp03.unwrap_command",
            )
        level = self._level
        if not level & SecurityLevel.C_MAC:
            return cmd
        channel = self._channel
        channel.counter += 1
        if len(cmd.data) < _S8:
            raise self._refuse("command carries no C-MAC")
        body, mac = cmd.data[:-_S8], cmd.data[-_S8:]
        header = bytes((_mac_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2))
        expected = channel.command_mac(header + _lc_field(len(cmd.data), cmd.ne) + body)
        if not hmac.compare_digest(expected[:_S8], mac):
            raise self._refuse("C-MAC does not verify")
        channel.chain = expected
        if level & SecurityLevel.C_DECRYPTION and body:
            plain = channel.decrypt(body, response=False)
            if plain is None:
                raise self._refuse("command cryptogram malformed")
            body = plain
        return CommandAPDU(_plain_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2, body, cmd.ne)

    def wrap_response(self, resp: ResponseAPDU) -> ResponseAPDU:
        """Apply R-ENCRYPTION (6.2.7) and the R-MAC (6.2.5) as the security level asks."""
        if self._dead:
            raise CardSecureMessagingError(
                "secure channel is closed",
                sw=SW.SECURITY_STATUS_NOT_SATISFIED,
                step="scp03.wrap_response",
            )
        level = self._level
        if not level & SecurityLevel.R_MAC:
            return resp
        if not _response_protected(resp.sw):
            return ResponseAPDU.status(resp.sw)
        data = resp.data
        if level & SecurityLevel.R_ENCRYPTION and data:
            data = self._channel.encrypt(data, response=True)
        rmac = self._channel.response_mac(data + resp.sw.to_bytes(2, "big"))
        return ResponseAPDU(data + rmac, resp.sw)


@dataclass(frozen=True, slots=True)
class _Pending:
    """What INITIALIZE UPDATE leaves for EXTERNAL AUTHENTICATE."""

    keys: _SessionKeys
    host_cryptogram: bytes

    def __repr__(self) -> str:
        return "_Pending(<hidden>)"


class Scp03Card:
    """A Security Domain's SCP03 key set answering secure channel initiation (7.1.1, 7.1.2).

    Announces ``i`` = 70 (pseudo-random challenge) or 60 (random challenge): R-MAC and
    R-ENCRYPTION supported, S8 mode.
    """

    def __init__(
        self,
        keys: StaticKeys,
        *,
        kdd: bytes,
        sequence_counter: int,
        aid: bytes,
        rng: RandomSource,
        pseudo_random_challenge: bool = True,
    ) -> None:
        if len(kdd) != 10:
            raise ValueError("key diversification data must be 10 bytes")
        if not 5 <= len(aid) <= 16:
            raise ValueError("an AID is 5 to 16 bytes")
        if not 0 <= sequence_counter <= _MAX_SEQUENCE_COUNTER:
            raise ValueError("sequence counter is 3 bytes")
        self._keys = keys
        self._kdd = kdd
        self._aid = aid
        self._rng = rng
        self._pseudo_random = pseudo_random_challenge
        self._sequence_counter = sequence_counter
        self._pending: _Pending | None = None
        self._session: Scp03CardSession | None = None

    def __repr__(self) -> str:
        return (
            f"Scp03Card(kvn={self._keys.kvn:02X}, sequence_counter={self._sequence_counter}, "
            f"pseudo_random={self._pseudo_random})"
        )

    @property
    def sequence_counter(self) -> int:
        """The key set's sequence counter (6.2.2.1); persist it after each INITIALIZE UPDATE."""
        return self._sequence_counter

    @property
    def i_parameter(self) -> int:
        return I_R_ENCRYPTION | I_R_MAC | (I_PSEUDO_RANDOM if self._pseudo_random else 0)

    def terminate(self) -> None:
        """Drop any half-open initiation and end the current session (5.6)."""
        self._pending = None
        if self._session is not None:
            self._session.terminate()
            self._session = None

    def _card_challenge(self) -> bytes:
        if not self._pseudo_random:
            challenge = self._rng(_S8)
            if len(challenge) != _S8:
                raise ValueError("random source returned the wrong length")
            return challenge
        # 6.2.2.1: increment first, then derive from Key-ENC with constant 02 over
        # sequence counter (3) || AID of the application invoking the SecureChannel interface.
        self._sequence_counter += 1
        context = self._sequence_counter.to_bytes(3, "big") + self._aid
        return scp03_kdf(self._keys.enc, CARD_CHALLENGE, _S8 * 8, context)

    def initialize_update(self, cmd: CommandAPDU) -> ResponseAPDU:
        """INITIALIZE UPDATE (7.1.1): answers 29 bytes, or 32 with the sequence counter."""
        if cmd.ins != INS_INITIALIZE_UPDATE:
            raise ValueError("not an INITIALIZE UPDATE command")
        # 5.6: an attempt to initiate a new session terminates the current one.
        self.terminate()
        if cmd.p2 != 0x00:
            return ResponseAPDU.status(SW.INCORRECT_P1P2)
        if len(cmd.data) != _S8:
            return ResponseAPDU.status(SW.WRONG_LENGTH)
        if cmd.p1 not in (0x00, self._keys.kvn):
            return ResponseAPDU.status(SW.REFERENCED_DATA_NOT_FOUND)
        if self._pseudo_random and self._sequence_counter >= _MAX_SEQUENCE_COUNTER:
            # 6.2.2.1: at the maximum, INITIALIZE UPDATE is rejected.
            return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED)

        host_challenge = cmd.data
        card_challenge = self._card_challenge()
        context = host_challenge + card_challenge
        session_keys = _SessionKeys.derive(self._keys, context)
        card_cryptogram, host_cryptogram = _cryptograms(session_keys, context)
        self._pending = _Pending(session_keys, host_cryptogram)
        body = (
            self._kdd
            + bytes((self._keys.kvn, SCP03_ID, self.i_parameter))
            + card_challenge
            + card_cryptogram
        )
        if self._pseudo_random:
            body += self._sequence_counter.to_bytes(3, "big")
        return ResponseAPDU(body, SW.OK)

    def external_authenticate(
        self, cmd: CommandAPDU
    ) -> tuple[ResponseAPDU, Scp03CardSession | None]:
        """EXTERNAL AUTHENTICATE (7.1.2): 9000 and a session, or an error SW and none."""
        if cmd.ins != INS_EXTERNAL_AUTHENTICATE:
            raise ValueError("not an EXTERNAL AUTHENTICATE command")
        pending, self._pending = self._pending, None
        # 7.1.2.1: a successful INITIALIZE UPDATE must precede; 5.2: any failure restarts the
        # whole initiation, so one INITIALIZE UPDATE allows one attempt.
        if pending is None:
            return ResponseAPDU.status(SW.CONDITIONS_NOT_SATISFIED), None
        if cmd.p2 != 0x00 or cmd.p1 not in _VALID_LEVELS:
            return ResponseAPDU.status(SW.INCORRECT_P1P2), None
        if len(cmd.data) != 2 * _S8:
            return ResponseAPDU.status(SW.WRONG_LENGTH), None
        host_cryptogram, mac = cmd.data[:_S8], cmd.data[_S8:]
        channel = _Channel(pending.keys, _ZERO_CHAIN)
        header = bytes((_mac_cla(cmd.cla), cmd.ins, cmd.p1, cmd.p2, 2 * _S8))
        expected = channel.command_mac(header + host_cryptogram)
        mac_ok = hmac.compare_digest(expected[:_S8], mac)
        cryptogram_ok = hmac.compare_digest(pending.host_cryptogram, host_cryptogram)
        if not (mac_ok and cryptogram_ok):
            # Table 7-7: 6300, authentication of host cryptogram failed.
            return ResponseAPDU.status(SW.VERIFICATION_FAILED), None
        channel.chain = expected
        session = Scp03CardSession(channel, SecurityLevel(cmd.p1))
        self._session = session
        return ResponseAPDU.status(SW.OK), session
