"""Operator control of a running line: pause, resume, drain, stop, abort.

A :class:`LineControl` is a small thread-safe switchboard.  The CLI's signal handlers, a web
request handler on another thread or a task on the line's own event loop flip it; the runtime
subscribes and re-checks its state on every change.

- ``pause``: finish the cards already in the stations, start no new one; ``resume`` undoes it.
- ``drain``: finish everything queued (rework included), then stop; it also resumes a paused line.
- ``stop``: start no new card, finish the cards in the stations, then stop.  Queued work stays
  QUEUED in the store for the next run.
- ``abort``: stop at once.  Cards in the stations are spoiled and re-queued (the same recovery as
  after a crash), because a physical card whose station was stopped mid-way cannot be trusted.

Endings only escalate: drain < stop < abort.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from enum import IntEnum, StrEnum

__all__ = ["Ending", "LineControl", "LineState"]


class Ending(IntEnum):
    """How the line is asked to end; a later request never softens an earlier one."""

    NONE = 0
    DRAIN = 1
    STOP = 2
    ABORT = 3


class LineState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPING = "stopping"
    ABORTING = "aborting"


_STATE_OF_ENDING = {
    Ending.DRAIN: LineState.DRAINING,
    Ending.STOP: LineState.STOPPING,
    Ending.ABORT: LineState.ABORTING,
}


class LineControl:
    """Pause, resume, drain, stop or abort a line from any thread, task or signal handler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused = False
        self._ending = Ending.NONE
        self._listeners: list[Callable[[], None]] = []
        self._interrupts = 0

    def __repr__(self) -> str:
        return f"LineControl({self.state.value})"

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def ending(self) -> Ending:
        return self._ending

    @property
    def state(self) -> LineState:
        with self._lock:
            if self._ending is not Ending.NONE:
                return _STATE_OF_ENDING[self._ending]
            return LineState.PAUSED if self._paused else LineState.RUNNING

    def pause(self) -> None:
        self._change(paused=True)

    def resume(self) -> None:
        self._change(paused=False)

    def drain(self) -> None:
        self._change(paused=False, ending=Ending.DRAIN)

    def stop(self) -> None:
        self._change(ending=Ending.STOP)

    def abort(self) -> None:
        self._change(ending=Ending.ABORT)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (from the changing thread) after every change; returns unsubscribe.

        Requests that change nothing (a second ``stop``) call no listener.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """SIGINT/SIGTERM stop the line (a second one aborts); SIGUSR1 pauses, SIGUSR2 resumes.

        Unix only, from the thread running ``loop``.  Returns a callable that removes them.
        """
        handlers: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGINT: self._interrupt,
            signal.SIGTERM: self._interrupt,
            signal.SIGUSR1: self.pause,
            signal.SIGUSR2: self.resume,
        }
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)

        def remove() -> None:
            for sig in handlers:
                loop.remove_signal_handler(sig)

        return remove

    def _interrupt(self) -> None:
        # An operator who presses Ctrl-C twice wants the line stopped now, not after the cards in
        # the stations are finished.
        self._interrupts += 1
        if self._interrupts == 1:
            self.stop()
        else:
            self.abort()

    def _change(self, *, paused: bool | None = None, ending: Ending | None = None) -> None:
        with self._lock:
            before = (self._paused, self._ending)
            if paused is not None:
                self._paused = paused
            if ending is not None and ending > self._ending:
                self._ending = ending
            if (self._paused, self._ending) == before:
                return  # nothing changed: listeners are not woken (a listener may call back)
            listeners = list(self._listeners)
        for listener in listeners:
            listener()
