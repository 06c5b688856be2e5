"""Laser-engraving raster: an 8-bit gray card face to a 1-bit dot pattern.

A laser engraver (polycarbonate card body) has two levels per dot: burnt (dark) or not. Gray levels
are rendered by error diffusion: each pixel is quantised to black or white and its quantisation
error is pushed onto the neighbours not yet visited, so the local mean of the dots follows the local
mean of the image (R. W. Floyd, L. Steinberg, "An adaptive algorithm for spatial greyscale", Proc.
SID 17(2), 1976). Serpentine scanning (alternate rows right to left) breaks up the diagonal "worm"
artefacts of a raster scan (R. Ulichney, *Digital Halftoning*, MIT Press 1987).

Conventions, fixed here once:

- input: ``uint8`` 2-D array, 0 = black, 255 = white;
- output of :func:`diffuse`: ``uint8`` 2-D array of 0/1, 1 = white (substrate left as is), 0 = a dot
  (the laser fires), as in PIL's mode ``"1"``;
- :func:`pack_for_engraver` turns that into rows of packed bytes where a **1 bit fires the laser**,
  most significant bit first (``np.packbits`` order), each row padded to a whole byte.

Error arithmetic is integer-only, so the compiled kernel and the plain-Python reference agree bit
for bit on every input (floating-point error terms could round differently under LLVM's optimiser).
For a pixel whose value after incoming error is ``v`` and whose output level is ``q`` (0 or 255)::

    e      = v - q
    ahead  = (7e + 8) >> 4                 next pixel in scan direction
    behind = (3e + 8) >> 4                 row below, one pixel back
    under  = (5e + 8) >> 4                 row below, same column
    rest   = e - ahead - behind - under    row below, one pixel ahead

so the four parts always sum to ``e`` (no error is created or lost by rounding; only what falls off
the edges of the card is lost). ``>>`` is an arithmetic shift (floor division by 16) in Python and
in the compiled kernel alike. ``v >= 128`` prints white.

The kernel keeps errors in ``int32``. Each pixel receives one part of each kind, weights summing to
16/16, and rounding adds at most 3 (0.5 for each shifted part, 1.5 for the remainder); so if every
earlier error is within ``M``, the new one is within ``max(127, M + 3)``: after ``n`` pixels,
``|e| <= 127 + 3n``. :data:`MAX_PIXELS` keeps that bound below ``2**31``, so the kernel cannot
overflow where the Python reference (unbounded ints) would not. Real errors stay within a few
hundred.

The compiled kernels come from numba with ``cache=True``: the first call in a process loads them
from ``__pycache__`` (or compiles them, about a second, once per installed version); :func:`warm_up`
does that up front so the cost never lands on a card. They release the GIL, so the line runtime can
run them in a worker thread (``asyncio.to_thread``) beside its event loop.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "MAX_PIXELS",
    "METHODS",
    "Method",
    "bayer_matrix",
    "diffuse",
    "diffuse_reference",
    "pack_for_engraver",
    "warm_up",
]

Method = Literal["floyd-steinberg", "ordered"]
METHODS: Final[tuple[Method, ...]] = ("floyd-steinberg", "ordered")

Gray = npt.NDArray[np.uint8]
Bits = npt.NDArray[np.uint8]

MAX_PIXELS: Final = 1 << 28
"""Largest image accepted (268 Mpx; an ID-1 card at 600 dpi is 2.6 Mpx): see the int32 bound."""

_THRESHOLD: Final = 128
_WHITE: Final = 255


def bayer_matrix(order: int = 3) -> npt.NDArray[np.int64]:
    """The 2**order square Bayer index matrix (values 0 .. 4**order - 1).

    B. E. Bayer, "An optimum method for two-level rendition of continuous-tone pictures", IEEE ICC
    1973: M(2n) = [[4M, 4M + 2], [4M + 3, 4M + 1]] built up from M(1) = [[0]].
    """
    if order < 0:
        raise ValueError("order must be >= 0")
    m = np.zeros((1, 1), dtype=np.int64)
    for _ in range(order):
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return m


# Gray g prints white at a cell of index M when g >= 4M + 2: of the 64 cells, about g/4 are white,
# so the mean of an 8x8 tile is g/256 of full white (0 -> all black, 255 -> all white).
_BAYER8_THRESHOLDS: Final = (4 * bayer_matrix(3) + 2).astype(np.int32)


# -- compiled kernels ------------------------------------------------------------------------------
# One specialisation each: the public wrappers always pass C-contiguous uint8 2-D arrays and a bool,
# so numba compiles (or loads from its cache) exactly once per process.


@njit(cache=True, nogil=True)
def _fs_kernel(gray: Gray, serpentine: bool) -> Bits:
    # Two passes per row. Pass 1 walks the row in scan order and does only what is serial: add the
    # error carried from the previous pixel, quantise, keep the error. Pass 2 spreads the row's
    # errors onto the next row; it has no serial dependency, so it runs at full width. Splitting
    # them keeps pass 1 at the latency of its carry chain (add, compare, select, shift) instead of
    # the instruction count of the whole update, which is what bounded a one-pass loop.
    h, w = gray.shape
    out = np.empty((h, w), dtype=np.uint8)
    if h == 0 or w == 0:
        return out  # the priming loop below reads row 0
    # cur[x + 1]: gray[y, x] plus the error diffused from row y - 1; err[x + 1]: row y's error. One
    # guard cell at each end holds 0, so pass 2 needs no edge cases (what falls off is dropped).
    cur = np.zeros(w + 2, dtype=np.int32)
    err = np.zeros(w + 2, dtype=np.int32)
    for x in range(w):
        cur[x + 1] = gray[0, x]
    one = np.uint64(1)
    for y in range(h):
        row = out[y]
        ahead = 0
        backwards = serpentine and (y & 1) == 1
        if backwards:
            # Unsigned indices: numba adds negative-index wraparound code for signed ones, and here
            # it also turned the select below into a data-dependent branch.
            i = np.uint64(w)
            while i > np.uint64(0):
                i -= one
                v = cur[i + one] + ahead
                t = 7 * v + 8
                if v >= 128:
                    row[i] = 1
                    err[i + one] = v - 255
                    ahead = (t - 1785) >> 4
                else:
                    row[i] = 0
                    err[i + one] = v
                    ahead = t >> 4
        else:
            for x in range(w):
                v = cur[x + 1] + ahead
                t = 7 * v + 8
                if v >= 128:
                    row[x] = 1
                    err[x + 1] = v - 255
                    ahead = (t - 1785) >> 4  # (7 * (v - 255) + 8) >> 4
                else:
                    row[x] = 0
                    err[x + 1] = v
                    ahead = t >> 4
        if y + 1 < h:
            g = gray[y + 1]
            # Cell x of the next row takes "behind" from the pixel after it in this row's scan
            # order, "below" from the pixel above it and the remainder from the pixel before it.
            if backwards:
                for x in range(w):
                    eb = err[x]
                    eu = err[x + 1]
                    er = err[x + 2]
                    rest = er - ((7 * er + 8) >> 4) - ((3 * er + 8) >> 4) - ((5 * er + 8) >> 4)
                    cur[x + 1] = np.int32(g[x]) + ((3 * eb + 8) >> 4) + ((5 * eu + 8) >> 4) + rest
            else:
                for x in range(w):
                    eb = err[x + 2]
                    eu = err[x + 1]
                    er = err[x]
                    rest = er - ((7 * er + 8) >> 4) - ((3 * er + 8) >> 4) - ((5 * er + 8) >> 4)
                    cur[x + 1] = np.int32(g[x]) + ((3 * eb + 8) >> 4) + ((5 * eu + 8) >> 4) + rest
    return out


@njit(cache=True, nogil=True)
def _ordered_kernel(gray: Gray, thresholds: npt.NDArray[np.int32]) -> Bits:
    h, w = gray.shape
    n = thresholds.shape[0]
    mask = n - 1
    out = np.empty((h, w), dtype=np.uint8)
    for y in range(h):
        row = thresholds[y & mask]
        for x in range(w):
            out[y, x] = 1 if np.int32(gray[y, x]) >= row[x & mask] else 0
    return out


# -- public API ------------------------------------------------------------------------------------


def _check_gray(gray: npt.NDArray[np.generic]) -> Gray:
    if not isinstance(gray, np.ndarray):
        raise TypeError("gray must be a numpy array")
    if gray.dtype != np.uint8:
        raise TypeError(f"gray must be uint8, not {gray.dtype}")
    if gray.ndim != 2:
        raise ValueError(f"gray must be 2-D, not {gray.ndim}-D")
    if gray.size > MAX_PIXELS:
        raise ValueError(f"gray has {gray.size} pixels, more than MAX_PIXELS ({MAX_PIXELS})")
    return np.ascontiguousarray(gray)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def diffuse(
    gray: npt.NDArray[np.uint8],
    *,
    method: Method = "floyd-steinberg",
    serpentine: bool = True,
) -> Bits:
    """The 1-bit raster of ``gray`` (0/1 ``uint8``, 1 = white), compiled.

    ``method="floyd-steinberg"`` (default) is error diffusion as described in the module docstring;
    ``serpentine`` alternates the scan direction row by row. ``method="ordered"`` is an 8x8 Bayer
    dither: several times faster and free of serial dependencies, but its regular cross-hatch is
    visible on a portrait; kept for draft proofs and throughput tests (``serpentine`` is ignored).
    """
    g = _check_gray(gray)
    _check_method(method)
    if method == "ordered":
        return _ordered_kernel(g, _BAYER8_THRESHOLDS)
    return _fs_kernel(g, bool(serpentine))


def diffuse_reference(
    gray: npt.NDArray[np.uint8],
    *,
    method: Method = "floyd-steinberg",
    serpentine: bool = True,
) -> Bits:
    """The same raster as :func:`diffuse`, in plain Python and numpy: the oracle for the tests.

    Written the textbook way on purpose (one pass, a whole-image error array, the four neighbours
    addressed and bounds-checked one by one) rather than as a copy of the kernel's two passes over
    rolling rows, so that agreement between the two checks the kernel's bookkeeping, not just the
    compiler.
    """
    g = _check_gray(gray)
    _check_method(method)
    h, w = g.shape
    if method == "ordered":
        reps = (-(-h // 8), -(-w // 8))
        thresholds = np.tile(_BAYER8_THRESHOLDS, reps)[:h, :w]
        return (g.astype(np.int32) >= thresholds).astype(np.uint8)

    err = [[0] * w for _ in range(h)]
    pixels = g.tolist()
    out = np.zeros((h, w), dtype=np.uint8)
    for y in range(h):
        step = -1 if serpentine and y % 2 == 1 else 1
        columns = range(w - 1, -1, -1) if step == -1 else range(w)
        for x in columns:
            v = pixels[y][x] + err[y][x]
            if v >= _THRESHOLD:
                out[y, x] = 1
                e = v - _WHITE
            else:
                e = v
            ahead = (7 * e + 8) >> 4
            behind = (3 * e + 8) >> 4
            under = (5 * e + 8) >> 4
            parts = (
                (y, x + step, ahead),
                (y + 1, x - step, behind),
                (y + 1, x, under),
                (y + 1, x + step, e - ahead - behind - under),
            )
            for yy, xx, part in parts:
                if yy < h and 0 <= xx < w:
                    err[yy][xx] += part
    return out


def pack_for_engraver(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Rows of packed bytes for the engraver: a 1 bit fires the laser (a dot where ``bits`` is 0).

    Shape ``(h, ceil(w / 8))``, most significant bit first; the pad bits at the end of a row are 0
    (no dot), so a row never burns past the right edge of the image.
    """
    if bits.ndim != 2:
        raise ValueError(f"bits must be 2-D, not {bits.ndim}-D")
    dots = bits == 0
    return np.packbits(dots, axis=1)


def warm_up() -> None:
    """Load (or compile) the kernels now, so the first card does not pay for it."""
    tiny = np.zeros((2, 2), dtype=np.uint8)
    diffuse(tiny)
    diffuse(tiny, method="ordered")
