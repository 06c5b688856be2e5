"""personaliser/web/auth.py on its own: session expiry (idle and absolute), tokens kept only as
digests, CSRF comparison, the login limiter's windows, and the role matrix's shape."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ecabinet.officers import Officer, Role
from personaliser.errors import ConfigError
from personaliser.web.auth import PERMISSIONS, LoginLimiter, Permission, SessionStore, allowed
from personaliser.web.cli import read_metrics_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OFFICER = Officer("co1", "ROP-KT", Role.COUNTER_OFFICER)


def test_idle_expiry_restarts_on_use_and_absolute_expiry_does_not() -> None:
    clock = Clock()
    sessions = SessionStore(idle_s=900, absolute_s=3600, clock=clock)
    token, session = sessions.create(OFFICER)
    for _ in range(3):  # used every 14 minutes: alive past the idle limit
        clock.now += 14 * 60
        assert sessions.get(token) is session
    clock.now += 3600 - 3 * 14 * 60  # exactly the absolute limit since login
    assert sessions.get(token) is None and len(sessions) == 0
    token, _ = sessions.create(OFFICER)
    clock.now += 900
    assert sessions.get(token) is None  # idle for the whole idle period


def test_tokens_are_random_kept_as_digests_and_logout_ends_them() -> None:
    sessions = SessionStore(clock=Clock())
    token, session = sessions.create(OFFICER)
    other, _ = sessions.create(OFFICER)
    assert token != other and len(token) >= 43  # 32 random bytes, base64url
    assert token not in repr(sessions.__dict__) and token not in repr(session)
    assert hashlib.sha256(token.encode()).hexdigest() in sessions._sessions
    assert sessions.end(token) and sessions.get(token) is None
    assert sessions.get(other) is not None
    assert sessions.end_officer("co1") == 1 and sessions.get(other) is None


def test_csrf_token_compares_exactly() -> None:
    _, session = SessionStore(clock=Clock()).create(OFFICER)
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok(None) and not session.csrf_ok("")
    assert not session.csrf_ok(session.csrf[:-1] + ("A" if session.csrf[-1] != "A" else "B"))
    assert not session.csrf_ok("é" * 43)


def test_session_limit_drops_the_oldest() -> None:
    sessions = SessionStore(clock=Clock(), limit=2)
    first, _ = sessions.create(OFFICER)
    sessions.create(OFFICER)
    sessions.create(OFFICER)
    assert len(sessions) == 2 and sessions.get(first) is None


def test_login_limiter_per_officer_and_per_address_windows() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_officer=3, per_address=5, window_s=600, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("CO1", "10.0.0.1") is None
        limiter.failed("co1", "10.0.0.1")
    wait = limiter.retry_after("co1", "10.0.0.2")  # the officer is locked from any address
    assert wait is not None and 0 < wait <= 600
    assert limiter.retry_after("co2", "10.0.0.1") is None  # 3 of 5 for the address
    limiter.failed("co2", "10.0.0.1")
    limiter.failed("co3", "10.0.0.1")
    assert limiter.retry_after("co4", "10.0.0.1") is not None  # the address is locked
    clock.now += 601
    assert limiter.retry_after("co1", "10.0.0.1") is None  # the window slid past
    limiter.failed("co1", "10.0.0.3")
    limiter.succeeded("co1")
    assert limiter.retry_after("co1", "10.0.0.3") is None


def test_role_matrix_covers_every_permission_and_keeps_roles_apart() -> None:
    assert set(PERMISSIONS) == set(Permission)
    engineer = {p for p in Permission if allowed(Role.ENGINEER, p)}
    assert engineer == {Permission.BATCH_STATUS, Permission.LINE_STATUS, Permission.STOCK,
                        Permission.CABINET_STATUS, Permission.METRICS}  # fmt: skip
    counter = {p for p in Permission if allowed(Role.COUNTER_OFFICER, p)}
    assert counter == {Permission.CABINET_FIND, Permission.CABINET_RETRIEVE}
    supervisor = {p for p in Permission if allowed(Role.SUPERVISOR, p)}
    assert supervisor == counter | {Permission.DISCREPANCY_RESOLVE, Permission.AUDIT_VERIFY,
                                    Permission.CABINET_STATUS}  # fmt: skip
    assert not allowed(Role.OPERATOR, Permission.CABINET_RETRIEVE)


@pytest.mark.parametrize(("idle", "absolute"), [(0, 10), (20, 10)])
def test_session_store_refuses_nonsense_limits(idle: float, absolute: float) -> None:
    with pytest.raises(ValueError, match="idle_s"):
        SessionStore(idle_s=idle, absolute_s=absolute)


def test_metrics_token_file_is_private_long_and_kept_as_a_digest(tmp_path: Path) -> None:
    token = "s" * 20 + "0123456789abcdef"
    good = tmp_path / "scrape.token"
    good.write_text(token + "\n", encoding="utf-8")
    good.chmod(0o600)
    assert read_metrics_token(good) == hashlib.sha256(token.encode()).digest()
    good.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600") as shared:
        read_metrics_token(good)
    assert token not in str(shared.value)
    for bad in ("short", "two words " + token, ""):
        weak = tmp_path / "weak.token"
        weak.write_text(bad, encoding="utf-8")
        weak.chmod(0o600)
        with pytest.raises(ConfigError, match="at least 32") as info:
            read_metrics_token(weak)
        assert bad not in str(info.value) or not bad
    with pytest.raises(ConfigError, match="cannot read"):
        read_metrics_token(tmp_path / "missing.token")
