"""Group commit for the line's transitions: cards that move at the same moment share one commit.

Every station coroutine moves its card with ``await commits.transition(request)``.  The request
waits in a list until the event loop has run every coroutine that was ready with it; then one
store call applies the whole list (``Store.transitions``: a savepoint each, one commit) and each
caller resumes with its own result or exception.  No caller acts on its card before the commit
that records its move, so the write-ahead rule of DESIGN §3 holds as with one commit per
transition, and a kill at any moment leaves either the whole group or none of it.

Why it pays: at full speed most of a transition's CPU is its commit (the WAL frames of every page
it touched, and the sync of a milestone); with sixteen heads, printers and QA moving cards, the
commits shrink by the number of cards moving together, and pages they share (the tail of the
events table, the state index) are written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from personaliser.store import TransitionRequest, TransitionResult

__all__ = ["GroupCommit"]

Apply = Callable[[Sequence[TransitionRequest]], Awaitable[list[TransitionResult | Exception]]]


class GroupCommit:
    """Collects the transitions asked for in one turn of the event loop into one store call.

    ``apply`` runs the group (the runtime passes ``Store.transitions`` on its store thread, or
    inline); groups are applied one after another, in the order they were formed."""

    def __init__(self, apply: Apply, *, max_group: int = 64, turns: int = 0) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._apply = apply
        self._max = max_group
        self._turns = turns
        self._pending: list[tuple[TransitionRequest, asyncio.Future[TransitionResult]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0  # how many commits the transitions took (reported by the benchmark)
        self.transitions = 0

    def __repr__(self) -> str:
        return f"GroupCommit(groups={self.groups}, transitions={self.transitions})"

    async def transition(self, request: TransitionRequest) -> TransitionResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TransitionResult] = loop.create_future()
        self._pending.append((request, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        # A new task first runs in the loop's next turn, after every coroutine that was ready
        # in this one: all of them have had the chance to add their move.
        for _ in range(self._turns):
            await asyncio.sleep(0)
        while self._pending:
            group, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                results = await self._apply([request for request, _ in group])
            except Exception as exc:  # the store failed: nobody's move happened
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (the line is torn down): nobody waits forever
                for _, future in group + self._pending:
                    future.cancel()
                self._pending = []
                raise
            self.groups += 1
            self.transitions += len(group)
            for (_, future), result in zip(group, results, strict=True):
                if future.done():  # its caller was cancelled; the move stands, as inline
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
