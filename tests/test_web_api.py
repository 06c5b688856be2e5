"""The HTTP API (personaliser/web): every endpoint, the role matrix and its refusals, sessions and
CSRF, office binding (another office's officer gets 403 and nothing opens), personal data only in
the hand-over, and errors without input values."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from ecabinet.slots import SlotState
from ecabinet.store import CabinetStore, CardState
from personaliser.synth import synth_applications
from personaliser.web.auth import PERMISSIONS, Permission
from tests.web.helpers import OFFICERS, PASSWORD, TODAY, Service

pytest_plugins = ("tests.web.fixtures",)

P = Permission

#: Every endpoint but /api/session: (method, path, body, permission).  Bodies are valid, so an
#: allowed role gets past validation and a refused one sees the role check.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, Permission]] = [
    ("POST", "/api/applications", {"applications": [{"application_id": "BAD-1"}]}, P.INTAKE),
    ("POST", "/api/batches/plan", {"today": TODAY}, P.BATCH_PLAN),
    ("POST", "/api/batches/start", {"batch_ids": ["NO-SUCH-BATCH"]}, P.BATCH_START),
    ("GET", "/api/batches", None, P.BATCH_STATUS),
    ("GET", "/api/stock", None, P.STOCK),
    ("GET", "/api/line", None, P.LINE_STATUS),
    ("POST", "/api/line/start", {"follow": False}, P.LINE_CONTROL),
    ("POST", "/api/line/pause", {}, P.LINE_CONTROL),
    ("POST", "/api/line/resume", {}, P.LINE_CONTROL),
    ("POST", "/api/line/drain", {}, P.LINE_CONTROL),
    ("POST", "/api/line/stop", {}, P.LINE_CONTROL),
    ("POST", "/api/cabinet/dispatch", {}, P.CABINET_DISPATCH),
    ("POST", "/api/cabinet/deposit", {"office": "NO-OFFICE"}, P.CABINET_DEPOSIT),
    ("POST", "/api/cabinet/return", {"retention_days": 3650}, P.CABINET_RETURN),
    ("POST", "/api/cabinet/find", {"application_id": "NO-SUCH-APP"}, P.CABINET_FIND),
    ("POST", "/api/cabinet/handover", {"receipt": "NOSUCH000"}, P.CABINET_RETRIEVE),
    ("POST", "/api/cabinet/retrieve", {"application_id": "NO-APP", "receipt": "X1"}, P.CABINET_RETRIEVE),
    ("GET", "/api/cabinet/retrievals/NO-APP", None, P.CABINET_RETRIEVE),
    ("GET", "/api/cabinet/status", None, P.CABINET_STATUS),
    ("POST", "/api/cabinet/discrepancies/999/resolve", {"resolution": "checked"}, P.DISCREPANCY_RESOLVE),
    ("GET", "/api/audit/verify", None, P.AUDIT_VERIFY),
    ("GET", "/metrics", None, P.METRICS),
]  # fmt: skip


def call(svc: Service, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return svc.client.request(method, path, json=body, headers=headers)


def wait_line_idle(svc: Service, headers: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        line = svc.client.get("/api/line", headers=headers).json()
        if line["state"] in ("idle", "done", "failed"):
            return line
        assert time.monotonic() < deadline, line
        time.sleep(0.1)


def test_every_api_route_is_in_the_matrix(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    routes = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    routes -= {(m, "/api/session") for m in ("GET", "POST", "DELETE")}
    table = {(m, p.replace("NO-APP", "{application_id}").replace("999", "{discrepancy_id}"))
             for m, p, _, _ in ENDPOINTS}  # fmt: skip
    assert routes == table


@pytest.mark.parametrize("officer_id", sorted(OFFICERS))
def test_role_matrix_refuses_with_403_and_audits(service: Service, officer_id: str) -> None:
    headers = service.login(officer_id)
    role = OFFICERS[officer_id]
    for method, path, body, permission in ENDPOINTS:
        r = call(service, method, path, body, headers)
        if role in PERMISSIONS[permission]:
            assert r.status_code < 500 and r.status_code != 403, (officer_id, path, r.text)
            if path == "/api/line/start":
                wait_line_idle(service, headers)
        else:
            assert (r.status_code, r.json()) == (403, {"error": "role"}), (officer_id, path)
    refused = [e for e in service.audit_entries()
               if e["kind"] == "http.refused" and e["actor"] == officer_id]  # fmt: skip
    expected = sum(1 for *_, p in ENDPOINTS if role not in PERMISSIONS[p])
    assert len(refused) == expected
    assert all(e["payload"]["reason"] == "role" for e in refused)


def test_login_failures_are_uniform_audited_and_rate_limited(service: Service) -> None:
    c = service.client
    unknown = c.post("/api/session", json={"officer_id": "nobody", "password": "whatever!!"})
    wrong = c.post("/api/session", json={"officer_id": "en2", "password": "not the password"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json() == {"error": "bad_credentials"}
    for _ in range(4):
        c.post("/api/session", json={"officer_id": "en2", "password": "not the password"})
    # Five failures for en2: the sixth try is refused before any password check, even the right one.
    limited = c.post("/api/session", json={"officer_id": "en2", "password": PASSWORD})
    assert limited.status_code == 429 and limited.json() == {"error": "rate_limited"}
    assert int(limited.headers["retry-after"]) > 0
    entries = [e for e in service.audit_entries() if e["kind"] == "login.refused"]
    assert {e["payload"]["reason"] for e in entries} == {"bad_credentials", "rate_limited"}
    assert any(e["payload"]["officer"] == "en2" for e in entries)
    assert all("password" not in str(e) and PASSWORD not in str(e) for e in entries)


def test_sessions_bearer_logout_and_unauthenticated(service: Service) -> None:
    c = service.client
    assert c.get("/api/line").status_code == 401
    assert c.get("/api/line").json() == {"error": "not_authenticated"}
    assert c.get("/api/line", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    headers = service.login("op1")
    me = c.get("/api/session", headers=headers).json()
    assert (me["officer_id"], me["role"], me["office"]) == ("op1", "operator", service.office)
    assert me["token"] is None and me["idle_timeout_s"] == 900
    assert c.delete("/api/session", headers=headers).status_code == 204
    assert c.get("/api/line", headers=headers).status_code == 401


def test_a_refused_caller_is_told_so_before_any_validation(service: Service) -> None:
    """A malformed body does not get a 422 (and with it the route's schema) past the access
    check: no session -> 401, the wrong role -> 403 (audited), the right role -> 422."""
    path = "/api/cabinet/retrieve"

    def malformed(headers: dict[str, str]) -> Any:
        sent = {**headers, "Content-Type": "application/json"}
        return service.client.post(path, content=b"{not json", headers=sent)

    anonymous = malformed({})
    assert (anonymous.status_code, anonymous.json()) == (401, {"error": "not_authenticated"})
    wrong_role = malformed(service.login("op1"))
    assert (wrong_role.status_code, wrong_role.json()) == (403, {"error": "role"})
    refused = [e for e in service.audit_entries()
               if e["kind"] == "http.refused" and e["actor"] == "op1"
               and e["payload"].get("route") == path]  # fmt: skip
    assert refused and refused[-1]["payload"]["reason"] == "role"
    allowed = malformed(service.login("co1"))
    assert allowed.status_code == 422 and allowed.json()["error"] == "validation"
    # A body that parses but does not fit the model: the access check first as well.
    assert service.client.post(path, json={"application_id": 7}).status_code == 401


def test_metrics_scrape_token_reads_metrics_and_nothing_else(service: Service) -> None:
    token = "prometheus-scrape-token-0123456789"
    state = service.app.state.web
    state.metrics_token_digest = hashlib.sha256(token.encode()).digest()
    try:
        bearer = {"Authorization": f"Bearer {token}"}
        scraped = service.client.get("/metrics", headers=bearer)
        assert scraped.status_code == 200 and "perso_" in scraped.text
        assert (
            service.client.get(
                "/metrics", headers={"Authorization": f"Bearer {token}x"}
            ).status_code
            == 401
        )
        # The scrape token is not a session: nothing else opens with it.
        assert service.client.get("/api/line", headers=bearer).status_code == 401
        assert service.client.get("/api/cabinet/status", headers=bearer).status_code == 401
        # Engineers keep reading with their session; other roles are still refused.
        assert service.client.get("/metrics", headers=service.login("en1")).status_code == 200
        assert service.client.get("/metrics", headers=service.login("co1")).status_code == 403
    finally:
        state.metrics_token_digest = None
    assert (
        service.client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code
        == 401
    )


def test_cookie_session_needs_the_csrf_token_for_changes(service: Service) -> None:
    c = service.client
    page = c.post(
        "/login", data={"officer_id": "op1", "password": PASSWORD}, follow_redirects=False
    )
    assert page.status_code == 303 and page.headers["location"] == "/operator"
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    token = page.cookies["perso_session"]
    jar = {"Cookie": f"perso_session={token}"}
    assert c.get("/api/line", headers=jar).status_code == 200  # reads need no CSRF token
    refused = c.post("/api/line/pause", headers=jar, json={})
    assert (refused.status_code, refused.json()) == (403, {"error": "csrf"})
    csrf = c.get("/api/session", headers=jar).json()["csrf_token"]
    bad = c.post("/api/line/pause", headers={**jar, "X-CSRF-Token": "x" * len(csrf)}, json={})
    assert bad.json() == {"error": "csrf"}
    ok = c.post("/api/line/pause", headers={**jar, "X-CSRF-Token": csrf}, json={})
    assert (ok.status_code, ok.json()) == (409, {"error": "line_not_running"})
    assert any(e["kind"] == "http.refused" and e["payload"]["reason"] == "csrf"
               for e in service.audit_entries())  # fmt: skip
    c.cookies.clear()


def test_another_office_gets_403_and_nothing_opens(service: Service) -> None:
    c = service.client
    app_id = service.cards_at(service.office)[0]
    receipt = service.receipts[app_id]
    before = len(service.audit_entries())
    for officer_id in ("co-x", "sv-x"):
        headers = service.login(officer_id)
        for path, body in (
            ("/api/cabinet/handover", {"receipt": receipt}),
            ("/api/cabinet/retrieve", {"application_id": app_id, "receipt": receipt}),
            ("/api/cabinet/find", {"application_id": app_id}),
        ):
            r = c.post(path, headers=headers, json=body)
            assert (r.status_code, r.json()) == (403, {"error": "other_office"}), path
        r = c.get(f"/api/cabinet/retrievals/{app_id}", headers=headers)
        assert r.status_code == 404
    with CabinetStore(service.prepared.home.path / "cabinet.db") as cabinets:
        card = cabinets.card(app_id)
        assert card is not None and card.state is CardState.STOCKED
        assert card.cabinet is not None and card.drawer is not None and card.index is not None
        slot = cabinets.slot(card.cabinet, card.drawer, card.index)
        assert slot is not None and slot.state is SlotState.OCCUPIED
    entries = service.audit_entries()
    sent = [e for e in entries if e["kind"] == "command.sent"
            and e["payload"].get("application_id") == app_id]  # fmt: skip
    assert [e["actor"] for e in sent] == ["op1"]  # the deposit, and nothing since
    refusals = [e for e in entries[before:] if e["kind"].endswith(".refused")]
    assert {e["actor"] for e in refusals} == {"co-x", "sv-x"}
    assert {e["payload"]["reason"] for e in refusals} == {"other_office"}
    assert len(refusals) == 6  # handover (a find), retrieve and find, for each officer
    assert receipt not in str(entries)


def test_find_shows_no_personal_data_and_wrong_receipt_opens_nothing(service: Service) -> None:
    c = service.client
    headers = service.login("co1")
    app_id = service.cards_at(service.office)[1]
    found = c.post("/api/cabinet/find", headers=headers, json={"receipt": service.receipts[app_id]})
    assert found.status_code == 200
    (card,) = found.json()
    assert set(card) == {"application_id", "state", "office", "collection_date", "cabinet", "slot"}
    assert card["application_id"] == app_id and card["state"] == "STOCKED"
    wrong = c.post("/api/cabinet/retrieve", headers=headers,
                   json={"application_id": app_id, "receipt": "WRONG0000000"})  # fmt: skip
    assert (wrong.status_code, wrong.json()) == (403, {"error": "wrong_receipt"})
    both = c.post("/api/cabinet/find", headers=headers, json={"hkid": "A1234563", "receipt": "X"})
    assert both.status_code == 422 and both.json()["error"] == "validation"
    assert "A1234563" not in both.text  # validation errors name fields, never values


def test_handover_then_retrieve_issues_the_card_and_purges(service: Service) -> None:
    c = service.client
    headers = service.login("co1")
    app_id = service.cards_at(service.office)[2]
    receipt = service.receipts[app_id]
    progress = c.get(f"/api/cabinet/retrievals/{app_id}", headers=headers).json()
    assert progress["phase"] == "waiting" and progress["slot"] is None
    shown = c.post("/api/cabinet/handover", headers=headers, json={"receipt": receipt.lower()})
    assert shown.status_code == 200, shown.text
    card = shown.json()
    assert card["application_id"] == app_id and card["surname"]
    assert card["portrait"].startswith("data:image/jpeg;base64,/9j/")
    assert shown.headers["cache-control"] == "no-store"
    done = c.post("/api/cabinet/retrieve", headers=headers,
                  json={"application_id": app_id, "receipt": receipt})  # fmt: skip
    assert done.status_code == 200
    result = done.json()
    assert (result["outcome"], result["slot"]) == ("issued", card["slot"])
    progress = c.get(f"/api/cabinet/retrievals/{app_id}", headers=headers).json()
    assert (progress["phase"], progress["state"]) == ("taken", "ISSUED")
    # Issued: the receipt digest and the personal data are gone; asking again opens nothing.
    again = c.post("/api/cabinet/handover", headers=headers, json={"receipt": receipt})
    assert (again.status_code, again.json()) == (404, {"error": "not_found"})
    twice = c.post("/api/cabinet/retrieve", headers=headers,
                   json={"application_id": app_id, "receipt": receipt})  # fmt: skip
    assert (twice.status_code, twice.json()) == (409, {"error": "card_issued"})
    store = service.app.state.web.store
    assert store.get(app_id).purged
    kinds = [e["kind"] for e in service.audit_entries() if e["actor"] == "co1"]
    assert "handover.shown" in kinds and "find" in kinds
    # Another officer of the same office cannot follow this officer's retrieval.
    other = c.get(f"/api/cabinet/retrievals/{app_id}", headers=service.login("sv1"))
    assert other.status_code == 404


def test_intake_plan_start_and_run_the_line(service: Service) -> None:
    c = service.client
    op = service.login("op1")
    apps = [a.model_dump(mode="json") for a in synth_applications(4, seed=23)]
    bad = dict(apps[0], application_id="BAD-HKID-1", hkid="Z999999(9)")
    r = c.post("/api/applications", headers=op, json={"applications": [*apps, bad]})
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["new"], result["rejected"]) == (4, 1)
    (rejection,) = result["rejections"]
    assert (rejection["line"], rejection["field"], rejection["application_id"]) == (
        5,
        "hkid",
        "BAD-HKID-1",
    )
    assert "Z999999" not in r.text
    assert (
        c.post("/api/applications", headers=op, json={"applications": apps}).json()["duplicate"]
        == 4
    )
    planned = c.post("/api/batches/plan", headers=op, json={"today": TODAY}).json()
    assert planned["cards"] == 4 and planned["batches"]
    started = c.post("/api/batches/start", headers=op, json={"today": TODAY, "all": True})
    assert sum(started.json()["queued"].values()) == 4
    unknown = c.post("/api/batches/start", headers=op, json={"today": TODAY, "batch_ids": ["X"]})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "unknown_batch"})
    assert c.post("/api/line/start", headers=op, json={"follow": True}).json()["state"] == "running"
    again = c.post("/api/line/start", headers=op, json={})
    assert (again.status_code, again.json()) == (409, {"error": "line_running"})
    deadline = time.monotonic() + 60
    while (line := c.get("/api/line", headers=op).json())["passed"] < 4:
        assert time.monotonic() < deadline and line["state"] == "running", line
        time.sleep(0.1)
    assert c.post("/api/line/pause", headers=op).json()["state"] == "paused"
    assert c.post("/api/line/resume", headers=op).json()["state"] == "running"
    assert c.post("/api/line/drain", headers=op).json()["state"] == "draining"
    line = wait_line_idle(service, op)
    assert (line["state"], line["ended"], line["passed"]) == ("done", "drained", 4)
    assert {s["kind"] for s in line["stations"]} == {"encoder", "printer", "qa"}
    assert sum(s["cards"] for s in line["stations"] if s["kind"] == "qa") == 4
    assert line["history"] and line["history"][-1]["passed"] == 4
    batches = {b["batch_id"]: b for b in c.get("/api/batches", headers=op).json()}
    assert sum(b["counts"].get("PASSED", 0) for b in batches.values()) == 4
    stock = c.get("/api/stock", headers=op).json()
    assert stock and all(s["balanced"] for s in stock)
    metrics = c.get("/metrics", headers=service.login("en1"))
    assert metrics.status_code == 200
    assert 'perso_card_transitions_total{to_state="PASSED"} 4.0' in metrics.text
    assert "perso_http_request_seconds_bucket" in metrics.text
    assert "APP-0023" not in metrics.text  # no application ids in labels
    kinds = {e["kind"] for e in service.audit_entries() if e["actor"] == "op1"}
    assert {"intake", "batch.planned", "batch.started", "line.start", "line.pause",
            "line.resume", "line.drain"} <= kinds  # fmt: skip


def test_status_return_resolve_and_audit_verify(service: Service) -> None:
    c = service.client
    op, sv = service.login("op1"), service.login("sv1")
    status = c.get("/api/cabinet/status", headers=op).json()
    assert {x["office"] for x in status["cabinets"]} == set(service.offices.values())
    assert all(x["online"] for x in status["cabinets"]) and status["discrepancies"] == []
    kept = c.post("/api/cabinet/return", headers=op, json={"retention_days": 3650}).json()
    assert kept == {"results": {}, "returned": []}
    missing = c.post(
        "/api/cabinet/discrepancies/4242/resolve", headers=sv, json={"resolution": "ok"}
    )
    assert (missing.status_code, missing.json()) == (404, {"error": "not_found"})
    bad = c.post(
        "/api/cabinet/discrepancies/1/resolve", headers=sv, json={"resolution": "a\u2028b"}
    )
    assert bad.status_code == 422
    verified = c.get("/api/audit/verify", headers=sv).json()
    assert verified["ok"] is True and verified["entries"] > 20 and verified["failed_at"] is None


def test_deactivated_officer_loses_the_session(service: Service) -> None:
    headers = service.login("sv1")
    assert service.client.get("/api/cabinet/status", headers=headers).status_code == 200
    cabinets = service.app.state.web.site.cabinets
    service.client.portal.call(_set_active, cabinets, "sv1", False)  # type: ignore[union-attr]
    try:
        assert service.client.get("/api/cabinet/status", headers=headers).status_code == 401
    finally:
        service.client.portal.call(_set_active, cabinets, "sv1", True)  # type: ignore[union-attr]
    assert service.client.get("/api/cabinet/status", headers=headers).status_code == 401


async def _set_active(cabinets: CabinetStore, officer_id: str, active: bool) -> None:
    cabinets.set_officer_active(officer_id, active)


def test_pages_redirect_refuse_and_carry_security_headers(service: Service) -> None:
    c = service.client
    c.cookies.clear()
    r = c.get("/operator", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    login = c.get("/login")
    assert login.status_code == 200 and 'autocomplete="current-password"' in login.text
    csp = login.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert login.headers["x-content-type-options"] == "nosniff"
    bad = c.post("/login", data={"officer_id": "op1", "password": "wrong password"})
    assert bad.status_code == 401 and "not accepted" in bad.text
    cross = c.post("/login", data={"officer_id": "op1", "password": PASSWORD},
                   headers={"Origin": "https://evil.example"})  # fmt: skip
    assert cross.status_code == 403
    ok = c.post("/login", data={"officer_id": "co1", "password": PASSWORD}, follow_redirects=False)
    assert ok.headers["location"] == "/counter"
    counter = c.get("/counter")
    assert (
        counter.status_code == 200
        and 'id="receipt"' in counter.text
        and "autofocus" in counter.text
    )
    assert 'aria-live="polite"' in counter.text
    refused = c.get("/operator")
    assert refused.status_code == 403 and "Not allowed" in refused.text
    assert c.get("/static/counter.js").status_code == 200
    for page in ("/login", "/counter"):
        assert "http://" not in c.get(page).text and "https://" not in c.get(page).text
    c.cookies.clear()


def test_openapi_describes_every_endpoint_with_models(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ok = op["responses"].get("200") or op["responses"].get("204")
            assert ok is not None, (method, path)
            if path != "/metrics" and "200" in op["responses"]:
                assert "schema" in ok["content"]["application/json"], (method, path)
    assert service.client.get("/docs").status_code == 404  # no CDN-loaded docs page
