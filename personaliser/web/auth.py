"""Who is asking: password check, sessions, CSRF tokens, login rate limits, the role matrix.

Sessions (OWASP Session Management Cheat Sheet):

- the token is 32 random bytes (``secrets.token_urlsafe``), given to the client once; the server
  keeps only its SHA-256, so a dump of the session table opens no session;
- idle expiry (default 15 min) and absolute expiry (default 8 h, one shift), and logout;
- carried in an HttpOnly, SameSite=Strict cookie (Secure when served over TLS) for the pages, or
  as ``Authorization: Bearer`` for API clients;
- state-changing requests authenticated by the cookie also carry the session's CSRF token in
  ``X-CSRF-Token`` (per-session synchroniser token); a browser never adds that header to a
  cross-site request, and never adds a Bearer header at all, so Bearer requests need none.

Passwords are the officers' scrypt hashes (:mod:`ecabinet.officers`).  Checking one costs ~0.4 s
of CPU and 128 MiB at the default cost, so it runs in a worker thread (the event loop keeps
serving), at most ``concurrency`` at a time.  An unknown officer is checked against a dummy hash
of the same cost, so the answer and its timing are the same as for a wrong password.  Failures
are counted per officer id and per client address; past the limit the login is refused before
any hash is computed (429).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from ecabinet.errors import AuthorisationError
from ecabinet.officers import KdfParams, Officer, Role, hash_password, verify_password
from ecabinet.store import CabinetStore
from ecabinet.topics import check_id

__all__ = [
    "PERMISSIONS",
    "Authenticator",
    "LoginLimiter",
    "Permission",
    "Session",
    "SessionStore",
    "allowed",
]

Clock = Callable[[], float]


class Permission(StrEnum):
    INTAKE = "intake"
    BATCH_PLAN = "batch.plan"
    BATCH_START = "batch.start"
    BATCH_STATUS = "batch.status"
    LINE_CONTROL = "line.control"
    LINE_STATUS = "line.status"
    STOCK = "stock"
    CABINET_DISPATCH = "cabinet.dispatch"
    CABINET_DEPOSIT = "cabinet.deposit"
    CABINET_RETURN = "cabinet.return"
    CABINET_FIND = "cabinet.find"
    CABINET_RETRIEVE = "cabinet.retrieve"
    CABINET_STATUS = "cabinet.status"
    DISCREPANCY_RESOLVE = "discrepancy.resolve"
    AUDIT_VERIFY = "audit.verify"
    METRICS = "metrics"


_OP, _CO, _SV, _EN = Role.OPERATOR, Role.COUNTER_OFFICER, Role.SUPERVISOR, Role.ENGINEER
_P = Permission

#: The role matrix (issue 7).  Operators run production and the cabinets' trays; counter officers
#: find and retrieve at their own office; supervisors as counter officers, plus discrepancies and
#: the audit; engineers read status and metrics only.  Anything not listed is refused (403).
PERMISSIONS: Final[dict[Permission, frozenset[Role]]] = {
    _P.INTAKE: frozenset({_OP}),
    _P.BATCH_PLAN: frozenset({_OP}),
    _P.BATCH_START: frozenset({_OP}),
    _P.BATCH_STATUS: frozenset({_OP, _EN}),
    _P.LINE_CONTROL: frozenset({_OP}),
    _P.LINE_STATUS: frozenset({_OP, _EN}),
    _P.STOCK: frozenset({_OP, _EN}),
    _P.CABINET_DISPATCH: frozenset({_OP}),
    _P.CABINET_DEPOSIT: frozenset({_OP}),
    _P.CABINET_RETURN: frozenset({_OP}),
    _P.CABINET_FIND: frozenset({_CO, _SV}),
    _P.CABINET_RETRIEVE: frozenset({_CO, _SV}),
    _P.CABINET_STATUS: frozenset({_OP, _SV, _EN}),
    _P.DISCREPANCY_RESOLVE: frozenset({_SV}),
    _P.AUDIT_VERIFY: frozenset({_SV}),
    _P.METRICS: frozenset({_EN}),
}


def allowed(role: Role, permission: Permission) -> bool:
    return role in PERMISSIONS[permission]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class Session:
    officer: Officer
    csrf: str = field(repr=False)
    created: float
    last_seen: float

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.csrf.encode("ascii")
        )


class SessionStore:
    """Sessions in memory, keyed by the SHA-256 of their token.  A restart logs everyone out."""

    def __init__(
        self,
        *,
        idle_s: float = 15 * 60,
        absolute_s: float = 8 * 3600,
        clock: Clock = time.monotonic,
        limit: int = 10_000,
    ) -> None:
        if not 0 < idle_s <= absolute_s:
            raise ValueError("0 < idle_s <= absolute_s")
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._clock = clock
        self._limit = limit
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __repr__(self) -> str:
        return f"SessionStore({len(self._sessions)} sessions)"

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, officer: Officer) -> tuple[str, Session]:
        """A new session; the token is returned once and not kept."""
        self.purge()
        while len(self._sessions) >= self._limit:
            self._sessions.popitem(last=False)  # the oldest goes first
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(officer, secrets.token_urlsafe(32), now, now)
        self._sessions[_digest(token)] = session
        return token, session

    def get(self, token: str) -> Session | None:
        """The live session of ``token`` (its idle clock restarted), or None."""
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def expires_in(self, session: Session) -> float:
        return max(0.0, session.created + self.absolute_s - self._clock())

    def end(self, token: str) -> bool:
        return self._sessions.pop(_digest(token), None) is not None

    def end_officer(self, officer_id: str) -> int:
        keys = [k for k, s in self._sessions.items() if s.officer.officer_id == officer_id]
        for key in keys:
            del self._sessions[key]
        return len(keys)

    def purge(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen >= self.idle_s or now - session.created >= self.absolute_s


class LoginLimiter:
    """Sliding-window count of failed logins per officer id and per client address."""

    def __init__(
        self,
        *,
        per_officer: int = 5,
        per_address: int = 20,
        window_s: float = 15 * 60,
        clock: Clock = time.monotonic,
        keys: int = 10_000,
    ) -> None:
        self._limits = {"officer": per_officer, "address": per_address}
        self._window = window_s
        self._clock = clock
        self._keys = keys
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"LoginLimiter({len(self._failures)} keys)"

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] >= self._window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, officer_id: str, address: str) -> float | None:
        """Seconds until another try is allowed, or None if one is allowed now."""
        now = self._clock()
        wait: float | None = None
        for key in (("officer", officer_id.lower()), ("address", address)):
            times = self._recent(key, now)
            if len(times) >= self._limits[key[0]]:
                left = self._window - (now - times[0])
                wait = left if wait is None else max(wait, left)
        return wait

    def failed(self, officer_id: str, address: str) -> None:
        now = self._clock()
        for key in (("officer", officer_id.lower()), ("address", address)):
            times = self._failures.setdefault(key, deque(maxlen=self._limits[key[0]]))
            self._failures.move_to_end(key)
            times.append(now)
        while len(self._failures) > self._keys:
            self._failures.popitem(last=False)

    def succeeded(self, officer_id: str) -> None:
        self._failures.pop(("officer", officer_id.lower()), None)


def _valid_id(value: str) -> bool:
    try:
        check_id(value, "officer")
    except (ValueError, TypeError):
        return False
    return True


class Authenticator:
    """Officer id and password against the cabinet store's officers (store reads on the loop)."""

    def __init__(self, cabinets: CabinetStore, params: KdfParams, *, concurrency: int = 2) -> None:
        self._cabinets = cabinets
        self._params = params
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    def __repr__(self) -> str:
        return "Authenticator()"

    async def prepare(self) -> None:
        """Compute the dummy hash (one KDF run) before the first login needs it."""
        if self._dummy is None:
            self._dummy = await asyncio.to_thread(
                hash_password, secrets.token_urlsafe(24), self._params
            )

    def active(self, officer_id: str) -> Officer | None:
        """The officer as the store has them now (None if removed or deactivated)."""
        record = self._cabinets.officer(officer_id)
        if record is None or not record.active:
            return None
        return Officer(record.officer_id, record.office, Role(record.role))

    async def authenticate(self, officer_id: str, password: str) -> Officer:
        """The officer, or ``AuthorisationError(bad_credentials)`` whatever was wrong."""
        await self.prepare()
        assert self._dummy is not None
        record = self._cabinets.officer(officer_id) if _valid_id(officer_id) else None
        encoded = record.password_hash if record is not None else self._dummy
        async with self._slots:
            ok = await asyncio.to_thread(_verify, password, encoded)
        if record is None or not ok or not record.active:
            raise AuthorisationError(
                "officer id or password not accepted", reason="bad_credentials"
            )
        return Officer(record.officer_id, record.office, Role(record.role))


def _verify(password: str, encoded: str) -> bool:
    try:
        return verify_password(password, encoded)
    except ValueError:
        return False  # a malformed stored hash is a refusal like any other
