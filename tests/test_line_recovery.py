"""Crash recovery of the line (issue 5): kill it anywhere, restart it, and nothing is lost, nothing
is made or issued twice, every spoiled blank is a card the kill caught in a station, and the stock
of every batch reconciles.

Kills are real: a forked child runs the line and dies by ``os._exit`` right after a chosen commit,
inside a transaction (the store's fault hook), or by SIGKILL at random moments."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from personaliser.faces import proof_faces
from personaliser.keystore import FileKeystore
from personaliser.lifecycle import STATION_STATES, BlankState, State
from personaliser.line import RESTART_STATION, LineSettings, NullObserver, recover, run_line
from personaliser.line.recovery import return_unused_blanks, station_failures
from personaliser.store import SqliteStore
from printer.layout import load_layout
from printer.render import render_card
from tests.test_line_runtime import (
    check_invariants,
    clones,
    open_store,
    queue,
    settings,
)

KILLED = 86


@pytest.fixture
def store(tmp_path: Path, keystore: FileKeystore) -> Iterator[SqliteStore]:
    with open_store(tmp_path / "perso.db", keystore) as s:
        yield s


def move(store: SqliteStore, app_id: str, *path: State, serial: str | None = None) -> None:
    """Drive one application along ``path`` as a line would (ids keyed by attempt and state)."""
    for to in path:
        attempt = store.get(app_id).attempts + (to is State.ENCODING)
        fields: dict[str, str] = {"station": "head-1"}
        if to is State.ENCODED and serial is not None:
            fields["blank_serial"] = serial
        if to is State.SPOILED:
            fields["reason"] = "encode_error: test"
        if to is State.QUEUED:
            fields = {"batch_id": store.get(app_id).batch_id or ""}
        store.transition(app_id, to, idempotency_key=f"t/{app_id}/{attempt}/{to}", **fields)


# -- recover() on states made by hand ------------------------------------------------------------------


def test_recover_spoils_cards_in_stations_requeues_and_holds(store: SqliteStore) -> None:
    apps = clones(8, "R")
    queue(store, apps, "KT-R")
    store.issue_blanks("KT-R", 10, idempotency_key="vault-1")
    E, D, P, PD, V = State.ENCODING, State.ENCODED, State.PRINTING, State.PRINTED, State.VERIFYING
    move(store, "R000", E)
    move(store, "R001", E, D, serial="S1")
    move(store, "R002", E, D, P, serial="S2")
    move(store, "R003", E, D, P, PD, serial="S3")
    move(store, "R004", E, D, P, PD, V, serial="S4")
    move(store, "R005", E, State.SPOILED)  # died between the spoil and the re-queue
    move(store, "R006", E, State.SPOILED, State.QUEUED, E, State.SPOILED)  # two station failures
    seen = []

    class Observer(NullObserver):
        def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
            seen.append((application_id, from_state, to_state))

    report = recover(store, max_attempts=2, observer=Observer())
    assert report.spoiled == [("R000", E), ("R001", D), ("R002", P), ("R003", PD), ("R004", V)]
    assert sorted(report.requeued) == ["R000", "R001", "R002", "R003", "R004", "R005"]
    assert report.held == ["R006"]
    assert report.as_dict()["spoiled_in"] == dict.fromkeys(("ENCODING", "ENCODED", "PRINTING",
                                                            "PRINTED", "VERIFYING"), 1)  # fmt: skip
    assert ("R003", PD, State.SPOILED) in seen and ("R003", State.SPOILED, State.QUEUED) in seen
    states = {r.application_id: r.state for r in store.list_applications()}
    assert states == {**dict.fromkeys([f"R00{i}" for i in range(6)], State.QUEUED),
                      "R006": State.SPOILED, "R007": State.QUEUED}  # fmt: skip

    log = {e.application_id: e for e in store.spoil_log("KT-R")}
    assert log["R000"].blank_serial is None  # never answered: spoiled without a serial
    assert log["R003"].blank_serial == "S3" and store.get_blank("S3").state is BlankState.SPOILED
    assert log["R003"].station == RESTART_STATION
    assert log["R003"].reason == "line_restart: the line stopped with the card in PRINTED at head-1"
    # Restarts are not the card's fault (Rule 2): R003 has no station failure against it.
    assert station_failures(store, "R003") == 0 and station_failures(store, "R006") == 2
    stock = store.stock("KT-R")
    assert (stock.issued, stock.spoiled, stock.on_line) == (10, 8, 2)  # 5 restarts + 3 failures

    # Rule 4: a second recovery (or one after dying half-way) changes nothing.
    events = store.events()
    again = recover(store, max_attempts=2)
    assert (again.spoiled, again.requeued, again.held) == ([], [], ["R006"])
    assert store.events() == events


def test_recover_returns_the_blanks_of_a_finished_batch(store: SqliteStore, keystore: FileKeystore,
                                                         tmp_path: Path) -> None:  # fmt: skip
    apps = clones(3, "W")
    queue(store, apps, "KT-W")
    asyncio.run(run_line(store, keystore, settings(), out_dir=tmp_path))
    store.issue_blanks("KT-W", 2, idempotency_key="vault-extra")  # e.g. issued, then the line died
    report = recover(store)
    assert report.returned == {"KT-W": 2}
    stock = store.stock("KT-W")
    assert stock.balanced and (stock.issued, stock.returned) == (5, 2)
    assert recover(store).returned == {}
    assert return_unused_blanks(store, "KT-W", actor="t") == 0


# -- killing a child line at chosen points ---------------------------------------------------------------


class KillAfter(NullObserver):
    """Dies right after the n-th committed transition into ``state`` (the observer hears it then)."""

    def __init__(self, state: State, n: int) -> None:
        self.state = state
        self.left = n

    def card_transition(self, application_id: str, from_state: State, to_state: State) -> None:
        if to_state is self.state:
            self.left -= 1
            if self.left == 0:
                os._exit(KILLED)


def kill_inside(point: str, n: int) -> Callable[[str], None]:
    """A store fault hook that dies at ``point`` of the n-th write (begin, applied, commit)."""
    seen = [0]

    def hook(where: str) -> None:
        if where == point:
            seen[0] += 1
            if seen[0] == n:
                os._exit(KILLED)

    return hook


def in_child(target: Callable[[], None]) -> int:
    """Run ``target`` in a forked child; its exit status (KILLED when it died where planned)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            target()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def line_in_child(
    db: Path, keys: Path, out: Path, cfg: LineSettings, *, observer: Any = None,
    hook: Callable[[str], None] | None = None,
) -> Callable[[], None]:  # fmt: skip
    def target() -> None:
        keystore = FileKeystore(keys)
        with open_store(db, keystore, fault_hook=hook) as store:
            asyncio.run(run_line(store, keystore, cfg, out_dir=out, observer=observer))

    return target


