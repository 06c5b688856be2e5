"""Biometric values carried in the chip's data groups (no encoding here: see chip.lds)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FingerView", "Minutia"]


@dataclass(frozen=True, slots=True)
class Minutia:
    """One minutia point, ISO/IEC 19794-2:2005 7.4: type (1 ridge ending, 2 bifurcation), position
    in pixels, angle in units of 360/256 degrees, quality 0..100."""

    kind: int
    x: int
    y: int
    angle: int
    quality: int

    def __repr__(self) -> str:
        return "Minutia(<biometric>)"


@dataclass(frozen=True, slots=True)
class FingerView:
    """One finger's minutiae, ISO/IEC 19794-2 finger position code (1 right thumb … 10 left little)."""

    position: int
    quality: int
    width: int
    height: int
    resolution_ppcm: int
    minutiae: tuple[Minutia, ...]

    def __repr__(self) -> str:
        return f"FingerView(position={self.position}, minutiae={len(self.minutiae)})"
