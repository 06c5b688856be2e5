"""A pool of encoder heads: one per reader, working in parallel, sharing one queue of applications.

Each head takes the blank the feeder presents in its reader, personalises it over SCP03, resets it,
verifies it by readback (BAC, SM, passive authentication, DG1) and unpowers it so the feeder moves on.

Failure rules (DESIGN §3, "a device fault spoils one blank, which is accounted for and re-queued"):

- any failure after the head touched a blank spoils that blank: it is recorded in the spoil log with
  the reason, never reused, and the application goes back to the queue (at most ``max_attempts`` tries);
- a head that fails ``max_consecutive_failures`` times in a row, or whose reader is gone, is taken out
  of service; its work moves to the remaining heads;
- when no head is left in service, the remaining applications are reported as not done.

PC/SC calls block, so heads are threads; the protocols themselves stay sans-I/O flows.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chip.errors import ChipError, ReaderGoneError, TransportError
from chip.mrz import mrz_information
from chip.perso import SHORT_CHUNK, build_plan, personalise
from chip.random import RandomSource, system_random
from chip.transport.base import CountingTransport, run_flow
from chip.verify import Verdict, read_and_verify
from personaliser.applications import Application
from personaliser.chipstage import CardOutcome, card_id_for
from personaliser.keystore import Keystore

__all__ = ["HeadStats", "HeadTransport", "PoolReport", "Spoil", "run_head_pool"]


class HeadTransport(Protocol):
    """What a head needs from its reader (chip.transport.pcsc.PcscTransport provides it)."""

    name: str

    def connect(self) -> bytes: ...

    def reconnect(self, reset: bool = True) -> bytes: ...

    def transmit(self, apdu: bytes) -> bytes: ...

    def disconnect(self, eject: bool = False) -> None: ...


@dataclass(slots=True)
class HeadStats:
    reader: str
    cards: int = 0
    passed: int = 0
    spoiled: int = 0
    apdus: int = 0
    apdu_seconds: float = 0.0
    failures: int = 0
    consecutive_failures: int = 0
    in_service: bool = True
    out_of_service_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reader": self.reader,
            "cards": self.cards,
            "passed": self.passed,
            "spoiled": self.spoiled,
            "apdus": self.apdus,
            "mean_apdu_ms": round(1000 * self.apdu_seconds / self.apdus, 3) if self.apdus else None,
            "failures": self.failures,
            "in_service": self.in_service,
            "out_of_service_reason": self.out_of_service_reason,
        }


@dataclass(frozen=True, slots=True)
class Spoil:
    """A blank that was touched and cannot be used: where, which application, why."""

    reader: str
    application_id: str
    chip_serial: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "reader": self.reader,
            "application_id": self.application_id,
            "chip_serial": self.chip_serial,
            "reason": self.reason,
        }


@dataclass(slots=True)
class PoolReport:
    cards: list[CardOutcome] = field(default_factory=list)
    heads: list[HeadStats] = field(default_factory=list)
    spoiled: list[Spoil] = field(default_factory=list)
    not_done: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        passed = sum(1 for c in self.cards if c.passed)
        return {
            "cards_requested": len(self.cards) + len(self.not_done),
            "cards_passed": passed,
            "cards_failed": len(self.cards) - passed,
            "not_done": self.not_done,
            "stock": {
                "blanks_used": passed + len(self.spoiled),
                "good": passed,
                "spoiled": len(self.spoiled),
            },
            "seconds": round(self.seconds, 3),
            "throughput_cards_per_hour": (
                round(3600 * passed / self.seconds) if self.seconds > 0 else None
            ),
            "heads": [h.as_dict() for h in self.heads],
            "spoil_log": [s.as_dict() for s in self.spoiled],
            "cards": [c.as_dict() for c in self.cards],
        }


@dataclass(slots=True)
class _Work:
    app: Application
    attempts: int = 0


class _CardFailedError(Exception):
    """Internal: one card attempt failed; carries the reason and whether the blank was touched."""

    def __init__(
        self, reason: str, *, serial: bytes | None, touched: bool, reader_gone: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.serial = serial
        self.touched = touched
        self.reader_gone = reader_gone


def _describe(exc: BaseException) -> str:
    step = getattr(exc, "step", None)
    return f"{type(exc).__name__}{f' at {step}' if step else ''}: {exc}"


class _Pool:
    def __init__(
        self,
        apps: Sequence[Application],
        transports: Sequence[HeadTransport],
        keystore: Keystore,
        out: Path,
        *,
        rng: RandomSource,
        chunk_size: int,
        extended_reads: bool,
        max_attempts: int,
        max_consecutive_failures: int,
        on_card: Callable[[CardOutcome], None] | None,
    ) -> None:
        self.keystore = keystore
        self.out = out
        self.rng = rng
        self.chunk_size = chunk_size
        self.extended_reads = extended_reads
        self.max_attempts = max_attempts
        self.max_consecutive_failures = max_consecutive_failures
        self.on_card = on_card
        self.transports = transports
        self.report = PoolReport(heads=[HeadStats(t.name) for t in transports])
        self.work: queue.Queue[_Work] = queue.Queue()
        for app in apps:
            self.work.put(_Work(app))
        self.outstanding = len(apps)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.signer = keystore.document_signer()
        self.anchors = [keystore.csca_certificate()]

    # -- scheduling ---------------------------------------------------------------------------

    def _next(self, stats: HeadStats) -> _Work | None:
        """The next work item, or None when everything is done or this head left service."""
        with self.changed:
            while True:
                if not stats.in_service or self.outstanding == 0:
                    return None
                try:
                    return self.work.get_nowait()
                except queue.Empty:
                    # Work in flight on other heads may still fail and come back.
                    self.changed.wait(timeout=0.5)

    def _finish(self, item: _Work, outcome: CardOutcome | None, stats: HeadStats) -> None:
        with self.changed:
            if outcome is not None:
                self.report.cards.append(outcome)
                self.outstanding -= 1
            elif item.attempts >= self.max_attempts:
                self.report.not_done.append(item.app.application_id)
                self.outstanding -= 1
            else:
                self.work.put(item)
            self.changed.notify_all()

    def _give_back(self, item: _Work) -> None:
        with self.changed:
            self.work.put(item)
            self.changed.notify_all()

    # -- one card -----------------------------------------------------------------------------

    def _card(self, transport: HeadTransport, app: Application, stats: HeadStats) -> CardOutcome:
        start = time.perf_counter()
        plan = build_plan(app.to_holder(), self.signer)
        serial = bytearray()

        def keys_for(kdd: bytes) -> Any:
            serial[:] = kdd
            return self.keystore.scp03_keys_for(kdd)

        counting = CountingTransport(transport)
        try:
            transport.connect()
        except ReaderGoneError as exc:
            raise _CardFailedError(
                _describe(exc), serial=None, touched=False, reader_gone=True
            ) from exc
        except TransportError as exc:
            raise _CardFailedError(_describe(exc), serial=None, touched=False) from exc
        try:
            result = run_flow(
                personalise(plan, keys_for, rng=self.rng, chunk_size=self.chunk_size), counting
            )
            perso_apdus = counting.stats.apdus
            transport.reconnect(reset=True)  # the card moves on to readback: volatile state lost
            m = plan.mrz
            verdict: Verdict = run_flow(
                read_and_verify(
                    mrz_information(m.document_number, m.date_of_birth, m.date_of_expiry),
                    self.rng,
                    trust_anchors=self.anchors,
                    expected_dg1=plan.file("DG1"),
                    extended=self.extended_reads,
                ),
                counting,
            )
        except ReaderGoneError as exc:
            raise _CardFailedError(
                _describe(exc), serial=bytes(serial) or None, touched=True, reader_gone=True
            ) from exc
        except ChipError as exc:
            self._release(transport)
            raise _CardFailedError(
                _describe(exc), serial=bytes(serial) or None, touched=True
            ) from exc
        finally:
            with self.lock:
                stats.apdus += counting.stats.apdus
                stats.apdu_seconds += counting.stats.seconds
        self._release(transport)
        if not verdict.passed:
            raise _CardFailedError("; ".join(verdict.reasons), serial=bytes(serial), touched=True)
        outcome = CardOutcome(
            application_id=app.application_id,
            card_id=card_id_for(bytes(serial)),
            chip_serial=bytes(serial).hex().upper(),
            passed=True,
            reasons=[],
            perso_apdus=perso_apdus,
            verify_apdus=counting.stats.apdus - perso_apdus,
            bytes_written=result.bytes_written,
            seconds=time.perf_counter() - start,
            reader=stats.reader,
        )
        card_dir = self.out / "cards" / outcome.card_id
        card_dir.mkdir(parents=True, exist_ok=True)
        for name, data in verdict.readout.files.items():
            (card_dir / name).write_bytes(data)
        return outcome

    @staticmethod
    def _release(transport: HeadTransport) -> None:
        """Unpower the card so the feeder takes it away; a reader that is gone has nothing to release."""
        with contextlib.suppress(TransportError):
            transport.disconnect(eject=True)

    # -- one head -----------------------------------------------------------------------------

    def head(self, index: int) -> None:
        transport = self.transports[index]
        stats = self.report.heads[index]
        while (item := self._next(stats)) is not None:
            item.attempts += 1
            try:
                outcome = self._card(transport, item.app, stats)
            except _CardFailedError as failed:
                self._failed(item, failed, stats)
                continue
            except Exception as exc:  # a head must not die silently: account for the blank
                unexpected = _CardFailedError(_describe(exc), serial=None, touched=True)
                self._failed(item, unexpected, stats)
                continue
            with self.lock:
                stats.cards += 1
                stats.passed += 1
                stats.consecutive_failures = 0
            self._finish(item, outcome, stats)
            if self.on_card is not None:
                self.on_card(outcome)

    def _failed(self, item: _Work, failed: _CardFailedError, stats: HeadStats) -> None:
        with self.lock:
            stats.failures += 1
            stats.consecutive_failures += 1
            touched = failed.touched
            if touched:
                stats.cards += 1
                stats.spoiled += 1
                self.report.spoiled.append(
                    Spoil(
                        stats.reader,
                        item.app.application_id,
                        failed.serial.hex().upper() if failed.serial else None,
                        failed.reason,
                    )
                )
            if failed.reader_gone:
                stats.in_service = False
                stats.out_of_service_reason = f"reader gone: {failed.reason}"
            elif stats.consecutive_failures >= self.max_consecutive_failures:
                stats.in_service = False
                stats.out_of_service_reason = (
                    f"{stats.consecutive_failures} consecutive failures; last: {failed.reason}"
                )
        if not touched:
            item.attempts -= 1  # no blank was used: the attempt does not count
            self._give_back(item)
        else:
            self._finish(item, None, stats)

    def run(self) -> PoolReport:
        start = time.perf_counter()
        threads = [
            threading.Thread(target=self.head, args=(i,), name=f"head-{i}", daemon=True)
            for i in range(len(self.transports))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.lock:
            while True:
                try:
                    self.report.not_done.append(self.work.get_nowait().app.application_id)
                except queue.Empty:
                    break
        self.report.seconds = time.perf_counter() - start
        return self.report


def run_head_pool(
    apps: Sequence[Application],
    transports: Sequence[HeadTransport],
    keystore: Keystore,
    out: Path,
    *,
    rng: RandomSource = system_random,
    chunk_size: int = SHORT_CHUNK,
    extended_reads: bool = False,
    max_attempts: int = 3,
    max_consecutive_failures: int = 3,
    on_card: Callable[[CardOutcome], None] | None = None,
) -> PoolReport:
    """Personalise and verify ``apps`` on one head per transport; every card accounted for."""
    if not transports:
        raise ValueError("no encoder heads")
    out.mkdir(parents=True, exist_ok=True)
    pool = _Pool(
        apps,
        transports,
        keystore,
        out,
        rng=rng,
        chunk_size=chunk_size,
        extended_reads=extended_reads,
        max_attempts=max_attempts,
        max_consecutive_failures=max_consecutive_failures,
        on_card=on_card,
    )
    return pool.run()
