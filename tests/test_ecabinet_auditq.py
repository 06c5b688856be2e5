"""ecabinet.auditq: one worker writes the queue in order, in batches (group commit)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ecabinet.audit import MAX_AHEAD, AuditBatch, AuditWriter, verify
from ecabinet.auditq import _STOP, AuditQueue
from ecabinet.errors import AuditError

KEY = bytes(range(7, 39))
WAIT = 10.0


def _clock() -> datetime:
    return datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@dataclass
class Gate:
    """Holds the worker inside its first fsync of the log until released; records each batch."""

    path: Path
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    log_fsyncs: int = 0
    fsyncs: int = 0
    batches: list[int] = field(default_factory=list)


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AuditQueue, Gate]]:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(path, key=KEY, clock=_clock, fsync=True)
    gate = Gate(path)
    real_fsync = os.fsync
    inode = path.stat().st_ino

    def fsync(fd: int) -> None:
        gate.fsyncs += 1
        if os.fstat(fd).st_ino == inode:
            gate.log_fsyncs += 1
            if gate.log_fsyncs == 1:
                gate.entered.set()
                gate.release.wait(WAIT)
        real_fsync(fd)

    real_many = writer.append_many

    def append_many(items: Sequence[tuple[str, str, Any]]) -> AuditBatch:
        gate.batches.append(len(items))
        return real_many(items)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(writer, "append_many", append_many)
    audit = AuditQueue(writer)
    audit.start()
    try:
        yield audit, gate
    finally:
        gate.release.set()
        audit.close()
        writer.close()


@pytest.mark.parametrize("n", [100, 2 * MAX_AHEAD + 88])
def test_a_backlog_is_written_in_few_batches(gated: tuple[AuditQueue, Gate], n: int) -> None:
    audit, gate = gated
    audit.append("controller", "controller.started", {"site": "S1"})
    assert gate.entered.wait(WAIT)  # the worker is in the fsync of its first batch
    for i in range(1, n):
        audit.append("controller", "command.sent", {"n": i})
    gate.release.set()
    audit.flush(WAIT)
    # All that was queued while the first batch was on its way goes in as few batches as
    # MAX_AHEAD allows, each with one fsync of the log (and two for its anchor).
    full, rest = divmod(n - 1, MAX_AHEAD)
    assert gate.batches == [1] + [MAX_AHEAD] * full + ([rest] if rest else [])
    assert gate.log_fsyncs == len(gate.batches)
    assert gate.fsyncs < n
    assert [r["payload"].get("n", 0) for r in _records(gate.path)] == list(range(n))
    verify(gate.path, key=KEY, anchored=True)


def test_refused_payloads_in_a_batch_are_counted_logged_and_skipped(
    gated: tuple[AuditQueue, Gate], caplog: pytest.LogCaptureFixture
) -> None:
    audit, gate = gated
    audit.append("controller", "controller.started", {"site": "S1"})
    assert gate.entered.wait(WAIT)
    audit.append("controller", "command.sent", {"n": 1})
    audit.append("controller", "card.sensed", {"name": "CHAN Tai Man"})
    audit.append("controller", "command.sent", {"n": 2})
    audit.append("controller", "slot.opened", {"note": "x" * 300})
    audit.append("controller", "command.sent", {"n": 3})
    with caplog.at_level(logging.ERROR, logger="ecabinet.auditq"):
        gate.release.set()
        audit.flush(WAIT)
    assert gate.batches == [1, 5]
    assert audit.rejected == 2 and audit.failure is None
    assert [r["kind"] for r in _records(gate.path)] == ["controller.started"] + ["command.sent"] * 3
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.getMessage() for r in refusals] == [
        "audit entry card.sensed refused by the writer",
        "audit entry slot.opened refused by the writer",
    ]
    assert "CHAN" not in caplog.text and "x" * 300 not in caplog.text
    verify(gate.path, key=KEY, anchored=True)


def test_close_writes_the_backlog_before_it(gated: tuple[AuditQueue, Gate]) -> None:
    audit, gate = gated
    audit.append("controller", "controller.started", {"site": "S1"})
    assert gate.entered.wait(WAIT)
    for i in range(1, 10):
        audit.append("controller", "command.sent", {"n": i})
    closing = threading.Thread(target=audit.close)
    closing.start()
    gate.release.set()
    closing.join(WAIT)
    assert not closing.is_alive()
    assert len(_records(gate.path)) == 10
    assert sum(gate.batches) == 10 and len(gate.batches) <= 2
    verify(gate.path, key=KEY, anchored=True)


def test_the_worker_takes_a_batch_up_to_the_stop_and_no_further(tmp_path: Path) -> None:
    with AuditWriter(tmp_path / "audit.jsonl", fsync=False) as writer:
        audit = AuditQueue(writer)  # not started: _take is driven by hand
        items = [("a", "k", {"n": i}) for i in range(3)]
        for item in [*items, _STOP, ("a", "k", {"n": 99})]:
            audit._queue.put(item)
        assert audit._take() == (items, True)
        assert audit._queue.get_nowait() == ("a", "k", {"n": 99})
        for i in range(MAX_AHEAD + 3):
            audit._queue.put(("a", "k", {"n": i}))
        batch, stop = audit._take()
        assert len(batch) == MAX_AHEAD and not stop
        assert audit._take() == (
            [("a", "k", {"n": i}) for i in range(MAX_AHEAD, MAX_AHEAD + 3)],
            False,
        )
        audit._queue.put(_STOP)
        assert audit._take() == ([], True)


def test_entries_from_many_threads_all_land_in_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    threads, each = 8, 60
    with AuditWriter(path, key=KEY, clock=_clock, fsync=True) as writer:
        audit = AuditQueue(writer)
        audit.start()
        start = threading.Barrier(threads)

        def produce(t: int) -> None:
            start.wait(WAIT)
            for i in range(each):
                audit.append(f"officer:O{t}", "cabinet.find", {"thread": t, "n": i})

        workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        audit.flush(WAIT)
        audit.close()
        assert audit.rejected == 0 and audit.failure is None
        assert writer.head.count == threads * each
    verify(path, key=KEY, anchored=True)
    records = _records(path)
    for t in range(threads):
        # The queue keeps each producer's order.
        mine = [r["payload"]["n"] for r in records if r["payload"]["thread"] == t]
        assert mine == list(range(each))


def test_a_failed_write_stops_the_worker_and_is_raised_to_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, clock=_clock, fsync=True) as writer:
        audit = AuditQueue(writer)
        audit.start()
        audit.append("controller", "controller.started", {"site": "S1"})
        audit.flush(WAIT)

        def full(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        for i in range(5):
            audit.append("controller", "command.sent", {"n": i})
        with pytest.raises(AuditError):
            audit.flush(WAIT)  # returns (does not hang) although the batch was not written
        assert isinstance(audit.failure, AuditError)
        with pytest.raises(AuditError):
            audit.append("controller", "command.sent", {"n": 9})
        audit.close()


def test_unstarted_queue_writes_in_the_callers_thread(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, clock=_clock, fsync=False) as writer:
        audit = AuditQueue(writer)
        audit.append("controller", "command.sent", {"n": 1})
        assert writer.head.count == 1
        audit.append("controller", "card.sensed", {"hkid": "A1234563"})
        assert audit.rejected == 1 and writer.head.count == 1
    verify(path, anchored=True)
