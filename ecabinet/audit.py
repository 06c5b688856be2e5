"""The audit log: append-only, hash-chained JSON lines, with an optional keyed MAC and anchor.

Each line is the canonical JSON (:func:`ecabinet.security.canonical_json`) of one entry::

    {"actor":…,"hash":…,"index":n,"kind":…,"payload":{…},"prev_hash":…,"timestamp":…[,"mac":…]}

``hash`` is SHA-256 over the canonical encoding of the entry without ``hash`` and ``mac``;
``prev_hash`` is the previous entry's ``hash`` (64 zeros for entry 0); ``index`` is the entry's
position.  So an edited entry no longer matches its hash, and a removed, inserted or reordered one
breaks the index sequence or the chain, at the position where it happened (:func:`verify`).

What the plain chain cannot see, and what we chose to add:

- **A rewrite of the whole file.**  SHA-256 needs no secret, so whoever can write the file can
  recompute every hash.  With a key, each entry also carries ``mac`` = HMAC-SHA256(key, label ‖
  hash): without the key no entry can be forged, and a rewrite fails at the first rewritten entry.
  We MAC every entry rather than only the head so that verification names the entry, and an
  auditor without the key can still check the chain itself.
- **Entries cut from the end.**  A prefix of a valid chain is a valid chain.  The writer therefore
  keeps an *anchor* next to the log (``<log>.head``: entry count and last hash, MAC'd when keyed),
  replaced atomically after each append or batch.  The log may run up to :data:`MAX_AHEAD`
  entries ahead of its anchor (a crash between writing a batch and its anchor), provided the first
  entry after the anchored ones chains to the anchor; the next writer repairs that.  Without a
  key the anchor catches accidents, not an attacker who also rewrites it; with a key it catches
  both.
- **Group commit.**  :meth:`AuditWriter.append_many` writes a batch of entries with one write,
  one fsync and one anchor update, so the cost of durability is paid per batch, not per entry.
- **Personal data.**  Payloads are ids and codes (DESIGN §3 data minimisation): the writer refuses
  floats, long or unprintable strings and the field names of personal data in :data:`PERSONAL_FIELDS`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from ecabinet.errors import AuditError
from ecabinet.security import KEY_BYTES, canonical_json

__all__ = [
    "GENESIS_HASH",
    "MAX_AHEAD",
    "PERSONAL_FIELDS",
    "AuditBatch",
    "AuditChain",
    "AuditEntry",
    "AuditHead",
    "AuditWriter",
    "head_path",
    "verify",
    "verify_lines",
]

GENESIS_HASH: Final = "0" * 64

#: The most entries one batch may hold, and so the most the log may run ahead of its anchor after
#: a crash between writing a batch and writing its anchor.  Bounded so that opening a log after a
#: crash reads a bounded tail, and so that a log far ahead of its anchor stays an error
#: (entries appended by someone else, or an anchor restored from an old copy).
MAX_AHEAD: Final = 256

#: Field names that would carry personal data (DESIGN §3): refused in any payload, at any depth.
PERSONAL_FIELDS: Final = frozenset(
    {
        "name", "surname", "given_names", "full_name", "chinese_name", "date_of_birth", "dob",
        "birth_date", "sex", "gender", "nationality", "address", "phone", "email", "hkid",
        "hkic", "hkic_number", "id_number", "document_number", "mrz", "portrait", "photo",
        "fingerprint", "fingerprints", "biometrics",
    }
)  # fmt: skip

_ENTRY_LABEL: Final = b"perso/v1 audit entry\x00"
_HEAD_LABEL: Final = b"perso/v1 audit head\x00"
_KEY_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TOKEN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}")
_HASH: Final = re.compile(r"[0-9a-f]{64}")
_FIELDS: Final = frozenset({"index", "timestamp", "actor", "kind", "payload", "prev_hash", "hash"})
_MAX_STRING: Final = 256
_MAX_DEPTH: Final = 4
_MAX_LINE: Final = 64 * 1024
_CHUNK: Final = 8192


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_payload(value: Any, depth: int = 0, where: str = "payload") -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested too deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or _KEY_NAME.fullmatch(key) is None:
                raise ValueError(f"{where}: keys are lower-case identifiers")
            if key in PERSONAL_FIELDS:
                raise ValueError(f"{where}.{key}: personal data does not go into the audit log")
            _check_payload(item, depth + 1, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            _check_payload(item, depth + 1, f"{where}[{n}]")
    elif isinstance(value, str):
        if len(value) > _MAX_STRING or not value.isprintable():
            raise ValueError(f"{where}: strings are printable and at most {_MAX_STRING} characters")
    elif value is not None and not isinstance(value, bool | int):
        raise ValueError(f"{where}: values are strings, ints, bools, null, lists and objects")


def _entry_mac(key: bytes, entry_hash: str) -> str:
    return hmac.digest(key, _ENTRY_LABEL + entry_hash.encode(), "sha256").hex()


def _head_mac(key: bytes, count: int, last_hash: str) -> str:
    return hmac.digest(key, _HEAD_LABEL + f"{count}:{last_hash}".encode(), "sha256").hex()


def _check_key(key: bytes | None) -> None:
    if key is not None and len(key) < KEY_BYTES:
        raise ValueError("an audit key is at least 32 bytes")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    index: int
    timestamp: str
    actor: str
    kind: str
    payload: Mapping[str, Any]
    prev_hash: str
    hash: str
    mac: str | None = None

    def body(self) -> dict[str, Any]:
        """What ``hash`` covers."""
        return {
            "index": self.index,
            "timestamp": self.timestamp,
            "actor": self.actor,
            "kind": self.kind,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
        }

    def to_line(self) -> bytes:
        record = self.body()
        record["hash"] = self.hash
        if self.mac is not None:
            record["mac"] = self.mac
        return canonical_json(record)


@dataclass(frozen=True, slots=True)
class AuditHead:
    """How many entries a log has and the last one's hash (``GENESIS_HASH`` when empty)."""

    count: int
    hash: str

    def to_json(self, key: bytes | None) -> bytes:
        record: dict[str, Any] = {"count": self.count, "hash": self.hash}
        if key is not None:
            record["mac"] = _head_mac(key, self.count, self.hash)
        return canonical_json(record)


