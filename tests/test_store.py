"""The durable store: idempotent intake and transitions, late binding, crash safety, threads,
personal data sealed at rest and purged, and the stock identity issued = good + spoiled + samples
+ returned (DESIGN §3)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chip.random import ScriptedRandom
from personaliser.applications import Application, Rejection, read_applications
from personaliser.errors import (
    BlankError,
    DuplicateError,
    IllegalTransitionError,
    NotFoundError,
    PersonalDataError,
    StoreError,
)
from personaliser.lifecycle import (
    MAIN_PATH,
    STATION_STATES,
    TRANSITIONS,
    BlankState,
    State,
)
from personaliser.store import PersonalDataCipher, SqliteStore
from personaliser.store import open as open_store
from personaliser.store.crypto import BULK_FIELDS, IDENTITY_FIELDS, OPERATIONAL_FIELDS
from personaliser.store.sqlite import MIGRATIONS
from personaliser.synth import synth_applications

REPO = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
DUE = date(2026, 3, 13)


class FakeClock:
    """A UTC clock that ticks one second per reading (thread-safe)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(seconds=1)
            return self.now


def make_store(path: Path, **options: object) -> SqliteStore:
    options.setdefault("clock", FakeClock())
    return SqliteStore(path, cipher=PersonalDataCipher(KEY), **options)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with make_store(tmp_path / "perso.db") as s:
        yield s


@cache
def base_app() -> Application:
    return next(synth_applications(1, seed=23))


def clones(n: int, prefix: str = "C", app: Application | None = None) -> list[Application]:
    """Applications with distinct ids and the same office (synthesis is slow; copying is not)."""
    template = app or base_app()
    return [template.model_copy(update={"application_id": f"{prefix}{i:04d}"}) for i in range(n)]


_keys = itertools.count()


def key() -> str:
    return f"k{next(_keys)}"


def fields_for(to: State, serial: str | None) -> dict[str, str]:
    return {
        State.QUEUED: {"batch_id": "B1"},
        State.ENCODING: {"blank_serial": serial} if serial else {},
        State.SPOILED: {"reason": "test fault", "station": "head-1"},
        State.STOCKED: {"cabinet": "CAB-1", "slot": "A-01"},
    }.get(to, {})


def shortest_path(target: State) -> list[State]:
    paths = {State.APPROVED: [State.APPROVED]}
    todo = deque([State.APPROVED])
    while todo:
        here = todo.popleft()
        for nxt in sorted(TRANSITIONS[here]):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    return paths[target]


def drive(store: SqliteStore, app_id: str, target: State, serial: str | None = None) -> None:
    """Take an APPROVED application to ``target`` along the shortest path, in batch B1."""
    for to in shortest_path(target)[1:]:
        store.transition(app_id, to, idempotency_key=key(), **fields_for(to, serial))


def line(store: SqliteStore, apps: list[Application], blanks: int = 50) -> None:
    store.add_applications(apps, source="test")
    store.add_batch("B1", office=apps[0].collection_office, due_date=DUE)
    store.issue_blanks("B1", blanks, idempotency_key=key())


def raw(store: SqliteStore) -> sqlite3.Connection:
    return sqlite3.connect(store.path)


def db_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


# -- opening, schema, pragmas -------------------------------------------------------------------


def test_open_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cipher = PersonalDataCipher(KEY)
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel.db", cipher=cipher) as s:
        assert isinstance(s, SqliteStore)
    assert (tmp_path / "rel.db").is_file()
    with open_store(f"sqlite:///{tmp_path}/abs.db", cipher=cipher):
        pass
    assert (tmp_path / "abs.db").is_file()
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:", "postgresql://h/db", "x://y"):
        with pytest.raises(ValueError):
            open_store(bad, cipher=cipher)


def test_public_names_are_pinned() -> None:
    import personaliser.store as package

    assert set(package.__all__) == {
        "ApplicationRecord", "Attempt", "Batch", "BlankRecord", "Event", "IntakeCounts",
        "PersonalDataCipher", "SpoilEntry", "SqliteStore", "StockCounts", "Store",
        "TransitionRequest", "TransitionResult", "open",
    }  # fmt: skip
    assert all(hasattr(package, name) for name in package.__all__)


def test_pragmas_schema_and_append_only_trail(store: SqliteStore) -> None:
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert store.schema_version == len(MIGRATIONS) >= 1
    store.add_batch("B1", office="ROP-KT", due_date=DUE)
    with raw(store) as c, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        c.execute("UPDATE events SET actor = 'someone else'")
    with raw(store) as c, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        c.execute("DELETE FROM events")
    with raw(store) as c, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        c.execute("UPDATE stock SET good = 1")  # more accounted than issued


def test_reopen_keeps_data_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "perso.db"
    with make_store(path) as s:
        s.add_batch("B1", office="ROP-KT", due_date=DUE)
    with make_store(path) as s:
        assert s.get_batch("B1").office == "ROP-KT"
        assert s.schema_version == len(MIGRATIONS)
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    c.close()
    with pytest.raises(StoreError, match="newer"):
        make_store(path)


def test_closed_store_and_naive_clock(tmp_path: Path) -> None:
    s = make_store(tmp_path / "a.db")
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get_batch("B1")
    with (
        make_store(tmp_path / "b.db", clock=lambda: datetime(2026, 1, 1)) as naive,
        pytest.raises(ValueError, match="timezone"),
    ):
        naive.add_batch("B1", office="ROP-KT", due_date=DUE)


