"""Preview pictures: downscaled views of the photo with the clicks, the SAM mask, the trimap, the matte and
the routing masks. Previews only ever go to the screen; the matte and the downloads use the full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mematte_hf.foreground import composite, over_checkerboard
from mematte_hf.trimap import BACKGROUND, FOREGROUND, UNKNOWN

#: Longest side of every preview, in pixels. A browser shows the photo at well under this size, and smaller
#: previews keep each click's round trip (encode, send, decode) short on large photos.
PREVIEW_MAX_SIDE = 1024

MASK_COLOUR = np.array([30, 144, 255], dtype=np.float32)  # the SAM mask tint
ROUTED_COLOUR = np.array([255, 140, 0], dtype=np.float32)  # tokens sent to global attention
POSITIVE, NEGATIVE, CORNER, DETECTED = (40, 200, 80), (230, 40, 40), (255, 210, 0), (255, 255, 255)


def preview_scale(height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> float:
    """Preview pixels per photo pixel: 1 for small photos, else what brings the longer side to ``max_side``."""
    return min(1.0, max_side / max(height, width))


def preview_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(array: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a uint8 (H, W) or (H, W, C) array to ``shape`` = (h, w); nearest keeps label values intact."""
    if array.shape[:2] == tuple(shape):
        return array
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(array).resize((shape[1], shape[0]), method))


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize(mask.astype(np.uint8) * 255, shape, nearest=True) > 127


def downscale(array: np.ndarray, scale: float) -> np.ndarray:
    return resize(array, preview_shape(array.shape[0], array.shape[1], scale))


def _blend(picture: np.ndarray, where: np.ndarray, colour: np.ndarray | float, amount: float) -> None:
    """Mix ``colour`` into ``picture`` (float, in place) by ``amount`` where ``where`` is True."""
    picture[where] = (1 - amount) * picture[where] + amount * colour


def prompt_view(
    preview: np.ndarray,
    scale: float,
    mask: np.ndarray | None,
    points: Sequence[tuple[float, float]],
    labels: Sequence[int],
    corners: Sequence[tuple[float, float]],
    box: tuple[float, float, float, float] | None,
    detected: Sequence[Sequence[float]] = (),
) -> np.ndarray:
    """The photo preview with the mask tinted and outlined, the clicks as dots, the box as a frame and the
    boxes a text prompt found as thin frames.

    ``points``, ``corners``, ``box`` and ``detected`` are in photo pixels; ``scale`` maps them onto the preview.
    """
    picture = preview.astype(np.float32)
    if mask is not None:
        small = resize_mask(mask, preview.shape[:2])
        _blend(picture, small, MASK_COLOUR, 0.45)
        _blend(picture, small & ~ndimage.binary_erosion(small, iterations=2), 255.0, 0.9)
    canvas = Image.fromarray(np.rint(picture).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    radius = max(4, round(max(preview.shape[:2]) / 110))
    for found in detected:
        x0, y0, x1, y1 = (value * scale for value in found)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=DETECTED, width=max(1, radius // 3))
    if box is not None:
        x0, y0, x1, y1 = (value * scale for value in box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=CORNER, width=max(2, radius // 2))
    for (x, y), label in zip(points, labels, strict=True):
        _dot(draw, x * scale, y * scale, radius, POSITIVE if label == 1 else NEGATIVE)
    for x, y in corners:
        _dot(draw, x * scale, y * scale, radius * 0.8, CORNER)
    return np.asarray(canvas)


def _dot(draw: ImageDraw.ImageDraw, x: float, y: float, radius: float, colour: tuple[int, int, int]) -> None:
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255), width=2)


def trimap_view(preview: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """The photo shaded by trimap class, in the brushes' own colours: background darkened towards black,
    unknown washed towards grey, foreground as it is. Painting white, grey or black then reads naturally."""
    small = resize(trimap, preview.shape[:2], nearest=True)
    picture = preview.astype(np.float32)
    _blend(picture, small == BACKGROUND, 0.0, 0.75)
    _blend(picture, small == UNKNOWN, float(UNKNOWN), 0.6)
    return np.rint(picture).astype(np.uint8)


def trimap_picture(trimap: np.ndarray, scale: float) -> np.ndarray:
    """The trimap itself as a grey preview (0 / 128 / 255)."""
    return resize(trimap, preview_shape(trimap.shape[0], trimap.shape[1], scale), nearest=True)


def alpha_picture(alpha: np.ndarray, scale: float) -> np.ndarray:
    """A float [0, 1] matte as a uint8 grey preview."""
    return downscale(np.rint(np.clip(alpha, 0, 1) * 255).astype(np.uint8), scale)


def cutout_picture(rgba: np.ndarray, scale: float) -> np.ndarray:
    """An RGBA cutout over a light/dark checkerboard, downscaled (the squares stay 12 px on screen)."""
    return over_checkerboard(downscale(rgba, scale), square=12)


def composite_picture(
    foreground: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int] | np.ndarray
) -> np.ndarray:
    """The (preview-sized) uint8 foreground over a colour or a picture (covered and centre-cropped)."""
    return composite(foreground, alpha, background)


def routing_pictures(
    preview: np.ndarray, scale: float, masks: Sequence[np.ndarray], patch: int = 16
) -> list[np.ndarray]:
    """One picture per router: the photo dimmed, with the tokens it sent to global attention in orange.

    Each mask is (h, w) on the ``patch``-pixel token grid of the photo; every preview pixel takes the
    decision of the token its photo pixel falls in (like figure 5 of the MEMatte paper).
    """
    height, width = preview.shape[:2]
    grey = preview.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.55 + 40
    pictures = []
    for mask in masks:
        rows = np.minimum((np.arange(height) / scale // patch).astype(int), mask.shape[0] - 1)
        cols = np.minimum((np.arange(width) / scale // patch).astype(int), mask.shape[1] - 1)
        routed = mask[rows[:, None], cols[None, :]]
        picture = grey.copy()
        _blend(picture, routed, ROUTED_COLOUR, 0.6)
        pictures.append(np.rint(np.clip(picture, 0, 255)).astype(np.uint8))
    return pictures


def routing_caption(index: int, fraction: float, routing: bool) -> str:
    """The caption of router `index`'s overlay. Weights without routing (a transformers ViTMatte run by the
    engine) send every token to global attention, so their overlays are all orange by design, not by choice."""
    if not routing:
        return f"router {index + 1}: every token global (ViTMatte weights, routing off)"
    return f"router {index + 1}: {fraction:.1%} global"


def known_fraction(trimap: np.ndarray) -> tuple[float, float, float]:
    """Fractions of the trimap that are background, unknown and foreground."""
    total = trimap.size
    return tuple(float(np.count_nonzero(trimap == value)) / total for value in (BACKGROUND, UNKNOWN, FOREGROUND))
