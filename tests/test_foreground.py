"""Tests for mematte_hf.foreground: foreground estimation, compositing and display helpers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as nnf

from mematte_hf.errors import InputError
from mematte_hf.foreground import (
    CHECKER_DARK,
    CHECKER_LIGHT,
    checkerboard,
    composite,
    estimate_foreground,
    estimate_foreground_background,
    over_checkerboard,
    rgba_cutout,
)


def _synthetic(height: int = 96, width: int = 96) -> tuple[np.ndarray, ...]:
    """A green foreground with soft, hair-like edges composited over a red background.

    Returns (image, alpha, true foreground, true background), all float32.
    """
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    foreground = np.stack([0.15 + 0.1 * yy, 0.75 - 0.1 * xx, 0.25 + 0.05 * yy], axis=-1)
    background = np.stack([0.9 - 0.2 * yy, 0.2 + 0.1 * np.sin(6 * xx), 0.1 + 0.1 * xx], axis=-1)
    ramp = np.clip((xx - 0.3) / 0.4, 0, 1)  # opaque on the left, transparent on the right
    strands = 0.5 + 0.5 * np.sin(2 * np.pi * xx * width / 6)  # thin stripes, like hair
    alpha = np.where((ramp > 0) & (ramp < 1), (1 - ramp) * strands, 1 - ramp)
    image = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    return tuple(array.astype(np.float32) for array in (image, alpha, foreground, background))


def _mean_error(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(estimate - truth)[mask].mean())


# --------------------------------------------------------------------------------------------------
# estimate_foreground


def test_recovers_foreground_much_better_than_naive_cutouts() -> None:
    image, alpha, true_foreground, _ = _synthetic()
    soft = (alpha > 0.05) & (alpha < 0.95)
    assert soft.sum() > 1000
    estimated = _mean_error(estimate_foreground(image, alpha), true_foreground, soft)
    premultiplied = _mean_error(image * alpha[..., None], true_foreground, soft)
    image_itself = _mean_error(image, true_foreground, soft)
    assert min(premultiplied, image_itself) > 0.2  # the red background bleeds into both
    assert estimated < 0.04
    assert estimated < 0.2 * min(premultiplied, image_itself)


def test_uint8_inputs_give_the_same_foreground() -> None:
    image, alpha, true_foreground, _ = _synthetic()
    image8 = np.rint(image * 255).astype(np.uint8)
    alpha8 = np.rint(alpha * 255).astype(np.uint8)
    from_uint8 = estimate_foreground(image8, alpha8)
    from_float = estimate_foreground(image8 / 255.0, alpha8 / 255.0)
    assert np.abs(from_uint8 - from_float).max() < 1e-4
    soft = (alpha > 0.05) & (alpha < 0.95)
    assert _mean_error(from_uint8, true_foreground, soft) < 0.04


def test_opaque_pixels_keep_the_image_colour_and_transparent_ones_the_background() -> None:
    image, alpha, _, _ = _synthetic()
    image = image.copy()
    image[alpha == 1] = np.random.default_rng(0).random((int((alpha == 1).sum()), 3))  # texture
    foreground, background = estimate_foreground_background(image, alpha)
    np.testing.assert_array_equal(foreground[alpha == 1], image[alpha == 1])
    np.testing.assert_array_equal(background[alpha == 0], image[alpha == 0])


def test_more_sweeps_get_closer() -> None:
    image, alpha, true_foreground, _ = _synthetic(48, 48)
    soft = (alpha > 0.05) & (alpha < 0.95)
    errors = [_mean_error(estimate_foreground(image, alpha, fine_iterations=n), true_foreground, soft) for n in (1, 30)]
    assert errors[1] < 0.8 * errors[0]


def _exact_minimiser(image: np.ndarray, alpha: np.ndarray, regularization: float, gradient_weight: float):
    """Minimise sum (aF + (1-a)B - I)^2 + sum over 4-neighbour pairs w (|dF|^2 + |dB|^2) directly."""
    height, width = alpha.shape
    n = height * width
    index = np.arange(n).reshape(height, width)
    pairs = np.concatenate(
        [
            np.stack([index[:, :-1].ravel(), index[:, 1:].ravel()], axis=1),
            np.stack([index[:-1].ravel(), index[1:].ravel()], axis=1),
        ]
    )
    a = alpha.ravel().astype(np.float64)
    weights = regularization + gradient_weight * np.abs(a[pairs[:, 0]] - a[pairs[:, 1]])
    adjacency = scipy.sparse.coo_matrix((weights, (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    adjacency = adjacency + adjacency.T
    laplacian = scipy.sparse.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
    mix = scipy.sparse.hstack([scipy.sparse.diags(a), scipy.sparse.diags(1 - a)])  # (n, 2n)
    system = (mix.T @ mix + scipy.sparse.block_diag([laplacian, laplacian])).tocsc()
    colours = image.reshape(n, 3).astype(np.float64)
    solution = scipy.sparse.linalg.spsolve(system, mix.T @ colours)  # (2n, 3)
    return solution[:n].reshape(height, width, 3), solution[n:].reshape(height, width, 3)


def test_converges_to_the_exact_minimiser_of_the_energy() -> None:
    rng = np.random.default_rng(3)
    height, width = 9, 13
    alpha = rng.uniform(0.05, 0.95, (height, width)).astype(np.float32)  # no pixel snapped to I
    foreground = rng.uniform(0.3, 0.7, (height, width, 3))  # so the minimiser stays inside [0, 1]
    background = rng.uniform(0.3, 0.7, (height, width, 3))
    image = (alpha[..., None] * foreground + (1 - alpha[..., None]) * background).astype(np.float32)
    options = {"regularization": 0.05, "gradient_weight": 1.0}
    exact_f, exact_b = _exact_minimiser(image, alpha, **options)
    assert exact_f.min() > 0 and exact_f.max() < 1 and exact_b.min() > 0 and exact_b.max() < 1
    estimated_f, estimated_b = estimate_foreground_background(
        image, alpha, coarse_iterations=3000, fine_iterations=3000, device="cpu", **options
    )
    assert np.abs(estimated_f - exact_f).max() < 2e-3
    assert np.abs(estimated_b - exact_b).max() < 2e-3
    few_sweeps = estimate_foreground(image, alpha, **options)  # the default schedule is an approximation
    assert np.abs(few_sweeps - exact_f).max() > 1e-2


def _reference_solve(
    image: np.ndarray, alpha: np.ndarray, regularization: float, gradient_weight: float, coarse: int, fine: int
) -> tuple[np.ndarray, np.ndarray]:
    """The multi-level Jacobi solve as the landed implementation (c43c317) does it, written plainly: float32,
    the same operations in the same order, a replicate-padded copy of the solution made for every sweep."""
    rgb = torch.from_numpy(image).permute(2, 0, 1)
    matte = torch.from_numpy(alpha)
    levels = [torch.cat([rgb, matte[None]])]
    while max(levels[-1].shape[1:]) > 1:
        height, width = levels[-1].shape[1:]
        size = (math.ceil(height / 2), math.ceil(width / 2))
        levels.append(nnf.adaptive_avg_pool2d(levels[-1][None], size)[0])
    weights = torch.stack([matte, 1 - matte])  # start: alpha- and (1 - alpha)-weighted mean colours
    totals = weights.sum(dim=(1, 2))[:, None]
    means = torch.einsum("khw,chw->kc", weights, rgb) / totals.clamp_min(1e-12)
    solution = torch.where(totals > 0, means, rgb.mean(dim=(1, 2))).reshape(6, 1, 1)
    for level in levels[::-1]:
        colour, a = level[:3], level[3]
        height, width = a.shape
        solution = nnf.interpolate(solution[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        grid = nnf.pad(a[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
        sides = [grid[1:-1, :-2], grid[1:-1, 2:], grid[:-2, 1:-1], grid[2:, 1:-1]]  # left, right, up, down
        w = [(a - side).abs() * gradient_weight + regularization for side in sides]
        total = w[0] + w[1] + w[2] + w[3]
        b = 1 - a
        a00, a01, a11 = a * a + total, a * b, b * b + total
        det = (a11 + a00 - total) * total  # = a00 a11 - a01^2, without the cancellation
        data_f, data_b = colour * a, colour - colour * a
        for _ in range(coarse if max(height, width) <= 32 else fine):
            padded = nnf.pad(solution[None], (1, 1, 1, 1), mode="replicate")[0]
            shifted = [padded[:, 1:-1, :-2], padded[:, 1:-1, 2:], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]]
            rhs = torch.cat([data_f, data_b])
            for weight, neighbour in zip(w, shifted, strict=True):
                rhs = rhs + weight * neighbour
            rhs_f, rhs_b = rhs[:3], rhs[3:]
            new_f = rhs_f * (a11 / det) - rhs_b * (a01 / det)
            new_b = rhs_b * (a00 / det) - rhs_f * (a01 / det)
            solution = torch.cat([new_f, new_b]).clamp(0, 1)
    foreground = torch.where(matte == 1, rgb, solution[:3])
    background = torch.where(matte == 0, rgb, solution[3:])
    return foreground.permute(1, 2, 0).numpy(), background.permute(1, 2, 0).numpy()


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 7), (6, 1), (2, 3), (17, 16), (37, 53), (96, 96)])
def test_equals_the_plain_multi_level_solve(height: int, width: int) -> None:
    image, alpha, _, _ = _synthetic(height, width)
    expected = _reference_solve(image, alpha, 1e-5, 1.0, coarse=10, fine=2)
    estimated = estimate_foreground_background(image, alpha, device="cpu")
    for result, reference in zip(estimated, expected, strict=True):
        np.testing.assert_allclose(result, reference, rtol=0, atol=1e-5)
    options = {"regularization": 0.01, "gradient_weight": 0.5, "coarse_iterations": 4, "fine_iterations": 7}
    expected = _reference_solve(image, alpha, 0.01, 0.5, coarse=4, fine=7)
    estimated = estimate_foreground_background(image, alpha, device="cpu", **options)
    for result, reference in zip(estimated, expected, strict=True):
        np.testing.assert_allclose(result, reference, rtol=0, atol=1e-5)


def test_alpha_of_any_accepted_type_gives_the_same_foreground() -> None:
    image, alpha, _, _ = _synthetic(40, 56)
    image8 = np.rint(image * 255).astype(np.uint8)
    alpha8 = np.rint(alpha * 255).astype(np.uint8)
    expected = estimate_foreground(image8, alpha8.astype(np.float32) / 255)
    variants = {
        "uint8": alpha8,
        "float64": alpha8 / 255.0,
        "(H, W, 1)": (alpha8 / np.float32(255))[..., None],
        "strided": np.ascontiguousarray(np.repeat(alpha8, 2, axis=1))[:, ::2],
    }
    for name, variant in variants.items():
        np.testing.assert_array_equal(estimate_foreground(image8, variant), expected, err_msg=name)
    # Floats a hair outside [0, 1] (rounding noise) are clipped, as everywhere else.
    noisy = (alpha8 / 255.0).copy()
    noisy[alpha8 == 255] += 1e-7
    noisy[alpha8 == 0] -= 1e-7
    np.testing.assert_array_equal(estimate_foreground(image8, noisy), expected)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 7), (6, 1), (37, 53)])
def test_any_size_gives_finite_float32_colours(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = rng.random((height, width)).astype(np.float32)
    foreground = estimate_foreground(image, alpha)
    assert foreground.shape == (height, width, 3) and foreground.dtype == np.float32
    assert np.isfinite(foreground).all() and foreground.min() >= 0 and foreground.max() <= 1
    assert foreground.flags.c_contiguous and foreground.flags.writeable


def test_estimate_refuses_bad_inputs() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(InputError, match="alpha is 5 x 4 but the image is 6 x 4"):
        estimate_foreground(image, np.zeros((4, 5), np.float32))
    with pytest.raises(InputError, match="regularization must be above 0"):
        estimate_foreground(image, np.zeros((4, 6), np.float32), regularization=0.0)
    with pytest.raises(InputError, match="fine_iterations must be a whole number of at least 1"):
        estimate_foreground(image, np.zeros((4, 6), np.float32), fine_iterations=0)
    with pytest.raises(InputError, match="NaN"):
        estimate_foreground(image, np.full((4, 6), np.nan, np.float32))
    with pytest.raises(InputError, match="is not a device name"):
        estimate_foreground(image, np.zeros((4, 6), np.float32), device="gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available here; use 'cpu'"):
            estimate_foreground(image, np.zeros((4, 6), np.float32), device="cuda")


def test_read_only_and_reversed_uint8_images_are_accepted() -> None:
    image = np.random.default_rng(5).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    image.flags.writeable = False
    opaque = np.ones((8, 9), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only array
        foreground = estimate_foreground(image, opaque)
        flipped = estimate_foreground(image[:, ::-1], opaque)
    np.testing.assert_array_equal(np.rint(foreground * 255), image)
    np.testing.assert_array_equal(np.rint(flipped * 255), image[:, ::-1])


# --------------------------------------------------------------------------------------------------
# composite, rgba_cutout, checkerboard


FOREGROUND_PIXEL = np.array([[[200, 100, 0]]], dtype=np.float32) / 255
QUARTER = np.array([[0.25]], dtype=np.float32)


def test_composite_over_a_colour_by_hand() -> None:
    # 0.25 * (200, 100, 0) + 0.75 * (0, 0, 255) = (50, 25, 191.25)
    expected = [[[50, 25, 191]]]
    np.testing.assert_array_equal(composite(FOREGROUND_PIXEL, QUARTER, (0, 0, 255)), expected)
    np.testing.assert_array_equal(composite(FOREGROUND_PIXEL, QUARTER, "#0000ff"), expected)
    np.testing.assert_array_equal(composite(FOREGROUND_PIXEL, QUARTER, "blue"), expected)
    out = composite(np.rint(FOREGROUND_PIXEL * 255).astype(np.uint8), np.array([[64]], np.uint8), "#00FF00")
    assert out.dtype == np.uint8  # 64/255 * (200, 100, 0) + (1 - 64/255) * (0, 255, 0)
    np.testing.assert_array_equal(out, [[[50, 216, 0]]])


def test_composite_over_an_image_by_hand() -> None:
    background = np.array([[[10, 20, 30], [250, 250, 250]]], dtype=np.uint8)
    foreground = np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]], dtype=np.float32)
    alpha = np.array([[0.6, 0.1]], dtype=np.float32)
    # 0.6 * 255 + 0.4 * (10, 20, 30), and 0.9 * 250
    np.testing.assert_array_equal(composite(foreground, alpha, background), [[[157, 161, 165], [225, 225, 225]]])


def test_background_image_of_another_size_is_covered_and_centre_cropped() -> None:
    wide = np.zeros((4, 12, 3), dtype=np.uint8)
    wide[:, :4], wide[:, 4:8], wide[:, 8:] = (255, 0, 0), (0, 0, 255), (255, 0, 0)
    clear = np.zeros((4, 4), dtype=np.float32)
    out = composite(np.zeros((4, 4, 3), np.uint8), clear, wide)
    np.testing.assert_array_equal(out, np.broadcast_to([0, 0, 255], (4, 4, 3)))  # not squashed
    big = np.full((30, 20, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(composite(np.zeros((3, 5, 3), np.uint8), np.zeros((3, 5)), big)[..., 0], 77)


def test_composite_refuses_bad_backgrounds_and_sizes() -> None:
    for colour in ("#12345", "no-such-colour", (256, 0, 0), (0.5, 0.5, 0.5), (1, 2)):
        with pytest.raises(InputError, match="background colour"):
            composite(FOREGROUND_PIXEL, QUARTER, colour)
    with pytest.raises(InputError, match="alpha is 2 x 1 but the image is 1 x 1"):
        composite(FOREGROUND_PIXEL, np.zeros((1, 2), np.float32), (0, 0, 0))


def test_rgba_cutout_has_straight_alpha() -> None:
    foreground = np.array([[[0.2, 0.4, 0.6], [1.0, 0.0, 0.0]]], dtype=np.float32)
    alpha = np.array([[0.5, 0.0]], dtype=np.float32)
    cutout = rgba_cutout(foreground, alpha)
    assert cutout.shape == (1, 2, 4) and cutout.dtype == np.uint8
    np.testing.assert_array_equal(cutout, [[[51, 102, 153, 128], [255, 0, 0, 0]]])


def test_rgba_cutout_rounds_every_channel_like_the_plain_formula() -> None:
    rng = np.random.default_rng(7)
    foreground = rng.random((33, 47, 3), dtype=np.float32)
    foreground[0, :4, 0] = [0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0]  # halfway cases round to even
    alpha = rng.random((33, 47), dtype=np.float32)
    expected = np.rint(np.concatenate([foreground, alpha[..., None]], axis=2) * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgba_cutout(foreground, alpha), expected)


def test_checkerboard_and_display_over_it() -> None:
    board = checkerboard(5, 7, square=2)
    assert board.shape == (5, 7, 3) and board.dtype == np.uint8
    assert board[0, 0, 0] == board[1, 1, 0] == board[2, 2, 0] == CHECKER_LIGHT
    assert board[0, 2, 0] == board[2, 0, 0] == board[4, 6, 1] == CHECKER_DARK
    rgba = np.zeros((5, 7, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 0, 0, 0)  # clear: the dark square shows
    rgba[2, 2] = (0, 0, 0, 102)  # 40 % black over a light square: 0.6 * 255
    shown = over_checkerboard(rgba, square=2)
    np.testing.assert_array_equal(shown[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(shown[0, 2], [CHECKER_DARK] * 3)
    np.testing.assert_array_equal(shown[2, 2], [153, 153, 153])
    with pytest.raises(InputError, match="expected \\(H, W, 4\\)"):
        over_checkerboard(rgba[..., :3])