# -- intake ------------------------------------------------------------------------------------


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_intake_is_idempotent_and_rejects_with_reasons(
    store: SqliteStore, tmp_path: Path, applications: list[Application]
) -> None:
    good = [a.to_json_line() for a in applications[:4]]
    bad = json.loads(applications[4].to_json_line()) | {"hkid": "A123456(4)"}
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [*good, json.dumps(bad), "{not json", good[0]],  # bad HKIC, broken line, repeated id
    )
    first = store.add_applications(read_applications(path), source="in.jsonl")
    assert (first.new, first.duplicate, first.conflicting, first.rejected) == (4, 0, 0, 3)
    snapshot = (store.list_applications(), store.events(), store.rejections())
    again = store.add_applications(read_applications(path), source="in.jsonl")
    assert (again.new, again.duplicate, again.conflicting, again.rejected) == (0, 4, 0, 3)
    assert (store.list_applications(), store.events(), store.rejections()) == snapshot

    bad_id = applications[4].application_id
    assert store.get(bad_id).state is State.REJECTED
    assert store.get(bad_id).office is None  # nothing of a bad record is kept but its reasons
    assert [(r.line, r.field) for r in store.rejections(application_id=bad_id)] == [(5, "hkid")]
    assert "check digit" in store.rejections(application_id=bad_id)[0].reason
    by_line = {r.line: r for r in store.rejections(source="in.jsonl")}
    assert by_line[6].application_id is None and by_line[6].field == "record"
    assert by_line[7].field == "application_id"
    assert store.get(applications[0].application_id).state is State.APPROVED  # not demoted
    assert store.count_by_state() == {State.APPROVED: 4, State.REJECTED: 1}
    with pytest.raises(PersonalDataError, match="no personal data"):
        store.load_application(bad_id)


def test_a_corrected_record_replaces_a_rejected_one(
    store: SqliteStore, applications: list[Application]
) -> None:
    app = applications[0]
    store.add_applications([Rejection(3, "sex", "bad", app.application_id)], source="a")
    assert store.get(app.application_id).state is State.REJECTED
    counts = store.add_applications([app], source="b")
    assert counts.new == 1
    assert store.get(app.application_id).state is State.APPROVED
    assert store.load_application(app.application_id) == app
    last = store.events(application_id=app.application_id)[-1]
    assert (last.kind, last.from_state, last.to_state) == ("intake", "REJECTED", "APPROVED")


def test_conflicting_reimport_keeps_the_stored_record(
    store: SqliteStore, applications: list[Application]
) -> None:
    app = applications[1]
    store.add_applications([app], source="a")
    other = app.model_copy(update={"collection_office": "ROP-XX"})
    counts = store.add_applications([other, app], source="b")
    assert (counts.new, counts.duplicate, counts.conflicting) == (0, 1, 1)
    assert store.get(app.application_id).office == app.collection_office


def test_intake_in_chunks(store: SqliteStore) -> None:
    apps = clones(600)
    assert store.add_applications(iter(apps), source="big").new == 600
    assert len(store.list_applications(state=State.APPROVED)) == 600
    assert len(store.list_applications(limit=7)) == 7


# -- the life cycle through the store ----------------------------------------------------------

STORE_EDGES = [
    (a, b) for a, targets in TRANSITIONS.items() for b in targets if a is not State.REJECTED
]


@pytest.mark.parametrize(("frm", "to"), sorted(STORE_EDGES))
def test_every_transition_of_the_table_through_the_store(
    store: SqliteStore, frm: State, to: State
) -> None:
    (app,) = clones(1)
    line(store, [app])
    drive(store, app.application_id, frm, serial="SER-1")
    serial = "SER-2" if to is State.ENCODING else None  # a re-queued card takes a new blank
    result = store.transition(
        app.application_id, to, idempotency_key="edge", **fields_for(to, serial)
    )
    assert (result.from_state, result.to_state, result.replayed) == (frm, to, False)
    assert store.get(app.application_id).state is to
    event = store.events(application_id=app.application_id)[-1]
    assert event.to_state == to or event.kind == "purge"


def test_illegal_transitions_change_nothing(store: SqliteStore) -> None:
    apps = clones(len(MAIN_PATH) + 1)
    line(store, apps)
    states = [*MAIN_PATH, State.SPOILED]
    for app, state in zip(apps, states, strict=True):
        drive(store, app.application_id, state, serial=f"S-{app.application_id}")
    before = (store.list_applications(), store.events(), store.stock("B1"), store.blanks("B1"))
    for app, state in zip(apps, states, strict=True):
        for to in set(State) - TRANSITIONS[state] - {State.APPROVED, State.REJECTED}:
            with pytest.raises(IllegalTransitionError) as info:
                store.transition(
                    app.application_id, to, idempotency_key=key(), **fields_for(to, "S-NEW")
                )
            assert (info.value.card, info.value.from_state) == (app.application_id, state)
        for to in (State.APPROVED, State.REJECTED):
            with pytest.raises(ValueError, match="intake"):
                store.transition(app.application_id, to, idempotency_key=key())
    assert (store.list_applications(), store.events(), store.stock("B1"), store.blanks("B1")) == (
        before
    )


