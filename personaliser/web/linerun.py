"""The line as a task of the service's event loop: start, pause, resume, drain, stop, and what the
operator dashboard shows while it runs.

:func:`~personaliser.line.run_line` runs on the same loop as the HTTP handlers, so the line's
store is only ever touched from that loop's thread (the store is shared with the collection
flows).  What the dashboard reads comes from the line's own seams: the progress callback
(:class:`~personaliser.line.LineProgress`) and an observer (:class:`Watch`, next to the Prometheus
:class:`~personaliser.metrics.LineMetrics`).  Both carry ids, counts and codes only.

A run's host work (chip crypto, rendering) runs on the loop by default (``host_threads = 0`` in
line.toml), so while cards are being made a request can wait behind one card's work (tens of ms
in process).  ``host_threads = N`` moves it to worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from personaliser.keystore import Keystore
from personaliser.lifecycle import State
from personaliser.line import LineControl, LineProgress, LineSettings, run_line
from personaliser.line.observer import LineObserver
from personaliser.metrics import LineMetrics
from personaliser.store.base import Store

__all__ = ["LineBusyError", "LineRunner", "LineSnapshot", "Sample", "StationView", "Watch"]

#: One sample a second, ten minutes of chart.
HISTORY: Final = 600
#: cards/h of the chart: over the last RATE_WINDOW samples (seconds), so it moves with the line.
RATE_WINDOW: Final = 10


class LineBusyError(Exception):
    """The line is already running (a second start is refused: one runtime per store)."""


@dataclass(slots=True)
class StationView:
    name: str
    kind: str
    busy: bool = False
    cards: int = 0


class Watch:
    """A :class:`LineObserver` keeping what the dashboard shows; forwards to ``inner``."""

    def __init__(self, inner: LineObserver) -> None:
        self.inner = inner
        self.stations: dict[str, StationView] = {}
        self.queues: dict[str, int] = {}
        self.rejects: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Watch({len(self.stations)} stations)"

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        self.inner.card_transition(application_id, from_state, to_state)

    def station_busy(self, station: str, kind: str, busy: bool) -> None:
        view = self.stations.setdefault(station, StationView(station, kind))
        if view.busy and not busy:
            view.cards += 1
        view.busy = busy
        self.inner.station_busy(station, kind, busy)

    def queue_depth(self, queue: str, depth: int) -> None:
        self.queues[queue] = depth
        self.inner.queue_depth(queue, depth)

    def timing(self, stage: str, seconds: float) -> None:
        self.inner.timing(stage, seconds)

    def reject(self, reason: str) -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + 1
        self.inner.reject(reason)

    def stock(self, event: str, count: int = 1) -> None:
        self.inner.stock(event, count)


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    passed: int
    spoiled: int
    cards_per_hour: float


@dataclass(frozen=True, slots=True)
class LineSnapshot:
    state: str
    progress: LineProgress | None
    stations: list[StationView]
    queues: dict[str, int]
    rejects: dict[str, int]
    history: list[Sample]
    ended: str | None
    error: str | None = field(default=None)


class LineRunner:
    """At most one line run at a time, on the running loop."""

    def __init__(
        self,
        store: Store,
        keystore: Keystore,
        settings: LineSettings,
        out_dir: Path,
        metrics: LineMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._keystore = keystore
        self._settings = settings
        self._out = out_dir
        self._metrics = metrics
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._control: LineControl | None = None
        self._watch: Watch | None = None
        self._progress: LineProgress | None = None
        self._history: deque[Sample] = deque(maxlen=HISTORY)
        self._ended: str | None = None
        self._error: str | None = None

    def __repr__(self) -> str:
        return f"LineRunner({self.state})"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def state(self) -> str:
        if self.running and self._control is not None:
            return self._control.state.value
        if self._error is not None:
            return "failed"
        return "done" if self._ended is not None else "idle"

    def start(self, *, follow: bool, actor: str) -> None:
        if self.running:
            raise LineBusyError("the line is running")
        self._control = LineControl()
        self._watch = Watch(self._metrics)
        self._progress = None
        self._history.clear()
        self._ended = self._error = None
        self._task = asyncio.get_running_loop().create_task(self._run(follow, actor))
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _run(self, follow: bool, actor: str) -> None:
        assert self._control is not None and self._watch is not None
        try:
            report = await run_line(
                self._store,
                self._keystore,
                self._settings,
                out_dir=self._out,
                observer=self._watch,
                control=self._control,
                progress=self._progressed,
                follow=follow,
                actor=actor,
            )
            self._ended = report.ended
        except Exception as exc:
            # Messages of the personaliser's errors carry ids and states only (errors.py).
            self._error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self._sample()

    def _progressed(self, progress: LineProgress) -> None:
        self._progress = progress

    async def _tick(self) -> None:
        while self.running:
            self._sample()
            await asyncio.sleep(1.0)

    def _sample(self) -> None:
        p = self._progress
        if p is None:
            return
        if self._history and self._history[-1].t == p.elapsed_s:
            return
        window = list(self._history)[-RATE_WINDOW:]
        rate = 0.0
        if window and p.elapsed_s > window[0].t:
            rate = 3600.0 * (p.passed - window[0].passed) / (p.elapsed_s - window[0].t)
        elif p.elapsed_s > 0:
            rate = p.cards_per_hour
        self._history.append(Sample(round(p.elapsed_s, 3), p.passed, p.spoiled, round(rate, 1)))

    def pause(self) -> str:
        return self._command(lambda c: c.pause())

    def resume(self) -> str:
        return self._command(lambda c: c.resume())

    def drain(self) -> str:
        return self._command(lambda c: c.drain())

    def stop(self) -> str:
        return self._command(lambda c: c.stop())

    def _command(self, action: Callable[[LineControl], None]) -> str:
        if not self.running or self._control is None:
            raise LineBusyError("the line is not running")
        action(self._control)
        return self.state

    async def wait(self, timeout: float | None = None) -> None:
        """Until the current run has ended (for tests and shutdown)."""
        if self._task is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)

    async def close(self, timeout: float = 60.0) -> None:
        """Stop a running line (cards in the stations finish; queued work stays QUEUED); abort it
        if it has not stopped in ``timeout`` seconds."""
        if self.running and self._control is not None:
            self._control.stop()
            try:
                await self.wait(timeout)
            except TimeoutError:
                self._control.abort()
                with contextlib.suppress(TimeoutError):
                    await self.wait(timeout)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    def snapshot(self) -> LineSnapshot:
        watch = self._watch
        return LineSnapshot(
            state=self.state,
            progress=self._progress,
            stations=[] if watch is None else sorted(watch.stations.values(), key=_station_order),
            queues={} if watch is None else dict(watch.queues),
            rejects={} if watch is None else dict(sorted(watch.rejects.items())),
            history=list(self._history),
            ended=self._ended,
            error=self._error,
        )


_KIND_ORDER: Final = {"encoder": 0, "printer": 1, "qa": 2}


def _station_order(view: StationView) -> tuple[int, str]:
    return (_KIND_ORDER.get(view.kind, 9), view.name)
