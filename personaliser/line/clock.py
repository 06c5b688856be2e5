"""Virtual time: run a line with realistic service times faster than real time (DESIGN §5).

:class:`VirtualTimeLoop` is an asyncio event loop whose clock (``loop.time()``) stands still while
anything is runnable and jumps straight to the next timer when nothing is.  ``asyncio.sleep(12)``
for a 12-second chip then costs no real time, yet every station sees the order of events a real
line would.  The device models (encoder heads, :class:`printer.station.PrintStation`, QA readers)
model their service times with ``asyncio.sleep``, so they need nothing else.

Work handed to threads (``loop.run_in_executor``, ``asyncio.to_thread``: the chip crypto, the
store's commits) is *host* work: while any is outstanding the clock does not move, and the loop
waits for it in real time.  Host work therefore takes zero virtual time, which is what a
simulation of the devices wants, and the host's real cost is measured separately (CPU per card).

Only public loop APIs are used: ``time()`` and ``run_in_executor`` are overridden and the
selector is passed to the constructor.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

__all__ = ["VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _VirtualSelector(selectors.DefaultSelector):
    """Where the loop would sleep until its next timer, advance the virtual clock instead."""

    loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        if loop is None or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        if loop.host_work or timeout is None:
            # Threads at work (their results wake us through the loop's self-pipe), or nothing
            # scheduled at all: wait in real time for the outside world; the clock stands still.
            return super().select(None)
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if not ready:
            loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        self._now = float(start)
        self._host_work = 0
        selector.loop = self

    def time(self) -> float:
        return self._now

    @property
    def host_work(self) -> int:
        """Calls running in executor threads right now."""
        return self._host_work

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("virtual time does not run backwards")
        self._now += seconds

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self._host_work += 1
        future.add_done_callback(self._host_work_done)
        return future

    def _host_work_done(self, _future: asyncio.Future[Any]) -> None:
        self._host_work -= 1


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """``asyncio.run(main)`` on a :class:`VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
