"""Emulated cabinets in a process of their own, for the e-cabinet load benchmark.

Real cabinets are separate devices: their journals, snapshots and MACs cost the controller
nothing.  Run in the controller's process, twenty emulators would share its event loop and its
core, and the benchmark would time them instead of the controller.  So ``bench.cabinet`` starts
this program with a JSON spec on stdin::

    {"site": "LOAD", "drawers": 10, "slots": 50, "root": "/tmp/…",
     "cabinets": {"CAB00": {"host": …, "port": …, "username": …, "password": …, "ca_file": …,
                            "keys": "<128 hex>"}, …}}

It prints ``ready`` once every cabinet is connected, runs until stdin closes, then writes every
retrieval/deposit door opening (cabinet, drawer, index, command id) to ``root/openings.json`` and
prints ``done``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ecabinet.device import DoorOpened, Mechanics
from ecabinet.mqtt import BrokerAddress
from ecabinet.security import CabinetKeys
from ecabinet.sim import CabinetSim


async def host(spec: dict[str, Any]) -> None:
    root = Path(spec["root"])
    sims: dict[str, CabinetSim] = {}
    for cabinet, link in spec["cabinets"].items():
        address = BrokerAddress(
            host=link["host"], port=link["port"], tls=True, username=link["username"],
            password=link["password"], ca_file=Path(link["ca_file"]), version="5",
        )  # fmt: skip
        sims[cabinet] = CabinetSim(
            spec["site"], cabinet, CabinetKeys.from_bytes(bytes.fromhex(link["keys"])), address,
            root / "cabinets" / cabinet, drawers=spec["drawers"], slots_per_drawer=spec["slots"],
            mechanics=Mechanics.instant(), inventory_interval_s=1.0,
        )  # fmt: skip
    for sim in sims.values():
        await sim.start()
    for sim in sims.values():
        await sim.wait_until(lambda s=sim: s.connected, timeout=30)  # type: ignore[misc]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes our stdin
    for sim in sims.values():
        await sim.wait_idle(timeout=30)
    openings = [
        [cabinet, e.drawer, e.index, str(e.command_id)]
        for cabinet, sim in sims.items()
        for e in sim.device_events
        if isinstance(e, DoorOpened) and e.command_id is not None
    ]
    (root / "openings.json").write_text(json.dumps(openings), encoding="utf-8")
    for sim in sims.values():
        await sim.stop()
    print("done", flush=True)


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    asyncio.run(host(spec))


if __name__ == "__main__":
    main()
