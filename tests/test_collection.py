"""From the line to the counter (personaliser/collection.py): hand-over, the bridge back to the
card life cycle, catching up after a crash between the two stores; and the CLI around them."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ecabinet.store import CabinetStore, CardState, CommandRow, lookup_digest
from personaliser.cli import main
from personaliser.collection import Bridge, FollowingBridge, catch_up, hand_over
from personaliser.errors import IllegalTransitionError
from personaliser.keystore import FileKeystore
from personaliser.lifecycle import State
from personaliser.operations import Home
from personaliser.store.base import Store


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose line has passed 8 cards (the demo's line part, without the cabinets)."""
    out = tmp_path_factory.mktemp("collect")
    assert main(["demo", "--cards", "8", "--out", str(out)]) == 0
    return out


def fresh(tmp_path: Path, demo_home: Path) -> tuple[Home, FileKeystore]:
    """A copy of a passed line, its cabinet side reset (cards back to PASSED is not possible, so
    the copy is taken from a demo whose cards we re-run through the line)."""
    home = Home(tmp_path / "home")
    keystore = home.ensure()
    apps = demo_home / "applications.jsonl"
    assert main(["applications", "import", str(apps), "--home", str(home.path)]) == 0
    assert main(["batch", "start", "--all", "--home", str(home.path), "--today", "2026-11-02"]) == 0
    assert main(["line", "run", "--home", str(home.path), "--out", str(tmp_path / "out")]) == 0
    return home, keystore


def register(cabinets: CabinetStore, offices: set[str]) -> None:
    for n, office in enumerate(sorted(offices)):
        cabinets.register_cabinet("S1", f"C{n}", office, 2, 10)


def test_hand_over_registers_digests_not_numbers_and_dispatches_once(
    tmp_path: Path, demo_home: Path
) -> None:
    home, keystore = fresh(tmp_path, demo_home)
    with home.open_store(keystore) as store, CabinetStore(home.path / "cabinet.db") as cabinets:
        passed = store.list_applications(state=State.PASSED)
        register(cabinets, {r.office or "" for r in passed})
        done = hand_over(store, cabinets, keystore.lookup_key(), tray="T1")
        assert done.registered == done.dispatched == len(passed) == 8
        assert sum(done.offices.values()) == 8
        assert {r.state for r in store.list_applications()} == {State.DISPATCHED}
        # Idempotent: nothing PASSED is left, nothing registered twice.
        assert hand_over(store, cabinets, keystore.lookup_key()).dispatched == 0
        card = cabinets.cards()[0]
        app = store.load_application(card.application_id)
        assert card.state is CardState.AWAITING_DEPOSIT
        assert card.hkid_digest == lookup_digest(keystore.lookup_key(), "hkid", app.hkid)
        assert app.receipt_number is not None
        assert card.receipt_digest == lookup_digest(
            keystore.lookup_key(), "receipt", app.receipt_number
        )
    # The cabinet store holds no HKIC or receipt number, in any table.
    raw = (home.path / "cabinet.db").read_bytes()
    assert app.hkid.encode() not in raw and app.receipt_number.encode() not in raw


def _stock(cabinets: CabinetStore, application_id: str) -> None:
    card = cabinets.card(application_id)
    assert card is not None
    cabinet = cabinets.cabinets(office=card.office)[0]
    free = next(s for s in cabinets.slot_map(cabinet.cabinet) if s.card_serial is None)
    row = CommandRow(str(uuid.uuid4()), str(uuid.uuid4()), cabinet.cabinet, "deposit", "t",
                     free.drawer, free.index, card.card_serial, application_id)  # fmt: skip
    cabinets.begin_deposit(application_id, cabinet=cabinet.cabinet, drawer=free.drawer,
                           index=free.index, command=row, state=None, actor="t")  # fmt: skip
    cabinets.complete_deposit(application_id)


