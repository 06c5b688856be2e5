"""The web retrieval load (bench/web.py), small: real line, Mosquitto (TLS, passwords, ACLs), the
emulated cabinets in a process of their own, ``perso serve`` in another, concurrent officer
clients over HTTP; every card issued, every door opening checked, latencies reported.  The full
run (1,000 retrievals, 50 clients) is ``python -m bench.web``."""

from __future__ import annotations

import pytest

from bench.web import _staffing, run_web_load


def test_clients_are_spread_by_cards_per_office() -> None:
    # Seed 41's 1,000 applications: each office gets about one client per 20 cards.
    cards = {"HKI": 177, "KLN": 162, "KT": 143, "ST": 172, "TM": 178, "YL": 168}
    staff = _staffing(cards, 50)
    assert sum(staff.values()) == 50
    assert staff == {"HKI": 9, "KLN": 8, "KT": 7, "ST": 9, "TM": 9, "YL": 8}
    assert _staffing({"A": 1, "B": 1000}, 2) == {"A": 1, "B": 1}  # every office served
    with pytest.raises(ValueError, match="cannot serve"):
        _staffing(cards, 5)


@pytest.mark.integration
def test_web_load_smoke_on_mosquitto() -> None:
    # A short think time exercises the paced path without making the run long.
    result = run_web_load(cards=30, clients=8, think_s=0.02, seed=43).as_dict()
    assert result["topology"] == "mosquitto"
    assert result["retrieved"] == 30 and result["outcomes"] == {"issued": 30}
    # The cabinets' own door openings: each card's slot opened once, for that card.
    assert result["wrong_slot_openings"] == 0 and result["slots_opened_twice"] == 0
    assert result["deposits_refused"] == 0  # commands leave in counter order (no stale refusal)
    assert result["think_s"] == 0.02 and result["offered_per_s"] == 400.0
    lat = result["latency_ms"]
    assert lat["n"] == 30
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    # Every answer carried the controller's ack time, which is part of the request's time.
    ack = result["ack_ms"]
    assert ack["n"] == 30 and 0 < ack["max"] <= lat["max"]
    assert result["throughput_per_s"] > 0 and result["steady_per_s"] > 0
