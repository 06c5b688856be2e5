"""Per-chip SCP03 static keys diversified from a perso master key and the chip's KDD.

The scheme is GlobalPlatformPro's "KDF3" template (``PlaintextKeys.kdf_templates["kdf3"]``:
``$_ 00 00 00 $k 00 $0 .. $9``): for key type k (1 = ENC, 2 = MAC, 3 = DEK),

    K_k = SP 800-108 counter mode, PRF = CMAC-AES(master), 8-bit counter first,
          fixed input = 00 00 00 || k || 00 || KDD (10 bytes), output = len(master) bytes

so ``K_k = CMAC(master, 01 || 00 00 00 k 00 || KDD)`` for AES-128, plus a second block with
counter 02 for AES-192/256.  Unlike the session-key derivation of GP Amendment D 4.1.5 there
is no L field and no label constant.

Caveat: there is no authoritative public specification of master-to-card key derivation for
SCP03; GlobalPlatformPro's maintainer says so (GPPro issue #112).  "KDF3" is that tool's
scheme, and a card vendor's personalisation profile may use another.  Check it against the
vendor's documentation, or against one real card's KCVs, before relying on it for a product.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from chip.crypto.sp800108 import kdf_counter_cmac, keyed_cmac
from chip.protocols.scp03 import StaticKeys

__all__ = ["KEY_TYPE_DEK", "KEY_TYPE_ENC", "KEY_TYPE_MAC", "diversify_kdf3", "kcv_aes"]

KEY_TYPE_ENC = 0x01
KEY_TYPE_MAC = 0x02
KEY_TYPE_DEK = 0x03

_KCV_BLOCK = b"\x01" * 16
_AES_KEY_LENGTHS = frozenset((16, 24, 32))


def kcv_aes(key: bytes) -> bytes:
    """Key check value of an AES key: the first 3 bytes of AES(key, 01 x 16).

    GP Card Spec v2.3 B.6 (Amendment D v1.1 7.2.2 before it moved): the value PUT KEY
    carries for AES keys.
    """
    if len(key) not in _AES_KEY_LENGTHS:
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(_KCV_BLOCK)[:3]


def _kdf3(master: CMAC, length: int, key_type: int, kdd: bytes) -> bytes:
    fixed = b"\x00\x00\x00" + bytes((key_type, 0x00)) + kdd
    return kdf_counter_cmac(master, fixed, length * 8, r=8)


def diversify_kdf3(master: bytes, kdd: bytes, *, kvn: int = 0x30) -> StaticKeys:
    """The card's static ENC/MAC/DEK keys from ``master`` and its 10-byte KDD (see module doc)."""
    if len(master) not in _AES_KEY_LENGTHS:
        raise ValueError("master key must be 16, 24 or 32 bytes")
    if len(kdd) != 10:
        raise ValueError("key diversification data must be 10 bytes")
    keyed = keyed_cmac(master)  # one key schedule for the three keys
    n = len(master)
    return StaticKeys(
        enc=_kdf3(keyed, n, KEY_TYPE_ENC, kdd),
        mac=_kdf3(keyed, n, KEY_TYPE_MAC, kdd),
        dek=_kdf3(keyed, n, KEY_TYPE_DEK, kdd),
        kvn=kvn,
    )
