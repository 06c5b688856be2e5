"""HTTP retrieval load (issue 7 acceptance): 1,000 retrievals through ``perso serve``'s API by 50
concurrent counter-officer clients; p50/p95/p99/max latency and throughput.

What runs: a line home whose cards really went through the in-process line (faces not rendered:
this measures the counter, not the printer), an embedded site (amqtt in-process, one emulated
cabinet per office, instant mechanics), ``perso serve`` in a process of its own on a loopback
port, the cards dispatched and deposited through the operator API.  Then each client logs in
(scrypt at 2^10 for the set-up; a login is once per shift, not per retrieval) and takes its
office's cards from a shared queue: ``POST /api/cabinet/retrieve`` with the application id and the
receipt, timed from send to answer (the card taken out of its slot, ISSUED).  Every answer must
be ``issued``; the cabinet store is checked afterwards.

    python -m bench.web [--cards 1000] [--clients 50] [--json]

The broker is the embedded amqtt (DESIGN §7 default); the issue-6 cabinet load on Mosquitto is
``bench/cabinet.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from ecabinet.officers import KdfParams, Role, add_officer
from ecabinet.store import CabinetStore, CardState
from personaliser.cli import main as perso
from personaliser.operations import Home
from personaliser.site import demo_site
from personaliser.synth import synth_applications

__all__ = ["WebLoad", "run_web_load"]

KDF = KdfParams(log2_n=10)
PASSWORD = "bench officer password"
TODAY = "2026-11-02"
LINE_TOML = """
[printers]
render = "never"
[output]
chip_files = false
chip_image = false
trays = false
"""


@dataclass
class WebLoad:
    cards: int
    clients: int
    retrieved: int
    seconds: float
    latencies_ms: list[float]
    outcomes: dict[str, int]
    setup_s: float

    def as_dict(self) -> dict[str, Any]:
        data = sorted(self.latencies_ms)
        cuts = statistics.quantiles(data, n=100, method="inclusive") if len(data) > 1 else data * 99
        return {
            "cards": self.cards,
            "clients": self.clients,
            "retrieved": self.retrieved,
            "outcomes": self.outcomes,
            "seconds": round(self.seconds, 3),
            "throughput_per_s": round(self.retrieved / self.seconds, 1) if self.seconds else None,
            "latency_ms": {
                "p50": round(cuts[49], 2),
                "p95": round(cuts[94], 2),
                "p99": round(cuts[98], 2),
                "max": round(data[-1], 2),
                "mean": round(statistics.fmean(data), 2),
            },
            "setup_s": round(self.setup_s, 1),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _site_toml(offices: list[str], slots: int) -> str:
    config = demo_site(offices, slots=slots, drawers=2)
    lines = [f'site = "{config.site}"', 'broker = "embedded"', ""]
    for c in config.cabinets:
        lines += ["[[cabinets]]", f'id = "{c.id}"', f'office = "{c.office}"',
                  f"drawers = {c.drawers}", f"slots = {c.slots}", ""]  # fmt: skip
    return "\n".join(lines)


def prepare(root: Path, cards: int, clients: int, seed: int) -> tuple[Home, dict[str, list[tuple[str, str]]], dict[str, str]]:  # fmt: skip
    """The line home with ``cards`` PASSED cards, the site, the officers.  Returns the home,
    office -> [(application id, receipt)], and officer id -> office."""
    home = Home(root / "home")
    home.ensure()
    apps = root / "applications.jsonl"
    by_office: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with apps.open("w", encoding="utf-8") as fh:
        for app in synth_applications(cards, seed=seed):
            fh.write(app.to_json_line() + "\n")
            by_office[app.collection_office].append((app.application_id, app.receipt_number or ""))
    (root / "line.toml").write_text(LINE_TOML, encoding="utf-8")
    h = str(home.path)
    quiet = open(os.devnull, "w")  # noqa: SIM115 - the CLI's progress output, dropped
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = quiet
    try:
        ok = (
            perso(["applications", "import", str(apps), "--home", h]) == 0
            and perso(["batch", "start", "--all", "--home", h, "--today", TODAY]) == 0
            and perso(
                [
                    "line",
                    "run",
                    "--home",
                    h,
                    "--config",
                    str(root / "line.toml"),
                    "--out",
                    str(root / "out"),
                ]
            )
            == 0
        )
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        quiet.close()
    if not ok:
        raise RuntimeError("the line did not pass every card")
    offices = sorted(by_office)
    per_cabinet = max(len(v) for v in by_office.values())
    (home.path / "site.toml").write_text(
        _site_toml(offices, per_cabinet // 2 + 1), encoding="utf-8"
    )
    officers: dict[str, str] = {}
    with CabinetStore(home.path / "cabinet.db") as store:
        add_officer(store, "bench-op", offices[0], Role.OPERATOR, PASSWORD, params=KDF)
        for n in range(clients):
            office = offices[n % len(offices)]
            officer_id = f"bench-co{n:02d}"
            add_officer(store, officer_id, office, Role.COUNTER_OFFICER, PASSWORD, params=KDF)
            officers[officer_id] = office
    return home, dict(by_office), officers


def _serve(home: Home, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "personaliser.cli", "serve", "--home", str(home.path),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def _wait_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx2.AsyncClient(base_url=base, timeout=5) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("perso serve exited")
            try:
                if (await client.get("/login")).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("perso serve did not come up")
            await asyncio.sleep(0.2)


async def _login(client: httpx2.AsyncClient, officer_id: str) -> None:
    r = await client.post("/api/session", json={"officer_id": officer_id, "password": PASSWORD})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['token']}"


async def _load(
    base: str, by_office: dict[str, list[tuple[str, str]]], officers: dict[str, str], cards: int
) -> tuple[list[float], dict[str, int], float]:
    async with httpx2.AsyncClient(base_url=base, timeout=120) as op:
        await _login(op, "bench-op")
        (await op.post("/api/cabinet/dispatch")).raise_for_status()
        deposit = (await op.post("/api/cabinet/deposit", json={})).json()
        if deposit["counts"] != {"stocked": cards}:
            raise RuntimeError(f"deposit: {deposit['counts']}")
    queues: dict[str, asyncio.Queue[tuple[str, str]]] = {}
    for office, items in by_office.items():
        queues[office] = asyncio.Queue()
        for item in items:
            queues[office].put_nowait(item)
    latencies: list[float] = []
    outcomes: dict[str, int] = defaultdict(int)
    start = asyncio.Event()

    async def client(officer_id: str, office: str) -> None:
        limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx2.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            await _login(http, officer_id)
            await start.wait()
            queue = queues[office]
            while True:
                try:
                    app_id, receipt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                r = await http.post("/api/cabinet/retrieve",
                                    json={"application_id": app_id, "receipt": receipt})  # fmt: skip
                latencies.append((time.perf_counter() - t0) * 1e3)
                outcomes[r.json().get("outcome", f"http_{r.status_code}")] += 1

    tasks = [asyncio.create_task(client(o, office)) for o, office in officers.items()]
    await asyncio.sleep(0.5)  # logins done (scrypt 2^10: milliseconds each)
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return latencies, dict(outcomes), time.perf_counter() - t0


def run_web_load(cards: int = 1000, clients: int = 50, *, seed: int = 41) -> WebLoad:
    with tempfile.TemporaryDirectory(prefix="perso-web-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        home, by_office, officers = prepare(root, cards, clients, seed)
        port = _free_port()
        proc = _serve(home, port, root / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(_wait_up(base, proc))
            setup = time.perf_counter() - t0
            latencies, outcomes, seconds = asyncio.run(_load(base, by_office, officers, cards))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with CabinetStore(home.path / "cabinet.db") as store:
            issued = len(store.cards(state=CardState.ISSUED))
        if issued != cards:
            raise RuntimeError(f"{issued} of {cards} cards ISSUED in the cabinet store")
        return WebLoad(cards, clients, len(latencies), seconds, latencies, outcomes, setup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_web_load(args.cards, args.clients, seed=args.seed).as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat = result["latency_ms"]
        print(
            f"{result['retrieved']} retrievals by {result['clients']} clients in "
            f"{result['seconds']} s ({result['throughput_per_s']}/s); latency ms p50 {lat['p50']} "
            f"p95 {lat['p95']} p99 {lat['p99']} max {lat['max']}; outcomes {result['outcomes']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
