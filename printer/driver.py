"""The seam between a print station and its device: the driver protocol and a simulated device.

A print station (:mod:`printer.station`) owns the queue, the job ids and the state machine; the
driver only moves one card through one device. A real driver (a retransfer colour printer's SDK, a
laser engraver's controller on the network) implements :class:`PrinterDriver`;
:class:`SimulatedDriver` implements it with a configurable service time, a consumable count and a
fault policy, so a whole line runs faster than real time in tests and benchmarks (DESIGN §5).

Failures cross the seam as :class:`printer.errors.DeviceFault` subclasses only; a driver maps its
device's own errors (``OSError`` from USB or a socket, SDK status codes) at this boundary with
``raise ... from exc``. A fault message names the station and the job id, never what is printed.

Fault kinds and what clears them, on the simulated device as on the real ones it stands for:

==================  ===========================================  ===================================
kind                what happened                                cleared by
==================  ===========================================  ===================================
``jam``             the card stopped in the transport            operator removes it: ``clear_jam``
``laser``           laser source or galvo head error             ``reset`` (re-home), unless sticky:
                                                                 then service: ``repair_laser``
``consumable_out``  ribbon, film (or a stock) ran out or broke   operator replaces it: ``refill``
``device``          anything else the driver could not name      operator
==================  ===========================================  ===================================
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from printer.errors import ConsumableOut, DeviceFault, LaserFault, PrintJam

__all__ = [
    "FAULT_TYPES",
    "DriverStatus",
    "Fault",
    "FaultKind",
    "FaultPolicy",
    "JobOutcome",
    "NoFaults",
    "PrintJob",
    "PrinterDriver",
    "RandomFaults",
    "ScriptedFaults",
    "SimulatedDriver",
    "Sleep",
    "fault_kind",
]

Sleep = Callable[[float], Awaitable[None]]
"""An injected ``asyncio.sleep``: a simulation advances a virtual clock instead of waiting."""


class FaultKind(StrEnum):
    JAM = "jam"
    LASER = "laser"
    CONSUMABLE_OUT = "consumable_out"
    DEVICE = "device"


FAULT_TYPES: Final[Mapping[FaultKind, type[DeviceFault]]] = {
    FaultKind.JAM: PrintJam,
    FaultKind.LASER: LaserFault,
    FaultKind.CONSUMABLE_OUT: ConsumableOut,
    FaultKind.DEVICE: DeviceFault,
}


def fault_kind(fault: DeviceFault) -> FaultKind:
    """The kind of ``fault``: the most specific class wins; a bare DeviceFault is ``device``."""
    for kind in (FaultKind.JAM, FaultKind.LASER, FaultKind.CONSUMABLE_OUT):
        if isinstance(fault, FAULT_TYPES[kind]):
            return kind
    return FaultKind.DEVICE


class JobOutcome(StrEnum):
    PRINTED = "printed"
    CANCELLED = "cancelled"  # never started, or stopped and the card sent to the reject bin


_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


@dataclass(frozen=True, eq=False, repr=False)
class PrintJob:
    """One card's print: what to engrave and/or print, under an id that makes retries safe.

    ``job_id`` is the idempotency key: a station prints a given id at most once, however often it
    is submitted. It appears in logs and fault messages, so it must be opaque (a card or attempt
    id, never a document number or a name). ``engrave`` is the packed laser raster
    (:func:`printer.raster.pack_for_engraver`), ``colour`` an RGB ``uint8`` image for a colour
    station; either may be absent (a station that only engraves, a simulation that prints nothing).
    """

    job_id: str
    engrave: npt.NDArray[np.uint8] | None = None
    colour: npt.NDArray[np.uint8] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or _JOB_ID.fullmatch(self.job_id) is None:
            raise ValueError("job_id must be 1-64 characters of [A-Za-z0-9._:-], starting alnum")
        if self.engrave is not None and (self.engrave.ndim != 2 or self.engrave.dtype != np.uint8):
            raise ValueError("engrave must be a 2-D uint8 array of packed rows")
        if self.colour is not None and (
            self.colour.ndim != 3 or self.colour.shape[2] != 3 or self.colour.dtype != np.uint8
        ):
            raise ValueError("colour must be an (h, w, 3) uint8 array")

    def __repr__(self) -> str:
        # The planes are the holder's portrait and data: shapes only.
        def shape(a: npt.NDArray[np.uint8] | None) -> str:
            return "None" if a is None else "x".join(map(str, a.shape))

        planes = f"engrave={shape(self.engrave)}, colour={shape(self.colour)}"
        return f"PrintJob(job_id={self.job_id!r}, {planes})"


@dataclass(frozen=True)
class DriverStatus:
    """What the device reports: can it take a card, what is wrong, what is left."""

    ready: bool
    fault: FaultKind | None = None
    job_id: str | None = None
    consumables: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class PrinterDriver(Protocol):
    """What a print or engrave device offers a station. One card at a time; the station queues.

    - ``open`` / ``close``: claim and release the device (USB interface, socket, SDK handle).
    - ``status``: ready or not, the standing fault, the job in the device, consumables left.
    - ``print(job)``: feed one card, print or engrave it, and return when it has left the device:
      :attr:`JobOutcome.PRINTED`, or :attr:`JobOutcome.CANCELLED` if :meth:`cancel` stopped it. A
      fault raises a :class:`~printer.errors.DeviceFault` subclass and leaves the device faulted
      until :meth:`reset` (or an operator) clears it. The job id goes to the device where it keeps a
      job log, so a real driver can also refuse a job id it has already finished.
    - ``cancel(job_id)``: stop that job if it is in the device; ``False`` if it is not.
    - ``reset``: clear a fault the device can clear by itself (re-home, re-initialise); raises the
      fault again if it needs an operator.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def status(self) -> DriverStatus: ...

    async def print(self, job: PrintJob) -> JobOutcome: ...

    async def cancel(self, job_id: str) -> bool: ...

    async def reset(self) -> None: ...


