"""ecabinet.audit: the chain, the writer, and every kind of tampering found at its entry."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecabinet.audit import (
    GENESIS_HASH,
    MAX_AHEAD,
    AuditChain,
    AuditHead,
    AuditWriter,
    head_path,
    verify,
    verify_lines,
)
from ecabinet.errors import AuditError
from ecabinet.security import canonical_json

KEY = bytes(range(100, 132))
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def _clock() -> Callable[[], datetime]:
    ticks = iter(range(10_000))
    return lambda: T0 + timedelta(seconds=next(ticks))


def _write(path: Path, n: int, *, key: bytes | None = None, anchor: bool = True) -> None:
    with AuditWriter(path, key=key, clock=_clock(), fsync=False, anchor=anchor) as log:
        for i in range(n):
            log.append(
                "controller", "cabinet.command", {"cabinet": "C1", "command_id": f"cmd-{i}", "n": i}
            )


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _save(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _rehash(line: bytes, **changes: Any) -> bytes:
    """An entry edited *and* re-hashed, as a careful forger without the key would."""
    record = json.loads(line)
    record.update(changes)
    record.pop("mac", None)
    body = {k: v for k, v in record.items() if k != "hash"}
    record["hash"] = hashlib.sha256(canonical_json(body)).hexdigest()
    return canonical_json(record)


def _fails_at(path: Path, index: int, *, key: bytes | None = None) -> str:
    with pytest.raises(AuditError) as info:
        verify(path, key=key)
    assert info.value.index == index, info.value.reason
    return info.value.reason


# -- the entry format --------------------------------------------------------------------------


def test_entry_hash_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 2)
    first, second = (json.loads(line) for line in _lines(path))
    body = (
        '{"actor":"controller","index":0,"kind":"cabinet.command",'
        '"payload":{"cabinet":"C1","command_id":"cmd-0","n":0},'
        f'"prev_hash":"{GENESIS_HASH}","timestamp":"2025-03-01T09:00:00.000000Z"}}'
    )
    assert first["hash"] == hashlib.sha256(body.encode()).hexdigest()
    assert second["prev_hash"] == first["hash"] and second["index"] == 1
    assert "mac" not in first
    verify(path)


def test_chain_is_pure_and_matches_the_file(tmp_path: Path) -> None:
    chain = AuditChain(key=KEY)
    entries = [chain.append("officer:O17", "retrieve", {"slot": "01-002"}, T0) for _ in range(3)]
    assert verify_lines([e.to_line() for e in entries], key=KEY) == chain.head
    assert chain.head == AuditHead(3, entries[-1].hash)


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x"},
        {"card": {"date_of_birth": "x"}},
        {"items": [{"hkic": "x"}]},
        {"ratio": 0.5},
        {"note": "x" * 300},
        {"note": "line\nbreak"},
        {"BadKey": 1},
        {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}},
        {"blob": b"bytes"},
    ],
)
def test_payload_is_ids_and_codes_only(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        AuditChain().append("controller", "x", payload, T0)
    assert "x" * 300 not in str(info.value)


def test_actor_kind_and_time_are_checked() -> None:
    chain = AuditChain()
    for actor, kind in [("", "k"), ("a b", "k"), ("a", ""), ("a", "k\n")]:
        with pytest.raises(ValueError):
            chain.append(actor, kind, {}, T0)
    with pytest.raises(ValueError):
        chain.append("a", "k", {}, datetime(2025, 3, 1))
    assert chain.head.count == 0


# -- tampering, each found at the right entry --------------------------------------------------


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write(path, 6)
    verify(path)
    return path


def test_edited_entry_is_found_at_that_entry(log: Path) -> None:
    lines = _lines(log)
    lines[3] = lines[3].replace(b'"cmd-3"', b'"cmd-9"')
    _save(log, lines)
    assert "hash" in _fails_at(log, 3)


def test_edited_and_rehashed_entry_breaks_the_next_link(log: Path) -> None:
    lines = _lines(log)
    lines[3] = _rehash(lines[3], payload={"cabinet": "C1", "command_id": "cmd-9", "n": 3})
    _save(log, lines)
    assert "chain" in _fails_at(log, 4)


def test_edited_last_entry_rehashed_is_caught_by_the_anchor(log: Path) -> None:
    lines = _lines(log)
    lines[5] = _rehash(lines[5], kind="forged")
    _save(log, lines)
    assert "anchor" in _fails_at(log, 5)


def test_reformatted_entry_is_an_edit(log: Path) -> None:
    lines = _lines(log)
    lines[2] = json.dumps(json.loads(lines[2]), indent=1).replace("\n", "").encode()
    _save(log, lines)
    assert "canonical" in _fails_at(log, 2)


def test_removed_entry_is_found_where_it_was(log: Path) -> None:
    lines = _lines(log)
    del lines[2]
    _save(log, lines)
    assert "sequence" in _fails_at(log, 2)


def test_removed_first_entry(log: Path) -> None:
    _save(log, _lines(log)[1:])
    _fails_at(log, 0)


def test_removed_last_entries_are_found_by_the_anchor(log: Path) -> None:
    _save(log, _lines(log)[:4])
    assert "end" in _fails_at(log, 4)


def test_inserted_entry_is_found_where_it_was_put(log: Path) -> None:
    lines = _lines(log)
    lines.insert(2, lines[4])
    _save(log, lines)
    _fails_at(log, 2)


def test_inserted_entry_with_a_forged_chain_breaks_the_next_index(log: Path) -> None:
    lines = _lines(log)
    previous = json.loads(lines[1])["hash"]
    forged = _rehash(lines[1], index=2, prev_hash=previous, kind="forged")
    lines.insert(2, forged)
    _save(log, lines)
    assert "sequence" in _fails_at(log, 3)


def test_reordered_entries_are_found_at_the_first_moved(log: Path) -> None:
    lines = _lines(log)
    lines[1], lines[4] = lines[4], lines[1]
    _save(log, lines)
    _fails_at(log, 1)


def test_torn_or_garbage_lines(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[:-10])
    assert "torn" in _fails_at(log, 5)
    lines = data.splitlines()
    lines[2] = b"garbage"
    _save(log, lines)
    _fails_at(log, 2)


# -- with a key: rewrites are found too --------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write(path, 6, key=KEY)
    verify(path, key=KEY)
    verify(path)  # an auditor without the key still checks the chain
    return path


def test_rehashed_edit_is_found_at_that_entry_with_the_key(keyed: Path) -> None:
    lines = _lines(keyed)
    lines[3] = _rehash(lines[3], kind="forged")
    _save(keyed, lines)
    assert "MAC" in _fails_at(keyed, 3, key=KEY)


def test_full_rewrite_without_the_key_is_found_at_entry_zero(keyed: Path, tmp_path: Path) -> None:
    forged = tmp_path / "forged.jsonl"
    _write(forged, 6)  # a complete, valid, unkeyed chain with a matching anchor
    keyed.write_bytes(forged.read_bytes())
    head_path(keyed).write_bytes(head_path(forged).read_bytes())
    verify(keyed)  # consistent as a plain chain …
    _fails_at(keyed, 0, key=KEY)  # … but not one the key holder wrote


def test_forged_anchor_is_refused(keyed: Path) -> None:
    _save(keyed, _lines(keyed)[:3])
    head_path(keyed).write_bytes(
        json.dumps({"count": 3, "hash": json.loads(_lines(keyed)[2])["hash"]}).encode()
    )
    with pytest.raises(AuditError) as info:
        verify(keyed, key=KEY)
    assert "anchor" in info.value.reason


def test_wrong_key(keyed: Path) -> None:
    _fails_at(keyed, 0, key=bytes(32))


# -- the writer ---------------------------------------------------------------------------------


def test_writer_resumes_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3, key=KEY)
    _write(path, 2, key=KEY)
    verify(path, key=KEY, anchored=True)
    assert [json.loads(line)["index"] for line in _lines(path)] == [0, 1, 2, 3, 4]


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, fsync=False) as first:
        first.append("a", "k", {})
        with pytest.raises(AuditError, match="another writer"):
            AuditWriter(path, fsync=False)
    AuditWriter(path, fsync=False).close()


def test_crash_between_entry_and_anchor_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3, key=KEY)
    anchor = head_path(path).read_bytes()
    _write(path, 1, key=KEY)
    head_path(path).write_bytes(anchor)  # the anchor write of entry 3 never happened
    verify(path, key=KEY)  # one entry ahead of the anchor is a crash, not tampering
    with AuditWriter(path, key=KEY, fsync=False) as log:
        assert log.head.count == 4
    assert json.loads(head_path(path).read_bytes())["count"] == 4


def test_torn_tail_is_dropped_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    with path.open("ab") as f:
        f.write(b'{"actor":"contr')  # power lost mid-write: never acknowledged
    with AuditWriter(path, fsync=False, clock=_clock()) as log:
        assert log.head.count == 4
    last = json.loads(_lines(path)[-1])
    assert last["kind"] == "audit.torn_tail_dropped" and last["payload"] == {"bytes": 15}
    verify(path)


def test_writer_refuses_to_extend_a_log_it_cannot_trust(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"cmd-2"', b'"cmd-7"')
    _save(path, lines)
    with pytest.raises(AuditError) as info:
        AuditWriter(path, fsync=False)
    assert info.value.index == 2


def test_writer_repr_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, key=KEY, fsync=True) as log:
        log.append("a", "k", {"id": "x"})
        assert KEY.hex() not in repr(log) and "keyed=True" in repr(log)
    assert path.stat().st_mode & 0o077 == 0


@given(
    st.lists(
        st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
            st.integers() | st.text(max_size=10).filter(str.isprintable),
            max_size=3,
        ),
        max_size=8,
    )
)
def test_any_log_verifies_and_any_single_byte_change_fails(payloads: list[dict[str, Any]]) -> None:
    chain = AuditChain(key=KEY)
    lines = [chain.append("controller", "k", p, T0).to_line() for p in payloads]
    assert verify_lines(lines, key=KEY, head=chain.head) == chain.head
    for n, line in enumerate(lines):
        changed = list(lines)
        mid = len(line) // 2
        changed[n] = line[:mid] + bytes([line[mid] ^ 0x01]) + line[mid + 1 :]
        with pytest.raises(AuditError) as info:
            verify_lines(changed, key=KEY, head=chain.head)
        assert info.value.index == n


def test_fields_of_the_wrong_type_are_refused(log: Path) -> None:
    lines = _lines(log)
    lines[1] = _rehash(lines[1], index=True)  # true == 1 in Python: must not pass as index 1
    _save(log, lines)
    assert "type" in _fails_at(log, 1)


# -- group commit: append_many -----------------------------------------------------------------


def _items(start: int, n: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("controller", "cabinet.command", {"cabinet": "C1", "command_id": f"cmd-{i}", "n": i})
        for i in range(start, start + n)
    ]


def _write_batches(path: Path, sizes: list[int], *, key: bytes | None = None) -> None:
    with AuditWriter(path, key=key, clock=_clock(), fsync=False) as log:
        done = 0
        for size in sizes:
            batch = log.append_many(_items(done, size))
            assert not batch.refused
            done += size


class _Calls:
    """Counts calls of an ``os`` function on the audit log's file (by inode), passing them on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, path: Path) -> None:
        self.calls = 0
        self._path = path
        real = getattr(os, name)

        def counting(fd: int, *args: Any) -> Any:
            if os.fstat(fd).st_ino == self._path.stat().st_ino:
                self.calls += 1
            return real(fd, *args)

        monkeypatch.setattr(os, name, counting)


