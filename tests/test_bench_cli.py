"""``perso bench --quick``: every part runs and reports its ratio; the JSON and the plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bench.cli import bench_command


def test_quick_bench_writes_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert bench_command(quick=True, as_json=True, out=str(out)) == 0
    printed = json.loads(capsys.readouterr().out)
    data = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert printed == data
    assert data["mode"] == "quick"
    assert {"engine", "line", "scale", "plot", "host"} <= set(data)

    engine = data["engine"]
    assert engine["cards"] == engine["cards_passed"] == 50
    assert engine["floor_ms_per_card"] > 0
    assert engine["ratio_to_floor"] == pytest.approx(
        engine["engine_ms_per_card"] / engine["floor_ms_per_card"], rel=0.01
    )
    assert engine["ratio_to_floor"] > 1  # a whole card cannot cost less than its crypto
    assert engine["floor"] == "protocol"
    assert engine["ratio_to_bulk_floor"] == pytest.approx(
        engine["engine_ms_per_card"] / engine["bulk_floor_ms_per_card"], rel=0.01
    )
    assert engine["cards_per_hour_per_core"] == pytest.approx(
        3_600_000 / engine["engine_ms_per_card"], rel=0.01
    )
    # The host's figure is the process's CPU less the emulated chips' and the proofs' rendering,
    # each reported, not hidden.
    assert engine["device_ms_per_card"] > 0
    assert engine["render_ms_per_card"] > 0  # the first card of every tray gets proofs
    assert engine["total_ms_per_card"] == pytest.approx(
        engine["engine_ms_per_card"] + engine["device_ms_per_card"] + engine["render_ms_per_card"],
        abs=0.01,
    )
    assert engine["cpu_s"] == pytest.approx(
        engine["host_cpu_s"] + engine["device_cpu_s"] + engine["render_cpu_s"], abs=0.003
    )
    assert engine["outputs"] == {"chip_files": False, "chip_image": False, "trays": True}
    assert engine["store_sync"] == "milestones"

    line = data["line"]
    assert line["cards"] == line["cards_passed"] == 100
    # The reference line: 16 x 12 s heads, 2 x 3.6 s printers, QA 1 s; printing is the bottleneck.
    assert line["capacity_per_hour"] == {"encode": 4800.0, "print": 2000.0, "verify": 3600.0}
    assert line["bottleneck"] == {"stage": "print", "cards_per_hour": 2000.0}
    assert 0 < line["efficiency"] <= 1.0001
    # Filling the line costs one card's path (12 + 3.6 + 1 s) against 100 cards at 1.8 s each.
    assert line["efficiency"] > 0.9
    assert line["steady_efficiency"] == pytest.approx(1.0, abs=0.03)
    assert line["virtual_s"] > 100 * line["wall_s"] / 10  # faster than real time

    scale = data["scale"]
    assert scale["applications"] == scale["cards_planned"] == 100_000
    assert scale["plan_s"] > 0
    assert scale["peak_rss_mb"] > 0
    assert scale["batches"] >= 100_000 // 50

    with Image.open(out / "throughput.png") as img:
        assert img.format == "PNG"
        assert img.size[0] >= 400
        # Not a blank canvas: lines were drawn in colour.
        assert len(img.convert("RGB").getcolors(1 << 16) or []) > 5


def test_table_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.cli as cli

    monkeypatch.setattr(cli, "QUICK", (5, 10, 1000))
    assert bench_command(quick=True, as_json=False, out=str(tmp_path)) == 0
    text = capsys.readouterr().out
    for needle in (
        "engine cards/h per core",
        "engine host ms/card : protocol floor",
        "engine host ms/card : bulk floor",
        "emulated chips, proofs ms/card",
        "line throughput / capacity",
        "plan 1,000 applications",
    ):
        assert needle in text
    assert (tmp_path / "bench.json").exists()
