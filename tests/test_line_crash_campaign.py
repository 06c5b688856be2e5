"""The acceptance crash test of issue 5, at full size: ``perso line run`` as its own process, killed
with SIGKILL at random moments at least 20 times across a 500-card run and restarted each time.

At the end every application has exactly one passed card, the blanks spoiled are exactly the cards
the kills caught in a station (read from the store after each kill, before the restart), nothing is
duplicated (one good blank and one output folder per application, distinct chip serials, one PASSED
event each), and the stock of every batch reconciles.

The kill moments are drawn from a seeded generator over the whole life of a process (start-up,
recovery, the run itself): a kill during recovery is as legitimate as one mid-encode.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import date
from pathlib import Path

from personaliser.lifecycle import STATION_STATES, BlankState
from personaliser.line import RESTART_STATION
from personaliser.operations import Home, import_applications, plan, start_batches, start_of
from personaliser.store import SqliteStore
from scheduler import LineConfig
from tests.test_line_runtime import check_invariants, clones

CARDS = 500
MIN_KILLS = 20
MAX_RUNS = 80

#: 4 heads at 100 ms a chip: ~40 cards/s at most, so a process lives long enough between kills to
#: move some cards, short enough that 20 kills do not take minutes, and the 500 cards outlast 20
#: kills even on a fast host (at 50 ms, group commit let a run finish after 19).
LINE_TOML = """\
[heads]
count = 4
encode_s = 0.1

[printers]
count = 2
service_s = 0.01
render = "never"

[qa]
service_s = 0.005

[output]
proof_sample_rate = 0.0
"""


def caught_in_stations(db: Path) -> set[tuple[str, int]]:
    """(application, attempt) of every card a kill left in a station, read without the runtime:
    a plain read-only SQLite connection, as an auditor would."""
    states = ", ".join(f"'{s.value}'" for s in STATION_STATES)
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            f"SELECT application_id, attempts FROM applications WHERE state IN ({states})"
        ).fetchall()
    return {(str(a), int(n)) for a, n in rows}


def passed_so_far(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (n,) = conn.execute("SELECT count(*) FROM attempts WHERE outcome = 'PASSED'").fetchone()
    return int(n)


def line_process(home: Path, config: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "personaliser.cli", "line", "run",
               "--home", str(home), "--config", str(config), "--out", str(out)]  # fmt: skip
    with log.open("ab") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True)


def test_500_cards_survive_20_sigkills(tmp_path: Path) -> None:
    home_dir, out, log = tmp_path / "home", tmp_path / "out", tmp_path / "line.log"
    home = Home(home_dir)
    keystore = home.ensure()
    apps = clones(CARDS, "KC")
    apps_file = tmp_path / "applications.jsonl"
    apps_file.write_text("".join(a.to_json_line() + "\n" for a in apps), encoding="utf-8")
    with home.open_store(keystore) as store:
        import_applications(store, apps_file)
        today = date(2026, 11, 2)
        the_plan, _ = plan(
            store,
            today=today,
            line=LineConfig(cards_per_hour=1000, hours_per_day=8, tray_size=50),
            start=start_of(today),
        )
        start_batches(store, the_plan, None)
        assert len(store.list_batches()) == CARDS // 50
    config = tmp_path / "line.toml"
    config.write_text(LINE_TOML, encoding="utf-8")
    db = home_dir / "perso.db"

    chance = random.Random(20261122)
    kills = 0
    kills_mid_station = 0
    left_for_last_run = 0
    caught: set[tuple[str, int]] = set()
    finished = False
    for _ in range(MAX_RUNS):
        before = passed_so_far(db)
        proc = line_process(home_dir, config, out, log)
        if kills >= MIN_KILLS:
            left_for_last_run = CARDS - before
            assert proc.wait(timeout=240) == 0, log.read_text(errors="replace")[-3000:]
            finished = True
            break
        if kills % 2 == 0:
            # Any moment of the process's life: start-up and recovery, or the run itself.
            time.sleep(chance.uniform(0.3, 1.6))
        else:
            # Mid-run: once this process has passed a card, a moment later (cards are in the
            # stations nearly all the time).
            deadline = time.monotonic() + 60
            while passed_so_far(db) <= before and proc.poll() is None:
                assert time.monotonic() < deadline, "the line made no progress"
                time.sleep(0.02)
            time.sleep(chance.uniform(0.0, 0.3))
        if proc.poll() is not None:  # the run finished before the kill
            assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
            finished = True
            break
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        kills += 1
        now_caught = caught_in_stations(db)
        kills_mid_station += bool(now_caught - caught)
        caught |= now_caught
        # A kill caught in the first start-up made no progress; later ones must keep the run moving.
        assert passed_so_far(db) >= before
    assert finished, f"the line did not finish within {MAX_RUNS} runs"
    assert kills >= MIN_KILLS
    assert kills_mid_station >= MIN_KILLS // 2, (kills, kills_mid_station)

    with home.open_store(keystore) as store:
        ids = [a.application_id for a in apps]
        assert isinstance(store, SqliteStore)
        check_invariants(store, ids, out)  # one PASSED each, one good blank each, stock balanced
        restarts = {(e.application_id, e.attempt) for e in store.spoil_log()
                    if e.station == RESTART_STATION}  # fmt: skip
        assert restarts == caught  # spoiled exactly the cards the kills caught in a station
        assert len(store.spoil_log()) == len(
            caught
        )  # and nothing else (no device faults were injected)
        stocks = [store.stock(b.batch_id) for b in store.list_batches()]
        assert sum(s.issued for s in stocks) == CARDS + len(caught)
        assert sum(s.good for s in stocks) == CARDS
        assert sum(s.returned for s in stocks) == 0
        serials = [b.serial for batch in store.list_batches() for b in store.blanks(batch.batch_id)
                   if b.state is BlankState.GOOD]  # fmt: skip
        assert len(serials) == len(set(serials)) == CARDS
    print(f"\n{kills} kills, {kills_mid_station} caught cards mid-station, "
          f"{len(caught)} blanks spoiled, {CARDS} cards passed once each, "
          f"{left_for_last_run} left for the run after the last kill")  # fmt: skip