def test_append_many_writes_one_batch_durably_with_one_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, key=KEY, clock=_clock(), fsync=True) as log:
        log.append("controller", "controller.started", {"site": "S1"})
        writes = _Calls(monkeypatch, "write", path)
        fsyncs = _Calls(monkeypatch, "fsync", path)
        anchors: list[AuditHead] = []
        real_anchor = AuditWriter._write_anchor

        def anchor(self: AuditWriter, head: AuditHead) -> None:
            anchors.append(head)
            real_anchor(self, head)

        monkeypatch.setattr(AuditWriter, "_write_anchor", anchor)
        batch = log.append_many(_items(0, 40))
        assert (writes.calls, fsyncs.calls) == (1, 1)
        assert anchors == [log.head] == [AuditHead(41, batch.entries[-1].hash)]
    assert [e.index for e in batch.entries] == list(range(1, 41)) and batch.refused == ()
    verify(path, key=KEY, anchored=True)
    assert [json.loads(line)["hash"] for line in _lines(path)[1:]] == [
        e.hash for e in batch.entries
    ]


def test_append_many_matches_append_byte_for_byte(tmp_path: Path) -> None:
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    _write(one, 30, key=KEY)
    _write_batches(many, [1, 12, 17], key=KEY)
    assert one.read_bytes() == many.read_bytes()
    assert head_path(one).read_bytes() == head_path(many).read_bytes()


