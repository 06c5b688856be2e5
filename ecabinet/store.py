"""The controller's durable slot map: cabinets, slots, cards, commands, discrepancies, officers.

One SQLite file of its own (``cabinet.db``), apart from the line's store, and **no personal data**:
cards are known by application id, chip serial, office and collection day; an applicant's HKIC and
receipt numbers only as keyed digests (:func:`lookup_digest`), cleared when the card leaves the
cabinet (DESIGN §3 data minimisation).

Why each setting (as the line's store, personaliser/store/sqlite.py):

- ``journal_mode=WAL``: readers (``perso cabinet status``) never block the controller.
- ``synchronous``: a committed change is a statement about a physical card in a physical slot; an
  OS crash must not roll back one that anybody outside has acted on.  ``sync="full"`` syncs the WAL
  at every commit (one fsync each, on the committing thread).  ``sync="barrier"`` (what the
  controller uses) commits with ``synchronous=NORMAL``, which survives a killed process but not an
  OS crash, and makes the commits durable at a **barrier** (:meth:`CabinetStore.make_durable`:
  one fsync of the WAL, on a worker thread) before anything depends on them outside the process:
  before a command is published (the write-ahead rule below) and before a flow's result is given
  back.  The WAL is a log, so one fsync makes every earlier commit durable: concurrent flows share
  it, and the event loop never waits on the disk.  What an OS crash can take is a suffix of commits
  nobody outside has seen, the same as a crash a moment earlier.
- Every change below is exactly one transaction (``BEGIN IMMEDIATE``: the write lock is taken
  before the current state is read, so two writers never both act on one state).
- STRICT tables, ``user_version`` migrations as data (:data:`MIGRATIONS`), foreign keys on.

Write-ahead for the protocol: a command row and the controller's counters
(:class:`~ecabinet.protocol.ControllerState`) are committed in the same transaction as the slot and
card change they belong to, *before* the command is published.  A restarted controller therefore
never reuses a counter, and knows every command it may have sent (docs/ecabinet-protocol.md
*Idempotency and retries*).

Nothing here is O(slots) on the retrieval path: a card is found by its primary key or an indexed
digest, its slot by primary key.  Whole-cabinet reads (:meth:`CabinetStore.slot_map`) serve
reconciliation and allocation only.
"""

from __future__ import annotations

import hmac
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from os import PathLike
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal

from ecabinet.errors import CabinetError, SlotError
from ecabinet.protocol import ControllerState
from ecabinet.slots import SlotState, default_reachability, slot_code
from ecabinet.topics import check_id

__all__ = [
    "CARD_TRANSITIONS",
    "MIGRATIONS",
    "CabinetRecord",
    "CabinetStore",
    "CardRecord",
    "CardState",
    "CardStateError",
    "CommandRecord",
    "CommandRow",
    "CommandStatus",
    "DiscrepancyKind",
    "DiscrepancyRecord",
    "NewCard",
    "OfficerRecord",
    "StoreError",
    "StoredSlot",
    "lookup_digest",
    "normalise_lookup",
]

Clock = Callable[[], datetime]


class StoreError(CabinetError):
    """The cabinet store cannot be opened or written (never carries personal data)."""


class CardStateError(CabinetError):
    """A card is unknown, or not in a state that allows this change.

    ``state`` is None for an unknown card.  ``reason`` is a short code for callers and the audit.
    """

    def __init__(
        self, message: str, *, application_id: str, state: str | None, reason: str
    ) -> None:
        super().__init__(message)
        self.application_id = application_id
        self.state = state
        self.reason = reason


class CardState(StrEnum):
    AWAITING_DEPOSIT = "AWAITING_DEPOSIT"
    DEPOSITING = "DEPOSITING"
    STOCKED = "STOCKED"
    RETRIEVING = "RETRIEVING"
    ISSUED = "ISSUED"
    RETURNING = "RETURNING"
    RETURNED = "RETURNED"
    EXCEPTION = "EXCEPTION"


C = CardState
#: A card's life in the cabinet (DESIGN §3 ``DISPATCHED -> STOCKED -> ISSUED``, and the branches).
#: EXCEPTION: a discrepancy names the card; it leaves only by a supervisor's resolution (the card is
#: sensed in a slot: STOCKED) or a fresh deposit (the card turned up in hand).
CARD_TRANSITIONS: Final[Mapping[CardState, frozenset[CardState]]] = MappingProxyType(
    {
        C.AWAITING_DEPOSIT: frozenset({C.DEPOSITING}),
        C.DEPOSITING: frozenset({C.STOCKED, C.AWAITING_DEPOSIT, C.EXCEPTION}),
        C.STOCKED: frozenset({C.RETRIEVING, C.RETURNING, C.EXCEPTION}),
        C.RETRIEVING: frozenset({C.ISSUED, C.STOCKED, C.EXCEPTION}),
        C.RETURNING: frozenset({C.RETURNED, C.STOCKED, C.EXCEPTION}),
        C.EXCEPTION: frozenset({C.DEPOSITING, C.STOCKED}),
        C.ISSUED: frozenset(),
        C.RETURNED: frozenset(),
    }
)


class CommandStatus(StrEnum):
    SENT = "sent"  # committed before the publish; no answer yet
    ACKED = "acked"  # accepted ack, or a slot_opened naming it: the cabinet performed it
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    ABANDONED = "abandoned"  # the controller stopped waiting (restart, cabinet offline)


class DiscrepancyKind(StrEnum):
    MISSING_CARD = "missing_card"
    UNEXPECTED_CARD = "unexpected_card"
    WRONG_CARD = "wrong_card"
    SLOT_FAULT = "slot_fault"
    STATE_MISMATCH = "state_mismatch"
    LAYOUT_MISMATCH = "layout_mismatch"  # the cabinet reports another shape than registered


# -- lookup digests -------------------------------------------------------------------------------

LookupKind = Literal["hkid", "receipt"]
_SPACES: Final = re.compile(r"[\s()]")


def normalise_lookup(kind: LookupKind, value: str) -> str:
    """HKIC number: upper case without brackets and spaces (``A123456(7)`` -> ``A1234567``);
    receipt number: upper case without surrounding space."""
    if not isinstance(value, str):
        raise TypeError("lookup values are strings")
    if kind == "hkid":
        return _SPACES.sub("", value).upper()
    if kind == "receipt":
        return value.strip().upper()
    raise ValueError("lookup kind is hkid or receipt")


