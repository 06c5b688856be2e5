"""The emulated cabinet's flash: its protocol state and physical contents, in an append-only journal.

Why a journal and not a state file rewritten each time: a 500-slot cabinet's
:class:`~ecabinet.protocol.CabinetState` is 40 kB of JSON (up to ~200 kB with 256 recorded acks),
and the protocol asks for it to be made durable about twice per deposit (its Rule 4,
write-ahead).  Measured on the development VM (ext4): rewriting the state with fsync and rename
added ~20 ms per deposit (10,000 deposits: over 3 minutes more); appending the ~900 bytes that
changed and ``fdatasync``-ing them adds 0.1-1 ms to the protocol's own ~6 ms
(tests/test_cabinet_device.py::test_journal_cost_per_deposit prints the figures).

File ``cabinet.journal`` in the state directory, one record per line::

    <crc32 of the JSON, 8 hex digits> <space> <JSON object> <newline>

Records: ``f`` (full: the whole CabinetState and every card and open door; always the first),
``d`` (delta of a CabinetState against the previous one), ``p`` (one slot's physical contents).

Rule 1: ``persist`` appends and syncs before it returns: the caller acts only after that (the
        protocol's write-ahead rule).  ``record_physical`` appends without a sync of its own; the
        next ``persist`` syncs it with the rest, and it is ordered before it in the file.
Rule 2: a torn tail (a crash mid-write: a last line without newline, or whose CRC fails) is cut off
        on load, which then sees the state before that record; nothing after the tail was ever
        acknowledged.  A bad record *followed by good ones* is not a torn write: the load refuses
        (:class:`JournalError`) rather than guess which part to believe.
Rule 3: compaction writes one full record to a temporary file, syncs it, renames it over the
        journal and syncs the directory (rename(2) is atomic; POSIX fsync(2) on the directory makes
        it durable on Linux), so a crash leaves the old journal or the new, never a mix.
Rule 4: ``durable=False`` skips every sync (load tests only: a machine crash may then lose the
        latest records; a process crash does not, the page cache has them).  The default is durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from ecabinet.device import PhysicalState
from ecabinet.errors import CabinetError
from ecabinet.protocol import CabinetState, RecordedAck, SlotRecord

__all__ = ["JOURNAL_NAME", "DeviceJournal", "JournalError", "JournalStats"]

JOURNAL_NAME: Final = "cabinet.journal"
_LOCK_NAME: Final = "cabinet.lock"
_SCALARS: Final = (
    "command_counter",
    "report_counter_reserved",
    "inventory_sequence",
    "clean_shutdown",
)
#: Compact once the journal is this many times the size of a full record (and at least 1 MiB).
_COMPACT_FACTOR: Final = 8
_COMPACT_MIN_BYTES: Final = 1 << 20


class JournalError(CabinetError):
    """The state directory is unusable: corrupt beyond a torn tail, locked, or another cabinet's."""


@dataclass(slots=True)
class JournalStats:
    records: int = 0
    bytes: int = 0
    syncs: int = 0
    compactions: int = 0


