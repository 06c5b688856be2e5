"""Rendering: real glyphs, static layers cached, per-card work confined to variable elements,
the security features present, proofs written where the CLI promises."""

from __future__ import annotations

import dataclasses
import subprocess
from datetime import date
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chip.mrz import build_td1
from personaliser.applications import Application
from personaliser.ccc import CCC
from personaliser.faces import card_face, english_name, hkic_symbols, proof_faces
from personaliser.synth import GIVEN, SURNAMES, synth_applications
from printer.errors import (
    ConsumableOut,
    DeviceFault,
    FontMissingError,
    LaserFault,
    PrinterError,
    PrintJam,
)
from printer.fonts import REGISTRY, FontSpec, covered_codepoints, load_font, missing_glyphs
from printer.layout import (
    GhostElement,
    GuillocheElement,
    ImageElement,
    Layout,
    MicrotextElement,
    load_layout,
)
from printer.model import CardFace
from printer.proof import write_proofs
from printer.render import render_back, render_card, render_front, static_layer, variable_regions
from printer.security import chip_serial_tail, guilloche

NAME_CHARACTERS = "".join(sorted({z for _, z in SURNAMES} | {z for _, z in GIVEN}))


@cache
def _faces() -> tuple[CardFace, ...]:
    return tuple(proof_faces(synth_applications(6, seed=21)))


