"""HTTP retrieval load (issue 7 acceptance): 1,000 retrievals through ``perso serve``'s API by 50
concurrent counter-officer clients; p50/p95/p99/max latency and throughput.

What runs: a line home whose cards really went through the in-process line (faces not rendered:
this measures the counter, not the printer), ``perso serve`` in a process of its own on a loopback
port, the cards dispatched and deposited through the operator API.  Then each client logs in
(scrypt at 2^10 for the set-up; a login is once per shift, not per retrieval) and takes its
office's cards from a shared queue: ``POST /api/cabinet/retrieve`` with the application id and the
receipt, timed from send to answer (the card taken out of its slot, ISSUED).  Every answer must
be ``issued``; the cabinet store is checked afterwards.

Two topologies:

- **mosquitto** (default, what a deployment looks like, DESIGN §7 "real"): Debian's Mosquitto on
  a loopback port (TLS, a password per device, ACLs: ``ecabinet.mosquitto``), one emulated cabinet
  per office in a process of their own (``bench/cabinet_host.py``, as the issue-6 load
  ``bench/cabinet.py`` runs them), and a ``site.toml`` that names the broker with the controller's
  credentials (password in a 0600 file).  The server's event loop then runs only the service,
  the stores and the controller.  The retrievals are checked against the cabinets' own door
  openings (``bench.cabinet._check_openings``): each card's retrieval opened exactly the slot it
  was deposited in, once, and no slot opened for another card.
- **embedded** (``--embedded``, ``perso demo``'s default): amqtt and the emulated cabinets inside
  the ``perso serve`` process, on the server's one event loop.

Pacing: ``--think S`` (default 0: back to back, a closed loop at saturation) makes each client
wait an exponential pause of mean S seconds (its own seeded RNG) before every retrieval, so 50
clients with S = 2 offer about 25 retrievals/s as independent streams.

    python -m bench.web [--cards 1000] [--clients 50] [--think 0] [--embedded] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from bench.cabinet import _check_openings, _finish_cabinets, _kill, _start_cabinets
from ecabinet.mosquitto import CONTROLLER_USER, MosquittoBroker
from ecabinet.officers import KdfParams, Role, add_officer
from ecabinet.store import CabinetStore, CardState
from personaliser.cli import main as perso
from personaliser.operations import Home
from personaliser.site import CabinetSpec, SiteConfig, load_site_config
from personaliser.synth import synth_applications

__all__ = ["WebLoad", "run_web_load"]

SITE = "WEB"
KDF = KdfParams(log2_n=10)
PASSWORD = "bench officer password"
TODAY = "2026-11-02"
DRAWERS = 2
#: Issue 7's acceptance figure for a retrieval through the API.
TARGET_P99_MS = 100
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
    latencies_ms: list[float] = field(repr=False)
    outcomes: dict[str, int]
    setup_s: float
    topology: str = "mosquitto"
    think_s: float = 0.0
    #: The controller's own open-command → cabinet-ack time, as each answer reports it.
    ack_ms: list[float] = field(default_factory=list, repr=False)
    #: From the cabinets' own door openings (mosquitto only: embedded cabinets are not watched).
    wrong_slot_openings: int | None = None
    slots_opened_twice: int | None = None
    #: Commands a cabinet refused before performing (e.g. ``stale_counter``) that the controller
    #: sent again with a new id and counter, by command kind: each costs a round trip.
    reissued: dict[str, int] = field(default_factory=dict)
    steady_per_s: float | None = None
    #: Deposits (set-up, before the clock) the cabinet refused and the bench made again.
    deposits_refused: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "cards": self.cards,
            "clients": self.clients,
            "think_s": self.think_s,
            # Nominal: each client offers one retrieval per think time; the closed loop adds the
            # answer's own latency, so what arrives is a little lower.
            "offered_per_s": (
                round(self.clients / self.think_s, 1) if self.think_s > 0 else "saturation"
            ),
            "retrieved": self.retrieved,
            "outcomes": self.outcomes,
            "seconds": round(self.seconds, 3),
            "throughput_per_s": round(self.retrieved / self.seconds, 1) if self.seconds else None,
            "steady_per_s": None if self.steady_per_s is None else round(self.steady_per_s, 1),
            "latency_ms": _summary(self.latencies_ms),
            "ack_ms": _summary(self.ack_ms),
            "target_p99_ms": TARGET_P99_MS,
            "wrong_slot_openings": self.wrong_slot_openings,
            "slots_opened_twice": self.slots_opened_twice,
            "reissued_commands": self.reissued,
            "deposits_refused": self.deposits_refused,
            "setup_s": round(self.setup_s, 1),
        }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    data = sorted(values)
    cuts = statistics.quantiles(data, n=100, method="inclusive") if len(data) > 1 else data * 99
    return {
        "n": len(data),
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
        "max": round(data[-1], 2),
        "mean": round(statistics.fmean(data), 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cabinets(offices: list[str], slots: int) -> tuple[CabinetSpec, ...]:
    """One cabinet per office, all of one shape: the cabinet host emulates a single shape."""
    return tuple(
        CabinetSpec(id=f"{office}-C1", office=office, drawers=DRAWERS, slots=slots)
        for office in offices
    )


def _site_toml(config: SiteConfig) -> str:
    """``config`` as ``site.toml`` (TOML basic strings take JSON's escapes)."""
    q = json.dumps
    lines = [f"site = {q(config.site)}", f"broker = {q(config.broker)}"]
    if config.ca_file is not None:
        lines.append(f"ca_file = {q(str(config.ca_file))}")
    if config.username is not None:
        lines.append(f"username = {q(config.username)}")
    if config.password_file is not None:
        lines.append(f"password_file = {q(str(config.password_file))}")
    lines.append("")
    for c in config.cabinets:
        lines += ["[[cabinets]]", f"id = {q(c.id)}", f"office = {q(c.office)}",
                  f"drawers = {c.drawers}", f"slots = {c.slots}", ""]  # fmt: skip
    return "\n".join(lines)


def _write_secret(path: Path, text: str) -> None:
    """0600 from the start (``os.open``'s mode, not a chmod after the text is already there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text + "\n")


def _staffing(cards: dict[str, int], clients: int) -> dict[str, int]:
    """Clients per office: one each, then one at a time to the office with the most cards per
    client (D'Hondt), so that every office's queue lasts about as long and the offered rate holds
    until near the end instead of sagging as the smaller offices finish."""
    if clients < len(cards):
        raise ValueError(f"{clients} clients cannot serve {len(cards)} offices")
    staff = dict.fromkeys(cards, 1)
    for _ in range(clients - len(cards)):
        busiest = max(sorted(cards), key=lambda o: cards[o] / staff[o])
        staff[busiest] += 1
    return staff


def prepare(root: Path, cards: int, clients: int, seed: int) -> tuple[Home, dict[str, list[tuple[str, str]]], dict[str, str]]:  # fmt: skip
    """The line home with ``cards`` PASSED cards and the officers (no site.toml yet).  Returns
    the home, office -> [(application id, receipt)], and officer id -> office."""
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
    officers: dict[str, str] = {}
    with CabinetStore(home.path / "cabinet.db") as store:
        add_officer(store, "bench-op", offices[0], Role.OPERATOR, PASSWORD, params=KDF)
        staff = _staffing({o: len(by_office[o]) for o in offices}, clients)
        for n, office in enumerate(o for o in offices for _ in range(staff[o])):
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _wait_up(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    async with httpx2.AsyncClient(base_url=base, timeout=5) as client:
        while True:
            if proc.poll() is not None:
                tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                raise RuntimeError("perso serve exited:\n" + "\n".join(tail))
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


@dataclass(frozen=True)
class _Run:
    """What one measurement works on: the prepared home and who retrieves what, how fast."""

    home: Home
    root: Path
    by_office: dict[str, list[tuple[str, str]]]
    officers: dict[str, str]
    cards: int
    think_s: float
    seed: int


@dataclass
class _Measured:
    latencies_ms: list[float]
    ack_ms: list[float]
    outcomes: dict[str, int]
    seconds: float
    #: Retrievals per second until the first client ran out of cards: the rate with every
    #: client still at work (the end of a paced run trails off as queues empty).
    steady_per_s: float | None
    deposits_refused: int


async def _load(base: str, run: _Run) -> _Measured:
    by_office, officers, think_s = run.by_office, run.officers, run.think_s
    async with httpx2.AsyncClient(base_url=base, timeout=120) as op:
        await _login(op, "bench-op")
        (await op.post("/api/cabinet/dispatch")).raise_for_status()
        # A deposit the cabinet refused (e.g. ``stale_counter`` three times over) leaves its
        # card awaiting deposit with nothing opened: deposit those again, and count them.
        stocked, refused = 0, 0
        for _ in range(3):
            counts = Counter((await op.post("/api/cabinet/deposit", json={})).json()["counts"])
            stocked += counts.pop("stocked", 0)
            refused += counts.pop("refused", 0)
            if counts or stocked >= run.cards:
                break
        if counts or stocked != run.cards:
            raise RuntimeError(f"deposit: {stocked} stocked, {refused} refused, {dict(counts)}")
    queues: dict[str, asyncio.Queue[tuple[str, str]]] = {}
    for office, items in by_office.items():
        queues[office] = asyncio.Queue()
        for item in items:
            queues[office].put_nowait(item)
    latencies: list[float] = []
    acks: list[float] = []
    outcomes: Counter[str] = Counter()
    # Every client logged in before the clock starts (a login is once per shift).
    ready = asyncio.Barrier(len(officers) + 1)
    done_at: list[float] = []
    first_idle: list[float] = []

    async def client(officer_id: str, office: str) -> None:
        # Its own pace: independent streams, reproducible by seed (as bench/cabinet.py's officers).
        pace = random.Random(f"{run.seed}/{officer_id}")
        limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx2.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            await _login(http, officer_id)
            await ready.wait()
            queue = queues[office]
            while True:
                try:
                    app_id, receipt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    first_idle.append(time.perf_counter())
                    return
                # The pause comes after taking the next applicant, so that a client whose queue
                # is empty stops at once instead of thinking on past the last retrieval.
                if think_s > 0:
                    await asyncio.sleep(pace.expovariate(1.0 / think_s))
                t0 = time.perf_counter()
                r = await http.post("/api/cabinet/retrieve",
                                    json={"application_id": app_id, "receipt": receipt})  # fmt: skip
                done = time.perf_counter()
                latencies.append((done - t0) * 1e3)
                done_at.append(done)
                body = r.json()
                outcomes[body.get("outcome", f"http_{r.status_code}")] += 1
                if body.get("ack_latency_ms") is not None:
                    acks.append(float(body["ack_latency_ms"]))

    tasks = [asyncio.create_task(client(o, office)) for o, office in officers.items()]
    try:
        await asyncio.wait_for(ready.wait(), 60)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    start = time.perf_counter()
    await asyncio.gather(*tasks)
    end = time.perf_counter()
    idle = min(first_idle, default=end)
    steady = sum(1 for t in done_at if t <= idle) / (idle - start) if idle > start else None
    return _Measured(latencies, acks, dict(outcomes), end - start, steady, refused)


async def _measure_embedded(run: _Run) -> tuple[_Measured, float]:
    port = _free_port()
    proc = _serve(run.home, port, run.root / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_up(base, proc, run.root / "serve.log")
        up = time.perf_counter()
        measured = await _load(base, run)
    finally:
        _stop(proc)
    return measured, up


async def _measure_mosquitto(
    run: _Run, config: SiteConfig
) -> tuple[_Measured, float, tuple[int, int]]:
    home, root = run.home, run.root
    broker = MosquittoBroker(root / "mosquitto", site=config.site)
    broker.start()
    try:
        async with AsyncExitStack() as stack:
            spec = config.cabinets[0]
            addresses = broker.add_cabinets([c.id for c in config.cabinets])
            controller = broker.add_controller()
            assert controller.password is not None and broker.ca_file is not None
            password_file = root / "mqtt-controller.pass"
            _write_secret(password_file, controller.password)
            site = config.model_copy(
                update={
                    "broker": controller.url(),
                    "ca_file": broker.ca_file,
                    "username": CONTROLLER_USER,
                    "password_file": password_file,
                }
            )
            (home.path / "site.toml").write_text(_site_toml(site), encoding="utf-8")
            if load_site_config(home.path / "site.toml") != site:
                raise RuntimeError("site.toml does not read back as written")
            # The cabinets' keys come from the home's keystore, as `perso cabinet keyfile` would
            # provision real ones; each cabinet gets its own keys only.
            site_key = home.keystore().site_key(config.site)
            host = await _start_cabinets(root, site_key, addresses, spec.drawers, spec.slots)
            stack.push_async_callback(_kill, host)
            port = _free_port()
            proc = _serve(home, port, root / "serve.log")
            base = f"http://127.0.0.1:{port}"
            try:
                await _wait_up(base, proc, root / "serve.log")
                up = time.perf_counter()
                measured = await _load(base, run)
            finally:
                _stop(proc)
            openings = await _finish_cabinets(host, root)
        with CabinetStore(home.path / "cabinet.db") as store:
            # An ISSUED card keeps the slot it was deposited in (CabinetStore.complete_open).
            placed = {c.application_id: (c.cabinet, c.drawer, c.index) for c in store.cards()}
            chosen = [a for items in run.by_office.values() for a, _ in items]
            checked = _check_openings(openings, chosen, placed, store)
    finally:
        broker.stop()
    return measured, up, checked


def _reissued(home: Home, store: CabinetStore) -> dict[str, int]:
    """The audit log's ``command.reissued`` entries, by the kind of the command re-issued."""
    kinds: Counter[str] = Counter()
    with (home.path / "audit.log").open(encoding="utf-8") as log:
        for line in log:
            entry = json.loads(line)
            if entry.get("kind") == "command.reissued":
                command = store.command(entry["payload"]["correlation_id"])
                kinds[command.kind if command is not None else "unknown"] += 1
    return dict(kinds)


def run_web_load(
    cards: int = 1000,
    clients: int = 50,
    *,
    think_s: float = 0.0,
    embedded: bool = False,
    seed: int = 41,
) -> WebLoad:
    if cards < 1 or clients < 1 or think_s < 0:
        raise ValueError("cards and clients must be positive, think_s not negative")
    with tempfile.TemporaryDirectory(prefix="perso-web-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        home, by_office, officers = prepare(root, cards, clients, seed)
        offices = sorted(by_office)
        per_cabinet = max(len(v) for v in by_office.values())
        config = SiteConfig(site=SITE, cabinets=_cabinets(offices, per_cabinet // DRAWERS + 1))
        run = _Run(home, root, by_office, officers, cards, think_s, seed)
        checked: tuple[int | None, int | None] = (None, None)
        if embedded:
            (home.path / "site.toml").write_text(_site_toml(config), encoding="utf-8")
            measured, up = asyncio.run(_measure_embedded(run))
        else:
            measured, up, (wrong, twice) = asyncio.run(_measure_mosquitto(run, config))
            checked = (wrong, twice)
        with CabinetStore(home.path / "cabinet.db") as store:
            issued = len(store.cards(state=CardState.ISSUED))
            reissued = _reissued(home, store)
        if issued != cards:
            raise RuntimeError(f"{issued} of {cards} cards ISSUED in the cabinet store")
        return WebLoad(
            cards, clients, len(measured.latencies_ms), measured.seconds, measured.latencies_ms,
            measured.outcomes, up - t0, "embedded" if embedded else "mosquitto", think_s,
            measured.ack_ms, *checked, reissued, measured.steady_per_s, measured.deposits_refused,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--think", type=float, default=0.0, metavar="S",
                        help="mean exponential pause before each retrieval (0: back to back)")  # fmt: skip
    parser.add_argument("--embedded", action="store_true",
                        help="amqtt and the cabinets inside perso serve (the old topology)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load = run_web_load(
        args.cards, args.clients, think_s=args.think, embedded=args.embedded, seed=args.seed
    )
    result = load.as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat, ack = result["latency_ms"], result["ack_ms"]
        print(
            f"[{result['topology']}, think {result['think_s']} s, offered "
            f"{result['offered_per_s']}/s] {result['retrieved']} retrievals by "
            f"{result['clients']} clients in {result['seconds']} s "
            f"({result['throughput_per_s']}/s, {result['steady_per_s']}/s with every client "
            f"busy); latency ms p50 {lat['p50']} p95 {lat['p95']} "
            f"p99 {lat['p99']} max {lat['max']}; ack ms p50 {ack.get('p50')} p99 "
            f"{ack.get('p99')}; outcomes {result['outcomes']}; wrong openings "
            f"{result['wrong_slot_openings']}, opened twice {result['slots_opened_twice']}; "
            f"re-issued {result['reissued_commands']}; deposits refused "
            f"{result['deposits_refused']}"
        )
    return 0 if not (load.wrong_slot_openings or load.slots_opened_twice) else 1


if __name__ == "__main__":
    sys.exit(main())
