"""ecabinet.audit: the chain, the writer, and every kind of tampering found at its entry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecabinet.audit import (
    GENESIS_HASH,
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