def _face(**changes: object) -> CardFace:
    return dataclasses.replace(_faces()[0], **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- glyphs, no tofu


def _fc_charset(spec: FontSpec) -> set[int]:
    """Coverage as fontconfig reports it: an independent reading of the same cmap."""
    out = subprocess.run(
        ["fc-query", f"--index={spec.index}", "--format=%{charset}", spec.path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    covered: set[int] = set()
    for part in out.split():
        lo, _, hi = part.partition("-")
        covered.update(range(int(lo, 16), int(hi or lo, 16) + 1))
    return covered


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_cmap_reader_agrees_with_fontconfig(key: str) -> None:
    ours = {c for c in covered_codepoints(REGISTRY[key]) if c >= 0x20}
    assert ours == {c for c in _fc_charset(REGISTRY[key]) if c >= 0x20}


def test_every_name_character_has_a_real_glyph_in_the_cjk_font() -> None:
    """No tofu: each character of the synthetic name tables is in the cmap (ours and
    fontconfig's), and its rendered bitmap differs from the font's missing-glyph box."""
    spec = REGISTRY["cjk"]
    assert len(NAME_CHARACTERS) == 50
    assert missing_glyphs(spec, NAME_CHARACTERS) == ""
    fc = _fc_charset(spec)
    assert all(ord(c) in fc for c in NAME_CHARACTERS)
    font = load_font(spec, 64)
    notdef = np.asarray(font.getmask(chr(0x10FFFD)))  # a plane-16 private code: no glyph
    for c in NAME_CHARACTERS:
        bitmap = np.asarray(font.getmask(c))
        assert bitmap.size and bitmap.max() > 0, c
        assert bitmap.shape != notdef.shape or not np.array_equal(bitmap, notdef), c


def test_ocrb_covers_the_mrz_alphabet_and_not_chinese() -> None:
    spec = REGISTRY["ocrb"]
    assert missing_glyphs(spec, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<") == ""
    assert missing_glyphs(spec, "陳大文") == "陳大文"


def test_a_name_outside_the_font_is_refused_naming_the_package() -> None:
    face = _face(chinese_name="陳\U00030000")  # CJK Extension G: not in WenQuanYi Micro Hei
    with pytest.raises(FontMissingError) as info:
        render_front(face, load_layout("hkid-2018"))
    assert info.value.package == "fonts-wqy-microhei"
    assert info.value.font_key == "cjk"
    assert "\U00030000" not in str(info.value) and "陳" not in str(info.value)


def test_a_missing_font_file_names_the_debian_package(tmp_path: Path) -> None:
    spec = FontSpec("ocrb", str(tmp_path / "OCRB.otf"), "fonts-ocr-b")
    with pytest.raises(FontMissingError, match="install the Debian package fonts-ocr-b") as info:
        load_font(spec, 40)
    assert info.value.package == "fonts-ocr-b"
    with pytest.raises(FontMissingError):
        covered_codepoints(spec)


def test_printer_errors_form_one_tree() -> None:
    for cls in (PrintJam, LaserFault, ConsumableOut):
        assert issubclass(cls, DeviceFault)
    assert issubclass(DeviceFault, PrinterError)
    assert issubclass(FontMissingError, PrinterError)
    assert DeviceFault("jam", station="laser-1").station == "laser-1"


# --------------------------------------------------------------------------- geometry, caching


@pytest.mark.parametrize(("dpi", "shape"), [(300, (638, 1011)), (600, (1275, 2022))])
def test_faces_are_id1_at_the_requested_resolution(dpi: int, shape: tuple[int, int]) -> None:
    front, back = render_card(_face(), load_layout("hkid-2018"), dpi)
    assert front.shape == back.shape == shape
    assert front.dtype == back.dtype == np.uint8
    assert front[0, 0] == front[-1, -1] == 255  # the rounded corners stay blank


def test_static_layers_are_cached_and_read_only() -> None:
    layout = load_layout("hkid-compact")
    first = static_layer(layout, "front", 300)
    assert static_layer(load_layout("hkid-compact"), "front", 300) is first  # same digest
    assert not first.flags.writeable


@pytest.mark.parametrize("name", ["hkid-2018", "hkid-compact"])
@pytest.mark.parametrize("side", ["front", "back"])
def test_a_card_differs_from_the_static_layer_only_inside_variable_elements(
    name: str, side: str
) -> None:
    layout = load_layout(name)
    base = static_layer(layout, side, 300)  # type: ignore[arg-type]
    outside = np.ones(base.shape, bool)
    for x0, y0, x1, y1 in variable_regions(layout, side, 300):  # type: ignore[arg-type]
        outside[y0:y1, x0:x1] = False
    render = render_front if side == "front" else render_back
    for face in _faces():
        img = render(face, layout, 300)
        assert np.array_equal(img[outside], base[outside])
        assert not np.array_equal(img[~outside], base[~outside])


def test_rendering_is_deterministic() -> None:
    layout = load_layout("hkid-2018")
    a = render_card(_face(), layout, 600)
    b = render_card(_face(), layout, 600)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_zone_vii_holds_nothing_but_the_mrz() -> None:
    layout = load_layout("hkid-2018")
    back = render_back(_face(), layout, 300)
    x0, y0, x1, y1 = layout.mrz_zone.pixels(300)
    zone = back[y0:y1, x0:x1].copy()
    (mrz,) = [e for e in layout.back if e.type == "mrz"]
    mx0, my0, mx1, my1 = mrz.box.pixels(300)
    assert zone.min() == 0  # the characters are black
    zone[my0 - y0 : my1 - y0, mx0 - x0 : mx1 - x0] = 255
    corners = np.ones(zone.shape, bool)  # ignore the blank rounded corners
    assert (zone[corners] == 255).all()


# --------------------------------------------------------------------------- security features


def _box(layout: Layout, side: str, eid: str, dpi: int) -> tuple[slice, slice]:
    e = next(x for x in layout.side(side) if x.id == eid)  # type: ignore[arg-type]
    x0, y0, x1, y1 = e.box.pixels(dpi)
    return slice(y0, y1), slice(x0, x1)


def test_the_chip_tie_changes_with_the_chip_serial_and_nothing_else() -> None:
    """Same holder, another blank: only the microtext that carries the serial's tail changes."""
    layout = load_layout("hkid-2018")
    a = _face()
    b = _face(chip_serial=a.chip_serial[:-1] + ("0" if a.chip_serial[-1] != "0" else "1"))
    for render, side in ((render_front, "front"), (render_back, "back")):
        ia, ib = render(a, layout, 600), render(b, layout, 600)
        rows, cols = _box(layout, side, "micro_chip", 600)
        assert not np.array_equal(ia[rows, cols], ib[rows, cols])
        ia[rows, cols] = ib[rows, cols] = 0
        assert np.array_equal(ia, ib)


def test_chip_serial_tail_is_the_last_digits() -> None:
    assert chip_serial_tail("484B0011223344556677", 8) == "44556677"
    with pytest.raises(ValueError, match="positive"):
        chip_serial_tail("484B", 0)


def test_microtext_is_micro() -> None:
    """Microtext is at most 0.5 mm high: legible under a loupe, a blur to a copier."""
    for name in ("hkid-2018", "hkid-compact"):
        layout = load_layout(name)
        micro = [e for e in (*layout.front, *layout.back) if isinstance(e, MicrotextElement)]
        assert micro and all(e.size_mm <= 0.5 for e in micro)
        assert any("{chip_serial_tail}" in e.template for e in micro)


def test_the_ghost_is_a_screened_light_copy_of_the_portrait() -> None:
    layout = load_layout("hkid-2018")
    face = _face()
    ghost = next(e for e in layout.front if isinstance(e, GhostElement))
    portrait = next(e for e in layout.front if isinstance(e, ImageElement))
    front = render_front(face, layout, 600)
    base = static_layer(layout, "front", 600)
    rows, cols = _box(layout, "front", "ghost", 600)
    g, blank = front[rows, cols], base[rows, cols] == 255
    assert set(np.unique(g[blank])) <= {ghost.ink_dark, 255}  # two levels: screened
    # Darker where the portrait is darker: the ghost follows the face, reduced.
    prow, pcol = _box(layout, "front", "portrait", 600)
    small = np.asarray(
        Image.fromarray(front[prow, pcol]).resize((g.shape[1], g.shape[0]), Image.Resampling.BOX)
    )
    dark = small < np.median(small)
    coverage = g < 255
    assert coverage[dark].mean() > coverage[~dark].mean() + 0.1
    assert portrait.box.w > ghost.box.w  # reduced


def test_the_portrait_is_cropped_not_stretched() -> None:
    """A wide test image keeps its proportions: a circle stays a circle."""
    img = Image.new("L", (600, 300), 255)
    from PIL import ImageDraw

    ImageDraw.Draw(img).ellipse((225, 75, 375, 225), fill=0)
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    layout = load_layout("hkid-2018")
    front = render_front(_face(portrait_jpeg=buf.getvalue()), layout, 300)
    rows, cols = _box(layout, "front", "portrait", 300)
    dark = front[rows, cols] < 100
    ys, xs = np.nonzero(dark)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert abs(height - width) <= 2


@pytest.mark.parametrize("name", ["hkid-2018", "hkid-compact"])
def test_guilloches_are_fine_light_and_cover_their_box(name: str) -> None:
    layout = load_layout(name)
    patterns = [e for e in (*layout.front, *layout.back) if isinstance(e, GuillocheElement)]
    assert {
        e.pattern for e in load_layout("hkid-2018").front if isinstance(e, GuillocheElement)
    } == {
        "waves",
        "rosette",
    }
    for e in patterns:
        tone = guilloche(e, 300)
        x0, y0, x1, y1 = e.box.pixels(300)
        assert tone.shape == (y1 - y0, x1 - x0)
        assert tone.min() >= e.ink - 1  # light: never darker than its ink
        inked = tone < 255
        assert 0.02 < inked.mean() < 0.7, e.id
        h, w = inked.shape  # spread over the box, not a blob in one place
        assert all(inked[i * h // 2 : (i + 1) * h // 2, j * w // 2 : (j + 1) * w // 2].any()
                   for i in range(2) for j in range(2))  # fmt: skip
        assert np.array_equal(tone, guilloche(e, 300))  # from parameters only: reproducible


# --------------------------------------------------------------------------- text fitting


def test_a_long_name_shrinks_to_its_box() -> None:
    layout = load_layout("hkid-2018")
    face = _face(english_name="CHEUNG-WONG, Wing Keung Kwok")
    front = render_front(face, layout, 300)
    rows, cols = _box(layout, "front", "english_name", 300)
    base = static_layer(layout, "front", 300)
    changed = front != base
    changed[rows, cols] = False
    for eid in ("chinese_name", "ccc", "portrait", "ghost", "date_of_birth", "sex", "symbols",
                "first_registration", "date_of_issue", "card_number", "micro_chip"):  # fmt: skip
        r, c = _box(layout, "front", eid, 300)
        changed[r, c] = False
    assert not changed.any()  # nothing spilled outside the name's box


def test_a_name_that_cannot_fit_is_an_error_not_a_truncation() -> None:
    face = _face(english_name="X" * 60)
    with pytest.raises(PrinterError, match=r"front\.english_name"):
        render_front(face, load_layout("hkid-2018"))


# --------------------------------------------------------------------------- faces and proofs


def _app(**changes: object) -> Application:
    app = next(synth_applications(1, seed=5))
    return app.model_copy(update=changes)


def test_card_face_carries_the_application_and_the_chip_mrz() -> None:
    app = _app(
        surname="CHAN", given_names="TAI MAN", chinese_name="陳大文", place_of_birth="HONG KONG"
    )
    face = card_face(app, chip_serial="484b0011223344556677", card_id="C484B0011223344556677")
    assert face.english_name == "CHAN, Tai Man"
    assert face.chinese_commercial_code == "7115 1129 2429"
    assert face.mrz_lines == build_td1(app.to_holder()).lines
    assert face.chip_serial == "484B0011223344556677"
    assert face.card_number == app.hkid
    assert face.symbols.endswith("AZ")
    assert repr(face) == "CardFace(card_id='C484B0011223344556677')"
    assert "陳" not in repr(face) and "CHAN" not in str(face)


@pytest.mark.parametrize(
    ("born", "place", "symbols"),
    [
        (date(1990, 1, 1), "HONG KONG", "***AZ"),
        (date(2012, 1, 1), "KOWLOON", "*AZ"),
        (date(2018, 1, 1), "MACAO", "AW"),
        (date(1960, 5, 5), "GUANGDONG", "***AX"),
        (date(1960, 5, 5), "LONDON", "***AO"),
    ],
)
def test_hkic_symbols(born: date, place: str, symbols: str) -> None:
    assert hkic_symbols(_app(date_of_birth=born, place_of_birth=place)) == symbols


def test_english_name_without_given_names() -> None:
    assert english_name(_app(surname="Ho", given_names="")) == "HO"


def test_every_synthetic_name_has_a_commercial_code() -> None:
    for face in proof_faces(synth_applications(40, seed=9)):
        codes = face.chinese_commercial_code.split()
        assert [CCC[c] for c in face.chinese_name] == codes


def test_card_face_refuses_a_bad_mrz() -> None:
    with pytest.raises(ValueError, match="mrz_lines"):
        _face(mrz_lines=("SHORT", "X" * 30, "Y" * 30))
    with pytest.raises(ValueError, match="card_id"):
        _face(card_id="../../etc")


def test_proofs_are_written_per_card(tmp_path: Path) -> None:
    faces = list(_faces()[:3])
    files = write_proofs(faces, tmp_path, load_layout("hkid-compact"))
    assert [f.card_id for f in files] == [f.card_id for f in faces]
    for face in faces:
        for side in ("front", "back"):
            path = tmp_path / "cards" / face.card_id / f"{side}.png"
            with Image.open(path) as img:
                assert img.mode == "L" and img.size == (1011, 638)
                assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert not list(tmp_path.rglob("*.tmp"))


def test_application_file_to_proofs(tmp_path: Path) -> None:
    """What ``perso print proof --applications FILE --out DIR`` does."""
    from personaliser.faces import write_application_proofs

    apps = list(synth_applications(2, seed=13))
    source = tmp_path / "apps.jsonl"
    source.write_text(
        apps[0].to_json_line()
        + "\n"
        + '{"application_id": "BAD"}\n'
        + apps[1].to_json_line()
        + "\n",
        encoding="utf-8",
    )
    files, rejected = write_application_proofs(source, tmp_path / "out", layout="hkid-compact")
    assert len(files) == 2 and rejected and {r.line for r in rejected} == {2}
    for f in files:
        assert f.front == tmp_path / "out" / "cards" / f.card_id / "front.png"
        assert f.front.is_file() and f.back.is_file()
    again, _ = write_application_proofs(source, tmp_path / "again", layout="hkid-compact")
    assert [f.card_id for f in again] == [f.card_id for f in files]  # stable proof serials
