"""ecabinet.store and ecabinet.officers: the slot map, one transaction per change, no personal data."""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecabinet.audit import PERSONAL_FIELDS
from ecabinet.errors import AuthorisationError, SlotError
from ecabinet.officers import (
    KdfParams,
    Role,
    add_officer,
    authenticate,
    hash_password,
    require_role,
    verify_password,
)
from ecabinet.protocol import ControllerState
from ecabinet.slots import SlotState
from ecabinet.store import (
    CabinetStore,
    CardState,
    CardStateError,
    CommandRow,
    CommandStatus,
    DiscrepancyKind,
    NewCard,
    lookup_digest,
    normalise_lookup,
)

KEY = bytes(range(32))
FAST = KdfParams(log2_n=10)  # scrypt at test cost; the default is N = 2^17
DAY = date(2025, 3, 10)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def card(n: int, office: str = "OFF1", day: date = DAY) -> NewCard:
    return NewCard(
        application_id=f"APP{n:04d}",
        card_serial=f"SER{n:04d}",
        office=office,
        collection_date=day,
        hkid_digest=lookup_digest(KEY, "hkid", f"A{n:06d}(3)"),
        receipt_digest=lookup_digest(KEY, "receipt", f"r-{n}"),
    )


def row(n: int, cabinet: str = "C1", kind: str = "deposit", **extra: object) -> CommandRow:
    return CommandRow(
        correlation_id=f"00000000-0000-4000-8000-{n:012d}",
        command_id=f"10000000-0000-4000-8000-{n:012d}",
        cabinet=cabinet,
        kind=kind,
        actor="op1",
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def store(tmp_path: Path) -> CabinetStore:
    s = CabinetStore(tmp_path / "cabinet.db", clock=Clock())
    s.register_cabinet("S1", "C1", "OFF1", 2, 3)
    s.register_cabinet("S1", "C2", "OFF2", 1, 2)
    return s


def stock(store: CabinetStore, n: int, slot: tuple[str, int, int], counter: int = 1) -> None:
    cabinet, drawer, index = slot
    store.begin_deposit(
        f"APP{n:04d}",
        cabinet=cabinet,
        drawer=drawer,
        index=index,
        command=row(counter, cabinet),
        state=None,
        actor="op1",
    )
    store.complete_deposit(f"APP{n:04d}")


# -- schema and settings ---------------------------------------------------------------------


def test_schema_is_strict_wal_full_and_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "cabinet.db"
    CabinetStore(path).close()
    again = CabinetStore(path)
    assert again.schema_version == 1
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
    assert {name for name, _ in tables} >= {
        "cabinets", "slots", "cards", "commands", "discrepancies", "controller_state", "officers"
    }  # fmt: skip
    for name, sql in tables:
        assert sql.rstrip().endswith(("STRICT", "WITHOUT ROWID")), name
    conn = again._conn()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_no_column_can_hold_personal_data(store: CabinetStore) -> None:
    conn = store._conn()
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        assert not columns & PERSONAL_FIELDS, table


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cabinet.db"
    CabinetStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(Exception, match="newer"):
        CabinetStore(path)


# -- lookup digests ----------------------------------------------------------------------------


def test_lookup_digests_normalise_and_separate_kinds() -> None:
    assert normalise_lookup("hkid", " a123456 (7) ") == "A1234567"
    assert lookup_digest(KEY, "hkid", "A123456(7)") == lookup_digest(KEY, "hkid", "a 123456 7")
    assert lookup_digest(KEY, "receipt", "rc-9") == lookup_digest(KEY, "receipt", " RC-9 ")
    assert lookup_digest(KEY, "hkid", "A1234567") != lookup_digest(KEY, "receipt", "A1234567")
    assert lookup_digest(KEY, "hkid", "A1234567") != lookup_digest(bytes(32), "hkid", "A1234567")
    with pytest.raises(ValueError, match="32 bytes"):
        lookup_digest(b"short", "hkid", "A1234567")


# -- cabinets, cards -----------------------------------------------------------------------------


def test_cabinet_registration_is_idempotent_and_checked(store: CabinetStore) -> None:
    again = store.register_cabinet("S1", "C1", "OFF1", 2, 3)
    assert (again.drawers, again.slots_per_drawer, again.status) == (2, 3, "unknown")
    assert len(store.slot_map("C1")) == 6
    with pytest.raises(ValueError, match="another layout"):
        store.register_cabinet("S1", "C1", "OFF1", 3, 3)
    assert store.free_slots("OFF1") == 6
    assert store.free_slots("OFF2") == 2
    assert all(0.0 <= s.reachability <= 1.0 for s in store.slot_map("C1"))


def test_card_registration_is_idempotent_and_all_or_nothing(store: CabinetStore) -> None:
    assert store.register_cards([card(1), card(2)]) == 2
    assert store.register_cards([card(1), card(2), card(3)]) == 1
    clash = NewCard("APP0004", "SER0001", "OFF1", DAY)  # another card's chip serial
    with pytest.raises(CardStateError) as refused:
        store.register_cards([card(5), clash])
    assert refused.value.reason == "conflict"
    assert store.card("APP0005") is None  # the whole batch rolled back
    assert store.card("APP0001").state is CardState.AWAITING_DEPOSIT  # type: ignore[union-attr]
    assert "hkid" not in repr(store.card("APP0001")).lower().replace("hkid_digest", "")


def test_cards_are_found_by_digest_only(store: CabinetStore) -> None:
    store.register_cards([card(1), card(2)])
    found = store.cards_by_digest("hkid", lookup_digest(KEY, "hkid", "a000001 3"))
    assert [c.application_id for c in found] == ["APP0001"]
    assert store.cards_by_digest("receipt", lookup_digest(KEY, "receipt", "nope")) == []


# -- the card's life, one transaction per change ---------------------------------------------------


def test_deposit_reserves_with_its_command_and_counters_in_one_transaction(
    store: CabinetStore,
) -> None:
    store.register_cards([card(1)])
    state = ControllerState(site="S1", next_counter={"C1": 8})
    record = store.begin_deposit(
        "APP0001", cabinet="C1", drawer=1, index=2, command=row(1), state=state, actor="op1"
    )
    assert (record.state, record.cabinet, record.slot) == (CardState.DEPOSITING, "C1", "01-002")
    slot = store.slot("C1", 1, 2)
    assert slot is not None and (slot.state, slot.card_serial) == (SlotState.RESERVED, "SER0001")
    assert store.command(row(1).correlation_id).status is CommandStatus.SENT  # type: ignore[union-attr]
    assert store.load_controller_state("S1") == state
    assert store.free_slots("OFF1") == 5

    stocked = store.complete_deposit("APP0001")
    assert stocked.state is CardState.STOCKED and stocked.stocked_at is not None
    assert store.slot("C1", 1, 2).state is SlotState.OCCUPIED  # type: ignore[union-attr]


def test_a_refused_change_writes_nothing(store: CabinetStore) -> None:
    store.register_cards([card(1), card(2), card(3, office="OFF2")])
    stock(store, 1, ("C1", 1, 1))
    with pytest.raises(SlotError):  # the slot is taken
        store.begin_deposit(
            "APP0002", cabinet="C1", drawer=1, index=1, command=row(2), state=None, actor="op1"
        )
    with pytest.raises(CardStateError) as other:  # a card of OFF2 into an OFF1 cabinet
        store.begin_deposit(
            "APP0003", cabinet="C1", drawer=1, index=3, command=row(3), state=None, actor="op1"
        )
    assert other.value.reason == "other_office"
    assert store.command(row(2).correlation_id) is None
    assert store.command(row(3).correlation_id) is None
    assert store.card("APP0002").state is CardState.AWAITING_DEPOSIT  # type: ignore[union-attr]
    assert store.slot("C1", 1, 3).state is SlotState.EMPTY  # type: ignore[union-attr]


def test_a_card_opens_once_and_is_issued_with_its_digests_gone(store: CabinetStore) -> None:
    store.register_cards([card(1)])
    stock(store, 1, ("C1", 2, 1))
    opened = store.begin_open("APP0001", "retrieval", row(2, kind="open"), None, officer="off1")
    assert (opened.state, opened.officer) == (CardState.RETRIEVING, "off1")
    with pytest.raises(CardStateError) as twice:
        store.begin_open("APP0001", "retrieval", row(3, kind="open"), None, officer="off2")
    assert twice.value.reason == "card_retrieving"
    assert store.command(row(3).correlation_id) is None  # nothing to send: nothing recorded

    issued = store.complete_open("APP0001")
    assert issued.state is CardState.ISSUED and issued.issued_at is not None
    assert issued.hkid_digest is None and issued.receipt_digest is None
    assert store.slot("C1", 2, 1).state is SlotState.EMPTY  # type: ignore[union-attr]
    with pytest.raises(CardStateError):
        store.begin_open("APP0001", "retrieval", row(4, kind="open"), None, officer="off1")


def test_an_open_undone_and_a_deposit_released(store: CabinetStore) -> None:
    store.register_cards([card(1), card(2)])
    stock(store, 1, ("C1", 1, 1))
    store.begin_open("APP0001", "return", row(2, kind="return"), None, officer="op1")
    assert store.cancel_open("APP0001").state is CardState.STOCKED
    assert store.slot("C1", 1, 1).state is SlotState.OCCUPIED  # type: ignore[union-attr]
    store.begin_deposit(
        "APP0002", cabinet="C1", drawer=1, index=2, command=row(3), state=None, actor="op1"
    )
    released = store.release_deposit("APP0002")
    assert (released.state, released.cabinet) == (CardState.AWAITING_DEPOSIT, None)
    assert store.slot("C1", 1, 2).state is SlotState.EMPTY  # type: ignore[union-attr]


def test_an_ack_is_never_downgraded_and_restart_abandons_the_unanswered(
    store: CabinetStore,
) -> None:
    store.record_command(row(1, kind="inventory_scan"), None)
    store.record_command(row(2, kind="inventory_scan"), None)
    assert store.command_answered(row(1).correlation_id, CommandStatus.ACKED)
    assert not store.command_answered(row(1).correlation_id, CommandStatus.TIMED_OUT)
    assert store.command(row(1).correlation_id).status is CommandStatus.ACKED  # type: ignore[union-attr]
    abandoned = store.abandon_open_commands()
    assert [c.correlation_id for c in abandoned] == [row(2).correlation_id]
    assert store.open_commands() == []
    performed = store.command_performed(row(2).command_id)
    assert performed is not None and performed.status is CommandStatus.ACKED


def test_retention_finds_cards_stocked_long_ago(store: CabinetStore) -> None:
    clock = store._clock
    assert isinstance(clock, Clock)
    store.register_cards([card(1), card(2)])
    stock(store, 1, ("C1", 1, 1), counter=1)
    clock.now += timedelta(days=10)
    stock(store, 2, ("C1", 1, 2), counter=2)
    cutoff = clock.now - timedelta(days=5)
    assert [c.application_id for c in store.stocked_before(cutoff)] == ["APP0001"]


# -- discrepancies ---------------------------------------------------------------------------------


def test_a_discrepancy_faults_the_slot_once_and_is_resolved_by_what_is_sensed(
    store: CabinetStore,
) -> None:
    store.register_cards([card(1), card(2)])
    stock(store, 1, ("C1", 1, 1))
    first, new = store.raise_discrepancy(
        "C1",
        1,
        1,
        DiscrepancyKind.MISSING_CARD,
        expected_serial="SER0001",
        application_id="APP0001",
    )
    assert new and first.open
    again, new_again = store.raise_discrepancy("C1", 1, 1, DiscrepancyKind.SLOT_FAULT)
    assert not new_again and again.id == first.id
    assert store.slot("C1", 1, 1).state is SlotState.FAULT  # type: ignore[union-attr]
    assert store.card("APP0001").state is CardState.EXCEPTION  # type: ignore[union-attr]
    assert store.free_slots("OFF1") == 5

    with pytest.raises(SlotError):  # a card nobody knows is still in it
        store.resolve_discrepancy(
            first.id,
            resolved_by="sup1",
            resolution="checked",
            sensed_state=SlotState.OCCUPIED,
            sensed_serial="STRANGER",
        )
    assert store.discrepancy(first.id).open  # type: ignore[union-attr]
    # The supervisor found the card and put it back: the sensor reads it in the slot.
    closed, stocked = store.resolve_discrepancy(
        first.id,
        resolved_by="sup1",
        resolution="card_found",
        sensed_state=SlotState.OCCUPIED,
        sensed_serial="SER0001",
    )
    assert not closed.open and closed.resolved_by == "sup1"
    assert stocked is not None and stocked.state is CardState.STOCKED and stocked.slot == "01-001"
    assert store.discrepancies() == []
    with pytest.raises(SlotError, match="already resolved"):
        store.resolve_discrepancy(
            first.id, resolved_by="sup1", resolution="x", sensed_state=None, sensed_serial=None
        )


def test_an_empty_slot_resolves_to_empty(store: CabinetStore) -> None:
    found, _ = store.raise_discrepancy(
        "C1", 2, 3, DiscrepancyKind.UNEXPECTED_CARD, sensed_serial="STRANGER"
    )
    closed, stocked = store.resolve_discrepancy(
        found.id,
        resolved_by="sup1",
        resolution="card_removed",
        sensed_state=SlotState.EMPTY,
        sensed_serial=None,
    )
    assert stocked is None and closed.resolution == "card_removed"
    assert store.slot("C1", 2, 3).state is SlotState.EMPTY  # type: ignore[union-attr]


# -- a property: the slot map and the cards always agree -------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "complete", "release", "open", "issue", "cancel"]),
        st.integers(1, 4),  # card
        st.integers(1, 3),  # slot index in drawer 1
    ),
    max_size=25,
)


