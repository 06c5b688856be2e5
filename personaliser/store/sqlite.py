"""The SQLite store: the embedded default (DESIGN §7), one database file in WAL mode.

Why each setting:

- ``journal_mode=WAL``: readers (status, metrics, the CLI) never block the line's writer and the
  writer never blocks them.
- ``synchronous``: in WAL mode FULL syncs the WAL at every commit; NORMAL syncs only at
  checkpoints, so a power loss or OS crash (not a killed process: the WAL is in the OS's cache
  and survives it) can roll back the last commits.  The WAL is a log: one sync makes every
  earlier commit durable too, and what a power loss takes is always a suffix of the commits.
  ``sync="full"`` syncs every commit.  ``sync="milestones"`` (the default) syncs every commit
  except a transition *between station states* (into ENCODED, PRINTING, PRINTED, VERIFYING,
  :data:`RELAXED_STATES`).  Why that loses nothing a restart needs: the card entered the
  station path through ENCODING, synced *before* its blank was touched (write-ahead); losing a
  later in-station transition leaves the card in an earlier station state, which is exactly what
  a process killed a moment earlier leaves, and restart recovery treats every station state
  alike (the blank is spoiled and the application re-queued, life cycle Rule 3).  Every commit
  that states a fact about a physical card outside a station is synced before the line acts on
  it: PASSED (the blank bound, the card to the stacker), SPOILED, QUEUED, blanks issued,
  sampled, returned, intake, purges.  What a power loss can cost: the station (and, for a card
  lost between ENCODING and ENCODED, the serial) named in the spoil log of a card that was on
  the line anyway.  Each synced commit is some 40-100 us of CPU on the line host.
- ``foreign_keys=ON``: SQLite leaves them off unless asked, per connection.
- ``secure_delete=ON``: deleted content is overwritten with zeros, so purged ciphertext does not
  linger in free pages (some builds default to it, SQLITE_SECURE_DELETE; we do not rely on that).  Old page images stay in the WAL file until a checkpoint;
  :meth:`SqliteStore.checkpoint` copies them back and truncates it.
- ``BEGIN IMMEDIATE`` for every write: the write lock is taken before the current state is read, so
  two writers never both read a state and then collide at commit (a deferred transaction that
  upgrades to a write after another commit fails with SQLITE_BUSY without waiting on the timeout).
- One connection per thread (the line runtime is asyncio plus head threads); SQLite serialises the
  writers and the busy timeout makes them wait in turn.
- STRICT tables, schema version in ``user_version``, migrations as data (:data:`MIGRATIONS`), each
  applied in one transaction with its version number.
- Timestamps are UTC ISO 8601 from an injected clock, so simulations run on a virtual clock.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from personaliser.applications import Application, Rejection
from personaliser.errors import (
    BlankError,
    DuplicateError,
    NotFoundError,
    PersoError,
    PersonalDataError,
    StoreError,
)
from personaliser.lifecycle import (
    MAIN_PATH,
    STATION_STATES,
    BlankState,
    State,
    check,
    check_blank,
    check_fields,
)
from personaliser.store.base import (
    ApplicationRecord,
    Attempt,
    Batch,
    BlankRecord,
    Event,
    IntakeCounts,
    SpoilEntry,
    StockCounts,
    TransitionRequest,
    TransitionResult,
)
from personaliser.store.crypto import PersonalDataCipher, SealedPersonalData

__all__ = ["MIGRATIONS", "RELAXED_STATES", "SYNC_MODES", "SqliteStore", "utc_now"]

Clock = Callable[[], datetime]
FaultHook = Callable[[str], None]

# Migration N brings a database from user_version N-1 to N.  Append; never edit a released one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE batches (
            batch_id    TEXT PRIMARY KEY,
            office      TEXT NOT NULL,
            due_date    TEXT NOT NULL,
            created_at  TEXT NOT NULL
        ) STRICT""",
        """CREATE TABLE applications (
            application_id  TEXT PRIMARY KEY,
            state           TEXT NOT NULL CHECK (state IN ('APPROVED', 'QUEUED', 'ENCODING',
                                'ENCODED', 'PRINTING', 'PRINTED', 'VERIFYING', 'PASSED',
                                'DISPATCHED', 'STOCKED', 'ISSUED', 'SPOILED', 'RETURNED',
                                'REJECTED')),
            office          TEXT,
            collection_date TEXT,
            approved_at     TEXT,
            priority        TEXT,
            batch_id        TEXT REFERENCES batches (batch_id),
            attempts        INTEGER NOT NULL DEFAULT 0,
            cabinet         TEXT,
            slot            TEXT,
            pd_key_id       TEXT,
            pd_identity     BLOB,
            pd_portrait     BLOB,
            pd_fingerprints BLOB,
            purged_at       TEXT,
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX applications_by_state ON applications (state)",
        "CREATE INDEX applications_by_office ON applications (office, state)",
        "CREATE INDEX applications_by_batch ON applications (batch_id, state)",
        """CREATE TABLE blanks (
            blank_id        INTEGER PRIMARY KEY,
            serial          TEXT UNIQUE,
            batch_id        TEXT NOT NULL REFERENCES batches (batch_id),
            state           TEXT NOT NULL CHECK (state IN ('ISSUED_TO_LINE', 'GOOD', 'SPOILED',
                                'SAMPLE', 'RETURNED')),
            application_id  TEXT REFERENCES applications (application_id),
            reason          TEXT,
            updated_at      TEXT NOT NULL,
            CHECK ((state = 'GOOD') = (application_id IS NOT NULL))
        ) STRICT""",
        "CREATE INDEX blanks_by_batch ON blanks (batch_id, state)",
        """CREATE TABLE attempts (
            application_id  TEXT NOT NULL REFERENCES applications (application_id),
            attempt         INTEGER NOT NULL,
            batch_id        TEXT NOT NULL REFERENCES batches (batch_id),
            blank_id        INTEGER UNIQUE REFERENCES blanks (blank_id),
            started_at      TEXT NOT NULL,
            ended_at        TEXT,
            outcome         TEXT CHECK (outcome IN ('PASSED', 'SPOILED')),
            PRIMARY KEY (application_id, attempt)
        ) STRICT""",
        """CREATE UNIQUE INDEX attempts_one_open ON attempts (application_id)
            WHERE ended_at IS NULL""",
        "CREATE INDEX attempts_open_by_batch ON attempts (batch_id) WHERE ended_at IS NULL",
        """CREATE TABLE spoil_log (
            seq             INTEGER PRIMARY KEY,
            blank_id        INTEGER NOT NULL UNIQUE REFERENCES blanks (blank_id),
            batch_id        TEXT NOT NULL REFERENCES batches (batch_id),
            application_id  TEXT REFERENCES applications (application_id),
            attempt         INTEGER,
            station         TEXT,
            reason          TEXT NOT NULL,
            at              TEXT NOT NULL
        ) STRICT""",
        """CREATE TABLE stock (
            batch_id  TEXT PRIMARY KEY REFERENCES batches (batch_id),
            issued    INTEGER NOT NULL DEFAULT 0 CHECK (issued >= 0),
            good      INTEGER NOT NULL DEFAULT 0 CHECK (good >= 0),
            spoiled   INTEGER NOT NULL DEFAULT 0 CHECK (spoiled >= 0),
            samples   INTEGER NOT NULL DEFAULT 0 CHECK (samples >= 0),
            returned  INTEGER NOT NULL DEFAULT 0 CHECK (returned >= 0),
            CHECK (good + spoiled + samples + returned <= issued)
        ) STRICT""",
        """CREATE TABLE events (
            seq             INTEGER PRIMARY KEY AUTOINCREMENT,
            idempotency_key TEXT NOT NULL UNIQUE,
            kind            TEXT NOT NULL,
            application_id  TEXT,
            batch_id        TEXT,
            blank_id        INTEGER,
            from_state      TEXT,
            to_state        TEXT,
            fields          TEXT NOT NULL,
            actor           TEXT NOT NULL,
            at              TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX events_by_application ON events (application_id, seq)",
        """CREATE TRIGGER events_append_only_u BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
        """CREATE TRIGGER events_append_only_d BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
        """CREATE TRIGGER spoil_log_append_only_u BEFORE UPDATE ON spoil_log
            BEGIN SELECT RAISE(ABORT, 'the spoil log is append-only'); END""",
        """CREATE TRIGGER spoil_log_append_only_d BEFORE DELETE ON spoil_log
            BEGIN SELECT RAISE(ABORT, 'the spoil log is append-only'); END""",
        """CREATE TABLE intake_rejections (
            source          TEXT NOT NULL,
            line            INTEGER NOT NULL,
            field           TEXT NOT NULL,
            reason          TEXT NOT NULL,
            application_id  TEXT,
            at              TEXT NOT NULL,
            PRIMARY KEY (source, line, field)
        ) STRICT""",
        "CREATE INDEX intake_rejections_by_application ON intake_rejections (application_id)",
    ),
    # 2: cheaper transitions (performance only; what the store answers is unchanged).
    # - state_pad keeps an application row's encoded size the same whatever its state, so a
    #   transition rewrites the row in place (see _STATE_PAD);
    # - the office and batch indexes no longer carry the state: every transition moved the row's
    #   entry in both (two to four pages written per transition).  What reads them looks at one
    #   batch (a tray, tens of rows) or one office, and gets the state from the row.
    (
        "ALTER TABLE applications ADD COLUMN state_pad TEXT NOT NULL DEFAULT ''",
        "DROP INDEX applications_by_office",
        "CREATE INDEX applications_by_office ON applications (office)",
        "DROP INDEX applications_by_batch",
        "CREATE INDEX applications_by_batch ON applications (batch_id)",
    ),
)

