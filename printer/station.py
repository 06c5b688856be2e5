"""A print station: one device behind a bounded queue, with idempotent job ids and a state machine.

The line runtime submits :class:`~printer.driver.PrintJob` s and awaits their results; the station
feeds them to its :class:`~printer.driver.PrinterDriver` one card at a time, in order. By default
the driver is a :class:`~printer.driver.SimulatedDriver` with the given service time, consumables
and fault policy, and time comes from the injected ``clock`` and ``sleep``, so a line runs faster
than real time (DESIGN §5).

Rules, h11-style:

1. A job id is printed at most once. Submitting an id that already printed returns the recorded
   result; submitting one that is queued or in the device joins it. A submitter that gives up
   (timeout, cancellation) does not stop the job, so its retry finds the job instead of printing a
   second card. The record keeps the last ``history`` ids; the durable store owns idempotency
   beyond that window (DESIGN §3). A job that failed or was cancelled is not recorded: it did not
   print, and submitting its id again prints it.
2. The queue holds at most ``queue_limit`` jobs besides the one in the device; ``submit`` waits
   for room, which is the back-pressure the runtime feels when a station is slow or down.
3. A device fault fails the job in the device and stops the queue until
   :meth:`PrintStation.reset` succeeds. The caller gets the :class:`~printer.errors.DeviceFault`
   and spoils the card (DESIGN §3: any station failure). Queued jobs wait; they are not failed.
4. The state changes only through :data:`TRANSITIONS`; anything else raises ``RuntimeError``.

States and events (:data:`TRANSITIONS`)::

    OFFLINE ──open──► IDLE ──start──► BUSY ──done──► IDLE
                                       ├──fault──────► FAULTED ──reset_ok──► IDLE
                                       │  (laser)         └──reset_failed──► NEEDS_ATTENTION
                                       └──attention──► NEEDS_ATTENTION ──reset_ok──► IDLE
                                          (jam, consumable out, unknown)   └─reset_failed─┘
    IDLE, FAULTED, NEEDS_ATTENTION ──close──► OFFLINE

FAULTED means the station may clear the fault itself: the runtime calls ``reset`` (the device
re-homes). NEEDS_ATTENTION means a person must act first (remove a jammed card, replace a ribbon),
then ``reset``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from printer.driver import (
    FaultKind,
    FaultPolicy,
    JobOutcome,
    PrinterDriver,
    PrintJob,
    SimulatedDriver,
    Sleep,
    fault_kind,
)
from printer.errors import DeviceFault

__all__ = [
    "TRANSITIONS",
    "Clock",
    "PrintResult",
    "PrintStation",
    "StationEvent",
    "StationState",
    "StationStats",
    "TransitionListener",
    "next_state",
]

Clock = Callable[[], float]
"""Monotonic seconds; injected so that simulated service times need not pass in real time."""


class StationState(StrEnum):
    OFFLINE = "offline"
    IDLE = "idle"
    BUSY = "busy"
    FAULTED = "faulted"
    NEEDS_ATTENTION = "needs-attention"


class StationEvent(StrEnum):
    OPEN = "open"
    START = "start"
    DONE = "done"
    FAULT = "fault"
    ATTENTION = "attention"
    RESET_OK = "reset_ok"
    RESET_FAILED = "reset_failed"
    CLOSE = "close"


_S, _E = StationState, StationEvent

TRANSITIONS: Final[Mapping[tuple[StationState, StationEvent], StationState]] = {
    (_S.OFFLINE, _E.OPEN): _S.IDLE,
    (_S.IDLE, _E.START): _S.BUSY,
    (_S.BUSY, _E.DONE): _S.IDLE,
    (_S.BUSY, _E.FAULT): _S.FAULTED,
    (_S.BUSY, _E.ATTENTION): _S.NEEDS_ATTENTION,
    (_S.FAULTED, _E.RESET_OK): _S.IDLE,
    (_S.FAULTED, _E.RESET_FAILED): _S.NEEDS_ATTENTION,
    (_S.NEEDS_ATTENTION, _E.RESET_OK): _S.IDLE,
    (_S.NEEDS_ATTENTION, _E.RESET_FAILED): _S.NEEDS_ATTENTION,
    (_S.IDLE, _E.CLOSE): _S.OFFLINE,
    (_S.FAULTED, _E.CLOSE): _S.OFFLINE,
    (_S.NEEDS_ATTENTION, _E.CLOSE): _S.OFFLINE,
}

# A laser fault is often cleared by re-homing the head; a jam or an empty ribbon never is.
_FAULT_EVENT: Final[Mapping[FaultKind, StationEvent]] = {
    FaultKind.LASER: _E.FAULT,
    FaultKind.JAM: _E.ATTENTION,
    FaultKind.CONSUMABLE_OUT: _E.ATTENTION,
    FaultKind.DEVICE: _E.ATTENTION,
}

TransitionListener = Callable[[StationState, StationEvent, StationState], None]


def next_state(state: StationState, event: StationEvent) -> StationState:
    """The state after ``event`` in ``state``; ``RuntimeError`` if the table does not allow it."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(
            f"illegal transition: {event.value!r} in state {state.value!r}"
        ) from None


