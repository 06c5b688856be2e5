"""The line runtime (DESIGN §5): queued applications in, verified cards out, every blank accounted for.

Tasks, queues and threads::

    store (QUEUED, line order)
        │ dispatcher: rework first, then priority class, due date, office, batch, approval
        ▼           (blanks issued per batch from the vault, just in time)
    head workers ×H ──► to_print (bounded) ──► print workers ×P ──► to_verify (bounded) ──► QA ×Q
    (LDS, EF.SOD,         (back-pressure)      (face rendered and    (back-pressure)      (BAC read,
     SCP03 perso)                               dithered; station)                         PA, DG1)
                                                                                 │
                                 output: cards/<card_id>/, trays in delivery order ◄┘
                                 reject bin: spoil log, application re-queued

- One asyncio event loop runs every worker.  Host work (store commits, chip crypto, rendering,
  output files) runs on the loop's own thread by default: it is CPU-bound, the GIL serialises it
  anyway and every hand-over to a thread costs CPU (``host_threads = 0`` in line.toml).  With
  ``host_threads = N`` it runs on N compute threads and one store thread (one SQLite connection,
  commits in order), which keeps the loop responsive.  A PC/SC head always has a thread of its
  own: its calls block on the reader, and a PC/SC context belongs to one thread.
- Back-pressure: a head that finished a card waits until ``to_print`` has room, a printer until
  ``to_verify`` has; the slowest station therefore always has work queued and never waits.
- Every card transition goes through :meth:`Store.transition` under the key (application,
  attempt, target state) (:func:`~personaliser.line.recovery.attempt_key`), so a replay is a no-op.
- Late binding: the chip serial is recorded when the chip first answers (ENCODED, or SPOILED if it
  failed first); the store binds it to the application only on PASSED (encode and verify done).
- A station failure spoils the blank (spoil log, with a reason code) and re-queues the
  application at top priority in its batch, keeping its due date, until ``max_attempts`` station
  failures; then it is held for an operator.
- Stock: blanks are issued to a batch when its first card starts (what its queued cards need),
  topped up when rework needs more, and returned when the batch has nothing left to make, so
  issued = good + spoiled + samples + returned per batch.
- Start-up always runs :func:`~personaliser.line.recovery.recover` first: whatever a crash left
  in a station is spoiled and re-queued before the first new card starts.

Personal data is decrypted (``Store.load_application``) when a card starts and dropped when it
leaves QA; nothing the runtime logs, reports or tells its observer carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import heapq
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from chip.emulator import ChipOS
from chip.errors import ChipError, ReaderGoneError
from chip.perso import PersoPlan
from chip.pki import DocumentSigner
from chip.random import RandomSource, system_random
from personaliser.applications import Application
from personaliser.chipstage import card_id_for
from personaliser.errors import NotFoundError, PersoError, StoreError
from personaliser.keystore import Keystore
from personaliser.lifecycle import STATION_STATES, BlankState, State
from personaliser.line.commits import GroupCommit
from personaliser.line.config import InProcessHeads, LineSettings, PcscHeads
from personaliser.line.control import Ending, LineControl
from personaliser.line.observer import LineObserver, NullObserver
from personaliser.line.recovery import (
    RecoveryReport,
    attempt_key,
    recover,
    requeue_or_hold,
    return_unused_blanks,
)
from personaliser.line.report import BatchReport, LineProgress, LineReport, StationReport
from personaliser.line.stations import (
    EncodeOutcome,
    EncoderFault,
    Head,
    InProcessHead,
    LineFaults,
    PcscHead,
    ReadbackCheck,
    describe,
    expected_dg1,
    prepare,
    publish_card,
    readback_chip,
    render_job,
    sampled,
    stage_card,
)
from personaliser.outputs import write_json
from personaliser.store.base import (
    ApplicationRecord,
    Store,
    TransitionRequest,
    TransitionResult,
)
from printer.driver import FaultKind, JobOutcome, PrintJob, SimulatedDriver, fault_kind
from printer.errors import DeviceFault, PrinterError
from printer.layout import Layout, load_layout
from printer.raster import warm_up
from printer.station import PrintStation, StationEvent, StationState
from scheduler import Priority

__all__ = ["run_line"]

P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], float]
OrderKey = tuple[int, date, str, str, datetime | None, str]

#: Where out_dir keeps a card's files until it has PASSED.  Settled at start-up and at the end:
#: a card that PASSED before a crash has its files published, any other staged card is dropped.
STAGING = ".staging"
_MAX_REASON = 200


# -- work and cards --------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Work:
    """A QUEUED application waiting for a head: ids and ordering only, no personal data."""

    application_id: str
    batch_id: str
    attempts: int  # attempts already made (the store's counter)
    key: OrderKey


@dataclass(eq=False, slots=True)
class _HeadSlot:
    device: Head
    executor: Executor | None  # None: on the event loop's thread
    report: StationReport
    consecutive_failures: int = 0

    @property
    def name(self) -> str:
        return self.device.name


@dataclass(eq=False, slots=True)
class _PrinterSlot:
    station: PrintStation
    report: StationReport

    @property
    def name(self) -> str:
        return self.station.name


@dataclass(eq=False, slots=True)
class _Card:
    """One attempt at one application's card, from ENCODING until PASSED or SPOILED."""

    work: _Work
    head: _HeadSlot
    attempt: int
    app: Application | None
    plan: PersoPlan | None
    state: State = State.QUEUED
    serial: str | None = None
    serial_recorded: bool = False
    card_id: str | None = None
    chip: ChipOS | None = None
    in_head: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)
    job: asyncio.Future[PrintJob] | None = None
    finished: bool = False

    def __repr__(self) -> str:  # ids only: app and plan hold personal data
        return f"_Card({self.work.application_id}, attempt {self.attempt}, {self.state.value})"

    @property
    def application_id(self) -> str:
        return self.work.application_id