# The application id pattern of personaliser.applications.Application: a rejected record gets a
# REJECTED row only under an id that could have been valid.
_APPLICATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_INTAKE_CHUNK = 256
_MAX_KEY_CHARS = 200
_PURGE_AT = (State.DISPATCHED, State.STOCKED, State.ISSUED)

# An application row carries ~15 KB of sealed personal data in overflow pages.  SQLite rewrites a
# row in place only when its encoded size is unchanged (btreeOverwriteCell, which then writes just
# the pages whose bytes differ); a row that grows or shrinks is deleted and re-inserted, its whole
# overflow chain freed and rewritten and, with secure_delete, the freed pages zeroed: some 15 WAL
# pages per transition instead of 2 or 3.  State names differ in length ('PASSED', 'VERIFYING'),
# so every transition writes state_pad with the state, keeping len(state) + len(state_pad) fixed.
_STATE_WIDTH: Final = max(len(s.value) for s in State)
_STATE_PAD: Final[Mapping[State, str]] = {s: " " * (_STATE_WIDTH - len(s.value)) for s in State}

#: Targets of transitions committed without a sync under ``sync="milestones"`` (module docstring).
RELAXED_STATES: Final = frozenset({State.ENCODED, State.PRINTING, State.PRINTED, State.VERIFYING})
SYNC_MODES: Final = ("full", "milestones")

# What a transition reads of the application row: not the sealed personal data (15 KB of
# overflow pages that the transition does not need), only whether it is still there (pd_key_id
# is written and cleared with the sealed fields, and sits before them in the row).
_STATE_ROW: Final = (
    "SELECT application_id, state, office, batch_id, attempts,"
    " pd_key_id IS NOT NULL AS has_pd FROM applications WHERE application_id = ?"
)

