"""``/api/session``: log in (officer id and password), who am I, log out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from ecabinet.errors import AuthorisationError
from ecabinet.topics import check_id
from personaliser.web.auth import Session
from personaliser.web.errors import ERROR_RESPONSES, ApiError
from personaliser.web.models import ErrorBody, LoginRequest, SessionOut
from personaliser.web.state import COOKIE, WebState, authenticated, request_token, web_state

__all__ = ["client_address", "login", "router", "session_out"]

router = APIRouter(prefix="/api/session", tags=["session"])


def client_address(request: Request) -> str:
    host = request.client.host if request.client is not None else "unknown"
    return host[:64] if host.isprintable() else "unknown"


def _audit_id(officer_id: str) -> str | None:
    try:
        check_id(officer_id, "officer")
    except (ValueError, TypeError):
        return None
    return officer_id


async def login(
    state: WebState, officer_id: str, password: str, address: str
) -> tuple[str, Session]:
    """Check the rate limits, then the password; audit either way.  Refusals say only
    ``bad_credentials`` (401) or ``rate_limited`` (429)."""
    claimed = _audit_id(officer_id)
    wait = state.limiter.retry_after(officer_id, address)
    if wait is not None:
        state.audit("web", "login.refused", {"officer": claimed, "reason": "rate_limited", "client": address})  # fmt: skip
        raise ApiError(429, "rate_limited", headers={"Retry-After": str(int(wait) + 1)})
    try:
        officer = await state.auth.authenticate(officer_id, password)
    except AuthorisationError:
        state.limiter.failed(officer_id, address)
        state.audit("web", "login.refused", {"officer": claimed, "reason": "bad_credentials", "client": address})  # fmt: skip
        raise
    state.limiter.succeeded(officer_id)
    token, session = state.sessions.create(officer)
    state.audit(officer.officer_id, "login", {"role": officer.role.value, "client": address})
    return token, session


def session_out(state: WebState, session: Session, token: str | None = None) -> SessionOut:
    return SessionOut(
        officer_id=session.officer.officer_id,
        office=session.officer.office,
        role=session.officer.role.value,
        csrf_token=session.csrf,
        idle_timeout_s=int(state.sessions.idle_s),
        expires_in_s=int(state.sessions.expires_in(session)),
        token=token,
    )


@router.post(
    "",
    response_model=SessionOut,
    responses={
        401: {"model": ErrorBody, "description": "bad credentials"},
        422: {"model": ErrorBody, "description": "invalid request"},
        429: {"model": ErrorBody, "description": "too many failed logins"},
    },
)
async def create_session(body: LoginRequest, request: Request) -> SessionOut:
    """Log in; the token goes in ``Authorization: Bearer`` on later requests."""
    state = web_state(request)
    token, session = await login(state, body.officer_id, body.password, client_address(request))
    return session_out(state, session, token)


@router.get("", response_model=SessionOut, responses=ERROR_RESPONSES)
async def read_session(
    request: Request, session: Annotated[Session, Depends(authenticated)]
) -> SessionOut:
    return session_out(web_state(request), session)


@router.delete("", status_code=204, responses=ERROR_RESPONSES)
async def delete_session(
    request: Request, session: Annotated[Session, Depends(authenticated)]
) -> Response:
    """Log out: the session ends now, whichever way its token was presented."""
    state = web_state(request)
    token, _ = request_token(request)
    if token is not None:
        state.sessions.end(token)
    state.audit(session.officer.officer_id, "logout", {})
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/")
    return response
