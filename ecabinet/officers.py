"""Officers: who may find, retrieve, deposit and resolve; their passwords; their roles.

Passwords are hashed with scrypt (RFC 7914), a memory-hard KDF, so a stolen store does not give
the passwords up to a GPU farm cheaply.  Default cost N = 2^17, r = 8, p = 1: the OWASP Password
Storage Cheat Sheet's scrypt minimum (128 MiB, about 0.4 s here).  Each hash keeps its own salt
(16 random bytes) and parameters::

    scrypt$<log2 N>$<r>$<p>$<salt, base64>$<hash, base64>

so the cost can be raised later without invalidating existing hashes.  Verification recomputes and
compares with ``hmac.compare_digest``.  :func:`authenticate` fails the same way for an unknown
officer, a deactivated one and a wrong password (``reason="bad_credentials"``), and spends the same
KDF work on each, so neither the answer nor its timing says which it was.
"""

from __future__ import annotations

import base64
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ecabinet.errors import AuthorisationError
from ecabinet.store import CabinetStore
from ecabinet.topics import check_id

__all__ = [
    "DEFAULT_KDF",
    "KdfParams",
    "Officer",
    "Role",
    "add_officer",
    "authenticate",
    "hash_password",
    "require_role",
    "verify_password",
]


class Role(StrEnum):
    COUNTER_OFFICER = "counter_officer"  # finds and retrieves cards for applicants
    SUPERVISOR = "supervisor"  # as a counter officer, and resolves discrepancies
    OPERATOR = "operator"  # deposits trays, returns uncollected cards
    ENGINEER = "engineer"  # status and diagnostics only


@dataclass(frozen=True, slots=True)
class Officer:
    """An authenticated officer: the actor of audit entries and the office their cards are at."""

    officer_id: str
    office: str
    role: Role


@dataclass(frozen=True, slots=True)
class KdfParams:
    log2_n: int = 17
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not (10 <= self.log2_n <= 22 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError("scrypt parameters out of range")


DEFAULT_KDF: Final = KdfParams()
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
_MIN_PASSWORD: Final = 8


def _derive(password: str, salt: bytes, params: KdfParams) -> bytes:
    kdf = Scrypt(salt=salt, length=_HASH_BYTES, n=1 << params.log2_n, r=params.r, p=params.p)
    return kdf.derive(password.encode("utf-8"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, params: KdfParams = DEFAULT_KDF) -> str:
    """A new salted hash of ``password`` in the format above."""
    if not isinstance(password, str) or len(password) < _MIN_PASSWORD:
        raise ValueError(f"a password has at least {_MIN_PASSWORD} characters")
    salt = os.urandom(_SALT_BYTES)
    digest = _derive(password, salt, params)
    return f"scrypt${params.log2_n}${params.r}${params.p}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[KdfParams, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a password hash of this format")
    params = KdfParams(int(parts[1]), int(parts[2]), int(parts[3]))
    salt, digest = (
        base64.b64decode(parts[4], validate=True),
        base64.b64decode(parts[5], validate=True),
    )
    if len(salt) < _SALT_BYTES or len(digest) != _HASH_BYTES:
        raise ValueError("not a password hash of this format")
    return params, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; constant-time comparison of the hashes."""
    params, salt, digest = _parse(encoded)
    return hmac.compare_digest(_derive(password, salt, params), digest)


#: Spent on an unknown officer so the refusal costs what a wrong password costs.
_DUMMY_SALT: Final = bytes(_SALT_BYTES)


def add_officer(
    store: CabinetStore,
    officer_id: str,
    office: str,
    role: Role | str,
    password: str,
    *,
    params: KdfParams = DEFAULT_KDF,
) -> Officer:
    check_id(officer_id, "officer")
    check_id(office, "office")
    role = Role(role)
    store.add_officer(officer_id, office, role.value, hash_password(password, params))
    return Officer(officer_id, office, role)


def authenticate(
    store: CabinetStore, officer_id: str, password: str, *, params: KdfParams = DEFAULT_KDF
) -> Officer:
    """The officer, if ``password`` is theirs and they are active; otherwise
    ``AuthorisationError(reason="bad_credentials")`` whatever was wrong.  ``params`` is the cost
    spent on an unknown officer (use the cost new hashes get)."""
    record = store.officer(officer_id) if isinstance(officer_id, str) else None
    ok = False
    if record is not None:
        try:
            ok = verify_password(password, record.password_hash)
        except ValueError:
            ok = False
    else:
        _derive(password if isinstance(password, str) else "", _DUMMY_SALT, params)
    if record is None or not ok or not record.active:
        raise AuthorisationError("officer id or password not accepted", reason="bad_credentials")
    return Officer(record.officer_id, record.office, Role(record.role))


def require_role(officer: Officer, roles: Iterable[Role]) -> None:
    """``AuthorisationError(reason="role")`` unless the officer has one of ``roles``."""
    allowed = frozenset(roles)
    if officer.role not in allowed:
        raise AuthorisationError(f"role {officer.role.value} may not do this", reason="role")