def in_stations(db: Path, keystore: FileKeystore) -> set[tuple[str, int]]:
    """The attempts a kill caught in a station: (application, attempt)."""
    with open_store(db, keystore) as s:
        return {
            (r.application_id, r.attempts)
            for state in STATION_STATES
            for r in s.list_applications(state=state)
        }


def finish_and_check(
    db: Path, keystore: FileKeystore, out: Path, ids: list[str], cfg: LineSettings,
    caught: set[tuple[str, int]], *, faults: int = 0,
) -> None:  # fmt: skip
    """Restart the line in this process, run it to the end, and check every invariant."""
    waiting = in_stations(db, keystore)
    with open_store(db, keystore) as store:
        report = asyncio.run(run_line(store, keystore, cfg, out_dir=out))
        assert len(report.recovery.spoiled) == len(waiting)
        check_invariants(store, ids, out)
        stocks = [store.stock(b.batch_id) for b in store.list_batches()]
        # Every spoiled blank is a card a kill caught in a station (or an injected fault) ...
        restarts = {(e.application_id, e.attempt) for e in store.spoil_log()
                    if e.station == RESTART_STATION}  # fmt: skip
        assert restarts == caught
        assert sum(s.spoiled for s in stocks) == len(caught) + faults
        # ... and nothing was issued twice: no blank was left over to go back to the vault.
        assert sum(s.returned for s in stocks) == 0
        assert sum(s.issued for s in stocks) == len(ids) + len(caught) + faults


def _line() -> LineSettings:
    return settings(heads={"count": 3}, queues={"to_print": 2, "to_verify": 2})


