"""Card face layouts as data: a versioned TOML file, loaded into frozen values and checked.

A layout places elements on the front and back of an ID-1 card, every box in millimetres from the
card's top-left corner (``box = [x, y, width, height]``).  Element types: ``text`` (a field of the
:class:`printer.model.CardFace` or fixed text), ``mrz``, ``image`` (the portrait), ``ghost`` (a
screened copy of it), ``microtext`` and ``guilloche``.  A file that would print outside the card,
over another element, or outside the ICAO MRZ zone is refused with a :class:`LayoutError` naming
the element and the reason.

Geometry it enforces:

- ID-1 card 85.60 mm x 53.98 mm with 3.18 mm corner radius (ISO/IEC 7810, the TD1 size of ICAO
  Doc 9303-5, 2.1); every element except the guilloche background lies inside the rounded outline.
- The MRZ is on the back (Doc 9303-5, 4.2.1.1) in Zone VII, which runs along the bottom edge and
  is 23.3 mm +/- 1.0 mm high (Doc 9303-5, Figure 6); the first character starts 5.0 +/- 1.0 mm
  from the left edge (4.2.1.3); characters are 2.54 mm apart (Doc 9303-3, 4.4); the three lines
  fit in the 17.0 mm height of the effective reading zone (Doc 9303-3, 4.5).  No other printing
  enters Zone VII; the guilloche is cleared from it when rendered.
"""

from __future__ import annotations

import hashlib
import math
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from printer.errors import LayoutError
from printer.fonts import font_spec

__all__ = [
    "FACE_FIELDS",
    "Box",
    "Element",
    "GhostElement",
    "GuillocheElement",
    "ImageElement",
    "Layout",
    "MicrotextElement",
    "MrzElement",
    "TextElement",
    "builtin_layouts",
    "load_layout",
    "parse_layout",
]

FORMAT = "perso-card-layout"
SUPPORTED_VERSIONS = frozenset({1})

# ISO/IEC 7810 ID-1 (ICAO Doc 9303-5, 2.1: TD1 nominal size).
ID1_WIDTH_MM = 85.60
ID1_HEIGHT_MM = 53.98
ID1_CORNER_MM = 3.18
# ICAO Doc 9303-5 Figure 6 and 4.2.1.3; Doc 9303-3 4.4 and 4.5.
MRZ_ZONE_HEIGHT_MM = 23.3
MRZ_ZONE_TOLERANCE_MM = 1.0
MRZ_LEFT_MARGIN_MM = 5.0
MRZ_LEFT_TOLERANCE_MM = 1.0
MRZ_PITCH_MM = 2.54
MRZ_LINE_PITCH_MM = 4.0
ERZ_HEIGHT_MM = 17.0
# fonts-ocr-b advances every character 723/1000 em, so this em size gives 10 characters per inch
# and a character height of 2.48 mm, close to OCR-B size I (ISO 1073-2).
OCRB_ADVANCE_EM = 0.723
MRZ_CHARS = 30
MRZ_LINES = 3
_EPS = 1e-6