def test_refused_items_are_reported_and_the_rest_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    items: list[Any] = _items(0, 6)
    items[1] = ("controller", "card.sensed", {"name": "CHAN Tai Man"})
    items[3] = ("not a token", "card.sensed", {})
    items[4] = ("controller", "card.sensed", ["not", "a", "mapping"])
    with AuditWriter(path, key=KEY, clock=_clock(), fsync=False) as log:
        batch = log.append_many(items)
        assert log.head == AuditHead(3, batch.entries[-1].hash)
    assert [position for position, _ in batch.refused] == [1, 3, 4]
    assert [type(exc) for _, exc in batch.refused] == [ValueError, ValueError, TypeError]
    assert all("CHAN" not in str(exc) for _, exc in batch.refused)
    assert [e.payload["n"] for e in batch.entries] == [0, 2, 5]
    assert [e.index for e in batch.entries] == [0, 1, 2]
    verify(path, key=KEY, anchored=True)
    assert b"CHAN" not in path.read_bytes()


def test_a_refused_payload_leaves_the_chain_head_where_it_was() -> None:
    chain = AuditChain(key=KEY)
    chain.append("controller", "k", {"n": 1}, T0)
    before = chain.head
    for payload in ({"hkid": "A1234563"}, {"x": 0.5}, {"x": "y" * 300}):
        with pytest.raises(ValueError):
            chain.append("controller", "k", payload, T0)
        assert chain.head == before
    with pytest.raises(TypeError):
        chain.append("controller", "k", [1], T0)  # type: ignore[arg-type]
    assert chain.head == before