@pytest.fixture
def queued(tmp_path: Path, keystore: FileKeystore) -> tuple[Path, list[str]]:
    db = tmp_path / "perso.db"
    apps = clones(8, "K")
    with open_store(db, keystore) as store:
        queue(store, apps, "KT-K")
    return db, [a.application_id for a in apps]


@pytest.mark.parametrize(
    "state",
    [State.ENCODING, State.ENCODED, State.PRINTING, State.PRINTED, State.VERIFYING, State.PASSED],
)
def test_killed_right_after_a_commit(
    state: State, queued: tuple[Path, list[str]], keystore: FileKeystore, tmp_path: Path
) -> None:
    db, ids = queued
    out = tmp_path / "out"
    child = line_in_child(db, keystore.path, out, _line(), observer=KillAfter(state, 3))
    assert in_child(child) == KILLED
    caught = in_stations(db, keystore)
    assert len(caught) >= (state is not State.PASSED)
    if state is State.PASSED:
        # Killed between the PASSED commit and publishing its files: they wait in staging.
        assert any((out / ".staging" / "cards").iterdir())
    finish_and_check(db, keystore, out, ids, _line(), caught)


@pytest.mark.parametrize(("point", "n"), [("applied", 4), ("commit", 9), ("committed", 1),
                                          ("committed", 2), ("commit", 17), ("applied", 30)])  # fmt: skip
def test_killed_inside_a_transaction(
    point: str, n: int, queued: tuple[Path, list[str]], keystore: FileKeystore, tmp_path: Path
) -> None:
    """Inside a write the kill rolls it back (WAL); at ``committed`` it is durable.  The early
    ``committed`` kills land right after the batch's blanks were issued, before any card started."""
    db, ids = queued
    out = tmp_path / "out"
    assert (
        in_child(line_in_child(db, keystore.path, out, _line(), hook=kill_inside(point, n)))
        == KILLED
    )
    caught = in_stations(db, keystore)
    finish_and_check(db, keystore, out, ids, _line(), caught)


def test_killed_between_a_spoil_and_its_requeue(
    queued: tuple[Path, list[str]], keystore: FileKeystore, tmp_path: Path
) -> None:
    db, ids = queued
    out = tmp_path / "out"
    cfg = _line().model_copy(update={"faults": settings(faults={"verify_mismatch_on": [2]}).faults})
    assert in_child(line_in_child(db, keystore.path, out, cfg,
                                  observer=KillAfter(State.SPOILED, 1))) == KILLED  # fmt: skip
    with open_store(db, keystore) as store:
        assert store.count_by_state()[State.SPOILED] == 1
    caught = in_stations(db, keystore)
    finish_and_check(db, keystore, out, ids, _line(), caught, faults=1)


def test_sigkill_at_random_moments(keystore: FileKeystore, tmp_path: Path) -> None:
    """The acceptance crash test in small: SIGKILL a running line again and again, restart it each
    time; at the end every application has exactly one good card, every spoiled blank is a card
    some kill caught in a station, and the stock of both batches reconciles."""
    db, out = tmp_path / "perso.db", tmp_path / "out"
    apps = clones(40, "X")
    with open_store(db, keystore) as store:
        queue(store, apps[:20], "KT-X1")
        queue(store, apps[20:], "KT-X2")
    # Warm the face renderer's caches before forking, so that a child's first proof (the first
    # card of each batch) does not take most of the time between kills.
    face = next(proof_faces(apps[:1]))
    render_card(face, load_layout("hkid-2018"))
    cfg = settings(heads={"count": 2, "encode_s": 0.1}, printers={"service_s": 0.02})
    chance = random.Random(20261113)
    kills = 0
    caught: set[tuple[str, int]] = set()
    for _ in range(8):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                line_in_child(db, keystore.path, out, cfg)()
            finally:
                os._exit(0)
        time.sleep(chance.uniform(0.05, 0.4))
        os.kill(pid, signal.SIGKILL)
        _pid, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != -signal.SIGKILL:
            break  # the line finished before the kill
        kills += 1
        caught |= in_stations(db, keystore)
    assert kills >= 5 and caught
    finish_and_check(db, keystore, out, [a.application_id for a in apps], cfg, caught)