#: CardFace fields a text element may print (dates take a ``format``).
FACE_FIELDS = frozenset(
    {
        "card_id",
        "chip_serial",
        "english_name",
        "chinese_name",
        "chinese_commercial_code",
        "date_of_birth",
        "sex",
        "date_of_first_registration",
        "date_of_issue",
        "card_number",
        "symbols",
    }
)
DATE_FIELDS = frozenset({"date_of_birth", "date_of_first_registration", "date_of_issue"})
MICROTEXT_FIELDS = frozenset({"chip_serial_tail", "card_id"})
Side = Literal["front", "back"]
Align = Literal["left", "center", "right"]


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle in millimetres: ``x``, ``y`` of the top-left corner, ``w`` wide, ``h`` high."""

    x: float
    y: float
    w: float
    h: float

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    def overlaps(self, other: Box) -> bool:
        """True when the two rectangles share area (touching edges do not count)."""
        return (
            self.x < other.right - _EPS
            and other.x < self.right - _EPS
            and self.y < other.bottom - _EPS
            and other.y < self.bottom - _EPS
        )

    def within(self, other: Box) -> bool:
        return (
            self.x >= other.x - _EPS
            and self.y >= other.y - _EPS
            and self.right <= other.right + _EPS
            and self.bottom <= other.bottom + _EPS
        )

    def pixels(self, dpi: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in pixels at ``dpi``, rounded to the nearest pixel edge."""
        s = dpi / 25.4
        return (
            round(self.x * s),
            round(self.y * s),
            round(self.right * s),
            round(self.bottom * s),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Element:
    """Common part of every element: its id (unique per side), type, box, allowed overlaps."""

    id: str
    type: str
    box: Box
    overlaps: tuple[str, ...] = ()

    @property
    def background(self) -> bool:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class TextElement(Element):
    """Fixed ``text`` or a CardFace ``field`` in font ``font`` at ``size_mm`` per em."""

    font: str
    size_mm: float
    field: str | None = None
    text: str | None = None
    align: Align = "left"
    ink: int = 0
    format: str | None = None  # strftime format of a date field
    values: tuple[tuple[str, str], ...] = ()  # field value -> printed text (e.g. M -> 男 M)
    min_scale: float = 0.7  # a long variable value may shrink to this share of size_mm

    @property
    def static(self) -> bool:
        return self.field is None


@dataclass(frozen=True, slots=True, kw_only=True)
class MrzElement(Element):
    """The three TD1 lines, one character every ``pitch_mm``, lines ``line_pitch_mm`` apart."""

    font: str = "ocrb"
    size_mm: float = MRZ_PITCH_MM / OCRB_ADVANCE_EM
    pitch_mm: float = MRZ_PITCH_MM
    line_pitch_mm: float = MRZ_LINE_PITCH_MM
    ink: int = 0

    @property
    def block_height_mm(self) -> float:
        """Top of the first line's em box to the bottom of the last's."""
        return (MRZ_LINES - 1) * self.line_pitch_mm + self.size_mm


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageElement(Element):
    """The portrait, cropped (never stretched: Doc 9303-3, 3.9.1.3) to fill the box."""

    field: str = "portrait"


@dataclass(frozen=True, slots=True, kw_only=True)
class GhostElement(Element):
    """A reduced, light, line-screened copy of the portrait."""

    field: str = "portrait"
    screen_period_mm: float = 0.25
    screen_angle_deg: float = 45.0
    ink_dark: int = 110  # tone of the portrait's darkest parts
    ink_light: int = 235  # tone of its lightest parts


@dataclass(frozen=True, slots=True, kw_only=True)
class MicrotextElement(Element):
    """A line of tiny text repeated across the box; ``{chip_serial_tail}`` makes it per-card."""

    font: str
    size_mm: float
    template: str
    serial_digits: int = 8
    ink: int = 60

    @property
    def static(self) -> bool:
        return not _placeholders(self.template)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuillocheElement(Element):
    """Fine interlaced curves generated from parameters (``waves`` bands or a ``rosette``)."""

    pattern: Literal["waves", "rosette"]
    lines: int = 40
    amplitude_mm: float = 1.5
    wavelength_mm: float = 12.0
    stroke_mm: float = 0.05
    ink: int = 185
    phase_step_deg: float = 9.0
    modulation: float = 0.35  # how much each curve's amplitude swells along the card
    center: tuple[float, float] = (0.0, 0.0)  # rosette centre, mm
    radius_mm: float = 10.0  # rosette outer radius
    lobes: int = 18

    @property
    def background(self) -> bool:
        return True


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Layout:
    """A checked layout; equality and hashing go by the source digest (used as a cache key)."""

    name: str
    version: int
    description: str
    width_mm: float
    height_mm: float
    corner_radius_mm: float
    mrz_zone_height_mm: float
    front: tuple[Element, ...]
    back: tuple[Element, ...]
    digest: str

    def side(self, side: Side) -> tuple[Element, ...]:
        return self.front if side == "front" else self.back

    @property
    def card(self) -> Box:
        return Box(0.0, 0.0, self.width_mm, self.height_mm)

    @property
    def mrz_zone(self) -> Box:
        """Zone VII: the full width of the back, ``mrz_zone_height_mm`` up from the bottom edge."""
        h = self.mrz_zone_height_mm
        return Box(0.0, self.height_mm - h, self.width_mm, h)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and (self.name, self.digest) == (other.name, other.digest)

    def __hash__(self) -> int:
        return hash((self.name, self.digest))

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, version={self.version})"


