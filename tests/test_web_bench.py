"""The web retrieval load (bench/web.py), small: real line, ``perso serve`` in its own process,
concurrent officer clients over HTTP; every card issued, latencies reported.  The full run
(1,000 retrievals, 50 clients) is ``python -m bench.web``."""

from __future__ import annotations

from bench.web import run_web_load


def test_web_load_smoke() -> None:
    result = run_web_load(cards=30, clients=8, seed=43).as_dict()
    assert result["retrieved"] == 30 and result["outcomes"] == {"issued": 30}
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["throughput_per_s"] > 0
