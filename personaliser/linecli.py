"""``perso line run`` and ``perso demo``: the line driven from the command line, with a live progress line.

Kept apart from ``personaliser.cli`` so that ``perso --help`` does not import the runtime.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from ecabinet.audit import verify as verify_audit
from ecabinet.officers import Role, add_officer, authenticate
from ecabinet.store import CardState
from personaliser.collection import hand_over
from personaliser.keystore import FileKeystore
from personaliser.lifecycle import State
from personaliser.line import LineControl, LineProgress, load_line_config, run_line
from personaliser.metrics import LineMetrics, serve_metrics
from personaliser.operations import Home, import_applications, plan, start_batches, start_of
from personaliser.outputs import publish_pki, write_json
from personaliser.site import SiteConfig, demo_site, open_site
from personaliser.synth import synth_applications
from scheduler import LineConfig

__all__ = ["demo", "line_run"]


class ProgressLine:
    """One self-overwriting terminal line: cards done, cards/hour, ETA, rejects."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.last = ""

    def __call__(self, p: LineProgress) -> None:
        eta = f"{p.eta_s:5.0f} s" if p.eta_s is not None else "   --"
        done = p.passed + p.spoiled
        width = 30
        filled = int(width * p.passed / p.requested) if p.requested else width
        bar = "#" * filled + "." * (width - filled)
        self.last = (
            f"[{bar}] {p.passed}/{p.requested} passed, {p.spoiled} spoiled, "
            f"{p.cards_per_hour:8.0f} cards/h, ETA {eta}, {p.state}"
        )
        if self.live:
            self.stream.write("\r" + self.last)
            self.stream.flush()
        elif done and done % 50 == 0:
            self.stream.write(self.last + "\n")

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
        elif self.last:
            self.stream.write(self.last + "\n")


async def _run(home: Home, config_path: str | None, out: Path, metrics_port: int | None) -> Any:
    keystore = home.keystore()
    settings = load_line_config(config_path)
    control = LineControl()
    metrics = LineMetrics()
    if metrics_port is not None:
        serve_metrics(metrics, metrics_port)
    progress = ProgressLine()
    loop = asyncio.get_running_loop()
    remove = control.install_signal_handlers(loop)
    try:
        with home.open_store(keystore) as store:
            report = await run_line(
                store,
                keystore,
                settings,
                out_dir=out,
                observer=metrics,
                control=control,
                progress=progress,
            )
    finally:
        remove()
        progress.close()
    return report


def line_run(
    home_path: str | None, config: str | None, out: str | None, metrics_port: int | None
) -> int:
    """Run the line over every QUEUED card; resumes after a crash (recovery runs first)."""
    home = Home.resolve(home_path)
    target = Path(out) if out else home.path / "out"
    report = asyncio.run(_run(home, config, target, metrics_port))
    data = report.as_dict()
    write_json(target / "report.json", data)
    print(
        f"line {data.get('ended', 'done')}: {data['cards_passed']} passed, "
        f"{data['cards_spoiled']} spoiled, {data.get('throughput_cards_per_hour')} cards/h; "
        f"report: {target / 'report.json'}"
    )
    return 0 if not data.get("cards_held") else 1


