"""The MRZ printed on back.png is machine-readable: Tesseract reads it back, all 90 characters.

Reading, as a TD1 reader would (ICAO Doc 9303-5, 4.2): the MRZ sits on a fixed grid (2.54 mm
pitch, Doc 9303-3 4.4; line positions from the layout), so every character cell is cropped and
recognised on its own (``--psm 10``) with the character classes its field allows (Doc 9303-5,
4.2.2: dates and check digits are numeric, codes and names alphabetic, document number and
optional data alphanumeric; ``<`` everywhere).

Why per cell: Tesseract's stock English LSTM reads whole OCR-B lines well except for runs of
``<``, which it shortens or turns into ``K`` (measured on these proofs: no line ending in fillers
came back whole, with or without upscaling, psm 6/7/13).  Cell by cell it never misses a filler.
Each cell is cropped to its ink, so a glyph looks the same wherever it sits on the card, then
given a 10 px white margin, upscaled 1.25x (Lanczos) and thinned with a 3x3 max filter: with
these settings the engine reads every OCR-B glyph of the MRZ alphabet at 300 dpi in every field
class, ``O`` against ``0`` included (measured over the whole alphabet; 1x or 2x, other margins,
or no thinning each confuse at least one of O/0, 7/4, 3/B, P, S).  A cell left empty is read
again without thinning.

No correction from check digits: what is compared is what was read.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from chip.mrz import build_td1, parse_td1
from personaliser.faces import proof_faces
from personaliser.synth import synth_applications
from printer.layout import Layout, MrzElement, load_layout
from printer.model import CardFace
from printer.proof import write_proofs

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ<"
DIGITS = "0123456789<"
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<"
# ICAO Doc 9303-5, 4.2.2.1-4.2.2.3: the class of each of the 90 positions.
CLASSES = (
    [LETTERS] * 5 + [ALNUM] * 9 + [DIGITS] + [ALNUM] * 15  # code, state, number, check, optional
    + [DIGITS] * 7 + [LETTERS] + [DIGITS] * 7 + [LETTERS] * 3 + [ALNUM] * 11 + [DIGITS]
    + [LETTERS] * 30
)  # fmt: skip
DPI = 300
PRIMARY = (10, 1.25, True)  # margin px, upscale, thin strokes
SECONDARY = (10, 1.0, False)
INK = 200  # a pixel darker than this is ink (the MRZ zone is cleared to 255)

pytestmark = pytest.mark.slow


def _tesseract() -> str:
    path = shutil.which("tesseract")
    if path is None:
        pytest.fail("tesseract is not installed (Debian packages tesseract-ocr tesseract-ocr-eng)")
    return path


def _cells(back: np.ndarray, mrz: MrzElement) -> list[np.ndarray]:
    """The 90 character cells of the MRZ, from the layout's grid."""
    s = DPI / 25.4
    out = []
    for i in range(3):
        top = mrz.box.y + i * mrz.line_pitch_mm
        y0, y1 = round((top - 0.2) * s), round((top + mrz.size_mm + 0.2) * s)
        for j in range(30):
            x0 = round((mrz.box.x + j * mrz.pitch_mm) * s)
            x1 = round((mrz.box.x + (j + 1) * mrz.pitch_mm) * s)
            out.append(back[y0:y1, x0:x1])
    return out


