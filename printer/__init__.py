"""Card faces: layout as data, rendering, security features, proofs.

The printer renders a :class:`CardFace` (a plain value) through a :class:`Layout` (a checked TOML
file) into grayscale arrays; it knows nothing of chips, applications or the store (DESIGN §2).

::

    face = CardFace(...)                      # personaliser.faces builds it from an application
    layout = load_layout("hkid-2018")         # or a path to another layout file
    front, back = render_card(face, layout, dpi=600)
    write_proofs([face], "out", layout)       # out/cards/<card_id>/front.png, back.png
"""

from printer.errors import (
    ConsumableOut,
    DeviceFault,
    FontMissingError,
    LaserFault,
    LayoutError,
    PrinterError,
    PrintJam,
)
from printer.fonts import REGISTRY, FontSpec, missing_glyphs, require_glyphs
from printer.layout import Layout, builtin_layouts, load_layout, parse_layout
from printer.model import CardFace
from printer.proof import ProofFiles, write_proofs
from printer.render import render_back, render_card, render_front

__all__ = [
    "REGISTRY",
    "CardFace",
    "ConsumableOut",
    "DeviceFault",
    "FontMissingError",
    "FontSpec",
    "LaserFault",
    "Layout",
    "LayoutError",
    "PrintJam",
    "PrinterError",
    "ProofFiles",
    "builtin_layouts",
    "load_layout",
    "missing_glyphs",
    "parse_layout",
    "render_back",
    "render_card",
    "render_front",
    "require_glyphs",
    "write_proofs",
]
