"""What the request handlers share, and the dependencies that authenticate and authorise them.

Everything here lives on the service's event loop: the stores (SQLite objects are used from the
loop's thread only), the site (controller, collection flows, audit queue), the sessions and the
line runner.  Handlers are ``async def`` so FastAPI runs them on that loop, not in its thread
pool.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from fastapi import Request
from prometheus_client import CollectorRegistry

from ecabinet.officers import Officer
from personaliser.keystore import FileKeystore
from personaliser.operations import Home
from personaliser.site import Site
from personaliser.store.base import Store
from personaliser.web.auth import (
    Authenticator,
    LoginLimiter,
    Permission,
    Session,
    SessionStore,
    allowed,
)
from personaliser.web.errors import ApiError, access_check
from personaliser.web.linerun import LineRunner

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "WebState",
    "authenticated",
    "officer_with",
    "request_token",
    "session_of",
    "web_state",
]

COOKIE: Final = "perso_session"
CSRF_HEADER: Final = "X-CSRF-Token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class WebState:
    home: Home
    keystore: FileKeystore
    store: Store
    site: Site
    sessions: SessionStore
    limiter: LoginLimiter
    auth: Authenticator
    line: LineRunner
    registry: CollectorRegistry
    secure_cookies: bool
    #: SHA-256 of the Prometheus scrape token (``perso serve --metrics-token-file``), or None.
    metrics_token_digest: bytes | None = None

    def __repr__(self) -> str:
        return f"WebState({self.home.path})"

    def audit(self, actor: str, kind: str, payload: dict[str, Any]) -> None:
        """One audit order for the service, the controller and the flows (the site's queue)."""
        self.site.controller.audit(actor, kind, payload)


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def request_token(request: Request) -> tuple[str | None, bool]:
    """(token, came from the cookie)."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), False
        return None, False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def session_of(request: Request, state: WebState) -> tuple[str, Session, bool] | None:
    """The request's live session (token, session, by cookie), the officer re-read from the store
    (a deactivated officer's sessions end at their next request)."""
    token, by_cookie = request_token(request)
    if token is None or len(token) > 128:
        return None
    session = state.sessions.get(token)
    if session is None:
        return None
    officer = state.auth.active(session.officer.officer_id)
    if officer is None:
        state.sessions.end_officer(session.officer.officer_id)
        return None
    session.officer = officer  # a changed role or office applies at once
    return token, session, by_cookie


@access_check
async def authenticated(request: Request) -> Session:
    """Dependency: the request's session; 401 without one; 403 csrf for a cookie-authenticated
    state-changing request without the session's CSRF token."""
    state = web_state(request)
    found = session_of(request, state)
    if found is None:
        raise ApiError(401, "not_authenticated", headers={"WWW-Authenticate": "Bearer"})
    _token_value, session, by_cookie = found
    unsafe = by_cookie and request.method not in _SAFE_METHODS
    if unsafe and not session.csrf_ok(request.headers.get(CSRF_HEADER)):
        state.audit(
            session.officer.officer_id, "http.refused", {"reason": "csrf", "route": _route(request)}
        )
        raise ApiError(403, "csrf")
    request.state.session = session
    return session


def _route(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unknown"


def officer_with(permission: Permission) -> Callable[[Request], Awaitable[Officer]]:
    """Dependency factory: the authenticated officer, if their role has ``permission``; else
    403 {"error": "role"}, audited."""

    async def dependency(request: Request) -> Officer:
        session = await authenticated(request)
        officer = session.officer
        if not allowed(officer.role, permission):
            web_state(request).audit(
                officer.officer_id,
                "http.refused",
                {"reason": "role", "permission": permission.value, "route": _route(request)},
            )
            raise ApiError(403, "role")
        return officer

    dependency.__name__ = f"officer_with_{permission.name.lower()}"
    return access_check(dependency)


@access_check
async def metrics_reader(request: Request) -> str:
    """Dependency of ``/metrics``: the Prometheus scraper with the scrape token (a bearer token of
    its own, so that scraping needs no officer's session and no officer's session expires under
    it; compared as digests in constant time), else an officer whose role may read metrics.
    Returns the actor."""
    state = web_state(request)
    token, by_cookie = request_token(request)
    if state.metrics_token_digest is not None and token is not None and not by_cookie:
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        if hmac.compare_digest(presented, state.metrics_token_digest):
            return "metrics-scraper"
    officer = await officer_with(Permission.METRICS)(request)
    return officer.officer_id
