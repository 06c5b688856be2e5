"""Issue 6 acceptance, at CI size: a site of emulated cabinets (their own process) on a real
Mosquitto with TLS, per-device passwords and ACLs; cards deposited and retrieved by concurrent
officers through the production controller and flows.  Every retrieval must open exactly the slot
its card was deposited in, once; the audit log must verify.  ``bench.cabinet.run_cabinet_load``
with its defaults is the full-size run (20 cabinets x 500 slots, 10,000 deposits, 5,000
retrievals, 50 officers) whose latency figures go in the notes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.cabinet import run_cabinet_load


def test_deposits_and_concurrent_retrievals_open_exactly_the_right_slots(tmp_path: Path) -> None:
    result = asyncio.run(
        run_cabinet_load(
            cabinets=5,
            drawers=4,
            slots_per_drawer=50,
            deposits=600,
            retrievals=300,
            officers=10,
            offices=5,
            workdir=tmp_path,
        )
    )
    data = result.as_dict()
    print(data)
    assert data["deposit_results"] == {"stocked": 600}
    assert data["retrieve_results"] == {"issued": 300}
    assert data["wrong_slot_openings"] == 0 and data["slots_opened_twice"] == 0
    assert data["retrieve_ms"]["n"] == data["ack_ms"]["n"] == 300
    assert data["audit_entries"] > 600 * 3