EMPTY_HEAD: Final = AuditHead(0, GENESIS_HASH)

#: One item of :meth:`AuditWriter.append_many`: actor, kind, payload.
AuditItem = tuple[str, str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class AuditBatch:
    """What :meth:`AuditWriter.append_many` did: the entries written, in order, and the items
    the chain refused, each as (its position in the items, the ``ValueError``/``TypeError``)."""

    entries: tuple[AuditEntry, ...]
    refused: tuple[tuple[int, Exception], ...]


class AuditChain:
    """The pure half: builds the next entry from the head.  No files, no clock."""

    __slots__ = ("_head", "_key")

    def __init__(self, *, key: bytes | None = None, head: AuditHead = EMPTY_HEAD) -> None:
        _check_key(key)
        self._key = key
        self._head = head

    @property
    def head(self) -> AuditHead:
        return self._head

    def append(
        self, actor: str, kind: str, payload: Mapping[str, Any], timestamp: datetime
    ) -> AuditEntry:
        """The next entry.  ``ValueError`` for an actor or kind that is not a short token, or a
        payload that is not ids and codes."""
        for name, value in (("actor", actor), ("kind", kind)):
            if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
                raise ValueError(f"{name} is a token of [A-Za-z0-9_.:/@-], at most 128 characters")
        if not isinstance(payload, Mapping):
            raise TypeError("payload must be a mapping")
        _check_payload(payload)
        # A JSON round trip pins the payload to what the line will hold (tuples become lists),
        # so the entry returned here hashes exactly as the entry read back.
        frozen = json.loads(canonical_json(payload))
        body = {
            "index": self._head.count,
            "timestamp": _timestamp(timestamp),
            "actor": actor,
            "kind": kind,
            "payload": frozen,
            "prev_hash": self._head.hash,
        }
        entry_hash = hashlib.sha256(canonical_json(body)).hexdigest()
        mac = None if self._key is None else _entry_mac(self._key, entry_hash)
        entry = AuditEntry(
            self._head.count,
            body["timestamp"],
            actor,
            kind,
            frozen,
            self._head.hash,
            entry_hash,
            mac,
        )
        self._head = AuditHead(self._head.count + 1, entry_hash)
        return entry


def _parse_entry(position: int, line: bytes, key: bytes | None) -> dict[str, Any]:
    if len(line) > _MAX_LINE:
        raise AuditError(position, "entry too long")
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        raise AuditError(position, "not a JSON entry") from None
    if not isinstance(record, dict):
        raise AuditError(position, "not a JSON object")
    allowed = _FIELDS | {"mac"} if "mac" in record else _FIELDS
    if set(record) != allowed:
        raise AuditError(position, "fields missing or unexpected")
    if type(record["index"]) is not int or not isinstance(record["payload"], dict):
        raise AuditError(position, "fields of the wrong type")
    if not all(isinstance(record[k], str) for k in ("timestamp", "actor", "kind", "prev_hash")):
        raise AuditError(position, "fields of the wrong type")
    if canonical_json(record) != line:
        raise AuditError(position, "entry is not in canonical form (edited)")
    body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    if not isinstance(record["hash"], str) or not hmac.compare_digest(
        hashlib.sha256(canonical_json(body)).hexdigest(), record["hash"]
    ):
        raise AuditError(position, "entry does not match its hash (edited)")
    if key is not None:
        mac = record.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(
            _entry_mac(key, record["hash"]), mac
        ):
            raise AuditError(position, "entry MAC does not verify (forged or rewritten)")
    return record


def verify_lines(
    lines: Iterable[bytes], *, key: bytes | None = None, head: AuditHead | None = None
) -> AuditHead:
    """Verify a log given as its lines (without newlines); return its head.

    ``AuditError(index, reason)`` at the first bad position.  With ``head`` (an anchor), the log
    must end at it, or run at most :data:`MAX_AHEAD` entries past it (a crash between writing a
    batch and its anchor) with the entry at ``head.count`` chaining to ``head.hash``.
    """
    _check_key(key)
    previous = GENESIS_HASH
    anchored = GENESIS_HASH if head is not None and head.count == 0 else None
    count = 0
    for position, line in enumerate(lines):
        record = _parse_entry(position, line, key)
        if record["index"] != position:
            raise AuditError(position, "index out of sequence (entry removed, inserted or moved)")
        if record["prev_hash"] != previous:
            raise AuditError(position, "does not chain to the previous entry")
        previous = record["hash"]
        count = position + 1
        if head is not None and count == head.count:
            anchored = previous
    if head is not None:
        if count < head.count:
            raise AuditError(count, "log ends before its anchor (entries removed from the end)")
        if count > head.count + MAX_AHEAD:
            raise AuditError(head.count + MAX_AHEAD, "entries after the anchor")
        # The chain is verified, so the entry at head.count chains to head.hash exactly when the
        # entry before it (or the genesis, for an empty anchor) has that hash.
        if anchored != head.hash:
            raise AuditError(max(head.count - 1, 0), "the anchored entry has another hash")
    return AuditHead(count, previous)


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _read_anchor(path: Path) -> tuple[AuditHead, object] | None:
    """The anchor and its MAC field, unchecked; None if there is no anchor file."""
    try:
        raw = head_path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
        head = AuditHead(int(record["count"]), str(record["hash"]))
    except (ValueError, KeyError, TypeError):
        raise AuditError(0, "anchor file is not readable") from None
    if head.count < 0 or _HASH.fullmatch(head.hash) is None:
        raise AuditError(0, "anchor file is not readable")
    return head, record.get("mac")


def _check_anchor_mac(head: AuditHead, mac: object, key: bytes | None) -> None:
    if key is not None and not (
        isinstance(mac, str) and hmac.compare_digest(_head_mac(key, head.count, head.hash), mac)
    ):
        raise AuditError(head.count, "anchor MAC does not verify")


def _lines(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        for position, raw in enumerate(f):
            if not raw.endswith(b"\n"):
                raise AuditError(position, "last entry is torn (no end of line)")
            yield raw[:-1]


def verify(
    path: str | os.PathLike[str], *, key: bytes | None = None, anchored: bool = False
) -> None:
    """Verify the log at ``path`` (and its anchor ``<path>.head`` when present).

    Returns None or raises ``AuditError(index, reason)``.  ``key``: also check every entry's MAC
    and the anchor's.  ``anchored``: a missing anchor is an error too.
    """
    log = Path(path)
    anchor = _read_anchor(log)
    if anchor is None and anchored:
        raise AuditError(0, "anchor file missing")
    # Entries first, so a rewritten log is reported at its first rewritten entry, not at the anchor.
    verify_lines(_lines(log), key=key, head=None if anchor is None else anchor[0])
    if anchor is not None:
        _check_anchor_mac(*anchor, key)


class AuditWriter:
    """Appends entries to a JSONL file: one writer at a time (``flock``), ``fsync`` per append,
    or per batch with :meth:`append_many`.

    After a failed write the writer refuses further appends: the file may end mid-entry, and the
    next writer opened on it drops that torn tail (never acknowledged to anyone) and records
    doing so.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        fsync: bool = True,
        anchor: bool = True,
    ) -> None:
        _check_key(key)
        self.path = Path(path)
        self._key = key
        self._clock = clock
        self._fsync = fsync
        self._anchor = anchor
        self._broken = False
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AuditError(0, "another writer holds the audit log") from None
            raise
        try:
            torn = self._drop_torn_tail()
            self._chain = AuditChain(key=key, head=self._recover_head())
            if torn:
                self.append("audit", "audit.torn_tail_dropped", {"bytes": torn})
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def head(self) -> AuditHead:
        return self._chain.head

    def append(self, actor: str, kind: str, payload: Mapping[str, Any]) -> AuditEntry:
        """Write one entry, durable when this returns.  The chain's ``ValueError``/``TypeError``
        for an entry it refuses (nothing written); ``AuditError`` if the write fails."""
        self._check_usable()
        entry = self._chain.append(actor, kind, payload, self._clock())
        self._commit((entry,))
        return entry

    def append_many(self, items: Sequence[AuditItem]) -> AuditBatch:
        """Write a batch of entries, durable together when this returns: one write, one fsync,
        one anchor update (group commit).

        An item the chain refuses (what makes :meth:`append` raise ``ValueError``/``TypeError``)
        is skipped, the chain head does not move for it, and it is reported with its position in
        :attr:`AuditBatch.refused`; the others are written in order.  ``ValueError`` for more than
        :data:`MAX_AHEAD` items (the caller splits them); ``AuditError`` if the write fails, after
        which the writer is stopped as after a failed :meth:`append`.
        """
        self._check_usable()
        if len(items) > MAX_AHEAD:
            raise ValueError(f"at most {MAX_AHEAD} entries per batch")
        start = self._chain.head
        entries: list[AuditEntry] = []
        refused: list[tuple[int, Exception]] = []
        try:
            for position, item in enumerate(items):
                try:
                    actor, kind, payload = item
                    entries.append(self._chain.append(actor, kind, payload, self._clock()))
                except (ValueError, TypeError) as exc:
                    refused.append((position, exc))
        except BaseException:
            # The clock failed (or an interrupt): none of the batch is written, so none of it may
            # stay in the chain either, or the next entry would chain to one that is not on disk.
            self._chain = AuditChain(key=self._key, head=start)
            raise
        if entries:
            self._commit(entries)
        return AuditBatch(tuple(entries), tuple(refused))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditWriter({str(self.path)!r}, entries={self.head.count}, keyed={self._key is not None})"

    def _check_usable(self) -> None:
        if self._broken:
            raise AuditError(self._chain.head.count, "writer stopped after a failed write")

    def _commit(self, entries: Sequence[AuditEntry]) -> None:
        """Make entries already in the chain durable: one write loop, one fsync, one anchor."""
        data = b"".join([entry.to_line() + b"\n" for entry in entries])
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self._fsync:
                os.fsync(self._fd)
            if self._anchor:
                self._write_anchor(self._chain.head)
        except OSError as exc:
            self._broken = True
            raise AuditError(entries[0].index, "write failed") from exc

    # -- opening an existing log ------------------------------------------------------------

    def _drop_torn_tail(self) -> int:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        end = self._last_newline(size)
        torn = size - (end + 1)
        if torn:
            os.ftruncate(self._fd, end + 1)
            os.fsync(self._fd)
        return torn

    def _last_newline(self, size: int) -> int:
        """Offset of the last ``\\n`` in the file, or -1."""
        pos = size
        while pos > 0:
            start = max(0, pos - _CHUNK)
            chunk = os.pread(self._fd, pos - start, start)
            found = chunk.rfind(b"\n")
            if found >= 0:
                return start + found
            pos = start
        return -1

    def _recover_head(self) -> AuditHead:
        # Only the anchor and the tail from the anchored entry on (at most MAX_AHEAD + 1 entries)
        # are read here, so that a long log opens quickly; verify() checks every entry.
        size = os.fstat(self._fd).st_size
        last = EMPTY_HEAD
        if size:
            (record,) = self._tail(size, 1)
            last = AuditHead(record["index"] + 1, record["hash"])
        stored = _read_anchor(self.path)
        anchor = None
        if stored is not None:
            anchor, mac = stored
            _check_anchor_mac(anchor, mac, self._key)
            self._check_anchor(size, last, anchor)
        if self._anchor and anchor != last:
            self._write_anchor(last)
        return last

    def _check_anchor(self, size: int, last: AuditHead, anchor: AuditHead) -> None:
        """The log ends at its anchor, or runs at most MAX_AHEAD entries past it with the entry
        at ``anchor.count`` chaining to ``anchor.hash`` (a crash between a batch and its anchor:
        the caller repairs the anchor).  The same rule as :func:`verify_lines`."""
        ahead = last.count - anchor.count
        if ahead < 0:
            raise AuditError(
                last.count, "log ends before its anchor (entries removed from the end)"
            )
        if ahead > MAX_AHEAD:
            raise AuditError(anchor.count + MAX_AHEAD, "entries after the anchor")
        if anchor.count == 0:
            if anchor.hash != GENESIS_HASH:
                raise AuditError(0, "the anchored entry has another hash")
            if ahead:
                first = self._tail(size, ahead)[0]
                if first["prev_hash"] != GENESIS_HASH:
                    raise AuditError(0, "does not chain to the previous entry")
            return
        # The anchored entry and every entry after it, chained to one another by _tail.
        anchored = self._tail(size, ahead + 1)[0]
        if anchored["hash"] != anchor.hash:
            raise AuditError(anchor.count - 1, "the anchored entry has another hash")

    def _tail(self, size: int, n: int) -> list[dict[str, Any]]:
        """The last ``n`` entries, parsed (MACs checked), in index sequence and chained to one
        another.  Fewer lines than ``n`` is an error: the last entry's index claims more."""
        lines, first = self._tail_lines(size, n)

        def position(i: int) -> int:
            # Counting every line costs a read of the whole file: only to report an error.
            return (self._count_lines(size) - len(lines) if first is None else first) + i

        records: list[dict[str, Any]] = []
        for i, line in enumerate(lines):
            try:
                record = _parse_entry(i, line, self._key)
            except AuditError as exc:
                raise AuditError(position(i), exc.reason) from None
            if records:
                in_sequence = record["index"] == records[-1]["index"] + 1
            elif first is not None:
                in_sequence = record["index"] == first
            else:
                # The lines before it are not read: its position is unknown, but not 0.
                in_sequence = record["index"] >= 1
            if not in_sequence:
                raise AuditError(position(i), "index out of sequence: verify the log")
            if records and record["prev_hash"] != records[-1]["hash"]:
                raise AuditError(position(i), "does not chain to the previous entry")
            records.append(record)
        if len(records) < n:
            raise AuditError(len(records), "index out of sequence: verify the log")
        return records

    def _tail_lines(self, size: int, n: int) -> tuple[list[bytes], int | None]:
        """The last ``n`` lines (fewer if the file holds fewer), without their ends of line,
        read backwards in chunks; and the position of the first of them if the read reached
        the start of the file.  The file ends with an end of line (the torn tail is dropped)."""
        if n < 1:
            raise ValueError("n >= 1")
        chunks: list[bytes] = []
        pos, newlines = size, 0
        # n + 1 ends of line: the n lines and the end of the line before them.
        while pos > 0 and newlines <= n:
            start = max(0, pos - _CHUNK)
            chunk = os.pread(self._fd, pos - start, start)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
            pos = start
        lines = b"".join(reversed(chunks)).split(b"\n")[:-1]
        first = max(len(lines) - n, 0) if pos == 0 else None
        return lines[-n:], first

    def _count_lines(self, size: int) -> int:
        count, offset = 0, 0
        while offset < size:
            chunk = os.pread(self._fd, min(1 << 20, size - offset), offset)
            count += chunk.count(b"\n")
            offset += len(chunk)
        return count

    def _write_anchor(self, head: AuditHead) -> None:
        target = head_path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, head.to_json(self._key))
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        if self._fsync:
            # The rename is durable only once the directory is (rename(2) and fsync(2) on Linux).
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
