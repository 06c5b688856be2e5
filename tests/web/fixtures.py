"""Pytest fixtures of the web tests (imported by the tests/test_web_*.py modules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from personaliser.web.app import create_app
from tests.web.helpers import (
    OFFICERS,
    Prepared,
    Service,
    add_officers,
    build_line_home,
    copy_home,
    offices_of,
    receipts,
    settings,
)


@pytest.fixture(scope="session")
def web_line_home(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """A line home whose 12 cards have PASSED (built once; modules take copies)."""
    return build_line_home(tmp_path_factory.mktemp("web-line"), cards=12, seed=11)


def start_service(prepared: Prepared, **kw: Any) -> Iterator[Service]:
    offices = offices_of(prepared.applications)
    counts = {o: list(offices.values()).count(o) for o in set(offices.values())}
    office = max(sorted(counts), key=lambda o: counts[o])
    other = next(o for o in sorted(counts) if o != office)
    add_officers(
        prepared.home,
        {oid: (other if oid.endswith("-x") else office, role) for oid, role in OFFICERS.items()},
    )
    app = create_app(prepared.home, prepared.site, settings(**kw))
    with TestClient(app) as client:
        yield Service(
            client, app, prepared, receipts(prepared.applications), offices, office, other
        )


@pytest.fixture(scope="module")
def service(web_line_home: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service whose cards are dispatched and deposited (STOCKED) through the operator API."""
    prepared = copy_home(web_line_home, tmp_path_factory.mktemp("web") / "copy")
    for svc in start_service(prepared):
        op = svc.login("op1")
        assert svc.client.post("/api/cabinet/dispatch", headers=op).json()["dispatched"] == 12
        deposit = svc.client.post("/api/cabinet/deposit", headers=op, json={})
        assert deposit.status_code == 200 and deposit.json()["counts"] == {"stocked": 12}
        yield svc


__all__ = ["service", "start_service", "web_line_home"]