def _line(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _parse(line: bytes) -> dict[str, Any] | None:
    """A record, or None if the line is not one intact record."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("t") in ("f", "d", "p") else None


def _same(a: object, b: object) -> bool:
    return a is b or a == b


class DeviceJournal:
    """One cabinet's state directory.  ``load()`` once, then ``persist`` / ``record_physical``."""

    def __init__(
        self, directory: str | os.PathLike[str], *, durable: bool = True, compact_bytes: int = 0
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / JOURNAL_NAME
        self.durable = durable
        self.stats = JournalStats()
        self._compact_fixed = compact_bytes  # 0: max(1 MiB, 8 x a full record)
        self._compact_at = compact_bytes or _COMPACT_MIN_BYTES
        self._fd = -1
        self._size = 0
        self._unsynced = False
        self._last: CabinetState | None = None
        self._cards: dict[tuple[int, int], str] = {}
        self._open: set[tuple[int, int]] = set()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalError("another cabinet process uses this state directory") from None
            raise

    def __repr__(self) -> str:
        return f"DeviceJournal({str(self.directory)!r}, durable={self.durable}, records={self.stats.records})"

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> tuple[CabinetState | None, PhysicalState]:
        """The last persisted state (None for a new cabinet) and the physical contents."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / (JOURNAL_NAME + ".tmp")).unlink()  # a compaction that never finished
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, PhysicalState()
        records, good_bytes = self._records(data)
        state = self._replay(records)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        if good_bytes < len(data):
            os.ftruncate(self._fd, good_bytes)  # Rule 2: the torn tail goes
            self._sync(self._fd)
        self._size = good_bytes
        self._last = state
        self._set_compact_at(len(records[0][1]))
        return state, self.physical()

    def _records(self, data: bytes) -> tuple[list[tuple[dict[str, Any], bytes]], int]:
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (torn)
        records: list[tuple[dict[str, Any], bytes]] = []
        offset = 0
        bad: int | None = None
        for number, line in enumerate(complete):
            record = _parse(line)
            if record is None:
                bad = number if bad is None else bad
            elif bad is not None:
                raise JournalError(f"journal record {bad + 1} is corrupt and records follow it")
            else:
                records.append((record, line))
                offset += len(line) + 1
        del tail  # never a whole record: nothing after it was acknowledged
        if not records or records[0][0]["t"] != "f":
            raise JournalError("journal does not start with a full record")
        return records, offset

    def _replay(self, records: list[tuple[dict[str, Any], bytes]]) -> CabinetState:
        try:
            first = records[0][0]
            base = CabinetState.model_validate(first["state"])
            fields: dict[str, Any] = {name: getattr(base, name) for name in _SCALARS}
            per_drawer = base.slots_per_drawer
            slots = list(base.slots)
            recent = list(base.recent)
            self._set_physical(first)
            for record, _ in records[1:]:
                kind = record["t"]
                if kind == "p":
                    self._apply_physical(
                        record["d"], record["i"], record["c"], bool(record["o"]), base
                    )
                elif kind == "d":
                    fields.update({k: v for k, v in record["v"].items() if k in _SCALARS})
                    for raw in record["s"]:
                        slot = SlotRecord.model_validate(raw)
                        slots[(slot.drawer - 1) * per_drawer + slot.index - 1] = slot
                    keep = int(record["rk"])
                    recent = recent[len(recent) - keep :] if keep else []
                    recent.extend(RecordedAck.model_validate(r) for r in record["ra"])
                else:  # a second full record (not written by this code, but valid)
                    base = CabinetState.model_validate(record["state"])
                    fields = {name: getattr(base, name) for name in _SCALARS}
                    per_drawer = base.slots_per_drawer
                    slots, recent = list(base.slots), list(base.recent)
                    self._set_physical(record)
            return CabinetState.model_validate(
                {
                    "drawers": base.drawers,
                    "slots_per_drawer": base.slots_per_drawer,
                    **fields,
                    "slots": slots,
                    "recent": recent,
                }
            )
        except (ValidationError, KeyError, TypeError, ValueError, IndexError) as exc:
            # Only the exception type: a validation error's text may quote the record.
            raise JournalError(f"journal replay failed ({type(exc).__name__})") from None

    def _set_physical(self, record: dict[str, Any]) -> None:
        self._cards = {(int(d), int(i)): str(s) for d, i, s in record["cards"]}
        self._open = {(int(d), int(i)) for d, i in record["open"]}

    def _apply_physical(
        self, drawer: int, index: int, card: str | None, door_open: bool, geometry: CabinetState
    ) -> None:
        if not (1 <= drawer <= geometry.drawers and 1 <= index <= geometry.slots_per_drawer):
            raise ValueError("physical record outside the cabinet")
        position = (drawer, index)
        if card is None:
            self._cards.pop(position, None)
        else:
            self._cards[position] = str(card)
        if door_open:
            self._open.add(position)
        else:
            self._open.discard(position)

    # -- writing -------------------------------------------------------------------------------

    def physical(self) -> PhysicalState:
        return PhysicalState(cards=dict(self._cards), open_doors=frozenset(self._open))

    def persist(self, state: CabinetState) -> None:
        """Make ``state`` durable (and every physical record before it) before returning."""
        last = self._last
        if last is None or self._fd < 0:
            self._rewrite(state)
            return
        if (last.drawers, last.slots_per_drawer) != (state.drawers, state.slots_per_drawer):
            raise JournalError("the cabinet's geometry cannot change")
        delta = self._delta(last, state)
        if delta is not None:
            self._append(_line(delta))
        if delta is not None or self._unsynced:
            self._sync(self._fd)
            self._unsynced = False
        self._last = state
        if self._size > self._compact_at:
            self._rewrite(state)

    def record_physical(self, drawer: int, index: int, card: str | None, door_open: bool) -> None:
        """One slot's physical contents now (Rule 1: synced by the next ``persist``)."""
        position = (drawer, index)
        if card is None:
            self._cards.pop(position, None)
        else:
            self._cards[position] = card
        if door_open:
            self._open.add(position)
        else:
            self._open.discard(position)
        if self._fd >= 0:
            self._append(_line({"t": "p", "d": drawer, "i": index, "c": card, "o": door_open}))
            self._unsynced = True
        # Before the first persist there is no journal yet: the full record will carry it.

    def close(self) -> None:
        """Close without writing anything (a power loss and a clean stop look the same here)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- internals -----------------------------------------------------------------------------

    def _delta(self, last: CabinetState, state: CabinetState) -> dict[str, Any] | None:
        values = {
            name: getattr(state, name)
            for name in _SCALARS
            if getattr(state, name) != getattr(last, name)
        }
        # Identity first: the protocol keeps a slot's record object until the slot changes.
        slots = [
            new.model_dump(mode="json")
            for old, new in zip(last.slots, state.slots, strict=True)
            if old is not new and old != new
        ]
        keep, added = self._recent_delta(last.recent, state.recent)
        if not values and not slots and keep == len(last.recent) and not added:
            return None
        return {
            "t": "d",
            "v": values,
            "s": slots,
            "rk": keep,
            "ra": [r.model_dump(mode="json") for r in added],
        }

    @staticmethod
    def _recent_delta(
        old: tuple[RecordedAck, ...], new: tuple[RecordedAck, ...]
    ) -> tuple[int, tuple[RecordedAck, ...]]:
        """(how many of the old entries are kept at the front of new, what follows them).

        The protocol's recent cache only appends and forgets its oldest, so ``new`` is normally
        a suffix of ``old`` plus a few entries; anything else is written out whole.
        """
        if not old:
            return 0, new
        for j in range(len(new) - 1, -1, -1):
            if _same(new[j], old[-1]):
                kept = new[: j + 1]
                if all(_same(a, b) for a, b in zip(kept, old[len(old) - len(kept) :], strict=True)):
                    return len(kept), new[j + 1 :]
                break
        return 0, new

    def _append(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(line)
        self.stats.records += 1
        self.stats.bytes += len(line)

    def _rewrite(self, state: CabinetState) -> None:
        """Rule 3: a full record in a new file, renamed over the journal."""
        line = _line(
            {
                "t": "f",
                "state": state.model_dump(mode="json"),
                "cards": [[d, i, s] for (d, i), s in sorted(self._cards.items())],
                "open": [[d, i] for d, i in sorted(self._open)],
            }
        )
        tmp = self.directory / (JOURNAL_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            self._sync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.durable:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        if self._fd >= 0:
            self.stats.compactions += 1
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(line)
        self._unsynced = False
        self._last = state
        self._set_compact_at(len(line))
        self.stats.records += 1
        self.stats.bytes += len(line)

    def _set_compact_at(self, full_record_bytes: int) -> None:
        self._compact_at = self._compact_fixed or max(
            _COMPACT_MIN_BYTES, _COMPACT_FACTOR * full_record_bytes
        )

    def _sync(self, fd: int) -> None:
        if self.durable:
            # fdatasync: the data and the size (needed to read it back), not the timestamps.
            os.fdatasync(fd)
            self.stats.syncs += 1
