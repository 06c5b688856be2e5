"""Font registry: a key per typeface, the Debian file that provides it, and glyph coverage.

Card faces use only fonts from Debian packages, so a production host gets the same glyphs as a
developer's machine.  A missing font or a missing glyph is an error naming the package
(:class:`printer.errors.FontMissingError`): FreeType would otherwise draw ``.notdef`` boxes and
Pillow would silently fall back to its bitmap font.

Coverage is decided from the font's own ``cmap`` table (OpenType spec, "cmap — Character to Glyph
Index Mapping Table", formats 4 and 12), read here with :mod:`struct` so that the check does not
depend on how a rasteriser renders ``.notdef``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from printer.errors import FontMissingError, LayoutError

__all__ = [
    "REGISTRY",
    "FontSpec",
    "covered_codepoints",
    "font_spec",
    "load_font",
    "missing_glyphs",
    "require_glyphs",
]


@dataclass(frozen=True, slots=True)
class FontSpec:
    """One typeface: where Debian installs it and which package does."""

    key: str
    path: str
    package: str
    index: int = 0  # face inside a TrueType collection (.ttc)

    def __repr__(self) -> str:
        return f"FontSpec({self.key!r}, package={self.package!r})"


REGISTRY: dict[str, FontSpec] = {
    # ICAO Doc 9303-3, 4.4: the MRZ is printed in OCR-B (ISO 1073-2) at 10 characters per inch.
    "ocrb": FontSpec("ocrb", "/usr/share/fonts/opentype/ocr-b/OCRB.otf", "fonts-ocr-b"),
    # Traditional Chinese names and captions; the face also carries Latin and digits.
    "cjk": FontSpec("cjk", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "fonts-wqy-microhei"),
}


def font_spec(key: str) -> FontSpec:
    """The registered font ``key``; an unknown key is a layout error."""
    spec = REGISTRY.get(key)
    if spec is None:
        known = ", ".join(sorted(REGISTRY))
        raise LayoutError(f"unknown font key {key!r} (known: {known})")
    return spec


def _missing(spec: FontSpec, why: str) -> FontMissingError:
    return FontMissingError(
        f"font {spec.key!r} {why}: install the Debian package {spec.package} "
        f"(expected {spec.path})",
        font_key=spec.key,
        package=spec.package,
        path=spec.path,
    )


@lru_cache(maxsize=64)
def load_font(spec: FontSpec, size_px: int) -> ImageFont.FreeTypeFont:
    """The FreeType face of ``spec`` at ``size_px`` pixels per em (cached)."""
    if size_px < 1:
        raise ValueError("font size must be at least one pixel")
    if not Path(spec.path).is_file():
        raise _missing(spec, "is not installed")
    try:
        return ImageFont.truetype(spec.path, size_px, index=spec.index)
    except OSError as exc:
        raise _missing(spec, "cannot be read") from exc


def _table(data: bytes, base: int, tag: bytes) -> tuple[int, int]:
    """Offset and length of table ``tag`` in the sfnt whose directory starts at ``base``."""
    (num_tables,) = struct.unpack_from(">H", data, base + 4)
    for i in range(num_tables):
        rec_tag, _checksum, offset, length = struct.unpack_from(">4sIII", data, base + 12 + 16 * i)
        if rec_tag == tag:
            return offset, length
    raise ValueError(f"no {tag.decode()} table")


def _format4(data: bytes, sub: int) -> set[int]:
    """cmap format 4 (segment mapping to delta values): code points with a glyph other than 0."""
    (seg_x2,) = struct.unpack_from(">H", data, sub + 6)
    segs = seg_x2 // 2
    ends = struct.unpack_from(f">{segs}H", data, sub + 14)
    starts = struct.unpack_from(f">{segs}H", data, sub + 16 + seg_x2)
    deltas = struct.unpack_from(f">{segs}h", data, sub + 16 + 2 * seg_x2)
    range_base = sub + 16 + 3 * seg_x2
    range_offsets = struct.unpack_from(f">{segs}H", data, range_base)
    out: set[int] = set()
    for i in range(segs):
        start, end, delta, ro = starts[i], ends[i], deltas[i], range_offsets[i]
        if start == 0xFFFF:
            continue
        for c in range(start, end + 1):
            if ro == 0:
                glyph = (c + delta) & 0xFFFF
            else:
                # idRangeOffset is relative to its own position in the idRangeOffset array.
                addr = range_base + 2 * i + ro + 2 * (c - start)
                (glyph,) = struct.unpack_from(">H", data, addr)
                if glyph:
                    glyph = (glyph + delta) & 0xFFFF
            if glyph:
                out.add(c)
    return out


def _format12(data: bytes, sub: int) -> set[int]:
    """cmap format 12 (segmented coverage): groups of consecutive code points."""
    (n_groups,) = struct.unpack_from(">I", data, sub + 12)
    out: set[int] = set()
    for i in range(n_groups):
        start, end, first_glyph = struct.unpack_from(">III", data, sub + 16 + 12 * i)
        out.update(range(start, end + 1) if first_glyph else range(start + 1, end + 1))
    return out


# Preferred Unicode subtables: full repertoire first, then BMP (OpenType cmap, "Encoding records").
_PREFERENCE = ((3, 10, 12), (0, 4, 12), (0, 6, 12), (3, 1, 4), (0, 3, 4))


@lru_cache(maxsize=8)
def covered_codepoints(spec: FontSpec) -> frozenset[int]:
    """Every code point the font maps to a real glyph (not ``.notdef``)."""
    try:
        data = Path(spec.path).read_bytes()
    except OSError as exc:
        raise _missing(spec, "is not installed") from exc
    base = 0
    if data[:4] == b"ttcf":
        (n_fonts,) = struct.unpack_from(">I", data, 8)
        if not 0 <= spec.index < n_fonts:
            raise _missing(spec, f"has no face {spec.index}")
        (base,) = struct.unpack_from(">I", data, 12 + 4 * spec.index)
    try:
        cmap, _length = _table(data, base, b"cmap")
        (n_sub,) = struct.unpack_from(">H", data, cmap + 2)
        subtables: dict[tuple[int, int, int], int] = {}
        for i in range(n_sub):
            platform, encoding, offset = struct.unpack_from(">HHI", data, cmap + 4 + 8 * i)
            (fmt,) = struct.unpack_from(">H", data, cmap + offset)
            subtables[(platform, encoding, fmt)] = cmap + offset
        for key in _PREFERENCE:
            if key in subtables:
                parse = _format12 if key[2] == 12 else _format4
                return frozenset(parse(data, subtables[key]))
    except (struct.error, ValueError) as exc:
        raise _missing(spec, "has an unreadable cmap table") from exc
    raise _missing(spec, "has no Unicode cmap subtable")


def missing_glyphs(spec: FontSpec, text: str) -> str:
    """The characters of ``text`` (in order, without repeats) that the font cannot draw."""
    covered = covered_codepoints(spec)
    seen: list[str] = []
    for c in text:
        if not c.isspace() and ord(c) not in covered and c not in seen:
            seen.append(c)
    return "".join(seen)


def require_glyphs(spec: FontSpec, text: str, *, what: str) -> None:
    """Refuse text the font cannot draw; ``what`` names the field (the text is never echoed)."""
    missing = missing_glyphs(spec, text)
    if missing:
        raise FontMissingError(
            f"font {spec.key!r} from {spec.package} has no glyph for {len(missing)} "
            f"character(s) of {what}; refusing to print boxes in their place",
            font_key=spec.key,
            package=spec.package,
            path=spec.path,
        )