def test_fields_and_references_are_checked(store: SqliteStore) -> None:
    (app,) = clones(1)
    line(store, [app])
    app_id = app.application_id
    with pytest.raises(ValueError, match="batch_id"):
        store.transition(app_id, State.QUEUED, idempotency_key=key())
    with pytest.raises(ValueError, match="unexpected"):
        store.transition(app_id, State.QUEUED, idempotency_key=key(), batch_id="B1", slot="1")
    with pytest.raises(NotFoundError) as nf:
        store.transition(app_id, State.QUEUED, idempotency_key=key(), batch_id="B9")
    assert (nf.value.kind, nf.value.key) == ("batch", "B9")
    store.add_batch("B2", office="ROP-ELSEWHERE", due_date=DUE)
    with pytest.raises(ValueError, match="office"):
        store.transition(app_id, State.QUEUED, idempotency_key=key(), batch_id="B2")
    with pytest.raises(NotFoundError):
        store.transition("NOBODY", State.QUEUED, idempotency_key=key(), batch_id="B1")
    with pytest.raises(ValueError, match="idempotency_key"):
        store.transition(app_id, State.QUEUED, idempotency_key="", batch_id="B1")
    assert store.get(app_id).state is State.APPROVED
    assert [e.kind for e in store.events(application_id=app_id)] == ["intake"]


def test_late_binding_on_the_happy_path(store: SqliteStore) -> None:
    (app,) = clones(1)
    line(store, [app])
    app_id = app.application_id
    drive(store, app_id, State.ENCODING)
    store.transition(app_id, State.ENCODED, idempotency_key=key(), blank_serial="04A1B2C3")
    blank = store.get_blank("04A1B2C3")
    assert (blank.state, blank.application_id) == (BlankState.ISSUED_TO_LINE, None)
    for to in (State.PRINTING, State.PRINTED, State.VERIFYING):
        store.transition(app_id, to, idempotency_key=key(), station="s1")
        assert store.get_blank("04A1B2C3").application_id is None
    store.transition(app_id, State.PASSED, idempotency_key=key())
    blank = store.get_blank("04A1B2C3")
    assert (blank.state, blank.application_id) == (BlankState.GOOD, app_id)
    for to in (State.DISPATCHED, State.STOCKED, State.ISSUED):
        store.transition(app_id, to, idempotency_key=key(), **fields_for(to, None))
    record = store.get(app_id)
    assert (record.state, record.cabinet, record.slot, record.attempts) == (
        State.ISSUED,
        "CAB-1",
        "A-01",
        1,
    )
    assert store.stock("B1").good == 1
    (attempt,) = store.attempts(app_id)
    assert (attempt.blank_serial, attempt.outcome) == ("04A1B2C3", State.PASSED)
    assert attempt.ended_at is not None and attempt.ended_at > attempt.started_at


def test_spoil_and_rework_keep_the_due_date_and_never_reuse_a_blank(store: SqliteStore) -> None:
    (app,) = clones(1)
    line(store, [app])
    app_id = app.application_id
    drive(store, app_id, State.PRINTING, serial="SER-A")
    store.transition(
        app_id, State.SPOILED, idempotency_key=key(), reason="print jam", station="printer-2"
    )
    (entry,) = store.spoil_log("B1")
    assert (entry.blank_serial, entry.application_id, entry.attempt) == ("SER-A", app_id, 1)
    assert (entry.station, entry.reason) == ("printer-2", "print jam")
    assert store.get_blank("SER-A").state is BlankState.SPOILED
    assert store.get_blank("SER-A").application_id is None

    store.transition(app_id, State.QUEUED, idempotency_key=key(), batch_id="B1")
    record = store.get(app_id)
    assert record.queue_priority == "rework" and record.priority == "normal"
    assert record.collection_date == app.collection_date  # the original due date
    with pytest.raises(BlankError) as info:
        store.transition(app_id, State.ENCODING, idempotency_key=key(), blank_serial="SER-A")
    assert info.value.serial == "SER-A"
    assert store.get(app_id).state is State.QUEUED
    store.transition(app_id, State.ENCODING, idempotency_key=key(), blank_serial="SER-B")
    assert [a.blank_serial for a in store.attempts(app_id)] == ["SER-A", "SER-B"]


def test_a_blank_that_never_answered_is_still_accounted(store: SqliteStore) -> None:
    (app,) = clones(1)
    line(store, [app], blanks=2)
    drive(store, app.application_id, State.ENCODING)  # no serial: the chip did not answer
    store.transition(app.application_id, State.SPOILED, idempotency_key=key(), reason="no ATR")
    (blank,) = store.blanks("B1")
    assert (blank.serial, blank.state, blank.reason) == (None, BlankState.SPOILED, "no ATR")
    assert store.spoil_log()[0].blank_serial is None
    stock = store.stock("B1")
    assert (stock.issued, stock.spoiled, stock.on_line) == (2, 1, 1)