@settings(max_examples=40)
@given(ops)
def test_cards_and_slots_point_at_each_other_whatever_happens(
    steps: list[tuple[str, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = CabinetStore(Path(tmp) / "c.db")
        store.register_cabinet("S1", "C1", "OFF1", 1, 3)
        store.register_cards([card(n) for n in range(1, 5)])
        for n, (op, which, index) in enumerate(steps):
            app = f"APP{which:04d}"
            before = (store.card(app), store.slot_map("C1"))
            try:
                if op == "deposit":
                    store.begin_deposit(
                        app,
                        cabinet="C1",
                        drawer=1,
                        index=index,
                        command=row(n),
                        state=None,
                        actor="x",
                    )
                elif op == "complete":
                    store.complete_deposit(app)
                elif op == "release":
                    store.release_deposit(app)
                elif op == "open":
                    store.begin_open(app, "retrieval", row(n, kind="open"), None, officer="x")
                elif op == "issue":
                    store.complete_open(app)
                else:
                    store.cancel_open(app)
            except (CardStateError, SlotError):
                assert (store.card(app), store.slot_map("C1")) == before  # refused: no change
            placed = {
                c.application_id: (c.drawer, c.index)
                for c in store.cards()
                if c.state in (CardState.DEPOSITING, CardState.STOCKED, CardState.RETRIEVING)
            }
            held = {
                s.application_id: (s.drawer, s.index)
                for s in store.slot_map("C1")
                if s.application_id
            }
            assert placed == held
            assert store.free_slots("OFF1") == 3 - len(held)
        store.close()


# -- officers ------------------------------------------------------------------------------------


def test_passwords_are_salted_scrypt_with_their_parameters() -> None:
    one, two = hash_password("correct horse", FAST), hash_password("correct horse", FAST)
    assert one != two  # salted
    assert one.startswith("scrypt$10$8$1$")
    assert verify_password("correct horse", one)
    assert not verify_password("correct horsE", one)
    with pytest.raises(ValueError, match="at least"):
        hash_password("short", FAST)


def test_authentication_says_nothing_about_what_was_wrong(store: CabinetStore) -> None:
    officer = add_officer(store, "off1", "OFF1", "counter_officer", "s3cret-pass", params=FAST)
    assert authenticate(store, "off1", "s3cret-pass", params=FAST) == officer
    failures = []
    for who, password in (("off1", "wrong-pass!"), ("nobody", "s3cret-pass")):
        with pytest.raises(AuthorisationError) as refused:
            authenticate(store, who, password, params=FAST)
        failures.append((refused.value.reason, str(refused.value)))
    store.set_officer_active("off1", False)
    with pytest.raises(AuthorisationError) as inactive:
        authenticate(store, "off1", "s3cret-pass", params=FAST)
    failures.append((inactive.value.reason, str(inactive.value)))
    assert len(set(failures)) == 1 and failures[0][0] == "bad_credentials"
    assert "s3cret" not in repr(store.officer("off1"))


def test_roles_are_checked() -> None:
    from ecabinet.officers import Officer

    engineer = Officer("eng1", "OFF1", Role.ENGINEER)
    with pytest.raises(AuthorisationError) as refused:
        require_role(engineer, {Role.COUNTER_OFFICER, Role.SUPERVISOR})
    assert refused.value.reason == "role"
    require_role(engineer, {Role.ENGINEER})
