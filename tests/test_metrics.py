"""DIM / Composition-1K metrics: hand-computed values, the units, forcing, and brute-force references."""

import math

import numpy as np
import pytest
from scipy import ndimage

from mematte_hf.errors import InputError
from mematte_hf.metrics import (
    CONNECTIVITY_THRESHOLDS,
    MetricsAccumulator,
    compute_connectivity_error,
    compute_gradient_error,
    compute_mse,
    compute_sad,
    connectivity_levels,
    gaussian_derivative_kernels,
    score_image,
)


def trimap_with_unknown_box(shape, box) -> np.ndarray:
    """A trimap: background, a foreground left half, and the unknown rectangle `box` (slices)."""
    trimap = np.zeros(shape, dtype=np.uint8)
    trimap[:, : shape[1] // 2] = 255
    trimap[box] = 128
    return trimap


def smooth_random_matte(shape, seed: int) -> np.ndarray:
    """A uint8 matte with edges, flat zero / one areas and noise, like a real alpha."""
    rng = np.random.default_rng(seed)
    ramp = np.clip(np.linspace(-0.6, 1.6, shape[1])[None, :] + 0.3 * rng.standard_normal(shape), 0, 1)
    return np.round(ndimage.uniform_filter(ramp, 3) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Reference implementations, written as literally as possible (slow loops, whole image).


def reference_gradient_error(pred8, gt8, trimap, sigma=1.4) -> float:
    """Build the 2-D x-kernel element by element and correlate it over the image with replicated borders."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    size = 2 * half + 1

    def gauss(x):
        return math.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))

    def dgauss(x):
        return -x * gauss(x) / sigma**2

    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = gauss(i - half) * dgauss(j - half)
    hx /= math.sqrt((hx**2).sum())
    hy = hx.T

    def correlate(image, kernel):
        height, width = image.shape
        out = np.zeros_like(image)
        for y in range(height):
            for x in range(width):
                total = 0.0
                for i in range(size):
                    for j in range(size):
                        yy = min(max(y + i - half, 0), height - 1)  # replicated border
                        xx = min(max(x + j - half, 0), width - 1)
                        total += kernel[i, j] * image[yy, xx]
                out[y, x] = total
        return out

    def mat2gray(image):
        low, high = image.min(), image.max()
        return np.zeros_like(image) if high == low else (image - low) / (high - low)

    pred = pred8 / 255.0
    pred[trimap == 0] = 0
    pred[trimap == 255] = 1
    amplitudes = []
    for image in (mat2gray(pred), mat2gray(gt8 / 255.0)):
        amplitudes.append(np.sqrt(correlate(image, hx) ** 2 + correlate(image, hy) ** 2))
    return float((((amplitudes[0] - amplitudes[1]) ** 2) * (trimap == 128)).sum() / 1000)


def reference_connectivity_error(pred8, gt8, trimap) -> float:
    """The MATLAB algorithm step by step on the whole image, with the level map started at -1."""
    pred = pred8 / 255.0
    pred[trimap == 0] = 0
    pred[trimap == 255] = 1
    gt = gt8 / 255.0
    thresholds = [k / 10 for k in range(11)]
    level = -np.ones(pred.shape)
    for k in range(1, len(thresholds)):
        labels, count = ndimage.label((pred >= thresholds[k]) & (gt >= thresholds[k]))
        omega = np.zeros(pred.shape, dtype=bool)
        if count:
            sizes = [(labels == label).sum() for label in range(1, count + 1)]
            omega = labels == 1 + int(np.argmax(sizes))
        level[(level == -1) & ~omega] = thresholds[k - 1]
    level[level == -1] = 1
    pred_d, gt_d = pred - level, gt - level
    pred_phi = 1 - pred_d * (pred_d >= 0.15)
    gt_phi = 1 - gt_d * (gt_d >= 0.15)
    return float((np.abs(pred_phi - gt_phi) * (trimap == 128)).sum() / 1000)


# ----------------------------------------------------------------------------------------------------------
# SAD and MSE


def test_identical_prediction_scores_zero():
    gt = smooth_random_matte((40, 60), seed=1)
    trimap = trimap_with_unknown_box(gt.shape, (slice(5, 35), slice(10, 50)))
    # In the known regions the ground truth must agree with the trimap for pred == gt to be perfect.
    gt[trimap == 0] = 0
    gt[trimap == 255] = 255
    assert score_image(gt, gt, trimap) == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}


def test_uniform_offset_gives_hand_computed_sad_and_mse():
    gt = np.full((30, 30), 100, dtype=np.uint8)
    pred = gt + np.uint8(26)
    trimap = np.zeros((30, 30), dtype=np.uint8)
    trimap[10:20, 10:20] = 128  # 100 unknown pixels
    assert compute_sad(pred, gt, trimap) == pytest.approx(100 * 26 / 255 / 1000, rel=1e-12)
    assert compute_mse(pred, gt, trimap) == pytest.approx((26 / 255) ** 2 * 1000, rel=1e-12)


def test_table_units():
    """One unknown pixel fully wrong: SAD is 1/1000 (sum divided by 1000), MSE 1000 (mean times 1000)."""
    gt = np.zeros((5, 5), dtype=np.uint8)
    pred = gt.copy()
    pred[2, 2] = 255
    trimap = np.zeros((5, 5), dtype=np.uint8)
    trimap[2, 2] = 128
    assert compute_sad(pred, gt, trimap) == pytest.approx(0.001)
    assert compute_mse(pred, gt, trimap) == pytest.approx(1000.0)


def test_mse_is_a_mean_over_unknown_pixels_only():
    gt = np.zeros((10, 10), dtype=np.uint8)
    pred = gt.copy()
    pred[0, 0] = 255  # one wrong pixel among four unknown ones
    trimap = np.zeros((10, 10), dtype=np.uint8)
    trimap[0, 0:4] = 128
    assert compute_mse(pred, gt, trimap) == pytest.approx(1000.0 / 4)


def test_float_inputs_match_uint8_inputs():
    gt = smooth_random_matte((24, 32), seed=2)
    pred = smooth_random_matte((24, 32), seed=3)
    trimap = trimap_with_unknown_box(gt.shape, (slice(4, 20), slice(6, 28)))
    from_uint8 = score_image(pred, gt, trimap)
    from_float = score_image(pred / 255.0, gt.astype(np.float32) / np.float32(255), trimap)
    assert from_float == pytest.approx(from_uint8, rel=1e-6, abs=1e-9)


def test_no_unknown_pixels_gives_zeros():
    gt = smooth_random_matte((20, 20), seed=4)
    pred = 255 - gt
    trimap = np.zeros((20, 20), dtype=np.uint8)
    trimap[:, 10:] = 255
    assert score_image(pred, gt, trimap) == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}


def test_known_regions_are_forced():
    gt = smooth_random_matte((30, 40), seed=5)
    trimap = trimap_with_unknown_box(gt.shape, (slice(8, 22), slice(12, 30)))
    gt[trimap == 0] = 0
    gt[trimap == 255] = 255
    pred = gt.copy()
    pred[trimap == 0] = 200  # wrong everywhere the trimap already knows the answer
    pred[trimap == 255] = 3
    assert score_image(pred, gt, trimap) == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}
    # and the same wrong values inside the unknown region do count
    pred[trimap == 128] = 200
    assert all(value > 0 for value in score_image(pred, gt, trimap).values())


# ----------------------------------------------------------------------------------------------------------
# Grad


def test_gradient_kernel_is_the_published_9x9_kernel():
    g, dg = gaussian_derivative_kernels(1.4)
    assert len(g) == len(dg) == 9  # half size ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) 1.4 0.01))) = 4
    kernel = np.outer(g, dg)
    assert np.sqrt((kernel**2).sum()) == pytest.approx(1.0)
    # the x-kernel smooths down the rows and differentiates along them: antisymmetric left-right,
    # negative on the right (dg(x) = -x g(x) / sigma^2)
    np.testing.assert_allclose(kernel, -kernel[:, ::-1], atol=1e-15)
    assert kernel[4, 5] < 0 < kernel[4, 3]


@pytest.mark.parametrize(
    "box",
    [
        (slice(0, 16), slice(0, 20)),  # touches two borders: replicated borders matter
        (slice(6, 11), slice(7, 12)),  # inside: the implementation filters only a crop around it
    ],
)
def test_gradient_error_matches_brute_force_correlation(box):
    gt = smooth_random_matte((16, 20), seed=6)
    pred = smooth_random_matte((16, 20), seed=7)
    trimap = np.zeros((16, 20), dtype=np.uint8)
    trimap[:, 14:] = 255
    trimap[box] = 128
    expected = reference_gradient_error(pred, gt, trimap)
    assert expected > 0
    assert compute_gradient_error(pred, gt, trimap) == pytest.approx(expected, rel=1e-10)


def test_gradient_normalisation_uses_the_whole_image():
    """The ground truth reaches 255 only far from the unknown box: normalising just around the box (where
    it stays below 160) would give other gradients."""
    gt = np.zeros((16, 24), dtype=np.uint8)
    gt[4:12, 2:10] = np.linspace(100, 160, 8).round().astype(np.uint8)[None, :]
    gt[14, 22] = 255
    pred = np.clip(gt.astype(int) + 30, 0, 255).astype(np.uint8)
    trimap = np.zeros_like(gt)
    trimap[4:12, 2:10] = 128
    expected = reference_gradient_error(pred, gt, trimap)
    assert compute_gradient_error(pred, gt, trimap) == pytest.approx(expected, rel=1e-10)


def test_gradient_error_uses_min_max_normalisation():
    """mat2gray: a matte and its contrast-stretched copy have the same gradient, so Grad is zero there, while
    SAD is not. A constant prediction normalises to zeros (no gradient at all)."""
    columns = np.arange(12)
    gt = np.tile((64 + 10 * columns).astype(np.uint8), (12, 1))  # mat2gray: column / 11
    stretched = np.tile((10 + 20 * columns).astype(np.uint8), (12, 1))  # mat2gray: column / 11 too
    trimap = np.full((12, 12), 128, dtype=np.uint8)
    assert compute_gradient_error(stretched, gt, trimap) == pytest.approx(0.0, abs=1e-12)
    assert compute_sad(stretched, gt, trimap) > 0.01
    flat = np.full((12, 12), 77, dtype=np.uint8)
    assert compute_gradient_error(flat, gt, trimap) == pytest.approx(compute_gradient_error(flat * 0, gt, trimap))


# ----------------------------------------------------------------------------------------------------------
# Conn


def test_thresholds_are_exact_tenths():
    assert CONNECTIVITY_THRESHOLDS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert CONNECTIVITY_THRESHOLDS[6] == 0.6  # np.arange(0, 1.01, 0.1)[6] is 0.6000000000000001


def test_connectivity_levels_by_hand():
    """A 1 x 6 strip where pixel 4 hangs on the big component only through the weak pixel 3."""
    gt = np.array([[1.0, 1.0, 0.55, 0.25, 0.9, 0.0]])
    pred = gt.copy()
    # 0.1: one component {0..4}; pixel 5 (alpha 0) is outside it: level 0.0.
    # 0.2: still {0..4}.
    # 0.3: pixel 3 (0.25) leaves the mask and cuts {4} off from {0, 1, 2}: pixels 3 and 4 get level 0.2,
    #      although pixel 4's own alpha is 0.9.
    # 0.6: pixel 2 (0.55) leaves: level 0.5. Pixels 0 and 1 (alpha 1) never leave: level 1.
    expected = np.array([[1.0, 1.0, 0.5, 0.2, 0.2, 0.0]])
    np.testing.assert_array_equal(connectivity_levels(pred, gt), expected)


def test_connectivity_error_by_hand():
    """The levels come from both mattes (here the ground truth, which is the smaller everywhere) and phi
    from each matte's own alpha, so only pixel 3, where the prediction is high above its level, counts."""
    gt = np.array([[255, 255, 140, 64, 230, 0]], dtype=np.uint8)
    pred = np.array([[255, 255, 140, 230, 230, 0]], dtype=np.uint8)
    trimap = np.full((1, 6), 128, dtype=np.uint8)
    # min(pred, gt) is gt, so the levels are those of the test above: [1, 1, 0.5, 0.2, 0.2, 0].
    # d = alpha - level; phi = 1 - d where d >= 0.15, else 1.
    level = np.array([1.0, 1.0, 0.5, 0.2, 0.2, 0.0])
    pred_d, gt_d = pred[0] / 255 - level, gt[0] / 255 - level
    pred_phi = 1 - pred_d * (pred_d >= 0.15)
    gt_phi = 1 - gt_d * (gt_d >= 0.15)
    # pixel 3: pred d = 230/255 - 0.2 = 0.70 -> phi 0.30; gt d = 64/255 - 0.2 = 0.051 -> phi 1
    # pixel 2: d = 140/255 - 0.5 = 0.049 < 0.15 -> phi 1 for both; the other pixels are equal in both
    expected = (1 - (230 / 255 - 0.2)) - 1
    assert np.abs(pred_phi - gt_phi).sum() == pytest.approx(abs(expected))
    assert compute_connectivity_error(pred, gt, trimap) == pytest.approx(abs(expected) / 1000)


def test_connectivity_is_four_connected():
    """Two diagonal neighbours are separate components: the smaller one drops out at the first threshold."""
    gt = np.array(
        [
            [1.0, 1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    levels = connectivity_levels(gt, gt)
    assert levels[0, 0] == 1.0
    assert levels[2, 2] == 0.0


@pytest.mark.parametrize("seed", [8, 9])
def test_connectivity_error_matches_literal_algorithm(seed):
    gt = smooth_random_matte((30, 40), seed=seed)
    pred = np.clip(gt.astype(int) + np.random.default_rng(seed).integers(-60, 61, gt.shape), 0, 255)
    pred = pred.astype(np.uint8)
    trimap = trimap_with_unknown_box(gt.shape, (slice(3, 27), slice(5, 36)))
    expected = reference_connectivity_error(pred, gt, trimap)
    assert expected > 0
    assert compute_connectivity_error(pred, gt, trimap) == pytest.approx(expected, rel=1e-12)


def test_connectivity_ties_go_to_the_first_component_in_column_major_order():
    """Two equal components: MATLAB's bwconncomp numbers them column by column, and max picks the first."""
    gt = np.zeros((4, 5))
    gt[3, 0:2] = 1.0  # bottom-left: first in column-major order
    gt[0, 3:5] = 1.0  # top-right: first in row-major order
    levels = connectivity_levels(gt, gt)
    assert levels[3, 0] == 1.0
    assert levels[0, 3] == 0.0


# ----------------------------------------------------------------------------------------------------------
# Validation and the accumulator


def test_sizes_differ_is_rejected():
    with pytest.raises(InputError, match="sizes differ"):
        score_image(np.zeros((4, 5), np.uint8), np.zeros((4, 6), np.uint8), np.zeros((4, 5), np.uint8))


def test_colour_alpha_is_rejected():
    with pytest.raises(InputError, match="2-D"):
        compute_sad(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match="trimap must be a 2-D"):
        compute_sad(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), np.zeros((4, 5, 1), np.uint8))


def test_trimap_grey_levels_other_than_0_128_255_are_rejected():
    trimap = np.full((4, 5), 128, dtype=np.uint8)
    trimap[0, 0] = 127
    with pytest.raises(InputError, match=r"only 0 \(background\), 128 \(unknown\) and 255.*contains 127"):
        score_image(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), trimap)


def test_float_alpha_outside_unit_range_is_rejected():
    with pytest.raises(InputError, match=r"not within \[0, 1\]"):
        compute_mse(np.full((3, 3), 2.0), np.zeros((3, 3)), np.full((3, 3), 128, np.uint8))


def test_accumulator_averages_over_images():
    accumulator = MetricsAccumulator()
    accumulator.add("a", {"sad": 1.0, "mse": 2.0, "grad": 3.0, "conn": 4.0})
    accumulator.add("b", {"sad": 3.0, "mse": 4.0, "grad": 5.0, "conn": 8.0})
    assert len(accumulator) == 2
    assert accumulator.mean() == {"sad": 2.0, "mse": 3.0, "grad": 4.0, "conn": 6.0}
    with pytest.raises(InputError, match="scored twice"):
        accumulator.add("a", {"sad": 1.0, "mse": 2.0, "grad": 3.0, "conn": 4.0})
    with pytest.raises(InputError, match="lack conn"):
        accumulator.add("c", {"sad": 1.0, "mse": 2.0, "grad": 3.0})
    with pytest.raises(InputError, match="no image"):
        MetricsAccumulator().mean()