@dataclass(eq=False, slots=True)
class _Batch:
    report: BatchReport
    due_date: date
    opened: bool = False
    complete: bool = False
    proofs: bool = False  # the first passed card of the batch in this run got its proofs
    free: int = 0  # blanks on the line not in a station
    issued: int = 0  # the store's issued count, as last seen
    waiting: int = 0  # work items in the dispatcher's heap
    in_flight: int = 0


class _Buffered(NullObserver):
    """Keeps observer calls made on another thread, to replay them on the loop's thread."""

    def __init__(self) -> None:
        self.calls: list[Callable[[LineObserver], None]] = []

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        self.calls.append(lambda o: o.card_transition(application_id, from_state, to_state))

    def reject(self, reason: str) -> None:
        self.calls.append(lambda o: o.reject(reason))

    def stock(self, event: str, count: int = 1) -> None:
        self.calls.append(lambda o: o.stock(event, count))


class _GuardedObserver:
    """Passes calls on to the real observer; if it fails, the line notes it and goes on.

    A metrics bug must not spoil a good card or stop the line.
    """

    def __init__(self, inner: LineObserver, errors: list[str]) -> None:
        self._inner = inner
        self._errors = errors
        self._failed: set[str] = set()

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:
            if what not in self._failed:
                self._failed.add(what)
                self._errors.append(f"observer.{what} failed: {describe(exc)}")

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        self._guard(
            "card_transition",
            lambda: self._inner.card_transition(application_id, from_state, to_state),
        )

    def station_busy(self, station: str, kind: str, busy: bool) -> None:
        self._guard("station_busy", lambda: self._inner.station_busy(station, kind, busy))

    def queue_depth(self, queue: str, depth: int) -> None:
        self._guard("queue_depth", lambda: self._inner.queue_depth(queue, depth))

    def timing(self, stage: str, seconds: float) -> None:
        self._guard("timing", lambda: self._inner.timing(stage, seconds))

    def reject(self, reason: str) -> None:
        self._guard("reject", lambda: self._inner.reject(reason))

    def stock(self, event: str, count: int = 1) -> None:
        self._guard("stock", lambda: self._inner.stock(event, count))


class _LineLock:
    """One line runtime per store: recovery would spoil another live line's cards.

    An advisory lock on a file beside the database; the kernel drops it when the process dies, so
    a killed line never leaves a stale lock behind.
    """

    def __init__(self, store: Store) -> None:
        path = getattr(store, "path", None)
        self._path = None if path is None else Path(f"{path}.line-lock")
        self._fd: int | None = None

    def __enter__(self) -> _LineLock:
        if self._path is None:
            return self
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StoreError(
                f"another line runtime is running on this store ({self._path})"
            ) from exc
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _order_key(record: ApplicationRecord, due: date, office: str, *, rework: bool) -> OrderKey:
    # The scheduler's line order (scheduler.batching): class, due date, office, then within a tray
    # approval and id.  Rework jumps the queue with its batch's original due date (DESIGN §3).
    label = "rework" if rework else (record.queue_priority or "normal")
    return (
        int(Priority.from_label(label)),
        due,
        office,
        record.batch_id or "",
        record.approved_at,
        record.application_id,
    )


def _reason(code: str, detail: str) -> str:
    text = f"{code}: {detail}" if detail else code
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


# -- the line --------------------------------------------------------------------------------------


