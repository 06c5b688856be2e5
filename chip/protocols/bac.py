"""Basic Access Control (ICAO Doc 9303 Part 11, 4.3), reader and chip side, sans-I/O.

::

    reader                                        chip
    GET CHALLENGE  00 84 00 00 08         ->      RND.IC (8)
    E.IFD = 3DES(K_Enc, RND.IFD || RND.IC || K.IFD),  M.IFD = MAC(K_MAC, E.IFD)
    EXTERNAL AUTHENTICATE 00 82 00 00 28 E.IFD || M.IFD 28
                                          <-      E.IC || M.IC
                                                  E.IC = 3DES(K_Enc, RND.IC || RND.IFD || K.IC)
    both: KS_seed = K.IFD xor K.IC -> KS_Enc, KS_MAC (9.7.1); SSC = RND.IC[4:8] || RND.IFD[4:8]

S and R are exactly 32 bytes and are encrypted without padding; the MACs pad with method 2.
Worked example: Appendix D.3.  Randomness is injected so that example replays byte for byte.
"""

from __future__ import annotations

import hmac

from chip.apdu import SW, CommandAPDU
from chip.crypto.des import RetailMac, Tdes
from chip.crypto.kdf import ENC, MAC, KeyAlg, bac_keys, derive_key
from chip.crypto.sm import TdesSecureMessaging
from chip.errors import AuthenticationError, ProtocolError, StatusWordError
from chip.random import RandomSource
from chip.transport.base import Flow

__all__ = ["EXTERNAL_AUTHENTICATE_LENGTH", "GET_CHALLENGE", "BacChip", "bac", "session_from"]

GET_CHALLENGE = CommandAPDU(0x00, 0x84, 0x00, 0x00, ne=8)
EXTERNAL_AUTHENTICATE_LENGTH = 40  # 32-byte cryptogram + 8-byte MAC, both directions

_RND_LENGTH = 8
_K_LENGTH = 16


def _draw(rng: RandomSource, n: int) -> bytes:
    value = rng(n)
    if len(value) != n:
        raise ValueError(f"random source returned {len(value)} bytes, {n} requested")
    return value


def session_from(k_ifd: bytes, k_ic: bytes, rnd_ic: bytes, rnd_ifd: bytes) -> TdesSecureMessaging:
    """The secure-messaging session both sides derive once BAC succeeds (9.7.1; App. D.3)."""
    seed = bytes(a ^ b for a, b in zip(k_ifd, k_ic, strict=True))
    ssc = int.from_bytes(rnd_ic[4:8] + rnd_ifd[4:8], "big")
    return TdesSecureMessaging(
        derive_key(seed, ENC, KeyAlg.TDES), derive_key(seed, MAC, KeyAlg.TDES), ssc
    )


def bac(mrz_information: str, rng: RandomSource) -> Flow[TdesSecureMessaging]:
    """Reader side of BAC; returns the secure-messaging session.

    ``rng`` draws RND.IFD (8 bytes) and then K.IFD (16 bytes).  A status word other than 9000
    raises :class:`StatusWordError`; a chip whose MAC or nonces do not verify raises
    :class:`AuthenticationError`.
    """
    k_enc, k_mac = bac_keys(mrz_information)
    cipher, mac = Tdes(k_enc), RetailMac(k_mac)

    response = yield GET_CHALLENGE
    if response.sw != SW.OK:
        raise StatusWordError(response.sw, step="bac.get_challenge")
    rnd_ic = response.data
    if len(rnd_ic) != _RND_LENGTH:
        raise ProtocolError(
            f"GET CHALLENGE returned {len(rnd_ic)} bytes, expected 8", step="bac.get_challenge"
        )

    rnd_ifd = _draw(rng, _RND_LENGTH)
    k_ifd = _draw(rng, _K_LENGTH)
    e_ifd = cipher.encrypt(rnd_ifd + rnd_ic + k_ifd)
    response = yield CommandAPDU(
        0x00, 0x82, 0x00, 0x00, e_ifd + mac.mac(e_ifd), ne=EXTERNAL_AUTHENTICATE_LENGTH
    )
    step = "bac.external_authenticate"
    if response.sw != SW.OK:
        raise StatusWordError(response.sw, step=step)
    if len(response.data) != EXTERNAL_AUTHENTICATE_LENGTH:
        raise AuthenticationError("chip's answer is not 40 bytes", step=step)
    e_ic, m_ic = response.data[:32], response.data[32:]
    if not hmac.compare_digest(mac.mac(e_ic), m_ic):
        raise AuthenticationError("chip's MAC M.IC does not verify", step=step)
    r = cipher.decrypt(e_ic)
    # The chip proves it knows K_Enc by returning our RND.IFD next to its own RND.IC (4.3).
    if not (hmac.compare_digest(r[:8], rnd_ic) and hmac.compare_digest(r[8:16], rnd_ifd)):
        raise AuthenticationError("chip's answer does not carry RND.IC || RND.IFD", step=step)
    return session_from(k_ifd, r[16:], rnd_ic, rnd_ifd)


class BacChip:
    """Chip side of BAC for one document's keys; one challenge, one authentication attempt."""

    __slots__ = ("_cipher", "_mac", "_rnd_ic", "_rng")

    def __init__(self, k_enc: bytes, k_mac: bytes, rng: RandomSource) -> None:
        self._cipher = Tdes(k_enc)
        self._mac = RetailMac(k_mac)
        self._rng = rng
        self._rnd_ic: bytes | None = None

    def get_challenge(self) -> bytes:
        """Draw and remember RND.IC (8 bytes); a new challenge replaces an unused one."""
        self._rnd_ic = _draw(self._rng, _RND_LENGTH)
        return self._rnd_ic

    def external_authenticate(self, data: bytes) -> tuple[bytes, TdesSecureMessaging]:
        """Verify E.IFD || M.IFD; return E.IC || M.IC and the chip's secure-messaging session.

        Raises :class:`AuthenticationError` for a wrong MAC or challenge, a wrong length, or no
        outstanding challenge.  The challenge is used up by the attempt, right or wrong, so that a
        guesser needs a fresh GET CHALLENGE for every try.
        """
        step = "bac.external_authenticate"
        rnd_ic, self._rnd_ic = self._rnd_ic, None
        if rnd_ic is None:
            raise AuthenticationError("no challenge outstanding", step=step)
        if len(data) != EXTERNAL_AUTHENTICATE_LENGTH:
            raise AuthenticationError("EXTERNAL AUTHENTICATE data is not 40 bytes", step=step)
        e_ifd, m_ifd = data[:32], data[32:]
        if not hmac.compare_digest(self._mac.mac(e_ifd), m_ifd):
            raise AuthenticationError("terminal's MAC M.IFD does not verify", step=step)
        s = self._cipher.decrypt(e_ifd)
        if not hmac.compare_digest(s[8:16], rnd_ic):
            raise AuthenticationError("terminal's cryptogram does not carry RND.IC", step=step)
        rnd_ifd, k_ifd = s[:8], s[16:]
        k_ic = _draw(self._rng, _K_LENGTH)
        e_ic = self._cipher.encrypt(rnd_ic + rnd_ifd + k_ic)
        return e_ic + self._mac.mac(e_ic), session_from(k_ifd, k_ic, rnd_ic, rnd_ifd)

    def __repr__(self) -> str:
        return "BacChip(<keys hidden>)"
