"""The one place where exceptions become HTTP answers.

::

    ApiError(status, code)             raised by the web layer itself (401 not_authenticated,
                                       403 csrf / role, 409 line_running, 429 rate_limited …)
    ecabinet.errors.AuthorisationError 401 when reason == "bad_credentials", else 403 {reason}
    ecabinet.store.CardStateError      404 when reason == "not_found", else 409 {reason}
    ecabinet.errors.CapacityError      409 capacity
    ecabinet.errors.SlotError          409 slot_state
    ecabinet.errors.LinkError          503 cabinet_offline / link_down (CabinetOfflineError is one)
    ecabinet.controller.CommandTimeoutError  504 cabinet_timeout
    personaliser NotFoundError               404 not_found
    IllegalTransitionError, DuplicateError, PersonalDataError   409
    RequestValidationError, ValueError       422 validation (field locations and messages only),
                                             but only once the route's access check has passed
    starlette HTTPException                  its own status, {"error": <short code>}

Bodies are :class:`~personaliser.web.models.ErrorBody`: a code and, for validation, where the
input was wrong; never an input value (it may be an HKIC or receipt number) and never personal
data.  Anything else is a bug and stays a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecabinet.controller import CommandTimeoutError
from ecabinet.errors import AuthorisationError, CapacityError, LinkError, SlotError
from ecabinet.store import CardStateError
from personaliser.errors import (
    DuplicateError,
    IllegalTransitionError,
    NotFoundError,
    PersonalDataError,
)
from personaliser.web.models import ErrorBody

__all__ = [
    "ERROR_RESPONSES",
    "ApiError",
    "access_check",
    "install_error_handlers",
    "status_of",
]

#: Marks a dependency that decides who may call a route (401/403): see ``access_check``.
_ACCESS_CHECK: Final = "__perso_access_check__"

_Check = TypeVar("_Check", bound=Callable[[Request], Awaitable[Any]])


def access_check(dependency: _Check) -> _Check:
    """Mark ``dependency`` (taking the request) as a route's access check.  FastAPI reads and
    validates a request's body before it runs the dependencies, so a caller without a session,
    or without the role, would learn from a 422 what a route expects; the validation handler
    runs the marked checks first, and the caller gets their 401/403 (audited like any other)."""
    setattr(dependency, _ACCESS_CHECK, True)
    return dependency


async def _refused_first(request: Request) -> None:
    """Run the matched route's access checks (raising their ApiError), in declaration order."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    for sub in getattr(dependant, "dependencies", ()):
        if getattr(sub.call, _ACCESS_CHECK, False):
            await sub.call(request)


class ApiError(Exception):
    """A refusal decided by the web layer: HTTP ``status`` and a short ``code``."""

    def __init__(self, status: int, code: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.headers = headers


def status_of(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, code) for a known exception; None for a bug."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    if isinstance(exc, AuthorisationError):
        return (401 if exc.reason == "bad_credentials" else 403), exc.reason
    if isinstance(exc, CardStateError):
        return (404 if exc.reason == "not_found" else 409), exc.reason
    if isinstance(exc, CapacityError):
        return 409, "capacity"
    if isinstance(exc, SlotError):
        return 409, "slot_state"
    if isinstance(exc, CommandTimeoutError):
        return 504, "cabinet_timeout"
    if isinstance(exc, LinkError):
        return 503, "cabinet_offline" if hasattr(exc, "cabinet") else "link_down"
    if isinstance(exc, NotFoundError):
        return 404, "not_found"
    if isinstance(exc, PersonalDataError):
        return 409, "personal_data_purged"
    if isinstance(exc, IllegalTransitionError | DuplicateError):
        return 409, "conflict"
    if isinstance(exc, ValueError):
        return 422, "validation"
    return None


_HTTP_CODES: Final = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}

#: For the OpenAPI description: what every authenticated endpoint may answer besides success.
ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": ErrorBody, "description": "not authenticated, or bad credentials"},
    403: {"model": ErrorBody, "description": "role, office, receipt or CSRF refusal"},
    422: {"model": ErrorBody, "description": "invalid request"},
}


def _body(code: str, detail: list[str] | None = None) -> dict[str, Any]:
    return {"error": code} if detail is None else {"error": code, "detail": detail}


def _validation_detail(exc: RequestValidationError) -> list[str]:
    out = []
    for err in exc.errors()[:20]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        out.append(f"{loc}: {err.get('msg', 'invalid')}"[:200])
    return out


def install_error_handlers(app: FastAPI) -> None:
    async def known(request: Request, exc: Exception) -> JSONResponse:
        mapped = status_of(exc)
        if mapped is None:  # pragma: no cover - registered only for the mapped types
            raise exc
        status, code = mapped
        headers = exc.headers if isinstance(exc, ApiError) else None
        return JSONResponse(_body(code), status_code=status, headers=headers)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        try:
            await _refused_first(request)
        except ApiError as refusal:
            return await known(request, refusal)
        return JSONResponse(_body("validation", _validation_detail(exc)), status_code=422)

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(_body(code), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    for kind in (
        ApiError,
        AuthorisationError,
        CardStateError,
        SlotError,
        CommandTimeoutError,
        LinkError,
        NotFoundError,
        PersonalDataError,
        IllegalTransitionError,
        DuplicateError,
        ValueError,
    ):
        app.add_exception_handler(kind, known)
