"""The pages: ``/login``, ``/operator`` (dashboard) and ``/counter`` (hand-over), rendered on the
server; a little vanilla JavaScript under ``/static`` talks to the JSON API.  Nothing is loaded
from anywhere else (CSP ``'self'``), and the pages work with the keyboard alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ecabinet.errors import AuthorisationError
from ecabinet.officers import Officer, Role
from personaliser.web.auth import Permission, Session, allowed
from personaliser.web.errors import ApiError
from personaliser.web.routes.session import client_address, login
from personaliser.web.state import COOKIE, WebState, request_token, session_of, web_state

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")

_HOME: Final = {
    Role.OPERATOR: "/operator",
    Role.ENGINEER: "/operator",
    Role.COUNTER_OFFICER: "/counter",
    Role.SUPERVISOR: "/counter",
}


def _page(
    request: Request,
    name: str,
    *,
    title: str,
    session: Session | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    officer = None if session is None else session.officer
    return templates.TemplateResponse(
        request,
        name,
        {
            "title": title,
            "officer": officer,
            "csrf": "" if session is None else session.csrf,
            **context,
        },
        status_code=status,
    )


def _session(request: Request) -> tuple[WebState, Session | None]:
    state = web_state(request)
    found = session_of(request, state)
    return state, None if found is None else found[1]


def _same_origin(request: Request) -> bool:
    """A form post from another site (login CSRF) carries its own Origin; browsers send one on
    every POST, so an absent header means a non-browser client."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "")


@router.get("/")
async def index(request: Request) -> Response:
    _, session = _session(request)
    if session is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(_HOME[session.officer.role], status_code=303)


@router.get("/login")
async def login_page(request: Request) -> Response:
    _, session = _session(request)
    if session is not None:
        return RedirectResponse(_HOME[session.officer.role], status_code=303)
    return _page(request, "login.html", title="Log in", message=None)


@router.post("/login")
async def login_form(
    request: Request,
    officer_id: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    state = web_state(request)
    if not _same_origin(request):
        return _page(request, "login.html", title="Log in", status=403,
                     message="This form must be sent from this site.")  # fmt: skip
    try:
        token, session = await login(state, officer_id, password, client_address(request))
    except AuthorisationError:
        return _page(request, "login.html", title="Log in", status=401,
                     message="Officer id or password not accepted.", officer_id=officer_id[:64])  # fmt: skip
    except ApiError as exc:
        return _page(request, "login.html", title="Log in", status=exc.status,
                     message="Too many failed attempts. Try again later.")  # fmt: skip
    response = RedirectResponse(_HOME[session.officer.role], status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=state.secure_cookies,
        path="/",
        # No max_age: a browser session cookie; the server ends the session on idle or age.
    )
    return response


@router.post("/logout")
async def logout_form(
    request: Request, csrf_token: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    state, session = _session(request)
    if session is not None and session.csrf_ok(csrf_token):
        token, _ = request_token(request)
        if token is not None:
            state.sessions.end(token)
        state.audit(session.officer.officer_id, "logout", {})
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _guard(request: Request, permission: Permission) -> tuple[Session | None, Response | None]:
    state, session = _session(request)
    if session is None:
        return None, RedirectResponse("/login", status_code=303)
    if not allowed(session.officer.role, permission):
        state.audit(
            session.officer.officer_id,
            "http.refused",
            {"reason": "role", "permission": permission.value, "route": request.url.path},
        )
        return session, _page(
            request, "forbidden.html", title="Not allowed", session=session, status=403
        )
    return session, None


def _can(officer: Officer, permission: Permission) -> bool:
    return allowed(officer.role, permission)


@router.get("/operator")
async def operator_page(request: Request) -> Response:
    session, refusal = _guard(request, Permission.LINE_STATUS)
    if refusal is not None:
        return refusal
    assert session is not None
    return _page(
        request,
        "operator.html",
        title="Production",
        session=session,
        can_control=_can(session.officer, Permission.LINE_CONTROL),
        can_cabinets=_can(session.officer, Permission.CABINET_STATUS),
    )


@router.get("/counter")
async def counter_page(request: Request) -> Response:
    session, refusal = _guard(request, Permission.CABINET_RETRIEVE)
    if refusal is not None:
        return refusal
    assert session is not None
    return _page(request, "counter.html", title="Counter", session=session)