@dataclass(frozen=True)
class PrintResult:
    """How a job ended at a station (times from the station's clock)."""

    job_id: str
    station: str
    outcome: JobOutcome
    started_at: float
    finished_at: float

    @property
    def service_s(self) -> float:
        return self.finished_at - self.started_at


@dataclass
class StationStats:
    """Counters for metrics; ``busy_s`` counts every second a card was in the device, failed too."""

    printed: int = 0
    failed: int = 0
    cancelled: int = 0
    duplicates: int = 0
    busy_s: float = 0.0
    open_s: float = 0.0
    faults: dict[FaultKind, int] = field(default_factory=lambda: dict.fromkeys(FaultKind, 0))

    @property
    def jobs(self) -> int:
        """Jobs that ended here (not counting duplicates answered from the record)."""
        return self.printed + self.failed + self.cancelled


@dataclass(eq=False)
class _Entry:
    job: PrintJob
    future: asyncio.Future[PrintResult]


def _consume(future: asyncio.Future[PrintResult]) -> None:
    # A submitter that gave up leaves nobody to read a failure: read it here so asyncio does not
    # log "exception was never retrieved" for a fault that the statistics already count.
    if not future.cancelled():
        future.exception()


class PrintStation:
    """One print or engrave station (see the module docstring for its rules)."""

    def __init__(
        self,
        name: str,
        service_time_s: float | None = None,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        faults: FaultPolicy | None = None,
        consumables: Mapping[str, int] | None = None,
        driver: PrinterDriver | None = None,
        queue_limit: int = 4,
        history: int = 10_000,
        on_transition: TransitionListener | None = None,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be >= 1")
        if history < 1:
            raise ValueError("history must be >= 1")
        if driver is None:
            if service_time_s is None:
                raise ValueError("a simulated station needs service_time_s")
            driver = SimulatedDriver(
                service_time_s,
                sleep=sleep if sleep is not None else asyncio.sleep,
                faults=faults,
                consumables=consumables,
                name=name,
            )
        elif sleep is not None or faults is not None or consumables is not None:
            raise ValueError("sleep, faults and consumables configure the simulated driver only")
        self.name = name
        self.service_time_s = service_time_s
        self.driver = driver
        self.stats = StationStats()
        self._clock = clock
        self._limit = queue_limit
        self._history = history
        self._listener = on_transition
        self._state = StationState.OFFLINE
        self._queue: deque[_Entry] = deque()
        self._pending: dict[str, _Entry] = {}
        self._done: OrderedDict[str, PrintResult] = OrderedDict()
        self._current: _Entry | None = None
        self._current_since = 0.0
        self._opened_at = 0.0
        self._closing = False
        self._cond = asyncio.Condition()
        self._reset_lock = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PrintStation({self.name!r}, state={self._state.value}, queued={len(self._queue)})"

    # -- observation -------------------------------------------------------------------------------

    @property
    def state(self) -> StationState:
        return self._state

    @property
    def queued(self) -> int:
        """Jobs waiting, not counting the one in the device."""
        return len(self._queue)

    @property
    def has_room(self) -> bool:
        return len(self._queue) < self._limit

    @property
    def current_job(self) -> str | None:
        return self._current.job.job_id if self._current is not None else None

    def result_of(self, job_id: str) -> PrintResult | None:
        """The recorded result of a printed job id, if it is still in the record."""
        return self._done.get(job_id)

    def utilisation(self) -> float:
        """Busy time over open time, 0..1 (the card in the device counts up to now)."""
        now = self._now()
        busy = self.stats.busy_s
        open_s = self.stats.open_s
        if self._state is not StationState.OFFLINE:
            open_s += now - self._opened_at
        if self._current is not None:
            busy += now - self._current_since
        return busy / open_s if open_s > 0 else 0.0

    # -- life cycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        next_state(self._state, StationEvent.OPEN)
        await self.driver.open()
        self._fire(StationEvent.OPEN)
        self._opened_at = self._now()
        self._worker = asyncio.create_task(self._work(), name=f"print-station-{self.name}")

    async def close(self) -> None:
        """Finish the card in the device, cancel the queue, release the device. Idempotent."""
        if self._state is StationState.OFFLINE:
            return
        self._closing = True
        async with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            await self._worker
            self._worker = None
        now = self._now()
        while self._queue:
            self._cancel_queued(self._queue.popleft(), now)
        self._fire(StationEvent.CLOSE)
        self.stats.open_s += now - self._opened_at
        self._closing = False
        await self.driver.close()

    async def __aenter__(self) -> PrintStation:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- jobs --------------------------------------------------------------------------------------

    async def submit(self, job: PrintJob) -> PrintResult:
        """Print ``job`` once and return how it ended; a fault raises its ``DeviceFault``.

        Waits while the queue is full. Safe to call again with the same job id (rule 1).
        """
        if self._state is StationState.OFFLINE or self._closing:
            raise RuntimeError(f"station {self.name!r} is not open")
        async with self._cond:
            while True:
                done = self._done.get(job.job_id)
                if done is not None:
                    self.stats.duplicates += 1
                    return done
                entry = self._pending.get(job.job_id)
                if entry is not None:
                    self.stats.duplicates += 1
                    break
                if self._closing:
                    # Never accepted; the runtime re-routes it like a cancelled job.
                    now = self._now()
                    self.stats.cancelled += 1
                    return PrintResult(job.job_id, self.name, JobOutcome.CANCELLED, now, now)
                if len(self._queue) < self._limit:
                    entry = _Entry(job, asyncio.get_running_loop().create_future())
                    entry.future.add_done_callback(_consume)
                    self._queue.append(entry)
                    self._pending[job.job_id] = entry
                    self._cond.notify_all()
                    break
                await self._cond.wait()
        # Shielded: cancelling this submitter must not cancel the print other submitters share.
        return await asyncio.shield(entry.future)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued job, or ask the device to stop it; False if the id is not pending here.

        The submitter gets a :attr:`~printer.driver.JobOutcome.CANCELLED` result. A card stopped in
        the device goes to the reject bin.
        """
        entry = self._pending.get(job_id)
        if entry is None:
            return False
        if entry in self._queue:
            self._queue.remove(entry)
            self._cancel_queued(entry, self._now())
            async with self._cond:
                self._cond.notify_all()
            return True
        return await self.driver.cancel(job_id)

    async def reset(self) -> None:
        """Ask the device to clear its fault; from FAULTED or NEEDS_ATTENTION only.

        Raises the fault again (and the station needs attention) if the device could not clear it.
        """
        async with self._reset_lock:
            next_state(self._state, StationEvent.RESET_OK)
            try:
                await self.driver.reset()
            except Exception as exc:
                self._fire(StationEvent.RESET_FAILED)
                fault = self._as_fault(exc, None)
                if fault is exc:
                    raise
                raise fault from exc
            self._fire(StationEvent.RESET_OK)
        async with self._cond:
            self._cond.notify_all()

    # -- internals ---------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _fire(self, event: StationEvent) -> None:
        old = self._state
        self._state = next_state(old, event)
        if self._listener is not None:
            self._listener(old, event, self._state)

    def _cancel_queued(self, entry: _Entry, now: float) -> None:
        self._pending.pop(entry.job.job_id, None)
        self.stats.cancelled += 1
        if not entry.future.done():
            entry.future.set_result(
                PrintResult(entry.job.job_id, self.name, JobOutcome.CANCELLED, now, now)
            )

    def _as_fault(self, exc: Exception, job_id: str | None) -> DeviceFault:
        """Faults keep their class; anything else from a driver is mapped here, at the boundary.

        A driver should map its device's errors itself; this catches what it missed (a bug, an
        ``OSError`` it let through), so the station still ends in a state an operator can clear.
        """
        if isinstance(exc, DeviceFault):
            fault = exc
        else:
            where = f"job {job_id}" if job_id is not None else "no job"
            fault = DeviceFault(f"driver error ({type(exc).__name__}), {where}", station=self.name)
            fault.__cause__ = exc  # as "raise fault from exc" would, for the path that stores it
        if fault.station is None:
            fault.station = self.name
        return fault

    async def _work(self) -> None:
        while True:
            async with self._cond:
                await self._cond.wait_for(
                    lambda: (
                        self._closing or (bool(self._queue) and self._state is StationState.IDLE)
                    )
                )
                if self._closing:
                    return
                entry = self._queue.popleft()
                self._fire(StationEvent.START)
                self._cond.notify_all()
            await self._print(entry)

    async def _print(self, entry: _Entry) -> None:
        job_id = entry.job.job_id
        started = self._now()
        self._current, self._current_since = entry, started
        try:
            outcome = await self.driver.print(entry.job)
        except Exception as exc:
            fault = self._as_fault(exc, job_id)
            kind = fault_kind(fault)
            self.stats.busy_s += self._now() - started
            self.stats.failed += 1
            self.stats.faults[kind] += 1
            self._fire(_FAULT_EVENT[kind])
            self._pending.pop(job_id, None)
            entry.future.set_exception(fault)
            return
        except BaseException:
            # The worker itself is being cancelled (event loop shutting down): nobody will finish
            # this job, so its submitters must not wait for it.
            self._pending.pop(job_id, None)
            entry.future.cancel()
            raise
        finally:
            self._current = None
        finished = self._now()
        result = PrintResult(job_id, self.name, outcome, started, finished)
        self.stats.busy_s += finished - started
        if outcome is JobOutcome.PRINTED:
            self.stats.printed += 1
            self._done[job_id] = result
            if len(self._done) > self._history:
                self._done.popitem(last=False)
        else:
            self.stats.cancelled += 1
        self._fire(StationEvent.DONE)
        self._pending.pop(job_id, None)
        entry.future.set_result(result)
