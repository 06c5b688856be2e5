"""Personal data at rest: AES-256-GCM per field, bound to its record (DESIGN §3, data minimisation).

An application's personal data is sealed in three fields: ``identity`` (names, numbers, dates, as
JSON), ``portrait`` (the JPEG bytes) and ``fingerprints`` (JSON minutiae).  What the line needs to
plan and route a card (application id, office, collection date, approval time, priority) stays in
the clear.

Sealed layout: ``version (1) || nonce (12) || ciphertext || tag (16)``.

- The nonce is 96 random bits per seal.  NIST SP 800-38D, 8.3 bounds random-nonce use of one key to
  2**32 invocations; a population of 8.8 million cards, three seals each, stays far below it, and a
  key rotation (below) resets the count.
- The associated data is ``b"perso-pd/1" 00 key_id 00 application_id 00 field``: a ciphertext moved
  to another application or field, or relabelled with another key id, fails authentication.
- The data key (32 bytes) is passed in; the keystore holds it.  ``key_id`` names it in each record
  so that old records stay readable after a rotation (``previous`` keys are used only to open).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError

from chip.random import RandomSource, system_random
from personaliser.applications import Application, Fingerprint
from personaliser.errors import PersonalDataError

__all__ = [
    "BULK_FIELDS",
    "IDENTITY_FIELDS",
    "OPERATIONAL_FIELDS",
    "PersonalDataCipher",
    "SealedPersonalData",
    "key_id_for",
]

VERSION: Final = 1
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32
_AD_LABEL: Final = b"perso-pd/1"

#: Application fields kept in the clear: the line plans and routes cards with them.
OPERATIONAL_FIELDS: Final = (
    "application_id",
    "collection_office",
    "collection_date",
    "approved_at",
    "priority",
)
#: Sealed together as the ``identity`` field.
IDENTITY_FIELDS: Final = (
    "hkid",
    "document_number",
    "surname",
    "given_names",
    "chinese_name",
    "chinese_commercial_code",
    "date_of_birth",
    "sex",
    "place_of_birth",
    "nationality",
    "date_of_issue",
    "date_of_expiry",
    "receipt_number",
)
#: Sealed in fields of their own.
BULK_FIELDS: Final = ("portrait_jpeg", "fingerprints")


def key_id_for(key: bytes) -> str:
    """A short public name for a data key (a key check value: SHA-256 over a label and the key)."""
    return hashlib.sha256(b"perso-pd key id\x00" + key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SealedPersonalData:
    """The three sealed fields of one application and the id of the key that sealed them."""

    key_id: str
    identity: bytes
    portrait: bytes
    fingerprints: bytes

    def __repr__(self) -> str:
        return f"SealedPersonalData(key_id={self.key_id!r}, <sealed>)"


class PersonalDataCipher:
    """Seals and opens personal data with AES-256-GCM; the key never leaves it."""

    __slots__ = ("_aead", "_key_id", "_opening", "_random")

    def __init__(
        self,
        key: bytes,
        *,
        key_id: str | None = None,
        previous: Mapping[str, bytes] | None = None,
        random: RandomSource = system_random,
    ) -> None:
        self._key_id = key_id or key_id_for(_checked(key))
        self._aead = AESGCM(_checked(key))
        self._opening = {kid: AESGCM(_checked(k)) for kid, k in (previous or {}).items()}
        self._opening[self._key_id] = self._aead
        self._random = random

    @property
    def key_id(self) -> str:
        return self._key_id

    def __repr__(self) -> str:
        return f"PersonalDataCipher(key_id={self._key_id!r})"

    def seal(self, application_id: str, field: str, plaintext: bytes) -> bytes:
        nonce = self._random(NONCE_BYTES)
        ad = _associated_data(self._key_id, application_id, field)
        return bytes([VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, ad)

    def open(self, application_id: str, field: str, sealed: bytes, *, key_id: str) -> bytes:
        aead = self._opening.get(key_id)
        if aead is None:
            raise PersonalDataError(application_id, f"sealed under unknown key {key_id!r}")
        if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] != VERSION:
            raise PersonalDataError(application_id, f"sealed {field} is not in a known layout")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        ad = _associated_data(key_id, application_id, field)
        try:
            return aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], ad)
        except InvalidTag as exc:
            raise PersonalDataError(
                application_id, f"sealed {field} failed authentication"
            ) from exc

    def seal_application(self, app: Application) -> SealedPersonalData:
        data = app.model_dump(mode="json", include=set(IDENTITY_FIELDS))
        fingers = app.model_dump(mode="json", include={"fingerprints"})["fingerprints"]
        app_id = app.application_id
        return SealedPersonalData(
            key_id=self._key_id,
            identity=self.seal(app_id, "identity", _json(data)),
            portrait=self.seal(app_id, "portrait", app.portrait_jpeg),
            fingerprints=self.seal(app_id, "fingerprints", _json(fingers)),
        )

    def open_application(
        self, operational: Mapping[str, Any], sealed: SealedPersonalData
    ) -> Application:
        """The Application from its clear operational fields and its sealed personal data."""
        app_id = str(operational["application_id"])
        kid = sealed.key_id
        identity = json.loads(self.open(app_id, "identity", sealed.identity, key_id=kid))
        fingers = json.loads(self.open(app_id, "fingerprints", sealed.fingerprints, key_id=kid))
        portrait = self.open(app_id, "portrait", sealed.portrait, key_id=kid)
        data = {**operational, **identity, "portrait_jpeg": portrait, "fingerprints": fingers}
        trusted = _rebuild(data)
        if trusted is not None:
            return trusted
        try:
            return Application.model_validate(data)
        except ValidationError:
            # `from None`: a pydantic error's text quotes the input, which here is personal data.
            raise PersonalDataError(app_id, "stored personal data does not validate") from None


_DATE_FIELDS: Final = ("date_of_birth", "date_of_issue", "date_of_expiry", "collection_date")
_MODEL_FIELDS: Final = frozenset(Application.model_fields)


def _rebuild(data: Mapping[str, Any]) -> Application | None:
    """The Application from what :meth:`PersonalDataCipher.seal_application` sealed and the store's
    clear operational fields, without pydantic's validation.

    The values were validated at intake and come back authenticated (AES-GCM with the record's
    id as associated data), so validating them again proves nothing; it cost about a tenth of a
    millisecond per card on the line's hot path.  Only the JSON types are turned back into the
    model's (dates, the approval time, fingerprints with their minutiae tuples).  None when the
    data does not have the shape this module writes; the caller then validates it in full.
    """
    if not data.keys() <= _MODEL_FIELDS:
        return None
    try:
        values = dict(data)
        for name in _DATE_FIELDS:
            values[name] = date.fromisoformat(values[name])
        values["approved_at"] = datetime.fromisoformat(values["approved_at"])
        values["fingerprints"] = [
            Fingerprint.model_construct(
                **{**finger, "minutiae": [tuple(m) for m in finger["minutiae"]]}
            )
            for finger in values["fingerprints"]
        ]
        if not isinstance(values["portrait_jpeg"], bytes):
            return None
        return Application.model_construct(**values)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _checked(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError("the personal data key must be 32 bytes (AES-256)")
    return key


def _associated_data(key_id: str, application_id: str, field: str) -> bytes:
    return b"\x00".join((_AD_LABEL, key_id.encode(), application_id.encode(), field.encode()))


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