class _Line:
    def __init__(
        self,
        store: Store,
        keystore: Keystore,
        config: LineSettings,
        *,
        batch_ids: Sequence[str] | None,
        observer: LineObserver,
        out_dir: Path,
        control: LineControl,
        progress: Callable[[LineProgress], None] | None,
        rng: RandomSource,
        clock: Clock | None,
        follow: bool,
        actor: str,
    ) -> None:
        self.store = store
        self.keystore = keystore
        self.config = config
        self.batch_ids = None if batch_ids is None else list(batch_ids)
        self.out_dir = out_dir
        self.staging = out_dir / STAGING
        self.control = control
        self.progress = progress
        self.rng = rng
        self._clock = clock
        self.follow = follow
        self.actor = actor
        f = config.faults
        self.faults = LineFaults(
            seed=f.seed,
            encoder_rates={
                EncoderFault.WRITE_ERROR: f.encoder_write_error_rate,
                EncoderFault.MUTE: f.encoder_mute_rate,
            },
            encoder_on={
                EncoderFault.WRITE_ERROR: f.encoder_write_error_on,
                EncoderFault.MUTE: f.encoder_mute_on,
            },
            print_rates={FaultKind.JAM: f.print_jam_rate, FaultKind.LASER: f.print_laser_rate},
            print_on={FaultKind.JAM: f.print_jam_on, FaultKind.LASER: f.print_laser_on},
            verify_mismatch_rate=f.verify_mismatch_rate,
            verify_mismatch_on=f.verify_mismatch_on,
        )
        self.report = LineReport()
        self.observer: LineObserver = _GuardedObserver(observer, self.report.errors)
        self.heap: list[tuple[OrderKey, int, _Work]] = []
        self._seq = 0
        self.batches: dict[str, _Batch] = {}
        self.active: set[str] = set()  # applications waiting or in a station in this run
        self.skipped: set[str] = set()  # could not be started in this run
        self.in_flight = 0
        self.passed = 0
        self.spoiled = 0
        self.heads: list[_HeadSlot] = []
        self.printers: list[_PrinterSlot] = []
        self.qa: list[StationReport] = []
        self._since: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._dispatch_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._layout: Layout | None = None
        self._signer: DocumentSigner | None = None
        self._anchors = [keystore.csca_certificate()]
        self._extended_reads = (
            not isinstance(config.heads, PcscHeads) or config.heads.extended_reads
        )
        self.to_print: asyncio.Queue[_Card | None] = asyncio.Queue(config.queues.to_print)
        self.to_verify: asyncio.Queue[_Card | None] = asyncio.Queue(config.queues.to_verify)
        self._max_depth = {"to_print": 0, "to_verify": 0}
        self._t0 = 0.0
        self._own_executors: list[ThreadPoolExecutor] = []
        self._compute: Executor | None = None
        self._store_thread: Executor | None = None
        if config.host_threads:
            self._compute = self._executor(config.host_threads, "line-compute")
            self._store_thread = self._executor(1, "line-store")
        # Cards moving at the same moment share one commit (commits.py).
        self.commits = GroupCommit(self._apply_transitions, turns=2)

    def _executor(self, threads: int, name: str) -> ThreadPoolExecutor:
        executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._own_executors.append(executor)
        return executor

    # -- helpers ---------------------------------------------------------------------------------

    def clock(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @staticmethod
    async def _call(
        executor: Executor | None, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if executor is None:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A store call, in order with every other one (one thread, one SQLite connection)."""
        return await self._call(self._store_thread, fn, *args, **kwargs)

    async def compute(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._call(self._compute, fn, *args, **kwargs)

    async def on_head(
        self, head: _HeadSlot, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._call(head.executor, fn, *args, **kwargs)

    async def device_time(self, started: float, seconds: float) -> None:
        """Let the rest of a device's service time pass (the host's share already took some)."""
        left = seconds - (self.clock() - started)
        if left > 0:
            await asyncio.sleep(left)

    def wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_change(self, timeout: float | None) -> bool:
        """Wait for any change of the line's state; False on timeout."""
        changed = self._changed
        if timeout is None:
            await changed.wait()
            return True
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def busy(self, report: StationReport, busy: bool) -> None:
        now = self.clock()
        if busy:
            self._since[report.name] = now
        elif report.name in self._since:
            report.busy_s += now - self._since.pop(report.name)
        self.observer.station_busy(report.name, report.kind, busy)

    async def put(self, queue: asyncio.Queue[_Card | None], name: str, card: _Card) -> None:
        await queue.put(card)
        depth = queue.qsize()
        self._max_depth[name] = max(self._max_depth[name], depth)
        self.observer.queue_depth(name, depth)

    async def get(self, queue: asyncio.Queue[_Card | None], name: str) -> _Card | None:
        card = await queue.get()
        self.observer.queue_depth(name, queue.qsize())
        return card

    def timing(self, stage: str, seconds: float) -> None:
        total = self.report.stage_seconds.setdefault(stage, [0.0, 0])
        total[0] += seconds
        total[1] += 1
        self.observer.timing(stage, seconds)

    def snapshot(self) -> LineProgress:
        return LineProgress(
            requested=self.report.cards_requested,
            passed=self.passed,
            spoiled=self.spoiled,
            held=len(self.report.cards_held),
            in_stations=self.in_flight,
            waiting=len(self.heap),
            elapsed_s=self.clock() - self._t0,
            state=self.control.state.value,
        )

    def tell_progress(self) -> None:
        if self.progress is not None:
            self.progress(self.snapshot())

    # -- transitions -----------------------------------------------------------------------------

    async def _apply_transitions(
        self, requests: Sequence[TransitionRequest]
    ) -> list[TransitionResult | Exception]:
        return await self.db(self.store.transitions, requests)

    async def move(self, card: _Card, to: State, **fields: str) -> None:
        request = TransitionRequest(
            card.application_id,
            to,
            attempt_key(card.application_id, card.attempt, to),
            self.actor,
            fields,
        )
        result = await self.commits.transition(request)
        card.state = to
        self.observer.card_transition(card.application_id, result.from_state, to)

    async def release_head(self, card: _Card) -> None:
        """The card leaves its head (to the next station or the reject bin); the head is free."""
        if card.in_head:
            chip = await self.on_head(card.head, card.head.device.release)
            card.chip = card.chip or chip
            card.in_head = False
        card.released.set()

    async def spoil(self, card: _Card, code: str, detail: str, station: str) -> None:
        """A station failed (life cycle Rules 3-4): the blank to the spoil log, the application
        re-queued at top priority, or held once its station failures reach ``max_attempts``."""
        fields = {"reason": _reason(code, detail), "station": station}
        if card.serial is not None and not card.serial_recorded:
            fields["blank_serial"] = card.serial
        await self.move(card, State.SPOILED, **fields)
        self.spoiled += 1
        self.report.rejects[code] += 1
        self.observer.reject(code)
        self.observer.stock("spoiled")
        batch = self.batches[card.work.batch_id]
        batch.report.spoiled += 1
        await self.release_head(card)
        card.app = card.plan = card.chip = None
        if card.job is not None and not card.job.done():
            card.job.cancel()
        record = await self.db(self.store.get, card.application_id)
        requeued = await self.db(
            requeue_or_hold,
            self.store,
            record,
            max_attempts=self.config.max_attempts,
            actor=self.actor,
        )
        if requeued:
            self.observer.card_transition(card.application_id, State.SPOILED, State.QUEUED)
            due, office = batch.due_date, batch.report.office
            self.push(_Work(card.application_id, card.work.batch_id, record.attempts,
                            _order_key(record, due, office, rework=True)))  # fmt: skip
            await self.finish(card, requeued=True)
        else:
            self.report.cards_held.append(card.application_id)
            batch.report.held += 1
            await self.finish(card)

    async def fail(self, card: _Card, exc: Exception, station: str) -> None:
        """An unexpected error while a card was on the line: account for the blank all the same."""
        self.report.errors.append(f"{station}: {describe(exc)}")
        if card.state in STATION_STATES:
            await self.spoil(card, "internal_error", describe(exc), station)
            return
        await self.release_head(card)
        if not card.finished:
            await self.finish(card)

    # -- the dispatcher --------------------------------------------------------------------------

    def push(self, work: _Work) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (work.key, self._seq, work))
        batch = self.batches[work.batch_id]
        batch.waiting += 1
        batch.complete = batch.report.complete = False
        self.active.add(work.application_id)
        self.observer.queue_depth("queued", len(self.heap))
        self.wake()

    async def next_work(self) -> _Work | None:
        """The next application for a free head; None when the heads should stop."""
        async with self._dispatch_lock:
            while True:
                ending = self.control.ending
                if ending >= Ending.STOP:
                    return None
                if self.heap and not self.control.paused:
                    _key, _seq, work = heapq.heappop(self.heap)
                    self.observer.queue_depth("queued", len(self.heap))
                    batch = self.batches[work.batch_id]
                    batch.waiting -= 1
                    batch.in_flight += 1
                    self.in_flight += 1
                    await self.reserve_blank(batch)
                    return work
                idle = not self.heap and self.in_flight == 0
                if idle and (not self.follow or ending is Ending.DRAIN):
                    return None
                poll = self.config.follow_poll_s if self.follow and idle else None
                if not await self.wait_change(poll):
                    await self.poll_new_work()

    async def reserve_blank(self, batch: _Batch) -> None:
        if not batch.opened:
            await self.open_batch(batch)
        if batch.free < 1:
            # Rework (or work queued after the batch opened) needs one more blank from the vault.
            await self.issue(batch, batch.waiting + 1)
        batch.free -= 1

    async def open_batch(self, batch: _Batch) -> None:
        """First card of a batch in this run: take stock, issue what its queue needs, samples."""
        batch_id = batch.report.batch_id
        stock = await self.db(self.store.stock, batch_id)
        counts = await self.db(self.store.count_by_state, batch_id=batch_id)
        batch.free = stock.on_line - sum(counts.get(s, 0) for s in STATION_STATES)
        batch.issued = stock.issued
        samples = 0
        if self.config.samples_per_batch:
            blanks = await self.db(self.store.blanks, batch_id)
            taken = sum(1 for b in blanks if b.state is BlankState.SAMPLE)
            samples = max(0, self.config.samples_per_batch - taken)
        needed = batch.waiting + 1 + samples
        if needed > batch.free:
            await self.issue(batch, needed - batch.free)
        for _ in range(samples):
            # Keyed by the batch's accounted count, like returns: a replay neither repeats nor skips.
            stock = await self.db(self.store.stock, batch_id)
            await self.db(
                self.store.record_blank,
                batch_id,
                BlankState.SAMPLE,
                reason="QA sample",
                idempotency_key=f"line/sample/{batch_id}/{stock.accounted}",
                actor=self.actor,
            )
            batch.free -= 1
            self.observer.stock("sample")
        batch.opened = True

    async def issue(self, batch: _Batch, count: int) -> None:
        # Keyed by the issued count before: if this commit happened before a crash, the next run
        # reads the higher count, finds the blanks free on the line and issues nothing.
        batch_id = batch.report.batch_id
        stock = await self.db(
            self.store.issue_blanks,
            batch_id,
            count,
            idempotency_key=f"line/issue/{batch_id}/{batch.issued}",
            actor=self.actor,
        )
        batch.issued = stock.issued
        batch.free += count
        self.observer.stock("issued", count)

    async def finish(
        self, card: _Card | None, work: _Work | None = None, *, requeued: bool = False
    ) -> None:
        """A card left the line (passed, held, or re-queued), or a work item could not start."""
        item = card.work if card is not None else work
        assert item is not None
        if card is not None:
            card.finished = True
        batch = self.batches[item.batch_id]
        batch.in_flight -= 1
        self.in_flight -= 1
        if not requeued:
            self.active.discard(item.application_id)
        self.wake()
        self.tell_progress()
        if batch.waiting == 0 and batch.in_flight == 0 and not batch.complete:
            await self.complete_batch(batch)

    async def complete_batch(self, batch: _Batch) -> None:
        """Nothing left of the batch in this run: leftover blanks back to the vault, tray out."""
        batch_id = batch.report.batch_id
        has_work = await self.db(self._batch_has_queued, batch_id)
        if has_work:
            return  # not started in this run (skipped): the batch is not finished
        batch.complete = True
        batch.report.complete = True
        returned = await self.db(return_unused_blanks, self.store, batch_id, actor=self.actor)
        if returned:
            self.observer.stock("returned", returned)
        batch.report.tray = await self.db(self._tray, batch_id)
        if self.config.output.trays:
            await self.compute(self._write_tray, batch.report)

    def _tray(self, batch_id: str) -> list[str]:
        """The batch's good cards (of every run, not just this one) in delivery order."""
        approved = {
            r.application_id: r.approved_at for r in self.store.list_applications(batch_id=batch_id)
        }
        good = [
            (approved.get(b.application_id), b.application_id, b.serial)
            for b in self.store.blanks(batch_id)
            if b.state is BlankState.GOOD and b.application_id is not None and b.serial
        ]
        # Within a tray, the scheduler's order: approval, then application id.
        good.sort(key=lambda g: (g[0] or datetime.min.replace(tzinfo=UTC), g[1]))
        return ["C" + serial for _at, _app, serial in good]

    def _batch_has_queued(self, batch_id: str) -> bool:
        return bool(self.store.count_by_state(batch_id=batch_id).get(State.QUEUED, 0))

    def _write_tray(self, batch: BatchReport) -> None:
        trays = self.out_dir / "trays"
        trays.mkdir(parents=True, exist_ok=True)
        data = {
            "batch_id": batch.batch_id,
            "office": batch.office,
            "due_date": batch.due_date,
            "cards": batch.tray,  # delivery order: approval date, then application id
        }
        write_json(trays / f"{batch.batch_id}.json", data)

    async def load_work(self) -> None:
        """Every QUEUED application of the chosen batches, in line order."""
        records = await self.db(self.store.list_applications, state=State.QUEUED)
        wanted = None if self.batch_ids is None else set(self.batch_ids)
        if wanted is not None:
            for batch_id in wanted:
                await self.db(self.store.get_batch, batch_id)  # NotFoundError for a bad id
        for record in records:
            if record.application_id in self.active or record.application_id in self.skipped:
                continue
            if record.batch_id is None or (wanted is not None and record.batch_id not in wanted):
                continue
            batch = self.batches.get(record.batch_id)
            if batch is None:
                b = await self.db(self.store.get_batch, record.batch_id)
                batch = _Batch(
                    BatchReport(b.batch_id, b.office, b.due_date.isoformat()), b.due_date
                )
                self.batches[b.batch_id] = batch
            batch.report.requested += 1
            self.report.cards_requested += 1
            key = _order_key(record, batch.due_date, batch.report.office, rework=False)
            self.push(_Work(record.application_id, record.batch_id, record.attempts, key))

    async def poll_new_work(self) -> None:
        if self.control.ending is Ending.NONE:
            await self.load_work()

    # -- stations --------------------------------------------------------------------------------

    def build_heads(self) -> None:
        heads = self.config.heads
        if isinstance(heads, InProcessHeads):
            for i in range(heads.count):
                name = f"head-{i}"
                device = InProcessHead(name, self.keystore, self.rng)
                self.heads.append(_HeadSlot(device, self._compute, StationReport(name, "encoder")))
            return
        # Imported here: pyscard is an optional dependency that only PC/SC lines need.
        from chip.transport.pcsc import list_readers  # noqa: PLC0415

        names = list_readers(heads.reader)[: heads.count]
        if not names:
            raise ReaderGoneError(f"no PC/SC reader name contains {heads.reader!r}", reader=None)
        for name in names:
            executor = self._executor(1, "line-pcsc")
            reader = PcscHead(name, timeout_s=heads.timeout_s, extended_reads=heads.extended_reads)
            self.heads.append(_HeadSlot(reader, executor, StationReport(name, "encoder")))

    async def open_printers(self) -> None:
        cfg = self.config.printers
        for i in range(cfg.count):
            report = StationReport(f"printer-{i}", "printer")

            def listener(
                old: StationState, event: StationEvent, new: StationState, r: StationReport = report
            ) -> None:
                if (new is StationState.BUSY) != (old is StationState.BUSY):
                    self.busy(r, new is StationState.BUSY)

            station = PrintStation(
                report.name,
                cfg.service_s,
                clock=self._clock,
                faults=self.faults,
                queue_limit=1,  # the line's own bounded queue is the buffer in front of it
                on_transition=listener,
            )
            await station.open()
            self.printers.append(_PrinterSlot(station, report))

    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = load_layout(self.config.printers.layout)
        return self._layout

    # -- one card, stage by stage ----------------------------------------------------------------

    async def head_worker(self, head: _HeadSlot) -> None:
        while head.report.in_service:
            work = await self.next_work()
            if work is None:
                return
            card: _Card | None = None
            try:
                card = await self.start(head, work)
                if card is not None:
                    await self.encode(head, card)
            except StoreError:
                raise
            except Exception as exc:
                if card is None:
                    raise
                await self.fail(card, exc, head.name)

    async def start(self, head: _HeadSlot, work: _Work) -> _Card | None:
        """Decrypt the application and build what goes on the chip, then take the blank."""
        assert self._signer is not None
        try:
            app = await self.db(self.store.load_application, work.application_id)
            plan = await self.compute(prepare, app, self._signer)
        except (PersoError, ChipError, ValueError) as exc:
            # Nothing was taken: the application stays QUEUED for an operator to look at.
            self.report.cards_not_started.append(work.application_id)
            self.report.errors.append(f"{work.application_id}: cannot start: {describe(exc)}")
            self.skipped.add(work.application_id)
            batch = self.batches[work.batch_id]
            batch.free += 1
            await self.finish(None, work)
            return None
        missing = await self.on_head(head, head.device.load)
        if missing is not None:
            # No blank was taken, so there is nothing to spoil and the attempt does not count:
            # the application goes back to the queue as it was (personaliser.heads' rule).
            self.report.errors.append(f"{head.name}: no blank taken: {missing.detail}")
            self.head_failed(head, missing)
            self.batches[work.batch_id].free += 1
            self.push(work)
            await self.finish(None, work, requeued=True)
            return None
        card = _Card(work, head, work.attempts + 1, app, plan)
        await self.move(card, State.ENCODING, station=head.name)
        return card

    async def encode(self, head: _HeadSlot, card: _Card) -> None:
        assert card.plan is not None
        card.in_head = True
        self.busy(head.report, True)
        started = self.clock()
        head.report.cards += 1
        try:
            fault = self.faults.encoder()
            outcome: EncodeOutcome = await self.on_head(
                head, head.device.encode, card.plan, self.keystore, self.rng, fault
            )
            await self.device_time(started, self.encode_s)
            self.timing("encode", self.clock() - started)
            card.serial = outcome.serial
            if not outcome.ok:
                await self.spoil(card, outcome.code, outcome.detail, head.name)
                self.head_failed(head, outcome)
                return
            head.consecutive_failures = 0
            assert outcome.serial is not None
            await self.move(card, State.ENCODED, station=head.name, blank_serial=outcome.serial)
            card.serial_recorded = True
            card.card_id = card_id_for(bytes.fromhex(outcome.serial))
            if self.config.printers.render == "always":
                assert card.app is not None
                p = self.config.printers
                card.job = asyncio.ensure_future(
                    self.compute(
                        render_job,
                        card.app,
                        outcome.serial,
                        self.layout(),
                        dpi=p.dpi,
                        dither=p.dither,
                    )
                )
                card.job.add_done_callback(_consume)
            if self.config.qa.mode == "separate":
                await self.release_head(card)  # the card moves on; the chip travels with it
                await self.put(self.to_print, "to_print", card)
            else:
                await self.put(self.to_print, "to_print", card)
                await card.released.wait()  # read back on this head after printing
        finally:
            self.busy(head.report, False)

    @property
    def encode_s(self) -> float:
        heads = self.config.heads
        return heads.encode_s if isinstance(heads, InProcessHeads) else 0.0

    def head_failed(self, head: _HeadSlot, outcome: EncodeOutcome) -> None:
        head.consecutive_failures += 1
        head.report.faults += 1
        if outcome.reader_gone:
            reason = f"reader gone: {outcome.detail}"
        elif head.consecutive_failures >= self.config.max_consecutive_failures:
            reason = f"{head.consecutive_failures} failures in a row; last: {outcome.code}"
        else:
            return
        head.report.in_service = False
        head.report.out_of_service_reason = reason
        self.report.errors.append(f"{head.name} out of service: {reason}")

    async def print_worker(self, slot: _PrinterSlot) -> None:
        while (card := await self.get(self.to_print, "to_print")) is not None:
            try:
                await self.print_card(slot, card)
            except StoreError:
                raise
            except Exception as exc:
                await self.fail(card, exc, slot.name)

    async def print_card(self, slot: _PrinterSlot, card: _Card) -> None:
        assert card.card_id is not None
        await self.move(card, State.PRINTING, station=slot.name)
        try:
            job = await card.job if card.job is not None else PrintJob(card.card_id)
        except (PrinterError, ValueError) as exc:
            await self.spoil(card, "render_error", describe(exc), slot.name)
            return
        card.job = None
        slot.report.cards += 1
        try:
            result = await slot.station.submit(job)
        except DeviceFault as fault:
            slot.report.faults += 1
            await self.spoil(card, f"print_{fault_kind(fault).value}", describe(fault), slot.name)
            await self.service_printer(slot)
            return
        self.timing("print", result.service_s)
        if result.outcome is not JobOutcome.PRINTED:
            await self.spoil(card, "print_cancelled", result.outcome.value, slot.name)
            return
        await self.move(card, State.PRINTED, station=slot.name)
        await self.put(self.to_verify, "to_verify", card)

    async def service_printer(self, slot: _PrinterSlot) -> None:
        """Bring a faulted station back: re-home it, or (simulated) let an operator clear it."""
        station = slot.station
        while station.state in (StationState.FAULTED, StationState.NEEDS_ATTENTION):
            if station.state is StationState.NEEDS_ATTENTION:
                await asyncio.sleep(self.config.printers.operator_s)
                driver = station.driver
                if isinstance(driver, SimulatedDriver):
                    driver.clear_jam()
                    driver.repair_laser()
            with contextlib.suppress(DeviceFault):
                await station.reset()

    async def qa_worker(self, report: StationReport | None) -> None:
        while (card := await self.get(self.to_verify, "to_verify")) is not None:
            name = report.name if report is not None else card.head.name
            try:
                await self.verify(report, name, card)
            except StoreError:
                raise
            except Exception as exc:
                await self.fail(card, exc, name)

    async def verify(self, report: StationReport | None, name: str, card: _Card) -> None:
        assert card.plan is not None and card.card_id is not None and card.serial is not None
        await self.move(card, State.VERIFYING, station=name)
        if report is not None:
            self.busy(report, True)
            report.cards += 1
        started = self.clock()
        check = ReadbackCheck(
            self._anchors,
            self.rng,
            expected_dg1(card.plan, corrupt=self.faults.verify_mismatch()),
            self._extended_reads,
        )
        failure: tuple[str, str] | None = None
        try:
            try:
                if card.in_head:
                    head = card.head
                    verdict = await self.on_head(head, head.device.readback, card.plan, check)
                else:
                    assert card.chip is not None
                    verdict = await self.compute(readback_chip, card.chip, card.plan, check)
            except ChipError as exc:  # the reader or the card failed under the readback
                failure = ("verify_failed", describe(exc))
            else:
                if not verdict.passed:
                    mismatch = any("DG1 differs" in r for r in verdict.reasons)
                    code = "verify_mismatch" if mismatch else "verify_failed"
                    failure = (code, "; ".join(verdict.reasons))
            await self.device_time(started, self.config.qa.service_s)
            self.timing("verify", self.clock() - started)
            await self.release_head(card)
        finally:
            if report is not None:
                self.busy(report, False)
        if failure is not None:
            await self.spoil(card, *failure, name)
            return
        batch = self.batches[card.work.batch_id]
        output = self.config.output
        proof = None
        if not batch.proofs or sampled(card.card_id, output.proof_sample_rate):
            assert card.app is not None
            proof = (card.app, card.serial, self.layout())
            batch.proofs = True
        staged = await self.compute(
            stage_card,
            self.staging,
            card.card_id,
            files=verdict.readout.files if output.chip_files else {},
            chip=card.chip if output.chip_image else None,
            proof=proof,
        )
        card.app = card.plan = card.chip = None
        await self.move(card, State.PASSED, station=name)
        self.passed += 1
        now = self.clock() - self._t0
        if self.report.first_out_s is None:
            self.report.first_out_s = now
        self.report.last_out_s = now
        try:
            await self.compute(publish_card, staged, self.out_dir)
        except OSError as exc:  # the card is made and bound; only its copy on disk is missing
            self.report.errors.append(f"{card.card_id}: outputs not published: {describe(exc)}")
        self.observer.stock("good")
        batch.report.passed += 1
        await self.finish(card)

    # -- the run ---------------------------------------------------------------------------------

    async def supervise(
        self, workers: list[asyncio.Task[None]], queue: asyncio.Queue[_Card | None], n: int
    ) -> None:
        """When one stage's workers are done, tell the next stage's workers to finish."""
        await asyncio.gather(*workers, return_exceptions=True)
        for _ in range(n):
            await queue.put(None)

    def abort_now(self) -> None:
        if self.control.ending is Ending.ABORT:
            for task in self._tasks:
                task.cancel()

    async def run(self) -> LineReport:
        loop = asyncio.get_running_loop()

        def changed() -> None:
            loop.call_soon_threadsafe(self._on_control)

        unsubscribe = self.control.subscribe(changed)
        cpu0 = time.process_time()
        try:
            with _LineLock(self.store):
                try:
                    await self._run()
                except BaseExceptionGroup as group:
                    raise group.exceptions[0] from None
        except BaseException:
            await self._close(failed=True)
            raise
        finally:
            unsubscribe()
        await self._close(failed=False)
        self.report.cpu_seconds = time.process_time() - cpu0
        return self.report

    def _on_control(self) -> None:
        self.wake()
        self.abort_now()
        self.tell_progress()

    async def _run(self) -> None:
        self._t0 = self.clock()
        (self.out_dir / "cards").mkdir(parents=True, exist_ok=True)
        self.report.recovery = await self._recover()
        await self.db(self._settle_staging)
        for batch_id in self.report.recovery.returned:  # finished by recovery: the tray is due
            batch = await self.db(self.store.get_batch, batch_id)
            tray = BatchReport(batch_id, batch.office, batch.due_date.isoformat(), complete=True)
            tray.tray = await self.db(self._tray, batch_id)
            if self.config.output.trays:
                await self.compute(self._write_tray, tray)
        self._signer = self.keystore.document_signer()
        if self.config.printers.render == "always":
            self.layout()
            await self.compute(warm_up)  # numba kernels loaded before the first card
        await self.load_work()
        self.build_heads()
        await self.open_printers()
        if self.config.qa.mode == "separate":
            self.qa = [StationReport(f"qa-{i}", "qa") for i in range(self.config.qa.count)]
        reports = [h.report for h in self.heads] + [p.report for p in self.printers] + self.qa
        self.report.stations = {r.name: r for r in reports}
        n_heads = len(self.heads) if isinstance(self.config.heads, PcscHeads) else None
        self.report.bottleneck = self.config.bottleneck(n_heads)
        self._t0 = self.clock()
        self.tell_progress()
        async with asyncio.TaskGroup() as group:
            heads = [group.create_task(self.head_worker(h)) for h in self.heads]
            printers = [group.create_task(self.print_worker(p)) for p in self.printers]
            qa_reports: list[StationReport | None] = list(self.qa) or [None] * len(self.heads)
            checkers = [group.create_task(self.qa_worker(r)) for r in qa_reports]
            self._tasks = [*heads, *printers, *checkers]
            self._tasks.append(
                group.create_task(self.supervise(heads, self.to_print, len(printers)))
            )
            self._tasks.append(
                group.create_task(self.supervise(printers, self.to_verify, len(checkers)))
            )
            self.abort_now()
        self.report.seconds = self.clock() - self._t0
        if self.control.ending is Ending.ABORT:
            self.report.ended = "aborted"
        elif self.heap and not any(h.report.in_service for h in self.heads):
            self.report.ended = "no_heads"
        elif self.heap:
            self.report.ended = "stopped"
        elif self.control.ending is Ending.DRAIN:
            self.report.ended = "drained"

    def _settle_staging(self) -> None:
        """Outputs a crash left staged: publish those of cards that PASSED, drop the rest."""
        cards = self.staging / "cards"
        if cards.is_dir():
            for folder in cards.iterdir():
                try:
                    blank = self.store.get_blank(folder.name.removeprefix("C"))
                except NotFoundError:
                    continue
                if blank.state is BlankState.GOOD:
                    publish_card(folder, self.out_dir)
        shutil.rmtree(self.staging, ignore_errors=True)

    async def _recover(self) -> RecoveryReport:
        buffered = _Buffered()
        report = await self.db(
            recover,
            self.store,
            max_attempts=self.config.max_attempts,
            actor=self.actor,
            observer=buffered,
        )
        for call in buffered.calls:
            call(self.observer)
        return report

    async def _close(self, *, failed: bool) -> None:
        for slot in self.printers:
            await slot.station.close()
        for head in self.heads:
            with contextlib.suppress(Exception):
                await self.on_head(head, head.device.close)
        if failed:
            self._shutdown()
            return
        if self.control.ending is Ending.ABORT:
            # Cards stopped mid-station: spoil and re-queue them now, as a restart would.
            extra = await self._recover()
            self.report.recovery.spoiled.extend(extra.spoiled)
            self.report.recovery.requeued.extend(extra.requeued)
            self.report.cards_held.extend(extra.held)
            self.report.cards_left += len(extra.requeued)
        await self.db(self._settle_staging)
        for batch in self.batches.values():
            batch.report.stock = await self.db(self.store.stock, batch.report.batch_id)
        self.report.cards_passed = self.passed
        self.report.cards_spoiled = self.spoiled + len(self.report.recovery.spoiled)
        self.report.cards_left += len(self.heap)
        self.report.batches = {b.report.batch_id: b.report for b in self.batches.values()}
        self.report.queues = {
            "to_print": {"bound": self.config.queues.to_print, "max_depth": self._max_depth["to_print"]},
            "to_verify": {"bound": self.config.queues.to_verify, "max_depth": self._max_depth["to_verify"]},
        }  # fmt: skip
        self._shutdown()

    def _shutdown(self) -> None:
        for executor in self._own_executors:
            executor.shutdown(wait=True)


