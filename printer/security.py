"""Security features of the card face: guilloche, microtext, ghost image, the per-card chip tie.

Everything here returns grayscale tone arrays (``uint8``, 255 = blank card, 0 = full ink) so the
renderer can lay them over each other with a darkest-wins rule.  Guilloches are generated from
their layout parameters only (no randomness), so one layout always prints the same background and
the renderer can cache it per layout and resolution (ICAO Doc 9303-2, Appendix on security
printing: fine-line patterns, microprinting and a ghost image are the usual second-line features).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from printer.layout import GuillocheElement

__all__ = [
    "chip_serial_tail",
    "ghost_image",
    "guilloche",
    "line_screen",
    "microtext_values",
]

Tone = NDArray[np.uint8]
_SUPERSAMPLE = 2  # guilloche strokes are drawn at 2x and box-filtered down: cheap anti-aliasing


def _mm(mm: float, dpi: int) -> float:
    return mm * dpi / 25.4


def guilloche(e: GuillocheElement, dpi: int) -> Tone:
    """The guilloche of ``e`` as a tone image the size of its box at ``dpi``."""
    x0, y0, x1, y1 = e.box.pixels(dpi)
    w, h = x1 - x0, y1 - y0
    s = _SUPERSAMPLE
    img = Image.new("L", (w * s, h * s), 255)
    draw = ImageDraw.Draw(img)
    stroke = max(1, round(_mm(e.stroke_mm, dpi) * s))
    for curve in _curves(e, dpi):
        # Box-relative, supersampled coordinates.
        pts = [((x - x0) * s, (y - y0) * s) for x, y in curve]
        draw.line(pts, fill=e.ink, width=stroke)
    out: Tone = np.asarray(img.reduce(s), dtype=np.uint8)
    return out


def _curves(e: GuillocheElement, dpi: int) -> list[list[tuple[float, float]]]:
    """Polylines in card pixels: interlaced sine bands (``waves``) or nested rosettes."""
    x0, y0, x1, y1 = e.box.pixels(dpi)
    step = max(1.0, _mm(0.15, dpi))  # a vertex every 0.15 mm keeps the curves smooth
    phase = math.radians(e.phase_step_deg)
    amp = _mm(e.amplitude_mm, dpi)
    out: list[list[tuple[float, float]]] = []
    if e.pattern == "waves":
        xs = np.arange(x0, x1 + step, step, dtype=np.float64)
        k = 2 * math.pi / _mm(e.wavelength_mm, dpi)
        swell = 2 * math.pi / max(1.0, (x1 - x0))
        gap = (y1 - y0) / e.lines
        for i in range(e.lines):
            base = y0 + (i + 0.5) * gap
            envelope = 1 + e.modulation * np.sin(swell * (xs - x0) + i * phase / 2)
            for sign in (1.0, -1.0):  # two families in counter-phase interlace into a net
                ys = base + sign * amp * envelope * np.sin(k * (xs - x0) + i * phase)
                out.append(list(zip(xs.tolist(), ys.tolist(), strict=True)))
        return out
    cx, cy = _mm(e.center[0], dpi), _mm(e.center[1], dpi)
    radius = _mm(e.radius_mm, dpi)
    n = max(64, int(2 * math.pi * radius / step))
    t = np.linspace(0.0, 2 * math.pi, n + 1)
    for i in range(e.lines):
        scale = (i + 1) / e.lines
        r = (
            radius
            * scale
            * (1 - e.modulation / 2 + e.modulation / 2 * np.cos(e.lobes * t + i * phase))
        )
        r = r + amp * np.sin((e.lobes + 1) * t - i * phase)
        xs, ys = cx + r * np.cos(t), cy + r * np.sin(t)
        out.append(list(zip(xs.tolist(), ys.tolist(), strict=True)))
    return out


@lru_cache(maxsize=32)
def line_screen(w: int, h: int, period_px: float, angle_deg: float) -> Tone:
    """Threshold matrix of a line screen: a triangle wave from 0 to 255 across lines at ``angle``.

    A pixel is inked where the threshold is below the wanted coverage, so coverage 30 % prints
    lines 30 % of a period wide: the tone is carried by line width (amplitude modulation), which
    is what makes a ghost image look screened under a loupe.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = math.radians(angle_deg)
    u = (xx * math.cos(a) + yy * math.sin(a)) / np.float32(max(period_px, 1.0))
    frac = u - np.floor(u)
    screen: Tone = np.minimum(np.abs(2 * frac - 1) * 256, 255).astype(np.uint8)
    screen.flags.writeable = False
    return screen


@lru_cache(maxsize=64)
def _coverage(ink_dark: int, ink_light: int) -> NDArray[np.uint16]:
    """Portrait tone -> screen coverage in 1/256ths (a lookup table, so a ghost costs one gather)."""
    p = np.arange(256, dtype=np.float64)
    tone = ink_light - (ink_light - ink_dark) * (1.0 - p / 255.0)
    lut = np.rint((255.0 - tone) / float(255 - ink_dark) * 256).astype(np.uint16)
    lut.flags.writeable = False
    return lut


def ghost_image(portrait: Tone, screen: Tone, *, ink_dark: int, ink_light: int) -> Tone:
    """A light, screened copy of ``portrait`` (already resized to ``screen``'s shape).

    The portrait's tones are squeezed into ``[ink_dark, ink_light]`` and then screened: each pixel
    is either card (255) or ``ink_dark``, with line width carrying the tone.
    """
    inked = screen < _coverage(ink_dark, ink_light)[portrait]
    return np.where(inked, np.uint8(ink_dark), np.uint8(255)).astype(np.uint8)


def chip_serial_tail(chip_serial: str, digits: int) -> str:
    """The last ``digits`` hex digits of the chip serial: printed in microtext, read back from the
    chip at verification, they show that this face and this chip were personalised together."""
    if digits < 1:
        raise ValueError("digits must be positive")
    return chip_serial[-digits:]


def microtext_values(*, card_id: str, chip_serial: str, digits: int) -> dict[str, str]:
    """Values for the placeholders a microtext template may use."""
    return {"card_id": card_id, "chip_serial_tail": chip_serial_tail(chip_serial, digits)}
