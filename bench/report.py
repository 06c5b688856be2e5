"""``out/bench.json`` and ``out/throughput.png``: cards per hour over (virtual) time, per station.

The plot is drawn with Pillow (already a dependency, for the card faces); matplotlib is used when
it is installed and is not required.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from personaliser import outputs

__all__ = ["plot_throughput", "throughput_series", "write_json"]

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127))  # fmt: skip
BINS = 20


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically (the product's writer): a reader never sees half a report."""
    outputs.write_json(path, dict(data))


def throughput_series(
    timeline: Mapping[str, Sequence[float]], kinds: Mapping[str, str], *, bins: int = BINS
) -> tuple[list[float], dict[str, list[float]]]:
    """Cards per hour in ``bins`` equal windows, per series.

    Encoder heads are summed into one series (16 lines would hide one another); print and QA
    stations keep one series each, and ``passed`` is the line's output.
    """
    grouped: dict[str, list[float]] = {}
    heads = [s for s in timeline if kinds.get(s) == "encoder"]
    if heads:
        grouped[f"heads ({len(heads)})"] = sorted(t for s in heads for t in timeline[s])
    for station in sorted(s for s in timeline if s not in heads):
        grouped[station] = sorted(timeline[station])
    end = max((ts[-1] for ts in grouped.values() if ts), default=0.0)
    if end <= 0:
        return [], {}
    width = end / bins
    mids = [width * (i + 0.5) for i in range(bins)]
    series: dict[str, list[float]] = {}
    for name, times in grouped.items():
        counts = [0] * bins
        for t in times:
            counts[min(int(t / width), bins - 1)] += 1
        series[name] = [3600.0 * c / width for c in counts]
    return mids, series


def plot_throughput(
    path: Path,
    timeline: Mapping[str, Sequence[float]],
    kinds: Mapping[str, str],
    *,
    capacity: float | None = None,
    title: str = "throughput per station",
) -> None:
    mids, series = throughput_series(timeline, kinds)
    path.parent.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("matplotlib") is not None:
        _plot_matplotlib(path, mids, series, capacity, title)
    else:
        _plot_pillow(path, mids, series, capacity, title)


def _plot_matplotlib(
    path: Path,
    mids: list[float],
    series: Mapping[str, list[float]],
    capacity: float | None,
    title: str,
) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in series.items():
        ax.plot(mids, values, label=name)
    if capacity is not None:
        ax.axhline(capacity, linestyle="--", color="grey", label="bottleneck capacity")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("cards/hour")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_pillow(
    path: Path,
    mids: list[float],
    series: Mapping[str, list[float]],
    capacity: float | None,
    title: str,
) -> None:
    w, h = 900, 500
    left, right, top, bottom = 70, 190, 40, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x_max = (mids[-1] + mids[0]) if mids else 1.0
    peak = max([v for vs in series.values() for v in vs] + [capacity or 0.0, 1.0])
    y_max = peak * 1.1

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            left + (w - left - right) * x / x_max,
            h - bottom - (h - top - bottom) * y / y_max,
        )

    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    for i in range(6):
        y = y_max * i / 5
        _, py = xy(0, y)
        draw.line((left, py, w - right, py), fill=(230, 230, 230))
        draw.text((5, py - 6), f"{y:,.0f}", fill="black", font=font)
        tx, _ = xy(x_max * i / 5, 0)
        draw.text((tx - 10, h - bottom + 6), f"{x_max * i / 5:,.0f}", fill="black", font=font)
    draw.text((left, 12), title, fill="black", font=font)
    draw.text(((w - right + left) / 2 - 60, h - 20), "virtual time (s)", fill="black", font=font)
    draw.text((5, top - 18), "cards/hour", fill="black", font=font)
    if capacity is not None:
        _, cy = xy(0, capacity)
        for x0 in range(left, w - right, 12):
            draw.line((x0, cy, min(x0 + 6, w - right), cy), fill=(120, 120, 120), width=1)
    legend = list(series.items())
    for n, (name, values) in enumerate(legend):
        colour = COLOURS[n % len(COLOURS)]
        draw.line([xy(x, y) for x, y in zip(mids, values, strict=True)], fill=colour, width=2)
        ly = top + 16 * n
        draw.line((w - right + 10, ly + 6, w - right + 30, ly + 6), fill=colour, width=3)
        draw.text((w - right + 36, ly), name, fill="black", font=font)
    if capacity is not None:
        ly = top + 16 * len(legend)
        draw.line((w - right + 10, ly + 6, w - right + 30, ly + 6), fill=(120, 120, 120))
        draw.text((w - right + 36, ly), "bottleneck capacity", fill="black", font=font)
    img.save(path, format="PNG")
