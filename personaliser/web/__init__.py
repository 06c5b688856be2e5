"""The HTTP service and web pages of ``perso serve`` (issue 7).

- :mod:`~personaliser.web.app`: :func:`create_app` and :class:`WebSettings`
- :mod:`~personaliser.web.auth`: sessions, CSRF, login limits, the role matrix
- :mod:`~personaliser.web.errors`: exceptions to HTTP statuses, in one place
- :mod:`~personaliser.web.linerun`: the line as a task of the service's loop
- :mod:`~personaliser.web.routes`: the endpoints and pages
- :mod:`~personaliser.web.cli`: ``perso serve``
"""

from __future__ import annotations

from typing import Any

__all__ = ["WebSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: ``perso --help`` imports personaliser.web.cli, which must not pull in FastAPI.
    if name in __all__:
        from personaliser.web import app  # noqa: PLC0415

        return getattr(app, name)
    raise AttributeError(name)
