"""The standard image-matting metrics of the DIM / Composition-1K benchmark: SAD, MSE, Grad and Conn.

These follow the MATLAB evaluation code published with "Deep Image Matting" (Xu et al., 2017), which every
Composition-1K / AIM-500 table since reports:

* inputs are 8-bit alpha mattes and a trimap with values 0 / 128 / 255; alphas are scaled to [0, 1] in
  float64;
* the prediction is forced to 0 where the trimap is 0 and to 1 where it is 255;
* only pixels where the trimap equals 128 (the unknown region) are scored;
* the numbers are reported in "table units": SAD, Grad and Conn divided by 1000, MSE multiplied by 1000.

Trimaps must contain only the values 0, 128 and 255. Any other grey level is rejected with an `InputError`
rather than silently ignored, because the benchmark gives no meaning to it (it would be neither forced nor
scored) and it usually means the trimap was resized with interpolation or saved as JPEG.

Predictions and ground truth may be given as uint8 arrays (0..255) or as float arrays already in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from .errors import InputError

METRIC_NAMES = ("sad", "mse", "grad", "conn")

UNKNOWN = 128
FOREGROUND = 255
BACKGROUND = 0
_TRIMAP_VALUES = (BACKGROUND, UNKNOWN, FOREGROUND)

GRADIENT_SIGMA = 1.4
# Exact tenths: 0:0.1:1 built as k/10, because a float accumulation gives 0.6000000000000001 and moves Conn.
CONNECTIVITY_THRESHOLDS = tuple(k / 10 for k in range(11))
CONNECTIVITY_MIN_DISTANCE = 0.15


# ----------------------------------------------------------------------------------------------------
# Input checking and preparation


def _as_alpha(array: np.ndarray, role: str) -> np.ndarray:
    """Return `array` as float64 in [0, 1]: uint8 is divided by 255, floats must already be in [0, 1]."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(
            f"the {role} alpha must be a 2-D (height, width) array, got shape {array.shape}; "
            "convert colour mattes to a single channel first"
        )
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"the {role} alpha must be uint8 (0..255) or float in [0, 1], got dtype {array.dtype}; "
            "convert it with `.astype(np.uint8)` or divide by 255"
        )
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)) or values.min(initial=0.0) < 0.0 or values.max(initial=0.0) > 1.0:
        raise InputError(
            f"the {role} alpha is a float array but not within [0, 1] "
            f"(min {np.nanmin(values):.4g}, max {np.nanmax(values):.4g}); float alphas must be in [0, 1]"
        )
    return values


def _check_trimap(trimap: np.ndarray) -> np.ndarray:
    """Return `trimap` as a uint8 array, or raise if it holds anything but 0, 128 and 255."""
    trimap = np.asarray(trimap)
    if trimap.ndim != 2:
        raise InputError(
            f"the trimap must be a 2-D (height, width) array, got shape {trimap.shape}; use a single-channel trimap"
        )
    if trimap.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(trimap.ravel(), minlength=256))  # much faster than np.unique
    else:
        values = np.unique(trimap)
    unexpected = [v for v in values.tolist() if v not in _TRIMAP_VALUES]
    if unexpected:
        shown = ", ".join(f"{v:g}" for v in unexpected[:8]) + (", ..." if len(unexpected) > 8 else "")
        raise InputError(
            f"the trimap may contain only 0 (background), 128 (unknown) and 255 (foreground), but it also "
            f"contains {shown}; map those grey levels to 0, 128 or 255 (a trimap resized with interpolation "
            "or saved as JPEG has such values: resize with nearest neighbour and save as PNG)"
        )
    return trimap.astype(np.uint8)