def test_blank_rules_in_attempts(store: SqliteStore) -> None:
    a, b, c = clones(3)
    line(store, [a, b, c], blanks=2)
    drive(store, a.application_id, State.VERIFYING)
    with pytest.raises(BlankError, match="no blank serial"):
        store.transition(a.application_id, State.PASSED, idempotency_key=key())
    store.transition(a.application_id, State.PASSED, idempotency_key=key(), blank_serial="S1")
    drive(store, b.application_id, State.ENCODING, serial="S2")
    with pytest.raises(BlankError, match="is on blank S2"):
        store.transition(b.application_id, State.ENCODED, idempotency_key=key(), blank_serial="S3")
    drive(store, c.application_id, State.QUEUED)
    with pytest.raises(BlankError, match="no blank left") as info:  # 2 issued: 1 good, 1 in use
        store.transition(c.application_id, State.ENCODING, idempotency_key=key())
    assert info.value.batch_id == "B1"
    store.issue_blanks("B1", 1, idempotency_key=key())
    with pytest.raises(BlankError, match="already recorded"):
        store.transition(c.application_id, State.ENCODING, idempotency_key=key(), blank_serial="S1")
    store.transition(c.application_id, State.ENCODING, idempotency_key=key())


def test_samples_returns_and_misfeeds(store: SqliteStore) -> None:
    (app,) = clones(1)
    line(store, [app], blanks=4)
    drive(store, app.application_id, State.ENCODING, serial="IN-HEAD")
    sample = store.record_blank("B1", BlankState.SAMPLE, reason="QA pull", idempotency_key="s1")
    assert (sample.state, sample.serial, sample.application_id) == (BlankState.SAMPLE, None, None)
    assert store.record_blank("B1", BlankState.SAMPLE, reason="QA pull", idempotency_key="s1") == (
        sample
    )  # replayed: no second sample
    store.record_blank(
        "B1", BlankState.SPOILED, reason="misfeed", serial="BENT", idempotency_key="s2"
    )
    with pytest.raises(BlankError, match="in an attempt"):
        store.record_blank(
            "B1", BlankState.RETURNED, reason="x", serial="IN-HEAD", idempotency_key="s3"
        )
    store.record_blank("B1", BlankState.RETURNED, reason="end of shift", idempotency_key="s4")
    with pytest.raises(BlankError, match="no blank left"):  # 4 = sample + misfeed + return + head
        store.record_blank("B1", BlankState.RETURNED, reason="again", idempotency_key="s5")
    with pytest.raises(ValueError, match="SPOILED, SAMPLE or RETURNED"):
        store.record_blank("B1", BlankState.GOOD, reason="x", idempotency_key="s6")
    with pytest.raises(DuplicateError):
        store.record_blank("B1", BlankState.RETURNED, reason="QA pull", idempotency_key="s1")
    stock = store.stock("B1")
    assert (stock.issued, stock.good, stock.spoiled, stock.samples, stock.returned) == (
        4,
        0,
        1,
        1,
        1,
    )
    assert [e.reason for e in store.spoil_log("B1")] == ["misfeed"]
    assert store.spoil_log("B1")[0].application_id is None


# -- idempotency under replay ------------------------------------------------------------------


def test_replaying_a_key_is_a_no_op_returning_the_recorded_result(store: SqliteStore) -> None:
    a, b = clones(2)
    line(store, [a, b])
    first = store.transition(a.application_id, State.QUEUED, idempotency_key="q", batch_id="B1")
    store.transition(a.application_id, State.ENCODING, idempotency_key="e", blank_serial="S1")
    events = store.events()
    for _ in range(3):  # a retried call after a lost reply, even once the card has moved on
        again = store.transition(a.application_id, State.QUEUED, idempotency_key="q", batch_id="B1")
        assert again.replayed and (again.seq, again.at, again.from_state) == (
            first.seq,
            first.at,
            State.APPROVED,
        )
    assert store.events() == events
    assert store.get(a.application_id).state is State.ENCODING
    with pytest.raises(DuplicateError) as info:  # same key, other target
        store.transition(a.application_id, State.ENCODED, idempotency_key="q")
    assert info.value.key == "q"
    with pytest.raises(DuplicateError):  # same key, other fields
        store.transition(a.application_id, State.QUEUED, idempotency_key="q", batch_id="B2")
    with pytest.raises(DuplicateError):  # same key, other card
        store.transition(b.application_id, State.QUEUED, idempotency_key="q", batch_id="B1")
    assert store.events() == events


def test_batches_and_blank_issues_replay(store: SqliteStore) -> None:
    batch = store.add_batch("B1", office="ROP-KT", due_date=DUE)
    assert store.add_batch("B1", office="ROP-KT", due_date=DUE) == batch
    with pytest.raises(DuplicateError):
        store.add_batch("B1", office="ROP-KT", due_date=DUE + timedelta(days=1))
    with pytest.raises(ValueError, match="batch_id"):
        store.add_batch("B 1", office="ROP-KT", due_date=DUE)
    store.issue_blanks("B1", 10, idempotency_key="tray-1")
    assert store.issue_blanks("B1", 10, idempotency_key="tray-1").issued == 10
    with pytest.raises(DuplicateError):
        store.issue_blanks("B1", 11, idempotency_key="tray-1")
    with pytest.raises(NotFoundError):
        store.issue_blanks("B7", 1, idempotency_key="tray-2")
    assert store.list_batches() == [batch]


# -- crash safety ------------------------------------------------------------------------------

