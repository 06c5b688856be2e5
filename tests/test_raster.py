"""The laser-engraving raster: cases worked by hand, then the compiled kernel against the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from printer import raster
from printer.raster import bayer_matrix, diffuse, diffuse_reference, pack_for_engraver

BOTH = pytest.mark.parametrize("impl", [diffuse, diffuse_reference], ids=["numba", "reference"])


def gray(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# -- known answers, worked by hand from the arithmetic in the module docstring ---------------------


@BOTH
def test_one_row_of_mid_gray(impl) -> None:  # type: ignore[no-untyped-def]
    # v=128 -> white, e=-127, ahead=(-889+8)>>4=-56; v=72 -> black, e=72, ahead=512>>4=32;
    # v=160 -> white, e=-95, ahead=(-665+8)>>4=-42; v=86 -> black.
    assert impl(gray([[128, 128, 128, 128]])).tolist() == [[1, 0, 1, 0]]


@BOTH
def test_two_by_two_serpentine(impl) -> None:  # type: ignore[no-untyped-def]
    # Row 0, left to right: (0,0) v=64 black, e=64 -> ahead 28, behind 12 (falls off the left),
    # under 20, rest 4. (0,1) v=92 black, e=92 -> ahead 40 (off the right), behind 17 to (1,0),
    # under 29, rest 6 (off). Row 1 then holds (1,0)=64+20+17=101, (1,1)=64+4+29=97. Serpentine,
    # right to left: (1,1) v=97 black, e=97 -> ahead (679+8)>>4=42 to (1,0): v=143 white.
    assert impl(gray([[64, 64], [64, 64]]), serpentine=True).tolist() == [[0, 0], [1, 0]]


@BOTH
def test_two_by_two_raster_scan(impl) -> None:  # type: ignore[no-untyped-def]
    # Same first row; row 1 left to right: (1,0) v=101 black, e=101 -> ahead (707+8)>>4=44 to (1,1):
    # v=97+44=141 white. The scan direction changes the answer, so the option is really in effect.
    assert impl(gray([[64, 64], [64, 64]]), serpentine=False).tolist() == [[0, 0], [0, 1]]


@BOTH
def test_threshold_is_128(impl) -> None:  # type: ignore[no-untyped-def]
    assert impl(gray([[127]])).tolist() == [[0]]
    assert impl(gray([[128]])).tolist() == [[1]]


@BOTH
@pytest.mark.parametrize("method", raster.METHODS)
def test_black_and_white_stay_solid(impl, method) -> None:  # type: ignore[no-untyped-def]
    assert not impl(np.zeros((9, 13), np.uint8), method=method).any()
    assert impl(np.full((9, 13), 255, np.uint8), method=method).all()


@BOTH
def test_error_carries_along_a_row(impl) -> None:  # type: ignore[no-untyped-def]
    # A row of 40: each black pixel passes on (7*e+8)>>4 of its error, so v climbs 40, 58, 65, 68,
    # 70, 71, 71, ... and settles at 71, short of 128: one row of dark gray stays black. The row
    # below also gets the other 9/16 of every error, and there the threshold is crossed.
    out = impl(np.full((1, 12), 40, np.uint8))
    assert not out.any()
    two = impl(np.full((2, 12), 40, np.uint8), serpentine=False)
    assert not two[0].any() and two[1].any()


def test_bayer_matrix_matches_the_published_4x4() -> None:
    # The 4x4 Bayer (1973) index matrix as usually tabulated (e.g. Ulichney, Digital Halftoning).
    assert bayer_matrix(1).tolist() == [[0, 2], [3, 1]]
    assert bayer_matrix(2).tolist() == [
        [0, 8, 2, 10],
        [12, 4, 14, 6],
        [3, 11, 1, 9],
        [15, 7, 13, 5],
    ]
    assert sorted(bayer_matrix(3).ravel().tolist()) == list(range(64))


@BOTH
def test_ordered_tile_mean_is_exact(impl) -> None:  # type: ignore[no-untyped-def]
    # g prints white where g >= 4M + 2: for g = 128 that is M <= 31, half of the 64 cells.
    out = impl(np.full((8, 8), 128, np.uint8), method="ordered")
    assert int(out.sum()) == 32
    assert impl(np.full((8, 8), 1, np.uint8), method="ordered").sum() == 0
    assert impl(np.full((8, 8), 2, np.uint8), method="ordered").sum() == 1


def test_pack_for_engraver_sets_a_bit_per_dot() -> None:
    bits = gray([[1, 0, 1, 0, 1, 1, 1, 1, 0]])
    packed = pack_for_engraver(bits)
    # dots (bits == 0) at columns 1, 3 and 8 -> 0b01010000, 0b10000000; the pad bits are no dots.
    assert packed.tolist() == [[0x50, 0x80]]
    assert np.array_equal(np.unpackbits(packed, axis=1, count=9), (bits == 0).astype(np.uint8))


# -- caller misuse ---------------------------------------------------------------------------------


@BOTH
def test_rejects_wrong_dtype_and_rank(impl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError):
        impl(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError):
        impl([[0, 1]])
    with pytest.raises(ValueError):
        impl(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        impl(np.zeros((4, 4), np.uint8), method="atkinson")


@BOTH
def test_empty_images(impl) -> None:  # type: ignore[no-untyped-def]
    for shape in [(0, 5), (5, 0), (0, 0)]:
        assert impl(np.zeros(shape, np.uint8)).shape == shape


def test_one_compiled_specialisation() -> None:
    # The wrapper normalises layout and flag type, so odd inputs never trigger a second compile on a
    # running line (a compile takes about a second).
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    for img in (base, base[::2, ::3], base.T, np.asfortranarray(base)):
        for serpentine in (True, False, 0, 1):
            assert np.array_equal(
                diffuse(img, serpentine=bool(serpentine)),
                diffuse_reference(img, serpentine=bool(serpentine)),
            )
    assert len(raster._fs_kernel.signatures) == 1


# -- properties ------------------------------------------------------------------------------------

images = hnp.arrays(
    np.uint8,
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    elements=st.integers(0, 255),
)
rows = hnp.arrays(np.uint8, st.tuples(st.just(1), st.integers(1, 200)))
columns = hnp.arrays(np.uint8, st.tuples(st.integers(1, 200), st.just(1)))


@given(st.one_of(images, rows, columns), st.booleans(), st.sampled_from(raster.METHODS))
def test_numba_equals_reference(img: np.ndarray, serpentine: bool, method: raster.Method) -> None:
    fast = diffuse(img, method=method, serpentine=serpentine)
    slow = diffuse_reference(img, method=method, serpentine=serpentine)
    assert fast.dtype == np.uint8 and slow.dtype == np.uint8
    assert fast.shape == img.shape
    assert np.array_equal(fast, slow)
    assert set(np.unique(fast).tolist()) <= {0, 1}


@given(st.one_of(images, rows, columns), st.booleans())
def test_error_diffusion_keeps_the_mean(img: np.ndarray, serpentine: bool) -> None:
    # Error is conserved inside the image; it is lost only where it is pushed off the left and right
    # ends of each row and below the last row: at most 2h + w pixels, each losing less than one full
    # gray step of 255.
    h, w = img.shape
    out = diffuse(img, serpentine=serpentine)
    drift = abs(int(out.sum()) * 255 - int(img.sum(dtype=np.int64)))
    assert drift <= 255 * (2 * h + w)


@pytest.mark.parametrize("level", [0, 1, 17, 64, 100, 127, 128, 129, 200, 254, 255])
def test_flat_gray_tone_within_one_percent(level: int) -> None:
    img = np.full((256, 256), level, np.uint8)
    out = diffuse(img)
    assert abs(out.mean() * 255 - level) <= 2.55
