"""The ASGI application: :func:`create_app` builds it; its lifespan opens the line's store and
the site (:func:`~personaliser.site.open_site`) on the server's event loop and closes them.

::

    perso serve ─► uvicorn ─► create_app(home, site_config, settings)
                                 lifespan: keystore ─ store ─ open_site (controller, flows, audit)
                                           sessions ─ authenticator ─ line runner ─ metrics
                                 /api/session      routes/session.py     log in / out
                                 /api/applications, /api/batches…, /api/stock, /api/line…, /metrics
                                                   routes/production.py
                                 /api/cabinet/…, /api/audit/verify
                                                   routes/cabinet.py
                                 /login /operator /counter, /static
                                                   routes/pages.py

The OpenAPI description is at ``/openapi.json``.  FastAPI's interactive docs are off: they load
their scripts from a CDN, and every asset this service shows is served from the package.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecabinet.officers import DEFAULT_KDF, KdfParams
from personaliser.line import LineSettings
from personaliser.metrics import LineMetrics
from personaliser.operations import Home
from personaliser.site import SiteConfig, open_site
from personaliser.web.auth import Authenticator, LoginLimiter, SessionStore
from personaliser.web.errors import install_error_handlers
from personaliser.web.linerun import LineRunner
from personaliser.web.routes import cabinet, pages, production, session
from personaliser.web.state import WebState

__all__ = ["WebSettings", "create_app"]

PACKAGE: Final = Path(__file__).resolve().parent

#: The pages load scripts, styles and images from this service only; portraits are data: URLs.
CSP: Final = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the login
    # form's POST, and the login's origin check (routes/pages.py) could not tell it from another
    # site's.  Nothing leaves for other sites either way.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)
#: Request latency buckets: an officer's retrieval is answered in milliseconds (issue 7: p99 <
#: 100 ms); a deposit of a tray or a login (scrypt) takes up to seconds.
LATENCY_BUCKETS: Final = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class WebSettings:
    """How the service runs (``perso serve`` fills these from its arguments)."""

    #: The cookie's Secure flag: on when served over TLS (behind a TLS proxy); off on loopback
    #: http, where a browser would not send a Secure cookie back.
    secure_cookies: bool = False
    idle_timeout_s: float = 15 * 60
    absolute_timeout_s: float = 8 * 3600
    #: The scrypt cost spent on an unknown officer id: the cost new hashes get.
    kdf: KdfParams = DEFAULT_KDF
    login_failures_per_officer: int = 5
    login_failures_per_address: int = 20
    login_window_s: float = 15 * 60
    line: LineSettings = field(default_factory=LineSettings)
    line_out: Path | None = None  # default HOME/out
    wait_online_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    #: The Prometheus scrape token's SHA-256 (``--metrics-token-file``): /metrics accepts it as a
    #: bearer token besides an engineer's session.  Only the digest is kept.
    metrics_token_digest: bytes | None = field(default=None, repr=False)


class _Observe:
    """Pure ASGI middleware: security headers on every response, and request latency by route
    template and status (never by raw path: paths can carry ids)."""

    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app = app
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        static = scope["path"].startswith("/static/")

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS:
                    headers.append(name.decode(), value.decode())
                # Pages and API answers may hold personal data (the hand-over): never cached.
                headers["cache-control"] = "no-cache" if static else "no-store"
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            label = path if isinstance(path, str) else ("/static" if static else "unmatched")
            self.latency.labels(scope["method"], label, str(status)).observe(
                time.perf_counter() - started
            )


def create_app(home: Home, site_config: SiteConfig, settings: WebSettings | None = None) -> FastAPI:
    """The service over one line home and its site.  Nothing is opened until the lifespan
    starts (uvicorn, or ``with TestClient(app)``)."""
    conf = settings or WebSettings()
    registry = CollectorRegistry()
    metrics = LineMetrics(registry)
    latency = Histogram(
        "perso_http_request_seconds",
        "HTTP request latency by route template and status",
        ["method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            keystore = home.ensure()
            store = stack.enter_context(home.open_store(keystore))
            site = await stack.enter_async_context(
                open_site(home, keystore, store, site_config, wait_online=conf.wait_online_s)
            )
            auth = Authenticator(site.cabinets, conf.kdf)
            await auth.prepare()
            runner = LineRunner(
                store, keystore, conf.line, conf.line_out or home.path / "out", metrics
            )
            stack.push_async_callback(runner.close)
            state = WebState(
                home=home,
                keystore=keystore,
                store=store,
                site=site,
                sessions=SessionStore(
                    idle_s=conf.idle_timeout_s,
                    absolute_s=conf.absolute_timeout_s,
                    clock=conf.clock,
                ),
                limiter=LoginLimiter(
                    per_officer=conf.login_failures_per_officer,
                    per_address=conf.login_failures_per_address,
                    window_s=conf.login_window_s,
                    clock=conf.clock,
                ),
                auth=auth,
                line=runner,
                registry=registry,
                secure_cookies=conf.secure_cookies,
                metrics_token_digest=conf.metrics_token_digest,
            )
            app.state.web = state
            state.audit("web", "service.started", {"site": site_config.site})
            try:
                yield
            finally:
                state.audit("web", "service.stopped", {"site": site_config.site})

    app = FastAPI(
        title="perso-engine",
        summary="Card personalisation line and e-cabinet service",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(session.router)
    app.include_router(production.router)
    app.include_router(cabinet.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    app.add_middleware(_Observe, latency=latency)
    return app
