"""``perso bench [--quick] [--json] [--out DIR]``: engine cost, line efficiency, scheduler scale.

Each part reports a ratio next to its bare numbers (engine ms per card over the crypto floor's,
line throughput over the bottleneck's capacity, plan seconds per million), so figures from
different hosts compare.  Writes ``DIR/bench.json`` and ``DIR/throughput.png``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from bench.engine import measure_engine
from bench.line import measure_line
from bench.report import plot_throughput, write_json
from bench.scale import measure_scale

__all__ = ["bench_command", "run_benchmarks"]

#: (engine cards, line cards, scheduler applications)
QUICK = (50, 100, 100_000)
FULL = (300, 1000, 1_000_000)


def run_benchmarks(quick: bool, out: Path) -> dict[str, Any]:
    engine_n, line_n, scale_n = QUICK if quick else FULL
    engine = measure_engine(engine_n, floor_rounds=50 if quick else 200)
    line = measure_line(line_n)
    scale = measure_scale(scale_n)
    png = out / "throughput.png"
    plot_throughput(
        png,
        line.timeline,
        line.kinds,
        capacity=line.capacity_per_hour,
        title=f"{line_n} cards, reference line (virtual clock), bottleneck {line.bottleneck}",
    )
    data: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "engine": engine.as_dict(),
        "line": line.as_dict(),
        "scale": scale,
        "plot": str(png),
    }
    write_json(out / "bench.json", data)
    return data


def _table(data: dict[str, Any]) -> str:
    e, ln, s = data["engine"], data["line"], data["scale"]
    rows = [
        ("engine cards/h per core", f"{e['cards_per_hour_per_core']:,}", "≥ 200,000"),
        ("engine host ms/card : protocol floor",
         f"{e['engine_ms_per_card']} : {e['floor_ms_per_card']} = {e['ratio_to_floor']}×", "≤ 3×"),
        ("engine host ms/card : bulk floor",
         f"{e['engine_ms_per_card']} : {e['bulk_floor_ms_per_card']} "
         f"= {e['ratio_to_bulk_floor']}×", ""),
        ("emulated chips, proofs ms/card",
         f"{e['device_ms_per_card']}, {e['render_ms_per_card']} (not the host's)", ""),
        ("line throughput / capacity",
         f"{ln['throughput_cards_per_hour']:,} / {ln['bottleneck']['cards_per_hour']:,} "
         f"= {ln['efficiency']}", "≥ 0.97"),
        ("line steady rate / capacity", str(ln["steady_efficiency"]), ""),
        (f"plan {s['applications']:,} applications", f"{s['plan_s']} s, peak {s['peak_rss_mb']} MB",
         "< 10 s per 1,000,000"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines = [f"{'measure':<{width}}  {'measured':<{vwidth}}  target"]
    lines += [f"{a:<{width}}  {b:<{vwidth}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def bench_command(quick: bool, as_json: bool, out: str) -> int:
    """Run the benchmarks; print a table (or the JSON).  0 unless a part failed to run."""
    target = Path(out)
    data = run_benchmarks(quick, target)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(_table(data))
        print(f"written: {target / 'bench.json'}, {target / 'throughput.png'}")
    return 0