CHILD = """
import json, os, sys, time
from personaliser.lifecycle import State
from personaliser.store import PersonalDataCipher, SqliteStore
path, key, app_id, to, point, mode, fields = sys.argv[1:]
armed = False
def hook(where):
    if armed and where == point:
        if mode == "exit":
            os._exit(77)
        print("inside", flush=True)
        time.sleep(60)
store = SqliteStore(path, cipher=PersonalDataCipher(bytes.fromhex(key)), fault_hook=hook)
armed = True
store.transition(app_id, State(to), idempotency_key="crash-key", **json.loads(fields))
"""

CRASH_CASES = {
    # a spoil touches the blank, the attempt, the stock counters and the spoil log
    "spoil": (State.VERIFYING, State.SPOILED, {"reason": "verify mismatch", "blank_serial": "S9"}),
    # a dispatch purges personal data in the same transaction
    "dispatch": (State.PASSED, State.DISPATCHED, {}),
}


def snapshot(store: SqliteStore, app_id: str) -> tuple[object, ...]:
    """Everything a transition could touch."""
    return (
        store.get(app_id),
        store.events(),
        store.stock("B1"),
        store.blanks("B1"),
        store.spoil_log(),
        store.attempts(app_id),
    )


def run_child(
    store: SqliteStore, app_id: str, to: State, fields: dict[str, str], point: str, mode: str
) -> None:
    args = [
        sys.executable,
        "-c",
        CHILD,
        str(store.path),
        KEY.hex(),
        app_id,
        to.value,
        point,
        mode,
        json.dumps(fields),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, cwd=REPO) as proc:
        if mode == "kill":
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"inside\n"
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == (-signal.SIGKILL if mode == "kill" else 77)


@pytest.mark.parametrize("case", sorted(CRASH_CASES))
@pytest.mark.parametrize(
    ("point", "mode"),
    [
        ("begin", "exit"),
        ("applied", "exit"),
        ("applied", "kill"),
        ("commit", "exit"),
        ("committed", "exit"),
    ],
)
def test_a_crash_inside_a_transition_leaves_all_or_nothing(
    tmp_path: Path, case: str, point: str, mode: str
) -> None:
    frm, to, fields = CRASH_CASES[case]
    (app,) = clones(1)
    store = make_store(tmp_path / "perso.db")
    line(store, [app])
    drive(store, app.application_id, frm, serial=None if case == "spoil" else "S9")
    before = snapshot(store, app.application_id)

    run_child(store, app.application_id, to, fields, point, mode)

    with raw(store) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    c.close()
    after = snapshot(store, app.application_id)
    if point == "committed":
        assert store.get(app.application_id).state is to
        assert store.events()[-1].kind in ("transition", "purge")
    else:
        assert after == before
        assert store.load_application(app.application_id) == app
    # The restarted line retries under the same key: the card moves exactly once.
    result = store.transition(app.application_id, to, idempotency_key="crash-key", **fields)
    assert result.replayed is (point == "committed")
    assert store.get(app.application_id).state is to
    assert [e.idempotency_key for e in store.events()].count("crash-key") == 1
    stock = store.stock("B1")
    assert stock.spoiled == (1 if case == "spoil" else 0)
    assert stock.good == (1 if case == "dispatch" else 0)
    assert store.get(app.application_id).purged is (case == "dispatch")
    store.close()


# -- threads -----------------------------------------------------------------------------------