def test_a_batch_that_is_all_refused_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, clock=_clock(), fsync=False) as log:
        log.append_many(_items(0, 2))
        data, anchor = path.read_bytes(), head_path(path).read_bytes()
        batch = log.append_many([("controller", "k", {"name": "x"})])
        assert batch.entries == () and [p for p, _ in batch.refused] == [0]
        assert log.append_many([]) == type(batch)((), ())
        assert (path.read_bytes(), head_path(path).read_bytes()) == (data, anchor)


def test_too_many_items_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, clock=_clock(), fsync=False) as log:
        with pytest.raises(ValueError, match=str(MAX_AHEAD)):
            log.append_many(_items(0, MAX_AHEAD + 1))
        assert log.head.count == 0
        assert len(log.append_many(_items(0, MAX_AHEAD)).entries) == MAX_AHEAD
    assert path.read_bytes().count(b"\n") == MAX_AHEAD


def test_a_failing_clock_leaves_nothing_of_the_batch_in_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ticks = _clock()
    calls = 0

    def clock() -> datetime:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("clock unavailable")
        return ticks()

    with AuditWriter(path, clock=clock, fsync=False) as log:
        log.append_many(_items(0, 2))
        with pytest.raises(RuntimeError):
            log.append_many(_items(2, 3))  # fails at its second item
        assert log.head.count == 2
        log.append_many(_items(2, 3))
    verify(path, anchored=True)
    assert [json.loads(line)["payload"]["n"] for line in _lines(path)] == [0, 1, 2, 3, 4]


