"""Group commit (issue 5 engine cost): several transitions behind one commit, each on its own.

- ``Store.transitions`` applies each request or none of it: a refused one (illegal move, a
  reused idempotency key, an unknown card, a missing blank) is returned in its place and leaves no
  trace, the others commit; a replayed key is a no-op as with ``transition``; a failure of the
  database itself commits none; the commit is synced unless every member may be relaxed.
- ``GroupCommit`` hands every caller its own result or exception, groups the moves that are asked
  for together, and applies groups in order.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from personaliser.errors import DuplicateError, IllegalTransitionError, NotFoundError, StoreError
from personaliser.lifecycle import State
from personaliser.line.commits import GroupCommit
from personaliser.store import PersonalDataCipher, SqliteStore, TransitionRequest, TransitionResult
from personaliser.synth import synth_applications

KEY = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "perso.db", cipher=PersonalDataCipher(KEY), clock=Clock())
    template = next(synth_applications(1, seed=5))
    apps = [template.model_copy(update={"application_id": f"G{i:03d}"}) for i in range(4)]
    s.add_applications(apps, source="t")
    s.add_batch("B1", office=template.collection_office, due_date=date(2026, 3, 13))
    s.issue_blanks("B1", 3, idempotency_key="issue")
    for app in apps:
        s.transition(app.application_id, State.QUEUED, idempotency_key=f"q-{app.application_id}",
                     batch_id="B1")  # fmt: skip
    return s


def req(app_id: str, to: State, key: str, **fields: str) -> TransitionRequest:
    return TransitionRequest(app_id, to, key, "test", fields)


def event_count(store: SqliteStore) -> int:
    return int(store._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0])


def test_a_refused_member_leaves_no_trace_and_the_others_commit(store: SqliteStore) -> None:
    results = store.transitions([
        req("G000", State.ENCODING, "e0", station="h1"),
        req("G001", State.PASSED, "bad-move"),  # QUEUED -> PASSED is not a move
        req("G002", State.ENCODING, "e2", station="h2"),
        req("NOPE", State.ENCODING, "e3", station="h3"),
        req("G003", State.ENCODING, "e0", station="h1"),  # key of another operation
    ])  # fmt: skip
    assert [type(r) for r in results] == [
        TransitionResult, IllegalTransitionError, TransitionResult, NotFoundError, DuplicateError,
    ]  # fmt: skip
    assert store.get("G000").state is State.ENCODING
    assert store.get("G001").state is State.QUEUED
    assert store.get("G002").state is State.ENCODING
    assert store.get("G003").state is State.QUEUED
    keys = [e.idempotency_key for e in store.events() if e.kind == "transition"]
    assert "bad-move" not in keys and keys.count("e0") == 1 and "e3" not in keys
    assert [a.attempt for a in store.attempts("G001")] == []  # the refused move left no attempt


def test_a_member_refused_after_writing_is_rolled_back_to_its_savepoint(
    store: SqliteStore,
) -> None:
    # Three blanks for four cards: the fourth ENCODING is refused by the blank check, after the
    # first three each opened an attempt in the same transaction.
    results = store.transitions(
        [req(f"G00{i}", State.ENCODING, f"e{i}", station="h") for i in range(4)]
    )
    assert [isinstance(r, TransitionResult) for r in results] == [True, True, True, False]
    assert store.get("G003").state is State.QUEUED and store.attempts("G003") == []
    assert store.stock("B1").on_line == 3


def test_replayed_keys_are_no_ops_and_equal_one_by_one(store: SqliteStore, tmp_path: Path) -> None:
    group = [req("G000", State.ENCODING, "e0", station="h"), req("G001", State.ENCODING, "e1")]
    first = store.transitions(group)
    again = store.transitions(group)
    assert all(isinstance(r, TransitionResult) and r.replayed for r in again)
    assert [r.seq for r in again] == [r.seq for r in first]  # type: ignore[union-attr]
    single = store.transition("G000", State.ENCODING, idempotency_key="e0", actor="test",
                              station="h")  # fmt: skip
    assert single.replayed and single.seq == first[0].seq  # type: ignore[union-attr]


def test_invalid_requests_are_refused_before_the_write(store: SqliteStore) -> None:
    results = store.transitions([
        req("G000", State.APPROVED, "a"),  # set by intake only
        req("G001", State.SPOILED, "s"),  # SPOILED needs its reason and station
        req("G002", State.ENCODING, "", station="h"),  # empty key
    ])  # fmt: skip
    assert all(isinstance(r, ValueError | StoreError) for r in results)
    assert {store.get(f"G00{i}").state for i in range(3)} == {State.QUEUED}
    assert store.transitions([]) == []


def test_a_database_failure_commits_none(tmp_path: Path, store: SqliteStore) -> None:
    before = event_count(store)
    calls = 0

    def hook(point: str) -> None:
        nonlocal calls
        if point == "applied":
            calls += 1
            if calls == 2:
                raise sqlite3.OperationalError("disk I/O error")

    store._hook = hook
    with pytest.raises(StoreError):
        store.transitions([req("G000", State.ENCODING, "e0"), req("G001", State.ENCODING, "e1")])
    assert event_count(store) == before
    assert store.get("G000").state is State.QUEUED


def test_the_commit_is_synced_unless_every_member_is_relaxed(tmp_path: Path) -> None:
    levels: list[int] = []
    holder: list[SqliteStore] = []

    def hook(point: str) -> None:
        if point == "commit" and holder:
            levels.append(holder[0]._conn().execute("PRAGMA synchronous").fetchone()[0])

    s = SqliteStore(tmp_path / "s.db", cipher=PersonalDataCipher(KEY), clock=Clock(),
                    fault_hook=hook)  # fmt: skip
    holder.append(s)
    template = next(synth_applications(1, seed=5))
    s.add_applications([template.model_copy(update={"application_id": f"S{i}"}) for i in range(2)],
                       source="t")  # fmt: skip
    s.add_batch("B1", office=template.collection_office, due_date=date(2026, 3, 13))
    s.issue_blanks("B1", 2, idempotency_key="i")
    for i in range(2):
        s.transition(f"S{i}", State.QUEUED, idempotency_key=f"q{i}", batch_id="B1")
        s.transition(f"S{i}", State.ENCODING, idempotency_key=f"e{i}", station="h")
    levels.clear()
    s.transitions([req("S0", State.ENCODED, "d0", station="h", blank_serial="X1"),
                   req("S1", State.ENCODED, "d1", station="h", blank_serial="X2")])  # fmt: skip
    s.transitions([req("S0", State.PRINTING, "p0", station="p"),
                   req("S1", State.SPOILED, "x1", station="h", reason="jam")])  # fmt: skip
    assert levels == [1, 2]  # NORMAL for in-station moves only, FULL once a milestone is in it
    s.close()


# -- the runtime's batcher ---------------------------------------------------------------------


def test_group_commit_routes_results_and_groups_concurrent_moves() -> None:
    seen: list[list[str]] = []

    async def apply(requests: Sequence[TransitionRequest]) -> list[TransitionResult | Exception]:
        seen.append([r.application_id for r in requests])
        await asyncio.sleep(0)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        return [
            ValueError(r.application_id)
            if r.application_id.startswith("bad")
            else TransitionResult(i, r.application_id, State.QUEUED, r.to, r.idempotency_key, now)
            for i, r in enumerate(requests)
        ]

    async def main() -> list[object]:
        commit = GroupCommit(apply, max_group=3)
        names = ["a", "bad1", "b", "c", "d"]
        outcomes = await asyncio.gather(
            *(commit.transition(req(n, State.ENCODING, n)) for n in names),
            return_exceptions=True,
        )
        later = await commit.transition(req("e", State.ENCODING, "e"))
        assert commit.groups == 3 and commit.transitions == 6
        return [*outcomes, later]

    outcomes = asyncio.run(main())
    assert seen == [["a", "bad1", "b"], ["c", "d"], ["e"]]  # in order, at most max_group each
    assert isinstance(outcomes[1], ValueError)
    assert [o.application_id for o in outcomes if isinstance(o, TransitionResult)] == [
        "a", "b", "c", "d", "e",
    ]  # fmt: skip


def test_a_store_failure_fails_every_move_of_its_group_and_the_next_group_goes_on() -> None:
    calls = 0

    async def apply(requests: Sequence[TransitionRequest]) -> list[TransitionResult | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("database error")
        now = datetime(2026, 1, 1, tzinfo=UTC)
        return [TransitionResult(1, r.application_id, State.QUEUED, r.to, r.idempotency_key, now)
                for r in requests]  # fmt: skip

    async def main() -> None:
        commit = GroupCommit(apply)
        first = await asyncio.gather(
            commit.transition(req("a", State.ENCODING, "a")),
            commit.transition(req("b", State.ENCODING, "b")),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreError) for r in first)
        ok = await commit.transition(req("c", State.ENCODING, "c"))
        assert ok.application_id == "c"

    asyncio.run(main())
    with pytest.raises(ValueError):
        GroupCommit(lambda r: asyncio.sleep(0, []), max_group=0)
