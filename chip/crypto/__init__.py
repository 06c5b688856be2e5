"""Symmetric cryptography for ICAO 9303 and GlobalPlatform, over ``cryptography``.

- :mod:`chip.crypto.padding`: ISO/IEC 9797-1 padding method 2;
- :mod:`chip.crypto.des`: two-key 3DES-CBC, the retail MAC, DES parity;
- :mod:`chip.crypto.aes`: AES-CBC/ECB and AES-CMAC;
- :mod:`chip.crypto.kdf`: the ICAO key derivation function and BAC document keys;
- :mod:`chip.crypto.sm`: ICAO 9303 secure messaging (3DES and AES), both sides.
"""

from chip.crypto.aes import aes_cbc_decrypt, aes_cbc_encrypt, aes_cmac, aes_ecb_encrypt
from chip.crypto.des import adjust_parity, retail_mac, tdes_decrypt, tdes_encrypt
from chip.crypto.kdf import ENC, MAC, PACE, KeyAlg, bac_key_seed, bac_keys, derive_key
from chip.crypto.padding import pad, unpad
from chip.crypto.sm import AesSecureMessaging, SecureMessaging, TdesSecureMessaging

__all__ = [
    "ENC",
    "MAC",
    "PACE",
    "AesSecureMessaging",
    "KeyAlg",
    "SecureMessaging",
    "TdesSecureMessaging",
    "adjust_parity",
    "aes_cbc_decrypt",
    "aes_cbc_encrypt",
    "aes_cmac",
    "aes_ecb_encrypt",
    "bac_key_seed",
    "bac_keys",
    "derive_key",
    "pad",
    "retail_mac",
    "tdes_decrypt",
    "tdes_encrypt",
    "unpad",
]
