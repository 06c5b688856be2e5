"""What the line tells the outside world while it runs: the observer seam.

The runtime calls a :class:`LineObserver` after every durable transition and whenever a station
starts or ends a card, a queue changes depth, a stage is timed, a card is rejected or blank stock
moves.  Prometheus metrics (``personaliser.metrics.LineMetrics``) implement it; tests record it.

Arguments are ids, states, station names, stage names and short reason codes: never personal data
or key material (DESIGN §3, data minimisation).  Calls come from the event loop's thread and must
return quickly: an observer that blocks holds the whole line up.
"""

from __future__ import annotations

from typing import Protocol

from personaliser.lifecycle import State

__all__ = ["LineObserver", "NullObserver"]


class LineObserver(Protocol):
    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None: ...

    def station_busy(self, station: str, kind: str, busy: bool) -> None:
        """``kind`` is ``"encoder"``, ``"printer"`` or ``"qa"``."""
        ...

    def queue_depth(self, queue: str, depth: int) -> None: ...

    def timing(self, stage: str, seconds: float) -> None:
        """``stage`` is ``"encode"``, ``"print"`` or ``"verify"``."""
        ...

    def reject(self, reason: str) -> None:
        """A short reason code (``"print_jam"``), never personal data."""
        ...

    def stock(self, event: str, count: int = 1) -> None:
        """``event`` is ``"issued"``, ``"good"``, ``"spoiled"``, ``"sample"`` or ``"returned"``."""
        ...


class NullObserver:
    """Observes nothing: the default when nobody watches."""

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        pass

    def station_busy(self, station: str, kind: str, busy: bool) -> None:
        pass

    def queue_depth(self, queue: str, depth: int) -> None:
        pass

    def timing(self, stage: str, seconds: float) -> None:
        pass

    def reject(self, reason: str) -> None:
        pass

    def stock(self, event: str, count: int = 1) -> None:
        pass
