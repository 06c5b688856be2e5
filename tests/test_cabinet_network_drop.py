"""The network to one cabinet dropped for a minute, over Mosquitto (issue 6, fault tests).

The cabinet's TCP connection runs through a proxy that stops carrying bytes (tests/netproxy.py):
nobody is told, each side finds out by its own timeouts.  The drop comes while the cabinet's door
is open for a retrieval; the officer takes the card and closes the door during the outage.  Then:

- the controller marks the cabinet offline (silence past ``liveness_timeout`` or the broker's last
  will) and refuses to send it anything: a retrieval asked for meanwhile opens nothing and is
  refused at once, while the other cabinet keeps working;
- after a minute the network comes back; the cabinet reconnects, the controller reconciles it and
  learns what happened meanwhile: the retrieval ends ISSUED, the other card is still in its slot;
- no card is lost, no slot opened twice, nothing is left unexplained, and the audit log verifies.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from ecabinet.audit import verify
from ecabinet.controller import CabinetOfflineError, Outcome
from ecabinet.device import Hand
from ecabinet.mqtt import BrokerAddress
from ecabinet.store import CardState
from tests.netproxy import DroppableProxy
from tests.test_cabinet_controller import (
    AUDIT_KEY,
    WAIT,
    Site,
    opened_count,
    run,
    started_site,
)

OUTAGE_S = 60.0


async def stock(site: Site, app: str, cabinet: str, drawer: int, index: int, serial: str) -> None:
    sim = site.sims[cabinet]
    op = await site.controller.deposit("op1", app, cabinet, drawer, index)
    await op.ack
    await sim.insert_card(drawer, index, serial)
    await sim.close_door(drawer, index)
    assert (await site.controller.wait_done(op.correlation_id)).outcome is Outcome.STOCKED


def test_network_to_a_cabinet_dropped_for_a_minute(tmp_path: Path, fresh_mosquitto: Any) -> None:
    async def scenario() -> None:
        base = fresh_mosquitto.address
        async with DroppableProxy(base.host, base.port) as proxy:

            def route(cabinet: str, address: BrokerAddress) -> BrokerAddress:
                return dataclasses.replace(address, port=proxy.port) if cabinet == "C1" else address

            async with started_site(
                tmp_path,
                {"C1": (2, 5), "C2": (1, 4)},
                hand=Hand.MANUAL,
                mosquitto=fresh_mosquitto,
                sim_args={"keepalive": 5},
                route=route,
            ) as site:
                await drop_for_a_minute(site, proxy)
        verify(tmp_path / "audit.jsonl", key=AUDIT_KEY, anchored=True)

    run(scenario(), timeout=OUTAGE_S + 90)


async def drop_for_a_minute(site: Site, proxy: DroppableProxy) -> None:
    c, one, two = site.controller, site.sims["C1"], site.sims["C2"]
    app1, app2, app3, app4 = site.register(1, 2, 3, 4)
    await stock(site, app1, "C1", 1, 1, "SER0001")
    await stock(site, app2, "C1", 1, 2, "SER0002")
    await stock(site, app3, "C2", 1, 1, "SER0003")
    card1 = site.store.card(app1)
    assert card1 is not None
    opened = await c.open_slot("off1", card1, "retrieval")
    await opened.ack
    await one.wait_idle(WAIT)
    before = c.reconciliations("C1")
    loop = asyncio.get_running_loop()

    proxy.drop()
    dropped_at = loop.time()
    # The officer hands the card over during the outage: the cabinet's events cannot get out.
    await one.remove_card(1, 1)
    await one.close_door(1, 1)
    await c.wait_status("C1", online=False, timeout=WAIT)

    # Meanwhile: a retrieval from the cut-off cabinet is refused at once and opens nothing...
    card2 = site.store.card(app2)
    assert card2 is not None
    started = loop.time()
    with pytest.raises(CabinetOfflineError):
        await c.open_slot("off1", card2, "retrieval")
    assert loop.time() - started < 0.5
    # ...and the other cabinet goes on working.
    await stock(site, app4, "C2", 1, 2, "SER0004")
    card3 = site.store.card(app3)
    assert card3 is not None
    other = await c.open_slot("off1", card3, "retrieval")
    await other.ack
    await two.remove_card(1, 1)
    await two.close_door(1, 1)
    assert (await c.wait_done(other.correlation_id)).outcome is Outcome.ISSUED

    # A minute without the network (waiting here is the scenario, not a synchronisation).
    await asyncio.sleep(max(0.0, OUTAGE_S - (loop.time() - dropped_at)))
    assert proxy.dropped and not one.connected
    proxy.restore()

    await c.wait_status("C1", online=True, timeout=2 * WAIT)
    await c.wait_reconciled("C1", after=before, timeout=2 * WAIT)
    assert (await asyncio.wait_for(c.wait_done(opened.correlation_id), WAIT)).outcome in (
        Outcome.ISSUED,
    )
    states = {a: site.store.card(a).state for a in (app1, app2, app3, app4)}  # type: ignore[union-attr]
    assert states == {
        app1: CardState.ISSUED,
        app2: CardState.STOCKED,
        app3: CardState.ISSUED,
        app4: CardState.STOCKED,
    }
    assert one.device.sense(1, 1) is None and one.device.sense(1, 2) == "SER0002"
    assert two.device.sense(1, 2) == "SER0004"
    # Each door opened for its deposit, the two retrieved ones once more, the refused one never.
    assert opened_count(one, 1, 1) == 2 and opened_count(one, 1, 2) == 1
    assert opened_count(two, 1, 1) == 2 and opened_count(two, 1, 2) == 1
    assert site.store.discrepancies() == []
    assert site.entries("cabinet.offline")
    assert proxy.connections >= 2  # the cabinet came back on a new connection