# --------------------------------------------------------------------------- parsing


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class _Reader:
    """Pulls typed values out of one element's table, naming the element in every error."""

    def __init__(self, element: str, table: Mapping[str, Any]) -> None:
        self.element = element
        self.table = dict(table)
        self.used: set[str] = {"id", "type"}

    def fail(self, message: str) -> LayoutError:
        return LayoutError(message, element=self.element)

    def _get(self, key: str, required: bool) -> Any:
        self.used.add(key)
        if key not in self.table:
            if required:
                raise self.fail(f"missing '{key}'")
            return None
        return self.table[key]

    def number(self, key: str, default: float | None = None, *, positive: bool = True) -> float:
        value = self._get(key, default is None)
        if value is None:
            assert default is not None
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(f"'{key}' must be a number")
        if positive and value <= 0:
            raise self.fail(f"'{key}' must be greater than zero")
        return float(value)

    def integer(self, key: str, default: int, *, lo: int, hi: int) -> int:
        value = self._get(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(f"'{key}' must be an integer from {lo} to {hi}")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(f"'{key}' must be a string")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise self.fail(f"missing '{key}'")
        return value

    def box(self) -> Box:
        value = self._get("box", True)
        if (
            not isinstance(value, list)
            or len(value) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail("'box' must be [x, y, width, height] in millimetres")
        x, y, w, h = (float(v) for v in value)
        if w <= 0 or h <= 0:
            raise self.fail("box width and height must be greater than zero")
        return Box(x, y, w, h)

    def size_mm(self) -> float:
        """``size_mm``, or ``size_pt`` converted (1 pt = 25.4/72 mm); exactly one of them."""
        has_mm, has_pt = "size_mm" in self.table, "size_pt" in self.table
        if has_mm == has_pt:
            raise self.fail("give exactly one of 'size_mm' and 'size_pt'")
        if has_mm:
            return self.number("size_mm")
        return self.number("size_pt") * 25.4 / 72.0

    def font(self, default: str | None = None) -> str:
        key = self.text("font", default)
        if key is None:
            raise self.fail("missing 'font'")
        try:
            font_spec(key)
        except LayoutError as exc:
            raise self.fail(str(exc)) from exc
        return key

    def ink(self, key: str = "ink", default: int = 0) -> int:
        return self.integer(key, default, lo=0, hi=255)

    def overlaps(self) -> tuple[str, ...]:
        value = self._get("overlaps", False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail("'overlaps' must be a list of element ids")
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(f"unknown key(s): {', '.join(unknown)}")


def _text(r: _Reader, common: dict[str, Any]) -> TextElement:
    field, text = r.text("field"), r.text("text")
    if (field is None) == (text is None):
        raise r.fail("give exactly one of 'field' and 'text'")
    if field is not None and field not in FACE_FIELDS:
        raise r.fail(f"unknown field {field!r} (known: {', '.join(sorted(FACE_FIELDS))})")
    fmt = r.text("format")
    if field in DATE_FIELDS and fmt is None:
        fmt = "%d-%m-%Y"
    if fmt is not None and field not in DATE_FIELDS:
        raise r.fail("'format' applies to date fields only")
    raw_values = r._get("values", False) or {}
    if not isinstance(raw_values, dict) or not all(isinstance(v, str) for v in raw_values.values()):
        raise r.fail("'values' must be a table of strings")
    align = r.text("align", "left")
    if align not in ("left", "center", "right"):
        raise r.fail("'align' must be left, center or right")
    min_scale = r.number("min_scale", 0.7)
    if min_scale > 1:
        raise r.fail("'min_scale' must be at most 1")
    return TextElement(
        **common,
        font=r.font(),
        size_mm=r.size_mm(),
        field=field,
        text=text,
        align=align,  # type: ignore[arg-type]
        ink=r.ink(),
        format=fmt,
        values=tuple(sorted(raw_values.items())),
        min_scale=min_scale,
    )


def _mrz(r: _Reader, common: dict[str, Any]) -> MrzElement:
    font = r.font("ocrb")
    if font != "ocrb":
        raise r.fail("the MRZ must be printed in OCR-B (ICAO Doc 9303-3, 4.4): font = 'ocrb'")
    sized = "size_mm" in r.table or "size_pt" in r.table
    return MrzElement(
        **common,
        font=font,
        size_mm=r.size_mm() if sized else MRZ_PITCH_MM / OCRB_ADVANCE_EM,
        pitch_mm=r.number("pitch_mm", MRZ_PITCH_MM),
        line_pitch_mm=r.number("line_pitch_mm", MRZ_LINE_PITCH_MM),
        ink=r.ink(),
    )


def _image(r: _Reader, common: dict[str, Any]) -> ImageElement:
    if r.text("field", "portrait") != "portrait":
        raise r.fail("an image element prints the 'portrait' field")
    return ImageElement(**common)


def _ghost(r: _Reader, common: dict[str, Any]) -> GhostElement:
    if r.text("field", "portrait") != "portrait":
        raise r.fail("a ghost element prints the 'portrait' field")
    dark, light = r.ink("ink_dark", 110), r.ink("ink_light", 235)
    if dark >= light:
        raise r.fail("'ink_dark' must be darker (smaller) than 'ink_light'")
    return GhostElement(
        **common,
        screen_period_mm=r.number("screen_period_mm", 0.25),
        screen_angle_deg=r.number("screen_angle_deg", 45.0, positive=False),
        ink_dark=dark,
        ink_light=light,
    )


def _microtext(r: _Reader, common: dict[str, Any]) -> MicrotextElement:
    template = r.required_text("template")
    try:
        names = _placeholders(template)
    except ValueError as exc:
        raise r.fail("'template' has an unbalanced '{' or '}'") from exc
    unknown = names - MICROTEXT_FIELDS
    if unknown:
        raise r.fail(
            f"'template' names unknown field(s) {sorted(unknown)} "
            f"(known: {', '.join(sorted(MICROTEXT_FIELDS))})"
        )
    return MicrotextElement(
        **common,
        font=r.font(),
        size_mm=r.size_mm(),
        template=template,
        serial_digits=r.integer("serial_digits", 8, lo=4, hi=32),
        ink=r.ink(default=60),
    )


def _guilloche(r: _Reader, common: dict[str, Any]) -> GuillocheElement:
    pattern = r.required_text("pattern")
    if pattern not in ("waves", "rosette"):
        raise r.fail("'pattern' must be 'waves' or 'rosette'")
    center = r._get("center_mm", False)
    if center is None:
        box: Box = common["box"]
        center = [box.x + box.w / 2, box.y + box.h / 2]
    if not isinstance(center, list) or len(center) != 2:
        raise r.fail("'center_mm' must be [x, y]")
    modulation = r.number("modulation", 0.35, positive=False)
    if not 0 <= modulation < 1:
        raise r.fail("'modulation' must be from 0 to below 1")
    return GuillocheElement(
        **common,
        pattern=pattern,  # type: ignore[arg-type]
        lines=r.integer("lines", 40, lo=1, hi=400),
        amplitude_mm=r.number("amplitude_mm", 1.5),
        wavelength_mm=r.number("wavelength_mm", 12.0),
        stroke_mm=r.number("stroke_mm", 0.05),
        ink=r.ink(default=185),
        phase_step_deg=r.number("phase_step_deg", 9.0, positive=False),
        modulation=modulation,
        center=(float(center[0]), float(center[1])),
        radius_mm=r.number("radius_mm", 10.0),
        lobes=r.integer("lobes", 18, lo=1, hi=200),
    )


_PARSERS = {
    "text": _text,
    "mrz": _mrz,
    "image": _image,
    "ghost": _ghost,
    "microtext": _microtext,
    "guilloche": _guilloche,
}


def _element(side: str, index: int, table: Any) -> Element:
    if not isinstance(table, dict):
        raise LayoutError(f"[[{side}]] entry {index + 1} is not a table")
    eid = table.get("id")
    if not isinstance(eid, str) or not eid:
        raise LayoutError(f"[[{side}]] entry {index + 1} has no 'id'")
    r = _Reader(f"{side}.{eid}", table)
    etype = table.get("type")
    parser = _PARSERS.get(etype) if isinstance(etype, str) else None
    if parser is None:
        raise r.fail(f"unknown type {etype!r} (known: {', '.join(sorted(_PARSERS))})")
    common = {"id": eid, "type": etype, "box": r.box(), "overlaps": r.overlaps()}
    element = parser(r, common)
    r.finish()
    return element


def parse_layout(text: str, *, source: str = "<string>") -> Layout:
    """Parse and check a layout from TOML text; any problem raises :class:`LayoutError`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"{source}: not valid TOML ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise LayoutError(f"{source}: 'format' must be {FORMAT!r}")
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise LayoutError(
            f"{source}: layout version {version!r} is not supported "
            f"(supported: {sorted(SUPPORTED_VERSIONS)})"
        )
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise LayoutError(f"{source}: missing 'name'")
    card = doc.get("card")
    if not isinstance(card, dict):
        raise LayoutError(f"{source}: missing [card] table")
    r = _Reader("card", card)
    width, height = r.number("width_mm"), r.number("height_mm")
    corner = r.number("corner_radius_mm", ID1_CORNER_MM, positive=False)
    zone_height = r.number("mrz_zone_height_mm", MRZ_ZONE_HEIGHT_MM)
    r.finish()
    sides: dict[str, tuple[Element, ...]] = {}
    for side in ("front", "back"):
        entries = doc.get(side, [])
        if not isinstance(entries, list):
            raise LayoutError(f"{source}: '{side}' must be an array of tables ([[{side}]])")
        sides[side] = tuple(_element(side, i, t) for i, t in enumerate(entries))
    unknown = sorted(
        set(doc) - {"format", "version", "name", "description", "card", "front", "back"}
    )
    if unknown:
        raise LayoutError(f"{source}: unknown top-level key(s): {', '.join(unknown)}")
    layout = Layout(
        name=name,
        version=version,
        description=str(doc.get("description", "")),
        width_mm=width,
        height_mm=height,
        corner_radius_mm=corner,
        mrz_zone_height_mm=zone_height,
        front=sides["front"],
        back=sides["back"],
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
    _check(layout)
    return layout


# --------------------------------------------------------------------------- checks


def _outside_card(layout: Layout, box: Box) -> str | None:
    """Why ``box`` is not inside the rounded card outline, or None."""
    W, H, R = layout.width_mm, layout.height_mm, layout.corner_radius_mm  # noqa: N806
    edges = (
        (-box.x, "left edge"),
        (-box.y, "top edge"),
        (box.right - W, "right edge"),
        (box.bottom - H, "bottom edge"),
    )
    for excess, edge in edges:
        if excess > _EPS:
            return f"extends {excess:.2f} mm beyond the {edge} of the card"
    for cx, cy, px, py in (
        (R, R, box.x, box.y),
        (W - R, R, box.right, box.y),
        (R, H - R, box.x, box.bottom),
        (W - R, H - R, box.right, box.bottom),
    ):
        in_corner = (px < R if cx == R else px > W - R) and (py < R if cy == R else py > H - R)
        if in_corner and math.hypot(px - cx, py - cy) > R + _EPS:
            return "reaches into a rounded corner of the card"
    return None


def _check(layout: Layout) -> None:
    if abs(layout.width_mm - ID1_WIDTH_MM) > 0.01 or abs(layout.height_mm - ID1_HEIGHT_MM) > 0.01:
        raise LayoutError(
            f"card must be ID-1 / TD1, {ID1_WIDTH_MM} x {ID1_HEIGHT_MM} mm (ISO/IEC 7810)"
        )
    if not 0 <= layout.corner_radius_mm <= 5:
        raise LayoutError("card corner radius must be from 0 to 5 mm")
    limit = MRZ_ZONE_HEIGHT_MM + MRZ_ZONE_TOLERANCE_MM
    if not ERZ_HEIGHT_MM <= layout.mrz_zone_height_mm <= limit:
        raise LayoutError(
            f"mrz_zone_height_mm must be from {ERZ_HEIGHT_MM} to {limit} mm "
            "(ICAO Doc 9303-5 Figure 6: 23.3 +/- 1.0 mm)"
        )
    mrz = [e for e in layout.back if isinstance(e, MrzElement)]
    if [e for e in layout.front if isinstance(e, MrzElement)]:
        raise LayoutError("a TD1 MRZ belongs on the back of the card (ICAO Doc 9303-5, 4.2.1.1)")
    if len(mrz) != 1:
        raise LayoutError(f"the back needs exactly one 'mrz' element, found {len(mrz)}")
    _check_mrz(layout, mrz[0])
    for side in ("front", "back"):
        _check_side(layout, side)


def _check_side(layout: Layout, side: Side) -> None:
    elements = layout.side(side)
    ids = [e.id for e in elements]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise LayoutError(f"{side}: duplicate element id(s): {', '.join(dupes)}")
    for e in elements:
        where = f"{side}.{e.id}"
        for other in e.overlaps:
            if other not in ids:
                raise LayoutError(f"'overlaps' names unknown element {other!r}", element=where)
        if e.background:
            if not e.box.within(layout.card):
                raise LayoutError("background must lie within the card rectangle", element=where)
            continue
        why = _outside_card(layout, e.box)
        if why:
            raise LayoutError(f"box {_fmt(e.box)} {why}", element=where)
        if isinstance(e, TextElement | MicrotextElement) and e.size_mm > e.box.h + _EPS:
            raise LayoutError(
                f"text size {e.size_mm:.2f} mm does not fit the box height {e.box.h:.2f} mm",
                element=where,
            )
        if side == "back" and not isinstance(e, MrzElement) and e.box.overlaps(layout.mrz_zone):
            raise LayoutError(
                "enters the MRZ zone (Zone VII), which holds only the MRZ (ICAO Doc 9303-5, 3.2.1)",
                element=where,
            )
    fg = [e for e in elements if not e.background]
    for i, a in enumerate(fg):
        for b in fg[i + 1 :]:
            if a.box.overlaps(b.box) and b.id not in a.overlaps and a.id not in b.overlaps:
                raise LayoutError(
                    f"overlaps '{b.id}' ({_fmt(a.box)} vs {_fmt(b.box)}); "
                    "move one or list it in 'overlaps'",
                    element=f"{side}.{a.id}",
                )


def _check_mrz(layout: Layout, m: MrzElement) -> None:
    where = f"back.{m.id}"

    def fail(message: str) -> LayoutError:
        return LayoutError(message, element=where)

    if abs(m.pitch_mm - MRZ_PITCH_MM) > 0.02:
        raise fail(f"character pitch must be {MRZ_PITCH_MM} mm (ICAO Doc 9303-3, 4.4)")
    if not 3.7 <= m.line_pitch_mm <= 4.3:
        raise fail(f"line pitch {m.line_pitch_mm} mm is not about 4.0 mm (Doc 9303-5, Figure 6)")
    if abs(m.box.x - MRZ_LEFT_MARGIN_MM) > MRZ_LEFT_TOLERANCE_MM + _EPS:
        raise fail(
            f"first character starts {m.box.x:.2f} mm from the left edge; "
            "ICAO Doc 9303-5, 4.2.1.3 requires 5.0 +/- 1.0 mm"
        )
    if MRZ_CHARS * m.pitch_mm > m.box.w + _EPS:
        raise fail(f"box is narrower than 30 characters at {m.pitch_mm} mm")
    if m.block_height_mm > m.box.h + _EPS:
        raise fail(f"box is lower than the three lines ({m.block_height_mm:.2f} mm)")
    if m.block_height_mm > ERZ_HEIGHT_MM:
        raise fail("the three lines exceed the 17.0 mm effective reading zone (Doc 9303-3, 4.5)")
    if not m.box.within(layout.mrz_zone):
        raise fail(
            f"box {_fmt(m.box)} is not inside the MRZ zone, the bottom "
            f"{layout.mrz_zone_height_mm} mm of the back (ICAO Doc 9303-5, Figure 6)"
        )


def _fmt(box: Box) -> str:
    return f"[{box.x:g}, {box.y:g}, {box.w:g}, {box.h:g}]"


# --------------------------------------------------------------------------- loading


def builtin_layouts() -> tuple[str, ...]:
    """Names of the layouts shipped in ``printer/layouts``."""
    folder = resources.files("printer") / "layouts"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml")))


def load_layout(name_or_path: str | Path) -> Layout:
    """A shipped layout by name (``"hkid-2018"``) or a layout file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and str(name_or_path) in builtin_layouts():
        resource = resources.files("printer") / "layouts" / f"{name_or_path}.toml"
        return parse_layout(resource.read_text(encoding="utf-8"), source=f"{name_or_path}.toml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LayoutError(f"cannot read layout file {path}: {exc.strerror or exc}") from exc
    return parse_layout(text, source=str(path))
