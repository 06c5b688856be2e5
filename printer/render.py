"""Render card faces to grayscale arrays at a chosen resolution.

Output: ``uint8`` arrays, one row per pixel line, 255 = blank card and 0 = full ink (an engraving
laser's darkness map; proofs save them as PNG).  Layers combine darkest-wins.

Speed: everything that does not depend on the card (guilloche, fixed captions, fixed microtext, the
cleared MRZ zone, the rounded outline) is rendered once per (layout, dpi) and cached; per card
the renderer copies that base and draws only the variable elements.  Text is laid out from a
glyph cache (one anti-aliased bitmap per font, size, character and ink), so a card is a few
hundred small array operations.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from printer.errors import LayoutError, PrinterError
from printer.fonts import FontSpec, font_spec, load_font, require_glyphs
from printer.layout import (
    Element,
    GhostElement,
    GuillocheElement,
    ImageElement,
    Layout,
    MicrotextElement,
    MrzElement,
    Side,
    TextElement,
)
from printer.model import CardFace
from printer.security import ghost_image, guilloche, line_screen, microtext_values

__all__ = ["render_back", "render_card", "render_front", "static_layer", "variable_regions"]

Tone = NDArray[np.uint8]
MIN_DPI, MAX_DPI = 72, 2400
# Fraction of the em above the baseline where text ink starts: the em square is centred in the
# box with its baseline at 80 % (CJK ideographs sit in about -0.81..+0.09 em in WenQuanYi).
_ASCENT = 0.8


def _px(mm: float, dpi: int) -> float:
    return mm * dpi / 25.4


# --------------------------------------------------------------------------- glyphs


@dataclass(frozen=True, slots=True)
class _Glyph:
    tone: Tone  # already mixed with the ink: 255 where blank
    left: int  # bitmap offset from the pen position
    top: int  # bitmap offset from the baseline (negative: above it)
    advance: float


@lru_cache(maxsize=16384)
def _glyph(spec: FontSpec, size_px: int, ch: str, ink: int) -> _Glyph:
    font = load_font(spec, size_px)
    advance = font.getlength(ch)
    left, top, right, bottom = (int(v) for v in font.getbbox(ch, anchor="ls"))
    if right <= left or bottom <= top:
        return _Glyph(np.full((0, 0), 255, np.uint8), 0, 0, advance)
    img = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(img).text((-left, -top), ch, font=font, fill=255, anchor="ls")
    cover = np.asarray(img, dtype=np.uint16)
    tone = (255 - cover * (255 - ink) // 255).astype(np.uint8)
    tone.flags.writeable = False
    return _Glyph(tone, left, top, advance)


def _width(spec: FontSpec, size_px: int, text: str) -> float:
    return sum(_glyph(spec, size_px, c, 0).advance for c in text)


@dataclass(frozen=True, slots=True)
class _Tile:
    tone: Tone
    left: int  # tile offset from the run's start pen position
    top: int  # tile offset from the baseline


def _compose(spec: FontSpec, size_px: int, text: str, ink: int) -> _Tile:
    """``text`` set in one tile, glyph by glyph from the glyph cache."""
    glyphs = [_glyph(spec, size_px, c, ink) for c in text]
    pens, pen = [], 0.0
    for g in glyphs:
        pens.append(round(pen))
        pen += g.advance
    placed = [(p + g.left, g.top, g) for p, g in zip(pens, glyphs, strict=True) if g.tone.size]
    if not placed:
        return _Tile(np.full((0, 0), 255, np.uint8), 0, 0)
    x0 = min(x for x, _, _ in placed)
    y0 = min(y for _, y, _ in placed)
    x1 = max(x + g.tone.shape[1] for x, _, g in placed)
    y1 = max(y + g.tone.shape[0] for _, y, g in placed)
    tile = np.full((y1 - y0, x1 - x0), 255, np.uint8)
    for x, y, g in placed:
        h, w = g.tone.shape
        region = tile[y - y0 : y - y0 + h, x - x0 : x - x0 + w]
        np.minimum(region, g.tone, out=region)
    tile.flags.writeable = False
    return _Tile(tile, x0, y0)


# Fixed captions and microtext are laid out once.  Card values are not kept: a cache of rendered
# names and dates would hold personal data after the card has left (DESIGN §3, data minimisation).
_compose_fixed = lru_cache(maxsize=512)(_compose)


def _stamp(canvas: Tone, tone: Tone, x: int, y: int, clip: tuple[int, int, int, int]) -> None:
    """Darkest-wins ``tone`` onto ``canvas`` at ``(x, y)``, clipped to ``clip`` (x0, y0, x1, y1)."""
    h, w = tone.shape
    cx0, cy0, cx1, cy1 = clip
    ax0, ay0 = max(x, cx0), max(y, cy0)
    ax1, ay1 = min(x + w, cx1), min(y + h, cy1)
    if ax0 >= ax1 or ay0 >= ay1:
        return
    region = canvas[ay0:ay1, ax0:ax1]
    np.minimum(region, tone[ay0 - y : ay1 - y, ax0 - x : ax1 - x], out=region)


def _draw_run(
    canvas: Tone,
    text: str,
    *,
    spec: FontSpec,
    size_px: int,
    x: float,
    baseline: int,
    ink: int,
    clip: tuple[int, int, int, int],
    fixed: bool,
) -> None:
    tile = (_compose_fixed if fixed else _compose)(spec, size_px, text, ink)
    if tile.tone.size:
        _stamp(canvas, tile.tone, round(x) + tile.left, baseline + tile.top, clip)


# --------------------------------------------------------------------------- elements


def _text_value(e: TextElement, face: CardFace) -> str:
    if e.text is not None:
        return e.text
    assert e.field is not None
    raw = getattr(face, e.field)
    value = raw.strftime(e.format) if e.format is not None else str(raw)
    return dict(e.values).get(value, value)


def _draw_text(canvas: Tone, e: TextElement, value: str, dpi: int, where: str) -> None:
    spec = font_spec(e.font)
    require_glyphs(spec, value, what=f"element '{where}'")
    clip = e.box.pixels(dpi)
    box_w = clip[2] - clip[0]
    size_mm = e.size_mm
    size_px = max(1, round(_px(size_mm, dpi)))
    width = _width(spec, size_px, value)
    if width > box_w:
        scale = box_w / width
        if scale < e.min_scale or e.static:
            kind = LayoutError if e.static else PrinterError
            raise kind(f"element '{where}': text does not fit its box at {dpi} dpi")
        size_mm *= scale
        size_px = max(1, math.floor(_px(size_mm, dpi)))
        width = _width(spec, size_px, value)
    x = _px(e.box.x, dpi)
    if e.align == "center":
        x += (box_w - width) / 2
    elif e.align == "right":
        x += box_w - width
    baseline = round(_px(e.box.y + (e.box.h - size_mm) / 2 + _ASCENT * size_mm, dpi))
    _draw_run(
        canvas,
        value,
        spec=spec,
        size_px=size_px,
        x=x,
        baseline=baseline,
        ink=e.ink,
        clip=clip,
        fixed=e.static,
    )


def _draw_microtext(canvas: Tone, e: MicrotextElement, text: str, dpi: int, where: str) -> None:
    """``text`` repeated edge to edge across the box: the unit is drawn once, then tiled."""
    spec = font_spec(e.font)
    require_glyphs(spec, text, what=f"element '{where}'")
    x0, y0, x1, y1 = e.box.pixels(dpi)
    size_px = max(1, round(_px(e.size_mm, dpi)))
    unit_w = max(1, math.ceil(_width(spec, size_px, text)))
    h = y1 - y0
    unit = np.full((h, unit_w), 255, np.uint8)
    baseline = round(_px((e.box.h - e.size_mm) / 2 + _ASCENT * e.size_mm, dpi))
    _draw_run(
        unit,
        text,
        spec=spec,
        size_px=size_px,
        x=0.0,
        baseline=baseline,
        ink=e.ink,
        clip=(0, 0, unit_w, h),
        fixed=e.static,
    )
    reps = -(-(x1 - x0) // unit_w)
    strip = np.tile(unit, (1, reps))[:, : x1 - x0]
    region = canvas[y0:y1, x0:x1]
    np.minimum(region, strip, out=region)


@lru_cache(maxsize=1024)
def _mrz_cell(spec: FontSpec, c: str, *, size_px: int, ink: int, w: int, h: int, base: int) -> Tone:
    """One character cell ``w`` x ``h`` with the glyph on baseline ``base`` (cached)."""
    cell = np.full((h, w), 255, np.uint8)
    g = _glyph(spec, size_px, c, ink)
    if g.tone.size:
        _stamp(cell, g.tone, g.left, base + g.top, (0, 0, w, h))
    cell.flags.writeable = False
    return cell


def _draw_mrz(canvas: Tone, e: MrzElement, lines: tuple[str, str, str], dpi: int) -> None:
    """Each character on the fixed 2.54 mm grid (ICAO Doc 9303-3, 4.4), not by font advance;
    a line is assembled from cached character cells and laid down in one operation."""
    spec = font_spec(e.font)
    size_px = max(1, round(_px(e.size_mm, dpi)))
    xs = [round(_px(e.box.x + j * e.pitch_mm, dpi)) for j in range(len(lines[0]) + 1)]
    for i, line in enumerate(lines):
        top = e.box.y + i * e.line_pitch_mm
        y0, y1 = round(_px(top, dpi)), round(_px(top + e.size_mm, dpi))
        base = round(_px(top + _ASCENT * e.size_mm, dpi)) - y0
        row = np.hstack(
            [
                _mrz_cell(
                    spec, c, size_px=size_px, ink=e.ink, w=xs[j + 1] - xs[j], h=y1 - y0, base=base
                )
                for j, c in enumerate(line)
            ]
        )
        region = canvas[y0:y1, xs[0] : xs[-1]]
        np.minimum(region, row, out=region)


def _decode(jpeg: bytes, w: int, h: int) -> Image.Image:
    """The portrait in grayscale, decoded at the smallest JPEG scale still at least ``w`` x ``h``."""
    try:
        img = Image.open(io.BytesIO(jpeg))
        img.draft("L", (w, h))  # libjpeg DCT scaling: decode at 1/2, 1/4 ... when that suffices
        return img.convert("L")
    except (OSError, ValueError) as exc:
        raise PrinterError("portrait cannot be decoded") from exc


def _fit(img: Image.Image, w: int, h: int) -> Tone:
    """Crop to the box's aspect ratio (never stretch: ICAO Doc 9303-3, 3.9.1.3) and resize."""
    sw, sh = img.size
    target = w / h
    if sw / sh > target:
        cw = round(sh * target)
        box = ((sw - cw) // 2, 0, (sw - cw) // 2 + cw, sh)
    else:
        ch = round(sw / target)
        box = (0, (sh - ch) // 2, sw, (sh - ch) // 2 + ch)
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)


def _draw_image(
    canvas: Tone, e: ImageElement, portrait: Callable[[int, int], Tone], dpi: int
) -> None:
    x0, y0, x1, y1 = e.box.pixels(dpi)
    region = canvas[y0:y1, x0:x1]
    np.minimum(region, portrait(x1 - x0, y1 - y0), out=region)


def _draw_ghost(
    canvas: Tone, e: GhostElement, portrait: Callable[[int, int], Tone], dpi: int
) -> None:
    x0, y0, x1, y1 = e.box.pixels(dpi)
    w, h = x1 - x0, y1 - y0
    screen = line_screen(w, h, _px(e.screen_period_mm, dpi), e.screen_angle_deg)
    ghost = ghost_image(portrait(w, h), screen, ink_dark=e.ink_dark, ink_light=e.ink_light)
    region = canvas[y0:y1, x0:x1]
    np.minimum(region, ghost, out=region)


# --------------------------------------------------------------------------- static layer


def _card_mask(layout: Layout, dpi: int, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """True outside the rounded card outline (ISO/IEC 7810 corner radius)."""
    h, w = shape
    r = _px(layout.corner_radius_mm, dpi)
    yy, xx = np.ogrid[0:h, 0:w]
    cx = np.clip(xx + 0.5, r, w - r)
    cy = np.clip(yy + 0.5, r, h - r)
    return np.asarray((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 > r * r)


@lru_cache(maxsize=16)
def static_layer(layout: Layout, side: Side, dpi: int) -> Tone:
    """Everything on ``side`` that is the same on every card (read-only; cached)."""
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise ValueError(f"dpi must be from {MIN_DPI} to {MAX_DPI}")
    w = round(_px(layout.width_mm, dpi))
    h = round(_px(layout.height_mm, dpi))
    canvas = np.full((h, w), 255, np.uint8)
    for e in layout.side(side):
        where = f"{side}.{e.id}"
        if isinstance(e, GuillocheElement):
            x0, y0, x1, y1 = e.box.pixels(dpi)
            region = canvas[y0:y1, x0:x1]
            np.minimum(region, guilloche(e, dpi)[: y1 - y0, : x1 - x0], out=region)
        elif isinstance(e, TextElement) and e.static:
            assert e.text is not None
            _draw_text(canvas, e, e.text, dpi, where)
        elif isinstance(e, MicrotextElement) and e.static:
            _draw_microtext(canvas, e, e.template, dpi, where)
    if side == "back":
        x0, y0, x1, y1 = layout.mrz_zone.pixels(dpi)
        canvas[y0:y1, x0:x1] = 255  # Zone VII stays clear for OCR (ICAO Doc 9303-3, 4.5)
    canvas[_card_mask(layout, dpi, canvas.shape)] = 255
    canvas.flags.writeable = False
    return canvas


# --------------------------------------------------------------------------- per card


def _variable(e: Element) -> bool:
    if isinstance(e, TextElement | MicrotextElement):
        return not e.static
    return isinstance(e, MrzElement | ImageElement | GhostElement)


def variable_regions(layout: Layout, side: Side, dpi: int) -> tuple[tuple[int, int, int, int], ...]:
    """Pixel boxes ``(x0, y0, x1, y1)`` of what changes from card to card; everything else on the
    side is :func:`static_layer`.  A rasteriser can dither the static layer once per layout and
    redo only these boxes per card."""
    return tuple(e.box.pixels(dpi) for e in layout.side(side) if _variable(e))


def _render(face: CardFace, layout: Layout, side: Side, dpi: int) -> Tone:
    canvas = static_layer(layout, side, dpi).copy()
    decoded: list[Image.Image] = []

    def portrait(w: int, h: int) -> Tone:
        if not decoded:
            sizes = [
                e.box.pixels(dpi)
                for e in layout.side(side)
                if isinstance(e, ImageElement | GhostElement)
            ]
            decoded.append(
                _decode(
                    face.portrait_jpeg,
                    max(x1 - x0 for x0, _, x1, _ in sizes),
                    max(y1 - y0 for _, y0, _, y1 in sizes),
                )
            )
        return _fit(decoded[0], w, h)

    e: Element
    for e in layout.side(side):
        where = f"{side}.{e.id}"
        if isinstance(e, TextElement) and not e.static:
            _draw_text(canvas, e, _text_value(e, face), dpi, where)
        elif isinstance(e, MicrotextElement) and not e.static:
            values = microtext_values(
                card_id=face.card_id, chip_serial=face.chip_serial, digits=e.serial_digits
            )
            _draw_microtext(canvas, e, e.template.format(**values), dpi, where)
        elif isinstance(e, MrzElement):
            _draw_mrz(canvas, e, face.mrz_lines, dpi)
        elif isinstance(e, ImageElement):
            _draw_image(canvas, e, portrait, dpi)
        elif isinstance(e, GhostElement):
            _draw_ghost(canvas, e, portrait, dpi)
    return canvas


def render_front(face: CardFace, layout: Layout, dpi: int = 300) -> Tone:
    """The front of ``face`` at ``dpi`` (300 for proofs, 600 for engraving)."""
    return _render(face, layout, "front", dpi)


def render_back(face: CardFace, layout: Layout, dpi: int = 300) -> Tone:
    """The back of ``face``: MRZ in Zone VII, card serial, per-card microtext."""
    return _render(face, layout, "back", dpi)


def render_card(face: CardFace, layout: Layout, dpi: int = 300) -> tuple[Tone, Tone]:
    """``(front, back)``."""
    return render_front(face, layout, dpi), render_back(face, layout, dpi)