def test_a_failed_batch_write_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, clock=_clock(), fsync=True) as log:
        log.append_many(_items(0, 2))

        def full(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(AuditError, match="write failed") as info:
            log.append_many(_items(2, 3))
        assert info.value.index == 2 and isinstance(info.value.__cause__, OSError)
        monkeypatch.undo()
        for attempt in (lambda: log.append_many(_items(5, 1)), lambda: log.append("a", "k", {})):
            with pytest.raises(AuditError, match="stopped"):
                attempt()


def test_append_still_raises_for_a_refused_payload(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, clock=_clock(), fsync=False) as log:
        log.append("a", "k", {"n": 1})
        with pytest.raises(ValueError):
            log.append("a", "k", {"portrait": "x"})
        assert log.head.count == 1
        assert log.append("a", "k", {"n": 2}).index == 1
    verify(path, anchored=True)


# -- a crash between a batch and its anchor -----------------------------------------------------


def _crashed_before_anchor(path: Path, base: int, ahead: int, *, key: bytes | None = KEY) -> None:
    """``base`` entries anchored, then ``ahead`` more whose anchor write never happened."""
    _write_batches(path, [base] if base else [], key=key)
    anchor = head_path(path).read_bytes()
    with AuditWriter(path, key=key, clock=_clock(), fsync=False) as log:
        while ahead:
            ahead -= len(log.append_many(_items(0, min(ahead, MAX_AHEAD))).entries)
    head_path(path).write_bytes(anchor)


@pytest.mark.parametrize(
    ("base", "ahead"), [(3, 2), (3, 17), (3, MAX_AHEAD), (0, 5), (0, MAX_AHEAD)]
)
def test_crash_between_batch_and_anchor_is_repaired(tmp_path: Path, base: int, ahead: int) -> None:
    path = tmp_path / "audit.jsonl"
    _crashed_before_anchor(path, base, ahead)
    assert json.loads(head_path(path).read_bytes())["count"] == base
    verify(path, key=KEY, anchored=True)  # up to MAX_AHEAD behind is a crash, not tampering
    with AuditWriter(path, key=KEY, fsync=False) as log:
        assert log.head.count == base + ahead
    assert json.loads(head_path(path).read_bytes())["count"] == base + ahead
    verify(path, key=KEY, anchored=True)


@pytest.mark.parametrize("base", [0, 3])
def test_more_than_max_ahead_after_the_anchor_is_refused(tmp_path: Path, base: int) -> None:
    path = tmp_path / "audit.jsonl"
    _crashed_before_anchor(path, base, MAX_AHEAD + 1)
    anchor = head_path(path).read_bytes()
    with pytest.raises(AuditError, match="entries after the anchor") as info:
        verify(path, key=KEY)
    assert info.value.index == base + MAX_AHEAD
    with pytest.raises(AuditError, match="entries after the anchor") as info:
        AuditWriter(path, key=KEY, fsync=False)
    assert info.value.index == base + MAX_AHEAD
    assert head_path(path).read_bytes() == anchor  # not "repaired"


@pytest.mark.parametrize("ahead", [0, 1, 5, MAX_AHEAD])
def test_an_anchor_naming_another_entry_is_tampering(tmp_path: Path, ahead: int) -> None:
    path = tmp_path / "audit.jsonl"
    _crashed_before_anchor(path, 6, ahead)
    other = json.loads(_lines(path)[4])["hash"]  # entry 4's hash, anchored as if it were entry 5
    head_path(path).write_bytes(AuditHead(6, other).to_json(KEY))  # a valid MAC, even
    with pytest.raises(AuditError, match="another hash") as info:
        verify(path, key=KEY)
    assert info.value.index == 5
    with pytest.raises(AuditError, match="another hash") as info:
        AuditWriter(path, key=KEY, fsync=False)
    assert info.value.index == 5


def test_an_empty_anchor_the_log_does_not_chain_to_is_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _crashed_before_anchor(path, 0, 4)
    head_path(path).write_bytes(AuditHead(0, "1" * 64).to_json(KEY))
    with pytest.raises(AuditError):
        verify(path, key=KEY)
    with pytest.raises(AuditError):
        AuditWriter(path, key=KEY, fsync=False)


def test_an_edit_in_the_unanchored_tail_is_not_anchored_over(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _crashed_before_anchor(path, 3, 5, key=None)
    lines = _lines(path)
    lines[5] = _rehash(lines[5], kind="forged")  # breaks the link from entry 6
    _save(path, lines)
    anchor = head_path(path).read_bytes()
    with pytest.raises(AuditError) as info:
        verify(path)
    assert info.value.index == 6
    with pytest.raises(AuditError, match="chain") as info:
        AuditWriter(path, fsync=False)
    assert info.value.index == 6
    assert head_path(path).read_bytes() == anchor


def test_a_removed_tail_entry_is_found_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _crashed_before_anchor(path, 3, 5)
    lines = _lines(path)
    del lines[5]
    _save(path, lines)
    with pytest.raises(AuditError, match="sequence: verify the log"):
        AuditWriter(path, key=KEY, fsync=False)  # the last entry's index is not its position
    assert "sequence" in _fails_at(path, 5, key=KEY)


def test_a_long_log_opens_by_reading_only_its_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    total, behind = 20_000, 200
    with AuditWriter(path, key=KEY, clock=lambda: T0, fsync=False) as log:
        for start in range(0, total - behind, 200):
            log.append_many(_items(start, 200))
    anchor = head_path(path).read_bytes()
    with AuditWriter(path, key=KEY, clock=lambda: T0, fsync=False) as log:
        log.append_many(_items(total - behind, behind))
    head_path(path).write_bytes(anchor)
    size = path.stat().st_size
    longest = max(len(line) + 1 for line in _lines(path)[-(behind + 2) :])
    read = 0
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal read
        data = real_pread(fd, n, offset)
        read += len(data)
        return data

    monkeypatch.setattr(os, "pread", pread)
    with AuditWriter(path, key=KEY, fsync=False) as log:
        assert log.head.count == total
    # The torn-tail check, the last entry, then the anchored entry and the 200 after it:
    # each read backwards in chunks of 8 KiB, so at most a chunk more than the lines.
    assert read <= (1 + 1 + behind + 1) * longest + 3 * 8192
    assert read < size // 20
    assert json.loads(head_path(path).read_bytes())["count"] == total
    monkeypatch.undo()
    verify(path, key=KEY, anchored=True)


@given(
    n=st.integers(0, 2 * MAX_AHEAD + 10),
    sizes=st.lists(st.integers(1, MAX_AHEAD), min_size=1, max_size=20),
    crash=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_any_split_into_batches_gives_the_same_log(n: int, sizes: list[int], crash: bool) -> None:
    clock = _clock()
    chain = AuditChain(key=KEY)
    expected = b"".join(chain.append(*item, clock()).to_line() + b"\n" for item in _items(0, n))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        with AuditWriter(path, key=KEY, clock=_clock(), fsync=False) as log:
            done, turn, anchor = 0, 0, head_path(path).read_bytes()
            while done < n:
                size = min(sizes[turn % len(sizes)], n - done)
                anchor = head_path(path).read_bytes()
                assert len(log.append_many(_items(done, size)).entries) == size
                done, turn = done + size, turn + 1
            assert log.head == chain.head
        assert path.read_bytes() == expected
        assert verify_lines(_lines(path), key=KEY) == chain.head
        if crash:  # the last batch's anchor never written
            head_path(path).write_bytes(anchor)
        verify(path, key=KEY, anchored=True)
        with AuditWriter(path, key=KEY, fsync=False) as reopened:
            assert reopened.head == chain.head
        verify(path, key=KEY, anchored=True)
        assert head_path(path).read_bytes() == chain.head.to_json(KEY)
