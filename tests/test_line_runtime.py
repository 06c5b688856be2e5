"""The line runtime (issue 5): cards through heads, printers and QA; faults spoiled and reworked;
stock reconciled per batch; pause, resume, drain, stop, abort; back-pressure; the line rate set by
the slowest station; and the configuration, the virtual clock and the public names it rests on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from chip.emulator import ChipImage, Lifecycle
from personaliser.applications import Application
from personaliser.keystore import FileKeystore
from personaliser.lifecycle import STATION_STATES, BlankState, State
from personaliser.line import (
    LineControl,
    LineProgress,
    LineReport,
    LineSettings,
    NullObserver,
    VirtualTimeLoop,
    load_line_config,
    run_line,
    run_virtual,
)
from personaliser.line.observer import LineObserver
from personaliser.store import PersonalDataCipher, SqliteStore
from personaliser.synth import synth_applications

OFFICE = "ROP-KT"
DUE = date(2026, 11, 13)

# -- helpers (shared with test_line_recovery) -----------------------------------------------------


@cache
def _bases() -> tuple[Application, ...]:
    return tuple(synth_applications(4, seed=11))


def clones(n: int, prefix: str, *, priority: str = "normal") -> list[Application]:
    """``n`` applications of one office (synthesis is slow; copying is not)."""
    bases = _bases()
    return [
        bases[i % len(bases)].model_copy(
            update={
                "application_id": f"{prefix}{i:03d}",
                "collection_office": OFFICE,
                "priority": priority,
            }
        )
        for i in range(n)
    ]


def open_store(path: Path, keystore: FileKeystore, **options: Any) -> SqliteStore:
    return SqliteStore(path, cipher=PersonalDataCipher(keystore.data_key()), **options)


def queue(store: SqliteStore, apps: list[Application], batch_id: str, due: date = DUE) -> None:
    """Import ``apps`` and queue them in a new batch (what ``perso batch start`` does)."""
    store.add_applications(apps, source="test")
    store.add_batch(batch_id, office=OFFICE, due_date=due)
    for app in apps:
        store.transition(
            app.application_id,
            State.QUEUED,
            idempotency_key=f"{app.application_id}:queue:{batch_id}",
            batch_id=batch_id,
        )


def settings(**changes: Any) -> LineSettings:
    """A quick in-process line: no face rendering unless asked (it costs ~30 ms a card)."""
    data: dict[str, Any] = {"printers": {"render": "never"}}
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = data.get(key, {}) | value
        else:
            data[key] = value
    return LineSettings.model_validate(data)


def _record_dispatch(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The order in which heads take applications and rework is pushed back, as it happens."""
    from personaliser.line import runtime

    seen: list[tuple[str, str]] = []
    push, next_work = runtime._Line.push, runtime._Line.next_work

    def recording_push(self: Any, work: Any) -> None:
        if work.attempts > 0:  # back after a spoiled attempt: rework
            seen.append(("rework", work.application_id))
        push(self, work)

    async def recording_next(self: Any) -> Any:
        work = await next_work(self)
        if work is not None:
            seen.append(("take", work.application_id))
        return work

    monkeypatch.setattr(runtime._Line, "push", recording_push)
    monkeypatch.setattr(runtime._Line, "next_work", recording_next)
    return seen


@dataclass
class Recorder(NullObserver):
    """Everything the runtime tells its observer, with the loop's time."""

    transitions: list[tuple[float, str, State, State]] = field(default_factory=list)
    busy: list[tuple[float, str, str, bool]] = field(default_factory=list)
    depths: dict[str, list[int]] = field(default_factory=dict)
    timings: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    stock_events: Counter[str] = field(default_factory=Counter)

    @staticmethod
    def _now() -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        self.transitions.append((self._now(), application_id, from_state, to_state))

    def station_busy(self, station: str, kind: str, busy: bool) -> None:
        self.busy.append((self._now(), station, kind, busy))

    def queue_depth(self, queue: str, depth: int) -> None:
        self.depths.setdefault(queue, []).append(depth)

    def timing(self, stage: str, seconds: float) -> None:
        self.timings[stage] += 1

    def reject(self, reason: str) -> None:
        self.rejects[reason] += 1

    def stock(self, event: str, count: int = 1) -> None:
        self.stock_events[event] += count

    def into(self, state: State) -> list[str]:
        return [app for _t, app, _f, to in self.transitions if to is state]