def _consume(future: asyncio.Future[Any]) -> None:
    # A render whose card was spoiled meanwhile has nobody left to read its result.
    if not future.cancelled():
        future.exception()


async def run_line(
    store: Store,
    keystore: Keystore,
    config: LineSettings | None = None,
    *,
    out_dir: str | Path,
    batch_ids: Sequence[str] | None = None,
    observer: LineObserver | None = None,
    control: LineControl | None = None,
    progress: Callable[[LineProgress], None] | None = None,
    rng: RandomSource = system_random,
    clock: Clock | None = None,
    follow: bool = False,
    actor: str = "line",
) -> LineReport:
    """Run the line over the QUEUED applications (of ``batch_ids``, or all) until done or stopped.

    Recovery (:func:`~personaliser.line.recovery.recover`) runs first.  Without ``follow`` the
    line stops when nothing is queued and nothing is in a station; with it, it also waits for
    newly queued work until drained or stopped through ``control``.  ``clock`` (monotonic seconds)
    defaults to the event loop's, which is virtual on a
    :class:`~personaliser.line.clock.VirtualTimeLoop`.  Outputs go to ``out_dir/cards/<card_id>/``
    and ``out_dir/trays/<batch_id>.json``.
    """
    line = _Line(
        store,
        keystore,
        config or LineSettings(),
        batch_ids=batch_ids,
        observer=observer or NullObserver(),
        out_dir=Path(out_dir),
        control=control or LineControl(),
        progress=progress,
        rng=rng,
        clock=clock,
        follow=follow,
        actor=actor,
    )
    return await line.run()