# -- fault injection -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault to inject into one print: its kind, when it strikes, and whether a reset clears it.

    ``at`` is the fraction of the service time that passes before the fault (the card is part way
    through); ``sticky`` makes a laser fault survive ``reset`` until ``repair_laser``.
    """

    kind: FaultKind
    at: float = 0.5
    sticky: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.at <= 1.0:
            raise ValueError("at must be a fraction of the service time, 0..1")


class FaultPolicy(Protocol):
    """Decides, once per card fed, whether this card's print fails and how."""

    def next_fault(self, job: PrintJob) -> Fault | None: ...


class NoFaults:
    def next_fault(self, job: PrintJob) -> Fault | None:
        return None


class ScriptedFaults:
    """Faults in a fixed order, one entry per card fed (``None`` = that card prints); then none."""

    def __init__(self, script: Iterable[Fault | FaultKind | None]) -> None:
        self._script = [Fault(s) if isinstance(s, FaultKind) else s for s in script]
        self._next = 0

    def next_fault(self, job: PrintJob) -> Fault | None:
        if self._next >= len(self._script):
            return None
        fault = self._script[self._next]
        self._next += 1
        return fault

    @property
    def remaining(self) -> int:
        return len(self._script) - self._next


class RandomFaults:
    """Independent faults at fixed rates per card, from an injected uniform source in [0, 1).

    Pass ``random.Random(seed).random`` for a reproducible run. One draw per card: a card has at
    most one fault, kinds checked in the order given.
    """

    def __init__(
        self,
        rates: Mapping[FaultKind, float],
        uniform: Callable[[], float],
        *,
        at: float = 0.5,
    ) -> None:
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1.0:
            raise ValueError("fault rates must be >= 0 and sum to at most 1")
        self._rates = list(rates.items())
        self._uniform = uniform
        self._at = at

    def next_fault(self, job: PrintJob) -> Fault | None:
        u = self._uniform()
        edge = 0.0
        for kind, rate in self._rates:
            edge += rate
            if u < edge:
                return Fault(kind, at=self._at)
        return None


# -- the simulated device --------------------------------------------------------------------------


