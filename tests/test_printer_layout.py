"""Layouts are data: the shipped files load, every rule refuses what breaks it, messages say where.

Geometry is re-checked here with independent arithmetic (not the validator's helpers), so a bug in
the validator cannot make its own test pass.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from printer.errors import LayoutError
from printer.layout import (
    Box,
    Layout,
    MrzElement,
    TextElement,
    builtin_layouts,
    load_layout,
    parse_layout,
)

LAYOUTS = Path(__file__).resolve().parent.parent / "printer" / "layouts"
CARD_W, CARD_H, RADIUS = 85.60, 53.98, 3.18  # ISO/IEC 7810 ID-1


def _source(name: str = "hkid-2018") -> str:
    return (LAYOUTS / f"{name}.toml").read_text(encoding="utf-8")


def _replace_box(text: str, element_id: str, box: str, side: str = "") -> str:
    """``text`` with the ``box`` of element ``element_id`` (on ``side``, if given) replaced."""
    blocks = text.split("\n[[")
    for i, block in enumerate(blocks):
        if f'\nid = "{element_id}"\n' in block and block.startswith(side):
            blocks[i] = re.sub(r"box = \[[^\]]*\]", f"box = {box}", block, count=1)
            return "\n[[".join(blocks)
    raise AssertionError(f"no element {element_id!r}")


def _inside_rounded_card(b: Box) -> bool:
    if b.x < 0 or b.y < 0 or b.x + b.w > CARD_W or b.y + b.h > CARD_H:
        return False
    for px, py in ((b.x, b.y), (b.x + b.w, b.y), (b.x, b.y + b.h), (b.x + b.w, b.y + b.h)):
        cx = min(max(px, RADIUS), CARD_W - RADIUS)
        cy = min(max(py, RADIUS), CARD_H - RADIUS)
        if math.hypot(px - cx, py - cy) > RADIUS + 1e-9:
            return False
    return True


# --------------------------------------------------------------------------- shipped layouts


def test_two_layouts_ship_and_load() -> None:
    assert set(builtin_layouts()) >= {"hkid-2018", "hkid-compact"}
    for name in builtin_layouts():
        layout = load_layout(name)
        assert layout.name == name
        assert layout.version == 1
        assert (layout.width_mm, layout.height_mm) == (CARD_W, CARD_H)


def test_loading_by_path_equals_loading_by_name() -> None:
    assert load_layout(LAYOUTS / "hkid-2018.toml") == load_layout("hkid-2018")
    assert load_layout("hkid-2018") != load_layout("hkid-compact")


def test_the_second_layout_is_a_different_arrangement_of_the_same_fields() -> None:
    """Data, not code: same fields, other places, no code path per layout."""
    a, b = load_layout("hkid-2018"), load_layout("hkid-compact")

    def fields(layout: Layout) -> set[str]:
        return {e.field for e in layout.front if isinstance(e, TextElement) and e.field}

    assert fields(a) == fields(b)
    portrait = {lay.name: next(e.box for e in lay.front if e.type == "image") for lay in (a, b)}
    assert portrait["hkid-2018"].x > CARD_W / 2 > portrait["hkid-compact"].x  # right vs left


@pytest.mark.parametrize("name", ["hkid-2018", "hkid-compact"])
def test_every_element_of_a_shipped_layout_is_inside_the_card(name: str) -> None:
    layout = load_layout(name)
    for e in (*layout.front, *layout.back):
        if e.type == "guilloche":  # background, clipped to the outline when rendered
            assert e.box.x >= 0 and e.box.y >= 0
            assert e.box.right <= CARD_W + 1e-9 and e.box.bottom <= CARD_H + 1e-9
        else:
            assert _inside_rounded_card(e.box), e.id


@pytest.mark.parametrize("name", ["hkid-2018", "hkid-compact"])
def test_the_mrz_of_a_shipped_layout_is_in_zone_vii(name: str) -> None:
    """ICAO Doc 9303-5: back, 5.0 +/- 1.0 mm from the left edge (4.2.1.3), inside the 23.3 mm
    zone along the bottom (Figure 6), 30 characters at 2.54 mm (Doc 9303-3, 4.4)."""
    layout = load_layout(name)
    assert not [e for e in layout.front if e.type == "mrz"]
    (mrz,) = [e for e in layout.back if isinstance(e, MrzElement)]
    assert 4.0 <= mrz.box.x <= 6.0
    assert mrz.box.y >= CARD_H - 23.3 and mrz.box.y + mrz.box.h <= CARD_H
    assert mrz.pitch_mm == pytest.approx(2.54)
    assert mrz.box.x + 30 * mrz.pitch_mm <= CARD_W - 1.0
    lines_height = 2 * mrz.line_pitch_mm + mrz.size_mm
    assert lines_height <= 17.0  # effective reading zone, Doc 9303-3 4.5
    for e in layout.back:
        if e.type not in ("mrz", "guilloche"):
            assert e.box.y + e.box.h <= CARD_H - 23.3, f"{e.id} enters Zone VII"


@pytest.mark.parametrize("name", ["hkid-2018", "hkid-compact"])
def test_no_two_printed_elements_overlap(name: str) -> None:
    layout = load_layout(name)
    for side in (layout.front, layout.back):
        printed = [e for e in side if e.type != "guilloche"]
        for i, a in enumerate(printed):
            for b in printed[i + 1 :]:
                apart = (
                    a.box.x + a.box.w <= b.box.x
                    or b.box.x + b.box.w <= a.box.x
                    or a.box.y + a.box.h <= b.box.y
                    or b.box.y + b.box.h <= a.box.y
                )
                assert apart, (a.id, b.id)


# --------------------------------------------------------------------------- refusals


def _refused(text: str) -> str:
    with pytest.raises(LayoutError) as info:
        parse_layout(text, source="test.toml")
    return str(info.value)


def test_an_element_outside_the_card_is_refused_with_its_name() -> None:
    message = _refused(_replace_box(_source(), "english_name", "[40.0, 17.4, 50.0, 3.2]"))
    assert "element 'front.english_name'" in message
    assert "4.40 mm beyond the right edge" in message


def test_an_element_off_the_bottom_is_refused() -> None:
    message = _refused(_replace_box(_source(), "card_number", "[55.0, 51.0, 20.0, 4.6]"))
    assert "front.card_number" in message and "bottom edge" in message


def test_an_element_in_a_rounded_corner_is_refused() -> None:
    message = _refused(_replace_box(_source(), "title_zh", "[0.3, 0.3, 40.0, 4.2]"))
    assert "front.title_zh" in message and "rounded corner" in message


def test_overlapping_elements_are_refused_unless_declared() -> None:
    moved = _replace_box(_source(), "ccc", "[4.5, 17.4, 36.0, 2.8]")  # onto english_name
    message = _refused(moved)
    assert "overlaps" in message and "english_name" in message and "ccc" in message
    declared = moved.replace('id = "ccc"\n', 'id = "ccc"\noverlaps = ["english_name"]\n')
    parse_layout(declared)


def test_overlaps_must_name_a_real_element() -> None:
    text = _source().replace('id = "ccc"\n', 'id = "ccc"\noverlaps = ["nothing"]\n')
    assert "unknown element 'nothing'" in _refused(text)


def test_the_mrz_must_stay_in_its_zone() -> None:
    message = _refused(_replace_box(_source(), "mrz", "[5.0, 28.0, 76.3, 11.6]"))
    assert "back.mrz" in message and "MRZ zone" in message


def test_the_mrz_left_margin_is_5_mm_plus_minus_1() -> None:
    message = _refused(_replace_box(_source(), "mrz", "[6.5, 40.0, 76.3, 11.6]"))
    assert "back.mrz" in message and "5.0 +/- 1.0 mm" in message


def test_the_mrz_pitch_is_2_54_mm() -> None:
    text = _source().replace("pitch_mm = 2.54 ", "pitch_mm = 2.4 ")
    assert "2.54 mm" in _refused(text)


def test_the_mrz_belongs_on_the_back() -> None:
    extra = (
        '\n[[front]]\nid = "mrz_front"\ntype = "mrz"\nbox = [5.0, 40.5, 76.3, 11.6]\n'
        'overlaps = ["micro_chip", "card_number"]\n'
    )
    text = _source().replace(
        "\n# ------------------------------------------------------------------ back", extra, 1
    )
    assert "belongs on the back" in _refused(text)


def test_a_back_without_mrz_is_refused() -> None:
    text = _source()
    text = text[: text.index('[[back]]\nid = "mrz"')]
    assert "exactly one 'mrz'" in _refused(text)


def test_nothing_else_enters_zone_vii() -> None:
    message = _refused(_replace_box(_source(), "micro_chip", "[4.5, 35.0, 77.0, 0.6]", "back"))
    assert "back.micro_chip" in message and "Zone VII" in message


def test_the_zone_height_is_the_standard_one() -> None:
    text = _source().replace("mrz_zone_height_mm = 23.3", "mrz_zone_height_mm = 30.0")
    assert "23.3 +/- 1.0" in _refused(text)


def test_the_card_must_be_id1() -> None:
    assert "ID-1" in _refused(_source().replace("width_mm = 85.60", "width_mm = 86.60"))


def test_text_larger_than_its_box_is_refused() -> None:
    message = _refused(_replace_box(_source(), "chinese_name", "[4.5, 12.0, 40.0, 3.0]"))
    assert "front.chinese_name" in message and "does not fit" in message


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (('format = "perso-card-layout"', 'format = "something-else"'), "'format'"),
        (("version = 1\n", "version = 2\n"), "version 2 is not supported"),
        (('type = "ghost"', 'type = "hologram"'), "unknown type 'hologram'"),
        (('font = "ocrb"\nsize_mm = 2.0', 'font = "comic"\nsize_mm = 2.0'), "unknown font key"),
        (('field = "english_name"', 'field = "nickname"'), "unknown field 'nickname'"),
        (
            ("size_mm = 2.6\nbox = [4.5, 17.4", "size_mm = 2.6\nsize_pt = 7\nbox = [4.5, 17.4"),
            "exactly one of 'size_mm'",
        ),
        (('pattern = "waves"', 'pattern = "zigzag"'), "'pattern'"),
        (("ink_dark = 120", "ink_dark = 250"), "'ink_dark'"),
        (
            ('template = "HKID {chip_serial_tail} "', 'template = "HKID {pin} "'),
            "unknown field(s) ['pin']",
        ),
        (('align = "right"', 'align = "justify"'), "'align'"),
        (('id = "sex"\n', 'id = "sex"\ncolour = "red"\n'), "unknown key(s): colour"),
        (('id = "sex"\n', 'id = "date_of_birth"\n'), "duplicate element id"),
        (("box = [28.0, 26.5, 10.0, 3.2]", "box = [28.0, 26.5, 0.0, 3.2]"), "greater than zero"),
        (("box = [28.0, 26.5, 10.0, 3.2]", "box = [28.0, 26.5, 10.0]"), "[x, y, width, height]"),
        (("[card]", "[card_]"), "missing [card]"),
        (("lines = 34", "lines = 34.5"), "integer"),
    ],
)
def test_malformed_layouts_are_refused_with_a_reason(edit: tuple[str, str], needle: str) -> None:
    old, new = edit
    text = _source()
    assert old in text, old
    assert needle in _refused(text.replace(old, new, 1))


def test_invalid_toml_is_a_layout_error() -> None:
    assert "not valid TOML" in _refused("format = [")


def test_a_missing_file_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="cannot read layout file"):
        load_layout(tmp_path / "absent.toml")


# --------------------------------------------------------------------------- properties

_MINIMAL = """
format = "perso-card-layout"
version = 1
name = "probe"
[card]
width_mm = 85.60
height_mm = 53.98
[[front]]
id = "anchor"
type = "text"
text = "A"
font = "cjk"
size_mm = 2.0
box = [30.0, 20.0, 10.0, 3.0]
[[front]]
id = "probe"
type = "text"
text = "B"
font = "cjk"
size_mm = 1.0
box = [{x}, {y}, {w}, {h}]
[[back]]
id = "mrz"
type = "mrz"
box = [5.0, 40.0, 76.3, 11.6]
"""

coord = st.floats(min_value=-5.0, max_value=90.0, allow_nan=False).map(lambda v: round(v, 2))
size = st.floats(min_value=1.0, max_value=40.0, allow_nan=False).map(lambda v: round(v, 2))


@given(x=coord, y=coord, w=size, h=size)
def test_the_validator_accepts_exactly_the_boxes_that_fit(
    x: float, y: float, w: float, h: float
) -> None:
    probe = Box(x, y, w, h)
    anchor_apart = x + w <= 30.0 or x >= 40.0 or y + h <= 20.0 or y >= 23.0
    expected = _inside_rounded_card(probe) and anchor_apart
    text = _MINIMAL.format(x=x, y=y, w=w, h=h)
    if expected:
        parse_layout(text)
    else:
        with pytest.raises(LayoutError, match=r"front\.(probe|anchor)"):
            parse_layout(text)


@given(
    a=st.tuples(coord, coord, size, size).map(lambda t: Box(*t)),
    b=st.tuples(coord, coord, size, size).map(lambda t: Box(*t)),
)
def test_box_overlap_is_symmetric_and_matches_interval_arithmetic(a: Box, b: Box) -> None:
    expected = not (a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y)
    assert a.overlaps(b) == b.overlaps(a) == expected


def test_pixel_boxes_scale_with_resolution() -> None:
    box = Box(25.4, 12.7, 25.4, 2.54)
    assert box.pixels(300) == (300, 150, 600, 180)
    assert box.pixels(600) == (600, 300, 1200, 360)
