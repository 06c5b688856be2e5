"""CPU time spent inside emulated devices, kept apart from the host's.

On a real line the chip's own work (the card side of SCP03, BAC and 3DES secure messaging) runs on
the chip's silicon; in process it runs on the host's CPU, in the middle of the host's own work.  A
benchmark that divides the process's CPU time by the cards made charges the host for it.  A
:class:`CpuMeter` adds up the CPU time spent inside metered sections so that a benchmark can report
the device's share next to the host's instead of hiding either.

Why ``time.thread_time`` and not ``process_time``: a section runs on one thread from start to end
(a device call is synchronous), and its thread's CPU clock counts exactly that thread's work.  With
``host_threads`` other threads run host work at the same moment; ``process_time`` would charge
their CPU to the device.  The sum of the sections' thread times is therefore the device's CPU time
however many threads the line uses, and the process total minus that sum is the host's.

Metering costs two clock reads per section (about 1.5 us), so it is off until someone asks:
:meth:`CpuMeter.reading` starts a :class:`Reading` for the duration of a ``with`` block; while no
reading is open a section costs one attribute test.  Sections must not nest on one thread (a nested
one would be counted twice); the emulator's entry points do not call one another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = ["DEVICE_CPU", "CpuMeter", "Reading"]

P = ParamSpec("P")
T = TypeVar("T")


class Reading:
    """CPU seconds metered while one ``with meter.reading()`` block was open."""

    __slots__ = ("seconds", "sections")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.sections = 0

    def __repr__(self) -> str:
        return f"Reading(seconds={self.seconds:.6f}, sections={self.sections})"


class CpuMeter:
    """Adds the calling thread's CPU time in metered sections to every open :class:`Reading`."""

    __slots__ = ("_lock", "_readings", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._readings: tuple[Reading, ...] = ()

    def __repr__(self) -> str:
        return f"CpuMeter({self.name!r}, readings={len(self._readings)})"

    @property
    def active(self) -> bool:
        return bool(self._readings)

    @contextmanager
    def reading(self) -> Iterator[Reading]:
        """Meter every section run (on any thread) until the block ends."""
        reading = Reading()
        with self._lock:
            self._readings = (*self._readings, reading)
        try:
            yield reading
        finally:
            with self._lock:
                self._readings = tuple(r for r in self._readings if r is not reading)

    def add(self, seconds: float) -> None:
        with self._lock:
            for reading in self._readings:
                reading.seconds += seconds
                reading.sections += 1

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` as one metered section."""
        if not self._readings:
            return fn(*args, **kwargs)
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(time.thread_time() - start)


#: The emulated chips (and the in-process feeder that makes blanks).
DEVICE_CPU = CpuMeter("device")
