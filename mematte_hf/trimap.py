"""Binary mask -> trimap, and brush corrections on a trimap.

A trimap has exactly three values: ``BACKGROUND`` (0), ``UNKNOWN`` (128) and ``FOREGROUND`` (255). The matting
model only estimates alpha inside the unknown region, so the unknown band must cover the true soft edge of the
object (hair, fur, motion blur) plus the error of the segmentation mask it was made from.

Width of the band, precisely: a pixel is *unknown* when the Euclidean distance from its centre to the
centre of the nearest pixel of the other class (mask pixel <-> non-mask pixel) is at most ``band_width``.
Every other mask pixel is foreground and every other non-mask pixel is background. So a straight mask edge
gets exactly ``band_width`` unknown pixels on each side, ``2 * band_width`` in total; the foreground is the
mask eroded by a disc of radius ``band_width`` and the background is the outside of the mask dilated by the
same disc. The image border is not a mask boundary: a mask that touches the border gets no band along it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = [
    "BACKGROUND",
    "FOREGROUND",
    "TRIMAP_VALUES",
    "UNKNOWN",
    "apply_brush",
    "default_band_width",
    "mask_to_trimap",
]

BACKGROUND = 0
UNKNOWN = 128
FOREGROUND = 255
TRIMAP_VALUES = (BACKGROUND, UNKNOWN, FOREGROUND)

# Side of the square tiles the distance computation is split into. The distance transform of a whole 8K
# frame takes seconds and over a gigabyte; only tiles whose neighbourhood holds both classes need one, and
# 512 px was the fastest size measured on 8K masks (5-7x faster than one transform of the whole frame).
_TILE = 512


def default_band_width(height: int, width: int) -> int:
    """Unknown band width in pixels (on each side of the mask boundary) for an image of this size.

    ``max(3, round(0.01 * max(height, width)))``: 1 % of the longer side, at least 3 px. Why the longer
    side: SAM resizes the longer side to 1024 and predicts its mask on a 256-cell grid, so one mask cell
    covers ``max(height, width) / 256`` pixels and the mask edge is only known to within a cell or two after
    upsampling; 1 % is about 2.5 cells, which also covers the few-pixel soft edge of hair at that scale. A
    512 px image gets 5 px (10 px of unknown across the edge), a 4K photo 38 px, an 8K photo 77 px. The
    floor of 3 px keeps a usable band on thumbnails.
    """
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    return max(3, round(0.01 * max(height, width)))


def mask_to_trimap(mask: np.ndarray, band_width: int | None = None) -> np.ndarray:
    """Turn a binary object mask into a trimap with an unknown band around the mask boundary.

    Args:
        mask: (H, W) array; nonzero / True marks the object.
        band_width: unknown band width in pixels on each side of the boundary (the module docstring defines
            it exactly); ``None`` uses :func:`default_band_width`; 0 gives a trimap with no unknown region.

    Returns:
        (H, W) uint8 trimap with values in {0, 128, 255}. An empty mask gives an all-background trimap and a
        mask covering the whole image an all-foreground one; neither has an unknown region, which the caller
        should report (there is nothing to matte) rather than pass on to the matting model.
    """
    mask = _as_mask(mask, "mask")
    band_width = default_band_width(*mask.shape) if band_width is None else _band_width(band_width)
    trimap = np.where(mask, np.uint8(FOREGROUND), np.uint8(BACKGROUND))
    if band_width > 0:
        trimap[_near_other_class(mask, band_width)] = UNKNOWN
    return trimap


def apply_brush(trimap: np.ndarray, mask_of_stroke: np.ndarray, value: int) -> np.ndarray:
    """Paint ``value`` onto the trimap wherever the brush stroke is, and return the corrected copy.

    Args:
        trimap: (H, W) uint8 trimap with values in {0, 128, 255}; not modified.
        mask_of_stroke: (H, W) array, nonzero / True where the user painted.
        value: 0 (background), 128 (unknown) or 255 (foreground).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in TRIMAP_VALUES:
        raise InputError(f"brush value must be one of {TRIMAP_VALUES} (background, unknown, foreground), got {value!r}")
    trimap = _as_trimap(trimap)
    stroke = _as_mask(mask_of_stroke, "brush stroke")
    if stroke.shape != trimap.shape:
        raise InputError(
            f"brush stroke is {stroke.shape[1]}x{stroke.shape[0]} but the trimap is "
            f"{trimap.shape[1]}x{trimap.shape[0]}: paint on the image the trimap was made for"
        )
    painted = trimap.copy()
    painted[stroke] = value
    return painted


def _near_other_class(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose nearest pixel of the other class is at most ``radius`` away, centre to centre."""
    height, width = mask.shape
    near = np.zeros(mask.shape, dtype=bool)
    # A pixel of the other class within `radius` differs by at most `radius` rows and columns, so a tile's
    # answer only needs the tile grown by `radius` on each side, and is exact there.
    for y0 in range(0, height, _TILE):
        for x0 in range(0, width, _TILE):
            y1, x1 = min(y0 + _TILE, height), min(x0 + _TILE, width)
            cy0, cx0 = max(0, y0 - radius), max(0, x0 - radius)
            crop = mask[cy0 : min(height, y1 + radius), cx0 : min(width, x1 + radius)]
            inside = np.count_nonzero(crop)
            if inside in (0, crop.size):  # one class only: nothing in the tile is near the boundary
                continue
            tile = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
            near[y0:y1, x0:x1] = _near_in_crop(crop, radius)[tile]
    return near


def _near_in_crop(crop: np.ndarray, radius: int) -> np.ndarray:
    """``_near_other_class`` for a crop that holds both classes."""
    return (crop & _outside_within(crop, radius)) | (~crop & _outside_within(~crop, radius))


def _outside_within(region: np.ndarray, radius: int) -> np.ndarray:
    """For each pixel, whether the nearest False pixel of ``region`` is at most ``radius`` away.

    Uses the feature transform (where the nearest False pixel is) and compares integer squared distances:
    scipy's distance output would allocate float64 arrays and take square roots, for a comparison that is only
    exact in integers.
    """
    rows, cols = ndimage.distance_transform_edt(region, return_distances=False, return_indices=True)
    height, width = region.shape
    rows -= np.arange(height, dtype=rows.dtype)[:, None]
    cols -= np.arange(width, dtype=cols.dtype)[None, :]
    np.multiply(rows, rows, out=rows)
    np.multiply(cols, cols, out=cols)
    rows += cols
    return rows <= radius * radius


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise InputError(f"{name} must be a 2-D (height, width) array, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _as_trimap(trimap: np.ndarray) -> np.ndarray:
    trimap = np.asarray(trimap)
    if trimap.ndim != 2 or trimap.dtype != np.uint8:
        raise InputError(f"trimap must be a 2-D uint8 array, got shape {trimap.shape} and dtype {trimap.dtype}")
    stray = np.setdiff1d(np.unique(trimap), TRIMAP_VALUES)
    if stray.size:
        raise InputError(f"trimap values must be 0, 128 or 255, found {stray[:5].tolist()}")
    return trimap


def _band_width(band_width: int) -> int:
    if isinstance(band_width, bool) or not isinstance(band_width, (int, np.integer)) or band_width < 0:
        raise InputError(f"band_width must be a whole number of pixels >= 0, got {band_width!r}")
    return int(band_width)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"image {name} must be a positive whole number of pixels, got {value!r}")
    return int(value)