def lookup_digest(key: bytes, kind: LookupKind, value: str) -> str:
    """HMAC-SHA256(key, kind NUL normalised value), hex.  Keyed, so the digest of a known HKIC
    number cannot be computed without the key; the kind prefix keeps an HKIC number and a
    receipt number with the same text apart.  Compare digests with ``hmac.compare_digest``."""
    if len(key) < 32:
        raise ValueError("a lookup key is at least 32 bytes")
    message = kind.encode() + b"\x00" + normalise_lookup(kind, value).encode("utf-8")
    return hmac.digest(key, message, "sha256").hex()


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CabinetRecord:
    site: str
    cabinet: str
    office: str
    drawers: int
    slots_per_drawer: int
    status: str  # unknown | online | offline
    last_heartbeat: str | None
    boot_id: str | None


@dataclass(frozen=True, slots=True)
class StoredSlot:
    cabinet: str
    drawer: int
    index: int
    state: SlotState
    card_serial: str | None
    application_id: str | None
    reachability: float

    @property
    def code(self) -> str:
        return slot_code(self.drawer, self.index)


@dataclass(frozen=True, slots=True)
class NewCard:
    """A card as the line hands it over: ids, office, collection day and lookup digests."""

    application_id: str
    card_serial: str
    office: str
    collection_date: date
    hkid_digest: str | None = field(default=None, repr=False)
    receipt_digest: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CardRecord:
    application_id: str
    card_serial: str
    office: str
    collection_date: date
    state: CardState
    cabinet: str | None
    drawer: int | None
    index: int | None
    officer: str | None
    registered_at: str
    stocked_at: str | None
    issued_at: str | None
    returned_at: str | None
    hkid_digest: str | None = field(default=None, repr=False)
    receipt_digest: str | None = field(default=None, repr=False)

    @property
    def slot(self) -> str | None:
        if self.drawer is None or self.index is None:
            return None
        return slot_code(self.drawer, self.index)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    correlation_id: str
    command_id: str
    cabinet: str
    kind: str
    drawer: int | None
    index: int | None
    card_serial: str | None
    application_id: str | None
    actor: str
    status: CommandStatus
    reason: str | None
    sent_at: str
    acked_at: str | None


@dataclass(frozen=True, slots=True)
class DiscrepancyRecord:
    id: int
    cabinet: str
    drawer: int | None
    index: int | None
    kind: DiscrepancyKind
    expected_serial: str | None
    sensed_serial: str | None
    application_id: str | None
    raised_at: str
    resolved_at: str | None
    resolved_by: str | None
    resolution: str | None

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True, slots=True)
class OfficerRecord:
    officer_id: str
    office: str
    role: str
    password_hash: str = field(repr=False)
    active: bool


# -- schema -----------------------------------------------------------------------------------

_SLOT_STATES: Final = ",".join(f"'{s.value}'" for s in SlotState)
_CARD_STATES: Final = ",".join(f"'{s.value}'" for s in CardState)
_COMMAND_STATUSES: Final = ",".join(f"'{s.value}'" for s in CommandStatus)
_KINDS: Final = ",".join(f"'{k.value}'" for k in DiscrepancyKind)

# Migration N brings a database from user_version N-1 to N.  Append; never edit a released one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE cabinets (
            cabinet TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            office TEXT NOT NULL,
            drawers INTEGER NOT NULL CHECK (drawers BETWEEN 1 AND 99),
            slots_per_drawer INTEGER NOT NULL CHECK (slots_per_drawer BETWEEN 1 AND 999),
            status TEXT NOT NULL DEFAULT 'unknown' CHECK (status IN ('unknown','online','offline')),
            last_heartbeat TEXT,
            boot_id TEXT
        ) STRICT""",
        "CREATE INDEX cabinets_office ON cabinets(office)",
        f"""CREATE TABLE slots (
            cabinet TEXT NOT NULL REFERENCES cabinets(cabinet),
            drawer INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            reachability REAL NOT NULL CHECK (reachability BETWEEN 0.0 AND 1.0),
            state TEXT NOT NULL DEFAULT 'EMPTY' CHECK (state IN ({_SLOT_STATES})),
            card_serial TEXT,
            application_id TEXT,
            PRIMARY KEY (cabinet, drawer, idx)
        ) STRICT, WITHOUT ROWID""",
        "CREATE INDEX slots_state ON slots(cabinet, state)",
        f"""CREATE TABLE cards (
            application_id TEXT PRIMARY KEY,
            card_serial TEXT NOT NULL UNIQUE,
            office TEXT NOT NULL,
            collection_date TEXT NOT NULL,
            hkid_digest TEXT,
            receipt_digest TEXT,
            state TEXT NOT NULL CHECK (state IN ({_CARD_STATES})),
            cabinet TEXT,
            drawer INTEGER,
            idx INTEGER,
            officer TEXT,
            registered_at TEXT NOT NULL,
            stocked_at TEXT,
            issued_at TEXT,
            returned_at TEXT,
            updated_at TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX cards_hkid ON cards(hkid_digest) WHERE hkid_digest IS NOT NULL",
        "CREATE INDEX cards_receipt ON cards(receipt_digest) WHERE receipt_digest IS NOT NULL",
        "CREATE INDEX cards_state ON cards(state, office, stocked_at)",
        f"""CREATE TABLE commands (
            correlation_id TEXT PRIMARY KEY,
            command_id TEXT NOT NULL UNIQUE,
            cabinet TEXT NOT NULL,
            kind TEXT NOT NULL,
            drawer INTEGER,
            idx INTEGER,
            card_serial TEXT,
            application_id TEXT,
            actor TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ({_COMMAND_STATUSES})),
            reason TEXT,
            sent_at TEXT NOT NULL,
            acked_at TEXT
        ) STRICT""",
        "CREATE INDEX commands_slot ON commands(cabinet, drawer, idx, sent_at)",
        "CREATE INDEX commands_open ON commands(status) WHERE status = 'sent'",
        f"""CREATE TABLE discrepancies (
            id INTEGER PRIMARY KEY,
            cabinet TEXT NOT NULL,
            drawer INTEGER,
            idx INTEGER,
            kind TEXT NOT NULL CHECK (kind IN ({_KINDS})),
            expected_serial TEXT,
            sensed_serial TEXT,
            application_id TEXT,
            raised_at TEXT NOT NULL,
            resolved_at TEXT,
            resolved_by TEXT,
            resolution TEXT
        ) STRICT""",
        # At most one open discrepancy per slot: a slot stays FAULT until a supervisor resolves it.
        """CREATE UNIQUE INDEX discrepancies_open ON discrepancies(cabinet, drawer, idx)
            WHERE resolved_at IS NULL""",
        """CREATE TABLE controller_state (
            site TEXT PRIMARY KEY,
            state TEXT NOT NULL
        ) STRICT""",
        """CREATE TABLE officers (
            officer_id TEXT PRIMARY KEY,
            office TEXT NOT NULL,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            created_at TEXT NOT NULL
        ) STRICT""",
    ),
)