def _prepare(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the three inputs; return (forced pred, gt, unknown mask) as float64, float64, bool."""
    pred_alpha = _as_alpha(pred, "predicted")
    gt_alpha = _as_alpha(gt, "ground-truth")
    trimap = _check_trimap(trimap)
    if not (pred_alpha.shape == gt_alpha.shape == trimap.shape):
        raise InputError(
            f"sizes differ: prediction {pred_alpha.shape}, ground truth {gt_alpha.shape}, trimap "
            f"{trimap.shape} (height, width); all three must be the same size (predict at full resolution)"
        )
    # The benchmark scores only the unknown region, and it forces the known regions before anything else
    # (this matters for Grad and Conn, whose values depend on the whole image).
    pred_alpha[trimap == BACKGROUND] = 0.0
    pred_alpha[trimap == FOREGROUND] = 1.0
    return pred_alpha, gt_alpha, trimap == UNKNOWN


# ----------------------------------------------------------------------------------------------------
# The four metrics on prepared inputs (forced prediction, ground truth, unknown mask)


def _sad(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    return float(np.abs(pred[unknown] - gt[unknown]).sum()) / 1000.0


def _mse(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    count = int(unknown.sum())
    if count == 0:
        return 0.0
    return float(np.square(pred[unknown] - gt[unknown]).sum()) / count * 1000.0


def gaussian_derivative_kernels(sigma: float = GRADIENT_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Return the 1-D factors (g, dg) of the DIM first-derivative-of-Gaussian kernel.

    The 2-D x-kernel is `outer(g, dg)` (rows smooth, columns differentiate), scaled to unit L2 norm; since the
    L2 norm of an outer product is the product of the norms, normalising each factor gives the same kernel.
    """
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * 0.01)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dg = -x / sigma**2 * g
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


