"""Line metrics: the observer calls become Prometheus samples, with no card identity in any label."""

from __future__ import annotations

import urllib.request

from prometheus_client import generate_latest

from personaliser.lifecycle import State
from personaliser.metrics import LineMetrics, serve_metrics


def test_observer_calls_become_samples() -> None:
    m = LineMetrics()
    m.card_transition("APP-SECRET-1", State.QUEUED, State.ENCODING)
    m.card_transition("APP-SECRET-1", State.VERIFYING, State.PASSED)
    m.card_transition("APP-SECRET-2", State.ENCODING, State.SPOILED)
    m.station_busy("head-0", "encoder", True)
    m.station_busy("head-0", "encoder", False)
    m.queue_depth("to_print", 3)
    m.timing("encode", 0.02)
    m.reject("verify_mismatch")
    m.stock("issued", 5)
    m.stock("spoiled")
    get = m.registry.get_sample_value
    assert get("perso_card_transitions_total", {"to_state": "PASSED"}) == 1
    assert get("perso_cards_result_total", {"result": "spoiled"}) == 1
    assert get("perso_cards_in_state", {"state": "ENCODING"}) == 0  # in once, out once
    assert get("perso_queue_depth", {"queue": "to_print"}) == 3
    assert get("perso_stage_seconds_count", {"stage": "encode"}) == 1
    assert get("perso_rejects_total", {"reason": "verify_mismatch"}) == 1
    assert get("perso_stock_blanks_total", {"event": "issued"}) == 5
    assert 0 <= get("perso_station_utilisation", {"station": "head-0", "kind": "encoder"}) <= 1
    assert get("perso_station_busy_seconds_total", {"station": "head-0", "kind": "encoder"}) > 0
    text = generate_latest(m.registry).decode()
    assert "APP-SECRET" not in text


def test_metrics_endpoint_serves_on_loopback() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = LineMetrics()
    m.stock("issued", 2)
    serve_metrics(m, port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'perso_stock_blanks_total{event="issued"} 2.0' in body
