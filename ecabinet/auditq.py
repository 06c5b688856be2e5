"""An ordered audit sink for the event loop: appends are queued, one thread writes them.

:class:`~ecabinet.audit.AuditWriter` makes what it writes durable before it returns: a write and
an fsync of the log, then the anchor written to a temporary file, fsync'd, renamed over the old
one and the directory fsync'd: three fsyncs and a rename, whether it writes one entry or a batch.
The controller appends about five entries per card movement (command, ack, slot opened, card
sensed, door closed).  Called on the event loop, that would stall every officer's request behind
the disk; here the loop only enqueues (microseconds) and a single worker thread writes, in the
order of the queue, so the chain's order is the order things happened in.  fsync and rename
release the GIL, so the loop keeps running while the disk works.

Group commit: the worker waits for one entry, then takes every entry already queued behind it,
up to :data:`~ecabinet.audit.MAX_AHEAD`, and writes them with
:meth:`~ecabinet.audit.AuditWriter.append_many`: one write, one fsync, one anchor for the batch.
Under load the batches grow, so the disk cost per entry falls as the rate rises, instead of the
worker falling behind at one durable write per entry; when idle, a batch is one entry.

Durability: an entry is on disk when the batch that holds it is, a few milliseconds after
:meth:`AuditQueue.append`, not when it returns.  A crash of the process can lose the entries still
queued or in the batch being written (the store's command table keeps every command regardless,
and a restarted controller audits the unanswered ones it abandons).  :meth:`flush` waits until
everything queued so far is written; a clean stop flushes.

A write failure (``AuditError``: disk full, the writer broken) stops the worker and is re-raised
by the next ``append`` or ``flush``: whoever audits stops acting rather than act unrecorded.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any, Final

from ecabinet.audit import MAX_AHEAD, AuditWriter
from ecabinet.errors import AuditError

__all__ = ["AuditQueue"]

log = logging.getLogger(__name__)

_STOP: Final = object()


class AuditQueue:
    """``append`` from any thread (the event loop), in order; a worker thread writes."""

    def __init__(self, writer: AuditWriter, *, limit: int = 100_000) -> None:
        self.writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=limit)
        self._lock = threading.Condition()
        self._queued = 0  # entries handed to append()
        self._written = 0  # entries the worker has finished with (written or dropped)
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.rejected = 0  # payloads the writer refused (a bug: logged, counted, not fatal)

    def __repr__(self) -> str:
        return f"AuditQueue({self.writer!r}, queued={self._queued - self._written})"

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name=f"audit:{self.writer.path.name}", daemon=True
            )
            self._thread.start()

    def append(self, actor: str, kind: str, payload: Mapping[str, Any]) -> None:
        """Queue one entry (blocks only if ``limit`` entries are waiting: back-pressure)."""
        if self._failure is not None:
            raise AuditError(self.writer.head.count, "audit writer failed") from self._failure
        if self._thread is None:
            # Not started (or closed): write in the caller's thread, in order with the rest.
            self.flush()
            self._write((actor, kind, dict(payload)))
            return
        with self._lock:
            self._queued += 1
        self._queue.put((actor, kind, dict(payload)))

    def flush(self, timeout: float | None = None) -> None:
        """Until every entry queued before this call is written (``TimeoutError`` after
        ``timeout`` seconds; the worker's ``AuditError`` if it failed)."""
        with self._lock:
            target = self._queued
            if not self._lock.wait_for(
                lambda: self._written >= target or self._failure is not None, timeout
            ):
                raise TimeoutError("audit entries still queued")
        if self._failure is not None:
            raise AuditError(self.writer.head.count, "audit writer failed") from self._failure

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued and stop the worker (the writer stays open: its owner closes it)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        # Wait as long as the worker makes progress: its owner closes the writer next, and an
        # entry still queued then would be lost.  A worker that writes nothing for ``timeout``
        # seconds is stuck: say so rather than return as if all were written.
        while True:
            before = self._written
            thread.join(timeout)
            if not thread.is_alive():
                return
            if self._written == before:
                raise AuditError(self.writer.head.count, "audit writer stalled at close")

    def _work(self) -> None:
        while True:
            batch, stop = self._take()
            if batch:
                try:
                    if self._failure is None:
                        self._write_batch(batch)
                except Exception as exc:  # AuditError, or a bug: either way, stop writing
                    log.error("audit log write failed; no further entries will be written")
                    self._failure = exc
                finally:
                    with self._lock:
                        self._written += len(batch)
                        self._lock.notify_all()
            if stop:
                return

    def _take(self) -> tuple[list[tuple[str, str, dict[str, Any]]], bool]:
        """Wait for one entry, then take those already queued behind it, up to MAX_AHEAD and
        not past ``_STOP``; and whether ``_STOP`` was reached.  Never waits for more: a batch is
        what accumulated while the previous one was written, so an idle log adds no latency."""
        item = self._queue.get()
        if item is _STOP:
            return [], True
        batch = [item]
        while len(batch) < MAX_AHEAD:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _write_batch(self, batch: list[tuple[str, str, dict[str, Any]]]) -> None:
        result = self.writer.append_many(batch)
        for position, exc in result.refused:
            # As in _write: a refused payload is a caller's bug, dropped without stopping the
            # audit; logged by kind and the writer's reason (field names, never values).
            self.rejected += 1
            log.error("audit entry %s refused by the writer", batch[position][1], exc_info=exc)

    def _write(self, item: tuple[str, str, dict[str, Any]]) -> None:
        actor, kind, payload = item
        try:
            self.writer.append(actor, kind, payload)
        except (ValueError, TypeError):
            # A payload the writer refuses (personal-data field name, a long string): a bug in
            # the caller.  Dropping it must not stop the audit of everything else.
            self.rejected += 1
            log.exception("audit entry %s refused by the writer", kind)
