"""Benchmarks of the laser-engraving raster at 600 dpi (pytest-benchmark; `make bench` prints them).

One ID-1 card front (ISO/IEC 7810: 85.60 x 53.98 mm) at 600 dpi is 2022 x 1275 pixels. The figure
that matters is Floyd-Steinberg through the compiled kernel, against two floors measured in the same
run: a plain numpy threshold (one memory pass, no diffusion) and the ordered dither. The
plain-Python reference is timed once, as the peer the kernel replaces. Target for render + raster:
under 20 ms per card; the render part joins this file when the renderer lands.
"""

from __future__ import annotations

import numpy as np
import pytest

from printer import raster

DPI = 600
MM_PER_INCH = 25.4
WIDTH = round(85.60 / MM_PER_INCH * DPI)  # 2022
HEIGHT = round(53.98 / MM_PER_INCH * DPI)  # 1275


def synthetic_front() -> np.ndarray:
    """A card-like gray image: a guilloche-ish background, a smooth "portrait", text-like bars.

    Content matters for a fair figure: flat areas, smooth ramps, fine noise and hard edges each
    exercise the diffusion differently (the kernel is written to be branch-free, so it should not).
    """
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    background = 200 + 30 * np.sin(x / 23.0 + 4 * np.sin(y / 61.0)) * np.cos(y / 37.0)
    img = background
    top, left, h, w = 180, 90, 900, 700  # portrait box, about 38 x 30 mm
    py, px = y[top : top + h, left : left + w], x[top : top + h, left : left + w]
    face = 60 + 150 * np.exp(-(((px - left - w / 2) / 260) ** 2) - ((py - top - h / 2) / 340) ** 2)
    noise = np.random.default_rng(7).normal(0, 12, face.shape)
    img[top : top + h, left : left + w] = face + noise
    for i in range(8):  # text lines: bars of dark "glyphs"
        row = 250 + i * 110
        for j in range(30):
            col = 900 + j * 36
            img[row : row + 48, col : col + 22] = 20
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def front() -> np.ndarray:
    raster.warm_up()  # compile or cache load must not land in a card's time
    img = synthetic_front()
    assert img.shape == (HEIGHT, WIDTH) == (1275, 2022)
    return img


def test_raster_fs_600dpi(benchmark, front) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "raster 600 dpi"
    bits = benchmark(raster.diffuse, front)
    assert bits.shape == front.shape
    assert abs(bits.mean() * 255 - front.mean()) < 1.0


def test_raster_fs_raster_scan_600dpi(benchmark, front) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "raster 600 dpi"
    bits = benchmark(raster.diffuse, front, serpentine=False)
    assert bits.shape == front.shape


def test_raster_ordered_600dpi(benchmark, front) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "raster 600 dpi"
    bits = benchmark(raster.diffuse, front, method="ordered")
    assert bits.shape == front.shape


def test_raster_floor_threshold_600dpi(benchmark, front) -> None:  # type: ignore[no-untyped-def]
    """The floor: one numpy pass that reads every pixel and writes every output byte."""
    benchmark.group = "raster 600 dpi"
    bits = benchmark(lambda g: (g >= 128).view(np.uint8), front)
    assert bits.shape == front.shape


def test_raster_fs_and_pack_600dpi(benchmark, front) -> None:  # type: ignore[no-untyped-def]
    """What the engraver receives: the raster packed 8 dots to a byte."""
    benchmark.group = "raster 600 dpi"
    packed = benchmark(lambda g: raster.pack_for_engraver(raster.diffuse(g)), front)
    assert packed.shape == (HEIGHT, (WIDTH + 7) // 8)


@pytest.mark.slow
def test_raster_reference_600dpi(benchmark, front) -> None:  # type: ignore[no-untyped-def]
    """The plain-Python reference, one round: the peer (seconds, not milliseconds)."""
    benchmark.group = "raster 600 dpi"
    bits = benchmark.pedantic(raster.diffuse_reference, args=(front,), rounds=1, iterations=1)
    assert np.array_equal(bits, raster.diffuse(front))


def test_render_and_raster_600dpi(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The issue's figure: one card's front rendered at 600 dpi and error-diffused (< 20 ms)."""
    from personaliser.faces import proof_faces
    from personaliser.synth import synth_applications
    from printer.layout import load_layout
    from printer.render import render_front

    raster.warm_up()
    layout = load_layout("hkid-2018")
    faces = list(proof_faces(list(synth_applications(4, seed=5))))
    render_front(faces[0], layout, dpi=DPI)  # the static layer is built once per layout and dpi
    turn = iter(range(10**9))

    def card() -> np.ndarray:
        face = faces[next(turn) % len(faces)]
        return raster.diffuse(render_front(face, layout, dpi=DPI))

    bits = benchmark(card)
    assert bits.shape == (HEIGHT, WIDTH) and set(np.unique(bits)) <= {0, 1}