class SimulatedDriver:
    """A device model: ``service_time_s`` per card, consumables counted down, faults by policy.

    ``consumables`` maps a consumable to the cards it has left (``{"ribbon": 500, "film": 750}``
    for a retransfer printer; none for a laser engraver); each card fed uses one of each, whether
    it then prints or not. A card is not fed when something is already at zero: that print raises
    :class:`~printer.errors.ConsumableOut` at once, before any service time passes.
    :attr:`printed` is the device's own log of finished job ids, for tests to count real prints.
    ``inject`` queues a fault for the next card, for a runtime or a test that drives faults itself.
    Operator actions (``clear_jam``, ``repair_laser``, ``refill``) are the simulation's stand-in for
    hands on the machine. None of these are part of :class:`PrinterDriver`.
    """

    def __init__(
        self,
        service_time_s: float,
        *,
        sleep: Sleep = asyncio.sleep,
        faults: FaultPolicy | None = None,
        consumables: Mapping[str, int] | None = None,
        name: str | None = None,
    ) -> None:
        if service_time_s < 0:
            raise ValueError("service_time_s must be >= 0")
        if consumables is not None and any(n < 0 for n in consumables.values()):
            raise ValueError("consumable counts must be >= 0")
        self.service_time_s = service_time_s
        self.name = name
        self.printed: list[str] = []
        self._sleep = sleep
        self._policy: FaultPolicy = faults if faults is not None else NoFaults()
        self._stock: dict[str, int] = dict(consumables or {})
        self._open = False
        self._fault: Fault | None = None
        self._job: str | None = None
        self._stop: asyncio.Event | None = None
        self._injected: deque[Fault] = deque()

    def __repr__(self) -> str:
        return f"SimulatedDriver(name={self.name!r}, service_time_s={self.service_time_s})"

    # -- PrinterDriver --------------------------------------------------------------------------

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def status(self) -> DriverStatus:
        fault = self._fault.kind if self._fault is not None else None
        if fault is None and any(left <= 0 for left in self._stock.values()):
            fault = FaultKind.CONSUMABLE_OUT
        return DriverStatus(
            ready=self._open and fault is None and self._job is None,
            fault=fault,
            job_id=self._job,
            consumables=dict(self._stock),
        )

    async def print(self, job: PrintJob) -> JobOutcome:
        if not self._open:
            raise RuntimeError("driver is not open")
        if self._job is not None:
            raise RuntimeError("the device takes one card at a time")
        if self._fault is not None:
            raise self._exception(self._fault.kind, job.job_id, "device not ready")
        empty = sorted(k for k, left in self._stock.items() if left <= 0)
        if empty:
            self._fault = Fault(FaultKind.CONSUMABLE_OUT, at=0.0)
            raise self._exception(FaultKind.CONSUMABLE_OUT, job.job_id, f"{empty[0]} out")
        fault = self._injected.popleft() if self._injected else self._policy.next_fault(job)
        for k in self._stock:
            self._stock[k] -= 1
        self._job = job.job_id
        self._stop = asyncio.Event()
        try:
            if fault is not None:
                if await self._run(self.service_time_s * fault.at):
                    return JobOutcome.CANCELLED
                self._fault = fault
                raise self._exception(fault.kind, job.job_id, "injected")
            if await self._run(self.service_time_s):
                return JobOutcome.CANCELLED
            self.printed.append(job.job_id)
            return JobOutcome.PRINTED
        finally:
            self._job = None
            self._stop = None

    async def cancel(self, job_id: str) -> bool:
        if self._job != job_id or self._stop is None:
            return False
        self._stop.set()
        return True

    async def reset(self) -> None:
        fault = self._fault
        if fault is None:
            return
        if fault.kind is FaultKind.LASER and not fault.sticky:
            self._fault = None
            return
        raise self._exception(fault.kind, self._job, "reset did not clear the fault")

    # -- simulation controls: not part of PrinterDriver --------------------------------------------

    def inject(self, fault: Fault | FaultKind) -> None:
        """Make the next card fed fail with ``fault``, ahead of the policy (a chaos hook)."""
        self._injected.append(Fault(fault) if isinstance(fault, FaultKind) else fault)

    def clear_jam(self) -> None:
        if self._fault is not None and self._fault.kind in (FaultKind.JAM, FaultKind.DEVICE):
            self._fault = None

    def repair_laser(self) -> None:
        if self._fault is not None and self._fault.kind is FaultKind.LASER:
            self._fault = None

    def refill(self, consumable: str, count: int) -> None:
        """Replace ``consumable`` with a fresh one good for ``count`` cards."""
        if count <= 0:
            raise ValueError("count must be > 0")
        self._stock[consumable] = count
        fault = self._fault
        if (
            fault is not None
            and fault.kind is FaultKind.CONSUMABLE_OUT
            and all(left > 0 for left in self._stock.values())
        ):
            self._fault = None

    @property
    def consumables(self) -> Mapping[str, int]:
        return dict(self._stock)

    # -- internals ---------------------------------------------------------------------------------

    def _exception(self, kind: FaultKind, job_id: str | None, detail: str) -> DeviceFault:
        where = f"job {job_id}" if job_id is not None else "no job"
        return FAULT_TYPES[kind](f"{kind.value} ({detail}), {where}", station=self.name)

    async def _run(self, seconds: float) -> bool:
        """Let ``seconds`` of device time pass; True if :meth:`cancel` stopped it first."""
        stop = self._stop
        assert stop is not None
        if seconds <= 0:
            return stop.is_set()
        # Two tasks so a cancel can cut a service time short whatever the injected sleep does.
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # an injected sleep that failed fails the print
        return stop.is_set()