def check_invariants(store: SqliteStore, app_ids: list[str], out_dir: Path) -> None:
    """Every application made exactly once, every blank accounted for, outputs for good cards."""
    assert {r.application_id: r.state for r in store.list_applications()} == dict.fromkeys(
        app_ids, State.PASSED
    )
    good: list[str] = []
    for batch in store.list_batches():
        stock = store.stock(batch.batch_id)
        assert stock.balanced and stock.on_line == 0, stock
        blanks = store.blanks(batch.batch_id)
        assert sum(1 for b in blanks if b.state is BlankState.GOOD) == stock.good
        assert sum(1 for b in blanks if b.state is BlankState.SPOILED) == stock.spoiled
        good += [b.application_id for b in blanks if b.state is BlankState.GOOD]  # type: ignore[misc]
    assert sorted(good) == sorted(app_ids)  # one good card each, nothing made twice
    for app_id in app_ids:
        passes = [e for e in store.events(application_id=app_id) if e.to_state == "PASSED"]
        assert len(passes) == 1
        assert not [a for a in store.attempts(app_id) if a.ended_at is None]
    serials = {
        b.serial for batch in store.list_batches() for b in store.blanks(batch.batch_id)
        if b.state is BlankState.GOOD
    }  # fmt: skip
    assert {p.name for p in (out_dir / "cards").iterdir()} == {f"C{s}" for s in serials}
    assert not (out_dir / ".staging").exists()


def run(coro: Any) -> LineReport:
    result: LineReport = asyncio.run(coro)
    return result


@pytest.fixture
def store(tmp_path: Path, keystore: FileKeystore) -> Iterator[SqliteStore]:
    with open_store(tmp_path / "perso.db", keystore) as s:
        yield s


# -- the main job ------------------------------------------------------------------------------------