def test_concurrent_transitions_from_threads(store: SqliteStore) -> None:
    apps = clones(32, prefix="T")
    line(store, apps, blanks=32)
    errors: list[BaseException] = []

    def work(mine: list[Application]) -> None:
        try:
            for app in mine:
                drive(store, app.application_id, State.PASSED, serial=f"S-{app.application_id}")
        except BaseException as exc:  # collected and re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(apps[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_by_state() == {State.PASSED: 32}
    stock = store.stock("B1")
    assert (stock.issued, stock.good, stock.balanced) == (32, 32, True)
    bound = {b.application_id for b in store.blanks("B1")}
    assert bound == {a.application_id for a in apps}
    seqs = [e.seq for e in store.events()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_racing_heads_take_a_card_exactly_once(store: SqliteStore) -> None:
    (app,) = clones(1)
    line(store, [app])
    drive(store, app.application_id, State.QUEUED)
    barrier = threading.Barrier(8)
    outcomes: list[object] = []

    def head(n: int, same_key: bool) -> None:
        barrier.wait()
        try:
            outcomes.append(
                store.transition(
                    app.application_id,
                    State.ENCODING,
                    idempotency_key="one" if same_key else f"head-{n}",
                )
            )
        except (IllegalTransitionError, StoreError) as exc:
            outcomes.append(exc)

    for same_key in (False, True):
        outcomes.clear()
        if same_key:
            store.transition(app.application_id, State.SPOILED, idempotency_key=key(), reason="r")
            store.transition(app.application_id, State.QUEUED, idempotency_key=key(), batch_id="B1")
        threads = [threading.Thread(target=head, args=(n, same_key)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kinds = Counter(
            "replayed" if getattr(o, "replayed", False) else type(o).__name__ for o in outcomes
        )
        if same_key:
            assert kinds == {"TransitionResult": 1, "replayed": 7}
        else:
            assert kinds == {"TransitionResult": 1, "IllegalTransitionError": 7}
    assert len(store.attempts(app.application_id)) == 2


# -- personal data at rest ---------------------------------------------------------------------


def needles(app: Application) -> dict[str, bytes]:
    """How the personal data would look in plaintext: values and the JSON fragments we seal."""
    portrait = app.portrait_jpeg
    out = {
        "hkid": app.hkid.encode(),
        "hkid-digits": app.hkid.replace("(", "").replace(")", "").encode(),
        "document_number": app.document_number.encode(),
        "surname": json.dumps({"surname": app.surname}, separators=(",", ":"))[1:-1].encode(),
        "given_names": f'"given_names":"{app.given_names}"'.encode(),
        "chinese_name": app.chinese_name.encode(),
        "date_of_birth": f'"date_of_birth":"{app.date_of_birth.isoformat()}"'.encode(),
        "portrait-b64": base64.b64encode(portrait[100:148]),
        "minutiae": json.dumps(app.fingerprints[0].minutiae[0], separators=(",", ":")).encode(),
    }
    for i in (0, len(portrait) // 2, len(portrait) - 40):
        out[f"portrait@{i}"] = portrait[i : i + 32]
    return out


def test_no_plaintext_personal_data_in_the_database_files(
    tmp_path: Path, applications: list[Application]
) -> None:
    path = tmp_path / "perso.db"
    with make_store(path) as s:
        s.add_applications(applications, source="f")
        s.add_batch("B1", office=applications[0].collection_office, due_date=DUE)
        s.issue_blanks("B1", 5, idempotency_key=key())
        drive(s, applications[0].application_id, State.PASSED, serial="S1")
        for phase in ("wal", "checkpointed"):
            data = db_bytes(path)
            assert applications[0].application_id.encode() in data, phase  # the scan sees rows
            for app in applications:
                assert app.collection_office.encode() in data  # clear: needed for routing
                for name, needle in needles(app).items():
                    assert len(needle) >= 6, name
                    assert needle not in data, (phase, name)
            assert s.checkpoint()
        assert [s.load_application(a.application_id) for a in applications[1:]] == applications[1:]


def test_a_sealed_field_cannot_be_moved_to_another_record(
    store: SqliteStore, applications: list[Application]
) -> None:
    a, b = applications[:2]
    store.add_applications([a, b], source="f")
    with raw(store) as c:
        c.execute(
            "UPDATE applications SET pd_portrait = (SELECT pd_portrait FROM applications"
            " WHERE application_id = ?) WHERE application_id = ?",
            (a.application_id, b.application_id),
        )
    c.close()
    assert store.load_application(a.application_id) == a
    with pytest.raises(PersonalDataError, match="portrait failed authentication") as info:
        store.load_application(b.application_id)
    assert info.value.application_id == b.application_id
    assert b.surname not in str(info.value)


def test_the_seal_layout_is_as_documented(
    store: SqliteStore, applications: list[Application]
) -> None:
    app = applications[0]
    store.add_applications([app], source="f")
    with raw(store) as c:
        key_id, sealed = c.execute(
            "SELECT pd_key_id, pd_identity FROM applications WHERE application_id = ?",
            (app.application_id,),
        ).fetchone()
    c.close()
    assert key_id == PersonalDataCipher(KEY).key_id and sealed[0] == 1
    ad = b"\x00".join([b"perso-pd/1", key_id.encode(), app.application_id.encode(), b"identity"])
    identity = json.loads(AESGCM(KEY).decrypt(sealed[1:13], sealed[13:], ad))
    assert identity["surname"] == app.surname and identity["hkid"] == app.hkid
    assert set(identity) == set(IDENTITY_FIELDS)
    with pytest.raises(InvalidTag):  # another field's associated data
        AESGCM(KEY).decrypt(sealed[1:13], sealed[13:], ad[: -len(b"identity")] + b"portrait")


def test_field_lists_partition_the_application_model() -> None:
    groups = [set(OPERATIONAL_FIELDS), set(IDENTITY_FIELDS), set(BULK_FIELDS)]
    assert sum(map(len, groups)) == len(set().union(*groups))
    assert set().union(*groups) == set(Application.model_fields)


def test_cipher_nonces_keys_and_rotation(tmp_path: Path, applications: list[Application]) -> None:
    nonce = bytes(range(12))
    scripted = PersonalDataCipher(KEY, random=ScriptedRandom([nonce]))
    assert scripted.seal("A1", "identity", b"x")[1:13] == nonce
    cipher = PersonalDataCipher(KEY)
    assert cipher.seal("A1", "f", b"same") != cipher.seal("A1", "f", b"same")
    assert KEY.hex() not in repr(cipher) and "KEY" not in repr(cipher)
    assert "identity" not in repr(cipher.seal_application(applications[0]))
    with pytest.raises(ValueError, match="32 bytes"):
        PersonalDataCipher(KEY[:16])

    path = tmp_path / "perso.db"
    old_id = PersonalDataCipher(KEY).key_id
    with make_store(path) as s:
        s.add_applications(applications[:1], source="f")
    other = PersonalDataCipher(OTHER_KEY)
    with SqliteStore(path, cipher=other) as s, pytest.raises(PersonalDataError, match="unknown"):
        s.load_application(applications[0].application_id)
    impostor = PersonalDataCipher(OTHER_KEY, key_id=old_id)
    with SqliteStore(path, cipher=impostor) as s, pytest.raises(PersonalDataError, match="auth"):
        s.load_application(applications[0].application_id)
    rotated = PersonalDataCipher(OTHER_KEY, previous={old_id: KEY})
    with SqliteStore(path, cipher=rotated) as s:
        assert s.load_application(applications[0].application_id) == applications[0]
        s.add_applications(applications[1:2], source="g")
        assert s.load_application(applications[1].application_id) == applications[1]
    with raw(s) as c:
        ids = dict(c.execute("SELECT application_id, pd_key_id FROM applications").fetchall())
    c.close()
    assert ids == {
        applications[0].application_id: old_id,
        applications[1].application_id: rotated.key_id,
    }


# -- purge -------------------------------------------------------------------------------------


def test_dispatch_purges_personal_data_from_the_file(tmp_path: Path) -> None:
    a, b = clones(2, prefix="P")
    path = tmp_path / "perso.db"
    with make_store(path) as s:
        line(s, [a, b])
        drive(s, a.application_id, State.PASSED, serial="S1")
        with raw(s) as c:
            sealed = c.execute(
                "SELECT pd_identity, pd_portrait, pd_fingerprints FROM applications"
                " WHERE application_id = ?",
                (a.application_id,),
            ).fetchone()
        c.close()
        assert s.checkpoint()
        assert all(blob[20:52] in db_bytes(path) for blob in sealed)  # the control
        s.transition(a.application_id, State.DISPATCHED, idempotency_key=key())
        record = s.get(a.application_id)
        assert record.purged and record.state is State.DISPATCHED
        with pytest.raises(PersonalDataError, match="purged"):
            s.load_application(a.application_id)
        assert s.load_application(b.application_id) == b
        assert [e.kind for e in s.events(application_id=a.application_id)][-2:] == [
            "transition",
            "purge",
        ]
        assert s.purge_personal_data(a.application_id) is False
        assert s.add_applications([a], source="again").duplicate == 1  # not re-created
        assert s.checkpoint()
        data = db_bytes(path)
        for blob in sealed:  # secure_delete zeroed the freed cells and overflow pages
            assert blob[20:52] not in data
        with raw(s) as c:
            row = c.execute(
                "SELECT pd_key_id, pd_identity, pd_portrait, pd_fingerprints FROM applications"
                " WHERE application_id = ?",
                (a.application_id,),
            ).fetchone()
        c.close()
        assert row == (None, None, None, None)


def test_purge_policy_until_issue_and_on_return(tmp_path: Path) -> None:
    a, b = clones(2, prefix="Q")
    with make_store(tmp_path / "perso.db", purge_at=State.ISSUED) as s:
        line(s, [a, b])
        drive(s, a.application_id, State.STOCKED, serial="S1")
        assert not s.get(a.application_id).purged
        assert s.load_application(a.application_id) == a
        s.transition(a.application_id, State.ISSUED, idempotency_key=key(), officer="OFF-17")
        assert s.get(a.application_id).purged
        drive(s, b.application_id, State.STOCKED, serial="S2")
        s.transition(b.application_id, State.RETURNED, idempotency_key=key())
        assert s.get(b.application_id).purged
    with pytest.raises(ValueError, match="purge_at"):
        make_store(tmp_path / "x.db", purge_at=State.QUEUED)


def test_explicit_purge(store: SqliteStore) -> None:
    (app,) = clones(1)
    store.add_applications([app], source="f")
    assert store.purge_personal_data(app.application_id, actor="dpo") is True
    assert store.purge_personal_data(app.application_id) is False
    assert store.events(application_id=app.application_id)[-1].actor == "dpo"
    with pytest.raises(NotFoundError):
        store.purge_personal_data("NOBODY")


def test_records_events_and_errors_carry_no_personal_data(
    store: SqliteStore, applications: list[Application]
) -> None:
    store.add_applications(applications, source="f")
    app = applications[2]
    text = " ".join(
        [repr(store.get(app.application_id)), repr(store.events()), repr(store.list_applications())]
    )
    for name, needle in needles(app).items():
        assert needle.decode("latin-1") not in text, name
    assert app.surname not in text and app.hkid not in text


# -- stock reconciliation ----------------------------------------------------------------------

N_APPS = 8


class StockMachine(RuleBasedStateMachine):
    """Random blank events against a model; the stock identity holds after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="stock-")
        self.store = make_store(Path(self.dir) / "perso.db")
        apps = clones(N_APPS, prefix="H")
        self.store.add_applications(apps, source="h")
        self.store.add_batch("B1", office=apps[0].collection_office, due_date=DUE)
        self.cards: dict[str, tuple[State, str | None]] = {}
        for app in apps:
            self.store.transition(
                app.application_id, State.QUEUED, idempotency_key=key(), batch_id="B1"
            )
            self.cards[app.application_id] = (State.QUEUED, None)
        self.model = Counter[str]()
        self.serials = itertools.count()
        self.last: Callable[[], None] | None = None  # replays the last write under its key

    def free(self) -> int:
        in_station = sum(1 for state, _ in self.cards.values() if state in STATION_STATES)
        accounted = sum(self.model[k] for k in ("good", "spoiled", "samples", "returned"))
        return self.model["issued"] - accounted - in_station

    def serial(self) -> str:
        return f"SN{next(self.serials):06d}"

    def pick(self, data: st.DataObject, states: set[State]) -> str | None:
        choices = sorted(a for a, (s, _) in self.cards.items() if s in states)
        return data.draw(st.sampled_from(choices)) if choices else None

    def move(self, app_id: str, to: State, serial: str | None, **fields: str) -> None:
        k = key()
        if serial and serial != self.cards[app_id][1]:
            fields["blank_serial"] = serial
        self.store.transition(app_id, to, idempotency_key=k, **fields)
        self.cards[app_id] = (to, serial or self.cards[app_id][1])

        def again() -> None:
            assert self.store.transition(app_id, to, idempotency_key=k, **fields).replayed

        self.last = again

    @rule(n=st.integers(1, 3))
    def issue(self, n: int) -> None:
        k = key()
        self.store.issue_blanks("B1", n, idempotency_key=k)
        self.model["issued"] += n

        def again() -> None:
            self.store.issue_blanks("B1", n, idempotency_key=k)

        self.last = again

    @rule(data=st.data(), known=st.booleans())
    def start(self, data: st.DataObject, known: bool) -> None:
        app_id = self.pick(data, {State.QUEUED})
        if app_id is None:
            return
        serial = self.serial() if known else None
        if self.free() < 1:
            with pytest.raises(BlankError):
                self.store.transition(
                    app_id,
                    State.ENCODING,
                    idempotency_key=key(),
                    **({"blank_serial": serial} if serial else {}),
                )
            return
        self.cards[app_id] = (State.QUEUED, None)
        self.move(app_id, State.ENCODING, serial)

    @rule(data=st.data(), learn=st.booleans())
    def advance(self, data: st.DataObject, learn: bool) -> None:
        app_id = self.pick(data, set(STATION_STATES))
        if app_id is None:
            return
        state, serial = self.cards[app_id]
        to = MAIN_PATH[MAIN_PATH.index(state) + 1]
        new = self.serial() if learn and serial is None else serial
        if to is State.PASSED and new is None:
            with pytest.raises(BlankError):
                self.store.transition(app_id, to, idempotency_key=key())
            return
        self.move(app_id, to, new)
        if to is State.PASSED:
            self.model["good"] += 1

    @rule(data=st.data(), learn=st.booleans())
    def spoil(self, data: st.DataObject, learn: bool) -> None:
        app_id = self.pick(data, set(STATION_STATES))
        if app_id is None:
            return
        serial = self.cards[app_id][1] or (self.serial() if learn else None)
        self.move(app_id, State.SPOILED, serial, reason="fault", station="x")
        self.model["spoiled"] += 1
        self.store.transition(app_id, State.QUEUED, idempotency_key=key(), batch_id="B1")
        self.cards[app_id] = (State.QUEUED, None)

    @rule(
        to=st.sampled_from([BlankState.SAMPLE, BlankState.RETURNED, BlankState.SPOILED]),
        known=st.booleans(),
    )
    def account(self, to: BlankState, known: bool) -> None:
        k = key()
        serial = self.serial() if known else None
        if self.free() < 1:
            with pytest.raises(BlankError):
                self.store.record_blank("B1", to, reason="r", idempotency_key=k, serial=serial)
            return
        self.store.record_blank("B1", to, reason="r", idempotency_key=k, serial=serial)
        counter = {"SAMPLE": "samples", "RETURNED": "returned", "SPOILED": "spoiled"}[to]
        self.model[counter] += 1

        def again() -> None:
            self.store.record_blank("B1", to, reason="r", idempotency_key=k, serial=serial)

        self.last = again

    @precondition(lambda self: self.last is not None)
    @rule()
    def replay(self) -> None:
        assert self.last is not None
        self.last()  # the invariant then checks that nothing was counted twice

    @invariant()
    def stock_identity_holds(self) -> None:
        stock = self.store.stock("B1")
        records = Counter(b.state for b in self.store.blanks("B1"))
        assert stock.good == records[BlankState.GOOD] == self.model["good"]
        assert stock.spoiled == records[BlankState.SPOILED] == self.model["spoiled"]
        assert stock.samples == records[BlankState.SAMPLE] == self.model["samples"]
        assert stock.returned == records[BlankState.RETURNED] == self.model["returned"]
        assert stock.issued == self.model["issued"]
        in_station = [s for s, _ in self.cards.values() if s in STATION_STATES]
        assert stock.on_line - len(in_station) == self.free() >= 0
        assert records[BlankState.ISSUED_TO_LINE] == sum(
            1 for s, serial in self.cards.values() if s in STATION_STATES and serial
        )
        assert len(self.store.spoil_log("B1")) == stock.spoiled

    def teardown(self) -> None:
        try:
            for app_id, (state, _) in self.cards.items():  # reconcile: end of the batch
                if state in STATION_STATES:
                    self.move(app_id, State.SPOILED, None, reason="end of batch")
            for _ in range(self.store.stock("B1").on_line):
                self.store.record_blank(
                    "B1", BlankState.RETURNED, reason="to vault", idempotency_key=key()
                )
            stock = self.store.stock("B1")
            assert stock.balanced and stock.on_line == 0
            assert stock.issued == stock.good + stock.spoiled + stock.samples + stock.returned
        finally:
            self.store.close()
            shutil.rmtree(self.dir)


TestStockReconciliation = StockMachine.TestCase
TestStockReconciliation.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
