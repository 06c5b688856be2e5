"""The main job (`perso demo`) and `perso line run` end to end on embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personaliser.cli import main
from personaliser.synth import synth_applications


def test_demo_passes_every_card_and_reconciles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--cards", "12", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("cards_requested", "cards_passed", "cards_spoiled", "stock",
                "throughput_cards_per_hour", "stations", "batches"):  # fmt: skip
        assert key in report
    assert report["cards_requested"] == report["cards_passed"] == 12
    stock = report["stock"]
    assert (
        stock["issued"] == stock["good"] + stock["spoiled"] + stock["samples"] + stock["returned"]
    )
    assert (out / "applications.jsonl").is_file() and (out / "pki" / "csca.pem").is_file()
    cards = sorted((out / "cards").iterdir())
    assert len(cards) == 12
    assert all((c / "EF.SOD").is_file() and (c / "chip.img").is_file() for c in cards)
    assert any((c / "front.png").is_file() and (c / "back.png").is_file() for c in cards)
    # The e-cabinet part: every passed card deposited, a sample handed over and purged.
    cabinet = report["cabinet"]
    assert cabinet["stocked"] == cabinet["deposited"] == 12
    assert cabinet["issued"] == cabinet["retrievals_asked"] == cabinet["purged"] == 5
    assert cabinet["open_discrepancies"] == 0 and cabinet["audit_entries"] > 12
    capsys.readouterr()
    home = str(out / "home")
    assert main(["audit", "verify", "--home", home]) == 0
    assert "chain and MACs verified" in capsys.readouterr().out
    assert main(["cabinet", "status", "--home", home]) == 0
    shown = capsys.readouterr().out
    assert "ROP-" in shown and "occupied" in shown
    # A second run starts afresh and gives the same result (re-runnable main job).
    assert main(["demo", "--cards", "12", "--out", str(out)]) == 0
    assert len(list((out / "cards").iterdir())) == 12


def test_line_run_after_import_plan_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(tmp_path / "home")
    (tmp_path / "a.jsonl").write_text(
        "".join(a.to_json_line() + "\n" for a in synth_applications(6, seed=31))
    )
    assert main(["applications", "import", str(tmp_path / "a.jsonl"), "--home", home]) == 0
    assert main(["batch", "start", "--all", "--home", home, "--today", "2026-11-03"]) == 0
    assert main(["line", "run", "--home", home, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cards_passed"] == 6 and report["stock"]["balanced"]
    capsys.readouterr()
    assert main(["stock", "report", "--home", home]) == 0
    assert " NO" not in capsys.readouterr().out
    # Nothing left: a second run finds no queued card and passes nothing twice.
    assert main(["line", "run", "--home", home, "--out", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["cards_passed"] == 0