def test_forty_cards_pass_reconcile_and_leave_their_outputs(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    first, second = clones(24, "A"), clones(16, "B")
    queue(store, first, "KT-1")
    queue(store, second, "KT-2", DUE + timedelta(days=1))
    ids = [a.application_id for a in first + second]
    seen = Recorder()
    progress: list[LineProgress] = []
    out = tmp_path / "out"
    # The defaults otherwise: 4 in-process heads, one printer, one QA reader.
    cfg = LineSettings.model_validate(
        {"printers": {"render": "always"}, "output": {"proof_sample_rate": 0.1}}
    )
    report = run(
        run_line(store, keystore, cfg, out_dir=out, observer=seen, progress=progress.append)
    )
    data = report.as_dict()
    assert data["cards_requested"] == data["cards_passed"] == 40
    assert data["cards_spoiled"] == 0 and data["ended"] == "done"
    for key in ("stock", "throughput_cards_per_hour", "stations", "batches", "stage_mean_seconds"):
        assert key in data
    assert data["stock"] | {"balanced": True} == {
        "issued": 40, "good": 40, "spoiled": 0, "samples": 0, "returned": 0, "on_line": 0,
        "balanced": True,
    }  # fmt: skip
    assert {b["batch_id"]: b["stock"]["issued"] for b in data["batches"]} == {
        "KT-1": 24,
        "KT-2": 16,
    }
    assert set(data["stations"]) == {"head-0", "head-1", "head-2", "head-3", "printer-0", "qa-0"}
    assert sum(s["cards"] for n, s in data["stations"].items() if n.startswith("head")) == 40
    assert all(0 < s["utilisation"] <= 1 for s in data["stations"].values())
    # ~1,000 cards/hour leaves 3.6 s a card; the host needs a small fraction of that (about
    # 30 ms measured with rendering: chip crypto, store commits, faces, files).
    assert data["cpu_ms_per_card"] < 150
    check_invariants(store, ids, out)

    # Outputs: chip files as read back and the chip image for every card; proofs for a sample,
    # at least the first card of each batch; trays in delivery order.
    cards = sorted((out / "cards").iterdir())
    for card in cards:
        assert {"EF.COM", "DG1", "DG2", "EF.SOD", "chip.img"} <= {p.name for p in card.iterdir()}
    assert ChipImage.load(cards[0] / "chip.img").lifecycle is Lifecycle.SECURED
    proofs = [c for c in cards if (c / "front.png").is_file() and (c / "back.png").is_file()]
    assert len(proofs) >= 2
    for batch_id, apps in (("KT-1", first), ("KT-2", second)):
        tray = json.loads((out / "trays" / f"{batch_id}.json").read_text())
        bound = {b.serial: b.application_id for b in store.blanks(batch_id) if b.serial}
        delivery = sorted(apps, key=lambda a: (a.approved_at, a.application_id))
        assert [bound[c[1:]] for c in tray["cards"]] == [a.application_id for a in delivery]
        assert any(out / "cards" / c in proofs for c in tray["cards"])

    # The observer heard every transition; progress counted up to the end.
    assert Counter(seen.into(State.PASSED)) == Counter(ids)
    assert seen.stock_events == {"issued": 40, "good": 40}
    assert seen.timings == {"encode": 40, "print": 40, "verify": 40}
    assert progress[-1].passed == 40 and progress[-1].waiting == 0

    # No personal data in what the line reports.
    text = json.dumps(data)
    for app in first[:4]:
        assert app.surname not in text and app.hkid not in text and app.document_number not in text


def test_cards_start_in_line_order(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    """Priority class first, then due date (scheduler.batching's order), whatever the batch ids."""
    late_urgent = clones(3, "U", priority="urgent")
    early = clones(3, "E")
    late = clones(3, "L")
    queue(store, late, "A-late", DUE + timedelta(days=2))
    queue(store, early, "B-early", DUE)
    queue(store, late_urgent, "C-urgent", DUE + timedelta(days=5))
    seen = Recorder()
    cfg = settings(heads={"count": 2}, qa={"mode": "same-head"})
    run(run_line(store, keystore, cfg, out_dir=tmp_path, observer=seen))
    started = seen.into(State.ENCODING)
    assert started == [a.application_id for a in late_urgent + early + late]
    # Read back on the head, the in-process chip still reaches the output with its image.
    assert all((card / "chip.img").is_file() for card in (tmp_path / "cards").iterdir())


def test_injected_faults_spoil_rework_first_and_keep_stock_balanced(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = clones(20, "F")
    queue(store, apps, "KT-F")
    seen = Recorder()
    dispatch = _record_dispatch(monkeypatch)
    cfg = settings(
        printers={"operator_s": 30.0},
        faults={
            "encoder_write_error_on": [2],
            "encoder_mute_on": [4],
            "print_jam_on": [6],
            "print_laser_on": [8],
            "verify_mismatch_on": [10],
        },
    )
    report = run_virtual(run_line(store, keystore, cfg, out_dir=tmp_path, observer=seen))
    data = report.as_dict()
    assert data["cards_passed"] == 20 and data["cards_spoiled"] == 5
    assert data["rejects"] == {
        "encode_error": 1, "chip_mute": 1, "print_jam": 1, "print_laser": 1, "verify_mismatch": 1,
    }  # fmt: skip
    assert seen.rejects == data["rejects"]
    assert data["stock"]["issued"] == 25 and data["stock"]["spoiled"] == 5
    assert data["stock"]["balanced"] and data["stock"]["returned"] == 0
    check_invariants(store, [a.application_id for a in apps], tmp_path)

    spoils = store.spoil_log("KT-F")
    assert [((s.station or "")[:4], s.reason.split(":")[0]) for s in spoils] == [
        ("head", "encode_error"), ("head", "chip_mute"), ("prin", "print_jam"),
        ("prin", "print_laser"), ("qa-0", "verify_mismatch"),
    ]  # fmt: skip
    assert "SW=6581" in spoils[0].reason  # the chip's memory failure, by status word
    assert all(s.blank_serial for s in spoils)  # each chip had answered: its serial is logged
    # A spoiled blank is never reused: the rework took a new one, and the spoiled one stays spoiled.
    # Each spoil took one attempt; the application's last attempt passed (a rework can meet the
    # next injected fault too, by the order the stations happen to take the cards in).
    spoils_of = Counter(s.application_id for s in spoils)
    for s in spoils:
        assert store.get_blank(s.blank_serial or "").state is BlankState.SPOILED
        assert s.application_id is not None
        attempts = store.attempts(s.application_id)
        assert len(attempts) == spoils_of[s.application_id] + 1
        assert attempts[-1].outcome is State.PASSED
    # Rework first: after each re-queue the very next card a head takes is the reworked one
    # (taken, not committed: a card taken a moment earlier may share the rework's commit).
    for i, (what, app) in enumerate(dispatch):
        if what == "rework":
            assert next(a for w, a in dispatch[i + 1 :] if w == "take") == app
    assert sum(w == "rework" for w, _ in dispatch) == 5
    # The jammed printer waited for its (simulated) operator; the laser fault cleared on re-home.
    assert report.seconds >= 30.0
    assert data["stations"]["printer-0"]["faults"] == 2


def test_an_application_that_keeps_failing_is_held(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    apps = clones(5, "H")
    queue(store, apps, "KT-H")
    # The first card fails, goes first again and fails again: two station failures (one head, so
    # its second attempt is the line's second encode).
    cfg = settings(max_attempts=2, heads={"count": 1}, faults={"encoder_write_error_on": [1, 2]})
    seen = Recorder()
    report = run_virtual(run_line(store, keystore, cfg, out_dir=tmp_path, observer=seen))
    first = seen.into(State.ENCODING)[0]
    assert seen.into(State.ENCODING)[:2] == [first, first]
    assert report.cards_held == [first] and report.cards_passed == 4
    assert store.get(first).state is State.SPOILED
    stock = store.stock("KT-H")
    assert (stock.issued, stock.good, stock.spoiled, stock.returned) == (6, 4, 2, 0)
    assert stock.balanced
    assert report.as_dict()["batches"][0]["complete"]
    again = run_virtual(run_line(store, keystore, cfg, out_dir=tmp_path))
    assert again.cards_requested == 0 and again.recovery.held == [first]


def test_unloadable_personal_data_leaves_the_card_queued(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    apps = clones(4, "P")
    queue(store, apps, "KT-P")
    store.purge_personal_data("P002")
    report = run_virtual(run_line(store, keystore, settings(), out_dir=tmp_path))
    assert report.cards_passed == 3 and report.cards_not_started == ["P002"]
    assert store.get("P002").state is State.QUEUED
    assert any("PersonalDataError" in e for e in report.errors)
    stock = store.stock("KT-P")
    assert stock.on_line == 1  # its blank waits on the line for it; the batch is not finished
    assert not report.as_dict()["batches"][0]["complete"]


# -- control ------------------------------------------------------------------------------------------


def _slow_line() -> LineSettings:
    return settings(
        heads={"count": 2, "encode_s": 10.0},
        printers={"service_s": 2.0},
        qa={"service_s": 1.0},
    )


def test_pause_finishes_cards_in_progress_and_starts_none_until_resumed(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    apps = clones(10, "Z")
    queue(store, apps, "KT-Z")
    seen = Recorder()
    control = LineControl()
    moments: dict[str, float] = {}

    async def operator() -> None:
        loop = asyncio.get_running_loop()
        while len(seen.into(State.PASSED)) < 2:
            await asyncio.sleep(0.5)
        control.pause()
        moments["paused"] = loop.time()
        await asyncio.sleep(500)
        moments["resumed"] = loop.time()
        control.resume()

    async def main() -> LineReport:
        task = asyncio.create_task(operator())
        report = await run_line(store, keystore, _slow_line(), out_dir=tmp_path, observer=seen,
                                control=control)  # fmt: skip
        await task
        return report

    report = run_virtual(main())
    assert report.cards_passed == 10 and report.ended == "done"
    paused, resumed = moments["paused"], moments["resumed"]
    started = [t for t, _app, _f, to in seen.transitions if to is State.ENCODING]
    finished = [t for t, _app, _f, to in seen.transitions if to is State.PASSED]
    assert not [t for t in started if paused < t < resumed]  # nothing started while paused
    # The cards already in the stations were finished during the pause.
    in_pause = [t for t in finished if paused < t < resumed]
    assert in_pause and max(in_pause) < paused + 20
    assert report.seconds > 500


def test_drain_finishes_newly_queued_work_then_stops(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    first, later = clones(4, "D"), clones(3, "N")
    queue(store, first, "KT-D")
    control = LineControl()
    seen = Recorder()

    async def operator() -> None:
        while len(seen.into(State.PASSED)) < 2:
            await asyncio.sleep(0.5)
        queue(store, later, "KT-N")  # an operator starts another batch while the line runs
        await asyncio.sleep(100)  # a following line picks it up at its next poll
        control.drain()

    async def main() -> LineReport:
        task = asyncio.create_task(operator())
        report = await run_line(store, keystore, _slow_line(), out_dir=tmp_path, observer=seen,
                                control=control, follow=True)  # fmt: skip
        await task
        return report

    report = run_virtual(main())
    assert report.ended == "drained" and report.cards_passed == 7 and report.cards_requested == 7
    check_invariants(store, [a.application_id for a in first + later], tmp_path)


def test_stop_leaves_queued_work_and_its_blanks_for_the_next_run(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    apps = clones(12, "S")
    queue(store, apps, "KT-S")
    control = LineControl()

    def progress(p: LineProgress) -> None:
        if p.passed >= 3:
            control.stop()

    report = run_virtual(
        run_line(
            store, keystore, _slow_line(), out_dir=tmp_path, control=control, progress=progress
        )
    )
    assert report.ended == "stopped" and 3 <= report.cards_passed < 12
    assert report.cards_left == 12 - report.cards_passed
    counts = store.count_by_state(batch_id="KT-S")
    assert not any(counts.get(s) for s in STATION_STATES)  # the cards in progress were finished
    stock = store.stock("KT-S")
    assert stock.issued == 12 and stock.on_line == report.cards_left  # blanks wait on the line
    second = run_virtual(run_line(store, keystore, _slow_line(), out_dir=tmp_path))
    assert second.cards_passed == report.cards_left and second.ended == "done"
    assert store.stock("KT-S").issued == 12  # nothing issued twice
    check_invariants(store, [a.application_id for a in apps], tmp_path)


def test_stop_from_another_thread_and_abort(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    apps = clones(30, "T")
    queue(store, apps, "KT-T")
    # Host work on threads this time: the store on its own, chip crypto on two others.
    cfg = settings(
        heads={"count": 2, "encode_s": 0.02}, printers={"service_s": 0.01}, host_threads=2
    )
    control = LineControl()
    timers: list[threading.Timer] = []

    def stop_soon(p: LineProgress) -> None:
        if p.passed and not timers:  # an operator's thread stops the line a moment later
            timers.append(threading.Timer(0.05, control.stop))
            timers[0].start()

    first = run(run_line(store, keystore, cfg, out_dir=tmp_path, control=control,
                         progress=stop_soon))  # fmt: skip
    assert first.ended == "stopped" and 0 < first.cards_passed < 30

    aborting = LineControl()

    def progress(p: LineProgress) -> None:
        if p.passed >= 3:
            aborting.abort()

    second = run(run_line(store, keystore, cfg, out_dir=tmp_path, control=aborting,
                          progress=progress))  # fmt: skip
    assert second.ended == "aborted"
    counts = store.count_by_state(batch_id="KT-T")
    assert not any(counts.get(s) for s in STATION_STATES)  # aborted cards spoiled and re-queued
    assert second.recovery.spoiled and second.cards_spoiled == len(second.recovery.spoiled)
    assert store.stock("KT-T").spoiled == len(second.recovery.spoiled)
    third = run(run_line(store, keystore, cfg, out_dir=tmp_path))
    assert third.ended == "done"
    check_invariants(store, [a.application_id for a in apps], tmp_path)


def test_signals_stop_the_line(store: SqliteStore, keystore: FileKeystore, tmp_path: Path) -> None:
    apps = clones(20, "G")
    queue(store, apps, "KT-G")
    control = LineControl()

    async def main() -> LineReport:
        loop = asyncio.get_running_loop()
        remove = control.install_signal_handlers(loop)

        def operator(p: LineProgress) -> None:
            if p.passed and not armed:
                armed.append(True)
                for delay, sig in ((0.05, signal.SIGUSR1), (0.15, signal.SIGUSR2),
                                   (0.25, signal.SIGTERM)):  # fmt: skip
                    loop.call_later(delay, os.kill, os.getpid(), sig)

        try:
            cfg = settings(heads={"count": 1, "encode_s": 0.05})
            return await run_line(store, keystore, cfg, out_dir=tmp_path, control=control,
                                  progress=operator)  # fmt: skip
        finally:
            remove()

    states: list[str] = []
    armed: list[bool] = []
    control.subscribe(lambda: states.append(control.state.value))
    report = run(main())
    assert states[:3] == ["paused", "running", "stopping"]
    assert report.ended == "stopped" and 0 < report.cards_passed < 20
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_control_endings_only_escalate() -> None:
    control = LineControl()
    assert control.state.value == "running"
    control.pause()
    assert control.paused and control.state.value == "paused"
    control.drain()  # a drain resumes a paused line
    assert not control.paused and control.state.value == "draining"
    control.stop()
    control.drain()
    assert control.state.value == "stopping"
    control.abort()
    control.stop()
    assert control.state.value == "aborting"


# -- back-pressure and the line rate -----------------------------------------------------------------


def test_back_pressure_keeps_queues_bounded_and_the_slowest_station_busy(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    apps = clones(24, "Q")
    queue(store, apps, "KT-Q")
    seen = Recorder()
    cfg = settings(
        heads={"count": 4, "encode_s": 1.0},
        printers={"service_s": 5.0},
        qa={"service_s": 0.5},
        queues={"to_print": 3, "to_verify": 1},
    )
    report = run_virtual(run_line(store, keystore, cfg, out_dir=tmp_path, observer=seen))
    assert report.cards_passed == 24
    assert max(seen.depths["to_print"]) == 3  # filled to its bound, never beyond
    assert max(seen.depths["to_verify"]) <= 1
    assert report.as_dict()["queues"]["to_print"] == {"bound": 3, "max_depth": 3}
    stations = report.as_dict()["stations"]
    assert stations["printer-0"]["utilisation"] > 0.95  # the bottleneck never waits for work
    assert stations["qa-0"]["utilisation"] < 0.15
    # Heads are held by back-pressure (a finished card waits for room), far beyond their own work.
    for name in ("head-0", "head-1", "head-2", "head-3"):
        assert stations[name]["busy_s"] > 3 * stations[name]["cards"] * 1.0


@pytest.mark.parametrize(
    ("changes", "stage"),
    [
        # issue 5's reference line (16 heads x 12 s, 2 printers x 3.6 s, QA 1 s), fewer heads
        ({"heads": {"count": 8, "encode_s": 12.0}, "printers": {"count": 2, "service_s": 3.6},
          "qa": {"service_s": 1.0}}, "print"),
        ({"heads": {"count": 2, "encode_s": 12.0}, "printers": {"service_s": 3.0},
          "qa": {"service_s": 1.0}}, "encode"),
        # host work on threads takes no virtual time either
        ({"heads": {"count": 4, "encode_s": 1.0}, "printers": {"count": 3, "service_s": 1.0},
          "qa": {"service_s": 2.0}, "host_threads": 2}, "verify"),
        # same-head QA: a head holds its card through printing and readback
        ({"heads": {"count": 4, "encode_s": 6.0}, "printers": {"count": 2, "service_s": 2.0},
          "qa": {"mode": "same-head", "service_s": 1.0}}, "encode"),
    ],
)  # fmt: skip
def test_line_rate_is_the_bottleneck_capacity(
    store: SqliteStore,
    keystore: FileKeystore,
    tmp_path: Path,
    changes: dict[str, Any],
    stage: str,
) -> None:
    apps = clones(50, "R")
    queue(store, apps, "KT-R")
    cfg = settings(**changes, output={"chip_files": False, "chip_image": False})
    bottleneck, capacity = cfg.bottleneck()
    assert bottleneck == stage
    report = run_virtual(run_line(store, keystore, cfg, out_dir=tmp_path))
    assert report.cards_passed == 50
    # Once full, the line runs at the bottleneck's rate (within 5 %: two printers finish in
    # pairs, which the first-to-last measure slightly favours) ...
    assert report.line_rate_cards_per_hour == pytest.approx(capacity, rel=0.05)
    # ... and over the whole run, filling and emptying the line costs about one card's path.
    assert 0.85 * capacity <= report.throughput_cards_per_hour <= capacity * 1.0001
    assert report.as_dict()["bottleneck"] == {"stage": stage, "cards_per_hour": round(capacity, 1)}


# -- PC/SC heads ---------------------------------------------------------------------------------------


def test_a_pcsc_head_reads_back_on_its_own_reader(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path, reader_pool: Any
) -> None:
    from personaliser.serve import BlankFeeder

    apps = clones(3, "V")
    queue(store, apps, "KT-V")
    with reader_pool.lease(1) as (slot,):
        feeder = BlankFeeder(1, slot.port, keystore, tmp_path / "feeder")
        with feeder:
            # The full name of a test slot ("Perso VPCD A 00 00") matches that slot only.
            cfg = settings(heads={"kind": "pcsc", "reader": slot.reader}, qa={"mode": "same-head"})
            report = run(run_line(store, keystore, cfg, out_dir=tmp_path / "out"))
            assert feeder.wait_until(lambda: feeder.totals()["completed"] >= 3, 10)
        totals = feeder.totals()
    assert report.cards_passed == 3, report.as_dict()
    assert set(report.stations) == {slot.reader, "printer-0"}
    assert totals["completed"] == 3 and totals["spoiled"] == 0
    check_invariants(store, [a.application_id for a in apps], tmp_path / "out")
    # The serials the store bound are the chips the feeder finished and saved.
    serials = {b.serial for b in store.blanks("KT-V")}
    assert {p.stem for p in (tmp_path / "feeder").glob("*.img")} == serials


def test_an_empty_reader_spoils_nothing(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path, reader_pool: Any
) -> None:
    """A head whose feeder presents no card took no blank: nothing to spoil, the work waits."""
    queue(store, clones(2, "I"), "KT-I")
    with reader_pool.lease(1) as (slot,):
        cfg = settings(
            heads={"kind": "pcsc", "reader": slot.reader, "timeout_s": 0.2},
            qa={"mode": "same-head"},
            max_consecutive_failures=2,
        )
        report = run(run_line(store, keystore, cfg, out_dir=tmp_path))
    assert report.ended == "no_heads" and report.cards_spoiled == 0 and report.cards_left == 2
    assert report.stations[slot.reader].out_of_service_reason == (
        "2 failures in a row; last: no_card"
    )
    assert store.count_by_state(batch_id="KT-I") == {State.QUEUED: 2}
    assert store.spoil_log() == [] and store.attempts("I000") == []
    stock = store.stock("KT-I")
    assert stock.spoiled == 0 and stock.on_line == stock.issued == 2  # the blanks wait


# -- configuration, virtual time, names -------------------------------------------------------------


def test_line_toml(tmp_path: Path) -> None:
    assert load_line_config(None) == LineSettings()
    assert LineSettings().heads.kind == "inprocess" and LineSettings().qa.mode == "separate"
    path = tmp_path / "line.toml"
    path.write_text(
        "max_attempts = 5\n[heads]\ncount = 16\nencode_s = 12\n"
        "[printers]\ncount = 2\nservice_s = 3.6\n[qa]\nservice_s = 1\n"
        "[faults]\nprint_jam_on = [3]\n"
    )
    cfg = load_line_config(path)
    assert cfg.max_attempts == 5 and cfg.heads.kind == "inprocess" and cfg.heads.count == 16
    stage, rate = cfg.bottleneck()
    assert stage == "print" and rate == pytest.approx(2000.0)
    assert cfg.capacity_per_hour()["encode"] == pytest.approx(4800.0)
    assert LineSettings().bottleneck()[1] == float("inf")
    for text, needle in (
        ('[heads]\nkind = "pcsc"\nreader = "VPCD"\n', "same-head"),
        ("[printers]\ncolour = true\n", "printers.colour"),
        ("[queues]\nto_print = 0\n", "queues.to_print"),
        ("[faults]\nprint_jam_rate = 0.7\nprint_laser_rate = 0.7\n", "print fault rates"),
        ("max_attempts = [", "not valid TOML"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=needle):
            load_line_config(path)
    path.write_text('[heads]\nkind = "pcsc"\nreader = "VPCD"\n[qa]\nmode = "same-head"\n')
    assert load_line_config(path).heads.kind == "pcsc"
    with pytest.raises(ValueError, match="cannot read"):
        load_line_config(tmp_path / "missing.toml")


def test_virtual_time_jumps_timers_and_stands_still_for_host_work() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []

        async def device(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            seen.append((name, loop.time()))

        await asyncio.gather(device("chip", 12.0), device("printer", 3.6), device("qa", 3600.0))
        pending = asyncio.create_task(device("late", 5.0))
        before = loop.time()
        await asyncio.to_thread(time.sleep, 0.05)  # host work: the clock stands still
        seen.append(("host", loop.time() - before))
        await pending
        return seen

    started = time.perf_counter()
    seen = run_virtual(main())
    assert time.perf_counter() - started < 1.0
    assert seen == [
        ("printer", 3.6),
        ("chip", 12.0),
        ("qa", 3600.0),
        ("host", 0.0),
        ("late", 3605.0),
    ]
    loop = VirtualTimeLoop(start=100.0)
    assert loop.time() == 100.0
    loop.close()


def test_observers_and_public_names() -> None:
    import personaliser.line as package
    from personaliser.metrics import LineMetrics

    assert set(package.__all__) == {
        "RESTART_STATION", "BatchReport", "Ending", "LineControl", "LineObserver", "LineProgress",
        "LineReport", "LineSettings", "LineState", "NullObserver", "RecoveryReport",
        "StationReport", "VirtualTimeLoop", "load_line_config", "recover", "run_line",
        "run_virtual",
    }  # fmt: skip
    assert all(hasattr(package, name) for name in package.__all__)
    observers: list[LineObserver] = [NullObserver(), Recorder(), LineMetrics()]
    for observer in observers:
        observer.card_transition("A1", State.QUEUED, State.ENCODING)
        observer.stock("issued", 2)


def test_metrics_observe_a_run(store: SqliteStore, keystore: FileKeystore, tmp_path: Path) -> None:
    from personaliser.metrics import LineMetrics

    apps = clones(6, "M")
    queue(store, apps, "KT-M")
    metrics = LineMetrics()
    cfg = settings(faults={"print_jam_on": [2]}, printers={"operator_s": 1.0})
    run_virtual(run_line(store, keystore, cfg, out_dir=tmp_path, observer=metrics))
    get = metrics.registry.get_sample_value
    assert get("perso_cards_result_total", {"result": "passed"}) == 6
    assert get("perso_rejects_total", {"reason": "print_jam"}) == 1
    assert get("perso_stock_blanks_total", {"event": "issued"}) == 7
    assert get("perso_stage_seconds_count", {"stage": "encode"}) == 7


def test_a_failing_observer_does_not_spoil_cards(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    class Broken(NullObserver):
        def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
            raise RuntimeError("metrics bug")

    queue(store, clones(3, "O"), "KT-O")
    report = run_virtual(run_line(store, keystore, settings(), out_dir=tmp_path, observer=Broken()))
    assert report.cards_passed == 3 and report.cards_spoiled == 0
    assert report.errors == ["observer.card_transition failed: RuntimeError"]


def test_heads_that_keep_failing_leave_service(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    queue(store, clones(6, "J"), "KT-J")
    cfg = settings(
        heads={"count": 2},
        max_attempts=10,
        max_consecutive_failures=2,
        faults={"encoder_write_error_rate": 1.0},
    )
    report = run_virtual(run_line(store, keystore, cfg, out_dir=tmp_path))
    data = report.as_dict()
    assert data["ended"] == "no_heads" and data["cards_passed"] == 0
    assert data["cards_spoiled"] == 4 and data["cards_left"] == 6  # re-queued, waiting
    assert [s["in_service"] for n, s in data["stations"].items() if n.startswith("head")] == [
        False,
        False,
    ]
    assert all("2 failures in a row" in e for e in report.errors)
    stock = store.stock("KT-J")
    assert stock.spoiled == 4 and stock.on_line == stock.issued - 4
    assert store.count_by_state(batch_id="KT-J") == {State.QUEUED: 6}


def test_one_line_runtime_per_store(
    store: SqliteStore, keystore: FileKeystore, tmp_path: Path
) -> None:
    from personaliser.errors import StoreError

    queue(store, clones(2, "L"), "KT-L")
    control = LineControl()
    control.pause()

    async def main() -> LineReport:
        first = asyncio.create_task(
            run_line(store, keystore, settings(), out_dir=tmp_path, control=control)
        )
        await asyncio.sleep(0.2)
        # A second line would take the first one's cards in its stations for crash leftovers.
        with pytest.raises(StoreError, match="another line runtime"):
            await run_line(store, keystore, settings(), out_dir=tmp_path / "2")
        control.resume()
        return await first

    assert run(main()).cards_passed == 2
    assert run(run_line(store, keystore, settings(), out_dir=tmp_path)).cards_requested == 0