def _issue(cabinets: CabinetStore, application_id: str) -> None:
    card = cabinets.card(application_id)
    assert card is not None and card.cabinet is not None
    row = CommandRow(str(uuid.uuid4()), str(uuid.uuid4()), card.cabinet, "open_for_retrieval", "o",
                     card.drawer, card.index, card.card_serial, application_id)  # fmt: skip
    cabinets.begin_open(application_id, "retrieval", row, None, officer="officer-1")
    cabinets.complete_open(application_id)


@contextmanager
def dispatched(tmp_path: Path, demo_home: Path) -> Iterator[tuple[Store, CabinetStore, list[str]]]:
    """A fresh home's stores with every PASSED card registered and DISPATCHED; their ids."""
    home, keystore = fresh(tmp_path, demo_home)
    with home.open_store(keystore) as store, CabinetStore(home.path / "cabinet.db") as cabinets:
        register(cabinets, {r.office or "" for r in store.list_applications(state=State.PASSED)})
        hand_over(store, cabinets, keystore.lookup_key())
        yield store, cabinets, [c.application_id for c in cabinets.cards()]


def test_outcomes_follow_and_a_crash_between_the_stores_is_caught_up(
    tmp_path: Path, demo_home: Path
) -> None:
    with dispatched(tmp_path, demo_home) as (store, cabinets, ids):
        bridge = Bridge(store)
        # a: through the bridge, as the service calls it.
        _stock(cabinets, ids[0])
        card = cabinets.card(ids[0])
        assert card is not None and card.cabinet is not None and card.slot is not None
        bridge.stocked(ids[0], card.cabinet, card.slot)
        assert store.get(ids[0]).state is State.STOCKED
        assert store.load_application(ids[0]).portrait_jpeg  # kept for the hand-over
        _issue(cabinets, ids[0])
        bridge.issued(ids[0], "officer-1")
        bridge.issued(ids[0], "officer-1")  # a repeated callback is a no-op
        assert store.get(ids[0]).state is State.ISSUED and store.get(ids[0]).purged
        # b: the process died after each cabinet-store write, before the line's store followed.
        _stock(cabinets, ids[1])
        _stock(cabinets, ids[2])
        _issue(cabinets, ids[2])
        assert store.get(ids[1]).state is State.DISPATCHED
        assert catch_up(store, cabinets) == 3  # ids[1] STOCKED; ids[2] STOCKED then ISSUED
        assert store.get(ids[1]).state is State.STOCKED
        assert store.get(ids[2]).state is State.ISSUED and store.get(ids[2]).purged
        assert catch_up(store, cabinets) == 0
        moves = [e.to_state for e in store.events(application_id=ids[2]) if e.kind == "transition"]
        assert moves.count("ISSUED") == 1


def test_following_bridge_moves_in_order_off_the_callers_thread(
    tmp_path: Path, demo_home: Path
) -> None:
    with dispatched(tmp_path, demo_home) as (store, cabinets, every):
        ids, waiting = every[:3], every[3]
        for application_id in ids:
            _stock(cabinets, application_id)
            _issue(cabinets, application_id)
        bridge = FollowingBridge(store)
        threads: list[str] = []
        real = store.transition

        def transition(*args: Any, **kw: Any) -> Any:
            threads.append(threading.current_thread().name)
            return real(*args, **kw)

        store.transition = transition  # type: ignore[method-assign]
        moves = []
        for application_id in ids:  # asked for back to back: STOCKED must still come first
            moves.append(bridge.stocked(application_id, "C1", "1-1"))
            moves.append(bridge.issued(application_id, "officer-1"))
        bridge.close()  # waits for the moves asked for
        assert all(m.done() and m.exception() is None for m in moves)
        assert len(threads) == 6 and threading.current_thread().name not in threads
        for application_id in ids:
            assert store.get(application_id).state is State.ISSUED
            assert store.get(application_id).purged
        # A move the card cannot take (ISSUED while DISPATCHED) fails in its Future, not in
        # the caller.
        late = FollowingBridge(store)
        try:
            refused = late.issued(waiting, "officer-1").exception(timeout=10)
            assert isinstance(refused, IllegalTransitionError)
        finally:
            late.close()


