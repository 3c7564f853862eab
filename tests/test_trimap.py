"""mask_to_trimap: exact band width, the three values, edge cases; apply_brush; default_band_width."""

import numpy as np
import pytest
from scipy import ndimage

from mematte_hf.errors import InputError
from mematte_hf.trimap import (
    BACKGROUND,
    FOREGROUND,
    UNKNOWN,
    apply_brush,
    default_band_width,
    mask_to_trimap,
)


def disc(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def distance_to_other_class(mask: np.ndarray) -> np.ndarray:
    """Reference: centre-to-centre distance from each pixel to the nearest pixel of the other class."""
    return np.where(mask, ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask))


def brute_force_trimap(mask: np.ndarray, band_width: int) -> np.ndarray:
    """The definition applied literally, pair by pair, with no distance transform."""
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    trimap = np.where(mask, FOREGROUND, BACKGROUND).astype(np.uint8)
    for here, there in ((inside, outside), (outside, inside)):
        d2 = ((here[:, None, :] - there[None, :, :]) ** 2).sum(-1).min(1)
        near = here[d2 <= band_width**2]
        trimap[near[:, 0], near[:, 1]] = UNKNOWN
    return trimap


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(200, 300, 3), (512, 512, 5), (1024, 768, 10), (2160, 3840, 38), (4320, 7680, 77), (1, 1, 3)],
)
def test_default_band_width_scales_with_the_longer_side(height, width, expected):
    assert default_band_width(height, width) == expected
    assert default_band_width(width, height) == expected


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, None])
def test_default_band_width_rejects_non_sizes(bad):
    with pytest.raises(InputError, match="height"):
        default_band_width(bad, 100)


def test_trimap_has_exactly_the_three_values_and_the_input_shape():
    mask = disc(200, 300, 100, 150, 60)
    trimap = mask_to_trimap(mask, band_width=7)
    assert trimap.shape == mask.shape and trimap.dtype == np.uint8
    assert set(np.unique(trimap).tolist()) == {BACKGROUND, UNKNOWN, FOREGROUND}
    # foreground only inside the mask, background only outside
    assert not (trimap == FOREGROUND)[~mask].any()
    assert not (trimap == BACKGROUND)[mask].any()


def test_straight_edge_gets_band_width_pixels_on_each_side():
    mask = np.zeros((20, 100), dtype=bool)
    mask[:, :50] = True
    trimap = mask_to_trimap(mask, band_width=4)
    expected_row = np.array([FOREGROUND] * 46 + [UNKNOWN] * 8 + [BACKGROUND] * 46, dtype=np.uint8)
    np.testing.assert_array_equal(trimap, np.broadcast_to(expected_row, mask.shape))


def test_band_is_the_distance_definition_on_a_disc():
    mask = disc(200, 300, 100, 150, 60.5)
    band_width = 9
    unknown = mask_to_trimap(mask, band_width) == UNKNOWN
    distance = distance_to_other_class(mask)
    assert (distance[unknown] <= band_width).all()  # every unknown pixel is within band_width of the boundary
    assert unknown[distance <= band_width - 1].all()  # and everything within band_width - 1 of it is unknown
    np.testing.assert_array_equal(unknown, distance <= band_width)  # in fact exactly the definition


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("band_width", [1, 2, 5, 12])
def test_matches_brute_force_on_random_shapes(seed, band_width):
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((36, 44)) < 0.55, iterations=1)
    assert mask.any() and not mask.all()
    np.testing.assert_array_equal(mask_to_trimap(mask, band_width), brute_force_trimap(mask, band_width))


def test_tiling_is_exact_across_tile_borders():
    # Larger than one 512 px tile, with edges just outside a tile (the tile itself is one class) and a wide
    # band, so tiles must see their neighbours' boundary.
    height, width = 1100, 1300
    mask = disc(height, width, 540, 600, 300) | disc(height, width, 100, 1200, 80)
    mask[:, 530:540] = True  # a vertical bar 18-28 px right of the tile border at x = 512
    mask[1050:, :] = True  # touches the bottom image border
    band_width = 40
    expected = np.where(mask, FOREGROUND, BACKGROUND).astype(np.uint8)
    expected[distance_to_other_class(mask) <= band_width] = UNKNOWN
    np.testing.assert_array_equal(mask_to_trimap(mask, band_width), expected)