def _mat2gray(image: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
    """The `window` of `image` min-max normalised to [0, 1] over the WHOLE image (MATLAB mat2gray); a
    constant image maps to zeros."""
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros_like(image[window])
    return (image[window] - low) / (high - low)


def _transposed_gradient_magnitude(image: np.ndarray, g: np.ndarray, dg: np.ndarray) -> np.ndarray:
    """|gradient| of `image`, returned transposed (shape (W, H)).

    gx is the correlation with the x-kernel outer(g, dg) and gy with the y-kernel outer(dg, g), borders
    replicated. The kernels are separable, so each is two 1-D passes. scipy filters along the last axis about
    twice as fast as along the first, so the column pass runs on a transposed contiguous copy; the caller
    transposes its mask instead of transposing the result back.
    """
    smooth_cols = np.ascontiguousarray(ndimage.correlate1d(image, g, axis=1, mode="nearest").T)
    diff_cols = np.ascontiguousarray(ndimage.correlate1d(image, dg, axis=1, mode="nearest").T)
    gx = ndimage.correlate1d(diff_cols, g, axis=1, mode="nearest")
    gy = ndimage.correlate1d(smooth_cols, dg, axis=1, mode="nearest")
    return np.sqrt(gx * gx + gy * gy)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest (rows, columns) window holding every True pixel of `mask`, or None if there is none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _unknown_window(unknown: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of the (existing) unknown pixels grown by `margin` pixels, clipped to the image."""
    box = _bounding_box(unknown)
    assert box is not None, "callers check that there are unknown pixels"
    rows, cols = box
    height, width = unknown.shape
    return (
        slice(max(rows.start - margin, 0), min(rows.stop + margin, height)),
        slice(max(cols.start - margin, 0), min(cols.stop + margin, width)),
    )


def _grad(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray, sigma: float = GRADIENT_SIGMA) -> float:
    if not unknown.any():
        return 0.0
    g, dg = gaussian_derivative_kernels(sigma)
    # Filtering only the unknown pixels' bounding box plus the kernel radius gives the same values there as
    # filtering the whole image (at an image edge the crop edge is the image edge, so 'nearest' agrees), and
    # is much faster on typical trimaps. The normalisation must still use the whole image.
    window = _unknown_window(unknown, margin=len(g) // 2)
    pred_amp = _transposed_gradient_magnitude(_mat2gray(pred, window), g, dg)
    gt_amp = _transposed_gradient_magnitude(_mat2gray(gt, window), g, dg)
    inside = unknown[window].T
    return float(np.square(pred_amp[inside] - gt_amp[inside]).sum()) / 1000.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of `mask` (all False if `mask` is empty).

    Ties go to the component that comes first in column-major order, as MATLAB's bwconncomp + max would pick.
    """
    # intp labels let bincount count them without a conversion copy; the default structure is 4-connectivity.
    labels, count = ndimage.label(mask, output=np.intp)
    if count == 0:
        return np.zeros_like(mask)
    if count == 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    best = np.flatnonzero(sizes == sizes.max())
    if len(best) > 1:
        # Rare: equal largest components. Pick the one whose first pixel in column-major order comes first.
        column_major = np.arange(mask.size).reshape(mask.shape, order="F")
        firsts = ndimage.minimum(column_major, labels, index=best)
        best = best[[int(np.argmin(firsts))]]
    return labels == best[0]


def connectivity_levels(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """The level l of every pixel: t_(k-1) for the first threshold t_k at which the pixel leaves the largest
    4-connected component of (pred >= t_k) & (gt >= t_k), or 1 if it never does.

    If `region` (a boolean mask) is given, only the levels inside it are guaranteed: the loop stops as soon as
    every pixel of the region has dropped out (the components still span the whole image).
    """
    both = np.minimum(pred, gt)  # (pred >= t) & (gt >= t) is min(pred, gt) >= t
    # A pixel that has left the component keeps its level, so count the thresholds it survives without a gap:
    # alive_k = alive_(k-1) & in-component_k, and the level is t_(number of thresholds survived).
    survived = np.zeros(pred.shape, dtype=np.uint8)
    rows, cols = slice(0, pred.shape[0]), slice(0, pred.shape[1])
    alive = np.ones(pred.shape, dtype=bool)  # the pixels of the window rows x cols still alive
    for threshold in CONNECTIVITY_THRESHOLDS[1:]:
        # The masks shrink as the threshold rises, so each is labelled inside the previous one's bounding
        # box: nothing outside it can be in a component, and labelling a crop that holds the whole mask
        # gives the same components as labelling the image.
        mask = both[rows, cols] >= threshold
        box = _bounding_box(mask)
        if box is None:
            break
        alive = alive[box] & _largest_component(mask[box])
        rows = slice(rows.start + box[0].start, rows.start + box[0].stop)
        cols = slice(cols.start + box[1].start, cols.start + box[1].stop)
        if region is not None and not (alive & region[rows, cols]).any():
            break
        survived[rows, cols] += alive
    return np.asarray(CONNECTIVITY_THRESHOLDS)[survived]


def _conn(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    if not unknown.any():
        return 0.0
    level = connectivity_levels(pred, gt, region=unknown)
    pred_d = pred[unknown] - level[unknown]
    gt_d = gt[unknown] - level[unknown]
    pred_phi = 1.0 - pred_d * (pred_d >= CONNECTIVITY_MIN_DISTANCE)
    gt_phi = 1.0 - gt_d * (gt_d >= CONNECTIVITY_MIN_DISTANCE)
    return float(np.abs(pred_phi - gt_phi).sum()) / 1000.0


# ----------------------------------------------------------------------------------------------------
# Public API


def compute_sad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Sum of absolute differences over the unknown region, divided by 1000 (table units)."""
    return _sad(*_prepare(pred, gt, trimap))


def compute_mse(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Mean squared error over the unknown region, multiplied by 1000 (table units); 0 if there is none."""
    return _mse(*_prepare(pred, gt, trimap))


def compute_gradient_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Gradient error: sum over the unknown region of the squared difference of the Gaussian-derivative
    gradient magnitudes (sigma 1.4) of the min-max normalised mattes, divided by 1000 (table units)."""
    return _grad(*_prepare(pred, gt, trimap))


def compute_connectivity_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Connectivity error (thresholds 0, 0.1, ..., 1, minimum distance 0.15) over the unknown region, divided
    by 1000 (table units)."""
    return _conn(*_prepare(pred, gt, trimap))


def score_image(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """All four metrics of one image in table units: {"sad", "mse", "grad", "conn"}."""
    prepared = _prepare(pred, gt, trimap)
    return {
        "sad": _sad(*prepared),
        "mse": _mse(*prepared),
        "grad": _grad(*prepared),
        "conn": _conn(*prepared),
    }


class MetricsAccumulator:
    """Collects per-image scores and averages them over the dataset (the number every table reports)."""

    def __init__(self) -> None:
        self.per_image: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self.per_image)

    def add(self, name: str, scores: Mapping[str, float]) -> None:
        """Record the scores of image `name`; each name may be added once and must have all four metrics."""
        if name in self.per_image:
            raise InputError(f"image {name!r} was scored twice; every image name must be unique")
        missing = [metric for metric in METRIC_NAMES if metric not in scores]
        if missing:
            raise InputError(f"the scores of image {name!r} lack {', '.join(missing)}; use score_image()")
        self.per_image[name] = {metric: float(scores[metric]) for metric in METRIC_NAMES}

    def mean(self) -> dict[str, float]:
        """The mean of every metric over the images added so far."""
        if not self.per_image:
            raise InputError("no image has been scored yet, so there is no mean; add scores first")
        count = len(self.per_image)
        return {metric: sum(scores[metric] for scores in self.per_image.values()) / count for metric in METRIC_NAMES}