_CARD_COLUMNS: Final = (
    "application_id, card_serial, office, collection_date, state, cabinet, drawer, idx, officer,"
    " registered_at, stocked_at, issued_at, returned_at, hkid_digest, receipt_digest"
)
_COMMAND_COLUMNS: Final = (
    "correlation_id, command_id, cabinet, kind, drawer, idx, card_serial, application_id, actor,"
    " status, reason, sent_at, acked_at"
)
_DISCREPANCY_COLUMNS: Final = (
    "id, cabinet, drawer, idx, kind, expected_serial, sensed_serial, application_id, raised_at,"
    " resolved_at, resolved_by, resolution"
)


def _card(row: sqlite3.Row) -> CardRecord:
    return CardRecord(
        application_id=row[0],
        card_serial=row[1],
        office=row[2],
        collection_date=date.fromisoformat(row[3]),
        state=CardState(row[4]),
        cabinet=row[5],
        drawer=row[6],
        index=row[7],
        officer=row[8],
        registered_at=row[9],
        stocked_at=row[10],
        issued_at=row[11],
        returned_at=row[12],
        hkid_digest=row[13],
        receipt_digest=row[14],
    )


def _command(row: sqlite3.Row) -> CommandRecord:
    return CommandRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
        CommandStatus(row[9]), row[10], row[11], row[12],
    )  # fmt: skip


def _discrepancy(row: sqlite3.Row) -> DiscrepancyRecord:
    return DiscrepancyRecord(
        row[0], row[1], row[2], row[3], DiscrepancyKind(row[4]), row[5], row[6], row[7], row[8],
        row[9], row[10], row[11],
    )  # fmt: skip


def _slot(row: sqlite3.Row) -> StoredSlot:
    return StoredSlot(row[0], row[1], row[2], SlotState(row[3]), row[4], row[5], row[6])


@dataclass(frozen=True, slots=True)
class CommandRow:
    """What :meth:`CabinetStore.record_command` and the operation methods write for a command."""

    correlation_id: str
    command_id: str
    cabinet: str
    kind: str
    actor: str
    drawer: int | None = None
    index: int | None = None
    card_serial: str | None = None
    application_id: str | None = None