@pytest.mark.parametrize("offset", [-41, -40, -39, 39, 40, 41])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("invert", [False, True])
def test_edges_exactly_band_width_from_a_tile_border(offset, transpose, invert):
    # An edge exactly band_width (or one off) from the 512 px tile border: a tile must look exactly
    # band_width past its own border, no less.
    band_width = 40
    mask = np.zeros((6, 1100), dtype=bool)
    mask[:, 512 + offset :] = True
    mask = ~mask if invert else mask
    mask = mask.T if transpose else mask
    expected = np.where(mask, FOREGROUND, BACKGROUND).astype(np.uint8)
    expected[distance_to_other_class(mask) <= band_width] = UNKNOWN
    np.testing.assert_array_equal(mask_to_trimap(mask, band_width), expected)


def test_image_border_is_not_a_boundary():
    mask = np.zeros((60, 80), dtype=bool)
    mask[:30] = True  # top half, touching the top, left and right borders
    trimap = mask_to_trimap(mask, band_width=5)
    assert (trimap[:25] == FOREGROUND).all()
    assert (trimap[25:35] == UNKNOWN).all()
    assert (trimap[35:] == BACKGROUND).all()


def test_empty_and_full_masks_have_no_unknown_region():
    empty = mask_to_trimap(np.zeros((40, 50), dtype=bool), band_width=5)
    full = mask_to_trimap(np.ones((40, 50), dtype=bool), band_width=5)
    assert (empty == BACKGROUND).all()
    assert (full == FOREGROUND).all()


def test_zero_band_width_is_the_binary_mask():
    mask = disc(50, 60, 25, 30, 12)
    np.testing.assert_array_equal(mask_to_trimap(mask, band_width=0), np.where(mask, 255, 0))


def test_default_band_width_is_used_when_none():
    mask = disc(400, 600, 200, 300, 150)
    np.testing.assert_array_equal(mask_to_trimap(mask), mask_to_trimap(mask, default_band_width(400, 600)))


def test_nonzero_values_count_as_mask():
    mask = disc(50, 60, 25, 30, 12)
    np.testing.assert_array_equal(mask_to_trimap(mask.astype(np.uint8) * 255, 3), mask_to_trimap(mask, 3))


@pytest.mark.parametrize("bad", [-1, 2.5, True, "5"])
def test_bad_band_width_is_an_input_error(bad):
    with pytest.raises(InputError, match="band_width"):
        mask_to_trimap(disc(20, 20, 10, 10, 5), bad)


@pytest.mark.parametrize("shape", [(10,), (4, 5, 3), (0, 5)])
def test_mask_must_be_2d(shape):
    with pytest.raises(InputError, match="2-D"):
        mask_to_trimap(np.zeros(shape, dtype=bool), 2)


def test_apply_brush_paints_a_copy():
    trimap = mask_to_trimap(disc(50, 60, 25, 30, 15), band_width=4)
    before = trimap.copy()
    stroke = np.zeros(trimap.shape, dtype=bool)
    stroke[20:30, 5:55] = True
    for value in (BACKGROUND, UNKNOWN, FOREGROUND):
        painted = apply_brush(trimap, stroke, value)
        assert (painted[stroke] == value).all()
        np.testing.assert_array_equal(painted[~stroke], trimap[~stroke])
    np.testing.assert_array_equal(trimap, before)  # the input is untouched


@pytest.mark.parametrize("value", [1, 127, 256, -1, 128.0, True, "fg"])
def test_apply_brush_rejects_other_values(value):
    trimap = np.zeros((10, 10), dtype=np.uint8)
    with pytest.raises(InputError, match="brush value"):
        apply_brush(trimap, np.ones((10, 10), dtype=bool), value)


def test_apply_brush_checks_shapes_and_trimap():
    trimap = np.zeros((10, 12), dtype=np.uint8)
    with pytest.raises(InputError, match="brush stroke is 10x12 but the trimap is 12x10"):
        apply_brush(trimap, np.ones((12, 10), dtype=bool), 255)
    with pytest.raises(InputError, match="0, 128 or 255"):
        apply_brush(np.full((10, 12), 7, dtype=np.uint8), np.ones((10, 12), dtype=bool), 255)
    with pytest.raises(InputError, match="uint8"):
        apply_brush(np.zeros((10, 12), dtype=np.float32), np.ones((10, 12), dtype=bool), 255)