def demo(cards: int, out: str, seed: int, metrics_port: int | None = None) -> int:
    """The main job on embedded defaults: keys, synthetic applications, plan, the whole line."""
    root = Path(out)
    home = Home(root / "home")
    keystore = home.ensure()
    # Each demo starts from an empty line (the keys are kept): a re-run shows the whole job again.
    for name in ("perso.db", "cabinet.db", "audit.log", "audit.log.head", "site.toml"):
        for suffix in ("", "-wal", "-shm"):
            (home.path / f"{name}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(home.path / "cabinets", ignore_errors=True)
    shutil.rmtree(root / "cards", ignore_errors=True)
    apps_file = root / "applications.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    with apps_file.open("w", encoding="utf-8") as fh:
        for app in synth_applications(cards, seed=seed):
            fh.write(app.to_json_line() + "\n")
    print(f"demo: {cards} synthetic applications in {apps_file}")
    today = date(2026, 11, 2)  # the synthetic applications' approval day
    with home.open_store(keystore) as store:
        counts, rejections = import_applications(store, apps_file)
        the_plan, capacity = plan(
            store, today=today, line=LineConfig(cards_per_hour=1000, hours_per_day=8, tray_size=50),
            start=start_of(today),
        )  # fmt: skip
        queued = start_batches(store, the_plan, None)
    print(
        f"intake: {counts.new} new, {counts.duplicate} known, {len(rejections)} rejected; "
        f"plan: {sum(queued.values())} cards queued in {len(queued)} batches, "
        f"{len(capacity.at_risk)} at risk"
    )
    report = asyncio.run(_run(home, None, root, metrics_port))
    data = report.as_dict()
    publish_pki(keystore, root)
    stock = data.get("stock", {})
    print(
        f"cards passed {data['cards_passed']} of {data['cards_requested']}, spoiled "
        f"{data['cards_spoiled']}; stock {stock}; {data.get('throughput_cards_per_hour')} cards/h"
    )
    collection = asyncio.run(collect(home, keystore, retrievals=min(5, data["cards_passed"])))
    data["cabinet"] = collection
    write_json(root / "report.json", data)
    print(
        f"e-cabinets: {collection['stocked']} cards deposited in {collection['cabinets']} cabinets "
        f"at {collection['offices']} offices; {collection['issued']} retrieved by counter officers "
        f"(personal data purged: {collection['purged']}); open discrepancies "
        f"{collection['open_discrepancies']}; audit log verified "
        f"({collection['audit_entries']} entries)"
    )
    print(f"report: {root / 'report.json'}")
    ok = data["cards_passed"] == data["cards_requested"]
    return 0 if ok and collection["issued"] == collection["retrievals_asked"] else 1


async def collect(home: Home, keystore: FileKeystore, *, retrievals: int) -> dict[str, Any]:
    """The demo's e-cabinet part on embedded defaults: one emulated cabinet per office on an
    in-process amqtt broker; the passed cards handed over and deposited; a sample retrieved by
    counter officers with the applicants' receipts; the audit log verified."""
    with home.open_store(keystore) as store:
        passed = store.list_applications(state=State.PASSED)
        offices = sorted({r.office for r in passed if r.office is not None})
        config = demo_site(offices or ["ROP-KT"])
        (home.path / "site.toml").write_text(_site_toml(config), encoding="utf-8")
        async with open_site(home, keystore, store, config) as site:
            hand_over(store, site.cabinets, keystore.lookup_key(), tray="demo")
            waiting = site.cabinets.cards(state=CardState.AWAITING_DEPOSIT)
            deposit = await site.service.deposit(
                "demo-operator", [c.application_id for c in waiting]
            )
            # One counter officer per office; the password lives only in this process.
            password = secrets.token_urlsafe(18)
            officers = {
                office: add_officer(site.cabinets, f"officer-{office}", office,
                                    Role.COUNTER_OFFICER, password)
                for office in offices
            }  # fmt: skip
            issued = 0
            for card in site.cabinets.cards(state=CardState.STOCKED)[:retrievals]:
                officer = authenticate(site.cabinets, officers[card.office].officer_id, password)
                receipt = store.load_application(card.application_id).receipt_number or ""
                result = await site.service.retrieve(officer, card.application_id, receipt)
                issued += result.outcome == "issued"
            status = site.service.status()
            latency = site.controller.latency_summary()
        purged = sum(1 for r in store.list_applications(state=State.ISSUED) if r.purged)
    audit_log = home.path / "audit.log"
    verify_audit(audit_log, key=keystore.audit_key(), anchored=True)
    return {
        "site": config.site,
        "offices": len(offices),
        "cabinets": len(config.cabinets),
        "deposited": len(waiting),
        "stocked": len(deposit.stocked),
        "deposit_results": deposit.counts(),
        "retrievals_asked": min(retrievals, len(deposit.stocked)),
        "issued": issued,
        "purged": purged,
        "open_discrepancies": sum(1 for d in status.discrepancies if d.open),
        "ack_latency_ms": None
        if latency is None
        else {
            "count": latency.count,
            "p50": round(latency.p50_ms, 2),
            "p99": round(latency.p99_ms, 2),
            "max": round(latency.max_ms, 2),
        },
        "audit_entries": audit_log.read_bytes().count(b"\n"),
    }


def _site_toml(config: SiteConfig) -> str:
    """The demo's site as ``site.toml``, so ``perso cabinet status --home …`` finds it."""
    lines = [f'site = "{config.site}"', 'broker = "embedded"', ""]
    for c in config.cabinets:
        lines += ["[[cabinets]]", f'id = "{c.id}"', f'office = "{c.office}"',
                  f"drawers = {c.drawers}", f"slots = {c.slots}", ""]  # fmt: skip
    return "\n".join(lines)