def _prepare(cell: np.ndarray, margin: int, scale: float, thin: bool) -> Image.Image:
    ys, xs = np.nonzero(cell < INK)
    cell = cell[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = cell.shape
    canvas = np.full((h + 2 * margin, w + 2 * margin), 255, np.uint8)
    canvas[margin : margin + h, margin : margin + w] = cell
    img = Image.fromarray(canvas)
    img = img.resize(
        (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
    )
    return img.filter(ImageFilter.MaxFilter(3)) if thin else img


def _recognise(images: list[Image.Image], whitelist: str, work: Path) -> list[str]:
    """One Tesseract run over many single-character images (a list file, one page each)."""
    if not images:
        return []
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(images):
        path = work / f"{k:05d}.png"
        img.save(path)
        paths.append(str(path))
    listing = work / "images.txt"
    listing.write_text("\n".join(paths) + "\n")
    done = subprocess.run(
        [_tesseract(), str(listing), "stdout", "--psm", "10", "-c",
         f"tessedit_char_whitelist={whitelist}"],
        capture_output=True, check=True, timeout=600,
    )  # fmt: skip
    pages = done.stdout.decode("ascii", "replace").split("\f")
    return ["".join(p.split()) for p in pages[: len(images)]]


def read_mrz(backs: list[np.ndarray], mrz: MrzElement, work: Path) -> list[str]:
    """The 90 characters read from each back; ``?`` where a cell gave no single character."""
    cells = [_cells(b, mrz) for b in backs]
    result = [["?"] * 90 for _ in backs]
    for attempt, (margin, scale, thin) in enumerate((PRIMARY, SECONDARY)):
        for whitelist in (LETTERS, DIGITS, ALNUM):
            todo = [
                (n, k)
                for n in range(len(backs))
                for k in range(90)
                if CLASSES[k] == whitelist and result[n][k] == "?" and (cells[n][k] < INK).any()
            ]
            # Tesseract is deterministic: identical cell images (the same glyph printed twice)
            # are recognised once and the answer shared.
            unique: dict[bytes, int] = {}
            images: list[Image.Image] = []
            slots = []
            for n, k in todo:
                img = _prepare(cells[n][k], margin, scale, thin)
                key = img.tobytes() + repr(img.size).encode()
                if key not in unique:
                    unique[key] = len(images)
                    images.append(img)
                slots.append(unique[key])
            texts = _recognise(images, whitelist, work / f"{attempt}-{len(whitelist)}")
            for (n, k), slot in zip(todo, slots, strict=True):
                if len(texts[slot]) == 1:
                    result[n][k] = texts[slot]
    return ["".join(r) for r in result]


def _faces(count: int, seed: int) -> list[CardFace]:
    return list(proof_faces(synth_applications(count, seed=seed)))


def _backs_from_proofs(faces: list[CardFace], layout: Layout, out: Path) -> list[np.ndarray]:
    """Write the proofs as the CLI does, then read the PNG files back from disk."""
    files = write_proofs(faces, out, layout, dpi=DPI)
    backs = []
    for f in files:
        with Image.open(f.back) as img:
            assert img.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)  # pHYs is per metre
            backs.append(np.asarray(img.convert("L")))
    return backs


def _mrz_element(layout: Layout) -> MrzElement:
    (mrz,) = [e for e in layout.back if isinstance(e, MrzElement)]
    return mrz


@pytest.mark.parametrize(
    ("layout_name", "count", "seed"), [("hkid-2018", 40, 11), ("hkid-compact", 12, 5)]
)
def test_printed_mrz_reads_back_exactly(
    layout_name: str, count: int, seed: int, tmp_path: Path
) -> None:
    layout = load_layout(layout_name)
    faces = _faces(count, seed)
    apps = list(synth_applications(count, seed=seed))
    backs = _backs_from_proofs(faces, layout, tmp_path / "proofs")
    read = read_mrz(backs, _mrz_element(layout), tmp_path / "ocr")
    for app, face, text in zip(apps, faces, read, strict=True):
        # The comparison is against the application's MRZ as the chip stage builds it (DG1),
        # all 90 characters including the four check digits.
        expected = build_td1(app.to_holder()).text
        assert text == expected, f"{face.card_id}: OCR differs at {_diff(text, expected)}"
        parse_td1(text)  # and the characters read satisfy every check digit


def _diff(got: str, want: str) -> list[int]:
    return [i + 1 for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]


def test_reader_catches_a_wrong_character(tmp_path: Path) -> None:
    """A misprint (one character changed on the card) is seen, not read past."""
    layout = load_layout("hkid-2018")
    (face,) = _faces(1, 2)
    upper, middle, lower = face.mrz_lines
    wrong = upper[:5] + ("Q" if upper[5] != "Q" else "R") + upper[6:]
    bad = CardFace(**{**_fields(face), "mrz_lines": (wrong, middle, lower)})
    read = read_mrz(
        _backs_from_proofs([bad], layout, tmp_path / "p"), _mrz_element(layout), tmp_path / "o"
    )
    assert read[0] != "".join(face.mrz_lines)
    assert read[0][5] == wrong[5]


def test_reader_catches_a_missing_character(tmp_path: Path) -> None:
    """A character lost in printing (its cell blank) cannot come back as the expected one."""
    layout = load_layout("hkid-2018")
    (face,) = _faces(1, 4)
    back = _backs_from_proofs([face], layout, tmp_path / "p")[0].copy()
    mrz = _mrz_element(layout)
    s = DPI / 25.4
    x0 = round((mrz.box.x + 2 * mrz.pitch_mm) * s)
    top = mrz.box.y + mrz.line_pitch_mm  # middle line, third character (a date digit)
    back[round(top * s) : round((top + mrz.size_mm) * s), x0 : x0 + round(mrz.pitch_mm * s)] = 255
    read = read_mrz([back], mrz, tmp_path / "o")[0]
    assert read[32] != face.mrz_lines[1][2]


def _fields(face: CardFace) -> dict[str, object]:
    return {name: getattr(face, name) for name in face.__dataclass_fields__}
