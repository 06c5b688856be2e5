"""Homes for the web tests: a line that has passed a few cards, an embedded site with one
emulated cabinet per office, and officers of every role (cheap scrypt cost: log2 N = 10)."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from ecabinet.officers import KdfParams, Role, add_officer
from ecabinet.store import CabinetStore
from personaliser.cli import main
from personaliser.operations import Home
from personaliser.site import SiteConfig, demo_site
from personaliser.synth import synth_applications
from personaliser.web.app import WebSettings

FAST_KDF = KdfParams(log2_n=10)
PASSWORD = "correct horse battery"
TODAY = "2026-11-02"


@dataclass(frozen=True)
class Prepared:
    home: Home
    site: SiteConfig
    applications: Path
    offices: tuple[str, ...]


def site_toml(config: SiteConfig) -> str:
    lines = [f'site = "{config.site}"', 'broker = "embedded"', ""]
    for c in config.cabinets:
        lines += ["[[cabinets]]", f'id = "{c.id}"', f'office = "{c.office}"',
                  f"drawers = {c.drawers}", f"slots = {c.slots}", ""]  # fmt: skip
    return "\n".join(lines)


def build_line_home(root: Path, *, cards: int = 8, seed: int = 11) -> Prepared:
    """Applications imported, queued and run through the in-process line: every card PASSED."""
    home = Home(root / "home")
    home.ensure()
    apps = root / "applications.jsonl"
    with apps.open("w", encoding="utf-8") as fh:
        for app in synth_applications(cards, seed=seed):
            fh.write(app.to_json_line() + "\n")
    h = str(home.path)
    assert main(["applications", "import", str(apps), "--home", h]) == 0
    assert main(["batch", "start", "--all", "--home", h, "--today", TODAY]) == 0
    assert main(["line", "run", "--home", h, "--out", str(root / "out")]) == 0
    offices = sorted(
        {json.loads(line)["collection_office"] for line in apps.read_text().splitlines()}
    )
    config = demo_site(offices, slots=20, drawers=2)
    (home.path / "site.toml").write_text(site_toml(config), encoding="utf-8")
    return Prepared(home, config, apps, tuple(offices))


def copy_home(prepared: Prepared, dest: Path) -> Prepared:
    """A private copy (stores, keys, site.toml) for one test module."""
    shutil.copytree(prepared.home.path.parent, dest, dirs_exist_ok=False)
    home = Home(dest / prepared.home.path.name)
    return Prepared(home, prepared.site, dest / prepared.applications.name, prepared.offices)


def add_officers(home: Home, officers: dict[str, tuple[str, Role]]) -> None:
    with CabinetStore(home.path / "cabinet.db") as cabinets:
        for officer_id, (office, role) in officers.items():
            add_officer(cabinets, officer_id, office, role, PASSWORD, params=FAST_KDF)


def settings(**kw: object) -> WebSettings:
    return WebSettings(kdf=FAST_KDF, **kw)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def receipts(applications: Path) -> dict[str, str]:
    """application id -> receipt number, from the applications file (the test knows them)."""
    out = {}
    for line in applications.read_text().splitlines():
        record = json.loads(line)
        out[record["application_id"]] = record["receipt_number"]
    return out


def offices_of(applications: Path) -> dict[str, str]:
    out = {}
    for line in applications.read_text().splitlines():
        record = json.loads(line)
        out[record["application_id"]] = record["collection_office"]
    return out


@dataclass
class Service:
    """A started app over a private copy of the line home, with officers of every role."""

    client: TestClient
    app: FastAPI
    prepared: Prepared
    receipts: dict[str, str]
    offices: dict[str, str]  # application id -> office
    office: str  # the office with the most cards
    other: str  # another office

    def login(self, officer_id: str) -> dict[str, str]:
        r = self.client.post("/api/session", json={"officer_id": officer_id, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def cards_at(self, office: str) -> list[str]:
        return sorted(a for a, o in self.offices.items() if o == office)

    def audit_entries(self) -> list[dict[str, Any]]:
        state = self.app.state.web
        self.client.portal.call(state.site.controller.flush_audit, 10.0)  # type: ignore[union-attr]
        log = self.prepared.home.path / "audit.log"
        return [json.loads(line) for line in log.read_text().splitlines()]


#: officer id -> role; each at the busiest office unless the id ends in "-x" (another office).
OFFICERS = {
    "op1": Role.OPERATOR,
    "co1": Role.COUNTER_OFFICER,
    "sv1": Role.SUPERVISOR,
    "en1": Role.ENGINEER,
    "en2": Role.ENGINEER,  # locked out by the login rate-limit test
    "co-x": Role.COUNTER_OFFICER,
    "sv-x": Role.SUPERVISOR,
}
