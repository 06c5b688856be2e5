"""The printer package's exception tree (one root, machine-readable fields).

::

    PrinterError                 root of what this package raises
    ├── LayoutError              a layout file is malformed or geometrically impossible; ``element``
    ├── FontMissingError         a font file is absent or lacks glyphs; ``font_key``, ``package``
    └── DeviceFault              a print station failed; ``station``
        ├── PrintJam             the card did not move through the transport
        ├── LaserFault           the laser or galvo head reported an error
        └── ConsumableOut        ribbon, film or blank stock ran out

Caller misuse (impossible argument) is ``ValueError`` / ``TypeError``, as in the standard library.
Messages never carry personal data: they name the element, the font key, the Debian package or the
station.
"""

from __future__ import annotations

__all__ = [
    "ConsumableOut",
    "DeviceFault",
    "FontMissingError",
    "LaserFault",
    "LayoutError",
    "PrintJam",
    "PrinterError",
]


class PrinterError(Exception):
    """Root of the printer package's exceptions."""


class LayoutError(PrinterError):
    """A layout file cannot be used; ``element`` names the offending element (None: the file)."""

    def __init__(self, message: str, *, element: str | None = None) -> None:
        super().__init__(f"element '{element}': {message}" if element else message)
        self.element = element


class FontMissingError(PrinterError):
    """A font is not installed, or lacks glyphs the card needs.

    ``package`` is the Debian package that provides the font, so the message tells the operator
    what to install instead of the renderer silently falling back to a font without the glyphs.
    """

    def __init__(self, message: str, *, font_key: str, package: str, path: str = "") -> None:
        super().__init__(message)
        self.font_key = font_key
        self.package = package
        self.path = path


class DeviceFault(PrinterError):  # noqa: N818 - the name the station drivers were promised
    """A print station failed; ``station`` names it (e.g. ``"laser-1"``)."""

    def __init__(self, message: str, *, station: str | None = None) -> None:
        super().__init__(message)
        self.station = station


class PrintJam(DeviceFault):
    """The card did not move through the transport."""


class LaserFault(DeviceFault):
    """The laser or galvo head reported an error."""


class ConsumableOut(DeviceFault):
    """Ribbon, film or blank stock ran out."""