def test_cli_officer_dispatch_find_and_audit_tamper(
    tmp_path: Path, demo_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    home = str(demo_home / "home")
    monkeypatch.setenv("PERSO_PASSWORD", "correct horse battery")
    # Officers of two offices (the demo's own officers were made with a password we never saw).
    offices = sorted({json.loads(line)["collection_office"]
                      for line in (demo_home / "applications.jsonl").read_text().splitlines()})  # fmt: skip
    a, b = offices[0], offices[1]
    assert main(["cabinet", "officer", "--home", home, "--officer", "cli-a", "--office", a,
                 "--role", "counter_officer"]) == 0  # fmt: skip
    assert main(["cabinet", "officer", "--home", home, "--officer", "cli-b", "--office", b,
                 "--role", "counter_officer"]) == 0  # fmt: skip
    with CabinetStore(Path(home) / "cabinet.db") as cabinets:
        card_a = cabinets.cards(office=a)[0]
    capsys.readouterr()
    assert main(["cabinet", "find", "--home", home, "--officer", "cli-a",
                 "--application", card_a.application_id]) == 0  # fmt: skip
    assert card_a.application_id in capsys.readouterr().out
    # Another office's officer is refused (exit 3), and the refusal is audited.
    assert main(["cabinet", "find", "--home", home, "--officer", "cli-b",
                 "--application", card_a.application_id]) == 3  # fmt: skip
    assert "other_office" in capsys.readouterr().err
    monkeypatch.setenv("PERSO_PASSWORD", "wrong password!")
    assert main(["cabinet", "find", "--home", home, "--officer", "cli-a",
                 "--application", card_a.application_id]) == 3  # fmt: skip
    assert "bad_credentials" in capsys.readouterr().err
    log = Path(home) / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    assert any(b"find.refused" in line and b"cli-b" in line for line in lines)
    assert main(["audit", "verify", "--home", home]) == 0
    # Edit one entry (change who did it): verification fails at exactly that entry.
    victim = next(i for i, line in enumerate(lines) if b"cli-b" in line)
    edited = lines[victim].replace(b"cli-b", b"cli-a")
    log.write_bytes(b"".join([*lines[:victim], edited, *lines[victim + 1 :]]))
    capsys.readouterr()
    assert main(["audit", "verify", "--home", home]) == 1
    assert f"FAILED at entry {victim}" in capsys.readouterr().err


def test_planning_never_sends_an_office_more_cards_than_free_slots(tmp_path: Path) -> None:
    from datetime import date

    from personaliser.operations import cabinet_free_slots, import_applications, plan, start_of
    from scheduler import LineConfig
    from tests.test_line_runtime import OFFICE, clones

    home = Home(tmp_path / "home")
    keystore = home.ensure()
    apps = tmp_path / "a.jsonl"
    apps.write_text("".join(a.to_json_line() + "\n" for a in clones(7, "CAP")))
    with home.open_store(keystore) as store:
        import_applications(store, apps)
        assert cabinet_free_slots(home, store) is None  # no cabinets: capacity not checked
        with CabinetStore(home.path / "cabinet.db") as cabinets:
            cabinets.register_cabinet("S1", "C1", OFFICE, 1, 5)
        free = cabinet_free_slots(home, store)
        assert free == {OFFICE: 5}
        today = date(2026, 11, 2)
        the_plan, _ = plan(store, today=today, start=start_of(today), free_slots=free,
                           line=LineConfig(cards_per_hour=1000, hours_per_day=8, tray_size=50))  # fmt: skip
        assert the_plan.cards == 5 and len(the_plan.deferred) == 2
        assert {d.reason.value for d in the_plan.deferred} == {"no_free_slots"}
