"""The chip profile shared by the personaliser host and the chip emulator: instruction bytes and the
proprietary data-object references of this product's eMRTD application."""

from __future__ import annotations

__all__ = [
    "INS_CREATE_FILE",
    "INS_EXTERNAL_AUTHENTICATE",
    "INS_GET_CHALLENGE",
    "INS_INITIALIZE_UPDATE",
    "INS_PUT_DATA",
    "INS_READ_BINARY",
    "INS_READ_BINARY_ODD",
    "INS_SELECT",
    "INS_SET_STATUS",
    "INS_UPDATE_BINARY",
    "PUT_DATA_MRZ",
    "SET_STATUS_ISD",
    "STATE_SECURED",
]

# ISO/IEC 7816-4 §11 (inter-industry) and GP Card Spec v2.3 §11 (proprietary, CLA 80/84).
INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0
INS_READ_BINARY_ODD = 0xB1
INS_UPDATE_BINARY = 0xD6
INS_CREATE_FILE = 0xE0
INS_GET_CHALLENGE = 0x84
INS_EXTERNAL_AUTHENTICATE = 0x82
INS_INITIALIZE_UPDATE = 0x50
INS_PUT_DATA = 0xDA
INS_SET_STATUS = 0xF0

#: PUT DATA reference of the MRZ access-key record 62 { 04 doc-number(9, '<' fillers kept),
#: 04 DOB, 04 DOE }: the JMRTD applet's record, minus its filler-stripping bug (chip-peers §1.3).
PUT_DATA_MRZ = 0x0062
#: GP Card Spec v2.3 §11.10: SET STATUS P1 0x80 = issuer security domain; state 0x0F = SECURED.
SET_STATUS_ISD = 0x80
STATE_SECURED = 0x0F