_BUMP: Final[Mapping[BlankState, str]] = {
    BlankState.GOOD: "UPDATE stock SET good = good + 1 WHERE batch_id = ?",
    BlankState.SPOILED: "UPDATE stock SET spoiled = spoiled + 1 WHERE batch_id = ?",
    BlankState.SAMPLE: "UPDATE stock SET samples = samples + 1 WHERE batch_id = ?",
    BlankState.RETURNED: "UPDATE stock SET returned = returned + 1 WHERE batch_id = ?",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _opt_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _canon(fields: Mapping[str, str]) -> str:
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _check_text(name: str, value: str, limit: int = _MAX_KEY_CHARS) -> None:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise ValueError(f"{name} must be a non-empty printable string of at most {limit} chars")


class SqliteStore:
    """The :class:`~personaliser.store.base.Store` on one SQLite file.

    ``purge_at`` is the state in which a card's personal data is purged in the same transaction:
    DISPATCHED until the e-cabinet lands, then ISSUED (DESIGN §3, data minimisation); RETURNED
    purges too.  ``fault_hook`` is a test seam called with ``"begin"``, ``"applied"``,
    ``"commit"`` and ``"committed"`` inside every write, so a test can kill the process mid-way.
    ``sync`` is ``"milestones"`` or ``"full"`` (module docstring).
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        cipher: PersonalDataCipher,
        clock: Clock = utc_now,
        actor: str = "perso",
        purge_at: State = State.DISPATCHED,
        busy_timeout: float = 30.0,
        fault_hook: FaultHook | None = None,
        sync: str = "milestones",
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}")
        if purge_at not in _PURGE_AT:
            raise ValueError(f"purge_at must be one of {[s.value for s in _PURGE_AT]}")
        _check_text("actor", actor)
        self.path = Path(path)
        self._cipher = cipher
        self._clock = clock
        self._actor = actor
        self._purge_states = frozenset(MAIN_PATH[MAIN_PATH.index(purge_at) :]) | {State.RETURNED}
        self._busy_timeout = busy_timeout
        self._hook = fault_hook or (lambda _point: None)
        self._relax = sync == "milestones"
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
        return f"SqliteStore({str(self.path)!r})"

    @property
    def sync(self) -> str:
        """``"milestones"`` or ``"full"``: which commits are synced (module docstring)."""
        return "milestones" if self._relax else "full"

    # -- connections and transactions

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit: transactions are begun explicitly
                check_same_thread=False,  # only close() touches another thread's connection
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the store {self.path} cannot use WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")
        except (sqlite3.Error, StoreError) as exc:
            conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise StoreError("the store is closed")
                conn = self._connect()
                self._connections.append(conn)
            self._local.conn = conn
            self._local.sync = "FULL"
        return conn

    def _set_sync(self, conn: sqlite3.Connection, level: str) -> None:
        # The level is read at COMMIT; it is set between transactions, and only when it changes.
        if self._local.sync != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._local.sync = level

    @contextmanager
    def _write(self, *, relaxed: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``relaxed`` commits it without a sync if the store allows."""
        conn = self._conn()
        try:
            self._set_sync(conn, "NORMAL" if relaxed and self._relax else "FULL")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a write: {exc}") from exc
        try:
            self._hook("begin")
            yield conn
            self._hook("commit")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"database error: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._hook("committed")

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

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def _migrate(self) -> None:
        with self._write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the store {self.path} has schema {version}, newer than this engine's"
                    f" {len(MIGRATIONS)}"
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number:d}")

    @property
    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate it; False if readers kept it busy."""
        try:
            busy = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc
        return not busy

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the audit trail

    def _event(
        self,
        conn: sqlite3.Connection,
        *,
        key: str,
        kind: str,
        at: datetime,
        actor: str | None,
        application_id: str | None = None,
        batch_id: str | None = None,
        blank_id: int | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        fields: str = "{}",
    ) -> int:
        cur = conn.execute(
            "INSERT INTO events (idempotency_key, kind, application_id, batch_id, blank_id,"
            " from_state, to_state, fields, actor, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, kind, application_id, batch_id, blank_id, from_state, to_state, fields,
             actor or self._actor, _ts(at)),
        )  # fmt: skip
        assert cur.lastrowid is not None  # an INSERT into a rowid table sets it
        return cur.lastrowid

    @staticmethod
    def _recorded(
        conn: sqlite3.Connection,
        key: str,
        *,
        kind: str,
        application_id: str | None,
        batch_id: str | None,
        to_state: str | None,
        fields: str,
    ) -> sqlite3.Row | None:
        """The event already recorded under ``key``, if it is this operation; None if none."""
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM events WHERE idempotency_key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        mine = (kind, application_id, to_state, fields)
        if (row["kind"], row["application_id"], row["to_state"], row["fields"]) != mine or (
            batch_id is not None and row["batch_id"] != batch_id
        ):
            raise DuplicateError(key)
        return row

    def events(
        self,
        *,
        application_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        sql = (
            "SELECT e.*, b.serial FROM events AS e LEFT JOIN blanks AS b USING (blank_id)"
            " WHERE e.seq > ?"
        )
        args: list[Any] = [after_seq]
        if application_id is not None:
            sql += " AND e.application_id = ?"
            args.append(application_id)
        sql += " ORDER BY e.seq LIMIT ?"
        args.append(-1 if limit is None else limit)
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [
            Event(
                seq=r["seq"],
                kind=r["kind"],
                idempotency_key=r["idempotency_key"],
                application_id=r["application_id"],
                batch_id=r["batch_id"],
                blank_serial=r["serial"],
                from_state=r["from_state"],
                to_state=r["to_state"],
                fields=json.loads(r["fields"]),
                actor=r["actor"],
                at=_dt(r["at"]),
            )
            for r in rows
        ]

    # -- intake

    def add_applications(
        self, items: Iterable[Application | Rejection], *, source: str
    ) -> IntakeCounts:
        _check_text("source", source)
        counts = {"new": 0, "duplicate": 0, "conflicting": 0}
        rejected_lines: set[int] = set()
        chunk: list[Application | Rejection] = []

        def flush() -> None:
            with self._write() as conn:
                at = self._now()
                for item in chunk:
                    if isinstance(item, Rejection):
                        self._add_rejection(conn, item, source, at)
                        rejected_lines.add(item.line)
                    else:
                        counts[self._add_application(conn, item, source, at)] += 1
            chunk.clear()

        # Chunked: one fsync per chunk, not per record; a crash between chunks is harmless
        # because a re-import skips what is already stored.
        for item in items:
            chunk.append(item)
            if len(chunk) >= _INTAKE_CHUNK:
                flush()
        if chunk:
            flush()
        return IntakeCounts(rejected=len(rejected_lines), **counts)

    def _add_application(
        self, conn: sqlite3.Connection, app: Application, source: str, at: datetime
    ) -> str:
        app_id = app.application_id
        row = conn.execute(
            "SELECT * FROM applications WHERE application_id = ?", (app_id,)
        ).fetchone()
        if row is not None and row["state"] != State.REJECTED:
            if row["pd_identity"] is None:
                return "duplicate"  # purged: nothing left to compare, and nothing to redo
            stored = self._open(row)
            same = stored.model_dump(mode="json") == app.model_dump(mode="json")
            return "duplicate" if same else "conflicting"
        sealed = self._cipher.seal_application(app)
        clear = (
            app.collection_office,
            app.collection_date.isoformat(),
            app.approved_at.isoformat(),
            app.priority,
            sealed.key_id,
            sealed.identity,
            sealed.portrait,
            sealed.fingerprints,
        )
        fields = _canon({"source": source})
        if row is None:
            conn.execute(
                "INSERT INTO applications (office, collection_date, approved_at, priority,"
                " pd_key_id, pd_identity, pd_portrait, pd_fingerprints, application_id, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'APPROVED', ?, ?)",
                (*clear, app_id, _ts(at), _ts(at)),
            )
            self._event(conn, key=f"intake/{app_id}", kind="intake", at=at, actor=None,
                        application_id=app_id, to_state=State.APPROVED, fields=fields)  # fmt: skip
            return "new"
        # Rule 2: a corrected record replaces a rejected one.
        check(State.REJECTED, State.APPROVED, card=app_id)
        conn.execute(
            "UPDATE applications SET office = ?, collection_date = ?, approved_at = ?,"
            " priority = ?, pd_key_id = ?, pd_identity = ?, pd_portrait = ?,"
            " pd_fingerprints = ?, state = 'APPROVED', updated_at = ? WHERE application_id = ?",
            (*clear, _ts(at), app_id),
        )
        self._event(conn, key=f"intake/{app_id}/approved", kind="intake", at=at, actor=None,
                    application_id=app_id, from_state=State.REJECTED, to_state=State.APPROVED,
                    fields=fields)  # fmt: skip
        return "new"

    def _add_rejection(
        self, conn: sqlite3.Connection, rejection: Rejection, source: str, at: datetime
    ) -> None:
        app_id = rejection.application_id
        conn.execute(
            "INSERT OR IGNORE INTO intake_rejections (source, line, field, reason,"
            " application_id, at) VALUES (?, ?, ?, ?, ?, ?)",
            (source, rejection.line, rejection.field, rejection.reason, app_id, _ts(at)),
        )
        if (
            app_id is None
            or not _APPLICATION_ID.match(app_id)
            or rejection.field == "application_id"  # a bad or repeated id names nothing to reject
        ):
            return
        cur = conn.execute(
            "INSERT OR IGNORE INTO applications (application_id, state, created_at, updated_at)"
            " VALUES (?, 'REJECTED', ?, ?)",
            (app_id, _ts(at), _ts(at)),
        )
        if cur.rowcount:
            self._event(conn, key=f"intake/{app_id}", kind="intake", at=at, actor=None,
                        application_id=app_id, to_state=State.REJECTED,
                        fields=_canon({"source": source}))  # fmt: skip

    def rejections(
        self, *, application_id: str | None = None, source: str | None = None
    ) -> list[Rejection]:
        sql = "SELECT * FROM intake_rejections WHERE 1 = 1"
        args: list[Any] = []
        if application_id is not None:
            sql += " AND application_id = ?"
            args.append(application_id)
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY source, line, field", args).fetchall()
        return [Rejection(r["line"], r["field"], r["reason"], r["application_id"]) for r in rows]

    # -- applications

    @staticmethod
    def _record(row: sqlite3.Row) -> ApplicationRecord:
        return ApplicationRecord(
            application_id=row["application_id"],
            state=State(row["state"]),
            office=row["office"],
            collection_date=None if row["collection_date"] is None
            else date.fromisoformat(row["collection_date"]),
            approved_at=_opt_dt(row["approved_at"]),
            priority=row["priority"],
            batch_id=row["batch_id"],
            attempts=row["attempts"],
            cabinet=row["cabinet"],
            slot=row["slot"],
            purged=row["purged_at"] is not None,
            created_at=_dt(row["created_at"]),
            updated_at=_dt(row["updated_at"]),
        )  # fmt: skip

    @staticmethod
    def _app_row(conn: sqlite3.Connection, application_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM applications WHERE application_id = ?", (application_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError("application", application_id)
        return row

    @staticmethod
    def _state_row(conn: sqlite3.Connection, application_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(_STATE_ROW, (application_id,)).fetchone()
        if row is None:
            raise NotFoundError("application", application_id)
        return row

    def get(self, application_id: str) -> ApplicationRecord:
        with self._read() as conn:
            return self._record(self._app_row(conn, application_id))

    def list_applications(
        self,
        *,
        state: State | None = None,
        office: str | None = None,
        batch_id: str | None = None,
        limit: int | None = None,
    ) -> list[ApplicationRecord]:
        sql = "SELECT * FROM applications WHERE 1 = 1"
        args: list[Any] = []
        for column, value in (("state", state), ("office", office), ("batch_id", batch_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        sql += " ORDER BY rowid LIMIT ?"
        args.append(-1 if limit is None else limit)
        with self._read() as conn:
            return [self._record(r) for r in conn.execute(sql, args)]

    def count_by_state(self, *, batch_id: str | None = None) -> dict[State, int]:
        sql = "SELECT state, COUNT(*) FROM applications"
        args: tuple[str, ...] = ()
        if batch_id is not None:
            sql += " WHERE batch_id = ?"
            args = (batch_id,)
        with self._read() as conn:
            rows = conn.execute(sql + " GROUP BY state", args).fetchall()
        return {State(state): n for state, n in rows}

    def _open(self, row: sqlite3.Row) -> Application:
        app_id = row["application_id"]
        if row["pd_identity"] is None:
            why = "personal data purged" if row["purged_at"] else "no personal data stored"
            raise PersonalDataError(app_id, why)
        sealed = SealedPersonalData(
            key_id=row["pd_key_id"],
            identity=row["pd_identity"],
            portrait=row["pd_portrait"],
            fingerprints=row["pd_fingerprints"],
        )
        operational = {
            "application_id": app_id,
            "collection_office": row["office"],
            "collection_date": row["collection_date"],
            "approved_at": row["approved_at"],
            "priority": row["priority"],
        }
        return self._cipher.open_application(operational, sealed)

    def load_application(self, application_id: str) -> Application:
        # One statement reads one consistent row: no explicit read transaction around it.
        try:
            row = self._app_row(self._conn(), application_id)
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc
        return self._open(row)

    def purge_personal_data(self, application_id: str, *, actor: str | None = None) -> bool:
        with self._write() as conn:
            row = self._state_row(conn, application_id)
            return self._purge(conn, row, State(row["state"]), self._now(), actor)

    def _purge(
        self,
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        state: State,
        at: datetime,
        actor: str | None,
    ) -> bool:
        if not row["has_pd"]:
            return False
        app_id = row["application_id"]
        conn.execute(
            "UPDATE applications SET pd_key_id = NULL, pd_identity = NULL, pd_portrait = NULL,"
            " pd_fingerprints = NULL, purged_at = ? WHERE application_id = ?",
            (_ts(at), app_id),
        )
        self._event(conn, key=f"purge/{app_id}", kind="purge", at=at, actor=actor,
                    application_id=app_id, batch_id=row["batch_id"], from_state=state,
                    to_state=state)  # fmt: skip
        return True

    # -- the life cycle

    def transition(
        self,
        application_id: str,
        to: State,
        *,
        idempotency_key: str,
        actor: str | None = None,
        **fields: str,
    ) -> TransitionResult:
        to, canon = self._check_transition(to, idempotency_key, fields)
        request = TransitionRequest(application_id, to, idempotency_key, actor, fields)
        with self._write(relaxed=to in RELAXED_STATES) as conn:
            return self._transition_in(conn, request, to, canon)

    def transitions(
        self, requests: Sequence[TransitionRequest]
    ) -> list[TransitionResult | Exception]:
        """Group commit (``Store.transitions``): one write transaction, one savepoint each.

        Why: a commit is most of a transition's cost (the WAL frames of every page it touched,
        and a sync for a milestone); cards moving at the same moment share one, and a page
        touched by several of them (the events table's tail, the state index) is written once."""
        results: list[TransitionResult | Exception | None] = [None] * len(requests)
        checked: list[tuple[int, TransitionRequest, State, str]] = []
        for i, request in enumerate(requests):
            try:
                to, canon = self._check_transition(
                    request.to, request.idempotency_key, request.fields
                )
            except (ValueError, PersoError) as exc:
                results[i] = exc
                continue
            checked.append((i, request, to, canon))
        if checked:
            relaxed = all(to in RELAXED_STATES for _, _, to, _ in checked)
            with self._write(relaxed=relaxed) as conn:
                for i, request, to, canon in checked:
                    conn.execute("SAVEPOINT one_transition")
                    try:
                        results[i] = self._transition_in(conn, request, to, canon)
                    except (ValueError, PersoError) as exc:
                        # Refused: undo what it wrote; the others stand (SQLite "SAVEPOINT").
                        conn.execute("ROLLBACK TO one_transition")
                        results[i] = exc
                    conn.execute("RELEASE one_transition")
        return [r for r in results if r is not None]

    @staticmethod
    def _check_transition(
        to: State, idempotency_key: str, fields: Mapping[str, str]
    ) -> tuple[State, str]:
        to = State(to)
        if to in (State.APPROVED, State.REJECTED):
            raise ValueError(f"{to.value} is set by intake, not by a transition")
        check_fields(to, fields)
        _check_text("idempotency_key", idempotency_key)
        return to, _canon(fields)

    def _transition_in(
        self, conn: sqlite3.Connection, request: TransitionRequest, to: State, canon: str
    ) -> TransitionResult:
        """The transition inside an open write transaction."""
        application_id, idempotency_key = request.application_id, request.idempotency_key
        actor, fields = request.actor, request.fields
        done = self._recorded(
            conn, idempotency_key, kind="transition", application_id=application_id,
            batch_id=None, to_state=to, fields=canon,
        )  # fmt: skip
        if done is not None:
            return TransitionResult(
                seq=done["seq"],
                application_id=application_id,
                from_state=State(done["from_state"]),
                to_state=to,
                idempotency_key=idempotency_key,
                at=_dt(done["at"]),
                replayed=True,
            )
        at = self._now()
        row = self._state_row(conn, application_id)
        frm = State(row["state"])
        check(frm, to, card=application_id)
        batch_id, blank_id, attempts = self._apply(conn, row, to, fields, at)
        conn.execute(
            "UPDATE applications SET state = ?, state_pad = ?, attempts = ?, updated_at = ?"
            " WHERE application_id = ?",
            (to.value, _STATE_PAD[to], attempts, _ts(at), application_id),
        )
        self._hook("applied")
        seq = self._event(conn, key=idempotency_key, kind="transition", at=at, actor=actor,
                          application_id=application_id, batch_id=batch_id,
                          blank_id=blank_id, from_state=frm, to_state=to,
                          fields=canon)  # fmt: skip
        if to in self._purge_states:
            self._purge(conn, row, to, at, actor)
        return TransitionResult(seq, application_id, frm, to, idempotency_key, at)

    def _apply(
        self,
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        to: State,
        fields: Mapping[str, str],
        at: datetime,
    ) -> tuple[str | None, int | None, int]:
        """The side effects of entering ``to``; returns the batch and the blank it concerns and
        the application's attempt count (its row is updated once, by the caller)."""
        app_id: str = row["application_id"]
        batch_id: str | None = row["batch_id"]
        serial = fields.get("blank_serial")
        if to is State.QUEUED:
            batch = self._batch(conn, fields["batch_id"])
            if batch.office != row["office"]:
                raise ValueError(
                    f"batch {batch.batch_id} is for office {batch.office}, application"
                    f" {app_id} for {row['office']}"
                )
            conn.execute(
                "UPDATE applications SET batch_id = ? WHERE application_id = ?",
                (batch.batch_id, app_id),
            )
            return batch.batch_id, None, row["attempts"]
        blank_id: int | None = None
        attempts: int = row["attempts"]
        assert batch_id is not None  # every state after QUEUED has a batch
        if to is State.ENCODING:
            if self._free_blanks(conn, batch_id) < 1:
                raise BlankError(f"batch {batch_id} has no blank left on the line",
                                 batch_id=batch_id)  # fmt: skip
            blank_id = None if serial is None else self._identify(conn, batch_id, serial, at)
            attempts += 1
            conn.execute(
                "INSERT INTO attempts (application_id, attempt, batch_id, blank_id, started_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (app_id, attempts, batch_id, blank_id, _ts(at)),
            )
        elif to in STATION_STATES or to in (State.PASSED, State.SPOILED):
            attempt = self._open_attempt(conn, app_id)
            blank_id = attempt["blank_id"]
            if serial is not None:
                if blank_id is None:
                    blank_id = self._identify(conn, attempt["batch_id"], serial, at)
                    conn.execute(
                        "UPDATE attempts SET blank_id = ? WHERE application_id = ? AND attempt = ?",
                        (blank_id, app_id, attempt["attempt"]),
                    )
                elif attempt["serial"] != serial:
                    raise BlankError(
                        f"attempt {attempt['attempt']} of {app_id} is on blank"
                        f" {attempt['serial']}, not {serial}",
                        batch_id=attempt["batch_id"], serial=serial,
                    )  # fmt: skip
            if to is State.PASSED:
                self._end_attempt_passed(conn, attempt, blank_id, app_id, at)
            elif to is State.SPOILED:
                blank_id = self._end_attempt_spoiled(conn, attempt, blank_id, fields, at)
        elif to is State.STOCKED:
            conn.execute(
                "UPDATE applications SET cabinet = ?, slot = ? WHERE application_id = ?",
                (fields["cabinet"], fields["slot"], app_id),
            )
        return batch_id, blank_id, attempts

    @staticmethod
    def _open_attempt(conn: sqlite3.Connection, app_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT a.*, b.serial FROM attempts AS a LEFT JOIN blanks AS b USING (blank_id)"
            " WHERE a.application_id = ? AND a.ended_at IS NULL",
            (app_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"application {app_id} is in a station but has no open attempt")
        return row

    def _end_attempt_passed(
        self,
        conn: sqlite3.Connection,
        attempt: sqlite3.Row,
        blank_id: int | None,
        app_id: str,
        at: datetime,
    ) -> None:
        if blank_id is None:
            raise BlankError(f"application {app_id} cannot pass: no blank serial was recorded",
                             batch_id=attempt["batch_id"])  # fmt: skip
        # Rule 5 (late binding): the blank is bound to the application only now.
        self._set_blank(conn, blank_id, BlankState.GOOD, at, application_id=app_id)
        self._end_attempt(conn, attempt, State.PASSED, at)

    def _end_attempt_spoiled(
        self,
        conn: sqlite3.Connection,
        attempt: sqlite3.Row,
        blank_id: int | None,
        fields: Mapping[str, str],
        at: datetime,
    ) -> int:
        batch_id = attempt["batch_id"]
        reason = fields["reason"]
        if blank_id is None:  # the chip never answered: still a blank to account for
            blank_id = self._new_blank(
                conn, batch_id=batch_id, serial=None, state=BlankState.SPOILED, at=at, reason=reason
            )
        else:
            self._set_blank(conn, blank_id, BlankState.SPOILED, at, reason=reason)
        conn.execute(
            "INSERT INTO spoil_log (blank_id, batch_id, application_id, attempt, station,"
            " reason, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (blank_id, batch_id, attempt["application_id"], attempt["attempt"],
             fields.get("station"), reason, _ts(at)),
        )  # fmt: skip
        self._end_attempt(conn, attempt, State.SPOILED, at)
        return blank_id

    @staticmethod
    def _end_attempt(
        conn: sqlite3.Connection, attempt: sqlite3.Row, outcome: State, at: datetime
    ) -> None:
        conn.execute(
            "UPDATE attempts SET ended_at = ?, outcome = ? WHERE application_id = ? AND attempt = ?",
            (_ts(at), outcome.value, attempt["application_id"], attempt["attempt"]),
        )

    def attempts(self, application_id: str) -> list[Attempt]:
        with self._read() as conn:
            self._app_row(conn, application_id)
            rows = conn.execute(
                "SELECT a.*, b.serial FROM attempts AS a LEFT JOIN blanks AS b USING (blank_id)"
                " WHERE a.application_id = ? ORDER BY a.attempt",
                (application_id,),
            ).fetchall()
        return [
            Attempt(
                application_id=r["application_id"],
                attempt=r["attempt"],
                batch_id=r["batch_id"],
                blank_serial=r["serial"],
                started_at=_dt(r["started_at"]),
                ended_at=_opt_dt(r["ended_at"]),
                outcome=None if r["outcome"] is None else State(r["outcome"]),
            )
            for r in rows
        ]

    # -- batches, blanks and stock

    @staticmethod
    def _batch(conn: sqlite3.Connection, batch_id: str) -> Batch:
        row = conn.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        if row is None:
            raise NotFoundError("batch", batch_id)
        return Batch(
            batch_id=row["batch_id"],
            office=row["office"],
            due_date=date.fromisoformat(row["due_date"]),
            created_at=_dt(row["created_at"]),
        )

    def add_batch(self, batch_id: str, *, office: str, due_date: date) -> Batch:
        """Record a planned batch; idempotent on ``batch_id`` with the same office and due date."""
        if not _BATCH_ID.match(batch_id):
            raise ValueError("batch_id must be 1-64 characters A-Z, a-z, 0-9, '_', '.', ':', '-'")
        _check_text("office", office, 16)
        with self._write() as conn:
            try:
                batch = self._batch(conn, batch_id)
            except NotFoundError:
                pass
            else:
                if (batch.office, batch.due_date) != (office, due_date):
                    raise DuplicateError(batch_id, "batch id")
                return batch
            at = self._now()
            conn.execute(
                "INSERT INTO batches (batch_id, office, due_date, created_at) VALUES (?, ?, ?, ?)",
                (batch_id, office, due_date.isoformat(), _ts(at)),
            )
            conn.execute("INSERT INTO stock (batch_id) VALUES (?)", (batch_id,))
            fields = _canon({"office": office, "due_date": due_date.isoformat()})
            self._event(conn, key=f"batch/{batch_id}", kind="batch", at=at, actor=None,
                        batch_id=batch_id, fields=fields)  # fmt: skip
            return Batch(batch_id, office, due_date, at)

    def get_batch(self, batch_id: str) -> Batch:
        with self._read() as conn:
            return self._batch(conn, batch_id)

    def list_batches(self) -> list[Batch]:
        with self._read() as conn:
            ids = [r[0] for r in conn.execute("SELECT batch_id FROM batches ORDER BY rowid")]
            return [self._batch(conn, batch_id) for batch_id in ids]

    @staticmethod
    def _stock(conn: sqlite3.Connection, batch_id: str) -> StockCounts:
        row = conn.execute("SELECT * FROM stock WHERE batch_id = ?", (batch_id,)).fetchone()
        if row is None:
            raise NotFoundError("batch", batch_id)
        return StockCounts(
            batch_id=batch_id,
            issued=row["issued"],
            good=row["good"],
            spoiled=row["spoiled"],
            samples=row["samples"],
            returned=row["returned"],
        )

    def stock(self, batch_id: str) -> StockCounts:
        with self._read() as conn:
            return self._stock(conn, batch_id)

    def _free_blanks(self, conn: sqlite3.Connection, batch_id: str) -> int:
        """Blanks issued to the batch that are neither accounted for nor in a station."""
        in_station = conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE batch_id = ? AND ended_at IS NULL", (batch_id,)
        ).fetchone()[0]
        return int(self._stock(conn, batch_id).on_line - in_station)

    def issue_blanks(
        self, batch_id: str, count: int, *, idempotency_key: str, actor: str | None = None
    ) -> StockCounts:
        """Blanks handed from the vault to the line for a batch (counted; serials come later)."""
        if not isinstance(count, int) or count < 1:
            raise ValueError("count must be a positive integer")
        _check_text("idempotency_key", idempotency_key)
        fields = _canon({"count": str(count)})
        with self._write() as conn:
            done = self._recorded(conn, idempotency_key, kind="issue", application_id=None,
                                  batch_id=batch_id, to_state=None, fields=fields)  # fmt: skip
            if done is None:
                self._stock(conn, batch_id)
                conn.execute(
                    "UPDATE stock SET issued = issued + ? WHERE batch_id = ?", (count, batch_id)
                )
                self._event(conn, key=idempotency_key, kind="issue", at=self._now(),
                            actor=actor, batch_id=batch_id, fields=fields)  # fmt: skip
            return self._stock(conn, batch_id)

    def record_blank(
        self,
        batch_id: str,
        to: BlankState,
        *,
        reason: str,
        idempotency_key: str,
        serial: str | None = None,
        actor: str | None = None,
    ) -> BlankRecord:
        to = BlankState(to)
        if to not in (BlankState.SPOILED, BlankState.SAMPLE, BlankState.RETURNED):
            raise ValueError("a blank outside an attempt can become SPOILED, SAMPLE or RETURNED")
        _check_text("reason", reason)
        _check_text("idempotency_key", idempotency_key)
        if serial is not None:
            _check_text("serial", serial)
        described = {"blank_state": to.value, "reason": reason}
        if serial is not None:
            described["blank_serial"] = serial
        fields = _canon(described)
        with self._write() as conn:
            done = self._recorded(conn, idempotency_key, kind="blank", application_id=None,
                                  batch_id=batch_id, to_state=None, fields=fields)  # fmt: skip
            if done is not None:
                return self._blank(conn, "blank_id", done["blank_id"])
            if self._free_blanks(conn, batch_id) < 1:
                raise BlankError(f"batch {batch_id} has no blank left on the line",
                                 batch_id=batch_id, serial=serial)  # fmt: skip
            if serial is not None:
                existing = conn.execute(
                    "SELECT state FROM blanks WHERE serial = ?", (serial,)
                ).fetchone()
                if existing is not None:
                    check_blank(BlankState(existing["state"]), to, serial=serial)
                    raise BlankError(f"blank {serial} is in an attempt", serial=serial)
            at = self._now()
            blank_id = self._new_blank(
                conn, batch_id=batch_id, serial=serial, state=to, at=at, reason=reason
            )
            if to is BlankState.SPOILED:
                conn.execute(
                    "INSERT INTO spoil_log (blank_id, batch_id, reason, at) VALUES (?, ?, ?, ?)",
                    (blank_id, batch_id, reason, _ts(at)),
                )
            self._event(conn, key=idempotency_key, kind="blank", at=at, actor=actor,
                        batch_id=batch_id, blank_id=blank_id, fields=fields)  # fmt: skip
            return self._blank(conn, "blank_id", blank_id)

    def _identify(self, conn: sqlite3.Connection, batch_id: str, serial: str, at: datetime) -> int:
        """A blank's record, created when its chip first answers; a serial is used once."""
        row = conn.execute("SELECT state FROM blanks WHERE serial = ?", (serial,)).fetchone()
        if row is not None:
            raise BlankError(f"blank {serial} is already recorded ({row['state']}); a blank is"
                             " used once", batch_id=batch_id, serial=serial)  # fmt: skip
        return self._new_blank(
            conn,
            batch_id=batch_id,
            serial=serial,
            state=BlankState.ISSUED_TO_LINE,
            at=at,
            reason=None,
        )

    def _new_blank(
        self,
        conn: sqlite3.Connection,
        *,
        batch_id: str,
        serial: str | None,
        state: BlankState,
        at: datetime,
        reason: str | None,
    ) -> int:
        if state is not BlankState.ISSUED_TO_LINE:
            check_blank(BlankState.ISSUED_TO_LINE, state, serial=serial)
            conn.execute(_BUMP[state], (batch_id,))
        cur = conn.execute(
            "INSERT INTO blanks (serial, batch_id, state, reason, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (serial, batch_id, state.value, reason, _ts(at)),
        )
        assert cur.lastrowid is not None  # an INSERT into a rowid table sets it
        return cur.lastrowid

    def _set_blank(
        self,
        conn: sqlite3.Connection,
        blank_id: int,
        to: BlankState,
        at: datetime,
        *,
        application_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        row = conn.execute(
            "SELECT serial, batch_id, state FROM blanks WHERE blank_id = ?", (blank_id,)
        ).fetchone()
        check_blank(BlankState(row["state"]), to, serial=row["serial"])
        conn.execute(
            "UPDATE blanks SET state = ?, application_id = ?, reason = ?, updated_at = ?"
            " WHERE blank_id = ?",
            (to.value, application_id, reason, _ts(at), blank_id),
        )
        conn.execute(_BUMP[to], (row["batch_id"],))

    @staticmethod
    def _blank(conn: sqlite3.Connection, column: str, value: object) -> BlankRecord:
        sql = {
            "blank_id": "SELECT * FROM blanks WHERE blank_id = ?",
            "serial": "SELECT * FROM blanks WHERE serial = ?",
        }[column]
        row = conn.execute(sql, (value,)).fetchone()
        if row is None:
            raise NotFoundError("blank", str(value))
        return SqliteStore._blank_record(row)

    @staticmethod
    def _blank_record(row: sqlite3.Row) -> BlankRecord:
        return BlankRecord(
            blank_id=row["blank_id"],
            serial=row["serial"],
            batch_id=row["batch_id"],
            state=BlankState(row["state"]),
            application_id=row["application_id"],
            reason=row["reason"],
            updated_at=_dt(row["updated_at"]),
        )

    def get_blank(self, serial: str) -> BlankRecord:
        with self._read() as conn:
            return self._blank(conn, "serial", serial)

    def blanks(self, batch_id: str) -> list[BlankRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM blanks WHERE batch_id = ? ORDER BY blank_id", (batch_id,)
            ).fetchall()
        return [self._blank_record(r) for r in rows]

    def spoil_log(self, batch_id: str | None = None) -> list[SpoilEntry]:
        sql = (
            "SELECT s.*, b.serial FROM spoil_log AS s JOIN blanks AS b USING (blank_id)"
            " WHERE ? IS NULL OR s.batch_id = ? ORDER BY s.seq"
        )
        with self._read() as conn:
            rows = conn.execute(sql, (batch_id, batch_id)).fetchall()
        return [
            SpoilEntry(
                seq=r["seq"],
                blank_serial=r["serial"],
                batch_id=r["batch_id"],
                application_id=r["application_id"],
                attempt=r["attempt"],
                station=r["station"],
                reason=r["reason"],
                at=_dt(r["at"]),
            )
            for r in rows
        ]