class CabinetStore:
    """The cabinet store.  One connection per thread; every change is one transaction."""

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        clock: Clock = lambda: datetime.now(UTC),
        busy_timeout: float = 10.0,
        sync: Literal["full", "barrier"] = "full",
    ) -> None:
        if sync not in ("full", "barrier"):
            raise ValueError("sync is 'full' or 'barrier'")
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self.sync = sync
        self._commits = 0  # commits so far (by any thread of this process)
        self._durable = 0  # commits known to be on disk
        self._sync_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"CabinetStore({str(self.path)!r})"

    def __enter__(self) -> CabinetStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    # -- connections and transactions -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit: transactions are begun explicitly
                check_same_thread=False,  # only close() touches another thread's connection
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the cabinet store {self.path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the cabinet store {self.path} cannot use WAL (got {mode})")
            level = "FULL" if self.sync == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous={level}")
            conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, StoreError) as exc:
            conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the cabinet store {self.path}: {exc}") from exc
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise StoreError("the cabinet store is closed")
                conn = self._connect()
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a write: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"database error: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        with self._sync_lock:
            self._commits += 1
            if self.sync == "full":
                self._durable = self._commits

    @property
    def commit_count(self) -> int:
        """Commits so far; with :attr:`durable_count`, what a barrier still has to cover."""
        return self._commits

    @property
    def durable_count(self) -> int:
        """Commits known to be on disk (all of them under ``sync="full"``)."""
        return self._durable

    def make_durable(self) -> None:
        """The barrier: every commit made before this call is on disk when it returns.

        Blocking (an fsync); the controller runs it on a worker thread.  Safe from any thread: a
        commit counted here has had its WAL frames written by its COMMIT, and an fsync of the WAL
        file through any descriptor flushes them (the WAL is one file, appended or reset in place,
        https://sqlite.org/wal.html)."""
        with self._sync_lock:
            target = self._commits
            if self._durable >= target:
                return
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            fd = -1  # no WAL: everything was checkpointed into the database file
        try:
            if fd >= 0:
                os.fsync(fd)
            db = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(db)  # a checkpoint since the commit may have moved its pages there
            finally:
                os.close(db)
        except OSError as exc:
            raise StoreError(f"cannot sync the cabinet store {self.path}: {exc}") from exc
        finally:
            if fd >= 0:
                os.close(fd)
        with self._sync_lock:
            self._durable = max(self._durable, target)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    def _migrate(self) -> None:
        with self._write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the cabinet store {self.path} has schema {version}, newer than this"
                    f" engine's {len(MIGRATIONS)}"
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number:d}")

    @property
    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def now(self) -> str:
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError("the store's clock must return timezone-aware datetimes")
        return moment.astimezone(UTC).isoformat(timespec="microseconds")

    # -- cabinets and slots ---------------------------------------------------------------------

    def register_cabinet(
        self,
        site: str,
        cabinet: str,
        office: str,
        drawers: int,
        slots_per_drawer: int,
        *,
        reachability: Callable[[int, int], float] | None = None,
    ) -> CabinetRecord:
        """Add a cabinet and its slots (all EMPTY); the same registration again is a no-op.

        ``reachability(drawer, index)`` defaults to :func:`~ecabinet.slots.default_reachability`.
        ``ValueError`` if the cabinet exists with another site, office or shape.
        """
        check_id(site, "site")
        check_id(cabinet, "cabinet")
        check_id(office, "office")
        score = reachability or (lambda d, i: default_reachability(d, i, drawers, slots_per_drawer))
        with self._write() as conn:
            row = conn.execute(
                "SELECT site, office, drawers, slots_per_drawer FROM cabinets WHERE cabinet = ?",
                (cabinet,),
            ).fetchone()
            if row is not None:
                if tuple(row) != (site, office, drawers, slots_per_drawer):
                    raise ValueError(f"cabinet {cabinet} is registered with another layout")
            else:
                conn.execute(
                    "INSERT INTO cabinets (cabinet, site, office, drawers, slots_per_drawer)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (cabinet, site, office, drawers, slots_per_drawer),
                )
                conn.executemany(
                    "INSERT INTO slots (cabinet, drawer, idx, reachability) VALUES (?, ?, ?, ?)",
                    (
                        (cabinet, d, i, float(score(d, i)))
                        for d in range(1, drawers + 1)
                        for i in range(1, slots_per_drawer + 1)
                    ),
                )
        record = self.cabinet(cabinet)
        assert record is not None
        return record

    def cabinet(self, cabinet: str) -> CabinetRecord | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT site, cabinet, office, drawers, slots_per_drawer, status, last_heartbeat,"
                " boot_id FROM cabinets WHERE cabinet = ?",
                (cabinet,),
            ).fetchone()
        return None if row is None else CabinetRecord(*row)

    def cabinets(self, *, office: str | None = None) -> list[CabinetRecord]:
        query = (
            "SELECT site, cabinet, office, drawers, slots_per_drawer, status, last_heartbeat,"
            " boot_id FROM cabinets"
        )
        args: tuple[Any, ...] = ()
        if office is not None:
            query += " WHERE office = ?"
            args = (office,)
        with self._read() as conn:
            return [CabinetRecord(*row) for row in conn.execute(query + " ORDER BY cabinet", args)]

    def set_cabinet_status(
        self,
        cabinet: str,
        status: Literal["online", "offline"],
        *,
        boot_id: str | None = None,
        heartbeat: bool = False,
    ) -> None:
        """Record liveness: ``status``, the cabinet's boot id if given, the heartbeat time if
        ``heartbeat``."""
        with self._write() as conn:
            conn.execute(
                "UPDATE cabinets SET status = ?, boot_id = coalesce(?, boot_id),"
                " last_heartbeat = CASE WHEN ? THEN ? ELSE last_heartbeat END WHERE cabinet = ?",
                (status, boot_id, heartbeat, self.now(), cabinet),
            )

    def slot(self, cabinet: str, drawer: int, index: int) -> StoredSlot | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT cabinet, drawer, idx, state, card_serial, application_id, reachability"
                " FROM slots WHERE cabinet = ? AND drawer = ? AND idx = ?",
                (cabinet, drawer, index),
            ).fetchone()
        return None if row is None else _slot(row)

    def slot_map(self, cabinet: str) -> list[StoredSlot]:
        """Every slot of a cabinet, drawer then index order (reconciliation, not per request)."""
        with self._read() as conn:
            return [
                _slot(row)
                for row in conn.execute(
                    "SELECT cabinet, drawer, idx, state, card_serial, application_id,"
                    " reachability FROM slots WHERE cabinet = ? ORDER BY drawer, idx",
                    (cabinet,),
                )
            ]

    def office_slots(self, office: str) -> list[tuple[StoredSlot, date | None]]:
        """Every slot of an office's cabinets with the collection day of the card held or
        reserved there (for allocation: one query per tray, not per card)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT s.cabinet, s.drawer, s.idx, s.state, s.card_serial, s.application_id,"
                " s.reachability, c.collection_date FROM slots s"
                " JOIN cabinets k ON k.cabinet = s.cabinet"
                " LEFT JOIN cards c ON c.application_id = s.application_id"
                " WHERE k.office = ? ORDER BY s.cabinet, s.drawer, s.idx",
                (office,),
            ).fetchall()
        return [
            (_slot(row), None if row[7] is None else date.fromisoformat(row[7])) for row in rows
        ]

    def free_slots(self, office: str) -> int:
        """EMPTY slots in the office's cabinets (a RESERVED slot is already promised)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT count(*) FROM slots s JOIN cabinets k ON k.cabinet = s.cabinet"
                " WHERE k.office = ? AND s.state = 'EMPTY'",
                (office,),
            ).fetchone()
        return int(row[0])

    def occupancy(self) -> dict[str, dict[SlotState, int]]:
        """cabinet -> slot state -> count."""
        result: dict[str, dict[SlotState, int]] = {}
        with self._read() as conn:
            for cabinet, state, count in conn.execute(
                "SELECT cabinet, state, count(*) FROM slots GROUP BY cabinet, state"
            ):
                result.setdefault(cabinet, {})[SlotState(state)] = int(count)
        return result

    # -- cards ----------------------------------------------------------------------------------

    def register_cards(self, cards: Iterable[NewCard]) -> int:
        """Add cards AWAITING_DEPOSIT; a card already registered with the same ids is skipped
        (idempotent), with other ids it is a ``CardStateError`` and nothing is added.
        Returns how many were new."""
        batch = list(cards)
        added = 0
        now = self.now()
        with self._write() as conn:
            for card in batch:
                check_id(card.office, "office")
                if type(card.collection_date) is not date:
                    raise TypeError("collection_date must be a datetime.date")
                row = conn.execute(
                    "SELECT card_serial, office FROM cards WHERE application_id = ?",
                    (card.application_id,),
                ).fetchone()
                if row is not None:
                    if tuple(row) != (card.card_serial, card.office):
                        raise CardStateError(
                            "card registered before with another serial or office",
                            application_id=card.application_id,
                            state=None,
                            reason="conflict",
                        )
                    continue
                taken = conn.execute(
                    "SELECT 1 FROM cards WHERE card_serial = ?", (card.card_serial,)
                ).fetchone()
                if taken is not None:
                    raise CardStateError(
                        "chip serial already registered for another application",
                        application_id=card.application_id,
                        state=None,
                        reason="conflict",
                    )
                conn.execute(
                    "INSERT INTO cards (application_id, card_serial, office, collection_date,"
                    " hkid_digest, receipt_digest, state, registered_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'AWAITING_DEPOSIT', ?, ?)",
                    (
                        card.application_id,
                        card.card_serial,
                        card.office,
                        card.collection_date.isoformat(),
                        card.hkid_digest,
                        card.receipt_digest,
                        now,
                        now,
                    ),
                )
                added += 1
        return added

    def card(self, application_id: str) -> CardRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_CARD_COLUMNS} FROM cards WHERE application_id = ?",  # noqa: S608
                (application_id,),
            ).fetchone()
        return None if row is None else _card(row)

    def card_by_serial(self, card_serial: str) -> CardRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_CARD_COLUMNS} FROM cards WHERE card_serial = ?",  # noqa: S608
                (card_serial,),
            ).fetchone()
        return None if row is None else _card(row)

    def cards_by_digest(self, kind: LookupKind, digest: str) -> list[CardRecord]:
        """Cards whose HKIC or receipt digest is ``digest`` (index lookup; compare_digest after)."""
        column = {"hkid": "hkid_digest", "receipt": "receipt_digest"}[kind]
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CARD_COLUMNS} FROM cards WHERE {column} = ?",  # noqa: S608 (fixed names)
                (digest,),
            ).fetchall()
        cards = [_card(row) for row in rows]
        return [
            c
            for c in cards
            if hmac.compare_digest(
                (c.hkid_digest if kind == "hkid" else c.receipt_digest) or "", digest
            )
        ]

    def cards(
        self, *, state: CardState | None = None, office: str | None = None
    ) -> list[CardRecord]:
        clauses, args = [], []
        if state is not None:
            clauses.append("state = ?")
            args.append(state.value)
        if office is not None:
            clauses.append("office = ?")
            args.append(office)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CARD_COLUMNS} FROM cards{where} ORDER BY application_id",  # noqa: S608
                args,
            ).fetchall()
        return [_card(row) for row in rows]

    def stocked_before(self, cutoff: datetime) -> list[CardRecord]:
        """STOCKED cards stocked before ``cutoff`` (uncollected past retention)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CARD_COLUMNS} FROM cards WHERE state = 'STOCKED' AND stocked_at < ?"  # noqa: S608
                " ORDER BY stocked_at, application_id",
                (cutoff.astimezone(UTC).isoformat(timespec="microseconds"),),
            ).fetchall()
        return [_card(row) for row in rows]

    # -- the controller's counters --------------------------------------------------------------

    def load_controller_state(self, site: str) -> ControllerState | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT state FROM controller_state WHERE site = ?", (site,)
            ).fetchone()
        return None if row is None else ControllerState.model_validate_json(row[0])

    def save_controller_state(self, state: ControllerState) -> None:
        with self._write() as conn:
            self._put_state(conn, state)

    @staticmethod
    def _put_state(conn: sqlite3.Connection, state: ControllerState | None) -> None:
        if state is None:
            return
        conn.execute(
            "INSERT INTO controller_state (site, state) VALUES (?, ?)"
            " ON CONFLICT(site) DO UPDATE SET state = excluded.state",
            (state.site, state.model_dump_json()),
        )

    # -- commands -------------------------------------------------------------------------------

    def record_command(self, row: CommandRow, state: ControllerState | None) -> None:
        """A command about to be published, and the counters it used, in one transaction."""
        with self._write() as conn:
            self._insert_command(conn, row)
            self._put_state(conn, state)

    def _insert_command(self, conn: sqlite3.Connection, row: CommandRow) -> None:
        check_id(row.cabinet, "cabinet")
        conn.execute(
            f"INSERT INTO commands ({_COMMAND_COLUMNS})"  # noqa: S608 (fixed names)
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'sent', NULL, ?, NULL)",
            (
                row.correlation_id,
                row.command_id,
                row.cabinet,
                row.kind,
                row.drawer,
                row.index,
                row.card_serial,
                row.application_id,
                row.actor,
                self.now(),
            ),
        )

    def command(self, correlation_id: str) -> CommandRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE correlation_id = ?",  # noqa: S608
                (correlation_id,),
            ).fetchone()
        return None if row is None else _command(row)

    def command_by_id(self, command_id: str) -> CommandRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE command_id = ?",  # noqa: S608
                (command_id,),
            ).fetchone()
        return None if row is None else _command(row)

    def open_commands(self) -> list[CommandRecord]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE status = 'sent'"  # noqa: S608
                " ORDER BY sent_at"
            ).fetchall()
        return [_command(row) for row in rows]

    def last_commands(self, cabinet: str) -> dict[tuple[int, int], CommandRecord]:
        """The latest command naming each slot of a cabinet that is RESERVED or open (the slots
        reconciliation asks about); one index probe per such slot, whatever the history."""
        prefixed = ", ".join(f"c.{name.strip()}" for name in _COMMAND_COLUMNS.split(","))
        result: dict[tuple[int, int], CommandRecord] = {}
        with self._read() as conn:
            for row in conn.execute(
                f"SELECT {prefixed} FROM slots s JOIN commands c ON c.rowid = ("  # noqa: S608
                " SELECT c2.rowid FROM commands c2 WHERE c2.cabinet = s.cabinet"
                " AND c2.drawer = s.drawer AND c2.idx = s.idx"
                " ORDER BY c2.sent_at DESC, c2.rowid DESC LIMIT 1)"
                " WHERE s.cabinet = ? AND s.state IN ('RESERVED', 'OPEN_FOR_RETRIEVAL')",
                (cabinet,),
            ):
                record = _command(row)
                assert record.drawer is not None and record.index is not None
                result[(record.drawer, record.index)] = record
        return result

    def command_answered(
        self,
        correlation_id: str,
        status: CommandStatus,
        *,
        reason: str | None = None,
        state: ControllerState | None = None,
    ) -> bool:
        """Record an ack, rejection, timeout or abandonment.  ``acked`` is final evidence that
        the cabinet performed the command and is never downgraded; False if nothing changed."""
        if status is CommandStatus.SENT:
            raise ValueError("a command is recorded as sent by record_command")
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE commands SET status = ?, reason = ?,"
                " acked_at = CASE WHEN ? = 'acked' THEN ? ELSE acked_at END"
                " WHERE correlation_id = ? AND status != 'acked'",
                (status.value, reason, status.value, self.now(), correlation_id),
            )
            self._put_state(conn, state)
            return cursor.rowcount == 1

    def command_performed(self, command_id: str) -> CommandRecord | None:
        """A ``slot_opened`` naming ``command_id``: as good as an ack (authenticated evidence
        that the cabinet performed it).  Returns the command if it is ours."""
        with self._write() as conn:
            conn.execute(
                "UPDATE commands SET status = 'acked', reason = NULL, acked_at = ?"
                " WHERE command_id = ? AND status != 'acked'",
                (self.now(), command_id),
            )
            row = conn.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE command_id = ?",  # noqa: S608
                (command_id,),
            ).fetchone()
        return None if row is None else _command(row)

    def command_reissued(
        self, correlation_id: str, command_id: str, state: ControllerState | None
    ) -> None:
        """The same request under a new command id and counter (the cabinet refused the old one
        before performing it); committed before the new command is published."""
        with self._write() as conn:
            conn.execute(
                "UPDATE commands SET command_id = ?, status = 'sent', reason = NULL"
                " WHERE correlation_id = ?",
                (command_id, correlation_id),
            )
            self._put_state(conn, state)

    def abandon_open_commands(self) -> list[CommandRecord]:
        """At controller start: commands sent by a previous run and never answered.  Their
        slots are reconciled from the sensors; they are never re-sent (a door must not open
        long after the officer who asked has gone)."""
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE status = 'sent'"  # noqa: S608
            ).fetchall()
            conn.execute(
                "UPDATE commands SET status = 'abandoned', reason = 'controller_restart'"
                " WHERE status = 'sent'"
            )
        return [_command(row) for row in rows]

    # -- card and slot changes: one transaction each -------------------------------------------

    def _card_for_update(self, conn: sqlite3.Connection, application_id: str) -> CardRecord:
        row = conn.execute(
            f"SELECT {_CARD_COLUMNS} FROM cards WHERE application_id = ?",  # noqa: S608
            (application_id,),
        ).fetchone()
        if row is None:
            raise CardStateError(
                "no such card", application_id=application_id, state=None, reason="not_found"
            )
        return _card(row)

    def _move_card(
        self,
        conn: sqlite3.Connection,
        card: CardRecord,
        target: CardState,
        *,
        allowed_from: Iterable[CardState] | None = None,
        **columns: Any,
    ) -> None:
        sources = frozenset(allowed_from) if allowed_from is not None else None
        if target not in CARD_TRANSITIONS[card.state] or (
            sources is not None and card.state not in sources
        ):
            raise CardStateError(
                f"card is {card.state.value}, cannot become {target.value}",
                application_id=card.application_id,
                state=card.state.value,
                reason=f"card_{card.state.value.lower()}",
            )
        sets = ["state = ?", "updated_at = ?"]
        args: list[Any] = [target.value, self.now()]
        for name, value in columns.items():
            sets.append(f"{name} = ?")
            args.append(value)
        args.append(card.application_id)
        conn.execute(f"UPDATE cards SET {', '.join(sets)} WHERE application_id = ?", args)  # noqa: S608

    def _slot_for_update(
        self, conn: sqlite3.Connection, cabinet: str, drawer: int, index: int
    ) -> StoredSlot:
        row = conn.execute(
            "SELECT cabinet, drawer, idx, state, card_serial, application_id, reachability"
            " FROM slots WHERE cabinet = ? AND drawer = ? AND idx = ?",
            (cabinet, drawer, index),
        ).fetchone()
        if row is None:
            raise SlotError(f"cabinet {cabinet}: no slot {slot_code(drawer, index)}")
        return _slot(row)

    @staticmethod
    def _set_slot(
        conn: sqlite3.Connection,
        slot: StoredSlot,
        state: SlotState,
        card_serial: str | None,
        application_id: str | None,
    ) -> None:
        conn.execute(
            "UPDATE slots SET state = ?, card_serial = ?, application_id = ?"
            " WHERE cabinet = ? AND drawer = ? AND idx = ?",
            (state.value, card_serial, application_id, slot.cabinet, slot.drawer, slot.index),
        )

    @staticmethod
    def _require_slot(slot: StoredSlot, *states: SlotState) -> None:
        if slot.state not in states:
            raise SlotError(
                f"cabinet {slot.cabinet}: slot {slot.code} is {slot.state.value}",
                slot=slot.code,
                state=slot.state.value,
            )

    def begin_deposit(
        self,
        application_id: str,
        *,
        cabinet: str,
        drawer: int,
        index: int,
        command: CommandRow,
        state: ControllerState | None,
        actor: str,
    ) -> CardRecord:
        """A card is about to be deposited: the slot becomes RESERVED for it, the card
        DEPOSITING, the deposit command and the counters are written, in one transaction.

        Reserving with the command (not for a whole tray ahead) means a reserved slot always has
        its command on record, so reconciliation never mistakes a slot still waiting for its
        command for a deposit that did not happen.  ``SlotError`` if the slot is no longer
        EMPTY, ``CardStateError`` if the card cannot be deposited (or belongs to another office);
        nothing is written then."""
        with self._write() as conn:
            card = self._card_for_update(conn, application_id)
            slot = self._slot_for_update(conn, cabinet, drawer, index)
            self._require_slot(slot, SlotState.EMPTY)
            office = conn.execute(
                "SELECT office FROM cabinets WHERE cabinet = ?", (cabinet,)
            ).fetchone()[0]
            if office != card.office:
                raise CardStateError(
                    "card belongs to another office than the cabinet",
                    application_id=application_id,
                    state=card.state.value,
                    reason="other_office",
                )
            self._move_card(
                conn,
                card,
                CardState.DEPOSITING,
                allowed_from=(CardState.AWAITING_DEPOSIT, CardState.EXCEPTION),
                cabinet=cabinet,
                drawer=drawer,
                idx=index,
                officer=actor,
            )
            self._set_slot(conn, slot, SlotState.RESERVED, card.card_serial, application_id)
            self._insert_command(conn, command)
            self._put_state(conn, state)
            updated = self._card_for_update(conn, application_id)
        return updated

    def release_deposit(self, application_id: str) -> CardRecord:
        """The deposit did not happen (door closed empty, command refused or never performed,
        sensor empty): the slot is EMPTY again and the card back AWAITING_DEPOSIT."""
        with self._write() as conn:
            card = self._card_for_update(conn, application_id)
            self._move_card(
                conn,
                card,
                CardState.AWAITING_DEPOSIT,
                allowed_from=(CardState.DEPOSITING,),
                cabinet=None,
                drawer=None,
                idx=None,
            )
            if card.cabinet is not None and card.drawer is not None and card.index is not None:
                slot = self._slot_for_update(conn, card.cabinet, card.drawer, card.index)
                if slot.state is SlotState.RESERVED and slot.application_id == application_id:
                    self._set_slot(conn, slot, SlotState.EMPTY, None, None)
            updated = self._card_for_update(conn, application_id)
        return updated

    def complete_deposit(self, application_id: str) -> CardRecord:
        """The slot's sensor read this card's serial in its reserved slot: STOCKED."""
        with self._write() as conn:
            card = self._card_for_update(conn, application_id)
            if card.cabinet is None or card.drawer is None or card.index is None:
                raise CardStateError(
                    "card has no slot",
                    application_id=application_id,
                    state=card.state.value,
                    reason="no_slot",
                )
            slot = self._slot_for_update(conn, card.cabinet, card.drawer, card.index)
            self._require_slot(slot, SlotState.RESERVED)
            self._move_card(
                conn,
                card,
                CardState.STOCKED,
                allowed_from=(CardState.DEPOSITING,),
                stocked_at=self.now(),
            )
            self._set_slot(conn, slot, SlotState.OCCUPIED, card.card_serial, application_id)
            updated = self._card_for_update(conn, application_id)
        return updated

    def begin_open(
        self,
        application_id: str,
        purpose: Literal["retrieval", "return"],
        command: CommandRow,
        state: ControllerState | None,
        *,
        officer: str,
    ) -> CardRecord:
        """A STOCKED card's slot is about to be opened (for the applicant, or to return the card):
        card RETRIEVING/RETURNING, slot OPEN_FOR_RETRIEVAL, the command and counters written, in
        one transaction.  A card not STOCKED (a retrieval already under way, issued, …) raises
        ``CardStateError`` and nothing is written: this is what stops a slot opening twice."""
        target = CardState.RETRIEVING if purpose == "retrieval" else CardState.RETURNING
        with self._write() as conn:
            card = self._card_for_update(conn, application_id)
            self._move_card(conn, card, target, allowed_from=(CardState.STOCKED,), officer=officer)
            assert card.cabinet is not None and card.drawer is not None and card.index is not None
            slot = self._slot_for_update(conn, card.cabinet, card.drawer, card.index)
            self._require_slot(slot, SlotState.OCCUPIED)
            self._set_slot(
                conn, slot, SlotState.OPEN_FOR_RETRIEVAL, card.card_serial, application_id
            )
            self._insert_command(conn, command)
            self._put_state(conn, state)
            updated = self._card_for_update(conn, application_id)
        return updated

    def complete_open(self, application_id: str) -> CardRecord:
        """The card was taken from its open slot: ISSUED (retrieval) or RETURNED (return); the
        slot is EMPTY; the lookup digests are cleared (nobody needs to find it any more)."""
        with self._write() as conn:
            card = self._card_for_update(conn, application_id)
            now = self.now()
            stamp: dict[str, Any]
            if card.state is CardState.RETRIEVING:
                target, stamp = CardState.ISSUED, {"issued_at": now}
            elif card.state is CardState.RETURNING:
                target, stamp = CardState.RETURNED, {"returned_at": now}
            else:
                raise CardStateError(
                    f"card is {card.state.value}, not being taken out",
                    application_id=application_id,
                    state=card.state.value,
                    reason=f"card_{card.state.value.lower()}",
                )
            self._move_card(conn, card, target, hkid_digest=None, receipt_digest=None, **stamp)
            assert card.cabinet is not None and card.drawer is not None and card.index is not None
            slot = self._slot_for_update(conn, card.cabinet, card.drawer, card.index)
            if slot.application_id == application_id:
                self._set_slot(conn, slot, SlotState.EMPTY, None, None)
            updated = self._card_for_update(conn, application_id)
        return updated

    def cancel_open(self, application_id: str) -> CardRecord:
        """The slot was not opened after all (refused, never performed) or closed with the card
        still in it, as its sensor says: STOCKED, slot OCCUPIED."""
        with self._write() as conn:
            card = self._card_for_update(conn, application_id)
            self._move_card(
                conn,
                card,
                CardState.STOCKED,
                allowed_from=(CardState.RETRIEVING, CardState.RETURNING),
            )
            assert card.cabinet is not None and card.drawer is not None and card.index is not None
            slot = self._slot_for_update(conn, card.cabinet, card.drawer, card.index)
            if slot.application_id == application_id:
                self._set_slot(conn, slot, SlotState.OCCUPIED, card.card_serial, application_id)
            updated = self._card_for_update(conn, application_id)
        return updated

    # -- discrepancies --------------------------------------------------------------------------

    def raise_discrepancy(
        self,
        cabinet: str,
        drawer: int | None,
        index: int | None,
        kind: DiscrepancyKind,
        *,
        expected_serial: str | None = None,
        sensed_serial: str | None = None,
        application_id: str | None = None,
    ) -> tuple[DiscrepancyRecord, bool]:
        """Record a discrepancy; the slot becomes FAULT (holding what was sensed) and the card
        expected there EXCEPTION (keeping its last known slot).  A slot with an open discrepancy
        gets no second one: returns (the open one, False).  Otherwise (the new one, True)."""
        with self._write() as conn:
            if drawer is not None and index is not None:
                existing = conn.execute(
                    f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies"  # noqa: S608
                    " WHERE cabinet = ? AND drawer = ? AND idx = ? AND resolved_at IS NULL",
                    (cabinet, drawer, index),
                ).fetchone()
                if existing is not None:
                    return _discrepancy(existing), False
                slot = self._slot_for_update(conn, cabinet, drawer, index)
                self._set_slot(conn, slot, SlotState.FAULT, sensed_serial, None)
                if application_id is not None:
                    card = self._card_for_update(conn, application_id)
                    if CardState.EXCEPTION in CARD_TRANSITIONS[card.state]:
                        self._move_card(conn, card, CardState.EXCEPTION)
            cursor = conn.execute(
                "INSERT INTO discrepancies (cabinet, drawer, idx, kind, expected_serial,"
                " sensed_serial, application_id, raised_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cabinet,
                    drawer,
                    index,
                    kind.value,
                    expected_serial,
                    sensed_serial,
                    application_id,
                    self.now(),
                ),
            )
            row = conn.execute(
                f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies WHERE id = ?",  # noqa: S608
                (cursor.lastrowid,),
            ).fetchone()
        return _discrepancy(row), True

    def discrepancy(self, discrepancy_id: int) -> DiscrepancyRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies WHERE id = ?",  # noqa: S608
                (discrepancy_id,),
            ).fetchone()
        return None if row is None else _discrepancy(row)

    def discrepancies(
        self, *, cabinet: str | None = None, open_only: bool = True
    ) -> list[DiscrepancyRecord]:
        clauses, args = [], []
        if cabinet is not None:
            clauses.append("cabinet = ?")
            args.append(cabinet)
        if open_only:
            clauses.append("resolved_at IS NULL")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies{where} ORDER BY id",  # noqa: S608
                args,
            ).fetchall()
        return [_discrepancy(row) for row in rows]

    def resolve_discrepancy(
        self,
        discrepancy_id: int,
        *,
        resolved_by: str,
        resolution: str,
        sensed_state: SlotState | None,
        sensed_serial: str | None,
    ) -> tuple[DiscrepancyRecord, CardRecord | None]:
        """Close a discrepancy after a supervisor dealt with the slot.

        The slot leaves FAULT for what its sensor reads *now* (``sensed_state`` and
        ``sensed_serial`` from a fresh inventory scan), never for what anyone expects:

        - EMPTY, nothing sensed: the slot is EMPTY;
        - OCCUPIED with the serial of a card of this cabinet's office that is not in a slot
          (EXCEPTION, AWAITING_DEPOSIT): that card is STOCKED there (returned as the second item);
        - anything else (still faulted or open, a card the store does not know, a card already
          in another slot): ``SlotError``, nothing changes: take the card out and resolve again.

        A cabinet-level discrepancy (no slot) is just closed.
        """
        if not resolution or len(resolution) > 64 or not resolution.isprintable():
            raise ValueError("a resolution is a short printable code")
        stocked: CardRecord | None = None
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies WHERE id = ?",  # noqa: S608
                (discrepancy_id,),
            ).fetchone()
            if row is None:
                raise KeyError(discrepancy_id)
            record = _discrepancy(row)
            if not record.open:
                raise SlotError(f"discrepancy {discrepancy_id} is already resolved")
            if record.drawer is not None and record.index is not None:
                slot = self._slot_for_update(conn, record.cabinet, record.drawer, record.index)
                if sensed_state is SlotState.EMPTY and sensed_serial is None:
                    self._set_slot(conn, slot, SlotState.EMPTY, None, None)
                elif sensed_state is SlotState.OCCUPIED and sensed_serial is not None:
                    stocked = self._stock_found(conn, slot, sensed_serial)
                else:
                    raise SlotError(
                        f"cabinet {slot.cabinet}: slot {slot.code} is not settled"
                        f" ({sensed_state.value if sensed_state else 'unknown'}): resolve after"
                        " the slot is closed and scanned",
                        slot=slot.code,
                        state=sensed_state.value if sensed_state else None,
                    )
            conn.execute(
                "UPDATE discrepancies SET resolved_at = ?, resolved_by = ?, resolution = ?"
                " WHERE id = ?",
                (self.now(), resolved_by, resolution, discrepancy_id),
            )
            row = conn.execute(
                f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies WHERE id = ?",  # noqa: S608
                (discrepancy_id,),
            ).fetchone()
        return _discrepancy(row), stocked

    def _stock_found(self, conn: sqlite3.Connection, slot: StoredSlot, serial: str) -> CardRecord:
        row = conn.execute(
            f"SELECT {_CARD_COLUMNS} FROM cards WHERE card_serial = ?",  # noqa: S608
            (serial,),
        ).fetchone()
        office = conn.execute(
            "SELECT office FROM cabinets WHERE cabinet = ?", (slot.cabinet,)
        ).fetchone()[0]
        card = None if row is None else _card(row)
        if (
            card is None
            or card.office != office
            or card.state not in (CardState.EXCEPTION, CardState.AWAITING_DEPOSIT)
        ):
            raise SlotError(
                f"cabinet {slot.cabinet}: slot {slot.code} holds a card that cannot be stocked"
                " there: take it out and resolve again",
                slot=slot.code,
                state=SlotState.OCCUPIED.value,
            )
        if card.state is CardState.AWAITING_DEPOSIT:
            self._move_card(conn, card, CardState.DEPOSITING)
            card = self._card_for_update(conn, card.application_id)
        self._move_card(
            conn,
            card,
            CardState.STOCKED,
            cabinet=slot.cabinet,
            drawer=slot.drawer,
            idx=slot.index,
            stocked_at=self.now(),
        )
        self._set_slot(conn, slot, SlotState.OCCUPIED, serial, card.application_id)
        return self._card_for_update(conn, card.application_id)

    # -- officers -------------------------------------------------------------------------------

    def add_officer(self, officer_id: str, office: str, role: str, password_hash: str) -> None:
        check_id(officer_id, "officer")
        check_id(office, "office")
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO officers (officer_id, office, role, password_hash, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (officer_id, office, role, password_hash, self.now()),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"officer {officer_id} exists") from None

    def officer(self, officer_id: str) -> OfficerRecord | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT officer_id, office, role, password_hash, active FROM officers"
                " WHERE officer_id = ?",
                (officer_id,),
            ).fetchone()
        return None if row is None else OfficerRecord(row[0], row[1], row[2], row[3], bool(row[4]))

    def set_officer_password(self, officer_id: str, password_hash: str) -> None:
        with self._write() as conn:
            if (
                conn.execute(
                    "UPDATE officers SET password_hash = ? WHERE officer_id = ?",
                    (password_hash, officer_id),
                ).rowcount
                != 1
            ):
                raise KeyError(officer_id)

    def set_officer_active(self, officer_id: str, active: bool) -> None:
        with self._write() as conn:
            if (
                conn.execute(
                    "UPDATE officers SET active = ? WHERE officer_id = ?", (int(active), officer_id)
                ).rowcount
                != 1
            ):
                raise KeyError(officer_id)
