"""The operator's commands through the CLI: import (idempotent), plan, start, status, stock report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personaliser.cli import main
from personaliser.lifecycle import State
from personaliser.operations import Home, status
from personaliser.synth import synth_applications


def test_import_plan_start_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    lines = [a.to_json_line() for a in synth_applications(25, seed=9)]
    bad = json.loads(lines[0]) | {"application_id": "BAD-1", "sex": "Q"}
    (tmp_path / "apps.jsonl").write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    args = ["applications", "import", str(tmp_path / "apps.jsonl"), "--home", str(home)]
    assert main(args) == 3  # one record rejected
    out = capsys.readouterr()
    assert "25 new" in out.out and "line 26: field 'sex'" in out.err
    assert main(args) == 3
    assert "0 new, 25 already known" in capsys.readouterr().out  # idempotent re-import

    plan_args = ["--home", str(home), "--today", "2026-11-03", "--tray-size", "10"]
    assert main(["batch", "plan", *plan_args]) == 0
    shown = capsys.readouterr().out
    assert "25 cards in" in shown and "at risk: 0" in shown
    assert main(["batch", "start", "--all", *plan_args]) == 0
    assert sum(int(line.split()[1]) for line in capsys.readouterr().out.splitlines()) == 25

    with Home(home).open_store() as store:
        rows = status(store)
        assert sum(r.counts.get(State.QUEUED, 0) for r in rows) == 25
        assert all(r.total <= 10 for r in rows)
    assert main(["batch", "status", "--home", str(home)]) == 0
    assert "QUEUED" in capsys.readouterr().out
    assert main(["stock", "report", "--home", str(home)]) == 0
    # The database holds no personal data in the clear.
    raw = (home / "perso.db").read_bytes()
    first = json.loads(lines[0])
    assert first["surname"].encode() not in raw and first["hkid"].encode() not in raw


def test_start_unknown_batch_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    (tmp_path / "a.jsonl").write_text(next(synth_applications(1, seed=2)).to_json_line() + "\n")
    assert main(["applications", "import", str(tmp_path / "a.jsonl"), "--home", str(home)]) == 0
    capsys.readouterr()
    code = main(["batch", "start", "--batch", "NOPE", "--home", str(home), "--today", "2026-11-03"])
    assert code == 2 and "unknown batch: NOPE" in capsys.readouterr().err
