"""Prometheus metrics of the line: the :class:`~personaliser.line.observer.LineObserver` made visible.

Labels carry states, station names, stages and reason codes only: never an application id, a
name or a serial (personal data and card identities stay out of metrics, DESIGN §3).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from personaliser.lifecycle import State

__all__ = ["LineMetrics", "serve_metrics"]

#: Encode/print/verify take tens of milliseconds in process and 1-20 s on a real line.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40)


class LineMetrics:
    """Implements the LineObserver protocol on a (by default private) Prometheus registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transitions = Counter(
            "perso_card_transitions", "Card life-cycle transitions", ["to_state"], registry=r
        )
        self.cards_in_state = Gauge(
            "perso_cards_in_state",
            "Cards in each state (as seen by this line)",
            ["state"],
            registry=r,
        )
        self.cards_result = Counter(
            "perso_cards_result", "Cards finished, by result", ["result"], registry=r
        )
        self.busy = Gauge(
            "perso_station_busy",
            "1 while the station works on a card",
            ["station", "kind"],
            registry=r,
        )
        self.busy_seconds = Counter(
            "perso_station_busy_seconds",
            "Time the station spent busy",
            ["station", "kind"],
            registry=r,
        )
        self.utilisation = Gauge(
            "perso_station_utilisation",
            "Busy time / time since the line started",
            ["station", "kind"],
            registry=r,
        )
        self.queue = Gauge("perso_queue_depth", "Cards waiting in a queue", ["queue"], registry=r)
        self.stage_seconds = Histogram(
            "perso_stage_seconds",
            "Time per card per stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.rejects = Counter("perso_rejects", "Cards rejected, by reason", ["reason"], registry=r)
        self.stock_events = Counter(
            "perso_stock_blanks", "Blank stock movements", ["event"], registry=r
        )
        self._started = time.monotonic()
        self._busy_since: dict[tuple[str, str], float] = {}
        self._busy_total: dict[tuple[str, str], float] = {}

    # -- LineObserver -------------------------------------------------------------------------

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        self.transitions.labels(to_state.value).inc()
        self.cards_in_state.labels(from_state.value).dec()
        self.cards_in_state.labels(to_state.value).inc()
        if to_state in (State.PASSED, State.SPOILED):
            self.cards_result.labels(to_state.value.lower()).inc()

    def station_busy(self, station: str, kind: str, busy: bool) -> None:
        key = (station, kind)
        now = time.monotonic()
        self.busy.labels(station, kind).set(1 if busy else 0)
        if busy:
            self._busy_since[key] = now
        elif key in self._busy_since:
            spent = now - self._busy_since.pop(key)
            self.busy_seconds.labels(station, kind).inc(spent)
            self._busy_total[key] = self._busy_total.get(key, 0.0) + spent
        elapsed = max(now - self._started, 1e-9)
        self.utilisation.labels(station, kind).set(
            min(self._busy_total.get(key, 0.0) / elapsed, 1.0)
        )

    def queue_depth(self, queue: str, depth: int) -> None:
        self.queue.labels(queue).set(depth)

    def timing(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejects.labels(reason).inc()

    def stock(self, event: str, count: int = 1) -> None:
        self.stock_events.labels(event).inc(count)


def serve_metrics(metrics: LineMetrics, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` for Prometheus on ``host:port`` (loopback unless told otherwise)."""
    start_http_server(port, addr=host, registry=metrics.registry)
