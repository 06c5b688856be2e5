"""E-cabinet load: a site of emulated cabinets on a real Mosquitto (TLS, passwords, ACLs), cards
deposited and retrieved through the same controller and flows as production (issue 6 acceptance).

Defaults are the issue's figures: 20 cabinets × 500 slots, 10,000 deposits, then 5,000 retrievals by
50 counter officers working concurrently (10 per office, 4 cabinets per office).  The cabinets'
mechanics are instant: what is measured is software.

How the officers work: each pauses before every retrieval for an exponential time of mean
``think_s`` (default 2 s: 50 officers offer about 25 retrievals a second, far beyond a real office:
a counter hands over a card every minute or two).  That is the latency an officer at a busy site
sees.  ``think_s=0`` makes them fire back to back (a closed loop at saturation): then the figure is
the controller's throughput, and latency is the queue in front of it (officers / throughput).
Three latencies are reported:

- ``request_to_ack_ms``: the issue's figure, from the officer's request
  (``CollectionService.retrieve``: role, office and receipt checks, the write-ahead commit and its
  durability barrier, the publish) until the cabinet's ack of the open command;
- ``retrieve_ms``: from the same request until the card is handed over (the slot reported the card
  taken);
- ``ack_ms``: from the controller starting the open command until the ack (the controller's own
  measurement, ``SiteController.ack_latencies``).

Every retrieval is checked against what the emulated cabinets did: the slot that opened for it is
the slot the card was deposited in, the card taken out is that card, and no slot opened twice.
Officers here hash their passwords with scrypt n = 2^12 to keep the set-up short; the product's
default cost (2^17) is spent once per login, not per retrieval.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from ecabinet.audit import AuditWriter
from ecabinet.audit import verify as verify_audit
from ecabinet.controller import SiteController
from ecabinet.mosquitto import MosquittoBroker
from ecabinet.mqtt import BrokerAddress
from ecabinet.officers import KdfParams, Officer, add_officer, authenticate
from ecabinet.security import SiteKey
from ecabinet.service import CollectionService
from ecabinet.store import CabinetStore, CardState, NewCard, lookup_digest

__all__ = ["CabinetLoad", "run_cabinet_load"]

SITE = "LOAD"
KDF = KdfParams(log2_n=12)
PASSWORD = "bench officer password"


@dataclass
class CabinetLoad:
    cabinets: int
    slots: int
    deposits: int
    retrievals: int
    officers: int
    deposit_s: float
    retrieve_s: float
    deposit_results: dict[str, int]
    retrieve_results: dict[str, int]
    retrieve_ms: list[float] = field(repr=False)
    ack_ms: list[float] = field(repr=False)
    request_ack_ms: list[float] = field(repr=False)
    wrong_slot_openings: int = 0
    slots_opened_twice: int = 0
    audit_entries: int = 0
    think_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cabinets": self.cabinets,
            "slots": self.slots,
            "deposits": self.deposits,
            "retrievals": self.retrievals,
            "officers": self.officers,
            "think_s": self.think_s,
            "offered_retrievals_per_s": (
                round(self.officers / self.think_s, 1) if self.think_s > 0 else "saturation"
            ),
            "deposit_results": self.deposit_results,
            "retrieve_results": self.retrieve_results,
            "deposits_per_s": round(self.deposits / self.deposit_s, 1),
            "retrievals_per_s": round(self.retrievals / self.retrieve_s, 1),
            "request_to_ack_ms": _summary(self.request_ack_ms),
            "retrieve_ms": _summary(self.retrieve_ms),
            "ack_ms": _summary(self.ack_ms),
            "wrong_slot_openings": self.wrong_slot_openings,
            "slots_opened_twice": self.slots_opened_twice,
            "audit_entries": self.audit_entries,
            "target_p99_ms": 50,
        }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


@contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="perso-cabinet-load-") as tmp:
        yield Path(tmp)


async def run_cabinet_load(
    *,
    cabinets: int = 20,
    drawers: int = 10,
    slots_per_drawer: int = 50,
    deposits: int = 10_000,
    retrievals: int = 5_000,
    officers: int = 50,
    offices: int = 5,
    think_s: float = 2.0,
    seed: int = 0,
    workdir: Path | None = None,
) -> CabinetLoad:
    if cabinets % offices or officers % offices or retrievals > deposits:
        raise ValueError("cabinets and officers must divide among offices; retrievals <= deposits")
    if deposits > cabinets * drawers * slots_per_drawer:
        raise ValueError("more deposits than slots")
    chance = random.Random(seed)
    office_ids = [f"OFF{n}" for n in range(offices)]
    cabinet_ids = [f"CAB{n:02d}" for n in range(cabinets)]
    office_of = {c: office_ids[n % offices] for n, c in enumerate(cabinet_ids)}
    site_key = SiteKey(SITE, os.urandom(32))
    lookup_key = os.urandom(32)
    with _workdir(workdir) as root:
        broker = MosquittoBroker(root / "mosquitto", site=SITE)
        broker.start()
        try:
            async with AsyncExitStack() as stack:
                addresses = broker.add_cabinets(cabinet_ids)
                cabinets_proc = await _start_cabinets(root, site_key, addresses, drawers,
                                                      slots_per_drawer)  # fmt: skip
                stack.push_async_callback(_kill, cabinets_proc)
                store = stack.enter_context(CabinetStore(root / "cabinet.db", sync="barrier"))
                audit_key = os.urandom(32)
                audit = stack.enter_context(AuditWriter(root / "audit.log", key=audit_key))
                controller = SiteController(broker.add_controller(), site_key, store, audit)
                for cabinet in cabinet_ids:
                    controller.register_cabinet(
                        cabinet, office_of[cabinet], drawers, slots_per_drawer
                    )
                await stack.enter_async_context(controller)
                await controller.wait_connected(timeout=30)
                for cabinet in cabinet_ids:
                    await controller.wait_online(cabinet, timeout=30)
                    await controller.wait_reconciled(cabinet, timeout=30)
                service = CollectionService(controller, store, lookup_key)

                # -- deposits: every office's cards in one call each, all offices at once --------
                today = date(2026, 11, 23)
                cards = [
                    NewCard(
                        application_id=f"L{n:06d}",
                        card_serial=f"04{n:010X}",
                        office=office_ids[n % offices],
                        collection_date=today + timedelta(days=n % 10),
                        receipt_digest=lookup_digest(lookup_key, "receipt", _receipt(n)),
                    )
                    for n in range(deposits)
                ]
                service.register_cards(cards)
                t0 = time.perf_counter()
                reports = await asyncio.gather(
                    *(
                        service.deposit(
                            "operator", [c.application_id for c in cards if c.office == office]
                        )
                        for office in office_ids
                    )
                )
                deposit_s = time.perf_counter() - t0
                deposit_results = Counter[str]()
                for report in reports:
                    deposit_results.update(report.counts())
                placed = {
                    c.application_id: (c.cabinet, c.drawer, c.index)
                    for c in store.cards(state=CardState.STOCKED)
                }

                # -- retrievals: 50 officers, each working through a queue of their office's cards
                staff: dict[str, list[Officer]] = {o: [] for o in office_ids}
                for n in range(officers):
                    office = office_ids[n % offices]
                    add_officer(store, f"officer{n:02d}", office, "counter_officer", PASSWORD,
                                params=KDF)  # fmt: skip
                    staff[office].append(
                        authenticate(store, f"officer{n:02d}", PASSWORD, params=KDF)
                    )
                chosen = chance.sample(sorted(placed), retrievals)
                queues: dict[str, list[int]] = {
                    o.officer_id: [] for os_ in staff.values() for o in os_
                }
                for k, app_id in enumerate(chosen):
                    n = int(app_id[1:])
                    team = staff[office_ids[n % offices]]
                    queues[team[k % len(team)].officer_id].append(n)
                by_id = {o.officer_id: o for os_ in staff.values() for o in os_}
                retrieve_ms: list[float] = []
                request_ack_ms: list[float] = []
                results = Counter[str]()
                ack_before = len(controller.ack_latencies())

                async def counter_officer(officer: Officer, queue: list[int]) -> None:
                    # Each officer's own pace: an exponential pause (mean ``think_s``) before every
                    # retrieval, so the officers' requests arrive as independent streams.
                    pace = random.Random(f"{seed}/{officer.officer_id}")
                    for n in queue:
                        if think_s > 0:
                            await asyncio.sleep(pace.expovariate(1.0 / think_s))
                        t = time.perf_counter()
                        result = await service.retrieve(officer, f"L{n:06d}", _receipt(n))
                        retrieve_ms.append(1000 * (time.perf_counter() - t))
                        if result.acked_at is not None:
                            request_ack_ms.append(1000 * (result.acked_at - t))
                        results[result.outcome] += 1

                t0 = time.perf_counter()
                await asyncio.gather(*(counter_officer(by_id[o], q) for o, q in queues.items()))
                retrieve_s = time.perf_counter() - t0
                ack_ms = [1000 * a for a in controller.ack_latencies()[ack_before:]]
                openings = await _finish_cabinets(cabinets_proc, root)
                wrong, twice = _check_openings(openings, chosen, placed, store)
            entries = (root / "audit.log").read_bytes().count(b"\n")
            verify_audit(root / "audit.log", key=audit_key, anchored=True)
        finally:
            broker.stop()
    return CabinetLoad(
        cabinets, cabinets * drawers * slots_per_drawer, deposits, retrievals, officers,
        deposit_s, retrieve_s, dict(deposit_results), dict(results), retrieve_ms, ack_ms,
        request_ack_ms,
        wrong, twice, entries, think_s,
    )  # fmt: skip


def _receipt(n: int) -> str:
    return f"R{n:011d}"


async def _start_cabinets(
    root: Path, site_key: SiteKey, addresses: dict[str, BrokerAddress], drawers: int, slots: int
) -> asyncio.subprocess.Process:
    """The emulated cabinets in their own process (bench/cabinet_host.py says why)."""
    spec = {
        "site": site_key.site, "drawers": drawers, "slots": slots, "root": str(root),
        "cabinets": {
            cabinet: {
                "host": a.host, "port": a.port, "username": a.username, "password": a.password,
                "ca_file": str(a.ca_file), "keys": site_key.cabinet(cabinet).to_bytes().hex(),
            }
            for cabinet, a in addresses.items()
        },
    }  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.cabinet_host",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec).encode() + b"\n")
    await proc.stdin.drain()
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if line.strip() != b"ready":
        raise RuntimeError(f"cabinet host did not start: {line!r}")
    return proc


async def _finish_cabinets(proc: asyncio.subprocess.Process, root: Path) -> list[Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if line.strip() != b"done":
        raise RuntimeError(f"cabinet host failed: {line!r}")
    await proc.wait()
    openings: list[Any] = json.loads((root / "openings.json").read_text(encoding="utf-8"))
    return openings


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _check_openings(
    openings: list[Any],
    chosen: list[str],
    placed: dict[str, tuple[str | None, int | None, int | None]],
    store: CabinetStore,
) -> tuple[int, int]:
    """(retrievals not served by exactly one opening of the slot their card was deposited in,
    or whose card is not ISSUED; slots opened more than once for a retrieval).

    Read from the emulated cabinets' own device events: each door opening carries the id of the
    command that opened it, and the command names the card it was for."""
    opened: Counter[str] = Counter()
    wrong = 0
    for cabinet, drawer, index, command_id in openings:
        command = store.command_by_id(command_id)
        if command is None or command.kind != "open_for_retrieval":
            continue
        app_id = command.application_id or ""
        opened[app_id] += 1
        if placed.get(app_id) != (cabinet, drawer, index):
            wrong += 1
    for app_id in chosen:
        card = store.card(app_id)
        if card is None or card.state is not CardState.ISSUED or opened[app_id] != 1:
            wrong += 1
    twice = sum(1 for n in opened.values() if n > 1)
    return wrong, twice
