"""Schemathesis against the service's OpenAPI description, in process (ASGI), with an
authenticated session of each role: no generated request gets a server error (5xx), and every
answer below 500 matches its documented schema.

Schemathesis drives the app itself (it runs the lifespan, so the site and the stores live on its
one event loop); the sessions and the stocked cards are made through it too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import response_schema_conformance

from ecabinet.officers import Role
from personaliser.web.app import create_app
from tests.web.helpers import PASSWORD, Prepared, add_officers, copy_home
from tests.web.helpers import settings as web_settings

pytest_plugins = ("tests.web.fixtures",)

#: Examples per operation and role: every operation and its validation branches are reached, and
#: the whole module stays well under a minute.
EXAMPLES = 10
ROLES = {"op1": Role.OPERATOR, "sv1": Role.SUPERVISOR, "en1": Role.ENGINEER, "co1": Role.COUNTER_OFFICER}  # fmt: skip


def _call(schema: Any, method: str, path: str, **kw: Any) -> Any:
    operation = schema[path][method]
    return operation.Case(**kw).call()


@pytest.fixture(scope="module")
def schema(web_line_home: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    prepared = copy_home(web_line_home, tmp_path_factory.mktemp("schema") / "copy")
    office = prepared.site.cabinets[0].office
    add_officers(prepared.home, {oid: (office, role) for oid, role in ROLES.items()})
    # Generated logins fail by the dozen from one address: no address limit here.
    app = create_app(prepared.home, prepared.site, web_settings(login_failures_per_address=10**6))
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        yield loaded
    finally:
        # The ASGI transport keeps a started app's lifespan for the process; stop it here so the
        # site (broker, emulated cabinets, audit writer) closes with this module.
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()


def _login(schema: Any, officer_id: str) -> dict[str, str]:
    r = _call(schema, "POST", "/api/session", body={"officer_id": officer_id, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_no_server_error_and_documented_answers_for_every_role(schema: Any) -> None:
    op = _login(schema, "op1")
    assert _call(schema, "POST", "/api/cabinet/dispatch", headers=op).json()["dispatched"] == 12
    stocked = _call(schema, "POST", "/api/cabinet/deposit", headers=op, body={})
    assert stocked.json()["counts"] == {"stocked": 12}
    failures: list[str] = []
    codes: Counter[int] = Counter()
    for officer_id in ROLES:
        headers = _login(schema, officer_id)
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/api/line/start":
                continue  # it runs the line until drained: test_web_api drives it
            if (operation.method.upper(), operation.path) == ("DELETE", "/api/session"):
                continue  # logging out would leave the rest unauthenticated
            _fuzz(operation, officer_id, headers, failures, codes)
    assert failures == []
    assert sum(codes.values()) > 300
    # Sessions held: the generated requests got past authentication (not all 401s).
    assert codes[401] < sum(codes.values()) // 10
    assert codes[200] > 20 and codes[403] > 20 and codes[422] > 20, codes


def _fuzz(
    operation: Any,
    officer_id: str,
    headers: dict[str, str],
    failures: list[str],
    codes: Counter[int],
) -> None:
    """Run one operation's examples as ``officer_id``; failures appended, statuses counted."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(
        case=st.one_of(
            operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
            operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
        )
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        codes[response.status_code] += 1
        where = f"{officer_id}: {case.method} {case.formatted_path}"
        if response.status_code >= 500:
            failures.append(f"{where} -> {response.status_code}")
            return
        try:
            case.validate_response(response, checks=[response_schema_conformance])
        except Exception as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}"[:400])

    run()
